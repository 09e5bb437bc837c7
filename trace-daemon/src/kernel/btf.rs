//! Struct field offsets and function presence from the running kernel's BTF
//! (vmlinux, plus the module BTF of kvm and vfio where they are modules), parsed
//! with `btf-rs`. There is no CO-RE for Rust-written programs yet, so these
//! offsets are handed to them at load (`ProbeConfig`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
};

use btf_rs::{Btf, BtfType, Type};
use serde::Serialize;
use trace_common::{OFFSET_UNKNOWN, ProbeConfig};

/// Modules whose BTF holds the types we read, when they are not built in.
pub const MODULES: &[&str] = &["kvm", "kvm_amd", "kvm_intel", "vfio", "vfio_pci_core"];

use super::btf_file::{self, UserBtf};

pub struct KernelBtf {
    vmlinux: Option<Btf>,
    modules: Vec<(String, Btf)>,
    /// `--btf` files, searched after the kernel's own BTF.
    user: Vec<UserBtf>,
    /// Why a BTF file could not be read (shown by `check`).
    pub problems: Vec<String>,
}

/// What a run needs of the kernel's BTF after start-up, taken from
/// [`KernelBtf`] so that the parsed BTF (tens of MB for vmlinux, with its name
/// index) is dropped before attaching: a daemon keeps this for its life.
#[derive(Clone, Debug, Default)]
pub struct BtfFacts {
    pub vmlinux: bool,
    /// Modules whose BTF was read.
    pub modules: Vec<String>,
    /// Labels of the `--btf` files in use.
    pub user: Vec<String>,
    /// Why a BTF file could not be read (shown by `check`).
    pub problems: Vec<String>,
    /// Whether enum bpf_func_id has BPF_FUNC_get_func_arg (None: no vmlinux
    /// BTF or no such enum).
    pub get_func_arg: Option<bool>,
    /// Which of the asked symbols are FUNCs in vmlinux BTF.
    vmlinux_funcs: BTreeSet<&'static str>,
}

impl BtfFacts {
    /// A FUNC of this name in vmlinux BTF (only symbols asked for at
    /// [`KernelBtf::facts`] can be).
    pub fn vmlinux_has_func(&self, name: &str) -> bool {
        self.vmlinux_funcs.contains(name)
    }
}

/// `--btf` files (global option, KVSCOPE_BTF, the daemon's `btf` key), given
/// by `main` before anything is loaded.
static USER_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub fn add_user_files(files: &[PathBuf]) {
    if let Ok(mut v) = USER_FILES.lock() {
        for f in files {
            if !v.contains(f) {
                v.push(f.clone());
            }
        }
    }
}

impl KernelBtf {
    pub fn load() -> Self {
        let dir = Path::new("/sys/kernel/btf");
        let modules: Vec<(String, PathBuf)> = MODULES
            .iter()
            .map(|m| (m.to_string(), dir.join(m)))
            .filter(|(_, p)| p.exists())
            .collect();
        let mut k = Self::from_files(&dir.join("vmlinux"), &modules);
        let user = USER_FILES.lock().map(|v| v.clone()).unwrap_or_default();
        for f in &user {
            match btf_file::load(f, k.vmlinux.as_ref(), Path::new("/sys/module")) {
                Ok(u) => k.user.push(u),
                Err(e) => k.problems.push(e),
            }
        }
        k
    }

    /// vmlinux BTF (if any) and user-supplied BTF only (tests).
    pub fn with_user(vmlinux: Option<Btf>, user: Vec<UserBtf>) -> Self {
        KernelBtf {
            vmlinux,
            modules: Vec::new(),
            user,
            problems: Vec::new(),
        }
    }

    pub fn from_files(vmlinux: &Path, modules: &[(String, PathBuf)]) -> Self {
        let mut problems = Vec::new();
        let vmlinux = match Btf::from_file(vmlinux) {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(format!("{}: {e}", vmlinux.display()));
                None
            }
        };
        let mut mods = Vec::new();
        if let Some(base) = &vmlinux {
            for (name, path) in modules {
                match Btf::from_split_file(path, base) {
                    Ok(b) => mods.push((name.clone(), b)),
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        KernelBtf {
            vmlinux,
            modules: mods,
            user: Vec::new(),
            problems,
        }
    }

    /// What the rest of the run needs; `funcs`: the symbols it may ask
    /// [`BtfFacts::vmlinux_has_func`] about.
    pub fn facts(&self, funcs: impl IntoIterator<Item = &'static str>) -> BtfFacts {
        BtfFacts {
            vmlinux: self.vmlinux.is_some(),
            modules: self.modules.iter().map(|(n, _)| n.clone()).collect(),
            user: self.user.iter().map(|u| u.label.clone()).collect(),
            problems: self.problems.clone(),
            get_func_arg: self.vmlinux_enum_has("bpf_func_id", "BPF_FUNC_get_func_arg"),
            vmlinux_funcs: funcs
                .into_iter()
                .filter(|f| self.vmlinux_has_func(f))
                .collect(),
        }
    }

    /// Every BTF with where it came from: the kernel's own first.
    fn all(&self) -> impl Iterator<Item = (String, &Btf)> {
        self.vmlinux
            .iter()
            .map(|b| ("vmlinux BTF".to_owned(), b))
            .chain(
                self.modules
                    .iter()
                    .map(|(n, b)| (format!("module BTF /sys/kernel/btf/{n}"), b)),
            )
            .chain(self.user.iter().map(|u| (u.label.clone(), &u.btf)))
    }

    /// Where `struct name` was found (the first BTF that defines it).
    pub fn offset_source(&self, name: &str) -> Option<String> {
        self.find_struct(name).map(|(from, _, _)| from)
    }

    /// A FUNC of this name in vmlinux BTF: what aya 0.14 can attach fentry to.
    pub fn vmlinux_has_func(&self, name: &str) -> bool {
        self.vmlinux.as_ref().is_some_and(|b| {
            b.resolve_types_by_name(name)
                .is_ok_and(|ts| ts.iter().any(|t| matches!(t, Type::Func(_))))
        })
    }

    /// Whether `enum name` in vmlinux BTF has the value `value`: how a kernel
    /// says which BPF helpers it has (`bpf_func_id`'s `BPF_FUNC_*`). None
    /// without vmlinux BTF or without that enum.
    pub fn vmlinux_enum_has(&self, name: &str, value: &str) -> Option<bool> {
        let btf = self.vmlinux.as_ref()?;
        let types = btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Enum(e) => Some(
                e.members
                    .iter()
                    .any(|m| btf.resolve_name(m).is_ok_and(|n| n == value)),
            ),
            Type::Enum64(e) => Some(
                e.members
                    .iter()
                    .any(|m| btf.resolve_name(m).is_ok_and(|n| n == value)),
            ),
            _ => None,
        })
    }

    fn find_struct(&self, name: &str) -> Option<(String, &Btf, btf_rs::Struct)> {
        for (from, btf) in self.all() {
            if let Ok(types) = btf.resolve_types_by_name(name) {
                for t in types {
                    // A struct with members; a forward declaration has none.
                    if let Type::Struct(s) = t
                        && !s.members.is_empty()
                    {
                        return Some((from, btf, s));
                    }
                }
            }
        }
        None
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.find_struct(name).is_some()
    }

    /// Byte offset of `path` (e.g. `["users_count", "refs", "counter"]`) inside
    /// `struct name`, following typedefs and anonymous members. None when any
    /// step is missing on this kernel, or is a bitfield.
    pub fn field_offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        let (_, btf, mut s) = self.find_struct(name)?;
        let mut total_bits = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (bits, member_type) = find_member(btf, &s, field)?;
            total_bits += bits;
            if i + 1 < path.len() {
                s = strip_to_struct(btf, member_type)?;
            }
        }
        total_bits.is_multiple_of(8).then_some(total_bits / 8)
    }
}

/// Finds `field` in `s` (looking inside anonymous struct/union members):
/// its bit offset from the start of `s` and its type id.
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Option<(u32, u32)> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = m.get_type_id()?;
        if name == field {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return None;
            }
            return Some((m.bit_offset(), ty));
        }
        if name.is_empty()
            && let Some(inner) = strip_to_struct(btf, ty)
            && let Some((bits, t)) = find_member(btf, &inner, field)
        {
            return Some((m.bit_offset() + bits, t));
        }
    }
    None
}

/// Follows typedef/const/volatile to a struct or union.
fn strip_to_struct(btf: &Btf, mut id: u32) -> Option<btf_rs::Struct> {
    for _ in 0..16 {
        match btf.resolve_type_by_id(id).ok()? {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(t) => id = t.get_type_id()?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => id = t.get_type_id()?,
            Type::TypeTag(t) => id = t.get_type_id()?,
            _ => return None,
        }
    }
    None
}

/// One offset the programs need: where it goes in `ProbeConfig` and where it
/// comes from in BTF. The single table of struct knowledge.
pub struct OffsetSpec {
    pub field: &'static str,
    pub strukt: &'static str,
    pub path: &'static [&'static str],
    slot: fn(&mut ProbeConfig) -> &mut u32,
}

macro_rules! offsets {
    ($($field:ident: $strukt:literal $($p:literal).+;)*) => {
        pub const OFFSETS: &[OffsetSpec] = &[$(OffsetSpec {
            field: stringify!($field),
            strukt: $strukt,
            path: &[$($p),+],
            slot: |c| &mut c.$field,
        },)*];
    };
}

offsets! {
    kvm_users_count: "kvm" "users_count"."refs"."counter";
    kvm_lock: "kvm" "lock";
    vfio_device_open_count: "vfio_device" "open_count";
    vfio_device_group: "vfio_device" "group";
    vfio_device_dev_set: "vfio_device" "dev_set";
    vfio_device_kvm: "vfio_device" "kvm";
    vfio_device_kvm_ops: "vfio_device" "kvm_ops";
    vfio_device_set_lock: "vfio_device_set" "lock";
    vfio_group_group_lock: "vfio_group" "group_lock";
    vfio_group_kvm: "vfio_group" "kvm";
    vfio_device_file_device: "vfio_device_file" "device";
    file_private_data: "file" "private_data";
    file_f_op: "file" "f_op";
    kvm_device_kvm: "kvm_device" "kvm";
    kvm_device_private: "kvm_device" "private";
    kvm_vfio_lock: "kvm_vfio" "lock";
    task_files: "task_struct" "files";
    files_fdt: "files_struct" "fdt";
    fdtable_fd: "fdtable" "fd";
    fdtable_max_fds: "fdtable" "max_fds";
    mutex_owner: "mutex" "owner";
    task_pid: "task_struct" "pid";
    task_stack: "task_struct" "stack";
    kvm_vcpu_kvm: "kvm_vcpu" "kvm";
    kvm_vcpu_vcpu_id: "kvm_vcpu" "vcpu_id";
    file_count: "file" "f_count"."counter";
    file_ref: "file" "f_ref"."refcnt"."counter";
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OffsetReport {
    pub field: &'static str,
    /// `struct.path`, as written in C.
    pub source: String,
    /// None: not on this kernel; the datum is reported unknown.
    pub offset: Option<u32>,
    /// Where the offset was read: `vmlinux BTF`, `module BTF ...`, `--btf ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Fills a `ProbeConfig` from BTF, with a report line per offset.
pub fn probe_config(btf: &KernelBtf) -> (ProbeConfig, Vec<OffsetReport>) {
    let mut cfg = ProbeConfig::UNKNOWN;
    let mut report = Vec::new();
    for spec in OFFSETS {
        let off = btf.field_offset(spec.strukt, spec.path);
        *(spec.slot)(&mut cfg) = off.unwrap_or(OFFSET_UNKNOWN);
        report.push(OffsetReport {
            field: spec.field,
            source: format!("{}.{}", spec.strukt, spec.path.join(".")),
            offset: off,
            from: off.and_then(|_| btf.offset_source(spec.strukt)),
        });
    }
    (cfg, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Option<KernelBtf> {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: this host has no /sys/kernel/btf/vmlinux");
            return None;
        }
        Some(KernelBtf::from_files(p, &[]))
    }

    /// Offsets of `struct kvm` read from this machine's real vmlinux BTF (KVM is
    /// built in here). users_count is a refcount_t: refs.counter is its int.
    #[test]
    fn kvm_offsets_from_real_vmlinux_btf() {
        let Some(btf) = host() else { return };
        let facts = btf.facts(["kvm_put_kvm", "kvscope_no_such_func"]);
        assert!(facts.vmlinux);
        assert_eq!(facts.get_func_arg, Some(true));
        assert!(facts.vmlinux_has_func("kvm_put_kvm"));
        assert!(!facts.vmlinux_has_func("kvscope_no_such_func"));
        let users = btf
            .field_offset("kvm", &["users_count"])
            .expect("kvm.users_count");
        let counter = btf
            .field_offset("kvm", &["users_count", "refs", "counter"])
            .expect("kvm.users_count.refs.counter");
        // refcount_t { atomic_t refs { int counter } }: all at offset 0 inside.
        assert_eq!(users, counter);
        let lock = btf.field_offset("kvm", &["lock"]).expect("kvm.lock");
        assert_ne!(lock, users);
        assert!(btf.field_offset("kvm", &["no_such_field"]).is_none());
        assert!(btf.field_offset("no_such_struct_kvscope", &["x"]).is_none());
        // file.private_data: the anchor of fd -> object in the tracepoint tier.
        assert!(btf.field_offset("file", &["private_data"]).is_some());
        assert!(btf.vmlinux_has_func("kvm_put_kvm"));
        // This kernel (6.x) has the helper; no kernel has the made-up one.
        assert_eq!(
            btf.vmlinux_enum_has("bpf_func_id", "BPF_FUNC_get_func_arg"),
            Some(true)
        );
        assert_eq!(
            btf.vmlinux_enum_has("bpf_func_id", "BPF_FUNC_kvscope_none"),
            Some(false)
        );
        assert_eq!(btf.vmlinux_enum_has("kvscope_no_enum", "X"), None);
        assert!(!btf.vmlinux_has_func("kvm_no_such_function_kvscope"));
    }

    #[test]
    fn probe_config_marks_missing_fields_unknown() {
        let Some(btf) = host() else { return };
        let (cfg, report) = probe_config(&btf);
        assert_eq!(report.len(), OFFSETS.len());
        assert_ne!(cfg.kvm_users_count, OFFSET_UNKNOWN);
        assert_ne!(cfg.task_files, OFFSET_UNKNOWN);
        // This host has no VFIO: those fields must be unknown, not guessed.
        let vfio_built = btf.has_struct("vfio_device");
        assert_eq!(cfg.vfio_device_open_count == OFFSET_UNKNOWN, !vfio_built);
        for r in &report {
            let slot = OFFSETS.iter().find(|s| s.field == r.field).unwrap();
            let mut c = cfg;
            assert_eq!(*(slot.slot)(&mut c), r.offset.unwrap_or(OFFSET_UNKNOWN));
        }
    }
}
