//! The conformance suite on every backend configuration (heap; RocksDB with
//! incremental checkpoints, with full checkpoints, and with local recovery)
//! and every storage (memory, filesystem, an object store in memory with and
//! without entropy injection, and the real S3-compatible server that
//! `scripts/test.sh` starts). What runs where is decided by their
//! capabilities; every contract must run on at least one of them.

mod common;

use common::{FsStorageFactory, ObjectStorageFactory, RocksDbFactory, S3Server};
use flowstate_conformance::{MemoryStorageFactory, Suite};
use flowstate_heap::HeapBackendFactory;

fn main() {
    let mut suite = Suite::new()
        .storage(FsStorageFactory::new)
        .storage(MemoryStorageFactory::new)
        .storage(ObjectStorageFactory::in_memory)
        .storage(ObjectStorageFactory::in_memory_with_entropy);
    if S3Server::from_env().is_some() {
        suite = suite.storage(ObjectStorageFactory::s3);
    }
    suite
        .backend(HeapBackendFactory::new)
        .backend(HeapBackendFactory::incremental)
        .backend(RocksDbFactory::new)
        .backend(RocksDbFactory::full)
        .backend(RocksDbFactory::with_local_recovery)
        .require_every_contract()
        .run();
}
