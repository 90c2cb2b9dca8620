//! Incremental checkpoint and local recovery contracts, for backends whose
//! capabilities say they have them: checkpoints upload only what the last
//! completed one does not hold, shared files go when no retained checkpoint
//! references them, and a restore takes a verified local copy instead of
//! reading storage.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::checkpoint::{HandleFile, OperatorState, StateReader, StreamStateHandle, SHARED_DIR};
use flowstate_api::lifecycle::{Completion, GcOptions};
use flowstate_api::*;

use crate::{full_config, restore_resolved, BackendFactory, Ctx, MAX_PARALLELISM, OPERATOR};

/// Keys written by these contracts.
const KEYS: u64 = 20_000;

fn register<B: KeyedStateBackend<Key = u64>>(b: &mut B) -> ValueState<Vec<u8>> {
    b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap()
}

/// Writes a 100-byte value of `fill` for every key of `keys`.
fn fill<B: KeyedStateBackend<Key = u64>>(b: &mut B, v: &ValueState<Vec<u8>>, keys: Range<u64>, fill: u8) {
    for k in keys {
        b.set_current_key(&k).unwrap();
        b.update(v, vec![fill; 100]).unwrap();
    }
}

/// Checks that `key` holds a value of `fill`.
fn check<B: KeyedStateBackend<Key = u64>>(b: &mut B, v: &ValueState<Vec<u8>>, key: u64, fill: u8, what: &str) {
    b.set_current_key(&key).unwrap();
    assert_eq!(b.value(v).unwrap(), Some(vec![fill; 100]), "{what}: key {key}");
}

fn metadata(id: u64, handle: KeyedStateHandle) -> CheckpointMetadata {
    CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![handle],
    ))
}

/// Checkpoint `id` of `b` through `store`, completed and notified.
async fn checkpoint<B: KeyedStateBackend>(
    b: &mut B,
    store: &mut CheckpointStore,
    id: u64,
) -> (SnapshotResult, Completion) {
    let location = store.begin_checkpoint(id).await.unwrap();
    let result = b
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    let c = store
        .complete(&location, metadata(id, result.handle.clone()))
        .await
        .unwrap();
    b.notify_checkpoint_complete(id).unwrap();
    (result, c)
}

/// The shared files of an incremental checkpoint's handle.
fn shared_files(h: &KeyedStateHandle) -> Vec<HandleFile> {
    match h {
        KeyedStateHandle::Incremental(h) => h.shared.clone(),
        other => panic!("a checkpoint of a backend with incremental checkpoints is not incremental: {other:?}"),
    }
}

/// A checkpoint whose state changed by 1% uploads a small part of its full
/// size and reuses shared files of the one before; the uploads of an
/// aborted checkpoint (deleted by its abort) are never reused, nor is
/// anything of a savepoint, which is canonical. Garbage collection then
/// finds nothing unreferenced, and the latest checkpoint restores.
pub async fn incremental_checkpoints_upload_only_new_files<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("incremental"));
    let mut store = CheckpointStore::open(
        Arc::clone(&storage),
        CheckpointStoreConfig::default().with_max_retained(2),
    )
    .await
    .unwrap();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = register(&mut b);
    fill(&mut b, &v, 0..KEYS, 1);
    let (first, _) = checkpoint(&mut b, &mut store, 1).await;
    assert_eq!(first.stats.bytes_written, first.stats.full_size);
    // 1% of the keys change.
    fill(&mut b, &v, 0..KEYS / 100, 2);
    let (second, _) = checkpoint(&mut b, &mut store, 2).await;
    assert!(
        second.stats.bytes_written * 5 < second.stats.full_size,
        "incremental wrote {} of {}",
        second.stats.bytes_written,
        second.stats.full_size
    );
    let reused: Vec<_> = shared_files(&second.handle)
        .into_iter()
        .filter(|f| shared_files(&first.handle).contains(f))
        .collect();
    assert!(!reused.is_empty(), "no shared file of checkpoint 1 was reused");
    // An aborted checkpoint's uploads are never reused, nor is a savepoint.
    fill(&mut b, &v, 0..KEYS / 100, 3);
    let location = store.begin_checkpoint(3).await.unwrap();
    let aborted = b
        .snapshot(3, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    store
        .abort(&location, std::slice::from_ref(&aborted.handle))
        .await
        .unwrap();
    b.notify_checkpoint_aborted(3).unwrap();
    let sp = store.begin_savepoint(4, None).await.unwrap();
    let savepoint = b
        .snapshot(4, Arc::clone(&sp), SnapshotOptions::savepoint())
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(savepoint.handle, KeyedStateHandle::KeyGroups(_)),
        "savepoints are canonical"
    );
    let (fifth, _) = checkpoint(&mut b, &mut store, 5).await;
    for f in shared_files(&fifth.handle)
        .into_iter()
        .filter(|f| f.stream.file_path().is_some())
    {
        assert!(
            !shared_files(&aborted.handle).iter().any(|a| a.stream == f.stream)
                || shared_files(&second.handle).iter().any(|a| a.stream == f.stream),
            "checkpoint 5 reuses {} uploaded by the aborted checkpoint 3 (and deleted by its abort)",
            f.name
        );
    }
    // Everything referenced exists; nothing unreferenced is left.
    let gc = store.collect_garbage(&GcOptions::new(Duration::ZERO)).await.unwrap();
    assert!(gc.orphans.is_empty(), "{:?}", gc.orphans);
    let resolved = storage.resolve(&store.latest().unwrap().pointer).await.unwrap();
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let v = register(&mut r);
    for k in [0, KEYS / 100 - 1, KEYS / 100, KEYS - 1] {
        let want = if k < KEYS / 100 { 3 } else { 1 };
        check(&mut r, &v, k, want, "checkpoint 5");
    }
}

/// A shared file of checkpoint 1 is deleted exactly when no retained
/// checkpoint references it any more (after a compaction replaced the
/// files of earlier checkpoints), and every shared file left in storage is
/// referenced.
pub async fn shared_files_are_deleted_when_no_retained_checkpoint_uses_them<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("shared-files"));
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = register(&mut b);
    let mut first_shared = Vec::new();
    for id in 1..=4 {
        fill(&mut b, &v, (id - 1) * 5000..id * 5000, id as u8);
        if id == 3 {
            // Compaction replaces the files of earlier checkpoints.
            b.compact().unwrap();
        }
        let (r, _) = checkpoint(&mut b, &mut store, id).await;
        if id == 1 {
            first_shared = shared_files(&r.handle);
        }
    }
    let latest: Vec<String> = store.latest().unwrap().files().to_vec();
    for f in &first_shared {
        let path = f.stream.file_path().unwrap();
        let present = storage.read_file(path).await.is_ok();
        assert_eq!(present, latest.iter().any(|p| p == path), "{path}");
    }
    let files = storage.list_files().await.unwrap();
    for f in files.iter().filter(|f| f.path.starts_with(&format!("{SHARED_DIR}/"))) {
        assert!(store.registry().references(&f.path) > 0, "unreferenced {}", f.path);
    }
}

/// A checkpoint restored without claim lends a new job nothing: the first
/// checkpoint after the restore references none of its files (the store
/// would refuse it), because the store's no-claim decision reaches the
/// backend through its reader (`StateReader::claimed`), whatever the
/// backend's own options say; after it, checkpoints are incremental again.
pub async fn no_claim_restore_shares_nothing_with_the_next_checkpoint<F: BackendFactory>(ctx: Ctx<F>) {
    let old = ctx.storage.storage(&crate::job_id("no-claim-share-old"));
    let mut old_store = CheckpointStore::open(Arc::clone(&old), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = register(&mut b);
    fill(&mut b, &v, 0..KEYS, 1);
    let (_, c) = checkpoint(&mut b, &mut old_store, 1).await;
    drop(b);
    let restored_files = old_store.latest().unwrap().files().to_vec();
    assert!(
        restored_files.iter().any(|f| f.starts_with(&format!("{SHARED_DIR}/"))),
        "the state is large enough for shared files: {restored_files:?}"
    );

    let storage = ctx.storage.storage(&crate::job_id("no-claim-share-new"));
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let resolved = store.restore(&c.pointer, RestoreMode::NoClaim).await.unwrap();
    assert!(!resolved.reader.claimed(), "a no-claim restore's reader says so");
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let v = register(&mut r);
    fill(&mut r, &v, 0..KEYS / 100, 2);
    let (second, _) = checkpoint(&mut r, &mut store, 2).await;
    for f in shared_files(&second.handle) {
        if let Some(path) = f.stream.file_path() {
            assert!(
                !restored_files.iter().any(|p| p == path),
                "checkpoint 2 shares {path} of the checkpoint restored without claim"
            );
        }
    }
    fill(&mut r, &v, 0..KEYS / 100, 3);
    let (third, _) = checkpoint(&mut r, &mut store, 3).await;
    assert!(
        third.stats.bytes_written * 5 < third.stats.full_size,
        "after the first, checkpoints are incremental again: wrote {} of {}",
        third.stats.bytes_written,
        third.stats.full_size
    );
    let resolved = storage.resolve(&store.latest().unwrap().pointer).await.unwrap();
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let v = register(&mut r);
    check(&mut r, &v, 0, 3, "checkpoint 3");
    check(&mut r, &v, KEYS - 1, 1, "checkpoint 3");
}

/// Counts what a restore takes from storage of some streams (the state
/// files of a checkpoint): bytes read, and bytes of files handed out as
/// local paths to link.
#[derive(Debug)]
struct CountingReader {
    inner: Arc<dyn StateReader>,
    watched: Vec<StreamStateHandle>,
    taken: Mutex<u64>,
}

impl CountingReader {
    fn new(inner: Arc<dyn StateReader>, handles: &[KeyedStateHandle]) -> Self {
        let watched = handles
            .iter()
            .filter_map(|h| match h {
                KeyedStateHandle::Incremental(h) => Some(h),
                _ => None,
            })
            .flat_map(|h| h.shared.iter().chain(&h.private).map(|f| f.stream.clone()))
            .collect();
        CountingReader {
            inner,
            watched,
            taken: Mutex::new(0),
        }
    }

    fn count(&self, handle: &StreamStateHandle, bytes: u64) {
        if self.watched.contains(handle) {
            *self.taken.lock().unwrap() += bytes;
        }
    }

    fn taken(&self) -> u64 {
        *self.taken.lock().unwrap()
    }
}

#[async_trait]
impl StateReader for CountingReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
        let data = self.inner.read(handle).await?;
        self.count(handle, data.len() as u64);
        Ok(data)
    }

    async fn read_ranges(&self, handle: &StreamStateHandle, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let parts = self.inner.read_ranges(handle, ranges).await?;
        self.count(handle, parts.iter().map(|p| p.len() as u64).sum());
        Ok(parts)
    }

    async fn local_path(&self, handle: &StreamStateHandle) -> Option<std::path::PathBuf> {
        let path = self.inner.local_path(handle).await?;
        self.count(handle, handle.size());
        Some(path)
    }

    fn claimed(&self) -> bool {
        self.inner.claimed()
    }
}

/// Restores checkpoint `pointer` at every key group; returns the backend
/// and how many bytes of the checkpoint's state files it took from storage.
async fn restore_counting<F: BackendFactory>(
    ctx: &Ctx<F>,
    storage: &CheckpointStorage,
    pointer: &str,
) -> (F::Backend<u64>, u64) {
    let resolved = storage.resolve(pointer).await.unwrap();
    let handles = resolved.metadata.operator(OPERATOR).unwrap().keyed.clone();
    let reader = Arc::new(CountingReader::new(Arc::clone(&resolved.reader), &handles));
    let r = ctx
        .backend
        .restore(full_config::<u64>(), &handles, reader.clone())
        .await
        .unwrap();
    (r, reader.taken())
}

/// With local recovery, a backend restored at the same key groups from
/// the newest checkpoint it completed takes the state files from its local
/// copy (nothing from storage); the copy of checkpoint 1 went when
/// checkpoint 2 completed, so restoring checkpoint 1 downloads its files.
/// Both restore their own state.
pub async fn local_recovery_uses_a_verified_copy_and_falls_back_to_download<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("local-recovery"));
    let mut store = CheckpointStore::open(
        Arc::clone(&storage),
        CheckpointStoreConfig::default().with_max_retained(2),
    )
    .await
    .unwrap();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = register(&mut b);
    fill(&mut b, &v, 0..KEYS, 1);
    let (_, first) = checkpoint(&mut b, &mut store, 1).await;
    fill(&mut b, &v, 0..10, 2);
    let (_, second) = checkpoint(&mut b, &mut store, 2).await;
    drop(b);

    let (mut r, taken) = restore_counting(&ctx, &storage, &second.pointer).await;
    let v = register(&mut r);
    check(&mut r, &v, 5, 2, "checkpoint 2");
    check(&mut r, &v, 500, 1, "checkpoint 2");
    assert_eq!(
        taken, 0,
        "restoring checkpoint 2 took {taken} bytes of state files from storage, not its local copy"
    );
    drop(r);

    let (mut r, taken) = restore_counting(&ctx, &storage, &first.pointer).await;
    let v = register(&mut r);
    check(&mut r, &v, 5, 1, "checkpoint 1");
    check(&mut r, &v, 500, 1, "checkpoint 1");
    assert!(
        taken > 0,
        "checkpoint 1 restored without its state files from storage, though its local copy is gone"
    );
}
