//! The tracepoint tier (no put or destroy hooks): every reference an fd's
//! file holds is followed, a close that leaves the file held elsewhere puts
//! nothing, and a zombie needs evidence. Each case was a false finding before.
use kvscope::{
    engine::{Vm, timeline::StepKind},
    event::FdKind::{KvmVfioDevice, Vcpu, Vm as VmFd},
};

use super::*;

const VM_FILE: u64 = 0xffff_8885_0000_0000;
const VCPU_FILE: u64 = 0xffff_8885_0000_1000;
const KV_FILE: u64 = 0xffff_8885_0000_2000;
/// Past the default 10 s zombie grace.
const LATER_MS: u64 = 11_000;

fn tier3() -> Engine {
    Engine::new(Config {
        destroy_observable: false,
        ..Config::default()
    })
}

/// Ingests `s`, then ticks an hour on: every finding raised on the way.
fn run3(s: &Script) -> (Engine, Vec<Finding>) {
    let mut e = tier3();
    let mut f = Vec::new();
    for ev in &s.events {
        f.extend(e.ingest(ev));
    }
    f.extend(e.tick(s.t + 3_600_000_000_000));
    (e, f)
}

fn whats(vm: &Vm) -> Vec<String> {
    vm.timeline
        .steps
        .iter()
        .map(|s| match s.holder {
            Some(h) => format!("{} {h}", s.kind),
            None => s.kind.to_string(),
        })
        .collect()
}

/// A VM with one vCPU: close(vm), then close(vcpu) 0.1 s later. The kernel
/// destroys the VM at the second close; so does the engine, naming the vCPU
/// fd's reference. Before, the vCPU's reference was unattributed and the
/// VM a zombie forever.
#[test]
fn a_vcpu_closed_after_the_vm_fd_ends_the_vm() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .create_vcpu(QEMU, KVM, 0, VCPU_FILE, 2)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 2, 1)
        .sleep_ms(100)
        .close_fd(QEMU, KVM, Vcpu, VCPU_FILE, 1, 1);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    assert_eq!(e.zombie_vms(), 0);
    let vm = e.vm_history(KVM)[0];
    assert!(vm.is_destroyed());
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "inferred-get vcpu 0 fd",
            "fd-created vcpu 0 fd",
            "vm-fd-close",
            "inferred-put vm fd",
            "fd-close vcpu 0 fd",
            "inferred-put vcpu 0 fd",
            "inferred-destroy",
        ]
    );
}

/// The vCPU fd left open past the grace period: the VM outlived its fd,
/// held by a reference kvscope knows. That is raised, naming the holder.
#[test]
fn a_vcpu_fd_left_open_is_named_in_the_zombie() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .create_vcpu(QEMU, KVM, 3, VCPU_FILE, 2)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 2, 1);
    let (_, f) = run3(&s);
    assert_eq!(kinds(&f), [FindingKind::ZombieVm]);
    let text = detail(&f[0]).join("\n");
    assert!(text.contains("vcpu 3 fd (1)"), "{text}");
    assert!(!text.contains("unattributed"), "{text}");
}

/// A dup kvscope followed (dup, dup2, dup3, fcntl F_DUPFD): the first close
/// of the file's two fds puts nothing and the VM's state stays known; the
/// dup's close ends it. Before, the dup was not followed: the VM was left
/// unknown for good.
#[test]
fn a_followed_dup_keeps_the_vm_known_and_its_close_ends_it() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .with_file(VM_FILE)
        .dup_fd(QEMU, KVM, VmFd, VM_FILE, 1)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 2);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.file_shared && !vm.state_unknown());
    s.close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 1);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "fd-dup",
            "vm-fd-close",
            "vm-fd-close",
            "inferred-put vm fd",
            "inferred-destroy",
        ]
    );
}

/// A dup'ed VM fd: the first close leaves the file held (two references),
/// so it puts nothing and the VM is not ended; what becomes of it is unknown
/// (the dup's close may never be seen), so nothing is raised.
#[test]
fn closing_one_of_two_fds_of_a_file_puts_nothing() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 2);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed(), "the dup still holds the VM");
    assert!(vm.file_shared);
    assert_eq!(vm.users, Some(1));
    assert_eq!(whats(vm), ["created vm fd", "vm-fd-close"]);
}

/// The same for a forked child's copy of the kvm-vfio fd, then the parent's
/// exit: the shared file may live on in the child; no destroy is inferred.
#[test]
fn an_exit_does_not_end_a_vm_whose_file_is_shared() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).create_kvm_vfio(QEMU, KVM, 2);
    s.close_fd(QEMU, KVM, KvmVfioDevice, KV_FILE, 2, 2);
    s.exit(QEMU);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    assert!(!e.vm_history(KVM)[0].is_destroyed());
}

/// A new VM at an old VM's address 100 ms later: the old one ended (its
/// struct kvm was freed), shown as inferred, never left "live".
#[test]
fn a_new_vm_at_the_address_ends_the_old_generation() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .create_vcpu(QEMU, KVM, 0, VCPU_FILE, 2)
        .sleep_ms(100)
        .create_vm(QEMU, KVM);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let h = e.vm_history(KVM);
    assert_eq!(h.len(), 2);
    assert!(h[0].is_destroyed());
    assert_eq!(
        h[0].timeline.steps.back().unwrap().kind,
        StepKind::InferredDestroyReused
    );
    assert!(!h[1].is_destroyed());
    assert_eq!(e.live_vms().count(), 1);
}

/// A reference no tracked fd explains (an inlined get kvscope did not see
/// made): without a count read after the grace period the VM's state is
/// unknown and nothing is raised; with one above 0, it is a zombie.
#[test]
fn an_unexplained_reference_needs_a_late_count_to_be_a_zombie() {
    let other = |s: &mut Script, users| {
        let e = s.ev(
            QEMU,
            kvscope::event::Kind::Other,
            trace_common::HookId::SysIoctl,
        );
        e.kvm = Some(KVM);
        e.users = Some(users);
    };
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    other(&mut s, 2);
    s.close_fd(QEMU, KVM, VmFd, VM_FILE, 2, 1);
    let (_, f) = run3(&s);
    assert!(f.is_empty(), "no evidence: {f:#?}");
    other(s.sleep_ms(LATER_MS), 1);
    let (e, f) = run3(&s);
    assert_eq!(kinds(&f), [FindingKind::ZombieVm]);
    assert_eq!(e.zombie_vms(), 1);
}

/// An exec by the VM's creator: its fds (O_CLOEXEC, as KVM makes them) were
/// closed by the exec without close(2), a dup without the flag may live on.
/// The VM's state is unknown from there, never live and never a zombie
/// (an hour on); the exit then ends it. Before, the VM stayed "live".
#[test]
fn an_exec_makes_the_vm_unknown_until_the_exit() {
    let exec = |s: &mut Script| {
        s.ev(
            QEMU,
            kvscope::event::Kind::ProcessExec,
            trace_common::HookId::ProcessExec,
        );
    };
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .create_vcpu(QEMU, KVM, 0, VCPU_FILE, 2);
    exec(&mut s);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = &e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && vm.state_unknown(), "{:?}", whats(vm));
    assert_eq!(
        whats(vm).last().map(String::as_str),
        Some(StepKind::Exec.name())
    );

    s.sleep_ms(LATER_MS).exit(QEMU);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = &e.vm_history(KVM)[0];
    assert!(vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    assert_eq!(
        vm.timeline.steps.back().unwrap().kind,
        StepKind::InferredDestroyAtExit
    );
}

/// A forked child inherits the VM fd (clone without CLONE_FILES; tier 3
/// follows the copy into the child): the parent's close leaves the file
/// held only by the child's followed copy and puts nothing, the parent's
/// exit ends nothing, the child's close ends the VM. Before, the parent's
/// exit inferred a destroy while the child held the VM.
#[test]
fn a_forked_childs_copy_keeps_the_vm_until_its_close() {
    const CHILD: u32 = 200;
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .with_file(VM_FILE)
        .fork(QEMU, CHILD)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 2);
    s.exit(QEMU);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    s.close_fd(CHILD, KVM, VmFd, VM_FILE, 1, 1);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "fd-inherited",
            "vm-fd-close",
            "vm-fd-close",
            "inferred-put vm fd",
            "inferred-destroy",
        ]
    );
}

/// A fork whose fd table is larger than kvscope follows into (fd -1): the
/// child may hold fds of the parent's VMs it does not see; their state is
/// unknown and the parent's exit ends nothing.
#[test]
fn a_fork_past_the_followed_fds_makes_the_vm_unknown() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).with_file(VM_FILE);
    let fork = s.ev(
        QEMU,
        kvscope::event::Kind::ProcessFork,
        trace_common::HookId::ProcessFork,
    );
    fork.child = Some(200);
    fork.fd = Some(-1);
    s.exit(QEMU);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && vm.state_unknown(), "{:?}", whats(vm));
}

/// A forked child that exits holding its copy ends nothing: the parent's
/// fd still holds the VM, and the parent's close ends it, with no state
/// unknown on the way (the child's copy was followed, and its exit closed it).
#[test]
fn a_forked_child_that_exits_leaves_the_parents_vm_known() {
    const CHILD: u32 = 200;
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).with_file(VM_FILE).fork(QEMU, CHILD);
    s.exit(CHILD);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    s.close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 1);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "fd-inherited",
            "vm-fd-close",
            "inferred-put vm fd",
            "inferred-destroy",
        ]
    );
}

/// A forked child that execs (fork then exec, as posix_spawn does): what
/// the exec left open is not followed, so the VM is unknown while that
/// child lives; its exit closes it, the VM is known again, and the
/// parent's close ends it.
#[test]
fn a_forked_childs_exec_makes_the_vm_unknown_while_it_lives() {
    use kvscope::event::Kind;
    use trace_common::HookId;
    const CHILD: u32 = 200;
    let mut s = Script::new();
    s.create_vm(QEMU, KVM).with_file(VM_FILE).fork(QEMU, CHILD);
    s.ev(CHILD, Kind::ProcessExec, HookId::ProcessExec);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && vm.state_unknown(), "{:?}", whats(vm));
    s.exit(CHILD);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    s.close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 1);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm).last().map(String::as_str),
        Some("inferred-destroy")
    );
}

/// A VM fd passed to another process (SCM_RIGHTS, pidfd_getfd) and then
/// closed by its creator, which exits: the receiver's copy is followed, so
/// the VM stays known and live, and the receiver's close ends it. Before,
/// the creator's close found the file held by an fd kvscope did not follow:
/// the VM unknown for good.
#[test]
fn a_passed_fd_is_followed_in_its_receiver() {
    const BROKER: u32 = 300;
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .with_file(VM_FILE)
        .receive_fd(BROKER, KVM, VmFd, VM_FILE, 1)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 1, 2);
    s.exit(QEMU);
    let (e, f) = run3(&s);
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    s.close_fd(BROKER, KVM, VmFd, VM_FILE, 1, 1);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm),
        [
            "created vm fd",
            "fd-received",
            "vm-fd-close",
            "vm-fd-close",
            "inferred-put vm fd",
            "inferred-destroy",
        ]
    );
}

/// The receiver of a passed vCPU fd holds the VM after the creator closed
/// both of its fds: known and attributed (a zombie after the grace, held by
/// vCPU 0's fd, if it keeps it); its exit closes the last reference and the
/// VM ends there, inferred at the exit, nothing raised.
#[test]
fn a_receivers_exit_ends_the_vm_it_held_last() {
    const BROKER: u32 = 300;
    let mut s = Script::new();
    s.create_vm(QEMU, KVM)
        .with_file(VM_FILE)
        .create_vcpu(QEMU, KVM, 0, VCPU_FILE, 2)
        .receive_fd(BROKER, KVM, Vcpu, VCPU_FILE, 2)
        .close_fd(QEMU, KVM, Vcpu, VCPU_FILE, 2, 2)
        .close_fd(QEMU, KVM, VmFd, VM_FILE, 2, 1);
    let (e, f) = run3(&s);
    let vm = e.vm_history(KVM)[0];
    assert!(!vm.is_destroyed() && !vm.state_unknown(), "{:?}", whats(vm));
    assert_eq!(kinds(&f), [FindingKind::ZombieVm]);
    let text = detail(&f[0]).join("\n");
    assert!(text.contains("vcpu 0 fd (1)"), "{text}");
    assert!(!text.contains("unattributed"), "{text}");
    s.exit(BROKER);
    let (e, f) = run3(&s);
    let vm = ended_quietly(&e, &f);
    assert_eq!(
        whats(vm).last().map(String::as_str),
        Some("inferred-destroy (process exit closed its fds)")
    );
}
