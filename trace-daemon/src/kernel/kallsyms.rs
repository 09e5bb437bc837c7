//! /proc/kallsyms: which candidate functions exist (and in which module), and
//! address -> symbol for stacks. BPF programs and trampolines are listed there
//! as `[bpf]` (when bpf_jit_kallsyms is on), but only once they exist: read it
//! again after attaching. /proc/modules bounds each module's symbols, so an
//! address past a module's end (a JIT image allocated after it) is never named
//! after that module's last symbol.
use std::{collections::HashMap, fs, path::Path};

use anyhow::Context as _;

/// Larger than any kernel function (the biggest are a few tens of KiB).
pub const MAX_FUNCTION_OFFSET: u64 = 256 * 1024;

/// A text symbol, borrowed from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym<'a> {
    pub addr: u64,
    pub name: &'a str,
    /// None: vmlinux.
    pub module: Option<&'a str>,
}

/// One row of the table: 16 bytes, the name in the shared string.
#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: u64,
    name_at: u32,
    name_len: u16,
    /// Index into `module_names`; [`VMLINUX`] for none.
    module: u16,
}

const VMLINUX: u16 = u16::MAX;

/// A host's text symbols, compact: a kernel lists 100k-200k of them, and an
/// always-on daemon keeps them for its whole life (a struct with two owned
/// strings per symbol and a name map cost ~20 MB; this ~5 MB).
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    /// Text symbols sorted by address.
    syms: Vec<Entry>,
    /// Every name, one after another.
    names: String,
    /// Indices into `syms`, sorted by name (equal names by address).
    by_name: Vec<u32>,
    module_names: Vec<String>,
    /// False when every address read as 0 (kptr_restrict, not root).
    pub addresses_visible: bool,
    /// Addresses of the few data symbols we watch (`DATA_SYMBOLS`).
    pub data: HashMap<String, u64>,
    /// Loaded modules' core extents (/proc/modules), by name.
    modules: HashMap<String, ModuleExtent>,
}

/// A module's core allocation: its text lies in `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleExtent {
    pub base: u64,
    pub size: u64,
}

/// Data the loader needs by address: the global `kvm_lock` (watched from
/// user space) and KVM's stats file operations (the anon_inode_getfile
/// program keeps only files made with them).
pub const DATA_SYMBOLS: &[&str] = &["kvm_lock", "kvm_vcpu_stats_fops", "kvm_vm_stats_fops"];

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
        let mut k = Kallsyms::default();
        let mut any_nonzero = false;
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if matches!(ty, "b" | "B" | "d" | "D" | "r" | "R") && DATA_SYMBOLS.contains(&name) {
                k.data.insert(name.to_owned(), addr);
                continue;
            }
            if !matches!(ty, "t" | "T" | "w" | "W") {
                continue;
            }
            any_nonzero |= addr != 0;
            let module = it
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'));
            k.push(addr, name, module);
        }
        k.addresses_visible = any_nonzero;
        k.syms.sort_by_key(|e| e.addr);
        k.syms.shrink_to_fit();
        k.names.shrink_to_fit();
        k.index();
        k
    }

    fn push(&mut self, addr: u64, name: &str, module: Option<&str>) {
        // No kernel symbol comes near 64 KiB (KSYM_NAME_LEN is 512).
        let Ok(name_len) = u16::try_from(name.len()) else {
            return;
        };
        let module = match module {
            None => VMLINUX,
            // A module's symbols come together: look at the latest first.
            Some(m) => match self.module_names.iter().rposition(|n| n == m) {
                Some(i) => i as u16,
                None => {
                    self.module_names.push(m.to_owned());
                    (self.module_names.len() - 1) as u16
                }
            },
        };
        self.syms.push(Entry {
            addr,
            name_at: self.names.len() as u32,
            name_len,
            module,
        });
        self.names.push_str(name);
    }

    fn index(&mut self) {
        let mut by_name: Vec<u32> = (0..self.syms.len() as u32).collect();
        by_name.sort_by(|&a, &b| self.name_of(a as usize).cmp(self.name_of(b as usize)));
        self.by_name = by_name;
    }

    fn name_of(&self, i: usize) -> &str {
        let e = &self.syms[i];
        &self.names[e.name_at as usize..][..e.name_len as usize]
    }

    fn sym(&self, i: usize) -> Sym<'_> {
        let e = &self.syms[i];
        Sym {
            addr: e.addr,
            name: self.name_of(i),
            module: self.module_names.get(e.module as usize).map(String::as_str),
        }
    }

    /// The symbol of this name (of several, the one at the highest address).
    pub fn get(&self, name: &str) -> Option<Sym<'_>> {
        let end = self
            .by_name
            .partition_point(|&i| self.name_of(i as usize) <= name);
        let i = *self.by_name.get(end.checked_sub(1)?)? as usize;
        (self.name_of(i) == name).then(|| self.sym(i))
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
    pub fn symbolize(&self, addr: u64) -> Option<(Sym<'_>, u64)> {
        if !self.addresses_visible {
            return None;
        }
        let i = self
            .syms
            .partition_point(|s| s.addr <= addr)
            .checked_sub(1)?;
        let s = self.sym(i);
        let off = addr - s.addr;
        if off > MAX_FUNCTION_OFFSET {
            return None;
        }
        if let Some(m) = s.module
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
            Some((s, off)) => match s.module {
                Some(m) => format!("{}+{off:#x} [{m}]", s.name),
                None => format!("{}+{off:#x}", s.name),
            },
            None => format!("{addr:#x}"),
        }
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
        assert_eq!(k.get("vfio_df_open").unwrap().module, Some("vfio"));
        assert!(k.get("some_data").is_none());
        assert_eq!(k.data.get("kvm_lock"), Some(&0xffffffff82300100));
    }

    #[test]
    fn symbolizes_to_nearest_lower_symbol() {
        let k = Kallsyms::parse(SAMPLE);
        let (s, off) = k.symbolize(0xffffffff81283c60 + 0x14).unwrap();
        assert_eq!((s.name, off), ("kvm_put_kvm", 0x14));
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
    fn equal_names_give_the_highest_address_and_prefixes_do_not_match() {
        let k = Kallsyms::parse(
            "ffffffff81000100 t cleanup\nffffffff81000300 t cleanup\nffffffff81000200 T cleanup_all\n",
        );
        assert_eq!(k.get("cleanup").unwrap().addr, 0xffffffff81000300);
        assert_eq!(k.get("cleanup_all").unwrap().addr, 0xffffffff81000200);
        assert!(k.get("clean").is_none());
        assert!(k.get("cleanup_al").is_none());
        assert!(k.get("zzz").is_none());
        assert!(Kallsyms::default().get("cleanup").is_none());
    }

    /// The table's row stays 16 bytes: a kernel has 100k-200k of them.
    #[test]
    fn rows_are_compact() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
