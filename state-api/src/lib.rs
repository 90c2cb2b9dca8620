//! The contracts of flowstate, the state layer for stream-processing
//! engines. One door per audience:
//!
//! | who | where | what |
//! |---|---|---|
//! | engine authors | the crate root | state descriptors and typed state ([`ValueStateDescriptor`], [`ValueState`], ...), typed access ([`KeyedStateBackendExt`]), asynchronous access in key order ([`KeyOrderedExecutor`], [`RecordCtx`], [`SyncAsAsync`]), key groups ([`KeyGroupRange`]), TTL ([`StateTtlConfig`]), timers ([`TimerService`]), operator state ([`OperatorStateStore`]), serializers ([`Serializer`]), errors ([`Error`]), the two-phase snapshot ([`PendingSnapshot`]), the checkpoint store ([`CheckpointStore`]) and the storages' constructors ([`CheckpointStorage::in_memory`]) |
//! | engine authors, for the details | [`keygroup`], [`serializer`], [`ttl`], [`timer`], [`descriptor`], [`operator`], [`lifecycle`], [`asynchronous`] | everything of those topics, including what the root leaves out (clocks, shared-state registry, garbage collection, restore modes, the asynchronous backend contract) |
//! | backend implementers | [`backend`] | the [`KeyedStateBackend`] contract, the [`BackendCore`](backend::BackendCore) every backend shares, state registry types, the blocking-work runtime; [`AsyncKeyedStateBackend`], which a backend with remote state implements natively (the others get it from [`SyncAsAsync`]) |
//! | storage implementers | [`checkpoint`] | the [`BlobStore`](checkpoint::BlobStore) contract, the checkpoint layout over it, state handles and checkpoint metadata |
//! | backend and storage implementers | [`runtime`] | blocking work off the async executor, on any executor |
//! | tooling reading the files | [`format`](mod@format) | the on-disk formats: codec, envelope, canonical snapshot reader and writer |
//!
//! An engine keeps its keyed state in a backend and checkpoints it:
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//!
//! # fn run<F: BackendFactory>(factory: &F) -> Result<()> {
//! // Operator 1 of 4 owns these key groups of a job with max parallelism 128.
//! let range = KeyGroupRange::for_operator(128, 4, 1)?;
//! let mut backend = factory.build(KeyedBackendConfig::<String>::new(range, 128))?;
//! let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
//! backend.set_current_key(&"user-32".to_string())?;
//! let n = backend.value(&count)?.unwrap_or(0);
//! backend.update(&count, n + 1)?;
//! # Ok(()) }
//! ```
//!
//! A backend implementer reaches the contract through [`backend`]; a storage
//! implementer writes a [`BlobStore`](checkpoint::BlobStore) and puts the
//! [`CheckpointStorage`] over it; tooling reads files through [`format`](mod@format).
//! Each module's page has an example for its audience.

mod access;
pub mod asynchronous;
pub mod descriptor;
mod error;
pub mod keygroup;
pub mod serializer;
mod snapshot;
mod stored;
pub mod timer;
pub mod ttl;

pub mod backend;
pub mod checkpoint;
pub mod format;
pub mod lifecycle;
pub mod operator;
pub mod runtime;

pub use access::{KeyedStateBackendExt, MergeableState};
pub use asynchronous::{AsyncKeyedStateBackend, KeyOrderedExecutor, RecordCtx, SyncAsAsync};
pub use backend::{BackendFactory, KeyedBackendConfig, KeyedStateBackend};
pub use checkpoint::{CheckpointKind, CheckpointMetadata, CheckpointStorage, KeyedStateHandle};
pub use descriptor::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, ReducingState, ReducingStateDescriptor, State, StateDescriptor, ValueState,
    ValueStateDescriptor,
};
pub use error::{Error, ErrorKind, Result};
pub use keygroup::{default_max_parallelism, key_group_for_key_bytes, operator_index_for_key_group, KeyGroupRange};
pub use lifecycle::{CheckpointStore, CheckpointStoreConfig, RestoreMode};
pub use operator::{BroadcastState, OperatorListState, OperatorStateStore};
pub use serializer::{default_serializer, Bincode, RawBytes, Serializer, SharedSerializer, VoidNamespace};
pub use snapshot::{PendingSnapshot, SnapshotOptions, SnapshotResult, SnapshotStats};
pub use timer::{TimeDomain, Timer, TimerService, TimerServiceDescriptor};
pub use ttl::{StateTtlConfig, TtlStateVisibility, TtlUpdateType};
