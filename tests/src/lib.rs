//! The flowstate conformance suite: one `pub async fn` per contract of
//! keyed state backends and checkpoint storages, so every implementation,
//! ours or an engine author's, runs the same tests.
//!
//! A backend is plugged in through its [`BackendFactory`] (the contract
//! an engine creates and restores backends with), a storage through
//! [`StorageFactory`]; a storage's [`BlobStore`](flowstate_api::checkpoint::BlobStore)
//! runs the [`blob`] contracts on its own. [`Suite`] is the `main` of a test
//! target with `harness = false`: it lists one trial per backend × storage
//! × contract, and one per storage for the contracts of storages alone, and
//! decides what runs from the capabilities the backend and the storage
//! report ([`BackendCapabilities`], [`StorageCapabilities`]): a contract
//! declares what it [needs](Need) (incremental checkpoints, local recovery,
//! a TTL cleanup strategy, a durable storage, …), and a trial whose needs
//! are not met is listed as ignored, with the reason, never passed
//! silently.
//!
//! ```no_run
//! use flowstate_conformance::{MemoryStorageFactory, Suite};
//! use flowstate_heap::HeapBackendFactory;
//!
//! fn main() {
//!     Suite::new()
//!         .storage(MemoryStorageFactory::new) // a fresh factory per trial
//!         .backend(HeapBackendFactory::new)
//!         .run(); // parses libtest's arguments, runs, exits
//! }
//! ```
//!
//! Trials are named `<backend>/<storage>/<group>/<contract>` (for example
//! `heap/memory/snapshot/snapshot_isolation`) and
//! `storage/<storage>/<contract>`, so `cargo test` and `cargo nextest`
//! filters select them. [`backend_contracts`] and [`storage_contracts`]
//! list the contracts with what they need. A contract can also be called
//! directly, with [`run`] (a backend contract) or [`block_on`] (a storage
//! contract):
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_conformance::{block_on, run, snapshot, storage, Ctx, MemoryStorageFactory};
//! use flowstate_heap::HeapBackendFactory;
//!
//! run(Ctx::new(HeapBackendFactory::new(), MemoryStorageFactory::new()), snapshot::snapshot_isolation);
//! block_on(storage::latest_checkpoint_is_the_newest(Arc::new(MemoryStorageFactory::new())));
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A test suite: failures are panics.

pub mod asynchronous;
pub mod blob;
pub mod compat;
pub mod concurrent;
pub mod corruption;
pub mod fault;
mod harness;
pub mod incremental;
pub mod keyed;
pub mod lifecycle;
pub mod operator;
pub mod rescale;
pub mod runtime;
pub mod schema;
pub mod snapshot;
pub mod storage;
pub mod timers;
pub mod ttl;
mod util;

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

#[cfg(doc)]
use flowstate_api::backend::BackendCapabilities;
use flowstate_api::checkpoint::{StorageCapabilities, DEFAULT_MAX_STATE_SIZE};
use flowstate_api::CheckpointStorage;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use harness::{block_on, BackendContract, ContractFuture, Need, StorageContract, Suite};
pub use util::*;

/// Key types the suite uses.
pub trait TestKey: Serialize + DeserializeOwned + Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static> TestKey for T {}

/// Creates and restores the backends under test: any [`BackendFactory`]
/// (flowstate's own are `HeapBackendFactory` and `RocksDbBackendFactory`).
pub use flowstate_api::BackendFactory;

/// Creates checkpoint storages of one kind.
pub trait StorageFactory: Send + Sync + 'static {
    /// A short name, e.g. `memory`.
    fn name(&self) -> &str;
    /// Storage for `job_id`. Storages of one factory share their backing
    /// space, so two jobs can be checked not to collide.
    fn storage(&self, job_id: &str) -> Arc<CheckpointStorage>;
    /// What its storages can do; the suite gates contracts on it. By
    /// default, what the storage of a job named `capabilities` reports.
    fn capabilities(&self) -> StorageCapabilities {
        self.storage("capabilities").capabilities()
    }
    /// Storage for `job_id` as the next process sees it: the same space
    /// for a durable storage (the default), a fresh one where checkpoints
    /// end with the process.
    fn storage_after_restart(&self, job_id: &str) -> Arc<CheckpointStorage> {
        self.storage(job_id)
    }
    /// True when racing `put_if_absent`s on one path have exactly one
    /// winner: the store's conditional create is atomic, as on S3, GCS,
    /// Azure, a filesystem and memory. The default; a factory over a server
    /// whose conditional writes race (the S3-compatible test server checks
    /// and then writes) says false, and the race is checked one write at a
    /// time there.
    fn atomic_put_if_absent(&self) -> bool {
        true
    }
    /// Every how many storage operations a fault sweep injects a fault: 1
    /// (the default) sweeps every one; a storage whose operations are
    /// network round trips samples every `n`th, and still every one of the
    /// last `n`, where a checkpoint completes.
    fn sweep_stride(&self) -> u64 {
        1
    }
}

/// The memory ("JobManager memory") storage.
#[derive(Debug, Clone)]
pub struct MemoryStorageFactory {
    base: flowstate_api::CheckpointStorage,
    max_state_size: usize,
}

impl MemoryStorageFactory {
    /// A factory whose storages share one memory space, with the default
    /// maximum state size.
    pub fn new() -> Self {
        Self::with_max_state_size(DEFAULT_MAX_STATE_SIZE)
    }

    /// With a maximum state size per stream.
    pub fn with_max_state_size(bytes: usize) -> Self {
        MemoryStorageFactory {
            base: Self::space(bytes),
            max_state_size: bytes,
        }
    }

    fn space(max_state_size: usize) -> flowstate_api::CheckpointStorage {
        CheckpointStorage::in_memory("conformance").with_max_state_size(max_state_size)
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
    fn storage(&self, job_id: &str) -> Arc<CheckpointStorage> {
        Arc::new(self.base.for_job(job_id).expect("memory storage of a job"))
    }
    fn capabilities(&self) -> StorageCapabilities {
        self.base.capabilities()
    }
    /// A fresh memory space: the next process sees none of this one's checkpoints.
    fn storage_after_restart(&self, job_id: &str) -> Arc<CheckpointStorage> {
        Arc::new(
            Self::space(self.max_state_size)
                .for_job(job_id)
                .expect("memory storage of a job"),
        )
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

/// Runs one contract on a fresh multi-threaded runtime (two workers).
pub fn run<F, Fut>(ctx: Ctx<F>, contract: impl FnOnce(Ctx<F>) -> Fut)
where
    F: BackendFactory,
    Fut: Future<Output = ()>,
{
    block_on(contract(ctx));
}

/// Writes the contract table once: [`backend_contracts`] and
/// [`storage_contracts`] (with what each contract needs), and
/// `contract_ids`, which names them all for the check that every contract
/// runs somewhere.
macro_rules! contracts {
    (
        backend { $( $bgroup:ident $bneeds:tt { $($bname:ident),+ $(,)? } )+ }
        storage { $( $sgroup:ident $sneeds:tt { $($sname:ident),+ $(,)? } )+ }
    ) => {
        /// Every contract run against a backend and a storage, with what it needs.
        pub fn backend_contracts<F: BackendFactory>() -> Vec<BackendContract<F>> {
            vec![$($(
                BackendContract {
                    group: stringify!($bgroup),
                    name: stringify!($bname),
                    needs: &$bneeds,
                    run: |ctx| Box::pin($crate::$bgroup::$bname(ctx)),
                },
            )+)+]
        }

        /// Every contract of storages alone, with what it needs.
        pub fn storage_contracts() -> Vec<StorageContract> {
            vec![$($(
                StorageContract {
                    group: stringify!($sgroup),
                    name: stringify!($sname),
                    needs: &$sneeds,
                    run: |factory| Box::pin($crate::$sgroup::$sname(factory)),
                },
            )+)+]
        }

        /// The ids of every contract: `<group>/<name>` for backend
        /// contracts, `storage/<group>/<name>` for storage contracts.
        fn contract_ids() -> Vec<String> {
            vec![
                $($( concat!(stringify!($bgroup), "/", stringify!($bname)).to_string(), )+)+
                $($( concat!("storage/", stringify!($sgroup), "/", stringify!($sname)).to_string(), )+)+
            ]
        }
    };
}

contracts! {
    backend {
        asynchronous [] {
            async_face_equals_sync_face, executor_orders_records_per_key_and_snapshots_at_barriers,
        }
        keyed [] {
            value_absent_reads_none_or_default, value_update_get_clear, value_states_are_independent,
            list_add_get_update_clear, list_update_empty_clears_and_add_all_empty_is_noop,
            map_operations, map_remove_during_iteration_writes_through, map_empty_iterates_nothing,
            reducing_folds, aggregating_mutable_and_immutable_accumulators, namespaces_are_separate,
            merge_namespaces_list, merge_namespaces_reducing, merge_namespaces_aggregating,
            keys_in_namespace_and_pairs, apply_to_all_keys_may_clear, entry_count_is_exact,
            value_serializer_mismatch_is_refused, key_serializer_mismatch_is_refused_at_restore,
            handle_of_another_backend_is_refused, access_without_key_is_refused, key_outside_range_is_refused,
            wrong_state_kind_is_invalid,
        }
        snapshot [] {
            snapshot_isolation, two_snapshots_restore_to_their_own_state, concurrent_async_phases_while_serving,
            dropped_snapshot_leaves_nothing, closing_backend_cancels_snapshot, empty_backend_snapshots_empty,
            restored_untouched_state_is_in_next_snapshot, every_state_kind_round_trips, compressed_snapshot_round_trips,
            canonical_savepoint_restores_at_other_parallelism, restore_through_storage_pointer,
        }
        rescale [] {
            rescale_4_to_2, rescale_2_to_4, rescale_1_to_3, rescale_3_to_1, rescale_15_to_77, rescale_77_to_15,
            rescale_15_to_77_after_changes, rescale_77_to_15_after_changes,
            canonical_rescale_reads_only_owned_key_groups,
        }
        timers [Need::Timers] {
            duplicate_register_fires_once_and_missing_delete_is_noop, timers_fire_in_total_order,
            timers_survive_checkpoint_and_savepoint, timer_after_sync_phase_is_not_in_snapshot,
            timer_service_mismatches_are_refused, timers_rescale_15_to_77, timers_rescale_77_to_15,
        }
        schema [] {
            schema_migrates_from_a_savepoint, schema_migrates_from_a_checkpoint,
            schema_change_without_migration_is_incompatible, failed_migration_names_both_versions,
        }
        ttl [] {
            on_create_and_write_is_not_refreshed_by_reads, on_read_and_write_is_refreshed_by_reads,
            return_expired_if_not_cleaned_up, expiry_boundary_is_exact, ttl_near_max_does_not_overflow,
            every_state_kind_expires, list_elements_expire_individually, map_entries_expire_individually,
            expiry_holds_across_snapshot_and_restore, full_snapshot_cleanup_leaves_expired_out,
            ttl_flag_mismatch_is_refused,
        }
        ttl [Need::TtlIncrementalCleanup] { incremental_cleanup_removes_expired_as_it_goes }
        ttl [Need::TtlCompactionFilter] {
            compaction_filter_drops_expired_entries, compaction_filter_drops_expired_list_elements_one_by_one,
            compaction_filter_drops_expired_list_elements_after_rescaling,
            compaction_filter_reclaims_state_never_returned,
        }
        corruption [Need::OneStorage] {
            every_byte_flip_of_a_snapshot_is_refused, every_truncation_of_a_snapshot_is_refused,
            every_byte_flip_of_metadata_is_refused, hostile_lengths_do_not_allocate,
        }
        storage [Need::MaxStateSize, Need::StateInCheckpoints] { memory_storage_refuses_state_above_maximum }
        storage [Need::VolatileStorage] { memory_storage_checkpoints_end_with_the_process }
        lifecycle [] {
            retains_newest_n_and_subsumes_the_rest, savepoints_survive_retention, cancellation_policies,
            claim_restore_subsumes_the_restored_checkpoint, no_claim_restore_never_deletes_the_restored_checkpoint,
        }
        // Faults are injected into the store's I/O: a storage that keeps
        // every stream inline in memory has none to fail but the metadata.
        lifecycle [Need::DurableStorage] { fault_sweep_restores_last_completed }
        concurrent [] { overlapping_checkpoints_keep_reused_files, interleaved_checkpoints_restore_exactly }
        concurrent [Need::DurableStorage, Need::StateInCheckpoints] { failed_upload_leaves_nothing_behind }
        compat [] {
            restore_at_other_max_parallelism_is_refused, duplicate_handle_is_refused,
            invalid_state_names_are_refused_at_registration, hostile_state_name_in_snapshot_is_refused,
            async_phase_and_restore_run_on_any_executor,
        }
        // Measures our code on the runtime, not a store's: `object_store`'s in-memory
        // store copies on the calling task by design. Once, on the first storage (fs).
        runtime [Need::OneStorage, Need::UnlimitedState] { snapshot_and_restore_never_block_the_runtime }
        incremental [Need::IncrementalCheckpoints, Need::StateInCheckpoints] { incremental_checkpoints_upload_only_new_files }
        incremental [Need::IncrementalCheckpoints, Need::StateInCheckpoints, Need::SharedState] {
            shared_files_are_deleted_when_no_retained_checkpoint_uses_them,
            no_claim_restore_shares_nothing_with_the_next_checkpoint,
        }
        incremental [Need::LocalRecovery] { local_recovery_uses_a_verified_copy_and_falls_back_to_download }
    }
    storage {
        blob [] {
            written_objects_read_back_whole_and_by_range, large_objects_stream_and_read_back_exactly,
            put_if_absent_has_exactly_one_winner, dropped_and_aborted_writers_leave_nothing,
            listings_show_each_prefix_and_level, deleting_missing_objects_is_not_an_error,
            hostile_paths_are_refused_and_odd_names_round_trip,
        }
        operator [] {
            split_state_restores_with_flinks_assignment, union_and_broadcast_state_restore_through_storage,
            operator_state_mode_switch_is_refused,
        }
        storage [] {
            pointer_forms_resolve_to_the_same_checkpoint, bad_pointers_give_clear_errors,
            duplicate_checkpoint_id_is_refused, two_jobs_do_not_collide, output_stream_handles,
            latest_checkpoint_is_the_newest,
        }
        lifecycle [Need::SharedState, Need::FilesFrom(30_000)] {
            shared_files_live_while_referenced, registry_is_rebuilt_after_restart, gc_removes_only_old_orphans_of_ours,
        }
    }
}
