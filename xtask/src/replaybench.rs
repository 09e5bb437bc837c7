//! `cargo xtask bench --live`: the live-path flood (`kvscope-flood`).
//! `cargo xtask bench [--against REV]`: the replay benchmark (decode + engine on
//! one core, `kvscope-bench`), optionally side by side with the same benchmark
//! built from another revision, the two binaries run alternately so that the
//! machine's drift hits both alike.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, setup::Env};

/// The replay benchmark's binary.
const BIN: &str = "kvscope-bench";

/// Alternations of (baseline, current) when comparing.
const ROUNDS: usize = 3;

/// Builds `bin` (release) at HEAD's working tree, or at `rev` in a worktree
/// under target/bench-baseline/; returns the binary.
pub fn build(env: &Env, rev: Option<&str>, bin: &str) -> anyhow::Result<PathBuf> {
    let root = cmd::workspace_root();
    let dir = match rev {
        None => root.clone(),
        Some(rev) => {
            let dir = root
                .join("target/bench-baseline")
                .join(rev.replace('/', "_"));
            if !dir.join("Cargo.toml").exists() {
                let mut c = Command::new("git");
                c.current_dir(&root)
                    .args(["worktree", "add", "--detach", "-f"])
                    .arg(&dir)
                    .arg(rev);
                cmd::check(c).with_context(|| format!("checking out {rev} for the baseline"))?;
            }
            dir
        }
    };
    let mut c = cmd::command(env, "cargo");
    c.current_dir(&dir)
        .args(["build", "--release", "-q", "--bin", bin]);
    cmd::check(c)?;
    Ok(dir.join("target/release").join(bin))
}

/// One run of a bench binary: its output, and the median rate per size.
/// Compared with another revision's, the clock also covers the generator, as
/// it did in benchmarks before 2026-12-02 (older binaries ignore the variable).
fn run_once(bin: &PathBuf, events: u64) -> anyhow::Result<(String, Vec<f64>)> {
    let out = Command::new(bin)
        .arg(events.to_string())
        .env("KVSCOPE_BENCH_TIME_GENERATION", "1")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rates = text
        .lines()
        .filter_map(|l| l.split("median").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    Ok((text, rates))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(env: &Env, events: u64, against: Option<&str>) -> anyhow::Result<()> {
    let current = build(env, None, BIN)?;
    let Some(rev) = against else {
        return cmd::check({
            let mut c = Command::new(&current);
            c.arg(events.to_string());
            c
        });
    };
    let baseline = build(env, Some(rev), BIN)?;
    let mut rates: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for (i, bin) in [&baseline, &current].into_iter().enumerate() {
            let (text, r) = run_once(bin, events)?;
            let who = if i == 0 { rev } else { "current" };
            eprintln!("round {}/{ROUNDS}, {who}:\n{text}", round + 1);
            rates[i].push(r);
        }
    }
    println!(
        "replay incl. the stream generator (like for like), median of {ROUNDS} alternated runs \
         (each the median of 3), M events/s:"
    );
    println!(
        "{:>12}  {:>16}  {:>16}  {:>6}",
        "events", rev, "current", "ratio"
    );
    for (k, size) in [events / 2, events].into_iter().enumerate() {
        let col =
            |i: usize| -> Vec<f64> { rates[i].iter().filter_map(|r| r.get(k).copied()).collect() };
        let (b, c) = (col(0), col(1));
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::MAX, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.2}-{hi:.2}")
        };
        let (mb, mc) = (median(b.clone()), median(c.clone()));
        println!(
            "{size:>12}  {:>6.2} ({:>9})  {:>6.2} ({:>9})  {:>5.2}x",
            mb,
            spread(&b),
            mc,
            spread(&c),
            mc / mb
        );
    }
    println!("current, decode + engine alone (the generator off the clock):");
    cmd::check({
        let mut c = Command::new(&current);
        c.arg(events.to_string());
        c
    })
}

pub fn live(env: &Env) -> anyhow::Result<()> {
    let mut c = cmd::command(env, "cargo");
    c.args(["build", "--release", "-q", "--bin", "kvscope-flood"]);
    cmd::check(c)?;
    cmd::check(Command::new(
        cmd::workspace_root().join("target/release/kvscope-flood"),
    ))
}
