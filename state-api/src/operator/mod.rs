//! Operator (non-keyed) state: list state split over subtasks, union list
//! state and broadcast state, and how they are assigned to the subtasks of
//! a restored operator ([`repartition`]).

mod repartition;

pub use repartition::{repartition, DistributionMode, SubtaskState, SubtaskStates};
