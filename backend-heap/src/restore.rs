//! Restore from canonical snapshots of any backend and parallelism: the
//! frames of the owned key groups are read a bounded batch at a time, then
//! decoded, verified and inserted on a blocking thread.

use std::sync::Arc;

use flowstate_api::backend::StateId;
use flowstate_api::checkpoint::{IncrementalStateHandle, NativeFormat, StateReader};
use flowstate_api::format::canonical::{restore_key_groups, CanonicalSnapshot, Record};
use flowstate_api::{
    Error, KeyGroupRange, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, RestoreMode, Result,
};

use crate::chain::{self, HeapOptions};
use crate::table::{compose, packed, Changes, CompositeKey, Inline, Table};
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
        Self::restore_with_options(config, HeapOptions::default(), handles, reader).await
    }

    /// Like [`restore`](Self::restore), into a backend with `options`.
    /// Canonical snapshots and the heap's own chains (incremental
    /// checkpoints) restore at any parallelism. With incremental
    /// checkpoints and [`RestoreMode::Claim`], the next checkpoint builds on
    /// the restored chains of the key groups whose states line up with this
    /// backend's; every other key group is written whole.
    pub async fn restore_with_options(
        config: KeyedBackendConfig<K>,
        options: HeapOptions,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Self>
    where
        K: 'static,
    {
        flowstate_api::runtime::nonblocking(Self::restore_all(config, options, handles, reader)).await
    }

    async fn restore_all(
        config: KeyedBackendConfig<K>,
        options: HeapOptions,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Self>
    where
        K: 'static,
    {
        flowstate_api::checkpoint::check_restore_handles(handles, config.max_parallelism)?;
        let mut backend = Self::with_options(config, options)?;
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
        if let KeyedStateHandle::Incremental(h) = handle {
            if h.format == NativeFormat::HeapChain {
                return self.restore_chain(h, reader).await;
            }
        }
        let KeyedStateHandle::KeyGroups(h) = handle else {
            let remedy = match handle {
                KeyedStateHandle::Incremental(h) => h.format.remedy(),
                _ => NativeFormat::RocksDb.remedy(),
            };
            return Err(Error::incompatible(format!(
                "the heap backend cannot restore {}: it restores canonical snapshots and its own chains only; {remedy}",
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

    /// Restores the owned key groups of a heap chain handle: per key group,
    /// its base and deltas in order.
    async fn restore_chain(mut self, h: &IncrementalStateHandle, reader: &dyn StateReader) -> Result<Self>
    where
        K: 'static,
    {
        let range = self.core.key_group_range();
        let overlap = h.range.intersect(&range);
        if overlap.is_empty() {
            return Ok(self);
        }
        let name = chain::describe(h);
        let index = chain::read_index(h, reader).await?;
        let ids = self.restore_header(&index.header, &name)?;
        let first = range.start();
        let max = self.core.max_parallelism();
        let apply_ids = ids.clone();
        let apply_name = name.clone();
        let (mut this, _) = chain::read_segments(&index, range, reader, self, move |mut this: Self, items| {
            let (ids, name) = (apply_ids.clone(), apply_name.clone());
            Box::pin(flowstate_api::runtime::run_blocking(move || {
                let mut scratch = Vec::new();
                let mut tables: Vec<&mut Table> = this.core.states_mut().map(|s| &mut s.storage_mut().table).collect();
                for (kg, segments) in items {
                    let i = (kg - first) as usize;
                    for (n, (data, compressed)) in segments.iter().enumerate() {
                        chain::apply_segment(&mut tables, &ids, (kg, i), (data, *compressed), max, &mut scratch)
                            .map_err(|e| {
                                e.context(format!("{name}, key group {kg}, segment {n} of {}", segments.len()))
                            })?;
                    }
                }
                drop(tables);
                Ok(this)
            }))
        })
        .await?;
        // Claimed, with states in this backend's order: the next checkpoint
        // builds on these chains.
        let lined_up = ids.iter().enumerate().all(|(i, id)| *id as usize == i);
        let claimed = this.options.restore_mode == RestoreMode::Claim && reader.claimed();
        if let (Some(inc), true, true) = (&mut this.incremental, claimed, lined_up) {
            {
                let mut book = inc.book()?;
                for kg in overlap.iter() {
                    book.base[(kg - first) as usize] = Some(index.chains[(kg - h.range.start()) as usize].clone());
                }
                book.base_id = book.base_id.max(Some(h.checkpoint_id));
            }
            // From now on every write goes into the next delta.
            inc.armed = true;
            let groups = range.len() as usize;
            for s in this.core.states_mut() {
                s.storage_mut()
                    .changes
                    .get_or_insert_with(|| Box::new(Changes::new(groups)));
            }
        }
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
        let mut counts = vec![0usize; ids.len()];
        for kg in part.iter() {
            let records = snapshot.key_group(kg)?;
            let i = (kg - range.start()) as usize;
            // Each table is sized once for the key group's records.
            counts.iter_mut().for_each(|c| *c = 0);
            records.for_each(|record| {
                if let Some(c) = counts.get_mut(record.state() as usize) {
                    *c += 1;
                }
                Ok(())
            })?;
            for (state, &n) in counts.iter().enumerate() {
                if n > 0 {
                    let id = ids[state];
                    self.core.storage_mut(id)?.table.reserve(i, n);
                }
            }
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
            "the native {} checkpoint {} of backend {} (key groups {})",
            h.format.backend(),
            h.checkpoint_id,
            h.backend_id,
            h.range
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
            maps[kg].put(scratch, value);
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
