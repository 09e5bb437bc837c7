//! Live tests on this host's real kernel: `kvscope trace --json` while the test
//! creates VMs and kvm-vfio devices through /dev/kvm, and `kvscope check --json`.
//! They need root and /dev/kvm. Without them they skip with the reason, unless
//! KVSCOPE_REQUIRE_LIVE=1 (set by `cargo xtask test`), where a skip is a failure.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::fd::{AsRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{
    Guard, SERIAL, create_vm_with_kvm_vfio, lines_of, live_or_skip, open_kvm, our_programs_loaded,
};

fn kvscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvscope"))
}

fn start_trace(args: &[&str]) -> (Guard, std::sync::mpsc::Receiver<String>) {
    let mut child = kvscope()
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvscope trace");
    let rx = lines_of(child.stderr.take().unwrap(), "kvscope");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("Ctrl-C to stop") => break,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("kvscope trace did not report being attached: {e}")
            }
        }
    }
    (Guard(child), rx)
}

/// SIGTERM, then the JSON lines it printed.
fn stop(mut g: Guard) -> (Vec<Value>, std::process::ExitStatus) {
    // Let the ring buffer drain before asking it to stop.
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let mut out = String::new();
    g.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = g.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kvscope trace ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let events = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    (events, status)
}

/// Kinds and fds of the events, without the identity objects.
fn kinds(events: &[Value]) -> Vec<(String, Option<i64>)> {
    events
        .iter()
        .filter(|e| e["kind"] != "identity")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e.get("fd").and_then(Value::as_i64),
            )
        })
        .collect()
}

#[test]
fn trace_sees_vm_and_kvm_vfio_lifecycles_in_order() {
    if !live_or_skip("trace_sees_vm_and_kvm_vfio_lifecycles_in_order", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let (guard, _stderr) = start_trace(&["--json", "--pid", &me.to_string()]);

    let kvm = open_kvm();
    // Two VMs; the first closes its kvm-vfio device first, the second its VM fd first.
    let (a_vm, a_dev) = create_vm_with_kvm_vfio(&kvm);
    let (b_vm, b_dev) = create_vm_with_kvm_vfio(&kvm);
    let fd = |f: &OwnedFd| f.as_raw_fd();
    let (a_vm_fd, a_dev_fd, b_vm_fd, b_dev_fd) = (fd(&a_vm), fd(&a_dev), fd(&b_vm), fd(&b_dev));
    drop(a_dev);
    drop(a_vm);
    drop(b_vm);
    drop(b_dev);

    let (events, status) = stop(guard);
    assert!(status.success(), "kvscope trace exited with {status}");
    let got = kinds(&events);
    let want: Vec<(String, Option<i64>)> = vec![
        ("vm-created".into(), Some(a_vm_fd as i64)),
        ("kvm-vfio-created".into(), Some(a_dev_fd as i64)),
        ("vm-created".into(), Some(b_vm_fd as i64)),
        ("kvm-vfio-created".into(), Some(b_dev_fd as i64)),
        ("fd-close".into(), Some(a_dev_fd as i64)),
        ("fd-close".into(), Some(a_vm_fd as i64)),
        ("fd-close".into(), Some(b_vm_fd as i64)),
        ("fd-close".into(), Some(b_dev_fd as i64)),
    ];
    assert_eq!(got, want, "events: {events:#?}");
    // Each VM named after its creation: this process, by pid and comm.
    let names: Vec<&Value> = events.iter().filter(|e| e["kind"] == "identity").collect();
    assert_eq!(names.len(), 2, "events: {events:#?}");
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    for n in &names {
        assert_eq!(n["identity"]["pid"].as_u64(), Some(me as u64), "{n}");
        assert_eq!(n["identity"]["comm"].as_str(), Some(comm.trim_end()), "{n}");
    }
    let events: Vec<Value> = events
        .into_iter()
        .filter(|e| e["kind"] != "identity")
        .collect();
    for e in &events {
        assert_eq!(e["tgid"].as_u64(), Some(me as u64), "{e}");
    }
    // Through the fd the tracepoint tier reaches the VM: real pointers and counts.
    // Addresses are hex strings in JSON (numbers would exceed 2^53).
    let addr = |v: &Value| {
        v.as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
    };
    let kvm_a = addr(&events[0]["kvm"]).expect("kvm pointer of VM a");
    let kvm_b = addr(&events[2]["kvm"]).expect("kvm pointer of VM b");
    assert_ne!(kvm_a, kvm_b);
    assert_eq!(addr(&events[1]["kvm"]), Some(kvm_a));
    let users: Vec<Option<i64>> = events.iter().map(|e| e["users_count"].as_i64()).collect();
    // created: 1; the kvm-vfio device takes a ref: 2; closes read before the put.
    assert_eq!(
        users,
        [
            Some(1),
            Some(2),
            Some(1),
            Some(2),
            Some(2),
            Some(1),
            Some(2),
            Some(1)
        ],
        "users_count sequence"
    );
    assert_eq!(events[4]["fd_kind"], "kvm-vfio-device");
    assert_eq!(events[5]["fd_kind"], "vm");

    // SIGTERM detached everything: none of our programs is still loaded.
    let left = our_programs_loaded();
    assert!(
        left.is_empty(),
        "programs still loaded after SIGTERM: {left:?}"
    );
}

#[test]
fn check_reports_this_sandbox_as_tier_three() {
    if !live_or_skip("check_reports_this_sandbox_as_tier_three", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = kvscope().args(["check", "--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    let kprobes_here = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if report["fentry"]["ok"] == true || kprobes_here {
        // A host with fentry or kprobes is not the sandbox this test describes;
        // the guest lab covers such kernels.
        assert_eq!(out.status.code(), Some(0));
        assert_ne!(report["tier"], "3-tracepoints");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "tier 3 is usable: {report:#}");
    assert_eq!(report["usable"], true);
    assert_eq!(report["tier"], "3-tracepoints");
    let fentry_why = report["fentry"]["reason"].as_str().unwrap();
    assert!(fentry_why.contains("not permitted"), "{fentry_why}");
    assert_eq!(report["kprobes"]["ok"], false);
    assert!(
        report["kprobes"]["reason"]
            .as_str()
            .unwrap()
            .contains("kprobes absent")
    );
    let tps = report["plan"]["tracepoints"].as_array().unwrap();
    assert_eq!(tps.len(), kvscope::attach::hooks::TRACEPOINTS.len());
    for t in tps {
        assert_eq!(t["method"], "tracepoint", "{t}");
    }
    let roles = report["plan"]["roles"].as_array().unwrap();
    let put = roles.iter().find(|r| r["role"] == "vm-put").unwrap();
    assert_eq!(put["choices"][0]["symbol"], "kvm_put_kvm");
    assert_eq!(put["choices"][0]["method"], "none");
    // users_count offset came from this kernel's BTF.
    let offs = report["offsets"].as_array().unwrap();
    let users = offs
        .iter()
        .find(|o| o["field"] == "kvm_users_count")
        .unwrap();
    assert!(users["offset"].is_u64());
    assert!(
        our_programs_loaded().is_empty(),
        "check left programs loaded"
    );
}

/// `--deep-for`: the session starts deep and switches to lean while running,
/// saying so; the stream goes on (this host is tier 3: the switch keeps the
/// syscall tracepoints, the only programs it can attach).
#[test]
fn a_deep_session_ends_lean_without_stopping() {
    if !live_or_skip("a_deep_session_ends_lean_without_stopping", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id().to_string();
    let (guard, stderr) = start_trace(&["--json", "--pid", &me, "--deep-for", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let switched = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stderr.recv_timeout(left) {
            Ok(l) if l.contains("the deep session's time is up") => break l,
            Ok(_) => continue,
            Err(e) => panic!("no switch to lean reported: {e}"),
        }
    };
    assert!(
        switched.contains("lock watching switched deep -> lean")
            && switched.contains("syscalls:sys_enter_ioctl"),
        "{switched}"
    );
    let kvm = open_kvm();
    let (vm, dev) = create_vm_with_kvm_vfio(&kvm);
    drop(dev);
    drop(vm);
    let (events, status) = stop(guard);
    assert!(status.success(), "kvscope trace exited with {status}");
    let got: Vec<String> = kinds(&events).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        got,
        ["vm-created", "kvm-vfio-created", "fd-close", "fd-close"],
        "{events:#?}"
    );
    assert!(our_programs_loaded().is_empty());
}

#[test]
fn bad_arguments_fail_clearly() {
    let out = kvscope()
        .args(["trace", "--vm", "0xqemu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a hex kvm address"), "{err}");
    let out = kvscope()
        .args(["trace", "--ring-bytes", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = kvscope()
        .args(["trace", "--deep-for", "10d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not s, m or h"));
}

#[test]
fn record_then_replay_and_timeline_offline() {
    if !live_or_skip("record_then_replay_and_timeline_offline", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("kvscope-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.kvs");
    let me = std::process::id().to_string();
    let child = kvscope()
        .args(["record", "-o", file.to_str().unwrap(), "--pid", &me])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let stderr = g.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let l = lines.next().expect("record ended early").unwrap();
        if l.contains("Ctrl-C to stop") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let kvm = open_kvm();
    let (vm, dev) = create_vm_with_kvm_vfio(&kvm);
    drop(dev);
    drop(vm);
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) };
    let st = g.0.wait().unwrap();
    assert!(st.success(), "record exited {st}");

    let out = kvscope()
        .args(["replay", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["events"], 4, "{r:#}");
    assert_eq!(r["findings"].as_array().unwrap().len(), 0, "{r:#}");
    let vms = r["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(
        vms[0]["destroyed"], true,
        "inferred from the last close at count 1"
    );
    // Named in the recording as this process (identity frame), replayed.
    assert_eq!(
        vms[0]["identity"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{r:#}"
    );
    assert_eq!(r["header"]["tier"], "3-tracepoints");
    let addr = vms[0]["addr"].as_str().unwrap();
    let out = kvscope()
        .args(["timeline", file.to_str().unwrap(), "--vm", addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let steps: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "created",
            "~inferred-get",
            "kvm-vfio-created",
            "kvm-vfio-fd-close",
            "~inferred-put",
            "vm-fd-close",
            "~inferred-put",
            "~inferred-destroy"
        ],
        "{text}"
    );
    assert!(text.contains("-1 -> 1 (kvm-vfio fd)"), "{text}");
    assert!(text.contains("-1 -> 0 (vm fd)"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `record --pid PID`, `f` run while recording, then the recording replayed
/// with a 500 ms zombie grace: the replay's JSON.
fn record_and_replay(tag: &str, pid: u32, f: impl FnOnce()) -> Value {
    let dir = std::env::temp_dir().join(format!("kvscope-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("r.kvs");
    let pid = pid.to_string();
    let mut child = kvscope()
        .args(["record", "-o", rec.to_str().unwrap(), "--pid", &pid])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvscope record");
    let rx = lines_of(child.stderr.take().unwrap(), "kvscope");
    let mut guard = Guard(child);
    common::wait_ready(&rx);
    f();
    // Let the ring buffer drain before asking it to stop.
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(guard.0.id() as i32, libc::SIGINT) };
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "record exited {status}");
    let out = kvscope()
        .args(["replay", "--json", "--zombie-after-ms", "500"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    serde_json::from_slice(&out.stdout).expect("replay JSON")
}

/// An fd from an ioctl on `fd`, owned.
fn ioctl_fd(fd: &OwnedFd, cmd: u64, arg: u64, what: &str) -> OwnedFd {
    use std::os::fd::FromRawFd as _;
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd, arg) };
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(r) }
}

/// Every reference a VM's fds hold is followed at tier 3 (vCPU and stats
/// fds, a dup): a VM whose vCPU fd is closed 0.1 s after its VM fd ends
/// there (the kernel destroys it then), its references named; a dup'ed VM
/// fd's first close puts nothing and the dup's close ends it (fcntl and
/// dup2); no zombie and no unattributed holder. Before, the first raised a
/// zombie "held by unattributed (1)" and the second an inferred destroy
/// while the dup held the VM, then (not following dups) left it unknown.
#[test]
fn every_reference_of_a_vms_fds_is_followed() {
    if !live_or_skip("every_reference_of_a_vms_fds_is_followed", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const KVM_CREATE_VM: u64 = 0xAE01;
    const KVM_CREATE_VCPU: u64 = 0xAE41;
    const KVM_GET_STATS_FD: u64 = 0xAECE;
    let r = record_and_replay("fds", std::process::id(), || {
        let kvm = open_kvm();
        // A: one vCPU and a stats fd; VM fd closed first.
        let vm = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
        let vcpu = ioctl_fd(&vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
        let stats = ioctl_fd(&vm, KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD");
        drop(vm);
        std::thread::sleep(Duration::from_millis(100));
        drop(stats);
        drop(vcpu);
        // B: a dup'ed VM fd, the original closed first.
        let vm = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
        let dup = vm.try_clone().expect("dup");
        drop(vm);
        // C, past the grace: replay checks for zombies as recorded time
        // passes. B's dup is still open, so C cannot take B's address.
        std::thread::sleep(Duration::from_millis(700));
        drop(ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM"));
        drop(dup);
        // D: dup2 onto a high fd, the original closed first.
        let vm = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
        let high = unsafe { libc::dup2(vm.as_raw_fd(), 900) };
        assert_eq!(high, 900, "dup2: {}", std::io::Error::last_os_error());
        drop(vm);
        unsafe { libc::close(high) };
    });
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.is_empty(), "{findings:#?}");
    let vms = r["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 4, "{vms:#?}");
    // A is the one with vCPU and stats fds.
    let n_changes = |v: &Value| v["changes"].as_array().map_or(0, Vec::len);
    let a = vms.iter().find(|v| n_changes(v) > 2).expect("VM A");
    assert_eq!(a["destroyed"], true, "{a:#}");
    let changes: Vec<&str> = a["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        changes,
        [
            "+1 vm fd",
            "+1 vcpu 0 fd (inferred)",
            "+1 stats fd (inferred)",
            "-1 vm fd (inferred)",
            "-1 stats fd (inferred)",
            "-1 vcpu 0 fd (inferred)",
        ],
        "{a:#}"
    );
    assert_eq!(a["counts"], serde_json::json!([1, 2, 3, 2, 1, 0]));
    // B (fcntl F_DUPFD_CLOEXEC: std's try_clone) and D (dup2): the first
    // close of the file's two fds put nothing; the dup is followed and its
    // close ended the VM. Every VM ended, none left unknown.
    assert!(vms.iter().all(|v| v["destroyed"] == true), "{vms:#?}");
    let dups: Vec<&Value> = vms.iter().filter(|v| v["steps"] == 6).collect();
    assert_eq!(dups.len(), 2, "B and D: {vms:#?}");
    for v in dups {
        assert_eq!(v["counts"], serde_json::json!([1, 0]), "{v:#}");
    }
}

/// A fork at tier 3: the child inherits the VM fd (glibc's fork is a clone
/// without CLONE_FILES), the parent closes its copy, and the recording ends
/// while the child still holds the VM. The parent's close puts nothing and
/// the VM stays known and live, its file held by the child's copy, which
/// kvscope follows (the scenario tests take it on to the child's close).
/// Without following the copy, the VM was `unknown` (file-shared).
#[test]
fn a_forked_childs_copy_is_followed() {
    if !live_or_skip("a_forked_childs_copy_is_followed", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const KVM_CREATE_VM: u64 = 0xAE01;
    let mut child = 0;
    let r = record_and_replay("fork", std::process::id(), || {
        let kvm = open_kvm();
        let vm = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
        let fd = vm.as_raw_fd();
        // SAFETY: the child makes only async-signal-safe calls, then _exit.
        child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            unsafe {
                libc::sleep(2);
                libc::close(fd);
                libc::_exit(0);
            }
        }
        drop(vm);
        std::thread::sleep(Duration::from_millis(200));
    });
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert_eq!(status, 0, "the fork's child");
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.is_empty(), "{findings:#?}");
    let vms = r["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 1, "{vms:#?}");
    let v = &vms[0];
    assert_eq!(v["state"], "live", "{v:#}");
    assert_eq!(v["users"], 1, "{v:#}");
    // created, fd-inherited, the parent's close.
    assert_eq!(v["steps"], 3, "{v:#}");
}

/// The child of `an_exec_makes_the_vms_unknown_and_the_exit_ends_them`,
/// run by it (not on its own): waits for a line on stdin, makes VM A (fd
/// O_CLOEXEC, as KVM makes it) and VM B with a dup made without the flag,
/// then execs `sleep 1`, which keeps B's dup open until it exits.
#[test]
#[ignore = "the child process of an_exec_makes_the_vms_unknown_and_the_exit_ends_them"]
fn exec_child() {
    use std::os::unix::process::CommandExt as _;
    const KVM_CREATE_VM: u64 = 0xAE01;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let kvm = open_kvm();
    let a = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    let b = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
    assert!(unsafe { libc::dup(b.as_raw_fd()) } >= 0, "dup");
    std::mem::forget((a, b, kvm));
    let e = Command::new("sleep").arg("1").exec();
    panic!("exec sleep: {e}");
}

/// An exec at tier 3 (every fd KVM makes is O_CLOEXEC; the exec closes them
/// without close(2)): a process makes two VMs, dups one without the flag,
/// then execs `sleep 1`. Neither VM stays "live" after the exec nor is
/// raised as a zombie; the exit ends both. Before, both stayed live.
#[test]
fn an_exec_makes_the_vms_unknown_and_the_exit_ends_them() {
    if !live_or_skip(
        "an_exec_makes_the_vms_unknown_and_the_exit_ends_them",
        &["sleep"],
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "exec_child", "--nocapture"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the exec child");
    let mut stdin = child.stdin.take().unwrap();
    let mut child = Guard(child);
    let r = record_and_replay("exec", child.0.id(), || {
        use std::io::Write as _;
        writeln!(stdin).unwrap();
        let status = child.0.wait().unwrap();
        assert!(status.success(), "exec child: {status}");
    });
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.is_empty(), "{findings:#?}");
    let vms = r["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 2, "{vms:#?}");
    // Steps: created, exec, the exit's inferred destroy; B has its dup too.
    // Without the exec seen, one fewer each.
    let mut steps: Vec<u64> = vms.iter().map(|v| v["steps"].as_u64().unwrap()).collect();
    steps.sort();
    assert_eq!(steps, [3, 4], "{vms:#?}");
    for v in vms {
        assert_eq!(v["destroyed"], true, "{v:#}");
        assert_eq!(v["state"], "destroyed", "{v:#}");
    }
}

/// `kvscope trace | head -1`: once the reader is gone, the trace stops
/// cleanly (exit 0, detached), it does not fail with "Broken pipe".
#[test]
fn trace_into_a_closed_pipe_stops_cleanly() {
    if !live_or_skip("trace_into_a_closed_pipe_stops_cleanly", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id().to_string();
    let (mut guard, stderr) = start_trace(&["--json", "--pid", &me]);
    let kvm = open_kvm();
    let (vm, dev) = create_vm_with_kvm_vfio(&kvm);
    let mut first = String::new();
    let mut out = BufReader::new(guard.0.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    assert!(first.contains("vm-created"), "{first}");
    drop(out); // the reader goes away, as `head -1` does
    drop((dev, vm));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        // Each VM is more output for the closed pipe.
        drop(create_vm_with_kvm_vfio(&kvm));
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "trace kept running into a closed pipe"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err: Vec<String> = stderr.try_iter().collect();
    assert!(status.success(), "exit {status}: {err:?}");
    assert!(!err.iter().any(|l| l.contains("Broken pipe")), "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("standard output was closed")),
        "{err:?}"
    );
    assert!(our_programs_loaded().is_empty());
}

/// `record --duration 1 -o PATH`: its exit status and stderr.
fn record_for_a_second(path: &std::path::Path) -> (Option<i32>, String) {
    let out = kvscope()
        .args(["record", "--duration", "1", "-o"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `record --duration`: the banner says when it ends, not "Ctrl-C to stop",
/// and it ends by itself; `-o /dev/full`: the error names the file it could
/// not write.
#[test]
fn a_timed_recording_says_when_it_ends_and_what_it_could_not_write() {
    if !live_or_skip(
        "a_timed_recording_says_when_it_ends_and_what_it_could_not_write",
        &[],
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = std::env::temp_dir().join(format!("kvscope-timed-{}.kvs", std::process::id()));
    let (code, err) = record_for_a_second(&f);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("for 1 s (Ctrl-C ends it sooner)"), "{err}");
    assert!(!err.contains("Ctrl-C to stop"), "{err}");
    std::fs::remove_file(&f).unwrap();
    let (code, err) = record_for_a_second(std::path::Path::new("/dev/full"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("writing /dev/full: No space left on device"),
        "{err}"
    );
    assert!(our_programs_loaded().is_empty());
}

/// `fd` sent over `tx` with SCM_RIGHTS and received on `rx`: the new fd.
fn pass_over_socket(tx: &OwnedFd, rx: &OwnedFd, fd: i32) -> OwnedFd {
    use std::os::fd::FromRawFd as _;
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut byte = [0u8; 1];
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
    }
    let n = unsafe { libc::sendmsg(tx.as_raw_fd(), &msg, 0) };
    assert_eq!(n, 1, "sendmsg: {}", std::io::Error::last_os_error());
    let mut rbuf = vec![0u8; space];
    let mut rmsg: libc::msghdr = unsafe { std::mem::zeroed() };
    rmsg.msg_iov = &mut iov;
    rmsg.msg_iovlen = 1;
    rmsg.msg_control = rbuf.as_mut_ptr().cast();
    rmsg.msg_controllen = space;
    let n = unsafe { libc::recvmsg(rx.as_raw_fd(), &mut rmsg, libc::MSG_CMSG_CLOEXEC) };
    assert_eq!(n, 1, "recvmsg: {}", std::io::Error::last_os_error());
    let got = unsafe {
        let c = libc::CMSG_FIRSTHDR(&rmsg);
        assert!(
            !c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS,
            "no SCM_RIGHTS back"
        );
        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
    };
    unsafe { OwnedFd::from_raw_fd(got) }
}

/// Passed fds at tier 3: a VM fd passed with SCM_RIGHTS over a socket pair
/// and copied with pidfd_getfd (both into this process, which kvscope
/// records), then the three closed, the original first. Each new fd is
/// known by its file's f_op (learnt at KVM_CREATE_VM) and followed, so the
/// first two closes put nothing, the last ends the VM, and its state is
/// never unknown. Without following them, the first close found the file
/// held by fds kvscope did not follow: the VM `unknown`, not destroyed.
#[test]
fn passed_fds_are_followed() {
    if !live_or_skip("passed_fds_are_followed", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::fd::FromRawFd as _;
    const KVM_CREATE_VM: u64 = 0xAE01;
    let r = record_and_replay("passed", std::process::id(), || {
        let kvm = open_kvm();
        let vm = ioctl_fd(&kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
        let mut sv = [0; 2];
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
        let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let passed = pass_over_socket(&tx, &rx, vm.as_raw_fd());
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let copied =
            unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), vm.as_raw_fd(), 0) };
        assert!(
            copied >= 0,
            "pidfd_getfd: {}",
            std::io::Error::last_os_error()
        );
        let copied = unsafe { OwnedFd::from_raw_fd(copied as i32) };
        drop(vm);
        drop(passed);
        drop(copied);
    });
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.is_empty(), "{findings:#?}");
    let vms = r["vms"].as_array().expect("vms");
    assert_eq!(vms.len(), 1, "{vms:#?}");
    let v = &vms[0];
    assert_eq!(v["state"], "destroyed", "{v:#}");
    assert_eq!(v["counts"], serde_json::json!([1, 0]), "{v:#}");
    // created, two fd-received, three closes, the inferred put and destroy.
    assert_eq!(v["steps"], 8, "{v:#}");
}
