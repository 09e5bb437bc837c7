//! /proc/kallsyms: which candidate functions exist (and in which module), and
//! address -> symbol for stacks. BPF programs and trampolines are listed there
//! as `[bpf]` (when bpf_jit_kallsyms is on), but only once they exist: read it
//! again after attaching. /proc/modules bounds each module's symbols, so an
//! address past a module's end (a JIT image allocated after it) is never named
//! after that module's last symbol.
use std::{collections::HashMap, fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Larger than any kernel function (the biggest are a few tens of KiB).
pub const MAX_FUNCTION_OFFSET: u64 = 256 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sym {
    pub addr: u64,
    pub name: String,
    /// None: vmlinux.
    pub module: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Kallsyms {
    /// Text symbols sorted by address.
    syms: Vec<Sym>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
    /// False when every address read as 0 (kptr_restrict, not root).
    pub addresses_visible: bool,
    /// Addresses of the few data symbols we watch (`DATA_SYMBOLS`).
    #[serde(default)]
    pub data: HashMap<String, u64>,
    /// Loaded modules' core extents (/proc/modules), by name.
    #[serde(default)]
    modules: HashMap<String, ModuleExtent>,
}

/// A module's core allocation: its text lies in `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleExtent {
    pub base: u64,
    pub size: u64,
}

/// Global locks registered as watched from user space.
pub const DATA_SYMBOLS: &[&str] = &["kvm_lock"];

impl Kallsyms {
    pub fn read() -> anyhow::Result<Self> {
        let mut k = Self::read_from(Path::new("/proc/kallsyms"))?;
        // Without it, module symbols keep only the distance guard.
        if let Ok(text) = fs::read_to_string("/proc/modules") {
            k.set_modules(&text);
        }
        Ok(k)
    }

    /// Module extents from /proc/modules text (`name size refs deps state
    /// addr`); lines without a visible address are skipped.
    pub fn set_modules(&mut self, text: &str) {
        self.modules = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_ascii_whitespace().collect();
                let size = f.get(1)?.parse().ok()?;
                let base = u64::from_str_radix(f.get(5)?.strip_prefix("0x")?, 16).ok()?;
                (base != 0).then(|| (f[0].to_owned(), ModuleExtent { base, size }))
            })
            .collect();
    }

    pub fn read_from(path: &Path) -> anyhow::Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Parses kallsyms text; lines that do not look like `addr type name [mod]`
    /// are skipped.
    pub fn parse(text: &str) -> Self {
        let mut syms = Vec::new();
        let mut data = HashMap::new();
        let mut any_nonzero = false;
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if matches!(ty, "b" | "B" | "d" | "D") && DATA_SYMBOLS.contains(&name) {
                data.insert(name.to_owned(), addr);
                continue;
            }
            if !matches!(ty, "t" | "T" | "w" | "W") {
                continue;
            }
            any_nonzero |= addr != 0;
            let module = it
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            syms.push(Sym {
                addr,
                name: name.to_owned(),
                module,
            });
        }
        syms.sort_by_key(|s| s.addr);
        let mut k = Kallsyms {
            syms,
            by_name: HashMap::new(),
            addresses_visible: any_nonzero,
            data,
            modules: HashMap::new(),
        };
        k.index();
        k
    }

    fn index(&mut self) {
        self.by_name = self
            .syms
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
    }

    /// Rebuilds the name index after deserialising (it is not stored).
    pub fn reindexed(mut self) -> Self {
        self.index();
        self
    }

    pub fn get(&self, name: &str) -> Option<&Sym> {
        self.by_name.get(name).map(|&i| &self.syms[i])
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `name+0xoff [module]` for a kernel text address. None past
    /// [`MAX_FUNCTION_OFFSET`] from the nearest symbol: such an address is in
    /// code kallsyms does not list (BPF programs and trampolines when
    /// bpf_jit_kallsyms is off), and naming the last symbol before the gap
    /// would be a wrong frame.
    pub fn symbolize(&self, addr: u64) -> Option<(&Sym, u64)> {
        if !self.addresses_visible {
            return None;
        }
        let i = self.syms.partition_point(|s| s.addr <= addr);
        let s = self.syms.get(i.checked_sub(1)?)?;
        let off = addr - s.addr;
        if off > MAX_FUNCTION_OFFSET {
            return None;
        }
        if let Some(m) = &s.module
            && let Some(x) = self.modules.get(m)
            && addr >= x.base.saturating_add(x.size)
        {
            return None;
        }
        Some((s, off))
    }

    /// One stack frame as printed: `name+0xoff [module]` (`[bpf]` for BPF
    /// programs and trampolines), or the raw address when nothing names it.
    pub fn frame(&self, addr: u64) -> String {
        match self.symbolize(addr) {
            Some((s, off)) => match &s.module {
                Some(m) => format!("{}+{off:#x} [{m}]", s.name),
                None => format!("{}+{off:#x}", s.name),
            },
            None => format!("{addr:#x}"),
        }
    }

    /// Only the symbols a recording needs to symbolise its stacks.
    pub fn subset<'a>(&self, addrs: impl IntoIterator<Item = &'a u64>) -> Kallsyms {
        let mut keep: Vec<Sym> = addrs
            .into_iter()
            .filter_map(|a| self.symbolize(*a).map(|(s, _)| s.clone()))
            .collect();
        keep.sort_by_key(|s| s.addr);
        keep.dedup();
        let mut k = Kallsyms {
            syms: keep,
            by_name: HashMap::new(),
            addresses_visible: self.addresses_visible,
            data: HashMap::new(),
            modules: self.modules.clone(),
        };
        k.index();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff8127c0b0 T kvm_get_kvm
ffffffff812839c0 t kvm_destroy_vm
ffffffff81283c60 T kvm_put_kvm
ffffffff81283cc0 t kvm_vm_release
ffffffff821fe7f0 T mutex_lock
ffffffff82300000 D some_data
ffffffff82300100 b kvm_lock
ffffffffc0a01000 t vfio_df_open\t[vfio]
ffffffffc0a02000 T vfio_device_put_kvm\t[vfio]
garbage line
";

    #[test]
    fn parses_text_symbols_and_modules() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.len(), 7, "data symbol and garbage skipped");
        assert!(k.addresses_visible);
        assert_eq!(k.get("kvm_destroy_vm").unwrap().module, None);
        assert_eq!(
            k.get("vfio_df_open").unwrap().module.as_deref(),
            Some("vfio")
        );
        assert!(k.get("some_data").is_none());
        assert_eq!(k.data.get("kvm_lock"), Some(&0xffffffff82300100));
    }

    #[test]
    fn symbolizes_to_nearest_lower_symbol() {
        let k = Kallsyms::parse(SAMPLE);
        let (s, off) = k.symbolize(0xffffffff81283c60 + 0x14).unwrap();
        assert_eq!((s.name.as_str(), off), ("kvm_put_kvm", 0x14));
        assert!(k.symbolize(0x1000).is_none());
    }

    #[test]
    fn addresses_far_past_the_last_symbol_stay_raw() {
        // Seen in the lab: a trampoline address named exit_dns_resolver+0x27ca4ce.
        let k = Kallsyms::parse(SAMPLE);
        let last = k.syms.last().unwrap().addr;
        assert!(k.symbolize(last + MAX_FUNCTION_OFFSET).is_some());
        assert!(k.symbolize(last + MAX_FUNCTION_OFFSET + 1).is_none());
    }

    #[test]
    fn hidden_addresses_are_detected() {
        let k = Kallsyms::parse("0000000000000000 T kvm_get_kvm\n0000000000000000 T kvm_put_kvm\n");
        assert!(!k.addresses_visible);
        assert!(k.symbolize(0).is_none());
        assert!(
            k.get("kvm_put_kvm").is_some(),
            "names still tell what exists"
        );
    }

    #[test]
    fn subset_keeps_only_needed_symbols() {
        let k = Kallsyms::parse(SAMPLE);
        let s = k.subset(&[0xffffffff81283c70, 0xffffffffc0a01010]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.symbolize(0xffffffffc0a01010).unwrap().0.name,
            "vfio_df_open"
        );
    }
}
