//! The replayable source: a generated event log of `partitions` partitions,
//! read in lock-step epochs, and the failure-free computation the job's
//! output is checked against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Event time covered by one epoch, in milliseconds: epoch `e` (from 1)
/// holds the events of `[(e - 1) * EPOCH_MS, e * EPOCH_MS)`.
pub const EPOCH_MS: i64 = 100;
/// The length of the event-time tumbling windows: ten epochs.
pub const WINDOW_MS: i64 = 1_000;
/// Events whose amount is below this are kept, in order, in list state.
const RARE_BELOW: u32 = 5;

/// The shape of the log. Every run and every restart of a job must use the
/// same one: the checkpoints' source offsets point into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogShape {
    /// Partitions of the log (the source's splits).
    pub partitions: u32,
    /// Epochs in the log; the job ends after the last.
    pub epochs: u64,
    /// Events per partition per epoch.
    pub per_epoch: u64,
    /// Distinct words (keys).
    pub keys: u64,
    /// Seed of the generator.
    pub seed: u64,
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The key.
    pub word: String,
    /// Event time, in milliseconds.
    pub time: i64,
    /// A value carried by the event.
    pub amount: u32,
    /// The partition it is in.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
}

/// What the job keeps per word (value, list and map state), as the
/// exactly-once check compares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WordState {
    /// Events seen (value state).
    pub count: u64,
    /// `(partition, offset)` of events with a small amount, in processing
    /// order (list state).
    pub rare: Vec<(u32, u64)>,
    /// Events per partition (map state).
    pub by_partition: BTreeMap<u32, u64>,
}

impl WordState {
    /// Adds one event.
    pub fn add(&mut self, e: &Event) {
        self.count += 1;
        if is_rare(e) {
            self.rare.push((e.partition, e.offset));
        }
        *self.by_partition.entry(e.partition).or_default() += 1;
    }
}

/// Whether an event goes to the list state.
pub fn is_rare(e: &Event) -> bool {
    e.amount < RARE_BELOW
}

/// The window an event time falls in (its start).
pub fn window_of(time: i64) -> i64 {
    time.div_euclid(WINDOW_MS) * WINDOW_MS
}

/// SplitMix64: one well-mixed number per position of the log.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl LogShape {
    /// Events in each partition.
    pub fn partition_len(&self) -> u64 {
        self.epochs * self.per_epoch
    }

    /// Events in the log.
    pub fn total(&self) -> u64 {
        self.partition_len() * u64::from(self.partitions)
    }

    /// The event at `offset` of `partition`.
    pub fn event(&self, partition: u32, offset: u64) -> Event {
        let h = mix(self.seed ^ (u64::from(partition) << 40) ^ offset);
        let g = mix(h);
        // Skewed keys: the smaller of two uniform draws.
        let key = (h % self.keys).min(g % self.keys);
        let epoch_index = offset / self.per_epoch;
        let within = (offset % self.per_epoch) as i64 * EPOCH_MS / self.per_epoch as i64;
        Event {
            word: format!("w{key}"),
            time: epoch_index as i64 * EPOCH_MS + within,
            amount: ((g >> 20) % 1000) as u32,
            partition,
            offset,
        }
    }

    /// The offsets of epoch `epoch` (from 1) in every partition.
    pub fn epoch_offsets(&self, epoch: u64) -> std::ops::Range<u64> {
        (epoch - 1) * self.per_epoch..epoch * self.per_epoch
    }

    /// The watermark once epoch `epoch` is complete: every event time up
    /// to it has been seen; after the last epoch, all of them.
    pub fn watermark(&self, epoch: u64) -> i64 {
        if epoch >= self.epochs {
            i64::MAX
        } else {
            epoch as i64 * EPOCH_MS - 1
        }
    }

    /// The failure-free computation: the job's state per word at the end
    /// and every window result, computed directly from the log in the
    /// order the job processes it (by epoch, then partition, then offset).
    pub fn expected(&self) -> Expected {
        let mut out = Expected::default();
        for epoch in 1..=self.epochs {
            for p in 0..self.partitions {
                for o in self.epoch_offsets(epoch) {
                    let e = self.event(p, o);
                    *out.windows.entry((e.word.clone(), window_of(e.time))).or_default() += 1;
                    out.words.entry(e.word.clone()).or_default().add(&e);
                }
            }
        }
        out
    }
}

/// What a failure-free run produces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The state per word at the end.
    pub words: BTreeMap<String, WordState>,
    /// Events per `(word, window start)`: every window result.
    pub windows: BTreeMap<(String, i64), u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> LogShape {
        LogShape {
            partitions: 3,
            epochs: 20,
            per_epoch: 7,
            keys: 50,
            seed: 9,
        }
    }

    #[test]
    fn events_fall_in_their_epoch() {
        let s = shape();
        for epoch in 1..=s.epochs {
            for o in s.epoch_offsets(epoch) {
                let e = s.event(1, o);
                assert!(
                    e.time <= s.watermark(epoch),
                    "{e:?} after the watermark of epoch {epoch}"
                );
                assert!(
                    e.time > s.watermark(epoch - 1),
                    "{e:?} before the watermark of epoch {}",
                    epoch - 1
                );
            }
        }
    }

    #[test]
    fn expected_counts_every_event_once() {
        let s = shape();
        let x = s.expected();
        assert_eq!(x.words.values().map(|w| w.count).sum::<u64>(), s.total());
        assert_eq!(x.windows.values().sum::<u64>(), s.total());
    }
}
