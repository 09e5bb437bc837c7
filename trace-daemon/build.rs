//! Builds the kernel-side crate for the BPF target (aya-build, nightly
//! `-Z build-std=core`) and leaves the object in OUT_DIR, where `src/probes.rs`
//! embeds it. `cargo xtask setup` provides the toolchain pieces this needs.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
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
