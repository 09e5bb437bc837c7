//! Watched-lock state per thread and the lock-class dependency graph, learnt
//! from what this kernel does (as lockdep builds it: an edge A -> B when B is
//! requested while A is held). A kernel whose canonical order differs from
//! another's (6.1 vs 6.2, S5) raises nothing by itself: only both orders seen on
//! one host close a cycle.
use std::collections::{BTreeMap, HashMap, HashSet};

use trace_common::LockClass;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub addr: u64,
    pub class: LockClass,
    pub owner: u64,
    pub since_ns: u64,
    pub stack_id: Option<u32>,
}

/// Where an edge of the graph was first seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSeen {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub stack_id: Option<u32>,
    /// The held locks when the edge was made, outermost first.
    pub held: Vec<LockClass>,
}

#[derive(Default)]
pub struct LockState {
    /// Held locks per thread, in acquisition order. Bounded (`MAX_HELD`).
    pub held: HashMap<u32, Vec<Held>>,
    /// A pending attempt per thread: lock, since, stack.
    pub waiting: HashMap<u32, Held>,
    /// Threads whose pending attempt is a mutex_lock (void: it cannot fail, and
    /// it is hooked at entry only, an fexit costing more than the filter): the
    /// value says whether a contention began. The lock is held once the thread
    /// does anything else, or once its contention ends.
    pub implicit: HashMap<u32, bool>,
    pub graph: BTreeMap<(LockClass, LockClass), EdgeSeen>,
    /// Lock addresses seen in any lock event so far (bounded: `MAX_SEEN`).
    seen: HashSet<u64>,
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

    pub fn holds(&self, pid: u32, addr: u64) -> Option<&Held> {
        self.held_by(pid).iter().find(|h| h.addr == addr)
    }

    pub fn push_held(&mut self, pid: u32, h: Held) {
        let v = self.held.entry(pid).or_default();
        v.push(h);
        if v.len() > MAX_HELD {
            v.remove(0);
        }
    }

    /// Removes the innermost hold of `addr`; returns it.
    pub fn release(&mut self, pid: u32, addr: u64) -> Option<Held> {
        let v = self.held.get_mut(&pid)?;
        let i = v.iter().rposition(|h| h.addr == addr)?;
        let h = v.remove(i);
        if v.is_empty() {
            self.held.remove(&pid);
        }
        Some(h)
    }

    /// A path `from` ->* `to` in the graph (BFS; the graph has a handful of classes).
    pub fn path(&self, from: LockClass, to: LockClass) -> Option<Vec<LockClass>> {
        let mut prev: HashMap<LockClass, LockClass> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        let mut seen = vec![from];
        while let Some(c) = queue.pop_front() {
            if c == to {
                let mut p = vec![to];
                let mut cur = to;
                while cur != from {
                    cur = prev[&cur];
                    p.push(cur);
                }
                p.reverse();
                return Some(p);
            }
            for (a, b) in self.graph.keys() {
                if *a == c && !seen.contains(b) {
                    seen.push(*b);
                    prev.insert(*b, c);
                    queue.push_back(*b);
                }
            }
        }
        None
    }

    pub fn edge_count(&self) -> usize {
        self.graph.len()
    }
}
