//! The timely dataflow and the loop that drives it, on every worker.
//!
//! ```text
//!  driver (source)           ── events @epoch ──Exchange(key group owner)──▶ count ── window results ──▶ sink ── txns ──▶ ack ── acks ──Exchange(→ 0)──▶ commit
//!  driver of worker 0 (only) ── control @epoch ──broadcast──────────────────▶ count, sink
//! ```
//!
//! * Timestamps are epochs. The driver reads one epoch of every partition
//!   it owns, sends the events at that epoch and advances its inputs: the
//!   frontier is the barrier. Worker 0's driver also decides which epochs
//!   are checkpoints (the checkpoint id is the epoch), begins them in the
//!   [`CheckpointStore`] and says so on the control stream, with the
//!   checkpoints that completed since (for `notify_checkpoint_complete`).
//! * `count` keeps the keyed state. It applies an epoch's events only once
//!   its input frontier has passed the epoch (an aligned checkpoint: no
//!   record of a later epoch is in the state of an earlier one), then
//!   fires the windows the epoch's watermark closed, then, at a barrier,
//!   takes the synchronous phase of its backend's snapshot.
//! * `sink` pre-commits the results up to a barrier once its frontier has
//!   passed it, and tells `ack`, which snapshots the source's offsets and
//!   waits for the asynchronous phases off the worker thread.
//! * `commit`, on worker 0, completes the checkpoint through the store once
//!   its frontier has passed the epoch: every worker's acknowledgement is in.
//!   It then commits the sink's transactions of that checkpoint.
//!
//! Any error fails the job (the process exits): it restarts from the latest
//! completed checkpoint, as Flink's full-restart strategy does.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_api::checkpoint::{CheckpointLocation, OperatorState, ResolvedCheckpoint};
use flowstate_api::operator::PendingOperatorSnapshot;
use flowstate_api::ttl::{Clock, SystemClock};
use flowstate_api::*;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Exchange as _, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};
use timely::progress::frontier::MutableAntichain;
use timely::worker::Worker;
use tokio::task::JoinHandle;

use crate::log::{window_of, Event, LogShape, WINDOW_MS};
use crate::sink::{self, WindowResult};

/// The job's id in the checkpoint storage.
pub const JOB: &str = "timely-wordcount";
/// Key groups of the keyed operator: the most workers it can rescale to.
pub const MAX_PARALLELISM: u32 = 128;
/// The source's operator id in checkpoints (operator state: its offsets).
pub const SOURCE: &str = "source";
/// The keyed operator's id in checkpoints.
pub const COUNT: &str = "count";
/// How many epochs the source may run ahead of the sink.
const MAX_EPOCHS_AHEAD: u64 = 4;

/// When to take checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// At the first epoch boundary this long after the last checkpoint
    /// began, once no checkpoint is in flight.
    Interval(Duration),
    /// At every epoch that is a multiple of this, when no checkpoint is in flight.
    EveryEpochs(u64),
    /// Only at the end of the input.
    AtEnd,
}

/// What a process of the job runs with.
pub struct Ctx<F> {
    /// The log.
    pub shape: LogShape,
    /// Builds and restores the keyed backends.
    pub factory: F,
    /// Runs snapshots' asynchronous phases and every storage call.
    pub rt: tokio::runtime::Handle,
    /// The job's checkpoint storage.
    pub storage: Arc<CheckpointStorage>,
    /// The checkpoint the job restarts from, the same for every worker.
    pub restored: Option<ResolvedCheckpoint>,
    /// The checkpoint store: worker 0 (in process 0) takes it.
    pub store: Mutex<Option<CheckpointStore>>,
    /// The sink's directory.
    pub sink_dir: PathBuf,
    /// When checkpoints are taken.
    pub policy: CheckpointPolicy,
    /// A pause between epochs (pacing the source, for tests).
    pub epoch_pause: Duration,
    /// What worker 0 reports at the end.
    pub report: Mutex<Option<RunReport>>,
}

/// What flows on the control stream, from worker 0's driver to every worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Control {
    /// The epoch is a checkpoint (its id is the epoch).
    Barrier(u64),
    /// The checkpoint completed.
    Completed(u64),
}

/// A worker's sink pre-committed its transaction of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Txn {
    epoch: u64,
    file: PathBuf,
    sync: Duration,
}

/// A worker's part of a checkpoint, for the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ack {
    epoch: u64,
    worker: usize,
    /// The worker's keyed state handle (`KeyedStateHandle::to_bytes`).
    keyed: Vec<u8>,
    /// The worker's source offsets (`OperatorStateHandle::to_bytes`).
    offsets: Vec<u8>,
    /// The sink transaction to commit once the checkpoint completes.
    txn: PathBuf,
    /// The synchronous phases of the worker's snapshots (keyed backend, source).
    sync: Duration,
    /// The sink's pre-commit (a synced file).
    pre_commit: Duration,
    /// The keyed backend's asynchronous phase.
    async_phase: Duration,
    /// Bytes written by the worker's snapshots.
    bytes: u64,
    /// Bytes of state the worker's handles reference.
    full_size: u64,
}

/// One completed checkpoint, as the coordinator saw it.
#[derive(Debug, Clone)]
pub struct CheckpointStat {
    /// The checkpoint id (its epoch).
    pub id: u64,
    /// From the barrier's injection to completion.
    pub total: Duration,
    /// The longest synchronous phase of a worker's snapshots.
    pub max_sync: Duration,
    /// The longest pre-commit of a worker's sink.
    pub max_pre_commit: Duration,
    /// The longest asynchronous phase of a worker.
    pub max_async: Duration,
    /// Completing it in the store and committing the sink.
    pub complete: Duration,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes of state referenced.
    pub full_size: u64,
}

/// What a run did, reported by worker 0.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The first epoch this run processed.
    pub first_epoch: u64,
    /// Events this run processed.
    pub events: u64,
    /// From the dataflow's start to its end.
    pub elapsed: Duration,
    /// The checkpoints it completed.
    pub checkpoints: Vec<CheckpointStat>,
}

/// Fails the job: a timely worker cannot return an error from inside an
/// operator, and the other workers would wait for it forever.
fn fail(worker: usize, e: &Error) -> ! {
    eprintln!("timely-wordcount: worker {worker} failed: {e}");
    std::process::exit(1)
}

/// The earliest time still to come on either input; `None` once both are done.
fn frontier_of(a: &MutableAntichain<u64>, b: &MutableAntichain<u64>) -> Option<u64> {
    match (a.frontier().as_option(), b.frontier().as_option()) {
        (Some(x), Some(y)) => Some(*x.min(y)),
        (x, y) => x.or(y).copied(),
    }
}

/// Per-worker state the operators and the driver share (a worker is one
/// thread: `Rc<RefCell<…>>` is the timely way).
struct WorkerShared<F> {
    ctx: Arc<Ctx<F>>,
    /// Locations of checkpoints in progress on this worker.
    locations: HashMap<u64, Arc<CheckpointLocation>>,
    /// The keyed backend's snapshots in their asynchronous phase, by checkpoint.
    keyed: HashMap<u64, (Duration, JoinHandle<Result<SnapshotResult>>)>,
}

impl<F> WorkerShared<F> {
    /// The location of checkpoint `id`. A worker resolves it itself: the
    /// coordinator's `CheckpointLocation` cannot be sent to another process.
    fn location(&mut self, id: u64) -> Result<Arc<CheckpointLocation>> {
        if let Some(l) = self.locations.get(&id) {
            return Ok(Arc::clone(l));
        }
        // The coordinator began it; a subtask's location needs no I/O.
        let l = self.ctx.storage.checkpoint_location(id)?;
        self.locations.insert(id, Arc::clone(&l));
        Ok(l)
    }
}

/// The source of one worker: the partitions it reads, its position in
/// each, kept in operator list state (split on rescale).
struct Source {
    store: OperatorStateStore,
    offsets_state: OperatorListState<(u32, u64)>,
    offsets: BTreeMap<u32, u64>,
    /// The offsets after each epoch sent and not yet checkpointed.
    history: BTreeMap<u64, Vec<(u32, u64)>>,
}

impl Source {
    fn open(mut store: OperatorStateStore) -> Result<Self> {
        let offsets_state = store.list_state(&ListStateDescriptor::<(u32, u64)>::new("offsets"))?;
        let offsets = offsets_state.get(&store)?.into_iter().collect();
        Ok(Source {
            store,
            offsets_state,
            offsets,
            history: BTreeMap::new(),
        })
    }

    /// A fresh source: worker `i` of `n` reads partitions `p % n == i`.
    fn fresh(index: u32, peers: u32, partitions: u32) -> Result<Self> {
        let mut s = Source::open(OperatorStateStore::new(index, peers)?)?;
        s.offsets = (0..partitions).filter(|p| p % peers == index).map(|p| (p, 0)).collect();
        Ok(s)
    }

    /// The source of `checkpoint`, its partitions redistributed over `peers` workers.
    async fn restore(index: u32, peers: u32, checkpoint: &ResolvedCheckpoint) -> Result<Self> {
        let op = checkpoint
            .metadata
            .operator(SOURCE)
            .ok_or_else(|| Error::not_found(format!("checkpoint {} has no source offsets", checkpoint.pointer)))?;
        let store =
            OperatorStateStore::restore(index, peers, &op.operator_state, op.parallelism, &*checkpoint.reader).await?;
        Source::open(store)
    }

    /// Reads epoch `epoch` of every partition this worker owns.
    fn read_epoch(&mut self, shape: &LogShape, epoch: u64, out: &mut Vec<Event>) -> Result<()> {
        let range = shape.epoch_offsets(epoch);
        for (p, offset) in self.offsets.iter_mut() {
            if *offset != range.start {
                return Err(Error::corrupted(format!(
                    "partition {p} is at offset {offset}, epoch {epoch} starts at {}",
                    range.start
                )));
            }
            out.extend(range.clone().map(|o| shape.event(*p, o)));
            *offset = range.end;
        }
        self.history
            .insert(epoch, self.offsets.iter().map(|(p, o)| (*p, *o)).collect());
        Ok(())
    }

    /// The synchronous phase of the snapshot of the offsets after `epoch`.
    fn snapshot(&mut self, epoch: u64, location: Arc<CheckpointLocation>) -> Result<PendingOperatorSnapshot> {
        let offsets = self
            .history
            .remove(&epoch)
            .ok_or_else(|| Error::internal(format!("no source offsets recorded for epoch {epoch}")))?;
        self.history.retain(|e, _| *e > epoch);
        self.offsets_state.update(&mut self.store, offsets)?;
        self.store.snapshot(epoch, location)
    }
}

/// The keyed state of one worker, and what it does per event and per
/// watermark.
struct Counter<B> {
    backend: B,
    count: ValueState<u64>,
    rare: ListState<(u32, u64)>,
    by_partition: MapState<u32, u64>,
    window_count: ReducingState<u64, i64>,
    window_end: TimerService<i64>,
}

/// The per-word states `verify` compares.
pub(crate) struct WordStates {
    pub(crate) count: ValueState<u64>,
    pub(crate) rare: ListState<(u32, u64)>,
    pub(crate) by_partition: MapState<u32, u64>,
}

/// Registers the per-word states: `verify` reads a restored backend with them.
pub(crate) fn register<B: KeyedStateBackend<Key = String>>(backend: &mut B) -> Result<WordStates> {
    Ok(WordStates {
        count: backend.register(ValueStateDescriptor::<u64>::new("count"))?,
        rare: backend.register(ListStateDescriptor::<(u32, u64)>::new("rare"))?,
        by_partition: backend.register(MapStateDescriptor::<u32, u64>::new("by-partition"))?,
    })
}

impl<B: KeyedStateBackend<Key = String>> Counter<B> {
    fn open(backend: B) -> Result<Self> {
        let mut backend = backend;
        let WordStates {
            count,
            rare,
            by_partition,
        } = register(&mut backend)?;
        let window_count = backend
            .register(ReducingStateDescriptor::<u64>::new("window-count", |a, b| a + b).in_namespace::<i64>())?;
        let window_end = backend.register(TimerServiceDescriptor::event_time("window-end").in_namespace::<i64>())?;
        Ok(Counter {
            backend,
            count,
            rare,
            by_partition,
            window_count,
            window_end,
        })
    }

    fn process(&mut self, e: &Event) -> Result<()> {
        let b = &mut self.backend;
        b.set_current_key(&e.word)?;
        let n = b.value(&self.count)?.unwrap_or(0);
        b.update(&self.count, n + 1)?;
        if crate::log::is_rare(e) {
            b.append(&self.rare, (e.partition, e.offset))?;
        }
        let seen = b.map_get(&self.by_partition, &e.partition)?.unwrap_or(0);
        b.map_put(&self.by_partition, e.partition, seen + 1)?;
        let window = window_of(e.time);
        b.set_namespace(&self.window_count, &window)?;
        b.reduce(&self.window_count, 1)?;
        self.window_end.register(b, window + WINDOW_MS - 1, &window)
    }

    /// Fires the windows `watermark` closes; their state is cleared.
    fn fire(&mut self, watermark: i64, out: &mut Vec<WindowResult>) -> Result<()> {
        while let Some(timer) = self.window_end.poll(&mut self.backend, watermark)? {
            self.backend.set_namespace(&self.window_count, &timer.namespace)?;
            let n = self.backend.reduced(&self.window_count)?.unwrap_or(0);
            self.backend.clear(&self.window_count)?;
            out.push((timer.key, timer.namespace, n));
        }
        Ok(())
    }
}

/// The coordinator, on worker 0: begins and completes checkpoints.
struct Coordinator {
    store: CheckpointStore,
    begun: BTreeMap<u64, (Arc<CheckpointLocation>, Instant)>,
    /// Completed and not yet announced on the control stream.
    to_announce: Vec<u64>,
    stats: Vec<CheckpointStat>,
}

impl Coordinator {
    fn begin(&mut self, rt: &tokio::runtime::Handle, id: u64) -> Result<()> {
        let location = rt.block_on(self.store.begin_checkpoint(id))?;
        self.begun.insert(id, (location, Instant::now()));
        Ok(())
    }

    /// Completes checkpoint `id` from every worker's acknowledgement, then
    /// commits the sink's transactions of it.
    fn complete(&mut self, rt: &tokio::runtime::Handle, id: u64, acks: Vec<Ack>, peers: usize) -> Result<()> {
        let (location, started) = self
            .begun
            .remove(&id)
            .ok_or_else(|| Error::internal(format!("checkpoint {id} was never begun")))?;
        let name = location.pointer().to_string();
        let workers: BTreeSet<usize> = acks.iter().map(|a| a.worker).collect();
        if workers.len() != peers || acks.len() != peers {
            return Err(Error::internal(format!(
                "{name}: acknowledged by workers {workers:?}, expected all {peers}"
            )));
        }
        let (mut keyed, mut offsets) = (Vec::new(), Vec::new());
        for ack in &acks {
            let part = format!("{name} (the part of worker {})", ack.worker);
            keyed.push(KeyedStateHandle::from_bytes(
                &bytes::Bytes::from(ack.keyed.clone()),
                &part,
            )?);
            offsets.push(flowstate_api::checkpoint::OperatorStateHandle::from_bytes(
                &bytes::Bytes::from(ack.offsets.clone()),
                &part,
            )?);
        }
        let p = peers as u32;
        let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, SystemClock.now_millis())
            .with_operator(OperatorState::new(SOURCE, p, MAX_PARALLELISM, Vec::new()).with_operator_state(offsets))
            .with_operator(OperatorState::new(COUNT, p, MAX_PARALLELISM, keyed));
        let completing = Instant::now();
        rt.block_on(self.store.complete(&location, metadata))
            .map_err(|e| e.context(format!("completing {name}")))?;
        for ack in &acks {
            sink::commit(&ack.txn).map_err(|e| e.context(format!("committing the sink's transaction of {name}")))?;
        }
        self.to_announce.push(id);
        println!(
            "checkpoint {id} complete: {peers} workers, {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        self.stats.push(CheckpointStat {
            id,
            total: started.elapsed(),
            max_sync: acks.iter().map(|a| a.sync).max().unwrap_or_default(),
            max_pre_commit: acks.iter().map(|a| a.pre_commit).max().unwrap_or_default(),
            max_async: acks.iter().map(|a| a.async_phase).max().unwrap_or_default(),
            complete: completing.elapsed(),
            bytes: acks.iter().map(|a| a.bytes).sum(),
            full_size: acks.iter().map(|a| a.full_size).sum(),
        });
        Ok(())
    }
}

/// Runs one worker of the job: restores its state, builds the dataflow and
/// drives the source to the end of the log.
pub fn run_worker<F: BackendFactory>(worker: &mut Worker, ctx: Arc<Ctx<F>>) -> Result<()> {
    let index = worker.index();
    let peers = worker.peers();
    let (i, n) = (index as u32, peers as u32);
    let shape = ctx.shape;
    let start = ctx.restored.as_ref().map_or(1, |r| r.metadata.checkpoint_id + 1);

    // Worker i is subtask i: it owns the key groups flowstate assigns it.
    let config =
        KeyedBackendConfig::<String>::new(KeyGroupRange::for_operator(MAX_PARALLELISM, n, i)?, MAX_PARALLELISM);
    let (backend, source) = match &ctx.restored {
        Some(r) => {
            let handles = r.metadata.operator(COUNT).map(|o| o.keyed.clone()).unwrap_or_default();
            let backend = ctx
                .rt
                .block_on(ctx.factory.restore(config, &handles, Arc::clone(&r.reader)))
                .map_err(|e| e.context(format!("restoring worker {index} from {}", r.pointer)))?;
            let source = ctx
                .rt
                .block_on(Source::restore(i, n, r))
                .map_err(|e| e.context(format!("restoring worker {index}'s source from {}", r.pointer)))?;
            (backend, source)
        }
        None => (ctx.factory.build(config)?, Source::fresh(i, n, shape.partitions)?),
    };
    // Shared with `ack`: a backend must outlive its snapshots' asynchronous
    // phases, and timely drops `count` as soon as its input is done, which
    // is when the last checkpoint's asynchronous phase runs.
    let counter = Rc::new(RefCell::new(Counter::open(backend)?));
    let source = Rc::new(RefCell::new(source));
    let shared = Rc::new(RefCell::new(WorkerShared {
        ctx: Arc::clone(&ctx),
        locations: HashMap::new(),
        keyed: HashMap::new(),
    }));
    let coordinator = if index == 0 {
        let store = ctx
            .store
            .lock()
            .map_err(|_| Error::internal("checkpoint store lock poisoned"))?
            .take()
            .ok_or_else(|| Error::internal("worker 0 runs in the process that opened the checkpoint store"))?;
        Some(Rc::new(RefCell::new(Coordinator {
            store,
            begun: BTreeMap::new(),
            to_announce: Vec::new(),
            stats: Vec::new(),
        })))
    } else {
        None
    };

    let sink_probe = ProbeHandle::new();
    let done_probe = ProbeHandle::new();
    let (mut events_in, mut control_in): (InputHandle<u64, _>, InputHandle<u64, _>) =
        (InputHandle::new(), InputHandle::new());
    worker.dataflow::<u64, _, _>(|scope| {
        let events = events_in.to_stream(scope).container::<Vec<Event>>();
        let control = control_in.to_stream(scope).container::<Vec<Control>>().broadcast();

        // Routing by key group: the record goes to the worker whose key
        // groups flowstate says hold its key.
        let router = match KeyGroupRange::all(MAX_PARALLELISM) {
            Ok(all) => KeyedBackendConfig::<String>::new(all, MAX_PARALLELISM),
            Err(e) => fail(index, &e),
        };
        let route = Exchange::new(move |e: &Event| match router.operator_index_of(&e.word, n) {
            Ok(i) => u64::from(i),
            Err(err) => fail(index, &err),
        });

        // The keyed operator.
        let shared_c = Rc::clone(&shared);
        let counter_c = Rc::clone(&counter);
        let results: StreamVec<'_, u64, WindowResult> =
            events.binary_frontier(control.clone(), route, Pipeline, "count", move |cap, _info| {
                let mut cap: Option<Capability<u64>> = Some(cap);
                let mut stash: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
                let mut barriers = BTreeSet::new();
                let mut fired = Vec::new();
                let mut fired_through = i64::MIN;
                move |(input, f1), (ctl, f2), output| {
                    input.for_each(|time, data| {
                        if let Some(t) = time.least() {
                            stash.entry(*t).or_default().append(data);
                        }
                    });
                    ctl.for_each(|_time, data| {
                        for c in data.drain(..) {
                            match c {
                                Control::Barrier(e) => {
                                    barriers.insert(e);
                                }
                                Control::Completed(id) => {
                                    if let Err(e) = counter_c.borrow_mut().backend.notify_checkpoint_complete(id) {
                                        fail(index, &e);
                                    }
                                }
                            }
                        }
                    });
                    let Some(c) = cap.as_mut() else { return };
                    let frontier = frontier_of(f1, f2);
                    let complete = |t: &u64| frontier.is_none_or(|f| *t < f);
                    let epochs: BTreeSet<u64> = stash.keys().chain(barriers.iter()).copied().filter(complete).collect();
                    for t in epochs {
                        let result = (|| -> Result<()> {
                            if let Some(mut events) = stash.remove(&t) {
                                // One order on every run, whatever the exchange's interleaving.
                                events.sort_unstable_by_key(|e| (e.partition, e.offset));
                                let mut counter = counter_c.borrow_mut();
                                for e in &events {
                                    counter.process(e)?;
                                }
                            }
                            let watermark = shape.watermark(t);
                            counter_c.borrow_mut().fire(watermark, &mut fired)?;
                            fired_through = fired_through.max(watermark);
                            let at = c.try_delayed(&t).ok_or_else(|| {
                                Error::internal(format!("epoch {t} is behind the operator's capability"))
                            })?;
                            output.session(&at).give_iterator(fired.drain(..));
                            if barriers.remove(&t) {
                                let location = shared_c.borrow_mut().location(t)?;
                                let pending = counter_c.borrow_mut().backend.snapshot(
                                    t,
                                    location,
                                    SnapshotOptions::checkpoint(),
                                )?;
                                let sync = pending.sync_duration();
                                let mut s = shared_c.borrow_mut();
                                let task = s.ctx.rt.spawn(pending.run());
                                s.keyed.insert(t, (sync, task));
                            }
                            Ok(())
                        })();
                        if let Err(e) = result {
                            fail(index, &e.context(format!("epoch {t}")));
                        }
                    }
                    match frontier {
                        Some(f) => {
                            // Windows closed by epochs that brought no event and no barrier.
                            let last = f.saturating_sub(1);
                            if f > *c.time() && shape.watermark(last) > fired_through {
                                if let Err(e) = counter_c.borrow_mut().fire(shape.watermark(last), &mut fired) {
                                    fail(index, &e);
                                }
                                fired_through = shape.watermark(last);
                                let at = c.delayed(&last.max(*c.time()));
                                output.session(&at).give_iterator(fired.drain(..));
                            }
                            c.downgrade(&f);
                        }
                        None => cap = None,
                    }
                }
            });

        // The two-phase sink.
        let sink_dir = ctx.sink_dir.clone();
        let txns: StreamVec<'_, u64, Txn> =
            results.binary_frontier(control, Pipeline, Pipeline, "sink", move |cap, _info| {
                let mut cap: Option<Capability<u64>> = Some(cap);
                let mut stash: BTreeMap<u64, Vec<WindowResult>> = BTreeMap::new();
                let mut barriers = BTreeSet::new();
                move |(input, f1), (ctl, f2), output| {
                    input.for_each(|time, data| {
                        if let Some(t) = time.least() {
                            stash.entry(*t).or_default().append(data);
                        }
                    });
                    ctl.for_each(|_time, data| {
                        for c in data.drain(..) {
                            if let Control::Barrier(e) = c {
                                barriers.insert(e);
                            }
                        }
                    });
                    let Some(c) = cap.as_mut() else { return };
                    let frontier = frontier_of(f1, f2);
                    while let Some(&t) = barriers.first() {
                        if frontier.is_some_and(|f| t >= f) {
                            break;
                        }
                        barriers.remove(&t);
                        let started = Instant::now();
                        let later = stash.split_off(&(t + 1));
                        let results: Vec<WindowResult> =
                            std::mem::replace(&mut stash, later).into_values().flatten().collect();
                        match sink::pre_commit(&sink_dir, t, index, &results) {
                            Ok(file) => {
                                let at = c.delayed(&t);
                                output.session(&at).give(Txn {
                                    epoch: t,
                                    file,
                                    sync: started.elapsed(),
                                });
                            }
                            Err(e) => fail(index, &e.context(format!("pre-committing checkpoint {t}"))),
                        }
                    }
                    match frontier {
                        Some(f) => c.downgrade(&f),
                        None => {
                            if !stash.is_empty() {
                                fail(index, &Error::internal("window results after the last barrier"));
                            }
                            cap = None;
                        }
                    }
                }
            });
        let txns = txns.probe_with(&sink_probe);

        // Each worker acknowledges its part of a checkpoint once its
        // snapshots' asynchronous phases are done.
        let shared_a = Rc::clone(&shared);
        let source_a = Rc::clone(&source);
        let keep_backend = Rc::clone(&counter);
        let acks: StreamVec<'_, u64, Ack> = txns.unary(Pipeline, "ack", move |_cap, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let _keep_backend = keep_backend;
            // A task sends its acknowledgement here, then activates the
            // operator: the result is there before the operator runs.
            let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Result<Ack>)>();
            let mut in_flight: HashMap<u64, Capability<u64>> = HashMap::new();
            move |input, output| {
                let port = output.output_index();
                input.for_each(|time, data| {
                    for txn in data.drain(..) {
                        let Some(cap) = time.retain_least(port) else { continue };
                        let t = txn.epoch;
                        let started = Instant::now();
                        let prepared = (|| -> Result<_> {
                            let location = shared_a.borrow_mut().location(t)?;
                            let offsets = source_a.borrow_mut().snapshot(t, location)?;
                            let (keyed_sync, keyed) = shared_a
                                .borrow_mut()
                                .keyed
                                .remove(&t)
                                .ok_or_else(|| Error::internal(format!("no keyed snapshot of checkpoint {t}")))?;
                            shared_a.borrow_mut().locations.remove(&t);
                            Ok((offsets, keyed_sync, keyed))
                        })();
                        let (offsets, keyed_sync, keyed) = match prepared {
                            Ok(p) => p,
                            Err(e) => fail(index, &e.context(format!("checkpoint {t}"))),
                        };
                        let sync = keyed_sync + started.elapsed();
                        let pre_commit = txn.sync;
                        let wake = activator.clone();
                        let done = done_tx.clone();
                        shared_a.borrow().ctx.rt.spawn(async move {
                            let ack = async {
                                let keyed = keyed.await.map_err(|e| {
                                    Error::internal(format!("the snapshot task of checkpoint {t}: {e}"))
                                })??;
                                let offsets = offsets.await?;
                                let size = offsets.state_size();
                                Ok(Ack {
                                    epoch: t,
                                    worker: index,
                                    keyed: keyed.handle.to_bytes(),
                                    offsets: offsets.to_bytes(),
                                    txn: txn.file,
                                    sync,
                                    pre_commit,
                                    async_phase: keyed.stats.async_duration,
                                    bytes: keyed.stats.bytes_written + size,
                                    full_size: keyed.stats.full_size + size,
                                })
                            }
                            .await;
                            // The operator is gone only if the job is ending anyway.
                            let _ = done.send((t, ack));
                            let _ = wake.activate();
                        });
                        in_flight.insert(t, cap);
                    }
                });
                while let Ok((t, ack)) = done_rx.try_recv() {
                    let Some(cap) = in_flight.remove(&t) else {
                        fail(
                            index,
                            &Error::internal(format!("an unexpected acknowledgement of checkpoint {t}")),
                        );
                    };
                    match ack {
                        Ok(ack) => output.session(&cap).give(ack),
                        Err(e) => fail(index, &e.context(format!("checkpoint {t}"))),
                    }
                }
            }
        });

        // The coordinator completes each checkpoint once every worker's
        // acknowledgement is in: when its frontier has passed the epoch.
        let coordinator_c = coordinator.clone();
        let rt = ctx.rt.clone();
        acks.exchange(|_| 0)
            .unary_frontier(Pipeline, "commit", move |_cap, _info| {
                let mut stash: BTreeMap<u64, (Capability<u64>, Vec<Ack>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    let port = output.output_index();
                    input.for_each(|time, data| {
                        if let Some(cap) = time.retain_least(port) {
                            let t = *cap.time();
                            stash.entry(t).or_insert_with(|| (cap, Vec::new())).1.append(data);
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (t, (cap, acks)) = entry.remove_entry();
                        let Some(coordinator) = &coordinator_c else {
                            fail(
                                index,
                                &Error::internal("acknowledgements reached a worker other than 0"),
                            );
                        };
                        if let Err(e) = coordinator.borrow_mut().complete(&rt, t, acks, peers) {
                            fail(index, &e);
                        }
                        output.session(&cap).give(t);
                    }
                }
            })
            .container::<Vec<u64>>()
            .probe_with(&done_probe);
    });

    // The driver: the source, epoch by epoch.
    let started = Instant::now();
    events_in.advance_to(start);
    control_in.advance_to(start);
    let mut last_checkpoint = Instant::now();
    let mut batch = Vec::new();
    for epoch in start..=shape.epochs {
        source.borrow_mut().read_epoch(&shape, epoch, &mut batch)?;
        events_in.send_batch(&mut batch);
        batch.clear();
        if let Some(coordinator) = &coordinator {
            let mut co = coordinator.borrow_mut();
            for id in co.to_announce.drain(..) {
                control_in.send(Control::Completed(id));
            }
            // One checkpoint at a time (Flink's default), except the last.
            let due = epoch == shape.epochs
                || co.begun.is_empty()
                    && match ctx.policy {
                        CheckpointPolicy::Interval(d) => last_checkpoint.elapsed() >= d,
                        CheckpointPolicy::EveryEpochs(k) => epoch % k.max(1) == 0,
                        CheckpointPolicy::AtEnd => false,
                    };
            if due {
                co.begin(&ctx.rt, epoch)?;
                control_in.send(Control::Barrier(epoch));
                last_checkpoint = Instant::now();
            }
        }
        events_in.advance_to(epoch + 1);
        control_in.advance_to(epoch + 1);
        let paced = Instant::now() + ctx.epoch_pause;
        while sink_probe.less_than(&(epoch + 1).saturating_sub(MAX_EPOCHS_AHEAD)) || Instant::now() < paced {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }
    drop(events_in);
    drop(control_in);
    while !done_probe.done() {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
    if let Some(coordinator) = coordinator {
        let co = coordinator.borrow();
        let report = RunReport {
            first_epoch: start,
            events: (shape.epochs + 1).saturating_sub(start) * shape.per_epoch * u64::from(shape.partitions),
            elapsed: started.elapsed(),
            checkpoints: co.stats.clone(),
        };
        *ctx.report.lock().map_err(|_| Error::internal("report lock poisoned"))? = Some(report);
    }
    Ok(())
}
