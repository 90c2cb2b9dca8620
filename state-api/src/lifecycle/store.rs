//! The checkpoint store: completion, retention and subsumption, aborts,
//! claim and no-claim restores, and job termination.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::registry::SharedStateRegistry;
use super::release::{keyed_handles, native_handles, NativeStateRelease};
use crate::checkpoint::{
    metadata_path, metadata_path_id, CheckpointKind, CheckpointLocation, CheckpointMetadata, CheckpointStorage,
    KeyedStateHandle, OperatorState, ResolvedCheckpoint, StoredFile,
};
use crate::error::{Error, ErrorKind, Result};

/// What happens to retained checkpoints when the job is cancelled
/// (Flink's externalized-checkpoint retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancellationPolicy {
    /// Keep them, so the job can be resumed later. The default: nothing is
    /// lost unless asked for.
    #[default]
    RetainOnCancellation,
    /// Delete them when the job is cancelled; keep them only if it failed.
    DeleteOnCancellation,
}

/// How a job ended, for [`CheckpointStore::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Finished: its checkpoints are no longer needed and are deleted.
    Finished,
    /// Cancelled by the user: the [`CancellationPolicy`] decides.
    Cancelled,
    /// Failed: checkpoints are kept for recovery.
    Failed,
    /// Suspended (e.g. leadership lost): checkpoints are kept.
    Suspended,
}

/// Who owns a checkpoint after restoring from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// The restored checkpoint becomes this job's: it is retained and later
    /// subsumed (and deleted) like any checkpoint the job took. Only for
    /// checkpoints of this job's own storage. Backends may share its files.
    Claim,
    /// The restored snapshot (a savepoint or another job's checkpoint) stays
    /// the user's: none of its files is ever deleted by this store, and no
    /// new checkpoint may reference them, so backends start afresh.
    NoClaim,
}

/// Configuration of a [`CheckpointStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStoreConfig {
    /// How many completed checkpoints to keep (at least 1; default 1).
    pub max_retained: usize,
    /// What cancellation does to them.
    pub cancellation: CancellationPolicy,
}

impl Default for CheckpointStoreConfig {
    fn default() -> Self {
        CheckpointStoreConfig {
            max_retained: 1,
            cancellation: CancellationPolicy::RetainOnCancellation,
        }
    }
}

impl CheckpointStoreConfig {
    /// Keeps the newest `n` checkpoints.
    pub fn with_max_retained(mut self, n: usize) -> Self {
        self.max_retained = n;
        self
    }

    /// Sets the cancellation policy.
    pub fn with_cancellation(mut self, policy: CancellationPolicy) -> Self {
        self.cancellation = policy;
        self
    }
}

/// A completed, retained checkpoint.
#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// Its pointer.
    pub pointer: String,
    /// Its metadata.
    pub metadata: Arc<CheckpointMetadata>,
    /// Every file it references, its metadata file last.
    files: Vec<String>,
}

impl CompletedCheckpoint {
    fn new(pointer: String, metadata: CheckpointMetadata) -> Self {
        let mut files = metadata.file_paths();
        files.push(metadata_path(metadata.checkpoint_id));
        CompletedCheckpoint {
            checkpoint_id: metadata.checkpoint_id,
            pointer,
            metadata: Arc::new(metadata),
            files,
        }
    }

    /// Every file the checkpoint references (job-relative), its metadata file last.
    pub fn files(&self) -> &[String] {
        &self.files
    }
}

/// What completing a checkpoint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The new checkpoint's pointer.
    pub pointer: String,
    /// Checkpoints subsumed and discarded.
    pub subsumed: Vec<u64>,
    /// Files deleted.
    pub deleted_files: usize,
    /// Files that could not be deleted; garbage collection finds them later.
    pub failed_deletes: usize,
    /// Files released but not deleted yet: checkpoints still in flight may
    /// reference them. They are deleted once those complete or abort, unless
    /// a retained checkpoint references them by then.
    pub deferred_files: usize,
}

/// Files released while checkpoints were in flight.
#[derive(Debug)]
struct DeferredDelete {
    files: Vec<String>,
    /// The checkpoints in flight at release time that may still complete.
    waiting: BTreeSet<u64>,
}

/// The completed checkpoints of one job: retention, subsumption, the
/// shared-state registry, restore modes and garbage collection.
///
/// A checkpoint's files are deleted only when no retained checkpoint
/// references them and no checkpoint still in flight can: files released
/// while checkpoints are in flight (begun, not yet completed or aborted)
/// wait until those have completed or aborted, and are then deleted only if
/// still unreferenced. Completing a checkpoint that references a missing
/// file fails. A checkpoint is discarded metadata first, so a crash midway
/// leaves orphans (for [`collect_garbage`](Self::collect_garbage)), never a
/// checkpoint with missing files. Savepoints are written through the
/// store but never retained or discarded by it.
#[derive(Debug)]
pub struct CheckpointStore {
    pub(super) storage: Arc<CheckpointStorage>,
    config: CheckpointStoreConfig,
    retained: VecDeque<CompletedCheckpoint>,
    pub(super) registry: SharedStateRegistry,
    pub(super) pending: BTreeSet<u64>,
    deferred: Vec<DeferredDelete>,
    releases: Vec<Arc<dyn NativeStateRelease>>,
}

impl CheckpointStore {
    /// Opens the store of `storage`'s job, recovering the completed
    /// checkpoints found there and rebuilding the registry from their
    /// metadata. Checkpoints whose metadata cannot be read are skipped (and
    /// make garbage collection refuse to run).
    pub async fn open(storage: Arc<CheckpointStorage>, config: CheckpointStoreConfig) -> Result<Self> {
        if config.max_retained == 0 {
            return Err(Error::invalid("max_retained must be at least 1"));
        }
        let mut ids: Vec<u64> = storage
            .list_files()
            .await?
            .iter()
            .filter_map(|f| metadata_path_id(&f.path))
            .collect();
        ids.sort_unstable();
        let mut store = CheckpointStore {
            storage,
            config,
            retained: VecDeque::new(),
            registry: SharedStateRegistry::new(),
            pending: BTreeSet::new(),
            deferred: Vec::new(),
            releases: Vec::new(),
        };
        for id in ids {
            match store.read_metadata(id).await {
                Ok(m) if m.kind == CheckpointKind::Checkpoint && m.checkpoint_id == id => {
                    store.retain(CompletedCheckpoint::new(store.storage.checkpoint_pointer(id), m));
                }
                Ok(m) => tracing::warn!(
                    checkpoint_id = id,
                    found = m.checkpoint_id,
                    "skipping checkpoint whose metadata names another checkpoint or a savepoint"
                ),
                Err(e) => tracing::warn!(checkpoint_id = id, error = %e, "skipping unreadable checkpoint"),
            }
        }
        Ok(store)
    }

    pub(super) async fn read_metadata(&self, checkpoint_id: u64) -> Result<CheckpointMetadata> {
        let path = metadata_path(checkpoint_id);
        let data = self.storage.read_file(&path).await?;
        CheckpointMetadata::decode(&data, &self.storage.checkpoint_pointer(checkpoint_id))
    }

    fn retain(&mut self, checkpoint: CompletedCheckpoint) {
        self.registry.register(checkpoint.checkpoint_id, &checkpoint.files);
        let at = self
            .retained
            .iter()
            .position(|c| c.checkpoint_id > checkpoint.checkpoint_id)
            .unwrap_or(self.retained.len());
        self.retained.insert(at, checkpoint);
    }

    /// Releases, through `release`, what the native handles of its format
    /// pin outside the checkpoint storage, whenever no retained checkpoint
    /// needs them any more (subsumed, discarded at shutdown, or aborted
    /// after being reported).
    pub fn with_native_release(mut self, release: Arc<dyn NativeStateRelease>) -> Self {
        self.releases.push(release);
        self
    }

    /// Releases what the native handles among `handles` pin; failures are
    /// logged (garbage collection finds them later). Returns the failures.
    async fn release_native(&self, handles: &[&KeyedStateHandle]) -> usize {
        let mut failed = 0;
        for release in &self.releases {
            for handle in native_handles(handles.iter().copied(), release.format()) {
                if let Err(e) = release.release(handle).await {
                    tracing::warn!(
                        error = %e,
                        checkpoint_id = handle.checkpoint_id,
                        backend = %handle.backend_id,
                        "could not release a native checkpoint; garbage collection will"
                    );
                    failed += 1;
                }
            }
        }
        failed
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<CheckpointStorage> {
        &self.storage
    }

    /// The retained checkpoints, oldest first.
    pub fn retained(&self) -> Vec<&CompletedCheckpoint> {
        self.retained.iter().collect()
    }

    /// The newest retained checkpoint.
    pub fn latest(&self) -> Option<&CompletedCheckpoint> {
        self.retained.back()
    }

    /// The shared-state registry.
    pub fn registry(&self) -> &SharedStateRegistry {
        &self.registry
    }

    fn newest_id(&self) -> Option<u64> {
        self.retained.back().map(|c| c.checkpoint_id)
    }

    /// Starts checkpoint `checkpoint_id`; ids must grow.
    ///
    /// After a crash, begin ids above every checkpoint directory in storage
    /// (`storage().checkpoint_dirs()`), not only above the restored one: an
    /// attempt that died mid-checkpoint leaves a `chk-<id>` without
    /// `_metadata`, whose files only garbage collection removes.
    pub async fn begin_checkpoint(&mut self, checkpoint_id: u64) -> Result<Arc<CheckpointLocation>> {
        if let Some(newest) = self.newest_id().filter(|n| checkpoint_id <= *n) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("checkpoint {checkpoint_id} is not newer than completed checkpoint {newest}"),
            ));
        }
        let location = self.storage.init_checkpoint(checkpoint_id).await?;
        self.pending.insert(checkpoint_id);
        Ok(location)
    }

    /// Starts a savepoint, in `target` or the storage's savepoint directory.
    pub async fn begin_savepoint(
        &mut self,
        checkpoint_id: u64,
        target: Option<&str>,
    ) -> Result<Arc<CheckpointLocation>> {
        self.storage.init_savepoint(checkpoint_id, target).await
    }

    /// Completes a checkpoint or savepoint: writes its metadata, last. A
    /// checkpoint is then retained and registers its files, and the oldest
    /// checkpoints beyond the retention count are subsumed: their metadata
    /// is deleted, then every file no retained checkpoint references.
    pub async fn complete(
        &mut self,
        location: &Arc<CheckpointLocation>,
        metadata: CheckpointMetadata,
    ) -> Result<Completion> {
        let id = location.checkpoint_id();
        let name = location.pointer().to_string();
        if metadata.checkpoint_id != id || metadata.kind != location.kind() {
            return Err(Error::invalid(format!(
                "{name}: metadata of {:?} {} given for {:?} {id}",
                metadata.kind,
                metadata.checkpoint_id,
                location.kind()
            )));
        }
        if let Some(p) = metadata
            .file_paths()
            .into_iter()
            .find(|p| self.registry.is_protected(p))
        {
            return Err(Error::invalid(format!(
                "{name} references {p}, a file of a checkpoint restored in no-claim mode; \
                 the first checkpoint after such a restore must not share its files"
            )));
        }
        if location.kind() == CheckpointKind::Savepoint {
            let pointer = location.write_metadata(&metadata).await?;
            return Ok(Completion {
                pointer,
                ..Completion::default()
            });
        }
        if let Some(newest) = self.newest_id().filter(|n| id <= *n) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{name}: checkpoint {id} is subsumed by completed checkpoint {newest}; abort it"),
            ));
        }
        self.check_files_exist(&name, &metadata).await?;
        let pointer = location.write_metadata(&metadata).await?;
        self.pending.remove(&id);
        self.retain(CompletedCheckpoint::new(pointer.clone(), metadata));
        let mut completion = Completion {
            pointer,
            ..Completion::default()
        };
        while self.retained.len() > self.config.max_retained {
            match self.discard_oldest().await {
                Ok((id, deleted, failed)) => {
                    completion.subsumed.push(id);
                    completion.deleted_files += deleted;
                    completion.failed_deletes += failed;
                }
                Err(e) => {
                    // Its metadata still exists: it stays retained, with its files.
                    tracing::warn!(error = %e, "could not discard a subsumed checkpoint; retrying at the next one");
                    completion.failed_deletes += 1;
                    break;
                }
            }
        }
        let (deleted, failed) = self.settle_deferred().await;
        completion.deleted_files += deleted;
        completion.failed_deletes += failed;
        completion.deferred_files = self.deferred.iter().map(|d| d.files.len()).sum();
        Ok(completion)
    }

    /// Refuses to complete a checkpoint that references a file that is not
    /// there (deleted, never written, or of another size): the checkpoint
    /// would exist but could not be restored. Files retained checkpoints
    /// reference are known to exist; the others are looked up.
    async fn check_files_exist(&self, name: &str, metadata: &CheckpointMetadata) -> Result<()> {
        let mut wanted: Vec<(&str, u64)> = metadata
            .operators
            .iter()
            .flat_map(OperatorState::streams)
            .filter_map(|s| s.file_path().map(|p| (p, s.size())))
            .filter(|(p, _)| !self.registry.is_referenced(p))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let storage = &self.storage;
        let found: Vec<(&str, u64, Option<StoredFile>)> = futures::stream::iter(wanted)
            .map(|(path, size)| async move { storage.stat_file(path).await.map(|f| (path, size, f)) })
            .buffer_unordered(16)
            .try_collect()
            .await
            .map_err(|e| e.context(format!("{name}: checking its files before completing it")))?;
        for (path, size, file) in found {
            match file {
                Some(f) if f.size == size => {}
                Some(f) => {
                    return Err(Error::corrupted(format!(
                        "{name} references {path} of {size} bytes, but the file has {} bytes; the checkpoint \
                         cannot complete: abort it",
                        f.size
                    )))
                }
                None => {
                    return Err(Error::not_found(format!(
                        "{name} references {path}, which does not exist (never written, or deleted as the file of \
                         a subsumed checkpoint); the checkpoint cannot complete: abort it"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Checkpoints begun and not completed or aborted that can still
    /// complete (newer than the newest completed one).
    fn in_flight(&self) -> BTreeSet<u64> {
        let newest = self.newest_id();
        self.pending
            .iter()
            .copied()
            .filter(|id| newest.is_none_or(|n| *id > n))
            .collect()
    }

    /// Deletes released files that nothing retained references, or defers
    /// them while checkpoints are in flight. Returns (deleted, failed).
    async fn delete_released(&mut self, files: Vec<String>) -> (usize, usize) {
        let files: Vec<String> = files.into_iter().filter(|p| !self.registry.is_live(p)).collect();
        if files.is_empty() {
            return (0, 0);
        }
        let waiting = self.in_flight();
        if !waiting.is_empty() {
            self.deferred.push(DeferredDelete { files, waiting });
            return (0, 0);
        }
        match self.storage.delete_files(&files).await {
            Ok(()) => (files.len(), 0),
            Err(e) => {
                tracing::warn!(error = %e, files = files.len(), "released files were left for garbage collection");
                (0, files.len())
            }
        }
    }

    /// Deletes the deferred files whose checkpoints in flight have all
    /// completed or aborted, unless a retained checkpoint now references them.
    async fn settle_deferred(&mut self) -> (usize, usize) {
        let live = self.in_flight();
        let mut ready = Vec::new();
        self.deferred.retain_mut(|d| {
            d.waiting.retain(|id| live.contains(id));
            if d.waiting.is_empty() {
                ready.append(&mut d.files);
                false
            } else {
                true
            }
        });
        ready.sort_unstable();
        ready.dedup();
        ready.retain(|p| !self.is_deferred(p));
        self.delete_released(ready).await
    }

    /// True if `path` waits in a deferred delete.
    pub(super) fn is_deferred(&self, path: &str) -> bool {
        self.deferred.iter().any(|d| d.files.iter().any(|f| f == path))
    }

    /// Discards the oldest retained checkpoint: metadata first, then the
    /// files it alone referenced. Returns its id, files deleted and files
    /// that could not be deleted.
    async fn discard_oldest(&mut self) -> Result<(u64, usize, usize)> {
        let Some(oldest) = self.retained.front() else {
            return Err(Error::internal("no checkpoint to discard"));
        };
        let id = oldest.checkpoint_id;
        let meta = metadata_path(id);
        self.storage
            .delete_files(std::slice::from_ref(&meta))
            .await
            .map_err(|e| e.context(format!("discarding checkpoint {}", oldest.pointer)))?;
        let Some(oldest) = self.retained.pop_front() else {
            return Err(Error::internal("no checkpoint to discard"));
        };
        let free: Vec<String> = self
            .registry
            .release(id, &oldest.files)
            .into_iter()
            .filter(|p| *p != meta)
            .collect();
        let (deleted, failed) = self.delete_released(free).await;
        let unreleased = self
            .release_native(&keyed_handles(&oldest.metadata).collect::<Vec<_>>())
            .await;
        Ok((id, deleted + 1, failed + unreleased))
    }

    /// Aborts a checkpoint that will not complete: deletes everything its
    /// location wrote (exclusive directory and uploaded shared files) and
    /// the files of `reported` handles that no retained checkpoint
    /// references (new shared files of the failed attempt written through
    /// another process's location). Files that checkpoints still in flight
    /// may reference wait until those complete or abort.
    pub async fn abort(&mut self, location: &Arc<CheckpointLocation>, reported: &[KeyedStateHandle]) -> Result<()> {
        self.pending.remove(&location.checkpoint_id());
        let mut orphans: Vec<String> = reported
            .iter()
            .flat_map(KeyedStateHandle::file_paths)
            .filter(|p| !self.registry.is_live(p))
            .map(str::to_string)
            .collect();
        orphans.sort_unstable();
        orphans.dedup();
        let disposed = location.dispose().await;
        if location.kind() == CheckpointKind::Checkpoint {
            self.release_native(&reported.iter().collect::<Vec<_>>()).await;
            let (_, failed) = self.delete_released(orphans).await;
            if failed > 0 {
                tracing::warn!(
                    checkpoint_id = location.checkpoint_id(),
                    failed,
                    "files of an aborted checkpoint were left for garbage collection"
                );
            }
        }
        self.settle_deferred().await;
        disposed
    }

    /// Resolves `pointer` for a restore, taking ownership of it or not.
    ///
    /// `Claim` retains a checkpoint of this job's own storage (it is then
    /// subsumed normally). Savepoints and other jobs' checkpoints are
    /// restored with `NoClaim`: nothing of theirs is ever deleted, and a new
    /// checkpoint that references one of their files is refused. A job's own
    /// checkpoints are always managed by its retention, so they are claimed;
    /// restore one without claim under a new job id.
    pub async fn restore(&mut self, pointer: &str, mode: RestoreMode) -> Result<ResolvedCheckpoint> {
        let resolved = self.storage.resolve(pointer).await?;
        let id = resolved.metadata.checkpoint_id;
        let own = resolved.metadata.kind == CheckpointKind::Checkpoint
            && resolved.pointer == self.storage.checkpoint_pointer(id);
        match mode {
            RestoreMode::Claim => {
                if !own {
                    return Err(Error::unsupported(format!(
                        "{}: claim mode takes ownership only of this job's own checkpoints; restore savepoints \
                         and other jobs' checkpoints with no-claim mode",
                        resolved.pointer
                    )));
                }
                if !self.retained.iter().any(|c| c.checkpoint_id == id) {
                    self.retain(CompletedCheckpoint::new(
                        resolved.pointer.clone(),
                        resolved.metadata.clone(),
                    ));
                }
            }
            RestoreMode::NoClaim => {
                if own {
                    return Err(Error::invalid(format!(
                        "{}: this checkpoint belongs to this job, whose retention manages it; restore it with claim \
                         mode, or restore it without claim under a new job id",
                        resolved.pointer
                    )));
                }
                self.registry.protect(resolved.metadata.file_paths());
                let reader = Arc::clone(&resolved.reader);
                return Ok(ResolvedCheckpoint {
                    reader: Arc::new(crate::checkpoint::UnclaimedReader(reader)),
                    ..resolved
                });
            }
        }
        Ok(resolved)
    }

    /// Ends the job's use of the store: deletes every retained checkpoint
    /// if the job finished, or was cancelled under
    /// [`CancellationPolicy::DeleteOnCancellation`]; keeps them otherwise.
    /// Returns the ids deleted.
    pub async fn shutdown(mut self, status: JobStatus) -> Result<Vec<u64>> {
        let discard = match status {
            JobStatus::Finished => true,
            JobStatus::Cancelled => self.config.cancellation == CancellationPolicy::DeleteOnCancellation,
            JobStatus::Failed | JobStatus::Suspended => false,
        };
        let mut discarded = Vec::new();
        if discard {
            // The job has ended: no checkpoint in flight will complete.
            self.pending.clear();
            while !self.retained.is_empty() {
                let (id, _, _) = self.discard_oldest().await?;
                discarded.push(id);
            }
            self.settle_deferred().await;
        }
        Ok(discarded)
    }
}
