//! The engine's runtime is never blocked: the async phases of snapshots and
//! restores do their file I/O, compression, database work and decoding on
//! blocking threads, so the tasks that share the runtime keep running.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_api::checkpoint::OperatorState;
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

/// Runs `task` on the runtime while a [`Ticker`] measures it; returns
/// its output and the worst delay.
async fn measured<T: Send + 'static>(task: impl std::future::Future<Output = T> + Send + 'static) -> (T, Duration) {
    let ticker = Ticker::start();
    let out = tokio::spawn(task).await.unwrap();
    (out, ticker.stop().await)
}

/// While the async phase of a W2-sized full snapshot (a canonical
/// savepoint) runs, then that of a checkpoint (incremental where the
/// backend has them), then a restore of each, a task ticking every
/// millisecond on the same 2-worker runtime is never delayed by more than
/// 20 ms. The phases and restores run as tasks of the runtime, as an
/// engine runs them.
pub async fn runtime_never_stalls_during_snapshot_and_restore<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("stall"));
    let builder = Arc::new(ctx.backend);
    let mut b = builder.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        b.update(&v, value_of(k)).unwrap();
    }
    let mut report = Vec::new();
    let mut pointers = Vec::new();
    let mut handles = Vec::new();
    for (id, options) in [(1, SnapshotOptions::savepoint()), (2, SnapshotOptions::checkpoint())] {
        let location = match options.kind {
            CheckpointKind::Savepoint => storage.init_savepoint(id, None).await.unwrap(),
            CheckpointKind::Checkpoint => storage.init_checkpoint(id).await.unwrap(),
        };
        let pending = b.snapshot(id, Arc::clone(&location), options).unwrap();
        let started = Instant::now();
        let (result, stall) = measured(pending.into_future()).await;
        let result = result.unwrap();
        report.push((format!("{:?} {id}", options.kind), stall, started.elapsed()));
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
        let started = Instant::now();
        let (restored, stall) = measured(async move {
            let handles = [handle];
            builder2.restore(full_config::<u64>(), &handles, reader).await
        })
        .await;
        report.push((format!("restore of {pointer}"), stall, started.elapsed()));
        let mut r = restored.unwrap();
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in [0, KEYS / 2, KEYS - 1] {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&v).unwrap(), Some(value_of(k)), "key {k} after the restore");
        }
        assert_eq!(r.entry_count(&v).unwrap(), KEYS);
    }
    for (what, stall, took) in &report {
        eprintln!("{}: worst stall {stall:?} during the {what} ({took:?})", builder.name());
    }
    for (what, stall, _) in report {
        assert!(
            stall <= MAX_STALL,
            "a task of the runtime stalled {stall:?} during the {what}"
        );
    }
}
