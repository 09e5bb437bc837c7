//! `stress N`: kvscope started and stopped again and again in the guest, the
//! way a shell script starts a background job (SIGINT inherited as ignored):
//! - N `record` cycles: ready banner, the dev-first scenario, SIGINT; the
//!   recording must hold the scenario (one VM, counts ending at 0, one
//!   destroy, delivery verified, nothing lost);
//! - N/5 `trace --deep-for 2s` cycles (SIGINT): the scenario while deep,
//!   the switch to lean, the scenario again; the JSON output must hold the
//!   lock events of the first (the mutex API hooked) and the VM creation of
//!   the second seen by kvm_dev_ioctl (lean's handler, attached at the switch);
//! - N/5 `daemon` cycles: SIGHUP before and after the scenario (each answered
//!   by a reload line), SIGTERM; the summary must count the events, no loss;
//! - N/5 early stops, the signal sent while kvscope is still attaching;
//! - N/5 `kill -9` cycles (record, trace, daemon in turn, once ready): the
//!   kernel's own lists of programs, links and maps must be as before kvscope
//!   started (nothing of it left behind).
//!
//! Every stop's time is kept; a stop over [`STOP_BOUND`] is slow (its threads
//! printed to the console), one over [`LOST_BOUND`] lost (a failure). Within
//! [`RELEASE_BOUND`] of each stop's signal the kernel must list nothing the
//! cycle made (kvscope exits before the kernel has released its kprobe and
//! tracepoint links: a child of it does that); checked beside the next
//! cycles, as a user's next command would run, and that time kept too. Prints one line, `STRESS {json}`: cycles per kind,
//! stop and release times (median, p90, max, every stop), the slow stops,
//! slowest attach, failures.
//!
//! Each cycle's end is printed (`[stress] cycle I (KIND) ...`): the console
//! shows progress, and its silence means something. A cycle still running
//! after [`CYCLE_BOUND`] is hung: a watchdog prints what the driver and every
//! kvscope process are doing (threads, wait channels, kernel stacks; the
//! kernel's blocked tasks by sysrq) and ends the run with a failure.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    objects::{Ceiling, Objects, wait_gone},
    rig::Rig,
    running::{READY_BOUND, RELOAD_BOUND, Stop, start},
};

const DAEMON_CONFIG: &str = "/tmp/stress-kvscope.toml";
/// From a stop's signal until the kernel has released all of kvscope's
/// programs, links and maps.
const RELEASE_BOUND: Duration = Duration::from_secs(30);
/// The longest a cycle can take while every wait in it keeps its bound
/// (ready 120 s, two reloads, the switch, a lost stop's 60 s, the checks).
const CYCLE_BOUND: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Record,
    Trace,
    Daemon,
    EarlyStop,
    Kill9,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Trace => "trace",
            Kind::Daemon => "daemon",
            Kind::EarlyStop => "early-stop",
            Kind::Kill9 => "kill-9",
        }
    }
}

/// The dev-first scenario: VM, kvm-vfio, group, device; closed device first.
fn scenario() -> anyhow::Result<()> {
    let rig = Rig::new(false, true)?;
    let dev = rig.open_device()?;
    let Rig {
        kvm: crate::rig::KvmPair { vm, kv, .. },
        ..
    } = rig;
    drop(dev);
    drop(kv);
    drop(vm);
    Ok(())
}

/// What a recording must hold after the scenario.
fn check_recording(path: &str) -> anyhow::Result<u64> {
    let r =
        crate::suite::json("kvscope", &["replay", "--json", path]).map_err(anyhow::Error::msg)?;
    if r["header"]["delivery"]["verified"] != true {
        bail!("delivery not verified: {}", r["header"]["delivery"]);
    }
    let lost: u64 = r["lost"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    let vms = r["vms"].as_array().cloned().unwrap_or_default();
    let counts: Vec<i64> = vms
        .first()
        .and_then(|v| v["counts"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.as_i64())
        .collect();
    if vms.len() != 1 || counts.last() != Some(&0) || vms[0]["destroys"] != 1 || lost > 0 {
        bail!(
            "recording lacks the scenario: {} VMs, counts {counts:?}, destroys {}, {lost} lost, {} events",
            vms.len(),
            vms.first()
                .map(|v| v["destroys"].clone())
                .unwrap_or_default(),
            r["events"]
        );
    }
    r["events"].as_u64().context("no event count")
}

/// `--deep-for 2s` and the time the deep scenario takes, with margin.
const SWITCH_BOUND: Duration = Duration::from_secs(20);

/// A trace that switched deep -> lean mid-way: the first scenario's lock
/// events (deep), the second's VM creation through kvm_dev_ioctl (lean).
fn check_switched_trace(out: &str) -> anyhow::Result<()> {
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let locks = events
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("lock-")))
        .count();
    let lean_vms = events
        .iter()
        .filter(|e| e["kind"] == "vm-created" && e["hook"] == "kvm_dev_ioctl")
        .count();
    if events.len() < 20 || locks == 0 || lean_vms != 1 {
        bail!(
            "trace --deep-for: {} events, {locks} lock events (deep), {lean_vms} VM creations by kvm_dev_ioctl (lean; want 1)",
            events.len()
        );
    }
    Ok(())
}

/// The release of one stopped cycle's kernel objects, checked beside the
/// next cycles: the time from the signal until the kernel listed none of them.
type Release = std::thread::JoinHandle<anyhow::Result<Duration>>;

/// One cycle of `kind`; returns the time to ready, the stop and the check of
/// its release (none for kill -9, whose check is synchronous).
fn cycle(kind: Kind, i: u64) -> anyhow::Result<(Duration, Stop, Option<Release>)> {
    let lo = Objects::now().ceiling();
    if kind == Kind::Kill9 {
        return kill9(i, lo).map(|ready| (ready, Stop::default(), None));
    }
    let (ready, stop) = cycle_until_stopped(kind, i)?;
    // The process has exited: everything it made has an id up to these.
    let hi = Objects::now().ceiling();
    let took = stop.took;
    let release = std::thread::spawn(move || {
        wait_gone(lo, hi, RELEASE_BOUND.saturating_sub(took))
            .map(|t| took + t)
            .map_err(|left| {
                anyhow::anyhow!(
                    "{RELEASE_BOUND:?} after the stop's signal the kernel still holds {left:?}"
                )
            })
    });
    Ok((ready, stop, Some(release)))
}

/// record, trace or daemon by turns, for the early-stop and kill -9 cycles.
fn one_of_three(i: u64, rec: &str) -> Vec<&str> {
    match i % 3 {
        0 => vec!["record", "-o", rec],
        1 => vec!["trace"],
        _ => vec!["daemon", "--config", DAEMON_CONFIG],
    }
}

fn cycle_until_stopped(kind: Kind, i: u64) -> anyhow::Result<(Duration, Stop)> {
    let rec = format!("/tmp/stress-{i}.kvs");
    let args: Vec<&str> = match kind {
        Kind::Record => vec!["record", "-o", &rec],
        Kind::Trace => vec!["trace", "--json", "--deep-for", "2s"],
        Kind::Daemon => vec!["daemon", "--config", DAEMON_CONFIG],
        Kind::EarlyStop | Kind::Kill9 => one_of_three(i, &rec),
    };
    let mut k = start(&args)?;
    if kind == Kind::EarlyStop {
        k.wait_main()?;
        // Spread over start-up and attach (attach takes seconds here).
        std::thread::sleep(Duration::from_millis((i * 97) % 1500));
        let sig = if args[0] == "daemon" {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let stop = k.stop(sig)?;
        let _ = std::fs::remove_file(&rec);
        return Ok((Duration::ZERO, stop));
    }
    let ready = k.wait_for("kvscope: ready:", READY_BOUND)?;
    if kind == Kind::Daemon {
        k.signal(libc::SIGHUP);
        k.wait_for("reloaded", RELOAD_BOUND)?;
    }
    scenario()?;
    if kind == Kind::Daemon {
        k.signal(libc::SIGHUP);
        k.wait_for("reloaded", RELOAD_BOUND)?;
    }
    if kind == Kind::Trace {
        k.wait_for("lock watching switched deep -> lean", SWITCH_BOUND)?;
        scenario()?;
    }
    // Let the last events reach the ring before the stop.
    std::thread::sleep(Duration::from_millis(200));
    let stop = k.stop(if kind == Kind::Daemon {
        libc::SIGTERM
    } else {
        libc::SIGINT
    })?;
    match kind {
        Kind::Record => {
            check_recording(&rec)?;
            std::fs::remove_file(&rec)?;
        }
        Kind::Trace => check_switched_trace(&k.stdout())?,
        Kind::Daemon => {
            let summary = k
                .rest()
                .into_iter()
                .find(|l| l.contains("detached;"))
                .context("no detach summary")?;
            // "kvscope: detached; N events, M lost, K findings"
            let num = |w: &str| {
                summary
                    .split(", ")
                    .find_map(|p| p.trim_start_matches("kvscope: detached; ").strip_suffix(w))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            };
            if num(" events").unwrap_or(0) < 10 || num(" lost") != Some(0) {
                bail!("daemon summary lacks the scenario: {summary}");
            }
        }
        Kind::EarlyStop | Kind::Kill9 => unreachable!(),
    }
    Ok((ready, stop))
}

/// kvscope (record, trace or daemon by `i`) SIGKILLed once ready: within
/// 5 s the kernel lists nothing it made (the kernel frees them as the
/// process's fds close; map frees can lag a little).
fn kill9(i: u64, lo: Ceiling) -> anyhow::Result<Duration> {
    let rec = format!("/tmp/stress-{i}.kvs");
    let args = one_of_three(i, &rec);
    let mut k = start(&args)?;
    let ready = k.wait_for("kvscope: ready:", READY_BOUND)?;
    let made = Objects::now().ceiling();
    if Objects::now().between(lo, made).is_empty() {
        bail!("{}: attached, yet the kernel lists nothing new", args[0]);
    }
    k.kill()?;
    let _ = std::fs::remove_file(&rec);
    match wait_gone(lo, made, Duration::from_secs(5)) {
        Ok(_) => Ok(ready),
        Err(left) => bail!("{} killed by SIGKILL left in the kernel: {left:?}", args[0]),
    }
}

pub fn run(n: u64) -> anyhow::Result<()> {
    std::fs::write(
        DAEMON_CONFIG,
        "findings_file = \"/tmp/stress-findings.jsonl\"\njournal = false\n",
    )?;
    let plan: Vec<Kind> = (0..n)
        .flat_map(|i| {
            let mut v = vec![Kind::Record];
            if i % 5 == 4 {
                v.extend([Kind::Trace, Kind::Daemon, Kind::EarlyStop, Kind::Kill9]);
            }
            v
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut stops = Vec::new();
    let mut pending = Vec::new();
    let mut by_kind = std::collections::BTreeMap::<&str, Vec<u64>>::new();
    let mut slow = Vec::new();
    let mut slowest_ready = Duration::ZERO;
    let mut failures = Vec::new();
    let started = Instant::now();
    let current = watchdog();
    for (i, kind) in plan.iter().enumerate() {
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some((i, *kind, Instant::now()));
        match cycle(*kind, i as u64) {
            Ok((ready, stop, release)) => {
                *counts.entry(kind.name()).or_default() += 1;
                slowest_ready = slowest_ready.max(ready);
                eprintln!(
                    "[stress] cycle {i} ({}) ok: ready {} ms, stop {} ms",
                    kind.name(),
                    ready.as_millis(),
                    stop.took.as_millis()
                );
                if *kind == Kind::Kill9 {
                    continue;
                }
                let ms = stop.took.as_millis() as u64;
                stops.push(ms);
                pending.extend(release.map(|r| (i, kind.name(), r)));
                by_kind.entry(kind.name()).or_default().push(ms);
                if stop.threads.is_some() {
                    slow.push(format!("cycle {i} ({}): {ms} ms", kind.name()));
                }
            }
            Err(e) => {
                eprintln!("[stress] cycle {i} ({}): {e:#}", kind.name());
                failures.push(format!("cycle {i} ({}): {e:#}", kind.name()));
            }
        }
    }
    // The release checks below keep their own bound.
    *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let mut releases = Vec::new();
    for (i, kind, r) in pending {
        match r.join().expect("a release check panicked") {
            Ok(t) => releases.push(t.as_millis() as u64),
            Err(e) => failures.push(format!("cycle {i} ({kind}): {e:#}")),
        }
    }
    let doc = serde_json::json!({
        "cycles": counts,
        "stop_ms": quantiles(stops),
        "release_ms": quantiles(releases),
        "stop_ms_by_kind": by_kind,
        "slow_stops": slow,
        "slowest_ready_ms": slowest_ready.as_millis() as u64,
        "seconds": started.elapsed().as_secs(),
        "failures": failures,
    });
    println!("STRESS {doc}");
    Ok(())
}

/// The cycle running now (index, kind, start), if any.
type Current = Arc<Mutex<Option<(usize, Kind, Instant)>>>;

/// The cycle running now, watched by a thread that
/// ends the run when one passes [`CYCLE_BOUND`], after printing what every
/// process involved is doing.
fn watchdog() -> Current {
    let current: Current = Arc::new(Mutex::new(None));
    let watched = Arc::clone(&current);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = *watched.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((i, kind, since)) = now
                && since.elapsed() > CYCLE_BOUND
            {
                hung(i, kind, since.elapsed());
            }
        }
    });
    current
}

/// A hung cycle: the driver's threads, every kvscope process's, the kernel's
/// blocked tasks; then the run ends (exit 1: no STRESS verdict).
fn hung(i: usize, kind: Kind, running: Duration) -> ! {
    let mut out = format!(
        "[stress] cycle {i} ({}) hung: still running after {} s; the driver's threads:\n{}",
        kind.name(),
        running.as_secs(),
        crate::running::threads_of(std::process::id())
    );
    for (pid, comm) in kvscope_processes() {
        out.push_str(&format!(
            "[stress] {comm} (pid {pid}):\n{}",
            crate::running::threads_of(pid)
        ));
    }
    eprint!("{out}");
    // Tasks in uninterruptible sleep, with their stacks, on the console
    // (whose level `quiet` keeps below the dump's).
    let _ = std::fs::write("/proc/sys/kernel/printk", "8");
    let _ = std::fs::write("/proc/sysrq-trigger", "w");
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "[stress] cycle {i} ({}) hung: the run ends here",
        kind.name()
    );
    std::process::exit(1)
}

/// Every other process whose name starts with kvscope (the release children
/// too; the driver's own name does).
fn kvscope_processes() -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            comm.starts_with("kvscope").then(|| (pid, comm.to_owned()))
        })
        .collect()
}

/// Median, p90 and max of `v`.
fn quantiles(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    serde_json::json!({ "median": at(0.5), "p90": at(0.9), "max": v.last() })
}
