//! The heap backend's state tables: one persistent hash map per key group,
//! keyed by the composite `varint(len(key)) | key | namespace`.
//!
//! The maps are `imbl` hash array mapped tries: cloning one is O(1) and a
//! write after a clone copies only the nodes on its path, so a snapshot
//! freezes the whole table by cloning one root per key group.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flowstate_api::backend::StorageKind;
use flowstate_api::format::canonical::{KeyGroupSource, KeyGroupWriter};
use flowstate_api::format::codec::{encode_timestamp, put_bytes, put_varint, Reader};
use flowstate_api::ttl::{is_expired, split_ttl_value};
use flowstate_api::{Error, ErrorKind, Result};

/// A composite key, stored inline in the map node when it is short (so
/// comparing keys touches no other memory).
pub(crate) type CompositeKey = smallvec::SmallVec<[u8; 24]>;
/// The map of one key group: a flat hash table (one probe, no pointer
/// chasing) shared with the snapshots taken since its last write. The first
/// write after a snapshot copies the key group's table (its entries are
/// inline byte strings or reference-counted, so the copy is one pass of
/// memory copies); a snapshot itself only clones one pointer per key group.
pub(crate) struct Map<V>(Arc<std::collections::HashMap<CompositeKey, V, foldhash::fast::RandomState>>);

impl<V> Default for Map<V> {
    fn default() -> Self {
        Map(Arc::default())
    }
}

impl<V> Clone for Map<V> {
    fn clone(&self) -> Self {
        Map(Arc::clone(&self.0))
    }
}

impl<V: Clone> Map<V> {
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        self.0.get(key)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        // Shared with a snapshot: copy only if the key is there to write.
        if Arc::get_mut(&mut self.0).is_none() && !self.0.contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.0).get_mut(key)
    }

    #[inline]
    pub(crate) fn insert(&mut self, key: CompositeKey, value: V) -> Option<V> {
        Arc::make_mut(&mut self.0).insert(key, value)
    }

    #[inline]
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        if Arc::get_mut(&mut self.0).is_none() && !self.0.contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.0).remove(key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&CompositeKey, &V)> {
        self.0.iter()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &CompositeKey> {
        self.0.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Makes room for `additional` more entries.
    pub(crate) fn reserve(&mut self, additional: usize) {
        Arc::make_mut(&mut self.0).reserve(additional);
    }
}

/// Values longer than this are kept in the key group's arena.
const INLINE_VALUE: usize = 24;
/// The largest arena chunk; a value longer than this has a chunk of its own.
const CHUNK_BYTES: usize = 1 << 20;
/// The smallest arena chunk: a chunk has twice the bytes of the one before
/// it, from this up to `CHUNK_BYTES`, so a key group written a little
/// after each snapshot (which starts a new chunk) does not hold a megabyte
/// for a few values.
const FIRST_CHUNK_BYTES: usize = 4 << 10;
/// The arena is compacted once it holds more dead bytes than this and than
/// live ones.
const MIN_GARBAGE: usize = 1 << 20;

/// Where a value's bytes are: inline, or a range of an arena chunk.
#[derive(Clone)]
enum Slot {
    Inline(Inline),
    Arena { chunk: u32, at: u32, len: u32 },
}

/// The values of one key group: a flat table of slots, and the arena that
/// holds every value longer than 24 bytes in a few large chunks, so that
/// millions of values are not millions of allocations. Shared with the
/// snapshots taken since its last write, like [`Map`]: the first write
/// after a snapshot copies the table of slots and shares the chunks (full
/// chunks never change; appends go to a chunk no snapshot holds).
#[derive(Clone, Default)]
pub(crate) struct Values(Arc<ValuesInner>);

#[derive(Clone, Default)]
struct ValuesInner {
    slots: std::collections::HashMap<CompositeKey, Slot, foldhash::fast::RandomState>,
    chunks: Vec<Arc<Vec<u8>>>,
    /// Bytes of the arena that live slots reference.
    live: usize,
    /// Bytes written to the arena.
    stored: usize,
}

impl ValuesInner {
    #[inline]
    fn bytes<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        match slot {
            Slot::Inline(v) => v,
            Slot::Arena { chunk, at, len } => {
                let (at, len) = (*at as usize, *len as usize);
                &self.chunks[*chunk as usize][at..at + len]
            }
        }
    }

    /// Stores `value`, in the last chunk if no snapshot holds it and it has
    /// room, else in a new chunk.
    fn store(&mut self, value: &[u8]) -> Slot {
        let n = value.len();
        // Values of 4 GiB or more do not fit a slot's range: their own allocation.
        if n <= INLINE_VALUE || u32::try_from(n).is_err() {
            return Slot::Inline(Inline::from_slice(value));
        }
        self.live += n;
        self.stored += n;
        let last = self.chunks.len().wrapping_sub(1);
        // A chunk never grows past its capacity, so its bytes never move.
        if let Some(chunk) = self
            .chunks
            .last_mut()
            .and_then(Arc::get_mut)
            .filter(|c| c.len() + n <= c.capacity())
        {
            let at = chunk.len();
            chunk.extend_from_slice(value);
            return Slot::Arena {
                chunk: last as u32,
                at: at as u32,
                len: n as u32,
            };
        }
        let grown = self.chunks.last().map_or(0, |c| c.len().saturating_mul(2));
        let mut chunk = Vec::with_capacity(grown.clamp(FIRST_CHUNK_BYTES, CHUNK_BYTES).max(n));
        chunk.extend_from_slice(value);
        self.chunks.push(Arc::new(chunk));
        Slot::Arena {
            chunk: (self.chunks.len() - 1) as u32,
            at: 0,
            len: n as u32,
        }
    }

    /// Forgets the arena bytes of `slot`.
    fn release(&mut self, slot: &Slot) {
        if let Slot::Arena { len, .. } = slot {
            self.live -= *len as usize;
        }
    }

    /// Rewrites the live values into fresh chunks once most of the arena is
    /// dead.
    fn compact_if_sparse(&mut self) {
        let dead = self.stored - self.live;
        if dead <= MIN_GARBAGE || dead <= self.live {
            return;
        }
        let old = std::mem::take(&mut self.chunks);
        let slots = std::mem::take(&mut self.slots);
        let live_bytes = self.live;
        self.live = 0;
        self.stored = 0;
        self.chunks.push(Arc::new(Vec::with_capacity(
            live_bytes.clamp(FIRST_CHUNK_BYTES, CHUNK_BYTES),
        )));
        let mut rebuilt = std::collections::HashMap::with_capacity_and_hasher(slots.len(), Default::default());
        for (key, slot) in slots {
            let slot = match slot {
                Slot::Arena { chunk, at, len } => {
                    let (at, len) = (at as usize, len as usize);
                    let bytes = old[chunk as usize][at..at + len].to_vec();
                    self.store(&bytes)
                }
                inline => inline,
            };
            rebuilt.insert(key, slot);
        }
        self.slots = rebuilt;
    }
}

impl Values {
    /// The value of `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let inner = &*self.0;
        inner.slots.get(key).map(|s| inner.bytes(s))
    }

    /// Sets the value of `key`.
    #[inline]
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        let inner = Arc::make_mut(&mut self.0);
        if let Some(slot) = inner.slots.get_mut(key) {
            if let (Slot::Inline(v), true) = (&mut *slot, value.len() <= INLINE_VALUE) {
                v.clear();
                v.extend_from_slice(value);
                return;
            }
            let old = std::mem::replace(slot, Slot::Inline(Inline::new()));
            inner.release(&old);
            let new = inner.store(value);
            if let Some(slot) = inner.slots.get_mut(key) {
                *slot = new;
            }
        } else {
            let new = inner.store(value);
            inner.slots.insert(CompositeKey::from_slice(key), new);
        }
        inner.compact_if_sparse();
    }

    /// Removes `key`; true if it was there.
    #[inline]
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        // Shared with a snapshot: copy only if the key is there to remove.
        if Arc::get_mut(&mut self.0).is_none() && !self.0.slots.contains_key(key) {
            return false;
        }
        let inner = Arc::make_mut(&mut self.0);
        match inner.slots.remove(key) {
            Some(slot) => {
                inner.release(&slot);
                inner.compact_if_sparse();
                true
            }
            None => false,
        }
    }

    /// Every key and value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&CompositeKey, &[u8])> {
        let inner = &*self.0;
        inner.slots.iter().map(move |(k, s)| (k, inner.bytes(s)))
    }

    /// Every key.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &CompositeKey> {
        self.0.slots.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.slots.len()
    }

    /// Makes room for `additional` more values.
    pub(crate) fn reserve(&mut self, additional: usize) {
        Arc::make_mut(&mut self.0).slots.reserve(additional);
    }
}

/// A list's elements packed into one buffer, each as `varint(len) | bytes`,
/// so reading a list touches one allocation; shared until written after a
/// snapshot.
pub(crate) type ListValue = Arc<Vec<u8>>;
/// A map state's entries under one key and namespace; shared until written
/// after a snapshot, when the first write copies it (as Flink's heap backend
/// copies a map value on its first write after a snapshot).
pub(crate) type UserMap = Arc<std::collections::BTreeMap<Inline, Inline>>;
/// Short byte strings (values, user keys) kept inline.
pub(crate) type Inline = smallvec::SmallVec<[u8; 24]>;

/// One timer: `(timestamp, key, namespace)`, ordered field by field (key
/// and namespace bytes lexicographically).
pub(crate) type TimerEntry = (i64, Inline, Inline);

/// The timers of one timer service: a persistent ordered set per key group
/// (cloned in O(1) by a snapshot) and the head-of-queues index, the first
/// timestamp of every non-empty key group, so the next timer of the whole
/// service is found in O(log key groups).
#[derive(Clone)]
pub(crate) struct TimerQueues {
    pub(crate) sets: Vec<imbl::OrdSet<TimerEntry>>,
    heads: std::collections::BTreeSet<(i64, usize)>,
    len: u64,
}

impl TimerQueues {
    fn new(key_groups: usize) -> Self {
        TimerQueues {
            sets: vec![imbl::OrdSet::new(); key_groups],
            heads: std::collections::BTreeSet::new(),
            len: 0,
        }
    }

    /// Changes key group `kg`'s set with `f`, keeping the index current.
    #[inline]
    fn change<R>(&mut self, kg: usize, f: impl FnOnce(&mut imbl::OrdSet<TimerEntry>) -> R) -> R {
        let before = self.sets[kg].get_min().map(|e| e.0);
        let r = f(&mut self.sets[kg]);
        let after = self.sets[kg].get_min().map(|e| e.0);
        if before != after {
            if let Some(ts) = before {
                self.heads.remove(&(ts, kg));
            }
            if let Some(ts) = after {
                self.heads.insert((ts, kg));
            }
        }
        r
    }

    /// Adds a timer; an existing one is left as it is.
    pub(crate) fn insert(&mut self, kg: usize, timestamp: i64, key: &[u8], namespace: &[u8]) {
        let entry = (timestamp, Inline::from_slice(key), Inline::from_slice(namespace));
        if !self.sets[kg].contains(&entry) {
            self.change(kg, |s| s.insert(entry));
            self.len += 1;
        }
    }

    /// Removes a timer, if present.
    pub(crate) fn remove(&mut self, kg: usize, timestamp: i64, key: &[u8], namespace: &[u8]) {
        let entry = (timestamp, Inline::from_slice(key), Inline::from_slice(namespace));
        if self.sets[kg].contains(&entry) {
            self.change(kg, |s| s.remove(&entry));
            self.len -= 1;
        }
    }

    /// The first timestamp of all key groups.
    pub(crate) fn peek(&self) -> Option<i64> {
        self.heads.first().map(|h| h.0)
    }

    /// Removes and returns the first timer if it is due at `time`, with its
    /// key-group index.
    pub(crate) fn poll(&mut self, time: i64) -> Option<(usize, TimerEntry)> {
        let &(ts, kg) = self.heads.first()?;
        if ts > time {
            return None;
        }
        let entry = self.change(kg, |s| s.remove_min())?;
        self.len -= 1;
        Some((kg, entry))
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// The maps of one state, one per key group of the backend's range.
#[derive(Clone)]
pub(crate) enum Table {
    Value(Vec<Values>),
    List(Vec<Map<ListValue>>),
    Map(Vec<Map<UserMap>>),
    Timers(TimerQueues),
}

impl Table {
    pub(crate) fn new(kind: StorageKind, key_groups: usize) -> Self {
        match kind {
            StorageKind::Value => Table::Value(vec![Values::default(); key_groups]),
            StorageKind::List => Table::List(vec![Map::default(); key_groups]),
            StorageKind::Map => Table::Map(vec![Map::default(); key_groups]),
            StorageKind::Timers => Table::Timers(TimerQueues::new(key_groups)),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Table::Value(m) => m.iter().map(|m| m.len() as u64).sum(),
            Table::List(m) => m.iter().map(|m| m.len() as u64).sum(),
            Table::Map(m) => m.iter().map(|m| m.len() as u64).sum(),
            Table::Timers(t) => t.len(),
        }
    }

    /// Makes room in key-group index `kg` for `records` more records (map
    /// records are entries of user maps, so they size nothing).
    pub(crate) fn reserve(&mut self, kg: usize, records: usize) {
        match self {
            Table::Value(m) => m[kg].reserve(records),
            Table::List(m) => m[kg].reserve(records),
            Table::Map(_) | Table::Timers(_) => {}
        }
    }

    pub(crate) fn keys_of(&self, kg: usize) -> Vec<CompositeKey> {
        match self {
            Table::Value(m) => m[kg].keys().cloned().collect(),
            Table::List(m) => m[kg].keys().cloned().collect(),
            Table::Map(m) => m[kg].keys().cloned().collect(),
            Table::Timers(_) => Vec::new(),
        }
    }

    pub(crate) fn for_each_composite(&self, mut f: impl FnMut(&CompositeKey) -> Result<()>) -> Result<()> {
        match self {
            Table::Value(maps) => maps.iter().flat_map(|m| m.keys()).try_for_each(&mut f),
            Table::List(maps) => maps.iter().flat_map(|m| m.keys()).try_for_each(&mut f),
            Table::Map(maps) => maps.iter().flat_map(|m| m.keys()).try_for_each(&mut f),
            Table::Timers(t) => {
                let mut composite = Vec::new();
                t.sets.iter().flat_map(|s| s.iter()).try_for_each(|(_, key, ns)| {
                    compose(&mut composite, key, ns);
                    f(&CompositeKey::from_slice(&composite))
                })
            }
        }
    }
}

/// Appends one element to a packed list.
#[inline]
pub(crate) fn pack(buf: &mut Vec<u8>, element: &[u8]) {
    put_bytes(buf, element);
}

/// Packs elements into a list buffer.
pub(crate) fn packed<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in elements {
        pack(&mut buf, e);
    }
    buf
}

/// The elements of a packed list.
#[derive(Clone)]
pub(crate) struct Elements<'a>(&'a [u8]);

/// Iterates a packed list.
#[inline]
pub(crate) fn elements(buf: &[u8]) -> Elements<'_> {
    Elements(buf)
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        // The buffer is only ever written by `pack`, so it always parses.
        let (&first, rest) = self.0.split_first()?;
        if first < 0x80 {
            // A length below 128: one byte, the common case.
            let n = usize::from(first);
            let (element, rest) = (rest.get(..n)?, rest.get(n..)?);
            self.0 = rest;
            return Some(element);
        }
        let mut r = Reader::new(self.0);
        let element = r.bytes("list element").ok()?;
        self.0 = &self.0[r.position()..];
        Some(element)
    }
}

/// Builds `varint(len(key)) | key | namespace`.
#[inline]
pub(crate) fn compose(out: &mut Vec<u8>, key: &[u8], namespace: &[u8]) {
    out.clear();
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(namespace);
}

/// Splits a composite key into key and namespace.
#[inline]
pub(crate) fn split_composite(composite: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut r = Reader::new(composite);
    let key = r.bytes("composite key")?;
    let ns = r.take(r.remaining(), "namespace")?;
    Ok((key, ns))
}

/// The keys changed in one state, per key group (composite keys; for
/// timers, the timestamp's 8 bytes followed by the composite key).
pub(crate) type ChangeSet = Vec<HashSet<CompositeKey, foldhash::fast::RandomState>>;

/// Change tracking of one state.
pub(crate) struct Changes {
    /// Changed since the last checkpoint's sync phase.
    pub(crate) current: ChangeSet,
    /// Sealed by the sync phases of checkpoints since the last confirmed
    /// one, with their sequence numbers.
    pub(crate) sealed: Vec<(u64, Arc<ChangeSet>)>,
}

impl Changes {
    pub(crate) fn new(key_groups: usize) -> Self {
        Changes {
            current: vec![HashSet::default(); key_groups],
            sealed: Vec::new(),
        }
    }
}

/// Marks `key` of key-group index `kg` changed, if changes are tracked.
#[inline]
pub(crate) fn mark(changes: &mut Option<Box<Changes>>, kg: usize, key: &[u8]) {
    if let Some(c) = changes {
        let set = &mut c.current[kg];
        if !set.contains(key) {
            set.insert(CompositeKey::from_slice(key));
        }
    }
}

/// Marks a timer changed, if changes are tracked.
#[inline]
pub(crate) fn mark_timer(changes: &mut Option<Box<Changes>>, kg: usize, timestamp: i64, key: &[u8], namespace: &[u8]) {
    if changes.is_some() {
        let mut k = Vec::with_capacity(8 + 2 + key.len() + namespace.len());
        k.extend_from_slice(&encode_timestamp(timestamp));
        let mut composite = Vec::new();
        compose(&mut composite, key, namespace);
        k.extend_from_slice(&composite);
        mark(changes, kg, &k);
    }
}

/// The heap backend's storage of one registered or restored state: its
/// tables, one per key group (its metadata, TTL config and namespace are in
/// the backend's core). Opaque.
pub struct HeapState {
    pub(crate) table: Table,
    pub(crate) cleanup: CleanupCursor,
    /// The keys changed since the last confirmed checkpoint, when
    /// checkpoints are incremental.
    pub(crate) changes: Option<Box<Changes>>,
}

impl HeapState {
    pub(crate) fn new(kind: StorageKind, key_groups: usize, track_changes: bool) -> Self {
        HeapState {
            table: Table::new(kind, key_groups),
            cleanup: CleanupCursor::default(),
            changes: track_changes.then(|| Box::new(Changes::new(key_groups))),
        }
    }

    /// Removes up to `budget` entries expired under `ttl` (milliseconds),
    /// walking the table a key group at a time (TTL incremental cleanup).
    pub(crate) fn incremental_cleanup(&mut self, ttl: u64, now: u64, budget: u32) {
        let key_groups = match &self.table {
            Table::Value(m) => m.len(),
            Table::List(m) => m.len(),
            Table::Map(m) => m.len(),
            Table::Timers(_) => 0,
        };
        if key_groups == 0 {
            return;
        }
        for _ in 0..budget {
            match self.cleanup.pending.pop() {
                Some(ck) => {
                    if clean_entry(&mut self.table, self.cleanup.kg, &ck, ttl, now) {
                        mark(&mut self.changes, self.cleanup.kg, &ck);
                    }
                }
                None => {
                    self.cleanup.kg = (self.cleanup.kg + 1) % key_groups;
                    self.cleanup.pending = self.table.keys_of(self.cleanup.kg);
                }
            }
        }
    }
}

/// Where incremental cleanup is in a state's table.
#[derive(Default)]
pub(crate) struct CleanupCursor {
    kg: usize,
    pending: Vec<CompositeKey>,
}

#[inline]
fn expired(value: &[u8], ttl: u64, now: u64) -> bool {
    matches!(split_ttl_value(value), Ok((ts, _)) if is_expired(ts, ttl, now))
}

/// Removes what expired of entry `ck`; true if anything was.
fn clean_entry(table: &mut Table, kg: usize, ck: &[u8], ttl: u64, now: u64) -> bool {
    match table {
        Table::Value(maps) => {
            if maps[kg].get(ck).is_some_and(|v| expired(v, ttl, now)) {
                maps[kg].remove(ck);
                return true;
            }
            false
        }
        Table::List(maps) => {
            let Some(list) = maps[kg].get(ck) else { return false };
            if !elements(list).any(|e| expired(e, ttl, now)) {
                return false;
            }
            let kept = packed(elements(list).filter(|e| !expired(e, ttl, now)));
            if kept.is_empty() {
                maps[kg].remove(ck);
            } else {
                maps[kg].insert(CompositeKey::from_slice(ck), Arc::new(kept));
            }
            true
        }
        Table::Map(maps) => {
            let Some(user_map) = maps[kg].get(ck) else { return false };
            if !user_map.values().any(|v| expired(v, ttl, now)) {
                return false;
            }
            let mut kept = (**user_map).clone();
            kept.retain(|_, v| !expired(v, ttl, now));
            if kept.is_empty() {
                maps[kg].remove(ck);
            } else {
                maps[kg].insert(CompositeKey::from_slice(ck), Arc::new(kept));
            }
            true
        }
        Table::Timers(_) => false,
    }
}

/// The tables as they were at a snapshot's sync phase.
pub(crate) struct FrozenTables {
    pub(crate) tables: Vec<Table>,
    pub(crate) first_key_group: u32,
    pub(crate) closed: Arc<AtomicBool>,
}

impl KeyGroupSource for FrozenTables {
    fn write_key_group(&mut self, kg: u32, out: &mut KeyGroupWriter) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the heap backend was closed during the snapshot",
            ));
        }
        let i = (kg - self.first_key_group) as usize;
        for (state, table) in self.tables.iter().enumerate() {
            let state = state as u32;
            match table {
                Table::Value(maps) => {
                    for (ck, v) in maps[i].iter() {
                        let (key, ns) = split_composite(ck)?;
                        out.value(state, key, ns, v);
                    }
                }
                Table::List(maps) => {
                    for (ck, list) in maps[i].iter() {
                        let (key, ns) = split_composite(ck)?;
                        out.list(state, key, ns, elements(list));
                    }
                }
                Table::Map(maps) => {
                    for (ck, user_map) in maps[i].iter() {
                        let (key, ns) = split_composite(ck)?;
                        for (uk, v) in user_map.iter() {
                            out.map_entry(state, key, ns, uk, v);
                        }
                    }
                }
                Table::Timers(t) => {
                    for (ts, key, ns) in t.sets[i].iter() {
                        out.timer(state, key, ns, *ts);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(k: u32, round: u32, len: usize) -> Vec<u8> {
        let mut v = vec![(k ^ round) as u8; len];
        v[..4].copy_from_slice(&k.to_le_bytes());
        v
    }

    /// Short values inline, long ones in the arena: written, overwritten
    /// (either way), removed; a clone taken before writes (a snapshot) keeps
    /// what it saw; the arena is compacted once mostly dead and every value
    /// survives it, in the table and in the clone.
    #[test]
    fn values_survive_overwrites_snapshots_and_compaction() {
        let mut v = Values::default();
        let mut want: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let key = |k: u32| k.to_le_bytes();
        for k in 0..2_000u32 {
            let len = if k % 3 == 0 { 8 } else { 100 };
            v.put(&key(k), &value(k, 0, len));
            want.insert(k, value(k, 0, len));
        }
        let frozen = v.clone();
        let frozen_want = want.clone();
        for round in 1..60u32 {
            for k in (0..2_000u32).filter(|k| k % 7 != round % 7) {
                // Sizes move between inline and arena across rounds.
                let len = if (k + round) % 4 == 0 {
                    20
                } else {
                    100 + (round as usize % 5)
                };
                v.put(&key(k), &value(k, round, len));
                want.insert(k, value(k, round, len));
            }
            if round % 10 == 0 {
                for k in (0..2_000u32).filter(|k| k % 11 == round % 11) {
                    assert!(v.remove(&key(k)));
                    want.remove(&k);
                }
            }
        }
        let inner = &*v.0;
        assert!(
            inner.stored - inner.live <= MIN_GARBAGE.max(inner.live),
            "the arena was compacted: {} stored, {} live",
            inner.stored,
            inner.live
        );
        assert_eq!(
            inner.live,
            inner
                .slots
                .values()
                .map(|s| match s {
                    Slot::Arena { len, .. } => *len as usize,
                    Slot::Inline(_) => 0,
                })
                .sum::<usize>()
        );
        assert_eq!(v.len(), want.len());
        for (k, bytes) in &want {
            assert_eq!(v.get(&key(*k)), Some(&bytes[..]), "key {k}");
        }
        assert_eq!(v.iter().count(), want.len());
        assert!(!v.remove(&key(1_000_000)));
        assert_eq!(frozen.len(), frozen_want.len());
        for (k, bytes) in &frozen_want {
            assert_eq!(frozen.get(&key(*k)), Some(&bytes[..]), "snapshot, key {k}");
        }
    }
}
