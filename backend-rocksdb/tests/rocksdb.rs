//! RocksDB-specific behaviour: where local copies go and which are used,
//! restore statistics, block checksums of restored files, and refused
//! options. Incremental uploads, the lifecycle of shared files, local
//! recovery and the TTL compaction filter are contracts of the conformance
//! suite, run on every backend that has them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flowstate_api::checkpoint::{
    HandleFile, InlineReader, KeyGroupsStateHandle, OperatorState, StreamStateHandle, METADATA_FILE,
};
use flowstate_api::lifecycle::Completion;
use flowstate_api::*;

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
    storage: Arc<CheckpointStorage>,
    options: RocksDbOptions,
}

/// A checkpoint store on `s`'s storage and a backend holding `KEYS` varied
/// values in state "v".
async fn filled(s: &Setup) -> (CheckpointStore, RocksDbBackend<u64>, ValueState<Vec<u8>>) {
    let store = CheckpointStore::open(Arc::clone(&s.storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let mut b = RocksDbBackend::new(config(), s.options.clone()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    fill_varied(&mut b, &v, 0..KEYS);
    (store, b, v)
}

fn setup(local_recovery: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<CheckpointStorage> =
        Arc::new(flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job").unwrap());
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
async fn local_recovery_keeps_the_newest_copy_and_never_uses_a_damaged_one() {
    // The conformance suite checks through the public API that a restore
    // takes the local copy and downloads without one; here, where the
    // copies are and what the restore's statistics say.
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
    assert_eq!(
        (stats.handles_from_local_copy, stats.handles_from_storage),
        (1, 0),
        "{stats:?}"
    );
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
    assert_eq!(
        (stats.handles_from_local_copy, stats.handles_from_storage),
        (0, 1),
        "{stats:?}"
    );
    assert!(stats.downloaded_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_copies_on_another_device_are_copied() {
    // tmpfs is another device than the temporary directory on most machines.
    // Without room there, the local copy goes to the same device (linked, not
    // copied) and the restore from it is still checked.
    let shm = std::path::Path::new("/dev/shm");
    let work = tempfile::tempdir().unwrap();
    let roomy = rustix::fs::statvfs(shm)
        .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= 64 << 20 && s.f_favail >= 1_000);
    let other = match roomy.then(|| tempfile::tempdir_in(shm)) {
        Some(Ok(dir)) => dir,
        _ => tempfile::tempdir().unwrap(),
    };
    let storage: Arc<CheckpointStorage> =
        Arc::new(flowstate_fs::checkpoint_storage(work.path().join("checkpoints"), "job").unwrap());
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
    assert_eq!(r.restore_stats().handles_from_local_copy, 1);
    let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    r.set_current_key(&999).unwrap();
    assert_eq!(r.value(&v).unwrap(), Some(vec![7; 100]));
}

/// A value that does not compress away, so SST files span many data blocks.
fn varied(k: u64) -> Vec<u8> {
    let mut x = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `varied(k)` for the keys of `keys` in the backend's key groups.
fn fill_varied(b: &mut RocksDbBackend<u64>, v: &ValueState<Vec<u8>>, keys: std::ops::Range<u64>) -> u64 {
    let mut n = 0;
    for k in keys {
        if b.set_current_key(&k).is_ok() {
            b.update(v, varied(k)).unwrap();
            n += 1;
        }
    }
    n
}

/// Flips a byte in the middle of the data blocks of the largest shared SST
/// file of checkpoint 1 and writes its CRC-32C into the `_metadata`, so the
/// file matches its handle. Returns the file's storage path.
fn damage_with_forged_checksum(s: &Setup, handle: &KeyedStateHandle) -> String {
    let target = shared_files(handle)
        .into_iter()
        .max_by_key(|f| f.stream.size())
        .unwrap();
    let root = s._dir.path().join("checkpoints/job");
    let stored = target
        .stream
        .file_path()
        .expect("the SST file is not inline")
        .to_string();
    let path = root.join(&stored);
    let mut data = std::fs::read(&path).unwrap();
    assert!(data.len() > 1 << 20, "{} bytes: too few for data blocks", data.len());
    // Data blocks come first; index, filter and properties are a small tail.
    let at = data.len() / 3;
    data[at] ^= 0x55;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &data).unwrap();

    let meta_path = root.join("chk-1").join(METADATA_FILE);
    let encoded = bytes::Bytes::from(std::fs::read(&meta_path).unwrap());
    let mut meta = CheckpointMetadata::decode(&encoded, "_metadata").unwrap();
    let KeyedStateHandle::Incremental(h) = &mut meta.operators[0].keyed[0] else {
        panic!("not incremental");
    };
    let file = h.shared.iter_mut().find(|f| f.name == target.name).unwrap();
    file.crc32c = flowstate_api::format::codec::crc32c(&data);
    std::fs::remove_file(&meta_path).unwrap();
    std::fs::write(&meta_path, meta.encode()).unwrap();
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_sst_block_with_forged_checksum_is_refused_at_the_latest_on_first_read() {
    // With local recovery too: the forged checksum makes the intact local
    // copy mismatch, so the damaged file is downloaded. Files are verified
    // when written, not scanned at restore: the damaged block is refused,
    // as corrupted and naming the state, when it is first read (or when the
    // restore opens the file, if the damage reaches what opening reads).
    for local_recovery in [false, true] {
        let s = setup(local_recovery);
        let (mut store, mut b, _) = filled(&s).await;
        let (result, _) = checkpoint(&mut b, &mut store, 1).await;
        drop(b);
        let stored = damage_with_forged_checksum(&s, &result.handle);

        let resolved = s.storage.latest_checkpoint().await.unwrap().unwrap();
        let handles = resolved.metadata.operators[0].keyed.clone();
        let restored = RocksDbBackend::restore(config(), &handles, &*resolved.reader, s.options.clone()).await;
        let e = match restored {
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("incremental checkpoint 1"), "{message}");
                assert!(message.contains(&stored), "names the stored file: {message}");
                e
            }
            Ok(mut r) => {
                let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
                let mut first_error = None;
                for k in 0..KEYS {
                    r.set_current_key(&k).unwrap();
                    match r.value(&v) {
                        // Nothing wrong is ever returned.
                        Ok(got) => assert_eq!(got, Some(varied(k)), "key {k}"),
                        Err(e) => {
                            first_error = Some(e);
                            break;
                        }
                    }
                }
                let e = first_error
                    .unwrap_or_else(|| panic!("local recovery {local_recovery}: the damaged block was read"));
                assert!(e.to_string().contains("state \"v\""), "names the state: {e}");
                e
            }
        };
        assert_eq!(e.kind(), ErrorKind::Corrupted, "local recovery {local_recovery}: {e}");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_stats_count_handles_by_where_their_files_came_from() {
    // Checkpoint 1 of two backends, key groups 0..64 (local copies under
    // job/op-0) and 64..128 (job/op-1).
    let s = setup(true);
    let local = s._dir.path().join("local");
    let mut store = CheckpointStore::open(Arc::clone(&s.storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let config_of = |start, end| KeyedBackendConfig::<u64>::new(KeyGroupRange::new(start, end).unwrap(), 128);
    let mut a = RocksDbBackend::new(config_of(0, 64), s.options.clone()).unwrap();
    let mut b = RocksDbBackend::new(
        config_of(64, 128),
        s.options.clone().with_local_recovery(vec![local.clone()], "job/op-1"),
    )
    .unwrap();
    let va = a.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    let vb = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    assert!(fill_varied(&mut a, &va, 0..KEYS) > 0);
    assert!(fill_varied(&mut b, &vb, 0..KEYS) > 0);
    let location = store.begin_checkpoint(1).await.unwrap();
    let mut handles = Vec::new();
    for backend in [&mut a, &mut b] {
        let pending = backend
            .snapshot(1, Arc::clone(&location), SnapshotOptions::checkpoint())
            .unwrap();
        handles.push(pending.await.unwrap().handle);
    }
    let meta = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        2,
        128,
        handles.clone(),
    ));
    store.complete(&location, meta).await.unwrap();
    a.notify_checkpoint_complete(1).unwrap();
    b.notify_checkpoint_complete(1).unwrap();
    drop((a, b));
    let file_bytes = |h: &KeyedStateHandle| match h {
        KeyedStateHandle::Incremental(h) => h.shared.iter().chain(&h.private).map(|f| f.stream.size()).sum::<u64>(),
        other => panic!("not incremental: {other:?}"),
    };
    let (a_bytes, b_bytes) = (file_bytes(&handles[0]), file_bytes(&handles[1]));

    let resolved = s.storage.latest_checkpoint().await.unwrap().unwrap();
    let handles = resolved.metadata.operators[0].keyed.clone();
    let as_subtask = |scope: &str| s.options.clone().with_local_recovery(vec![local.clone()], scope);

    // Rescaled to 0..96 as subtask op-1: the base (0..64) is downloaded, as
    // op-1's local copy of checkpoint 1 holds the other handle's files, and
    // key groups 64..96 are copied from that handle, taken from the local
    // copy. (Restoring several handles deletes op-1's copies afterwards.)
    let r = RocksDbBackend::restore(config_of(0, 96), &handles, &*resolved.reader, as_subtask("job/op-1"))
        .await
        .unwrap();
    let stats = r.restore_stats();
    assert_eq!(stats.handles_from_local_copy, 1, "{stats:?}");
    assert_eq!(stats.handles_from_storage, 1, "{stats:?}");
    assert_eq!(stats.local_bytes, b_bytes, "{stats:?}");
    assert_eq!(stats.downloaded_bytes, a_bytes, "{stats:?}");
    drop(r);

    // The same as subtask op-0: the base comes from op-0's local copy and
    // key groups 64..96 from storage.
    let mut r = RocksDbBackend::restore(config_of(0, 96), &handles, &*resolved.reader, as_subtask("job/op-0"))
        .await
        .unwrap();
    let stats = r.restore_stats();
    assert_eq!(stats.handles_from_local_copy, 1, "{stats:?}");
    assert_eq!(stats.handles_from_storage, 1, "{stats:?}");
    assert_eq!(stats.local_bytes, a_bytes, "{stats:?}");
    assert_eq!(stats.downloaded_bytes, b_bytes, "{stats:?}");
    let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    let mut seen = [0; 2];
    for k in 0..KEYS {
        if r.set_current_key(&k).is_ok() {
            assert_eq!(r.value(&v).unwrap(), Some(varied(k)), "key {k}");
            let kg = key_group_for_key_bytes(r.current_key_bytes().unwrap(), 128);
            seen[usize::from(kg >= 64)] += 1;
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
}

#[test]
fn an_invalid_state_name_is_not_a_retryable_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = RocksDbBackend::new(config(), RocksDbOptions::new(dir.path())).unwrap();
    let e = b.register(ValueStateDescriptor::<u64>::new("a\0b")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    // The backend stays usable.
    let v = b.register(ValueStateDescriptor::<u64>::new("ok")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 5).unwrap();
    assert_eq!(b.value(&v).unwrap(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_recovery_without_directories_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = RocksDbOptions::new(dir.path()).with_local_recovery(Vec::new(), "job/op-0");
    let e = RocksDbBackend::new(config(), options.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(e.message().contains("local recovery"), "{e}");
    let e = RocksDbBackend::restore(config(), &[], &InlineReader, options)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing may be created before the options are checked"
    );
    // A scope that would name the local directories themselves, or leave them.
    let local = dir.path().join("local");
    std::fs::create_dir_all(local.join("chk-1")).unwrap();
    for scope in ["", "/abs", "../up", "job/../.."] {
        let options = RocksDbOptions::new(dir.path().join("work")).with_local_recovery(vec![local.clone()], scope);
        let e = RocksDbBackend::new(config(), options).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{scope:?}: {e}");
    }
    assert!(local.join("chk-1").exists(), "another scope's copy was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_inline_state_names_its_key_groups() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: KeyGroupRange::new(64, 128).unwrap(),
        offsets: vec![0; 64],
        stream: StreamStateHandle::Inline(bytes::Bytes::from_static(b"not a snapshot")),
    });
    let e = RocksDbBackend::restore(config(), &[damaged], &InlineReader, RocksDbOptions::new(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
    assert!(
        e.message().contains("inline state of key groups [64..=127] (14 bytes)"),
        "{e}"
    );
}

/// Native savepoints (FLIP-203): every file of a RocksDB checkpoint, in the
/// savepoint's own directory, sharing nothing with checkpoints in either
/// direction. Moved elsewhere with every checkpoint deleted, the savepoint
/// restores into a backend in either restore mode; the first checkpoint
/// after the restore uploads everything (no checkpoint ever refers to a
/// savepoint's files), and that checkpoint restores with the savepoint
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_savepoints_are_self_contained_and_relocatable() {
    for mode in [RestoreMode::Claim, RestoreMode::NoClaim] {
        let s = setup(false);
        let (mut store, mut b, _) = filled(&s).await;
        // A checkpoint first: the savepoint must not reuse its files.
        checkpoint(&mut b, &mut store, 1).await;
        let savepoints = s._dir.path().join("savepoints");
        let location = store
            .begin_savepoint(2, Some(&savepoints.display().to_string()))
            .await
            .unwrap();
        let result = b
            .snapshot(2, Arc::clone(&location), SnapshotOptions::native_savepoint())
            .unwrap()
            .await
            .unwrap();
        let KeyedStateHandle::Incremental(h) = &result.handle else {
            panic!("a native savepoint is native: {:?}", result.handle);
        };
        assert!(h.shared.is_empty(), "a native savepoint shares nothing: {:?}", h.shared);
        assert!(h.private.iter().any(|f| f.name.ends_with(".sst")));
        // Small files are inline in the metadata; the others are relative.
        for path in h.private.iter().filter_map(|f| f.stream.file_path()) {
            assert!(!path.starts_with('/') && !path.contains(".."), "relative: {path}");
        }
        let meta = CheckpointMetadata::new(2, CheckpointKind::Savepoint, 0).with_operator(OperatorState::new(
            "op",
            1,
            128,
            vec![result.handle.clone()],
        ));
        let completion = store.complete(&location, meta).await.unwrap();
        // A savepoint's completion leaves checkpoint 1 the base of the next.
        b.notify_checkpoint_complete(2).unwrap();
        let (next, _) = checkpoint(&mut b, &mut store, 3).await;
        assert!(
            next.stats.bytes_written < result.stats.bytes_written / 10,
            "the checkpoint after a savepoint reuses checkpoint 1's files: {} of {} bytes",
            next.stats.bytes_written,
            result.stats.bytes_written
        );
        drop((b, store));

        // Move the savepoint, delete every checkpoint.
        let moved = s._dir.path().join("elsewhere");
        std::fs::create_dir_all(&moved).unwrap();
        let name = std::path::Path::new(&completion.pointer)
            .file_name()
            .unwrap()
            .to_owned();
        std::fs::rename(savepoints.join(&name), moved.join(&name)).unwrap();
        std::fs::remove_dir_all(s._dir.path().join("checkpoints")).unwrap();
        let storage: Arc<CheckpointStorage> =
            Arc::new(flowstate_fs::checkpoint_storage(s._dir.path().join("checkpoints"), "job").unwrap());
        let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
            .await
            .unwrap();
        let pointer = moved.join(&name).display().to_string();
        // The store restores savepoints without claiming them (a claim is
        // refused as Unsupported); the backend's own restore mode is either.
        let resolved = store.restore(&pointer, RestoreMode::NoClaim).await.unwrap();
        let claim = store.restore(&pointer, RestoreMode::Claim).await.err();
        assert_eq!(claim.map(|e| e.kind()), Some(ErrorKind::Unsupported));
        let handles = resolved.metadata.operators[0].keyed.clone();
        let options = s.options.clone().with_restore_mode(mode);
        let mut r = RocksDbBackend::restore(config(), &handles, &*resolved.reader, options)
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in (0..KEYS).step_by(97) {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&v).unwrap(), Some(varied(k)), "{mode:?}: key {k}");
        }
        // The first checkpoint uploads everything, and restores alone.
        let (after, c) = checkpoint(&mut r, &mut store, 4).await;
        assert_eq!(
            after.stats.bytes_written, after.stats.full_size,
            "{mode:?}: the first checkpoint after a savepoint uploads everything"
        );
        drop(r);
        std::fs::remove_dir_all(moved.join(&name)).unwrap();
        let resolved = storage.resolve(&c.pointer).await.unwrap();
        let handles = resolved.metadata.operators[0].keyed.clone();
        let mut r = RocksDbBackend::restore(config(), &handles, &*resolved.reader, s.options.clone())
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        r.set_current_key(&7).unwrap();
        assert_eq!(r.value(&v).unwrap(), Some(varied(7)), "{mode:?}");
    }
}
