//! `cargo xtask lab`: for each kernel of the matrix, boot it with kvscope in the
//! initramfs and check what it attaches, for real, against that kernel's verifier.
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use crate::{cmd, kbuild, lab};

/// Roles that must attach on each lab kernel, with the method expected. On the
/// Debian kernels KVM and VFIO are modules: kprobes (aya 0.14 takes fentry
/// targets from vmlinux BTF only). The patched kernel builds them in: fentry.
/// The mutex API is in vmlinux everywhere: fentry.
const MODULAR: &[&str] = &["6.1", "6.12", "sid"];
/// Kernels with the 6.6+ shape (vfio_df_*, VFIO's own kvm reference).
const DF66: &[&str] = &["6.12", "sid"];
const EXPECT: &[(&str, &[&str], &str)] = &[
    ("vm-get", MODULAR, "kprobe"),
    ("vm-put", MODULAR, "kprobe"),
    ("vm-destroyed", MODULAR, "kprobe"),
    ("vm-fd-release", MODULAR, "kprobe"),
    ("device-open", MODULAR, "kprobe"),
    ("device-release", MODULAR, "kprobe"),
    ("vfio-kvm-get", DF66, "kprobe"),
    ("vfio-kvm-put", DF66, "kprobe"),
    ("group-vm-link", MODULAR, "kprobe"),
    ("kvm-vfio-teardown", MODULAR, "kprobe"),
    ("vm-get", &["patched"], "fentry"),
    ("vm-put", &["patched"], "fentry"),
    ("vm-destroyed", &["patched"], "fentry"),
    ("vm-fd-release", &["patched"], "fentry"),
    // vfio_device_open is inlined there: the group ioctl stands in for it.
    ("device-open", &["patched"], "fentry"),
    ("device-release", &["patched"], "fentry"),
    ("group-vm-link", &["patched"], "fentry"),
    ("kvm-vfio-teardown", &["patched"], "fentry"),
    ("device-open-attempt", &["6.1"], "kprobe"),
    ("device-open-attempt", &["patched"], "fentry"),
    ("lock-acquire", ALL, "fentry"),
    ("lock-release", ALL, "fentry"),
];

/// The stack variant `check` must name per kernel.
fn expect_variant(kernel: &str) -> &'static str {
    match kernel {
        "patched" => "kvm_ops patch",
        "6.12" | "sid" => "6.6+",
        _ => "6.1-style",
    }
}

fn check_report(kernel: &str, r: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if r["usable"] != true {
        bad.push(format!("not usable: {}", r["reason"]));
    }
    let variant = r.to_string();
    if !variant.contains(expect_variant(kernel)) {
        bad.push(format!(
            "check does not name the {:?} variant",
            expect_variant(kernel)
        ));
    }
    // Every tracepoint program attaches on every lab kernel (the patched
    // kernel's config must have FTRACE_SYSCALLS for the syscalls ones).
    for t in r["plan"]["tracepoints"].as_array().into_iter().flatten() {
        if t["method"] == "none" {
            bad.push(format!(
                "tracepoint {} not attached: {}",
                t["tracepoint"], t["reason"]
            ));
        }
    }
    let roles = r["plan"]["roles"].as_array().cloned().unwrap_or_default();
    for (role, kernels, method) in EXPECT {
        if !kernels.contains(&kernel) {
            continue;
        }
        let Some(rp) = roles.iter().find(|x| x["role"] == *role) else {
            bad.push(format!("{role}: missing from the report"));
            continue;
        };
        let attached: Vec<&Value> = rp["choices"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["error"].is_null() && c["method"] != "none")
                    .collect()
            })
            .unwrap_or_default();
        if attached.is_empty() {
            bad.push(format!("{role}: not attached: {}", rp["choices"]));
        } else if !attached.iter().any(|c| c["method"] == *method) {
            bad.push(format!(
                "{role}: attached, but not by {method}: {}",
                rp["choices"]
            ));
        }
        for c in rp["choices"].as_array().into_iter().flatten() {
            if !c["error"].is_null() {
                bad.push(format!("{role}: {} failed: {}", c["symbol"], c["error"]));
            }
        }
    }
    bad
}

/// One scenario of the lab: what the guest does, and what kvscope must show.
struct Scenario {
    /// Kernels of the matrix it runs on.
    kernels: &'static [&'static str],
    /// kvscope_testdev's mode (None: the edu device bound to vfio-pci).
    testdev: Option<&'static str>,
    /// kvscope-lab-driver's arguments.
    driver: &'static str,
    /// The VM's users_count after every change, read from the kernel.
    counts: &'static [i64],
    /// The device's open_count after every change.
    open_counts: &'static [i64],
    /// Findings (kind, locks named), exactly, in order.
    findings: &'static [(&'static str, &'static [&'static str])],
    /// Holders the VM's timeline must name, as "+1 HOLDER" / "-1 HOLDER".
    attributed: &'static [&'static str],
    /// Frames the VM's timeline (with stacks) must show.
    frames: &'static [&'static str],
    /// Why the kernel's design implies this.
    why: &'static str,
    /// Exact expectations; false for a race whose interleaving varies: then
    /// the counts must end at 0 with one destroy, every open_count must be 0
    /// or 1 ending at 0, and `findings` lists the kinds allowed.
    exact: bool,
}

const GROUP_LOCK: &str = "vfio_group.group_lock";
const DEV_SET_LOCK: &str = "vfio_device_set.lock";
const KVM_LOCK: &str = "kvm.lock";
const NO_VFIO_REF: &[&str] = &["6.1", "patched"];
const ALL: &[&str] = &["6.1", "6.12", "sid", "patched"];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.6+: VFIO holds a reference from open to last close; the kvm-vfio get is inlined (an inferred +1)",
        exact: true,
    },
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[GROUP_LOCK, DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "VM and kvm-vfio fds closed first: VFIO's put is the last, under group_lock and dev_set->lock (S3)",
        exact: true,
    },
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "exit",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "exit's deferred fputs run LIFO: the device goes first, the VM fd drops the last reference under no VFIO lock",
        exact: true,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1 (and the patch with a driver that sets no kvm_ops): VFIO holds no kvm reference",
        exact: true,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "vm-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: the VM dies with its last KVM fd, the VFIO device still open",
        exact: true,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "exit",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: no VFIO reference, no VFIO lock around the last put",
        exact: true,
    },
    // S2 with a real driver: open_device takes kvm->lock under the VFIO locks.
    Scenario {
        kernels: &["6.1"],
        testdev: Some("kvmlock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("lock-order-inversion", &[KVM_LOCK, GROUP_LOCK])],
        attributed: &[],
        frames: &[],
        why: "6.1: open_device takes kvm->lock under group_lock; kvm_vfio_release takes group_lock under kvm->lock (S2)",
        exact: true,
    },
    Scenario {
        kernels: &["6.12"],
        testdev: Some("kvmlock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.3+ (2b48f52f2bff): kvm_vfio_release reaches only the kvm_ref_lock spinlock: no reverse edge",
        exact: true,
    },
    // The 6.1 S1 shape: the driver's own reference is the last, dropped in close_device.
    Scenario {
        kernels: &["6.1"],
        testdev: Some("ownref"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK, GROUP_LOCK])],
        attributed: &[],
        frames: &["testdev_close_device"],
        why: "6.1: close_device runs under dev_set->lock and group_lock; the driver's put there is the last",
        exact: true,
    },
    Scenario {
        kernels: &["6.12"],
        testdev: Some("ownref"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 4, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[GROUP_LOCK, DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "6.12: the driver's put comes first; VFIO's own reference is still the last, dropped after close_device (S3)",
        exact: true,
    },
    // The patched stack: a driver that uses kvm_ops.
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK])],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        // The driver's put_kvm tail-calls kvm_put_kvm: the release is its frame.
        frames: &["testdev_get_kvm", "vfio_device_fops_release"],
        why: "the patch: put_kvm() runs after group_lock is dropped but under dev_set->lock",
        exact: true,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        // The driver's put_kvm tail-calls kvm_put_kvm: the release is its frame.
        frames: &["testdev_get_kvm", "vfio_device_fops_release"],
        why: "device first: the driver's put is not the last",
        exact: true,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev --no-kvm dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("unbalanced-put", &[])],
        attributed: &[],
        frames: &[],
        why: "the patch's defect: put_kvm() at the last close although get_kvm() was never called",
        exact: true,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops-fail"),
        driver: "--testdev --expect-open-error dev-first",
        counts: &[1, 2, 1, 0],
        // The device is seen at the attempt; its open_count never rises.
        open_counts: &[],
        findings: &[("unbalanced-put", &[])],
        attributed: &[],
        frames: &[],
        why: "the patch's open error path calls put_kvm() although the driver's get_kvm() failed",
        exact: true,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops-lock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("lock-order-inversion", &[KVM_LOCK, GROUP_LOCK])],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        frames: &[],
        why: "the patch keeps 6.1's kvm_vfio_release under kvm->lock -> group_lock; open_device takes kvm->lock under group_lock (S2)",
        exact: true,
    },
    // Opens racing the last puts: invariants, whatever the interleaving.
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "race 40",
        counts: &[0],
        open_counts: &[0],
        findings: &[("destroy-under-lock", &[]), ("get-safe-failed", &[])],
        attributed: &[],
        frames: &[],
        why: "6.6+: an open between the unlink and the last put gets no kvm; if a device close comes last, VFIO's put is (S3)",
        exact: false,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "race 40",
        counts: &[0],
        open_counts: &[0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: vfio-pci's opens take no kvm reference: the VM ends with its KVM fds, cleanly",
        exact: false,
    },
];

/// The guest's script: `check --json`, then each scenario recorded and replayed.
fn guest_script(kernel: &str) -> String {
    let mut s = String::from("kvscope check --json | tr -d '\\n'; echo\n");
    for (i, sc) in SCENARIOS.iter().enumerate() {
        if !sc.kernels.contains(&kernel) {
            continue;
        }
        if let Some(m) = sc.testdev {
            s += &format!(
                "rmmod kvscope_testdev 2>/dev/null; insmod /lib/modules/kvscope_testdev.ko mode={m} || echo 'insmod kvscope_testdev mode={m} failed'\n"
            );
        }
        s += &format!(
            r#"kvscope record -o /tmp/s{i}.kvs 2>/tmp/s{i}.err & P=$!
i=0; until grep -q "kvscope: ready:" /tmp/s{i}.err || [ $i -ge 120 ]; do sleep 0.5; i=$((i+1)); done
kvscope-lab-driver {d} > /tmp/s{i}.driver || {{ echo "driver {d} failed"; cat /tmp/s{i}.driver /tmp/s{i}.err; }}
sleep 1; kill -INT $P; wait $P
echo "REPORT s{i}"; kvscope replay --json /tmp/s{i}.kvs | tr -d '\n'; echo
A=$(kvscope replay --json /tmp/s{i}.kvs | grep -o '"addr": *"0x[0-9a-f]*"' | head -1 | grep -o '0x[0-9a-f]*')
echo "TIMELINE s{i}"; kvscope timeline --stacks --vm $A /tmp/s{i}.kvs; echo "END s{i}"
"#,
            d = sc.driver
        );
    }
    s += "dmesg | grep kvscope_testdev || true\n";
    s
}
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect()
}

fn check_scenario(name: &str, sc: &Scenario, r: &Value, timeline: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if !r["damage"].is_null() {
        bad.push(format!("{name}: damaged recording: {}", r["damage"]));
    }
    // A clean capture shows no anomaly (locks taken before kvscope watched
    // them are a note, not an anomaly).
    let a = &r["anomalies"];
    for k in ["out_of_order", "unseen_creation", "unmatched_release"] {
        if sc.exact && a[k] != 0 {
            bad.push(format!("{name}: anomaly {k} = {} ({a})", a[k]));
        }
    }
    let lost: u64 = r["lost"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if lost > 0 {
        bad.push(format!("{name}: {lost} events lost"));
    }
    let vms = r["vms"].as_array().cloned().unwrap_or_default();
    if vms.len() != 1 {
        bad.push(format!("{name}: {} VMs, expected 1", vms.len()));
    }
    for vm in &vms {
        let got = ints(&vm["counts"]);
        if !sc.exact {
            if got.last() != Some(&0) {
                bad.push(format!("{name}: users_count {got:?} does not end at 0"));
            }
        } else if got != sc.counts {
            bad.push(format!(
                "{name}: users_count {got:?}, expected {:?}",
                sc.counts
            ));
        }
        if vm["destroys"] != 1 {
            bad.push(format!(
                "{name}: kvm_destroy_vm seen {} times, expected once",
                vm["destroys"]
            ));
        }
        let changes = strings(&vm["changes"]);
        for a in sc.attributed {
            let (sign, holder) = a.split_once(' ').unwrap_or((a, ""));
            if !changes
                .iter()
                .any(|c| c.starts_with(sign) && c.contains(holder))
            {
                bad.push(format!(
                    "{name}: no step {a} in the VM's timeline: {changes:?}"
                ));
            }
        }
    }
    let devs = r["device_list"].as_array().cloned().unwrap_or_default();
    let opens: Vec<Vec<i64>> = devs.iter().map(|d| ints(&d["open_counts"])).collect();
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
    } else if opens != [sc.open_counts.to_vec()] {
        bad.push(format!(
            "{name}: device open_count {opens:?}, expected [{:?}]",
            sc.open_counts
        ));
    }
    let got: Vec<(String, Vec<String>)> = r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_owned(),
                strings(&f["locks"]),
            )
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = sc
        .findings
        .iter()
        .map(|(k, l)| (k.to_string(), l.iter().map(|x| x.to_string()).collect()))
        .collect();
    if !sc.exact {
        let allowed: Vec<&str> = sc.findings.iter().map(|(k, _)| *k).collect();
        for (k, locks) in &got {
            if !allowed.contains(&k.as_str()) {
                bad.push(format!(
                    "{name}: finding {k} {locks:?}; only {allowed:?} may occur"
                ));
            }
        }
    } else if got != want {
        bad.push(format!("{name}: findings {got:?}, expected {want:?}"));
    }
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
    let counts = vms.first().map(|v| ints(&v["counts"])).unwrap_or_default();
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

/// Where passing runs leave their date, per matrix kernel.
fn passes_file() -> std::path::PathBuf {
    crate::setup::cache_dir().join("lab").join("passed.tsv")
}

fn passes() -> Vec<(String, String, String)> {
    std::fs::read_to_string(passes_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next()?.to_owned(),
            ))
        })
        .collect()
}

fn record_pass(kernel: &str, release: &str) -> anyhow::Result<()> {
    let date = crate::setup::output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let mut all: Vec<_> = passes().into_iter().filter(|p| p.0 != kernel).collect();
    all.push((
        kernel.to_owned(),
        release.to_owned(),
        date.trim().to_owned(),
    ));
    let text: String = all
        .iter()
        .map(|(k, r, d)| format!("{k}\t{r}\t{d}\n"))
        .collect();
    std::fs::write(passes_file(), text)?;
    Ok(())
}

/// Rewrites the last cell ("last passed") of each README support-matrix row
/// whose first cell is a matrix kernel's name, from the recorded passes.
pub fn update_readme() -> anyhow::Result<()> {
    let path = cmd::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let passes = passes();
    let mut changed = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            for (k, r, d) in &passes {
                if l.starts_with(&format!("| {k} |")) {
                    let cells: Vec<&str> = l.trim_end_matches('|').split('|').collect();
                    if cells.len() > 2 {
                        changed += 1;
                        let keep = cells[..cells.len() - 1].join("|");
                        return format!("{keep}| {d} ({r}) |");
                    }
                }
            }
            l.to_owned()
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n")?;
    eprintln!(
        "lab: README support matrix: {changed} rows dated from {}",
        passes_file().display()
    );
    Ok(())
}

/// Lines after `marker` up to `end` (exclusive).
fn section<'a>(out: &'a [String], marker: &str, end: &str) -> Vec<&'a str> {
    out.iter()
        .skip_while(|l| l.as_str() != marker)
        .skip(1)
        .take_while(|l| l.as_str() != end)
        .map(String::as_str)
        .collect()
}

pub fn run(kernels: &[String], custom: Option<&str>) -> anyhow::Result<()> {
    lab::ensure_host_tools()?;
    let selected: Vec<&lab::Kernel> = if kernels.is_empty() {
        lab::KERNELS.iter().collect()
    } else {
        kernels
            .iter()
            .map(|n| {
                lab::KERNELS.iter().find(|k| k.name == n).ok_or_else(|| {
                    let names: Vec<&str> = lab::KERNELS.iter().map(|k| k.name).collect();
                    anyhow::anyhow!(
                        "unknown lab kernel {n:?}; the matrix has {}",
                        names.join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut failed = Vec::new();
    for k in selected {
        let un = lab::kernel(k)?;
        // The test module, where a scenario of this kernel uses it.
        let needs_testdev = SCENARIOS
            .iter()
            .any(|sc| sc.testdev.is_some() && sc.kernels.contains(&k.name));
        let suite = match k.source {
            lab::Source::Debian { suite, .. } => suite,
            lab::Source::Patched => None,
        };
        let extra = if needs_testdev {
            vec![kbuild::testdev(&un, suite)?]
        } else {
            vec![]
        };
        let initrd = crate::setup::cache_dir()
            .join("lab")
            .join(format!("initrd-{}.gz", un.release));
        let script = guest_script(k.name);
        let cmdline = custom.unwrap_or(&script);
        lab::initramfs(
            &un,
            &[cmd::kvscope_bin(), cmd::lab_driver_bin()],
            &extra,
            cmdline,
            &initrd,
        )?;
        eprintln!("lab: booting {} ({})", k.name, un.release);
        let boot = lab::boot(&un, &initrd, Duration::from_secs(240))?;
        eprintln!(
            "lab: {} ran in {:.1} s, rc {:?}",
            k.name, boot.secs, boot.rc
        );
        // The guest's whole console, kept for reading the evidence later.
        let log = crate::setup::cache_dir()
            .join("lab")
            .join(format!("last-{}.console", k.name));
        std::fs::write(&log, &boot.console)?;
        eprintln!("lab: guest console in {}", log.display());
        if custom.is_some() {
            for l in &boot.output {
                println!("{l}");
            }
            continue;
        }
        let mut verdict = match boot
            .output
            .first()
            .map(|l| serde_json::from_str::<Value>(l))
        {
            Some(Ok(r)) => check_report(k.name, &r),
            Some(Err(e)) => vec![format!("kvscope check --json output did not parse: {e}")],
            None => vec!["no output from the guest".to_owned()],
        };
        for (i, sc) in SCENARIOS.iter().enumerate() {
            if !sc.kernels.contains(&k.name) {
                continue;
            }
            let name = format!(
                "{} {}",
                sc.testdev
                    .map_or("edu".to_owned(), |m| format!("testdev mode={m}")),
                sc.driver.trim_start_matches("--testdev ")
            );
            eprintln!("lab:   {name}: {}", sc.why);
            let report = section(&boot.output, &format!("REPORT s{i}"), "");
            let timeline = section(
                &boot.output,
                &format!("TIMELINE s{i}"),
                &format!("END s{i}"),
            );
            match report.first().map(|l| serde_json::from_str::<Value>(l)) {
                Some(Ok(r)) => verdict.extend(check_scenario(&name, sc, &r, &timeline.join("\n"))),
                _ => verdict.push(format!("{name}: no replay report from the guest")),
            }
        }
        if verdict.is_empty() && boot.rc == Some(0) {
            eprintln!("lab: {}: PASS", k.name);
            record_pass(k.name, &un.release)?;
        } else {
            eprintln!(
                "lab: {}: FAIL\n  {}\n--- guest console ---\n{}",
                k.name,
                verdict.join("\n  "),
                boot.console
            );
            failed.push(k.name);
        }
    }
    if !failed.is_empty() {
        bail!("lab failed on {}", failed.join(", "));
    }
    Ok(())
}
