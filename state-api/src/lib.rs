//! The contracts of flowstate, the state layer for stream-processing
//! engines, laid out for its four audiences:
//!
//! - **Engine authors** use the crate root: state descriptors and the typed
//!   state handles they become ([`ValueStateDescriptor`], [`ValueState`],
//!   ...), typed access through [`KeyedStateBackendExt`], TTL ([`ttl`]),
//!   serializers ([`Serializer`]), key groups ([`KeyGroupRange`]), timers
//!   ([`TimerService`]), operator state ([`OperatorStateStore`]), the
//!   two-phase snapshot ([`PendingSnapshot`]) and the error type
//!   ([`Error`]). Running a job's checkpoints (completion, retention,
//!   restore modes, the shared-state registry and garbage collection) is
//!   [`lifecycle`].
//! - **Backend authors** implement the contract in [`backend`]:
//!   [`KeyedStateBackend`] over the shared [`BackendCore`], built by a
//!   [`BackendBuilder`].
//! - **Storage authors** implement [`BlobStore`] (or [`CheckpointStorage`]
//!   itself) in [`checkpoint`], which also holds state handles, checkpoint
//!   metadata and the in-memory storage.
//! - **Tooling reading the files** finds the on-disk formats (codec,
//!   envelope, canonical snapshot reader and writer) in [`format`](mod@format), which is
//!   not re-exported here.
//!
//! Everything of `backend`, `checkpoint` and `lifecycle` is also
//! re-exported at the root, so `use flowstate_api::*;` brings it all in.
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
mod descriptor;
mod error;
mod keygroup;
mod serializer;
mod snapshot;
mod timer;
pub mod ttl;

pub mod backend;
pub mod checkpoint;
pub mod format;
pub mod lifecycle;
pub mod operator;

pub use access::{KeyedStateBackendExt, MergeableState};
pub use descriptor::{
    validate_state_name, AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReduceFn, ReducingState, ReducingStateDescriptor,
    SharedAggregate, StateDescriptor, StateHandle, StateId, StateKind, StateMeta, StateSlot, StorageKind, ValueState,
    ValueStateDescriptor, MAX_STATE_NAME_LEN,
};
pub use error::{Error, ErrorKind, Result};
pub use keygroup::{
    check_parallelism, default_max_parallelism, key_group_for_key_bytes, murmur3_32, operator_index_for_key_group,
    KeyGroupRange, MAX_PARALLELISM_UPPER_BOUND,
};
pub use operator::{
    BroadcastState, DistributionMode, OperatorListState, OperatorStateBlock, OperatorStateHandle, OperatorStateStore,
    PendingOperatorSnapshot, MAX_RESTORE_SPLIT_ENTRIES,
};
pub use serializer::{
    default_serializer, Bincode, RawBytes, Serializer, SerializerId, SharedSerializer, VoidNamespace,
    VoidNamespaceSerializer,
};
pub use snapshot::{AsyncOutput, PendingSnapshot, SnapshotOptions, SnapshotResult, SnapshotStats};
pub use timer::{decode_timestamp, encode_timestamp, TimeDomain, Timer, TimerService, TimerServiceDescriptor};
pub use ttl::{
    Clock, ManualClock, SharedClock, StateTtlConfig, SystemClock, TtlCleanup, TtlStateVisibility, TtlUpdateType,
};

#[doc(no_inline)]
pub use backend::{
    next_backend_id, run_blocking, run_detached, BackendBuilder, BackendCapabilities, BackendCore, CurrentKey,
    KeyVisitor, KeyedBackendConfig, KeyedStateBackend, MapVisit, MapVisitor, StateAccess, StateEntry,
};
#[doc(no_inline)]
pub use checkpoint::{
    check_restore_handles, checkpoint_dir_id, is_own_file_name, metadata_path, metadata_path_id, parse_pointer,
    unique_file_name, validate_relative_path, BlobCheckpointStorage, BlobListing, BlobMeta, BlobPath, BlobStateReader,
    BlobStore, BlobWriter, CheckpointKind, CheckpointLocation, CheckpointMetadata, CheckpointOutputStream,
    CheckpointStorage, HandleFile, IncrementalStateHandle, InlineReader, KeyGroupsStateHandle, KeyedStateHandle,
    MemoryBlobStore, MemoryCheckpointStorage, OperatorState, ParsedPointer, ResolvedCheckpoint, StateReader,
    StateScope, StorageCapabilities, StoredFile, StreamStateHandle, DEFAULT_INLINE_THRESHOLD, DEFAULT_MAX_STATE_SIZE,
    DEFAULT_WRITE_CHUNK, MAX_INLINE_THRESHOLD, MAX_METADATA_SIZE, METADATA_FILE, METADATA_MAGIC, METADATA_VERSION,
    RESTORE_BATCH_BYTES, SHARED_DIR, TASK_OWNED_DIR,
};
#[doc(no_inline)]
pub use lifecycle::{
    CancellationPolicy, CheckpointStore, CheckpointStoreConfig, CompletedCheckpoint, Completion, GcOptions, GcReport,
    JobStatus, RestoreMode, SharedStateRegistry,
};
