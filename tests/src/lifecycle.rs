//! Lifecycle contracts: retention and subsumption, the shared-state
//! registry, savepoints, restore modes, cancellation, garbage collection,
//! and a fault-injection sweep over every storage operation of a checkpoint.
//! The shared-state registry and garbage collection are contracts of
//! storages alone (run once per storage with shared files).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flowstate_api::checkpoint::{
    metadata_path, metadata_path_id, CheckpointLocation, HandleFile, IncrementalStateHandle, OperatorState, StateScope,
    StreamStateHandle,
};
use flowstate_api::lifecycle::{CancellationPolicy, Completion, GcOptions, JobStatus};
use flowstate_api::ttl::{Clock, ManualClock, SharedClock, SystemClock};
use flowstate_api::*;

use crate::fault::FaultMode;
use crate::{
    full_config, operator_config, restore_resolved, BackendFactory, Ctx, StorageFactory, MAX_PARALLELISM, OPERATOR,
};

const KEYS: u64 = 300;

/// The states of the lifecycle contracts.
struct States {
    v: ValueState<String>,
    l: ListState<u64>,
    m: MapState<u32, u64>,
}

fn register<B: KeyedStateBackend>(b: &mut B) -> States {
    States {
        v: b.register(ValueStateDescriptor::<String>::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::<u64>::new("l")).unwrap(),
        m: b.register(MapStateDescriptor::<u32, u64>::new("m")).unwrap(),
    }
}

/// Writes generation `gen` of the state: about 40 KB, so file-backed
/// storages spill it to a file.
fn write<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &States, gen: u64) {
    let range = b.key_group_range();
    for k in (0..KEYS).filter(|k| range.contains(key_group(k))) {
        b.set_current_key(&k).unwrap();
        if (k + gen).is_multiple_of(5) {
            b.clear(&s.v).unwrap();
        } else {
            b.update(&s.v, format!("{k:>4}-{gen:>4}-{}", "x".repeat(90))).unwrap();
        }
        b.append(&s.l, gen).unwrap();
        b.map_put(&s.m, (gen % 3) as u32, k + gen).unwrap();
    }
}

fn key_group(k: &u64) -> u32 {
    let mut bytes = Vec::new();
    Serializer::serialize(&Bincode::<u64>::new(), k, &mut bytes).unwrap();
    key_group_for_key_bytes(&bytes, MAX_PARALLELISM)
}

type Dump = BTreeMap<u64, (Option<String>, Vec<u64>, Vec<(u32, u64)>)>;

fn dump<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &States) -> Dump {
    let mut out = BTreeMap::new();
    let range = b.key_group_range();
    for k in (0..KEYS).filter(|k| range.contains(key_group(k))) {
        b.set_current_key(&k).unwrap();
        let entry = (
            b.value(&s.v).unwrap(),
            b.list(&s.l).unwrap(),
            b.map_entries(&s.m).unwrap(),
        );
        if entry != (None, vec![], vec![]) {
            out.insert(k, entry);
        }
    }
    out
}

async fn open(storage: Arc<CheckpointStorage>, retained: usize) -> CheckpointStore {
    CheckpointStore::open(storage, CheckpointStoreConfig::default().with_max_retained(retained))
        .await
        .unwrap()
}

fn metadata(id: u64, kind: CheckpointKind, parallelism: u32, handles: Vec<KeyedStateHandle>) -> CheckpointMetadata {
    CheckpointMetadata::new(id, kind, 0).with_operator(OperatorState::new(
        OPERATOR,
        parallelism,
        MAX_PARALLELISM,
        handles,
    ))
}

/// Snapshots `backend` as checkpoint (or savepoint) `id` through `store`.
async fn take<B: KeyedStateBackend>(
    store: &mut CheckpointStore,
    b: &mut B,
    id: u64,
    kind: CheckpointKind,
) -> Completion {
    let (location, options) = match kind {
        CheckpointKind::Checkpoint => (store.begin_checkpoint(id).await.unwrap(), SnapshotOptions::checkpoint()),
        CheckpointKind::Savepoint => (
            store.begin_savepoint(id, None).await.unwrap(),
            SnapshotOptions::savepoint(),
        ),
    };
    let result = b.snapshot(id, Arc::clone(&location), options).unwrap().await.unwrap();
    let completion = store
        .complete(&location, metadata(id, kind, 1, vec![result.handle]))
        .await
        .unwrap();
    if kind == CheckpointKind::Checkpoint {
        b.notify_checkpoint_complete(id).unwrap();
    }
    completion
}

/// Every file of every retained checkpoint is still readable.
async fn assert_retained_files_present(store: &CheckpointStore, why: &str) {
    for c in store.retained() {
        for f in c.files() {
            store.storage().read_file(f).await.unwrap_or_else(|e| {
                panic!(
                    "{why}: file {f} of retained checkpoint {} is gone: {e}",
                    c.checkpoint_id
                )
            });
        }
    }
}

/// Every checkpoint that exists in storage (has a `_metadata`) has all of its files.
async fn assert_every_checkpoint_whole(storage: &CheckpointStorage, why: &str) {
    for f in storage.list_files().await.unwrap() {
        let Some(id) = metadata_path_id(&f.path) else { continue };
        let data = storage.read_file(&f.path).await.unwrap();
        let m = CheckpointMetadata::decode(&data, &f.path).unwrap();
        for p in m.file_paths() {
            storage
                .read_file(&p)
                .await
                .unwrap_or_else(|e| panic!("{why}: checkpoint {id} exists but its file {p} is gone: {e}"));
        }
    }
}

async fn restored_dump<F: BackendFactory>(ctx: &Ctx<F>, storage: &CheckpointStorage, pointer: &str) -> Dump {
    let resolved = storage.resolve(pointer).await.unwrap();
    let mut r = restore_resolved(ctx, &resolved, full_config::<u64>()).await.unwrap();
    let s = register(&mut r);
    dump(&mut r, &s)
}

/// The newest N checkpoints are kept; older ones are deleted, metadata and files.
pub async fn retains_newest_n_and_subsumes_the_rest<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("retain"));
    let mut store = open(Arc::clone(&storage), 2).await;
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let s = register(&mut b);
    let mut dumps = BTreeMap::new();
    for id in 1..=4 {
        write(&mut b, &s, id);
        let c = take(&mut store, &mut b, id, CheckpointKind::Checkpoint).await;
        dumps.insert(id, (c.pointer, dump(&mut b, &s)));
        let expected: Vec<u64> = (id.saturating_sub(1).max(1)..=id).collect();
        let ids: Vec<u64> = store.retained().iter().map(|c| c.checkpoint_id).collect();
        assert_eq!(ids, expected);
    }
    for id in [1, 2] {
        let err = storage.resolve(&dumps[&id].0).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "subsumed checkpoint {id}: {err}");
    }
    let left: Vec<String> = storage
        .list_files()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(
        !left.iter().any(|p| p.starts_with("chk-1/") || p.starts_with("chk-2/")),
        "files of subsumed checkpoints remain: {left:?}"
    );
    assert_retained_files_present(&store, "after subsumption").await;
    for id in [3, 4] {
        assert_eq!(
            restored_dump(&ctx, &storage, &dumps[&id].0).await,
            dumps[&id].1,
            "checkpoint {id}"
        );
    }
}

/// A savepoint is never discarded by checkpoint retention, and restores at another parallelism.
pub async fn savepoints_survive_retention<F: BackendFactory>(ctx: Ctx<F>) {
    if !ctx.storage.capabilities().durable {
        return savepoint_on_memory_storage(ctx).await;
    }
    let storage = ctx.storage.storage(&crate::job_id("savepoint-retention"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let s = register(&mut b);
    write(&mut b, &s, 1);
    let savepoint = take(&mut store, &mut b, 1, CheckpointKind::Savepoint).await.pointer;
    let expected = dump(&mut b, &s);
    for id in 2..=4 {
        write(&mut b, &s, id);
        take(&mut store, &mut b, id, CheckpointKind::Checkpoint).await;
    }
    store.shutdown(JobStatus::Finished).await.unwrap();
    let mut store = open(Arc::clone(&storage), 1).await;
    let resolved = store.restore(&savepoint, RestoreMode::NoClaim).await.unwrap();
    assert_eq!(resolved.metadata.kind, CheckpointKind::Savepoint);
    let mut merged = Dump::new();
    for index in 0..3 {
        let mut r = restore_resolved(&ctx, &resolved, operator_config::<u64>(3, index))
            .await
            .unwrap();
        let s = register(&mut r);
        merged.extend(dump(&mut r, &s));
    }
    assert_eq!(merged, expected);
    let err = store.restore(&savepoint, RestoreMode::Claim).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

async fn savepoint_on_memory_storage<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("savepoint-retention"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let s = register(&mut b);
    write(&mut b, &s, 1);
    let savepoint = take(&mut store, &mut b, 1, CheckpointKind::Savepoint).await.pointer;
    let expected = dump(&mut b, &s);
    for id in 2..=4 {
        take(&mut store, &mut b, id, CheckpointKind::Checkpoint).await;
    }
    assert_eq!(restored_dump(&ctx, &storage, &savepoint).await, expected);
}

/// Cancellation keeps or deletes checkpoints as configured; failure always keeps them; finishing deletes them.
pub async fn cancellation_policies<F: BackendFactory>(ctx: Ctx<F>) {
    use CancellationPolicy::*;
    for (policy, status, kept) in [
        (RetainOnCancellation, JobStatus::Cancelled, true),
        (DeleteOnCancellation, JobStatus::Cancelled, false),
        (DeleteOnCancellation, JobStatus::Failed, true),
        (DeleteOnCancellation, JobStatus::Suspended, true),
        (RetainOnCancellation, JobStatus::Finished, false),
    ] {
        let storage = ctx.storage.storage(&crate::job_id("cancel"));
        let config = CheckpointStoreConfig::default()
            .with_max_retained(2)
            .with_cancellation(policy);
        let mut store = CheckpointStore::open(Arc::clone(&storage), config).await.unwrap();
        let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
        let s = register(&mut b);
        for id in 1..=2 {
            write(&mut b, &s, id);
            take(&mut store, &mut b, id, CheckpointKind::Checkpoint).await;
        }
        let discarded = store.shutdown(status).await.unwrap();
        let latest = storage
            .latest_checkpoint()
            .await
            .unwrap()
            .map(|c| c.metadata.checkpoint_id);
        if kept {
            assert!(discarded.is_empty(), "{policy:?} {status:?}");
            assert_eq!(latest, Some(2), "{policy:?} {status:?}");
            let reopened = open(Arc::clone(&storage), 2).await;
            assert_eq!(reopened.retained().len(), 2, "{policy:?} {status:?}");
        } else {
            assert_eq!(discarded, [1, 2], "{policy:?} {status:?}");
            assert_eq!(latest, None, "{policy:?} {status:?}");
            let ours: Vec<_> = storage
                .list_files()
                .await
                .unwrap()
                .into_iter()
                .filter(|f| f.path.starts_with("chk-"))
                .collect();
            assert!(ours.is_empty(), "{policy:?} {status:?}: {ours:?}");
        }
    }
}

/// Claim: the restored checkpoint is retained and later subsumed like our own.
pub async fn claim_restore_subsumes_the_restored_checkpoint<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("claim"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let s = register(&mut b);
    write(&mut b, &s, 1);
    let pointer = take(&mut store, &mut b, 5, CheckpointKind::Checkpoint).await.pointer;
    let expected = dump(&mut b, &s);
    drop((store, b));

    let mut store = open(Arc::clone(&storage), 1).await;
    let resolved = store.restore(&pointer, RestoreMode::Claim).await.unwrap();
    assert_eq!(store.latest().map(|c| c.checkpoint_id), Some(5));
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let s = register(&mut r);
    assert_eq!(dump(&mut r, &s), expected);
    write(&mut r, &s, 2);
    let c = take(&mut store, &mut r, 6, CheckpointKind::Checkpoint).await;
    assert_eq!(c.subsumed, [5]);
    assert_eq!(storage.resolve(&pointer).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_retained_files_present(&store, "after claim").await;
}

/// No-claim: another job's checkpoint is restored; none of its files is
/// ever deleted, no new checkpoint may reference them, and a job's own
/// checkpoint cannot be disowned.
pub async fn no_claim_restore_never_deletes_the_restored_checkpoint<F: BackendFactory>(ctx: Ctx<F>) {
    let old = ctx.storage.storage(&crate::job_id("no-claim-old"));
    let mut old_store = open(Arc::clone(&old), 1).await;
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let s = register(&mut b);
    write(&mut b, &s, 1);
    let pointer = take(&mut old_store, &mut b, 5, CheckpointKind::Checkpoint)
        .await
        .pointer;
    let expected = dump(&mut b, &s);
    let own = old_store.restore(&pointer, RestoreMode::NoClaim).await.unwrap_err();
    assert_eq!(own.kind(), ErrorKind::Invalid, "{own}");
    drop((old_store, b));

    let storage = ctx.storage.storage(&crate::job_id("no-claim-new"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let err = store.restore(&pointer, RestoreMode::Claim).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let resolved = store.restore(&pointer, RestoreMode::NoClaim).await.unwrap();
    assert!(
        store.retained().is_empty(),
        "a no-claim restore must not take ownership"
    );
    let restored_files = resolved.metadata.file_paths();
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let s = register(&mut r);
    assert_eq!(dump(&mut r, &s), expected);
    for id in 6..=8 {
        write(&mut r, &s, id);
        take(&mut store, &mut r, id, CheckpointKind::Checkpoint).await;
    }
    // A checkpoint that shares the restored checkpoint's files is refused.
    let location = store.begin_checkpoint(9).await.unwrap();
    if !restored_files.is_empty() {
        let shared = resolved.metadata.operators[0].keyed.clone();
        let err = store
            .complete(&location, metadata(9, CheckpointKind::Checkpoint, 1, shared))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    }
    store.abort(&location, &[]).await.unwrap();
    store
        .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    store.shutdown(JobStatus::Finished).await.unwrap();
    assert_eq!(restored_dump(&ctx, &old, &pointer).await, expected);
    for f in restored_files.iter().chain([&metadata_path(5)]) {
        old.read_file(f).await.unwrap();
    }
}

/// Fails every storage operation of a checkpoint in turn, once and as an
/// outage: the checkpoint completes or aborts, the restore equals the last
/// completed checkpoint exactly, no retained file is gone, and garbage
/// collection afterwards leaves no orphan.
pub async fn fault_sweep_restores_last_completed<F: BackendFactory>(ctx: Ctx<F>) {
    let mut runs = 0;
    let stride = ctx.storage.sweep_stride().max(1);
    for mode in [FaultMode::Transient, FaultMode::Outage] {
        let (mut k, mut tail) = (0, false);
        loop {
            let (storage, plan) = crate::fault::failing(&ctx.storage.storage(&crate::job_id("faults")));
            let mut store = open(Arc::clone(&storage), 1).await;
            let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
            let s = register(&mut b);
            write(&mut b, &s, 1);
            take(&mut store, &mut b, 1, CheckpointKind::Checkpoint).await;
            let first = dump(&mut b, &s);
            write(&mut b, &s, 2);
            let second = dump(&mut b, &s);

            plan.arm(k, mode);
            let completed = attempt(&mut store, &mut b, 2).await;
            plan.disarm();
            if plan.fired() == 0 {
                assert!(completed, "checkpoint 2 failed with no fault injected");
                assert!(k > 0, "a checkpoint without storage operations");
                if stride == 1 || tail {
                    break;
                }
                // Past the last operation: sweep the last stride ones one by one.
                (k, tail) = (k.saturating_sub(stride - 1).max(1), true);
                continue;
            }
            runs += 1;
            let why = format!("{mode:?} fault at operation {k} of {:?}", plan.log());
            let expected = if completed { &second } else { &first };
            let latest = store.latest().map(|c| (c.checkpoint_id, c.pointer.clone()));
            let (id, pointer) = latest.unwrap_or_else(|| panic!("{why}: no checkpoint retained"));
            assert_eq!(id, if completed { 2 } else { 1 }, "{why}");
            assert_retained_files_present(&store, &why).await;
            assert_every_checkpoint_whole(&storage, &why).await;
            assert_eq!(&restored_dump(&ctx, &storage, &pointer).await, expected, "{why}");
            let found = storage
                .latest_checkpoint()
                .await
                .unwrap()
                .map(|c| c.metadata.checkpoint_id);
            assert_eq!(found, Some(id), "{why}: storage and store disagree");

            // Whatever the failure left behind is found and removed by GC.
            let report = store
                .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
                .await
                .unwrap();
            assert_retained_files_present(&store, &why).await;
            assert_every_checkpoint_whole(&storage, &why).await;
            assert_eq!(&restored_dump(&ctx, &storage, &pointer).await, expected, "{why}");
            let again = store.collect_garbage(&GcOptions::new(Duration::ZERO)).await.unwrap();
            assert!(
                again.orphans.is_empty(),
                "{why}: orphans after GC {report:?}: {again:?}"
            );
            // The job goes on: the next checkpoint succeeds.
            write(&mut b, &s, 3);
            take(&mut store, &mut b, 3, CheckpointKind::Checkpoint).await;
            let third = dump(&mut b, &s);
            let pointer = store.latest().unwrap().pointer.clone();
            assert_eq!(restored_dump(&ctx, &storage, &pointer).await, third, "{why}");
            k += if tail { 1 } else { stride };
        }
    }
    // A disaggregated backend's checkpoint writes its handles' references
    // and the metadata only: a few operations, each faulted in both modes.
    let least = if ctx.backend.capabilities().disaggregated { 4 } else { 6 };
    assert!(runs >= least, "only {runs} faults injected");
    eprintln!("fault sweep: {runs} injected failures");
}

/// One checkpoint attempt that aborts on any failure; true if it completed.
async fn attempt<B: KeyedStateBackend>(store: &mut CheckpointStore, b: &mut B, id: u64) -> bool {
    let location = match store.begin_checkpoint(id).await {
        Ok(l) => l,
        Err(_) => return false,
    };
    let result = match b.snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint()) {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    let handle = match result {
        Ok(r) => r.handle,
        Err(_) => {
            let _ = store.abort(&location, &[]).await;
            b.notify_checkpoint_aborted(id).unwrap();
            return false;
        }
    };
    match store
        .complete(
            &location,
            metadata(id, CheckpointKind::Checkpoint, 1, vec![handle.clone()]),
        )
        .await
    {
        Ok(_) => {
            b.notify_checkpoint_complete(id).unwrap();
            true
        }
        Err(_) => {
            let _ = store.abort(&location, &[handle]).await;
            b.notify_checkpoint_aborted(id).unwrap();
            false
        }
    }
}

/// Writes `size` bytes as a closed stream of `scope`.
async fn file(location: &Arc<CheckpointLocation>, scope: StateScope, fill: u8, size: usize) -> StreamStateHandle {
    let mut s = location.create_output_stream(scope).await.unwrap();
    s.write(&vec![fill; size]).await.unwrap();
    let h = s.close().await.unwrap();
    assert!(h.file_path().is_some(), "a {size}-byte stream must be a file");
    h
}

fn incremental(id: u64, shared: &[&StreamStateHandle], private: StreamStateHandle) -> KeyedStateHandle {
    let f = |i: usize, h: &StreamStateHandle| HandleFile {
        name: format!("{i:06}.sst"),
        stream: h.clone(),
        crc32c: 0,
    };
    KeyedStateHandle::Incremental(IncrementalStateHandle {
        format: Default::default(),
        range: KeyGroupRange::all(MAX_PARALLELISM).unwrap(),
        backend_id: "contract".into(),
        checkpoint_id: id,
        shared: shared.iter().enumerate().map(|(i, h)| f(i, h)).collect(),
        private: vec![f(99, &private)],
        meta: StreamStateHandle::Empty,
    })
}

async fn exists(storage: &CheckpointStorage, h: &StreamStateHandle) -> bool {
    storage.read_file(h.file_path().unwrap()).await.is_ok()
}

const BIG: usize = 64 << 10;

/// Shared files live while any retained checkpoint references them, and are deleted when none does.
pub async fn shared_files_live_while_referenced(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("shared"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let l1 = store.begin_checkpoint(1).await.unwrap();
    let (s1, s2) = (
        file(&l1, StateScope::Shared, 1, BIG).await,
        file(&l1, StateScope::Shared, 2, BIG).await,
    );
    let p1 = file(&l1, StateScope::Exclusive, 3, BIG).await;
    let h1 = incremental(1, &[&s1, &s2], p1.clone());
    store
        .complete(&l1, metadata(1, CheckpointKind::Checkpoint, 1, vec![h1]))
        .await
        .unwrap();
    assert_eq!(store.registry().references(s2.file_path().unwrap()), 1);

    let l2 = store.begin_checkpoint(2).await.unwrap();
    let s3 = file(&l2, StateScope::Shared, 4, BIG).await;
    let p2 = file(&l2, StateScope::Exclusive, 5, BIG).await;
    let h2 = incremental(2, &[&s2, &s3], p2.clone());
    let c = store
        .complete(&l2, metadata(2, CheckpointKind::Checkpoint, 1, vec![h2]))
        .await
        .unwrap();
    assert_eq!(c.subsumed, [1]);
    assert!(!exists(&storage, &s1).await, "unreferenced shared file kept");
    assert!(
        !exists(&storage, &p1).await,
        "private file of a subsumed checkpoint kept"
    );
    for h in [&s2, &s3, &p2] {
        assert!(exists(&storage, h).await, "{h:?} of the retained checkpoint deleted");
    }
    // Abort: the attempt's new shared file goes, the reused one stays.
    let l3 = store.begin_checkpoint(3).await.unwrap();
    let s4 = file(&l3, StateScope::Shared, 6, BIG).await;
    let p3 = file(&l3, StateScope::Exclusive, 7, BIG).await;
    store
        .abort(&l3, &[incremental(3, &[&s3, &s4], p3.clone())])
        .await
        .unwrap();
    assert!(!exists(&storage, &s4).await && !exists(&storage, &p3).await);
    assert!(exists(&storage, &s3).await && exists(&storage, &s2).await);
    assert_retained_files_present(&store, "after abort").await;
}

/// After a restart the registry is rebuilt from the retained checkpoints' metadata.
pub async fn registry_is_rebuilt_after_restart(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("registry"));
    let mut store = open(Arc::clone(&storage), 2).await;
    let l1 = store.begin_checkpoint(1).await.unwrap();
    let s = file(&l1, StateScope::Shared, 1, BIG).await;
    let p = file(&l1, StateScope::Exclusive, 2, BIG).await;
    store
        .complete(
            &l1,
            metadata(1, CheckpointKind::Checkpoint, 1, vec![incremental(1, &[&s], p)]),
        )
        .await
        .unwrap();
    let l2 = store.begin_checkpoint(2).await.unwrap();
    let p = file(&l2, StateScope::Exclusive, 3, BIG).await;
    store
        .complete(
            &l2,
            metadata(2, CheckpointKind::Checkpoint, 1, vec![incremental(2, &[&s], p)]),
        )
        .await
        .unwrap();
    drop(store);

    let mut store = open(Arc::clone(&storage), 2).await;
    assert_eq!(store.registry().references(s.file_path().unwrap()), 2);
    for id in [3, 4] {
        let l = store.begin_checkpoint(id).await.unwrap();
        let p = file(&l, StateScope::Exclusive, id as u8, BIG).await;
        store
            .complete(
                &l,
                metadata(id, CheckpointKind::Checkpoint, 1, vec![incremental(id, &[], p)]),
            )
            .await
            .unwrap();
        assert_eq!(exists(&storage, &s).await, id == 3, "after checkpoint {id}");
    }
}

/// GC deletes only our unreferenced files older than the minimum age, and only when asked.
pub async fn gc_removes_only_old_orphans_of_ours(factory: Arc<dyn StorageFactory>) {
    let storage = factory.storage(&crate::job_id("gc"));
    let mut store = open(Arc::clone(&storage), 1).await;
    let l1 = store.begin_checkpoint(1).await.unwrap();
    let s = file(&l1, StateScope::Shared, 1, BIG).await;
    let p = file(&l1, StateScope::Exclusive, 2, BIG).await;
    let orphan_shared = file(&l1, StateScope::Shared, 3, BIG).await;
    let orphan_owned = file(&l1, StateScope::TaskOwned, 4, 30_000).await;
    store
        .complete(
            &l1,
            metadata(1, CheckpointKind::Checkpoint, 1, vec![incremental(1, &[&s], p.clone())]),
        )
        .await
        .unwrap();
    // An attempt that crashed: a directory without metadata.
    let l2 = storage.init_checkpoint(2).await.unwrap();
    let orphan_chk = file(&l2, StateScope::Exclusive, 5, BIG).await;

    let now = SystemClock.now_millis();
    let young = GcOptions::new(Duration::from_secs(3600)).with_clock(ManualClock::new(now));
    assert!(
        store.collect_garbage(&young).await.unwrap().orphans.is_empty(),
        "young files are left alone"
    );

    let later: SharedClock = ManualClock::new(now + 2 * 3600 * 1000);
    let dry = GcOptions::new(Duration::from_secs(3600)).with_clock(later.clone());
    let report = store.collect_garbage(&dry).await.unwrap();
    let mut found: Vec<&str> = report.orphans.iter().map(|f| f.path.as_str()).collect();
    found.sort_unstable();
    let mut want: Vec<&str> = [&orphan_shared, &orphan_owned, &orphan_chk]
        .iter()
        .map(|h| h.file_path().unwrap())
        .collect();
    want.sort_unstable();
    assert_eq!(found, want);
    assert_eq!(report.bytes, (2 * BIG + 30_000) as u64);
    assert!(!report.deleted);
    assert!(exists(&storage, &orphan_shared).await, "a dry run deleted");

    let report = store.collect_garbage(&dry.clone().delete()).await.unwrap();
    assert!(report.deleted);
    for h in [&orphan_shared, &orphan_owned, &orphan_chk] {
        assert!(!exists(&storage, h).await, "{h:?} survived GC");
    }
    for h in [&s, &p] {
        assert!(exists(&storage, h).await, "GC deleted referenced {h:?}");
    }
    assert_retained_files_present(&store, "after GC").await;
}
