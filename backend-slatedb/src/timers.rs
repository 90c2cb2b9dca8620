//! Timers in the database, with an in-memory index of every timer of a
//! timer service.
//!
//! Each timer is one key of its own (layout in [`keys`](crate::keys)) with
//! an empty value, so timers travel with their key groups through clones
//! and projections. The index, loaded from the database on first use (one
//! prefix scan per key group), orders timers as they fire: (timestamp, key
//! group, key bytes, namespace bytes). Registering, deleting and firing
//! write one key; peeking reads memory only.

use std::collections::BTreeSet;
use std::sync::Mutex;

use flowstate_api::backend::RawTimer;
use flowstate_api::{Error, KeyGroupRange, Result};
use slatedb::Db;
use tokio::sync::OnceCell;

use crate::error::slate_err;
use crate::keys::{bulk_scan, decode_timer_key, state_prefix, timer_key};

/// `(timestamp, key group, key, namespace)`: the firing order.
type Entry = (i64, u32, Vec<u8>, Vec<u8>);

/// The index of one timer service.
#[derive(Debug, Default)]
pub(crate) struct TimerIndex {
    entries: OnceCell<Mutex<BTreeSet<Entry>>>,
}

/// What a timer operation needs: the database, the service's tag, name and
/// the backend's key groups.
pub(crate) struct TimerDb<'a> {
    pub(crate) db: &'a Db,
    pub(crate) tag: u32,
    pub(crate) name: &'a str,
    pub(crate) range: KeyGroupRange,
    pub(crate) path: &'a str,
}

fn poisoned(name: &str) -> Error {
    Error::internal(format!("timer service {name:?}: its index is unusable after a panic"))
}

impl TimerIndex {
    /// The index, loaded from the database on first use.
    async fn entries(&self, t: &TimerDb<'_>) -> Result<&Mutex<BTreeSet<Entry>>> {
        self.entries
            .get_or_try_init(|| async {
                let mut all = BTreeSet::new();
                for kg in t.range.iter() {
                    let what = || format!("reading the timers of {:?} in database {}", t.name, t.path);
                    let mut it =
                        t.db.scan_prefix_with_options(state_prefix(kg, t.tag), .., &bulk_scan())
                            .await
                            .map_err(slate_err(what))?;
                    while let Some(kv) = it.next().await.map_err(slate_err(what))? {
                        let d = decode_timer_key(&kv.key, t.name)?;
                        all.insert((d.timestamp, d.kg, d.key, d.namespace));
                    }
                }
                Ok(Mutex::new(all))
            })
            .await
    }

    /// Registers a timer; one that exists is left as it is.
    pub(crate) async fn register(
        &self,
        t: &TimerDb<'_>,
        kg: u32,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        let entries = self.entries(t).await?;
        let added =
            entries
                .lock()
                .map_err(|_| poisoned(t.name))?
                .insert((timestamp, kg, key.to_vec(), namespace.to_vec()));
        if added {
            let what = || format!("registering a timer of {:?} in database {}", t.name, t.path);
            t.db.put(timer_key(kg, t.tag, timestamp, key, namespace), [])
                .await
                .map_err(slate_err(what))?;
        }
        Ok(())
    }

    /// Deletes a timer; one that does not exist is a no-op.
    pub(crate) async fn delete(
        &self,
        t: &TimerDb<'_>,
        kg: u32,
        timestamp: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        let entries = self.entries(t).await?;
        let removed =
            entries
                .lock()
                .map_err(|_| poisoned(t.name))?
                .remove(&(timestamp, kg, key.to_vec(), namespace.to_vec()));
        if removed {
            let what = || format!("deleting a timer of {:?} in database {}", t.name, t.path);
            t.db.delete(timer_key(kg, t.tag, timestamp, key, namespace))
                .await
                .map_err(slate_err(what))?;
        }
        Ok(())
    }

    /// The first timestamp, if any.
    pub(crate) async fn peek(&self, t: &TimerDb<'_>) -> Result<Option<i64>> {
        let entries = self.entries(t).await?;
        let first = entries.lock().map_err(|_| poisoned(t.name))?.first().map(|e| e.0);
        Ok(first)
    }

    /// Removes and returns the first timer if it is due at `time`.
    pub(crate) async fn poll(&self, t: &TimerDb<'_>, time: i64) -> Result<Option<RawTimer>> {
        let entries = self.entries(t).await?;
        let due = {
            let mut entries = entries.lock().map_err(|_| poisoned(t.name))?;
            match entries.first() {
                Some(first) if first.0 <= time => entries.pop_first(),
                _ => None,
            }
        };
        let Some((timestamp, kg, key, namespace)) = due else {
            return Ok(None);
        };
        let what = || format!("firing a timer of {:?} in database {}", t.name, t.path);
        t.db.delete(timer_key(kg, t.tag, timestamp, &key, &namespace))
            .await
            .map_err(slate_err(what))?;
        Ok(Some((timestamp, key, namespace)))
    }
}
