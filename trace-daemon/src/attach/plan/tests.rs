//! The attach plan on every kernel shape, from facts given as data.
use super::*;

/// kallsyms of a Debian 6.12 host: kvm and vfio as modules.
const DEBIAN_612: &str = "\
ffffffff81000000 T mutex_lock
ffffffff81000100 T mutex_lock_interruptible
ffffffff81000200 T mutex_lock_killable
ffffffff81000300 T mutex_trylock
ffffffff81000400 T mutex_unlock
ffffffffc0001000 T kvm_get_kvm\t[kvm]
ffffffffc0001100 T kvm_get_kvm_safe\t[kvm]
ffffffffc0001200 T kvm_put_kvm\t[kvm]
ffffffffc0001300 T kvm_put_kvm_no_destroy\t[kvm]
ffffffffc0001400 t kvm_destroy_vm\t[kvm]
ffffffffc0001500 t kvm_vm_release\t[kvm]
ffffffffc0001600 t kvm_vfio_release\t[kvm]
ffffffffc0001700 t kvm_vfio_set_attr\t[kvm]
ffffffffc0002000 T vfio_df_open\t[vfio]
ffffffffc0002100 T vfio_df_close\t[vfio]
ffffffffc0002200 t vfio_device_fops_release\t[vfio]
ffffffffc0002300 T vfio_device_get_kvm_safe\t[vfio]
ffffffffc0002400 T vfio_device_put_kvm\t[vfio]
ffffffffc0002500 T vfio_file_set_kvm\t[vfio]
ffffffffc0002600 t vfio_group_fops_unl_ioctl\t[vfio]
";

/// This project's sandbox: KVM built in, no VFIO, fentry refused, no kprobes.
const SANDBOX: &str = "\
ffffffff8127c0b0 T kvm_get_kvm
ffffffff8127c100 T kvm_get_kvm_safe
ffffffff812839c0 t kvm_destroy_vm
ffffffff81283c60 T kvm_put_kvm
ffffffff81283cc0 t kvm_vm_release
ffffffff81283d00 t kvm_vfio_release
ffffffff821fe7f0 T mutex_lock
ffffffff821fe900 T mutex_unlock
";

fn all_tps(_: &str) -> Result<(), String> {
    Ok(())
}

fn in_btf(_: &str) -> bool {
    true
}

/// fentry and kprobes usable, every function in BTF, every tracepoint.
fn hookable(k: &Kallsyms) -> HostFacts<'_> {
    HostFacts {
        kallsyms: k,
        vmlinux_func: &in_btf,
        fentry: Ok(()),
        kprobes: Ok(()),
        tracepoint: &all_tps,
        kernel: (6, 12),
    }
}

/// This sandbox: fentry refused, no kprobes.
fn tier3(k: &Kallsyms) -> HostFacts<'_> {
    HostFacts {
        kallsyms: k,
        vmlinux_func: &in_btf,
        fentry: Err("EPERM loading a tracing program".into()),
        kprobes: Err("kprobes absent".into()),
        tracepoint: &all_tps,
        kernel: (6, 12),
    }
}

#[test]
fn a_lockdep_kernel_is_told_by_mutex_lock_nested() {
    assert!(!lockdep(&Kallsyms::parse(DEBIAN_612)));
    let k = format!(
        "{DEBIAN_612}ffffffff81000500 T mutex_lock_nested\nffffffff81000600 T lock_acquire\n"
    );
    assert!(lockdep(&Kallsyms::parse(&k)));
}

#[test]
fn the_cdev_path_is_told_by_its_own_functions_not_the_open_stub() {
    // Debian's 6.12 (no VFIO_DEVICE_CDEV) still emits the cdev open stub.
    let without = format!("{DEBIAN_612}ffffffffc0002000 t vfio_device_fops_cdev_open\t[vfio]\n");
    let p = vfio_paths(&Kallsyms::parse(&without));
    assert!(p.group && !p.cdev, "{p:?}");
    let with = format!("{without}ffffffffc0002100 T vfio_df_ioctl_bind_iommufd\t[vfio]\n");
    assert!(vfio_paths(&Kallsyms::parse(&with)).cdev);
}

#[test]
fn module_functions_take_kprobes_vmlinux_ones_fentry() {
    let k = Kallsyms::parse(DEBIAN_612);
    let p = plan(&hookable(&k));
    let role = |r: Role| p.roles.iter().find(|x| x.role == r).unwrap();
    let put = &role(Role::VmPut).choices;
    assert_eq!(put.len(), 2, "Pick::All attaches put and put_no_destroy");
    assert!(put.iter().all(|c| c.method == Method::Kprobe));
    assert!(put[0].reason.contains("in module kvm"), "{}", put[0].reason);
    let open = &role(Role::DeviceOpen).choices;
    assert_eq!(open.len(), 1, "Pick::First stops at vfio_df_open");
    assert_eq!(open[0].symbol, "vfio_df_open");
    assert_eq!(
        open[0].programs,
        ["kprobe_vfio_df_open", "kretprobe_vfio_df_open"]
    );
    assert_eq!(role(Role::DeviceOpen).absent, ["vfio_device_open"]);
    let lock = &role(Role::LockAcquire).choices;
    assert!(lock.iter().all(|c| c.method == Method::Fentry));
    assert_eq!(
        lock.len(),
        4,
        "mutex_lock_nested absent on a non-lockdep kernel"
    );
    assert!(!role(Role::VmCreated).is_covered());
    assert!(
        role(Role::VmCreated)
            .missing_reason()
            .unwrap()
            .contains("kvm_create_vm")
    );
    assert_eq!(p.tier(), Tier::Kprobe);
    assert_eq!(stack_variant(&k, false, true), StackVariant::Df66);
}

#[test]
fn sandbox_gets_tier_three_with_reasons() {
    let k = Kallsyms::parse(SANDBOX);
    let p = plan(&tier3(&k));
    assert!(p.roles.iter().all(|r| !r.is_covered()));
    let put = p.roles.iter().find(|r| r.role == Role::VmPut).unwrap();
    let why = put.missing_reason().unwrap();
    assert!(
        why.contains("fentry refused") && why.contains("kprobes absent"),
        "{why}"
    );
    assert_eq!(p.tier(), Tier::Tracepoints);
    assert_eq!(stack_variant(&k, false, false), StackVariant::NoVfio);
}

#[test]
fn all_fentry_is_tier_one_and_nothing_is_unusable() {
    let k = Kallsyms::parse(SANDBOX);
    let p = plan(&HostFacts {
        kallsyms: &k,
        vmlinux_func: &in_btf,
        fentry: Ok(()),
        kprobes: Err("none".into()),
        tracepoint: &all_tps,
        kernel: (6, 12),
    });
    assert_eq!(p.tier(), Tier::Fentry);
    let no_btf = |_: &str| false;
    let no_tp = |_: &str| Err("no tracefs".to_owned());
    let p = plan(&HostFacts {
        kallsyms: &k,
        vmlinux_func: &no_btf,
        fentry: Ok(()),
        kprobes: Err("none".into()),
        tracepoint: &no_tp,
        kernel: (6, 12),
    });
    assert_eq!(p.tier(), Tier::None);
    let put = p.roles.iter().find(|r| r.role == Role::VmPut).unwrap();
    assert!(
        put.missing_reason()
            .unwrap()
            .contains("not a FUNC in vmlinux BTF")
    );
}

#[test]
fn stack_variants_from_symbols() {
    let v = |syms: &str, ops| stack_variant(&Kallsyms::parse(syms), ops, true);
    assert_eq!(
        v("1 t vfio_group_fops_unl_ioctl\n", false),
        StackVariant::Mainline61
    );
    assert_eq!(
        v("1 t vfio_group_fops_unl_ioctl\n", true),
        StackVariant::KvmOpsPatch
    );
    assert_eq!(v("1 T vfio_device_open\n", false), StackVariant::Mainline62);
    assert_eq!(
        v("1 T _vfio_device_get_kvm_safe\n", false),
        StackVariant::GetKvmSafe63
    );
    assert_eq!(v("1 T vfio_df_open\n", false), StackVariant::Df66);
    // 5.10: the group ioctl and vfio_group_set_kvm (no vfio_file_set_kvm).
    assert_eq!(
        v(
            "1 t vfio_group_fops_unl_ioctl\n2 T vfio_group_set_kvm\n",
            false
        ),
        StackVariant::Notifier510
    );
}

/// A kernel whose BPF lacks bpf_get_func_arg (before 5.17) says so on every
/// role that falls back to a kprobe; contention tracepoints missing before
/// 5.19 say which release added them.
#[test]
fn missing_bpf_features_are_named_per_role() {
    let k = Kallsyms::parse(DEBIAN_612);
    let no_tp = |p: &str| -> Result<(), String> {
        if p.starts_with("tp_contention") {
            Err("no such tracepoint".into())
        } else {
            Ok(())
        }
    };
    let facts = HostFacts {
        kallsyms: &k,
        vmlinux_func: &in_btf,
        fentry: Err(format!("{NO_GET_FUNC_ARG}: details")),
        kprobes: Ok(()),
        tracepoint: &no_tp,
        kernel: (5, 10),
    };
    let p = plan(&facts);
    let lock = p
        .roles
        .iter()
        .find(|r| r.role == Role::LockRelease)
        .unwrap();
    let c = lock.attached().next().unwrap();
    assert_eq!(c.method, Method::Kprobe);
    assert_eq!(c.reason, format!("fentry refused: {NO_GET_FUNC_ARG}"));
    let tp = p
        .tracepoints
        .iter()
        .find(|t| t.tracepoint == "lock:contention_begin")
        .unwrap();
    assert_eq!(tp.method, Method::None);
    assert!(tp.reason.starts_with("added in 5.19: "), "{}", tp.reason);
    assert!(tp.too_old);
    // On a kernel that has them, their absence has the check's own reason
    // (tracefs unreadable without privileges, say), not the kernel's age.
    let newer = plan(&HostFacts {
        kernel: (6, 18),
        ..facts
    });
    let tp = newer
        .tracepoints
        .iter()
        .find(|t| t.tracepoint == "lock:contention_begin")
        .unwrap();
    assert_eq!(
        (tp.reason.as_str(), tp.too_old),
        ("no such tracepoint", false)
    );
}

/// Lean with /dev/kvm's handler hooked: no syscall tracepoint; where it
/// cannot be (this sandbox, tier 3) they stay. Deep never uses the handler
/// roles (the tracepoints would report the same creations twice).
#[test]
fn lean_drops_the_syscall_tracepoints_only_where_the_handlers_are_hooked() {
    let k = format!(
        "{DEBIAN_612}ffffffffc0001800 t kvm_dev_ioctl\t[kvm]\nffffffffc0001900 t kvm_vfio_create\t[kvm]\n"
    );
    let k = Kallsyms::parse(&k);
    let facts = hookable(&k);
    let mut lean = plan(&facts);
    lean.without_lock_roles();
    lean.lean_fd_view();
    assert!(!lean.syscalls_traced());
    let tp = |p: &Plan, n: &str| {
        p.tracepoints
            .iter()
            .find(|t| t.program == n)
            .unwrap()
            .method
    };
    assert_eq!(tp(&lean, "tp_contention_begin"), Method::Tracepoint);
    assert_eq!(tp(&lean, "tp_sched_process_exit"), Method::Tracepoint);
    let mut deep = plan(&facts);
    deep.without_handler_roles();
    assert!(deep.syscalls_traced());
    assert!(
        deep.roles
            .iter()
            .filter(|r| matches!(r.role, Role::VmFdCreated | Role::KvmVfioCreated))
            .all(|r| !r.is_covered())
    );
    // Tier 3: nothing to hook, the tracepoints stay.
    let sandbox = Kallsyms::parse(SANDBOX);
    let mut lean3 = plan(&tier3(&sandbox));
    lean3.without_lock_roles();
    lean3.lean_fd_view();
    assert!(lean3.syscalls_traced());
}

/// Kernel lockdown (confidentiality): every path role failed to load, only
/// the lock hooks (fentry, reading nothing but their context) attached. That
/// is no reference-count view at all: not tier 1, and every failure says it
/// was the lockdown, whatever its raw error.
#[test]
fn lock_roles_alone_are_no_tier_and_lockdown_is_named() {
    let k = Kallsyms::parse(DEBIAN_612);
    let mut p = plan(&HostFacts {
        kallsyms: &k,
        vmlinux_func: &in_btf,
        fentry: Ok(()),
        kprobes: Err("refused".into()),
        tracepoint: &all_tps,
        kernel: (6, 12),
    });
    for r in &mut p.roles {
        let lock = matches!(r.role, Role::LockAcquire | Role::LockRelease);
        for c in &mut r.choices {
            if !lock {
                c.error = Some("BPF_PROG_LOAD: Invalid argument".into());
            }
        }
    }
    for t in &mut p.tracepoints {
        t.method = Method::None;
        t.reason = "BPF_PROG_LOAD: Invalid argument".into();
    }
    assert_eq!(p.tier(), Tier::None);
    p.blame_failures_on("kernel lockdown (confidentiality) refuses it");
    let put = p.roles.iter().find(|r| r.role == Role::VmPut).unwrap();
    assert!(
        put.choices
            .iter()
            .all(|c| c.error.as_deref().unwrap().starts_with("kernel lockdown")),
        "{:?}",
        put.choices
    );
    assert!(
        p.tracepoints
            .iter()
            .all(|t| t.reason.starts_with("kernel lockdown"))
    );
}

/// `check`'s mode table on a tier-3 host: deep keeps the contention
/// tracepoints, so where the mutex API cannot be hooked deep raises what they
/// show, as lean does (it once said deep could not, beside lean saying yes);
/// the syscall lines name no developer command and say "the same" once.
#[test]
fn check_modes_agree_where_only_contention_is_seen() {
    use crate::{commands::lock_modes, engine::FindingKind};
    let k = Kallsyms::parse(SANDBOX);
    let p = plan(&tier3(&k));
    let rows = lock_modes::rows(&p, StackVariant::Df66);
    let row = |kind| rows.iter().find(|r| r.kind == kind).unwrap();
    for kind in [FindingKind::SelfDeadlock, FindingKind::LongWait] {
        let r = row(kind);
        assert!(r.deep.starts_with("yes, when contended"), "{}", r.deep);
        assert!(r.lean.starts_with("yes, when contended"), "{}", r.lean);
    }
    assert!(row(FindingKind::LongHold).deep.starts_with("no: "));
    let cost = lock_modes::syscall_cost(&p);
    assert!(!cost.deep.contains("cargo"), "{}", cost.deep);
    assert!(cost.lean.starts_with("the same as deep: "), "{}", cost.lean);
    assert!(!cost.lean.contains(&cost.deep), "{}", cost.lean);
}

/// Lean's stats-file hook keeps files by KVM's two stats fops: without
/// their addresses (KVM not loaded, no CONFIG_KALLSYMS_ALL) it would keep
/// nothing, so it is not attached and says why; with them, it is, by fentry
/// (anon_inode_getfile is in vmlinux) while KVM's own hooks take kprobes.
#[test]
fn the_stats_file_hook_needs_the_stats_fops() {
    let fns = format!(
        "{DEBIAN_612}ffffffff81400000 T anon_inode_getfile\n\
         ffffffffc0001800 t kvm_arch_vcpu_postcreate\t[kvm]\n\
         ffffffffc0001900 t kvm_vcpu_release\t[kvm]\n"
    );
    let stats_hook = |k: &Kallsyms| {
        let p = plan(&hookable(k));
        let r = p
            .roles
            .iter()
            .find(|r| r.role == Role::StatsFdCreated)
            .expect("role planned")
            .choices[0]
            .clone();
        (r.method, r.reason)
    };
    let without = Kallsyms::parse(&fns);
    let (m, why) = stats_hook(&without);
    assert_eq!(m, Method::None);
    assert!(
        why.contains("kvm_vcpu_stats_fops, kvm_vm_stats_fops not in kallsyms"),
        "{why}"
    );
    let with = Kallsyms::parse(&format!(
        "{fns}ffffffffc0003000 r kvm_vcpu_stats_fops\t[kvm]\nffffffffc0003100 r kvm_vm_stats_fops\t[kvm]\n"
    ));
    assert_eq!(
        with.data.get("kvm_vcpu_stats_fops"),
        Some(&0xffffffffc0003000)
    );
    assert_eq!(stats_hook(&with).0, Method::Fentry);
    let p = plan(&hookable(&with));
    let vcpu = p
        .roles
        .iter()
        .find(|r| r.role == Role::VcpuFdCreated)
        .unwrap();
    assert_eq!(vcpu.choices[0].method, Method::Kprobe, "in module kvm");
}

/// vfio_group_set_kvm stays in 5.19+ kernels as a static helper of
/// vfio_file_set_kvm: hooking it there saw each link twice and doubled the
/// hooked path's cost (lab bench, 6.12). The notifier era's hooks attach only
/// where vfio_file_set_kvm is absent.
#[test]
fn the_notifier_era_hooks_stay_off_where_vfio_file_set_kvm_is() {
    let with_helper = format!("{DEBIAN_612}ffffffffc0002700 t vfio_group_set_kvm\t[vfio]\n");
    let k = Kallsyms::parse(&with_helper);
    let p = plan(&hookable(&k));
    let link = p
        .roles
        .iter()
        .find(|r| r.role == Role::GroupVmLink)
        .unwrap();
    let group = link
        .choices
        .iter()
        .find(|c| c.symbol == "vfio_group_set_kvm")
        .unwrap();
    assert_eq!(group.method, Method::None);
    assert!(
        group.reason.contains("vfio_file_set_kvm is here"),
        "{}",
        group.reason
    );
    let notifier_era = Kallsyms::parse(
        "ffffffffc0002700 t vfio_group_set_kvm\t[vfio]\nffffffffc0001700 t kvm_vfio_set_attr\t[kvm]\n",
    );
    let p = plan(&hookable(&notifier_era));
    let link = p
        .roles
        .iter()
        .find(|r| r.role == Role::GroupVmLink)
        .unwrap();
    assert_eq!(link.choices[0].method, Method::Kprobe);
}
