//! Disaggregated keyed state for flowstate: a backend whose primary copy of
//! state lives in object storage, through [SlateDB](https://slatedb.io).
//!
//! Each backend instance writes one SlateDB database of its own, at a fresh
//! path `<base path>/<uuid>` of [`SlateDbOptions`]. State is read and
//! written there directly (a memtable in memory, SST files in the object
//! store, an optional shared block cache), so:
//!
//! - a checkpoint uploads nothing of its own: it flushes the memtable (what
//!   SlateDB writes anyway) and takes a SlateDB checkpoint, which pins the
//!   database's files; the handle references that checkpoint;
//! - a restore downloads nothing: it clones the checkpoint into a fresh
//!   path (a new manifest referencing the same files) and opens it; reads
//!   fetch what they need;
//! - a rescaled restore clones from every handle that holds some of the
//!   new key groups at once, each projected to those key groups, so
//!   nothing outside the backend's key groups is ever visible.
//!
//! The backend implements [`AsyncKeyedStateBackend`]: requests of many
//! records are outstanding at once, so remote reads overlap. Use it through
//! [`RecordCtx`](flowstate_api::RecordCtx) and
//! [`KeyOrderedExecutor`](flowstate_api::KeyOrderedExecutor), on a Tokio
//! runtime (SlateDB runs its flushes, compactions and garbage collection as
//! Tokio tasks).
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//! use flowstate_slatedb::{SlateDbBackend, SlateDbOptions};
//! use object_store::memory::InMemory;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<()> {
//! let options = SlateDbOptions::new(Arc::new(InMemory::new()), "job/slatedb/counter")?;
//! let config = KeyedBackendConfig::<String>::new(KeyGroupRange::all(128)?, 128);
//! let backend = Arc::new(SlateDbBackend::open(options, config).await?);
//! let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
//!
//! let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 1000)?;
//! for user in ["a", "b", "a"] {
//!     let count = count.clone();
//!     executor
//!         .submit(&user.to_string(), move |ctx| async move {
//!             let n = ctx.value(&count).await?.unwrap_or(0);
//!             ctx.update(&count, n + 1).await
//!         })
//!         .await?;
//! }
//! executor.drain().await?;
//! let ctx = RecordCtx::for_key(Arc::clone(&backend), &"a".to_string())?;
//! assert_eq!(ctx.value(&count).await?, Some(2));
//! backend.close().await?;
//! # Ok(()) }
//! ```
//!
//! Engines with a current-key model use the synchronous face,
//! [`SlateDbSyncBackend`], built and restored by [`SlateDbBackendFactory`]
//! (which runs the databases on a Tokio runtime of its own): each operation
//! waits for its request, so the asynchronous face is the fast one.
//!
//! - **Savepoints** are canonical (they must not depend on the database):
//!   a SlateDB snapshot is taken in the synchronous phase and written one
//!   key group at a time. Canonical snapshots of any backend restore into
//!   this one (a backend switch).
//! - **Release.** A SlateDB checkpoint pins the database's files until it
//!   is released: by the [`CheckpointStore`](flowstate_api::CheckpointStore)
//!   that retains the checkpoints, through [`SlateDbOptions::release`],
//!   when it subsumes, discards or aborts them; or, for engines without a
//!   store, by the backend itself
//!   ([`SlateDbOptions::with_retained_checkpoints`]).
//! - Expired TTL entries are hidden on read but not removed (no compaction
//!   filter).
//! - **A failing store** fails the read, write or checkpoint after
//!   [`DEFAULT_STORE_RETRIES`] retries of SlateDB's own
//!   ([`SlateDbOptions::with_store_retries`]), on top of the store client's;
//!   releases, clones and garbage collection fail at once. The job then
//!   restarts from its last checkpoint, as on any backend.
//!
//! - `keys.rs`: the key layout (key group first, then the state's tag);
//! - `merge.rs`: [`ListConcat`], the merge operator of list appends;
//! - `timers.rs`: timers in the database with an in-memory index;
//! - `reference.rs`: the handle's metadata, the reference to a SlateDB
//!   checkpoint ([`SlateDbCheckpointRef`]);
//! - `restore.rs`: restores and rescales as clones;
//! - `canonical.rs`: savepoints, and canonical snapshots restored;
//! - `release.rs`: [`SlateDbRelease`], what the checkpoint store calls;
//! - `blocking.rs`: the synchronous face and its factory;
//! - `options.rs`: [`SlateDbOptions`].

mod blocking;
mod canonical;
mod error;
mod fail_fast;
pub mod keys;
mod merge;
mod options;
mod reference;
mod release;
mod restore;
mod timers;

pub use blocking::{SlateDbBackendFactory, SlateDbSyncBackend};
pub use merge::ListConcat;
pub use options::{
    SlateDbOptions, DEFAULT_CACHE_BYTES, DEFAULT_L0_SST_SIZE, DEFAULT_MAX_UNFLUSHED_BYTES, DEFAULT_STORE_RETRIES,
};
pub use reference::{decode_meta, SlateDbCheckpointRef, REFERENCE_MAGIC, REFERENCE_VERSION};
pub use release::{SlateDbGcReport, SlateDbRelease};
/// The SlateDB version this backend is built on ([`SlateDbBackend::db`]
/// hands out its database).
pub use slatedb;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flowstate_api::asynchronous::Target;
use flowstate_api::backend::AsyncOutput;
use flowstate_api::backend::{BackendCapabilities, BackendCore, MapVisit, RawTimer, StateId, StorageKind};
use flowstate_api::checkpoint::{
    CheckpointLocation, IncrementalStateHandle, KeyGroupsStateHandle, KeyedStateHandle, NativeFormat, StateReader,
    StateScope, StreamStateHandle,
};
use flowstate_api::descriptor::{StateDescriptor, StateMetaInfo, StateRef};
use flowstate_api::format::canonical::{write_canonical_snapshot, SnapshotHeader, TtlFilter};
use flowstate_api::serializer::{SchemaCompatibility, SharedSerializer};
use flowstate_api::ttl::SharedClock;
use flowstate_api::{
    AsyncKeyedStateBackend, CheckpointKind, Error, ErrorKind, KeyGroupRange, KeyedBackendConfig, PendingSnapshot,
    Result, SnapshotOptions,
};
use slatedb::admin::Admin;
use slatedb::config::{CheckpointOptions, CheckpointScope};
use slatedb::{Db, WriteBatch};

use crate::error::slate_err;
use crate::keys::{map_key, pack_all, state_key, state_tag};
use crate::reference::encode_meta;
use crate::timers::{TimerDb, TimerIndex};

/// The backend's storage of one state: its tag in the key layout and, for
/// a timer service, its index.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    tag: u32,
    kind: StorageKind,
    name: Arc<str>,
    timers: Option<Arc<TimerIndex>>,
}

impl StateStore {
    fn new(meta: &StateMetaInfo) -> Self {
        let kind = meta.kind.storage();
        StateStore {
            tag: state_tag(&meta.name),
            kind,
            name: Arc::from(meta.name.as_str()),
            timers: (kind == StorageKind::Timers).then(|| Arc::new(TimerIndex::default())),
        }
    }
}

/// SlateDB checkpoints this backend created, by flowstate checkpoint id.
#[derive(Debug, Default)]
struct Checkpoints {
    /// Taken, not yet complete or aborted.
    pending: BTreeMap<u64, uuid::Uuid>,
    /// Complete, oldest first; at most `retained_checkpoints` of them.
    completed: VecDeque<(u64, uuid::Uuid)>,
}

/// Counts a request from its first poll until it completes or is dropped.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ids of shared caches, one per database.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

/// The disaggregated keyed state backend: one SlateDB database per
/// instance, in object storage. See the [crate docs](crate).
pub struct SlateDbBackend<K> {
    db: Db,
    admin: Admin,
    uuid: String,
    path: String,
    id: u64,
    config: KeyedBackendConfig<K>,
    core: Mutex<BackendCore<K, StateStore>>,
    options: SlateDbOptions,
    outstanding: AtomicUsize,
    checkpoints: Mutex<Checkpoints>,
    /// Set when the backend is closed or dropped: snapshots still in their
    /// asynchronous phase then fail with `Closed`.
    closed: Arc<AtomicBool>,
}

impl<K> Drop for SlateDbBackend<K> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl<K> fmt::Debug for SlateDbBackend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlateDbBackend")
            .field("backend_id", &self.id)
            .field("path", &self.path)
            .field("key_group_range", &self.config.key_group_range)
            .finish_non_exhaustive()
    }
}

fn poisoned() -> Error {
    Error::internal("the SlateDB backend is unusable: an earlier request panicked while holding its registry")
}

impl<K: 'static> SlateDbBackend<K> {
    /// An empty backend: creates a database at a fresh path under the
    /// options' base path.
    pub async fn open(options: SlateDbOptions, config: KeyedBackendConfig<K>) -> Result<Self> {
        Self::restore(options, config, &[], None).await
    }

    /// Opens the database at `path` (a new one, or a clone just made) as
    /// backend `uuid`, for `sources` cloned databases.
    async fn open_at(
        options: SlateDbOptions,
        config: KeyedBackendConfig<K>,
        uuid: String,
        path: String,
        sources: usize,
    ) -> Result<Self> {
        let core = BackendCore::new(config.clone())?;
        let mut settings = options.settings();
        if sources > 1 {
            // A union clone starts with the L0 files of every source.
            settings.l0_max_ssts = settings.l0_max_ssts_per_key.max(settings.l0_max_ssts) * sources;
        }
        let mut builder = Db::builder(path.as_str(), Arc::clone(&options.object_store))
            .with_settings(settings)
            .with_merge_operator(Arc::new(ListConcat));
        builder = match &options.cache {
            Some(cache) => builder.with_db_cache(Arc::clone(cache), NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed)),
            None => builder.with_db_cache_disabled(),
        };
        let db = builder
            .build()
            .await
            .map_err(slate_err(|| format!("opening database {path}")))?;
        let admin = fail_fast::admin_builder(&path, &options.object_store)
            .with_merge_operator(Arc::new(ListConcat))
            .build();
        Ok(SlateDbBackend {
            db,
            admin,
            uuid,
            id: core.id(),
            path,
            config,
            core: Mutex::new(core),
            options,
            outstanding: AtomicUsize::new(0),
            checkpoints: Mutex::new(Checkpoints::default()),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A backend restored from `handles` (checkpoints of SlateDB backends,
    /// of any parallelism: only the key groups of `config` are kept), each
    /// metadata stream read through `reader`. Nothing is downloaded: the
    /// SlateDB checkpoints the handles reference are cloned, projected to
    /// this backend's key groups, into a fresh database, which is opened.
    /// `reader` may be `None` only without handles.
    pub async fn restore(
        options: SlateDbOptions,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Option<Arc<dyn StateReader>>,
    ) -> Result<Self> {
        config.validate()?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let path = options.db_path(&uuid);
        let plan = restore::plan(&options, &config, handles, reader.as_deref()).await?;
        let store = Arc::clone(&options.object_store);
        let restored = Self::restore_at(options, config, uuid, path.clone(), &plan, reader).await;
        if restored.is_err() {
            // Nothing of a failed restore stays behind.
            if let Err(e) = release::delete_database(&store, &path).await {
                tracing::warn!(error = %e, db = %path, "left the database of a failed restore for garbage collection");
            }
        }
        restored
    }

    /// Clones `plan`'s sources into a new database at `path`, opens it and
    /// writes the canonical snapshots of `plan` into it; closes it again
    /// when that fails.
    async fn restore_at(
        options: SlateDbOptions,
        config: KeyedBackendConfig<K>,
        uuid: String,
        path: String,
        plan: &restore::Plan,
        reader: Option<Arc<dyn StateReader>>,
    ) -> Result<Self> {
        restore::clone_sources(&options, &path, plan).await?;
        let backend = Self::open_at(options, config, uuid, path, plan.sources.len()).await?;
        match backend.register_restored(plan, reader.as_deref()).await {
            Ok(()) => Ok(backend),
            Err(e) => {
                let _ = backend.close().await;
                Err(e)
            }
        }
    }

    /// Registers the states of `plan`'s sources and writes its canonical
    /// snapshots.
    async fn register_restored(&self, plan: &restore::Plan, reader: Option<&dyn StateReader>) -> Result<()> {
        {
            let mut core = self.core.lock().map_err(|_| poisoned())?;
            for (header, source) in &plan.headers {
                for meta in &header.states {
                    if core.check_restored(meta, source)?.is_none() {
                        check_tag(&core, meta)?;
                        core.add_state(meta.clone(), StateStore::new(meta))?;
                    }
                }
            }
        }
        for handle in &plan.canonical {
            let reader = reader.ok_or_else(|| Error::invalid("restoring a canonical snapshot needs a state reader"))?;
            canonical::restore(&self.db, &self.path, &self.config, handle, reader, |header, name| {
                let mut core = self.core.lock().map_err(|_| poisoned())?;
                let source = format!("snapshot {name}");
                header
                    .states
                    .iter()
                    .map(|meta| {
                        let id = match core.check_restored(meta, &source)? {
                            Some(id) => id,
                            None => {
                                check_tag(&core, meta)?;
                                core.add_state(meta.clone(), StateStore::new(meta))?
                            }
                        };
                        let s = core.state(id)?.storage();
                        Ok(canonical::SnapshotState {
                            tag: s.tag,
                            kind: s.kind,
                            name: Arc::clone(&s.name),
                        })
                    })
                    .collect()
            })
            .await?;
        }
        Ok(())
    }

    /// The database's path in the object store.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The backend instance's UUID (the last component of its path, and
    /// the backend id its handles carry).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The SlateDB database, for inspection (its files, manifest, a raw
    /// scan). Writing to it directly bypasses the backend's layout.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The options the backend was opened with.
    pub fn options(&self) -> &SlateDbOptions {
        &self.options
    }

    /// The SlateDB checkpoints of completed checkpoints this backend keeps,
    /// oldest first: `(flowstate checkpoint id, SlateDB checkpoint id)`.
    pub fn retained_checkpoints(&self) -> Result<Vec<(u64, [u8; 16])>> {
        let c = self.checkpoints.lock().map_err(|_| poisoned())?;
        Ok(c.completed.iter().map(|(id, u)| (*id, u.into_bytes())).collect())
    }

    /// Closes the database, flushing the memtable (state written since the
    /// last checkpoint is then in the object store, but belongs to no
    /// checkpoint). Requests after this fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.db
            .close()
            .await
            .map_err(slate_err(|| format!("closing database {}", self.path)))
    }

    fn request(&self) -> Outstanding<'_> {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Outstanding(&self.outstanding)
    }

    /// The storage of `state`, which must be of `kind`.
    fn state(&self, state: StateId, kind: StorageKind) -> Result<StateStore> {
        let core = self.core.lock().map_err(|_| poisoned())?;
        let entry = core.state(state)?;
        if entry.storage().kind != kind {
            return Err(entry.meta().wrong_kind(kind));
        }
        Ok(entry.storage().clone())
    }

    fn timer_db<'a>(&'a self, s: &'a StateStore) -> TimerDb<'a> {
        TimerDb {
            db: &self.db,
            tag: s.tag,
            name: &s.name,
            range: self.config.key_group_range,
            path: &self.path,
        }
    }

    fn timers(&self, state: StateId) -> Result<(StateStore, Arc<TimerIndex>)> {
        let s = self.state(state, StorageKind::Timers)?;
        let index = s
            .timers
            .clone()
            .ok_or_else(|| Error::internal(format!("timer service {:?} has no index", s.name)))?;
        Ok((s, index))
    }

    /// Deletes the SlateDB checkpoints of `ids` (no longer needed).
    async fn release(&self, ids: Vec<(u64, uuid::Uuid)>) -> Result<()> {
        for (id, uuid) in ids {
            self.admin.delete_checkpoint(uuid).await.map_err(slate_err(|| {
                format!(
                    "releasing SlateDB checkpoint {uuid} (checkpoint {id}) of database {}",
                    self.path
                )
            }))?;
        }
        Ok(())
    }

    /// The id of state `meta`, added to the registry if new: what the
    /// synchronous face maps its own registrations to.
    pub(crate) fn add_state(&self, meta: &StateMetaInfo) -> Result<StateId> {
        let mut core = self.core.lock().map_err(|_| poisoned())?;
        if let Some(id) = core.find(&meta.name) {
            return Ok(id);
        }
        check_tag(&core, meta)?;
        core.add_state(meta.clone(), StateStore::new(meta))
    }

    /// Every state the backend holds, with its id.
    pub(crate) fn state_list(&self) -> Result<Vec<(StateMetaInfo, StateId)>> {
        let core = self.core.lock().map_err(|_| poisoned())?;
        Ok(core
            .states()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.meta().clone(), i as StateId))
            .collect())
    }

    /// Every `(key, namespace)` holding `state`, only in `namespace` if
    /// given, in key order.
    pub(crate) async fn keys_of(&self, state: StateId, namespace: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _request = self.request();
        let s = {
            let core = self.core.lock().map_err(|_| poisoned())?;
            core.state(state)?.storage().clone()
        };
        let what = || format!("listing the keys of state {:?} in database {}", s.name, self.path);
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for kg in self.config.key_group_range.iter() {
            let mut it = self
                .db
                .scan_prefix_with_options(keys::state_prefix(kg, s.tag), .., &keys::bulk_scan())
                .await
                .map_err(slate_err(what))?;
            while let Some(kv) = it.next().await.map_err(slate_err(what))? {
                let (key, ns) = if s.kind == StorageKind::Timers {
                    let t = keys::decode_timer_key(&kv.key, &s.name)?;
                    (t.key, t.namespace)
                } else {
                    let d = keys::decode_key(&kv.key, &s.name)?;
                    // A map's entries of one key and namespace are adjacent.
                    if pairs.last().is_some_and(|(k, n)| k == d.key && n == d.namespace) {
                        continue;
                    }
                    (d.key.to_vec(), d.namespace.to_vec())
                };
                if namespace.is_none_or(|want| want == ns) {
                    pairs.push((key, ns));
                }
            }
        }
        Ok(pairs)
    }

    fn register_now<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle> {
        let meta = descriptor.meta();
        let mut core = self.core.lock().map_err(|_| poisoned())?;
        if let Some(id) = core.find(&meta.name) {
            let state = core.state(id)?;
            let written = state.meta().value_serializer.clone();
            let mut same_but_values = state.meta().clone();
            same_but_values.value_serializer = meta.value_serializer.clone();
            if !state.is_registered() && written != meta.value_serializer && same_but_values == meta {
                match descriptor.value_compatibility(&written) {
                    SchemaCompatibility::AsIs => core.set_value_serializer(id, meta.value_serializer.clone())?,
                    SchemaCompatibility::AfterMigration => {
                        return Err(Error::unsupported(format!(
                            "state {:?}: migrating values from {written} to {} is not supported by the SlateDB \
                             backend",
                            meta.name, meta.value_serializer
                        )))
                    }
                    SchemaCompatibility::Incompatible => {}
                }
            }
        }
        let id = match core.check_registration(&meta)? {
            Some(id) => id,
            None => {
                check_tag(&core, &meta)?;
                let store = StateStore::new(&meta);
                core.add_state(meta, store)?
            }
        };
        core.mark_registered(id, descriptor.ttl())?;
        Ok(descriptor.into_handle(StateRef { backend: self.id, id }))
    }
    /// The synchronous phase of a snapshot whose header (the states and
    /// their serializers) is `header`: a checkpoint flushes the memtable
    /// and takes a SlateDB checkpoint; a savepoint freezes a SlateDB
    /// snapshot of the database, which its asynchronous phase writes in
    /// the canonical format (without the entries `filter` drops).
    pub(crate) async fn snapshot_with(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
        header: SnapshotHeader,
        filter: TtlFilter,
    ) -> Result<PendingSnapshot> {
        let started = Instant::now();
        if options.kind != CheckpointKind::Checkpoint {
            return self.savepoint(checkpoint_id, location, options, header, filter, started);
        }
        if header.states.is_empty() {
            // Nothing registered or restored: nothing to pin.
            let range = header.range;
            return Ok(PendingSnapshot::new(checkpoint_id, started, async move {
                Ok(AsyncOutput {
                    bytes_written: 0,
                    handle: KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                        range,
                        offsets: Vec::new(),
                        stream: StreamStateHandle::Empty,
                    }),
                    records: 0,
                })
            }));
        }
        // Flushes the memtable; writes after this returns are not in it.
        let pending = self
            .db
            .begin_checkpoint(
                CheckpointScope::All,
                &CheckpointOptions {
                    name: Some(release::checkpoint_name(checkpoint_id)),
                    ..CheckpointOptions::default()
                },
            )
            .await
            .map_err(slate_err(|| {
                format!("checkpoint {checkpoint_id}: checkpointing database {}", self.path)
            }))?;
        self.checkpoints
            .lock()
            .map_err(|_| poisoned())?
            .pending
            .insert(checkpoint_id, pending.id());
        let (range, db_path, backend_id) = (self.config.key_group_range, self.path.clone(), self.uuid.clone());
        let (closed, store) = (Arc::clone(&self.closed), Arc::clone(&self.options.object_store));
        Ok(PendingSnapshot::new(checkpoint_id, started, async move {
            let created = pending.wait().await.map_err(slate_err(|| {
                format!("checkpoint {checkpoint_id}: checkpointing database {db_path}")
            }))?;
            if closed.load(Ordering::Acquire) {
                // No handle will reference the SlateDB checkpoint: release it
                // now (garbage collection would otherwise).
                let admin = fail_fast::admin_builder(&db_path, &store).build();
                if let Err(e) = admin.delete_checkpoint(created.id).await {
                    tracing::warn!(error = %e, db = %db_path, checkpoint_id, "left a SlateDB checkpoint for garbage collection");
                }
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("checkpoint {checkpoint_id}: the SlateDB backend of database {db_path} was closed"),
                ));
            }
            let reference = SlateDbCheckpointRef {
                db_path,
                checkpoint: created.id.into_bytes(),
                manifest_id: created.manifest_id,
            };
            let mut out = location.create_output_stream(StateScope::Exclusive).await?;
            out.write(&encode_meta(&header, &reference)).await?;
            let meta = out.close().await?;
            Ok(AsyncOutput {
                bytes_written: meta.size(),
                handle: KeyedStateHandle::Incremental(IncrementalStateHandle {
                    format: NativeFormat::SlateDb,
                    range,
                    backend_id,
                    checkpoint_id,
                    shared: Vec::new(),
                    private: Vec::new(),
                    meta,
                }),
                records: 0,
            })
        }))
    }

    /// A savepoint: a SlateDB snapshot now, written in the canonical
    /// format by the asynchronous phase.
    fn savepoint(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
        header: SnapshotHeader,
        filter: TtlFilter,
        started: Instant,
    ) -> Result<PendingSnapshot> {
        let header = SnapshotHeader {
            compressed: options.compression.is_some(),
            ..header
        };
        let snapshot = self.db.snapshot().map_err(slate_err(|| {
            format!("savepoint {checkpoint_id}: snapshotting database {}", self.path)
        }))?;
        let states = header
            .states
            .iter()
            .enumerate()
            .map(|(i, meta)| {
                let s = canonical::SnapshotState {
                    tag: state_tag(&meta.name),
                    kind: meta.kind.storage(),
                    name: Arc::from(meta.name.as_str()),
                };
                (s.tag, (i as u32, s))
            })
            .collect();
        let source = canonical::SnapshotSource {
            snapshot,
            runtime: tokio::runtime::Handle::try_current().map_err(|_| {
                Error::invalid(format!(
                    "savepoint {checkpoint_id}: the SlateDB backend must be used on a Tokio runtime"
                ))
            })?,
            states,
            path: self.path.clone(),
        };
        Ok(PendingSnapshot::new(checkpoint_id, started, async move {
            let stream = location.create_output_stream(StateScope::Exclusive).await?;
            let written = write_canonical_snapshot(&header, source, filter, stream, options.compression)
                .await
                .map_err(|e| e.context(format!("savepoint {checkpoint_id}")))?;
            Ok(AsyncOutput {
                bytes_written: written.handle.stream.size(),
                records: written.records,
                handle: KeyedStateHandle::KeyGroups(written.handle),
            })
        }))
    }
}

/// What the backend can do, on both faces: checkpoints are incremental
/// (they pin the database's files, uploading none), timers are stored, and
/// the state is disaggregated (in the databases, not in checkpoints).
pub(crate) fn capabilities() -> BackendCapabilities {
    BackendCapabilities::none()
        .with_incremental_checkpoints()
        .with_timers()
        .with_disaggregated_state()
}

/// Fails with `Incompatible` when `meta`'s tag is that of another state.
fn check_tag<K>(core: &BackendCore<K, StateStore>, meta: &StateMetaInfo) -> Result<()> {
    let tag = state_tag(&meta.name);
    match core
        .states()
        .iter()
        .find(|s| s.storage().tag == tag && s.meta().name != meta.name)
    {
        Some(other) => Err(Error::incompatible(format!(
            "state {:?} cannot be stored next to state {:?}: their names hash to the same tag {tag:#010x} in \
             the SlateDB key layout; rename one",
            meta.name,
            other.meta().name
        ))),
        None => Ok(()),
    }
}

impl<K: 'static> AsyncKeyedStateBackend for SlateDbBackend<K> {
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
        capabilities()
    }

    fn register<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle> {
        let name = descriptor.meta().name;
        self.register_now(descriptor)
            .map_err(|e| e.context(format!("registering state {name:?}")))
    }

    fn has_outstanding_requests(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) > 0
    }

    async fn value_get<R, F>(&self, at: Target<'_>, f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Value)?;
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let value = self
            .db
            .get(&key)
            .await
            .map_err(slate_err(|| format!("reading state {:?} of {}", s.name, at.key)))?;
        f(value.as_deref())
    }

    async fn value_put(&self, at: Target<'_>, value: &[u8]) -> Result<()> {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Value)?;
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        self.db
            .put(&key, value)
            .await
            .map_err(slate_err(|| format!("writing state {:?} of {}", s.name, at.key)))?;
        Ok(())
    }

    async fn clear(&self, at: Target<'_>) -> Result<()> {
        let _request = self.request();
        let s = {
            let core = self.core.lock().map_err(|_| poisoned())?;
            core.state(at.state)?.storage().clone()
        };
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let what = || format!("clearing state {:?} of {}", s.name, at.key);
        match s.kind {
            StorageKind::Value | StorageKind::List => {
                self.db.delete(&key).await.map_err(slate_err(what))?;
            }
            StorageKind::Map => {
                // No range delete in SlateDB: every entry is deleted.
                let mut batch = WriteBatch::new();
                let mut it = self.db.scan_prefix(&key, ..).await.map_err(slate_err(what))?;
                let mut any = false;
                while let Some(kv) = it.next().await.map_err(slate_err(what))? {
                    batch.delete(kv.key);
                    any = true;
                }
                if any {
                    self.db.write(batch).await.map_err(slate_err(what))?;
                }
            }
            StorageKind::Timers => {
                return Err(Error::invalid(format!(
                    "timer service {:?} is cleared timer by timer",
                    s.name
                )))
            }
        }
        Ok(())
    }

    async fn list_get<F>(&self, at: Target<'_>, f: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> Result<()> + Send,
    {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::List)?;
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let value = self
            .db
            .get(&key)
            .await
            .map_err(slate_err(|| format!("reading list state {:?} of {}", s.name, at.key)))?;
        match value {
            Some(packed) => keys::for_each_element(&packed, &s.name, f),
            None => Ok(()),
        }
    }

    async fn list_append_all<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        if elements.is_empty() {
            return Ok(());
        }
        let _request = self.request();
        let s = self.state(at.state, StorageKind::List)?;
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        self.db.merge(&key, pack_all(elements)).await.map_err(slate_err(|| {
            format!("appending to list state {:?} of {}", s.name, at.key)
        }))?;
        Ok(())
    }

    async fn list_replace<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::List)?;
        let key = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let what = || format!("replacing list state {:?} of {}", s.name, at.key);
        if elements.is_empty() {
            self.db.delete(&key).await.map_err(slate_err(what))?;
        } else {
            self.db.put(&key, pack_all(elements)).await.map_err(slate_err(what))?;
        }
        Ok(())
    }

    async fn map_get<R, F>(&self, at: Target<'_>, user_key: &[u8], f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let key = map_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace, user_key);
        let value = self
            .db
            .get(&key)
            .await
            .map_err(slate_err(|| format!("reading map state {:?} of {}", s.name, at.key)))?;
        f(value.as_deref())
    }

    async fn map_put(&self, at: Target<'_>, user_key: &[u8], value: &[u8]) -> Result<()> {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let key = map_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace, user_key);
        self.db
            .put(&key, value)
            .await
            .map_err(slate_err(|| format!("writing map state {:?} of {}", s.name, at.key)))?;
        Ok(())
    }

    async fn map_remove(&self, at: Target<'_>, user_key: &[u8]) -> Result<()> {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let key = map_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace, user_key);
        self.db.delete(&key).await.map_err(slate_err(|| {
            format!("removing from map state {:?} of {}", s.name, at.key)
        }))?;
        Ok(())
    }

    async fn map_for_each<F>(&self, at: Target<'_>, mut f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> Result<MapVisit> + Send,
    {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let prefix = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let what = || format!("reading map state {:?} of {}", s.name, at.key);
        let mut it = self.db.scan_prefix(&prefix, ..).await.map_err(slate_err(what))?;
        let mut removed = WriteBatch::new();
        let mut any_removed = false;
        while let Some(kv) = it.next().await.map_err(slate_err(what))? {
            match f(&kv.key[prefix.len()..], &kv.value)? {
                MapVisit::Keep => {}
                MapVisit::Remove => {
                    removed.delete(kv.key);
                    any_removed = true;
                }
                MapVisit::Stop => break,
            }
        }
        if any_removed {
            self.db.write(removed).await.map_err(slate_err(|| {
                format!("removing from map state {:?} of {}", s.name, at.key)
            }))?;
        }
        Ok(())
    }

    async fn map_put_all(&self, at: Target<'_>, entries: &[(&[u8], &[u8])]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let mut batch = WriteBatch::new();
        for (user_key, value) in entries {
            batch.put(
                map_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace, user_key),
                value,
            );
        }
        self.db
            .write(batch)
            .await
            .map_err(slate_err(|| format!("writing map state {:?} of {}", s.name, at.key)))?;
        Ok(())
    }

    async fn map_is_empty(&self, at: Target<'_>) -> Result<bool> {
        let _request = self.request();
        let s = self.state(at.state, StorageKind::Map)?;
        let prefix = state_key(at.key.key_group(), s.tag, at.key.bytes(), at.namespace);
        let what = || format!("reading map state {:?} of {}", s.name, at.key);
        let mut it = self.db.scan_prefix(&prefix, ..).await.map_err(slate_err(what))?;
        Ok(it.next().await.map_err(slate_err(what))?.is_none())
    }

    async fn timer_register(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        let _request = self.request();
        let (s, index) = self.timers(at.state)?;
        index
            .register(
                &self.timer_db(&s),
                at.key.key_group(),
                timestamp,
                at.key.bytes(),
                at.namespace,
            )
            .await
    }

    async fn timer_delete(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        let _request = self.request();
        let (s, index) = self.timers(at.state)?;
        index
            .delete(
                &self.timer_db(&s),
                at.key.key_group(),
                timestamp,
                at.key.bytes(),
                at.namespace,
            )
            .await
    }

    async fn timer_peek(&self, state: StateId) -> Result<Option<i64>> {
        let _request = self.request();
        let (s, index) = self.timers(state)?;
        index.peek(&self.timer_db(&s)).await
    }

    async fn timer_poll(&self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        let _request = self.request();
        let (s, index) = self.timers(state)?;
        index.poll(&self.timer_db(&s), time).await
    }

    async fn snapshot(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        let (header, filter) = {
            let core = self.core.lock().map_err(|_| poisoned())?;
            (core.snapshot_header(false), core.ttl_filter())
        };
        self.snapshot_with(checkpoint_id, location, options, header, filter)
            .await
    }

    async fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> Result<()> {
        let released = {
            let mut c = self.checkpoints.lock().map_err(|_| poisoned())?;
            if !c.pending.contains_key(&checkpoint_id) {
                return Ok(());
            }
            // Earlier checkpoints still pending may have completed with their
            // notification lost: they count as completed, older than this one.
            let later = c.pending.split_off(&checkpoint_id);
            let mut done = std::mem::replace(&mut c.pending, later);
            if let Some(uuid) = c.pending.remove(&checkpoint_id) {
                done.insert(checkpoint_id, uuid);
            }
            c.completed.extend(done);
            let keep = self.options.retained_checkpoints.unwrap_or(1);
            let mut released = Vec::new();
            while c.completed.len() > keep {
                released.extend(c.completed.pop_front());
            }
            // Without a retention of its own the checkpoint store releases
            // them; only the newest is remembered.
            if self.options.retained_checkpoints.is_none() {
                released.clear();
            }
            released
        };
        self.release(released).await
    }

    async fn notify_checkpoint_aborted(&self, checkpoint_id: u64) -> Result<()> {
        let released = {
            let mut c = self.checkpoints.lock().map_err(|_| poisoned())?;
            c.pending.remove(&checkpoint_id)
        };
        self.release(released.map(|u| (checkpoint_id, u)).into_iter().collect())
            .await
    }
}
