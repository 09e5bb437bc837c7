//! `qemu quit|kill --cdev`: Debian's QEMU as the client instead of the
//! driver's own ioctls. QEMU starts a VM with the edu device assigned through
//! its iommufd backend (`-object iommufd` and the device's cdev), answers on QMP once its devices are realized, then either
//! quits (`quit` over QMP: QEMU's own exit path) or is SIGKILLed (the
//! kernel's teardown of a crashed QEMU). The lab copies QEMU, its libraries
//! and the `pc` machine's firmware into the guest (xtask lab/initramfs.rs).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use lab_driver::protocol::QEMU;

use crate::rig;

const QMP: &str = "/tmp/kvscope-lab-qmp.sock";
/// QEMU under KVM nested in the lab's emulated CPU starts in seconds; the
/// bound leaves room for a loaded host.
const READY_WITHIN: Duration = Duration::from_secs(90);
const RUN_FOR: Duration = Duration::from_secs(2);

/// How the VM ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    Kill,
}

impl End {
    pub fn parse(word: Option<&str>) -> anyhow::Result<End> {
        match word {
            Some("quit") => Ok(End::Quit),
            Some("kill") => Ok(End::Kill),
            other => bail!("qemu: {other:?}: say how the VM ends, quit or kill"),
        }
    }
}

/// QEMU's command line: one vCPU, no devices but the edu device, QMP.
fn command(bdf: &str) -> Command {
    let mut c = Command::new(QEMU);
    c.args([
        "-name", "lab-qemu", "-accel", "kvm", "-machine", "pc", "-m", "32",
    ])
    .args([
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ])
    .args(["-qmp", &format!("unix:{QMP},server=on,wait=off")])
    .args(["-object", "iommufd,id=ifd0", "-device"])
    .arg(format!("vfio-pci,host={bdf},iommufd=ifd0"));
    c
}

/// A QMP session: the greeting read, capabilities negotiated.
struct Qmp {
    out: UnixStream,
    inp: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects once QEMU listens (it does after its devices are realized).
    fn connect(qemu: &mut Child) -> anyhow::Result<Qmp> {
        let t0 = Instant::now();
        let out = loop {
            if let Some(st) = qemu.try_wait()? {
                bail!("QEMU exited before it answered on QMP: {st}");
            }
            match UnixStream::connect(QMP) {
                Ok(s) => break s,
                Err(_) if t0.elapsed() < READY_WITHIN => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => bail!("QMP {QMP}: {e} after {READY_WITHIN:?}"),
            }
        };
        out.set_read_timeout(Some(READY_WITHIN))?;
        let inp = BufReader::new(out.try_clone()?);
        let mut q = Qmp { out, inp };
        q.line().context("QMP greeting")?;
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn line(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut l = String::new();
        if self.inp.read_line(&mut l)? == 0 {
            bail!("QMP: QEMU closed the connection");
        }
        Ok(serde_json::from_str(&l)?)
    }

    /// Sends a command and returns its answer (events in between skipped).
    fn execute(&mut self, cmd: &str) -> anyhow::Result<serde_json::Value> {
        writeln!(self.out, "{{\"execute\": \"{cmd}\"}}")?;
        loop {
            let v = self.line()?;
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {e}");
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }
}

pub fn run(end: End, cdev: bool) -> anyhow::Result<()> {
    if !cdev {
        // The group backend is not driven by any lab scenario: untested here.
        bail!("qemu: only the iommufd backend is driven (add --cdev)");
    }
    let (bdf, _) = rig::edu()?;
    let _ = std::fs::remove_file(QMP);
    let mut qemu = command(&bdf)
        .spawn()
        .with_context(|| format!("{QEMU} (copied into the guest by the lab)"))?;
    let r = drive(&mut qemu, end);
    if r.is_err() {
        // Never leave QEMU behind: the lab's next step needs the device.
        let _ = qemu.kill();
        let _ = qemu.wait();
    }
    r?;
    println!("[driver] QEMU (iommufd backend, {bdf}) ended: {end}");
    Ok(())
}

fn drive(qemu: &mut Child, end: End) -> anyhow::Result<()> {
    let mut q = Qmp::connect(qemu)?;
    let st = q.execute("query-status")?;
    println!("[driver] {:<38} -> {st}", "QMP query-status");
    // Running a while, as a VM does (and long enough for kvscope to read
    // QEMU's command line for its name).
    std::thread::sleep(RUN_FOR);
    match end {
        End::Quit => {
            // QEMU answers, then exits: the answer may or may not arrive.
            let _ = q.execute("quit");
        }
        End::Kill => qemu.kill()?,
    }
    let st = qemu.wait()?;
    println!("[driver] {:<38} -> {st}", "QEMU exit");
    if end == End::Quit && !st.success() {
        bail!("QEMU's quit ended with {st}");
    }
    Ok(())
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Quit => "quit over QMP",
            End::Kill => "SIGKILL",
        })
    }
}
