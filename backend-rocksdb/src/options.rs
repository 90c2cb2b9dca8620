//! Configuration, and the RocksDB options every column family gets: the
//! shared block cache and write-buffer budget, LZ4, the list merge operator
//! and the TTL compaction filter.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowstate_api::ttl::{is_expired, split_ttl_value};
use flowstate_api::{Error, RestoreMode, Result, SharedClock, StorageKind};
use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, MergeOperands, Options, WriteBufferManager};

use crate::keys::{elements, pack};

/// Default block cache shared by all states of a backend: 64 MiB.
pub const DEFAULT_BLOCK_CACHE: usize = 64 << 20;
/// Default memtable budget shared by all states of a backend: 64 MiB.
pub const DEFAULT_WRITE_BUFFER: usize = 64 << 20;
/// Default number of files uploaded at once: 4.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// Local recovery: completed checkpoints are also kept on local disk and
/// restored from there when they verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecovery {
    /// Directories to keep copies in; a backend's copies go to one of them,
    /// chosen by its scope. They may be on other devices (files are copied
    /// where they cannot be hard-linked).
    pub dirs: Vec<PathBuf>,
    /// Identifies this backend's state across restarts, e.g.
    /// `<job>/<operator>-<subtask>`: one path component or several.
    pub scope: String,
}

impl LocalRecovery {
    /// Checks that there is somewhere to keep copies: without a directory,
    /// copies would silently go to the process's working directory.
    pub fn validate(&self) -> Result<()> {
        if self.dirs.is_empty() {
            return Err(Error::invalid(format!(
                "local recovery of scope {:?} has no directories: give at least one directory to keep local \
                 copies in, or disable local recovery",
                self.scope
            )));
        }
        // The scope is a directory under each of `dirs` whose stale `chk-*`
        // copies a backend deletes: empty, absolute or `..` would point that
        // at the directories themselves or elsewhere.
        let scope = &self.scope;
        if flowstate_api::validate_relative_path(scope).is_err() {
            return Err(Error::invalid(format!(
                "local recovery scope {scope:?} must be a relative path such as \"job/operator-0\" (not empty, \
                 absolute or with '..')"
            )));
        }
        Ok(())
    }
}

/// Configuration of a [`RocksDbBackend`](crate::RocksDbBackend).
#[derive(Debug, Clone)]
pub struct RocksDbOptions {
    /// Where the backend's working directory is created (and deleted when
    /// the backend is dropped).
    pub working_dir: PathBuf,
    /// Checkpoints upload only new SST files (the default); when false,
    /// every checkpoint is a full canonical snapshot.
    pub incremental: bool,
    /// Block cache shared by all states.
    pub block_cache_bytes: usize,
    /// Memtable budget shared by all states.
    pub write_buffer_bytes: usize,
    /// Files uploaded concurrently in a checkpoint's async phase.
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

/// The per-state TTL the compaction filter and merge operator read: 0 is
/// no TTL. Set at registration, after the column family exists.
#[derive(Debug, Default)]
pub struct TtlSlot(AtomicU64);

impl TtlSlot {
    /// Sets the TTL (0: none).
    pub fn set(&self, ttl_millis: u64) {
        self.0.store(ttl_millis, Ordering::Relaxed);
    }

    /// The TTL, if any.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
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
        let mut o = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        o.set_block_based_table_factory(&table);
        o.set_write_buffer_manager(&self.write_buffers);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_level_compaction_dynamic_level_bytes(true);
        if kind == StorageKind::List {
            let (full, partial) = (Arc::clone(&ttl), self.clock.clone());
            o.set_merge_operator(
                "flowstate-list-append",
                move |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| {
                    let mut out = Vec::with_capacity(
                        existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>(),
                    );
                    existing
                        .into_iter()
                        .chain(operands.iter())
                        .for_each(|p| out.extend_from_slice(p));
                    Some(drop_expired_elements(out, full.get(), partial.now_millis()))
                },
                |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| {
                    let mut out = Vec::new();
                    existing
                        .into_iter()
                        .chain(operands.iter())
                        .for_each(|p| out.extend_from_slice(p));
                    Some(out)
                },
            );
        }
        let clock = self.clock.clone();
        o.set_compaction_filter("flowstate-ttl", move |_level: u32, _key: &[u8], value: &[u8]| {
            let Some(ttl) = ttl.get() else {
                return Decision::Keep;
            };
            let now = clock.now_millis();
            let expired = |v: &[u8]| split_ttl_value(v).is_ok_and(|(ts, _)| is_expired(ts, ttl, now));
            let drop = match kind {
                StorageKind::Value | StorageKind::Map => expired(value),
                StorageKind::List => elements(value, "list").is_ok_and(|e| e.iter().all(|v| expired(v))),
            };
            if drop {
                Decision::Remove
            } else {
                Decision::Keep
            }
        });
        o
    }
}

/// Keeps the unexpired elements of a packed list (all of them without TTL).
fn drop_expired_elements(packed: Vec<u8>, ttl: Option<u64>, now: u64) -> Vec<u8> {
    let Some(ttl) = ttl else { return packed };
    let Ok(all) = elements(&packed, "list") else {
        return packed;
    };
    let keep: Vec<&[u8]> = all
        .into_iter()
        .filter(|e| !split_ttl_value(e).is_ok_and(|(ts, _)| is_expired(ts, ttl, now)))
        .collect();
    let mut out = Vec::with_capacity(packed.len());
    for e in keep {
        pack(&mut out, e);
    }
    out
}
