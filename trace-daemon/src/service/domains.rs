//! Per-VM series, named as the operator knows the VM: the libvirt domain,
//! else QEMU's -name, else the creating process (`comm[pid]`), else
//! `unnamed`. Bounded: live VMs only (a destroyed VM's series goes), at most
//! [`MAX_DOMAINS`] names, the rest summed under [`OVERFLOW`].
use std::collections::BTreeMap;

use crate::engine::Engine;

pub const MAX_DOMAINS: usize = 100;
/// The name the VMs past [`MAX_DOMAINS`] are counted under.
pub const OVERFLOW: &str = "_other";

/// What the series of one name hold (VMs of the same name summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainRow {
    pub vms: i64,
    /// users_count as the kernel last showed it.
    pub users: i64,
    pub zombies: i64,
}

/// Live VMs by name, capped.
pub fn by_domain(e: &Engine) -> BTreeMap<String, DomainRow> {
    let mut rows: BTreeMap<String, DomainRow> = BTreeMap::new();
    // Oldest first: the names that make the cut stay from scrape to scrape.
    let mut live: Vec<_> = e.live_vms().filter(|v| !v.is_destroyed()).collect();
    live.sort_by_key(|v| (v.first_ns, v.addr));
    for v in live {
        let name = v
            .identity
            .as_ref()
            .map_or_else(|| "unnamed".to_owned(), crate::identity::Identity::label);
        let known = rows.contains_key(&name);
        let key = if known || rows.len() < MAX_DOMAINS {
            name
        } else {
            OVERFLOW.to_owned()
        };
        let r = rows.entry(key).or_default();
        r.vms += 1;
        r.users += i64::from(v.users.unwrap_or(0).max(0));
        r.zombies += i64::from(v.is_zombie());
    }
    rows
}
