//! For engines running jobs: the checkpoint lifecycle on any
//! [`CheckpointStorage`](crate::checkpoint::CheckpointStorage).

mod store;

pub use self::store::{
    CancellationPolicy, CheckpointStore, CheckpointStoreConfig, CompletedCheckpoint, Completion, GcOptions, GcReport,
    JobStatus, RestoreMode, SharedStateRegistry,
};
