//! Kernel builds for the lab: the patched-stack kernel (Debian's 6.1 source +
//! the seed's kvm_ops patch, lab-kernel/), the cdev kernel (Debian's 6.12
//! source with IOMMUFD and VFIO_DEVICE_CDEV, which Debian's configs leave
//! off), and the out-of-tree test module
//! (lab-kernel/testdev) built against each lab kernel: Debian's linux-headers
//! packages for the distribution kernels, the same build tree for the patched one
//! (module BTF only matches the vmlinux it was built with: notes/patched-lab.md).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::workspace_root,
    lab::debian::{self as lab, Unpacked},
    setup::{self, output},
};

const TESTDEV: &str = "lab-kernel/testdev";

/// A kernel the lab builds from Debian's source package.
pub struct Build {
    /// The cache directory under the lab's (and the name in messages).
    pub name: &'static str,
    pub source: &'static str,
    /// Applied with `patch -p1` to the unpacked source.
    pub patch: Option<&'static str>,
    /// scripts/config fragments, applied in order after `x86_64_defconfig`.
    pub configs: &'static [&'static str],
}

pub const PATCHED: Build = Build {
    name: "patched",
    source: "linux-source-6.1",
    patch: Some("lab-kernel/vfio-kvm_ops-6.1.patch"),
    configs: &["lab-kernel/patched.config"],
};

/// The lab's base config plus IOMMUFD and the VFIO device cdev.
pub const CDEV: Build = Build {
    name: "cdev",
    source: "linux-source-6.12",
    patch: None,
    configs: &["lab-kernel/patched.config", "lab-kernel/cdev.config"],
};

/// Short content hash of files and strings (sha256sum, first 16 hex digits).
pub fn key(parts: &[&[u8]]) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    {
        let mut i = c.stdin.take().expect("piped");
        for p in parts {
            i.write_all(&(p.len() as u64).to_le_bytes())?;
            i.write_all(p)?;
        }
    }
    let o = c.wait_with_output()?;
    Ok(String::from_utf8_lossy(&o.stdout)[..16].to_owned())
}

fn read(rel: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(workspace_root().join(rel)).with_context(|| format!("reading {rel}"))
}

/// Runs a long build step with its output in a log; the log's tail on failure.
fn logged(c: &mut Command, log: &Path, what: &str) -> anyhow::Result<()> {
    let f = std::fs::File::create(log)?;
    let st = c
        .stdout(f.try_clone()?)
        .stderr(f)
        .status()
        .with_context(|| format!("running {c:?}"))?;
    if !st.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        bail!(
            "{what} failed ({st}); last lines of {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The tools a kernel build needs (notes/patched-lab.md), from Debian.
fn ensure_build_tools() -> anyhow::Result<()> {
    setup::ensure_apt(&[
        ("gcc", "build-essential"),
        ("bc", "bc"),
        ("bison", "bison"),
        ("flex", "flex"),
        ("pahole", "dwarves"),
        ("/usr/include/gelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ])
}

/// A lab kernel built once per (source version, patch, config) and cached
/// with its modules and build tree; later runs reuse it.
pub fn built(b: &Build) -> anyhow::Result<Unpacked> {
    ensure_build_tools()?;
    let deb = lab::download(b.source, None)?;
    let deb_name = deb.file_name().unwrap().to_string_lossy().into_owned();
    // The tree is keyed by source and patch; the built kernel also by config
    // (a config change rebuilds incrementally in the kept tree).
    let patch = match b.patch {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    let tree_k = key(&[deb_name.as_bytes(), &patch])?;
    let mut config = Vec::new();
    for c in b.configs {
        config.extend(read(c)?);
    }
    let k = key(&[tree_k.as_bytes(), &config])?;
    let base = lab::lab_dir().join(b.name);
    let tree = base.join("tree");
    let root = base.join(format!("root-{k}"));
    let stamp = root.join("release");
    if let Ok(release) = std::fs::read_to_string(&stamp) {
        return Ok(Unpacked {
            release: release.trim().to_owned(),
            root,
            tree: Some(tree),
        });
    }
    let started = Instant::now();
    eprintln!(
        "lab: building the {} kernel ({deb_name}{}, key {k}); about 8.5 minutes on 2 cores, once; log in {}",
        b.name,
        b.patch.map_or(String::new(), |p| format!(" + {p}")),
        base.display()
    );
    std::fs::create_dir_all(&base)?;
    let tree_key = tree.join(".kvscope-key");
    if std::fs::read_to_string(&tree_key).ok().as_deref() != Some(tree_k.as_str()) {
        let _ = std::fs::remove_dir_all(&tree);
        let unpack = base.join("unpack");
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack)?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        let tarball = std::fs::read_dir(unpack.join("usr/src"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
            .with_context(|| format!("no source tarball in {}", b.source))?;
        output(
            Command::new("tar")
                .arg("xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&unpack),
        )?;
        let src = std::fs::read_dir(&unpack)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "usr"))
            .context("no source directory in the tarball")?;
        std::fs::rename(&src, &tree)?;
        std::fs::remove_dir_all(&unpack)?;
        if let Some(p) = b.patch {
            let patch = std::fs::File::open(workspace_root().join(p))?;
            let o = Command::new("patch")
                .args(["-p1", "--forward", "--no-backup-if-mismatch"])
                .current_dir(&tree)
                .stdin(patch)
                .output()?;
            if !o.status.success() {
                bail!(
                    "{p} does not apply to {deb_name}:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        std::fs::write(&tree_key, &tree_k)?;
    }
    {
        let log = base.join("config.log");
        logged(
            Command::new("make")
                .arg("x86_64_defconfig")
                .current_dir(&tree),
            &log,
            "make x86_64_defconfig",
        )?;
        let cfg = String::from_utf8(config)?;
        let mut sc = Command::new("scripts/config");
        sc.current_dir(&tree);
        for l in cfg.lines().map(str::trim) {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            sc.args(l.split_whitespace());
        }
        logged(&mut sc, &log, "scripts/config")?;
        logged(
            Command::new("make").arg("olddefconfig").current_dir(&tree),
            &log,
            "make olddefconfig",
        )?;
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    logged(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .args(["bzImage", "modules"])
            .current_dir(&tree),
        &base.join("build.log"),
        &format!("building the {} kernel", b.name),
    )?;
    let release = output(
        Command::new("make")
            .args(["-s", "kernelrelease"])
            .current_dir(&tree),
    )?
    .trim()
    .to_owned();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("boot"))?;
    std::fs::copy(
        tree.join("arch/x86/boot/bzImage"),
        root.join("boot").join(format!("vmlinuz-{release}")),
    )?;
    std::fs::copy(
        tree.join(".config"),
        root.join("boot").join(format!("config-{release}")),
    )?;
    logged(
        Command::new("make")
            .arg(format!("INSTALL_MOD_PATH={}", root.display()))
            .args(["INSTALL_MOD_STRIP=1", "modules_install"])
            .current_dir(&tree),
        &base.join("install.log"),
        "make modules_install",
    )?;
    lab::depmod(&root, &release)?;
    // Older builds of other keys are dead weight.
    for e in std::fs::read_dir(&base)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("root-") && e.path() != root {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::write(&stamp, &release)?;
    eprintln!(
        "lab: {} kernel {release} built in {:.0} s",
        b.name,
        started.elapsed().as_secs_f64()
    );
    Ok(Unpacked {
        release,
        root,
        tree: Some(tree),
    })
}

/// Debian's linux-headers for an unpacked distribution kernel: the headers,
/// their -common package and the matching linux-kbuild, unpacked together.
pub fn debian_headers(release: &str, suite: Option<&str>) -> anyhow::Result<PathBuf> {
    let root = lab::lab_dir().join("headers").join(release);
    let dir = root
        .join("usr/src")
        .join(format!("linux-headers-{release}"));
    let makefile = dir.join("Makefile");
    if std::fs::read_to_string(&makefile).is_ok_and(|m| !m.contains("include /usr/src/")) {
        return Ok(dir);
    }
    ensure_build_tools()?;
    let pkg = format!("linux-headers-{release}");
    let mut dep = lab::apt("apt-cache", suite)?;
    dep.args(["depends", &pkg]);
    let deps = output(&mut dep)?;
    let mut pkgs = vec![pkg.clone()];
    for l in deps.lines() {
        let l = l.trim().trim_start_matches('|');
        if let Some(d) = l.strip_prefix("Depends: ")
            && (d.starts_with("linux-headers-") || d.starts_with("linux-kbuild-"))
        {
            pkgs.push(d.to_owned());
        }
    }
    std::fs::create_dir_all(&root)?;
    for p in &pkgs {
        let deb = lab::download(p, suite)?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    // The flavour's Makefile includes the -common one by its installed path.
    let m = std::fs::read_to_string(&makefile).with_context(|| {
        format!(
            "{pkg} unpacked into {} but has no Makefile (packages {pkgs:?})",
            root.display()
        )
    })?;
    let here = format!("include {}/usr/src/", root.display());
    std::fs::write(&makefile, m.replace("include /usr/src/", &here))?;
    Ok(dir)
}

/// The `gcc-N` a Debian kernel's headers ask for (`.kernelvariables`), when
/// it is not installed here.
fn missing_kernel_compiler(kbuild: &std::path::Path) -> Option<String> {
    let vars = std::fs::read_to_string(kbuild.join(".kernelvariables")).ok()?;
    let cc = vars
        .lines()
        .filter(|l| l.trim_start().starts_with("CC ="))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ')'))
        .find(|w| w.starts_with("gcc-"))?
        .to_owned();
    let found = Command::new(&cc).arg("--version").output().is_ok();
    (!found).then_some(cc)
}

/// Builds lab-kernel/testdev against the kernel's build tree or, for a Debian
/// kernel, its linux-headers; cached per kernel release and module source.
pub fn testdev(k: &Unpacked, suite: Option<&str>) -> anyhow::Result<PathBuf> {
    // The kvm_ops modes exist where the headers have the patch's type (the
    // patched tree), not on every kernel built here (the cdev one has none).
    let kvm_ops = k.tree.as_ref().is_some_and(|t| {
        std::fs::read_to_string(t.join("include/linux/vfio.h"))
            .is_ok_and(|h| h.contains("struct vfio_device_kvm_ops"))
    });
    let kbuild = match &k.tree {
        Some(t) => t.clone(),
        None => debian_headers(&k.release, suite)?,
    };
    let src = workspace_root().join(TESTDEV);
    let mut parts = vec![k.release.as_bytes().to_vec()];
    let mut names: Vec<_> = std::fs::read_dir(&src)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in &names {
        parts.push(std::fs::read(p)?);
    }
    // A rebuilt patched kernel needs its module rebuilt too.
    parts.push(
        std::fs::read(k.root.join("boot").join(format!("vmlinuz-{}", k.release)))
            .map(|b| key(&[&b]).unwrap_or_default().into_bytes())
            .unwrap_or_default(),
    );
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let kk = key(&refs)?;
    let out = lab::lab_dir()
        .join("testdev")
        .join(format!("{}-{kk}", k.release));
    let ko = out.join("kvscope_testdev.ko");
    if ko.exists() {
        return Ok(ko);
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    for p in &names {
        std::fs::copy(p, out.join(p.file_name().unwrap()))?;
    }
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(&kbuild)
        .arg(format!("M={}", out.display()))
        .arg("modules");
    if kvm_ops {
        c.arg("KCFLAGS=-DKVSCOPE_KVM_OPS");
    }
    if let Some(cc) = missing_kernel_compiler(&kbuild) {
        // Debian 11's headers name gcc-10, which Debian 12 has not; the
        // host's gcc builds a test module that loads (no plugins, same ABI).
        eprintln!(
            "lab: {cc} (the headers' compiler) is not installed: the test module is built with gcc"
        );
        c.arg("CC=gcc");
    }
    logged(
        &mut c,
        &PathBuf::from(format!("{}.log", out.display())),
        &format!("building the test module for {}", k.release),
    )?;
    if !ko.exists() {
        bail!("the test module build made no {}", ko.display());
    }
    output(Command::new("strip").arg("--strip-debug").arg(&ko))?;
    Ok(ko)
}
