//! The tracepoint tier: VM, kvm-vfio device and VFIO device lifetimes as seen
//! from system calls, lock contention, and process exit. This is all a locked-down
//! kernel (no fentry, no kprobes) allows; where the struct offsets are known the
//! fd is still followed to its `struct file` and object, so the VM pointer and its
//! users_count are real here too.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::{TracePointContext, tracing::StackIdContext},
};
use trace_common::{
    FdKey, FdKind, HookId, LockOp, OFFSET_UNKNOWN, Phase, clone, fcntl, ioctl, known, passed, tp,
    tracked,
};

use crate::{
    config::conf,
    emit::{
        new_event, set_device, set_fd, set_fd_kind, set_file, set_kvm, set_ret, submit, wanted,
        watch, watch_device_locks, watched,
    },
    hook::{stash, unstash},
    kread::{
        f_op, fd_table_size, file_of_fd, file_refs, private_data, ptr_at, vfio_device_of_private,
    },
    maps::{TRACKED_FDS, TRACKED_FOPS, TRACKED_TGIDS},
    uapi::{CmsgHdr, KvmCreateDevice, KvmDeviceAttr},
};

const IOCTL: u16 = HookId::SysIoctl as u16;

#[inline(always)]
fn interesting(cmd: u32) -> bool {
    matches!(
        cmd,
        ioctl::KVM_CREATE_VM
            | ioctl::KVM_CREATE_VCPU
            | ioctl::KVM_GET_STATS_FD
            | ioctl::KVM_CREATE_DEVICE
            | ioctl::KVM_SET_DEVICE_ATTR
            | ioctl::VFIO_GROUP_GET_DEVICE_FD
    )
}

#[tracepoint]
pub fn tp_sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    let Ok(cmd) = (unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG1) }) else {
        return 0;
    };
    if !interesting(cmd as u32) {
        if cmd as u32 == ioctl::KVSCOPE_SELFTEST {
            let nonce = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG2) }.unwrap_or(0);
            answer_self_test(&ctx, nonce);
        }
        return 0;
    }
    if !wanted() {
        return 0;
    }
    let fd = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG0) }.unwrap_or(u64::MAX);
    let arg = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG2) }.unwrap_or(0);
    stash(&ctx, IOCTL, &[fd, cmd, arg]);
    0
}

/// Answers kvscope's own delivery self-test (and nobody else's: the `--pid`
/// filter does not apply, the thread group must be kvscope's). The nonce comes
/// back in `arg` so user space matches the answer to its question.
#[inline(always)]
pub fn answer_self_test<C: EbpfContext + StackIdContext>(ctx: &C, nonce: u64) {
    if !is_self() {
        return;
    }
    let mut e = new_event(HookId::SelfTest, Phase::Entry);
    e.arg = nonce;
    e.known |= known::ARG;
    submit(ctx, e, false);
}

/// The current task is kvscope itself (its self-test).
#[inline(always)]
pub fn is_self() -> bool {
    let me = conf!(self_tgid);
    me != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == me
}

/// A new VM's fd: the fd, its file and kvm, kvm->lock watched.
#[inline(always)]
pub fn vm_fd_created(e: &mut trace_common::Event, fd: i32) {
    set_fd(e, fd);
    if let Some(file) = file_of_fd(fd) {
        set_file(e, file);
        if let Some(kvm) = private_data(file) {
            set_kvm(e, kvm);
            watch(kvm, conf!(kvm_lock), trace_common::LockClass::KvmLock);
        }
    }
}

#[tracepoint]
pub fn tp_sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    let Some([fd, cmd, arg]) = unstash(IOCTL) else {
        return 0;
    };
    let ret = unsafe { ctx.read_at::<i64>(tp::SYSCALL_RET) }.unwrap_or(-1);
    let cmd = cmd as u32;
    let mut e = new_event(HookId::SysIoctl, Phase::Exit);
    e.arg = cmd as u64;
    e.known |= known::ARG;
    set_ret(&mut e, Some(ret));
    set_fd(&mut e, fd as i32);
    match cmd {
        ioctl::KVM_CREATE_VM => {
            if ret >= 0 {
                track(ret as i32, FdKind::Vm, &mut e);
                vm_fd_created(&mut e, ret as i32);
            }
        }
        ioctl::KVM_CREATE_VCPU => {
            if ret < 0 {
                return 0;
            }
            e.arg |= arg << 32;
            let vm = file_of_fd(fd as i32).and_then(private_data).unwrap_or(0);
            new_vm_holder(&mut e, ret as i32, FdKind::Vcpu, vm);
        }
        ioctl::KVM_GET_STATS_FD => {
            let Some(of) = tracked_kind(fd as i32) else {
                return 0;
            };
            if ret < 0 {
                return 0;
            }
            let Some(parent) = file_of_fd(fd as i32).and_then(private_data) else {
                return 0;
            };
            match of {
                FdKind::Vm => new_vm_holder(&mut e, ret as i32, FdKind::VmStats, parent),
                FdKind::Vcpu => {
                    let vm = ptr_at(parent, conf!(kvm_vcpu_kvm)).unwrap_or(0);
                    new_vm_holder(&mut e, ret as i32, FdKind::VcpuStats, vm);
                }
                _ => return 0,
            }
        }
        ioctl::KVM_CREATE_DEVICE => {
            // Only the kvm-vfio device; the VM fd is `fd`.
            let Ok(cd) = (unsafe { bpf_probe_read_user(arg as *const KvmCreateDevice) }) else {
                return 0;
            };
            if cd.ty != ioctl::KVM_DEV_TYPE_VFIO {
                return 0;
            }
            if ret == 0 {
                set_fd(&mut e, cd.fd as i32);
                track(cd.fd as i32, FdKind::KvmVfioDevice, &mut e);
                if let Some(file) = file_of_fd(cd.fd as i32) {
                    set_file(&mut e, file);
                    if let Some(kdev) = private_data(file)
                        && let Some(kvm) = ptr_at(kdev, conf!(kvm_device_kvm))
                    {
                        set_kvm(&mut e, kvm);
                    }
                }
            }
        }
        ioctl::KVM_SET_DEVICE_ATTR => {
            let Ok(a) = (unsafe { bpf_probe_read_user(arg as *const KvmDeviceAttr) }) else {
                return 0;
            };
            if a.group != ioctl::KVM_DEV_VFIO_FILE {
                return 0;
            }
            e.arg = a.attr | ((cmd as u64) << 32);
            // The VFIO file's fd; the kvm-vfio device's fd stays in `ret`'s event fd.
            if let Ok(vfio_fd) = unsafe { bpf_probe_read_user(a.addr as *const i32) } {
                set_fd(&mut e, vfio_fd);
                if let Some(file) = file_of_fd(vfio_fd) {
                    set_file(&mut e, file);
                }
            }
            if let Some(dfile) = file_of_fd(fd as i32)
                && let Some(kdev) = private_data(dfile)
                && let Some(kvm) = ptr_at(kdev, conf!(kvm_device_kvm))
            {
                set_kvm(&mut e, kvm);
            }
        }
        ioctl::VFIO_GROUP_GET_DEVICE_FD => {
            remember(fd as i32, FdKind::VfioGroup);
            if let Some(gfile) = file_of_fd(fd as i32)
                && let Some(group) = private_data(gfile)
            {
                e.group = group;
                e.known |= known::GROUP;
            }
            if ret >= 0 {
                set_fd(&mut e, ret as i32);
                track(ret as i32, FdKind::VfioDevice, &mut e);
                if let Some(file) = file_of_fd(ret as i32) {
                    set_file(&mut e, file);
                    if let Some(dev) = private_data(file).and_then(vfio_device_of_private) {
                        set_device(&mut e, dev);
                        watch_device_locks(&e);
                    }
                }
            }
        }
        _ => return 0,
    }
    submit(&ctx, e, false);
    0
}

/// A new fd whose file holds a VM reference (vCPU, stats): tracked, with its
/// file and the VM's count after the kernel's (inlined) get. `vm` is 0 when
/// unknown: an `Option` here left its payload unwritten on the None path,
/// which a 5.10 verifier refuses as a read of uninitialised stack.
#[inline(always)]
fn new_vm_holder(e: &mut trace_common::Event, fd: i32, kind: FdKind, vm: u64) {
    set_fd(e, fd);
    track(fd, kind, e);
    if let Some(file) = file_of_fd(fd) {
        set_file(e, file);
    }
    set_kvm(e, vm);
}

/// The kind this thread group's `fd` is tracked as, if tracked in the fd
/// table's current generation (an entry from before an exec is stale:
/// forgotten here).
#[inline(always)]
fn tracked_kind(fd: i32) -> Option<FdKind> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = FdKey { tgid, fd };
    let entry = *unsafe { TRACKED_FDS.get(key) }?;
    let generation = unsafe { TRACKED_TGIDS.get(tgid) }.copied().unwrap_or(0);
    if !tracked::is_current(entry, generation) {
        let _ = TRACKED_FDS.remove(key);
        return None;
    }
    Some(FdKind::from_u8(tracked::kind(entry)))
}

/// `fd` tracked as `kind` in this thread group's current generation (the
/// group itself tracked from here on: its exec and exit are reported).
#[inline(always)]
fn remember(fd: i32, kind: FdKind) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let generation = match unsafe { TRACKED_TGIDS.get(tgid) } {
        Some(g) => *g,
        None => {
            let _ = TRACKED_TGIDS.insert(tgid, 1, 0);
            1
        }
    };
    let entry = tracked::entry(kind as u8, generation);
    let _ = TRACKED_FDS.insert(FdKey { tgid, fd }, entry, 0);
}

/// A new fd of `kind`, made by the call kvscope saw: tracked, and its
/// file's `f_op` learnt as that kind's (how a passed fd is known).
#[inline(always)]
fn track(fd: i32, kind: FdKind, e: &mut trace_common::Event) {
    remember(fd, kind);
    set_fd_kind(e, kind);
    if let Some(op) = file_of_fd(fd).and_then(f_op)
        && unsafe { TRACKED_FOPS.get(op) }.is_none()
    {
        let _ = TRACKED_FOPS.insert(op, kind as u8, 0);
    }
}

/// An fd this thread group was given (SCM_RIGHTS, pidfd_getfd): tracked and
/// reported, with its file and object, when its file is of a kind kvscope
/// learnt; the engine counts it among the file's followed fds.
#[inline(always)]
fn received(ctx: &TracePointContext, fd: i32, hook: HookId) {
    let Some(file) = file_of_fd(fd) else {
        return;
    };
    let Some(op) = f_op(file) else {
        return;
    };
    let Some(kind) = (unsafe { TRACKED_FOPS.get(op) }).copied() else {
        return;
    };
    let kind = FdKind::from_u8(kind);
    remember(fd, kind);
    let mut e = new_event(hook, Phase::Exit);
    set_fd(&mut e, fd);
    set_fd_kind(&mut e, kind);
    set_file(&mut e, file);
    set_object(&mut e, kind, file);
    submit(ctx, e, false);
}

/// The `msg` argument of the recvmsg this task is returning from, read from
/// its saved user registers (see `passed::REGS_AT`), where they are found.
#[inline(always)]
fn recvmsg_msg() -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    let stack = ptr_at(task, conf!(task_stack))?;
    for top in passed::REGS_AT {
        // si, di and orig_ax, side by side: one read.
        let at = stack + top - passed::PT_REGS_SIZE + passed::PT_REGS_SI;
        let Ok([si, _, orig_ax]) = (unsafe { bpf_probe_read_kernel(at as *const [u64; 3]) }) else {
            continue;
        };
        if orig_ax == passed::NR_RECVMSG {
            return Some(si);
        }
    }
    None
}

/// recvmsg returned: the fds of its first SCM_RIGHTS message (up to
/// `passed::RIGHTS_FDS`), each followed if its file is of a tracked kind.
/// No entry program: a message without control data costs one exit here.
/// Two loops one after the other (find the message, then its fds): the
/// verifier walks their sum, not their product.
#[tracepoint]
pub fn tp_sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    if unsafe { ctx.read_at::<i64>(tp::SYSCALL_RET) }.unwrap_or(-1) < 0 || !wanted() {
        return 0;
    }
    let Some(msg) = recvmsg_msg() else {
        return 0;
    };
    let read = |at: u64| unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0);
    let control = read(msg + passed::MSG_CONTROL);
    if control == 0 {
        return 0;
    }
    let len = read(msg + passed::MSG_CONTROLLEN);
    let (mut off, mut fds) = (0u64, 0u64);
    for _ in 0..passed::CMSGS {
        if off + passed::CMSG_HDR > len {
            break;
        }
        let Ok(h) = (unsafe { bpf_probe_read_user((control + off) as *const CmsgHdr) }) else {
            break;
        };
        if h.level == passed::SOL_SOCKET && h.ty == passed::SCM_RIGHTS {
            fds = h.len.saturating_sub(passed::CMSG_HDR) / 4;
            break;
        }
        if h.len < passed::CMSG_HDR {
            break;
        }
        off += (h.len + 7) & !7;
    }
    let at = control + off + passed::CMSG_HDR;
    for i in 0..passed::RIGHTS_FDS as u64 {
        if i >= fds {
            break;
        }
        if let Ok(fd) = unsafe { bpf_probe_read_user((at + 4 * i) as *const i32) } {
            received(&ctx, fd, HookId::SysRecvmsg);
        }
    }
    0
}

/// pidfd_getfd returned a copy of another process's fd.
#[tracepoint]
pub fn tp_sys_exit_pidfd_getfd(ctx: TracePointContext) -> u32 {
    let ret = unsafe { ctx.read_at::<i64>(tp::SYSCALL_RET) }.unwrap_or(-1);
    if ret >= 0 && wanted() {
        received(&ctx, ret as i32, HookId::SysPidfdGetfd);
    }
    0
}

const DUP: u16 = HookId::SysDup as u16;

/// A dup of a tracked fd is entered: its old fd, for the exit.
#[inline(always)]
fn dup_entered<C: EbpfContext>(ctx: &C, old: u64) {
    if tracked_kind(old as i32).is_some() && wanted() {
        stash(ctx, DUP, &[old, 0, 0]);
    }
}

// dup(oldfd), dup2(oldfd, newfd), dup3(oldfd, newfd, flags): the old fd is
// the first argument; fcntl(fd, cmd, arg) duplicates for two commands only.
#[inline(always)]
fn on_dup_enter(ctx: &TracePointContext) {
    if let Ok(old) = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG0) } {
        dup_entered(ctx, old);
    }
}

#[tracepoint]
pub fn tp_sys_enter_dup(ctx: TracePointContext) -> u32 {
    on_dup_enter(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_enter_dup2(ctx: TracePointContext) -> u32 {
    on_dup_enter(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_enter_dup3(ctx: TracePointContext) -> u32 {
    on_dup_enter(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    let cmd = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG1) }.unwrap_or(u64::MAX);
    if cmd == fcntl::F_DUPFD || cmd == fcntl::F_DUPFD_CLOEXEC {
        on_dup_enter(&ctx);
    }
    0
}

/// The dup returned: its new fd is tracked as the old one's kind, and
/// reported with its file and object (the engine counts the file's fds).
#[inline(always)]
fn on_dup_exit(ctx: &TracePointContext) {
    let Some([old, _, _]) = unstash(DUP) else {
        return;
    };
    let ret = unsafe { ctx.read_at::<i64>(tp::SYSCALL_RET) }.unwrap_or(-1);
    // dup2(fd, fd) returns fd: nothing new.
    if ret < 0 || ret as u64 == old {
        return;
    }
    let Some(kind) = tracked_kind(old as i32) else {
        return;
    };
    let mut e = new_event(HookId::SysDup, Phase::Exit);
    e.arg = old;
    e.known |= known::ARG;
    set_fd(&mut e, ret as i32);
    track(ret as i32, kind, &mut e);
    if let Some(file) = file_of_fd(ret as i32) {
        set_file(&mut e, file);
        set_object(&mut e, kind, file);
    }
    submit(ctx, e, false);
}

#[tracepoint]
pub fn tp_sys_exit_dup(ctx: TracePointContext) -> u32 {
    on_dup_exit(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_exit_dup2(ctx: TracePointContext) -> u32 {
    on_dup_exit(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_exit_dup3(ctx: TracePointContext) -> u32 {
    on_dup_exit(&ctx);
    0
}

#[tracepoint]
pub fn tp_sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    on_dup_exit(&ctx);
    0
}

/// The object behind a tracked fd's file, by its kind: the VM (with its
/// count), the VFIO device, or the group.
#[inline(always)]
fn set_object(e: &mut trace_common::Event, kind: FdKind, file: u64) {
    let Some(p) = private_data(file) else {
        return;
    };
    match kind {
        FdKind::Vm | FdKind::VmStats => set_kvm(e, p),
        FdKind::Vcpu | FdKind::VcpuStats => {
            if let Some(kvm) = ptr_at(p, conf!(kvm_vcpu_kvm)) {
                set_kvm(e, kvm);
            }
        }
        FdKind::KvmVfioDevice => {
            if let Some(kvm) = ptr_at(p, conf!(kvm_device_kvm)) {
                set_kvm(e, kvm);
            }
        }
        FdKind::VfioDevice => {
            if let Some(dev) = vfio_device_of_private(p) {
                set_device(e, dev);
            }
        }
        FdKind::VfioGroup => {
            e.group = p;
            e.known |= known::GROUP;
        }
        FdKind::None => {}
    }
}

#[tracepoint]
pub fn tp_sys_enter_close(ctx: TracePointContext) -> u32 {
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG0) }) else {
        return 0;
    };
    let Some(kind) = tracked_kind(fd as i32) else {
        return 0;
    };
    let key = FdKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as i32,
    };
    let _ = TRACKED_FDS.remove(key);
    let mut e = new_event(HookId::SysClose, Phase::Entry);
    set_fd(&mut e, fd as i32);
    set_fd_kind(&mut e, kind);
    // The fd is still installed at sys_enter: read what it points to, and
    // how many references its file has (this close puts the VM's only at 1).
    if let Some(file) = file_of_fd(fd as i32) {
        set_file(&mut e, file);
        if let Some(refs) = file_refs(file) {
            e.arg = refs;
            e.known |= known::ARG;
        }
        set_object(&mut e, kind, file);
    }
    submit(&ctx, e, false);
    0
}

const CLONE: u16 = HookId::ProcessFork as u16;

/// A clone by a thread group with tracked fds, making a process with its
/// own copy of the fd table: remembered for sched_process_fork (within
/// this call, before the child first runs).
#[inline(always)]
fn clone_entered<C: EbpfContext>(ctx: &C, flags: u64) {
    if flags & (clone::CLONE_FILES | clone::CLONE_THREAD) != 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { TRACKED_TGIDS.get(tgid) }.is_some() {
        stash(ctx, CLONE, &[flags, 0, 0]);
    }
}

#[tracepoint]
pub fn tp_sys_enter_clone(ctx: TracePointContext) -> u32 {
    if let Ok(flags) = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG0) } {
        clone_entered(&ctx, flags);
    }
    0
}

/// clone3(uargs, size): the flags are the first field of `struct clone_args`.
#[tracepoint]
pub fn tp_sys_enter_clone3(ctx: TracePointContext) -> u32 {
    if let Ok(uargs) = unsafe { ctx.read_at::<u64>(tp::SYSCALL_ARG0) }
        && let Ok(flags) = unsafe { bpf_probe_read_user(uargs as *const u64) }
    {
        clone_entered(&ctx, flags);
    }
    0
}

/// A clone that failed never reached sched_process_fork: its stash goes.
#[tracepoint]
pub fn tp_sys_exit_clone(_ctx: TracePointContext) -> u32 {
    let _ = unstash(CLONE);
    0
}

#[tracepoint]
pub fn tp_sys_exit_clone3(_ctx: TracePointContext) -> u32 {
    let _ = unstash(CLONE);
    0
}

/// The child of a clone remembered above exists, its fd table copied, and
/// has not run yet: each tracked fd below `FORK_FDS` is tracked in the child
/// too, and one event names the child (fd -1: the table is larger, fds past
/// the bound are not followed). User space copies what it knows of the
/// parent's fds. The loop only copies map entries, with nothing carried from
/// one fd to the next: an event per fd made the verifier walk 503 470
/// instructions on 6.18, and the 5.10 and 6.1 guests timed out loading it.
#[tracepoint]
pub fn tp_sched_process_fork(ctx: TracePointContext) -> u32 {
    if unstash(CLONE).is_none() {
        return 0;
    }
    let off = conf!(fork_child_pid);
    if off == OFFSET_UNKNOWN {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off as usize) }) else {
        return 0;
    };
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(generation) = (unsafe { TRACKED_TGIDS.get(parent) }).copied() else {
        return 0;
    };
    let child = child as u32;
    let _ = TRACKED_TGIDS.insert(child, 1, 0);
    let size = fd_table_size().unwrap_or(0);
    for fd in 0..tracked::FORK_FDS {
        if fd >= size {
            break;
        }
        inherit(parent, generation, child, fd);
    }
    let mut e = new_event(HookId::ProcessFork, Phase::Entry);
    e.arg = child as u64;
    e.known |= known::ARG;
    if size > tracked::FORK_FDS {
        set_fd(&mut e, -1);
    }
    submit(&ctx, e, false);
    0
}

/// The parent's `fd`, if tracked now, tracked in `child` too.
#[inline(always)]
fn inherit(parent: u32, generation: u32, child: u32, fd: i32) {
    let Some(entry) = (unsafe { TRACKED_FDS.get(FdKey { tgid: parent, fd }) }).copied() else {
        return;
    };
    if tracked::is_current(entry, generation) {
        let copy = tracked::entry(tracked::kind(entry), 1);
        let _ = TRACKED_FDS.insert(FdKey { tgid: child, fd }, copy, 0);
    }
}

/// Exec of a thread group that held tracked fds: the exec closed the
/// O_CLOEXEC ones without close(2) (sched_process_exec comes after). Its fd
/// entries become stale (a new generation); user space is told.
#[tracepoint]
pub fn tp_sched_process_exec(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(generation) = (unsafe { TRACKED_TGIDS.get(tgid) }).copied() else {
        return 0;
    };
    let _ = TRACKED_TGIDS.insert(tgid, generation.wrapping_add(1), 0);
    let e = new_event(HookId::ProcessExec, Phase::Entry);
    submit(&ctx, e, false);
    0
}

/// Exit of a thread group that held tracked fds: its fds are closed by the
/// kernel without close(2).
#[tracepoint]
pub fn tp_sched_process_exit(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { TRACKED_TGIDS.get(tgid) }.is_none() {
        return 0;
    }
    // Only the last thread of the group ends its fd table: `group_dead` says
    // so where the record has it (6.18+); before, the leader's exit stands in.
    let off = conf!(exit_group_dead);
    let group_dead = if off != trace_common::OFFSET_UNKNOWN {
        unsafe { ctx.read_at::<u8>(off as usize) }.unwrap_or(0) != 0
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        pid_tgid as u32 == (pid_tgid >> 32) as u32
    };
    if !group_dead {
        return 0;
    }
    let _ = TRACKED_TGIDS.remove(tgid);
    let e = new_event(HookId::ProcessExit, Phase::Entry);
    submit(&ctx, e, false);
    0
}

#[tracepoint]
pub fn tp_contention_begin(ctx: TracePointContext) -> u32 {
    contention(&ctx, HookId::ContentionBegin, LockOp::ContentionBegin)
}

#[tracepoint]
pub fn tp_contention_end(ctx: TracePointContext) -> u32 {
    contention(&ctx, HookId::ContentionEnd, LockOp::ContentionEnd)
}

#[inline(always)]
fn contention(ctx: &TracePointContext, hook: HookId, op: LockOp) -> u32 {
    let Ok(lock) = (unsafe { ctx.read_at::<u64>(tp::CONTENTION_LOCK) }) else {
        return 0;
    };
    let Some(w) = watched(lock) else {
        return 0;
    };
    if !wanted() {
        return 0;
    }
    // A wait on a lock this task owns: it waits for itself (self-deadlock),
    // seen without any mutex hook. Its stack is the evidence.
    if op == LockOp::ContentionBegin && crate::held::owned_by_me(lock) {
        crate::held::report_held(ctx, hook, lock, w.class, w.owner, true);
    }
    let mut e = new_event(hook, Phase::Entry);
    e.lock = lock;
    e.lock_class = w.class;
    e.lock_op = op as u8;
    e.known |= known::LOCK | known::ARG | known::RET;
    e.arg = w.owner;
    // begin: flags (LCB_F_*) and who holds the lock (a wait-for edge); end: ret.
    let flags = unsafe { ctx.read_at::<i32>(tp::CONTENTION_FLAGS_OR_RET) }.unwrap_or(0);
    let begin = op == LockOp::ContentionBegin;
    e.ret = if begin {
        (flags as u32 as i64) | ((crate::held::owner_tid(lock) as i64) << 32)
    } else {
        flags as i64
    };
    // A wait on a watched lock is rare and the evidence of a deadlock: its stack.
    submit(ctx, e, begin);
    0
}
