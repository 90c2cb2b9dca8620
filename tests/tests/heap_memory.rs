//! The conformance suite on the heap backend with memory checkpoint storage.

mod common;

use common::HeapFactory;
use flowstate_conformance::{conformance_suite, Ctx, MemoryStorageFactory};

conformance_suite!(
    Ctx::new(HeapFactory, MemoryStorageFactory::new());
    keyed, snapshot, rescale, ttl, ttl_incremental, corruption, storage, memory_storage, lifecycle, compat, concurrent
);
