//! Tiers 1-2: every reference a QEMU VM holds is named, as lean sees it
//! (kvm_arch_vcpu_postcreate, anon_inode_getfile for stats files, the fds'
//! release hooks) and as deep does (the ioctl's exit, then the same
//! releases). Before, QEMU's vCPU and vCPU stats fds showed as
//! `unattributed (2)` and their puts unnamed.
use kvscope::{
    engine::{Holder, Vm},
    event::FdKind::{Vcpu, VcpuStats, VmStats},
};

use super::*;

const VCPU_FILE: u64 = 0xffff_8885_0000_1000;

fn whats(vm: &Vm) -> Vec<String> {
    vm.timeline
        .steps
        .iter()
        .filter(|s| s.holder.is_some())
        .map(|s| format!("{} {}", s.kind, s.holder.expect("filtered")))
        .collect()
}

/// QEMU 10's start: one vCPU, its fd, then its stats fd, which QEMU keeps
/// open.
fn qemu_vm(s: &mut Script) {
    s.create_vm(QEMU, KVM)
        .with_hook(trace_common::HookId::KvmDevIoctl)
        .vcpu_postcreate(QEMU, KVM, 0, 2)
        .stats_file(QEMU, KVM, Some(0), 2);
}

#[test]
fn lean_names_the_vcpu_and_stats_fds_of_a_qemu_vm() {
    let mut s = Script::new();
    qemu_vm(&mut s);
    let (e, f) = run(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert_eq!(vm.users, Some(3));
    let held = vm.holders_now();
    assert!(
        held.iter().all(|(h, _)| *h != Holder::Unattributed),
        "{held:?}"
    );
    assert!(held.contains(&(Holder::VcpuFd(0), 1)), "{held:?}");
    assert!(held.contains(&(Holder::StatsFd, 1)), "{held:?}");
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "inferred-get vcpu 0 fd",
            "fd-created vcpu 0 fd",
            "fd-created stats fd",
            "inferred-get stats fd",
        ]
    );
}

/// The teardown of a killed QEMU: each fd's release names its put, seen
/// (kvm_put_kvm called) or inlined into the release (Debian's 6.12: only
/// the next count read shows it); the last one destroys the VM. No holder
/// is left, nothing raised, and a put named by an inlined release is not
/// taken again by a later put.
#[test]
fn each_release_names_its_put() {
    for seen in [true, false] {
        let mut s = Script::new();
        qemu_vm(&mut s);
        s.close_vm_fd(QEMU, KVM, 3)
            .release_holder_fd(QEMU, KVM, (VcpuStats, Some(0)), 2, seen)
            .release_holder_fd(QEMU, KVM, (Vcpu, Some(0)), 1, seen);
        let (e, f) = run(&s);
        let vm = ended_quietly(&e, &f);
        assert!(vm.holders_now().is_empty(), "{:?}", vm.holders_now());
        let drops: Vec<String> = whats(vm)
            .into_iter()
            .filter(|w| w.contains("put "))
            .collect();
        let want = if seen {
            ["put vm fd", "put stats fd", "put vcpu 0 fd"]
        } else {
            [
                "put vm fd",
                "inferred-put stats fd",
                "inferred-put vcpu 0 fd",
            ]
        };
        assert_eq!(drops, want, "put seen: {seen}");
    }
}

/// Deep keeps the syscall tracepoints: the ioctl's exit names the vCPU fd.
/// Were the vCPU hook attached as well, its fd is still held once.
#[test]
fn a_vcpu_seen_by_two_hooks_is_held_once() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .create_vcpu(QEMU, KVM, 0, VCPU_FILE, 2)
        .vcpu_postcreate(QEMU, KVM, 0, 2);
    let (e, _) = run(&s);
    let vm = e.vm_history(KVM)[0];
    assert_eq!(
        vm.holders_now(),
        [(Holder::VcpuFd(0), 1), (Holder::VmFd, 1)]
    );
}

/// A VM stats fd (KVM_GET_STATS_FD on the VM, as `kvm_stat` and QEMU's
/// query-stats make) opened and closed: named both ways.
#[test]
fn a_vm_stats_fd_is_named_at_both_ends() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .stats_file(QEMU, KVM, None, 1)
        .release_holder_fd(QEMU, KVM, (VmStats, None), 2, true)
        .close_vm_fd(QEMU, KVM, 1);
    let (e, f) = run(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "fd-created stats fd",
            "inferred-get stats fd",
            "fd-release stats fd",
            "put stats fd",
            "put vm fd",
        ]
    );
}
