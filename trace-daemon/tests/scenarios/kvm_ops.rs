//! The seed's kvm_ops patch: the driver's get_kvm()/put_kvm() paired with
//! opens and closes, and the puts that give back nothing.
use super::*;

#[test]
fn s1_on_the_kvm_ops_patch_leaves_only_destroy_under_dev_set() {
    // The seed patch drops group_lock before put_kvm(): the final put runs under
    // dev_set->lock only, so kvm_vfio_destroy's group_lock no longer deadlocks.
    let mut s = Script::new();
    setup(&mut s);
    open_61(&mut s, false);
    s.get_safe(QEMU, KVM, 3, true); // kvm_ops->get_kvm
    s.close_vm_fd(QEMU, KVM, 3);
    s.put(QEMU, KVM, 2);
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .put(QEMU, KVM, 1) // kvm_ops->put_kvm
        .destroy(QEMU, KVM)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .file_unlink(QEMU, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(lock_names(&f[0].locks), ["vfio_device_set.lock"]);
}

const KVM_OPS: u64 = 0xffff_ffff_c000_1000;

fn run_release_closes(s: &Script) -> (Engine, Vec<Finding>) {
    let mut e = Engine::new(Config {
        release_closes: true,
        ..Config::default()
    });
    for ev in &s.events {
        e.ingest(ev);
    }
    e.tick(s.t + 3_600_000_000_000);
    let f = e.findings().to_vec();
    (e, f)
}

/// The kvm_ops patch's open: under dev_set->lock and group_lock, get_kvm() when
/// the group has a KVM (the driver's kvm_get_kvm_safe), then open_device.
fn open_kvm_ops(s: &mut Script, kvm: Option<(u64, i32)>, ops: u64) {
    s.lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET).lock(
        QEMU,
        GROUP_LOCK,
        VfioGroupLock,
        GROUP,
    );
    if let Some((k, users_after)) = kvm {
        s.get_safe(QEMU, k, users_after, true);
    }
    s.device_opened(QEMU, DEV, GROUP, 1).with_kvm_ops(ops);
    if let Some((k, _)) = kvm {
        s.with_kvm(k);
    }
    s.unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP).unlock(
        QEMU,
        DEV_SET_LOCK,
        VfioDevSetLock,
        DEV_SET,
    );
}

#[test]
fn kvm_ops_vm_first_attributes_the_drivers_get_and_put() {
    let mut s = Script::new();
    setup(&mut s);
    open_kvm_ops(&mut s, Some((KVM, 3)), KVM_OPS);
    // The ioctl's exit tracepoint reports the same open, without group->kvm.
    s.device_opened(QEMU, DEV, GROUP, 1).with_kvm_ops(KVM_OPS);
    s.close_vm_fd(QEMU, KVM, 3);
    // 6.1: kvm_vfio_release unlinks the group under kvm->lock, with group_lock.
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |s| {
        s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .file_unlink(QEMU, GROUP)
            .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    });
    s.device_release(QEMU, DEV, 1)
        .with_kvm_ops(KVM_OPS)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .put(QEMU, KVM, 1) // kvm_ops->put_kvm -> kvm_put_kvm
        .destroy(QEMU, KVM)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    let (e, f) = run_release_closes(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(lock_names(&f[0].locks), ["vfio_device_set.lock"]);
    let vm = e.vm_history(KVM)[0];
    let holder = format!("vfio device {DEV:#x} (kvm_ops)");
    let named: Vec<(&str, i32, Option<String>)> = vm
        .timeline
        .steps
        .iter()
        .filter(|s| s.delta != 0)
        .map(|s| (s.kind.name(), s.delta, s.holder.map(|h| h.to_string())))
        .collect();
    assert!(
        named.contains(&("get", 1, Some(holder.clone()))),
        "{named:?}"
    );
    assert_eq!(named.last(), Some(&("put", -1, Some(holder))));
    let dev = e.device_history(DEV)[0];
    assert_eq!(dev.open_count, Some(0));
    assert!(dev.closed_ns.is_some());
}

#[test]
fn kvm_ops_put_without_get_is_an_unbalanced_put_on_the_device() {
    // The group was never added to the kvm-vfio device: no get_kvm() at open,
    // but the patch calls put_kvm() at the last close all the same.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    open_kvm_ops(&mut s, None, KVM_OPS);
    s.device_release(QEMU, DEV, 1).with_kvm_ops(KVM_OPS);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    s.destroy(QEMU, KVM);
    let (_, f) = run_release_closes(&s);
    assert_eq!(kinds(&f), [FindingKind::UnbalancedPut], "{f:#?}");
    assert_eq!(f[0].severity(), Severity::Error);
    assert_eq!(f[0].object(ObjectRole::VfioDevice), Some(DEV));
    assert!(summary(&f[0]).contains("kvm_ops"), "{}", summary(&f[0]));
}

#[test]
fn kvm_ops_put_after_a_failed_get_on_the_open_error_path() {
    // The driver's get_kvm() refuses: the patch's err_undo_count still calls
    // put_kvm() when open_count drops back to 0.
    let mut s = Script::new();
    setup(&mut s);
    s.device_open_attempt(QEMU, DEV, 0).with_kvm_ops(KVM_OPS);
    s.lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    s.device_open_failed(QEMU, GROUP, -16).with_kvm(KVM);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    let (e, f) = run_release_closes(&s);
    assert_eq!(kinds(&f), [FindingKind::UnbalancedPut], "{f:#?}");
    assert_eq!(f[0].object(ObjectRole::VfioDevice), Some(DEV));
    // The attempt made the device known; its open_count never rose (the lab
    // asserts the same: one device generation, no count change).
    let dev = e.device_history(DEV);
    assert_eq!(dev.len(), 1);
    assert!(dev[0].timeline.counts_after_changes().is_empty());
    assert!(
        summary(&f[0]).contains("after get_kvm() failed"),
        "{}",
        summary(&f[0])
    );
}

#[test]
fn kvm_ops_open_failing_after_a_good_get_is_balanced() {
    // open_device fails after get_kvm() took its reference: the put_kvm() on
    // the error path gives that reference back.
    let mut s = Script::new();
    setup(&mut s);
    s.device_open_attempt(QEMU, DEV, 0).with_kvm_ops(KVM_OPS);
    s.get_safe(QEMU, KVM, 3, true).put(QEMU, KVM, 3);
    s.device_open_failed(QEMU, GROUP, -5).with_kvm(KVM);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    let (_, f) = run_release_closes(&s);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn a_device_without_kvm_ops_and_no_kvm_is_clean() {
    // The same stream, the driver setting no kvm_ops: VFIO calls nothing.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    open_kvm_ops(&mut s, None, 0);
    s.device_release(QEMU, DEV, 1).with_kvm_ops(0);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    s.destroy(QEMU, KVM);
    let (_, f) = run_release_closes(&s);
    assert!(f.is_empty(), "{f:#?}");
}
