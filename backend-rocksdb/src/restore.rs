//! Restore: from incremental handles (a local copy when it verifies, else
//! a download), with rescaling by `delete_range` and key-group copies, and
//! from canonical snapshots of any backend.

use std::path::Path;
use std::time::{Duration, Instant};

use flowstate_api::canonical::{check_key_serializer, CanonicalSnapshot, Record, SnapshotHeader};
use flowstate_api::codec::crc32c;
use flowstate_api::{
    Error, HandleFile, IncrementalStateHandle, KeyGroupRange, KeyGroupsStateHandle, KeyedBackendConfig,
    KeyedStateHandle, RestoreMode, Result, StateMeta, StateReader, StorageKind,
};
use futures::{StreamExt, TryStreamExt};
use rocksdb::WriteBatch;

use crate::keys::{decode_key, key_part, kg_prefix, pack, put_namespace};
use crate::snapshot::{blocking, link_or_copy_dir, list_files, local_dir, open_read_only, DirGuard};
use crate::{db_err, RocksDbBackend, RocksDbOptions};

/// How a restore went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Bytes downloaded from checkpoint storage.
    pub downloaded_bytes: u64,
    /// Bytes taken from a verified local copy instead.
    pub local_bytes: u64,
    /// Whether the base checkpoint came from a local copy.
    pub from_local_copy: bool,
    /// Wall time of the restore.
    pub duration: Duration,
}

/// A batch is written once it holds this many bytes.
const BATCH_BYTES: usize = 4 << 20;

impl<K> RocksDbBackend<K> {
    /// A backend restored from `handles` (any number, from any parallelism,
    /// incremental or canonical): only the key groups of the config's range
    /// are kept. `reader` reads the handles' files.
    pub async fn restore(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
        options: RocksDbOptions,
    ) -> Result<Self> {
        let started = Instant::now();
        let range = config.key_group_range;
        let overlapping: Vec<&KeyedStateHandle> = handles
            .iter()
            .filter(|h| !h.is_empty() && !h.key_group_range().intersect(&range).is_empty())
            .collect();
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
                check_key_serializer(&header, &config.key_serializer.id(), &describe(base))?;
                let dir = options
                    .working_dir
                    .join(format!("restore-{}", flowstate_api::unique_file_name()));
                let guard = DirGuard(dir.clone());
                materialize(base, reader, &options, &dir, &mut stats).await?;
                let backend = Self::open(config, options, Some(&dir), &header.states)?;
                drop(guard);
                if base.range != range {
                    backend.delete_outside(range)?;
                } else if incremental.len() == 1 && backend.options().restore_mode == RestoreMode::Claim {
                    // Claimed and not rescaled: the next checkpoint shares these files.
                    let mut u = backend
                        .uploads
                        .lock()
                        .map_err(|_| Error::internal("upload registry lock poisoned"))?;
                    u.last_completed = base.shared.iter().map(|f| (f.name.clone(), f.clone())).collect();
                }
                backend
            }
            None => Self::new(config, options)?,
        };
        for h in incremental.iter().copied() {
            if !base.is_some_and(|b| std::ptr::eq(b, h)) {
                backend.copy_incremental(h, reader, &mut stats).await?;
            }
        }
        for h in &overlapping {
            if let KeyedStateHandle::KeyGroups(h) = h {
                backend.insert_canonical(h, reader, &mut stats).await?;
            }
        }
        backend.adopt_local_copies(base.filter(|_| incremental.len() == 1).map(|b| b.checkpoint_id))?;
        stats.duration = started.elapsed();
        backend.restore_stats = stats;
        Ok(backend)
    }

    /// Takes over the local copy of the restored checkpoint `keep` (deleted
    /// once a newer checkpoint completes) and deletes any other copy of this
    /// backend's scope: they belong to earlier runs.
    pub(crate) fn adopt_local_copies(&mut self, keep: Option<u64>) -> Result<()> {
        let Some(l) = self.options().local_recovery.clone() else {
            return Ok(());
        };
        let scope = crate::snapshot::local_scope_dir(&l);
        let Ok(entries) = std::fs::read_dir(&scope) else {
            return Ok(());
        };
        let mut u = self
            .uploads
            .lock()
            .map_err(|_| Error::internal("upload registry lock poisoned"))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok());
            match id {
                Some(id) if Some(id) == keep => u.local_copies.push((id, entry.path())),
                Some(_) => {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
                None => {}
            }
        }
        Ok(())
    }

    /// How the restore that made this backend went.
    pub fn restore_stats(&self) -> RestoreStats {
        self.restore_stats
    }

    /// Deletes every key group outside `range` from every state.
    fn delete_outside(&self, range: KeyGroupRange) -> Result<()> {
        let mut batch = WriteBatch::default();
        for s in &self.states {
            let cf = self.cf(s)?;
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

    /// Copies the key groups of `range` held by another incremental handle.
    async fn copy_incremental(
        &mut self,
        h: &IncrementalStateHandle,
        reader: &dyn StateReader,
        stats: &mut RestoreStats,
    ) -> Result<()> {
        let name = describe(h);
        let header = read_header(h, reader).await?;
        check_key_serializer(&header, &self.config().key_serializer.id(), &name)?;
        let dir = self
            .options()
            .working_dir
            .join(format!("restore-{}", flowstate_api::unique_file_name()));
        let _guard = DirGuard(dir.clone());
        materialize(h, reader, self.options(), &dir, stats).await?;
        let ids = header
            .states
            .iter()
            .map(|m| self.restored_state(m, &name))
            .collect::<Result<Vec<_>>>()?;
        let other = open_read_only(&dir, &header.states, self.resources())?;
        let overlap = h.range.intersect(&self.config().key_group_range);
        let mut batch = WriteBatch::default();
        for (meta, id) in header.states.iter().zip(ids) {
            let src = other
                .cf_handle(&crate::cf_name(&meta.name))
                .ok_or_else(|| Error::corrupted(format!("{name}: state {:?} has no column family", meta.name)))?;
            let dst = self.cf(&self.states[id as usize])?;
            let mut it = other.raw_iterator_cf(src);
            it.seek(kg_prefix(overlap.start()));
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                let d = decode_key(k, &meta.name)?;
                if d.kg >= overlap.end() {
                    break;
                }
                batch.put_cf(dst, k, v);
                if batch.size_in_bytes() >= BATCH_BYTES {
                    self.db
                        .write(std::mem::take(&mut batch))
                        .map_err(db_err(format!("restoring {name}")))?;
                }
                it.next();
            }
            it.status().map_err(db_err(format!("reading {name}")))?;
        }
        self.db.write(batch).map_err(db_err(format!("restoring {name}")))
    }

    /// The state a restored `meta` goes into, checking it agrees with any
    /// state of the same name.
    fn restored_state(&mut self, meta: &StateMeta, name: &str) -> Result<u32> {
        if let Some(existing) = self.states.iter().find(|s| s.meta.name == meta.name) {
            if let Some(why) = existing.meta.incompatibility(meta) {
                return Err(Error::incompatible(format!(
                    "{name}: state {:?} differs from the same state in another handle: {why}",
                    meta.name
                )));
            }
        }
        self.ensure_state(meta)
    }

    /// Inserts the key groups of `range` from a canonical snapshot.
    async fn insert_canonical(
        &mut self,
        h: &KeyGroupsStateHandle,
        reader: &dyn StateReader,
        stats: &mut RestoreStats,
    ) -> Result<()> {
        let range = self.config().key_group_range;
        let name = h.stream.describe();
        let data = reader.read(&h.stream).await?;
        stats.downloaded_bytes += data.len() as u64;
        let snapshot = CanonicalSnapshot::open(data, h, &name)?;
        check_key_serializer(snapshot.header(), &self.config().key_serializer.id(), &name)?;
        let ids = snapshot
            .header()
            .states
            .iter()
            .map(|meta| self.restored_state(meta, &name))
            .collect::<Result<Vec<_>>>()?;
        let max = self.config().max_parallelism;
        let mut batch = WriteBatch::default();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for kg in h.range.intersect(&range).iter() {
            let records = snapshot.key_group(kg)?;
            records
                .for_each_verified(max, |record| {
                    let (state, key, namespace) = (record.state(), record.key(), record.namespace());
                    let s = ids
                        .get(state as usize)
                        .and_then(|id| self.states.get(*id as usize))
                        .ok_or_else(|| Error::corrupted(format!("snapshot {name}: unknown state {state}")))?;
                    let cf = self.cf(s)?;
                    key_part(&mut k, kg, key);
                    put_namespace(&mut k, namespace);
                    match (&record, s.meta.kind.storage()) {
                        (Record::Value { value, .. }, StorageKind::Value) => batch.put_cf(cf, &k, value),
                        (Record::List { elements, .. }, StorageKind::List) => {
                            v.clear();
                            for e in elements {
                                pack(&mut v, e);
                            }
                            batch.merge_cf(cf, &k, &v);
                        }
                        (Record::MapEntry { user_key, value, .. }, StorageKind::Map) => {
                            k.extend_from_slice(user_key);
                            batch.put_cf(cf, &k, value);
                        }
                        _ => {
                            return Err(Error::corrupted(format!(
                                "snapshot {name}: a record does not match the kind of state {:?}",
                                s.meta.name
                            )))
                        }
                    }
                    if batch.size_in_bytes() >= BATCH_BYTES {
                        self.db
                            .write(std::mem::take(&mut batch))
                            .map_err(db_err(format!("restoring {name}")))?;
                    }
                    Ok(())
                })
                .map_err(|e| e.context(format!("key group {kg}")))?;
        }
        self.db.write(batch).map_err(db_err(format!("restoring {name}")))
    }
}

fn describe(h: &IncrementalStateHandle) -> String {
    format!(
        "incremental checkpoint {} of {} ({})",
        h.checkpoint_id, h.backend_id, h.range
    )
}

async fn read_header(h: &IncrementalStateHandle, reader: &dyn StateReader) -> Result<SnapshotHeader> {
    let data = reader.read(&h.meta).await?;
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

/// Puts the files of `h` into `dir`: from the local copy if it verifies
/// (names, sizes, CRC-32C), else downloaded and checked against the handle.
async fn materialize(
    h: &IncrementalStateHandle,
    reader: &dyn StateReader,
    options: &RocksDbOptions,
    dir: &Path,
    stats: &mut RestoreStats,
) -> Result<()> {
    let files: Vec<HandleFile> = h.shared.iter().chain(&h.private).cloned().collect();
    let total: u64 = files.iter().map(|f| f.stream.size()).sum();
    if let Some(local) = options.local_recovery.as_ref().map(|l| local_dir(l, h.checkpoint_id)) {
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
            stats.from_local_copy = true;
            stats.local_bytes += total;
            return Ok(());
        }
        tracing::info!(dir = %local.display(), "local copy missing or not matching; downloading");
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let name = describe(h);
    futures::stream::iter(files.into_iter().map(|f| {
        let target = dir.join(&f.name);
        let name = &name;
        async move {
            let data = reader.read(&f.stream).await?;
            if data.len() as u64 != f.stream.size() || crc32c(&data) != f.crc32c {
                return Err(Error::corrupted(format!(
                    "{name}: file {} ({}) does not match its checksum",
                    f.name,
                    f.stream.describe()
                )));
            }
            blocking(move || std::fs::write(&target, &data).map_err(|e| Error::io(target.display(), e))).await
        }
    }))
    .buffer_unordered(options.upload_concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    stats.downloaded_bytes += total;
    Ok(())
}

/// True if `dir` holds exactly the files of `wanted`, by size and CRC-32C.
fn verify_local(dir: &Path, wanted: &[HandleFile]) -> bool {
    let Ok(present) = list_files(dir) else { return false };
    if present.len() != wanted.len() {
        return false;
    }
    wanted.iter().all(|f| {
        let path = dir.join(&f.name);
        match std::fs::read(&path) {
            Ok(data) => data.len() as u64 == f.stream.size() && crc32c(&data) == f.crc32c,
            Err(_) => false,
        }
    })
}
