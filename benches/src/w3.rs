//! W3: rescaled restores. A job writes W2's state at parallelism P_old,
//! then a job at P_new restores it, one new subtask after the other: 2→3,
//! 2→1 (from the same checkpoint), then 3→2. See BENCHMARKS.md.

use std::sync::Arc;
use std::time::Instant;

use flowstate_api::checkpoint::{OperatorState, StateReader};
use flowstate_api::*;
use flowstate_heap::HeapBackend;
use flowstate_rocksdb::RocksDbBackend;

use crate::w2::{rocks_options, RocksMode};
use crate::{emit, XorShift};

const MAX_PARALLELISM: u32 = 128;

/// The backends W3 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Heap,
    Rocks(RocksMode),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Heap => "heap-full",
            Kind::Rocks(RocksMode::Full) => "rocksdb-full",
            Kind::Rocks(RocksMode::Incremental) => "rocksdb-incremental",
        }
    }
}

/// A backend of either kind, as W3 drives it.
enum Backend {
    Heap(Box<HeapBackend<u64>>),
    Rocks(Box<RocksDbBackend<u64>>),
}

macro_rules! with {
    ($b:expr, $x:ident => $e:expr) => {
        match $b {
            Backend::Heap($x) => $e,
            Backend::Rocks($x) => $e,
        }
    };
}

fn descriptor() -> ValueStateDescriptor<Vec<u8>> {
    ValueStateDescriptor::new("w3-value")
}

/// The 100-byte value W2 and W3 give a key: the next 13 draws, little-endian.
fn value(rng: &mut XorShift) -> Vec<u8> {
    let mut v = Vec::with_capacity(104);
    for _ in 0..13 {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(100);
    v
}

/// The key group of key `k` (its bincode serialization hashed).
fn key_group(k: u64) -> Result<u32> {
    let mut bytes = Vec::new();
    default_serializer::<u64>().serialize(&k, &mut bytes)?;
    Ok(key_group_for_key_bytes(&bytes, MAX_PARALLELISM))
}

/// Bytes this process has read (`rchar` of `/proc/self/io`), if known.
fn read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

struct Job<'a> {
    kind: Kind,
    dir: &'a std::path::Path,
    storage: Arc<CheckpointStorage>,
}

impl Job<'_> {
    fn build(&self, range: KeyGroupRange) -> Result<Backend> {
        let config = KeyedBackendConfig::new(range, MAX_PARALLELISM);
        Ok(match self.kind {
            Kind::Heap => Backend::Heap(Box::new(HeapBackend::new(config)?)),
            Kind::Rocks(mode) => Backend::Rocks(Box::new(RocksDbBackend::new(
                config,
                rocks_options(self.dir, mode, false),
            )?)),
        })
    }

    async fn restore(
        &self,
        range: KeyGroupRange,
        handles: &[KeyedStateHandle],
        reader: &dyn StateReader,
    ) -> Result<Backend> {
        let config = KeyedBackendConfig::new(range, MAX_PARALLELISM);
        Ok(match self.kind {
            Kind::Heap => Backend::Heap(Box::new(HeapBackend::restore(config, handles, reader).await?)),
            Kind::Rocks(mode) => Backend::Rocks(Box::new(
                RocksDbBackend::restore(config, handles, reader, rocks_options(self.dir, mode, false)).await?,
            )),
        })
    }

    /// Writes the state at parallelism `p` (checkpoint 1, and for
    /// incremental RocksDB N/100 updates and checkpoint 2); returns the
    /// pointer of the last checkpoint and the expected values.
    async fn write(&self, p: u32, keys: u64, groups: &[u32]) -> Result<(String, Vec<Vec<u8>>)> {
        let name = self.kind.name();
        let mut backends = Vec::new();
        for i in 0..p {
            let mut b = self.build(KeyGroupRange::for_operator(MAX_PARALLELISM, p, i)?)?;
            let s = with!(&mut b, x => x.register(descriptor())?);
            backends.push((b, s));
        }
        let owner = |k: u64| operator_index_for_key_group(MAX_PARALLELISM, p, groups[k as usize]) as usize;
        let mut rng = XorShift::new(42);
        let mut expected = Vec::with_capacity(keys as usize);
        let started = Instant::now();
        for k in 0..keys {
            let v = value(&mut rng);
            let (b, s) = &mut backends[owner(k)];
            with!(b, x => { x.set_current_key(&k)?; x.update(s, &v)?; });
            expected.push(v);
        }
        emit(
            "W3",
            name,
            &format!("w3.p{p}.load_ms"),
            started.elapsed().as_secs_f64() * 1e3,
            "ms",
        );
        let mut pointer = self.checkpoint(&mut backends, 1, p).await?;
        if self.kind == Kind::Rocks(RocksMode::Incremental) {
            for _ in 0..keys / 100 {
                let k = rng.next_u64() % keys;
                let v = value(&mut rng);
                let (b, s) = &mut backends[owner(k)];
                with!(b, x => { x.set_current_key(&k)?; x.update(s, &v)?; });
                expected[k as usize] = v;
            }
            pointer = self.checkpoint(&mut backends, 2, p).await?;
        }
        let resolved = self.storage.resolve(&pointer).await?;
        let size: u64 = resolved.metadata.operators[0]
            .keyed
            .iter()
            .map(|h| h.state_size())
            .sum();
        emit("W3", name, &format!("w3.p{p}.ckpt_bytes"), size as f64, "bytes");
        Ok((pointer, expected))
    }

    /// Checkpoint `id` of every subtask, completed; returns its pointer.
    async fn checkpoint(&self, backends: &mut [(Backend, ValueState<Vec<u8>>)], id: u64, p: u32) -> Result<String> {
        let location = self.storage.init_checkpoint(id).await?;
        let mut handles = Vec::new();
        for (b, _) in backends.iter_mut() {
            let pending = with!(b, x => x.snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())?);
            handles.push(pending.await?.handle);
        }
        let metadata = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
            "w3",
            p,
            MAX_PARALLELISM,
            handles,
        ));
        let pointer = location.write_metadata(&metadata).await?;
        for (b, _) in backends.iter_mut() {
            with!(b, x => x.notify_checkpoint_complete(id)?);
        }
        Ok(pointer)
    }

    /// Restores `pointer` at parallelism `p_new`, one subtask after the
    /// other, and checks each; emits the case's figures.
    async fn rescale(&self, case: &str, pointer: &str, p_new: u32, groups: &[u32], expected: &[Vec<u8>]) -> Result<()> {
        let name = self.kind.name();
        let resolved = self.storage.resolve(pointer).await?;
        let handles = &resolved.metadata.operators[0].keyed;
        let (mut slowest, mut sum, mut read, mut handle_bytes) = (0f64, 0f64, 0u64, 0u64);
        for j in 0..p_new {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, p_new, j)?;
            let mine: Vec<KeyedStateHandle> = handles
                .iter()
                .filter(|h| !h.key_group_range().intersect(&range).is_empty())
                .cloned()
                .collect();
            handle_bytes += mine.iter().map(|h| h.state_size()).sum::<u64>();
            let owned = |k: u64| range.contains(groups[k as usize]);
            let probe = (0..expected.len() as u64)
                .filter(|&k| owned(k))
                .min_by_key(|&k| k)
                .ok_or_else(|| Error::internal(format!("{case}: subtask {j} owns no key")))?;
            let before = read_bytes();
            let started = Instant::now();
            let mut b = self.restore(range, &mine, &*resolved.reader).await?;
            let s = with!(&mut b, x => x.register(descriptor())?);
            let got = with!(&mut b, x => { x.set_current_key(&probe)?; x.value(&s)? });
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if let (Some(a), Some(b)) = (before, read_bytes()) {
                read += b.saturating_sub(a);
            }
            if got.as_ref() != Some(&expected[probe as usize]) {
                return Err(Error::internal(format!(
                    "{case}: subtask {j}: probe key {probe} differs"
                )));
            }
            emit("W3", name, &format!("w3.{case}.sub{j}.restore_ms"), ms, "ms");
            slowest = slowest.max(ms);
            sum += ms;
            // Untimed: 10,000 sampled keys and the key count.
            let mut check = XorShift::new(7);
            let mut checked = 0;
            while checked < 10_000 {
                let k = check.next_u64() % expected.len() as u64;
                if !owned(k) {
                    continue;
                }
                let got = with!(&mut b, x => { x.set_current_key(&k)?; x.value(&s)? });
                if got.as_ref() != Some(&expected[k as usize]) {
                    return Err(Error::internal(format!("{case}: subtask {j}: key {k} differs")));
                }
                checked += 1;
            }
            let want = (0..expected.len() as u64).filter(|&k| owned(k)).count() as u64;
            let count = with!(&mut b, x => x.entry_count(&s)?);
            if count != want {
                return Err(Error::internal(format!(
                    "{case}: subtask {j} holds {count} keys, not its {want}"
                )));
            }
        }
        emit("W3", name, &format!("w3.{case}.restore_ms"), slowest, "ms");
        emit("W3", name, &format!("w3.{case}.restore_sum_ms"), sum, "ms");
        emit("W3", name, &format!("w3.{case}.read_bytes"), read as f64, "bytes");
        emit(
            "W3",
            name,
            &format!("w3.{case}.handle_bytes"),
            handle_bytes as f64,
            "bytes",
        );
        emit("W3", name, &format!("w3.{case}.correct"), 1.0, "bool");
        Ok(())
    }
}

async fn run_kind(kind: Kind, keys: u64, groups: &[u32]) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let job = Job {
        kind,
        dir: dir.path(),
        storage: Arc::new(flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "w3")?),
    };
    let (pointer, expected) = job.write(2, keys, groups).await?;
    job.rescale("2to3", &pointer, 3, groups, &expected).await?;
    job.rescale("2to1", &pointer, 1, groups, &expected).await?;
    // A new job at parallelism 3, in a new storage.
    drop(job);
    let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
    let job = Job {
        kind,
        dir: dir.path(),
        storage: Arc::new(flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "w3")?),
    };
    let (pointer, expected) = job.write(3, keys, groups).await?;
    job.rescale("3to2", &pointer, 2, groups, &expected).await
}

/// Runs W3 with `keys` keys on every backend (or those named by `only`).
pub fn run(keys: u64, only: Option<&str>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("runtime: {e}")))?;
    let groups = (0..keys).map(key_group).collect::<Result<Vec<u32>>>()?;
    for kind in [
        Kind::Rocks(RocksMode::Full),
        Kind::Rocks(RocksMode::Incremental),
        Kind::Heap,
    ] {
        let wanted = match only {
            None => true,
            Some("heap") => kind == Kind::Heap,
            Some("rocksdb") => kind != Kind::Heap,
            Some(other) => other == kind.name(),
        };
        if wanted {
            rt.block_on(run_kind(kind, keys, &groups))?;
        }
    }
    Ok(())
}
