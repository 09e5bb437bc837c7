//! Confirmed deadlocks: a wait-for graph over the contended waits on watched
//! locks. `lock:contention_begin` names the waiting thread; the lock's owner
//! word, read there, names the thread it waits for. A cycle is threads that
//! all wait, now, for each other: no prediction, a hang in progress.
use super::Held;
use crate::{engine::fast_hash::FastMap, event::Comm};

/// One thread waiting for a watched lock another thread holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
    /// The lock waited for; `since_ns` when the wait began, its stack.
    pub lock: Held,
    /// The thread the lock's owner word names.
    pub holder: u32,
}

/// Longer cycles than this are not followed (a handful of threads at most
/// wait on the watched locks).
const MAX_CYCLE: usize = 16;

#[derive(Default)]
pub struct WaitGraph {
    waits: FastMap<u32, Wait>,
}

impl WaitGraph {
    /// A thread began to wait; the cycle it closes, starting with it.
    pub fn begin(&mut self, w: Wait) -> Option<Vec<Wait>> {
        // The holder owns the lock now: its own wait for that lock is over,
        // though its contention_end may not have come yet (a mutex hand-off
        // makes the waiter the owner before it runs).
        if self
            .waits
            .get(&w.holder)
            .is_some_and(|h| h.lock.addr == w.lock.addr)
        {
            self.waits.remove(&w.holder);
        }
        let start = w.pid;
        let mut at = w.holder;
        let mut cycle = vec![w.clone()];
        self.waits.insert(start, w);
        for _ in 0..MAX_CYCLE {
            if at == start {
                return Some(cycle);
            }
            let next = self.waits.get(&at)?;
            // A mutex has one owner: a cycle naming one lock twice is stale.
            if cycle.iter().any(|c| c.lock.addr == next.lock.addr) {
                return None;
            }
            at = next.holder;
            cycle.push(next.clone());
        }
        None
    }

    /// The thread's wait is over (it got the lock, was interrupted, or did
    /// something else: a waiting thread does nothing).
    pub fn end(&mut self, pid: u32) {
        if !self.waits.is_empty() {
            self.waits.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use trace_common::LockClass;

    use super::*;

    fn wait(pid: u32, class: LockClass, holder: u32) -> Wait {
        Wait {
            pid,
            tgid: 1,
            comm: Comm::from("t"),
            lock: Held {
                addr: class as u64,
                class,
                owner: 0,
                since_ns: 0,
                stack_id: None,
            },
            holder,
        }
    }

    #[test]
    fn a_cycle_is_found_when_it_closes_and_not_after_a_wait_ends() {
        let mut g = WaitGraph::default();
        assert!(g.begin(wait(1, LockClass::KvmLock, 2)).is_none());
        let c = g.begin(wait(2, LockClass::VfioDevSetLock, 1)).unwrap();
        assert_eq!(c.iter().map(|w| w.pid).collect::<Vec<_>>(), [2, 1]);
        g.end(1);
        g.end(2);
        assert!(g.begin(wait(2, LockClass::VfioDevSetLock, 1)).is_none());
        // A chain that ends at a running thread is no deadlock.
        assert!(g.begin(wait(3, LockClass::KvmLock, 2)).is_none());
    }

    /// 1 waits for the lock 2 holds; 2 hands it off to 1 (now its owner,
    /// its contention_end not yet seen) and waits for it again: 2 waits for
    /// 1, and 1 waits for nothing. No deadlock (seen on the patched kernel's
    /// open/close race before this rule).
    #[test]
    fn a_hand_off_is_no_cycle() {
        let mut g = WaitGraph::default();
        assert!(g.begin(wait(1, LockClass::VfioGroupLock, 2)).is_none());
        assert!(g.begin(wait(2, LockClass::VfioGroupLock, 1)).is_none());
        // And a real ABBA still is one.
        let mut g = WaitGraph::default();
        assert!(g.begin(wait(1, LockClass::KvmLock, 2)).is_none());
        assert!(g.begin(wait(2, LockClass::VfioGroupLock, 1)).is_some());
    }
}
