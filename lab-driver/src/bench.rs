//! Loops for the lab's overhead bench: each prints `BENCH name ns_per_iter`.
//! Under TCG only ratios between runs of one guest mean anything.
use std::time::Instant;

use anyhow::bail;

use crate::rig::Rig;

fn report(name: &str, n: u64, t: Instant) {
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("BENCH {name} {ns:.0}");
}

/// Hooked calls: KVM_SET_DEVICE_ATTR adding then removing the group, which
/// runs kvm_vfio_set_attr, vfio_file_set_kvm and the watched kv->lock and
/// group_lock every time.
pub fn attr(rig: &Rig, n: u64) -> anyhow::Result<()> {
    // The rig added the group; take it out so the loop starts from "not added".
    if rig.set_group(false) < 0 {
        bail!("VFIO_GROUP_DEL: {}", std::io::Error::last_os_error());
    }
    let t = Instant::now();
    for _ in 0..n {
        if rig.set_group(true) < 0 || rig.set_group(false) < 0 {
            bail!("KVM_SET_DEVICE_ATTR: {}", std::io::Error::last_os_error());
        }
    }
    report("attr-add-del", n, t);
    Ok(())
}

/// An unrelated mutex_lock-heavy loop: a one-byte pipe write and read each
/// take and release pipe->mutex, a lock kvscope does not watch.
pub fn pipe(n: u64) -> anyhow::Result<()> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let (r, w) = (fds[0], fds[1]);
    let mut b = [0u8; 1];
    let t = Instant::now();
    for _ in 0..n {
        let ok = unsafe {
            libc::write(w, b.as_ptr().cast(), 1) == 1
                && libc::read(r, b.as_mut_ptr().cast(), 1) == 1
        };
        if !ok {
            bail!("pipe io: {}", std::io::Error::last_os_error());
        }
    }
    report("pipe-mutex", n, t);
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    Ok(())
}

/// An unrelated ioctl loop: FIONREAD on a pipe, a syscall kvscope must not
/// pay on (the syscall tracepoints would put every task on the slow path).
pub fn ioctl(n: u64) -> anyhow::Result<()> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let mut avail: libc::c_int = 0;
    let t = Instant::now();
    for _ in 0..n {
        if unsafe { libc::ioctl(fds[0], libc::FIONREAD, &mut avail) } < 0 {
            bail!("FIONREAD: {}", std::io::Error::last_os_error());
        }
    }
    report("ioctl", n, t);
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Ok(())
}

/// An unrelated fd-creating loop: epoll_create1 then close, which passes
/// anon_inode_getfile, where lean keeps KVM's stats files by one compare.
pub fn epoll(n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    for _ in 0..n {
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        unsafe { libc::close(fd) };
    }
    report("epoll-create", n, t);
    Ok(())
}

/// `KVM_RUN` of a vCPU whose real-mode code writes an I/O port and loops: every
/// iteration exits to user space (KVM_EXIT_IO) and enters again. The vCPU
/// ioctls of a running VM, which kvscope must not pay on.
pub fn kvm_run(n: u64) -> anyhow::Result<()> {
    let vcpu = crate::vcpu::Vcpu::new(&[0xe6, 0x10, 0xeb, 0xfc])?; // out 0x10,al; jmp .-2
    let t = Instant::now();
    for _ in 0..n {
        let exit = vcpu.run()?;
        if exit != crate::vcpu::KVM_EXIT_IO {
            bail!("KVM_RUN: exit reason {exit}, not KVM_EXIT_IO");
        }
    }
    report("kvm-run", n, t);
    Ok(())
}

/// The loops that need no VFIO device, for a host's own kernel: KVM_RUN where
/// /dev/kvm can run a vCPU (else one line saying why not), the unrelated
/// ioctl and pipe loops.
pub fn unrelated(n: u64) -> anyhow::Result<()> {
    if let Err(e) = kvm_run(n) {
        println!("SKIP kvm-run: {e:#}");
    }
    ioctl(n * 10)?;
    epoll(n * 10)?;
    pipe(n * 10)
}
