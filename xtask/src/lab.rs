//! The guest lab: real Debian kernels booted under QEMU (TCG, `-cpu max` so the
//! guest has SVM and KVM loads), q35 with an emulated Intel IOMMU and the `edu`
//! PCI device bound to vfio-pci, a self-contained initramfs whose init runs one
//! command and powers off. Kernels are downloaded and unpacked, never installed
//! on the host; QEMU 10 comes from bookworm-backports (7.2 crashes guests under
//! multi-threaded TCG: notes/guest-lab.md).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup::{self, output};

pub struct Kernel {
    /// Short name used on the command line and in the cache.
    pub name: &'static str,
    pub source: Source,
}

pub enum Source {
    /// A Debian image: the meta package resolving to the current one, and the
    /// suite it comes from.
    Debian {
        meta: &'static str,
        suite: Option<&'static str>,
    },
    /// Debian's 6.1 source with the seed's kvm_ops patch, built here (kbuild.rs).
    Patched,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("bookworm-backports"),
        },
    },
    Kernel {
        name: "6.1",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: None,
        },
    },
    // The newest kernel the registry offers (sid), where it unpacks and boots.
    Kernel {
        name: "sid",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("sid"),
        },
    },
    Kernel {
        name: "patched",
        source: Source::Patched,
    },
];

/// Modules the lab loads, in dependency order (resolved with modprobe).
const MODULES: &[&str] = &["kvm_amd", "vfio_pci", "vfio_iommu_type1"];

pub fn lab_dir() -> PathBuf {
    setup::cache_dir().join("lab")
}

/// A suite line for a private sources directory, on the host's mirror.
fn suite_source(suite: &str) -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .context("the host's /etc/apt/sources.list.d/debian.sources")?;
    let uri = host
        .lines()
        .find_map(|l| l.strip_prefix("URIs: "))
        .unwrap_or("http://deb.debian.org/debian")
        .trim()
        .to_owned();
    Ok(format!(
        "Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    ))
}

/// apt with a private configuration, its own lists and cache, nothing of the
/// host's apt state touched: the host's sources plus bookworm-backports, or
/// (for `Some("sid")`) sid alone, so that sid never becomes the candidate
/// for the bookworm kernels.
pub fn apt(bin: &str, suite: Option<&str>) -> anyhow::Result<Command> {
    let sid = suite == Some("sid");
    let dir = lab_dir().join(if sid { "apt-sid" } else { "apt" });
    let src = dir.join("src");
    let marker = src.join(if sid {
        "sid.sources"
    } else {
        "backports.sources"
    });
    if !marker.exists() {
        for d in ["src", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        if sid {
            std::fs::write(&marker, suite_source("sid")?)?;
        } else {
            std::fs::copy(
                "/etc/apt/sources.list.d/debian.sources",
                src.join("debian.sources"),
            )
            .context("the host's /etc/apt/sources.list.d/debian.sources")?;
            std::fs::write(&marker, suite_source("bookworm-backports")?)?;
        }
    }
    let mut c = Command::new(bin);
    for o in [
        "Dir::Etc::SourceList=/dev/null".to_owned(),
        format!("Dir::Etc::SourceParts={}", src.display()),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "APT::Sandbox::User=root".to_owned(),
    ] {
        c.arg("-o").arg(o);
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    Ok(c)
}

fn apt_update_once(suite: Option<&str>) -> anyhow::Result<()> {
    let dir = if suite == Some("sid") {
        "apt-sid"
    } else {
        "apt"
    };
    let stamp = lab_dir().join(dir).join("updated");
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(24 * 3600));
    if !fresh {
        output(apt("apt-get", suite)?.args(["update", "-q"]))?;
        std::fs::write(&stamp, "")?;
    }
    Ok(())
}

/// QEMU 10 (backports), busybox-static, kmod, cpio on the host.
pub fn ensure_host_tools() -> anyhow::Result<()> {
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("version 10."));
    let have = |p: &str| Path::new(p).exists();
    if qemu_ok && have("/bin/busybox") && have("/usr/sbin/modprobe") && have("/usr/bin/cpio") {
        return Ok(());
    }
    eprintln!("lab: installing qemu-system-x86 (bookworm-backports), busybox-static, kmod, cpio");
    apt_update_once(None)?;
    output(apt("apt-get", None)?.args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-t",
        "bookworm-backports",
        "qemu-system-x86",
        "busybox-static",
        "kmod",
        "cpio",
    ]))?;
    Ok(())
}

pub struct Unpacked {
    pub release: String,
    /// Holds boot/vmlinuz-RELEASE and lib/modules/RELEASE.
    pub root: PathBuf,
    /// The build tree, for a kernel built here (out-of-tree modules build
    /// against it); Debian kernels use their linux-headers (kbuild.rs).
    pub tree: Option<PathBuf>,
}

/// modules.dep for the modules unpacked or installed under `root`.
pub fn depmod(root: &Path, release: &str) -> anyhow::Result<()> {
    output(
        Command::new("/usr/sbin/depmod")
            .arg("-b")
            .arg(root)
            .arg(release),
    )?;
    Ok(())
}

/// Downloads a package into the lab's cache (once) and returns the .deb.
pub fn download(pkg: &str, suite: Option<&str>) -> anyhow::Result<PathBuf> {
    let debs = lab_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    let find = || {
        std::fs::read_dir(&debs).ok().and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
        })
    };
    if let Some(d) = find() {
        return Ok(d);
    }
    apt_update_once(suite)?;
    eprintln!("lab: downloading {pkg}");
    let mut dl = apt("apt-get", suite)?;
    dl.current_dir(&debs).args(["download", "-q", pkg]);
    if let Some(s) = suite {
        dl.args(["-t", s]);
    }
    output(&mut dl)?;
    find().with_context(|| format!("downloaded {pkg}, but no .deb of it in {}", debs.display()))
}

/// The kernel of a matrix entry: downloaded and unpacked, or built.
pub fn kernel(k: &Kernel) -> anyhow::Result<Unpacked> {
    match k.source {
        Source::Debian { meta, suite } => debian_kernel(meta, suite),
        Source::Patched => crate::kbuild::patched(),
    }
}

/// Downloads and unpacks the kernel image package (cached by package name).
fn debian_kernel(meta: &str, suite: Option<&str>) -> anyhow::Result<Unpacked> {
    apt_update_once(suite)?;
    let mut dep = apt("apt-cache", suite)?;
    dep.args(["depends", meta]);
    if let Some(s) = suite {
        dep.args(["-t", s]);
    }
    let pkg = output(&mut dep)?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: linux-image-")
                .map(|v| format!("linux-image-{v}"))
        })
        .with_context(|| format!("cannot resolve {meta} to a kernel image package"))?;
    let release = pkg.trim_start_matches("linux-image-").to_owned();
    let root = lab_dir().join("kernels").join(&release);
    if !root
        .join("boot")
        .join(format!("vmlinuz-{release}"))
        .exists()
    {
        // Newer Debian (sid) splits the image package: the kernel and its
        // modules are in linux-binary-RELEASE / linux-base-RELEASE.
        let mut pkgs = vec![pkg.clone()];
        let mut deps = apt("apt-cache", suite)?;
        deps.args(["depends", &pkg]);
        for l in output(&mut deps)?.lines() {
            if let Some(d) = l.trim().trim_start_matches('|').strip_prefix("Depends: ")
                && (d == format!("linux-binary-{release}")
                    || d == format!("linux-base-{release}")
                    || d == format!("linux-modules-{release}"))
            {
                pkgs.push(d.to_owned());
            }
        }
        std::fs::create_dir_all(&root)?;
        for p in &pkgs {
            let deb = download(p, suite)?;
            output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        }
        // Merged /usr: modules under usr/lib; modprobe -d wants lib/modules.
        if !root.join("lib").exists() && root.join("usr/lib/modules").exists() {
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        // ... and the image and config beside them, where the lab looks in boot/.
        let moddir = root.join("usr/lib/modules").join(&release);
        for (from, to) in [("vmlinuz", "vmlinuz"), ("config", "config")] {
            let src = moddir.join(from);
            let dst = root.join("boot").join(format!("{to}-{release}"));
            if src.exists() && !dst.exists() {
                std::fs::create_dir_all(root.join("boot"))?;
                std::fs::copy(&src, &dst)?;
            }
        }
        depmod(&root, &release)?;
    }
    Ok(Unpacked {
        release,
        root,
        tree: None,
    })
}

/// Builds the initramfs: busybox, the modules (decompressed), kvscope and the
/// scenario driver with their shared libraries, and an init running `cmd`.
/// `extra` modules (the test module) go to /lib/modules for the command to load.
pub fn initramfs(
    k: &Unpacked,
    binaries: &[PathBuf],
    extra: &[PathBuf],
    cmd: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    for d in [
        "bin",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "usr/bin",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
    // Modules, in the order modprobe would load them.
    let mut order: Vec<String> = Vec::new();
    for m in MODULES {
        let deps = output(
            Command::new("/usr/sbin/modprobe")
                .arg("-d")
                .arg(&k.root)
                .args(["-S", &k.release, "--show-depends", m]),
        )?;
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
    for m in extra {
        std::fs::copy(m, stage.join("lib/modules").join(m.file_name().unwrap()))?;
    }
    // Binaries and their libraries, at the same paths.
    for b in binaries {
        let dst = stage.join("usr/bin").join(b.file_name().unwrap());
        std::fs::copy(b, &dst)?;
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
    std::fs::write(stage.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt as _;
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
        bail!("building the initramfs failed: {st}");
    }
    Ok(())
}

pub struct Boot {
    /// Lines between the begin and end markers.
    pub output: Vec<String>,
    pub rc: Option<i32>,
    pub console: String,
    pub secs: f64,
}

/// Boots, collects the command's output, kills QEMU by pid on timeout.
pub fn boot(k: &Unpacked, initrd: &Path, timeout: Duration) -> anyhow::Result<Boot> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35,sata=off",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args(["-accel", "tcg,thread=multi"])
        .args(["-device", "intel-iommu", "-device", "edu"])
        .args(["-kernel"])
        .arg(k.root.join("boot").join(format!("vmlinuz-{}", k.release)))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 intel_iommu=on"])
        .args([
            "-no-reboot",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut output = Vec::new();
    let mut inside = false;
    let mut rc = None;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_owned();
                console.push_str(&l);
                console.push('\n');
                if l.contains("KVSCOPE-LAB-BEGIN") {
                    inside = true;
                } else if l.contains("KVSCOPE-LAB-END") {
                    inside = false;
                } else if let Some(v) = l.strip_prefix("KVSCOPE-LAB-RC=") {
                    rc = v.trim().parse().ok();
                } else if inside {
                    output.push(l);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Bounded: the guest is killed, never left running.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "guest {} timed out after {:.0} s; console:\n{console}",
                    k.release,
                    timeout.as_secs_f64()
                );
            }
        }
    }
    let _ = child.wait();
    Ok(Boot {
        output,
        rc,
        console,
        secs: started.elapsed().as_secs_f64(),
    })
}
