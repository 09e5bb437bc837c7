//! Watched-lock state per thread: held locks, pending attempts, the lock-order
//! graph. The state is private; the engine changes it only through the
//! methods here (`events.rs` maps lock events onto them).
mod events;
pub mod graph;
mod table;
pub mod waits;

use crate::engine::fast_hash::{FastMap, FastSet};

use trace_common::LockClass;

pub use self::graph::{EdgeHow, EdgeSeen, LockGraph};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub addr: u64,
    pub class: LockClass,
    pub owner: u64,
    pub since_ns: u64,
    pub stack_id: Option<u32>,
}

#[derive(Default)]
pub struct LockState {
    /// Held locks per thread, in acquisition order. Bounded (`MAX_HELD`).
    held: FastMap<u32, Vec<Held>>,
    /// A pending attempt per thread: lock, since, stack.
    waiting: FastMap<u32, Held>,
    /// Threads whose pending attempt is a mutex_lock (void: it cannot fail, and
    /// it is hooked at entry only, an fexit costing more than the filter): the
    /// value says whether a contention began. The lock is held once the thread
    /// does anything else, or once its contention ends.
    implicit: FastMap<u32, bool>,
    graph: LockGraph,
    /// Locks the thread was seen to hold by their owner word at a path hook
    /// (lean: no acquire or release is seen), valid for its next event only.
    momentary: FastMap<u32, Vec<Held>>,
    /// Contended waits now in progress: who waits for whom.
    waits: self::waits::WaitGraph,
    /// Lock addresses seen in any lock event so far (bounded: `MAX_SEEN`).
    seen: FastSet<u64>,
}

/// Past this many lock addresses the set starts again (one entry per watched
/// object); a release right after a restart may then be taken for a first
/// sighting, never the other way round.
const MAX_SEEN: usize = 1 << 16;

/// Deeper nesting than this means we missed releases; the oldest is dropped.
pub const MAX_HELD: usize = 48;

impl LockState {
    /// Records that `addr` appeared in a lock event; true if it never had.
    pub fn first_sighting(&mut self, addr: u64) -> bool {
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(addr)
    }

    pub fn held_by(&self, pid: u32) -> &[Held] {
        self.held.get(&pid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Held now: the acquisitions seen, then the locks the owner words showed
    /// at the path hook just before (those not already among them).
    pub fn held_now(&self, pid: u32) -> Vec<Held> {
        let mut v = self.held_by(pid).to_vec();
        for h in self.momentary.get(&pid).into_iter().flatten() {
            if !v.iter().any(|x| x.addr == h.addr) {
                v.push(h.clone());
            }
        }
        v
    }

    /// What the owner words showed the thread holding at its path hook just
    /// before (lean).
    pub fn momentary(&self, pid: u32) -> &[Held] {
        self.momentary.get(&pid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// After the thread's next event, what its owner words showed is stale.
    pub fn end_momentary(&mut self, pid: u32) {
        // Called for every event: no hashing while nothing is pending.
        if self.momentary.is_empty() {
            return;
        }
        self.momentary.remove(&pid);
    }

    pub fn holds(&self, pid: u32, addr: u64) -> Option<&Held> {
        self.held_by(pid).iter().find(|h| h.addr == addr)
    }

    pub fn graph(&self) -> &LockGraph {
        &self.graph
    }

    fn push_held(&mut self, pid: u32, h: Held) {
        let v = self.held.entry(pid).or_default();
        v.push(h);
        if v.len() > MAX_HELD {
            v.remove(0);
        }
    }

    /// Removes the innermost hold of `addr`; returns it.
    fn release(&mut self, pid: u32, addr: u64) -> Option<Held> {
        let v = self.held.get_mut(&pid)?;
        let i = v.iter().rposition(|h| h.addr == addr)?;
        let h = v.remove(i);
        if v.is_empty() {
            self.held.remove(&pid);
        }
        Some(h)
    }

    /// The thread is gone: nothing it held or waited for stays.
    pub fn forget_thread(&mut self, pid: u32) {
        self.held.remove(&pid);
        self.momentary.remove(&pid);
        self.waiting.remove(&pid);
        self.implicit.remove(&pid);
        self.waits.end(pid);
    }

    /// Lock watching went lean: no acquire or release is seen from now on,
    /// so what was seen held (and any pending attempt) would go stale.
    pub fn forget_acquires(&mut self) {
        self.held.clear();
        self.waiting.clear();
        self.implicit.clear();
    }

    /// The attempt failed (trylock, interrupted or killed wait).
    fn attempt_failed(&mut self, pid: u32) {
        self.waiting.remove(&pid);
        self.implicit.remove(&pid);
    }
}
