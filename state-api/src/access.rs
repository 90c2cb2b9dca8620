//! Typed state access, written once over the byte-level backend contract.
//!
//! Serialization, TTL (timestamps, expiry, update on read, visibility),
//! reducing and aggregating folds and namespace merging all live here, so
//! every backend behaves identically.

use std::borrow::Borrow;

use bytes::Bytes;

use crate::backend::{KeyedStateBackend, MapVisit};
use crate::descriptor::{
    AggregatingState, ListState, MapState, ReducingState, StateDescriptor, StateHandle, StateId, StateSlot, ValueState,
};
use crate::error::{Error, Result};
use crate::serializer::SharedSerializer;
use crate::ttl::{
    put_ttl_timestamp, split_ttl_value, StateTtlConfig, TtlStateVisibility, TtlUpdateType, TTL_TIMESTAMP_LEN,
};

fn state_id<B: KeyedStateBackend + ?Sized>(b: &B, slot: StateSlot, name: &str) -> Result<StateId> {
    if slot.backend == b.backend_id() {
        Ok(slot.id)
    } else {
        Err(Error::invalid(format!(
            "state {name:?} was registered with another backend"
        )))
    }
}

#[inline]
fn encode<T>(ser: &SharedSerializer<T>, value: &T, stamp: Option<u64>, name: &str) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(16);
    if let Some(now) = stamp {
        put_ttl_timestamp(&mut buf, now);
    }
    ser.serialize(value, &mut buf)
        .map_err(|e| e.context(format!("state {name:?}")))?;
    Ok(Bytes::from(buf))
}

#[inline]
fn decode<T>(ser: &SharedSerializer<T>, bytes: &[u8], name: &str) -> Result<T> {
    ser.deserialize(bytes).map_err(|e| e.context(format!("state {name:?}")))
}

fn restamp(now: u64, user: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(TTL_TIMESTAMP_LEN + user.len());
    put_ttl_timestamp(&mut v, now);
    v.extend_from_slice(user);
    Bytes::from(v)
}

#[inline]
fn stamp_time<B: KeyedStateBackend + ?Sized>(b: &B, ttl: Option<&StateTtlConfig>) -> Option<u64> {
    ttl.map(|_| b.clock().now_millis())
}

/// The outcome of a TTL check on one stored entry.
enum TtlRead {
    /// Not expired: user bytes, and whether to restamp them.
    Live(Bytes, bool),
    /// Expired: user bytes, and whether they may still be returned.
    Expired(Bytes, bool),
}

fn check_ttl(ttl: &StateTtlConfig, raw: &Bytes, now: u64, for_read: bool, name: &str) -> Result<TtlRead> {
    let (ts, _) = split_ttl_value(raw).map_err(|e| e.context(format!("state {name:?}")))?;
    let user = raw.slice(TTL_TIMESTAMP_LEN..);
    if ttl.is_expired(ts, now) {
        let visible = for_read && ttl.visibility() == TtlStateVisibility::ReturnExpiredIfNotCleanedUp;
        Ok(TtlRead::Expired(user, visible))
    } else {
        Ok(TtlRead::Live(
            user,
            for_read && ttl.update_type() == TtlUpdateType::OnReadAndWrite,
        ))
    }
}

/// Reads a single value's user bytes under TTL rules. With `for_read`
/// false (a fold is about to overwrite it), expired values read as absent
/// and nothing is restamped.
fn read_value<B: KeyedStateBackend + ?Sized>(
    b: &mut B,
    id: StateId,
    ttl: Option<&StateTtlConfig>,
    for_read: bool,
    name: &str,
) -> Result<Option<Bytes>> {
    let Some(raw) = b.raw_value_get(id)? else {
        return Ok(None);
    };
    let Some(ttl) = ttl else { return Ok(Some(raw)) };
    let now = b.clock().now_millis();
    match check_ttl(ttl, &raw, now, for_read, name)? {
        TtlRead::Live(user, refresh) => {
            if refresh {
                b.raw_value_put(id, restamp(now, &user))?;
            }
            Ok(Some(user))
        }
        TtlRead::Expired(user, visible) => {
            b.raw_clear(id)?;
            Ok(visible.then_some(user))
        }
    }
}

/// Reads a list under TTL rules: expired elements are removed from the
/// state, and refreshed ones restamped. With `for_read`, returns the user
/// bytes of the elements to show; otherwise the stored elements, stamps
/// included, that are still live (for moving them in a merge).
fn read_list<B: KeyedStateBackend + ?Sized>(
    b: &mut B,
    id: StateId,
    ttl: Option<&StateTtlConfig>,
    for_read: bool,
    name: &str,
) -> Result<Vec<Bytes>> {
    let mut raw = Vec::new();
    b.raw_list_get(id, &mut |e| {
        raw.push(Bytes::copy_from_slice(e));
        Ok(())
    })?;
    let Some(ttl) = ttl else { return Ok(raw) };
    let now = b.clock().now_millis();
    let mut out = Vec::with_capacity(raw.len());
    let mut keep = Vec::with_capacity(raw.len());
    let mut changed = false;
    for e in &raw {
        match check_ttl(ttl, e, now, for_read, name)? {
            TtlRead::Live(user, refresh) => {
                if refresh {
                    changed = true;
                    keep.push(restamp(now, &user));
                } else {
                    keep.push(e.clone());
                }
                out.push(if for_read { user } else { e.clone() });
            }
            TtlRead::Expired(user, visible) => {
                changed = true;
                if visible {
                    out.push(user);
                }
            }
        }
    }
    if changed {
        b.raw_list_replace(id, keep)?;
    }
    Ok(out)
}

/// A state whose namespaces can be merged (list, reducing, aggregating), as
/// merging windows need.
pub trait MergeableState: StateHandle {
    /// Folds the state of `sources` into `target` and clears the sources.
    /// Leaves the state's current namespace at `target`.
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()>;
}

impl<V, N> MergeableState for ListState<V, N> {
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()> {
        let id = state_id(b, self.slot(), self.name())?;
        let mut moved = Vec::new();
        for src in sources.iter().filter(|s| s.as_slice() != target) {
            b.set_namespace_bytes(id, src)?;
            moved.extend(read_list(b, id, self.ttl(), false, self.name())?);
            b.raw_clear(id)?;
        }
        b.set_namespace_bytes(id, target)?;
        b.raw_list_append_all(id, moved)
    }
}

/// A state as the merge helpers see it.
struct Merging<'a> {
    id: StateId,
    ttl: Option<&'a StateTtlConfig>,
    name: &'a str,
}

/// Folds the values of `sources` and `target` into `target` with `fold`.
fn merge_values<B, T>(
    b: &mut B,
    st: Merging<'_>,
    ser: &SharedSerializer<T>,
    target: &[u8],
    sources: &[Vec<u8>],
    fold: impl Fn(T, T) -> T,
) -> Result<()>
where
    B: KeyedStateBackend + ?Sized,
{
    let Merging { id, ttl, name } = st;
    let mut acc: Option<T> = None;
    for src in sources.iter().filter(|s| s.as_slice() != target) {
        b.set_namespace_bytes(id, src)?;
        if let Some(bytes) = read_value(b, id, ttl, false, name)? {
            let v = decode(ser, &bytes, name)?;
            acc = Some(match acc {
                Some(a) => fold(a, v),
                None => v,
            });
            b.raw_clear(id)?;
        }
    }
    b.set_namespace_bytes(id, target)?;
    if let Some(merged) = acc {
        let merged = match read_value(b, id, ttl, false, name)? {
            Some(bytes) => fold(decode(ser, &bytes, name)?, merged),
            None => merged,
        };
        let stamp = stamp_time(b, ttl);
        b.raw_value_put(id, encode(ser, &merged, stamp, name)?)?;
    }
    Ok(())
}

impl<V, N> MergeableState for ReducingState<V, N> {
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()> {
        let id = state_id(b, self.slot(), self.name())?;
        let reduce = &self.0.reduce;
        merge_values(
            b,
            Merging {
                id,
                ttl: self.ttl(),
                name: self.name(),
            },
            &self.0.value,
            target,
            sources,
            |a, v| reduce(&a, &v),
        )
    }
}

impl<IN, ACC, OUT, N> MergeableState for AggregatingState<IN, ACC, OUT, N> {
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()> {
        let id = state_id(b, self.slot(), self.name())?;
        let f = &self.0.function;
        merge_values(
            b,
            Merging {
                id,
                ttl: self.ttl(),
                name: self.name(),
            },
            &self.0.accumulator,
            target,
            sources,
            |a, v| f.merge(a, v),
        )
    }
}

fn namespace_bytes<H: StateHandle>(h: &H, ns: &H::Namespace) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    h.namespace_serializer()
        .serialize(ns, &mut buf)
        .map_err(|e| e.context(format!("namespace of state {:?}", h.name())))?;
    Ok(buf)
}

/// Typed access to keyed state, for every [`KeyedStateBackend`].
///
/// ```
/// # use flowstate_api::*;
/// # fn demo<B: KeyedStateBackend<Key = u64>>(backend: &mut B) -> Result<()> {
/// let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
/// backend.set_current_key(&7)?;
/// let n = backend.value(&count)?.unwrap_or(0);
/// backend.update(&count, n + 1)?;
/// # Ok(()) }
/// ```
pub trait KeyedStateBackendExt: KeyedStateBackend + Sized {
    /// Registers a state and returns its handle. Registering a name again
    /// with the same kind and serializers returns an equivalent handle;
    /// a state restored under that name must match it.
    fn register<D: StateDescriptor>(&mut self, descriptor: D) -> Result<D::Handle> {
        let id = self
            .register_state(descriptor.meta(), descriptor.ttl())
            .map_err(|e| e.context(format!("registering state {:?}", descriptor.meta().name)))?;
        let slot = StateSlot {
            backend: self.backend_id(),
            id,
        };
        Ok(descriptor.into_handle(slot))
    }

    /// Sets the namespace that `state`'s operations act in (until set again).
    fn set_namespace<H: StateHandle>(&mut self, state: &H, namespace: &H::Namespace) -> Result<()> {
        let id = state_id(self, state.slot(), state.name())?;
        let ns = namespace_bytes(state, namespace)?;
        self.set_namespace_bytes(id, &ns)
    }

    /// Removes the state's entry for the current key and namespace.
    fn clear<H: StateHandle>(&mut self, state: &H) -> Result<()> {
        let id = state_id(self, state.slot(), state.name())?;
        self.raw_clear(id)
    }

    // ------------------------------------------------------------ value

    /// The value, or the descriptor's default (a fresh clone) when absent.
    fn value<V: Clone, N>(&mut self, state: &ValueState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        match read_value(self, id, i.core.common.ttl.as_ref(), true, name)? {
            Some(bytes) => decode(&i.value, &bytes, name).map(Some),
            None => Ok(i.default.clone()),
        }
    }

    /// Sets the value.
    fn update<V, N>(&mut self, state: &ValueState<V, N>, value: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        let bytes = encode(&i.value, value.borrow(), stamp, name)?;
        self.raw_value_put(id, bytes)
    }

    // ------------------------------------------------------------ list

    /// The list's elements; empty when absent.
    fn list<V, N>(&mut self, state: &ListState<V, N>) -> Result<Vec<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        if i.core.common.ttl.is_none() {
            let mut out = Vec::new();
            let ser = &i.element;
            self.raw_list_get(id, &mut |e| {
                out.push(decode(ser, e, name)?);
                Ok(())
            })?;
            return Ok(out);
        }
        read_list(self, id, i.core.common.ttl.as_ref(), true, name)?
            .iter()
            .map(|e| decode(&i.element, e, name))
            .collect()
    }

    /// Appends one element.
    fn append<V, N>(&mut self, state: &ListState<V, N>, element: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        let bytes = encode(&i.element, element.borrow(), stamp, name)?;
        self.raw_list_append(id, bytes)
    }

    /// Appends elements; appending nothing is a no-op.
    fn append_all<V, N, I>(&mut self, state: &ListState<V, N>, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<V>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        let bytes = elements
            .into_iter()
            .map(|e| encode(&i.element, e.borrow(), stamp, name))
            .collect::<Result<Vec<_>>>()?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.raw_list_append_all(id, bytes)
    }

    /// Replaces the list; an empty list clears the state.
    fn update_list<V, N, I>(&mut self, state: &ListState<V, N>, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<V>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        let bytes = elements
            .into_iter()
            .map(|e| encode(&i.element, e.borrow(), stamp, name))
            .collect::<Result<Vec<_>>>()?;
        self.raw_list_replace(id, bytes)
    }

    // ------------------------------------------------------------ map

    /// The value under `user_key`.
    fn map_get<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<Option<UV>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let mut uk = Vec::new();
        i.user_key.serialize(user_key, &mut uk)?;
        let Some(raw) = self.raw_map_get(id, &uk)? else {
            return Ok(None);
        };
        let Some(ttl) = i.core.common.ttl.as_ref() else {
            return decode(&i.value, &raw, name).map(Some);
        };
        let now = self.clock().now_millis();
        match check_ttl(ttl, &raw, now, true, name)? {
            TtlRead::Live(user, refresh) => {
                if refresh {
                    self.raw_map_put(id, Bytes::from(uk), restamp(now, &user))?;
                }
                decode(&i.value, &user, name).map(Some)
            }
            TtlRead::Expired(user, visible) => {
                self.raw_map_remove(id, &uk)?;
                if visible {
                    decode(&i.value, &user, name).map(Some)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// True when `user_key` has a (live) value.
    fn map_contains<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<bool> {
        Ok(KeyedStateBackendExt::map_get(self, state, user_key)?.is_some())
    }

    /// Puts an entry.
    fn map_put<UK, UV, N>(
        &mut self,
        state: &MapState<UK, UV, N>,
        user_key: impl Borrow<UK>,
        value: impl Borrow<UV>,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let uk = encode(&i.user_key, user_key.borrow(), None, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        let v = encode(&i.value, value.borrow(), stamp, name)?;
        KeyedStateBackend::raw_map_put(self, id, uk, v)
    }

    /// Puts every entry.
    fn map_put_all<UK, UV, N, I, K2, V2>(&mut self, state: &MapState<UK, UV, N>, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K2, V2)>,
        K2: Borrow<UK>,
        V2: Borrow<UV>,
    {
        for (k, v) in entries {
            KeyedStateBackendExt::map_put(self, state, k, v)?;
        }
        Ok(())
    }

    /// Removes an entry.
    fn map_remove<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let mut uk = Vec::new();
        i.user_key.serialize(user_key, &mut uk)?;
        KeyedStateBackend::raw_map_remove(self, id, &uk)
    }

    /// True when the map has no live entry.
    fn map_is_empty<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>) -> Result<bool> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        if i.core.common.ttl.is_none() {
            return KeyedStateBackend::raw_map_is_empty(self, id);
        }
        let mut empty = true;
        self.map_retain(state, |_, _| {
            empty = false;
            true
        })?;
        Ok(empty)
    }

    /// Visits every live entry; returning `false` from `keep` removes the
    /// entry from the state (removal during iteration writes through).
    fn map_retain<UK, UV, N>(
        &mut self,
        state: &MapState<UK, UV, N>,
        mut keep: impl FnMut(&UK, &UV) -> bool,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let ttl = i.core.common.ttl;
        let now = stamp_time(self, ttl.as_ref()).unwrap_or(0);
        let mut refreshed = Vec::new();
        self.raw_map_for_each(id, &mut |uk, raw| {
            let user = match &ttl {
                None => raw,
                Some(ttl) => {
                    let (ts, user) = split_ttl_value(raw).map_err(|e| e.context(format!("state {name:?}")))?;
                    if ttl.is_expired(ts, now) {
                        if ttl.visibility() == TtlStateVisibility::ReturnExpiredIfNotCleanedUp {
                            keep(&decode(&i.user_key, uk, name)?, &decode(&i.value, user, name)?);
                        }
                        return Ok(MapVisit::Remove);
                    }
                    user
                }
            };
            let k = decode(&i.user_key, uk, name)?;
            let v = decode(&i.value, user, name)?;
            if !keep(&k, &v) {
                return Ok(MapVisit::Remove);
            }
            if ttl.is_some_and(|t| t.update_type() == TtlUpdateType::OnReadAndWrite) {
                refreshed.push((Bytes::copy_from_slice(uk), restamp(now, user)));
            }
            Ok(MapVisit::Keep)
        })?;
        for (uk, v) in refreshed {
            KeyedStateBackend::raw_map_put(self, id, uk, v)?;
        }
        Ok(())
    }

    /// All live entries.
    fn map_entries<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>) -> Result<Vec<(UK, UV)>>
    where
        UK: Clone,
        UV: Clone,
    {
        let mut out = Vec::new();
        self.map_retain(state, |k, v| {
            out.push((k.clone(), v.clone()));
            true
        })?;
        Ok(out)
    }

    /// All live user keys.
    fn map_keys<UK: Clone, UV, N>(&mut self, state: &MapState<UK, UV, N>) -> Result<Vec<UK>> {
        let mut out = Vec::new();
        self.map_retain(state, |k, _| {
            out.push(k.clone());
            true
        })?;
        Ok(out)
    }

    /// All live values.
    fn map_values<UK, UV: Clone, N>(&mut self, state: &MapState<UK, UV, N>) -> Result<Vec<UV>> {
        let mut out = Vec::new();
        self.map_retain(state, |_, v| {
            out.push(v.clone());
            true
        })?;
        Ok(out)
    }

    // ------------------------------------------------------------ reducing / aggregating

    /// Folds `value` into the reducing state.
    fn reduce<V, N>(&mut self, state: &ReducingState<V, N>, value: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let bytes = match read_value(self, id, ttl, false, name)? {
            Some(cur) => {
                let cur = decode(&i.value, &cur, name)?;
                encode(&i.value, &(i.reduce)(&cur, value.borrow()), stamp_time(self, ttl), name)?
            }
            None => encode(&i.value, value.borrow(), stamp_time(self, ttl), name)?,
        };
        self.raw_value_put(id, bytes)
    }

    /// The reduced value; `None` when nothing was added.
    fn reduced<V, N>(&mut self, state: &ReducingState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        read_value(self, id, i.core.common.ttl.as_ref(), true, name)?
            .map(|b| decode(&i.value, &b, name))
            .transpose()
    }

    /// Adds `input` into the aggregating state's accumulator.
    fn aggregate<IN, ACC, OUT, N>(&mut self, state: &AggregatingState<IN, ACC, OUT, N>, input: IN) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let mut acc = match read_value(self, id, ttl, false, name)? {
            Some(b) => decode(&i.accumulator, &b, name)?,
            None => i.function.create_accumulator(),
        };
        i.function.add(input, &mut acc);
        let bytes = encode(&i.accumulator, &acc, stamp_time(self, ttl), name)?;
        self.raw_value_put(id, bytes)
    }

    /// The aggregate's result; `None` when nothing was added.
    fn aggregated<IN, ACC, OUT, N>(&mut self, state: &AggregatingState<IN, ACC, OUT, N>) -> Result<Option<OUT>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        match read_value(self, id, i.core.common.ttl.as_ref(), true, name)? {
            Some(b) => Ok(Some(i.function.get_result(&decode(&i.accumulator, &b, name)?))),
            None => Ok(None),
        }
    }

    // ------------------------------------------------------------ namespaces and keys

    /// Folds the state of each source namespace into `target` and clears the
    /// sources (merging windows). Leaves the state's namespace at `target`.
    fn merge_namespaces<H: MergeableState>(
        &mut self,
        state: &H,
        target: &H::Namespace,
        sources: &[H::Namespace],
    ) -> Result<()> {
        let target = namespace_bytes(state, target)?;
        let sources = sources
            .iter()
            .map(|s| namespace_bytes(state, s))
            .collect::<Result<Vec<_>>>()?;
        state.merge_raw(self, &target, &sources)
    }

    /// The keys that hold `state` in `namespace`.
    fn keys<H: StateHandle>(&mut self, state: &H, namespace: &H::Namespace) -> Result<Vec<Self::Key>> {
        let id = state_id(self, state.slot(), state.name())?;
        let ns = namespace_bytes(state, namespace)?;
        let ser = self.key_serializer().clone();
        let mut out = Vec::new();
        self.raw_for_each_key(id, Some(&ns), &mut |k, _| {
            out.push(ser.deserialize(k)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every (key, namespace) pair that holds `state`.
    fn keys_and_namespaces<H: StateHandle>(&mut self, state: &H) -> Result<Vec<(Self::Key, H::Namespace)>> {
        let id = state_id(self, state.slot(), state.name())?;
        let kser = self.key_serializer().clone();
        let nser = state.namespace_serializer().clone();
        let mut out = Vec::new();
        self.raw_for_each_key(id, None, &mut |k, n| {
            out.push((kser.deserialize(k)?, nser.deserialize(n)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` once per key holding `state` in `namespace`, with that key
    /// current and the state's namespace set. `f` may change or clear the
    /// state (the keys are collected first).
    fn apply_to_all_keys<H, F>(&mut self, state: &H, namespace: &H::Namespace, mut f: F) -> Result<()>
    where
        H: StateHandle,
        F: FnMut(&mut Self, &Self::Key) -> Result<()>,
    {
        let id = state_id(self, state.slot(), state.name())?;
        let ns = namespace_bytes(state, namespace)?;
        let mut keys = Vec::new();
        self.raw_for_each_key(id, Some(&ns), &mut |k, _| {
            keys.push(k.to_vec());
            Ok(())
        })?;
        let ser = self.key_serializer().clone();
        for k in keys {
            self.set_current_key_bytes(&k)?;
            self.set_namespace_bytes(id, &ns)?;
            let key = ser.deserialize(&k)?;
            f(self, &key)?;
        }
        Ok(())
    }

    /// The exact number of (key, namespace) pairs holding `state`.
    fn entry_count<H: StateHandle>(&mut self, state: &H) -> Result<u64> {
        let id = state_id(self, state.slot(), state.name())?;
        KeyedStateBackend::raw_entry_count(self, id)
    }
}

impl<B: KeyedStateBackend> KeyedStateBackendExt for B {}
