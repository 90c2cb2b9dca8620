//! The demo as a real process: aborted with `--kill-at`, or killed with
//! SIGKILL at random points, and then recovered with `--resume` from what
//! is on disk, exactly-once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

const RUN: [&str; 8] = [
    "--events",
    "40000",
    "--keys",
    "3000",
    "--checkpoint-every",
    "3000",
    "--crash-after",
    "20000",
];

fn flowstate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowstate"));
    c.env("RUST_LOG", "off");
    c
}

fn resume(dir: &std::path::Path) -> Output {
    flowstate()
        .args(["demo", "--resume", dir.to_str().unwrap()])
        .output()
        .unwrap()
}

fn assert_passed(out: &Output, context: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{context}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("exactly-once check: PASSED"), "{context}: {text}");
}

#[test]
fn kill_at_aborts_the_process_and_resume_recovers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowstate()
        .args(["demo", "--dir", dir.path().to_str().unwrap(), "--kill-at", "25000"])
        .args(RUN)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "the process was killed by a signal, not exited"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("killing the process at event 25000"));
    let out = resume(dir.path());
    assert_passed(&out, "resume after --kill-at");
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored checkpoint 8"));
}

#[test]
fn sigkill_at_random_points_then_resume_is_exactly_once() {
    // A different point on every run; the seed is printed to replay one.
    #[allow(clippy::disallowed_methods)]
    let seed = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos() as u64 | 1;
    let mut x = seed;
    for round in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(150 + x % 1500);
        let context = format!("seed {seed}, round {round}, SIGKILL after {delay:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut child = flowstate()
            .args(["demo", "--dir", dir.path().to_str().unwrap()])
            .args(RUN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SIGKILL; an error means it had already finished, which resumes too.
        let _ = child.kill();
        child.wait().unwrap();
        assert_passed(&resume(dir.path()), &context);
    }
}
