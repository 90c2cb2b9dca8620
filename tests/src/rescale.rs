//! Rescaling contracts: state written at one parallelism restores at
//! another, each key arriving at exactly the one backend that owns it.

use std::collections::HashSet;

use flowstate_api::*;

use crate::{complete, operator_config, operator_for_key, restore_from, snapshot_into, BackendFactory, Ctx};

const KEYS: u64 = 3000;

async fn rescale<F: BackendFactory>(ctx: Ctx<F>, from: u32, to: u32) {
    let storage = ctx.storage.storage(&crate::job_id(&format!("rescale-{from}-{to}")));
    let mut handles = Vec::new();
    for index in 0..from {
        let mut b = ctx.backend.create(operator_config::<u64>(from, index)).unwrap();
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
        let m = b.register(MapStateDescriptor::<u8, u64>::new("m")).unwrap();
        for k in (0..KEYS).filter(|k| operator_for_key(k, from) == index) {
            b.set_current_key(&k).unwrap();
            b.update(&v, k * 3).unwrap();
            b.append_all(&l, [k, k + 1]).unwrap();
            b.map_put(&m, (k % 7) as u8, k).unwrap();
        }
        handles.push(
            snapshot_into(&mut b, &*storage, 1, SnapshotOptions::checkpoint())
                .await
                .handle,
        );
    }
    let pointer = complete(&*storage, 1, CheckpointKind::Checkpoint, from, handles).await;
    let mut seen = HashSet::new();
    for index in 0..to {
        let mut r = restore_from(&ctx, &*storage, operator_config::<u64>(to, index), &pointer)
            .await
            .unwrap();
        let v = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        let l = r.register(ListStateDescriptor::<u64>::new("l")).unwrap();
        let m = r.register(MapStateDescriptor::<u8, u64>::new("m")).unwrap();
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
