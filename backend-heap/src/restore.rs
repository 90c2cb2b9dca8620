//! Restore from canonical snapshots of any backend and parallelism: the
//! frames of the owned key groups are read a bounded batch at a time, then
//! decoded, verified and inserted on a blocking thread.

use std::sync::Arc;

use flowstate_api::backend::StateId;
use flowstate_api::checkpoint::StateReader;
use flowstate_api::format::canonical::{restore_key_groups, CanonicalSnapshot, Record};
use flowstate_api::{Error, KeyGroupRange, KeyedBackendConfig, KeyedStateHandle, Result};

use crate::table::{compose, packed, CompositeKey, Inline, Table};
use crate::HeapBackend;

impl<K> HeapBackend<K> {
    /// A backend restored from `handles` (any number, from any parallelism):
    /// only the key groups in the config's range are kept. `reader` reads
    /// the handles' streams; decoding and inserting run on blocking threads.
    pub async fn restore(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Self>
    where
        K: 'static,
    {
        flowstate_api::runtime::nonblocking(Self::restore_all(config, handles, reader)).await
    }

    async fn restore_all(
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Self>
    where
        K: 'static,
    {
        flowstate_api::checkpoint::check_restore_handles(handles, config.max_parallelism)?;
        let mut backend = Self::new(config)?;
        for handle in handles {
            backend = backend.restore_handle(handle, reader).await?;
        }
        Ok(backend)
    }

    async fn restore_handle(self, handle: &KeyedStateHandle, reader: &dyn StateReader) -> Result<Self>
    where
        K: 'static,
    {
        let range = self.core.key_group_range();
        let KeyedStateHandle::KeyGroups(h) = handle else {
            return Err(Error::incompatible(format!(
                "the heap backend cannot restore {}: it restores canonical snapshots only; restore native RocksDB \
                 snapshots into the RocksDB backend, or turn this one into a canonical savepoint with \
                 `flowstate savepoint convert`",
                describe_native(handle)
            )));
        };
        let overlap = h.range.intersect(&range);
        if h.stream == flowstate_api::checkpoint::StreamStateHandle::Empty || overlap.is_empty() {
            return Ok(self);
        }
        // Only the header and the frames of the key groups this backend
        // owns are read, a bounded batch of them at a time.
        let (this, _) = restore_key_groups(self, h, reader, Self::insert_key_groups).await?;
        Ok(this)
    }

    /// Inserts the key groups `part` of `snapshot` (states mapped by `ids`).
    fn insert_key_groups(
        &mut self,
        snapshot: &CanonicalSnapshot,
        part: KeyGroupRange,
        ids: &[StateId],
        name: &str,
    ) -> Result<()> {
        let range = self.core.key_group_range();
        let max = self.core.max_parallelism();
        let mut scratch = Vec::new();
        for kg in part.iter() {
            let records = snapshot.key_group(kg)?;
            let i = (kg - range.start()) as usize;
            records.for_each_verified(max, |record| {
                let state = record.state();
                let id = ids[state as usize];
                insert_record(&mut self.core.storage_mut(id)?.table, i, &record, &mut scratch)
                    .map_err(|e| e.context(format!("snapshot {name}, key group {kg}")))
            })?;
        }
        Ok(())
    }
}

/// Names a native handle for errors.
fn describe_native(handle: &KeyedStateHandle) -> String {
    match handle {
        KeyedStateHandle::Incremental(h) => format!(
            "the native RocksDB checkpoint {} of backend {} (key groups {})",
            h.checkpoint_id, h.backend_id, h.range
        ),
        other => format!("a native snapshot of key groups {}", other.key_group_range()),
    }
}

/// Inserts one restored record into key group index `kg` of `table`.
pub(crate) fn insert_record(table: &mut Table, kg: usize, record: &Record<'_>, scratch: &mut Vec<u8>) -> Result<()> {
    match (table, record) {
        (
            Table::Value(maps),
            Record::Value {
                key, namespace, value, ..
            },
        ) => {
            compose(scratch, key, namespace);
            maps[kg].insert(CompositeKey::from_slice(scratch), Inline::from_slice(value));
        }
        (
            Table::List(maps),
            Record::List {
                key,
                namespace,
                elements,
                ..
            },
        ) => {
            compose(scratch, key, namespace);
            let list = packed(elements.iter().copied());
            if !list.is_empty() {
                maps[kg].insert(CompositeKey::from_slice(scratch), Arc::new(list));
            }
        }
        (
            Table::Map(maps),
            Record::MapEntry {
                key,
                namespace,
                user_key,
                value,
                ..
            },
        ) => {
            compose(scratch, key, namespace);
            let ck: &[u8] = scratch;
            match maps[kg].get_mut(ck) {
                Some(m) => {
                    Arc::make_mut(m).insert(Inline::from_slice(user_key), Inline::from_slice(value));
                }
                None => {
                    let mut m = std::collections::BTreeMap::new();
                    m.insert(Inline::from_slice(user_key), Inline::from_slice(value));
                    maps[kg].insert(CompositeKey::from_slice(ck), Arc::new(m));
                }
            }
        }
        (
            Table::Timers(timers),
            Record::Timer {
                key,
                namespace,
                timestamp,
                ..
            },
        ) => timers.insert(kg, *timestamp, key, namespace),
        _ => return Err(Error::corrupted("record does not match its state's kind")),
    }
    Ok(())
}
