//! Typed state access for one record, over the asynchronous contract.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::access::MergeableState;
use crate::descriptor::{AggregatingState, ListState, MapState, ReducingState, State, StateId, ValueState};
use crate::error::Result;
use crate::serializer::SharedSerializer;
use crate::stored::{
    self, check_entry, check_list, decode, encode_all, encode_into, namespace_bytes, stamp_time, visit_map_entry,
    Checked, EncodedEntries, MapVisitCtx,
};
use crate::timer::TimerService;
use crate::ttl::StateTtlConfig;

use super::backend::{AsyncKeyedStateBackend, KeyRef, Target};

/// One record's access to keyed state: the record's key (serialized once,
/// its key group computed once) and the namespace of each state, over an
/// [`AsyncKeyedStateBackend`].
///
/// The typed methods are those of
/// [`KeyedStateBackendExt`](crate::KeyedStateBackendExt), asynchronous, with
/// the same results and errors: serializers, TTL (stamps, expiry, refresh
/// on read, visibility), reducing and aggregating folds and namespace
/// merges share their byte-level rules with the synchronous face. Every
/// state starts in the void namespace for each record. A record's requests
/// may overlap (`futures::join!`); two records of one key must not, which
/// the [`KeyOrderedExecutor`](super::KeyOrderedExecutor) ensures.
pub struct RecordCtx<B: AsyncKeyedStateBackend> {
    backend: Arc<B>,
    key: KeyRef,
    namespaces: Vec<(StateId, Vec<u8>)>,
}

impl<B: AsyncKeyedStateBackend> fmt::Debug for RecordCtx<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordCtx")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<B: AsyncKeyedStateBackend> RecordCtx<B> {
    /// The context of a record of `key`, which `backend` holds.
    pub fn new(backend: Arc<B>, key: KeyRef) -> Self {
        RecordCtx {
            backend,
            key,
            namespaces: Vec::new(),
        }
    }

    /// The context of a record of `key`: serializes it and finds its key
    /// group, which must be one of `backend`'s.
    pub fn for_key(backend: Arc<B>, key: &B::Key) -> Result<Self> {
        let key = KeyRef::new(&*backend, key)?;
        Ok(Self::new(backend, key))
    }

    /// The record's key.
    pub fn key(&self) -> &KeyRef {
        &self.key
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Sets the namespace that `state`'s operations act in for this record
    /// (until set again).
    pub fn set_namespace<H: State>(&mut self, state: &H, namespace: &H::Namespace) -> Result<()> {
        let id = self.state_id(state.slot(), state.name())?;
        let ns = namespace_bytes(state, namespace)?;
        self.set_namespace_bytes(id, ns);
        Ok(())
    }

    fn set_namespace_bytes(&mut self, id: StateId, ns: Vec<u8>) {
        match self.namespaces.iter_mut().find(|(s, _)| *s == id) {
            Some((_, current)) => *current = ns,
            None => self.namespaces.push((id, ns)),
        }
    }

    #[inline]
    fn state_id(&self, slot: crate::descriptor::StateRef, name: &str) -> Result<StateId> {
        stored::state_id(self.backend.backend_id(), slot, name)
    }

    /// The request target of `state` in its current namespace.
    #[inline]
    fn target(&self, state: StateId) -> Target<'_> {
        let namespace = self
            .namespaces
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(&[][..], |(_, ns)| ns.as_slice());
        self.target_in(state, namespace)
    }

    /// The request target of `state` in `namespace`.
    #[inline]
    fn target_in<'s>(&'s self, state: StateId, namespace: &'s [u8]) -> Target<'s> {
        Target {
            state,
            key: &self.key,
            namespace,
        }
    }

    /// Reads a single value under TTL rules and decodes its user bytes with
    /// `decode`. With `for_read` false (a fold is about to overwrite it),
    /// expired values read as absent and nothing is restamped.
    async fn read_value<T>(
        &self,
        at: Target<'_>,
        ttl: Option<&StateTtlConfig>,
        for_read: bool,
        name: &str,
        decode: impl FnOnce(&[u8]) -> Result<T> + Send,
    ) -> Result<Option<T>> {
        let b = &*self.backend;
        let Some(ttl) = ttl else {
            return b.value_get(at, |raw| raw.map(decode).transpose()).await;
        };
        let now = b.clock().now_millis();
        let mut restamped = Vec::new();
        let checked = b
            .value_get(at, |raw| {
                check_entry(ttl, raw, now, for_read, name, &mut restamped, decode)
            })
            .await?;
        match checked {
            Checked::Absent => Ok(None),
            Checked::Live {
                value,
                restamped: refreshed,
            } => {
                if refreshed {
                    b.value_put(at, &restamped).await?;
                }
                Ok(Some(value))
            }
            Checked::Expired(visible) => {
                b.clear(at).await?;
                Ok(visible)
            }
        }
    }

    /// Reads a list under TTL rules, calling `emit` for each element (see
    /// [`check_list`]); expired elements are removed from the state and
    /// refreshed ones restamped.
    async fn read_list(
        &self,
        at: Target<'_>,
        ttl: Option<&StateTtlConfig>,
        for_read: bool,
        name: &str,
        emit: impl FnMut(&[u8]) -> Result<()> + Send,
    ) -> Result<()> {
        let b = &*self.backend;
        let Some(ttl) = ttl else {
            return b.list_get(at, emit).await;
        };
        let mut raw: Vec<Vec<u8>> = Vec::new();
        b.list_get(at, |e| {
            raw.push(e.to_vec());
            Ok(())
        })
        .await?;
        let now = b.clock().now_millis();
        if let Some(keep) = check_list(ttl, &raw, now, for_read, name, emit)? {
            b.list_replace(at, &keep).await?;
        }
        Ok(())
    }

    /// Removes the state's entry for this record's key and namespace.
    pub async fn clear<H: State>(&self, state: &H) -> Result<()> {
        let id = self.state_id(state.slot(), state.name())?;
        self.backend.clear(self.target(id)).await
    }

    // ------------------------------------------------------------ value

    /// The value, or the descriptor's default (a fresh clone) when absent.
    pub async fn value<V: Clone + Send, N>(&self, state: &ValueState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ser = &i.value;
        let read = self
            .read_value(self.target(id), i.core.common.ttl.as_ref(), true, name, |bytes| {
                decode(ser, bytes, name)
            })
            .await?;
        match read {
            Some(v) => Ok(Some(v)),
            None => Ok(i.default.clone()),
        }
    }

    /// Sets the value.
    pub async fn update<V, N>(&self, state: &ValueState<V, N>, value: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        let bytes = encode(&i.value, value.borrow(), stamp, name)?;
        self.backend.value_put(self.target(id), &bytes).await
    }

    // ------------------------------------------------------------ list

    /// The list's elements; empty when absent.
    pub async fn list<V: Send, N>(&self, state: &ListState<V, N>) -> Result<Vec<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let mut out = Vec::with_capacity(16);
        let ser = &i.element;
        let push = |e: &[u8]| {
            out.push(decode(ser, e, name)?);
            Ok(())
        };
        self.read_list(self.target(id), i.core.common.ttl.as_ref(), true, name, push)
            .await?;
        Ok(out)
    }

    /// Appends one element.
    pub async fn append<V, N>(&self, state: &ListState<V, N>, element: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        let mut buf = Vec::new();
        encode_into(&mut buf, &i.element, element.borrow(), stamp, name)?;
        self.backend.list_append_all(self.target(id), &[buf]).await
    }

    /// Appends elements; appending nothing is a no-op.
    pub async fn append_all<V, N, I>(&self, state: &ListState<V, N>, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<V>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        let bytes = encode_all(&i.element, elements, stamp, name)?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.backend.list_append_all(self.target(id), &bytes).await
    }

    /// Replaces the list; an empty list clears the state.
    pub async fn update_list<V, N, I>(&self, state: &ListState<V, N>, elements: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Borrow<V>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        let bytes = encode_all(&i.element, elements, stamp, name)?;
        self.backend.list_replace(self.target(id), &bytes).await
    }

    // ------------------------------------------------------------ map

    /// The value under `user_key`.
    pub async fn map_get<UK, UV: Send, N>(&self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<Option<UV>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let b = &*self.backend;
        let now = stamp_time(b.clock(), ttl).unwrap_or(0);
        let ser = &i.value;
        let value = |bytes: &[u8]| decode(ser, bytes, name);
        let mut uk = Vec::new();
        i.user_key.serialize(user_key, &mut uk)?;
        let at = self.target(id);
        let Some(ttl) = ttl else {
            return b.map_get(at, &uk, |raw| raw.map(value).transpose()).await;
        };
        let mut restamped = Vec::new();
        let checked = b
            .map_get(at, &uk, |raw| {
                check_entry(ttl, raw, now, true, name, &mut restamped, value)
            })
            .await?;
        match checked {
            Checked::Absent => Ok(None),
            Checked::Live {
                value,
                restamped: refreshed,
            } => {
                if refreshed {
                    b.map_put(at, &uk, &restamped).await?;
                }
                Ok(Some(value))
            }
            Checked::Expired(visible) => {
                b.map_remove(at, &uk).await?;
                Ok(visible)
            }
        }
    }

    /// True when `user_key` has a (live) value.
    pub async fn map_contains<UK, UV: Send, N>(&self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<bool> {
        Ok(self.map_get(state, user_key).await?.is_some())
    }

    /// Puts an entry.
    pub async fn map_put<UK, UV, N>(
        &self,
        state: &MapState<UK, UV, N>,
        user_key: impl Borrow<UK>,
        value: impl Borrow<UV>,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        // The user key, then the value, in one buffer.
        let mut buf = Vec::new();
        encode_into(&mut buf, &i.user_key, user_key.borrow(), None, name)?;
        let split = buf.len();
        encode_into(&mut buf, &i.value, value.borrow(), stamp, name)?;
        let (uk, v) = buf.split_at(split);
        self.backend.map_put(self.target(id), uk, v).await
    }

    /// Puts every entry.
    pub async fn map_put_all<UK, UV, N, I, K2, V2>(&self, state: &MapState<UK, UV, N>, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K2, V2)>,
        K2: Borrow<UK>,
        V2: Borrow<UV>,
    {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let stamp = stamp_time(self.backend.clock(), i.core.common.ttl.as_ref());
        // Every user key and value in one buffer, then one write of all of them.
        let encoded = EncodedEntries::new(&i.user_key, &i.value, entries, stamp, name)?;
        self.backend.map_put_all(self.target(id), &encoded.pairs()).await
    }

    /// Removes an entry.
    pub async fn map_remove<UK, UV, N>(&self, state: &MapState<UK, UV, N>, user_key: &UK) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let mut uk = Vec::new();
        i.user_key.serialize(user_key, &mut uk)?;
        self.backend.map_remove(self.target(id), &uk).await
    }

    /// True when the map has no live entry.
    pub async fn map_is_empty<UK, UV, N>(&self, state: &MapState<UK, UV, N>) -> Result<bool> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        if i.core.common.ttl.is_none() {
            return self.backend.map_is_empty(self.target(id)).await;
        }
        let mut empty = true;
        self.map_retain(state, |_, _| {
            empty = false;
            true
        })
        .await?;
        Ok(empty)
    }

    /// Visits every live entry; returning `false` from `keep` removes the
    /// entry from the state (removal during iteration writes through).
    pub async fn map_retain<UK, UV, N>(
        &self,
        state: &MapState<UK, UV, N>,
        mut keep: impl FnMut(&UK, &UV) -> bool + Send,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ttl = i.core.common.ttl;
        let visit = MapVisitCtx {
            user_key: &i.user_key,
            value: &i.value,
            ttl,
            now: stamp_time(self.backend.clock(), ttl.as_ref()).unwrap_or(0),
            name,
        };
        let at = self.target(id);
        let mut refreshed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.backend
            .map_for_each(at, |uk, raw| {
                visit_map_entry(&visit, uk, raw, &mut keep, &mut refreshed)
            })
            .await?;
        for (uk, v) in refreshed {
            self.backend.map_put(at, &uk, &v).await?;
        }
        Ok(())
    }

    /// All live entries.
    pub async fn map_entries<UK, UV, N>(&self, state: &MapState<UK, UV, N>) -> Result<Vec<(UK, UV)>>
    where
        UK: Clone + Send,
        UV: Clone + Send,
    {
        let mut out = Vec::new();
        self.map_retain(state, |k, v| {
            out.push((k.clone(), v.clone()));
            true
        })
        .await?;
        Ok(out)
    }

    /// All live user keys.
    pub async fn map_keys<UK: Clone + Send, UV, N>(&self, state: &MapState<UK, UV, N>) -> Result<Vec<UK>> {
        let mut out = Vec::new();
        self.map_retain(state, |k, _| {
            out.push(k.clone());
            true
        })
        .await?;
        Ok(out)
    }

    /// All live values.
    pub async fn map_values<UK, UV: Clone + Send, N>(&self, state: &MapState<UK, UV, N>) -> Result<Vec<UV>> {
        let mut out = Vec::new();
        self.map_retain(state, |_, v| {
            out.push(v.clone());
            true
        })
        .await?;
        Ok(out)
    }

    // ------------------------------------------------------------ reducing / aggregating

    /// Folds `value` into the reducing state.
    pub async fn reduce<V: Send, N>(&self, state: &ReducingState<V, N>, value: impl Borrow<V>) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let at = self.target(id);
        let ser = &i.value;
        let current = self
            .read_value(at, ttl, false, name, |bytes| decode(ser, bytes, name))
            .await?;
        let stamp = stamp_time(self.backend.clock(), ttl);
        let bytes = match current {
            Some(cur) => encode(ser, &(i.reduce)(&cur, value.borrow()), stamp, name)?,
            None => encode(ser, value.borrow(), stamp, name)?,
        };
        self.backend.value_put(at, &bytes).await
    }

    /// The reduced value; `None` when nothing was added.
    pub async fn reduced<V: Send, N>(&self, state: &ReducingState<V, N>) -> Result<Option<V>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ser = &i.value;
        self.read_value(self.target(id), i.core.common.ttl.as_ref(), true, name, |bytes| {
            decode(ser, bytes, name)
        })
        .await
    }

    /// Adds `input` into the aggregating state's accumulator.
    pub async fn aggregate<IN, ACC: Send, OUT, N>(
        &self,
        state: &AggregatingState<IN, ACC, OUT, N>,
        input: IN,
    ) -> Result<()> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let ttl = i.core.common.ttl.as_ref();
        let at = self.target(id);
        let ser = &i.accumulator;
        let mut acc = match self
            .read_value(at, ttl, false, name, |bytes| decode(ser, bytes, name))
            .await?
        {
            Some(acc) => acc,
            None => i.function.create_accumulator(),
        };
        i.function.add(input, &mut acc);
        let bytes = encode(ser, &acc, stamp_time(self.backend.clock(), ttl), name)?;
        self.backend.value_put(at, &bytes).await
    }

    /// The aggregate's result; `None` when nothing was added.
    pub async fn aggregated<IN, ACC, OUT: Send, N>(
        &self,
        state: &AggregatingState<IN, ACC, OUT, N>,
    ) -> Result<Option<OUT>> {
        let i = &state.0;
        let name = &*i.core.common.name;
        let id = self.state_id(i.core.slot, name)?;
        let (ser, function) = (&i.accumulator, &i.function);
        self.read_value(self.target(id), i.core.common.ttl.as_ref(), true, name, |bytes| {
            Ok(function.get_result(&decode(ser, bytes, name)?))
        })
        .await
    }

    // ------------------------------------------------------------ namespaces

    /// Folds the state of each source namespace into `target` and clears the
    /// sources (merging windows). Leaves the state's namespace at `target`.
    pub async fn merge_namespaces<H: AsyncMergeableState>(
        &mut self,
        state: &H,
        target: &H::Namespace,
        sources: &[H::Namespace],
    ) -> Result<()> {
        let id = self.state_id(state.slot(), state.name())?;
        let target = namespace_bytes(state, target)?;
        let sources = sources
            .iter()
            .map(|s| namespace_bytes(state, s))
            .collect::<Result<Vec<_>>>()?;
        state.merge_in(self, &target, &sources).await?;
        self.set_namespace_bytes(id, target);
        Ok(())
    }

    // ------------------------------------------------------------ timers

    /// Registers a timer of `timers` at `timestamp` for this record's key in
    /// `namespace`. Registering a timer that exists is a no-op.
    pub async fn register_timer<N>(&self, timers: &TimerService<N>, timestamp: i64, namespace: &N) -> Result<()> {
        let id = timers.id_in(self.backend.backend_id())?;
        let ns = timers.namespace_bytes(namespace)?;
        self.backend.timer_register(self.target_in(id, &ns), timestamp).await
    }

    /// Deletes this record's key's timer of `timers` at `timestamp` in
    /// `namespace`. Deleting a timer that does not exist is a no-op.
    pub async fn delete_timer<N>(&self, timers: &TimerService<N>, timestamp: i64, namespace: &N) -> Result<()> {
        let id = timers.id_in(self.backend.backend_id())?;
        let ns = timers.namespace_bytes(namespace)?;
        self.backend.timer_delete(self.target_in(id, &ns), timestamp).await
    }
}

mod sealed {
    /// Only flowstate's mergeable states merge on the asynchronous face.
    pub trait Sealed {}
}

/// A state whose namespaces a [`RecordCtx`] merges (list, reducing,
/// aggregating): the asynchronous side of [`MergeableState`].
pub trait AsyncMergeableState: MergeableState + sealed::Sealed {
    /// Folds the state of `sources` into `target` for `ctx`'s key and
    /// clears the sources.
    fn merge_in<B: AsyncKeyedStateBackend>(
        &self,
        ctx: &RecordCtx<B>,
        target: &[u8],
        sources: &[Vec<u8>],
    ) -> impl Future<Output = Result<()>> + Send;
}

impl<V, N> sealed::Sealed for ListState<V, N> {}

impl<V, N> AsyncMergeableState for ListState<V, N> {
    async fn merge_in<B: AsyncKeyedStateBackend>(
        &self,
        ctx: &RecordCtx<B>,
        target: &[u8],
        sources: &[Vec<u8>],
    ) -> Result<()> {
        let id = ctx.state_id(self.slot(), self.name())?;
        let mut moved: Vec<Vec<u8>> = Vec::new();
        for src in sources.iter().filter(|s| s.as_slice() != target) {
            let at = ctx.target_in(id, src);
            ctx.read_list(at, self.ttl(), false, self.name(), |e| {
                moved.push(e.to_vec());
                Ok(())
            })
            .await?;
            ctx.backend.clear(at).await?;
        }
        ctx.backend.list_append_all(ctx.target_in(id, target), &moved).await
    }
}

/// The encoding of `value`, after a TTL timestamp if `stamp`.
fn encode<T>(ser: &SharedSerializer<T>, value: &T, stamp: Option<u64>, name: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(&mut buf, ser, value, stamp, name)?;
    Ok(buf)
}

/// Folds the values of `sources` and `target` of state `id` into `target`
/// with `fold`, as the synchronous face's merge of single values does.
async fn merge_values<B, T>(
    ctx: &RecordCtx<B>,
    (id, ttl, name): (StateId, Option<&StateTtlConfig>, &str),
    ser: &SharedSerializer<T>,
    target: &[u8],
    sources: &[Vec<u8>],
    fold: impl Fn(T, T) -> T + Send,
) -> Result<()>
where
    B: AsyncKeyedStateBackend,
    T: Send,
{
    let mut acc: Option<T> = None;
    for src in sources.iter().filter(|s| s.as_slice() != target) {
        let at = ctx.target_in(id, src);
        if let Some(v) = ctx
            .read_value(at, ttl, false, name, |bytes| decode(ser, bytes, name))
            .await?
        {
            acc = Some(match acc {
                Some(a) => fold(a, v),
                None => v,
            });
            ctx.backend.clear(at).await?;
        }
    }
    let at = ctx.target_in(id, target);
    if let Some(merged) = acc {
        let merged = match ctx
            .read_value(at, ttl, false, name, |bytes| decode(ser, bytes, name))
            .await?
        {
            Some(current) => fold(current, merged),
            None => merged,
        };
        let bytes = encode(ser, &merged, stamp_time(ctx.backend.clock(), ttl), name)?;
        ctx.backend.value_put(at, &bytes).await?;
    }
    Ok(())
}

impl<V, N> sealed::Sealed for ReducingState<V, N> {}

impl<V: Send, N> AsyncMergeableState for ReducingState<V, N> {
    async fn merge_in<B: AsyncKeyedStateBackend>(
        &self,
        ctx: &RecordCtx<B>,
        target: &[u8],
        sources: &[Vec<u8>],
    ) -> Result<()> {
        let id = ctx.state_id(self.slot(), self.name())?;
        let reduce = &self.0.reduce;
        let state = (id, self.ttl(), self.name());
        merge_values(ctx, state, &self.0.value, target, sources, |a, v| reduce(&a, &v)).await
    }
}

impl<IN, ACC, OUT, N> sealed::Sealed for AggregatingState<IN, ACC, OUT, N> {}

impl<IN, ACC: Send, OUT, N> AsyncMergeableState for AggregatingState<IN, ACC, OUT, N> {
    async fn merge_in<B: AsyncKeyedStateBackend>(
        &self,
        ctx: &RecordCtx<B>,
        target: &[u8],
        sources: &[Vec<u8>],
    ) -> Result<()> {
        let id = ctx.state_id(self.slot(), self.name())?;
        let f = &self.0.function;
        let state = (id, self.ttl(), self.name());
        merge_values(ctx, state, &self.0.accumulator, target, sources, |a, v| f.merge(a, v)).await
    }
}
