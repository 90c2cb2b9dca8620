//! For engine authors: one keyed operator's loop on the RocksDB backend.
//! It counts events per user, takes an incremental checkpoint every 1,000
//! events into a directory through the checkpoint store, "crashes" after
//! 3,500 events, restores the latest completed checkpoint into a new
//! backend, replays the events after it, and checks the counts against a
//! run without the crash.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowstate_api::checkpoint::OperatorState;
use flowstate_api::*;
use flowstate_rocksdb::{RocksDbBackend, RocksDbOptions};

const MAX_PARALLELISM: u32 = 128;
const OPERATOR: &str = "count-per-user";
const EVENTS: u64 = 5_000;
const CHECKPOINT_EVERY: u64 = 1_000;
const CRASH_AFTER: u64 = 3_500;

/// The user of event `i`: a fixed, uneven stream.
fn user(i: u64) -> String {
    format!("user-{}", (i * 7919) % 101)
}

/// Runs events `from..to`, checkpointing every `CHECKPOINT_EVERY` events;
/// returns the id of the last checkpoint taken.
async fn run(
    backend: &mut RocksDbBackend<String>,
    count: &ValueState<u64>,
    store: &mut CheckpointStore,
    from: u64,
    to: u64,
) -> Result<()> {
    for i in from..to {
        backend.set_current_key(&user(i))?; // serialized and hashed once per record
        let n = backend.value(count)?.unwrap_or(0);
        backend.update(count, n + 1)?;
        if (i + 1) % CHECKPOINT_EVERY == 0 {
            // The checkpoint id is the number of events it covers: what a
            // replayable source would store as its offset.
            let id = i + 1;
            let location = store.begin_checkpoint(id).await?;
            let pending = backend.snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())?; // sync phase
            let result = pending.await?; // async phase: uploads only new SST files
            let operator = OperatorState::new(OPERATOR, 1, MAX_PARALLELISM, vec![result.handle]);
            store
                .complete(
                    &location,
                    CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(operator),
                )
                .await?;
            backend.notify_checkpoint_complete(id)?;
            println!(
                "checkpoint {id}: {} bytes written, {} in all",
                result.stats.bytes_written, result.stats.full_size
            );
        }
    }
    Ok(())
}

fn counts(backend: &mut RocksDbBackend<String>, count: &ValueState<u64>) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for u in 0..101 {
        let user = format!("user-{u}");
        backend.set_current_key(&user)?;
        if let Some(n) = backend.value(count)? {
            out.insert(user, n);
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let config = KeyedBackendConfig::<String>::new(KeyGroupRange::all(MAX_PARALLELISM)?, MAX_PARALLELISM);
    let options = RocksDbOptions::new(dir.path().join("rocksdb")).with_incremental(true);
    let storage = Arc::new(flowstate_fs::checkpoint_storage(
        dir.path().join("checkpoints"),
        "engine-loop",
    )?);

    // The first attempt, which crashes.
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default()).await?;
    let mut backend = RocksDbBackend::new(config.clone(), options.clone())?;
    let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
    run(&mut backend, &count, &mut store, 0, CRASH_AFTER).await?;
    drop(backend); // the crash: what was not checkpointed is lost
    println!("crash after event {CRASH_AFTER}");

    // Recovery: the latest completed checkpoint, and the source replayed from it.
    let mut store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default()).await?;
    let latest = storage
        .latest_checkpoint()
        .await?
        .ok_or_else(|| Error::not_found("no completed checkpoint to recover from"))?;
    let resolved = store.restore(&latest.pointer, RestoreMode::Claim).await?;
    let handles = resolved
        .metadata
        .operator(OPERATOR)
        .map(|o| o.keyed.clone())
        .unwrap_or_default();
    let mut backend = RocksDbBackend::restore(config.clone(), &handles, &*resolved.reader, options.clone()).await?;
    let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
    let offset = resolved.metadata.checkpoint_id;
    println!("restored checkpoint {offset}; replaying from event {offset}");
    run(&mut backend, &count, &mut store, offset, EVENTS).await?;
    let recovered = counts(&mut backend, &count)?;

    // The same events without a crash.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..EVENTS {
        *expected.entry(user(i)).or_default() += 1;
    }
    if recovered != expected {
        return Err(Error::internal(
            "the counts after recovery differ from a run without the crash",
        ));
    }
    println!(
        "exactly once: {} users, {EVENTS} events, counts equal a run without the crash",
        recovered.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// CI runs the example through the test suite, built with the
    /// workspace's features.
    #[test]
    fn the_example_runs() {
        super::main().unwrap();
    }
}
