//! kallsyms read again after attach, in the background.
use crate::kernel::kallsyms::Kallsyms;

/// BPF programs and trampolines are in kallsyms only once they exist, so it
/// is read again after attach to name `[bpf]` frames; in the background
/// (nearly a second in a TCG guest): ready does not wait for it, the first
/// stack symbolised does.
pub struct LateKallsyms {
    done: std::sync::OnceLock<Kallsyms>,
    pending: std::sync::Mutex<Option<std::thread::JoinHandle<anyhow::Result<Kallsyms>>>>,
}

impl LateKallsyms {
    pub fn read_in_background() -> Self {
        let handle = std::thread::Builder::new()
            .name("kvscope-kallsyms".into())
            .spawn(Kallsyms::read)
            .map_err(|e| log::warn!("re-reading kallsyms after attach: {e}"))
            .ok();
        LateKallsyms {
            done: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(handle),
        }
    }

    /// As [`get`](Self::get), but never waits: while the read is still
    /// under way, `before`. For a stop, which must not wait seconds (under
    /// emulation) for names of BPF frames.
    pub fn get_if_ready<'a>(&'a self, before: &'a Kallsyms) -> &'a Kallsyms {
        let finished = self
            .pending
            .lock()
            .is_ok_and(|p| p.as_ref().is_none_or(std::thread::JoinHandle::is_finished));
        if finished { self.get(before) } else { before }
    }

    /// The read after attach, once it is in (joined here if it just ended),
    /// handed over: from then on the caller's table is that one, and this
    /// serves `before` (which is it).
    pub fn take_if_in(&mut self) -> Option<Kallsyms> {
        // Joins the read if it has ended; `done` holds it once joined.
        self.get_if_ready(&Kallsyms::default());
        self.done.take()
    }

    /// The kallsyms read after attach; `before` (read before attach: BPF
    /// frames unnamed) if that read failed.
    pub fn get<'a>(&'a self, before: &'a Kallsyms) -> &'a Kallsyms {
        if let Some(k) = self.done.get() {
            return k;
        }
        // Joined under the lock: a second caller waits, then finds it set.
        let Ok(mut pending) = self.pending.lock() else {
            return before;
        };
        match pending.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(k))) => {
                let _ = self.done.set(k);
            }
            Some(Ok(Err(e))) => log::warn!("re-reading kallsyms after attach: {e:#}"),
            Some(Err(_)) => log::warn!("re-reading kallsyms after attach: the reader panicked"),
            None => {}
        }
        drop(pending);
        self.done.get().unwrap_or(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The background read is joined once and kept; without it (a failed
    /// read) the kallsyms from before attach serve.
    #[test]
    fn joined_once_then_kept() {
        let late = LateKallsyms::read_in_background();
        let before = Kallsyms::default();
        let first = late.get(&before) as *const Kallsyms;
        assert_eq!(late.get(&before) as *const Kallsyms, first);
        match Kallsyms::read() {
            // This host's kallsyms: the late read has its symbols.
            Ok(now) => assert_eq!(late.get(&before).len(), now.len()),
            Err(_) => assert!(std::ptr::eq(late.get(&before), &before)),
        }
        let failed = LateKallsyms {
            done: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(None),
        };
        assert!(std::ptr::eq(failed.get(&before), &before));
    }

    /// A stop does not wait for a read still under way; once it ended, its
    /// result serves.
    #[test]
    fn a_stop_takes_what_is_ready() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let late = LateKallsyms {
            done: std::sync::OnceLock::new(),
            pending: std::sync::Mutex::new(Some(std::thread::spawn(move || {
                let _ = wait.recv();
                Ok(Kallsyms::default())
            }))),
        };
        let before = Kallsyms::default();
        assert!(
            std::ptr::eq(late.get_if_ready(&before), &before),
            "still reading"
        );
        go.send(()).unwrap();
        while !late.pending.lock().unwrap().as_ref().unwrap().is_finished() {
            std::thread::yield_now();
        }
        assert!(
            !std::ptr::eq(late.get_if_ready(&before), &before),
            "read done"
        );
        let mut late = late;
        assert!(late.take_if_in().is_some(), "handed over once");
        assert!(late.take_if_in().is_none(), "and only once");
        assert!(
            std::ptr::eq(late.get(&before), &before),
            "then the caller's serves"
        );
    }
}
