//! Asynchronous state access contracts: every backend behind
//! [`SyncAsAsync`] gives, through [`RecordCtx`], the results and errors of
//! the synchronous face, and [`KeyOrderedExecutor`] over it keeps each
//! key's records in order, fires timers as records of their key and takes
//! snapshots that hold exactly the records before the barrier.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate_api::ttl::{ManualClock, SharedClock};
use flowstate_api::*;

use crate::{complete, full_config, restore_from, BackendFactory, Ctx};

/// A sum of `i64`s, for the aggregating contract.
struct Sum;

impl AggregateFunction<i64, i64, i64> for Sum {
    fn create_accumulator(&self) -> i64 {
        0
    }
    fn add(&self, value: i64, acc: &mut i64) {
        *acc += value;
    }
    fn get_result(&self, acc: &i64) -> i64 {
        *acc
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

struct States {
    v: ValueState<String>,
    ttl: ValueState<u64>,
    l: ListState<u64, u32>,
    m: MapState<u32, String>,
    r: ReducingState<u64>,
    a: AggregatingState<i64, i64, i64>,
}

fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> States {
    States {
        v: b.register(ValueStateDescriptor::new("v")).unwrap(),
        ttl: b
            .register(ValueStateDescriptor::new("ttl").with_ttl(StateTtlConfig::new(Duration::from_millis(100))))
            .unwrap(),
        l: b.register(ListStateDescriptor::new("l").in_namespace::<u32>()).unwrap(),
        m: b.register(MapStateDescriptor::new("m")).unwrap(),
        r: b.register(ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a + b))
            .unwrap(),
        a: b.register(AggregatingStateDescriptor::new("a", Sum)).unwrap(),
    }
}

/// The same operations through both faces of two backends on one manual
/// clock: every result and error is the same, and so is every stored entry
/// at the end.
pub async fn async_face_equals_sync_face<F: BackendFactory>(ctx: Ctx<F>) {
    let clock = ManualClock::new(1_000);
    let config = || full_config::<u64>().with_clock(Arc::clone(&clock) as SharedClock);
    let mut sync = ctx.backend.build(config()).unwrap();
    let s = register(&mut sync);
    let mut other = ctx.backend.build(config()).unwrap();
    let a = register(&mut other);
    let other = Arc::new(SyncAsAsync::new(other));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for step in 0..3_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = x % 40;
        sync.set_current_key(&key).unwrap();
        let mut r = RecordCtx::for_key(Arc::clone(&other), &key).unwrap();
        let ns = (x >> 8) as u32 % 3;
        sync.set_namespace(&s.l, &ns).unwrap();
        r.set_namespace(&a.l, &ns).unwrap();
        let (want, got): (String, String) = match x % 16 {
            0 => (
                format!("{:?}", sync.update(&s.v, format!("{step}"))),
                format!("{:?}", r.update(&a.v, format!("{step}")).await),
            ),
            1 => (format!("{:?}", sync.value(&s.v)), format!("{:?}", r.value(&a.v).await)),
            2 => (format!("{:?}", sync.clear(&s.v)), format!("{:?}", r.clear(&a.v).await)),
            3 => (
                format!("{:?}", sync.append(&s.l, step)),
                format!("{:?}", r.append(&a.l, step).await),
            ),
            4 => (format!("{:?}", sync.list(&s.l)), format!("{:?}", r.list(&a.l).await)),
            5 => (
                format!("{:?}", sync.update_list(&s.l, [step, key])),
                format!("{:?}", r.update_list(&a.l, [step, key]).await),
            ),
            6 => (
                format!("{:?}", sync.merge_namespaces(&s.l, &0, &[1, 2])),
                format!("{:?}", r.merge_namespaces(&a.l, &0, &[1, 2]).await),
            ),
            7 => (
                format!("{:?}", sync.map_put(&s.m, (x % 5) as u32, format!("{step}"))),
                format!("{:?}", r.map_put(&a.m, (x % 5) as u32, format!("{step}")).await),
            ),
            8 => (
                format!("{:?}", sync.map_remove(&s.m, &((x % 5) as u32))),
                format!("{:?}", r.map_remove(&a.m, &((x % 5) as u32)).await),
            ),
            9 => {
                let mut want = sync.map_entries(&s.m).unwrap();
                let mut got = r.map_entries(&a.m).await.unwrap();
                want.sort();
                got.sort();
                (format!("{want:?}"), format!("{got:?}"))
            }
            10 => (
                format!("{:?} {:?}", sync.reduce(&s.r, step), sync.reduced(&s.r)),
                format!("{:?} {:?}", r.reduce(&a.r, step).await, r.reduced(&a.r).await),
            ),
            11 => (
                format!(
                    "{:?} {:?}",
                    sync.aggregate(&s.a, step as i64 - 50),
                    sync.aggregated(&s.a)
                ),
                format!(
                    "{:?} {:?}",
                    r.aggregate(&a.a, step as i64 - 50).await,
                    r.aggregated(&a.a).await
                ),
            ),
            12 => (
                format!("{:?}", sync.update(&s.ttl, step)),
                format!("{:?}", r.update(&a.ttl, step).await),
            ),
            13 => (
                format!("{:?}", sync.value(&s.ttl)),
                format!("{:?}", r.value(&a.ttl).await),
            ),
            14 => {
                clock.advance(x % 40);
                (String::new(), String::new())
            }
            _ => (
                format!("{:?}", sync.map_is_empty(&s.m)),
                format!("{:?}", r.map_is_empty(&a.m).await),
            ),
        };
        assert_eq!(got, want, "step {step}, key {key}: the two faces differ");
    }
    // Every key's state, read through the synchronous face of both.
    let mut other = Arc::try_unwrap(other).unwrap().into_inner().unwrap();
    for key in 0..40u64 {
        sync.set_current_key(&key).unwrap();
        other.set_current_key(&key).unwrap();
        assert_eq!(sync.value(&s.v).unwrap(), other.value(&a.v).unwrap(), "key {key}");
        assert_eq!(sync.value(&s.ttl).unwrap(), other.value(&a.ttl).unwrap(), "key {key}");
        for ns in 0..3 {
            sync.set_namespace(&s.l, &ns).unwrap();
            other.set_namespace(&a.l, &ns).unwrap();
            assert_eq!(sync.list(&s.l).unwrap(), other.list(&a.l).unwrap(), "key {key}");
        }
        let (mut want, mut got) = (sync.map_entries(&s.m).unwrap(), other.map_entries(&a.m).unwrap());
        want.sort();
        got.sort();
        assert_eq!(want, got, "key {key}");
        assert_eq!(sync.reduced(&s.r).unwrap(), other.reduced(&a.r).unwrap(), "key {key}");
        assert_eq!(
            sync.aggregated(&s.a).unwrap(),
            other.aggregated(&a.a).unwrap(),
            "key {key}"
        );
    }
}

/// What one key saw and holds: the records' sequence numbers in order.
type Model = BTreeMap<u64, Vec<u64>>;

/// Records over 12 keys through [`KeyOrderedExecutor`] (at most 7 in
/// flight): each reads its key's count, checks it equals the number of
/// earlier records of its key, and appends its sequence number. Every 150
/// records a checkpoint: each one restores to exactly the records before
/// its barrier. A watermark fires every timer due, as a record of its key,
/// before it returns.
pub async fn executor_orders_records_per_key_and_snapshots_at_barriers<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("executor"));
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let count = b.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
    let seen = b.register(ListStateDescriptor::<u64>::new("seen")).unwrap();
    let fired = b.register(ListStateDescriptor::<i64>::new("fired")).unwrap();
    let timers = b.register(TimerServiceDescriptor::event_time("t")).unwrap();
    let backend = Arc::new(SyncAsAsync::new(b));
    let (count, seen, fired, timers) = (&count, &seen, &fired, &timers);
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut model = Model::new();
    let mut barriers: Vec<(u64, String, Model)> = Vec::new();
    let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 7).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for seq in 0..900u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = x % 12;
        let before = model.entry(key).or_default();
        let expected = before.len() as u64;
        before.push(seq);
        let errors = Arc::clone(&errors);
        executor
            .submit(&key, move |ctx| async move {
                let n = ctx.value(count).await?.unwrap_or(0);
                if n != expected {
                    errors.lock().unwrap().push(format!(
                        "record {seq} of key {key} saw {n} earlier records, not {expected}"
                    ));
                }
                // Records of other keys run between these requests.
                tokio::task::yield_now().await;
                ctx.update(count, n + 1).await?;
                ctx.append(seen, seq).await?;
                ctx.register_timer(timers, seq as i64, &VoidNamespace).await
            })
            .await
            .unwrap();
        if seq % 150 == 149 {
            let id = barriers.len() as u64 + 1;
            let location = storage.init_checkpoint(id).await.unwrap();
            let pending = executor
                .snapshot(id, location, SnapshotOptions::checkpoint())
                .await
                .unwrap();
            let handle = pending.await.unwrap().handle;
            let pointer = complete(&storage, id, CheckpointKind::Checkpoint, 1, vec![handle]).await;
            backend.with_backend(|b| b.notify_checkpoint_complete(id)).unwrap();
            barriers.push((id, pointer, model.clone()));
        }
        if seq == 600 {
            // Timers up to 300 fire before the watermark returns, each as a
            // record of its key.
            executor
                .advance_watermark(
                    timers,
                    300,
                    |t, ctx| async move { ctx.append(fired, t.timestamp).await },
                )
                .await
                .unwrap();
            backend
                .with_backend(|b| {
                    for (&key, seqs) in &model {
                        b.set_current_key(&key)?;
                        let want: Vec<i64> = seqs.iter().filter(|&&s| s <= 300).map(|&s| s as i64).collect();
                        assert_eq!(b.list(fired)?, want, "key {key}: the timers fired by watermark 300");
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    executor.drain().await.unwrap();
    assert_eq!(errors.lock().unwrap().as_slice(), &[] as &[String]);
    for (id, pointer, at) in barriers {
        let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
            .await
            .unwrap();
        let count = r.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
        let seen = r.register(ListStateDescriptor::<u64>::new("seen")).unwrap();
        for (key, seqs) in &at {
            r.set_current_key(key).unwrap();
            assert_eq!(
                r.value(&count).unwrap(),
                Some(seqs.len() as u64),
                "checkpoint {id}, key {key}"
            );
            assert_eq!(&r.list(&seen).unwrap(), seqs, "checkpoint {id}, key {key}");
        }
        assert_eq!(r.entry_count(&count).unwrap(), at.len() as u64, "checkpoint {id}");
    }
}
