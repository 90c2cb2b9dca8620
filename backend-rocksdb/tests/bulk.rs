//! Bulk loads: writes in any order, collected, sorted into SST files and
//! ingested, read back exactly as the same writes made one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flowstate_api::ttl::ManualClock;
use flowstate_api::*;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

struct States {
    v: ValueState<Vec<u8>>,
    l: ListState<u64>,
    m: MapState<u32, String>,
    ttl: ValueState<u64>,
}

fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> States {
    States {
        v: b.register(ValueStateDescriptor::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::new("l")).unwrap(),
        m: b.register(MapStateDescriptor::new("m")).unwrap(),
        ttl: b
            .register(
                ValueStateDescriptor::new("ttl").with_ttl(StateTtlConfig::new(std::time::Duration::from_secs(10))),
            )
            .unwrap(),
    }
}

fn backend(dir: &std::path::Path, clock: &Arc<ManualClock>) -> RocksDbBackend<u64> {
    let config = KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128)
        .with_clock(clock.clone() as flowstate_api::ttl::SharedClock);
    RocksDbBackend::new(config, RocksDbOptions::new(dir)).unwrap()
}

/// A pseudo-random sequence of writes over 3,000 keys, each key written
/// several times (puts over puts, appends after replacements).
fn writes<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &States, clock: &ManualClock) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = x % 3_000;
        b.set_current_key(&k).unwrap();
        match x % 7 {
            0 | 1 => b.update(&s.v, vec![(i % 251) as u8; (x % 90) as usize]).unwrap(),
            2 => b.append(&s.l, i).unwrap(),
            3 => b.update_list(&s.l, [i, k]).unwrap(),
            4 => b.map_put(&s.m, (x % 5) as u32, format!("{i}")).unwrap(),
            5 => b.append_all(&s.l, [k, i, x]).unwrap(),
            _ => {
                clock.advance(1);
                b.update(&s.ttl, i).unwrap();
            }
        }
    }
}

fn assert_same(a: &mut RocksDbBackend<u64>, b: &mut RocksDbBackend<u64>) {
    let (sa, sb) = (register(a), register(b));
    for k in 0..3_000u64 {
        a.set_current_key(&k).unwrap();
        b.set_current_key(&k).unwrap();
        assert_eq!(a.value(&sa.v).unwrap(), b.value(&sb.v).unwrap(), "value of key {k}");
        assert_eq!(a.list(&sa.l).unwrap(), b.list(&sb.l).unwrap(), "list of key {k}");
        assert_eq!(
            a.map_entries(&sa.m).unwrap(),
            b.map_entries(&sb.m).unwrap(),
            "map of key {k}"
        );
        assert_eq!(
            a.value(&sa.ttl).unwrap(),
            b.value(&sb.ttl).unwrap(),
            "TTL value of key {k}"
        );
    }
    for (x, y) in [
        (a.entry_count(&sa.v), b.entry_count(&sb.v)),
        (a.entry_count(&sa.l), b.entry_count(&sb.l)),
    ] {
        assert_eq!(x.unwrap(), y.unwrap());
    }
}

#[test]
fn a_bulk_load_reads_back_as_the_same_writes_made_one_by_one() {
    for spill in [usize::MAX, 64 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let (clock_a, clock_b) = (ManualClock::new(1_000), ManualClock::new(1_000));
        let mut one_by_one = backend(&dir.path().join("a"), &clock_a);
        let s = register(&mut one_by_one);
        writes(&mut one_by_one, &s, &clock_a);

        let mut bulk = backend(&dir.path().join("b"), &clock_b);
        let mut load = bulk.bulk_load().with_spill_bytes(spill);
        let s = register(&mut load);
        writes(&mut load, &s, &clock_b);
        let stats = load.finish().unwrap();
        if spill == usize::MAX {
            assert_eq!(stats.files, 4, "one SST file per state");
        } else {
            assert!(stats.files > 8, "spilled every 64 KiB: {stats:?}");
        }
        assert_same(&mut one_by_one, &mut bulk);
        // Expired as the one written one by one.
        clock_a.advance(10_000);
        clock_b.advance(10_000);
        assert_same(&mut one_by_one, &mut bulk);
    }
}

#[test]
fn reads_deletes_timers_and_snapshots_are_refused_during_a_bulk_load() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut b = backend(dir.path(), &clock);
    let mut load = b.bulk_load();
    let s = register(&mut load);
    load.set_current_key(&1).unwrap();
    load.update(&s.v, vec![1]).unwrap();
    let refused = [
        load.value(&s.v).map(|_| ()),
        load.list(&s.l).map(|_| ()),
        load.map_get(&s.m, &1).map(|_| ()),
        load.clear(&s.v),
        load.map_remove(&s.m, &1),
        load.update_list(&s.l, Vec::<u64>::new()),
        load.entry_count(&s.v).map(|_| ()),
    ];
    for (i, r) in refused.into_iter().enumerate() {
        let e = r.expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Invalid, "{i}: {e}");
        assert!(e.to_string().contains("bulk load"), "{i}: {e}");
    }
    let storage = Arc::new(CheckpointStorage::in_memory("job"));
    let location = futures::executor::block_on(storage.init_checkpoint(1)).unwrap();
    let e = load
        .snapshot(1, location, SnapshotOptions::checkpoint())
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Invalid);
    load.finish().unwrap();
    b.set_current_key(&1).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    assert_eq!(
        b.value(&v).unwrap(),
        Some(vec![1]),
        "what was loaded before the refusals"
    );
}
