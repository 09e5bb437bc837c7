//! The hook table: each role of DESIGN.md with its candidate kernel functions in
//! order of preference, and the programs of `trace-ebpf` that serve them. The one
//! place that ties roles, symbols and program names together.
use serde::Serialize;
use trace_common::HookId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    VmCreated,
    VmFdCreated,
    KvmVfioCreated,
    VcpuFdCreated,
    StatsFdCreated,
    VmGet,
    VmPut,
    VmDestroyed,
    VmFdRelease,
    HolderFdRelease,
    DeviceOpen,
    DeviceOpenAttempt,
    DeviceRelease,
    VfioKvmGet,
    VfioKvmPut,
    GroupVmLink,
    KvmVfioTeardown,
    DriverTakesKvmLock,
    LockAcquire,
    LockRelease,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::VmCreated => "vm-created",
            Role::VmFdCreated => "vm-fd-created",
            Role::KvmVfioCreated => "kvm-vfio-created",
            Role::VcpuFdCreated => "vcpu-fd-created",
            Role::StatsFdCreated => "stats-fd-created",
            Role::VmGet => "vm-get",
            Role::VmPut => "vm-put",
            Role::VmDestroyed => "vm-destroyed",
            Role::VmFdRelease => "vm-fd-release",
            Role::HolderFdRelease => "holder-fd-release",
            Role::DeviceOpen => "device-open",
            Role::DeviceOpenAttempt => "device-open-attempt",
            Role::DeviceRelease => "device-release",
            Role::VfioKvmGet => "vfio-kvm-get",
            Role::VfioKvmPut => "vfio-kvm-put",
            Role::GroupVmLink => "group-vm-link",
            Role::KvmVfioTeardown => "kvm-vfio-teardown",
            Role::DriverTakesKvmLock => "driver-takes-kvm-lock",
            Role::LockAcquire => "lock-acquire",
            Role::LockRelease => "lock-release",
        }
    }
}

/// How many candidates of a role are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    /// The first present candidate: they are alternatives across kernel lines.
    First,
    /// Every present candidate: they are all sites of the role.
    All,
}

/// One kernel function that can serve a role.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Also names its programs: `fentry_<base>`, `fexit_<base>`,
    /// `kprobe_<base>`, `kretprobe_<base>` (`HookId::program_base`).
    pub hook: HookId,
    /// Has an entry body (fentry_/kprobe_ report at entry).
    pub entry: bool,
    /// Has an exit body (fexit_/kretprobe_; the kprobe flavour then also uses
    /// kprobe_ to keep the arguments).
    pub exit: bool,
    /// Kernel lines where it exists, for `check`.
    pub lines: &'static str,
}

impl Candidate {
    pub fn symbol(&self) -> &'static str {
        self.hook.symbol()
    }

    /// Programs of the fentry flavour, in attach order.
    pub fn fentry_programs(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.entry {
            v.push(format!("fentry_{}", self.hook.program_base()));
        }
        if self.exit {
            v.push(format!("fexit_{}", self.hook.program_base()));
        }
        v
    }

    /// Programs of the kprobe flavour, in attach order.
    pub fn kprobe_programs(&self) -> Vec<String> {
        let mut v = vec![format!("kprobe_{}", self.hook.program_base())];
        if self.exit {
            v.push(format!("kretprobe_{}", self.hook.program_base()));
        }
        v
    }
}

pub struct RoleSpec {
    pub role: Role,
    pub pick: Pick,
    pub candidates: &'static [Candidate],
    /// What the role yields, for `check`.
    pub yields: &'static str,
}

/// Kernel data (kallsyms) a candidate's programs need by address: without
/// it they would keep nothing.
pub fn data_needed(hook: HookId) -> &'static [&'static str] {
    match hook {
        HookId::AnonInodeGetfile => &["kvm_vcpu_stats_fops", "kvm_vm_stats_fops"],
        _ => &[],
    }
}

/// The function whose presence makes a candidate pointless: the notifier
/// era's hooks exist on later kernels too (vfio_group_set_kvm stays a static
/// helper of vfio_file_set_kvm), where they would only see the same link
/// twice, at twice the cost on the hooked path.
pub fn superseded_by(hook: HookId) -> Option<HookId> {
    match hook {
        HookId::VfioGroupSetKvm | HookId::VfioRegisterNotifier => Some(HookId::VfioFileSetKvm),
        _ => None,
    }
}

const fn c(hook: HookId, entry: bool, exit: bool, lines: &'static str) -> Candidate {
    Candidate {
        hook,
        entry,
        exit,
        lines,
    }
}

use HookId as H;

pub const ROLES: &[RoleSpec] = &[
    RoleSpec {
        role: Role::VmCreated,
        pick: Pick::First,
        candidates: &[c(H::KvmCreateVm, false, true, "all (often inlined)")],
        yields: "kvm pointer, creator",
    },
    // Lean at tiers 1-2: in place of the syscall tracepoints (which put every
    // task of the host on the syscall slow path), the handlers of /dev/kvm and
    // of the kvm-vfio device's creation. Deep and tier 3 keep the tracepoints.
    RoleSpec {
        role: Role::VmFdCreated,
        pick: Pick::First,
        candidates: &[c(
            H::KvmDevIoctl,
            false,
            true,
            "all: /dev/kvm's ioctls only, never a VM's or a vCPU's",
        )],
        yields: "KVM_CREATE_VM: fd, kvm, users_count (lean, without the syscall tracepoints); the self-test",
    },
    RoleSpec {
        role: Role::KvmVfioCreated,
        pick: Pick::First,
        candidates: &[c(
            H::KvmVfioCreate,
            false,
            true,
            "all (the device's create op)",
        )],
        yields: "kvm-vfio device created: kvm (lean, without the syscall tracepoints)",
    },
    RoleSpec {
        role: Role::VcpuFdCreated,
        pick: Pick::First,
        candidates: &[c(
            H::KvmArchVcpuPostcreate,
            true,
            false,
            "all (arch code, called from KVM_CREATE_VCPU after the fd exists)",
        )],
        yields: "vCPU fd created: kvm, vCPU id, users_count with its reference (lean, without the syscall tracepoints)",
    },
    RoleSpec {
        role: Role::StatsFdCreated,
        pick: Pick::First,
        candidates: &[c(
            H::AnonInodeGetfile,
            false,
            true,
            "5.14+ (KVM_GET_STATS_FD); every anon inode file passes, KVM's stats files are kept by one compare",
        )],
        yields: "VM or vCPU stats fd created: kvm, vCPU id, the reference taken next (lean, without the syscall tracepoints)",
    },
    RoleSpec {
        role: Role::VmGet,
        pick: Pick::All,
        candidates: &[
            c(H::KvmGetKvm, false, true, "all"),
            c(H::KvmGetKvmSafe, false, true, "all"),
        ],
        yields: "kvm, users_count after, success of _safe, stack",
    },
    RoleSpec {
        role: Role::VmPut,
        pick: Pick::All,
        candidates: &[
            c(H::KvmPutKvm, true, false, "all"),
            c(H::KvmPutKvmNoDestroy, true, false, "all"),
        ],
        yields: "kvm, users_count before, stack",
    },
    RoleSpec {
        role: Role::VmDestroyed,
        pick: Pick::First,
        candidates: &[c(H::KvmDestroyVm, true, false, "all (static)")],
        yields: "kvm, stack (held watched locks from the lock roles)",
    },
    RoleSpec {
        role: Role::VmFdRelease,
        pick: Pick::First,
        candidates: &[c(H::KvmVmRelease, true, false, "all")],
        yields: "VM fd closed: kvm, users_count",
    },
    RoleSpec {
        role: Role::HolderFdRelease,
        pick: Pick::All,
        candidates: &[
            c(H::KvmVcpuRelease, true, false, "all"),
            c(H::KvmVcpuStatsRelease, true, false, "5.14+"),
            c(H::KvmVmStatsRelease, true, false, "5.14+"),
        ],
        yields: "vCPU or stats fd released: kvm, vCPU id; the put that follows is that fd's",
    },
    RoleSpec {
        role: Role::DeviceOpen,
        pick: Pick::First,
        candidates: &[
            c(H::VfioDfOpen, true, true, "6.6+"),
            c(H::VfioDeviceOpen, true, true, "6.2-6.5"),
            c(
                H::VfioGroupFopsUnlIoctl,
                true,
                true,
                "6.1 (and the kvm_ops patch): stands in for the inlined vfio_device_open",
            ),
        ],
        yields: "device, group, kvm, open_count after, return value",
    },
    RoleSpec {
        role: Role::DeviceOpenAttempt,
        pick: Pick::First,
        candidates: &[c(
            H::VfioDeviceAssignContainer,
            true,
            false,
            "6.1 (and the kvm_ops patch): the device of an open, even a failing one",
        )],
        yields: "device, open_count before, kvm_ops",
    },
    RoleSpec {
        role: Role::DeviceRelease,
        pick: Pick::All,
        candidates: &[
            // Its exit forgets the thread's path context (lean lock watching).
            c(H::VfioDeviceFopsRelease, true, true, "all"),
            c(H::VfioDfClose, true, false, "6.6+"),
            c(H::VfioDeviceClose, true, false, "6.2-6.5"),
        ],
        yields: "device, open_count before",
    },
    RoleSpec {
        role: Role::VfioKvmGet,
        pick: Pick::First,
        candidates: &[
            c(H::VfioDeviceGetKvmSafe, false, true, "6.6+"),
            c(
                H::VfioDeviceGetKvmSafeOld,
                false,
                true,
                "6.3-6.5 (_vfio_device_get_kvm_safe)",
            ),
        ],
        yields: "device, kvm, users_count after",
    },
    RoleSpec {
        role: Role::VfioKvmPut,
        pick: Pick::First,
        candidates: &[c(H::VfioDevicePutKvm, true, false, "6.3+")],
        yields: "device, kvm, users_count before",
    },
    RoleSpec {
        role: Role::GroupVmLink,
        pick: Pick::All,
        candidates: &[
            c(H::VfioFileSetKvm, true, false, "5.19+"),
            c(
                H::VfioGroupSetKvm,
                true,
                true,
                "5.10-5.18 (the notifier era: entry to exit brackets the drivers' VFIO_GROUP_NOTIFY_SET_KVM callbacks)",
            ),
            c(
                H::VfioRegisterNotifier,
                true,
                true,
                "5.10-5.18 (a driver's notifier registered while the group has a VM is called at once)",
            ),
            c(H::KvmVfioSetAttr, false, true, "all"),
        ],
        yields: "file or group, kvm (NULL: unlink), fd, return value; 5.10-5.18: the gets made in the group notifier",
    },
    RoleSpec {
        role: Role::KvmVfioTeardown,
        pick: Pick::First,
        candidates: &[
            c(
                H::KvmVfioRelease,
                true,
                false,
                "6.2-rc6+, late 6.1.y (.release, under kvm->lock)",
            ),
            c(
                H::KvmDeviceRelease,
                true,
                false,
                "5.10-6.2-rc5, early 6.1.y (no .release: the kvm-vfio fd's release gives its reference back; .destroy runs from kvm_destroy_vm)",
            ),
        ],
        yields: "kvm, kvm_vfio.lock watched",
    },
    RoleSpec {
        role: Role::DriverTakesKvmLock,
        pick: Pick::All,
        candidates: &[
            c(
                H::VfioApMdevSetKvm,
                true,
                false,
                "s390 vfio_ap: from open_device, under the VFIO open locks",
            ),
            c(
                H::TestdevLockKvm,
                true,
                false,
                "kvscope's lab test module (modes kvmlock, kvmops-lock)",
            ),
        ],
        yields: "VFIO locks held (owner words) where a driver takes kvm->lock: the S2 order",
    },
    RoleSpec {
        role: Role::LockAcquire,
        pick: Pick::All,
        candidates: &[
            // Entry only: void, cannot fail (the engine infers the acquire).
            c(H::MutexLock, true, false, "all"),
            c(H::MutexLockInterruptible, true, true, "all"),
            c(H::MutexLockKillable, true, true, "all"),
            c(H::MutexLockNested, true, false, "lockdep kernels"),
            c(H::MutexTrylock, false, true, "all"),
        ],
        yields: "watched lock attempt/acquired/failed, class, thread",
    },
    RoleSpec {
        role: Role::LockRelease,
        pick: Pick::All,
        candidates: &[c(H::MutexUnlock, true, false, "all")],
        yields: "watched lock released",
    },
];

/// The tracepoint tier: program, category, name, the fields it reads.
pub struct TracepointSpec {
    pub hook: HookId,
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [(&'static str, usize)],
    pub yields: &'static str,
    /// The release that added it, where older kernels this tool supports lack it.
    pub since: Option<(u32, u32)>,
}

use trace_common::tp;

pub const TRACEPOINTS: &[TracepointSpec] = &[
    TracepointSpec {
        hook: H::SysIoctl,
        program: "tp_sys_enter_ioctl",
        category: "syscalls",
        name: "sys_enter_ioctl",
        fields: &[
            ("fd", tp::SYSCALL_ARG0),
            ("cmd", tp::SYSCALL_ARG1),
            ("arg", tp::SYSCALL_ARG2),
        ],
        yields: "KVM_CREATE_VM, KVM_CREATE_DEVICE(VFIO), KVM_SET_DEVICE_ATTR(VFIO file add/del), VFIO_GROUP_GET_DEVICE_FD",
        since: None,
    },
    TracepointSpec {
        hook: H::SysIoctl,
        program: "tp_sys_exit_ioctl",
        category: "syscalls",
        name: "sys_exit_ioctl",
        fields: &[("ret", tp::SYSCALL_RET)],
        yields: "their results: new fds, kvm pointer and users_count via the fd",
        since: None,
    },
    TracepointSpec {
        hook: H::SysClose,
        program: "tp_sys_enter_close",
        category: "syscalls",
        name: "sys_enter_close",
        fields: &[("fd", tp::SYSCALL_ARG0)],
        yields: "close of a tracked VM / kvm-vfio / VFIO fd",
        since: None,
    },
    dup_enter(
        "tp_sys_enter_dup",
        "sys_enter_dup",
        &[("fildes", tp::SYSCALL_ARG0)],
    ),
    dup_enter(
        "tp_sys_enter_dup2",
        "sys_enter_dup2",
        &[("oldfd", tp::SYSCALL_ARG0)],
    ),
    dup_enter(
        "tp_sys_enter_dup3",
        "sys_enter_dup3",
        &[("oldfd", tp::SYSCALL_ARG0)],
    ),
    TracepointSpec {
        hook: H::SysDup,
        program: "tp_sys_enter_fcntl",
        category: "syscalls",
        name: "sys_enter_fcntl",
        fields: &[("fd", tp::SYSCALL_ARG0), ("cmd", tp::SYSCALL_ARG1)],
        yields: "fcntl(F_DUPFD[_CLOEXEC]) of a tracked fd (dup, as std's try_clone makes)",
        since: None,
    },
    dup_exit("tp_sys_exit_dup", "sys_exit_dup"),
    dup_exit("tp_sys_exit_dup2", "sys_exit_dup2"),
    dup_exit("tp_sys_exit_dup3", "sys_exit_dup3"),
    dup_exit("tp_sys_exit_fcntl", "sys_exit_fcntl"),
    TracepointSpec {
        hook: H::SysRecvmsg,
        program: "tp_sys_exit_recvmsg",
        category: "syscalls",
        name: "sys_exit_recvmsg",
        fields: &[("ret", tp::SYSCALL_RET)],
        yields: "fds passed with SCM_RIGHTS whose file is of a tracked kind (followed in the receiver)",
        since: None,
    },
    TracepointSpec {
        hook: H::SysPidfdGetfd,
        program: "tp_sys_exit_pidfd_getfd",
        category: "syscalls",
        name: "sys_exit_pidfd_getfd",
        fields: &[("ret", tp::SYSCALL_RET)],
        yields: "an fd copied from another process whose file is of a tracked kind (followed)",
        since: Some((5, 6)),
    },
    TracepointSpec {
        hook: H::ContentionBegin,
        program: "tp_contention_begin",
        category: "lock",
        name: "contention_begin",
        fields: &[
            ("lock_addr", tp::CONTENTION_LOCK),
            ("flags", tp::CONTENTION_FLAGS_OR_RET),
        ],
        yields: "waits on watched locks",
        since: Some((5, 19)),
    },
    TracepointSpec {
        hook: H::ContentionEnd,
        program: "tp_contention_end",
        category: "lock",
        name: "contention_end",
        fields: &[
            ("lock_addr", tp::CONTENTION_LOCK),
            ("ret", tp::CONTENTION_FLAGS_OR_RET),
        ],
        yields: "end of waits on watched locks",
        since: Some((5, 19)),
    },
    TracepointSpec {
        hook: H::ProcessExit,
        program: "tp_sched_process_exit",
        category: "sched",
        name: "sched_process_exit",
        fields: &[("pid", tp::PROCESS_EXIT_PID)],
        yields: "exit of a process holding tracked fds",
        since: None,
    },
    TracepointSpec {
        hook: H::ProcessFork,
        program: "tp_sys_enter_clone",
        category: "syscalls",
        name: "sys_enter_clone",
        fields: &[("clone_flags", tp::SYSCALL_ARG0)],
        yields: "clone of a process holding tracked fds, with its own fd table: its flags",
        since: None,
    },
    TracepointSpec {
        hook: H::ProcessFork,
        program: "tp_sys_enter_clone3",
        category: "syscalls",
        name: "sys_enter_clone3",
        fields: &[("uargs", tp::SYSCALL_ARG0)],
        yields: "clone3 of a process holding tracked fds, with its own fd table: its flags",
        since: None,
    },
    fork_exit("tp_sys_exit_clone", "sys_exit_clone"),
    fork_exit("tp_sys_exit_clone3", "sys_exit_clone3"),
    TracepointSpec {
        hook: H::ProcessFork,
        program: "tp_sched_process_fork",
        category: "sched",
        // child_pid's offset is read from the format at load (it moved in 6.10).
        name: "sched_process_fork",
        fields: &[],
        yields: "the child of such a clone: the tracked fds it inherits (below 256), followed into it",
        since: None,
    },
    TracepointSpec {
        hook: H::ProcessExec,
        program: "tp_sched_process_exec",
        category: "sched",
        name: "sched_process_exec",
        fields: &[("pid", tp::PROCESS_EXEC_PID)],
        yields: "exec of a process holding tracked fds (it closed their O_CLOEXEC fds unseen)",
        since: None,
    },
];

/// A dup's entry: the old fd, its first argument.
const fn dup_enter(
    program: &'static str,
    name: &'static str,
    fields: &'static [(&'static str, usize)],
) -> TracepointSpec {
    TracepointSpec {
        hook: H::SysDup,
        program,
        category: "syscalls",
        name,
        fields,
        yields: "dup of a tracked fd: the old fd",
        since: None,
    }
}

/// A dup's exit: the new fd, tracked as the old one's kind.
const fn dup_exit(program: &'static str, name: &'static str) -> TracepointSpec {
    TracepointSpec {
        hook: H::SysDup,
        program,
        category: "syscalls",
        name,
        fields: &[("ret", tp::SYSCALL_RET)],
        yields: "the new fd of a tracked fd's dup (its close is then seen too)",
        since: None,
    }
}

/// A clone's exit: a clone that failed forgets what its entry kept.
const fn fork_exit(program: &'static str, name: &'static str) -> TracepointSpec {
    TracepointSpec {
        hook: H::ProcessFork,
        program,
        category: "syscalls",
        name,
        fields: &[("ret", tp::SYSCALL_RET)],
        yields: "the end of such a clone",
        since: None,
    }
}

/// Every program name the loader may ask the BPF object for.
pub fn all_program_names() -> Vec<String> {
    let mut v: Vec<String> = ROLES
        .iter()
        .flat_map(|r| r.candidates.iter())
        .flat_map(|c| {
            let mut p = c.fentry_programs();
            p.extend(c.kprobe_programs());
            p
        })
        .collect();
    v.extend(TRACEPOINTS.iter().map(|t| t.program.to_owned()));
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_id_has_one_home() {
        // Every path hook appears in exactly one role; tracepoint ids in the
        // tracepoint table.
        for id in HookId::ALL {
            if *id == HookId::KvmVfioDestroy {
                // No longer hooked: kvm_device_release gives the reference
                // back where .destroy is the op; kept for older recordings.
                continue;
            }
            if *id == HookId::SelfTest {
                // Answered by the sys_enter_ioctl program, which serves SysIoctl.
                assert!(
                    TRACEPOINTS
                        .iter()
                        .any(|t| t.program == "tp_sys_enter_ioctl")
                );
                continue;
            }
            let in_roles = ROLES
                .iter()
                .flat_map(|r| r.candidates.iter())
                .filter(|c| c.hook == *id)
                .count();
            let in_tps = TRACEPOINTS.iter().filter(|t| t.hook == *id).count();
            assert!(
                (in_roles == 1 && in_tps == 0) || (in_roles == 0 && in_tps >= 1),
                "{id:?}: {in_roles} roles, {in_tps} tracepoints"
            );
        }
    }

    #[test]
    fn program_names_follow_the_flavour_scheme() {
        let role = |r: Role| ROLES.iter().find(|s| s.role == r).unwrap();
        let put = role(Role::VmPut).candidates[0];
        assert_eq!(put.fentry_programs(), ["fentry_kvm_put_kvm"]);
        assert_eq!(put.kprobe_programs(), ["kprobe_kvm_put_kvm"]);
        let get = role(Role::VmGet).candidates[0];
        assert_eq!(get.fentry_programs(), ["fexit_kvm_get_kvm"]);
        assert_eq!(
            get.kprobe_programs(),
            ["kprobe_kvm_get_kvm", "kretprobe_kvm_get_kvm"]
        );
        let lock = ROLES
            .iter()
            .find(|r| r.role == Role::LockAcquire)
            .unwrap()
            .candidates[0];
        // Entry only: no fexit trampoline on the hottest hook.
        assert_eq!(lock.fentry_programs(), ["fentry_mutex_lock"]);
        assert_eq!(lock.kprobe_programs(), ["kprobe_mutex_lock"]);
    }
}
