//! Live tests on this host's real kernel: `kvscope trace --json` while the test
//! creates VMs and kvm-vfio devices through /dev/kvm, and `kvscope check --json`.
//! They need root and /dev/kvm. Without them they skip with the reason, unless
//! KVSCOPE_REQUIRE_LIVE=1 (set by `cargo xtask test`), where a skip is a failure.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Live tests load BPF programs; one at a time so their assertions about what
/// is loaded do not see each other's programs.
static SERIAL: Mutex<()> = Mutex::new(());

const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_DEVICE: libc::c_ulong = 0xC00C_AEE0;
const KVM_DEV_TYPE_VFIO: u32 = 4;

fn live_or_skip(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !std::path::Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("KVSCOPE_REQUIRE_LIVE").as_deref() == Ok("1") => {
            panic!("{test}: live test cannot run ({why}) but KVSCOPE_REQUIRE_LIVE=1")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

fn kvscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvscope"))
}

/// Kills the child on drop, so a failing assertion leaves no tracer attached.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ioctl(fd: i32, cmd: libc::c_ulong, arg: usize) -> i32 {
    let r = unsafe { libc::ioctl(fd, cmd, arg) };
    assert!(
        r >= 0,
        "ioctl {cmd:#x}: {}",
        std::io::Error::last_os_error()
    );
    r
}

struct Vm {
    vm: OwnedFd,
    dev: OwnedFd,
    vm_fd: i32,
    dev_fd: i32,
}

fn create_vm_with_vfio_device(kvm: &OwnedFd) -> Vm {
    let vm_fd = ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0);
    #[repr(C)]
    struct CreateDevice {
        ty: u32,
        fd: u32,
        flags: u32,
    }
    let mut cd = CreateDevice {
        ty: KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    ioctl(vm_fd, KVM_CREATE_DEVICE, &mut cd as *mut _ as usize);
    Vm {
        vm: unsafe { OwnedFd::from_raw_fd(vm_fd) },
        dev: unsafe { OwnedFd::from_raw_fd(cd.fd as i32) },
        vm_fd,
        dev_fd: cd.fd as i32,
    }
}

fn start_trace(args: &[&str]) -> (Guard, std::sync::mpsc::Receiver<String>) {
    let mut child = kvscope()
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvscope trace");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[kvscope] {line}");
            let _ = tx.send(line);
        }
    });
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

fn our_programs_loaded() -> Vec<String> {
    // Program names are truncated to 15 characters by the kernel.
    let ours = kvscope::hooks::all_program_names();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| {
            ours.iter()
                .any(|o| o.starts_with(n.as_str()) && n.len() >= 8)
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<(String, Option<i64>)> {
    events
        .iter()
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
    if !live_or_skip("trace_sees_vm_and_kvm_vfio_lifecycles_in_order") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let (guard, _stderr) = start_trace(&["--json", "--pid", &me.to_string()]);

    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("open /dev/kvm");
    let kvm: OwnedFd = kvm.into();
    // Two VMs; the first closes its kvm-vfio device first, the second its VM fd first.
    let a = create_vm_with_vfio_device(&kvm);
    let b = create_vm_with_vfio_device(&kvm);
    let (a_vm, a_dev, b_vm, b_dev) = (a.vm_fd, a.dev_fd, b.vm_fd, b.dev_fd);
    drop(a.dev);
    drop(a.vm);
    drop(b.vm);
    drop(b.dev);

    let (events, status) = stop(guard);
    assert!(status.success(), "kvscope trace exited with {status}");
    let got = kinds(&events);
    let want: Vec<(String, Option<i64>)> = vec![
        ("vm-created".into(), Some(a_vm as i64)),
        ("kvm-vfio-created".into(), Some(a_dev as i64)),
        ("vm-created".into(), Some(b_vm as i64)),
        ("kvm-vfio-created".into(), Some(b_dev as i64)),
        ("fd-closed".into(), Some(a_dev as i64)),
        ("fd-closed".into(), Some(a_vm as i64)),
        ("fd-closed".into(), Some(b_vm as i64)),
        ("fd-closed".into(), Some(b_dev as i64)),
    ];
    assert_eq!(got, want, "events: {events:#?}");
    for e in &events {
        assert_eq!(e["tgid"].as_u64(), Some(me as u64), "{e}");
    }
    // Through the fd the tracepoint tier reaches the VM: real pointers and counts.
    let kvm_a = events[0]["kvm"].as_u64().expect("kvm pointer of VM a");
    let kvm_b = events[2]["kvm"].as_u64().expect("kvm pointer of VM b");
    assert_ne!(kvm_a, kvm_b);
    assert_eq!(events[1]["kvm"].as_u64(), Some(kvm_a));
    let users: Vec<Option<i64>> = events.iter().map(|e| e["users"].as_i64()).collect();
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
    if !live_or_skip("check_reports_this_sandbox_as_tier_three") {
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
    assert_eq!(tps.len(), kvscope::hooks::TRACEPOINTS.len());
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

#[test]
fn bad_arguments_fail_clearly() {
    let out = kvscope().args(["trace", "--vm", "qemu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither a kvm address"), "{err}");
    let out = kvscope()
        .args(["trace", "--ring-bytes", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn record_then_replay_and_timeline_offline() {
    if !live_or_skip("record_then_replay_and_timeline_offline") {
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
    let kvm: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .unwrap()
        .into();
    let v = create_vm_with_vfio_device(&kvm);
    drop(v.dev);
    drop(v.vm);
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
