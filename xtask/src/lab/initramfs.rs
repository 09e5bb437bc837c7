//! A self-contained initramfs: busybox, the lab's modules in modprobe's
//! order, kvscope and the driver with their libraries, an init that runs one
//! command between markers and powers off.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use super::debian::Unpacked;
use crate::setup::output;

/// Modules the lab loads, in dependency order (resolved with modprobe).
const MODULES: &[&str] = &["kvm_amd", "vfio_pci", "vfio_iommu_type1"];
/// Loaded where the kernel has them: the mdev bus as a VFIO device (before
/// 5.16 a module of its own), for the test module's notifier mode (5.10).
const OPTIONAL: &[&str] = &["vfio_mdev"];

/// Builds the initramfs: busybox, the modules (decompressed), kvscope and the
/// scenario driver with their shared libraries, and an init running `cmd`.
/// `extra` modules (the test module) go to /lib/modules for the command to load;
/// `btf` files (modules with a .BTF section, for `kvscope --btf`) to /btf.
pub fn initramfs(
    k: &Unpacked,
    binaries: &[PathBuf],
    extra: &[PathBuf],
    btf: &[PathBuf],
    cmd: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let stage = stage(out, &["tmp", "run", "usr/bin", "btf"])?;
    let optional = OPTIONAL.iter().filter(|m| {
        show_depends(k, m)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let wanted: Vec<&str> = MODULES.iter().chain(optional).copied().collect();
    add_modules(k, &wanted, &stage)?;
    for m in extra {
        std::fs::copy(m, stage.join("lib/modules").join(m.file_name().unwrap()))?;
    }
    for b in btf {
        std::fs::copy(b, stage.join("btf").join(b.file_name().unwrap()))?;
    }
    // Binaries and their libraries, at the same paths.
    for b in binaries {
        let dst = stage.join("usr/bin").join(b.file_name().unwrap());
        std::fs::copy(b, &dst)?;
        if b.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
        {
            add_qemu_firmware(&stage)?;
        }
        // A static binary (the KVM selftests) needs nothing more.
        let ldd = Command::new("ldd").arg(b).output()?;
        if String::from_utf8_lossy(&ldd.stdout).contains("not a dynamic executable")
            || String::from_utf8_lossy(&ldd.stderr).contains("not a dynamic executable")
        {
            continue;
        }
        for l in output(Command::new("ldd").arg(b))?.lines() {
            let lib = l
                .split("=>")
                .last()
                .and_then(|s| s.split_whitespace().next())
                .filter(|s| s.starts_with('/'));
            if let Some(lib) = lib {
                let d = stage.join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(d.parent().unwrap())?;
                std::fs::copy(lib, d)?;
            }
        }
    }
    std::fs::write(stage.join("cmd"), format!("{cmd}\n"))?;
    let init = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing; mount -t bpf bpf /sys/fs/bpf
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "KVSCOPE-LAB: insmod $m failed"; done
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ]; then
    echo vfio-pci > $d/driver_override; basename $d > /sys/bus/pci/drivers_probe
  fi
done
echo KVSCOPE-LAB-BEGIN
sh /cmd; echo "KVSCOPE-LAB-RC=$?"
echo KVSCOPE-LAB-END
poweroff -f
"#;
    pack(&stage, init, out)
}

/// What QEMU's `pc` machine loads from its firmware path (Debian's QEMU
/// searches /usr/share/qemu, then /usr/share/seabios): SeaBIOS, the vAPIC
/// and DMA boot option ROMs.
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
];

fn add_qemu_firmware(stage: &Path) -> anyhow::Result<()> {
    for f in QEMU_FIRMWARE {
        let dst = stage.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap())?;
        std::fs::copy(f, &dst).map_err(|e| {
            anyhow::anyhow!("{f}: {e} (QEMU's firmware: packages seabios and qemu-system-data)")
        })?;
    }
    Ok(())
}

/// A fresh staging tree beside `out` with busybox and the directories every
/// lab init uses, plus `extra` ones.
pub fn stage(out: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "lib/modules", "proc", "sys", "dev"]
        .iter()
        .chain(extra)
    {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
    Ok(stage)
}

/// modprobe's list of what loading `m` of `k` takes (`insmod PATH` lines).
fn show_depends(k: &Unpacked, m: &str) -> Command {
    let mut c = Command::new("/usr/sbin/modprobe");
    c.arg("-d")
        .arg(&k.root)
        .args(["-S", &k.release, "--show-depends", m]);
    c
}

/// `modules` of `k` and their dependencies, decompressed into
/// stage/lib/modules (busybox insmod takes plain modules), with
/// stage/modules.order in the order modprobe would load them.
pub fn add_modules(k: &Unpacked, modules: &[&str], stage: &Path) -> anyhow::Result<()> {
    let mut order: Vec<String> = Vec::new();
    for m in modules {
        let deps = output(&mut show_depends(k, m))?;
        for l in deps.lines() {
            if let Some(path) = l
                .strip_prefix("insmod ")
                .map(|p| p.split_whitespace().next().unwrap_or(""))
            {
                let name = Path::new(path)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches(".xz")
                    .to_owned();
                if !order.contains(&name) {
                    let dst = stage.join("lib/modules").join(&name);
                    if path.ends_with(".xz") {
                        // busybox insmod takes plain modules.
                        let out = Command::new("xz").args(["-dc", path]).output()?;
                        if !out.status.success() {
                            bail!("xz -dc {path} failed");
                        }
                        std::fs::write(&dst, out.stdout)?;
                    } else {
                        std::fs::copy(path, &dst)?;
                    }
                    order.push(name);
                }
            }
        }
    }
    std::fs::write(stage.join("modules.order"), order.join("\n") + "\n")?;
    Ok(())
}

/// Writes `init` (executable) into `stage` and packs the tree as a gzipped
/// newc cpio at `out`.
pub fn pack(stage: &Path, init: &str, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(stage.join("init"), init)?;
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            stage.display(),
            out.display()
        ))
        .status()?;
    if !st.success() {
        bail!("building the initramfs {} failed: {st}", out.display());
    }
    Ok(())
}
