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
//! use flowstate_api::checkpoint::InlineReader;
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
//! let storage = CheckpointStorage::in_memory("job");
//! let location = storage.init_checkpoint(1).await?;
//! let result = backend.snapshot(1, location, SnapshotOptions::savepoint())?.await?;
//! let mut restored =
//!     RocksDbBackend::restore(config, &[result.handle], &InlineReader, RocksDbOptions::new(dir.path())).await?;
//! let count = restored.register(ValueStateDescriptor::<u64>::new("count"))?;
//! restored.set_current_key(&7)?;
//! assert_eq!(restored.value(&count)?, Some(1));
//! # Ok(()) }
//! ```

mod bulk;
mod convert;
mod crash;
mod error;
mod files;
mod incremental;
mod instance;
mod keys;
mod list_merge;
mod local_recovery;
mod options;
mod restore;
mod snapshot;
mod timers;
mod ttl_filter;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flowstate_api::backend::{
    BackendCapabilities, BackendCore, KeyVisitor, MapVisit, MapVisitor, StateId, StateMetaInfo, StorageKind,
};
use flowstate_api::checkpoint::{CheckpointLocation, StateReader};
use flowstate_api::{
    BackendFactory, Error, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, PendingSnapshot, Result,
    SnapshotOptions,
};
use rocksdb::{ColumnFamilyDescriptor, WriteBatch, WriteOptions, DB};

pub use bulk::{BulkLoad, BulkLoadStats, DEFAULT_SPILL_BYTES};
pub use convert::incremental_to_canonical;
use incremental::Uploads;
use instance::InstanceDir;
use keys::{decode_key, for_each_element, key_part, pack, prefix_end, put_namespace};
pub use local_recovery::LocalRecovery;
use options::Resources;
pub use options::{RocksDbOptions, DEFAULT_BLOCK_CACHE, DEFAULT_UPLOAD_CONCURRENCY, DEFAULT_WRITE_BUFFER};
pub use restore::RestoreStats;
/// The escape hatch to RocksDB itself, for tuning and measuring: the only
/// place this crate's public API names a `rocksdb` type. Everything else
/// takes [`RocksDbOptions`].
pub mod tuning {
    use std::sync::Arc;

    use flowstate_api::backend::StorageKind;

    use crate::options::Resources;
    use crate::ttl_filter::TtlSlot;
    use crate::RocksDbOptions;

    /// The RocksDB bindings this backend is built on.
    pub use rocksdb;

    /// The options a backend configured with `options` opens its database and
    /// the column family of a value state with: the same tuning, for measuring
    /// raw RocksDB against the backend. Both share one block cache and one
    /// memtable budget, sized by `options`.
    pub fn raw_options(options: &RocksDbOptions) -> (rocksdb::Options, rocksdb::Options) {
        let resources = Resources::new(options, Arc::new(flowstate_api::ttl::SystemClock));
        let db = resources.db_options();
        let cf = resources.cf_options(StorageKind::Value, Arc::new(TtlSlot::default()));
        (db, cf)
    }
}
use ttl_filter::TtlSlot;

/// Converts a RocksDB error, naming what was being done (the message is
/// built only on failure: pass `format_args!` on hot paths). The kind
/// follows the RocksDB status (see [`error::classify`]) and the RocksDB
/// error is kept as the source.
pub(crate) fn db_err(what: impl std::fmt::Display) -> impl FnOnce(rocksdb::Error) -> Error {
    move |e| error::from_rocksdb(what, e)
}

/// The RocksDB backend's storage of one state: its column family (its
/// metadata, TTL config and namespace are in the backend's core). Opaque.
pub struct RocksDbState {
    pub(crate) cf: String,
    pub(crate) ttl_slot: Arc<TtlSlot>,
    /// The timer cache of a timer service (unused for other states).
    pub(crate) timers: timers::TimerCache,
}

/// The column family name of a state.
pub(crate) fn cf_name(state: &str) -> String {
    format!("s:{state}")
}

/// The RocksDB keyed state backend.
pub struct RocksDbBackend<K> {
    /// Config, current key and state registry, with each state's column
    /// family.
    pub(crate) core: BackendCore<K, RocksDbState>,
    options: RocksDbOptions,
    resources: Arc<Resources>,
    pub(crate) db: DB,
    instance: InstanceDir,
    /// Options of column families created after open: RocksDB keeps raw
    /// pointers to their compaction filters, so they outlive the database
    /// (fields drop in order, `db` first).
    cf_options: Vec<rocksdb::Options>,
    write: WriteOptions,
    /// The RocksDB key of the current access.
    composite: Vec<u8>,
    /// The merge operand of the current list append.
    operand: Vec<u8>,
    pub(crate) uploads: Arc<Mutex<Uploads>>,
    pub(crate) closed: Arc<AtomicBool>,
    restore_stats: RestoreStats,
}

impl<K> std::fmt::Debug for RocksDbBackend<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbBackend")
            .field("core", &self.core)
            .field("dir", &self.instance.path())
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
        metas: &[StateMetaInfo],
    ) -> Result<Self> {
        flowstate_api::runtime::check_blocking("opening a RocksDB database");
        let mut core = BackendCore::new(config)?;
        options.validate()?;
        if core.max_parallelism() > 1 << 15 {
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
        let resources = Arc::new(Resources::new(&options, core.clock().clone()));
        let mut cfs = Vec::new();
        for meta in metas {
            let slot = Arc::new(TtlSlot::default());
            cfs.push(ColumnFamilyDescriptor::new(
                cf_name(&meta.name),
                resources.cf_options(meta.kind.storage(), Arc::clone(&slot)),
            ));
            let state = RocksDbState {
                cf: cf_name(&meta.name),
                ttl_slot: slot,
                timers: Default::default(),
            };
            core.add_state(meta.clone(), state)?;
        }
        let db = DB::open_cf_descriptors(&resources.db_options(), &db_dir, cfs)
            .map_err(db_err(format!("opening {}", db_dir.display())))?;
        let mut write = WriteOptions::default();
        // Checkpoints are the durability: no write-ahead log.
        write.disable_wal(true);
        Ok(RocksDbBackend {
            core,
            options,
            resources,
            db,
            instance,
            cf_options: Vec::new(),
            write,
            composite: Vec::new(),
            operand: Vec::new(),
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
        for s in self.core.states() {
            let cf = self.cf(s.storage())?;
            self.db.compact_range_cf::<&[u8], &[u8]>(cf, None, None);
        }
        Ok(())
    }

    /// Marks the backend closed: snapshots in their async phase fail.
    pub fn close(self) {}

    pub(crate) fn cf(&self, s: &RocksDbState) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(&s.cf)
            .ok_or_else(|| Error::internal(format!("column family {:?} is missing", s.cf)))
    }

    /// State `id`'s storage, column family and metadata.
    fn state_cf(&self, id: StateId) -> Result<(&RocksDbState, &rocksdb::ColumnFamily, &StateMetaInfo)> {
        let state = self.core.state(id)?;
        let s = state.storage();
        Ok((s, self.cf(s)?, state.meta()))
    }

    /// Builds the RocksDB key of the current key, state `id`'s namespace
    /// and `user_key` (empty but for map entries).
    #[inline]
    fn build(&mut self, id: StateId, user_key: &[u8]) -> Result<()> {
        let access = self.core.access(id)?;
        key_part(&mut self.composite, access.key_group, access.key);
        put_namespace(&mut self.composite, access.state.namespace());
        self.composite.extend_from_slice(user_key);
        Ok(())
    }

    /// The state's metadata, its column family and the key
    /// [`build`](Self::build) made.
    #[inline]
    fn view(&self, id: StateId) -> Result<(&StateMetaInfo, &rocksdb::ColumnFamily, &[u8])> {
        let (_, cf, meta) = self.state_cf(id)?;
        Ok((meta, cf, &self.composite))
    }

    fn wrong_kind(meta: &StateMetaInfo, want: StorageKind) -> Error {
        meta.wrong_kind(want)
    }

    fn check_kind(meta: &StateMetaInfo, want: StorageKind) -> Result<()> {
        if meta.kind.storage() == want {
            Ok(())
        } else {
            Err(Self::wrong_kind(meta, want))
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

impl<K> KeyedStateBackend for RocksDbBackend<K> {
    type Key = K;
    type StateStorage = RocksDbState;

    #[inline]
    fn core(&self) -> &BackendCore<K, RocksDbState> {
        &self.core
    }

    #[inline]
    fn core_mut(&mut self) -> &mut BackendCore<K, RocksDbState> {
        &mut self.core
    }

    fn capabilities(&self) -> BackendCapabilities {
        capabilities_of(&self.options)
    }

    fn create_state_storage(&mut self, meta: &StateMetaInfo) -> Result<RocksDbState> {
        let slot = Arc::new(TtlSlot::default());
        let cf = cf_name(&meta.name);
        let options = self.resources.cf_options(meta.kind.storage(), Arc::clone(&slot));
        self.db
            .create_cf(&cf, &options)
            .map_err(db_err(format!("creating the column family of state {:?}", meta.name)))?;
        self.cf_options.push(options);
        Ok(RocksDbState {
            cf,
            ttl_slot: slot,
            timers: Default::default(),
        })
    }

    /// Hands the state's TTL to its compaction filter.
    fn state_registered(&mut self, state: StateId) -> Result<()> {
        let filter_ttl = self
            .core
            .state(state)?
            .ttl()
            .filter(|t| t.cleanup().compaction_filter.is_some())
            .map_or(0, |t| t.ttl_millis().max(1));
        self.core.state(state)?.storage().ttl_slot.set(filter_ttl);
        Ok(())
    }

    #[inline]
    fn raw_value_get<R>(&mut self, state: StateId, f: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Value)?;
        let v = self
            .db
            .get_pinned_cf(cf, k)
            .map_err(db_err(format_args!("reading state {:?}", meta.name)))?;
        f(v.as_deref())
    }

    #[inline]
    fn raw_value_put(&mut self, state: StateId, value: &[u8]) -> Result<()> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Value)?;
        self.db
            .put_cf_opt(cf, k, value, &self.write)
            .map_err(db_err(format_args!("writing state {:?}", meta.name)))
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        match meta.kind.storage() {
            StorageKind::Value | StorageKind::List => self
                .db
                .delete_cf_opt(cf, k, &self.write)
                .map_err(db_err(format_args!("clearing state {:?}", meta.name))),
            StorageKind::Timers => Err(meta.wrong_kind(StorageKind::Value)),
            StorageKind::Map => {
                let mut batch = WriteBatch::default();
                match prefix_end(k) {
                    Some(end) => batch.delete_range_cf(cf, k, &end[..]),
                    None => return Err(Error::internal("map prefix has no upper bound")),
                }
                self.db
                    .write_opt(batch, &self.write)
                    .map_err(db_err(format_args!("clearing map state {:?}", meta.name)))
            }
        }
    }

    #[inline]
    fn raw_list_get(&mut self, state: StateId, f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::List)?;
        if let Some(v) = self
            .db
            .get_pinned_cf(cf, k)
            .map_err(db_err(format_args!("reading list state {:?}", meta.name)))?
        {
            for_each_element(&v, &meta.name, f)?;
        }
        Ok(())
    }

    /// One merge operand holding every element.
    #[inline]
    fn raw_list_append_all<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        self.build(state, &[])?;
        let mut op = std::mem::take(&mut self.operand);
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::List)?;
        op.clear();
        for e in elements {
            pack(&mut op, e.as_ref());
        }
        let result = self
            .db
            .merge_cf_opt(cf, k, &op, &self.write)
            .map_err(db_err(format_args!("appending to list state {:?}", meta.name)));
        self.operand = op;
        result
    }

    fn raw_list_replace<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::List)?;
        if elements.is_empty() {
            return self
                .db
                .delete_cf_opt(cf, k, &self.write)
                .map_err(db_err(format_args!("clearing list state {:?}", meta.name)));
        }
        let mut v = Vec::new();
        for e in elements {
            pack(&mut v, e.as_ref());
        }
        self.db
            .put_cf_opt(cf, k, v, &self.write)
            .map_err(db_err(format_args!("writing list state {:?}", meta.name)))
    }

    #[inline]
    fn raw_map_get<R>(
        &mut self,
        state: StateId,
        user_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R> {
        self.build(state, user_key)?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        let v = self
            .db
            .get_pinned_cf(cf, k)
            .map_err(db_err(format_args!("reading an entry of map state {:?}", meta.name)))?;
        f(v.as_deref())
    }

    #[inline]
    fn raw_map_put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        self.build(state, user_key)?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        self.db
            .put_cf_opt(cf, k, value, &self.write)
            .map_err(db_err(format_args!("writing an entry of map state {:?}", meta.name)))
    }

    /// One write batch for all entries.
    fn raw_map_put_all(&mut self, state: StateId, entries: &[(&[u8], &[u8])]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.build(state, &[])?;
        let mut k = std::mem::take(&mut self.composite);
        let prefix = k.len();
        let (_, cf, meta) = self.state_cf(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        let mut batch = WriteBatch::default();
        for (user_key, value) in entries {
            k.truncate(prefix);
            k.extend_from_slice(user_key);
            batch.put_cf(cf, &k, value);
        }
        let written = self
            .db
            .write_opt(batch, &self.write)
            .map_err(db_err(format_args!("writing entries of map state {:?}", meta.name)));
        self.composite = k;
        written
    }

    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        self.build(state, user_key)?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        self.db
            .delete_cf_opt(cf, k, &self.write)
            .map_err(db_err(format_args!("removing an entry of map state {:?}", meta.name)))
    }

    /// A prefix scan that stops at the first entry.
    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        let mut empty = true;
        Self::scan(&self.db, cf, &meta.name, k, |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()> {
        self.build(state, &[])?;
        let (meta, cf, k) = self.view(state)?;
        Self::check_kind(meta, StorageKind::Map)?;
        let prefix_len = k.len();
        let mut removed = Vec::new();
        Self::scan(&self.db, cf, &meta.name, k, |key, value| {
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
                .map_err(db_err(format_args!("removing entries of map state {:?}", meta.name)))?;
        }
        Ok(())
    }

    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()> {
        let (_, cf, meta) = self.state_cf(state)?;
        let name = &meta.name;
        let list = meta.kind.storage() == StorageKind::List;
        // Collected first: the visitor may modify the state.
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut last: Vec<u8> = Vec::new();
        if meta.kind.storage() == StorageKind::Timers {
            Self::scan(&self.db, cf, name, &[], |key, _| {
                let t = keys::decode_timer_key(key, name)?;
                if namespace.is_none_or(|want| want == t.namespace) {
                    pairs.push((t.key, t.namespace));
                }
                Ok(true)
            })?;
        }
        let timers = meta.kind.storage() == StorageKind::Timers;
        Self::scan(&self.db, cf, name, &[], |key, value| {
            if timers {
                return Ok(false);
            }
            if list && value.is_empty() {
                return Ok(true);
            }
            let d = decode_key(key, name)?;
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

    /// A scan that collects nothing.
    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        let (_, cf, meta) = self.state_cf(state)?;
        let name = &meta.name;
        let list = meta.kind.storage() == StorageKind::List;
        let mut n = 0;
        let mut last: Vec<u8> = Vec::new();
        let timers = meta.kind.storage() == StorageKind::Timers;
        Self::scan(&self.db, cf, name, &[], |key, value| {
            if timers {
                n += 1;
                return Ok(true);
            }
            let d = decode_key(key, name)?;
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

    fn raw_timer_register(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        self.with_timers(state, |cache, db, range, current| {
            let (kg, key) = current()?;
            cache.register(db, range, kg, (timestamp, key, namespace))
        })
    }

    fn raw_timer_delete(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        self.with_timers(state, |cache, db, range, current| {
            let (kg, key) = current()?;
            cache.delete(db, range, kg, (timestamp, key, namespace))
        })
    }

    fn raw_timer_peek(&mut self, state: StateId) -> Result<Option<i64>> {
        self.with_timers(state, |cache, db, range, _| cache.peek(db, range))
    }

    fn raw_timer_poll(&mut self, state: StateId, time: i64) -> Result<Option<flowstate_api::backend::RawTimer>> {
        self.with_timers(state, |cache, db, range, _| cache.poll(db, range, time))
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        snapshot::snapshot(self, checkpoint_id, location, options)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        incremental::checkpoint_complete(self, checkpoint_id)
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        incremental::checkpoint_aborted(self, checkpoint_id)
    }

    /// A full compaction of every state ([`RocksDbBackend::compact`]).
    fn compact(&mut self) -> Result<()> {
        RocksDbBackend::compact(self)
    }
}

/// The current key's key group and bytes, or the error of an access without one.
type CurrentAccess<'a> = &'a dyn Fn() -> Result<(u32, &'a [u8])>;

impl<K> RocksDbBackend<K> {
    /// Runs `f` with the timer cache of timer service `id`, its column
    /// family, the backend's key groups and the current key.
    fn with_timers<R>(
        &mut self,
        id: StateId,
        f: impl FnOnce(
            &mut timers::TimerCache,
            &timers::Db<'_>,
            flowstate_api::KeyGroupRange,
            CurrentAccess<'_>,
        ) -> Result<R>,
    ) -> Result<R> {
        let range = self.core.key_group_range();
        let (state, current_key) = self.core.state_and_current_key(id)?;
        if state.meta().kind.storage() != StorageKind::Timers {
            return Err(state.meta().wrong_kind(StorageKind::Timers));
        }
        let name = state.meta().name.clone();
        let s = state.storage_mut();
        let cf = self
            .db
            .cf_handle(&s.cf)
            .ok_or_else(|| Error::internal(format!("column family {:?} is missing", s.cf)))?;
        let db = timers::Db {
            db: &self.db,
            cf,
            write: &self.write,
            name: &name,
        };
        let current = || current_key.get();
        f(&mut s.timers, &db, range, &current)
    }

    pub(crate) fn config(&self) -> &KeyedBackendConfig<K> {
        self.core.config()
    }

    pub(crate) fn resources(&self) -> &Arc<Resources> {
        &self.resources
    }
}

/// What a RocksDB backend with `options` can do.
fn capabilities_of(options: &RocksDbOptions) -> BackendCapabilities {
    let c = BackendCapabilities::none().with_ttl_compaction_filter().with_timers();
    let c = if options.incremental {
        c.with_incremental_checkpoints()
    } else {
        c
    };
    // Local copies are kept of every checkpoint; the local-recovery
    // contracts are those of incremental checkpoints.
    if options.local_recovery.is_some() && options.incremental {
        c.with_local_recovery()
    } else {
        c
    }
}

/// Builds and restores [`RocksDbBackend`]s with one set of options: the
/// RocksDB backend's [`BackendFactory`]. Every backend it builds or
/// restores works in its own instance directory under the options'
/// working directory.
///
/// ```
/// use flowstate_api::*;
/// use flowstate_rocksdb::{RocksDbBackendFactory, RocksDbOptions};
///
/// # fn main() -> Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let builder = RocksDbBackendFactory::new(RocksDbOptions::new(dir.path()));
/// let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
/// let mut backend = builder.build(config)?;
/// let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
/// backend.set_current_key(&7)?;
/// backend.update(&count, 1)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RocksDbBackendFactory {
    options: RocksDbOptions,
}

impl RocksDbBackendFactory {
    /// Builds backends with `options`.
    pub fn new(options: RocksDbOptions) -> Self {
        RocksDbBackendFactory { options }
    }

    /// The options every backend gets.
    pub fn options(&self) -> &RocksDbOptions {
        &self.options
    }
}

impl BackendFactory for RocksDbBackendFactory {
    type Backend<K: 'static> = RocksDbBackend<K>;

    fn name(&self) -> &str {
        "rocksdb"
    }

    fn capabilities(&self) -> BackendCapabilities {
        capabilities_of(&self.options)
    }

    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<RocksDbBackend<K>> {
        RocksDbBackend::new(config, self.options.clone())
    }

    async fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> Result<RocksDbBackend<K>> {
        RocksDbBackend::restore(config, handles, &*reader, self.options.clone()).await
    }
}
