//! `cargo xtask deb`: the Debian package (cargo-deb, metadata in
//! trace-daemon/Cargo.toml): the binary with its BPF object embedded, the
//! unit, the example config (a conffile), dashboards, README, man page and
//! completions. And the package tier: lintian, maintainer scripts, unpacked
//! into a clean root and checked there (installing, upgrading and purging on
//! a real system with systemd: the host lab).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, kvscope_bin, workspace_root},
    setup::{self, Env},
};

/// Generated package files, beside the release binary (cargo-deb resolves
/// `target/release/` asset paths to the real target directory).
fn generated() -> PathBuf {
    kvscope_bin().parent().unwrap().join("deb-assets")
}

/// The packaged unit: the same file, with the package's paths.
fn unit() -> anyhow::Result<String> {
    let u = std::fs::read_to_string(workspace_root().join("packaging/kvscope.service"))?;
    let u = u
        .replace("/usr/local/bin/kvscope", "/usr/bin/kvscope")
        .replace("/usr/local/share/doc/kvscope", "/usr/share/doc/kvscope")
        .replace(
            "# kvscope fleet service. Install: `cargo xtask install` (README), then",
            "# kvscope fleet service (Debian package). Start it with",
        );
    if u.contains("/usr/local") {
        bail!("packaging/kvscope.service names a /usr/local path the package does not map");
    }
    Ok(u)
}

/// Man page and completions from the binary's own clap definitions.
fn generate() -> anyhow::Result<()> {
    let dir = generated();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("kvscope.service"), unit()?)?;
    let bin = kvscope_bin();
    for (shell, file) in [
        ("bash", "kvscope.bash"),
        ("zsh", "_kvscope"),
        ("fish", "kvscope.fish"),
    ] {
        let text = setup::output(Command::new(&bin).args(["completions", shell]))?;
        std::fs::write(dir.join(file), text)?;
    }
    // kvscope(1) and a kvscope-COMMAND(1) per command.
    let man = dir.join("man");
    let _ = std::fs::remove_dir_all(&man);
    std::fs::create_dir_all(&man)?;
    setup::output(Command::new(&bin).arg("manpage").arg("--dir").arg(&man))?;
    for page in std::fs::read_dir(&man)?.filter_map(Result::ok) {
        // -n: no name or time stamp, so the package is reproducible.
        cmd::check({
            let mut c = Command::new("gzip");
            c.args(["-9n"]).arg(page.path());
            c
        })?;
    }
    Ok(())
}

/// Builds the release binary and the package; returns the .deb's path.
pub fn build(env: &Env) -> anyhow::Result<PathBuf> {
    cmd::build_release(env)?;
    generate()?;
    let bin = setup::ensure_cargo_deb()?;
    let out = workspace_root().join("target/debian");
    let _ = std::fs::remove_dir_all(&out);
    let mut c = cmd::command(env, "cargo");
    let mut path = std::ffi::OsString::from(bin.as_os_str());
    path.push(":");
    path.push(&env.path);
    c.env("PATH", path)
        .args(["deb", "-p", "trace-daemon", "--no-build", "--output"])
        .arg(&out);
    cmd::check(c)?;
    let deb = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb wrote no .deb")?;
    eprintln!("deb: {}", deb.display());
    Ok(deb)
}

/// Every regular file under `root`, relative.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The package tier.
pub fn check(env: &Env) -> anyhow::Result<()> {
    setup::ensure_apt(&[("lintian", "lintian"), ("systemd-analyze", "systemd")])?;
    let deb = build(env)?;
    // Errors and warnings fail; info and pedantic tags are printed.
    let mut c = Command::new("lintian");
    c.args(["--fail-on", "error,warning", "--info"]).arg(&deb);
    cmd::check(c).context("lintian")?;
    eprintln!("deb: lintian: no errors or warnings");

    let root = std::env::temp_dir().join(format!("kvscope-debroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let r = check_in_root(&root, &deb);
    let _ = std::fs::remove_dir_all(&root);
    r
}

/// The maintainer scripts: valid shell, with the systemd fragments and the
/// purge of the service's state. (They run on a real system, with systemd,
/// in the host lab: `cargo xtask lab --host`.)
fn check_scripts(root: &Path, deb: &Path) -> anyhow::Result<()> {
    let control = root.join("DEBIAN");
    cmd::check({
        let mut c = Command::new("dpkg-deb");
        c.arg("-e").arg(deb).arg(&control);
        c
    })?;
    for (script, needs) in [
        (
            "postinst",
            "deb-systemd-helper update-state kvscope.service",
        ),
        ("prerm", "deb-systemd-invoke stop kvscope.service"),
        ("postrm", "rm -rf /var/lib/kvscope"),
    ] {
        let path = control.join(script);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("the package has no {script}"))?;
        if !text.contains(needs) {
            bail!("the package's {script} does not contain `{needs}`:\n{text}");
        }
        let o = Command::new("sh").arg("-n").arg(&path).output()?;
        if !o.status.success() {
            bail!(
                "the package's {script} is not valid shell: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    if conffiles.trim() != "/etc/kvscope/kvscope.toml" {
        bail!("the package's conffiles are {conffiles:?}, not the config alone");
    }
    std::fs::remove_dir_all(&control)?;
    eprintln!(
        "deb: maintainer scripts valid (systemd fragments, purge of the state); the config a conffile"
    );
    Ok(())
}

fn check_in_root(root: &Path, deb: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)?;
    check_scripts(root, deb)?;
    cmd::check({
        let mut c = Command::new("dpkg-deb");
        c.arg("-x").arg(deb).arg(root);
        c
    })?;
    let installed = files_under(root);
    eprintln!(
        "deb: unpacked {} files into {}",
        installed.len(),
        root.display()
    );
    for f in [
        "usr/bin/kvscope",
        "usr/lib/systemd/system/kvscope.service",
        "etc/kvscope/kvscope.toml",
        "usr/share/man/man1/kvscope.1.gz",
        "usr/share/man/man1/kvscope-run.1.gz",
        "usr/share/bash-completion/completions/kvscope",
        "usr/share/kvscope/dashboards/kvscope-alerts.yml",
        "usr/share/doc/kvscope/README.md",
        "usr/share/doc/kvscope/copyright",
    ] {
        if !installed.iter().any(|i| i == f) {
            bail!("the package does not install /{f}: {installed:?}");
        }
    }
    let v = setup::output(Command::new(root.join("usr/bin/kvscope")).arg("--version"))?;
    if !v.starts_with("kvscope ") {
        bail!("/usr/bin/kvscope --version printed {v:?}");
    }
    eprintln!("deb: /usr/bin/kvscope --version: {}", v.trim());
    // The unit as installed, verified against the installed binary.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/kvscope.service"))?;
    if !unit.contains("ExecStart=/usr/bin/kvscope daemon") {
        bail!("the packaged unit does not start /usr/bin/kvscope");
    }
    let verify = root.join("kvscope.service");
    std::fs::write(
        &verify,
        unit.replace(
            "/usr/bin/kvscope",
            &root.join("usr/bin/kvscope").to_string_lossy(),
        ),
    )?;
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&verify)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() || err.contains("kvscope.service:") {
        bail!("systemd-analyze verify of the packaged unit: {err}");
    }
    std::fs::remove_file(&verify)?;
    eprintln!("deb: the packaged unit verifies");
    Ok(())
}
