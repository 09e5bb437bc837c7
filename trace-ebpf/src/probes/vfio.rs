//! VFIO core: device open/release across kernel lines, VFIO's own kvm reference
//! (6.3+), and the group <-> VM link.
use aya_ebpf::{EbpfContext, programs::tracing::StackIdContext};
use trace_common::{HookId, LockClass, Phase, ioctl, known};

use crate::{
    config::conf,
    emit::{
        every_stack, new_event, set_device, set_fd, set_file, set_kvm, set_ret, submit, wanted,
        watch, watch_device_locks,
    },
    held::{enter_path, leave_path, report_device_locks, report_kvm_lock},
    hook::Call,
    kread::{file_of_fd, private_data, ptr_at, vfio_device_of_private},
};

// 6.1: long vfio_group_fops_unl_ioctl(struct file *filep, unsigned int cmd,
// unsigned long arg). vfio_device_open is static and inlined there, so this is
// the open: the group is filep->private_data at entry, the device is behind the
// returned fd at exit.
entry_exit_hook!(
    HookId::VfioGroupFopsUnlIoctl,
    fentry_vfio_group_fops_unl_ioctl,
    fexit_vfio_group_fops_unl_ioctl,
    kprobe_vfio_group_fops_unl_ioctl,
    kretprobe_vfio_group_fops_unl_ioctl,
    on_group_ioctl_entry,
    on_group_ioctl_exit
);

fn on_group_ioctl_entry<C>(_ctx: &C, call: &Call) -> bool {
    if call.arg(1) as u32 != ioctl::VFIO_GROUP_GET_DEVICE_FD || !wanted() {
        return false;
    }
    // Watch the locks the open is about to take, before it takes them.
    if let Some(group) = private_data(call.arg(0)) {
        watch(
            group,
            conf!(vfio_group_group_lock),
            LockClass::VfioGroupLock,
        );
        if let Some(kvm) = ptr_at(group, conf!(vfio_group_kvm)) {
            watch(kvm, conf!(kvm_lock), LockClass::KvmLock);
        }
    }
    true
}

fn on_group_ioctl_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if call.arg(1) as u32 != ioctl::VFIO_GROUP_GET_DEVICE_FD || !wanted() {
        return;
    }
    let mut e = new_event(HookId::VfioGroupFopsUnlIoctl, Phase::Exit);
    e.arg = call.arg(1);
    e.known |= known::ARG;
    set_ret(&mut e, call.ret);
    if let Some(group) = private_data(call.arg(0)) {
        e.group = group;
        e.known |= known::GROUP;
        if let Some(kvm) = ptr_at(group, conf!(vfio_group_kvm)) {
            set_kvm(&mut e, kvm);
        }
    }
    if let Some(ret) = call.ret
        && ret >= 0
    {
        set_fd(&mut e, ret as i32);
        if let Some(file) = file_of_fd(ret as i32) {
            set_file(&mut e, file);
            if let Some(dev) = private_data(file).and_then(vfio_device_of_private) {
                set_device(&mut e, dev);
                watch_device_locks(&e);
            }
        }
    }
    submit(ctx, e, true);
}

// 6.2-6.5: int vfio_device_open(struct vfio_device *device, ...).
entry_exit_hook!(
    HookId::VfioDeviceOpen,
    fentry_vfio_device_open,
    fexit_vfio_device_open,
    kprobe_vfio_device_open,
    kretprobe_vfio_device_open,
    on_device_open_entry,
    on_device_open_exit
);

fn on_device_open_entry<C>(_ctx: &C, call: &Call) -> bool {
    watch_locks_of_device(call.arg(0))
}

fn on_device_open_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    open_exit(ctx, HookId::VfioDeviceOpen, call.arg(0), call.ret);
}

// 6.6+: int vfio_df_open(struct vfio_device_file *df); df->device.
entry_exit_hook!(
    HookId::VfioDfOpen,
    fentry_vfio_df_open,
    fexit_vfio_df_open,
    kprobe_vfio_df_open,
    kretprobe_vfio_df_open,
    on_df_open_entry,
    on_df_open_exit
);

fn on_df_open_entry<C>(_ctx: &C, call: &Call) -> bool {
    match ptr_at(call.arg(0), conf!(vfio_device_file_device)) {
        Some(dev) => watch_locks_of_device(dev),
        None => wanted(),
    }
}

fn on_df_open_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    let dev = ptr_at(call.arg(0), conf!(vfio_device_file_device)).unwrap_or(0);
    open_exit(ctx, HookId::VfioDfOpen, dev, call.ret);
}

#[inline(always)]
fn watch_locks_of_device(dev: u64) -> bool {
    if !wanted() {
        return false;
    }
    let mut e = trace_common::Event::ZERO;
    set_device(&mut e, dev);
    watch_device_locks(&e);
    true
}

#[inline(always)]
fn open_exit<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, dev: u64, ret: Option<i64>) {
    if !wanted() {
        return;
    }
    let mut e = new_event(hook, Phase::Exit);
    set_device(&mut e, dev);
    set_ret(&mut e, ret.map(|r| r as i32 as i64));
    submit(ctx, e, true);
}

// int vfio_device_fops_release(struct inode *inode, struct file *filep): the
// device fd's release, all lines. private_data: device (<6.6) or df (6.6+).
// The exit only forgets the thread's path context (see `PATH_CTX`).
entry_exit_hook!(
    HookId::VfioDeviceFopsRelease,
    fentry_vfio_device_fops_release,
    fexit_vfio_device_fops_release,
    kprobe_vfio_device_fops_release,
    kretprobe_vfio_device_fops_release,
    on_fops_release,
    on_fops_release_exit
);

fn on_fops_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if !wanted() {
        return false;
    }
    let mut e = new_event(HookId::VfioDeviceFopsRelease, Phase::Entry);
    let file = call.arg(1);
    set_file(&mut e, file);
    let mut in_path = false;
    if let Some(dev) = private_data(file).and_then(vfio_device_of_private) {
        set_device(&mut e, dev);
        watch_device_locks(&e);
        in_path = enter_path(dev, e.group);
    }
    submit(ctx, e, true);
    in_path
}

fn on_fops_release_exit<C>(_ctx: &C, _call: &Call) {
    leave_path();
}

// 6.6+: void vfio_df_close(struct vfio_device_file *df); 6.2-6.5:
// void vfio_device_close(struct vfio_device *device, ...). open_count before.
entry_hook!(fentry_vfio_df_close, kprobe_vfio_df_close, on_df_close);
entry_hook!(
    fentry_vfio_device_close,
    kprobe_vfio_device_close,
    on_device_close
);

fn on_df_close<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    let dev = ptr_at(call.arg(0), conf!(vfio_device_file_device)).unwrap_or(0);
    device_entry(ctx, HookId::VfioDfClose, dev);
    false
}

fn on_device_close<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    device_entry(ctx, HookId::VfioDeviceClose, call.arg(0));
    false
}

// 6.1 and the kvm_ops patch: int vfio_device_assign_container(struct vfio_device *)
// runs first in the inlined vfio_device_open: the device of an open attempt,
// which the group ioctl's exit cannot name when the open fails.
entry_hook!(
    fentry_vfio_device_assign_container,
    kprobe_vfio_device_assign_container,
    on_assign_container
);

fn on_assign_container<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    device_entry(ctx, HookId::VfioDeviceAssignContainer, call.arg(0));
    false
}

#[inline(always)]
fn device_entry<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, dev: u64) {
    if !wanted() {
        return;
    }
    let mut e = new_event(hook, Phase::Entry);
    set_device(&mut e, dev);
    submit(ctx, e, true);
}

// 6.6+: void vfio_device_get_kvm_safe(struct vfio_device *device, struct kvm *kvm);
// 6.3-6.5: _vfio_device_get_kvm_safe, same shape. Count read after the get.
exit_hook!(
    HookId::VfioDeviceGetKvmSafe,
    fexit_vfio_device_get_kvm_safe,
    kprobe_vfio_device_get_kvm_safe,
    kretprobe_vfio_device_get_kvm_safe,
    on_vfio_get_kvm
);
exit_hook!(
    HookId::VfioDeviceGetKvmSafeOld,
    fexit_vfio_device_get_kvm_safe_old,
    kprobe_vfio_device_get_kvm_safe_old,
    kretprobe_vfio_device_get_kvm_safe_old,
    on_vfio_get_kvm_old
);

fn on_vfio_get_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    vfio_get_kvm(ctx, HookId::VfioDeviceGetKvmSafe, call);
}

fn on_vfio_get_kvm_old<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    vfio_get_kvm(ctx, HookId::VfioDeviceGetKvmSafeOld, call);
}

#[inline(always)]
fn vfio_get_kvm<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, call: &Call) {
    if !wanted() {
        return;
    }
    let mut e = new_event(hook, Phase::Exit);
    set_kvm(&mut e, call.arg(1));
    set_device(&mut e, call.arg(0));
    submit(ctx, e, true);
}

// void vfio_device_put_kvm(struct vfio_device *device): device->kvm, count before.
entry_hook!(
    fentry_vfio_device_put_kvm,
    kprobe_vfio_device_put_kvm,
    on_vfio_put_kvm
);

fn on_vfio_put_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    device_entry(ctx, HookId::VfioDevicePutKvm, call.arg(0));
    false
}

// void vfio_file_set_kvm(struct file *file, struct kvm *kvm): link (kvm) or
// unlink (NULL) a group or device file. `arg` carries file->private_data.
entry_hook!(
    fentry_vfio_file_set_kvm,
    kprobe_vfio_file_set_kvm,
    on_file_set_kvm
);

fn on_file_set_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if !wanted() {
        return false;
    }
    let file = call.arg(0);
    let private = private_data(file);
    // Lean lock order: kvm->lock held here (kvm_vfio_release runs under it)
    // orders it before the group_lock this call takes (before 6.3). An unlink
    // passes NULL: the group still names the VM it is linked to.
    let kvm = match call.arg(1) {
        0 => private.and_then(|g| ptr_at(g, conf!(vfio_group_kvm))),
        k => Some(k),
    };
    if let Some(kvm) = kvm {
        report_kvm_lock(ctx, HookId::VfioFileSetKvm, kvm);
    }
    let mut e = new_event(HookId::VfioFileSetKvm, Phase::Entry);
    set_file(&mut e, file);
    if let Some(p) = private {
        e.arg = p;
        e.known |= known::ARG;
    }
    // kvm NULL means unlink: known with value 0.
    set_kvm(&mut e, call.arg(1));
    if call.arg(1) == 0 {
        e.known |= known::KVM;
    }
    // Called by KVM_SET_DEVICE_ATTR's add or delete, or by the kvm-vfio
    // device's release in the VM's teardown: the events around it (the
    // set_attr exit, kvm_destroy_vm) name which, so no stack by default.
    submit(ctx, e, every_stack());
    false
}

// 5.10-5.18: void vfio_group_set_kvm(struct vfio_group *, struct kvm *): the
// group learns its VM (NULL: forgets it) and the group notifier hands it to
// the drivers (VFIO_GROUP_NOTIFY_SET_KVM), whose callbacks may take their own
// reference: a get between this entry and its exit is the notifier's.
entry_exit_hook!(
    HookId::VfioGroupSetKvm,
    fentry_vfio_group_set_kvm,
    fexit_vfio_group_set_kvm,
    kprobe_vfio_group_set_kvm,
    kretprobe_vfio_group_set_kvm,
    on_group_set_kvm,
    on_group_set_kvm_exit
);

fn on_group_set_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if !wanted() {
        return false;
    }
    group_set_kvm_event(ctx, call, Phase::Entry);
    true
}

fn on_group_set_kvm_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    group_set_kvm_event(ctx, call, Phase::Exit);
}

#[inline(always)]
fn group_set_kvm_event<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call, phase: Phase) {
    let mut e = new_event(HookId::VfioGroupSetKvm, phase);
    e.group = call.arg(0);
    e.known |= known::GROUP;
    // kvm NULL means unlink: known with value 0.
    set_kvm(&mut e, call.arg(1));
    e.known |= known::KVM;
    submit(ctx, e, phase == Phase::Entry);
}

// 5.10-5.18: int vfio_register_notifier(struct device *, enum vfio_notify_type,
// unsigned long *events, struct notifier_block *): a driver registering for
// VFIO_GROUP_NOTIFY (1) from its open is called back at once when the group
// has a VM; a get between this entry and its exit is that notifier's.
const VFIO_GROUP_NOTIFY: u64 = 1;

entry_exit_hook!(
    HookId::VfioRegisterNotifier,
    fentry_vfio_register_notifier,
    fexit_vfio_register_notifier,
    kprobe_vfio_register_notifier,
    kretprobe_vfio_register_notifier,
    on_register_notifier,
    on_register_notifier_exit
);

fn on_register_notifier<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if call.arg(1) != VFIO_GROUP_NOTIFY || !wanted() {
        return false;
    }
    submit(
        ctx,
        new_event(HookId::VfioRegisterNotifier, Phase::Entry),
        true,
    );
    true
}

fn on_register_notifier_exit<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if call.arg(1) != VFIO_GROUP_NOTIFY {
        return;
    }
    let mut e = new_event(HookId::VfioRegisterNotifier, Phase::Exit);
    set_ret(&mut e, call.ret);
    submit(ctx, e, false);
}

// Drivers that take kvm->lock under the VFIO open locks (S2):
// vfio_ap_mdev_set_kvm(struct ap_matrix_mdev *, struct kvm *) and the lab's
// testdev_lock_kvm(struct vfio_device *, struct kvm *); both first arguments
// start with the `struct vfio_device`. The VFIO locks held here (owner words)
// are ordered before kvm->lock (the lock-order table says the call takes it).
entry_hook!(
    fentry_vfio_ap_mdev_set_kvm,
    kprobe_vfio_ap_mdev_set_kvm,
    on_vfio_ap_set_kvm
);
entry_hook!(
    fentry_testdev_lock_kvm,
    kprobe_testdev_lock_kvm,
    on_testdev_lock_kvm
);

fn on_vfio_ap_set_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    driver_takes_kvm_lock(ctx, HookId::VfioApMdevSetKvm, call);
    false
}

fn on_testdev_lock_kvm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    driver_takes_kvm_lock(ctx, HookId::TestdevLockKvm, call);
    false
}

#[inline(always)]
fn driver_takes_kvm_lock<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, call: &Call) {
    if !wanted() {
        return;
    }
    let (dev, kvm) = (call.arg(0), call.arg(1));
    let group = ptr_at(dev, conf!(vfio_device_group)).unwrap_or(0);
    report_device_locks(ctx, hook, dev, group);
    let mut e = new_event(hook, Phase::Entry);
    set_device(&mut e, dev);
    set_kvm(&mut e, kvm);
    watch(kvm, conf!(kvm_lock), LockClass::KvmLock);
    submit(ctx, e, true);
}
