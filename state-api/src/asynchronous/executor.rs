//! Runs records in key order on the engine's task.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;

use crate::checkpoint::CheckpointLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
use crate::timer::{TimeDomain, Timer, TimerService};

use super::backend::{AsyncKeyedStateBackend, KeyRef, Target};
use super::record::RecordCtx;

/// A record admitted to the executor, wrapped to report which key it held.
type Running<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// A record that finished.
struct Done {
    key: KeyRef,
    timer: bool,
    result: Result<()>,
}

/// A record waiting for the earlier records of its key.
struct Waiting<'a> {
    seq: u64,
    run: Running<'a>,
}

/// The unfinished records of one key: the one running (its admission
/// number) and those waiting behind it, in arrival order.
struct KeyQueue<'a> {
    running: u64,
    waiting: VecDeque<Waiting<'a>>,
}

/// The executor's waker: notes that something woke it, and wakes the
/// engine's task.
struct Wakeup {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs records against an [`AsyncKeyedStateBackend`] on the engine's
/// task, as Flink's asynchronous execution controller does (FLIP-425):
///
/// - **Key order.** A record starts once every earlier record of its key
///   has finished; records of different keys run concurrently.
/// - **Back-pressure.** At most `max_in_flight` records are admitted and
///   unfinished; [`submit`](Self::submit) resolves once its record is
///   admitted.
/// - **Drain points.** [`drain`](Self::drain) (a checkpoint barrier, end of
///   input), [`snapshot`](Self::snapshot) and the watermark return once
///   every record submitted before them has finished.
/// - **Timers.** [`advance_watermark`](Self::advance_watermark) drains,
///   then fires each due timer, in the timers' total order, as a record of
///   its key; timers of different keys run concurrently. Timers do not
///   count against `max_in_flight`, so the bound never blocks them (Flink
///   deadlocked so: FLINK-37089, FLINK-37017), and they run before any
///   record submitted after the watermark. A timer fires only once the
///   timer record before it of its key has finished, so the timers a timer
///   record registers or deletes at or before the watermark fire, or not,
///   exactly as [`TimerService::poll`] would fire them. It returns once
///   every fired timer has finished: only then may the engine emit the
///   watermark.
/// - **Failure.** The first error a record returns (a state error, or its
///   own) is returned by the call that sees it, naming the record's key,
///   and poisons the executor: its unfinished records are dropped and every
///   later call fails naming that first error.
/// - **No silent hang.** A record waiting while the backend has no request
///   outstanding and nothing woke it can never make progress: the waiting
///   call fails (and poisons) naming its key. So a record must only wait
///   for its state requests, and for other records.
///
/// Records run while the engine awaits one of these methods; nothing runs
/// in between. Everything runs on the calling task: no thread, no lock.
/// Dropping a call's future before it resolves leaves the executor
/// consistent (a record not yet admitted is dropped). Record futures are
/// `Send` and may borrow what lives for `'a` (state handles, say).
pub struct KeyOrderedExecutor<'a, B: AsyncKeyedStateBackend> {
    backend: Arc<B>,
    max_in_flight: usize,
    /// The running record of each key that has unfinished records.
    running: FuturesUnordered<Running<'a>>,
    keys: HashMap<KeyRef, KeyQueue<'a>, BuildHasherDefault<KeyHasher>>,
    /// Unfinished records, and unfinished timer records, admitted.
    records: usize,
    timers: usize,
    next_seq: u64,
    /// The kind and text of the first failure.
    failed: Option<(ErrorKind, String)>,
    wakeup: Arc<Wakeup>,
    waker: Waker,
}

impl<B: AsyncKeyedStateBackend> fmt::Debug for KeyOrderedExecutor<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyOrderedExecutor")
            .field("max_in_flight", &self.max_in_flight)
            .field("records", &self.records)
            .field("timers", &self.timers)
            .field("busy_keys", &self.keys.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<'a, B: AsyncKeyedStateBackend> KeyOrderedExecutor<'a, B> {
    /// The in-flight bound Flink uses by default.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 6000;

    /// An executor over `backend` admitting at most `max_in_flight` (at
    /// least 1) unfinished records.
    pub fn new(backend: Arc<B>, max_in_flight: usize) -> Result<Self> {
        if max_in_flight == 0 {
            return Err(Error::invalid("an executor must admit at least 1 record in flight"));
        }
        let wakeup = Arc::new(Wakeup {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Ok(KeyOrderedExecutor {
            backend,
            max_in_flight,
            running: FuturesUnordered::new(),
            keys: HashMap::default(),
            records: 0,
            timers: 0,
            next_seq: 0,
            failed: None,
            waker: Waker::from(Arc::clone(&wakeup)),
            wakeup,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The in-flight bound.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Records admitted and not finished, timer records included.
    pub fn in_flight(&self) -> usize {
        self.records + self.timers
    }

    /// Submits a record of `key`: `record` is called at once with the
    /// record's context, and the future it returns runs once every earlier
    /// record of `key` has finished. Resolves when the record is admitted,
    /// after waiting while `max_in_flight` records are unfinished. A key
    /// outside the backend's key groups is refused (`Invalid`) without
    /// poisoning the executor.
    pub async fn submit<F, Fut>(&mut self, key: &B::Key, record: F) -> Result<()>
    where
        F: FnOnce(RecordCtx<B>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'a,
    {
        self.check()?;
        let key = KeyRef::new(&*self.backend, key)?;
        while self.records >= self.max_in_flight {
            self.wait_one().await?;
        }
        let ctx = RecordCtx::new(Arc::clone(&self.backend), key.clone());
        self.admit(key, false, record(ctx));
        self.progress().await
    }

    /// Waits until every record submitted so far has finished: what a
    /// checkpoint barrier and the end of input need.
    pub async fn drain(&mut self) -> Result<()> {
        self.check()?;
        while self.in_flight() > 0 {
            self.wait_one().await?;
        }
        Ok(())
    }

    /// At a checkpoint barrier: [`drain`](Self::drain)s, then takes the
    /// snapshot's synchronous phase, so the snapshot holds exactly the
    /// records submitted before. A failed snapshot does not poison the
    /// executor.
    pub async fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        self.drain().await?;
        self.backend.snapshot(checkpoint_id, location, options).await
    }

    /// The watermark reached `watermark`: drains, then fires every timer of
    /// the event-time service `timers` due at `watermark` as a record of its
    /// key (`on_timer` makes the record from the timer and its context), and
    /// returns once all of them have finished. Refused on a processing-time
    /// service.
    pub async fn advance_watermark<N, F, Fut>(
        &mut self,
        timers: &TimerService<N>,
        watermark: i64,
        on_timer: F,
    ) -> Result<()>
    where
        F: FnMut(Timer<B::Key, N>, RecordCtx<B>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'a,
    {
        timers.check_domain(TimeDomain::EventTime)?;
        self.fire(timers, watermark, on_timer).await
    }

    /// As [`advance_watermark`](Self::advance_watermark), for a
    /// processing-time service whose clock reached `time`. Refused on an
    /// event-time service.
    pub async fn advance_processing_time<N, F, Fut>(
        &mut self,
        timers: &TimerService<N>,
        time: i64,
        on_timer: F,
    ) -> Result<()>
    where
        F: FnMut(Timer<B::Key, N>, RecordCtx<B>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'a,
    {
        timers.check_domain(TimeDomain::ProcessingTime)?;
        self.fire(timers, time, on_timer).await
    }

    /// The timestamp of the next timer of `timers` to fire, if any.
    pub async fn next_timestamp<N>(&self, timers: &TimerService<N>) -> Result<Option<i64>> {
        self.check()?;
        let id = timers.id_in(self.backend.backend_id())?;
        self.backend.timer_peek(id).await
    }

    // ------------------------------------------------------------ internals

    async fn fire<N, F, Fut>(&mut self, timers: &TimerService<N>, time: i64, mut on_timer: F) -> Result<()>
    where
        F: FnMut(Timer<B::Key, N>, RecordCtx<B>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'a,
    {
        self.check()?;
        let id = timers.id_in(self.backend.backend_id())?;
        self.drain().await?;
        // Until a poll after a drain finds no due timer: a timer record may
        // register another one that is due.
        loop {
            let mut fired = false;
            loop {
                let (timestamp, key, namespace) = match self.backend.timer_poll(id, time).await {
                    Ok(Some(timer)) => timer,
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(e)),
                };
                let key = match KeyRef::from_bytes(&*self.backend, key) {
                    Ok(key) => key,
                    Err(e) => return Err(self.fail(e)),
                };
                if self.keys.contains_key(&key) {
                    // A timer record of its key is unfinished and may still
                    // register or delete timers of the key: the timer goes
                    // back until it has finished, then the next is polled.
                    let at = Target {
                        state: id,
                        key: &key,
                        namespace: &namespace,
                    };
                    if let Err(e) = self.backend.timer_register(at, timestamp).await {
                        return Err(self.fail(e));
                    }
                    while self.keys.contains_key(&key) {
                        self.wait_one().await?;
                    }
                    continue;
                }
                fired = true;
                let (key_value, namespace) =
                    match timers.decode_fired(self.backend.key_serializer(), key.bytes(), &namespace) {
                        Ok(decoded) => decoded,
                        Err(e) => return Err(self.fail(e)),
                    };
                let ctx = RecordCtx::new(Arc::clone(&self.backend), key.clone());
                let timer = Timer {
                    timestamp,
                    key: key_value,
                    namespace,
                };
                self.admit(key, true, on_timer(timer, ctx));
                self.progress().await?;
            }
            self.drain().await?;
            if !fired {
                return Ok(());
            }
        }
    }

    /// Fails if the executor is poisoned, naming the first failure.
    fn check(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, cause)) => Err(Error::new(
                *kind,
                format!("the executor takes no more work after an earlier failure: {cause}"),
            )),
        }
    }

    /// Poisons the executor with `e`, dropping every unfinished record, and
    /// returns `e`.
    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some((e.kind(), e.to_string()));
        self.running = FuturesUnordered::new();
        self.keys.clear();
        self.records = 0;
        self.timers = 0;
        e
    }

    fn admit<Fut>(&mut self, key: KeyRef, timer: bool, record: Fut)
    where
        Fut: Future<Output = Result<()>> + Send + 'a,
    {
        let seq = self.next_seq;
        self.next_seq += 1;
        if timer {
            self.timers += 1;
        } else {
            self.records += 1;
        }
        let done = key.clone();
        let run: Running<'a> = Box::pin(async move {
            Done {
                key: done,
                timer,
                result: record.await,
            }
        });
        match self.keys.entry(key) {
            Entry::Occupied(mut queue) => queue.get_mut().waiting.push_back(Waiting { seq, run }),
            Entry::Vacant(slot) => {
                slot.insert(KeyQueue {
                    running: seq,
                    waiting: VecDeque::new(),
                });
                self.running.push(run);
            }
        }
    }

    /// A record finished: the next record of its key starts.
    fn finish(&mut self, done: Done) -> Result<()> {
        if done.timer {
            self.timers = self.timers.saturating_sub(1);
        } else {
            self.records = self.records.saturating_sub(1);
        }
        if let Err(e) = done.result {
            return Err(self.fail(e.context(format!("the record of {}", done.key))));
        }
        let Some(queue) = self.keys.get_mut(&done.key) else {
            let e = Error::internal(format!("a record of {} finished, but none was running", done.key));
            return Err(self.fail(e));
        };
        match queue.waiting.pop_front() {
            Some(next) => {
                queue.running = next.seq;
                self.running.push(next.run);
            }
            None => {
                self.keys.remove(&done.key);
            }
        }
        Ok(())
    }

    /// Polls the running records once with the executor's waker.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        self.wakeup.woken.store(false, Ordering::Release);
        self.wakeup.task.register(cx.waker());
        let mut records = Context::from_waker(&self.waker);
        self.running.poll_next_unpin(&mut records)
    }

    /// True when no running record can make progress: they all wait, no
    /// request is outstanding, and nothing woke any of them.
    fn stalled(&self) -> bool {
        !self.backend.has_outstanding_requests() && !self.wakeup.woken.load(Ordering::Acquire)
    }

    /// Finishes records that are ready, without waiting.
    async fn progress(&mut self) -> Result<()> {
        loop {
            let next = poll_fn(|cx| match self.poll_running(cx) {
                Poll::Ready(Some(done)) => Poll::Ready(Some(done)),
                Poll::Ready(None) | Poll::Pending => Poll::Ready(None),
            })
            .await;
            match next {
                Some(done) => self.finish(done)?,
                None => return Ok(()),
            }
        }
    }

    /// Waits until a record finishes.
    async fn wait_one(&mut self) -> Result<()> {
        let next = poll_fn(|cx| match self.poll_running(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if self.stalled() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match next {
            Some(Some(done)) => self.finish(done),
            Some(None) => {
                let e = Error::internal(format!(
                    "{} records are in flight, but none is running",
                    self.in_flight()
                ));
                Err(self.fail(e))
            }
            None => {
                let e = self.stuck();
                Err(self.fail(e))
            }
        }
    }

    /// The error for running records that can never make progress, naming
    /// the key of the oldest.
    fn stuck(&self) -> Error {
        let stuck = self.running.len();
        match self.keys.iter().min_by_key(|(_, queue)| queue.running) {
            Some((key, _)) => Error::invalid(format!(
                "the record of {key} can never make progress: it waits, yet no state request is outstanding and \
                 nothing woke it (a record may only wait for its state requests and other records); {stuck} \
                 running record(s) wait so"
            )),
            None => Error::internal("the executor waits for records, but none is running"),
        }
    }
}

/// Hashes a [`KeyRef`], which feeds the MurmurHash3 it already holds: one
/// multiplication spreads it over the 64 bits the map takes its buckets and
/// tags from, instead of hashing the key's bytes again.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u32(&mut self, hash: u32) {
        self.0 = (self.0 ^ u64::from(hash)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }
}
