//! Canonical savepoints move between backends: heap → RocksDB and
//! RocksDB → heap, at another parallelism.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{FsStorageFactory, RocksDbFactory};
use flowstate_api::*;
use flowstate_conformance::{
    full_config, operator_config, operator_for_key, restore_from, snapshot_and_complete, BackendFactory, StorageFactory,
};
use flowstate_heap::HeapBackendBuilder;

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
    let storage = FsStorageFactory::new().storage("cross");
    let mut a = from.build(full_config::<u64>()).unwrap();
    let s = register(&mut a);
    for k in 0..KEYS {
        a.set_current_key(&k).unwrap();
        a.update(&s.v, k * 7).unwrap();
        a.append_all(&s.l, [k, k + 1]).unwrap();
        a.map_put(&s.m, (k % 5) as u32, format!("value-{k}")).unwrap();
    }
    let expected = dump(&mut a, &s, 0..KEYS);
    let (_, pointer) = snapshot_and_complete(&mut a, &*storage, 1, SnapshotOptions::savepoint()).await;
    let mut got = Dump::new();
    let ctx = flowstate_conformance::Ctx::new(to, FsStorageFactory::new());
    for index in 0..3 {
        let mut r = restore_from(&ctx, &*storage, operator_config::<u64>(3, index), &pointer)
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
    transfer(HeapBackendBuilder, RocksDbFactory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_savepoint_restores_into_heap() {
    transfer(RocksDbFactory::new(), HeapBackendBuilder).await;
}
