//! The typed event model: what the analysis engine, `trace` and the recorders
//! consume. Decoded from the ABI record (`trace_common::Event`) in one place,
//! `Event::decode`, so a field that the program marked unknown is `None` here
//! and never a zero that looks like data.
pub mod drops;

use serde::{Deserialize, Serialize};
use trace_common::{self as abi, FdKind as AbiFdKind, HookId, LockClass, LockOp, ioctl, known};

/// What happened, independent of which kernel function reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    VmCreated,
    /// kvm_get_kvm / kvm_get_kvm_safe returned; `ok` false: _safe failed.
    VmGet,
    VmPut,
    VmDestroyed,
    VmFdRelease,
    #[serde(rename = "device-open", alias = "device-opened")]
    DeviceOpened,
    /// The device a VFIO_GROUP_GET_DEVICE_FD is about to open (6.1 / kvm_ops
    /// patch), known even when the open then fails.
    DeviceOpenAttempt,
    DeviceRelease,
    DeviceClose,
    VfioKvmGet,
    VfioKvmPut,
    /// vfio_file_set_kvm / KVM_DEV_VFIO_FILE_ADD: a VFIO file linked to a VM.
    FileLink,
    /// vfio_file_set_kvm(NULL) / KVM_DEV_VFIO_FILE_DEL.
    FileUnlink,
    /// 5.10-5.18: vfio_group_set_kvm returned: the group notifier's callbacks
    /// (VFIO_GROUP_NOTIFY_SET_KVM) are done; a get before it on this thread
    /// was a driver's.
    NotifierDone,
    /// 5.10-5.18: a driver's vfio_register_notifier(VFIO_GROUP_NOTIFY) entered:
    /// the group's VM, if it has one, is handed to it at once.
    NotifierRegister,
    KvmVfioRelease,
    /// A vCPU or stats fd's release (`fd_kind` says which; `vcpu` its id):
    /// the put that follows on this thread is that fd's reference.
    HolderFdRelease,
    /// KVM_CREATE_DEVICE(VFIO) returned (tracepoint tier).
    KvmVfioCreated,
    /// KVM_CREATE_VCPU returned a vCPU fd, whose file holds a VM reference
    /// (the ioctl's exit; lean at tiers 1-2: kvm_arch_vcpu_postcreate).
    VcpuCreated,
    /// KVM_GET_STATS_FD returned a VM or vCPU stats fd, whose file holds a VM
    /// reference (the ioctl's exit; lean at tiers 1-2: the stats file made,
    /// its reference taken right after: `hook` AnonInodeGetfile).
    StatsFdCreated,
    /// A tracked fd was closed (tracepoint tier).
    #[serde(rename = "fd-close", alias = "fd-closed")]
    FdClosed,
    /// A tracked fd was duplicated (dup, dup2, dup3, fcntl F_DUPFD): the new
    /// fd (`fd`) is tracked too; `arg` was the old one.
    FdDup,
    /// A tracked kind's fd given to this thread group (tier 3, deep): passed
    /// with SCM_RIGHTS or copied by pidfd_getfd; followed like a dup.
    FdReceived,
    ProcessExit,
    /// A thread group with tracked fds exec'd (tier 3, deep): its O_CLOEXEC
    /// fds closed unseen, any others no longer followed.
    ProcessExec,
    /// A thread group with tracked fds forked a child with its own copy of
    /// the fd table (tier 3, deep): `child` is its tgid, and its copies of the
    /// tracked fds are followed; `fd` -1: fds past the followed bound exist.
    ProcessFork,
    LockAttempt,
    LockAcquired,
    LockFailed,
    LockReleased,
    #[serde(rename = "lock-wait", alias = "contention-begin")]
    ContentionBegin,
    #[serde(rename = "lock-wait-end", alias = "contention-end")]
    ContentionEnd,
    /// The thread holds this watched lock now: its owner word, read at a path
    /// hook (lean lock watching), names the thread.
    LockHeld,
    /// A record that decodes to nothing we use (e.g. an ioctl we do not model).
    Other,
}

impl Kind {
    /// Every kind (a new one goes here and in `name`, whose match lists them all).
    pub const ALL: [Kind; 34] = [
        Kind::VmCreated,
        Kind::VmGet,
        Kind::VmPut,
        Kind::VmDestroyed,
        Kind::VmFdRelease,
        Kind::DeviceOpened,
        Kind::DeviceOpenAttempt,
        Kind::DeviceRelease,
        Kind::DeviceClose,
        Kind::VfioKvmGet,
        Kind::VfioKvmPut,
        Kind::FileLink,
        Kind::FileUnlink,
        Kind::NotifierDone,
        Kind::NotifierRegister,
        Kind::KvmVfioRelease,
        Kind::HolderFdRelease,
        Kind::KvmVfioCreated,
        Kind::VcpuCreated,
        Kind::StatsFdCreated,
        Kind::FdClosed,
        Kind::FdDup,
        Kind::FdReceived,
        Kind::ProcessExit,
        Kind::ProcessExec,
        Kind::ProcessFork,
        Kind::LockAttempt,
        Kind::LockAcquired,
        Kind::LockFailed,
        Kind::LockReleased,
        Kind::ContentionBegin,
        Kind::ContentionEnd,
        Kind::LockHeld,
        Kind::Other,
    ];

    /// The kind's one name: in text, JSON (serde says the same: tested) and
    /// metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::VmCreated => "vm-created",
            Kind::VmGet => "vm-get",
            Kind::VmPut => "vm-put",
            Kind::VmDestroyed => "vm-destroyed",
            Kind::VmFdRelease => "vm-fd-release",
            Kind::DeviceOpened => "device-open",
            Kind::DeviceOpenAttempt => "device-open-attempt",
            Kind::DeviceRelease => "device-release",
            Kind::DeviceClose => "device-close",
            Kind::VfioKvmGet => "vfio-kvm-get",
            Kind::VfioKvmPut => "vfio-kvm-put",
            Kind::FileLink => "file-link",
            Kind::FileUnlink => "file-unlink",
            Kind::NotifierDone => "notifier-done",
            Kind::NotifierRegister => "notifier-register",
            Kind::KvmVfioRelease => "kvm-vfio-release",
            Kind::HolderFdRelease => "holder-fd-release",
            Kind::KvmVfioCreated => "kvm-vfio-created",
            Kind::VcpuCreated => "vcpu-created",
            Kind::StatsFdCreated => "stats-fd-created",
            Kind::FdClosed => "fd-close",
            Kind::FdDup => "fd-dup",
            Kind::FdReceived => "fd-received",
            Kind::ProcessExit => "process-exit",
            Kind::ProcessExec => "process-exec",
            Kind::ProcessFork => "process-fork",
            Kind::LockAttempt => "lock-attempt",
            Kind::LockAcquired => "lock-acquired",
            Kind::LockFailed => "lock-failed",
            Kind::LockReleased => "lock-released",
            Kind::ContentionBegin => "lock-wait",
            Kind::ContentionEnd => "lock-wait-end",
            Kind::LockHeld => "lock-held",
            Kind::Other => "other",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    Vm,
    KvmVfioDevice,
    VfioGroup,
    VfioDevice,
    Vcpu,
    VmStats,
    VcpuStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRef {
    #[serde(with = "crate::hexaddr::one")]
    pub addr: u64,
    pub class: LockClassName,
    /// The object the lock lives in (kvm, vfio_group, vfio_device_set);
    /// not the owner word, which names the task holding it.
    #[serde(with = "crate::hexaddr::one", rename = "object", alias = "owner")]
    pub owner: u64,
}

/// Serialisable wrapper of `trace_common::LockClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct LockClassName(pub LockClass);

impl From<LockClassName> for String {
    fn from(c: LockClassName) -> String {
        c.0.name().to_owned()
    }
}

impl TryFrom<String> for LockClassName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        (0u8..=5)
            .map(LockClass::from_u8)
            .find(|c| c.name() == s)
            .map(LockClassName)
            .ok_or_else(|| format!("unknown lock class {s:?}"))
    }
}

impl std::fmt::Display for LockClassName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub cpu: u32,
    pub comm: Comm,
    pub kind: Kind,
    /// The kernel site; in JSON its symbol (`kvm_put_kvm`, `syscalls:sys_exit_ioctl`).
    #[serde(with = "hook_symbol")]
    pub hook: HookId,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::hexaddr::opt"
    )]
    pub kvm: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::hexaddr::opt"
    )]
    pub device: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::hexaddr::opt"
    )]
    pub group: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::hexaddr::opt"
    )]
    pub file: Option<u64>,
    /// users_count read at this event: before a put, after a get.
    #[serde(
        skip_serializing_if = "Option::is_none",
        rename = "users_count",
        alias = "users"
    )]
    pub users: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_count: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_kind: Option<FdKind>,
    /// At a close: the references to the fd's file before it. More than one:
    /// another fd (a dup, a fork's copy, one passed over a socket) still
    /// holds the file, and this close puts nothing on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_refs: Option<u64>,
    /// At KVM_CREATE_VCPU: the vCPU's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockRef>,
    /// At a contention begin: the thread the lock's owner word names, which
    /// this one now waits for (a wait-for edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    /// For a get: whether it took a reference (kvm_get_kvm_safe can fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// Seen as the hooked function returned (fexit, kretprobe, a syscall's
    /// exit): its own frame is no longer on the stack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_return: bool,
    /// The device's `kvm_ops` (the seed's patch): Some(0) when the driver set
    /// none, None where the kernel has no such field.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "crate::hexaddr::opt"
    )]
    pub kvm_ops: Option<u64>,
    /// ProcessFork: the forked child (tgid), which holds copies of the fds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub child: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    Abi(u16),
    Hook(u16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(
                f,
                "record of {n} bytes, expected {}",
                std::mem::size_of::<abi::Event>()
            ),
            DecodeError::Abi(v) => write!(
                f,
                "record of ABI version {v}, this kvscope reads {}",
                abi::ABI_VERSION
            ),
            DecodeError::Hook(h) => write!(f, "unknown hook id {h}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn opt<T>(e: &abi::Event, bit: u32, v: T) -> Option<T> {
    e.has(bit).then_some(v)
}

/// Reads an ABI record from bytes (unaligned safe).
pub fn record_from_bytes(b: &[u8]) -> Result<abi::Event, DecodeError> {
    if b.len() < std::mem::size_of::<abi::Event>() {
        return Err(DecodeError::Short(b.len()));
    }
    // SAFETY: Event is Pod (repr(C), no padding, every bit pattern valid) and
    // the slice is long enough; read_unaligned needs no alignment.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<abi::Event>()) })
}

pub fn record_to_bytes(e: &abi::Event) -> &[u8] {
    // SAFETY: Pod, as above.
    unsafe {
        std::slice::from_raw_parts(
            (e as *const abi::Event).cast::<u8>(),
            std::mem::size_of::<abi::Event>(),
        )
    }
}

impl Event {
    pub fn decode(e: &abi::Event) -> Result<Event, DecodeError> {
        if e.abi != abi::ABI_VERSION {
            return Err(DecodeError::Abi(e.abi));
        }
        let hook = HookId::from_u16(e.hook).ok_or(DecodeError::Hook(e.hook))?;
        let ret = opt(e, known::RET, e.ret);
        let mut ev = Event {
            ts_ns: e.ts_ns,
            pid: e.pid(),
            tgid: e.tgid(),
            cpu: e.cpu,
            comm: Comm(e.comm),
            kind: Kind::Other,
            hook,
            kvm: opt(e, known::KVM, e.kvm),
            device: opt(e, known::DEVICE, e.device),
            group: opt(e, known::GROUP, e.group),
            file: opt(e, known::FILE, e.file),
            users: opt(e, known::USERS, e.users_count),
            open_count: opt(e, known::OPEN, e.open_count),
            ret,
            fd: opt(e, known::FD, e.fd),
            kvm_ops: opt(e, known::KVM_OPS, e.kvm_ops),
            fd_kind: if e.has(known::FD_KIND) {
                match AbiFdKind::from_u8(e.fd_kind) {
                    AbiFdKind::Vm => Some(FdKind::Vm),
                    AbiFdKind::KvmVfioDevice => Some(FdKind::KvmVfioDevice),
                    AbiFdKind::VfioGroup => Some(FdKind::VfioGroup),
                    AbiFdKind::VfioDevice => Some(FdKind::VfioDevice),
                    AbiFdKind::Vcpu => Some(FdKind::Vcpu),
                    AbiFdKind::VmStats => Some(FdKind::VmStats),
                    AbiFdKind::VcpuStats => Some(FdKind::VcpuStats),
                    AbiFdKind::None => None,
                }
            } else {
                None
            },
            lock: e.has(known::LOCK).then_some(LockRef {
                addr: e.lock,
                class: LockClassName(LockClass::from_u8(e.lock_class)),
                owner: e.arg,
            }),
            file_refs: None,
            vcpu: None,
            waits_for: None,
            stack_id: opt(e, known::STACK, e.stack_id as u32),
            ok: None,
            at_return: e.phase == abi::Phase::Exit as u8,
            child: None,
        };
        let arg = opt(e, known::ARG, e.arg);
        // A held lock reported at a path hook (lean lock watching).
        if LockOp::from_u8(e.lock_op) == LockOp::Held {
            ev.kind = Kind::LockHeld;
            return Ok(ev);
        }
        ev.kind = match hook {
            HookId::KvmCreateVm => {
                if ev.kvm.is_some() {
                    Kind::VmCreated
                } else {
                    Kind::Other
                }
            }
            HookId::KvmGetKvm => {
                ev.ok = Some(true);
                Kind::VmGet
            }
            HookId::KvmGetKvmSafe => {
                ev.ok = ret.map(|r| r != 0);
                Kind::VmGet
            }
            HookId::KvmPutKvm | HookId::KvmPutKvmNoDestroy => Kind::VmPut,
            HookId::KvmDestroyVm => Kind::VmDestroyed,
            HookId::KvmVmRelease => Kind::VmFdRelease,
            HookId::KvmArchVcpuPostcreate => {
                ev.vcpu = arg.map(|a| a as u32);
                Kind::VcpuCreated
            }
            HookId::AnonInodeGetfile => {
                ev.vcpu = arg.map(|a| a as u32);
                Kind::StatsFdCreated
            }
            HookId::KvmVcpuRelease | HookId::KvmVcpuStatsRelease | HookId::KvmVmStatsRelease => {
                ev.vcpu = arg.map(|a| a as u32);
                Kind::HolderFdRelease
            }
            HookId::KvmVfioRelease | HookId::KvmVfioDestroy | HookId::KvmDeviceRelease => {
                Kind::KvmVfioRelease
            }
            HookId::KvmVfioSetAttr => {
                // arg: group << 32 | attr; only VFIO file add/del are links.
                match arg {
                    Some(a) if (a >> 32) as u32 == ioctl::KVM_DEV_VFIO_FILE && ret == Some(0) => {
                        match a & 0xffff_ffff {
                            ioctl::KVM_DEV_VFIO_FILE_ADD => Kind::FileLink,
                            ioctl::KVM_DEV_VFIO_FILE_DEL => Kind::FileUnlink,
                            _ => Kind::Other,
                        }
                    }
                    _ => Kind::Other,
                }
            }
            HookId::VfioGroupSetKvm if ev.at_return => {
                // Its kvm argument again (NULL: an unlink); the thread's
                // notifier context is what ends.
                if ev.kvm == Some(0) {
                    ev.kvm = None;
                }
                Kind::NotifierDone
            }
            HookId::VfioRegisterNotifier if ev.at_return => Kind::NotifierDone,
            HookId::VfioRegisterNotifier => Kind::NotifierRegister,
            // A file (5.19+; a group file's private_data, the group, is arg)
            // or a group (before) learns its VM; NULL: forgets it.
            HookId::VfioFileSetKvm | HookId::VfioGroupSetKvm => {
                if ev.group.is_none() {
                    ev.group = arg;
                }
                match ev.kvm {
                    Some(0) => {
                        ev.kvm = None;
                        Kind::FileUnlink
                    }
                    Some(_) => Kind::FileLink,
                    None => Kind::Other,
                }
            }
            HookId::VfioGroupFopsUnlIoctl | HookId::VfioDeviceOpen | HookId::VfioDfOpen => {
                Kind::DeviceOpened
            }
            HookId::VfioDeviceFopsRelease => Kind::DeviceRelease,
            HookId::VfioDeviceAssignContainer => Kind::DeviceOpenAttempt,
            HookId::VfioDfClose | HookId::VfioDeviceClose => Kind::DeviceClose,
            HookId::VfioDeviceGetKvmSafe | HookId::VfioDeviceGetKvmSafeOld => Kind::VfioKvmGet,
            HookId::VfioDevicePutKvm => Kind::VfioKvmPut,
            HookId::KvmDevIoctl => match (arg, ret) {
                (Some(a), Some(r)) if a as u32 == ioctl::KVM_CREATE_VM && r >= 0 => Kind::VmCreated,
                _ => Kind::Other,
            },
            HookId::KvmVfioCreate => Kind::KvmVfioCreated,
            // Changes no count: the lock table orders its held locks (lean).
            HookId::VfioApMdevSetKvm | HookId::TestdevLockKvm => Kind::Other,
            HookId::MutexLock
            | HookId::MutexLockInterruptible
            | HookId::MutexLockKillable
            | HookId::MutexLockNested
            | HookId::MutexTrylock
            | HookId::MutexUnlock
            | HookId::ContentionBegin
            | HookId::ContentionEnd => match LockOp::from_u8(e.lock_op) {
                LockOp::Attempt => Kind::LockAttempt,
                LockOp::Acquired => Kind::LockAcquired,
                LockOp::Failed => Kind::LockFailed,
                LockOp::Released => Kind::LockReleased,
                LockOp::ContentionBegin => Kind::ContentionBegin,
                LockOp::ContentionEnd => Kind::ContentionEnd,
                LockOp::Held => Kind::LockHeld,
                LockOp::None => Kind::Other,
            },
            HookId::SysIoctl => {
                let cmd = arg.map(|a| a as u32);
                let succeeded = ret.is_some_and(|r| r >= 0);
                match cmd {
                    Some(ioctl::KVM_CREATE_VM) if succeeded => Kind::VmCreated,
                    Some(ioctl::KVM_CREATE_DEVICE) if succeeded => Kind::KvmVfioCreated,
                    Some(ioctl::KVM_CREATE_VCPU) if succeeded => {
                        ev.vcpu = arg.map(|a| (a >> 32) as u32);
                        Kind::VcpuCreated
                    }
                    Some(ioctl::KVM_GET_STATS_FD) if succeeded => Kind::StatsFdCreated,
                    Some(ioctl::VFIO_GROUP_GET_DEVICE_FD) => Kind::DeviceOpened,
                    _ => match arg {
                        // set_attr: attr | cmd << 32
                        Some(a) if (a >> 32) as u32 == ioctl::KVM_SET_DEVICE_ATTR && succeeded => {
                            match a & 0xffff_ffff {
                                ioctl::KVM_DEV_VFIO_FILE_ADD => Kind::FileLink,
                                ioctl::KVM_DEV_VFIO_FILE_DEL => Kind::FileUnlink,
                                _ => Kind::Other,
                            }
                        }
                        _ => Kind::Other,
                    },
                }
            }
            HookId::SysClose => {
                ev.file_refs = arg;
                Kind::FdClosed
            }
            HookId::SysDup => Kind::FdDup,
            HookId::SysRecvmsg | HookId::SysPidfdGetfd => Kind::FdReceived,
            HookId::ProcessExit => Kind::ProcessExit,
            HookId::ProcessExec => Kind::ProcessExec,
            HookId::ProcessFork => {
                ev.child = arg.map(|a| a as u32);
                Kind::ProcessFork
            }
            // Consumed by the live session; never analysed.
            HookId::SelfTest => Kind::Other,
        };
        if ev.kind == Kind::ContentionBegin
            && let Some(r) = ev.ret
        {
            // flags | holder's thread id << 32
            ev.ret = Some(r & 0xffff_ffff);
            ev.waits_for = Some((r >> 32) as u32).filter(|t| *t != 0);
        }
        Ok(ev)
    }

    /// An event with nothing known but who, when and where (tests and
    /// generators fill in the rest).
    pub fn new(ts_ns: u64, pid: u32, comm: Comm, kind: Kind, hook: HookId) -> Event {
        Event {
            ts_ns,
            pid,
            tgid: pid,
            cpu: 0,
            comm,
            kind,
            hook,
            kvm: None,
            device: None,
            group: None,
            file: None,
            users: None,
            open_count: None,
            ret: None,
            fd: None,
            fd_kind: None,
            file_refs: None,
            vcpu: None,
            lock: None,
            waits_for: None,
            stack_id: None,
            ok: None,
            at_return: false,
            kvm_ops: None,
            child: None,
        }
    }

    pub fn is_lock(&self) -> bool {
        self.lock.is_some()
    }
}

/// A task's `comm` as the kernel keeps it: 16 bytes, NUL-padded. Kept as the
/// bytes (copied, never allocated) and shown as text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn bytes(&self) -> &[u8] {
        let n = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        &self.0[..n]
    }
}

impl From<&str> for Comm {
    /// Truncated to 15 bytes, as the kernel truncates a task name.
    fn from(s: &str) -> Comm {
        let mut c = [0u8; 16];
        let n = s.len().min(15);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(c)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&String::from_utf8_lossy(self.bytes()))
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.bytes()))
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.bytes() == other.as_bytes()
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Comm, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Comm::from(s.as_str()))
    }
}

/// A hook id in JSON: its kernel symbol, the name users know.
pub mod hook_symbol {
    use serde::{Deserialize, Deserializer, Serializer};
    use trace_common::HookId;

    pub fn serialize<S: Serializer>(h: &HookId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.symbol())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HookId, D::Error> {
        let s = String::deserialize(d)?;
        HookId::from_symbol(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown hook {s:?}")))
    }

    /// The same for an optional hook (inferred timeline steps have none).
    pub mod opt {
        use serde::Serializer;
        use trace_common::HookId;

        pub fn serialize<S: Serializer>(h: &Option<HookId>, s: S) -> Result<S::Ok, S::Error> {
            match h {
                Some(h) => s.serialize_some(h.symbol()),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// One name per kind: what serde writes in JSON is what text and metric
    /// labels say (they once differed: `fd-closed` in JSON, `fd-close` in text),
    /// and JSON written under the old names still reads.
    #[test]
    fn json_and_text_name_a_kind_alike() {
        let mut seen = std::collections::BTreeSet::new();
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "{k:?}");
            assert!(seen.insert(k.name()), "{} twice", k.name());
            let back: Kind = serde_json::from_value(k.name().into()).unwrap();
            assert_eq!(back, k);
        }
        for (old, k) in [
            ("fd-closed", Kind::FdClosed),
            ("device-opened", Kind::DeviceOpened),
            ("contention-begin", Kind::ContentionBegin),
            ("contention-end", Kind::ContentionEnd),
        ] {
            assert_eq!(serde_json::from_value::<Kind>(old.into()).unwrap(), k);
        }
    }
}
