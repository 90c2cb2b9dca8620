//! Every file the backend writes is accounted for: the databases of dead
//! attempts, the SlateDB checkpoints of aborted and subsumed checkpoints,
//! and, once the job has finished and its checkpoints are discarded,
//! everything, are removed by the checkpoint store's release and
//! [`SlateDbOptions::collect_garbage`]; what a running backend or a
//! retained checkpoint needs is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use flowstate_api::checkpoint::{KeyedStateHandle, OperatorState};
use flowstate_api::lifecycle::{GcOptions, JobStatus};
use flowstate_api::ttl::ManualClock;
use flowstate_api::*;
use flowstate_slatedb::{SlateDbBackend, SlateDbGcReport, SlateDbOptions};
use object_store::memory::InMemory;
use object_store::ObjectStore;

async fn write(b: &Arc<SlateDbBackend<u64>>, s: &ValueState<u64>, round: u64) {
    for k in 0..300u64 {
        RecordCtx::for_key(Arc::clone(b), &k)
            .unwrap()
            .update(s, k * 1000 + round)
            .await
            .unwrap();
    }
}

async fn complete(store: &mut CheckpointStore, b: &SlateDbBackend<u64>, id: u64) {
    let location = store.begin_checkpoint(id).await.unwrap();
    let result = b
        .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
        .await
        .unwrap()
        .await
        .unwrap();
    let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        "op",
        1,
        MAX_PARALLELISM,
        vec![result.handle],
    ));
    store.complete(&location, metadata).await.unwrap();
    b.notify_checkpoint_complete(id).await.unwrap();
}

fn retained(store: &CheckpointStore) -> Vec<KeyedStateHandle> {
    store
        .retained()
        .iter()
        .flat_map(|c| c.metadata.operators.iter().flat_map(|o| o.keyed.clone()))
        .collect()
}

/// The SlateDB checkpoints of the database at `path`: (name, count).
async fn checkpoint_names(store: &Arc<dyn ObjectStore>, path: &str) -> Vec<Option<String>> {
    let admin = slatedb::admin::AdminBuilder::new(path, Arc::clone(store)).build();
    let mut names: Vec<Option<String>> = admin
        .list_checkpoints(None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    names
}

async fn dead_attempts_leave_nothing_once_the_job_is_done(store: Arc<dyn ObjectStore>) {
    let clock = ManualClock::new(10_000);
    let options: SlateDbOptions = options(&store);
    let storage = Arc::new(CheckpointStorage::in_memory("job"));
    let mut checkpoints = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap()
        .with_native_release(options.release());

    // Attempt 0 dies before its first checkpoint.
    let zero = Arc::new(
        SlateDbBackend::open(options.clone(), config(all(), &clock))
            .await
            .unwrap(),
    );
    let s = zero.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    write(&zero, &s, 0).await;
    zero.db().flush().await.unwrap();
    let zero_path = zero.path().to_string();
    drop(zero);

    // Attempt 1 completes checkpoint 1, then dies while checkpoint 2 is in
    // flight (its SlateDB checkpoint taken, the checkpoint never complete).
    let one = Arc::new(
        SlateDbBackend::open(options.clone(), config(all(), &clock))
            .await
            .unwrap(),
    );
    let s = one.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    write(&one, &s, 1).await;
    complete(&mut checkpoints, &one, 1).await;
    write(&one, &s, 2).await;
    let location = checkpoints.begin_checkpoint(2).await.unwrap();
    let in_flight = one
        .snapshot(2, location, SnapshotOptions::checkpoint())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(in_flight);
    let one_path = one.path().to_string();
    drop(one);
    assert_eq!(
        checkpoint_names(&store, &one_path).await,
        [Some("flowstate:1".to_string()), Some("flowstate:2".to_string())]
    );

    // Attempt 2 restores checkpoint 1 (a clone of attempt 1's database) and
    // completes checkpoint 3, which subsumes 1: its SlateDB checkpoint is
    // released by the store.
    let handle = retained(&checkpoints);
    let two = Arc::new(
        SlateDbBackend::restore(options.clone(), config(all(), &clock), &handle, reader())
            .await
            .unwrap(),
    );
    let s = two.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    write(&two, &s, 3).await;
    complete(&mut checkpoints, &two, 3).await;
    let names = checkpoint_names(&store, &one_path).await;
    assert!(!names.contains(&Some("flowstate:1".to_string())), "{names:?}");

    // Garbage collection while attempt 2 runs: attempt 0's database goes,
    // attempt 1's checkpoint in flight is released, and its database stays
    // while attempt 2's clone reads it. A dry run says the same, removing
    // nothing.
    let live = [two.uuid()];
    let want = SlateDbGcReport {
        deleted_databases: vec![zero_path.clone()],
        released_checkpoints: vec![format!("{one_path}#flowstate:2")],
        read_by_clones: vec![one_path.clone()],
        ..SlateDbGcReport::default()
    };
    let before = objects(&store, "").await;
    let dry = options
        .collect_garbage(&retained(&checkpoints), &live, &GcOptions::new(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(dry, want);
    assert_eq!(objects(&store, "").await, before, "a dry run removes nothing");
    let report = options
        .collect_garbage(&retained(&checkpoints), &live, &GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    assert_eq!(report, want);
    assert!(objects(&store, &zero_path).await.is_empty());
    assert_eq!(
        checkpoint_names(&store, &one_path).await.len(),
        1,
        "the clone's pin only"
    );

    // Attempt 2 stops. A collection with an hour's minimum age finds its
    // database just written and leaves it alone; one without runs
    // SlateDB's collector on it, as on every retained database no backend
    // has open, and what is retained still restores.
    let two_path = two.path().to_string();
    two.close().await.unwrap();
    drop(two);
    let before = objects(&store, "").await;
    let recent = options
        .collect_garbage(
            &retained(&checkpoints),
            &[],
            &GcOptions::new(Duration::from_secs(3600)).delete(),
        )
        .await
        .unwrap();
    let mut recently = recent.recently_written.clone();
    recently.sort();
    let mut want = vec![one_path.clone(), two_path.clone()];
    want.sort();
    assert_eq!(recently, want, "{recent:?}");
    assert!(recent.collected_databases.is_empty(), "{recent:?}");
    assert_eq!(objects(&store, "").await, before, "recent databases are left alone");
    let report = options
        .collect_garbage(&retained(&checkpoints), &[], &GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    assert_eq!(
        report.collected_databases,
        std::slice::from_ref(&two_path),
        "{report:?}"
    );
    assert_eq!(report.read_by_clones, std::slice::from_ref(&one_path), "{report:?}");
    // What is retained still restores, exactly.
    let handle = retained(&checkpoints);
    let check = Arc::new(
        SlateDbBackend::restore(options.clone(), config(all(), &clock), &handle, reader())
            .await
            .unwrap(),
    );
    let s = check.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for k in 0..300u64 {
        let got = RecordCtx::for_key(Arc::clone(&check), &k)
            .unwrap()
            .value(&s)
            .await
            .unwrap();
        assert_eq!(got, Some(k * 1000 + 3), "key {k}");
    }
    check.close().await.unwrap();

    // The job finishes: its checkpoints are discarded (their SlateDB
    // checkpoints released), and garbage collection leaves nothing.
    checkpoints.shutdown(JobStatus::Finished).await.unwrap();
    let report = options
        .collect_garbage(&[], &[], &GcOptions::new(Duration::ZERO).delete())
        .await
        .unwrap();
    assert!(report.read_by_clones.is_empty(), "{report:?}");
    assert!(report.deleted_databases.contains(&one_path), "{report:?}");
    let left = objects(&store, BASE).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_attempts_leave_nothing_once_the_job_is_done_in_memory() {
    dead_attempts_leave_nothing_once_the_job_is_done(Arc::new(InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_attempts_leave_nothing_once_the_job_is_done_on_the_s3_server() {
    if let Some(store) = s3_server() {
        dead_attempts_leave_nothing_once_the_job_is_done(store).await;
    }
}
