//! Flowstate's own storages, and the RocksDB backend's builder as the suite runs it.
#![allow(clippy::unwrap_used, dead_code)]

use std::future::Future;
use std::path::PathBuf;
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
}

/// Object-store storage over `object_store`'s in-memory store, shared by
/// every job: `memory://bucket/checkpoints/<job>`, savepoints under
/// `memory://bucket/savepoints`.
pub struct ObjectStorageFactory {
    store: Arc<dyn flowstate_object::object_store::ObjectStore>,
}

impl ObjectStorageFactory {
    /// A factory over a fresh in-memory object store.
    pub fn in_memory() -> Self {
        ObjectStorageFactory {
            store: Arc::new(flowstate_object::object_store::memory::InMemory::new()),
        }
    }
}

impl StorageFactory for ObjectStorageFactory {
    fn name(&self) -> &str {
        "object-memory"
    }

    fn storage(&self, job_id: &str) -> Arc<dyn CheckpointStorage> {
        let store = flowstate_object::ObjectBlobStore::new(
            Arc::clone(&self.store),
            "memory://bucket",
            &format!("checkpoints/{job_id}"),
        )
        .unwrap();
        Arc::new(
            flowstate_api::BlobCheckpointStorage::new(Arc::new(store), job_id)
                .unwrap()
                .with_savepoint_dir("memory://bucket/savepoints".to_string()),
        )
    }
}

/// The RocksDB backend's builder, its backends working under a temporary
/// directory of its own (removed with it).
pub struct RocksDbFactory {
    name: &'static str,
    options: RocksDbOptions,
    /// Where local copies go, with local recovery.
    local: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl RocksDbFactory {
    /// Incremental checkpoints (the default): `rocksdb`.
    pub fn new() -> Self {
        Self::with("rocksdb", true, false)
    }

    /// Full canonical checkpoints: `rocksdb-full`.
    pub fn full() -> Self {
        Self::with("rocksdb-full", false, false)
    }

    /// Incremental checkpoints with local recovery: `rocksdb-local`. A
    /// backend's local-recovery scope is its key groups, as a subtask's
    /// would be, so a restore of the same key groups finds its copies.
    pub fn with_local_recovery() -> Self {
        Self::with("rocksdb-local", true, true)
    }

    fn with(name: &'static str, incremental: bool, local_recovery: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksDbOptions::new(dir.path().join("work"))
            .with_incremental(incremental)
            .with_memory(8 << 20, 8 << 20);
        RocksDbFactory {
            name,
            options,
            local: local_recovery.then(|| dir.path().join("local")),
            _dir: dir,
        }
    }

    /// The options of a backend whose local-recovery scope (with local
    /// recovery) is `scope`.
    fn scoped(&self, scope: String) -> RocksDbOptions {
        match &self.local {
            Some(local) => self.options.clone().with_local_recovery(vec![local.clone()], scope),
            None => self.options.clone(),
        }
    }

    /// The options of a backend owning the key groups of `config`.
    fn options<K>(&self, config: &KeyedBackendConfig<K>) -> RocksDbOptions {
        let range = config.key_group_range;
        self.scoped(format!("kg-{}-{}", range.start(), range.end()))
    }
}

impl BackendBuilder for RocksDbFactory {
    type Backend<K: 'static> = RocksDbBackend<K>;

    fn name(&self) -> &str {
        self.name
    }

    fn capabilities(&self) -> BackendCapabilities {
        RocksDbBackendBuilder::new(self.scoped("any".into())).capabilities()
    }

    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<RocksDbBackend<K>> {
        let options = self.options(&config);
        RocksDbBackend::new(config, options)
    }

    fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> impl Future<Output = Result<RocksDbBackend<K>>> + Send {
        let options = self.options(&config);
        async move { RocksDbBackend::restore(config, handles, &*reader, options).await }
    }
}
