//! Scenario tests: event streams of the kernel paths of notes/kernel-paths.md
//! (S1-S5, clean lifecycles in both close orders, races, leaks), each asserting
//! the exact findings and nothing else. Every run ends with the clock moved an
//! hour on, so a latent zombie or leak would show too. By concern: `paths`,
//! `kvm_ops`, `lifetimes`, `locks`; the shared helpers here.
mod domains;
mod holders;
mod kvm_ops;
mod lifetimes;
mod locks;
mod notifier;
mod paths;
mod tier3;
mod top;

use paths::{open_61, open_66, release_66, s3_66};

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

/// The scenario's VM, after asserting that nothing was raised and that it
/// ended (destroyed, seen or inferred).
fn ended_quietly<'e>(e: &'e Engine, f: &[Finding]) -> &'e kvscope::engine::Vm {
    assert!(f.is_empty(), "{f:#?}");
    let vm = e.vm_history(KVM)[0];
    assert!(vm.is_destroyed());
    vm
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

/// Lock classes by name, as the report shows them.
fn lock_names(l: &[trace_common::LockClass]) -> Vec<&'static str> {
    l.iter().map(|c| c.name()).collect()
}
