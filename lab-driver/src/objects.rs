//! The kernel's own lists of BPF programs, links and maps, by id: what a
//! kvscope process left in the kernel after it stopped or was killed. Ids are
//! handed out in rising order, so the objects a process made are those
//! between the highest ids listed before it started and after it exited
//! (nothing else in the guest makes BPF objects meanwhile).
use std::time::{Duration, Instant};

/// Ids the kernel lists, per kind, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Objects {
    programs: Vec<u32>,
    links: Vec<u32>,
    maps: Vec<u32>,
}

/// The highest id of each kind listed at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ceiling([u32; 3]);

impl Objects {
    /// What the kernel lists now. An object freed while it is being listed
    /// (its id found, then gone) is not listed.
    pub fn now() -> Objects {
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v
        };
        Objects {
            programs: sorted(
                aya::programs::loaded_programs()
                    .filter_map(|p| p.ok().map(|p| p.id()))
                    .collect(),
            ),
            links: sorted(
                aya::programs::loaded_links()
                    .filter_map(|l| l.ok().map(|l| l.id()))
                    .collect(),
            ),
            maps: sorted(
                aya::maps::loaded_maps()
                    .filter_map(|m| m.ok().map(|m| m.id()))
                    .collect(),
            ),
        }
    }

    pub fn ceiling(&self) -> Ceiling {
        let top = |v: &[u32]| v.last().copied().unwrap_or(0);
        Ceiling([top(&self.programs), top(&self.links), top(&self.maps)])
    }

    /// Only the objects with ids above `lo` and at most `hi`.
    pub fn between(&self, lo: Ceiling, hi: Ceiling) -> Objects {
        let pick = |v: &[u32], k: usize| -> Vec<u32> {
            v.iter()
                .copied()
                .filter(|id| *id > lo.0[k] && *id <= hi.0[k])
                .collect()
        };
        Objects {
            programs: pick(&self.programs, 0),
            links: pick(&self.links, 1),
            maps: pick(&self.maps, 2),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }
}

/// Polls (every 50 ms, for `bound` at most) until the kernel lists none of
/// the objects made between `lo` and `hi`; how long that took, or what it
/// still listed at the bound.
pub fn wait_gone(lo: Ceiling, hi: Ceiling, bound: Duration) -> Result<Duration, Objects> {
    let t = Instant::now();
    loop {
        let left = Objects::now().between(lo, hi);
        if left.is_empty() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > bound {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_keeps_the_ids_a_process_made() {
        let o = Objects {
            programs: vec![3, 7, 9],
            links: vec![1, 2],
            maps: vec![5],
        };
        let lo = Ceiling([3, 1, 5]);
        let hi = Ceiling([8, 2, 9]);
        assert_eq!(
            o.between(lo, hi),
            Objects {
                programs: vec![7],
                links: vec![2],
                maps: vec![],
            }
        );
        assert!(o.between(o.ceiling(), Ceiling([u32::MAX; 3])).is_empty());
    }
}
