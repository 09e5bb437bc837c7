//! Human-readable rendering of events: one line each, the way an engineer reads
//! a trace: time, comm[pid], what happened, the objects, the counts.
use std::fmt::Write as _;

use crate::event::Event;

/// When a finding happened: `at T`, or `seen N times, first T last T`.
use super::wall::Clock;

pub fn finding_when(f: &crate::engine::Finding, clock: Option<&Clock>) -> String {
    // Boot-relative, and the wall clock beside it where the clock pair is known.
    let at = |ns: u64| match clock {
        Some(c) => format!("{} ({})", ts(ns), c.rfc3339(ns)),
        None => ts(ns),
    };
    if f.count > 1 {
        format!(
            "seen {} times, first {} last {}",
            f.count,
            at(f.first_ns),
            at(f.last_ns)
        )
    } else {
        format!("at {}", at(f.first_ns))
    }
}

/// `12.345678901` seconds of the monotonic clock (as bpf_ktime_get_ns).
pub fn ts(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

pub fn line(e: &Event) -> String {
    let mut s = format!(
        "{} {}[{}] {:<16} {}",
        ts(e.ts_ns),
        e.comm,
        e.pid,
        e.kind.name(),
        e.hook.symbol()
    );
    if let Some(k) = e.kvm {
        let _ = write!(s, " kvm={k:#x}");
    }
    if let Some(u) = e.users {
        let _ = write!(s, " users_count={u}");
    }
    if let Some(d) = e.device {
        let _ = write!(s, " device={d:#x}");
    }
    if let Some(c) = e.open_count {
        let _ = write!(s, " open_count={c}");
    }
    if let Some(g) = e.group {
        let _ = write!(s, " group={g:#x}");
    }
    if let Some(fd) = e.fd {
        let _ = write!(s, " fd={fd}");
    }
    if let Some(k) = e.fd_kind {
        let _ = write!(
            s,
            " fd_kind={}",
            serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
    }
    if let Some(r) = e.file_refs {
        let _ = write!(s, " file_refs={r}");
    }
    if let Some(c) = e.child {
        let _ = write!(s, " child={c}");
    }
    if let Some(v) = e.vcpu {
        let _ = write!(s, " vcpu={v}");
    }
    if let Some(l) = &e.lock {
        let _ = write!(
            s,
            " lock={:#x} class={} object={:#x}",
            l.addr, l.class, l.owner
        );
    }
    if let Some(ok) = e.ok {
        let _ = write!(s, " ok={ok}");
    }
    if let Some(r) = e.ret {
        let _ = write!(s, " ret={r}");
    }
    if let Some(id) = e.stack_id {
        let _ = write!(s, " stack=#{id}");
    }
    s
}

#[cfg(test)]
mod tests {
    use crate::event::{Comm, Event, Kind};
    use trace_common::HookId;

    #[test]
    fn a_fork_names_its_child() {
        let mut e = Event::new(
            1,
            100,
            Comm::from("qemu"),
            Kind::ProcessFork,
            HookId::ProcessFork,
        );
        e.child = Some(101);
        let l = super::line(&e);
        assert!(l.contains("process-fork"), "{l}");
        assert!(l.ends_with(" child=101"), "{l}");
    }
}
