//! In-memory checkpoint storage, like Flink's JobManager memory storage:
//! every state stream is inlined into the checkpoint metadata, which is
//! kept in this process's memory.
//!
//! For tests, demos and small state only. State streams larger than the
//! configured maximum (default 5 MiB) are refused, and checkpoints cannot be
//! resolved once the process that wrote them has ended. It is the
//! checkpoint layout ([`CheckpointStorage`]) over a [`MemoryBlobStore`].

use std::sync::Arc;

use crate::checkpoint::blob::MemoryBlobStore;
use crate::checkpoint::layout::CheckpointStorage;

/// Flink's default maximum state size of the memory storage: 5 MiB.
pub const DEFAULT_MAX_STATE_SIZE: usize = 5 << 20;

impl CheckpointStorage {
    /// Checkpoint storage in process memory for `job_id` (pointers
    /// `memory://<job_id>/chk-<n>`): every stream is inlined into the
    /// metadata, up to the default 5 MiB maximum state size, and
    /// checkpoints end with the process. Savepoints go to
    /// `memory://<job_id>/savepoint-…`; [`for_job`](CheckpointStorage::for_job)
    /// gives other jobs' storages in the same memory space.
    pub fn in_memory(job_id: &str) -> CheckpointStorage {
        let root = format!("memory://{job_id}");
        CheckpointStorage::unchecked(Arc::new(MemoryBlobStore::new(&root)), job_id)
            .volatile()
            .with_max_state_size(DEFAULT_MAX_STATE_SIZE)
            .with_savepoint_dir(root)
    }
}
