//! `kvscope run -- CMD`: the verdict from a recording (exit statuses, scope,
//! JUnit and TAP read back by parsers), and live at this host's tier: the
//! command's status passed through, signals passed on, the process tree
//! waited for and judged alone. The commands run are this test binary's
//! ignored `helper`, in the mode KVSCOPE_RUN_HELPER names.
use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kvscope::commands::run::{self, EXIT_FINDINGS, Exit, Run, Scope};
use kvscope::engine::Severity;

mod common;
use common::{Guard, SERIAL, lines_of, live_or_skip, open_kvm};

// ---- the command the live tests run ----

/// KVM_CREATE_VM and one vCPU, then both closed.
fn make_vm() {
    let kvm = open_kvm();
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE01, 0) };
    assert!(
        vm >= 0,
        "KVM_CREATE_VM: {}",
        std::io::Error::last_os_error()
    );
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };
    let vcpu = unsafe { libc::ioctl(vm.as_raw_fd(), 0xAE41, 0) };
    assert!(
        vcpu >= 0,
        "KVM_CREATE_VCPU: {}",
        std::io::Error::last_os_error()
    );
    drop(unsafe { OwnedFd::from_raw_fd(vcpu) });
}

#[test]
#[ignore = "the command the live tests run under kvscope run"]
fn helper() {
    match std::env::var("KVSCOPE_RUN_HELPER").as_deref() {
        // A VM a second after start (the test makes one of its own meanwhile).
        Ok("vm") => {
            std::thread::sleep(Duration::from_secs(1));
            make_vm();
        }
        Ok("vm-then-exit-7") => {
            make_vm();
            std::process::exit(7);
        }
        // The command ends at once; its orphan makes a VM 0.5 s later.
        Ok("orphan-vm") => {
            if unsafe { libc::fork() } == 0 {
                std::thread::sleep(Duration::from_millis(500));
                make_vm();
                unsafe { libc::_exit(0) };
            }
        }
        // Its own THP setting and its parent's (kvscope's), then done.
        Ok("thp") => println!(
            "helper: THP_enabled {} parent {}",
            thp_enabled("self"),
            thp_enabled(&std::os::unix::process::parent_id().to_string())
        ),
        Ok("wait-for-term") => {
            println!("helper: waiting");
            std::thread::sleep(Duration::from_secs(30));
        }
        other => panic!("KVSCOPE_RUN_HELPER={other:?}: not a helper mode"),
    }
}

/// /proc/PID/status's THP_enabled: 0 where prctl(PR_SET_THP_DISABLE) is set.
fn thp_enabled(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map_or_else(|| "absent".to_owned(), |v| v.trim().to_owned())
}

/// `kvscope run ARGS -- <this binary's helper in MODE>`.
fn kvscope_run(args: &[&str], mode: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvscope"));
    c.arg("run")
        .args(args)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            "helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVSCOPE_RUN_HELPER", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits (60 s at most) for the run to end: its status and stderr.
fn finish(mut g: Guard, err: std::sync::mpsc::Receiver<String>) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = g.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kvscope run did not end in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    let text: Vec<String> = err.try_iter().collect();
    (status.code().expect("kvscope exited"), text.join("\n"))
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kvscope-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

// ---- CI readers ----

/// JUnit read as CI readers do: the suite's counts are its cases'. Returns
/// (tests, failures, errors) and each case as "classname name outcome".
fn read_junit(xml: &str) -> (usize, usize, usize, Vec<String>) {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 1, "one testsuite per run");
    let suite = suites[0];
    let cases: Vec<_> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let outcome = |c: &roxmltree::Node| {
        if c.children().any(|n| n.has_tag_name("failure")) {
            "failure"
        } else if c.children().any(|n| n.has_tag_name("error")) {
            "error"
        } else {
            "pass"
        }
    };
    let count = |what: &str| cases.iter().filter(|c| outcome(c) == what).count();
    let attr = |n: &roxmltree::Node, a: &str| -> usize {
        n.attribute(a)
            .unwrap_or_else(|| panic!("no {a}"))
            .parse()
            .unwrap()
    };
    for n in [&root, &suite] {
        assert_eq!(attr(n, "tests"), cases.len(), "{xml}");
        assert_eq!(attr(n, "failures"), count("failure"), "{xml}");
        assert_eq!(attr(n, "errors"), count("error"), "{xml}");
    }
    let list = cases
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c.attribute("classname").expect("classname"),
                c.attribute("name").expect("name"),
                outcome(c)
            )
        })
        .collect();
    (cases.len(), count("failure"), count("error"), list)
}

/// TAP read by Perl's TAP::Parser: "tests=N failed=F plan=ok|bad".
fn read_tap(tap: &str) -> Option<String> {
    if !common::tool("perl") {
        return None;
    }
    let script = r#"use TAP::Parser; local $/; my $t = <STDIN>;
        my $p = TAP::Parser->new({ tap => $t }); while (defined $p->next) {}
        printf "tests=%d failed=%d plan=%s version=%d\n", $p->tests_run,
            scalar($p->failed), ($p->is_good_plan ? "ok" : "bad"), $p->version;"#;
    let mut c = Command::new("perl")
        .args(["-e", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("perl");
    use std::io::Write as _;
    c.stdin.take().unwrap().write_all(tap.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "TAP::Parser failed");
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

// ---- the verdict from a recording ----

/// A recording where tgid 42 takes a reference on a VM whose count reached
/// zero: get-after-zero, critical.
fn get_after_zero_recording() -> std::path::PathBuf {
    get_after_zero_recording_with(true)
}

/// The same, its delivery verified at attach or not.
fn get_after_zero_recording_with(verified: bool) -> std::path::PathBuf {
    let p = tmp(&format!("get-after-zero-{verified}.kvs"));
    std::fs::write(&p, common::get_after_zero_recording(verified)).unwrap();
    p
}

fn a_run(exit: Exit, fail_on: Severity) -> Run {
    Run {
        line: "./selftest --vm".into(),
        exit,
        seconds: 1.0,
        fail_on,
    }
}

/// Findings of the tree fail the run with 3 and a JUnit failure carrying
/// the finding; outside the tree they do not count unless --all; the
/// command's own failure wins; below --fail-on the case passes.
#[test]
fn findings_of_the_tree_fail_the_run_and_others_do_not() {
    let rec = get_after_zero_recording();
    let tree: HashSet<u32> = [42].into();
    let other: HashSet<u32> = [7].into();
    let ok = a_run(Exit::Code(0), Severity::Error);

    let j = run::judge(&rec, &Scope::Tree(&tree), &ok).unwrap();
    assert_eq!(j.status, EXIT_FINDINGS, "{}", j.text);
    let (tests, failures, errors, cases) = read_junit(&j.junit);
    assert_eq!((failures, errors), (1, 0), "{cases:#?}");
    assert!(
        cases.contains(&"kvscope.get-after-zero VM 0xffff888102769000 failure".to_owned()),
        "{cases:#?}"
    );
    assert!(
        j.junit.contains("!! get-after-zero [critical]"),
        "{}",
        j.junit
    );
    assert!(j.text.contains("process tree (1 process)"), "{}", j.text);
    if let Some(t) = read_tap(&j.tap) {
        assert_eq!(t, format!("tests={tests} failed=1 plan=ok version=13"));
    }

    let j = run::judge(&rec, &Scope::Tree(&other), &ok).unwrap();
    assert_eq!(j.status, 0, "not the tree's: {}", j.text);
    assert_eq!(read_junit(&j.junit).1, 0);

    let j = run::judge(&rec, &Scope::All, &ok).unwrap();
    assert_eq!(j.status, EXIT_FINDINGS, "--all: {}", j.text);

    let failed = a_run(Exit::Code(5), Severity::Error);
    let j = run::judge(&rec, &Scope::Tree(&tree), &failed).unwrap();
    assert_eq!(j.status, 5, "the command's failure is never hidden");
    assert_eq!(read_junit(&j.junit).1, 2, "both fail in JUnit");

    // What the check missed is said, and makes the run incomplete (4).
    let unverified = get_after_zero_recording_with(false);
    let j = run::judge(&unverified, &Scope::Tree(&other), &ok).unwrap();
    assert_eq!(j.status, run::EXIT_INCOMPLETE, "{}", j.text);
    let (_, _, errors, cases) = read_junit(&j.junit);
    assert_eq!(errors, 1, "{cases:#?}");
    std::fs::remove_file(unverified).unwrap();

    let lenient = a_run(Exit::Code(0), Severity::Critical);
    assert_eq!(
        run::judge(&rec, &Scope::Tree(&tree), &lenient)
            .unwrap()
            .status,
        EXIT_FINDINGS
    );
    std::fs::remove_file(rec).unwrap();
}

// ---- live ----

/// A clean command: exit 0, its VM judged and listed, a VM the test makes
/// meanwhile outside the tree recorded but not judged; JUnit and TAP read
/// back.
#[test]
fn a_clean_command_passes_and_only_its_tree_is_judged() {
    if !live_or_skip("a_clean_command_passes_and_only_its_tree_is_judged", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (junit, tap, rec) = (tmp("clean.xml"), tmp("clean.tap"), tmp("clean.kvs"));
    let mut c = kvscope_run(
        &[
            "--junit",
            junit.to_str().unwrap(),
            &format!("--tap={}", tap.display()),
            "-o",
            rec.to_str().unwrap(),
        ],
        "vm",
    );
    let mut child = c.spawn().expect("kvscope run");
    let err = lines_of(child.stderr.take().unwrap(), "kvscope");
    let g = Guard(child);
    // Ready, then a VM of our own while the helper waits its second.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = err
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("kvscope run never said ready");
        if l.starts_with("kvscope: ready:") {
            assert!(l.contains("locks deep"), "deep by default: {l}");
            break;
        }
    }
    make_vm();
    let (code, err) = finish(g, err);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("selection     the command's process tree (1 process)"),
        "{err}"
    );
    assert!(
        err.contains("VMs           1 seen"),
        "only the helper's VM: {err}"
    );
    let (tests, failures, errors, cases) = read_junit(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!((failures, errors), (0, 0), "{cases:#?}");
    assert_eq!(tests, 13, "command, coverage, 11 finding kinds: {cases:#?}");
    if let Some(t) = read_tap(&std::fs::read_to_string(&tap).unwrap()) {
        assert_eq!(t, "tests=13 failed=0 plan=ok version=13");
    }
    // The recording kept both VMs: the selection was the run's, not the kernel's.
    let out = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["replay", "--json"])
        .arg(&rec)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["vms"].as_array().map(Vec::len), Some(2), "{r:#}");
    std::fs::remove_dir_all(rec.parent().unwrap()).unwrap();
}

/// The command's status is the run's: 7 stays 7 (JUnit says so); a command
/// not found is 127.
#[test]
fn the_commands_failure_is_never_hidden() {
    if !live_or_skip("the_commands_failure_is_never_hidden", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let junit = tmp("seven.xml");
    let mut child = kvscope_run(&["--junit", junit.to_str().unwrap()], "vm-then-exit-7")
        .spawn()
        .unwrap();
    let err = lines_of(child.stderr.take().unwrap(), "kvscope");
    let (code, err) = finish(Guard(child), err);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("exited 7; exit 7: the command failed"),
        "{err}"
    );
    let (_, failures, _, cases) = read_junit(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(failures, 1, "{cases:#?}");
    assert!(cases[0].starts_with("kvscope.command ") && cases[0].ends_with(" failure"));

    let out = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args(["run", "--", "/nonexistent/kvscope-test-command"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(junit.parent().unwrap()).unwrap();
}

/// kvscope turns transparent huge pages off for itself (a trimmed heap
/// stays small), never for the command it runs: the command starts with the
/// setting kvscope was started with.
#[test]
fn the_command_keeps_the_thp_setting_kvscope_was_given() {
    if !live_or_skip("the_command_keeps_the_thp_setting_kvscope_was_given", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = kvscope_run(&[], "thp").spawn().unwrap();
    let out = lines_of(child.stdout.take().unwrap(), "helper");
    let err = lines_of(child.stderr.take().unwrap(), "kvscope");
    let (code, err) = finish(Guard(child), err);
    assert_eq!(code, 0, "{err}");
    // The reader's channel closes at the pipe's end: kvscope has exited.
    // libtest's "test helper ... " shares the line: match from the marker.
    let line = out
        .iter()
        .find_map(|l| l.find("helper: THP_enabled").map(|at| l[at..].to_owned()))
        .expect("the helper's line");
    let ours = thp_enabled("self");
    assert_eq!(
        line,
        format!("helper: THP_enabled {ours} parent 0"),
        "{err}"
    );
}

/// A SIGTERM sent to kvscope reaches the command, which dies of it: the
/// run's status is 128 + 15, and kvscope detached and judged first.
#[test]
fn signals_sent_to_kvscope_reach_the_command() {
    if !live_or_skip("signals_sent_to_kvscope_reach_the_command", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = kvscope_run(&[], "wait-for-term").spawn().unwrap();
    let out = lines_of(child.stdout.take().unwrap(), "helper");
    let err = lines_of(child.stderr.take().unwrap(), "kvscope");
    let g = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the helper never started")
        .contains("helper: waiting")
    {}
    let t = Instant::now();
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let (code, err) = finish(g, err);
    assert_eq!(code, 128 + libc::SIGTERM, "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(err.contains("killed by signal 15"), "{err}");
    assert!(common::our_programs_loaded().is_empty());
}

/// The command ends at once; its orphan (re-parented to kvscope) makes a
/// VM half a second later: waited for, and judged as the tree's.
#[test]
fn an_orphan_of_the_command_is_waited_for_and_judged() {
    if !live_or_skip("an_orphan_of_the_command_is_waited_for_and_judged", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = kvscope_run(&[], "orphan-vm").spawn().unwrap();
    let err = lines_of(child.stderr.take().unwrap(), "kvscope");
    let (code, err) = finish(Guard(child), err);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("process tree (2 processes)"), "{err}");
    assert!(
        err.contains("VMs           1 seen"),
        "the orphan's VM: {err}"
    );
}
