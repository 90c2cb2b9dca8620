//! Incremental checkpoints: the async phase uploads the SST files of the
//! sync phase's RocksDB checkpoint that the base (the newest checkpoint
//! this backend was notified complete of) does not already hold, as shared
//! files, and the rest (manifest, options) as private ones. Which files may
//! be reused is decided in the sync phase and tracked across overlapping
//! checkpoints, notifications and aborts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flowstate_api::backend::AsyncOutput;
use flowstate_api::checkpoint::{
    CheckpointLocation, HandleFile, IncrementalStateHandle, NativeFormat, StateScope, StreamStateHandle,
};
use flowstate_api::format::canonical::SnapshotHeader;
use flowstate_api::{Error, KeyedStateHandle, Result};
use futures::{StreamExt, TryStreamExt};

use crate::error::closed;
use crate::files::{blocking, link_or_copy_dir, DirGuard};
use crate::RocksDbBackend;

/// Bytes of a file read and sent to storage at a time: the storage's
/// write chunk, so each passes through without a copy. Larger buffers are
/// slower, not faster: each is a fresh mapping whose pages fault in and
/// whose unmapping interrupts every core.
const CHUNK: usize = flowstate_api::checkpoint::DEFAULT_WRITE_CHUNK;

/// What incremental checkpoints may reuse. A new checkpoint reuses a shared
/// file only from the newest checkpoint this backend was notified complete
/// of (its base), and only if no later checkpoint that may still complete
/// uploaded that file afresh: once such a checkpoint completes it subsumes
/// the base and the base's copy is deleted, so reusing it would reference a
/// deleted file.
#[derive(Default)]
pub(crate) struct Uploads {
    /// Shared files by local name, per checkpoint whose async phase finished.
    pub(crate) pending: HashMap<u64, HashMap<String, HandleFile>>,
    /// The shared files of the base.
    pub(crate) last_completed: HashMap<String, HandleFile>,
    /// The base's checkpoint id; notifications at or below it are ignored.
    pub(crate) last_completed_id: Option<u64>,
    /// The SST files each checkpoint newer than the base uploads afresh,
    /// recorded in its sync phase; forgotten when it is aborted.
    pub(crate) fresh: BTreeMap<u64, HashSet<String>>,
    pub(crate) local_copies: Vec<(u64, PathBuf)>,
}

/// Decides, in the sync phase of checkpoint `id`, which of its SST files
/// reuse the base's copies, and records the others as uploaded afresh by
/// `id`. A base file that a newer checkpoint still in flight uploads afresh
/// is not reused: that checkpoint may complete and subsume the base first.
pub(crate) fn plan_reuse(u: &mut Uploads, id: u64, files: &[(String, u64)]) -> HashMap<String, HandleFile> {
    let superseded: HashSet<&String> = u.fresh.values().flatten().collect();
    let mut reuse = HashMap::new();
    let mut fresh = HashSet::new();
    for (name, size) in files.iter().filter(|(name, _)| name.ends_with(".sst")) {
        match u
            .last_completed
            .get(name)
            .filter(|f| f.stream.size() == *size && !superseded.contains(name))
        {
            Some(f) => {
                reuse.insert(name.clone(), f.clone());
            }
            None => {
                fresh.insert(name.clone());
            }
        }
    }
    u.fresh.insert(id, fresh);
    reuse
}

/// The async phase of an incremental checkpoint.
pub(crate) struct Upload {
    pub(crate) id: u64,
    pub(crate) backend_id: String,
    pub(crate) header: SnapshotHeader,
    /// Incremental: SST files go to shared state, may be reused, and are
    /// recorded for reuse. Otherwise (a native full checkpoint) every file
    /// is exclusive to the checkpoint.
    pub(crate) share: bool,
    pub(crate) concurrency: usize,
    pub(crate) local: Option<PathBuf>,
    pub(crate) uploads: Arc<std::sync::Mutex<Uploads>>,
    pub(crate) closed: Arc<AtomicBool>,
}

impl Upload {
    /// Uploads, and on failure deletes whatever this attempt uploaded.
    pub(crate) async fn run(
        self,
        guard: DirGuard,
        location: Arc<CheckpointLocation>,
        files: Vec<(String, u64)>,
        reuse: HashMap<String, HandleFile>,
    ) -> Result<AsyncOutput> {
        let uploaded = std::sync::Mutex::new(Vec::new());
        let id = self.id;
        match self.upload(guard, &location, files, reuse, &uploaded).await {
            Ok(out) => Ok(out),
            Err(e) => {
                let written = std::mem::take(&mut *uploaded.lock().unwrap_or_else(|p| p.into_inner()));
                if let Err(d) = location.discard(&written).await {
                    tracing::warn!(checkpoint_id = id, error = %d, "files of a failed checkpoint were left for garbage collection");
                }
                Err(e)
            }
        }
    }

    async fn upload(
        self,
        guard: DirGuard,
        location: &Arc<CheckpointLocation>,
        files: Vec<(String, u64)>,
        reuse: HashMap<String, HandleFile>,
        uploaded: &std::sync::Mutex<Vec<StreamStateHandle>>,
    ) -> Result<AsyncOutput> {
        let id = self.id;
        let mut written = 0u64;
        let results: Vec<(bool, HandleFile, u64)> = futures::stream::iter(files.into_iter().map(|(name, size)| {
            let location = Arc::clone(location);
            let reused = reuse.get(&name).filter(|f| f.stream.size() == size).cloned();
            let path = guard.0.join(&name);
            let closed_flag = Arc::clone(&self.closed);
            let share = self.share;
            async move {
                if closed_flag.load(Ordering::Acquire) {
                    return Err(closed(id));
                }
                let shared = share && name.ends_with(".sst");
                if let (true, Some(f)) = (shared, reused) {
                    return Ok((true, f, 0));
                }
                let scope = if shared {
                    StateScope::Shared
                } else {
                    StateScope::Exclusive
                };
                let (stream, crc) = upload_file(&location, scope, &path).await?;
                uploaded
                    .lock()
                    .map_err(|_| Error::internal("upload list lock poisoned"))?
                    .push(stream.clone());
                let n = stream.size();
                Ok((
                    shared,
                    HandleFile {
                        name,
                        stream,
                        crc32c: crc,
                    },
                    n,
                ))
            }
        }))
        .buffer_unordered(self.concurrency)
        .try_collect()
        .await
        .map_err(|e: Error| e.context(format!("checkpoint {id}")))?;
        let (mut shared, mut private) = (Vec::new(), Vec::new());
        for (is_shared, f, n) in results {
            written += n;
            if is_shared {
                shared.push(f);
            } else {
                private.push(f);
            }
        }
        shared.sort_by(|a, b| a.name.cmp(&b.name));
        private.sort_by(|a, b| a.name.cmp(&b.name));
        let mut meta = location.create_output_stream(StateScope::Exclusive).await?;
        meta.write(&self.header.encode()).await?;
        let meta = meta.close().await?;
        uploaded
            .lock()
            .map_err(|_| Error::internal("upload list lock poisoned"))?
            .push(meta.clone());
        written += meta.size();
        if let Some(local) = &self.local {
            let (src, dst) = (guard.0.clone(), local.clone());
            blocking(move || link_or_copy_dir(&src, &dst)).await?;
        }
        {
            let mut u = self
                .uploads
                .lock()
                .map_err(|_| Error::internal("upload registry lock poisoned"))?;
            if self.share {
                u.pending
                    .insert(id, shared.iter().map(|f| (f.name.clone(), f.clone())).collect());
            }
            if let Some(local) = self.local {
                u.local_copies.push((id, local));
            }
        }
        guard.remove().await;
        Ok(AsyncOutput {
            handle: KeyedStateHandle::Incremental(IncrementalStateHandle {
                format: NativeFormat::RocksDb,
                range: self.header.range,
                backend_id: self.backend_id,
                checkpoint_id: id,
                shared,
                private,
                meta,
            }),
            bytes_written: written,
            records: 0,
        })
    }
}

/// Uploads one file; returns its handle and CRC-32C.
async fn upload_file(
    location: &CheckpointLocation,
    scope: StateScope,
    path: &Path,
) -> Result<(StreamStateHandle, u32)> {
    use std::io::Read;
    // Streamed in chunks, the CRC-32C computed in the same pass: at most one
    // chunk of the file is in memory.
    let p = path.to_path_buf();
    let mut file = Some(blocking(move || std::fs::File::open(&p).map_err(|e| Error::io(p.display(), e))).await?);
    let mut stream = location.create_output_stream(scope).await?;
    let mut crc = 0u32;
    while let Some(mut f) = file.take() {
        let p = path.to_path_buf();
        // The file is closed on the blocking thread once it is read.
        let (rest, chunk, c) = blocking(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut f)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .map_err(|e| Error::io(p.display(), e))?;
            let crc = flowstate_api::format::codec::crc32c_append(crc, &chunk);
            Ok(((!chunk.is_empty()).then_some(f), chunk, crc))
        })
        .await?;
        (file, crc) = (rest, c);
        if chunk.is_empty() {
            break;
        }
        if let Err(e) = stream.write_bytes(chunk.into()).await {
            stream.abort().await;
            return Err(e.context(format!("uploading {}", path.display())));
        }
    }
    Ok((stream.close().await?, crc))
}

/// A checkpoint completed: its shared files become the ones to reuse, and
/// older local copies are deleted.
pub(crate) fn checkpoint_complete<K>(b: &mut RocksDbBackend<K>, id: u64) -> Result<()> {
    let mut u = b
        .uploads
        .lock()
        .map_err(|_| Error::internal("upload registry lock poisoned"))?;
    // Late, repeated or reordered notifications change nothing.
    if u.last_completed_id.is_some_and(|last| id <= last) {
        return Ok(());
    }
    // Only a checkpoint this backend uploaded becomes the base (not a
    // savepoint or a full snapshot).
    if let Some(files) = u.pending.remove(&id) {
        u.last_completed = files;
        u.last_completed_id = Some(id);
    }
    u.pending.retain(|&k, _| k > id);
    // Checkpoints at or below `id` can no longer complete.
    u.fresh.retain(|&k, _| k > id);
    // The completed checkpoint's copy and newer ones stay; older ones go.
    let (keep, old): (Vec<_>, Vec<_>) = u.local_copies.drain(..).partition(|(k, _)| *k >= id);
    u.local_copies = keep;
    for (_, dir) in old {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// A checkpoint was aborted: nothing of it is reused, its local copy goes.
pub(crate) fn checkpoint_aborted<K>(b: &mut RocksDbBackend<K>, id: u64) -> Result<()> {
    let mut u = b
        .uploads
        .lock()
        .map_err(|_| Error::internal("upload registry lock poisoned"))?;
    u.pending.remove(&id);
    u.fresh.remove(&id);
    let (gone, keep): (Vec<_>, Vec<_>) = u.local_copies.drain(..).partition(|(k, _)| *k == id);
    u.local_copies = keep;
    for (_, dir) in gone {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
