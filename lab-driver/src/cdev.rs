//! The cdev / iommufd path (6.6+ with CONFIG_VFIO_DEVICE_CDEV): the edu
//! device's own node `/dev/vfio/devices/vfioN`, added to the kvm-vfio device
//! by its fd, then bound to an iommufd (the open: `vfio_df_open` under
//! dev_set->lock, VFIO's kvm reference taken there) and attached to an IOAS:
//! what QEMU does with `-object iommufd`.
use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};

use crate::rig::{self, step};

const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = 0x3B76;
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = 0x3B77;
const IOMMU_IOAS_ALLOC: libc::c_ulong = 0x3B81;

#[repr(C)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

#[repr(C)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
struct AttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

pub struct CdevRig {
    pub kvm: rig::KvmPair,
    pub iommufd: OwnedFd,
    pub device: OwnedFd,
}

/// The edu device's cdev node.
fn node() -> anyhow::Result<String> {
    let (bdf, _) = rig::edu()?;
    let dir = format!("/sys/bus/pci/devices/{bdf}/vfio-dev");
    let name = std::fs::read_dir(&dir)
        .with_context(|| format!("{dir}: no VFIO device cdev (CONFIG_VFIO_DEVICE_CDEV off?)"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vfio"))
        .with_context(|| format!("no vfioN in {dir}"))?;
    Ok(format!("/dev/vfio/devices/{name}"))
}

impl CdevRig {
    /// VM and kvm-vfio device, the device's cdev added to it (unless
    /// `add_file` is false), bound to an iommufd and attached to an IOAS.
    pub fn new(add_file: bool) -> anyhow::Result<CdevRig> {
        let kvm = rig::KvmPair::new()?;
        let iommufd = rig::open("/dev/iommu")?;
        let device = rig::open(&node()?)?;
        if add_file {
            step(
                "KVM_SET_DEVICE_ATTR(VFIO_FILE_ADD cdev)",
                rig::set_file(&kvm.kv, &device, true),
            )?;
        }
        let mut bind = BindIommufd {
            argsz: std::mem::size_of::<BindIommufd>() as u32,
            flags: 0,
            iommufd: iommufd.as_raw_fd(),
            out_devid: 0,
        };
        // SAFETY: ioctls with structs of the uAPI's layout on fds we own.
        step("VFIO_DEVICE_BIND_IOMMUFD", unsafe {
            libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_BIND_IOMMUFD, &mut bind)
        })?;
        let mut ioas = IoasAlloc {
            size: std::mem::size_of::<IoasAlloc>() as u32,
            flags: 0,
            out_ioas_id: 0,
        };
        step("IOMMU_IOAS_ALLOC", unsafe {
            libc::ioctl(iommufd.as_raw_fd(), IOMMU_IOAS_ALLOC, &mut ioas)
        })?;
        let mut attach = AttachPt {
            argsz: std::mem::size_of::<AttachPt>() as u32,
            flags: 0,
            pt_id: ioas.out_ioas_id,
        };
        step("VFIO_DEVICE_ATTACH_IOMMUFD_PT", unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                &mut attach,
            )
        })?;
        if bind.out_devid == 0 {
            bail!("VFIO_DEVICE_BIND_IOMMUFD returned no device id");
        }
        Ok(CdevRig {
            kvm,
            iommufd,
            device,
        })
    }
}
