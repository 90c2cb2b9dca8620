//! W1: state access on a preloaded backend, single thread.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use flowstate_api::*;
use flowstate_heap::HeapBackend;

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

fn heap(scale: usize) -> Result<()> {
    let (mut inputs, key_space) = Inputs::new(scale);
    let mut b = HeapBackend::new(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128))?;
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
    emit("W1", "heap", "load", started.elapsed().as_secs_f64() * 1e3, "ms");

    let r = inputs.measure(|k, _, _| {
        b.set_current_key(&k)?;
        black_box(b.value(&value)?);
        Ok(())
    })?;
    emit("W1", "heap", "value.get", r, "ops/ms");
    let r = inputs.measure(|k, v, _| {
        b.set_current_key(&k)?;
        b.update(&value, v)
    })?;
    emit("W1", "heap", "value.update", r, "ops/ms");
    let r = inputs.measure(|k, v, _| {
        b.set_current_key(&k)?;
        b.append(&list, v)
    })?;
    emit("W1", "heap", "list.add", r, "ops/ms");
    let total: u64 = (0..key_space)
        .map(|k| {
            b.set_current_key(&k)?;
            Ok(b.list(&list)?.len() as u64)
        })
        .sum::<Result<u64>>()?;
    emit(
        "W1",
        "heap",
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
    emit("W1", "heap", "list.get", r, "ops/ms");
    let r = inputs.measure(|k, _, uk| {
        b.set_current_key(&k)?;
        black_box(b.map_get(&map, &uk)?);
        Ok(())
    })?;
    emit("W1", "heap", "map.get", r, "ops/ms");
    let r = inputs.measure(|k, v, uk| {
        b.set_current_key(&k)?;
        b.map_put(&map, uk, v)
    })?;
    emit("W1", "heap", "map.put", r, "ops/ms");
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

/// Runs W1 for every backend and limit.
pub fn run(scale: usize) -> Result<()> {
    heap(scale)?;
    raw_hashmap(scale)
}
