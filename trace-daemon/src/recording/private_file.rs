//! Files kvscope writes outside its systemd unit (recordings, findings files,
//! reports) hold kernel heap addresses and symbolised kernel stacks, which the
//! kernel itself hides from unprivileged users (`kptr_restrict`). Like perf's
//! `perf.data`, they are created 0600; `--share` (or `share_files` in the
//! daemon's config) makes them 0644 for a deliberate hand-over.
use std::{
    fs::{File, OpenOptions, Permissions},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;

/// Owner read/write only.
pub const PRIVATE: u32 = 0o600;
/// World-readable, when asked for.
pub const SHARED: u32 = 0o644;

pub fn mode(share: bool) -> u32 {
    if share { SHARED } else { PRIVATE }
}

/// How a file is opened: truncated (a recording, a report) or appended to (a
/// findings file that outlives restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Truncate,
    Append,
}

/// Opens `path` for writing with `mode`. The mode is also set on a file that
/// already existed (creation modes apply only to new files), so an older 0644
/// file does not keep leaking what is now written to it.
pub fn open(path: &Path, how: Open, mode: u32) -> anyhow::Result<File> {
    // /proc/version and the like take an open for writing (as root) and a
    // chmod, then fail the write: nothing of them is ever touched.
    if let Some(fs) = pseudo_fs(path) {
        anyhow::bail!(
            "cannot write {}: it is on {fs}, which holds no files; give a path on a real filesystem",
            path.display()
        );
    }
    let mut o = OpenOptions::new();
    o.write(true).create(true).mode(mode);
    match how {
        Open::Truncate => o.truncate(true),
        Open::Append => o.append(true),
    };
    let f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Only a regular file gets its mode changed: /dev/stdout or a FIFO named
    // as the output is left as it is.
    if f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        f.set_permissions(Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    }
    Ok(f)
}

/// The kernel's pseudo filesystem `path` (or, when it does not exist yet,
/// its nearest existing ancestor) is on, if any.
pub fn pseudo_fs(path: &Path) -> Option<&'static str> {
    const PSEUDO: &[(i64, &str)] = &[
        (0x9fa0, "proc"),
        (0x6265_6572, "sysfs"),
        (0x6462_6720, "debugfs"),
        (0x7472_6163, "tracefs"),
        (0x6367_7270, "cgroup2"),
        (0xcafe_4a11, "bpffs"),
    ];
    let existing = path.ancestors().find(|a| a.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string and an out-struct owned here.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    PSEUDO
        .iter()
        .find(|(m, _)| fs.f_type as i64 == *m)
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write as _, os::unix::fs::MetadataExt as _};

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn new_and_existing_files_get_the_mode_asked_for() {
        let dir = std::env::temp_dir().join(format!("kvscope-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.kvs");
        open(&p, Open::Truncate, mode(false)).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        // An existing world-readable file is tightened, not kept.
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        let mut f = open(&p, Open::Append, mode(false)).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(mode_of(&p), 0o600);
        open(&p, Open::Truncate, mode(true)).unwrap();
        assert_eq!(mode_of(&p), 0o644);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0, "truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_paths_name_the_path() {
        let e = open(Path::new("/proc/nope/x.kvs"), Open::Truncate, PRIVATE).unwrap_err();
        assert!(format!("{e:#}").contains("cannot write /proc/nope/x.kvs"));
    }
}
