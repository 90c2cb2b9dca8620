//! S1: how W2's snapshot and restore times grow with the state. At
//! 200,000, 2,000,000 and 20,000,000 keys × 100-byte values (2 GB of
//! values at the largest size), each backend loads the keys, takes one
//! checkpoint and restores from it. Figures are
//! `S1 <backend> <keys>.<what>`.

use std::sync::Arc;
use std::time::Instant;

use flowstate_api::checkpoint::OperatorState;
use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::RocksDbBackend;

use crate::w2::{config, descriptor, rocks_options, RocksMode};
use crate::{emit, XorShift};

/// The value of key `k`: 100 bytes drawn from a generator seeded by `k`, so
/// a restore is checked without holding the expected state in memory.
fn value_of(k: u64) -> Vec<u8> {
    let mut rng = XorShift::new(k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut v = Vec::with_capacity(104);
    for _ in 0..13 {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(100);
    v
}

fn load<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &ValueState<Vec<u8>>, keys: u64) -> Result<()> {
    for k in 0..keys {
        b.set_current_key(&k)?;
        b.update(s, value_of(k))?;
    }
    Ok(())
}

/// Checks 10,000 random keys and the last one.
fn check<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &ValueState<Vec<u8>>, keys: u64) -> Result<()> {
    let mut rng = XorShift::new(7);
    for k in (0..10_000).map(|_| rng.next_u64() % keys).chain([keys - 1]) {
        b.set_current_key(&k)?;
        if b.value(s)? != Some(value_of(k)) {
            return Err(Error::internal(format!("S1: restored key {k} of {keys} differs")));
        }
    }
    Ok(())
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// Takes checkpoint 1 of `b` into `store` and reports it; returns the
/// pointer to the completed checkpoint.
async fn checkpoint<B: KeyedStateBackend<Key = u64>>(
    b: &mut B,
    store: &mut CheckpointStore,
    name: &str,
    keys: u64,
) -> Result<String> {
    let location = store.begin_checkpoint(1).await?;
    let result = b
        .snapshot(1, Arc::clone(&location), SnapshotOptions::checkpoint())?
        .await?;
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "s1",
        1,
        128,
        vec![result.handle.clone()],
    ));
    let completed = store.complete(&location, metadata).await?;
    b.notify_checkpoint_complete(1)?;
    let st = &result.stats;
    let snapshot = (st.sync_duration + st.async_duration).as_secs_f64() * 1e3;
    emit(
        "S1",
        name,
        &format!("{keys}.sync_ms"),
        st.sync_duration.as_secs_f64() * 1e3,
        "ms",
    );
    emit("S1", name, &format!("{keys}.snapshot_ms"), snapshot, "ms");
    emit("S1", name, &format!("{keys}.bytes"), st.bytes_written as f64, "bytes");
    Ok(completed.pointer.clone())
}

async fn storage(dir: &std::path::Path) -> Result<(Arc<CheckpointStorage>, CheckpointStore)> {
    let storage: Arc<CheckpointStorage> = Arc::new(flowstate_fs::checkpoint_storage(dir.join("checkpoints"), "s1")?);
    let store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default()).await?;
    Ok((storage, store))
}

async fn heap(keys: u64) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let (storage, mut store) = storage(dir.path()).await?;
    let mut b = HeapBackend::new(config()?)?;
    let s = b.register(descriptor())?;
    let started = Instant::now();
    load(&mut b, &s, keys)?;
    emit("S1", "heap-full", &format!("{keys}.load_ms"), ms(started), "ms");
    let pointer = checkpoint(&mut b, &mut store, "heap-full", keys).await?;
    drop(b);
    let started = Instant::now();
    let resolved = storage.resolve(&pointer).await?;
    let mut r = HeapBackend::restore(config()?, &resolved.metadata.operators[0].keyed, &*resolved.reader).await?;
    emit("S1", "heap-full", &format!("{keys}.restore_ms"), ms(started), "ms");
    let s = r.register(descriptor())?;
    check(&mut r, &s, keys)
}

async fn rocksdb(keys: u64, mode: RocksMode) -> Result<()> {
    let name = match mode {
        RocksMode::Full => "rocksdb-full",
        RocksMode::Incremental => "rocksdb-incremental",
    };
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let (storage, mut store) = storage(dir.path()).await?;
    let mut b = RocksDbBackend::new(config()?, rocks_options(dir.path(), mode, true))?;
    let s = b.register(descriptor())?;
    let started = Instant::now();
    load(&mut b, &s, keys)?;
    emit("S1", name, &format!("{keys}.load_ms"), ms(started), "ms");
    let pointer = checkpoint(&mut b, &mut store, name, keys).await?;
    drop(b);
    let kinds: &[(&str, bool)] = match mode {
        RocksMode::Full => &[("restore_ms", false)],
        RocksMode::Incremental => &[("restore_ms", false), ("restore_local_ms", true)],
    };
    for &(metric, local) in kinds {
        let started = Instant::now();
        let resolved = storage.resolve(&pointer).await?;
        let mut r = RocksDbBackend::restore(
            config()?,
            &resolved.metadata.operators[0].keyed,
            &*resolved.reader,
            rocks_options(dir.path(), mode, local),
        )
        .await?;
        emit("S1", name, &format!("{keys}.{metric}"), ms(started), "ms");
        if (r.restore_stats().handles_from_local_copy > 0) != local {
            return Err(Error::internal(format!(
                "S1 {name}: local copy used: {:?}",
                r.restore_stats()
            )));
        }
        let s = r.register(descriptor())?;
        check(&mut r, &s, keys)?;
    }
    Ok(())
}

/// Runs S1 at 200k, 2M and 20M keys (`scale` divides them), on every
/// backend or only on `heap` or `rocksdb`.
pub fn run(scale: usize, only: Option<&str>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("runtime: {e}")))?;
    for keys in [200_000u64, 2_000_000, 20_000_000] {
        let keys = keys / scale as u64;
        if only.is_none_or(|o| o == "heap") {
            rt.block_on(heap(keys))?;
        }
        if only.is_none_or(|o| o == "rocksdb") {
            rt.block_on(rocksdb(keys, RocksMode::Full))?;
            rt.block_on(rocksdb(keys, RocksMode::Incremental))?;
        }
    }
    Ok(())
}
