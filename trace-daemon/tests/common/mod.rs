//! Helpers shared by the live test files: the skip rule, process guards,
//! /dev/kvm set-up, and the count of our programs still in the kernel.
#![allow(dead_code)] // each test file uses a different subset

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::{Child, Command},
    sync::Mutex,
};

/// Live tests load BPF programs and count what is loaded: one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Kills (and reaps) the child on drop, so a failing assertion leaves no
/// tracer attached and no server running.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True when a live test can run here: root, /dev/kvm, and `commands` on PATH.
/// Otherwise it skips with the reason, unless KVSCOPE_REQUIRE_LIVE=1 (set by
/// `cargo xtask test`), where a skip is a failure.
pub fn live_or_skip(test: &str, commands: &[&str]) -> bool {
    let missing_cmd = commands.iter().find(|c| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_owned())
    } else if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm".to_owned())
    } else {
        missing_cmd.map(|c| format!("{c} not installed"))
    };
    match why {
        None => true,
        Some(w) if std::env::var("KVSCOPE_REQUIRE_LIVE").as_deref() == Ok("1") => {
            panic!("{test}: live test cannot run ({w}) but KVSCOPE_REQUIRE_LIVE=1")
        }
        Some(w) => {
            eprintln!("{test}: skipped: {w}");
            false
        }
    }
}

pub fn open_kvm() -> OwnedFd {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .expect("open /dev/kvm")
        .into()
}

/// KVM_CREATE_VM, then KVM_CREATE_DEVICE(KVM_DEV_TYPE_VFIO): (vm fd, device fd).
pub fn create_vm_with_kvm_vfio(kvm: &OwnedFd) -> (OwnedFd, OwnedFd) {
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE01, 0) };
    assert!(
        vm >= 0,
        "KVM_CREATE_VM: {}",
        std::io::Error::last_os_error()
    );
    let mut cd = [4u32 /* KVM_DEV_TYPE_VFIO */, 0, 0];
    let r = unsafe { libc::ioctl(vm, 0xC00C_AEE0, cd.as_mut_ptr()) };
    assert_eq!(
        r,
        0,
        "KVM_CREATE_DEVICE: {}",
        std::io::Error::last_os_error()
    );
    unsafe { (OwnedFd::from_raw_fd(vm), OwnedFd::from_raw_fd(cd[1] as i32)) }
}

/// Reads `r` line by line in a thread: each line echoed to stderr behind
/// `[tag]` and sent on the returned channel.
pub fn lines_of(
    r: impl std::io::Read + Send + 'static,
    tag: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (30 s at most) for kvscope's `ready:` banner among `rx`'s lines.
pub fn wait_ready(rx: &std::sync::mpsc::Receiver<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(l) if l.starts_with("kvscope: ready:") => return,
            Ok(_) => {}
            Err(e) => panic!("kvscope never printed its ready banner: {e}"),
        }
    }
}

/// True when `name` is on PATH. Missing, the test skips with that reason,
/// unless KVSCOPE_REQUIRE_LIVE=1 (`cargo xtask test` installs it), where it fails.
pub fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("KVSCOPE_REQUIRE_LIVE").as_deref() != Ok("1"),
            "{name} is missing but KVSCOPE_REQUIRE_LIVE=1 (cargo xtask test installs it)"
        );
        eprintln!("skipped: {name} not installed");
    }
    found
}

/// Our programs still loaded in the kernel (names are cut to 15 characters)
/// that no other living process holds: another kvscope on this host (the
/// installed service, a developer's trace) keeps its own programs, which are
/// not the test's to judge; a program nobody holds was left behind. A
/// stopped kvscope's release child holds its links for a few seconds: it is
/// waited for first (30 s at most), so that what it held is judged too.
pub fn our_programs_loaded() -> Vec<String> {
    wait_release_children();
    let ours = kvscope::attach::hooks::all_program_names();
    let others = programs_held_by_other_processes();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !others.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| {
            ours.iter()
                .any(|o| o.starts_with(n.as_str()) && n.len() >= 8)
        })
        .collect()
}

/// Waits (30 s at most) until no `kvscope-release` process is left alive (a
/// zombie has released everything; reaping it is its new parent's business).
fn wait_release_children() {
    let name = kvscope::attach::handoff::CHILD_NAME.to_string_lossy();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let any = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|p| {
                // /proc/PID/stat: "pid (comm) state ...".
                std::fs::read_to_string(p.path().join("stat")).is_ok_and(|st| {
                    st.split_once(" (")
                        .and_then(|(_, rest)| rest.rsplit_once(") "))
                        .is_some_and(|(comm, rest)| comm == name && !rest.starts_with('Z'))
                })
            });
        if !any {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Ids of the BPF programs that processes other than this one hold, through
/// a program or link fd (`prog_id:` in /proc/PID/fdinfo/FD).
fn programs_held_by_other_processes() -> std::collections::HashSet<u32> {
    let me = std::process::id().to_string();
    let mut held = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for p in procs.filter_map(Result::ok) {
        let name = p.file_name();
        let name = name.to_string_lossy();
        if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            held.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    held
}

pub fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
pub fn certificates(dir: &Path) {
    sh(
        dir,
        r#"
        q() { "$@" >/dev/null 2>&1; }
        q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=kvscope-test-ca
        q openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1
        printf 'subjectAltName=IP:127.0.0.1\n' > san.ext
        q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext
        q openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=prometheus
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        q openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext
        "#,
    );
}

/// A recording in which tgid 42 takes a reference on a VM whose count
/// reached zero (get-after-zero, critical); its delivery verified or not.
pub fn get_after_zero_recording(verified: bool) -> Vec<u8> {
    use trace_common::{Event, HookId, known};
    let h = kvscope::recording::Header {
        abi_version: trace_common::ABI_VERSION,
        kvscope_version: "test".into(),
        kernel_release: "6.12.0-test".into(),
        hostname: "lab".into(),
        destroy_observable: true,
        delivery: kvscope::recording::Delivery {
            verified,
            latency_us: Some(40),
            detail: if verified {
                String::new()
            } else {
                "no event came back".into()
            },
        },
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut w = kvscope::recording::Writer::new(&mut buf, &h).unwrap();
    // Created, the last put (1 -> 0), then a get that reads 1.
    let kvm = 0xffff_8881_0276_9000u64;
    for (i, (hook, users)) in [
        (HookId::KvmCreateVm, 1),
        (HookId::KvmPutKvm, 1),
        (HookId::KvmGetKvm, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = Event::ZERO;
        e.ts_ns = 1_000_000_000 + i as u64 * 1000;
        e.pid_tgid = (42u64 << 32) | 42;
        e.hook = hook as u16;
        e.kvm = kvm;
        e.users_count = users;
        e.known = known::KVM | known::USERS;
        w.event(&e).unwrap();
    }
    w.flush().unwrap();
    buf
}
