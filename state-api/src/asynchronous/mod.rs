//! Asynchronous state access, as Flink 2.0's State V2 API (FLIP-424) and
//! asynchronous execution model (FLIP-425): many records have state
//! requests outstanding at once, so a backend whose state is remote hides
//! its latency, while records of one key still see each other's writes in
//! arrival order.
//!
//! - [`AsyncKeyedStateBackend`]: the byte-level contract, the twin of
//!   [`KeyedStateBackend`](crate::KeyedStateBackend) whose requests take
//!   `&self` and name their key and namespace ([`Target`], [`KeyRef`]) and
//!   return futures.
//! - [`SyncAsAsync`]: any synchronous backend (heap, RocksDB) behind that
//!   contract, with futures that complete when first polled.
//! - [`RecordCtx`]: one record's typed state access (value, list, map,
//!   reducing, aggregating, namespaces, timers), with the results and
//!   errors of [`KeyedStateBackendExt`](crate::KeyedStateBackendExt): both
//!   faces share their serialization and TTL rules.
//! - [`KeyOrderedExecutor`]: runs records on the engine's task, one at a
//!   time per key and concurrently across keys, with a bound on records in
//!   flight (back-pressure), drains at checkpoint barriers and watermarks,
//!   timers fired as records of their key, and a first failure that stops
//!   it.
//!
//! ```
//! use std::sync::Arc;
//! use flowstate_api::*;
//! use flowstate_api::checkpoint::CheckpointLocation;
//!
//! # async fn run<B: KeyedStateBackend<Key = String> + 'static>(
//! #     backend: B, input: Vec<(String, i64)>, location: Arc<CheckpointLocation>,
//! # ) -> Result<()> {
//! // A synchronous backend (heap, RocksDB) behind the asynchronous contract.
//! let backend = Arc::new(SyncAsAsync::new(backend));
//! let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
//! let windows = backend.register(TimerServiceDescriptor::event_time("windows"))?;
//! let (count, windows) = (&count, &windows);
//!
//! let mut executor = KeyOrderedExecutor::new(Arc::clone(&backend), 6000)?;
//! for (user, time) in input {
//!     executor
//!         .submit(&user, move |ctx| async move {
//!             let n = ctx.value(count).await?.unwrap_or(0);
//!             ctx.update(count, n + 1).await?;
//!             ctx.register_timer(windows, time - time % 60_000 + 60_000, &VoidNamespace).await
//!         })
//!         .await?; // resolves once admitted: the engine's back-pressure
//! }
//!
//! // Every earlier record, then every timer due at the watermark, finishes
//! // before this returns; then the engine emits the watermark.
//! executor
//!     .advance_watermark(windows, 120_000, |timer, ctx| async move {
//!         let n = ctx.value(count).await?;
//!         println!("{}: {n:?} events until {}", timer.key, timer.timestamp);
//!         ctx.clear(count).await
//!     })
//!     .await?;
//!
//! // A checkpoint barrier: drains, then takes the synchronous phase.
//! let pending = executor.snapshot(1, location, SnapshotOptions::checkpoint()).await?;
//! let result = pending.await?;
//! # let _ = result; Ok(()) }
//! ```

mod adapter;
mod backend;
mod executor;
mod record;

pub use adapter::SyncAsAsync;
pub use backend::{AsyncKeyedStateBackend, KeyRef, Target};
pub use executor::KeyOrderedExecutor;
pub use record::{AsyncMergeableState, RecordCtx};

#[cfg(test)]
mod tests;
