//! W2: full snapshots of 2,000,000 keys × 100-byte values, 1% updated
//! between checkpoints, then restore.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use flowstate_api::checkpoint::{unique_file_name, OperatorState};
use flowstate_api::*;
use flowstate_heap::HeapBackend;

use crate::{emit, XorShift};

fn value(rng: &mut XorShift) -> Vec<u8> {
    let mut v = Vec::with_capacity(104);
    for _ in 0..13 {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(100);
    v
}

/// Loads `keys` keys with generated values, returning them.
fn load<B: KeyedStateBackend<Key = u64>>(
    b: &mut B,
    s: &ValueState<Vec<u8>>,
    keys: u64,
    rng: &mut XorShift,
) -> Result<Vec<Vec<u8>>> {
    let mut expected = Vec::with_capacity(keys as usize);
    for k in 0..keys {
        let v = value(rng);
        b.set_current_key(&k)?;
        b.update(s, &v)?;
        expected.push(v);
    }
    Ok(expected)
}

/// Updates `updates` random keys with new values; returns the last key
/// and the number of distinct keys updated.
fn update_round<B: KeyedStateBackend<Key = u64>>(
    b: &mut B,
    s: &ValueState<Vec<u8>>,
    updates: usize,
    rng: &mut XorShift,
    expected: &mut [Vec<u8>],
) -> Result<(u64, usize)> {
    let mut last_key = 0;
    let mut distinct = std::collections::HashSet::with_capacity(updates);
    for _ in 0..updates {
        let k = rng.next_u64() % expected.len() as u64;
        let v = value(rng);
        b.set_current_key(&k)?;
        b.update(s, &v)?;
        expected[k as usize] = v;
        last_key = k;
        distinct.insert(k);
    }
    Ok((last_key, distinct.len()))
}

/// Checks 10,000 random keys of a restored backend.
fn check_restored<B: KeyedStateBackend<Key = u64>>(
    r: &mut B,
    s: &ValueState<Vec<u8>>,
    expected: &[Vec<u8>],
) -> Result<()> {
    let mut check = XorShift::new(7);
    for _ in 0..10_000 {
        let k = check.next_u64() % expected.len() as u64;
        r.set_current_key(&k)?;
        if r.value(s)?.as_ref() != Some(&expected[k as usize]) {
            return Err(Error::internal(format!("restored key {k} differs")));
        }
    }
    Ok(())
}

pub(crate) fn config() -> Result<KeyedBackendConfig<u64>> {
    Ok(KeyedBackendConfig::new(KeyGroupRange::all(128)?, 128))
}

pub(crate) fn descriptor() -> ValueStateDescriptor<Vec<u8>> {
    ValueStateDescriptor::with_serializer("w2-value", Arc::new(RawBytes))
}

/// W2 on the heap backend: `heap-full` (canonical full checkpoints) or
/// `heap-incremental` (chains of deltas, with `ckpt.N.changed_bytes`, the
/// bytes of the entries changed since the checkpoint before: 8-byte key
/// and 100-byte value per distinct key).
async fn heap(scale: usize, incremental: bool) -> Result<u64> {
    let name = if incremental { "heap-incremental" } else { "heap-full" };
    let options = flowstate_heap::HeapOptions {
        incremental,
        ..Default::default()
    };
    let keys = 2_000_000 / scale as u64;
    let updates = 20_000 / scale;
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "w2")?;
    let mut rng = XorShift::new(42);
    let mut b = HeapBackend::with_options(config()?, options.clone())?;
    let s = b.register(descriptor())?;
    let started = Instant::now();
    let mut expected = load(&mut b, &s, keys, &mut rng)?;
    emit("W2", name, "load", started.elapsed().as_secs_f64() * 1e3, "ms");

    let mut last_key = 0;
    let mut full_bytes = 0;
    for id in 1..=6u64 {
        if id > 1 {
            let (last, distinct) = update_round(&mut b, &s, updates, &mut rng, &mut expected)?;
            last_key = last;
            if incremental {
                emit(
                    "W2",
                    name,
                    &format!("ckpt.{id}.changed_bytes"),
                    (distinct * 108) as f64,
                    "bytes",
                );
            }
        }
        let location = storage.init_checkpoint(id).await?;
        let pending = b.snapshot(id, location.clone(), SnapshotOptions::checkpoint())?;
        let (result, stall) = crate::stall::measured(pending).await;
        let result = result?;
        emit_stall(name, &format!("ckpt.{id}"), stall);
        let mut metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0);
        metadata
            .operators
            .push(OperatorState::new("w2", 1, 128, vec![result.handle.clone()]));
        location.write_metadata(&metadata).await?;
        b.notify_checkpoint_complete(id)?;
        let st = result.stats;
        emit_stats(name, id, &st);
        full_bytes = st.full_size;
    }
    drop(b);

    let started = Instant::now();
    let latest = storage
        .latest_checkpoint()
        .await?
        .ok_or_else(|| Error::not_found("checkpoint 6"))?;
    let handles = latest.metadata.operators[0].keyed.clone();
    let restore = HeapBackend::restore_with_options(config()?, options, &handles, &*latest.reader);
    let (r, stall) = crate::stall::measured(restore).await;
    let mut r = r?;
    emit_stall(name, "restore.remote", stall);
    let s = r.register(descriptor())?;
    r.set_current_key(&last_key)?;
    let got = r.value(&s)?;
    let elapsed = started.elapsed();
    if got.as_ref() != Some(&expected[last_key as usize]) {
        return Err(Error::internal("restore returned a wrong value"));
    }
    emit("W2", name, "restore.remote_ms", elapsed.as_secs_f64() * 1e3, "ms");
    check_restored(&mut r, &s, &expected)?;
    Ok(full_bytes)
}

/// Which RocksDB checkpoints W2 takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RocksMode {
    /// Canonical full checkpoints, key group by key group.
    Full,
    /// Incremental checkpoints through shared SST files, with local recovery.
    Incremental,
}

/// 512 MiB, as Flink's managed memory for one slot: block cache and memtables.
pub(crate) fn rocks_options(dir: &std::path::Path, mode: RocksMode, local: bool) -> flowstate_rocksdb::RocksDbOptions {
    let o = flowstate_rocksdb::RocksDbOptions::new(dir.join("work"))
        .with_incremental(mode == RocksMode::Incremental)
        .with_memory(384 << 20, 128 << 20);
    if local {
        o.with_local_recovery(vec![dir.join("local")], "w2/op-0")
    } else {
        o
    }
}

/// Emits the worst stall of the runtime during `what`.
fn emit_stall(backend: &str, what: &str, stall: std::time::Duration) {
    emit(
        "W2",
        backend,
        &format!("{what}.stall_ms"),
        stall.as_secs_f64() * 1e3,
        "ms",
    );
}

fn emit_stats(backend: &str, id: u64, st: &SnapshotStats) {
    emit(
        "W2",
        backend,
        &format!("ckpt.{id}.sync_ms"),
        st.sync_duration.as_secs_f64() * 1e3,
        "ms",
    );
    emit(
        "W2",
        backend,
        &format!("ckpt.{id}.async_ms"),
        st.async_duration.as_secs_f64() * 1e3,
        "ms",
    );
    emit(
        "W2",
        backend,
        &format!("ckpt.{id}.bytes"),
        st.bytes_written as f64,
        "bytes",
    );
    emit(
        "W2",
        backend,
        &format!("ckpt.{id}.full_bytes"),
        st.full_size as f64,
        "bytes",
    );
}

async fn rocksdb(scale: usize, mode: RocksMode, object: Option<&ObjectTarget>) -> Result<()> {
    use flowstate_rocksdb::RocksDbBackend;
    let name = match mode {
        RocksMode::Full => "rocksdb-full",
        RocksMode::Incremental => "rocksdb-incremental",
    };
    let keys = 2_000_000 / scale as u64;
    let updates = 20_000 / scale;
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let (storage, name) = match object {
        None => {
            let fs: Arc<CheckpointStorage> = Arc::new(
                flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "w2")?
                    .with_savepoint_dir(dir.path().join("savepoints").display().to_string()),
            );
            (fs, name.to_string())
        }
        Some(o) => (o.storage(name)?, format!("{name}@s3")),
    };
    let name = name.as_str();
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default()).await?;
    let mut rng = XorShift::new(42);
    let mut b = RocksDbBackend::new(config()?, rocks_options(dir.path(), mode, true))?;
    let s = b.register(descriptor())?;
    let started = Instant::now();
    let mut expected = load(&mut b, &s, keys, &mut rng)?;
    emit("W2", name, "load", started.elapsed().as_secs_f64() * 1e3, "ms");
    if mode == RocksMode::Incremental {
        // The same keys and values into a fresh backend through a bulk
        // load: sorted into SST files and ingested.
        let mut fresh = RocksDbBackend::new(config()?, rocks_options(dir.path(), mode, false))?;
        let started = Instant::now();
        let mut bulk = fresh.bulk_load();
        let s = bulk.register(descriptor())?;
        let loaded = load(&mut bulk, &s, keys, &mut XorShift::new(42))?;
        bulk.finish()?;
        emit("W2", name, "load.bulk", started.elapsed().as_secs_f64() * 1e3, "ms");
        check_restored(&mut fresh, &s, &loaded)?;
    }
    let mut last_key = 0;
    let mut savepoint = None;
    for id in 1..=7u64 {
        if (2..=6).contains(&id) {
            last_key = update_round(&mut b, &s, updates, &mut rng, &mut expected)?.0;
        }
        let (location, options) = if id == 7 {
            (store.begin_savepoint(id, None).await?, SnapshotOptions::savepoint())
        } else {
            (store.begin_checkpoint(id).await?, SnapshotOptions::checkpoint())
        };
        let (result, stall) = crate::stall::measured(b.snapshot(id, Arc::clone(&location), options)?).await;
        let result = result?;
        if id < 7 {
            emit_stall(name, &format!("ckpt.{id}"), stall);
        }
        let metadata = CheckpointMetadata::new(id, options.kind, 0).with_operator(OperatorState::new(
            "w2",
            1,
            128,
            vec![result.handle.clone()],
        ));
        let completed = store.complete(&location, metadata).await?;
        if id == 7 {
            savepoint = Some(completed.pointer.clone());
            // The savepoint is measured once, on the incremental run's backend.
            if mode == RocksMode::Incremental {
                emit_stats("rocksdb-canonical-savepoint", id, &result.stats);
            }
        } else {
            b.notify_checkpoint_complete(id)?;
            emit_stats(name, id, &result.stats);
        }
    }
    drop(b);

    let pointer = store
        .latest()
        .map(|c| c.pointer.clone())
        .ok_or_else(|| Error::not_found("checkpoint 6"))?;
    let kinds: &[(&str, bool)] = match mode {
        RocksMode::Full => &[("restore.remote_ms", false)],
        RocksMode::Incremental => &[("restore.remote_ms", false), ("restore.local_ms", true)],
    };
    for &(metric, local) in kinds {
        let rss_before = reset_peak_rss();
        let started = Instant::now();
        let latest = storage.resolve(&pointer).await?;
        let handles = latest.metadata.operators[0].keyed.clone();
        let (r, stall) = crate::stall::measured(RocksDbBackend::restore(
            config()?,
            &handles,
            &*latest.reader,
            rocks_options(dir.path(), mode, local),
        ))
        .await;
        let mut r = r?;
        emit_stall(name, metric.trim_end_matches("_ms"), stall);
        let s = r.register(descriptor())?;
        r.set_current_key(&last_key)?;
        let got = r.value(&s)?;
        let elapsed = started.elapsed();
        if got.as_ref() != Some(&expected[last_key as usize]) {
            return Err(Error::internal("restore returned a wrong value"));
        }
        if (r.restore_stats().handles_from_local_copy > 0) != local {
            return Err(Error::internal(format!(
                "{metric}: local copy used: {:?}",
                r.restore_stats()
            )));
        }
        emit("W2", name, metric, elapsed.as_secs_f64() * 1e3, "ms");
        if let (Some(before), Some(peak)) = (rss_before, status_bytes("VmHWM")) {
            let extra = peak.saturating_sub(before) as f64 / 1e6;
            emit("W2", name, &format!("{metric}.peak_extra_mb"), extra, "MB");
        }
        check_restored(&mut r, &s, &expected)?;
    }
    if mode == RocksMode::Incremental {
        let savepoint = savepoint.ok_or_else(|| Error::not_found("savepoint 7"))?;
        // The whole canonical savepoint into a fresh RocksDB backend (what a
        // backend switch or a savepoint restore does), checked key by key.
        let started = Instant::now();
        let resolved = storage.resolve(&savepoint).await?;
        let handles = resolved.metadata.operators[0].keyed.clone();
        let mut r = RocksDbBackend::restore(
            config()?,
            &handles,
            &*resolved.reader,
            rocks_options(dir.path(), RocksMode::Full, false),
        )
        .await?;
        emit(
            "W2",
            name,
            "restore.savepoint_ms",
            started.elapsed().as_secs_f64() * 1e3,
            "ms",
        );
        let s = r.register(descriptor())?;
        check_restored(&mut r, &s, &expected)?;
        drop(r);
        // A rescaled restore: subtask 0 of 4 from the canonical savepoint
        // reads only its key groups' byte ranges.
        let started = Instant::now();
        let resolved = storage.resolve(&savepoint).await?;
        let handles = resolved.metadata.operators[0].keyed.clone();
        let total: u64 = handles.iter().map(|h| h.state_size()).sum();
        let range = KeyGroupRange::for_operator(128, 4, 0)?;
        let r = RocksDbBackend::restore(
            KeyedBackendConfig::<u64>::new(range, 128),
            &handles,
            &*resolved.reader,
            rocks_options(dir.path(), RocksMode::Full, false),
        )
        .await?;
        emit(
            "W2",
            name,
            "rescale.subtask0_of_4_ms",
            started.elapsed().as_secs_f64() * 1e3,
            "ms",
        );
        emit(
            "W2",
            name,
            "rescale.subtask0_of_4.read_bytes",
            r.restore_stats().downloaded_bytes as f64,
            "bytes",
        );
        emit("W2", name, "rescale.savepoint_bytes", total as f64, "bytes");
    }
    Ok(())
}

/// Checkpoints to an S3-compatible server instead of a directory
/// (`--storage s3`, with the server of `FLOWSTATE_S3_*`).
pub struct ObjectTarget {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

impl ObjectTarget {
    /// The server of the environment.
    pub fn from_env() -> Result<ObjectTarget> {
        let var = |k: &str| std::env::var(k).map_err(|_| Error::invalid(format!("--storage s3 needs {k}")));
        Ok(ObjectTarget {
            endpoint: var("FLOWSTATE_S3_ENDPOINT")?,
            bucket: var("FLOWSTATE_S3_BUCKET")?,
            key: var("FLOWSTATE_S3_ACCESS_KEY_ID")?,
            secret: var("FLOWSTATE_S3_SECRET_ACCESS_KEY")?,
        })
    }

    /// A store of this server at `url` (`s3://<bucket>/…`).
    fn build(&self, url: String) -> Result<flowstate_object::ObjectBlobStore> {
        flowstate_object::ObjectStoreBuilder::new(url)
            .without_env()
            .with_option("endpoint", &self.endpoint)
            .with_option("access_key_id", &self.key)
            .with_option("secret_access_key", &self.secret)
            .with_option("region", "us-east-1")
            .with_option("allow_http", "true")
            .build()
    }

    fn storage(&self, run: &str) -> Result<Arc<CheckpointStorage>> {
        // Short keys: s3s-fs names a file after each key in base64, so keys
        // beyond ~140 bytes exceed the filesystem's 255-byte names.
        let tag = unique_file_name();
        let store = self.build(format!("s3://{}/{run}-{}", self.bucket, &tag[tag.len() - 4..]))?;
        let savepoints = format!("s3://{}/sp", self.bucket);
        Ok(Arc::new(
            CheckpointStorage::new(Arc::new(store), "w2")?.with_savepoint_dir(savepoints),
        ))
    }

    /// The server's bucket as an object store, and a fresh key prefix in
    /// it starting with `run`.
    pub fn object_store(&self, run: &str) -> Result<(Arc<dyn flowstate_object::object_store::ObjectStore>, String)> {
        let tag = unique_file_name();
        let store = self.build(format!("s3://{}", self.bucket))?;
        Ok((Arc::clone(store.store()), format!("{run}-{}", &tag[tag.len() - 4..])))
    }
}

/// Resets this process's peak resident set size to the current one (Linux:
/// `/proc/self/clear_refs`) and returns it, in bytes; `None` elsewhere.
fn reset_peak_rss() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_bytes("VmRSS")
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Sequential write + fsync and read bandwidth of a file of `bytes` bytes.
fn disk(bytes: u64) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let path = dir.path().join("bandwidth");
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    {
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).map_err(|e| Error::io(path.display(), e))?;
            left -= n as u64;
        }
        f.sync_all().map_err(|e| Error::io(path.display(), e))?;
    }
    let mb = bytes as f64 / 1e6;
    emit(
        "W2",
        "disk",
        "write_fsync",
        mb / started.elapsed().as_secs_f64(),
        "MB/s",
    );
    let started = Instant::now();
    let mut f = std::fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).map_err(|e| Error::io(path.display(), e))? > 0 {}
    emit("W2", "disk", "read", mb / started.elapsed().as_secs_f64(), "MB/s");
    Ok(())
}

/// Runs W2 for every backend (or those whose name starts with `only`) and
/// the disk limit.
pub fn run(scale: usize, object: Option<&ObjectTarget>, only: Option<&str>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("runtime: {e}")))?;
    let wanted = |name: &str| only.is_none_or(|o| name.starts_with(o));
    if object.is_some() {
        // Only the RocksDB runs depend on the storage.
        rt.block_on(rocksdb(scale, RocksMode::Full, object))?;
        return rt.block_on(rocksdb(scale, RocksMode::Incremental, object));
    }
    let mut full = None;
    if wanted("heap-full") {
        full = Some(rt.block_on(heap(scale, false))?);
    }
    if wanted("heap-incremental") {
        let bytes = rt.block_on(heap(scale, true))?;
        full.get_or_insert(bytes);
    }
    if wanted("rocksdb-full") {
        rt.block_on(rocksdb(scale, RocksMode::Full, None))?;
    }
    if wanted("rocksdb-incremental") {
        rt.block_on(rocksdb(scale, RocksMode::Incremental, None))?;
    }
    match full {
        Some(bytes) => disk(bytes),
        None => Ok(()),
    }
}
