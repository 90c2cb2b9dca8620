//! How the backend opens its databases.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flowstate_api::checkpoint::validate_relative_path;
use flowstate_api::{Error, Result};
use object_store::ObjectStore;
use slatedb::config::{GarbageCollectorDirectoryOptions, GarbageCollectorOptions, Settings};
use slatedb::db_cache::moka::{MokaCache, MokaCacheOptions};
use slatedb::db_cache::DbCache;

/// The memtable size that triggers an L0 flush by default: 64 MiB.
pub const DEFAULT_L0_SST_SIZE: usize = 64 << 20;
/// Unflushed bytes above which writes wait, by default: 256 MiB (SlateDB's
/// own default, 1 GiB, is too much for many subtasks on one machine).
pub const DEFAULT_MAX_UNFLUSHED_BYTES: usize = 256 << 20;

/// L0 files that may cover one key before flushes wait for compaction.
const L0_FILES_PER_KEY: usize = 24;

/// How often SlateDB retries an object-store request that failed in a way
/// that may pass (on top of the object store client's own retries), by
/// default, before the error fails the read, write or checkpoint.
pub const DEFAULT_STORE_RETRIES: u32 = 10;

/// The in-memory block and metadata cache shared by the databases of one
/// set of options, by default: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Where and how the SlateDB backend keeps its databases.
///
/// Every backend instance (a new one or a restored one) opens a database of
/// its own at a fresh path, `<base path>/<uuid>`, in `object_store`. The
/// base path is usually `<job>/slatedb/<operator id>`: apart from the
/// checkpoint storage's `chk-*/`, `shared/` and `taskowned/`, whose
/// garbage collection never touches it.
///
/// The write-ahead log is always off: state between checkpoints is
/// recomputed from the source after a failure, as in Flink, and only
/// databases without WAL data can be cloned with a projection or from
/// several sources (what rescaling needs).
#[derive(Clone)]
pub struct SlateDbOptions {
    pub(crate) object_store: Arc<dyn ObjectStore>,
    pub(crate) base_path: String,
    pub(crate) flush_interval: Option<Duration>,
    pub(crate) l0_sst_size_bytes: usize,
    pub(crate) max_unflushed_bytes: usize,
    pub(crate) boundary_files: bool,
    pub(crate) cache: Option<Arc<dyn DbCache>>,
    pub(crate) retained_checkpoints: Option<usize>,
    pub(crate) store_retries: Option<u32>,
}

impl fmt::Debug for SlateDbOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlateDbOptions")
            .field("object_store", &format_args!("{}", self.object_store))
            .field("base_path", &self.base_path)
            .field("flush_interval", &self.flush_interval)
            .field("l0_sst_size_bytes", &self.l0_sst_size_bytes)
            .field("max_unflushed_bytes", &self.max_unflushed_bytes)
            .field("boundary_files", &self.boundary_files)
            .field("shared_cache", &self.cache.is_some())
            .field("retained_checkpoints", &self.retained_checkpoints)
            .field("store_retries", &self.store_retries)
            .finish()
    }
}

impl SlateDbOptions {
    /// Databases under `base_path` (relative, `/`-separated, e.g.
    /// `job-1/slatedb/window-op`) in `object_store`, with the defaults:
    /// 100 ms memtable checks, 64 MiB L0 files, 256 MiB of unflushed
    /// bytes, a 64 MiB in-memory cache, [`DEFAULT_STORE_RETRIES`] retries,
    /// SlateDB checkpoints released by the checkpoint store.
    pub fn new(object_store: Arc<dyn ObjectStore>, base_path: impl Into<String>) -> Result<Self> {
        let base_path = base_path.into();
        validate_relative_path(&base_path).map_err(|e| e.context(format!("SlateDB base path {base_path:?}")))?;
        Ok(SlateDbOptions {
            object_store,
            base_path,
            flush_interval: Some(Duration::from_millis(100)),
            l0_sst_size_bytes: DEFAULT_L0_SST_SIZE,
            max_unflushed_bytes: DEFAULT_MAX_UNFLUSHED_BYTES,
            boundary_files: true,
            cache: None,
            retained_checkpoints: None,
            store_retries: Some(DEFAULT_STORE_RETRIES),
        }
        .with_cache_bytes(DEFAULT_CACHE_BYTES))
    }

    /// The object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.object_store
    }

    /// The path the databases are created under.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The memtable size that triggers a flush to an L0 file.
    pub fn with_l0_sst_size(mut self, bytes: usize) -> Self {
        self.l0_sst_size_bytes = bytes;
        self
    }

    /// Unflushed bytes above which writes wait for a flush.
    pub fn with_max_unflushed_bytes(mut self, bytes: usize) -> Self {
        self.max_unflushed_bytes = bytes;
        self
    }

    /// How often the memtable size is checked (`None`: only at checkpoints
    /// and when it is full).
    pub fn with_flush_interval(mut self, interval: Option<Duration>) -> Self {
        self.flush_interval = interval;
        self
    }

    /// One block and metadata cache shared by every database these options
    /// open (each under an id of its own), replacing the default in-memory
    /// cache of [`DEFAULT_CACHE_BYTES`].
    pub fn with_cache(mut self, cache: Arc<dyn DbCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// An in-memory cache of `bytes` (SlateDB's `MokaCache`), shared by
    /// every database these options open.
    pub fn with_cache_bytes(self, bytes: u64) -> Self {
        let cache = MokaCache::new_with_opts(MokaCacheOptions {
            max_capacity: bytes,
            ..MokaCacheOptions::default()
        });
        self.with_cache(Arc::new(cache))
    }

    /// No cache: every read of a block not in the memtable goes to the
    /// object store (what a cold cache costs, measured).
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// How often a database's object-store requests are retried when they
    /// fail in a way that may pass, before the error fails the read, write
    /// or checkpoint (and the job restarts from its last checkpoint, as on
    /// any other backend); `None` retries for as long as the store is down,
    /// stalling processing meanwhile.
    pub fn with_store_retries(mut self, retries: Option<u32>) -> Self {
        self.store_retries = retries;
        self
    }

    /// Whether SlateDB's garbage collector writes boundary files, which need
    /// conditional overwrites. Turn them off on a local filesystem, whose
    /// object store cannot overwrite conditionally (the collector would
    /// fail, silently, after its first pass). Every process opening a
    /// database must use the same value.
    pub fn with_boundary_files(mut self, enabled: bool) -> Self {
        self.boundary_files = enabled;
        self
    }

    /// Has each backend release the SlateDB checkpoints of its completed
    /// checkpoints itself, keeping the newest `n`: older ones are deleted
    /// when a newer checkpoint completes, so SlateDB may collect the files
    /// only they kept. At least 1; use as many as the checkpoint store
    /// retains. For engines without a [`CheckpointStore`]; by default the
    /// store releases them ([`SlateDbOptions::release`]).
    ///
    /// [`CheckpointStore`]: flowstate_api::CheckpointStore
    pub fn with_retained_checkpoints(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::invalid(
                "SlateDB backend: at least one checkpoint must be retained",
            ));
        }
        self.retained_checkpoints = Some(n);
        Ok(self)
    }

    /// What a [`CheckpointStore`] calls to release the SlateDB checkpoints
    /// of the checkpoints it no longer retains (subsumed, discarded, or
    /// aborted): register it with
    /// [`CheckpointStore::with_native_release`](flowstate_api::CheckpointStore::with_native_release).
    /// Without it (and without [`with_retained_checkpoints`](Self::with_retained_checkpoints))
    /// the SlateDB checkpoints of completed checkpoints stay until `flowstate
    /// gc` removes those no checkpoint references.
    ///
    /// [`CheckpointStore`]: flowstate_api::CheckpointStore
    pub fn release(&self) -> std::sync::Arc<dyn flowstate_api::lifecycle::NativeStateRelease> {
        std::sync::Arc::new(crate::release::SlateDbRelease::new(self))
    }

    /// The SlateDB settings of every database: WAL off, the sizes above,
    /// and room for 24 L0 files per key (SlateDB's default is 8): every
    /// checkpoint flushes one, and a flush that finds L0 full waits for a
    /// compaction of the whole database, which would make checkpoints as
    /// slow as the state is large.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            wal_enabled: false,
            flush_interval: self.flush_interval,
            l0_sst_size_bytes: self.l0_sst_size_bytes,
            max_unflushed_bytes: self.max_unflushed_bytes,
            l0_max_ssts_per_key: L0_FILES_PER_KEY,
            l0_max_ssts: L0_FILES_PER_KEY * 4,
            object_store_max_retries: self.store_retries,
            garbage_collector_options: Some(GarbageCollectorOptions {
                boundary_files_enabled: self.boundary_files,
                ..GarbageCollectorOptions::default()
            }),
            ..Settings::default()
        }
    }

    /// The options of one pass of SlateDB's collector over a database no
    /// backend has open: files (SSTs, manifests, compaction records) older
    /// than `min_age` that nothing references go.
    pub(crate) fn collector_options(&self, min_age: Duration) -> GarbageCollectorOptions {
        let directory = Some(GarbageCollectorDirectoryOptions {
            interval: None,
            min_age,
            dry_run: false,
        });
        GarbageCollectorOptions {
            manifest_options: directory,
            wal_options: directory,
            compacted_options: directory,
            compactions_options: directory,
            boundary_files_enabled: self.boundary_files,
            ..GarbageCollectorOptions::default()
        }
    }

    /// The path of the database `uuid`.
    pub(crate) fn db_path(&self, uuid: &str) -> String {
        format!("{}/{uuid}", self.base_path)
    }
}
