//! BTF supplied by the user (`--btf FILE`) for a kernel whose modules carry
//! none (before 5.11 there is no module BTF, and `struct vfio_group`,
//! `struct vfio_device`, `struct kvm_vfio` live only in modules). The one
//! trustworthy source is the module's own debug information: `pahole -J` on
//! the `.ko` of the distribution's debug package for that exact kernel adds a
//! `.BTF` section to it. Such a file is accepted only when its GNU build id is
//! the running module's (`/sys/module/NAME/notes/.note.gnu.build-id`):
//! offsets from another build would be silently wrong. A raw BTF file (no
//! ELF) carries no build id: it is used, and said to be unverified.
use std::path::{Path, PathBuf};

use btf_rs::Btf;
use object::{Object as _, ObjectSection as _};

/// A user-supplied BTF, ready to search, and how it was vouched for.
pub struct UserBtf {
    pub btf: Btf,
    /// For `check`: `--btf PATH (module kvm, build id 1a2b..: matches the running module)`.
    pub label: String,
}

/// Reads `path`: an ELF module with a `.BTF` section whose build id must be
/// the running module's (under `sys_module`, normally `/sys/module`), or raw
/// BTF. Split BTF (pahole `--btf_base`) is read against `vmlinux`.
pub fn load(path: &Path, vmlinux: Option<&Btf>, sys_module: &Path) -> Result<UserBtf, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--btf {}: {e}", path.display()))?;
    let shown = path.display();
    let (btf_bytes, label) = if bytes.starts_with(b"\x7fELF") {
        let elf = object::File::parse(&*bytes)
            .map_err(|e| format!("--btf {shown}: not a readable ELF file: {e}"))?;
        let btf = elf
            .section_by_name(".BTF")
            .and_then(|s| s.data().ok())
            .ok_or_else(|| {
                format!(
                    "--btf {shown}: no .BTF section (run `pahole -J` on the module's debug .ko)"
                )
            })?
            .to_vec();
        let name = module_name(&elf, path);
        let id = elf.build_id().ok().flatten().ok_or_else(|| {
            format!("--btf {shown}: no GNU build id to match with the running module")
        })?;
        let running = running_build_id(sys_module, &name)?;
        if running != id {
            return Err(format!(
                "--btf {shown}: build id {} is not that of the running module {name} ({}): BTF of another build would give wrong offsets",
                hex(id),
                hex(&running)
            ));
        }
        let label = format!(
            "--btf {shown} (module {name}, build id {}: the running module's)",
            hex(id)
        );
        (btf, label)
    } else {
        let label = format!("--btf {shown} (raw BTF: no build id, unverified)");
        (bytes, label)
    };
    let btf = match Btf::from_bytes(&btf_bytes) {
        Ok(b) => b,
        Err(whole) => match vmlinux.map(|base| Btf::from_split_bytes(&btf_bytes, base)) {
            Some(Ok(b)) => b,
            _ => return Err(format!("--btf {shown}: not BTF: {whole}")),
        },
    };
    Ok(UserBtf { btf, label })
}

/// The module's name: `.modinfo`'s `name=`, else the file name before its
/// first dot (`kvm.ko` -> `kvm`), with `-` read as `_` as the kernel does.
fn module_name(elf: &object::File<'_>, path: &Path) -> String {
    let from_modinfo = elf
        .section_by_name(".modinfo")
        .and_then(|s| s.data().ok())
        .and_then(|d| {
            d.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"name="))
                .map(|n| String::from_utf8_lossy(n).into_owned())
        });
    from_modinfo
        .unwrap_or_else(|| {
            let f = path.file_name().unwrap_or_default().to_string_lossy();
            f.split('.').next().unwrap_or_default().to_owned()
        })
        .replace('-', "_")
}

/// The build id in `/sys/module/NAME/notes/.note.gnu.build-id`: one ELF note
/// (namesz, descsz, type, "GNU\0", the id).
fn running_build_id(sys_module: &Path, name: &str) -> Result<Vec<u8>, String> {
    let p: PathBuf = sys_module.join(name).join("notes/.note.gnu.build-id");
    let n = std::fs::read(&p).map_err(|e| {
        format!(
            "module {name}: its build id cannot be read ({}: {e}); load the module first",
            p.display()
        )
    })?;
    let word = |i: usize| {
        n.get(i..i + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    };
    let (Some(namesz), Some(descsz)) = (word(0), word(4)) else {
        return Err(format!("{}: too short for an ELF note", p.display()));
    };
    let start = 12 + (namesz as usize).div_ceil(4) * 4;
    n.get(start..start + descsz as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format!("{}: truncated ELF note", p.display()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// An ELF module made here: gcc -g, linked with a build id, then `pahole
    /// -J` (as for a debug .ko); `/sys/module` stands in as a directory.
    fn module(dir: &Path) -> Option<PathBuf> {
        let have = |t: &str| Command::new(t).arg("--version").output().is_ok();
        if !have("gcc") || !have("pahole") {
            eprintln!("skipped: gcc or pahole (dwarves) is not installed");
            return None;
        }
        let c = dir.join("kvscope_m.c");
        std::fs::write(
            &c,
            "struct kvm_vfio { long pad[3]; int lock; };\n\
             struct kvm_vfio kvscope_v; int kvscope_f(void) { return kvscope_v.lock; }\n\
             static const char mi[] __attribute__((section(\".modinfo\"), used)) = \"name=kvscope_m\";\n",
        )
        .unwrap();
        let ko = dir.join("kvscope_m.ko");
        let ok = Command::new("gcc")
            .args([
                "-g",
                "-fPIC",
                "-shared",
                "-nostdlib",
                "-Wl,--build-id=sha1",
                "-o",
            ])
            .arg(&ko)
            .arg(&c)
            .status()
            .unwrap()
            .success();
        assert!(ok, "gcc");
        let ok = Command::new("pahole")
            .arg("-J")
            .arg(&ko)
            .status()
            .unwrap()
            .success();
        assert!(ok, "pahole -J");
        Some(ko)
    }

    fn sys_with(dir: &Path, id: &[u8]) -> PathBuf {
        let sys = dir.join("sys-module");
        let notes = sys.join("kvscope_m/notes");
        std::fs::create_dir_all(&notes).unwrap();
        let mut n = Vec::new();
        n.extend(4u32.to_ne_bytes());
        n.extend((id.len() as u32).to_ne_bytes());
        n.extend(3u32.to_ne_bytes());
        n.extend(b"GNU\0");
        n.extend(id);
        std::fs::write(notes.join(".note.gnu.build-id"), n).unwrap();
        sys
    }

    #[test]
    fn a_module_btf_is_used_only_with_the_running_build_id() {
        let dir = std::env::temp_dir().join(format!("kvscope-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(ko) = module(&dir) else { return };
        let bytes = std::fs::read(&ko).unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        let id = elf.build_id().unwrap().unwrap().to_vec();

        let sys = sys_with(&dir, &id);
        let u = load(&ko, None, &sys).expect("matching build id");
        assert!(u.label.contains("module kvscope_m"), "{}", u.label);
        assert!(u.label.contains("the running module's"), "{}", u.label);
        let kb = crate::kernel::btf::KernelBtf::with_user(None, vec![u]);
        assert_eq!(kb.field_offset("kvm_vfio", &["lock"]), Some(24));
        assert!(kb.offset_source("kvm_vfio").unwrap().starts_with("--btf"));

        let mut other = id.clone();
        other[0] ^= 0xff;
        let sys = sys_with(&dir, &other);
        let e = load(&ko, None, &sys).err().expect("another build refused");
        assert!(
            e.contains("is not that of the running module kvscope_m"),
            "{e}"
        );

        let missing = load(&ko, None, &dir.join("nowhere")).err().unwrap();
        assert!(missing.contains("load the module first"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
