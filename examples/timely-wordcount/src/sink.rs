//! The two-phase-commit sink of window results, as files.
//!
//! When a worker's sink sees a barrier pass, it writes the results fired up
//! to that epoch to `txn-<epoch>-w<worker>.pending` and syncs it (pre-commit,
//! part of the checkpoint's synchronous phase). Once the checkpoint has
//! completed, the coordinator renames every worker's file of that epoch to
//! `….committed` (commit). On recovery, pending files of checkpoints up to
//! the restored one are committed (the job died between completion and
//! commit) and later ones deleted (their checkpoint never completed, and
//! the replay produces their results again).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flowstate_api::{Error, Result};

/// One window result: events of `word` in the window starting at `window`.
pub type WindowResult = (String, i64, u64);

const PENDING: &str = "pending";
const COMMITTED: &str = "committed";

/// The file of worker `worker`'s transaction for checkpoint `epoch`.
pub fn txn_file(dir: &Path, epoch: u64, worker: usize, state: &str) -> PathBuf {
    dir.join(format!("txn-{epoch:08}-w{worker:03}.{state}"))
}

/// Pre-commits `results` as worker `worker`'s transaction of checkpoint
/// `epoch`: written and synced, not yet visible as output. Returns the file.
pub fn pre_commit(dir: &Path, epoch: u64, worker: usize, results: &[WindowResult]) -> Result<PathBuf> {
    let path = txn_file(dir, epoch, worker, PENDING);
    let mut text = String::with_capacity(results.len() * 16);
    for (word, window, count) in results {
        text.push_str(&format!("{word} {window} {count}\n"));
    }
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(path.display(), e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path.display(), e))?;
    f.sync_all().map_err(|e| Error::io(path.display(), e))?;
    Ok(path)
}

/// Commits a pre-committed transaction file (its checkpoint completed).
/// A file already committed (by a recovery) is left as it is.
pub fn commit(pending: &Path) -> Result<()> {
    let committed = pending.with_extension(COMMITTED);
    match std::fs::rename(pending, &committed) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && committed.exists() => Ok(()),
        Err(e) => Err(Error::io(pending.display(), e)),
    }
}

/// A transaction file found in the sink's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TxnFile {
    epoch: u64,
    committed: bool,
    path: PathBuf,
}

fn transactions(dir: &Path) -> Result<Vec<TxnFile>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("txn-") else {
            continue;
        };
        let Some((epoch, rest)) = rest.split_once('-') else {
            continue;
        };
        let Ok(epoch) = epoch.parse::<u64>() else { continue };
        let committed = if rest.ends_with(&format!(".{COMMITTED}")) {
            true
        } else if rest.ends_with(&format!(".{PENDING}")) {
            false
        } else {
            continue;
        };
        out.push(TxnFile {
            epoch,
            committed,
            path: entry.path(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Brings the sink in line with the checkpoint a job restarts from
/// (`None`: none): pending transactions of checkpoints up to it are
/// committed, later ones deleted. Committed output newer than it is
/// refused: it would be produced twice. Returns (committed, deleted).
pub fn recover(dir: &Path, restored: Option<u64>) -> Result<(usize, usize)> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let (mut committed, mut deleted) = (0, 0);
    for t in transactions(dir)? {
        let covered = restored.is_some_and(|r| t.epoch <= r);
        match (t.committed, covered) {
            (true, true) => {}
            (true, false) => {
                return Err(Error::corrupted(format!(
                    "{}: committed output of checkpoint {}, newer than the checkpoint the job restarts from ({}); \
                     the sink and the checkpoint storage do not belong together",
                    t.path.display(),
                    t.epoch,
                    restored.map_or("none".to_string(), |r| r.to_string())
                )))
            }
            (false, true) => {
                commit(&t.path)?;
                committed += 1;
            }
            (false, false) => {
                std::fs::remove_file(&t.path).map_err(|e| Error::io(t.path.display(), e))?;
                deleted += 1;
            }
        }
    }
    Ok((committed, deleted))
}

/// Everything committed: `(word, window)` → count, and how many results
/// were committed more than once (an exactly-once failure), with the
/// number of pending transactions left.
#[derive(Debug, Default)]
pub struct Committed {
    /// Results by `(word, window start)`.
    pub results: BTreeMap<(String, i64), u64>,
    /// Results committed a second time.
    pub duplicates: u64,
    /// Transactions pre-committed and never committed.
    pub pending: usize,
    /// Committed transaction files.
    pub files: usize,
}

/// Reads the sink's committed output.
pub fn read_committed(dir: &Path) -> Result<Committed> {
    let mut out = Committed::default();
    for t in transactions(dir)? {
        if !t.committed {
            out.pending += 1;
            continue;
        }
        out.files += 1;
        let text = std::fs::read_to_string(&t.path).map_err(|e| Error::io(t.path.display(), e))?;
        for line in text.lines() {
            let mut f = line.split(' ');
            let parsed = match (f.next(), f.next(), f.next(), f.next()) {
                (Some(word), Some(window), Some(count), None) => window
                    .parse::<i64>()
                    .ok()
                    .zip(count.parse::<u64>().ok())
                    .map(|wc| (word, wc)),
                _ => None,
            };
            let Some((word, (window, count))) = parsed else {
                return Err(Error::corrupted(format!("{}: bad line {line:?}", t.path.display())));
            };
            if out.results.insert((word.to_string(), window), count).is_some() {
                out.duplicates += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_commits_what_the_restored_checkpoint_covers_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let r = |w: &str| vec![(w.to_string(), 0, 1)];
        let p3 = pre_commit(d, 3, 0, &r("a")).unwrap();
        commit(&p3).unwrap();
        pre_commit(d, 5, 0, &r("b")).unwrap();
        pre_commit(d, 5, 1, &r("c")).unwrap();
        pre_commit(d, 7, 0, &r("d")).unwrap();
        assert_eq!(recover(d, Some(5)).unwrap(), (2, 1));
        let c = read_committed(d).unwrap();
        assert_eq!(c.files, 3);
        assert_eq!(c.pending, 0);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.results.len(), 3);
        assert!(!c.results.contains_key(&("d".to_string(), 0)));
    }

    #[test]
    fn committed_output_newer_than_the_restored_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = pre_commit(dir.path(), 9, 0, &[]).unwrap();
        commit(&p).unwrap();
        let e = recover(dir.path(), Some(4)).unwrap_err();
        assert!(e.to_string().contains("txn-00000009-w000.committed"), "{e}");
    }

    #[test]
    fn a_result_committed_twice_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        for w in 0..2 {
            let p = pre_commit(dir.path(), 2, w, &[("x".to_string(), 0, 4)]).unwrap();
            commit(&p).unwrap();
        }
        assert_eq!(read_committed(dir.path()).unwrap().duplicates, 1);
    }
}
