//! kvscope's event ABI: the one place where the kernel-side programs and the user
//! side agree on record layouts, hook ids, lock classes and the load-time config.
//!
//! Every record is `#[repr(C)]` with explicit widths and no implicit padding (the
//! layout tests in `trace-daemon` pin sizes and offsets), so that `aya::Pod` is sound
//! and a recorded file stays readable.
#![no_std]

/// Version of [`Event`] and [`ProbeConfig`]. Bump on any layout or meaning change;
/// recordings carry it and readers refuse other versions.
pub const ABI_VERSION: u16 = 1;

/// Offset value meaning "this field does not exist on the running kernel".
/// A datum that needs it is reported unknown, never guessed.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// The kernel -> user ring's default size: about 10 000 events, what the
/// reader takes in about 100 ms (the live flood lost nothing behind a reader
/// stalled 2 s at 750 events/s). The kernel maps the whole ring into the
/// reader twice (its wrap-around), so every MiB here is 2 MiB of resident
/// memory in user space.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Where in a traced call an event was taken.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Entry = 0,
    Exit = 1,
}

impl Phase {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Entry),
            1 => Some(Self::Exit),
            _ => None,
        }
    }
}

macro_rules! hook_ids {
    ($($(#[$m:meta])* $name:ident = $val:expr, $sym:expr;)*) => {
        /// Every kernel site a program of ours sits on. The number is the ABI;
        /// the name is the kernel function or tracepoint.
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum HookId { $($(#[$m])* $name = $val,)* }

        impl HookId {
            pub const ALL: &'static [HookId] = &[$(HookId::$name,)*];

            pub const fn from_u16(v: u16) -> Option<Self> {
                match v { $($val => Some(HookId::$name),)* _ => None }
            }

            /// Kernel symbol or `category:tracepoint` this id stands for.
            pub const fn symbol(self) -> &'static str {
                match self { $(HookId::$name => $sym,)* }
            }

            /// The id whose `symbol` is `s`.
            pub fn from_symbol(s: &str) -> Option<Self> {
                match s { $($sym => Some(HookId::$name),)* _ => None }
            }
        }
    };
}

hook_ids! {
    KvmCreateVm = 1, "kvm_create_vm";
    KvmGetKvm = 2, "kvm_get_kvm";
    KvmGetKvmSafe = 3, "kvm_get_kvm_safe";
    KvmPutKvm = 4, "kvm_put_kvm";
    KvmPutKvmNoDestroy = 5, "kvm_put_kvm_no_destroy";
    KvmDestroyVm = 6, "kvm_destroy_vm";
    KvmVmRelease = 7, "kvm_vm_release";
    KvmVfioRelease = 8, "kvm_vfio_release";
    /// Early 6.1.y's `.destroy` op; no longer hooked (it runs only from
    /// kvm_destroy_vm: `KvmDeviceRelease` gives the fd's reference back
    /// there), kept so that older recordings decode.
    KvmVfioDestroy = 9, "kvm_vfio_destroy";
    KvmVfioSetAttr = 10, "kvm_vfio_set_attr";
    VfioFileSetKvm = 11, "vfio_file_set_kvm";
    /// 6.1: `vfio_device_open` is static and inlined; the group ioctl stands in.
    VfioGroupFopsUnlIoctl = 12, "vfio_group_fops_unl_ioctl";
    VfioDeviceOpen = 13, "vfio_device_open";
    VfioDfOpen = 14, "vfio_df_open";
    VfioDeviceFopsRelease = 15, "vfio_device_fops_release";
    VfioDfClose = 16, "vfio_df_close";
    VfioDeviceClose = 17, "vfio_device_close";
    VfioDeviceGetKvmSafe = 18, "vfio_device_get_kvm_safe";
    VfioDeviceGetKvmSafeOld = 19, "_vfio_device_get_kvm_safe";
    VfioDevicePutKvm = 20, "vfio_device_put_kvm";
    /// 6.1 (and the kvm_ops patch): called first in the inlined
    /// vfio_device_open with the device: an open attempt, even one that fails.
    VfioDeviceAssignContainer = 27, "vfio_device_assign_container";
    /// vfio_ap: `vfio_ap_mdev_set_kvm(matrix_mdev, kvm)`, from open_device under
    /// the VFIO open locks; takes kvm->lock (S2). `matrix_mdev` starts with its
    /// `struct vfio_device`.
    VfioApMdevSetKvm = 28, "vfio_ap_mdev_set_kvm";
    /// kvscope's lab test module: `testdev_lock_kvm(vdev, kvm)`, the same shape
    /// (modes kvmlock, kvmops-lock).
    TestdevLockKvm = 29, "testdev_lock_kvm";
    /// `/dev/kvm`'s ioctl handler (never a vCPU's or a VM's): KVM_CREATE_VM's
    /// fd without the syscall tracepoints (lean), and kvscope's self-test.
    KvmDevIoctl = 30, "kvm_dev_ioctl";
    /// The kvm-vfio device's `create` op (KVM_CREATE_DEVICE of type VFIO),
    /// without the syscall tracepoints (lean).
    KvmVfioCreate = 31, "kvm_vfio_create";
    /// 5.10-5.18: `vfio_group_set_kvm(group, kvm)`, called by the kvm-vfio
    /// device: the group's VM (NULL: none), handed to drivers by the group
    /// notifier (VFIO_GROUP_NOTIFY_SET_KVM). Entry and exit.
    VfioGroupSetKvm = 32, "vfio_group_set_kvm";
    /// Before 6.2-rc6: a KVM device fd's release (the kvm-vfio device has no
    /// `.release` op; `kvm_vfio_destroy` runs only from kvm_destroy_vm).
    KvmDeviceRelease = 33, "kvm_device_release";
    /// 5.10-5.18: `vfio_register_notifier(dev, VFIO_GROUP_NOTIFY, ..)` from a
    /// driver's open: a group with a VM calls the new notifier at once.
    VfioRegisterNotifier = 34, "vfio_register_notifier";
    /// `kvm_arch_vcpu_postcreate(vcpu)`: called by KVM_CREATE_VCPU after its
    /// (inlined) kvm_get_kvm and the vCPU fd's creation. Lean at tiers 1-2:
    /// the vCPU fd's reference, named without the syscall tracepoints.
    KvmArchVcpuPostcreate = 35, "kvm_arch_vcpu_postcreate";
    /// A vCPU fd's release (`filp->private_data` is the vCPU): its put follows.
    KvmVcpuRelease = 36, "kvm_vcpu_release";
    /// A vCPU stats fd's release: its put follows.
    KvmVcpuStatsRelease = 37, "kvm_vcpu_stats_release";
    /// A VM stats fd's release: its put follows.
    KvmVmStatsRelease = 38, "kvm_vm_stats_release";
    /// `anon_inode_getfile(name, fops, priv, flags)` returning a KVM stats
    /// file (kept only for the two stats fops): KVM_GET_STATS_FD's inlined
    /// kvm_get_kvm comes next, unconditionally. Lean at tiers 1-2.
    AnonInodeGetfile = 39, "anon_inode_getfile";
    MutexLock = 21, "mutex_lock";
    MutexLockInterruptible = 22, "mutex_lock_interruptible";
    MutexLockKillable = 23, "mutex_lock_killable";
    MutexLockNested = 24, "mutex_lock_nested";
    MutexTrylock = 25, "mutex_trylock";
    MutexUnlock = 26, "mutex_unlock";
    /// Tier 3: `ioctl(2)` returning, for the KVM/VFIO commands in [`ioctl`].
    SysIoctl = 40, "syscalls:sys_exit_ioctl";
    /// Tier 3: `close(2)` of an fd we track (VM, kvm-vfio device, VFIO group/device).
    SysClose = 41, "syscalls:sys_enter_close";
    ContentionBegin = 42, "lock:contention_begin";
    ContentionEnd = 43, "lock:contention_end";
    /// A thread group we saw using KVM/VFIO exited (its fds close without close(2)).
    ProcessExit = 44, "sched:sched_process_exit";
    /// Tier 3 and deep: a tracked fd duplicated (`dup`, `dup2`, `dup3`,
    /// `fcntl(F_DUPFD[_CLOEXEC])` returning): the new fd is tracked as the
    /// same kind, so its close is seen too.
    SysDup = 46, "syscalls:sys_exit_dup";
    /// Tier 3 and deep: a thread group we saw using KVM/VFIO exec'd. The
    /// exec closed its O_CLOEXEC fds (every fd KVM and VFIO make) without
    /// close(2); a dup made without the flag lives on, no longer followed.
    ProcessExec = 47, "sched:sched_process_exec";
    /// Tier 3 and deep: a thread group with tracked fds made a process with
    /// a copy of its fd table (`clone`/`clone3` without CLONE_FILES or
    /// CLONE_THREAD). Its tracked fds below [`tracked::FORK_FDS`] are
    /// tracked in the child too, and one event says so (`arg`: the child's
    /// tgid); fd -1: the table is larger, the fds past that bound are not
    /// followed.
    ProcessFork = 48, "sched:sched_process_fork";
    /// Tier 3 and deep: `recvmsg(2)` returning fds passed with SCM_RIGHTS
    /// (the first such message, its first [`passed::RIGHTS_FDS`] fds): each
    /// whose file is of a kind kvscope tracks (by its `f_op`, learnt from
    /// the fds it saw made) is tracked in the receiver.
    SysRecvmsg = 49, "syscalls:sys_exit_recvmsg";
    /// Tier 3 and deep: `pidfd_getfd(2)` returning a copy of another
    /// process's fd, tracked the same way.
    SysPidfdGetfd = 50, "syscalls:sys_exit_pidfd_getfd";
    /// kvscope's own delivery self-test: its `ioctl(KVSCOPE_SELFTEST)` seen by
    /// the sys_enter_ioctl program. Consumed by the live session, never analysed.
    SelfTest = 45, "kvscope:self-test";
}

impl HookId {
    /// A lock hook taken at entry only: the call is void and cannot fail, so
    /// no exit is needed to know the lock is held (the engine infers it).
    pub const fn is_implicit_acquire(self) -> bool {
        matches!(self, HookId::MutexLock | HookId::MutexLockNested)
    }

    /// Base of the program names serving this kernel function
    /// (`fentry_<base>`, `fexit_<base>`, `kprobe_<base>`, `kretprobe_<base>`):
    /// the symbol, except where a leading underscore would make it clash.
    pub const fn program_base(self) -> &'static str {
        match self {
            HookId::VfioDeviceGetKvmSafeOld => "vfio_device_get_kvm_safe_old",
            h => h.symbol(),
        }
    }
}

/// Number of slots in the per-hook loss counter map (indexed by `HookId as u32`).
pub const HOOK_SLOTS: u32 = 64;

/// Kernel-side counters besides `LOST` (events not delivered, any cause), one
/// row of `HOOK_SLOTS` per cause in the `DROPS` map (index
/// `cause * HOOK_SLOTS + hook`), so that nothing the programs give up on is silent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// bpf_get_stackid failed (stack map full, or the walk failed): the event
    /// went out without its stack.
    StackId = 0,
    /// ARG_STASH was full at entry: the call's exit event is lost (also in `LOST`).
    StashFull = 1,
    /// New entries in the WATCHED LRU map (hook slot 0). Not a loss: user space
    /// compares it with the map's size to count evictions (locks no longer watched).
    WatchedNew = 2,
}

pub const DROP_CAUSES: u32 = 3;

/// The `DROPS` index of a cause and hook.
pub const fn drop_slot(cause: DropCause, hook: u32) -> u32 {
    cause as u32 * HOOK_SLOTS + hook
}

/// Lock classes, lockdep-style: the struct and field a watched mutex lives in.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockClass {
    Unknown = 0,
    VfioGroupLock = 1,
    VfioDevSetLock = 2,
    KvmLock = 3,
    KvmVfioLock = 4,
    /// The global `kvm_lock` (vm_list), registered from user space via kallsyms.
    KvmGlobalLock = 5,
}

impl LockClass {
    /// Every known class (not `Unknown`).
    pub const ALL: &'static [LockClass] = &[
        Self::VfioGroupLock,
        Self::VfioDevSetLock,
        Self::KvmLock,
        Self::KvmVfioLock,
        Self::KvmGlobalLock,
    ];

    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::VfioGroupLock,
            2 => Self::VfioDevSetLock,
            3 => Self::KvmLock,
            4 => Self::KvmVfioLock,
            5 => Self::KvmGlobalLock,
            _ => Self::Unknown,
        }
    }

    /// The name kernel engineers know, as lockdep prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::VfioGroupLock => "vfio_group.group_lock",
            Self::VfioDevSetLock => "vfio_device_set.lock",
            Self::KvmLock => "kvm.lock",
            Self::KvmVfioLock => "kvm_vfio.lock",
            Self::KvmGlobalLock => "kvm_lock",
        }
    }

    /// Locks of the VFIO side: a VM destroyed under one of these is S1/S3.
    pub const fn is_vfio(self) -> bool {
        matches!(self, Self::VfioGroupLock | Self::VfioDevSetLock)
    }
}

/// What a lock-hook event says about the lock (carried in [`Event::ret`]'s place
/// for lock hooks is confusing; it has its own field, [`Event::lock_op`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockOp {
    None = 0,
    /// mutex_lock* entered on a watched lock: the thread is about to wait for it.
    Attempt = 1,
    /// The lock call returned holding the lock.
    Acquired = 2,
    /// The lock call returned without the lock (interrupted, killed, trylock busy).
    Failed = 3,
    Released = 4,
    ContentionBegin = 5,
    ContentionEnd = 6,
    /// At a path hook: the watched lock's owner word names the current task
    /// (lean lock watching: no mutex API hook sees the acquire).
    Held = 7,
}

impl LockOp {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Attempt,
            2 => Self::Acquired,
            3 => Self::Failed,
            4 => Self::Released,
            5 => Self::ContentionBegin,
            6 => Self::ContentionEnd,
            7 => Self::Held,
            _ => Self::None,
        }
    }
}

/// Bits of [`Event::known`]: which data the program could read. A field whose bit
/// is clear holds 0 and means "unknown", never "zero".
pub mod known {
    pub const KVM: u32 = 1 << 0;
    pub const DEVICE: u32 = 1 << 1;
    pub const GROUP: u32 = 1 << 2;
    pub const FILE: u32 = 1 << 3;
    pub const LOCK: u32 = 1 << 4;
    pub const RET: u32 = 1 << 5;
    pub const USERS: u32 = 1 << 6;
    pub const OPEN: u32 = 1 << 7;
    pub const FD: u32 = 1 << 8;
    pub const STACK: u32 = 1 << 9;
    pub const ARG: u32 = 1 << 10;
    pub const FD_KIND: u32 = 1 << 11;
    pub const KVM_OPS: u32 = 1 << 12;
}

/// Kind of a file descriptor the tracepoint tier tracks, in [`Event::fd_kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FdKind {
    None = 0,
    Vm = 1,
    KvmVfioDevice = 2,
    VfioGroup = 3,
    VfioDevice = 4,
    /// A vCPU (`KVM_CREATE_VCPU`): its file holds a VM reference.
    Vcpu = 5,
    /// A VM's binary stats (`KVM_GET_STATS_FD` on the VM fd): holds a VM reference.
    VmStats = 6,
    /// A vCPU's binary stats (`KVM_GET_STATS_FD` on a vCPU fd): holds a VM reference.
    VcpuStats = 7,
}

impl FdKind {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Vm,
            2 => Self::KvmVfioDevice,
            3 => Self::VfioGroup,
            4 => Self::VfioDevice,
            5 => Self::Vcpu,
            6 => Self::VmStats,
            7 => Self::VcpuStats,
            _ => Self::None,
        }
    }
}

/// ioctl numbers the tracepoint tier decodes (include/uapi/linux/kvm.h, vfio.h).
pub mod ioctl {
    /// `_IO(KVMIO, 0x01)`
    pub const KVM_CREATE_VM: u32 = 0xAE01;
    /// `_IO(KVMIO, 0x41)`, on a VM fd; the argument is the vCPU id.
    pub const KVM_CREATE_VCPU: u32 = 0xAE41;
    /// `_IO(KVMIO, 0xce)`, on a VM or a vCPU fd.
    pub const KVM_GET_STATS_FD: u32 = 0xAECE;
    /// `_IOWR(KVMIO, 0xe0, struct kvm_create_device)`
    pub const KVM_CREATE_DEVICE: u32 = 0xC00C_AEE0;
    /// `_IOW(KVMIO, 0xe1, struct kvm_device_attr)`
    pub const KVM_SET_DEVICE_ATTR: u32 = 0x4018_AEE1;
    /// `_IO(VFIO_TYPE, VFIO_BASE + 6)`
    pub const VFIO_GROUP_GET_DEVICE_FD: u32 = 0x3B6A;
    pub const KVM_DEV_TYPE_VFIO: u32 = 4;
    /// `KVM_DEV_VFIO_FILE` (was `KVM_DEV_VFIO_GROUP`, same value).
    pub const KVM_DEV_VFIO_FILE: u32 = 1;
    pub const KVM_DEV_VFIO_FILE_ADD: u64 = 1;
    pub const KVM_DEV_VFIO_FILE_DEL: u64 = 2;
    /// kvscope's delivery self-test, issued by kvscope itself on /dev/null
    /// (which has no ioctls: the call fails with ENOTTY and does nothing).
    /// `_IOW('K', 0x53, 86 bytes)`-shaped; no driver or VFS ioctl uses it.
    pub const KVSCOPE_SELFTEST: u32 = 0x4056_4B53;
}

/// `clone(2)` flags that make a child without an fd table of its own.
pub mod clone {
    pub const CLONE_FILES: u64 = 0x400;
    pub const CLONE_THREAD: u64 = 0x10000;
}

/// Fds passed over a Unix socket: where `recvmsg(2)` finds them.
pub mod passed {
    /// x86_64: the user registers of a task in a system call sit at the top
    /// of its kernel stack (`task_pt_regs`: `task->stack + THREAD_SIZE -
    /// TOP_OF_KERNEL_STACK_PADDING - sizeof(struct pt_regs)`), where
    /// sys_exit_recvmsg finds the call's `msg` argument (`si`) without an
    /// entry program on every recvmsg of the host. The stack is 16 KiB, the
    /// padding 0, or 16 with FRED (6.9+): both places are tried, and one is
    /// taken only where `orig_ax` holds recvmsg's number (at the other that
    /// word is `cs` or `si`, never 47). A KASAN kernel's 32 KiB stack
    /// matches neither: passed fds are then not followed, as before.
    pub const REGS_AT: [u64; 2] = [16384, 16384 - 16];
    pub const PT_REGS_SIZE: u64 = 168;
    /// `si`, then `di` and `orig_ax` right after it.
    pub const PT_REGS_SI: u64 = 104;
    pub const NR_RECVMSG: u64 = 47;
    /// `struct user_msghdr`: msg_control and msg_controllen (the length the
    /// kernel wrote, once the call returns).
    pub const MSG_CONTROL: u64 = 32;
    pub const MSG_CONTROLLEN: u64 = 40;
    /// `struct cmsghdr`: cmsg_len (u64), cmsg_level, cmsg_type (i32), data.
    pub const CMSG_HDR: u64 = 16;
    pub const SOL_SOCKET: i32 = 1;
    pub const SCM_RIGHTS: i32 = 1;
    /// Control messages looked through for SCM_RIGHTS (one with
    /// SCM_CREDENTIALS may come first).
    pub const CMSGS: u32 = 2;
    /// Fds of one SCM_RIGHTS message followed (VMMs pass one at a time);
    /// those past it are not, and a close that leaves their file held makes
    /// the VM's state unknown, as for any fd kvscope does not follow.
    pub const RIGHTS_FDS: u32 = 4;
}

/// `fcntl(2)` commands that duplicate an fd.
pub mod fcntl {
    pub const F_DUPFD: u64 = 0;
    pub const F_DUPFD_CLOEXEC: u64 = 1030;
}

/// Fixed tracepoint field offsets the programs read (checked against tracefs
/// `format` files at load; a mismatch disables that tracepoint with the reason).
pub mod tp {
    pub const SYSCALL_ARG0: usize = 16;
    pub const SYSCALL_ARG1: usize = 24;
    pub const SYSCALL_ARG2: usize = 32;
    pub const SYSCALL_RET: usize = 16;
    pub const CONTENTION_LOCK: usize = 8;
    pub const CONTENTION_FLAGS_OR_RET: usize = 16;
    pub const PROCESS_EXIT_PID: usize = 24;
    pub const PROCESS_EXEC_PID: usize = 12;
}

/// A tracked fd's entry in `TRACKED_FDS`: its kind, and the generation of
/// its thread group's fd table (`TRACKED_TGIDS`) it was made in. An exec
/// starts a new generation: entries of an older one are stale (the exec
/// closed those fds unseen, or they live on unfollowed).
pub mod tracked {
    /// Fds a fork's child is followed in: those below this (a bounded loop
    /// in the kernel; VMM processes keep their KVM fds low).
    pub const FORK_FDS: i32 = 256;
    pub const fn entry(kind: u8, generation: u32) -> u32 {
        kind as u32 | (generation << 8)
    }
    pub const fn kind(entry: u32) -> u8 {
        entry as u8
    }
    /// Whether `entry` was made in `generation` (24 bits of it are kept).
    pub const fn is_current(entry: u32, generation: u32) -> bool {
        entry >> 8 == generation & 0xff_ffff
    }
}

/// One record from a program. 128 bytes, 8-aligned, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    /// `tgid << 32 | pid`, as `bpf_get_current_pid_tgid` returns it.
    pub pid_tgid: u64,
    /// `struct kvm *`
    pub kvm: u64,
    /// `struct vfio_device *`
    pub device: u64,
    /// `struct vfio_group *`
    pub group: u64,
    /// `struct file *` the hook was given or resolved from an fd.
    pub file: u64,
    /// Address of a watched lock.
    pub lock: u64,
    /// Return value (fexit/kretprobe/sys_exit), sign-extended. At
    /// lock:contention_begin: the flags (LCB_F_*) in the low 32 bits, and the
    /// thread id of the task the lock's owner word names in the high 32 bits
    /// (0: unknown).
    pub ret: i64,
    /// Hook-specific extra: ioctl cmd (KVM_CREATE_VCPU: | the vCPU id << 32),
    /// set_attr attr, contention flags; at close(2), the references to the
    /// fd's file before the close (more than one: a dup, a fork or a passed
    /// fd still holds it, and this close puts nothing).
    pub arg: u64,
    /// `kvm->users_count` read at this event (before a put, after a get).
    pub users_count: i32,
    /// `vfio_device->open_count` read at this event.
    pub open_count: i32,
    pub fd: i32,
    /// Id in the `STACKS` map, or -1.
    pub stack_id: i32,
    pub cpu: u32,
    /// [`known`] bits.
    pub known: u32,
    /// [`HookId`]
    pub hook: u16,
    /// [`Phase`]
    pub phase: u8,
    /// [`LockClass`]
    pub lock_class: u8,
    pub comm: [u8; 16],
    /// [`LockOp`]
    pub lock_op: u8,
    /// [`FdKind`]
    pub fd_kind: u8,
    /// [`ABI_VERSION`] of the program that wrote it.
    pub abi: u16,
    /// `vfio_device->kvm_ops` (the seed's patch), read with the device: 0 where
    /// the driver set none. Carved from reserved bytes: older recordings have
    /// the [`known::KVM_OPS`] bit clear.
    pub kvm_ops: u64,
}

impl Event {
    pub const ZERO: Event = Event {
        ts_ns: 0,
        pid_tgid: 0,
        kvm: 0,
        device: 0,
        group: 0,
        file: 0,
        lock: 0,
        ret: 0,
        arg: 0,
        users_count: 0,
        open_count: 0,
        fd: 0,
        stack_id: -1,
        cpu: 0,
        known: 0,
        hook: 0,
        phase: 0,
        lock_class: 0,
        comm: [0; 16],
        lock_op: 0,
        fd_kind: 0,
        abi: ABI_VERSION,
        kvm_ops: 0,
    };

    pub const fn pid(&self) -> u32 {
        self.pid_tgid as u32
    }

    pub const fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }

    pub const fn has(&self, bit: u32) -> bool {
        self.known & bit != 0
    }
}

/// Struct field offsets of the running kernel, from its BTF, handed to the
/// programs at load as the global `KVSCOPE_CONFIG`. Each is [`OFFSET_UNKNOWN`]
/// where the field does not exist (the datum is then reported unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `kvm.users_count.refs.counter`
    pub kvm_users_count: u32,
    /// `kvm.lock`
    pub kvm_lock: u32,
    pub vfio_device_open_count: u32,
    pub vfio_device_group: u32,
    pub vfio_device_dev_set: u32,
    /// `vfio_device.kvm` (absent on the kvm_ops patch)
    pub vfio_device_kvm: u32,
    /// `vfio_device.kvm_ops` (only on the kvm_ops patch)
    pub vfio_device_kvm_ops: u32,
    pub vfio_device_set_lock: u32,
    pub vfio_group_group_lock: u32,
    pub vfio_group_kvm: u32,
    /// `vfio_device_file.device` (6.6+; the device fd's private_data is a df)
    pub vfio_device_file_device: u32,
    pub file_private_data: u32,
    /// `kvm_device.kvm`
    pub kvm_device_kvm: u32,
    /// `kvm_device.private` (a `struct kvm_vfio *` for the VFIO device)
    pub kvm_device_private: u32,
    /// `kvm_vfio.lock`
    pub kvm_vfio_lock: u32,
    /// fd -> file, for the tracepoint tier: task_struct.files, files_struct.fdt,
    /// fdtable.fd, fdtable.max_fds.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    /// Offset of `group_dead` in sched_process_exit's record (6.18+); unknown
    /// before, where the thread-group leader's exit stands for the group's.
    pub exit_group_dead: u32,
    /// Only events of this thread group (0: all). The `--pid` filter, in-kernel.
    pub filter_tgid: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// kvscope's own thread group: only its `KVSCOPE_SELFTEST` ioctl is
    /// answered with a self-test event.
    pub self_tgid: u32,
    /// `mutex.owner` (the owner task, low bits flags); unknown on PREEMPT_RT,
    /// where a mutex wraps an rt_mutex.
    pub mutex_owner: u32,
    /// `task_struct.pid` (the thread id): who owns a contended watched lock.
    pub task_pid: u32,
    /// `kvm_vcpu.kvm`: a vCPU (or vCPU stats) fd's VM, for the tracepoint tier.
    pub kvm_vcpu_kvm: u32,
    /// The references to a `struct file`, read at close(2): `file.f_count`
    /// (an atomic_long_t, the count itself) before 6.13, `file.f_ref` (a
    /// file_ref_t, the count minus one) after; one of the two is known.
    pub file_count: u32,
    pub file_ref: u32,
    /// `kvm_vcpu.vcpu_id`: the vCPU's id, as KVM_CREATE_VCPU was given it.
    pub kvm_vcpu_vcpu_id: u32,
    /// Offset of `child_pid` in sched_process_fork's record (44 with the
    /// comms inline, 20 where they are `__data_loc`, 6.10+), from tracefs.
    pub fork_child_pid: u32,
    /// `file.f_op`: a passed fd's file is known by it.
    pub file_f_op: u32,
    /// `task_struct.stack`: the kernel stack, whose top holds the user
    /// registers of a system call (see [`passed::REGS_AT`]).
    pub task_stack: u32,
    /// Addresses (kallsyms) of KVM's `kvm_vcpu_stats_fops` and
    /// `kvm_vm_stats_fops`, 0 when unknown: the anon_inode_getfile program
    /// keeps only files made with these.
    pub kvm_vcpu_stats_fops: u64,
    pub kvm_vm_stats_fops: u64,
}

pub mod config_flags {
    /// Collect kernel stacks on path hooks (not on lock hooks: they are hot).
    pub const STACKS: u32 = 1 << 0;
    /// Collect stacks on watched-lock attempts too.
    pub const LOCK_STACKS: u32 = 1 << 1;
    /// The VFIO locks are taken dev_set->lock first (6.1 and the kvm_ops
    /// patch), so report held ones in that order.
    pub const DEV_SET_FIRST: u32 = 1 << 2;
    /// Stacks also at the hooks whose call path the events around them name
    /// (KVM_SET_DEVICE_ATTR's handler, the VFIO file link it makes): by
    /// default those take none, the costliest part of their programs.
    pub const EVERY_STACK: u32 = 1 << 3;
}

/// The flag bits in `mutex.owner` below the task pointer (MUTEX_FLAGS).
pub const MUTEX_OWNER_FLAGS: u64 = 0x07;

impl ProbeConfig {
    pub const UNKNOWN: ProbeConfig = ProbeConfig {
        kvm_users_count: OFFSET_UNKNOWN,
        kvm_lock: OFFSET_UNKNOWN,
        vfio_device_open_count: OFFSET_UNKNOWN,
        vfio_device_group: OFFSET_UNKNOWN,
        vfio_device_dev_set: OFFSET_UNKNOWN,
        vfio_device_kvm: OFFSET_UNKNOWN,
        vfio_device_kvm_ops: OFFSET_UNKNOWN,
        vfio_device_set_lock: OFFSET_UNKNOWN,
        vfio_group_group_lock: OFFSET_UNKNOWN,
        vfio_group_kvm: OFFSET_UNKNOWN,
        vfio_device_file_device: OFFSET_UNKNOWN,
        file_private_data: OFFSET_UNKNOWN,
        kvm_device_kvm: OFFSET_UNKNOWN,
        kvm_device_private: OFFSET_UNKNOWN,
        kvm_vfio_lock: OFFSET_UNKNOWN,
        task_files: OFFSET_UNKNOWN,
        files_fdt: OFFSET_UNKNOWN,
        fdtable_fd: OFFSET_UNKNOWN,
        fdtable_max_fds: OFFSET_UNKNOWN,
        exit_group_dead: OFFSET_UNKNOWN,
        filter_tgid: 0,
        flags: 0,
        self_tgid: 0,
        mutex_owner: OFFSET_UNKNOWN,
        task_pid: OFFSET_UNKNOWN,
        kvm_vcpu_kvm: OFFSET_UNKNOWN,
        file_count: OFFSET_UNKNOWN,
        file_ref: OFFSET_UNKNOWN,
        kvm_vcpu_vcpu_id: OFFSET_UNKNOWN,
        fork_child_pid: OFFSET_UNKNOWN,
        file_f_op: OFFSET_UNKNOWN,
        task_stack: OFFSET_UNKNOWN,
        kvm_vcpu_stats_fops: 0,
        kvm_vm_stats_fops: 0,
    };
}

/// Value of the `WATCHED` map: the class of a watched lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedLock {
    pub class: u8,
    pub _pad: [u8; 7],
    /// The object the lock belongs to (kvm, group, dev_set), for display.
    pub owner: u64,
}

/// Key of the tracked-fd map of the tracepoint tier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: i32,
}

/// Slots of the watched-lock hint array: 2^15 flags (256 KiB of u64 slots).
pub const WATCH_HINT_SLOTS: u32 = 1 << 15;

/// The hint slot of a lock address. A zero slot means "not watched" for
/// certain; a set one means "look in WATCHED" (slots are never cleared, so a
/// lock evicted from the LRU map only costs a lookup). Slots are whole u64s
/// set to 1, an idempotent store, so no atomic read-modify-write is needed
/// (the BPF target has none in `core`). The array lookup is inlined by the
/// verifier: the unrelated-mutex path skips the hash lookup.
#[inline(always)]
pub const fn watch_hint_slot(addr: u64) -> u32 {
    // Fibonacci hashing of the address (mutexes are 8-byte aligned).
    ((addr >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 15)) as u32
}

/// Names of the maps, shared so that the loader and the ELF test agree.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const DROPS: &str = "DROPS";
    pub const RING_FILL: &str = "RING_FILL";
    pub const WATCHED: &str = "WATCHED";
    pub const WATCH_HINT: &str = "WATCH_HINT";
    pub const STACKS: &str = "STACKS";
    pub const TRACKED_FDS: &str = "TRACKED_FDS";
    pub const TRACKED_TGIDS: &str = "TRACKED_TGIDS";
    pub const ARG_STASH: &str = "ARG_STASH";
    pub const CONFIG_GLOBAL: &str = "KVSCOPE_CONFIG";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C), explicit-width, with no implicit padding (pinned by
    // the layout tests), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::WatchedLock {}
    unsafe impl aya::Pod for super::FdKey {}
}
