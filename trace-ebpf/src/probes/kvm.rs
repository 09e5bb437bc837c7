//! KVM core: VM lifetime and references (virt/kvm/kvm_main.c) and the kvm-vfio
//! device (virt/kvm/vfio.c).
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    programs::tracing::StackIdContext,
};
use trace_common::{FdKind, HookId, LockClass, Phase, ioctl, known};

use crate::{
    config::conf,
    emit::{
        every_stack, new_event, set_fd_kind, set_file, set_kvm, set_ret, submit, wanted, watch,
    },
    hook::Call,
    kread::{is_kptr, private_data, ptr_at},
    maps::TRACKED_TGIDS,
    probes::syscalls::{answer_self_test, is_self, vm_fd_created},
    uapi::KvmDeviceAttr,
};

// struct kvm *kvm_create_vm(unsigned long type, const char *fdname): the VM is
// the return value.
exit_hook!(
    HookId::KvmCreateVm,
    fexit_kvm_create_vm,
    kprobe_kvm_create_vm,
    kretprobe_kvm_create_vm,
    on_create_vm
);

fn on_create_vm<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    let Some(ret) = call.ret else { return };
    if !wanted() {
        return;
    }
    let mut e = new_event(HookId::KvmCreateVm, Phase::Exit);
    set_ret(&mut e, Some(ret));
    if is_kptr(ret as u64) {
        set_kvm(&mut e, ret as u64);
        watch(ret as u64, conf!(kvm_lock), LockClass::KvmLock);
    }
    submit(ctx, e, false);
}

// void kvm_get_kvm(struct kvm *kvm): count read after the increment.
exit_hook!(
    HookId::KvmGetKvm,
    fexit_kvm_get_kvm,
    kprobe_kvm_get_kvm,
    kretprobe_kvm_get_kvm,
    on_get
);

fn on_get<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if !wanted() {
        return;
    }
    let mut e = new_event(HookId::KvmGetKvm, Phase::Exit);
    set_kvm(&mut e, call.arg(0));
    submit(ctx, e, true);
}

// bool kvm_get_kvm_safe(struct kvm *kvm): false when the VM is already dying.
exit_hook!(
    HookId::KvmGetKvmSafe,
    fexit_kvm_get_kvm_safe,
    kprobe_kvm_get_kvm_safe,
    kretprobe_kvm_get_kvm_safe,
    on_get_safe
);

fn on_get_safe<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if !wanted() {
        return;
    }
    let mut e = new_event(HookId::KvmGetKvmSafe, Phase::Exit);
    set_kvm(&mut e, call.arg(0));
    // bool in a register: only the low byte is defined.
    set_ret(&mut e, call.ret.map(|r| r & 0xff));
    submit(ctx, e, true);
}

// void kvm_put_kvm(struct kvm *kvm) and kvm_put_kvm_no_destroy: count read
// before the decrement (the put may destroy the VM).
entry_hook!(fentry_kvm_put_kvm, kprobe_kvm_put_kvm, on_put);
entry_hook!(
    fentry_kvm_put_kvm_no_destroy,
    kprobe_kvm_put_kvm_no_destroy,
    on_put_no_destroy
);

fn on_put<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    put_event(ctx, HookId::KvmPutKvm, call.arg(0))
}

fn on_put_no_destroy<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    put_event(ctx, HookId::KvmPutKvmNoDestroy, call.arg(0))
}

#[inline(always)]
fn put_event<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, kvm: u64) -> bool {
    if !wanted() {
        return false;
    }
    let mut e = new_event(hook, Phase::Entry);
    set_kvm(&mut e, kvm);
    submit(ctx, e, true);
    false
}

// static void kvm_destroy_vm(struct kvm *kvm)
entry_hook!(fentry_kvm_destroy_vm, kprobe_kvm_destroy_vm, on_destroy);

fn on_destroy<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if !wanted() {
        return false;
    }
    crate::held::report_held_locks(ctx, call.arg(0));
    let mut e = new_event(HookId::KvmDestroyVm, Phase::Entry);
    set_kvm(&mut e, call.arg(0));
    submit(ctx, e, true);
    false
}

// static int kvm_vm_release(struct inode *inode, struct file *filp): the VM fd's
// last close; filp->private_data is the kvm.
entry_hook!(fentry_kvm_vm_release, kprobe_kvm_vm_release, on_vm_release);

fn on_vm_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if !wanted() {
        return false;
    }
    let mut e = new_event(HookId::KvmVmRelease, Phase::Entry);
    let file = call.arg(1);
    set_file(&mut e, file);
    if let Some(kvm) = private_data(file) {
        set_kvm(&mut e, kvm);
    }
    submit(ctx, e, false);
    false
}

// static void kvm_vfio_release(struct kvm_device *dev), entered with kvm->lock
// held (6.2-rc6+, the 51cdc8bc backport in 6.1.y).
entry_hook!(
    fentry_kvm_vfio_release,
    kprobe_kvm_vfio_release,
    on_kvm_vfio_release
);

fn on_kvm_vfio_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    kvm_device_event(ctx, HookId::KvmVfioRelease, call.arg(0));
    false
}

// Before 6.2-rc6 (5.10, early 6.1.y) the kvm-vfio device has no .release op:
// static int kvm_device_release(struct inode *, struct file *filp) gives the
// device fd's reference back (filp->private_data is the kvm_device). x86 has
// no other KVM device type.
entry_hook!(
    fentry_kvm_device_release,
    kprobe_kvm_device_release,
    on_kvm_device_release
);

fn on_kvm_device_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if let Some(kdev) = private_data(call.arg(1)) {
        kvm_device_event(ctx, HookId::KvmDeviceRelease, kdev);
    }
    false
}

/// Event for a kvm-vfio device (`struct kvm_device *`): its kvm, and both locks
/// it can take (kvm_vfio.lock, kvm.lock) become watched.
#[inline(always)]
fn kvm_device_event<C: EbpfContext + StackIdContext>(ctx: &C, hook: HookId, kdev: u64) {
    if !wanted() {
        return;
    }
    let mut e = new_event(hook, Phase::Entry);
    if let Some(kvm) = ptr_at(kdev, conf!(kvm_device_kvm)) {
        set_kvm(&mut e, kvm);
        watch(kvm, conf!(kvm_lock), LockClass::KvmLock);
    }
    if let Some(kv) = ptr_at(kdev, conf!(kvm_device_private)) {
        watch(kv, conf!(kvm_vfio_lock), LockClass::KvmVfioLock);
    }
    submit(ctx, e, true);
}

// static int kvm_vfio_set_attr(struct kvm_device *dev, struct kvm_device_attr *attr):
// group/device file add (attr 1) or delete (attr 2); `fd` is the VFIO file's fd.
exit_hook!(
    HookId::KvmVfioSetAttr,
    fexit_kvm_vfio_set_attr,
    kprobe_kvm_vfio_set_attr,
    kretprobe_kvm_vfio_set_attr,
    on_set_attr
);

fn on_set_attr<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if !wanted() {
        return;
    }
    let mut e = new_event(HookId::KvmVfioSetAttr, Phase::Exit);
    let kdev = call.arg(0);
    if let Some(kvm) = ptr_at(kdev, conf!(kvm_device_kvm)) {
        set_kvm(&mut e, kvm);
    }
    if let Some(kv) = ptr_at(kdev, conf!(kvm_device_private)) {
        watch(kv, conf!(kvm_vfio_lock), LockClass::KvmVfioLock);
    }
    // The attr lives in the ioctl's frame, which is still there at our return.
    if let Ok(attr) = unsafe { bpf_probe_read_kernel(call.arg(1) as *const KvmDeviceAttr) } {
        e.arg = attr.attr | ((attr.group as u64) << 32);
        e.known |= known::ARG;
        if let Ok(fd) = unsafe { aya_ebpf::helpers::bpf_probe_read_user(attr.addr as *const i32) } {
            crate::emit::set_fd(&mut e, fd);
        }
    }
    set_ret(&mut e, call.ret.map(|r| r as i32 as i64));
    // Always KVM_SET_DEVICE_ATTR's handler under the ioctl: a stack says
    // nothing the event does not (every_stack asks for it anyway).
    submit(ctx, e, every_stack());
}

// static long kvm_dev_ioctl(struct file *filp, unsigned int ioctl, unsigned long arg):
// /dev/kvm's ioctls only (a vCPU's KVM_RUN never passes here). Lean at tiers
// 1-2: KVM_CREATE_VM's fd, file and kvm in place of the syscall tracepoints;
// and kvscope's own self-test.
exit_hook!(
    HookId::KvmDevIoctl,
    fexit_kvm_dev_ioctl,
    kprobe_kvm_dev_ioctl,
    kretprobe_kvm_dev_ioctl,
    on_dev_ioctl,
    dev_ioctl_kept
);

#[inline(always)]
fn dev_ioctl_kept(call: &Call) -> bool {
    match call.arg(1) as u32 {
        ioctl::KVSCOPE_SELFTEST => is_self(),
        ioctl::KVM_CREATE_VM => wanted(),
        _ => false,
    }
}

fn on_dev_ioctl<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    let cmd = call.arg(1) as u32;
    if cmd == ioctl::KVSCOPE_SELFTEST {
        answer_self_test(ctx, call.arg(2));
        return;
    }
    if cmd != ioctl::KVM_CREATE_VM || !wanted() {
        return;
    }
    let Some(ret) = call.ret.filter(|r| *r >= 0) else {
        return;
    };
    let mut e = new_event(HookId::KvmDevIoctl, Phase::Exit);
    e.arg = cmd as u64;
    e.known |= known::ARG;
    set_ret(&mut e, Some(ret));
    set_fd_kind(&mut e, FdKind::Vm);
    vm_fd_created(&mut e, ret as i32);
    // Its exit is reported (the fds go with it); no fd is tracked: no close
    // program runs here to forget it.
    // An fd table generation already there stays.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACKED_TGIDS.insert(tgid, 1, crate::emit::BPF_NOEXIST);
    submit(ctx, e, true);
}

// static int kvm_vfio_create(struct kvm_device *dev, u32 type): the kvm-vfio
// device of KVM_CREATE_DEVICE, before its kvm reference is taken (inlined
// kvm_get_kvm, inferred at the next count read).
exit_hook!(
    HookId::KvmVfioCreate,
    fexit_kvm_vfio_create,
    kprobe_kvm_vfio_create,
    kretprobe_kvm_vfio_create,
    on_kvm_vfio_create
);

fn on_kvm_vfio_create<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    if call.ret != Some(0) || !wanted() {
        return;
    }
    kvm_device_event(ctx, HookId::KvmVfioCreate, call.arg(0));
}

// void kvm_arch_vcpu_postcreate(struct kvm_vcpu *vcpu): KVM_CREATE_VCPU calls
// it once the vCPU fd exists, after its inlined kvm_get_kvm: the count read
// here holds the vCPU fd's reference. Lean at tiers 1-2 (deep: the ioctl).
entry_hook!(
    fentry_kvm_arch_vcpu_postcreate,
    kprobe_kvm_arch_vcpu_postcreate,
    on_vcpu_postcreate
);

fn on_vcpu_postcreate<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    let hook = HookId::KvmArchVcpuPostcreate;
    vcpu_event(ctx, hook, Phase::Entry, FdKind::Vcpu, call.arg(0));
    false
}

// static int kvm_vcpu_release(struct inode *, struct file *filp) and
// kvm_vcpu_stats_release (same shape): filp->private_data is the vCPU; the
// put that follows is that fd's.
entry_hook!(
    fentry_kvm_vcpu_release,
    kprobe_kvm_vcpu_release,
    on_vcpu_release
);
entry_hook!(
    fentry_kvm_vcpu_stats_release,
    kprobe_kvm_vcpu_stats_release,
    on_vcpu_stats_release
);

fn on_vcpu_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if let Some(vcpu) = private_data(call.arg(1)) {
        vcpu_event(
            ctx,
            HookId::KvmVcpuRelease,
            Phase::Entry,
            FdKind::Vcpu,
            vcpu,
        );
    }
    false
}

fn on_vcpu_stats_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if let Some(vcpu) = private_data(call.arg(1)) {
        let hook = HookId::KvmVcpuStatsRelease;
        vcpu_event(ctx, hook, Phase::Entry, FdKind::VcpuStats, vcpu);
    }
    false
}

// static int kvm_vm_stats_release(struct inode *, struct file *file): the
// file's private_data is the kvm.
entry_hook!(
    fentry_kvm_vm_stats_release,
    kprobe_kvm_vm_stats_release,
    on_vm_stats_release
);

fn on_vm_stats_release<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) -> bool {
    if let Some(kvm) = private_data(call.arg(1)) {
        let hook = HookId::KvmVmStatsRelease;
        holder_file_event(ctx, hook, Phase::Entry, FdKind::VmStats, kvm, 0);
    }
    false
}

// struct file *anon_inode_getfile(const char *name, const struct file_operations
// *fops, void *priv, int flags): every anon inode file of the host passes
// here (eventfd, epoll, ...); only KVM's two stats fops are kept, by one
// compare, before anything else. KVM_GET_STATS_FD takes its VM reference
// (inlined kvm_get_kvm) right after a successful return, unconditionally.
exit_hook!(
    HookId::AnonInodeGetfile,
    fexit_anon_inode_getfile,
    kprobe_anon_inode_getfile,
    kretprobe_anon_inode_getfile,
    on_anon_inode_getfile,
    stats_file_kept
);

/// The fd kind of a KVM stats file made with `fops` (None: not KVM's).
#[inline(always)]
fn stats_fops(fops: u64) -> Option<FdKind> {
    if fops == 0 {
        None
    } else if fops == conf!(kvm_vcpu_stats_fops) {
        Some(FdKind::VcpuStats)
    } else if fops == conf!(kvm_vm_stats_fops) {
        Some(FdKind::VmStats)
    } else {
        None
    }
}

#[inline(always)]
fn stats_file_kept(call: &Call) -> bool {
    stats_fops(call.arg(1)).is_some() && wanted()
}

fn on_anon_inode_getfile<C: EbpfContext + StackIdContext>(ctx: &C, call: &Call) {
    let Some(kind) = stats_fops(call.arg(1)) else {
        return;
    };
    if !wanted() || !call.ret.is_some_and(|r| is_kptr(r as u64)) {
        return;
    }
    let (hook, private) = (HookId::AnonInodeGetfile, call.arg(2));
    match kind {
        FdKind::VcpuStats => vcpu_event(ctx, hook, Phase::Exit, kind, private),
        _ => holder_file_event(ctx, hook, Phase::Exit, kind, private, 0),
    }
}

/// An event for a vCPU's file (`struct kvm_vcpu *`) holding a VM reference.
#[inline(always)]
fn vcpu_event<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    phase: Phase,
    kind: FdKind,
    vcpu: u64,
) {
    let kvm = ptr_at(vcpu, conf!(kvm_vcpu_kvm)).unwrap_or(0);
    holder_file_event(ctx, hook, phase, kind, kvm, vcpu);
}

/// An event for a file of `kind` holding a reference on `kvm` (with its
/// count); for a vCPU's (`vcpu`, else 0), the vCPU id in `arg`. Plain
/// numbers, not Options: a 5.10 verifier refuses an Option's unwritten
/// payload as uninitialised stack.
#[inline(always)]
fn holder_file_event<C: EbpfContext + StackIdContext>(
    ctx: &C,
    hook: HookId,
    phase: Phase,
    kind: FdKind,
    kvm: u64,
    vcpu: u64,
) {
    if !wanted() {
        return;
    }
    let mut e = new_event(hook, phase);
    set_fd_kind(&mut e, kind);
    if let Some(id) = crate::kread::i32_at(vcpu, conf!(kvm_vcpu_vcpu_id)) {
        e.arg = id as u32 as u64;
        e.known |= known::ARG;
    }
    set_kvm(&mut e, kvm);
    submit(ctx, e, false);
}
