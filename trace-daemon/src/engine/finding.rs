//! Findings: what the engine concludes. A finding is data: its kind, the
//! objects, locks and threads involved, typed evidence, and first/last/count
//! when repeated. Severity and the deduplication key follow from the kind and
//! the evidence; the words are written by the outputs (`output::finding_text`).
use serde::{Deserialize, Serialize};
use trace_common::LockClass;

pub use super::evidence::{Evidence, Inversion, Long, ObjRef, PutFault, Recent, Zombie};
use crate::event::{Comm, Event};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    GetAfterZero,
    GetSafeFailed,
    UnbalancedPut,
    LeakedRef,
    ZombieVm,
    DestroyUnderLock,
    SelfDeadlock,
    LockOrderInversion,
    LongWait,
    LongHold,
    Deadlock,
}

impl FindingKind {
    pub const ALL: &'static [FindingKind] = &[
        FindingKind::GetAfterZero,
        FindingKind::GetSafeFailed,
        FindingKind::UnbalancedPut,
        FindingKind::LeakedRef,
        FindingKind::ZombieVm,
        FindingKind::DestroyUnderLock,
        FindingKind::SelfDeadlock,
        FindingKind::LockOrderInversion,
        FindingKind::LongWait,
        FindingKind::LongHold,
        FindingKind::Deadlock,
    ];

    /// Each kind has one severity: a fact of the kind, not of the finding.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::GetAfterZero | FindingKind::SelfDeadlock | FindingKind::Deadlock => {
                Severity::Critical
            }
            FindingKind::UnbalancedPut
            | FindingKind::LeakedRef
            | FindingKind::LockOrderInversion => Severity::Error,
            FindingKind::ZombieVm
            | FindingKind::DestroyUnderLock
            | FindingKind::LongWait
            | FindingKind::LongHold => Severity::Warning,
            FindingKind::GetSafeFailed => Severity::Info,
        }
    }

    /// A finding about watched locks (not reference counts): what arms a
    /// deep session from lean (`arm_deep_s`).
    pub fn is_lock(self) -> bool {
        matches!(
            self,
            FindingKind::DestroyUnderLock
                | FindingKind::SelfDeadlock
                | FindingKind::LockOrderInversion
                | FindingKind::LongWait
                | FindingKind::LongHold
                | FindingKind::Deadlock
        )
    }

    pub fn id(self) -> &'static str {
        match self {
            FindingKind::GetAfterZero => "get-after-zero",
            FindingKind::GetSafeFailed => "get-safe-failed",
            FindingKind::UnbalancedPut => "unbalanced-put",
            FindingKind::LeakedRef => "leaked-ref",
            FindingKind::ZombieVm => "zombie-vm",
            FindingKind::DestroyUnderLock => "destroy-under-lock",
            FindingKind::SelfDeadlock => "self-deadlock",
            FindingKind::LockOrderInversion => "lock-order-inversion",
            FindingKind::LongWait => "long-wait",
            FindingKind::LongHold => "long-hold",
            FindingKind::Deadlock => "deadlock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// A thread as the finding names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Thread {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
}

impl Thread {
    pub fn of(e: &Event) -> Thread {
        Thread {
            pid: e.pid,
            tgid: e.tgid,
            comm: e.comm,
        }
    }
}

/// The role an object plays in a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectRole {
    Kvm,
    /// A device whose kvm reference is the subject (leaked-ref).
    Device,
    /// A VFIO device the kvm_ops patch's calls concern.
    VfioDevice,
    VfioGroup,
    Lock,
    /// The object a lock lives in.
    Owner,
}

impl ObjectRole {
    pub fn name(self) -> &'static str {
        match self {
            ObjectRole::Kvm => "kvm",
            ObjectRole::Device => "device",
            ObjectRole::VfioDevice => "vfio_device",
            ObjectRole::VfioGroup => "vfio_group",
            ObjectRole::Lock => "lock",
            ObjectRole::Owner => "owner",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: FindingKind,
    /// Objects by role; a lock-order inversion names both locks.
    pub objects: Vec<(ObjectRole, u64)>,
    /// Lock classes involved.
    pub locks: Vec<LockClass>,
    pub threads: Vec<Thread>,
    pub stacks: Vec<u32>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
    pub evidence: Evidence,
    /// The operator's name of the VM it names (libvirt domain, QEMU's name,
    /// else `comm[pid]`), when its creation was seen.
    pub vm_name: Option<String>,
}

impl Finding {
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }

    pub fn object(&self, role: ObjectRole) -> Option<u64> {
        self.objects
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, a)| *a)
    }

    /// Identity for deduplication: same key, same finding repeated.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.id(), self.evidence.identity())
    }

    /// The common part of every constructor: one finding, seen once at `ts_ns`.
    fn at(kind: FindingKind, ts_ns: u64, evidence: Evidence) -> Finding {
        Finding {
            kind,
            objects: Vec::new(),
            locks: Vec::new(),
            threads: Vec::new(),
            stacks: Vec::new(),
            first_ns: ts_ns,
            last_ns: ts_ns,
            count: 1,
            evidence,
            vm_name: None,
        }
    }

    /// The thread of `e` and its stack.
    fn by(mut self, e: &Event) -> Finding {
        self.threads.push(Thread::of(e));
        self.stacks.extend(e.stack_id);
        self
    }

    fn on(mut self, role: ObjectRole, addr: u64) -> Finding {
        self.objects.push((role, addr));
        self
    }

    /// A reference taken on a VM whose count was 0, or after its destroy.
    pub fn get_after_zero(e: &Event, vm: ObjRef, destroyed: bool, recent: Recent) -> Finding {
        let ev = Evidence::GetAfterZero {
            vm,
            destroyed,
            recent,
        };
        Finding::at(FindingKind::GetAfterZero, e.ts_ns, ev)
            .on(ObjectRole::Kvm, vm.addr)
            .by(e)
    }

    /// kvm_get_kvm_safe refused: the VM was being torn down.
    pub fn get_safe_failed(e: &Event, vm: ObjRef, recent: Recent) -> Finding {
        let ev = Evidence::GetSafeFailed { vm, recent };
        Finding::at(FindingKind::GetSafeFailed, e.ts_ns, ev)
            .on(ObjectRole::Kvm, vm.addr)
            .by(e)
    }

    /// A put that gives back no reference (see `PutFault`). `open_stack`: the
    /// stack of the open attempt an open-error put belongs to.
    pub fn unbalanced_put(e: &Event, fault: PutFault, open_stack: Option<u32>) -> Finding {
        let objects = match &fault {
            PutFault::AfterDestroy { vm, .. }
            | PutFault::BelowZero { vm, .. }
            | PutFault::NotHolder { vm, .. } => vec![(ObjectRole::Kvm, vm.addr)],
            PutFault::KvmOpsNoGet { device, group, .. } => {
                let mut v = vec![(ObjectRole::VfioDevice, device.addr)];
                v.extend(group.map(|g| (ObjectRole::VfioGroup, g)));
                v
            }
            PutFault::KvmOpsOpenError { device, .. } => {
                let mut v = vec![(ObjectRole::VfioDevice, device.addr)];
                v.extend(e.group.map(|g| (ObjectRole::VfioGroup, g)));
                v.extend(e.kvm.map(|k| (ObjectRole::Kvm, k)));
                v
            }
        };
        let mut f = Finding::at(FindingKind::UnbalancedPut, e.ts_ns, fault.into());
        f.objects = objects;
        f.threads.push(Thread::of(e));
        f.stacks.extend(open_stack);
        f.stacks.extend(e.stack_id);
        f
    }

    /// A device fully closed still holding its VM, past the grace time.
    pub fn leaked_ref(now_ns: u64, device: ObjRef, vm: u64, recent: Recent) -> Finding {
        let ev = Evidence::LeakedRef { device, vm, recent };
        Finding::at(FindingKind::LeakedRef, now_ns, ev)
            .on(ObjectRole::Device, device.addr)
            .on(ObjectRole::Kvm, vm)
    }

    /// A VM not destroyed long after its fd was closed.
    pub fn zombie_vm(now_ns: u64, creator: Option<Thread>, z: Zombie) -> Finding {
        let addr = z.vm.addr;
        let ev = Evidence::ZombieVm(z);
        let mut f = Finding::at(FindingKind::ZombieVm, now_ns, ev).on(ObjectRole::Kvm, addr);
        f.threads.extend(creator);
        f
    }

    /// kvm_destroy_vm entered with VFIO locks held (S1, S3).
    pub fn destroy_under_lock(
        e: &Event,
        vm: ObjRef,
        held: Vec<super::locks::Held>,
        recent: Recent,
    ) -> Finding {
        let vfio: Vec<LockClass> = held
            .iter()
            .map(|h| h.class)
            .filter(|c| c.is_vfio())
            .collect();
        let ev = Evidence::DestroyUnderLock { vm, held, recent };
        let mut f = Finding::at(FindingKind::DestroyUnderLock, e.ts_ns, ev)
            .on(ObjectRole::Kvm, vm.addr)
            .by(e);
        f.locks = vfio;
        f
    }

    /// A thread asks for a watched mutex it already holds.
    pub fn self_deadlock(
        e: &Event,
        lock: super::locks::Held,
        taken_ns: Option<u64>,
        held: Vec<super::locks::Held>,
    ) -> Finding {
        let (addr, owner, class) = (lock.addr, lock.owner, lock.class);
        let ev = Evidence::SelfDeadlock {
            pid: e.pid,
            lock,
            taken_ns,
            held,
        };
        let mut f = Finding::at(FindingKind::SelfDeadlock, e.ts_ns, ev)
            .on(ObjectRole::Lock, addr)
            .on(ObjectRole::Owner, owner)
            .by(e);
        f.locks = vec![class];
        f
    }

    /// A new lock-order edge closes a cycle in the graph.
    pub fn lock_order_inversion(e: &Event, inv: Inversion) -> Finding {
        let objects = vec![
            (ObjectRole::Lock, inv.want_addr),
            (ObjectRole::Lock, inv.holding.addr),
        ];
        let (locks, stacks) = (inv.cycle_classes(), inv.stacks());
        let mut f = Finding::at(
            FindingKind::LockOrderInversion,
            e.ts_ns,
            Evidence::Inversion(inv),
        );
        f.threads.push(Thread::of(e));
        f.objects = objects;
        f.locks = locks;
        f.stacks = stacks;
        f
    }

    /// Threads that wait, now, for watched locks each other holds.
    pub fn deadlock(e: &Event, cycle: Vec<super::locks::waits::Wait>) -> Finding {
        let mut locks: Vec<LockClass> = cycle.iter().map(|w| w.lock.class).collect();
        locks.sort();
        locks.dedup();
        let mut f = Finding::at(
            FindingKind::Deadlock,
            e.ts_ns,
            Evidence::Deadlock(cycle.clone()),
        );
        for w in &cycle {
            f.objects.push((ObjectRole::Lock, w.lock.addr));
            f.threads.push(Thread {
                pid: w.pid,
                tgid: w.tgid,
                comm: w.comm,
            });
            f.stacks.extend(w.lock.stack_id);
        }
        f.locks = locks;
        f
    }

    /// A wait (`LongWait`) or a hold (`LongHold`) of a watched lock past its threshold.
    pub fn long(kind: FindingKind, e: &Event, long: Long) -> Finding {
        let (addr, owner, class, stack) = (
            long.lock.addr,
            long.lock.owner,
            long.lock.class,
            long.lock.stack_id,
        );
        let ev = match kind {
            FindingKind::LongWait => Evidence::LongWait(long),
            _ => Evidence::LongHold(long),
        };
        let mut f = Finding::at(kind, e.ts_ns, ev)
            .on(ObjectRole::Lock, addr)
            .on(ObjectRole::Owner, owner);
        f.threads.push(Thread::of(e));
        f.stacks.extend(stack);
        f.locks = vec![class];
        f
    }
}
