//! Filesystem checkpoint storage for flowstate, with Flink's layout:
//!
//! ```text
//! <base>/<job-id>/chk-<n>/_metadata   + the checkpoint's exclusive state files
//! <base>/<job-id>/shared/             files shared by incremental checkpoints
//! <base>/<job-id>/taskowned/          files owned by the backends
//! <savepoint-dir>/savepoint-<...>/    self-contained, relocatable savepoints
//! ```
//!
//! State streams at or below the inline threshold (20 KiB by default, at
//! most 1 MiB) are kept in the metadata; larger ones become files, written
//! through a buffer and synced on close. A stream dropped or aborted before
//! it is closed deletes its file. `_metadata` is written last, synced with
//! its directory, and only if absent. Blocking file I/O runs on blocking
//! threads, off the async executor.
//!
//! Every path is confined to its root by one check, for reads, writes and
//! deletes alike: a symlink never leads a read or a delete out of the job
//! (or savepoint) directory. Only regular files are read, opened without
//! blocking and checked on the opened handle (a FIFO or a device named as a
//! state file is refused, not read), and never more bytes than expected.
//!
//! ```
//! use flowstate_api::*;
//! use flowstate_fs::FsCheckpointStorage;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let storage = FsCheckpointStorage::open(dir.path(), "my-job")?;
//! let location = storage.init_checkpoint(1).await?;
//! let pointer = location.write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)).await?;
//! assert!(pointer.ends_with("my-job/chk-1"));
//! assert_eq!(storage.resolve(&format!("{pointer}/_metadata")).await?.metadata.checkpoint_id, 1);
//! # Ok(()) }
//! ```

mod guard;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use flowstate_api::{
    parse_pointer, validate_relative_path, CheckpointKind, CheckpointLocation, CheckpointMetadata,
    CheckpointOutputStream, CheckpointStorage, Error, ErrorKind, InlineReader, ResolvedCheckpoint, Result, StateReader,
    StateScope, StorageCapabilities, StoredFile, StreamStateHandle, METADATA_FILE,
};

use guard::{confine, read_capped, read_sized, real_dir, Last};
pub use stream::FsOutputStream;

/// Flink's default inline threshold: 20 KiB.
pub const DEFAULT_INLINE_THRESHOLD: usize = 20 << 10;
/// The largest inline threshold allowed: 1 MiB.
pub const MAX_INLINE_THRESHOLD: usize = 1 << 20;
/// The default write buffer of state file streams.
pub const DEFAULT_WRITE_BUFFER: usize = 64 << 10;

/// The largest file [`resolve`](CheckpointStorage::resolve),
/// [`latest_checkpoint`](CheckpointStorage::latest_checkpoint) and
/// [`read_file`](CheckpointStorage::read_file) read: 256 MiB. Metadata
/// files hold handles and offsets, far less than this; a larger file is
/// refused with [`ErrorKind::LimitExceeded`] instead of being read into
/// memory.
pub const MAX_METADATA_FILE_SIZE: u64 = 256 << 20;

/// Name of the shared-state directory.
pub const SHARED_DIR: &str = "shared";
/// Name of the task-owned state directory.
pub const TASK_OWNED_DIR: &str = "taskowned";

/// Runs blocking file I/O off the async executor's threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    flowstate_api::run_blocking(f).await
}

pub(crate) fn unique_name() -> String {
    flowstate_api::unique_file_name()
}

fn check_component(what: &str, name: &str) -> Result<()> {
    validate_relative_path(name)?;
    if name.contains('/') {
        return Err(Error::invalid(format!(
            "{what} {name:?} must be a single path component"
        )));
    }
    Ok(())
}

#[derive(Debug)]
struct Inner {
    job_id: String,
    job_dir: PathBuf,
    savepoint_dir: Option<PathBuf>,
    inline_threshold: usize,
    write_buffer: usize,
}

/// Checkpoint storage on a filesystem.
#[derive(Debug, Clone)]
pub struct FsCheckpointStorage {
    inner: Arc<Inner>,
}

impl FsCheckpointStorage {
    /// Storage for `job_id` under `base`; creates `<base>/<job_id>/shared`
    /// and `taskowned`.
    pub fn open(base: impl AsRef<Path>, job_id: &str) -> Result<Self> {
        check_component("job id", job_id)?;
        let job_dir = base.as_ref().join(job_id);
        for dir in [SHARED_DIR, TASK_OWNED_DIR] {
            let path = job_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| Error::io(path.display(), e))?;
        }
        Ok(FsCheckpointStorage {
            inner: Arc::new(Inner {
                job_id: job_id.to_string(),
                job_dir,
                savepoint_dir: None,
                inline_threshold: DEFAULT_INLINE_THRESHOLD,
                write_buffer: DEFAULT_WRITE_BUFFER,
            }),
        })
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            job_id: shared.job_id.clone(),
            job_dir: shared.job_dir.clone(),
            savepoint_dir: shared.savepoint_dir.clone(),
            inline_threshold: shared.inline_threshold,
            write_buffer: shared.write_buffer,
        });
        f(&mut inner);
        FsCheckpointStorage { inner: Arc::new(inner) }
    }

    /// Streams of at most `bytes` are inlined into the metadata (at most 1 MiB).
    pub fn with_inline_threshold(self, bytes: usize) -> Result<Self> {
        if bytes > MAX_INLINE_THRESHOLD {
            return Err(Error::invalid(format!(
                "inline threshold {bytes} exceeds the maximum of {MAX_INLINE_THRESHOLD} bytes"
            )));
        }
        Ok(self.with(|i| i.inline_threshold = bytes))
    }

    /// Sets the write buffer of state file streams.
    pub fn with_write_buffer(self, bytes: usize) -> Self {
        self.with(|i| i.write_buffer = bytes.max(4096))
    }

    /// Where savepoints go when no target is given.
    pub fn with_savepoint_dir(self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.with(|i| i.savepoint_dir = Some(dir))
    }

    /// The job directory, `<base>/<job-id>`.
    pub fn job_dir(&self) -> &Path {
        &self.inner.job_dir
    }

    fn location(
        &self,
        checkpoint_id: u64,
        kind: CheckpointKind,
        dir: PathBuf,
        root: PathBuf,
        relative_dir: String,
    ) -> FsLocation {
        FsLocation {
            checkpoint_id,
            kind,
            pointer: dir.display().to_string(),
            dir,
            root,
            relative_dir,
            inline_threshold: self.inner.inline_threshold,
            write_buffer: self.inner.write_buffer,
            written: Arc::default(),
        }
    }

    /// Reads a checkpoint's metadata. It is confined to the same root as the
    /// checkpoint's state files: the job directory for `chk-<n>`, the
    /// savepoint's own directory for a savepoint.
    async fn read_checkpoint(pointer: &str) -> Result<ResolvedCheckpoint> {
        let parsed = parse_pointer(pointer)?;
        let normalized = parsed.normalized();
        let dir = PathBuf::from(&normalized);
        let (root, relative) = if parsed.checkpoint_id.is_some() {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (parent, format!("{}/{METADATA_FILE}", parsed.dir))
        } else {
            (dir.clone(), METADATA_FILE.to_string())
        };
        let name = dir.join(METADATA_FILE).display().to_string();
        let data = blocking({
            let root = root.clone();
            move || match confine(&root, &relative, Last::Follow).and_then(|f| read_capped(&f, MAX_METADATA_FILE_SIZE))
            {
                Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(format!(
                    "checkpoint {normalized} has no {METADATA_FILE}: it does not exist or never completed"
                ))),
                other => other,
            }
        })
        .await?;
        let metadata = CheckpointMetadata::decode(&Bytes::from(data), &name)?;
        Ok(ResolvedCheckpoint {
            pointer: dir.display().to_string(),
            metadata,
            reader: Arc::new(FsStateReader::new(root)),
        })
    }
}

#[async_trait]
impl CheckpointStorage for FsCheckpointStorage {
    fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    fn capabilities(&self) -> StorageCapabilities {
        StorageCapabilities::new(self.inner.inline_threshold, None, true, true)
    }

    async fn init_checkpoint(&self, checkpoint_id: u64) -> Result<Arc<dyn CheckpointLocation>> {
        let name = format!("chk-{checkpoint_id}");
        let root = self.inner.job_dir.clone();
        let dir = root.join(&name);
        blocking({
            let (root, name, dir) = (root.clone(), name.clone(), dir.clone());
            move || {
                std::fs::create_dir_all(&root).map_err(|e| Error::io(root.display(), e))?;
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(dir.display(), e)),
                }
                // A real directory inside the job directory, not a symlink out of it.
                let real = real_dir(&root, &name)?;
                if std::fs::symlink_metadata(real.join(METADATA_FILE)).is_ok() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("checkpoint {} already exists", dir.display()),
                    ));
                }
                Ok(())
            }
        })
        .await?;
        Ok(Arc::new(self.location(
            checkpoint_id,
            CheckpointKind::Checkpoint,
            dir,
            root,
            name,
        )))
    }

    async fn init_savepoint(&self, checkpoint_id: u64, target: Option<&str>) -> Result<Arc<dyn CheckpointLocation>> {
        let parent = match (target, &self.inner.savepoint_dir) {
            (Some(t), _) => PathBuf::from(t),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(Error::invalid(
                    "no savepoint directory: give a target or configure one with with_savepoint_dir",
                ))
            }
        };
        let prefix: String = self.inner.job_id.chars().take(6).collect();
        let dir = parent.join(format!("savepoint-{prefix}-{checkpoint_id}-{}", unique_name()));
        blocking({
            let dir = dir.clone();
            move || std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))
        })
        .await?;
        Ok(Arc::new(self.location(
            checkpoint_id,
            CheckpointKind::Savepoint,
            dir.clone(),
            dir,
            String::new(),
        )))
    }

    async fn resolve(&self, pointer: &str) -> Result<ResolvedCheckpoint> {
        Self::read_checkpoint(pointer).await
    }

    async fn latest_checkpoint(&self) -> Result<Option<ResolvedCheckpoint>> {
        let job_dir = self.inner.job_dir.clone();
        let mut ids = blocking(move || {
            let entries = std::fs::read_dir(&job_dir).map_err(|e| Error::io(job_dir.display(), e))?;
            let mut ids = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(job_dir.display(), e))?;
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("chk-"))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            let pointer = self.inner.job_dir.join(format!("chk-{id}")).display().to_string();
            match Self::read_checkpoint(&pointer).await {
                Ok(resolved) => return Ok(Some(resolved)),
                Err(e) => tracing::warn!(%pointer, error = %e, "skipping checkpoint without a valid metadata file"),
            }
        }
        Ok(None)
    }

    fn checkpoint_pointer(&self, checkpoint_id: u64) -> String {
        self.inner
            .job_dir
            .join(format!("chk-{checkpoint_id}"))
            .display()
            .to_string()
    }

    async fn list_files(&self) -> Result<Vec<StoredFile>> {
        let job_dir = self.inner.job_dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            list_dir(&job_dir, "", &mut out)?;
            Ok(out)
        })
        .await
    }

    /// Reads a regular file of at most [`MAX_METADATA_FILE_SIZE`] bytes,
    /// confined to the job directory.
    async fn read_file(&self, path: &str) -> Result<Bytes> {
        let job_dir = self.inner.job_dir.clone();
        let path = path.to_string();
        blocking(move || {
            let full = confine(&job_dir, &path, Last::Follow)?;
            read_capped(&full, MAX_METADATA_FILE_SIZE).map(Bytes::from)
        })
        .await
    }

    /// Every path is confined to the job directory first (its parent
    /// directory is resolved; a symlink itself is unlinked, not its
    /// target). If any path leaves it, nothing is deleted.
    async fn delete_files(&self, paths: &[String]) -> Result<()> {
        let job_dir = self.inner.job_dir.clone();
        let paths = paths.to_vec();
        blocking(move || delete_confined(&job_dir, &paths)).await
    }

    async fn stat_file(&self, path: &str) -> Result<Option<StoredFile>> {
        let job_dir = self.inner.job_dir.clone();
        let path = path.to_string();
        blocking(move || {
            let target = match confine(&job_dir, &path, Last::Keep) {
                Ok(target) => target,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_file() => Ok(Some(StoredFile {
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
}

/// Deletes root-relative `paths`, each confined to `root` first (a path
/// whose directory leaves the root refuses the whole call, deleting
/// nothing). Files already gone are not an error; `chk-<n>` directories
/// left empty are removed.
fn delete_confined(root: &Path, paths: &[String]) -> Result<()> {
    let mut targets = Vec::with_capacity(paths.len());
    for p in paths {
        match confine(root, p, Last::Keep) {
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
    let dirs: std::collections::BTreeSet<&str> = paths
        .iter()
        .filter_map(|p| p.split_once('/'))
        .map(|(dir, _)| dir)
        .filter(|dir| dir.starts_with("chk-"))
        .collect();
    for dir in dirs {
        // Only an empty directory is removed; one with files left stays.
        if let Ok(real) = confine(root, dir, Last::Keep) {
            let _ = std::fs::remove_dir(real);
        }
    }
    Ok(())
}

/// Lists the regular files under `dir` recursively, as paths relative to
/// the job root. Symlinks, FIFOs, sockets and devices are not listed, and
/// symlinked directories are not entered.
fn list_dir(dir: &Path, prefix: &str, out: &mut Vec<StoredFile>) -> Result<()> {
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
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        // The entry's own type: a symlink is neither followed nor listed.
        let file_type = entry.file_type().map_err(|e| Error::io(entry.path().display(), e))?;
        if file_type.is_dir() {
            list_dir(&entry.path(), &path, out)?;
        } else if file_type.is_file() {
            let meta = entry.metadata().map_err(|e| Error::io(entry.path().display(), e))?;
            out.push(StoredFile {
                path,
                size: meta.len(),
                modified_millis: modified_millis(&meta),
            });
        }
    }
    Ok(())
}

/// A file's modification time in milliseconds since the Unix epoch (0 if unknown).
fn modified_millis(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where one checkpoint or savepoint is written.
#[derive(Debug)]
struct FsLocation {
    checkpoint_id: u64,
    kind: CheckpointKind,
    pointer: String,
    /// The checkpoint's own directory.
    dir: PathBuf,
    /// What handle paths are relative to.
    root: PathBuf,
    /// `dir` relative to `root`: `chk-<n>`, or empty for a savepoint.
    relative_dir: String,
    inline_threshold: usize,
    write_buffer: usize,
    /// Every file its streams created, relative to `root`.
    written: stream::Written,
}

impl FsLocation {
    /// The files this location's streams created: all of them, or those
    /// among `only`.
    fn written(&self, only: Option<&[&str]>) -> Vec<String> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match only {
            Some(paths) => paths
                .iter()
                .filter(|p| written.contains(**p))
                .map(|p| p.to_string())
                .collect(),
            None => written.iter().cloned().collect(),
        }
    }

    fn forget(&self, paths: &[String]) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        for p in paths {
            written.remove(p);
        }
    }
}

#[async_trait]
impl CheckpointLocation for FsLocation {
    fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    fn kind(&self) -> CheckpointKind {
        self.kind
    }

    fn pointer(&self) -> &str {
        &self.pointer
    }

    async fn create_output_stream(&self, scope: StateScope) -> Result<Box<dyn CheckpointOutputStream>> {
        // Savepoints are self-contained: every stream goes into their directory.
        let relative_dir = match (self.kind, scope) {
            (CheckpointKind::Savepoint, _) | (_, StateScope::Exclusive) => self.relative_dir.clone(),
            (_, StateScope::Shared) => SHARED_DIR.to_string(),
            (_, StateScope::TaskOwned) => TASK_OWNED_DIR.to_string(),
        };
        Ok(Box::new(FsOutputStream::new(
            self.root.clone(),
            relative_dir,
            self.inline_threshold,
            self.write_buffer,
            Arc::clone(&self.written),
        )))
    }

    async fn write_metadata(&self, metadata: &CheckpointMetadata) -> Result<String> {
        let bytes = metadata.encode();
        let (root, relative_dir) = (self.root.clone(), self.relative_dir.clone());
        blocking(move || write_metadata_file(&real_dir(&root, &relative_dir)?, &bytes)).await?;
        Ok(self.pointer.clone())
    }

    async fn discard(&self, handles: &[StreamStateHandle]) -> Result<()> {
        let wanted: Vec<&str> = handles.iter().filter_map(StreamStateHandle::file_path).collect();
        let paths = self.written(Some(&wanted));
        let root = self.root.clone();
        let gone = paths.clone();
        blocking(move || delete_confined(&root, &paths)).await?;
        self.forget(&gone);
        Ok(())
    }

    /// Deletes every file this location's streams wrote outside its
    /// directory (shared and task-owned files of the aborted attempt), then
    /// the checkpoint (or savepoint) directory, which must be a real
    /// directory inside its parent, not a symlink to one elsewhere.
    async fn dispose(&self) -> Result<()> {
        let own = format!("{}/", self.relative_dir);
        let outside: Vec<String> = self
            .written(None)
            .into_iter()
            .filter(|p| self.relative_dir.is_empty() || !p.starts_with(&own))
            .collect();
        if !outside.is_empty() && self.kind == CheckpointKind::Checkpoint {
            let (root, paths, dir) = (self.root.clone(), outside.clone(), self.dir.clone());
            blocking(move || {
                if std::fs::symlink_metadata(dir.join(METADATA_FILE)).is_ok() {
                    return Err(Error::invalid(format!(
                        "{} is a completed checkpoint; discard it through the checkpoint store",
                        dir.display()
                    )));
                }
                delete_confined(&root, &paths)
            })
            .await?;
            self.forget(&outside);
        }
        let dir = self.dir.clone();
        blocking(move || {
            let (parent, name) = match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
                (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => (parent.to_path_buf(), name),
                (_, Some(name)) => (PathBuf::from("."), name),
                _ => return Err(Error::internal(format!("{} has no directory name", dir.display()))),
            };
            let real = match real_dir(&parent, name) {
                Ok(real) => real,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.context("refusing to dispose, nothing deleted")),
            };
            if std::fs::symlink_metadata(real.join(METADATA_FILE)).is_ok() {
                return Err(Error::invalid(format!(
                    "{} is a completed checkpoint; discard it through the checkpoint store",
                    dir.display()
                )));
            }
            match std::fs::remove_dir_all(&real) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(real.display(), e)),
            }
        })
        .await
    }
}

/// Writes `_metadata` into `dir` durably and only if absent: the bytes go to
/// a temporary file that is synced and then hard-linked to `_metadata`
/// (which fails if it exists), and the directory is synced. Neither step
/// follows a symlink planted under either name: `create_new` refuses one
/// (`O_EXCL`), and a link never replaces or follows an existing entry.
fn write_metadata_file(dir: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let target = dir.join(METADATA_FILE);
    let temp = dir.join(format!("{METADATA_FILE}.inprogress-{}", unique_name()));
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
                format!("checkpoint {} already exists", dir.display()),
            )),
            Err(e) => Err(Error::io(target.display(), e)),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    result?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir.display(), e))
}

/// Reads state files relative to a checkpoint root, refusing any path that
/// leaves it (`..`, absolute paths, symlinks out), anything but a regular
/// file (FIFOs, devices, directories), and files of another size than
/// their handle says (reading at most one byte more).
#[derive(Debug, Clone)]
pub struct FsStateReader {
    root: PathBuf,
}

impl FsStateReader {
    /// A reader of files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStateReader { root: root.into() }
    }

    /// Resolves a handle's relative path to its canonical path, refusing
    /// escapes from the root.
    pub fn resolve_path(&self, path: &str) -> Result<PathBuf> {
        confine(&self.root, path, Last::Follow)
    }
}

#[async_trait]
impl StateReader for FsStateReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
        match handle {
            StreamStateHandle::File { path, size } => {
                let reader = self.clone();
                let (path, size) = (path.clone(), *size);
                blocking(move || {
                    let full = reader.resolve_path(&path)?;
                    read_sized(&full, size).map(Bytes::from)
                })
                .await
            }
            inline => InlineReader.read(inline).await,
        }
    }
}
