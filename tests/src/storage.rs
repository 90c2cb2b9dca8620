//! Checkpoint storage contracts: those of storages alone, run once per
//! storage, and two run with a backend on storages with a maximum state
//! size or that end with the process.

use std::sync::Arc;

use flowstate_api::checkpoint::{parse_pointer, OperatorState, StateScope, StreamStateHandle};
use flowstate_api::*;

use crate::{complete, full_config, snapshot_into, BackendFactory, Ctx, StorageFactory, OPERATOR};

async fn one_checkpoint(storage: &CheckpointStorage, id: u64, marker: u32) -> String {
    let mut metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, u64::from(marker));
    metadata
        .operators
        .push(OperatorState::new(OPERATOR, marker, 128, Vec::new()));
    storage
        .init_checkpoint(id)
        .await
        .unwrap()
        .write_metadata(&metadata)
        .await
        .unwrap()
}

/// `chk-n/_metadata`, `chk-n` and `chk-n/` name the same checkpoint.
pub async fn pointer_forms_resolve_to_the_same_checkpoint(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("pointers"));
    let pointer = one_checkpoint(&storage, 3, 1).await;
    let base = parse_pointer(&pointer).unwrap().normalized();
    for form in [base.clone(), format!("{base}/"), format!("{base}/_metadata")] {
        let resolved = storage.resolve(&form).await.unwrap();
        assert_eq!(resolved.pointer, base, "{form}");
        assert_eq!(resolved.metadata.checkpoint_id, 3, "{form}");
    }
}

/// Empty, garbage and missing pointers give clear errors that name them.
pub async fn bad_pointers_give_clear_errors(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("bad-pointers"));
    let pointer = one_checkpoint(&storage, 1, 1).await;
    let err = storage.resolve("").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = storage.resolve("not a pointer at all").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("not a pointer at all"), "{err}");
    let missing = pointer.replace("chk-1", "chk-999");
    let err = storage.resolve(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("chk-999"), "{err}");
}

/// Writing the metadata of an existing checkpoint id fails and keeps the first.
pub async fn duplicate_checkpoint_id_is_refused(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("duplicate"));
    let pointer = one_checkpoint(&storage, 1, 1).await;
    let mut second = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 2);
    second.operators.clear();
    let location = storage.init_checkpoint(1).await;
    let err = match location {
        Ok(location) => location.write_metadata(&second).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(storage.resolve(&pointer).await.unwrap().metadata.timestamp_millis, 1);
}

/// Two jobs writing the same checkpoint id do not collide.
pub async fn two_jobs_do_not_collide(factory: Arc<dyn StorageFactory>) {
    let job = crate::job_id("two-jobs");
    let a = factory.storage(&format!("{job}-a"));
    let b = factory.storage(&format!("{job}-b"));
    let pa = one_checkpoint(&a, 1, 1).await;
    let pb = one_checkpoint(&b, 1, 2).await;
    assert_ne!(pa, pb);
    assert_eq!(a.resolve(&pa).await.unwrap().metadata.timestamp_millis, 1);
    assert_eq!(b.resolve(&pb).await.unwrap().metadata.timestamp_millis, 2);
    assert_eq!(
        a.latest_checkpoint().await.unwrap().unwrap().metadata.timestamp_millis,
        1
    );
    assert_eq!(
        b.latest_checkpoint().await.unwrap().unwrap().metadata.timestamp_millis,
        2
    );
}

/// Output streams: nothing written gives an empty handle, little is inlined,
/// more becomes a file; the position is exact.
pub async fn output_stream_handles(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("streams"));
    let caps = storage.capabilities();
    let location = storage.init_checkpoint(1).await.unwrap();
    let stream = location.create_output_stream(StateScope::Exclusive).await.unwrap();
    assert_eq!(stream.position(), 0);
    assert_eq!(stream.close().await.unwrap(), StreamStateHandle::Empty);

    let mut stream = location.create_output_stream(StateScope::Exclusive).await.unwrap();
    stream.write(b"abc").await.unwrap();
    assert_eq!(stream.position(), 3);
    stream.write(b"de").await.unwrap();
    assert_eq!(stream.position(), 5);
    assert!(caps.inline_threshold >= 5);
    assert_eq!(
        stream.close().await.unwrap(),
        StreamStateHandle::Inline(bytes::Bytes::from_static(b"abcde"))
    );

    let above = caps.inline_threshold + 1;
    if caps.max_state_size.is_none_or(|max| max >= above as u64) {
        let mut stream = location.create_output_stream(StateScope::Exclusive).await.unwrap();
        let data: Vec<u8> = (0..above).map(|i| i as u8).collect();
        for chunk in data.chunks(1000) {
            stream.write(chunk).await.unwrap();
        }
        assert_eq!(stream.position(), above as u64);
        let handle = stream.close().await.unwrap();
        assert!(
            matches!(handle, StreamStateHandle::File { size, .. } if size == above as u64),
            "{handle:?}"
        );
        let pointer = location
            .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0))
            .await
            .unwrap();
        let reader = storage.resolve(&pointer).await.unwrap().reader;
        assert_eq!(reader.read(&handle).await.unwrap(), data);
    }
}

/// The latest checkpoint is the one with the highest id.
pub async fn latest_checkpoint_is_the_newest(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("latest"));
    assert!(storage.latest_checkpoint().await.unwrap().is_none());
    for id in [1u64, 3, 2] {
        one_checkpoint(&storage, id, id as u32).await;
    }
    assert_eq!(
        storage
            .latest_checkpoint()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .checkpoint_id,
        3
    );
}

/// A storage with a maximum state size (the memory storage's) refuses a
/// checkpoint holding state above it with a clear error, which the
/// backend's snapshot passes on: one value larger than the maximum, which
/// no backend can split over several streams.
pub async fn memory_storage_refuses_state_above_maximum<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("memory-max"));
    let max = storage
        .capabilities()
        .max_state_size
        .expect("a storage with a maximum state size");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, vec![7u8; 1000]).unwrap();
    // Small state fits.
    snapshot_into(&mut b, &storage, 1, SnapshotOptions::checkpoint()).await;
    // Incompressible, so no compressing backend brings it under the maximum.
    b.set_current_key(&2).unwrap();
    b.update(&v, crate::noise(max as usize + 1, 2)).unwrap();
    let location = storage.init_checkpoint(2).await.unwrap();
    let err = b
        .snapshot(2, location, SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(
        err.to_string().contains(&max.to_string()),
        "the error must give the limit: {err}"
    );
    assert!(
        err.to_string().contains("chk-2"),
        "the error must name the checkpoint: {err}"
    );
}

/// Checkpoints of a volatile storage (the memory storage's) cannot be
/// resolved once their process has ended, and the error says so.
pub async fn memory_storage_checkpoints_end_with_the_process<F: BackendFactory>(ctx: Ctx<F>) {
    let job = crate::job_id("memory-process");
    let storage = ctx.storage.storage(&job);
    assert!(!storage.capabilities().durable);
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 1).unwrap();
    let result = snapshot_into(&mut b, &storage, 1, SnapshotOptions::checkpoint()).await;
    let pointer = complete(&storage, 1, CheckpointKind::Checkpoint, 1, vec![result.handle]).await;
    assert!(storage.resolve(&pointer).await.is_ok());
    let next_process = ctx.storage.storage_after_restart(&job);
    let err = next_process.resolve(&pointer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("after that process ends"), "{err}");
}
