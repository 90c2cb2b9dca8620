//! The conformance suite on the RocksDB backend with filesystem checkpoint
//! storage: incremental checkpoints, and full canonical checkpoints.

mod common;

use common::{FsStorageFactory, RocksDbFactory};
use flowstate_conformance::{conformance_suite, Ctx};

conformance_suite!(
    Ctx::new(RocksDbFactory::new(), FsStorageFactory::new());
    keyed, snapshot, rescale, ttl, corruption, storage, lifecycle, lifecycle_files, compat, concurrent
);

mod full {
    use super::*;

    conformance_suite!(
        Ctx::new(RocksDbFactory::full(), FsStorageFactory::new());
        snapshot, rescale, lifecycle, compat, concurrent
    );
}
