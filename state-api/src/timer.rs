//! Timers: per-operator event-time and processing-time timer services,
//! stored in the keyed backend by key group.
//!
//! A timer is `(timestamp, key, namespace)`, a set element: registering it
//! twice is a no-op, deleting a timer that does not exist is a no-op.
//! Timers fire in one total order, the same on every backend and after any
//! restore or rescale: by timestamp, then key group, then serialized key,
//! then serialized namespace (bytes compared lexicographically).
//!
//! A timer service is registered like a state (its name shares the
//! backend's state names), is snapshotted with the keyed state and is
//! restored and rescaled by key group with it.
//!
//! ```
//! use flowstate_api::*;
//! # fn demo<B: KeyedStateBackend<Key = u64>>(backend: &mut B) -> Result<()> {
//! let windows = backend.register(TimerServiceDescriptor::event_time("windows").in_namespace::<u64>())?;
//! backend.set_current_key(&7)?;
//! windows.register(backend, 1_000, &0)?;
//! windows.register(backend, 1_000, &0)?; // a duplicate: no-op
//! while let Some(timer) = windows.poll(backend, 1_500)? {
//!     // The timer's key is now the current key.
//!     assert_eq!((timer.timestamp, timer.key, timer.namespace), (1_000, 7, 0));
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::KeyedStateBackend;
use crate::descriptor::{State, StateDescriptor, StateKind, StateMetaInfo, StateRef};
use crate::error::{Error, Result};
use crate::serializer::{default_serializer, SerializerId, SharedSerializer, VoidNamespace, VoidNamespaceSerializer};
use crate::ttl::StateTtlConfig;

/// Which clock a timer service follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires as the watermark advances.
    EventTime,
    /// Fires as the wall clock advances.
    ProcessingTime,
}

impl TimeDomain {
    /// The identity a timer service of this domain records as its value
    /// serializer, so a restore cannot mix the two domains up.
    pub fn serializer_id(self) -> SerializerId {
        let name = match self {
            TimeDomain::EventTime => "flowstate.timer.event-time",
            TimeDomain::ProcessingTime => "flowstate.timer.processing-time",
        };
        SerializerId::new(name, 1)
    }
}

impl fmt::Display for TimeDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeDomain::EventTime => "event time",
            TimeDomain::ProcessingTime => "processing time",
        })
    }
}

/// Describes a timer service: its name, time domain and namespace serializer.
pub struct TimerServiceDescriptor<N = VoidNamespace> {
    name: Arc<str>,
    domain: TimeDomain,
    namespace: SharedSerializer<N>,
}

impl TimerServiceDescriptor<VoidNamespace> {
    /// An event-time timer service named `name`, in the void namespace.
    pub fn event_time(name: &str) -> Self {
        Self::new(name, TimeDomain::EventTime)
    }

    /// A processing-time timer service named `name`, in the void namespace.
    pub fn processing_time(name: &str) -> Self {
        Self::new(name, TimeDomain::ProcessingTime)
    }

    /// A timer service of `domain` named `name`, in the void namespace.
    pub fn new(name: &str, domain: TimeDomain) -> Self {
        TimerServiceDescriptor {
            name: Arc::from(name),
            domain,
            namespace: Arc::new(VoidNamespaceSerializer),
        }
    }
}

impl<N> TimerServiceDescriptor<N> {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Timers carry namespaces of type `N2`, serialized with bincode.
    pub fn in_namespace<N2: Serialize + DeserializeOwned + 'static>(self) -> TimerServiceDescriptor<N2> {
        self.with_namespace_serializer(default_serializer::<N2>())
    }

    /// Timers carry namespaces of type `N2`, with the given serializer.
    pub fn with_namespace_serializer<N2>(self, namespace: SharedSerializer<N2>) -> TimerServiceDescriptor<N2> {
        TimerServiceDescriptor {
            name: self.name,
            domain: self.domain,
            namespace,
        }
    }
}

impl<N> StateDescriptor for TimerServiceDescriptor<N> {
    type Handle = TimerService<N>;

    fn meta(&self) -> StateMetaInfo {
        StateMetaInfo {
            name: self.name.to_string(),
            kind: StateKind::Timers,
            namespace_serializer: self.namespace.id(),
            value_serializer: self.domain.serializer_id(),
            user_key_serializer: None,
            ttl: false,
        }
    }

    fn ttl(&self) -> Option<StateTtlConfig> {
        None
    }

    fn into_handle(self, slot: StateRef) -> TimerService<N> {
        TimerService(Arc::new(ServiceInner {
            slot,
            name: self.name,
            domain: self.domain,
            namespace: self.namespace,
        }))
    }
}

struct ServiceInner<N> {
    slot: StateRef,
    name: Arc<str>,
    domain: TimeDomain,
    namespace: SharedSerializer<N>,
}

/// A registered timer service: a cheap, clonable handle.
pub struct TimerService<N = VoidNamespace>(Arc<ServiceInner<N>>);

impl<N> Clone for TimerService<N> {
    fn clone(&self) -> Self {
        TimerService(Arc::clone(&self.0))
    }
}

impl<N> fmt::Debug for TimerService<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerService")
            .field("name", &self.0.name)
            .field("domain", &self.0.domain)
            .field("slot", &self.0.slot)
            .finish()
    }
}

impl<N> State for TimerService<N> {
    type Namespace = N;
    fn slot(&self) -> StateRef {
        self.0.slot
    }
    fn name(&self) -> &str {
        &self.0.name
    }
    fn namespace_serializer(&self) -> &SharedSerializer<N> {
        &self.0.namespace
    }
    fn ttl(&self) -> Option<&StateTtlConfig> {
        None
    }
}

/// A fired timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer<K, N = VoidNamespace> {
    /// When it was due.
    pub timestamp: i64,
    /// Its key (the backend's current key once it is returned).
    pub key: K,
    /// Its namespace.
    pub namespace: N,
}

impl<N> TimerService<N> {
    /// The service's time domain.
    pub fn domain(&self) -> TimeDomain {
        self.0.domain
    }

    fn id<B: KeyedStateBackend + ?Sized>(&self, b: &B) -> Result<crate::descriptor::StateId> {
        self.id_in(b.backend_id())
    }

    /// Its state id, if it was registered with the backend of id `backend`.
    pub(crate) fn id_in(&self, backend: u64) -> Result<crate::descriptor::StateId> {
        if self.0.slot.backend == backend {
            Ok(self.0.slot.id)
        } else {
            Err(Error::invalid(format!(
                "timer service {:?} was registered with another backend",
                self.0.name
            )))
        }
    }

    /// `namespace`, serialized.
    pub(crate) fn namespace_bytes(&self, namespace: &N) -> Result<Vec<u8>> {
        let mut ns = Vec::new();
        self.0
            .namespace
            .serialize(namespace, &mut ns)
            .map_err(|e| e.context(format!("timer service {:?}: namespace", self.0.name)))?;
        Ok(ns)
    }

    /// Registers a timer at `timestamp` for the current key in `namespace`.
    /// Registering a timer that exists is a no-op.
    pub fn register<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, timestamp: i64, namespace: &N) -> Result<()> {
        let id = self.id(b)?;
        let ns = self.namespace_bytes(namespace)?;
        b.raw_timer_register(id, timestamp, &ns)
    }

    /// Deletes the current key's timer at `timestamp` in `namespace`.
    /// Deleting a timer that does not exist is a no-op.
    pub fn delete<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, timestamp: i64, namespace: &N) -> Result<()> {
        let id = self.id(b)?;
        let ns = self.namespace_bytes(namespace)?;
        b.raw_timer_delete(id, timestamp, &ns)
    }

    /// The timestamp of the next timer to fire, if any.
    pub fn next_timestamp<B: KeyedStateBackend + ?Sized>(&self, b: &mut B) -> Result<Option<i64>> {
        let id = self.id(b)?;
        b.raw_timer_peek(id)
    }

    /// Removes and returns the first timer (in the total order) whose
    /// timestamp is at most `time`, and makes its key the current key, so
    /// the caller can act on the key's state at once. Timers registered
    /// meanwhile with a timestamp at most `time` are returned by later
    /// polls.
    pub fn poll<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, time: i64) -> Result<Option<Timer<B::Key, N>>> {
        let id = self.id(b)?;
        let Some((timestamp, key, ns)) = b.raw_timer_poll(id, time)? else {
            return Ok(None);
        };
        let (key_value, namespace) = self.decode_fired(b.key_serializer(), &key, &ns)?;
        b.set_current_key_bytes(&key)?;
        Ok(Some(Timer {
            timestamp,
            key: key_value,
            namespace,
        }))
    }

    /// The key and namespace of a fired timer, decoded.
    pub(crate) fn decode_fired<K>(&self, keys: &SharedSerializer<K>, key: &[u8], ns: &[u8]) -> Result<(K, N)> {
        let ctx = |e: Error| e.context(format!("timer service {:?}: a fired timer", self.0.name));
        let namespace = self.0.namespace.deserialize(ns).map_err(ctx)?;
        let key = keys.deserialize(key).map_err(ctx)?;
        Ok((key, namespace))
    }

    /// Fires every timer due at `time`: removes and returns, in order,
    /// every timer with timestamp at most `time` (the last one's key is
    /// current). Use [`poll`](Self::poll) to act on each timer before the
    /// next fires.
    pub fn advance<B: KeyedStateBackend + ?Sized>(&self, b: &mut B, time: i64) -> Result<Vec<Timer<B::Key, N>>> {
        let mut fired = Vec::new();
        while let Some(t) = self.poll(b, time)? {
            fired.push(t);
        }
        Ok(fired)
    }

    /// [`advance`](Self::advance) for an event-time service: the watermark
    /// reached `watermark`. Refused on a processing-time service.
    pub fn advance_watermark<B: KeyedStateBackend + ?Sized>(
        &self,
        b: &mut B,
        watermark: i64,
    ) -> Result<Vec<Timer<B::Key, N>>> {
        self.check_domain(TimeDomain::EventTime)?;
        self.advance(b, watermark)
    }

    /// [`advance`](Self::advance) for a processing-time service: the clock
    /// reached `time`. Refused on an event-time service.
    pub fn advance_processing_time<B: KeyedStateBackend + ?Sized>(
        &self,
        b: &mut B,
        time: i64,
    ) -> Result<Vec<Timer<B::Key, N>>> {
        self.check_domain(TimeDomain::ProcessingTime)?;
        self.advance(b, time)
    }

    /// Refuses a service that does not run on `want`.
    pub(crate) fn check_domain(&self, want: TimeDomain) -> Result<()> {
        if self.0.domain == want {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "timer service {:?} runs on {}, not {want}",
                self.0.name, self.0.domain
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::{decode_timestamp, encode_timestamp};

    #[test]
    fn timestamp_encoding_orders_like_time() {
        let ts = [i64::MIN, -1_000, -1, 0, 1, 1_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(encode_timestamp(w[0]) < encode_timestamp(w[1]), "{w:?}");
        }
        for t in ts {
            assert_eq!(decode_timestamp(encode_timestamp(t)), t);
        }
        assert_eq!(encode_timestamp(0), [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_timestamp(-1), [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn domains_record_distinct_serializers() {
        let e = TimerServiceDescriptor::event_time("t").meta();
        let p = TimerServiceDescriptor::processing_time("t").meta();
        assert_eq!(e.kind, StateKind::Timers);
        assert!(e.incompatibility(&p).is_some());
    }
}
