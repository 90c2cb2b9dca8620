//! For storage authors: where checkpoints are written and found again.
//!
//! - `storage.rs`: the storage contract. [`CheckpointStorage`] hands out a
//!   [`CheckpointLocation`] per checkpoint, whose
//!   [`CheckpointOutputStream`]s backends write state through; a
//!   [`StateReader`] reads it back on restore. Also pointers
//!   ([`parse_pointer`], [`metadata_path`]) and file naming.
//! - `blob.rs`: the [`BlobStore`] contract over opaque objects
//!   ([`BlobPath`], [`BlobWriter`]) and the in-memory [`MemoryBlobStore`].
//! - `layout.rs`: [`BlobCheckpointStorage`], the checkpoint layout
//!   (`chk-<n>/`, `shared/`, `taskowned/`, inline state, `_metadata` last,
//!   savepoints) written once over any [`BlobStore`].
//! - `handle.rs`: state handles ([`KeyedStateHandle`],
//!   [`StreamStateHandle`]), the references to snapshot bytes that
//!   backends return and restore from.
//! - `metadata.rs`: [`CheckpointMetadata`], the `_metadata` file that makes
//!   a checkpoint exist.
//! - `memory.rs`: [`MemoryCheckpointStorage`], for tests and small state.
//!
//! A storage is built by implementing [`BlobStore`] for a medium
//! (filesystem, object store, memory) and putting [`BlobCheckpointStorage`]
//! over it, which implements [`CheckpointStorage`]; `flowstate-fs` does
//! exactly that. What happens to completed checkpoints (retention, shared
//! files, garbage collection) is in [`lifecycle`](crate::lifecycle).

mod blob;
mod handle;
mod layout;
mod memory;
mod metadata;
mod storage;

pub use self::blob::{BlobListing, BlobMeta, BlobPath, BlobStore, BlobWriter, MemoryBlobStore};
pub use self::handle::{
    check_restore_handles, validate_relative_path, HandleFile, IncrementalStateHandle, KeyGroupsStateHandle,
    KeyedStateHandle, StreamStateHandle, RESTORE_BATCH_BYTES,
};
pub use self::layout::{
    BlobCheckpointStorage, BlobStateReader, DEFAULT_INLINE_THRESHOLD, DEFAULT_WRITE_CHUNK, MAX_INLINE_THRESHOLD,
    MAX_METADATA_SIZE, SHARED_DIR, TASK_OWNED_DIR,
};
pub use self::memory::{MemoryCheckpointStorage, DEFAULT_MAX_STATE_SIZE};
pub use self::metadata::{CheckpointKind, CheckpointMetadata, OperatorState, METADATA_MAGIC, METADATA_VERSION};
pub use self::storage::{
    checkpoint_dir_id, is_own_file_name, metadata_path, metadata_path_id, parse_pointer, unique_file_name,
    CheckpointLocation, CheckpointOutputStream, CheckpointStorage, InlineReader, ParsedPointer, ResolvedCheckpoint,
    StateReader, StateScope, StorageCapabilities, StoredFile, METADATA_FILE,
};
