//! The `flowstate` command line: operator commands on checkpoints in
//! directories and buckets, and a demo job.

mod admin;
mod demo;
mod slatedb;
mod stores;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The flowstate command line.
#[derive(Parser)]
#[command(
    name = "flowstate",
    version,
    about = "State backends and checkpoint storage for stream processing",
    after_help = "Exit codes: 0 ok; 1 a finding (a damaged checkpoint, orphaned files, a failed check); 2 bad usage \
                  or unreadable input."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists a job's checkpoints (and savepoints): id, complete or not,
    /// time, state size, files shared with other checkpoints, the latest.
    Checkpoints(admin::CheckpointsArgs),
    /// Shows what a checkpoint or savepoint holds; `--verify` checks every
    /// file it references.
    Inspect(admin::InspectArgs),
    /// Finds the files of a job's checkpoint directory that no checkpoint
    /// references, and the SlateDB databases and checkpoints none needs (a
    /// dry run unless `--delete`).
    Gc(admin::GcArgs),
    /// Savepoint tools.
    #[command(subcommand)]
    Savepoint(SavepointCommand),
    /// Runs a keyed counting job with periodic checkpoints, crashes it,
    /// restores it from its latest checkpoint and checks the result equals a
    /// failure-free run (exactly-once state).
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum SavepointCommand {
    /// Rewrites a checkpoint or savepoint (incremental RocksDB included) as
    /// a self-contained canonical savepoint that restores into either
    /// backend at any parallelism.
    Convert(admin::ConvertArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowstate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Checkpoints(args) => runtime.block_on(admin::checkpoints(args)),
        Command::Inspect(args) => runtime.block_on(admin::inspect(args)),
        Command::Gc(args) => runtime.block_on(admin::gc(args)),
        Command::Savepoint(SavepointCommand::Convert(args)) => runtime.block_on(admin::convert(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)).map(|passed| {
            if passed {
                admin::Outcome::Clean
            } else {
                admin::Outcome::Findings
            }
        }),
    };
    match result {
        Ok(admin::Outcome::Clean) => ExitCode::SUCCESS,
        Ok(admin::Outcome::Findings) => ExitCode::from(1),
        Err(e) => {
            eprintln!("flowstate: {e}");
            ExitCode::from(2)
        }
    }
}
