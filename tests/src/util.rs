//! Helpers shared by the contracts.

use std::sync::Arc;

use flowstate_api::checkpoint::{OperatorState, ResolvedCheckpoint};
use flowstate_api::ttl::SharedClock;
use flowstate_api::{
    key_group_for_key_bytes, CheckpointKind, CheckpointMetadata, CheckpointStorage, KeyGroupRange, KeyedBackendConfig,
    KeyedStateBackend, KeyedStateHandle, SnapshotOptions, SnapshotResult,
};

use crate::{BackendFactory, Ctx, TestKey};

/// The max parallelism the suite uses.
pub const MAX_PARALLELISM: u32 = 128;
/// The operator id the suite writes state under.
pub const OPERATOR: &str = "conformance-operator";

/// A config owning every key group of [`MAX_PARALLELISM`].
pub fn full_config<K: TestKey>() -> KeyedBackendConfig<K> {
    KeyedBackendConfig::new(KeyGroupRange::all(MAX_PARALLELISM).unwrap(), MAX_PARALLELISM)
}

/// The config of operator `index` of `parallelism`.
pub fn operator_config<K: TestKey>(parallelism: u32, index: u32) -> KeyedBackendConfig<K> {
    KeyedBackendConfig::new(
        KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, index).unwrap(),
        MAX_PARALLELISM,
    )
}

/// A full-range config with `clock`.
pub fn clocked_config<K: TestKey>(clock: SharedClock) -> KeyedBackendConfig<K> {
    full_config::<K>().with_clock(clock)
}

/// The operator index that owns `key` (bincode-serialized).
pub fn operator_for_key<K: TestKey>(key: &K, parallelism: u32) -> u32 {
    let mut bytes = Vec::new();
    flowstate_api::Serializer::serialize(&flowstate_api::Bincode::<K>::new(), key, &mut bytes).unwrap();
    let kg = key_group_for_key_bytes(&bytes, MAX_PARALLELISM);
    flowstate_api::operator_index_for_key_group(MAX_PARALLELISM, parallelism, kg)
}

/// Runs both phases of a checkpoint of `backend` into `storage`.
pub async fn snapshot_into<B: KeyedStateBackend>(
    backend: &mut B,
    storage: &CheckpointStorage,
    checkpoint_id: u64,
    options: SnapshotOptions,
) -> SnapshotResult {
    let location = match options.kind {
        CheckpointKind::Checkpoint => storage.init_checkpoint(checkpoint_id).await.unwrap(),
        CheckpointKind::Savepoint => storage.init_savepoint(checkpoint_id, None).await.unwrap(),
    };
    backend
        .snapshot(checkpoint_id, location, options)
        .unwrap()
        .await
        .unwrap()
}

/// Snapshots `backend` and completes the checkpoint or savepoint in the same
/// location; returns the result and the pointer.
pub async fn snapshot_and_complete<B: KeyedStateBackend>(
    backend: &mut B,
    storage: &CheckpointStorage,
    checkpoint_id: u64,
    options: SnapshotOptions,
) -> (SnapshotResult, String) {
    let location = match options.kind {
        CheckpointKind::Checkpoint => storage.init_checkpoint(checkpoint_id).await.unwrap(),
        CheckpointKind::Savepoint => storage.init_savepoint(checkpoint_id, None).await.unwrap(),
    };
    let result = backend
        .snapshot(checkpoint_id, location.clone(), options)
        .unwrap()
        .await
        .unwrap();
    let metadata = CheckpointMetadata::new(checkpoint_id, options.kind, 0).with_operator(OperatorState::new(
        OPERATOR,
        1,
        MAX_PARALLELISM,
        vec![result.handle.clone()],
    ));
    let pointer = location.write_metadata(&metadata).await.unwrap();
    (result, pointer)
}

/// Writes the metadata of a checkpoint holding `handles` and returns its pointer.
pub async fn complete(
    storage: &CheckpointStorage,
    checkpoint_id: u64,
    kind: CheckpointKind,
    parallelism: u32,
    handles: Vec<KeyedStateHandle>,
) -> String {
    let location = match kind {
        CheckpointKind::Checkpoint => storage.init_checkpoint(checkpoint_id).await.unwrap(),
        CheckpointKind::Savepoint => storage.init_savepoint(checkpoint_id, None).await.unwrap(),
    };
    let metadata = CheckpointMetadata::new(checkpoint_id, kind, 0).with_operator(OperatorState::new(
        OPERATOR,
        parallelism,
        MAX_PARALLELISM,
        handles,
    ));
    location.write_metadata(&metadata).await.unwrap()
}

/// Checkpoints one backend and completes the checkpoint; returns the pointer.
pub async fn checkpoint<B: KeyedStateBackend>(backend: &mut B, storage: &CheckpointStorage, id: u64) -> String {
    let result = snapshot_into(backend, storage, id, SnapshotOptions::checkpoint()).await;
    let pointer = complete(storage, id, CheckpointKind::Checkpoint, 1, vec![result.handle]).await;
    backend.notify_checkpoint_complete(id).unwrap();
    pointer
}

/// Restores a backend with `config` from the checkpoint at `pointer`.
pub async fn restore_from<F: BackendFactory, K: TestKey>(
    ctx: &Ctx<F>,
    storage: &CheckpointStorage,
    config: KeyedBackendConfig<K>,
    pointer: &str,
) -> flowstate_api::Result<F::Backend<K>> {
    let resolved = storage.resolve(pointer).await?;
    restore_resolved(ctx, &resolved, config).await
}

/// Restores a backend with `config` from a resolved checkpoint.
pub async fn restore_resolved<F: BackendFactory, K: TestKey>(
    ctx: &Ctx<F>,
    resolved: &ResolvedCheckpoint,
    config: KeyedBackendConfig<K>,
) -> flowstate_api::Result<F::Backend<K>> {
    let handles = resolved
        .metadata
        .operator(OPERATOR)
        .map(|o| o.keyed.clone())
        .unwrap_or_default();
    ctx.backend
        .restore(config, &handles, Arc::clone(&resolved.reader))
        .await
}

/// A fresh job id for one contract, so storages never share checkpoints by accident.
pub fn job_id(contract: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{contract}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// `len` bytes that do not compress, the same for the same `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits until `done` gives true, checking every 10 ms for at most 10 s,
/// and returns its last answer: for clean-up a destructor hands to another
/// thread (it cannot await), such as an unfinished file being removed.
pub async fn eventually<F: std::future::Future<Output = bool>>(mut done: impl FnMut() -> F) -> bool {
    for _ in 0..1000 {
        if done().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    done().await
}
