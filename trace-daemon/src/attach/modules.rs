//! The kernel modules kvscope's hooks live in, watched while it runs. A kprobe
//! on a module's function dies with the module, and a module loaded after
//! the attach (vfio_pci, loaded by libvirt when it first assigns a device) has
//! no hook at all: both leave kvscope blind. Each load of a module is told
//! apart by its address in /proc/modules and the inode of its BTF file in
//! /sys/kernel/btf (a new node per load), so a reload at the same address is
//! still seen.
use std::{collections::BTreeMap, fmt, os::unix::fs::MetadataExt as _};

/// Modules with hooked functions or with types the programs read: KVM, VFIO
/// and its drivers, iommufd, the mdev bus.
pub const WATCHED: &[&str] = &[
    "kvm",
    "kvm_amd",
    "kvm_intel",
    "vfio",
    "vfio_pci",
    "vfio_pci_core",
    "vfio_iommu_type1",
    "iommufd",
    "mdev",
    "vfio_mdev",
];

/// One load of a module: where it sits, and its BTF node (0 without BTF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub address: u64,
    pub btf_inode: u64,
}

/// The watched modules loaded now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modules(BTreeMap<String, Load>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Loaded(String),
    Unloaded(String),
    /// Unloaded and loaded again between two looks.
    Reloaded(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Loaded(m) => write!(f, "module {m} loaded"),
            Change::Unloaded(m) => write!(f, "module {m} unloaded"),
            Change::Reloaded(m) => write!(f, "module {m} reloaded"),
        }
    }
}

/// Every `Change::kind`.
pub const CHANGES: &[&str] = &["loaded", "unloaded", "reloaded"];

impl Change {
    pub fn module(&self) -> &str {
        match self {
            Change::Loaded(m) | Change::Unloaded(m) | Change::Reloaded(m) => m,
        }
    }

    /// For a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Loaded(_) => "loaded",
            Change::Unloaded(_) => "unloaded",
            Change::Reloaded(_) => "reloaded",
        }
    }
}

impl Modules {
    /// The watched modules now. Unreadable /proc/modules (no modules
    /// support): none, and none ever change.
    pub fn now() -> Modules {
        let text = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        Modules::parse(&text, |m| {
            std::fs::metadata(format!("/sys/kernel/btf/{m}")).map_or(0, |md| md.ino())
        })
    }

    /// From /proc/modules' text (`name size refs deps state address`) and
    /// the BTF inode of each module; only the watched and live ones.
    pub fn parse(text: &str, btf_inode: impl Fn(&str) -> u64) -> Modules {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(name), Some(state)) = (f.first(), f.get(4)) else {
                continue;
            };
            // A module still loading has no hooks yet; one going away is gone.
            if !WATCHED.contains(name) || *state != "Live" {
                continue;
            }
            let address = f
                .get(5)
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            let load = Load {
                address,
                btf_inode: btf_inode(name),
            };
            map.insert((*name).to_owned(), load);
        }
        Modules(map)
    }

    /// What changed from `self` to `now`, by module name.
    pub fn changes(&self, now: &Modules) -> Vec<Change> {
        let mut out = Vec::new();
        for (m, load) in &now.0 {
            match self.0.get(m) {
                None => out.push(Change::Loaded(m.clone())),
                Some(before) if before != load => out.push(Change::Reloaded(m.clone())),
                Some(_) => {}
            }
        }
        for m in self.0.keys().filter(|m| !now.0.contains_key(*m)) {
            out.push(Change::Unloaded(m.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
kvm_amd 200704 0 - Live 0xffffffffc0a00000
kvm 1409024 1 kvm_amd, Live 0xffffffffc0800000
irqbypass 12288 1 kvm, Live 0xffffffffc0700000
";

    #[test]
    fn only_watched_live_modules_count() {
        let m = Modules::parse(
            &format!("{BEFORE}vfio_pci 16384 0 - Loading 0xffffffffc0b00000\n"),
            |_| 7,
        );
        assert_eq!(m.0.len(), 2, "{m:?}");
        assert_eq!(
            m.0["kvm"],
            Load {
                address: 0xffffffffc0800000,
                btf_inode: 7
            }
        );
    }

    #[test]
    fn loads_unloads_and_reloads_are_told_apart() {
        let before = Modules::parse(BEFORE, |_| 7);
        // vfio_pci appears; kvm_amd goes; kvm comes back at the same address
        // with a new BTF node (a reload between two looks).
        let now = Modules::parse(
            "kvm 1409024 0 - Live 0xffffffffc0800000\nvfio_pci 16384 0 - Live 0xffffffffc0b00000\n",
            |m| if m == "kvm" { 9 } else { 7 },
        );
        let mut got: Vec<String> = before.changes(&now).iter().map(|c| c.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "module kvm reloaded",
                "module kvm_amd unloaded",
                "module vfio_pci loaded"
            ]
        );
        assert!(now.changes(&now).is_empty());
    }

    #[test]
    fn hidden_addresses_still_tell_a_reload_by_btf() {
        let a = Modules::parse("kvm 1 0 - Live 0x0000000000000000\n", |_| 3);
        let b = Modules::parse("kvm 1 0 - Live 0x0000000000000000\n", |_| 4);
        assert_eq!(a.changes(&b), [Change::Reloaded("kvm".into())]);
    }
}
