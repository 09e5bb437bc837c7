//! A stop that comes while kvscope attaches. Attaching runs in a thread of its
//! own; the stop signal is handled by the live loop's thread. Before the first
//! program is attached there is nothing to undo and the process may exit at
//! once. After it, exiting would leave the kernel to release every link one by
//! one while the process exits (each a grace period under a global mutex), so
//! the attaching thread is told to stop between programs and detaches what it
//! attached, all of it together.
use std::sync::atomic::{AtomicU8, Ordering};

const OPEN: u8 = 0;
const ATTACHING: u8 = 1;
const STOPPED: u8 = 2;

#[derive(Debug, Default)]
pub struct AttachGate(AtomicU8);

/// What the stopping side must do after [`AttachGate::stop`].
#[derive(Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Nothing was attached, nor will be: exit at once.
    NothingAttached,
    /// The attaching thread has programs attached: wait for it to detach them.
    WaitForDetach,
}

impl AttachGate {
    pub const fn new() -> AttachGate {
        AttachGate(AtomicU8::new(OPEN))
    }

    /// The attaching thread, before its first program: false when a stop came
    /// first (then it must attach nothing).
    pub fn begin(&self) -> bool {
        self.0
            .compare_exchange(OPEN, ATTACHING, Ordering::AcqRel, Ordering::Acquire)
            .map_or_else(|now| now == ATTACHING, |_| true)
    }

    /// Asked between programs: stop attaching.
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire) == STOPPED
    }

    /// The stop signal's side.
    pub fn stop(&self) -> AfterStop {
        match self.0.swap(STOPPED, Ordering::AcqRel) {
            OPEN => AfterStop::NothingAttached,
            _ => AfterStop::WaitForDetach,
        }
    }
}

/// For attaching that no stop interrupts (a lock-watching switch, `check`).
pub static NEVER_STOPPED: AttachGate = AttachGate::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_before_attaching_needs_no_wait_and_attaches_nothing() {
        let g = AttachGate::new();
        assert_eq!(g.stop(), AfterStop::NothingAttached);
        assert!(!g.begin());
        assert!(g.stopped());
    }

    #[test]
    fn a_stop_while_attaching_is_waited_for_and_seen_between_programs() {
        let g = AttachGate::new();
        assert!(g.begin());
        assert!(!g.stopped());
        assert!(g.begin(), "begin is idempotent while attaching");
        assert_eq!(g.stop(), AfterStop::WaitForDetach);
        assert!(g.stopped());
        assert!(!g.begin());
    }
}
