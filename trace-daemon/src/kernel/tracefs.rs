//! tracefs: mounted where the kernel expects it, and the tracepoint field layouts
//! the programs assume (`trace_common::tp`) checked against the `format` files.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracing directory, mounting tracefs at /sys/kernel/tracing if no tracing
/// directory is available yet (aya reads tracepoint ids from it).
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        let p = PathBuf::from(dir);
        if p.join("events").is_dir() {
            return Ok(p);
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let src = std::ffi::CString::new("nodev").expect("no NUL");
    // SAFETY: plain mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {TRACEFS} failed: {e}");
    }
    Ok(PathBuf::from(TRACEFS))
}

/// A field of a tracepoint format: `field:TYPE NAME; offset:N; size:N; ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

pub fn parse_format(text: &str) -> Vec<Field> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().unwrap_or("");
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_owned();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(offset), Some(size)) = (offset, size) {
            out.push(Field { name, offset, size });
        }
    }
    out
}

/// Offset of an optional field of a tracepoint, if the kernel has it.
pub fn field_offset(
    tracing: &std::path::Path,
    category: &str,
    name: &str,
    field: &str,
) -> Option<usize> {
    let path = tracing
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(path).ok()?;
    parse_format(&text)
        .into_iter()
        .find(|f| f.name == field)
        .map(|f| f.offset)
}

/// Checks that `category:name` exists and has `fields` at the expected offsets.
/// Err carries the reason, shown by `check`.
pub fn check_layout(
    tracing: &std::path::Path,
    category: &str,
    name: &str,
    fields: &[(&str, usize)],
) -> anyhow::Result<()> {
    let path = tracing
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{name} not available ({})",
            path.display()
        )
    })?;
    let parsed = parse_format(&text);
    for (field, want) in fields {
        match parsed.iter().find(|f| f.name == *field) {
            Some(f) if f.offset == *want => {}
            Some(f) => bail!(
                "{category}:{name} field {field} is at offset {} here, the program reads {want}",
                f.offset
            ),
            None => bail!("{category}:{name} has no field {field}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOCTL: &str = "name: sys_enter_ioctl
ID: 898
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int cmd;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long arg;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_format_fields() {
        let f = parse_format(IOCTL);
        assert_eq!(f.len(), 5);
        assert_eq!(
            f[3],
            Field {
                name: "cmd".into(),
                offset: 24,
                size: 8
            }
        );
        let comm = parse_format(
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;",
        );
        assert_eq!(comm[0].name, "comm");
        assert_eq!(comm[1].name, "lock_addr");
    }

    #[test]
    fn layout_mismatch_is_reported() {
        let dir = std::env::temp_dir().join(format!("kvscope-tracefs-{}", std::process::id()));
        let ev = dir.join("events/syscalls/sys_enter_ioctl");
        fs::create_dir_all(&ev).unwrap();
        fs::write(ev.join("format"), IOCTL).unwrap();
        assert!(
            check_layout(
                &dir,
                "syscalls",
                "sys_enter_ioctl",
                &[("fd", 16), ("cmd", 24)]
            )
            .is_ok()
        );
        let e = check_layout(&dir, "syscalls", "sys_enter_ioctl", &[("cmd", 20)]).unwrap_err();
        assert!(e.to_string().contains("offset 24"), "{e}");
        let e = check_layout(&dir, "syscalls", "sys_enter_nope", &[]).unwrap_err();
        assert!(e.to_string().contains("not available"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
