//! `kvscope-lab-driver MODE [OPTIONS]`: in a guest, drive the kernel through the
//! VFIO <-> KVM path (rig.rs): a VM and its kvm-vfio device, the VFIO group of the
//! `edu` device (bound to vfio-pci) added to it, the device opened; then MODE:
//! - `dev-first` (device, kvm-vfio, VM), `vm-first` (VM, kvm-vfio, device), or
//!   `exit` (close nothing: process exit closes everything);
//! - `abba`: (test module mode=abba) two threads deadlock ABBA on kvm->lock
//!   and dev_set->lock through the device's ioctls, until killed;
//! - `race N`: a second thread opens and closes the device N times while the
//!   main thread closes the VM and kvm-vfio fds (opens racing the last puts);
//! - `bench N`: the overhead loops of bench.rs: N hooked attr add/del and N
//!   KVM_RUN exits, 10 N unrelated ioctls and 10 N pipe round trips;
//! - `loops N`: the bench's loops that need no VFIO (N KVM_RUN exits where
//!   /dev/kvm runs a vCPU, 10 N ioctls, 10 N pipe round trips), for a host;
//! - `stress N`: kvscope started and stopped in a loop around the dev-first
//!   scenario (stress.rs): N record cycles, trace, daemon and early stops;
//! - `suite JSON`: the lab's scenarios (suite.rs, protocol.rs), one JSON
//!   document back;
//! - `lockdown`: `kvscope check` and the daemon at lockdown integrity, then
//!   confidentiality (lockdown.rs); last in a guest, it cannot be undone;
//! - `qemu quit|kill`: Debian's QEMU as the client, the edu device assigned,
//!   ended by QMP's quit or SIGKILL (qemu.rs; with `--cdev`: its iommufd backend);
//! - `fork`: a VM alone, then a fork: the parent closes its VM fd at once, the
//!   child closes its copy a second later (the last reference) and exits;
//! - `pass`: a VM fd handed to a child by SCM_RIGHTS and pidfd_getfd
//!   (passed.rs); the parent closes its fd, the child both copies later.
//!
//! Options: `--cdev` opens the edu device through its cdev bound to an
//! iommufd instead of its group (the dev-first / vm-first / exit orders);
//! `--testdev` uses lab-kernel/testdev's device (kvscope-testdev, an
//! emulated-IOMMU VFIO device) instead of edu; `--no-kvm` never adds the group
//! to the kvm-vfio device; `--expect-open-error` expects VFIO_GROUP_GET_DEVICE_FD
//! to fail (a driver refusing the open) and closes the rest in MODE's order.
//! Each step prints `[driver] step -> result`.
mod bench;
mod cdev;
mod lockdown;
mod objects;
mod passed;
mod qemu;
mod rig;
mod running;
mod stress;
mod suite;
mod vcpu;

use lab_driver::protocol;

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

use rig::Rig;

const OPTIONS: &[&str] = &["--testdev", "--no-kvm", "--expect-open-error", "--cdev"];
const MODES: &[&str] = &[
    "dev-first",
    "vm-first",
    "exit",
    "race",
    "abba",
    "bench",
    "loops",
    "stress",
    "suite",
    "lockdown",
    "qemu",
    "fork",
    "pass",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let words: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let mode = words.first().map_or("dev-first", |s| s.as_str());
    if !MODES.contains(&mode) {
        bail!("mode {mode:?}: use one of {}", MODES.join(", "));
    }
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !OPTIONS.contains(&a.as_str()) {
            bail!("unknown option {a}: use {}", OPTIONS.join(", "));
        }
    }
    let count = |default: u64| -> anyhow::Result<u64> {
        match words.get(1) {
            None => Ok(default),
            Some(n) => n
                .parse()
                .map_err(|_| anyhow::anyhow!("{mode} N: {n:?} is not a count")),
        }
    };
    if mode == "suite" {
        let json = words.get(1).context("suite JSON: the steps to run")?;
        return suite::run(json);
    }
    if mode == "lockdown" {
        return lockdown::run();
    }
    if mode == "stress" {
        return stress::run(count(50)?);
    }
    if mode == "loops" {
        return bench::unrelated(count(2000)?);
    }
    if mode == "qemu" {
        let end = qemu::End::parse(words.get(1).map(|s| s.as_str()))?;
        return qemu::run(end, flag("--cdev"));
    }
    if mode == "fork" {
        return fork();
    }
    if mode == "pass" {
        return passed::run();
    }
    if flag("--cdev") {
        let c = cdev::CdevRig::new(!flag("--no-kvm"))?;
        let cdev::CdevRig {
            kvm: rig::KvmPair { vm, kv, .. },
            device,
            iommufd,
        } = c;
        return close_in_order(mode, Some(device), kv, vm, Some(iommufd));
    }
    let rig = Rig::new(flag("--testdev"), !flag("--no-kvm"))?;
    match mode {
        "race" => return race(rig, count(20)?),
        "abba" => return abba(&rig),
        "bench" => {
            let n = count(2000)?;
            bench::attr(&rig, n)?;
            bench::kvm_run(n)?;
            bench::ioctl(n * 10)?;
            bench::epoll(n * 10)?;
            return bench::pipe(n * 10);
        }
        _ => {}
    }
    let dev = if flag("--expect-open-error") {
        let r = rig.open_device_raw();
        if r >= 0 {
            bail!("VFIO_GROUP_GET_DEVICE_FD succeeded ({r}) where the driver should refuse it");
        }
        println!(
            "[driver] {:<38} -> {r} (expected: {})",
            "VFIO_GROUP_GET_DEVICE_FD",
            std::io::Error::last_os_error()
        );
        None
    } else {
        Some(rig.open_device()?)
    };
    let Rig {
        kvm: rig::KvmPair { vm, kv, .. },
        ..
    } = rig;
    close_in_order(mode, dev, kv, vm, None)
}

/// Closes the device, the kvm-vfio device and the VM in `mode`'s order (the
/// iommufd, when there is one, last), or exits without closing anything.
fn close_in_order(
    mode: &str,
    dev: Option<OwnedFd>,
    kv: OwnedFd,
    vm: OwnedFd,
    iommufd: Option<OwnedFd>,
) -> anyhow::Result<()> {
    match mode {
        "dev-first" => {
            drop(dev);
            drop(kv);
            drop(vm);
        }
        "vm-first" => {
            drop(vm);
            drop(kv);
            drop(dev);
        }
        _ => {
            println!("[driver] exit without closing");
            std::process::exit(0);
        }
    }
    drop(iommufd);
    println!("[driver] closed ({mode})");
    Ok(())
}

/// A VM alone (no vCPU, no device): its fd, which the caller closes.
fn create_vm() -> anyhow::Result<libc::c_int> {
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let kvm = std::fs::File::open("/dev/kvm").context("open /dev/kvm")?;
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        bail!("KVM_CREATE_VM: {}", std::io::Error::last_os_error());
    }
    println!("[driver] {:<38} -> {vm}", "KVM_CREATE_VM");
    Ok(vm)
}

/// A VM whose fd a forked child inherits: the parent's close puts nothing,
/// the child's close a second later is the last reference.
fn fork() -> anyhow::Result<()> {
    let vm = create_vm()?;
    // SAFETY: the child makes only async-signal-safe calls, then _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        unsafe {
            libc::sleep(1);
            libc::close(vm);
            libc::_exit(0);
        }
    }
    unsafe { libc::close(vm) };
    println!("[driver] fork -> child {child}; parent closed its VM fd");
    let mut status = 0;
    if unsafe { libc::waitpid(child, &mut status, 0) } != child || status != 0 {
        bail!("the fork's child {child}: status {status}");
    }
    println!("[driver] child {child} closed its copy and exited");
    Ok(())
}

/// The test module's ABBA ioctls (mode=abba), from two threads at once: each
/// takes one watched lock and waits for the other's. They never return; the
/// lab kills this process, which ends both (killable) waits.
fn abba(rig: &Rig) -> anyhow::Result<()> {
    const KVM_THEN_DEV_SET: libc::c_ulong = 0x4b70;
    const DEV_SET_THEN_KVM: libc::c_ulong = 0x4b71;
    let dev = rig.open_device()?;
    let fd = dev.as_raw_fd();
    let rcs: Vec<libc::c_int> = std::thread::scope(|s| {
        let t: Vec<_> = [KVM_THEN_DEV_SET, DEV_SET_THEN_KVM]
            .into_iter()
            .map(|cmd| s.spawn(move || unsafe { libc::ioctl(fd, cmd, 0) }))
            .collect();
        t.into_iter().map(|h| h.join().unwrap_or(-1)).collect()
    });
    bail!("abba: both ioctls returned ({rcs:?}): no deadlock")
}

/// Opens racing the last puts: the opener thread cycles the device while the
/// main thread, half-way through, closes the VM fd and the kvm-vfio fd (whose
/// release unlinks the group). Whatever the interleaving, every reference
/// taken is given back and the VM is destroyed once.
fn race(rig: Rig, n: u64) -> anyhow::Result<()> {
    let Rig {
        kvm: rig::KvmPair { vm, kv, .. },
        group,
        name,
        ..
    } = rig;
    let half = std::sync::Arc::new(std::sync::Barrier::new(2));
    let h2 = half.clone();
    let opener = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let (mut ok, mut failed) = (0, 0);
        for i in 0..n {
            if i == n / 2 {
                h2.wait();
            }
            let fd = rig::get_device_fd(&group, &name);
            if fd >= 0 {
                ok += 1;
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            } else {
                failed += 1;
            }
        }
        Ok((ok, failed))
    });
    half.wait();
    drop(vm);
    drop(kv);
    let (ok, failed) = opener.join().expect("opener thread")?;
    println!("[driver] race: {ok} opens, {failed} refused, VM and kvm-vfio closed mid-way");
    Ok(())
}
