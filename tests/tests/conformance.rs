//! The conformance suite on every backend configuration (heap; RocksDB with
//! incremental checkpoints, with full checkpoints, and with local recovery)
//! and every storage (memory, filesystem). What runs where is decided by
//! their capabilities; every contract must run on at least one of them.

mod common;

use common::{FsStorageFactory, RocksDbFactory};
use flowstate_conformance::{MemoryStorageFactory, Suite};
use flowstate_heap::HeapBackendBuilder;

fn main() {
    Suite::new()
        .storage(MemoryStorageFactory::new)
        .storage(FsStorageFactory::new)
        .backend(|| HeapBackendBuilder)
        .backend(RocksDbFactory::new)
        .backend(RocksDbFactory::full)
        .backend(RocksDbFactory::with_local_recovery)
        .require_every_contract()
        .run();
}
