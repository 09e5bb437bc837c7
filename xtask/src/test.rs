//! The test tiers. The default runs every tier this machine kind can run; a tier
//! that cannot run says why and fails, unless `--allow-skip` is given.
use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::{cmd, setup::Env};

#[derive(Args)]
pub struct TestArgs {
    /// Tiers to run (default: all of them).
    #[arg(long = "tier", value_enum)]
    tiers: Vec<Tier>,
    /// Let live tests skip (with their printed reason) when this host lacks root
    /// or /dev/kvm, instead of failing. CI never sets this.
    #[arg(long)]
    allow_skip: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Tier {
    /// rustfmt --check and clippy -D warnings, user side and kernel side.
    Lint,
    /// Unit, scenario, ELF and live tests (`cargo test`).
    Cargo,
    /// The Debian package: built, lintian-clean, its maintainer scripts
    /// checked, unpacked into a clean root and checked there (installed,
    /// upgraded and purged under systemd in the lab tier's host rows).
    Package,
    /// cargo-fuzz on the recording reader, time-boxed.
    Fuzz,
    /// The guest lab: every kernel of the matrix booted under QEMU, kvscope
    /// attached there for real (about 30 s per kernel once cached), then the
    /// stop/delivery stress test in a 6.12 guest with the host lab's rows
    /// (systemd, libvirt, the package) running beside it as this host's load.
    Lab,
}

const ALL: &[Tier] = &[
    Tier::Lint,
    Tier::Cargo,
    Tier::Package,
    Tier::Fuzz,
    Tier::Lab,
];

/// Seconds of fuzzing per run of the fuzz tier.
const FUZZ_SECONDS: u32 = 30;

pub fn run(env: &Env, args: &TestArgs) -> anyhow::Result<()> {
    let tiers: &[Tier] = if args.tiers.is_empty() {
        ALL
    } else {
        &args.tiers
    };
    let started = Instant::now();
    // A fresh clone (CI) builds only the workspace's crates: the rest comes
    // from the cache's seeds, kept by the first such run (buildcache.rs).
    crate::buildcache::restore()?;
    for tier in tiers {
        let t = Instant::now();
        eprintln!("== tier {tier:?}");
        match tier {
            Tier::Lint => {
                lint(env)?;
                crate::buildcache::save(crate::buildcache::LINT_DIRS)?;
            }
            Tier::Cargo => {
                cargo_tests(env, args.allow_skip)?;
                crate::buildcache::save(crate::buildcache::CARGO_DIRS)?;
            }
            Tier::Package => crate::deb::check(env)?,
            Tier::Fuzz => fuzz(env)?,
            Tier::Lab => {
                cmd::build_release(env)?;
                crate::lab::matrix::run(&[], None, crate::lab::matrix::default_jobs())?;
                // The host rows are the stress test's load: the two guests
                // together, instead of one after the other beside CPU hogs.
                crate::lab::stress::run_beside(crate::lab::stress::CYCLES, || {
                    crate::lab::host::run(env, &[])
                })?
            }
        }
        eprintln!(
            "== tier {tier:?} passed in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "== all tiers passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn lint(env: &Env) -> anyhow::Result<()> {
    let mut c = cmd::command(env, "cargo");
    c.args(["fmt", "--all", "--check"]);
    cmd::check(c)?;
    let mut c = cmd::command(env, "cargo");
    c.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    cmd::check(c)?;
    // The kernel side, for the BPF target, as the build script compiles it.
    let mut c = cmd::command(env, "cargo");
    c.args([
        "+nightly",
        "clippy",
        "-p",
        "trace-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/bpf-clippy",
        "--",
        "-D",
        "warnings",
    ]);
    // aya-ebpf-bindings picks its arch from this cfg (aya-build sets it too).
    c.env(
        "RUSTFLAGS",
        format!("--cfg bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );
    cmd::check(c)
}

fn cargo_tests(env: &Env, allow_skip: bool) -> anyhow::Result<()> {
    // The service tests scrape the daemon with a real Prometheus and check the
    // exposition and rules with promtool; the unit with systemd-analyze.
    // The HTML report is rendered and checked in a real browser.
    crate::setup::ensure_apt(&[
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("systemd-analyze", "systemd"),
        ("chromium", "chromium"),
        // `kvscope run --tap` is read back with Perl's TAP::Parser.
        ("prove", "perl"),
        // The metrics endpoint's TLS and basic auth: certificates and requests.
        ("openssl", "openssl"),
        ("curl", "curl"),
        // `kvscope top` is driven on a real terminal.
        ("tmux", "tmux"),
    ])?;
    let mut c = cmd::command(env, "cargo");
    c.args(["test", "--release"]);
    if !allow_skip {
        // Live tests fail instead of skipping when root or /dev/kvm is missing.
        c.env("KVSCOPE_REQUIRE_LIVE", "1");
    }
    cmd::check(c)
}

fn fuzz(env: &Env) -> anyhow::Result<()> {
    let fuzz_bin = crate::setup::ensure_cargo_fuzz()?;
    let mut path = std::ffi::OsString::from(fuzz_bin.as_os_str());
    path.push(":");
    path.push(&env.path);
    let dir = cmd::workspace_root().join("fuzz");
    let corpus = dir.join("corpus/recording_reader");
    std::fs::create_dir_all(&corpus)?;
    let mut c = std::process::Command::new("cargo");
    // The sanitizer build of the whole dependency tree is most of this
    // tier's time: kept in the cache, a fresh clone (CI) rebuilds only the
    // workspace's own crates.
    let target = crate::setup::cache_dir().join("fuzz-target");
    c.current_dir(&dir)
        .env("PATH", &path)
        .args(["+nightly", "fuzz", "run", "--target-dir"]);
    c.arg(&target)
        .args(["recording_reader", "corpus/recording_reader", "--"]);
    c.arg(format!("-max_total_time={FUZZ_SECONDS}"));
    c.arg("-rss_limit_mb=2048");
    cmd::check(c)
}
