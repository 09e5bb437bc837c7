//! The lock-class dependency graph, learnt from what this kernel does (as
//! lockdep builds it: an edge A -> B when B is requested while A is held). A
//! kernel whose canonical order differs from another's (6.1 vs 6.2, S5) raises
//! nothing by itself: only both orders seen on one host close a cycle.
use std::collections::{BTreeMap, HashMap, VecDeque};

use trace_common::{HookId, LockClass};

use crate::event::Comm;

/// How an edge A -> B was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeHow {
    /// B requested while A was held, both seen (the mutex API hooked).
    Observed,
    /// A held by its owner word at a hooked call that, per the lock table,
    /// takes B (lean: the acquire of B is not seen).
    Table(HookId),
}

impl EdgeHow {
    pub fn describe(self) -> String {
        match self {
            EdgeHow::Observed => "observed".to_owned(),
            EdgeHow::Table(h) => format!(
                "table: {} takes it; the held lock read from its owner word",
                h.symbol()
            ),
        }
    }
}

/// Where an edge of the graph was first seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSeen {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
    pub stack_id: Option<u32>,
    /// The held locks when the edge was made, outermost first.
    pub held: Vec<LockClass>,
    pub how: EdgeHow,
}

#[derive(Default)]
pub struct LockGraph {
    edges: BTreeMap<(LockClass, LockClass), EdgeSeen>,
}

impl LockGraph {
    pub fn contains(&self, from: LockClass, to: LockClass) -> bool {
        self.edges.contains_key(&(from, to))
    }

    pub fn insert(&mut self, from: LockClass, to: LockClass, seen: EdgeSeen) {
        self.edges.insert((from, to), seen);
    }

    pub fn edges(&self) -> &BTreeMap<(LockClass, LockClass), EdgeSeen> {
        &self.edges
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// A shortest path `from` ->* `to`, edge by edge (BFS; a handful of classes).
    pub fn path(
        &self,
        from: LockClass,
        to: LockClass,
    ) -> Option<Vec<(LockClass, LockClass, EdgeSeen)>> {
        let mut prev: HashMap<LockClass, LockClass> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = vec![from];
        while let Some(c) = queue.pop_front() {
            if c == to {
                return Some(self.walk_back(&prev, from, to));
            }
            for (a, b) in self.edges.keys() {
                if *a == c && !seen.contains(b) {
                    seen.push(*b);
                    prev.insert(*b, c);
                    queue.push_back(*b);
                }
            }
        }
        None
    }

    fn walk_back(
        &self,
        prev: &HashMap<LockClass, LockClass>,
        from: LockClass,
        to: LockClass,
    ) -> Vec<(LockClass, LockClass, EdgeSeen)> {
        let mut path = Vec::new();
        let mut cur = to;
        while cur != from {
            let p = prev[&cur];
            path.push((p, cur, self.edges[&(p, cur)].clone()));
            cur = p;
        }
        path.reverse();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> EdgeSeen {
        EdgeSeen {
            ts_ns: 0,
            pid: 1,
            comm: Comm::from("t"),
            stack_id: None,
            held: vec![],
            how: EdgeHow::Observed,
        }
    }

    #[test]
    fn path_follows_the_edges_in_order() {
        use LockClass::*;
        let mut g = LockGraph::default();
        g.insert(KvmLock, VfioGroupLock, seen());
        g.insert(VfioGroupLock, VfioDevSetLock, seen());
        let p = g.path(KvmLock, VfioDevSetLock).unwrap();
        let hops: Vec<(LockClass, LockClass)> = p.iter().map(|(a, b, _)| (*a, *b)).collect();
        assert_eq!(
            hops,
            [(KvmLock, VfioGroupLock), (VfioGroupLock, VfioDevSetLock)]
        );
        assert!(g.path(VfioDevSetLock, KvmLock).is_none());
    }
}
