//! The SlateDB backend on the standard workloads (`--only slatedb`), its
//! databases on a local filesystem (`slatedb`) or on the S3-compatible
//! server (`slatedb@s3`, with `--storage s3`):
//!
//! - W1: value.get and value.update through the synchronous face, and
//!   through the executor with a warm cache (64 MiB) and with none;
//! - W2: a checkpoint of 2M keys after each 1% update round: sync and
//!   async time, the handle's bytes, and what SlateDB wrote to the object
//!   store since the checkpoint before (memtable flushes, compactions,
//!   manifests); then a restore;
//! - S1: W2's checkpoint (after 20,000 updates) and restore at 200k, 2M
//!   and 20M keys, once the compactor has merged the load (how long that
//!   took is reported);
//! - W3: rescaled restores 2→3, 2→1 and 3→2, once the compactors have
//!   merged the load.
//!
//! State is written through the asynchronous face, 256 records at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use flowstate_api::checkpoint::{KeyedStateHandle, OperatorState, StateReader};
use flowstate_api::*;
use flowstate_object::object_store::{self, ObjectStore};
use flowstate_slatedb::slatedb::admin::AdminBuilder;
use flowstate_slatedb::{SlateDbBackend, SlateDbBackendFactory, SlateDbOptions};
use futures::{StreamExt, TryStreamExt};

use crate::w2::ObjectTarget;
use crate::{emit, XorShift};

/// Records written at once while loading.
const IN_FLIGHT: usize = 256;

/// Where one run's databases go.
struct Databases {
    store: Arc<dyn ObjectStore>,
    base: String,
    label: &'static str,
    _dir: Option<tempfile::TempDir>,
}

impl Databases {
    fn new(object: Option<&ObjectTarget>, run: &str) -> Result<Self> {
        match object {
            Some(o) => {
                let (store, prefix) = o.object_store(run)?;
                Ok(Databases {
                    store,
                    base: format!("{prefix}/slatedb"),
                    label: "slatedb@s3",
                    _dir: None,
                })
            }
            None => {
                let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
                let local = flowstate_object::LocalFiles::new_with_prefix(dir.path())
                    .map_err(|e| Error::invalid(format!("{}: {e}", dir.path().display())))?;
                Ok(Databases {
                    store: Arc::new(local),
                    base: format!("{run}/slatedb"),
                    label: "slatedb",
                    _dir: Some(dir),
                })
            }
        }
    }

    fn options(&self) -> Result<SlateDbOptions> {
        Ok(SlateDbOptions::new(Arc::clone(&self.store), self.base.clone())?
            .with_boundary_files(self.label == "slatedb@s3"))
    }

    /// Every object under `prefix`, with its size.
    async fn objects(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        let prefix = object_store::path::Path::from(prefix);
        self.store
            .list(Some(&prefix))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|e| Error::internal(format!("listing {prefix}: {e}")))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("a runtime", e))
}

fn config(range: KeyGroupRange) -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(range, 128)
}

fn value_of(k: u64, round: u64) -> Vec<u8> {
    let mut rng = XorShift::new(k.wrapping_mul(31).wrapping_add(round) | 1);
    let mut v = Vec::with_capacity(104);
    for _ in 0..13 {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(100);
    v
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Writes `value_of(k, round)` for every key of `keys` the backend owns.
async fn write(
    b: &Arc<SlateDbBackend<u64>>,
    s: &ValueState<Vec<u8>>,
    keys: impl Iterator<Item = u64>,
    round: u64,
) -> Result<()> {
    let range = b.key_group_range();
    let config = config(range);
    futures::stream::iter(keys)
        .filter(|k| futures::future::ready(config.key_group_of(k).is_ok_and(|g| range.contains(g))))
        .map(|k| async move {
            RecordCtx::for_key(Arc::clone(b), &k)?
                .update(s, value_of(k, round))
                .await
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// Checks key `k` holds `value_of(k, round)`.
async fn check(b: &Arc<SlateDbBackend<u64>>, s: &ValueState<Vec<u8>>, k: u64, round: u64) -> Result<()> {
    let got = RecordCtx::for_key(Arc::clone(b), &k)?.value(s).await?;
    if got != Some(value_of(k, round)) {
        return Err(Error::internal(format!("key {k}: a wrong value after the restore")));
    }
    Ok(())
}

/// Takes checkpoint `id` of `b` and completes it in `store`; returns its
/// handle and stats.
async fn checkpoint(
    b: &SlateDbBackend<u64>,
    store: &mut CheckpointStore,
    id: u64,
) -> Result<(KeyedStateHandle, SnapshotStats)> {
    let location = store.begin_checkpoint(id).await?;
    let result = b
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
        .await?
        .await?;
    let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "slatedb",
        1,
        128,
        vec![result.handle.clone()],
    ));
    store.complete(&location, metadata).await?;
    b.notify_checkpoint_complete(id).await?;
    Ok((result.handle, result.stats))
}

/// A checkpoint storage on the local disk, whose store releases the
/// SlateDB checkpoints it no longer retains.
async fn checkpoints(dir: &std::path::Path, options: &SlateDbOptions) -> Result<CheckpointStore> {
    let storage = Arc::new(flowstate_fs::checkpoint_storage(dir.join("checkpoints"), "slatedb")?);
    Ok(
        CheckpointStore::open(storage, CheckpointStoreConfig::default().with_max_retained(2))
            .await?
            .with_native_release(options.release()),
    )
}

/// The reader of the latest checkpoint of `store`.
async fn latest_reader(store: &CheckpointStore) -> Result<Arc<dyn StateReader>> {
    let pointer = store
        .latest()
        .map(|c| c.pointer.clone())
        .ok_or_else(|| Error::not_found("no checkpoint"))?;
    Ok(store.storage().resolve(&pointer).await?.reader)
}

/// L0 files a database may still have once its compactor has caught up.
const SETTLED_L0: usize = 4;

/// Waits until the compactor of the database at `path` has merged what a
/// bulk load flushed, down to [`SETTLED_L0`] L0 files; returns how long
/// that took. A load written as fast as the benchmark writes it leaves a
/// backlog one compactor takes minutes to merge, during which flushes wait
/// for room in L0; a job that grows its state over hours has none.
async fn settle(dbs: &Databases, path: &str) -> Result<f64> {
    let admin = AdminBuilder::new(path, Arc::clone(&dbs.store)).build();
    let started = Instant::now();
    loop {
        let manifest = admin
            .read_manifest(None)
            .await
            .map_err(|e| Error::internal(format!("reading the manifest of {path}: {e}")))?
            .ok_or_else(|| Error::not_found(format!("database {path}: no manifest")))?;
        if manifest.l0().len() <= SETTLED_L0 {
            return Ok(ms(started));
        }
        if started.elapsed() > std::time::Duration::from_secs(1800) {
            return Err(Error::internal(format!(
                "database {path}: {} L0 files after 30 minutes of compaction",
                manifest.l0().len()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// W2 on SlateDB: a load, six checkpoints with `updates` random updates
/// before each of the last five, and a restore of the last. Returns the
/// median time of those five checkpoints and the restore's.
async fn w2(keys: u64, updates: u64, object: Option<&ObjectTarget>, workload: &str) -> Result<(f64, f64)> {
    let dbs = Databases::new(object, "w2")?;
    let name = dbs.label;
    let options = dbs.options()?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let mut store = checkpoints(dir.path(), &options).await?;
    let b = Arc::new(SlateDbBackend::open(options.clone(), config(KeyGroupRange::all(128)?)).await?);
    let s = b.register(ValueStateDescriptor::<Vec<u8>>::new("w2"))?;
    let started = Instant::now();
    write(&b, &s, 0..keys, 0).await?;
    if workload == "W2" {
        emit(workload, name, "load", ms(started), "ms");
    }
    let mut rng = XorShift::new(42);
    let (mut last, mut handle, mut totals) = (0, None, Vec::new());
    let mut before = dbs.objects(b.path()).await?;
    for id in 1..=6u64 {
        if id > 1 {
            let round: Vec<u64> = (0..updates).map(|_| rng.next_u64() % keys).collect();
            last = round.last().copied().unwrap_or(0);
            write(&b, &s, round.into_iter(), id).await?;
        }
        let started = Instant::now();
        let (h, stats) = checkpoint(&b, &mut store, id).await?;
        let total = ms(started);
        let after = dbs.objects(b.path()).await?;
        let flushed: u64 = after
            .iter()
            .filter(|(p, size)| before.get(*p) != Some(size))
            .map(|(_, size)| size)
            .sum();
        before = after;
        if workload == "W2" {
            emit(
                workload,
                name,
                &format!("ckpt.{id}.sync_ms"),
                stats.sync_duration.as_secs_f64() * 1e3,
                "ms",
            );
            emit(
                workload,
                name,
                &format!("ckpt.{id}.async_ms"),
                stats.async_duration.as_secs_f64() * 1e3,
                "ms",
            );
            emit(
                workload,
                name,
                &format!("ckpt.{id}.bytes"),
                stats.bytes_written as f64,
                "bytes",
            );
            emit(
                workload,
                name,
                &format!("ckpt.{id}.slatedb_bytes"),
                flushed as f64,
                "bytes",
            );
        }
        handle = Some(h);
        if id > 1 {
            totals.push(total);
        } else {
            // The load is flushed: let the compactor catch up with it.
            let settled = settle(&dbs, b.path()).await?;
            emit(workload, name, &format!("keys.{keys}.settle_ms"), settled, "ms");
        }
    }
    // The median checkpoint after an update round.
    totals.sort_by(f64::total_cmp);
    let checkpoint_ms = totals.get(totals.len() / 2).copied().unwrap_or(0.0);
    let round_of_last = 6;
    let handle = handle.ok_or_else(|| Error::internal("no checkpoint"))?;
    let reader = latest_reader(&store).await?;
    let started = Instant::now();
    let r = Arc::new(
        SlateDbBackend::restore(
            options,
            config(KeyGroupRange::all(128)?),
            std::slice::from_ref(&handle),
            Some(reader),
        )
        .await?,
    );
    let s2 = r.register(ValueStateDescriptor::<Vec<u8>>::new("w2"))?;
    check(&r, &s2, last, round_of_last).await?;
    let restore_ms = ms(started);
    if workload == "W2" {
        emit(workload, name, "restore.remote_ms", restore_ms, "ms");
    }
    r.close().await?;
    b.close().await?;
    Ok((checkpoint_ms, restore_ms))
}

/// W3 on SlateDB: `from` backends loaded with `keys` keys, checkpointed,
/// then restored at each of `to` parallelisms (every new backend cloned from
/// the checkpoints of the old ones holding its key groups), each checked.
async fn w3(keys: u64, object: Option<&ObjectTarget>, from: u32, to: &[u32]) -> Result<()> {
    let dbs = Databases::new(object, &format!("w3-{from}"))?;
    let options = dbs.options()?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let mut store = checkpoints(dir.path(), &options).await?;
    let mut handles = Vec::new();
    let mut backends = Vec::new();
    for i in 0..from {
        let b =
            Arc::new(SlateDbBackend::open(options.clone(), config(KeyGroupRange::for_operator(128, from, i)?)).await?);
        let s = b.register(ValueStateDescriptor::<Vec<u8>>::new("w3"))?;
        write(&b, &s, 0..keys, 0).await?;
        backends.push(b);
    }
    // One checkpoint of every subtask, completed together.
    let location = store.begin_checkpoint(1).await?;
    for b in &backends {
        let result = b
            .snapshot(1, Arc::clone(&location), SnapshotOptions::checkpoint())
            .await?
            .await?;
        handles.push(result.handle);
    }
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "slatedb",
        from,
        128,
        handles.clone(),
    ));
    store.complete(&location, metadata).await?;
    for b in &backends {
        b.notify_checkpoint_complete(1).await?;
        // As in S1: restores once the compactor has merged the load.
        let settled = settle(&dbs, b.path()).await?;
        emit("W3", dbs.label, &format!("p{from}.settle_ms"), settled, "ms");
    }
    let reader = latest_reader(&store).await?;
    for &p in to {
        let mut slowest = 0f64;
        let mut sum = 0f64;
        for i in 0..p {
            let range = KeyGroupRange::for_operator(128, p, i)?;
            let started = Instant::now();
            let r = Arc::new(
                SlateDbBackend::restore(options.clone(), config(range), &handles, Some(Arc::clone(&reader))).await?,
            );
            let s = r.register(ValueStateDescriptor::<Vec<u8>>::new("w3"))?;
            let k = (0..keys)
                .find(|k| config(range).key_group_of(k).is_ok_and(|g| range.contains(g)))
                .unwrap_or(0);
            check(&r, &s, k, 0).await?;
            let t = ms(started);
            slowest = slowest.max(t);
            sum += t;
            r.close().await?;
        }
        emit("W3", dbs.label, &format!("{from}to{p}.slowest_ms"), slowest, "ms");
        emit("W3", dbs.label, &format!("{from}to{p}.sum_ms"), sum, "ms");
    }
    for b in backends {
        b.close().await?;
    }
    Ok(())
}

/// W2 on SlateDB.
pub fn run_w2(scale: usize, object: Option<&ObjectTarget>) -> Result<()> {
    let keys = 2_000_000 / scale as u64;
    runtime()?.block_on(async { w2(keys, keys / 100, object, "W2").await.map(drop) })
}

/// S1 on SlateDB: W2's last checkpoint and restore at 200k, 2M and 20M keys
/// (divided by `scale`), with the same 20,000 updates (W2's 1% of 2M)
/// before each checkpoint at every size: what grows is the state, not
/// what changed.
pub fn run_s1(scale: usize, object: Option<&ObjectTarget>) -> Result<()> {
    let label = if object.is_some() { "slatedb@s3" } else { "slatedb" };
    runtime()?.block_on(async {
        for keys in [200_000u64, 2_000_000, 20_000_000] {
            let keys = keys / scale as u64;
            let (checkpoint_ms, restore_ms) = w2(keys, 20_000 / scale as u64, object, "S1").await?;
            emit("S1", label, &format!("keys.{keys}.checkpoint_ms"), checkpoint_ms, "ms");
            emit("S1", label, &format!("keys.{keys}.restore_ms"), restore_ms, "ms");
        }
        Ok(())
    })
}

/// W3 on SlateDB: 2→3, 2→1 and 3→2 at `keys` keys.
pub fn run_w3(keys: u64, object: Option<&ObjectTarget>) -> Result<()> {
    runtime()?.block_on(async {
        w3(keys, object, 2, &[3, 1]).await?;
        w3(keys, object, 3, &[2]).await
    })
}

/// W1 on SlateDB: the six operations through the synchronous face, and
/// value.get / value.update through the executor with a warm cache and
/// with none, after the state is flushed to SST files.
pub fn run_w1(scale: usize, object: Option<&ObjectTarget>) -> Result<()> {
    let dbs = Databases::new(object, "w1")?;
    let factory = SlateDbBackendFactory::new(dbs.options()?)?;
    let sync_name = format!("{}-sync", dbs.label);
    crate::w1::backend(&sync_name, factory.build(config(KeyGroupRange::all(128)?))?, scale)?;
    drop(factory);
    let runtime = runtime()?;
    for (cached, suffix) in [(true, "async-warm"), (false, "async-cold")] {
        let options = if cached {
            dbs.options()?
        } else {
            dbs.options()?.without_cache()
        };
        let name = format!("{}-{suffix}", dbs.label);
        let (b, value) = runtime.block_on(async {
            let b = Arc::new(SlateDbBackend::open(options, config(KeyGroupRange::all(128)?)).await?);
            let value = b.register(ValueStateDescriptor::<u64>::new("w1-value"))?;
            let key_space = 500_000 / scale as u64;
            futures::stream::iter(0..key_space)
                .map(|k| {
                    let (b, value) = (&b, &value);
                    async move { RecordCtx::for_key(Arc::clone(b), &k)?.update(value, k).await }
                })
                .buffer_unordered(IN_FLIGHT)
                .try_collect::<()>()
                .await?;
            // Into SST files: reads go to the cache or the object store.
            b.db()
                .flush()
                .await
                .map_err(|e| Error::internal(format!("flushing: {e}")))?;
            Ok::<_, Error>((b, value))
        })?;
        crate::w1::measure_async(&name, Arc::clone(&b), &value, scale, &runtime)?;
        runtime.block_on(b.close())?;
    }
    Ok(())
}
