//! A bounded per-object timeline: the newest `cap` steps are kept, the older
//! ones folded into a summary (how many, net count change), never silently lost.
use std::collections::VecDeque;

use serde::Serialize;
use trace_common::HookId;

use super::holder::Holder;
use crate::event::Comm;

/// What a step of a timeline stands for. On a VM's timeline the count is
/// `users_count`; on a device's, `open_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    // A VM's timeline.
    Created,
    KvmVfioCreated,
    Get,
    GetSafeFailed,
    Put,
    Destroyed,
    VmFdRelease,
    KvmVfioRelease,
    /// A vCPU or stats fd's release: the put that follows is its reference.
    HolderFdRelease,
    /// A tracked fd duplicated: one more fd holds the same file.
    FdDup,
    /// A tracked fd inherited by a forked child: one more fd, in the child.
    FdInherited,
    /// A tracked kind's fd given to a process (SCM_RIGHTS, pidfd_getfd):
    /// one more fd, in the receiver.
    FdReceived,
    VmFdClose,
    KvmVfioFdClose,
    DeviceOpen,
    DeviceRelease,
    DeviceClose,
    FileLink,
    FileUnlink,
    /// Changes of the count that no probe saw, shown rather than hidden.
    InferredGet,
    InferredPut,
    /// Tier 3: the last close at count 1 ends the VM.
    InferredDestroy,
    /// Tier 3: the exit of the VM's process closed its fds.
    InferredDestroyAtExit,
    /// A new VM was created at this VM's address: this one had ended unseen.
    InferredDestroyReused,
    /// Tier 3: a vCPU or stats fd was created; its file holds a VM reference.
    FdHolderCreated,
    /// Tier 3: the creator exec'd (its O_CLOEXEC fds closed unseen): the
    /// VM's state is unknown from here until the process exits.
    Exec,
    // A device's timeline.
    Open,
    Release,
    Close,
    VfioGetKvm,
    // Both.
    VfioPutKvm,
    FdClose,
}

impl StepKind {
    /// The name in text and JSON (stable: reports and scripts read it).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Created => "created",
            StepKind::KvmVfioCreated => "kvm-vfio-created",
            StepKind::Get => "get",
            StepKind::GetSafeFailed => "get-safe-failed",
            StepKind::Put => "put",
            StepKind::Destroyed => "destroyed",
            StepKind::VmFdRelease => "vm-fd-release",
            StepKind::KvmVfioRelease => "kvm-vfio-release",
            StepKind::HolderFdRelease => "fd-release",
            StepKind::FdDup => "fd-dup",
            StepKind::FdInherited => "fd-inherited",
            StepKind::FdReceived => "fd-received",
            StepKind::VmFdClose => "vm-fd-close",
            StepKind::KvmVfioFdClose => "kvm-vfio-fd-close",
            StepKind::DeviceOpen => "device-open",
            StepKind::DeviceRelease => "device-release",
            StepKind::DeviceClose => "device-close",
            StepKind::FileLink => "file-link",
            StepKind::FileUnlink => "file-unlink",
            StepKind::InferredGet => "inferred-get",
            StepKind::InferredPut => "inferred-put",
            StepKind::InferredDestroy => "inferred-destroy",
            StepKind::InferredDestroyAtExit => "inferred-destroy (process exit closed its fds)",
            StepKind::InferredDestroyReused => {
                "inferred-destroy (a new VM was created at its address)"
            }
            StepKind::FdHolderCreated => "fd-created",
            StepKind::Exec => "exec (its O_CLOEXEC fds closed unseen; state unknown)",
            StepKind::Open => "open",
            StepKind::Release => "release",
            StepKind::Close => "close",
            StepKind::VfioGetKvm => "vfio-get-kvm",
            StepKind::VfioPutKvm => "vfio-put-kvm",
            StepKind::FdClose => "fd-close",
        }
    }

    /// No probe saw it: the engine deduced it from the counts it read.
    pub fn is_inferred(self) -> bool {
        matches!(
            self,
            StepKind::InferredGet
                | StepKind::InferredPut
                | StepKind::InferredDestroy
                | StepKind::InferredDestroyAtExit
                | StepKind::InferredDestroyReused
        )
    }

    /// The end of the VM, seen or inferred.
    pub fn is_destroy(self) -> bool {
        matches!(
            self,
            StepKind::Destroyed
                | StepKind::InferredDestroy
                | StepKind::InferredDestroyAtExit
                | StepKind::InferredDestroyReused
        )
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
    pub kind: StepKind,
    /// Kernel site, for observed steps.
    pub hook: Option<HookId>,
    /// Change of the count this step stands for (0 for observations).
    pub delta: i32,
    /// The count after this step, as read from the kernel (or derived from it).
    pub count_after: Option<i32>,
    /// Who holds (or gave back) the reference, when known.
    pub holder: Option<Holder>,
    pub stack_id: Option<u32>,
    /// Seen as the hook returned: the stack starts at its caller.
    pub at_return: bool,
    /// On a device's timeline, the VM the step concerns.
    pub vm: Option<u64>,
}

impl Step {
    pub fn inferred(&self) -> bool {
        self.kind.is_inferred()
    }
}

/// The JSON of a step (the field names scripts read: `what`, `inferred`).
#[derive(Serialize)]
struct StepJson<'a> {
    ts_ns: u64,
    pid: u32,
    comm: &'a Comm,
    what: &'static str,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::event::hook_symbol::opt"
    )]
    hook: &'a Option<HookId>,
    delta: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    count_after: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
    inferred: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_id: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    at_return: bool,
    #[serde(skip_serializing_if = "Option::is_none", with = "crate::hexaddr::opt")]
    vm: Option<u64>,
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StepJson {
            ts_ns: self.ts_ns,
            pid: self.pid,
            comm: &self.comm,
            what: self.kind.name(),
            hook: &self.hook,
            delta: self.delta,
            count_after: self.count_after,
            holder: self.holder,
            inferred: self.inferred(),
            stack_id: self.stack_id,
            at_return: self.at_return,
            vm: self.vm,
        }
        .serialize(s)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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

    /// The last `n` steps with their standing counts: a finding's evidence.
    pub fn recent(&self, n: usize) -> Vec<(Step, Option<i32>)> {
        let skip = self.steps.len().saturating_sub(n);
        self.counted()
            .skip(skip)
            .map(|(s, c)| (s.clone(), c))
            .collect()
    }

    pub fn last_mut(&mut self) -> Option<&mut Step> {
        self.steps.back_mut()
    }

    /// The last step's kind and the hook that saw it.
    pub fn last_seen(&self) -> Option<(StepKind, Option<HookId>)> {
        self.steps.back().map(|s| (s.kind, s.hook))
    }

    pub fn last_kind(&self) -> Option<StepKind> {
        self.steps.back().map(|s| s.kind)
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
            comm: Comm::from("t"),
            kind: StepKind::Get,
            hook: None,
            delta,
            count_after: None,
            holder: None,
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

    #[test]
    fn json_keeps_the_names_scripts_read() {
        let s = Step {
            kind: StepKind::InferredPut,
            holder: Some(Holder::KvmVfioFd),
            ..step(-1)
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["what"], "inferred-put");
        assert_eq!(j["inferred"], true);
        assert_eq!(j["holder"], "kvm-vfio fd");
        assert!(j.get("hook").is_none());
    }
}
