//! How operator state is assigned to the subtasks of a restored operator:
//! exactly as Flink's `RoundRobinOperatorStateRepartitioner` does, so an
//! engine migrating from Flink sees the same assignment.
//!
//! - Parallelism unchanged: each subtask gets its own split and broadcast
//!   state back; union state still gives every subtask every entry.
//! - Split redistribution, per state name in name order: all entries in
//!   old-subtask order; each new subtask, from a starting subtask on and
//!   wrapping around, takes `total / p` consecutive entries, and one more
//!   while `total % p` extra ones are left; the next name starts at the
//!   first subtask that got no extra entry. 3→2: `[a,b] [c] [d,e]` →
//!   `[a,b,c] [d,e]`.
//! - Union: every new subtask gets every entry, in old-subtask order.
//! - Broadcast: new subtask `i` gets old subtask `i % p_old`'s copy.

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
/// `new_parallelism` new subtasks. A state name whose mode differs between
/// old subtasks is refused (`Invalid`), as is a new parallelism of 0.
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
                for i in 0..p {
                    let copy = if per_old.is_empty() {
                        None
                    } else {
                        per_old[i % per_old.len()]
                    };
                    put(i, copy.map_or_else(Vec::new, |e| e.clone()));
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

    #[test]
    fn broadcast_follows_i_mod_p_old() {
        let old: Vec<_> = (0..3)
            .map(|i| {
                one(
                    "b",
                    SubtaskState {
                        mode: DistributionMode::Broadcast,
                        entries: vec![format!("copy{i}")],
                    },
                )
            })
            .collect();
        let new = repartition(&old, 5).unwrap();
        assert_eq!(
            entries(&new, "b"),
            strings(&[&["copy0"], &["copy1"], &["copy2"], &["copy0"], &["copy1"]])
        );
        let new = repartition(&old, 2).unwrap();
        assert_eq!(entries(&new, "b"), strings(&[&["copy0"], &["copy1"]]));
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
