//! The conformance suite on the heap backend with filesystem checkpoint storage.

mod common;

use common::{FsStorageFactory, HeapFactory};
use flowstate_conformance::{conformance_suite, Ctx};

conformance_suite!(
    Ctx::new(HeapFactory, FsStorageFactory::new());
    keyed, snapshot, rescale, ttl, ttl_incremental, corruption, storage, lifecycle, lifecycle_files, compat, concurrent
);
