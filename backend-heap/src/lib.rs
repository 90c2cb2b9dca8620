//! The in-memory keyed state backend of flowstate.
//!
//! State lives in per-key-group persistent hash maps. A snapshot's
//! synchronous phase clones one map root per state and key group (no copy
//! of the state), and writes made while its asynchronous phase runs copy
//! only the map nodes they touch, so they never leak into the snapshot.
//! Snapshots use the canonical format, so they restore into any backend at
//! any parallelism; with [`HeapOptions::incremental`], checkpoints write
//! only what changed since the last confirmed one, per key group, as a
//! chain of a base and deltas (docs/format.md, "Heap chains"), and
//! savepoints stay canonical.
//!
//! ```
//! use flowstate_api::*;
//! use flowstate_api::checkpoint::InlineReader;
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
//! let storage = CheckpointStorage::in_memory("job");
//! let location = storage.init_checkpoint(1).await?;
//! let result = backend.snapshot(1, location.clone(), SnapshotOptions::checkpoint())?.await?;
//! let mut restored = HeapBackend::restore(config, &[result.handle], &InlineReader).await?;
//! let count = restored.register(ValueStateDescriptor::<u64>::new("count"))?;
//! restored.set_current_key(&1)?;
//! assert_eq!(restored.value(&count)?, Some(2));
//! # Ok(()) }
//! ```

mod chain;
mod restore;
mod table;

pub use chain::{chain_to_canonical, verify_chain, HeapOptions, CHAIN_MAGIC, CHAIN_VERSION};
pub use table::HeapState;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flowstate_api::backend::{
    AsyncOutput, BackendCapabilities, BackendCore, KeyVisitor, MapVisit, MapVisitor, StateId, StateMetaInfo,
    StorageKind,
};
use flowstate_api::checkpoint::{CheckpointLocation, StateReader, StateScope};
use flowstate_api::format::canonical::write_canonical_snapshot;
use flowstate_api::format::codec::put_varint;
use flowstate_api::{
    BackendFactory, CheckpointKind, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, PendingSnapshot, Result,
    SnapshotOptions,
};

use chain::{ChainWrite, Incremental};
use table::{
    elements, mark, mark_timer, pack, packed, split_composite, Changes, CompositeKey, FrozenTables, Inline, Table,
    TimerQueues,
};

/// The in-memory keyed state backend.
pub struct HeapBackend<K> {
    /// Config, current key and state registry, with each state's tables.
    core: BackendCore<K, HeapState>,
    /// The composite key of the current access.
    composite: Vec<u8>,
    /// States with incremental TTL cleanup that runs once per record.
    per_record_cleanup: Vec<StateId>,
    options: HeapOptions,
    /// Chains and change tracking, when checkpoints are incremental.
    incremental: Option<Incremental>,
    closed: Arc<AtomicBool>,
}

impl<K> std::fmt::Debug for HeapBackend<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapBackend").field("core", &self.core).finish()
    }
}

impl<K> Drop for HeapBackend<K> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl<K> HeapBackend<K> {
    /// An empty backend whose checkpoints are canonical full snapshots.
    pub fn new(config: KeyedBackendConfig<K>) -> Result<Self> {
        Self::with_options(config, HeapOptions::default())
    }

    /// An empty backend with `options` (e.g. incremental checkpoints).
    pub fn with_options(config: KeyedBackendConfig<K>, options: HeapOptions) -> Result<Self> {
        options.validate()?;
        let key_groups = config.key_group_range.len() as usize;
        let incremental = options
            .incremental
            .then(|| Incremental::new(key_groups, options.max_delta_ratio));
        Ok(HeapBackend {
            core: BackendCore::new(config)?,
            composite: Vec::new(),
            per_record_cleanup: Vec::new(),
            options,
            incremental,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The options the backend runs with.
    pub fn options(&self) -> &HeapOptions {
        &self.options
    }

    /// Marks the backend closed: snapshots still in their async phase fail
    /// and discard what they wrote.
    pub fn close(self) {}

    /// The tables of state `id`.
    fn tables(&mut self, id: StateId) -> Result<&mut HeapState> {
        self.core.storage_mut(id)
    }

    /// Runs incremental TTL cleanup for `id` if configured, then returns the
    /// state's tables and metadata, the key-group index and the composite
    /// key of the current key and the state's namespace.
    #[inline]
    fn target(&mut self, id: StateId) -> Result<(&mut HeapState, &StateMetaInfo, usize, &[u8])> {
        let first = self.core.key_group_range().start();
        let access = self.core.access_mut(id)?;
        let kg = (access.key_group - first) as usize;
        if let Some(ttl) = access.ttl {
            if let Some(inc) = ttl.cleanup().incremental {
                access
                    .storage
                    .incremental_cleanup(ttl.ttl_millis(), access.clock.now_millis(), inc.entries_per_access);
            }
        }
        self.composite.clear();
        put_varint(&mut self.composite, access.key.len() as u64);
        self.composite.extend_from_slice(access.key);
        self.composite.extend_from_slice(access.namespace);
        Ok((access.storage, access.meta, kg, &self.composite))
    }
}

impl<K> HeapBackend<K> {
    /// The timers of timer state `id` and their change set, the current
    /// key's key-group index and the current key.
    fn timers(&mut self, id: StateId) -> Result<TimerAccess<'_>> {
        let first = self.core.key_group_range().start();
        let access = self.core.access_mut(id)?;
        let kg = (access.key_group - first) as usize;
        let storage = access.storage;
        match &mut storage.table {
            Table::Timers(t) => Ok((t, &mut storage.changes, kg, access.key)),
            _ => Err(access.meta.wrong_kind(StorageKind::Timers)),
        }
    }

    /// The timers of timer state `id` and their change set.
    fn timer_queues(&mut self, id: StateId) -> Result<(&mut TimerQueues, &mut Option<Box<Changes>>)> {
        let meta = self.core.state(id)?.meta().clone();
        let storage = self.tables(id)?;
        match &mut storage.table {
            Table::Timers(t) => Ok((t, &mut storage.changes)),
            _ => Err(meta.wrong_kind(StorageKind::Timers)),
        }
    }
}

/// A timer state's queues and change set, the current key's key-group
/// index and the current key.
type TimerAccess<'a> = (&'a mut TimerQueues, &'a mut Option<Box<Changes>>, usize, &'a [u8]);

/// What the heap backend can do.
fn heap_capabilities() -> BackendCapabilities {
    BackendCapabilities::none().with_ttl_incremental_cleanup().with_timers()
}

macro_rules! maps {
    ($state:expr, $meta:expr, $variant:ident, $storage:ident) => {
        match &mut $state.table {
            Table::$variant(maps) => maps,
            _ => return Err($meta.wrong_kind(StorageKind::$storage)),
        }
    };
}

impl<K> KeyedStateBackend for HeapBackend<K> {
    type Key = K;
    type StateStorage = HeapState;

    #[inline]
    fn core(&self) -> &BackendCore<K, HeapState> {
        &self.core
    }

    #[inline]
    fn core_mut(&mut self) -> &mut BackendCore<K, HeapState> {
        &mut self.core
    }

    fn capabilities(&self) -> BackendCapabilities {
        capabilities_of(&self.options)
    }

    fn create_state_storage(&mut self, meta: &StateMetaInfo) -> Result<HeapState> {
        let groups = self.core.key_group_range().len() as usize;
        let track = self.incremental.as_ref().is_some_and(|i| i.armed);
        Ok(HeapState::new(meta.kind.storage(), groups, track))
    }

    fn state_registered(&mut self, state: StateId) -> Result<()> {
        let per_record = self
            .core
            .state(state)?
            .ttl()
            .and_then(|t| t.cleanup().incremental)
            .is_some_and(|i| i.run_for_every_record);
        self.per_record_cleanup.retain(|&s| s != state);
        if per_record {
            self.per_record_cleanup.push(state);
        }
        Ok(())
    }

    /// Runs the incremental TTL cleanup of the states that clean once per record.
    #[inline]
    fn current_key_changed(&mut self, _key_group: u32) -> Result<()> {
        if !self.per_record_cleanup.is_empty() {
            let now = self.core.clock().now_millis();
            for &id in &self.per_record_cleanup {
                let Ok(state) = self.core.state_mut(id) else {
                    continue;
                };
                let Some(ttl) = state.ttl() else {
                    continue;
                };
                if let Some(inc) = ttl.cleanup().incremental {
                    let (ttl_millis, per_access) = (ttl.ttl_millis(), inc.entries_per_access);
                    state.storage_mut().incremental_cleanup(ttl_millis, now, per_access);
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn raw_value_get<R>(&mut self, state: StateId, f: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R> {
        let (s, meta, kg, ck) = self.target(state)?;
        f(maps!(s, meta, Value, Value)[kg].get(ck))
    }

    #[inline]
    fn raw_value_put(&mut self, state: StateId, value: &[u8]) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        maps!(s, meta, Value, Value)[kg].put(ck, value);
        mark(&mut s.changes, kg, ck);
        Ok(())
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        match &mut s.table {
            Table::Timers(_) => return Err(meta.wrong_kind(StorageKind::Value)),
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
        mark(&mut s.changes, kg, ck);
        Ok(())
    }

    #[inline]
    fn raw_list_get(&mut self, state: StateId, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        if let Some(list) = maps!(s, meta, List, List)[kg].get(ck) {
            for e in elements(list) {
                f(e)?;
            }
        }
        Ok(())
    }

    #[inline]
    fn raw_list_append_all<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let (s, meta, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, meta, List, List)[kg];
        match map.get_mut(ck) {
            Some(list) => {
                let list = Arc::make_mut(list);
                for e in elements {
                    pack(list, e.as_ref());
                }
            }
            None => {
                map.insert(
                    CompositeKey::from_slice(ck),
                    Arc::new(packed(elements.iter().map(AsRef::as_ref))),
                );
            }
        }
        mark(&mut s.changes, kg, ck);
        Ok(())
    }

    fn raw_list_replace<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, meta, List, List)[kg];
        if elements.is_empty() {
            map.remove(ck);
        } else {
            map.insert(
                CompositeKey::from_slice(ck),
                Arc::new(packed(elements.iter().map(AsRef::as_ref))),
            );
        }
        mark(&mut s.changes, kg, ck);
        Ok(())
    }

    #[inline]
    fn raw_map_get<R>(
        &mut self,
        state: StateId,
        user_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R> {
        let (s, meta, kg, ck) = self.target(state)?;
        f(maps!(s, meta, Map, Map)[kg]
            .get(ck)
            .and_then(|m| m.get(user_key))
            .map(|v| &v[..]))
    }

    #[inline]
    fn raw_map_put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, meta, Map, Map)[kg];
        match map.get_mut(ck) {
            Some(m) => {
                Arc::make_mut(m).insert(Inline::from_slice(user_key), Inline::from_slice(value));
            }
            None => {
                let mut m = std::collections::BTreeMap::new();
                m.insert(Inline::from_slice(user_key), Inline::from_slice(value));
                map.insert(CompositeKey::from_slice(ck), Arc::new(m));
            }
        }
        mark(&mut s.changes, kg, ck);
        Ok(())
    }

    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, meta, Map, Map)[kg];
        let (removed, now_empty) = match map.get_mut(ck) {
            Some(m) if m.contains_key(user_key) => {
                Arc::make_mut(m).remove(user_key);
                (true, m.is_empty())
            }
            _ => (false, false),
        };
        if now_empty {
            map.remove(ck);
        }
        if removed {
            mark(&mut s.changes, kg, ck);
        }
        Ok(())
    }

    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()> {
        let (s, meta, kg, ck) = self.target(state)?;
        let map = &mut maps!(s, meta, Map, Map)[kg];
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
            mark(&mut s.changes, kg, ck);
        }
        Ok(())
    }

    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()> {
        if let Table::Timers(t) = &self.tables(state)?.table {
            for (_, key, ns) in t.sets.iter().flat_map(|s| s.iter()) {
                if namespace.is_none_or(|want| want == &ns[..]) {
                    f(key, ns)?;
                }
            }
            return Ok(());
        }
        self.tables(state)?.table.for_each_composite(|ck| {
            let (key, ns) = split_composite(ck)?;
            if namespace.is_none_or(|want| want == ns) {
                f(key, ns)?;
            }
            Ok(())
        })
    }

    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        Ok(self.tables(state)?.table.len())
    }

    fn raw_timer_register(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let (timers, changes, kg, key) = self.timers(state)?;
        timers.insert(kg, timestamp, key, namespace);
        mark_timer(changes, kg, timestamp, key, namespace);
        Ok(())
    }

    fn raw_timer_delete(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let (timers, changes, kg, key) = self.timers(state)?;
        timers.remove(kg, timestamp, key, namespace);
        mark_timer(changes, kg, timestamp, key, namespace);
        Ok(())
    }

    fn raw_timer_peek(&mut self, state: StateId) -> Result<Option<i64>> {
        Ok(self.timer_queues(state)?.0.peek())
    }

    fn raw_timer_poll(&mut self, state: StateId, time: i64) -> Result<Option<flowstate_api::backend::RawTimer>> {
        let (timers, changes) = self.timer_queues(state)?;
        Ok(timers.poll(time).map(|(kg, (ts, key, ns))| {
            mark_timer(changes, kg, ts, &key, &ns);
            (ts, key.into_vec(), ns.into_vec())
        }))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(inc) = &mut self.incremental {
            let changes = self.core.states_mut().map(|s| &mut s.storage_mut().changes);
            chain::confirmed(inc, checkpoint_id, changes)?;
        }
        Ok(())
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        if let Some(inc) = &mut self.incremental {
            chain::aborted(inc, checkpoint_id)?;
        }
        Ok(())
    }

    /// With incremental checkpoints: the next checkpoint writes every key
    /// group whole, so no checkpoint after it references older files.
    fn compact(&mut self) -> Result<()> {
        if let Some(inc) = &mut self.incremental {
            inc.rewrite_all = true;
        }
        Ok(())
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        let started = Instant::now();
        let _span = tracing::info_span!("snapshot_sync", checkpoint_id, backend = "heap").entered();
        let range = self.core.key_group_range();
        let header = self.core.snapshot_header(options.compression.is_some());
        let filter = self.core.ttl_filter();
        // With no state, a checkpoint is an empty handle either way.
        let chain = options.kind == CheckpointKind::Checkpoint && !header.states.is_empty();
        if let (Some(inc), true) = (&mut self.incremental, chain) {
            let states = self
                .core
                .states_mut()
                .map(|s| {
                    let storage = s.storage_mut();
                    (&storage.table, &mut storage.changes)
                })
                .collect();
            let sealed = chain::seal(inc, states, checkpoint_id)?;
            let write = ChainWrite {
                checkpoint_id,
                seq: sealed.seq,
                header,
                states: sealed.states,
                plans: sealed.plans,
                base: sealed.base,
                filter,
                level: options.compression,
                book: Arc::clone(&inc.book),
                backend_id: inc.backend_id.clone(),
                closed: Arc::clone(&self.closed),
            };
            return Ok(PendingSnapshot::new(checkpoint_id, started, write.run(location)));
        }
        let source = FrozenTables {
            tables: self.core.states().iter().map(|s| s.storage().table.clone()).collect(),
            first_key_group: range.start(),
            closed: Arc::clone(&self.closed),
        };
        let phase = async move {
            let stream = location.create_output_stream(StateScope::Exclusive).await?;
            let written = write_canonical_snapshot(&header, source, filter, stream, options.compression)
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

/// Builds and restores [`HeapBackend`]s: the heap backend's [`BackendFactory`].
///
/// ```
/// use flowstate_api::*;
/// use flowstate_heap::HeapBackendFactory;
///
/// # fn main() -> Result<()> {
/// let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
/// let mut backend = HeapBackendFactory::incremental().build(config)?;
/// let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
/// backend.set_current_key(&7)?;
/// backend.update(&count, 1)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct HeapBackendFactory {
    options: HeapOptions,
}

impl HeapBackendFactory {
    /// Backends whose checkpoints are canonical full snapshots: `heap`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Backends with incremental checkpoints: `heap-incremental`.
    pub fn incremental() -> Self {
        Self::with_options(HeapOptions::incremental())
    }

    /// Backends with `options`.
    pub fn with_options(options: HeapOptions) -> Self {
        HeapBackendFactory { options }
    }

    /// The options backends are built with.
    pub fn options(&self) -> &HeapOptions {
        &self.options
    }
}

/// What a heap backend with `options` can do.
fn capabilities_of(options: &HeapOptions) -> BackendCapabilities {
    let c = heap_capabilities();
    if options.incremental {
        c.with_incremental_checkpoints()
    } else {
        c
    }
}

impl BackendFactory for HeapBackendFactory {
    type Backend<K: 'static> = HeapBackend<K>;

    fn name(&self) -> &str {
        if self.options.incremental {
            "heap-incremental"
        } else {
            "heap"
        }
    }

    fn capabilities(&self) -> BackendCapabilities {
        capabilities_of(&self.options)
    }

    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<HeapBackend<K>> {
        HeapBackend::with_options(config, self.options.clone())
    }

    async fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> Result<HeapBackend<K>> {
        HeapBackend::restore_with_options(config, self.options.clone(), handles, &*reader).await
    }
}
