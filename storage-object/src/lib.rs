//! Object-store checkpoint storage for flowstate: the checkpoint layout of
//! [`BlobCheckpointStorage`](flowstate_api::BlobCheckpointStorage) over [`ObjectBlobStore`], an adapter of the
//! [`BlobStore`] contract to any [`ObjectStore`] (S3, GCS, Azure Blob, a
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
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//! use flowstate_object::{object_store::memory::InMemory, ObjectBlobStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = ObjectBlobStore::new(Arc::new(InMemory::new()), "memory://bucket", "checkpoints/my-job")?;
//! let storage = BlobCheckpointStorage::new(Arc::new(store), "my-job")?;
//! let location = storage.init_checkpoint(1).await?;
//! let pointer = location.write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)).await?;
//! assert_eq!(pointer, "memory://bucket/checkpoints/my-job/chk-1");
//! assert_eq!(storage.latest_checkpoint().await?.map(|c| c.metadata.checkpoint_id), Some(1));
//! # Ok(()) }
//! ```

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::{BlobListing, BlobMeta, BlobPath, BlobStore, BlobWriter, Error, ErrorKind, Result};
use futures::{StreamExt, TryStreamExt};
pub use object_store;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

/// Bytes per part of a multipart upload: S3's minimum part size is 5 MiB.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts of one object uploaded at once.
pub const DEFAULT_PART_CONCURRENCY: usize = 4;

/// An [`ObjectStore`] under a key prefix, as a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The store's location (`s3://bucket`), without a trailing slash.
    base: String,
    /// Keys are `<prefix>/<blob path>`.
    prefix: Path,
    /// `<base>/<prefix>`: the root as pointers write it.
    root: String,
    part_size: usize,
    part_concurrency: usize,
}

impl ObjectBlobStore {
    /// `store` (whose location `base` names, e.g. `s3://bucket`) under the
    /// key prefix `prefix` (`checkpoints/my-job`; empty for the whole
    /// store). The prefix must be a relative path without `..`.
    pub fn new(store: Arc<dyn ObjectStore>, base: &str, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            BlobPath::new(prefix).map_err(|e| e.context(format!("object store prefix {prefix:?}")))?;
        }
        let base = base.trim_end_matches('/').to_string();
        let root = if prefix.is_empty() {
            base.clone()
        } else {
            format!("{base}/{prefix}")
        };
        Ok(ObjectBlobStore {
            store,
            base,
            prefix: Path::from(prefix),
            root,
            part_size: DEFAULT_PART_SIZE,
            part_concurrency: DEFAULT_PART_CONCURRENCY,
        })
    }

    /// With parts of `bytes` (at least 5 MiB, S3's minimum) and `concurrency`
    /// parts in flight per object.
    pub fn with_parts(mut self, bytes: usize, concurrency: usize) -> Result<Self> {
        if bytes < 5 << 20 {
            return Err(Error::invalid(format!(
                "multipart part size {bytes} is below the 5 MiB object stores require"
            )));
        }
        self.part_size = bytes;
        self.part_concurrency = concurrency.max(1);
        Ok(self)
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of `path`.
    fn key(&self, path: &BlobPath) -> Path {
        let mut key = self.prefix.clone();
        for part in path.as_str().split('/') {
            key = key.clone().join(part);
        }
        key
    }

    /// The blob path of `key`, if it is under the prefix and a valid path.
    fn blob_path(&self, key: &Path) -> Option<BlobPath> {
        let rest: Vec<_> = key
            .prefix_match(&self.prefix)?
            .map(|p| p.as_ref().to_string())
            .collect();
        BlobPath::new(&rest.join("/")).ok()
    }

    fn meta(&self, m: &ObjectMeta) -> Option<BlobMeta> {
        Some(BlobMeta {
            path: self.blob_path(&m.location)?,
            size: m.size,
            modified_millis: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
        })
    }
}

/// Maps an `object_store` error, naming `what`.
fn store_err(what: impl std::fmt::Display, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => ErrorKind::Conflict,
        E::NotSupported { .. } | E::NotImplemented { .. } => ErrorKind::Unsupported,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Invalid,
        E::InvalidPath { .. } => ErrorKind::Invalid,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("{what}: {e}")).with_source(e)
}

/// A new object: buffered until a part is full, then a multipart upload.
struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    name: String,
    part_size: usize,
    part_concurrency: usize,
    buf: Vec<Bytes>,
    buffered: usize,
    upload: Option<WriteMultipart>,
}

impl ObjectWriter {
    async fn start(&mut self) -> Result<()> {
        let upload = self
            .store
            .put_multipart(&self.key)
            .await
            .map_err(|e| store_err(format!("starting the upload of {}", self.name), e))?;
        self.upload = Some(WriteMultipart::new_with_chunk_size(upload, self.part_size));
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for ObjectWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buffered += data.len();
        self.buf.push(data);
        if self.upload.is_none() && self.buffered < self.part_size {
            return Ok(());
        }
        if self.upload.is_none() {
            self.start().await?;
        }
        if let Some(upload) = &mut self.upload {
            upload
                .wait_for_capacity(self.part_concurrency)
                .await
                .map_err(|e| store_err(format!("uploading {}", self.name), e))?;
            for b in self.buf.drain(..) {
                upload.put(b);
            }
            self.buffered = 0;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        match self.upload.take() {
            Some(mut upload) => {
                for b in self.buf.drain(..) {
                    upload.put(b);
                }
                if let Err(e) = upload.finish().await {
                    return Err(store_err(format!("completing the upload of {}", self.name), e));
                }
            }
            None => {
                let payload = PutPayload::from_iter(self.buf.drain(..));
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.store
                    .put_opts(&self.key, payload, opts)
                    .await
                    .map_err(|e| store_err(format!("writing {}", self.name), e))?;
            }
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(object = %self.name, error = %e, "an aborted upload was left for the store to expire");
            }
        }
    }
}

impl Drop for ObjectWriter {
    /// A writer dropped mid-upload aborts the upload in the background.
    fn drop(&mut self) {
        if let (Some(upload), Ok(handle)) = (self.upload.take(), tokio::runtime::Handle::try_current()) {
            handle.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    fn root(&self) -> &str {
        &self.root
    }

    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(ObjectWriter {
            store: Arc::clone(&self.store),
            key: self.key(path),
            name: format!("{}/{}", self.root, path.as_str()),
            part_size: self.part_size,
            part_concurrency: self.part_concurrency,
            buf: Vec::new(),
            buffered: 0,
            upload: None,
        }))
    }

    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        let key = self.key(path);
        let name = format!("{}/{}", self.root, path.as_str());
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(&key, data.clone().into(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // A create retried after a lost response finds its own
                // write: the same bytes are not a conflict.
                let existing = match self.store.get(&key).await {
                    Ok(r) => r.bytes().await,
                    Err(e) => Err(e),
                };
                match existing {
                    Ok(bytes) if bytes == data => Ok(()),
                    _ => Err(Error::new(ErrorKind::Conflict, format!("{name} already exists"))),
                }
            }
            Err(e) => Err(store_err(format!("writing {name}"), e)),
        }
    }

    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let mut parts = self.get_ranges(path, std::slice::from_ref(&range)).await?;
        parts
            .pop()
            .ok_or_else(|| Error::internal("a ranged read returned nothing"))
    }

    async fn get_ranges(&self, path: &BlobPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let key = self.key(path);
        let name = || format!("{}/{}", self.root, path.as_str());
        let size = self
            .store
            .head(&key)
            .await
            .map_err(|e| store_err(format!("reading {}", name()), e))?
            .size;
        // Clamped to the object: fewer bytes where it ends first.
        let clamped: Vec<Range<u64>> = ranges
            .iter()
            .map(|r| r.start.min(size)..r.end.min(size).max(r.start.min(size)))
            .collect();
        let wanted: Vec<Range<u64>> = clamped.iter().filter(|r| !r.is_empty()).cloned().collect();
        let mut fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            self.store
                .get_ranges(&key, &wanted)
                .await
                .map_err(|e| store_err(format!("reading {}", name()), e))?
        }
        .into_iter();
        clamped
            .iter()
            .map(|r| {
                if r.is_empty() {
                    return Ok(Bytes::new());
                }
                let b = fetched
                    .next()
                    .ok_or_else(|| Error::internal("a ranged read returned too few parts"))?;
                if b.len() as u64 != r.end - r.start {
                    return Err(Error::corrupted(format!(
                        "{}: asked for {} bytes at {}, got {}",
                        name(),
                        r.end - r.start,
                        r.start,
                        b.len()
                    )));
                }
                Ok(b)
            })
            .collect()
    }

    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
        match self.store.head(&self.key(path)).await {
            Ok(m) => Ok(Some(BlobMeta {
                path: path.clone(),
                size: m.size,
                modified_millis: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(format!("looking up {}/{}", self.root, path.as_str()), e)),
        }
    }

    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        let key = prefix.map_or_else(|| self.prefix.clone(), |p| self.key(p));
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&key))
            .try_collect()
            .await
            .map_err(|e| store_err(format!("listing {}", self.root), e))?;
        Ok(metas.iter().filter_map(|m| self.meta(m)).collect())
    }

    async fn list_level(&self, prefix: Option<&BlobPath>) -> Result<BlobListing> {
        let key = prefix.map_or_else(|| self.prefix.clone(), |p| self.key(p));
        let result = self
            .store
            .list_with_delimiter(Some(&key))
            .await
            .map_err(|e| store_err(format!("listing {}", self.root), e))?;
        Ok(BlobListing {
            objects: result.objects.iter().filter_map(|m| self.meta(m)).collect(),
            dirs: result
                .common_prefixes
                .iter()
                .filter_map(|p| self.blob_path(p))
                .collect(),
        })
    }

    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        let keys: Vec<object_store::Result<Path>> = paths.iter().map(|p| Ok(self.key(p))).collect();
        let mut results = self.store.delete_stream(futures::stream::iter(keys).boxed());
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(format!("deleting under {}", self.root), e)),
            }
        }
        Ok(())
    }

    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
        let location = location.trim_end_matches('/');
        let Some(prefix) = location.strip_prefix(&self.base) else {
            return Err(Error::unsupported(format!(
                "{location:?} is not in this object store ({}); give a location under it",
                self.base
            )));
        };
        let prefix = match prefix.strip_prefix('/') {
            Some(p) => p,
            None if prefix.is_empty() => "",
            None => {
                return Err(Error::unsupported(format!(
                    "{location:?} is not in this object store ({})",
                    self.base
                )))
            }
        };
        let mut store = ObjectBlobStore::new(Arc::clone(&self.store), &self.base, prefix)?;
        store.part_size = self.part_size;
        store.part_concurrency = self.part_concurrency;
        Ok(Arc::new(store))
    }
}
