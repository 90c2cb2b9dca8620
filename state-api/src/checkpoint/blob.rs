//! Where checkpoint bytes live: a small, object-safe contract over opaque
//! objects, in the spirit of `object_store::ObjectStore`. A storage adapter
//! (filesystem, object store, memory) implements [`BlobStore`]; the
//! checkpoint layout (`chk-<n>/`, `shared/`, `taskowned/`, inline state,
//! `_metadata` last, pointers, savepoints) is written once over it, in
//! [`CheckpointStorage`](crate::checkpoint::CheckpointStorage).
//!
//! ```
//! use flowstate_api::*;
//! use flowstate_api::checkpoint::{BlobPath, BlobStore, MemoryBlobStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = MemoryBlobStore::new("memory://demo");
//! let path = BlobPath::new("chk-1/_metadata")?;
//! store.put_if_absent(&path, bytes::Bytes::from_static(b"meta")).await?;
//! assert_eq!(store.get_range(&path, 0..2).await?, &b"me"[..]);
//! assert_eq!(store.head(&path).await?.map(|m| m.size), Some(4));
//! assert!(BlobPath::new("../escape").is_err());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::checkpoint::handle::validate_relative_path;
use crate::error::{Error, ErrorKind, Result};

/// The path of an object, relative to a store's root: `/`-separated
/// components, none empty, `.` or `..`, without NUL, `\` or `:`. It cannot
/// name anything outside the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobPath(String);

impl BlobPath {
    /// Checks and wraps a relative path.
    pub fn new(path: &str) -> Result<Self> {
        validate_relative_path(path)?;
        Ok(BlobPath(path.to_string()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with `name` (one or more components) appended.
    pub fn join(&self, name: &str) -> Result<Self> {
        BlobPath::new(&format!("{}/{name}", self.0))
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Debug for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a store knows of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its path.
    pub path: BlobPath,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification, in milliseconds since the Unix epoch (0 if unknown).
    pub modified_millis: u64,
}

/// One level of a listing: see [`BlobStore::list_level`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobListing {
    /// The objects directly under the prefix.
    pub objects: Vec<BlobMeta>,
    /// The subdirectories (common prefixes) directly under the prefix, as
    /// paths from the root.
    pub dirs: Vec<BlobPath>,
}

/// A new object being written. Nothing is at its path for readers until
/// [`finish`](BlobWriter::finish) returns; dropping or aborting the writer
/// leaves nothing behind (best effort; garbage collection finds the rest).
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `data`.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the object durable and visible at its path.
    async fn finish(self: Box<Self>) -> Result<()>;
    /// Discards what was written.
    async fn abort(self: Box<Self>);
}

/// Where bytes live. Every path is relative to the store's root, which
/// [`root`](BlobStore::root) names as a pointer prefix (`/var/ckpt/job`,
/// `s3://bucket/prefix/job`, `memory://job`).
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// The root, as written in checkpoint pointers.
    fn root(&self) -> &str;
    /// Starts writing a new object at `path`; nothing may exist there yet.
    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>>;
    /// Writes a small object durably, only if nothing is at `path` yet:
    /// `Conflict` otherwise, so two writers can never both succeed.
    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()>;
    /// The bytes of `range` of the object at `path`: fewer if the object
    /// ends first, never more. `NotFound` if there is no object; anything
    /// that is not a regular object (a FIFO, a device, a directory) is
    /// refused without blocking.
    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes>;
    /// Several ranges of one object, in order (as `get_range` each).
    async fn get_ranges(&self, path: &BlobPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            out.push(self.get_range(path, r.clone()).await?);
        }
        Ok(out)
    }
    /// The object at `path`, if there is one.
    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>>;
    /// Every object under `prefix` (all objects if `None`), at any depth.
    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>>;
    /// One level under `prefix` (the root if `None`): the objects directly
    /// in it, and its subdirectories (common prefixes), like
    /// `object_store`'s `list_with_delimiter`. What finding the latest
    /// checkpoint lists, so it never walks `shared/`. The default filters
    /// [`list`](BlobStore::list); stores that can list one level override it.
    async fn list_level(&self, prefix: Option<&BlobPath>) -> Result<BlobListing> {
        let base = prefix.map(|p| format!("{}/", p.as_str())).unwrap_or_default();
        let mut listing = BlobListing::default();
        for meta in self.list(prefix).await? {
            let Some(rest) = meta.path.as_str().strip_prefix(&base) else {
                continue;
            };
            match rest.split_once('/') {
                None => listing.objects.push(meta),
                Some((dir, _)) => {
                    let dir = BlobPath::new(&format!("{base}{dir}"))?;
                    if listing.dirs.last() != Some(&dir) && !listing.dirs.contains(&dir) {
                        listing.dirs.push(dir);
                    }
                }
            }
        }
        Ok(listing)
    }
    /// Deletes objects; those already gone are not an error.
    async fn delete(&self, paths: &[BlobPath]) -> Result<()>;
    /// A store of the same kind rooted at `location` (a savepoint directory,
    /// another job's directory), written as [`root`](BlobStore::root) would
    /// write it.
    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>>;
    /// The local file of the object at `path`, for stores on a local
    /// filesystem (a restore may hard-link it); `None` for the others.
    /// Async: finding it may touch the filesystem.
    async fn local_path(&self, path: &BlobPath) -> Option<std::path::PathBuf> {
        let _ = path;
        None
    }
}

type Space = Arc<Mutex<BTreeMap<String, (Bytes, u64)>>>;

/// Objects in this process's memory, keyed by `<root>/<path>`. Stores
/// opened from one another share one space.
#[derive(Clone)]
pub struct MemoryBlobStore {
    root: String,
    space: Space,
}

impl fmt::Debug for MemoryBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBlobStore").field("root", &self.root).finish()
    }
}

impl MemoryBlobStore {
    /// An empty space, this store rooted at `root` (e.g. `memory://job`).
    pub fn new(root: &str) -> Self {
        MemoryBlobStore {
            root: root.trim_end_matches('/').to_string(),
            space: Arc::default(),
        }
    }

    /// A store rooted at `root` in the same space.
    pub fn sibling(&self, root: &str) -> Self {
        MemoryBlobStore {
            root: root.trim_end_matches('/').to_string(),
            space: Arc::clone(&self.space),
        }
    }

    fn key(&self, path: &BlobPath) -> String {
        format!("{}/{}", self.root, path)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, u64)>>> {
        self.space
            .lock()
            .map_err(|_| Error::internal("memory blob store lock poisoned"))
    }

    fn insert(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        let key = self.key(path);
        let mut space = self.lock()?;
        if space.contains_key(&key) {
            return Err(Error::new(ErrorKind::Conflict, format!("{key} already exists")));
        }
        space.insert(key, (data, 0));
        Ok(())
    }
}

struct MemoryWriter {
    store: MemoryBlobStore,
    path: BlobPath,
    buf: Vec<u8>,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.store.insert(&self.path, Bytes::from(self.buf))
    }

    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    fn root(&self) -> &str {
        &self.root
    }

    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
        if self.lock()?.contains_key(&self.key(path)) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{} already exists", self.key(path)),
            ));
        }
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            path: path.clone(),
            buf: Vec::new(),
        }))
    }

    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        self.insert(path, data)
    }

    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let key = self.key(path);
        let data = self.lock()?.get(&key).map(|(d, _)| d.clone());
        let data = data.ok_or_else(|| Error::not_found(format!("{key}: no such object")))?;
        let len = data.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len).max(range.start.min(len)));
        Ok(data.slice(start as usize..end as usize))
    }

    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
        let key = self.key(path);
        Ok(self.lock()?.get(&key).map(|(d, modified)| BlobMeta {
            path: path.clone(),
            size: d.len() as u64,
            modified_millis: *modified,
        }))
    }

    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        let start = match prefix {
            Some(p) => format!("{}/", self.key(p)),
            None => format!("{}/", self.root),
        };
        let root = format!("{}/", self.root);
        let space = self.lock()?;
        space
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .map(|(k, (d, modified))| {
                Ok(BlobMeta {
                    path: BlobPath::new(&k[root.len()..])?,
                    size: d.len() as u64,
                    modified_millis: *modified,
                })
            })
            .collect()
    }

    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        let mut space = self.lock()?;
        for p in paths {
            space.remove(&format!("{}/{}", self.root, p));
        }
        Ok(())
    }

    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
        if !location.starts_with("memory://") {
            return Err(Error::unsupported(format!(
                "{location:?} is not in memory; memory storage only reaches memory://<path> locations"
            )));
        }
        Ok(Arc::new(self.sibling(location)))
    }
}

/// Names a file type for errors about something that is not a regular
/// file where one should be (`"a FIFO"`, `"a symbolic link"`, …).
#[cfg(unix)]
pub fn file_type_name(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_root() {
        for bad in ["", "/abs", "a/../b", "a//b", "..", "a\0b", "c:\\x"] {
            assert!(BlobPath::new(bad).is_err(), "{bad:?}");
        }
        let p = BlobPath::new("chk-1").unwrap().join("_metadata").unwrap();
        assert_eq!(p.as_str(), "chk-1/_metadata");
        assert_eq!(p.file_name(), "_metadata");
        assert!(BlobPath::new("chk-1").unwrap().join("../x").is_err());
    }
}
