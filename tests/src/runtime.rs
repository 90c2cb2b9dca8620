//! The engine's runtime is never blocked: the async phases of snapshots and
//! restores do their file I/O, compression, database work and decoding on
//! blocking threads, so the tasks that share the runtime keep running.
//!
//! This is checked deterministically, not by the clock: the library's
//! futures are marked [`nonblocking`](flowstate_api::runtime::nonblocking)
//! and, in debug builds, every blocking file-system or RocksDB call made
//! while one is polled panics (see [`flowstate_api::runtime`]). Every
//! contract that snapshots or restores, on every backend and storage,
//! therefore fails on such a call, however idle or busy the machine. How
//! long a task of the runtime waits while they run is a figure of the W2
//! workload (`stall_ms`), not a test.

use std::future::IntoFuture;
use std::sync::Arc;

use flowstate_api::checkpoint::OperatorState;
use flowstate_api::*;

use crate::{full_config, BackendFactory, Ctx, OPERATOR};

/// A tenth of the keys of the W2 workload (see `BENCHMARKS.md`), each with a
/// 100-byte value.
const KEYS: u64 = 200_000;
/// Bytes per value.
const VALUE_BYTES: usize = 100;

/// The W2 value of `key`: 100 bytes of a xorshift sequence seeded by it.
fn value_of(key: u64) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(VALUE_BYTES);
    while v.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

/// Runs `task` as a task of the runtime, as an engine runs the library's
/// futures.
async fn spawned<T: Send + 'static>(task: impl std::future::Future<Output = T> + Send + 'static) -> T {
    tokio::spawn(task).await.unwrap()
}

/// The async phase of a full snapshot (a canonical savepoint), then that of
/// a checkpoint (incremental where the backend has them), then a restore of
/// each, run as tasks of a 2-worker runtime, as an engine runs them: in
/// debug builds any blocking call they make on the runtime's threads panics
/// (see the module documentation); the restored state is checked.
pub async fn snapshot_and_restore_never_block_the_runtime<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("stall"));
    let builder = Arc::new(ctx.backend);
    let mut b = builder.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        b.update(&v, value_of(k)).unwrap();
    }
    let mut pointers = Vec::new();
    let mut handles = Vec::new();
    for (id, options) in [(1, SnapshotOptions::savepoint()), (2, SnapshotOptions::checkpoint())] {
        let location = match options.kind {
            CheckpointKind::Savepoint => storage.init_savepoint(id, None).await.unwrap(),
            CheckpointKind::Checkpoint => storage.init_checkpoint(id).await.unwrap(),
        };
        let pending = b.snapshot(id, Arc::clone(&location), options).unwrap();
        let result = spawned(pending.into_future()).await.unwrap();
        if id == 1 {
            let size = result.handle.state_size();
            assert!(
                size >= KEYS * VALUE_BYTES as u64,
                "the savepoint holds {size} bytes, fewer than its values"
            );
        }
        let metadata = CheckpointMetadata::new(id, options.kind, 0).with_operator(OperatorState::new(
            OPERATOR,
            1,
            crate::MAX_PARALLELISM,
            vec![result.handle.clone()],
        ));
        pointers.push(location.write_metadata(&metadata).await.unwrap());
        handles.push(result.handle);
    }
    b.notify_checkpoint_complete(2).unwrap();
    drop(b);

    for (pointer, handle) in pointers.into_iter().zip(handles) {
        let reader = storage.resolve(&pointer).await.unwrap().reader;
        let builder2 = Arc::clone(&builder);
        let restored = spawned(async move {
            let handles = [handle];
            builder2.restore(full_config::<u64>(), &handles, reader).await
        })
        .await;
        let mut r = restored.unwrap_or_else(|e| panic!("restore of {pointer}: {e}"));
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in [0, KEYS / 2, KEYS - 1] {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&v).unwrap(), Some(value_of(k)), "key {k} after the restore");
        }
        assert_eq!(r.entry_count(&v).unwrap(), KEYS);
    }
}
