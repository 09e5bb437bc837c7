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

/// A stop should end the process within this; one slower is slow, and what
/// the process was doing then is kept (see [`Running::stop`]).
pub const STOP_BOUND: Duration = Duration::from_millis(2500);
/// A stop not done by then is lost, not slow.
pub const LOST_BOUND: Duration = Duration::from_secs(60);
/// Slow stops whose threads are printed in full (the console stays readable).
const SLOW_PRINT_MAX: usize = 5;
static SLOW_PRINTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// How long a reload may take to be answered.
pub const RELOAD_BOUND: Duration = Duration::from_secs(5);
/// Attaching in an emulated guest on a loaded host can take a while.
pub const READY_BOUND: Duration = Duration::from_secs(120);

/// A stop that ended the process: how long it took, and for a slow one
/// ([`STOP_BOUND`] passed) what its threads were doing then.
#[derive(Default)]
pub struct Stop {
    pub took: Duration,
    pub threads: Option<String>,
}

/// Each thread of `pid`: name, state, wait channel, signal masks (pending,
/// blocked, ignored, caught) and kernel stack, from /proc.
pub fn threads_of(pid: u32) -> String {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("  (no /proc/{pid}/task: already gone)\n");
    };
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let status = read(dir.join("status"));
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map_or(String::new(), |v| v.trim().to_owned())
        };
        out.push_str(&format!(
            "  tid {} {:?} state {} wchan {} pending {} shared-pending {} blocked {} ignored {} caught {}\n",
            task.file_name().to_string_lossy(),
            field("Name:"),
            field("State:"),
            read(dir.join("wchan")),
            field("SigPnd:"),
            field("ShdPnd:"),
            field("SigBlk:"),
            field("SigIgn:"),
            field("SigCgt:"),
        ));
        for frame in read(dir.join("stack")).lines() {
            out.push_str(&format!("      {frame}\n"));
        }
    }
    out
}

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

    /// SIGKILL, and the process reaped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig`; the time to exit, which must be clean. A stop not done
    /// within [`STOP_BOUND`] is slow: the process's threads (kernel stacks,
    /// wait channels, signal masks) are printed then, and the wait goes on to
    /// [`LOST_BOUND`], past which the stop is lost (an error).
    pub fn stop(&mut self, sig: libc::c_int) -> anyhow::Result<Stop> {
        let t = Instant::now();
        self.signal(sig);
        let mut threads = None;
        loop {
            if let Some(s) = self.child.try_wait()? {
                if !s.success() {
                    bail!("exit {s} after signal {sig}");
                }
                return Ok(Stop {
                    took: t.elapsed(),
                    threads,
                });
            }
            if threads.is_none() && t.elapsed() > STOP_BOUND {
                let snap = threads_of(self.child.id());
                // The first few in full on the console; every one is counted.
                if SLOW_PRINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < SLOW_PRINT_MAX
                {
                    eprintln!(
                        "[stop] still running {STOP_BOUND:?} after signal {sig}; its threads:\n{snap}"
                    );
                }
                threads = Some(snap);
            }
            if t.elapsed() > LOST_BOUND {
                bail!(
                    "still running {LOST_BOUND:?} after signal {sig}: a lost stop; its threads at {STOP_BOUND:?}:\n{}",
                    threads.unwrap_or_default()
                );
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
