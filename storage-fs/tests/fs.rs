//! Filesystem storage: layout, stream cleanup, path safety, bad metadata,
//! and relocatable savepoints.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use flowstate_api::*;
use flowstate_fs::{FsCheckpointStorage, FsStateReader};
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
    for e in std::fs::read_dir(dir).unwrap() {
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

async fn checkpoint(b: &mut HeapBackend<u64>, storage: &FsCheckpointStorage, id: u64) -> (String, KeyedStateHandle) {
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
    let storage = FsCheckpointStorage::open(dir.path(), "job-a").unwrap();
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

#[tokio::test]
async fn dropped_and_aborted_streams_delete_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsCheckpointStorage::open(dir.path(), "job").unwrap();
    let location = storage.init_checkpoint(1).await.unwrap();
    let chk = dir.path().join("job/chk-1");
    for abort in [false, true] {
        let mut s = location.create_output_stream(StateScope::Exclusive).await.unwrap();
        s.write(&vec![1u8; 200 << 10]).await.unwrap();
        assert_eq!(files(&chk).len(), 1, "a file is written past the inline threshold");
        if abort {
            s.abort().await;
        } else {
            drop(s);
        }
        assert!(files(&chk).is_empty(), "abort={abort}: {:?}", files(&chk));
    }
    // A stream in shared/ behaves the same.
    let mut s = location.create_output_stream(StateScope::Shared).await.unwrap();
    s.write(&vec![1u8; 200 << 10]).await.unwrap();
    drop(s);
    assert!(files(&dir.path().join("job/shared")).is_empty());
}

#[tokio::test]
async fn paths_leaving_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    std::fs::create_dir_all(root.join("chk-1")).unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("chk-1/link")).unwrap();
    let reader = FsStateReader::new(&root);
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
    let storage = FsCheckpointStorage::open(dir.path(), "job").unwrap();
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
    let storage = FsCheckpointStorage::open(dir.path(), "job").unwrap();
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
    let storage = FsCheckpointStorage::open(dir.path().join("ckpt"), "job")
        .unwrap()
        .with_savepoint_dir(dir.path().join("savepoints"));
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
        assert!(FsCheckpointStorage::open(dir.path(), bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn gc_refuses_when_any_metadata_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FsCheckpointStorage::open(dir.path(), "job").unwrap();
    let job = storage.job_dir().to_path_buf();
    let shared: std::sync::Arc<dyn CheckpointStorage> = std::sync::Arc::new(storage);
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
