//! Held watched locks without the mutex API (lean lock watching): a thread
//! releasing a VFIO device records that device (`PATH_CTX`); when
//! kvm_destroy_vm runs on that thread, the owner words of the device's
//! group_lock and dev_set->lock (and of kvm->lock) are compared with the
//! current task, and each one held is reported as a `LockOp::Held` event
//! just before the destroy. The context is removed at the release's exit, so
//! no lock is read after its device is gone.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    programs::tracing::StackIdContext,
};
use trace_common::{HookId, LockClass, LockOp, MUTEX_OWNER_FLAGS, Phase, config_flags, known};

use crate::{
    config::conf,
    emit::{new_event, submit},
    kread::{field_addr, ptr_at},
    maps::{PATH_CTX, PathCtx},
};

/// The thread enters a device release; true when the context was recorded
/// (the exit then removes it).
#[inline(always)]
pub fn enter_path(device: u64, group: u64) -> bool {
    let ctx = PathCtx { device, group };
    PATH_CTX.insert(bpf_get_current_pid_tgid(), ctx, 0).is_ok()
}

#[inline(always)]
pub fn leave_path() {
    let _ = PATH_CTX.remove(bpf_get_current_pid_tgid());
}

/// The thread id of the task the mutex at `lock`'s owner word names; 0 when
/// unowned or unreadable.
#[inline(always)]
pub fn owner_tid(lock: u64) -> u32 {
    let Some(word) = field_addr(lock, conf!(mutex_owner)) else {
        return 0;
    };
    let Ok(owner) = (unsafe { bpf_probe_read_kernel(word as *const u64) }) else {
        return 0;
    };
    let task = owner & !MUTEX_OWNER_FLAGS;
    let Some(pid) = field_addr(task, conf!(task_pid)) else {
        return 0;
    };
    unsafe { bpf_probe_read_kernel(pid as *const i32) }.map_or(0, |p| p as u32)
}

/// Whether the mutex at `lock` is owned by the current task.
#[inline(always)]
pub fn owned_by_me(lock: u64) -> bool {
    let Some(word) = field_addr(lock, conf!(mutex_owner)) else {
        return false;
    };
    let Ok(owner) = (unsafe { bpf_probe_read_kernel(word as *const u64) }) else {
        return false;
    };
    let me = unsafe { bpf_get_current_task() } as u64;
    owner & !MUTEX_OWNER_FLAGS == me
}

/// Reports that the current task holds the watched `lock` (of `class`, in
/// `obj`), as seen at `hook`.
#[inline(always)]
pub fn report_held<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    lock: u64,
    class: u8,
    obj: u64,
    want_stack: bool,
) {
    let mut e = new_event(hook, Phase::Entry);
    e.lock = lock;
    e.lock_class = class;
    e.lock_op = LockOp::Held as u8;
    e.arg = obj;
    e.known |= known::LOCK | known::ARG;
    submit(ctx, e, want_stack);
}

/// Reports the watched lock at `obj + off` when the current task holds it.
#[inline(always)]
fn report_if_held<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    obj: u64,
    off: u32,
    class: LockClass,
) {
    let Some(lock) = field_addr(obj, off) else {
        return;
    };
    if owned_by_me(lock) {
        report_held(ctx, hook, lock, class as u8, obj, false);
    }
}

/// The VFIO locks of `device` (and `group`) the current task holds, in the
/// kernel's order.
#[inline(always)]
pub fn report_device_locks<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    device: u64,
    group: u64,
) {
    let set = ptr_at(device, conf!(vfio_device_dev_set)).unwrap_or(0);
    let dev_set = || {
        let off = conf!(vfio_device_set_lock);
        report_if_held(ctx, hook, set, off, LockClass::VfioDevSetLock)
    };
    let dev_set_first = conf!(flags) & config_flags::DEV_SET_FIRST != 0;
    if dev_set_first {
        dev_set();
    }
    let off = conf!(vfio_group_group_lock);
    report_if_held(ctx, hook, group, off, LockClass::VfioGroupLock);
    if !dev_set_first {
        dev_set();
    }
}

/// kvm->lock of `kvm`, when the current task holds it.
#[inline(always)]
pub fn report_kvm_lock<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, kvm: u64) {
    report_if_held(ctx, hook, kvm, conf!(kvm_lock), LockClass::KvmLock);
}

/// At kvm_destroy_vm: the VFIO locks of the device this thread is releasing,
/// then kvm->lock.
#[inline(always)]
pub fn report_held_locks<C: EbpfContext + StackIdContext>(ctx: &C, kvm: u64) {
    if let Some(p) = unsafe { PATH_CTX.get(bpf_get_current_pid_tgid()) }.copied() {
        report_device_locks(ctx, HookId::KvmDestroyVm, p.device, p.group);
    }
    report_kvm_lock(ctx, HookId::KvmDestroyVm, kvm);
}
