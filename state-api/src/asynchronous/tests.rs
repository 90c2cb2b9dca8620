//! The executor's ordering, bound, drain, timer and failure rules, over a
//! backend in memory whose requests complete after yielding, or once the
//! test releases them.

use std::collections::{BTreeSet, HashMap};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::channel::oneshot;

use super::*;
use crate::backend::{next_backend_id, BackendCapabilities, MapVisit, RawTimer};
use crate::checkpoint::CheckpointLocation;
use crate::descriptor::{StateDescriptor, StateId, StateRef, ValueStateDescriptor};
use crate::error::{Error, ErrorKind, Result};
use crate::keygroup::KeyGroupRange;
use crate::serializer::{default_serializer, SharedSerializer, VoidNamespace};
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
use crate::timer::TimerServiceDescriptor;
use crate::ttl::{ManualClock, SharedClock};

const MAX_PARALLELISM: u32 = 128;

/// Where a value lives: state, key, namespace.
type Slot = (StateId, Vec<u8>, Vec<u8>);
/// A timer: state, timestamp, key group, key, namespace.
type StoredTimer = (StateId, i64, u32, Vec<u8>, Vec<u8>);

/// Requests held until the test releases them.
#[derive(Default)]
struct Hold {
    on: bool,
    waiting: Vec<Waker>,
}

/// Values and timers in memory. Each request yields a pseudo-random number
/// of times (0 to `max_yields`) before it completes, waits while the
/// backend is held, and a write of the value [`FAILING`] fails.
struct Memory {
    id: u64,
    range: KeyGroupRange,
    keys: SharedSerializer<u64>,
    clock: SharedClock,
    states: AtomicUsize,
    values: Mutex<HashMap<Slot, Vec<u8>>>,
    timers: Mutex<BTreeSet<StoredTimer>>,
    max_yields: u64,
    rng: Mutex<u64>,
    hold: Mutex<Hold>,
    outstanding: AtomicUsize,
}

/// Writing this value fails with `Unavailable`.
const FAILING: u64 = 666;

impl Memory {
    fn new(range: KeyGroupRange, max_yields: u64) -> Arc<Self> {
        Arc::new(Memory {
            id: next_backend_id(),
            range,
            keys: default_serializer::<u64>(),
            clock: ManualClock::new(1_000),
            states: AtomicUsize::new(0),
            values: Mutex::default(),
            timers: Mutex::default(),
            max_yields,
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            hold: Mutex::default(),
            outstanding: AtomicUsize::new(0),
        })
    }

    fn all(max_yields: u64) -> Arc<Self> {
        Self::new(KeyGroupRange::all(MAX_PARALLELISM).unwrap(), max_yields)
    }

    /// From now on requests wait for [`release`](Self::release).
    fn hold(&self) {
        self.hold.lock().unwrap().on = true;
    }

    /// Completes every held request, and lets later ones through.
    fn release(&self) {
        let waiting = {
            let mut hold = self.hold.lock().unwrap();
            hold.on = false;
            std::mem::take(&mut hold.waiting)
        };
        let n = waiting.len();
        for w in waiting {
            w.wake();
        }
        self.outstanding.fetch_sub(n, Ordering::SeqCst);
    }

    fn yields(&self) -> u64 {
        if self.max_yields == 0 {
            return 0;
        }
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % (self.max_yields + 1)
    }

    /// Runs `op` once the request's yields are done and no hold is on.
    async fn request<R>(&self, op: impl FnOnce() -> Result<R>) -> Result<R> {
        for _ in 0..self.yields() {
            yield_now().await;
        }
        let mut waiting = false;
        poll_fn(|cx| {
            let mut hold = self.hold.lock().unwrap();
            if !hold.on {
                return Poll::Ready(());
            }
            if !waiting {
                waiting = true;
                self.outstanding.fetch_add(1, Ordering::SeqCst);
                hold.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        op()
    }

    fn slot(at: Target<'_>) -> Slot {
        (at.state, at.key.bytes().to_vec(), at.namespace.to_vec())
    }
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

fn unsupported<T>() -> Result<T> {
    Err(Error::unsupported("the test backend stores values and timers only"))
}

impl AsyncKeyedStateBackend for Memory {
    type Key = u64;

    fn backend_id(&self) -> u64 {
        self.id
    }
    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }
    fn max_parallelism(&self) -> u32 {
        MAX_PARALLELISM
    }
    fn key_serializer(&self) -> &SharedSerializer<u64> {
        &self.keys
    }
    fn clock(&self) -> &SharedClock {
        &self.clock
    }
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::none().with_timers()
    }
    fn register<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle> {
        let id = self.states.fetch_add(1, Ordering::SeqCst) as StateId;
        Ok(descriptor.into_handle(StateRef { backend: self.id, id }))
    }
    fn has_outstanding_requests(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
    }

    async fn value_get<R, F>(&self, at: Target<'_>, f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        self.request(|| f(self.values.lock().unwrap().get(&Self::slot(at)).map(Vec::as_slice)))
            .await
    }
    async fn value_put(&self, at: Target<'_>, value: &[u8]) -> Result<()> {
        self.request(|| {
            let mut failing = Vec::new();
            default_serializer::<u64>().serialize(&FAILING, &mut failing)?;
            if value == failing {
                return Err(Error::new(ErrorKind::Unavailable, "disk on fire"));
            }
            self.values.lock().unwrap().insert(Self::slot(at), value.to_vec());
            Ok(())
        })
        .await
    }
    async fn clear(&self, at: Target<'_>) -> Result<()> {
        self.request(|| {
            self.values.lock().unwrap().remove(&Self::slot(at));
            Ok(())
        })
        .await
    }
    async fn list_get<F>(&self, _: Target<'_>, _: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> Result<()> + Send,
    {
        unsupported()
    }
    async fn list_append_all<E>(&self, _: Target<'_>, _: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        unsupported()
    }
    async fn list_replace<E>(&self, _: Target<'_>, _: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        unsupported()
    }
    async fn map_get<R, F>(&self, _: Target<'_>, _: &[u8], _: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        unsupported()
    }
    async fn map_put(&self, _: Target<'_>, _: &[u8], _: &[u8]) -> Result<()> {
        unsupported()
    }
    async fn map_remove(&self, _: Target<'_>, _: &[u8]) -> Result<()> {
        unsupported()
    }
    async fn map_for_each<F>(&self, _: Target<'_>, _: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> Result<MapVisit> + Send,
    {
        unsupported()
    }
    async fn timer_register(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.request(|| {
            let (state, key, ns) = Self::slot(at);
            let timer = (state, timestamp, at.key.key_group(), key, ns);
            self.timers.lock().unwrap().insert(timer);
            Ok(())
        })
        .await
    }
    async fn timer_delete(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.request(|| {
            let (state, key, ns) = Self::slot(at);
            let timer = (state, timestamp, at.key.key_group(), key, ns);
            self.timers.lock().unwrap().remove(&timer);
            Ok(())
        })
        .await
    }
    async fn timer_peek(&self, state: StateId) -> Result<Option<i64>> {
        self.request(|| {
            let timers = self.timers.lock().unwrap();
            Ok(timers.iter().find(|t| t.0 == state).map(|t| t.1))
        })
        .await
    }
    async fn timer_poll(&self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        self.request(|| {
            let mut timers = self.timers.lock().unwrap();
            let first = timers.iter().find(|t| t.0 == state && t.1 <= time).cloned();
            Ok(first.map(|t| {
                timers.remove(&t);
                (t.1, t.3, t.4)
            }))
        })
        .await
    }
    async fn snapshot(&self, _: u64, _: Arc<CheckpointLocation>, _: SnapshotOptions) -> Result<PendingSnapshot> {
        unsupported()
    }
    async fn notify_checkpoint_complete(&self, _: u64) -> Result<()> {
        Ok(())
    }
    async fn notify_checkpoint_aborted(&self, _: u64) -> Result<()> {
        Ok(())
    }
}

/// What the records did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(u64, usize),
    End(u64, usize),
    Watermark,
}

type Log = Arc<Mutex<Vec<Event>>>;

fn log(log: &Log, e: Event) {
    log.lock().unwrap().push(e);
}

fn key_of(key: u64) -> String {
    let b = Memory::all(0);
    KeyRef::new(&*b, &key).unwrap().to_string()
}

/// Runs a test, failing it instead of hanging if it does not finish.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("the test hung")
}

#[tokio::test]
async fn records_of_one_key_run_one_at_a_time_in_arrival_order() {
    within(async {
        let backend = Memory::all(3);
        let seen = backend
            .register(ValueStateDescriptor::<Vec<usize>>::new("seen"))
            .unwrap();
        let events = Log::default();
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 8).unwrap();
        let mut submitted: HashMap<u64, Vec<usize>> = HashMap::new();
        for i in 0..300usize {
            let key = (i as u64 * 7 + i as u64 / 5) % 4;
            submitted.entry(key).or_default().push(i);
            let (seen, events) = (&seen, Arc::clone(&events));
            executor
                .submit(&key, move |ctx| async move {
                    log(&events, Event::Start(key, i));
                    // A read-modify-write across several requests, each
                    // completing after its own number of yields.
                    let mut list = ctx.value(seen).await?.unwrap_or_default();
                    list.push(i);
                    ctx.update(seen, &list).await?;
                    ctx.value(seen).await?;
                    log(&events, Event::End(key, i));
                    Ok(())
                })
                .await
                .unwrap();
            assert!(executor.in_flight() <= 8);
        }
        executor.drain().await.unwrap();
        assert_eq!(executor.in_flight(), 0);

        // Per key: start, end, start, end, ... in submission order.
        let events = events.lock().unwrap().clone();
        for (key, order) in &submitted {
            let mine: Vec<Event> = events
                .iter()
                .copied()
                .filter(|e| matches!(e, Event::Start(k, _) | Event::End(k, _) if k == key))
                .collect();
            let want: Vec<Event> = order
                .iter()
                .flat_map(|&i| [Event::Start(*key, i), Event::End(*key, i)])
                .collect();
            assert_eq!(mine, want, "records of key {key}");
            let ctx = RecordCtx::for_key(Arc::clone(&backend), key).unwrap();
            assert_eq!(
                ctx.value(&seen).await.unwrap().as_ref(),
                Some(order),
                "state of key {key}"
            );
        }
        // Records of different keys overlapped.
        let mut running = 0usize;
        let mut most = 0;
        for e in &events {
            match e {
                Event::Start(..) => running += 1,
                Event::End(..) => running -= 1,
                Event::Watermark => {}
            }
            most = most.max(running);
        }
        assert!(most > 1, "records of different keys never overlapped");
    })
    .await
}

#[tokio::test]
async fn records_of_different_keys_run_concurrently() {
    within(async {
        let backend = Memory::all(0);
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 2).unwrap();
        let (tx, rx) = oneshot::channel::<u32>();
        let got = Arc::new(Mutex::new(None));
        let got2 = Arc::clone(&got);
        // Key 1's record waits for key 2's, submitted after it: only if
        // both run at once can either finish.
        executor
            .submit(&1, move |_ctx| async move {
                *got2.lock().unwrap() = Some(rx.await.map_err(|_| Error::internal("dropped"))?);
                Ok(())
            })
            .await
            .unwrap();
        executor
            .submit(&2, move |_ctx| async move {
                tx.send(42).map_err(|_| Error::internal("receiver gone"))
            })
            .await
            .unwrap();
        executor.drain().await.unwrap();
        assert_eq!(*got.lock().unwrap(), Some(42));
    })
    .await
}

#[tokio::test]
async fn a_record_that_can_never_make_progress_is_an_error_naming_its_key() {
    within(async {
        let backend = Memory::all(1);
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 4).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        // Key 7's first record waits for its second, which cannot start
        // before the first finishes.
        executor
            .submit(&7, move |_ctx| async move {
                rx.await.map_err(|_| Error::internal("dropped"))
            })
            .await
            .unwrap();
        executor
            .submit(&7, move |_ctx| async move {
                tx.send(()).map_err(|_| Error::internal("gone"))
            })
            .await
            .unwrap();
        let e = executor.drain().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(e.message().contains(&key_of(7)), "{e}");
        assert!(e.message().contains("can never make progress"), "{e}");
        // It poisons the executor.
        let later = executor.drain().await.unwrap_err();
        assert!(later.message().contains("can never make progress"), "{later}");

        // A record waiting for nothing at all.
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 4).unwrap();
        executor
            .submit(&3, |_ctx| std::future::pending::<Result<()>>())
            .await
            .unwrap();
        let e = executor.drain().await.unwrap_err();
        assert!(e.message().contains(&key_of(3)), "{e}");
    })
    .await
}

#[tokio::test]
async fn submit_waits_while_max_in_flight_records_are_unfinished() {
    within(async {
        let backend = Memory::all(0);
        let v = backend.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 2).unwrap();
        let finished = Arc::new(AtomicUsize::new(0));
        let record = |n: u64| {
            let (v, finished) = (v.clone(), Arc::clone(&finished));
            move |ctx: RecordCtx<Memory>| async move {
                ctx.update(&v, n).await?;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        };
        backend.hold();
        executor.submit(&1, record(1)).await.unwrap();
        executor.submit(&2, record(2)).await.unwrap();
        assert_eq!(executor.in_flight(), 2);
        {
            // A third record waits for room, whatever its key.
            let mut third = pin!(executor.submit(&3, record(3)));
            for _ in 0..10 {
                assert!(futures::poll!(third.as_mut()).is_pending(), "admitted beyond the bound");
                yield_now().await;
            }
            assert_eq!(finished.load(Ordering::SeqCst), 0);
            backend.release();
            third.await.unwrap();
        }
        assert!(executor.in_flight() <= 2);
        executor.drain().await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    })
    .await
}

#[tokio::test]
async fn drain_returns_once_every_record_submitted_before_it_has_finished() {
    within(async {
        let backend = Memory::all(2);
        let v = backend.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 100).unwrap();
        let finished = Arc::new(AtomicUsize::new(0));
        backend.hold();
        for i in 0..20u64 {
            let (v, finished) = (v.clone(), Arc::clone(&finished));
            executor
                .submit(&(i % 3), move |ctx| async move {
                    let n = ctx.value(&v).await?.unwrap_or(0);
                    ctx.update(&v, n + i).await?;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
                .unwrap();
        }
        {
            let mut drain = pin!(executor.drain());
            for _ in 0..10 {
                assert!(futures::poll!(drain.as_mut()).is_pending(), "drained with records held");
                yield_now().await;
            }
            backend.release();
            drain.await.unwrap();
        }
        assert_eq!(finished.load(Ordering::SeqCst), 20);
        assert_eq!(executor.in_flight(), 0);
        for key in 0..3u64 {
            let ctx = RecordCtx::for_key(Arc::clone(&backend), &key).unwrap();
            let want: u64 = (0..20).filter(|i| i % 3 == key).sum();
            assert_eq!(ctx.value(&v).await.unwrap(), Some(want));
        }
    })
    .await
}

#[tokio::test]
async fn a_watermark_fires_due_timers_beyond_the_bound_after_earlier_records_and_returns_after_them() {
    within(async {
        let backend = Memory::all(2);
        let timers = backend.register(TimerServiceDescriptor::event_time("t")).unwrap();
        let events = Log::default();
        // One record in flight at most: the timers below only finish if
        // they all run at once.
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 1).unwrap();
        for key in 0..3u64 {
            let (timers, events) = (&timers, Arc::clone(&events));
            executor
                .submit(&key, move |ctx| async move {
                    log(&events, Event::Start(key, 0));
                    ctx.register_timer(timers, 10 + key as i64, &VoidNamespace).await?;
                    ctx.register_timer(timers, 100, &VoidNamespace).await?; // not due
                    log(&events, Event::End(key, 0));
                    Ok(())
                })
                .await
                .unwrap();
        }
        // Each due timer waits for the one fired after it (the last waits
        // for nobody).
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel::<()>();
            senders.push(Some(tx));
            receivers.push(Some(rx));
        }
        let fired = Arc::new(Mutex::new(Vec::new()));
        let on_timer = |timer: crate::Timer<u64>, _ctx: RecordCtx<Memory>| {
            let i = timer.key as usize;
            let wait = if i < 2 { receivers[i + 1].take() } else { None };
            let release = senders[i].take();
            let (events, fired) = (Arc::clone(&events), Arc::clone(&fired));
            async move {
                log(&events, Event::Start(timer.key, 1));
                fired.lock().unwrap().push(timer.timestamp);
                if let Some(tx) = release {
                    let _ = tx.send(());
                }
                if let Some(rx) = wait {
                    rx.await.map_err(|_| Error::internal("dropped"))?;
                }
                log(&events, Event::End(timer.key, 1));
                Ok(())
            }
        };
        executor.advance_watermark(&timers, 50, on_timer).await.unwrap();
        log(&events, Event::Watermark);
        assert_eq!(*fired.lock().unwrap(), vec![10, 11, 12], "due timers, in order");
        let events = events.lock().unwrap().clone();
        let first_timer = events.iter().position(|e| matches!(e, Event::Start(_, 1))).unwrap();
        let last_record = events.iter().rposition(|e| matches!(e, Event::End(_, 0))).unwrap();
        assert!(
            last_record < first_timer,
            "a timer fired before an earlier record finished: {events:?}"
        );
        assert_eq!(events.last(), Some(&Event::Watermark), "{events:?}");
        assert_eq!(events.iter().filter(|e| matches!(e, Event::End(_, 1))).count(), 3);
        assert_eq!(executor.next_timestamp(&timers).await.unwrap(), Some(100));
    })
    .await
}

#[tokio::test]
async fn timers_registered_by_fired_timers_fire_before_the_watermark_returns() {
    within(async {
        let backend = Memory::all(1);
        let timers = backend.register(TimerServiceDescriptor::event_time("t")).unwrap();
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 4).unwrap();
        let t = &timers;
        executor
            .submit(
                &5,
                move |ctx| async move { ctx.register_timer(t, 40, &VoidNamespace).await },
            )
            .await
            .unwrap();
        let fired = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::clone(&fired);
        executor
            .advance_watermark(&timers, 40, move |timer, ctx| {
                let f = Arc::clone(&f);
                async move {
                    f.lock().unwrap().push(timer.timestamp);
                    // Each fired timer registers an earlier one, down to 37.
                    if timer.timestamp > 37 {
                        ctx.register_timer(t, timer.timestamp - 1, &VoidNamespace).await?;
                    }
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!(*fired.lock().unwrap(), vec![40, 39, 38, 37]);
        assert_eq!(executor.next_timestamp(&timers).await.unwrap(), None);
        // The event-time service does not follow processing time.
        let e = executor
            .advance_processing_time(&timers, 50, |_, _| async { Ok(()) })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    })
    .await
}

#[tokio::test]
async fn a_fired_timer_sees_what_the_timers_of_its_key_before_it_registered_and_deleted() {
    within(async {
        for max_yields in [0, 1, 3] {
            let backend = Memory::all(max_yields);
            let timers = backend.register(TimerServiceDescriptor::event_time("t")).unwrap();
            let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 4).unwrap();
            let t = &timers;
            for (key, stamps) in [(5u64, vec![20, 30, 40]), (6, vec![20, 30])] {
                executor
                    .submit(&key, move |ctx| async move {
                        for ts in stamps {
                            ctx.register_timer(t, ts, &VoidNamespace).await?;
                        }
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
            let fired = Arc::new(Mutex::new(Vec::new()));
            let f = Arc::clone(&fired);
            executor
                .advance_watermark(&timers, 50, move |timer, ctx| {
                    let f = Arc::clone(&f);
                    async move {
                        f.lock().unwrap().push((timer.key, timer.timestamp));
                        match (timer.key, timer.timestamp) {
                            // A due timer of the key deleted, an earlier one registered.
                            (5, 20) => {
                                ctx.delete_timer(t, 30, &VoidNamespace).await?;
                                ctx.register_timer(t, 25, &VoidNamespace).await?;
                            }
                            (6, 20) => ctx.register_timer(t, 10, &VoidNamespace).await?,
                            _ => {}
                        }
                        Ok(())
                    }
                })
                .await
                .unwrap();
            // What a synchronous poll loop fires, per key.
            let fired = fired.lock().unwrap().clone();
            for (key, want) in [(5u64, vec![20, 25, 40]), (6, vec![20, 10, 30])] {
                let got: Vec<i64> = fired.iter().filter(|f| f.0 == key).map(|f| f.1).collect();
                assert_eq!(got, want, "key {key}, up to {max_yields} yields per request");
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_first_failure_poisons_the_executor_and_every_later_call_names_it() {
    within(async {
        let backend = Memory::all(2);
        let v = backend.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let timers = backend.register(TimerServiceDescriptor::event_time("t")).unwrap();
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 10).unwrap();
        let ran_after = Arc::new(AtomicUsize::new(0));
        let write = |n: u64| {
            let (v, ran_after) = (v.clone(), Arc::clone(&ran_after));
            move |ctx: RecordCtx<Memory>| async move {
                ctx.update(&v, n).await?;
                if n != FAILING {
                    ran_after.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        };
        backend.hold();
        executor.submit(&3, write(FAILING)).await.unwrap();
        // Queued behind the failing record: never runs.
        executor.submit(&3, write(1)).await.unwrap();
        backend.release();
        let first = executor.drain().await.unwrap_err();
        assert_eq!(first.kind(), ErrorKind::Unavailable, "{first}");
        assert!(first.message().contains("disk on fire"), "{first}");
        assert!(first.message().contains(&key_of(3)), "{first}");
        assert_eq!(ran_after.load(Ordering::SeqCst), 0);
        assert_eq!(executor.in_flight(), 0);

        let later = [
            executor.submit(&4, write(2)).await.unwrap_err(),
            executor.drain().await.unwrap_err(),
            executor
                .advance_watermark(&timers, 10, |_, _| async { Ok(()) })
                .await
                .unwrap_err(),
            executor.next_timestamp(&timers).await.unwrap_err(),
        ];
        for e in later {
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            assert!(e.message().contains("no more work"), "{e}");
            assert!(e.message().contains("disk on fire"), "{e}");
            assert!(e.message().contains(&key_of(3)), "{e}");
        }
        assert_eq!(ran_after.load(Ordering::SeqCst), 0, "a record ran after the failure");
    })
    .await
}

#[tokio::test]
async fn a_key_outside_the_key_groups_or_a_zero_bound_is_refused_without_poisoning() {
    within(async {
        assert_eq!(
            KeyOrderedExecutor::new(Memory::all(0), 0).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        let backend = Memory::new(KeyGroupRange::for_operator(MAX_PARALLELISM, 2, 0).unwrap(), 0);
        let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 4).unwrap();
        let (mine, other): (Vec<u64>, Vec<u64>) = (0..100u64).partition(|k| {
            let kg = KeyRef::new(&*Memory::all(0), k).unwrap().key_group();
            backend.key_group_range().contains(kg)
        });
        let e = executor.submit(&other[0], |_| async { Ok(()) }).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(e.message().contains("outside this backend's key groups"), "{e}");
        executor.submit(&mine[0], |_| async { Ok(()) }).await.unwrap();
        executor.drain().await.unwrap();
    })
    .await
}

#[test]
fn record_and_executor_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let backend = Memory::all(0);
    let v = backend.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let timers = backend.register(TimerServiceDescriptor::event_time("t")).unwrap();
    let ctx = RecordCtx::for_key(Arc::clone(&backend), &1).unwrap();
    send(&ctx.value(&v));
    send(&ctx.update(&v, 1));
    send(&ctx.register_timer(&timers, 1, &VoidNamespace));
    let mut executor = KeyOrderedExecutor::new(backend, 1).unwrap();
    send(&executor.submit(&1, |_| async { Ok(()) }));
    send(&executor.drain());
    send(&executor.advance_watermark(&timers, 1, |_, _| async { Ok(()) }));
    send(&executor);
}
