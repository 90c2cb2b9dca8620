//! The operator commands, run as the real binary on the checkpoints the
//! demo leaves: on a directory, and on a bucket of the S3-compatible server
//! of `scripts/test.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const JOB: &str = "flowstate-demo";

fn flowstate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("the flowstate binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

const DEMO: [&str; 12] = [
    "--events",
    "20000",
    "--keys",
    "2000",
    "--checkpoint-every",
    "3000",
    "--crash-after",
    "10000",
    "--retain",
    "2",
    "--parallelism",
    "2",
];

/// Runs the demo on a fresh directory; returns it and the job directory.
fn demo_on_disk() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["demo", "--dir", dir.path().to_str().unwrap()];
    args.extend(DEMO);
    let out = flowstate(&args);
    assert_eq!(code(&out), 0, "demo failed: {}{}", stdout(&out), stderr(&out));
    let job = dir.path().join("checkpoints").join(JOB);
    (dir, job)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The files `inspect --json` lists for a checkpoint, with whether shared.
fn files_of(checkpoint: &Path) -> Vec<(String, bool)> {
    let out = flowstate(&["inspect", s(checkpoint), "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut files = Vec::new();
    for op in v["operators"].as_array().unwrap() {
        for h in op["keyed"].as_array().unwrap() {
            for f in h["files"].as_array().unwrap() {
                files.push((f["path"].as_str().unwrap().to_string(), f["shared"].as_bool().unwrap()));
            }
        }
    }
    files
}

#[test]
fn checkpoints_lists_complete_incomplete_and_the_latest() {
    let (dir, job) = demo_on_disk();
    // A checkpoint directory without metadata: one still being taken.
    std::fs::create_dir(job.join("chk-9")).unwrap();
    let savepoints = dir.path().join("savepoints");
    let out = flowstate(&["checkpoints", s(&job), "--savepoints", s(&savepoints)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_string);
    assert!(line("chk-6").unwrap().contains("complete"), "{text}");
    assert!(line("chk-7").unwrap().contains("complete, latest"), "{text}");
    assert!(line("chk-9").unwrap().contains("incomplete"), "{text}");
    assert!(line("savepoint-").unwrap().contains("savepoint"), "{text}");
    assert!(text.contains("latest complete checkpoint: 7"), "{text}");

    let out = flowstate(&["checkpoints", s(&job), "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = rows.as_array().unwrap();
    let latest: Vec<_> = rows.iter().filter(|r| r["latest"] == true).collect();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["id"], 7);
    // Incremental RocksDB checkpoints share SST files.
    assert!(latest[0]["shared_files"].as_u64().unwrap() > 0, "{rows:?}");
    assert!(latest[0]["state_size"].as_u64().unwrap() > 0);
}

#[test]
fn inspect_shows_states_and_files_and_verifies_a_whole_checkpoint() {
    let (_dir, job) = demo_on_disk();
    let out = flowstate(&["inspect", s(&job.join("chk-7")), "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("checkpoint 7"), "{text}");
    assert!(text.contains("metadata format version 2"), "{text}");
    assert!(text.contains("\"window-sum\""), "{text}");
    assert!(text.contains("incremental"), "{text}");
    assert!(text.contains("verified"), "{text}");
    // The metadata file itself is accepted as the pointer too.
    let out = flowstate(&["inspect", s(&job.join("chk-7").join("_metadata")), "--json", "--verify"]);
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["checkpoint_id"], 7);
}

#[test]
fn inspect_verify_names_a_missing_and_a_damaged_file() {
    let (_dir, job) = demo_on_disk();
    let chk = job.join("chk-7");
    let shared: Vec<String> = files_of(&chk).into_iter().filter(|f| f.1).map(|f| f.0).collect();
    assert!(shared.len() >= 2, "{shared:?}");
    std::fs::remove_file(job.join(&shared[0])).unwrap();
    let damaged = job.join(&shared[1]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();

    let out = flowstate(&["inspect", s(&chk), "--verify"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("verification FAILED: 2 problems"), "{text}");
    let problem = |path: &str| {
        text.lines()
            .find(|l| l.contains(path) && !l.contains("crc32c "))
            .map(str::to_string)
    };
    assert!(problem(&shared[0]).is_some(), "the missing file is named: {text}");
    assert!(problem(&shared[1]).unwrap().contains("CRC-32C"), "{text}");
}

#[test]
fn inspect_verify_names_files_longer_or_shorter_than_the_metadata_says() {
    let (dir, job) = demo_on_disk();
    let chk = job.join("chk-7");
    let shared: Vec<String> = files_of(&chk).into_iter().filter(|f| f.1).map(|f| f.0).collect();
    let longer = job.join(&shared[0]);
    let mut bytes = std::fs::read(&longer).unwrap();
    bytes.push(0);
    std::fs::write(&longer, bytes).unwrap();
    let out = flowstate(&["inspect", s(&chk), "--verify"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.contains(&shared[0]) && l.contains("more than")),
        "{text}"
    );

    // The demo's savepoint is canonical: its key groups are verified frame by frame.
    let savepoint = std::fs::read_dir(dir.path().join("savepoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("savepoint-"))
        .unwrap();
    let out = flowstate(&["inspect", s(&savepoint), "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let file = files_of(&savepoint).into_iter().next().unwrap().0;
    let shorter = savepoint.join(&file);
    let bytes = std::fs::read(&shorter).unwrap();
    std::fs::write(&shorter, &bytes[..bytes.len() - 1]).unwrap();
    let out = flowstate(&["inspect", s(&savepoint), "--verify"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains(&file) && (l.contains("ends before") || l.contains("handle says"))),
        "{}",
        stdout(&out)
    );
}

#[test]
fn garbage_metadata_is_named_and_stops_gc() {
    let (_dir, job) = demo_on_disk();
    std::fs::write(job.join("chk-6").join("_metadata"), b"\0\0garbage\xff").unwrap();

    let out = flowstate(&["checkpoints", s(&job)]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out)
        .lines()
        .any(|l| l.contains("chk-6") && l.contains("unreadable")));

    let out = flowstate(&["inspect", s(&job.join("chk-6"))]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("chk-6/_metadata"), "{}", stderr(&out));

    let out = flowstate(&["gc", s(&job), "--min-age", "0", "--delete"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("nothing deleted"), "{}", stderr(&out));
    assert!(stderr(&out).contains("chk-6/_metadata"), "{}", stderr(&out));
}

#[test]
fn gc_lists_then_deletes_orphans_and_leaves_foreign_files_alone() {
    let (_dir, job) = demo_on_disk();
    let orphan = job.join("shared").join("0000abcd-1f-2");
    std::fs::write(&orphan, vec![7u8; 1000]).unwrap();
    let foreign = job.join("shared").join("NOTES.txt");
    std::fs::write(&foreign, b"kept by an operator").unwrap();

    // Too young under the default minimum age.
    let out = flowstate(&["gc", s(&job)]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(!stdout(&out).contains("0000abcd-1f-2"));

    let out = flowstate(&["gc", s(&job), "--min-age", "0"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("shared/0000abcd-1f-2"), "{text}");
    assert!(!text.contains("NOTES.txt"), "{text}");
    assert!(text.contains("dry run"), "{text}");
    assert!(orphan.exists(), "a dry run deletes nothing");

    let out = flowstate(&["gc", s(&job), "--min-age", "0", "--delete", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["deleted"], true);
    assert_eq!(v["orphans"].as_array().unwrap().len(), 1);
    assert!(!orphan.exists());
    assert!(foreign.exists());
    // Nothing a checkpoint references went.
    for chk in ["chk-6", "chk-7"] {
        let out = flowstate(&["inspect", s(&job.join(chk)), "--verify"]);
        assert_eq!(code(&out), 0, "{chk}: {}", stdout(&out));
    }
}

#[test]
fn bad_usage_and_unreadable_input_exit_2() {
    let out = flowstate(&["inspect", "/definitely/not/here/chk-1"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("/definitely/not/here"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let out = flowstate(&["gc", s(dir.path()), "--min-age", "1w"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    let out = flowstate(&["checkpoints"]);
    assert_eq!(code(&out), 2);
    for command in ["checkpoints", "inspect", "gc"] {
        let out = flowstate(&[command, "--help"]);
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("Examples:"), "{command} --help shows an example");
    }
}

/// The same commands on a bucket of the S3-compatible server.
#[test]
fn commands_work_on_a_bucket() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(endpoint) = var("FLOWSTATE_S3_ENDPOINT") else {
        assert!(
            var("CI").is_none_or(|v| v != "true"),
            "CI runs this against a server: use scripts/test.sh"
        );
        return;
    };
    let bucket = var("FLOWSTATE_S3_BUCKET").unwrap_or_else(|| "flowstate".into());
    let url = format!("s3://{bucket}/cli-{}", std::process::id());
    let options = [
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
    ];
    let with_options = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for o in &options {
            all.push("--storage-option".into());
            all.push(o.clone());
        }
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        flowstate(&refs)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut demo = vec!["demo", "--dir", s(dir.path()), "--storage", url.as_str()];
    demo.extend(DEMO);
    let out = with_options(&demo);
    assert_eq!(code(&out), 0, "demo on the bucket: {}{}", stdout(&out), stderr(&out));

    let out = with_options(&[
        "checkpoints",
        &url,
        "--savepoints",
        &format!("{url}/savepoints"),
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().any(|r| r["latest"] == true && r["id"] == 7), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "savepoint" && r["status"] == "complete"),
        "{rows:?}"
    );

    let out = with_options(&["inspect", &format!("{url}/chk-7"), "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("verified"));

    let out = with_options(&["gc", &url, "--min-age", "0"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("0 orphaned files"), "{}", stdout(&out));

    let converted = format!("s3://{bucket}/cli-converted-{}", std::process::id());
    let out = with_options(&["savepoint", "convert", &format!("{url}/chk-7"), &converted]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let pointer = stdout(&out).lines().last().unwrap().trim().to_string();
    assert!(pointer.starts_with(&format!("{converted}/savepoint-")), "{pointer}");
    let out = with_options(&["inspect", &pointer, "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("(key-groups)"), "{}", stdout(&out));
}

#[test]
fn convert_rewrites_an_incremental_checkpoint_as_a_canonical_savepoint() {
    use flowstate_api::*;
    let (dir, job) = demo_on_disk();
    // Never into a checkpoint directory: it is deleted with its checkpoint.
    for inside in [job.join("chk-7"), job.join("chk-6").join("savepoints")] {
        let out = flowstate(&["savepoint", "convert", s(&job.join("chk-7")), s(&inside)]);
        assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("inside the checkpoint directory"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!job.join("chk-6").join("savepoints").exists());
    let target = dir.path().join("converted");
    let out = flowstate(&["savepoint", "convert", s(&job.join("chk-7")), s(&target)]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let pointer = stdout(&out).lines().last().unwrap().trim().to_string();
    assert!(pointer.contains("/converted/savepoint-"), "{pointer}");

    let out = flowstate(&["inspect", &pointer, "--verify", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "savepoint");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let formats: Vec<&str> = v["operators"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|op| op["keyed"].as_array().unwrap().iter())
        .map(|h| h["format"].as_str().unwrap())
        .collect();
    assert!(
        !formats.is_empty() && formats.iter().all(|f| *f == "key-groups"),
        "{formats:?}"
    );

    // The incremental checkpoint restored into RocksDB and the converted
    // savepoint restored into the heap backend hold the same state.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), JOB).unwrap();
        let original = storage.resolve(s(&job.join("chk-7"))).await.unwrap();
        let converted = storage.resolve(&pointer).await.unwrap();
        let handles = |m: &CheckpointMetadata| m.operator("count-by-user").unwrap().keyed.clone();
        let config = || KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128);
        let mut rocks = flowstate_rocksdb::RocksDbBackend::restore(
            config(),
            &handles(&original.metadata),
            &*original.reader,
            flowstate_rocksdb::RocksDbOptions::new(dir.path().join("work")),
        )
        .await
        .unwrap();
        let mut heap =
            flowstate_heap::HeapBackend::restore(config(), &handles(&converted.metadata), &*converted.reader)
                .await
                .unwrap();
        let a = rocks.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
        let b = heap.register(ValueStateDescriptor::<u64>::new("count")).unwrap();
        let mut present = 0;
        for k in 0..2_000u64 {
            rocks.set_current_key(&k).unwrap();
            heap.set_current_key(&k).unwrap();
            let (x, y) = (rocks.value(&a).unwrap(), heap.value(&b).unwrap());
            assert_eq!(x, y, "key {k}");
            present += usize::from(x.is_some());
        }
        assert!(present > 1_000, "{present} keys");
    });

    // Key groups are fixed by the max parallelism: another is refused.
    let out = flowstate(&[
        "savepoint",
        "convert",
        s(&job.join("chk-7")),
        s(&target),
        "--max-parallelism",
        "256",
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("max parallelism 128, not 256"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_takes_a_directory_as_its_storage() {
    let work = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let mut args = vec!["demo", "--dir", s(work.path()), "--storage", s(storage.path())];
    args.extend(DEMO);
    let out = flowstate(&args);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let job = storage.path().join("checkpoints").join(JOB);
    assert!(job.join("chk-7").join("_metadata").is_file());
    assert!(
        !work.path().join("checkpoints").exists(),
        "checkpoints go to --storage, not --dir"
    );
    let out = flowstate(&["checkpoints", s(&job)]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("latest complete checkpoint: 7"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_fifo_or_a_link_in_place_of_metadata_is_unreadable_and_stops_gc() {
    let (_dir, job) = demo_on_disk();
    let fifo = job.join("chk-8");
    std::fs::create_dir(&fifo).unwrap();
    let status = Command::new("mkfifo").arg(fifo.join("_metadata")).status().unwrap();
    assert!(status.success());
    let out = flowstate(&["checkpoints", s(&job)]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.contains("chk-8") && l.contains("unreadable")),
        "{text}"
    );
    assert!(text.contains("FIFO"), "{text}");
    let out = flowstate(&["gc", s(&job), "--min-age", "0", "--delete"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(stderr(&out).contains("chk-8/_metadata"), "{}", stderr(&out));

    std::fs::remove_file(fifo.join("_metadata")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", fifo.join("_metadata")).unwrap();
    let out = flowstate(&["checkpoints", s(&job)]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let out = flowstate(&["gc", s(&job), "--min-age", "0", "--delete"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    // Nothing was deleted: the retained checkpoints still verify.
    for chk in ["chk-6", "chk-7"] {
        let out = flowstate(&["inspect", s(&job.join(chk)), "--verify"]);
        assert_eq!(code(&out), 0, "{chk}: {}", stdout(&out));
    }
}

/// A native RocksDB savepoint is inspected and verified like any
/// checkpoint, and `savepoint convert` turns it into a canonical one that
/// the heap backend restores to the same state.
#[test]
fn a_native_savepoint_verifies_and_converts_to_a_canonical_one() {
    use flowstate_api::checkpoint::OperatorState;
    use flowstate_api::*;
    let dir = tempfile::tempdir().unwrap();
    let savepoints = dir.path().join("savepoints");
    let config = || KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pointer = rt.block_on(async {
        let storage = flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job")
            .unwrap()
            .with_savepoint_dir(s(&savepoints).to_string());
        let mut b = flowstate_rocksdb::RocksDbBackend::new(
            config(),
            flowstate_rocksdb::RocksDbOptions::new(dir.path().join("w")),
        )
        .unwrap();
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in 0..5_000u64 {
            b.set_current_key(&k).unwrap();
            b.update(&v, k * 3).unwrap();
        }
        let location = storage.init_savepoint(1, None).await.unwrap();
        let result = b
            .snapshot(1, std::sync::Arc::clone(&location), SnapshotOptions::native_savepoint())
            .unwrap()
            .await
            .unwrap();
        let metadata = CheckpointMetadata::new(1, CheckpointKind::Savepoint, 0).with_operator(OperatorState::new(
            "op",
            1,
            128,
            vec![result.handle],
        ));
        location.write_metadata(&metadata).await.unwrap()
    });

    let out = flowstate(&["inspect", &pointer, "--verify", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["kind"], "savepoint");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    let target = dir.path().join("converted");
    let out = flowstate(&["savepoint", "convert", &pointer, s(&target)]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let converted = stdout(&out).lines().last().unwrap().trim().to_string();
    rt.block_on(async {
        let storage = flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job").unwrap();
        let resolved = storage.resolve(&converted).await.unwrap();
        let handles = resolved.metadata.operator("op").unwrap().keyed.clone();
        assert!(handles.iter().all(|h| matches!(h, KeyedStateHandle::KeyGroups(_))));
        let mut heap = flowstate_heap::HeapBackend::restore(config(), &handles, &*resolved.reader)
            .await
            .unwrap();
        let v = heap.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in (0..5_000u64).step_by(7) {
            heap.set_current_key(&k).unwrap();
            assert_eq!(heap.value(&v).unwrap(), Some(k * 3), "key {k}");
        }
    });
}

/// The heap backend's incremental checkpoints (chains): `inspect` names
/// their format and `--verify` checks every frame, naming a damaged chain
/// file; `savepoint convert` turns one into a canonical savepoint.
#[test]
fn heap_chains_inspect_verify_and_convert() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["demo", "--backend", "heap", "--dir", dir.path().to_str().unwrap()];
    args.extend(DEMO);
    let out = flowstate(&args);
    assert_eq!(code(&out), 0, "demo failed: {}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("heap backend (incremental checkpoints)"),
        "{}",
        stdout(&out)
    );
    let job = dir.path().join("checkpoints").join(JOB);
    let chk = job.join("chk-7");
    let out = flowstate(&["inspect", s(&chk), "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("heap-chain"), "{}", stdout(&out));

    let target = dir.path().join("converted");
    let out = flowstate(&["savepoint", "convert", s(&chk), s(&target)]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let pointer = stdout(&out).lines().last().unwrap().trim().to_string();
    let out = flowstate(&["inspect", &pointer, "--verify"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("key-groups"), "{}", stdout(&out));

    // A flipped byte inside a chain file is named.
    let shared: Vec<String> = files_of(&chk).into_iter().filter(|f| f.1).map(|f| f.0).collect();
    assert!(!shared.is_empty(), "a chain references shared files");
    let damaged = job.join(&shared[0]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();
    let out = flowstate(&["inspect", s(&chk), "--verify"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&shared[0]), "the damaged file is named: {text}");
}
