//! Criterion benchmarks of both backends: the six W1 operations, the
//! snapshot sync phase, checkpoints (full, or incremental on RocksDB) after
//! 1% of the keys changed, and restores, with the number of keys as a
//! parameter. `cargo bench -p flowstate-bench`; `cargo test --benches -p
//! flowstate-bench` runs each once.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowstate_api::checkpoint::{CheckpointLocation, OperatorState, StateReader};
use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

/// The key counts of the snapshot and restore benchmarks.
const SIZES: [u64; 2] = [10_000, 100_000];
/// The key count of the access benchmarks.
const ACCESS_KEYS: u64 = 100_000;

fn config() -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128)
}

fn rocks(dir: &Path, incremental: bool) -> RocksDbOptions {
    RocksDbOptions::new(dir.join("work"))
        .with_memory(64 << 20, 32 << 20)
        .with_incremental(incremental)
}

struct States {
    value: ValueState<u64>,
    list: ListState<u64>,
    map: MapState<u64, u64>,
}

/// Registers W1's three states and loads `keys` keys into each: a value,
/// a list of 10 elements and a map of 10 entries per key.
fn load<B: KeyedStateBackend<Key = u64>>(b: &mut B, keys: u64) -> States {
    let value = b.register(ValueStateDescriptor::<u64>::new("value")).unwrap();
    let list = b.register(ListStateDescriptor::<u64>::new("list")).unwrap();
    let map = b.register(MapStateDescriptor::<u64, u64>::new("map")).unwrap();
    for k in 0..keys {
        b.set_current_key(&k).unwrap();
        b.update(&value, k).unwrap();
        b.update_list(&list, (0..10).map(|j| k + j)).unwrap();
        b.map_put_all(&map, (0..10u64).map(|j| (j, k + j))).unwrap();
    }
    States { value, list, map }
}

/// The next key of a fixed stride through `0..keys`.
fn next(k: &mut u64, keys: u64) -> u64 {
    *k = (*k + 7919) % keys;
    *k
}

fn access<B: KeyedStateBackend<Key = u64>>(c: &mut Criterion, name: &str, mut b: B) {
    let s = load(&mut b, ACCESS_KEYS);
    b.compact().unwrap();
    let mut g = c.benchmark_group(format!("{name}/access"));
    g.throughput(Throughput::Elements(1));
    let mut k = 0u64;
    g.bench_function("value.get", |bench| {
        bench.iter(|| {
            b.set_current_key(&next(&mut k, ACCESS_KEYS)).unwrap();
            black_box(b.value(&s.value).unwrap())
        })
    });
    g.bench_function("value.update", |bench| {
        bench.iter(|| {
            let k = next(&mut k, ACCESS_KEYS);
            b.set_current_key(&k).unwrap();
            b.update(&s.value, k).unwrap()
        })
    });
    g.bench_function("list.get", |bench| {
        bench.iter(|| {
            b.set_current_key(&next(&mut k, ACCESS_KEYS)).unwrap();
            black_box(b.list(&s.list).unwrap())
        })
    });
    g.bench_function("list.add", |bench| {
        bench.iter(|| {
            let k = next(&mut k, ACCESS_KEYS);
            b.set_current_key(&k).unwrap();
            b.append(&s.list, k).unwrap()
        })
    });
    g.bench_function("map.get", |bench| {
        bench.iter(|| {
            let k = next(&mut k, ACCESS_KEYS);
            b.set_current_key(&k).unwrap();
            black_box(b.map_get(&s.map, &(k % 10)).unwrap())
        })
    });
    g.bench_function("map.put", |bench| {
        bench.iter(|| {
            let k = next(&mut k, ACCESS_KEYS);
            b.set_current_key(&k).unwrap();
            b.map_put(&s.map, k % 10, k).unwrap()
        })
    });
    g.finish();
}

fn access_heap(c: &mut Criterion) {
    access(c, "heap", HeapBackend::new(config()).unwrap());
}

fn access_rocksdb(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    access(
        c,
        "rocksdb",
        RocksDbBackend::new(config(), rocks(dir.path(), false)).unwrap(),
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Takes checkpoint `id` of `b` and tells the backend it completed; returns
/// the location and the handle.
fn checkpoint<B: KeyedStateBackend<Key = u64>>(
    rt: &tokio::runtime::Runtime,
    b: &mut B,
    storage: &CheckpointStorage,
    id: u64,
) -> (std::sync::Arc<CheckpointLocation>, KeyedStateHandle) {
    let location = rt.block_on(storage.init_checkpoint(id)).unwrap();
    let pending = b.snapshot(id, location.clone(), SnapshotOptions::checkpoint()).unwrap();
    let result = rt.block_on(std::future::IntoFuture::into_future(pending)).unwrap();
    b.notify_checkpoint_complete(id).unwrap();
    (location, result.handle)
}

/// Restoring a backend of each kind.
trait Restore: Sized {
    /// Restores from `handles`, in a working directory under `dir` where the
    /// backend needs one.
    fn restore_at(
        dir: &Path,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> impl std::future::Future<Output = Result<Self>>;
}

impl Restore for HeapBackend<u64> {
    async fn restore_at(_: &Path, handles: &[KeyedStateHandle], reader: &dyn StateReader) -> Result<Self> {
        HeapBackend::restore(config(), handles, reader).await
    }
}

impl Restore for RocksDbBackend<u64> {
    async fn restore_at(dir: &Path, handles: &[KeyedStateHandle], reader: &dyn StateReader) -> Result<Self> {
        RocksDbBackend::restore(config(), handles, reader, rocks(dir, false)).await
    }
}

/// Sync phase, checkpoint after 1% of the keys changed, and restore, at
/// every size of [`SIZES`], for the backend `make` builds in a directory.
fn snapshots<B, F>(c: &mut Criterion, name: &str, make: F)
where
    B: KeyedStateBackend<Key = u64> + Restore,
    F: Fn(&Path) -> B,
{
    let rt = runtime();
    let mut g = c.benchmark_group(format!("{name}/snapshot"));
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for keys in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "bench").unwrap();
        let mut b = make(dir.path());
        let s = load(&mut b, keys);
        g.throughput(Throughput::Elements(keys));
        let mut id = 0u64;
        g.bench_with_input(BenchmarkId::new("sync_phase", keys), &keys, |bench, _| {
            bench.iter_with_large_drop(|| {
                id += 1;
                let location = rt.block_on(storage.init_checkpoint(id)).unwrap();
                b.snapshot(id, location, SnapshotOptions::checkpoint()).unwrap()
            })
        });
        let mut k = 0u64;
        g.bench_with_input(
            BenchmarkId::new("checkpoint_after_1pct", keys),
            &keys,
            |bench, &keys| {
                bench.iter(|| {
                    for _ in 0..keys / 100 {
                        let k = next(&mut k, keys);
                        b.set_current_key(&k).unwrap();
                        b.update(&s.value, k + 1).unwrap();
                    }
                    id += 1;
                    black_box(checkpoint(&rt, &mut b, &storage, id))
                })
            },
        );
        id += 1;
        let (location, handle) = checkpoint(&rt, &mut b, &storage, id);
        let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
            "bench",
            1,
            128,
            vec![handle],
        ));
        let pointer = rt.block_on(location.write_metadata(&metadata)).unwrap();
        let resolved = rt.block_on(storage.resolve(&pointer)).unwrap();
        let handles = &resolved.metadata.operators[0].keyed;
        let mut n = 0u64;
        g.bench_with_input(BenchmarkId::new("restore", keys), &keys, |bench, _| {
            bench.iter_with_large_drop(|| {
                n += 1;
                let at = dir.path().join(format!("restore-{n}"));
                rt.block_on(B::restore_at(&at, handles, &*resolved.reader)).unwrap()
            })
        });
    }
    g.finish();
}

fn snapshots_heap(c: &mut Criterion) {
    snapshots(c, "heap", |_| HeapBackend::new(config()).unwrap());
}

fn snapshots_rocksdb_full(c: &mut Criterion) {
    snapshots(c, "rocksdb-full", |dir| {
        RocksDbBackend::new(config(), rocks(dir, false)).unwrap()
    });
}

fn snapshots_rocksdb_incremental(c: &mut Criterion) {
    snapshots(c, "rocksdb-incremental", |dir| {
        RocksDbBackend::new(config(), rocks(dir, true)).unwrap()
    });
}

criterion_group!(access_benches, access_heap, access_rocksdb);
criterion_group!(
    snapshot_benches,
    snapshots_heap,
    snapshots_rocksdb_full,
    snapshots_rocksdb_incremental
);
criterion_main!(access_benches, snapshot_benches);
