//! The offline commands on bad input: clear messages and non-zero exits, never a
//! panic, never a silent empty report.
use std::process::Command;

fn kvscope(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tmp(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("kvscope-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn missing_empty_and_foreign_files() {
    let (code, _, err) = kvscope(&["replay", "/nonexistent/run.kvs"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("opening /nonexistent/run.kvs"), "{err}");
    let (code, _, err) = kvscope(&["replay", &tmp("empty.kvs", b"")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = kvscope(&["report", &tmp("elf.kvs", b"\x7fELF\x02\x01\x01\0garbage")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a kvscope recording"), "{err}");
    let mut future = b"KVSCOPE\0".to_vec();
    future.extend(7u32.to_le_bytes());
    future.extend(2u32.to_le_bytes());
    future.extend(b"{}");
    let (code, _, err) = kvscope(&["replay", &tmp("future.kvs", &future)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("format version 7"), "{err}");
}

#[test]
fn timeline_needs_an_object_and_a_hex_address() {
    let f = tmp("x.kvs", b"");
    let (code, _, err) = kvscope(&["timeline", &f]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--vm"), "{err}");
    let (code, _, err) = kvscope(&["timeline", "--vm", "0x1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--live"), "a file or --live: {err}");
    let (code, _, err) = kvscope(&["timeline", &f, "--vm", "1234"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("hex"), "{err}");
}
