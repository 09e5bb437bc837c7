//! `cargo xtask install`: the binary, the systemd unit, the example config (kept
//! if one exists), the dashboards and the README, under DESTDIR (default /).
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cmd::{kvscope_bin, workspace_root};

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    eprintln!("install: {}", to.display());
    Ok(())
}

pub fn install(destdir: &Path) -> anyhow::Result<()> {
    let root = workspace_root();
    let at = |p: &str| -> PathBuf { destdir.join(p.trim_start_matches('/')) };
    copy(&kvscope_bin(), &at("/usr/local/bin/kvscope"), 0o755)?;
    copy(
        &root.join("packaging/kvscope.service"),
        &at("/etc/systemd/system/kvscope.service"),
        0o644,
    )?;
    let cfg = at("/etc/kvscope/kvscope.toml");
    if cfg.exists() {
        eprintln!("install: keeping existing {}", cfg.display());
    } else {
        copy(&root.join("packaging/kvscope.toml"), &cfg, 0o644)?;
    }
    copy(
        &root.join("README.md"),
        &at("/usr/local/share/doc/kvscope/README.md"),
        0o644,
    )?;
    for f in ["kvscope-grafana.json", "kvscope-alerts.yml"] {
        copy(
            &root.join("dashboards").join(f),
            &at(&format!("/usr/local/share/kvscope/dashboards/{f}")),
            0o644,
        )?;
    }
    if destdir == Path::new("/") {
        let _ = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status();
        eprintln!("install: done; start with `systemctl enable --now kvscope`");
    }
    Ok(())
}
