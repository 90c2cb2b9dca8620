//! The bookkeeping every keyed state backend shares, written once.
//!
//! A [`BackendCore`] holds what does not depend on how a backend stores
//! bytes: its configuration (key groups, max parallelism, key serializer,
//! clock), its process-unique id, the current key, and the state registry
//! (name → [`StateId`], each state's [`StateMetaInfo`], TTL config, whether it
//! was registered in this run or only restored, its current namespace, and
//! the backend's own storage of it, an `S`).
//! [`KeyedStateBackend`](crate::KeyedStateBackend) derives every accessor,
//! the current key, namespaces and registration from it, so a backend only
//! implements storage.

use std::collections::HashMap;

use crate::backend::{next_backend_id, CurrentKey, KeyedBackendConfig};
use crate::descriptor::{validate_state_name, StateId, StateMetaInfo};
use crate::error::{Error, Result};
use crate::format::canonical::{SnapshotHeader, TtlFilter};
use crate::keygroup::KeyGroupRange;
use crate::serializer::SharedSerializer;
use crate::ttl::{SharedClock, StateTtlConfig};

/// One state of a backend's registry, with the backend's storage of it
/// (an `S`).
#[derive(Debug, Clone)]
pub struct RegisteredState<S> {
    meta: StateMetaInfo,
    ttl: Option<StateTtlConfig>,
    registered: bool,
    namespace: Vec<u8>,
    storage: S,
}

impl<S> RegisteredState<S> {
    /// The state's name, kind and serializers.
    #[inline]
    pub fn meta(&self) -> &StateMetaInfo {
        &self.meta
    }

    /// Its TTL config, as last registered in this run (`None` until then).
    #[inline]
    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }

    /// True once registered in this run; false while only restored.
    #[inline]
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// The namespace its operations act in (empty, the void namespace,
    /// until set).
    #[inline]
    pub fn namespace(&self) -> &[u8] {
        &self.namespace
    }

    /// The backend's storage of this state.
    #[inline]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The backend's storage of this state, mutably.
    #[inline]
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }
}

/// What one state access acts on: the current key, its key group, and the
/// state with its current namespace. See [`BackendCore::access`].
#[derive(Debug)]
pub struct StateAccess<'a, S> {
    /// The current key's key group.
    pub key_group: u32,
    /// The serialized current key.
    pub key: &'a [u8],
    /// The state accessed.
    pub state: &'a RegisteredState<S>,
}

impl<S> Clone for StateAccess<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for StateAccess<'_, S> {}

/// What one state access acts on, with the backend's storage of the state
/// borrowed mutably. See [`BackendCore::access_mut`].
#[derive(Debug)]
pub struct StateAccessMut<'a, S> {
    /// The current key's key group.
    pub key_group: u32,
    /// The serialized current key.
    pub key: &'a [u8],
    /// The state's name, kind and serializers.
    pub meta: &'a StateMetaInfo,
    /// Its TTL config, as registered in this run.
    pub ttl: Option<&'a StateTtlConfig>,
    /// Its current namespace.
    pub namespace: &'a [u8],
    /// The backend's storage of it.
    pub storage: &'a mut S,
    /// The TTL clock.
    pub clock: &'a SharedClock,
}

/// The bookkeeping shared by every keyed state backend: config, backend
/// id, current key and state registry. A backend owns one and hands it out
/// through [`KeyedStateBackend::core`](crate::KeyedStateBackend::core).
///
/// The registry keeps, beside each state's metadata, the backend's storage
/// of that state (an `S`, created by
/// [`KeyedStateBackend::create_state_storage`](crate::KeyedStateBackend::create_state_storage)):
/// state ids are given out here and nowhere else, and a backend reaches a
/// state's storage with [`access_mut`](Self::access_mut) or
/// [`storage_mut`](Self::storage_mut).
pub struct BackendCore<K, S> {
    id: u64,
    config: KeyedBackendConfig<K>,
    current: CurrentKey,
    states: Vec<RegisteredState<S>>,
    by_name: HashMap<String, StateId>,
    /// Reused by the typed layer to encode values, so a write allocates
    /// nothing.
    pub(crate) buffer: Vec<u8>,
}

impl<K, S> std::fmt::Debug for BackendCore<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCore")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("states", &self.states.iter().map(|s| &s.meta.name).collect::<Vec<_>>())
            .finish()
    }
}

impl<K, S> BackendCore<K, S> {
    /// The core of a new backend with `config` (validated) and a fresh
    /// process-unique id; no state, no current key.
    pub fn new(config: KeyedBackendConfig<K>) -> Result<Self> {
        config.validate()?;
        Ok(BackendCore {
            id: next_backend_id(),
            config,
            current: CurrentKey::default(),
            states: Vec::new(),
            by_name: HashMap::new(),
            buffer: Vec::new(),
        })
    }

    /// The backend's process-unique id.
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The config the backend was built with.
    #[inline]
    pub fn config(&self) -> &KeyedBackendConfig<K> {
        &self.config
    }

    /// The key groups the backend owns.
    #[inline]
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.config.key_group_range
    }

    /// The job's max parallelism.
    #[inline]
    pub fn max_parallelism(&self) -> u32 {
        self.config.max_parallelism
    }

    /// The key serializer.
    #[inline]
    pub fn key_serializer(&self) -> &SharedSerializer<K> {
        &self.config.key_serializer
    }

    /// The TTL clock.
    #[inline]
    pub fn clock(&self) -> &SharedClock {
        &self.config.clock
    }

    // ------------------------------------------------------------ current key

    /// The current key.
    #[inline]
    pub fn current_key(&self) -> &CurrentKey {
        &self.current
    }

    /// Makes `key` current (serialized once) and returns its key group. On
    /// error no key is current.
    #[inline]
    pub fn set_current_key(&mut self, key: &K) -> Result<u32> {
        let c = &self.config;
        self.current
            .set(&c.key_serializer, key, c.key_group_range, c.max_parallelism)
    }

    /// Makes no key current.
    pub fn clear_current_key(&mut self) {
        self.current.clear();
    }

    /// Makes the serialized `key` current and returns its key group. On
    /// error no key is current.
    pub fn set_current_key_bytes(&mut self, key: &[u8]) -> Result<u32> {
        let c = &self.config;
        self.current.set_bytes(key, c.key_group_range, c.max_parallelism)
    }

    /// Makes the serialized `key`, of `key_group` (computed before), current
    /// without hashing it again. On error (a key group outside the
    /// backend's) no key is current.
    #[inline]
    pub fn set_current_key_located(&mut self, key: &[u8], key_group: u32) -> Result<()> {
        self.current.set_located(key, key_group, self.config.key_group_range)
    }

    /// The current key, its key group and `state` with its namespace: what
    /// a state operation needs. Fails without a current key or for an
    /// unknown state.
    #[inline]
    pub fn access(&self, state: StateId) -> Result<StateAccess<'_, S>> {
        let (key_group, key) = self.current.get()?;
        Ok(StateAccess {
            key_group,
            key,
            state: self.state(state)?,
        })
    }

    /// As [`access`](Self::access), with the backend's storage of `state`
    /// borrowed mutably.
    #[inline]
    pub fn access_mut(&mut self, state: StateId) -> Result<StateAccessMut<'_, S>> {
        let (key_group, key) = self.current.get()?;
        let s = self.states.get_mut(state as usize).ok_or_else(|| no_state(state))?;
        Ok(StateAccessMut {
            key_group,
            key,
            meta: &s.meta,
            ttl: s.ttl.as_ref(),
            namespace: &s.namespace,
            storage: &mut s.storage,
            clock: &self.config.clock,
        })
    }

    /// The state `state` and the current key at once, for an operation
    /// that may or may not need a current key.
    #[inline]
    pub fn state_and_current_key(&mut self, state: StateId) -> Result<(&mut RegisteredState<S>, &CurrentKey)> {
        let s = self.states.get_mut(state as usize).ok_or_else(|| no_state(state))?;
        Ok((s, &self.current))
    }

    // ------------------------------------------------------------ registry

    /// The state with id `state`.
    #[inline]
    pub fn state(&self, state: StateId) -> Result<&RegisteredState<S>> {
        self.states.get(state as usize).ok_or_else(|| no_state(state))
    }

    /// The state with id `state`, mutably (its storage; the registry entry
    /// itself changes only through the core).
    #[inline]
    pub fn state_mut(&mut self, state: StateId) -> Result<&mut RegisteredState<S>> {
        self.states.get_mut(state as usize).ok_or_else(|| no_state(state))
    }

    /// The backend's storage of `state`, mutably.
    #[inline]
    pub fn storage_mut(&mut self, state: StateId) -> Result<&mut S> {
        self.states
            .get_mut(state as usize)
            .map(|s| &mut s.storage)
            .ok_or_else(|| no_state(state))
    }

    /// Every state, registered or restored, indexed by [`StateId`].
    #[inline]
    pub fn states(&self) -> &[RegisteredState<S>] {
        &self.states
    }

    /// Every state, mutably (its storage; the registry itself is fixed).
    #[inline]
    pub fn states_mut(&mut self) -> impl Iterator<Item = &mut RegisteredState<S>> {
        self.states.iter_mut()
    }

    /// The metadata of every state, in id order (the order a snapshot
    /// lists them in).
    pub fn metas(&self) -> Vec<StateMetaInfo> {
        self.states.iter().map(|s| s.meta.clone()).collect()
    }

    /// The id of the state named `name`, if the backend holds it.
    pub fn find(&self, name: &str) -> Option<StateId> {
        self.by_name.get(name).copied()
    }

    /// Sets the namespace `state`'s operations act in.
    pub fn set_namespace(&mut self, state: StateId, namespace: &[u8]) -> Result<()> {
        let s = self.states.get_mut(state as usize).ok_or_else(|| no_state(state))?;
        s.namespace.clear();
        s.namespace.extend_from_slice(namespace);
        Ok(())
    }

    /// Before registering `meta`: checks its name, and returns the id of the
    /// state of that name if there is one. Fails with `Incompatible` when
    /// that state (registered before, or restored) differs in kind,
    /// serializers or TTL.
    pub fn check_registration(&self, meta: &StateMetaInfo) -> Result<Option<StateId>> {
        validate_state_name(&meta.name)?;
        let Some(id) = self.find(&meta.name) else {
            return Ok(None);
        };
        let state = &self.states[id as usize];
        if let Some(why) = meta.incompatibility(&state.meta) {
            let was = if state.registered { "registered" } else { "restored" };
            return Err(Error::incompatible(format!(
                "state {:?} was {was} differently: {why}",
                meta.name
            )));
        }
        Ok(Some(id))
    }

    /// Before restoring state `meta` from `source` (a snapshot's name, for
    /// errors): returns the id of the state of that name if there is one.
    /// Fails with `Incompatible` when it differs from `meta` (the same state
    /// in another handle).
    pub fn check_restored(&self, meta: &StateMetaInfo, source: &str) -> Result<Option<StateId>> {
        let Some(id) = self.find(&meta.name) else {
            return Ok(None);
        };
        if let Some(why) = self.states[id as usize].meta.incompatibility(meta) {
            return Err(Error::incompatible(format!(
                "{source}: state {:?} differs from the same state in another handle: {why}",
                meta.name
            )));
        }
        Ok(Some(id))
    }

    /// Adds a state, not yet registered in this run, with the backend's
    /// `storage` of it, and returns its id: ids are given out in order from
    /// 0. Fails when a state of that name exists (check with
    /// [`find`](Self::find) or the `check_` methods first).
    pub fn add_state(&mut self, meta: StateMetaInfo, storage: S) -> Result<StateId> {
        let id = StateId::try_from(self.states.len())
            .map_err(|_| Error::invalid(format!("state {:?}: too many states", meta.name)))?;
        match self.by_name.entry(meta.name.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err(Error::internal(format!("state {:?} is held already", meta.name)))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        self.states.push(RegisteredState {
            meta,
            ttl: None,
            registered: false,
            namespace: Vec::new(),
            storage,
        });
        Ok(id)
    }

    /// Records that the values of `state` are now written by the serializer
    /// `value_serializer` (after a migration): snapshots carry it from now
    /// on.
    pub fn set_value_serializer(
        &mut self,
        state: StateId,
        value_serializer: crate::serializer::SerializerId,
    ) -> Result<()> {
        let s = self.states.get_mut(state as usize).ok_or_else(|| no_state(state))?;
        s.meta.value_serializer = value_serializer;
        Ok(())
    }

    /// Marks `state` registered in this run, with `ttl`.
    pub fn mark_registered(&mut self, state: StateId, ttl: Option<StateTtlConfig>) -> Result<()> {
        let s = self.states.get_mut(state as usize).ok_or_else(|| no_state(state))?;
        s.registered = true;
        s.ttl = ttl;
        Ok(())
    }

    /// The header of a canonical snapshot of every state.
    pub fn snapshot_header(&self, compressed: bool) -> SnapshotHeader {
        SnapshotHeader {
            range: self.config.key_group_range,
            max_parallelism: self.config.max_parallelism,
            key_serializer: self.config.key_serializer.id(),
            states: self.metas(),
            compressed,
        }
    }

    /// What a full snapshot taken now leaves out: per state, in id order,
    /// the TTL of states configured to drop expired entries from full
    /// snapshots.
    pub fn ttl_filter(&self) -> TtlFilter {
        TtlFilter {
            ttl_millis: self
                .states
                .iter()
                .map(|s| s.ttl.filter(|t| t.cleanup().full_snapshot).map(|t| t.ttl_millis()))
                .collect(),
            now: self.config.clock.now_millis(),
        }
    }
}

fn no_state(state: StateId) -> Error {
    Error::invalid(format!("no state with id {state}"))
}
