//! How long the library's futures hold the thread that polls them: W2 runs
//! on a current-thread runtime, where a task ticking every millisecond is
//! delayed by exactly the time a snapshot's async phase or a restore spends
//! inside one poll (blocking I/O or CPU work left on the async path).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ticking task's period.
const TICK: Duration = Duration::from_millis(1);

/// Awaits `future` while a task on the same runtime ticks every
/// millisecond; returns its output and the worst delay of a tick beyond
/// the timer's resolution (one period).
pub(crate) async fn measured<T>(future: impl IntoFuture<Output = T>) -> (T, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let ticker = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        while !flag.load(Ordering::Acquire) {
            let asked = Instant::now();
            tokio::time::sleep(TICK).await;
            worst = worst.max(asked.elapsed().saturating_sub(TICK * 2));
        }
        worst
    });
    // Let the ticker start before the measured work does.
    tokio::task::yield_now().await;
    let out = future.await;
    stop.store(true, Ordering::Release);
    let worst = ticker.await.unwrap_or_default();
    (out, worst)
}
