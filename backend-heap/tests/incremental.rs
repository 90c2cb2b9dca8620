//! The heap backend's incremental checkpoints, case by case: what a delta
//! holds, how long chains grow, and overlapping checkpoints whose bases
//! change under them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::checkpoint::{
    CheckpointLocation, IncrementalStateHandle, InlineReader, MemoryBlobStore, NativeFormat, OperatorState,
    StreamStateHandle,
};
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

/// A small chain (a base and a delta) of every storage kind, as a handle
/// whose streams are all inline.
async fn small_chain() -> IncrementalStateHandle {
    let storage = CheckpointStorage::in_memory("corruption");
    let mut b = HeapBackend::with_options(config(), HeapOptions::incremental()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    let m = b.register(MapStateDescriptor::<u64, u64>::new("m")).unwrap();
    let t = b.register(TimerServiceDescriptor::event_time("t")).unwrap();
    for round in 0..2u64 {
        for k in 0..3u64 {
            b.set_current_key(&k).unwrap();
            b.update(&v, k + round).unwrap();
            b.append(&l, k).unwrap();
            b.map_put(&m, k + round, k).unwrap();
            t.register(&mut b, (k + round) as i64, &VoidNamespace).unwrap();
        }
        let location = storage.init_checkpoint(round + 1).await.unwrap();
        let r = b
            .snapshot(round + 1, location, SnapshotOptions::checkpoint())
            .unwrap()
            .await
            .unwrap();
        b.notify_checkpoint_complete(round + 1).unwrap();
        if round == 1 {
            let KeyedStateHandle::Incremental(h) = r.handle else {
                panic!("not a chain")
            };
            assert_eq!(h.shared.len(), 2, "a base and a delta");
            return h;
        }
    }
    unreachable!()
}

async fn restore_chain(h: &IncrementalStateHandle) -> Result<HeapBackend<u64>> {
    HeapBackend::restore_with_options(
        config(),
        HeapOptions::incremental(),
        &[KeyedStateHandle::Incremental(h.clone())],
        &InlineReader,
    )
    .await
}

fn inline_bytes(s: &StreamStateHandle) -> Vec<u8> {
    match s {
        StreamStateHandle::Inline(b) => b.to_vec(),
        other => panic!("not inline: {other:?}"),
    }
}

/// Every single-byte flip and every truncation of a chain file or of the
/// chain's metadata is refused as corrupted, naming the checkpoint.
#[tokio::test]
async fn every_byte_flip_and_truncation_of_a_chain_is_refused() {
    let h = small_chain().await;
    // The intact chain restores (the checks below are not vacuous).
    let mut r = restore_chain(&h).await.unwrap();
    let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    assert_eq!(r.entry_count(&v).unwrap(), 3);
    // Stream 0 and 1: the chain files; 2: the metadata.
    for which in 0..3 {
        let original = if which < 2 {
            inline_bytes(&h.shared[which].stream)
        } else {
            inline_bytes(&h.meta)
        };
        let with = |bytes: Vec<u8>| {
            let mut bad = h.clone();
            let stream = StreamStateHandle::Inline(Bytes::from(bytes));
            if which < 2 {
                bad.shared[which].stream = stream;
            } else {
                bad.meta = stream;
            }
            bad
        };
        for i in 0..original.len() {
            for mask in [0x01u8, 0xff] {
                let mut bytes = original.clone();
                bytes[i] ^= mask;
                let err = restore_chain(&with(bytes)).await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    ErrorKind::Corrupted,
                    "stream {which}, byte {i} ^ {mask:#x}: {err}"
                );
                assert!(err.to_string().contains("heap checkpoint 2"), "{err}");
            }
        }
        for len in 0..original.len() {
            let err = restore_chain(&with(original[..len].to_vec())).await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Corrupted,
                "stream {which} truncated to {len}: {err}"
            );
        }
    }
}

/// The RocksDB format is refused by the heap backend as incompatible,
/// naming what it is; a heap chain restores only into the heap backend.
#[tokio::test]
async fn a_native_rocksdb_handle_is_incompatible() {
    let mut h = small_chain().await;
    h.format = NativeFormat::RocksDb;
    let err = restore_chain(&h).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    assert!(err.to_string().contains("RocksDB"), "{err}");
}

/// `verify_chain` (what `flowstate inspect --verify` runs) accepts an intact
/// chain and finds a flipped byte in any frame the chain references.
#[tokio::test]
async fn verify_chain_checks_every_referenced_frame() {
    let h = small_chain().await;
    flowstate_heap::verify_chain(&h, &InlineReader).await.unwrap();
    for which in 0..2 {
        let original = inline_bytes(&h.shared[which].stream);
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x01;
            let mut bad = h.clone();
            bad.shared[which].stream = StreamStateHandle::Inline(Bytes::from(bytes));
            let err = flowstate_heap::verify_chain(&bad, &InlineReader).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupted, "file {which}, byte {i}: {err}");
            assert!(err.to_string().contains("key group"), "{err}");
        }
    }
}
