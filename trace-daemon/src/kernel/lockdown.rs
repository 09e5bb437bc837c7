//! Kernel lockdown (`/sys/kernel/security/lockdown`): at `confidentiality`
//! the kernel refuses kprobes, `bpf_probe_read_kernel` (so every program that
//! follows a pointer fails to load), perf and tracefs reads; at `integrity`
//! nothing kvscope uses is refused.
use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lockdown {
    None,
    Integrity,
    Confidentiality,
    /// No lockdown LSM here, or securityfs could not be read.
    Unknown,
}

const FILE: &str = "/sys/kernel/security/lockdown";

impl Lockdown {
    /// The level in force, read from securityfs (mounted for the read if it
    /// is not: the lockdown file lives there).
    pub fn current() -> Lockdown {
        let dir = Path::new("/sys/kernel/security");
        if !Path::new(FILE).exists() && dir.is_dir() {
            let _ = std::process::Command::new("mount")
                .args(["-t", "securityfs", "securityfs"])
                .arg(dir)
                .output();
        }
        std::fs::read_to_string(FILE).map_or(Lockdown::Unknown, |s| Lockdown::parse(&s))
    }

    /// `none [integrity] confidentiality`: the bracketed word.
    pub fn parse(text: &str) -> Lockdown {
        let chosen = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
        match chosen {
            Some("none") => Lockdown::None,
            Some("integrity") => Lockdown::Integrity,
            Some("confidentiality") => Lockdown::Confidentiality,
            _ => Lockdown::Unknown,
        }
    }

    /// What this level refuses kvscope, for reasons and `check`; None when
    /// nothing kvscope uses is refused.
    pub fn refuses(&self) -> Option<&'static str> {
        (*self == Lockdown::Confidentiality).then_some(
            "kernel lockdown (confidentiality) refuses kprobes, bpf_probe_read_kernel, perf and tracefs reads",
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Lockdown::None => "none".into(),
            Lockdown::Integrity => "integrity: nothing kvscope uses is refused".into(),
            Lockdown::Confidentiality => format!(
                "confidentiality: {}; only programs that read nothing but their context load (the lock hooks by fentry); no reference counts are seen",
                self.refuses().unwrap_or_default()
            ),
            Lockdown::Unknown => "unknown (no lockdown LSM, or securityfs unreadable)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bracketed_level_is_in_force() {
        assert_eq!(
            Lockdown::parse("[none] integrity confidentiality\n"),
            Lockdown::None
        );
        assert_eq!(
            Lockdown::parse("none integrity [confidentiality]\n"),
            Lockdown::Confidentiality
        );
        assert_eq!(
            Lockdown::parse("none [integrity] confidentiality"),
            Lockdown::Integrity
        );
        assert_eq!(Lockdown::parse(""), Lockdown::Unknown);
        assert!(Lockdown::Integrity.refuses().is_none());
        assert!(Lockdown::Confidentiality.refuses().is_some());
    }
}
