//! The in-memory keyed state backend of flowstate.
//!
//! State lives in per-key-group persistent hash maps. A snapshot's
//! synchronous phase clones one map root per state and key group (no copy
//! of the state), and writes made while its asynchronous phase runs copy
//! only the map nodes they touch, so they never leak into the snapshot.
//! Snapshots use the canonical format, so they restore into any backend at
//! any parallelism.
//!
//! ```
//! use flowstate_api::*;
//! use flowstate_heap::HeapBackend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
//! let mut backend = HeapBackend::new(config.clone())?;
//! let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
//! for user in [1u64, 2, 1] {
//!     backend.set_current_key(&user)?;
//!     let n = backend.value(&count)?.unwrap_or(0);
//!     backend.update(&count, n + 1)?;
//! }
//!
//! // Checkpoint 1 into in-memory storage, then restore it into a new backend.
//! let storage = MemoryCheckpointStorage::new("job");
//! let location = storage.init_checkpoint(1).await?;
//! let result = backend.snapshot(1, location.clone(), SnapshotOptions::checkpoint())?.await?;
//! let mut restored = HeapBackend::restore(config, &[result.handle], &InlineReader).await?;
//! let count = restored.register(ValueStateDescriptor::<u64>::new("count"))?;
//! restored.set_current_key(&1)?;
//! assert_eq!(restored.value(&count)?, Some(2));
//! # Ok(()) }
//! ```

mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flowstate_api::canonical::{
    check_compatible, write_canonical_snapshot, CanonicalSnapshot, SnapshotHeader, TtlFilter,
};
use flowstate_api::codec::put_varint;
use flowstate_api::{
    next_backend_id, AsyncOutput, BackendCapabilities, CheckpointLocation, CurrentKey, Error, KeyGroupRange,
    KeyVisitor, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, MapVisit, MapVisitor, PendingSnapshot, Result,
    SharedClock, SharedSerializer, SnapshotOptions, StateId, StateMeta, StateReader, StateScope, StateTtlConfig,
    StorageKind,
};

use table::{
    elements, insert_record, pack, packed, split_composite, CompositeKey, FrozenTables, HeapState, Inline, Table,
};

/// The in-memory keyed state backend.
pub struct HeapBackend<K> {
    id: u64,
    config: KeyedBackendConfig<K>,
    states: Vec<HeapState>,
    by_name: HashMap<String, StateId>,
    /// The serialized current key.
    current: CurrentKey,
    /// `varint(len(key)) | key`, the prefix of every composite key.
    key_prefix: Vec<u8>,
    /// Index of the current key's key group within the range.
    kg: Option<usize>,
    composite: Vec<u8>,
    /// States with incremental TTL cleanup that runs once per record.
    per_record_cleanup: Vec<StateId>,
    closed: Arc<AtomicBool>,
}

impl<K> std::fmt::Debug for HeapBackend<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBackend")
            .field("id", &self.id)
            .field("key_group_range", &self.config.key_group_range)
            .field("states", &self.states.iter().map(|s| &s.meta.name).collect::<Vec<_>>())
            .finish()
    }
}

impl<K> Drop for HeapBackend<K> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl<K> HeapBackend<K> {
    /// An empty backend.
    pub fn new(config: KeyedBackendConfig<K>) -> Result<Self> {
        config.validate()?;
        Ok(HeapBackend {
            id: next_backend_id(),
            config,
            states: Vec::new(),
            by_name: HashMap::new(),
            current: CurrentKey::default(),
            key_prefix: Vec::new(),
            kg: None,
            composite: Vec::new(),
            per_record_cleanup: Vec::new(),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A backend restored from `handles` (any number, from any parallelism):
    /// only the key groups in the config's range are kept. `reader` reads
    /// the handles' streams.
    pub async fn restore(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Self> {
        flowstate_api::check_restore_handles(handles, config.max_parallelism)?;
        let mut backend = Self::new(config)?;
        for handle in handles {
            backend.restore_handle(handle, reader).await?;
        }
        Ok(backend)
    }

    async fn restore_handle(&mut self, handle: &KeyedStateHandle, reader: &dyn StateReader) -> Result<()> {
        let range = self.config.key_group_range;
        let KeyedStateHandle::KeyGroups(h) = handle else {
            return Err(Error::unsupported(
                "the heap backend restores canonical snapshots only; restore native RocksDB checkpoints into RocksDB or take a savepoint",
            ));
        };
        let overlap = h.range.intersect(&range);
        if h.stream == flowstate_api::StreamStateHandle::Empty || overlap.is_empty() {
            return Ok(());
        }
        let name = h.stream.describe();
        let data = reader.read(&h.stream).await?;
        let snapshot = CanonicalSnapshot::open(data, h, &name)?;
        check_compatible(
            snapshot.header(),
            &self.config.key_serializer.id(),
            self.config.max_parallelism,
            &name,
        )?;
        let ids = snapshot
            .header()
            .states
            .iter()
            .map(|meta| self.restored_state(meta, &name))
            .collect::<Result<Vec<_>>>()?;
        let max = self.config.max_parallelism;
        let mut scratch = Vec::new();
        for kg in overlap.iter() {
            let records = snapshot.key_group(kg)?;
            let i = (kg - range.start()) as usize;
            records.for_each_verified(max, |record| {
                let state = record.state();
                let id = ids[state as usize] as usize;
                insert_record(&mut self.states[id].table, i, &record, &mut scratch)
                    .map_err(|e| e.context(format!("snapshot {name}, key group {kg}")))
            })?;
        }
        Ok(())
    }

    /// The id of the state a restored `meta` goes into, creating it if new.
    fn restored_state(&mut self, meta: &StateMeta, name: &str) -> Result<StateId> {
        if let Some(&id) = self.by_name.get(&meta.name) {
            let existing = &self.states[id as usize].meta;
            if let Some(why) = existing.incompatibility(meta) {
                return Err(Error::incompatible(format!(
                    "snapshot {name}: state {:?} differs from the same state in another handle: {why}",
                    meta.name
                )));
            }
            return Ok(id);
        }
        let id = self.states.len() as StateId;
        let groups = self.config.key_group_range.len() as usize;
        self.states.push(HeapState::new(meta.clone(), None, false, groups));
        self.by_name.insert(meta.name.clone(), id);
        Ok(id)
    }

    /// Marks the backend closed: snapshots still in their async phase fail
    /// and discard what they wrote.
    pub fn close(self) {}

    fn no_key() -> Error {
        Error::invalid("no current key: call set_current_key before accessing state")
    }

    fn state_mut(&mut self, id: StateId) -> Result<&mut HeapState> {
        self.states
            .get_mut(id as usize)
            .ok_or_else(|| Error::invalid(format!("no state with id {id}")))
    }

    /// Runs incremental TTL cleanup for `id` if configured, then returns the
    /// state, the key-group index and the composite key of the current key
    /// and the state's namespace.
    #[inline]
    fn target(&mut self, id: StateId) -> Result<(&mut HeapState, usize, &[u8])> {
        let kg = self.kg.ok_or_else(Self::no_key)?;
        let clock = &self.config.clock;
        let state = self
            .states
            .get_mut(id as usize)
            .ok_or_else(|| Error::invalid(format!("no state with id {id}")))?;
        if let Some(inc) = state.ttl.and_then(|t| t.cleanup().incremental) {
            state.incremental_cleanup(clock.now_millis(), inc.entries_per_access);
        }
        self.composite.clear();
        self.composite.extend_from_slice(&self.key_prefix);
        self.composite.extend_from_slice(&state.namespace);
        Ok((state, kg, &self.composite))
    }

    /// After the current key changed: its key-group index and prefix.
    fn set_key_group(&mut self, kg: Result<u32>) -> Result<()> {
        let kg = match kg {
            Ok(kg) => kg,
            Err(e) => {
                self.kg = None;
                return Err(e);
            }
        };
        self.kg = Some((kg - self.config.key_group_range.start()) as usize);
        let key = self.current.bytes().unwrap_or_default();
        self.key_prefix.clear();
        put_varint(&mut self.key_prefix, key.len() as u64);
        self.key_prefix.extend_from_slice(key);
        if !self.per_record_cleanup.is_empty() {
            let now = self.config.clock.now_millis();
            for &id in &self.per_record_cleanup {
                let state = &mut self.states[id as usize];
                if let Some(inc) = state.ttl.and_then(|t| t.cleanup().incremental) {
                    state.incremental_cleanup(now, inc.entries_per_access);
                }
            }
        }
        Ok(())
    }
}

macro_rules! maps {
    ($state:expr, $variant:ident, $storage:ident) => {
        match &mut $state.table {
            Table::$variant(maps) => maps,
            _ => return Err($state.wrong_kind(StorageKind::$storage)),
        }
    };
}

impl<K: 'static> KeyedStateBackend for HeapBackend<K> {
    type Key = K;

    fn backend_id(&self) -> u64 {
        self.id
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.config.key_group_range
    }

    fn max_parallelism(&self) -> u32 {
        self.config.max_parallelism
    }

    fn key_serializer(&self) -> &SharedSerializer<K> {
        &self.config.key_serializer
    }

    fn clock(&self) -> &SharedClock {
        &self.config.clock
    }

    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::none().with_ttl_incremental_cleanup()
    }

    fn register_state(&mut self, meta: StateMeta, ttl: Option<StateTtlConfig>) -> Result<StateId> {
        flowstate_api::validate_state_name(&meta.name)?;
        let id = match self.by_name.get(&meta.name) {
            Some(&id) => {
                let state = &mut self.states[id as usize];
                if let Some(why) = meta.incompatibility(&state.meta) {
                    let was = if state.registered { "registered" } else { "restored" };
                    return Err(Error::incompatible(format!(
                        "state {:?} was {was} differently: {why}",
                        meta.name
                    )));
                }
                state.registered = true;
                state.ttl = ttl;
                id
            }
            None => {
                let id = self.states.len() as StateId;
                let groups = self.config.key_group_range.len() as usize;
                self.by_name.insert(meta.name.clone(), id);
                self.states.push(HeapState::new(meta, ttl, true, groups));
                id
            }
        };
        let per_record = ttl
            .and_then(|t| t.cleanup().incremental)
            .is_some_and(|i| i.run_for_every_record);
        self.per_record_cleanup.retain(|&s| s != id);
        if per_record {
            self.per_record_cleanup.push(id);
        }
        Ok(id)
    }

    fn states(&self) -> Vec<StateMeta> {
        self.states.iter().map(|s| s.meta.clone()).collect()
    }

    #[inline]
    fn set_current_key(&mut self, key: &K) -> Result<()> {
        let c = &self.config;
        let kg = self
            .current
            .set(&c.key_serializer, key, c.key_group_range, c.max_parallelism);
        self.set_key_group(kg)
    }

    fn set_current_key_bytes(&mut self, key: &[u8]) -> Result<()> {
        let c = &self.config;
        let kg = self.current.set_bytes(key, c.key_group_range, c.max_parallelism);
        self.set_key_group(kg)
    }

    fn current_key_bytes(&self) -> Option<&[u8]> {
        self.current.bytes()
    }

    fn set_namespace_bytes(&mut self, state: StateId, namespace: &[u8]) -> Result<()> {
        let s = self.state_mut(state)?;
        s.namespace.clear();
        s.namespace.extend_from_slice(namespace);
        Ok(())
    }

    #[inline]
    fn raw_value_get(&mut self, state: StateId) -> Result<Option<Bytes>> {
        let (s, kg, ck) = self.target(state)?;
        Ok(maps!(s, Value, Value)[kg].get(ck).map(|v| Bytes::copy_from_slice(v)))
    }

    #[inline]
    fn raw_value_put(&mut self, state: StateId, value: Bytes) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, Value, Value)[kg];
        match map.get_mut(ck) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(&value);
            }
            None => {
                map.insert(CompositeKey::from_slice(ck), Inline::from_slice(&value));
            }
        }
        Ok(())
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        match &mut s.table {
            Table::Value(m) => {
                m[kg].remove(ck);
            }
            Table::List(m) => {
                m[kg].remove(ck);
            }
            Table::Map(m) => {
                m[kg].remove(ck);
            }
        }
        Ok(())
    }

    fn raw_list_get(&mut self, state: StateId, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        if let Some(list) = maps!(s, List, List)[kg].get(ck) {
            for e in elements(list) {
                f(e)?;
            }
        }
        Ok(())
    }

    #[inline]
    fn raw_list_append(&mut self, state: StateId, element: Bytes) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, List, List)[kg];
        match map.get_mut(ck) {
            Some(list) => pack(Arc::make_mut(list), &element),
            None => {
                map.insert(CompositeKey::from_slice(ck), Arc::new(packed([&element[..]])));
            }
        }
        Ok(())
    }

    fn raw_list_append_all(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, List, List)[kg];
        match map.get_mut(ck) {
            Some(list) => {
                let list = Arc::make_mut(list);
                for e in &elements {
                    pack(list, e);
                }
            }
            None => {
                map.insert(
                    CompositeKey::from_slice(ck),
                    Arc::new(packed(elements.iter().map(|e| &e[..]))),
                );
            }
        }
        Ok(())
    }

    fn raw_list_replace(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, List, List)[kg];
        if elements.is_empty() {
            map.remove(ck);
        } else {
            map.insert(
                CompositeKey::from_slice(ck),
                Arc::new(packed(elements.iter().map(|e| &e[..]))),
            );
        }
        Ok(())
    }

    #[inline]
    fn raw_map_get(&mut self, state: StateId, user_key: &[u8]) -> Result<Option<Bytes>> {
        let (s, kg, ck) = self.target(state)?;
        Ok(maps!(s, Map, Map)[kg]
            .get(ck)
            .and_then(|m| m.get(user_key))
            .map(|v| Bytes::copy_from_slice(v)))
    }

    #[inline]
    fn raw_map_put(&mut self, state: StateId, user_key: Bytes, value: Bytes) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, Map, Map)[kg];
        match map.get_mut(ck) {
            Some(m) => {
                Arc::make_mut(m).insert(Inline::from_slice(&user_key), Inline::from_slice(&value));
            }
            None => {
                let mut m = std::collections::BTreeMap::new();
                m.insert(Inline::from_slice(&user_key), Inline::from_slice(&value));
                map.insert(CompositeKey::from_slice(ck), Arc::new(m));
            }
        }
        Ok(())
    }

    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, Map, Map)[kg];
        let now_empty = match map.get_mut(ck) {
            Some(m) if m.contains_key(user_key) => {
                Arc::make_mut(m).remove(user_key);
                m.is_empty()
            }
            _ => false,
        };
        if now_empty {
            map.remove(ck);
        }
        Ok(())
    }

    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        let (s, kg, ck) = self.target(state)?;
        Ok(maps!(s, Map, Map)[kg].get(ck).is_none_or(|m| m.is_empty()))
    }

    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()> {
        let (s, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, Map, Map)[kg];
        let Some(user_map) = map.get(ck) else { return Ok(()) };
        // Iterate a frozen view (an Arc clone); removals go to the live map.
        let frozen = Arc::clone(user_map);
        let mut removed = Vec::new();
        for (uk, v) in frozen.iter() {
            match f(uk, v)? {
                MapVisit::Keep => {}
                MapVisit::Remove => removed.push(uk.clone()),
                MapVisit::Stop => break,
            }
        }
        if !removed.is_empty() {
            drop(frozen);
            let now_empty = match map.get_mut(ck) {
                Some(m) => {
                    let m = Arc::make_mut(m);
                    for uk in &removed {
                        m.remove(uk);
                    }
                    m.is_empty()
                }
                None => false,
            };
            if now_empty {
                map.remove(ck);
            }
        }
        Ok(())
    }

    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()> {
        let s = self.state_mut(state)?;
        s.table.for_each_composite(|ck| {
            let (key, ns) = split_composite(ck)?;
            if namespace.is_none_or(|want| want == ns) {
                f(key, ns)?;
            }
            Ok(())
        })
    }

    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        Ok(self.state_mut(state)?.table.len())
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<dyn CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        let started = Instant::now();
        let _span = tracing::info_span!("snapshot_sync", checkpoint_id, backend = "heap").entered();
        let range = self.config.key_group_range;
        let header = SnapshotHeader {
            range,
            max_parallelism: self.config.max_parallelism,
            key_serializer: self.config.key_serializer.id(),
            states: self.states.iter().map(|s| s.meta.clone()).collect(),
            compressed: options.compression.is_some(),
        };
        let filter = TtlFilter {
            ttl_millis: self
                .states
                .iter()
                .map(|s| s.ttl.filter(|t| t.cleanup().full_snapshot).map(|t| t.ttl_millis()))
                .collect(),
            now: self.config.clock.now_millis(),
        };
        let mut source = FrozenTables {
            tables: self.states.iter().map(|s| s.table.clone()).collect(),
            first_key_group: range.start(),
            closed: Arc::clone(&self.closed),
        };
        let phase = async move {
            let stream = location.create_output_stream(StateScope::Exclusive).await?;
            let written = write_canonical_snapshot(&header, &mut source, filter, stream, options.compression)
                .await
                .map_err(|e| e.context(format!("checkpoint {checkpoint_id}")))?;
            Ok(AsyncOutput {
                bytes_written: written.handle.stream.size(),
                records: written.records,
                handle: KeyedStateHandle::KeyGroups(written.handle),
            })
        };
        Ok(PendingSnapshot::new(checkpoint_id, started, phase))
    }
}
