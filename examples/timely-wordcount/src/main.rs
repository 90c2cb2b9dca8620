//! `timely-wordcount`: a timely-dataflow job keeping its state in
//! flowstate. `run` runs (or resumes) the job, `verify` checks a finished
//! one is exactly-once. See the README next to this crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flowstate_api::{Error, Result};
use flowstate_example_timely_wordcount::{
    run, verify, BackendKind, CheckpointPolicy, LogShape, RunOptions, RunReport, StorageSpec,
};

#[derive(Parser, Debug)]
#[command(
    name = "timely-wordcount",
    about = "A timely-dataflow job with its state in flowstate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the job to the end of the log, resuming from the latest
    /// completed checkpoint in its storage if there is one.
    Run(RunArgs),
    /// Checks a finished job: output and final state against a
    /// failure-free computation. Exit code 1 if they differ.
    Verify(VerifyArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Backend {
    Heap,
    Rocksdb,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// The job's directory (settings, sink output, RocksDB working files).
    #[arg(long)]
    dir: PathBuf,
    /// Checkpoint storage: a directory or `s3://bucket/prefix`
    /// (default: `<dir>/checkpoints`).
    #[arg(long)]
    storage: Option<String>,
    /// An object-store option, `key=value` (`endpoint=…`,
    /// `access_key_id=…`, `allow_http=true`, …); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    storage_options: Vec<String>,
    /// The keyed state backend.
    #[arg(long, value_enum, default_value_t = Backend::Heap)]
    backend: Backend,
    /// Worker threads in this process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Every process's `host:port`, comma-separated, for a job of several
    /// processes (timely's cluster mode); all get the same list.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// This process's index in `--hosts`.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// Partitions of the log.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Epochs in the log (100 ms of event time each).
    #[arg(long, default_value_t = 200)]
    epochs: u64,
    /// Events per partition per epoch.
    #[arg(long, default_value_t = 500)]
    per_epoch: u64,
    /// Distinct words.
    #[arg(long, default_value_t = 5_000)]
    keys: u64,
    /// Seed of the log.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Checkpoint at the first epoch boundary this long after the last
    /// checkpoint; 0: only at the end of the log.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Checkpoint every this many epochs instead.
    #[arg(long)]
    checkpoint_every_epochs: Option<u64>,
    /// Pause between epochs, pacing the source.
    #[arg(long, default_value_t = 0)]
    epoch_pause_ms: u64,
    /// Completed checkpoints to retain.
    #[arg(long, default_value_t = 2)]
    retain: usize,
}

#[derive(Parser, Debug)]
struct VerifyArgs {
    /// The job's directory.
    #[arg(long)]
    dir: PathBuf,
    /// An object-store option, `key=value`; repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    storage_options: Vec<String>,
}

fn options(raw: &[String]) -> Result<Vec<(String, String)>> {
    raw.iter()
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::invalid(format!("--storage-option {o:?} is not KEY=VALUE")))
        })
        .collect()
}

fn print_report(r: &RunReport) {
    let secs = r.elapsed.as_secs_f64();
    println!(
        "run: {} events from epoch {} in {:.2} s: {:.0} records/s; {} checkpoints",
        r.events,
        r.first_epoch,
        secs,
        r.events as f64 / secs.max(1e-9),
        r.checkpoints.len()
    );
    if r.checkpoints.is_empty() {
        return;
    }
    println!("     id   total ms  max sync ms  max async ms  pre-commit ms  complete ms        bytes    full size");
    for c in &r.checkpoints {
        println!(
            "{:>7} {:>10.1} {:>12.1} {:>13.1} {:>14.1} {:>12.1} {:>12} {:>12}",
            c.id,
            c.total.as_secs_f64() * 1e3,
            c.max_sync.as_secs_f64() * 1e3,
            c.max_async.as_secs_f64() * 1e3,
            c.max_pre_commit.as_secs_f64() * 1e3,
            c.complete.as_secs_f64() * 1e3,
            c.bytes,
            c.full_size
        );
    }
    let n = r.checkpoints.len() as f64;
    let mean = |f: fn(&flowstate_example_timely_wordcount::CheckpointStat) -> Duration| {
        r.checkpoints.iter().map(|c| f(c).as_secs_f64() * 1e3).sum::<f64>() / n
    };
    println!(
        "checkpoints: mean total {:.1} ms, max sync {:.1} ms, max async {:.1} ms, max pre-commit {:.1} ms, \
         complete {:.1} ms",
        mean(|c| c.total),
        mean(|c| c.max_sync),
        mean(|c| c.max_async),
        mean(|c| c.max_pre_commit),
        mean(|c| c.complete)
    );
}

fn main_inner(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Run(a) => {
            let policy = match (a.checkpoint_every_epochs, a.checkpoint_interval_ms) {
                (Some(k), _) => CheckpointPolicy::EveryEpochs(k.max(1)),
                (None, 0) => CheckpointPolicy::AtEnd,
                (None, ms) => CheckpointPolicy::Interval(Duration::from_millis(ms)),
            };
            let opts = RunOptions {
                storage: StorageSpec {
                    url: a
                        .storage
                        .unwrap_or_else(|| a.dir.join("checkpoints").display().to_string()),
                    options: options(&a.storage_options)?,
                },
                dir: a.dir,
                backend: match a.backend {
                    Backend::Heap => BackendKind::Heap,
                    Backend::Rocksdb => BackendKind::Rocksdb,
                },
                shape: LogShape {
                    partitions: a.partitions,
                    epochs: a.epochs,
                    per_epoch: a.per_epoch,
                    keys: a.keys,
                    seed: a.seed,
                },
                threads: a.workers.max(1),
                hosts: a.hosts,
                process: a.process,
                policy,
                epoch_pause: Duration::from_millis(a.epoch_pause_ms),
                retain: a.retain,
            };
            if let Some(report) = run(&opts)? {
                print_report(&report);
            }
            Ok(true)
        }
        Command::Verify(a) => {
            let verdict = verify(&a.dir, &options(&a.storage_options)?)?;
            println!("{verdict}");
            Ok(verdict.passed())
        }
    }
}

fn main() -> ExitCode {
    match main_inner(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("timely-wordcount: {e}");
            ExitCode::from(2)
        }
    }
}
