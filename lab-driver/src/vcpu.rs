//! A minimal VM with one real-mode vCPU running a few bytes of code at guest
//! address 0x1000, for the bench's `KVM_RUN` loop. Everything is closed (and
//! unmapped) when it is dropped.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::bail;

use crate::rig::{KVM_CREATE_VM, open, step};

const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_RUN: libc::c_ulong = 0xAE80;
/// _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region): 32 bytes.
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
/// _IOR/_IOW(KVMIO, 0x83/0x84, struct kvm_sregs): 312 bytes.
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
/// _IOW(KVMIO, 0x82, struct kvm_regs): 18 u64.
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
pub const KVM_EXIT_IO: u32 = 2;
const CODE_AT: u64 = 0x1000;
const PAGE: usize = 0x1000;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

pub struct Vcpu {
    _kvm: OwnedFd,
    _vm: OwnedFd,
    fd: OwnedFd,
    run: *mut u8,
    run_size: usize,
    mem: *mut u8,
}

fn mmap(len: usize, fd: libc::c_int) -> anyhow::Result<*mut u8> {
    let flags = if fd < 0 {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    } else {
        libc::MAP_SHARED
    };
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl Vcpu {
    pub fn new(code: &[u8]) -> anyhow::Result<Vcpu> {
        let kvm = open("/dev/kvm")?;
        let k = kvm.as_raw_fd();
        let vm = step("KVM_CREATE_VM", unsafe { libc::ioctl(k, KVM_CREATE_VM, 0) })?;
        let vm = unsafe { OwnedFd::from_raw_fd(vm) };
        let mem = mmap(PAGE, -1)?;
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem, code.len()) };
        let region = MemoryRegion {
            slot: 0,
            flags: 0,
            guest_phys_addr: CODE_AT,
            memory_size: PAGE as u64,
            userspace_addr: mem as u64,
        };
        let v = vm.as_raw_fd();
        step("KVM_SET_USER_MEMORY_REGION", unsafe {
            libc::ioctl(v, KVM_SET_USER_MEMORY_REGION, &region)
        })?;
        let fd = step("KVM_CREATE_VCPU", unsafe {
            libc::ioctl(v, KVM_CREATE_VCPU, 0)
        })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let run_size = step("KVM_GET_VCPU_MMAP_SIZE", unsafe {
            libc::ioctl(k, KVM_GET_VCPU_MMAP_SIZE, 0)
        })? as usize;
        let run = mmap(run_size, fd.as_raw_fd())?;
        let vcpu = Vcpu {
            _kvm: kvm,
            _vm: vm,
            fd,
            run,
            run_size,
            mem,
        };
        vcpu.real_mode_at(CODE_AT)?;
        Ok(vcpu)
    }

    /// cs base and selector 0 (real mode, flat), rip at the code, rflags' fixed bit.
    fn real_mode_at(&self, rip: u64) -> anyhow::Result<()> {
        let f = self.fd.as_raw_fd();
        let mut sregs = [0u8; 312];
        step("KVM_GET_SREGS", unsafe {
            libc::ioctl(f, KVM_GET_SREGS, sregs.as_mut_ptr())
        })?;
        // struct kvm_segment cs (first): base u64 at 0, selector u16 at 12.
        sregs[0..8].fill(0);
        sregs[12..14].fill(0);
        step("KVM_SET_SREGS", unsafe {
            libc::ioctl(f, KVM_SET_SREGS, sregs.as_ptr())
        })?;
        let mut regs = [0u64; 18];
        regs[16] = rip; // rip
        regs[17] = 2; // rflags
        step("KVM_SET_REGS", unsafe {
            libc::ioctl(f, KVM_SET_REGS, regs.as_ptr())
        })?;
        Ok(())
    }

    /// One KVM_RUN; the exit reason. (Silent: `step` would print per call.)
    pub fn run(&self) -> anyhow::Result<u32> {
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_RUN, 0) } < 0 {
            bail!("KVM_RUN: {}", std::io::Error::last_os_error());
        }
        // struct kvm_run: exit_reason (u32) at offset 8.
        Ok(unsafe { std::ptr::read_volatile(self.run.add(8).cast::<u32>()) })
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.run.cast(), self.run_size);
            libc::munmap(self.mem.cast(), PAGE);
        }
    }
}
