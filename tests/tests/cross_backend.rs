//! Canonical savepoints move between backends: heap → RocksDB and
//! RocksDB → heap, at another parallelism. Native RocksDB checkpoints do not
//! restore into the heap backend, with an error that says so.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{FsStorageFactory, RocksDbFactory};
use flowstate_api::*;
use flowstate_conformance::{
    full_config, operator_config, operator_for_key, restore_from, snapshot_and_complete, BackendFactory, StorageFactory,
};
use flowstate_heap::HeapBackendFactory;

const KEYS: u64 = 2_000;

type Dump = BTreeMap<u64, (Option<u64>, Vec<u64>, Vec<(u32, String)>)>;

struct States {
    v: ValueState<u64>,
    l: ListState<u64>,
    m: MapState<u32, String>,
}

fn register<B: KeyedStateBackend>(b: &mut B) -> States {
    States {
        v: b.register(ValueStateDescriptor::<u64>::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::<u64>::new("l")).unwrap(),
        m: b.register(MapStateDescriptor::<u32, String>::new("m")).unwrap(),
    }
}

fn dump<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &States, keys: impl Iterator<Item = u64>) -> Dump {
    let mut out = Dump::new();
    for k in keys {
        b.set_current_key(&k).unwrap();
        out.insert(
            k,
            (
                b.value(&s.v).unwrap(),
                b.list(&s.l).unwrap(),
                b.map_entries(&s.m).unwrap(),
            ),
        );
    }
    out
}

async fn transfer<A: BackendFactory, B: BackendFactory>(from: A, to: B) {
    let factory = FsStorageFactory::new();
    let storage = factory.storage("cross");
    let mut a = from.build(full_config::<u64>()).unwrap();
    let s = register(&mut a);
    for k in 0..KEYS {
        a.set_current_key(&k).unwrap();
        a.update(&s.v, k * 7).unwrap();
        a.append_all(&s.l, [k, k + 1]).unwrap();
        a.map_put(&s.m, (k % 5) as u32, format!("value-{k}")).unwrap();
    }
    let expected = dump(&mut a, &s, 0..KEYS);
    let (_, pointer) = snapshot_and_complete(&mut a, &storage, 1, SnapshotOptions::savepoint()).await;
    let mut got = Dump::new();
    let ctx = flowstate_conformance::Ctx::new(to, FsStorageFactory::new());
    for index in 0..3 {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(3, index), &pointer)
            .await
            .unwrap();
        let s = register(&mut r);
        let mine = (0..KEYS).filter(|k| operator_for_key(k, 3) == index);
        got.extend(dump(&mut r, &s, mine));
        assert_eq!(
            r.entry_count(&s.v).unwrap(),
            (0..KEYS).filter(|k| operator_for_key(k, 3) == index).count() as u64
        );
    }
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heap_savepoint_restores_into_rocksdb() {
    transfer(HeapBackendFactory::new(), RocksDbFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_savepoint_restores_into_heap() {
    transfer(RocksDbFactory::new(), HeapBackendFactory::new()).await;
}

/// A native RocksDB checkpoint (full or incremental) or native savepoint
/// restored into the heap backend is refused as `Incompatible`, naming
/// both and the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_rocksdb_snapshots_are_refused_by_heap() {
    for rocksdb in [RocksDbFactory::new(), RocksDbFactory::full()] {
        let storage = FsStorageFactory::new().storage("native-into-heap");
        let mut a = rocksdb.build(full_config::<u64>()).unwrap();
        let s = register(&mut a);
        a.set_current_key(&1).unwrap();
        a.update(&s.v, 7).unwrap();
        for (id, options) in [
            (1, SnapshotOptions::checkpoint()),
            (2, SnapshotOptions::native_savepoint()),
        ] {
            let (result, pointer) = snapshot_and_complete(&mut a, &storage, id, options).await;
            assert!(
                matches!(result.handle, KeyedStateHandle::Incremental(_)),
                "{}: {options:?} is native",
                rocksdb.name()
            );
            let ctx = flowstate_conformance::Ctx::new(HeapBackendFactory::new(), FsStorageFactory::new());
            let Err(e) = restore_from(&ctx, &storage, full_config::<u64>(), &pointer).await else {
                panic!("{}: a native snapshot restored into the heap backend", rocksdb.name());
            };
            assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
            let message = e.to_string();
            let native = format!("native RocksDB checkpoint {id}");
            for part in ["heap backend", native.as_str(), "flowstate savepoint convert"] {
                assert!(message.contains(part), "{part:?} missing: {message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_heap_savepoint_restores_into_rocksdb() {
    transfer(HeapBackendFactory::incremental(), RocksDbFactory::new()).await;
}

/// A heap chain checkpoint restored into RocksDB is refused as
/// `Incompatible`, naming it and the way out; converted to a canonical
/// snapshot (what `flowstate savepoint convert` does) it restores there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heap_chains_are_refused_by_rocksdb_until_converted() {
    let storage = FsStorageFactory::new().storage("chain-into-rocksdb");
    let mut a = HeapBackendFactory::incremental().build(full_config::<u64>()).unwrap();
    let s = register(&mut a);
    for k in 0..100 {
        a.set_current_key(&k).unwrap();
        a.update(&s.v, k).unwrap();
    }
    let (result, pointer) = snapshot_and_complete(&mut a, &storage, 1, SnapshotOptions::checkpoint()).await;
    let KeyedStateHandle::Incremental(chain) = &result.handle else {
        panic!("an incremental heap checkpoint is a chain")
    };
    let ctx = flowstate_conformance::Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    let Err(e) = restore_from(&ctx, &storage, full_config::<u64>(), &pointer).await else {
        panic!("a heap chain restored into RocksDB");
    };
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    for part in [
        "RocksDB backend",
        "native heap checkpoint 1",
        "flowstate savepoint convert",
    ] {
        assert!(e.to_string().contains(part), "{part:?} missing: {e}");
    }
    let resolved = storage.resolve(&pointer).await.unwrap();
    let location = storage.init_savepoint(2, None).await.unwrap();
    let canonical = flowstate_heap::chain_to_canonical(chain, &*resolved.reader, &location)
        .await
        .unwrap();
    let mut metadata = CheckpointMetadata::new(2, CheckpointKind::Savepoint, 0);
    metadata.operators.push(flowstate_api::checkpoint::OperatorState::new(
        flowstate_conformance::OPERATOR,
        1,
        128,
        vec![KeyedStateHandle::KeyGroups(canonical)],
    ));
    let converted = location.write_metadata(&metadata).await.unwrap();
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &converted)
        .await
        .unwrap();
    let s = register(&mut r);
    let s2 = register(&mut r);
    let sa = register(&mut a);
    let want = dump(&mut a, &sa, 0..100);
    assert_eq!(dump(&mut r, &s2, 0..100), want);
    assert_eq!(r.entry_count(&s.v).unwrap(), 100);
}

/// `n` timers `(timestamp, key, namespace)`, negative and equal timestamps
/// included.
fn timer_workload(n: u64) -> Vec<(i64, u64, u32)> {
    (0..n)
        .map(|i| (((i * 7919) % 1000) as i64 - 300, i % 500, (i % 3) as u32))
        .collect()
}

/// `timers` without duplicates, in firing order: by timestamp, key group,
/// key bytes and namespace bytes.
fn firing_order(timers: &[(i64, u64, u32)]) -> Vec<(i64, u64, u32)> {
    let bytes = |v: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        v(&mut out);
        out
    };
    let mut sorted: Vec<_> = timers
        .iter()
        .map(|&(ts, k, ns)| {
            let kb = bytes(&|o| Serializer::serialize(&Bincode::<u64>::new(), &k, o).unwrap());
            let nb = bytes(&|o| Serializer::serialize(&Bincode::<u32>::new(), &ns, o).unwrap());
            let kg = key_group_for_key_bytes(&kb, 128);
            ((ts, kg, kb, nb), (ts, k, ns))
        })
        .collect();
    sorted.sort();
    sorted.dedup();
    sorted.into_iter().map(|(_, t)| t).collect()
}

/// A canonical savepoint moves timers heap → RocksDB → heap; each hop fires
/// the timers in the same total order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_move_heap_rocksdb_heap() {
    let factory = FsStorageFactory::new();
    let storage = factory.storage("cross-timers");
    let desc = || TimerServiceDescriptor::event_time("t").in_namespace::<u32>();
    let timers = timer_workload(3_000);
    let mut heap = HeapBackendFactory::new().build(full_config::<u64>()).unwrap();
    let t = heap.register(desc()).unwrap();
    for &(ts, k, ns) in &timers {
        heap.set_current_key(&k).unwrap();
        t.register(&mut heap, ts, &ns).unwrap();
    }
    let (_, p1) = snapshot_and_complete(&mut heap, &storage, 1, SnapshotOptions::savepoint()).await;
    let rocks_ctx = flowstate_conformance::Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    let mut rocks = restore_from(&rocks_ctx, &storage, full_config::<u64>(), &p1)
        .await
        .unwrap();
    let (_, p2) = snapshot_and_complete(&mut rocks, &storage, 2, SnapshotOptions::savepoint()).await;
    let heap_ctx = flowstate_conformance::Ctx::new(HeapBackendFactory::new(), FsStorageFactory::new());
    let mut back = restore_from(&heap_ctx, &storage, full_config::<u64>(), &p2)
        .await
        .unwrap();
    let want = firing_order(&timers);
    let fire = |fired: Vec<Timer<u64, u32>>| {
        fired
            .into_iter()
            .map(|t| (t.timestamp, t.key, t.namespace))
            .collect::<Vec<_>>()
    };
    let t_rocks = rocks.register(desc()).unwrap();
    assert_eq!(
        fire(t_rocks.advance_watermark(&mut rocks, i64::MAX).unwrap()),
        want,
        "in RocksDB"
    );
    let t_back = back.register(desc()).unwrap();
    assert_eq!(
        fire(t_back.advance_watermark(&mut back, i64::MAX).unwrap()),
        want,
        "back in the heap"
    );
    assert_eq!(
        fire(t.advance_watermark(&mut heap, i64::MAX).unwrap()),
        want,
        "in the first heap"
    );
}
