//! Lost events per hook across attach sessions. Each attach (after a module
//! change) starts the kernel's counters at 0 again; the totals a recording
//! writes and the daemon exports only ever rise by what was lost.
use std::collections::BTreeMap;

use trace_common::HookId;

#[derive(Default)]
pub struct LostTotals {
    /// The current session's counts as last read.
    now: BTreeMap<HookId, u64>,
    /// The sum over the sessions before it.
    before: BTreeMap<HookId, u64>,
}

impl LostTotals {
    /// The current session's counters as just read; the totals per hook.
    pub fn update(&mut self, lost: &[(HookId, u64)]) -> BTreeMap<HookId, u64> {
        for (h, n) in lost {
            self.now.insert(*h, *n);
        }
        self.totals()
    }

    pub fn totals(&self) -> BTreeMap<HookId, u64> {
        let mut m = self.before.clone();
        for (h, n) in &self.now {
            *m.entry(*h).or_default() += n;
        }
        m
    }

    /// The session ended (a module change): its last counts join those
    /// before, and the next session's counters start from there.
    pub fn session_ended(&mut self) {
        for (h, n) in std::mem::take(&mut self.now) {
            *self.before.entry(h).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sessions' counters, each from 0: the totals never go down.
    #[test]
    fn totals_carry_across_sessions() {
        let (a, b) = (HookId::KvmGetKvm, HookId::KvmPutKvm);
        let mut t = LostTotals::default();
        assert_eq!(t.update(&[(a, 3)]), BTreeMap::from([(a, 3)]));
        assert_eq!(
            t.update(&[(a, 5), (b, 1)]),
            BTreeMap::from([(a, 5), (b, 1)])
        );
        t.session_ended();
        assert_eq!(t.totals(), BTreeMap::from([(a, 5), (b, 1)]));
        assert_eq!(t.update(&[(a, 2)]), BTreeMap::from([(a, 7), (b, 1)]));
    }
}
