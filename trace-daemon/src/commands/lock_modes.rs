//! What each lock-watching mode can raise on this host, per finding kind, and
//! why (for `kvscope check`).
use serde::Serialize;

use crate::{
    attach::{
        hooks::Role,
        plan::{Method, Plan, StackVariant},
    },
    engine::FindingKind,
};

#[derive(Clone, Debug, Serialize)]
pub struct ModeRow {
    pub kind: FindingKind,
    pub deep: String,
    pub lean: String,
}

/// The roles' state that decides it: whether kvm_destroy_vm is hooked and
/// whether the mutex API could be (`check` plans with the mutex API).
fn attachable(plan: &Plan, role: Role) -> bool {
    plan.roles
        .iter()
        .filter(|r| r.role == role)
        .any(|r| r.choices.iter().any(|c| c.method != Method::None))
}

/// Lean's lock-order edges come from the lock table (`engine::locks::table`).
fn lean_lock_order(plan: &Plan, variant: StackVariant) -> String {
    if !attachable(plan, Role::GroupVmLink) {
        return "no: vfio_file_set_kvm is not hooked here".to_owned();
    }
    let drivers = "VFIO locks held (owner words) where a listed driver takes kvm->lock (vfio_ap_mdev_set_kvm; the lab's testdev_lock_kvm)";
    if variant == StackVariant::Notifier510 {
        return format!(
            "partly: vfio_group_set_kvm takes no watched mutex (5.10-5.18 have no group_lock), so S2 cannot form; edges from {drivers}. Orders outside the table are not seen"
        );
    }
    if variant.set_kvm_takes_group_lock() {
        format!(
            "yes, from the lock table: kvm->lock held (owner word) at vfio_file_set_kvm, which takes group_lock here; {drivers}: the S2 cycle. Orders outside the table are not seen"
        )
    } else {
        format!(
            "partly: vfio_file_set_kvm takes no watched mutex on this kernel (6.3+), so S2 cannot form; edges from {drivers}. Orders outside the table are not seen"
        )
    }
}

pub fn rows(plan: &Plan, variant: StackVariant) -> Vec<ModeRow> {
    let destroy = attachable(plan, Role::VmDestroyed);
    let mutex = attachable(plan, Role::LockAcquire);
    let no_mutex = "the mutex API cannot be hooked here (see the lock roles)";
    let begin = plan
        .tracepoints
        .iter()
        .find(|t| t.tracepoint == "lock:contention_begin");
    let contended = begin.is_some_and(|t| t.method == Method::Tracepoint);
    let absent = begin.is_some_and(|t| t.too_old);
    let contention = |what: &str| {
        if contended {
            format!("yes, when contended: {what}")
        } else if absent {
            "no: this kernel has no lock contention tracepoints (added in 5.19)".to_owned()
        } else {
            format!(
                "no: the lock contention tracepoints cannot be attached here ({})",
                begin.map_or("not planned", |t| t.reason.as_str())
            )
        }
    };
    let by_acquires = |what: &str| {
        if mutex {
            format!("yes: {what}")
        } else {
            format!("no: {no_mutex}")
        }
    };
    // Deep keeps the contention tracepoints: where the mutex API cannot be
    // hooked, what they show is deep's too.
    let by_acquires_or_contention = |what: &str, waits: &str| {
        if mutex {
            format!("yes: {what}")
        } else if contended {
            format!("{} ({no_mutex})", contention(waits))
        } else {
            format!("no: {no_mutex}")
        }
    };
    FindingKind::ALL
        .iter()
        .map(|&kind| {
            let (deep, lean) = match kind {
                FindingKind::DestroyUnderLock if !destroy => {
                    let why = "no: kvm_destroy_vm is not hooked here (tier 3)".to_owned();
                    (why.clone(), why)
                }
                FindingKind::DestroyUnderLock => (
                    by_acquires("the held set from every acquire and release"),
                    if variant == StackVariant::Notifier510 {
                        "yes: the owner word of kvm->lock read at kvm_destroy_vm (5.10-5.18 have no group_lock or dev_set->lock: the VFIO core holds no mutex around a driver's release)".to_owned()
                    } else {
                        "yes: owner words of the releasing device's group_lock and dev_set->lock (and kvm->lock) read at kvm_destroy_vm".to_owned()
                    },
                ),
                FindingKind::SelfDeadlock => {
                    let waits = "a wait (lock:contention_begin) on a watched lock whose owner word names the waiting task";
                    (
                        by_acquires_or_contention("each attempt against the held set", waits),
                        contention(waits),
                    )
                }
                FindingKind::LockOrderInversion => (
                    by_acquires("each attempt against the lock-order graph"),
                    lean_lock_order(plan, variant),
                ),
                FindingKind::LongWait => {
                    let waits = "contention begin to end";
                    (
                        by_acquires_or_contention("attempt to acquire", waits),
                        contention(waits),
                    )
                }
                FindingKind::Deadlock => {
                    let both = contention("a cycle of waits (lock:contention_begin), each lock's owner word naming another waiting thread");
                    (both.clone(), both)
                }
                FindingKind::LongHold => (
                    by_acquires("acquire to release"),
                    "no: no acquire or release is seen".to_owned(),
                ),
                _ => {
                    let both = "yes: reference counts, independent of locks".to_owned();
                    (both.clone(), both)
                }
            };
            ModeRow { kind, deep, lean }
        })
        .collect()
}

/// What each mode costs the host's system calls.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallCost {
    pub deep: String,
    pub lean: String,
}

pub fn syscall_cost(plan: &Plan) -> SyscallCost {
    let traced = "the syscall tracepoints of ioctl, close, the dups, clone, recvmsg and pidfd_getfd attached: while kvscope runs, every task of this host takes the syscall slow path (README, \"Overhead\", has the figures)";
    if !plan.syscalls_traced() {
        let none = "no syscall tracepoint can be attached here".to_owned();
        return SyscallCost {
            deep: none.clone(),
            lean: none,
        };
    }
    let lean = if attachable(plan, Role::VmFdCreated) {
        "none traced: kvm_dev_ioctl and kvm_vfio_create are hooked instead (only /dev/kvm's ioctls and kvm-vfio creation pass a program; KVM_RUN and every other syscall none)".to_owned()
    } else {
        "the same as deep: /dev/kvm's handler cannot be hooked here (tier 3), and nothing else shows VMs and their fds".to_owned()
    };
    SyscallCost {
        deep: traced.to_owned(),
        lean,
    }
}
