//! Timer contracts: set semantics, one total firing order (timestamp, key
//! group, key bytes, namespace bytes) on every backend, timers in
//! checkpoints and savepoints, and rescaling where every timer fires
//! exactly once on the subtask that owns its key.

use std::collections::BTreeSet;

use flowstate_api::checkpoint::OperatorState;
use flowstate_api::*;

use crate::{
    checkpoint, complete, operator_config, operator_for_key, restore_from, snapshot_into, BackendFactory, Ctx,
    MAX_PARALLELISM,
};

/// A timer as the reference model orders it.
type Model = BTreeSet<(i64, u32, Vec<u8>, Vec<u8>, u64, String)>;

fn bytes<T: serde::Serialize + serde::de::DeserializeOwned + 'static>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    Serializer::serialize(&Bincode::<T>::new(), v, &mut out).unwrap();
    out
}

fn model_entry(ts: i64, key: u64, ns: &str) -> (i64, u32, Vec<u8>, Vec<u8>, u64, String) {
    let k = bytes(&key);
    let kg = key_group_for_key_bytes(&k, MAX_PARALLELISM);
    (ts, kg, k, bytes(&ns.to_string()), key, ns.to_string())
}

fn service() -> TimerServiceDescriptor<String> {
    TimerServiceDescriptor::event_time("timers").in_namespace::<String>()
}

/// Fires everything due at `time` and returns `(timestamp, key, namespace)` in firing order.
fn fire<B: KeyedStateBackend<Key = u64>>(b: &mut B, t: &TimerService<String>, time: i64) -> Vec<(i64, u64, String)> {
    t.advance(b, time)
        .unwrap()
        .into_iter()
        .map(|t| (t.timestamp, t.key, t.namespace))
        .collect()
}

fn expected(model: &mut Model, time: i64) -> Vec<(i64, u64, String)> {
    let mut out = Vec::new();
    while let Some(first) = model.first() {
        if first.0 > time {
            break;
        }
        let (ts, _, _, _, key, ns) = model.pop_first().unwrap();
        out.push((ts, key, ns));
    }
    out
}

/// A deterministic workload: timestamps from -500 to 1,500 (negative ones
/// included, many equal), 300 keys over many key groups, namespaces of
/// different lengths (`""`, `"a"`, `"a\0"`, `"b"`).
fn workload(n: u64) -> Vec<(i64, u64, &'static str)> {
    let namespaces = ["", "a", "a\0", "b"];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (
                (x % 2000) as i64 - 500,
                (x >> 20) % 300,
                namespaces[((x >> 40) % 4) as usize],
            )
        })
        .collect()
}

/// Registering a timer twice fires it once; deleting a timer that does not
/// exist (or twice) is a no-op; `next_timestamp` sees the first timer.
pub async fn duplicate_register_fires_once_and_missing_delete_is_noop<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = ctx.backend.build(operator_config::<u64>(1, 0)).unwrap();
    let t = b.register(service()).unwrap();
    b.set_current_key(&1).unwrap();
    t.register(&mut b, 10, &"w".to_string()).unwrap();
    t.register(&mut b, 10, &"w".to_string()).unwrap();
    t.delete(&mut b, 11, &"w".to_string()).unwrap();
    t.delete(&mut b, 10, &"other".to_string()).unwrap();
    b.set_current_key(&2).unwrap();
    t.register(&mut b, 5, &"w".to_string()).unwrap();
    t.delete(&mut b, 5, &"w".to_string()).unwrap();
    t.delete(&mut b, 5, &"w".to_string()).unwrap();
    assert_eq!(t.next_timestamp(&mut b).unwrap(), Some(10));
    assert_eq!(fire(&mut b, &t, 9), []);
    assert_eq!(fire(&mut b, &t, 10), [(10, 1, "w".to_string())]);
    assert_eq!(
        b.current_key_bytes(),
        Some(&bytes(&1u64)[..]),
        "the fired timer's key is current"
    );
    assert_eq!(fire(&mut b, &t, i64::MAX), []);
    assert_eq!(t.next_timestamp(&mut b).unwrap(), None);
}

/// Timers fire in the total order (timestamp, key group, key bytes,
/// namespace bytes), negative timestamps first, while timers are
/// registered, deleted and fired in between (thousands of timers, so a
/// cache of the first timers runs empty and refills).
pub async fn timers_fire_in_total_order<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = ctx.backend.build(operator_config::<u64>(1, 0)).unwrap();
    let t = b.register(service()).unwrap();
    let mut model = Model::new();
    // About 230 timers per key group: more than a cache of the first 128.
    let work = workload(30_000);
    let mut watermark = -600;
    for (i, &(ts, key, ns)) in work.iter().enumerate() {
        b.set_current_key(&key).unwrap();
        t.register(&mut b, ts, &ns.to_string()).unwrap();
        model.insert(model_entry(ts, key, ns));
        if i % 7 == 3 {
            // Delete an earlier timer (possibly fired already: a no-op).
            let (dts, dkey, dns) = work[i / 2];
            b.set_current_key(&dkey).unwrap();
            t.delete(&mut b, dts, &dns.to_string()).unwrap();
            model.remove(&model_entry(dts, dkey, dns));
        }
        if i % 2500 == 2499 {
            watermark += 150;
            assert_eq!(fire(&mut b, &t, watermark), expected(&mut model, watermark), "at {i}");
        }
    }
    assert_eq!(t.next_timestamp(&mut b).unwrap(), model.first().map(|m| m.0));
    assert_eq!(fire(&mut b, &t, i64::MAX), expected(&mut model, i64::MAX));
}

/// Timers are in checkpoints (the backend's own format, incremental where
/// it has one) and canonical savepoints; after a restore they fire in the
/// same order, and timers fired before the snapshot stay fired.
pub async fn timers_survive_checkpoint_and_savepoint<F: BackendFactory>(ctx: Ctx<F>) {
    for options in [SnapshotOptions::checkpoint(), SnapshotOptions::savepoint()] {
        let storage = ctx.storage.storage(&crate::job_id("timers-restore"));
        let mut b = ctx.backend.build(operator_config::<u64>(1, 0)).unwrap();
        let t = b.register(service()).unwrap();
        let mut model = Model::new();
        for (ts, key, ns) in workload(2000) {
            b.set_current_key(&key).unwrap();
            t.register(&mut b, ts, &ns.to_string()).unwrap();
            model.insert(model_entry(ts, key, ns));
        }
        assert_eq!(fire(&mut b, &t, 0), expected(&mut model, 0));
        let pointer = match options.kind {
            CheckpointKind::Checkpoint => {
                // Two checkpoints, so an incremental backend restores the second from shared files.
                checkpoint(&mut b, &storage, 1).await;
                assert_eq!(fire(&mut b, &t, 100), expected(&mut model, 100));
                checkpoint(&mut b, &storage, 2).await
            }
            CheckpointKind::Savepoint => crate::snapshot_and_complete(&mut b, &storage, 1, options).await.1,
        };
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(1, 0), &pointer)
            .await
            .unwrap();
        let t = r.register(service()).unwrap();
        let fired = fire(&mut r, &t, i64::MAX);
        assert_eq!(fired.len(), model.len(), "{:?}", options.kind);
        assert_eq!(fired, expected(&mut model, i64::MAX), "{:?}", options.kind);
    }
}

/// A timer registered (or deleted) after the sync phase of a snapshot is
/// not (or still) in that snapshot.
pub async fn timer_after_sync_phase_is_not_in_snapshot<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("timers-sync"));
    let mut b = ctx.backend.build(operator_config::<u64>(1, 0)).unwrap();
    let t = b.register(service()).unwrap();
    b.set_current_key(&1).unwrap();
    t.register(&mut b, 1, &String::new()).unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let pending = b.snapshot(1, location.clone(), SnapshotOptions::checkpoint()).unwrap();
    t.register(&mut b, 2, &String::new()).unwrap();
    t.delete(&mut b, 1, &String::new()).unwrap();
    let result = pending.await.unwrap();
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        crate::OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![result.handle],
    ));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    let mut r = restore_from(&ctx, &storage, operator_config::<u64>(1, 0), &pointer)
        .await
        .unwrap();
    let t = r.register(service()).unwrap();
    assert_eq!(fire(&mut r, &t, i64::MAX), [(1, 1, String::new())]);
}

/// A timer service restored as a value state, a processing-time service
/// restored as an event-time one, or a service with another namespace
/// serializer, is refused (`Incompatible`); state operations on a timer
/// service and timer operations on a state are refused (`Invalid`), and
/// so is advancing the watermark of a processing-time service.
pub async fn timer_service_mismatches_are_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("timers-mismatch"));
    let mut b = ctx.backend.build(operator_config::<u64>(1, 0)).unwrap();
    let t = b.register(TimerServiceDescriptor::event_time("t")).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    t.register(&mut b, 5, &VoidNamespace).unwrap();
    let kind = |e: Error| e.kind();
    assert_eq!(
        b.register(ValueStateDescriptor::<u64>::new("t"))
            .map(|_| ())
            .map_err(kind),
        Err(ErrorKind::Incompatible)
    );
    assert_eq!(b.clear(&t).map_err(kind), Err(ErrorKind::Invalid));
    let fake = TimerServiceDescriptor::event_time("v").into_handle(v.slot());
    assert_eq!(
        fake.register(&mut b, 1, &VoidNamespace).map_err(kind),
        Err(ErrorKind::Invalid)
    );
    assert_eq!(
        t.advance_processing_time(&mut b, 10).map(|_| ()).map_err(kind),
        Err(ErrorKind::Invalid)
    );
    let pointer = checkpoint(&mut b, &storage, 1).await;
    for wrong in [
        TimerServiceDescriptor::processing_time("t").in_namespace::<VoidNamespace>(),
        TimerServiceDescriptor::event_time("t")
            .with_namespace_serializer(std::sync::Arc::new(Bincode::<VoidNamespace>::new())),
    ] {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(1, 0), &pointer)
            .await
            .unwrap();
        let e = r.register(wrong).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    }
    let mut r = restore_from(&ctx, &storage, operator_config::<u64>(1, 0), &pointer)
        .await
        .unwrap();
    let t = r.register(TimerServiceDescriptor::event_time("t")).unwrap();
    let fired = t.advance_watermark(&mut r, 10).unwrap();
    assert_eq!(fired.iter().map(|t| (t.timestamp, t.key)).collect::<Vec<_>>(), [(5, 1)]);
}

async fn rescale_timers<F: BackendFactory>(ctx: Ctx<F>, from: u32, to: u32) {
    let storage = ctx
        .storage
        .storage(&crate::job_id(&format!("timers-rescale-{from}-{to}")));
    let work = workload(4000);
    let mut all = Model::new();
    let mut handles = Vec::new();
    for index in 0..from {
        let mut b = ctx.backend.build(operator_config::<u64>(from, index)).unwrap();
        let t = b.register(service()).unwrap();
        for &(ts, key, ns) in work.iter().filter(|(_, k, _)| operator_for_key(k, from) == index) {
            b.set_current_key(&key).unwrap();
            t.register(&mut b, ts, &ns.to_string()).unwrap();
            all.insert(model_entry(ts, key, ns));
        }
        handles.push(
            snapshot_into(&mut b, &storage, 1, SnapshotOptions::checkpoint())
                .await
                .handle,
        );
    }
    let pointer = complete(&storage, 1, CheckpointKind::Checkpoint, from, handles).await;
    let mut fired_anywhere = Model::new();
    for index in 0..to {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(to, index), &pointer)
            .await
            .unwrap();
        let t = r.register(service()).unwrap();
        let mut mine: Model = all
            .iter()
            .filter(|m| operator_for_key(&m.4, to) == index)
            .cloned()
            .collect();
        let fired = fire(&mut r, &t, i64::MAX);
        for (ts, key, ns) in &fired {
            assert_eq!(
                operator_for_key(key, to),
                index,
                "{from}->{to}: timer of key {key} fired on {index}"
            );
            assert!(
                fired_anywhere.insert(model_entry(*ts, *key, ns)),
                "{from}->{to}: timer ({ts}, {key}, {ns:?}) fired twice"
            );
        }
        assert_eq!(fired, expected(&mut mine, i64::MAX), "{from}->{to}: subtask {index}");
    }
    assert_eq!(fired_anywhere, all, "{from}->{to}: timers lost");
}

/// 15 → 77 subtasks: every timer fires exactly once, on the owner of its key group, in order.
pub async fn timers_rescale_15_to_77<F: BackendFactory>(ctx: Ctx<F>) {
    rescale_timers(ctx, 15, 77).await
}

/// 77 → 15 subtasks: every timer fires exactly once, on the owner of its key group, in order.
pub async fn timers_rescale_77_to_15<F: BackendFactory>(ctx: Ctx<F>) {
    rescale_timers(ctx, 77, 15).await
}
