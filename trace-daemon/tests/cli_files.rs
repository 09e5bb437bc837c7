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

/// A recording (no events) whose header carries `delivery`.
fn recording(name: &str, delivery: kvscope::recording::Delivery) -> String {
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        delivery,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    w.flush().unwrap();
    tmp(name, &buf)
}

#[test]
fn replay_warns_when_delivery_was_never_verified() {
    use kvscope::recording::Delivery;
    let failed = recording(
        "unverified.kvs",
        Delivery {
            verified: false,
            latency_us: None,
            detail: "the self-test event did not arrive within 5 s".into(),
        },
    );
    for cmd in ["replay", "report"] {
        let (code, out, err) = kvscope(&[cmd, &failed]);
        assert_eq!(code, Some(0), "{cmd}: {err}");
        assert!(
            err.contains("never verified") && err.contains("did not arrive"),
            "{cmd}: {err}"
        );
        assert!(out.contains("NOT VERIFIED"), "{cmd}: {out}");
    }
    // A recording from before the self-test existed says so too.
    let old = recording("old.kvs", Delivery::default());
    let (_, _, err) = kvscope(&["replay", &old]);
    assert!(err.contains("did not self-test delivery"), "{err}");
    let ok = recording(
        "verified.kvs",
        Delivery {
            verified: true,
            latency_us: Some(40),
            detail: String::new(),
        },
    );
    let (_, out, err) = kvscope(&["replay", &ok]);
    assert!(!err.contains("never verified"), "{err}");
    assert!(out.contains("verified at attach"), "{out}");
}

#[test]
fn report_output_goes_to_the_file_privately_and_fails_clearly() {
    use std::os::unix::fs::MetadataExt as _;
    let rec = recording("for-report.kvs", Default::default());
    let dir = std::env::temp_dir().join(format!("kvscope-cli-{}", std::process::id()));
    let out = dir.join("out.json");
    let (code, stdout, err) = kvscope(&[
        "report",
        &rec,
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.is_empty(), "the report went to stdout: {stdout}");
    let text = std::fs::read_to_string(&out).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
    let (code, _, _) = kvscope(&["report", &rec, "-o", out.to_str().unwrap(), "--share"]);
    assert_eq!(code, Some(0));
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o644);
    let (code, _, err) = kvscope(&["report", &rec, "-o", "/proc/nope/x.html"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot write /proc/nope/x.html"), "{err}");
    let (code, _, err) = kvscope(&["report", &rec, "-o", "/dev/full"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");
}

#[test]
fn a_full_standard_output_is_an_error_not_a_panic() {
    let rec = recording("for-full.kvs", Default::default());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["replay", &rec])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing to standard output") && !err.contains("panicked"),
        "{err}"
    );
}
