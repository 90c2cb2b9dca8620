//! The operator state of one subtask: list state (split or union on
//! restore) and broadcast state, registered by descriptor as in Flink,
//! snapshotted in two phases through checkpoint storage and restored with
//! Flink's assignment ([`repartition`]).
//!
//! Elements are kept serialized, copy-on-write: the synchronous phase of a
//! snapshot takes a reference to each state's data (O(number of states)),
//! and the first write to a state afterwards copies it once.
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let mut store = OperatorStateStore::new(0, 1)?;
//! let offsets = store.list_state(&ListStateDescriptor::<u64>::new("offsets"))?;
//! offsets.add(&mut store, 42)?;
//!
//! let storage = MemoryCheckpointStorage::new("job");
//! let location = storage.init_checkpoint(1).await?;
//! let handle = store.snapshot(1, Arc::clone(&location))?.await?;
//!
//! // Restored at parallelism 2 from the one old subtask's handle.
//! let restored = OperatorStateStore::restore(1, 2, &[handle], 1, &InlineReader).await?;
//! assert_eq!(restored.mode("offsets"), Some(DistributionMode::Split));
//! # Ok(()) }
//! ```

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::checkpoint::{CheckpointLocation, CheckpointOutputStream, StateReader, StateScope, StreamStateHandle};
use crate::descriptor::{validate_state_name, ListStateDescriptor, MapStateDescriptor, StateDescriptor};
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{crc32c, crc32c_append, put_bytes, Reader};
use crate::keygroup::MAX_PARALLELISM_UPPER_BOUND;
use crate::operator::handle::{OperatorStateBlock, OperatorStateHandle};
use crate::operator::repartition::{repartition, DistributionMode, SubtaskState, SubtaskStates};
use crate::serializer::{SerializerId, SharedSerializer};

/// The most split-state entries a restore that changes the parallelism
/// assigns (2^26): each is referenced on its own while being assigned.
pub const MAX_RESTORE_SPLIT_ENTRIES: u64 = 1 << 26;

/// Bytes a snapshot buffers before handing them to its stream.
const WRITE_CHUNK: usize = 256 << 10;

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// What a state is, shared by the store and the snapshots it takes.
#[derive(Debug)]
struct Meta {
    name: Arc<str>,
    mode: DistributionMode,
    value: SerializerId,
    key: Option<SerializerId>,
}

/// A state's serialized entries, copy-on-write.
#[derive(Debug, Clone)]
enum Data {
    /// List elements, in order.
    List(Arc<Vec<Bytes>>),
    /// Broadcast map entries, by key bytes.
    Map(Arc<BTreeMap<Vec<u8>, Vec<u8>>>),
}

impl Data {
    fn empty(mode: DistributionMode) -> Self {
        match mode {
            DistributionMode::Split | DistributionMode::Union => Data::List(Arc::default()),
            DistributionMode::Broadcast => Data::Map(Arc::default()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Data::List(l) => l.len(),
            Data::Map(m) => m.len(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    meta: Arc<Meta>,
    /// False for a restored state not registered since.
    registered: bool,
    data: Data,
}

/// Where a typed handle's state is: its store and index there.
#[derive(Debug)]
struct StateRef {
    store: u64,
    index: usize,
    name: Arc<str>,
}

/// The operator (non-keyed) state of one operator subtask.
///
/// States are registered by descriptor and become typed handles
/// ([`OperatorListState`], [`BroadcastState`]) whose operations take the
/// store. Operator state has no namespace and no TTL. A state keeps its
/// mode and serializers for its whole life, across restores: registering a
/// name again with another mode or serializer is refused as
/// [`Incompatible`](ErrorKind::Incompatible).
pub struct OperatorStateStore {
    id: u64,
    subtask_index: u32,
    parallelism: u32,
    slots: Vec<Slot>,
    by_name: BTreeMap<Arc<str>, usize>,
}

impl fmt::Debug for OperatorStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorStateStore")
            .field("subtask_index", &self.subtask_index)
            .field("parallelism", &self.parallelism)
            .field("states", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn check_subtask(subtask_index: u32, parallelism: u32) -> Result<()> {
    if parallelism == 0 || parallelism > MAX_PARALLELISM_UPPER_BOUND {
        return Err(Error::invalid(format!(
            "parallelism {parallelism} is outside 1..={MAX_PARALLELISM_UPPER_BOUND}"
        )));
    }
    if subtask_index >= parallelism {
        return Err(Error::invalid(format!(
            "subtask index {subtask_index} is not below the parallelism {parallelism}"
        )));
    }
    Ok(())
}

impl OperatorStateStore {
    /// The empty operator state of subtask `subtask_index` of `parallelism`.
    pub fn new(subtask_index: u32, parallelism: u32) -> Result<Self> {
        check_subtask(subtask_index, parallelism)?;
        Ok(OperatorStateStore {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            subtask_index,
            parallelism,
            slots: Vec::new(),
            by_name: BTreeMap::new(),
        })
    }

    /// The subtask's index.
    pub fn subtask_index(&self) -> u32 {
        self.subtask_index
    }

    /// The operator's parallelism.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    /// The names of every state, registered or restored, in name order.
    pub fn state_names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|n| &**n)
    }

    /// The mode of state `name`, registered or restored.
    pub fn mode(&self, name: &str) -> Option<DistributionMode> {
        self.by_name.get(name).map(|&i| self.slots[i].meta.mode)
    }

    /// Registers list state whose elements are split over the subtasks on
    /// restore (Flink's `getListState`).
    pub fn list_state<T>(&mut self, descriptor: &ListStateDescriptor<T>) -> Result<OperatorListState<T>> {
        self.register_list(descriptor, DistributionMode::Split)
    }

    /// Registers list state of which every subtask gets every element on
    /// restore (Flink's `getUnionListState`).
    pub fn union_list_state<T>(&mut self, descriptor: &ListStateDescriptor<T>) -> Result<OperatorListState<T>> {
        self.register_list(descriptor, DistributionMode::Union)
    }

    /// Registers broadcast state: a map every subtask holds a copy of
    /// (Flink's `getBroadcastState`).
    pub fn broadcast_state<K, V>(&mut self, descriptor: &MapStateDescriptor<K, V>) -> Result<BroadcastState<K, V>> {
        let (key, value) = descriptor.map_serializers();
        let (key, value) = (Arc::clone(key), Arc::clone(value));
        let index = self.register(
            descriptor.name(),
            StateDescriptor::ttl(descriptor).is_some(),
            DistributionMode::Broadcast,
            value.id(),
            Some(key.id()),
        )?;
        Ok(BroadcastState(Arc::new(BroadcastInner {
            at: self.state_ref(index),
            key,
            value,
        })))
    }

    fn register_list<T>(
        &mut self,
        descriptor: &ListStateDescriptor<T>,
        mode: DistributionMode,
    ) -> Result<OperatorListState<T>> {
        let element = Arc::clone(descriptor.element_serializer());
        let index = self.register(
            descriptor.name(),
            StateDescriptor::ttl(descriptor).is_some(),
            mode,
            element.id(),
            None,
        )?;
        Ok(OperatorListState(Arc::new(ListInner {
            at: self.state_ref(index),
            mode,
            element,
        })))
    }

    fn state_ref(&self, index: usize) -> StateRef {
        StateRef {
            store: self.id,
            index,
            name: Arc::clone(&self.slots[index].meta.name),
        }
    }

    fn register(
        &mut self,
        name: &str,
        ttl: bool,
        mode: DistributionMode,
        value: SerializerId,
        key: Option<SerializerId>,
    ) -> Result<usize> {
        validate_state_name(name)?;
        if ttl {
            return Err(Error::invalid(format!(
                "operator state {name:?} has a TTL: operator state cannot expire (as in Flink); remove the TTL from \
                 its descriptor"
            )));
        }
        let Some(&index) = self.by_name.get(name) else {
            let meta = Arc::new(Meta {
                name: Arc::from(name),
                mode,
                value,
                key,
            });
            let index = self.slots.len();
            self.by_name.insert(Arc::clone(&meta.name), index);
            self.slots.push(Slot {
                data: Data::empty(mode),
                meta,
                registered: true,
            });
            return Ok(index);
        };
        let slot = &mut self.slots[index];
        let how = if slot.registered { "registered" } else { "restored" };
        let m = &slot.meta;
        if m.mode != mode {
            return Err(Error::incompatible(format!(
                "operator state {name:?} was {how} as {} state and cannot be registered as {} state",
                m.mode.name(),
                mode.name()
            )));
        }
        let what = if mode == DistributionMode::Broadcast {
            "value"
        } else {
            "element"
        };
        if m.value != value {
            return Err(Error::incompatible(format!(
                "operator state {name:?}: {what} serializer {value} does not match the {how} {}",
                m.value
            )));
        }
        if m.key != key {
            let show = |k: &Option<SerializerId>| k.as_ref().map_or_else(|| "none".to_string(), |k| k.to_string());
            return Err(Error::incompatible(format!(
                "operator state {name:?}: key serializer {} does not match the {how} {}",
                show(&key),
                show(&m.key)
            )));
        }
        slot.registered = true;
        Ok(index)
    }

    fn slot(&self, at: &StateRef) -> Result<&Slot> {
        if at.store != self.id {
            return Err(foreign(&at.name));
        }
        self.slots
            .get(at.index)
            .ok_or_else(|| Error::internal(format!("operator state {:?} has no slot", at.name)))
    }

    fn data_mut(&mut self, at: &StateRef) -> Result<&mut Data> {
        if at.store != self.id {
            return Err(foreign(&at.name));
        }
        self.slots
            .get_mut(at.index)
            .map(|s| &mut s.data)
            .ok_or_else(|| Error::internal(format!("operator state {:?} has no slot", at.name)))
    }

    fn list(&self, at: &StateRef) -> Result<&Arc<Vec<Bytes>>> {
        match &self.slot(at)?.data {
            Data::List(l) => Ok(l),
            Data::Map(_) => Err(wrong_data(&at.name)),
        }
    }

    fn list_mut(&mut self, at: &StateRef) -> Result<&mut Arc<Vec<Bytes>>> {
        match self.data_mut(at)? {
            Data::List(l) => Ok(l),
            Data::Map(_) => Err(wrong_data(&at.name)),
        }
    }

    fn map(&self, at: &StateRef) -> Result<&Arc<BTreeMap<Vec<u8>, Vec<u8>>>> {
        match &self.slot(at)?.data {
            Data::Map(m) => Ok(m),
            Data::List(_) => Err(wrong_data(&at.name)),
        }
    }

    fn map_mut(&mut self, at: &StateRef) -> Result<&mut Arc<BTreeMap<Vec<u8>, Vec<u8>>>> {
        match self.data_mut(at)? {
            Data::Map(m) => Ok(m),
            Data::List(_) => Err(wrong_data(&at.name)),
        }
    }

    /// The synchronous phase of a snapshot for checkpoint `checkpoint_id`,
    /// written to `location`: takes a reference to each state's entries
    /// (O(number of states), nothing is copied) and returns the
    /// asynchronous phase, which writes them. Writes to the store after
    /// this call are not in the snapshot.
    pub fn snapshot(
        &self,
        checkpoint_id: u64,
        location: Arc<dyn CheckpointLocation>,
    ) -> Result<PendingOperatorSnapshot> {
        let started = Instant::now();
        if location.checkpoint_id() != checkpoint_id {
            return Err(Error::invalid(format!(
                "operator state snapshot of checkpoint {checkpoint_id} given the location of checkpoint {} ({})",
                location.checkpoint_id(),
                location.pointer()
            )));
        }
        let views = self
            .by_name
            .values()
            .map(|&i| View {
                meta: Arc::clone(&self.slots[i].meta),
                data: self.slots[i].data.clone(),
            })
            .collect();
        Ok(PendingOperatorSnapshot {
            checkpoint_id,
            subtask_index: self.subtask_index,
            views,
            location,
            sync_duration: started.elapsed(),
        })
    }

    /// Restores the operator state of subtask `subtask_index` of
    /// `parallelism` from the handles `old` of an operator that ran at
    /// `old_parallelism` (at most one handle per old subtask; subtasks
    /// without one had no operator state).
    ///
    /// Entries are assigned exactly as Flink assigns them ([`repartition`]):
    /// at unchanged parallelism each subtask gets its own split and
    /// broadcast state back; union state always gives every subtask every
    /// entry. Only the blocks this subtask is given are read, and each is
    /// checked against its checksum and entry count. States are typed when
    /// registered again, which checks their mode and serializers.
    ///
    /// Changing the parallelism references each split-state entry on its
    /// own while assigning; more than [`MAX_RESTORE_SPLIT_ENTRIES`] are
    /// refused (`LimitExceeded`).
    pub async fn restore(
        subtask_index: u32,
        parallelism: u32,
        old: &[OperatorStateHandle],
        old_parallelism: u32,
        reader: &dyn StateReader,
    ) -> Result<Self> {
        let mut store = Self::new(subtask_index, parallelism)?;
        if old_parallelism == 0 || old_parallelism > MAX_PARALLELISM_UPPER_BOUND {
            return Err(Error::invalid(format!(
                "old parallelism {old_parallelism} is outside 1..={MAX_PARALLELISM_UPPER_BOUND}"
            )));
        }
        let metas = check_restore(old, old_parallelism)?;
        let input = repartition_input(old, old_parallelism, old_parallelism != parallelism)?;
        let mine = repartition(&input, parallelism)
            .map_err(|e| Error::corrupted(e.message().to_string()))?
            .into_iter()
            .nth(subtask_index as usize)
            .ok_or_else(|| Error::internal("no assignment for this subtask"))?;
        drop(input);
        let mine: Vec<(String, DistributionMode, Vec<Run>)> = mine
            .into_iter()
            .map(|(name, s)| (name, s.mode, coalesce(s.entries)))
            .collect();
        let decoded = read_blocks(old, &mine, reader).await?;
        for (name, mode, runs) in mine {
            let Some(&(hi, bi)) = metas.get(name.as_str()) else {
                return Err(Error::internal(format!(
                    "operator state {name:?} was assigned but not found"
                )));
            };
            let first = &old[hi].states[bi];
            let data = assemble(&name, mode, &runs, old, &decoded)?;
            let meta = Arc::new(Meta {
                name: Arc::from(name.as_str()),
                mode,
                value: first.value_serializer.clone(),
                key: first.key_serializer.clone(),
            });
            store.by_name.insert(Arc::clone(&meta.name), store.slots.len());
            store.slots.push(Slot {
                meta,
                registered: false,
                data,
            });
        }
        Ok(store)
    }
}

fn foreign(name: &str) -> Error {
    Error::invalid(format!(
        "operator state {name:?} was registered with another operator state store"
    ))
}

fn wrong_data(name: &str) -> Error {
    Error::internal(format!(
        "operator state {name:?} holds data of another kind than its handle"
    ))
}

// ---------------------------------------------------------------- typed handles

struct ListInner<T> {
    at: StateRef,
    mode: DistributionMode,
    element: SharedSerializer<T>,
}

/// A registered operator list state (split or union): a cheap, clonable
/// handle whose operations take the store.
pub struct OperatorListState<T>(Arc<ListInner<T>>);

impl<T> Clone for OperatorListState<T> {
    fn clone(&self) -> Self {
        OperatorListState(Arc::clone(&self.0))
    }
}

impl<T> fmt::Debug for OperatorListState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorListState")
            .field("name", &self.0.at.name)
            .field("mode", &self.0.mode)
            .finish()
    }
}

impl<T> OperatorListState<T> {
    /// The state's name.
    pub fn name(&self) -> &str {
        &self.0.at.name
    }

    /// How its elements are distributed on restore: split or union.
    pub fn mode(&self) -> DistributionMode {
        self.0.mode
    }

    fn encode(&self, element: &T) -> Result<Bytes> {
        let mut buf = Vec::new();
        self.0
            .element
            .serialize(element, &mut buf)
            .map_err(|e| e.context(format!("operator state {:?}", self.name())))?;
        Ok(Bytes::from(buf))
    }

    fn encode_all<I>(&self, elements: I) -> Result<Vec<Bytes>>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        elements.into_iter().map(|e| self.encode(e.borrow())).collect()
    }

    /// Every element, in order.
    pub fn get(&self, store: &OperatorStateStore) -> Result<Vec<T>> {
        store
            .list(&self.0.at)?
            .iter()
            .map(|b| {
                self.0
                    .element
                    .deserialize(b)
                    .map_err(|e| e.context(format!("operator state {:?}", self.name())))
            })
            .collect()
    }

    /// Appends `element`.
    pub fn add(&self, store: &mut OperatorStateStore, element: impl Borrow<T>) -> Result<()> {
        let bytes = self.encode(element.borrow())?;
        Arc::make_mut(store.list_mut(&self.0.at)?).push(bytes);
        Ok(())
    }

    /// Appends every element of `elements`; none if one fails to serialize.
    pub fn add_all<I>(&self, store: &mut OperatorStateStore, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let encoded = self.encode_all(elements)?;
        let list = store.list_mut(&self.0.at)?;
        if !encoded.is_empty() {
            Arc::make_mut(list).extend(encoded);
        }
        Ok(())
    }

    /// Replaces the elements with `elements`; nothing changes if one fails
    /// to serialize.
    pub fn update<I>(&self, store: &mut OperatorStateStore, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        let encoded = self.encode_all(elements)?;
        *store.list_mut(&self.0.at)? = Arc::new(encoded);
        Ok(())
    }

    /// Removes every element.
    pub fn clear(&self, store: &mut OperatorStateStore) -> Result<()> {
        *store.list_mut(&self.0.at)? = Arc::default();
        Ok(())
    }

    /// The number of elements.
    pub fn len(&self, store: &OperatorStateStore) -> Result<usize> {
        Ok(store.list(&self.0.at)?.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self, store: &OperatorStateStore) -> Result<bool> {
        Ok(self.len(store)? == 0)
    }
}

struct BroadcastInner<K, V> {
    at: StateRef,
    key: SharedSerializer<K>,
    value: SharedSerializer<V>,
}

/// A registered broadcast state: a map every subtask holds a copy of. A
/// cheap, clonable handle whose operations take the store; entries are
/// ordered by their serialized keys.
pub struct BroadcastState<K, V>(Arc<BroadcastInner<K, V>>);

impl<K, V> Clone for BroadcastState<K, V> {
    fn clone(&self) -> Self {
        BroadcastState(Arc::clone(&self.0))
    }
}

impl<K, V> fmt::Debug for BroadcastState<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastState").field("name", &self.0.at.name).finish()
    }
}

impl<K, V> BroadcastState<K, V> {
    /// The state's name.
    pub fn name(&self) -> &str {
        &self.0.at.name
    }

    fn context(&self, e: Error) -> Error {
        e.context(format!("broadcast state {:?}", self.name()))
    }

    fn encode_key(&self, key: &K) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.0.key.serialize(key, &mut buf).map_err(|e| self.context(e))?;
        Ok(buf)
    }

    fn encode_value(&self, value: &V) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.0.value.serialize(value, &mut buf).map_err(|e| self.context(e))?;
        Ok(buf)
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<(K, V)> {
        let k = self.0.key.deserialize(key).map_err(|e| self.context(e))?;
        let v = self.0.value.deserialize(value).map_err(|e| self.context(e))?;
        Ok((k, v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, store: &OperatorStateStore, key: &K) -> Result<Option<V>> {
        let k = self.encode_key(key)?;
        match store.map(&self.0.at)?.get(&k) {
            Some(v) => Ok(Some(self.0.value.deserialize(v).map_err(|e| self.context(e))?)),
            None => Ok(None),
        }
    }

    /// True if `key` is present.
    pub fn contains(&self, store: &OperatorStateStore, key: &K) -> Result<bool> {
        let k = self.encode_key(key)?;
        Ok(store.map(&self.0.at)?.contains_key(&k))
    }

    /// Sets the value of `key`.
    pub fn put(&self, store: &mut OperatorStateStore, key: impl Borrow<K>, value: impl Borrow<V>) -> Result<()> {
        let k = self.encode_key(key.borrow())?;
        let v = self.encode_value(value.borrow())?;
        Arc::make_mut(store.map_mut(&self.0.at)?).insert(k, v);
        Ok(())
    }

    /// Sets every entry of `entries`; none if one fails to serialize.
    pub fn put_all<I, K2, V2>(&self, store: &mut OperatorStateStore, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K2, V2)>,
        K2: Borrow<K>,
        V2: Borrow<V>,
    {
        let encoded = entries
            .into_iter()
            .map(|(k, v)| Ok((self.encode_key(k.borrow())?, self.encode_value(v.borrow())?)))
            .collect::<Result<Vec<_>>>()?;
        let map = store.map_mut(&self.0.at)?;
        if !encoded.is_empty() {
            Arc::make_mut(map).extend(encoded);
        }
        Ok(())
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, store: &mut OperatorStateStore, key: &K) -> Result<bool> {
        let k = self.encode_key(key)?;
        let map = store.map_mut(&self.0.at)?;
        if !map.contains_key(&k) {
            return Ok(false);
        }
        Ok(Arc::make_mut(map).remove(&k).is_some())
    }

    /// Every entry, in the order of the serialized keys.
    pub fn entries(&self, store: &OperatorStateStore) -> Result<Vec<(K, V)>> {
        self.iter(store)?.collect()
    }

    /// Iterates over the entries, in the order of the serialized keys,
    /// decoding each as it is reached.
    pub fn iter<'a>(&'a self, store: &'a OperatorStateStore) -> Result<impl Iterator<Item = Result<(K, V)>> + 'a> {
        Ok(store.map(&self.0.at)?.iter().map(|(k, v)| self.decode_entry(k, v)))
    }

    /// Removes every entry.
    pub fn clear(&self, store: &mut OperatorStateStore) -> Result<()> {
        *store.map_mut(&self.0.at)? = Arc::default();
        Ok(())
    }

    /// The number of entries.
    pub fn len(&self, store: &OperatorStateStore) -> Result<usize> {
        Ok(store.map(&self.0.at)?.len())
    }

    /// True when there are no entries.
    pub fn is_empty(&self, store: &OperatorStateStore) -> Result<bool> {
        Ok(self.len(store)? == 0)
    }
}

// ---------------------------------------------------------------- snapshot

/// One state as the synchronous phase saw it.
struct View {
    meta: Arc<Meta>,
    data: Data,
}

/// An operator state snapshot whose synchronous phase is done: each state's
/// entries as they were are referenced, and the store is free to change.
/// Await it (or call [`run`](PendingOperatorSnapshot::run)) on any runtime
/// to write them; dropping it writes nothing.
#[must_use = "a pending snapshot does nothing until awaited"]
pub struct PendingOperatorSnapshot {
    checkpoint_id: u64,
    subtask_index: u32,
    views: Vec<View>,
    location: Arc<dyn CheckpointLocation>,
    sync_duration: Duration,
}

impl fmt::Debug for PendingOperatorSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingOperatorSnapshot")
            .field("checkpoint_id", &self.checkpoint_id)
            .field("subtask_index", &self.subtask_index)
            .field("states", &self.views.len())
            .field("sync_duration", &self.sync_duration)
            .finish_non_exhaustive()
    }
}

impl PendingOperatorSnapshot {
    /// The checkpoint id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// How long the synchronous phase took.
    pub fn sync_duration(&self) -> Duration {
        self.sync_duration
    }

    /// The asynchronous phase: writes every state's block, in name order,
    /// into one exclusive stream of the location and returns the handle.
    /// A store without entries writes nothing (the stream is
    /// [`Empty`](StreamStateHandle::Empty)); one without states gives an
    /// [empty](OperatorStateHandle::is_empty) handle.
    pub async fn run(self) -> Result<OperatorStateHandle> {
        let (id, subtask) = (self.checkpoint_id, self.subtask_index);
        let handle = write_views(subtask, &self.views, &*self.location).await.map_err(|e| {
            e.context(format!(
                "operator state snapshot of subtask {subtask} for checkpoint {id}"
            ))
        })?;
        tracing::debug!(
            checkpoint_id = id,
            subtask,
            states = handle.states.len(),
            bytes = handle.state_size(),
            "operator state snapshot complete"
        );
        Ok(handle)
    }
}

impl IntoFuture for PendingOperatorSnapshot {
    type Output = Result<OperatorStateHandle>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<OperatorStateHandle>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

fn block_of(view: &View, offset: u64, length: u64, crc32c: u32) -> OperatorStateBlock {
    OperatorStateBlock {
        name: view.meta.name.to_string(),
        mode: view.meta.mode,
        value_serializer: view.meta.value.clone(),
        key_serializer: view.meta.key.clone(),
        offset,
        length,
        entries: view.data.len() as u64,
        crc32c,
    }
}

async fn write_views(
    subtask_index: u32,
    views: &[View],
    location: &dyn CheckpointLocation,
) -> Result<OperatorStateHandle> {
    let mut states = Vec::with_capacity(views.len());
    if views.iter().all(|v| v.data.len() == 0) {
        states.extend(views.iter().map(|v| block_of(v, 0, 0, crc32c(&[]))));
        return Ok(OperatorStateHandle {
            subtask_index,
            stream: StreamStateHandle::Empty,
            states,
        });
    }
    let stream = location.create_output_stream(StateScope::Exclusive).await?;
    let mut w = BlockWriter {
        stream,
        buf: Vec::with_capacity(WRITE_CHUNK),
        flushed: 0,
        crc: 0,
        crc_from: 0,
    };
    for view in views {
        match w.block(view).await {
            Ok(b) => states.push(b),
            Err(e) => {
                w.stream.abort().await;
                return Err(e.context(format!("operator state {:?}", view.meta.name)));
            }
        }
    }
    let stream = w.close().await?;
    Ok(OperatorStateHandle {
        subtask_index,
        stream,
        states,
    })
}

/// Writes blocks into a stream through a buffer, computing each block's
/// checksum on the way.
struct BlockWriter {
    stream: Box<dyn CheckpointOutputStream>,
    buf: Vec<u8>,
    /// Bytes handed to the stream.
    flushed: u64,
    /// Checksum of the current block up to `buf[crc_from..]`.
    crc: u32,
    crc_from: usize,
}

impl BlockWriter {
    fn position(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    async fn flush(&mut self) -> Result<()> {
        self.crc = crc32c_append(self.crc, &self.buf[self.crc_from..]);
        self.crc_from = 0;
        let data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK)));
        self.flushed += data.len() as u64;
        self.stream.write_bytes(data).await
    }

    async fn entry_done(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn block(&mut self, view: &View) -> Result<OperatorStateBlock> {
        let offset = self.position();
        self.crc = 0;
        self.crc_from = self.buf.len();
        match &view.data {
            Data::List(list) => {
                for e in list.iter() {
                    put_bytes(&mut self.buf, e);
                    self.entry_done().await?;
                }
            }
            Data::Map(map) => {
                for (k, v) in map.iter() {
                    put_bytes(&mut self.buf, k);
                    put_bytes(&mut self.buf, v);
                    self.entry_done().await?;
                }
            }
        }
        let crc = crc32c_append(self.crc, &self.buf[self.crc_from..]);
        self.crc_from = self.buf.len();
        Ok(block_of(view, offset, self.position() - offset, crc))
    }

    async fn close(mut self) -> Result<StreamStateHandle> {
        if !self.buf.is_empty() {
            if let Err(e) = self.flush().await {
                self.stream.abort().await;
                return Err(e);
            }
        }
        let written = self.flushed;
        let handle = self.stream.close().await?;
        if handle.size() != written {
            return Err(Error::internal(format!(
                "operator state stream {} holds {} bytes but {written} were written",
                handle.describe(),
                handle.size()
            )));
        }
        Ok(handle)
    }
}

// ---------------------------------------------------------------- restore

/// Entries `start..end` of block `block` of handle `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    handle: u32,
    block: u32,
    start: u64,
    end: u64,
}

/// Checks the handles of a restore; returns, per state name, the handle and
/// block that first lists it.
fn check_restore(old: &[OperatorStateHandle], old_parallelism: u32) -> Result<BTreeMap<&str, (usize, usize)>> {
    let mut seen = BTreeSet::new();
    let mut metas: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (hi, h) in old.iter().enumerate() {
        h.validate().map_err(|e| e.context(h.describe()))?;
        if h.subtask_index >= old_parallelism {
            return Err(Error::corrupted(format!(
                "{}: subtask index {} is not below the old parallelism {old_parallelism}",
                h.describe(),
                h.subtask_index
            )));
        }
        if !seen.insert(h.subtask_index) {
            return Err(Error::corrupted(format!(
                "two operator state handles of subtask {}",
                h.subtask_index
            )));
        }
        for (bi, b) in h.states.iter().enumerate() {
            let &mut (fh, fb) = metas.entry(b.name.as_str()).or_insert((hi, bi));
            let first = &old[fh].states[fb];
            let at = |h: &OperatorStateHandle| format!("subtask {}", h.subtask_index);
            let differs = if first.mode != b.mode {
                Some(("mode", first.mode.name().to_string(), b.mode.name().to_string()))
            } else if first.value_serializer != b.value_serializer {
                Some((
                    "value serializer",
                    first.value_serializer.to_string(),
                    b.value_serializer.to_string(),
                ))
            } else if first.key_serializer != b.key_serializer {
                let show = |k: &Option<SerializerId>| k.as_ref().map_or_else(String::new, |k| k.to_string());
                Some(("key serializer", show(&first.key_serializer), show(&b.key_serializer)))
            } else {
                None
            };
            if let Some((what, a, z)) = differs {
                return Err(Error::corrupted(format!(
                    "operator state {:?} has {what} {a} in {} but {z} in {}",
                    b.name,
                    at(&old[fh]),
                    at(h)
                )));
            }
        }
    }
    Ok(metas)
}

/// The states of each old subtask, as runs of entries: one per entry of
/// split state when the parallelism changes (entries are assigned one by
/// one), one per block otherwise.
fn repartition_input(
    old: &[OperatorStateHandle],
    old_parallelism: u32,
    per_entry: bool,
) -> Result<Vec<SubtaskStates<Run>>> {
    let mut input: Vec<SubtaskStates<Run>> = vec![BTreeMap::new(); old_parallelism as usize];
    let mut split_entries = 0u64;
    for (hi, h) in old.iter().enumerate() {
        for (bi, b) in h.states.iter().enumerate() {
            let run = |start, end| Run {
                handle: hi as u32,
                block: bi as u32,
                start,
                end,
            };
            let entries = if b.entries == 0 {
                Vec::new()
            } else if per_entry && b.mode == DistributionMode::Split {
                split_entries = split_entries.saturating_add(b.entries);
                if split_entries > MAX_RESTORE_SPLIT_ENTRIES {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "operator state {:?}: more than {MAX_RESTORE_SPLIT_ENTRIES} split-state entries to \
                             assign to a new parallelism",
                            b.name
                        ),
                    ));
                }
                (0..b.entries).map(|e| run(e, e + 1)).collect()
            } else {
                vec![run(0, b.entries)]
            };
            let subtask = input
                .get_mut(h.subtask_index as usize)
                .ok_or_else(|| Error::internal("subtask index out of range"))?;
            subtask.insert(b.name.clone(), SubtaskState { mode: b.mode, entries });
        }
    }
    Ok(input)
}

/// Merges consecutive runs of the same block.
fn coalesce(entries: Vec<Run>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for r in entries {
        match out.last_mut() {
            Some(last) if last.handle == r.handle && last.block == r.block && last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// A block's entries, as slices of the bytes read.
enum Decoded {
    List(Vec<Bytes>),
    Map(Vec<(Bytes, Bytes)>),
}

type DecodedBlocks = BTreeMap<(u32, u32), Decoded>;

/// Reads and decodes the blocks the runs reference: one ranged read per handle.
async fn read_blocks(
    old: &[OperatorStateHandle],
    assigned: &[(String, DistributionMode, Vec<Run>)],
    reader: &dyn StateReader,
) -> Result<DecodedBlocks> {
    let mut wanted: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for r in assigned.iter().flat_map(|(_, _, runs)| runs) {
        wanted.entry(r.handle).or_default().insert(r.block);
    }
    let reads = wanted.into_iter().map(|(hi, blocks)| async move {
        let h = old
            .get(hi as usize)
            .ok_or_else(|| Error::internal("handle index out of range"))?;
        let blocks: Vec<(u32, &OperatorStateBlock)> = blocks
            .into_iter()
            .map(|bi| {
                h.states
                    .get(bi as usize)
                    .map(|b| (bi, b))
                    .ok_or_else(|| Error::internal("block index out of range"))
            })
            .collect::<Result<_>>()?;
        let ranges: Vec<Range<u64>> = blocks.iter().map(|(_, b)| b.range()).collect();
        let parts = reader
            .read_ranges(&h.stream, &ranges)
            .await
            .map_err(|e| e.context(format!("restoring {}", h.describe())))?;
        if parts.len() != ranges.len() {
            return Err(Error::corrupted(format!(
                "{}: {} byte ranges read as {}",
                h.describe(),
                ranges.len(),
                parts.len()
            )));
        }
        let mut out = Vec::with_capacity(blocks.len());
        for ((bi, b), data) in blocks.into_iter().zip(parts) {
            let decoded = decode_block(b, &data)
                .map_err(|e| e.context(format!("operator state {:?} in {}", b.name, h.describe())))?;
            out.push(((hi, bi), decoded));
        }
        Ok::<_, Error>(out)
    });
    let mut decoded = BTreeMap::new();
    for blocks in futures::future::try_join_all(reads).await? {
        decoded.extend(blocks);
    }
    Ok(decoded)
}

/// Checks a block's length, checksum and entry count, and slices its entries.
fn decode_block(b: &OperatorStateBlock, data: &Bytes) -> Result<Decoded> {
    if data.len() as u64 != b.length {
        return Err(Error::corrupted(format!(
            "block of {} bytes read as {} bytes",
            b.length,
            data.len()
        )));
    }
    let actual = crc32c(data);
    if actual != b.crc32c {
        return Err(Error::corrupted(format!(
            "block checksum mismatch (stored {:#010x}, computed {actual:#010x})",
            b.crc32c
        )));
    }
    let mut r = Reader::new(data);
    let mut next = |what: &str| -> Result<Bytes> {
        let s = r.bytes(what)?;
        let end = r.position();
        Ok(data.slice(end - s.len()..end))
    };
    // The entry count was checked against the block length.
    let n = usize::try_from(b.entries).map_err(|_| Error::corrupted("entry count overflows"))?;
    let decoded = match b.mode {
        DistributionMode::Split | DistributionMode::Union => {
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(next("list element")?);
            }
            Decoded::List(list)
        }
        DistributionMode::Broadcast => {
            let mut map = Vec::with_capacity(n);
            for _ in 0..n {
                let k = next("broadcast key")?;
                let v = next("broadcast value")?;
                map.push((k, v));
            }
            Decoded::Map(map)
        }
    };
    if !r.is_empty() {
        return Err(Error::corrupted(format!(
            "{} bytes follow the {n} entries the block should hold",
            r.remaining()
        )));
    }
    Ok(decoded)
}

/// Builds a restored state's data from the runs it was assigned.
fn assemble(
    name: &str,
    mode: DistributionMode,
    runs: &[Run],
    old: &[OperatorStateHandle],
    decoded: &DecodedBlocks,
) -> Result<Data> {
    let missing = || Error::internal(format!("operator state {name:?}: an assigned block was not read"));
    let range = |r: &Run| r.start as usize..r.end as usize;
    match mode {
        DistributionMode::Split | DistributionMode::Union => {
            let mut list = Vec::new();
            for r in runs {
                let Some(Decoded::List(entries)) = decoded.get(&(r.handle, r.block)) else {
                    return Err(missing());
                };
                list.extend_from_slice(entries.get(range(r)).ok_or_else(missing)?);
            }
            Ok(Data::List(Arc::new(list)))
        }
        DistributionMode::Broadcast => {
            let mut map = BTreeMap::new();
            for r in runs {
                let Some(Decoded::Map(entries)) = decoded.get(&(r.handle, r.block)) else {
                    return Err(missing());
                };
                for (k, v) in entries.get(range(r)).ok_or_else(missing)? {
                    if map.insert(k.to_vec(), v.to_vec()).is_some() {
                        let h = old.get(r.handle as usize).map_or_else(String::new, |h| h.describe());
                        return Err(Error::corrupted(format!(
                            "broadcast state {name:?} in {h} holds a key twice"
                        )));
                    }
                }
            }
            Ok(Data::Map(Arc::new(map)))
        }
    }
}
