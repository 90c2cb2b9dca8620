//! Where flowstate's work runs, for backend and storage implementers: one
//! place for every thread flowstate starts or borrows.
//!
//! - [`run_blocking`]: blocking work (file I/O, RocksDB, compression) off
//!   the async executor, on any executor. On a Tokio runtime the work goes
//!   to Tokio's blocking pool, so it is accounted and shut down with the
//!   engine's runtime. On any other executor (`futures::executor::block_on`,
//!   smol, async-std, a hand-written poll loop) it goes to a thread pool
//!   this library owns. Either way the calling future only waits on a
//!   channel: no reactor or timer is required.
//! - [`run_detached`]: clean-up nobody awaits (a destructor removing a
//!   temporary directory), off async code.
//! - [`io_runtime`]: network I/O (object-store requests) needs a Tokio
//!   reactor; when the engine runs none, flowstate starts its own, once.

use crate::error::{Error, Result};

/// Runs `f` on a blocking thread and waits for its result without blocking
/// the executor.
pub async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?,
        Err(_) => blocking::unblock(f).await,
    }
}

/// Runs `f` on a blocking thread without waiting for it when called on a
/// Tokio runtime, and on the calling thread otherwise: for clean-up that
/// must not block async code but that nobody awaits, such as a destructor
/// deleting a temporary directory. Work not yet started when the runtime
/// shuts down may not run, so it must be safe to leave undone (and be
/// redone later).
pub fn run_detached(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(f)),
        Err(_) => f(),
    }
}

/// flowstate's own I/O runtime (two worker threads, named
/// `flowstate-io`), started the first time it is asked for: what network
/// clients use when the engine runs no Tokio runtime. `None` if it cannot
/// start.
pub fn io_runtime() -> Option<tokio::runtime::Handle> {
    static IO: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowstate-io")
            .enable_all()
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no I/O runtime for network clients"))
            .ok()
    })
    .as_ref()
    .map(|rt| rt.handle().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_a_tokio_runtime() {
        let v = futures::executor::block_on(run_blocking(|| Ok(std::thread::current().id())));
        assert_ne!(v.unwrap(), std::thread::current().id());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_on_tokio_blocking_threads() {
        let v = run_blocking(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(v, std::thread::current().id());
        let e = run_blocking::<()>(|| Err(Error::invalid("no"))).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Invalid);
    }
}
