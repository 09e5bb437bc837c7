//! Scenario tests: event streams of the kernel paths of notes/kernel-paths.md
//! (S1-S5, clean lifecycles in both close orders, races, leaks), each asserting
//! the exact findings and nothing else. Every run ends with the clock moved an
//! hour on, so a latent zombie or leak would show too.
use kvscope::{
    engine::{Config, Engine, Finding, FindingKind, ObjectRole, Severity},
    output::finding_text::{detail, summary},
};
use kvscope_testkit::scenario::Script;
use trace_common::LockClass::{KvmLock, VfioDevSetLock, VfioGroupLock};

const KVM: u64 = 0xffff_8881_0000_0000;
const KVM_LOCK: u64 = KVM + 0x40;
const DEV: u64 = 0xffff_8882_0000_0000;
const GROUP: u64 = 0xffff_8883_0000_0000;
const GROUP_LOCK: u64 = GROUP + 0x10;
const DEV_SET: u64 = 0xffff_8884_0000_0000;
const DEV_SET_LOCK: u64 = DEV_SET + 0x8;
const QEMU: u32 = 100;

fn run(s: &Script) -> (Engine, Vec<Finding>) {
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    e.tick(s.t + 3_600_000_000_000);
    let f = e.findings().to_vec();
    (e, f)
}

fn kinds(f: &[Finding]) -> Vec<FindingKind> {
    f.iter().map(|x| x.kind).collect()
}

/// VM + kvm-vfio device + group link, as every scenario starts.
fn setup(s: &mut Script) {
    s.create_vm(QEMU, KVM)
        .create_kvm_vfio(QEMU, KVM, 2)
        .file_link(QEMU, GROUP, KVM);
}

/// 6.6+ group-path open: group_lock -> dev_set->lock, VFIO takes a kvm ref.
fn open_66(s: &mut Script, users_after: i32) {
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .vfio_get_kvm(QEMU, DEV, KVM, users_after)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
}

/// 6.6+ group-path release: group_lock -> dev_set->lock -> close -> put_kvm.
fn release_66(s: &mut Script, users_before: i32) {
    s.device_release(QEMU, DEV, 1)
        .lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .device_close(QEMU, DEV, 1)
        .vfio_put_kvm(QEMU, DEV, KVM, users_before)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
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
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    s.close_vm_fd(QEMU, KVM, 3);
    close_kvm_vfio_66(&mut s, 2);
    release_66(&mut s, 1);
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
fn open_61(s: &mut Script, driver_takes_kvm_lock: bool) {
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

#[test]
fn an_open_seen_twice_counts_once() {
    // 6.6+: vfio_df_open and the ioctl's exit tracepoint both report the open
    // with open_count 1; the count read from the kernel did not rise twice.
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    s.device_opened(QEMU, DEV, GROUP, 1);
    release_66(&mut s, 3);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    let d = e.device_history(DEV)[0];
    assert_eq!(d.timeline.counts_after_changes(), [1, 0]);
}

#[test]
fn open_racing_the_last_put_is_get_safe_failed() {
    let mut s = Script::new();
    setup(&mut s);
    s.close_vm_fd(QEMU, KVM, 2);
    // Another thread opens the device while the kvm-vfio fd's put drops to 0.
    s.ev(
        QEMU,
        kvscope::event::Kind::VmPut,
        trace_common::HookId::KvmPutKvm,
    )
    .kvm = Some(KVM);
    s.events.last_mut().unwrap().users = Some(1);
    s.get_safe(201, KVM, 0, false);
    s.destroy(QEMU, KVM);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::GetSafeFailed], "{f:#?}");
    assert_eq!(f[0].severity(), Severity::Info);
    assert_eq!(f[0].threads[0].pid, 201);
}

#[test]
fn leaked_device_ref_is_reported_after_the_grace() {
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    // Release without vfio_device_put_kvm: the reference stays.
    s.device_release(QEMU, DEV, 1).device_close(QEMU, DEV, 1);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LeakedRef], "{f:#?}");
    assert_eq!(f[0].object(ObjectRole::Device), Some(DEV));
    assert_eq!(f[0].object(ObjectRole::Kvm), Some(KVM));
}

#[test]
fn zombie_vm_names_its_holders() {
    let mut s = Script::new();
    setup(&mut s);
    s.close_vm_fd(QEMU, KVM, 2);
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    assert!(
        e.tick(s.t + 9_000_000_000).is_empty(),
        "not before the threshold"
    );
    let f = e.tick(s.t + 11_000_000_000);
    assert_eq!(kinds(&f), [FindingKind::ZombieVm]);
    assert!(
        detail(&f[0])[0].contains("kvm-vfio fd (1)"),
        "{:?}",
        detail(&f[0])
    );
    assert!(e.tick(s.t + 20_000_000_000).is_empty(), "reported once");
}

#[test]
fn puts_below_zero_and_after_destroy_are_unbalanced() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    s.close_vm_fd(QEMU, KVM, 1);
    s.put(QEMU, KVM, 0);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::UnbalancedPut], "{f:#?}");
    assert!(summary(&f[0]).contains("after the VM was destroyed"));
}

#[test]
fn get_on_a_destroyed_vm_is_get_after_zero_but_reuse_is_a_new_vm() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .close_vm_fd(QEMU, KVM, 1)
        .get(QEMU, KVM, 1);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::GetAfterZero]);
    // Same address, new VM (its count reads 2: a live VM): a new generation.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).close_vm_fd(QEMU, KVM, 1);
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    let h = e.vm_history(KVM);
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].generation, h[1].generation), (1, 2));
    assert!(h[0].is_destroyed() && !h[1].is_destroyed());
}

#[test]
fn repeated_findings_are_counted_not_duplicated() {
    let mut s = Script::new();
    for _ in 0..3 {
        // A killable attempt on the held lock, then killed out of the wait.
        s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .attempt(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .with_hook(trace_common::HookId::MutexLockKillable);
        s.ev(
            QEMU,
            kvscope::event::Kind::LockFailed,
            trace_common::HookId::MutexLockKillable,
        );
        s.unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    }
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::SelfDeadlock]);
    assert_eq!(f[0].count, 3);
    assert!(f[0].last_ns > f[0].first_ns);
}

/// mutex_lock is hooked at entry only: an attempt, then whatever the thread
/// does next. The held set, the lock graph and the findings must be as with
/// explicit acquisitions.
fn entry_only(s: &mut Script) {
    s.events.retain(|e| {
        !(e.kind == kvscope::event::Kind::LockAcquired && e.hook == trace_common::HookId::MutexLock)
    });
}

#[test]
fn entry_only_mutex_lock_still_sees_s3_and_the_inversion() {
    // S3 on 6.6+ with attempts only.
    let mut s = Script::new();
    setup(&mut s);
    open_66(&mut s, 3);
    s.close_vm_fd(QEMU, KVM, 3);
    close_kvm_vfio_66(&mut s, 2);
    release_66(&mut s, 1);
    entry_only(&mut s);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(
        lock_names(&f[0].locks),
        ["vfio_group.group_lock", "vfio_device_set.lock"]
    );
    // S2 on 6.1 with attempts only.
    let mut s = Script::new();
    setup(&mut s);
    open_61(&mut s, true);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 3, |s| {
        s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .file_unlink(QEMU, GROUP)
            .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    });
    entry_only(&mut s);
    let (e, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LockOrderInversion], "{f:#?}");
    assert_eq!(e.anomalies.unmatched_release, 0);
}

#[test]
fn entry_only_mutex_lock_waits_until_its_contention_ends() {
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    s.ev(
        QEMU,
        kvscope::event::Kind::ContentionBegin,
        trace_common::HookId::ContentionBegin,
    )
    .lock = s.events[0].lock;
    s.sleep_ms(3_000);
    s.ev(
        QEMU,
        kvscope::event::Kind::ContentionEnd,
        trace_common::HookId::ContentionEnd,
    )
    .lock = s.events[0].lock;
    s.unlock(QEMU, KVM_LOCK, KvmLock, KVM);
    let (e, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LongWait], "{f:#?}");
    assert_eq!(e.anomalies.unmatched_release, 0);
    // A thread that never returns from its mutex_lock stays waiting.
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    let (e, _) = run(&s);
    assert!(e.held_locks(QEMU).is_empty());
}

#[test]
fn long_waits_and_holds_cross_their_thresholds() {
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    s.sleep_ms(1500);
    s.ev(
        QEMU,
        kvscope::event::Kind::LockAcquired,
        trace_common::HookId::MutexLock,
    )
    .lock = s.events[0].lock;
    s.sleep_ms(6000);
    s.unlock(QEMU, KVM_LOCK, KvmLock, KVM);
    let (_, f) = run(&s);
    assert_eq!(
        kinds(&f),
        [FindingKind::LongWait, FindingKind::LongHold],
        "{f:#?}"
    );
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
fn a_holder_whose_get_was_inlined_is_not_an_unbalanced_put_but_a_real_one_is() {
    // No KvmVfioCreated event: the kvm-vfio fd's get is visible only in the count.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_vm_fd(QEMU, KVM, 1);
    let (_, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    // A second put by the same holder with nothing unattributed left is real.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |_| {});
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 1, |_| {});
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::UnbalancedPut], "{f:#?}");
    assert!(summary(&f[0]).contains("kvm-vfio fd which holds no reference"));
}

#[test]
fn findings_are_bounded_with_drops_counted() {
    let mut s = Script::new();
    for i in 0..5u64 {
        let kvm = KVM + i * 0x10000;
        s.create_vm(QEMU, kvm)
            .close_vm_fd(QEMU, kvm, 1)
            .put(QEMU, kvm, 0);
    }
    let mut e = Engine::new(Config {
        max_findings: 3,
        ..Config::default()
    });
    s.events.iter().for_each(|ev| {
        e.ingest(ev);
    });
    assert_eq!(e.findings().len(), 3);
    assert_eq!(e.findings_dropped, 2);
    // The newest are kept; repeats still count on the kept ones.
    assert_eq!(
        e.findings()[2].object(ObjectRole::Kvm),
        Some(KVM + 4 * 0x10000)
    );
    e.ingest(s.events.last().unwrap());
    assert_eq!(e.findings()[2].count, 2);
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

/// 6.6+: the open path takes group_lock and dev_set->lock before the device
/// hook registers them as watched, so the first event of each lock is its
/// release. Not an anomaly; a release of a lock seen before, by a thread not
/// seen taking it, is one (named by class).
#[test]
fn releases_of_locks_taken_before_they_were_watched_are_no_anomaly() {
    let mut s = Script::new();
    setup(&mut s);
    s.vfio_get_kvm(QEMU, DEV, KVM, 3)
        .device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    // Later, a close takes and drops group_lock: seen both ways.
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    let (e, f) = run(&s);
    assert!(kinds(&f).is_empty(), "{f:?}");
    let a = &e.anomalies;
    assert_eq!(a.unmatched_release, 0, "{a:?}");
    assert_eq!(
        a.taken_before_watched
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect::<Vec<_>>(),
        [("vfio_device_set.lock", 1), ("vfio_group.group_lock", 1)]
    );
    // A second release nobody was seen taking: a missed acquire.
    let mut s2 = s.clone();
    s2.unlock(QEMU + 1, GROUP_LOCK, VfioGroupLock, GROUP);
    let (e, _) = run(&s2);
    assert_eq!(e.anomalies.unmatched_release, 1);
    assert_eq!(
        e.anomalies
            .unmatched_release_by_class
            .get("vfio_group.group_lock"),
        Some(&1)
    );
}

/// Timelines explain themselves: every step has a count and says which hook
/// saw it (inferred steps are marked `~` instead), and device steps about a
/// VM name it.
#[test]
fn every_timeline_step_has_a_count_and_a_source_and_device_steps_name_the_vm() {
    let mut s = Script::new();
    setup(&mut s);
    s.vfio_get_kvm(QEMU, DEV, KVM, 3)
        .device_opened(QEMU, DEV, GROUP, 1)
        .close_vm_fd(QEMU, KVM, 3);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 2, |s| {
        s.file_unlink(QEMU, GROUP);
    });
    s.device_close(QEMU, DEV, 1).vfio_put_kvm(QEMU, DEV, KVM, 1);
    let (e, _) = run(&s);
    let stacks = Default::default();
    let vm = e.vm_history(KVM);
    let dev = e.device_history(DEV);
    let vm_text = kvscope::output::report::timeline_text("VM", 1, &vm[0].timeline, &stacks, false);
    let dev_text =
        kvscope::output::report::timeline_text("dev", 1, &dev[0].timeline, &stacks, false);
    for line in vm_text.lines().chain(dev_text.lines()).skip(1) {
        if line.starts_with("dev") {
            continue;
        }
        assert!(line.contains(" -> "), "no count: {line}");
        let inferred = line
            .split_whitespace()
            .nth(2)
            .is_some_and(|w| w.starts_with('~'));
        assert!(
            inferred || line.trim_end().ends_with(']'),
            "no source: {line}"
        );
    }
    let kvm = format!("VM {KVM:#x}");
    assert!(
        dev_text
            .lines()
            .any(|l| l.contains("vfio-get-kvm") && l.contains(&kvm)),
        "{dev_text}"
    );
}

/// Lock classes by name, as the report shows them.
fn lock_names(l: &[trace_common::LockClass]) -> Vec<&'static str> {
    l.iter().map(|c| c.name()).collect()
}
