//! TTL cleanup in compaction: a compaction filter drops values, map
//! entries and whole lists whose every element has expired, by the state's
//! TTL and the backend's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flowstate_api::backend::StorageKind;
use flowstate_api::ttl::SharedClock;
use flowstate_api::ttl::{is_expired, split_ttl_value};
use rocksdb::compaction_filter::Decision;
use rocksdb::Options;

use crate::keys::elements;

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
        let now = clock.now_millis();
        let expired = |v: &[u8]| split_ttl_value(v).is_ok_and(|(ts, _)| is_expired(ts, ttl, now));
        let drop = match kind {
            StorageKind::Value | StorageKind::Map => expired(value),
            StorageKind::List => elements(value, "list").is_ok_and(|e| e.iter().all(|v| expired(v))),
            StorageKind::Timers => false,
        };
        if drop {
            Decision::Remove
        } else {
            Decision::Keep
        }
    });
}
