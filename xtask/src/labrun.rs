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
        let cmdline = custom.unwrap_or("kvscope check --json");
        lab::initramfs(&un, &[cmd::kvscope_bin()], cmdline, &initrd)?;
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
        let json = boot.output.join("\n");
        let verdict = match serde_json::from_str::<Value>(&json) {
            Ok(r) => check_report(k.name, &r),
            Err(e) => vec![format!("kvscope check --json output did not parse: {e}")],
        };
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
