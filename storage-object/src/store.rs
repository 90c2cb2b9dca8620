//! [`ObjectBlobStore`]: the blob contract over an [`ObjectStore`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::checkpoint::{BlobListing, BlobMeta, BlobPath, BlobStore, BlobWriter};
use flowstate_api::{Error, ErrorKind, Result};
use futures::{StreamExt, TryStreamExt};

use crate::entropy::{join, Entropy, ENTROPY_MARKER, MAX_ENTROPY_LENGTH};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};

/// Bytes per part of a multipart upload: S3's minimum part size is 5 MiB.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts of one object uploaded at once.
pub const DEFAULT_PART_CONCURRENCY: usize = 4;

/// An [`ObjectStore`] under a key prefix, as a [`BlobStore`].
#[derive(Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The store's location (`s3://bucket`), without a trailing slash.
    base: String,
    /// Keys are `<prefix>/<blob path>` (without entropy).
    prefix: Path,
    /// `<base>/<prefix>`: the root as pointers write it.
    root: String,
    /// Where data-file keys get entropy, if they do.
    entropy: Option<Entropy>,
    part_size: usize,
    part_concurrency: usize,
}

impl fmt::Debug for ObjectBlobStore {
    /// The root and settings; never the store's configuration, which may
    /// hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobStore")
            .field("root", &self.root)
            .field("entropy", &self.entropy.as_ref().map(|e| e.length))
            .field("part_size", &self.part_size)
            .field("part_concurrency", &self.part_concurrency)
            .finish_non_exhaustive()
    }
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
        let root = root_of(&base, prefix);
        Ok(ObjectBlobStore {
            store,
            base,
            prefix: Path::from(prefix),
            root,
            entropy: None,
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

    /// With entropy injection: the prefix's [`ENTROPY_MARKER`] segment
    /// becomes `length` hex digits (1 to [`MAX_ENTROPY_LENGTH`]) in the keys
    /// of data files, and is dropped from the keys of `_metadata` objects
    /// and from the root that pointers name. Listing a directory costs one
    /// request per entropy value in use (at most 16^`length`), so a short
    /// `length` (1 or 2) spreads load well enough for most jobs.
    pub fn with_entropy(mut self, length: usize) -> Result<Self> {
        if !(1..=MAX_ENTROPY_LENGTH).contains(&length) {
            return Err(Error::invalid(format!(
                "entropy length {length} is not between 1 and {MAX_ENTROPY_LENGTH}"
            )));
        }
        let prefix = self.prefix.as_ref().to_string();
        let Some(entropy) = Entropy::split(&prefix, length) else {
            return Err(Error::invalid(format!(
                "entropy injection needs the segment {ENTROPY_MARKER} in the prefix, and {:?} has none",
                prefix
            )));
        };
        self.prefix = entropy.prefix(None);
        self.root = root_of(&self.base, self.prefix.as_ref());
        self.entropy = Some(entropy);
        Ok(self)
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key prefix, without entropy (empty for the whole store).
    pub fn prefix(&self) -> &str {
        self.prefix.as_ref()
    }

    /// The key of `path`: with entropy for data files when it is on.
    fn key(&self, path: &BlobPath) -> Path {
        let base = match &self.entropy {
            Some(e) if Entropy::applies(path.as_str()) => e.prefix(Some(&e.value(path.as_str()))),
            _ => self.prefix.clone(),
        };
        join(&base, path.as_str().split('/'))
    }

    /// The key of `path` without entropy (where data files were written
    /// before entropy was turned on), if that differs from [`Self::key`].
    fn plain_key(&self, path: &BlobPath) -> Option<Path> {
        (self.entropy.is_some() && Entropy::applies(path.as_str()))
            .then(|| join(&self.prefix, path.as_str().split('/')))
    }

    /// The blob path of `key` under `prefix`, if it is a valid path and,
    /// under an entropy prefix, its entropy is `value`. Keys hold each part
    /// percent-encoded as [`join`] wrote it (`100%` is `100%25`); the blob
    /// path is the name as written.
    fn blob_path_under(&self, prefix: &Path, value: Option<&str>, key: &Path) -> Option<BlobPath> {
        let rest = key
            .prefix_match(prefix)?
            .map(|p| {
                percent_encoding::percent_decode_str(p.as_ref())
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            })
            .collect::<Option<Vec<String>>>()?;
        let path = BlobPath::new(&rest.join("/")).ok()?;
        match (&self.entropy, value) {
            (Some(e), Some(v)) if e.value(path.as_str()) != v => None,
            _ => Some(path),
        }
    }

    fn meta_under(&self, prefix: &Path, value: Option<&str>, m: &ObjectMeta) -> Option<BlobMeta> {
        Some(BlobMeta {
            path: self.blob_path_under(prefix, value, &m.location)?,
            size: m.size,
            modified_millis: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
        })
    }

    /// The trees a listing covers: the plain prefix, and with entropy every
    /// entropy prefix in use, each with its entropy value.
    async fn trees(&self) -> Result<Vec<(Path, Option<String>)>> {
        let mut trees = vec![(self.prefix.clone(), None)];
        if let Some(e) = &self.entropy {
            let before = e.before_key();
            let listed = self
                .store
                .list_with_delimiter(Some(&before))
                .await
                .map_err(|err| store_err(format!("listing the entropy prefixes of {}", self.root), err))?;
            for dir in &listed.common_prefixes {
                if let Some(value) = dir.filename().filter(|v| e.is_value(v)) {
                    trees.push((e.prefix(Some(value)), Some(value.to_string())));
                }
            }
        }
        Ok(trees)
    }
}

impl ObjectBlobStore {
    /// The key `path` is stored under and its metadata, if it exists: its
    /// key, or without entropy where it was written before entropy was on.
    async fn head_key(&self, path: &BlobPath) -> Result<Option<(Path, ObjectMeta)>> {
        let name = || format!("looking up {}/{}", self.root, path.as_str());
        for key in std::iter::once(self.key(path)).chain(self.plain_key(path)) {
            match self.store.head(&key).await {
                Ok(m) => return Ok(Some((key, m))),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(name(), e)),
            }
        }
        Ok(None)
    }

    /// The key and size of `path`, if it exists.
    async fn locate(&self, path: &BlobPath) -> Result<Option<(Path, u64)>> {
        Ok(self.head_key(path).await?.map(|(k, m)| (k, m.size)))
    }
}

/// The location of `prefix` in the store at `base`: `s3://bucket/prefix`,
/// or `file:///prefix` for a base without an authority (`file:`).
fn root_of(base: &str, prefix: &str) -> String {
    match (base.ends_with(':'), prefix.is_empty()) {
        (true, _) => format!("{base}///{prefix}"),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}/{prefix}"),
    }
}

/// Attempts of a create-if-absent whose outcome is unknown.
const PUT_IF_ABSENT_ATTEMPTS: u32 = 5;

/// Listings of this many trees run at once.
const LIST_CONCURRENCY: usize = 16;

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
            put_parts(upload, self.buf.drain(..));
            self.buffered = 0;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        match self.upload.take() {
            Some(mut upload) => {
                put_parts(&mut upload, self.buf.drain(..));
                if let Err(e) = on_tokio(upload.finish()).await? {
                    return Err(store_err(format!("completing the upload of {}", self.name), e));
                }
            }
            None => {
                // Names of written objects are unique, so an overwrite is
                // safe, and, being idempotent, retried when a response is lost.
                let payload = PutPayload::from_iter(self.buf.drain(..));
                self.store
                    .put_opts(&self.key, payload, PutOptions::default())
                    .await
                    .map_err(|e| store_err(format!("writing {}", self.name), e))?;
            }
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            if let Ok(Err(e)) = on_tokio(upload.abort()).await {
                tracing::warn!(object = %self.name, error = %e, "an aborted upload was left for the store to expire");
            }
        }
    }
}

/// Hands `chunks` to `upload`, which spawns part uploads on Tokio: on the
/// caller's runtime, or outside one (an engine on another executor) on the
/// I/O runtime of this crate.
fn put_parts(upload: &mut WriteMultipart, chunks: impl Iterator<Item = Bytes>) {
    let io = match tokio::runtime::Handle::try_current() {
        Ok(_) => None,
        Err(_) => flowstate_api::runtime::io_runtime(),
    };
    let _context = io.as_ref().map(|h| h.enter());
    for b in chunks {
        upload.put(b);
    }
}

/// Runs `fut`, which may spawn on Tokio, on the caller's runtime, or outside
/// one on the I/O runtime of this crate.
async fn on_tokio<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Ok(fut.await);
    }
    let io =
        flowstate_api::runtime::io_runtime().ok_or_else(|| Error::internal("no runtime for object store uploads"))?;
    io.spawn(fut)
        .await
        .map_err(|e| Error::internal(format!("an object store upload task ended: {e}")))
}

impl Drop for ObjectWriter {
    /// A writer dropped mid-upload aborts the upload in the background.
    fn drop(&mut self) {
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(flowstate_api::runtime::io_runtime);
        if let (Some(upload), Some(handle)) = (self.upload.take(), handle) {
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
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let error = match self.store.put_opts(&key, data.clone().into(), opts).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            // A create whose response was lost may have happened: the
            // store does not retry it blind, so read back. The same bytes
            // are our own write (also when a retried create finds it);
            // other bytes are a conflict; nothing there means it can be
            // tried again.
            let exists = matches!(error, object_store::Error::AlreadyExists { .. });
            match self.store.get(&key).await {
                Ok(r) => match r.bytes().await {
                    Ok(bytes) if bytes == data => return Ok(()),
                    Ok(_) => return Err(Error::new(ErrorKind::Conflict, format!("{name} already exists"))),
                    Err(_) if attempt < PUT_IF_ABSENT_ATTEMPTS => {}
                    Err(e) => return Err(store_err(format!("reading back {name}"), e)),
                },
                Err(object_store::Error::NotFound { .. }) if !exists && attempt < PUT_IF_ABSENT_ATTEMPTS => {}
                Err(_) if attempt < PUT_IF_ABSENT_ATTEMPTS => {}
                Err(_) => return Err(store_err(format!("writing {name}"), error)),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(6))).await;
        }
    }

    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let mut parts = self.get_ranges(path, std::slice::from_ref(&range)).await?;
        parts
            .pop()
            .ok_or_else(|| Error::internal("a ranged read returned nothing"))
    }

    async fn get_ranges(&self, path: &BlobPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let name = || format!("{}/{}", self.root, path.as_str());
        // One range (a chunk of a download): one ranged GET, which also
        // tells the object's size. Anything unusual (a range past the end,
        // a missing object, a key without entropy) takes the path below.
        if let [range] = ranges {
            if !range.is_empty() {
                let options = GetOptions::new().with_range(Some(range.clone()));
                if let Ok(got) = self.store.get_opts(&self.key(path), options).await {
                    let end = range.end.min(got.meta.size);
                    let bytes = got
                        .bytes()
                        .await
                        .map_err(|e| store_err(format!("reading {}", name()), e))?;
                    if bytes.len() as u64 != end.saturating_sub(range.start) {
                        return Err(Error::corrupted(format!(
                            "{}: asked for {} bytes at {}, got {}",
                            name(),
                            end.saturating_sub(range.start),
                            range.start,
                            bytes.len()
                        )));
                    }
                    return Ok(vec![bytes]);
                }
            }
        }
        let Some((key, size)) = self.locate(path).await? else {
            return Err(Error::not_found(format!("{} does not exist", name())));
        };
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
        let located = self.head_key(path).await?;
        Ok(located.map(|(_, m)| BlobMeta {
            path: path.clone(),
            size: m.size,
            modified_millis: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
        }))
    }

    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        let trees = self.trees().await?;
        let listings = futures::stream::iter(trees)
            .map(|(tree, value)| async move {
                let key = prefix.map_or_else(|| tree.clone(), |p| join(&tree, p.as_str().split('/')));
                let metas: Vec<ObjectMeta> = self
                    .store
                    .list(Some(&key))
                    .try_collect()
                    .await
                    .map_err(|e| store_err(format!("listing {}", self.root), e))?;
                Ok::<_, Error>(
                    metas
                        .iter()
                        .filter_map(|m| self.meta_under(&tree, value.as_deref(), m))
                        .collect::<Vec<_>>(),
                )
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut all: Vec<BlobMeta> = listings.into_iter().flatten().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all.dedup_by(|a, b| a.path == b.path);
        Ok(all)
    }

    async fn list_level(&self, prefix: Option<&BlobPath>) -> Result<BlobListing> {
        let trees = self.trees().await?;
        let listings = futures::stream::iter(trees)
            .map(|(tree, value)| async move {
                let key = prefix.map_or_else(|| tree.clone(), |p| join(&tree, p.as_str().split('/')));
                let result = self
                    .store
                    .list_with_delimiter(Some(&key))
                    .await
                    .map_err(|e| store_err(format!("listing {}", self.root), e))?;
                let objects: Vec<BlobMeta> = result
                    .objects
                    .iter()
                    .filter_map(|m| self.meta_under(&tree, value.as_deref(), m))
                    .collect();
                // A directory's own path has no entropy of its own to check.
                let dirs: Vec<BlobPath> = result
                    .common_prefixes
                    .iter()
                    .filter_map(|p| self.blob_path_under(&tree, None, p))
                    .collect();
                Ok::<_, Error>((objects, dirs))
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let mut listing = BlobListing {
            objects: Vec::new(),
            dirs: Vec::new(),
        };
        for (objects, dirs) in listings {
            listing.objects.extend(objects);
            listing.dirs.extend(dirs);
        }
        listing.objects.sort_by(|a, b| a.path.cmp(&b.path));
        listing.objects.dedup_by(|a, b| a.path == b.path);
        listing.dirs.sort();
        listing.dirs.dedup();
        Ok(listing)
    }

    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        let keys: Vec<object_store::Result<Path>> = paths
            .iter()
            .flat_map(|p| std::iter::once(self.key(p)).chain(self.plain_key(p)))
            .map(Ok)
            .collect();
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
            Some(p) => p.trim_start_matches('/'),
            None if prefix.is_empty() => "",
            None => {
                return Err(Error::unsupported(format!(
                    "{location:?} is not in this object store ({})",
                    self.base
                )))
            }
        };
        if prefix == self.prefix.as_ref() {
            return Ok(Arc::new(self.clone()));
        }
        let mut store = ObjectBlobStore::new(Arc::clone(&self.store), &self.base, prefix)?;
        store.part_size = self.part_size;
        store.part_concurrency = self.part_concurrency;
        // Another job's checkpoints, a savepoint directory: the same entropy
        // where it is under the same leading segments.
        store.entropy = self.entropy.as_ref().and_then(|e| e.for_prefix(prefix));
        Ok(Arc::new(store))
    }
}
