//! Kernel release string and its numeric line.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelVersion {
    pub release: String,
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub fn current() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self::parse(&release)
    }

    pub fn parse(release: &str) -> Self {
        let mut it = release
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        KernelVersion {
            release: release.to_owned(),
            major,
            minor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_release_strings() {
        let v = KernelVersion::parse("6.12.95+deb12-cloud-amd64");
        assert_eq!((v.major, v.minor), (6, 12));
        let v = KernelVersion::parse("6.18.44-fc-v669");
        assert_eq!((v.major, v.minor), (6, 18));
        let v = KernelVersion::parse("garbage");
        assert_eq!((v.major, v.minor), (0, 0));
    }
}
