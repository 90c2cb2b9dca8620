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
    Value(Vec<Map<Inline>>),
    List(Vec<Map<ListValue>>),
    Map(Vec<Map<UserMap>>),
    Timers(TimerQueues),
}

impl Table {
    pub(crate) fn new(kind: StorageKind, key_groups: usize) -> Self {
        match kind {
            StorageKind::Value => Table::Value(vec![Map::default(); key_groups]),
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
