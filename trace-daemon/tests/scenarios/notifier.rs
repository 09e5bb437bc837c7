//! 5.10-5.18, the notifier era: the kvm-vfio device adds the group and
//! vfio_group_set_kvm hands the VM to the group's drivers; a driver shaped
//! like kvmgt takes its own reference in that callback and drops it when its
//! device is released. The VFIO core holds none, reads no open_count (the
//! field does not exist) and takes no mutex around open or release.
use kvscope::engine::{Holder, Vm, timeline::StepKind};
use trace_common::HookId;

use super::*;

fn the_vm(e: &Engine) -> &Vm {
    e.vm_history(KVM).last().unwrap()
}

/// The VM, its kvm-vfio device, KVM_DEV_VFIO_GROUP_ADD (kvm_vfio_set_attr and
/// vfio_group_set_kvm, whose notifier makes the driver's get), the device open.
fn setup_510(s: &mut Script) {
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.file_link(QEMU, GROUP, KVM)
        .with_hook(HookId::KvmVfioSetAttr);
    s.group_set_kvm(QEMU, GROUP, KVM)
        .get(QEMU, KVM, 3)
        .group_set_kvm_done(QEMU, GROUP, KVM);
    s.device_opened(QEMU, DEV, GROUP, 1)
        .with_hook(HookId::VfioGroupFopsUnlIoctl);
    s.events.last_mut().unwrap().open_count = None;
}

/// The driver's release: vfio_device_fops_release, then its put.
fn release_510(s: &mut Script, users_before: i32) {
    s.device_release(QEMU, DEV, 1);
    let e = s.events.last_mut().unwrap();
    e.open_count = None;
    e.group = Some(GROUP);
    s.put(QEMU, KVM, users_before);
    if users_before == 1 {
        s.destroy(QEMU, KVM)
            .group_set_kvm(QEMU, GROUP, 0)
            .group_set_kvm_done(QEMU, GROUP, 0);
    }
}

/// The 5.10 kvm-vfio fd close: no .release op (kvm_vfio_destroy runs from
/// kvm_destroy_vm), only the device fd's put.
fn close_kvm_vfio_510(s: &mut Script, users_before: i32) {
    s.put(QEMU, KVM, users_before);
    if users_before == 1 {
        s.destroy(QEMU, KVM);
    }
}

fn holder_of(e: &Engine, kind: StepKind, nth: usize) -> Option<Holder> {
    the_vm(e)
        .timeline
        .steps
        .iter()
        .filter(|s| s.kind == kind)
        .nth(nth)
        .and_then(|s| s.holder)
}

/// No finding; the get was the notifier's, and so is the last put, from the
/// device's release, which ends the VM; the notifier holds nothing after.
fn assert_the_notifier_puts_last(s: &Script) {
    let (e, f) = run(s);
    assert_eq!(kinds(&f), [], "{f:#?}");
    let notifier = Some(Holder::Notifier(GROUP));
    assert_eq!(holder_of(&e, StepKind::Get, 0), notifier);
    let vm = the_vm(&e);
    let last_put = vm
        .timeline
        .steps
        .iter()
        .rev()
        .find(|s| s.kind == StepKind::Put)
        .unwrap();
    assert_eq!(last_put.holder, notifier);
    assert_eq!(last_put.count_after, Some(0));
    assert!(vm.is_destroyed());
    assert_eq!(vm.holders.get(&Holder::Notifier(GROUP)), Some(&0));
}

#[test]
fn vm_first_the_notifier_reference_is_the_last_and_given_back_at_release() {
    let mut s = Script::new();
    setup_510(&mut s);
    s.close_vm_fd(QEMU, KVM, 3);
    close_kvm_vfio_510(&mut s, 2);
    release_510(&mut s, 1);
    assert_the_notifier_puts_last(&s);
}

#[test]
fn dev_first_the_notifier_reference_goes_first() {
    let mut s = Script::new();
    setup_510(&mut s);
    release_510(&mut s, 3);
    s.close_vm_fd(QEMU, KVM, 2);
    close_kvm_vfio_510(&mut s, 1);
    let (e, f) = run(&s);
    assert_eq!(kinds(&f), [], "{f:#?}");
    let notifier = Some(Holder::Notifier(GROUP));
    assert_eq!(holder_of(&e, StepKind::Get, 0), notifier);
    assert_eq!(holder_of(&e, StepKind::Put, 0), notifier);
    let vm = the_vm(&e);
    assert!(vm.is_destroyed());
}

#[test]
fn a_notifier_registered_after_the_link_is_called_at_once_and_named_at_open() {
    // The lab's order: KVM_DEV_VFIO_GROUP_ADD first (no notifier yet), then
    // the open registers one, which the group calls back with its VM.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.group_set_kvm(QEMU, GROUP, KVM)
        .group_set_kvm_done(QEMU, GROUP, KVM);
    s.notifier_register(QEMU, false)
        .get(QEMU, KVM, 3)
        .notifier_register(QEMU, true);
    s.device_opened(QEMU, DEV, GROUP, 1)
        .with_hook(HookId::VfioGroupFopsUnlIoctl);
    s.events.last_mut().unwrap().open_count = None;
    s.close_vm_fd(QEMU, KVM, 3);
    close_kvm_vfio_510(&mut s, 2);
    release_510(&mut s, 1);
    assert_the_notifier_puts_last(&s);
}

#[test]
fn a_get_outside_the_notifier_is_not_the_notifiers() {
    // vfio-pci (edu) registers no notifier: gets elsewhere stay unnamed.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.group_set_kvm(QEMU, GROUP, KVM)
        .group_set_kvm_done(QEMU, GROUP, KVM)
        .get(QEMU, KVM, 3);
    let (e, _) = run(&s);
    assert_eq!(holder_of(&e, StepKind::Get, 0), None);
}
