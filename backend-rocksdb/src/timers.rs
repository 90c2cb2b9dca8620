//! Timers in RocksDB: one column family per timer service, keyed
//! `key group | timestamp | key | namespace` (see [`timer_key`]) with empty
//! values, so each key group's timers are one range in firing order.
//!
//! In memory, a write-through cache holds the first [`CACHE_PER_KEY_GROUP`]
//! timers of each key group (a prefix of its range), refilled by one seek
//! when it runs empty, and a head-of-queues index holds the first
//! timestamp of every non-empty key group. Finding the next timer is a
//! lookup in memory; registering, deleting and firing write one key.

use std::collections::BTreeSet;

use flowstate_api::backend::RawTimer;
use flowstate_api::{KeyGroupRange, Result};
use rocksdb::{ColumnFamily, ReadOptions, WriteOptions, DB};

use crate::db_err;
use crate::keys::{decode_timer_key, kg_prefix, prefix_end, timer_key};

/// Timers cached per key group (as Flink's
/// `state.backend.rocksdb.timer-service.cache-size`).
pub const CACHE_PER_KEY_GROUP: usize = 128;

/// `(timestamp, key, namespace)`, ordered as the column family orders them.
type Entry = (i64, Vec<u8>, Vec<u8>);

#[derive(Default)]
struct KeyGroupCache {
    /// The first timers of the key group, in order.
    entries: BTreeSet<Entry>,
    /// True when `entries` holds every timer of the key group.
    complete: bool,
    /// Every timer of the key group sorts at or after this key (timers
    /// before it were fired or deleted): where a refill seeks to.
    floor: Option<Vec<u8>>,
}

/// The cache and index of one timer service.
#[derive(Default)]
pub(crate) struct TimerCache {
    /// Built on first use, from the column family.
    loaded: bool,
    range: Option<KeyGroupRange>,
    groups: Vec<KeyGroupCache>,
    /// `(first timestamp, key-group index)` of every non-empty key group.
    heads: BTreeSet<(i64, usize)>,
    key: Vec<u8>,
}

/// The database, column family and write options a cache operation uses.
pub(crate) struct Db<'a> {
    pub(crate) db: &'a DB,
    pub(crate) cf: &'a ColumnFamily,
    pub(crate) write: &'a WriteOptions,
    pub(crate) name: &'a str,
}

impl Db<'_> {
    fn put(&self, key: &[u8]) -> Result<()> {
        self.db
            .put_cf_opt(self.cf, key, [], self.write)
            .map_err(db_err(format_args!("registering a timer of {:?}", self.name)))
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.db
            .delete_cf_opt(self.cf, key, self.write)
            .map_err(db_err(format_args!("deleting a timer of {:?}", self.name)))
    }
}

impl TimerCache {
    /// Loads the first timers of every key group of `range`.
    fn load(&mut self, db: &Db<'_>, range: KeyGroupRange) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        self.range = Some(range);
        self.groups = (0..range.len()).map(|_| KeyGroupCache::default()).collect();
        self.heads.clear();
        for i in 0..self.groups.len() {
            self.refill(db, i)?;
            if let Some(first) = self.groups[i].entries.first() {
                self.heads.insert((first.0, i));
            }
        }
        self.loaded = true;
        Ok(())
    }

    fn kg(&self, i: usize) -> u32 {
        self.range.map_or(0, |r| r.start()) + i as u32
    }

    /// Reads up to [`CACHE_PER_KEY_GROUP`] timers of key group index `i`
    /// from its floor on, into its (empty) cache.
    fn refill(&mut self, db: &Db<'_>, i: usize) -> Result<()> {
        let kg = self.kg(i);
        let prefix = kg_prefix(kg);
        let mut read = ReadOptions::default();
        if let Some(end) = prefix_end(&prefix) {
            read.set_iterate_upper_bound(end);
        }
        let g = &mut self.groups[i];
        let mut it = db.db.raw_iterator_cf_opt(db.cf, read);
        match &g.floor {
            Some(floor) => it.seek(floor),
            None => it.seek(prefix),
        }
        while it.valid() && g.entries.len() < CACHE_PER_KEY_GROUP {
            let Some(k) = it.key() else { break };
            let t = decode_timer_key(k, db.name)?;
            g.entries.insert((t.timestamp, t.key, t.namespace));
            it.next();
        }
        it.status()
            .map_err(db_err(format_args!("reading the timers of {:?}", db.name)))?;
        g.complete = !it.valid();
        Ok(())
    }

    /// Runs `f` on key group index `i`'s cache, then refills it if it ran
    /// empty while the column family holds more, and updates the index.
    fn change<R>(&mut self, db: &Db<'_>, i: usize, f: impl FnOnce(&mut KeyGroupCache) -> R) -> Result<R> {
        let before = self.groups[i].entries.first().map(|e| e.0);
        let r = f(&mut self.groups[i]);
        if self.groups[i].entries.is_empty() && !self.groups[i].complete {
            self.refill(db, i)?;
        }
        let after = self.groups[i].entries.first().map(|e| e.0);
        if before != after {
            if let Some(ts) = before {
                self.heads.remove(&(ts, i));
            }
            if let Some(ts) = after {
                self.heads.insert((ts, i));
            }
        }
        Ok(r)
    }

    /// Loads the cache if needed; returns key group `kg`'s index and the
    /// timer as cached, with its RocksDB key in `self.key`.
    fn locate(
        &mut self,
        db: &Db<'_>,
        range: KeyGroupRange,
        kg: u32,
        entry: (i64, &[u8], &[u8]),
    ) -> Result<(usize, Entry)> {
        self.load(db, range)?;
        let (timestamp, key, namespace) = entry;
        timer_key(&mut self.key, kg, timestamp, key, namespace);
        Ok((
            (kg - range.start()) as usize,
            (timestamp, key.to_vec(), namespace.to_vec()),
        ))
    }

    /// Registers `(timestamp, key, namespace)` in key group `kg`.
    pub(crate) fn register(
        &mut self,
        db: &Db<'_>,
        range: KeyGroupRange,
        kg: u32,
        entry: (i64, &[u8], &[u8]),
    ) -> Result<()> {
        let (i, entry) = self.locate(db, range, kg, entry)?;
        if self.groups[i].entries.contains(&entry) {
            return Ok(());
        }
        db.put(&self.key)?;
        let key = std::mem::take(&mut self.key);
        let r = self.change(db, i, |g| {
            if g.floor.as_ref().is_some_and(|f| key < *f) {
                g.floor = None;
            }
            let within = g.complete || g.entries.last().is_some_and(|last| entry < *last);
            if within {
                g.entries.insert(entry);
                if g.entries.len() > CACHE_PER_KEY_GROUP {
                    g.entries.pop_last();
                    g.complete = false;
                }
            }
        });
        self.key = key;
        r
    }

    /// Deletes `(timestamp, key, namespace)` from key group `kg`, if present.
    pub(crate) fn delete(
        &mut self,
        db: &Db<'_>,
        range: KeyGroupRange,
        kg: u32,
        entry: (i64, &[u8], &[u8]),
    ) -> Result<()> {
        let (i, entry) = self.locate(db, range, kg, entry)?;
        let g = &self.groups[i];
        let cached = g.entries.contains(&entry);
        if !cached && (g.complete || g.entries.last().is_some_and(|last| entry < *last)) {
            // Within the cached prefix, so not in the column family either.
            return Ok(());
        }
        db.delete(&self.key)?;
        self.change(db, i, |g| {
            g.entries.remove(&entry);
        })
    }

    /// The first timestamp of the service.
    pub(crate) fn peek(&mut self, db: &Db<'_>, range: KeyGroupRange) -> Result<Option<i64>> {
        self.load(db, range)?;
        Ok(self.heads.first().map(|h| h.0))
    }

    /// Removes and returns the first timer if it is due at `time`, with its key group.
    pub(crate) fn poll(&mut self, db: &Db<'_>, range: KeyGroupRange, time: i64) -> Result<Option<RawTimer>> {
        self.load(db, range)?;
        let Some(&(ts, i)) = self.heads.first() else {
            return Ok(None);
        };
        if ts > time {
            return Ok(None);
        }
        let kg = self.kg(i);
        let Some(entry) = self.groups[i].entries.first().cloned() else {
            return Ok(None);
        };
        timer_key(&mut self.key, kg, entry.0, &entry.1, &entry.2);
        db.delete(&self.key)?;
        let floor = self.key.clone();
        self.change(db, i, |g| {
            g.entries.pop_first();
            g.floor = Some(floor);
        })?;
        Ok(Some(entry))
    }
}
