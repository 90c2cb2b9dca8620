//! The heap backend's incremental checkpoints, case by case: what a delta
//! holds, how long chains grow, and overlapping checkpoints whose bases
//! change under them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flowstate_api::checkpoint::{CheckpointLocation, MemoryBlobStore, OperatorState};
use flowstate_api::*;
use flowstate_heap::{HeapBackend, HeapBackendFactory, HeapOptions};

const MAX_PARALLELISM: u32 = 128;

fn config() -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(KeyGroupRange::all(MAX_PARALLELISM).unwrap(), MAX_PARALLELISM)
}

fn metadata(id: u64, handle: KeyedStateHandle) -> CheckpointMetadata {
    CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        MAX_PARALLELISM,
        vec![handle],
    ))
}

struct Job {
    storage: Arc<CheckpointStorage>,
    store: CheckpointStore,
}

impl Job {
    async fn new(retain: usize) -> Job {
        // Files in a blob store in memory (the storage `in_memory` gives
        // keeps all state inline in the metadata instead).
        let blobs = Arc::new(MemoryBlobStore::new("memory://incremental"));
        let storage = Arc::new(CheckpointStorage::new(blobs, "job").unwrap());
        let store = CheckpointStore::open(
            Arc::clone(&storage),
            CheckpointStoreConfig::default().with_max_retained(retain),
        )
        .await
        .unwrap();
        Job { storage, store }
    }

    /// The sync and async phases of checkpoint `id`.
    async fn take(&mut self, b: &mut HeapBackend<u64>, id: u64) -> (Arc<CheckpointLocation>, SnapshotResult) {
        let location = self.store.begin_checkpoint(id).await.unwrap();
        let result = b
            .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
            .unwrap()
            .await
            .unwrap();
        (location, result)
    }

    async fn complete(&mut self, location: &Arc<CheckpointLocation>, result: &SnapshotResult) {
        let id = location.checkpoint_id();
        self.store
            .complete(location, metadata(id, result.handle.clone()))
            .await
            .unwrap();
    }

    /// Restores checkpoint `id` and reads `key`.
    async fn read(&self, id: u64, key: u64) -> Option<Vec<u8>> {
        let resolved = self
            .storage
            .resolve(&self.storage.checkpoint_pointer(id))
            .await
            .unwrap();
        let handles = resolved.metadata.operators[0].keyed.clone();
        let mut r = HeapBackendFactory::incremental()
            .restore(config(), &handles, Arc::clone(&resolved.reader))
            .await
            .unwrap_or_else(|e| panic!("checkpoint {id}: {e}"));
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        r.set_current_key(&key).unwrap();
        r.value(&v).unwrap()
    }
}

fn backend() -> (HeapBackend<u64>, ValueState<Vec<u8>>) {
    let mut b = HeapBackend::with_options(config(), HeapOptions::incremental()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    (b, v)
}

fn put(b: &mut HeapBackend<u64>, v: &ValueState<Vec<u8>>, key: u64, fill: u8) {
    b.set_current_key(&key).unwrap();
    b.update(v, vec![fill; 100]).unwrap();
}

/// A checkpoint taken while another one that may subsume its base is not
/// yet confirmed: checkpoint 3 was planned on checkpoint 1, and completes
/// (subsuming 2, one retained) before its notification arrives; checkpoint
/// 4, planned on 2, must not reference anything only 2 held, or the store
/// would refuse it (or a restore would miss files).
#[tokio::test]
async fn a_checkpoint_never_builds_on_files_an_overlapping_one_may_subsume() {
    let mut job = Job::new(1).await;
    let (mut b, v) = backend();
    for k in 0..1000 {
        put(&mut b, &v, k, 1);
    }
    let (l1, r1) = job.take(&mut b, 1).await;
    job.complete(&l1, &r1).await;
    b.notify_checkpoint_complete(1).unwrap();
    // Deltas large enough to be files, not inline state.
    for k in 0..500 {
        put(&mut b, &v, k, 2);
    }
    let (l2, r2) = job.take(&mut b, 2).await;
    put(&mut b, &v, 7, 3);
    let (l3, r3) = job.take(&mut b, 3).await;
    job.complete(&l2, &r2).await;
    b.notify_checkpoint_complete(2).unwrap();
    job.complete(&l3, &r3).await;
    put(&mut b, &v, 8, 4);
    let (l4, r4) = job.take(&mut b, 4).await;
    job.complete(&l4, &r4).await;
    assert_eq!(job.read(4, 7).await, Some(vec![3; 100]));
    assert_eq!(job.read(4, 8).await, Some(vec![4; 100]));
    assert_eq!(job.read(4, 9).await, Some(vec![2; 100]));
}

/// A key deleted after the base stays deleted in a restore of the chain.
#[tokio::test]
async fn a_deleted_key_stays_deleted() {
    let mut job = Job::new(1).await;
    let (mut b, v) = backend();
    for k in 0..100 {
        put(&mut b, &v, k, 1);
    }
    let (l, r) = job.take(&mut b, 1).await;
    job.complete(&l, &r).await;
    b.notify_checkpoint_complete(1).unwrap();
    b.set_current_key(&5).unwrap();
    b.clear(&v).unwrap();
    let (l, r) = job.take(&mut b, 2).await;
    job.complete(&l, &r).await;
    b.notify_checkpoint_complete(2).unwrap();
    assert_eq!(job.read(2, 5).await, None);
    assert_eq!(job.read(2, 6).await, Some(vec![1; 100]));
}

/// A checkpoint after 1% of the keys changed writes at most 1.2× the bytes
/// of the changed entries (key, value and record framing), and a chain
/// never holds more deltas than its bound allows.
#[tokio::test]
async fn a_delta_holds_the_changed_entries_and_chains_stay_bounded() {
    let mut job = Job::new(1).await;
    let (mut b, v) = backend();
    const KEYS: u64 = 100_000;
    for k in 0..KEYS {
        put(&mut b, &v, k, 1);
    }
    let (l, r) = job.take(&mut b, 1).await;
    job.complete(&l, &r).await;
    b.notify_checkpoint_complete(1).unwrap();
    let full = r.stats.bytes_written;
    for id in 2..=30u64 {
        let changed = KEYS / 100;
        for k in (0..changed).map(|i| (i * 7919 + id * 104_729) % KEYS) {
            put(&mut b, &v, k, id as u8);
        }
        let (l, r) = job.take(&mut b, id).await;
        job.complete(&l, &r).await;
        b.notify_checkpoint_complete(id).unwrap();
        // A changed entry: its 8-byte key and 100-byte value.
        let entries = changed * (8 + 100);
        if id <= 5 {
            assert!(
                r.stats.bytes_written * 10 <= entries * 12,
                "checkpoint {id} wrote {} bytes for {entries} bytes of changed entries",
                r.stats.bytes_written
            );
        }
        assert!(
            r.stats.bytes_written < full,
            "checkpoint {id} wrote as much as a full one"
        );
        // Bound: every key group's deltas stay within its base's size, so
        // the chain's files hold at most about twice the state.
        let KeyedStateHandle::Incremental(h) = &r.handle else {
            panic!("not incremental")
        };
        let held: u64 = h.shared.iter().map(|f| f.stream.size()).sum();
        assert!(
            held <= 3 * full,
            "checkpoint {id} references {held} bytes for {full} of state"
        );
    }
    assert_eq!(job.read(30, 0).await.map(|v| v.len()), Some(100));
}
