//! The typed evidence of each finding kind: what the engine saw, kept as data
//! so every output (text, JSON, HTML, metrics) renders it its own way.
use trace_common::LockClass;

use super::{
    holder::Holder,
    locks::{EdgeHow, EdgeSeen, Held, waits::Wait},
    timeline::Step,
};

/// The last steps of an object's timeline, each with the count standing after it.
pub type Recent = Vec<(Step, Option<i32>)>;

/// One generation of an object at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjRef {
    pub addr: u64,
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Evidence {
    GetAfterZero {
        vm: ObjRef,
        /// True: after kvm_destroy_vm; false: the count read was 0 or less.
        destroyed: bool,
        recent: Recent,
    },
    GetSafeFailed {
        vm: ObjRef,
        recent: Recent,
    },
    UnbalancedPut(PutFault),
    LeakedRef {
        device: ObjRef,
        vm: u64,
        recent: Recent,
    },
    ZombieVm(Zombie),
    DestroyUnderLock {
        vm: ObjRef,
        /// Every watched lock the destroying thread held, outermost first.
        held: Vec<Held>,
        recent: Recent,
    },
    SelfDeadlock {
        pid: u32,
        /// The attempt.
        lock: Held,
        /// When the thread took the lock it waits for again; None when its
        /// acquire was not seen (lean: the owner word names the thread).
        taken_ns: Option<u64>,
        /// The thread's held locks at the attempt.
        held: Vec<Held>,
    },
    Inversion(Inversion),
    LongWait(Long),
    LongHold(Long),
    /// The waits of the cycle, starting with the one that closed it.
    Deadlock(Vec<Wait>),
}

/// A VM not destroyed long after its fd was closed.
#[derive(Clone, Debug, PartialEq)]
pub struct Zombie {
    pub vm: ObjRef,
    /// Time since its fd was closed, and the threshold passed (s).
    pub closed_for_ns: u64,
    pub after_ms: u64,
    pub users: Option<i32>,
    pub holders: Vec<(Holder, i32)>,
    pub recent: Recent,
}

/// Why a put gives back no reference.
#[derive(Clone, Debug, PartialEq)]
pub enum PutFault {
    AfterDestroy {
        vm: ObjRef,
        recent: Recent,
    },
    /// The count read before the put was already 0 or less.
    BelowZero {
        vm: ObjRef,
        before: i32,
        recent: Recent,
    },
    /// The put's holder (named by the function making it) holds nothing and
    /// no unattributed reference could be it.
    NotHolder {
        vm: ObjRef,
        holder: Holder,
        recent: Recent,
    },
    /// The kvm_ops patch: put_kvm() at the last close of a device whose
    /// first open found no KVM (no get_kvm() was made).
    KvmOpsNoGet {
        device: ObjRef,
        group: Option<u64>,
        recent: Recent,
    },
    /// The kvm_ops patch: put_kvm() on a failed first open that took no
    /// reference (`get_failed`: get_kvm() was called and failed).
    KvmOpsOpenError {
        device: ObjRef,
        ret: i64,
        get_failed: bool,
    },
}

impl Evidence {
    /// The VM generation the finding is about, where the evidence names one.
    pub fn vm(&self) -> Option<ObjRef> {
        match self {
            Evidence::GetAfterZero { vm, .. }
            | Evidence::GetSafeFailed { vm, .. }
            | Evidence::DestroyUnderLock { vm, .. }
            | Evidence::UnbalancedPut(
                PutFault::AfterDestroy { vm, .. }
                | PutFault::BelowZero { vm, .. }
                | PutFault::NotHolder { vm, .. },
            ) => Some(*vm),
            Evidence::ZombieVm(z) => Some(z.vm),
            _ => None,
        }
    }
}

impl From<PutFault> for Evidence {
    fn from(p: PutFault) -> Evidence {
        Evidence::UnbalancedPut(p)
    }
}

/// A lock-order cycle closed by a new edge `holding -> want`: the graph
/// already had a path `want ->* holding`.
#[derive(Clone, Debug, PartialEq)]
pub struct Inversion {
    pub holding: Held,
    pub want: LockClass,
    pub want_addr: u64,
    /// The existing path `want ->* holding`, edge by edge, with where each
    /// edge was first seen.
    pub path: Vec<(LockClass, LockClass, EdgeSeen)>,
    /// The thread's held locks at the attempt.
    pub held: Vec<Held>,
    /// The attempt's stack.
    pub stack_id: Option<u32>,
    /// How the new edge was learnt.
    pub how: EdgeHow,
}

impl Inversion {
    /// The classes of the cycle in order: holding, want, then the path's
    /// inner classes (`holding -> want ->* holding`).
    pub fn cycle_classes(&self) -> Vec<LockClass> {
        let mut v = vec![self.holding.class, self.want];
        v.extend(self.path.iter().skip(1).map(|(from, _, _)| *from));
        v
    }

    /// The stacks cited: the new edge's, then the path's, newest edge first
    /// (lockdep prints the chain in reverse order).
    pub fn stacks(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.stack_id.into_iter().collect();
        v.extend(self.path.iter().rev().filter_map(|(_, _, s)| s.stack_id));
        v
    }
}

/// A wait or hold of a watched lock past its threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Long {
    /// The lock; `since_ns` is when the wait or hold began.
    pub lock: Held,
    pub took_ns: u64,
    pub threshold_ms: u64,
}

impl Evidence {
    /// What makes two findings of one kind the same finding.
    pub fn identity(&self) -> String {
        let obj = |o: &ObjRef| format!("{:#x}/{}", o.addr, o.generation);
        match self {
            Evidence::GetAfterZero { vm, .. }
            | Evidence::GetSafeFailed { vm, .. }
            | Evidence::ZombieVm(Zombie { vm, .. })
            | Evidence::DestroyUnderLock { vm, .. } => obj(vm),
            Evidence::LeakedRef { device, .. } => obj(device),
            Evidence::UnbalancedPut(p) => match p {
                PutFault::AfterDestroy { vm, .. } => format!("{}/after-destroy", obj(vm)),
                PutFault::BelowZero { vm, before, .. } => {
                    format!("{}/below-zero/{before}", obj(vm))
                }
                PutFault::NotHolder { vm, holder, .. } => format!("{}/by/{holder}", obj(vm)),
                PutFault::KvmOpsNoGet { device, .. } => format!("kvm_ops/{}", obj(device)),
                PutFault::KvmOpsOpenError { device, .. } => {
                    format!("kvm_ops-open-error/{}", obj(device))
                }
            },
            Evidence::SelfDeadlock { pid, lock, .. } => format!("{:#x}/{pid}", lock.addr),
            Evidence::Inversion(inv) => {
                let mut names: Vec<&str> = inv.cycle_classes().iter().map(|c| c.name()).collect();
                names.sort();
                names.join("/")
            }
            Evidence::LongWait(l) | Evidence::LongHold(l) => l.lock.class.name().to_owned(),
            Evidence::Deadlock(cycle) => {
                let mut w: Vec<String> = cycle
                    .iter()
                    .map(|w| format!("{}:{:#x}", w.pid, w.lock.addr))
                    .collect();
                w.sort();
                w.join("/")
            }
        }
    }
}
