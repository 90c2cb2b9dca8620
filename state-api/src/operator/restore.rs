//! Operator state restore: checking the old handles, assigning their
//! blocks to the new subtasks and reading only those.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::store::*;
use crate::checkpoint::StateReader;
use crate::checkpoint::{DistributionMode, OperatorStateBlock, OperatorStateHandle};
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{crc32c, Reader};
use crate::keygroup::MAX_PARALLELISM_UPPER_BOUND;
use crate::operator::repartition::{repartition, SubtaskState, SubtaskStates};
use crate::serializer::SerializerId;

/// Entries `start..end` of block `block` of handle `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) handle: u32,
    pub(super) block: u32,
    pub(super) start: u64,
    pub(super) end: u64,
}

/// Checks the handles of a restore; returns, per state name, the handle and
/// block that first lists it.
pub(super) fn check_restore(
    old: &[OperatorStateHandle],
    old_parallelism: u32,
) -> Result<BTreeMap<&str, (usize, usize)>> {
    let mut seen = BTreeSet::new();
    let mut metas: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (hi, h) in old.iter().enumerate() {
        h.validate().map_err(|e| e.context(h.describe()))?;
        if h.subtask_index >= old_parallelism {
            return Err(Error::corrupted(format!(
                "{}: subtask index {} is not below the old parallelism {old_parallelism}",
                h.describe(),
                h.subtask_index
            )));
        }
        if !seen.insert(h.subtask_index) {
            return Err(Error::corrupted(format!(
                "two operator state handles of subtask {}",
                h.subtask_index
            )));
        }
        for (bi, b) in h.states.iter().enumerate() {
            let &mut (fh, fb) = metas.entry(b.name.as_str()).or_insert((hi, bi));
            let first = &old[fh].states[fb];
            let at = |h: &OperatorStateHandle| format!("subtask {}", h.subtask_index);
            let differs = if first.mode != b.mode {
                Some(("mode", first.mode.name().to_string(), b.mode.name().to_string()))
            } else if first.value_serializer != b.value_serializer {
                Some((
                    "value serializer",
                    first.value_serializer.to_string(),
                    b.value_serializer.to_string(),
                ))
            } else if first.key_serializer != b.key_serializer {
                let show = |k: &Option<SerializerId>| k.as_ref().map_or_else(String::new, |k| k.to_string());
                Some(("key serializer", show(&first.key_serializer), show(&b.key_serializer)))
            } else {
                None
            };
            if let Some((what, a, z)) = differs {
                return Err(Error::corrupted(format!(
                    "operator state {:?} has {what} {a} in {} but {z} in {}",
                    b.name,
                    at(&old[fh]),
                    at(h)
                )));
            }
        }
    }
    Ok(metas)
}

/// The states of each old subtask, as runs of entries: one per entry of
/// split state when the parallelism changes (entries are assigned one by
/// one), one per block otherwise.
pub(super) fn repartition_input(
    old: &[OperatorStateHandle],
    old_parallelism: u32,
    per_entry: bool,
) -> Result<Vec<SubtaskStates<Run>>> {
    let mut input: Vec<SubtaskStates<Run>> = vec![BTreeMap::new(); old_parallelism as usize];
    let mut split_entries = 0u64;
    for (hi, h) in old.iter().enumerate() {
        for (bi, b) in h.states.iter().enumerate() {
            let run = |start, end| Run {
                handle: hi as u32,
                block: bi as u32,
                start,
                end,
            };
            let entries = if b.entries == 0 {
                Vec::new()
            } else if per_entry && b.mode == DistributionMode::Split {
                split_entries = split_entries.saturating_add(b.entries);
                if split_entries > MAX_RESTORE_SPLIT_ENTRIES {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "operator state {:?}: more than {MAX_RESTORE_SPLIT_ENTRIES} split-state entries to \
                             assign to a new parallelism",
                            b.name
                        ),
                    ));
                }
                (0..b.entries).map(|e| run(e, e + 1)).collect()
            } else {
                vec![run(0, b.entries)]
            };
            let subtask = input
                .get_mut(h.subtask_index as usize)
                .ok_or_else(|| Error::internal("subtask index out of range"))?;
            subtask.insert(b.name.clone(), SubtaskState { mode: b.mode, entries });
        }
    }
    Ok(input)
}

/// Merges consecutive runs of the same block.
pub(super) fn coalesce(entries: Vec<Run>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for r in entries {
        match out.last_mut() {
            Some(last) if last.handle == r.handle && last.block == r.block && last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// A block's entries, as slices of the bytes read.
pub(super) enum Decoded {
    List(Vec<Bytes>),
    Map(Vec<(Bytes, Bytes)>),
}

pub(super) type DecodedBlocks = BTreeMap<(u32, u32), Decoded>;

/// Reads and decodes the blocks the runs reference: one ranged read per handle.
pub(super) async fn read_blocks(
    old: &[OperatorStateHandle],
    assigned: &[(String, DistributionMode, Vec<Run>)],
    reader: &dyn StateReader,
) -> Result<DecodedBlocks> {
    let mut wanted: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for r in assigned.iter().flat_map(|(_, _, runs)| runs) {
        wanted.entry(r.handle).or_default().insert(r.block);
    }
    let reads = wanted.into_iter().map(|(hi, blocks)| async move {
        let h = old
            .get(hi as usize)
            .ok_or_else(|| Error::internal("handle index out of range"))?;
        let blocks: Vec<(u32, &OperatorStateBlock)> = blocks
            .into_iter()
            .map(|bi| {
                h.states
                    .get(bi as usize)
                    .map(|b| (bi, b))
                    .ok_or_else(|| Error::internal("block index out of range"))
            })
            .collect::<Result<_>>()?;
        let ranges: Vec<Range<u64>> = blocks.iter().map(|(_, b)| b.range()).collect();
        let parts = reader
            .read_ranges(&h.stream, &ranges)
            .await
            .map_err(|e| e.context(format!("restoring {}", h.describe())))?;
        if parts.len() != ranges.len() {
            return Err(Error::corrupted(format!(
                "{}: {} byte ranges read as {}",
                h.describe(),
                ranges.len(),
                parts.len()
            )));
        }
        let mut out = Vec::with_capacity(blocks.len());
        for ((bi, b), data) in blocks.into_iter().zip(parts) {
            let decoded = decode_block(b, &data)
                .map_err(|e| e.context(format!("operator state {:?} in {}", b.name, h.describe())))?;
            out.push(((hi, bi), decoded));
        }
        Ok::<_, Error>(out)
    });
    let read: Vec<Vec<((u32, u32), Decoded)>> = futures::stream::iter(reads)
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// Checks a block's length, checksum and entry count, and slices its entries.
pub(super) fn decode_block(b: &OperatorStateBlock, data: &Bytes) -> Result<Decoded> {
    if data.len() as u64 != b.length {
        return Err(Error::corrupted(format!(
            "block of {} bytes read as {} bytes",
            b.length,
            data.len()
        )));
    }
    let actual = crc32c(data);
    if actual != b.crc32c {
        return Err(Error::corrupted(format!(
            "block checksum mismatch (stored {:#010x}, computed {actual:#010x})",
            b.crc32c
        )));
    }
    let mut r = Reader::new(data);
    let mut next = |what: &str| -> Result<Bytes> {
        let s = r.bytes(what)?;
        let end = r.position();
        Ok(data.slice(end - s.len()..end))
    };
    // The entry count was checked against the block length.
    let n = usize::try_from(b.entries).map_err(|_| Error::corrupted("entry count overflows"))?;
    let decoded = match b.mode {
        DistributionMode::Split | DistributionMode::Union => {
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                list.push(next("list element")?);
            }
            Decoded::List(list)
        }
        DistributionMode::Broadcast => {
            let mut map = Vec::with_capacity(n);
            for _ in 0..n {
                let k = next("broadcast key")?;
                let v = next("broadcast value")?;
                map.push((k, v));
            }
            Decoded::Map(map)
        }
    };
    if !r.is_empty() {
        return Err(Error::corrupted(format!(
            "{} bytes follow the {n} entries the block should hold",
            r.remaining()
        )));
    }
    Ok(decoded)
}

/// Builds a restored state's data from the runs it was assigned.
pub(super) fn assemble(
    name: &str,
    mode: DistributionMode,
    runs: &[Run],
    old: &[OperatorStateHandle],
    decoded: &DecodedBlocks,
) -> Result<Data> {
    let missing = || Error::internal(format!("operator state {name:?}: an assigned block was not read"));
    let range = |r: &Run| r.start as usize..r.end as usize;
    match mode {
        DistributionMode::Split | DistributionMode::Union => {
            let mut list = Vec::new();
            for r in runs {
                let Some(Decoded::List(entries)) = decoded.get(&(r.handle, r.block)) else {
                    return Err(missing());
                };
                list.extend_from_slice(entries.get(range(r)).ok_or_else(missing)?);
            }
            Ok(Data::List(Arc::new(list)))
        }
        DistributionMode::Broadcast => {
            let mut map = BTreeMap::new();
            for r in runs {
                let Some(Decoded::Map(entries)) = decoded.get(&(r.handle, r.block)) else {
                    return Err(missing());
                };
                for (k, v) in entries.get(range(r)).ok_or_else(missing)? {
                    if map.insert(k.to_vec(), v.to_vec()).is_some() {
                        let h = old.get(r.handle as usize).map_or_else(String::new, |h| h.describe());
                        return Err(Error::corrupted(format!(
                            "broadcast state {name:?} in {h} holds a key twice"
                        )));
                    }
                }
            }
            Ok(Data::Map(Arc::new(map)))
        }
    }
}

impl OperatorStateStore {
    /// Restores the operator state of subtask `subtask_index` of
    /// `parallelism` from the handles `old` of an operator that ran at
    /// `old_parallelism` (at most one handle per old subtask; subtasks
    /// without one, or with an [empty](OperatorStateHandle::is_empty) one,
    /// had no operator state).
    ///
    /// Entries are assigned as Flink assigns them ([`repartition`]): at
    /// unchanged parallelism each subtask gets its own split state back;
    /// union state gives every subtask every entry; broadcast state gives
    /// subtask `i` the copy of the `(i % n)`-th of the `n` old subtasks that
    /// reported it, so every subtask gets one even when some old subtasks
    /// lack it (with all reporting, at unchanged parallelism, each subtask
    /// gets its own back). Only the blocks this subtask is given are read,
    /// and each is checked against its checksum and entry count. States are
    /// typed when registered again, which checks their mode and serializers.
    ///
    /// Changing the parallelism references each split-state entry on its
    /// own while assigning; more than [`MAX_RESTORE_SPLIT_ENTRIES`] are
    /// refused (`LimitExceeded`).
    pub async fn restore(
        subtask_index: u32,
        parallelism: u32,
        old: &[OperatorStateHandle],
        old_parallelism: u32,
        reader: &dyn StateReader,
    ) -> Result<Self> {
        let mut store = Self::new(subtask_index, parallelism)?;
        if old_parallelism == 0 || old_parallelism > MAX_PARALLELISM_UPPER_BOUND {
            return Err(Error::invalid(format!(
                "old parallelism {old_parallelism} is outside 1..={MAX_PARALLELISM_UPPER_BOUND}"
            )));
        }
        let metas = check_restore(old, old_parallelism)?;
        let input = repartition_input(old, old_parallelism, old_parallelism != parallelism)?;
        let mine = repartition(&input, parallelism)
            .map_err(|e| Error::corrupted(e.message().to_string()))?
            .into_iter()
            .nth(subtask_index as usize)
            .ok_or_else(|| Error::internal("no assignment for this subtask"))?;
        drop(input);
        let mine: Vec<(String, DistributionMode, Vec<Run>)> = mine
            .into_iter()
            .map(|(name, s)| (name, s.mode, coalesce(s.entries)))
            .collect();
        let decoded = read_blocks(old, &mine, reader).await?;
        for (name, mode, runs) in mine {
            let Some(&(hi, bi)) = metas.get(name.as_str()) else {
                return Err(Error::internal(format!(
                    "operator state {name:?} was assigned but not found"
                )));
            };
            let first = &old[hi].states[bi];
            let data = assemble(&name, mode, &runs, old, &decoded)?;
            let meta = Arc::new(Meta {
                name: Arc::from(name.as_str()),
                mode,
                value: first.value_serializer.clone(),
                key: first.key_serializer.clone(),
            });
            store.by_name.insert(Arc::clone(&meta.name), store.slots.len());
            store.slots.push(Slot {
                meta,
                registered: false,
                data,
            });
        }
        Ok(store)
    }
}
