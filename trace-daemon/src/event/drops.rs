//! What the kernel-side programs gave up on besides a full ring (`LOST`):
//! stacks they could not take, entry arguments they could not stash, watched
//! locks the LRU map evicted. Read from the `DROPS` map, recorded, reported
//! and exported, so that none of it is silent.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drops {
    /// Events sent without their stack (bpf_get_stackid failed), by hook.
    pub stack_id_failed: BTreeMap<String, u64>,
    /// Calls whose exit was lost because ARG_STASH was full, by hook (these
    /// lost events are also in the lost counts).
    pub stash_full: BTreeMap<String, u64>,
    /// Watched locks evicted from the WATCHED LRU map (no longer watched:
    /// their lock events are missed).
    pub watched_evicted: u64,
    /// Entries ever added to WATCHED (kernel and user space), for scale.
    pub watched_added: u64,
}

impl Drops {
    pub fn is_empty(&self) -> bool {
        self.stack_id_failed.is_empty() && self.stash_full.is_empty() && self.watched_evicted == 0
    }

    /// One line, for reports and stderr ("none" when nothing was dropped: a
    /// frame is also written when only the count of watched locks changed).
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return format!("none ({} watched locks added)", self.watched_added);
        }
        let by_hook = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(h, n)| format!("{h}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut parts = Vec::new();
        if !self.stack_id_failed.is_empty() {
            let n: u64 = self.stack_id_failed.values().sum();
            parts.push(format!(
                "{n} events without their stack ({})",
                by_hook(&self.stack_id_failed)
            ));
        }
        if !self.stash_full.is_empty() {
            let n: u64 = self.stash_full.values().sum();
            parts.push(format!(
                "{n} exits lost to a full argument stash ({})",
                by_hook(&self.stash_full)
            ));
        }
        if self.watched_evicted > 0 {
            parts.push(format!(
                "{} watched locks evicted of {} added (their lock events are missed)",
                self.watched_evicted, self.watched_added
            ));
        }
        parts.join("; ")
    }
}
