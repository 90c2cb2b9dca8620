//! For storage implementers: where checkpoints are written and found again.
//!
//! A storage implements one contract, [`BlobStore`] (with [`BlobWriter`]):
//! about six operations on opaque objects, in the spirit of
//! `object_store::ObjectStore`. Everything checkpoint-specific is written
//! once over it, in [`CheckpointStorage`]; a storage crate implements the
//! store for its medium and puts the layout over it, as `flowstate-fs` and
//! `flowstate-object` do.
//!
//! - `blob.rs`: the [`BlobStore`] contract ([`BlobPath`], [`BlobWriter`])
//!   and the in-memory [`MemoryBlobStore`].
//! - `layout.rs`: [`CheckpointStorage`], the checkpoint layout
//!   (`chk-<n>/`, `shared/`, `taskowned/`, inline state, `_metadata` last,
//!   savepoints) over any [`BlobStore`]; its [`CheckpointLocation`]s hand
//!   out the [`CheckpointOutputStream`]s backends write state through, and
//!   a [`StateReader`] reads it back on restore.
//! - `storage.rs`: what storages and readers share: scopes, capabilities,
//!   [`StateReader`], pointers ([`parse_pointer`], [`metadata_path`]) and
//!   file naming.
//! - `handle.rs`: state handles ([`KeyedStateHandle`],
//!   [`StreamStateHandle`]), the references to snapshot bytes that
//!   backends return and restore from, and the operator-state handle
//!   ([`OperatorStateHandle`]).
//! - `metadata.rs`: [`CheckpointMetadata`], the `_metadata` file that makes
//!   a checkpoint exist.
//! - `memory.rs`: [`CheckpointStorage::in_memory`], for tests and small state.
//!
//! What happens to completed checkpoints (retention, shared files, garbage
//! collection) is in [`lifecycle`](crate::lifecycle).
//!
//! A custom store is a [`BlobStore`] implementation; this one wraps another
//! and counts the objects created:
//!
//! ```
//! use std::ops::Range;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use flowstate_api::checkpoint::*;
//! use flowstate_api::{CheckpointStorage, Result};
//!
//! #[derive(Debug)]
//! struct Counting { inner: Arc<dyn BlobStore>, created: AtomicUsize }
//!
//! #[async_trait::async_trait]
//! impl BlobStore for Counting {
//!     fn root(&self) -> &str { self.inner.root() }
//!     async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
//!         self.created.fetch_add(1, Ordering::Relaxed);
//!         self.inner.create(path).await
//!     }
//!     async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
//!         self.inner.put_if_absent(path, data).await
//!     }
//!     async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
//!         self.inner.get_range(path, range).await
//!     }
//!     async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> { self.inner.head(path).await }
//!     async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> { self.inner.list(prefix).await }
//!     async fn delete(&self, paths: &[BlobPath]) -> Result<()> { self.inner.delete(paths).await }
//!     fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> { self.inner.open(location) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = Arc::new(Counting { inner: Arc::new(MemoryBlobStore::new("memory://job")), created: AtomicUsize::new(0) });
//! let storage = CheckpointStorage::new(store.clone(), "job")?.with_inline_threshold(16)?;
//! let location = storage.init_checkpoint(1).await?;
//! let mut stream = location.create_output_stream(StateScope::Exclusive).await?;
//! stream.write(&[7; 100]).await?;
//! stream.close().await?;
//! assert_eq!(store.created.load(Ordering::Relaxed), 1);
//! # Ok(()) }
//! ```

mod blob;
pub(crate) mod handle;
mod layout;
mod memory;
mod metadata;
mod operator_handle;
mod storage;

#[cfg(unix)]
pub use self::blob::file_type_name;
pub use self::blob::{BlobListing, BlobMeta, BlobPath, BlobStore, BlobWriter, MemoryBlobStore};
pub use self::handle::{
    check_restore_handles, validate_relative_path, HandleFile, IncrementalStateHandle, KeyGroupsStateHandle,
    KeyedStateHandle, NativeFormat, StreamStateHandle,
};
pub use self::layout::{
    BlobStateReader, CheckpointLocation, CheckpointOutputStream, CheckpointStorage, DEFAULT_INLINE_THRESHOLD,
    DEFAULT_WRITE_CHUNK, MAX_INLINE_THRESHOLD, MAX_METADATA_SIZE, SHARED_DIR, TASK_OWNED_DIR,
};
pub use self::memory::DEFAULT_MAX_STATE_SIZE;
pub use self::metadata::{CheckpointKind, CheckpointMetadata, OperatorState, METADATA_MAGIC, METADATA_VERSION};
pub use self::operator_handle::{DistributionMode, OperatorStateBlock, OperatorStateHandle};
pub(crate) use self::storage::UnclaimedReader;
pub use self::storage::{
    checkpoint_dir_id, is_own_file_name, metadata_path, metadata_path_id, parse_pointer, unique_file_name,
    InlineReader, ParsedPointer, ResolvedCheckpoint, StateReader, StateScope, StorageCapabilities, StoredFile,
    METADATA_FILE,
};
