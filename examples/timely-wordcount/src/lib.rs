//! A timely-dataflow job that keeps its state in flowstate: a word count
//! over a replayable event log, with keyed value, list and map state,
//! event-time tumbling windows closed by timers (the frontier is the
//! watermark), a two-phase-commit sink, aligned checkpoints driven by
//! timely's progress tracking (the frontier is the barrier), recovery from
//! the latest completed checkpoint and rescaling to any number of workers.
//!
//! [`run`] runs one process of the job; [`verify`] checks a finished job's
//! output and final state against a failure-free computation. The
//! `timely-wordcount` binary is their command line; the README maps
//! timely's concepts to flowstate's.

pub mod job;
pub mod log;
pub mod sink;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate_api::{
    BackendFactory, CheckpointStorage, CheckpointStore, CheckpointStoreConfig, Error, RestoreMode, Result,
};
use flowstate_heap::HeapBackendFactory;
use flowstate_object::ObjectStoreBuilder;
use flowstate_rocksdb::{RocksDbBackendFactory, RocksDbOptions};
use serde::{Deserialize, Serialize};

pub use job::{CheckpointPolicy, CheckpointStat, RunReport};
pub use log::LogShape;
pub use verify::{verify, Verdict};

/// The keyed state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    /// `flowstate-heap`: in memory, copy-on-write snapshots.
    Heap,
    /// `flowstate-rocksdb`: on local disk, incremental checkpoints.
    Rocksdb,
}

/// Where checkpoints go: a directory, or an object-store URL
/// (`s3://bucket/prefix`) with its options (`endpoint`, credentials, …).
#[derive(Debug, Clone, Default)]
pub struct StorageSpec {
    /// A directory or a URL.
    pub url: String,
    /// Object-store options, `(key, value)`.
    pub options: Vec<(String, String)>,
}

impl StorageSpec {
    /// Opens the job's checkpoint storage (inside a Tokio runtime).
    pub fn open(&self) -> Result<Arc<CheckpointStorage>> {
        if self.url.contains("://") {
            let mut builder = ObjectStoreBuilder::new(self.url.as_str());
            for (k, v) in &self.options {
                builder = builder.with_option(k, v);
            }
            Ok(Arc::new(CheckpointStorage::new(Arc::new(builder.build()?), job::JOB)?))
        } else {
            Ok(Arc::new(flowstate_fs::checkpoint_storage(&self.url, job::JOB)?))
        }
    }
}

/// What a job is, kept in its directory by the first run: every restart
/// and `verify` must agree with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    /// The log.
    pub shape: LogShape,
    /// The backend (its checkpoints restore into the same kind).
    pub backend: BackendKind,
    /// The checkpoint storage's directory or URL.
    pub storage: String,
}

const SETTINGS_FILE: &str = "job.json";

impl JobSettings {
    /// The settings kept in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<JobSettings>> {
        let path = dir.join(SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::corrupted(format!("{}: not the settings of a job: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    /// Keeps these settings in `dir`, or checks they are the ones kept there.
    fn check_or_keep(&self, dir: &Path) -> Result<()> {
        match JobSettings::load(dir)? {
            Some(kept) if kept == *self => Ok(()),
            Some(kept) => Err(Error::invalid(format!(
                "{} holds a job with other settings ({kept:?}); this run has {self:?}",
                dir.join(SETTINGS_FILE).display()
            ))),
            None => {
                let path = dir.join(SETTINGS_FILE);
                let text = serde_json::to_string_pretty(self)
                    .map_err(|e| Error::internal(format!("encoding the job's settings: {e}")))?;
                std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))
            }
        }
    }
}

/// One process of a run of the job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job's directory: its settings, the sink's output, RocksDB's
    /// working directories.
    pub dir: PathBuf,
    /// Where checkpoints go.
    pub storage: StorageSpec,
    /// The keyed state backend.
    pub backend: BackendKind,
    /// The log.
    pub shape: LogShape,
    /// Worker threads in this process.
    pub threads: usize,
    /// Addresses (`host:port`) of every process of the job, in process
    /// order; empty for a single process.
    pub hosts: Vec<String>,
    /// This process's index among `hosts`.
    pub process: usize,
    /// When checkpoints are taken.
    pub policy: CheckpointPolicy,
    /// A pause between epochs, pacing the source.
    pub epoch_pause: Duration,
    /// Completed checkpoints to retain.
    pub retain: usize,
}

/// The sink's directory in a job's directory.
pub fn sink_dir(dir: &Path) -> PathBuf {
    dir.join("sink")
}

/// A multi-threaded Tokio runtime for storage calls and asynchronous phases.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("a Tokio runtime", e))
}

/// Runs one process of the job to the end of the log: restores the latest
/// completed checkpoint if there is one (at any number of workers),
/// replays the log from its offsets and checkpoints as `policy` says.
/// Process 0 returns the run's report.
pub fn run(opts: &RunOptions) -> Result<Option<RunReport>> {
    std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(opts.dir.display(), e))?;
    JobSettings {
        shape: opts.shape,
        backend: opts.backend,
        storage: opts.storage.url.clone(),
    }
    .check_or_keep(&opts.dir)?;
    let rt = runtime()?;
    let storage = rt.block_on(async { opts.storage.open() })?;
    let latest = rt.block_on(storage.latest_checkpoint())?;
    let (store, restored) = if opts.process == 0 {
        let config = CheckpointStoreConfig::default().with_max_retained(opts.retain.max(1));
        let mut store = rt.block_on(CheckpointStore::open(Arc::clone(&storage), config))?;
        let restored = match latest {
            Some(l) => Some(rt.block_on(store.restore(&l.pointer, RestoreMode::Claim))?),
            None => None,
        };
        let (committed, deleted) = sink::recover(
            &sink_dir(&opts.dir),
            restored.as_ref().map(|r| r.metadata.checkpoint_id),
        )?;
        if committed + deleted > 0 {
            println!(
                "sink: committed {committed} transactions of the restored checkpoint, dropped {deleted} newer ones"
            );
        }
        (Some(store), restored)
    } else {
        (None, latest)
    };
    let processes = opts.hosts.len().max(1);
    let workers = opts.threads * processes;
    match &restored {
        Some(r) => {
            let old = r.metadata.operator(job::COUNT).map_or(0, |o| o.parallelism);
            println!(
                "restored checkpoint {} ({} workers) at {workers} workers; replaying the log from epoch {}",
                r.pointer,
                old,
                r.metadata.checkpoint_id + 1
            );
        }
        None => println!("no completed checkpoint: starting at epoch 1 with {workers} workers"),
    }
    let ctx_parts = (rt.handle().clone(), storage, restored, store);
    let report = match opts.backend {
        BackendKind::Heap => execute(opts, HeapBackendFactory::new(), ctx_parts)?,
        BackendKind::Rocksdb => {
            let work = opts.dir.join("rocksdb").join(format!("process-{}", opts.process));
            let options = RocksDbOptions::new(work).with_incremental(true);
            execute(opts, RocksDbBackendFactory::new(options), ctx_parts)?
        }
    };
    drop(rt);
    Ok(report)
}

type CtxParts = (
    tokio::runtime::Handle,
    Arc<CheckpointStorage>,
    Option<flowstate_api::checkpoint::ResolvedCheckpoint>,
    Option<CheckpointStore>,
);

fn execute<F: BackendFactory>(opts: &RunOptions, factory: F, parts: CtxParts) -> Result<Option<RunReport>> {
    let (rt, storage, restored, store) = parts;
    let ctx = Arc::new(job::Ctx {
        shape: opts.shape,
        factory,
        rt,
        storage,
        restored,
        store: Mutex::new(store),
        sink_dir: sink_dir(&opts.dir),
        policy: opts.policy,
        epoch_pause: opts.epoch_pause,
        report: Mutex::new(None),
    });
    let config = if opts.hosts.len() <= 1 {
        timely::Config::process(opts.threads)
    } else {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: opts.threads,
                process: opts.process,
                addresses: opts.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    };
    let worker_ctx = Arc::clone(&ctx);
    let guards = timely::execute(config, move |worker| {
        if let Err(e) = job::run_worker(worker, Arc::clone(&worker_ctx)) {
            eprintln!("timely-wordcount: worker {} failed: {e}", worker.index());
            std::process::exit(1);
        }
    })
    .map_err(|e| Error::internal(format!("starting timely: {e}")))?;
    for result in guards.join() {
        result.map_err(|e| Error::internal(format!("a worker panicked: {e}")))?;
    }
    let report = ctx
        .report
        .lock()
        .map_err(|_| Error::internal("report lock poisoned"))?
        .take();
    Ok(report)
}
