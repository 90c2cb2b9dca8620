//! The synchronous face of the SlateDB backend, and its [`BackendFactory`].
//!
//! [`SlateDbSyncBackend`] implements [`KeyedStateBackend`] (a current key,
//! typed access through [`KeyedStateBackendExt`](flowstate_api::KeyedStateBackendExt))
//! over a [`SlateDbBackend`]: each operation waits for its request, which
//! runs on the factory's own Tokio runtime, so the calling thread may be
//! anywhere (an engine's task thread, inside or outside another runtime),
//! except on that runtime's own worker threads.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use flowstate_api::asynchronous::{KeyRef, Target};
use flowstate_api::backend::{
    BackendCapabilities, BackendCore, BackendFactory, KeyVisitor, MapVisit, MapVisitor, RawTimer, StateId,
};
use flowstate_api::checkpoint::{CheckpointLocation, KeyedStateHandle, StateReader};
use flowstate_api::descriptor::StateMetaInfo;
use flowstate_api::{
    AsyncKeyedStateBackend, Error, KeyedBackendConfig, KeyedStateBackend, PendingSnapshot, Result, SnapshotOptions,
};

use crate::{SlateDbBackend, SlateDbOptions};

/// The Tokio runtime SlateDB's requests and background tasks run on, shut
/// down without waiting when its last user is dropped (also from inside
/// another runtime, where dropping a runtime would panic).
struct BackendRuntime(Option<tokio::runtime::Runtime>);

impl BackendRuntime {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowstate-slatedb")
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("starting the SlateDB backend's runtime: {e}")))?;
        Ok(BackendRuntime(Some(runtime)))
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle> {
        self.0
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .ok_or_else(|| Error::new(flowstate_api::ErrorKind::Closed, "the SlateDB runtime is shut down"))
    }

    /// Runs `f` to completion on the calling thread, inside this runtime's
    /// context: its I/O and timers are driven by the runtime's workers, and
    /// tasks it spawns run there. Outside Tokio's cooperative budget: the
    /// calling thread may be a task of another runtime whose budget, spent
    /// by earlier requests, would otherwise make every later poll yield
    /// (and this loop spin) until that task yields, which it never does.
    fn block<F: Future>(&self, f: F) -> Result<F::Output> {
        let _context = self.handle()?.enter();
        Ok(park_on(tokio::task::unconstrained(f)))
    }
}

/// Wakes a thread parked in [`park_on`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on the calling thread, parking it between polls, until `f`
/// completes. Unlike an executor's `block_on` it may run inside any other
/// executor's task (a synchronous backend call made from async code).
fn park_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

impl Drop for BackendRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The synchronous face of the SlateDB backend: a [`KeyedStateBackend`]
/// with a current key, as every other backend, whose operations wait for
/// SlateDB. Built and restored by [`SlateDbBackendFactory`].
///
/// Its state ids are its own: use the typed handles it registers, not
/// those of the asynchronous backend inside.
pub struct SlateDbSyncBackend<K> {
    inner: SlateDbBackend<K>,
    /// State ids of this face; each state's storage is its id in `inner`.
    core: BackendCore<K, StateId>,
    /// The current key as requests carry it, rebuilt when the key changes.
    key: Option<KeyRef>,
    runtime: Arc<BackendRuntime>,
}

impl<K> fmt::Debug for SlateDbSyncBackend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlateDbSyncBackend")
            .field("backend_id", &self.core.id())
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<K: 'static> SlateDbSyncBackend<K> {
    fn new(inner: SlateDbBackend<K>, runtime: Arc<BackendRuntime>) -> Result<Self> {
        let mut core = BackendCore::new(inner.config.clone())?;
        for (meta, id) in inner.state_list()? {
            core.add_state(meta, id)?;
        }
        Ok(SlateDbSyncBackend {
            inner,
            core,
            key: None,
            runtime,
        })
    }

    /// The asynchronous backend inside (its database path, the SlateDB
    /// database, its retained checkpoints).
    pub fn inner(&self) -> &SlateDbBackend<K> {
        &self.inner
    }

    /// Waits for `f` on the backend's runtime.
    fn block<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block(f)?
    }
}

/// What a request of `state` for the current key acts on, in the inner
/// backend's terms: the current key as a [`KeyRef`] (cached in `slot`) and
/// the state's current namespace.
fn target<'a, K: 'static>(
    core: &'a BackendCore<K, StateId>,
    slot: &'a mut Option<KeyRef>,
    inner: &SlateDbBackend<K>,
    state: StateId,
) -> Result<Target<'a>> {
    let access = core.access(state)?;
    if slot.as_ref().is_none_or(|k| k.bytes() != access.key) {
        *slot = Some(KeyRef::from_bytes(inner, access.key.to_vec())?);
    }
    let key = slot
        .as_ref()
        .ok_or_else(|| Error::internal("the current key was not set"))?;
    Ok(Target {
        state: *access.state.storage(),
        key,
        namespace: access.state.namespace(),
    })
}

/// `target` with this backend's fields, borrowed apart.
macro_rules! at {
    ($self:ident, $state:expr) => {
        target(&$self.core, &mut $self.key, &$self.inner, $state)?
    };
}

impl<K: 'static> KeyedStateBackend for SlateDbSyncBackend<K> {
    type Key = K;
    type StateStorage = StateId;

    fn core(&self) -> &BackendCore<K, StateId> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut BackendCore<K, StateId> {
        &mut self.core
    }

    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }

    fn create_state_storage(&mut self, meta: &StateMetaInfo) -> Result<StateId> {
        self.inner.add_state(meta)
    }

    fn raw_value_get<R>(&mut self, state: StateId, f: impl FnOnce(Option<&[u8]>) -> Result<R>) -> Result<R> {
        let at = at!(self, state);
        // The future must be `Send`; the callback need not be, so it runs
        // on the value once it is read.
        let value = self
            .runtime
            .block(self.inner.value_get(at, |v| Ok(v.map(<[u8]>::to_vec))))??;
        f(value.as_deref())
    }

    fn raw_value_put(&mut self, state: StateId, value: &[u8]) -> Result<()> {
        let at = at!(self, state);
        self.runtime.block(self.inner.value_put(at, value))?
    }

    fn raw_clear(&mut self, state: StateId) -> Result<()> {
        let at = at!(self, state);
        self.runtime.block(self.inner.clear(at))?
    }

    fn raw_list_get(&mut self, state: StateId, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let at = at!(self, state);
        let mut elements = Vec::new();
        self.runtime.block(self.inner.list_get(at, |e| {
            elements.push(e.to_vec());
            Ok(())
        }))??;
        elements.iter().try_for_each(|e| f(e))
    }

    fn raw_list_replace<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        let at = at!(self, state);
        let elements: Vec<&[u8]> = elements.iter().map(AsRef::as_ref).collect();
        self.runtime.block(self.inner.list_replace(at, &elements))?
    }

    fn raw_list_append_all<E: AsRef<[u8]>>(&mut self, state: StateId, elements: &[E]) -> Result<()> {
        let at = at!(self, state);
        let elements: Vec<&[u8]> = elements.iter().map(AsRef::as_ref).collect();
        self.runtime.block(self.inner.list_append_all(at, &elements))?
    }

    fn raw_map_get<R>(
        &mut self,
        state: StateId,
        user_key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R> {
        let at = at!(self, state);
        let value = self
            .runtime
            .block(self.inner.map_get(at, user_key, |v| Ok(v.map(<[u8]>::to_vec))))??;
        f(value.as_deref())
    }

    fn raw_map_put(&mut self, state: StateId, user_key: &[u8], value: &[u8]) -> Result<()> {
        let at = at!(self, state);
        self.runtime.block(self.inner.map_put(at, user_key, value))?
    }

    fn raw_map_put_all(&mut self, state: StateId, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let at = at!(self, state);
        self.runtime.block(self.inner.map_put_all(at, entries))?
    }

    fn raw_map_remove(&mut self, state: StateId, user_key: &[u8]) -> Result<()> {
        let at = at!(self, state);
        self.runtime.block(self.inner.map_remove(at, user_key))?
    }

    fn raw_map_is_empty(&mut self, state: StateId) -> Result<bool> {
        let at = at!(self, state);
        self.runtime.block(self.inner.map_is_empty(at))?
    }

    fn raw_map_for_each(&mut self, state: StateId, f: &mut MapVisitor<'_>) -> Result<()> {
        // The visitor decides per entry, and need not be `Send`: the
        // entries are read first, then visited, and removals written.
        let at = at!(self, state);
        let mut entries = Vec::new();
        self.runtime.block(self.inner.map_for_each(at, |k, v| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(MapVisit::Keep)
        }))??;
        let mut removed = Vec::new();
        for (k, v) in entries {
            match f(&k, &v)? {
                MapVisit::Keep => {}
                MapVisit::Remove => removed.push(k),
                MapVisit::Stop => break,
            }
        }
        let at = at!(self, state);
        for k in removed {
            self.runtime.block(self.inner.map_remove(at, &k))??;
        }
        Ok(())
    }

    fn raw_for_each_key(&mut self, state: StateId, namespace: Option<&[u8]>, f: &mut KeyVisitor<'_>) -> Result<()> {
        let inner_state = *self.core.state(state)?.storage();
        let pairs = self.block(self.inner.keys_of(inner_state, namespace))?;
        pairs.iter().try_for_each(|(k, ns)| f(k, ns))
    }

    fn snapshot(
        &mut self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        let (header, filter) = (self.core.snapshot_header(false), self.core.ttl_filter());
        self.block(
            self.inner
                .snapshot_with(checkpoint_id, location, options, header, filter),
        )
    }

    fn raw_timer_register(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let at = Target {
            namespace,
            ..at!(self, state)
        };
        self.runtime.block(self.inner.timer_register(at, timestamp))?
    }

    fn raw_timer_delete(&mut self, state: StateId, timestamp: i64, namespace: &[u8]) -> Result<()> {
        let at = Target {
            namespace,
            ..at!(self, state)
        };
        self.runtime.block(self.inner.timer_delete(at, timestamp))?
    }

    fn raw_timer_peek(&mut self, state: StateId) -> Result<Option<i64>> {
        let inner_state = *self.core.state(state)?.storage();
        self.block(self.inner.timer_peek(inner_state))
    }

    fn raw_timer_poll(&mut self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        let inner_state = *self.core.state(state)?.storage();
        self.block(self.inner.timer_poll(inner_state, time))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.block(self.inner.notify_checkpoint_complete(checkpoint_id))
    }

    /// Flushes the memtable into an L0 file: state is then read from SST
    /// files (through the cache). SlateDB's compactor merges them in the
    /// background, on its own schedule.
    fn compact(&mut self) -> Result<()> {
        let path = self.inner.path().to_string();
        self.block(async {
            self.inner
                .db()
                .flush()
                .await
                .map_err(|e| crate::error::from_slatedb(format!("flushing database {path}"), e))
        })
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.block(self.inner.notify_checkpoint_aborted(checkpoint_id))
    }
}

/// Builds and restores [`SlateDbSyncBackend`]s with one set of
/// [`SlateDbOptions`], on a Tokio runtime of its own (two worker threads,
/// shared by every backend it makes, and kept alive by them).
///
/// ```
/// use std::sync::Arc;
/// use flowstate_api::*;
/// use flowstate_slatedb::{SlateDbBackendFactory, SlateDbOptions};
/// use object_store::memory::InMemory;
///
/// let factory = SlateDbBackendFactory::new(SlateDbOptions::new(Arc::new(InMemory::new()), "job/slatedb/op")?)?;
/// let mut backend = factory.build(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128))?;
/// let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
/// backend.set_current_key(&7)?;
/// backend.update(&count, 1)?;
/// assert_eq!(backend.value(&count)?, Some(1));
/// # Ok::<(), flowstate_api::Error>(())
/// ```
pub struct SlateDbBackendFactory {
    options: SlateDbOptions,
    name: String,
    runtime: Arc<BackendRuntime>,
}

impl fmt::Debug for SlateDbBackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlateDbBackendFactory")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SlateDbBackendFactory {
    /// A factory named `slatedb`, starting its runtime.
    pub fn new(options: SlateDbOptions) -> Result<Self> {
        Ok(SlateDbBackendFactory {
            options,
            name: "slatedb".to_string(),
            runtime: Arc::new(BackendRuntime::new()?),
        })
    }

    /// Names the factory (the conformance suite's trials carry the name).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The options its backends open their databases with.
    pub fn options(&self) -> &SlateDbOptions {
        &self.options
    }
}

impl BackendFactory for SlateDbBackendFactory {
    type Backend<K: 'static> = SlateDbSyncBackend<K>;

    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> BackendCapabilities {
        crate::capabilities()
    }

    fn build<K: 'static>(&self, config: KeyedBackendConfig<K>) -> Result<SlateDbSyncBackend<K>> {
        let inner = self
            .runtime
            .block(SlateDbBackend::open(self.options.clone(), config))??;
        SlateDbSyncBackend::new(inner, Arc::clone(&self.runtime))
    }

    fn restore<K: 'static>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> impl Future<Output = Result<SlateDbSyncBackend<K>>> + Send {
        let (options, handles, runtime) = (self.options.clone(), handles.to_vec(), Arc::clone(&self.runtime));
        async move {
            // On the backend's runtime: the database's tasks start there.
            let restored = runtime
                .handle()?
                .spawn(async move { SlateDbBackend::restore(options, config, &handles, Some(reader)).await })
                .await
                .map_err(|e| Error::internal(format!("restoring a SlateDB backend: the task failed: {e}")))??;
            SlateDbSyncBackend::new(restored, runtime)
        }
    }
}
