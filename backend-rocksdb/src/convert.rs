//! Conversion of an incremental RocksDB checkpoint into a canonical
//! snapshot: what `flowstate savepoint convert` runs.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use flowstate_api::checkpoint::{CheckpointLocation, StateScope};
use flowstate_api::format::canonical::{write_canonical_snapshot, SnapshotHeader};
use flowstate_api::Result;

use crate::files::{blocking, DirGuard};
use crate::options::Resources;
use crate::snapshot::FullSource;

/// Rewrites the incremental checkpoint `handle` as a canonical snapshot
/// (the format every backend restores at any parallelism) in a new
/// exclusive stream of `location`: its files are read through `reader`
/// (checked as a restore checks them) into a temporary directory under
/// `options`' working directory, then read key group by key group. Nothing
/// is filtered: entries past their TTL are kept, as in the checkpoint.
pub async fn incremental_to_canonical(
    handle: &flowstate_api::checkpoint::IncrementalStateHandle,
    reader: &dyn flowstate_api::checkpoint::StateReader,
    location: &CheckpointLocation,
    options: &crate::RocksDbOptions,
) -> Result<flowstate_api::checkpoint::KeyGroupsStateHandle> {
    options.validate()?;
    let header = crate::restore::read_header(handle, reader).await?;
    let header = SnapshotHeader {
        compressed: false,
        ..header
    };
    let clock: flowstate_api::ttl::SharedClock = Arc::new(flowstate_api::ttl::SystemClock);
    let working_dir = options.working_dir.clone();
    let instance = blocking(move || crate::instance::InstanceDir::create(&working_dir)).await?;
    let dir = instance.temp_path("convert");
    let guard = DirGuard::new(dir.clone());
    let mut stats = crate::RestoreStats::default();
    crate::restore::materialize(handle, reader, options, &dir, &mut stats).await?;
    let resources = Arc::new(Resources::new(options, clock));
    let (open_dir, h) = (dir.clone(), header.clone());
    let id = handle.checkpoint_id;
    let source =
        blocking(move || FullSource::open(&open_dir, &h, &resources, Arc::new(AtomicBool::new(false)), id)).await?;
    let filter = flowstate_api::format::canonical::TtlFilter {
        ttl_millis: vec![None; header.states.len()],
        now: 0,
    };
    let stream = location.create_output_stream(StateScope::Exclusive).await?;
    let written = write_canonical_snapshot(&header, source, filter, stream, None)
        .await
        .map_err(|e| e.context(format!("converting checkpoint {id} of key groups {}", handle.range)))?;
    guard.remove().await;
    drop(instance);
    Ok(written.handle)
}
