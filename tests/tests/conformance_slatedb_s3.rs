//! The conformance suite on the SlateDB backend with its databases and its
//! checkpoints on the S3-compatible server that `scripts/test.sh` starts
//! (`slatedb-s3/s3/…`).
//!
//! Some contracts are listed but ignored here, with the reason; they run on
//! the backend's in-memory object store in `conformance_slatedb`, and
//! nothing they check depends on the object store: the randomized
//! interleavings of `concurrent` (several thousand SlateDB requests per
//! seed, over ten minutes against this server) and the byte-by-byte
//! `corruption` sweeps (one restore, so one database opened, per byte).

mod common;

use common::{ObjectStorageFactory, S3Server, SlateDbFactory};
use flowstate_conformance::Suite;
use libtest_mimic::{Arguments, Completion, Trial};

/// Contracts that run on the in-memory object store only.
const IN_MEMORY_ONLY: [&str; 4] = [
    "concurrent/interleaved_checkpoints_restore_exactly",
    "concurrent/overlapping_checkpoints_keep_reused_files",
    "corruption/every_byte_flip_of_a_snapshot_is_refused",
    "corruption/every_truncation_of_a_snapshot_is_refused",
];

fn main() {
    let args = Arguments::from_args();
    let trials: Vec<Trial> = match S3Server::from_env() {
        Some(_) => Suite::new()
            .storage(ObjectStorageFactory::s3)
            .backend(SlateDbFactory::s3)
            .trials()
            .into_iter()
            .map(|t| {
                if IN_MEMORY_ONLY.iter().any(|c| t.name().ends_with(c)) {
                    let name = t.name().to_string();
                    Trial::ignorable_test(name, || {
                        Ok(Completion::ignored_with(
                            "runs on the in-memory object store (conformance_slatedb): thousands of databases or \
                             requests, over ten minutes on this server",
                        ))
                    })
                    .with_ignored_flag(true)
                } else {
                    t
                }
            })
            .collect(),
        None => Vec::new(),
    };
    libtest_mimic::run(&args, trials).exit()
}
