//! Builds the kernel-side crate for the BPF target (aya-build, nightly
//! `-Z build-std=core`) and leaves the object in OUT_DIR, where
//! `src/attach/loader.rs` embeds it. `cargo xtask setup` provides the toolchain
//! pieces this needs; a plain `cargo build` finds the bpf-linker setup built
//! through the pointer file setup leaves in the cache.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

/// The cache `cargo xtask setup` uses (same rule as xtask/src/setup.rs).
fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("KVSCOPE_CACHE") {
        return PathBuf::from(d);
    }
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("kvscope")
}

/// Puts bpf-linker on PATH when it is not already there.
fn find_bpf_linker() -> anyhow::Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
        return Ok(());
    }
    let pointer = cache_dir().join("bpf-linker.path");
    println!("cargo:rerun-if-changed={}", pointer.display());
    let dir = std::fs::read_to_string(&pointer).map(PathBuf::from);
    match dir {
        Ok(dir) if dir.join("bpf-linker").is_file() => {
            let mut dirs = vec![dir];
            dirs.extend(env::split_paths(&path));
            // SAFETY: the build script is single-threaded here; aya-build's
            // cargo inherits the variable.
            unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
            Ok(())
        }
        _ => bail!(
            "bpf-linker is not on PATH and {} names no built linker: run `cargo xtask setup` (it builds bpf-linker into the cache and writes that file), or put bpf-linker on PATH",
            pointer.display()
        ),
    }
}

fn main() -> anyhow::Result<()> {
    find_bpf_linker()?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "trace-ebpf")
        .ok_or_else(|| anyhow!("trace-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../trace-common/src");
    aya_build::build_ebpf([package], Toolchain::Nightly).context(
        "building the BPF programs failed; run `cargo xtask setup` (rust-src + bpf-linker)",
    )
}
