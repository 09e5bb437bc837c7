//! Booting a lab kernel under QEMU (TCG, `-cpu max` so the guest has SVM and
//! KVM loads; q35 with an emulated Intel IOMMU and the `edu` device); the
//! command's output between the init's markers; QEMU killed by pid on timeout.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::debian::Unpacked;

pub struct Boot {
    /// Lines between the begin and end markers.
    pub output: Vec<String>,
    pub rc: Option<i32>,
    pub console: String,
    pub secs: f64,
    /// How QEMU itself ended, with what it wrote to stderr.
    pub qemu_exit: String,
}

impl Boot {
    /// Why the guest reported no exit status, in one line: QEMU's own exit and
    /// its last words, or the console's last line.
    pub fn why_no_rc(&self) -> String {
        let last = self
            .console
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(the console is empty)");
        format!("{}; the console's last line: {last}", self.qemu_exit)
    }
}

/// Guest failures that are the emulator's, not the guest's code: a boot that
/// shows one is killed at once, its console kept, and booted again, once,
/// saying so; a second one fails the run.
const EMULATOR_FAULTS: &[(&str, &str)] = &[
    // The emulated timer never fired on an idle vCPU: RCU's own diagnosis of
    // a timer-handling failure below the guest (seen under TCG with the host
    // overloaded; the vCPU stayed halted for good). A stall inside the guest
    // (a CPU spinning, a lock never released) prints no such line.
    (
        "timer wakeup didn't happen",
        "the guest kernel reports its timer never fired on an idle vCPU",
    ),
    // A CPU executed the temporary int3 of a text patch after the patch had
    // finished: stale code under multi-threaded TCG. Seen once, in the cdev
    // kernel at finish_task_switch+0x9a: the 2-byte jump label of
    // preempt_notifier_key at +0x99 (its __jump_table entry), which KVM flips
    // when the first VM is created and the last destroyed; kvscope patches no
    // such site. QEMU 7.2 did the same in __schedule (notes/guest-lab.md).
    (
        "Oops: int3",
        "a CPU of the guest trapped on the int3 of a finished text patch (stale code under multi-threaded TCG)",
    ),
];

/// What the guest machine has besides the kernel and initramfs.
pub struct Machine<'a> {
    pub mem_mb: u32,
    /// edu devices (each in its own IOMMU group).
    pub edu: u32,
    /// A raw disk image, read-only (the host lab's root file system).
    pub disk: Option<&'a Path>,
    /// Kernel arguments after the lab's own.
    pub append: &'a str,
    /// Print the command's output lines as they come, after this prefix
    /// (a long run shows its progress).
    pub live: Option<&'a str>,
    /// For a guest with a console heartbeat: no line for this long means the
    /// guest froze; the vCPUs' state is read (see [`super::frozen`]) and it
    /// is booted again, once, as for an emulator fault.
    pub silence: Option<Duration>,
}

/// The matrix's guest: 2 GiB, one edu device, everything in the initramfs.
pub const MATRIX: Machine<'static> = Machine {
    mem_mb: 2048,
    edu: 1,
    disk: None,
    append: "",
    live: None,
    silence: None,
};

/// Boots, collects the command's output, kills QEMU by pid on timeout. A boot
/// the emulator failed (see [`EMULATOR_FAULTS`]) is killed at once and booted
/// again, once, saying so; a second one fails.
pub fn boot(k: &Unpacked, initrd: &Path, timeout: Duration) -> anyhow::Result<Boot> {
    boot_on(k, initrd, &MATRIX, timeout)
}

/// [`boot`] on a given machine.
pub fn boot_on(
    k: &Unpacked,
    initrd: &Path,
    m: &Machine,
    timeout: Duration,
) -> anyhow::Result<Boot> {
    let once = || boot_once(k, initrd, m, timeout);
    match once()? {
        Ok(b) => Ok(b),
        Err(stranded) => {
            let log = crate::setup::cache_dir()
                .join("lab")
                .join(format!("stranded-{}.console", k.release));
            let _ = std::fs::write(&log, &stranded.console);
            eprintln!(
                "lab: {}: {} (\"{}\"; console in {}); booting it again, once",
                k.release,
                stranded.what,
                stranded.needle,
                log.display()
            );
            match once()? {
                Ok(b) => Ok(b),
                Err(again) => bail!(
                    "guest {}: stranded twice in a row ({}, then {}: {}); first console:\n{}\n\
                     second console:\n{}",
                    k.release,
                    stranded.needle,
                    again.needle,
                    again.what,
                    stranded.console,
                    again.console
                ),
            }
        }
    }
}

/// The assertion QEMU aborted on, if it did: a bug of the emulator, which
/// no guest code may cause (seen: iotlb_to_section's section index, 1.7 s
/// into a cdev boot under multi-threaded TCG with the emulated IOMMU).
fn qemu_assertion<'a>(status: &std::process::ExitStatus, said: &'a str) -> Option<&'a str> {
    if status.signal() != Some(libc::SIGABRT) {
        return None;
    }
    said.lines()
        .find(|l| l.contains("Assertion") && l.contains("failed"))
}

/// A QMP socket path of this process, removed when dropped.
struct QmpSocket(std::path::PathBuf);

impl QmpSocket {
    fn new() -> QmpSocket {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        QmpSocket(
            std::env::temp_dir().join(format!("kvscope-lab-qmp-{}-{n}.sock", std::process::id())),
        )
    }
}

impl Drop for QmpSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A boot ended on an emulator fault or a frozen guest; its console so far.
struct Stranded {
    /// What ended it, in a few words (the fault's console text).
    needle: String,
    /// Why it is not the guest's code, with the evidence.
    what: String,
    console: String,
}

fn boot_once(
    k: &Unpacked,
    initrd: &Path,
    m: &Machine,
    timeout: Duration,
) -> anyhow::Result<Result<Boot, Stranded>> {
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "q35,sata=off", "-cpu", "max", "-smp", "2"])
        .args(["-m", &m.mem_mb.to_string()])
        .args(["-accel", "tcg,thread=multi"])
        .args(["-device", "intel-iommu"]);
    for _ in 0..m.edu {
        qemu.args(["-device", "edu"]);
    }
    // The monitor a frozen guest's vCPUs are read through.
    let qmp = QmpSocket::new();
    if m.silence.is_some() {
        qemu.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.0.display()));
    }
    if let Some(disk) = m.disk {
        qemu.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            disk.display()
        ));
    }
    let mut child = qemu
        .args(["-kernel"])
        .arg(k.root.join("boot").join(format!("vmlinuz-{}", k.release)))
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 intel_iommu=on {}",
            m.append
        ))
        .args([
            "-no-reboot",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // QEMU's own errors (a file it cannot open, memory it cannot get) go to
    // stderr: kept to say why a guest ended without its exit status.
    let stderr = child.stderr.take().expect("piped");
    let qemu_said = std::thread::spawn(move || {
        let mut said = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            said.push_str(&l);
            said.push('\n');
        }
        said
    });
    let mut console = String::new();
    let mut output = Vec::new();
    let mut inside = false;
    let mut rc = None;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(m.silence.map_or(left, |s| s.min(left))) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_owned();
                console.push_str(&l);
                console.push('\n');
                if let Some((needle, what)) = EMULATOR_FAULTS.iter().find(|(n, _)| l.contains(n)) {
                    // The oops's registers, code bytes and stack follow: kept
                    // as the evidence (up to 60 lines or 2 s).
                    for _ in 0..60 {
                        match rx.recv_timeout(Duration::from_secs(2)) {
                            Ok(more) => {
                                console.push_str(more.trim_end_matches('\r'));
                                console.push('\n');
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Err(Stranded {
                        needle: (*needle).to_owned(),
                        what: format!("{what}: the emulator, not the guest's code"),
                        console,
                    }));
                }
                if l.contains("KVSCOPE-LAB-BEGIN") {
                    inside = true;
                } else if l.contains("KVSCOPE-LAB-END") {
                    inside = false;
                } else if let Some(v) = l.strip_prefix("KVSCOPE-LAB-RC=") {
                    rc = v.trim().parse().ok();
                } else if inside {
                    if let Some(prefix) = m.live {
                        eprintln!("{prefix}{l}");
                    }
                    output.push(l);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if started.elapsed() < timeout => {
                let silent = m.silence.unwrap_or_default().as_secs();
                let map = k
                    .root
                    .join("boot")
                    .join(format!("System.map-{}", k.release));
                let seen = super::frozen::evidence(child.id(), &qmp.0, &map, &console);
                let _ = child.kill();
                let _ = child.wait();
                console.push_str(&format!("[lab] silent for {silent} s: {seen}\n"));
                return Ok(Err(Stranded {
                    needle: format!("no console line for {silent} s"),
                    what: format!(
                        "the guest froze (not even its heartbeat or watchdog printed): {seen}"
                    ),
                    console,
                }));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Bounded: the guest is killed, never left running.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "guest {} timed out after {:.0} s; console:\n{console}",
                    k.release,
                    timeout.as_secs_f64()
                );
            }
        }
    }
    let status = child.wait();
    let said = qemu_said.join().unwrap_or_default();
    if let Some(assertion) = status
        .as_ref()
        .ok()
        .and_then(|st| qemu_assertion(st, &said))
    {
        console.push_str(&format!("[lab] QEMU aborted: {assertion}\n"));
        return Ok(Err(Stranded {
            needle: "QEMU: Assertion ... failed".to_owned(),
            what: format!(
                "QEMU aborted on its own assertion ({assertion}): the emulator, not the guest's code"
            ),
            console,
        }));
    }
    let qemu_exit = match status {
        Ok(st) => format!("QEMU ended with {st}"),
        Err(e) => format!("QEMU's end unknown ({e})"),
    };
    let qemu_exit = match said.trim() {
        "" => qemu_exit,
        said => format!("{qemu_exit}, saying: {}", said.replace('\n', " | ")),
    };
    Ok(Ok(Boot {
        output,
        rc,
        console,
        secs: started.elapsed().as_secs_f64(),
        qemu_exit,
    }))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt as _, process::ExitStatus};

    use super::qemu_assertion;

    #[test]
    fn an_abort_on_qemus_own_assertion_is_the_emulators() {
        let said = "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: \
                    Assertion `section_index < d->map.sections_nb' failed.\n";
        // A wait status killed by signal 6.
        let aborted = ExitStatus::from_raw(libc::SIGABRT);
        assert!(qemu_assertion(&aborted, said).is_some_and(|l| l.contains("iotlb_to_section")));
        // Killed otherwise, or an abort without an assertion: not this.
        assert_eq!(
            qemu_assertion(&ExitStatus::from_raw(libc::SIGKILL), said),
            None
        );
        assert_eq!(qemu_assertion(&aborted, "out of memory\n"), None);
        assert_eq!(qemu_assertion(&ExitStatus::from_raw(0), said), None);
    }
}
