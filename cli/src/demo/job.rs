//! The demo's job, on any backend: a source whose offsets are operator
//! state, and a keyed operator (per-user counts, sums, lists, maps and
//! event-time windows closed by timers) at some parallelism, routing events
//! by key group; checkpoints of every subtask completed through a
//! [`CheckpointStore`], restores at any parallelism.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowstate_api::checkpoint::{CheckpointLocation, OperatorState, ResolvedCheckpoint, StateReader, SHARED_DIR};
use flowstate_api::operator::PendingOperatorSnapshot;
use flowstate_api::ttl::{Clock, SystemClock};
use flowstate_api::*;
use flowstate_heap::{HeapBackend, HeapOptions};
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};
use flowstate_slatedb::{SlateDbBackendFactory, SlateDbSyncBackend};

use super::sink::Sink;

/// Where a backend keeps its local files.
pub(crate) struct Env {
    pub(crate) work: PathBuf,
    pub(crate) local: PathBuf,
    pub(crate) incremental: bool,
    /// The SlateDB backend's factory, when it runs the job.
    pub(crate) slatedb: Option<SlateDbBackendFactory>,
}

/// A backend the demo can run on.
pub(crate) trait DemoBackend: KeyedStateBackend<Key = u64> + Sized + Send + 'static {
    const NAME: &'static str;
    fn create(config: KeyedBackendConfig<u64>, env: &Env, subtask: u32) -> Result<Self>;
    fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &Arc<dyn StateReader>,
        env: &Env,
        subtask: u32,
    ) -> impl std::future::Future<Output = Result<Self>> + Send;
    /// Whether the restore used a local copy.
    fn restored_locally(&self) -> bool {
        false
    }
    /// The backend's own database, if it has one (the SlateDB backend's id).
    fn database(&self) -> Option<&str> {
        None
    }
}

impl DemoBackend for HeapBackend<u64> {
    const NAME: &'static str = "heap";
    fn create(config: KeyedBackendConfig<u64>, env: &Env, _subtask: u32) -> Result<Self> {
        HeapBackend::with_options(config, heap_options(env))
    }
    async fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &Arc<dyn StateReader>,
        env: &Env,
        _subtask: u32,
    ) -> Result<Self> {
        HeapBackend::restore_with_options(config, heap_options(env), handles, &**reader).await
    }
}

fn heap_options(env: &Env) -> HeapOptions {
    HeapOptions {
        incremental: env.incremental,
        ..HeapOptions::default()
    }
}

fn rocksdb_options(env: &Env, subtask: u32) -> RocksDbOptions {
    RocksDbOptions::new(&env.work)
        .with_incremental(env.incremental)
        .with_local_recovery(vec![env.local.clone()], format!("{JOB}/{OPERATOR}-{subtask}"))
}

impl DemoBackend for RocksDbBackend<u64> {
    const NAME: &'static str = "RocksDB";
    fn create(config: KeyedBackendConfig<u64>, env: &Env, subtask: u32) -> Result<Self> {
        RocksDbBackend::new(config, rocksdb_options(env, subtask))
    }
    async fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &Arc<dyn StateReader>,
        env: &Env,
        subtask: u32,
    ) -> Result<Self> {
        RocksDbBackend::restore(config, handles, &**reader, rocksdb_options(env, subtask)).await
    }
    fn restored_locally(&self) -> bool {
        self.restore_stats().handles_from_local_copy > 0
    }
}

fn slatedb(env: &Env) -> Result<&SlateDbBackendFactory> {
    env.slatedb
        .as_ref()
        .ok_or_else(|| Error::internal("the SlateDB backend runs without its factory"))
}

impl DemoBackend for SlateDbSyncBackend<u64> {
    const NAME: &'static str = "SlateDB";
    fn create(config: KeyedBackendConfig<u64>, env: &Env, _subtask: u32) -> Result<Self> {
        slatedb(env)?.build(config)
    }
    async fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &Arc<dyn StateReader>,
        env: &Env,
        _subtask: u32,
    ) -> Result<Self> {
        slatedb(env)?.restore(config, handles, Arc::clone(reader)).await
    }
    fn database(&self) -> Option<&str> {
        Some(self.inner().uuid())
    }
}

pub(crate) const MAX_PARALLELISM: u32 = 128;
pub(crate) const OPERATOR: &str = "count-by-user";
/// The source operator, whose offsets are operator list state.
pub(crate) const SOURCE: &str = "source";
/// Partitions of the event stream: event `g` is at position
/// `g / PARTITIONS` of partition `g % PARTITIONS`.
pub(crate) const PARTITIONS: u32 = 4;
pub(crate) const JOB: &str = "flowstate-demo";

/// One event of the generated stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) user: u64,
    pub(crate) amount: u64,
    /// Event time, in milliseconds.
    pub(crate) time: i64,
}

/// Milliseconds of event time between two events.
const EVENT_SPACING_MS: i64 = 10;
/// The length of the event-time tumbling windows.
const WINDOW_MS: i64 = 50_000;
/// Events between two watermarks.
pub(crate) const WATERMARK_EVERY: u64 = 1_000;

/// The window an event time falls in.
pub(crate) fn window_of(time: i64) -> i64 {
    time.div_euclid(WINDOW_MS)
}

/// The deterministic event stream (xorshift64*).
pub(crate) fn events(seed: u64, keys: u64, n: u64) -> Vec<Event> {
    let mut x = seed.max(1);
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n as i64)
        .map(|i| Event {
            user: next() % keys,
            amount: next() % 1000,
            time: i * EVENT_SPACING_MS,
        })
        .collect()
}

/// One parallel instance of the keyed operator: per-user counts and sums,
/// and per-user sums over event-time tumbling windows, closed by timers.
/// Amounts at least this large are kept, in order, in list state.
const LARGE_AMOUNT: u64 = 990;
/// Width of the amount buckets counted in map state.
const BUCKET_WIDTH: u64 = 250;
/// Time to live of a window's running sum: a window whose timer never
/// fires (its key goes quiet) does not keep state forever.
const WINDOW_TTL: Duration = Duration::from_secs(3600);

/// What the job keeps per user, as the exactly-once check compares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UserState {
    /// Events seen (value state).
    count: u64,
    /// Sum of amounts (reducing state).
    total: u64,
    /// Amounts of at least [`LARGE_AMOUNT`], in event order (list state).
    large: Vec<u64>,
    /// Events per amount bucket (map state).
    buckets: std::collections::BTreeMap<u64, u64>,
}

impl UserState {
    pub(crate) fn add(&mut self, amount: u64) {
        self.count += 1;
        self.total += amount;
        if amount >= LARGE_AMOUNT {
            self.large.push(amount);
        }
        *self.buckets.entry(amount / BUCKET_WIDTH).or_default() += 1;
    }
}

struct Subtask<B> {
    backend: B,
    count: ValueState<u64>,
    total: ReducingState<u64>,
    large: ListState<u64>,
    buckets: MapState<u64, u64>,
    window_sum: ReducingState<u64, i64>,
    window_end: TimerService<i64>,
}

impl<B: DemoBackend> Subtask<B> {
    fn open(mut backend: B) -> Result<Self> {
        let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
        let total = backend.register(ReducingStateDescriptor::<u64>::new("total", |a, b| a + b))?;
        let large = backend.register(ListStateDescriptor::<u64>::new("large-amounts"))?;
        let buckets = backend.register(MapStateDescriptor::<u64, u64>::new("amount-buckets"))?;
        let window_sum = backend.register(
            ReducingStateDescriptor::<u64>::new("window-sum", |a, b| a + b)
                .with_ttl(StateTtlConfig::new(WINDOW_TTL))
                .in_namespace::<i64>(),
        )?;
        let window_end = backend.register(TimerServiceDescriptor::event_time("window-end").in_namespace::<i64>())?;
        Ok(Subtask {
            backend,
            count,
            total,
            large,
            buckets,
            window_sum,
            window_end,
        })
    }

    fn process(&mut self, e: &Event) -> Result<()> {
        self.backend.set_current_key(&e.user)?;
        let n = self.backend.value(&self.count)?.unwrap_or(0);
        self.backend.update(&self.count, n + 1)?;
        self.backend.reduce(&self.total, e.amount)?;
        if e.amount >= LARGE_AMOUNT {
            self.backend.append(&self.large, e.amount)?;
        }
        let bucket = e.amount / BUCKET_WIDTH;
        let seen = self.backend.map_get(&self.buckets, &bucket)?.unwrap_or(0);
        self.backend.map_put(&self.buckets, bucket, seen + 1)?;
        let window = window_of(e.time);
        self.backend.set_namespace(&self.window_sum, &window)?;
        self.backend.reduce(&self.window_sum, e.amount)?;
        self.window_end
            .register(&mut self.backend, (window + 1) * WINDOW_MS - 1, &window)
    }

    /// Fires the windows the watermark closed: each result goes to the sink
    /// and the window's state is cleared.
    fn advance_watermark(&mut self, watermark: i64, sink: &mut Sink) -> Result<()> {
        while let Some(timer) = self.window_end.poll(&mut self.backend, watermark)? {
            self.backend.set_namespace(&self.window_sum, &timer.namespace)?;
            let sum = self.backend.reduced(&self.window_sum)?.unwrap_or(0);
            self.backend.clear(&self.window_sum)?;
            sink.pending.push(((timer.key, timer.namespace), sum));
        }
        Ok(())
    }

    fn results(&mut self, out: &mut HashMap<u64, UserState>) -> Result<()> {
        let (count, total) = (self.count.clone(), self.total.clone());
        let (large, buckets) = (self.large.clone(), self.buckets.clone());
        self.backend.apply_to_all_keys(&count, &VoidNamespace, |b, user| {
            let state = UserState {
                count: b.value(&count)?.unwrap_or(0),
                total: b.reduced(&total)?.unwrap_or(0),
                large: b.list(&large)?,
                buckets: b.map_entries(&buckets)?.into_iter().collect(),
            };
            out.insert(*user, state);
            Ok(())
        })
    }
}

/// One parallel instance of the source: the partitions it reads and its
/// position in each, kept in operator list state (split redistribution) so
/// that a restored source resumes exactly where the checkpoint was taken.
struct SourceSubtask {
    store: OperatorStateStore,
    offsets_state: OperatorListState<(u32, u64)>,
    offsets: std::collections::BTreeMap<u32, u64>,
}

impl SourceSubtask {
    fn open(mut store: OperatorStateStore) -> Result<Self> {
        let offsets_state = store.list_state(&ListStateDescriptor::<(u32, u64)>::new("offsets"))?;
        let offsets = offsets_state.get(&store)?.into_iter().collect();
        Ok(SourceSubtask {
            store,
            offsets_state,
            offsets,
        })
    }
}

/// The source operator: reads the stream's partitions.
struct Source {
    subtasks: Vec<SourceSubtask>,
    /// Which subtask reads each partition.
    owner: Vec<usize>,
}

impl Source {
    /// A fresh source: subtask `i` reads the partitions `p` with `p % parallelism == i`, from the start.
    fn new(parallelism: u32) -> Result<Self> {
        let mut subtasks = Vec::new();
        for i in 0..parallelism {
            let mut s = SourceSubtask::open(OperatorStateStore::new(i, parallelism)?)?;
            s.offsets = (0..PARTITIONS)
                .filter(|p| p % parallelism == i)
                .map(|p| (p, 0))
                .collect();
            subtasks.push(s);
        }
        Self::from_subtasks(subtasks)
    }

    /// The source of `checkpoint`, its offsets redistributed over `parallelism` subtasks.
    async fn restore(parallelism: u32, checkpoint: &ResolvedCheckpoint) -> Result<Self> {
        let op = checkpoint
            .metadata
            .operator(SOURCE)
            .ok_or_else(|| Error::not_found(format!("checkpoint {} has no source offsets", checkpoint.pointer)))?;
        let mut subtasks = Vec::new();
        for i in 0..parallelism {
            let store =
                OperatorStateStore::restore(i, parallelism, &op.operator_state, op.parallelism, &*checkpoint.reader)
                    .await?;
            subtasks.push(SourceSubtask::open(store)?);
        }
        Self::from_subtasks(subtasks)
    }

    fn from_subtasks(subtasks: Vec<SourceSubtask>) -> Result<Self> {
        let mut owner = vec![usize::MAX; PARTITIONS as usize];
        for (i, s) in subtasks.iter().enumerate() {
            for &p in s.offsets.keys() {
                match owner.get_mut(p as usize) {
                    Some(o) if *o == usize::MAX => *o = i,
                    _ => {
                        return Err(Error::corrupted(format!(
                            "source partition {p} is unknown or read twice"
                        )))
                    }
                }
            }
        }
        if let Some(p) = owner.iter().position(|o| *o == usize::MAX) {
            return Err(Error::corrupted(format!("no source subtask reads partition {p}")));
        }
        Ok(Source { subtasks, owner })
    }

    /// Reads event `g`: it must be next in its partition.
    fn read(&mut self, g: u64) -> Result<()> {
        let p = (g % u64::from(PARTITIONS)) as u32;
        let s = &mut self.subtasks[self.owner[p as usize]];
        let offset = s.offsets.entry(p).or_default();
        if *offset != g / u64::from(PARTITIONS) {
            return Err(Error::internal(format!(
                "event {g} read at offset {offset} of partition {p}"
            )));
        }
        *offset += 1;
        Ok(())
    }

    /// The number of events read: where the stream resumes.
    fn position(&self) -> u64 {
        self.subtasks.iter().flat_map(|s| s.offsets.values()).sum()
    }

    /// The sync phase of a checkpoint of every source subtask.
    fn snapshot(&mut self, id: u64, location: &Arc<CheckpointLocation>) -> Result<Vec<PendingOperatorSnapshot>> {
        let mut pending = Vec::new();
        for s in &mut self.subtasks {
            let offsets: Vec<(u32, u64)> = s.offsets.iter().map(|(p, o)| (*p, *o)).collect();
            s.offsets_state.update(&mut s.store, offsets)?;
            pending.push(s.store.snapshot(id, Arc::clone(location))?);
        }
        Ok(pending)
    }
}

/// What a running job reports, for a progress display.
pub(crate) trait Progress {
    /// `done` events are processed.
    fn events(&mut self, done: u64);
    /// Checkpoint `id` is being taken.
    fn checkpoint_started(&mut self, id: u64);
    /// A checkpoint completed after `done` events.
    fn checkpoint_completed(&mut self, done: u64, report: CheckpointReport);
}

/// The job: the source, and the keyed operator at some parallelism,
/// routing events by key group.
pub(crate) struct Job<B> {
    source: Source,
    subtasks: Vec<Subtask<B>>,
    ranges: Vec<KeyGroupRange>,
    key_serializer: SharedSerializer<u64>,
    key_buf: Vec<u8>,
    /// The files of the last completed checkpoint (to count reused ones).
    last_files: std::collections::HashSet<String>,
}

impl<B: DemoBackend> Job<B> {
    pub(crate) fn configs(parallelism: u32) -> Result<Vec<KeyedBackendConfig<u64>>> {
        (0..parallelism)
            .map(|i| {
                Ok(KeyedBackendConfig::new(
                    KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?,
                    MAX_PARALLELISM,
                ))
            })
            .collect()
    }

    fn from_backends(source: Source, backends: Vec<B>) -> Result<Self> {
        let ranges = backends.iter().map(|b| b.key_group_range()).collect();
        let key_serializer = default_serializer::<u64>();
        let subtasks = backends.into_iter().map(Subtask::open).collect::<Result<_>>()?;
        Ok(Job {
            source,
            subtasks,
            ranges,
            key_serializer,
            key_buf: Vec::new(),
            last_files: Default::default(),
        })
    }

    pub(crate) fn new(parallelism: u32, env: &Env) -> Result<Self> {
        let backends = Self::configs(parallelism)?
            .into_iter()
            .zip(0..)
            .map(|(config, i)| B::create(config, env, i))
            .collect::<Result<_>>()?;
        Self::from_backends(Source::new(parallelism)?, backends)
    }

    pub(crate) async fn restore(parallelism: u32, checkpoint: &ResolvedCheckpoint, env: &Env) -> Result<Self> {
        let handles = checkpoint
            .metadata
            .operator(OPERATOR)
            .map(|o| o.keyed.clone())
            .unwrap_or_default();
        let mut backends = Vec::new();
        for (config, i) in Self::configs(parallelism)?.into_iter().zip(0..) {
            // Handles do not carry their checkpoint: name it here.
            let backend = B::restore(config, &handles, &checkpoint.reader, env, i)
                .await
                .map_err(|e| e.context(format!("restoring subtask {i} from checkpoint {}", checkpoint.pointer)))?;
            backends.push(backend);
        }
        let source = Source::restore(parallelism, checkpoint)
            .await
            .map_err(|e| e.context(format!("restoring the source from checkpoint {}", checkpoint.pointer)))?;
        let mut job = Self::from_backends(source, backends)?;
        job.last_files = checkpoint.metadata.file_paths().into_iter().collect();
        Ok(job)
    }

    /// The keyed operator's parallelism.
    pub(crate) fn parallelism(&self) -> usize {
        self.subtasks.len()
    }

    /// The databases of the running backends that have one.
    pub(crate) fn databases(&self) -> Vec<&str> {
        self.subtasks.iter().filter_map(|s| s.backend.database()).collect()
    }

    /// How many keyed subtasks were restored from local copies.
    pub(crate) fn restored_locally(&self) -> usize {
        self.subtasks.iter().filter(|s| s.backend.restored_locally()).count()
    }

    /// The number of events the source has read: where the stream resumes.
    pub(crate) fn position(&self) -> u64 {
        self.source.position()
    }

    /// Reads event `g` from the source and processes it.
    fn process(&mut self, g: u64, e: &Event) -> Result<()> {
        self.source.read(g)?;
        self.key_buf.clear();
        self.key_serializer.serialize(&e.user, &mut self.key_buf)?;
        let kg = key_group_for_key_bytes(&self.key_buf, MAX_PARALLELISM);
        let i = self
            .ranges
            .iter()
            .position(|r| r.contains(kg))
            .ok_or_else(|| Error::internal(format!("no subtask owns key group {kg}")))?;
        self.subtasks[i].process(e)
    }

    /// Advances every subtask's watermark to `watermark`.
    pub(crate) fn advance_watermark(&mut self, watermark: i64, sink: &mut Sink) -> Result<()> {
        for s in &mut self.subtasks {
            s.advance_watermark(watermark, sink)?;
        }
        Ok(())
    }

    /// Processes events `range` of `stream`, with a watermark every
    /// [`WATERMARK_EVERY`] events and a checkpoint every `checkpoint_every`,
    /// numbered from `next_id`; `progress` hears of both.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_events(
        &mut self,
        stream: &[Event],
        range: std::ops::Range<u64>,
        checkpoint_every: u64,
        store: &mut CheckpointStore,
        sink: &mut Sink,
        next_id: &mut u64,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        for g in range {
            let Some(e) = stream.get(g as usize) else { break };
            self.process(g, e)?;
            let done = g + 1;
            if done.is_multiple_of(WATERMARK_EVERY) {
                self.advance_watermark(e.time, sink)?;
                progress.events(done);
            }
            if done.is_multiple_of(checkpoint_every) {
                progress.checkpoint_started(*next_id);
                let report = self
                    .checkpoint(store, *next_id, CheckpointKind::Checkpoint, sink)
                    .await?;
                progress.checkpoint_completed(done, report);
                *next_id += 1;
            }
        }
        Ok(())
    }

    /// Takes checkpoint (or savepoint) `id` of every subtask: sync phases
    /// in turn, async phases concurrently, then the metadata, last. A
    /// checkpoint that fails is aborted.
    pub(crate) async fn checkpoint(
        &mut self,
        store: &mut CheckpointStore,
        id: u64,
        kind: CheckpointKind,
        sink: &mut Sink,
    ) -> Result<CheckpointReport> {
        let (location, options) = match kind {
            CheckpointKind::Checkpoint => (store.begin_checkpoint(id).await?, SnapshotOptions::checkpoint()),
            CheckpointKind::Savepoint => (store.begin_savepoint(id, None).await?, SnapshotOptions::savepoint()),
        };
        sink.pre_commit(id).await?;
        match self.snapshot(store, &location, options).await {
            Ok(report) => {
                // The results fired before this checkpoint's sync phase are final now.
                sink.commit(id).await?;
                Ok(report)
            }
            Err(e) => {
                sink.abort(id).await;
                if let Err(abort) = store.abort(&location, &[]).await {
                    eprintln!("flowstate demo: aborting checkpoint {id} failed too: {abort}");
                }
                for s in &mut self.subtasks {
                    s.backend.notify_checkpoint_aborted(id)?;
                }
                Err(e)
            }
        }
    }

    async fn snapshot(
        &mut self,
        store: &mut CheckpointStore,
        location: &Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<CheckpointReport> {
        let id = location.checkpoint_id();
        let sync_started = Instant::now();
        let mut pending = Vec::new();
        for s in &mut self.subtasks {
            pending.push(s.backend.snapshot(id, Arc::clone(location), options)?);
        }
        let source_pending = self.source.snapshot(id, location)?;
        let sync = sync_started.elapsed();
        let async_started = Instant::now();
        let source_tasks: Vec<_> = source_pending.into_iter().map(|p| tokio::spawn(p.run())).collect();
        let tasks: Vec<_> = pending.into_iter().map(|p| tokio::spawn(p.run())).collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(
                t.await
                    .map_err(|e| Error::internal(format!("snapshot task failed: {e}")))??,
            );
        }
        let mut offsets = Vec::new();
        for t in source_tasks {
            offsets.push(
                t.await
                    .map_err(|e| Error::internal(format!("source snapshot task failed: {e}")))??,
            );
        }
        let async_elapsed = async_started.elapsed();
        let offsets_size: u64 = offsets.iter().map(|h| h.state_size()).sum();
        let metadata = CheckpointMetadata::new(id, options.kind, SystemClock.now_millis())
            .with_operator(
                OperatorState::new(SOURCE, self.source.subtasks.len() as u32, MAX_PARALLELISM, Vec::new())
                    .with_operator_state(offsets),
            )
            .with_operator(OperatorState::new(
                OPERATOR,
                self.subtasks.len() as u32,
                MAX_PARALLELISM,
                results.iter().map(|r| r.handle.clone()).collect(),
            ));
        let files = metadata.file_paths();
        let shared = format!("{SHARED_DIR}/");
        let reused = files
            .iter()
            .filter(|f| f.starts_with(&shared) && self.last_files.contains(*f))
            .count();
        let completion = store.complete(location, metadata).await?;
        if options.kind == CheckpointKind::Checkpoint {
            for s in &mut self.subtasks {
                s.backend.notify_checkpoint_complete(id)?;
            }
            self.last_files = files.into_iter().collect();
        }
        Ok(CheckpointReport {
            id,
            kind: options.kind,
            reused,
            pointer: completion.pointer,
            sync_ms: sync.as_secs_f64() * 1e3,
            async_ms: async_elapsed.as_secs_f64() * 1e3,
            bytes: results.iter().map(|r| r.stats.bytes_written).sum::<u64>() + offsets_size,
            full_size: results.iter().map(|r| r.stats.full_size).sum::<u64>() + offsets_size,
        })
    }

    pub(crate) fn results(&mut self) -> Result<HashMap<u64, UserState>> {
        let mut out = HashMap::new();
        for s in &mut self.subtasks {
            s.results(&mut out)?;
        }
        Ok(out)
    }
}

/// What one checkpoint (or savepoint) took.
pub(crate) struct CheckpointReport {
    /// Its id.
    pub(crate) id: u64,
    /// Checkpoint or savepoint.
    pub(crate) kind: CheckpointKind,
    /// Shared files of the previous checkpoint this one references again.
    pub(crate) reused: usize,
    /// Where its metadata is.
    pub(crate) pointer: String,
    /// Its synchronous phase, all subtasks.
    pub(crate) sync_ms: f64,
    /// Its asynchronous phase, all subtasks at once.
    pub(crate) async_ms: f64,
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Bytes of state it refers to.
    pub(crate) full_size: u64,
}

impl CheckpointReport {
    pub(crate) fn kind(&self) -> &'static str {
        match self.kind {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Savepoint => "savepoint",
        }
    }
}
