//! For backend authors: the keyed state backend contract and the code every
//! backend shares.
//!
//! [`KeyedStateBackend`] is the small, byte-level core a backend implements:
//! raw value/list/map operations on the current key and the state's
//! current namespace, key listing, and the two-phase snapshot. The
//! bookkeeping every backend needs (config, current key, state registry)
//! is the shared [`BackendCore`].
//! Everything typed (serializers, TTL, reducing and aggregating, namespace
//! merging) is written once on top of it in
//! [`KeyedStateBackendExt`](crate::KeyedStateBackendExt), so every backend
//! behaves the same.
//!
//! - this module: [`KeyedStateBackend`], [`BackendFactory`],
//!   [`KeyedBackendConfig`], [`BackendCapabilities`], the current key and
//!   the key and map visitors;
//! - `core.rs`: [`BackendCore`], with [`StateAccess`], [`StateAccessMut`] and [`RegisteredState`];
//! - re-exported from [`runtime`](crate::runtime): [`run_blocking`] and
//!   [`run_detached`], for file I/O, RocksDB and compression off the async
//!   executor;
//! - re-exported from the state descriptors: the registry's types
//!   ([`StateId`], [`StateRef`], [`StateMetaInfo`], [`StateKind`],
//!   [`StorageKind`]) and the state-name check.
//!
//! Backends write their full snapshots and savepoints in the canonical
//! format of [`format::canonical`](crate::format::canonical).

mod core;

pub use self::core::{BackendCore, RegisteredState, StateAccess, StateAccessMut};
pub use crate::descriptor::{
    validate_state_name, StateId, StateKind, StateMetaInfo, StateRef, StorageKind, MAX_STATE_NAME_LEN,
};
pub use crate::runtime::{run_blocking, run_detached};
pub use crate::snapshot::AsyncOutput;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{CheckpointLocation, KeyedStateHandle, StateReader};
use crate::error::{Error, Result};
use crate::keygroup::{check_parallelism, KeyGroupRange};
use crate::serializer::{default_serializer, SharedSerializer};
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
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
    /// Stores timers ([`TimerService`](crate::TimerService)); without it the
    /// `raw_timer_*` methods are `Unsupported`.
    pub timers: bool,
    /// Disaggregated: the state's primary copy lives outside the checkpoint
    /// storage (in the backend's own databases in object storage), so a
    /// checkpoint writes a reference that pins it rather than the state,
    /// and the checkpoint storage's files and size limits do not apply to
    /// the state.
    pub disaggregated: bool,
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

    /// With timers.
    pub fn with_timers(mut self) -> Self {
        self.timers = true;
        self
    }

    /// Disaggregated state.
    pub fn with_disaggregated_state(mut self) -> Self {
        self.disaggregated = true;
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

/// A timer as a backend stores it: `(timestamp, serialized key, serialized namespace)`.
pub type RawTimer = (i64, Vec<u8>, Vec<u8>);

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

    /// Makes the serialized `key`, already known to be of `key_group`,
    /// current, without hashing it again; `key_group` must be in `range`.
    pub fn set_located(&mut self, key: &[u8], key_group: u32, range: KeyGroupRange) -> Result<()> {
        self.bytes.clear();
        self.bytes.extend_from_slice(key);
        self.key_group = None;
        check_key_group(key_group, range)?;
        self.key_group = Some(key_group);
        Ok(())
    }

    fn locate(&mut self, range: KeyGroupRange, max_parallelism: u32) -> Result<u32> {
        self.key_group = None;
        let kg = locate_key(&self.bytes, range, max_parallelism)?;
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

    /// Makes no key current.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.key_group = None;
    }

    /// The current key's key group and bytes; fails without a current key.
    #[inline]
    pub fn get(&self) -> Result<(u32, &[u8])> {
        match self.key_group {
            Some(key_group) => Ok((key_group, &self.bytes[..])),
            None => Err(Error::invalid(
                "no current key: call set_current_key before accessing state",
            )),
        }
    }
}

/// The key group of the serialized key `key`, which must be in `range`.
pub(crate) fn locate_key(key: &[u8], range: KeyGroupRange, max_parallelism: u32) -> Result<u32> {
    let kg = crate::keygroup::key_group_for_key_bytes(key, max_parallelism);
    check_key_group(kg, range)?;
    Ok(kg)
}

pub(crate) fn check_key_group(kg: u32, range: KeyGroupRange) -> Result<()> {
    if range.contains(kg) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "key of key group {kg} is outside this backend's key groups {range}"
        )))
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

    /// The key group of `key`, serialized with this config's key serializer
    /// and hashed as a backend built with it does: what an engine routes a
    /// record by.
    ///
    /// ```
    /// use flowstate_api::*;
    /// let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
    /// let subtask = config.operator_index_of(&42, 4)?;
    /// assert!(KeyGroupRange::for_operator(128, 4, subtask)?.contains(config.key_group_of(&42)?));
    /// # Ok::<(), flowstate_api::Error>(())
    /// ```
    pub fn key_group_of(&self, key: &K) -> Result<u32> {
        let mut bytes = Vec::new();
        self.key_serializer.serialize(key, &mut bytes)?;
        Ok(crate::keygroup::key_group_for_key_bytes(&bytes, self.max_parallelism))
    }

    /// The subtask, of `parallelism`, whose backend holds `key`: where an
    /// engine sends a record of that key (Flink's `KeyGroupStreamPartitioner`).
    pub fn operator_index_of(&self, key: &K, parallelism: u32) -> Result<u32> {
        check_parallelism(self.max_parallelism, parallelism)?;
        let key_group = self.key_group_of(key)?;
        Ok(crate::keygroup::operator_index_for_key_group(
            self.max_parallelism,
            parallelism,
            key_group,
        ))
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
pub(crate) fn next_backend_id() -> u64 {
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
///
/// # Implementing a backend
///
/// A backend stores bytes; the bookkeeping (config, backend id, current
/// key, the state registry with its compatibility checks, namespaces, TTL
/// config) lives in a [`BackendCore`] it owns and hands out through
/// [`core`](Self::core) and [`core_mut`](Self::core_mut). The required
/// methods are those two, [`capabilities`](Self::capabilities), the hook
/// that creates storage for a new state
/// ([`create_state_storage`](Self::create_state_storage), which returns a
/// [`StateStorage`](Self::StateStorage) the core keeps, so state ids and
/// per-state lookups are the core's), the byte-level
/// value, list and map operations, key listing and the snapshot. Every
/// other method has a default derived from these; a backend may override
/// [`raw_list_append_all`](Self::raw_list_append_all),
/// [`raw_map_is_empty`](Self::raw_map_is_empty) and
/// [`raw_entry_count`](Self::raw_entry_count) for speed, and the hooks
/// [`current_key_changed`](Self::current_key_changed) and
/// [`state_registered`](Self::state_registered) to keep its own caches.
///
/// A state operation finds the current key, its key group and the state's
/// namespace with [`BackendCore::access`], which also refuses an access
/// without a current key or to an unknown state.
pub trait KeyedStateBackend: Send {
    /// The key type.
    type Key;
    /// The backend's storage of one state, kept by the core beside the
    /// state's metadata.
    type StateStorage;

    // ------------------------------------------------------------ required

    /// The shared bookkeeping: config, id, current key, state registry.
    fn core(&self) -> &BackendCore<Self::Key, Self::StateStorage>;
    /// The shared bookkeeping, mutably.
    fn core_mut(&mut self) -> &mut BackendCore<Self::Key, Self::StateStorage>;
    /// What it can do.
    fn capabilities(&self) -> BackendCapabilities;

    /// Creates the storage of a new state `meta` (registered, or found in
    /// a snapshot being restored); the core gives the state its id and
    /// keeps the storage once this succeeds.
    fn create_state_storage(&mut self, meta: &StateMetaInfo) -> Result<Self::StateStorage>;

    /// Calls `f` with the value (or accumulator) of `state`, borrowed from
    /// the backend (no copy), or `None`; returns what `f` returns.
    fn raw_value_get<R>(&mut self, state: StateId, f: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R>;
    /// Replaces the value of `state`.
    fn raw_value_put(&mut self, state: StateId, value: &[u8]) -> Result<()>;
    /// Removes whatever `state` holds for the current key and namespace.
    fn raw_clear(&mut self, state: StateId) -> Result<()>;

    /// Calls `f` with each element of the list, in order.
    fn raw_list_get(&mut self, state: StateId, f: impl FnMut(&[u8]) -> Result<()>) -> Result<()>;
    /// Replaces the list; an empty list clears it.
    fn raw_list_replace<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()>;

    /// Calls `f` with the value under `user_key`, borrowed from the backend
    /// (no copy), or `None`; returns what `f` returns.
    fn raw_map_get<R>(
        &mut self,
        state: StateId,
        user_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R>;
    /// Puts a map entry.
    fn raw_map_put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes a map entry.
    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()>;
    /// Visits each entry; `f` decides whether to keep, remove or stop.
    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()>;

    /// Calls `f(key, namespace)` for each key and namespace that holds
    /// `state`, only in `namespace` if given.
    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()>;

    /// The synchronous phase of a snapshot: captures an immutable view of
    /// all state and returns the asynchronous phase, which writes it to
    /// `location`. Writes made after this returns are not in the snapshot.
    ///
    /// Keep the backend alive until the asynchronous phase is done: a
    /// backend dropped (or closed) before then fails it with `Closed` and
    /// discards what it wrote, as Flink cancels the snapshots of a disposed
    /// backend.
    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot>;

    // ------------------------------------------------------------ timers: optional

    // A backend that stores timers overrides these four and declares
    // [`BackendCapabilities::timers`]; the conformance suite runs the timer
    // contracts only then.

    /// Registers the timer `(timestamp, current key, namespace)` of timer
    /// state `state`; a timer that exists is left as it is. By default
    /// timers are unsupported.
    fn raw_timer_register(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let _ = (timestamp, namespace);
        Err(timers_unsupported(self.core(), state))
    }
    /// Deletes the timer `(timestamp, current key, namespace)`; a timer
    /// that does not exist is a no-op.
    fn raw_timer_delete(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let _ = (timestamp, namespace);
        Err(timers_unsupported(self.core(), state))
    }
    /// The timestamp of the first timer of `state`, if any.
    fn raw_timer_peek(&mut self, state: StateId) -> Result<Option<i64>> {
        Err(timers_unsupported(self.core(), state))
    }
    /// Removes and returns the first timer of `state` in the total order
    /// (timestamp, key group, key bytes, namespace bytes) if its timestamp
    /// is at most `time`: `(timestamp, key, namespace)`.
    fn raw_timer_poll(&mut self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        let _ = time;
        Err(timers_unsupported(self.core(), state))
    }

    // ------------------------------------------------------------ derived from the core

    /// This backend's process-unique id.
    #[inline]
    fn backend_id(&self) -> u64 {
        self.core().id()
    }
    /// The key groups it owns.
    fn key_group_range(&self) -> KeyGroupRange {
        self.core().key_group_range()
    }
    /// The job's max parallelism.
    fn max_parallelism(&self) -> u32 {
        self.core().max_parallelism()
    }
    /// The key serializer.
    fn key_serializer(&self) -> &SharedSerializer<Self::Key> {
        self.core().key_serializer()
    }
    /// The TTL clock.
    #[inline]
    fn clock(&self) -> &SharedClock {
        self.core().clock()
    }

    /// Registers a state, or returns the id of a compatible state of the
    /// same name (registered before or restored). Fails with
    /// `Incompatible` when a restored state of that name differs in kind,
    /// serializers or TTL.
    fn register_state(&mut self, meta: StateMetaInfo, ttl: Option<StateTtlConfig>) -> Result<StateId> {
        let id = match self.core().check_registration(&meta)? {
            Some(id) => id,
            None => {
                let storage = self.create_state_storage(&meta)?;
                self.core_mut().add_state(meta, storage)?
            }
        };
        self.core_mut().mark_registered(id, ttl)?;
        self.state_registered(id)?;
        Ok(id)
    }
    /// Every state the backend holds, registered or restored.
    fn states(&self) -> Vec<StateMetaInfo> {
        self.core().metas()
    }

    /// Sets the current key: serialized once, its key group computed once.
    #[inline]
    fn set_current_key(&mut self, key: &Self::Key) -> Result<()> {
        let key_group = self.core_mut().set_current_key(key)?;
        self.current_key_changed(key_group)
    }
    /// Sets the current key from its serialized bytes.
    fn set_current_key_bytes(&mut self, key: &[u8]) -> Result<()> {
        let key_group = self.core_mut().set_current_key_bytes(key)?;
        self.current_key_changed(key_group)
    }
    /// Sets the current key from its serialized bytes and its key group,
    /// computed before (an asynchronous request carries both), without
    /// hashing the key again.
    #[inline]
    fn set_current_key_located(&mut self, key: &[u8], key_group: u32) -> Result<()> {
        self.core_mut().set_current_key_located(key, key_group)?;
        self.current_key_changed(key_group)
    }
    /// The serialized current key, if one is set.
    fn current_key_bytes(&self) -> Option<&[u8]> {
        self.core().current_key().bytes()
    }
    /// Sets the current namespace of `state`.
    #[inline]
    fn set_namespace_bytes(&mut self, state: StateId, namespace: &[u8]) -> Result<()> {
        self.core_mut().set_namespace(state, namespace)
    }

    // ------------------------------------------------------------ derived from the required operations

    /// Appends one element. By default
    /// [`raw_list_append_all`](Self::raw_list_append_all) of one element.
    #[inline]
    fn raw_list_append(&mut self, state: StateId, element: &[u8]) -> Result<()> {
        self.raw_list_append_all(state, std::slice::from_ref(&element))
    }
    /// Appends elements; nothing to append is a no-op. By default reads the
    /// list and replaces it (a backend should override this with a real
    /// append).
    fn raw_list_append_all<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let mut all: Vec<Vec<u8>> = Vec::new();
        self.raw_list_get(state, |e| {
            all.push(e.to_vec());
            Ok(())
        })?;
        all.extend(elements.iter().map(|e| e.as_ref().to_vec()));
        self.raw_list_replace(state, &all)
    }
    /// Puts map entries, in order (a later entry of the same user key wins).
    /// By default one [`raw_map_put`](Self::raw_map_put) each; a backend
    /// may write them at once.
    fn raw_map_put_all(&mut self, state: StateId, entries: &[(&[u8], &[u8])]) -> Result<()> {
        for (user_key, value) in entries {
            self.raw_map_put(state, user_key, value)?;
        }
        Ok(())
    }
    /// True when the map has no entry. By default visits the first entry.
    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        let mut empty = true;
        self.raw_map_for_each(state, &mut |_, _| {
            empty = false;
            Ok(MapVisit::Stop)
        })?;
        Ok(empty)
    }
    /// The exact number of (key, namespace) pairs holding `state`. By
    /// default counts the visits of
    /// [`raw_for_each_key`](Self::raw_for_each_key).
    fn raw_entry_count(&mut self, state: StateId) -> Result<u64> {
        let mut n = 0;
        self.raw_for_each_key(state, None, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Rewrites every value of `state` with `migrate`: values, list
    /// elements, map values and accumulators, each without its TTL
    /// timestamp (kept as it is). What registering a restored state with a
    /// serializer that migrates from the one it was written with does (see
    /// [`SchemaCompatibility`](crate::serializer::SchemaCompatibility)).
    /// The current key and the state's namespace are left as they were.
    ///
    /// Every value is first migrated without being written, so a value that
    /// does not migrate fails the whole migration with nothing rewritten.
    /// By default visits every key and namespace through the byte-level
    /// operations; a backend may override it with a native rewrite.
    fn raw_migrate_values(&mut self, state: StateId, migrate: &mut dyn FnMut(&[u8]) -> Result<Vec<u8>>) -> Result<()> {
        let entry = self.core().state(state)?;
        let (kind, ttl, namespace) = (
            entry.meta().kind.storage(),
            entry.meta().ttl,
            entry.namespace().to_vec(),
        );
        let current = self.core().current_key().bytes().map(<[u8]>::to_vec);
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.raw_for_each_key(state, None, &mut |key, ns| {
            pairs.push((key.to_vec(), ns.to_vec()));
            Ok(())
        })?;
        // One value, its TTL timestamp kept.
        let mut rewrite = |bytes: &[u8]| -> Result<Vec<u8>> {
            if !ttl {
                return migrate(bytes);
            }
            let (timestamp, user) = crate::ttl::split_ttl_value(bytes)?;
            let mut out = Vec::with_capacity(bytes.len());
            crate::ttl::put_ttl_timestamp(&mut out, timestamp);
            out.extend_from_slice(&migrate(user)?);
            Ok(out)
        };
        // Every value is migrated once without writing, so that a value
        // that does not migrate fails the whole migration before anything
        // is rewritten; then again, written.
        let mut migrated = Ok(());
        'passes: for write in [false, true] {
            for (key, ns) in &pairs {
                let result = (|| -> Result<()> {
                    self.core_mut().set_current_key_bytes(key)?;
                    self.core_mut().set_namespace(state, ns)?;
                    match kind {
                        StorageKind::Value => {
                            let new = self.raw_value_get(state, |v| v.map(&mut rewrite).transpose())?;
                            if let (true, Some(new)) = (write, new) {
                                self.raw_value_put(state, &new)?;
                            }
                        }
                        StorageKind::List => {
                            let mut elements = Vec::new();
                            self.raw_list_get(state, |e| {
                                elements.push(rewrite(e)?);
                                Ok(())
                            })?;
                            if write {
                                self.raw_list_replace(state, &elements)?;
                            }
                        }
                        StorageKind::Map => {
                            let mut entries = Vec::new();
                            self.raw_map_for_each(state, &mut |user_key, value| {
                                entries.push((user_key.to_vec(), rewrite(value)?));
                                Ok(MapVisit::Keep)
                            })?;
                            let entries: Vec<(&[u8], &[u8])> =
                                entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                            if write {
                                self.raw_map_put_all(state, &entries)?;
                            }
                        }
                        StorageKind::Timers => {}
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    migrated = Err(e);
                    break 'passes;
                }
            }
        }
        // The current key and namespace as they were, whatever happened.
        let core = self.core_mut();
        core.set_namespace(state, &namespace)?;
        match current {
            Some(key) => {
                core.set_current_key_bytes(&key)?;
            }
            None => core.clear_current_key(),
        }
        migrated
    }

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

    /// Compacts all state now, if the backend compacts its storage (an LSM
    /// tree): TTL compaction-filter cleanup runs over every entry, and the
    /// files of later incremental checkpoints replace those of earlier ones.
    /// What the conformance suite calls to observe both. By default nothing
    /// to do.
    fn compact(&mut self) -> Result<()> {
        Ok(())
    }

    // ------------------------------------------------------------ for implementations

    /// Hook: the current key changed to one of `key_group` (it is in
    /// [`BackendCore::current_key`]). Runs once per record: keep it cheap.
    #[inline]
    fn current_key_changed(&mut self, key_group: u32) -> Result<()> {
        let _ = key_group;
        Ok(())
    }

    /// Hook: `state` was registered (new, restored or registered again);
    /// its TTL config in the core may have changed.
    fn state_registered(&mut self, state: StateId) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// For implementations restoring a snapshot named `source`: the id of
    /// the state `meta` of the snapshot goes into, creating its storage if
    /// the backend does not hold it yet. Fails with `Incompatible` when a
    /// state of that name differs from `meta`.
    fn restore_state(&mut self, meta: &StateMetaInfo, source: &str) -> Result<StateId> {
        if let Some(id) = self.core().check_restored(meta, source)? {
            return Ok(id);
        }
        let storage = self.create_state_storage(meta)?;
        self.core_mut().add_state(meta.clone(), storage)
    }

    /// For implementations restoring the canonical snapshot `name`: checks
    /// its header against this backend (max parallelism, key serializer),
    /// then gives the id of each of its states, in header order.
    fn restore_header(
        &mut self,
        header: &crate::format::canonical::SnapshotHeader,
        name: &str,
    ) -> Result<Vec<StateId>> {
        let (serializer, max) = (self.core().key_serializer().id(), self.core().max_parallelism());
        crate::format::canonical::check_compatible(header, &serializer, max, name)?;
        let source = format!("snapshot {name}");
        header
            .states
            .iter()
            .map(|meta| self.restore_state(meta, &source))
            .collect()
    }
}

fn timers_unsupported<K, S>(core: &BackendCore<K, S>, state: StateId) -> Error {
    let name = core.state(state).map(|s| s.meta().name.clone()).unwrap_or_default();
    Error::unsupported(format!("timer service {name:?}: this backend does not store timers"))
}

/// Creates and restores backends of one kind, so an engine (and the
/// conformance suite) builds and restores any backend the same way.
///
/// ```
/// use flowstate_api::*;
///
/// fn open<B: BackendFactory>(builder: &B) -> Result<B::Backend<u64>> {
///     let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128);
///     builder.build(config)
/// }
/// ```
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend for keys of type `K`.
    type Backend<K: 'static>: KeyedStateBackend<Key = K> + std::fmt::Debug;
    /// A short name, e.g. `heap`.
    fn name(&self) -> &str;
    /// What the backends it builds can do.
    fn capabilities(&self) -> BackendCapabilities;
    /// An empty backend.
    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<Self::Backend<K>>;
    /// A backend restored from `handles` (any number, from any parallelism:
    /// only the key groups of `config` are kept); `reader` reads their
    /// streams.
    fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> impl Future<Output = Result<Self::Backend<K>>> + Send;
}
