//! The attach-time delivery self-test. kvscope issues one harmless system call
//! that one of its own programs answers with an event (an ioctl no driver
//! defines: on /dev/null, seen by sys_enter_ioctl, it fails with ENOTTY; on
//! /dev/kvm, seen by the kvm_dev_ioctl hook where no syscall is traced, it
//! fails with EINVAL or ENOTTY; neither changes anything), then waits for that
//! event through the ring buffer. Only then does an empty
//! capture mean "nothing happened" rather than "nothing was delivered".
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use trace_common::{Event as AbiEvent, HookId, ioctl};

use crate::{
    event::{DecodeError, record_from_bytes},
    recording::Delivery,
};

/// Long enough for a loaded, emulated guest; a healthy host answers in well
/// under a millisecond.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the self-test. Records of the stream that arrive meanwhile (and any
/// that do not decode, to be counted) are kept in `pending`, in order, for the
/// live loop: nothing is lost to the test.
/// `possible` is Err with the reason when the answering program is not
/// attached; `lost` reads the self-test's own loss counter.
pub fn run(
    ring: &mut RingBuf<MapData>,
    pending: &mut Vec<Result<AbiEvent, DecodeError>>,
    possible: Result<Trigger, String>,
    lost: impl Fn() -> u64,
) -> Delivery {
    let via = match possible {
        Ok(t) => t,
        Err(why) => return unverified(format!("no self-test possible: {why}")),
    };
    let nonce = crate::attach::live::mono_now_ns() | 1;
    let started = Instant::now();
    if let Err(e) = trigger(via, nonce) {
        return unverified(format!("the self-test trigger failed: {e}"));
    }
    loop {
        while let Some(item) = ring.next() {
            let rec = record_from_bytes(&item);
            let answer = rec
                .as_ref()
                .is_ok_and(|r| r.hook == HookId::SelfTest as u16 && r.arg == nonce);
            if answer {
                return Delivery {
                    verified: true,
                    latency_us: Some(started.elapsed().as_micros() as u64),
                    detail: String::new(),
                };
            }
            pending.push(rec);
        }
        let left = TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        // Short slices: each poll re-checks the ring, so a missed wakeup
        // costs at most one slice here.
        wait_readable(ring, left.min(Duration::from_millis(100)));
    }
    let n = lost();
    unverified(if n > 0 {
        format!("the self-test event was lost: the ring buffer was full ({n} lost)")
    } else {
        format!(
            "the self-test event did not arrive within {} s",
            TIMEOUT.as_secs()
        )
    })
}

fn unverified(detail: String) -> Delivery {
    Delivery {
        verified: false,
        latency_us: None,
        detail,
    }
}

/// Where the self-test's ioctl goes, by the program that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `/dev/null`, seen by the sys_enter_ioctl tracepoint.
    DevNull,
    /// `/dev/kvm`, seen by the kvm_dev_ioctl hook (no syscall traced).
    DevKvm,
}

/// `ioctl(DEV, KVSCOPE_SELFTEST, nonce)`: refused (ENOTTY; /dev/kvm's
/// architecture handler says EINVAL) is the expected answer.
fn trigger(via: Trigger, nonce: u64) -> std::io::Result<()> {
    let path = match via {
        Trigger::DevNull => "/dev/null",
        Trigger::DevKvm => "/dev/kvm",
    };
    let dev = std::fs::File::open(path)?;
    // SAFETY: an ioctl on a valid fd; neither device defines this command, so
    // the kernel refuses it without reading or writing `nonce` as a pointer.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), ioctl::KVSCOPE_SELFTEST as _, nonce) };
    let err = std::io::Error::last_os_error();
    match (rc, err.raw_os_error()) {
        (-1, Some(libc::ENOTTY | libc::EINVAL)) => Ok(()),
        (-1, _) => Err(err),
        // Something answered an ioctl that should not exist: the event, if
        // any, still proves delivery.
        _ => Ok(()),
    }
}

fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: ring.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}
