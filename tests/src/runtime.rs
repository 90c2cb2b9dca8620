//! The engine's runtime is never blocked: the async phases of snapshots and
//! restores do their file I/O, compression, database work and decoding on
//! blocking threads, so the tasks that share the runtime keep running.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_api::*;

use crate::{full_config, BackendFactory, Ctx, OPERATOR};

/// Keys of the W2 workload (see `BENCHMARKS.md`), each with a 100-byte value.
const KEYS: u64 = 2_000_000;
/// Bytes per value.
const VALUE_BYTES: usize = 100;
/// The longest a ticking task may wait beyond its period.
const MAX_STALL: Duration = Duration::from_millis(20);
/// The ticking task's period.
const TICK: Duration = Duration::from_millis(1);

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

/// A task on the runtime that wakes every [`TICK`] and records how much
/// later than asked it ran; [`Ticker::stop`] returns the worst delay.
struct Ticker {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Ticker {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while !flag.load(Ordering::Acquire) {
                let asked = Instant::now();
                tokio::time::sleep(TICK).await;
                // Tokio's timer has a resolution of 1 ms: a tick may be up
                // to one period late without anything blocking.
                worst = worst.max(asked.elapsed().saturating_sub(TICK * 2));
            }
            worst
        });
        Ticker { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap()
    }
}

/// While a W2-sized full snapshot (a canonical savepoint) and a checkpoint
/// (incremental where the backend has them) run their async phases, and
/// then while both are restored, a task ticking every millisecond on the
/// same 2-worker runtime is never delayed by more than 20 ms.
pub async fn runtime_never_stalls_during_snapshot_and_restore<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("stall"));
    let builder = Arc::new(ctx.backend);
    let mut b = builder.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        b.update(&v, value_of(k)).unwrap();
    }

    // The async phases run as tasks of the runtime, as an engine runs them.
    let ticker = Ticker::start();
    let started = Instant::now();
    let (sp_location, ck_location) = (
        storage.init_savepoint(1, None).await.unwrap(),
        storage.init_checkpoint(2).await.unwrap(),
    );
    let savepoint = b
        .snapshot(1, Arc::clone(&sp_location), SnapshotOptions::savepoint())
        .unwrap();
    let checkpoint = b
        .snapshot(2, Arc::clone(&ck_location), SnapshotOptions::checkpoint())
        .unwrap();
    let (savepoint, checkpoint) = (
        tokio::spawn(savepoint.into_future()),
        tokio::spawn(checkpoint.into_future()),
    );
    let (savepoint, checkpoint) = (savepoint.await.unwrap().unwrap(), checkpoint.await.unwrap().unwrap());
    let snapshot_stall = ticker.stop().await;
    let snapshot_time = started.elapsed();
    let size = savepoint.handle.state_size();
    assert!(
        size >= KEYS * VALUE_BYTES as u64,
        "the savepoint holds {size} bytes, fewer than its values"
    );
    let mut pointers = Vec::new();
    for (location, kind, result) in [
        (sp_location, CheckpointKind::Savepoint, &savepoint),
        (ck_location, CheckpointKind::Checkpoint, &checkpoint),
    ] {
        let metadata = CheckpointMetadata::new(location.checkpoint_id(), kind, 0).with_operator(OperatorState::new(
            OPERATOR,
            1,
            crate::MAX_PARALLELISM,
            vec![result.handle.clone()],
        ));
        pointers.push(location.write_metadata(&metadata).await.unwrap());
    }
    b.notify_checkpoint_complete(2).unwrap();
    drop(b);

    let mut restores = Vec::new();
    for (pointer, handle) in pointers.into_iter().zip([savepoint.handle, checkpoint.handle]) {
        restores.push((storage.resolve(&pointer).await.unwrap().reader, handle));
    }
    let ticker = Ticker::start();
    let started = Instant::now();
    let restores: Vec<_> = restores
        .into_iter()
        .map(|(reader, handle)| {
            let builder = Arc::clone(&builder);
            tokio::spawn(async move {
                let handles = [handle];
                builder.restore(full_config::<u64>(), &handles, reader).await
            })
        })
        .collect();
    let mut restored = Vec::new();
    for r in restores {
        restored.push(r.await.unwrap().unwrap());
    }
    let restore_stall = ticker.stop().await;
    let restore_time = started.elapsed();
    for mut r in restored {
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in [0, KEYS / 2, KEYS - 1] {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&v).unwrap(), Some(value_of(k)), "key {k} after the restore");
        }
        assert_eq!(r.entry_count(&v).unwrap(), KEYS);
    }
    eprintln!(
        "{}: worst stall {snapshot_stall:?} during the snapshots ({snapshot_time:?}), {restore_stall:?} during the restores ({restore_time:?})",
        builder.name()
    );
    assert!(
        snapshot_stall <= MAX_STALL,
        "a task of the runtime stalled {snapshot_stall:?} during the snapshots"
    );
    assert!(
        restore_stall <= MAX_STALL,
        "a task of the runtime stalled {restore_stall:?} during the restores"
    );
}
