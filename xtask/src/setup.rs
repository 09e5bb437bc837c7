//! Toolchain set-up: nightly's rust-src and a bpf-linker built against the
//! nightly toolchain's own libLLVM (notes/toolchain.md). Idempotent: when both
//! are present this costs two quick process spawns.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What later steps need: a PATH with bpf-linker first, and the cache root.
pub struct Env {
    pub path: OsString,
}

/// File in the cache naming the directory of the bpf-linker setup built;
/// read by trace-daemon/build.rs.
const LINKER_POINTER: &str = "bpf-linker.path";

pub fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("KVSCOPE_CACHE") {
        return PathBuf::from(d);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("kvscope")
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup() -> anyhow::Result<Env> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    ensure_rust_src()?;
    let linker_bin = ensure_bpf_linker(&cache)?;
    // Where a plain `cargo build` (trace-daemon's build.rs) finds the linker.
    std::fs::write(
        cache.join(LINKER_POINTER),
        linker_bin.as_os_str().as_encoded_bytes(),
    )
    .with_context(|| format!("writing {}", cache.join(LINKER_POINTER).display()))?;
    let mut path = OsString::from(linker_bin.as_os_str());
    if let Some(p) = env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    Ok(Env { path })
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "the `nightly` toolchain is needed for the BPF build (rustup toolchain install nightly)",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    let st = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()?;
    if !st.success() {
        bail!("rustup component add rust-src --toolchain nightly failed: {st}");
    }
    Ok(())
}

/// The nightly toolchain's shared libLLVM, whose major version bpf-linker must match.
fn nightly_libllvm() -> anyhow::Result<(PathBuf, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest
                .split(['.', '-'])
                .next()
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("cannot read the LLVM version from {name}"))?;
            return Ok((lib.join(name), major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain ships none, so bpf-linker cannot be built against it",
        lib.display()
    )
}

/// Returns the directory holding `bpf-linker`.
fn ensure_bpf_linker(cache: &Path) -> anyhow::Result<PathBuf> {
    let (libllvm, major) = nightly_libllvm()?;
    let tag = libllvm
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .replace(['/', ' '], "_");
    // Keyed by linker version and the exact libLLVM: a nightly update rebuilds.
    let prefix = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{tag}"));
    let bin = prefix.join("bin");
    let linker = bin.join("bpf-linker");
    if linker.exists()
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}); about a minute on 2 cores",
        libllvm.display()
    );
    let started = Instant::now();
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    // `libLLVM.so` for llvm-sys at build time; the library's own name for the
    // loader at run time (the linker's rpath points here, so it also runs outside
    // rustup's environment).
    for name in [
        OsString::from("libLLVM.so"),
        libllvm.file_name().expect("name").to_owned(),
    ] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let st = Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(&prefix)
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !st.success() {
        bail!("cargo install bpf-linker failed: {st}");
    }
    eprintln!(
        "setup: bpf-linker ready in {:.0} s at {}",
        started.elapsed().as_secs_f64(),
        linker.display()
    );
    Ok(bin)
}

/// cargo-fuzz for the fuzz tier, in the cache (bin dir returned). Idempotent.
pub fn ensure_cargo_fuzz() -> anyhow::Result<PathBuf> {
    ensure_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// cargo-deb, for `cargo xtask deb` and the package tier.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn ensure_cargo_deb() -> anyhow::Result<PathBuf> {
    ensure_cargo_tool("cargo-deb", CARGO_DEB_VERSION)
}

/// A cargo subcommand from crates.io, pinned, installed once into the cache;
/// returns its bin directory.
fn ensure_cargo_tool(name: &str, version: &str) -> anyhow::Result<PathBuf> {
    let prefix = cache_dir().join(format!("{name}-{version}"));
    let bin = prefix.join("bin");
    if bin.join(name).exists() {
        return Ok(bin);
    }
    eprintln!("setup: installing {name} {version} (a minute or two)");
    let st = Command::new("cargo")
        .args(["install", name, "--locked", "--version", version, "--root"])
        .arg(&prefix)
        .status()
        .with_context(|| format!("running cargo install {name}"))?;
    if !st.success() {
        bail!("cargo install {name} failed: {st}");
    }
    Ok(bin)
}

/// Debian packages some test tiers need (prometheus + promtool for the service
/// tests, the kernel build tools for the lab). Installed with apt when a command
/// (or an absolute path) is missing; idempotent.
pub fn ensure_apt(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(cmd, _)| {
            // A path (a header, a library) is checked for existence.
            if cmd.starts_with('/') {
                return !std::path::Path::new(cmd).exists();
            }
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {} from Debian", missing.join(" "));
    let st = Command::new("apt-get").arg("update").arg("-q").status()?;
    if !st.success() {
        bail!("apt-get update failed: {st}");
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !st.success() {
        bail!("apt-get install {} failed: {st}", missing.join(" "));
    }
    Ok(())
}
