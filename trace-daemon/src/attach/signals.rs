//! Signals: SIGINT, SIGTERM and SIGHUP held from the first line of `main`
//! and handled once the runtime runs, so that none sent while kvscope starts
//! is lost.
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop and reload signals, installed before anything is loaded. A
/// SIGINT that arrives while kvscope attaches is then honoured: before this, a
/// background job (whose SIGINT a non-interactive shell sets to ignored) lost
/// such a signal for good and never exited.
pub struct Signals {
    source: Source,
}

enum Source {
    /// Stop on SIGINT/SIGTERM, reload on SIGHUP (trace, record, the daemon).
    Handlers {
        term: Signal,
        int: Signal,
        hup: Signal,
    },
    /// `kvscope run`: passed on to the command once it runs.
    Forward(super::forward::Forwarder),
}

/// What a signal asks of the live loop.
pub enum Sig {
    Stop(&'static str),
    Reload,
    /// Taken care of (forwarded, or a child's end): the loop looks again
    /// whether its sink is done.
    Handled,
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
        let source = Source::Handlers {
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
            hup: s(SignalKind::hangup())?,
        };
        release_signals();
        Ok(Signals { source })
    }

    /// Signals for a wrapped command: see [`super::forward`].
    pub fn forwarding(f: super::forward::Forwarder) -> Signals {
        Signals {
            source: Source::Forward(f),
        }
    }

    /// The next signal the live loop acts on.
    pub(super) async fn next(&mut self) -> anyhow::Result<Sig> {
        match &mut self.source {
            Source::Handlers { term, int, hup } => Ok(tokio::select! {
                _ = term.recv() => Sig::Stop("SIGTERM"),
                _ = int.recv() => Sig::Stop("SIGINT"),
                _ = hup.recv() => Sig::Reload,
            }),
            Source::Forward(f) => f.next().await,
        }
    }

    /// The next SIGINT or SIGTERM, by name (a SIGHUP waits for the loop).
    pub(super) async fn stop(&mut self) -> &'static str {
        match &mut self.source {
            Source::Handlers { term, int, .. } => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            Source::Forward(f) => loop {
                match f.next().await {
                    Ok(Sig::Stop(s)) => break s,
                    Ok(_) => {}
                    // Signals that cannot be read are no reason to run on.
                    Err(_) => break "an unreadable signalfd",
                }
            },
        }
    }
}
