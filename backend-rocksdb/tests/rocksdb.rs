//! RocksDB-specific behaviour: incremental uploads, the lifecycle of shared
//! files, local recovery, and the TTL compaction filter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use flowstate_api::*;
use flowstate_fs::FsCheckpointStorage;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

const KEYS: u64 = 20_000;

fn config() -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128)
}

fn fill(b: &mut RocksDbBackend<u64>, v: &ValueState<Vec<u8>>, keys: impl Iterator<Item = u64>, fill: u8) {
    for k in keys {
        b.set_current_key(&k).unwrap();
        b.update(v, vec![fill; 100]).unwrap();
    }
}

fn metadata(id: u64, handle: KeyedStateHandle) -> CheckpointMetadata {
    CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        128,
        vec![handle],
    ))
}

async fn checkpoint(b: &mut RocksDbBackend<u64>, store: &mut CheckpointStore, id: u64) -> (SnapshotResult, Completion) {
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

fn shared_files(h: &KeyedStateHandle) -> Vec<HandleFile> {
    match h {
        KeyedStateHandle::Incremental(h) => h.shared.clone(),
        other => panic!("not incremental: {other:?}"),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    storage: Arc<dyn CheckpointStorage>,
    options: RocksDbOptions,
}

fn setup(local_recovery: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(FsCheckpointStorage::open(dir.path().join("checkpoints"), "job").unwrap());
    let mut options = RocksDbOptions::new(dir.path().join("work"));
    if local_recovery {
        options = options.with_local_recovery(vec![dir.path().join("local")], "job/op-0");
    }
    Setup {
        _dir: dir,
        storage,
        options,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_checkpoints_upload_only_new_files() {
    let s = setup(false);
    let mut store = CheckpointStore::open(
        Arc::clone(&s.storage),
        CheckpointStoreConfig::default().with_max_retained(2),
    )
    .await
    .unwrap();
    let mut b = RocksDbBackend::new(config(), s.options.clone()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
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
    assert!(!reused.is_empty(), "no SST file of checkpoint 1 was reused");
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
    let sp = store
        .begin_savepoint(4, Some(s._dir.path().join("sp").to_str().unwrap()))
        .await
        .unwrap();
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
    let resolved = s.storage.resolve(&store.latest().unwrap().pointer).await.unwrap();
    let handles = resolved.metadata.operators[0].keyed.clone();
    let mut r = RocksDbBackend::restore(config(), &handles, &*resolved.reader, s.options.clone())
        .await
        .unwrap();
    let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    for k in [0, KEYS / 100 - 1, KEYS / 100, KEYS - 1] {
        r.set_current_key(&k).unwrap();
        let want = if k < KEYS / 100 { 3 } else { 1 };
        assert_eq!(r.value(&v).unwrap(), Some(vec![want; 100]), "key {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_files_are_deleted_when_no_retained_checkpoint_uses_them() {
    let s = setup(false);
    let mut store = CheckpointStore::open(Arc::clone(&s.storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = RocksDbBackend::new(config(), s.options.clone()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    let mut first_shared = Vec::new();
    for id in 1..=4 {
        fill(&mut b, &v, (id - 1) * 5000..id * 5000, id as u8);
        if id == 3 {
            // Compaction replaces the SST files of earlier checkpoints.
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
        let present = s.storage.read_file(path).await.is_ok();
        assert_eq!(present, latest.iter().any(|p| p == path), "{path}");
    }
    let files = s.storage.list_files().await.unwrap();
    for f in files.iter().filter(|f| f.path.starts_with("shared/")) {
        assert!(store.registry().references(&f.path) > 0, "unreferenced {}", f.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_recovery_uses_a_verified_copy_and_falls_back_to_download() {
    let s = setup(true);
    let mut store = CheckpointStore::open(Arc::clone(&s.storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = RocksDbBackend::new(config(), s.options.clone()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    fill(&mut b, &v, 0..KEYS, 1);
    checkpoint(&mut b, &mut store, 1).await;
    fill(&mut b, &v, 0..10, 2);
    checkpoint(&mut b, &mut store, 2).await;
    let local = s.options.local_recovery.clone().unwrap().dirs[0].join("job/op-0");
    let copies: Vec<String> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        copies,
        ["chk-2"],
        "the local copy of subsumed checkpoint 1 must be gone"
    );
    drop(b);

    let restore = || async {
        let resolved = s.storage.latest_checkpoint().await.unwrap().unwrap();
        let handles = resolved.metadata.operators[0].keyed.clone();
        let mut r = RocksDbBackend::restore(config(), &handles, &*resolved.reader, s.options.clone())
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        r.set_current_key(&5).unwrap();
        assert_eq!(r.value(&v).unwrap(), Some(vec![2; 100]));
        r.set_current_key(&500).unwrap();
        assert_eq!(r.value(&v).unwrap(), Some(vec![1; 100]));
        r.restore_stats()
    };
    let stats = restore().await;
    assert!(stats.from_local_copy, "{stats:?}");
    assert_eq!(stats.downloaded_bytes, 0);

    // A damaged local copy is not used.
    let sst = std::fs::read_dir(local.join("chk-2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap();
    let mut data = std::fs::read(&sst).unwrap();
    data[10] ^= 0xff;
    std::fs::remove_file(&sst).unwrap();
    std::fs::write(&sst, data).unwrap();
    let stats = restore().await;
    assert!(!stats.from_local_copy, "{stats:?}");
    assert!(stats.downloaded_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_copies_on_another_device_are_copied() {
    let shm = std::path::Path::new("/dev/shm");
    let work = tempfile::tempdir().unwrap();
    let other = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(FsCheckpointStorage::open(work.path().join("checkpoints"), "job").unwrap());
    let options =
        RocksDbOptions::new(work.path().join("work")).with_local_recovery(vec![other.path().to_path_buf()], "op-0");
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = RocksDbBackend::new(config(), options.clone()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    fill(&mut b, &v, 0..1000, 7);
    checkpoint(&mut b, &mut store, 1).await;
    drop(b);
    let resolved = storage.latest_checkpoint().await.unwrap().unwrap();
    let handles = resolved.metadata.operators[0].keyed.clone();
    let mut r = RocksDbBackend::restore(config(), &handles, &*resolved.reader, options)
        .await
        .unwrap();
    assert!(r.restore_stats().from_local_copy);
    let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    r.set_current_key(&999).unwrap();
    assert_eq!(r.value(&v).unwrap(), Some(vec![7; 100]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_filter_drops_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1000);
    let config = config().with_clock(clock.clone());
    let mut b = RocksDbBackend::new(config, RocksDbOptions::new(dir.path())).unwrap();
    let ttl = StateTtlConfig::new(Duration::from_millis(100));
    let v = b.register(ValueStateDescriptor::<u64>::new("v").with_ttl(ttl)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l").with_ttl(ttl)).unwrap();
    let m = b
        .register(MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl))
        .unwrap();
    for k in 0..100u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k).unwrap();
        b.map_put(&m, k, k).unwrap();
    }
    clock.set(1050);
    for k in 0..10u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.append(&l, k + 1).unwrap();
        b.map_put(&m, k + 1000, k).unwrap();
    }
    b.compact().unwrap();
    assert_eq!(b.entry_count(&v).unwrap(), 100, "nothing expired yet");
    clock.set(1120);
    b.compact().unwrap();
    // Written at 1000: expired at 1100. Written at 1050: alive until 1150.
    assert_eq!(b.entry_count(&v).unwrap(), 10);
    assert_eq!(b.entry_count(&m).unwrap(), 10);
    assert_eq!(b.entry_count(&l).unwrap(), 10);
    b.set_current_key(&3).unwrap();
    assert_eq!(b.list(&l).unwrap(), [4]);
    assert_eq!(b.map_entries(&m).unwrap(), [(1003, 3)]);
    clock.set(1200);
    b.compact().unwrap();
    for count in [b.entry_count(&v), b.entry_count(&l), b.entry_count(&m)] {
        assert_eq!(count.unwrap(), 0);
    }
}
