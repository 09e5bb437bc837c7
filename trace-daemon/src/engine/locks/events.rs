//! Lock events on the engine: attempts (self-deadlock, new lock-order edges
//! and the cycles they close), acquisitions, releases, contention, and the
//! acquisitions inferred for entry-only hooks.
use trace_common::LockClass;

use super::{EdgeHow, EdgeSeen, Held, table, waits::Wait};
use crate::{
    engine::{
        Engine, MS, Observation,
        finding::{Finding, FindingKind, Inversion, Long},
    },
    event::{Event, Kind, LockRef},
};

fn held_from(l: &LockRef, since_ns: u64, stack_id: Option<u32>) -> Held {
    Held {
        addr: l.addr,
        class: l.class.0,
        owner: l.owner,
        since_ns,
        stack_id,
    }
}

impl Engine {
    /// Lock events (and the implicit acquire any event of a waiting thread settles).
    pub(in crate::engine) fn lock_event(&mut self, e: &Event, out: &mut Vec<Finding>) {
        self.settle_implicit(e, out);
        // A waiting thread does nothing else: any other step of it ends its wait.
        if !matches!(e.kind, Kind::ContentionBegin | Kind::LockHeld) {
            self.locks.waits.end(e.pid);
        }
        match e.kind {
            Kind::LockAttempt => self.lock_attempt(e, out),
            Kind::LockAcquired => self.lock_acquired(e, out),
            Kind::LockFailed => self.locks.attempt_failed(e.pid),
            Kind::LockReleased => self.lock_released(e, out),
            Kind::ContentionBegin | Kind::ContentionEnd => self.contention(e, out),
            Kind::LockHeld => self.lock_held(e),
            _ => self.table_edges(e, out),
        }
    }

    /// Lean: a hooked call the lock table says takes a watched lock orders it
    /// after what the owner words showed held just before.
    fn table_edges(&mut self, e: &Event, out: &mut Vec<Finding>) {
        if !self.cfg.table_edges {
            return;
        }
        let Some(class) = table::taken_by(e.hook, &self.cfg) else {
            return;
        };
        let held = self.locks.momentary(e.pid).to_vec();
        if !held.is_empty() {
            // The taken lock's address is not read: the table names its class.
            self.new_edges(e, class, 0, &held, EdgeHow::Table(e.hook), out);
        }
    }

    fn lock_attempt(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        if let Some(h) = self.locks.holds(e.pid, l.addr) {
            let taken = Some(h.since_ns);
            let lock = held_from(&l, e.ts_ns, e.stack_id);
            let held = self.locks.held_by(e.pid).to_vec();
            out.push(Finding::self_deadlock(e, lock, taken, held));
        } else {
            let held = self.locks.held_by(e.pid).to_vec();
            self.new_edges(e, l.class.0, l.addr, &held, EdgeHow::Observed, out);
        }
        self.locks
            .waiting
            .insert(e.pid, held_from(&l, e.ts_ns, e.stack_id));
        if e.hook.is_implicit_acquire() {
            self.locks.implicit.insert(e.pid, false);
        } else {
            self.locks.implicit.remove(&e.pid);
        }
    }

    /// Edges held -> `class` for each lock in `held`; an edge that closes a
    /// cycle is a lock-order inversion.
    fn new_edges(
        &mut self,
        e: &Event,
        class: LockClass,
        addr: u64,
        held: &[Held],
        how: EdgeHow,
        out: &mut Vec<Finding>,
    ) {
        let held_classes: Vec<LockClass> = held.iter().map(|h| h.class).collect();
        for h in held {
            if h.class == class || self.locks.graph.contains(h.class, class) {
                continue;
            }
            if let Some(path) = self.locks.graph.path(class, h.class) {
                let inv = Inversion {
                    holding: h.clone(),
                    want: class,
                    want_addr: addr,
                    path,
                    held: held.to_vec(),
                    stack_id: e.stack_id,
                    how,
                };
                out.push(Finding::lock_order_inversion(e, inv));
            }
            let seen = EdgeSeen {
                ts_ns: e.ts_ns,
                pid: e.pid,
                comm: e.comm,
                stack_id: e.stack_id,
                held: held_classes.clone(),
                how,
            };
            self.locks.graph.insert(h.class, class, seen);
        }
    }

    /// A thread waiting in a mutex_lock (entry-hooked only) holds the lock by
    /// the time it does anything else: at the attempt if it never contended,
    /// at the end of its contention if it did.
    fn settle_implicit(&mut self, e: &Event, out: &mut Vec<Finding>) {
        // An owner-word report is what the kernel saw, not a step of the thread.
        if e.kind == Kind::LockHeld {
            return;
        }
        let Some(&contended) = self.locks.implicit.get(&e.pid) else {
            return;
        };
        let Some(w) = self.locks.waiting.get(&e.pid).cloned() else {
            self.locks.implicit.remove(&e.pid);
            return;
        };
        let same = e.lock.as_ref().is_some_and(|l| l.addr == w.addr);
        let at = match e.kind {
            // An exit was reported after all (a recording with fexit events).
            Kind::LockAcquired | Kind::LockFailed if same => {
                self.locks.implicit.remove(&e.pid);
                return;
            }
            Kind::ContentionBegin if same => {
                self.locks.implicit.insert(e.pid, true);
                return;
            }
            Kind::ContentionEnd if same => e.ts_ns,
            _ if contended => e.ts_ns,
            _ => w.since_ns,
        };
        self.locks.waiting.remove(&e.pid);
        self.locks.implicit.remove(&e.pid);
        // Measured to `e` only when the wait lasted until it.
        let check = at > w.since_ns;
        self.hold_after_wait(e, w, at, check, out);
    }

    /// The lock `w` waited for is held from `at` (`e`'s time, or the attempt's
    /// when it never contended): the wait is observed and, with `check`,
    /// compared with the threshold (measured to `e`).
    fn hold_after_wait(
        &mut self,
        e: &Event,
        w: Held,
        at: u64,
        check: bool,
        out: &mut Vec<Finding>,
    ) {
        if check {
            self.check_long(FindingKind::LongWait, e, &w, out);
        }
        self.observe(Observation::LockWait {
            class: w.class,
            secs: at.saturating_sub(w.since_ns) as f64 / 1e9,
        });
        self.locks.push_held(e.pid, Held { since_ns: at, ..w });
    }

    /// The owner word showed the thread holding the lock (at a path hook).
    fn lock_held(&mut self, e: &Event) {
        let Some(l) = e.lock else { return };
        // Not a sighting of the lock's acquire or release: a release seen
        // later of a lock taken before it was watched stays that, not an
        // unmatched release.
        let h = held_from(&l, e.ts_ns, e.stack_id);
        self.locks.momentary.entry(e.pid).or_default().push(h);
    }

    fn lock_acquired(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        let waited = self.locks.waiting.remove(&e.pid);
        let held = held_from(&l, e.ts_ns, waited.as_ref().and_then(|w| w.stack_id));
        match waited {
            Some(w) if w.addr == l.addr => {
                let since = w.since_ns;
                let w = Held {
                    since_ns: since,
                    ..held
                };
                self.hold_after_wait(e, w, e.ts_ns, true, out)
            }
            _ => self.locks.push_held(e.pid, held),
        }
    }

    fn lock_released(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        let first = self.locks.first_sighting(l.addr);
        match self.locks.release(e.pid, l.addr) {
            Some(h) => {
                self.check_long(FindingKind::LongHold, e, &h, out);
                self.observe(Observation::LockHold {
                    class: h.class,
                    secs: e.ts_ns.saturating_sub(h.since_ns) as f64 / 1e9,
                });
            }
            None => self.anomalies.release_unseen(l.class.0, first),
        }
    }

    fn contention(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        if e.kind == Kind::ContentionBegin {
            self.waits_for_itself(e, &l, out);
            self.waits_for_another(e, &l, out);
            self.locks
                .waiting
                .entry(e.pid)
                .or_insert_with(|| held_from(&l, e.ts_ns, None));
        } else if let Some(w) = self.locks.waiting.get(&e.pid).cloned()
            && w.addr == l.addr
        {
            self.check_long(FindingKind::LongWait, e, &w, out);
            // The attempt path (if hooked) will see the acquire; keep the wait
            // only for it.
        }
    }

    /// A contention on a lock the thread's owner word shows it holding (the
    /// Held report just before, lean): it waits for itself. With the mutex
    /// API hooked the attempt has already said so.
    fn waits_for_itself(&self, e: &Event, l: &LockRef, out: &mut Vec<Finding>) {
        let attempted = self
            .locks
            .waiting
            .get(&e.pid)
            .is_some_and(|w| w.addr == l.addr);
        if attempted {
            return;
        }
        let held = self.locks.held_now(e.pid);
        let Some(stack_id) = held.iter().find(|h| h.addr == l.addr).map(|h| h.stack_id) else {
            return;
        };
        let taken = self.locks.holds(e.pid, l.addr).map(|h| h.since_ns);
        let lock = held_from(l, e.ts_ns, stack_id);
        out.push(Finding::self_deadlock(e, lock, taken, held));
    }

    /// A contention on a lock another thread holds: a wait-for edge; one that
    /// closes a cycle is a deadlock, happening now.
    fn waits_for_another(&mut self, e: &Event, l: &LockRef, out: &mut Vec<Finding>) {
        let Some(holder) = e.waits_for.filter(|h| *h != e.pid) else {
            return;
        };
        let w = Wait {
            pid: e.pid,
            tgid: e.tgid,
            comm: e.comm,
            lock: held_from(l, e.ts_ns, e.stack_id),
            holder,
        };
        if let Some(cycle) = self.locks.waits.begin(w) {
            out.push(Finding::deadlock(e, cycle));
        }
    }

    fn check_long(&self, kind: FindingKind, e: &Event, h: &Held, out: &mut Vec<Finding>) {
        let threshold_ms = match kind {
            FindingKind::LongWait => self.cfg.long_wait_ms,
            _ => self.cfg.long_hold_ms,
        };
        let took_ns = e.ts_ns.saturating_sub(h.since_ns);
        if took_ns >= threshold_ms * MS {
            let long = Long {
                lock: h.clone(),
                took_ns,
                threshold_ms,
            };
            out.push(Finding::long(kind, e, long));
        }
    }
}
