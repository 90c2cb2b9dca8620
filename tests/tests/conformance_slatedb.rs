//! The conformance suite on the SlateDB backend, its databases in an
//! in-memory object store, with checkpoints in memory (`slatedb/memory/…`).
//! `conformance_slatedb_s3` runs it on the S3-compatible server. What runs
//! is decided by the backend's capabilities.

mod common;

use common::SlateDbFactory;
use flowstate_conformance::{MemoryStorageFactory, Suite};

fn main() {
    Suite::new()
        .storage(MemoryStorageFactory::new)
        .backend(SlateDbFactory::new)
        .run();
}
