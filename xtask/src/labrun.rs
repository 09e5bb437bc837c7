//! `cargo xtask lab`: for each kernel of the matrix, boot it with kvscope in the
//! initramfs and check what it attaches, for real, against that kernel's verifier.
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use crate::{cmd, lab};

/// Roles that must attach on every lab kernel, with the method expected: the
/// KVM and VFIO functions live in modules there, so kprobes (aya 0.14 takes
/// fentry targets from vmlinux BTF only); the mutex API is in vmlinux: fentry.
const EXPECT: &[(&str, &[&str], &str)] = &[
    ("vm-get", &["6.1", "6.12"], "kprobe"),
    ("vm-put", &["6.1", "6.12"], "kprobe"),
    ("vm-destroyed", &["6.1", "6.12"], "kprobe"),
    ("vm-fd-release", &["6.1", "6.12"], "kprobe"),
    ("device-open", &["6.1", "6.12"], "kprobe"),
    ("device-release", &["6.1", "6.12"], "kprobe"),
    ("vfio-kvm-get", &["6.12"], "kprobe"),
    ("vfio-kvm-put", &["6.12"], "kprobe"),
    ("group-vm-link", &["6.1", "6.12"], "kprobe"),
    ("kvm-vfio-teardown", &["6.1", "6.12"], "kprobe"),
    ("lock-acquire", &["6.1", "6.12"], "fentry"),
    ("lock-release", &["6.1", "6.12"], "fentry"),
];

fn check_report(kernel: &str, r: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if r["usable"] != true {
        bad.push(format!("not usable: {}", r["reason"]));
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

/// Each close order of the driver, recorded in the guest and replayed there.
const SCENARIOS: &str = r#"kvscope check --json | tr -d '\n'; echo
for m in dev-first vm-first exit; do
  kvscope record -o /tmp/$m.kvs 2>/tmp/$m.err & P=$!
  i=0; until grep -q "Ctrl-C" /tmp/$m.err || [ $i -ge 120 ]; do sleep 0.5; i=$((i+1)); done
  kvscope-lab-driver $m > /tmp/$m.driver || { echo "driver $m failed"; cat /tmp/$m.driver; }
  sleep 1; kill -INT $P; wait $P
  echo "REPORT $m"; kvscope replay --json /tmp/$m.kvs | tr -d '\n'; echo
done"#;

/// What each close order must show: users_count after every change, and the
/// findings (kind, locks) the kernel's design implies, and nothing else.
fn expect_scenario(kernel: &str, mode: &str) -> (Vec<i64>, Vec<(&'static str, Vec<&'static str>)>) {
    match (kernel, mode) {
        // 6.6+: VFIO holds a reference from open to last close. The kvm-vfio
        // device's get is inlined (an inferred +1).
        ("6.12", "dev-first") => (vec![1, 2, 3, 2, 1, 0], vec![]),
        // VM fd and kvm-vfio fd closed first: VFIO's put is the last, under
        // group_lock and dev_set->lock (S3).
        ("6.12", "vm-first") => (
            vec![1, 2, 3, 2, 1, 0],
            vec![(
                "destroy-under-lock",
                vec!["vfio_group.group_lock", "vfio_device_set.lock"],
            )],
        ),
        // Exit without closing: the exit's deferred fputs run LIFO from
        // task_work, so the device goes first and the VM fd drops the last
        // reference in kvm_vm_release, under no VFIO lock: clean.
        ("6.12", "exit") => (vec![1, 2, 3, 2, 1, 0], vec![]),
        // 6.1: vfio-pci holds no kvm reference: the VM dies with its last KVM fd.
        _ => (vec![1, 2, 1, 0], vec![]),
    }
}

fn check_scenario(kernel: &str, mode: &str, r: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let (counts, findings) = expect_scenario(kernel, mode);
    if !r["damage"].is_null() {
        bad.push(format!("{mode}: damaged recording: {}", r["damage"]));
    }
    let lost: u64 = r["lost"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if lost > 0 {
        bad.push(format!("{mode}: {lost} events lost"));
    }
    let vms = r["vms"].as_array().cloned().unwrap_or_default();
    if vms.len() != 1 {
        bad.push(format!("{mode}: {} VMs, expected 1", vms.len()));
    }
    for vm in &vms {
        let got: Vec<i64> = vm["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_i64)
            .collect();
        if got != counts {
            bad.push(format!("{mode}: users_count {got:?}, expected {counts:?}"));
        }
        if vm["destroys"] != 1 {
            bad.push(format!(
                "{mode}: kvm_destroy_vm seen {} times, expected once",
                vm["destroys"]
            ));
        }
    }
    let got: Vec<(String, Vec<String>)> = r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_owned(),
                f["locks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = findings
        .iter()
        .map(|(k, l)| (k.to_string(), l.iter().map(|x| x.to_string()).collect()))
        .collect();
    if got != want {
        bad.push(format!("{mode}: findings {got:?}, expected {want:?}"));
    }
    eprintln!(
        "lab: {kernel} {mode}: users_count {}, findings {got:?}",
        vms.first().map(|v| v["counts"].clone()).unwrap_or_default()
    );
    bad
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
        let initrd = crate::setup::cache_dir()
            .join("lab")
            .join(format!("initrd-{}.gz", un.release));
        let cmdline = custom.unwrap_or(SCENARIOS);
        lab::initramfs(
            &un,
            &[cmd::kvscope_bin(), cmd::lab_driver_bin()],
            cmdline,
            &initrd,
        )?;
        eprintln!("lab: booting {} ({})", k.name, un.release);
        let boot = lab::boot(&un, &initrd, Duration::from_secs(240))?;
        eprintln!(
            "lab: {} ran in {:.1} s, rc {:?}",
            k.name, boot.secs, boot.rc
        );
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
        for mode in ["dev-first", "vm-first", "exit"] {
            let at = boot
                .output
                .iter()
                .position(|l| l == &format!("REPORT {mode}"));
            match at
                .and_then(|i| boot.output.get(i + 1))
                .map(|l| serde_json::from_str::<Value>(l))
            {
                Some(Ok(r)) => verdict.extend(check_scenario(k.name, mode, &r)),
                _ => verdict.push(format!("{mode}: no replay report from the guest")),
            }
        }
        if verdict.is_empty() && boot.rc == Some(0) {
            eprintln!("lab: {}: PASS", k.name);
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
