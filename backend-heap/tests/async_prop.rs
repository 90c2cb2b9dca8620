//! Property tests of asynchronous state access on the heap backend.
//!
//! `records_in_key_order_equal_a_sequential_model`: random streams of
//! records over a few keys run through the `KeyOrderedExecutor` on the heap
//! backend behind `SyncAsAsync`, every request completing after a random
//! number of yields (so records of different keys interleave at random).
//! Each record checks it sees exactly the records of its key before it, and
//! per-key state equals a sequential model: at every checkpoint barrier (a
//! snapshot, restored into a fresh backend), after every watermark (due
//! timers fire as records of their key, registering and deleting timers),
//! and at the end.
//!
//! `the_async_face_equals_the_sync_face`: random typed operations (values,
//! lists, maps, reducing and aggregating state, namespace merges, TTL with
//! a manual clock, timers) applied to two heap backends, one through
//! `KeyedStateBackendExt`, the other through `RecordCtx`: every result and
//! error is the same, and so is every stored byte at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use flowstate_api::asynchronous::Target;
use flowstate_api::backend::{BackendCapabilities, MapVisit, RawTimer, StateId};
use flowstate_api::checkpoint::{CheckpointLocation, InlineReader};
use flowstate_api::ttl::{ManualClock, SharedClock, TtlStateVisibility, TtlUpdateType};
use flowstate_api::*;
use flowstate_heap::HeapBackend;
use proptest::prelude::*;

const MAX_PARALLELISM: u32 = 16;

/// Cases run; `ASYNC_PROP_CASES` overrides.
fn cases() -> u32 {
    std::env::var("ASYNC_PROP_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1_000)
}

fn config(clock: &Arc<ManualClock>) -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(KeyGroupRange::all(MAX_PARALLELISM).unwrap(), MAX_PARALLELISM)
        .with_clock(clock.clone() as SharedClock)
}

fn run<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Wakes itself and returns `Pending` once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

// ---------------------------------------------------------------- a backend whose requests complete late

/// A backend whose every request completes after 0 to `max_yields` yields,
/// drawn from a seeded sequence.
struct Jittered<B> {
    inner: B,
    rng: Mutex<u64>,
    max_yields: u64,
}

impl<B> Jittered<B> {
    fn new(inner: B, seed: u64, max_yields: u64) -> Self {
        Jittered {
            inner,
            rng: Mutex::new(seed | 1),
            max_yields,
        }
    }

    async fn delay(&self) {
        let n = {
            let mut x = self.rng.lock().unwrap();
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x % (self.max_yields + 1)
        };
        for _ in 0..n {
            yield_now().await;
        }
    }
}

impl<B: AsyncKeyedStateBackend> AsyncKeyedStateBackend for Jittered<B> {
    type Key = B::Key;

    fn backend_id(&self) -> u64 {
        self.inner.backend_id()
    }
    fn key_group_range(&self) -> KeyGroupRange {
        self.inner.key_group_range()
    }
    fn max_parallelism(&self) -> u32 {
        self.inner.max_parallelism()
    }
    fn key_serializer(&self) -> &SharedSerializer<B::Key> {
        self.inner.key_serializer()
    }
    fn clock(&self) -> &SharedClock {
        self.inner.clock()
    }
    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }
    fn register<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle> {
        self.inner.register(descriptor)
    }
    fn has_outstanding_requests(&self) -> bool {
        // Delays wake themselves.
        self.inner.has_outstanding_requests()
    }
    async fn value_get<R, F>(&self, at: Target<'_>, f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        self.delay().await;
        self.inner.value_get(at, f).await
    }
    async fn value_put(&self, at: Target<'_>, value: &[u8]) -> Result<()> {
        self.delay().await;
        self.inner.value_put(at, value).await
    }
    async fn clear(&self, at: Target<'_>) -> Result<()> {
        self.delay().await;
        self.inner.clear(at).await
    }
    async fn list_get<F>(&self, at: Target<'_>, f: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> Result<()> + Send,
    {
        self.delay().await;
        self.inner.list_get(at, f).await
    }
    async fn list_append_all<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        self.delay().await;
        self.inner.list_append_all(at, elements).await
    }
    async fn list_replace<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        self.delay().await;
        self.inner.list_replace(at, elements).await
    }
    async fn map_get<R, F>(&self, at: Target<'_>, user_key: &[u8], f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        self.delay().await;
        self.inner.map_get(at, user_key, f).await
    }
    async fn map_put(&self, at: Target<'_>, user_key: &[u8], value: &[u8]) -> Result<()> {
        self.delay().await;
        self.inner.map_put(at, user_key, value).await
    }
    async fn map_remove(&self, at: Target<'_>, user_key: &[u8]) -> Result<()> {
        self.delay().await;
        self.inner.map_remove(at, user_key).await
    }
    async fn map_for_each<F>(&self, at: Target<'_>, f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> Result<MapVisit> + Send,
    {
        self.delay().await;
        self.inner.map_for_each(at, f).await
    }
    async fn timer_register(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.delay().await;
        self.inner.timer_register(at, timestamp).await
    }
    async fn timer_delete(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.delay().await;
        self.inner.timer_delete(at, timestamp).await
    }
    async fn timer_peek(&self, state: StateId) -> Result<Option<i64>> {
        self.delay().await;
        self.inner.timer_peek(state).await
    }
    async fn timer_poll(&self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        self.delay().await;
        self.inner.timer_poll(state, time).await
    }
    async fn snapshot(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        self.delay().await;
        self.inner.snapshot(checkpoint_id, location, options).await
    }
    async fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> Result<()> {
        self.inner.notify_checkpoint_complete(checkpoint_id).await
    }
    async fn notify_checkpoint_aborted(&self, checkpoint_id: u64) -> Result<()> {
        self.inner.notify_checkpoint_aborted(checkpoint_id).await
    }
}

// ---------------------------------------------------------------- records in key order

const KEYS: u64 = 4;

#[derive(Debug, Clone)]
enum Work {
    Reduce { v: u8 },
    MapPut { uk: u8, v: u8 },
    MapRemove { uk: u8 },
    Timer { ts: i64 },
    TimerDelete { ts: i64 },
    ClearLog,
}

#[derive(Debug, Clone)]
enum Event {
    Record { key: u64, work: Work },
    Barrier,
    Watermark { w: i64 },
}

fn event() -> impl Strategy<Value = Event> {
    let work = prop_oneof![
        3 => any::<u8>().prop_map(|v| Work::Reduce { v }),
        2 => (0u8..3, any::<u8>()).prop_map(|(uk, v)| Work::MapPut { uk, v }),
        1 => (0u8..3).prop_map(|uk| Work::MapRemove { uk }),
        3 => (0i64..60).prop_map(|ts| Work::Timer { ts }),
        1 => (0i64..60).prop_map(|ts| Work::TimerDelete { ts }),
        1 => Just(Work::ClearLog),
    ];
    prop_oneof![
        20 => (0..KEYS, work).prop_map(|(key, work)| Event::Record { key, work }),
        1 => Just(Event::Barrier),
        2 => (0i64..60).prop_map(|w| Event::Watermark { w }),
    ]
}

/// What one key holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyView {
    /// Records and fired timers of the key, counted.
    count: Option<u64>,
    /// Each record's number and each fired timer's `-(timestamp + 1)`, in
    /// the order they ran.
    log: Vec<i64>,
    sum: Option<u64>,
    map: BTreeMap<u8, u8>,
    timers: BTreeSet<i64>,
}

type Model = BTreeMap<u64, KeyView>;

impl KeyView {
    fn bump(&mut self, entry: i64) {
        self.count = Some(self.count.unwrap_or(0) + 1);
        self.log.push(entry);
    }

    fn apply(&mut self, seq: i64, work: &Work) {
        self.bump(seq);
        match *work {
            Work::Reduce { v } => self.sum = Some(self.sum.unwrap_or(0) + u64::from(v)),
            Work::MapPut { uk, v } => {
                self.map.insert(uk, v);
            }
            Work::MapRemove { uk } => {
                self.map.remove(&uk);
            }
            Work::Timer { ts } => {
                self.timers.insert(ts);
            }
            Work::TimerDelete { ts } => {
                self.timers.remove(&ts);
            }
            Work::ClearLog => self.log.clear(),
        }
    }

    /// Fires the key's timers due at `w` as a synchronous poll loop does.
    fn fire(&mut self, w: i64) {
        while let Some(ts) = self.timers.first().copied().filter(|&t| t <= w) {
            self.timers.remove(&ts);
            self.on_timer(ts);
        }
    }

    fn on_timer(&mut self, ts: i64) {
        self.bump(-(ts + 1));
        if ts % 4 == 0 && ts > 0 {
            self.timers.insert(ts - 1);
        }
        if ts % 4 == 1 {
            self.timers.remove(&(ts + 2));
        }
    }
}

#[derive(Clone)]
struct States {
    count: ValueState<u64>,
    log: ListState<i64>,
    sum: ReducingState<u64>,
    map: MapState<u8, u8>,
    timers: TimerService,
}

/// Registers the states through `register`.
macro_rules! states {
    ($register:expr) => {
        States {
            count: $register(ValueStateDescriptor::new("count")),
            log: $register(ListStateDescriptor::new("log")),
            sum: $register(ReducingStateDescriptor::new("sum", |a: &u64, b: &u64| a + b)),
            map: $register(MapStateDescriptor::new("map")),
            timers: $register(TimerServiceDescriptor::event_time("timers")),
        }
    };
}

/// Everything `b` holds, per key (drains its timers).
fn dump(b: &mut HeapBackend<u64>, s: &States) -> Model {
    let mut out = Model::new();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        out.insert(
            k,
            KeyView {
                count: b.value(&s.count).unwrap(),
                log: b.list(&s.log).unwrap(),
                sum: b.reduced(&s.sum).unwrap(),
                map: b.map_entries(&s.map).unwrap().into_iter().collect(),
                timers: BTreeSet::new(),
            },
        );
    }
    for t in s.timers.advance(b, i64::MAX).unwrap() {
        out.get_mut(&t.key).unwrap().timers.insert(t.timestamp);
    }
    out
}

type Backend = Jittered<SyncAsAsync<HeapBackend<u64>>>;

/// A record: checks it sees the count the records of its key before it
/// left, then does its work.
async fn record(ctx: RecordCtx<Backend>, s: &States, seq: i64, expect: Option<u64>, work: Work) -> Result<()> {
    let n = ctx.value(&s.count).await?;
    if n != expect {
        return Err(Error::internal(format!(
            "record {seq} of {} saw count {n:?}, not {expect:?}",
            ctx.key()
        )));
    }
    ctx.update(&s.count, n.unwrap_or(0) + 1).await?;
    ctx.append(&s.log, seq).await?;
    match work {
        Work::Reduce { v } => ctx.reduce(&s.sum, u64::from(v)).await,
        Work::MapPut { uk, v } => ctx.map_put(&s.map, uk, v).await,
        Work::MapRemove { uk } => ctx.map_remove(&s.map, &uk).await,
        Work::Timer { ts } => ctx.register_timer(&s.timers, ts, &VoidNamespace).await,
        Work::TimerDelete { ts } => ctx.delete_timer(&s.timers, ts, &VoidNamespace).await,
        Work::ClearLog => ctx.clear(&s.log).await,
    }
}

/// A fired timer: the model's `on_timer`.
async fn on_timer(ctx: RecordCtx<Backend>, s: &States, ts: i64) -> Result<()> {
    let n = ctx.value(&s.count).await?.unwrap_or(0);
    ctx.update(&s.count, n + 1).await?;
    ctx.append(&s.log, -(ts + 1)).await?;
    if ts % 4 == 0 && ts > 0 {
        ctx.register_timer(&s.timers, ts - 1, &VoidNamespace).await?;
    }
    if ts % 4 == 1 {
        ctx.delete_timer(&s.timers, ts + 2, &VoidNamespace).await?;
    }
    Ok(())
}

async fn records_in_key_order(events: Vec<Event>, max_in_flight: usize, seed: u64, max_yields: u64) {
    let clock = ManualClock::new(1_000);
    let heap = HeapBackend::new(config(&clock)).unwrap();
    let backend = Arc::new(Jittered::new(SyncAsAsync::new(heap), seed, max_yields));
    let s = states!(|d| backend.register(d).unwrap());
    let storage = CheckpointStorage::in_memory("async-prop");
    let mut model: Model = (0..KEYS).map(|k| (k, KeyView::default())).collect();
    let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), max_in_flight).unwrap();
    let mut checkpoint = 0;
    for (seq, event) in events.into_iter().enumerate() {
        match event {
            Event::Record { key, work } => {
                let view = model.get_mut(&key).unwrap();
                let expect = view.count;
                view.apply(seq as i64, &work);
                let s = &s;
                executor
                    .submit(&key, move |ctx| record(ctx, s, seq as i64, expect, work))
                    .await
                    .unwrap();
                assert!(executor.in_flight() <= max_in_flight);
            }
            Event::Barrier => {
                checkpoint += 1;
                let location = storage.init_checkpoint(checkpoint).await.unwrap();
                let pending = executor
                    .snapshot(checkpoint, location, SnapshotOptions::checkpoint())
                    .await
                    .unwrap();
                assert_eq!(executor.in_flight(), 0);
                let result = pending.await.unwrap();
                let mut restored = HeapBackend::restore(config(&clock), &[result.handle], &InlineReader)
                    .await
                    .unwrap();
                let rs = states!(|d| restored.register(d).unwrap());
                assert_eq!(dump(&mut restored, &rs), model, "checkpoint {checkpoint}");
            }
            Event::Watermark { w } => {
                let s = &s;
                executor
                    .advance_watermark(&s.timers, w, move |timer, ctx| on_timer(ctx, s, timer.timestamp))
                    .await
                    .unwrap();
                assert_eq!(executor.in_flight(), 0);
                for view in model.values_mut() {
                    view.fire(w);
                }
            }
        }
    }
    executor.drain().await.unwrap();
    // The live backend, through the asynchronous face and the synchronous one.
    for k in 0..KEYS {
        let ctx = RecordCtx::for_key(Arc::clone(&backend), &k).unwrap();
        let view = &model[&k];
        assert_eq!(ctx.value(&s.count).await.unwrap(), view.count, "key {k}");
        assert_eq!(ctx.list(&s.log).await.unwrap(), view.log, "key {k}");
        assert_eq!(ctx.reduced(&s.sum).await.unwrap(), view.sum, "key {k}");
    }
    drop(executor);
    let mut heap = Arc::into_inner(backend).unwrap().inner.into_inner().unwrap();
    let hs = states!(|d| heap.register(d).unwrap());
    assert_eq!(dump(&mut heap, &hs), model, "at the end");
}

// ---------------------------------------------------------------- one face against the other

#[derive(Debug, Clone)]
enum Op {
    Update {
        k: u64,
        v: u8,
        ttl: bool,
    },
    Value {
        k: u64,
        ttl: bool,
    },
    Clear {
        k: u64,
        ttl: bool,
    },
    Append {
        k: u64,
        ns: u8,
        e: u8,
        ttl: bool,
    },
    AppendAll {
        k: u64,
        ns: u8,
        es: Vec<u8>,
        ttl: bool,
    },
    UpdateList {
        k: u64,
        ns: u8,
        es: Vec<u8>,
        ttl: bool,
    },
    List {
        k: u64,
        ns: u8,
        ttl: bool,
    },
    ClearList {
        k: u64,
        ns: u8,
        ttl: bool,
    },
    MergeLists {
        k: u64,
        target: u8,
        sources: Vec<u8>,
        ttl: bool,
    },
    MapPut {
        k: u64,
        uk: u8,
        v: u8,
        ttl: bool,
    },
    MapPutAll {
        k: u64,
        entries: Vec<(u8, u8)>,
        ttl: bool,
    },
    MapGet {
        k: u64,
        uk: u8,
        ttl: bool,
    },
    MapContains {
        k: u64,
        uk: u8,
        ttl: bool,
    },
    MapRemove {
        k: u64,
        uk: u8,
        ttl: bool,
    },
    MapEntries {
        k: u64,
        ttl: bool,
    },
    MapKeys {
        k: u64,
        ttl: bool,
    },
    MapValues {
        k: u64,
        ttl: bool,
    },
    MapIsEmpty {
        k: u64,
        ttl: bool,
    },
    Reduce {
        k: u64,
        ns: u8,
        v: u8,
    },
    Reduced {
        k: u64,
        ns: u8,
    },
    MergeReduced {
        k: u64,
        target: u8,
        sources: Vec<u8>,
    },
    Aggregate {
        k: u64,
        ns: u8,
        v: u8,
    },
    Aggregated {
        k: u64,
        ns: u8,
    },
    MergeAggregated {
        k: u64,
        target: u8,
        sources: Vec<u8>,
    },
    RegisterTimer {
        k: u64,
        ts: i64,
        ns: u8,
    },
    DeleteTimer {
        k: u64,
        ts: i64,
        ns: u8,
    },
    Fire {
        time: i64,
    },
    Advance {
        ms: u64,
    },
    /// A handle registered with a third backend.
    Foreign {
        k: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..4u64;
    let ns = 0..3u8;
    let es = proptest::collection::vec(any::<u8>(), 0..4);
    let sources = proptest::collection::vec(0..3u8, 0..3);
    let t = any::<bool>();
    prop_oneof![
        (k.clone(), any::<u8>(), t).prop_map(|(k, v, ttl)| Op::Update { k, v, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::Value { k, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::Clear { k, ttl }),
        (k.clone(), ns.clone(), any::<u8>(), t).prop_map(|(k, ns, e, ttl)| Op::Append { k, ns, e, ttl }),
        (k.clone(), ns.clone(), es.clone(), t).prop_map(|(k, ns, es, ttl)| Op::AppendAll { k, ns, es, ttl }),
        (k.clone(), ns.clone(), es, t).prop_map(|(k, ns, es, ttl)| Op::UpdateList { k, ns, es, ttl }),
        (k.clone(), ns.clone(), t).prop_map(|(k, ns, ttl)| Op::List { k, ns, ttl }),
        (k.clone(), ns.clone(), t).prop_map(|(k, ns, ttl)| Op::ClearList { k, ns, ttl }),
        (k.clone(), ns.clone(), sources.clone(), t).prop_map(|(k, target, sources, ttl)| Op::MergeLists {
            k,
            target,
            sources,
            ttl
        }),
        (k.clone(), 0..4u8, any::<u8>(), t).prop_map(|(k, uk, v, ttl)| Op::MapPut { k, uk, v, ttl }),
        (k.clone(), proptest::collection::vec((0..4u8, any::<u8>()), 0..4), t)
            .prop_map(|(k, entries, ttl)| Op::MapPutAll { k, entries, ttl }),
        (k.clone(), 0..4u8, t).prop_map(|(k, uk, ttl)| Op::MapGet { k, uk, ttl }),
        (k.clone(), 0..4u8, t).prop_map(|(k, uk, ttl)| Op::MapContains { k, uk, ttl }),
        (k.clone(), 0..4u8, t).prop_map(|(k, uk, ttl)| Op::MapRemove { k, uk, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::MapEntries { k, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::MapKeys { k, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::MapValues { k, ttl }),
        (k.clone(), t).prop_map(|(k, ttl)| Op::MapIsEmpty { k, ttl }),
        (k.clone(), ns.clone(), any::<u8>()).prop_map(|(k, ns, v)| Op::Reduce { k, ns, v }),
        (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::Reduced { k, ns }),
        (k.clone(), ns.clone(), sources.clone()).prop_map(|(k, target, sources)| Op::MergeReduced {
            k,
            target,
            sources
        }),
        (k.clone(), ns.clone(), any::<u8>()).prop_map(|(k, ns, v)| Op::Aggregate { k, ns, v }),
        (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::Aggregated { k, ns }),
        (k.clone(), ns.clone(), sources).prop_map(|(k, target, sources)| Op::MergeAggregated { k, target, sources }),
        (k.clone(), 0i64..50, ns.clone()).prop_map(|(k, ts, ns)| Op::RegisterTimer { k, ts, ns }),
        (k.clone(), 0i64..50, ns).prop_map(|(k, ts, ns)| Op::DeleteTimer { k, ts, ns }),
        (0i64..50).prop_map(|time| Op::Fire { time }),
        (0u64..120).prop_map(|ms| Op::Advance { ms }),
        k.prop_map(|k| Op::Foreign { k }),
    ]
}

/// Counts inputs and keeps the largest: an aggregate whose accumulator and
/// result differ in meaning from the input.
struct CountMax;

impl AggregateFunction<u8, (u64, u8), (u64, u8)> for CountMax {
    fn create_accumulator(&self) -> (u64, u8) {
        (0, 0)
    }
    fn add(&self, value: u8, acc: &mut (u64, u8)) {
        acc.0 += 1;
        acc.1 = acc.1.max(value);
    }
    fn get_result(&self, acc: &(u64, u8)) -> (u64, u8) {
        *acc
    }
    fn merge(&self, a: (u64, u8), b: (u64, u8)) -> (u64, u8) {
        (a.0 + b.0, a.1.max(b.1))
    }
}

/// TTL of 100 ms without background cleanup (which walks each backend's
/// hash tables in their own order): expiry shows only through reads.
fn ttl(update: TtlUpdateType, visibility: TtlStateVisibility) -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_millis(100))
        .with_update_type(update)
        .with_visibility(visibility)
        .disable_cleanup_in_background()
}

struct FaceStates {
    v: ValueState<u8>,
    vt: ValueState<u8>,
    l: ListState<u8, u8>,
    lt: ListState<u8, u8>,
    m: MapState<u8, u8>,
    mt: MapState<u8, u8>,
    r: ReducingState<u64, u8>,
    a: AggregatingState<u8, (u64, u8), (u64, u8), u8>,
    timers: TimerService<u8>,
}

/// Registers the states through `register`, one call per descriptor kind.
macro_rules! face_states {
    ($register:expr) => {{
        let read_write = TtlUpdateType::OnReadAndWrite;
        let create_write = TtlUpdateType::OnCreateAndWrite;
        let expired = TtlStateVisibility::ReturnExpiredIfNotCleanedUp;
        let never = TtlStateVisibility::NeverReturnExpired;
        FaceStates {
            v: $register(ValueStateDescriptor::<u8>::new("v").with_default(7)),
            vt: $register(ValueStateDescriptor::<u8>::new("vt").with_ttl(ttl(read_write, expired))),
            l: $register(ListStateDescriptor::<u8>::new("l").in_namespace::<u8>()),
            lt: $register(
                ListStateDescriptor::<u8>::new("lt")
                    .with_ttl(ttl(read_write, expired))
                    .in_namespace::<u8>(),
            ),
            m: $register(MapStateDescriptor::<u8, u8>::new("m")),
            mt: $register(MapStateDescriptor::<u8, u8>::new("mt").with_ttl(ttl(read_write, never))),
            r: $register(
                ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a * 3 + b)
                    .with_ttl(ttl(create_write, expired))
                    .in_namespace::<u8>(),
            ),
            a: $register(
                AggregatingStateDescriptor::new("a", CountMax)
                    .with_ttl(ttl(read_write, never))
                    .in_namespace::<u8>(),
            ),
            timers: $register(TimerServiceDescriptor::event_time("timers").in_namespace::<u8>()),
        }
    }};
}

impl FaceStates {
    /// The value, list and map state `op` acts on: with TTL or without.
    fn pick(&self, op: &Op) -> (&ValueState<u8>, &ListState<u8, u8>, &MapState<u8, u8>) {
        let ttl = match op {
            Op::Update { ttl, .. }
            | Op::Value { ttl, .. }
            | Op::Clear { ttl, .. }
            | Op::Append { ttl, .. }
            | Op::AppendAll { ttl, .. }
            | Op::UpdateList { ttl, .. }
            | Op::List { ttl, .. }
            | Op::ClearList { ttl, .. }
            | Op::MergeLists { ttl, .. }
            | Op::MapPut { ttl, .. }
            | Op::MapPutAll { ttl, .. }
            | Op::MapGet { ttl, .. }
            | Op::MapContains { ttl, .. }
            | Op::MapRemove { ttl, .. }
            | Op::MapEntries { ttl, .. }
            | Op::MapKeys { ttl, .. }
            | Op::MapValues { ttl, .. }
            | Op::MapIsEmpty { ttl, .. } => *ttl,
            _ => false,
        };
        if ttl {
            (&self.vt, &self.lt, &self.mt)
        } else {
            (&self.v, &self.l, &self.m)
        }
    }
}

/// What an operation returned, or its error's kind and text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Unit,
    Bool(bool),
    Byte(Option<u8>),
    Bytes(Vec<u8>),
    Entries(Vec<(u8, u8)>),
    Reduced(Option<u64>),
    Aggregated(Option<(u64, u8)>),
    Fired(Vec<(i64, u64, u8)>),
}

type Outcome = std::result::Result<Out, (ErrorKind, String)>;

fn outcome(r: Result<Out>) -> Outcome {
    r.map_err(|e| (e.kind(), e.to_string()))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn sync_op(b: &mut HeapBackend<u64>, s: &FaceStates, foreign: &ValueState<u8>, op: &Op) -> Result<Out> {
    let key = |b: &mut HeapBackend<u64>, k: u64| b.set_current_key(&k);
    let (v, l, m) = s.pick(op);
    Ok(match op {
        Op::Update { k, v: x, .. } => {
            key(b, *k)?;
            b.update(v, *x).map(|()| Out::Unit)?
        }
        Op::Value { k, .. } => {
            key(b, *k)?;
            Out::Byte(b.value(v)?)
        }
        Op::Clear { k, .. } => {
            key(b, *k)?;
            b.clear(v).map(|()| Out::Unit)?
        }
        Op::Append { k, ns, e, .. } => {
            key(b, *k)?;
            b.set_namespace(l, ns)?;
            b.append(l, *e).map(|()| Out::Unit)?
        }
        Op::AppendAll { k, ns, es, .. } => {
            key(b, *k)?;
            b.set_namespace(l, ns)?;
            b.append_all(l, es).map(|()| Out::Unit)?
        }
        Op::UpdateList { k, ns, es, .. } => {
            key(b, *k)?;
            b.set_namespace(l, ns)?;
            b.update_list(l, es).map(|()| Out::Unit)?
        }
        Op::List { k, ns, .. } => {
            key(b, *k)?;
            b.set_namespace(l, ns)?;
            Out::Bytes(b.list(l)?)
        }
        Op::ClearList { k, ns, .. } => {
            key(b, *k)?;
            b.set_namespace(l, ns)?;
            b.clear(l).map(|()| Out::Unit)?
        }
        Op::MergeLists { k, target, sources, .. } => {
            key(b, *k)?;
            b.merge_namespaces(l, target, sources)?;
            // The namespace is left at the target.
            Out::Bytes(b.list(l)?)
        }
        Op::MapPut { k, uk, v: x, .. } => {
            key(b, *k)?;
            b.map_put(m, *uk, *x).map(|()| Out::Unit)?
        }
        Op::MapPutAll { k, entries, .. } => {
            key(b, *k)?;
            b.map_put_all(m, entries.iter().copied()).map(|()| Out::Unit)?
        }
        Op::MapGet { k, uk, .. } => {
            key(b, *k)?;
            Out::Byte(b.map_get(m, uk)?)
        }
        Op::MapContains { k, uk, .. } => {
            key(b, *k)?;
            Out::Bool(b.map_contains(m, uk)?)
        }
        Op::MapRemove { k, uk, .. } => {
            key(b, *k)?;
            b.map_remove(m, uk).map(|()| Out::Unit)?
        }
        Op::MapEntries { k, .. } => {
            key(b, *k)?;
            Out::Entries(sorted(b.map_entries(m)?))
        }
        Op::MapKeys { k, .. } => {
            key(b, *k)?;
            Out::Bytes(sorted(b.map_keys(m)?))
        }
        Op::MapValues { k, .. } => {
            key(b, *k)?;
            Out::Bytes(sorted(b.map_values(m)?))
        }
        Op::MapIsEmpty { k, .. } => {
            key(b, *k)?;
            Out::Bool(b.map_is_empty(m)?)
        }
        Op::Reduce { k, ns, v: x } => {
            key(b, *k)?;
            b.set_namespace(&s.r, ns)?;
            b.reduce(&s.r, u64::from(*x)).map(|()| Out::Unit)?
        }
        Op::Reduced { k, ns } => {
            key(b, *k)?;
            b.set_namespace(&s.r, ns)?;
            Out::Reduced(b.reduced(&s.r)?)
        }
        Op::MergeReduced { k, target, sources } => {
            key(b, *k)?;
            b.merge_namespaces(&s.r, target, sources)?;
            Out::Reduced(b.reduced(&s.r)?)
        }
        Op::Aggregate { k, ns, v: x } => {
            key(b, *k)?;
            b.set_namespace(&s.a, ns)?;
            b.aggregate(&s.a, *x).map(|()| Out::Unit)?
        }
        Op::Aggregated { k, ns } => {
            key(b, *k)?;
            b.set_namespace(&s.a, ns)?;
            Out::Aggregated(b.aggregated(&s.a)?)
        }
        Op::MergeAggregated { k, target, sources } => {
            key(b, *k)?;
            b.merge_namespaces(&s.a, target, sources)?;
            Out::Aggregated(b.aggregated(&s.a)?)
        }
        Op::RegisterTimer { k, ts, ns } => {
            key(b, *k)?;
            s.timers.register(b, *ts, ns).map(|()| Out::Unit)?
        }
        Op::DeleteTimer { k, ts, ns } => {
            key(b, *k)?;
            s.timers.delete(b, *ts, ns).map(|()| Out::Unit)?
        }
        Op::Fire { time } => {
            let fired = s.timers.advance_watermark(b, *time)?;
            Out::Fired(fired.into_iter().map(|t| (t.timestamp, t.key, t.namespace)).collect())
        }
        Op::Advance { .. } => Out::Unit,
        Op::Foreign { k } => {
            key(b, *k)?;
            Out::Byte(b.value(foreign)?)
        }
    })
}

type Adapter = SyncAsAsync<HeapBackend<u64>>;

async fn async_op(b: &Arc<Adapter>, s: &FaceStates, foreign: &ValueState<u8>, op: &Op) -> Result<Out> {
    let ctx = |k: u64| RecordCtx::for_key(Arc::clone(b), &k);
    let (v, l, m) = s.pick(op);
    Ok(match op {
        Op::Update { k, v: x, .. } => ctx(*k)?.update(v, *x).await.map(|()| Out::Unit)?,
        Op::Value { k, .. } => Out::Byte(ctx(*k)?.value(v).await?),
        Op::Clear { k, .. } => ctx(*k)?.clear(v).await.map(|()| Out::Unit)?,
        Op::Append { k, ns, e, .. } => {
            let mut c = ctx(*k)?;
            c.set_namespace(l, ns)?;
            c.append(l, *e).await.map(|()| Out::Unit)?
        }
        Op::AppendAll { k, ns, es, .. } => {
            let mut c = ctx(*k)?;
            c.set_namespace(l, ns)?;
            c.append_all(l, es).await.map(|()| Out::Unit)?
        }
        Op::UpdateList { k, ns, es, .. } => {
            let mut c = ctx(*k)?;
            c.set_namespace(l, ns)?;
            c.update_list(l, es).await.map(|()| Out::Unit)?
        }
        Op::List { k, ns, .. } => {
            let mut c = ctx(*k)?;
            c.set_namespace(l, ns)?;
            Out::Bytes(c.list(l).await?)
        }
        Op::ClearList { k, ns, .. } => {
            let mut c = ctx(*k)?;
            c.set_namespace(l, ns)?;
            c.clear(l).await.map(|()| Out::Unit)?
        }
        Op::MergeLists { k, target, sources, .. } => {
            let mut c = ctx(*k)?;
            c.merge_namespaces(l, target, sources).await?;
            Out::Bytes(c.list(l).await?)
        }
        Op::MapPut { k, uk, v: x, .. } => ctx(*k)?.map_put(m, *uk, *x).await.map(|()| Out::Unit)?,
        Op::MapPutAll { k, entries, .. } => ctx(*k)?
            .map_put_all(m, entries.iter().copied())
            .await
            .map(|()| Out::Unit)?,
        Op::MapGet { k, uk, .. } => Out::Byte(ctx(*k)?.map_get(m, uk).await?),
        Op::MapContains { k, uk, .. } => Out::Bool(ctx(*k)?.map_contains(m, uk).await?),
        Op::MapRemove { k, uk, .. } => ctx(*k)?.map_remove(m, uk).await.map(|()| Out::Unit)?,
        Op::MapEntries { k, .. } => Out::Entries(sorted(ctx(*k)?.map_entries(m).await?)),
        Op::MapKeys { k, .. } => Out::Bytes(sorted(ctx(*k)?.map_keys(m).await?)),
        Op::MapValues { k, .. } => Out::Bytes(sorted(ctx(*k)?.map_values(m).await?)),
        Op::MapIsEmpty { k, .. } => Out::Bool(ctx(*k)?.map_is_empty(m).await?),
        Op::Reduce { k, ns, v: x } => {
            let mut c = ctx(*k)?;
            c.set_namespace(&s.r, ns)?;
            c.reduce(&s.r, u64::from(*x)).await.map(|()| Out::Unit)?
        }
        Op::Reduced { k, ns } => {
            let mut c = ctx(*k)?;
            c.set_namespace(&s.r, ns)?;
            Out::Reduced(c.reduced(&s.r).await?)
        }
        Op::MergeReduced { k, target, sources } => {
            let mut c = ctx(*k)?;
            c.merge_namespaces(&s.r, target, sources).await?;
            Out::Reduced(c.reduced(&s.r).await?)
        }
        Op::Aggregate { k, ns, v: x } => {
            let mut c = ctx(*k)?;
            c.set_namespace(&s.a, ns)?;
            c.aggregate(&s.a, *x).await.map(|()| Out::Unit)?
        }
        Op::Aggregated { k, ns } => {
            let mut c = ctx(*k)?;
            c.set_namespace(&s.a, ns)?;
            Out::Aggregated(c.aggregated(&s.a).await?)
        }
        Op::MergeAggregated { k, target, sources } => {
            let mut c = ctx(*k)?;
            c.merge_namespaces(&s.a, target, sources).await?;
            Out::Aggregated(c.aggregated(&s.a).await?)
        }
        Op::RegisterTimer { k, ts, ns } => ctx(*k)?.register_timer(&s.timers, *ts, ns).await.map(|()| Out::Unit)?,
        Op::DeleteTimer { k, ts, ns } => ctx(*k)?.delete_timer(&s.timers, *ts, ns).await.map(|()| Out::Unit)?,
        Op::Fire { time } => {
            // Timers fire through an executor; the order they start in is
            // the total order (no timer record here registers timers).
            let fired = Arc::new(Mutex::new(Vec::new()));
            let mut executor = KeyOrderedExecutor::new(Arc::clone(b), 4)?;
            let f = Arc::clone(&fired);
            executor
                .advance_watermark(&s.timers, *time, move |t, _ctx| {
                    f.lock().unwrap().push((t.timestamp, t.key, t.namespace));
                    async { Ok(()) }
                })
                .await?;
            let fired = fired.lock().unwrap().clone();
            Out::Fired(fired)
        }
        Op::Advance { .. } => Out::Unit,
        Op::Foreign { k } => Out::Byte(ctx(*k)?.value(foreign).await?),
    })
}

/// A stored entry: a value, a list's elements, or a map's sorted entries,
/// with their TTL stamps.
#[derive(Debug, PartialEq, Eq)]
enum Raw {
    Value(Option<Vec<u8>>),
    List(Vec<Vec<u8>>),
    Map(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Every stored byte of `b`'s states, and its timers (drained), in order.
fn raw_dump(b: &mut HeapBackend<u64>, s: &FaceStates) -> (Vec<Raw>, Vec<(i64, u64, u8)>) {
    let mut out = Vec::new();
    for k in 0..4u64 {
        b.set_current_key(&k).unwrap();
        for ns in 0..3u8 {
            b.set_namespace(&s.l, &ns).unwrap();
            b.set_namespace(&s.lt, &ns).unwrap();
            b.set_namespace(&s.r, &ns).unwrap();
            b.set_namespace(&s.a, &ns).unwrap();
            for id in [s.l.slot().id, s.lt.slot().id] {
                let mut list = Vec::new();
                b.raw_list_get(id, |e| {
                    list.push(e.to_vec());
                    Ok(())
                })
                .unwrap();
                out.push(Raw::List(list));
            }
            for id in [s.r.slot().id, s.a.slot().id] {
                out.push(Raw::Value(b.raw_value_get(id, |v| Ok(v.map(<[u8]>::to_vec))).unwrap()));
            }
        }
        for id in [s.v.slot().id, s.vt.slot().id] {
            out.push(Raw::Value(b.raw_value_get(id, |v| Ok(v.map(<[u8]>::to_vec))).unwrap()));
        }
        for id in [s.m.slot().id, s.mt.slot().id] {
            let mut map = Vec::new();
            b.raw_map_for_each(id, &mut |k, v| {
                map.push((k.to_vec(), v.to_vec()));
                Ok(MapVisit::Keep)
            })
            .unwrap();
            out.push(Raw::Map(sorted(map)));
        }
    }
    let timers = s
        .timers
        .advance(b, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|t| (t.timestamp, t.key, t.namespace))
        .collect();
    (out, timers)
}

async fn faces_agree(ops: Vec<Op>) {
    let clock = ManualClock::new(1_000);
    let mut sync = HeapBackend::new(config(&clock)).unwrap();
    let ss = face_states!(|d| sync.register(d).unwrap());
    let adapter = Arc::new(SyncAsAsync::new(HeapBackend::new(config(&clock)).unwrap()));
    let sa = face_states!(|d| adapter.register(d).unwrap());
    let mut other = HeapBackend::new(config(&clock)).unwrap();
    let foreign = other.register(ValueStateDescriptor::<u8>::new("foreign")).unwrap();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Advance { ms } = op {
            clock.advance(*ms);
            continue;
        }
        let want = outcome(sync_op(&mut sync, &ss, &foreign, op));
        let got = outcome(async_op(&adapter, &sa, &foreign, op).await);
        let (want, got) = match (want, got) {
            // Timers of one timestamp start in key order on one face, and in
            // key-group order on the other: compare them in one order.
            (Ok(Out::Fired(w)), Ok(Out::Fired(g))) => (Ok(Out::Fired(sorted(w))), Ok(Out::Fired(sorted(g)))),
            other => other,
        };
        assert_eq!(got, want, "operation {i}: {op:?}");
    }
    let mut inner = Arc::into_inner(adapter).unwrap().into_inner().unwrap();
    assert_eq!(raw_dump(&mut inner, &sa), raw_dump(&mut sync, &ss), "stored bytes");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn records_in_key_order_equal_a_sequential_model(
        events in proptest::collection::vec(event(), 1..120),
        max_in_flight in 1usize..6,
        seed in any::<u64>(),
        max_yields in 0u64..5,
    ) {
        run(records_in_key_order(events, max_in_flight, seed, max_yields));
    }

    #[test]
    fn the_async_face_equals_the_sync_face(ops in proptest::collection::vec(op(), 1..100)) {
        run(faces_agree(ops));
    }
}
