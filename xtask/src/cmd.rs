//! Running cargo and friends with the toolchain environment from `setup`.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, bail};

use crate::setup::Env;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// A command in the workspace root with bpf-linker on PATH.
pub fn command(env: &Env, program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c.env("PATH", &env.path);
    c
}

pub fn status(mut c: Command) -> anyhow::Result<ExitStatus> {
    c.status().with_context(|| format!("running {c:?}"))
}

pub fn check(c: Command) -> anyhow::Result<()> {
    let shown = format!("{c:?}");
    let st = status(c)?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

pub fn build_release(env: &Env) -> anyhow::Result<()> {
    crate::buildcache::restore()?;
    let mut c = command(env, "cargo");
    // `--bin` filters every selected package: name both binaries.
    c.args([
        "build",
        "--release",
        "-p",
        "trace-daemon",
        "-p",
        "lab-driver",
    ]);
    c.args(["--bin", "kvscope", "--bin", "kvscope-lab-driver"]);
    check(c)
}

/// The guest lab's scenario driver (built with kvscope).
pub fn lab_driver_bin() -> PathBuf {
    workspace_root().join("target/release/kvscope-lab-driver")
}

pub fn kvscope_bin() -> PathBuf {
    workspace_root().join("target/release/kvscope")
}

pub fn run_kvscope(env: &Env, args: &[String]) -> anyhow::Result<()> {
    let mut c = command(env, kvscope_bin().to_str().expect("utf-8 path"));
    c.args(args);
    let st = status(c)?;
    std::process::exit(st.code().unwrap_or(1));
}
