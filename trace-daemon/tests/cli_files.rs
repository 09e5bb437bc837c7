//! The offline commands on bad input: clear messages and non-zero exits, never a
//! panic, never a silent empty report.
use std::process::Command;

mod common;

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
fn timeline_needs_an_object_and_a_source() {
    let f = tmp("x.kvs", b"");
    let (code, _, err) = kvscope(&["timeline", &f]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--vm"), "{err}");
    let (code, _, err) = kvscope(&["timeline", "--vm", "0x1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--live"), "a file or --live: {err}");
    let (code, _, err) = kvscope(&["timeline", &f, "--vm", "0xzz"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("hex"), "{err}");
}

/// `timeline --vm` takes what `trace --vm` takes: a name (as recorded), the
/// creator's pid, an address; one not there lists each VM seen once, named.
#[test]
fn timeline_selects_a_vm_by_name_pid_or_address() {
    let id = kvscope::identity::Identity {
        pid: 42,
        comm: "qemu-system-x86".into(),
        name: Some("lab-a".into()),
        domain: Some("lab-a".into()),
        uuid: None,
    };
    let f = closed_vm_recording_named("timeline-names.kvs", false, Some(id));
    for sel in ["lab-a", "0xffff888102769000"] {
        let (code, out, err) = kvscope(&["timeline", &f, "--vm", sel]);
        assert_eq!(code, Some(0), "{sel}: {err}");
        assert!(
            out.contains("VM 0xffff888102769000 lab-a (generation 1)"),
            "{sel}: {out}"
        );
        assert!(
            !out.contains("0xffff888102779000"),
            "{sel}: only lab-a: {out}"
        );
    }
    // Pid 42 made both VMs: both, in order.
    let (code, out, err) = kvscope(&["timeline", &f, "--vm", "42"]);
    assert_eq!(code, Some(0), "{err}");
    let first = out.find("VM 0xffff888102769000").expect("lab-a");
    let second = out.find("VM 0xffff888102779000").expect("the second VM");
    assert!(first < second, "{out}");
    let (code, _, err) = kvscope(&["timeline", &f, "--vm", "lab-b"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("seen: 0xffff888102769000 (lab-a), 0xffff888102779000"),
        "{err}"
    );
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
fn kernel_side_drops_are_reported_in_text_and_json() {
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        ..Default::default()
    };
    let mut d = kvscope::event::drops::Drops::default();
    d.stack_id_failed.insert("kvm_put_kvm".into(), 2);
    d.stash_full.insert("mutex_lock_killable".into(), 1);
    d.watched_added = 9000;
    d.watched_evicted = 808;
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    w.drops(&d).unwrap();
    w.flush().unwrap();
    let f = tmp("drops.kvs", &buf);
    let (code, out, err) = kvscope(&["replay", &f]);
    assert_eq!(code, Some(0), "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("DROPPED"))
        .unwrap_or_default();
    assert!(
        line.contains("2 events without their stack (kvm_put_kvm=2)")
            && line.contains("1 exits lost to a full argument stash")
            && line.contains("808 watched locks evicted of 9000 added"),
        "{out}"
    );
    let (_, out, _) = kvscope(&["replay", "--json", &f]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["drops"]["watched_evicted"], 808, "{out}");
    assert_eq!(j["drops"]["stack_id_failed"]["kvm_put_kvm"], 2, "{out}");
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

/// A recording of one VM created and closed by pid 42 and another by pid 43,
/// cut short inside its last frame when `damaged`.
fn two_vm_recording(name: &str, damaged: bool) -> String {
    use trace_common::{Event, HookId, ioctl, known};
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        delivery: kvscope::recording::Delivery {
            verified: true,
            latency_us: Some(40),
            detail: String::new(),
        },
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    let mut ts = 1_000_000_000u64;
    for (tgid, kvm) in [
        (42u32, 0xffff_8881_0276_9000u64),
        (43, 0xffff_8881_0277_0000),
    ] {
        let mut created = Event::ZERO;
        created.ts_ns = ts;
        created.pid_tgid = (u64::from(tgid) << 32) | u64::from(tgid);
        created.hook = HookId::SysIoctl as u16;
        created.arg = u64::from(ioctl::KVM_CREATE_VM);
        created.ret = 5;
        created.kvm = kvm;
        created.users_count = 1;
        created.known = known::ARG | known::RET | known::KVM | known::USERS;
        w.event(&created).unwrap();
        ts += 1000;
    }
    w.flush().unwrap();
    if damaged {
        buf.truncate(buf.len() - 3);
    }
    tmp(name, &buf)
}

#[test]
fn events_dumps_raw_events_with_filters_and_hex_addresses() {
    let f = two_vm_recording("two.kvs", false);
    let (code, out, err) = kvscope(&["events", &f]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("kvm=0xffff888102769000"), "{out}");
    let (_, out, _) = kvscope(&["events", &f, "--pid", "43"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("0xffff888102770000"), "{out}");
    let (_, out, _) = kvscope(&["events", &f, "--json", "--vm", "0xffff888102769000"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["kvm"], "0xffff888102769000", "addresses are hex strings");
    assert_eq!(v["tgid"], 42);
}

#[test]
fn replay_lists_every_vm_and_selects_by_vm_or_pid() {
    let f = two_vm_recording("two-replay.kvs", false);
    let (code, out, err) = kvscope(&["replay", &f]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("VM 0xffff888102769000 gen 1: users_count 1, live"),
        "{out}"
    );
    assert!(out.contains("VM 0xffff888102770000 gen 1"), "{out}");
    let (_, out, _) = kvscope(&["replay", &f, "--pid", "43"]);
    assert!(out.contains("selection     VMs created by pid 43"), "{out}");
    assert!(
        out.contains("0xffff888102770000") && !out.contains("0xffff888102769000"),
        "{out}"
    );
    let (_, out, _) = kvscope(&["replay", &f, "--json", "--vm", "0xffff888102769000"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["vms"].as_array().unwrap().len(), 1);
    assert_eq!(v["vms"][0]["addr"], "0xffff888102769000");
    // A threshold from the command line: the VMs were never closed, so no
    // zombie; the flag is accepted and reaches the engine.
    let (code, _, err) = kvscope(&["replay", &f, "--zombie-after-ms", "1"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_damaged_recording_says_so_in_every_format_and_fails_unless_salvaged() {
    let f = two_vm_recording("damaged.kvs", true);
    for (args, marker) in [
        (vec!["replay"], "DAMAGED FILE"),
        (vec!["replay", "--json"], "\"damage\""),
        (vec!["report", "--format", "html"], "Damaged recording"),
        (vec!["report", "--format", "perfetto"], "DAMAGED RECORDING"),
        (vec!["events"], "DAMAGED FILE"),
        (
            vec!["timeline", "--vm", "0xffff888102769000"],
            "DAMAGED FILE",
        ),
    ] {
        let mut a = args.clone();
        a.push(&f);
        let (code, out, err) = kvscope(&a);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(out.contains(marker), "{args:?}: {out}");
        assert!(
            err.contains("damaged recording") && err.contains("--salvage"),
            "{args:?}: {err}"
        );
        a.push("--salvage");
        let (code, _, err) = kvscope(&a);
        assert_eq!(code, Some(0), "{args:?} --salvage: {err}");
    }
}

#[test]
fn unknown_log_levels_are_refused_and_completions_and_man_page_generate() {
    let (code, _, err) = kvscope(&["--log", "verbose", "check"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"verbose\" is not a log level"), "{err}");
    let (code, _, err) = kvscope(&["--log", "kvscope=debug,aya=warn", "completions", "bash"]);
    assert_eq!(code, Some(0), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = kvscope(&["completions", shell]);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("record") && out.contains("replay"),
            "{shell}: {out}"
        );
    }
    let (code, out, _) = kvscope(&["manpage"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(".ie") || out.contains(".TH kvscope"),
        "{}",
        &out[..200.min(out.len())]
    );
}

#[test]
fn config_check_refuses_an_unwritable_findings_file() {
    let cfg = tmp(
        "unwritable.toml",
        b"findings_file = \"/proc/nope/f.jsonl\"\n",
    );
    let (code, _, err) = kvscope(&["config", "check", &cfg]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("findings_file") && err.contains("proc"),
        "{err}"
    );
}

/// `events`: a drops frame where only the count of watched locks changed says
/// "none", never an empty line; in JSON every object, not only the events,
/// has a `kind` (scripts dispatch on it).
#[test]
fn events_says_what_each_non_event_line_is() {
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        ..Default::default()
    };
    let d = kvscope::event::drops::Drops {
        watched_added: 3,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    w.drops(&d).unwrap();
    w.lost(&[("kvm_put_kvm".to_owned(), 0)].into_iter().collect())
        .unwrap();
    w.flush().unwrap();
    let f = tmp("drops-none.kvs", &buf);
    let (code, out, err) = kvscope(&["events", &f]);
    assert_eq!(code, Some(0), "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("kernel-side drops"))
        .unwrap_or_default();
    assert_eq!(
        line, "# kernel-side drops so far: none (3 watched locks added)",
        "{out}"
    );
    let (_, out, _) = kvscope(&["events", "--json", &f]);
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["kind"].is_string(), "no kind: {l}");
    }
    assert!(out.contains(r#""kind":"drops-so-far""#), "{out}");
    assert!(out.contains(r#""kind":"lost-so-far""#), "{out}");
}

/// `--fail-on SEVERITY`: replay and report still print everything, then exit
/// 3 when a finding is at least that severe; without findings, or below it, 0.
#[test]
fn fail_on_a_severity_exits_three_after_the_output() {
    let buf = common::get_after_zero_recording(true);
    let f = tmp("get-after-zero.kvs", &buf);
    let (code, out, err) = kvscope(&["replay", &f]);
    assert_eq!(code, Some(0), "no --fail-on: {err}");
    assert!(out.contains("get-after-zero"), "{out}");
    let (code, out, err) = kvscope(&["replay", &f, "--fail-on", "error"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        out.contains("get-after-zero"),
        "the output comes first: {out}"
    );
    assert!(err.contains("--fail-on error"), "{err}");
    let (code, _, err) = kvscope(&["report", &f, "--format", "json", "--fail-on", "critical"]);
    assert_eq!(code, Some(3), "{err}");
    let clean = two_vm_recording("clean-fail-on.kvs", false);
    let (code, _, err) = kvscope(&["replay", &clean, "--fail-on", "info"]);
    assert_eq!(code, Some(0), "{err}");
}

/// A VM whose fd was closed, then (with `gap`) a blind gap, with a VM made
/// inside its window (seen by the session that had not yet noticed the
/// change, its end never seen), then time passes (another VM 20 s later).
fn closed_vm_recording(name: &str, gap: bool) -> String {
    closed_vm_recording_named(name, gap, None)
}

fn closed_vm_recording_named(
    name: &str,
    gap: bool,
    id: Option<kvscope::identity::Identity>,
) -> String {
    use trace_common::{Event, HookId, known};
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        destroy_observable: true,
        mono_start_ns: 500_000_000,
        wall_start_ns: 1_764_782_304_000_000_000,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    let event = |ts: u64, hook: HookId, kvm: u64, users: i32| {
        let mut e = Event::ZERO;
        e.ts_ns = ts;
        e.pid_tgid = (42u64 << 32) | 42;
        e.hook = hook as u16;
        e.kvm = kvm;
        e.users_count = users;
        e.known = known::KVM | known::USERS;
        e
    };
    let kvm = 0xffff_8881_0276_9000u64;
    w.event(&event(1_000_000_000, HookId::KvmCreateVm, kvm, 1))
        .unwrap();
    if let Some(identity) = id {
        w.identity(&kvscope::recording::VmIdentity {
            kvm,
            created_ns: 1_000_000_000,
            identity,
        })
        .unwrap();
    }
    w.event(&event(2_000_000_000, HookId::KvmVmRelease, kvm, 1))
        .unwrap();
    if gap {
        w.gap(&kvscope::recording::Gap {
            from_ns: 2_500_000_000,
            to_ns: 4_000_000_000,
            why: "module kvm unloaded, module kvm loaded".into(),
        })
        .unwrap();
        w.event(&event(3_000_000_000, HookId::KvmCreateVm, kvm + 0x20000, 1))
            .unwrap();
    }
    w.event(&event(
        22_000_000_000,
        HookId::KvmCreateVm,
        kvm + 0x10000,
        1,
    ))
    .unwrap();
    w.flush().unwrap();
    tmp(name, &buf)
}

#[test]
fn a_blind_gap_is_said_everywhere_and_what_crossed_it_is_unknown() {
    let seen = closed_vm_recording("no-gap.kvs", false);
    let (_, out, err) = kvscope(&["replay", &seen]);
    assert!(
        out.contains("zombie-vm"),
        "the control has its finding: {out}{err}"
    );
    let f = closed_vm_recording("gap.kvs", true);
    let (code, out, err) = kvscope(&["replay", &f]);
    assert_eq!(code, Some(0), "{err}");
    let want = "blind from 2.000 s to 3.500 s (1500 ms): module kvm unloaded, module kvm loaded";
    assert!(out.contains(&format!("BLIND         {want}")), "{out}");
    assert!(
        !out.contains("zombie-vm"),
        "nothing raised across the gap: {out}"
    );
    let (_, out, _) = kvscope(&["report", &f, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["gaps"][0]["to_ns"], 4_000_000_000u64, "{out}");
    assert_eq!(j["vms"][0]["state"], "unknown", "{out}");
    // Made inside the gap's window: what became of it in the gap is unknown.
    let inside = j["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["addr"] == "0xffff888102789000")
        .unwrap_or_else(|| panic!("the VM made in the gap: {out}"));
    assert_eq!(inside["state"], "unknown", "{inside:#}");
    let (_, out, _) = kvscope(&["events", &f]);
    assert!(out.contains(&format!("# BLIND {want}")), "{out}");
    let (_, out, _) = kvscope(&["events", "--json", &f]);
    assert!(out.lines().any(|l| l.contains("\"kind\":\"gap\"")), "{out}");
    let (_, out, _) = kvscope(&["report", &f, "--format", "html"]);
    assert!(out.contains(&format!("<b>Blind:</b> {want}")), "{out}");
}

#[test]
fn a_vm_is_named_as_its_identity_frame_says_in_every_output() {
    let id = kvscope::identity::Identity {
        pid: 42,
        comm: "qemu-system-x86".into(),
        name: Some("lab-a".into()),
        domain: Some("lab-a".into()),
        uuid: Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809".into()),
    };
    let f = closed_vm_recording_named("named.kvs", false, Some(id));
    let (code, out, err) = kvscope(&["replay", &f]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("gen 1 lab-a (domain lab-a, uuid c7a5fdbd-cdaf-9455-926a-d65c16db1809, qemu-system-x86[42])"),
        "{out}"
    );
    assert!(out.contains("[VM lab-a]"), "the finding names it: {out}");
    // Raised at 22 s of the monotonic clock, 21.5 s after the recording began.
    assert!(
        out.contains("at 22.000000000 (2025-12-03T17:18:45.500000Z)"),
        "{out}"
    );
    let (_, out, _) = kvscope(&["replay", "--json", &f]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["vms"][0]["identity"]["domain"], "lab-a", "{out}");
    assert_eq!(j["findings"][0]["vm_name"], "lab-a", "{out}");
    assert_eq!(
        j["findings"][0]["first_wall"], "2025-12-03T17:18:45.500000Z",
        "{out}"
    );
    let (_, out, _) = kvscope(&["events", &f]);
    assert!(
        out.contains("# VM 0xffff888102769000 belongs to lab-a ("),
        "{out}"
    );
    let (_, out, _) = kvscope(&["report", &f, "--format", "html"]);
    assert!(out.contains("VM 0xffff888102769000 gen 1 lab-a"), "{out}");
    // Selected by the name an operator knows or its uuid (its pid made both).
    for sel in ["lab-a", "c7a5fdbd-cdaf-9455-926a-d65c16db1809"] {
        let (_, out, err) = kvscope(&["replay", &f, "--vm", sel]);
        assert!(
            out.contains("gen 1 lab-a") && out.contains("[VM lab-a]"),
            "{sel}: {out}{err}"
        );
        assert!(
            !out.contains("0xffff888102779000"),
            "{sel}: the other VM left out: {out}"
        );
    }
    let (_, out, _) = kvscope(&["replay", &f, "--vm", "lab-b"]);
    assert!(
        out.contains("selection     VM lab-b") && !out.contains("gen 1 lab-a"),
        "{out}"
    );
}

/// A zombie's VM address taken by a new VM: the finding is the old
/// generation's only, and its text says the threshold as given (0.5 s, not
/// "0 s"). Before, both generations listed it.
#[test]
fn a_finding_names_its_generation_not_every_vm_at_the_address() {
    use trace_common::{Event, HookId, known};
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        destroy_observable: true,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    let event = |ms: u64, hook: HookId, kvm: u64| {
        let mut e = Event::ZERO;
        e.ts_ns = ms * 1_000_000;
        e.pid_tgid = (42u64 << 32) | 42;
        e.hook = hook as u16;
        e.kvm = kvm;
        e.users_count = 1;
        e.known = known::KVM | known::USERS;
        e
    };
    let (a, b) = (0xffff_8881_0276_9000u64, 0xffff_8881_0277_0000u64);
    for (ms, hook, kvm) in [
        (1000, HookId::KvmCreateVm, a),
        (1100, HookId::KvmVmRelease, a),
        // Time passes (another VM): A is a zombie past 0.5 s.
        (1700, HookId::KvmCreateVm, b),
        // A's address taken by a new VM.
        (1900, HookId::KvmCreateVm, a),
        (2000, HookId::KvmCreateVm, b + 0x10000),
    ] {
        w.event(&event(ms, hook, kvm)).unwrap();
    }
    w.flush().unwrap();
    let f = tmp("zombie-reused.kvs", &buf);
    let (code, out, err) = kvscope(&["replay", "--json", "--zombie-after-ms", "500", &f]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["findings"].as_array().unwrap().len(), 1, "{out}");
    let at_a: Vec<(u64, Vec<String>)> = r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["addr"] == format!("{a:#x}"))
        .map(|v| {
            (
                v["generation"].as_u64().unwrap(),
                serde_json::from_value(v["findings"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        at_a,
        [(1, vec!["zombie-vm".to_owned()]), (2, vec![])],
        "{out}"
    );
    let (_, text, _) = kvscope(&["replay", "--zombie-after-ms", "500", &f]);
    assert!(
        text.contains("gen 1 not destroyed 0.5 s after its fd was closed"),
        "{text}"
    );
}

/// `-o /proc/version`: refused before anything is opened; the file's mode
/// stays what it was (before, 0444 became 0600, then the write failed).
#[test]
fn an_output_on_a_pseudo_filesystem_is_refused_untouched() {
    use std::os::unix::fs::MetadataExt as _;
    let f = two_vm_recording("pseudo-out.kvs", false);
    let before = std::fs::metadata("/proc/version").unwrap().mode();
    let (code, _, err) = kvscope(&["report", &f, "-o", "/proc/version"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/proc/version: it is on proc, which holds no files"),
        "{err}"
    );
    assert_eq!(std::fs::metadata("/proc/version").unwrap().mode(), before);
    let (code, _, err) = kvscope(&["record", "-o", "/proc/version", "--duration", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(std::fs::metadata("/proc/version").unwrap().mode(), before);
}
