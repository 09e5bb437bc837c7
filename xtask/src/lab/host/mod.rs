//! The host lab (`cargo xtask lab --host`): a lab kernel booted with a real
//! Debian userspace (image.rs): systemd as PID 1, libvirt and QEMU, kvscope
//! installed from the package `cargo xtask deb` builds and run as the
//! service. The guest script (guest.sh) drives the service and libvirt
//! domains with the edu devices assigned, and prints one `CHECK` line per
//! assertion; here every expected check must be present and pass.
mod image;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;

use super::{debian, kernels, qemu};
use crate::setup::Env;

/// The host rows: Debian 12's backports kernel and Debian 13's own.
pub const KERNELS: &[&str] = &["6.12", "trixie"];

const GUEST: &str = include_str!("guest.sh");

/// libvirt scenarios (guest.sh's `scenario_*`) with the checkpoints at which
/// kvscope's live counts are compared with the kernel's.
const SCENARIOS: &[(&str, &[&str])] = &[
    ("destroy", &["running"]),
    ("sigkill", &["running"]),
    ("hotplug", &["before", "attached", "detached"]),
    ("two", &["both", "one"]),
    ("restart", &["restarted"]),
];

/// Every check the guest must report, in its order.
fn expected() -> Vec<String> {
    let mut v: Vec<String> = [
        "install",
        "install/not-started",
        "service/ready",
        "service/delivery",
        "service/reload",
        "module/bound",
        "module/reattached",
        "module/delivery",
    ]
    .map(String::from)
    .to_vec();
    for mode in ["lean", "deep"] {
        if mode == "deep" {
            v.push("deep/switched".into());
        }
        for (s, points) in SCENARIOS {
            for p in points.iter() {
                v.push(format!("{s}/{mode}/{p}/counts"));
            }
            match *s {
                "hotplug" => {
                    v.push(format!("{s}/{mode}/attach"));
                    v.push(format!("{s}/{mode}/detach"));
                }
                "restart" => v.push(format!("{s}/{mode}/survives")),
                "two" => v.push(format!("{s}/{mode}/domains")),
                "sigkill" => v.push(format!("{s}/{mode}/holders")),
                _ => {}
            }
            v.push(format!("{s}/{mode}/counts"));
            v.push(format!("{s}/{mode}/findings"));
        }
    }
    v.extend(
        [
            "top/row",
            "reload/reattached",
            "reload/after/counts",
            "reload/done/counts",
            "reload/record",
            "names/record",
            "service/idle-rss",
            "service/memory",
            "zombie/finding",
            "journal/fields",
            "service/watchdog",
            "service/stop",
            "upgrade/restarted",
            "upgrade/config-kept",
            "purge",
        ]
        .map(String::from),
    );
    v
}

/// The guest's CHECK lines against [`expected`]: what failed or never came.
fn verdict(output: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    let seen: Vec<(&str, bool, &str)> = output
        .iter()
        .filter_map(|l| l.strip_prefix("CHECK "))
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let name = f.next()?;
            let pass = f.next()? == "PASS";
            Some((name, pass, f.next().unwrap_or("")))
        })
        .collect();
    for (name, pass, detail) in &seen {
        if !pass {
            bad.push(format!("{name}: {detail}"));
        }
    }
    for e in expected() {
        if !seen.iter().any(|(n, _, _)| *n == e) {
            bad.push(format!("{e}: never reported (the run stopped before it)"));
        }
    }
    bad
}

/// The row's name in the README's support matrix and the pass records.
fn matrix_name(kernel: &str) -> String {
    format!("host-{kernel}")
}

/// What every row's guest gets: the package, its `+lab.newer` copy and the
/// run's script, made once per run.
struct Payload {
    deb: PathBuf,
    newer: PathBuf,
    script: PathBuf,
}

impl Payload {
    fn make(env: &Env) -> anyhow::Result<Payload> {
        let deb = crate::deb::build(env)?;
        let dir = debian::lab_dir().join("host");
        let newer = dir.join("kvscope-newer.deb");
        image::newer_package(&deb, &newer)?;
        let script = dir.join("run.sh");
        std::fs::write(&script, GUEST)?;
        // Executable here: the copy into the initramfs keeps the mode.
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(Payload { deb, newer, script })
    }
}

fn row(name: &str, img: &Path, payload: &Payload) -> anyhow::Result<Vec<String>> {
    let k = kernels::KERNELS
        .iter()
        .find(|k| k.name == name)
        .expect("host rows name matrix kernels");
    let un = kernels::unpacked(k)?;
    let initrd = debian::lab_dir()
        .join("host")
        .join(format!("initrd-{}.gz", un.release));
    image::initramfs(
        &un,
        &[
            ("kvscope.deb", &payload.deb),
            ("kvscope-newer.deb", &payload.newer),
            ("run.sh", &payload.script),
        ],
        &initrd,
    )?;
    eprintln!("lab: host {name}: booting {} with systemd", un.release);
    // Named: the rows run beside the stress test, their lines among its.
    let prefix = format!("  host-{name}| ");
    let machine = qemu::Machine {
        mem_mb: 3072,
        edu: 2,
        disk: Some(img),
        append: "systemd.show_status=false",
        live: Some(&prefix),
        silence: None,
    };
    let boot = qemu::boot_on(&un, &initrd, &machine, Duration::from_secs(1200))?;
    let log = debian::lab_dir().join(format!("last-host-{name}.console"));
    std::fs::write(&log, &boot.console)?;
    eprintln!(
        "lab: host {name}: ran in {:.0} s, rc {:?}; console in {}",
        boot.secs,
        boot.rc,
        log.display()
    );
    let mut bad = verdict(&boot.output);
    if boot.rc != Some(0) {
        bad.push(format!(
            "the guest's run ended with rc {:?}: {}",
            boot.rc,
            boot.why_no_rc()
        ));
    }
    if bad.is_empty() {
        super::readme::record_pass(&matrix_name(name), &un.release)?;
    }
    Ok(bad)
}

/// Every host row (or those named); fails listing each failed check.
pub fn run(env: &Env, names: &[String]) -> anyhow::Result<()> {
    if let Some(n) = names.iter().find(|n| !KERNELS.contains(&n.as_str())) {
        bail!(
            "no host-lab row for kernel {n:?}: the rows are {} (cargo xtask lab --host --kernel NAME)",
            KERNELS.join(", ")
        );
    }
    debian::ensure_host_tools()?;
    let img = image::image()?;
    let payload = Payload::make(env)?;
    let mut failed = Vec::new();
    for name in KERNELS {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let bad = row(name, &img, &payload)?;
        if bad.is_empty() {
            eprintln!("lab: host {name}: PASS");
        } else {
            eprintln!("lab: host {name}: FAIL");
            for b in &bad {
                eprintln!("  {b}");
            }
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        bail!("host lab failed on {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_failed_check_fails_the_row() {
        let all: Vec<String> = expected()
            .iter()
            .map(|e| format!("CHECK {e} PASS fine"))
            .collect();
        assert!(verdict(&all).is_empty());
        let mut some = all.clone();
        some.remove(3);
        some[0] = "CHECK install FAIL dpkg said no".into();
        let bad = verdict(&some);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("install: dpkg said no"));
        assert!(bad[1].contains("never reported"));
    }
}
