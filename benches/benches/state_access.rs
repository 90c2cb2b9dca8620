//! Criterion micro-benchmarks of heap state access and snapshot sync phase.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flowstate_api::*;
use flowstate_heap::HeapBackend;

const KEYS: u64 = 100_000;

fn backend() -> (HeapBackend<u64>, ValueState<u64>) {
    let mut b = HeapBackend::new(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128)).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
    }
    (b, v)
}

fn state_access(c: &mut Criterion) {
    let (mut b, v) = backend();
    let mut k = 0u64;
    c.bench_function("heap/value.get", |bench| {
        bench.iter(|| {
            k = (k + 7919) % KEYS;
            b.set_current_key(&k).unwrap();
            black_box(b.value(&v).unwrap())
        })
    });
    c.bench_function("heap/value.update", |bench| {
        bench.iter(|| {
            k = (k + 7919) % KEYS;
            b.set_current_key(&k).unwrap();
            b.update(&v, k).unwrap()
        })
    });
    let storage = MemoryCheckpointStorage::new("bench").with_max_state_size(usize::MAX);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let location = rt.block_on(storage.init_checkpoint(1)).unwrap();
    c.bench_function("heap/snapshot.sync_phase/100k", |bench| {
        bench.iter(|| black_box(b.snapshot(1, location.clone(), SnapshotOptions::checkpoint()).unwrap()))
    });
}

criterion_group!(benches, state_access);
criterion_main!(benches);
