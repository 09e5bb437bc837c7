//! Signals of `kvscope run`, read from a signalfd so that each one says who
//! sent it. Before the command runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT stop
//! kvscope. Once it runs, a signal sent by a process (`kill`) is passed on to
//! the command, and one the kernel sent (a terminal's Ctrl-C, a hangup) is
//! not: the command is in kvscope's process group and got it already (what
//! sudo does). kvscope then ends when the command's process tree has.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
};

use tokio::io::unix::AsyncFd;

use super::signals::Sig;

/// Passed on to the command once it runs.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The signals that stop kvscope while the command has not started.
const STOPS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

pub struct Forwarder {
    fd: AsyncFd<OwnedFd>,
    /// The command's pid once it runs; 0 before.
    target: Arc<AtomicI32>,
}

/// `si_code` of a signal the kernel sent (a terminal's, a hangup).
const SI_KERNEL: i32 = 0x80;

impl Forwarder {
    /// Blocks the forwarded signals and SIGCHLD in this thread (every thread
    /// started after inherits that) and reads them from a signalfd. Must run
    /// inside the runtime, before any other thread is started.
    pub fn install(target: Arc<AtomicI32>) -> anyhow::Result<Forwarder> {
        // SAFETY: plain sigset manipulation on a local set; signalfd returns
        // a new fd or -1.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
                libc::sigaddset(&mut set, *s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            anyhow::bail!("signalfd: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by signalfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the signalfd for as long as it lives.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| anyhow::anyhow!("polling the signalfd: {e}"))?;
        Ok(Forwarder { fd, target })
    }

    /// The next signal, forwarded or turned into what the live loop does.
    pub async fn next(&mut self) -> anyhow::Result<Sig> {
        let info = self.read().await?;
        let signo = info.ssi_signo as libc::c_int;
        let target = self.target.load(Ordering::SeqCst);
        Ok(match decide(signo, info.ssi_code, target) {
            Action::Stop => Sig::Stop(name(signo)),
            Action::Forward => {
                // SAFETY: kill with a pid we started and a valid signal.
                unsafe { libc::kill(target, signo) };
                log::info!(
                    "{} from pid {} passed on to pid {target}",
                    name(signo),
                    info.ssi_pid
                );
                Sig::Handled
            }
            Action::Nothing => Sig::Handled,
        })
    }

    async fn read(&mut self) -> anyhow::Result<libc::signalfd_siginfo> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: an all-zero signalfd_siginfo is valid; read fills it.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let r = guard.try_io(|fd| {
                // SAFETY: reading at most `size` bytes into `info`.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        (&mut info as *mut libc::signalfd_siginfo).cast(),
                        size,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) if n == size => return Ok(info),
                Ok(Ok(n)) => anyhow::bail!("signalfd: short read of {n} bytes"),
                Ok(Err(e)) => anyhow::bail!("signalfd: {e}"),
                Err(_would_block) => continue,
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Stop,
    Forward,
    Nothing,
}

/// What a signal does: `code` is its si_code, `target` the command (0 while
/// it has not started).
fn decide(signo: libc::c_int, code: i32, target: i32) -> Action {
    if signo == libc::SIGCHLD {
        return Action::Nothing;
    }
    if target == 0 {
        return if STOPS.contains(&signo) {
            Action::Stop
        } else {
            Action::Nothing
        };
    }
    if code == SI_KERNEL {
        // The terminal sent it to the whole foreground group: the command
        // has it already.
        Action::Nothing
    } else {
        Action::Forward
    }
}

fn name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGCHLD => "SIGCHLD",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_command_runs_only_stop_signals_stop() {
        assert_eq!(decide(libc::SIGINT, 0, 0), Action::Stop);
        assert_eq!(decide(libc::SIGQUIT, SI_KERNEL, 0), Action::Stop);
        assert_eq!(decide(libc::SIGUSR1, 0, 0), Action::Nothing);
        assert_eq!(decide(libc::SIGCHLD, 0, 0), Action::Nothing);
    }

    #[test]
    fn once_it_runs_sent_signals_pass_on_and_the_terminals_do_not() {
        assert_eq!(decide(libc::SIGTERM, 0, 42), Action::Forward);
        assert_eq!(decide(libc::SIGUSR2, -6, 42), Action::Forward);
        assert_eq!(decide(libc::SIGINT, SI_KERNEL, 42), Action::Nothing);
        assert_eq!(decide(libc::SIGCHLD, 1, 42), Action::Nothing);
    }
}
