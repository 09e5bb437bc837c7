//! `cargo xtask bench --host`: the unrelated loops (KVM_RUN where /dev/kvm runs
//! a vCPU, an ioctl, a pipe) on this host's own kernel and real CPU, unprobed
//! and with `kvscope record` in each lock-watching mode, side by side in one
//! run: unprobed, lean, unprobed, deep, unprobed. What an always-on agent
//! costs work it does not watch, at this host's tier.
use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd,
    lab::bench::{RUNS, Runs, report},
};

/// A `kvscope record` session, stopped (SIGINT, then SIGKILL) when dropped;
/// its files removed.
struct Recording {
    child: Child,
    dir: PathBuf,
}

impl Recording {
    fn start(mode: &str) -> anyhow::Result<Recording> {
        let dir = std::env::temp_dir().join(format!("kvscope-hostbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let err = dir.join("kvscope.err");
        let child = Command::new(cmd::kvscope_bin())
            .args(["record", "--locks", mode, "-o"])
            .arg(dir.join("bench.kvs"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&err)?)
            .spawn()
            .context("starting kvscope record")?;
        let mut r = Recording { child, dir };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            if text.contains("kvscope: ready:") {
                eprintln!("bench --host: {}", text.trim());
                return Ok(r);
            }
            if let Some(st) = r.child.try_wait()? {
                bail!("kvscope record --locks {mode} ended ({st}) before attaching: {text}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("kvscope record --locks {mode} not ready after 60 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // SIGINT: kvscope detaches and closes its file; killed if it hangs.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RUNS runs of the driver's loops, into `got` under `block`.
fn runs(block: &str, iterations: u64, got: &mut Runs) -> anyhow::Result<()> {
    for _ in 0..RUNS {
        let out = Command::new(cmd::lab_driver_bin())
            .args(["loops", &iterations.to_string()])
            .output()
            .context("running kvscope-lab-driver loops")?;
        if !out.status.success() {
            bail!(
                "kvscope-lab-driver loops failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(skip) = l.strip_prefix("SKIP ") {
                eprintln!("bench --host: {skip}");
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if let ["BENCH", name, ns] = f[..]
                && let Ok(ns) = ns.parse::<f64>()
            {
                got.entry((block.to_owned(), name.to_owned()))
                    .or_default()
                    .push(ns);
            }
        }
    }
    Ok(())
}

pub fn run(iterations: u64) -> anyhow::Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut got = Runs::new();
    runs("none0", iterations, &mut got)?;
    {
        let _r = Recording::start("lean")?;
        runs("lean", iterations, &mut got)?;
    }
    runs("none1", iterations, &mut got)?;
    {
        let _r = Recording::start("deep")?;
        runs("deep", iterations, &mut got)?;
    }
    runs("none2", iterations, &mut got)?;
    let header = format!(
        "this host's kernel {} (real CPU); per run {iterations} KVM_RUN iterations, {} ioctl and pipe iterations",
        release.trim(),
        iterations * 10
    );
    report(
        &got,
        &header,
        &[("lean", "none0", "none1"), ("deep", "none1", "none2")],
    );
    Ok(())
}
