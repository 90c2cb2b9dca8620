//! In-memory checkpoint storage, like Flink's JobManager memory storage:
//! every state stream is inlined into the checkpoint metadata, which is
//! kept in this process's memory.
//!
//! For tests, demos and small state only. State streams larger than the
//! configured maximum (default 5 MiB) are refused, and checkpoints cannot be
//! resolved once the process that wrote them has ended.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::handle::StreamStateHandle;
use crate::metadata::{CheckpointKind, CheckpointMetadata};
use crate::storage::{
    parse_pointer, CheckpointLocation, CheckpointOutputStream, CheckpointStorage, InlineReader, ResolvedCheckpoint,
    StateScope, StorageCapabilities, StoredFile, METADATA_FILE,
};

/// Flink's default maximum state size of the memory storage: 5 MiB.
pub const DEFAULT_MAX_STATE_SIZE: usize = 5 << 20;

const SCHEME: &str = "memory://";

type Space = Arc<Mutex<BTreeMap<String, Bytes>>>;

/// Checkpoint storage in process memory. Clones and [`for_job`](Self::for_job)
/// siblings share one space, keyed by job id.
#[derive(Debug, Clone)]
pub struct MemoryCheckpointStorage {
    job_id: Arc<str>,
    max_state_size: usize,
    space: Space,
}

impl MemoryCheckpointStorage {
    /// Storage for `job_id` with the default 5 MiB maximum state size.
    pub fn new(job_id: &str) -> Self {
        MemoryCheckpointStorage {
            job_id: Arc::from(job_id),
            max_state_size: DEFAULT_MAX_STATE_SIZE,
            space: Arc::default(),
        }
    }

    /// Sets the largest state a single stream may hold.
    pub fn with_max_state_size(mut self, bytes: usize) -> Self {
        self.max_state_size = bytes;
        self
    }

    /// Storage for another job, sharing this one's memory space.
    pub fn for_job(&self, job_id: &str) -> Self {
        MemoryCheckpointStorage {
            job_id: Arc::from(job_id),
            max_state_size: self.max_state_size,
            space: Arc::clone(&self.space),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Bytes>>> {
        self.space
            .lock()
            .map_err(|_| Error::internal("memory checkpoint storage lock poisoned"))
    }

    fn location(&self, checkpoint_id: u64, kind: CheckpointKind) -> Arc<dyn CheckpointLocation> {
        let dir = match kind {
            CheckpointKind::Checkpoint => format!("chk-{checkpoint_id}"),
            CheckpointKind::Savepoint => format!("savepoint-{checkpoint_id}"),
        };
        Arc::new(MemoryLocation {
            checkpoint_id,
            kind,
            pointer: format!("{SCHEME}{}/{dir}", self.job_id),
            max_state_size: self.max_state_size,
            space: Arc::clone(&self.space),
        })
    }

    fn decode(&self, pointer: &str, bytes: &Bytes) -> Result<ResolvedCheckpoint> {
        Ok(ResolvedCheckpoint {
            pointer: pointer.to_string(),
            metadata: CheckpointMetadata::decode(bytes, pointer)?,
            reader: Arc::new(InlineReader),
        })
    }
}

#[async_trait]
impl CheckpointStorage for MemoryCheckpointStorage {
    fn job_id(&self) -> &str {
        &self.job_id
    }

    fn capabilities(&self) -> StorageCapabilities {
        StorageCapabilities {
            inline_threshold: self.max_state_size,
            max_state_size: Some(self.max_state_size as u64),
            durable: false,
            shared_state: false,
        }
    }

    async fn init_checkpoint(&self, checkpoint_id: u64) -> Result<Arc<dyn CheckpointLocation>> {
        Ok(self.location(checkpoint_id, CheckpointKind::Checkpoint))
    }

    async fn init_savepoint(&self, checkpoint_id: u64, target: Option<&str>) -> Result<Arc<dyn CheckpointLocation>> {
        if let Some(target) = target {
            return Err(Error::unsupported(format!(
                "memory checkpoint storage cannot write savepoints to {target:?}; use filesystem or object-store storage"
            )));
        }
        Ok(self.location(checkpoint_id, CheckpointKind::Savepoint))
    }

    async fn resolve(&self, pointer: &str) -> Result<ResolvedCheckpoint> {
        let parsed = parse_pointer(pointer)?;
        let normalized = parsed.normalized();
        if !normalized.starts_with(SCHEME) {
            return Err(Error::invalid(format!(
                "{pointer:?} is not a memory checkpoint pointer ({SCHEME}<job>/chk-<n>)"
            )));
        }
        let found = self.lock()?.get(&normalized).cloned();
        match found {
            Some(bytes) => self.decode(&normalized, &bytes),
            None => Err(Error::not_found(format!(
                "checkpoint {normalized} not found: memory checkpoint storage keeps checkpoints only in the memory \
                 of the process that wrote them, so they cannot be resolved after that process ends"
            ))),
        }
    }

    async fn latest_checkpoint(&self) -> Result<Option<ResolvedCheckpoint>> {
        let prefix = format!("{SCHEME}{}/chk-", self.job_id);
        let latest = {
            let space = self.lock()?;
            space
                .iter()
                .filter_map(|(k, v)| {
                    let id = k.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                    Some((id, k.clone(), v.clone()))
                })
                .max_by_key(|(id, _, _)| *id)
        };
        latest.map(|(_, k, v)| self.decode(&k, &v)).transpose()
    }

    fn checkpoint_pointer(&self, checkpoint_id: u64) -> String {
        format!("{SCHEME}{}/chk-{checkpoint_id}", self.job_id)
    }

    async fn list_files(&self) -> Result<Vec<StoredFile>> {
        let prefix = format!("{SCHEME}{}/", self.job_id);
        let space = self.lock()?;
        Ok(space
            .iter()
            .filter_map(|(k, v)| {
                let dir = k.strip_prefix(&prefix)?;
                dir.starts_with("chk-").then(|| StoredFile {
                    path: format!("{dir}/{METADATA_FILE}"),
                    size: v.len() as u64,
                    modified_millis: 0,
                })
            })
            .collect())
    }

    async fn read_file(&self, path: &str) -> Result<Bytes> {
        let key = self.metadata_key(path)?;
        let found = self.lock()?.get(&key).cloned();
        found.ok_or_else(|| Error::not_found(format!("{key}: no such checkpoint in memory")))
    }

    async fn delete_files(&self, paths: &[String]) -> Result<()> {
        let keys = paths.iter().map(|p| self.metadata_key(p)).collect::<Result<Vec<_>>>()?;
        let mut space = self.lock()?;
        for key in keys {
            space.remove(&key);
        }
        Ok(())
    }
}

impl MemoryCheckpointStorage {
    /// The space key of a job-relative `chk-<n>/_metadata` path: the only
    /// files this storage has.
    fn metadata_key(&self, path: &str) -> Result<String> {
        let dir = path
            .strip_suffix(METADATA_FILE)
            .and_then(|d| d.strip_suffix('/'))
            .filter(|d| d.starts_with("chk-") && !d.contains('/'))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "{path:?}: memory checkpoint storage holds only chk-<n>/{METADATA_FILE} files"
                ))
            })?;
        Ok(format!("{SCHEME}{}/{dir}", self.job_id))
    }
}

#[derive(Debug)]
struct MemoryLocation {
    checkpoint_id: u64,
    kind: CheckpointKind,
    pointer: String,
    max_state_size: usize,
    space: Space,
}

#[async_trait]
impl CheckpointLocation for MemoryLocation {
    fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    fn kind(&self) -> CheckpointKind {
        self.kind
    }

    fn pointer(&self) -> &str {
        &self.pointer
    }

    async fn create_output_stream(&self, _scope: StateScope) -> Result<Box<dyn CheckpointOutputStream>> {
        Ok(Box::new(MemoryOutputStream {
            buf: Vec::new(),
            max: self.max_state_size,
            pointer: self.pointer.clone(),
        }))
    }

    async fn write_metadata(&self, metadata: &CheckpointMetadata) -> Result<String> {
        let bytes = Bytes::from(metadata.encode());
        let mut space = self
            .space
            .lock()
            .map_err(|_| Error::internal("memory checkpoint storage lock poisoned"))?;
        if space.contains_key(&self.pointer) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("checkpoint {} already exists", self.pointer),
            ));
        }
        space.insert(self.pointer.clone(), bytes);
        Ok(self.pointer.clone())
    }

    async fn dispose(&self) -> Result<()> {
        // Nothing is stored before the metadata, and a completed
        // checkpoint is never disposed through its location.
        Ok(())
    }

    async fn discard(&self, _handles: &[StreamStateHandle]) -> Result<()> {
        // Every stream is inline: nothing was stored.
        Ok(())
    }
}

struct MemoryOutputStream {
    buf: Vec<u8>,
    max: usize,
    pointer: String,
}

#[async_trait]
impl CheckpointOutputStream for MemoryOutputStream {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let size = self.buf.len() + data.len();
        if size > self.max {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "{}: state of at least {size} bytes exceeds the {} bytes memory checkpoint storage allows; \
                     use filesystem storage or raise its maximum state size",
                    self.pointer, self.max
                ),
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn position(&self) -> u64 {
        self.buf.len() as u64
    }

    async fn close(self: Box<Self>) -> Result<StreamStateHandle> {
        if self.buf.is_empty() {
            Ok(StreamStateHandle::Empty)
        } else {
            Ok(StreamStateHandle::Inline(Bytes::from(self.buf)))
        }
    }

    async fn abort(self: Box<Self>) {}
}
