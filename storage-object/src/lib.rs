//! Object-store checkpoint storage for flowstate: the checkpoint layout of
//! [`CheckpointStorage`](flowstate_api::CheckpointStorage) over [`ObjectBlobStore`], an adapter of the
//! [`BlobStore`](flowstate_api::checkpoint::BlobStore) contract to any [`ObjectStore`](object_store::ObjectStore) (S3, GCS, Azure Blob, a
//! local directory, memory). `object_store` is re-exported so an engine
//! shares one version with us.
//!
//! What the adapter adds to the contract: large objects stream through
//! multipart uploads of [`DEFAULT_PART_SIZE`]-byte parts with bounded
//! memory, and an aborted or failed stream aborts its upload; small objects
//! are one conditional `PUT`; `put_if_absent` is a create-if-absent `PUT`
//! (`If-None-Match: *` on S3), and a create that comes back `AlreadyExists`
//! after a retry is read back and compared before it is called a conflict;
//! ranged reads fetch only the bytes asked for (several at once through
//! `get_ranges`, which coalesces close ranges); finding the latest
//! checkpoint lists one level (`list_with_delimiter`).
//!
//! [`ObjectStoreBuilder`] builds a store from a URL (`s3://`, `gs://`,
//! `az://`, `file://`, `memory://`) and options, refusing unknown option
//! keys by name; [`ObjectBlobStore::new`] wraps an `Arc<dyn ObjectStore>` the
//! engine already has. Retries for throttling and transient errors follow
//! `object_store`'s [`RetryConfig`](object_store::RetryConfig). Optional
//! entropy injection spreads data files over key prefixes (see
//! [`ObjectBlobStore::with_entropy`]). HTTPS uses rustls with `ring`.
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//! use flowstate_object::{object_store::memory::InMemory, ObjectBlobStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = ObjectBlobStore::new(Arc::new(InMemory::new()), "memory://bucket", "checkpoints/my-job")?;
//! let storage = CheckpointStorage::new(Arc::new(store), "my-job")?;
//! let location = storage.init_checkpoint(1).await?;
//! let pointer = location.write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)).await?;
//! assert_eq!(pointer, "memory://bucket/checkpoints/my-job/chk-1");
//! assert_eq!(storage.latest_checkpoint().await?.map(|c| c.metadata.checkpoint_id), Some(1));
//! # Ok(()) }
//! ```

mod builder;
mod entropy;
mod local;
mod store;

pub use builder::{ObjectStoreBuilder, DEFAULT_ENTROPY_LENGTH, FLOWSTATE_OPTION_KEYS};
pub use entropy::{ENTROPY_MARKER, MAX_ENTROPY_LENGTH};
pub use local::LocalFiles;
pub use object_store;
pub use store::{ObjectBlobStore, DEFAULT_PART_CONCURRENCY, DEFAULT_PART_SIZE};
