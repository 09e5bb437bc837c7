//! Booting a lab kernel under QEMU (TCG, `-cpu max` so the guest has SVM and
//! KVM loads; q35 with an emulated Intel IOMMU and the `edu` device); the
//! command's output between the init's markers; QEMU killed by pid on timeout.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::debian::Unpacked;

pub struct Boot {
    /// Lines between the begin and end markers.
    pub output: Vec<String>,
    pub rc: Option<i32>,
    pub console: String,
    pub secs: f64,
}

/// What the guest kernel prints when its emulated timer never fired on an idle
/// vCPU: RCU's own diagnosis of a timer-handling failure below the guest (seen
/// once under TCG with the host overloaded; the vCPU stayed halted for good).
/// A stall inside the guest (a CPU spinning, a lock never released) prints the
/// stall report without this line, and is never retried.
const LOST_TIMER: &str = "timer wakeup didn't happen";

/// Boots, collects the command's output, kills QEMU by pid on timeout. A boot
/// the emulator stranded (see [`LOST_TIMER`]) is killed at once and booted
/// again, once, saying so; a second one fails.
pub fn boot(k: &Unpacked, initrd: &Path, timeout: Duration) -> anyhow::Result<Boot> {
    match boot_once(k, initrd, timeout)? {
        Ok(b) => Ok(b),
        Err(stranded) => {
            let log = crate::setup::cache_dir()
                .join("lab")
                .join(format!("stranded-{}.console", k.release));
            let _ = std::fs::write(&log, &stranded.0);
            eprintln!(
                "lab: {}: the guest kernel reports its timer never fired on an idle vCPU \
                 (\"{LOST_TIMER}\": the emulator, not the guest's code; console in {}); \
                 booting it again, once",
                k.release,
                log.display()
            );
            match boot_once(k, initrd, timeout)? {
                Ok(b) => Ok(b),
                Err(again) => bail!(
                    "guest {}: the emulator lost a vCPU's timer twice in a row; first console:\n{}\n\
                     second console:\n{}",
                    k.release,
                    stranded.0,
                    again.0
                ),
            }
        }
    }
}

/// A boot ended because the guest reported a lost timer; its console so far.
struct Stranded(String);

fn boot_once(
    k: &Unpacked,
    initrd: &Path,
    timeout: Duration,
) -> anyhow::Result<Result<Boot, Stranded>> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,sata=off",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args(["-accel", "tcg,thread=multi"])
        .args(["-device", "intel-iommu", "-device", "edu"])
        .args(["-kernel"])
        .arg(k.root.join("boot").join(format!("vmlinuz-{}", k.release)))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 intel_iommu=on"])
        .args([
            "-no-reboot",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut output = Vec::new();
    let mut inside = false;
    let mut rc = None;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_owned();
                console.push_str(&l);
                console.push('\n');
                if l.contains(LOST_TIMER) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Err(Stranded(console)));
                }
                if l.contains("KVSCOPE-LAB-BEGIN") {
                    inside = true;
                } else if l.contains("KVSCOPE-LAB-END") {
                    inside = false;
                } else if let Some(v) = l.strip_prefix("KVSCOPE-LAB-RC=") {
                    rc = v.trim().parse().ok();
                } else if inside {
                    output.push(l);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Bounded: the guest is killed, never left running.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "guest {} timed out after {:.0} s; console:\n{console}",
                    k.release,
                    timeout.as_secs_f64()
                );
            }
        }
    }
    let _ = child.wait();
    Ok(Ok(Boot {
        output,
        rc,
        console,
        secs: started.elapsed().as_secs_f64(),
    }))
}
