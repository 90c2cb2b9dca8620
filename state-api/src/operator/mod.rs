//! Operator (non-keyed) state: list state split over subtasks, union list
//! state and broadcast state ([`OperatorStateStore`]), their snapshots
//! ([`OperatorStateHandle`]) and how they are assigned to the subtasks of
//! a restored operator ([`repartition`]).
//!
//! A snapshot writes one stream per subtask holding one contiguous block
//! per state, in name order (layout in `docs/format.md`); the handle
//! records each block's position, entry count and checksum, so checkpoint
//! metadata grows with the number of states, never with their entries.

mod handle;
mod repartition;
mod store;

pub use handle::{OperatorStateBlock, OperatorStateHandle};
pub use repartition::{repartition, DistributionMode, SubtaskState, SubtaskStates};
pub use store::{
    BroadcastState, OperatorListState, OperatorStateStore, PendingOperatorSnapshot, MAX_RESTORE_SPLIT_ENTRIES,
};
