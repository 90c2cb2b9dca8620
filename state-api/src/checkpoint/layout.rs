//! The checkpoint layout, written once over any [`BlobStore`]:
//!
//! ```text
//! <root>/chk-<n>/_metadata   written last, only if absent: the checkpoint exists
//! <root>/chk-<n>/<file>      files of checkpoint n only
//! <root>/shared/<file>       files shared between checkpoints (SSTs)
//! <root>/taskowned/<file>    files owned by a backend across checkpoints
//! <savepoint-dir>/savepoint-<job6>-<id>-<unique>/   self-contained savepoints
//! ```
//!
//! State streams at or below the inline threshold are kept in the metadata;
//! larger ones become objects, written in bounded chunks. A stream dropped or
//! aborted before it is closed leaves no object. Every object a location's
//! streams create is recorded, so an aborted attempt deletes all it wrote.
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//! use flowstate_api::checkpoint::{MemoryBlobStore, StateScope};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let storage = CheckpointStorage::new(Arc::new(MemoryBlobStore::new("memory://job")), "job")?
//!     .with_inline_threshold(16)?;
//! let location = storage.init_checkpoint(1).await?;
//! let mut stream = location.create_output_stream(StateScope::Shared).await?;
//! stream.write(&[7; 100]).await?;
//! let handle = stream.close().await?;
//! assert!(handle.file_path().is_some_and(|p| p.starts_with("shared/")));
//! location.write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)).await?;
//! let resolved = storage.resolve("memory://job/chk-1/_metadata").await?;
//! assert_eq!(resolved.reader.read(&handle).await?.len(), 100);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::checkpoint::blob::{BlobPath, BlobStore, BlobWriter};
use crate::checkpoint::handle::{validate_relative_path, StreamStateHandle};
use crate::checkpoint::metadata::{CheckpointKind, CheckpointMetadata};
use crate::checkpoint::storage::{
    check_ranges, checkpoint_dir_id, metadata_path, parse_pointer, unique_file_name, ResolvedCheckpoint, StateReader,
    StateScope, StorageCapabilities, StoredFile, METADATA_FILE,
};
use crate::error::{Error, ErrorKind, Result};

/// Flink's default inline threshold: 20 KiB.
pub const DEFAULT_INLINE_THRESHOLD: usize = 20 << 10;
/// The largest inline threshold allowed for durable storage: 1 MiB.
pub const MAX_INLINE_THRESHOLD: usize = 1 << 20;
/// Bytes handed to the store at a time by output streams (and the most a
/// stream keeps in memory beyond the inline threshold).
pub const DEFAULT_WRITE_CHUNK: usize = 1 << 20;
/// The largest `_metadata` file read: larger ones are refused.
pub const MAX_METADATA_SIZE: u64 = 256 << 20;
/// Name of the shared-state directory.
pub const SHARED_DIR: &str = "shared";
/// Name of the task-owned state directory.
pub const TASK_OWNED_DIR: &str = "taskowned";

/// The objects a location's streams created.
type Written = Arc<Mutex<BTreeSet<BlobPath>>>;

fn record(written: &Written) -> std::sync::MutexGuard<'_, BTreeSet<BlobPath>> {
    written.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone)]
struct Config {
    job_id: String,
    inline_threshold: usize,
    max_state_size: Option<u64>,
    write_chunk: usize,
    savepoint_dir: Option<String>,
    durable: bool,
    shared_state: bool,
}

/// Checkpoint storage for one job over any [`BlobStore`] rooted at the
/// job's directory: the filesystem, object-store and memory storages are
/// this layout over their adapter.
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    store: Arc<dyn BlobStore>,
    config: Config,
}

impl CheckpointStorage {
    /// Storage for `job_id` in `store`, which is rooted at the job's
    /// directory (`<base>/<job_id>`).
    pub fn new(store: Arc<dyn BlobStore>, job_id: &str) -> Result<Self> {
        validate_relative_path(job_id)?;
        if job_id.contains('/') {
            return Err(Error::invalid(format!(
                "job id {job_id:?} must be a single path component"
            )));
        }
        Ok(Self::unchecked(store, job_id))
    }

    /// As [`new`](Self::new), without checking the job id.
    pub(crate) fn unchecked(store: Arc<dyn BlobStore>, job_id: &str) -> Self {
        CheckpointStorage {
            store,
            config: Config {
                job_id: job_id.to_string(),
                inline_threshold: DEFAULT_INLINE_THRESHOLD,
                max_state_size: None,
                write_chunk: DEFAULT_WRITE_CHUNK,
                savepoint_dir: None,
                durable: true,
                shared_state: true,
            },
        }
    }

    /// The storage of another job beside this one (`<parent of root>/<job_id>`),
    /// with the same settings, in the same store.
    pub fn for_job(&self, job_id: &str) -> Result<Self> {
        let parent = self.store.root().rsplit_once('/').map_or("", |(p, _)| p);
        let store = self.store.open(&format!("{parent}/{job_id}"))?;
        let mut other = CheckpointStorage::new(store, job_id)?;
        other.config = Config {
            job_id: job_id.to_string(),
            ..self.config.clone()
        };
        if let Some(dir) = other.config.savepoint_dir.as_mut().filter(|d| **d == self.store.root()) {
            *dir = other.store.root().to_string();
        }
        Ok(other)
    }

    /// Streams of at most `bytes` are inlined into the metadata (at most
    /// [`MAX_INLINE_THRESHOLD`]: metadata is read whole at every restore).
    pub fn with_inline_threshold(mut self, bytes: usize) -> Result<Self> {
        if bytes > MAX_INLINE_THRESHOLD {
            return Err(Error::invalid(format!(
                "inline threshold {bytes} exceeds the maximum of {MAX_INLINE_THRESHOLD} bytes"
            )));
        }
        self.config.inline_threshold = bytes;
        Ok(self)
    }

    /// Streams of more than `bytes` fail with `LimitExceeded`. On a volatile
    /// storage (memory) every stream is inlined, so the inline threshold
    /// follows.
    pub fn with_max_state_size(mut self, bytes: usize) -> Self {
        self.config.max_state_size = Some(bytes as u64);
        if !self.config.durable {
            self.config.inline_threshold = bytes;
        }
        self
    }

    /// Bytes handed to the store at a time (at least 4 KiB).
    pub fn with_write_chunk(mut self, bytes: usize) -> Self {
        self.config.write_chunk = bytes.max(4096);
        self
    }

    /// Where savepoints go when no target is given (a location the store
    /// can [`open`](BlobStore::open)).
    pub fn with_savepoint_dir(mut self, location: impl Into<String>) -> Self {
        self.config.savepoint_dir = Some(location.into());
        self
    }

    /// Declares the store volatile and without shared state (memory):
    /// every stream up to the maximum state size is inlined.
    pub fn volatile(mut self) -> Self {
        self.config.durable = false;
        self.config.shared_state = false;
        if let Some(max) = self.config.max_state_size {
            self.config.inline_threshold = usize::try_from(max).unwrap_or(usize::MAX);
        }
        self
    }

    /// The job directory's pointer prefix.
    pub fn job_root(&self) -> &str {
        self.store.root()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// This storage (job and configuration) over `store` instead: the same
    /// store wrapped, to count or fail its operations.
    pub fn with_store(&self, store: Arc<dyn BlobStore>) -> CheckpointStorage {
        CheckpointStorage {
            store,
            config: self.config.clone(),
        }
    }

    fn location(
        &self,
        checkpoint_id: u64,
        kind: CheckpointKind,
        store: Arc<dyn BlobStore>,
        dir: Option<BlobPath>,
    ) -> CheckpointLocation {
        let pointer = match &dir {
            Some(d) => format!("{}/{d}", store.root()),
            None => store.root().to_string(),
        };
        CheckpointLocation {
            checkpoint_id,
            kind,
            pointer,
            store,
            dir,
            config: self.config.clone(),
            written: Arc::default(),
        }
    }

    /// Reads and decodes the `_metadata` of the checkpoint at `pointer`.
    async fn read_checkpoint(&self, pointer: &str) -> Result<ResolvedCheckpoint> {
        let parsed = parse_pointer(pointer)?;
        let normalized = parsed.normalized();
        // Handles of a checkpoint are relative to its job directory; those
        // of a savepoint to the savepoint's own directory.
        let (root, metadata) = if parsed.checkpoint_id.is_some() {
            let root = if parsed.parent == self.store.root() {
                Arc::clone(&self.store)
            } else {
                self.store.open(parsed.parent)?
            };
            (root, BlobPath::new(parsed.dir)?.join(METADATA_FILE)?)
        } else {
            (self.store.open(&normalized)?, BlobPath::new(METADATA_FILE)?)
        };
        let name = format!("{normalized}/{METADATA_FILE}");
        let data = match read_capped(&*root, &metadata, MAX_METADATA_SIZE).await {
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let hint = if self.config.durable {
                    ""
                } else {
                    "; this storage keeps checkpoints only in the memory of the process that wrote them, so they \
                     cannot be resolved after that process ends"
                };
                return Err(Error::not_found(format!(
                    "checkpoint {normalized} has no {METADATA_FILE}: it does not exist or never completed{hint}"
                )));
            }
            Err(e) => return Err(e.context(&name)),
        };
        let metadata = CheckpointMetadata::decode(&data, &name)?;
        Ok(ResolvedCheckpoint {
            pointer: normalized,
            metadata,
            reader: Arc::new(BlobStateReader::new(root)),
        })
    }
}

/// Reads a whole object of at most `cap` bytes.
async fn read_capped(store: &dyn BlobStore, path: &BlobPath, cap: u64) -> Result<Bytes> {
    let data = store.get_range(path, 0..cap.saturating_add(1)).await?;
    if data.len() as u64 > cap {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("{}/{path} is larger than the {cap} bytes allowed", store.root()),
        ));
    }
    Ok(data)
}

impl CheckpointStorage {
    /// The job this storage writes for.
    pub fn job_id(&self) -> &str {
        &self.config.job_id
    }

    /// What it can do.
    pub fn capabilities(&self) -> StorageCapabilities {
        StorageCapabilities::new(
            self.config.inline_threshold,
            self.config.max_state_size,
            self.config.durable,
            self.config.shared_state,
        )
    }

    /// Prepares the location of checkpoint `checkpoint_id`; `Conflict` if it already exists.
    pub async fn init_checkpoint(&self, checkpoint_id: u64) -> Result<Arc<CheckpointLocation>> {
        let meta = BlobPath::new(&metadata_path(checkpoint_id))?;
        if self.store.head(&meta).await?.is_some() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("checkpoint {} already exists", self.checkpoint_pointer(checkpoint_id)),
            ));
        }
        self.checkpoint_location(checkpoint_id)
    }

    /// The location of checkpoint `checkpoint_id`, which the coordinator
    /// began ([`init_checkpoint`](Self::init_checkpoint), or
    /// `CheckpointStore::begin_checkpoint`): what each subtask writes its
    /// snapshots to, in this process or another. No I/O: the coordinator
    /// checked that the checkpoint is new. Checkpoints only; a savepoint's
    /// directory is named when it begins, so subtasks use its location.
    pub fn checkpoint_location(&self, checkpoint_id: u64) -> Result<Arc<CheckpointLocation>> {
        let dir = BlobPath::new(&format!("chk-{checkpoint_id}"))?;
        Ok(Arc::new(self.location(
            checkpoint_id,
            CheckpointKind::Checkpoint,
            Arc::clone(&self.store),
            Some(dir),
        )))
    }

    /// Prepares a savepoint location, under `target` if given, else under the
    /// configured savepoint directory.
    pub async fn init_savepoint(&self, checkpoint_id: u64, target: Option<&str>) -> Result<Arc<CheckpointLocation>> {
        let parent = match (target, &self.config.savepoint_dir) {
            (Some(t), _) => t.trim_end_matches('/').to_string(),
            (None, Some(d)) => d.trim_end_matches('/').to_string(),
            (None, None) => {
                return Err(Error::invalid(
                    "no savepoint directory: give a target or configure one with with_savepoint_dir",
                ))
            }
        };
        let prefix: String = self.config.job_id.chars().take(6).collect();
        let name = format!("savepoint-{prefix}-{checkpoint_id}-{}", unique_file_name());
        let store = self.store.open(&format!("{parent}/{name}"))?;
        Ok(Arc::new(self.location(
            checkpoint_id,
            CheckpointKind::Savepoint,
            store,
            None,
        )))
    }

    /// Finds a completed checkpoint: `…/chk-<n>/_metadata`, `…/chk-<n>` and
    /// `…/chk-<n>/` name the same one; a savepoint by its directory.
    pub async fn resolve(&self, pointer: &str) -> Result<ResolvedCheckpoint> {
        self.read_checkpoint(pointer).await
    }

    /// The newest complete checkpoint of this job, skipping any without a
    /// valid metadata file.
    pub async fn latest_checkpoint(&self) -> Result<Option<ResolvedCheckpoint>> {
        for id in self.checkpoint_dirs().await?.into_iter().rev() {
            // A directory without metadata is a checkpoint still being taken
            // (or one that failed): not a candidate.
            if self.store.head(&BlobPath::new(&metadata_path(id))?).await?.is_none() {
                continue;
            }
            let pointer = self.checkpoint_pointer(id);
            match self.read_checkpoint(&pointer).await {
                Ok(resolved) => return Ok(Some(resolved)),
                Err(e) => tracing::warn!(%pointer, error = %e, "skipping checkpoint without a valid metadata file"),
            }
        }
        Ok(None)
    }

    /// The pointer checkpoint `checkpoint_id` of this job has (or would have).
    pub fn checkpoint_pointer(&self, checkpoint_id: u64) -> String {
        format!("{}/chk-{checkpoint_id}", self.store.root())
    }

    /// The ids of every `chk-<n>` directory under the job's root, ascending:
    /// complete ones, those in progress or failed (no metadata file), and
    /// those with something unreadable where `_metadata` should be.
    pub async fn checkpoint_dirs(&self) -> Result<Vec<u64>> {
        // One level: the `chk-<n>` directories, never the files of `shared/`.
        let mut ids: Vec<u64> = self
            .store
            .list_level(None)
            .await?
            .dirs
            .iter()
            .filter_map(|d| checkpoint_dir_id(d.as_str()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Every file under the job's root (checkpoint directories, `shared/`,
    /// `taskowned/`), with job-relative paths.
    pub async fn list_files(&self) -> Result<Vec<StoredFile>> {
        Ok(self
            .store
            .list(None)
            .await?
            .into_iter()
            .map(|m| StoredFile {
                path: m.path.as_str().to_string(),
                size: m.size,
                modified_millis: m.modified_millis,
            })
            .collect())
    }

    /// Reads a file (at most [`MAX_METADATA_SIZE`] bytes) by its job-relative path.
    pub async fn read_file(&self, path: &str) -> Result<Bytes> {
        read_capped(&*self.store, &BlobPath::new(path)?, MAX_METADATA_SIZE).await
    }

    /// Deletes files by job-relative path. Files already gone are not an
    /// error; checkpoint directories left empty are removed.
    pub async fn delete_files(&self, paths: &[String]) -> Result<()> {
        let paths = paths.iter().map(|p| BlobPath::new(p)).collect::<Result<Vec<_>>>()?;
        self.store.delete(&paths).await
    }

    /// The file at a job-relative path, if it exists as a regular file.
    pub async fn stat_file(&self, path: &str) -> Result<Option<StoredFile>> {
        Ok(self.store.head(&BlobPath::new(path)?).await?.map(|m| StoredFile {
            path: path.to_string(),
            size: m.size,
            modified_millis: m.modified_millis,
        }))
    }
}

/// Where one checkpoint or savepoint is being written: hands out the
/// output streams backends write state through, and writes the metadata
/// last. From [`CheckpointStorage::init_checkpoint`] and
/// [`CheckpointStorage::init_savepoint`].
pub struct CheckpointLocation {
    checkpoint_id: u64,
    kind: CheckpointKind,
    pointer: String,
    /// The store handle paths are relative to: the job's for checkpoints,
    /// the savepoint directory's own for savepoints.
    store: Arc<dyn BlobStore>,
    /// `chk-<n>` for checkpoints; `None` for savepoints (their root).
    dir: Option<BlobPath>,
    config: Config,
    written: Written,
}

impl fmt::Debug for CheckpointLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointLocation")
            .field("pointer", &self.pointer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CheckpointLocation {
    fn metadata(&self) -> Result<BlobPath> {
        match &self.dir {
            Some(d) => d.join(METADATA_FILE),
            None => BlobPath::new(METADATA_FILE),
        }
    }

    async fn refuse_if_complete(&self) -> Result<()> {
        if self.store.head(&self.metadata()?).await?.is_some() {
            return Err(Error::invalid(format!(
                "{} is a completed checkpoint; discard it through the checkpoint store",
                self.pointer
            )));
        }
        Ok(())
    }
}

impl CheckpointLocation {
    /// The checkpoint id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// Checkpoint or savepoint.
    pub fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// The pointer that will resolve this checkpoint once it is complete.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// A new output stream for state of `scope`.
    pub async fn create_output_stream(&self, scope: StateScope) -> Result<CheckpointOutputStream> {
        // Savepoints are self-contained: every stream goes into their directory.
        let dir = match (&self.dir, scope) {
            (None, _) => None,
            (Some(d), StateScope::Exclusive) => Some(d.clone()),
            (Some(_), StateScope::Shared) => Some(BlobPath::new(SHARED_DIR)?),
            (Some(_), StateScope::TaskOwned) => Some(BlobPath::new(TASK_OWNED_DIR)?),
        };
        Ok(CheckpointOutputStream {
            store: Arc::clone(&self.store),
            dir,
            pointer: self.pointer.clone(),
            inline_threshold: self.config.inline_threshold,
            max_state_size: self.config.max_state_size,
            chunk: self.config.write_chunk,
            buf: Vec::new(),
            pos: 0,
            open: None,
            written: Arc::clone(&self.written),
        })
    }

    /// Writes the metadata, last, durably and only if absent: the checkpoint
    /// then exists. Returns its pointer. Fails with `Conflict` if the
    /// checkpoint already exists.
    pub async fn write_metadata(&self, metadata: &CheckpointMetadata) -> Result<String> {
        let bytes = Bytes::from(metadata.encode());
        match self.store.put_if_absent(&self.metadata()?, bytes).await {
            Ok(()) => Ok(self.pointer.clone()),
            Err(e) if e.kind() == ErrorKind::Conflict => Err(Error::new(
                ErrorKind::Conflict,
                format!("checkpoint {} already exists", self.pointer),
            )
            .with_source(e)),
            Err(e) => Err(e.context(format!("writing the metadata of {}", self.pointer))),
        }
    }

    /// Deletes what this location wrote (an aborted checkpoint): its
    /// exclusive directory and every file its streams wrote in any scope,
    /// shared files included (an aborted attempt's uploads are never
    /// referenced by another checkpoint).
    pub async fn dispose(&self) -> Result<()> {
        self.refuse_if_complete().await?;
        // What its streams wrote anywhere, and whatever is in its own
        // directory (for a savepoint, the store's root is that directory).
        let mut paths: BTreeSet<BlobPath> = record(&self.written).clone();
        paths.extend(self.store.list(self.dir.as_ref()).await?.into_iter().map(|m| m.path));
        let paths: Vec<BlobPath> = paths.into_iter().collect();
        self.store
            .delete(&paths)
            .await
            .map_err(|e| e.context(format!("disposing {}", self.pointer)))?;
        let mut w = record(&self.written);
        for p in &paths {
            w.remove(p);
        }
        Ok(())
    }

    /// Deletes the files of `handles` that this location's streams wrote:
    /// what a backend calls when its async phase fails after some streams
    /// were closed, so a failed attempt leaves nothing behind. Handles this
    /// location did not write are left alone.
    pub async fn discard(&self, handles: &[StreamStateHandle]) -> Result<()> {
        let paths: Vec<BlobPath> = {
            let w = record(&self.written);
            handles
                .iter()
                .filter_map(StreamStateHandle::file_path)
                .filter_map(|p| BlobPath::new(p).ok())
                .filter(|p| w.contains(p))
                .collect()
        };
        self.store.delete(&paths).await?;
        let mut w = record(&self.written);
        for p in &paths {
            w.remove(p);
        }
        Ok(())
    }
}

/// An output stream over a blob store: bytes are buffered; up to the inline
/// threshold they are inlined on close, beyond it they go to a new object
/// in chunks, so at most one chunk is held in memory. Dropping it, or
/// calling [`abort`](CheckpointOutputStream::abort), before
/// [`close`](CheckpointOutputStream::close) discards what was written.
pub struct CheckpointOutputStream {
    store: Arc<dyn BlobStore>,
    dir: Option<BlobPath>,
    pointer: String,
    inline_threshold: usize,
    max_state_size: Option<u64>,
    chunk: usize,
    buf: Vec<u8>,
    pos: u64,
    open: Option<(BlobPath, Box<dyn BlobWriter>)>,
    written: Written,
}

impl CheckpointOutputStream {
    /// The stream's size once `more` bytes are appended; `LimitExceeded`
    /// above the storage's maximum state size.
    fn check_size(&self, more: usize) -> Result<u64> {
        let size = self.pos + more as u64;
        if let Some(max) = self.max_state_size.filter(|m| size > *m) {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "{}: state of at least {size} bytes exceeds the {max} bytes this storage allows; use a \
                     storage without that limit (filesystem, object store) or raise its maximum state size",
                    self.pointer
                ),
            ));
        }
        Ok(size)
    }

    /// Sends the buffer to the object.
    async fn spill(&mut self) -> Result<()> {
        let data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk)));
        self.send(data).await
    }

    /// Sends `data` to the object, creating it first if needed.
    async fn send(&mut self, data: Bytes) -> Result<()> {
        if self.open.is_none() {
            let name = unique_file_name();
            let path = match &self.dir {
                Some(d) => d.join(&name)?,
                None => BlobPath::new(&name)?,
            };
            let writer = self.store.create(&path).await?;
            record(&self.written).insert(path.clone());
            self.open = Some((path, writer));
        }
        if let Some((_, writer)) = &mut self.open {
            writer.write(data).await?;
        }
        Ok(())
    }

    async fn fail(&mut self, e: Error) -> Error {
        if let Some((path, writer)) = self.open.take() {
            writer.abort().await;
            record(&self.written).remove(&path);
        }
        e
    }
}

impl CheckpointOutputStream {
    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let size = self.check_size(data.len())?;
        self.buf.extend_from_slice(data);
        self.pos = size;
        let limit = if self.open.is_some() {
            self.chunk
        } else {
            self.inline_threshold.max(self.chunk)
        };
        if self.buf.len() > limit {
            if let Err(e) = self.spill().await {
                return Err(self.fail(e).await);
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Appends `data`, which the stream may keep instead of copying: large
    /// buffers (a file chunk, a key-group frame) pass to the store without a
    /// copy on the calling task.
    pub async fn write_bytes(&mut self, data: Bytes) -> Result<()> {
        // Buffered bytes go first, and a stream that may still be inlined
        // stays in memory: only then is `data` copied.
        let size = self.pos + data.len() as u64;
        if !self.buf.is_empty() || data.len() < self.chunk || size <= self.inline_threshold as u64 {
            return self.write(&data).await;
        }
        self.check_size(data.len())?;
        self.pos = size;
        if let Err(e) = self.send(data).await {
            return Err(self.fail(e).await);
        }
        Ok(())
    }

    /// Completes the stream: nothing written gives
    /// [`StreamStateHandle::Empty`], a small stream an inline handle, a
    /// larger one a file.
    pub async fn close(mut self) -> Result<StreamStateHandle> {
        if self.open.is_none() {
            if self.pos == 0 {
                return Ok(StreamStateHandle::Empty);
            }
            if self.buf.len() <= self.inline_threshold {
                return Ok(StreamStateHandle::Inline(Bytes::from(std::mem::take(&mut self.buf))));
            }
        }
        if let Err(e) = self.spill().await {
            return Err(self.fail(e).await);
        }
        let Some((path, writer)) = self.open.take() else {
            return Err(Error::internal("state object vanished"));
        };
        if let Err(e) = writer.finish().await {
            record(&self.written).remove(&path);
            return Err(e);
        }
        Ok(StreamStateHandle::File {
            path: path.as_str().to_string(),
            size: self.pos,
        })
    }

    /// Discards the stream and whatever it wrote.
    pub async fn abort(mut self) {
        if let Some((path, writer)) = self.open.take() {
            writer.abort().await;
            record(&self.written).remove(&path);
        }
    }
}

/// Reads state streams from a blob store: whole streams (checking their
/// size against the handle, reading at most one byte more) and byte ranges.
#[derive(Debug, Clone)]
pub struct BlobStateReader {
    store: Arc<dyn BlobStore>,
}

impl BlobStateReader {
    /// A reader of the objects of `store`.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        BlobStateReader { store }
    }

    fn name(&self, path: &str) -> String {
        format!("{}/{path}", self.store.root())
    }
}

#[async_trait]
impl StateReader for BlobStateReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
        match handle {
            StreamStateHandle::File { path, size } => {
                let data = self
                    .store
                    .get_range(&BlobPath::new(path)?, 0..size.saturating_add(1))
                    .await?;
                if data.len() as u64 != *size {
                    // The error path only: how large the file really is.
                    let actual = match self.store.head(&BlobPath::new(path)?).await {
                        Ok(Some(m)) => m.size.to_string(),
                        _ => format!(
                            "{}{}",
                            if data.len() as u64 > *size { "more than " } else { "" },
                            data.len().min(*size as usize)
                        ),
                    };
                    return Err(Error::corrupted(format!(
                        "state file {} has {actual} bytes but its handle says {size}",
                        self.name(path)
                    )));
                }
                Ok(data)
            }
            other => crate::checkpoint::storage::InlineReader.read(other).await,
        }
    }

    async fn read_ranges(&self, handle: &StreamStateHandle, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match handle {
            StreamStateHandle::File { path, size } => {
                check_ranges(handle, ranges)?;
                let parts = self.store.get_ranges(&BlobPath::new(path)?, ranges).await?;
                for (r, part) in ranges.iter().zip(&parts) {
                    if part.len() as u64 != r.end - r.start {
                        return Err(Error::corrupted(format!(
                            "state file {} ends before byte {} that its handle ({size} bytes) covers",
                            self.name(path),
                            r.end
                        )));
                    }
                }
                Ok(parts)
            }
            other => {
                crate::checkpoint::storage::InlineReader
                    .read_ranges(other, ranges)
                    .await
            }
        }
    }

    async fn local_path(&self, handle: &StreamStateHandle) -> Option<std::path::PathBuf> {
        let path = BlobPath::new(handle.file_path()?).ok()?;
        self.store.local_path(&path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::MemoryBlobStore;

    fn storage() -> CheckpointStorage {
        CheckpointStorage::new(Arc::new(MemoryBlobStore::new("memory://job")), "job")
            .unwrap()
            .with_inline_threshold(8)
            .unwrap()
            .with_write_chunk(4096)
            .with_savepoint_dir("memory://savepoints")
    }

    #[tokio::test]
    async fn streams_inline_spill_and_record_what_they_wrote() {
        let s = storage();
        let l = s.init_checkpoint(1).await.unwrap();
        let mut small = l.create_output_stream(StateScope::Shared).await.unwrap();
        small.write(b"tiny").await.unwrap();
        assert_eq!(
            small.close().await.unwrap(),
            StreamStateHandle::Inline(Bytes::from_static(b"tiny"))
        );
        let mut big = l.create_output_stream(StateScope::Shared).await.unwrap();
        for _ in 0..3 {
            big.write(&[1; 5000]).await.unwrap();
        }
        let h = big.close().await.unwrap();
        assert_eq!(h.size(), 15_000);
        let mut own = l.create_output_stream(StateScope::Exclusive).await.unwrap();
        own.write(&[2; 100]).await.unwrap();
        let own = own.close().await.unwrap();
        assert!(own.file_path().unwrap().starts_with("chk-1/"));
        // A dropped stream leaves nothing.
        let mut dropped = l.create_output_stream(StateScope::Shared).await.unwrap();
        dropped.write(&[3; 9000]).await.unwrap();
        drop(dropped);
        let reader = BlobStateReader::new(Arc::clone(s.store()));
        assert_eq!(reader.read(&h).await.unwrap().len(), 15_000);
        let parts = reader.read_ranges(&h, &[0..2, 14_999..15_000]).await.unwrap();
        assert_eq!(parts, [&[1u8, 1][..], &[1u8][..]]);
        assert!(reader
            .read_ranges(&h, std::slice::from_ref(&(0..15_001)))
            .await
            .is_err());
        // Abort: everything the attempt wrote goes, the shared object too.
        l.dispose().await.unwrap();
        assert!(s.list_files().await.unwrap().is_empty(), "{:?}", s.list_files().await);
    }

    #[tokio::test]
    async fn metadata_last_and_only_once_and_pointers() {
        let s = storage();
        let l = s.init_checkpoint(3).await.unwrap();
        let p = l
            .write_metadata(&CheckpointMetadata::new(3, CheckpointKind::Checkpoint, 0))
            .await
            .unwrap();
        assert_eq!(p, "memory://job/chk-3");
        let e = l
            .write_metadata(&CheckpointMetadata::new(3, CheckpointKind::Checkpoint, 1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(s.init_checkpoint(3).await.unwrap_err().kind(), ErrorKind::Conflict);
        assert_eq!(l.dispose().await.unwrap_err().kind(), ErrorKind::Invalid);
        for form in [
            "memory://job/chk-3",
            "memory://job/chk-3/",
            "memory://job/chk-3/_metadata",
        ] {
            assert_eq!(s.resolve(form).await.unwrap().pointer, "memory://job/chk-3");
        }
        assert_eq!(s.latest_checkpoint().await.unwrap().unwrap().metadata.checkpoint_id, 3);
        let sp = s.init_savepoint(4, None).await.unwrap();
        assert!(sp.pointer().starts_with("memory://savepoints/savepoint-job-4-"));
        let mut st = sp.create_output_stream(StateScope::Shared).await.unwrap();
        st.write(&[5; 64]).await.unwrap();
        let h = st.close().await.unwrap();
        assert!(
            !h.file_path().unwrap().contains('/'),
            "savepoint files are in its own directory"
        );
        let p = sp
            .write_metadata(&CheckpointMetadata::new(4, CheckpointKind::Savepoint, 0))
            .await
            .unwrap();
        let r = s.resolve(&p).await.unwrap();
        assert_eq!(r.reader.read(&h).await.unwrap().len(), 64);
        let e = s.resolve("memory://job/chk-9").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn state_above_the_maximum_is_refused() {
        let s = storage().with_max_state_size(100);
        let l = s.init_checkpoint(2).await.unwrap();
        let mut st = l.create_output_stream(StateScope::Exclusive).await.unwrap();
        st.write(&[0; 100]).await.unwrap();
        let e = st.write(&[0]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(e.to_string().contains("chk-2") && e.to_string().contains("100"), "{e}");
    }
}
