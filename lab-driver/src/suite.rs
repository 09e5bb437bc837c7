//! `suite JSON`: the lab's scenarios run in the guest, in Rust rather than a
//! generated shell script: `kvscope check --json`, then per step the test
//! module loaded in its mode, this driver run with the step's arguments under
//! `kvscope run -o` (a driver that blocks by design: `kvscope record` started,
//! ready banner awaited, the driver killed, SIGINT), the recording replayed
//! and the first VM's timeline taken. Prints one `GuestResult` line.
use std::{process::Command, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    protocol::{GuestResult, RESULT_PREFIX, SelftestResult, Step, StepResult, Suite},
    running::{READY_BOUND, start},
};

const TESTDEV: &str = "/lib/modules/kvscope_testdev.ko";

/// A command's stdout, or an error with its stderr.
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command's stdout as JSON, or why not.
pub fn json(program: &str, args: &[&str]) -> Result<Value, String> {
    let text = output(program, args)?;
    serde_json::from_str(&text).map_err(|e| format!("{program} {}: not JSON: {e}", args.join(" ")))
}

fn load_testdev(mode: &str) -> Result<(), String> {
    let _ = Command::new("rmmod").arg("kvscope_testdev").output();
    output("insmod", &[TESTDEV, &format!("mode={mode}")]).map(|_| ())
}

/// Runs the driver with `args`; with `kill_after`, it must still be running
/// then (it blocks by design) and is killed.
fn drive(args: &[String], kill_after: Option<Duration>, r: &mut StepResult) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let Some(after) = kill_after else {
        let out = Command::new(me).args(args).output()?;
        r.driver_output = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            r.errors.push(format!(
                "driver {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        return Ok(());
    };
    let mut child = Command::new(me)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(after);
    match child.try_wait()? {
        Some(st) => r.errors.push(format!(
            "driver {} ended ({st}) before {after:?}: it should have blocked",
            args.join(" ")
        )),
        None => {
            child.kill()?;
            let out = child.wait_with_output()?;
            r.driver_output = format!(
                "{}[suite] killed after {after:?}, as the step asks\n",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    Ok(())
}

/// The step under `kvscope run --fail-on info`: the recording kept at
/// `path`, the exit status and JUnit in `r` (the driver's output too).
fn run_under_kvscope(path: &str, s: &Step, r: &mut StepResult) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let junit = format!("{path}.xml");
    let mut c = Command::new("kvscope");
    c.args(["run", "-o", path, "--fail-on", "info", "--junit", &junit]);
    if let Some(l) = s.locks.as_deref() {
        c.args(["--locks", l]);
    }
    let out = c.arg("--").arg(me).args(&s.driver).output()?;
    r.driver_output = String::from_utf8_lossy(&out.stdout).into_owned();
    r.run_status = out.status.code();
    r.junit = std::fs::read_to_string(&junit).unwrap_or_default();
    // 0 clean, 90 findings: anything else is the driver's or kvscope's failure.
    if !matches!(r.run_status, Some(0 | 90)) {
        r.errors.push(format!(
            "kvscope run -- driver {} ended {}: {}",
            s.driver.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The recording of the driver run with `args`, kvscope with `--locks locks`.
fn record(path: &str, s: &Step, r: &mut StepResult) -> anyhow::Result<()> {
    let (args, locks) = (&s.driver, s.locks.as_deref());
    let mut kargs = vec!["record", "-o", path];
    if let Some(l) = locks {
        kargs.extend(["--locks", l]);
    }
    let mut k = start(&kargs)?;
    k.wait_for("kvscope: ready:", READY_BOUND)
        .with_context(|| format!("record: {:?}", k.rest()))?;
    drive(args, s.kill_after_ms.map(Duration::from_millis), r)?;
    // What the last close set off (deferred puts) is delivered before the stop.
    std::thread::sleep(Duration::from_secs(1));
    k.stop(libc::SIGINT)?;
    Ok(())
}

fn step(s: &Step) -> StepResult {
    let mut r = StepResult {
        id: s.id,
        locks: s.locks.clone(),
        ..StepResult::default()
    };
    if let Some(m) = &s.testdev
        && let Err(e) = load_testdev(m)
    {
        r.errors.push(format!("loading the test module: {e}"));
    }
    let path = format!(
        "/tmp/s{}-{}.kvs",
        s.id,
        s.locks.as_deref().unwrap_or("deep")
    );
    // A driver that blocks by design is killed: recorded, not run.
    let captured = match s.kill_after_ms {
        Some(_) => record(&path, s, &mut r),
        None => run_under_kvscope(&path, s, &mut r),
    };
    if let Err(e) = captured {
        r.errors.push(format!("{e:#}"));
        return r;
    }
    match json("kvscope", &["replay", "--json", &path]) {
        Ok(v) => {
            if let Some(addr) = v["vms"][0]["addr"].as_str() {
                match output("kvscope", &["timeline", "--stacks", "--vm", addr, &path]) {
                    Ok(t) => r.timeline = t,
                    Err(e) => r.errors.push(e),
                }
            }
            r.report = Some(v);
        }
        Err(e) => r.errors.push(e),
    }
    r
}

/// A KVM selftest under `kvscope run --fail-on info --junit`.
fn selftest(name: &str) -> SelftestResult {
    let junit = format!("/tmp/{name}.xml");
    let mut r = SelftestResult {
        name: name.to_owned(),
        ..SelftestResult::default()
    };
    // By its path: a selftest reads its own ELF by the name it was run as.
    let path = format!("/usr/bin/{name}");
    let out = Command::new("kvscope")
        .args(["run", "--fail-on", "info", "--junit", &junit, "--", &path])
        .output();
    match out {
        Ok(o) => {
            r.run_status = o.status.code();
            r.kvscope_said = String::from_utf8_lossy(&o.stderr).into_owned();
            let stdout = String::from_utf8_lossy(&o.stdout);
            let tail: Vec<&str> = stdout.lines().rev().take(15).collect();
            r.output_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        }
        Err(e) => r.kvscope_said = format!("kvscope run: {e}"),
    }
    r.junit = std::fs::read_to_string(&junit).unwrap_or_default();
    r
}

pub fn run(suite_json: &str) -> anyhow::Result<()> {
    let suite: Suite = serde_json::from_str(suite_json).context("the suite is not valid")?;
    let mut result = GuestResult {
        check: json("kvscope", &["check", "--json"]),
        steps: Vec::new(),
        selftests: Vec::new(),
        dmesg: Vec::new(),
    };
    for s in &suite.steps {
        eprintln!(
            "[suite] step {}: {:?} {}",
            s.id,
            s.testdev,
            s.driver.join(" ")
        );
        result.steps.push(step(s));
    }
    for t in &suite.selftests {
        eprintln!("[suite] selftest {t} under kvscope run");
        result.selftests.push(selftest(t));
    }
    result.dmesg = output("dmesg", &[])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kvscope_testdev"))
        .map(str::to_owned)
        .collect();
    println!("{RESULT_PREFIX}{}", serde_json::to_string(&result)?);
    Ok(())
}
