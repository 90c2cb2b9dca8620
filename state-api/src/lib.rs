//! The contracts of flowstate, the state layer for stream-processing
//! engines: keyed state and its descriptors, key groups, serializers, TTL,
//! two-phase snapshots, state handles, checkpoint storage and metadata, and
//! the in-memory ("JobManager memory") checkpoint storage.
//!
//! A backend implements [`KeyedStateBackend`]; engines use the typed
//! methods of [`KeyedStateBackendExt`]. Storages implement
//! [`CheckpointStorage`].
//!
//! ```
//! use flowstate_api::*;
//!
//! # fn main() -> Result<()> {
//! // Operator 1 of 4 owns these key groups of a job with max parallelism 128.
//! let range = KeyGroupRange::for_operator(128, 4, 1)?;
//! assert_eq!(range, KeyGroupRange::inclusive(32, 63)?);
//! // Keys map to key groups by a fixed hash of their serialized bytes.
//! let kg = key_group_for_key_bytes(&[42], 128);
//! assert!(kg < 128);
//! # Ok(()) }
//! ```

mod access;
mod backend;
mod backend_core;
mod blob;
mod blocking;
pub mod canonical;
pub mod codec;
mod descriptor;
mod error;
mod handle;
mod keygroup;
mod layout;
mod lifecycle;
mod memory;
mod metadata;
mod serializer;
mod snapshot;
mod storage;
pub mod ttl;

pub use access::{KeyedStateBackendExt, MergeableState};
pub use backend::{
    next_backend_id, BackendBuilder, BackendCapabilities, CurrentKey, KeyVisitor, KeyedBackendConfig,
    KeyedStateBackend, MapVisit, MapVisitor,
};
pub use backend_core::{BackendCore, StateAccess, StateEntry};
pub use blob::{BlobMeta, BlobPath, BlobStore, BlobWriter, MemoryBlobStore};
pub use blocking::{run_blocking, run_detached};
pub use descriptor::{
    validate_state_name, AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReduceFn, ReducingState, ReducingStateDescriptor,
    SharedAggregate, StateDescriptor, StateHandle, StateId, StateKind, StateMeta, StateSlot, StorageKind, ValueState,
    ValueStateDescriptor, MAX_STATE_NAME_LEN,
};
pub use error::{Error, ErrorKind, Result};
pub use handle::{
    check_restore_handles, validate_relative_path, HandleFile, IncrementalStateHandle, KeyGroupsStateHandle,
    KeyedStateHandle, StreamStateHandle, RESTORE_BATCH_BYTES,
};
pub use keygroup::{
    check_parallelism, default_max_parallelism, key_group_for_key_bytes, murmur3_32, operator_index_for_key_group,
    KeyGroupRange, MAX_PARALLELISM_UPPER_BOUND,
};
pub use layout::{
    BlobCheckpointStorage, BlobStateReader, DEFAULT_INLINE_THRESHOLD, DEFAULT_WRITE_CHUNK, MAX_INLINE_THRESHOLD,
    MAX_METADATA_SIZE, SHARED_DIR, TASK_OWNED_DIR,
};
pub use lifecycle::{
    CancellationPolicy, CheckpointStore, CheckpointStoreConfig, CompletedCheckpoint, Completion, GcOptions, GcReport,
    JobStatus, RestoreMode, SharedStateRegistry,
};
pub use memory::{MemoryCheckpointStorage, DEFAULT_MAX_STATE_SIZE};
pub use metadata::{CheckpointKind, CheckpointMetadata, OperatorState, METADATA_MAGIC, METADATA_VERSION};
pub use serializer::{
    default_serializer, Bincode, RawBytes, Serializer, SerializerId, SharedSerializer, VoidNamespace,
    VoidNamespaceSerializer,
};
pub use snapshot::{AsyncOutput, PendingSnapshot, SnapshotOptions, SnapshotResult, SnapshotStats};
pub use storage::{
    is_own_file_name, metadata_path, metadata_path_id, parse_pointer, unique_file_name, CheckpointLocation,
    CheckpointOutputStream, CheckpointStorage, InlineReader, ParsedPointer, ResolvedCheckpoint, StateReader,
    StateScope, StorageCapabilities, StoredFile, METADATA_FILE,
};
pub use ttl::{
    Clock, ManualClock, SharedClock, StateTtlConfig, SystemClock, TtlCleanup, TtlStateVisibility, TtlUpdateType,
};
