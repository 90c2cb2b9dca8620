//! Model-based property test of the heap backend's incremental checkpoints.
//!
//! Random sequences of puts, deletes, re-adds, list appends and clears,
//! namespace merges, map puts and removals, TTL writes and expiry, timer
//! registrations, deletions and firings, interleaved with checkpoints that
//! overlap (up to four in flight), finish, complete, abort and are notified
//! in any order (notifications may be late or lost), with restarts that
//! restore a retained checkpoint in claim mode and go on from it. Through a
//! real checkpoint store (retention and subsumption delete files), on
//! files in a blob store in memory.
//!
//! After every completion, and for every retained checkpoint at the end:
//! restoring it equals the model at its sync phase, and equals restoring
//! the canonical full savepoint taken at the same moment; the latest one
//! also restores exactly at three parallelisms' worth of key-group ranges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flowstate_api::checkpoint::{CheckpointLocation, MemoryBlobStore, OperatorState};
use flowstate_api::ttl::ManualClock;
use flowstate_api::*;
use flowstate_heap::{HeapBackend, HeapBackendFactory, HeapOptions};
use proptest::prelude::*;

const KEYS: u64 = 48;
const MAX_PARALLELISM: u32 = 16;
const TTL_MILLIS: u64 = 100;
const OPERATOR: &str = "op";

#[derive(Debug, Clone)]
enum Op {
    Put {
        k: u64,
        v: u8,
    },
    Delete {
        k: u64,
    },
    Append {
        k: u64,
        ns: u8,
        e: u8,
    },
    ClearList {
        k: u64,
        ns: u8,
    },
    Merge {
        k: u64,
        target: u8,
        source: u8,
    },
    MapPut {
        k: u64,
        uk: u8,
        v: u8,
    },
    MapRemove {
        k: u64,
        uk: u8,
    },
    TtlPut {
        k: u64,
        v: u8,
    },
    Advance {
        ms: u64,
    },
    Timer {
        k: u64,
        ts: i64,
    },
    TimerDelete {
        k: u64,
        ts: i64,
    },
    Fire {
        time: i64,
    },
    /// A checkpoint's sync phase (and a canonical savepoint of the same state).
    Snapshot,
    /// The async phase of the `pick`-th checkpoint still running.
    Finish {
        pick: u8,
    },
    /// Complete the `pick`-th finished checkpoint in the store.
    Complete {
        pick: u8,
    },
    /// Abort the `pick`-th checkpoint in flight.
    Abort {
        pick: u8,
    },
    /// Deliver the `pick`-th undelivered completion notification.
    Notify {
        pick: u8,
    },
    /// Crash; restore the `pick`-th retained checkpoint and go on from it.
    Restart {
        pick: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    prop_oneof![
        6 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put { k, v }),
        3 => k.clone().prop_map(|k| Op::Delete { k }),
        4 => (k.clone(), 0u8..3, any::<u8>()).prop_map(|(k, ns, e)| Op::Append { k, ns, e }),
        1 => (k.clone(), 0u8..3).prop_map(|(k, ns)| Op::ClearList { k, ns }),
        1 => (k.clone(), 0u8..3, 0u8..3).prop_map(|(k, target, source)| Op::Merge { k, target, source }),
        4 => (k.clone(), 0u8..4, any::<u8>()).prop_map(|(k, uk, v)| Op::MapPut { k, uk, v }),
        2 => (k.clone(), 0u8..4).prop_map(|(k, uk)| Op::MapRemove { k, uk }),
        2 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::TtlPut { k, v }),
        1 => (0u64..80).prop_map(|ms| Op::Advance { ms }),
        2 => (k.clone(), 0i64..40).prop_map(|(k, ts)| Op::Timer { k, ts }),
        1 => (k.clone(), 0i64..40).prop_map(|(k, ts)| Op::TimerDelete { k, ts }),
        1 => (0i64..40).prop_map(|time| Op::Fire { time }),
        8 => Just(Op::Snapshot),
        8 => any::<u8>().prop_map(|pick| Op::Finish { pick }),
        8 => any::<u8>().prop_map(|pick| Op::Complete { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Abort { pick }),
        6 => any::<u8>().prop_map(|pick| Op::Notify { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Restart { pick }),
    ]
}

/// What the backend should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    values: BTreeMap<u64, u8>,
    lists: BTreeMap<(u64, u8), Vec<u8>>,
    maps: BTreeMap<u64, BTreeMap<u8, u8>>,
    /// Value and the time it was written.
    ttl: BTreeMap<u64, (u8, u64)>,
    timers: BTreeSet<(i64, u64)>,
}

/// What a backend shows at time `now` (expired TTL values hidden).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct View {
    values: BTreeMap<u64, u8>,
    lists: BTreeMap<(u64, u8), Vec<u8>>,
    maps: BTreeMap<u64, BTreeMap<u8, u8>>,
    ttl: BTreeMap<u64, u8>,
    timers: Vec<(i64, u64)>,
}

impl Model {
    fn view(&self, now: u64, range: KeyGroupRange) -> View {
        let mine = |k: &u64| range.contains(key_group(*k));
        View {
            values: self
                .values
                .iter()
                .filter(|e| mine(e.0))
                .map(|(k, v)| (*k, *v))
                .collect(),
            lists: self
                .lists
                .iter()
                .filter(|e| mine(&e.0 .0) && !e.1.is_empty())
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            maps: self
                .maps
                .iter()
                .filter(|e| mine(e.0) && !e.1.is_empty())
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            ttl: self
                .ttl
                .iter()
                .filter(|(k, (_, at))| mine(k) && !flowstate_api::ttl::is_expired(*at, TTL_MILLIS, now))
                .map(|(k, (v, _))| (*k, *v))
                .collect(),
            timers: self.timers.iter().filter(|t| mine(&t.1)).copied().collect(),
        }
    }
}

fn key_group(k: u64) -> u32 {
    let mut bytes = Vec::new();
    default_serializer::<u64>().serialize(&k, &mut bytes).unwrap();
    key_group_for_key_bytes(&bytes, MAX_PARALLELISM)
}

struct States {
    v: ValueState<u8>,
    l: ListState<u8, u8>,
    m: MapState<u8, u8>,
    t: ValueState<u8>,
    timers: TimerService,
}

fn register(b: &mut HeapBackend<u64>) -> States {
    States {
        v: b.register(ValueStateDescriptor::<u8>::new("v")).unwrap(),
        l: b.register(ListStateDescriptor::<u8>::new("l").in_namespace::<u8>())
            .unwrap(),
        m: b.register(MapStateDescriptor::<u8, u8>::new("m")).unwrap(),
        t: b.register(
            ValueStateDescriptor::<u8>::new("t").with_ttl(
                StateTtlConfig::new(Duration::from_millis(TTL_MILLIS))
                    .cleanup_full_snapshot()
                    .cleanup_incrementally(2, false),
            ),
        )
        .unwrap(),
        timers: b.register(TimerServiceDescriptor::event_time("timers")).unwrap(),
    }
}

/// Everything `b` holds (drains its timers).
fn dump(b: &mut HeapBackend<u64>, s: &States) -> View {
    let range = b.key_group_range();
    let mut view = View::default();
    for k in (0..KEYS).filter(|k| range.contains(key_group(*k))) {
        b.set_current_key(&k).unwrap();
        if let Some(v) = b.value(&s.v).unwrap() {
            view.values.insert(k, v);
        }
        for ns in 0..3u8 {
            b.set_namespace(&s.l, &ns).unwrap();
            let list = b.list(&s.l).unwrap();
            if !list.is_empty() {
                view.lists.insert((k, ns), list);
            }
        }
        let entries = b.map_entries(&s.m).unwrap();
        if !entries.is_empty() {
            view.maps.insert(k, entries.into_iter().collect());
        }
        if let Some(v) = b.value(&s.t).unwrap() {
            view.ttl.insert(k, v);
        }
    }
    view.timers = s
        .timers
        .advance(b, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|t| (t.timestamp, t.key))
        .collect();
    view.timers.sort_unstable();
    view
}

fn config(range: KeyGroupRange, clock: &Arc<ManualClock>) -> KeyedBackendConfig<u64> {
    KeyedBackendConfig::<u64>::new(range, MAX_PARALLELISM).with_clock(clock.clone() as flowstate_api::ttl::SharedClock)
}

/// A checkpoint in flight.
struct Flight {
    id: u64,
    location: Arc<CheckpointLocation>,
    pending: Option<PendingSnapshot>,
    handle: Option<KeyedStateHandle>,
    model: Model,
}

struct Run {
    clock: Arc<ManualClock>,
    storage: Arc<CheckpointStorage>,
    savepoints: Arc<CheckpointStorage>,
    store: CheckpointStore,
    options: HeapOptions,
    backend: HeapBackend<u64>,
    states: States,
    model: Model,
    next_id: u64,
    flights: Vec<Flight>,
    undelivered: Vec<u64>,
    /// Per checkpoint: the model at its sync phase and the pointer of the
    /// savepoint taken at the same moment.
    taken: BTreeMap<u64, (Model, String)>,
}

fn metadata(id: u64, kind: CheckpointKind, handle: KeyedStateHandle) -> CheckpointMetadata {
    CheckpointMetadata::new(id, kind, 0).with_operator(OperatorState::new(OPERATOR, 1, MAX_PARALLELISM, vec![handle]))
}

impl Run {
    async fn new(retain: usize, ratio: f64) -> Run {
        let clock = ManualClock::new(1_000);
        // Files in blob stores in memory, with a small inline threshold so
        // most deltas are files the store's registry counts and deletes.
        let blobs = Arc::new(MemoryBlobStore::new("memory://prop"));
        let storage = Arc::new(
            CheckpointStorage::new(blobs, "job")
                .unwrap()
                .with_inline_threshold(64)
                .unwrap(),
        );
        let blobs = Arc::new(MemoryBlobStore::new("memory://prop-savepoints"));
        let savepoints = Arc::new(
            CheckpointStorage::new(blobs, "savepoints")
                .unwrap()
                .with_savepoint_dir("memory://prop-savepoints/savepoints"),
        );
        let store = CheckpointStore::open(
            Arc::clone(&storage),
            CheckpointStoreConfig::default().with_max_retained(retain),
        )
        .await
        .unwrap();
        let options = HeapOptions::incremental().with_max_delta_ratio(ratio);
        let mut backend = HeapBackend::with_options(
            config(KeyGroupRange::all(MAX_PARALLELISM).unwrap(), &clock),
            options.clone(),
        )
        .unwrap();
        let states = register(&mut backend);
        Run {
            clock,
            storage,
            savepoints,
            store,
            options,
            backend,
            states,
            model: Model::default(),
            next_id: 1,
            flights: Vec::new(),
            undelivered: Vec::new(),
            taken: BTreeMap::new(),
        }
    }

    fn now(&self) -> u64 {
        use flowstate_api::ttl::Clock;
        self.clock.now_millis()
    }

    async fn apply(&mut self, op: &Op) {
        let (b, s, m) = (&mut self.backend, &self.states, &mut self.model);
        match *op {
            Op::Put { k, v } => {
                b.set_current_key(&k).unwrap();
                b.update(&s.v, v).unwrap();
                m.values.insert(k, v);
            }
            Op::Delete { k } => {
                b.set_current_key(&k).unwrap();
                b.clear(&s.v).unwrap();
                m.values.remove(&k);
            }
            Op::Append { k, ns, e } => {
                b.set_current_key(&k).unwrap();
                b.set_namespace(&s.l, &ns).unwrap();
                b.append(&s.l, e).unwrap();
                m.lists.entry((k, ns)).or_default().push(e);
            }
            Op::ClearList { k, ns } => {
                b.set_current_key(&k).unwrap();
                b.set_namespace(&s.l, &ns).unwrap();
                b.clear(&s.l).unwrap();
                m.lists.remove(&(k, ns));
            }
            Op::Merge { k, target, source } => {
                b.set_current_key(&k).unwrap();
                b.merge_namespaces(&s.l, &target, &[source]).unwrap();
                if source != target {
                    let moved = m.lists.remove(&(k, source)).unwrap_or_default();
                    m.lists.entry((k, target)).or_default().extend(moved);
                }
            }
            Op::MapPut { k, uk, v } => {
                b.set_current_key(&k).unwrap();
                b.map_put(&s.m, uk, v).unwrap();
                m.maps.entry(k).or_default().insert(uk, v);
            }
            Op::MapRemove { k, uk } => {
                b.set_current_key(&k).unwrap();
                b.map_remove(&s.m, &uk).unwrap();
                if let Some(e) = m.maps.get_mut(&k) {
                    e.remove(&uk);
                }
            }
            Op::TtlPut { k, v } => {
                b.set_current_key(&k).unwrap();
                b.update(&s.t, v).unwrap();
                let now = {
                    use flowstate_api::ttl::Clock;
                    self.clock.now_millis()
                };
                m.ttl.insert(k, (v, now));
            }
            Op::Advance { ms } => self.clock.advance(ms),
            Op::Timer { k, ts } => {
                b.set_current_key(&k).unwrap();
                s.timers.register(b, ts, &VoidNamespace).unwrap();
                m.timers.insert((ts, k));
            }
            Op::TimerDelete { k, ts } => {
                b.set_current_key(&k).unwrap();
                s.timers.delete(b, ts, &VoidNamespace).unwrap();
                m.timers.remove(&(ts, k));
            }
            Op::Fire { time } => {
                let mut fired: Vec<(i64, u64)> = s
                    .timers
                    .advance(b, time)
                    .unwrap()
                    .into_iter()
                    .map(|t| (t.timestamp, t.key))
                    .collect();
                // Timers of one timestamp fire in key-byte order.
                fired.sort_unstable();
                let due: Vec<(i64, u64)> = m.timers.iter().filter(|t| t.0 <= time).copied().collect();
                assert_eq!(fired, due, "timers fired at {time}");
                m.timers.retain(|t| t.0 > time);
            }
            Op::Snapshot => {
                if self.flights.len() >= 4 {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                let location = self.store.begin_checkpoint(id).await.unwrap();
                let pending = b
                    .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
                    .unwrap();
                // A canonical savepoint of the same state, for comparison.
                let sp = self.savepoints.init_savepoint(id, None).await.unwrap();
                let savepoint = b
                    .snapshot(id, Arc::clone(&sp), SnapshotOptions::savepoint())
                    .unwrap()
                    .await
                    .unwrap();
                let pointer = sp
                    .write_metadata(&metadata(id, CheckpointKind::Savepoint, savepoint.handle))
                    .await
                    .unwrap();
                self.taken.insert(id, (m.clone(), pointer));
                self.flights.push(Flight {
                    id,
                    location,
                    pending: Some(pending),
                    handle: None,
                    model: m.clone(),
                });
            }
            Op::Finish { pick } => {
                let running: Vec<usize> = (0..self.flights.len())
                    .filter(|&i| self.flights[i].pending.is_some())
                    .collect();
                if running.is_empty() {
                    return;
                }
                let f = &mut self.flights[running[pick as usize % running.len()]];
                let result = f.pending.take().unwrap().await.unwrap();
                f.handle = Some(result.handle);
            }
            Op::Complete { pick } => {
                let done: Vec<usize> = (0..self.flights.len())
                    .filter(|&i| self.flights[i].handle.is_some())
                    .collect();
                if done.is_empty() {
                    return;
                }
                let f = self.flights.remove(done[pick as usize % done.len()]);
                let handle = f.handle.clone().unwrap();
                let newest = self.store.latest().map(|c| c.checkpoint_id);
                let completed = self
                    .store
                    .complete(&f.location, metadata(f.id, CheckpointKind::Checkpoint, handle.clone()))
                    .await;
                match completed {
                    Ok(_) => {
                        assert!(
                            newest.is_none_or(|n| n < f.id),
                            "checkpoint {} completed after {newest:?}",
                            f.id
                        );
                        self.undelivered.push(f.id);
                        self.check(f.id, &f.model).await;
                    }
                    Err(e) => {
                        assert!(newest.is_some_and(|n| n > f.id), "checkpoint {} refused: {e}", f.id);
                        self.store.abort(&f.location, &[handle]).await.unwrap();
                        self.backend.notify_checkpoint_aborted(f.id).unwrap();
                    }
                }
            }
            Op::Abort { pick } => {
                if self.flights.is_empty() {
                    return;
                }
                let mut f = self.flights.remove(pick as usize % self.flights.len());
                if let Some(p) = f.pending.take() {
                    f.handle = Some(p.await.unwrap().handle);
                }
                self.store.abort(&f.location, &[f.handle.unwrap()]).await.unwrap();
                self.backend.notify_checkpoint_aborted(f.id).unwrap();
            }
            Op::Notify { pick } => {
                if self.undelivered.is_empty() {
                    return;
                }
                let id = self.undelivered.remove(pick as usize % self.undelivered.len());
                self.backend.notify_checkpoint_complete(id).unwrap();
            }
            Op::Restart { pick } => {
                let ids: Vec<u64> = self.store.retained().iter().map(|c| c.checkpoint_id).collect();
                if ids.is_empty() {
                    return;
                }
                // Checkpoints in flight are abandoned; notifications are lost.
                for mut f in self.flights.drain(..) {
                    if let Some(p) = f.pending.take() {
                        f.handle = p.await.ok().map(|r| r.handle);
                    }
                    let handles: Vec<KeyedStateHandle> = f.handle.into_iter().collect();
                    self.store.abort(&f.location, &handles).await.unwrap();
                }
                self.undelivered.clear();
                let id = ids[pick as usize % ids.len()];
                let pointer = self.storage.checkpoint_pointer(id);
                let resolved = self.store.restore(&pointer, RestoreMode::Claim).await.unwrap();
                let handles = resolved.metadata.operators[0].keyed.clone();
                let range = KeyGroupRange::all(MAX_PARALLELISM).unwrap();
                let mut backend = HeapBackend::restore_with_options(
                    config(range, &self.clock),
                    self.options.clone(),
                    &handles,
                    &*resolved.reader,
                )
                .await
                .unwrap();
                self.states = register(&mut backend);
                self.backend = backend;
                self.model = self.taken[&id].0.clone();
            }
        }
    }

    /// Restores checkpoint `id` (and the savepoint taken with it): both
    /// equal the model.
    async fn check(&self, id: u64, model: &Model) {
        let range = KeyGroupRange::all(MAX_PARALLELISM).unwrap();
        let want = model.view(self.now(), range);
        let resolved = self
            .storage
            .resolve(&self.storage.checkpoint_pointer(id))
            .await
            .unwrap();
        let handles = resolved.metadata.operators[0].keyed.clone();
        let mut r = HeapBackendFactory::incremental()
            .restore(config(range, &self.clock), &handles, Arc::clone(&resolved.reader))
            .await
            .unwrap_or_else(|e| panic!("restore of checkpoint {id}: {e}"));
        let s = register(&mut r);
        assert_eq!(dump(&mut r, &s), want, "checkpoint {id}");
        let sp = self.savepoints.resolve(&self.taken[&id].1).await.unwrap();
        let mut r = HeapBackend::restore(config(range, &self.clock), &sp.metadata.operators[0].keyed, &*sp.reader)
            .await
            .unwrap();
        let s = register(&mut r);
        assert_eq!(dump(&mut r, &s), want, "savepoint of checkpoint {id}");
    }

    /// Every retained checkpoint restores to its model; the latest also at
    /// other key-group ranges.
    async fn finish(mut self) {
        for f in std::mem::take(&mut self.flights) {
            if let Some(p) = f.pending {
                p.await.unwrap();
            }
        }
        let ids: Vec<u64> = self.store.retained().iter().map(|c| c.checkpoint_id).collect();
        for &id in &ids {
            let model = self.taken[&id].0.clone();
            self.check(id, &model).await;
        }
        if let Some(&id) = ids.last() {
            let resolved = self
                .storage
                .resolve(&self.storage.checkpoint_pointer(id))
                .await
                .unwrap();
            let handles = resolved.metadata.operators[0].keyed.clone();
            for (start, end) in [(0, 5), (5, 11), (11, 16)] {
                let range = KeyGroupRange::new(start, end).unwrap();
                let mut r = HeapBackendFactory::incremental()
                    .restore(config(range, &self.clock), &handles, Arc::clone(&resolved.reader))
                    .await
                    .unwrap();
                let s = register(&mut r);
                assert_eq!(
                    dump(&mut r, &s),
                    self.taken[&id].0.view(self.now(), range),
                    "checkpoint {id} at key groups {range}"
                );
            }
        }
    }
}

/// Cases run; `HEAP_PROP_CASES` overrides.
fn cases() -> u32 {
    std::env::var("HEAP_PROP_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn restoring_any_retained_checkpoint_equals_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        retain in 1usize..3,
        ratio in prop_oneof![Just(0.0), Just(0.5), Just(1.0), Just(1000.0)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut run = Run::new(retain, ratio).await;
            for op in &ops {
                run.apply(op).await;
            }
            run.finish().await;
        });
    }
}
