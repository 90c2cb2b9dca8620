//! The conformance suite on the heap backend with filesystem checkpoint storage.

mod common;

use common::FsStorageFactory;
use flowstate_conformance::{conformance_suite, Ctx};
use flowstate_heap::HeapBackendBuilder;

conformance_suite!(
    Ctx::new(HeapBackendBuilder, FsStorageFactory::new());
    keyed, snapshot, rescale, ttl, ttl_incremental, corruption, storage, lifecycle, lifecycle_files, compat, concurrent
);
