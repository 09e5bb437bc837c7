//! `kvscope top` on a real terminal (tmux) while this test's VMs come and go,
//! and piped with --batch. Root and /dev/kvm, tmux; skips with the reason
//! otherwise (a failure under KVSCOPE_REQUIRE_LIVE=1).
use std::{
    process::Command,
    time::{Duration, Instant},
};

mod common;
use common::{SERIAL, create_vm_with_kvm_vfio, live_or_skip, open_kvm};

/// A tmux session of our own, killed when dropped (and with it kvscope).
struct Tmux(String);

impl Tmux {
    fn new(cmd: &str) -> Tmux {
        let name = format!("kvscope-top-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "200",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("tmux new-session");
        assert!(ok.success(), "tmux new-session failed");
        Tmux(name)
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen once `want` holds of it (30 s at most).
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen();
            if want(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never showed; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    /// kvscope takes SIGHUP (tmux's kill-session) as a reload and would live
    /// on: it is stopped with Ctrl-C, killed if that does not end it.
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let pid = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.0, "#{pane_pid}"])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<i32>()
                    .ok()
            });
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "C-c"])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(p) = pid.filter(|_| self.alive()) {
            // SAFETY: kill has no memory preconditions; p is the pane's process.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn top_redraws_as_vms_come_and_go_and_quits_on_ctrl_c() {
    if !live_or_skip(
        "top_redraws_as_vms_come_and_go_and_quits_on_ctrl_c",
        &["tmux"],
    ) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id().to_string();
    let kvm = open_kvm();
    // A VM made before top attaches: kvscope saw nothing of it, top says so.
    let (old_vm, old_dev) = create_vm_with_kvm_vfio(&kvm);
    let term = Tmux::new(&format!(
        "{} top --interval 1 --vm {me}",
        env!("CARGO_BIN_EXE_kvscope")
    ));
    let before = |s: &str| {
        s.lines()
            .any(|l| l.contains(&me) && l.contains("1 VM running since before kvscope attached"))
    };
    term.wait_for("the VM from before attach", before);
    let (vm, dev) = create_vm_with_kvm_vfio(&kvm);
    // Our new VM, by our pid, held by its fd and its kvm-vfio device's.
    let followed = |s: &str| {
        s.lines()
            .any(|l| l.contains(&me) && l.contains("vm fd 1") && l.contains("kvm-vfio fd 1"))
    };
    let s = term.wait_for("our new VM's row", |s| followed(s) && before(s));
    assert!(s.contains("Ctrl-C quits"), "{s}");
    assert_eq!(
        s.matches("kvscope top:").count(),
        1,
        "redrawn in place, not scrolled:\n{s}"
    );
    drop(dev);
    drop(vm);
    term.wait_for("the new row gone once its fds closed", |s| {
        !followed(s) && before(s)
    });
    drop(old_dev);
    drop(old_vm);
    term.wait_for("no VM left", |s| s.contains("(no live VM"));
    Command::new("tmux")
        .args(["send-keys", "-t", &term.0, "C-c"])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while term.alive() {
        assert!(
            Instant::now() < deadline,
            "kvscope top still running 20 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_batch_prints_plain_tables_and_exits() {
    if !live_or_skip("top_batch_prints_plain_tables_and_exits", &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_kvscope"))
        .args([
            "top",
            "--batch",
            "2",
            "--interval",
            "1",
            "--vm",
            "nosuch-vm",
        ])
        .output()
        .expect("kvscope top --batch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("kvscope top:").count(), 2, "{text}");
    assert!(
        !text.contains('\x1b'),
        "no terminal codes when piped: {text:?}"
    );
    assert!(text.contains("(no live VM matches VM nosuch-vm)"), "{text}");
}
