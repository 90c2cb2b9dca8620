//! Broadcast state: the typed handle.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use super::store::*;
use crate::checkpoint::DistributionMode;
use crate::descriptor::{MapStateDescriptor, StateDescriptor};
use crate::error::{Error, Result};
use crate::serializer::SharedSerializer;

pub(super) struct BroadcastInner<K, V> {
    pub(super) at: StateRef,
    pub(super) key: SharedSerializer<K>,
    pub(super) value: SharedSerializer<V>,
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

    pub(super) fn context(&self, e: Error) -> Error {
        e.context(format!("broadcast state {:?}", self.name()))
    }

    pub(super) fn encode_key(&self, key: &K) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.0.key.serialize(key, &mut buf).map_err(|e| self.context(e))?;
        Ok(buf)
    }

    pub(super) fn encode_value(&self, value: &V) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.0.value.serialize(value, &mut buf).map_err(|e| self.context(e))?;
        Ok(buf)
    }

    pub(super) fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<(K, V)> {
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

impl OperatorStateStore {
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
}
