//! Flowstate's own storages, and the RocksDB backend's builder as the suite runs it.
#![allow(clippy::unwrap_used, dead_code)]

use std::future::Future;
use std::sync::Arc;

use flowstate_api::{
    BackendBuilder, BackendCapabilities, CheckpointStorage, KeyedBackendConfig, KeyedStateHandle, Result, StateReader,
};
use flowstate_conformance::StorageFactory;
use flowstate_fs::FsCheckpointStorage;
use flowstate_rocksdb::{RocksDbBackend, RocksDbBackendBuilder, RocksDbOptions};

/// Filesystem storage under a temporary directory, shared by every job.
pub struct FsStorageFactory {
    dir: tempfile::TempDir,
}

impl FsStorageFactory {
    /// A factory over a fresh temporary directory.
    pub fn new() -> Self {
        FsStorageFactory {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl StorageFactory for FsStorageFactory {
    fn name(&self) -> &str {
        "fs"
    }

    fn storage(&self, job_id: &str) -> Arc<dyn CheckpointStorage> {
        Arc::new(
            FsCheckpointStorage::open(self.dir.path().join("checkpoints"), job_id)
                .unwrap()
                .with_savepoint_dir(self.dir.path().join("savepoints").display().to_string()),
        )
    }

    fn durable(&self) -> bool {
        true
    }
}

/// The RocksDB backend's builder, its backends working under a temporary
/// directory of its own (removed with it).
pub struct RocksDbFactory {
    builder: RocksDbBackendBuilder,
    _dir: tempfile::TempDir,
}

impl RocksDbFactory {
    /// Incremental checkpoints (the default).
    pub fn new() -> Self {
        Self::with_incremental(true)
    }

    /// Full canonical checkpoints.
    pub fn full() -> Self {
        Self::with_incremental(false)
    }

    fn with_incremental(incremental: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksDbOptions::new(dir.path())
            .with_incremental(incremental)
            .with_memory(8 << 20, 8 << 20);
        RocksDbFactory {
            builder: RocksDbBackendBuilder::new(options),
            _dir: dir,
        }
    }
}

impl BackendBuilder for RocksDbFactory {
    type Backend<K: 'static> = RocksDbBackend<K>;

    fn name(&self) -> &str {
        self.builder.name()
    }

    fn capabilities(&self) -> BackendCapabilities {
        self.builder.capabilities()
    }

    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<RocksDbBackend<K>> {
        self.builder.build(config)
    }

    fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> impl Future<Output = Result<RocksDbBackend<K>>> + Send {
        self.builder.restore(config, handles, reader)
    }
}
