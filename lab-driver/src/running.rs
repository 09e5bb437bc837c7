//! A kvscope process started by the driver (the stress test, the lab suite),
//! the way a shell starts a background job: SIGINT inherited as ignored.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Every stop must end the process within this.
pub const STOP_BOUND: Duration = Duration::from_secs(5);
/// Attaching in an emulated guest on a loaded host can take a while.
pub const READY_BOUND: Duration = Duration::from_secs(120);

/// A started kvscope: its stderr lines arrive on `lines`; killed if dropped.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(args: &[&str]) -> anyhow::Result<Running> {
    let mut c = Command::new("kvscope");
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = c.spawn().context("starting kvscope")?;
    let err = child.stderr.take().expect("piped");
    let out = child.stdout.take().expect("piped");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(out).read_to_string(&mut s);
        s
    });
    Ok(Running {
        child,
        lines,
        stdout: Some(stdout),
    })
}

impl Running {
    /// Waits for a stderr line containing `what`; returns the time it took.
    pub fn wait_for(&self, what: &str, bound: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let left = bound.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return Ok(t.elapsed()),
                Ok(_) => {}
                Err(_) => bail!("no {what:?} line within {bound:?}"),
            }
        }
    }

    /// Until the process holds or handles SIGINT (it reached `main`).
    pub fn wait_main(&self) -> anyhow::Result<()> {
        let status = format!("/proc/{}/status", self.child.id());
        let bit = 1u64 << (libc::SIGINT - 1);
        let t = Instant::now();
        while t.elapsed() < STOP_BOUND {
            let text = std::fs::read_to_string(&status).unwrap_or_default();
            let held = text
                .lines()
                .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigCgt:"))
                .filter_map(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
                .any(|m| m & bit != 0);
            if held {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!("kvscope never reached main")
    }

    pub fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig`; the time to exit, which must be within the bound and clean.
    pub fn stop(&mut self, sig: libc::c_int) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.signal(sig);
        loop {
            if let Some(s) = self.child.try_wait()? {
                if !s.success() {
                    bail!("exit {s} after signal {sig}");
                }
                return Ok(t.elapsed());
            }
            if t.elapsed() > STOP_BOUND {
                bail!("still running {STOP_BOUND:?} after signal {sig}: a lost stop");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stdout(&mut self) -> String {
        self.stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// The stderr lines not yet read.
    pub fn rest(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}
