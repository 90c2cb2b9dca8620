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
//! its directory, and only if absent. Blocking file I/O runs on Tokio's
//! blocking threads.
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

pub use stream::FsOutputStream;

/// Flink's default inline threshold: 20 KiB.
pub const DEFAULT_INLINE_THRESHOLD: usize = 20 << 10;
/// The largest inline threshold allowed: 1 MiB.
pub const MAX_INLINE_THRESHOLD: usize = 1 << 20;
/// The default write buffer of state file streams.
pub const DEFAULT_WRITE_BUFFER: usize = 64 << 10;

/// Name of the shared-state directory.
pub const SHARED_DIR: &str = "shared";
/// Name of the task-owned state directory.
pub const TASK_OWNED_DIR: &str = "taskowned";

/// Runs blocking file I/O off the async executor's threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("file I/O task failed: {e}")))?
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

    fn location(&self, checkpoint_id: u64, kind: CheckpointKind, dir: PathBuf, root: PathBuf) -> FsLocation {
        FsLocation {
            checkpoint_id,
            kind,
            pointer: dir.display().to_string(),
            dir,
            root,
            inline_threshold: self.inner.inline_threshold,
            write_buffer: self.inner.write_buffer,
        }
    }

    async fn read_checkpoint(pointer: &str) -> Result<ResolvedCheckpoint> {
        let parsed = parse_pointer(pointer)?;
        let normalized = parsed.normalized();
        let dir = PathBuf::from(&normalized);
        let root = if parsed.checkpoint_id.is_some() {
            dir.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        } else {
            dir.clone()
        };
        let file = dir.join(METADATA_FILE);
        let name = file.display().to_string();
        let data = blocking({
            let file = file.clone();
            move || match std::fs::read(&file) {
                Ok(data) => Ok(data),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(format!(
                    "checkpoint {normalized} has no {METADATA_FILE}: it does not exist or never completed"
                ))),
                Err(e) => Err(Error::io(file.display(), e)),
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
        let dir = self.inner.job_dir.join(format!("chk-{checkpoint_id}"));
        let metadata = dir.join(METADATA_FILE);
        blocking({
            let dir = dir.clone();
            move || {
                if metadata.exists() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("checkpoint {} already exists", dir.display()),
                    ));
                }
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))
            }
        })
        .await?;
        let root = self.inner.job_dir.clone();
        Ok(Arc::new(self.location(
            checkpoint_id,
            CheckpointKind::Checkpoint,
            dir,
            root,
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

    async fn read_file(&self, path: &str) -> Result<Bytes> {
        let reader = FsStateReader::new(self.inner.job_dir.clone());
        let path = path.to_string();
        blocking(move || {
            let full = reader.resolve_path(&path)?;
            std::fs::read(&full)
                .map(Bytes::from)
                .map_err(|e| Error::io(full.display(), e))
        })
        .await
    }

    async fn delete_files(&self, paths: &[String]) -> Result<()> {
        for p in paths {
            validate_relative_path(p)?;
        }
        let job_dir = self.inner.job_dir.clone();
        let paths = paths.to_vec();
        blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for p in &paths {
                let full = job_dir.join(p);
                match std::fs::remove_file(&full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(full.display(), e)),
                }
                if let Some((dir, _)) = p.split_once('/') {
                    if dir.starts_with("chk-") {
                        dirs.insert(dir.to_string());
                    }
                }
            }
            for dir in dirs {
                // Only an empty directory is removed; one with files left stays.
                let _ = std::fs::remove_dir(job_dir.join(dir));
            }
            Ok(())
        })
        .await
    }
}

/// Lists the files under `dir` recursively, as paths relative to the job root.
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
        let meta = entry.metadata().map_err(|e| Error::io(entry.path().display(), e))?;
        if meta.is_dir() {
            list_dir(&entry.path(), &path, out)?;
        } else if meta.is_file() {
            let modified_millis = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            out.push(StoredFile {
                path,
                size: meta.len(),
                modified_millis,
            });
        }
    }
    Ok(())
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
    inline_threshold: usize,
    write_buffer: usize,
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
        let dir = match (self.kind, scope) {
            (CheckpointKind::Savepoint, _) | (_, StateScope::Exclusive) => self.dir.clone(),
            (_, StateScope::Shared) => self.root.join(SHARED_DIR),
            (_, StateScope::TaskOwned) => self.root.join(TASK_OWNED_DIR),
        };
        let relative_dir = dir
            .strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .map_err(|_| Error::internal("stream directory outside the checkpoint root"))?;
        Ok(Box::new(FsOutputStream::new(
            dir,
            relative_dir,
            self.inline_threshold,
            self.write_buffer,
        )))
    }

    async fn write_metadata(&self, metadata: &CheckpointMetadata) -> Result<String> {
        let bytes = metadata.encode();
        let dir = self.dir.clone();
        blocking(move || write_metadata_file(&dir, &bytes)).await?;
        Ok(self.pointer.clone())
    }

    async fn dispose(&self) -> Result<()> {
        let dir = self.dir.clone();
        blocking(move || {
            if dir.join(METADATA_FILE).exists() {
                return Err(Error::invalid(format!(
                    "{} is a completed checkpoint; discard it through the checkpoint store",
                    dir.display()
                )));
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(dir.display(), e)),
            }
        })
        .await
    }
}

/// Writes `_metadata` into `dir` durably and only if absent: the bytes go to
/// a temporary file that is synced and then hard-linked to `_metadata`
/// (which fails if it exists), and the directory is synced.
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
/// leaves it (`..`, absolute paths, symlinks out).
#[derive(Debug, Clone)]
pub struct FsStateReader {
    root: PathBuf,
}

impl FsStateReader {
    /// A reader of files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStateReader { root: root.into() }
    }

    /// Resolves a handle's relative path, refusing escapes.
    pub fn resolve_path(&self, path: &str) -> Result<PathBuf> {
        validate_relative_path(path)?;
        let full = self.root.join(path);
        let root = self
            .root
            .canonicalize()
            .map_err(|e| Error::io(self.root.display(), e))?;
        let real = full.canonicalize().map_err(|e| Error::io(full.display(), e))?;
        if !real.starts_with(&root) {
            return Err(Error::invalid(format!(
                "state file {path:?} resolves to {} outside the checkpoint root {}",
                real.display(),
                root.display()
            )));
        }
        Ok(real)
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
                    let data = std::fs::read(&full).map_err(|e| Error::io(full.display(), e))?;
                    if data.len() as u64 != size {
                        return Err(Error::corrupted(format!(
                            "state file {} has {} bytes but its handle says {size}",
                            full.display(),
                            data.len()
                        )));
                    }
                    Ok(Bytes::from(data))
                })
                .await
            }
            inline => InlineReader.read(inline).await,
        }
    }
}
