//! Flowstate's own storages, and the RocksDB backend's builder as the suite runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use flowstate_api::backend::BackendCapabilities;
use flowstate_api::checkpoint::StateReader;
use flowstate_api::{BackendFactory, CheckpointStorage, KeyedBackendConfig, KeyedStateHandle, Result};
use flowstate_conformance::StorageFactory;

use flowstate_rocksdb::{RocksDbBackend, RocksDbBackendFactory, RocksDbOptions};

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

    fn storage(&self, job_id: &str) -> Arc<CheckpointStorage> {
        Arc::new(
            flowstate_fs::checkpoint_storage(self.dir.path().join("checkpoints"), job_id)
                .unwrap()
                .with_savepoint_dir(self.dir.path().join("savepoints").display().to_string()),
        )
    }
}

/// Object-store storage: every job under `<base>/<run>/checkpoints/<job>`
/// (with an `_entropy_` segment when entropy is on), savepoints under
/// `<base>/<run>/savepoints`, where `<run>` is unique to the factory so
/// processes sharing one bucket never meet.
pub struct ObjectStorageFactory {
    name: &'static str,
    store: Arc<dyn flowstate_object::object_store::ObjectStore>,
    base: String,
    run: String,
    entropy: Option<usize>,
}

/// The S3-compatible server the object-store tests use, from the
/// environment `scripts/s3-server.sh` sets.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// Access key id.
    pub key: String,
    /// Secret access key.
    pub secret: String,
}

impl S3Server {
    /// The server of the environment, if one is set. Under CI a missing
    /// server is an error: the object-store tests must not silently skip.
    pub fn from_env() -> Option<S3Server> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match var("FLOWSTATE_S3_ENDPOINT") {
            Some(endpoint) => Some(S3Server {
                endpoint,
                bucket: process_bucket(var("FLOWSTATE_S3_ROOT"), var("FLOWSTATE_S3_BUCKET")),
                key: var("FLOWSTATE_S3_ACCESS_KEY_ID").unwrap_or_default(),
                secret: var("FLOWSTATE_S3_SECRET_ACCESS_KEY").unwrap_or_default(),
            }),
            None if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI runs the object-store tests against a real server: run them through scripts/test.sh")
            }
            None => None,
        }
    }

    /// A builder for `s3://<bucket>/<prefix>` on this server.
    pub fn builder(&self, prefix: &str) -> flowstate_object::ObjectStoreBuilder {
        self.builder_at(&self.endpoint, prefix)
    }

    /// A builder for `s3://<bucket>/<prefix>` at `endpoint` (a proxy in front of the server).
    pub fn builder_at(&self, endpoint: &str, prefix: &str) -> flowstate_object::ObjectStoreBuilder {
        flowstate_object::ObjectStoreBuilder::new(format!("s3://{}/{prefix}", self.bucket))
            .without_env()
            .with_option("endpoint", endpoint)
            .with_option("access_key_id", &self.key)
            .with_option("secret_access_key", &self.secret)
            .with_option("region", "us-east-1")
            .with_option("allow_http", "true")
    }
}

/// The bucket of this process. s3s-fs lists by walking its bucket's whole
/// directory, so on it (whose root is `FLOWSTATE_S3_ROOT`, where a bucket is
/// a directory) every test process makes a bucket of its own; on another
/// server all share `FLOWSTATE_S3_BUCKET`.
fn process_bucket(root: Option<String>, shared: Option<String>) -> String {
    static BUCKET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUCKET
        .get_or_init(|| match root {
            Some(root) => {
                let name = unique_run().to_ascii_lowercase();
                std::fs::create_dir(std::path::Path::new(&root).join(&name)).unwrap();
                name
            }
            None => shared.unwrap_or_else(|| "flowstate".into()),
        })
        .clone()
}

/// A name no other process or factory uses.
pub fn unique_run() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    // A temporary directory's name is unique on this machine while it exists.
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().file_name().unwrap().to_string_lossy().replace('.', "");
    format!("run-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl ObjectStorageFactory {
    /// A factory over a fresh in-memory object store: `object-memory`.
    pub fn in_memory() -> Self {
        ObjectStorageFactory {
            name: "object-memory",
            store: Arc::new(flowstate_object::object_store::memory::InMemory::new()),
            base: "memory://bucket".into(),
            run: unique_run(),
            entropy: None,
        }
    }

    /// In memory, with one hex digit of entropy in data-file keys: `object-entropy`.
    pub fn in_memory_with_entropy() -> Self {
        ObjectStorageFactory {
            name: "object-entropy",
            entropy: Some(1),
            ..Self::in_memory()
        }
    }

    /// On the S3-compatible server of the environment: `s3`.
    pub fn s3() -> Self {
        let server = S3Server::from_env().expect("FLOWSTATE_S3_ENDPOINT is set when the s3 storage is registered");
        let store = server.builder("").with_option("max_retries", "3").build().unwrap();
        ObjectStorageFactory {
            name: "s3",
            store: Arc::clone(store.store()),
            base: format!("s3://{}", server.bucket),
            run: unique_run(),
            entropy: None,
        }
    }
}

impl StorageFactory for ObjectStorageFactory {
    fn name(&self) -> &str {
        self.name
    }

    /// `s3s-fs` checks `If-None-Match: *` and then writes: racing creates of
    /// one key can all succeed there (seen: 8 of 8). S3 itself has one winner.
    fn atomic_put_if_absent(&self) -> bool {
        self.name != "s3"
    }

    fn sweep_stride(&self) -> u64 {
        if self.name == "s3" {
            8
        } else {
            1
        }
    }

    fn storage(&self, job_id: &str) -> Arc<CheckpointStorage> {
        let run = &self.run;
        let store = match self.entropy {
            Some(length) => flowstate_object::ObjectBlobStore::new(
                Arc::clone(&self.store),
                &self.base,
                &format!("{run}/_entropy_/checkpoints/{job_id}"),
            )
            .unwrap()
            .with_entropy(length)
            .unwrap(),
            None => flowstate_object::ObjectBlobStore::new(
                Arc::clone(&self.store),
                &self.base,
                &format!("{run}/checkpoints/{job_id}"),
            )
            .unwrap(),
        };
        Arc::new(
            flowstate_api::CheckpointStorage::new(Arc::new(store), job_id)
                .unwrap()
                .with_savepoint_dir(format!("{}/{run}/savepoints", self.base)),
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

impl BackendFactory for RocksDbFactory {
    type Backend<K: 'static> = RocksDbBackend<K>;

    fn name(&self) -> &str {
        self.name
    }

    fn capabilities(&self) -> BackendCapabilities {
        RocksDbBackendFactory::new(self.scoped("any".into())).capabilities()
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

/// The SlateDB backend's factory, its databases in a fresh in-memory object
/// store (`slatedb`) or in a bucket of the S3-compatible server
/// (`slatedb-s3`), under a path of its own.
pub struct SlateDbFactory;

impl SlateDbFactory {
    /// Databases in memory: `slatedb`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> flowstate_slatedb::SlateDbBackendFactory {
        let store: Arc<dyn flowstate_object::object_store::ObjectStore> =
            Arc::new(flowstate_object::object_store::memory::InMemory::new());
        Self::on(store, "slatedb")
    }

    /// Databases on the S3-compatible server: `slatedb-s3`.
    pub fn s3() -> flowstate_slatedb::SlateDbBackendFactory {
        let server = S3Server::from_env().expect("FLOWSTATE_S3_ENDPOINT is set when slatedb-s3 is registered");
        let store = server.builder("").with_option("max_retries", "3").build().unwrap();
        Self::on(Arc::clone(store.store()), "slatedb-s3")
    }

    fn on(
        store: Arc<dyn flowstate_object::object_store::ObjectStore>,
        name: &str,
    ) -> flowstate_slatedb::SlateDbBackendFactory {
        // Memtables are flushed by checkpoints, or past 1 MiB.
        let options = flowstate_slatedb::SlateDbOptions::new(store, format!("{}/slatedb", unique_run()))
            .unwrap()
            .with_l0_sst_size(1 << 20);
        flowstate_slatedb::SlateDbBackendFactory::new(options)
            .unwrap()
            .with_name(name)
    }
}
