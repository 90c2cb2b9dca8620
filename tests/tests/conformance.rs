//! The conformance suite on every backend configuration (heap; RocksDB with
//! incremental checkpoints, with full checkpoints, and with local recovery)
//! and every storage (memory, filesystem, an object store in memory). What runs where is decided by
//! their capabilities; every contract must run on at least one of them.

mod common;

use common::{FsStorageFactory, ObjectStorageFactory, RocksDbFactory};
use flowstate_conformance::{MemoryStorageFactory, Suite};
use flowstate_heap::HeapBackendBuilder;

fn main() {
    Suite::new()
        .storage(FsStorageFactory::new)
        .storage(MemoryStorageFactory::new)
        .storage(ObjectStorageFactory::in_memory)
        .backend(|| HeapBackendBuilder)
        .backend(RocksDbFactory::new)
        .backend(RocksDbFactory::full)
        .backend(RocksDbFactory::with_local_recovery)
        .require_every_contract()
        .run();
}
