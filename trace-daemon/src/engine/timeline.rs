//! A bounded per-object timeline: the newest `cap` steps are kept, the older
//! ones folded into a summary (how many, net count change), never silently lost.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    /// What happened (`vm-get`, `vm-put`, `inferred-get`, `fd-close`, ...).
    pub what: String,
    /// Kernel site, for observed steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Change of the count this step stands for (0 for observations).
    pub delta: i32,
    /// The count after this step, as read from the kernel (or derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_after: Option<i32>,
    /// Who holds (or gave back) the reference, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// A change no observed event explains, shown rather than hidden.
    pub inferred: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    /// Seen as the hook returned: the stack starts at its caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_return: bool,
    /// On a device's timeline, the VM the step concerns.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::hexaddr::opt"
    )]
    pub vm: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub steps: VecDeque<Step>,
    /// Steps folded away because of the cap.
    pub folded: u64,
    /// Sum of their deltas.
    pub folded_delta: i64,
}

impl Timeline {
    pub fn push(&mut self, cap: usize, s: Step) {
        self.steps.push_back(s);
        while self.steps.len() > cap.max(1) {
            if let Some(old) = self.steps.pop_front() {
                self.folded += 1;
                self.folded_delta += old.delta as i64;
            }
        }
    }

    /// The count after each kept step that changed it, oldest first.
    pub fn counts_after_changes(&self) -> Vec<i32> {
        self.steps
            .iter()
            .filter(|s| s.delta != 0)
            .filter_map(|s| s.count_after)
            .collect()
    }

    /// Each kept step with the count standing after it: the one it read, or,
    /// for a step that reads none, the last one read before it (None until
    /// the first read).
    pub fn counted(&self) -> impl Iterator<Item = (&Step, Option<i32>)> {
        self.steps.iter().scan(None, |last, s| {
            *last = s.count_after.or(*last);
            Some((s, *last))
        })
    }

    pub fn last_mut(&mut self) -> Option<&mut Step> {
        self.steps.back_mut()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(delta: i32) -> Step {
        Step {
            ts_ns: 0,
            pid: 1,
            comm: "t".into(),
            what: "x".into(),
            hook: None,
            delta,
            count_after: None,
            holder: None,
            inferred: false,
            stack_id: None,
            at_return: false,
            vm: None,
        }
    }

    #[test]
    fn a_step_without_a_read_shows_the_last_count_read() {
        let mut t = Timeline::default();
        for c in [None, Some(2), None, Some(1), None] {
            t.push(
                10,
                Step {
                    count_after: c,
                    ..step(0)
                },
            );
        }
        let shown: Vec<Option<i32>> = t.counted().map(|(_, c)| c).collect();
        assert_eq!(shown, [None, Some(2), Some(2), Some(1), Some(1)]);
    }

    #[test]
    fn cap_folds_oldest_into_summary() {
        let mut t = Timeline::default();
        for d in [1, 1, -1, 1, -1] {
            t.push(3, step(d));
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.folded, 2);
        assert_eq!(t.folded_delta, 2);
        let kept: i64 = t.steps.iter().map(|s| s.delta as i64).sum();
        assert_eq!(kept + t.folded_delta, 1, "nothing lost from the net count");
    }
}
