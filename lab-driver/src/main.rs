//! `kvscope-lab-driver MODE`: in a guest, create a VM and its kvm-vfio device,
//! open the VFIO group of the `edu` device (bound to vfio-pci), attach the group
//! to the VM, open the device, then close in the order MODE names:
//! `dev-first` (device, kvm-vfio, VM), `vm-first` (VM, kvm-vfio, device), or
//! `exit` (close nothing: process exit closes everything).
//! Options: `--testdev` uses lab-kernel/testdev's device (kvscope-testdev, an
//! emulated-IOMMU VFIO device) instead of edu; `--no-kvm` never adds the group
//! to the kvm-vfio device; `--expect-open-error` expects VFIO_GROUP_GET_DEVICE_FD
//! to fail (a driver refusing the open) and closes the rest in MODE's order.
//! Each step prints `[driver] step -> result`, as the traces in
//! shared/data/kernel-traces do.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_DEVICE: libc::c_ulong = 0xC00C_AEE0;
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE1;
const VFIO_SET_IOMMU: libc::c_ulong = 0x3B66;
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = 0x3B68;
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = 0x3B6A;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;

fn step(name: &str, r: libc::c_int) -> anyhow::Result<libc::c_int> {
    println!("[driver] {name:<38} -> {r}");
    if r < 0 {
        bail!("{name}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

fn open(path: &str) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path)?;
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    step(&format!("open {path}"), fd)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The edu device (1234:11e8): its PCI address and IOMMU group number.
fn edu() -> anyhow::Result<(String, String)> {
    for e in std::fs::read_dir("/sys/bus/pci/devices")? {
        let p = e?.path();
        let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        if id("vendor").trim() == "0x1234" && id("device").trim() == "0x11e8" {
            let group = std::fs::read_link(p.join("iommu_group"))
                .context("edu has no IOMMU group (intel-iommu missing?)")?;
            let bdf = p.file_name().unwrap().to_string_lossy().into_owned();
            return Ok((
                bdf,
                group.file_name().unwrap().to_string_lossy().into_owned(),
            ));
        }
    }
    bail!("no edu PCI device (QEMU -device edu)")
}

/// The test module's device: its name and IOMMU group number.
fn testdev() -> anyhow::Result<(String, String)> {
    let p = std::path::Path::new("/sys/bus/platform/devices/kvscope-testdev");
    let group = std::fs::read_link(p.join("iommu_group")).with_context(|| {
        format!(
            "{} has no iommu_group (is kvscope_testdev.ko loaded?)",
            p.display()
        )
    })?;
    Ok((
        "kvscope-testdev".into(),
        group.file_name().unwrap().to_string_lossy().into_owned(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let mode = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "dev-first".into());
    if !["dev-first", "vm-first", "exit"].contains(&mode.as_str()) {
        bail!("mode {mode:?}: use dev-first, vm-first or exit");
    }
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !["--testdev", "--no-kvm", "--expect-open-error"].contains(&a.as_str()) {
            bail!("unknown option {a}: use --testdev, --no-kvm, --expect-open-error");
        }
    }
    let (bdf, group_no) = if flag("--testdev") {
        testdev()?
    } else {
        edu()?
    };
    let kvm = open("/dev/kvm")?;
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    let vm = unsafe { OwnedFd::from_raw_fd(step("KVM_CREATE_VM", vm)?) };
    let mut cd = [4u32 /* KVM_DEV_TYPE_VFIO */, 0, 0];
    step("KVM_CREATE_DEVICE(VFIO)", unsafe {
        libc::ioctl(vm.as_raw_fd(), KVM_CREATE_DEVICE, cd.as_mut_ptr())
    })?;
    let kv = unsafe { OwnedFd::from_raw_fd(cd[1] as i32) };
    let container = open("/dev/vfio/vfio")?;
    let group = open(&format!("/dev/vfio/{group_no}"))?;
    let cfd: libc::c_int = container.as_raw_fd();
    step("VFIO_GROUP_SET_CONTAINER", unsafe {
        libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd)
    })?;
    step("VFIO_SET_IOMMU(TYPE1v2)", unsafe {
        libc::ioctl(container.as_raw_fd(), VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU)
    })?;
    let gfd: i32 = group.as_raw_fd();
    #[repr(C)]
    struct Attr {
        flags: u32,
        group: u32,
        attr: u64,
        addr: u64,
    }
    let attr = Attr {
        flags: 0,
        group: 1, // KVM_DEV_VFIO_FILE
        attr: 1,  // KVM_DEV_VFIO_FILE_ADD
        addr: &gfd as *const i32 as u64,
    };
    if flag("--no-kvm") {
        println!("[driver] group not added to the kvm-vfio device (--no-kvm)");
    } else {
        step("KVM_SET_DEVICE_ATTR(VFIO_GROUP_ADD)", unsafe {
            libc::ioctl(kv.as_raw_fd(), KVM_SET_DEVICE_ATTR, &attr)
        })?;
    }
    let name = CString::new(bdf)?;
    let dev = unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) };
    let dev = if flag("--expect-open-error") {
        if dev >= 0 {
            bail!("VFIO_GROUP_GET_DEVICE_FD succeeded ({dev}) where the driver should refuse it");
        }
        println!(
            "[driver] {:<38} -> {dev} (expected: {})",
            "VFIO_GROUP_GET_DEVICE_FD",
            std::io::Error::last_os_error()
        );
        None
    } else {
        Some(unsafe { OwnedFd::from_raw_fd(step("VFIO_GROUP_GET_DEVICE_FD", dev)?) })
    };
    match mode.as_str() {
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
    println!("[driver] closed ({mode})");
    Ok(())
}
