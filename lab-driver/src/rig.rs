//! The objects every scenario sets up: a VM and its kvm-vfio device, a VFIO
//! container and group (the edu device behind the emulated IOMMU, or the test
//! module's device), the group added to the kvm-vfio device.
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

pub const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_DEVICE: libc::c_ulong = 0xC00C_AEE0;
const KVM_SET_DEVICE_ATTR: libc::c_ulong = 0x4018_AEE1;
const VFIO_SET_IOMMU: libc::c_ulong = 0x3B66;
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = 0x3B68;
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = 0x3B6A;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const KVM_DEV_VFIO_FILE: u32 = 1;
const KVM_DEV_VFIO_FILE_ADD: u64 = 1;
const KVM_DEV_VFIO_FILE_DEL: u64 = 2;

/// Prints `[driver] step -> result`, as the traces in shared/data/kernel-traces do.
pub fn step(name: &str, r: libc::c_int) -> anyhow::Result<libc::c_int> {
    println!("[driver] {name:<38} -> {r}");
    if r < 0 {
        bail!("{name}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

pub fn open(path: &str) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path)?;
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    step(&format!("open {path}"), fd)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The edu device (1234:11e8): its PCI address and IOMMU group number.
pub fn edu() -> anyhow::Result<(String, String)> {
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

/// The test module's device: its name and IOMMU group number. 5.19+: a
/// platform device with an emulated IOMMU group; before (notifier_era.h): an
/// mdev parent, whose one mediated device (created here through the
/// parent's "notifier" type) is the VFIO device, named by its UUID.
fn testdev() -> anyhow::Result<(String, String)> {
    let p = std::path::Path::new("/sys/bus/platform/devices/kvscope-testdev");
    let mdev_types = p.join("mdev_supported_types");
    if mdev_types.exists() {
        return testdev_mdev(&mdev_types);
    }
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

/// The lab's mediated device: created once per module load.
const MDEV_UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

fn testdev_mdev(types: &std::path::Path) -> anyhow::Result<(String, String)> {
    let dev = std::path::Path::new("/sys/bus/mdev/devices").join(MDEV_UUID);
    if !dev.exists() {
        let ty = std::fs::read_dir(types)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|t| t.to_string_lossy().ends_with("-notifier"))
            .with_context(|| format!("no notifier type under {}", types.display()))?;
        std::fs::write(ty.join("create"), MDEV_UUID)
            .with_context(|| format!("creating mdev {MDEV_UUID} in {}", ty.display()))?;
    }
    let group = std::fs::read_link(dev.join("iommu_group"))
        .with_context(|| format!("{} has no iommu_group (vfio_mdev loaded?)", dev.display()))?;
    Ok((
        MDEV_UUID.into(),
        group.file_name().unwrap().to_string_lossy().into_owned(),
    ))
}

/// VFIO_GROUP_GET_DEVICE_FD on `group` for device `name`; the raw result.
pub fn get_device_fd(group: &OwnedFd, name: &std::ffi::CStr) -> libc::c_int {
    unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) }
}

/// A VM and its kvm-vfio device.
pub struct KvmPair {
    /// /dev/kvm stays open, as in QEMU: at exit the fds' releases run in
    /// reverse fd order, so fd numbering decides which put is the last.
    pub _kvm: OwnedFd,
    pub vm: OwnedFd,
    pub kv: OwnedFd,
}

impl KvmPair {
    pub fn new() -> anyhow::Result<KvmPair> {
        let kvm = open("/dev/kvm")?;
        let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
        let vm = unsafe { OwnedFd::from_raw_fd(step("KVM_CREATE_VM", vm)?) };
        let mut cd = [4u32 /* KVM_DEV_TYPE_VFIO */, 0, 0];
        step("KVM_CREATE_DEVICE(VFIO)", unsafe {
            libc::ioctl(vm.as_raw_fd(), KVM_CREATE_DEVICE, cd.as_mut_ptr())
        })?;
        let kv = unsafe { OwnedFd::from_raw_fd(cd[1] as i32) };
        Ok(KvmPair { _kvm: kvm, vm, kv })
    }
}

/// KVM_SET_DEVICE_ATTR adding or removing a VFIO file (group or device
/// cdev) to the kvm-vfio device `kv`; the raw result.
pub fn set_file(kv: &OwnedFd, file: &OwnedFd, add: bool) -> libc::c_int {
    let fd: i32 = file.as_raw_fd();
    let attr = Attr {
        flags: 0,
        group: KVM_DEV_VFIO_FILE,
        attr: if add {
            KVM_DEV_VFIO_FILE_ADD
        } else {
            KVM_DEV_VFIO_FILE_DEL
        },
        addr: &fd as *const i32 as u64,
    };
    unsafe { libc::ioctl(kv.as_raw_fd(), KVM_SET_DEVICE_ATTR, &attr) }
}

pub struct Rig {
    pub kvm: KvmPair,
    pub group: OwnedFd,
    /// Kept open for the group's container; closed with the rig.
    pub _container: OwnedFd,
    /// The device's name for VFIO_GROUP_GET_DEVICE_FD.
    pub name: CString,
}

#[repr(C)]
struct Attr {
    flags: u32,
    group: u32,
    attr: u64,
    addr: u64,
}

impl Rig {
    pub fn new(use_testdev: bool, add_group: bool) -> anyhow::Result<Rig> {
        let (name, group_no) = if use_testdev { testdev()? } else { edu()? };
        let kvm = KvmPair::new()?;
        let container = open("/dev/vfio/vfio")?;
        let group = open(&format!("/dev/vfio/{group_no}"))?;
        let cfd: libc::c_int = container.as_raw_fd();
        step("VFIO_GROUP_SET_CONTAINER", unsafe {
            libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd)
        })?;
        step("VFIO_SET_IOMMU(TYPE1v2)", unsafe {
            libc::ioctl(container.as_raw_fd(), VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU)
        })?;
        let rig = Rig {
            kvm,
            group,
            _container: container,
            name: CString::new(name)?,
        };
        if add_group {
            step("KVM_SET_DEVICE_ATTR(VFIO_GROUP_ADD)", rig.set_group(true))?;
        } else {
            println!("[driver] group not added to the kvm-vfio device (--no-kvm)");
        }
        Ok(rig)
    }

    /// KVM_SET_DEVICE_ATTR adding or removing the group; the raw result.
    pub fn set_group(&self, add: bool) -> libc::c_int {
        set_file(&self.kvm.kv, &self.group, add)
    }

    /// VFIO_GROUP_GET_DEVICE_FD; the raw result.
    pub fn open_device_raw(&self) -> libc::c_int {
        get_device_fd(&self.group, &self.name)
    }

    pub fn open_device(&self) -> anyhow::Result<OwnedFd> {
        let fd = step("VFIO_GROUP_GET_DEVICE_FD", self.open_device_raw())?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
