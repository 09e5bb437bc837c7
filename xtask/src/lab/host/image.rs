//! The host lab's machine: a Debian 13 root file system built from the
//! archive with mmdebstrap (systemd, libvirt, QEMU), as an ext4 image cached
//! by what goes into it; and per kernel a small initramfs that mounts the
//! image read-only under a tmpfs overlay, adds the kernel's modules and the
//! run's files (the kvscope packages, the guest script), and hands over to
//! systemd.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::lab::debian::{self, Unpacked};
use crate::lab::initramfs;
use crate::setup::{self, output};
use anyhow::Context as _;

/// The userspace a libvirt host runs: Debian 13's.
const SUITE: &str = "trixie";
/// What the image holds (mmdebstrap's `--variant=apt` plus these; no
/// recommends, as a minimal server install).
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-daemon-driver-qemu",
    "qemu-system-x86",
    "seabios",
    "curl",
    "procps",
];
/// The lab's changes to the installed system: no getty on the console the
/// run writes to, no default network (it needs dnsmasq, and the domains have
/// no network), the run's unit (starts /lab/run.sh, which the initramfs
/// adds).
const CUSTOMIZE: &str = r#"set -e
chroot "$1" systemctl mask serial-getty@ttyS0.service getty@tty1.service
rm -f "$1/etc/libvirt/qemu/networks/autostart/default.xml"
echo kvlab > "$1/etc/hostname"
cat > "$1/etc/systemd/system/kvscope-lab.service" <<'EOF'
[Unit]
Description=kvscope host lab run
After=multi-user.target
[Service]
Type=simple
ExecStart=/bin/sh -c 'exec /lab/run.sh >/dev/ttyS0 2>&1'
StandardInput=null
EOF
mkdir -p "$1/etc/systemd/system/default.target.wants"
ln -sf /etc/systemd/system/kvscope-lab.service "$1/etc/systemd/system/default.target.wants/"
"#;
const IMAGE_SIZE: &str = "1500M";

fn host_dir() -> PathBuf {
    debian::lab_dir().join("host")
}

/// The image, built once per package list and customisation (the archive's
/// newer versions come with a change to either, or with `rm` of the cache).
pub fn image() -> anyhow::Result<PathBuf> {
    let packages = PACKAGES.join(",");
    let key =
        crate::lab::kbuild::key(&[SUITE.as_bytes(), packages.as_bytes(), CUSTOMIZE.as_bytes()])?;
    let dir = host_dir();
    let img = dir.join(format!("rootfs-{SUITE}-{key}.ext4"));
    if img.exists() {
        return Ok(img);
    }
    setup::ensure_apt(&[("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs")])?;
    std::fs::create_dir_all(&dir)?;
    let tree = dir.join("rootfs.d");
    let _ = std::fs::remove_dir_all(&tree);
    let hook = dir.join("customize.sh");
    std::fs::write(&hook, CUSTOMIZE)?;
    eprintln!("lab: host: building a Debian {SUITE} root file system with mmdebstrap");
    let t = std::time::Instant::now();
    output(
        Command::new("mmdebstrap")
            .args(["--variant=apt", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
            .arg(SUITE)
            .arg(&tree)
            .arg("http://deb.debian.org/debian"),
    )
    .context("mmdebstrap")?;
    let part = img.with_extension("part");
    output(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "kvlab", "-d"])
            .arg(&tree)
            .arg(&part)
            .arg(IMAGE_SIZE),
    )?;
    std::fs::rename(&part, &img)?;
    std::fs::remove_dir_all(&tree)?;
    eprintln!(
        "lab: host: image {} in {:.0} s",
        img.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(img)
}

/// Modules the initramfs loads to reach the image.
const BOOT_MODULES: &[&str] = &["virtio_blk", "overlay"];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "KVSCOPE-LAB: insmod $m failed"; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o ro /dev/vda /lower || echo "KVSCOPE-LAB: no root disk"
mount -t tmpfs -o size=1g,mode=0755 rw /rw; mkdir /rw/upper /rw/work
mount -t overlay root -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot
cp -a /payload/. /newroot/
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"#;

/// The initramfs for `k`: the boot modules, then `files` (name in /lab,
/// source; copied with their modes) and the kernel's modules for the system.
pub fn initramfs(k: &Unpacked, files: &[(&str, &Path)], out: &Path) -> anyhow::Result<()> {
    let stage = initramfs::stage(out, &["lower", "rw", "newroot"])?;
    let lab = stage.join("payload/lab");
    std::fs::create_dir_all(&lab)?;
    initramfs::add_modules(k, BOOT_MODULES, &stage)?;
    for (name, src) in files {
        std::fs::copy(src, lab.join(name))
            .with_context(|| format!("{} into the initramfs", src.display()))?;
    }
    // /lib is /usr/lib in the image (merged /usr).
    let mods = stage.join("payload/usr/lib/modules");
    std::fs::create_dir_all(&mods)?;
    crate::cmd::check({
        let mut c = Command::new("cp");
        c.arg("-a")
            .arg(k.root.join("lib/modules").join(&k.release))
            .arg(&mods);
        c
    })?;
    initramfs::pack(&stage, INIT, out)?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// A copy of the package with a higher version (`+lab.newer`): what an
/// upgrade installs (the same files; the version is what dpkg acts on).
pub fn newer_package(deb: &Path, out: &Path) -> anyhow::Result<()> {
    let tree = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&tree);
    output(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+lab.newer"),
            None => l.to_owned(),
        })
        .collect();
    std::fs::write(&control, text.join("\n") + "\n")?;
    output(
        Command::new("dpkg-deb")
            .args(["-b", "-Zgzip"])
            .arg(&tree)
            .arg(out),
    )?;
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}
