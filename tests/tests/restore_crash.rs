//! Crash tests of the RocksDB restore. A process is killed at each point of
//! a clip/ingest restore: in the middle of a download, after the downloads,
//! after the base database is opened, after it is clipped to the new range,
//! with an SST file written but not ingested, after each ingestion, and
//! while old local copies are removed. The next attempt, in the same
//! working directory and with the same local-recovery directory, restores
//! exactly (every owned key, no other), and the dead attempt's working
//! directory is gone after it.
//!
//! The killed attempts are this test binary run again (the ignored test
//! `killed_restore`), with `FLOWSTATE_CRASH_AT` naming the point where the
//! backend aborts the process (feature `crash-points` of flowstate-rocksdb).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use flowstate_api::checkpoint::OperatorState;
use flowstate_api::*;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

const MAX: u32 = 128;
const KEYS: u64 = 4_000;
/// Set in a killed attempt: `<directory>|<storage>|<case>`.
const CHILD: &str = "FLOWSTATE_RESTORE_CRASH_CHILD";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    /// The filesystem storage: files are hard-linked into the restore.
    Fs,
    /// An object store over a local directory: files are downloaded in
    /// chunks.
    Object,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    /// Incremental checkpoint of 2 subtasks restored as subtask 1 of 3: a
    /// base handle clipped, the other handle's key groups ingested.
    Rescale,
    /// Canonical savepoint of 2 subtasks restored as one: every key group
    /// sorted into SST files and ingested.
    Savepoint,
}

struct States {
    v: ValueState<Vec<u8>>,
    l: ListState<u64>,
    m: MapState<u64, u64>,
}

fn register(b: &mut RocksDbBackend<u64>) -> States {
    States {
        v: b.register(ValueStateDescriptor::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::new("l")).unwrap(),
        m: b.register(MapStateDescriptor::new("m")).unwrap(),
    }
}

/// What key `k` holds after both rounds of writes: value, list, map.
type Expected = (Option<Vec<u8>>, Vec<u64>, BTreeMap<u64, u64>);

fn expected(k: u64) -> Expected {
    let changed = k.is_multiple_of(10);
    let value = if k.is_multiple_of(33) {
        None
    } else if changed {
        Some(vec![255 - k as u8; 10])
    } else {
        Some(vec![k as u8; 40 + (k % 50) as usize])
    };
    let mut list = vec![k, k * 2];
    let mut map = BTreeMap::from([(k, k), (k + 1, 1)]);
    if changed {
        list.push(k * 3);
        map.remove(&(k + 1));
    }
    (value, list, map)
}

fn storage(dir: &Path, store: Store) -> Arc<CheckpointStorage> {
    match store {
        Store::Fs => Arc::new(
            flowstate_fs::checkpoint_storage(dir.join("fs"), "job")
                .unwrap()
                .with_savepoint_dir(dir.join("savepoints").display().to_string()),
        ),
        Store::Object => {
            let root = dir.join("objects");
            std::fs::create_dir_all(&root).unwrap();
            let blobs = flowstate_object::ObjectStoreBuilder::new(format!("file://{}", root.display()))
                .build()
                .unwrap();
            Arc::new(
                CheckpointStorage::new(Arc::new(blobs), "job")
                    .unwrap()
                    .with_savepoint_dir(format!("file://{}/savepoints", root.display())),
            )
        }
    }
}

/// RocksDB options of subtask `index`, working in `work` with local copies
/// in `<dir>/local`.
fn options(dir: &Path, work: &str, index: u32) -> RocksDbOptions {
    RocksDbOptions::new(dir.join(work)).with_local_recovery(vec![dir.join("local")], format!("job/op-{index}"))
}

/// Writes the job at parallelism 2: checkpoint 1, changes, checkpoint 2
/// (incremental), then a canonical savepoint 3. Saves the pointers of 2
/// and 3 in `<dir>/pointer-2` and `<dir>/pointer-3`.
async fn write_job(dir: &Path, store: Store) {
    let storage = storage(dir, store);
    let mut backends = Vec::new();
    for i in 0..2 {
        let range = KeyGroupRange::for_operator(MAX, 2, i).unwrap();
        let mut b = RocksDbBackend::new(KeyedBackendConfig::new(range, MAX), options(dir, "old", i)).unwrap();
        let s = register(&mut b);
        for k in (0..KEYS).filter(|k| range.contains(key_group(*k))) {
            b.set_current_key(&k).unwrap();
            b.update(&s.v, vec![k as u8; 40 + (k % 50) as usize]).unwrap();
            b.append_all(&s.l, [k, k * 2]).unwrap();
            b.map_put(&s.m, k, k).unwrap();
            b.map_put(&s.m, k + 1, 1).unwrap();
        }
        backends.push((b, s, range));
    }
    snapshot(&storage, &mut backends, 1, false).await;
    for (b, s, range) in backends.iter_mut() {
        for k in (0..KEYS).filter(|k| k.is_multiple_of(10) || k.is_multiple_of(33)) {
            if !range.contains(key_group(k)) {
                continue;
            }
            b.set_current_key(&k).unwrap();
            if k.is_multiple_of(10) {
                b.update(&s.v, vec![255 - k as u8; 10]).unwrap();
                b.append(&s.l, k * 3).unwrap();
                b.map_remove(&s.m, &(k + 1)).unwrap();
            }
            if k.is_multiple_of(33) {
                b.clear(&s.v).unwrap();
            }
        }
    }
    let checkpoint = snapshot(&storage, &mut backends, 2, false).await;
    let savepoint = snapshot(&storage, &mut backends, 3, true).await;
    std::fs::write(dir.join("pointer-2"), checkpoint).unwrap();
    std::fs::write(dir.join("pointer-3"), savepoint).unwrap();
}

/// Snapshot `id` of every subtask, a checkpoint (completed and notified)
/// or a canonical savepoint; returns its pointer.
async fn snapshot(
    storage: &CheckpointStorage,
    backends: &mut [(RocksDbBackend<u64>, States, KeyGroupRange)],
    id: u64,
    savepoint: bool,
) -> String {
    let (location, options, kind) = if savepoint {
        let location = storage.init_savepoint(id, None).await.unwrap();
        (location, SnapshotOptions::savepoint(), CheckpointKind::Savepoint)
    } else {
        let location = storage.init_checkpoint(id).await.unwrap();
        (location, SnapshotOptions::checkpoint(), CheckpointKind::Checkpoint)
    };
    let mut handles = Vec::new();
    for (b, _, _) in backends.iter_mut() {
        handles.push(
            b.snapshot(id, Arc::clone(&location), options)
                .unwrap()
                .await
                .unwrap()
                .handle,
        );
    }
    let metadata = CheckpointMetadata::new(id, kind, 0).with_operator(OperatorState::new("op", 2, MAX, handles));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    if !savepoint {
        for (b, _, _) in backends.iter_mut() {
            b.notify_checkpoint_complete(id).unwrap();
        }
    }
    pointer
}

/// The key group of `k`, as every backend computes it.
fn key_group(k: u64) -> u32 {
    KeyedBackendConfig::<u64>::new(KeyGroupRange::all(MAX).unwrap(), MAX)
        .key_group_of(&k)
        .unwrap()
}

/// The range a case restores.
fn range(case: Case) -> KeyGroupRange {
    match case {
        Case::Rescale => KeyGroupRange::for_operator(MAX, 3, 1).unwrap(),
        Case::Savepoint => KeyGroupRange::all(MAX).unwrap(),
    }
}

/// Restores `case` in `<dir>/new` (with local copies of scope `op-1`).
async fn restore(dir: &Path, store: Store, case: Case) -> Result<RocksDbBackend<u64>> {
    let storage = storage(dir, store);
    let pointer = match case {
        Case::Rescale => std::fs::read_to_string(dir.join("pointer-2")).unwrap(),
        Case::Savepoint => std::fs::read_to_string(dir.join("pointer-3")).unwrap(),
    };
    let resolved = storage.resolve(&pointer).await?;
    let range = range(case);
    let handles: Vec<KeyedStateHandle> = resolved.metadata.operators[0]
        .keyed
        .iter()
        .filter(|h| !h.key_group_range().intersect(&range).is_empty())
        .cloned()
        .collect();
    RocksDbBackend::restore(
        KeyedBackendConfig::new(range, MAX),
        &handles,
        &*resolved.reader,
        options(dir, "new", 1),
    )
    .await
}

/// Checks every owned key against the model, and that no other key is
/// there.
fn check(b: &mut RocksDbBackend<u64>, case: Case, context: &str) {
    let s = register(b);
    let range = range(case);
    let owned: Vec<u64> = (0..KEYS).filter(|k| range.contains(key_group(*k))).collect();
    let mut with_value = Vec::new();
    for &k in &owned {
        b.set_current_key(&k).unwrap();
        let (value, list, map) = expected(k);
        assert_eq!(b.value(&s.v).unwrap(), value, "{context}: value of key {k}");
        assert_eq!(b.list(&s.l).unwrap(), list, "{context}: list of key {k}");
        let got: BTreeMap<u64, u64> = b.map_entries(&s.m).unwrap().into_iter().collect();
        assert_eq!(got, map, "{context}: map of key {k}");
        if value.is_some() {
            with_value.push(k);
        }
    }
    let mut keys = b.keys(&s.v, &VoidNamespace).unwrap();
    keys.sort_unstable();
    assert_eq!(keys, with_value, "{context}: the keys of the value state");
    let mut keys = b.keys(&s.l, &VoidNamespace).unwrap();
    keys.sort_unstable();
    assert_eq!(keys, owned, "{context}: the keys of the list state");
}

/// The instance directories under the restore's working directory.
fn instances(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else {
        return Vec::new();
    };
    entries.map(|e| e.unwrap().path()).collect()
}

/// Kills a restore of `case` at `point` (`name` or `name:n`), then restores
/// again in the same directories and checks the result.
async fn kill_then_restore(dir: &Path, store: Store, case: Case, point: &str) {
    let context = format!("{store:?} {case:?} killed at {point}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "killed_restore",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{}|{store:?}|{case:?}", dir.display()))
        .env("FLOWSTATE_CRASH_AT", point)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = point.split(':').next().unwrap();
    assert!(
        out.status.code().is_none() && stderr.contains(&format!("crash point {name}")),
        "{context}: the restore did not die there ({:?}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let dead = instances(dir);
    assert!(
        !dead.is_empty(),
        "{context}: the dead attempt left no working directory"
    );
    let mut b = restore(dir, store, case)
        .await
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    check(&mut b, case, &context);
    let live = instances(dir);
    assert_eq!(
        live,
        [b.instance_dir().to_path_buf()],
        "{context}: only the live attempt's directory is left (the dead one was {dead:?})"
    );
}

/// Every crash point of `case` on `store`, each a fresh copy of the job.
async fn every_point(store: Store, case: Case, points: &[&str]) {
    let job = tempfile::tempdir().unwrap();
    write_job(job.path(), store).await;
    for point in points {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(job.path(), dir.path());
        kill_then_restore(dir.path(), store, case, point).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "old" {
            // The writing job's working directory, removed as it ends.
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The points a rescaled restore passes: the base handle comes from its
/// local copy, the other handle from storage; three states are ingested.
const RESCALE_POINTS: [&str; 9] = [
    "restore.downloaded",
    "restore.opened",
    "restore.clipped",
    "restore.sst-written",
    "restore.ingested",
    "restore.sst-written:3",
    "restore.ingested:3",
    "restore.written",
    "restore.local-copy-removed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescaled_restore_killed_at_any_point_restores_on_the_next_attempt() {
    every_point(Store::Fs, Case::Rescale, &RESCALE_POINTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescaled_restore_from_an_object_store_killed_mid_download_restores_on_the_next_attempt() {
    every_point(
        Store::Object,
        Case::Rescale,
        &[
            "restore.download-chunk",
            "restore.download-chunk:4",
            "restore.clipped",
            "restore.ingested:2",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_restore_killed_while_ingesting_restores_on_the_next_attempt() {
    every_point(
        Store::Fs,
        Case::Savepoint,
        &[
            "restore.sst-written",
            "restore.ingested",
            "restore.sst-written:4",
            "restore.ingested:5",
            "restore.written",
        ],
    )
    .await;
}

/// The attempt that is killed: run by [`kill_then_restore`] in a process
/// of its own; without its environment it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a killed attempt of the crash tests, run by them"]
async fn killed_restore() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split('|');
    let dir = PathBuf::from(parts.next().unwrap());
    let store = match parts.next().unwrap() {
        "Fs" => Store::Fs,
        _ => Store::Object,
    };
    let case = match parts.next().unwrap() {
        "Rescale" => Case::Rescale,
        _ => Case::Savepoint,
    };
    let b = restore(&dir, store, case).await.unwrap();
    panic!("the restore ended without reaching its crash point ({b:?})");
}
