//! The shared-state registry: which retained checkpoints reference which
//! files.

use std::collections::{BTreeSet, HashMap, HashSet};

/// Counts, per file, the retained checkpoints that reference it. A file is
/// deleted only when its last reference is released, and never if it is
/// protected (it belongs to a checkpoint restored in no-claim mode).
#[derive(Debug, Default, Clone)]
pub struct SharedStateRegistry {
    refs: HashMap<String, BTreeSet<u64>>,
    protected: HashSet<String>,
}

impl SharedStateRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that checkpoint `checkpoint_id` references `paths`.
    pub fn register(&mut self, checkpoint_id: u64, paths: &[String]) {
        for p in paths {
            self.refs.entry(p.clone()).or_default().insert(checkpoint_id);
        }
    }

    /// Releases checkpoint `checkpoint_id`'s references to `paths`; returns
    /// those no checkpoint references any more and that are not protected:
    /// the files to delete.
    pub fn release(&mut self, checkpoint_id: u64, paths: &[String]) -> Vec<String> {
        let mut free = Vec::new();
        for p in paths {
            if let Some(ids) = self.refs.get_mut(p) {
                ids.remove(&checkpoint_id);
                if ids.is_empty() {
                    self.refs.remove(p);
                    if !self.protected.contains(p) {
                        free.push(p.clone());
                    }
                }
            }
        }
        free
    }

    /// True if a retained checkpoint references `path`.
    pub(super) fn is_referenced(&self, path: &str) -> bool {
        self.refs.contains_key(path)
    }

    /// How many retained checkpoints reference `path`.
    pub fn references(&self, path: &str) -> usize {
        self.refs.get(path).map_or(0, BTreeSet::len)
    }

    /// Marks `paths` as never to be deleted.
    pub fn protect(&mut self, paths: impl IntoIterator<Item = String>) {
        self.protected.extend(paths);
    }

    /// True if `path` may never be deleted.
    pub fn is_protected(&self, path: &str) -> bool {
        self.protected.contains(path)
    }

    /// True if `path` is referenced or protected.
    pub fn is_live(&self, path: &str) -> bool {
        self.refs.contains_key(path) || self.protected.contains(path)
    }

    /// Number of referenced files.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// True when no file is referenced.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}
