//! Operator (non-keyed) state: list state split over subtasks, union list
//! state and broadcast state ([`OperatorStateStore`]), their snapshots
//! ([`OperatorStateHandle`]) and how they are assigned to the subtasks of
//! a restored operator ([`repartition`]).
//!
//! A snapshot writes one stream per subtask holding one contiguous block
//! per state, in name order (layout in `docs/format.md`); the handle
//! records each block's position, entry count and checksum, so checkpoint
//! metadata grows with the number of states, never with their entries.
//!
//! - `store.rs`: [`OperatorStateStore`], its registry and copy-on-write data;
//! - `list.rs` and `broadcast.rs`: the typed handles ([`OperatorListState`],
//!   [`BroadcastState`]) and their registration;
//! - `snapshot.rs`: the two-phase snapshot ([`PendingOperatorSnapshot`]);
//! - `restore.rs`: checking old handles and reading the blocks a subtask is assigned;
//! - `repartition.rs`: Flink's round-robin assignment ([`repartition`]).

mod broadcast;
mod list;
mod repartition;
mod restore;
mod snapshot;
mod store;

pub use crate::checkpoint::{DistributionMode, OperatorStateBlock, OperatorStateHandle};
pub use broadcast::BroadcastState;
pub use list::OperatorListState;
pub use repartition::{repartition, SubtaskState, SubtaskStates};
pub use snapshot::PendingOperatorSnapshot;
pub use store::{OperatorStateStore, MAX_RESTORE_SPLIT_ENTRIES};
