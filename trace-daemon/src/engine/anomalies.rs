//! Things in the input that were not as they should be, counted, never hidden.
use std::collections::BTreeMap;

use serde::Serialize;
use trace_common::LockClass;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Anomalies {
    /// Timestamps going backwards (beyond per-CPU reordering).
    pub out_of_order: u64,
    /// Objects first seen mid-life (their creation not observed).
    pub unseen_creation: u64,
    /// Lock releases of locks the thread was not seen to take, though the
    /// lock had been seen before: a missed acquire. By lock class below.
    pub unmatched_release: u64,
    pub unmatched_release_by_class: BTreeMap<String, u64>,
    /// Not an anomaly: releases of a lock whose first event is that release.
    /// It was taken before kvscope watched it (the open path registers
    /// group_lock and dev_set->lock inside their critical section) or before
    /// the capture began. By lock class.
    pub taken_before_watched: BTreeMap<String, u64>,
}

impl Anomalies {
    /// A release of a lock the thread was not seen taking; `first`: the
    /// release is the first event of that lock.
    pub fn release_unseen(&mut self, class: LockClass, first: bool) {
        let class = class.name().to_owned();
        if first {
            *self.taken_before_watched.entry(class).or_default() += 1;
        } else {
            self.unmatched_release += 1;
            *self.unmatched_release_by_class.entry(class).or_default() += 1;
        }
    }
}
