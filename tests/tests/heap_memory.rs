//! The conformance suite on the heap backend with memory checkpoint storage.

use flowstate_conformance::{conformance_suite, Ctx, MemoryStorageFactory};
use flowstate_heap::HeapBackendBuilder;

conformance_suite!(
    Ctx::new(HeapBackendBuilder, MemoryStorageFactory::new());
    keyed, snapshot, rescale, ttl, ttl_incremental, corruption, storage, memory_storage, lifecycle, compat, concurrent
);
