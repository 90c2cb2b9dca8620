//! TTL contracts, driven by a manual clock; incremental and compaction-filter
//! cleanup run on backends that have them.

use std::sync::Arc;
use std::time::Duration;

use flowstate_api::ttl::ManualClock;
use flowstate_api::*;

use crate::{checkpoint, clocked_config, restore_from, BackendFactory, Ctx};

const TTL: Duration = Duration::from_millis(100);

fn setup<F: BackendFactory>(ctx: &Ctx<F>) -> (F::Backend<u64>, Arc<ManualClock>) {
    let clock = ManualClock::new(1000);
    let b = ctx.backend.build(clocked_config::<u64>(clock.clone())).unwrap();
    (b, clock)
}

fn quiet(ttl: StateTtlConfig) -> StateTtlConfig {
    ttl.disable_cleanup_in_background()
}

/// OnCreateAndWrite: reads do not extend the lifetime.
pub async fn on_create_and_write_is_not_refreshed_by_reads<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").with_ttl(quiet(StateTtlConfig::new(TTL))))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    clock.set(1099);
    assert_eq!(b.value(&v).unwrap(), Some(1));
    clock.set(1100);
    assert_eq!(b.value(&v).unwrap(), None);
    // A write starts a new lifetime.
    b.update(&v, 2).unwrap();
    clock.set(1199);
    assert_eq!(b.value(&v).unwrap(), Some(2));
}

/// OnReadAndWrite: every read extends the lifetime.
pub async fn on_read_and_write_is_refreshed_by_reads<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let ttl = quiet(StateTtlConfig::new(TTL).with_update_type(TtlUpdateType::OnReadAndWrite));
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    b.append(&l, 1).unwrap();
    b.map_put(&m, 1u64, 1u64).unwrap();
    for t in [1050, 1140, 1230] {
        clock.set(t);
        assert_eq!(b.value(&v).unwrap(), Some(1), "t={t}");
        assert_eq!(b.list(&l).unwrap(), [1], "t={t}");
        assert_eq!(b.map_get(&m, &1).unwrap(), Some(1), "t={t}");
    }
    clock.set(1330);
    assert_eq!(b.value(&v).unwrap(), None);
    assert!(b.list(&l).unwrap().is_empty());
    assert_eq!(b.map_get(&m, &1).unwrap(), None);
}

/// ReturnExpiredIfNotCleanedUp: an expired value still stored is returned
/// once, by the read that removes it.
pub async fn return_expired_if_not_cleaned_up<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let ttl = quiet(StateTtlConfig::new(TTL).with_visibility(TtlStateVisibility::ReturnExpiredIfNotCleanedUp));
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let never = b
        .register(ValueStateDescriptor::<u64>::new("never").with_ttl(quiet(StateTtlConfig::new(TTL))))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 5).unwrap();
    b.update(&never, 5).unwrap();
    clock.set(1500);
    assert_eq!(b.value(&v).unwrap(), Some(5));
    assert_eq!(b.value(&v).unwrap(), None, "the read that returned it removed it");
    assert_eq!(b.value(&never).unwrap(), None);
}

/// An entry is visible until exactly `write time + ttl`, and expired from then on.
pub async fn expiry_boundary_is_exact<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").with_ttl(quiet(StateTtlConfig::new(Duration::from_millis(10)))))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    clock.set(1009);
    assert_eq!(b.value(&v).unwrap(), Some(1));
    clock.set(1010);
    assert_eq!(b.value(&v).unwrap(), None);
}

/// A TTL near the maximum does not overflow into immediate expiry.
pub async fn ttl_near_max_does_not_overflow<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").with_ttl(quiet(StateTtlConfig::new(Duration::MAX))))
        .unwrap();
    let w = b
        .register(
            ValueStateDescriptor::<u64>::new("w")
                .with_ttl(quiet(StateTtlConfig::new(Duration::from_millis(u64::MAX - 1)))),
        )
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    b.update(&w, 1).unwrap();
    clock.set(u64::MAX - 1);
    assert_eq!(b.value(&v).unwrap(), Some(1));
    assert_eq!(b.value(&w).unwrap(), Some(1));
}

struct Count;
impl AggregateFunction<u64, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: u64, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Expired entries read as absent for every state kind.
pub async fn every_state_kind_expires<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let ttl = quiet(StateTtlConfig::new(TTL));
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    let r = b
        .register(ReducingStateDescriptor::<u64>::new("r", |a, b| a + b).with_ttl(ttl))
        .unwrap();
    let a = b
        .register(AggregatingStateDescriptor::new("a", Count).with_ttl(ttl))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    b.append(&l, 1).unwrap();
    b.map_put(&m, 1u64, 1u64).unwrap();
    b.reduce(&r, 10).unwrap();
    b.aggregate(&a, 10).unwrap();
    clock.set(1100);
    assert_eq!(b.value(&v).unwrap(), None);
    assert!(b.list(&l).unwrap().is_empty());
    assert_eq!(b.map_get(&m, &1).unwrap(), None);
    assert!(b.map_is_empty(&m).unwrap());
    assert_eq!(b.reduced(&r).unwrap(), None);
    assert_eq!(b.aggregated(&a).unwrap(), None);
    // A fold into an expired value starts afresh.
    b.reduce(&r, 3).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), Some(3));
    b.aggregate(&a, 3).unwrap();
    assert_eq!(b.aggregated(&a).unwrap(), Some(1));
    for count in [
        b.entry_count(&v).unwrap(),
        b.entry_count(&l).unwrap(),
        b.entry_count(&m).unwrap(),
    ] {
        assert_eq!(count, 0, "reading expired state removes it");
    }
}

/// List elements expire one by one.
pub async fn list_elements_expire_individually<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let l = b
        .register(ListStateDescriptor::<u64>::new("l").with_ttl(quiet(StateTtlConfig::new(TTL))))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.append(&l, 1).unwrap();
    clock.set(1050);
    b.append_all(&l, [2u64, 3]).unwrap();
    clock.set(1100);
    assert_eq!(b.list(&l).unwrap(), [2, 3]);
    clock.set(1150);
    assert!(b.list(&l).unwrap().is_empty());
}

/// Map entries expire one by one.
pub async fn map_entries_expire_individually<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(quiet(StateTtlConfig::new(TTL))))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.map_put(&m, 1u64, 10u64).unwrap();
    clock.set(1050);
    b.map_put(&m, 2u64, 20u64).unwrap();
    clock.set(1100);
    assert_eq!(b.map_entries(&m).unwrap(), [(2, 20)]);
    assert_eq!(b.map_get(&m, &1).unwrap(), None);
    assert!(!b.map_contains(&m, &1).unwrap());
    assert!(b.map_contains(&m, &2).unwrap());
    assert!(!b.map_is_empty(&m).unwrap());
    clock.set(1150);
    assert!(b.map_is_empty(&m).unwrap());
}

/// Expiry holds across snapshot and restore: timestamps travel with the state.
pub async fn expiry_holds_across_snapshot_and_restore<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("ttl-restore"));
    let (mut b, clock) = setup(&ctx);
    let ttl = quiet(StateTtlConfig::new(TTL));
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    b.append(&l, 1).unwrap();
    clock.set(1060);
    b.append(&l, 2).unwrap();
    let pointer = checkpoint(&mut b, &storage, 1).await;
    let mut r = restore_from(&ctx, &storage, clocked_config::<u64>(clock.clone()), &pointer)
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = r.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    r.set_current_key(&1).unwrap();
    clock.set(1099);
    assert_eq!(r.value(&v).unwrap(), Some(1));
    assert_eq!(r.list(&l).unwrap(), [1, 2]);
    clock.set(1100);
    assert_eq!(r.value(&v).unwrap(), None);
    assert_eq!(r.list(&l).unwrap(), [2]);
}

/// Full-snapshot cleanup leaves expired entries out of the snapshot itself.
pub async fn full_snapshot_cleanup_leaves_expired_out<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("ttl-full-snapshot"));
    let (mut b, clock) = setup(&ctx);
    let ttl = quiet(StateTtlConfig::new(TTL).cleanup_full_snapshot());
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    for k in 0..10u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k).unwrap();
        b.map_put(&m, k, k).unwrap();
    }
    clock.set(1080);
    b.set_current_key(&0).unwrap();
    b.update(&v, 100).unwrap();
    b.append(&l, 100).unwrap();
    b.map_put(&m, 100u64, 100u64).unwrap();
    clock.set(1100);
    // A full snapshot: a savepoint (checkpoints of incremental backends upload
    // native files, as in Flink, where this cleanup does not apply to them).
    let (_, pointer) = crate::snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    // Turn time back: anything still in the snapshot would be visible again.
    clock.set(1000);
    let mut r = restore_from(&ctx, &storage, clocked_config::<u64>(clock.clone()), &pointer)
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = r.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = r
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    assert_eq!(r.entry_count(&v).unwrap(), 1);
    assert_eq!(r.entry_count(&l).unwrap(), 1);
    assert_eq!(r.entry_count(&m).unwrap(), 1);
    r.set_current_key(&0).unwrap();
    assert_eq!(r.value(&v).unwrap(), Some(100));
    assert_eq!(r.list(&l).unwrap(), [100]);
    assert_eq!(r.map_entries(&m).unwrap(), [(100, 100)]);
}

/// Restoring a TTL state without TTL (or the reverse) is refused.
pub async fn ttl_flag_mismatch_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("ttl-mismatch"));
    let (mut b, clock) = setup(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").with_ttl(StateTtlConfig::new(TTL)))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    let pointer = checkpoint(&mut b, &storage, 1).await;
    let mut r = restore_from(&ctx, &storage, clocked_config::<u64>(clock), &pointer)
        .await
        .unwrap();
    let err = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    assert!(err.to_string().contains("TTL"), "{err}");
}

/// Incremental cleanup (a backend with `ttl_incremental_cleanup`) removes
/// expired entries as state is accessed, and never removes live ones.
pub async fn incremental_cleanup_removes_expired_as_it_goes<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let ttl = StateTtlConfig::new(TTL)
        .disable_cleanup_in_background()
        .cleanup_incrementally(10, false);
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    for k in 0..100u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k).unwrap();
    }
    b.set_current_key(&1_000_000).unwrap();
    for _ in 0..100 {
        assert_eq!(b.value(&v).unwrap(), None);
        assert!(b.list(&l).unwrap().is_empty());
    }
    assert_eq!(b.entry_count(&v).unwrap(), 100, "live entries were removed");
    assert_eq!(b.entry_count(&l).unwrap(), 100, "live entries were removed");
    clock.set(1100);
    for _ in 0..100 {
        b.value(&v).unwrap();
        b.list(&l).unwrap();
    }
    assert_eq!(b.entry_count(&v).unwrap(), 0, "expired values were not cleaned up");
    assert_eq!(b.entry_count(&l).unwrap(), 0, "expired lists were not cleaned up");
}

/// A backend that cleans up TTL state in compaction drops expired entries
/// when it compacts, and only those: written at 1000 with a TTL of 100 ms,
/// an entry is gone after a compaction at 1120; written again at 1050, it
/// stays until 1150. `entry_count` counts what the backend still stores.
pub async fn compaction_filter_drops_expired_entries<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let ttl = StateTtlConfig::new(TTL)
        .disable_cleanup_in_background()
        .cleanup_in_compaction_filter(1000);
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    for k in 0..100u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k).unwrap();
        b.map_put(&m, k, k).unwrap();
    }
    clock.set(1050);
    for k in 0..10u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k + 1).unwrap();
        b.map_put(&m, k + 1000, k).unwrap();
    }
    b.compact().unwrap();
    assert_eq!(b.entry_count(&v).unwrap(), 100, "nothing expired yet");
    clock.set(1120);
    b.compact().unwrap();
    // Written at 1000: expired at 1100. Written at 1050: alive until 1150.
    assert_eq!(b.entry_count(&v).unwrap(), 10);
    assert_eq!(b.entry_count(&m).unwrap(), 10);
    assert_eq!(b.entry_count(&l).unwrap(), 10);
    b.set_current_key(&3).unwrap();
    assert_eq!(b.list(&l).unwrap(), [4]);
    assert_eq!(b.map_entries(&m).unwrap(), [(1003, 3)]);
    clock.set(1200);
    b.compact().unwrap();
    for count in [b.entry_count(&v), b.entry_count(&l), b.entry_count(&m)] {
        assert_eq!(count.unwrap(), 0);
    }
}

/// Sums, as an aggregating state's function.
struct Sum;
impl AggregateFunction<u64, u64, u64> for Sum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, value: u64, acc: &mut u64) {
        *acc += value;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// The states of the compaction-filter contracts below, all with a TTL of
/// 100 ms, cleaned up only by the compaction filter, with `visibility`.
struct Compacted {
    list: ListState<u64>,
    strings: ListState<String>,
    map: MapState<u64, String>,
    reducing: ReducingState<u64>,
    aggregating: AggregatingState<u64, u64, u64>,
    value: ValueState<u64>,
}

impl Compacted {
    fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B, visibility: TtlStateVisibility) -> Self {
        let ttl = StateTtlConfig::new(TTL)
            .disable_cleanup_in_background()
            .cleanup_in_compaction_filter(1000)
            .with_visibility(visibility);
        Compacted {
            list: b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap(),
            strings: b
                .register(ListStateDescriptor::<String>::new("s").with_ttl(ttl))
                .unwrap(),
            map: b
                .register(MapStateDescriptor::<u64, String>::new("m").with_ttl(ttl))
                .unwrap(),
            reducing: b
                .register(ReducingStateDescriptor::<u64>::new("r", |a, b| a + b).with_ttl(ttl))
                .unwrap(),
            aggregating: b
                .register(AggregatingStateDescriptor::new("a", Sum).with_ttl(ttl))
                .unwrap(),
            value: b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap(),
        }
    }

    /// Flink's `testCompactFilter` data for key `k`, written at 1000 and
    /// 1050 (the clock is left at 1050): lists [5, 7, 10] then [8, 9, 11]
    /// (plus `k`), strings of varying length, map entries 1 then 2, a
    /// reducing state written at 1000, an aggregating state and a value
    /// written at 1050.
    fn write<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, clock: &ManualClock, k: u64) {
        clock.set(1000);
        b.set_current_key(&k).unwrap();
        b.append_all(&self.list, [5 + k, 7 + k, 10 + k]).unwrap();
        b.append_all(&self.strings, [String::new(), "a".repeat(300), "bc".into()])
            .unwrap();
        b.map_put(&self.map, 1u64, "old".to_string()).unwrap();
        b.reduce(&self.reducing, k).unwrap();
        clock.set(1050);
        b.append_all(&self.list, [8 + k, 9 + k, 11 + k]).unwrap();
        b.append(&self.strings, "d".repeat(200)).unwrap();
        b.map_put(&self.map, 2u64, "new".to_string()).unwrap();
        b.aggregate(&self.aggregating, k).unwrap();
        b.update(&self.value, k).unwrap();
    }

    /// Checks key `k` holds all it was written with.
    fn check_all<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, k: u64) {
        b.set_current_key(&k).unwrap();
        assert_eq!(
            b.list(&self.list).unwrap(),
            [5 + k, 7 + k, 10 + k, 8 + k, 9 + k, 11 + k]
        );
        assert_eq!(b.list(&self.strings).unwrap().len(), 4);
        assert_eq!(b.map_keys(&self.map).unwrap(), [1, 2]);
        assert_eq!(b.reduced(&self.reducing).unwrap(), Some(k));
    }

    /// Checks key `k` holds only what was written at 1050.
    fn check_fresh<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, k: u64) {
        b.set_current_key(&k).unwrap();
        assert_eq!(
            b.list(&self.list).unwrap(),
            [8 + k, 9 + k, 11 + k],
            "key {k}: expired list elements survived compaction"
        );
        assert_eq!(b.list(&self.strings).unwrap(), ["d".repeat(200)], "key {k}");
        assert_eq!(b.map_entries(&self.map).unwrap(), [(2, "new".to_string())], "key {k}");
        assert_eq!(b.reduced(&self.reducing).unwrap(), None, "key {k}");
        assert_eq!(b.aggregated(&self.aggregating).unwrap(), Some(k), "key {k}");
        assert_eq!(b.value(&self.value).unwrap(), Some(k), "key {k}");
    }

    /// Checks key `k` holds nothing.
    fn check_empty<B: KeyedStateBackend<Key = u64>>(&self, b: &mut B, k: u64) {
        b.set_current_key(&k).unwrap();
        assert!(b.list(&self.list).unwrap().is_empty(), "key {k}");
        assert!(b.list(&self.strings).unwrap().is_empty(), "key {k}");
        assert!(b.map_is_empty(&self.map).unwrap(), "key {k}");
        assert_eq!(b.aggregated(&self.aggregating).unwrap(), None, "key {k}");
        assert_eq!(b.value(&self.value).unwrap(), None, "key {k}");
    }
}

/// Flink's `testCompactFilter`: with `ReturnExpiredIfNotCleanedUp`, what a
/// read returns is what the backend stores, and compaction drops expired
/// list elements one by one (fixed- and variable-length), expired map
/// entries, and expired values, reducing and aggregating state; nothing
/// else.
pub async fn compaction_filter_drops_expired_list_elements_one_by_one<F: BackendFactory>(ctx: Ctx<F>) {
    let (mut b, clock) = setup(&ctx);
    let s = Compacted::register(&mut b, TtlStateVisibility::ReturnExpiredIfNotCleanedUp);
    for k in 0..20 {
        s.write(&mut b, &clock, k);
    }
    clock.set(1080);
    b.compact().unwrap();
    for k in 0..20 {
        s.check_all(&mut b, k);
    }
    clock.set(1120);
    b.compact().unwrap();
    for k in 0..20 {
        s.check_fresh(&mut b, k);
    }
    clock.set(1150);
    b.compact().unwrap();
    for k in 0..20 {
        s.check_empty(&mut b, k);
    }
    assert_eq!(b.entry_count(&s.list).unwrap(), 0);
    assert_eq!(b.entry_count(&s.map).unwrap(), 0);
}

/// Flink's `testCompactFilterWithSnapshotAndRescalingAfterRestore`: state
/// checkpointed before it expires, restored at parallelism 2, is compacted
/// element by element in each restored backend.
pub async fn compaction_filter_drops_expired_list_elements_after_rescaling<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("ttl-compact-rescale"));
    let (mut b, clock) = setup(&ctx);
    let s = Compacted::register(&mut b, TtlStateVisibility::ReturnExpiredIfNotCleanedUp);
    for k in 0..20 {
        s.write(&mut b, &clock, k);
    }
    clock.set(1060);
    let pointer = checkpoint(&mut b, &storage, 1).await;
    drop(b);
    for index in 0..2 {
        let config = crate::operator_config::<u64>(2, index).with_clock(clock.clone());
        let mut r = restore_from(&ctx, &storage, config, &pointer).await.unwrap();
        let s = Compacted::register(&mut r, TtlStateVisibility::ReturnExpiredIfNotCleanedUp);
        let keys: Vec<u64> = (0..20).filter(|k| crate::operator_for_key(k, 2) == index).collect();
        assert!(!keys.is_empty());
        clock.set(1080);
        r.compact().unwrap();
        for &k in &keys {
            s.check_all(&mut r, k);
        }
        clock.set(1120);
        r.compact().unwrap();
        for &k in &keys {
            s.check_fresh(&mut r, k);
        }
    }
}

/// With `NeverReturnExpired`, compaction reclaims expired state rather than
/// only hiding it: a savepoint taken after the compaction, restored with the
/// clock turned back and `ReturnExpiredIfNotCleanedUp`, holds only what had
/// not expired.
pub async fn compaction_filter_reclaims_state_never_returned<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("ttl-compact-reclaim"));
    let (mut b, clock) = setup(&ctx);
    let s = Compacted::register(&mut b, TtlStateVisibility::NeverReturnExpired);
    for k in 0..20 {
        s.write(&mut b, &clock, k);
    }
    // The first compaction merges each list's appends into one value.
    clock.set(1080);
    b.compact().unwrap();
    clock.set(1120);
    b.compact().unwrap();
    let (_, pointer) = crate::snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    clock.set(1000);
    let mut r = restore_from(&ctx, &storage, clocked_config::<u64>(clock.clone()), &pointer)
        .await
        .unwrap();
    let s = Compacted::register(&mut r, TtlStateVisibility::ReturnExpiredIfNotCleanedUp);
    for k in 0..20 {
        s.check_fresh(&mut r, k);
    }
}
