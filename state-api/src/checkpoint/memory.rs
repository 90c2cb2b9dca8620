//! In-memory checkpoint storage, like Flink's JobManager memory storage:
//! every state stream is inlined into the checkpoint metadata, which is
//! kept in this process's memory.
//!
//! For tests, demos and small state only. State streams larger than the
//! configured maximum (default 5 MiB) are refused, and checkpoints cannot be
//! resolved once the process that wrote them has ended. It is the
//! checkpoint layout ([`BlobCheckpointStorage`]) over a [`MemoryBlobStore`].

use std::sync::Arc;

use crate::checkpoint::blob::MemoryBlobStore;
use crate::checkpoint::layout::BlobCheckpointStorage;

/// Flink's default maximum state size of the memory storage: 5 MiB.
pub const DEFAULT_MAX_STATE_SIZE: usize = 5 << 20;

/// Checkpoint storage in process memory: builds a [`BlobCheckpointStorage`]
/// whose streams are all inlined, up to a maximum state size.
/// [`BlobCheckpointStorage::for_job`] gives other jobs' storages in the same
/// memory space.
#[derive(Debug, Clone, Copy)]
pub struct MemoryCheckpointStorage;

impl MemoryCheckpointStorage {
    /// Storage for `job_id` (pointers `memory://<job_id>/chk-<n>`) with the
    /// default 5 MiB maximum state size; savepoints go to
    /// `memory://<job_id>/savepoint-…`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(job_id: &str) -> BlobCheckpointStorage {
        let root = format!("memory://{job_id}");
        BlobCheckpointStorage::unchecked(Arc::new(MemoryBlobStore::new(&root)), job_id)
            .volatile()
            .with_max_state_size(DEFAULT_MAX_STATE_SIZE)
            .with_savepoint_dir(root)
    }
}
