//! `bench-report`: renders the workload runners' TSV output (flowstate's and
//! Flink's) as SVG plots.

mod data;
mod plots;

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: bench-report <flowstate.tsv> [<flink.tsv>] <out-dir>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let Some((out, inputs)) = args.split_last().filter(|(_, inputs)| (1..=2).contains(&inputs.len())) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut records = Vec::new();
    for path in inputs {
        let parsed = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
        match parsed.and_then(|text| data::parse(&text, path).map_err(|e| e.to_string())) {
            Ok(r) => records.extend(r),
            Err(e) => {
                eprintln!("bench-report: {e}");
                return ExitCode::from(2);
            }
        }
    }
    match plots::render_all(&records, Path::new(out)) {
        Ok(written) => {
            for name in written {
                println!("{}", Path::new(out).join(name).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
