//! Typed state access, written once over the byte-level backend contract.
//!
//! Serialization, TTL (timestamps, expiry, update on read, visibility),
//! reducing and aggregating folds and namespace merging all live here, so
//! every backend behaves identically.

use std::borrow::Borrow;

use crate::backend::KeyedStateBackend;
use crate::descriptor::{
    AggregatingState, ListState, MapState, ReducingState, State, StateDescriptor, StateId, StateRef, ValueState,
};
use crate::error::Result;
use crate::serializer::SharedSerializer;
use crate::stored::{
    self, check_entry, check_list, decode, encode_all, encode_into, namespace_bytes, visit_map_entry, Checked,
    EncodedEntries, MapVisitCtx,
};
use crate::ttl::StateTtlConfig;

fn state_id<B: KeyedStateBackend + ?Sized>(b: &B, slot: StateRef, name: &str) -> Result<StateId> {
    stored::state_id(b.backend_id(), slot, name)
}

/// Runs `f` with the core's reusable buffer, cleared: once it has grown,
/// encoding a value allocates nothing. (A nested call gets a fresh buffer.)
#[inline]
fn with_buffer<B, R>(b: &mut B, f: impl FnOnce(&mut B, &mut Vec<u8>) -> Result<R>) -> Result<R>
where
    B: KeyedStateBackend + ?Sized,
{
    let mut buf = std::mem::take(&mut b.core_mut().buffer);
    buf.clear();
    let result = f(b, &mut buf);
    b.core_mut().buffer = buf;
    result
}

/// Encodes `value` into the core's reusable buffer (after a TTL timestamp
/// if `stamp`) and hands the bytes to `write`.
#[inline]
fn write_encoded<B, T>(
    b: &mut B,
    ser: &SharedSerializer<T>,
    value: &T,
    stamp: Option<u64>,
    name: &str,
    write: impl FnOnce(&mut B, &[u8]) -> Result<()>,
) -> Result<()>
where
    B: KeyedStateBackend + ?Sized,
{
    with_buffer(b, |b, buf| {
        encode_into(buf, ser, value, stamp, name)?;
        write(b, buf)
    })
}

#[inline]
fn stamp_time<B: KeyedStateBackend + ?Sized>(b: &B, ttl: Option<&StateTtlConfig>) -> Option<u64> {
    stored::stamp_time(b.clock(), ttl)
}

/// Reads a single value under TTL rules and decodes its user bytes with
/// `decode` (straight from the backend's bytes, no copy). With `for_read`
/// false (a fold is about to overwrite it), expired values read as absent
/// and nothing is restamped.
#[inline]
fn read_value<B, T>(
    b: &mut B,
    id: StateId,
    ttl: Option<&StateTtlConfig>,
    for_read: bool,
    name: &str,
    decode: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<Option<T>>
where
    B: KeyedStateBackend + ?Sized,
{
    let Some(ttl) = ttl else {
        return b.raw_value_get(id, |raw| raw.map(decode).transpose());
    };
    let now = b.clock().now_millis();
    with_buffer(b, |b, restamped| {
        match b.raw_value_get(id, |raw| check_entry(ttl, raw, now, for_read, name, restamped, decode))? {
            Checked::Absent => Ok(None),
            Checked::Live {
                value,
                restamped: refreshed,
            } => {
                if refreshed {
                    b.raw_value_put(id, restamped)?;
                }
                Ok(Some(value))
            }
            Checked::Expired(visible) => {
                b.raw_clear(id)?;
                Ok(visible)
            }
        }
    })
}

/// Reads a list under TTL rules, calling `emit` for each element: expired
/// elements are removed from the state, and refreshed ones restamped. With
/// `for_read`, emits the user bytes of the elements to show; otherwise the
/// stored elements, stamps included, that are still live (for moving them
/// in a merge). Without TTL, emits the stored elements as they are read.
fn read_list<B: KeyedStateBackend + ?Sized>(
    b: &mut B,
    id: StateId,
    ttl: Option<&StateTtlConfig>,
    for_read: bool,
    name: &str,
    emit: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let Some(ttl) = ttl else {
        return b.raw_list_get(id, emit);
    };
    let mut raw: Vec<Vec<u8>> = Vec::new();
    b.raw_list_get(id, |e| {
        raw.push(e.to_vec());
        Ok(())
    })?;
    let now = b.clock().now_millis();
    if let Some(keep) = check_list(ttl, &raw, now, for_read, name, emit)? {
        b.raw_list_replace(id, &keep)?;
    }
    Ok(())
}

/// A state whose namespaces can be merged (list, reducing, aggregating), as
/// merging windows need.
pub trait MergeableState: State {
    /// Folds the state of `sources` into `target` and clears the sources.
    /// Leaves the state's current namespace at `target`.
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()>;
}

impl<V, N> MergeableState for ListState<V, N> {
    fn merge_raw<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, target: &[u8], sources: &[Vec<u8>]) -> Result<()> {
        let id = state_id(b, self.slot(), self.name())?;
        let mut moved: Vec<Vec<u8>> = Vec::new();
        for src in sources.iter().filter(|s| s.as_slice() != target) {
            b.set_namespace_bytes(id, src)?;
            read_list(b, id, self.ttl(), false, self.name(), |e| {
                moved.push(e.to_vec());
                Ok(())
            })?;
            b.raw_clear(id)?;
        }
        b.set_namespace_bytes(id, target)?;
        b.raw_list_append_all(id, &moved)
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
        if let Some(v) = read_value(b, id, ttl, false, name, |bytes| decode(ser, bytes, name))? {
            acc = Some(match acc {
                Some(a) => fold(a, v),
                None => v,
            });
            b.raw_clear(id)?;
        }
    }
    b.set_namespace_bytes(id, target)?;
    if let Some(merged) = acc {
        let merged = match read_value(b, id, ttl, false, name, |bytes| decode(ser, bytes, name))? {
            Some(current) => fold(current, merged),
            None => merged,
        };
        let stamp = stamp_time(b, ttl);
        write_encoded(b, ser, &merged, stamp, name, |b, v| b.raw_value_put(id, v))?;
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
    ///
    /// A restored state whose values were written by another serializer is
    /// migrated first when the descriptor's serializer reads that one
    /// ([`SchemaCompatibility::AfterMigration`](crate::serializer::SchemaCompatibility)):
    /// every value is rewritten in the new encoding, and snapshots from then
    /// on record the new serializer. Otherwise the registration fails with
    /// `Incompatible`, naming the state and both serializers.
    fn register<D: StateDescriptor>(&mut self, descriptor: D) -> Result<D::Handle> {
        let meta = descriptor.meta();
        migrate_if_needed(self, &descriptor, &meta)
            .map_err(|e| e.context(format!("registering state {:?}", meta.name)))?;
        let id = self
            .register_state(meta.clone(), descriptor.ttl())
            .map_err(|e| e.context(format!("registering state {:?}", meta.name)))?;
        let slot = StateRef {
            backend: self.backend_id(),
            id,
        };
        Ok(descriptor.into_handle(slot))
    }

    /// Sets the namespace that `state`'s operations act in (until set again).
    fn set_namespace<H: State>(&mut self, state: &H, namespace: &H::Namespace) -> Result<()> {
        let id = state_id(self, state.slot(), state.name())?;
        let ns = namespace_bytes(state, namespace)?;
        self.set_namespace_bytes(id, &ns)
    }

    /// Removes the state's entry for the current key and namespace.
    fn clear<H: State>(&mut self, state: &H) -> Result<()> {
        let id = state_id(self, state.slot(), state.name())?;
        self.raw_clear(id)
    }

    // ------------------------------------------------------------ value

    /// The value, or the descriptor's default (a fresh clone) when absent.
    #[inline]
    fn value<V: Clone, N>(&mut self, state: &ValueState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        match read_value(self, id, i.core.common.ttl.as_ref(), true, name, |bytes| {
            decode(&i.value, bytes, name)
        })? {
            Some(v) => Ok(Some(v)),
            None => Ok(i.default.clone()),
        }
    }

    /// Sets the value.
    #[inline]
    fn update<V, N>(&mut self, state: &ValueState<V, N>, value: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        write_encoded(self, &i.value, value.borrow(), stamp, name, |b, v| {
            b.raw_value_put(id, v)
        })
    }

    // ------------------------------------------------------------ list

    /// The list's elements; empty when absent.
    fn list<V, N>(&mut self, state: &ListState<V, N>) -> Result<Vec<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        // Room for a typical list up front: growing from empty reallocates
        // several times per read.
        let mut out = Vec::with_capacity(16);
        let ser = &i.element;
        let push = |e: &[u8]| {
            out.push(decode(ser, e, name)?);
            Ok(())
        };
        match i.core.common.ttl.as_ref() {
            None => self.raw_list_get(id, push)?,
            ttl => read_list(self, id, ttl, true, name, push)?,
        }
        Ok(out)
    }

    /// Appends one element.
    #[inline]
    fn append<V, N>(&mut self, state: &ListState<V, N>, element: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        write_encoded(self, &i.element, element.borrow(), stamp, name, |b, e| {
            b.raw_list_append(id, e)
        })
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
        let bytes = encode_all(&i.element, elements, stamp_time(self, i.core.common.ttl.as_ref()), name)?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.raw_list_append_all(id, &bytes)
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
        let bytes = encode_all(&i.element, elements, stamp_time(self, i.core.common.ttl.as_ref()), name)?;
        self.raw_list_replace(id, &bytes)
    }

    // ------------------------------------------------------------ map

    /// The value under `user_key`.
    #[inline]
    fn map_get<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<Option<UV>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let now = stamp_time(self, ttl).unwrap_or(0);
        let value = |bytes: &[u8]| decode(&i.value, bytes, name);
        with_buffer(self, |b, uk| {
            i.user_key.serialize(user_key, uk)?;
            let Some(ttl) = ttl else {
                return b.raw_map_get(id, uk, |raw| raw.map(value).transpose());
            };
            let mut restamped = Vec::new();
            match b.raw_map_get(id, uk, |raw| {
                check_entry(ttl, raw, now, true, name, &mut restamped, value)
            })? {
                Checked::Absent => Ok(None),
                Checked::Live {
                    value,
                    restamped: refreshed,
                } => {
                    if refreshed {
                        b.raw_map_put(id, uk, &restamped)?;
                    }
                    Ok(Some(value))
                }
                Checked::Expired(visible) => {
                    b.raw_map_remove(id, uk)?;
                    Ok(visible)
                }
            }
        })
    }

    /// True when `user_key` has a (live) value.
    fn map_contains<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<bool> {
        Ok(KeyedStateBackendExt::map_get(self, state, user_key)?.is_some())
    }

    /// Puts an entry.
    #[inline]
    fn map_put<UK, UV, N>(
        &mut self,
        state: &MapState<UK, UV, N>,
        user_key: impl Borrow<UK>,
        value: impl Borrow<UV>,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        with_buffer(self, |b, buf| {
            // The user key, then the value, in one buffer.
            encode_into(buf, &i.user_key, user_key.borrow(), None, name)?;
            let split = buf.len();
            encode_into(buf, &i.value, value.borrow(), stamp, name)?;
            let (uk, v) = buf.split_at(split);
            KeyedStateBackend::raw_map_put(b, id, uk, v)
        })
    }

    /// Puts every entry.
    fn map_put_all<UK, UV, N, I, K2, V2>(&mut self, state: &MapState<UK, UV, N>, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K2, V2)>,
        K2: Borrow<UK>,
        V2: Borrow<UV>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let stamp = stamp_time(self, i.core.common.ttl.as_ref());
        // Every user key and value in one buffer, then one write of all of them.
        let encoded = EncodedEntries::new(&i.user_key, &i.value, entries, stamp, name)?;
        KeyedStateBackend::raw_map_put_all(self, id, &encoded.pairs())
    }

    /// Removes an entry.
    fn map_remove<UK, UV, N>(&mut self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        with_buffer(self, |b, uk| {
            i.user_key.serialize(user_key, uk)?;
            KeyedStateBackend::raw_map_remove(b, id, uk)
        })
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
        let visit = MapVisitCtx {
            user_key: &i.user_key,
            value: &i.value,
            ttl,
            now: stamp_time(self, ttl.as_ref()).unwrap_or(0),
            name,
        };
        let mut refreshed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.raw_map_for_each(id, &mut |uk, raw| {
            visit_map_entry(&visit, uk, raw, &mut keep, &mut refreshed)
        })?;
        for (uk, v) in refreshed {
            KeyedStateBackend::raw_map_put(self, id, &uk, &v)?;
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
        let current = read_value(self, id, ttl, false, name, |bytes| decode(&i.value, bytes, name))?;
        let reduced;
        let new = match &current {
            Some(cur) => {
                reduced = (i.reduce)(cur, value.borrow());
                &reduced
            }
            None => value.borrow(),
        };
        let stamp = stamp_time(self, ttl);
        write_encoded(self, &i.value, new, stamp, name, |b, v| b.raw_value_put(id, v))
    }

    /// The reduced value; `None` when nothing was added.
    fn reduced<V, N>(&mut self, state: &ReducingState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        read_value(self, id, i.core.common.ttl.as_ref(), true, name, |bytes| {
            decode(&i.value, bytes, name)
        })
    }

    /// Adds `input` into the aggregating state's accumulator.
    fn aggregate<IN, ACC, OUT, N>(&mut self, state: &AggregatingState<IN, ACC, OUT, N>, input: IN) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let mut acc = match read_value(self, id, ttl, false, name, |bytes| decode(&i.accumulator, bytes, name))? {
            Some(acc) => acc,
            None => i.function.create_accumulator(),
        };
        i.function.add(input, &mut acc);
        let stamp = stamp_time(self, ttl);
        write_encoded(self, &i.accumulator, &acc, stamp, name, |b, v| b.raw_value_put(id, v))
    }

    /// The aggregate's result; `None` when nothing was added.
    fn aggregated<IN, ACC, OUT, N>(&mut self, state: &AggregatingState<IN, ACC, OUT, N>) -> Result<Option<OUT>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = state_id(self, i.core.slot, name)?;
        read_value(self, id, i.core.common.ttl.as_ref(), true, name, |bytes| {
            Ok(i.function.get_result(&decode(&i.accumulator, bytes, name)?))
        })
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
    fn keys<H: State>(&mut self, state: &H, namespace: &H::Namespace) -> Result<Vec<Self::Key>> {
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
    fn keys_and_namespaces<H: State>(&mut self, state: &H) -> Result<Vec<(Self::Key, H::Namespace)>> {
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
        H: State,
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
    fn entry_count<H: State>(&mut self, state: &H) -> Result<u64> {
        let id = state_id(self, state.slot(), state.name())?;
        KeyedStateBackend::raw_entry_count(self, id)
    }
}

impl<B: KeyedStateBackend> KeyedStateBackendExt for B {}

/// Migrates the restored state of `meta`'s name, not yet registered in this
/// run, when it differs from `meta` only by a value serializer that
/// `descriptor` migrates from.
fn migrate_if_needed<B: KeyedStateBackend, D: StateDescriptor>(
    backend: &mut B,
    descriptor: &D,
    meta: &crate::backend::StateMetaInfo,
) -> Result<()> {
    let Some(id) = backend.core().find(&meta.name) else {
        return Ok(());
    };
    let state = backend.core().state(id)?;
    let written = state.meta().value_serializer.clone();
    if state.is_registered() || written == meta.value_serializer {
        return Ok(());
    }
    let mut same_but_values = state.meta().clone();
    same_but_values.value_serializer = meta.value_serializer.clone();
    if same_but_values != *meta {
        return Ok(()); // The registration reports what else differs.
    }
    match descriptor.value_compatibility(&written) {
        crate::serializer::SchemaCompatibility::Incompatible => Ok(()),
        crate::serializer::SchemaCompatibility::AsIs => backend
            .core_mut()
            .set_value_serializer(id, meta.value_serializer.clone()),
        crate::serializer::SchemaCompatibility::AfterMigration => {
            backend
                .raw_migrate_values(id, &mut |bytes| descriptor.migrate_value(&written, bytes))
                .map_err(|e| e.context(format!("migrating from {written} to {}", meta.value_serializer)))?;
            backend
                .core_mut()
                .set_value_serializer(id, meta.value_serializer.clone())
        }
    }
}
