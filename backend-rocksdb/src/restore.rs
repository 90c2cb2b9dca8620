//! Restore: from incremental handles (a local copy when it verifies, else
//! a download), with rescaling by `delete_range` and key-group copies, and
//! from canonical snapshots of any backend.
//!
//! Nothing is re-inserted through the memtable. The key groups a restore
//! takes from a second incremental handle are read in key order out of its
//! database, and those of a canonical snapshot are sorted per state and
//! batch of key groups; either way they are written to uncompressed SST
//! files and ingested.
//!
//! Files are verified on the write side, checked cheaply on the read side:
//! - Every SST file the backend writes (flush or compaction) is read back
//!   and checked by RocksDB before it is used (`paranoid_file_checks`), so
//!   a checkpoint uploads only files that were whole when written, and a
//!   completed checkpoint only holds such files.
//! - A download is checked against the size and CRC-32C of its handle, in
//!   the same pass as the copy; that catches anything that happened to the
//!   file after its upload. Opening the database checks every file's
//!   footer, properties and index (all files are opened at open).
//! - Every block read after that is checked against its RocksDB block
//!   checksum, as on any read. A file damaged before it was uploaded and
//!   given a forged handle checksum is therefore refused at the latest on
//!   the first read of the damaged block, as `Corrupted` naming the state;
//!   the restore no longer reads every block of every file to find it
//!   earlier (that scan was most of a restore's time).
//!
//! Local copies are used only if each of their files matches the handle's
//! CRC-32C, which was computed from these same local bytes when the
//! checkpoint was taken, so a damaged or forged file in storage (or a
//! forged checksum) makes the local copy mismatch and the restore download
//! instead.

use std::path::Path;
use std::time::{Duration, Instant};

use flowstate_api::backend::{StateMetaInfo, StorageKind};
use flowstate_api::checkpoint::{HandleFile, IncrementalStateHandle, KeyGroupsStateHandle, NativeFormat, StateReader};
use flowstate_api::format::canonical::{
    check_compatible, restore_key_groups, CanonicalSnapshot, Record, SnapshotHeader,
};
use flowstate_api::{Error, ErrorKind, KeyGroupRange, KeyedBackendConfig, KeyedStateHandle, RestoreMode, Result};
use futures::{StreamExt, TryStreamExt};
use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteBatch};

use crate::bulk::SortedRun;
use crate::error::rocksdb_file;
use crate::files::{blocking, link_or_copy_dir, DirGuard};
use crate::keys::{key_group_of, key_part, kg_prefix, pack, put_namespace, timer_key};
use crate::local_recovery::{file_crc32c, local_dir, verify_local};
use crate::options::open_read_only;
use crate::ttl_filter::TtlSlot;
use crate::{db_err, RocksDbBackend, RocksDbOptions};

/// How a restore went. Only the handles that hold key groups of the
/// restored range are read, and counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Incremental handles whose files all came from a verified local copy
    /// (nothing downloaded), whether the base of the restore or a handle
    /// whose key groups were copied in.
    pub handles_from_local_copy: usize,
    /// Handles read from checkpoint storage: incremental handles whose files
    /// were downloaded (no local copy, or one that did not verify), and
    /// canonical key-group snapshots.
    pub handles_from_storage: usize,
    /// Bytes of state files downloaded from checkpoint storage (the
    /// metadata of incremental handles, a few bytes each, is not counted).
    pub downloaded_bytes: u64,
    /// Bytes of state files taken from verified local copies instead.
    pub local_bytes: u64,
    /// Wall time of the restore.
    pub duration: Duration,
}

impl<K: 'static> RocksDbBackend<K> {
    /// A backend restored from `handles` (any number, from any parallelism,
    /// incremental or canonical): only the key groups of the config's range
    /// are kept. `reader` reads the handles' files.
    ///
    /// Only reads from `reader` run on the calling task: opening databases,
    /// scanning and writing them, and file I/O run on blocking threads.
    pub async fn restore(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
        options: RocksDbOptions,
    ) -> Result<Self> {
        flowstate_api::runtime::nonblocking(Self::restore_all(config, handles, reader, options)).await
    }

    async fn restore_all(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
        options: RocksDbOptions,
    ) -> Result<Self> {
        let started = Instant::now();
        options.validate()?;
        flowstate_api::checkpoint::check_restore_handles(handles, config.max_parallelism)?;
        let range = config.key_group_range;
        let overlapping: Vec<&KeyedStateHandle> = handles
            .iter()
            .filter(|h| !h.is_empty() && !h.key_group_range().intersect(&range).is_empty())
            .collect();
        if let Some(KeyedStateHandle::Incremental(h)) = overlapping
            .iter()
            .find(|h| matches!(h, KeyedStateHandle::Incremental(h) if h.format != NativeFormat::RocksDb))
        {
            return Err(Error::incompatible(format!(
                "the RocksDB backend cannot restore the native {} checkpoint {} of backend {} (key groups {}): {}",
                h.format.backend(),
                h.checkpoint_id,
                h.backend_id,
                h.range,
                h.format.remedy()
            )));
        }
        let incremental: Vec<&IncrementalStateHandle> = overlapping
            .iter()
            .filter_map(|h| match h {
                KeyedStateHandle::Incremental(h) => Some(h),
                _ => None,
            })
            .collect();
        let mut stats = RestoreStats::default();
        let base = incremental
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|(i, h)| (h.range.intersect(&range).len(), std::cmp::Reverse(*i)))
            .map(|(_, h)| h);
        let mut backend = match base {
            Some(base) => {
                let header = read_header(base, reader).await?;
                let base_range = base.range;
                check_compatible(
                    &header,
                    &config.key_serializer.id(),
                    config.max_parallelism,
                    &describe(base),
                )?;
                let working_dir = options.working_dir.clone();
                let instance = blocking(move || crate::instance::InstanceDir::create(&working_dir)).await?;
                let dir = instance.temp_path("restore");
                let guard = DirGuard::new(dir.clone());
                materialize(base, reader, &options, &dir, &mut stats).await?;
                crate::crash::point("restore.downloaded");
                let states = header.states;
                let backend = blocking(move || {
                    let backend = Self::open(config, options, Some(instance), Some(&dir), &states)?;
                    crate::crash::point("restore.opened");
                    if base_range != range {
                        backend.delete_outside(range)?;
                        crate::crash::point("restore.clipped");
                    }
                    Ok(backend)
                })
                .await
                .map_err(|e| name_damaged_file(e, &describe(base), &handle_files(base)))?;
                guard.remove().await;
                if base.range == range
                    && incremental.len() == 1
                    && backend.options().restore_mode == RestoreMode::Claim
                    && reader.claimed()
                {
                    // Claimed and not rescaled: the next checkpoint shares these files.
                    let mut u = backend
                        .uploads
                        .lock()
                        .map_err(|_| Error::internal("upload registry lock poisoned"))?;
                    u.last_completed = base.shared.iter().map(|f| (f.name.clone(), f.clone())).collect();
                    u.last_completed_id = Some(base.checkpoint_id);
                }
                backend
            }
            None => blocking(move || Self::open(config, options, None, None, &[])).await?,
        };
        for h in incremental.iter().copied() {
            if !base.is_some_and(|b| std::ptr::eq(b, h)) {
                backend = backend.copy_incremental(h, reader, &mut stats).await?;
            }
        }
        for h in &overlapping {
            if let KeyedStateHandle::KeyGroups(h) = h {
                backend = backend.insert_canonical(h, reader, &mut stats).await?;
            }
        }
        crate::crash::point("restore.written");
        let keep = base.filter(|_| incremental.len() == 1).map(|b| b.checkpoint_id);
        let mut backend = blocking(move || {
            backend.adopt_local_copies(keep)?;
            Ok(backend)
        })
        .await?;
        stats.duration = started.elapsed();
        backend.restore_stats = stats;
        Ok(backend)
    }
}

impl<K> RocksDbBackend<K> {
    /// How the restore that made this backend went.
    pub fn restore_stats(&self) -> RestoreStats {
        self.restore_stats
    }

    /// Deletes every key group outside `range` from every state.
    fn delete_outside(&self, range: KeyGroupRange) -> Result<()> {
        flowstate_api::runtime::check_blocking("deleting key groups outside the range");
        let mut batch = WriteBatch::default();
        for s in self.core.states() {
            let cf = self.cf(s.storage())?;
            if range.start() > 0 {
                batch.delete_range_cf(cf, [0u8, 0].as_slice(), kg_prefix(range.start()).as_slice());
            }
            if range.end() <= u32::from(u16::MAX) {
                batch.delete_range_cf(cf, kg_prefix(range.end()).as_slice(), [0xffu8, 0xff, 0xff].as_slice());
            }
        }
        self.db
            .write(batch)
            .map_err(db_err("deleting key groups outside the restored range"))
    }
}

impl<K: 'static> RocksDbBackend<K> {
    /// Copies the key groups of `range` held by another incremental handle.
    async fn copy_incremental(
        self,
        h: &IncrementalStateHandle,
        reader: &dyn StateReader,
        stats: &mut RestoreStats,
    ) -> Result<Self> {
        let name = describe(h);
        let header = read_header(h, reader).await?;
        check_compatible(
            &header,
            &self.config().key_serializer.id(),
            self.config().max_parallelism,
            &name,
        )?;
        let dir = self.temp_path("restore");
        let guard = DirGuard::new(dir.clone());
        materialize(h, reader, self.options(), &dir, stats).await?;
        let range = h.range;
        let mut this = self;
        let files = handle_files(h);
        let this = blocking(move || {
            this.copy_key_groups(&dir, range, &header.states, &name)?;
            Ok(this)
        })
        .await
        .map_err(|e| name_damaged_file(e, &describe(h), &files))?;
        guard.remove().await;
        Ok(this)
    }

    /// Copies the key groups of `range` (of the restored range) from the
    /// checkpoint of `states` in `dir`.
    fn copy_key_groups(
        &mut self,
        dir: &Path,
        range: KeyGroupRange,
        states: &[StateMetaInfo],
        name: &str,
    ) -> Result<()> {
        flowstate_api::runtime::check_blocking("copying key groups between RocksDB databases");
        let ids = states
            .iter()
            .map(|m| self.restored_state(m, name))
            .collect::<Result<Vec<_>>>()?;
        let other = open_read_only(dir, states, self.resources())?;
        let overlap = range.intersect(&self.config().key_group_range);
        let ingest_dir = dir.join("ingest");
        std::fs::create_dir_all(&ingest_dir).map_err(|e| Error::io(ingest_dir.display(), e))?;
        // The key groups are split into parts copied side by side, each into
        // an SST file of its own (disjoint key ranges, so one ingestion).
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_COPY_THREADS);
        let parts = (0..threads as u32)
            .map(|p| {
                let (start, len) = (overlap.start(), overlap.len());
                KeyGroupRange::new(start + len * p / threads as u32, start + len * (p + 1) / threads as u32)
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, (meta, id)) in states.iter().zip(ids).enumerate() {
            let src = other
                .cf_handle(&crate::cf_name(&meta.name))
                .ok_or_else(|| Error::corrupted(format!("{name}: state {:?} has no column family", meta.name)))?;
            let options = self.sst_options(id)?;
            let (other, options) = (&other, &options);
            // The owned key groups, in key order, into SST files in the
            // state's table format, then ingested: nothing goes through the
            // memtable or the write-ahead path.
            let written: Vec<Result<Option<std::path::PathBuf>>> = std::thread::scope(|scope| {
                let copies: Vec<_> = parts
                    .iter()
                    .filter(|part| !part.is_empty())
                    .enumerate()
                    .map(|(p, part)| {
                        let path = ingest_dir.join(format!("{i}-{p}.sst"));
                        scope.spawn(move || {
                            let wrote = write_sst(options, &path, name, |writer, path| {
                                copy_range(other, src, *part, &meta.name, writer, path, name)
                            })?;
                            Ok(wrote.then_some(path))
                        })
                    })
                    .collect();
                copies
                    .into_iter()
                    .map(|c| {
                        c.join()
                            .unwrap_or_else(|_| Err(Error::internal("a key-group copy panicked")))
                    })
                    .collect()
            });
            let files = written
                .into_iter()
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>>>()?;
            self.ingest(id, files, name)?;
        }
        Ok(())
    }

    /// The state a restored `meta` goes into, checking it agrees with any
    /// state of the same name.
    fn restored_state(&mut self, meta: &StateMetaInfo, name: &str) -> Result<u32> {
        flowstate_api::KeyedStateBackend::restore_state(self, meta, name)
    }

    /// Inserts the key groups of the restored range from a canonical
    /// snapshot: read a bounded batch at a time on this task, decoded and
    /// written on a blocking thread.
    async fn insert_canonical(
        self,
        h: &KeyGroupsStateHandle,
        reader: &dyn StateReader,
        stats: &mut RestoreStats,
    ) -> Result<Self> {
        stats.handles_from_storage += 1;
        // Only the header and the frames of the key groups this backend
        // owns are read, a bounded batch of them at a time.
        let (this, read) = restore_key_groups(self, h, reader, Self::insert_key_groups).await?;
        stats.downloaded_bytes += read;
        Ok(this)
    }

    /// Writes the key groups `part` of `snapshot` (states mapped by `ids`):
    /// each state's entries are sorted into one SST file, which is then
    /// ingested (no memtable, no write-ahead path, no flush or compaction
    /// on the way in).
    fn insert_key_groups(
        &mut self,
        snapshot: &CanonicalSnapshot,
        part: KeyGroupRange,
        ids: &[u32],
        name: &str,
    ) -> Result<()> {
        flowstate_api::runtime::check_blocking("writing restored key groups to RocksDB");
        let max = self.config().max_parallelism;
        let mut runs: Vec<SortedRun> = ids.iter().map(|_| SortedRun::default()).collect();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for kg in part.iter() {
            let records = snapshot.key_group(kg)?;
            records
                .for_each_verified(max, |record| {
                    let (state, key, namespace) = (record.state(), record.key(), record.namespace());
                    let (entry, run) = ids
                        .get(state as usize)
                        .and_then(|id| self.core.states().get(*id as usize))
                        .zip(runs.get_mut(state as usize))
                        .ok_or_else(|| Error::corrupted(format!("snapshot {name}: unknown state {state}")))?;
                    key_part(&mut k, kg, key);
                    put_namespace(&mut k, namespace);
                    match (&record, entry.meta().kind.storage()) {
                        (Record::Value { value, .. }, StorageKind::Value) => run.put(&k, value),
                        (Record::List { elements, .. }, StorageKind::List) => {
                            v.clear();
                            for e in elements {
                                pack(&mut v, e);
                            }
                            run.merge(&k, &v);
                        }
                        (Record::MapEntry { user_key, value, .. }, StorageKind::Map) => {
                            k.extend_from_slice(user_key);
                            run.put(&k, value);
                        }
                        (Record::Timer { timestamp, .. }, StorageKind::Timers) => {
                            timer_key(&mut k, kg, *timestamp, key, namespace);
                            run.put(&k, &[]);
                        }
                        _ => {
                            return Err(Error::corrupted(format!(
                                "snapshot {name}: a record does not match the kind of state {:?}",
                                entry.meta().name
                            )))
                        }
                    }
                    Ok(())
                })
                .map_err(|e| e.context(format!("key group {kg}")))?;
        }
        let dir = self.temp_path("ingest");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let result = runs.iter_mut().zip(ids).enumerate().try_for_each(|(i, (run, &id))| {
            run.sort();
            self.ingest_sorted(id, &dir.join(format!("{i}.sst")), name, |writer, path| {
                run.write(writer)
                    .map_err(db_err(format_args!("{name}: writing {}", path.display())))
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// The files of `h`, shared and private.
fn handle_files(h: &IncrementalStateHandle) -> Vec<HandleFile> {
    h.shared.iter().chain(&h.private).cloned().collect()
}

fn describe(h: &IncrementalStateHandle) -> String {
    format!(
        "incremental checkpoint {} of {} ({})",
        h.checkpoint_id, h.backend_id, h.range
    )
}

pub(crate) async fn read_header(h: &IncrementalStateHandle, reader: &dyn StateReader) -> Result<SnapshotHeader> {
    let data = reader.read(&h.meta).await.map_err(|e| e.context(describe(h)))?;
    let (header, _) = SnapshotHeader::decode(&data).map_err(|e| e.context(describe(h)))?;
    if header.range != h.range {
        return Err(Error::corrupted(format!(
            "{}: its metadata covers {}, not {}",
            describe(h),
            header.range,
            h.range
        )));
    }
    Ok(header)
}

/// Puts the files of `h` (a checkpoint of `states`) into `dir`: from the
/// local copy if it verifies (names, sizes, CRC-32C), else downloaded,
/// checked against the handle and then block by block (see the module
/// documentation).
pub(crate) async fn materialize(
    h: &IncrementalStateHandle,
    reader: &dyn StateReader,
    options: &RocksDbOptions,
    dir: &Path,
    stats: &mut RestoreStats,
) -> Result<()> {
    let files = handle_files(h);
    let total: u64 = files.iter().map(|f| f.stream.size()).sum();
    if let Some(local) = options
        .local_recovery
        .as_ref()
        .map(|l| local_dir(l, h.checkpoint_id))
        .transpose()?
    {
        let (check, wanted, to) = (local.clone(), files.clone(), dir.to_path_buf());
        let verified = blocking(move || {
            if !verify_local(&check, &wanted) {
                return Ok(false);
            }
            link_or_copy_dir(&check, &to)?;
            Ok(true)
        })
        .await?;
        if verified {
            stats.handles_from_local_copy += 1;
            stats.local_bytes += total;
            return Ok(());
        }
        tracing::info!(dir = %local.display(), "local copy missing or not matching; downloading");
    }
    let d = dir.to_path_buf();
    blocking(move || std::fs::create_dir_all(&d).map_err(|e| Error::io(d.display(), e))).await?;
    let name = describe(h);
    futures::stream::iter(files.iter().cloned().map(|f| {
        let target = dir.join(&f.name);
        let name = &name;
        async move {
            download(reader, &f, target)
                .await
                .map_err(|e| e.context(format!("{name}: file {} ({})", f.name, f.stream.describe())))
        }
    }))
    .buffer_unordered(options.upload_concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    stats.handles_from_storage += 1;
    stats.downloaded_bytes += total;
    Ok(())
}

/// Adds the checkpoint `name`, and for corruption the damaged file and where
/// it came from, to an error of opening the files of `files`. The file is
/// the one the RocksDB status names ([`rocksdb_file`]).
fn name_damaged_file(e: Error, name: &str, files: &[HandleFile]) -> Error {
    let damaged = (e.kind() == ErrorKind::Corrupted)
        .then(|| rocksdb_file(&e))
        .flatten()
        .and_then(|path| Path::new(path).file_name())
        .and_then(|file| files.iter().find(|f| std::ffi::OsStr::new(&f.name) == file));
    match damaged {
        Some(f) => e.context(format!("{name}: file {} ({})", f.name, f.stream.describe())),
        None => e.context(name),
    }
}

/// Bytes fetched from storage at a time when a file is downloaded (see
/// the upload chunk in `incremental.rs` for why not more).
const DOWNLOAD_CHUNK: u64 = flowstate_api::checkpoint::DEFAULT_WRITE_CHUNK as u64;

/// Puts the bytes of `f` into the new file `target`, checking size and
/// CRC-32C: hard-linked when the storage is a local filesystem on the same
/// device, else streamed in chunks with the CRC computed in the same pass.
async fn download(reader: &dyn StateReader, f: &HandleFile, target: std::path::PathBuf) -> Result<()> {
    use std::io::Write;
    let size = f.stream.size();
    let mismatch = || Error::corrupted("does not match its size and checksum");
    if let Some(source) = reader.local_path(&f.stream).await {
        let (t, want) = (target.clone(), f.crc32c);
        let linked = blocking(move || {
            if std::fs::hard_link(&source, &t).is_err() {
                return Ok(false);
            }
            let ok = std::fs::metadata(&t).is_ok_and(|m| m.len() == size) && file_crc32c(&t)? == want;
            if !ok {
                let _ = std::fs::remove_file(&t);
                return Err(mismatch());
            }
            Ok(true)
        })
        .await?;
        if linked {
            return Ok(());
        }
    }
    let t = target.clone();
    let mut file = blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&t)
            .map_err(|e| Error::io(t.display(), e))
    })
    .await?;
    let mut crc = 0u32;
    let mut pos = 0;
    while pos < size {
        let end = (pos + DOWNLOAD_CHUNK).min(size);
        let part = reader
            .read_ranges(&f.stream, std::slice::from_ref(&(pos..end)))
            .await?
            .pop()
            .ok_or_else(|| Error::internal("a ranged read returned nothing"))?;
        let t = target.clone();
        (file, crc) = blocking(move || {
            file.write_all(&part).map_err(|e| Error::io(t.display(), e))?;
            crate::crash::point("restore.download-chunk");
            Ok((file, flowstate_api::format::codec::crc32c_append(crc, &part)))
        })
        .await?;
        pos = end;
    }
    // Closing a file may block too.
    blocking(move || {
        drop(file);
        Ok(())
    })
    .await?;
    if crc != f.crc32c {
        return Err(mismatch());
    }
    Ok(())
}

impl<K> RocksDbBackend<K> {
    /// Writes one uncompressed SST file at `path` for state `id` (`fill`
    /// adds its entries in key order and says how many) and ingests it,
    /// moving the file into the database. An empty file is neither
    /// finished nor ingested.
    pub(crate) fn ingest_sorted(
        &self,
        id: u32,
        path: &Path,
        name: &str,
        fill: impl FnOnce(&mut SstFileWriter<'_>, &Path) -> Result<u64>,
    ) -> Result<()> {
        if write_sst(&self.sst_options(id)?, path, name, fill)? {
            self.ingest(id, vec![path.to_path_buf()], name)?;
        }
        Ok(())
    }

    /// The options of the SST files a restore or bulk load writes for
    /// state `id`: the state's table format, uncompressed. LZ4 on the way
    /// in was a quarter of a canonical restore's time (W2's 2M keys: 980
    /// against 730 ms); compaction compresses the data when it rewrites
    /// these files.
    fn sst_options(&self, id: u32) -> Result<rocksdb::Options> {
        let kind = self.core.state(id)?.meta().kind.storage();
        let mut options = self
            .resources()
            .cf_options(kind, std::sync::Arc::new(TtlSlot::default()));
        options.set_compression_type(rocksdb::DBCompressionType::None);
        Ok(options)
    }

    /// Ingests `files` (SST files with disjoint key ranges) into state
    /// `id`, moving them into the database.
    fn ingest(&self, id: u32, files: Vec<std::path::PathBuf>, name: &str) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let entry = self.core.state(id)?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(entry.storage())?, &ingest, files)
            .map_err(db_err(format_args!(
                "{name}: ingesting the key groups of state {:?}",
                entry.meta().name
            )))?;
        crate::crash::point("restore.ingested");
        Ok(())
    }
}

/// Parts of a key-group copy written side by side, at most.
const MAX_COPY_THREADS: usize = 4;

/// Writes an SST file at `path` with `options`; `fill` adds its entries in
/// key order and says how many. False, and nothing finished, if there were
/// none.
fn write_sst(
    options: &rocksdb::Options,
    path: &Path,
    name: &str,
    fill: impl FnOnce(&mut SstFileWriter<'_>, &Path) -> Result<u64>,
) -> Result<bool> {
    let mut writer = SstFileWriter::create(options);
    writer
        .open(path)
        .map_err(db_err(format_args!("{name}: writing {}", path.display())))?;
    if fill(&mut writer, path)? == 0 {
        return Ok(false);
    }
    writer
        .finish()
        .map_err(db_err(format_args!("{name}: writing {}", path.display())))?;
    crate::crash::point("restore.sst-written");
    Ok(true)
}

/// Copies the entries of key groups `part` of column family `src` (state
/// `state`) of `db` into `writer`; returns how many.
fn copy_range(
    db: &rocksdb::DB,
    src: &rocksdb::ColumnFamily,
    part: KeyGroupRange,
    state: &str,
    writer: &mut SstFileWriter<'_>,
    path: &Path,
    name: &str,
) -> Result<u64> {
    let mut written = 0u64;
    let mut it = db.raw_iterator_cf(src);
    it.seek(kg_prefix(part.start()));
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if key_group_of(k, state)? >= part.end() {
            break;
        }
        writer
            .put(k, v)
            .map_err(db_err(format_args!("{name}: writing {}", path.display())))?;
        written += 1;
        it.next();
    }
    it.status().map_err(db_err(format!("reading {name}")))?;
    Ok(written)
}
