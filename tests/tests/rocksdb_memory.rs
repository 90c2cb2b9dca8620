//! The conformance suite on the RocksDB backend (incremental checkpoints) with memory checkpoint storage.

mod common;

use common::RocksDbFactory;
use flowstate_conformance::{conformance_suite, Ctx, MemoryStorageFactory};

conformance_suite!(
    Ctx::new(RocksDbFactory::new(), MemoryStorageFactory::with_max_state_size(64 << 20));
    keyed, snapshot, rescale, ttl, corruption, storage, lifecycle, compat, concurrent
);
