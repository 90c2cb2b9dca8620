//! Bulk loading: writes collected per state, sorted into SST files and
//! ingested, instead of going one by one through the memtable.

use std::path::PathBuf;
use std::sync::Arc;

use flowstate_api::backend::{
    BackendCapabilities, BackendCore, KeyVisitor, MapVisitor, StateId, StateMetaInfo, StorageKind,
};
use flowstate_api::checkpoint::CheckpointLocation;
use flowstate_api::{Error, KeyedStateBackend, PendingSnapshot, Result, SnapshotOptions};
use rocksdb::SstFileWriter;

use crate::keys::pack;
use crate::{db_err, RocksDbBackend, RocksDbState};

/// A bulk load spills its sorted writes to SST files once it holds this
/// many bytes, by default.
pub const DEFAULT_SPILL_BYTES: usize = 64 << 20;

/// One state's writes, in one buffer, sorted by key before they are
/// written to an SST file.
#[derive(Default)]
pub(crate) struct SortedRun {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// One write of a [`SortedRun`].
#[derive(Clone, Copy)]
struct Entry {
    /// The key's first 8 bytes (zero-padded), big-endian: most comparisons
    /// of a sort end here.
    prefix: u64,
    /// Start in the run's bytes (and the order of the writes).
    at: usize,
    key: usize,
    value: usize,
    /// A merge operand (list elements appended) rather than a put.
    merge: bool,
}

impl SortedRun {
    /// Puts `value` at `key` (a later put of the same key wins).
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.push(key, value, false);
    }

    /// Appends the packed list elements `operand` to `key`.
    pub(crate) fn merge(&mut self, key: &[u8], operand: &[u8]) {
        self.push(key, operand, true);
    }

    fn push(&mut self, key: &[u8], value: &[u8], merge: bool) {
        let mut prefix = [0u8; 8];
        let n = key.len().min(8);
        prefix[..n].copy_from_slice(&key[..n]);
        self.entries.push(Entry {
            prefix: u64::from_be_bytes(prefix),
            at: self.bytes.len(),
            key: key.len(),
            value: value.len(),
            merge,
        });
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
    }

    /// Bytes held.
    fn size(&self) -> usize {
        self.bytes.len() + self.entries.len() * std::mem::size_of::<Entry>()
    }

    fn key(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.at..e.at + e.key]
    }

    fn value(&self, e: &Entry) -> &[u8] {
        let start = e.at + e.key;
        &self.bytes[start..start + e.value]
    }

    /// Sorts by key; the writes of one key keep their order.
    pub(crate) fn sort(&mut self) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| self.key(a).cmp(self.key(b)))
                .then(a.at.cmp(&b.at))
        });
        self.entries = entries;
    }

    /// Writes the sorted entries, one per key, as the writes of that key
    /// would have left it one by one: the last put followed by the
    /// operands merged after it, or only merge operands (written as one
    /// merge). Returns how many keys were written.
    pub(crate) fn write(&self, writer: &mut SstFileWriter<'_>) -> std::result::Result<u64, rocksdb::Error> {
        let mut written = 0;
        let mut value = Vec::new();
        let mut i = 0;
        while let Some(first) = self.entries.get(i) {
            let key = self.key(first);
            let same = self.entries[i..].iter().take_while(|e| self.key(e) == key).count();
            let group = &self.entries[i..i + same];
            let last_put = group.iter().rposition(|e| !e.merge);
            let from = last_put.unwrap_or(0);
            value.clear();
            for e in &group[from..] {
                value.extend_from_slice(self.value(e));
            }
            if last_put.is_some() {
                writer.put(key, &value)?;
            } else {
                writer.merge(key, &value)?;
            }
            written += 1;
            i += same;
        }
        Ok(written)
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }
}

/// A bulk load into a [`RocksDbBackend`], from
/// [`RocksDbBackend::bulk_load`]: the typed state API writes through it as
/// through the backend (it is a [`KeyedStateBackend`] sharing the
/// backend's states, keys and TTL), but writes are collected per state,
/// sorted, written to SST files and ingested, which skips the memtable,
/// its flushes and the compactions they cause. Keys may come in any order.
///
/// Only writes that need no read are possible: value updates, list
/// appends and replacements, map puts. Reads, deletes, timers and
/// snapshots are refused as `Invalid` until [`finish`](BulkLoad::finish).
/// A later write of a key overrides an earlier one as it would have one by
/// one. Dropping a load without finishing it discards what it has not yet
/// spilled (see [`with_spill_bytes`](BulkLoad::with_spill_bytes)).
pub struct BulkLoad<'a, K> {
    backend: &'a mut RocksDbBackend<K>,
    /// Per state id.
    runs: Vec<SortedRun>,
    buffered: usize,
    spill_bytes: usize,
    dir: PathBuf,
    files: usize,
    keys: u64,
}

impl<K> std::fmt::Debug for BulkLoad<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkLoad")
            .field("backend", &self.backend)
            .field("buffered", &self.buffered)
            .field("files", &self.files)
            .finish()
    }
}

/// What a bulk load wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkLoadStats {
    /// Keys written (each key of each state once per SST file it is in).
    pub keys: u64,
    /// SST files ingested.
    pub files: usize,
}

impl<K> RocksDbBackend<K> {
    /// Starts a bulk load (see [`BulkLoad`]); the backend is usable again
    /// once it is finished.
    pub fn bulk_load(&mut self) -> BulkLoad<'_, K> {
        let dir = self.temp_path("bulk");
        BulkLoad {
            backend: self,
            runs: Vec::new(),
            buffered: 0,
            spill_bytes: DEFAULT_SPILL_BYTES,
            dir,
            files: 0,
            keys: 0,
        }
    }
}

impl<K> BulkLoad<'_, K> {
    /// Spills (sorts, writes and ingests) what is collected whenever it
    /// holds `bytes` ([`DEFAULT_SPILL_BYTES`] by default): the memory a
    /// load holds. Each spill writes one SST file per state.
    pub fn with_spill_bytes(mut self, bytes: usize) -> Self {
        self.spill_bytes = bytes.max(1);
        self
    }

    /// Writes and ingests what is collected; the loaded state is then
    /// readable.
    pub fn finish(mut self) -> Result<BulkLoadStats> {
        self.spill()?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(BulkLoadStats {
            keys: self.keys,
            files: self.files,
        })
    }

    /// Sorts each state's writes into an SST file and ingests it.
    fn spill(&mut self) -> Result<()> {
        flowstate_api::runtime::check_blocking("writing a bulk load's SST files");
        if self.buffered == 0 {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(self.dir.display(), e))?;
        for (id, run) in self.runs.iter_mut().enumerate() {
            if run.entries.is_empty() {
                continue;
            }
            run.sort();
            let path = self.dir.join(format!("{}.sst", self.files));
            let mut keys = 0;
            self.backend
                .ingest_sorted(id as StateId, &path, "a bulk load", |writer, path| {
                    keys = run
                        .write(writer)
                        .map_err(db_err(format_args!("a bulk load: writing {}", path.display())))?;
                    Ok(keys)
                })?;
            self.keys += keys;
            self.files += 1;
            run.clear();
        }
        self.buffered = 0;
        Ok(())
    }

    /// Collects a write of state `id` at the current key and namespace,
    /// with `user_key` (map entries) after them.
    fn collect(&mut self, id: StateId, want: StorageKind, user_key: &[u8], value: &[u8], merge: bool) -> Result<()> {
        let meta = self.backend.core.state(id)?.meta();
        if meta.kind.storage() != want {
            return Err(meta.wrong_kind(want));
        }
        self.backend.build(id, user_key)?;
        let index = id as usize;
        if self.runs.len() <= index {
            self.runs.resize_with(index + 1, SortedRun::default);
        }
        let run = &mut self.runs[index];
        let before = run.size();
        run.push(&self.backend.composite, value, merge);
        self.buffered += run.size() - before;
        if self.buffered >= self.spill_bytes {
            self.spill()?;
        }
        Ok(())
    }

    fn refused<T>(&self, id: StateId, what: &str) -> Result<T> {
        let name = self
            .backend
            .core
            .state(id)
            .map(|s| s.meta().name.clone())
            .unwrap_or_default();
        Err(Error::invalid(format!(
            "state {name:?}: {what} is not possible during a bulk load; finish it first"
        )))
    }
}

impl<K> KeyedStateBackend for BulkLoad<'_, K> {
    type Key = K;
    type StateStorage = RocksDbState;

    fn core(&self) -> &BackendCore<K, RocksDbState> {
        &self.backend.core
    }

    fn core_mut(&mut self) -> &mut BackendCore<K, RocksDbState> {
        &mut self.backend.core
    }

    fn capabilities(&self) -> BackendCapabilities {
        self.backend.capabilities()
    }

    fn create_state_storage(&mut self, meta: &StateMetaInfo) -> Result<RocksDbState> {
        self.backend.create_state_storage(meta)
    }

    fn state_registered(&mut self, state: StateId) -> Result<()> {
        self.backend.state_registered(state)
    }

    fn raw_value_get<R>(&mut self, state: StateId, _: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R> {
        self.refused(state, "a read")
    }

    fn raw_value_put(&mut self, state: StateId, value: &[u8]) -> Result<()> {
        self.collect(state, StorageKind::Value, &[], value, false)
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        self.refused(state, "a clear")
    }

    fn raw_list_get(&mut self, state: StateId, _: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.refused(state, "a read")
    }

    fn raw_list_append_all<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let mut operand = Vec::new();
        for e in elements {
            pack(&mut operand, e.as_ref());
        }
        self.collect(state, StorageKind::List, &[], &operand, true)
    }

    fn raw_list_replace<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        if elements.is_empty() {
            return self.refused(state, "a clear");
        }
        let mut value = Vec::new();
        for e in elements {
            pack(&mut value, e.as_ref());
        }
        self.collect(state, StorageKind::List, &[], &value, false)
    }

    fn raw_map_get<R>(&mut self, state: StateId, _: &[u8], _: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R> {
        self.refused(state, "a read")
    }

    fn raw_map_put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        self.collect(state, StorageKind::Map, user_key, value, false)
    }

    fn raw_map_remove(&mut self, state: StateId, _: &[u8]) -> Result<()> {
        self.refused(state, "a removal")
    }

    fn raw_map_for_each(&mut self, state: StateId, _: &mut MapVisitor<'_>) -> Result<()> {
        self.refused(state, "a read")
    }

    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        self.refused(state, "a read")
    }

    fn raw_for_each_key(&mut self, state: StateId, _: Option<&[u8]>, _: &mut KeyVisitor<'_>) -> Result<()> {
        self.refused(state, "a read")
    }

    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        self.refused(state, "a read")
    }

    fn raw_timer_register(&mut self, state: StateId, _: i64, _: &[u8]) -> Result<()> {
        self.refused(state, "a timer")
    }

    fn raw_timer_delete(&mut self, state: StateId, _: i64, _: &[u8]) -> Result<()> {
        self.refused(state, "a timer")
    }

    fn raw_timer_peek(&mut self, state: StateId) -> Result<Option<i64>> {
        self.refused(state, "a timer")
    }

    fn raw_timer_poll(&mut self, state: StateId, _: i64) -> Result<Option<flowstate_api::backend::RawTimer>> {
        self.refused(state, "a timer")
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        _: Arc<CheckpointLocation>,
        _: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        Err(Error::invalid(format!(
            "checkpoint {checkpoint_id}: a snapshot is not possible during a bulk load; finish it first"
        )))
    }
}
