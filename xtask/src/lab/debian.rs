//! Debian's side of the lab: a private apt configuration per suite (sid is
//! never the bookworm candidate), packages downloaded into the cache, kernel
//! image packages unpacked (never installed), the host's lab tools.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::setup::{self, output};

pub fn lab_dir() -> PathBuf {
    setup::cache_dir().join("lab")
}

/// A suite line for a private sources directory, on the host's mirror
/// (security updates from Debian's security archive).
fn suite_source(suite: &str) -> anyhow::Result<String> {
    if suite.ends_with("-security") {
        return Ok(format!(
            "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ));
    }
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

/// A private apt configuration: its directory and the suites in it. Each
/// Debian line has its own, so that a newer line never becomes the candidate
/// for an older one's kernels: the host's sources plus bookworm-backports;
/// trixie with trixie-backports (`-t` picks one); bullseye with its security
/// updates; sid alone.
struct AptFamily {
    dir: &'static str,
    /// Suites written as sources (besides the host's, when `host` is set).
    suites: &'static [&'static str],
    host: bool,
}

fn family(suite: Option<&str>) -> AptFamily {
    match suite {
        Some("sid") => AptFamily {
            dir: "apt-sid",
            suites: &["sid"],
            host: false,
        },
        // Debian 11: its kernel's updates come through bullseye-security.
        Some("bullseye" | "bullseye-security") => AptFamily {
            dir: "apt-bullseye",
            suites: &["bullseye", "bullseye-security"],
            host: false,
        },
        Some("trixie" | "trixie-backports") => AptFamily {
            dir: "apt-trixie",
            suites: &["trixie", "trixie-backports"],
            host: false,
        },
        _ => AptFamily {
            dir: "apt",
            suites: &["bookworm-backports"],
            host: true,
        },
    }
}

/// apt with a private configuration, its own lists and cache, nothing of the
/// host's apt state touched (see `AptFamily`).
pub fn apt(bin: &str, suite: Option<&str>) -> anyhow::Result<Command> {
    let f = family(suite);
    let dir = lab_dir().join(f.dir);
    let src = dir.join("src");
    // (The host family's file keeps the name earlier caches gave it.)
    let file = |s: &str| {
        let stem = if f.host { "backports" } else { s };
        src.join(format!("{stem}.sources"))
    };
    let marker = file(f.suites[0]);
    if !marker.exists() {
        for d in ["src", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        if f.host {
            std::fs::copy(
                "/etc/apt/sources.list.d/debian.sources",
                src.join("debian.sources"),
            )
            .context("the host's /etc/apt/sources.list.d/debian.sources")?;
        }
        // The marker last: a set-up cut short is redone.
        for s in f.suites.iter().rev() {
            std::fs::write(file(s), suite_source(s)?)?;
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
    let stamp = lab_dir().join(family(suite).dir).join("updated");
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(24 * 3600));
    if !fresh {
        output(apt("apt-get", suite)?.args(["update", "-q"]))?;
        std::fs::write(&stamp, "")?;
    }
    Ok(())
}

/// QEMU 10 (backports), busybox-static, kmod, cpio, pahole (module BTF for
/// kernels before 5.11) on the host.
pub fn ensure_host_tools() -> anyhow::Result<()> {
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("version 10."));
    let have = |p: &str| Path::new(p).exists();
    if qemu_ok
        && have("/bin/busybox")
        && have("/usr/sbin/modprobe")
        && have("/usr/bin/cpio")
        && have("/usr/bin/pahole")
    {
        return Ok(());
    }
    eprintln!(
        "lab: installing qemu-system-x86 (bookworm-backports), busybox-static, kmod, cpio, dwarves (pahole)"
    );
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
        "dwarves",
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

/// Downloads and unpacks the kernel image package (cached by package name).
pub fn debian_kernel(meta: &str, suite: Option<&str>) -> anyhow::Result<Unpacked> {
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
