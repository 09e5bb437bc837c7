//! `cargo xtask bench --footprint [--against REV]`: what an idle kvscope costs
//! this host (root), per command (daemon, trace, record): resident memory once
//! idle, the peak during start, CPU time per idle minute, wakeups per second
//! (context switches of all its threads), time to ready and time to stop.
//! With `--against`, the same from another revision's build, the two run
//! alternately round after round so that the machine's drift hits both alike.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, replaybench, setup::Env};

/// Alternations of (baseline, current).
const ROUNDS: usize = 3;

/// The commands measured.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Daemon,
    Trace,
    Record,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Daemon, Mode::Trace, Mode::Record];

    fn name(self) -> &'static str {
        match self {
            Mode::Daemon => "daemon",
            Mode::Trace => "trace",
            Mode::Record => "record",
        }
    }

    fn command(self, bin: &Path, dir: &Path) -> anyhow::Result<Command> {
        let mut c = Command::new(bin);
        match self {
            Mode::Daemon => {
                let config = dir.join("kvscope.toml");
                std::fs::write(
                    &config,
                    format!(
                        "findings_file = \"{}\"\njournal = false\nmetrics_listen = \"127.0.0.1:0\"\n",
                        dir.join("findings.jsonl").display()
                    ),
                )?;
                c.arg("daemon").arg("--config").arg(config);
            }
            Mode::Trace => {
                c.arg("trace");
            }
            Mode::Record => {
                c.args(["record", "-o"]).arg(dir.join("footprint.kvs"));
            }
        }
        Ok(c)
    }
}

/// One run's figures.
#[derive(Default)]
struct Sample {
    ready_ms: f64,
    idle_rss_kib: f64,
    peak_rss_kib: f64,
    cpu_ms_per_min: f64,
    wakeups_per_s: f64,
    stop_ms: f64,
}

/// A row of the table: label, unit, how to read it from a sample.
type Figure = (&'static str, &'static str, fn(&Sample) -> f64);

/// The figures of the table, in its order.
const COLUMNS: [Figure; 6] = [
    ("idle RSS", "MiB", |s| s.idle_rss_kib / 1024.0),
    ("peak RSS (start)", "MiB", |s| s.peak_rss_kib / 1024.0),
    ("CPU per idle minute", "ms", |s| s.cpu_ms_per_min),
    ("wakeups", "/s", |s| s.wakeups_per_s),
    ("ready", "ms", |s| s.ready_ms),
    ("stop", "ms", |s| s.stop_ms),
];

/// A running kvscope, killed if dropped before its stop was measured.
struct Running {
    child: Child,
    err: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{key} in /proc/{pid}/status"))
}

/// Summed over every thread: (time on a CPU in ns, times it was switched
/// off one). /proc/PID/task/TID/schedstat has both, to the nanosecond
/// (utime/stime tick at 10 ms: too coarse for an idle minute). Each switch
/// is a sleep or a preemption, so their count is the wakeups.
fn cpu_and_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut ns, mut switches) = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(t?.path().join("schedstat")) else {
            continue; // the thread ended
        };
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [on_cpu, _waiting, slices] = f[..] else {
            bail!("unexpected schedstat for {pid}: {text}");
        };
        ns += on_cpu;
        switches += slices;
    }
    Ok((ns, switches))
}

fn wait_ready(r: &mut Running, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&r.err).unwrap_or_default();
        if text.contains("kvscope: ready:") {
            return Ok(started.elapsed());
        }
        if let Some(st) = r.child.try_wait()? {
            bail!("{what} ended ({st}) before it was ready: {}", text.trim());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{what} not ready after 60 s: {}", text.trim());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `bin` in `mode`, idles it `idle`, stops it with SIGINT.
fn measure(bin: &Path, mode: Mode, idle: Duration) -> anyhow::Result<Sample> {
    let dir = std::env::temp_dir().join(format!("kvscope-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let err = dir.join("kvscope.err");
    let what = format!("{} {}", bin.display(), mode.name());
    let child = mode
        .command(bin, &dir)?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err)?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut r = Running { child, err };
    let pid = r.child.id();
    let ready = wait_ready(&mut r, &what)?;
    // The start's last work (the second kallsyms read) ends within a second
    // or two; idle is what follows.
    std::thread::sleep(Duration::from_secs(3));
    let ((cpu0, sw0), t0) = (cpu_and_switches(pid)?, Instant::now());
    std::thread::sleep(idle);
    let ((cpu1, sw1), secs) = (cpu_and_switches(pid)?, t0.elapsed().as_secs_f64());
    let mut s = Sample {
        ready_ms: ready.as_secs_f64() * 1e3,
        idle_rss_kib: status_kib(pid, "VmRSS:")?,
        peak_rss_kib: status_kib(pid, "VmHWM:")?,
        cpu_ms_per_min: (cpu1 - cpu0) as f64 / 1e6 * 60.0 / secs,
        wakeups_per_s: (sw1 - sw0) as f64 / secs,
        stop_ms: 0.0,
    };
    let t = Instant::now();
    // SAFETY: kill has no memory preconditions; pid is our live child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = t + Duration::from_secs(30);
    while r.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("{what} still running 30 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    s.stop_ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(s)
}

fn median_and_range(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let (lo, mid, hi) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    let p = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    format!("{} ({}-{})", p(mid), p(lo), p(hi))
}

pub fn run(env: &Env, against: Option<&str>, idle: Duration) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "bench --footprint attaches kvscope: run it as root (sudo -E cargo xtask bench --footprint)"
        );
    }
    let mut builds = Vec::new();
    if let Some(rev) = against {
        builds.push((
            rev.to_owned(),
            replaybench::build(env, Some(rev), "kvscope")?,
        ));
    }
    builds.push(("current".to_owned(), cmd::kvscope_bin()));
    let mut got: Vec<Vec<Vec<Sample>>> = builds
        .iter()
        .map(|_| Mode::ALL.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=ROUNDS {
        for (m, mode) in Mode::ALL.into_iter().enumerate() {
            for (b, (name, bin)) in builds.iter().enumerate() {
                eprintln!(
                    "bench --footprint: round {round}/{ROUNDS}, {name} {}, idle {} s",
                    mode.name(),
                    idle.as_secs()
                );
                got[b][m].push(measure(bin, mode, idle)?);
            }
        }
    }
    print_table(&builds, &got, idle);
    Ok(())
}

fn print_table(builds: &[(String, PathBuf)], got: &[Vec<Vec<Sample>>], idle: Duration) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "idle footprint on this host ({}), median (range) of {ROUNDS} alternated runs, {} s idle each:",
        release.trim(),
        idle.as_secs()
    );
    print!("{:<8} {:<24}", "command", "figure");
    for (name, _) in builds {
        print!(" {name:>22}");
    }
    println!("{}", if builds.len() == 2 { "   ratio" } else { "" });
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        for (label, unit, of) in COLUMNS {
            print!("{:<8} {:<24}", mode.name(), format!("{label} ({unit})"));
            let cols: Vec<Vec<f64>> = got.iter().map(|b| b[m].iter().map(of).collect()).collect();
            for c in &cols {
                print!(" {:>22}", median_and_range(c));
            }
            if let [old, new] = &cols[..] {
                let (o, n) = (
                    replaybench::median(old.clone()),
                    replaybench::median(new.clone()),
                );
                if o > 0.0 {
                    print!("   {:.2}x", n / o);
                }
            }
            println!();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
