//! The demo job: per-user event counts and amount sums, keyed by user,
//! at parallelism 2, with periodic checkpoints, a crash and a recovery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use flowstate_api::checkpoint::{
    is_own_file_name, unique_file_name, BlobStore, CheckpointLocation, OperatorState, ResolvedCheckpoint, StateReader,
    SHARED_DIR,
};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::operator::PendingOperatorSnapshot;
use flowstate_api::ttl::{Clock, SystemClock};
use flowstate_api::*;

use flowstate_heap::HeapBackend;
use flowstate_object::ObjectStoreBuilder;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

/// Options of `flowstate demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Events to process.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Distinct keys (users).
    #[arg(long, default_value_t = 200_000)]
    keys: u64,
    /// Take a checkpoint every this many events.
    #[arg(long, default_value_t = 25_000)]
    checkpoint_every: u64,
    /// Crash after this many events (between checkpoints).
    #[arg(long, default_value_t = 140_000)]
    crash_after: u64,
    /// Parallelism of the keyed operator.
    #[arg(long, default_value_t = 2)]
    parallelism: u32,
    /// Parallelism to recover at (rescaling the keyed state and the
    /// source's offsets); default: `--parallelism`.
    #[arg(long)]
    restore_parallelism: Option<u32>,
    /// List every file left in the directory at the end.
    #[arg(long)]
    verbose: bool,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory for checkpoints and savepoints (default: a new directory
    /// under the system's temporary directory). It is left in place.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Checkpoint storage: `fs` (under `--dir`), `memory`, a directory, or
    /// an object store URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `file:///path`),
    /// with credentials from the environment (`AWS_*`, …) or
    /// `--storage-option`.
    #[arg(long, default_value = "fs")]
    storage: String,
    /// An option of the object store, `key=value` (e.g.
    /// `endpoint=http://127.0.0.1:9000`, `allow_http=true`); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    storage_options: Vec<String>,
    /// Completed checkpoints to retain.
    #[arg(long, default_value_t = 1)]
    retain: usize,
    /// State backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Rocksdb)]
    backend: BackendKind,
    /// Full checkpoints instead of incremental ones (RocksDB).
    #[arg(long)]
    full: bool,
    /// Really terminate the process (abort) at this event of the first
    /// attempt instead of the simulated crash; `--resume` then recovers.
    #[arg(long, value_name = "EVENT", conflicts_with = "resume")]
    kill_at: Option<u64>,
    /// Recover the run left in this directory (by a killed process) from
    /// what is on disk, finish it and check it is exactly-once. Takes the
    /// run's settings from the directory; `--storage-option`,
    /// `--restore-parallelism` and `--verbose` may be given again.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
}

/// The settings of a run, kept in its directory for `--resume`.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunSettings {
    events: u64,
    keys: u64,
    checkpoint_every: u64,
    crash_after: u64,
    parallelism: u32,
    seed: u64,
    storage: String,
    retain: usize,
    backend: BackendKind,
    full: bool,
}

/// The file of a run's settings in its directory.
const SETTINGS_FILE: &str = "demo-run.json";

impl DemoArgs {
    fn settings(&self) -> RunSettings {
        RunSettings {
            events: self.events,
            keys: self.keys,
            checkpoint_every: self.checkpoint_every,
            crash_after: self.crash_after,
            parallelism: self.parallelism,
            seed: self.seed,
            storage: self.storage.clone(),
            retain: self.retain,
            backend: self.backend,
            full: self.full,
        }
    }

    /// The arguments of the run left in `dir`, with this invocation's
    /// storage options, restore parallelism and verbosity.
    fn resumed(self, dir: &Path) -> Result<DemoArgs> {
        let path = dir.join(SETTINGS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
        let s: RunSettings = serde_json::from_str(&text)
            .map_err(|e| Error::corrupted(format!("{}: not the settings of a demo run: {e}", path.display())))?;
        Ok(DemoArgs {
            events: s.events,
            keys: s.keys,
            checkpoint_every: s.checkpoint_every,
            crash_after: s.crash_after,
            parallelism: s.parallelism,
            seed: s.seed,
            storage: s.storage,
            retain: s.retain,
            backend: s.backend,
            full: s.full,
            dir: Some(dir.to_path_buf()),
            kill_at: None,
            resume: Some(dir.to_path_buf()),
            ..self
        })
    }
}

/// Which state backend runs the job.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    /// RocksDB, with incremental checkpoints and local recovery.
    Rocksdb,
    /// The in-memory backend.
    Heap,
}

/// Where a backend keeps its local files.
struct Env {
    work: PathBuf,
    local: PathBuf,
    incremental: bool,
}

/// A backend the demo can run on.
trait DemoBackend: KeyedStateBackend<Key = u64> + Sized + Send + 'static {
    const NAME: &'static str;
    fn create(config: KeyedBackendConfig<u64>, env: &Env, subtask: u32) -> Result<Self>;
    fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
        env: &Env,
        subtask: u32,
    ) -> impl std::future::Future<Output = Result<Self>> + Send;
    /// Whether the restore used a local copy.
    fn restored_locally(&self) -> bool {
        false
    }
}

impl DemoBackend for HeapBackend<u64> {
    const NAME: &'static str = "heap";
    fn create(config: KeyedBackendConfig<u64>, _env: &Env, _subtask: u32) -> Result<Self> {
        HeapBackend::new(config)
    }
    async fn restore(
        config: KeyedBackendConfig<u64>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
        _env: &Env,
        _subtask: u32,
    ) -> Result<Self> {
        HeapBackend::restore(config, handles, reader).await
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
        reader: &dyn StateReader,
        env: &Env,
        subtask: u32,
    ) -> Result<Self> {
        RocksDbBackend::restore(config, handles, reader, rocksdb_options(env, subtask)).await
    }
    fn restored_locally(&self) -> bool {
        self.restore_stats().handles_from_local_copy > 0
    }
}

/// Where checkpoints go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StorageKind {
    /// Filesystem storage under `--dir`.
    Fs,
    /// Filesystem storage under this directory.
    Dir(PathBuf),
    /// In-memory ("JobManager memory") storage; lost when the process ends.
    Memory,
    /// An object store at this URL.
    Object(String),
}

impl StorageKind {
    fn parse(s: &str) -> StorageKind {
        match s {
            "fs" => StorageKind::Fs,
            "memory" => StorageKind::Memory,
            url if url.contains("://") => StorageKind::Object(url.to_string()),
            dir => StorageKind::Dir(PathBuf::from(dir)),
        }
    }
}

const MAX_PARALLELISM: u32 = 128;
const OPERATOR: &str = "count-by-user";
/// The source operator, whose offsets are operator list state.
const SOURCE: &str = "source";
/// Partitions of the event stream: event `g` is at position
/// `g / PARTITIONS` of partition `g % PARTITIONS`.
const PARTITIONS: u32 = 4;
const JOB: &str = "flowstate-demo";
/// The RocksDB working directory under the demo's directory.
const WORKING_DIR: &str = "rocksdb";

/// The files under `dir`, relative, with sizes; runs of state files in one
/// directory are summarized. The RocksDB working directory is left out: the
/// backends just dropped are removing theirs in the background, and
/// anything else that vanishes during the walk is skipped.
fn layout(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let mut entries: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries.filter_map(|e| e.ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        entries.sort_by_key(|e| e.file_name());
        let (mut state_files, mut state_bytes) = (0, 0);
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == WORKING_DIR {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = match e.metadata() {
                Ok(meta) => meta,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::io(e.path().display(), err)),
            };
            if meta.is_dir() {
                out.push(format!("{path}/"));
                walk(&e.path(), &path, out)?;
            } else if is_own_file_name(&name) {
                state_files += 1;
                state_bytes += meta.len();
            } else {
                out.push(format!("{path} ({} bytes)", meta.len()));
            }
        }
        if state_files > 0 {
            out.push(format!("{rel}/<{state_files} state files, {state_bytes} bytes>"));
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

/// One event of the generated stream.
#[derive(Debug, Clone, Copy)]
struct Event {
    user: u64,
    amount: u64,
    /// Event time, in milliseconds.
    time: i64,
}

/// Milliseconds of event time between two events.
const EVENT_SPACING_MS: i64 = 10;
/// The length of the event-time tumbling windows.
const WINDOW_MS: i64 = 50_000;
/// Events between two watermarks.
const WATERMARK_EVERY: u64 = 1_000;

/// The window an event time falls in.
fn window_of(time: i64) -> i64 {
    time.div_euclid(WINDOW_MS)
}

/// A window's result: (user, window) → sum of amounts.
type WindowResults = HashMap<(u64, i64), u64>;

/// The sink of window results: what a checkpoint's sync phase has seen is
/// committed once that checkpoint completes (a two-phase-commit sink), so
/// after a crash nothing is emitted twice or lost.
/// With a directory, the sink is durable: a checkpoint's results are
/// written to `pending-<id>` before the checkpoint completes and renamed to
/// `committed-<id>` after, so a killed process loses none and repeats none.
#[derive(Default)]
struct Sink {
    pending: Vec<((u64, i64), u64)>,
    committed: WindowResults,
    duplicates: u64,
    dir: Option<PathBuf>,
}

impl Sink {
    /// A sink whose transactions are files in `dir` (made if missing).
    fn durable(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        Ok(Sink {
            dir: Some(dir),
            ..Sink::default()
        })
    }

    fn file(&self, what: &str, id: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{what}-{id}")))
    }

    /// First phase, before checkpoint `id` completes: its results are made
    /// durable.
    fn pre_commit(&mut self, id: u64) -> Result<()> {
        let Some(path) = self.file("pending", id) else {
            return Ok(());
        };
        let mut text = String::new();
        for ((user, window), sum) in &self.pending {
            text.push_str(&format!("{user} {window} {sum}\n"));
        }
        write_synced(&path, text.as_bytes())
    }

    /// Second phase, once checkpoint `id` completed.
    fn commit(&mut self, id: u64) -> Result<()> {
        for (k, v) in self.pending.drain(..) {
            if self.committed.insert(k, v).is_some() {
                self.duplicates += 1;
            }
        }
        if let (Some(from), Some(to)) = (self.file("pending", id), self.file("committed", id)) {
            std::fs::rename(&from, &to).map_err(|e| Error::io(from.display(), e))?;
        }
        Ok(())
    }

    /// Checkpoint `id` failed: its first phase is undone (its results stay
    /// pending for the next checkpoint).
    fn abort(&mut self, id: u64) {
        if let Some(path) = self.file("pending", id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The durable sink of `dir` after a restore of checkpoint `restored`
    /// (`None`: none completed): transactions of checkpoints up to it are
    /// committed (one may have completed without its second phase), later
    /// ones dropped.
    fn recover(dir: PathBuf, restored: Option<u64>) -> Result<Self> {
        let mut sink = Sink::durable(dir.clone())?;
        let mut files: Vec<(u64, bool, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display(), e))? {
            let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name
                .strip_prefix("committed-")
                .map(|n| (n, true))
                .or_else(|| name.strip_prefix("pending-").map(|n| (n, false)));
            if let Some((id, committed)) = parsed.and_then(|(n, c)| n.parse::<u64>().ok().map(|id| (id, c))) {
                files.push((id, committed, entry.path()));
            }
        }
        files.sort();
        for (id, committed, path) in files {
            if !committed && restored.is_none_or(|r| id > r) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
            for line in text.lines() {
                let mut f = line.split(' ').map(str::parse::<i64>);
                let (Some(Ok(user)), Some(Ok(window)), Some(Ok(sum)), None) = (f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(Error::corrupted(format!("{}: bad line {line:?}", path.display())));
                };
                if sink.committed.insert((user as u64, window), sum as u64).is_some() {
                    sink.duplicates += 1;
                }
            }
            if !committed {
                sink.commit(id)?;
            }
        }
        Ok(sink)
    }
}

/// Writes `data` to a new file at `path` and syncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
    f.write_all(data).map_err(|e| Error::io(path.display(), e))?;
    f.sync_all().map_err(|e| Error::io(path.display(), e))
}

/// The deterministic event stream (xorshift64*).
fn events(seed: u64, keys: u64, n: u64) -> Vec<Event> {
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
struct UserState {
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
    fn add(&mut self, amount: u64) {
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

/// The job: the source, and the keyed operator at some parallelism,
/// routing events by key group.
struct Job<B> {
    source: Source,
    subtasks: Vec<Subtask<B>>,
    ranges: Vec<KeyGroupRange>,
    key_serializer: SharedSerializer<u64>,
    key_buf: Vec<u8>,
    /// The files of the last completed checkpoint (to count reused ones).
    last_files: std::collections::HashSet<String>,
}

impl<B: DemoBackend> Job<B> {
    fn configs(parallelism: u32) -> Result<Vec<KeyedBackendConfig<u64>>> {
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

    fn new(parallelism: u32, env: &Env) -> Result<Self> {
        let backends = Self::configs(parallelism)?
            .into_iter()
            .zip(0..)
            .map(|(config, i)| B::create(config, env, i))
            .collect::<Result<_>>()?;
        Self::from_backends(Source::new(parallelism)?, backends)
    }

    async fn restore(parallelism: u32, checkpoint: &ResolvedCheckpoint, env: &Env) -> Result<Self> {
        let handles = checkpoint
            .metadata
            .operator(OPERATOR)
            .map(|o| o.keyed.clone())
            .unwrap_or_default();
        let mut backends = Vec::new();
        for (config, i) in Self::configs(parallelism)?.into_iter().zip(0..) {
            // Handles do not carry their checkpoint: name it here.
            let backend = B::restore(config, &handles, &*checkpoint.reader, env, i)
                .await
                .map_err(|e| e.context(format!("restoring subtask {i} from checkpoint {}", checkpoint.pointer)))?;
            backends.push(backend);
        }
        let source = Source::restore(parallelism, checkpoint)
            .await
            .map_err(|e| e.context(format!("restoring the source from checkpoint {}", checkpoint.pointer)))?;
        Self::from_backends(source, backends)
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
    fn advance_watermark(&mut self, watermark: i64, sink: &mut Sink) -> Result<()> {
        for s in &mut self.subtasks {
            s.advance_watermark(watermark, sink)?;
        }
        Ok(())
    }

    /// Processes events `range` of `stream`, with a watermark every
    /// [`WATERMARK_EVERY`] events and a checkpoint every `checkpoint_every`,
    /// numbered from `next_id`; each checkpoint gets a progress line and
    /// joins `reports`.
    #[allow(clippy::too_many_arguments)]
    async fn run_events(
        &mut self,
        stream: &[Event],
        range: std::ops::Range<u64>,
        checkpoint_every: u64,
        store: &mut CheckpointStore,
        sink: &mut Sink,
        next_id: &mut u64,
        reports: &mut Vec<CheckpointReport>,
    ) -> Result<()> {
        // On a terminal, a progress bar (events/s, checkpoints, the one in
        // flight) under the progress lines; elsewhere only the lines.
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(stream.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} events, {per_sec} ({elapsed}) {msg}")
        {
            bar.set_style(style);
        }
        bar.set_position(range.start);
        let mut taken = 0;
        for g in range {
            let Some(e) = stream.get(g as usize) else { break };
            self.process(g, e)?;
            let done = g + 1;
            if done.is_multiple_of(WATERMARK_EVERY) {
                self.advance_watermark(e.time, sink)?;
                bar.set_position(done);
            }
            if done.is_multiple_of(checkpoint_every) {
                bar.set_message(format!("{taken} checkpoints, checkpoint {next_id} in flight"));
                let report = self
                    .checkpoint(store, *next_id, CheckpointKind::Checkpoint, sink)
                    .await?;
                bar.suspend(|| println!("{}", progress_line(&format!("event {done}"), &report)));
                reports.push(report);
                taken += 1;
                bar.set_message(format!("{taken} checkpoints"));
                *next_id += 1;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Takes checkpoint (or savepoint) `id` of every subtask: sync phases
    /// in turn, async phases concurrently, then the metadata, last. A
    /// checkpoint that fails is aborted.
    async fn checkpoint(
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
        sink.pre_commit(id)?;
        match self.snapshot(store, &location, options).await {
            Ok(report) => {
                // The results fired before this checkpoint's sync phase are final now.
                sink.commit(id)?;
                Ok(report)
            }
            Err(e) => {
                sink.abort(id);
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

    fn results(&mut self) -> Result<HashMap<u64, UserState>> {
        let mut out = HashMap::new();
        for s in &mut self.subtasks {
            s.results(&mut out)?;
        }
        Ok(out)
    }
}

struct CheckpointReport {
    id: u64,
    kind: CheckpointKind,
    /// Shared files of the previous checkpoint this one references again.
    reused: usize,
    pointer: String,
    sync_ms: f64,
    async_ms: f64,
    bytes: u64,
    full_size: u64,
}

impl CheckpointReport {
    fn kind(&self) -> &'static str {
        match self.kind {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Savepoint => "savepoint",
        }
    }
}

/// The line printed while the job runs, when a checkpoint completes; `at`
/// says when (`event 25000`, `end of input`).
fn progress_line(at: &str, r: &CheckpointReport) -> String {
    format!(
        "{at:>13}: {} {} complete, {} written",
        r.kind(),
        r.id,
        crate::admin::size(r.bytes)
    )
}

/// The summary table printed at the end: one row per checkpoint.
fn print_table(reports: &[CheckpointReport]) {
    println!(
        "{:>4} {:10} {:>8} {:>9} {:>12} {:>12} {:>6}  where",
        "id", "kind", "sync ms", "async ms", "bytes", "full size", "reused"
    );
    for r in reports {
        // Checkpoint pointers are long and alike: their last part says it.
        let at = r.pointer.rsplit('/').next().unwrap_or(&r.pointer);
        println!(
            "{:>4} {:10} {:>8.1} {:>9.1} {:>12} {:>12} {:>6}  {at}",
            r.id,
            r.kind(),
            r.sync_ms,
            r.async_ms,
            r.bytes,
            r.full_size,
            r.reused
        );
    }
}

/// Runs the demo; returns whether the exactly-once check passed.
pub async fn run(args: DemoArgs) -> Result<bool> {
    let args = match args.resume.clone() {
        Some(dir) => args.resumed(&dir)?,
        None => args,
    };
    match args.backend {
        BackendKind::Rocksdb => run_on::<RocksDbBackend<u64>>(args).await,
        BackendKind::Heap => run_on::<HeapBackend<u64>>(args).await,
    }
}

async fn run_on<B: DemoBackend>(args: DemoArgs) -> Result<bool> {
    if args.checkpoint_every == 0 || args.keys == 0 || args.crash_after >= args.events {
        return Err(Error::invalid(
            "need --checkpoint-every > 0, --keys > 0 and --crash-after < --events",
        ));
    }
    for (flag, p) in [
        ("--parallelism", Some(args.parallelism)),
        ("--restore-parallelism", args.restore_parallelism),
    ] {
        if let Some(p) = p.filter(|p| !(1..=MAX_PARALLELISM).contains(p)) {
            return Err(Error::invalid(format!(
                "{flag} {p} is outside 1..={MAX_PARALLELISM} (the max parallelism)"
            )));
        }
    }
    if args.kill_at.is_some_and(|k| k >= args.events) {
        return Err(Error::invalid("need --kill-at < --events"));
    }
    if (args.kill_at.is_some() || args.resume.is_some()) && args.storage == "memory" {
        return Err(Error::invalid(
            "--kill-at and --resume need storage that outlives the process (fs or an object store)",
        ));
    }
    let stream = events(args.seed, args.keys, args.events);
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("flowstate-demo-{}", unique_file_name())),
    };
    let env = Env {
        work: root.join(WORKING_DIR),
        local: root.join("local-recovery"),
        incremental: !args.full,
    };
    let kind = StorageKind::parse(&args.storage);
    let (storage, dir): (Arc<CheckpointStorage>, Option<PathBuf>) = match &kind {
        StorageKind::Object(url) => {
            let mut builder = ObjectStoreBuilder::new(url.as_str());
            for option in &args.storage_options {
                let Some((key, value)) = option.split_once('=') else {
                    return Err(Error::invalid(format!("--storage-option {option:?} is not KEY=VALUE")));
                };
                builder = builder.with_option(key, value);
            }
            let store = builder.build()?;
            let savepoints = format!("{}/savepoints", store.root());
            let storage = CheckpointStorage::new(Arc::new(store), JOB)?.with_savepoint_dir(savepoints);
            (Arc::new(storage), None)
        }
        StorageKind::Fs | StorageKind::Dir(_) => {
            let dir = match &kind {
                StorageKind::Dir(d) => d.clone(),
                _ => root.clone(),
            };
            let fs = flowstate_fs::checkpoint_storage(dir.join("checkpoints"), JOB)?
                .with_savepoint_dir(dir.join("savepoints").display().to_string());
            (Arc::new(fs), Some(dir))
        }
        StorageKind::Memory => (
            Arc::new(CheckpointStorage::in_memory(JOB).with_max_state_size(64 << 20)),
            None,
        ),
    };
    let config = CheckpointStoreConfig::default().with_max_retained(args.retain);
    println!(
        "flowstate demo: {} backend ({} checkpoints), {} checkpoint storage; {} events over {} keys, \
         parallelism {}, checkpoint every {} events, crash after event {}, retaining {}",
        B::NAME,
        if args.full || B::NAME == "heap" {
            "full"
        } else {
            "incremental"
        },
        match &kind {
            StorageKind::Fs => "filesystem",
            StorageKind::Dir(d) => d.to_str().unwrap_or("a directory"),
            StorageKind::Memory => "memory",
            StorageKind::Object(url) => url.as_str(),
        },
        args.events,
        args.keys,
        args.parallelism,
        args.checkpoint_every,
        args.crash_after,
        args.retain
    );
    println!("directory: {}", root.display());
    let mut reports = Vec::new();

    let sink_dir = (!matches!(kind, StorageKind::Memory)).then(|| root.join("sink"));
    let resuming = args.resume.is_some();
    let mut sink = Sink::default();
    let mut next_id = 1;
    if !resuming {
        if let Some(d) = &sink_dir {
            // A fresh run: its settings are kept for --resume, and no
            // transaction of an earlier run in this directory counts.
            let _ = std::fs::remove_dir_all(d);
            sink = Sink::durable(d.clone())?;
            let settings = serde_json::to_vec_pretty(&args.settings())
                .map_err(|e| Error::internal(format!("run settings: {e}")))?;
            write_synced(&root.join(SETTINGS_FILE), &settings)?;
        }
        // First attempt: runs until the crash (or the kill).
        let mut store = CheckpointStore::open(Arc::clone(&storage), config).await?;
        let mut job = Job::<B>::new(args.parallelism, &env)?;
        let stop = args.kill_at.unwrap_or(args.crash_after);
        job.run_events(
            &stream,
            0..stop,
            args.checkpoint_every,
            &mut store,
            &mut sink,
            &mut next_id,
            &mut reports,
        )
        .await?;
        if let Some(at) = args.kill_at {
            println!(
                "killing the process at event {at}; recover with: flowstate demo --resume {}",
                root.display()
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::abort();
        }
        drop((job, store));
        let lost = std::mem::take(&mut sink.pending).len();
        println!(
            "{:>13}: crash: in-memory state and {lost} uncommitted window results lost",
            format!("event {}", args.crash_after)
        );
    }

    // Recovery: reopen the checkpoint store, restore its latest checkpoint
    // (claiming it) and replay from its offset.
    let started = Instant::now();
    let mut store = CheckpointStore::open(Arc::clone(&storage), config).await?;
    let restore_parallelism = args.restore_parallelism.unwrap_or(args.parallelism);
    let pointer = store.latest().map(|c| c.pointer.clone());
    let mut restored = None;
    let mut job = match pointer {
        Some(pointer) => {
            let latest = store.restore(&pointer, RestoreMode::Claim).await?;
            let id = latest.metadata.checkpoint_id;
            let mut job = Job::<B>::restore(restore_parallelism, &latest, &env).await?;
            job.last_files = latest.metadata.file_paths().into_iter().collect();
            let local = job.subtasks.iter().filter(|s| s.backend.restored_locally()).count();
            let from = match local {
                0 => "from storage".to_string(),
                n if n == job.subtasks.len() => "from local copies".to_string(),
                n => format!("{n} of {restore_parallelism} subtasks from local copies, the others from storage"),
            };
            let summary = format!(
                "restored checkpoint {id} at parallelism {restore_parallelism} in {:.1} ms, {from}",
                started.elapsed().as_secs_f64() * 1e3
            );
            println!(
                "{:>13}: {summary}; replaying from here",
                format!("event {}", job.source.position())
            );
            restored = Some(format!("{summary} ({})", latest.pointer));
            if let (true, Some(d)) = (resuming, &sink_dir) {
                sink = Sink::recover(d.clone(), Some(id))?;
            }
            next_id = id + 1;
            job
        }
        None if resuming => {
            println!("no checkpoint completed before the process ended: starting again from the first event");
            if let Some(d) = &sink_dir {
                sink = Sink::recover(d.clone(), None)?;
            }
            // Checkpoint ids are never reused: a killed attempt may have
            // left files of its first checkpoints.
            next_id = store.storage().checkpoint_dirs().await?.last().map_or(1, |m| m + 1);
            Job::<B>::new(restore_parallelism, &env)?
        }
        None => return Err(Error::not_found("no complete checkpoint to recover from")),
    };
    // The source's restored offsets say where to resume.
    let offset = job.source.position();
    job.run_events(
        &stream,
        offset..args.events,
        args.checkpoint_every,
        &mut store,
        &mut sink,
        &mut next_id,
        &mut reports,
    )
    .await?;
    // End of input: the final watermark closes every window, and a last
    // checkpoint commits their results.
    job.advance_watermark(i64::MAX, &mut sink)?;
    let last = job
        .checkpoint(&mut store, next_id, CheckpointKind::Checkpoint, &mut sink)
        .await?;
    println!("{}", progress_line("end of input", &last));
    reports.push(last);
    next_id += 1;
    // Memory storage keeps nothing once the process ends: a savepoint there
    // would outlive nothing.
    let mut gc = None;
    if !matches!(kind, StorageKind::Memory) {
        let savepoint = job
            .checkpoint(&mut store, next_id, CheckpointKind::Savepoint, &mut sink)
            .await?;
        println!("{}", progress_line("end of input", &savepoint));
        reports.push(savepoint);
        gc = Some(store.collect_garbage(&GcOptions::new(Duration::ZERO)).await?);
    }

    // The summary: every checkpoint, the restore, where the files are.
    println!();
    print_table(&reports);
    match &restored {
        Some(r) => println!("{r}"),
        None => println!("restored nothing: started again from the first event"),
    }
    if let Some(gc) = gc {
        println!(
            "garbage collection (dry run): {} orphaned files, {}; {} metadata files read",
            gc.orphans.len(),
            crate::admin::size(gc.bytes),
            gc.metadata_read
        );
    }

    // The check: the recovered job's state equals a failure-free computation.
    let got = job.results()?;
    let mut want: HashMap<u64, UserState> = HashMap::new();
    let mut want_windows = WindowResults::new();
    for e in &stream {
        want.entry(e.user).or_default().add(e.amount);
        *want_windows.entry((e.user, window_of(e.time))).or_default() += e.amount;
    }
    drop(job);
    if let Some(dir) = &dir {
        let lines = layout(dir)?;
        if args.verbose {
            println!("files left in {}:", dir.display());
            for line in &lines {
                println!("  {line}");
            }
        } else {
            let job_dir = dir.join("checkpoints").join(JOB);
            println!(
                "files left in {} (--verbose lists them); see them with: flowstate checkpoints {} --savepoints {}",
                dir.display(),
                job_dir.display(),
                dir.join("savepoints").display()
            );
        }
    } else {
        match &kind {
            StorageKind::Object(url) => println!(
                "files left in {url}; see them with: flowstate checkpoints {url}/{JOB} --savepoints {url}/savepoints \
                 (with the same --storage-option)"
            ),
            _ => println!("files: none left (memory storage ends with the process)"),
        }
    }
    let windows_passed = sink.committed == want_windows && sink.duplicates == 0;
    let passed = got == want && windows_passed;
    if passed {
        println!(
            "exactly-once check: PASSED: {} keys (counts, sums, lists of large amounts, maps of amount buckets) \
             and {} fired window results equal a failure-free run of {} events",
            want.len(),
            want_windows.len(),
            args.events
        );
    } else {
        let wrong = want.iter().filter(|(k, v)| got.get(k) != Some(v)).count();
        let wrong_windows = want_windows
            .iter()
            .filter(|(k, v)| sink.committed.get(k) != Some(v))
            .count();
        println!(
            "exactly-once check: FAILED: {wrong} of {} keys differ from a failure-free run ({} keys recovered); \
             {wrong_windows} of {} window results missing or wrong, {} extra, {} emitted twice",
            want.len(),
            got.len(),
            want_windows.len(),
            sink.committed.len().saturating_sub(want_windows.len() - wrong_windows),
            sink.duplicates
        );
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_api::checkpoint::METADATA_FILE;

    /// A small run: 20,000 events over 2,000 keys, a checkpoint every
    /// 3,000, the crash after 10,000; heap backend on memory storage.
    fn small_run() -> DemoArgs {
        DemoArgs {
            events: 20_000,
            keys: 2_000,
            checkpoint_every: 3_000,
            crash_after: 10_000,
            parallelism: 2,
            restore_parallelism: None,
            verbose: false,
            seed: 7,
            dir: None,
            storage: "memory".into(),
            storage_options: Vec::new(),
            retain: 1,
            backend: BackendKind::Heap,
            full: false,
            kill_at: None,
            resume: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_recovers_exactly_once() {
        let args = DemoArgs {
            keys: 500,
            parallelism: 3,
            restore_parallelism: Some(2),
            ..small_run()
        };
        assert!(run(args).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_on_filesystem_leaves_flinks_layout() {
        let dir = tempfile::tempdir().unwrap();
        let args = DemoArgs {
            restore_parallelism: Some(3),
            verbose: true,
            dir: Some(dir.path().to_path_buf()),
            storage: "fs".into(),
            retain: 2,
            backend: BackendKind::Rocksdb,
            ..small_run()
        };
        assert!(run(args).await.unwrap());
        let job = dir.path().join("checkpoints").join(JOB);
        let mut top: Vec<String> = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        // 7 checkpoints in all (the last at the end of input); the newest two are retained.
        assert_eq!(top, ["chk-6", "chk-7", "shared", "taskowned"]);
        for chk in ["chk-6", "chk-7"] {
            assert!(job.join(chk).join(METADATA_FILE).is_file());
        }
        let savepoints: Vec<_> = std::fs::read_dir(dir.path().join("savepoints")).unwrap().collect();
        assert_eq!(savepoints.len(), 1);
        let sp = savepoints.into_iter().next().unwrap().unwrap();
        assert!(sp.file_name().to_string_lossy().starts_with("savepoint-flowst-8-"));
        assert!(sp.path().join(METADATA_FILE).is_file());
    }

    /// On the S3-compatible server of `scripts/test.sh`, with RocksDB's
    /// incremental checkpoints: recovery from the bucket is exactly-once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_on_s3_recovers_exactly_once() {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(endpoint) = var("FLOWSTATE_S3_ENDPOINT") else {
            assert!(
                var("CI").is_none_or(|v| v != "true"),
                "CI runs this against a server: use scripts/test.sh"
            );
            return;
        };
        let bucket = var("FLOWSTATE_S3_BUCKET").unwrap_or_else(|| "flowstate".into());
        let dir = tempfile::tempdir().unwrap();
        let args = DemoArgs {
            dir: Some(dir.path().to_path_buf()),
            storage: format!("s3://{bucket}/demo-{}", unique_file_name()),
            storage_options: vec![
                format!("endpoint={endpoint}"),
                format!(
                    "access_key_id={}",
                    var("FLOWSTATE_S3_ACCESS_KEY_ID").unwrap_or_default()
                ),
                format!(
                    "secret_access_key={}",
                    var("FLOWSTATE_S3_SECRET_ACCESS_KEY").unwrap_or_default()
                ),
                "region=us-east-1".into(),
                "allow_http=true".into(),
            ],
            retain: 2,
            backend: BackendKind::Rocksdb,
            ..small_run()
        };
        assert!(run(args).await.unwrap());
    }

    #[test]
    fn bad_storage_options_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (storage, option) in [("s3://b/x", "regoin=eu"), ("s3://b/x", "no-equals-sign")] {
            let args = DemoArgs {
                parallelism: 1,
                storage: storage.into(),
                storage_options: vec![option.into()],
                ..small_run()
            };
            let e = rt.block_on(run(args)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        }
    }

    #[test]
    fn parallelism_outside_the_max_is_refused_before_the_job_starts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (p, restore) in [(0, None), (129, None), (2, Some(0)), (2, Some(129))] {
            let dir = tempfile::tempdir().unwrap();
            let args = DemoArgs {
                parallelism: p,
                restore_parallelism: restore,
                dir: Some(dir.path().join("run")),
                storage: "fs".into(),
                ..small_run()
            };
            let e = rt.block_on(run(args)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{p} {restore:?}: {e}");
            assert!(e.to_string().contains("parallelism"), "{e}");
            assert!(
                !dir.path().join("run").exists(),
                "nothing was written before the refusal"
            );
        }
    }

    #[test]
    fn event_stream_is_deterministic() {
        let a = events(42, 100, 10);
        let b = events(42, 100, 10);
        assert_eq!(
            a.iter().map(|e| (e.user, e.amount)).collect::<Vec<_>>(),
            b.iter().map(|e| (e.user, e.amount)).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|e| e.user < 100 && e.amount < 1000));
    }
}
