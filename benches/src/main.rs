//! The standard workload runner (`BENCHMARKS.md`): W1 state access, W2
//! snapshots, T1 timers and S1 (W2's snapshot and restore at 200k, 2M and
//! 20M keys), one tab-separated line per figure:
//! `flowstate <workload> <backend> <metric> <value> <unit>`.
//!
//! `workload [W1|W2|W3|T1|S1|all] [--quick] [--keys N] [--storage s3] [--only heap|rocksdb|slatedb]`; `--quick` shrinks every
//! size 10x; `--keys N` sets W3's keys (default 2,000,000; W3 runs only when named); `--storage s3` runs W2's RocksDB checkpoints (and with `--only slatedb` the SlateDB
//! backend's databases) against the S3-compatible server of `FLOWSTATE_S3_*` (see `scripts/s3-server.sh`).

mod scale;
mod slate;
mod stall;
mod timers;
mod w1;
mod w2;
mod w3;

use std::process::ExitCode;

/// xorshift64*, the generator both sides of the comparison use.
pub struct XorShift(u64);

impl XorShift {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        XorShift(seed)
    }

    /// The next draw.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Prints one figure.
pub fn emit(workload: &str, backend: &str, metric: &str, value: f64, unit: &str) {
    println!("flowstate\t{workload}\t{backend}\t{metric}\t{value:.3}\t{unit}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // The first argument that is neither a flag nor a flag's value.
    let which = args
        .iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--") && (*i == 0 || !["--only", "--storage", "--keys"].contains(&args[i - 1].as_str()))
        })
        .map(|(_, a)| a.as_str())
        .unwrap_or("all");
    let scale = if quick { 10 } else { 1 };
    let object = match args.windows(2).find(|w| w[0] == "--storage").map(|w| w[1].as_str()) {
        None | Some("fs") => None,
        Some("s3") => match w2::ObjectTarget::from_env() {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("workload: {e}");
                return ExitCode::FAILURE;
            }
        },
        Some(other) => {
            eprintln!("workload: unknown storage {other:?} (fs, s3)");
            return ExitCode::FAILURE;
        }
    };
    let only = args.windows(2).find(|w| w[0] == "--only").map(|w| w[1].as_str());
    let keys = match args.windows(2).find(|w| w[0] == "--keys").map(|w| w[1].parse::<u64>()) {
        None => 2_000_000 / scale as u64,
        Some(Ok(n)) if n >= 1_000 => n,
        Some(_) => {
            eprintln!("workload: --keys takes a number of keys, at least 1000");
            return ExitCode::FAILURE;
        }
    };
    let which = if which == "s3" || which == "fs" { "all" } else { which };
    let result = match which {
        "W1" if only == Some("slatedb") => slate::run_w1(scale, object.as_ref()),
        "W2" if only == Some("slatedb") => slate::run_w2(scale, object.as_ref()),
        "W3" if only == Some("slatedb") => slate::run_w3(keys, object.as_ref()),
        "S1" if only == Some("slatedb") => slate::run_s1(scale, object.as_ref()),
        "W1" => w1::run(scale, only),
        "W2" => w2::run(scale, object.as_ref(), only),
        "W3" => w3::run(keys, only),
        "T1" => timers::run(scale),
        "S1" => scale::run(scale, only),
        "all" => w1::run(scale, only)
            .and_then(|_| w2::run(scale, object.as_ref(), only))
            .and_then(|_| timers::run(scale))
            .and_then(|_| scale::run(scale, only)),
        other => {
            eprintln!("usage: workload [W1|W2|W3|T1|S1|all] [--quick] [--keys N] (unknown workload {other:?})");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::FAILURE
        }
    }
}
