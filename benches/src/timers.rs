//! T1: timers. One event-time service holding 1M timers (random
//! timestamps over 1M ms, 100k keys, void namespace): the rate of
//! registering them all, then of firing them all as the watermark advances
//! a second at a time. Median of three runs, on each backend.

use std::time::Instant;

use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

use crate::{emit, XorShift};

const RUNS: usize = 3;

fn config() -> Result<KeyedBackendConfig<u64>> {
    Ok(KeyedBackendConfig::new(KeyGroupRange::all(128)?, 128))
}

/// Registers `timers`, then fires them; returns (register, fire) in ops/ms.
fn run_once<B: KeyedStateBackend<Key = u64>>(b: &mut B, timers: &[(u64, i64)]) -> Result<(f64, f64)> {
    let t = b.register(TimerServiceDescriptor::event_time("t"))?;
    let started = Instant::now();
    for &(key, ts) in timers {
        b.set_current_key(&key)?;
        t.register(b, ts, &VoidNamespace)?;
    }
    let register = timers.len() as f64 / started.elapsed().as_secs_f64() / 1e3;
    let last = timers.iter().map(|t| t.1).max().unwrap_or(0);
    let started = Instant::now();
    let mut fired = 0usize;
    let mut watermark = 0;
    while watermark <= last {
        watermark += 1_000;
        while t.poll(b, watermark)?.is_some() {
            fired += 1;
        }
    }
    let fire = fired as f64 / started.elapsed().as_secs_f64() / 1e3;
    if t.next_timestamp(b)?.is_some() {
        return Err(Error::internal("timers left after the last watermark"));
    }
    Ok((register, fire))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs T1 at `1M / scale` timers.
pub fn run(scale: usize) -> Result<()> {
    let n = 1_000_000 / scale;
    let mut rng = XorShift::new(7);
    let timers: Vec<(u64, i64)> = (0..n)
        .map(|_| (rng.next_u64() % 100_000, (rng.next_u64() % 1_000_000) as i64))
        .collect();
    for backend in ["heap", "rocksdb"] {
        let (mut reg, mut fire) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (r, f) = match backend {
                "heap" => run_once(&mut HeapBackend::new(config()?)?, &timers)?,
                _ => {
                    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
                    run_once(
                        &mut RocksDbBackend::new(config()?, RocksDbOptions::new(dir.path()))?,
                        &timers,
                    )?
                }
            };
            reg.push(r);
            fire.push(f);
        }
        emit("T1", backend, "timer_register", median(reg), "ops/ms");
        emit("T1", backend, "timer_fire", median(fire), "ops/ms");
    }
    Ok(())
}
