//! The guest's result checked against the scenarios: the report types the
//! lab reads (the fields of `kvscope check --json` and `kvscope replay --json`
//! it asserts on, deserialised), and one function per document.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::scenarios::{EXPECT, Scenario, expect_variant};

/// `kvscope check --json`, the parts the lab asserts.
#[derive(Deserialize)]
pub struct Check {
    pub usable: bool,
    #[serde(default)]
    pub reason: Option<String>,
    pub fentry: Status,
    pub offsets: Vec<Offset>,
    pub lock_watch: Vec<ModeRow>,
    pub variant_description: String,
    pub vfio_paths: VfioPaths,
    pub lockdep: bool,
    pub plan: CheckPlan,
}

/// What each lock-watching mode can raise here, per finding kind.
#[derive(Deserialize)]
pub struct ModeRow {
    pub kind: String,
    pub deep: String,
    pub lean: String,
}

#[derive(Deserialize)]
pub struct Status {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Deserialize)]
pub struct Offset {
    /// `struct.path`.
    pub source: String,
    pub offset: Option<u32>,
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct VfioPaths {
    pub group: bool,
    pub cdev: bool,
}

#[derive(Deserialize)]
pub struct CheckPlan {
    pub roles: Vec<RolePlan>,
    pub tracepoints: Vec<TracepointPlan>,
}

#[derive(Deserialize)]
pub struct RolePlan {
    pub role: String,
    pub choices: Vec<Choice>,
}

#[derive(Deserialize, Debug)]
pub struct Choice {
    pub symbol: String,
    pub method: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Deserialize)]
pub struct TracepointPlan {
    pub tracepoint: String,
    pub method: String,
    pub reason: String,
}

/// `kvscope replay --json`, the parts the lab asserts.
#[derive(Deserialize)]
pub struct Report {
    pub damage: Option<String>,
    pub anomalies: Anomalies,
    pub lost: BTreeMap<String, u64>,
    pub vms: Vec<VmSummary>,
    pub device_list: Vec<DeviceSummary>,
    pub findings: Vec<Finding>,
    pub header: Option<HeaderSummary>,
}

#[derive(Deserialize)]
pub struct HeaderSummary {
    #[serde(default)]
    pub tracepoints: Vec<String>,
    pub attach: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Debug)]
pub struct Anomalies {
    pub out_of_order: u64,
    pub unseen_creation: u64,
    pub unmatched_release: u64,
}

#[derive(Deserialize)]
pub struct VmSummary {
    pub counts: Vec<i64>,
    pub destroys: u64,
    pub changes: Vec<String>,
}

#[derive(Deserialize)]
pub struct DeviceSummary {
    pub open_counts: Vec<i64>,
}

#[derive(Deserialize, Debug, PartialEq)]
pub struct Finding {
    pub kind: String,
    pub locks: Vec<String>,
}

pub fn check_report(kernel: &str, v: &Value) -> Vec<String> {
    let r: Check = match serde_json::from_value(v.clone()) {
        Ok(r) => r,
        Err(e) => return vec![format!("kvscope check --json: unexpected shape: {e}")],
    };
    let mut bad = Vec::new();
    if !r.usable {
        bad.push(format!("not usable: {:?}", r.reason));
    }
    let variant = expect_variant(kernel);
    if !r.variant_description.starts_with(variant) {
        bad.push(format!(
            "check names the variant {:?}, expected {variant:?}",
            r.variant_description
        ));
    }
    // Only the cdev kernel has the cdev path (Debian's configs leave it off).
    let cdev = kernel == "cdev";
    if !r.vfio_paths.group || r.vfio_paths.cdev != cdev {
        bad.push(format!(
            "check reports the VFIO paths {:?}, expected group and {}",
            r.vfio_paths,
            if cdev { "cdev" } else { "no cdev" }
        ));
    }
    // No lab kernel is a lockdep build (Debian's are not; the built ones
    // leave DEBUG_LOCK_ALLOC off).
    if r.lockdep {
        bad.push("check reports a lockdep kernel".to_owned());
    }
    // Every tracepoint program attaches on every lab kernel (the patched
    // kernel's config must have FTRACE_SYSCALLS for the syscalls ones), but
    // for 5.10's missing lock contention tracepoints (5.19+), said so.
    for t in r.plan.tracepoints.iter().filter(|t| t.method == "none") {
        let told = kernel == "bullseye"
            && t.tracepoint.starts_with("lock:contention_")
            && t.reason.starts_with("added in 5.19: ");
        if !told {
            bad.push(format!(
                "tracepoint {} not attached: {}",
                t.tracepoint, t.reason
            ));
        }
    }
    if kernel == "bullseye" {
        bad.extend(check_notifier_era(&r));
    }
    for (role, kernels, method) in EXPECT {
        if !kernels.contains(&kernel) {
            continue;
        }
        let Some(rp) = r.plan.roles.iter().find(|x| x.role == *role) else {
            bad.push(format!("{role}: missing from the report"));
            continue;
        };
        let attached: Vec<&Choice> = rp
            .choices
            .iter()
            .filter(|c| c.error.is_none() && c.method != "none")
            .collect();
        if attached.is_empty() {
            bad.push(format!("{role}: not attached: {:?}", rp.choices));
        } else if !attached.iter().any(|c| c.method == *method) {
            bad.push(format!(
                "{role}: attached, but not by {method}: {:?}",
                rp.choices
            ));
        }
        for c in &rp.choices {
            if let Some(e) = &c.error {
                bad.push(format!("{role}: {} failed: {e}", c.symbol));
            }
        }
    }
    bad
}

/// 5.10: what its BPF lacks is said per role, the notifier is hooked, and the
/// offsets of types private to the kvm and vfio modules come from the lab's
/// --btf files, vouched for by build id.
fn check_notifier_era(r: &Check) -> Vec<String> {
    let mut bad = Vec::new();
    let fentry = r.fentry.reason.as_deref().unwrap_or("");
    if !fentry.contains("no bpf_get_func_arg (5.17+)") {
        bad.push(format!(
            "fentry refusal does not name bpf_get_func_arg: {fentry:?}"
        ));
    }
    for role in ["lock-acquire", "lock-release", "vm-get"] {
        let told = r.plan.roles.iter().filter(|x| x.role == role).any(|x| {
            x.choices
                .iter()
                .all(|c| c.reason.contains("no bpf_get_func_arg (5.17+)"))
        });
        if !told {
            bad.push(format!(
                "{role}: its kprobe reason does not name bpf_get_func_arg"
            ));
        }
    }
    for (role, symbol) in [
        ("group-vm-link", "vfio_group_set_kvm"),
        ("kvm-vfio-teardown", "kvm_device_release"),
    ] {
        let hooked = r.plan.roles.iter().filter(|x| x.role == role).any(|x| {
            x.choices
                .iter()
                .any(|c| c.symbol == symbol && c.method == "kprobe" && c.error.is_none())
        });
        if !hooked {
            bad.push(format!("{symbol} is not hooked ({role})"));
        }
    }
    for (field, module) in [
        ("vfio_group.kvm", "vfio"),
        ("vfio_device.group", "vfio"),
        ("kvm_vfio.lock", "kvm"),
        ("kvm_device.kvm", "kvm"),
    ] {
        let o = r.offsets.iter().find(|o| o.source == field);
        let from = o.and_then(|o| o.from.as_deref()).unwrap_or("");
        let vouched = format!("--btf /btf/{module}.ko (module {module}, build id ");
        if o.and_then(|o| o.offset).is_none()
            || !from.starts_with(&vouched)
            || !from.ends_with(": the running module's)")
        {
            bad.push(format!(
                "{field}: offset not read from the module's --btf file: {from:?}"
            ));
        }
    }
    // The findings that need the contention tracepoints say why they are off.
    for row in r.lock_watch.iter().filter(|m| m.kind == "deadlock") {
        for (mode, text) in [("deep", &row.deep), ("lean", &row.lean)] {
            if !text.contains("no lock contention tracepoints (added in 5.19)") {
                bad.push(format!(
                    "deadlock ({mode}) does not say the kernel lacks the tracepoints: {text:?}"
                ));
            }
        }
    }
    for gone in ["vfio_device.open_count", "vfio_group.group_lock"] {
        if r.offsets
            .iter()
            .any(|o| o.source == gone && o.offset.is_some())
        {
            bad.push(format!(
                "{gone} has an offset on 5.10, where it does not exist"
            ));
        }
    }
    bad
}

/// sys_enter/exit_ioctl, sys_enter_close, the entries and exits of dup,
/// dup2, dup3, fcntl, clone and clone3, and the exits of recvmsg and
/// pidfd_getfd (5.6+: every lab kernel has it).
const DEEP_SYSCALL_TRACEPOINTS: usize = 17;

/// Every lab kernel has function hooks: deep keeps the syscall tracepoints,
/// lean attaches none and hooks /dev/kvm's handler instead.
fn check_fd_view(name: &str, lean: bool, r: &Report, bad: &mut Vec<String>) {
    let Some(h) = &r.header else {
        bad.push(format!("{name}: the recording has no header"));
        return;
    };
    let syscalls = h
        .tracepoints
        .iter()
        .filter(|t| t.starts_with("syscalls:"))
        .count();
    let handler = h
        .attach
        .get("vm-fd-created")
        .into_iter()
        .flatten()
        .any(|c| c.starts_with("kvm_dev_ioctl ") && !c.contains("none") && !c.contains("failed"));
    match lean {
        true if syscalls > 0 || !handler => bad.push(format!(
            "{name}: lean must hook kvm_dev_ioctl and trace no syscall: tracepoints {:?}, vm-fd-created {:?}",
            h.tracepoints,
            h.attach.get("vm-fd-created")
        )),
        false if syscalls != DEEP_SYSCALL_TRACEPOINTS => bad.push(format!(
            "{name}: deep keeps the {DEEP_SYSCALL_TRACEPOINTS} syscall tracepoints (ioctl, close, the dups, clone, recvmsg, pidfd_getfd): {:?}",
            h.tracepoints
        )),
        _ => {}
    }
}

/// Counts, opens and holders of the one VM and its device generations.
fn check_objects(name: &str, sc: &Scenario, r: &Report, bad: &mut Vec<String>) {
    if r.vms.len() != 1 {
        bad.push(format!("{name}: {} VMs, expected 1", r.vms.len()));
    }
    for vm in &r.vms {
        if !sc.exact {
            if vm.counts.last() != Some(&0) {
                bad.push(format!(
                    "{name}: users_count {:?} does not end at 0",
                    vm.counts
                ));
            }
        } else if vm.counts != sc.counts {
            bad.push(format!(
                "{name}: users_count {:?}, expected {:?}",
                vm.counts, sc.counts
            ));
        }
        if vm.destroys != 1 {
            bad.push(format!(
                "{name}: kvm_destroy_vm seen {} times, expected once",
                vm.destroys
            ));
        }
        for a in sc.attributed {
            let (sign, holder) = a.split_once(' ').unwrap_or((a, ""));
            if !vm
                .changes
                .iter()
                .any(|c| c.starts_with(sign) && c.contains(holder))
            {
                bad.push(format!(
                    "{name}: no step {a} in the VM's timeline: {:?}",
                    vm.changes
                ));
            }
        }
    }
    let opens: Vec<&Vec<i64>> = r.device_list.iter().map(|d| &d.open_counts).collect();
    if !sc.exact {
        // Each open after a close is a new generation of the device.
        let ok = !opens.is_empty()
            && opens
                .iter()
                .all(|o| o.iter().all(|c| *c == 0 || *c == 1) && o.last() == Some(&0));
        if !ok {
            bad.push(format!(
                "{name}: device open_count {opens:?}: not 0/1 per open, ending closed"
            ));
        }
    } else if opens != [&sc.open_counts.to_vec()] {
        bad.push(format!(
            "{name}: device open_count {opens:?}, expected [{:?}]",
            sc.open_counts
        ));
    }
}

/// Exactly the findings the scenario names (in order), or for a race only
/// the kinds it allows.
fn check_findings(name: &str, sc: &Scenario, lean: bool, r: &Report, bad: &mut Vec<String>) {
    let want: Vec<Finding> = sc
        .findings_in(lean)
        .iter()
        .map(|(k, l)| Finding {
            kind: k.to_string(),
            locks: l.iter().map(|x| x.to_string()).collect(),
        })
        .collect();
    if sc.exact {
        let canon = |v: &[Finding]| {
            let mut v: Vec<(String, Vec<String>)> = v
                .iter()
                .map(|f| {
                    let mut l = f.locks.clone();
                    l.sort();
                    (f.kind.clone(), l)
                })
                .collect();
            v.sort();
            v
        };
        let differ = if sc.unordered {
            canon(&r.findings) != canon(&want)
        } else {
            r.findings != want
        };
        if differ {
            bad.push(format!(
                "{name}: findings {:?}, expected {want:?}",
                r.findings
            ));
        }
        return;
    }
    let allowed: Vec<&str> = sc.findings.iter().map(|(k, _)| *k).collect();
    for f in r
        .findings
        .iter()
        .filter(|f| !allowed.contains(&f.kind.as_str()))
    {
        bad.push(format!("{name}: finding {f:?}; only {allowed:?} may occur"));
    }
}

/// A step under `kvscope run --fail-on info` fails (90) exactly when its
/// recording holds findings, and its JUnit has a failing case for each kind
/// found; a clean one passes (0).
pub fn check_run(name: &str, s: &lab_driver::protocol::StepResult) -> Vec<String> {
    let Some(status) = s.run_status else {
        return Vec::new();
    };
    let kinds: Vec<&str> = s
        .report
        .as_ref()
        .and_then(|r| r["findings"].as_array())
        .map(|f| f.iter().filter_map(|f| f["kind"].as_str()).collect())
        .unwrap_or_default();
    let want = if kinds.is_empty() { 0 } else { 90 };
    let mut bad = Vec::new();
    if status != want {
        bad.push(format!(
            "{name}: kvscope run exited {status}, expected {want} (findings {kinds:?})"
        ));
    }
    for k in &kinds {
        if !junit_fails(&s.junit, k) {
            bad.push(format!(
                "{name}: kvscope run's JUnit has no failing {k} case"
            ));
        }
    }
    eprintln!("lab:   {name}: kvscope run exited {status}");
    bad
}

/// Each curated KVM selftest of the row ran under `kvscope run` and passed
/// it: the test succeeded, kvscope saw its VMs, and found nothing (0).
pub fn check_selftests(kernel: &str, got: &[lab_driver::protocol::SelftestResult]) -> Vec<String> {
    let mut bad = Vec::new();
    let want: &[&str] = match super::selftests::source_of(kernel) {
        Some(_) => super::selftests::CURATED,
        None => &[],
    };
    for name in want.iter().map(|t| super::selftests::name(t)) {
        let Some(t) = got.iter().find(|t| t.name == name) else {
            bad.push(format!("selftest {name}: did not run"));
            continue;
        };
        let vms = t
            .kvscope_said
            .lines()
            .find_map(|l| l.strip_prefix("VMs"))
            .map(str::trim)
            .unwrap_or("?");
        eprintln!(
            "lab:   selftest {name} under kvscope run: exit {:?}; VMs {vms}",
            t.run_status
        );
        if t.run_status != Some(0) {
            bad.push(format!(
                "selftest {name}: kvscope run exited {:?} (0 expected: the test passes, nothing found)\n{}\n{}",
                t.run_status, t.output_tail, t.kvscope_said
            ));
        }
        if vms.starts_with('0') || vms == "?" {
            bad.push(format!("selftest {name}: kvscope saw no VM of it ({vms})"));
        }
        if t.junit.contains("<failure") || t.junit.contains("<error") || t.junit.is_empty() {
            bad.push(format!("selftest {name}: JUnit not clean:\n{}", t.junit));
        }
    }
    bad
}

/// Whether a `kvscope.KIND` test case of `junit` carries a `<failure>`.
fn junit_fails(junit: &str, kind: &str) -> bool {
    let marker = format!("classname=\"kvscope.{kind}\"");
    junit
        .split("<testcase")
        .any(|case| case.contains(&marker) && case.contains("<failure"))
}

pub fn check_scenario(
    name: &str,
    sc: &Scenario,
    lean: bool,
    v: &Value,
    timeline: &str,
) -> Vec<String> {
    let r: Report = match serde_json::from_value(v.clone()) {
        Ok(r) => r,
        Err(e) => return vec![format!("{name}: replay --json: unexpected shape: {e}")],
    };
    let mut bad = Vec::new();
    if let Some(d) = &r.damage {
        bad.push(format!("{name}: damaged recording: {d}"));
    }
    // A clean capture shows no anomaly (locks taken before kvscope watched
    // them are a note, not an anomaly).
    let a = &r.anomalies;
    if sc.exact && a.out_of_order + a.unseen_creation + a.unmatched_release > 0 {
        bad.push(format!("{name}: anomalies {a:?}"));
    }
    let lost: u64 = r.lost.values().sum();
    if lost > 0 {
        bad.push(format!("{name}: {lost} events lost"));
    }
    check_objects(name, sc, &r, &mut bad);
    check_findings(name, sc, lean, &r, &mut bad);
    check_fd_view(name, lean, &r, &mut bad);
    // A JIT image or trampoline after the test module was once named after
    // the module's last symbol; frames past a module's extent stay raw now.
    if timeline.contains("cleanup_module+") {
        bad.push(format!(
            "{name}: a stack frame named after a module's cleanup_module"
        ));
    }
    for f in sc.frames {
        if !timeline.contains(f) {
            bad.push(format!("{name}: no {f} frame in the VM's timeline stacks"));
        }
    }
    let counts = r.vms.first().map(|v| v.counts.clone()).unwrap_or_default();
    let opens: Vec<&Vec<i64>> = r.device_list.iter().map(|d| &d.open_counts).collect();
    let got: Vec<(&str, &Vec<String>)> = r
        .findings
        .iter()
        .map(|f| (f.kind.as_str(), &f.locks))
        .collect();
    if sc.exact {
        eprintln!("lab:   {name}: users_count {counts:?}, open_count {opens:?}, findings {got:?}");
    } else {
        eprintln!(
            "lab:   {name}: {} count changes ending {:?}, {} device opens, findings {got:?}",
            counts.len(),
            counts.last(),
            opens.len()
        );
    }
    bad
}
