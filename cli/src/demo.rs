//! The demo job: per-user event counts and amount sums, keyed by user,
//! at parallelism 2, with periodic checkpoints, a crash and a recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use flowstate_api::*;
use flowstate_heap::HeapBackend;

/// Options of `flowstate demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Events to process.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Distinct keys (users).
    #[arg(long, default_value_t = 20_000)]
    keys: u64,
    /// Take a checkpoint every this many events.
    #[arg(long, default_value_t = 25_000)]
    checkpoint_every: u64,
    /// Crash after this many events (between checkpoints).
    #[arg(long, default_value_t = 140_000)]
    crash_after: u64,
    /// Parallelism of the keyed operator.
    #[arg(long, default_value_t = 2)]
    parallelism: u32,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const MAX_PARALLELISM: u32 = 128;
const OPERATOR: &str = "count-by-user";

/// One event of the generated stream.
#[derive(Debug, Clone, Copy)]
struct Event {
    user: u64,
    amount: u64,
}

/// The deterministic event stream (xorshift64*).
fn events(seed: u64, keys: u64, n: u64) -> Vec<Event> {
    let mut x = seed.max(1);
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n)
        .map(|_| Event {
            user: next() % keys,
            amount: next() % 1000,
        })
        .collect()
}

/// One parallel instance of the keyed operator.
struct Subtask {
    backend: HeapBackend<u64>,
    count: ValueState<u64>,
    total: ReducingState<u64>,
}

impl Subtask {
    fn open(mut backend: HeapBackend<u64>) -> Result<Self> {
        let count = backend.register(ValueStateDescriptor::<u64>::new("count"))?;
        let total = backend.register(ReducingStateDescriptor::<u64>::new("total", |a, b| a + b))?;
        Ok(Subtask { backend, count, total })
    }

    fn process(&mut self, e: &Event) -> Result<()> {
        self.backend.set_current_key(&e.user)?;
        let n = self.backend.value(&self.count)?.unwrap_or(0);
        self.backend.update(&self.count, n + 1)?;
        self.backend.reduce(&self.total, e.amount)
    }

    fn results(&mut self, out: &mut HashMap<u64, (u64, u64)>) -> Result<()> {
        let (count, total) = (self.count.clone(), self.total.clone());
        self.backend.apply_to_all_keys(&count, &VoidNamespace, |b, user| {
            let n = b.value(&count)?.unwrap_or(0);
            let sum = b.reduced(&total)?.unwrap_or(0);
            out.insert(*user, (n, sum));
            Ok(())
        })
    }
}

/// The keyed operator at some parallelism, routing events by key group.
struct Job {
    subtasks: Vec<Subtask>,
    ranges: Vec<KeyGroupRange>,
    key_serializer: SharedSerializer<u64>,
    key_buf: Vec<u8>,
}

impl Job {
    fn configs(parallelism: u32) -> Result<Vec<KeyedBackendConfig<u64>>> {
        (0..parallelism)
            .map(|i| {
                Ok(KeyedBackendConfig::new(
                    KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?,
                    MAX_PARALLELISM,
                ))
            })
            .collect()
    }

    fn from_backends(backends: Vec<HeapBackend<u64>>) -> Result<Self> {
        let ranges = backends.iter().map(|b| b.key_group_range()).collect();
        let key_serializer = default_serializer::<u64>();
        let subtasks = backends.into_iter().map(Subtask::open).collect::<Result<_>>()?;
        Ok(Job {
            subtasks,
            ranges,
            key_serializer,
            key_buf: Vec::new(),
        })
    }

    fn new(parallelism: u32) -> Result<Self> {
        let backends = Self::configs(parallelism)?
            .into_iter()
            .map(HeapBackend::new)
            .collect::<Result<_>>()?;
        Self::from_backends(backends)
    }

    async fn restore(parallelism: u32, checkpoint: &ResolvedCheckpoint) -> Result<Self> {
        let handles = checkpoint
            .metadata
            .operator(OPERATOR)
            .map(|o| o.keyed.clone())
            .unwrap_or_default();
        let mut backends = Vec::new();
        for config in Self::configs(parallelism)? {
            backends.push(HeapBackend::restore(config, &handles, &*checkpoint.reader).await?);
        }
        Self::from_backends(backends)
    }

    fn process(&mut self, e: &Event) -> Result<()> {
        self.key_buf.clear();
        self.key_serializer.serialize(&e.user, &mut self.key_buf)?;
        let kg = key_group_for_key_bytes(&self.key_buf, MAX_PARALLELISM);
        let i = self
            .ranges
            .iter()
            .position(|r| r.contains(kg))
            .ok_or_else(|| Error::internal(format!("no subtask owns key group {kg}")))?;
        self.subtasks[i].process(e)
    }

    /// Takes checkpoint `id` of every subtask: sync phases in turn, async
    /// phases concurrently, then the metadata, last.
    async fn checkpoint(&mut self, storage: &dyn CheckpointStorage, id: u64) -> Result<CheckpointReport> {
        let location = storage.init_checkpoint(id).await?;
        let sync_started = Instant::now();
        let mut pending = Vec::new();
        for s in &mut self.subtasks {
            pending.push(
                s.backend
                    .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())?,
            );
        }
        let sync = sync_started.elapsed();
        let async_started = Instant::now();
        let tasks: Vec<_> = pending.into_iter().map(|p| tokio::spawn(p.run())).collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(
                t.await
                    .map_err(|e| Error::internal(format!("snapshot task failed: {e}")))??,
            );
        }
        let async_elapsed = async_started.elapsed();
        let mut metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, SystemClock.now_millis());
        metadata.operators.push(OperatorState::new(
            OPERATOR,
            self.subtasks.len() as u32,
            MAX_PARALLELISM,
            results.iter().map(|r| r.handle.clone()).collect(),
        ));
        let pointer = location.write_metadata(&metadata).await?;
        for s in &mut self.subtasks {
            s.backend.notify_checkpoint_complete(id)?;
        }
        Ok(CheckpointReport {
            id,
            pointer,
            sync_ms: sync.as_secs_f64() * 1e3,
            async_ms: async_elapsed.as_secs_f64() * 1e3,
            bytes: results.iter().map(|r| r.stats.bytes_written).sum(),
            full_size: results.iter().map(|r| r.stats.full_size).sum(),
        })
    }

    fn results(&mut self) -> Result<HashMap<u64, (u64, u64)>> {
        let mut out = HashMap::new();
        for s in &mut self.subtasks {
            s.results(&mut out)?;
        }
        Ok(out)
    }
}

struct CheckpointReport {
    id: u64,
    pointer: String,
    sync_ms: f64,
    async_ms: f64,
    bytes: u64,
    full_size: u64,
}

fn print_report(r: &CheckpointReport) {
    println!(
        "{:>10} {:>9.3} {:>9.3} {:>12} {:>12}  {}",
        r.id, r.sync_ms, r.async_ms, r.bytes, r.full_size, r.pointer
    );
}

/// Runs the demo; returns whether the exactly-once check passed.
pub async fn run(args: DemoArgs) -> Result<bool> {
    if args.checkpoint_every == 0 || args.keys == 0 || args.crash_after >= args.events {
        return Err(Error::invalid(
            "need --checkpoint-every > 0, --keys > 0 and --crash-after < --events",
        ));
    }
    let stream = events(args.seed, args.keys, args.events);
    let storage = MemoryCheckpointStorage::new("flowstate-demo").with_max_state_size(64 << 20);
    println!(
        "flowstate demo: heap backend, memory checkpoint storage; {} events over {} keys, parallelism {}, \
         checkpoint every {} events, crash after event {}",
        args.events, args.keys, args.parallelism, args.checkpoint_every, args.crash_after
    );
    println!(
        "{:>10} {:>9} {:>9} {:>12} {:>12}  pointer",
        "checkpoint", "sync ms", "async ms", "bytes", "full bytes"
    );

    // First attempt: runs until the crash.
    let mut job = Job::new(args.parallelism)?;
    let mut next_id = 1;
    for (i, e) in stream.iter().enumerate().take(args.crash_after as usize) {
        job.process(e)?;
        let done = i as u64 + 1;
        if done % args.checkpoint_every == 0 {
            print_report(&job.checkpoint(&storage, next_id).await?);
            next_id += 1;
        }
    }
    drop(job);
    println!("crash after event {}: in-memory state lost", args.crash_after);

    // Recovery: restore the latest complete checkpoint and replay from its offset.
    let started = Instant::now();
    let latest = storage
        .latest_checkpoint()
        .await?
        .ok_or_else(|| Error::not_found("no complete checkpoint to recover from"))?;
    let id = latest.metadata.checkpoint_id;
    let offset = id * args.checkpoint_every;
    let mut job = Job::restore(args.parallelism, &latest).await?;
    println!(
        "restored checkpoint {id} ({}) in {:.3} ms; replaying from event {offset}",
        latest.pointer,
        started.elapsed().as_secs_f64() * 1e3
    );
    next_id = id + 1;
    for (i, e) in stream.iter().enumerate().skip(offset as usize) {
        job.process(e)?;
        let done = i as u64 + 1;
        if done % args.checkpoint_every == 0 {
            print_report(&job.checkpoint(&storage, next_id).await?);
            next_id += 1;
        }
    }

    // The check: the recovered job's state equals a failure-free computation.
    let got = job.results()?;
    let mut want: HashMap<u64, (u64, u64)> = HashMap::new();
    for e in &stream {
        let entry = want.entry(e.user).or_default();
        entry.0 += 1;
        entry.1 += e.amount;
    }
    let passed = got == want;
    if passed {
        println!(
            "exactly-once check: PASSED: {} keys, counts and sums equal a failure-free run of {} events",
            want.len(),
            args.events
        );
    } else {
        let wrong = want.iter().filter(|(k, v)| got.get(k) != Some(v)).count();
        println!(
            "exactly-once check: FAILED: {wrong} of {} keys differ from a failure-free run ({} keys recovered)",
            want.len(),
            got.len()
        );
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_recovers_exactly_once() {
        let args = DemoArgs {
            events: 20_000,
            keys: 500,
            checkpoint_every: 3_000,
            crash_after: 10_000,
            parallelism: 3,
            seed: 7,
        };
        assert!(run(args).await.unwrap());
    }

    #[test]
    fn event_stream_is_deterministic() {
        let a = events(42, 100, 10);
        let b = events(42, 100, 10);
        assert_eq!(
            a.iter().map(|e| (e.user, e.amount)).collect::<Vec<_>>(),
            b.iter().map(|e| (e.user, e.amount)).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|e| e.user < 100 && e.amount < 1000));
    }
}
