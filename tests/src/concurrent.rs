//! Several checkpoints in flight at once: every interleaving of snapshot
//! (sync phase), upload (async phase), complete, notify-complete and abort
//! must keep every file a retained or pending checkpoint references, and
//! every retained checkpoint must restore exactly the state of its sync
//! phase. A failed attempt leaves no file behind.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flowstate_api::checkpoint::{CheckpointLocation, OperatorState};
use flowstate_api::{
    CheckpointKind, CheckpointMetadata, CheckpointStorage, CheckpointStore, CheckpointStoreConfig, ErrorKind,
    KeyedStateBackend, KeyedStateBackendExt, PendingSnapshot, SnapshotOptions, SnapshotResult, ValueStateDescriptor,
};

use crate::fault::FaultMode;
use crate::{full_config, BackendFactory, Ctx, MAX_PARALLELISM, OPERATOR};

/// Keys written by these contracts.
const KEYS: u64 = 3_000;
/// Keys updated between two snapshots.
const ROUND: u64 = 400;

/// The value of `key` after write round `round`: incompressible and large
/// enough that state files are above any inline threshold.
fn value(key: u64, round: u64) -> String {
    let mut x = (key << 20 ^ round).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let noise: String = (0..6)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            format!("{:016x}", x.wrapping_mul(0x2545_f491_4f6c_dd1d))
        })
        .collect();
    format!("{key:08}-{round:04}-{noise}")
}

/// The state the test expects, and the backend under test.
struct Job<B> {
    backend: B,
    expected: BTreeMap<u64, String>,
    round: u64,
}

impl<B: KeyedStateBackend<Key = u64>> Job<B> {
    fn new(mut backend: B) -> Self {
        let v = backend.register(ValueStateDescriptor::<String>::new("v")).unwrap();
        let mut expected = BTreeMap::new();
        for k in 0..KEYS {
            backend.set_current_key(&k).unwrap();
            backend.update(&v, value(k, 0)).unwrap();
            expected.insert(k, value(k, 0));
        }
        Job {
            backend,
            expected,
            round: 0,
        }
    }

    /// Updates a window of keys that moves every round, so new files appear
    /// and old ones are compacted away.
    fn write_round(&mut self) {
        self.round += 1;
        let v = self.backend.register(ValueStateDescriptor::<String>::new("v")).unwrap();
        let start = (self.round * 733) % KEYS;
        for i in 0..ROUND {
            let k = (start + i) % KEYS;
            self.backend.set_current_key(&k).unwrap();
            self.backend.update(&v, value(k, self.round)).unwrap();
            self.expected.insert(k, value(k, self.round));
        }
    }
}

fn metadata(id: u64, result: &SnapshotResult) -> CheckpointMetadata {
    CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![result.handle.clone()],
    ))
}

/// Restores checkpoint `pointer` and checks it holds exactly `expected`.
async fn assert_restores<F: BackendFactory>(
    ctx: &Ctx<F>,
    storage: &CheckpointStorage,
    pointer: &str,
    expected: &BTreeMap<u64, String>,
    why: &str,
) {
    let mut b = crate::restore_from(ctx, storage, full_config::<u64>(), pointer)
        .await
        .unwrap_or_else(|e| panic!("{why}: restoring {pointer} failed: {e}"));
    let v = b.register(ValueStateDescriptor::<String>::new("v")).unwrap();
    for (k, want) in expected {
        b.set_current_key(k).unwrap();
        assert_eq!(b.value(&v).unwrap().as_ref(), Some(want), "{why}: key {k} of {pointer}");
    }
}

async fn assert_retained_whole(store: &CheckpointStore, why: &str) {
    for c in store.retained() {
        for f in c.files() {
            assert!(
                store.storage().stat_file(f).await.unwrap().is_some(),
                "{why}: file {f} of retained checkpoint {} is gone",
                c.checkpoint_id
            );
        }
    }
}

/// Takes the sync phase of checkpoint `id` after a write round; returns its
/// location, its async phase and the state it must restore to.
async fn begin<B: KeyedStateBackend<Key = u64>>(
    job: &mut Job<B>,
    store: &mut CheckpointStore,
    id: u64,
) -> (Arc<CheckpointLocation>, PendingSnapshot, BTreeMap<u64, String>) {
    job.write_round();
    let location = store.begin_checkpoint(id).await.unwrap();
    let pending = job
        .backend
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap();
    (location, pending, job.expected.clone())
}

/// The defect as found: incremental checkpoints, retention 1. Snapshots 1
/// and 2 are taken; 1 completes and the backend is notified; snapshot 3 is
/// taken (it may reuse 1's files); 2 completes and subsumes 1; 3 completes.
/// Checkpoint 3 restores exactly; likewise when 2's upload finishes only
/// after 3's snapshot, and when the notification of 1 arrives only after 2
/// completed.
pub async fn overlapping_checkpoints_keep_reused_files<F: BackendFactory>(ctx: Ctx<F>) {
    for variant in 0..3 {
        let why = format!("variant {variant}");
        let storage = ctx.storage.storage(&crate::job_id("overlap"));
        let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
            .await
            .unwrap();
        let mut job = Job::new(ctx.backend.build::<u64>(full_config()).unwrap());
        let (l1, p1, _) = begin(&mut job, &mut store, 1).await;
        let r1 = p1.await.unwrap();
        let (l2, p2, _) = begin(&mut job, &mut store, 2).await;
        let mut p2 = Some(p2);
        let mut r2 = None;
        if variant != 1 {
            r2 = Some(p2.take().unwrap().await.unwrap());
        }
        store.complete(&l1, metadata(1, &r1)).await.unwrap();
        if variant != 2 {
            job.backend.notify_checkpoint_complete(1).unwrap();
        }
        let (l3, p3, e3) = begin(&mut job, &mut store, 3).await;
        if let Some(p2) = p2 {
            r2 = Some(p2.await.unwrap());
        }
        let r2 = r2.unwrap();
        let c2 = store.complete(&l2, metadata(2, &r2)).await.unwrap();
        assert_eq!(c2.subsumed, [1], "{why}");
        if variant == 2 {
            // Late: after 2 completed and subsumed 1.
            job.backend.notify_checkpoint_complete(1).unwrap();
        }
        job.backend.notify_checkpoint_complete(2).unwrap();
        let r3 = p3.await.unwrap();
        let c3 = store.complete(&l3, metadata(3, &r3)).await.unwrap();
        job.backend.notify_checkpoint_complete(3).unwrap();
        assert_retained_whole(&store, &why).await;
        assert_restores(&ctx, &storage, &c3.pointer, &e3, &why).await;
        // And a 4th checkpoint on top of it restores too.
        let (l4, p4, e4) = begin(&mut job, &mut store, 4).await;
        let r4 = p4.await.unwrap();
        let c4 = store.complete(&l4, metadata(4, &r4)).await.unwrap();
        assert_retained_whole(&store, &why).await;
        assert_restores(&ctx, &storage, &c4.pointer, &e4, &why).await;
    }
}

/// Interleavings tried by [`interleaved_checkpoints_restore_exactly`].
const SEEDS: u64 = 40;

/// A tiny deterministic generator (xorshift64*), so every run explores the
/// same interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random checkpoint in flight for which `ready` holds.
fn pick(flights: &BTreeMap<u64, InFlight>, rng: &mut Rng, ready: impl Fn(&InFlight) -> bool) -> Option<u64> {
    let ids: Vec<u64> = flights.iter().filter(|(_, f)| ready(f)).map(|(id, _)| *id).collect();
    (!ids.is_empty()).then(|| ids[rng.below(ids.len())])
}

/// A checkpoint of the interleaving test.
struct InFlight {
    location: Arc<CheckpointLocation>,
    pending: Option<PendingSnapshot>,
    result: Option<SnapshotResult>,
    expected: BTreeMap<u64, String>,
}

/// Random interleavings of up to three checkpoints in flight: sync phase,
/// async phase, complete (any order), abort, and notifications that are
/// late, reordered or lost. A completion is refused only for a checkpoint
/// older than the newest completed one; every retained checkpoint stays
/// whole and restores exactly the state of its sync phase.
pub async fn interleaved_checkpoints_restore_exactly<F: BackendFactory>(ctx: Ctx<F>) {
    for seed in 1..=SEEDS {
        let retain = 1 + (seed as usize % 2);
        let why = format!("seed {seed}, retaining {retain}");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let storage = ctx.storage.storage(&crate::job_id("interleave"));
        let mut store = CheckpointStore::open(
            Arc::clone(&storage),
            CheckpointStoreConfig::default().with_max_retained(retain),
        )
        .await
        .unwrap();
        let mut job = Job::new(ctx.backend.build::<u64>(full_config()).unwrap());
        let mut flights: BTreeMap<u64, InFlight> = BTreeMap::new();
        let mut to_notify: Vec<u64> = Vec::new();
        let mut completed: BTreeMap<u64, (String, BTreeMap<u64, String>)> = BTreeMap::new();
        let mut next_id = 1;
        let mut log = Vec::new();
        for _ in 0..60 {
            match rng.below(5) {
                0 if flights.len() < 3 => {
                    let id = next_id;
                    next_id += 1;
                    let (location, pending, expected) = begin(&mut job, &mut store, id).await;
                    log.push(format!("snapshot {id}"));
                    flights.insert(
                        id,
                        InFlight {
                            location,
                            pending: Some(pending),
                            result: None,
                            expected,
                        },
                    );
                }
                1 => {
                    let Some(id) = pick(&flights, &mut rng, |f| f.pending.is_some()) else {
                        continue;
                    };
                    let f = flights.get_mut(&id).unwrap();
                    f.result = Some(f.pending.take().unwrap().await.unwrap());
                    log.push(format!("upload {id}"));
                }
                2 | 3 => {
                    let Some(id) = pick(&flights, &mut rng, |f| f.result.is_some()) else {
                        continue;
                    };
                    let f = flights.remove(&id).unwrap();
                    let newest = completed.keys().next_back().copied();
                    let abort = rng.below(6) == 0;
                    if !abort {
                        let result = f.result.as_ref().unwrap();
                        match store.complete(&f.location, metadata(id, result)).await {
                            Ok(c) => {
                                assert!(
                                    newest.is_none_or(|n| id > n),
                                    "{why}: {log:?}: {id} completed after {newest:?}"
                                );
                                log.push(format!("complete {id}"));
                                completed.insert(id, (c.pointer, f.expected));
                                to_notify.push(id);
                                assert_retained_whole(&store, &format!("{why}: {log:?}")).await;
                                continue;
                            }
                            Err(e) => {
                                assert!(
                                    e.kind() == ErrorKind::Conflict && newest.is_some_and(|n| id < n),
                                    "{why}: {log:?}: completing {id} failed: {e}"
                                );
                            }
                        }
                    }
                    log.push(format!("abort {id}"));
                    store.abort(&f.location, &[f.result.unwrap().handle]).await.unwrap();
                    job.backend.notify_checkpoint_aborted(id).unwrap();
                    assert_retained_whole(&store, &format!("{why}: {log:?}")).await;
                }
                4 if !to_notify.is_empty() => {
                    // Notifications arrive in any order, or are lost.
                    let id = to_notify.remove(rng.below(to_notify.len()));
                    if rng.below(4) != 0 {
                        job.backend.notify_checkpoint_complete(id).unwrap();
                        log.push(format!("notify {id}"));
                    } else {
                        log.push(format!("lose {id}"));
                    }
                }
                _ => {}
            }
        }
        let retained: Vec<u64> = store.retained().iter().map(|c| c.checkpoint_id).collect();
        for id in retained {
            let (pointer, expected) = &completed[&id];
            assert_restores(&ctx, &storage, pointer, expected, &format!("{why}: {log:?}")).await;
        }
    }
}

/// A checkpoint whose upload fails midway (the storage fails a write, as a
/// full disk would) leaves no file of its own behind once it is aborted,
/// and the next checkpoint succeeds and restores.
pub async fn failed_upload_leaves_nothing_behind<F: BackendFactory>(ctx: Ctx<F>) {
    let inner = ctx.storage.storage(&crate::job_id("failed-upload"));
    let (storage, plan) = crate::fault::failing(&inner);
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut job = Job::new(ctx.backend.build::<u64>(full_config()).unwrap());
    let (l1, p1, _) = begin(&mut job, &mut store, 1).await;
    let r1 = p1.await.unwrap();
    store.complete(&l1, metadata(1, &r1)).await.unwrap();
    job.backend.notify_checkpoint_complete(1).unwrap();
    let before: HashSet<String> = inner.list_files().await.unwrap().into_iter().map(|f| f.path).collect();

    // Count the storage operations of a whole checkpoint attempt, then
    // fail one in the middle of the next (once: the clean-up must work).
    plan.arm(u64::MAX, FaultMode::Transient);
    let (l2, p2, _) = begin(&mut job, &mut store, 2).await;
    let r2 = p2.await.unwrap();
    let ops = plan.ops();
    plan.disarm();
    store.abort(&l2, std::slice::from_ref(&r2.handle)).await.unwrap();
    job.backend.notify_checkpoint_aborted(2).unwrap();
    assert!(ops >= 2, "an attempt makes several storage operations ({ops})");

    plan.arm(ops / 2, FaultMode::Transient);
    let (l3, p3, _) = begin(&mut job, &mut store, 3).await;
    let failed = p3.await;
    assert_eq!(plan.fired(), 1, "the failure was injected: {:?}", plan.log());
    plan.disarm();
    assert!(failed.is_err(), "the injected failure fails the snapshot");
    store.abort(&l3, &[]).await.unwrap();
    job.backend.notify_checkpoint_aborted(3).unwrap();
    let after: HashSet<String> = inner.list_files().await.unwrap().into_iter().map(|f| f.path).collect();
    let left: Vec<&String> = after.difference(&before).collect();
    assert!(
        left.is_empty(),
        "files of the failed attempt were left behind: {left:?}"
    );

    let (l4, p4, e4) = begin(&mut job, &mut store, 4).await;
    let r4 = p4.await.unwrap();
    let c4 = store.complete(&l4, metadata(4, &r4)).await.unwrap();
    assert_restores(&ctx, &storage, &c4.pointer, &e4, "after the failed attempt").await;
}
