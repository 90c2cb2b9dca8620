//! For operators and tooling: a job's checkpoints from code. A heap
//! backend takes five checkpoints and a savepoint into a directory with
//! three checkpoints retained; then the program lists what is on disk,
//! reads each checkpoint's metadata, plants an orphaned file, and runs
//! garbage collection, first as a dry run. `flowstate checkpoints`,
//! `inspect` and `gc` do the same from the command line.

use std::sync::Arc;
use std::time::Duration;

use flowstate_api::checkpoint::{OperatorState, StateScope};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::*;
use flowstate_heap::HeapBackend;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("a temporary directory", e))?;
    let storage = Arc::new(
        flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job")?
            .with_savepoint_dir(dir.path().join("savepoints").display().to_string()),
    );
    let config = CheckpointStoreConfig::default().with_max_retained(3);
    let mut store = CheckpointStore::open(Arc::clone(&storage), config).await?;

    let mut backend = HeapBackend::new(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128)?, 128))?;
    let state = backend.register(ValueStateDescriptor::<Vec<u8>>::new("payload"))?;
    for id in 1..=6u64 {
        for k in 0..200 {
            backend.set_current_key(&k)?;
            backend.update(&state, vec![id as u8; 256])?;
        }
        let savepoint = id == 6;
        let (location, options, kind) = if savepoint {
            (
                store.begin_savepoint(id, None).await?,
                SnapshotOptions::savepoint(),
                CheckpointKind::Savepoint,
            )
        } else {
            (
                store.begin_checkpoint(id).await?,
                SnapshotOptions::checkpoint(),
                CheckpointKind::Checkpoint,
            )
        };
        let result = backend.snapshot(id, Arc::clone(&location), options)?.await?;
        let metadata =
            CheckpointMetadata::new(id, kind, 0).with_operator(OperatorState::new("op", 1, 128, vec![result.handle]));
        store.complete(&location, metadata).await?;
        backend.notify_checkpoint_complete(id)?;
    }

    // What is on disk: retention kept the newest three checkpoints; the
    // savepoint lives in its own directory and retention never touches it.
    let ids = storage.checkpoint_dirs().await?;
    println!("checkpoint directories: {ids:?}");
    if ids != [3, 4, 5] {
        return Err(Error::internal(format!("retention kept {ids:?}, not [3, 4, 5]")));
    }
    for id in ids {
        let c = storage.resolve(&storage.checkpoint_pointer(id)).await?;
        let files: usize = c
            .metadata
            .operators
            .iter()
            .flat_map(|o| &o.keyed)
            .map(|h| h.file_paths().count())
            .sum();
        println!(
            "  {}: {:?}, {} operator(s), {files} state file(s)",
            c.pointer,
            c.metadata.kind,
            c.metadata.operators.len()
        );
    }
    let latest = storage.latest_checkpoint().await?.map(|c| c.metadata.checkpoint_id);
    println!("latest complete checkpoint: {latest:?}");

    // An orphan: a file of ours that no retained checkpoint references
    // (what a crashed upload leaves).
    let orphan = storage.init_checkpoint(7).await?;
    let mut stream = orphan.create_output_stream(StateScope::Shared).await?;
    stream.write(&vec![0; 64 << 10]).await?;
    let handle = stream.close().await?;
    println!("planted orphan: {handle:?}");

    let dry = store.collect_garbage(&GcOptions::new(Duration::ZERO)).await?;
    println!("gc (dry run): {} orphan(s), {} bytes", dry.orphans.len(), dry.bytes);
    let done = store.collect_garbage(&GcOptions::new(Duration::ZERO).delete()).await?;
    let again = store.collect_garbage(&GcOptions::new(Duration::ZERO)).await?;
    println!(
        "gc: deleted {} file(s); orphans left: {}",
        done.orphans.len(),
        again.orphans.len()
    );
    if dry.orphans.is_empty() || !again.orphans.is_empty() {
        return Err(Error::internal("garbage collection did not find and remove the orphan"));
    }
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
