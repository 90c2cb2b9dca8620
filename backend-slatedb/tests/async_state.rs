//! The SlateDB backend, driven through `RecordCtx` and the
//! `KeyOrderedExecutor`, gives the heap backend's results for the same
//! records: what every record read, every key's state at the end, and the
//! timers left, on an in-memory store and on a local filesystem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use flowstate_api::ttl::ManualClock;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;

const KEYS: u64 = 40;
const RECORDS: usize = 600;

async fn equals_heap(store: Arc<dyn ObjectStore>) {
    let (clock_h, clock_s) = (ManualClock::new(10_000), ManualClock::new(10_000));
    let heap = heap(all(), &clock_h);
    let slate = slate(store, "job/slatedb/op", all(), &clock_s).await;
    let (sh, ss) = (register(&*heap), register(&*slate));
    let (log_h, log_s) = (Log::default(), Log::default());
    let (mut wm_h, mut wm_s) = (0, 0);
    run(&heap, &sh, 7, RECORDS, KEYS, &clock_h, &log_h, &mut wm_h).await;
    run(&slate, &ss, 7, RECORDS, KEYS, &clock_s, &log_s, &mut wm_s).await;
    let log = log_s.lock().unwrap().clone();
    assert_eq!(log, *log_h.lock().unwrap());
    for seen in [
        "ttl Some",
        "ttl None",
        "fired",
        "contains true",
        "empty false",
        "r Some",
    ] {
        assert!(log.values().any(|l| l.contains(seen)), "no record saw {seen:?}");
    }
    assert_eq!(dump(&slate, &ss, KEYS).await, dump(&heap, &sh, KEYS).await);
    let fired = timers(&slate, &ss).await;
    assert!(!fired.is_empty());
    assert_eq!(fired, timers(&heap, &sh).await);
    slate.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_give_the_heap_backends_results_on_an_in_memory_store() {
    equals_heap(Arc::new(InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_give_the_heap_backends_results_on_a_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    equals_heap(Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap())).await;
}
