//! Rescaled restores clone several checkpoints at once, each projected to
//! the new key groups: every key and timer is restored exactly once, and
//! nothing outside the new key groups is visible, even to a raw scan.
//! Damaged or foreign handles are clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use flowstate_api::checkpoint::{KeyGroupsStateHandle, KeyedStateHandle, NativeFormat, StreamStateHandle};
use flowstate_api::ttl::ManualClock;
use flowstate_api::*;
use flowstate_slatedb::SlateDbBackend;
use object_store::memory::InMemory;
use object_store::ObjectStore;

const KEYS: u64 = 60;

fn range(start: u32, end: u32) -> KeyGroupRange {
    KeyGroupRange::new(start, end).unwrap()
}

/// Every SlateDB key of `backend`'s database lies in its key groups.
async fn only_own_key_groups(backend: &SlateDbBackend<u64>) -> usize {
    let range = backend.config_range();
    let mut it = backend.db().scan(..).await.unwrap();
    let mut n = 0;
    while let Some(kv) = it.next().await.unwrap() {
        let kg = u32::from(u16::from_be_bytes([kv.key[0], kv.key[1]]));
        assert!(
            range.contains(kg),
            "key of key group {kg} visible in a backend of {range}"
        );
        n += 1;
    }
    n
}

trait Range {
    fn config_range(&self) -> KeyGroupRange;
}

impl Range for SlateDbBackend<u64> {
    fn config_range(&self) -> KeyGroupRange {
        AsyncKeyedStateBackend::key_group_range(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaled_restores_hold_every_key_once_and_nothing_else() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(10_000);
    // Parallelism 2: key groups 0..8 and 8..16.
    let mut handles = Vec::new();
    let mut expected = BTreeMap::new();
    let mut sources = Vec::new();
    for (i, r) in [range(0, 8), range(8, 16)].into_iter().enumerate() {
        let b = slate(Arc::clone(&store), BASE, r, &clock).await;
        let s = register(&*b);
        let (log, mut wm) = (Log::default(), 0);
        run(&b, &s, 31 + i as u64, 500, KEYS, &clock, &log, &mut wm).await;
        handles.push(checkpoint(&*b, 1).await);
        sources.push((b, s));
    }
    // At one time (the clock is shared, and TTL depends on it).
    for (b, s) in &sources {
        expected.extend(dump(b, s, KEYS).await);
    }
    assert!(expected.len() > 40, "{}", expected.len());

    // Parallelism 1 (union of both) and 3 (uneven: the middle one from both).
    for ranges in [vec![range(0, 16)], vec![range(0, 5), range(5, 11), range(11, 16)]] {
        let mut restored = BTreeMap::new();
        let mut fired = Vec::new();
        let mut raw = 0;
        for r in ranges {
            let b = Arc::new(
                SlateDbBackend::restore(options(&store), config(r, &clock), &handles, reader())
                    .await
                    .unwrap(),
            );
            let s = register(&*b);
            let part = dump(&b, &s, KEYS).await;
            assert!(part.keys().all(|k| !restored.contains_key(k)));
            restored.extend(part);
            raw += only_own_key_groups(&b).await;
            fired.extend(timers(&b, &s).await);
            b.close().await.unwrap();
        }
        assert_eq!(restored, expected);
        assert!(raw > 0);
        fired.sort();
        let mut expected_fired = Vec::new();
        for (b, s) in &sources {
            // Fired on a plain restore of each source, so the sources stay as they are.
            let copy = Arc::new(
                SlateDbBackend::restore(options(&store), config(b.config_range(), &clock), &handles, reader())
                    .await
                    .unwrap(),
            );
            let sc = register(&*copy);
            let _ = s;
            expected_fired.extend(timers(&copy, &sc).await);
            copy.close().await.unwrap();
        }
        expected_fired.sort();
        assert!(!expected_fired.is_empty());
        assert_eq!(fired, expected_fired);
    }
    for (b, _) in sources {
        b.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_foreign_handles_are_clear_errors() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(10_000);
    let b = slate(Arc::clone(&store), BASE, all(), &clock).await;
    let s = register(&*b);
    let (log, mut wm) = (Log::default(), 0);
    run(&b, &s, 41, 100, KEYS, &clock, &log, &mut wm).await;
    let good = checkpoint(&*b, 1).await;
    let KeyedStateHandle::Incremental(h) = &good else {
        panic!()
    };
    let restore = |handles: Vec<KeyedStateHandle>| {
        let store = Arc::clone(&store);
        let clock = Arc::clone(&clock);
        async move {
            SlateDbBackend::restore(options(&store), config(all(), &clock), &handles, reader())
                .await
                .map(|_| ())
                .unwrap_err()
        }
    };

    let mut garbage = h.clone();
    garbage.meta = StreamStateHandle::Inline(Bytes::from_static(b"not metadata"));
    let e = restore(vec![KeyedStateHandle::Incremental(garbage)]).await;
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
    assert!(e.to_string().contains("SlateDB handle of key groups"), "{e}");

    let mut truncated = h.clone();
    let StreamStateHandle::Inline(meta) = &h.meta else {
        panic!()
    };
    truncated.meta = StreamStateHandle::Inline(meta.slice(..meta.len() - 5));
    let e = restore(vec![KeyedStateHandle::Incremental(truncated)]).await;
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");

    let mut rocks = h.clone();
    rocks.format = NativeFormat::RocksDb;
    let e = restore(vec![KeyedStateHandle::Incremental(rocks)]).await;
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");

    let canonical = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: all(),
        offsets: Vec::new(),
        stream: StreamStateHandle::Inline(Bytes::from_static(b"x")),
    });
    // A canonical snapshot is read (savepoints restore into this backend):
    // these bytes are not one.
    let e = restore(vec![canonical]).await;
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");

    // A database that does not exist.
    let empty: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let e = SlateDbBackend::<u64>::restore(
        options(&empty),
        config(all(), &clock),
        std::slice::from_ref(&good),
        reader(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    // A savepoint is canonical, not a reference to the database.
    let storage = CheckpointStorage::in_memory("job");
    let location = storage.init_savepoint(2, None).await.unwrap();
    let out = b
        .snapshot(2, location, SnapshotOptions::savepoint())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(out.handle, KeyedStateHandle::KeyGroups(_)), "{:?}", out.handle);

    // The good handle still restores.
    let restored = SlateDbBackend::restore(options(&store), config(all(), &clock), &[good], reader())
        .await
        .unwrap();
    restored.close().await.unwrap();
    b.close().await.unwrap();
}
