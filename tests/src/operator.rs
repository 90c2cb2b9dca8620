//! Operator state contracts, run on every storage: split, union and
//! broadcast state written by the subtasks of one parallelism, completed in
//! a checkpoint, resolved back from the storage and restored at another
//! parallelism, assigned exactly as Flink's round-robin repartitioner does.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowstate_api::checkpoint::{OperatorState, ResolvedCheckpoint};
use flowstate_api::operator::{repartition, DistributionMode, SubtaskState, SubtaskStates};
use flowstate_api::*;

use crate::StorageFactory;

const SOURCE: &str = "source";

/// What each old subtask holds: per state name, its mode and entries.
type Layout = Vec<BTreeMap<&'static str, (DistributionMode, Vec<String>)>>;

fn list(name: &str) -> ListStateDescriptor<String> {
    ListStateDescriptor::<String>::new(name)
}

/// Writes `layout` as checkpoint 1 of a new job and resolves it back.
async fn checkpoint(factory: &dyn StorageFactory, job: &str, layout: &Layout) -> ResolvedCheckpoint {
    let storage = factory.storage(&crate::job_id(job));
    let location = storage.init_checkpoint(1).await.unwrap();
    let p = layout.len() as u32;
    let mut handles = Vec::new();
    for (i, states) in layout.iter().enumerate() {
        let mut store = OperatorStateStore::new(i as u32, p).unwrap();
        for (name, (mode, entries)) in states {
            match mode {
                DistributionMode::Split => store
                    .list_state(&list(name))
                    .unwrap()
                    .update(&mut store, entries)
                    .unwrap(),
                DistributionMode::Union => store
                    .union_list_state(&list(name))
                    .unwrap()
                    .update(&mut store, entries)
                    .unwrap(),
                DistributionMode::Broadcast => {
                    let b = store
                        .broadcast_state(&MapStateDescriptor::<String, String>::new(name))
                        .unwrap();
                    for e in entries {
                        b.put(&mut store, e, format!("{e}@{i}")).unwrap();
                    }
                }
            }
        }
        handles.push(store.snapshot(1, location.clone()).unwrap().await.unwrap());
    }
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0)
        .with_operator(OperatorState::new(SOURCE, p, 128, Vec::new()).with_operator_state(handles));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    storage.resolve(&pointer).await.unwrap()
}

/// Restores `to` subtasks and reads back each state of `names`.
async fn restore(
    resolved: &ResolvedCheckpoint,
    to: u32,
    names: &[(&str, DistributionMode)],
) -> Vec<BTreeMap<String, Vec<String>>> {
    let op = resolved.metadata.operator(SOURCE).unwrap();
    let mut out = Vec::new();
    for i in 0..to {
        let mut store = OperatorStateStore::restore(i, to, &op.operator_state, op.parallelism, &*resolved.reader)
            .await
            .unwrap();
        let mut got = BTreeMap::new();
        for (name, mode) in names {
            let entries = match mode {
                DistributionMode::Split => store.list_state(&list(name)).unwrap().get(&store).unwrap(),
                DistributionMode::Union => store.union_list_state(&list(name)).unwrap().get(&store).unwrap(),
                DistributionMode::Broadcast => store
                    .broadcast_state(&MapStateDescriptor::<String, String>::new(name))
                    .unwrap()
                    .entries(&store)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            };
            got.insert(name.to_string(), entries);
        }
        out.push(got);
    }
    out
}

/// What Flink's repartitioner assigns, from the same layout.
fn flink(layout: &Layout, to: u32) -> Vec<BTreeMap<String, Vec<String>>> {
    let old: Vec<SubtaskStates<String>> = layout
        .iter()
        .enumerate()
        .map(|(i, states)| {
            states
                .iter()
                .map(|(name, (mode, entries))| {
                    let entries = match mode {
                        DistributionMode::Broadcast => entries.iter().map(|e| format!("{e}={e}@{i}")).collect(),
                        _ => entries.clone(),
                    };
                    (name.to_string(), SubtaskState { mode: *mode, entries })
                })
                .collect()
        })
        .collect();
    repartition(&old, to)
        .unwrap()
        .into_iter()
        .map(|s| s.into_iter().map(|(n, st)| (n, st.entries)).collect())
        .collect()
}

fn split_layout(from: u32, per: impl Fn(u32) -> usize, big: bool) -> Layout {
    (0..from)
        .map(|i| {
            let entries = |name: &str| -> Vec<String> {
                (0..per(i))
                    .map(|j| {
                        let e = format!("{name}-{i}-{j}");
                        // Large entries push the stream past any inline threshold.
                        if big {
                            format!("{e}-{}", "x".repeat(2000))
                        } else {
                            e
                        }
                    })
                    .collect()
            };
            BTreeMap::from([
                ("offsets", (DistributionMode::Split, entries("offsets"))),
                ("pending", (DistributionMode::Split, entries("pending"))),
            ])
        })
        .collect()
}

/// Split (list) state restored at another parallelism gets Flink's
/// assignment end to end through the storage: the 3→2 example of the docs
/// (`[a,b] [c] [d,e]` → `[a,b,c] [d,e]`), 1→2, 5→3, 15→77 and 77→15, two
/// state names (the start rotates across them), small (inline) and large
/// (file) streams.
pub async fn split_state_restores_with_flinks_assignment(factory: Arc<dyn StorageFactory>) {
    let docs: Layout = [vec!["a", "b"], vec!["c"], vec!["d", "e"]]
        .into_iter()
        .map(|e| {
            BTreeMap::from([(
                "offsets",
                (DistributionMode::Split, e.into_iter().map(String::from).collect()),
            )])
        })
        .collect();
    let resolved = checkpoint(&*factory, "op-docs", &docs).await;
    let got = restore(&resolved, 2, &[("offsets", DistributionMode::Split)]).await;
    assert_eq!(got[0]["offsets"], ["a", "b", "c"]);
    assert_eq!(got[1]["offsets"], ["d", "e"]);
    let names = [
        ("offsets", DistributionMode::Split),
        ("pending", DistributionMode::Split),
    ];
    for (from, to, big) in [
        (1, 2, false),
        (5, 3, false),
        (15, 77, false),
        (77, 15, false),
        (3, 2, true),
    ] {
        let layout = split_layout(from, |i| (i as usize * 7 + 3) % 5, big);
        let resolved = checkpoint(&*factory, "op-split", &layout).await;
        let got = restore(&resolved, to, &names).await;
        assert_eq!(got, flink(&layout, to), "{from}->{to} (large: {big})");
        let total: usize = got.iter().map(|s| s["offsets"].len()).sum();
        let written: usize = layout.iter().map(|s| s["offsets"].1.len()).sum();
        assert_eq!(total, written, "{from}->{to}: split entries lost or duplicated");
    }
}

/// Union state gives every restored subtask every entry, at the same
/// parallelism too; broadcast state gives new subtask `i` the copy of the
/// (i mod n)-th of the n old subtasks that reported it.
pub async fn union_and_broadcast_state_restore_through_storage(factory: Arc<dyn StorageFactory>) {
    let layout: Layout = (0..3)
        .map(|i| {
            BTreeMap::from([
                (
                    "all",
                    (DistributionMode::Union, (0..=i).map(|j| format!("u{i}{j}")).collect()),
                ),
                (
                    "rules",
                    (DistributionMode::Broadcast, vec![format!("r{i}"), "shared".to_string()]),
                ),
            ])
        })
        .collect();
    let resolved = checkpoint(&*factory, "op-union", &layout).await;
    let names = [("all", DistributionMode::Union), ("rules", DistributionMode::Broadcast)];
    let every: Vec<String> = ["u00", "u10", "u11", "u20", "u21", "u22"].map(String::from).to_vec();
    for to in [3, 2, 5] {
        let got = restore(&resolved, to, &names).await;
        assert_eq!(got, flink(&layout, to), "3->{to}");
        for (i, s) in got.iter().enumerate() {
            assert_eq!(s["all"], every, "3->{to}: union on subtask {i}");
            let old = i % 3;
            assert_eq!(
                s["rules"],
                [format!("r{old}=r{old}@{old}"), format!("shared=shared@{old}")],
                "3->{to}: broadcast on subtask {i}"
            );
        }
    }
}

/// Restoring split state as union state (or the reverse), or with another
/// element serializer, is refused with `Incompatible`, naming the state.
pub async fn operator_state_mode_switch_is_refused(factory: Arc<dyn StorageFactory>) {
    let layout: Layout = vec![BTreeMap::from([(
        "offsets",
        (DistributionMode::Split, vec!["a".to_string()]),
    )])];
    let resolved = checkpoint(&*factory, "op-switch", &layout).await;
    let op = resolved.metadata.operator(SOURCE).unwrap();
    let mut store = OperatorStateStore::restore(0, 1, &op.operator_state, 1, &*resolved.reader)
        .await
        .unwrap();
    let e = store.union_list_state(&list("offsets")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    assert!(e.to_string().contains("offsets"), "{e}");
    let e = store
        .list_state(&ListStateDescriptor::<u64>::new("offsets"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    assert_eq!(store.list_state(&list("offsets")).unwrap().get(&store).unwrap(), ["a"]);
}
