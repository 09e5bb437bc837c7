//! The daemon's configuration file (TOML). Every key has a default; unknown keys
//! and wrong types are errors that name the key. CLI flags override the file.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{attach::plan::LockWatch, engine};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address of the Prometheus endpoint (`/metrics`). Loopback by default.
    pub metrics_listen: String,
    /// TLS and basic auth for the endpoint: a file in the Prometheus
    /// exporter-toolkit's format (`--web.config.file`), read again on SIGHUP.
    /// Unset: plain HTTP, no authentication.
    pub web_config: Option<PathBuf>,
    /// JSON-lines file of findings; "" disables it.
    pub findings_file: PathBuf,
    /// Rotate the findings file past this size.
    pub findings_max_bytes: u64,
    /// Rotated files kept (findings.jsonl.1 .. .N).
    pub findings_keep: u32,
    /// Findings files world-readable (0644) instead of 0600: they name kernel
    /// addresses, which the kernel hides from unprivileged users.
    pub share_files: bool,
    /// Also log findings to the systemd journal (structured fields) when
    /// running under systemd.
    pub journal: bool,
    /// Ring buffer size, bytes (power of two).
    pub ring_bytes: u32,
    /// Collect kernel stacks on path hooks and lock attempts.
    pub stacks: bool,
    /// `deep`: the mutex API hooked, every acquire and release of a watched
    /// lock; `lean`: no mutex hook, held locks read at the path hooks
    /// (README, "Lock watching"). A SIGHUP switches it, keeping the analysis.
    pub lock_watch: LockWatch,
    /// With `lock_watch = "deep"`: back to lean this many seconds after the
    /// start or the reload that went deep (an investigation, time-boxed).
    /// Unset: deep stays.
    pub deep_for_s: Option<u64>,
    /// Lean only: a lock finding (destroy-under-lock, self-deadlock,
    /// lock-order-inversion, deadlock, a long wait) switches to deep for this
    /// many seconds, then back to lean, to see every acquire while the trouble
    /// lasts. Unset (the default): never.
    pub arm_deep_s: Option<u64>,
    /// BTF of the kvm and vfio modules on kernels before 5.11 (no module
    /// BTF): as `--btf`, read at start (a SIGHUP does not re-read them).
    pub btf: Vec<PathBuf>,
    /// Analysis thresholds and bounds.
    pub engine: engine::Config,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            metrics_listen: "127.0.0.1:9477".into(),
            web_config: None,
            findings_file: PathBuf::from("/var/lib/kvscope/findings.jsonl"),
            findings_max_bytes: 16 << 20,
            findings_keep: 5,
            share_files: false,
            journal: true,
            ring_bytes: trace_common::DEFAULT_RING_BYTES,
            stacks: true,
            lock_watch: LockWatch::Lean,
            deep_for_s: None,
            arm_deep_s: None,
            btf: Vec::new(),
            engine: engine::Config::default(),
        }
    }
}

impl DaemonConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let c: DaemonConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.metrics_listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| {
                format!(
                    "metrics_listen = {:?} is not an address:port (e.g. \"127.0.0.1:9477\")",
                    self.metrics_listen
                )
            })?;
        self.web()?;
        crate::attach::loader::check_ring_bytes(self.ring_bytes)
            .map_err(|e| anyhow::anyhow!("ring_bytes: {e}"))?;
        if self.engine.timeline_cap == 0 || self.engine.max_findings == 0 {
            anyhow::bail!("engine.timeline_cap and engine.max_findings must be at least 1");
        }
        for f in &self.btf {
            std::fs::File::open(f).with_context(|| {
                format!(
                    "btf: cannot read {} (a module's .ko after `pahole -J`; README, \"Older kernels\")",
                    f.display()
                )
            })?;
        }
        Ok(())
    }
}

impl DaemonConfig {
    /// The endpoint's web config, loaded (errors name `web_config`, the file
    /// and the key in it).
    pub fn web(&self) -> anyhow::Result<super::web_config::WebConfig> {
        match &self.web_config {
            Some(p) => super::web_config::WebConfig::load(p),
            None => Ok(super::web_config::WebConfig::open()),
        }
    }

    /// `config check`: every output path can be written by this user, checked
    /// without creating or changing anything.
    pub fn check_outputs(&self) -> anyhow::Result<()> {
        if !self.findings_file.as_os_str().is_empty() {
            check_writable(&self.findings_file)
                .with_context(|| format!("findings_file = {:?}", self.findings_file))?;
        }
        Ok(())
    }
}

/// An existing file must open for appending (nothing is written); a new one
/// needs its nearest existing ancestor to be a directory this user may write,
/// on a read-write filesystem that holds files (not procfs or sysfs).
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    if let Some(name) = crate::recording::private_file::pseudo_fs(path) {
        let on = path.ancestors().find(|a| a.exists()).unwrap_or(path);
        anyhow::bail!("{} is on {name}, which holds no files", on.display());
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(());
    }
    let dir = path
        .ancestors()
        .skip(1)
        .find(|a| a.as_os_str().is_empty() || a.exists())
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string and out-structs owned here.
    unsafe {
        if libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) != 0 {
            anyhow::bail!(
                "cannot create files in {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        let mut vfs: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut vfs) == 0 && vfs.f_flag & libc::ST_RDONLY != 0 {
            anyhow::bail!("{} is on a read-only filesystem", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(DaemonConfig::parse("").unwrap(), DaemonConfig::default());
    }

    #[test]
    fn keys_override_defaults() {
        let c = DaemonConfig::parse(
            "metrics_listen = \"127.0.0.1:1\"\n[engine]\nzombie_after_ms = 5\n",
        )
        .unwrap();
        assert_eq!(c.metrics_listen, "127.0.0.1:1");
        assert_eq!(c.engine.zombie_after_ms, 5);
        assert_eq!(
            c.engine.long_wait_ms,
            engine::Config::default().long_wait_ms
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = DaemonConfig::parse("metrics_lisen = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics_lisen"), "{e}");
        let e = DaemonConfig::parse("[engine]\nzombie_after_ms = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("zombie_after_ms"), "{e}");
        let e = DaemonConfig::parse("metrics_listen = \"nowhere\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics_listen"), "{e}");
        let e = DaemonConfig::parse("ring_bytes = 1000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ring_bytes"), "{e}");
        let e = DaemonConfig::parse("btf = [\"/nonexistent/kvm.ko\"]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("btf: cannot read /nonexistent/kvm.ko"), "{e}");
    }

    #[test]
    fn output_paths_are_checked_without_creating_them() {
        let dir = std::env::temp_dir().join(format!("kvscope-cfgcheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A new file in a missing subdirectory of a writable one: fine, not created.
        let p = dir.join("sub/f.jsonl");
        check_writable(&p).unwrap();
        assert!(!dir.join("sub").exists());
        let e = format!(
            "{:#}",
            check_writable(Path::new("/proc/nope/f.jsonl")).unwrap_err()
        );
        assert!(e.contains("proc"), "{e}");
        let c = DaemonConfig {
            findings_file: "/proc/nope/f.jsonl".into(),
            ..DaemonConfig::default()
        };
        let e = format!("{:#}", c.check_outputs().unwrap_err());
        assert!(
            e.starts_with("findings_file = \"/proc/nope/f.jsonl\""),
            "{e}"
        );
        // A regular file where a directory should be.
        std::fs::write(dir.join("file"), "").unwrap();
        assert!(check_writable(&dir.join("file/f.jsonl")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kvscope.toml");
        let c = DaemonConfig::load(&p).unwrap();
        // It documents every key with its default.
        assert_eq!(c, DaemonConfig::default());
    }
}
