//! How operator state is assigned to the subtasks of a restored operator:
//! as Flink's `RoundRobinOperatorStateRepartitioner` does, so an engine
//! migrating from Flink sees the same assignment. Old subtasks that did not
//! report a state (it finished, never registered it, or had no operator
//! state at all) take no part in that state's assignment.
//!
//! - Parallelism unchanged: each subtask gets its own split state back
//!   (none where it reported none); union and broadcast state as below.
//! - Split redistribution, per state name in name order: all entries in
//!   old-subtask order; each new subtask, from a starting subtask on and
//!   wrapping around, takes `total / p` consecutive entries, and one more
//!   while `total % p` extra ones are left; the next name starts at the
//!   first subtask that got no extra entry. 3→2: `[a,b] [c] [d,e]` →
//!   `[a,b,c] [d,e]`.
//! - Union: every new subtask gets every entry of every old subtask that
//!   reported the state, in old-subtask order.
//! - Broadcast, per state name: of the `n` old subtasks that reported it,
//!   in old-subtask order, new subtask `i` gets the copy of the
//!   `(i % n)`-th. When every old subtask reported it this is old subtask
//!   `i % p_old` (at unchanged parallelism, each subtask's own copy); 3→5
//!   with old subtask 1 absent gives the copies of 0, 2, 0, 2, 0.
//!
//! Deliberate differences from Flink: states go in name order (Flink:
//! hash order); a subtask's entries are in old-subtask order (Flink: in an
//! unspecified order of the old streams); every new subtask lists every
//! state name, without entries where it is assigned none (Flink leaves the
//! name out); and at unchanged parallelism a subtask that reported a
//! broadcast state some other subtask did not report gets only its
//! assigned copy, where Flink also keeps its own beside it and merges the
//! two (the copies of a broadcast state are equal by contract).

use std::collections::BTreeMap;

use crate::checkpoint::DistributionMode;
use crate::error::{Error, ErrorKind, Result};

/// One state of one old subtask: its mode and entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskState<E> {
    /// How it is distributed.
    pub mode: DistributionMode,
    /// Its entries (list elements, or a broadcast map's entries).
    pub entries: Vec<E>,
}

/// The operator states of one subtask, by state name.
pub type SubtaskStates<E> = BTreeMap<String, SubtaskState<E>>;

/// A state's mode and each old subtask's entries (`None` where it has none).
type Named<'a, E> = (DistributionMode, Vec<Option<&'a Vec<E>>>);

/// Assigns the states of the old subtasks `old` (index = old subtask) to
/// `new_parallelism` new subtasks, as the module documentation describes;
/// an old subtask without a state's name did not report that state. A
/// state name whose mode differs between old subtasks is refused
/// (`Invalid`), as is a new parallelism of 0.
pub fn repartition<E: Clone>(old: &[SubtaskStates<E>], new_parallelism: u32) -> Result<Vec<SubtaskStates<E>>> {
    if new_parallelism == 0 {
        return Err(Error::invalid("operator state cannot be assigned to parallelism 0"));
    }
    let p = new_parallelism as usize;
    // Per name: its mode and each old subtask's entries (None where absent).
    let mut by_name: BTreeMap<&str, Named<'_, E>> = BTreeMap::new();
    for (i, subtask) in old.iter().enumerate() {
        for (name, state) in subtask {
            let slot = by_name
                .entry(name.as_str())
                .or_insert_with(|| (state.mode, vec![None; old.len()]));
            if slot.0 != state.mode {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "operator state {name:?} is {} in one subtask and {} in another",
                        slot.0.name(),
                        state.mode.name()
                    ),
                ));
            }
            slot.1[i] = Some(&state.entries);
        }
    }
    let mut new: Vec<SubtaskStates<E>> = vec![BTreeMap::new(); p];
    let unchanged = old.len() == p;
    let mut start = 0usize;
    for (name, (mode, per_old)) in by_name {
        let mut put = |subtask: usize, entries: Vec<E>| {
            new[subtask].insert(name.to_string(), SubtaskState { mode, entries });
        };
        match mode {
            DistributionMode::Split if unchanged => {
                for (i, entries) in per_old.iter().enumerate() {
                    put(i, entries.map_or_else(Vec::new, |e| e.clone()));
                }
            }
            DistributionMode::Split => {
                let all: Vec<&E> = per_old.iter().flatten().flat_map(|e| e.iter()).collect();
                let (base, mut extra) = (all.len() / p, all.len() % p);
                let mut next_start = start;
                let mut taken = 0;
                let mut extras_done = false;
                for i in 0..p {
                    let subtask = (i + start) % p;
                    let mut n = base;
                    if extra > 0 {
                        n += 1;
                        extra -= 1;
                    } else if !extras_done {
                        // The next name starts here: the first subtask
                        // without an extra entry.
                        next_start = subtask;
                        extras_done = true;
                    }
                    put(subtask, all[taken..taken + n].iter().map(|e| (*e).clone()).collect());
                    taken += n;
                }
                start = next_start;
            }
            DistributionMode::Union => {
                let all: Vec<E> = per_old.iter().flatten().flat_map(|e| e.iter().cloned()).collect();
                for i in 0..p {
                    put(i, all.clone());
                }
            }
            DistributionMode::Broadcast => {
                // The copies of the old subtasks that reported this state,
                // in old-subtask order; a name is listed only when one did.
                let reporters: Vec<&Vec<E>> = per_old.iter().flatten().copied().collect();
                if reporters.is_empty() {
                    return Err(Error::internal(format!(
                        "broadcast state {name:?} is listed but no old subtask reported it"
                    )));
                }
                for i in 0..p {
                    put(i, reporters[i % reporters.len()].clone());
                }
            }
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(entries: &[&str]) -> SubtaskState<String> {
        SubtaskState {
            mode: DistributionMode::Split,
            entries: entries.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn one(name: &str, state: SubtaskState<String>) -> SubtaskStates<String> {
        BTreeMap::from([(name.to_string(), state)])
    }

    fn entries(new: &[SubtaskStates<String>], name: &str) -> Vec<Vec<String>> {
        new.iter()
            .map(|s| s.get(name).map(|st| st.entries.clone()).unwrap_or_default())
            .collect()
    }

    fn strings(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter().map(|s| s.iter().map(|x| x.to_string()).collect()).collect()
    }

    #[test]
    fn split_3_to_2() {
        let old = [
            one("s", split(&["a", "b"])),
            one("s", split(&["c"])),
            one("s", split(&["d", "e"])),
        ];
        let new = repartition(&old, 2).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a", "b", "c"], &["d", "e"]]));
    }

    #[test]
    fn split_1_to_2() {
        let new = repartition(&[one("s", split(&["e1", "e2"]))], 2).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["e1"], &["e2"]]));
    }

    #[test]
    fn split_5_to_3() {
        let old: Vec<_> = (0..5)
            .map(|i| one("s", split(&[&format!("{i}a"), &format!("{i}b")])))
            .collect();
        let new = repartition(&old, 3).unwrap();
        assert_eq!(
            entries(&new, "s"),
            strings(&[&["0a", "0b", "1a", "1b"], &["2a", "2b", "3a"], &["3b", "4a", "4b"]])
        );
    }

    /// The starting subtask rotates across names: after a name whose extra
    /// entries went to subtasks 0 and 1, the next name starts at 2.
    #[test]
    fn split_start_rotates_across_names() {
        let mut s = one("a", split(&["a1", "a2", "a3", "a4", "a5"]));
        s.insert("b".into(), split(&["b1", "b2", "b3", "b4"]));
        s.insert("c".into(), split(&["c1"]));
        let new = repartition(&[s], 3).unwrap();
        // a: 5 over 3 → 2, 2, 1 from subtask 0; the next name starts at 2.
        assert_eq!(entries(&new, "a"), strings(&[&["a1", "a2"], &["a3", "a4"], &["a5"]]));
        // b: 4 over 3 from subtask 2 → 2 (extra), then 0 and 1 get 1; next starts at 0.
        assert_eq!(entries(&new, "b"), strings(&[&["b3"], &["b4"], &["b1", "b2"]]));
        // c: 1 over 3 from subtask 0.
        assert_eq!(entries(&new, "c"), strings(&[&["c1"], &[], &[]]));
    }

    fn numbered(p_old: u32, per: usize) -> Vec<SubtaskStates<u32>> {
        (0..p_old)
            .map(|i| {
                let entries = (0..per as u32).map(|j| i * 1000 + j).collect();
                BTreeMap::from([(
                    "s".to_string(),
                    SubtaskState {
                        mode: DistributionMode::Split,
                        entries,
                    },
                )])
            })
            .collect()
    }

    /// 15 → 77 and 77 → 15: every entry once, in order, in runs whose sizes
    /// follow the rule.
    #[test]
    fn split_15_77_both_ways() {
        for (from, to, per) in [(15u32, 77u32, 3usize), (77, 15, 2)] {
            let old = numbered(from, per);
            let new = repartition(&old, to).unwrap();
            let total = from as usize * per;
            let flat: Vec<u32> = new.iter().flat_map(|s| s["s"].entries.clone()).collect();
            let expected: Vec<u32> = old.iter().flat_map(|s| s["s"].entries.clone()).collect();
            assert_eq!(flat, expected, "{from}→{to}: concatenated in old order");
            let sizes: Vec<usize> = new.iter().map(|s| s["s"].entries.len()).collect();
            let (base, extra) = (total / to as usize, total % to as usize);
            for (i, n) in sizes.iter().enumerate() {
                assert_eq!(*n, base + usize::from(i < extra), "{from}→{to} subtask {i}");
            }
        }
    }

    #[test]
    fn unchanged_parallelism_keeps_split_and_unions_union() {
        let mut s0 = one("s", split(&["a"]));
        s0.insert(
            "u".into(),
            SubtaskState {
                mode: DistributionMode::Union,
                entries: vec!["u0".into()],
            },
        );
        let mut s1 = one("s", split(&["b", "c"]));
        s1.insert(
            "u".into(),
            SubtaskState {
                mode: DistributionMode::Union,
                entries: vec!["u1".into(), "u2".into()],
            },
        );
        let new = repartition(&[s0, s1], 2).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a"], &["b", "c"]]));
        assert_eq!(entries(&new, "u"), strings(&[&["u0", "u1", "u2"], &["u0", "u1", "u2"]]));
    }

    fn state(mode: DistributionMode, entries: &[&str]) -> SubtaskState<String> {
        SubtaskState {
            mode,
            entries: entries.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `p_old` old subtasks, each with broadcast state "b" = `[copy<i>]`
    /// except those in `absent`, which have no operator state at all.
    fn broadcast_without(p_old: u32, absent: &[u32]) -> Vec<SubtaskStates<String>> {
        (0..p_old)
            .map(|i| {
                if absent.contains(&i) {
                    BTreeMap::new()
                } else {
                    one("b", state(DistributionMode::Broadcast, &[&format!("copy{i}")]))
                }
            })
            .collect()
    }

    /// The copy each new subtask got, as the old subtask index it came from.
    fn copies(new: &[SubtaskStates<String>]) -> Vec<String> {
        new.iter()
            .map(|s| {
                assert_eq!(s["b"].mode, DistributionMode::Broadcast);
                s["b"].entries.join(",")
            })
            .collect()
    }

    fn copy_names(old: &[u32]) -> Vec<String> {
        old.iter().map(|i| format!("copy{i}")).collect()
    }

    #[test]
    fn broadcast_with_every_old_subtask_follows_i_mod_p_old() {
        let old = broadcast_without(3, &[]);
        assert_eq!(copies(&repartition(&old, 5).unwrap()), copy_names(&[0, 1, 2, 0, 1]));
        assert_eq!(copies(&repartition(&old, 2).unwrap()), copy_names(&[0, 1]));
        // Unchanged parallelism: each subtask keeps its own copy.
        assert_eq!(copies(&repartition(&old, 3).unwrap()), copy_names(&[0, 1, 2]));
    }

    #[test]
    fn broadcast_3_to_5_with_an_absent_old_subtask_reaches_every_new_subtask() {
        let new = repartition(&broadcast_without(3, &[1]), 5).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 2, 0, 2, 0]));
    }

    #[test]
    fn broadcast_3_to_3_with_an_absent_old_subtask_reaches_every_subtask() {
        let new = repartition(&broadcast_without(3, &[1]), 3).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 2, 0]));
        let new = repartition(&broadcast_without(3, &[0]), 3).unwrap();
        assert_eq!(copies(&new), copy_names(&[1, 2, 1]));
    }

    #[test]
    fn broadcast_3_to_2_with_an_absent_old_subtask_reaches_every_new_subtask() {
        let new = repartition(&broadcast_without(3, &[1]), 2).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 2]));
        let new = repartition(&broadcast_without(3, &[0]), 2).unwrap();
        assert_eq!(copies(&new), copy_names(&[1, 2]));
    }

    #[test]
    fn broadcast_4_to_7_with_an_absent_old_subtask_reaches_every_new_subtask() {
        let new = repartition(&broadcast_without(4, &[2]), 7).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 1, 3, 0, 1, 3, 0]));
        let new = repartition(&broadcast_without(4, &[0, 3]), 7).unwrap();
        assert_eq!(copies(&new), copy_names(&[1, 2, 1, 2, 1, 2, 1]));
    }

    /// An old subtask that has other operator state but not the broadcast
    /// state counts as absent for it; one that reported it without entries
    /// counts as present (its copy is empty).
    #[test]
    fn broadcast_reporters_are_per_state_name() {
        let mut old = broadcast_without(3, &[1]);
        old[1] = one("s", split(&["x"]));
        old[2].insert("c".into(), state(DistributionMode::Broadcast, &[]));
        let new = repartition(&old, 4).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 2, 0, 2]));
        // "c" was reported by subtask 2 only: every new subtask gets its (empty) copy.
        for s in &new {
            assert_eq!(s["c"], state(DistributionMode::Broadcast, &[]));
        }
        assert_eq!(entries(&new, "s"), strings(&[&["x"], &[], &[], &[]]));
    }

    #[test]
    fn union_missing_from_one_old_subtask_gives_every_new_subtask_the_rest() {
        let old = [
            one("u", state(DistributionMode::Union, &["a", "b"])),
            BTreeMap::new(),
            one("u", state(DistributionMode::Union, &["c"])),
        ];
        for p in [2, 3, 5] {
            let new = repartition(&old, p).unwrap();
            assert_eq!(new.len(), p as usize);
            for s in &new {
                assert_eq!(s["u"], state(DistributionMode::Union, &["a", "b", "c"]), "3→{p}");
            }
        }
    }

    #[test]
    fn split_missing_from_one_old_subtask_distributes_the_rest() {
        let old = [
            one("s", split(&["a", "b", "c"])),
            BTreeMap::new(),
            one("s", split(&["d", "e"])),
        ];
        let new = repartition(&old, 2).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a", "b", "c"], &["d", "e"]]));
        let new = repartition(&old, 5).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a"], &["b"], &["c"], &["d"], &["e"]]));
        let new = repartition(&old, 4).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a", "b"], &["c"], &["d"], &["e"]]));
        // Unchanged parallelism: each subtask keeps its own, the absent one none.
        let new = repartition(&old, 3).unwrap();
        assert_eq!(entries(&new, "s"), strings(&[&["a", "b", "c"], &[], &["d", "e"]]));
        assert!(new.iter().all(|s| s["s"].mode == DistributionMode::Split));
    }

    /// Unchanged parallelism with a broadcast state missing from one old
    /// subtask: split state stays where it was, union state goes to every
    /// subtask, and the broadcast state is assigned from the subtasks that
    /// reported it.
    #[test]
    fn unchanged_parallelism_keeps_split_and_fills_in_broadcast() {
        let mut old = broadcast_without(3, &[2]);
        for (i, s) in old.iter_mut().enumerate() {
            s.insert("s".into(), split(&[&format!("s{i}")]));
            s.insert("u".into(), state(DistributionMode::Union, &[&format!("u{i}")]));
        }
        let new = repartition(&old, 3).unwrap();
        assert_eq!(copies(&new), copy_names(&[0, 1, 0]));
        assert_eq!(entries(&new, "s"), strings(&[&["s0"], &["s1"], &["s2"]]));
        assert_eq!(entries(&new, "u"), vec![strings(&[&["u0", "u1", "u2"]])[0].clone(); 3]);
    }

    /// Flink's `RoundRobinOperatorStateRepartitioner`, written out as it is
    /// there: the states grouped by mode and name as lists of (old subtask,
    /// entries) in old-subtask order, the same-parallelism short cut, split
    /// state handed out by a cursor over the lists, union state to all, and
    /// broadcast state `list[i % list.len()]`. As in flowstate, names go in
    /// name order, entries in old-subtask order, and every new subtask lists
    /// every state name (without entries where it is assigned none).
    fn flink_model(old: &[SubtaskStates<String>], p: usize) -> Vec<SubtaskStates<String>> {
        type Lists<'a> = BTreeMap<String, (DistributionMode, Vec<(usize, &'a Vec<String>)>)>;
        let mut by_name: Lists<'_> = BTreeMap::new();
        for (i, subtask) in old.iter().enumerate() {
            for (name, s) in subtask {
                by_name
                    .entry(name.clone())
                    .or_insert((s.mode, Vec::new()))
                    .1
                    .push((i, &s.entries));
            }
        }
        let mut out: Vec<BTreeMap<String, SubtaskState<String>>> = vec![BTreeMap::new(); p];
        let mut give = |i: usize, name: &str, mode: DistributionMode, entries: &[String]| {
            out[i]
                .entry(name.to_string())
                .or_insert(SubtaskState {
                    mode,
                    entries: Vec::new(),
                })
                .entries
                .extend_from_slice(entries);
        };
        if p == old.len() {
            // Each subtask keeps what it had; only union state and broadcast
            // state some subtasks did not report are assigned anew.
            for (name, (mode, list)) in &by_name {
                let partly = list.len() < p;
                for (i, e) in list {
                    if *mode == DistributionMode::Split || (*mode == DistributionMode::Broadcast && !partly) {
                        give(*i, name, *mode, e);
                    }
                }
            }
        } else {
            let mut start = 0usize;
            for (name, (mode, list)) in by_name.iter().filter(|(_, (m, _))| *m == DistributionMode::Split) {
                let total: usize = list.iter().map(|(_, e)| e.len()).sum();
                let (base, mut remainder) = (total / p, (total % p) as i64);
                let mut new_start = start;
                let (mut lst, mut off) = (0usize, 0usize);
                for i in 0..p {
                    let op = (i + start) % p;
                    let mut n = base as i64;
                    if remainder > 0 {
                        n += 1;
                        remainder -= 1;
                    } else if remainder == 0 {
                        new_start = op;
                        remainder -= 1;
                    }
                    give(op, name, *mode, &[]);
                    while n > 0 {
                        let part = list[lst].1;
                        let remaining = (part.len() - off) as i64;
                        if remaining > n {
                            give(op, name, *mode, &part[off..off + n as usize]);
                            off += n as usize;
                        } else {
                            give(op, name, *mode, &part[off..]);
                            off = 0;
                            lst += 1;
                        }
                        n -= remaining;
                    }
                }
                start = new_start;
            }
        }
        for (name, (mode, list)) in &by_name {
            for i in 0..p {
                match mode {
                    DistributionMode::Union => {
                        for (_, e) in list {
                            give(i, name, *mode, e);
                        }
                    }
                    DistributionMode::Broadcast if p != old.len() || list.len() < p => {
                        give(i, name, *mode, list[i % list.len()].1);
                    }
                    _ => give(i, name, *mode, &[]),
                }
            }
        }
        out
    }

    /// Every subset of absent old subtasks for 1 to 5 old subtasks, to 1 to
    /// 8 new ones, for a broadcast state alone and beside union and split
    /// state; then random layouts with several states of each mode, some
    /// missing from some old subtasks: always Flink's assignment.
    #[test]
    fn assignment_matches_a_model_of_flink_over_many_layouts() {
        let layout = |p_old: usize, absent: u32, with_lists: bool| -> Vec<SubtaskStates<String>> {
            (0..p_old)
                .map(|i| {
                    let mut s = BTreeMap::new();
                    if absent & (1 << i) == 0 {
                        s.insert("b".to_string(), state(DistributionMode::Broadcast, &[&format!("b{i}")]));
                    }
                    if with_lists {
                        let entries: Vec<String> = (0..i % 3).map(|e| format!("{i}.{e}")).collect();
                        let refs: Vec<&str> = entries.iter().map(|e| e.as_str()).collect();
                        s.insert("s".to_string(), state(DistributionMode::Split, &refs));
                        s.insert("u".to_string(), state(DistributionMode::Union, &refs));
                    }
                    s
                })
                .collect()
        };
        let mut checked = 0;
        for p_old in 1..=5usize {
            for absent in 0..(1u32 << p_old) {
                for with_lists in [false, true] {
                    let old = layout(p_old, absent, with_lists);
                    for p_new in 1..=8usize {
                        let got = repartition(&old, p_new as u32).unwrap();
                        assert_eq!(
                            got,
                            flink_model(&old, p_new),
                            "{p_old}→{p_new}, absent {absent:#b}, lists {with_lists}"
                        );
                        if absent != (1 << p_old) - 1 {
                            // Someone reported "b": every new subtask has a copy.
                            assert!(got.iter().all(|s| s["b"].entries.len() == 1), "{p_old}→{p_new}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 8 * (2 + 4 + 8 + 16 + 32));

        let mut seed = 11u64;
        let mut below = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let names = [
            ("a", DistributionMode::Split),
            ("b", DistributionMode::Broadcast),
            ("c", DistributionMode::Union),
            ("d", DistributionMode::Split),
            ("e", DistributionMode::Broadcast),
        ];
        for round in 0..2000 {
            let p_old = 1 + below(9) as usize;
            let p_new = 1 + below(12) as usize;
            let old: Vec<SubtaskStates<String>> = (0..p_old)
                .map(|i| {
                    let mut s = BTreeMap::new();
                    if below(5) == 0 {
                        return s; // No operator state at all.
                    }
                    for (name, mode) in names {
                        if below(3) == 0 {
                            continue; // This state is missing here.
                        }
                        let entries = (0..below(6)).map(|e| format!("{name}{i}.{e}")).collect();
                        s.insert(name.to_string(), SubtaskState { mode, entries });
                    }
                    s
                })
                .collect();
            assert_eq!(
                repartition(&old, p_new as u32).unwrap(),
                flink_model(&old, p_new),
                "round {round}: {p_old}→{p_new}, {old:?}"
            );
        }
    }

    #[test]
    fn mixed_modes_and_parallelism_zero_are_refused() {
        let s0 = one("s", split(&["a"]));
        let s1 = one(
            "s",
            SubtaskState {
                mode: DistributionMode::Union,
                entries: vec!["b".to_string()],
            },
        );
        let e = repartition(&[s0.clone(), s1], 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(
            e.to_string().contains("split") && e.to_string().contains("union"),
            "{e}"
        );
        assert_eq!(repartition(&[s0], 0).unwrap_err().kind(), ErrorKind::Invalid);
    }
}
