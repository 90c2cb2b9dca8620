//! The runtime harness: registered backends and storages, the trials
//! their capabilities allow, and a libtest-compatible `main`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flowstate_api::backend::BackendCapabilities;
use flowstate_api::checkpoint::StorageCapabilities;
use libtest_mimic::{Arguments, Completion, Trial};

use crate::{BackendFactory, Ctx, StorageFactory};

/// The future of one run of a contract.
pub type ContractFuture = Pin<Box<dyn Future<Output = ()>>>;

/// What a contract needs of the backend or storage it runs on. A trial
/// whose needs are not met is listed but ignored, with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Need {
    /// The backend's checkpoints are incremental
    /// ([`BackendCapabilities::incremental_checkpoints`]).
    IncrementalCheckpoints,
    /// The backend keeps local copies of completed checkpoints
    /// ([`BackendCapabilities::local_recovery`]).
    LocalRecovery,
    /// The backend cleans up expired state incrementally on access
    /// ([`BackendCapabilities::ttl_incremental_cleanup`]).
    TtlIncrementalCleanup,
    /// The backend drops expired state when it compacts
    /// ([`BackendCapabilities::ttl_compaction_filter`]).
    TtlCompactionFilter,
    /// The backend stores timers ([`BackendCapabilities::timers`]).
    Timers,
    /// Checkpoints hold the state itself in the checkpoint storage (not
    /// [`BackendCapabilities::disaggregated`]): what contracts on the
    /// checkpoint storage's files and size limits need.
    StateInCheckpoints,
    /// Checkpoints survive the process ([`StorageCapabilities::durable`]).
    DurableStorage,
    /// Checkpoints end with the process (not [`StorageCapabilities::durable`]).
    VolatileStorage,
    /// The storage limits the state one stream may hold
    /// ([`StorageCapabilities::max_state_size`]).
    MaxStateSize,
    /// The storage supports shared files ([`StorageCapabilities::shared_state`]).
    SharedState,
    /// Runs on one storage only, the first registered: for contracts whose
    /// subject does not depend on the storage (decoding bytes handed to a
    /// restore in memory), so they run once per backend.
    OneStorage,
    /// The storage takes streams of any size (no
    /// [`StorageCapabilities::max_state_size`]).
    UnlimitedState,
    /// Streams of this many bytes or more are files, whatever their size:
    /// the inline threshold is below it and the state size is not limited.
    FilesFrom(u64),
}

impl Need {
    /// True when a backend with `backend` capabilities (none for a storage
    /// contract, which then meets no backend need) and a storage with
    /// `storage` capabilities meet this need.
    pub fn is_met(self, backend: Option<&BackendCapabilities>, storage: &StorageCapabilities) -> bool {
        match self {
            Need::IncrementalCheckpoints => backend.is_some_and(|b| b.incremental_checkpoints),
            Need::LocalRecovery => backend.is_some_and(|b| b.local_recovery),
            Need::TtlIncrementalCleanup => backend.is_some_and(|b| b.ttl_incremental_cleanup),
            Need::TtlCompactionFilter => backend.is_some_and(|b| b.ttl_compaction_filter),
            Need::Timers => backend.is_some_and(|b| b.timers),
            Need::StateInCheckpoints => backend.is_some_and(|b| !b.disaggregated),
            Need::DurableStorage => storage.durable,
            Need::VolatileStorage => !storage.durable,
            Need::MaxStateSize => storage.max_state_size.is_some(),
            Need::UnlimitedState => storage.max_state_size.is_none(),
            // Decided by the harness, which knows the storages' order.
            Need::OneStorage => true,
            Need::SharedState => storage.shared_state,
            Need::FilesFrom(bytes) => (storage.inline_threshold as u64) < bytes && storage.max_state_size.is_none(),
        }
    }

    /// True for a need of the backend, false for one of the storage.
    pub fn is_backend_need(self) -> bool {
        matches!(
            self,
            Need::IncrementalCheckpoints
                | Need::LocalRecovery
                | Need::TtlIncrementalCleanup
                | Need::TtlCompactionFilter
                | Need::Timers
                | Need::StateInCheckpoints
        )
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::IncrementalCheckpoints => f.write_str("incremental_checkpoints"),
            Need::LocalRecovery => f.write_str("local_recovery"),
            Need::TtlIncrementalCleanup => f.write_str("ttl_incremental_cleanup"),
            Need::TtlCompactionFilter => f.write_str("ttl_compaction_filter"),
            Need::Timers => f.write_str("timers"),
            Need::StateInCheckpoints => f.write_str("state held in checkpoints (the backend is disaggregated)"),
            Need::DurableStorage => f.write_str("durable storage"),
            Need::VolatileStorage => f.write_str("volatile storage"),
            Need::MaxStateSize => f.write_str("max_state_size"),
            Need::UnlimitedState => f.write_str("streams of any size"),
            Need::OneStorage => f.write_str("one storage only"),
            Need::SharedState => f.write_str("shared_state"),
            Need::FilesFrom(bytes) => write!(f, "streams of {bytes} bytes in files"),
        }
    }
}

/// A contract run against a backend and a storage.
pub struct BackendContract<F> {
    /// Its module, e.g. `snapshot`.
    pub group: &'static str,
    /// Its function's name.
    pub name: &'static str,
    /// What it needs of the backend and the storage.
    pub needs: &'static [Need],
    /// Runs it.
    pub run: fn(Ctx<F>) -> ContractFuture,
}

/// A contract of checkpoint storages alone, run once per storage.
pub struct StorageContract {
    /// Its module, e.g. `storage`.
    pub group: &'static str,
    /// Its function's name.
    pub name: &'static str,
    /// What it needs of the storage.
    pub needs: &'static [Need],
    /// Runs it.
    pub run: fn(Arc<dyn StorageFactory>) -> ContractFuture,
}

/// Runs `future` to completion on a fresh multi-threaded Tokio runtime with
/// two workers, as every trial does.
pub fn block_on<Fut: Future>(future: Fut) -> Fut::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// The needs of `needs` that `backend` (none for a storage contract) and
/// `storage` do not meet, as the reason an ignored trial gives.
fn unmet(
    needs: &[Need],
    backend: Option<(&str, &BackendCapabilities)>,
    storage: (&str, &StorageCapabilities),
) -> Option<String> {
    let missing: Vec<String> = needs
        .iter()
        .filter(|n| !n.is_met(backend.map(|b| b.1), storage.1))
        .map(|n| match (n.is_backend_need(), backend) {
            (true, Some((name, _))) => format!("{n}, which backend {name} lacks"),
            (true, None) => format!("{n}, which a storage contract has no backend for"),
            (false, _) => format!("{n}, which storage {} lacks", storage.0),
        })
        .collect();
    (!missing.is_empty()).then(|| format!("needs {}", missing.join("; ")))
}

/// A trial that runs `body`, or is ignored (listed, and skipped even when
/// ignored trials are run) when `skip` gives a reason.
fn trial(name: String, skip: Option<String>, body: impl FnOnce() + Send + 'static) -> Trial {
    let ignored = skip.is_some();
    Trial::ignorable_test(name, move || match skip {
        Some(reason) => Ok(Completion::ignored_with(reason)),
        None => {
            body();
            Ok(Completion::Completed)
        }
    })
    .with_ignored_flag(ignored)
}

/// One planned trial and the contract it runs.
struct Planned {
    contract: String,
    runs: bool,
    trial: Trial,
}

/// A registered storage.
struct StorageEntry {
    name: String,
    capabilities: StorageCapabilities,
    make: Arc<dyn Fn() -> Arc<dyn StorageFactory> + Send + Sync>,
}

/// A registered backend, of any factory type.
trait BackendEntry {
    fn name(&self) -> &str;
    /// Plans every backend contract on `storage`; `first` says whether it
    /// is the first storage registered.
    fn plan(&self, storage: &StorageEntry, first: bool, out: &mut Vec<Planned>);
}

struct Registered<F> {
    name: String,
    capabilities: BackendCapabilities,
    make: Arc<dyn Fn() -> F + Send + Sync>,
}

impl<F: BackendFactory> BackendEntry for Registered<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn plan(&self, storage: &StorageEntry, first: bool, out: &mut Vec<Planned>) {
        for contract in crate::backend_contracts::<F>() {
            let skip = if !first && contract.needs.contains(&Need::OneStorage) {
                Some("runs on the first storage only: the storage does not change what it checks".to_string())
            } else {
                unmet(
                    contract.needs,
                    Some((&self.name, &self.capabilities)),
                    (&storage.name, &storage.capabilities),
                )
            };
            let (make, make_storage, run) = (Arc::clone(&self.make), Arc::clone(&storage.make), contract.run);
            out.push(Planned {
                contract: format!("{}/{}", contract.group, contract.name),
                runs: skip.is_none(),
                trial: trial(
                    format!("{}/{}/{}/{}", self.name, storage.name, contract.group, contract.name),
                    skip,
                    move || {
                        let ctx = Ctx {
                            backend: make(),
                            storage: make_storage(),
                        };
                        block_on(run(ctx));
                    },
                ),
            });
        }
    }
}

/// The conformance suite as a test binary's `main` (a test target with
/// `harness = false`): backends and storages are registered, and every
/// contract becomes one trial per backend × storage (storage contracts one
/// per storage), named `<backend>/<storage>/<group>/<contract>` and
/// `storage/<storage>/<contract>`. A trial whose [`Need`]s the backend's
/// [`BackendCapabilities`] or the storage's [`StorageCapabilities`] do not
/// meet is listed as ignored, with the reason. Trials run on a fresh
/// two-worker Tokio runtime each, with fresh backend and storage factories;
/// a panic fails the trial. It takes libtest's arguments, so `cargo test`
/// filters and `cargo nextest` work as for any test binary.
///
/// ```no_run
/// use flowstate_conformance::{MemoryStorageFactory, Suite};
/// use flowstate_heap::HeapBackendFactory;
///
/// fn main() {
///     Suite::new()
///         .storage(MemoryStorageFactory::new)
///         .backend(HeapBackendFactory::new)
///         .run();
/// }
/// ```
#[derive(Default)]
pub struct Suite {
    backends: Vec<Box<dyn BackendEntry>>,
    storages: Vec<StorageEntry>,
    every_contract_runs: bool,
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suite")
            .field("backends", &self.backends.iter().map(|b| b.name()).collect::<Vec<_>>())
            .field("storages", &self.storages.iter().map(|s| &s.name).collect::<Vec<_>>())
            .field("every_contract_runs", &self.every_contract_runs)
            .finish()
    }
}

/// Names trials cannot be told apart with.
fn check_name(what: &str, name: &str, taken: &[&str]) {
    assert!(
        !name.is_empty() && !name.contains('/') && !name.contains(char::is_whitespace),
        "{what} name {name:?} must be a non-empty word without '/'"
    );
    assert!(
        !["storage", "suite"].contains(&name),
        "{what} name {name:?} is reserved for the suite's own trials"
    );
    assert!(
        !taken.contains(&name),
        "{what} name {name:?} is registered twice: give each configuration its own name"
    );
}

impl Suite {
    /// A suite with no backend and no storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a backend: `make` gives a fresh factory for each trial. It
    /// is named by [`BackendFactory::name`], which must differ between
    /// registrations (else use [`backend_named`](Self::backend_named)).
    pub fn backend<F: BackendFactory>(self, make: impl Fn() -> F + Send + Sync + 'static) -> Self {
        let name = make().name().to_string();
        self.backend_named(name, make)
    }

    /// Registers a backend under `name`.
    pub fn backend_named<F: BackendFactory>(
        mut self,
        name: impl Into<String>,
        make: impl Fn() -> F + Send + Sync + 'static,
    ) -> Self {
        let name = name.into();
        let taken: Vec<&str> = self.backends.iter().map(|b| b.name()).collect();
        check_name("backend", &name, &taken);
        let capabilities = make().capabilities();
        self.backends.push(Box::new(Registered {
            name,
            capabilities,
            make: Arc::new(make),
        }));
        self
    }

    /// Registers a storage: `make` gives a fresh factory for each trial.
    /// It is named by [`StorageFactory::name`], which must differ between
    /// registrations.
    pub fn storage<S: StorageFactory>(mut self, make: impl Fn() -> S + Send + Sync + 'static) -> Self {
        let probe = make();
        let (name, capabilities) = (probe.name().to_string(), probe.capabilities());
        drop(probe);
        let taken: Vec<&str> = self.storages.iter().map(|s| s.name.as_str()).collect();
        check_name("storage", &name, &taken);
        self.storages.push(StorageEntry {
            name,
            capabilities,
            make: Arc::new(move || Arc::new(make()) as Arc<dyn StorageFactory>),
        });
        self
    }

    /// Adds the trial `suite/every_contract_runs`, which fails if a contract
    /// is ignored on every registered backend and storage: a contract that
    /// never runs. For a suite that registers every configuration it
    /// supports.
    pub fn require_every_contract(mut self) -> Self {
        self.every_contract_runs = true;
        self
    }

    /// Every trial, in order: backend contracts per backend and storage,
    /// then storage contracts per storage, then `suite/every_contract_runs`
    /// if [required](Self::require_every_contract).
    pub fn trials(&self) -> Vec<Trial> {
        let mut planned = Vec::new();
        for backend in &self.backends {
            for (i, storage) in self.storages.iter().enumerate() {
                backend.plan(storage, i == 0, &mut planned);
            }
        }
        for storage in &self.storages {
            for contract in crate::storage_contracts() {
                let skip = unmet(contract.needs, None, (&storage.name, &storage.capabilities));
                let (make_storage, run) = (Arc::clone(&storage.make), contract.run);
                planned.push(Planned {
                    contract: format!("storage/{}/{}", contract.group, contract.name),
                    runs: skip.is_none(),
                    trial: trial(format!("storage/{}/{}", storage.name, contract.name), skip, move || {
                        block_on(run(make_storage()));
                    }),
                });
            }
        }
        let mut runs: BTreeMap<String, bool> = crate::contract_ids().into_iter().map(|id| (id, false)).collect();
        for p in &planned {
            *runs.entry(p.contract.clone()).or_default() |= p.runs;
        }
        let mut trials: Vec<Trial> = planned.into_iter().map(|p| p.trial).collect();
        if self.every_contract_runs {
            let never: Vec<String> = runs.into_iter().filter(|(_, runs)| !runs).map(|(id, _)| id).collect();
            let (backends, storages): (Vec<String>, Vec<String>) = (
                self.backends.iter().map(|b| b.name().to_string()).collect(),
                self.storages.iter().map(|s| s.name.clone()).collect(),
            );
            trials.push(Trial::test("suite/every_contract_runs", move || {
                if never.is_empty() {
                    return Ok(());
                }
                Err(format!(
                    "{} contracts are ignored on every backend ({}) and storage ({}) registered: {}",
                    never.len(),
                    backends.join(", "),
                    storages.join(", "),
                    never.join(", ")
                )
                .into())
            }));
        }
        trials
    }

    /// Runs the suite as libtest would, with the process's arguments
    /// (filters, `--exact`, `--ignored`, `--list`, …), and exits with its
    /// outcome.
    pub fn run(self) -> ! {
        let args = Arguments::from_args();
        libtest_mimic::run(&args, self.trials()).exit()
    }
}

#[cfg(test)]
mod tests {
    use flowstate_heap::HeapBackendFactory;

    use super::*;
    use crate::MemoryStorageFactory;

    /// Runs the trials of `suite` that `filter` names exactly; returns
    /// (passed, failed, ignored).
    fn outcome(suite: &Suite, filter: &str, ignored: bool) -> (u64, u64, u64) {
        let args = Arguments {
            filter: Some(filter.into()),
            exact: true,
            ignored,
            quiet: true,
            ..Arguments::default()
        };
        let c = libtest_mimic::run(&args, suite.trials());
        (c.num_passed, c.num_failed, c.num_ignored)
    }

    #[test]
    fn a_contract_that_runs_nowhere_fails_the_suite() {
        // Heap on memory storage: incremental, local recovery, TTL
        // compaction filter and the shared-state storage contracts never run.
        let suite = Suite::new()
            .storage(MemoryStorageFactory::new)
            .backend(HeapBackendFactory::new)
            .require_every_contract();
        assert_eq!(outcome(&suite, "suite/every_contract_runs", false), (0, 1, 0));
        // Without the requirement there is no such trial.
        let suite = Suite::new()
            .storage(MemoryStorageFactory::new)
            .backend(HeapBackendFactory::new);
        assert_eq!(outcome(&suite, "suite/every_contract_runs", false), (0, 0, 0));
    }

    #[test]
    fn unmet_needs_ignore_the_trial_even_when_ignored_trials_run() {
        let suite = Suite::new()
            .storage(MemoryStorageFactory::new)
            .backend(HeapBackendFactory::new);
        let name = "heap/memory/incremental/incremental_checkpoints_upload_only_new_files";
        assert_eq!(outcome(&suite, name, false), (0, 0, 1));
        assert_eq!(outcome(&suite, name, true), (0, 0, 1));
        assert_eq!(outcome(&suite, "heap/memory/keyed/map_operations", false), (1, 0, 0));
    }

    #[test]
    fn the_reason_names_what_is_missing_and_who_lacks_it() {
        let backend = BackendCapabilities::none().with_ttl_incremental_cleanup();
        let storage = MemoryStorageFactory::new().capabilities();
        let reason = unmet(
            &[
                Need::IncrementalCheckpoints,
                Need::TtlIncrementalCleanup,
                Need::SharedState,
            ],
            Some(("heap", &backend)),
            ("memory", &storage),
        );
        assert_eq!(
            reason.as_deref(),
            Some("needs incremental_checkpoints, which backend heap lacks; shared_state, which storage memory lacks")
        );
        assert_eq!(
            unmet(&[Need::VolatileStorage, Need::MaxStateSize], None, ("memory", &storage)),
            None
        );
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn two_backends_of_one_name_are_refused() {
        let _ = Suite::new()
            .backend(HeapBackendFactory::new)
            .backend(HeapBackendFactory::new);
    }
}
