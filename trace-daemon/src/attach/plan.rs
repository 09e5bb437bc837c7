//! The attach plan: for each role, which candidate functions exist here and how
//! each is attached (fentry, kprobe, or not at all, with the reason). Pure: it
//! takes the host's facts as data, so every kernel shape is testable.
use serde::Serialize;

use crate::{
    attach::hooks::{Pick, ROLES, Role, TRACEPOINTS},
    kernel::kallsyms::Kallsyms,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Fentry,
    Kprobe,
    Tracepoint,
    None,
}

/// How watched locks are followed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum LockWatch {
    /// The mutex API hooked (every mutex of the host pays the filter): every
    /// acquire and release of a watched lock.
    Deep,
    /// No program on the mutex API: the locks a thread holds are read from
    /// their owner words at the path hooks (kvm_destroy_vm reached from a VFIO
    /// device release, vfio_file_set_kvm, drivers that take kvm->lock) and at
    /// lock contention. Raises destroy-under-lock, self-deadlock, long-wait
    /// and lock-order-inversion (edges from the lock table); not long-hold.
    /// The default: no program on the mutex API, nor (tiers 1-2) on any
    /// system call.
    #[default]
    Lean,
}

impl LockWatch {
    pub fn name(self) -> &'static str {
        match self {
            LockWatch::Deep => "deep",
            LockWatch::Lean => "lean",
        }
    }
}

impl StackVariant {
    /// 6.1 and the kvm_ops patch take dev_set->lock before group_lock.
    pub fn dev_set_first(self) -> bool {
        matches!(self, StackVariant::Mainline61 | StackVariant::KvmOpsPatch)
    }

    /// vfio_file_set_kvm takes group_lock (6.3's 2b48f52f moved the kvm
    /// pointer under the kvm_ref_lock spinlock).
    pub fn set_kvm_takes_group_lock(self) -> bool {
        matches!(
            self,
            StackVariant::Mainline61 | StackVariant::Mainline62 | StackVariant::KvmOpsPatch
        )
    }
}

/// The syscall tracepoints (ioctl, close, the dups): tier 3's whole view,
/// and deep's fd view.
fn is_syscall_tracepoint(t: &TracepointPlan) -> bool {
    // Exec and fork matter only where fds are followed by their system
    // calls: the function hooks see the releases an exec or a child makes.
    t.tracepoint.starts_with("syscalls:")
        || ["tp_sched_process_exec", "tp_sched_process_fork"].contains(&t.program)
}

/// The handler hooks lean uses in their place.
const HANDLER_ROLES: [Role; 4] = [
    Role::VmFdCreated,
    Role::KvmVfioCreated,
    Role::VcpuFdCreated,
    Role::StatsFdCreated,
];

impl Plan {
    /// Lean lock watching: the mutex API roles are planned, not attached.
    pub fn without_lock_roles(&mut self) {
        self.drop_roles(
            &[Role::LockAcquire, Role::LockRelease],
            "lean lock watching: the mutex API is not hooked (--locks deep hooks it)",
        );
    }

    /// Deep keeps the syscall tracepoints: the handler roles would repeat them.
    pub fn without_handler_roles(&mut self) {
        self.drop_roles(
            &HANDLER_ROLES,
            "deep: the syscall tracepoints give the fd view (--locks lean hooks this instead)",
        );
    }

    /// Lean, once the roles are attached: where /dev/kvm's handler is hooked,
    /// no syscall tracepoint is attached (nothing per system call for the
    /// rest of the host); else (tier 3) they stay.
    pub fn lean_fd_view(&mut self) {
        let handled = self
            .roles
            .iter()
            .any(|r| r.role == Role::VmFdCreated && r.is_covered());
        if !handled {
            return;
        }
        for t in &mut self.tracepoints {
            if is_syscall_tracepoint(t) && t.method == Method::Tracepoint {
                t.method = Method::None;
                t.reason = "lean: kvm_dev_ioctl and kvm_vfio_create are hooked instead (no program on any system call)".into();
            }
        }
    }

    /// Whether the syscall tracepoints are (to be) attached.
    pub fn syscalls_traced(&self) -> bool {
        self.tracepoints
            .iter()
            .any(|t| is_syscall_tracepoint(t) && t.method == Method::Tracepoint)
    }

    fn drop_roles(&mut self, roles: &[Role], reason: &str) {
        for r in &mut self.roles {
            if roles.contains(&r.role) {
                for c in &mut r.choices {
                    c.method = Method::None;
                    c.programs.clear();
                    c.reason = reason.into();
                }
            }
        }
    }
}

/// What the loader knows about the host before attaching anything.
pub struct HostFacts<'a> {
    pub kallsyms: &'a Kallsyms,
    /// Whether a name is a FUNC in vmlinux BTF.
    pub vmlinux_func: &'a dyn Fn(&str) -> bool,
    /// Err: why fentry/fexit cannot be used at all on this host.
    pub fentry: Result<(), String>,
    /// Err: why kprobes cannot be used.
    pub kprobes: Result<(), String>,
    /// Per tracepoint program: Err with the reason it cannot attach.
    pub tracepoint: &'a dyn Fn(&str) -> Result<(), String>,
    /// The running kernel's (major, minor): a tracepoint added later than it
    /// is absent for that reason, not for the one its check gave.
    pub kernel: (u32, u32),
}

#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    pub symbol: &'static str,
    pub module: Option<String>,
    pub method: Method,
    pub reason: String,
    pub programs: Vec<String>,
    /// Set by the loader when attaching failed after all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RolePlan {
    pub role: Role,
    pub name: &'static str,
    pub yields: &'static str,
    pub choices: Vec<Choice>,
    /// Candidates that do not exist on this kernel.
    pub absent: Vec<&'static str>,
}

impl RolePlan {
    pub fn attached(&self) -> impl Iterator<Item = &Choice> {
        self.choices
            .iter()
            .filter(|c| c.method != Method::None && c.error.is_none())
    }

    pub fn is_covered(&self) -> bool {
        self.attached().next().is_some()
    }

    /// Some candidate exists on this kernel: a role this kernel line does not
    /// have (every candidate inlined or of another version) is not missing.
    pub fn exists_here(&self) -> bool {
        !self.choices.is_empty()
    }

    /// kvscope tried to attach it by a method this host allows, and failed:
    /// a role lost, not one this kernel or tier cannot serve.
    pub fn attach_failed(&self) -> bool {
        !self.is_covered()
            && self
                .choices
                .iter()
                .any(|c| c.method != Method::None && c.error.is_some())
    }

    /// Exists on this kernel, yet nothing of it could be attached.
    pub fn is_missing(&self) -> bool {
        self.exists_here() && !self.is_covered()
    }

    /// Why the role is not covered (None when it is).
    pub fn missing_reason(&self) -> Option<String> {
        if self.is_covered() {
            return None;
        }
        if let Some(c) = self.choices.first() {
            return Some(format!(
                "{}: {}",
                c.symbol,
                c.error.clone().unwrap_or_else(|| c.reason.clone())
            ));
        }
        Some(format!(
            "none of {} exists on this kernel (inlined or not built)",
            self.absent.join(", ")
        ))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TracepointPlan {
    pub program: &'static str,
    pub tracepoint: String,
    pub yields: &'static str,
    pub method: Method,
    pub reason: String,
    /// This kernel is older than the release that added the tracepoint.
    pub too_old: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub enum Tier {
    /// fentry/fexit with BTF.
    #[serde(rename = "1-fentry")]
    Fentry = 1,
    /// kprobe/kretprobe on some roles.
    #[serde(rename = "2-kprobe")]
    Kprobe = 2,
    /// Tracepoints only.
    #[serde(rename = "3-tracepoints")]
    Tracepoints = 3,
    #[serde(rename = "none")]
    None = 4,
}

impl Tier {
    pub fn describe(self) -> &'static str {
        match self {
            Tier::Fentry => "tier 1: fentry/fexit with BTF, full detail",
            Tier::Kprobe => "tier 2: kprobe/kretprobe on some roles, same detail, higher overhead",
            Tier::Tracepoints => {
                "tier 3: tracepoints only: VM, kvm-vfio and VFIO fd lifetimes from system calls, \
                 users_count where the fd leads to the VM, contention on watched locks; \
                 no in-kernel gets/puts, no uncontended lock order, no destroy context"
            }
            Tier::None => "nothing can be attached",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub roles: Vec<RolePlan>,
    pub tracepoints: Vec<TracepointPlan>,
}

impl Plan {
    /// The tier of the reference-count view: lock roles alone (a locked-down
    /// kernel loads only those) follow no reference.
    pub fn tier(&self) -> Tier {
        let methods: Vec<Method> = self
            .roles
            .iter()
            .filter(|r| !matches!(r.role, Role::LockAcquire | Role::LockRelease))
            .flat_map(|r| r.attached().map(|c| c.method))
            .collect();
        if methods.contains(&Method::Kprobe) {
            Tier::Kprobe
        } else if methods.contains(&Method::Fentry) {
            Tier::Fentry
        } else if self
            .tracepoints
            .iter()
            .any(|t| t.method == Method::Tracepoint)
        {
            Tier::Tracepoints
        } else {
            Tier::None
        }
    }

    /// Every choice and tracepoint that failed to attach was refused by
    /// `why` (kernel lockdown), which its raw error (EPERM, or a verifier's
    /// EINVAL for a helper the lockdown removed) does not say.
    pub fn blame_failures_on(&mut self, why: &str) {
        for c in self.roles.iter_mut().flat_map(|r| r.choices.iter_mut()) {
            if let Some(e) = &mut c.error {
                *e = format!("{why}: {e}");
            }
        }
        for t in &mut self.tracepoints {
            if t.method == Method::None && !t.reason.is_empty() {
                t.reason = format!("{why}: {}", t.reason);
            }
        }
    }
}

/// Every kernel function the hook table may attach to.
pub fn hook_symbols() -> impl Iterator<Item = &'static str> {
    ROLES
        .iter()
        .flat_map(|spec| spec.candidates.iter().map(|c| c.symbol()))
}

pub fn plan(facts: &HostFacts<'_>) -> Plan {
    let mut roles = Vec::new();
    for spec in ROLES {
        let mut rp = RolePlan {
            role: spec.role,
            name: spec.role.name(),
            yields: spec.yields,
            choices: Vec::new(),
            absent: Vec::new(),
        };
        for cand in spec.candidates {
            let sym = cand.symbol();
            let Some(found) = facts.kallsyms.get(sym) else {
                rp.absent.push(sym);
                continue;
            };
            let covered = rp.choices.iter().any(|c| c.method != Method::None);
            if spec.pick == Pick::First && covered {
                continue;
            }
            let module = found.module.map(str::to_owned);
            let (mut method, mut reason) = choose(facts, sym, module.as_deref());
            let missing = missing_data(facts.kallsyms, cand.hook);
            let superseded = crate::attach::hooks::superseded_by(cand.hook)
                .filter(|h| facts.kallsyms.get(h.symbol()).is_some());
            if let Some(h) = superseded {
                method = Method::None;
                reason = format!("{} is here (5.19+): not needed", h.symbol());
            } else if !missing.is_empty() {
                method = Method::None;
                reason = format!(
                    "{} not in kallsyms (KVM not loaded, or no CONFIG_KALLSYMS_ALL)",
                    missing.join(", ")
                );
            }
            // A later alternative stands in for the preferred ones: say for what.
            if spec.pick == Pick::First && !rp.absent.is_empty() {
                reason = format!("{reason}; {}", cand.lines);
            }
            let programs = match method {
                Method::Fentry => cand.fentry_programs(),
                Method::Kprobe => cand.kprobe_programs(),
                _ => Vec::new(),
            };
            rp.choices.push(Choice {
                symbol: sym,
                module,
                method,
                reason,
                programs,
                error: None,
            });
        }
        roles.push(rp);
    }
    let tracepoints = TRACEPOINTS
        .iter()
        .map(|t| {
            let too_old = t.since.is_some_and(|v| facts.kernel < v);
            let (method, reason) = match ((facts.tracepoint)(t.program), t.since) {
                (Ok(()), _) => (Method::Tracepoint, "available".to_owned()),
                (Err(e), Some((major, minor))) if too_old => {
                    (Method::None, format!("added in {major}.{minor}: {e}"))
                }
                (Err(e), _) => (Method::None, e),
            };
            TracepointPlan {
                program: t.program,
                tracepoint: format!("{}:{}", t.category, t.name),
                yields: t.yields,
                method,
                reason,
                too_old,
            }
        })
        .collect();
    Plan { roles, tracepoints }
}

/// The data `hook`'s programs need that kallsyms does not give.
fn missing_data(k: &Kallsyms, hook: trace_common::HookId) -> Vec<&'static str> {
    crate::attach::hooks::data_needed(hook)
        .iter()
        .copied()
        .filter(|d| k.data.get(*d).is_none_or(|a| *a == 0))
        .collect()
}

/// How a refusal of fentry starts when this kernel's BPF lacks the helper the
/// fentry programs read their arguments with.
pub const NO_GET_FUNC_ARG: &str = "this kernel's BPF has no bpf_get_func_arg (5.17+)";

fn choose(facts: &HostFacts<'_>, sym: &str, module: Option<&str>) -> (Method, String) {
    // Short reasons: `check` states the host-wide ones (fentry, kprobes) in full once.
    let fentry_why_not = match (&facts.fentry, module) {
        (Err(e), _) if e.starts_with(NO_GET_FUNC_ARG) => {
            Some(format!("fentry refused: {NO_GET_FUNC_ARG}"))
        }
        (Err(_), _) => Some("fentry refused".to_owned()),
        (Ok(()), Some(m)) => Some(format!(
            "in module {m}: aya 0.14 resolves fentry targets only in vmlinux BTF"
        )),
        (Ok(()), None) if !(facts.vmlinux_func)(sym) => {
            Some("not a FUNC in vmlinux BTF".to_owned())
        }
        (Ok(()), None) => None,
    };
    match (fentry_why_not, &facts.kprobes) {
        (None, _) => (Method::Fentry, "in vmlinux BTF".to_owned()),
        (Some(why), Ok(())) => (Method::Kprobe, why),
        (Some(why), Err(_)) => (Method::None, format!("{why}; kprobes absent")),
    }
}

/// Which shape of the VFIO <-> KVM path the symbols and BTF indicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackVariant {
    /// The seed's `kvm_ops` patch: vfio_device has kvm_ops, not kvm.
    KvmOpsPatch,
    /// 6.6+: vfio_df_*, VFIO core holds a kvm reference.
    Df66,
    /// 6.3-6.5: _vfio_device_get_kvm_safe, VFIO core holds a kvm reference.
    GetKvmSafe63,
    /// 6.2: global vfio_device_open, group_lock -> dev_set->lock, no VFIO ref.
    Mainline62,
    /// 6.1: vfio_device_open inlined in the group ioctl, dev_set->lock -> group_lock.
    Mainline61,
    /// 5.10-5.18: the kvm pointer reaches drivers through the group notifier
    /// (`vfio_group_set_kvm` -> VFIO_GROUP_NOTIFY_SET_KVM); the VFIO core holds
    /// no kvm reference and no mutex around a driver's open or release;
    /// `struct vfio_device` and `struct vfio_group` are private to vfio.c.
    Notifier510,
    /// No VFIO on this kernel.
    NoVfio,
}

impl StackVariant {
    pub fn describe(self) -> &'static str {
        match self {
            StackVariant::KvmOpsPatch => {
                "kvm_ops patch (seed): vfio_device.kvm_ops get/put, put may run under dev_set->lock"
            }
            StackVariant::Df66 => {
                "6.6+: vfio_df_*, VFIO holds a kvm reference from first open to last close"
            }
            StackVariant::GetKvmSafe63 => {
                "6.3-6.5: _vfio_device_get_kvm_safe, VFIO holds a kvm reference"
            }
            StackVariant::Mainline62 => {
                "6.2: vfio_device_open(dev, iommufd, kvm), group_lock -> dev_set->lock"
            }
            StackVariant::Mainline61 => {
                "6.1-style: vfio_device_open inlined, dev_set->lock -> group_lock, drivers hold the kvm ref"
            }
            StackVariant::Notifier510 => {
                "5.10-5.18 notifier era: vfio_group_set_kvm hands the kvm to drivers through VFIO_GROUP_NOTIFY_SET_KVM; the VFIO core holds no kvm reference (the kvm-vfio device does, a driver's notifier may take its own) and no lock around open/release"
            }
            StackVariant::NoVfio => "no VFIO on this kernel",
        }
    }
}

/// `has_kvm_ops`: vfio_device has a `kvm_ops` member in BTF.
/// The ways user space can open a VFIO device on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VfioPaths {
    /// `/dev/vfio/N` and VFIO_GROUP_GET_DEVICE_FD (every line).
    pub group: bool,
    /// `/dev/vfio/devices/vfioN` bound to an iommufd (6.6+ with
    /// CONFIG_VFIO_DEVICE_CDEV): dev_set->lock only on open and close.
    pub cdev: bool,
}

/// A lockdep kernel (CONFIG_DEBUG_LOCK_ALLOC): every mutex_lock is
/// `mutex_lock_nested` and takes the slow path, so hooking the mutex API
/// (deep) costs more there, and lean's owner words are unchanged.
pub fn lockdep(k: &Kallsyms) -> bool {
    k.get("mutex_lock_nested").is_some() && k.get("lock_acquire").is_some()
}

pub fn vfio_paths(k: &Kallsyms) -> VfioPaths {
    let has = |s: &str| k.get(s).is_some();
    VfioPaths {
        group: has("vfio_group_fops_unl_ioctl"),
        // Not vfio_device_fops_cdev_open: without the cdev its stub is still
        // emitted (a fops pointer). These two exist only in device_cdev.c.
        cdev: has("vfio_df_ioctl_bind_iommufd") || has("vfio_df_get_kvm_safe"),
    }
}

pub fn stack_variant(k: &Kallsyms, has_kvm_ops: bool, has_vfio_device: bool) -> StackVariant {
    let has = |s: &str| k.get(s).is_some();
    if has_kvm_ops {
        StackVariant::KvmOpsPatch
    } else if has("vfio_df_open") || has("vfio_device_get_kvm_safe") {
        StackVariant::Df66
    } else if has("_vfio_device_get_kvm_safe") || has("vfio_device_put_kvm") {
        StackVariant::GetKvmSafe63
    } else if has("vfio_group_set_kvm") {
        // Renamed vfio_file_set_kvm when the notifier went (421cfe6596f6, 5.19).
        StackVariant::Notifier510
    } else if has("vfio_device_open") {
        StackVariant::Mainline62
    } else if has("vfio_group_fops_unl_ioctl") || has_vfio_device {
        StackVariant::Mainline61
    } else {
        StackVariant::NoVfio
    }
}

#[cfg(test)]
mod tests;
