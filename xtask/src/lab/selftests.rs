//! KVM selftests for the lab: built (statically, so the initramfs needs no
//! libraries for them) from the kernel source of the row's kernel line, and
//! run in the guest under `kvscope run`. The 6.12 row takes Debian's 6.12
//! source (the cdev kernel's tree), the patched row its own 6.1 tree.
use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use super::kbuild::{self, Build};

/// Tests that create and destroy VMs, vCPUs and stats fds without running
/// much guest code (the guest is itself under TCG), by their path under the
/// selftests directory. Not set_memory_region_test: it needs THP, which the
/// patched kernel's config leaves out.
pub const CURATED: &[&str] = &[
    "kvm_binary_stats_test",
    "kvm_create_max_vcpus",
    "x86_64/set_sregs_test",
];

/// A curated test's name in the guest (/usr/bin/NAME).
pub fn name(test: &str) -> &str {
    test.rsplit('/').next().unwrap_or(test)
}

/// The source tree each row's selftests come from.
pub fn source_of(kernel: &str) -> Option<&'static Build> {
    match kernel {
        "6.12" => Some(&kbuild::CDEV),
        "patched" => Some(&kbuild::PATCHED),
        _ => None,
    }
}

/// The curated tests built from `b`'s tree, cached by the tree's key and the
/// list; built once (seconds: a few C files and the test library).
pub fn built(b: &Build) -> anyhow::Result<Vec<PathBuf>> {
    let un = kbuild::built(b)?;
    let tree = un.tree.context("a built kernel keeps its tree")?;
    let tree_key = std::fs::read_to_string(tree.join(".kvscope-key")).unwrap_or_default();
    let k = kbuild::key(&[tree_key.as_bytes(), CURATED.join(" ").as_bytes()])?;
    let dir = super::debian::lab_dir()
        .join(b.name)
        .join(format!("selftests-{k}"));
    let bins: Vec<PathBuf> = CURATED.iter().map(|t| dir.join("out").join(t)).collect();
    if bins.iter().all(|b| b.exists()) {
        return Ok(bins);
    }
    eprintln!(
        "lab: building KVM selftests {} from the {} tree",
        CURATED.join(", "),
        b.name
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let hdr = dir.join("headers");
    // The UAPI headers of this tree, outside it (headers_install needs rsync).
    make(
        Command::new("make")
            .args(["-s", "headers", "ARCH=x86_64"])
            .arg(format!("O={}", hdr.display()))
            .current_dir(&tree),
        "make headers",
    )?;
    let out = dir.join("out");
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    make(
        Command::new("make")
            .args([
                "-s",
                &format!("-j{jobs}"),
                "-C",
                "tools/testing/selftests/kvm",
            ])
            .arg(format!("OUTPUT={}", out.display()))
            .arg(format!(
                "KHDR_INCLUDES=-isystem {}/usr/include",
                hdr.display()
            ))
            .arg("LDFLAGS=-static")
            .args(&bins)
            .current_dir(&tree),
        "building the KVM selftests",
    )?;
    Ok(bins)
}

fn make(c: &mut Command, what: &str) -> anyhow::Result<()> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        anyhow::bail!(
            "{what} failed ({}):\n{}",
            o.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}
