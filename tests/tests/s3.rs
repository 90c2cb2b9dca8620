//! Object-store storage against the real S3-compatible server that
//! `scripts/test.sh` starts (`FLOWSTATE_S3_*`): checkpoints copied between a
//! bucket and a directory restore both ways; throttling and dropped
//! responses are retried; a store that keeps failing fails the checkpoint
//! cleanly; a server killed between checkpoints or during an upload loses
//! nothing, and one killed during a checkpoint of the SlateDB backend
//! leaves nothing behind once the job is done. Without a server (outside CI) these tests pass vacuously and say
//! so; CI always has one.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{unique_run, FsStorageFactory, ObjectStorageFactory, RocksDbFactory, S3Server};
use flowstate_api::checkpoint::OperatorState;
use flowstate_api::lifecycle::{GcOptions, JobStatus};
use flowstate_api::*;
use flowstate_conformance::{
    full_config, restore_from, snapshot_and_complete, BackendFactory, Ctx, StorageFactory, OPERATOR,
};

use flowstate_object::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use flowstate_object::{ObjectBlobStore, ObjectStoreBuilder};
use flowstate_slatedb::{SlateDbBackend, SlateDbOptions};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn server() -> Option<S3Server> {
    let server = S3Server::from_env();
    if server.is_none() {
        eprintln!("no S3-compatible server (FLOWSTATE_S3_ENDPOINT): run through scripts/test.sh or scripts/s3-test.sh");
    }
    server
}

/// `len` bytes of xorshift noise continuing from `x`.
fn incompressible(len: usize, x: &mut u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}

/// Checkpoint storage for `job` under `prefix` of a store built by `builder`.
fn storage_of(store: ObjectBlobStore) -> Arc<CheckpointStorage> {
    Arc::new(CheckpointStorage::new(Arc::new(store), "job").unwrap())
}

fn write_state<B: KeyedStateBackend<Key = u64>>(b: &mut B, v: &ValueState<u64>, keys: u64, gen: u64) {
    for k in 0..keys {
        b.set_current_key(&k).unwrap();
        b.update(v, k * 1_000 + gen).unwrap();
    }
}

fn dump<B: KeyedStateBackend<Key = u64>>(b: &mut B, v: &ValueState<u64>, keys: u64) -> BTreeMap<u64, Option<u64>> {
    (0..keys)
        .map(|k| {
            b.set_current_key(&k).unwrap();
            (k, b.value(v).unwrap())
        })
        .collect()
}

/// Runs both phases of checkpoint `id` and completes it; the error of any step.
async fn try_checkpoint<B: KeyedStateBackend>(b: &mut B, storage: &CheckpointStorage, id: u64) -> Result<String> {
    let location = storage.init_checkpoint(id).await?;
    let result = b
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())?
        .await?;
    let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        flowstate_conformance::MAX_PARALLELISM,
        vec![result.handle],
    ));
    let pointer = location.write_metadata(&metadata).await?;
    b.notify_checkpoint_complete(id)?;
    Ok(pointer)
}

async fn restored_dump<F: BackendFactory>(
    ctx: &Ctx<F>,
    storage: &CheckpointStorage,
    pointer: &str,
    keys: u64,
) -> BTreeMap<u64, Option<u64>> {
    let mut r = restore_from(ctx, storage, full_config::<u64>(), pointer).await.unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    dump(&mut r, &v, keys)
}

/// Copies every object under `prefix` of `store` into `dir`.
async fn download(store: &Arc<dyn ObjectStore>, prefix: &str, dir: &Path) {
    let prefix = flowstate_object::object_store::path::Path::from(prefix);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    assert!(!metas.is_empty());
    for m in metas {
        let rest: Vec<String> = m
            .location
            .prefix_match(&prefix)
            .unwrap()
            .map(|p| p.as_ref().to_string())
            .collect();
        let target = dir.join(rest.join("/"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        std::fs::write(target, bytes).unwrap();
    }
}

/// Copies every file under `dir` into `store` under `prefix`.
async fn upload(dir: &Path, store: &Arc<dyn ObjectStore>, prefix: &str) {
    let mut stack = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                let key = flowstate_object::object_store::path::Path::from(format!("{prefix}/{rel}"));
                store
                    .put(&key, PutPayload::from(std::fs::read(&p).unwrap()))
                    .await
                    .unwrap();
                n += 1;
            }
        }
    }
    assert!(n > 0);
}

const KEYS: u64 = 3_000;

/// An incremental RocksDB checkpoint (shared SST files) and a heap
/// checkpoint written to the bucket restore from a directory copy, and the
/// same written to a directory restore from a bucket copy: one layout and
/// format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_copy_between_bucket_and_directory_both_ways() {
    let Some(server) = server() else { return };
    let run = unique_run();
    for incremental in [true, false] {
        let backend = if incremental {
            RocksDbFactory::new()
        } else {
            RocksDbFactory::full()
        };
        let ctx = Ctx::new(backend, FsStorageFactory::new());
        // Bucket → directory.
        let prefix = format!("{run}/{incremental}/to-dir/job");
        let s3 = server.builder(&prefix).build().unwrap();
        let inner = Arc::clone(s3.store());
        let bucket = storage_of(s3);
        let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for id in 1..=2 {
            write_state(&mut b, &v, KEYS, id);
            try_checkpoint(&mut b, &bucket, id).await.unwrap();
        }
        let expected = dump(&mut b, &v, KEYS);
        let dir = tempfile::tempdir().unwrap();
        download(&inner, &prefix, &dir.path().join("job")).await;
        let fs: Arc<CheckpointStorage> = Arc::new(flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap());
        let latest = fs.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(latest.metadata.checkpoint_id, 2);
        assert_eq!(restored_dump(&ctx, &fs, &latest.pointer, KEYS).await, expected);

        // Directory → bucket, from a backend that never wrote to the bucket.
        let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<CheckpointStorage> = Arc::new(flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap());
        for id in 3..=4 {
            write_state(&mut b, &v, KEYS, id);
            try_checkpoint(&mut b, &fs, id).await.unwrap();
        }
        let expected = dump(&mut b, &v, KEYS);
        let prefix = format!("{run}/{incremental}/to-bucket/job");
        upload(&dir.path().join("job"), &inner, &prefix).await;
        let bucket = storage_of(server.builder(&prefix).build().unwrap());
        let latest = bucket.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(latest.metadata.checkpoint_id, 4);
        assert_eq!(restored_dump(&ctx, &bucket, &latest.pointer, KEYS).await, expected);
    }
}

/// What a fault proxy does to each new connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Pass it through.
    None,
    /// Answer `503 SlowDown` without forwarding the request.
    SlowDown,
    /// Forward the request, then close before the response reaches the
    /// client: the server did the work, the client must retry blind.
    LoseResponse,
}

/// A TCP proxy in front of the server that applies `plan(n)` to the `n`th
/// connection. Clients use one connection per request
/// (`pool_max_idle_per_host = 0`), so every request meets the plan.
struct FaultProxy {
    endpoint: String,
    faults: Arc<AtomicUsize>,
}

impl FaultProxy {
    async fn start(upstream: &str, plan: fn(usize) -> Fault) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&faults);
        tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                let fault = plan(n);
                if fault != Fault::None {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = proxy(client, &upstream, fault).await;
                });
            }
        });
        FaultProxy { endpoint, faults }
    }
}

async fn proxy(mut client: TcpStream, upstream: &str, fault: Fault) -> std::io::Result<()> {
    match fault {
        Fault::None => {
            let mut server = TcpStream::connect(upstream).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
        Fault::SlowDown => {
            let mut head = vec![0u8; 64 << 10];
            let _ = client.read(&mut head).await?;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            client.shutdown().await?;
        }
        Fault::LoseResponse => {
            let mut server = TcpStream::connect(upstream).await?;
            let (mut cr, _cw) = client.split();
            let (mut sr, mut sw) = server.split();
            // Forward the request; when the server answers, hang up on both.
            let mut first = [0u8; 1];
            tokio::select! {
                _ = tokio::io::copy(&mut cr, &mut sw) => {}
                _ = sr.read(&mut first) => {}
            }
        }
    }
    Ok(())
}

/// Throttling (`503 SlowDown`) and responses lost after the server acted
/// are retried: checkpoints through a faulty path complete and restore to
/// the same state, create-if-absent metadata included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_lost_responses_are_retried() {
    let Some(server) = server() else { return };
    let proxy = FaultProxy::start(&server.endpoint, |n| match n % 4 {
        1 => Fault::SlowDown,
        3 => Fault::LoseResponse,
        _ => Fault::None,
    })
    .await;
    let prefix = format!("{}/retried/job", unique_run());
    let flaky = server
        .builder_at(&proxy.endpoint, &prefix)
        .with_option("pool_max_idle_per_host", "0")
        .with_option("max_retries", "10")
        .with_option("retry_timeout", "60s")
        .build()
        .unwrap();
    let storage = storage_of(flaky);
    let ctx = Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let mut pointer = String::new();
    for id in 1..=3 {
        write_state(&mut b, &v, KEYS, id);
        pointer = try_checkpoint(&mut b, &storage, id).await.unwrap();
    }
    assert!(proxy.faults.load(Ordering::Relaxed) > 10, "the proxy injected faults");
    let expected = dump(&mut b, &v, KEYS);
    assert_eq!(restored_dump(&ctx, &storage, &pointer, KEYS).await, expected);
    // The same checkpoint read straight from the server.
    let direct = storage_of(server.builder(&prefix).build().unwrap());
    assert_eq!(
        direct
            .latest_checkpoint()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .checkpoint_id,
        3
    );
}

/// A store that keeps failing fails the checkpoint with an error naming the
/// object; the last completed checkpoint stays whole and restorable, and the
/// next checkpoint on a healthy path completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_fails_the_checkpoint_cleanly() {
    let Some(server) = server() else { return };
    let prefix = format!("{}/failing/job", unique_run());
    let healthy = storage_of(server.builder(&prefix).build().unwrap());
    let proxy = FaultProxy::start(&server.endpoint, |_| Fault::SlowDown).await;
    let failing = storage_of(
        server
            .builder_at(&proxy.endpoint, &prefix)
            .with_option("pool_max_idle_per_host", "0")
            .with_option("max_retries", "2")
            .with_option("retry_timeout", "5s")
            .build()
            .unwrap(),
    );
    let ctx = Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    write_state(&mut b, &v, KEYS, 1);
    let first = try_checkpoint(&mut b, &healthy, 1).await.unwrap();
    let expected = dump(&mut b, &v, KEYS);
    write_state(&mut b, &v, KEYS, 2);
    let e = try_checkpoint(&mut b, &failing, 2).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{text}");
    assert!(
        text.contains(&prefix) && (text.contains("SlowDown") || text.contains("503")),
        "{text}"
    );
    assert_eq!(healthy.latest_checkpoint().await.unwrap().unwrap().pointer, first);
    assert_eq!(restored_dump(&ctx, &healthy, &first, KEYS).await, expected);
    write_state(&mut b, &v, KEYS, 3);
    let third = try_checkpoint(&mut b, &healthy, 3).await.unwrap();
    let expected = dump(&mut b, &v, KEYS);
    assert_eq!(restored_dump(&ctx, &healthy, &third, KEYS).await, expected);
}

/// A server of this test's own, to kill and restart on the same port and
/// directory.
struct OwnServer {
    bin: String,
    port: u16,
    root: tempfile::TempDir,
    key: String,
    secret: String,
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn start(bin: &str) -> OwnServer {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("flowstate")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            bin: bin.to_string(),
            port,
            root,
            key: "own".into(),
            secret: format!("own-secret-{}", unique_run()),
            child: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.key, "--secret-key", &self.secret])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s3s-fs did not start on port {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn builder(&self, prefix: &str) -> ObjectStoreBuilder {
        ObjectStoreBuilder::new(format!("s3://flowstate/{prefix}"))
            .without_env()
            .with_option("endpoint", format!("http://127.0.0.1:{}", self.port))
            .with_option("access_key_id", &self.key)
            .with_option("secret_access_key", &self.secret)
            .with_option("region", "us-east-1")
            .with_option("allow_http", "true")
            .with_option("max_retries", "1")
            .with_option("retry_timeout", "3s")
    }

    fn storage(&self, prefix: &str, parts: bool) -> Arc<CheckpointStorage> {
        let mut b = self.builder(prefix);
        if parts {
            b = b.with_parts(5 << 20, 2);
        }
        storage_of(b.build().unwrap())
    }

    /// The bucket, as the SlateDB backend is given it.
    fn bucket(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(self.builder("").build().unwrap().store())
    }

    /// How many files the server holds (objects, and uploads under way).
    fn files(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count(&e.path()),
                        _ => 1,
                    })
                    .sum()
            })
        }
        count(self.root.path())
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server killed between checkpoints and in the middle of a multipart
/// upload: the checkpoints in flight fail, the completed ones stay whole
/// and restorable after a restart, and checkpointing carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_nothing() {
    let Some(_) = server() else { return };
    let bin = std::env::var("FLOWSTATE_S3_BIN").unwrap_or_else(|_| "s3s-fs".into());
    let mut own = OwnServer::start(&bin);
    let storage = own.storage("killed/job", true);
    let ctx = Ctx::new(RocksDbFactory::full(), FsStorageFactory::new());
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = b.register(ListStateDescriptor::<Vec<u8>>::new("big")).unwrap();
    write_state(&mut b, &v, KEYS, 1);
    let first = try_checkpoint(&mut b, &storage, 1).await.unwrap();
    let expected_first = dump(&mut b, &v, KEYS);

    // Killed between checkpoints.
    own.kill();
    write_state(&mut b, &v, KEYS, 2);
    assert!(try_checkpoint(&mut b, &storage, 2).await.is_err());
    own.restart();
    assert_eq!(storage.latest_checkpoint().await.unwrap().unwrap().pointer, first);
    assert_eq!(restored_dump(&ctx, &storage, &first, KEYS).await, expected_first);

    // Killed during a multipart upload: ~48 MiB of incompressible state.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        let blob = incompressible(16_384, &mut x);
        b.append(&l, blob).unwrap();
    }
    let location = storage.init_checkpoint(3).await.unwrap();
    let snapshot = b
        .snapshot(3, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap();
    let upload = tokio::spawn(snapshot.into_future());
    // Killed once a multipart upload is under way (s3s-fs keeps one as an
    // `.upload-*` file at the top of its root).
    let mut started = false;
    for _ in 0..20_000 {
        started = std::fs::read_dir(own.root.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".upload"));
        if started || upload.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(started, "a multipart upload started");
    own.kill();
    let outcome = upload.await.unwrap();
    assert!(
        outcome.is_err(),
        "the checkpoint whose server died cannot have completed"
    );
    drop(location);
    own.restart();
    assert_eq!(storage.latest_checkpoint().await.unwrap().unwrap().pointer, first);
    assert_eq!(restored_dump(&ctx, &storage, &first, KEYS).await, expected_first);
    let fourth = try_checkpoint(&mut b, &storage, 4).await.unwrap();
    let expected = dump(&mut b, &v, KEYS);
    assert_eq!(restored_dump(&ctx, &storage, &fourth, KEYS).await, expected);
}

/// Nothing a checkpoint writes to the bucket holds the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_in_checkpoint_objects() {
    let Some(server) = server() else { return };
    let factory = ObjectStorageFactory::s3();
    let storage = factory.storage("secrets");
    let ctx = Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    write_state(&mut b, &v, 100, 1);
    snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::checkpoint()).await;
    let store = server.builder("").build().unwrap();
    let root = storage.latest_checkpoint().await.unwrap().unwrap().pointer;
    let prefix = root
        .strip_prefix(&format!("s3://{}/", server.bucket))
        .unwrap()
        .trim_end_matches("/chk-1")
        .to_string();
    let inner = Arc::clone(store.store());
    let metas: Vec<_> = inner.list(Some(&prefix.as_str().into())).try_collect().await.unwrap();
    assert!(!metas.is_empty());
    for m in metas {
        let bytes = inner.get(&m.location).await.unwrap().bytes().await.unwrap();
        let secret = server.secret.as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{} holds the secret key",
            m.location
        );
    }
}

/// Completes checkpoint `id` of the SlateDB backend `b` through `store`.
async fn complete_slatedb(store: &mut CheckpointStore, b: &SlateDbBackend<u64>, id: u64) -> Result<()> {
    let location = store.begin_checkpoint(id).await?;
    let result = b
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
        .await?
        .await?;
    let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        SLATEDB_MAX_PARALLELISM,
        vec![result.handle],
    ));
    store.complete(&location, metadata).await?;
    b.notify_checkpoint_complete(id).await
}

const SLATEDB_MAX_PARALLELISM: u32 = 128;
const SLATEDB_KEYS: u64 = 2_000;

async fn put_round(b: &Arc<SlateDbBackend<u64>>, v: &ValueState<u64>, round: u64) {
    for k in 0..SLATEDB_KEYS {
        RecordCtx::for_key(Arc::clone(b), &k)
            .unwrap()
            .update(v, k * 1_000 + round)
            .await
            .unwrap();
    }
}

async fn check_round(b: &Arc<SlateDbBackend<u64>>, v: &ValueState<u64>, round: u64) {
    for k in 0..SLATEDB_KEYS {
        let got = RecordCtx::for_key(Arc::clone(b), &k).unwrap().value(v).await.unwrap();
        assert_eq!(got, Some(k * 1_000 + round), "key {k}");
    }
}

/// The SlateDB backend with its databases and checkpoints on a server
/// killed in the middle of a checkpoint: the checkpoint does not complete
/// and the attempt dies with it; after a restart the next attempt restores
/// the last complete checkpoint, exactly; garbage collection while it
/// runs releases the dead attempt's SlateDB checkpoint in flight and keeps
/// its database only for the clone that reads it; once the job is done,
/// nothing of either attempt remains in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_checkpoint_leaves_nothing_of_the_slatedb_attempt() {
    let Some(_) = server() else { return };
    let bin = std::env::var("FLOWSTATE_S3_BIN").unwrap_or_else(|_| "s3s-fs".into());
    let mut own = OwnServer::start(&bin);
    let bucket = own.bucket();
    let options = SlateDbOptions::new(Arc::clone(&bucket), "job/slatedb/op")
        .unwrap()
        .with_store_retries(Some(2));
    let storage = own.storage("job", false);
    let config = || {
        KeyedBackendConfig::<u64>::new(
            KeyGroupRange::all(SLATEDB_MAX_PARALLELISM).unwrap(),
            SLATEDB_MAX_PARALLELISM,
        )
    };
    let open = || async {
        CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
            .await
            .unwrap()
            .with_native_release(options.release())
    };

    // Attempt 1 completes checkpoint 1.
    let mut checkpoints = open().await;
    let one = Arc::new(SlateDbBackend::open(options.clone(), config()).await.unwrap());
    let v = one.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    put_round(&one, &v, 1).await;
    complete_slatedb(&mut checkpoints, &one, 1).await.unwrap();
    let one_path = one.path().to_string();

    // Checkpoint 2 flushes ~16 MiB; the server is killed once the flush
    // has started writing.
    put_round(&one, &v, 2).await;
    let big = one.register(ValueStateDescriptor::<Vec<u8>>::new("big")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..256u64 {
        let blob = incompressible(65_536, &mut x);
        RecordCtx::for_key(Arc::clone(&one), &k)
            .unwrap()
            .update(&big, blob)
            .await
            .unwrap();
    }
    let before = own.files();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut writing = false;
    let (outcome, ()) = futures::join!(
        async {
            let outcome = complete_slatedb(&mut checkpoints, &one, 2).await;
            done.store(true, Ordering::SeqCst);
            outcome
        },
        async {
            for _ in 0..20_000 {
                writing = own.files() > before;
                if writing || done.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            own.kill();
        }
    );
    assert!(writing, "checkpoint 2 started writing to the server");
    assert!(outcome.is_err(), "a checkpoint whose server died cannot complete");
    // The process dies with its backend and checkpoint store.
    drop(checkpoints);
    drop(one);

    // Attempt 2, after a restart, restores checkpoint 1.
    own.restart();
    let mut checkpoints = open().await;
    let latest = checkpoints.latest().unwrap().clone();
    assert_eq!(latest.checkpoint_id, 1);
    let handles = latest.metadata.operators[0].keyed.clone();
    let reader = storage.resolve(&latest.pointer).await.unwrap().reader;
    let two = Arc::new(
        SlateDbBackend::restore(options.clone(), config(), &handles, Some(reader))
            .await
            .unwrap(),
    );
    let v = two.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    check_round(&two, &v, 1).await;
    let big = two.register(ValueStateDescriptor::<Vec<u8>>::new("big")).unwrap();
    let none = RecordCtx::for_key(Arc::clone(&two), &0)
        .unwrap()
        .value(&big)
        .await
        .unwrap();
    assert_eq!(none, None, "nothing of the failed checkpoint is visible");
    put_round(&two, &v, 3).await;
    complete_slatedb(&mut checkpoints, &two, 3).await.unwrap();
    put_round(&two, &v, 4).await;
    complete_slatedb(&mut checkpoints, &two, 4).await.unwrap();

    // Garbage collection while attempt 2 runs: the dead attempt's SlateDB
    // checkpoints are released (1 by subsumption, 2 by the collection if
    // it was taken), and its database stays only because attempt 2's clone
    // reads it; the checkpoint directory keeps nothing of checkpoint 2.
    let retained: Vec<_> = checkpoints
        .retained()
        .iter()
        .flat_map(|c| c.metadata.operators.iter().flat_map(|o| o.keyed.clone()))
        .collect();
    let report = options
        .collect_garbage(&retained, &[two.uuid()], &GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    assert_eq!(report.read_by_clones, std::slice::from_ref(&one_path), "{report:?}");
    assert!(report.deleted_databases.is_empty(), "{report:?}");
    let admin = slatedb::admin::AdminBuilder::new(one_path.as_str(), Arc::clone(&bucket)).build();
    let pins = admin.list_checkpoints(None).await.unwrap();
    assert!(
        pins.iter().all(|c| c.name.is_none()),
        "only the clone's pin is left: {pins:?}"
    );
    checkpoints
        .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    let chk2: Vec<_> = bucket.list(Some(&"job/chk-2".into())).try_collect().await.unwrap();
    assert!(chk2.is_empty(), "{chk2:?}");

    // The job finishes: its checkpoints are discarded, and garbage
    // collection leaves nothing of either attempt.
    let two_path = two.path().to_string();
    two.close().await.unwrap();
    drop(two);
    checkpoints.shutdown(JobStatus::Finished).await.unwrap();
    let report = options
        .collect_garbage(&[], &[], &GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    let mut deleted = report.deleted_databases.clone();
    deleted.sort();
    let mut want = vec![one_path, two_path];
    want.sort();
    assert_eq!(deleted, want, "{report:?}");
    let left: Vec<String> = bucket
        .list(Some(&"job/slatedb".into()))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
}
