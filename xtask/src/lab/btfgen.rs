//! BTF for a lab kernel whose modules carry none (Debian 11's 5.10: module BTF
//! came in 5.11). Generated once per module build: the module's debug `.ko`
//! from the distribution's `-dbg` package of that exact kernel, `pahole -J`
//! (a `.BTF` section added), debug sections stripped; cached under
//! `lab/btf/BUILD-ID/NAME.ko` and checked to carry the shipped module's GNU
//! build id. kvscope takes these files with `--btf` and refuses one whose
//! build id is not the running module's.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::debian::{self, Unpacked};
use crate::setup::output;

/// The shipped module `name`.ko under the unpacked kernel, relative to
/// lib/modules/RELEASE.
fn shipped(k: &Unpacked, name: &str) -> anyhow::Result<PathBuf> {
    let dir = k.root.join("lib/modules").join(&k.release);
    let out = output(
        Command::new("find")
            .arg(dir.join("kernel"))
            .args(["-name", &format!("{name}.ko")]),
    )?;
    let path = out
        .lines()
        .next()
        .with_context(|| format!("no {name}.ko in {}", dir.display()))?;
    Ok(Path::new(path).strip_prefix(&dir)?.to_path_buf())
}

/// The GNU build id of an ELF file, as `readelf -n` prints it.
fn build_id(f: &Path) -> anyhow::Result<String> {
    let notes = output(Command::new("readelf").arg("-n").arg(f))?;
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(str::to_owned)
        .with_context(|| format!("{}: no GNU build id", f.display()))
}

/// `module_btf` where the kernel needs it (`modules` not empty).
pub fn module_btf_if_needed(
    k: &Unpacked,
    suite: Option<&str>,
    modules: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    if modules.is_empty() {
        return Ok(Vec::new());
    }
    module_btf(k, suite, modules)
}

/// BTF-carrying copies of `modules` for kernel `k` (Debian `suite`), in the
/// order given. Downloads the kernel's -dbg package only when one is missing
/// from the cache (and deletes it afterwards: it is 800 MB).
pub fn module_btf(
    k: &Unpacked,
    suite: Option<&str>,
    modules: &[&str],
) -> anyhow::Result<Vec<PathBuf>> {
    let modroot = k.root.join("lib/modules").join(&k.release);
    let mut want = Vec::new();
    for m in modules {
        let rel = shipped(k, m)?;
        let id = build_id(&modroot.join(&rel))?;
        let cached = debian::lab_dir()
            .join("btf")
            .join(&id)
            .join(format!("{m}.ko"));
        want.push((rel, id, cached));
    }
    if want.iter().all(|(_, _, c)| c.exists()) {
        return Ok(want.into_iter().map(|(_, _, c)| c).collect());
    }
    let pkg = format!("linux-image-{}-dbg", k.release);
    eprintln!("lab: module BTF for {}: from {pkg} (pahole -J)", k.release);
    let deb = debian::download(&pkg, suite)?;
    let tmp = debian::lab_dir().join("btf").join("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let debug_dir = format!("./usr/lib/debug/lib/modules/{}", k.release);
    let members: Vec<String> = want
        .iter()
        .map(|(rel, _, _)| format!("{debug_dir}/{}", rel.display()))
        .collect();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' {}",
            deb.display(),
            tmp.display(),
            members.join(" ")
        ))
        .status()?;
    if !st.success() {
        bail!(
            "extracting {} from {}: {st}",
            members.join(", "),
            deb.display()
        );
    }
    for ((_, id, cached), member) in want.iter().zip(&members) {
        let ko = tmp.join(member);
        let dbg_id = build_id(&ko)?;
        if &dbg_id != id {
            bail!(
                "{}: build id {dbg_id} of the debug module is not the shipped module's ({id})",
                ko.display()
            );
        }
        output(Command::new("pahole").arg("-J").arg(&ko))?;
        output(Command::new("objcopy").arg("--strip-debug").arg(&ko))?;
        std::fs::create_dir_all(cached.parent().unwrap())?;
        std::fs::copy(&ko, cached)?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    // 800 MB; the BTF made from it is cached by build id.
    std::fs::remove_file(&deb)?;
    Ok(want.into_iter().map(|(_, _, c)| c).collect())
}
