//! Signals: SIGINT, SIGTERM and SIGHUP held from the first line of `main`
//! and handled once the runtime runs, so that none sent while kvscope starts
//! is lost.
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop and reload signals, installed before anything is loaded. A
/// SIGINT that arrives while kvscope attaches is then honoured: before this, a
/// background job (whose SIGINT a non-interactive shell sets to ignored) lost
/// such a signal for good and never exited.
pub struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    pub(super) hup: Signal,
}

/// The signals held from the first line of `main` until their handlers exist.
const HELD: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn mask_held(how: libc::c_int) {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HELD {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP. The kernel keeps a blocked signal
/// pending even where it is inherited as ignored (a background job's SIGINT),
/// so one sent while kvscope starts is delivered once the handlers exist.
/// Called first thing in `main`, before any thread is started.
pub fn hold_signals() {
    mask_held(libc::SIG_BLOCK);
}

/// Undoes [`hold_signals`] for commands that install no handlers: their
/// signals keep their inherited meaning.
pub fn release_signals() {
    mask_held(libc::SIG_UNBLOCK);
}

impl Signals {
    /// Must run inside the runtime (tokio registers the handlers with it).
    /// Releases the signals held since `main` began: pending ones arrive now.
    pub fn install() -> anyhow::Result<Signals> {
        let s = |k| signal(k).map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"));
        let signals = Signals {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        };
        release_signals();
        Ok(signals)
    }

    /// The next SIGINT or SIGTERM, by name.
    pub(super) async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
