//! The keyed state backend contract.
//!
//! [`KeyedStateBackend`] is the small, byte-level core a backend implements:
//! the current key, raw value/list/map operations on the current key and
//! the state's current namespace, key listing, and the two-phase snapshot.
//! Everything typed (serializers, TTL, reducing and aggregating, namespace
//! merging) is written once on top of it in
//! [`KeyedStateBackendExt`](crate::KeyedStateBackendExt), so every backend
//! behaves the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::descriptor::{StateId, StateMeta};
use crate::error::{Error, Result};
use crate::keygroup::{check_parallelism, KeyGroupRange};
use crate::serializer::{default_serializer, SharedSerializer};
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
use crate::storage::CheckpointLocation;
use crate::ttl::{SharedClock, StateTtlConfig, SystemClock};

/// What a backend can do; the conformance suite reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BackendCapabilities {
    /// Checkpoints upload only what changed since the last completed one.
    pub incremental_checkpoints: bool,
    /// Completed checkpoints are also kept locally for fast recovery.
    pub local_recovery: bool,
    /// TTL incremental cleanup (checks entries on access).
    pub ttl_incremental_cleanup: bool,
    /// TTL cleanup during compaction.
    pub ttl_compaction_filter: bool,
}

impl BackendCapabilities {
    /// No optional capability.
    pub fn none() -> Self {
        Self::default()
    }

    /// With TTL incremental cleanup.
    pub fn with_ttl_incremental_cleanup(mut self) -> Self {
        self.ttl_incremental_cleanup = true;
        self
    }

    /// With TTL compaction-filter cleanup.
    pub fn with_ttl_compaction_filter(mut self) -> Self {
        self.ttl_compaction_filter = true;
        self
    }

    /// With incremental checkpoints.
    pub fn with_incremental_checkpoints(mut self) -> Self {
        self.incremental_checkpoints = true;
        self
    }

    /// With local recovery.
    pub fn with_local_recovery(mut self) -> Self {
        self.local_recovery = true;
        self
    }
}

/// What to do with a map entry during [`KeyedStateBackend::raw_map_for_each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapVisit {
    /// Keep it and go on.
    Keep,
    /// Remove it (writes through to the state) and go on.
    Remove,
    /// Keep it and stop iterating.
    Stop,
}

/// The callback of [`KeyedStateBackend::raw_map_for_each`]: sees each
/// (user key, value) and says what to do with it.
pub type MapVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<MapVisit> + 'a;

/// The callback of [`KeyedStateBackend::raw_for_each_key`]: sees each (key, namespace).
pub type KeyVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The serialized current key and its key group: what every backend keeps
/// between `set_current_key` and the state accesses that follow.
#[derive(Debug, Default, Clone)]
pub struct CurrentKey {
    bytes: Vec<u8>,
    key_group: Option<u32>,
}

impl CurrentKey {
    /// Serializes `key` and finds its key group, which must be in `range`.
    /// On error no key is current.
    pub fn set<K>(
        &mut self,
        serializer: &SharedSerializer<K>,
        key: &K,
        range: KeyGroupRange,
        max_parallelism: u32,
    ) -> Result<u32> {
        self.bytes.clear();
        self.key_group = None;
        serializer
            .serialize(key, &mut self.bytes)
            .map_err(|e| e.context("serializing the current key"))?;
        self.locate(range, max_parallelism)
    }

    /// Makes the serialized `key` current.
    pub fn set_bytes(&mut self, key: &[u8], range: KeyGroupRange, max_parallelism: u32) -> Result<u32> {
        self.bytes.clear();
        self.bytes.extend_from_slice(key);
        self.locate(range, max_parallelism)
    }

    fn locate(&mut self, range: KeyGroupRange, max_parallelism: u32) -> Result<u32> {
        let kg = crate::keygroup::key_group_for_key_bytes(&self.bytes, max_parallelism);
        if !range.contains(kg) {
            self.key_group = None;
            return Err(Error::invalid(format!(
                "key of key group {kg} is outside this backend's key groups {range}"
            )));
        }
        self.key_group = Some(kg);
        Ok(kg)
    }

    /// The serialized current key, if one is set.
    #[inline]
    pub fn bytes(&self) -> Option<&[u8]> {
        self.key_group.map(|_| &self.bytes[..])
    }

    /// The current key's key group, if one is set.
    #[inline]
    pub fn key_group(&self) -> Option<u32> {
        self.key_group
    }
}

/// What every backend is built from: its key groups, key serializer and clock.
pub struct KeyedBackendConfig<K> {
    /// The key groups this backend owns.
    pub key_group_range: KeyGroupRange,
    /// The job's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// Serializer of the key type.
    pub key_serializer: SharedSerializer<K>,
    /// Clock for TTL.
    pub clock: SharedClock,
}

impl<K> Clone for KeyedBackendConfig<K> {
    fn clone(&self) -> Self {
        KeyedBackendConfig {
            key_group_range: self.key_group_range,
            max_parallelism: self.max_parallelism,
            key_serializer: Arc::clone(&self.key_serializer),
            clock: Arc::clone(&self.clock),
        }
    }
}

impl<K> std::fmt::Debug for KeyedBackendConfig<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBackendConfig")
            .field("key_group_range", &self.key_group_range)
            .field("max_parallelism", &self.max_parallelism)
            .field("key_serializer", &self.key_serializer.id())
            .field("clock", &self.clock)
            .finish()
    }
}

impl<K: Serialize + DeserializeOwned + 'static> KeyedBackendConfig<K> {
    /// Owns `key_group_range` of a job with `max_parallelism`; keys are
    /// serialized with bincode, TTL uses the system clock.
    pub fn new(key_group_range: KeyGroupRange, max_parallelism: u32) -> Self {
        Self::with_key_serializer(key_group_range, max_parallelism, default_serializer::<K>())
    }
}

impl<K> KeyedBackendConfig<K> {
    /// As [`new`](KeyedBackendConfig::new), with an explicit key serializer.
    pub fn with_key_serializer(
        key_group_range: KeyGroupRange,
        max_parallelism: u32,
        key_serializer: SharedSerializer<K>,
    ) -> Self {
        KeyedBackendConfig {
            key_group_range,
            max_parallelism,
            key_serializer,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for TTL.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the range against the max parallelism.
    pub fn validate(&self) -> Result<()> {
        check_parallelism(self.max_parallelism, 1)?;
        if self.key_group_range.end() > self.max_parallelism {
            return Err(Error::invalid(format!(
                "key-group range {} exceeds max parallelism {}",
                self.key_group_range, self.max_parallelism
            )));
        }
        Ok(())
    }
}

static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique backend id, so handles of one backend are refused by another.
pub fn next_backend_id() -> u64 {
    NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed)
}

/// The byte-level contract of a keyed state backend.
///
/// All state operations act on the current key (set with
/// [`set_current_key`](KeyedStateBackend::set_current_key)) and the state's
/// current namespace (set with
/// [`set_namespace_bytes`](KeyedStateBackend::set_namespace_bytes); empty,
/// the void namespace, until set). Use the typed methods of
/// [`KeyedStateBackendExt`](crate::KeyedStateBackendExt) rather than these.
pub trait KeyedStateBackend: Send {
    /// The key type.
    type Key;

    /// This backend's process-unique id.
    fn backend_id(&self) -> u64;
    /// The key groups it owns.
    fn key_group_range(&self) -> KeyGroupRange;
    /// The job's max parallelism.
    fn max_parallelism(&self) -> u32;
    /// The key serializer.
    fn key_serializer(&self) -> &SharedSerializer<Self::Key>;
    /// The TTL clock.
    fn clock(&self) -> &SharedClock;
    /// What it can do.
    fn capabilities(&self) -> BackendCapabilities;

    /// Registers a state, or returns the id of a compatible state of the
    /// same name (registered before or restored). Fails with
    /// `Incompatible` when a restored state of that name differs in kind,
    /// serializers or TTL.
    fn register_state(&mut self, meta: StateMeta, ttl: Option<StateTtlConfig>) -> Result<StateId>;
    /// Every state the backend holds, registered or restored.
    fn states(&self) -> Vec<StateMeta>;

    /// Sets the current key: serialized once, its key group computed once.
    fn set_current_key(&mut self, key: &Self::Key) -> Result<()>;
    /// Sets the current key from its serialized bytes.
    fn set_current_key_bytes(&mut self, key: &[u8]) -> Result<()>;
    /// The serialized current key, if one is set.
    fn current_key_bytes(&self) -> Option<&[u8]>;
    /// Sets the current namespace of `state`.
    fn set_namespace_bytes(&mut self, state: StateId, namespace: &[u8]) -> Result<()>;

    /// The value (or accumulator) of `state`.
    fn raw_value_get(&mut self, state: StateId) -> Result<Option<Bytes>>;
    /// Replaces the value of `state`.
    fn raw_value_put(&mut self, state: StateId, value: Bytes) -> Result<()>;
    /// Removes whatever `state` holds for the current key and namespace.
    fn raw_clear(&mut self, state: StateId) -> Result<()>;

    /// Calls `f` with each element of the list, in order.
    fn raw_list_get(&mut self, state: StateId, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
    /// Appends one element.
    fn raw_list_append(&mut self, state: StateId, element: Bytes) -> Result<()>;
    /// Appends elements; nothing to append is a no-op.
    fn raw_list_append_all(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()>;
    /// Replaces the list; an empty list clears it.
    fn raw_list_replace(&mut self, state: StateId, elements: Vec<Bytes>) -> Result<()>;

    /// The value under `user_key`.
    fn raw_map_get(&mut self, state: StateId, user_key: &[u8]) -> Result<Option<Bytes>>;
    /// Puts a map entry.
    fn raw_map_put(&mut self, state: StateId, user_key: Bytes, value: Bytes) -> Result<()>;
    /// Removes a map entry.
    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()>;
    /// True when the map has no entry.
    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool>;
    /// Visits each entry; `f` decides whether to keep, remove or stop.
    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()>;

    /// Calls `f(key, namespace)` for each key and namespace that holds
    /// `state`, only in `namespace` if given.
    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()>;
    /// The exact number of (key, namespace) pairs holding `state`.
    fn raw_entry_count(&mut self, state: StateId) -> Result<u64>;

    /// The synchronous phase of a snapshot: captures an immutable view of
    /// all state and returns the asynchronous phase, which writes it to
    /// `location`. Writes made after this returns are not in the snapshot.
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<dyn CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot>;

    /// Checkpoint `checkpoint_id` is complete (its metadata is written).
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }

    /// Checkpoint `checkpoint_id` was aborted and must never be used as a base.
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
}
