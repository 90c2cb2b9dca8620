//! Compatibility contracts: what a restore must refuse before it builds any
//! state (another max parallelism, duplicate or overlapping handles, state
//! names no backend can hold), which state names every backend accepts, and
//! that snapshots and restores run on any executor, not only Tokio's.

use std::sync::Arc;

use bytes::Bytes;
use flowstate_api::backend::MAX_STATE_NAME_LEN;
use flowstate_api::checkpoint::{
    IncrementalStateHandle, InlineReader, KeyGroupsStateHandle, OperatorState, StateReader, StreamStateHandle,
};
use flowstate_api::format::canonical::SnapshotHeader;
use flowstate_api::*;

use crate::{
    checkpoint, complete, full_config, restore_from, restore_resolved, snapshot_and_complete, snapshot_into,
    BackendFactory, Ctx, TestKey, MAX_PARALLELISM, OPERATOR,
};

fn storage<F: BackendFactory>(ctx: &Ctx<F>, contract: &str) -> Arc<CheckpointStorage> {
    ctx.storage.storage(&crate::job_id(contract))
}

/// The key group of `key` at [`MAX_PARALLELISM`].
fn key_group(key: u64) -> u32 {
    let mut bytes = Vec::new();
    Serializer::serialize(&Bincode::<u64>::new(), &key, &mut bytes).unwrap();
    key_group_for_key_bytes(&bytes, MAX_PARALLELISM)
}

/// The first `n` keys whose key groups lie in `range`.
fn keys_in(range: KeyGroupRange, n: usize) -> Vec<u64> {
    (0u64..).filter(|k| range.contains(key_group(*k))).take(n).collect()
}

/// A config owning `range` at [`MAX_PARALLELISM`].
fn range_config<K: TestKey>(start: u32, end: u32) -> KeyedBackendConfig<K> {
    KeyedBackendConfig::new(KeyGroupRange::new(start, end).unwrap(), MAX_PARALLELISM)
}

/// Registers value state `v` and list state `l` and writes `k * 10` and
/// `[1, 2, 3]` for every key.
fn fill<B: KeyedStateBackend<Key = u64>>(b: &mut B, keys: &[u64]) {
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    for &k in keys {
        b.set_current_key(&k).unwrap();
        b.update(&v, k * 10).unwrap();
        b.append_all(&l, [1, 2, 3]).unwrap();
    }
}

/// Checks what [`fill`] wrote, under value state `value_name`.
fn check_filled<B: KeyedStateBackend<Key = u64>>(b: &mut B, keys: &[u64], value_name: &str, what: &str) {
    let v = b.register(ValueStateDescriptor::<u64>::new(value_name)).unwrap();
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    for &k in keys {
        b.set_current_key(&k).unwrap();
        assert_eq!(b.value(&v).unwrap(), Some(k * 10), "{what}: key {k}");
        assert_eq!(b.list(&l).unwrap(), [1, 2, 3], "{what}: key {k}");
    }
    assert_eq!(b.entry_count(&v).unwrap(), keys.len() as u64, "{what}");
}

/// A snapshot taken at max parallelism 128 (a checkpoint in the backend's
/// own, possibly incremental, format, and a canonical savepoint) is refused
/// by a restore at max parallelism 256 or 64 as `Incompatible`, with both
/// values in the message: a key's key group depends on the max parallelism,
/// so the state cannot be remapped. It restores at 128.
pub async fn restore_at_other_max_parallelism_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "other-max-parallelism");
    let keys: Vec<u64> = (0..100).collect();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill(&mut b, &keys);
    let checkpoint_pointer = checkpoint(&mut b, &storage, 1).await;
    let (_, savepoint_pointer) = snapshot_and_complete(&mut b, &storage, 2, SnapshotOptions::savepoint()).await;
    // Every case is tried; the failures are reported together.
    let mut failures = Vec::new();
    for (what, pointer) in [("checkpoint", &checkpoint_pointer), ("savepoint", &savepoint_pointer)] {
        // At the max parallelism it was taken at, it restores (the refusals below are not vacuous).
        let mut r = restore_from(&ctx, &storage, full_config::<u64>(), pointer)
            .await
            .unwrap();
        check_filled(&mut r, &keys, "v", what);
        drop(r);
        for other in [256u32, 64] {
            let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(other).unwrap(), other);
            let case = format!("{what} taken at max parallelism {MAX_PARALLELISM}, restored at {other}");
            match restore_from(&ctx, &storage, config, pointer).await {
                Ok(_) => failures.push(format!("{case}: restored")),
                Err(err) if err.kind() != ErrorKind::Incompatible => {
                    failures.push(format!("{case}: {:?}, not Incompatible: {err}", err.kind()))
                }
                Err(err) => {
                    let message = err.to_string();
                    let missing: Vec<u32> = [MAX_PARALLELISM, other]
                        .into_iter()
                        .filter(|n| !message.contains(&n.to_string()))
                        .collect();
                    if !missing.is_empty() {
                        failures.push(format!("{case}: the error does not name {missing:?}: {message}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Reads list `l` of key `key`, for failure messages.
fn list_of<B: KeyedStateBackend<Key = u64>>(b: &mut B, key: u64) -> Vec<u64> {
    let l = b.register(ListStateDescriptor::<u64>::new("l")).unwrap();
    b.set_current_key(&key).unwrap();
    b.list(&l).unwrap()
}

/// Restores `handles` with a full-range config and expects `Corrupted`.
async fn expect_corrupted<F: BackendFactory>(
    ctx: &Ctx<F>,
    handles: &[KeyedStateHandle],
    reader: &Arc<dyn StateReader>,
    key: u64,
    what: &str,
) {
    match ctx
        .backend
        .restore(full_config::<u64>(), handles, Arc::clone(reader))
        .await
    {
        Ok(mut r) => panic!("{what}: restored (list of key {key} reads {:?})", list_of(&mut r, key)),
        Err(err) => assert_eq!(err.kind(), ErrorKind::Corrupted, "{what}: {err}"),
    }
}

/// The same handle given twice to a restore is refused as `Corrupted`
/// (rather than restoring lists doubled, `[1, 2, 3, 1, 2, 3]`), for a
/// checkpoint and a savepoint; so are two handles of different backends
/// whose key-group ranges overlap (0..64 and 32..128), and checkpoint
/// metadata listing a handle twice.
pub async fn duplicate_handle_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "duplicate-handle");
    let keys: Vec<u64> = (0..50).collect();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill(&mut b, &keys);
    let mut id = 0;
    for options in [SnapshotOptions::checkpoint(), SnapshotOptions::savepoint()] {
        id += 1;
        let what = format!("{:?}", options.kind);
        let (result, pointer) = snapshot_and_complete(&mut b, &storage, id, options).await;
        if options.kind == CheckpointKind::Checkpoint {
            b.notify_checkpoint_complete(id).unwrap();
        }
        let handle = result.handle;
        let reader = storage.resolve(&pointer).await.unwrap().reader;
        // Once, it restores.
        let mut r = ctx
            .backend
            .restore(full_config::<u64>(), std::slice::from_ref(&handle), Arc::clone(&reader))
            .await
            .unwrap();
        check_filled(&mut r, &keys, "v", &what);
        drop(r);
        expect_corrupted(
            &ctx,
            &[handle.clone(), handle.clone()],
            &reader,
            0,
            &format!("{what} handle given twice"),
        )
        .await;
        // Metadata listing the handle twice does not decode.
        let metadata = CheckpointMetadata::new(id, options.kind, 0).with_operator(OperatorState::new(
            OPERATOR,
            2,
            MAX_PARALLELISM,
            vec![handle.clone(), handle],
        ));
        let err = CheckpointMetadata::decode(&Bytes::from(metadata.encode()), "dup/_metadata").unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Corrupted,
            "{what} metadata with a handle twice: {err}"
        );
        assert!(
            err.to_string().contains("overlap"),
            "{what} metadata with a handle twice: {err}"
        );
    }

    // Two backends whose ranges overlap in key groups 32..64.
    let (low, high) = (range_config::<u64>(0, 64), range_config::<u64>(32, 128));
    let low_keys = keys_in(low.key_group_range, 20);
    let high_keys = keys_in(high.key_group_range, 20);
    let overlapping_key = *low_keys.iter().find(|k| key_group(**k) >= 32).unwrap();
    let mut a = ctx.backend.build(low).unwrap();
    fill(&mut a, &low_keys);
    let mut c = ctx.backend.build(high).unwrap();
    fill(&mut c, &high_keys);
    for options in [SnapshotOptions::checkpoint(), SnapshotOptions::savepoint()] {
        let what = format!("{:?}s of ranges 0..64 and 32..128", options.kind);
        let ra = snapshot_into(&mut a, &storage, id + 1, options).await;
        let rc = snapshot_into(&mut c, &storage, id + 2, options).await;
        // Completed separately: metadata holding both would not be written.
        let pointer = complete(&storage, id + 1, options.kind, 1, vec![ra.handle.clone()]).await;
        let other = complete(&storage, id + 2, options.kind, 1, vec![rc.handle.clone()]).await;
        if options.kind == CheckpointKind::Checkpoint {
            a.notify_checkpoint_complete(id + 1).unwrap();
            c.notify_checkpoint_complete(id + 2).unwrap();
        }
        let reader = storage.resolve(&pointer).await.unwrap().reader;
        // Each restores on its own.
        for (p, keys, range) in [(&pointer, &low_keys, (0, 64)), (&other, &high_keys, (32, 128))] {
            let mut r = restore_from(&ctx, &storage, range_config::<u64>(range.0, range.1), p)
                .await
                .unwrap();
            check_filled(&mut r, keys, "v", &what);
        }
        expect_corrupted(&ctx, &[ra.handle, rc.handle], &reader, overlapping_key, &what).await;
        id += 2;
    }
}

/// Names that are empty, hold a control character (NUL, newline) or are
/// longer than 255 bytes are refused by `register` as `Invalid`, for every
/// state kind; a 255-byte name and unicode names are accepted and
/// round-trip through a checkpoint and a savepoint.
pub async fn invalid_state_names_are_refused_at_registration<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "state-names");
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    let too_long = "a".repeat(MAX_STATE_NAME_LEN + 1);
    let too_long_unicode = "ä".repeat(128); // 256 bytes, 128 characters
    for name in [
        "",
        "a\0b",
        "line\nbreak",
        "tab\there",
        too_long.as_str(),
        too_long_unicode.as_str(),
    ] {
        let shown = format!("{name:?} ({} bytes)", name.len());
        let err = b.register(ValueStateDescriptor::<u64>::new(name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "value state {shown}: {err}");
        let err = b.register(ListStateDescriptor::<u64>::new(name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "list state {shown}: {err}");
        let err = b.register(MapStateDescriptor::<u64, u64>::new(name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "map state {shown}: {err}");
    }
    assert!(
        b.states().is_empty(),
        "refused names left states behind: {:?}",
        b.states()
    );

    let longest = "b".repeat(MAX_STATE_NAME_LEN);
    let longest_unicode = format!("{}x", "ä".repeat(127)); // 255 bytes
    let good = [
        longest.as_str(),
        longest_unicode.as_str(),
        "zählung-✓",
        "状態",
        "with space/slash:colon",
    ];
    for name in good {
        assert!(name.len() <= MAX_STATE_NAME_LEN);
        let v = b
            .register(ValueStateDescriptor::<u64>::new(name))
            .unwrap_or_else(|e| panic!("{name:?} ({} bytes) refused: {e}", name.len()));
        let m = b
            .register(MapStateDescriptor::<u64, u64>::new(&format!(
                "m{}",
                &name[..name.len().min(200)]
            )))
            .unwrap();
        for k in 0..10u64 {
            b.set_current_key(&k).unwrap();
            b.update(&v, k + name.len() as u64).unwrap();
            b.map_put(&m, k, k).unwrap();
        }
    }
    let mut id = 0;
    for options in [SnapshotOptions::checkpoint(), SnapshotOptions::savepoint()] {
        id += 1;
        let (_, pointer) = snapshot_and_complete(&mut b, &storage, id, options).await;
        if options.kind == CheckpointKind::Checkpoint {
            b.notify_checkpoint_complete(id).unwrap();
        }
        let mut r = restore_from(&ctx, &storage, full_config::<u64>(), &pointer)
            .await
            .unwrap();
        let restored: Vec<String> = r.states().into_iter().map(|s| s.name).collect();
        for name in good {
            assert!(
                restored.iter().any(|n| n == name),
                "{:?}: {name:?} missing from the restored states {restored:?}",
                options.kind
            );
            let v = r.register(ValueStateDescriptor::<u64>::new(name)).unwrap();
            let m = r
                .register(MapStateDescriptor::<u64, u64>::new(&format!(
                    "m{}",
                    &name[..name.len().min(200)]
                )))
                .unwrap();
            for k in 0..10u64 {
                r.set_current_key(&k).unwrap();
                assert_eq!(
                    r.value(&v).unwrap(),
                    Some(k + name.len() as u64),
                    "{:?}: {name:?}",
                    options.kind
                );
                assert_eq!(r.map_get(&m, &k).unwrap(), Some(k), "{:?}: {name:?}", options.kind);
            }
        }
    }
}

/// `data` (the stream of canonical snapshot `handle`) with state `from`
/// renamed `to` in its header, re-checksummed, as an inline handle: the
/// key-group frames are moved, their checksums untouched.
fn rename_in_canonical(handle: &KeyGroupsStateHandle, data: &Bytes, from: &str, to: &str) -> KeyedStateHandle {
    let (mut header, len) = SnapshotHeader::decode(data).unwrap();
    header.states.iter_mut().find(|s| s.name == from).unwrap().name = to.to_string();
    let mut bytes = header.encode();
    let new_len = bytes.len() as u64;
    bytes.extend_from_slice(&data[len..]);
    let offsets = handle.offsets.iter().map(|o| o - len as u64 + new_len).collect();
    KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
        range: handle.range,
        offsets,
        stream: StreamStateHandle::Inline(Bytes::from(bytes)),
    })
}

/// `handle` with state `from` renamed `to` in the header its backend
/// metadata stream holds, re-checksummed, inline.
fn rename_in_incremental(handle: &IncrementalStateHandle, meta: &Bytes, from: &str, to: &str) -> KeyedStateHandle {
    let (mut header, len) = SnapshotHeader::decode(meta).unwrap();
    header.states.iter_mut().find(|s| s.name == from).unwrap().name = to.to_string();
    let mut bytes = header.encode();
    bytes.extend_from_slice(&meta[len..]);
    KeyedStateHandle::Incremental(IncrementalStateHandle {
        meta: StreamStateHandle::Inline(Bytes::from(bytes)),
        ..handle.clone()
    })
}

/// Names no backend may hold, which a checksummed snapshot header can still carry.
fn hostile_names() -> Vec<String> {
    vec![
        "x\0y".into(),
        String::new(),
        "line\nbreak".into(),
        "z".repeat(MAX_STATE_NAME_LEN + 1),
    ]
}

/// A snapshot with a valid checksum whose header names a state `x\0y`
/// (or another name no backend may register) is refused at restore as
/// `Corrupted`, without a panic: a real canonical savepoint with its header
/// rewritten, and, for a backend whose checkpoints are incremental, its
/// checkpoint with the header of its metadata stream rewritten.
pub async fn hostile_state_name_in_snapshot_is_refused<F: BackendFactory>(ctx: Ctx<F>) {
    let storage = storage(&ctx, "hostile-name");
    let keys: Vec<u64> = (0..30).collect();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill(&mut b, &keys);

    // The canonical format.
    let (result, pointer) = snapshot_and_complete(&mut b, &storage, 1, SnapshotOptions::savepoint()).await;
    let KeyedStateHandle::KeyGroups(handle) = result.handle else {
        panic!("a savepoint must be a canonical snapshot")
    };
    let reader = storage.resolve(&pointer).await.unwrap().reader;
    let data = reader.read(&handle.stream).await.unwrap();
    let inline: Arc<dyn StateReader> = Arc::new(InlineReader);
    // Rewritten to another valid name, it restores under that name (the rewrite is sound).
    let renamed = rename_in_canonical(&handle, &data, "v", "renamed-v");
    let mut r = ctx
        .backend
        .restore(full_config::<u64>(), &[renamed], Arc::clone(&inline))
        .await
        .unwrap();
    check_filled(&mut r, &keys, "renamed-v", "savepoint with a renamed state");
    drop(r);
    for name in hostile_names() {
        let hostile = rename_in_canonical(&handle, &data, "v", &name);
        expect_corrupted(
            &ctx,
            &[hostile],
            &inline,
            0,
            &format!("savepoint naming a state {name:?}"),
        )
        .await;
    }

    // The backend's own checkpoint format, if it is not canonical.
    let result = snapshot_into(&mut b, &storage, 2, SnapshotOptions::checkpoint()).await;
    let pointer = complete(&storage, 2, CheckpointKind::Checkpoint, 1, vec![result.handle.clone()]).await;
    b.notify_checkpoint_complete(2).unwrap();
    let reader = storage.resolve(&pointer).await.unwrap().reader;
    let KeyedStateHandle::Incremental(handle) = result.handle else {
        assert!(
            !ctx.backend.capabilities().incremental_checkpoints,
            "an incremental backend took a canonical checkpoint"
        );
        return; // Canonical: covered above.
    };
    let meta = reader.read(&handle.meta).await.unwrap();
    let same = rename_in_incremental(&handle, &meta, "v", "v");
    let mut r = ctx
        .backend
        .restore(full_config::<u64>(), &[same], Arc::clone(&reader))
        .await
        .unwrap();
    check_filled(&mut r, &keys, "v", "checkpoint with its header re-encoded");
    drop(r);
    for name in hostile_names() {
        let hostile = rename_in_incremental(&handle, &meta, "v", &name);
        expect_corrupted(
            &ctx,
            &[hostile],
            &reader,
            0,
            &format!("incremental checkpoint naming a state {name:?}"),
        )
        .await;
    }
}

/// Checkpoints, completes, resolves and restores without Tokio: on an OS
/// thread of its own, under `futures::executor::block_on`.
async fn snapshot_and_restore_off_tokio<F: BackendFactory>(ctx: Ctx<F>) {
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "this part must run outside any Tokio runtime"
    );
    let storage = storage(&ctx, "any-executor");
    let keys: Vec<u64> = (0..200).collect();
    let mut b = ctx.backend.build(full_config::<u64>()).unwrap();
    fill(&mut b, &keys);

    // A checkpoint completed through its location.
    let location = storage.init_checkpoint(1).await.unwrap();
    let pending = b
        .snapshot(1, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap();
    let result = pending.await.unwrap();
    let metadata = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![result.handle],
    ));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    b.notify_checkpoint_complete(1).unwrap();
    let resolved = storage.resolve(&pointer).await.unwrap();
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    check_filled(&mut r, &keys, "v", "checkpoint 1");
    drop(r);

    // A second (for an incremental backend, incremental) checkpoint through the CheckpointStore.
    let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for &k in &keys {
        b.set_current_key(&k).unwrap();
        b.update(&v, k * 10 + 1).unwrap();
    }
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default())
        .await
        .unwrap();
    let location = store.begin_checkpoint(2).await.unwrap();
    let result = b
        .snapshot(2, Arc::clone(&location), SnapshotOptions::checkpoint())
        .unwrap()
        .await
        .unwrap();
    let metadata = CheckpointMetadata::new(2, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![result.handle],
    ));
    let completion = store.complete(&location, metadata).await.unwrap();
    b.notify_checkpoint_complete(2).unwrap();
    let resolved = store.restore(&completion.pointer, RestoreMode::Claim).await.unwrap();
    let mut r = restore_resolved(&ctx, &resolved, full_config::<u64>()).await.unwrap();
    let rv = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
    for &k in &keys {
        r.set_current_key(&k).unwrap();
        assert_eq!(r.value(&rv).unwrap(), Some(k * 10 + 1), "checkpoint 2: key {k}");
    }
    drop(r);

    // A compressed canonical savepoint, restored at another parallelism.
    let (_, pointer) =
        snapshot_and_complete(&mut b, &storage, 3, SnapshotOptions::savepoint().with_compression(3)).await;
    let mut total = 0;
    for index in 0..2 {
        let mut r = restore_from(&ctx, &storage, crate::operator_config::<u64>(2, index), &pointer)
            .await
            .unwrap();
        let rv = r.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        for k in keys.iter().copied().filter(|k| crate::operator_for_key(k, 2) == index) {
            r.set_current_key(&k).unwrap();
            assert_eq!(r.value(&rv).unwrap(), Some(k * 10 + 1), "savepoint 3: key {k}");
            total += 1;
        }
    }
    assert_eq!(total, keys.len());
}

/// The async phase of a snapshot, completing the checkpoint (through its
/// location and through a `CheckpointStore`), resolving it and restoring
/// from it all work under `futures::executor::block_on` on a thread with no
/// Tokio runtime: no "there is no reactor running" panic.
pub async fn async_phase_and_restore_run_on_any_executor<F: BackendFactory>(ctx: Ctx<F>) {
    let thread = std::thread::Builder::new()
        .name("no-tokio".into())
        .spawn(move || futures::executor::block_on(snapshot_and_restore_off_tokio(ctx)))
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
