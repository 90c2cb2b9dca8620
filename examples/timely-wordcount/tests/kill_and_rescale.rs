//! The job killed with SIGKILL twice at random moments and restarted at
//! another number of workers each time (2 → 3 → 1), then checked
//! exactly-once against a failure-free computation. The moments come from
//! a seed, printed; `TIMELY_WORDCOUNT_SEED=<seed>` replays a run.
#![allow(clippy::unwrap_used)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstate_example_timely_wordcount::verify;

const BIN: &str = env!("CARGO_BIN_EXE_timely-wordcount");

/// xorshift64*, from a printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("TIMELY_WORDCOUNT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| RandomState::new().build_hasher().finish());
        println!("seed {seed} (TIMELY_WORDCOUNT_SEED={seed} replays it)");
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// One attempt of the job, its output going to a file.
struct Attempt {
    child: Child,
    out: PathBuf,
}

fn start(dir: &Path, backend: &str, workers: usize, n: usize) -> Attempt {
    let out = dir.join(format!("attempt-{n}.out"));
    let file = std::fs::File::create(&out).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--dir"])
        .arg(dir)
        .args(["--backend", backend, "--workers", &workers.to_string()])
        .args([
            "--epochs",
            "150",
            "--per-epoch",
            "50",
            "--keys",
            "1000",
            "--partitions",
            "4",
        ])
        .args(["--checkpoint-interval-ms", "150", "--epoch-pause-ms", "15"])
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    Attempt { child, out }
}

fn output(a: &Attempt) -> String {
    std::fs::read_to_string(&a.out).unwrap()
}

/// Waits until the attempt has completed a checkpoint, then a random
/// while, and kills it (SIGKILL) mid-run.
fn kill_at_random(mut a: Attempt, rng: &mut Rng, up_to_ms: u64) -> String {
    let started = Instant::now();
    while !output(&a).contains(" complete: ") {
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "the attempt ended before its first checkpoint:\n{}",
            output(&a)
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint in 60 s:\n{}",
            output(&a)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let delay = rng.below(up_to_ms);
    std::thread::sleep(Duration::from_millis(delay));
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "the attempt finished before the kill; the log is too short:\n{}",
        output(&a)
    );
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let out = output(&a);
    println!(
        "killed {delay} ms after its first completed checkpoint ({:.2} s in):\n{out}",
        started.elapsed().as_secs_f64()
    );
    out
}

fn restored_line(out: &str) -> &str {
    out.lines().find(|l| l.starts_with("restored checkpoint")).unwrap_or("")
}

fn kill_twice_and_rescale(backend: &str) {
    let started = Instant::now();
    let mut rng = Rng::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let first = kill_at_random(start(d, backend, 2, 1), &mut rng, 600);
    assert!(
        restored_line(&first).is_empty(),
        "the first attempt restored something:\n{first}"
    );

    let second = kill_at_random(start(d, backend, 3, 2), &mut rng, 300);
    assert!(
        restored_line(&second).contains("(2 workers) at 3 workers"),
        "the second attempt did not rescale 2 → 3:\n{second}"
    );

    let mut third = start(d, backend, 1, 3);
    let status = third.child.wait().unwrap();
    let out = output(&third);
    println!("the last attempt:\n{out}");
    assert!(status.success(), "the last attempt failed:\n{out}");
    assert!(
        restored_line(&out).contains("(3 workers) at 1 workers"),
        "the last attempt did not rescale 3 → 1:\n{out}"
    );

    let verdict = verify(d, &[]).unwrap();
    println!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    assert!(verdict.windows > 0 && verdict.words > 0);
    println!("{backend}: {:.1} s in all", started.elapsed().as_secs_f64());
}

#[test]
fn heap_on_files_is_exactly_once_after_two_kills_and_two_rescales() {
    kill_twice_and_rescale("heap");
}

#[test]
fn rocksdb_on_files_is_exactly_once_after_two_kills_and_two_rescales() {
    kill_twice_and_rescale("rocksdb");
}
