//! `lockdown`: run after the stress test in its guest (lockdown only ever
//! rises, so it comes last). At each level, `integrity` then
//! `confidentiality` (written to /sys/kernel/security/lockdown): `kvscope
//! check --json` (the level it reports, its tier, whether every failure
//! names the lockdown) and the daemon started, ready and stopped (it runs
//! with what it can). Prints one line, `LOCKDOWN {json}`.
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::running::{READY_BOUND, start};

const FILE: &str = "/sys/kernel/security/lockdown";
const CONFIG: &str = "/tmp/lockdown-kvscope.toml";

/// Every failure `check` reports: role choices' errors, tracepoints' reasons.
fn failures(check: &Value) -> Vec<String> {
    let roles = check["plan"]["roles"].as_array().into_iter().flatten();
    let choices = roles.flat_map(|r| r["choices"].as_array().into_iter().flatten());
    let errors = choices.filter_map(|c| c["error"].as_str().map(str::to_owned));
    let tps = check["plan"]["tracepoints"]
        .as_array()
        .into_iter()
        .flatten();
    let refused = tps
        .filter(|t| t["method"] == "none")
        .filter_map(|t| t["reason"].as_str().map(str::to_owned));
    errors.chain(refused).collect()
}

/// The daemon at this level: ready, then stopped by SIGTERM cleanly.
fn daemon_runs() -> anyhow::Result<u64> {
    let mut k = start(&["daemon", "--config", CONFIG])?;
    k.wait_for("kvscope: ready:", READY_BOUND)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(k.stop(libc::SIGTERM)?.took.as_millis() as u64)
}

fn level(name: &str) -> anyhow::Result<Value> {
    std::fs::write(FILE, name).with_context(|| format!("writing {name} to {FILE}"))?;
    let check = crate::suite::json("kvscope", &["check", "--json"]).unwrap_or_else(|e| {
        // `check` exits 1 when unusable; its JSON is still wanted.
        json!({ "error": e })
    });
    let failures = failures(&check);
    let daemon = daemon_runs();
    Ok(json!({
        "lockdown": check["lockdown"],
        "tier": check["tier"],
        "usable": check["usable"],
        "failures": failures.len(),
        "failures_naming_lockdown": failures.iter().filter(|f| f.starts_with("kernel lockdown")).count(),
        "daemon_stop_ms": daemon.as_ref().ok(),
        "daemon_error": daemon.err().map(|e| format!("{e:#}")),
    }))
}

pub fn run() -> anyhow::Result<()> {
    std::fs::write(
        CONFIG,
        "findings_file = \"/tmp/lockdown-findings.jsonl\"\njournal = false\n",
    )?;
    let _ = std::process::Command::new("mount")
        .args(["-t", "securityfs", "securityfs", "/sys/kernel/security"])
        .output();
    let doc = if std::path::Path::new(FILE).exists() {
        json!({
            "integrity": level("integrity")?,
            "confidentiality": level("confidentiality")?,
        })
    } else {
        json!({ "skipped": format!("{FILE} absent: no lockdown LSM in this kernel") })
    };
    println!("LOCKDOWN {doc}");
    Ok(())
}
