//! Time-to-live for state, with an injected clock.
//!
//! A state with TTL stores, in front of every value, list element and map
//! value, the 8-byte little-endian timestamp (milliseconds) of its last
//! access that counts under the [`TtlUpdateType`]. An entry expires when
//! `timestamp + ttl <= now` (saturating, so a TTL near `u64::MAX` never
//! overflows). Backends read that prefix for their cleanups: full-snapshot
//! cleanup, heap incremental cleanup and the RocksDB compaction filter.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Length of the timestamp in front of every TTL value.
pub const TTL_TIMESTAMP_LEN: usize = 8;

/// A source of time in milliseconds. Library code never reads the system
/// clock directly, so tests can drive time by hand.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch (or any fixed origin).
    fn now_millis(&self) -> u64;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The wall clock now. The one place flowstate reads it: TTL reads time
    /// through the injected [`Clock`] instead, and the lint forbids
    /// `SystemTime::now` everywhere else.
    #[allow(clippy::disallowed_methods)]
    fn wall() -> std::time::SystemTime {
        std::time::SystemTime::now()
    }

    /// Wall-clock nanoseconds since the Unix epoch (0 before it): for names
    /// that must not repeat across processes and restarts, which a manual
    /// or replayed clock would allow.
    pub fn now_nanos() -> u128 {
        Self::wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    /// How long ago `time` (a file's modification time, say) was by the
    /// wall clock; `None` if it is in the future.
    pub fn age(time: std::time::SystemTime) -> Option<std::time::Duration> {
        Self::wall().duration_since(time).ok()
    }
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        (Self::now_nanos() / 1_000_000) as u64
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A manual clock at `millis`.
    pub fn new(millis: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(millis)))
    }

    /// Sets the time.
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the time forward by `millis`.
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which accesses refresh an entry's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlUpdateType {
    /// Creation and every write (Flink's `OnCreateAndWrite`, the default).
    OnCreateAndWrite,
    /// Reads too (Flink's `OnReadAndWrite`).
    OnReadAndWrite,
}

/// Whether an expired entry that is still stored may be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlStateVisibility {
    /// Expired entries read as absent (the default).
    NeverReturnExpired,
    /// An expired entry is returned once, by the read that removes it.
    ReturnExpiredIfNotCleanedUp,
}

/// Incremental cleanup (heap backend): on each state access, check this many
/// entries of the state and remove the expired ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrementalCleanup {
    /// Entries checked per access.
    pub entries_per_access: u32,
    /// Also run once per record, when the current key is set.
    pub run_for_every_record: bool,
}

/// Backend-specific background cleanup: the RocksDB compaction filter drops
/// expired entries while compacting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionFilterCleanup {
    /// How many entries the filter processes before it reads the clock again.
    pub query_time_after_entries: u64,
}

/// Which cleanups run. By default: incremental cleanup of 5 entries per
/// access on heap and the compaction filter on RocksDB, as in Flink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlCleanup {
    /// Leave expired entries out of full snapshots.
    pub full_snapshot: bool,
    /// Heap incremental cleanup.
    pub incremental: Option<IncrementalCleanup>,
    /// Backend-specific cleanup, e.g. the RocksDB compaction filter.
    pub compaction_filter: Option<CompactionFilterCleanup>,
}

impl Default for TtlCleanup {
    fn default() -> Self {
        TtlCleanup {
            full_snapshot: false,
            incremental: Some(IncrementalCleanup {
                entries_per_access: 5,
                run_for_every_record: false,
            }),
            compaction_filter: Some(CompactionFilterCleanup {
                query_time_after_entries: 1000,
            }),
        }
    }
}

/// Time-to-live of a state's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTtlConfig {
    ttl_millis: u64,
    update_type: TtlUpdateType,
    visibility: TtlStateVisibility,
    cleanup: TtlCleanup,
}

impl StateTtlConfig {
    /// Entries live for `ttl` after creation and each write, expired entries
    /// are never returned, and background cleanup is on.
    pub fn new(ttl: Duration) -> Self {
        StateTtlConfig {
            ttl_millis: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            update_type: TtlUpdateType::OnCreateAndWrite,
            visibility: TtlStateVisibility::NeverReturnExpired,
            cleanup: TtlCleanup::default(),
        }
    }

    /// Sets which accesses refresh the timestamp.
    pub fn with_update_type(mut self, update_type: TtlUpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    /// Sets whether expired entries may be returned.
    pub fn with_visibility(mut self, visibility: TtlStateVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Leaves expired entries out of full snapshots.
    pub fn cleanup_full_snapshot(mut self) -> Self {
        self.cleanup.full_snapshot = true;
        self
    }

    /// Checks `entries_per_access` entries on every access (heap backend).
    pub fn cleanup_incrementally(mut self, entries_per_access: u32, run_for_every_record: bool) -> Self {
        self.cleanup.incremental = Some(IncrementalCleanup {
            entries_per_access,
            run_for_every_record,
        });
        self
    }

    /// Drops expired entries in the RocksDB compaction filter.
    pub fn cleanup_in_compaction_filter(mut self, query_time_after_entries: u64) -> Self {
        self.cleanup.compaction_filter = Some(CompactionFilterCleanup {
            query_time_after_entries,
        });
        self
    }

    /// Turns off incremental and compaction-filter cleanup.
    pub fn disable_cleanup_in_background(mut self) -> Self {
        self.cleanup.incremental = None;
        self.cleanup.compaction_filter = None;
        self
    }

    /// The time to live, in milliseconds.
    pub fn ttl_millis(&self) -> u64 {
        self.ttl_millis
    }

    /// Which accesses refresh the timestamp.
    pub fn update_type(&self) -> TtlUpdateType {
        self.update_type
    }

    /// Whether expired entries may be returned.
    pub fn visibility(&self) -> TtlStateVisibility {
        self.visibility
    }

    /// The cleanups in force.
    pub fn cleanup(&self) -> &TtlCleanup {
        &self.cleanup
    }

    /// True when an entry last stamped at `timestamp` is expired at `now`.
    #[inline]
    pub fn is_expired(&self, timestamp: u64, now: u64) -> bool {
        is_expired(timestamp, self.ttl_millis, now)
    }
}

/// True when an entry stamped at `timestamp` with time to live `ttl_millis`
/// is expired at `now`: `timestamp + ttl <= now`, saturating.
#[inline]
pub fn is_expired(timestamp: u64, ttl_millis: u64, now: u64) -> bool {
    timestamp.saturating_add(ttl_millis) <= now
}

/// Splits a TTL value into its timestamp and user bytes.
#[inline]
pub fn split_ttl_value(bytes: &[u8]) -> Result<(u64, &[u8])> {
    match bytes.split_first_chunk::<TTL_TIMESTAMP_LEN>() {
        Some((ts, rest)) => Ok((u64::from_le_bytes(*ts), rest)),
        None => Err(Error::corrupted(format!(
            "TTL value of {} bytes lacks its {TTL_TIMESTAMP_LEN}-byte timestamp",
            bytes.len()
        ))),
    }
}

/// Writes a TTL timestamp prefix.
#[inline]
pub fn put_ttl_timestamp(out: &mut Vec<u8>, timestamp: u64) {
    out.extend_from_slice(&timestamp.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_boundary_is_inclusive_and_saturating() {
        assert!(!is_expired(100, 10, 109));
        assert!(is_expired(100, 10, 110));
        assert!(!is_expired(u64::MAX - 5, u64::MAX, u64::MAX - 1));
        let cfg = StateTtlConfig::new(Duration::MAX);
        assert_eq!(cfg.ttl_millis(), u64::MAX);
        assert!(!cfg.is_expired(1_000, u64::MAX - 1));
    }

    #[test]
    fn ttl_value_prefix_round_trips() {
        let mut v = Vec::new();
        put_ttl_timestamp(&mut v, 77);
        v.extend_from_slice(b"abc");
        assert_eq!(split_ttl_value(&v).unwrap(), (77, &b"abc"[..]));
        assert!(split_ttl_value(&v[..7]).is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_millis(), 5);
        c.advance(10);
        assert_eq!(c.now_millis(), 15);
        c.set(1);
        assert_eq!(c.now_millis(), 1);
    }
}
