//! W1: state access on a preloaded backend, single thread.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

use crate::{emit, XorShift};

const SLOTS: usize = 1 << 20;
const BATCH: usize = 1024;

struct Inputs {
    keys: Vec<u64>,
    values: Vec<u64>,
    user_keys: Vec<u64>,
    /// The running index, shared by every operation and never reset.
    i: usize,
    warmup: Duration,
    measure: Duration,
}

impl Inputs {
    fn new(scale: usize) -> (Self, u64) {
        let key_space = 500_000 / scale as u64;
        let slots = SLOTS / scale;
        let mut rng = XorShift::new(42);
        let keys: Vec<u64> = (0..slots).map(|_| rng.next_u64() % key_space).collect();
        let values: Vec<u64> = (0..slots).map(|_| rng.next_u64()).collect();
        let user_keys = values.iter().map(|v| v % 10).collect();
        let (warmup, measure) = if scale > 1 {
            (Duration::from_millis(200), Duration::from_millis(500))
        } else {
            (Duration::from_secs(1), Duration::from_secs(2))
        };
        let inputs = Inputs {
            keys,
            values,
            user_keys,
            i: 0,
            warmup,
            measure,
        };
        (inputs, key_space)
    }

    /// Runs `op` for the warm-up, then whole batches until the measuring time
    /// has passed; returns ops per millisecond.
    fn measure(&mut self, mut op: impl FnMut(u64, u64, u64) -> Result<()>) -> Result<f64> {
        let n = self.keys.len();
        let mut run_for = |d: Duration, i: &mut usize| -> Result<(u64, Duration)> {
            let start = Instant::now();
            let mut ops = 0u64;
            while start.elapsed() < d {
                for _ in 0..BATCH {
                    let s = *i % n;
                    op(self.keys[s], self.values[s], self.user_keys[s])?;
                    *i += 1;
                }
                ops += BATCH as u64;
            }
            Ok((ops, start.elapsed()))
        };
        let mut i = self.i;
        run_for(self.warmup, &mut i)?;
        let (ops, elapsed) = run_for(self.measure, &mut i)?;
        self.i = i;
        Ok(ops as f64 / (elapsed.as_secs_f64() * 1e3))
    }
}

/// The RocksDB options of W1: 512 MiB of memory as in BENCHMARKS.md, a
/// shared block cache and a memtable budget.
fn rocks_options(dir: &std::path::Path) -> RocksDbOptions {
    RocksDbOptions::new(dir).with_memory(384 << 20, 128 << 20)
}

/// Preloads and measures the six W1 operations on backend `b`, named `name`.
pub(crate) fn backend<B: KeyedStateBackend<Key = u64>>(name: &str, mut b: B, scale: usize) -> Result<()> {
    let (mut inputs, key_space) = Inputs::new(scale);
    let value = b.register(ValueStateDescriptor::<u64>::new("w1-value"))?;
    let list = b.register(ListStateDescriptor::<u64>::new("w1-list"))?;
    let map = b.register(MapStateDescriptor::<u64, u64>::new("w1-map"))?;
    let started = Instant::now();
    for k in 0..key_space {
        b.set_current_key(&k)?;
        b.update(&value, k)?;
        b.update_list(&list, (0..10).map(|j| k + j))?;
        b.map_put_all(&map, (0..10u64).map(|j| (j, k + j)))?;
    }
    emit("W1", name, "load", started.elapsed().as_secs_f64() * 1e3, "ms");
    // Flushed and fully compacted, as BENCHMARKS.md asks (nothing to do on
    // the heap); not part of the load, as in Flink's harness.
    let started = Instant::now();
    b.compact()?;
    emit("W1", name, "compact", started.elapsed().as_secs_f64() * 1e3, "ms");

    let r = inputs.measure(|k, _, _| {
        b.set_current_key(&k)?;
        black_box(b.value(&value)?);
        Ok(())
    })?;
    emit("W1", name, "value.get", r, "ops/ms");
    let r = inputs.measure(|k, v, _| {
        b.set_current_key(&k)?;
        b.update(&value, v)
    })?;
    emit("W1", name, "value.update", r, "ops/ms");
    let r = inputs.measure(|k, v, _| {
        b.set_current_key(&k)?;
        b.append(&list, v)
    })?;
    emit("W1", name, "list.add", r, "ops/ms");
    let total: u64 = (0..key_space)
        .map(|k| {
            b.set_current_key(&k)?;
            Ok(b.list(&list)?.len() as u64)
        })
        .sum::<Result<u64>>()?;
    emit(
        "W1",
        name,
        "list.get.avg_len",
        total as f64 / key_space as f64,
        "elements",
    );
    let r = inputs.measure(|k, _, _| {
        b.set_current_key(&k)?;
        for e in b.list(&list)? {
            black_box(e);
        }
        Ok(())
    })?;
    emit("W1", name, "list.get", r, "ops/ms");
    let r = inputs.measure(|k, _, uk| {
        b.set_current_key(&k)?;
        black_box(b.map_get(&map, &uk)?);
        Ok(())
    })?;
    emit("W1", name, "map.get", r, "ops/ms");
    let r = inputs.measure(|k, v, uk| {
        b.set_current_key(&k)?;
        b.map_put(&map, uk, v)
    })?;
    emit("W1", name, "map.put", r, "ops/ms");
    Ok(())
}

/// value.get and value.update as records of a [`KeyOrderedExecutor`] over
/// `b` behind [`SyncAsAsync`]: the asynchronous face's cost over the
/// synchronous one (each batch of records is drained before the next).
fn through_executor<B: KeyedStateBackend<Key = u64> + 'static>(name: &str, mut b: B, scale: usize) -> Result<()> {
    use std::sync::Arc;
    let (_, key_space) = Inputs::new(scale);
    let value = b.register(ValueStateDescriptor::<u64>::new("w1-value"))?;
    for k in 0..key_space {
        b.set_current_key(&k)?;
        b.update(&value, k)?;
    }
    b.compact()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::io("a runtime", e))?;
    measure_async(name, Arc::new(SyncAsAsync::new(b)), &value, scale, &runtime)
}

/// value.get and value.update as records of a [`KeyOrderedExecutor`] over
/// `backend`, preloaded with W1's keys in `value`, on `runtime`.
pub(crate) fn measure_async<A: AsyncKeyedStateBackend<Key = u64> + 'static>(
    name: &str,
    backend: std::sync::Arc<A>,
    value: &ValueState<u64>,
    scale: usize,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    let (mut inputs, _) = Inputs::new(scale);
    runtime.block_on(async {
        let mut executor = KeyOrderedExecutor::new(backend, KeyOrderedExecutor::<A>::DEFAULT_MAX_IN_FLIGHT)?;
        for (metric, update) in [("value.get", false), ("value.update", true)] {
            let mut i = inputs.i;
            run_records(&mut executor, &inputs, &mut i, inputs.warmup, update, value).await?;
            let (ops, elapsed) = run_records(&mut executor, &inputs, &mut i, inputs.measure, update, value).await?;
            inputs.i = i;
            emit("W1", name, metric, ops as f64 / (elapsed.as_secs_f64() * 1e3), "ops/ms");
        }
        Ok(())
    })
}

/// Submits records of `value.get` (or `value.update`) in batches, each
/// drained, until `d` has passed; returns the records and the time.
async fn run_records<'a, A: AsyncKeyedStateBackend<Key = u64> + 'static>(
    executor: &mut KeyOrderedExecutor<'a, A>,
    inputs: &Inputs,
    i: &mut usize,
    d: Duration,
    update: bool,
    value: &'a ValueState<u64>,
) -> Result<(u64, Duration)> {
    let n = inputs.keys.len();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < d {
        for _ in 0..BATCH {
            let s = *i % n;
            let (k, v) = (inputs.keys[s], inputs.values[s]);
            if update {
                executor
                    .submit(&k, move |ctx| async move { ctx.update(value, v).await })
                    .await?;
            } else {
                executor
                    .submit(&k, move |ctx| async move {
                        black_box(ctx.value(value).await?);
                        Ok(())
                    })
                    .await?;
            }
            *i += 1;
        }
        executor.drain().await?;
        ops += BATCH as u64;
    }
    Ok((ops, start.elapsed()))
}

fn config() -> Result<KeyedBackendConfig<u64>> {
    Ok(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128))
}

fn heap(scale: usize) -> Result<()> {
    backend("heap", HeapBackend::new(config()?)?, scale)
}

fn rocksdb(scale: usize) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    backend(
        "rocksdb",
        RocksDbBackend::new(config()?, rocks_options(dir.path()))?,
        scale,
    )
}

/// The bytes the RocksDB backend stores for value state `k`'s key: key
/// group, `varint(len) | key`, the empty namespace.
fn rocks_key(k: u64, out: &mut Vec<u8>) -> Result<()> {
    let mut key = Vec::new();
    Bincode::<u64>::new().serialize(&k, &mut key)?;
    let kg = key_group_for_key_bytes(&key, 128) as u16;
    out.clear();
    out.extend_from_slice(&kg.to_be_bytes());
    out.push(key.len() as u8);
    out.extend_from_slice(&key);
    out.push(0);
    Ok(())
}

/// Raw rust-rocksdb get/put of the bytes the backend's value state stores,
/// with the backend's options.
fn raw_rocksdb(scale: usize) -> Result<()> {
    use flowstate_rocksdb::tuning::rocksdb::{ColumnFamilyDescriptor, WriteOptions, DB};
    let (mut inputs, key_space) = Inputs::new(scale);
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let (db_options, cf_options) = flowstate_rocksdb::tuning::raw_options(&rocks_options(dir.path()));
    let err = |e: flowstate_rocksdb::tuning::rocksdb::Error| Error::internal(format!("raw RocksDB: {e}"));
    let db = DB::open_cf_descriptors(
        &db_options,
        dir.path().join("raw"),
        [ColumnFamilyDescriptor::new("v", cf_options)],
    )
    .map_err(err)?;
    let cf = db.cf_handle("v").ok_or_else(|| Error::internal("no column family"))?;
    let mut write = WriteOptions::default();
    write.disable_wal(true);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for key in 0..key_space {
        rocks_key(key, &mut k)?;
        v.clear();
        Bincode::<u64>::new().serialize(&key, &mut v)?;
        db.put_cf_opt(cf, &k, &v, &write).map_err(err)?;
    }
    db.compact_range_cf::<&[u8], &[u8]>(cf, None, None);
    let r = inputs.measure(|key, _, _| {
        rocks_key(key, &mut k)?;
        black_box(db.get_pinned_cf(cf, &k).map_err(err)?);
        Ok(())
    })?;
    emit("W1", "raw-rocksdb", "value.get", r, "ops/ms");
    let r = inputs.measure(|key, value, _| {
        rocks_key(key, &mut k)?;
        v.clear();
        Bincode::<u64>::new().serialize(&value, &mut v)?;
        db.put_cf_opt(cf, &k, &v, &write).map_err(err)
    })?;
    emit("W1", "raw-rocksdb", "value.update", r, "ops/ms");
    Ok(())
}

fn raw_hashmap(scale: usize) -> Result<()> {
    let (mut inputs, key_space) = Inputs::new(scale);
    let mut m: HashMap<u64, u64> = (0..key_space).map(|k| (k, k)).collect();
    let r = inputs.measure(|k, _, _| {
        black_box(m.get(&k));
        Ok(())
    })?;
    emit("W1", "raw-hashmap", "value.get", r, "ops/ms");
    let r = inputs.measure(|k, v, _| {
        m.insert(k, v);
        Ok(())
    })?;
    emit("W1", "raw-hashmap", "value.update", r, "ops/ms");
    Ok(())
}

/// Runs W1 for every backend and limit, and the value operations of each
/// backend through the asynchronous face (`heap-async`, `rocksdb-async`).
/// `only`: `heap` or `rocksdb` runs that backend and its limit alone.
pub fn run(scale: usize, only: Option<&str>) -> Result<()> {
    if only.is_none_or(|o| o == "heap") {
        heap(scale)?;
        raw_hashmap(scale)?;
        through_executor("heap-async", HeapBackend::new(config()?)?, scale)?;
    }
    if only.is_none_or(|o| o == "rocksdb") {
        rocksdb(scale)?;
        raw_rocksdb(scale)?;
        let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
        let b = RocksDbBackend::new(config()?, rocks_options(dir.path()))?;
        through_executor("rocksdb-async", b, scale)?;
    }
    Ok(())
}
