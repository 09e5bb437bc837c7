//! Handing the kernel's slow release of kprobe and tracepoint links to a
//! child process, so that a stop does not wait for it.
//!
//! The kernel frees those links one at a time: `perf_event_detach_bpf_prog`
//! waits for an RCU tasks-trace grace period under the global
//! `bpf_event_mutex` (seen in every slow stop of the lab's 6.12 guests: one
//! thread in `synchronize_rcu_tasks_trace`, the others queued on the mutex;
//! 25 links, 2.5-4 s under emulation). Threads cannot overlap those waits and
//! nothing kvscope writes depends on them. fentry or kprobe.multi links would
//! be one grace period, but both pin the module they probe (`rmmod kvm` would
//! fail while kvscope runs), so the role hooks in modules stay kprobes.
//!
//! Before the process lets go of its links, a child takes a reference to each
//! (fork) and keeps nothing else (every other fd closed: no listening socket,
//! pipe or file outlives the stop). The process then closes its own copies,
//! which is cheap, and tells the child to go; the child's exit does the
//! kernel's work, in the background. The programs are disabled at once (aya
//! disables each perf event as it detaches), so nothing fires meanwhile.
use std::{
    ffi::CStr,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// The name the child runs under (`ps`, `/proc/PID/comm`).
pub const CHILD_NAME: &CStr = c"kvscope-release";

/// What an fd's `/proc/self/fd` link names, for the kinds the child keeps.
const KEPT_KINDS: [&str; 2] = ["anon_inode:[perf_event]", "anon_inode:bpf_link"];

/// A child holding the process's links; [`Handoff::go`] lets it exit.
pub struct Handoff {
    pid: libc::pid_t,
    go: OwnedFd,
}

/// The fds of this process whose `/proc/self/fd` link `kept` accepts, sorted.
fn fds_where(kept: impl Fn(&str) -> bool) -> Vec<RawFd> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<RawFd> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            kept(target.to_str()?).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The ranges of fds to close so that only `keep` (sorted) stays open: every
/// gap between them, from 0 to the largest fd there can be.
fn ranges_to_close(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(keep.len() + 1);
    let mut next = 0u32;
    for &fd in keep {
        let fd = fd as u32;
        if fd > next {
            out.push((next, fd - 1));
        }
        next = next.max(fd + 1);
    }
    out.push((next, u32::MAX));
    out
}

impl Handoff {
    /// Forks the child that will hold this process's links, or None when
    /// there are none or the fork fails (the caller then releases them
    /// itself, as slowly as the kernel takes).
    pub fn start() -> Option<Handoff> {
        Handoff::start_keeping(|target| KEPT_KINDS.contains(&target))
    }

    fn start_keeping(kept: impl Fn(&str) -> bool) -> Option<Handoff> {
        let links = fds_where(kept);
        if links.is_empty() {
            return None;
        }
        let mut keep = links.clone();
        let mut p = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into `p`.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            log::warn!(
                "no child to release links: pipe: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: both fds were just opened and are owned here alone.
        let (wait_end, go) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        keep.push(wait_end.as_raw_fd());
        keep.sort_unstable();
        // Built before the fork: the child may not allocate.
        let close = ranges_to_close(&keep);
        // SAFETY: the child runs only async-signal-safe calls (close_range,
        // prctl, read, _exit) and never returns into Rust code.
        match unsafe { libc::fork() } {
            0 => unsafe { child(&close, &links, wait_end.as_raw_fd()) },
            -1 => {
                log::warn!(
                    "no child to release links: fork: {}",
                    std::io::Error::last_os_error()
                );
                None
            }
            pid => Some(Handoff { pid, go }),
        }
    }

    /// The process has closed its own copies of the links: the child exits
    /// and the kernel releases them there. It is reaped in the background.
    pub fn go(self) {
        let Handoff { pid, go } = self;
        drop(go);
        log::info!(
            "links released by {} (pid {pid}) in the background",
            CHILD_NAME.to_string_lossy()
        );
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        });
    }
}

/// The child: keeps the links and the pipe's read end, waits for the parent
/// to close the write end (or to exit), then releases the links, each in a
/// process of its own: where the kernel's release does not serialise, their
/// grace periods overlap, as threads' would. Only raw system calls: the
/// parent had other threads, whose locks the fork may have copied held.
unsafe fn child(close: &[(u32, u32)], links: &[RawFd], wait_end: RawFd) -> ! {
    unsafe {
        for &(lo, hi) in close {
            libc::syscall(libc::SYS_close_range, lo, hi, 0);
        }
        libc::prctl(libc::PR_SET_NAME, CHILD_NAME.as_ptr());
        read_to_end(wait_end);
        libc::close(wait_end);
        release_each(links);
        // Reap them: wait until there is no child left.
        while libc::wait4(-1, std::ptr::null_mut(), 0, std::ptr::null_mut()) > 0
            || *libc::__errno_location() == libc::EINTR
        {}
        libc::_exit(0)
    }
}

/// One process per link, each the last holder of its own when it exits: each
/// closes the others' copies at once, then waits until every process has done
/// so (the end of file of a pipe whose write end each holds), then exits.
unsafe fn release_each(links: &[RawFd]) {
    unsafe {
        let mut p = [0 as RawFd; 2];
        let paired = libc::pipe2(p.as_mut_ptr(), 0) == 0;
        for &mine in links {
            // A fork without glibc's handlers (raw clone): nothing runs but
            // the system calls below.
            if !paired || libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) != 0 {
                continue;
            }
            for &other in links.iter().filter(|&&fd| fd != mine) {
                libc::close(other);
            }
            libc::close(p[1]);
            read_to_end(p[0]);
            libc::_exit(0);
        }
        // Without a pipe (or where a clone failed) this process holds the
        // rest and releases them as it exits.
        for &fd in links {
            libc::close(fd);
        }
        if paired {
            libc::close(p[1]);
            libc::close(p[0]);
        }
    }
}

/// Reads `fd` until end of file (or an error other than an interruption).
unsafe fn read_to_end(fd: RawFd) {
    let mut b = 0u8;
    loop {
        let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
        if n == 0 || (n < 0 && unsafe { *libc::__errno_location() } != libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_every_gap_around_the_kept_fds() {
        assert_eq!(ranges_to_close(&[]), vec![(0, u32::MAX)]);
        assert_eq!(
            ranges_to_close(&[0, 5, 6, 9]),
            vec![(1, 4), (7, 8), (10, u32::MAX)]
        );
        assert_eq!(ranges_to_close(&[3]), vec![(0, 2), (4, u32::MAX)]);
    }

    /// Nothing of the kinds kept (no probe in a unit test): no child.
    #[test]
    fn no_link_no_child() {
        assert!(Handoff::start().is_none());
    }

    /// Pipes' write ends stand for links: the child holds them after the
    /// process closed its own copies, so no reader sees the end of its file
    /// until `go`, and each does once its holder has exited; what is not
    /// kept, the child closed at once.
    #[test]
    fn the_child_holds_what_it_keeps_until_go() {
        use std::{io::Read, os::unix::fs::MetadataExt};
        let pipes: Vec<_> = (0..3).map(|_| std::io::pipe().unwrap()).collect();
        let (mut other_rx, other_tx) = std::io::pipe().unwrap();
        let names: Vec<String> = pipes
            .iter()
            .map(|(_, tx)| {
                let m = fs::metadata(format!("/proc/self/fd/{}", tx.as_raw_fd())).unwrap();
                format!("pipe:[{}]", m.ino())
            })
            .collect();
        let h = Handoff::start_keeping(|t| names.iter().any(|n| n == t)).expect("a child");
        let mut readers = Vec::new();
        for (rx, tx) in pipes {
            drop(tx);
            // SAFETY: rx is open; non-blocking for the checks.
            unsafe { libc::fcntl(rx.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            readers.push(rx);
        }
        drop(other_tx);
        assert_eq!(
            other_rx.read(&mut [0u8; 1]).unwrap(),
            0,
            "not kept, yet held"
        );
        for rx in &mut readers {
            let err = rx.read(&mut [0u8; 1]).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::WouldBlock,
                "held by the child"
            );
        }
        h.go();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for rx in &mut readers {
            loop {
                match rx.read(&mut [0u8; 1]) {
                    Ok(0) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(std::time::Instant::now() < deadline, "never let go");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    other => panic!("unexpected read: {other:?}"),
                }
            }
        }
    }
}
