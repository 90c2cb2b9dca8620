//! A workload run the same way against the SlateDB backend and the heap
//! backend behind `SyncAsAsync`, with what each record read, and a dump of
//! every key's state.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate_api::checkpoint::{InlineReader, KeyedStateHandle, StateReader};
use flowstate_api::ttl::{ManualClock, SharedClock};
use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_slatedb::{SlateDbBackend, SlateDbOptions};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

pub const MAX_PARALLELISM: u32 = 16;

pub fn config(range: KeyGroupRange, clock: &Arc<ManualClock>) -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(range, MAX_PARALLELISM).with_clock(clock.clone() as SharedClock)
}

pub fn all() -> KeyGroupRange {
    KeyGroupRange::all(MAX_PARALLELISM).unwrap()
}

/// The heap backend, asynchronously.
pub fn heap(range: KeyGroupRange, clock: &Arc<ManualClock>) -> Arc<SyncAsAsync<HeapBackend<u64>>> {
    Arc::new(SyncAsAsync::new(HeapBackend::new(config(range, clock)).unwrap()))
}

/// Where the tests' databases live in their stores.
pub const BASE: &str = "job/slatedb/op";

/// Options under [`BASE`] of `store`, with small L0 files: reads and list
/// merges span many flushed files.
pub fn options(store: &Arc<dyn ObjectStore>) -> SlateDbOptions {
    options_at(store, BASE)
}

fn options_at(store: &Arc<dyn ObjectStore>, base: &str) -> SlateDbOptions {
    SlateDbOptions::new(Arc::clone(store), base)
        .unwrap()
        .with_boundary_files(false)
        .with_l0_sst_size(4096)
}

/// The reader of the tests' handles, whose metadata is inline.
pub fn reader() -> Option<Arc<dyn StateReader>> {
    Some(Arc::new(InlineReader))
}

/// Checkpoint `id` of `backend`, completed and notified; its handle.
pub async fn checkpoint<B: AsyncKeyedStateBackend<Key = u64>>(backend: &B, id: u64) -> KeyedStateHandle {
    let storage = CheckpointStorage::in_memory("job");
    let location = storage.init_checkpoint(id).await.unwrap();
    let pending = backend
        .snapshot(id, location, SnapshotOptions::checkpoint())
        .await
        .unwrap();
    let result = pending.await.unwrap();
    backend.notify_checkpoint_complete(id).await.unwrap();
    result.handle
}

/// A SlateDB backend in `store` under `base`.
pub async fn slate(
    store: Arc<dyn ObjectStore>,
    base: &str,
    range: KeyGroupRange,
    clock: &Arc<ManualClock>,
) -> Arc<SlateDbBackend<u64>> {
    let options = options_at(&store, base);
    Arc::new(SlateDbBackend::open(options, config(range, clock)).await.unwrap())
}

/// The states of the workload.
pub struct States {
    pub v: ValueState<u64>,
    pub l: ListState<String>,
    pub m: MapState<u64, String>,
    pub r: ReducingState<u64>,
    pub ttl: ValueState<u64>,
    pub t: TimerService,
}

pub fn register<B: AsyncKeyedStateBackend<Key = u64>>(b: &B) -> States {
    States {
        v: b.register(ValueStateDescriptor::<u64>::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::<String>::new("l")).unwrap(),
        m: b.register(MapStateDescriptor::<u64, String>::new("m")).unwrap(),
        r: b.register(ReducingStateDescriptor::<u64>::new("r", |a, b| a + b))
            .unwrap(),
        ttl: b
            .register(
                ValueStateDescriptor::<u64>::new("ttl").with_ttl(StateTtlConfig::new(Duration::from_millis(1000))),
            )
            .unwrap(),
        t: b.register(TimerServiceDescriptor::event_time("t")).unwrap(),
    }
}

/// What each record read: `(key, record index) → text`.
pub type Log = Arc<Mutex<BTreeMap<(u64, usize), String>>>;

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs `records` records over keys `0..keys` (those of the backend's key
/// groups), drawn from `seed`: every 50 records the clock advances by
/// 300 ms (TTL 1 s) after a drain, every 100 the watermark advances and
/// due timers append to the list.
#[allow(clippy::too_many_arguments)]
pub async fn run<B: AsyncKeyedStateBackend<Key = u64> + 'static>(
    backend: &Arc<B>,
    s: &States,
    seed: u64,
    records: usize,
    keys: u64,
    clock: &ManualClock,
    log: &Log,
    watermark: &mut i64,
) {
    let config = KeyedBackendConfig::<u64>::new(all(), MAX_PARALLELISM);
    let range = backend.key_group_range();
    let mut x = seed | 1;
    let mut ex = KeyOrderedExecutor::new(Arc::clone(backend), 16).unwrap();
    for i in 0..records {
        let key = next(&mut x) % keys;
        if !range.contains(config.key_group_of(&key).unwrap()) {
            continue;
        }
        let op = next(&mut x) % 11;
        let arg = next(&mut x) % 1000;
        let log = Arc::clone(log);
        ex.submit(&key, move |ctx| async move {
            let out = match op {
                0 => {
                    let n = ctx.value(&s.v).await?.unwrap_or(0);
                    ctx.update(&s.v, n + arg % 7).await?;
                    format!("v {n}")
                }
                1 => {
                    ctx.append(&s.l, format!("e{arg}")).await?;
                    String::new()
                }
                2 => format!("l {:?}", ctx.list(&s.l).await?),
                3 => {
                    ctx.map_put(&s.m, &(arg % 5), format!("m{arg}")).await?;
                    String::new()
                }
                4 => {
                    ctx.map_remove(&s.m, &(arg % 5)).await?;
                    format!("contains {}", ctx.map_contains(&s.m, &(arg % 7)).await?)
                }
                5 => {
                    let mut e = ctx.map_entries(&s.m).await?;
                    e.sort();
                    format!("m {e:?} empty {}", ctx.map_is_empty(&s.m).await?)
                }
                6 => {
                    ctx.reduce(&s.r, arg % 100).await?;
                    format!("r {:?}", ctx.reduced(&s.r).await?)
                }
                7 => {
                    ctx.register_timer(&s.t, (arg % 900) as i64, &VoidNamespace).await?;
                    String::new()
                }
                8 => {
                    ctx.clear(&s.l).await?;
                    ctx.clear(&s.m).await?;
                    String::new()
                }
                9 => {
                    let before = ctx.value(&s.ttl).await?;
                    ctx.update(&s.ttl, arg).await?;
                    format!("ttl {before:?}")
                }
                _ => {
                    ctx.update_list(&s.l, [format!("u{arg}"), format!("w{arg}")]).await?;
                    ctx.delete_timer(&s.t, (arg % 900) as i64, &VoidNamespace).await?;
                    String::new()
                }
            };
            log.lock().unwrap().insert((key, i), out);
            Ok(())
        })
        .await
        .unwrap();
        if i % 50 == 49 {
            ex.drain().await.unwrap();
            clock.advance(300);
        }
        if i % 100 == 99 {
            *watermark += 60;
            ex.advance_watermark(&s.t, *watermark, |timer, ctx| async move {
                ctx.append(&s.l, format!("fired {}", timer.timestamp)).await
            })
            .await
            .unwrap();
        }
    }
    ex.drain().await.unwrap();
}

/// Every key's state, as text.
pub async fn dump<B: AsyncKeyedStateBackend<Key = u64> + 'static>(
    backend: &Arc<B>,
    s: &States,
    keys: u64,
) -> BTreeMap<u64, String> {
    let config = KeyedBackendConfig::<u64>::new(all(), MAX_PARALLELISM);
    let range = backend.key_group_range();
    let mut out = BTreeMap::new();
    for key in 0..keys {
        if !range.contains(config.key_group_of(&key).unwrap()) {
            continue;
        }
        let ctx = RecordCtx::for_key(Arc::clone(backend), &key).unwrap();
        let mut m = ctx.map_entries(&s.m).await.unwrap();
        m.sort();
        let text = format!(
            "v {:?} l {:?} m {m:?} r {:?} ttl {:?}",
            ctx.value(&s.v).await.unwrap(),
            ctx.list(&s.l).await.unwrap(),
            ctx.reduced(&s.r).await.unwrap(),
            ctx.value(&s.ttl).await.unwrap(),
        );
        out.insert(key, text);
    }
    out
}

/// Every timer still registered, fired: `(timestamp, key)` in order.
pub async fn timers<B: AsyncKeyedStateBackend<Key = u64> + 'static>(backend: &Arc<B>, s: &States) -> Vec<(i64, u64)> {
    let fired = Arc::new(Mutex::new(Vec::new()));
    let mut ex = KeyOrderedExecutor::new(Arc::clone(backend), 16).unwrap();
    ex.advance_watermark(&s.t, i64::MAX, |timer, _ctx| {
        let fired = Arc::clone(&fired);
        async move {
            fired.lock().unwrap().push((timer.timestamp, timer.key));
            Ok(())
        }
    })
    .await
    .unwrap();
    let mut out = fired.lock().unwrap().clone();
    out.sort();
    out
}

/// Every object under `prefix`: `(path, size)`.
pub async fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, u64> {
    store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap()
}

/// The S3-compatible server the test scripts start (`FLOWSTATE_S3_*`), in
/// a bucket of this process's own; `None` outside CI without one (CI
/// always has one: its absence there fails the test).
pub fn s3_server() -> Option<Arc<dyn ObjectStore>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("FLOWSTATE_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI runs the object-store tests against a real server: run them through scripts/test.sh"
        );
        eprintln!("no S3-compatible server (FLOWSTATE_S3_ENDPOINT): run through scripts/test.sh");
        return None;
    };
    // The file-backed server keeps a bucket as a directory of its root.
    let bucket = match var("FLOWSTATE_S3_ROOT") {
        Some(root) => {
            let name = format!("slatedb-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            std::fs::create_dir(std::path::Path::new(&root).join(&name)).unwrap();
            name
        }
        None => var("FLOWSTATE_S3_BUCKET").unwrap(),
    };
    let store = flowstate_object::ObjectStoreBuilder::new(format!("s3://{bucket}"))
        .without_env()
        .with_option("endpoint", endpoint)
        .with_option("access_key_id", var("FLOWSTATE_S3_ACCESS_KEY_ID").unwrap_or_default())
        .with_option(
            "secret_access_key",
            var("FLOWSTATE_S3_SECRET_ACCESS_KEY").unwrap_or_default(),
        )
        .with_option("region", "us-east-1")
        .with_option("allow_http", "true")
        .build()
        .unwrap();
    Some(Arc::clone(store.store()))
}
