//! For engines running jobs: the checkpoint lifecycle on any
//! [`CheckpointStorage`](crate::checkpoint::CheckpointStorage): completing
//! and aborting checkpoints, retaining the newest N, the shared-state
//! registry, restore modes, savepoints, retention on job termination, and
//! garbage collection of orphaned files.
//!
//! - `store.rs`: [`CheckpointStore`] and its configuration: completion
//!   ([`Completion`]), retention and subsumption of [`CompletedCheckpoint`]s,
//!   aborts, claim and no-claim restores ([`RestoreMode`]) and what job
//!   termination keeps ([`JobStatus`], [`CancellationPolicy`]).
//! - `registry.rs`: the [`SharedStateRegistry`], which counts the retained
//!   checkpoints that reference each file.
//! - `release.rs`: [`NativeStateRelease`], what a store calls to release
//!   what native checkpoints pin outside the checkpoint storage.
//! - `gc.rs`: garbage collection of orphaned files
//!   ([`CheckpointStore::collect_garbage`], [`GcOptions`], [`GcReport`]).
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let storage = Arc::new(CheckpointStorage::in_memory("job"));
//! let mut store = CheckpointStore::open(storage, CheckpointStoreConfig::default()).await?;
//! for id in 1..=3 {
//!     let location = store.begin_checkpoint(id).await?;
//!     // ... backends snapshot into `location` ...
//!     store.complete(&location, CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0)).await?;
//! }
//! // The default keeps one checkpoint: 1 and 2 were subsumed.
//! assert_eq!(store.retained().iter().map(|c| c.checkpoint_id).collect::<Vec<_>>(), [3]);
//! # Ok(()) }
//! ```

mod gc;
mod registry;
mod release;
mod store;

pub use self::gc::{GcOptions, GcReport};
pub use self::registry::SharedStateRegistry;
pub use self::release::NativeStateRelease;
pub use self::store::{
    CancellationPolicy, CheckpointStore, CheckpointStoreConfig, CompletedCheckpoint, Completion, JobStatus, RestoreMode,
};
