//! The RocksDB keyed state backend of flowstate: state larger than memory,
//! incremental checkpoints through shared SST files, local recovery,
//! rescaling by key-group ranges, and TTL cleanup in compaction.
//!
//! One column family per state. Keys are `key group | key | namespace`
//! (plus the user key for map state), so a key group is one contiguous
//! range. Lists append through a merge operator. All column families of a
//! backend share one block cache and one memtable budget.
//!
//! ```
//! use flowstate_api::*;
//! use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
//! let mut backend = RocksDbBackend::new(config.clone(), RocksDbOptions::new(dir.path()))?;
//! let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
//! backend.set_current_key(&7)?;
//! backend.update(&count, 1)?;
//!
//! let storage = MemoryCheckpointStorage::new("job");
//! let location = storage.init_checkpoint(1).await?;
//! let result = backend.snapshot(1, location, SnapshotOptions::savepoint())?.await?;
//! let mut restored =
//!     RocksDbBackend::restore(config, &[result.handle], &InlineReader, RocksDbOptions::new(dir.path())).await?;
//! let count = restored.register(ValueStateDescriptor::<u64>::new("count"))?;
//! restored.set_current_key(&7)?;
//! assert_eq!(restored.value(&count)?, Some(1));
//! # Ok(()) }
//! ```

mod error;
mod instance;
mod keys;
mod options;
mod restore;
mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flowstate_api::{
    next_backend_id, BackendCapabilities, CheckpointLocation, CurrentKey, Error, HandleFile, KeyGroupRange, KeyVisitor,
    KeyedBackendConfig, KeyedStateBackend, MapVisit, MapVisitor, PendingSnapshot, Result, SharedClock,
    SharedSerializer, SnapshotOptions, StateId, StateMeta, StateTtlConfig, StorageKind,
};
use rocksdb::{ColumnFamilyDescriptor, WriteBatch, WriteOptions, DB};

use instance::InstanceDir;
use keys::{decode_key, elements, key_part, pack, prefix_end, put_namespace};
pub use options::{
    LocalRecovery, RocksDbOptions, DEFAULT_BLOCK_CACHE, DEFAULT_UPLOAD_CONCURRENCY, DEFAULT_WRITE_BUFFER,
};
use options::{Resources, TtlSlot};
pub use restore::RestoreStats;

/// Converts a RocksDB error, naming what was being done (the message is
/// built only on failure: pass `format_args!` on hot paths). The kind
/// follows the RocksDB status (see [`error::classify`]) and the RocksDB
/// error is kept as the source.
pub(crate) fn db_err(what: impl std::fmt::Display) -> impl FnOnce(rocksdb::Error) -> Error {
    move |e| error::from_rocksdb(what, e)
}

/// A state: its column family and current namespace.
pub(crate) struct RState {
    pub(crate) meta: StateMeta,
    pub(crate) cf: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) ttl_slot: Arc<TtlSlot>,
    pub(crate) registered: bool,
    namespace: Vec<u8>,
}

/// The column family name of a state.
pub(crate) fn cf_name(state: &str) -> String {
    format!("s:{state}")
}

/// The key of a map entry: the (key, namespace) prefix and the user key.
fn map_key(prefix: &[u8], user_key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(prefix.len() + user_key.len());
    full.extend_from_slice(prefix);
    full.extend_from_slice(user_key);
    full
}

/// What incremental checkpoints may reuse. A new checkpoint reuses a shared
/// file only from the newest checkpoint this backend was notified complete
/// of (its base), and only if no later checkpoint that may still complete
/// uploaded that file afresh: once such a checkpoint completes it subsumes
/// the base and the base's copy is deleted, so reusing it would reference a
/// deleted file.
#[derive(Default)]
pub(crate) struct Uploads {
    /// Shared files by local name, per checkpoint whose async phase finished.
    pub(crate) pending: HashMap<u64, HashMap<String, HandleFile>>,
    /// The shared files of the base.
    pub(crate) last_completed: HashMap<String, HandleFile>,
    /// The base's checkpoint id; notifications at or below it are ignored.
    pub(crate) last_completed_id: Option<u64>,
    /// The SST files each checkpoint newer than the base uploads afresh,
    /// recorded in its sync phase; forgotten when it is aborted.
    pub(crate) fresh: BTreeMap<u64, HashSet<String>>,
    pub(crate) local_copies: Vec<(u64, PathBuf)>,
}

/// The RocksDB keyed state backend.
pub struct RocksDbBackend<K> {
    id: u64,
    config: KeyedBackendConfig<K>,
    options: RocksDbOptions,
    resources: Arc<Resources>,
    pub(crate) db: DB,
    instance: InstanceDir,
    /// Options of column families created after open: RocksDB keeps raw
    /// pointers to their compaction filters, so they outlive the database
    /// (fields drop in order, `db` first).
    cf_options: Vec<rocksdb::Options>,
    pub(crate) states: Vec<RState>,
    by_name: HashMap<String, StateId>,
    write: WriteOptions,
    current: CurrentKey,
    /// `kg | varint(len key) | key`.
    key_part: Vec<u8>,
    kg: Option<u32>,
    composite: Vec<u8>,
    pub(crate) uploads: Arc<Mutex<Uploads>>,
    pub(crate) closed: Arc<AtomicBool>,
    restore_stats: RestoreStats,
}

impl<K> std::fmt::Debug for RocksDbBackend<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbBackend")
            .field("id", &self.id)
            .field("key_group_range", &self.config.key_group_range)
            .field("dir", &self.instance.path())
            .field("states", &self.states.iter().map(|s| &s.meta.name).collect::<Vec<_>>())
            .finish()
    }
}

impl<K> Drop for RocksDbBackend<K> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl<K> RocksDbBackend<K> {
    /// An empty backend with its working directory under `options.working_dir`.
    /// Local copies left in its local-recovery scope by earlier runs are deleted.
    pub fn new(config: KeyedBackendConfig<K>, options: RocksDbOptions) -> Result<Self> {
        let mut backend = Self::open(config, options, None, None, &[])?;
        backend.adopt_local_copies(None)?;
        Ok(backend)
    }

    /// Opens the database in `instance` (a new instance directory if none);
    /// `existing` is a database directory (restored files) to move in, with
    /// its states.
    pub(crate) fn open(
        config: KeyedBackendConfig<K>,
        options: RocksDbOptions,
        instance: Option<InstanceDir>,
        existing: Option<&Path>,
        metas: &[StateMeta],
    ) -> Result<Self> {
        config.validate()?;
        if config.max_parallelism > 1 << 15 {
            return Err(Error::invalid(
                "the RocksDB backend supports max parallelism up to 32768",
            ));
        }
        let instance = match instance {
            Some(instance) => instance,
            None => InstanceDir::create(&options.working_dir)?,
        };
        let db_dir = instance.path().join("db");
        if let Some(src) = existing {
            std::fs::rename(src, &db_dir).map_err(|e| Error::io(db_dir.display(), e))?;
        }
        let resources = Arc::new(Resources::new(&options, config.clock.clone()));
        let mut states = Vec::new();
        let mut by_name = HashMap::new();
        let mut cfs = Vec::new();
        for meta in metas {
            let slot = Arc::new(TtlSlot::default());
            cfs.push(ColumnFamilyDescriptor::new(
                cf_name(&meta.name),
                resources.cf_options(meta.kind.storage(), Arc::clone(&slot)),
            ));
            by_name.insert(meta.name.clone(), states.len() as StateId);
            states.push(RState {
                meta: meta.clone(),
                cf: cf_name(&meta.name),
                ttl: None,
                ttl_slot: slot,
                registered: false,
                namespace: Vec::new(),
            });
        }
        let db = DB::open_cf_descriptors(&resources.db_options(), &db_dir, cfs)
            .map_err(db_err(format!("opening {}", db_dir.display())))?;
        let mut write = WriteOptions::default();
        // Checkpoints are the durability: no write-ahead log.
        write.disable_wal(true);
        Ok(RocksDbBackend {
            id: next_backend_id(),
            config,
            options,
            resources,
            db,
            instance,
            cf_options: Vec::new(),
            states,
            by_name,
            write,
            current: CurrentKey::default(),
            key_part: Vec::new(),
            kg: None,
            composite: Vec::new(),
            uploads: Arc::default(),
            closed: Arc::new(AtomicBool::new(false)),
            restore_stats: RestoreStats::default(),
        })
    }

    /// The backend's working directory.
    pub fn instance_dir(&self) -> &Path {
        self.instance.path()
    }

    /// A new path for a temporary directory inside the working directory.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        self.instance.temp_path(what)
    }

    /// The options it was created with.
    pub fn options(&self) -> &RocksDbOptions {
        &self.options
    }

    /// Flushes memtables and compacts every state fully, running the TTL
    /// compaction filter over all entries.
    pub fn compact(&self) -> Result<()> {
        for s in &self.states {
            let cf = self.cf(s)?;
            self.db.compact_range_cf::<&[u8], &[u8]>(cf, None, None);
        }
        Ok(())
    }

    /// Marks the backend closed: snapshots in their async phase fail.
    pub fn close(self) {}

    pub(crate) fn cf(&self, s: &RState) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(&s.cf)
            .ok_or_else(|| Error::internal(format!("state {:?} has no column family", s.meta.name)))
    }

    /// The id of state `meta`, creating its column family if new.
    pub(crate) fn ensure_state(&mut self, meta: &StateMeta) -> Result<StateId> {
        if let Some(&id) = self.by_name.get(&meta.name) {
            return Ok(id);
        }
        let slot = Arc::new(TtlSlot::default());
        let cf = cf_name(&meta.name);
        let options = self.resources.cf_options(meta.kind.storage(), Arc::clone(&slot));
        self.db
            .create_cf(&cf, &options)
            .map_err(db_err(format!("creating the column family of state {:?}", meta.name)))?;
        self.cf_options.push(options);
        let id = self.states.len() as StateId;
        self.by_name.insert(meta.name.clone(), id);
        self.states.push(RState {
            meta: meta.clone(),
            cf,
            ttl: None,
            ttl_slot: slot,
            registered: false,
            namespace: Vec::new(),
        });
        Ok(id)
    }

    fn state(&self, id: StateId) -> Result<&RState> {
        self.states
            .get(id as usize)
            .ok_or_else(|| Error::invalid(format!("no state with id {id}")))
    }

    /// Builds the RocksDB key of the current key and state `id`'s namespace.
    #[inline]
    fn build(&mut self, id: StateId) -> Result<()> {
        if self.kg.is_none() {
            return Err(Error::invalid(
                "no current key: call set_current_key before accessing state",
            ));
        }
        let s = self
            .states
            .get(id as usize)
            .ok_or_else(|| Error::invalid(format!("no state with id {id}")))?;
        self.composite.clear();
        self.composite.extend_from_slice(&self.key_part);
        put_namespace(&mut self.composite, &s.namespace);
        Ok(())
    }

    /// The state, its column family and the key [`build`](Self::build) made.
    #[inline]
    fn view(&self, id: StateId) -> Result<(&RState, &rocksdb::ColumnFamily, &[u8])> {
        let s = self.state(id)?;
        Ok((s, self.cf(s)?, &self.composite))
    }

    /// After the current key changed: its key prefix.
    fn set_key_group(&mut self, kg: Result<u32>) -> Result<()> {
        let kg = match kg {
            Ok(kg) => kg,
            Err(e) => {
                self.kg = None;
                return Err(e);
            }
        };
        self.kg = Some(kg);
        key_part(&mut self.key_part, kg, self.current.bytes().unwrap_or_default());
        Ok(())
    }

    fn wrong_kind(s: &RState, want: StorageKind) -> Error {
        Error::invalid(format!(
            "state {:?} is {:?} state, not {want:?}",
            s.meta.name,
            s.meta.kind.storage()
        ))
    }

    fn check_kind(s: &RState, want: StorageKind) -> Result<()> {
        if s.meta.kind.storage() == want {
            Ok(())
        } else {
            Err(Self::wrong_kind(s, want))
        }
    }

    /// Visits every entry of `cf` (state `name`) whose key starts with `prefix`.
    fn scan(
        db: &DB,
        cf: &rocksdb::ColumnFamily,
        name: &str,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut it = db.raw_iterator_cf(cf);
        it.seek(prefix);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(prefix) || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status()
            .map_err(db_err(format_args!("iterating over state {name:?}")))
    }
}

impl<K: 'static> KeyedStateBackend for RocksDbBackend<K> {
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
        let c = BackendCapabilities::none().with_ttl_compaction_filter();
        let c = if self.options.incremental {
            c.with_incremental_checkpoints()
        } else {
            c
        };
        if self.options.local_recovery.is_some() {
            c.with_local_recovery()
        } else {
            c
        }
    }

    fn register_state(&mut self, meta: StateMeta, ttl: Option<StateTtlConfig>) -> Result<StateId> {
        flowstate_api::validate_state_name(&meta.name)?;
        if let Some(&id) = self.by_name.get(&meta.name) {
            let state = &self.states[id as usize];
            if let Some(why) = meta.incompatibility(&state.meta) {
                let was = if state.registered { "registered" } else { "restored" };
                return Err(Error::incompatible(format!(
                    "state {:?} was {was} differently: {why}",
                    meta.name
                )));
            }
        }
        let id = self.ensure_state(&meta)?;
        let s = &mut self.states[id as usize];
        s.registered = true;
        s.ttl = ttl;
        let filter_ttl = ttl
            .filter(|t| t.cleanup().compaction_filter.is_some())
            .map_or(0, |t| t.ttl_millis().max(1));
        s.ttl_slot.set(filter_ttl);
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
        let s = self
            .states
            .get_mut(state as usize)
            .ok_or_else(|| Error::invalid(format!("no state with id {state}")))?;
        s.namespace.clear();
        s.namespace.extend_from_slice(namespace);
        Ok(())
    }

    fn raw_value_get(&mut self, state: StateId) -> Result<Option<Bytes>> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Value)?;
        let v = self
            .db
            .get_pinned_cf(cf, k)
            .map_err(db_err(format_args!("reading state {:?}", s.meta.name)))?;
        Ok(v.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn raw_value_put(&mut self, state: StateId, value: Bytes) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Value)?;
        self.db
            .put_cf_opt(cf, k, &value, &self.write)
            .map_err(db_err(format_args!("writing state {:?}", s.meta.name)))
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        match s.meta.kind.storage() {
            StorageKind::Value | StorageKind::List => self
                .db
                .delete_cf_opt(cf, k, &self.write)
                .map_err(db_err(format_args!("clearing state {:?}", s.meta.name))),
            StorageKind::Map => {
                let mut batch = WriteBatch::default();
                match prefix_end(k) {
                    Some(end) => batch.delete_range_cf(cf, k, &end[..]),
                    None => return Err(Error::internal("map prefix has no upper bound")),
                }
                self.db
                    .write_opt(batch, &self.write)
                    .map_err(db_err(format_args!("clearing map state {:?}", s.meta.name)))
            }
        }
    }

    fn raw_list_get(&mut self, state: StateId, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::List)?;
        let name = s.meta.name.clone();
        if let Some(v) = self
            .db
            .get_pinned_cf(cf, k)
            .map_err(db_err(format_args!("reading list state {name:?}")))?
        {
            for e in elements(&v, &name)? {
                f(e)?;
            }
        }
        Ok(())
    }

    fn raw_list_append(&mut self, state: StateId, element: Bytes) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::List)?;
        let mut op = Vec::with_capacity(element.len() + 2);
        pack(&mut op, &element);
        self.db
            .merge_cf_opt(cf, k, op, &self.write)
            .map_err(db_err(format_args!("appending to list state {:?}", s.meta.name)))
    }

    fn raw_list_append_all(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::List)?;
        let mut op = Vec::new();
        for e in &elements {
            pack(&mut op, e);
        }
        self.db
            .merge_cf_opt(cf, k, op, &self.write)
            .map_err(db_err(format_args!("appending to list state {:?}", s.meta.name)))
    }

    fn raw_list_replace(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::List)?;
        if elements.is_empty() {
            return self
                .db
                .delete_cf_opt(cf, k, &self.write)
                .map_err(db_err(format_args!("clearing list state {:?}", s.meta.name)));
        }
        let mut v = Vec::new();
        for e in &elements {
            pack(&mut v, e);
        }
        self.db
            .put_cf_opt(cf, k, v, &self.write)
            .map_err(db_err(format_args!("writing list state {:?}", s.meta.name)))
    }

    fn raw_map_get(&mut self, state: StateId, user_key: &[u8]) -> Result<Option<Bytes>> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Map)?;
        let full = map_key(k, user_key);
        let v = self
            .db
            .get_pinned_cf(cf, &full)
            .map_err(db_err(format_args!("reading an entry of map state {:?}", s.meta.name)))?;
        Ok(v.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn raw_map_put(&mut self, state: StateId, user_key: Bytes, value: Bytes) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Map)?;
        let full = map_key(k, &user_key);
        self.db
            .put_cf_opt(cf, full, &value, &self.write)
            .map_err(db_err(format_args!("writing an entry of map state {:?}", s.meta.name)))
    }

    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Map)?;
        let full = map_key(k, user_key);
        self.db
            .delete_cf_opt(cf, full, &self.write)
            .map_err(db_err(format_args!("removing an entry of map state {:?}", s.meta.name)))
    }

    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Map)?;
        let mut empty = true;
        Self::scan(&self.db, cf, &s.meta.name, k, |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()> {
        self.build(state)?;
        let (s, cf, k) = self.view(state)?;
        Self::check_kind(s, StorageKind::Map)?;
        let prefix_len = k.len();
        let mut removed = Vec::new();
        Self::scan(&self.db, cf, &s.meta.name, k, |key, value| {
            match f(&key[prefix_len..], value)? {
                MapVisit::Keep => Ok(true),
                MapVisit::Remove => {
                    removed.push(key.to_vec());
                    Ok(true)
                }
                MapVisit::Stop => Ok(false),
            }
        })?;
        if !removed.is_empty() {
            let mut batch = WriteBatch::default();
            for key in removed {
                batch.delete_cf(cf, key);
            }
            self.db
                .write_opt(batch, &self.write)
                .map_err(db_err(format_args!("removing entries of map state {:?}", s.meta.name)))?;
        }
        Ok(())
    }

    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()> {
        let s = self.state(state)?;
        let cf = self.cf(s)?;
        let name = s.meta.name.clone();
        let list = s.meta.kind.storage() == StorageKind::List;
        // Collected first: the visitor may modify the state.
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut last: Vec<u8> = Vec::new();
        Self::scan(&self.db, cf, &name, &[], |key, value| {
            if list && value.is_empty() {
                return Ok(true);
            }
            let d = decode_key(key, &name)?;
            if key[..d.prefix_len] != last[..] {
                last = key[..d.prefix_len].to_vec();
                if namespace.is_none_or(|want| want == d.namespace) {
                    pairs.push((d.key.to_vec(), d.namespace.to_vec()));
                }
            }
            Ok(true)
        })?;
        for (k, ns) in pairs {
            f(&k, &ns)?;
        }
        Ok(())
    }

    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        let s = self.state(state)?;
        let cf = self.cf(s)?;
        let name = s.meta.name.clone();
        let list = s.meta.kind.storage() == StorageKind::List;
        let mut n = 0;
        let mut last: Vec<u8> = Vec::new();
        Self::scan(&self.db, cf, &name, &[], |key, value| {
            let d = decode_key(key, &name)?;
            // Lists whose elements all expired in a merge are empty values.
            if list && value.is_empty() {
                return Ok(true);
            }
            if key[..d.prefix_len] != last[..] {
                last = key[..d.prefix_len].to_vec();
                n += 1;
            }
            Ok(true)
        })?;
        Ok(n)
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<dyn CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        snapshot::snapshot(self, checkpoint_id, location, options)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        snapshot::checkpoint_complete(self, checkpoint_id)
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        snapshot::checkpoint_aborted(self, checkpoint_id)
    }
}

impl<K> RocksDbBackend<K> {
    pub(crate) fn config(&self) -> &KeyedBackendConfig<K> {
        &self.config
    }

    pub(crate) fn resources(&self) -> &Arc<Resources> {
        &self.resources
    }
}
