//! Snapshot and restore contracts.

use std::sync::Arc;

use flowstate_api::*;

use crate::{checkpoint, complete, full_config, restore_from, snapshot_into, BackendFactory, Ctx, OPERATOR};

fn storage<F: BackendFactory>(ctx: &Ctx<F>, contract: &str) -> Arc<CheckpointStorage> {
    ctx.storage.storage(&crate::job_id(contract))
}

async fn value_of<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &ValueState<u64>, key: u64) -> Option<u64> {
    b.set_current_key(&key).unwrap();
    b.value(s).unwrap()
}

/// State written after the sync phase is absent from that snapshot.
pub async fn snapshot_isolation<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "isolation");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    for k in 0..200u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k).unwrap();
    }
    let location = storage.init_checkpoint(1).await.unwrap();
    let pending = b.snapshot(1, location, SnapshotOptions::checkpoint()).unwrap();
    // Writes after the sync phase: updates, deletes, new keys, list appends.
    for k in 0..200u64 {
        b.set_current_key(&k).unwrap();
        if k % 2 == 0 {
            b.update(&v, k + 1000).unwrap();
        } else {
            b.clear(&v).unwrap();
        }
        b.append(&l, 9999).unwrap();
    }
    b.set_current_key(&5000).unwrap();
    b.update(&v, 1).unwrap();
    let result = pending.await.unwrap();
    let pointer = complete(&storage, 1, CheckpointKind::Checkpoint, 1, vec![result.handle]).await;
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = r.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    for k in 0..200u64 {
        assert_eq!(value_of(&mut r, &v, k).await, Some(k));
        assert_eq!(r.list(&l).unwrap(), [k]);
    }
    assert_eq!(value_of(&mut r, &v, 5000).await, None);
    assert_eq!(r.entry_count(&v).unwrap(), 200);
}

/// Two snapshots taken in turn restore to their own states.
pub async fn two_snapshots_restore_to_their_own_state<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "two-snapshots");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for k in 0..50u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, 1).unwrap();
    }
    let p1 = checkpoint(&mut b, &storage, 1).await;
    for k in 0..50u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, 2).unwrap();
    }
    let p2 = checkpoint(&mut b, &storage, 2).await;
    for (pointer, expected) in [(p1, 1u64), (p2, 2)] {
        let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..50u64 {
            assert_eq!(value_of(&mut r, &v, k).await, Some(expected), "{pointer} key {k}");
        }
    }
}

/// Several snapshots may be in their async phase at once while the backend
/// keeps serving reads and writes.
pub async fn concurrent_async_phases_while_serving<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "concurrent");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let mut pending = Vec::new();
    for round in 1..=3u64 {
        for k in 0..300u64 {
            b.set_current_key(&k).unwrap();
            b.update(&v, round).unwrap();
        }
        let location = storage.init_checkpoint(round).await.unwrap();
        pending.push(b.snapshot(round, location, SnapshotOptions::checkpoint()).unwrap());
        // Reads see the newest writes while snapshots are pending.
        assert_eq!(value_of(&mut b, &v, 7).await, Some(round));
    }
    let tasks: Vec<_> = pending.into_iter().map(|p| tokio::spawn(p.run())).collect();
    for k in 0..300u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, 100).unwrap();
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let round = i as u64 + 1;
        let result = task.await.unwrap().unwrap();
        let pointer = complete(&storage, round, CheckpointKind::Checkpoint, 1, vec![result.handle]).await;
        let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
            .await
            .unwrap();
        let rv = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in (0..300u64).step_by(7) {
            assert_eq!(value_of(&mut r, &rv, k).await, Some(round));
        }
    }
    assert_eq!(value_of(&mut b, &v, 299).await, Some(100));
}

/// Dropping a pending snapshot leaves no checkpoint and no state behind.
pub async fn dropped_snapshot_leaves_nothing<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "dropped");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    drop(b.snapshot(1, location.clone(), SnapshotOptions::checkpoint()).unwrap());
    location.dispose().await.unwrap();
    assert!(storage.latest_checkpoint().await.unwrap().is_none());
    // The backend is unaffected and can snapshot the same id afresh.
    let pointer = checkpoint(&mut b, &storage, 2).await;
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    assert_eq!(value_of(&mut r, &v, 1).await, Some(1));
}

/// Closing the backend during a snapshot's async phase fails that snapshot
/// with `Closed`, and no checkpoint references what it wrote.
pub async fn closing_backend_cancels_snapshot<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "closing");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for k in 0..100u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
    }
    let location = storage.init_checkpoint(1).await.unwrap();
    let pending = b.snapshot(1, location.clone(), SnapshotOptions::checkpoint()).unwrap();
    drop(b);
    let err = pending.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    location.dispose().await.unwrap();
    assert!(storage.latest_checkpoint().await.unwrap().is_none());
}

/// An empty backend snapshots to an empty handle and restores from it.
pub async fn empty_backend_snapshots_empty<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "empty");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let result = snapshot_into(&mut b, &storage, 1, SnapshotOptions::checkpoint()).await;
    assert!(result.handle.is_empty(), "{:?}", result.handle);
    assert_eq!(result.stats.full_size, 0);
    let pointer = complete(&storage, 1, CheckpointKind::Checkpoint, 1, vec![result.handle]).await;
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    assert_eq!(value_of(&mut r, &v, 1).await, None);
    assert_eq!(r.entry_count(&v).unwrap(), 0);
}

/// States that were restored but never touched are in the next snapshot.
pub async fn restored_untouched_state_is_in_next_snapshot<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "untouched");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("untouched")).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, String>::new("untouched-map"))
        .unwrap();
    for k in 0..20u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.map_put(&m, k, k.to_string()).unwrap();
    }
    let p1 = checkpoint(&mut b, &storage, 1).await;
    let mut r1 = restore_from(&ctx, &storage, full_config::<u64>(), &p1).await.unwrap();
    let other = r1.register(ValueStateDescriptor::<u64>::new("other")).unwrap();
    r1.set_current_key(&1).unwrap();
    r1.update(&other, 5).unwrap();
    let p2 = checkpoint(&mut r1, &storage, 2).await;
    let mut r2 = restore_from(&ctx, &storage, full_config::<u64>(), &p2).await.unwrap();
    let v = r2.register(ValueStateDescriptor::<u64>::new("untouched")).unwrap();
    let m = r2
        .register(MapStateDescriptor::<u64, String>::new("untouched-map"))
        .unwrap();
    let other = r2.register(ValueStateDescriptor::<u64>::new("other")).unwrap();
    for k in 0..20u64 {
        assert_eq!(value_of(&mut r2, &v, k).await, Some(k));
        assert_eq!(r2.map_get(&m, &k).unwrap(), Some(k.to_string()));
    }
    assert_eq!(value_of(&mut r2, &other, 1).await, Some(5));
}

fn sum(a: &u64, b: &u64) -> u64 {
    a + b
}

/// One state of every kind.
struct EveryKind {
    v: ValueState<String>,
    l: ListState<u32>,
    m: MapState<String, u64, u8>,
    r: ReducingState<u64>,
}

impl EveryKind {
    fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> Self {
        EveryKind {
            v: b.register(ValueStateDescriptor::<String>::new("value")).unwrap(),
            l: b.register(ListStateDescriptor::<u32>::new("list")).unwrap(),
            m: b.register(MapStateDescriptor::<String, u64>::new("map").in_namespace::<u8>())
                .unwrap(),
            r: b.register(ReducingStateDescriptor::<u64>::new("reducing", sum))
                .unwrap(),
        }
    }
}

/// Writes one of every state kind in two namespaces.
fn fill_every_kind<B: KeyedStateBackend<Key = u64>>(b: &mut B, keys: u64) {
    let EveryKind { v, l, m, r } = EveryKind::register(b);
    for k in 0..keys {
        b.set_current_key(&k).unwrap();
        b.update(&v, format!("v{k}")).unwrap();
        b.append_all(&l, [k as u32, 1, 2]).unwrap();
        for ns in [0u8, 1] {
            b.set_namespace(&m, &ns).unwrap();
            b.map_put(&m, format!("a{ns}"), k).unwrap();
            b.map_put(&m, "b".to_string(), k + 1).unwrap();
        }
        b.reduce(&r, k).unwrap();
        b.reduce(&r, 1).unwrap();
    }
}

fn check_every_kind<B: KeyedStateBackend<Key = u64>>(b: &mut B, keys: impl Iterator<Item = u64>) -> usize {
    let EveryKind { v, l, m, r } = EveryKind::register(b);
    let mut n = 0;
    for k in keys {
        b.set_current_key(&k).unwrap();
        assert_eq!(b.value(&v).unwrap(), Some(format!("v{k}")));
        assert_eq!(b.list(&l).unwrap(), [k as u32, 1, 2]);
        for ns in [0u8, 1] {
            b.set_namespace(&m, &ns).unwrap();
            let mut e = b.map_entries(&m).unwrap();
            e.sort();
            assert_eq!(e, [(format!("a{ns}"), k), ("b".to_string(), k + 1)]);
        }
        assert_eq!(b.reduced(&r).unwrap(), Some(k + 1));
        n += 1;
    }
    n
}

/// Every state kind, in several namespaces, survives snapshot and restore.
pub async fn every_state_kind_round_trips<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "every-kind");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill_every_kind(&mut b, 300);
    let pointer = checkpoint(&mut b, &storage, 1).await;
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
        .await
        .unwrap();
    assert_eq!(check_every_kind(&mut r, 0..300), 300);
}

/// A zstd-compressed canonical snapshot restores the same state, and is smaller.
pub async fn compressed_snapshot_round_trips<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "compressed");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill_every_kind(&mut b, 300);
    let plain = snapshot_into(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    let (zstd, pointer) =
        crate::snapshot_and_complete(&mut b, &storage, 2, SnapshotOptions::savepoint().with_compression(3)).await;
    assert!(
        zstd.stats.full_size < plain.stats.full_size,
        "compressed {} >= plain {}",
        zstd.stats.full_size,
        plain.stats.full_size
    );
    let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
        .await
        .unwrap();
    assert_eq!(check_every_kind(&mut r, 0..300), 300);
}

/// A canonical savepoint of one backend restores at another parallelism.
pub async fn canonical_savepoint_restores_at_other_parallelism<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "savepoint");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill_every_kind(&mut b, 200);
    let result = snapshot_into(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    let pointer = complete(&storage, 1, CheckpointKind::Savepoint, 1, vec![result.handle]).await;
    let resolved = storage.resolve(&pointer).await.unwrap();
    assert_eq!(resolved.metadata.kind, CheckpointKind::Savepoint);
    let mut total = 0;
    for index in 0..3 {
        let config = crate::operator_config::<u64>(3, index);
        let mut r = restore_from(&ctx, &storage, config, &pointer).await.unwrap();
        let mine = (0..200u64).filter(|k| crate::operator_for_key(k, 3) == index);
        total += check_every_kind(&mut r, mine);
        let v = r.register(ValueStateDescriptor::<String>::new("value")).unwrap();
        let count = r.entry_count(&v).unwrap() as usize;
        assert_eq!(
            count,
            (0..200u64).filter(|k| crate::operator_for_key(k, 3) == index).count()
        );
    }
    assert_eq!(total, 200);
}

/// Restoring through the storage's pointer (and its latest checkpoint)
/// gives back the metadata that was written.
pub async fn restore_through_storage_pointer<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "pointer");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&3).unwrap();
    b.update(&v, 33).unwrap();
    let pointer = checkpoint(&mut b, &storage, 4).await;
    let latest = storage.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(latest.pointer, storage.resolve(&pointer).await.unwrap().pointer);
    assert_eq!(latest.metadata.checkpoint_id, 4);
    let op = latest.metadata.operator(OPERATOR).unwrap();
    let mut r = ctx
        .backend
        .restore(full_config::<u64>(), &op.keyed, Arc::clone(&latest.reader))
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    assert_eq!(value_of(&mut r, &v, 3).await, Some(33));
}
