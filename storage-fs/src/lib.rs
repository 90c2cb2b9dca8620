//! Filesystem checkpoint storage for flowstate: the checkpoint layout of
//! [`CheckpointStorage`] over [`FsBlobStore`], a durable adapter of the
//! [`BlobStore`] contract.
//!
//! ```text
//! <base>/<job-id>/chk-<n>/_metadata   + the checkpoint's exclusive state files
//! <base>/<job-id>/shared/             files shared by incremental checkpoints
//! <base>/<job-id>/taskowned/          files owned by the backends
//! <savepoint-dir>/savepoint-<...>/    self-contained, relocatable savepoints
//! ```
//!
//! What the adapter adds to the contract: files are synced when finished;
//! `put_if_absent` writes a synced temporary file and hard-links it into
//! place (which fails if the target exists) and syncs the directory; every
//! path is confined to the store's root, symlinks included, on read and on
//! delete alike; anything but a regular file is refused without blocking;
//! reads never go past the range asked for; and all blocking I/O runs off
//! the async executor ([`run_blocking`]).
//!
//! Unix only: confinement relies on `O_NOFOLLOW`, `O_NONBLOCK` and file
//! types (FIFOs, sockets, devices) as Unix reports them. Elsewhere use
//! `flowstate-object` with a `file://` URL.
//!
//! ```
//! use flowstate_api::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let storage = flowstate_fs::checkpoint_storage(dir.path(), "my-job")?;
//! let location = storage.init_checkpoint(1).await?;
//! let pointer = location.write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)).await?;
//! assert!(pointer.ends_with("my-job/chk-1"));
//! assert_eq!(storage.resolve(&format!("{pointer}/_metadata")).await?.metadata.checkpoint_id, 1);
//! # Ok(()) }
//! ```

#[cfg(not(unix))]
compile_error!("flowstate-fs supports Unix only; use flowstate-object with a file:// URL elsewhere");

mod guard;

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::checkpoint::{
    unique_file_name, BlobListing, BlobMeta, BlobPath, BlobStateReader, BlobStore, BlobWriter, SHARED_DIR,
    TASK_OWNED_DIR,
};
use flowstate_api::runtime::{run_blocking, run_detached};
use flowstate_api::{CheckpointStorage, Error, ErrorKind, Result};

use guard::{confine, read_range, real_dir, Last};

/// Checkpoint storage for `job_id` under the directory `base` (created if
/// needed): the checkpoint layout over an [`FsBlobStore`] at `<base>/<job-id>`.
pub fn checkpoint_storage(base: impl AsRef<Path>, job_id: &str) -> Result<CheckpointStorage> {
    let dir = base.as_ref().join(job_id);
    let store = FsBlobStore::new(&dir).keeping(&[SHARED_DIR, TASK_OWNED_DIR]);
    // The job id is checked (one path component) before a directory is made.
    let storage = CheckpointStorage::new(Arc::new(store), job_id)?;
    for d in [SHARED_DIR, TASK_OWNED_DIR] {
        let path = dir.join(d);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(path.display(), e))?;
    }
    Ok(storage)
}

/// A reader of state files under `root` (what a restore of a checkpoint
/// whose handles are relative to `root` uses).
pub fn state_reader(root: impl AsRef<Path>) -> BlobStateReader {
    BlobStateReader::new(Arc::new(FsBlobStore::new(root.as_ref())))
}

/// A directory as a [`BlobStore`]: object paths are file paths under it.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    /// `root` as pointers write it.
    name: String,
    /// Directories (relative to the root) kept when a delete empties them.
    keep: Vec<String>,
}

impl FsBlobStore {
    /// A store rooted at the directory `root` (which need not exist yet).
    pub fn new(root: &Path) -> Self {
        let root = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root.to_path_buf()
        };
        let name = root.display().to_string();
        let name = if name.len() > 1 {
            name.trim_end_matches('/').to_string()
        } else {
            name
        };
        FsBlobStore {
            root: PathBuf::from(&name),
            name,
            keep: Vec::new(),
        }
    }

    /// Keeps the directories `dirs` (relative to the root) when deletes
    /// leave them empty; other emptied directories are removed.
    pub fn keeping(mut self, dirs: &[&str]) -> Self {
        self.keep = dirs.iter().map(|d| d.to_string()).collect();
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Creates the parent directory of `path` (inside the root, never
    /// through a symlink) and returns it.
    fn parent_dir(root: &Path, path: &BlobPath) -> Result<PathBuf> {
        flowstate_api::runtime::check_blocking("creating a directory");
        std::fs::create_dir_all(root).map_err(|e| Error::io(root.display(), e))?;
        match path.as_str().rsplit_once('/') {
            Some((parent, _)) => {
                let dir = root.join(parent);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
                real_dir(root, parent)
            }
            None => real_dir(root, ""),
        }
    }
}

/// A file being written; deleted if dropped before it is finished.
struct FsWriter {
    file: Option<File>,
    path: PathBuf,
}

impl Drop for FsWriter {
    /// An unfinished file is removed off the async executor (nobody awaits
    /// a destructor); if the runtime shuts down first, garbage collection
    /// finds it.
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let path = std::mem::take(&mut self.path);
            run_detached(move || {
                drop(file);
                let _ = std::fs::remove_file(&path);
            });
        }
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(Error::internal(format!("{} was already finished", self.path.display())));
        };
        let path = self.path.clone();
        let (file, result) = run_blocking(move || {
            let r = file.write_all(&data).map_err(|e| Error::io(path.display(), e));
            Ok((file, r))
        })
        .await?;
        self.file = Some(file);
        result
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Err(Error::internal(format!("{} was already finished", self.path.display())));
        };
        let path = self.path.clone();
        run_blocking(move || match file.sync_all() {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(Error::io(path.display(), e))
            }
        })
        .await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(file) = self.file.take() {
            let path = std::mem::take(&mut self.path);
            let _ = run_blocking(move || {
                drop(file);
                let _ = std::fs::remove_file(&path);
                Ok(())
            })
            .await;
        }
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn root(&self) -> &str {
        &self.name
    }

    async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
        let (root, path) = (self.root.clone(), path.clone());
        run_blocking(move || {
            // A delete may remove the emptied directory between its creation
            // and the file's: then it is created again.
            let mut attempts = 0;
            loop {
                let dir = Self::parent_dir(&root, &path)?;
                let target = dir.join(path.file_name());
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&target) {
                    Ok(file) => {
                        return Ok(Box::new(FsWriter {
                            file: Some(file),
                            path: target,
                        }) as Box<dyn BlobWriter>)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                    Err(e) => return Err(Error::io(target.display(), e)),
                }
            }
        })
        .await
    }

    async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
        let (root, path) = (self.root.clone(), path.clone());
        run_blocking(move || {
            let dir = Self::parent_dir(&root, &path)?;
            write_if_absent(&dir, path.file_name(), &data)
        })
        .await
    }

    async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
        let (root, path) = (self.root.clone(), path.clone());
        run_blocking(move || {
            let full = confine(&root, path.as_str(), Last::Follow)?;
            read_range(&full, range).map(Bytes::from)
        })
        .await
    }

    async fn get_ranges(&self, path: &BlobPath, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let (root, path, ranges) = (self.root.clone(), path.clone(), ranges.to_vec());
        run_blocking(move || {
            let full = confine(&root, path.as_str(), Last::Follow)?;
            ranges
                .into_iter()
                .map(|r| read_range(&full, r).map(Bytes::from))
                .collect()
        })
        .await
    }

    async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
        let (root, path) = (self.root.clone(), path.clone());
        run_blocking(move || {
            let target = match confine(&root, path.as_str(), Last::Keep) {
                Ok(target) => target,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_file() => Ok(Some(BlobMeta {
                    path,
                    size: meta.len(),
                    modified_millis: modified_millis(&meta),
                })),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(target.display(), e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
        let (root, prefix) = (self.root.clone(), prefix.cloned());
        run_blocking(move || {
            let start = prefix.as_ref().map_or("", BlobPath::as_str);
            let dir = match real_dir(&root, start) {
                Ok(dir) => dir,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            list_dir(&dir, start, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn list_level(&self, prefix: Option<&BlobPath>) -> Result<BlobListing> {
        let (root, prefix) = (self.root.clone(), prefix.cloned());
        run_blocking(move || {
            let start = prefix.as_ref().map_or("", BlobPath::as_str);
            let dir = match real_dir(&root, start) {
                Ok(dir) => dir,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BlobListing::default()),
                Err(e) => return Err(e),
            };
            let mut listing = BlobListing::default();
            visit_dir(&dir, start, |entry, path, file_type| {
                if file_type.is_dir() {
                    listing.dirs.push(path);
                } else {
                    listing.objects.push(blob_meta(entry, path)?);
                }
                Ok(())
            })?;
            Ok(listing)
        })
        .await
    }

    async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
        let (root, paths, keep) = (self.root.clone(), paths.to_vec(), self.keep.clone());
        run_blocking(move || delete_confined(&root, &paths, &keep)).await
    }

    fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
        if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::unsupported(format!(
                "{location:?} is not a filesystem location; filesystem storage reaches directories only"
            )));
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        Ok(Arc::new(FsBlobStore::new(Path::new(path))))
    }

    async fn local_path(&self, path: &BlobPath) -> Option<PathBuf> {
        let (root, path) = (self.root.clone(), path.clone());
        run_blocking(move || Ok(confine(&root, path.as_str(), Last::Follow).ok()))
            .await
            .ok()
            .flatten()
    }
}

/// Deletes `paths`, each confined to `root` first (a path whose directory
/// leaves the root refuses the whole call, deleting nothing). Files already
/// gone are not an error. Directories left empty are removed, up to the
/// root, except those in `keep`.
fn delete_confined(root: &Path, paths: &[BlobPath], keep: &[String]) -> Result<()> {
    flowstate_api::runtime::check_blocking("deleting files");
    let mut targets = Vec::with_capacity(paths.len());
    for p in paths {
        match confine(root, p.as_str(), Last::Keep) {
            Ok(target) => targets.push(target),
            // Its directory is gone, and the file with it.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.context("refusing to delete, nothing deleted")),
        }
    }
    for target in &targets {
        match std::fs::remove_file(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(target.display(), e)),
        }
    }
    let mut dirs: Vec<&str> = paths
        .iter()
        .filter_map(|p| p.as_str().rsplit_once('/').map(|(d, _)| d))
        .collect();
    dirs.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(b.cmp(a)));
    dirs.dedup();
    for dir in dirs {
        // Only an empty directory is removed (one with files left stays),
        // then its parents while they are empty.
        let mut d = dir;
        loop {
            if keep.iter().any(|k| k == d) {
                break;
            }
            let Ok(real) = confine(root, d, Last::Keep) else { break };
            if std::fs::remove_dir(real).is_err() {
                break;
            }
            match d.rsplit_once('/') {
                Some((parent, _)) => d = parent,
                None => break,
            }
        }
    }
    Ok(())
}

/// Lists the regular files under `dir` recursively, as paths relative to
/// the root (`prefix` is `dir`'s). Symlinks, FIFOs, sockets and devices are
/// not listed, and symlinked directories are not entered.
fn list_dir(dir: &Path, prefix: &str, out: &mut Vec<BlobMeta>) -> Result<()> {
    flowstate_api::runtime::check_blocking("listing a directory");
    visit_dir(dir, prefix, |entry, path, file_type| {
        if file_type.is_dir() {
            list_dir(&entry.path(), path.as_str(), out)
        } else {
            out.push(blob_meta(entry, path)?);
            Ok(())
        }
    })
}

/// Calls `f` with each directory and regular file directly in `dir` (a
/// missing `dir` has none), with its path under `prefix`. Symlinks are
/// neither followed nor listed, nor is anything whose name is not a valid
/// blob path.
fn visit_dir(
    dir: &Path,
    prefix: &str,
    mut f: impl FnMut(&std::fs::DirEntry, BlobPath, std::fs::FileType) -> Result<()>,
) -> Result<()> {
    flowstate_api::runtime::check_blocking("listing a directory");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        // The entry's own type: a symlink is neither followed nor listed.
        let file_type = entry.file_type().map_err(|e| Error::io(entry.path().display(), e))?;
        if !file_type.is_dir() && !file_type.is_file() {
            continue;
        }
        let Ok(path) = BlobPath::new(&path) else { continue };
        f(&entry, path, file_type)?;
    }
    Ok(())
}

/// The listing entry of a regular file.
fn blob_meta(entry: &std::fs::DirEntry, path: BlobPath) -> Result<BlobMeta> {
    let meta = entry.metadata().map_err(|e| Error::io(entry.path().display(), e))?;
    Ok(BlobMeta {
        path,
        size: meta.len(),
        modified_millis: modified_millis(&meta),
    })
}

/// A file's modification time in milliseconds since the Unix epoch (0 if unknown).
fn modified_millis(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `name` into `dir` durably and only if absent: the bytes go to a
/// temporary file that is synced and then hard-linked to `name` (which
/// fails if it exists), and the directory is synced. Neither step follows a
/// symlink planted under either name: `create_new` refuses one (`O_EXCL`),
/// and a link never replaces or follows an existing entry.
fn write_if_absent(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    flowstate_api::runtime::check_blocking("writing a file");
    let target = dir.join(name);
    let temp = dir.join(format!("{name}.inprogress-{}", unique_file_name()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::io(temp.display(), e))?;
        f.write_all(bytes).map_err(|e| Error::io(temp.display(), e))?;
        f.sync_all().map_err(|e| Error::io(temp.display(), e))?;
        match std::fs::hard_link(&temp, &target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::new(
                ErrorKind::Conflict,
                format!("{} already exists", target.display()),
            )),
            Err(e) => Err(Error::io(target.display(), e)),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir.display(), e))
}
