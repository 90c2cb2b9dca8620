//! The flowstate conformance suite: one `pub async fn` per contract of
//! keyed state backends and checkpoint storages, so every implementation,
//! ours or an engine author's, runs the same tests.
//!
//! A backend is plugged in through its [`BackendBuilder`] (the contract
//! an engine creates and restores backends with; [`BackendFactory`] here),
//! a storage through [`StorageFactory`]; [`conformance_suite!`] generates
//! one `#[test]` per contract of the chosen groups:
//!
//! ```ignore
//! flowstate_conformance::conformance_suite!(
//!     Ctx::new(MyBackendBuilder::new(), MemoryStorageFactory::new());
//!     keyed, snapshot, rescale, ttl, corruption, storage
//! );
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A test suite: failures are panics.

pub mod compat;
pub mod concurrent;
pub mod corruption;
pub mod fault;
pub mod keyed;
pub mod lifecycle;
pub mod rescale;
pub mod runtime;
pub mod snapshot;
pub mod storage;
pub mod ttl;
mod util;

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

#[cfg(doc)]
use flowstate_api::BackendBuilder;
use flowstate_api::{CheckpointStorage, MemoryCheckpointStorage};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use util::*;

/// Key types the suite uses.
pub trait TestKey: Serialize + DeserializeOwned + Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static> TestKey for T {}

/// Creates and restores the backends under test: any [`BackendBuilder`]
/// (flowstate's own are `HeapBackendBuilder` and `RocksDbBackendBuilder`).
pub use flowstate_api::BackendBuilder as BackendFactory;

/// Creates checkpoint storages of one kind.
pub trait StorageFactory: Send + Sync + 'static {
    /// A short name, e.g. `memory`.
    fn name(&self) -> &str;
    /// Storage for `job_id`. Storages of one factory share their backing
    /// space, so two jobs can be checked not to collide.
    fn storage(&self, job_id: &str) -> Arc<dyn CheckpointStorage>;
    /// True when checkpoints survive the process (the memory storage's do not).
    fn durable(&self) -> bool;
}

/// The memory ("JobManager memory") storage.
#[derive(Debug, Clone)]
pub struct MemoryStorageFactory {
    base: flowstate_api::BlobCheckpointStorage,
}

impl MemoryStorageFactory {
    /// A factory whose storages share one memory space.
    pub fn new() -> Self {
        MemoryStorageFactory {
            base: MemoryCheckpointStorage::new("conformance"),
        }
    }

    /// With a maximum state size per stream.
    pub fn with_max_state_size(bytes: usize) -> Self {
        MemoryStorageFactory {
            base: MemoryCheckpointStorage::new("conformance").with_max_state_size(bytes),
        }
    }
}

impl Default for MemoryStorageFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl StorageFactory for MemoryStorageFactory {
    fn name(&self) -> &str {
        "memory"
    }
    fn storage(&self, job_id: &str) -> Arc<dyn CheckpointStorage> {
        Arc::new(self.base.for_job(job_id).expect("memory storage of a job"))
    }
    fn durable(&self) -> bool {
        false
    }
}

/// What a contract runs against: a backend factory and a storage factory.
pub struct Ctx<F> {
    /// The backend under test.
    pub backend: F,
    /// The storage under test.
    pub storage: Arc<dyn StorageFactory>,
}

impl<F: BackendFactory> Ctx<F> {
    /// A context.
    pub fn new(backend: F, storage: impl StorageFactory) -> Self {
        Ctx {
            backend,
            storage: Arc::new(storage),
        }
    }
}

/// Runs one contract on a fresh multi-threaded runtime.
pub fn run<F, Fut>(ctx: Ctx<F>, contract: impl FnOnce(Ctx<F>) -> Fut)
where
    F: BackendFactory,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(contract(ctx));
}

/// Generates one `#[test]` per contract of the named groups (`keyed`,
/// `snapshot`, `rescale`, `ttl`, `ttl_incremental`, `corruption`,
/// `storage`, `memory_storage`, `lifecycle`, `lifecycle_files`), each calling `$ctx` for a fresh context.
#[macro_export]
macro_rules! conformance_suite {
    ($ctx:expr; $($group:ident),+ $(,)?) => {
        $( $crate::__group!($group, $ctx); )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __tests {
    ($ctx:expr; $module:ident => $test_mod:ident: $($name:ident),+ $(,)?) => {
        mod $test_mod {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::run($ctx, $crate::$module::$name);
                }
            )+
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __group {
    (keyed, $ctx:expr) => {
        $crate::__tests!($ctx; keyed => keyed:
            value_absent_reads_none_or_default, value_update_get_clear, value_states_are_independent,
            list_add_get_update_clear, list_update_empty_clears_and_add_all_empty_is_noop,
            map_operations, map_remove_during_iteration_writes_through, map_empty_iterates_nothing,
            reducing_folds, aggregating_mutable_and_immutable_accumulators, namespaces_are_separate,
            merge_namespaces_list, merge_namespaces_reducing, merge_namespaces_aggregating,
            keys_in_namespace_and_pairs, apply_to_all_keys_may_clear, entry_count_is_exact,
            value_serializer_mismatch_is_refused, key_serializer_mismatch_is_refused_at_restore,
            handle_of_another_backend_is_refused, access_without_key_is_refused, key_outside_range_is_refused,
            wrong_state_kind_is_invalid
        );
    };
    (snapshot, $ctx:expr) => {
        $crate::__tests!($ctx; snapshot => snapshot:
            snapshot_isolation, two_snapshots_restore_to_their_own_state, concurrent_async_phases_while_serving,
            dropped_snapshot_leaves_nothing, closing_backend_cancels_snapshot, empty_backend_snapshots_empty,
            restored_untouched_state_is_in_next_snapshot, every_state_kind_round_trips, compressed_snapshot_round_trips,
            canonical_savepoint_restores_at_other_parallelism, restore_through_storage_pointer
        );
    };
    (rescale, $ctx:expr) => {
        $crate::__tests!($ctx; rescale => rescale:
            rescale_4_to_2, rescale_2_to_4, rescale_1_to_3, rescale_3_to_1, rescale_15_to_77, rescale_77_to_15,
            canonical_rescale_reads_only_owned_key_groups
        );
    };
    (ttl, $ctx:expr) => {
        $crate::__tests!($ctx; ttl => ttl:
            on_create_and_write_is_not_refreshed_by_reads, on_read_and_write_is_refreshed_by_reads,
            return_expired_if_not_cleaned_up, expiry_boundary_is_exact, ttl_near_max_does_not_overflow,
            every_state_kind_expires, list_elements_expire_individually, map_entries_expire_individually,
            expiry_holds_across_snapshot_and_restore, full_snapshot_cleanup_leaves_expired_out,
            ttl_flag_mismatch_is_refused
        );
    };
    (ttl_incremental, $ctx:expr) => {
        $crate::__tests!($ctx; ttl => ttl_incremental: incremental_cleanup_removes_expired_as_it_goes);
    };
    (corruption, $ctx:expr) => {
        $crate::__tests!($ctx; corruption => corruption:
            every_byte_flip_of_a_snapshot_is_refused, every_truncation_of_a_snapshot_is_refused,
            every_byte_flip_of_metadata_is_refused, hostile_lengths_do_not_allocate
        );
    };
    (storage, $ctx:expr) => {
        $crate::__tests!($ctx; storage => storage:
            pointer_forms_resolve_to_the_same_checkpoint, bad_pointers_give_clear_errors,
            duplicate_checkpoint_id_is_refused, two_jobs_do_not_collide, output_stream_handles,
            latest_checkpoint_is_the_newest
        );
    };
    (lifecycle, $ctx:expr) => {
        $crate::__tests!($ctx; lifecycle => lifecycle:
            retains_newest_n_and_subsumes_the_rest, savepoints_survive_retention, cancellation_policies,
            claim_restore_subsumes_the_restored_checkpoint, no_claim_restore_never_deletes_the_restored_checkpoint,
            fault_sweep_restores_last_completed
        );
    };
    (lifecycle_files, $ctx:expr) => {
        $crate::__tests!($ctx; lifecycle => lifecycle_files:
            shared_files_live_while_referenced, registry_is_rebuilt_after_restart, gc_removes_only_old_orphans_of_ours
        );
    };
    (concurrent, $ctx:expr) => {
        $crate::__tests!($ctx; concurrent => concurrent:
            overlapping_checkpoints_keep_reused_files, interleaved_checkpoints_restore_exactly,
            failed_upload_leaves_nothing_behind
        );
    };
    (compat, $ctx:expr) => {
        $crate::__tests!($ctx; compat => compat:
            restore_at_other_max_parallelism_is_refused, duplicate_handle_is_refused,
            invalid_state_names_are_refused_at_registration, hostile_state_name_in_snapshot_is_refused,
            async_phase_and_restore_run_on_any_executor
        );
    };
    (memory_storage, $ctx:expr) => {
        $crate::__tests!($ctx; storage => memory_storage:
            memory_storage_refuses_state_above_maximum, memory_storage_checkpoints_end_with_the_process
        );
    };
}
