//! Snapshots. The sync phase is a RocksDB checkpoint: memtables are flushed
//! and the live files hard-linked into a private directory. The async phase
//! then either uploads the SST files the last completed checkpoint does not
//! already hold (incremental), or reads the checkpoint key group by key
//! group into the canonical format (full snapshots and savepoints).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flowstate_api::format::canonical::{write_canonical_snapshot, KeyGroupSource, KeyGroupWriter, SnapshotHeader};
use flowstate_api::format::codec::crc32c;
use flowstate_api::{
    AsyncOutput, CheckpointKind, CheckpointLocation, Error, ErrorKind, HandleFile, IncrementalStateHandle,
    KeyedStateHandle, PendingSnapshot, Result, SnapshotOptions, StateScope, StorageKind, StreamStateHandle,
};
use futures::{StreamExt, TryStreamExt};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, DB};

use crate::keys::{decode_key, elements, kg_prefix};
use crate::options::{Resources, TtlSlot};
use crate::{cf_name, db_err, RocksDbBackend, Uploads};

/// Bytes written to a stream at a time.
const CHUNK: usize = 4 << 20;

/// Deletes a directory when dropped (a snapshot's private checkpoint).
pub(crate) struct DirGuard(pub(crate) PathBuf);

impl DirGuard {
    /// Guards `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        DirGuard(dir)
    }

    /// Removes the directory on a blocking thread and waits for it.
    pub(crate) async fn remove(mut self) {
        let dir = std::mem::take(&mut self.0);
        let _ = blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
        .await;
    }
}

impl Drop for DirGuard {
    /// A guard dropped without [`DirGuard::remove`] (an error or a
    /// cancellation) removes its directory without blocking the caller.
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let dir = std::mem::take(&mut self.0);
        flowstate_api::run_detached(move || {
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}

pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    flowstate_api::run_blocking(f).await
}

fn closed(id: u64) -> Error {
    Error::new(
        ErrorKind::Closed,
        format!("checkpoint {id}: the RocksDB backend was closed"),
    )
}

/// The sync phase, and the async phase it returns.
pub(crate) fn snapshot<K>(
    b: &mut RocksDbBackend<K>,
    id: u64,
    location: Arc<dyn CheckpointLocation>,
    options: SnapshotOptions,
) -> Result<PendingSnapshot> {
    let started = Instant::now();
    let _span = tracing::info_span!("snapshot_sync", checkpoint_id = id, backend = "rocksdb").entered();
    let header = b.core.snapshot_header(options.compression.is_some());
    // Inside the instance directory: on the same device (hard links), and
    // removed with it if the process is killed.
    let dir = b.temp_path(&format!("snapshot-{id}"));
    Checkpoint::new(&b.db)
        .and_then(|c| c.create_checkpoint(&dir))
        .map_err(db_err(format!(
            "checkpoint {id}: creating the local checkpoint {}",
            dir.display()
        )))?;
    let guard = DirGuard::new(dir);
    let closed_flag = Arc::clone(&b.closed);
    let incremental =
        options.kind == CheckpointKind::Checkpoint && b.options().incremental && !header.states.is_empty();
    if !incremental {
        let filter = b.core.ttl_filter();
        let resources = Arc::clone(b.resources());
        let phase = async move {
            if closed_flag.load(Ordering::Acquire) {
                return Err(closed(id));
            }
            let stream = location.create_output_stream(StateScope::Exclusive).await?;
            // Opening the checkpoint and reading it run on blocking threads.
            let (dir, h) = (guard.0.clone(), header.clone());
            let source = blocking(move || FullSource::open(&dir, &h, &resources, closed_flag, id)).await?;
            let written = write_canonical_snapshot(&header, source, filter, stream, options.compression)
                .await
                .map_err(|e| e.context(format!("checkpoint {id}")))?;
            guard.remove().await;
            Ok(AsyncOutput {
                bytes_written: written.handle.stream.size(),
                records: written.records,
                handle: KeyedStateHandle::KeyGroups(written.handle),
            })
        };
        return Ok(PendingSnapshot::new(id, started, phase));
    }
    let files = list_files(&guard.0)?;
    let reuse = {
        let mut u = b
            .uploads
            .lock()
            .map_err(|_| Error::internal("upload registry lock poisoned"))?;
        plan_reuse(&mut u, id, &files)
    };
    let upload = Upload {
        id,
        backend_id: b
            .instance_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        header,
        concurrency: b.options().upload_concurrency.max(1),
        local: b
            .options()
            .local_recovery
            .as_ref()
            .map(|l| local_dir(l, id))
            .transpose()?,
        uploads: Arc::clone(&b.uploads),
        closed: closed_flag,
    };
    let phase = async move { upload.run(guard, location, files, reuse).await };
    Ok(PendingSnapshot::new(id, started, phase))
}

/// Decides, in the sync phase of checkpoint `id`, which of its SST files
/// reuse the base's copies, and records the others as uploaded afresh by
/// `id`. A base file that a newer checkpoint still in flight uploads afresh
/// is not reused: that checkpoint may complete and subsume the base first.
fn plan_reuse(u: &mut Uploads, id: u64, files: &[(String, u64)]) -> HashMap<String, HandleFile> {
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

/// Where the local copy of checkpoint `id` goes.
pub(crate) fn local_dir(l: &crate::LocalRecovery, id: u64) -> Result<PathBuf> {
    Ok(local_scope_dir(l)?.join(format!("chk-{id}")))
}

/// This backend's directory under the local recovery dirs; `Invalid` if
/// there are none (never the process's working directory).
pub(crate) fn local_scope_dir(l: &crate::LocalRecovery) -> Result<PathBuf> {
    l.validate()?;
    let i = (crc32c(l.scope.as_bytes()) as usize) % l.dirs.len().max(1);
    let dir = l
        .dirs
        .get(i)
        .ok_or_else(|| Error::invalid("local recovery has no directories"))?;
    Ok(dir.join(&l.scope))
}

/// The async phase of an incremental checkpoint.
struct Upload {
    id: u64,
    backend_id: String,
    header: SnapshotHeader,
    concurrency: usize,
    local: Option<PathBuf>,
    uploads: Arc<std::sync::Mutex<Uploads>>,
    closed: Arc<AtomicBool>,
}

impl Upload {
    /// Uploads, and on failure deletes whatever this attempt uploaded.
    async fn run(
        self,
        guard: DirGuard,
        location: Arc<dyn CheckpointLocation>,
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
        location: &Arc<dyn CheckpointLocation>,
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
            async move {
                if closed_flag.load(Ordering::Acquire) {
                    return Err(closed(id));
                }
                let shared = name.ends_with(".sst");
                if let (true, Some(f)) = (shared, reused) {
                    return Ok((true, f, 0));
                }
                let scope = if shared {
                    StateScope::Shared
                } else {
                    StateScope::Exclusive
                };
                let (stream, crc) = upload_file(&*location, scope, &path).await?;
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
            u.pending
                .insert(id, shared.iter().map(|f| (f.name.clone(), f.clone())).collect());
            if let Some(local) = self.local {
                u.local_copies.push((id, local));
            }
        }
        guard.remove().await;
        Ok(AsyncOutput {
            handle: KeyedStateHandle::Incremental(IncrementalStateHandle {
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

/// The files of a directory, with sizes.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let meta = entry.metadata().map_err(|e| Error::io(entry.path().display(), e))?;
        if meta.is_file() {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| Error::invalid(format!("file name {n:?} is not UTF-8")))?;
            out.push((name, meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Uploads one file; returns its handle and CRC-32C.
async fn upload_file(
    location: &dyn CheckpointLocation,
    scope: StateScope,
    path: &Path,
) -> Result<(StreamStateHandle, u32)> {
    use std::io::Read;
    // Streamed in chunks, the CRC-32C computed in the same pass: at most one
    // chunk of the file is in memory.
    let p = path.to_path_buf();
    let mut file = blocking(move || std::fs::File::open(&p).map_err(|e| Error::io(p.display(), e))).await?;
    let mut stream = location.create_output_stream(scope).await?;
    let mut crc = 0u32;
    loop {
        let p = path.to_path_buf();
        let (f, chunk, c) = blocking(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut file)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .map_err(|e| Error::io(p.display(), e))?;
            let crc = flowstate_api::format::codec::crc32c_append(crc, &chunk);
            Ok((file, chunk, crc))
        })
        .await?;
        (file, crc) = (f, c);
        if chunk.is_empty() {
            break;
        }
        if let Err(e) = stream.write(&chunk).await {
            stream.abort().await;
            return Err(e.context(format!("uploading {}", path.display())));
        }
    }
    Ok((stream.close().await?, crc))
}

/// Hard-links every file of `src` into `dst` (created), copying where a
/// link is impossible (another device).
pub(crate) fn link_or_copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst.display(), e))?;
    for (name, _) in list_files(src)? {
        let (from, to) = (src.join(&name), dst.join(&name));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| Error::io(to.display(), e))?;
        }
    }
    Ok(())
}

/// Opens a checkpoint directory read-only with the column families of `states`.
pub(crate) fn open_read_only(dir: &Path, states: &[flowstate_api::StateMeta], resources: &Resources) -> Result<DB> {
    let cfs = states.iter().map(|m| {
        ColumnFamilyDescriptor::new(
            cf_name(&m.name),
            resources.cf_options(m.kind.storage(), Arc::new(TtlSlot::default())),
        )
    });
    DB::open_cf_descriptors_read_only(&resources.db_options(), dir, cfs, false)
        .map_err(db_err(format!("opening {}", dir.display())))
}

/// Reads a checkpoint directory key group by key group.
struct FullSource {
    db: DB,
    states: Vec<(String, StorageKind, String)>,
    closed: Arc<AtomicBool>,
    id: u64,
}

impl FullSource {
    fn open(
        dir: &Path,
        header: &SnapshotHeader,
        resources: &Resources,
        closed: Arc<AtomicBool>,
        id: u64,
    ) -> Result<Self> {
        Ok(FullSource {
            db: open_read_only(dir, &header.states, resources)?,
            states: header
                .states
                .iter()
                .map(|m| (cf_name(&m.name), m.kind.storage(), m.name.clone()))
                .collect(),
            closed,
            id,
        })
    }
}

impl KeyGroupSource for FullSource {
    fn write_key_group(&mut self, kg: u32, out: &mut KeyGroupWriter) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed(self.id));
        }
        let prefix = kg_prefix(kg);
        for (index, (cf, kind, name)) in self.states.iter().enumerate() {
            let state = index as u32;
            let cf = self
                .db
                .cf_handle(cf)
                .ok_or_else(|| Error::internal(format!("state {name:?} has no column family")))?;
            let mut it = self.db.raw_iterator_cf(cf);
            it.seek(prefix);
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if !k.starts_with(&prefix) {
                    break;
                }
                let d = decode_key(k, name)?;
                match kind {
                    StorageKind::Value => out.value(state, d.key, d.namespace, v),
                    StorageKind::List => out.list(state, d.key, d.namespace, elements(v, name)?),
                    StorageKind::Map => out.map_entry(state, d.key, d.namespace, d.user_key, v),
                }
                it.next();
            }
            it.status().map_err(db_err(format!("reading state {name:?}")))?;
        }
        Ok(())
    }
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
