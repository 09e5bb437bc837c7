//! The wrapped command: started once kvscope is ready, with kvscope as the
//! subreaper of its tree (orphans come back to us), waited for with every
//! descendant, for a bounded time after the command itself ended.
use std::{
    ffi::OsString,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    time::{Duration, Instant},
};

use super::tree::ProcTree;

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It could not be started: not found (127) or not executable (126).
    NotStarted(u8),
}

impl Exit {
    /// As a shell says it: the code, 128 + the signal, 126/127.
    pub fn status(self) -> u8 {
        match self {
            Exit::Code(c) => c as u8,
            Exit::Signal(s) => 128u8.saturating_add(s as u8),
            Exit::NotStarted(c) => c,
        }
    }

    pub fn failed(self) -> bool {
        self.status() != 0
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited {c}"),
            Exit::Signal(s) => format!("killed by signal {s} (status {})", self.status()),
            Exit::NotStarted(127) => "not found (status 127)".into(),
            Exit::NotStarted(c) => format!("could not be executed (status {c})"),
        }
    }
}

pub struct Command {
    argv: Vec<OsString>,
    /// Shared with the signal forwarder: the command's pid once started.
    pid: Arc<AtomicI32>,
    pub tree: ProcTree,
    exit: Option<Exit>,
    started: Option<Instant>,
    ended: Option<Instant>,
    /// After the command ended, how long its descendants are waited for.
    grace: Duration,
    /// Descendants still running when the wait gave up.
    pub left_running: Vec<u32>,
    /// Every process of the tree has ended (or was given up on).
    over: bool,
    /// After that, how long kvscope still records: work the last close set
    /// off in the kernel (deferred puts, workqueues) is seen.
    settle: Duration,
}

impl Command {
    pub fn new(
        argv: Vec<OsString>,
        pid: Arc<AtomicI32>,
        grace: Duration,
        settle: Duration,
    ) -> Command {
        Command {
            argv,
            pid,
            tree: ProcTree::listen(),
            exit: None,
            started: None,
            ended: None,
            grace,
            left_running: Vec::new(),
            over: false,
            settle,
        }
    }

    /// The command as a shell would take it back.
    pub fn line(&self) -> String {
        self.argv
            .iter()
            .map(|a| shell_quoted(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// From start to the end of its tree.
    pub fn elapsed(&self) -> Duration {
        match (self.started, self.ended) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => s.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// Starts the command with kvscope's standard streams. A command that
    /// cannot be started ends the run at once, with the shell's status.
    pub fn start(&mut self) {
        // Orphans of the tree are re-parented to kvscope, which waits for them.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        self.started = Some(Instant::now());
        let (prog, args) = self.argv.split_first().expect("clap requires a command");
        let mut c = std::process::Command::new(prog);
        c.args(args);
        // kvscope blocks the signals it reads from a signalfd; the command
        // starts with none blocked, as from a shell, and with the THP
        // setting kvscope was given.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                crate::memory::restore_for_child();
                Ok(())
            });
        }
        match c.spawn() {
            Ok(child) => {
                self.tree.add(child.id());
                self.pid.store(child.id() as i32, Ordering::SeqCst);
                // std's Child is not waited on: waitpid below reaps the tree.
                std::mem::forget(child);
            }
            Err(e) => {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                eprintln!("kvscope: {}: {e}", prog.to_string_lossy());
                self.exit = Some(Exit::NotStarted(code));
                self.ended = Some(Instant::now());
                self.over = true;
            }
        }
    }

    /// After the recording ended: what is still running is left running.
    pub fn conclude(&mut self) {
        if !self.reap() {
            self.left_running = self.still_running();
            self.over = true;
        }
    }

    /// True once the whole tree has ended (or the grace after the
    /// command's end ran out) and the settle time passed.
    pub fn finished(&mut self) -> bool {
        self.reap() && self.ended.is_some_and(|t| t.elapsed() >= self.settle)
    }

    /// Reaps whatever of the tree ended; true once all of it has.
    fn reap(&mut self) -> bool {
        if self.over {
            return true;
        }
        self.tree.drain();
        let pid = self.pid.load(Ordering::SeqCst);
        loop {
            let mut status = 0;
            // SAFETY: waitpid on any child with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r > 0 {
                if r == pid {
                    self.exit = Some(exit_of(status));
                    self.ended = Some(Instant::now());
                    // Signals from now on stop kvscope (see attach::forward):
                    // the pid may be reused.
                    self.pid.store(0, Ordering::SeqCst);
                }
                continue;
            }
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // 0: children left; -1 ECHILD: none.
            let none_left = r < 0;
            let gave_up = self.ended.is_some_and(|t| t.elapsed() >= self.grace);
            if self.exit.is_some() && (none_left || gave_up) {
                if !none_left {
                    self.left_running = self.still_running();
                }
                self.ended = Some(Instant::now());
                self.tree.drain();
                self.over = true;
            }
            return self.over;
        }
    }
}

fn shell_quoted(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !a.is_empty() && a.chars().all(plain) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

impl Command {
    /// kvscope's children that belong to the tree (not its own helpers,
    /// such as the process that releases its links at exit).
    fn still_running(&self) -> Vec<u32> {
        let mut v = children_of_self();
        if self.tree.incomplete().is_none() {
            v.retain(|p| self.tree.members().contains(p));
        }
        v
    }
}

fn exit_of(status: libc::c_int) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// kvscope's children now (descendants re-parented to it included).
fn children_of_self() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_as_a_shell_reads_them() {
        assert_eq!(shell_quoted("ls"), "ls");
        assert_eq!(shell_quoted("echo hi; exit 0"), "'echo hi; exit 0'");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
        assert_eq!(shell_quoted(""), "''");
    }

    #[test]
    fn statuses_read_as_a_shell_reads_them() {
        assert_eq!(Exit::Code(0).status(), 0);
        assert!(!Exit::Code(0).failed());
        assert_eq!(Exit::Code(2).status(), 2);
        assert_eq!(Exit::Signal(9).status(), 137);
        assert_eq!(Exit::NotStarted(127).status(), 127);
        assert!(Exit::Signal(15).describe().contains("signal 15"));
    }
}
