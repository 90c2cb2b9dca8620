//! Factories for flowstate's own backends and storages.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use flowstate_api::CheckpointStorage;
use flowstate_api::{
    BackendCapabilities, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, Result, StateReader,
};
use flowstate_conformance::{BackendFactory, StorageFactory, TestKey};
use flowstate_fs::FsCheckpointStorage;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

/// The heap backend.
pub struct HeapFactory;

impl BackendFactory for HeapFactory {
    type Backend<K: TestKey> = HeapBackend<K>;

    fn name(&self) -> &str {
        "heap"
    }

    fn capabilities(&self) -> BackendCapabilities {
        HeapBackend::<u64>::new(flowstate_conformance::full_config())
            .map(|b| b.capabilities())
            .unwrap_or_default()
    }

    fn create<K: TestKey>(&self, config: KeyedBackendConfig<K>) -> Result<HeapBackend<K>> {
        HeapBackend::new(config)
    }

    async fn restore<K: TestKey>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> Result<HeapBackend<K>> {
        HeapBackend::restore(config, handles, &*reader).await
    }
}

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
                .with_savepoint_dir(self.dir.path().join("savepoints")),
        )
    }

    fn durable(&self) -> bool {
        true
    }
}

/// The RocksDB backend, working under a temporary directory.
pub struct RocksDbFactory {
    dir: tempfile::TempDir,
    incremental: bool,
}

impl RocksDbFactory {
    /// Incremental checkpoints (the default).
    pub fn new() -> Self {
        RocksDbFactory {
            dir: tempfile::tempdir().unwrap(),
            incremental: true,
        }
    }

    /// Full canonical checkpoints.
    pub fn full() -> Self {
        RocksDbFactory {
            incremental: false,
            ..Self::new()
        }
    }

    fn options(&self) -> RocksDbOptions {
        RocksDbOptions::new(self.dir.path())
            .with_incremental(self.incremental)
            .with_memory(8 << 20, 8 << 20)
    }
}

impl BackendFactory for RocksDbFactory {
    type Backend<K: TestKey> = RocksDbBackend<K>;

    fn name(&self) -> &str {
        "rocksdb"
    }

    fn capabilities(&self) -> BackendCapabilities {
        RocksDbBackend::<u64>::new(flowstate_conformance::full_config(), self.options())
            .map(|b| b.capabilities())
            .unwrap_or_default()
    }

    fn create<K: TestKey>(&self, config: KeyedBackendConfig<K>) -> Result<RocksDbBackend<K>> {
        RocksDbBackend::new(config, self.options())
    }

    async fn restore<K: TestKey>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> Result<RocksDbBackend<K>> {
        RocksDbBackend::restore(config, handles, &*reader, self.options()).await
    }
}
