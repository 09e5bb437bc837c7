//! The kernel paths of notes/kernel-paths.md per line (6.1, 6.2, 6.6+, the
//! cdev path, tier 3): clean lifecycles in both close orders, S1-S3.
use super::*;

/// 6.6+ group-path open: group_lock -> dev_set->lock, VFIO takes a kvm ref.
pub(crate) fn open_66(s: &mut Script, users_after: i32) {
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .vfio_get_kvm(QEMU, DEV, KVM, users_after)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
}

/// 6.6+ group-path release: group_lock -> dev_set->lock -> close -> put_kvm.
pub(crate) fn release_66(s: &mut Script, users_before: i32) {
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .vfio_put_kvm(QEMU, DEV, KVM, users_before)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
}

/// S3 on 6.6+: VM and kvm-vfio fds closed first, the device's release last.
pub(crate) fn s3_66() -> Script {
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    s.close_vm_fd(QEMU, KVM, 3);
    close_kvm_vfio_66(&mut s, 2);
    release_66(&mut s, 1);
    s
}

fn close_kvm_vfio_66(s: &mut Script, users_before: i32) {
    // 6.3+: vfio_file_set_kvm(NULL) takes only the kvm_ref_lock spinlock.
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, users_before, |s| {
        s.file_unlink(QEMU, GROUP);
    });
}

#[test]
fn clean_66_device_first_raises_nothing() {
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    release_66(&mut s, 3);
    close_kvm_vfio_66(&mut s, 2);
    s.close_vm_fd(QEMU, KVM, 1);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = &e.vm_history(KVM)[0];
    assert!(vm.is_destroyed());
    let counts: Vec<Option<i32>> = vm.timeline.steps.iter().map(|x| x.count_after).collect();
    assert!(counts.contains(&Some(3)) && counts.last() == Some(&Some(0)));
    // The kvm-vfio device's inlined get shows as an inferred, attributed step.
    let inferred: Vec<_> = vm.timeline.steps.iter().filter(|x| x.inferred()).collect();
    assert_eq!(inferred.len(), 1);
    assert_eq!(inferred[0].delta, 1);
    assert_eq!(
        inferred[0].holder.map(|h| h.to_string()).as_deref(),
        Some("kvm-vfio fd")
    );
    // VFIO's get/put attributed to the device.
    let dev_holder = format!("vfio device {DEV:#x}");
    let attributed = vm
        .timeline
        .steps
        .iter()
        .filter(|x| x.holder.map(|h| h.to_string()).as_deref() == Some(dev_holder.as_str()))
        .count();
    assert_eq!(attributed, 2, "get and put by the device");
}

#[test]
fn s3_66_vm_first_is_destroy_under_both_vfio_locks() {
    let s = s3_66();
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(f[0].severity(), Severity::Warning);
    assert_eq!(
        lock_names(&f[0].locks),
        ["vfio_group.group_lock", "vfio_device_set.lock"]
    );
    assert_eq!(f[0].object(ObjectRole::Kvm), Some(KVM));
    assert_eq!(f[0].count, 1);
}

#[test]
fn cdev_path_66_vm_first_names_only_dev_set_lock() {
    // cdev bind/unbind: dev_set->lock only.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .vfio_get_kvm(QEMU, DEV, KVM, 3)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    s.close_vm_fd(QEMU, KVM, 3);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .vfio_put_kvm(QEMU, DEV, KVM, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock]);
    assert_eq!(lock_names(&f[0].locks), ["vfio_device_set.lock"]);
}

/// 6.1: dev_set->lock -> group_lock at open; no VFIO kvm ref; the driver's own.
pub(crate) fn open_61(s: &mut Script, driver_takes_kvm_lock: bool) {
    s.lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET).lock(
        QEMU,
        GROUP_LOCK,
        VfioGroupLock,
        GROUP,
    );
    if driver_takes_kvm_lock {
        // vfio_ap-style open_device: kvm->lock under the VFIO locks, plus its ref.
        s.lock(QEMU, KVM_LOCK, KvmLock, KVM)
            .get(QEMU, KVM, 3)
            .unlock(QEMU, KVM_LOCK, KvmLock, KVM);
    }
    s.device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
}

fn release_61(s: &mut Script, driver_put_users_before: Option<i32>) {
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .device_close(QEMU, DEV, 1);
    if let Some(u) = driver_put_users_before {
        s.put(QEMU, KVM, u);
    }
    s.unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP).unlock(
        QEMU,
        DEV_SET_LOCK,
        VfioDevSetLock,
        DEV_SET,
    );
}

/// 6.1.y with 51cdc8bc: kvm_vfio_release under kvm->lock takes group_lock.
fn close_kvm_vfio_61(s: &mut Script, users_before: i32) {
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, users_before, |s| {
        s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .file_unlink(QEMU, GROUP)
            .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    });
}

#[test]
fn clean_61_both_close_orders_raise_nothing() {
    for vm_first in [false, true] {
        let mut s = Script::new();
        setup(&mut s);
        open_61(&mut s, false);
        if vm_first {
            s.close_vm_fd(QEMU, KVM, 2);
            close_kvm_vfio_61(&mut s, 1);
            release_61(&mut s, None);
        } else {
            release_61(&mut s, None);
            close_kvm_vfio_61(&mut s, 2);
            s.close_vm_fd(QEMU, KVM, 1);
        }
        let (e, f) = run(&s);
        assert!(f.is_empty(), "vm_first={vm_first}: {f:#?}");
        assert!(e.vm_history(KVM)[0].is_destroyed());
    }
}

#[test]
fn clean_62_order_differs_from_61_and_raises_nothing_by_itself() {
    // S5: 6.2 opens take group_lock -> dev_set->lock; alone that is no inversion.
    let mut s = Script::new();
    setup(&mut s);
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    close_kvm_vfio_61(&mut s, 2);
    s.close_vm_fd(QEMU, KVM, 1);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    assert!(
        e.lock_graph()
            .contains_key(&(VfioGroupLock, VfioDevSetLock))
    );
}

#[test]
fn s2_61_vfio_ap_style_open_is_an_inversion_with_both_chains() {
    let mut s = Script::new();
    setup(&mut s);
    open_61(&mut s, true);
    release_61(&mut s, Some(3));
    close_kvm_vfio_61(&mut s, 2);
    s.close_vm_fd(QEMU, KVM, 1);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LockOrderInversion], "{f:#?}");
    let inv = &f[0];
    assert_eq!(
        lock_names(&inv.locks),
        ["kvm.lock", "vfio_group.group_lock"]
    );
    let text = detail(inv).join("\n");
    assert!(
        text.contains("possible circular locking dependency"),
        "{text}"
    );
    assert!(text.contains("vfio_group.group_lock -> kvm.lock"), "{text}");
    assert!(text.contains("kvm.lock -> vfio_group.group_lock"), "{text}");
    assert!(text.contains("*** DEADLOCK ***"));
}

#[test]
fn s1_61_early_destroy_path_is_destroy_under_lock_then_self_deadlock() {
    // Early 6.1.y: kvm-vfio has .destroy; the driver holds a kvm ref from open.
    let mut s = Script::new();
    setup(&mut s);
    open_61(&mut s, false);
    s.get(QEMU, KVM, 3); // driver's ref in open_device
    s.close_vm_fd(QEMU, KVM, 3);
    // kvm-vfio fd close only drops its ref (.destroy is deferred).
    s.put(QEMU, KVM, 2);
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .put(QEMU, KVM, 1)
        .destroy(QEMU, KVM);
    // kvm_destroy_vm -> kvm_vfio_destroy -> vfio_file_set_kvm -> group_lock again.
    s.attempt(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    let (_, f) = run(&s);
    assert_eq!(
        kinds(&f),
        [FindingKind::DestroyUnderLock, FindingKind::SelfDeadlock],
        "{f:#?}"
    );
    assert_eq!(f[1].severity(), Severity::Critical);
    assert_eq!(lock_names(&f[1].locks), ["vfio_group.group_lock"]);
    assert!(detail(&f[1]).join("\n").contains("already holding"));
}

#[test]
fn tier_three_infers_destroy_from_the_last_close_and_still_finds_zombies() {
    let cfg = Config {
        destroy_observable: false,
        ..Config::default()
    };
    let fd_close = |s: &mut Script, kind, users| {
        let e = s.ev(
            QEMU,
            kvscope::event::Kind::FdClosed,
            trace_common::HookId::SysClose,
        );
        e.kvm = Some(KVM);
        e.users = Some(users);
        e.fd_kind = Some(kind);
    };
    use kvscope::event::FdKind::{KvmVfioDevice, Vm};
    // Clean: kvm-vfio fd (2), then VM fd (1): destroyed, inferred; no finding.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    fd_close(&mut s, KvmVfioDevice, 2);
    fd_close(&mut s, Vm, 1);
    let mut e = Engine::new(cfg.clone());
    s.events.iter().for_each(|ev| {
        e.ingest(ev);
    });
    assert!(e.tick(s.t + 3_600_000_000_000).is_empty());
    let vm = e.vm_history(KVM)[0];
    assert!(vm.is_destroyed());
    assert!(vm.timeline.steps.back().unwrap().inferred());
    // VM fd closed while the kvm-vfio fd stays open: a zombie naming it.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    fd_close(&mut s, Vm, 2);
    let mut e = Engine::new(cfg);
    s.events.iter().for_each(|ev| {
        e.ingest(ev);
    });
    let f = e.tick(s.t + 3_600_000_000_000);
    assert_eq!(kinds(&f), [FindingKind::ZombieVm]);
    assert!(
        detail(&f[0])[0].contains("kvm-vfio fd (1)"),
        "{:?}",
        detail(&f[0])
    );
    assert!(
        !detail(&f[0])[0].contains("vm fd"),
        "the closed fd holds nothing: {:?}",
        detail(&f[0])
    );
}

#[test]
fn clean_62_vm_first_raises_nothing() {
    // 6.2: no VFIO kvm reference; kvm-vfio .release (under kvm->lock) takes
    // group_lock for the unlink; the VM dies at the kvm-vfio fd's put.
    let mut s = Script::new();
    setup(&mut s);
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    s.close_vm_fd(QEMU, KVM, 2);
    close_kvm_vfio_61(&mut s, 1);
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    assert!(e.vm_history(KVM)[0].is_destroyed());
}

#[test]
fn clean_66_cdev_device_first_raises_nothing() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .vfio_get_kvm(QEMU, DEV, KVM, 3)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .vfio_put_kvm(QEMU, DEV, KVM, 3)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    let d = e.device_history(DEV);
    assert_eq!(d[0].open_count, Some(0));
    assert_eq!(d[0].kvm_ref, None, "VFIO gave its reference back");
}
