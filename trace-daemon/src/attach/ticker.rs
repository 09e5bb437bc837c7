//! The live loop's periodic tick, from a timerfd.
//!
//! tokio's timer wheel fires a one-second timer in two steps (it wakes at the
//! 64 ms slot that holds the deadline, then again at the deadline): two
//! wakeups per tick for an idle agent. A timerfd wakes the loop once per
//! period, exactly when it is due.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

pub struct Ticker {
    fd: AsyncFd<OwnedFd>,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

impl Ticker {
    /// Ticks every `period` (at least a millisecond: a zero period would
    /// disarm the timer), the first one period from now.
    pub fn every(period: Duration) -> anyhow::Result<Ticker> {
        let period = period.max(Duration::from_millis(1));
        // SAFETY: timerfd_create takes no pointers; the fd is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            anyhow::bail!("timerfd_create: {}", std::io::Error::last_os_error());
        }
        // SAFETY: raw is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let spec = libc::itimerspec {
            it_interval: timespec(period),
            it_value: timespec(period),
        };
        // SAFETY: spec outlives the call; the old value is not asked for.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            anyhow::bail!("timerfd_settime: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the timerfd for as long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Ticker { fd })
    }

    /// Waits for the next tick; ticks missed while the loop was busy are
    /// one tick, not a burst.
    pub async fn tick(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into the 8-byte buffer.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            // Read or not (EAGAIN: woken without an expiry), the timer has
            // nothing more to say until its next expiry.
            guard.clear_ready();
            if n == 8 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks come one period apart, and missed ones collapse into one.
    #[tokio::test(flavor = "current_thread")]
    async fn ticks_once_per_period() {
        let mut t = Ticker::every(Duration::from_millis(30)).unwrap();
        let start = std::time::Instant::now();
        t.tick().await.unwrap();
        let first = start.elapsed();
        assert!(first >= Duration::from_millis(29), "{first:?}");
        std::thread::sleep(Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        t.tick().await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(5),
            "the missed ticks are due at once"
        );
        let t1 = std::time::Instant::now();
        t.tick().await.unwrap();
        assert!(
            t1.elapsed() >= Duration::from_millis(1),
            "then one at a time"
        );
    }
}
