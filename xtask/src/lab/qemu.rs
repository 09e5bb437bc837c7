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

/// Boots, collects the command's output, kills QEMU by pid on timeout.
pub fn boot(k: &Unpacked, initrd: &Path, timeout: Duration) -> anyhow::Result<Boot> {
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
    Ok(Boot {
        output,
        rc,
        console,
        secs: started.elapsed().as_secs_f64(),
    })
}
