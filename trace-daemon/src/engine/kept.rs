//! The findings kept: the newest `max_findings`, oldest first, readable as one
//! slice, a repeat counted on the finding it repeats. Evicted findings leave
//! the slice at once but their memory is reclaimed in batches: a `VecDeque`
//! made contiguous after every eviction moved the whole buffer each time (a
//! tenth of replay's time once the cap was reached).
use super::{fast_hash::FastMap, finding::Finding};

#[derive(Default)]
pub struct KeptFindings {
    /// `v[start..]` are kept; `v[..start]` are evicted, awaiting compaction.
    v: Vec<Finding>,
    start: usize,
    /// Key -> sequence number of the finding (kept index = seq - dropped).
    by_key: FastMap<String, u64>,
    /// Findings evicted by the cap so far.
    pub dropped: u64,
}

impl KeptFindings {
    pub fn as_slice(&self) -> &[Finding] {
        &self.v[self.start..]
    }

    /// Adds a finding, or counts a repeat of one already kept. Returns it when
    /// new. At most `cap` (at least 1) are kept, the oldest evicted first.
    pub fn record(&mut self, f: Finding, cap: usize) -> Option<Finding> {
        let key = f.key();
        if let Some(&seq) = self.by_key.get(&key) {
            let old = &mut self.v[self.start + (seq - self.dropped) as usize];
            old.count += 1;
            old.last_ns = old.last_ns.max(f.last_ns);
            return None;
        }
        let seq = self.dropped + self.as_slice().len() as u64;
        self.by_key.insert(key, seq);
        self.v.push(f.clone());
        while self.as_slice().len() > cap.max(1) {
            let old_key = self.v[self.start].key();
            self.by_key.remove(&old_key);
            self.start += 1;
            self.dropped += 1;
        }
        // Reclaim once the evicted are as many as the kept: amortised O(1).
        if self.start > 0 && self.start >= self.as_slice().len() {
            self.v.drain(..self.start);
            self.start = 0;
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{engine::evidence::ObjRef, event::Event};
    use trace_common::HookId;

    /// get-after-zero on VM `vm` at `t`: its key names the VM.
    fn finding(vm: u64, t: u64) -> Finding {
        let mut a = trace_common::Event::ZERO;
        a.abi = trace_common::ABI_VERSION;
        a.hook = HookId::KvmGetKvm as u16;
        a.ts_ns = t;
        let e = Event::decode(&a).unwrap();
        let vm = ObjRef {
            addr: vm,
            generation: 1,
        };
        Finding::get_after_zero(&e, vm, false, Vec::new())
    }

    #[test]
    fn keeps_the_newest_and_counts_repeats_across_compactions() {
        let mut k = KeptFindings::default();
        for i in 0..1000u64 {
            assert!(k.record(finding(i, i), 3).is_some());
            // A repeat of one still kept is counted on it, not added.
            assert!(k.record(finding(i, i + 1), 3).is_none());
            let s = k.as_slice();
            assert!(s.len() <= 3);
            assert_eq!(s.last().unwrap().count, 2);
            assert_eq!(s.last().unwrap().last_ns, i + 1);
        }
        let firsts: Vec<u64> = k.as_slice().iter().map(|f| f.first_ns).collect();
        assert_eq!(firsts, vec![997, 998, 999]);
        assert_eq!(k.dropped, 997);
        // Memory is reclaimed: never more evicted than kept.
        assert!(k.v.len() <= 2 * 3);
        // A repeat of the newest still lands on it after compactions.
        assert!(k.record(finding(999, 5000), 3).is_none());
        assert_eq!(k.as_slice()[2].last_ns, 5000);
        // An evicted finding raised again is new again.
        assert!(k.record(finding(0, 2000), 3).is_some());
    }
}
