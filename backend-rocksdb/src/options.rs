//! Configuration, and the RocksDB options every column family gets: the
//! shared block cache and write-buffer budget, LZ4, the list merge operator
//! (`list_merge.rs`) and the TTL compaction filter (`ttl_filter.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowstate_api::backend::StorageKind;
use flowstate_api::ttl::SharedClock;
use flowstate_api::{RestoreMode, Result};
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, WriteBufferManager, DB};

use crate::local_recovery::LocalRecovery;
use crate::ttl_filter::TtlSlot;
use crate::{cf_name, db_err};

/// Default block cache shared by all states of a backend: 64 MiB.
pub const DEFAULT_BLOCK_CACHE: usize = 64 << 20;
/// Default memtable budget shared by all states of a backend: 64 MiB.
pub const DEFAULT_WRITE_BUFFER: usize = 64 << 20;
/// Default number of files uploaded at once: 4.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// Configuration of a [`RocksDbBackend`](crate::RocksDbBackend).
#[derive(Debug, Clone)]
pub struct RocksDbOptions {
    /// Where the backend's working directory is created (and deleted when
    /// the backend is dropped).
    pub working_dir: PathBuf,
    /// Checkpoints upload only new SST files (the default); when false,
    /// every checkpoint is a native full one: every file of a RocksDB
    /// checkpoint, in the checkpoint's own directory, nothing shared.
    /// Savepoints are canonical either way.
    pub incremental: bool,
    /// Block cache shared by all states.
    pub block_cache_bytes: usize,
    /// Memtable budget shared by all states.
    pub write_buffer_bytes: usize,
    /// Files uploaded concurrently in a checkpoint's async phase, and
    /// downloaded concurrently in a restore.
    pub upload_concurrency: usize,
    /// Local recovery, if enabled.
    pub local_recovery: Option<LocalRecovery>,
    /// Whether a restored checkpoint's files may be shared by new
    /// checkpoints (claim) or not (no-claim: the first checkpoint uploads
    /// everything).
    pub restore_mode: RestoreMode,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        RocksDbOptions {
            working_dir: std::env::temp_dir().join("flowstate-rocksdb"),
            incremental: true,
            block_cache_bytes: DEFAULT_BLOCK_CACHE,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            local_recovery: None,
            restore_mode: RestoreMode::Claim,
        }
    }
}

impl RocksDbOptions {
    /// Defaults with the working directory under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RocksDbOptions {
            working_dir: dir.into(),
            ..Self::default()
        }
    }

    /// Turns incremental checkpoints on or off.
    pub fn with_incremental(mut self, on: bool) -> Self {
        self.incremental = on;
        self
    }

    /// Checks the options; backends do before they create anything.
    pub fn validate(&self) -> Result<()> {
        match &self.local_recovery {
            Some(l) => l.validate(),
            None => Ok(()),
        }
    }

    /// Enables local recovery, keeping copies in one of `dirs` (at least
    /// one: an empty list is refused when a backend is created or restored).
    pub fn with_local_recovery(mut self, dirs: Vec<PathBuf>, scope: impl Into<String>) -> Self {
        self.local_recovery = Some(LocalRecovery {
            dirs,
            scope: scope.into(),
        });
        self
    }

    /// Sets the restore mode.
    pub fn with_restore_mode(mut self, mode: RestoreMode) -> Self {
        self.restore_mode = mode;
        self
    }

    /// Sets the shared block cache and memtable budget.
    pub fn with_memory(mut self, block_cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        self.block_cache_bytes = block_cache_bytes;
        self.write_buffer_bytes = write_buffer_bytes;
        self
    }
}

/// What a backend's column families share.
pub struct Resources {
    cache: Cache,
    write_buffers: WriteBufferManager,
    clock: SharedClock,
}

impl Resources {
    /// The cache and memtable budget of one backend.
    pub fn new(options: &RocksDbOptions, clock: SharedClock) -> Self {
        Resources {
            cache: Cache::new_lru_cache(options.block_cache_bytes),
            write_buffers: WriteBufferManager::new_write_buffer_manager(options.write_buffer_bytes, false),
            clock,
        }
    }

    /// DB-wide options.
    pub fn db_options(&self) -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_write_buffer_manager(&self.write_buffers);
        o.set_max_background_jobs(2);
        o.set_keep_log_file_num(2);
        o.set_max_open_files(-1);
        o
    }

    /// Options of the column family of a state of `kind`.
    pub fn cf_options(&self, kind: StorageKind, ttl: Arc<TtlSlot>) -> Options {
        let mut o = verified_on_write();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_manager(&self.write_buffers);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_level_compaction_dynamic_level_bytes(true);
        if kind == StorageKind::List {
            crate::list_merge::install(&mut o, Arc::clone(&ttl), self.clock.clone());
        }
        crate::ttl_filter::install(&mut o, kind, ttl, self.clock.clone());
        o
    }
}

/// Default options under which RocksDB reads back and checks every SST
/// file it writes (flushes and compactions) before using it
/// (`paranoid_file_checks`): the write side of checkpoint verification (see
/// the `restore` module). The option has no typed setter; it is parsed from
/// a string onto bare options, so nothing set on options later (caches,
/// filters, merge operators) is copied through C.
fn verified_on_write() -> Options {
    match Options::default().get_options_from_string("paranoid_file_checks=true") {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "RocksDB refused paranoid_file_checks; files are not checked when written");
            Options::default()
        }
    }
}

/// Opens a checkpoint directory read-only with the column families of `states`.
pub(crate) fn open_read_only(
    dir: &Path,
    states: &[flowstate_api::backend::StateMetaInfo],
    resources: &Resources,
) -> Result<DB> {
    flowstate_api::runtime::check_blocking("opening a RocksDB database read-only");
    let cfs = states.iter().map(|m| {
        ColumnFamilyDescriptor::new(
            cf_name(&m.name),
            resources.cf_options(m.kind.storage(), Arc::new(TtlSlot::default())),
        )
    });
    DB::open_cf_descriptors_read_only(&resources.db_options(), dir, cfs, false)
        .map_err(db_err(format!("opening {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state's column family checks the files it writes: RocksDB
    /// records the option in the OPTIONS file of the database.
    #[test]
    fn column_families_check_the_files_they_write() {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(flowstate_api::ttl::SystemClock);
        let resources = Resources::new(&RocksDbOptions::new(dir.path()), clock);
        let mut db_options = resources.db_options();
        db_options.create_if_missing(true);
        let path = dir.path().join("db");
        let mut db = DB::open(&db_options, &path).unwrap();
        db.create_cf(
            "state",
            &resources.cf_options(StorageKind::Value, Arc::new(TtlSlot::default())),
        )
        .unwrap();
        drop(db);
        // The newest OPTIONS file that describes the column family.
        let mut files: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
            })
            .collect();
        files.sort();
        let text = files
            .iter()
            .rev()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .find(|t| t.contains("[CFOptions \"state\"]"))
            .expect("an OPTIONS file describing the column family");
        let section = text.split("[CFOptions \"state\"]").nth(1).unwrap();
        let section = section.split("[CFOptions ").next().unwrap();
        assert!(section.contains("paranoid_file_checks=true"), "{section}");
    }
}
