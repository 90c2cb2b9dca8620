//! The demo's two-phase-commit sink of window results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flowstate_api::runtime::run_blocking;
use flowstate_api::{Error, Result};

/// Window results: (user, window) → sum of amounts.
pub(crate) type WindowResults = HashMap<(u64, i64), u64>;

/// The sink of window results: what a checkpoint's sync phase has seen is
/// committed once that checkpoint completes (a two-phase-commit sink), so
/// after a crash nothing is emitted twice or lost.
/// With a directory, the sink is durable: a checkpoint's results are
/// written to `pending-<id>` before the checkpoint completes and renamed to
/// `committed-<id>` after, so a killed process loses none and repeats none.
#[derive(Default)]
pub(crate) struct Sink {
    /// Results fired since the last checkpoint's sync phase.
    pub(crate) pending: Vec<((u64, i64), u64)>,
    /// Results of completed checkpoints.
    pub(crate) committed: WindowResults,
    /// Results committed twice (an exactly-once failure).
    pub(crate) duplicates: u64,
    dir: Option<PathBuf>,
}

impl Sink {
    /// A sink whose transactions are files in `dir` (made if missing).
    pub(crate) async fn durable(dir: PathBuf) -> Result<Self> {
        let d = dir.clone();
        run_blocking(move || std::fs::create_dir_all(&d).map_err(|e| Error::io(d.display(), e))).await?;
        Ok(Sink {
            dir: Some(dir),
            ..Sink::default()
        })
    }

    fn file(&self, what: &str, id: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{what}-{id}")))
    }

    /// First phase, before checkpoint `id` completes: its results are made
    /// durable.
    pub(crate) async fn pre_commit(&mut self, id: u64) -> Result<()> {
        let Some(path) = self.file("pending", id) else {
            return Ok(());
        };
        let mut text = String::new();
        for ((user, window), sum) in &self.pending {
            text.push_str(&format!("{user} {window} {sum}\n"));
        }
        write_synced(path, text.into_bytes()).await
    }

    /// Second phase, once checkpoint `id` completed.
    pub(crate) async fn commit(&mut self, id: u64) -> Result<()> {
        for (k, v) in self.pending.drain(..) {
            if self.committed.insert(k, v).is_some() {
                self.duplicates += 1;
            }
        }
        if let (Some(from), Some(to)) = (self.file("pending", id), self.file("committed", id)) {
            run_blocking(move || std::fs::rename(&from, &to).map_err(|e| Error::io(from.display(), e))).await?;
        }
        Ok(())
    }

    /// Checkpoint `id` failed: its first phase is undone (its results stay
    /// pending for the next checkpoint).
    pub(crate) async fn abort(&mut self, id: u64) {
        if let Some(path) = self.file("pending", id) {
            let _ = run_blocking(move || {
                let _ = std::fs::remove_file(path);
                Ok(())
            })
            .await;
        }
    }

    /// The durable sink of `dir` after a restore of checkpoint `restored`
    /// (`None`: none completed): transactions of checkpoints up to it are
    /// committed (one may have completed without its second phase), later
    /// ones dropped.
    pub(crate) async fn recover(dir: PathBuf, restored: Option<u64>) -> Result<Self> {
        let mut sink = Sink::durable(dir.clone()).await?;
        let d = dir.clone();
        let files = run_blocking(move || transactions(&d)).await?;
        for (id, committed, path) in files {
            if !committed && restored.is_none_or(|r| id > r) {
                let _ = run_blocking(move || {
                    let _ = std::fs::remove_file(&path);
                    Ok(())
                })
                .await;
                continue;
            }
            let p = path.clone();
            let text = run_blocking(move || std::fs::read_to_string(&p).map_err(|e| Error::io(p.display(), e))).await?;
            for line in text.lines() {
                let mut f = line.split(' ').map(str::parse::<i64>);
                let (Some(Ok(user)), Some(Ok(window)), Some(Ok(sum)), None) = (f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(Error::corrupted(format!("{}: bad line {line:?}", path.display())));
                };
                if sink.committed.insert((user as u64, window), sum as u64).is_some() {
                    sink.duplicates += 1;
                }
            }
            if !committed {
                sink.commit(id).await?;
            }
        }
        Ok(sink)
    }
}

/// The transaction files in `dir`, `(checkpoint id, committed, path)`, by id.
fn transactions(dir: &Path) -> Result<Vec<(u64, bool, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let parsed = name
            .strip_prefix("committed-")
            .map(|n| (n, true))
            .or_else(|| name.strip_prefix("pending-").map(|n| (n, false)));
        if let Some((id, committed)) = parsed.and_then(|(n, c)| n.parse::<u64>().ok().map(|id| (id, c))) {
            files.push((id, committed, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `data` to a new file at `path` and syncs it, off the async
/// threads.
pub(crate) async fn write_synced(path: PathBuf, data: Vec<u8>) -> Result<()> {
    run_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
        f.write_all(&data).map_err(|e| Error::io(path.display(), e))?;
        f.sync_all().map_err(|e| Error::io(path.display(), e))
    })
    .await
}
