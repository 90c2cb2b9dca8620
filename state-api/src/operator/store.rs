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
//! use flowstate_api::checkpoint::InlineReader;
//! use flowstate_api::operator::DistributionMode;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let mut store = OperatorStateStore::new(0, 1)?;
//! let offsets = store.list_state(&ListStateDescriptor::<u64>::new("offsets"))?;
//! offsets.add(&mut store, 42)?;
//!
//! let storage = CheckpointStorage::in_memory("job");
//! let location = storage.init_checkpoint(1).await?;
//! let handle = store.snapshot(1, Arc::clone(&location))?.await?;
//!
//! // Subtask 0 of 2, restored from the one old subtask's handle, gets the
//! // one element of the split state.
//! let mut restored = OperatorStateStore::restore(0, 2, &[handle], 1, &InlineReader).await?;
//! assert_eq!(restored.mode("offsets"), Some(DistributionMode::Split));
//! let offsets = restored.list_state(&ListStateDescriptor::<u64>::new("offsets"))?;
//! assert_eq!(offsets.get(&restored)?, [42]);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::checkpoint::DistributionMode;
use crate::descriptor::validate_state_name;
use crate::error::{Error, Result};
use crate::keygroup::MAX_PARALLELISM_UPPER_BOUND;
use crate::serializer::SerializerId;

/// The most split-state entries a restore that changes the parallelism
/// assigns (2^26): each is referenced on its own while being assigned.
pub const MAX_RESTORE_SPLIT_ENTRIES: u64 = 1 << 26;

/// Streams a restore reads at once.
pub(super) const READ_CONCURRENCY: usize = 16;

/// Bytes a snapshot buffers before handing them to its stream.
pub(super) const WRITE_CHUNK: usize = 256 << 10;

pub(super) static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// What a state is, shared by the store and the snapshots it takes.
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) name: Arc<str>,
    pub(super) mode: DistributionMode,
    pub(super) value: SerializerId,
    pub(super) key: Option<SerializerId>,
}

/// A state's serialized entries, copy-on-write.
#[derive(Debug, Clone)]
pub(super) enum Data {
    /// List elements, in order.
    List(Arc<Vec<Bytes>>),
    /// Broadcast map entries, by key bytes.
    Map(Arc<BTreeMap<Vec<u8>, Vec<u8>>>),
}

impl Data {
    pub(super) fn empty(mode: DistributionMode) -> Self {
        match mode {
            DistributionMode::Split | DistributionMode::Union => Data::List(Arc::default()),
            DistributionMode::Broadcast => Data::Map(Arc::default()),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Data::List(l) => l.len(),
            Data::Map(m) => m.len(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) meta: Arc<Meta>,
    /// False for a restored state not registered since.
    pub(super) registered: bool,
    pub(super) data: Data,
}

/// Where a typed handle's state is: its store and index there.
#[derive(Debug)]
pub(super) struct StateRef {
    pub(super) store: u64,
    pub(super) index: usize,
    pub(super) name: Arc<str>,
}

/// The operator (non-keyed) state of one operator subtask.
///
/// States are registered by descriptor and become typed handles
/// ([`OperatorListState`](crate::OperatorListState), [`BroadcastState`](crate::BroadcastState)) whose operations take the
/// store. Operator state has no namespace and no TTL. A state keeps its
/// mode and serializers for its whole life, across restores: registering a
/// name again with another mode or serializer is refused as
/// [`Incompatible`](crate::ErrorKind::Incompatible).
///
/// Closing the store ([`close`](OperatorStateStore::close), or dropping
/// it) fails the snapshots still in their asynchronous phase, as closing a
/// keyed backend does.
pub struct OperatorStateStore {
    pub(super) id: u64,
    pub(super) subtask_index: u32,
    pub(super) parallelism: u32,
    pub(super) slots: Vec<Slot>,
    pub(super) by_name: BTreeMap<Arc<str>, usize>,
    /// Set when the store is closed or dropped; its pending snapshots check it.
    pub(super) closed: Arc<AtomicBool>,
}

impl Drop for OperatorStateStore {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
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

pub(super) fn check_subtask(subtask_index: u32, parallelism: u32) -> Result<()> {
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
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Closes the store: snapshots still in their async phase fail
    /// ([`Closed`](crate::ErrorKind::Closed)) and discard what they wrote.
    /// Dropping the store does the same.
    pub fn close(self) {}

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

    pub(super) fn state_ref(&self, index: usize) -> StateRef {
        StateRef {
            store: self.id,
            index,
            name: Arc::clone(&self.slots[index].meta.name),
        }
    }

    pub(super) fn register(
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

    pub(super) fn slot(&self, at: &StateRef) -> Result<&Slot> {
        if at.store != self.id {
            return Err(foreign(&at.name));
        }
        self.slots
            .get(at.index)
            .ok_or_else(|| Error::internal(format!("operator state {:?} has no slot", at.name)))
    }

    pub(super) fn data_mut(&mut self, at: &StateRef) -> Result<&mut Data> {
        if at.store != self.id {
            return Err(foreign(&at.name));
        }
        self.slots
            .get_mut(at.index)
            .map(|s| &mut s.data)
            .ok_or_else(|| Error::internal(format!("operator state {:?} has no slot", at.name)))
    }

    pub(super) fn list(&self, at: &StateRef) -> Result<&Arc<Vec<Bytes>>> {
        match &self.slot(at)?.data {
            Data::List(l) => Ok(l),
            Data::Map(_) => Err(wrong_data(&at.name)),
        }
    }

    pub(super) fn list_mut(&mut self, at: &StateRef) -> Result<&mut Arc<Vec<Bytes>>> {
        match self.data_mut(at)? {
            Data::List(l) => Ok(l),
            Data::Map(_) => Err(wrong_data(&at.name)),
        }
    }

    pub(super) fn map(&self, at: &StateRef) -> Result<&Arc<BTreeMap<Vec<u8>, Vec<u8>>>> {
        match &self.slot(at)?.data {
            Data::Map(m) => Ok(m),
            Data::List(_) => Err(wrong_data(&at.name)),
        }
    }

    pub(super) fn map_mut(&mut self, at: &StateRef) -> Result<&mut Arc<BTreeMap<Vec<u8>, Vec<u8>>>> {
        match self.data_mut(at)? {
            Data::Map(m) => Ok(m),
            Data::List(_) => Err(wrong_data(&at.name)),
        }
    }
}

pub(super) fn foreign(name: &str) -> Error {
    Error::invalid(format!(
        "operator state {name:?} was registered with another operator state store"
    ))
}

pub(super) fn wrong_data(name: &str) -> Error {
    Error::internal(format!(
        "operator state {name:?} holds data of another kind than its handle"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;

    use std::future::{Future, IntoFuture};
    use std::time::Duration;

    use std::ops::Range;

    use crate::checkpoint::{
        BlobMeta, BlobPath, BlobStore, BlobWriter, CheckpointLocation, OperatorStateBlock, OperatorStateHandle,
        StateReader, StreamStateHandle,
    };
    use crate::checkpoint::{
        CheckpointKind, CheckpointMetadata, CheckpointStorage, InlineReader, MemoryBlobStore, OperatorState,
        ResolvedCheckpoint,
    };
    use crate::descriptor::{ListStateDescriptor, MapStateDescriptor};
    use crate::error::ErrorKind;
    use crate::operator::repartition::{repartition, SubtaskState, SubtaskStates};
    use crate::operator::{BroadcastState, OperatorListState, PendingOperatorSnapshot};
    use crate::ttl::StateTtlConfig;

    fn list(name: &str) -> ListStateDescriptor<String> {
        ListStateDescriptor::new(name)
    }

    fn map(name: &str) -> MapStateDescriptor<String, u64> {
        MapStateDescriptor::new(name)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Subtask `i` of `p` holding `values` in split state `s`.
    fn split_store(i: u32, p: u32, values: &[&str]) -> OperatorStateStore {
        let mut store = OperatorStateStore::new(i, p).unwrap();
        let s = store.list_state(&list("s")).unwrap();
        s.update(&mut store, strings(values)).unwrap();
        store
    }

    fn memory() -> Arc<CheckpointStorage> {
        Arc::new(CheckpointStorage::in_memory("job"))
    }

    /// Storage that inlines streams of at most 64 bytes and writes larger ones as files.
    fn files() -> Arc<CheckpointStorage> {
        Arc::new(
            CheckpointStorage::new(Arc::new(MemoryBlobStore::new("memory://job")), "job")
                .unwrap()
                .with_inline_threshold(64)
                .unwrap(),
        )
    }

    /// Checkpoint `id` of operator "op" whose subtasks are `stores`,
    /// resolved back from storage.
    async fn checkpoint(
        storage: &Arc<CheckpointStorage>,
        id: u64,
        stores: &[OperatorStateStore],
    ) -> ResolvedCheckpoint {
        let location = storage.init_checkpoint(id).await.unwrap();
        let mut handles = Vec::new();
        for s in stores {
            let h = s.snapshot(id, Arc::clone(&location)).unwrap().await.unwrap();
            if !h.is_empty() {
                handles.push(h);
            }
        }
        let op = OperatorState::new("op", stores.len() as u32, 128, Vec::new()).with_operator_state(handles);
        let m = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(op);
        location.write_metadata(&m).await.unwrap();
        storage.resolve(&storage.checkpoint_pointer(id)).await.unwrap()
    }

    async fn restore_all(resolved: &ResolvedCheckpoint, p: u32) -> Vec<OperatorStateStore> {
        let op = resolved.metadata.operator("op").unwrap();
        let mut out = Vec::new();
        for i in 0..p {
            let store = OperatorStateStore::restore(i, p, &op.operator_state, op.parallelism, &*resolved.reader)
                .await
                .unwrap();
            out.push(store);
        }
        out
    }

    fn lists(stores: &mut [OperatorStateStore], name: &str, union: bool) -> Vec<Vec<String>> {
        stores
            .iter_mut()
            .map(|s| {
                let h = if union {
                    s.union_list_state(&list(name))
                } else {
                    s.list_state(&list(name))
                };
                h.unwrap().get(s).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn each_kind_round_trips() {
        for storage in [memory(), files()] {
            let mut store = OperatorStateStore::new(0, 1).unwrap();
            let s = store.list_state(&list("s")).unwrap();
            let u = store.union_list_state(&list("u")).unwrap();
            let b = store.broadcast_state(&map("b")).unwrap();
            store.list_state(&list("empty")).unwrap();
            s.add(&mut store, "a".to_string()).unwrap();
            s.add_all(&mut store, strings(&["b", "c"])).unwrap();
            u.update(&mut store, strings(&["x"])).unwrap();
            b.put(&mut store, "k1".to_string(), 1).unwrap();
            b.put_all(&mut store, [("k2".to_string(), 2), ("k3".to_string(), 3)])
                .unwrap();
            assert!(b.remove(&mut store, &"k3".to_string()).unwrap());
            assert!(!b.remove(&mut store, &"k3".to_string()).unwrap());

            let resolved = checkpoint(&storage, 1, &[store]).await;
            let mut r = restore_all(&resolved, 1).await.remove(0);
            assert_eq!(r.state_names().collect::<Vec<_>>(), ["b", "empty", "s", "u"]);
            assert_eq!(r.mode("empty"), Some(DistributionMode::Split));
            let s = r.list_state(&list("s")).unwrap();
            let u = r.union_list_state(&list("u")).unwrap();
            let b = r.broadcast_state(&map("b")).unwrap();
            assert_eq!(s.get(&r).unwrap(), strings(&["a", "b", "c"]));
            assert_eq!(u.get(&r).unwrap(), strings(&["x"]));
            assert_eq!(b.entries(&r).unwrap(), [("k1".to_string(), 1), ("k2".to_string(), 2)]);
            assert_eq!(b.get(&r, &"k2".to_string()).unwrap(), Some(2));
            assert_eq!(b.get(&r, &"k3".to_string()).unwrap(), None);
            assert!(b.contains(&r, &"k1".to_string()).unwrap());
            assert_eq!((b.len(&r).unwrap(), s.len(&r).unwrap()), (2, 3));
            let empty = r.list_state(&list("empty")).unwrap();
            assert!(empty.is_empty(&r).unwrap());
            // Restored state is live state.
            s.clear(&mut r).unwrap();
            b.clear(&mut r).unwrap();
            assert!(s.is_empty(&r).unwrap() && b.is_empty(&r).unwrap());
        }
    }

    #[tokio::test]
    async fn split_3_to_2_and_back() {
        let storage = memory();
        let old = [
            split_store(0, 3, &["a", "b"]),
            split_store(1, 3, &["c"]),
            split_store(2, 3, &["d", "e"]),
        ];
        let resolved = checkpoint(&storage, 1, &old).await;
        let mut new = restore_all(&resolved, 2).await;
        assert_eq!(
            lists(&mut new, "s", false),
            [strings(&["a", "b", "c"]), strings(&["d", "e"])]
        );
        // Unchanged parallelism: each subtask gets its own back.
        let mut same = restore_all(&resolved, 3).await;
        assert_eq!(
            lists(&mut same, "s", false),
            [strings(&["a", "b"]), strings(&["c"]), strings(&["d", "e"])]
        );
        // And 2 → 3 from the restored pair.
        let resolved = checkpoint(&storage, 2, &new).await;
        let mut three = restore_all(&resolved, 3).await;
        assert_eq!(
            lists(&mut three, "s", false),
            [strings(&["a", "b"]), strings(&["c", "d"]), strings(&["e"])]
        );
    }

    #[tokio::test]
    async fn split_1_to_2() {
        let resolved = checkpoint(&memory(), 1, &[split_store(0, 1, &["e1", "e2"])]).await;
        let mut new = restore_all(&resolved, 2).await;
        assert_eq!(lists(&mut new, "s", false), [strings(&["e1"]), strings(&["e2"])]);
    }

    #[tokio::test]
    async fn union_gives_every_entry_to_every_subtask() {
        let old: Vec<OperatorStateStore> = (0..2)
            .map(|i| {
                let mut store = OperatorStateStore::new(i, 2).unwrap();
                let u = store.union_list_state(&list("u")).unwrap();
                u.add_all(&mut store, [format!("{i}a"), format!("{i}b")]).unwrap();
                store
            })
            .collect();
        let resolved = checkpoint(&memory(), 1, &old).await;
        let all = strings(&["0a", "0b", "1a", "1b"]);
        for p in [2, 3] {
            let mut new = restore_all(&resolved, p).await;
            assert_eq!(lists(&mut new, "u", true), vec![all.clone(); p as usize], "p = {p}");
        }
        // The metadata records one block per subtask, not one offset per entry.
        let op = resolved.metadata.operator("op").unwrap();
        assert_eq!(op.operator_state.len(), 2);
        assert!(op.operator_state.iter().all(|h| h.states.len() == 1));
    }

    #[tokio::test]
    async fn broadcast_3_to_5_follows_i_mod_3() {
        let old: Vec<OperatorStateStore> = (0..3)
            .map(|i| {
                let mut store = OperatorStateStore::new(i, 3).unwrap();
                let b = store.broadcast_state(&map("b")).unwrap();
                b.put(&mut store, format!("copy{i}"), u64::from(i)).unwrap();
                b.put(&mut store, "shared".to_string(), 7).unwrap();
                store
            })
            .collect();
        let resolved = checkpoint(&memory(), 1, &old).await;
        let mut new = restore_all(&resolved, 5).await;
        for (i, s) in new.iter_mut().enumerate() {
            let b = s.broadcast_state(&map("b")).unwrap();
            let old = (i % 3) as u64;
            assert_eq!(
                b.entries(s).unwrap(),
                [(format!("copy{old}"), old), ("shared".to_string(), 7)],
                "subtask {i}"
            );
        }
    }

    /// Old subtask 1 of 3 had no operator state at all (no handle, or an
    /// empty one), or other state but not broadcast state "b": restored at
    /// 5, 3 and 2 subtasks, new subtask `i` gets the copy of old subtask 0
    /// when `i` is even and of old subtask 2 when it is odd.
    #[tokio::test]
    async fn broadcast_restores_from_the_old_subtasks_that_have_it() {
        let broadcast = |i: u32| {
            let mut store = OperatorStateStore::new(i, 3).unwrap();
            let b = store.broadcast_state(&map("b")).unwrap();
            b.put(&mut store, format!("copy{i}"), u64::from(i)).unwrap();
            b.put(&mut store, "shared".to_string(), 7).unwrap();
            store
        };
        let mut id = 0;
        for storage in [memory(), files()] {
            for subtask_1 in ["no handle", "empty handle", "split state only"] {
                id += 1;
                let middle = if subtask_1 == "split state only" {
                    split_store(1, 3, &["x"])
                } else {
                    OperatorStateStore::new(1, 3).unwrap()
                };
                let resolved = checkpoint(&storage, id, &[broadcast(0), middle, broadcast(2)]).await;
                let mut old = resolved.metadata.operator("op").unwrap().operator_state.clone();
                if subtask_1 == "empty handle" {
                    assert_eq!(old.len(), 2, "the checkpoint lists no empty handle");
                    let location = storage.init_checkpoint(1000 + id).await.unwrap();
                    let empty = OperatorStateStore::new(1, 3)
                        .unwrap()
                        .snapshot(1000 + id, location)
                        .unwrap()
                        .await
                        .unwrap();
                    assert!(empty.is_empty());
                    old.insert(1, empty);
                }
                for p in [5, 3, 2] {
                    for i in 0..p {
                        let mut s = OperatorStateStore::restore(i, p, &old, 3, &*resolved.reader)
                            .await
                            .unwrap();
                        let b = s.broadcast_state(&map("b")).unwrap();
                        let from = if i % 2 == 0 { 0 } else { 2 };
                        assert_eq!(
                            b.entries(&s).unwrap(),
                            [(format!("copy{from}"), from), ("shared".to_string(), 7)],
                            "{subtask_1}: 3 → {p}, subtask {i}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn restored_mode_and_serializers_are_checked_on_registration() {
        let resolved = checkpoint(&memory(), 1, &[split_store(0, 1, &["a"])]).await;
        let mut r = restore_all(&resolved, 1).await.remove(0);

        let e = r.union_list_state(&list("s")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
        let m = e.message();
        assert!(
            m.contains("\"s\"") && m.contains("restored as split") && m.contains("union"),
            "{e}"
        );
        let e = r.broadcast_state(&map("s")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");

        let e = r.list_state(&ListStateDescriptor::<u64>::new("s")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
        let (wanted, restored) = (Bincode::<u64>::new().id(), Bincode::<String>::new().id());
        assert!(
            e.message().contains(&wanted.to_string()) && e.message().contains(&restored.to_string()),
            "{e}"
        );

        // The right descriptor still gets the state.
        let s = r.list_state(&list("s")).unwrap();
        assert_eq!(s.get(&r).unwrap(), strings(&["a"]));

        // Broadcast key serializers are checked too.
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        store.broadcast_state(&map("b")).unwrap();
        let resolved = checkpoint(&memory(), 2, &[store]).await;
        let mut r = restore_all(&resolved, 1).await.remove(0);
        let e = r
            .broadcast_state(&MapStateDescriptor::<u64, u64>::new("b"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
        assert!(e.message().contains("key serializer"), "{e}");
    }

    use crate::serializer::{Bincode, Serializer};

    #[test]
    fn registration_rules() {
        let mut store = OperatorStateStore::new(1, 2).unwrap();
        let a = store.list_state(&list("s")).unwrap();
        let b = store.list_state(&list("s")).unwrap();
        a.add(&mut store, "x".to_string()).unwrap();
        assert_eq!(b.get(&store).unwrap(), strings(&["x"]));
        let c = b.clone();
        assert_eq!(c.name(), "s");
        assert_eq!(c.mode(), DistributionMode::Split);

        let e = store.union_list_state(&list("s")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
        assert!(e.message().contains("registered as split"), "{e}");
        let e = store.list_state(&ListStateDescriptor::<u64>::new("s")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");

        let ttl = list("t").with_ttl(StateTtlConfig::new(Duration::from_secs(1)));
        let e = store.list_state(&ttl).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(e.message().contains("TTL"), "{e}");
        assert_eq!(store.mode("t"), None);

        let e = store.list_state(&list("a\0b")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");

        let mut other = OperatorStateStore::new(0, 2).unwrap();
        let e = a.add(&mut other, "y".to_string()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(a.get(&other).is_err());

        for (i, p) in [(0, 0), (2, 2), (0, MAX_PARALLELISM_UPPER_BOUND + 1)] {
            let e = OperatorStateStore::new(i, p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        }
        assert_eq!((store.subtask_index(), store.parallelism()), (1, 2));
        assert!(format!("{store:?}").contains("\"s\""));
    }

    #[tokio::test]
    async fn writes_after_the_sync_phase_are_not_in_the_snapshot() {
        let storage = memory();
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        let s = store.list_state(&list("s")).unwrap();
        let b = store.broadcast_state(&map("b")).unwrap();
        s.add(&mut store, "before".to_string()).unwrap();
        b.put(&mut store, "k".to_string(), 1).unwrap();

        let location = storage.init_checkpoint(1).await.unwrap();
        let pending = store.snapshot(1, Arc::clone(&location)).unwrap();
        assert_eq!(pending.checkpoint_id(), 1);
        // The sync phase shares the entries; it copies nothing.
        let Data::List(l) = &store.slots[0].data else { panic!() };
        assert_eq!(Arc::strong_count(l), 2);

        s.add(&mut store, "after".to_string()).unwrap();
        b.put(&mut store, "k".to_string(), 2).unwrap();
        b.put(&mut store, "k2".to_string(), 3).unwrap();
        let Data::List(l) = &store.slots[0].data else { panic!() };
        assert_eq!(Arc::strong_count(l), 1, "the first write copied the list");

        let handle = pending.await.unwrap();
        let r = OperatorStateStore::restore(0, 1, &[handle], 1, &InlineReader)
            .await
            .unwrap();
        let mut r = r;
        let s2 = r.list_state(&list("s")).unwrap();
        let b2 = r.broadcast_state(&map("b")).unwrap();
        assert_eq!(s2.get(&r).unwrap(), strings(&["before"]));
        assert_eq!(b2.entries(&r).unwrap(), [("k".to_string(), 1)]);
        // The live store has the later writes.
        assert_eq!(s.get(&store).unwrap(), strings(&["before", "after"]));
        assert_eq!(b.len(&store).unwrap(), 2);
    }

    #[tokio::test]
    async fn empty_stores_write_nothing() {
        let storage = files();
        let location = storage.init_checkpoint(1).await.unwrap();
        let store = OperatorStateStore::new(0, 1).unwrap();
        let h = store.snapshot(1, Arc::clone(&location)).unwrap().await.unwrap();
        assert!(h.is_empty());
        assert_eq!(h.stream, StreamStateHandle::Empty);

        // States without entries: nothing written, but their modes are kept.
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        store.union_list_state(&list("u")).unwrap();
        store.broadcast_state(&map("b")).unwrap();
        let h = store.snapshot(1, Arc::clone(&location)).unwrap().await.unwrap();
        assert!(!h.is_empty());
        assert_eq!(h.stream, StreamStateHandle::Empty);
        assert_eq!(h.states.len(), 2);
        assert!(storage.list_files().await.unwrap().is_empty());
        let r = OperatorStateStore::restore(0, 3, &[h], 1, &InlineReader).await.unwrap();
        assert_eq!(r.mode("u"), Some(DistributionMode::Union));
        assert_eq!(r.mode("b"), Some(DistributionMode::Broadcast));
    }

    #[tokio::test]
    async fn snapshot_refuses_another_checkpoint_s_location() {
        let location = memory().init_checkpoint(2).await.unwrap();
        let e = OperatorStateStore::new(0, 1)
            .unwrap()
            .snapshot(1, location)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }

    /// `n` elements of 200 bytes each.
    fn big_elements(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:0>200}")).collect()
    }

    /// A store with split state "s" = [`big_elements`]`(n)`.
    fn big_store(n: usize) -> OperatorStateStore {
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        let s = store.list_state(&list("s")).unwrap();
        s.update(&mut store, big_elements(n)).unwrap();
        store
    }

    #[tokio::test]
    async fn snapshot_of_a_dropped_store_fails_closed_and_writes_nothing() {
        let storage = files();
        let location = storage.init_checkpoint(7).await.unwrap();
        let store = big_store(10);
        let pending = store.snapshot(7, Arc::clone(&location)).unwrap();
        drop(store);
        let e = pending.await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(e.message().contains("checkpoint 7"), "{e}");
        assert!(storage.list_files().await.unwrap().is_empty());

        // A store whose states have no entries writes no stream; its snapshot fails too.
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        store.broadcast_state(&map("b")).unwrap();
        let pending = store.snapshot(7, Arc::clone(&location)).unwrap();
        drop(store);
        let e = pending.await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(e.message().contains("checkpoint 7"), "{e}");
    }

    #[tokio::test]
    async fn snapshot_of_a_closed_store_fails_closed_and_writes_nothing() {
        let storage = files();
        let location = storage.init_checkpoint(3).await.unwrap();
        let store = big_store(10);
        let pending = store.snapshot(3, location).unwrap();
        store.close();
        let e = pending.run().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(e.message().contains("checkpoint 3"), "{e}");
        assert!(storage.list_files().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn snapshot_that_ran_before_the_drop_is_unaffected() {
        let storage = files();
        let store = big_store(10);
        let first = storage.init_checkpoint(1).await.unwrap();
        let done = store.snapshot(1, Arc::clone(&first)).unwrap().await.unwrap();
        let file = done.stream.file_path().unwrap().to_string();
        let second = storage.init_checkpoint(2).await.unwrap();
        let pending = store.snapshot(2, second).unwrap();
        drop(store);
        assert_eq!(pending.await.unwrap_err().kind(), ErrorKind::Closed);
        // The first snapshot's file is all there is, and its checkpoint
        // completes and restores after the drop.
        let files: Vec<String> = storage
            .list_files()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(files, [file]);
        let op = OperatorState::new("op", 1, 128, Vec::new()).with_operator_state(vec![done]);
        first
            .write_metadata(&CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(op))
            .await
            .unwrap();
        let resolved = storage.resolve(&storage.checkpoint_pointer(1)).await.unwrap();
        let mut r = restore_all(&resolved, 1).await.remove(0);
        let s = r.list_state(&list("s")).unwrap();
        assert_eq!(s.get(&r).unwrap(), big_elements(10));
    }

    /// Where a [`Gated`] store's writers wait.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Gate {
        /// Before the first bytes reach the object.
        FirstWrite,
        /// Before the object is made visible.
        Finish,
    }

    /// A memory blob store whose writers stop at `gate`, say so through
    /// `reached`, and go on once `release` is notified.
    #[derive(Debug)]
    struct Gated {
        inner: MemoryBlobStore,
        gate: Gate,
        reached: Arc<Notify>,
        release: Arc<Notify>,
    }

    struct GatedWriter {
        inner: Box<dyn BlobWriter>,
        gate: Gate,
        wrote: bool,
        reached: Arc<Notify>,
        release: Arc<Notify>,
    }

    /// Says the gate is reached and waits for the release.
    async fn wait_at_gate(reached: &Notify, release: &Notify) {
        reached.notify_one();
        release.notified().await;
    }

    #[async_trait]
    impl BlobWriter for GatedWriter {
        async fn write(&mut self, data: Bytes) -> Result<()> {
            if self.gate == Gate::FirstWrite && !self.wrote {
                self.wrote = true;
                wait_at_gate(&self.reached, &self.release).await;
            }
            self.inner.write(data).await
        }

        async fn finish(self: Box<Self>) -> Result<()> {
            if self.gate == Gate::Finish {
                wait_at_gate(&self.reached, &self.release).await;
            }
            self.inner.finish().await
        }

        async fn abort(self: Box<Self>) {
            self.inner.abort().await
        }
    }

    #[async_trait]
    impl BlobStore for Gated {
        fn root(&self) -> &str {
            self.inner.root()
        }

        async fn create(&self, path: &BlobPath) -> Result<Box<dyn BlobWriter>> {
            Ok(Box::new(GatedWriter {
                inner: self.inner.create(path).await?,
                gate: self.gate,
                wrote: false,
                reached: Arc::clone(&self.reached),
                release: Arc::clone(&self.release),
            }))
        }

        async fn put_if_absent(&self, path: &BlobPath, data: Bytes) -> Result<()> {
            self.inner.put_if_absent(path, data).await
        }

        async fn get_range(&self, path: &BlobPath, range: Range<u64>) -> Result<Bytes> {
            self.inner.get_range(path, range).await
        }

        async fn head(&self, path: &BlobPath) -> Result<Option<BlobMeta>> {
            self.inner.head(path).await
        }

        async fn list(&self, prefix: Option<&BlobPath>) -> Result<Vec<BlobMeta>> {
            self.inner.list(prefix).await
        }

        async fn delete(&self, paths: &[BlobPath]) -> Result<()> {
            self.inner.delete(paths).await
        }

        fn open(&self, location: &str) -> Result<Arc<dyn BlobStore>> {
            self.inner.open(location)
        }
    }

    /// The store is dropped while its snapshot's stream is being written
    /// (more than one write chunk of state, so the snapshot is stopped
    /// between two writes) or while the stream is being made visible
    /// (stopped after closing it): the snapshot fails with `Closed`, naming
    /// the checkpoint, and leaves no file behind.
    #[tokio::test]
    async fn dropping_the_store_during_the_async_phase_fails_it_and_discards_its_output() {
        for (gate, elements) in [(Gate::FirstWrite, 4000), (Gate::Finish, 10)] {
            let (reached, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let blobs = Gated {
                inner: MemoryBlobStore::new("memory://job"),
                gate,
                reached: Arc::clone(&reached),
                release: Arc::clone(&release),
            };
            let storage = CheckpointStorage::new(Arc::new(blobs), "job")
                .unwrap()
                .with_inline_threshold(64)
                .unwrap()
                .with_write_chunk(4096);
            let location = storage.init_checkpoint(5).await.unwrap();
            let store = big_store(elements);
            let running = tokio::spawn(store.snapshot(5, location).unwrap().run());
            reached.notified().await;
            drop(store);
            release.notify_one();
            let e = running.await.unwrap().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Closed, "{gate:?}: {e}");
            assert!(e.message().contains("checkpoint 5"), "{gate:?}: {e}");
            if gate == Gate::FirstWrite {
                // Stopped while writing the block of "s", not after it.
                assert!(e.message().contains("operator state \"s\""), "{e}");
            }
            assert!(storage.list_files().await.unwrap().is_empty(), "{gate:?}");
        }
    }

    /// Handle of one subtask with split state "s" = `[a, b]` and union "u" = `[x]`.
    async fn inline_handle() -> OperatorStateHandle {
        let mut store = split_store(0, 1, &["a", "b"]);
        let u = store.union_list_state(&list("u")).unwrap();
        u.add(&mut store, "x".to_string()).unwrap();
        let location = memory().init_checkpoint(1).await.unwrap();
        store.snapshot(1, location).unwrap().await.unwrap()
    }

    fn with_stream(h: &OperatorStateHandle, f: impl FnOnce(&mut Vec<u8>)) -> OperatorStateHandle {
        let StreamStateHandle::Inline(b) = &h.stream else {
            panic!()
        };
        let mut b = b.to_vec();
        f(&mut b);
        OperatorStateHandle {
            stream: StreamStateHandle::Inline(Bytes::from(b)),
            ..h.clone()
        }
    }

    #[tokio::test]
    async fn corrupted_blocks_are_refused_naming_the_state() {
        let h = inline_handle().await;
        let s = h.state("s").unwrap().clone();
        // Every byte of the block of "s", flipped.
        for at in s.range() {
            let bad = with_stream(&h, |b| b[at as usize] ^= 0x40);
            let e = OperatorStateStore::restore(0, 1, &[bad], 1, &InlineReader)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
            assert!(e.message().contains("\"s\"") && e.message().contains("checksum"), "{e}");
            assert!(e.message().contains("subtask 0"), "{e}");
        }
        // A wrong entry count with a matching checksum.
        let mut bad = h.clone();
        bad.states.iter_mut().find(|b| b.name == "s").unwrap().entries = 1;
        let e = OperatorStateStore::restore(0, 1, &[bad], 1, &InlineReader)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        assert!(e.message().contains("\"s\""), "{e}");
        // A block the stream does not hold.
        let bad = with_stream(&h, |b| b.truncate(3));
        let e = OperatorStateStore::restore(0, 1, &[bad], 1, &InlineReader)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        // Every subtask reads union state: a corrupted union block fails
        // subtask 1 of 2 too, naming it.
        let u = h.state("u").unwrap().clone();
        let bad = with_stream(&h, |b| b[u.offset as usize] ^= 1);
        let e = OperatorStateStore::restore(1, 2, &[bad], 1, &InlineReader)
            .await
            .unwrap_err();
        assert!(e.message().contains("\"u\""), "{e}");
    }

    #[tokio::test]
    async fn inconsistent_handles_are_refused() {
        let h = inline_handle().await;
        let restore = |old: Vec<OperatorStateHandle>, p_old: u32| async move {
            OperatorStateStore::restore(0, 1, &old, p_old, &InlineReader)
                .await
                .unwrap_err()
        };
        let e = restore(vec![h.clone(), h.clone()], 2).await;
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        let e = restore(vec![h.clone()], 0).await;
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        let mut other = h.clone();
        other.subtask_index = 1;
        let e = restore(vec![other.clone()], 1).await;
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        // "s" split in subtask 0 but union in subtask 1.
        other.states.iter_mut().find(|b| b.name == "s").unwrap().mode = DistributionMode::Union;
        let e = restore(vec![h.clone(), other.clone()], 2).await;
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        assert!(e.message().contains("\"s\"") && e.message().contains("union"), "{e}");
        other.states.iter_mut().find(|b| b.name == "s").unwrap().mode = DistributionMode::Split;
        other
            .states
            .iter_mut()
            .find(|b| b.name == "s")
            .unwrap()
            .value_serializer = SerializerId::new("x", 1);
        let e = restore(vec![h.clone(), other], 2).await;
        assert_eq!(e.kind(), ErrorKind::Corrupted, "{e}");
        assert!(e.message().contains("serializer"), "{e}");
        let e = OperatorStateStore::restore(2, 2, &[h], 1, &InlineReader)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }

    /// A reader that records what it is asked to read.
    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn StateReader>,
        reads: Mutex<Vec<(String, Vec<Range<u64>>)>>,
    }

    #[async_trait]
    impl StateReader for Recording {
        async fn read(&self, handle: &StreamStateHandle) -> Result<Bytes> {
            let size = handle.size();
            let whole = std::iter::once(0..size).collect();
            self.reads.lock().unwrap().push((handle.describe(), whole));
            self.inner.read(handle).await
        }

        async fn read_ranges(&self, handle: &StreamStateHandle, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
            self.reads.lock().unwrap().push((handle.describe(), ranges.to_vec()));
            self.inner.read_ranges(handle, ranges).await
        }
    }

    #[tokio::test]
    async fn inline_and_file_handles_restore_reading_only_assigned_blocks() {
        let storage = files();
        let big: Vec<String> = (0..200).map(|i| format!("element {i}")).collect();
        let mut stores = vec![
            split_store(0, 3, &["a", "b"]),
            split_store(1, 3, &["c"]),
            OperatorStateStore::new(2, 3).unwrap(),
        ];
        let s = stores[2].list_state(&list("s")).unwrap();
        s.update(&mut stores[2], &big).unwrap();
        let b = stores[2].broadcast_state(&map("b")).unwrap();
        b.put(&mut stores[2], "k".to_string(), 1).unwrap();
        let resolved = checkpoint(&storage, 1, &stores).await;
        let op = resolved.metadata.operator("op").unwrap();
        let kinds: Vec<bool> = op
            .operator_state
            .iter()
            .map(|h| matches!(h.stream, StreamStateHandle::Inline(_)))
            .collect();
        assert_eq!(kinds, [true, true, false], "small state inline, large state in a file");
        let file = op.operator_state[2].stream.file_path().unwrap().to_string();
        assert!(file.starts_with("chk-1/"), "{file}");
        assert_eq!(resolved.metadata.file_paths(), std::slice::from_ref(&file));
        assert_eq!(
            resolved.metadata.state_size(),
            op.operator_state.iter().map(|h| h.stream.size()).sum::<u64>()
        );

        // 3 → 2: 203 entries, 102 and 101. Subtask 1 gets its entries from the file only.
        let reader = Recording {
            inner: Arc::clone(&resolved.reader),
            reads: Mutex::default(),
        };
        let mut r1 = OperatorStateStore::restore(1, 2, &op.operator_state, 3, &reader)
            .await
            .unwrap();
        let reads = reader.reads.lock().unwrap().clone();
        let h2 = &op.operator_state[2];
        // One ranged read of the file: its two blocks, in block order (broadcast
        // "b" was reported by old subtask 2 only, so every new subtask gets its copy).
        assert_eq!(
            reads,
            [(
                file.clone(),
                vec![h2.state("b").unwrap().range(), h2.state("s").unwrap().range()]
            )]
        );
        let s1 = r1.list_state(&list("s")).unwrap();
        assert_eq!(s1.get(&r1).unwrap(), big[99..].to_vec());
        let b1 = r1.broadcast_state(&map("b")).unwrap();
        assert_eq!(b1.entries(&r1).unwrap(), [("k".to_string(), 1)]);

        let mut all = restore_all(&resolved, 2).await;
        let mut expected = strings(&["a", "b", "c"]);
        expected.extend_from_slice(&big[..99]);
        assert_eq!(lists(&mut all, "s", false)[0], expected);
        let b0 = all[0].broadcast_state(&map("b")).unwrap();
        assert_eq!(b0.entries(&all[0]).unwrap(), [("k".to_string(), 1)]);
        // Unchanged parallelism: subtask 2 gets its file back, and the broadcast
        // state only it reported goes to the other subtasks too.
        let mut same = restore_all(&resolved, 3).await;
        assert_eq!(lists(&mut same, "s", false)[2], big);
        for (i, s) in same.iter_mut().enumerate() {
            let b = s.broadcast_state(&map("b")).unwrap();
            assert_eq!(b.entries(s).unwrap(), [("k".to_string(), 1)], "subtask {i}");
        }
    }

    #[test]
    fn handles_and_snapshots_move_between_threads() {
        fn send_static<T: Send + Sync + 'static>() {}
        send_static::<OperatorStateStore>();
        send_static::<OperatorListState<String>>();
        send_static::<BroadcastState<String, u64>>();
        fn send<T: Send + 'static>() {}
        send::<PendingOperatorSnapshot>();
        send::<<PendingOperatorSnapshot as IntoFuture>::IntoFuture>();
        fn send_future<F: Future + Send>(_: &F) {}
        send_future(&OperatorStateStore::restore(0, 1, &[], 1, &InlineReader));
    }

    /// A small deterministic generator for the property test.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Through storage, every assignment is exactly what `repartition`
    /// (Flink's) gives for the same entries, also when some old subtasks
    /// lack some states or have no operator state at all.
    #[tokio::test]
    async fn restores_match_repartition() {
        let storage = files();
        let mut rng = Lcg(7);
        for round in 0..80u64 {
            let p_old = 1 + rng.below(5) as u32;
            let p_new = 1 + rng.below(6) as u32;
            let names = [
                ("a", DistributionMode::Split),
                ("b", DistributionMode::Union),
                ("c", DistributionMode::Split),
                ("d", DistributionMode::Broadcast),
            ];
            let mut stores = Vec::new();
            let mut expected_in: Vec<SubtaskStates<String>> = Vec::new();
            for i in 0..p_old {
                let mut store = OperatorStateStore::new(i, p_old).unwrap();
                let mut states = BTreeMap::new();
                let stateless = round % 2 == 1 && rng.below(4) == 0;
                for (name, mode) in names {
                    if stateless || (round % 2 == 1 && rng.below(3) == 0) {
                        continue;
                    }
                    let n = rng.below(if round % 3 == 0 { 40 } else { 5 });
                    let entries: Vec<String> = (0..n).map(|e| format!("{name}{i}.{e}")).collect();
                    match mode {
                        DistributionMode::Split => store.list_state(&list(name)).unwrap().update(&mut store, &entries),
                        DistributionMode::Union => store
                            .union_list_state(&list(name))
                            .unwrap()
                            .update(&mut store, &entries),
                        DistributionMode::Broadcast => {
                            let b = store.broadcast_state(&map(name)).unwrap();
                            b.put_all(&mut store, entries.iter().map(|e| (e, 0u64)))
                        }
                    }
                    .unwrap();
                    states.insert(name.to_string(), SubtaskState { mode, entries });
                }
                stores.push(store);
                expected_in.push(states);
            }
            let expected = repartition(&expected_in, p_new).unwrap();
            let resolved = checkpoint(&storage, round + 1, &stores).await;
            let mut new = restore_all(&resolved, p_new).await;
            for (i, (store, want)) in new.iter_mut().zip(&expected).enumerate() {
                for (name, mode) in names {
                    let mut got = match mode {
                        DistributionMode::Split => store.list_state(&list(name)).unwrap().get(store).unwrap(),
                        DistributionMode::Union => store.union_list_state(&list(name)).unwrap().get(store).unwrap(),
                        DistributionMode::Broadcast => {
                            let b = store.broadcast_state(&map(name)).unwrap();
                            b.entries(store).unwrap().into_iter().map(|(k, _)| k).collect()
                        }
                    };
                    let mut want = want.get(name).map_or_else(Vec::new, |s| s.entries.clone());
                    if mode == DistributionMode::Broadcast {
                        got.sort();
                        want.sort();
                    }
                    assert_eq!(got, want, "round {round}: {p_old} → {p_new}, subtask {i}, state {name}");
                }
            }
        }
    }

    #[tokio::test]
    async fn too_many_split_entries_to_reassign_are_refused() {
        let h = OperatorStateHandle {
            subtask_index: 0,
            stream: StreamStateHandle::File {
                path: "chk-1/x".into(),
                size: u64::MAX / 2,
            },
            states: vec![OperatorStateBlock {
                name: "s".into(),
                mode: DistributionMode::Split,
                value_serializer: SerializerId::new("x", 1),
                key_serializer: None,
                offset: 0,
                length: u64::MAX / 2,
                entries: u64::MAX / 2,
                crc32c: 0,
            }],
        };
        let e = OperatorStateStore::restore(0, 2, &[h], 1, &InlineReader)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    }

    /// Begins checkpoint `id` and snapshots `store` into it: the location,
    /// the metadata to complete it with and the operator-state file.
    async fn take(
        cs: &mut crate::lifecycle::CheckpointStore,
        store: &OperatorStateStore,
        id: u64,
    ) -> (Arc<CheckpointLocation>, CheckpointMetadata, String) {
        let location = cs.begin_checkpoint(id).await.unwrap();
        let h = store.snapshot(id, Arc::clone(&location)).unwrap().await.unwrap();
        let path = h.stream.file_path().unwrap().to_string();
        let op = OperatorState::new("op", 1, 128, Vec::new()).with_operator_state(vec![h]);
        let m = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(op);
        (location, m, path)
    }

    #[tokio::test]
    async fn checkpoint_store_keeps_and_disposes_operator_state_files() {
        use crate::lifecycle::{CheckpointStore, CheckpointStoreConfig, GcOptions};
        let storage = files();
        let mut cs = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
            .await
            .unwrap();
        let big: Vec<String> = (0..100).map(|i| format!("element {i}")).collect();
        let mut store = OperatorStateStore::new(0, 1).unwrap();
        let s = store.list_state(&list("s")).unwrap();
        s.update(&mut store, &big).unwrap();

        let (location, m, first) = take(&mut cs, &store, 1).await;
        cs.complete(&location, m).await.unwrap();
        assert!(cs.latest().unwrap().files().contains(&first));
        // Garbage collection sees the file as live.
        let report = cs
            .collect_garbage(&GcOptions::new(Duration::ZERO).delete())
            .await
            .unwrap();
        assert!(report.orphans.is_empty(), "{report:?}");
        assert!(storage.stat_file(&first).await.unwrap().is_some());

        // A checkpoint whose operator-state file is missing is not completed.
        let (location, m, second) = take(&mut cs, &store, 2).await;
        storage.delete_files(std::slice::from_ref(&second)).await.unwrap();
        let e = cs.complete(&location, m).await.unwrap_err();
        assert!(e.message().contains(&second), "{e}");
        cs.abort(&location, &[]).await.unwrap();

        // Subsuming checkpoint 1 deletes its operator-state file.
        let (location, m, third) = take(&mut cs, &store, 3).await;
        cs.complete(&location, m).await.unwrap();
        assert!(storage.stat_file(&first).await.unwrap().is_none());
        assert!(storage.stat_file(&third).await.unwrap().is_some());
    }
}
