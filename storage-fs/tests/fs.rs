//! Filesystem storage: layout, stream cleanup, path safety, bad metadata,
//! and relocatable savepoints.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use flowstate_api::checkpoint::{
    unique_file_name, BlobListing, BlobPath, BlobStore, KeyGroupsStateHandle, MemoryBlobStore, OperatorState,
    StateReader, StateScope, StreamStateHandle,
};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::*;
use flowstate_fs::state_reader;
use flowstate_heap::HeapBackend;

fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn big_backend() -> (HeapBackend<u64>, ValueState<Vec<u8>>) {
    let mut b = HeapBackend::new(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128)).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    for k in 0..1000u64 {
        b.set_current_key(&k).unwrap();
        b.update(&v, vec![k as u8; 100]).unwrap();
    }
    (b, v)
}

async fn checkpoint(b: &mut HeapBackend<u64>, storage: &CheckpointStorage, id: u64) -> (String, KeyedStateHandle) {
    let location = storage.init_checkpoint(id).await.unwrap();
    let result = b
        .snapshot(id, location.clone(), SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    let mut m = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0);
    m.operators
        .push(OperatorState::new("op", 1, 128, vec![result.handle.clone()]));
    (location.write_metadata(&m).await.unwrap(), result.handle)
}

#[tokio::test]
async fn layout_follows_flink() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job-a").unwrap();
    let (mut b, _) = big_backend().await;
    let (pointer, handle) = checkpoint(&mut b, &storage, 1).await;
    assert_eq!(pointer, dir.path().join("job-a/chk-1").display().to_string());
    let file = handle.streams()[0].file_path().unwrap().to_string();
    assert!(file.starts_with("chk-1/"), "{file}");
    let mut expected: Vec<String> = [
        "job-a".to_string(),
        "job-a/chk-1".to_string(),
        format!("job-a/{file}"),
        "job-a/chk-1/_metadata".to_string(),
        "job-a/shared".to_string(),
        "job-a/taskowned".to_string(),
    ]
    .into();
    expected.sort();
    assert_eq!(files(dir.path()), expected);
}

/// Waits (up to 10 s) until `done` holds: for work a destructor hands to a
/// blocking thread.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dropped_and_aborted_streams_delete_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let chk = dir.path().join("job/chk-1");
    for abort in [false, true] {
        let mut s = location.create_output_stream(StateScope::Exclusive).await.unwrap();
        // Past the inline threshold a file is written, in chunks of at most 1 MiB.
        s.write(&vec![1u8; 3 << 20]).await.unwrap();
        assert_eq!(files(&chk).len(), 1, "a file is written past the inline threshold");
        if abort {
            s.abort().await;
        } else {
            // A destructor cannot await: the file goes on a blocking thread.
            drop(s);
            eventually(|| files(&chk).is_empty()).await;
        }
        assert!(files(&chk).is_empty(), "abort={abort}: {:?}", files(&chk));
    }
    // A stream in shared/ behaves the same.
    let mut s = location.create_output_stream(StateScope::Shared).await.unwrap();
    s.write(&vec![1u8; 3 << 20]).await.unwrap();
    assert_eq!(files(&dir.path().join("job/shared")).len(), 1);
    drop(s);
    eventually(|| files(&dir.path().join("job/shared")).is_empty()).await;
    assert!(files(&dir.path().join("job/shared")).is_empty());
}

#[tokio::test]
async fn paths_leaving_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    std::fs::create_dir_all(root.join("chk-1")).unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("chk-1/link")).unwrap();
    let reader = state_reader(&root);
    for path in ["../secret", "/etc/passwd", "chk-1/../../secret", "chk-1/link"] {
        let handle = StreamStateHandle::File {
            path: path.into(),
            size: 7,
        };
        let err = reader.read(&handle).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{path}: {err}");
    }
}

#[tokio::test]
async fn bad_metadata_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let (mut b, _) = big_backend().await;
    let (pointer, _) = checkpoint(&mut b, &storage, 1).await;
    let metadata = std::fs::read(format!("{pointer}/_metadata")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", b"this is not a checkpoint".to_vec()),
        ("truncated", metadata[..metadata.len() - 3].to_vec()),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let chk = dir.path().join(format!("job/chk-{}", 10 + i));
        std::fs::create_dir_all(&chk).unwrap();
        std::fs::write(chk.join("_metadata"), bytes).unwrap();
        let err = storage.resolve(&chk.display().to_string()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{what}: {err}");
        assert!(
            err.to_string().contains(&chk.join("_metadata").display().to_string()),
            "{what}: {err}"
        );
    }
    let missing = dir.path().join("job/chk-99").display().to_string();
    let err = storage.resolve(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // The latest complete checkpoint skips the damaged ones (10..12) and an empty directory.
    std::fs::create_dir_all(dir.path().join("job/chk-50")).unwrap();
    let latest = storage.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(latest.metadata.checkpoint_id, 1);
}

#[tokio::test]
async fn state_file_of_the_wrong_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let (mut b, _) = big_backend().await;
    let (pointer, handle) = checkpoint(&mut b, &storage, 1).await;
    let file = handle.streams()[0].file_path().unwrap().to_string();
    let path = dir.path().join("job").join(&file);
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() / 2]).unwrap();
    let resolved = storage.resolve(&pointer).await.unwrap();
    let err = HeapBackend::<u64>::restore(
        KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128),
        &resolved.metadata.operators[0].keyed,
        &*resolved.reader,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupted, "{err}");
    assert!(err.to_string().contains(&file), "the error must name the file: {err}");
}

#[tokio::test]
async fn savepoints_are_self_contained_and_relocatable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path().join("ckpt"), "job")
        .unwrap()
        .with_savepoint_dir(dir.path().join("savepoints").display().to_string());
    let (mut b, _) = big_backend().await;
    let location = storage.init_savepoint(7, None).await.unwrap();
    let result = b
        .snapshot(7, location.clone(), SnapshotOptions::savepoint())
        .unwrap()
        .await
        .unwrap();
    let mut m = CheckpointMetadata::new(7, CheckpointKind::Savepoint, 0);
    m.operators.push(OperatorState::new("op", 1, 128, vec![result.handle]));
    let pointer = location.write_metadata(&m).await.unwrap();
    assert!(files(&dir.path().join("ckpt/job/shared")).is_empty());
    // Move the savepoint elsewhere and delete the original.
    let moved = dir
        .path()
        .join("elsewhere")
        .join(Path::new(&pointer).file_name().unwrap());
    std::fs::create_dir_all(&moved).unwrap();
    for f in std::fs::read_dir(&pointer).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), moved.join(f.file_name())).unwrap();
    }
    std::fs::remove_dir_all(&pointer).unwrap();
    let resolved = storage.resolve(&moved.display().to_string()).await.unwrap();
    assert_eq!(resolved.metadata.kind, CheckpointKind::Savepoint);
    let mut r = HeapBackend::<u64>::restore(
        KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128),
        &resolved.metadata.operators[0].keyed,
        &*resolved.reader,
    )
    .await
    .unwrap();
    let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    r.set_current_key(&999).unwrap();
    assert_eq!(r.value(&v).unwrap(), Some(vec![999u64 as u8; 100]));
    assert_eq!(r.entry_count(&v).unwrap(), 1000);
}

#[tokio::test]
async fn job_ids_must_be_one_component() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "a/b", "..", "/abs"] {
        assert!(flowstate_fs::checkpoint_storage(dir.path(), bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn gc_refuses_when_any_metadata_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let job = std::path::PathBuf::from(storage.job_root());
    let shared: std::sync::Arc<CheckpointStorage> = std::sync::Arc::new(storage);
    let mut store = CheckpointStore::open(shared.clone(), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let (mut b, _) = big_backend().await;
    let location = store.begin_checkpoint(1).await.unwrap();
    let result = b
        .snapshot(1, location.clone(), SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        128,
        vec![result.handle],
    ));
    store.complete(&location, metadata).await.unwrap();
    // An orphan, and a checkpoint whose metadata is garbage.
    let orphan = job.join("shared").join(unique_file_name());
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::create_dir(job.join("chk-7")).unwrap();
    std::fs::write(job.join("chk-7/_metadata"), b"not metadata").unwrap();
    let options = GcOptions::new(std::time::Duration::ZERO).delete();
    let err = store.collect_garbage(&options).await.unwrap_err();
    assert!(err.to_string().contains("chk-7/_metadata"), "{err}");
    assert!(err.to_string().contains("nothing deleted"), "{err}");
    assert!(orphan.exists(), "GC deleted despite an unreadable metadata file");
    // Reopening skips the bad checkpoint for retention; once it is removed, GC runs.
    let store = CheckpointStore::open(shared, CheckpointStoreConfig::default())
        .await
        .unwrap();
    assert_eq!(store.retained().len(), 1);
    std::fs::remove_dir_all(job.join("chk-7")).unwrap();
    let report = store.collect_garbage(&options).await.unwrap();
    assert_eq!(report.orphans.len(), 1);
    assert_eq!(report.bytes, 6);
    assert!(!orphan.exists());
    // Files not named by us are never touched.
    let foreign = job.join("shared").join("notes.txt");
    std::fs::write(&foreign, b"mine").unwrap();
    assert!(store.collect_garbage(&options).await.unwrap().orphans.is_empty());
    assert!(foreign.exists());
}

// ---- Hostile files: FIFOs, devices, sockets and symlinks in the job directory ----

/// Runs `body` on its own thread and runtime and fails if it does not finish
/// within 10 s, so that a read blocking on a FIFO fails the test instead of
/// hanging it (the stuck thread is left behind).
fn within<T: Send + 'static>(what: &str, body: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _ = tx.send(rt.block_on(body));
        // Do not wait for blocking threads stuck in a regression.
        rt.shutdown_background();
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within 10 s"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what} ended without a result"),
        },
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn file_handle(path: &str, size: u64) -> StreamStateHandle {
    StreamStateHandle::File {
        path: path.into(),
        size,
    }
}

/// A handle of one key-group snapshot stored in the file `path`.
fn keyed_file_handle(path: &str, size: u64) -> KeyedStateHandle {
    KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: KeyGroupRange::all(128).unwrap(),
        offsets: vec![0; 128],
        stream: file_handle(path, size),
    })
}

#[test]
fn fifo_state_file_is_refused_without_blocking() {
    within("restoring from a FIFO", async {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
        let (mut b, _) = big_backend().await;
        let (pointer, handle) = checkpoint(&mut b, &storage, 1).await;
        // Replace the state file by a FIFO nobody writes to.
        let file = handle.streams()[0].file_path().unwrap().to_string();
        let path = dir.path().join("job").join(&file);
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let resolved = storage.resolve(&pointer).await.unwrap();
        let err = HeapBackend::<u64>::restore(
            KeyedBackendConfig::new(KeyGroupRange::all(128).unwrap(), 128),
            &resolved.metadata.operators[0].keyed,
            &*resolved.reader,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("is a FIFO, not a regular file"), "{err}");
        assert!(err.to_string().contains(&file), "the error must name the file: {err}");
    });
}

#[test]
fn fifo_metadata_is_refused_by_resolve_and_skipped_by_latest_checkpoint() {
    within("reading a FIFO as _metadata", async {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
        let (mut b, _) = big_backend().await;
        checkpoint(&mut b, &storage, 1).await;
        let chk = dir.path().join("job/chk-2");
        std::fs::create_dir(&chk).unwrap();
        mkfifo(&chk.join("_metadata"));
        for pointer in [chk.display().to_string(), format!("{}/_metadata", chk.display())] {
            let err = storage.resolve(&pointer).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
            assert!(err.to_string().contains("is a FIFO"), "{err}");
            assert!(err.to_string().contains("chk-2/_metadata"), "{err}");
        }
        let latest = storage.latest_checkpoint().await.unwrap().unwrap();
        assert_eq!(latest.metadata.checkpoint_id, 1);
    });
}

#[test]
fn fifo_is_refused_by_read_file_and_not_listed() {
    within("read_file of a FIFO", async {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
        let chk = dir.path().join("job/chk-3");
        std::fs::create_dir(&chk).unwrap();
        mkfifo(&chk.join("_metadata"));
        let err = storage.read_file("chk-3/_metadata").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("chk-3/_metadata is a FIFO"), "{err}");
        assert!(storage.list_files().await.unwrap().is_empty());
        // The checkpoint store opens (and sees no checkpoint).
        let shared: std::sync::Arc<CheckpointStorage> = std::sync::Arc::new(storage);
        let store = CheckpointStore::open(shared, CheckpointStoreConfig::default())
            .await
            .unwrap();
        assert!(store.retained().is_empty());
    });
}

#[test]
fn gc_refuses_beside_a_fifo_or_an_escaping_link_in_place_of_metadata() {
    within("garbage collection beside a FIFO _metadata", async {
        let dir = tempfile::tempdir().unwrap();
        let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
        let job = std::path::PathBuf::from(storage.job_root());
        let (mut b, _) = big_backend().await;
        checkpoint(&mut b, &storage, 1).await;
        let shared: std::sync::Arc<CheckpointStorage> = std::sync::Arc::new(storage);
        let store = CheckpointStore::open(shared.clone(), CheckpointStoreConfig::default())
            .await
            .unwrap();
        let orphan = job.join("shared").join(unique_file_name());
        std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        std::fs::write(&orphan, b"orphan").unwrap();
        // chk-9 holds nothing but the FIFO: no listed file names the directory.
        let chk = job.join("chk-9");
        std::fs::create_dir(&chk).unwrap();
        mkfifo(&chk.join("_metadata"));
        assert!(!shared
            .list_files()
            .await
            .unwrap()
            .iter()
            .any(|f| f.path.starts_with("chk-9")));
        assert!(shared.checkpoint_dirs().await.unwrap().contains(&9));
        let options = GcOptions::new(std::time::Duration::ZERO).delete();
        let err = store.collect_garbage(&options).await.unwrap_err();
        assert!(err.to_string().contains("chk-9/_metadata"), "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(err.to_string().contains("nothing deleted"), "{err}");
        assert!(orphan.exists(), "GC deleted beside a FIFO _metadata");

        std::fs::remove_file(chk.join("_metadata")).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"not metadata").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), chk.join("_metadata")).unwrap();
        let err = store.collect_garbage(&options).await.unwrap_err();
        assert!(err.to_string().contains("chk-9/_metadata"), "{err}");
        assert!(orphan.exists(), "GC deleted beside an escaping link");

        // An empty chk-9 is a checkpoint in progress or failed: GC runs.
        std::fs::remove_file(chk.join("_metadata")).unwrap();
        let report = store.collect_garbage(&options).await.unwrap();
        assert_eq!(report.orphans.len(), 1, "{report:?}");
        assert!(!orphan.exists());
    });
}

#[test]
fn fifo_fed_with_more_than_declared_is_not_read() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    std::fs::create_dir_all(root.join("chk-1")).unwrap();
    let fifo = root.join("chk-1/state");
    mkfifo(&fifo);
    // A writer offering 64 MiB to whoever opens the FIFO for reading.
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn({
        let (fifo, written) = (fifo.clone(), written.clone());
        move || {
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                return;
            };
            let chunk = vec![0u8; 64 << 10];
            for _ in 0..1024 {
                if f.write_all(&chunk).is_err() {
                    return;
                }
                written.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let err = within("reading a fed FIFO", async move {
        state_reader(&root)
            .read(&file_handle("chk-1/state", 10))
            .await
            .unwrap_err()
    });
    let read = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        read <= 4 << 20,
        "{read} bytes were read from a FIFO declared as 10 bytes ({err})"
    );
    assert!(err.to_string().contains("is a FIFO"), "{err}");
}

#[test]
fn devices_named_as_state_files_are_refused_quickly() {
    within("reading a device", async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("job");
        std::fs::create_dir_all(root.join("chk-1")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("chk-1/zero")).unwrap();
        let err = state_reader(&root)
            .read(&file_handle("chk-1/zero", 10))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        // A device inside the root: /dev/zero never ends, and must not be read.
        let err = state_reader("/dev").read(&file_handle("zero", 10)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("/dev/zero is a character device"), "{err}");
    });
}

#[tokio::test]
async fn state_files_longer_or_shorter_than_declared_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    std::fs::create_dir_all(root.join("chk-1")).unwrap();
    std::fs::write(root.join("chk-1/state"), b"0123456789").unwrap();
    let reader = state_reader(&root);
    assert_eq!(
        reader.read(&file_handle("chk-1/state", 10)).await.unwrap(),
        &b"0123456789"[..]
    );
    for declared in [0, 5, 9, 11, 20, u64::MAX] {
        let err = reader.read(&file_handle("chk-1/state", declared)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupted, "{declared}: {err}");
        assert!(err.to_string().contains("chk-1/state has 10 bytes"), "{err}");
    }
}

#[tokio::test]
async fn directories_and_sockets_named_as_state_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    std::fs::create_dir_all(root.join("chk-1/dir")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("chk-1/socket")).unwrap();
    let reader = state_reader(&root);
    for (name, what) in [("dir", "a directory"), ("socket", "a socket")] {
        let err = reader
            .read(&file_handle(&format!("chk-1/{name}"), 0))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("chk-1/{name} is {what}, not a regular file")),
            "{err}"
        );
    }
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let err = storage.read_file("chk-1/dir").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

/// A job directory whose `shared/dirlink` leads to `outside/`, which holds `victim`.
fn job_with_dirlink(dir: &Path) -> (CheckpointStorage, std::path::PathBuf) {
    let storage = flowstate_fs::checkpoint_storage(dir, "job").unwrap();
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"victim").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("job/shared/dirlink")).unwrap();
    (storage, outside.join("victim"))
}

#[tokio::test]
async fn deletes_through_a_symlinked_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, victim) = job_with_dirlink(dir.path());
    let own = dir.path().join("job/shared/own");
    std::fs::write(&own, b"own").unwrap();
    let err = storage
        .delete_files(&["shared/own".into(), "shared/dirlink/victim".into()])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("shared/dirlink/victim"), "{err}");
    assert!(victim.exists(), "a file outside the job directory was deleted");
    assert!(own.exists(), "nothing is deleted when a path is refused");
    // Reads are refused the same way, and the listing does not enter the link.
    let err = storage.read_file("shared/dirlink/victim").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let listed: Vec<String> = storage
        .list_files()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(listed, ["shared/own"]);
    // Missing files are still not an error, even under a missing directory.
    storage
        .delete_files(&["shared/gone".into(), "chk-9/gone".into()])
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_a_symlink_removes_only_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, victim) = job_with_dirlink(dir.path());
    let link = dir.path().join("job/shared/filelink");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    storage
        .delete_files(&["shared/filelink".into(), "shared/dirlink".into()])
        .await
        .unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err(), "the link is gone");
    assert!(std::fs::symlink_metadata(dir.path().join("job/shared/dirlink")).is_err());
    assert!(victim.exists(), "the link's target survives");
}

#[tokio::test]
async fn dispose_of_a_symlinked_checkpoint_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"victim").unwrap();
    // Checkpoint directories are made on the first write: plant the link.
    let chk = dir.path().join("job/chk-1");
    let _ = std::fs::remove_dir(&chk);
    std::os::unix::fs::symlink(&outside, &chk).unwrap();
    let err = location.dispose().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("outside the root"), "{err}");
    assert!(outside.join("victim").exists());
    assert!(std::fs::symlink_metadata(&chk).unwrap().file_type().is_symlink());
    // A real directory is disposed of, and a missing one is not an error.
    std::fs::remove_file(&chk).unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let mut s = location.create_output_stream(StateScope::Exclusive).await.unwrap();
    s.write(&vec![1u8; 200 << 10]).await.unwrap();
    s.close().await.unwrap();
    location.dispose().await.unwrap();
    assert!(!chk.exists());
    location.dispose().await.unwrap();
}

#[tokio::test]
async fn init_checkpoint_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("job/chk-5")).unwrap();
    let err = storage.init_checkpoint(5).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("chk-5"), "{err}");
    // Through a dangling link nothing can be written, and nothing is made.
    std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("job/chk-6")).unwrap();
    let written = async {
        let location = storage.init_checkpoint(6).await?;
        let mut s = location.create_output_stream(StateScope::Exclusive).await?;
        s.write(&vec![1u8; 200 << 10]).await?;
        s.close().await
    };
    assert!(written.await.is_err());
    assert!(!dir.path().join("nowhere").exists());
    assert!(files(&outside).is_empty());
}

#[tokio::test]
async fn metadata_and_streams_do_not_follow_planted_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"victim").unwrap();
    // `_metadata` planted as a symlink to a file outside, and to a missing one.
    std::fs::create_dir_all(dir.path().join("job/chk-1")).unwrap();
    let metadata = dir.path().join("job/chk-1/_metadata");
    for target in [outside.join("victim"), outside.join("new")] {
        std::os::unix::fs::symlink(&target, &metadata).unwrap();
        let err = location
            .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        std::fs::remove_file(&metadata).unwrap();
    }
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"victim");
    assert_eq!(files(&outside), ["victim"]);
    // shared/ replaced by a symlink out of the job directory: no file is written there.
    let shared = dir.path().join("job/shared");
    std::fs::remove_dir(&shared).unwrap();
    std::os::unix::fs::symlink(&outside, &shared).unwrap();
    let mut s = location.create_output_stream(StateScope::Shared).await.unwrap();
    let err = s.write(&vec![1u8; 3 << 20]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    drop(s);
    assert_eq!(files(&outside), ["victim"]);
    // The checkpoint directory itself replaced by a symlink: no metadata is written.
    let chk = dir.path().join("job/chk-1");
    std::fs::remove_dir_all(&chk).unwrap();
    std::os::unix::fs::symlink(&outside, &chk).unwrap();
    let err = location
        .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert_eq!(files(&outside), ["victim"]);
}

#[tokio::test]
async fn checkpoint_store_never_deletes_through_a_symlinked_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, victim) = job_with_dirlink(dir.path());
    // Checkpoint 1 references the victim through the link (written directly:
    // the store would not complete it, as the listing does not show the file).
    let location = storage.init_checkpoint(1).await.unwrap();
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        128,
        vec![keyed_file_handle("shared/dirlink/victim", 6)],
    ));
    location.write_metadata(&metadata).await.unwrap();
    let shared: std::sync::Arc<CheckpointStorage> = std::sync::Arc::new(storage);
    let mut store = CheckpointStore::open(shared, CheckpointStoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        store.retained()[0].files(),
        ["shared/dirlink/victim", "chk-1/_metadata"]
    );
    // Checkpoint 2 subsumes checkpoint 1, whose only state file is the victim.
    let location = store.begin_checkpoint(2).await.unwrap();
    let completion = store
        .complete(&location, CheckpointMetadata::new(2, CheckpointKind::Checkpoint, 0))
        .await
        .unwrap();
    assert!(
        victim.exists(),
        "subsuming a checkpoint deleted a file outside the job directory"
    );
    assert_eq!(completion.subsumed, [1]);
    assert_eq!(completion.failed_deletes, 1);
    assert!(!dir.path().join("job/chk-1").exists());
}

#[tokio::test]
async fn metadata_files_over_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = flowstate_fs::checkpoint_storage(dir.path(), "job").unwrap();
    let chk = dir.path().join("job/chk-4");
    std::fs::create_dir(&chk).unwrap();
    // Sparse: takes no space, and must not be read.
    let f = std::fs::File::create(chk.join("_metadata")).unwrap();
    f.set_len(flowstate_api::checkpoint::MAX_METADATA_SIZE + 1).unwrap();
    let err = storage.read_file("chk-4/_metadata").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(err.to_string().contains("chk-4/_metadata"), "{err}");
    let err = storage.resolve(&chk.display().to_string()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
}

/// One level of a listing holds the files and directories directly under
/// the prefix, as the full listing filtered to that level would, never a
/// symlink or a FIFO, and nothing from deeper down.
#[tokio::test]
async fn one_level_listing_lists_directories_and_files_of_that_level() {
    let dir = tempfile::tempdir().unwrap();
    let store = flowstate_fs::FsBlobStore::new(dir.path());
    let memory = MemoryBlobStore::new("memory://level");
    for p in ["top", "chk-1/_metadata", "chk-2/a", "shared/x/deep", "shared/y"] {
        for s in [&store as &dyn BlobStore, &memory] {
            s.put_if_absent(&BlobPath::new(p).unwrap(), bytes::Bytes::from_static(b"data"))
                .await
                .unwrap();
        }
    }
    std::os::unix::fs::symlink(dir.path().join("top"), dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("shared"), dir.path().join("linkdir")).unwrap();
    mkfifo(&dir.path().join("fifo"));
    let names = |l: &BlobListing| {
        let mut dirs: Vec<String> = l.dirs.iter().map(|d| d.as_str().to_string()).collect();
        let mut objects: Vec<String> = l.objects.iter().map(|o| o.path.as_str().to_string()).collect();
        dirs.sort();
        objects.sort();
        (dirs, objects)
    };
    for s in [&store as &dyn BlobStore, &memory] {
        let top = names(&s.list_level(None).await.unwrap());
        assert_eq!(
            top,
            (
                vec!["chk-1".into(), "chk-2".into(), "shared".into()],
                vec!["top".into()]
            ),
            "{s:?}"
        );
        let shared = names(&s.list_level(Some(&BlobPath::new("shared").unwrap())).await.unwrap());
        assert_eq!(shared, (vec!["shared/x".into()], vec!["shared/y".into()]), "{s:?}");
        let none = s.list_level(Some(&BlobPath::new("absent").unwrap())).await.unwrap();
        assert_eq!(none, BlobListing::default(), "{s:?}");
    }
}
