//! Keyed state contracts: value, list, map, reducing and aggregating state,
//! namespaces and their merging, key listing, entry counts and serializer
//! checks.

use flowstate_api::*;
use serde::{Deserialize, Serialize};

use crate::{full_config, BackendFactory, Ctx};

fn backend<F: BackendFactory>(ctx: &Ctx<F>) -> F::Backend<u64> {
    ctx.backend.build(full_config::<u64>()).unwrap()
}

/// Value: absent reads as none, or as a fresh copy of the descriptor's default.
pub async fn value_absent_reads_none_or_default<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let plain = b.register(ValueStateDescriptor::<String>::new("plain")).unwrap();
    let with_default = b
        .register(ValueStateDescriptor::<Vec<u32>>::new("defaulted").with_default(vec![1, 2]))
        .unwrap();
    b.set_current_key(&1).unwrap();
    assert_eq!(b.value(&plain).unwrap(), None);
    let mut d = b.value(&with_default).unwrap().unwrap();
    assert_eq!(d, vec![1, 2]);
    d.push(3); // mutating the copy must not change the default
    assert_eq!(b.value(&with_default).unwrap(), Some(vec![1, 2]));
    assert_eq!(
        b.entry_count(&with_default).unwrap(),
        0,
        "reading a default stores nothing"
    );
}

/// Value: update then get; clear; keys are independent.
pub async fn value_update_get_clear<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let s = b.register(ValueStateDescriptor::<String>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&s, "one".to_string()).unwrap();
    b.set_current_key(&2).unwrap();
    assert_eq!(b.value(&s).unwrap(), None);
    b.update(&s, "two".to_string()).unwrap();
    b.update(&s, "two!".to_string()).unwrap();
    b.set_current_key(&1).unwrap();
    assert_eq!(b.value(&s).unwrap().as_deref(), Some("one"));
    b.clear(&s).unwrap();
    assert_eq!(b.value(&s).unwrap(), None);
    b.set_current_key(&2).unwrap();
    assert_eq!(b.value(&s).unwrap().as_deref(), Some("two!"));
}

/// Several value states under one key are independent.
pub async fn value_states_are_independent<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let a = b.register(ValueStateDescriptor::<u64>::new("a")).unwrap();
    let c = b.register(ValueStateDescriptor::<u64>::new("c")).unwrap();
    b.set_current_key(&9).unwrap();
    b.update(&a, 1).unwrap();
    b.update(&c, 2).unwrap();
    b.clear(&a).unwrap();
    assert_eq!(b.value(&a).unwrap(), None);
    assert_eq!(b.value(&c).unwrap(), Some(2));
    // Registering the same descriptor again gives the same state.
    let c2 = b.register(ValueStateDescriptor::<u64>::new("c")).unwrap();
    assert_eq!(b.value(&c2).unwrap(), Some(2));
}

/// List: absent reads empty; add, add_all, update, get, clear.
pub async fn list_add_get_update_clear<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let l = b.register(ListStateDescriptor::<String>::new("l")).unwrap();
    b.set_current_key(&1).unwrap();
    assert!(b.list(&l).unwrap().is_empty());
    b.append(&l, "a".to_string()).unwrap();
    b.append_all(&l, ["b".to_string(), "c".to_string()]).unwrap();
    assert_eq!(b.list(&l).unwrap(), ["a", "b", "c"]);
    b.update_list(&l, ["x".to_string()]).unwrap();
    assert_eq!(b.list(&l).unwrap(), ["x"]);
    b.set_current_key(&2).unwrap();
    assert!(b.list(&l).unwrap().is_empty());
    b.set_current_key(&1).unwrap();
    b.clear(&l).unwrap();
    assert!(b.list(&l).unwrap().is_empty());
    assert_eq!(b.entry_count(&l).unwrap(), 0);
}

/// List: update with an empty list clears; add_all of nothing is a no-op.
pub async fn list_update_empty_clears_and_add_all_empty_is_noop<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let l = b.register(ListStateDescriptor::<u32>::new("l")).unwrap();
    b.set_current_key(&1).unwrap();
    b.append_all(&l, Vec::<u32>::new()).unwrap();
    assert_eq!(
        b.entry_count(&l).unwrap(),
        0,
        "add_all of nothing must not create an entry"
    );
    b.append_all(&l, [1u32, 2]).unwrap();
    b.append_all(&l, Vec::<u32>::new()).unwrap();
    assert_eq!(b.list(&l).unwrap(), [1, 2]);
    b.update_list(&l, Vec::<u32>::new()).unwrap();
    assert!(b.list(&l).unwrap().is_empty());
    assert_eq!(b.entry_count(&l).unwrap(), 0);
}

/// Map: get, put, put_all, remove, contains, is_empty, keys, values, entries.
pub async fn map_operations<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let m = b.register(MapStateDescriptor::<String, u64>::new("m")).unwrap();
    b.set_current_key(&1).unwrap();
    assert!(b.map_is_empty(&m).unwrap());
    assert_eq!(b.map_get(&m, &"a".to_string()).unwrap(), None);
    b.map_put(&m, "a".to_string(), 1).unwrap();
    b.map_put_all(&m, [("b".to_string(), 2u64), ("c".to_string(), 3)])
        .unwrap();
    b.map_put(&m, "a".to_string(), 10).unwrap();
    assert_eq!(b.map_get(&m, &"a".to_string()).unwrap(), Some(10));
    assert!(b.map_contains(&m, &"b".to_string()).unwrap());
    assert!(!b.map_contains(&m, &"z".to_string()).unwrap());
    assert!(!b.map_is_empty(&m).unwrap());
    b.map_remove(&m, &"b".to_string()).unwrap();
    let mut keys = b.map_keys(&m).unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "c"]);
    let mut values = b.map_values(&m).unwrap();
    values.sort();
    assert_eq!(values, [3, 10]);
    let mut entries = b.map_entries(&m).unwrap();
    entries.sort();
    assert_eq!(entries, [("a".to_string(), 10), ("c".to_string(), 3)]);
    b.set_current_key(&2).unwrap();
    assert!(b.map_is_empty(&m).unwrap());
    b.set_current_key(&1).unwrap();
    b.clear(&m).unwrap();
    assert!(b.map_is_empty(&m).unwrap());
    assert_eq!(b.entry_count(&m).unwrap(), 0);
}

/// Map: removing during iteration writes through.
pub async fn map_remove_during_iteration_writes_through<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let m = b.register(MapStateDescriptor::<u32, u32>::new("m")).unwrap();
    b.set_current_key(&1).unwrap();
    b.map_put_all(&m, (0u32..10).map(|i| (i, i * i))).unwrap();
    let mut seen = 0;
    b.map_retain(&m, |k, v| {
        seen += 1;
        assert_eq!(*v, k * k);
        k % 2 == 0
    })
    .unwrap();
    assert_eq!(seen, 10);
    let mut keys = b.map_keys(&m).unwrap();
    keys.sort();
    assert_eq!(keys, [0, 2, 4, 6, 8]);
    b.map_retain(&m, |_, _| false).unwrap();
    assert!(b.map_is_empty(&m).unwrap());
    assert_eq!(
        b.entry_count(&m).unwrap(),
        0,
        "a map emptied by iteration leaves no entry"
    );
}

/// Map: an empty or absent map iterates nothing.
pub async fn map_empty_iterates_nothing<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let m = b.register(MapStateDescriptor::<u32, u32>::new("m")).unwrap();
    b.set_current_key(&1).unwrap();
    assert!(b.map_entries(&m).unwrap().is_empty());
    b.map_put(&m, 1u32, 1u32).unwrap();
    b.map_remove(&m, &1).unwrap();
    assert!(b.map_entries(&m).unwrap().is_empty());
    assert!(b.map_keys(&m).unwrap().is_empty());
    assert!(b.map_values(&m).unwrap().is_empty());
}

/// Reducing: add folds with the user function; empty reads as none.
pub async fn reducing_folds<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let r = b
        .register(ReducingStateDescriptor::<u64>::new("sum", |a, b| a + b))
        .unwrap();
    b.set_current_key(&1).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), None);
    for v in [1u64, 2, 3, 4] {
        b.reduce(&r, v).unwrap();
    }
    assert_eq!(b.reduced(&r).unwrap(), Some(10));
    b.set_current_key(&2).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), None);
    b.set_current_key(&1).unwrap();
    b.clear(&r).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), None);
}

/// Averages with an accumulator mutated in place.
struct MutableAverage;
impl AggregateFunction<u64, (u64, u64), f64> for MutableAverage {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: u64, acc: &mut (u64, u64)) {
        acc.0 += value;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// Collects strings with an accumulator replaced by a new value on every add.
struct ImmutableConcat;
impl AggregateFunction<String, String, usize> for ImmutableConcat {
    fn create_accumulator(&self) -> String {
        String::new()
    }
    fn add(&self, value: String, acc: &mut String) {
        *acc = format!("{acc}{value}");
    }
    fn get_result(&self, acc: &String) -> usize {
        acc.len()
    }
    fn merge(&self, a: String, b: String) -> String {
        a + &b
    }
}

/// Aggregating: mutable and immutable accumulators both work; empty reads as none.
pub async fn aggregating_mutable_and_immutable_accumulators<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let avg = b
        .register(AggregatingStateDescriptor::new("avg", MutableAverage))
        .unwrap();
    let cat = b
        .register(AggregatingStateDescriptor::new("cat", ImmutableConcat))
        .unwrap();
    b.set_current_key(&1).unwrap();
    assert_eq!(b.aggregated(&avg).unwrap(), None);
    assert_eq!(b.aggregated(&cat).unwrap(), None);
    for v in [2u64, 4, 9] {
        b.aggregate(&avg, v).unwrap();
    }
    for s in ["ab", "cde"] {
        b.aggregate(&cat, s.to_string()).unwrap();
    }
    assert_eq!(b.aggregated(&avg).unwrap(), Some(5.0));
    assert_eq!(b.aggregated(&cat).unwrap(), Some(5));
}

/// Namespaces: the same key in two namespaces is two entries.
pub async fn namespaces_are_separate<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").in_namespace::<u32>())
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.set_namespace(&v, &10).unwrap();
    b.update(&v, 100).unwrap();
    b.set_namespace(&v, &20).unwrap();
    assert_eq!(b.value(&v).unwrap(), None);
    b.update(&v, 200).unwrap();
    b.set_namespace(&v, &10).unwrap();
    assert_eq!(b.value(&v).unwrap(), Some(100));
    assert_eq!(b.entry_count(&v).unwrap(), 2);
    b.clear(&v).unwrap();
    b.set_namespace(&v, &20).unwrap();
    assert_eq!(b.value(&v).unwrap(), Some(200));
}

/// A window namespace, as merging windows use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    /// Start, inclusive.
    pub start: u64,
    /// End, exclusive.
    pub end: u64,
}

const W1: Window = Window { start: 0, end: 10 };
const W2: Window = Window { start: 5, end: 15 };
const W3: Window = Window { start: 12, end: 20 };
const TARGET: Window = Window { start: 0, end: 20 };

/// Merging list state appends the sources to the target and clears them.
pub async fn merge_namespaces_list<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let l = b
        .register(ListStateDescriptor::<u32>::new("l").in_namespace::<Window>())
        .unwrap();
    b.set_current_key(&1).unwrap();
    for (w, v) in [(W1, 1u32), (W2, 2), (W3, 3), (TARGET, 0)] {
        b.set_namespace(&l, &w).unwrap();
        b.append(&l, v).unwrap();
    }
    b.merge_namespaces(&l, &TARGET, &[W1, W2, W3]).unwrap();
    let mut merged = b.list(&l).unwrap();
    merged.sort();
    assert_eq!(merged, [0, 1, 2, 3]);
    for w in [W1, W2, W3] {
        b.set_namespace(&l, &w).unwrap();
        assert!(b.list(&l).unwrap().is_empty(), "source {w:?} not cleared");
    }
    assert_eq!(b.entry_count(&l).unwrap(), 1);
}

/// Merging reducing state folds the sources into the target and clears them.
pub async fn merge_namespaces_reducing<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let r = b
        .register(ReducingStateDescriptor::<u64>::new("r", |a, b| a + b).in_namespace::<Window>())
        .unwrap();
    b.set_current_key(&1).unwrap();
    for (w, v) in [(W1, 1u64), (W2, 20), (W3, 300)] {
        b.set_namespace(&r, &w).unwrap();
        b.reduce(&r, v).unwrap();
    }
    // The target starts empty here; the sources alone make it.
    b.merge_namespaces(&r, &TARGET, &[W1, W2, W3]).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), Some(321));
    b.set_namespace(&r, &W2).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), None);
    // Merging into a target that has a value folds it in too; empty sources change nothing.
    b.set_namespace(&r, &W1).unwrap();
    b.reduce(&r, 4000).unwrap();
    b.merge_namespaces(&r, &TARGET, &[W1, W3]).unwrap();
    assert_eq!(b.reduced(&r).unwrap(), Some(4321));
    assert_eq!(b.entry_count(&r).unwrap(), 1);
}

/// Merging aggregating state merges the accumulators.
pub async fn merge_namespaces_aggregating<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let a = b
        .register(AggregatingStateDescriptor::new("a", MutableAverage).in_namespace::<Window>())
        .unwrap();
    b.set_current_key(&1).unwrap();
    for (w, v) in [(W1, 1u64), (W2, 2), (W3, 3), (TARGET, 6)] {
        b.set_namespace(&a, &w).unwrap();
        b.aggregate(&a, v).unwrap();
    }
    b.merge_namespaces(&a, &TARGET, &[W1, W2, W3]).unwrap();
    assert_eq!(b.aggregated(&a).unwrap(), Some(3.0));
    b.set_namespace(&a, &W3).unwrap();
    assert_eq!(b.aggregated(&a).unwrap(), None);
}

/// Key listing: keys of a state in a namespace, and (key, namespace) pairs.
pub async fn keys_in_namespace_and_pairs<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let v = b
        .register(ValueStateDescriptor::<u64>::new("v").in_namespace::<String>())
        .unwrap();
    let other = b.register(ValueStateDescriptor::<u64>::new("other")).unwrap();
    for k in 0u64..50 {
        b.set_current_key(&k).unwrap();
        b.set_namespace(&v, &"even".to_string()).unwrap();
        if k % 2 == 0 {
            b.update(&v, k).unwrap();
        }
        b.set_namespace(&v, &"all".to_string()).unwrap();
        b.update(&v, k).unwrap();
        if k < 5 {
            b.update(&other, k).unwrap();
        }
    }
    let mut even = b.keys(&v, &"even".to_string()).unwrap();
    even.sort();
    assert_eq!(even, (0u64..50).step_by(2).collect::<Vec<_>>());
    assert_eq!(b.keys(&v, &"none".to_string()).unwrap(), Vec::<u64>::new());
    let mut pairs = b.keys_and_namespaces(&v).unwrap();
    pairs.sort();
    assert_eq!(pairs.len(), 75);
    assert!(pairs.contains(&(4, "even".to_string())));
    assert!(!pairs.contains(&(5, "even".to_string())));
    let mut others = b.keys(&other, &VoidNamespace).unwrap();
    others.sort();
    assert_eq!(others, [0, 1, 2, 3, 4]);
}

/// Applying a function to all keys, including clearing state inside it.
pub async fn apply_to_all_keys_may_clear<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for k in 0u64..100 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k * 2).unwrap();
    }
    let mut visited = Vec::new();
    b.apply_to_all_keys(&v, &VoidNamespace, |b, k| {
        assert_eq!(b.value(&v)?, Some(k * 2), "the visited key must be current");
        visited.push(*k);
        if k % 3 == 0 {
            b.clear(&v)?;
        }
        Ok(())
    })
    .unwrap();
    visited.sort();
    assert_eq!(visited, (0u64..100).collect::<Vec<_>>());
    assert_eq!(b.entry_count(&v).unwrap(), 66);
    b.set_current_key(&3).unwrap();
    assert_eq!(b.value(&v).unwrap(), None);
    b.set_current_key(&4).unwrap();
    assert_eq!(b.value(&v).unwrap(), Some(8));
}

/// Entry counts are exact per state.
pub async fn entry_count_is_exact<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let m = b.register(MapStateDescriptor::<u64, u64>::new("m")).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    for k in 0u64..1000 {
        b.set_current_key(&k).unwrap();
        b.update(&v, k).unwrap();
        b.update(&v, k + 1).unwrap();
        if k < 10 {
            b.map_put_all(&m, [(1u64, 1u64), (2, 2)]).unwrap();
            b.append_all(&l, [1u64, 2, 3]).unwrap();
        }
    }
    for k in 0u64..100 {
        b.set_current_key(&k).unwrap();
        b.clear(&v).unwrap();
    }
    assert_eq!(b.entry_count(&v).unwrap(), 900);
    assert_eq!(b.entry_count(&m).unwrap(), 10);
    assert_eq!(b.entry_count(&l).unwrap(), 10);
}

/// Restoring with a different value serializer (type or version) fails
/// clearly at registration, never with garbage values.
pub async fn value_serializer_mismatch_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("value-serializer"));
    let mut b = backend(&ctx);
    let v = b
        .register(ValueStateDescriptor::with_serializer(
            "v",
            std::sync::Arc::new(Bincode::<u64>::named("count", 1)),
        ))
        .unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 7).unwrap();
    let pointer = crate::checkpoint(&mut b, &storage, 1).await;
    let restore = || crate::restore_from(&ctx, &storage, full_config::<u64>(), &pointer);

    let mut r = restore().await.unwrap();
    let err = r.register(ValueStateDescriptor::<String>::new("v")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    assert!(err.to_string().contains("\"v\""), "error must name the state: {err}");

    let mut r = restore().await.unwrap();
    let err = r
        .register(ValueStateDescriptor::with_serializer(
            "v",
            std::sync::Arc::new(Bincode::<u64>::named("count", 2)),
        ))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");

    let mut r = restore().await.unwrap();
    let err = r.register(ListStateDescriptor::<u64>::new("v")).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Incompatible,
        "a value state restored as a list: {err}"
    );

    let mut r = restore().await.unwrap();
    let v = r
        .register(ValueStateDescriptor::with_serializer(
            "v",
            std::sync::Arc::new(Bincode::<u64>::named("count", 1)),
        ))
        .unwrap();
    r.set_current_key(&1).unwrap();
    assert_eq!(r.value(&v).unwrap(), Some(7));
}

/// Restoring with a different key serializer fails at restore.
pub async fn key_serializer_mismatch_is_refused_at_restore<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = ctx.storage.storage(&crate::job_id("key-serializer"));
    let mut b = backend(&ctx);
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    b.update(&v, 7).unwrap();
    let pointer = crate::checkpoint(&mut b, &storage, 1).await;
    let err = crate::restore_from(&ctx, &storage, full_config::<String>(), &pointer)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    assert!(err.to_string().contains("key serializer"), "{err}");
}

/// A handle registered with one backend is refused by another.
pub async fn handle_of_another_backend_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let mut a = backend(&ctx);
    let mut b = backend(&ctx);
    let va = a.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let _vb = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    b.set_current_key(&1).unwrap();
    let err = b.update(&va, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

/// State access before a key is set is refused.
pub async fn access_without_key_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let err = b.value(&v).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

/// A key whose key group another operator owns is refused.
pub async fn key_outside_range_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = ctx.backend.build(crate::operator_config::<u64>(4, 0)).unwrap();
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let foreign = (0u64..).find(|k| crate::operator_for_key(k, 4) != 0).unwrap();
    let err = b.set_current_key(&foreign).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(b.value(&v).is_err(), "a refused key must not stay current");
}

/// Using a state through a handle of another kind (a value operation on a
/// list state, …) is the caller's misuse: `Invalid`, naming the state and
/// both kinds the same way, in every backend.
pub async fn wrong_state_kind_is_invalid<F: BackendFactory>(ctx: Ctx<F>) {
    let mut b = backend(&ctx);
    let value = b.register(ValueStateDescriptor::<u64>::new("the-value")).unwrap();
    let list = b.register(ListStateDescriptor::<u64>::new("the-list")).unwrap();
    let map = b.register(MapStateDescriptor::<u64, u64>::new("the-map")).unwrap();
    // Handles of the wrong kind for each registered state.
    let list_as_value = ValueStateDescriptor::<u64>::new("the-list").into_handle(list.slot());
    let map_as_value = ValueStateDescriptor::<u64>::new("the-map").into_handle(map.slot());
    let value_as_list = ListStateDescriptor::<u64>::new("the-value").into_handle(value.slot());
    let value_as_map = MapStateDescriptor::<u64, u64>::new("the-value").into_handle(value.slot());
    let list_as_map = MapStateDescriptor::<u64, u64>::new("the-list").into_handle(list.slot());
    b.set_current_key(&1).unwrap();
    let errors = [
        (
            b.value(&list_as_value).map(drop),
            r#"state "the-list" is a list state and cannot be used as value state"#,
        ),
        (
            b.update(&map_as_value, 1),
            r#"state "the-map" is a map state and cannot be used as value state"#,
        ),
        (
            b.append(&value_as_list, 1),
            r#"state "the-value" is a value state and cannot be used as list state"#,
        ),
        (
            b.map_get(&value_as_map, &1).map(drop),
            r#"state "the-value" is a value state and cannot be used as map state"#,
        ),
        (
            b.map_get(&list_as_map, &1).map(drop),
            r#"state "the-list" is a list state and cannot be used as map state"#,
        ),
    ];
    for (result, want) in errors {
        let err = result.expect_err(want);
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(err.message().contains(want), "the same message in every backend: {err}");
    }
    // The refused operations wrote nothing.
    assert_eq!(b.entry_count(&value).unwrap(), 0);
    assert_eq!(b.entry_count(&map).unwrap(), 0);
}
