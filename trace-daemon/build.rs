//! Builds the kernel-side crate for the BPF target (aya-build, nightly
//! `-Z build-std=core`) and leaves the object in OUT_DIR, where
//! `src/attach/loader.rs` embeds it. `cargo xtask setup` provides the toolchain
//! pieces this needs; a plain `cargo build` finds the bpf-linker setup built
//! through the pointer file setup leaves in the cache.
use std::{collections::BTreeSet, env, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// The hook table itself: the one place that names the programs.
#[path = "src/attach/hooks.rs"]
#[allow(dead_code)]
mod hooks;

/// Sections of the programs the table attaches.
const PROGRAM_SECTIONS: &[&str] = &["fentry", "fexit", "kprobe", "kretprobe", "tracepoint"];

/// Fails the build when the BPF object and the hook table disagree: a program
/// the table would ask for that the object lacks (a renamed `fn`), or one the
/// object has that nothing attaches.
fn check_programs(elf: &[u8]) -> anyhow::Result<()> {
    let obj = object::File::parse(elf).context("the BPF object does not parse")?;
    let in_object: BTreeSet<String> = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
        .filter(|s| {
            s.section_index()
                .and_then(|i| obj.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(|n| PROGRAM_SECTIONS.contains(&n)))
                .unwrap_or(false)
        })
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    let in_table: BTreeSet<String> = hooks::all_program_names().into_iter().collect();
    let missing: Vec<&String> = in_table.difference(&in_object).collect();
    let extra: Vec<&String> = in_object.difference(&in_table).collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!(
            "the BPF object and the hook table (src/attach/hooks.rs) disagree: in the table, not in trace-ebpf: {missing:?}; in trace-ebpf, not in the table: {extra:?}"
        );
    }
    Ok(())
}

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
    println!("cargo:rerun-if-changed=src/attach/hooks.rs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    // aya-build's inner build is the same for every outer profile (always
    // --release for the BPF target) but lives under OUT_DIR, which differs per
    // profile and per clippy/build: one shared dir beside the profiles
    // (target/kvscope-bpf) builds it once for all of them.
    let shared = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("kvscope-bpf"))
        .unwrap_or_else(|| out_dir.clone());
    std::fs::create_dir_all(&shared)?;
    // SAFETY: single-threaded build script; aya-build reads it right away.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf([package], Toolchain::Nightly);
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built.context(
        "building the BPF programs failed; run `cargo xtask setup` (rust-src + bpf-linker)",
    )?;
    let out = out_dir.join("kvscope-probes");
    std::fs::copy(shared.join("kvscope-probes"), &out)
        .with_context(|| format!("copying the BPF object to {}", out.display()))?;
    check_programs(&std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?)
}
