//! Findings in words: the one-line summary, the evidence as lines (timeline
//! excerpts, the lockdep-shaped reports), and the JSON shape of a finding.
//! The engine hands typed evidence; every sentence is written here.
use serde::Serialize;
use trace_common::LockClass;

use crate::{
    engine::{
        Finding, FindingKind, ObjectRole, Severity, Thread,
        evidence::{Evidence, Inversion, Long, PutFault, Recent},
        locks::{Held, waits::Wait},
        timeline::Step,
    },
    output::event_line::ts,
    output::wall::Clock,
};

/// The thread a finding is about (the first it names).
fn who(f: &Finding) -> String {
    f.threads
        .first()
        .map_or_else(|| "?".to_owned(), |t| format!("{}/{}", t.comm, t.pid))
}

fn names(classes: &[LockClass]) -> Vec<&'static str> {
    classes.iter().map(|c| c.name()).collect()
}

/// One line, plain words.
pub fn summary(f: &Finding) -> String {
    let s = evidence_summary(f);
    match &f.vm_name {
        Some(n) => format!("{s} [VM {n}]"),
        None => s,
    }
}

fn evidence_summary(f: &Finding) -> String {
    match &f.evidence {
        Evidence::GetAfterZero { vm, destroyed, .. } => format!(
            "reference taken on VM {:#x} {}",
            vm.addr,
            if *destroyed {
                "after it was destroyed"
            } else {
                "whose count was 0"
            }
        ),
        Evidence::GetSafeFailed { vm, .. } => format!(
            "kvm_get_kvm_safe failed on VM {:#x}: a reference was asked for while the VM was being torn down",
            vm.addr
        ),
        Evidence::UnbalancedPut(p) => put_summary(p),
        Evidence::LeakedRef { device, vm, .. } => {
            format!(
                "device {:#x} released still holding VM {vm:#x}",
                device.addr
            )
        }
        Evidence::ZombieVm(z) => format!(
            "VM {:#x} gen {} not destroyed {} s after its fd was closed",
            z.vm.addr,
            z.vm.generation,
            z.after_ms as f64 / 1e3
        ),
        Evidence::DestroyUnderLock { vm, .. } => {
            let n = names(&f.locks);
            format!(
                "VM {:#x} destroyed under VFIO lock{} {}",
                vm.addr,
                if n.len() > 1 { "s" } else { "" },
                n.join(", ")
            )
        }
        Evidence::SelfDeadlock { lock, .. } => format!(
            "{} acquiring {} it already holds: self-deadlock",
            who(f),
            lock.class.name()
        ),
        Evidence::Inversion(inv) => {
            let c = names(&inv.cycle_classes());
            if c.len() == 2 {
                format!("lock order inversion between {} and {}", c[0], c[1])
            } else {
                format!(
                    "lock order inversion: a cycle of {} locks, {} -> {}",
                    c.len(),
                    c.join(" -> "),
                    c[0]
                )
            }
        }
        Evidence::LongWait(l) => long_summary(f, "waited", l),
        Evidence::LongHold(l) => long_summary(f, "held", l),
        Evidence::Deadlock(cycle) => format!(
            "deadlock: {} threads wait for each other on {}",
            cycle.len(),
            names(&f.locks).join(" and ")
        ),
    }
}

fn put_summary(p: &PutFault) -> String {
    match p {
        PutFault::AfterDestroy { vm, .. } => {
            format!("put on VM {:#x} after the VM was destroyed", vm.addr)
        }
        PutFault::BelowZero { vm, before, .. } => format!(
            "put on VM {:#x} with users_count {before} (below zero after it)",
            vm.addr
        ),
        PutFault::NotHolder { vm, holder, .. } => format!(
            "put on VM {:#x} by {holder} which holds no reference",
            vm.addr
        ),
        PutFault::KvmOpsNoGet { device, .. } => format!(
            "kvm_ops->put_kvm() with no get_kvm() on vfio device {:#x} (kvm_ops path)",
            device.addr
        ),
        PutFault::KvmOpsOpenError {
            device, get_failed, ..
        } => format!(
            "kvm_ops->put_kvm() on the open error path of vfio device {:#x}, {} (kvm_ops path)",
            device.addr,
            if *get_failed {
                "after get_kvm() failed"
            } else {
                "with no get_kvm() (its group had no KVM)"
            }
        ),
    }
}

fn long_summary(f: &Finding, verb: &str, l: &Long) -> String {
    format!(
        "{} {verb} {} for {:.1} ms",
        who(f),
        l.lock.class.name(),
        l.took_ns as f64 / 1e6
    )
}

/// The evidence, one line each.
pub fn detail(f: &Finding) -> Vec<String> {
    match &f.evidence {
        Evidence::GetAfterZero { recent, .. } | Evidence::GetSafeFailed { recent, .. } => {
            excerpt(recent)
        }
        Evidence::UnbalancedPut(p) => put_detail(p),
        Evidence::LeakedRef { device, vm, recent } => {
            let mut d = vec![format!(
                "device {:#x} fully closed (open_count 0) but its reference on VM {vm:#x} was never given back",
                device.addr
            )];
            d.extend(excerpt(recent));
            d
        }
        Evidence::ZombieVm(z) => {
            let held: Vec<String> = z
                .holders
                .iter()
                .map(|(h, n)| format!("{h} ({n})"))
                .collect();
            let mut d = vec![format!(
                "VM fd closed {:.1} s ago; users_count {}; still held by: {}",
                z.closed_for_ns as f64 / 1e9,
                z.users.map_or("unknown".to_owned(), |u| u.to_string()),
                if held.is_empty() {
                    "nobody named".to_owned()
                } else {
                    held.join(", ")
                }
            )];
            d.extend(excerpt(&z.recent));
            d
        }
        Evidence::DestroyUnderLock { held, recent, .. } => destroy_detail(f, held, recent),
        Evidence::SelfDeadlock {
            lock,
            taken_ns,
            held,
            ..
        } => self_deadlock_detail(f, lock, *taken_ns, held),
        Evidence::Inversion(inv) => inversion_detail(f, inv),
        Evidence::LongWait(l) | Evidence::LongHold(l) => vec![format!(
            "threshold {} ms; since {}",
            l.threshold_ms,
            ts(l.lock.since_ns)
        )],
        Evidence::Deadlock(cycle) => deadlock_detail(cycle),
    }
}

/// Each wait of the cycle: who, for which lock, held by whom, since when.
fn deadlock_detail(cycle: &[Wait]) -> Vec<String> {
    let mut d = vec![
        "DEADLOCK: every thread below waits for a lock the next one holds (seen waiting now, not predicted)".to_owned(),
    ];
    let name = |pid: u32| {
        cycle
            .iter()
            .find(|w| w.pid == pid)
            .map_or_else(|| format!("{pid}"), |w| format!("{}/{pid}", w.comm))
    };
    for w in cycle {
        d.push(format!(
            "  {}/{} waits since {} for {} at {:#x}, held by {}{}",
            w.comm,
            w.pid,
            ts(w.lock.since_ns),
            w.lock.class.name(),
            w.lock.addr,
            name(w.holder),
            w.lock
                .stack_id
                .map(|s| format!(" (stack #{s})"))
                .unwrap_or_default()
        ));
    }
    d.push(
        "none of them can go on until one is killed (a killable or interruptible wait) or the machine is rebooted".into(),
    );
    d
}

fn put_detail(p: &PutFault) -> Vec<String> {
    match p {
        PutFault::AfterDestroy { recent, .. }
        | PutFault::BelowZero { recent, .. }
        | PutFault::NotHolder { recent, .. } => excerpt(recent),
        PutFault::KvmOpsNoGet { recent, .. } => {
            let mut d = vec![
                "the device's first open found no KVM on its group, so VFIO never called kvm_ops->get_kvm()".to_owned(),
                "its last close calls kvm_ops->put_kvm() anyway: the kvm_ops patch puts whenever open_count drops to 0 and kvm_ops is set".to_owned(),
                "put_kvm(void) names no VM: a driver that does not guard its own state drops a reference it never took".to_owned(),
            ];
            d.extend(excerpt(recent));
            d
        }
        PutFault::KvmOpsOpenError { ret, .. } => vec![
            format!(
                "VFIO_GROUP_GET_DEVICE_FD failed with {ret} on the device's first open, and this thread took no reference in between"
            ),
            "the kvm_ops patch's err_undo_count path calls put_kvm() whenever open_count drops back to 0 and kvm_ops is set".to_owned(),
            "so the driver is asked to drop a reference it never got (unless the open failed before get_kvm(), at try_module_get)".to_owned(),
        ],
    }
}

fn destroy_detail(f: &Finding, held: &[Held], recent: &Recent) -> Vec<String> {
    let vfio = names(&f.locks);
    let mut d = vec![
        format!(
            "{} entered kvm_destroy_vm holding {}; the whole VM teardown (kvm_lock, arch destroy, srcu sync, mmu notifier) runs under them",
            who(f),
            vfio.join(" and ")
        ),
        "held locks:".to_owned(),
    ];
    for (i, h) in held.iter().enumerate() {
        d.push(format!(
            "  #{i}: {} at {:#x} (owner {:#x})",
            h.class.name(),
            h.addr,
            h.owner
        ));
    }
    d.extend(excerpt(recent));
    d
}

fn self_deadlock_detail(
    f: &Finding,
    lock: &Held,
    taken_ns: Option<u64>,
    held: &[Held],
) -> Vec<String> {
    let class = lock.class.name();
    let taken = match taken_ns {
        Some(t) => format!(
            "taken {:.3} ms earlier",
            f.first_ns.saturating_sub(t) as f64 / 1e6
        ),
        None => "its acquire unseen: the mutex's owner word names this task".to_owned(),
    };
    let mut d = vec![
        "WARNING: possible recursive locking detected (self-deadlock)".to_owned(),
        format!("{} is trying to acquire lock:", who(f)),
        format!("  ({class}) at {:#x}, owner {:#x}", lock.addr, lock.owner),
        "but task is already holding lock:".into(),
        format!("  ({class}) at {:#x}, {taken}", lock.addr),
        "a mutex is not recursive: this thread will wait forever (hung task in 120 s).".into(),
    ];
    d.extend(held_list(held));
    d
}

/// As lockdep's print_circular_bug: the new dependency, the existing chain
/// (in reverse order, every link), the chain when longer than two, the
/// unsafe scenario, the held locks.
fn inversion_detail(f: &Finding, inv: &Inversion) -> Vec<String> {
    let a = inv.holding.class.name();
    let b = inv.want.name();
    let stack = |s: Option<u32>| s.map(|s| format!(" stack #{s}")).unwrap_or_default();
    let mut d = vec![
        "WARNING: possible circular locking dependency detected".to_owned(),
        format!("{} is trying to acquire lock:", who(f)),
        match inv.want_addr {
            0 => format!("  ({b}) (address not read: the lock table says this call takes it)"),
            w => format!("  ({b}) at {w:#x}"),
        },
        "but task is already holding lock:".into(),
        format!("  ({a}) at {:#x}", inv.holding.addr),
        "which lock already depends on the new lock.".into(),
        "the existing dependency chain (in reverse order) is:".into(),
    ];
    for (i, (from, to, seen)) in inv.path.iter().enumerate().rev() {
        d.push(format!(
            "-> #{} ({} -> {}): first seen at {} by {}/{}{} [{}]",
            i + 1,
            from.name(),
            to.name(),
            ts(seen.ts_ns),
            seen.comm,
            seen.pid,
            stack(seen.stack_id),
            seen.how.describe()
        ));
    }
    d.push(format!(
        "-> #0 ({a} -> {b}): now, by {}{} [{}]",
        who(f),
        stack(inv.stack_id),
        inv.how.describe()
    ));
    d.push("other info that might help us debug this:".into());
    let cycle = names(&inv.cycle_classes());
    if cycle.len() > 2 {
        // lockdep: "Chain exists of: A --> B --> C", the target first.
        let mut chain: Vec<&str> = cycle[1..].to_vec();
        chain.push(cycle[0]);
        d.push("Chain exists of:".into());
        d.push(format!("  {}", chain.join(" --> ")));
    }
    // CPU1 holds the lock whose edge leads back to `a` (`b` itself when the
    // cycle has two locks), as lockdep's scenario names the chain's parent.
    let mid = cycle.last().copied().unwrap_or(b);
    d.extend([
        " Possible unsafe locking scenario:".into(),
        "       CPU0                    CPU1".into(),
        "       ----                    ----".into(),
        format!("  lock({a});"),
        format!("                               lock({mid});"),
        format!("                               lock({a});"),
        format!("  lock({b});"),
        "  *** DEADLOCK ***".into(),
    ]);
    d.extend(held_list(&inv.held));
    d
}

fn held_list(held: &[Held]) -> Vec<String> {
    let mut v = vec![format!("{} lock(s) held:", held.len())];
    for (i, h) in held.iter().enumerate() {
        v.push(format!(
            "  #{i}: ({}) at {:#x}, owner {:#x}",
            h.class.name(),
            h.addr,
            h.owner
        ));
    }
    v
}

/// Timeline steps quoted as evidence, one line each.
pub fn excerpt(recent: &Recent) -> Vec<String> {
    recent.iter().map(|(s, c)| step_line(s, *c)).collect()
}

/// One step as a line: time, thread, `~` for an inferred step, what, the
/// count change, `count` (the count standing after it, `Timeline::counted`),
/// the holder, the VM a device step concerns, and the hook that saw it
/// (several hooks can see one operation: each is a line).
pub fn step_line(s: &Step, count: Option<i32>) -> String {
    use std::fmt::Write as _;
    let mut line = format!(
        "  {} {}[{}] {}{}",
        ts(s.ts_ns),
        s.comm,
        s.pid,
        if s.inferred() { "~" } else { "" },
        s.kind
    );
    if s.delta != 0 {
        let _ = write!(line, " {:+}", s.delta);
    }
    // Never a silent gap: a count not read yet is said to be unknown.
    match count {
        Some(c) => {
            let _ = write!(line, " -> {c}");
        }
        None => line += " -> ?",
    }
    if let Some(h) = &s.holder {
        let _ = write!(line, " ({h})");
    }
    if let Some(v) = s.vm {
        let _ = write!(line, " VM {v:#x}");
    }
    if let Some(h) = &s.hook {
        let _ = write!(line, "  [{}]", h.symbol());
    }
    line
}

/// A finding in JSON: its data and its words (`summary`, `detail`), the
/// shape `report --json`, `trace --json` and the daemon's log carry.
#[derive(Serialize)]
pub struct FindingJson<'a> {
    pub kind: FindingKind,
    pub severity: Severity,
    pub summary: String,
    /// In JSON as `[["kvm", "0x..."], ...]`.
    pub objects: Vec<(&'static str, String)>,
    pub locks: Vec<&'static str>,
    pub threads: &'a [Thread],
    pub detail: Vec<String>,
    pub stacks: &'a [u32],
    pub first_ns: u64,
    pub last_ns: u64,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<&'a str>,
    /// first_ns and last_ns on the wall clock (RFC 3339), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_wall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wall: Option<String>,
}

impl<'a> FindingJson<'a> {
    pub fn of(f: &'a Finding) -> Self {
        FindingJson {
            kind: f.kind,
            severity: f.severity(),
            summary: summary(f),
            objects: f
                .objects
                .iter()
                .map(|(r, a): &(ObjectRole, u64)| (r.name(), crate::hexaddr::format(*a)))
                .collect(),
            locks: names(&f.locks),
            threads: &f.threads,
            detail: detail(f),
            stacks: &f.stacks,
            first_ns: f.first_ns,
            last_ns: f.last_ns,
            count: f.count,
            vm_name: f.vm_name.as_deref(),
            first_wall: None,
            last_wall: None,
        }
    }

    /// With wall-clock times, when `clock` is known.
    pub fn at(mut self, clock: Option<&Clock>) -> Self {
        if let Some(c) = clock {
            self.first_wall = Some(c.rfc3339(self.first_ns));
            self.last_wall = Some(c.rfc3339(self.last_ns));
        }
        self
    }
}
