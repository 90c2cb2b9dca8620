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
//! - [`nonblocking`] and [`check_blocking`]: how that is checked. The
//!   library's futures (snapshots' async phases, restores) are wrapped in
//!   [`nonblocking`], and its blocking calls (file system, RocksDB) call
//!   [`check_blocking`] first; in debug builds a blocking call made while a
//!   wrapped future is being polled panics, naming the call. So a test of
//!   any backend on any storage fails on the first blocking call that
//!   escaped [`run_blocking`], however idle or busy the machine.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
/// Tokio runtime, or from one of the library's [`nonblocking`] futures on
/// any executor (then on this library's own blocking threads); on the
/// calling thread otherwise (synchronous code). For clean-up that must not
/// block async code but that nobody awaits, such as a destructor deleting
/// a temporary directory. Work not yet started when the runtime or process
/// shuts down may not run, so it must be safe to leave undone (and be
/// redone later).
pub fn run_detached(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(f)),
        Err(_) if in_nonblocking_future() => blocking::unblock(f).detach(),
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

thread_local! {
    /// How many [`NonBlocking`] futures this thread is polling.
    static POLLING: Cell<u32> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// A future that must not block the executor: see [`nonblocking`].
    #[must_use = "futures do nothing unless polled"]
    pub struct NonBlocking<F> {
        #[pin]
        inner: F,
    }
}

/// Marks `future` as one that never blocks its executor: while it is
/// polled, [`check_blocking`] panics in debug builds. Costs a thread-local
/// increment per poll.
pub fn nonblocking<F: Future>(future: F) -> NonBlocking<F> {
    NonBlocking { inner: future }
}

impl<F: Future> Future for NonBlocking<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        struct Polling;
        impl Drop for Polling {
            fn drop(&mut self) {
                POLLING.with(|p| p.set(p.get().saturating_sub(1)));
            }
        }
        POLLING.with(|p| p.set(p.get() + 1));
        let _polling = Polling;
        self.project().inner.poll(cx)
    }
}

/// True while this thread polls a [`nonblocking`] future (outside
/// [`run_blocking`], whose work runs on other threads).
pub fn in_nonblocking_future() -> bool {
    POLLING.with(|p| p.get() > 0)
}

/// Called before blocking work `what` (a file-system or RocksDB call): in
/// debug builds, panics if a [`nonblocking`] future is being polled on this
/// thread, since the work would block the executor; it belongs in
/// [`run_blocking`]. Does nothing in release builds.
#[inline]
#[track_caller]
pub fn check_blocking(what: &str) {
    if cfg!(debug_assertions) && in_nonblocking_future() {
        panic!("blocking call on an async path: {what} (run it with flowstate_api::runtime::run_blocking)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_calls_in_nonblocking_futures_are_caught() {
        let outside = std::panic::catch_unwind(|| futures::executor::block_on(async { check_blocking("outside") }));
        assert!(outside.is_ok(), "a blocking call outside a marked future is allowed");
        let inside = std::panic::catch_unwind(|| {
            futures::executor::block_on(nonblocking(async { check_blocking("reading a file") }))
        });
        if cfg!(debug_assertions) {
            let e = inside.expect_err("a blocking call inside a marked future panics");
            let message = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.contains("reading a file"), "{message}");
        } else {
            assert!(inside.is_ok());
        }
        assert!(!in_nonblocking_future(), "the mark is cleared after a panic");
        let offloaded = futures::executor::block_on(nonblocking(run_blocking(|| {
            check_blocking("on a blocking thread");
            Ok(1)
        })));
        assert_eq!(offloaded.ok(), Some(1), "run_blocking's work may block");
        // Detached clean-up from a marked future on another executor goes to
        // a blocking thread instead of blocking (or failing) the poll.
        let (tx, rx) = std::sync::mpsc::channel();
        futures::executor::block_on(nonblocking(async move {
            run_detached(move || {
                check_blocking("clean-up");
                let _ = tx.send(std::thread::current().id());
            });
        }));
        let ran_on = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_ne!(ran_on, std::thread::current().id());
    }

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
