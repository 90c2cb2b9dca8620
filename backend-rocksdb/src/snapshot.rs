//! Snapshots. The sync phase is a RocksDB checkpoint: memtables are flushed
//! and the live files hard-linked into a private directory. The async phase
//! then uploads its files (checkpoints, see `incremental.rs`): only the SST
//! files the last completed checkpoint does not already hold when
//! incremental, every file into the checkpoint's own directory otherwise (a
//! native full checkpoint, nothing shared, as Flink's
//! `RocksNativeFullSnapshotStrategy`; native savepoints the same, in the
//! savepoint's directory); or it reads the checkpoint key group by key
//! group into the canonical format (canonical savepoints).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flowstate_api::backend::{AsyncOutput, StorageKind};
use flowstate_api::checkpoint::{CheckpointLocation, StateScope};
use flowstate_api::format::canonical::{write_canonical_snapshot, KeyGroupSource, KeyGroupWriter, SnapshotHeader};
use flowstate_api::{CheckpointKind, Error, KeyedStateHandle, PendingSnapshot, Result, SnapshotOptions};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::DB;

use crate::error::closed;
use crate::files::{blocking, list_files, DirGuard};
use crate::incremental::{plan_reuse, Upload};
use crate::keys::{decode_key, elements, kg_prefix};
use crate::local_recovery::local_dir;
use crate::options::{open_read_only, Resources};
use crate::{cf_name, db_err, RocksDbBackend};

/// The sync phase, and the async phase it returns.
pub(crate) fn snapshot<K>(
    b: &mut RocksDbBackend<K>,
    id: u64,
    location: Arc<CheckpointLocation>,
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
    // Checkpoints upload the RocksDB checkpoint's own files: only new SST
    // files when incremental, every file (a native full checkpoint, nothing
    // shared) otherwise. Savepoints are canonical unless native: then every
    // file, exclusive to the savepoint's directory (paths relative to it),
    // never reused by a checkpoint nor reusing one.
    let checkpoint = options.kind == CheckpointKind::Checkpoint;
    let native = (checkpoint || options.native) && !header.states.is_empty();
    let incremental = native && checkpoint && b.options().incremental;
    if !native {
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
    let reuse = if incremental {
        let mut u = b
            .uploads
            .lock()
            .map_err(|_| Error::internal("upload registry lock poisoned"))?;
        plan_reuse(&mut u, id, &files)
    } else {
        Default::default()
    };
    let upload = Upload {
        id,
        backend_id: b
            .instance_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        header,
        share: incremental,
        concurrency: b.options().upload_concurrency.max(1),
        // Local copies are of checkpoints only.
        local: b
            .options()
            .local_recovery
            .as_ref()
            .filter(|_| checkpoint)
            .map(|l| local_dir(l, id))
            .transpose()?,
        uploads: Arc::clone(&b.uploads),
        closed: closed_flag,
    };
    let phase = async move { upload.run(guard, location, files, reuse).await };
    Ok(PendingSnapshot::new(id, started, phase))
}

/// Read-ahead of the iterators of a full snapshot.
const READAHEAD: usize = 2 << 20;

/// Reads a checkpoint directory key group by key group.
pub(crate) struct FullSource {
    db: DB,
    states: Vec<(String, StorageKind, String)>,
    closed: Arc<AtomicBool>,
    id: u64,
}

impl FullSource {
    pub(crate) fn open(
        dir: &Path,
        header: &SnapshotHeader,
        resources: &Resources,
        closed: Arc<AtomicBool>,
        id: u64,
    ) -> Result<Self> {
        flowstate_api::runtime::check_blocking("opening a checkpoint for a full snapshot");
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
            // One pass over the checkpoint's files: read ahead, and leave the
            // block cache to the live database.
            let mut read = rocksdb::ReadOptions::default();
            read.fill_cache(false);
            read.set_readahead_size(READAHEAD);
            read.set_iterate_upper_bound(kg_prefix(kg + 1).to_vec());
            let mut it = self.db.raw_iterator_cf_opt(cf, read);
            it.seek(prefix);
            while it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if !k.starts_with(&prefix) {
                    break;
                }
                if *kind == StorageKind::Timers {
                    let t = crate::keys::decode_timer_key(k, name)?;
                    out.timer(state, &t.key, &t.namespace, t.timestamp);
                    it.next();
                    continue;
                }
                let d = decode_key(k, name)?;
                match kind {
                    StorageKind::Value => out.value(state, d.key, d.namespace, v),
                    StorageKind::List => out.list(state, d.key, d.namespace, elements(v, name)?),
                    StorageKind::Map => out.map_entry(state, d.key, d.namespace, d.user_key, v),
                    StorageKind::Timers => {}
                }
                it.next();
            }
            it.status().map_err(db_err(format!("reading state {name:?}")))?;
        }
        Ok(())
    }
}
