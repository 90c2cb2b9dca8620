//! Garbage collection of orphaned files: files of ours that no checkpoint
//! references, found by reachability from every `_metadata` present.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::store::CheckpointStore;
use crate::checkpoint::{checkpoint_dir_id, is_own_file_name, metadata_path, metadata_path_id, StoredFile};
use crate::error::{ErrorKind, Result};
use crate::ttl::{SharedClock, SystemClock};

/// Options of [`CheckpointStore::collect_garbage`]. Dry run by default.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Files younger than this are left alone: they may belong to a
    /// checkpoint still being written. Longer than the longest checkpoint.
    pub min_age: Duration,
    /// Only report what would be deleted (the default).
    pub dry_run: bool,
    /// The clock file ages are measured against.
    pub clock: SharedClock,
}

impl GcOptions {
    /// A dry run that reports orphans older than `min_age`.
    pub fn new(min_age: Duration) -> Self {
        GcOptions {
            min_age,
            dry_run: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// Deletes the orphans instead of only reporting them.
    pub fn delete(mut self) -> Self {
        self.dry_run = false;
        self
    }

    /// Measures ages against `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
}

/// What garbage collection found (and deleted, unless a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Orphaned files: ours, unreferenced, old enough.
    pub orphans: Vec<StoredFile>,
    /// Their total size.
    pub bytes: u64,
    /// True if they were deleted.
    pub deleted: bool,
    /// Metadata files read to find what is referenced.
    pub metadata_read: usize,
}

impl CheckpointStore {
    /// Finds files of ours under the job's root that no checkpoint
    /// references, by reachability from every `_metadata` present (retained
    /// or not) and from this store's registry. Only files in `chk-<n>/`,
    /// `shared/` and `taskowned/` with names this project makes, older than
    /// `min_age`, and outside checkpoints in progress are candidates. If any
    /// `_metadata` cannot be read (garbage, truncated, or not a regular file
    /// at all), nothing is deleted and the error names it.
    pub async fn collect_garbage(&self, options: &GcOptions) -> Result<GcReport> {
        let files = self.storage.list_files().await?;
        let mut reachable: HashSet<String> = HashSet::new();
        let mut metadata_read = 0;
        let mut listed: HashSet<u64> = HashSet::new();
        for f in &files {
            let Some(id) = metadata_path_id(&f.path) else {
                continue;
            };
            let m = self
                .read_metadata(id)
                .await
                .map_err(|e| e.context(format!("garbage collection refused, nothing deleted: {}", f.path)))?;
            metadata_read += 1;
            reachable.extend(m.file_paths());
            reachable.insert(f.path.clone());
            listed.insert(id);
        }
        // A checkpoint directory without a listed `_metadata` has none (in
        // progress, or failed), or has something in its place that is not a
        // regular file (a FIFO, a device, a link out of the directory). The
        // latter cannot say which files it references: nothing may go.
        for id in self.storage.checkpoint_dirs().await? {
            if listed.contains(&id) {
                continue;
            }
            let path = metadata_path(id);
            match self.read_metadata(id).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context(format!("garbage collection refused, nothing deleted: {path}"))),
                // Written since the listing: what it references stays.
                Ok(m) => {
                    metadata_read += 1;
                    reachable.extend(m.file_paths());
                    reachable.insert(path);
                }
            }
        }
        let now = options.clock.now_millis();
        let min_age = options.min_age.as_millis() as u64;
        let orphans: Vec<StoredFile> = files
            .into_iter()
            .filter(|f| !reachable.contains(&f.path) && !self.registry.is_live(&f.path) && !self.is_deferred(&f.path))
            .filter(|f| self.is_own_collectable(&f.path))
            .filter(|f| now.saturating_sub(f.modified_millis) >= min_age)
            .collect();
        let bytes = orphans.iter().map(|f| f.size).sum();
        if !options.dry_run && !orphans.is_empty() {
            let paths: Vec<String> = orphans.iter().map(|f| f.path.clone()).collect();
            self.storage.delete_files(&paths).await?;
        }
        Ok(GcReport {
            orphans,
            bytes,
            deleted: !options.dry_run,
            metadata_read,
        })
    }

    fn is_own_collectable(&self, path: &str) -> bool {
        let Some((dir, name)) = path.split_once('/') else {
            return false;
        };
        if name.contains('/') || !is_own_file_name(name) {
            return false;
        }
        match checkpoint_dir_id(dir) {
            Some(id) => !self.pending.contains(&id),
            None => dir == "shared" || dir == "taskowned",
        }
    }
}
