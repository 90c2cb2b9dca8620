//! Any synchronous backend behind the asynchronous contract.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::access::KeyedStateBackendExt;
use crate::backend::{BackendCapabilities, KeyedStateBackend, MapVisit, RawTimer};
use crate::checkpoint::CheckpointLocation;
use crate::descriptor::{StateDescriptor, StateId};
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;
use crate::serializer::SharedSerializer;
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
use crate::ttl::SharedClock;

use super::backend::{AsyncKeyedStateBackend, Target};

/// A synchronous [`KeyedStateBackend`] (heap, RocksDB) behind the
/// asynchronous contract: each request makes its key current (without
/// hashing it again; only when it changed), sets the state's namespace and
/// runs the synchronous operation when its future is first polled, which
/// then completes.
///
/// The backend sits behind a mutex that only the engine's task takes, so
/// it is never contended; [`with_backend`](Self::with_backend) reaches it
/// for what the asynchronous contract leaves out (closing it, listing
/// keys). The heap backend's incremental TTL cleanup "for every record"
/// runs whenever the key changes between two requests.
pub struct SyncAsAsync<B: KeyedStateBackend> {
    backend: Mutex<B>,
    id: u64,
    range: KeyGroupRange,
    max_parallelism: u32,
    key_serializer: SharedSerializer<B::Key>,
    clock: SharedClock,
    capabilities: BackendCapabilities,
}

impl<B: KeyedStateBackend> fmt::Debug for SyncAsAsync<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncAsAsync")
            .field("backend_id", &self.id)
            .field("key_group_range", &self.range)
            .finish_non_exhaustive()
    }
}

impl<B: KeyedStateBackend> SyncAsAsync<B> {
    /// Puts `backend` behind the asynchronous contract. States registered
    /// with it before keep their handles.
    pub fn new(backend: B) -> Self {
        SyncAsAsync {
            id: backend.backend_id(),
            range: backend.key_group_range(),
            max_parallelism: backend.max_parallelism(),
            key_serializer: Arc::clone(backend.key_serializer()),
            clock: Arc::clone(backend.clock()),
            capabilities: backend.capabilities(),
            backend: Mutex::new(backend),
        }
    }

    /// Runs `f` on the synchronous backend. Its current key and namespaces
    /// are whatever the last request left; set them before accessing state.
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut B) -> Result<R>) -> Result<R> {
        let mut backend = self.backend.lock().map_err(|_| poisoned())?;
        f(&mut backend)
    }

    /// The synchronous backend back.
    pub fn into_inner(self) -> Result<B> {
        self.backend.into_inner().map_err(|_| poisoned())
    }

    /// Runs `f` with `at`'s key current and `at`'s namespace set for its state.
    #[inline]
    fn at<R>(&self, at: Target<'_>, f: impl FnOnce(&mut B) -> Result<R>) -> Result<R> {
        self.with_backend(|b| {
            if b.current_key_bytes() != Some(at.key.bytes()) {
                b.set_current_key_located(at.key.bytes(), at.key.key_group())?;
            }
            b.set_namespace_bytes(at.state, at.namespace)?;
            f(b)
        })
    }
}

fn poisoned() -> Error {
    Error::internal("the backend is unusable: an earlier request panicked while holding it")
}

impl<B: KeyedStateBackend> AsyncKeyedStateBackend for SyncAsAsync<B> {
    type Key = B::Key;

    fn backend_id(&self) -> u64 {
        self.id
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_serializer(&self) -> &SharedSerializer<B::Key> {
        &self.key_serializer
    }

    fn clock(&self) -> &SharedClock {
        &self.clock
    }

    fn capabilities(&self) -> BackendCapabilities {
        self.capabilities
    }

    fn register<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle> {
        self.with_backend(|b| b.register(descriptor))
    }

    fn has_outstanding_requests(&self) -> bool {
        false
    }

    async fn value_get<R, F>(&self, at: Target<'_>, f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        self.at(at, |b| b.raw_value_get(at.state, f))
    }

    async fn value_put(&self, at: Target<'_>, value: &[u8]) -> Result<()> {
        self.at(at, |b| b.raw_value_put(at.state, value))
    }

    async fn clear(&self, at: Target<'_>) -> Result<()> {
        self.at(at, |b| b.raw_clear(at.state))
    }

    async fn list_get<F>(&self, at: Target<'_>, f: F) -> Result<()>
    where
        F: FnMut(&[u8]) -> Result<()> + Send,
    {
        self.at(at, |b| b.raw_list_get(at.state, f))
    }

    async fn list_append_all<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        self.at(at, |b| b.raw_list_append_all(at.state, elements))
    }

    async fn list_replace<E>(&self, at: Target<'_>, elements: &[E]) -> Result<()>
    where
        E: AsRef<[u8]> + Sync,
    {
        self.at(at, |b| b.raw_list_replace(at.state, elements))
    }

    async fn map_get<R, F>(&self, at: Target<'_>, user_key: &[u8], f: F) -> Result<R>
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send,
    {
        self.at(at, |b| b.raw_map_get(at.state, user_key, f))
    }

    async fn map_put(&self, at: Target<'_>, user_key: &[u8], value: &[u8]) -> Result<()> {
        self.at(at, |b| b.raw_map_put(at.state, user_key, value))
    }

    async fn map_remove(&self, at: Target<'_>, user_key: &[u8]) -> Result<()> {
        self.at(at, |b| b.raw_map_remove(at.state, user_key))
    }

    async fn map_for_each<F>(&self, at: Target<'_>, mut f: F) -> Result<()>
    where
        F: FnMut(&[u8], &[u8]) -> Result<MapVisit> + Send,
    {
        self.at(at, |b| b.raw_map_for_each(at.state, &mut f))
    }

    async fn map_put_all(&self, at: Target<'_>, entries: &[(&[u8], &[u8])]) -> Result<()> {
        self.at(at, |b| b.raw_map_put_all(at.state, entries))
    }

    async fn map_is_empty(&self, at: Target<'_>) -> Result<bool> {
        self.at(at, |b| b.raw_map_is_empty(at.state))
    }

    async fn timer_register(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.at(at, |b| b.raw_timer_register(at.state, timestamp, at.namespace))
    }

    async fn timer_delete(&self, at: Target<'_>, timestamp: i64) -> Result<()> {
        self.at(at, |b| b.raw_timer_delete(at.state, timestamp, at.namespace))
    }

    async fn timer_peek(&self, state: StateId) -> Result<Option<i64>> {
        self.with_backend(|b| b.raw_timer_peek(state))
    }

    async fn timer_poll(&self, state: StateId, time: i64) -> Result<Option<RawTimer>> {
        self.with_backend(|b| b.raw_timer_poll(state, time))
    }

    async fn snapshot(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> Result<PendingSnapshot> {
        self.with_backend(|b| b.snapshot(checkpoint_id, location, options))
    }

    async fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> Result<()> {
        self.with_backend(|b| b.notify_checkpoint_complete(checkpoint_id))
    }

    async fn notify_checkpoint_aborted(&self, checkpoint_id: u64) -> Result<()> {
        self.with_backend(|b| b.notify_checkpoint_aborted(checkpoint_id))
    }
}
