//! `flowstate`: the command line of the flowstate state layer.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The flowstate command line.
#[derive(Parser)]
#[command(
    name = "flowstate",
    version,
    about = "State backends and checkpoint storage for stream processing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a keyed counting job with periodic checkpoints, crashes it,
    /// restores it from its latest checkpoint and checks the result equals a
    /// failure-free run (exactly-once state).
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowstate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flowstate: {e}");
            ExitCode::FAILURE
        }
    }
}
