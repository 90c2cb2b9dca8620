//! State descriptors (what to register) and the typed handles they become.
//!
//! A descriptor names a state and carries its serializers, an optional
//! default and an optional TTL. Registering it with a backend gives a handle:
//! a cheap, clonable id that borrows nothing, so an operator can keep many.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::serializer::{
    default_serializer, SchemaCompatibility, SerializerId, SharedSerializer, VoidNamespace, VoidNamespaceSerializer,
};
use crate::ttl::StateTtlConfig;

/// The kind of a keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// A list of elements per key and namespace.
    List,
    /// A map of user keys to values per key and namespace.
    Map,
    /// A value folded by a reduce function.
    Reducing,
    /// An accumulator folded by an aggregate function.
    Aggregating,
    /// A timer service: a set of `(timestamp, key, namespace)` timers.
    Timers,
}

impl StateKind {
    /// How a backend stores the state: reducing and aggregating state are
    /// stored as single values.
    pub fn storage(self) -> StorageKind {
        match self {
            StateKind::Value | StateKind::Reducing | StateKind::Aggregating => StorageKind::Value,
            StateKind::List => StorageKind::List,
            StateKind::Map => StorageKind::Map,
            StateKind::Timers => StorageKind::Timers,
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
            StateKind::Timers => "timers",
        };
        f.write_str(s)
    }
}

/// The three physical layouts a backend must store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageKind {
    /// One byte string per (key, namespace).
    Value,
    /// A sequence of byte strings per (key, namespace).
    List,
    /// A map of byte strings per (key, namespace).
    Map,
    /// A set of timers `(timestamp, key, namespace)`, fired in order.
    Timers,
}

/// The longest state name, in bytes.
pub const MAX_STATE_NAME_LEN: usize = 255;

/// Checks a state name, the same way for every backend and every restore:
/// 1 to [`MAX_STATE_NAME_LEN`] bytes of UTF-8 without control characters
/// (NUL included). Backends refuse other names at registration, and
/// restores refuse them in snapshot headers, so a state registered in one
/// backend always restores into another.
pub fn validate_state_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_STATE_NAME_LEN {
        "it is longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains a control character (NUL, newline, ...)"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(64).collect();
    Err(Error::invalid(format!("state name {shown:?} refused: {why}")))
}

/// What a backend records about a state, and what snapshots carry so a
/// restore can check the state it is given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMetaInfo {
    /// The state's name, unique within a backend.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Serializer of its namespace.
    pub namespace_serializer: SerializerId,
    /// Serializer of its values (list elements, map values, accumulators).
    pub value_serializer: SerializerId,
    /// Serializer of map user keys; `None` for other kinds.
    pub user_key_serializer: Option<SerializerId>,
    /// True when every value carries a TTL timestamp.
    pub ttl: bool,
}

impl StateMetaInfo {
    /// Describes how this state differs from `other` (the restored one), if it does.
    pub fn incompatibility(&self, restored: &StateMetaInfo) -> Option<String> {
        let mut why = Vec::new();
        if self.kind != restored.kind {
            why.push(format!("kind {} was restored as {}", self.kind, restored.kind));
        }
        if self.namespace_serializer != restored.namespace_serializer {
            why.push(format!(
                "namespace serializer {} does not match the restored {}",
                self.namespace_serializer, restored.namespace_serializer
            ));
        }
        if self.value_serializer != restored.value_serializer {
            why.push(format!(
                "value serializer {} does not match the restored {}",
                self.value_serializer, restored.value_serializer
            ));
        }
        if self.user_key_serializer != restored.user_key_serializer {
            why.push(format!(
                "user-key serializer {:?} does not match the restored {:?}",
                self.user_key_serializer.as_ref().map(|s| s.to_string()),
                restored.user_key_serializer.as_ref().map(|s| s.to_string())
            ));
        }
        if self.ttl != restored.ttl {
            why.push(format!(
                "TTL is {} but the restored state has it {}",
                if self.ttl { "enabled" } else { "disabled" },
                if restored.ttl { "enabled" } else { "disabled" }
            ));
        }
        if why.is_empty() {
            None
        } else {
            Some(why.join("; "))
        }
    }

    /// The error for using this state as `wanted` storage (e.g. a value
    /// operation on a list state): the caller's misuse, so
    /// [`Invalid`](crate::ErrorKind::Invalid), with the same message in every
    /// backend.
    pub fn wrong_kind(&self, wanted: StorageKind) -> Error {
        let wanted = match wanted {
            StorageKind::Value => "value",
            StorageKind::List => "list",
            StorageKind::Map => "map",
            StorageKind::Timers => "timers",
        };
        let article = if self.kind == StateKind::Aggregating { "an" } else { "a" };
        Error::invalid(format!(
            "state {:?} is {article} {} state and cannot be used as {wanted} state",
            self.name, self.kind
        ))
    }
}

/// The index of a registered state within its backend.
pub type StateId = u32;

/// Where a registered state lives: its backend and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateRef {
    /// The process-unique id of the backend that registered the state.
    pub backend: u64,
    /// The state's index in that backend.
    pub id: StateId,
}

/// What every descriptor carries besides its value types.
#[derive(Clone)]
pub(crate) struct Common<N> {
    pub(crate) name: Arc<str>,
    pub(crate) namespace: SharedSerializer<N>,
    pub(crate) ttl: Option<StateTtlConfig>,
}

impl Common<VoidNamespace> {
    fn void(name: &str) -> Self {
        Common {
            name: Arc::from(name),
            namespace: Arc::new(VoidNamespaceSerializer),
            ttl: None,
        }
    }
}

/// A registered state: slot, name, namespace serializer and TTL.
pub(crate) struct HandleCore<N> {
    pub(crate) slot: StateRef,
    pub(crate) common: Common<N>,
}

/// Common access to every typed handle.
pub trait State {
    /// The namespace type.
    type Namespace;
    /// The slot the state was registered at.
    fn slot(&self) -> StateRef;
    /// The state's name.
    fn name(&self) -> &str;
    /// The namespace serializer.
    fn namespace_serializer(&self) -> &SharedSerializer<Self::Namespace>;
    /// The TTL, if any.
    fn ttl(&self) -> Option<&StateTtlConfig>;
}

/// Turns a descriptor into a handle once a backend has registered it.
pub trait StateDescriptor {
    /// The handle type.
    type Handle: State;
    /// What the backend records and snapshots carry.
    fn meta(&self) -> StateMetaInfo;
    /// The TTL configuration, if any.
    fn ttl(&self) -> Option<StateTtlConfig>;
    /// Builds the handle for `slot`.
    fn into_handle(self, slot: StateRef) -> Self::Handle;

    /// How this descriptor's value serializer (of values, list elements,
    /// map values or accumulators) reads values written by `written`. By
    /// default only as is, by the same serializer.
    fn value_compatibility(&self, written: &SerializerId) -> SchemaCompatibility {
        if *written == self.meta().value_serializer {
            SchemaCompatibility::AsIs
        } else {
            SchemaCompatibility::Incompatible
        }
    }

    /// Rewrites one stored value written by `written` in this descriptor's
    /// encoding (when [`value_compatibility`](Self::value_compatibility) is
    /// [`AfterMigration`](SchemaCompatibility::AfterMigration)). By default
    /// refused.
    fn migrate_value(&self, written: &SerializerId, bytes: &[u8]) -> Result<Vec<u8>> {
        let _ = bytes;
        Err(Error::incompatible(format!(
            "state {:?} cannot migrate values written by {written}",
            self.meta().name
        )))
    }
}

/// Reads `bytes` written by `written` with `serializer` and writes them in
/// its own encoding.
fn migrate_with<V>(serializer: &SharedSerializer<V>, written: &SerializerId, bytes: &[u8]) -> Result<Vec<u8>> {
    let value = serializer.deserialize_written_by(written, bytes)?;
    let mut out = Vec::with_capacity(bytes.len());
    serializer.serialize(&value, &mut out)?;
    Ok(out)
}

/// The value-migration methods of a descriptor whose value serializer is
/// its field `$field`.
macro_rules! migrations {
    ($field:ident) => {
        fn value_compatibility(&self, written: &SerializerId) -> SchemaCompatibility {
            self.$field.compatibility(written)
        }
        fn migrate_value(&self, written: &SerializerId, bytes: &[u8]) -> Result<Vec<u8>> {
            migrate_with(&self.$field, written, bytes)
        }
    };
}

/// A reduce function: folds two values into one.
pub type ReduceFn<V> = Arc<dyn Fn(&V, &V) -> V + Send + Sync>;

/// An aggregate function, as in Flink: inputs are added into an accumulator,
/// accumulators merge, and a result is read from an accumulator.
///
/// `add` takes the accumulator by `&mut`: mutate it in place, or assign a new
/// value; both are fine.
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync {
    /// A fresh, empty accumulator.
    fn create_accumulator(&self) -> ACC;
    /// Adds `value` into `acc`.
    fn add(&self, value: IN, acc: &mut ACC);
    /// The result for `acc`.
    fn get_result(&self, acc: &ACC) -> OUT;
    /// Merges two accumulators.
    fn merge(&self, a: ACC, b: ACC) -> ACC;
}

macro_rules! common_builders {
    ($desc:ident < $($p:ident),* >, $($field:ident),*) => {
        impl<$($p,)* N> $desc<$($p,)* N> {
            /// Gives the state a time to live.
            pub fn with_ttl(mut self, ttl: StateTtlConfig) -> Self {
                self.common.ttl = Some(ttl);
                self
            }

            /// The state's name.
            pub fn name(&self) -> &str {
                &self.common.name
            }

            /// Scopes the state to namespaces of type `N2`, serialized with bincode.
            pub fn in_namespace<N2>(self) -> $desc<$($p,)* N2>
            where
                N2: Serialize + DeserializeOwned + 'static,
            {
                self.with_namespace_serializer(default_serializer::<N2>())
            }

            /// Scopes the state to namespaces of type `N2`, with the given serializer.
            pub fn with_namespace_serializer<N2>(self, namespace: SharedSerializer<N2>) -> $desc<$($p,)* N2> {
                $desc {
                    common: Common { name: self.common.name, namespace, ttl: self.common.ttl },
                    $($field: self.$field,)*
                }
            }
        }
    };
}

macro_rules! handle_impl {
    ($handle:ident < $($p:ident),* >) => {
        impl<$($p,)* N> Clone for $handle<$($p,)* N> {
            fn clone(&self) -> Self {
                $handle(Arc::clone(&self.0))
            }
        }

        impl<$($p,)* N> fmt::Debug for $handle<$($p,)* N> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("name", &self.0.core.common.name)
                    .field("slot", &self.0.core.slot)
                    .finish()
            }
        }

        impl<$($p,)* N> State for $handle<$($p,)* N> {
            type Namespace = N;
            fn slot(&self) -> StateRef {
                self.0.core.slot
            }
            fn name(&self) -> &str {
                &self.0.core.common.name
            }
            fn namespace_serializer(&self) -> &SharedSerializer<N> {
                &self.0.core.common.namespace
            }
            fn ttl(&self) -> Option<&StateTtlConfig> {
                self.0.core.common.ttl.as_ref()
            }
        }
    };
}

fn meta<N>(common: &Common<N>, kind: StateKind, value: SerializerId, user_key: Option<SerializerId>) -> StateMetaInfo {
    StateMetaInfo {
        name: common.name.to_string(),
        kind,
        namespace_serializer: common.namespace.id(),
        value_serializer: value,
        user_key_serializer: user_key,
        ttl: common.ttl.is_some(),
    }
}

// ---------------------------------------------------------------- value

/// Describes a value state: one `V` per key and namespace.
pub struct ValueStateDescriptor<V, N = VoidNamespace> {
    common: Common<N>,
    value: SharedSerializer<V>,
    default: Option<V>,
}

impl<V: Serialize + DeserializeOwned + 'static> ValueStateDescriptor<V> {
    /// A value state named `name`, serialized with bincode.
    pub fn new(name: &str) -> Self {
        Self::with_serializer(name, default_serializer::<V>())
    }
}

impl<V> ValueStateDescriptor<V> {
    /// A value state with an explicit serializer.
    pub fn with_serializer(name: &str, value: SharedSerializer<V>) -> Self {
        ValueStateDescriptor {
            common: Common::void(name),
            value,
            default: None,
        }
    }
}

impl<V, N> ValueStateDescriptor<V, N> {
    /// The value read when none is stored (a fresh clone each time).
    pub fn with_default(mut self, default: V) -> Self {
        self.default = Some(default);
        self
    }
}

common_builders!(ValueStateDescriptor<V>, value, default);

pub(crate) struct ValueInner<V, N> {
    pub(crate) core: HandleCore<N>,
    pub(crate) value: SharedSerializer<V>,
    pub(crate) default: Option<V>,
}

/// A registered value state.
pub struct ValueState<V, N = VoidNamespace>(pub(crate) Arc<ValueInner<V, N>>);
handle_impl!(ValueState<V>);

impl<V, N> StateDescriptor for ValueStateDescriptor<V, N> {
    type Handle = ValueState<V, N>;
    fn meta(&self) -> StateMetaInfo {
        meta(&self.common, StateKind::Value, self.value.id(), None)
    }
    migrations!(value);
    fn ttl(&self) -> Option<StateTtlConfig> {
        self.common.ttl
    }
    fn into_handle(self, slot: StateRef) -> ValueState<V, N> {
        ValueState(Arc::new(ValueInner {
            core: HandleCore {
                slot,
                common: self.common,
            },
            value: self.value,
            default: self.default,
        }))
    }
}

// ---------------------------------------------------------------- list

/// Describes a list state: a list of `V` per key and namespace.
pub struct ListStateDescriptor<V, N = VoidNamespace> {
    common: Common<N>,
    element: SharedSerializer<V>,
}

impl<V: Serialize + DeserializeOwned + 'static> ListStateDescriptor<V> {
    /// A list state named `name`, elements serialized with bincode.
    pub fn new(name: &str) -> Self {
        Self::with_serializer(name, default_serializer::<V>())
    }
}

impl<V> ListStateDescriptor<V> {
    /// A list state with an explicit element serializer.
    pub fn with_serializer(name: &str, element: SharedSerializer<V>) -> Self {
        ListStateDescriptor {
            common: Common::void(name),
            element,
        }
    }
}

common_builders!(ListStateDescriptor<V>, element);

pub(crate) struct ListInner<V, N> {
    pub(crate) core: HandleCore<N>,
    pub(crate) element: SharedSerializer<V>,
}

/// A registered list state.
pub struct ListState<V, N = VoidNamespace>(pub(crate) Arc<ListInner<V, N>>);
handle_impl!(ListState<V>);

impl<V, N> StateDescriptor for ListStateDescriptor<V, N> {
    type Handle = ListState<V, N>;
    fn meta(&self) -> StateMetaInfo {
        meta(&self.common, StateKind::List, self.element.id(), None)
    }
    migrations!(element);
    fn ttl(&self) -> Option<StateTtlConfig> {
        self.common.ttl
    }
    fn into_handle(self, slot: StateRef) -> ListState<V, N> {
        ListState(Arc::new(ListInner {
            core: HandleCore {
                slot,
                common: self.common,
            },
            element: self.element,
        }))
    }
}

// ---------------------------------------------------------------- map

/// Describes a map state: a map of `UK` to `UV` per key and namespace.
pub struct MapStateDescriptor<UK, UV, N = VoidNamespace> {
    common: Common<N>,
    user_key: SharedSerializer<UK>,
    value: SharedSerializer<UV>,
}

impl<UK, UV> MapStateDescriptor<UK, UV>
where
    UK: Serialize + DeserializeOwned + 'static,
    UV: Serialize + DeserializeOwned + 'static,
{
    /// A map state named `name`, serialized with bincode.
    pub fn new(name: &str) -> Self {
        Self::with_serializers(name, default_serializer::<UK>(), default_serializer::<UV>())
    }
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    /// A map state with explicit serializers.
    pub fn with_serializers(name: &str, user_key: SharedSerializer<UK>, value: SharedSerializer<UV>) -> Self {
        MapStateDescriptor {
            common: Common::void(name),
            user_key,
            value,
        }
    }
}

common_builders!(MapStateDescriptor<UK, UV>, user_key, value);

pub(crate) struct MapInner<UK, UV, N> {
    pub(crate) core: HandleCore<N>,
    pub(crate) user_key: SharedSerializer<UK>,
    pub(crate) value: SharedSerializer<UV>,
}

/// A registered map state.
pub struct MapState<UK, UV, N = VoidNamespace>(pub(crate) Arc<MapInner<UK, UV, N>>);
handle_impl!(MapState<UK, UV>);

impl<UK, UV, N> StateDescriptor for MapStateDescriptor<UK, UV, N> {
    type Handle = MapState<UK, UV, N>;
    fn meta(&self) -> StateMetaInfo {
        meta(&self.common, StateKind::Map, self.value.id(), Some(self.user_key.id()))
    }
    migrations!(value);
    fn ttl(&self) -> Option<StateTtlConfig> {
        self.common.ttl
    }
    fn into_handle(self, slot: StateRef) -> MapState<UK, UV, N> {
        MapState(Arc::new(MapInner {
            core: HandleCore {
                slot,
                common: self.common,
            },
            user_key: self.user_key,
            value: self.value,
        }))
    }
}

// ---------------------------------------------------------------- reducing

/// Describes a reducing state: added values are folded with a reduce function.
pub struct ReducingStateDescriptor<V, N = VoidNamespace> {
    common: Common<N>,
    value: SharedSerializer<V>,
    reduce: ReduceFn<V>,
}

impl<V: Serialize + DeserializeOwned + 'static> ReducingStateDescriptor<V> {
    /// A reducing state named `name` folding with `reduce`, serialized with bincode.
    pub fn new(name: &str, reduce: impl Fn(&V, &V) -> V + Send + Sync + 'static) -> Self {
        Self::with_serializer(name, reduce, default_serializer::<V>())
    }
}

impl<V> ReducingStateDescriptor<V> {
    /// A reducing state with an explicit serializer.
    pub fn with_serializer(
        name: &str,
        reduce: impl Fn(&V, &V) -> V + Send + Sync + 'static,
        value: SharedSerializer<V>,
    ) -> Self {
        ReducingStateDescriptor {
            common: Common::void(name),
            value,
            reduce: Arc::new(reduce),
        }
    }
}

common_builders!(ReducingStateDescriptor<V>, value, reduce);

pub(crate) struct ReducingInner<V, N> {
    pub(crate) core: HandleCore<N>,
    pub(crate) value: SharedSerializer<V>,
    pub(crate) reduce: ReduceFn<V>,
}

/// A registered reducing state.
pub struct ReducingState<V, N = VoidNamespace>(pub(crate) Arc<ReducingInner<V, N>>);
handle_impl!(ReducingState<V>);

impl<V, N> StateDescriptor for ReducingStateDescriptor<V, N> {
    type Handle = ReducingState<V, N>;
    fn meta(&self) -> StateMetaInfo {
        meta(&self.common, StateKind::Reducing, self.value.id(), None)
    }
    migrations!(value);
    fn ttl(&self) -> Option<StateTtlConfig> {
        self.common.ttl
    }
    fn into_handle(self, slot: StateRef) -> ReducingState<V, N> {
        ReducingState(Arc::new(ReducingInner {
            core: HandleCore {
                slot,
                common: self.common,
            },
            value: self.value,
            reduce: self.reduce,
        }))
    }
}

// ---------------------------------------------------------------- aggregating

/// A shared aggregate function.
pub type SharedAggregate<IN, ACC, OUT> = Arc<dyn AggregateFunction<IN, ACC, OUT>>;

/// Describes an aggregating state: inputs `IN` fold into an accumulator
/// `ACC`, read as `OUT`.
pub struct AggregatingStateDescriptor<IN, ACC, OUT, N = VoidNamespace> {
    common: Common<N>,
    accumulator: SharedSerializer<ACC>,
    function: SharedAggregate<IN, ACC, OUT>,
}

impl<IN, ACC: Serialize + DeserializeOwned + 'static, OUT> AggregatingStateDescriptor<IN, ACC, OUT> {
    /// An aggregating state named `name`, accumulators serialized with bincode.
    pub fn new(name: &str, function: impl AggregateFunction<IN, ACC, OUT> + 'static) -> Self {
        Self::with_serializer(name, function, default_serializer::<ACC>())
    }
}

impl<IN, ACC, OUT> AggregatingStateDescriptor<IN, ACC, OUT> {
    /// An aggregating state with an explicit accumulator serializer.
    pub fn with_serializer(
        name: &str,
        function: impl AggregateFunction<IN, ACC, OUT> + 'static,
        accumulator: SharedSerializer<ACC>,
    ) -> Self {
        AggregatingStateDescriptor {
            common: Common::void(name),
            accumulator,
            function: Arc::new(function),
        }
    }
}

common_builders!(AggregatingStateDescriptor<IN, ACC, OUT>, accumulator, function);

pub(crate) struct AggregatingInner<IN, ACC, OUT, N> {
    pub(crate) core: HandleCore<N>,
    pub(crate) accumulator: SharedSerializer<ACC>,
    pub(crate) function: SharedAggregate<IN, ACC, OUT>,
}

/// A registered aggregating state.
pub struct AggregatingState<IN, ACC, OUT, N = VoidNamespace>(pub(crate) Arc<AggregatingInner<IN, ACC, OUT, N>>);
handle_impl!(AggregatingState<IN, ACC, OUT>);

impl<IN, ACC, OUT, N> StateDescriptor for AggregatingStateDescriptor<IN, ACC, OUT, N> {
    type Handle = AggregatingState<IN, ACC, OUT, N>;
    fn meta(&self) -> StateMetaInfo {
        meta(&self.common, StateKind::Aggregating, self.accumulator.id(), None)
    }
    migrations!(accumulator);
    fn ttl(&self) -> Option<StateTtlConfig> {
        self.common.ttl
    }
    fn into_handle(self, slot: StateRef) -> AggregatingState<IN, ACC, OUT, N> {
        AggregatingState(Arc::new(AggregatingInner {
            core: HandleCore {
                slot,
                common: self.common,
            },
            accumulator: self.accumulator,
            function: self.function,
        }))
    }
}

// ---------------------------------------------------------------- operator state

impl<V, N> ListStateDescriptor<V, N> {
    /// The element serializer, for operator list state.
    pub(crate) fn element_serializer(&self) -> &SharedSerializer<V> {
        &self.element
    }
}

impl<UK, UV, N> MapStateDescriptor<UK, UV, N> {
    /// The user-key and value serializers, for broadcast state.
    pub(crate) fn map_serializers(&self) -> (&SharedSerializer<UK>, &SharedSerializer<UV>) {
        (&self.user_key, &self.value)
    }
}
