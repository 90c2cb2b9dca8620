//! TTL cleanup in compaction: a compaction filter drops expired values and
//! map entries, and the expired elements of lists one by one (a list whose
//! every element expired is dropped whole), by the state's TTL and the
//! backend's clock, whatever the state's visibility: expired state is
//! reclaimed, not only hidden on read.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowstate_api::backend::StorageKind;
use flowstate_api::ttl::SharedClock;
use flowstate_api::ttl::{is_expired, split_ttl_value};
use rocksdb::compaction_filter::Decision;
use rocksdb::Options;

use crate::keys::{elements, pack};

/// The per-state TTL the compaction filter and merge operator read: 0 is
/// no TTL. Set at registration, after the column family exists.
#[derive(Debug, Default)]
pub struct TtlSlot(AtomicU64);

impl TtlSlot {
    /// Sets the TTL (0: none).
    pub fn set(&self, ttl_millis: u64) {
        self.0.store(ttl_millis, Ordering::Relaxed);
    }

    /// The TTL, if any.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Sets the TTL compaction filter on the options of a column family of a
/// state of `kind`, reading the state's TTL from `ttl`.
pub(crate) fn install(o: &mut Options, kind: StorageKind, ttl: Arc<TtlSlot>, clock: SharedClock) {
    o.set_compaction_filter("flowstate-ttl", move |_level: u32, _key: &[u8], value: &[u8]| {
        let Some(ttl) = ttl.get() else {
            return Decision::Keep;
        };
        decide(kind, value, ttl, clock.now_millis())
    });
}

/// What the compaction filter does with `value` of a state of `kind`, with
/// `ttl` (milliseconds) at `now`.
fn decide(kind: StorageKind, value: &[u8], ttl: u64, now: u64) -> Decision {
    let expired = |v: &[u8]| split_ttl_value(v).is_ok_and(|(ts, _)| is_expired(ts, ttl, now));
    match kind {
        StorageKind::Value | StorageKind::Map if expired(value) => Decision::Remove,
        StorageKind::Value | StorageKind::Map | StorageKind::Timers => Decision::Keep,
        StorageKind::List => {
            // A malformed list is kept as it is: reading it reports it.
            let Ok(all) = elements(value, "list") else {
                return Decision::Keep;
            };
            let live = all.iter().filter(|e| !expired(e)).count();
            if live == all.len() {
                Decision::Keep
            } else if live == 0 {
                Decision::Remove
            } else {
                let mut kept = Vec::with_capacity(value.len());
                for e in all.into_iter().filter(|e| !expired(e)) {
                    pack(&mut kept, e);
                }
                change_to(kept)
            }
        }
    }
}

thread_local! {
    /// The value this thread's last compaction filter call changed an
    /// entry to.
    static CHANGED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The decision to change the filtered entry's value to `value`.
///
/// The binding's `Decision::Change` takes a `&'static [u8]`, but RocksDB
/// needs the bytes only until the filter call returns: its C API wrapper
/// (`rocksdb_compactionfilter_t::Filter` in `db/c.cc`) copies them into the
/// new value (`new_value->assign(...)`) as soon as the callback returns,
/// before anything else runs on this thread. So the bytes live in a
/// thread-local buffer that the next filter call on the same thread
/// replaces; leaking a buffer per changed list would grow without bound.
#[allow(unsafe_code)]
fn change_to(value: Vec<u8>) -> Decision {
    CHANGED.with(|changed| {
        let mut changed = changed.borrow_mut();
        *changed = value;
        // SAFETY: the slice points into the thread-local buffer, which is
        // neither freed nor written until this thread's next call of
        // `change_to`; RocksDB copies the bytes before that (see above), and
        // never reads them after.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(changed.as_ptr(), changed.len()) };
        Decision::Change(bytes)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use flowstate_api::ttl::put_ttl_timestamp;

    fn prepend_ttl(ts: u64, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_ttl_timestamp(&mut out, ts);
        out.extend_from_slice(v);
        out
    }

    fn list(elements: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ts, v) in elements {
            pack(&mut out, &prepend_ttl(*ts, v));
        }
        out
    }

    #[test]
    fn list_elements_are_filtered_one_by_one() {
        let value = list(&[(0, b"5"), (0, b"7"), (50, b"8"), (0, b"10"), (50, b"longer element")]);
        match decide(StorageKind::List, &value, 100, 120) {
            Decision::Change(kept) => assert_eq!(kept, list(&[(50, b"8"), (50, b"longer element")])),
            other => panic!("expected a change, got {}", describe(&other)),
        }
        assert!(matches!(decide(StorageKind::List, &value, 100, 99), Decision::Keep));
        assert!(matches!(decide(StorageKind::List, &value, 100, 150), Decision::Remove));
        // A malformed list is left for the read to report.
        assert!(matches!(decide(StorageKind::List, &[9, 1], 100, 150), Decision::Keep));
    }

    #[test]
    fn values_and_map_entries_are_dropped_when_expired() {
        let v = prepend_ttl(0, b"x");
        for kind in [StorageKind::Value, StorageKind::Map] {
            assert!(matches!(decide(kind, &v, 100, 99), Decision::Keep));
            assert!(matches!(decide(kind, &v, 100, 100), Decision::Remove));
        }
        assert!(matches!(decide(StorageKind::Timers, &v, 100, 1000), Decision::Keep));
    }

    fn describe(d: &Decision) -> &'static str {
        match d {
            Decision::Keep => "keep",
            Decision::Remove => "remove",
            Decision::Change(_) => "change",
        }
    }
}
