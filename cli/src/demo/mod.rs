//! `flowstate demo`: the demo job (in [`job`]) run with periodic
//! checkpoints, a crash (simulated, or a real kill) and a recovery, checked
//! to be exactly-once against a failure-free computation.

mod job;
mod sink;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use flowstate_api::checkpoint::{is_own_file_name, unique_file_name, BlobStore};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::{
    CheckpointKind, CheckpointStorage, CheckpointStore, CheckpointStoreConfig, Error, KeyedStateHandle, RestoreMode,
    Result,
};
use flowstate_heap::HeapBackend;
use flowstate_object::object_store::{self, ObjectStore};
use flowstate_rocksdb::RocksDbBackend;
use flowstate_slatedb::{SlateDbBackendFactory, SlateDbOptions, SlateDbSyncBackend};

use job::{events, window_of, CheckpointReport, DemoBackend, Env, Event, Job, Progress, UserState};
use job::{JOB, MAX_PARALLELISM, OPERATOR};
use sink::{write_synced, Sink, WindowResults};

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
    /// Full checkpoints instead of incremental ones.
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
    /// SlateDB: state in the object store (or the directory) the
    /// checkpoints go to, checkpoints that pin it and upload nothing.
    Slatedb,
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

/// The RocksDB working directory under the demo's directory.
const WORKING_DIR: &str = "rocksdb";
/// The SlateDB backend's databases under the demo's directory (with
/// filesystem storage).
const SLATEDB_DIR: &str = "slatedb";

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
            if rel.is_empty() && (name == WORKING_DIR || name == SLATEDB_DIR) {
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
        BackendKind::Slatedb => run_on::<SlateDbSyncBackend<u64>>(args).await,
    }
}

/// Where a run keeps its files, and its checkpoint storage.
struct Setup {
    /// The run's directory.
    root: PathBuf,
    /// Where backends keep their local files.
    env: Env,
    kind: StorageKind,
    storage: Arc<CheckpointStorage>,
    /// The directory of filesystem storage, when that is the storage.
    dir: Option<PathBuf>,
    config: CheckpointStoreConfig,
    /// The durable sink's directory (none on memory storage).
    sink_dir: Option<PathBuf>,
}

impl Setup {
    /// The job's checkpoint store; it releases the SlateDB checkpoints of
    /// the checkpoints it no longer retains.
    async fn open_store(&self) -> Result<CheckpointStore> {
        let store = CheckpointStore::open(Arc::clone(&self.storage), self.config).await?;
        Ok(match &self.env.slatedb {
            Some(f) => store.with_native_release(f.options().release()),
            None => store,
        })
    }
}

/// Refuses settings the run cannot honour, before anything is written.
fn validate(args: &DemoArgs) -> Result<()> {
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
    Ok(())
}

/// The run's directory and checkpoint storage.
fn setup(args: &DemoArgs) -> Result<Setup> {
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("flowstate-demo-{}", unique_file_name())),
    };
    let kind = StorageKind::parse(&args.storage);
    // Where the SlateDB backend's databases go: next to the checkpoints.
    let mut databases: Option<(Arc<dyn ObjectStore>, String)> = None;
    let (storage, dir): (Arc<CheckpointStorage>, Option<PathBuf>) = match &kind {
        StorageKind::Object(url) => {
            let store = crate::stores::object_store_builder(url, &args.storage_options)?.build()?;
            let base = match store.prefix() {
                "" => format!("{JOB}/{SLATEDB_DIR}/{OPERATOR}"),
                prefix => format!("{prefix}/{JOB}/{SLATEDB_DIR}/{OPERATOR}"),
            };
            databases = Some((Arc::clone(store.store()), base));
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
            if args.backend == BackendKind::Slatedb {
                let at = root.join(SLATEDB_DIR);
                std::fs::create_dir_all(&at).map_err(|e| Error::io(at.display(), e))?;
                let local = flowstate_object::LocalFiles::new_with_prefix(&at)
                    .map_err(|e| Error::invalid(format!("{}: {e}", at.display())))?;
                databases = Some((Arc::new(local), format!("{JOB}/{OPERATOR}")));
            }
            (Arc::new(fs), Some(dir))
        }
        StorageKind::Memory => {
            databases = Some((
                Arc::new(object_store::memory::InMemory::new()),
                format!("{JOB}/{OPERATOR}"),
            ));
            (
                Arc::new(CheckpointStorage::in_memory(JOB).with_max_state_size(64 << 20)),
                None,
            )
        }
    };
    let slatedb = match databases.filter(|_| args.backend == BackendKind::Slatedb) {
        Some((store, base)) => {
            // On a local filesystem SlateDB's garbage collector needs its
            // boundary files off.
            let local = matches!(kind, StorageKind::Fs | StorageKind::Dir(_));
            let options = SlateDbOptions::new(store, base)?.with_boundary_files(!local);
            Some(SlateDbBackendFactory::new(options)?)
        }
        None => None,
    };
    let env = Env {
        work: root.join(WORKING_DIR),
        local: root.join("local-recovery"),
        incremental: !args.full,
        slatedb,
    };
    let sink_dir = (!matches!(kind, StorageKind::Memory)).then(|| root.join("sink"));
    Ok(Setup {
        root,
        env,
        kind,
        storage,
        dir,
        config: CheckpointStoreConfig::default().with_max_retained(args.retain),
        sink_dir,
    })
}

/// The first lines: what runs where.
fn print_header<B: DemoBackend>(args: &DemoArgs, setup: &Setup) {
    println!(
        "flowstate demo: {} backend ({} checkpoints), {} checkpoint storage; {} events over {} keys, \
         parallelism {}, checkpoint every {} events, crash after event {}, retaining {}",
        B::NAME,
        if args.full { "full" } else { "incremental" },
        match &setup.kind {
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
    println!("directory: {}", setup.root.display());
}

/// Prints checkpoints as they complete and keeps their reports; on a
/// terminal, a progress bar (events/s, checkpoints, the one in flight)
/// under the lines.
struct Printer {
    bar: indicatif::ProgressBar,
    taken: usize,
    reports: Vec<CheckpointReport>,
}

impl Printer {
    fn new() -> Self {
        Printer {
            bar: indicatif::ProgressBar::hidden(),
            taken: 0,
            reports: Vec::new(),
        }
    }

    /// A new progress bar over `total` events, at `at`.
    fn begin(&mut self, total: u64, at: u64) {
        self.bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} events, {per_sec} ({elapsed}) {msg}")
        {
            self.bar.set_style(style);
        }
        self.bar.set_position(at);
    }

    fn end(&mut self) {
        self.bar.finish_and_clear();
    }

    /// Prints and keeps the report of a checkpoint taken at `at`.
    fn report(&mut self, at: &str, report: CheckpointReport) {
        self.bar.suspend(|| println!("{}", progress_line(at, &report)));
        self.reports.push(report);
    }
}

impl Progress for Printer {
    fn events(&mut self, done: u64) {
        self.bar.set_position(done);
    }

    fn checkpoint_started(&mut self, id: u64) {
        let taken = self.taken;
        self.bar
            .set_message(format!("{taken} checkpoints, checkpoint {id} in flight"));
    }

    fn checkpoint_completed(&mut self, done: u64, report: CheckpointReport) {
        self.report(&format!("event {done}"), report);
        self.taken += 1;
        let taken = self.taken;
        self.bar.set_message(format!("{taken} checkpoints"));
    }
}

/// A run's state between its phases.
struct Run<'a> {
    args: &'a DemoArgs,
    setup: &'a Setup,
    stream: &'a [Event],
    sink: Sink,
    next_id: u64,
    printer: Printer,
}

impl Run<'_> {
    /// Processes events `range` with `job`, checkpointing to `store`.
    async fn run_events<B: DemoBackend>(
        &mut self,
        job: &mut Job<B>,
        store: &mut CheckpointStore,
        range: std::ops::Range<u64>,
    ) -> Result<()> {
        self.printer.begin(self.stream.len() as u64, range.start);
        let every = self.args.checkpoint_every;
        let ran = job
            .run_events(
                self.stream,
                range,
                every,
                store,
                &mut self.sink,
                &mut self.next_id,
                &mut self.printer,
            )
            .await;
        self.printer.end();
        ran
    }

    /// The first attempt of a fresh run: runs until the crash, or kills the
    /// process at `--kill-at`.
    async fn first_attempt<B: DemoBackend>(&mut self) -> Result<()> {
        let (args, setup) = (self.args, self.setup);
        if let Some(d) = &setup.sink_dir {
            // A fresh run: its settings are kept for --resume, and no
            // transaction of an earlier run in this directory counts.
            let _ = std::fs::remove_dir_all(d);
            self.sink = Sink::durable(d.clone()).await?;
            let settings = serde_json::to_vec_pretty(&args.settings())
                .map_err(|e| Error::internal(format!("run settings: {e}")))?;
            write_synced(setup.root.join(SETTINGS_FILE), settings).await?;
        }
        let mut store = setup.open_store().await?;
        let mut job = Job::<B>::new(args.parallelism, &setup.env)?;
        let stop = args.kill_at.unwrap_or(args.crash_after);
        self.run_events(&mut job, &mut store, 0..stop).await?;
        if let Some(at) = args.kill_at {
            println!(
                "killing the process at event {at}; recover with: flowstate demo --resume {}",
                setup.root.display()
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::abort();
        }
        drop((job, store));
        let lost = std::mem::take(&mut self.sink.pending).len();
        println!(
            "{:>13}: crash: in-memory state and {lost} uncommitted window results lost",
            format!("event {}", args.crash_after)
        );
        Ok(())
    }

    /// Recovery: reopens the checkpoint store and restores its latest
    /// checkpoint (claiming it), or starts again when a killed first
    /// attempt completed none. Returns the job, the store and a summary of
    /// the restore.
    async fn recover<B: DemoBackend>(&mut self) -> Result<(Job<B>, CheckpointStore, Option<String>)> {
        let (args, setup) = (self.args, self.setup);
        let started = Instant::now();
        let mut store = setup.open_store().await?;
        let parallelism = args.restore_parallelism.unwrap_or(args.parallelism);
        let resuming = args.resume.is_some();
        let Some(pointer) = store.latest().map(|c| c.pointer.clone()) else {
            if !resuming {
                return Err(Error::not_found("no complete checkpoint to recover from"));
            }
            println!("no checkpoint completed before the process ended: starting again from the first event");
            if let Some(d) = &setup.sink_dir {
                self.sink = Sink::recover(d.clone(), None).await?;
            }
            // Checkpoint ids are never reused: a killed attempt may have
            // left files of its first checkpoints.
            self.next_id = store.storage().checkpoint_dirs().await?.last().map_or(1, |m| m + 1);
            return Ok((Job::<B>::new(parallelism, &setup.env)?, store, None));
        };
        let latest = store.restore(&pointer, RestoreMode::Claim).await?;
        let id = latest.metadata.checkpoint_id;
        let job = Job::<B>::restore(parallelism, &latest, &setup.env).await?;
        let from = match job.restored_locally() {
            0 => "from storage".to_string(),
            n if n == job.parallelism() => "from local copies".to_string(),
            n => format!("{n} of {parallelism} subtasks from local copies, the others from storage"),
        };
        let summary = format!(
            "restored checkpoint {id} at parallelism {parallelism} in {:.1} ms, {from}",
            started.elapsed().as_secs_f64() * 1e3
        );
        println!(
            "{:>13}: {summary}; replaying from here",
            format!("event {}", job.position())
        );
        if let (true, Some(d)) = (resuming, &setup.sink_dir) {
            self.sink = Sink::recover(d.clone(), Some(id)).await?;
        }
        self.next_id = id + 1;
        Ok((job, store, Some(format!("{summary} ({})", latest.pointer))))
    }

    /// Replays to the end of input; the final watermark closes every window
    /// and a last checkpoint commits their results; then a savepoint and a
    /// dry-run garbage collection (not on memory storage, which keeps
    /// nothing once the process ends).
    async fn finish<B: DemoBackend>(
        &mut self,
        job: &mut Job<B>,
        store: &mut CheckpointStore,
    ) -> Result<Option<flowstate_api::lifecycle::GcReport>> {
        let offset = job.position();
        self.run_events(job, store, offset..self.args.events).await?;
        job.advance_watermark(i64::MAX, &mut self.sink)?;
        let last = job
            .checkpoint(store, self.next_id, CheckpointKind::Checkpoint, &mut self.sink)
            .await?;
        self.printer.report("end of input", last);
        self.next_id += 1;
        if matches!(self.setup.kind, StorageKind::Memory) {
            return Ok(None);
        }
        let savepoint = job
            .checkpoint(store, self.next_id, CheckpointKind::Savepoint, &mut self.sink)
            .await?;
        self.printer.report("end of input", savepoint);
        if let Some(f) = &self.setup.env.slatedb {
            let retained: Vec<KeyedStateHandle> = store
                .retained()
                .iter()
                .flat_map(|c| c.metadata.operators.iter().flat_map(|o| o.keyed.clone()))
                .collect();
            let r = f
                .options()
                .collect_garbage(&retained, &job.databases(), &GcOptions::new(Duration::ZERO).delete())
                .await?;
            println!(
                "SlateDB garbage collection: {} databases deleted, {} checkpoints released, {} databases kept \
                 while the running backends' clones read them",
                r.deleted_databases.len(),
                r.released_checkpoints.len(),
                r.read_by_clones.len()
            );
        }
        Ok(Some(store.collect_garbage(&GcOptions::new(Duration::ZERO)).await?))
    }
}

async fn run_on<B: DemoBackend>(args: DemoArgs) -> Result<bool> {
    validate(&args)?;
    let stream = events(args.seed, args.keys, args.events);
    let setup = setup(&args)?;
    print_header::<B>(&args, &setup);
    let mut run = Run {
        args: &args,
        setup: &setup,
        stream: &stream,
        sink: Sink::default(),
        next_id: 1,
        printer: Printer::new(),
    };
    if args.resume.is_none() {
        run.first_attempt::<B>().await?;
    }
    let (mut job, mut store, restored) = run.recover::<B>().await?;
    let gc = run.finish(&mut job, &mut store).await?;

    // The summary: every checkpoint, the restore, where the files are.
    println!();
    print_table(&run.printer.reports);
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
    let got = job.results()?;
    drop((job, store));
    print_files(&args, &setup)?;
    Ok(check(&args, &stream, &got, &run.sink))
}

/// Says where the files of the run are (lists them with `--verbose`).
fn print_files(args: &DemoArgs, setup: &Setup) -> Result<()> {
    if let Some(dir) = &setup.dir {
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
        match &setup.kind {
            StorageKind::Object(url) => println!(
                "files left in {url}; see them with: flowstate checkpoints {url}/{JOB} --savepoints {url}/savepoints \
                 (with the same --storage-option)"
            ),
            _ => println!("files: none left (memory storage ends with the process)"),
        }
    }
    Ok(())
}

/// The exactly-once check: the recovered job's state `got` and the sink's
/// committed window results equal a failure-free computation of `stream`.
fn check(args: &DemoArgs, stream: &[Event], got: &HashMap<u64, UserState>, sink: &Sink) -> bool {
    let mut want: HashMap<u64, UserState> = HashMap::new();
    let mut want_windows = WindowResults::new();
    for e in stream {
        want.entry(e.user).or_default().add(e.amount);
        *want_windows.entry((e.user, window_of(e.time))).or_default() += e.amount;
    }
    let windows_passed = sink.committed == want_windows && sink.duplicates == 0;
    let passed = *got == want && windows_passed;
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
    passed
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_api::checkpoint::METADATA_FILE;
    use flowstate_api::ErrorKind;

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

    /// A run in a fresh bucket prefix of the S3-compatible server of
    /// `scripts/test.sh`, in `dir`; `None` without a server (outside CI).
    fn on_s3(dir: &Path) -> Option<DemoArgs> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(endpoint) = var("FLOWSTATE_S3_ENDPOINT") else {
            assert!(
                var("CI").is_none_or(|v| v != "true"),
                "CI runs this against a server: use scripts/test.sh"
            );
            return None;
        };
        let bucket = var("FLOWSTATE_S3_BUCKET").unwrap_or_else(|| "flowstate".into());
        Some(DemoArgs {
            dir: Some(dir.to_path_buf()),
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
            ..small_run()
        })
    }

    /// On the S3-compatible server, with RocksDB's incremental checkpoints:
    /// recovery from the bucket is exactly-once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_on_s3_recovers_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let Some(args) = on_s3(dir.path()) else { return };
        let args = DemoArgs {
            retain: 2,
            backend: BackendKind::Rocksdb,
            ..args
        };
        assert!(run(args).await.unwrap());
    }

    /// On the SlateDB backend, its databases under the run's directory:
    /// the crash, a recovery rescaled from 2 to 3 subtasks (clones of the
    /// crashed attempt's databases) and the end of input are exactly-once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_on_slatedb_recovers_and_rescales_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let args = DemoArgs {
            restore_parallelism: Some(3),
            dir: Some(dir.path().to_path_buf()),
            storage: "fs".into(),
            retain: 2,
            backend: BackendKind::Slatedb,
            ..small_run()
        };
        assert!(run(args).await.unwrap());
        assert!(dir.path().join(SLATEDB_DIR).join(JOB).join(OPERATOR).is_dir());
    }

    /// On the SlateDB backend with its databases and checkpoints in the
    /// S3-compatible server's bucket, rescaled from 2 to 3 on recovery.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_on_slatedb_and_s3_recovers_and_rescales_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let Some(args) = on_s3(dir.path()) else { return };
        let args = DemoArgs {
            restore_parallelism: Some(3),
            backend: BackendKind::Slatedb,
            ..args
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
