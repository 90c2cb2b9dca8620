//! Rescaling contracts: state written at one parallelism restores at
//! another, each key arriving at exactly the one backend that owns it.

use std::collections::HashSet;

use flowstate_api::checkpoint::{OperatorState, StateReader, StreamStateHandle};
use flowstate_api::*;

use crate::{complete, operator_config, operator_for_key, restore_from, snapshot_into, BackendFactory, Ctx};

const KEYS: u64 = 3000;

/// The value, list and map states these contracts write.
fn register_states<B: KeyedStateBackend>(b: &mut B) -> (ValueState<u64>, ListState<u64>, MapState<u8, u64>) {
    (
        b.register(ValueStateDescriptor::<u64>::new("v")).unwrap(),
        b.register(ListStateDescriptor::<u64>::new("l")).unwrap(),
        b.register(MapStateDescriptor::<u8, u64>::new("m")).unwrap(),
    )
}

async fn rescale<F: BackendFactory>(ctx: Ctx<F>, from: u32, to: u32) {
    let storage = ctx.storage.storage(&crate::job_id(&format!("rescale-{from}-{to}")));
    let mut handles = Vec::new();
    for index in 0..from {
        let mut b = ctx.backend.build(operator_config::<u64>(from, index)).unwrap();
        let (v, l, m) = register_states(&mut b);
        for k in (0..KEYS).filter(|k| operator_for_key(k, from) == index) {
            b.set_current_key(&k).unwrap();
            b.update(&v, k * 3).unwrap();
            b.append_all(&l, [k, k + 1]).unwrap();
            b.map_put(&m, (k % 7) as u8, k).unwrap();
        }
        handles.push(
            snapshot_into(&mut b, &storage, 1, SnapshotOptions::checkpoint())
                .await
                .handle,
        );
    }
    let pointer = complete(&storage, 1, CheckpointKind::Checkpoint, from, handles).await;
    let mut seen = HashSet::new();
    for index in 0..to {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(to, index), &pointer)
            .await
            .unwrap();
        let (v, l, m) = register_states(&mut r);
        let mine: Vec<u64> = (0..KEYS).filter(|k| operator_for_key(k, to) == index).collect();
        for &k in &mine {
            r.set_current_key(&k).unwrap();
            assert_eq!(
                r.value(&v).unwrap(),
                Some(k * 3),
                "{from}->{to}: key {k} on operator {index}"
            );
            assert_eq!(r.list(&l).unwrap(), [k, k + 1]);
            assert_eq!(r.map_entries(&m).unwrap(), [((k % 7) as u8, k)]);
        }
        for state in [
            r.entry_count(&v).unwrap(),
            r.entry_count(&l).unwrap(),
            r.entry_count(&m).unwrap(),
        ] {
            assert_eq!(
                state,
                mine.len() as u64,
                "{from}->{to}: operator {index} holds foreign keys"
            );
        }
        for k in r.keys(&v, &VoidNamespace).unwrap() {
            assert_eq!(
                operator_for_key(&k, to),
                index,
                "key {k} restored on the wrong operator"
            );
            assert!(seen.insert(k), "key {k} restored twice");
        }
    }
    assert_eq!(seen.len() as u64, KEYS, "keys lost in {from}->{to}");
}

/// 4 → 2 operators.
pub async fn rescale_4_to_2<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 4, 2).await
}
/// 2 → 4 operators.
pub async fn rescale_2_to_4<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 2, 4).await
}
/// 1 → 3 operators.
pub async fn rescale_1_to_3<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 1, 3).await
}
/// 3 → 1 operator.
pub async fn rescale_3_to_1<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 3, 1).await
}
/// 15 → 77 operators (uneven ranges).
pub async fn rescale_15_to_77<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 15, 77).await
}
/// 77 → 15 operators (uneven ranges).
pub async fn rescale_77_to_15<F: BackendFactory>(ctx: Ctx<F>) {
    rescale(ctx, 77, 15).await
}

/// 15 → 77 operators from the last of several checkpoints, each after
/// updates, deletes, list appends and map removals (a chain of deltas on a
/// backend with incremental checkpoints).
pub async fn rescale_15_to_77_after_changes<F: BackendFactory>(ctx: Ctx<F>) {
    rescale_after_changes(ctx, 15, 77).await
}

/// 77 → 15 operators from the last of several checkpoints with changes.
pub async fn rescale_77_to_15_after_changes<F: BackendFactory>(ctx: Ctx<F>) {
    rescale_after_changes(ctx, 77, 15).await
}

/// What one key holds: value, list, map entries.
type Held = (Option<u64>, Vec<u64>, Vec<(u8, u64)>);

async fn rescale_after_changes<F: BackendFactory>(ctx: Ctx<F>, from: u32, to: u32) {
    const ROUNDS: u64 = 4;
    let storage = ctx
        .storage
        .storage(&crate::job_id(&format!("rescale-changes-{from}-{to}")));
    let mut model: std::collections::BTreeMap<u64, Held> = std::collections::BTreeMap::new();
    let mut handles = Vec::new();
    for index in 0..from {
        let mut b = ctx.backend.build(operator_config::<u64>(from, index)).unwrap();
        let (v, l, m) = register_states(&mut b);
        let mine: Vec<u64> = (0..KEYS).filter(|k| operator_for_key(k, from) == index).collect();
        let mut last = None;
        for round in 0..=ROUNDS {
            for &k in &mine {
                b.set_current_key(&k).unwrap();
                let held = model.entry(k).or_default();
                if round == 0 || k % 4 == round % 4 {
                    b.update(&v, k * 3 + round).unwrap();
                    held.0 = Some(k * 3 + round);
                    b.append(&l, round).unwrap();
                    held.1.push(round);
                    let uk = ((k + round) % 7) as u8;
                    b.map_put(&m, uk, k + round).unwrap();
                    held.2.retain(|e| e.0 != uk);
                    held.2.push((uk, k + round));
                    held.2.sort_unstable();
                }
                if round > 0 && k % 9 == round {
                    b.clear(&v).unwrap();
                    held.0 = None;
                    let uk = (k % 7) as u8;
                    b.map_remove(&m, &uk).unwrap();
                    held.2.retain(|e| e.0 != uk);
                }
                if round > 0 && k % 11 == round {
                    b.clear(&l).unwrap();
                    held.1.clear();
                }
            }
            let result = snapshot_into(&mut b, &storage, round + 1, SnapshotOptions::checkpoint()).await;
            b.notify_checkpoint_complete(round + 1).unwrap();
            last = Some(result.handle);
        }
        handles.push(last.unwrap());
    }
    let pointer = complete(&storage, ROUNDS + 1, CheckpointKind::Checkpoint, from, handles).await;
    let mut seen = 0;
    for index in 0..to {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(to, index), &pointer)
            .await
            .unwrap();
        let (v, l, m) = register_states(&mut r);
        let mine: Vec<u64> = (0..KEYS).filter(|k| operator_for_key(k, to) == index).collect();
        let mut counts = [0u64; 3];
        for &k in &mine {
            r.set_current_key(&k).unwrap();
            let got: Held = (r.value(&v).unwrap(), r.list(&l).unwrap(), r.map_entries(&m).unwrap());
            let want = &model[&k];
            assert_eq!(&got, want, "{from}->{to}: key {k} on operator {index}");
            counts[0] += u64::from(want.0.is_some());
            counts[1] += u64::from(!want.1.is_empty());
            counts[2] += u64::from(!want.2.is_empty());
            seen += 1;
        }
        let held = [
            r.entry_count(&v).unwrap(),
            r.entry_count(&l).unwrap(),
            r.entry_count(&m).unwrap(),
        ];
        assert_eq!(
            held, counts,
            "{from}->{to}: operator {index} holds foreign or deleted keys"
        );
    }
    assert_eq!(seen, KEYS, "keys lost in {from}->{to}");
}

/// Counts the bytes a restore reads.
#[derive(Debug)]
struct CountingReader {
    inner: std::sync::Arc<dyn StateReader>,
    bytes: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl StateReader for CountingReader {
    async fn read(&self, handle: &StreamStateHandle) -> Result<bytes::Bytes> {
        let data = self.inner.read(handle).await?;
        self.bytes
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data)
    }

    async fn read_ranges(
        &self,
        handle: &StreamStateHandle,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        let parts = self.inner.read_ranges(handle, ranges).await?;
        let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(parts)
    }
}

/// Canonical snapshots (savepoints) of `from` subtasks restored by `to`:
/// each subtask reads only the header and the frames of the key groups it
/// owns, about `1 / to` of the snapshot, and gets exactly its keys. Returns
/// the snapshot's size and the bytes each subtask read.
async fn canonical_rescale_reads<F: BackendFactory>(ctx: &Ctx<F>, from: u32, to: u32) -> (u64, Vec<u64>) {
    let storage = ctx.storage.storage(&crate::job_id(&format!("ranged-{from}-{to}")));
    // One savepoint: every subtask writes into its directory.
    let location = storage.init_savepoint(1, None).await.unwrap();
    let mut handles = Vec::new();
    for index in 0..from {
        let mut b = ctx.backend.build(operator_config::<u64>(from, index)).unwrap();
        let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in (0..KEYS).filter(|k| operator_for_key(k, from) == index) {
            b.set_current_key(&k).unwrap();
            b.update(&v, vec![(k % 251) as u8; 1000]).unwrap();
        }
        let pending = b.snapshot(1, location.clone(), SnapshotOptions::savepoint()).unwrap();
        handles.push(pending.await.unwrap().handle);
    }
    let total: u64 = handles.iter().map(KeyedStateHandle::state_size).sum();
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Savepoint, 0).with_operator(OperatorState::new(
        crate::OPERATOR,
        from,
        crate::MAX_PARALLELISM,
        handles,
    ));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    let resolved = storage.resolve(&pointer).await.unwrap();
    let handles = resolved.metadata.operators[0].keyed.clone();
    let mut reads = Vec::new();
    for index in 0..to {
        let reader = std::sync::Arc::new(CountingReader {
            inner: std::sync::Arc::clone(&resolved.reader),
            bytes: Default::default(),
        });
        let mut r = ctx
            .backend
            .restore(operator_config::<u64>(to, index), &handles, reader.clone())
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        let mine: Vec<u64> = (0..KEYS).filter(|k| operator_for_key(k, to) == index).collect();
        for &k in &mine {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&v).unwrap(), Some(vec![(k % 251) as u8; 1000]), "key {k}");
        }
        assert_eq!(r.entry_count(&v).unwrap(), mine.len() as u64);
        reads.push(reader.bytes.load(std::sync::atomic::Ordering::Relaxed));
    }
    (total, reads)
}

/// A canonical rescale reads only the key groups each subtask owns: from
/// one snapshot to 15 subtasks, and from 77 snapshots to 15. On a storage
/// with files, no subtask reads more than 1/15 of the snapshot plus a
/// quarter and the headers.
pub async fn canonical_rescale_reads_only_owned_key_groups<F: BackendFactory>(ctx: Ctx<F>) {
    for from in [1, 77] {
        let (total, reads) = canonical_rescale_reads(&ctx, from, 15).await;
        let worst = reads.iter().copied().max().unwrap_or(0);
        eprintln!(
            "canonical rescale {from}->15 on {}: snapshot {total} bytes, per subtask {reads:?} (worst {:.3} of it)",
            ctx.storage.name(),
            worst as f64 / total as f64
        );
        if ctx.storage.capabilities().durable {
            let bound = total / 15 + total / 60 + 4096;
            assert!(
                worst <= bound,
                "{from}->15: a subtask read {worst} of {total} bytes (bound {bound})"
            );
        }
    }
}
