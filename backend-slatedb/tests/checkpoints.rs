//! Checkpoints reference SlateDB checkpoints, restores clone them (in
//! memory, on a local filesystem and on the S3-compatible server), and
//! rescaled restores clone several of them projected to the new key
//! groups; released and damaged references are clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use flowstate_api::checkpoint::{KeyedStateHandle, NativeFormat, StreamStateHandle};
use flowstate_api::ttl::{Clock, ManualClock};
use flowstate_api::*;
use flowstate_slatedb::SlateDbBackend;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;

const KEYS: u64 = 40;

async fn restore(
    store: &Arc<dyn ObjectStore>,
    range: KeyGroupRange,
    clock: &Arc<ManualClock>,
    handles: &[KeyedStateHandle],
) -> Result<Arc<SlateDbBackend<u64>>> {
    let backend = SlateDbBackend::restore(options(store), config(range, clock), handles, reader()).await?;
    Ok(Arc::new(backend))
}

fn sst_objects(objects: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    objects
        .iter()
        .filter(|(p, _)| p.ends_with(".sst"))
        .map(|(p, s)| (p.clone(), *s))
        .collect()
}

async fn restore_gives_exactly_the_checkpointed_state(store: Arc<dyn ObjectStore>) {
    let clock = ManualClock::new(10_000);
    let clock_h = ManualClock::new(10_000);
    let backend = slate(Arc::clone(&store), BASE, all(), &clock).await;
    let heap = heap(all(), &clock_h);
    let (s, sh) = (register(&*backend), register(&*heap));
    let (log, log_h) = (Log::default(), Log::default());
    let (mut wm, mut wm_h) = (0, 0);
    run(&backend, &s, 11, 400, KEYS, &clock, &log, &mut wm).await;
    run(&heap, &sh, 11, 400, KEYS, &clock_h, &log_h, &mut wm_h).await;

    let handle = checkpoint(&*backend, 1).await;
    let KeyedStateHandle::Incremental(h) = &handle else {
        panic!("{handle:?}")
    };
    assert_eq!(h.format, NativeFormat::SlateDb);
    assert_eq!(h.backend_id, backend.uuid());
    assert!(matches!(h.meta, StreamStateHandle::Inline(_)), "{:?}", h.meta);
    assert_eq!(handle.file_paths().count(), 0, "a checkpoint has no files of its own");
    let at_checkpoint = dump(&backend, &s, KEYS).await;
    assert_eq!(at_checkpoint, dump(&heap, &sh, KEYS).await);

    // Writes after the checkpoint change the state, not the checkpoint.
    run(&backend, &s, 12, 400, KEYS, &clock, &log, &mut wm).await;
    assert_ne!(dump(&backend, &s, KEYS).await, at_checkpoint);

    // Restored at the checkpoint's time (TTL), as the heap backend is.
    let clock_r = ManualClock::new(clock_h.now_millis());
    let restored = restore(&store, all(), &clock_r, std::slice::from_ref(&handle))
        .await
        .unwrap();
    assert_ne!(restored.path(), backend.path());
    let sr = register(&*restored);
    assert_eq!(dump(&restored, &sr, KEYS).await, at_checkpoint);
    // The restored backend goes on as the heap backend does.
    let (log_r, log_h) = (Log::default(), Log::default());
    let mut wm_r = wm_h;
    run(&restored, &sr, 13, 300, KEYS, &clock_r, &log_r, &mut wm_r).await;
    run(&heap, &sh, 13, 300, KEYS, &clock_h, &log_h, &mut wm_h).await;
    assert_eq!(*log_r.lock().unwrap(), *log_h.lock().unwrap());
    assert_eq!(dump(&restored, &sr, KEYS).await, dump(&heap, &sh, KEYS).await);
    assert_eq!(timers(&restored, &sr).await, timers(&heap, &sh).await);
    backend.close().await.unwrap();
    restored.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_gives_exactly_the_checkpointed_state_in_memory() {
    restore_gives_exactly_the_checkpointed_state(Arc::new(InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_gives_exactly_the_checkpointed_state_on_a_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    restore_gives_exactly_the_checkpointed_state(Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap())).await;
}

/// What a checkpoint and a restore write to the object store: the
/// checkpoint, SlateDB's flush of the memtable (SST files) and manifests;
/// a checkpoint with nothing new, manifests only; a restore, manifests only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_gives_exactly_the_checkpointed_state_on_the_s3_server() {
    if let Some(store) = s3_server() {
        restore_gives_exactly_the_checkpointed_state(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_restores_upload_no_state_of_their_own() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let clock = ManualClock::new(10_000);
    // Large L0 files: the memtable is flushed only by checkpoints.
    let backend = Arc::new(
        SlateDbBackend::open(options(&store).with_l0_sst_size(64 << 20), config(all(), &clock))
            .await
            .unwrap(),
    );
    let s = register(&*backend);
    let (log, mut wm) = (Log::default(), 0);
    run(&backend, &s, 21, 400, KEYS, &clock, &log, &mut wm).await;

    let before = objects(&store, "").await;
    let handle = checkpoint(&*backend, 1).await;
    let after_first = objects(&store, "").await;
    let new: BTreeMap<_, _> = after_first.iter().filter(|(p, _)| !before.contains_key(*p)).collect();
    assert!(
        new.keys().all(|p| p.starts_with(&format!("{}/", backend.path()))),
        "{new:?}"
    );
    let new_ssts = sst_objects(&after_first).len() - sst_objects(&before).len();
    let sst_bytes: u64 = sst_objects(&after_first).values().sum::<u64>() - sst_objects(&before).values().sum::<u64>();
    assert!(new_ssts >= 1, "the checkpoint flushes the memtable: {new:?}");
    let meta = handle.state_size();
    eprintln!(
        "checkpoint 1: {} new objects, {new_ssts} SST files ({sst_bytes} bytes), {} other bytes; handle metadata {meta} \
         bytes inline",
        new.len(),
        new.values().copied().sum::<u64>() - sst_bytes,
    );

    // Nothing new: no SST file, only manifests.
    let _ = checkpoint(&*backend, 2).await;
    let after_second = objects(&store, "").await;
    let new: Vec<_> = after_second.keys().filter(|p| !after_first.contains_key(*p)).collect();
    assert!(new.iter().all(|p| !p.ends_with(".sst")), "{new:?}");
    eprintln!("checkpoint 2 (nothing written since 1): new objects {new:?}");

    // Released (as a checkpoint store does once it no longer retains
    // checkpoint 1), checkpoint 1 cannot be restored; releasing it again
    // is no error.
    let KeyedStateHandle::Incremental(h1) = &handle else {
        panic!("{handle:?}")
    };
    let release = options(&store).release();
    release.release(h1).await.unwrap();
    release.release(h1).await.unwrap();
    let e = restore(&store, all(), &clock, std::slice::from_ref(&handle))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A restore writes manifests of the clone and nothing else.
    let handle2 = checkpoint(&*backend, 3).await;
    let before_restore = objects(&store, "").await;
    let restored = restore(&store, all(), &clock, std::slice::from_ref(&handle2))
        .await
        .unwrap();
    let after_restore = objects(&store, "").await;
    let new: Vec<_> = after_restore
        .iter()
        .filter(|(p, _)| !before_restore.contains_key(*p))
        .collect();
    // The new writer's fence (an empty WAL file) is the only SST file;
    // the source gets a manifest pinning the clone's files.
    assert!(
        new.iter()
            .all(|(p, size)| !p.ends_with(".sst") || (p.contains("/wal/") && **size == 0)),
        "{new:?}"
    );
    assert!(
        new.iter()
            .any(|(p, _)| p.starts_with(&format!("{}/manifest/", backend.path()))),
        "{new:?}"
    );
    eprintln!("restore: new objects {new:?}");
    let sr = register(&*restored);
    assert_eq!(dump(&restored, &sr, KEYS).await, dump(&backend, &s, KEYS).await);
    backend.close().await.unwrap();
    restored.close().await.unwrap();
}
