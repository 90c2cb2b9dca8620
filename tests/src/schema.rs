//! Schema evolution: state written with version 1 of a type restores with
//! version 2 (a field added with a default) when version 2's serializer
//! migrates from version 1, on every backend, from a canonical savepoint
//! and from a checkpoint (incremental where the backend has them), at
//! another parallelism; snapshots taken after the migration are written in
//! version 2. A change no serializer migrates stays `Incompatible`.

use std::sync::Arc;
use std::time::Duration;

use flowstate_api::serializer::Versioned;
use flowstate_api::*;
use serde::{Deserialize, Serialize};

use crate::{operator_config, operator_for_key, restore_from, BackendFactory, Ctx};

/// Version 1 of the state's type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    name: String,
    visits: u64,
}

/// Version 2: a field added, defaulting to `false` for migrated values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    name: String,
    visits: u64,
    premium: bool,
}

const KEYS: u64 = 60;

fn v1() -> SharedSerializer<UserV1> {
    Arc::new(Bincode::<UserV1>::named("user", 1))
}

fn v2() -> SharedSerializer<UserV2> {
    Versioned::new(Bincode::<UserV2>::named("user", 2))
        .migrates_from(Bincode::<UserV1>::named("user", 1), |u: UserV1| UserV2 {
            name: u.name,
            visits: u.visits,
            premium: false,
        })
        .shared()
}

fn user(k: u64, i: u64) -> UserV1 {
    UserV1 {
        name: format!("user-{k}-{i}-{}", "x".repeat((k % 7) as usize)),
        visits: k * 10 + i,
    }
}

fn upgraded(u: UserV1) -> UserV2 {
    UserV2 {
        name: u.name,
        visits: u.visits,
        premium: false,
    }
}

/// A long TTL: values carry timestamps, which the migration must keep.
fn ttl() -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_secs(24 * 3600))
}

/// The value, list and map states, with the serializer `S` of each version.
struct States<T> {
    profile: ValueState<T>,
    history: ListState<T>,
    friends: MapState<u64, T>,
}

fn register<B: KeyedStateBackend<Key = u64>, T: 'static>(b: &mut B, s: SharedSerializer<T>) -> Result<States<T>> {
    Ok(States {
        profile: b.register(ValueStateDescriptor::with_serializer("profile", Arc::clone(&s)))?,
        history: b.register(ListStateDescriptor::with_serializer("history", Arc::clone(&s)).with_ttl(ttl()))?,
        friends: b.register(MapStateDescriptor::with_serializers(
            "friends",
            default_serializer::<u64>(),
            s,
        ))?,
    })
}

/// Writes version-1 state for every key.
fn write_v1<B: KeyedStateBackend<Key = u64>>(b: &mut B) {
    let s = register(b, v1()).unwrap();
    for k in 0..KEYS {
        b.set_current_key(&k).unwrap();
        b.update(&s.profile, user(k, 0)).unwrap();
        b.append_all(&s.history, [user(k, 1), user(k, 2)]).unwrap();
        b.map_put(&s.friends, k + 1, user(k, 3)).unwrap();
        b.map_put(&s.friends, k + 2, user(k, 4)).unwrap();
    }
}

/// Checks key `k` reads its version-1 state upgraded to version 2.
fn check_v2<B: KeyedStateBackend<Key = u64>>(b: &mut B, s: &States<UserV2>, k: u64) {
    b.set_current_key(&k).unwrap();
    assert_eq!(b.value(&s.profile).unwrap(), Some(upgraded(user(k, 0))), "key {k}");
    assert_eq!(
        b.list(&s.history).unwrap(),
        [upgraded(user(k, 1)), upgraded(user(k, 2))],
        "key {k}"
    );
    assert_eq!(
        b.map_entries(&s.friends).unwrap(),
        [(k + 1, upgraded(user(k, 3))), (k + 2, upgraded(user(k, 4)))],
        "key {k}"
    );
}

/// Writes version-1 state, snapshots it with `options`, restores it at
/// parallelism 2 with version 2 (migrated), updates some keys in version 2,
/// savepoints both subtasks and restores that at parallelism 1: everything
/// reads back, and the new savepoint records version 2 (version 1 is now
/// refused).
async fn migrates_and_rescales<F: BackendFactory>(ctx: Ctx<F>, options: SnapshotOptions) {
    let storage = ctx.storage.storage(&crate::job_id("schema"));
    let mut b = ctx.backend.build(crate::full_config::<u64>()).unwrap();
    write_v1(&mut b);
    let (_, pointer) = crate::snapshot_and_complete(&mut b, &storage, 1, options).await;
    if options.kind == CheckpointKind::Checkpoint {
        b.notify_checkpoint_complete(1).unwrap();
    }
    drop(b);

    let mut handles = Vec::new();
    for index in 0..2 {
        let mut r = restore_from(&ctx, &storage, operator_config::<u64>(2, index), &pointer)
            .await
            .unwrap();
        let s = register(&mut r, v2()).unwrap();
        let owned: Vec<u64> = (0..KEYS).filter(|k| operator_for_key(k, 2) == index).collect();
        assert!(!owned.is_empty());
        for &k in &owned {
            check_v2(&mut r, &s, k);
        }
        // Registering again with version 2 is a no-op; version 1 is refused now.
        register(&mut r, v2()).unwrap();
        let Err(e) = register(&mut r, v1()) else {
            panic!("version 1 after the migration");
        };
        assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
        // New writes in version 2, beside the migrated ones.
        let k = owned[0];
        r.set_current_key(&k).unwrap();
        r.append(
            &s.history,
            UserV2 {
                name: "new".into(),
                visits: 1,
                premium: true,
            },
        )
        .unwrap();
        let result = crate::snapshot_into(&mut r, &storage, 2, SnapshotOptions::savepoint()).await;
        handles.push(result.handle);
    }
    let pointer = crate::complete(&storage, 2, CheckpointKind::Savepoint, 2, handles).await;

    let mut r = restore_from(&ctx, &storage, crate::full_config::<u64>(), &pointer)
        .await
        .unwrap();
    let Err(e) = register(&mut r, v1()) else {
        panic!("the savepoint records version 2");
    };
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    assert!(e.to_string().contains("user v2"), "{e}");
    let s = register(&mut r, v2()).unwrap();
    for k in 0..KEYS {
        r.set_current_key(&k).unwrap();
        let history = r.list(&s.history).unwrap();
        let first_owned = (0..KEYS).find(|j| operator_for_key(j, 2) == operator_for_key(&k, 2));
        if first_owned == Some(k) {
            assert_eq!(history.len(), 3, "key {k}");
            assert!(history[2].premium, "key {k}");
        } else {
            check_v2(&mut r, &s, k);
        }
    }
}

/// A backend restored from a savepoint of version-1 state, nothing
/// registered yet.
async fn restored_v1<F: BackendFactory>(ctx: &Ctx<F>, job: &str) -> F::Backend<u64> {
    let storage = ctx.storage.storage(&crate::job_id(job));
    let mut b = ctx.backend.build(crate::full_config::<u64>()).unwrap();
    write_v1(&mut b);
    let (_, pointer) = crate::snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    drop(b);
    restore_from(ctx, &storage, crate::full_config::<u64>(), &pointer)
        .await
        .unwrap()
}

/// From a canonical savepoint, at parallelism 1 → 2 → 1.
pub async fn schema_migrates_from_a_savepoint<F: BackendFactory>(ctx: Ctx<F>) {
    migrates_and_rescales(ctx, SnapshotOptions::savepoint()).await;
}

/// From a checkpoint (RocksDB: incremental, native files), at parallelism
/// 1 → 2 → 1.
pub async fn schema_migrates_from_a_checkpoint<F: BackendFactory>(ctx: Ctx<F>) {
    migrates_and_rescales(ctx, SnapshotOptions::checkpoint()).await;
}

/// A new version whose serializer does not read the old one is refused
/// with `Incompatible`, naming the state and both versions; the state is
/// left as it was, so the old version still reads it.
pub async fn schema_change_without_migration_is_incompatible<F: BackendFactory>(ctx: Ctx<F>) {
    let mut r = restored_v1(&ctx, "schema-refused").await;
    let plain: SharedSerializer<UserV2> = Arc::new(Bincode::<UserV2>::named("user", 2));
    let Err(e) = r.register(ValueStateDescriptor::with_serializer("profile", plain)) else {
        panic!("no migration from version 1");
    };
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    let message = e.to_string();
    for part in ["profile", "user v1", "user v2"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    let s = register(&mut r, v1()).unwrap();
    r.set_current_key(&3).unwrap();
    assert_eq!(r.value(&s.profile).unwrap(), Some(user(3, 0)));
}

/// A migration that fails on a value (the old bytes do not decode) fails
/// the registration, naming the state and both versions, and leaves
/// nothing half-migrated: every value is checked before any is rewritten,
/// so version 1 still reads them all.
pub async fn failed_migration_names_both_versions<F: BackendFactory>(ctx: Ctx<F>) {
    let mut r = restored_v1(&ctx, "schema-failed").await;
    // Claims to read version 1, but as another type: decoding fails.
    let wrong = Versioned::new(Bincode::<UserV2>::named("user", 2))
        .migrates_from(Bincode::<(u8, u8)>::named("user", 1), |(a, b): (u8, u8)| UserV2 {
            name: String::new(),
            visits: u64::from(a) + u64::from(b),
            premium: false,
        })
        .shared();
    let Err(e) = r.register(ValueStateDescriptor::with_serializer("profile", wrong)) else {
        panic!("a failing migration");
    };
    let message = e.to_string();
    for part in ["profile", "user v1", "user v2"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // Every value was checked before any was rewritten: version 1 reads
    // them all.
    let s = register(&mut r, v1()).unwrap();
    for k in 0..KEYS {
        r.set_current_key(&k).unwrap();
        assert_eq!(r.value(&s.profile).unwrap(), Some(user(k, 0)), "key {k}");
    }
}
