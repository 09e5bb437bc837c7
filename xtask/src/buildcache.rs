//! A fresh clone's build directories seeded from the cache: what CI caches of
//! `target/` elsewhere. Most of a fresh clone's compile time is the
//! dependencies (registry crates, build scripts such as ring's C); their
//! artifacts do not depend on where the clone lies (cargo moves a build
//! script's OUT_DIR paths with the target directory), so a copy of an earlier
//! build's profile directory lets cargo rebuild only the workspace's crates.
//! One seed per profile directory, keyed by Cargo.lock and both toolchains:
//! a new lockfile or compiler replaces it. Cargo still decides what is fresh.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Context as _;

use crate::{cmd, setup};

/// The build directories seeded, under `target/`: each a cargo profile
/// directory (deps/, build/, .fingerprint/). Each is kept only once the tier
/// that builds it whole has passed (a half-built seed would stay).
/// Built by the lint tier: `cargo clippy` (and xtask itself), the kernel
/// side's clippy (host build scripts and the BPF target), and the BPF
/// object's build (trace-daemon/build.rs, shared by the profiles).
pub const LINT_DIRS: &[&str] = &[
    "debug",
    "bpf-clippy/release",
    "bpf-clippy/bpfel-unknown-none/release",
    "kvscope-bpf/aya-build/target/trace-ebpf/release",
    "kvscope-bpf/aya-build/target/trace-ebpf/bpfel-unknown-none/release",
];

/// Built by the cargo tier: `cargo test --release`, which the package and
/// the lab's binaries reuse.
pub const CARGO_DIRS: &[&str] = &["release"];

/// Crates of the workspace that only a full build makes: xtask itself
/// (built before it can seed) needs lab-driver and trace-common, not these.
const WORKSPACE: &[&str] = &["trace-daemon-", "trace-ebpf-"];

fn seeds() -> PathBuf {
    setup::cache_dir().join("target-seed")
}

/// What the artifacts depend on: the lockfile and both compilers.
fn key() -> anyhow::Result<String> {
    let lock = std::fs::read(cmd::workspace_root().join("Cargo.lock"))?;
    let stable = setup::output(Command::new("rustc").arg("-vV"))?;
    let nightly = setup::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    crate::lab::kbuild::key(&[&lock, stable.as_bytes(), nightly.as_bytes()])
}

fn seed_dir(dir: &str, key: &str) -> PathBuf {
    seeds().join(format!("{}-{key}", dir.replace('/', "_")))
}

/// What a seed holds of a profile directory.
const SEEDED: [&str; 3] = ["deps", "build", ".fingerprint"];

fn cp(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    setup::output(Command::new("cp").arg("-a").arg(from).arg(to)).map(drop)
}

/// Copies what `seed` has and `target` lacks, entry by entry under
/// [`SEEDED`] (a top-level file is a workspace binary: not
/// needed, and xtask's own may be running).
fn fill(seed: &std::path::Path, target: &std::path::Path) -> anyhow::Result<usize> {
    let mut copied = 0;
    for sub in SEEDED {
        if !seed.join(sub).is_dir() {
            continue;
        }
        let (from, to) = (seed.join(sub), target.join(sub));
        std::fs::create_dir_all(&to)?;
        let missing: Vec<PathBuf> = std::fs::read_dir(&from)?
            .flatten()
            .filter(|e| !to.join(e.file_name()).exists())
            .map(|e| e.path())
            .collect();
        for chunk in missing.chunks(500) {
            let mut c = Command::new("cp");
            c.arg("-a").arg("-t").arg(&to).args(chunk);
            setup::output(&mut c)?;
        }
        copied += missing.len();
    }
    Ok(copied)
}

/// Marks a build directory that started clean in this clone (absent, or
/// holding only what building xtask made): only such a directory becomes a
/// seed, never a developer's tree with months of leftovers.
const CLEAN: &str = ".kvscope-clean";

fn target_of(dir: &str) -> PathBuf {
    cmd::workspace_root().join("target").join(dir)
}

/// Whether `dir` holds nothing of the workspace's main crates yet.
fn started_clean(dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir.join(".fingerprint")) else {
        return true;
    };
    !entries.flatten().any(|e| {
        let name = e.file_name();
        WORKSPACE
            .iter()
            .any(|w| name.to_string_lossy().starts_with(w))
    })
}

/// Fills each build directory from its seed, where the directory started
/// clean (already built artifacts are never overwritten).
pub fn restore() -> anyhow::Result<()> {
    let key = key()?;
    for dir in LINT_DIRS.iter().chain(CARGO_DIRS) {
        restore_dir(dir, &key)?;
    }
    Ok(())
}

fn restore_dir(dir: &str, key: &str) -> anyhow::Result<()> {
    let target = target_of(dir);
    if target.join(CLEAN).exists() || !started_clean(&target) {
        return Ok(());
    }
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join(CLEAN), "")?;
    let seed = seed_dir(dir, key);
    if !seed.is_dir() {
        return Ok(());
    }
    let t = Instant::now();
    let n = fill(&seed, &target).context("seeding the build directory")?;
    eprintln!(
        "build cache: target/{dir} seeded with {n} artifacts from {} in {:.1} s",
        seed.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Keeps each of `dirs` that started clean as the seed for this key, when
/// there is none yet; seeds of other keys are removed (one per directory).
pub fn save(dirs: &[&str]) -> anyhow::Result<()> {
    let key = key()?;
    for dir in dirs {
        save_dir(dir, &key)?;
    }
    Ok(())
}

fn save_dir(dir: &str, key: &str) -> anyhow::Result<()> {
    let seed = seed_dir(dir, key);
    let target = target_of(dir);
    if seed.is_dir() || !target.join(CLEAN).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(seeds())?;
    let prefix = format!("{}-", dir.replace('/', "_"));
    for old in std::fs::read_dir(seeds())?.flatten() {
        if old.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_dir_all(old.path())?;
        }
    }
    let tmp = seeds().join(format!(".{}-{key}.tmp", dir.replace('/', "_")));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // Incremental state and the top-level binaries are the workspace's own
    // crates only: not kept.
    for sub in SEEDED {
        if target.join(sub).is_dir() {
            cp(&target.join(sub), &tmp.join(sub))?;
        }
    }
    std::fs::rename(&tmp, &seed)?;
    eprintln!("build cache: target/{dir} kept as {}", seed.display());
    Ok(())
}
