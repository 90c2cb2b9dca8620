//! Canonical snapshots: savepoints written from a SlateDB snapshot of the
//! database, and canonical snapshots (savepoints and full checkpoints of
//! any backend) restored into it.
//!
//! A savepoint must not depend on the backend's database, so it is written
//! in the canonical format every backend reads: a consistent
//! [`DbSnapshot`] is taken in the synchronous phase, and the asynchronous
//! phase scans it one key group at a time.

use std::collections::HashMap;
use std::sync::Arc;

use flowstate_api::backend::StorageKind;
use flowstate_api::checkpoint::{KeyGroupsStateHandle, StateReader};
use flowstate_api::format::canonical::{
    check_compatible, CanonicalSnapshot, KeyGroupSource, KeyGroupWriter, Record, SnapshotHeader,
};
use flowstate_api::{Error, KeyGroupRange, KeyedBackendConfig, Result};
use slatedb::{Db, DbSnapshot, WriteBatch};
use tokio::runtime::Handle;

use crate::error::slate_err;
use flowstate_api::format::keys::elements;

use crate::keys::{bulk_scan, decode_key, decode_timer_key, kg_prefix, map_key, pack_all, state_key, timer_key};

/// Frames read and written per batch of a canonical restore.
const RESTORE_BATCH_BYTES: u64 = 16 << 20;

/// One state of a snapshot: its tag, kind and name, in header order.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotState {
    pub(crate) tag: u32,
    pub(crate) kind: StorageKind,
    pub(crate) name: Arc<str>,
}

/// The database frozen at a savepoint's synchronous phase, read one key
/// group at a time on a blocking thread.
pub(crate) struct SnapshotSource {
    pub(crate) snapshot: Arc<DbSnapshot>,
    /// The runtime the database runs on, to drive its reads.
    pub(crate) runtime: Handle,
    /// Header index by tag.
    pub(crate) states: HashMap<u32, (u32, SnapshotState)>,
    pub(crate) path: String,
}

impl KeyGroupSource for SnapshotSource {
    fn write_key_group(&mut self, kg: u32, out: &mut KeyGroupWriter) -> Result<()> {
        let (snapshot, states, path) = (&self.snapshot, &self.states, &self.path);
        self.runtime.block_on(async {
            let what = || format!("reading key group {kg} of database {path} for a savepoint");
            let (start, end) = (kg_prefix(kg).to_vec(), kg_prefix(kg + 1).to_vec());
            let mut it = snapshot
                .scan_with_options(start..end, &bulk_scan())
                .await
                .map_err(slate_err(what))?;
            while let Some(kv) = it.next().await.map_err(slate_err(what))? {
                let Some(tag) = kv.key.get(2..6).and_then(|t| <[u8; 4]>::try_from(t).ok()) else {
                    return Err(Error::corrupted(format!("{}: a key of {} bytes", what(), kv.key.len())));
                };
                // Entries of states the backend does not hold (none are
                // written) would be foreign: refuse rather than drop them.
                let Some((index, s)) = states.get(&u32::from_be_bytes(tag)) else {
                    return Err(Error::corrupted(format!(
                        "{}: an entry of unknown state tag {:#010x}",
                        what(),
                        u32::from_be_bytes(tag)
                    )));
                };
                if s.kind == StorageKind::Timers {
                    let t = decode_timer_key(&kv.key, &s.name)?;
                    out.timer(*index, &t.key, &t.namespace, t.timestamp);
                    continue;
                }
                let d = decode_key(&kv.key, &s.name)?;
                match s.kind {
                    StorageKind::Value => out.value(*index, d.key, d.namespace, &kv.value),
                    StorageKind::List => out.list(*index, d.key, d.namespace, elements(&kv.value, &s.name)?),
                    StorageKind::Map => out.map_entry(*index, d.key, d.namespace, d.user_key, &kv.value),
                    StorageKind::Timers => {}
                }
            }
            Ok(())
        })
    }
}

/// Writes the key groups of `handle` that `config` owns into `db`, one
/// batch of key groups (at most [`RESTORE_BATCH_BYTES`] of frames) per
/// write. `states` gives, for each state of the snapshot's header in
/// order, its storage in the backend (found or created by `resolve`).
pub(crate) async fn restore<K>(
    db: &Db,
    path: &str,
    config: &KeyedBackendConfig<K>,
    handle: &KeyGroupsStateHandle,
    reader: &dyn StateReader,
    mut resolve: impl FnMut(&SnapshotHeader, &str) -> Result<Vec<SnapshotState>>,
) -> Result<()> {
    let name = handle.describe();
    let want: KeyGroupRange = config.key_group_range;
    let mut states: Option<Vec<SnapshotState>> = None;
    for part in handle.key_group_batches(want, RESTORE_BATCH_BYTES)? {
        let (snapshot, _) = CanonicalSnapshot::read(reader, handle, part, &name)
            .await
            .map_err(|e| e.context(format!("restoring key groups {}", handle.range)))?;
        if states.is_none() {
            check_compatible(
                snapshot.header(),
                &config.key_serializer.id(),
                config.max_parallelism,
                &name,
            )?;
            states = Some(resolve(snapshot.header(), &name)?);
        }
        let Some(states) = states.as_deref() else {
            return Err(Error::internal("no states resolved"));
        };
        let mut batch = WriteBatch::new();
        for kg in part.iter() {
            snapshot
                .key_group(kg)?
                .for_each_verified(config.max_parallelism, |record| {
                    let s = states.get(record.state() as usize).ok_or_else(|| {
                        Error::corrupted(format!("snapshot {name}: a record of state {}", record.state()))
                    })?;
                    put_record(&mut batch, kg, s, &record);
                    Ok(())
                })?;
        }
        db.write(batch)
            .await
            .map_err(slate_err(|| format!("restoring {name} into database {path}")))?;
    }
    Ok(())
}

/// Adds one canonical record to `batch`.
fn put_record(batch: &mut WriteBatch, kg: u32, s: &SnapshotState, record: &Record<'_>) {
    match record {
        Record::Value {
            key, namespace, value, ..
        } => batch.put(state_key(kg, s.tag, key, namespace), value),
        Record::List {
            key,
            namespace,
            elements,
            ..
        } => {
            if !elements.is_empty() {
                batch.put(state_key(kg, s.tag, key, namespace), pack_all(elements));
            }
        }
        Record::MapEntry {
            key,
            namespace,
            user_key,
            value,
            ..
        } => batch.put(map_key(kg, s.tag, key, namespace, user_key), value),
        Record::Timer {
            key,
            namespace,
            timestamp,
            ..
        } => batch.put(timer_key(kg, s.tag, *timestamp, key, namespace), []),
    }
}
