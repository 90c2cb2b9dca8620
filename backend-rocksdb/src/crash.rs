//! Named points of a restore where a crash test can kill the process.
//!
//! Compiled in only with the `crash-points` feature (for tests). The
//! process aborts (no destructor runs, as after a kill) the `n`th time it
//! reaches the point `FLOWSTATE_CRASH_AT=<point>[:n]` names (`n` = 1 by
//! default), after printing `crash point <point>` to standard error.

#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);
    let at = AT.get_or_init(|| {
        let at = std::env::var("FLOWSTATE_CRASH_AT").ok()?;
        Some(match at.split_once(':') {
            Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1)),
            None => (at, 1),
        })
    });
    if let Some((point, n)) = at {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("crash point {name}");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
