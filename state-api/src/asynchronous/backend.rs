//! The byte-level contract of an asynchronous keyed state backend, and the
//! key of a record as its requests carry it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{check_key_group, BackendCapabilities, MapVisit, RawTimer};
use crate::checkpoint::CheckpointLocation;
use crate::descriptor::{StateDescriptor, StateId};
use crate::error::Result;
use crate::keygroup::KeyGroupRange;
use crate::serializer::SharedSerializer;
use crate::snapshot::{PendingSnapshot, SnapshotOptions};
use crate::ttl::SharedClock;

/// A record's key, serialized once, with its key group computed once: what
/// every request of the record carries instead of a backend-wide current
/// key. Cheap to clone.
#[derive(Clone)]
pub struct KeyRef {
    bytes: Bytes,
    key_group: u32,
    /// The MurmurHash3 of the bytes (the key group's hash), which is what
    /// hashing a `KeyRef` feeds: the bytes are hashed once.
    hash: u32,
}

impl PartialEq for KeyRef {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for KeyRef {}

impl std::hash::Hash for KeyRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

impl KeyRef {
    /// Serializes `key` with `backend`'s key serializer and finds its key
    /// group, which must be one of `backend`'s.
    pub fn new<B: AsyncKeyedStateBackend>(backend: &B, key: &B::Key) -> Result<Self> {
        let mut bytes = Vec::new();
        backend
            .key_serializer()
            .serialize(key, &mut bytes)
            .map_err(|e| e.context("serializing a record's key"))?;
        Self::from_bytes(backend, bytes)
    }

    /// The serialized key `bytes`, whose key group must be one of `backend`'s.
    pub fn from_bytes<B: AsyncKeyedStateBackend>(backend: &B, bytes: impl Into<Bytes>) -> Result<Self> {
        let bytes = bytes.into();
        let hash = crate::keygroup::murmur3_32(&bytes, 0);
        let key_group = hash % backend.max_parallelism();
        check_key_group(key_group, backend.key_group_range())?;
        Ok(KeyRef { bytes, key_group, hash })
    }

    /// The serialized key.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key's key group.
    #[inline]
    pub fn key_group(&self) -> u32 {
        self.key_group
    }
}

/// Shows the key group and up to 32 bytes of the key in hex, e.g.
/// `key 0x0700000000000000 (key group 3)`.
impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 32;
        f.write_str("key 0x")?;
        for b in self.bytes.iter().take(SHOWN) {
            write!(f, "{b:02x}")?;
        }
        if self.bytes.len() > SHOWN {
            write!(f, "… ({} bytes)", self.bytes.len())?;
        }
        write!(f, " (key group {})", self.key_group)
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What one request acts on: a state, a record's key and a namespace.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The state.
    pub state: StateId,
    /// The record's key.
    pub key: &'a KeyRef,
    /// The serialized namespace (empty: the void namespace).
    pub namespace: &'a [u8],
}

/// The byte-level contract of an asynchronous keyed state backend: the
/// asynchronous twin of [`KeyedStateBackend`](crate::KeyedStateBackend).
///
/// Every request names its state, key and namespace (a [`Target`]) instead
/// of acting on a current key, and takes `&self`, so many records can have
/// requests outstanding at once. Each returns a future; a backend whose
/// storage is remote completes them when its I/O does, and
/// [`SyncAsAsync`](super::SyncAsAsync) gives every synchronous backend this
/// contract with futures that complete when first polled.
///
/// Use the typed methods of [`RecordCtx`](super::RecordCtx) rather than
/// these: serializers, TTL, folds and namespace merges are written once
/// there, sharing their byte-level rules with the synchronous face. The
/// caller keeps the requests of one key in order (the
/// [`KeyOrderedExecutor`](super::KeyOrderedExecutor) runs one record per
/// key at a time). A request takes effect while its future is polled or,
/// in a backend doing I/O of its own, in the order requests were made.
pub trait AsyncKeyedStateBackend: Send + Sync {
    /// The key type.
    type Key;

    /// This backend's process-unique id, the one its state handles carry.
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

    /// Registers a state and returns its handle, with the rules of
    /// [`KeyedStateBackendExt::register`](crate::KeyedStateBackendExt::register).
    fn register<D: StateDescriptor>(&self, descriptor: D) -> Result<D::Handle>;

    /// True while a request may complete, and wake the task waiting for it,
    /// without being polled (I/O in flight). A request counts until its
    /// waker has been woken. The executor reports a record that waits while
    /// no request is outstanding, and that nothing woke, as one that can
    /// never make progress. A backend whose futures complete when polled
    /// always answers false.
    fn has_outstanding_requests(&self) -> bool;

    // ------------------------------------------------------------ values

    /// Calls `f` with the value (or accumulator) at `at`, or `None`;
    /// resolves to what `f` returns.
    fn value_get<R, F>(&self, at: Target<'_>, f: F) -> impl Future<Output = Result<R>> + Send
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send;
    /// Replaces the value at `at`.
    fn value_put(&self, at: Target<'_>, value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Removes whatever the state holds at `at`.
    fn clear(&self, at: Target<'_>) -> impl Future<Output = Result<()>> + Send;

    // ------------------------------------------------------------ lists

    /// Calls `f` with each element of the list at `at`, in order.
    fn list_get<F>(&self, at: Target<'_>, f: F) -> impl Future<Output = Result<()>> + Send
    where
        F: FnMut(&[u8]) -> Result<()> + Send;
    /// Appends elements; nothing to append is a no-op.
    fn list_append_all<E>(&self, at: Target<'_>, elements: &[E]) -> impl Future<Output = Result<()>> + Send
    where
        E: AsRef<[u8]> + Sync;
    /// Replaces the list; an empty list clears it.
    fn list_replace<E>(&self, at: Target<'_>, elements: &[E]) -> impl Future<Output = Result<()>> + Send
    where
        E: AsRef<[u8]> + Sync;

    // ------------------------------------------------------------ maps

    /// Calls `f` with the value under `user_key` in the map at `at`, or
    /// `None`; resolves to what `f` returns.
    fn map_get<R, F>(&self, at: Target<'_>, user_key: &[u8], f: F) -> impl Future<Output = Result<R>> + Send
    where
        F: FnOnce(Option<&[u8]>) -> Result<R> + Send;
    /// Puts a map entry.
    fn map_put(&self, at: Target<'_>, user_key: &[u8], value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Removes a map entry.
    fn map_remove(&self, at: Target<'_>, user_key: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Visits each entry of the map at `at`; `f` decides whether to keep,
    /// remove (written through) or stop.
    fn map_for_each<F>(&self, at: Target<'_>, f: F) -> impl Future<Output = Result<()>> + Send
    where
        F: FnMut(&[u8], &[u8]) -> Result<MapVisit> + Send;

    /// Puts map entries, in order (a later entry of the same user key
    /// wins). By default one [`map_put`](Self::map_put) each.
    fn map_put_all(&self, at: Target<'_>, entries: &[(&[u8], &[u8])]) -> impl Future<Output = Result<()>> + Send {
        async move {
            for (user_key, value) in entries {
                self.map_put(at, user_key, value).await?;
            }
            Ok(())
        }
    }
    /// True when the map at `at` has no entry. By default visits the first
    /// entry.
    fn map_is_empty(&self, at: Target<'_>) -> impl Future<Output = Result<bool>> + Send {
        async move {
            let mut empty = true;
            self.map_for_each(at, |_, _| {
                empty = false;
                Ok(MapVisit::Stop)
            })
            .await?;
            Ok(empty)
        }
    }

    // ------------------------------------------------------------ timers

    /// Registers the timer `(timestamp, at.key, at.namespace)` of timer
    /// state `at.state`; a timer that exists is left as it is.
    fn timer_register(&self, at: Target<'_>, timestamp: i64) -> impl Future<Output = Result<()>> + Send;
    /// Deletes that timer; a timer that does not exist is a no-op.
    fn timer_delete(&self, at: Target<'_>, timestamp: i64) -> impl Future<Output = Result<()>> + Send;
    /// The timestamp of the first timer of `state`, if any.
    fn timer_peek(&self, state: StateId) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Removes and returns the first timer of `state` in the total order
    /// (timestamp, key group, key bytes, namespace bytes) if its timestamp
    /// is at most `time`.
    fn timer_poll(&self, state: StateId, time: i64) -> impl Future<Output = Result<Option<RawTimer>>> + Send;

    // ------------------------------------------------------------ checkpoints

    /// The synchronous phase of a snapshot, as
    /// [`KeyedStateBackend::snapshot`](crate::KeyedStateBackend::snapshot):
    /// when the future resolves, the state is captured and later writes
    /// are not in the snapshot; the [`PendingSnapshot`] writes it.
    fn snapshot(
        &self,
        checkpoint_id: u64,
        location: Arc<CheckpointLocation>,
        options: SnapshotOptions,
    ) -> impl Future<Output = Result<PendingSnapshot>> + Send;
    /// Checkpoint `checkpoint_id` is complete (its metadata is written).
    fn notify_checkpoint_complete(&self, checkpoint_id: u64) -> impl Future<Output = Result<()>> + Send;
    /// Checkpoint `checkpoint_id` was aborted and must never be used as a base.
    fn notify_checkpoint_aborted(&self, checkpoint_id: u64) -> impl Future<Output = Result<()>> + Send;
}
