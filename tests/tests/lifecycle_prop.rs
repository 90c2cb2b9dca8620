//! Property test of the checkpoint lifecycle on filesystem storage: random
//! sequences of snapshot / complete / abort / notify / restart / restore
//! (claim and no-claim) / savepoint / garbage collection, with up to three
//! checkpoints in flight at once, completed in any order, and incremental
//! handles that reuse the shared files of the checkpoint the backend was
//! last notified of (notifications may be late, reordered or lost, so that
//! checkpoint may already be subsumed). After every step, no file
//! referenced by a retained checkpoint, a savepoint, a no-claim-restored
//! checkpoint, or a checkpoint in flight that can still complete (of the
//! files retained checkpoints referenced when it began) is
//! gone; a completion succeeds exactly when every file it references exists
//! and it is newer than the newest completed checkpoint; after garbage
//! collection no unreferenced file of ours remains.
//!
//! The same property runs, with fewer cases, on object-store storage over
//! the real S3-compatible server of `scripts/test.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flowstate_api::checkpoint::{
    is_own_file_name, metadata_path_id, BlobPath, BlobStore, CheckpointLocation, HandleFile, IncrementalStateHandle,
    KeyGroupsStateHandle, OperatorState, StateScope, StreamStateHandle,
};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::*;

use futures::StreamExt;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Start a checkpoint writing `new` shared files, reusing the shared
    /// files of the checkpoint the backend was last notified of if `reuse`.
    Snapshot { new: u8, reuse: bool },
    /// Complete the `pick`-th checkpoint in flight.
    Complete { pick: u8 },
    /// Abort the `pick`-th checkpoint in flight.
    Abort { pick: u8 },
    /// Deliver the `pick`-th undelivered completion notification (the
    /// others stay late; a restart loses them).
    Notify { pick: u8 },
    /// Crash and restart: a new store over the same storage, restoring in
    /// claim mode the `pick`-th checkpoint found, or in no-claim mode another
    /// job's checkpoint or a savepoint.
    Restart { pick: u8, claim: bool, savepoint: bool },
    /// Take a savepoint.
    Savepoint,
    /// Garbage collection: with a minimum age no file reaches (nothing may
    /// go), or with none when no checkpoint is in progress.
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, any::<bool>()).prop_map(|(new, reuse)| Op::Snapshot { new, reuse }),
        4 => any::<u8>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Abort { pick }),
        3 => any::<u8>().prop_map(|pick| Op::Notify { pick }),
        1 => (any::<u8>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, claim, savepoint)| Op::Restart { pick, claim, savepoint }),
        1 => Just(Op::Savepoint),
        1 => Just(Op::Gc),
    ]
}

struct Pending {
    location: Arc<CheckpointLocation>,
    handle: KeyedStateHandle,
    /// Every file it references existed when it began.
    whole: bool,
}

/// At most this many checkpoints in flight at once.
const MAX_IN_FLIGHT: usize = 3;

struct World {
    storage: Arc<CheckpointStorage>,
    store: CheckpointStore,
    retain: usize,
    next_id: u64,
    pending: Vec<Pending>,
    /// The backend's base: the newest checkpoint it was notified of, and its
    /// shared files, reused by new checkpoints.
    base: Option<u64>,
    reusable: Vec<StreamStateHandle>,
    /// Completed checkpoints whose notification has not reached the backend.
    undelivered: Vec<(u64, Vec<StreamStateHandle>)>,
    /// Snapshots that are not ours and must never lose a file: another
    /// job's checkpoints and our savepoints.
    foreign: Vec<String>,
    savepoints: Vec<String>,
}

async fn stream(location: &Arc<CheckpointLocation>, scope: StateScope, fill: u8) -> StreamStateHandle {
    let mut s = location.create_output_stream(scope).await.unwrap();
    s.write(&[fill; 40]).await.unwrap();
    s.close().await.unwrap()
}

fn file(i: usize, stream: StreamStateHandle) -> HandleFile {
    HandleFile {
        name: format!("{i:06}.sst"),
        stream,
        crc32c: 0,
    }
}

fn metadata(id: u64, kind: CheckpointKind, handle: KeyedStateHandle) -> CheckpointMetadata {
    CheckpointMetadata::new(id, kind, 0).with_operator(OperatorState::new("op", 1, 128, vec![handle]))
}

impl World {
    async fn step(&mut self, op: &Op) {
        match *op {
            Op::Snapshot { new, reuse } => {
                if self.pending.len() >= MAX_IN_FLIGHT {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                let location = self.store.begin_checkpoint(id).await.unwrap();
                let mut shared = if reuse { self.reusable.clone() } else { Vec::new() };
                // Reused files a retained checkpoint references when it begins
                // must survive until it completes or aborts; others (of a
                // checkpoint already subsumed) may be gone by then.
                let whole = shared
                    .iter()
                    .filter_map(StreamStateHandle::file_path)
                    .all(|p| self.store.registry().is_live(p));
                for n in 0..new {
                    shared.push(stream(&location, StateScope::Shared, n).await);
                }
                let private = stream(&location, StateScope::Exclusive, 9).await;
                let handle = KeyedStateHandle::Incremental(IncrementalStateHandle {
                    format: Default::default(),
                    range: KeyGroupRange::all(128).unwrap(),
                    backend_id: "prop".into(),
                    checkpoint_id: id,
                    shared: shared.into_iter().enumerate().map(|(i, s)| file(i, s)).collect(),
                    private: vec![file(99, private)],
                    meta: StreamStateHandle::Empty,
                });
                self.pending.push(Pending {
                    location,
                    handle,
                    whole,
                });
            }
            Op::Complete { pick } => {
                if self.pending.is_empty() {
                    return;
                }
                let p = self.pending.remove(pick as usize % self.pending.len());
                let id = p.location.checkpoint_id();
                let before: Vec<u64> = self.store.retained().iter().map(|c| c.checkpoint_id).collect();
                let newest = before.last().copied();
                let mut all_present = true;
                for s in p.handle.streams() {
                    all_present &= self.present(s).await;
                }
                assert!(
                    !p.whole || all_present || newest.is_some_and(|n| id <= n),
                    "a file of checkpoint {id} in flight was deleted"
                );
                let result = self
                    .store
                    .complete(&p.location, metadata(id, CheckpointKind::Checkpoint, p.handle.clone()))
                    .await;
                if newest.is_some_and(|n| id <= n) {
                    let e = result.expect_err("a checkpoint older than the newest completed one completed");
                    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
                    self.store.abort(&p.location, &[p.handle]).await.unwrap();
                    return;
                }
                if !p.whole && !all_present {
                    // It reuses files of a checkpoint subsumed before it began, since deleted.
                    let e = result.expect_err("a checkpoint referencing a deleted file completed");
                    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
                    self.store.abort(&p.location, &[p.handle]).await.unwrap();
                    return;
                }
                result.unwrap_or_else(|e| panic!("completing {id}, whose files all existed when it began: {e}"));
                let mut want: Vec<u64> = before.into_iter().chain([id]).collect();
                let cut = want.len().saturating_sub(self.retain);
                want.drain(..cut);
                let got: Vec<u64> = self.store.retained().iter().map(|c| c.checkpoint_id).collect();
                assert_eq!(got, want, "retention after completing {id}");
                if let KeyedStateHandle::Incremental(h) = &p.handle {
                    self.undelivered
                        .push((id, h.shared.iter().map(|f| f.stream.clone()).collect()));
                }
            }
            Op::Abort { pick } => {
                if self.pending.is_empty() {
                    return;
                }
                let p = self.pending.remove(pick as usize % self.pending.len());
                self.store.abort(&p.location, &[p.handle]).await.unwrap();
            }
            Op::Notify { pick } => {
                if self.undelivered.is_empty() {
                    return;
                }
                let (id, shared) = self.undelivered.remove(pick as usize % self.undelivered.len());
                // Applied monotonically: a late notification changes nothing.
                if self.base.is_none_or(|b| id > b) {
                    self.base = Some(id);
                    self.reusable = shared;
                }
            }
            Op::Savepoint => {
                let id = self.next_id;
                self.next_id += 1;
                let location = self.store.begin_savepoint(id, None).await.unwrap();
                let s = stream(&location, StateScope::Exclusive, 7).await;
                let handle = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                    range: KeyGroupRange::all(128).unwrap(),
                    offsets: Vec::new(),
                    stream: s,
                });
                let c = self
                    .store
                    .complete(&location, metadata(id, CheckpointKind::Savepoint, handle))
                    .await
                    .unwrap();
                self.savepoints.push(c.pointer);
            }
            Op::Restart { pick, claim, savepoint } => {
                // A crash: checkpoints in flight are abandoned, their files
                // left behind, and undelivered notifications are lost.
                self.pending.clear();
                self.undelivered.clear();
                let config = CheckpointStoreConfig::default().with_max_retained(self.retain);
                self.store = CheckpointStore::open(Arc::clone(&self.storage), config).await.unwrap();
                self.reusable.clear();
                self.base = None;
                let ids: Vec<u64> = self.store.retained().iter().map(|c| c.checkpoint_id).collect();
                let (pointer, ok) = match (claim, savepoint) {
                    (true, false) if !ids.is_empty() => {
                        (self.storage.checkpoint_pointer(ids[pick as usize % ids.len()]), true)
                    }
                    (true, false) => return,
                    (_, true) if !self.savepoints.is_empty() => {
                        (self.savepoints[pick as usize % self.savepoints.len()].clone(), !claim)
                    }
                    _ => (self.foreign[pick as usize % self.foreign.len()].clone(), !claim),
                };
                let mode = if claim {
                    RestoreMode::Claim
                } else {
                    RestoreMode::NoClaim
                };
                let resolved = match self.store.restore(&pointer, mode).await {
                    Ok(r) => r,
                    Err(e) => {
                        assert!(!ok, "restore of {pointer} in {mode:?} failed: {e}");
                        return;
                    }
                };
                assert!(ok, "{pointer} restored in {mode:?}");
                if claim {
                    // Our checkpoints go on from the restored one, sharing its files.
                    if let Some(KeyedStateHandle::Incremental(h)) = resolved.metadata.operators[0].keyed.first() {
                        self.reusable = h.shared.iter().map(|f| f.stream.clone()).collect();
                        self.base = Some(resolved.metadata.checkpoint_id);
                    }
                }
                let newest = self.store.retained().last().map_or(0, |c| c.checkpoint_id);
                self.next_id = self.next_id.max(newest + 1).max(resolved.metadata.checkpoint_id + 1);
            }
            Op::Gc => {
                // Everything is younger than an hour: nothing may go.
                let young = self
                    .store
                    .collect_garbage(&GcOptions::new(Duration::from_secs(3600)).delete())
                    .await
                    .unwrap();
                assert!(young.orphans.is_empty(), "GC deleted young files: {young:?}");
                if self.pending.is_empty() {
                    self.store
                        .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
                        .await
                        .unwrap();
                    self.check_no_orphans().await;
                }
            }
        }
    }

    /// True if the file of `s` exists.
    async fn present(&self, s: &StreamStateHandle) -> bool {
        match s.file_path() {
            Some(p) => self.storage.stat_file(p).await.unwrap().is_some(),
            None => true,
        }
    }

    /// No file of a retained checkpoint, savepoint, no-claim restore or
    /// (whole) checkpoint in flight is gone, and every checkpoint in storage
    /// is whole.
    async fn check(&self, after: &Op) {
        // Checkpoints older than the newest completed one can no longer
        // complete (they are subsumed, as in Flink): their files may go.
        let newest = self.store.latest().map(|c| c.checkpoint_id);
        let alive = |p: &&Pending| newest.is_none_or(|n| p.location.checkpoint_id() > n);
        for p in self.pending.iter().filter(|p| p.whole).filter(alive) {
            for s in p.handle.streams() {
                assert!(
                    self.present(s).await,
                    "after {after:?}: {s:?} of checkpoint {} in flight is gone",
                    p.location.checkpoint_id()
                );
            }
        }
        let mut referenced: BTreeSet<String> = self.store.retained().iter().flat_map(|c| c.files()).cloned().collect();
        for f in self.storage.list_files().await.unwrap() {
            if metadata_path_id(&f.path).is_some() {
                let m = CheckpointMetadata::decode(&self.storage.read_file(&f.path).await.unwrap(), &f.path).unwrap();
                referenced.extend(m.file_paths());
            }
        }
        // Read at once: on an object store each read is a round trip.
        let missing: Vec<String> = futures::stream::iter(referenced)
            .map(|p| async move { self.storage.read_file(&p).await.err().map(|e| format!("{p}: {e}")) })
            .buffer_unordered(16)
            .filter_map(|gone| async move { gone })
            .collect()
            .await;
        assert!(missing.is_empty(), "after {after:?}: gone: {missing:?}");
        for sp in self.savepoints.iter().chain(&self.foreign) {
            let resolved = self.storage.resolve(sp).await.unwrap();
            for h in &resolved.metadata.operators[0].keyed {
                for s in h.streams() {
                    resolved.reader.read(s).await.unwrap();
                }
            }
        }
    }

    /// After a full GC, every file of ours is referenced by some metadata.
    async fn check_no_orphans(&self) {
        let files = self.storage.list_files().await.unwrap();
        let mut reachable = BTreeSet::new();
        for f in &files {
            if metadata_path_id(&f.path).is_some() {
                let m = CheckpointMetadata::decode(&self.storage.read_file(&f.path).await.unwrap(), &f.path).unwrap();
                reachable.extend(m.file_paths());
                reachable.insert(f.path.clone());
            }
        }
        for f in files {
            let name = f.path.rsplit('/').next().unwrap_or_default();
            assert!(
                reachable.contains(&f.path) || !is_own_file_name(name),
                "orphan {} survived GC",
                f.path
            );
        }
    }
}

/// Where a run's checkpoints go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A directory.
    Fs,
    /// The S3-compatible server of the environment.
    S3,
}

fn storage_of(backing: Backing, base: &std::path::Path, job: &str) -> Arc<CheckpointStorage> {
    match backing {
        Backing::Fs => Arc::new(
            flowstate_fs::checkpoint_storage(base.join("checkpoints"), job)
                .unwrap()
                .with_inline_threshold(16)
                .unwrap()
                .with_savepoint_dir(base.join("savepoints").display().to_string()),
        ),
        Backing::S3 => {
            let server = common::S3Server::from_env().unwrap();
            let store = server.builder(&format!("checkpoints/{job}")).build().unwrap();
            Arc::new(
                CheckpointStorage::new(Arc::new(store), job)
                    .unwrap()
                    .with_inline_threshold(16)
                    .unwrap()
                    .with_savepoint_dir(format!("s3://{}/savepoints", server.bucket)),
            )
        }
    }
}

/// Another job's two retained checkpoints, sharing a file.
async fn old_job(backing: Backing, base: &std::path::Path) -> Vec<String> {
    let storage = storage_of(backing, base, "old-job");
    let mut store = CheckpointStore::open(storage, CheckpointStoreConfig::default().with_max_retained(2))
        .await
        .unwrap();
    let mut shared = Vec::new();
    let mut pointers = Vec::new();
    for id in [10, 11] {
        let location = store.begin_checkpoint(id).await.unwrap();
        shared.push(stream(&location, StateScope::Shared, id as u8).await);
        let handle = KeyedStateHandle::Incremental(IncrementalStateHandle {
            format: Default::default(),
            range: KeyGroupRange::all(128).unwrap(),
            backend_id: "old".into(),
            checkpoint_id: id,
            shared: shared.iter().cloned().enumerate().map(|(i, s)| file(i, s)).collect(),
            private: Vec::new(),
            meta: StreamStateHandle::Empty,
        });
        let c = store
            .complete(&location, metadata(id, CheckpointKind::Checkpoint, handle))
            .await
            .unwrap();
        pointers.push(c.pointer);
    }
    pointers
}

/// A scratch directory: tmpfs keeps ten thousand sequences of synced files
/// fast when it has room to spare; any directory works.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm)
        .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= 1 << 30 && s.f_favail >= 100_000);
    if roomy {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// One directory (or bucket) for every case of a test, each case its own job
/// in it, beside the other job. Dropped (and removed) when the test ends.
struct Shared {
    backing: Backing,
    dir: tempfile::TempDir,
    foreign: Vec<String>,
    cases: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn new(backing: Backing) -> Shared {
        let dir = scratch();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let foreign = rt.block_on(old_job(backing, dir.path()));
        Shared {
            backing,
            dir,
            foreign,
            cases: Default::default(),
        }
    }
}

/// One random sequence of operations on `shared`'s backing, then a restart
/// and GC; the case's job and savepoints are removed afterwards, so a run
/// keeps no more than one case's files.
fn run_case(shared: &Shared, retain: usize, ops: &[Op]) {
    let backing = shared.backing;
    let case = shared.cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage = storage_of(backing, shared.dir.path(), &format!("job-{case}"));
        let foreign = shared.foreign.clone();
        let config = CheckpointStoreConfig::default().with_max_retained(retain);
        let store = CheckpointStore::open(Arc::clone(&storage), config).await.unwrap();
        let mut world = World {
            storage,
            store,
            retain,
            next_id: 1,
            pending: Vec::new(),
            base: None,
            reusable: Vec::new(),
            undelivered: Vec::new(),
            foreign,
            savepoints: Vec::new(),
        };
        for op in ops {
            world.step(op).await;
            if !matches!(op, Op::Snapshot { .. } | Op::Savepoint) {
                world.check(op).await;
            }
        }
        // Restart (abandoning any checkpoint in progress), then collect everything unreferenced.
        world.pending.clear();
        let config = CheckpointStoreConfig::default().with_max_retained(retain);
        world.store = CheckpointStore::open(Arc::clone(&world.storage), config).await.unwrap();
        world
            .store
            .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
            .await
            .unwrap();
        world.check(&Op::Gc).await;
        world.check_no_orphans().await;
        if backing == Backing::Fs {
            for dir in [format!("checkpoints/job-{case}"), "savepoints".to_string()] {
                match std::fs::remove_dir_all(shared.dir.path().join(dir)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
                    _ => {}
                }
            }
        } else {
            // s3s-fs lists by walking its whole bucket: keep it to the other job.
            let server = common::S3Server::from_env().unwrap();
            let bucket = server.builder("").build().unwrap();
            for dir in [format!("checkpoints/job-{case}"), "savepoints".to_string()] {
                let prefix = BlobPath::new(&dir).unwrap();
                let paths: Vec<BlobPath> = bucket
                    .list(Some(&prefix))
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.path)
                    .collect();
                bucket.delete(&paths).await.unwrap();
            }
        }
    });
}

const CASES: u32 = 10_000;
/// Cases on the S3-compatible server: every operation is a request.
const S3_CASES: u32 = 40;

/// Runs `cases` random cases on `backing`, shrinking a failure as `proptest!` does.
fn run_cases(backing: Backing, cases: u32) {
    let shared = Shared::new(backing);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (1usize..4, prop::collection::vec(op(), 1..24));
    let result = runner.run(&strategy, |(retain, ops)| {
        run_case(&shared, retain, &ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}

#[test]
fn lifecycle_never_loses_a_referenced_file() {
    run_cases(Backing::Fs, CASES);
}

#[test]
fn lifecycle_never_loses_a_referenced_file_on_s3() {
    if common::S3Server::from_env().is_some() {
        run_cases(Backing::S3, S3_CASES);
    }
}
