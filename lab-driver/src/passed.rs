//! `pass`: a VM fd handed to another process the two ways a VMM or its
//! manager does: over a Unix socket with SCM_RIGHTS, and by pidfd_getfd.
//! A child is forked before the VM exists (it inherits nothing), receives
//! the VM fd, copies the parent's VM fd with pidfd_getfd, and says so; the
//! parent then closes its fd; the child closes both a second later (the last
//! references) and exits.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, bail};

pub fn run() -> anyhow::Result<()> {
    let mut sv = [0; 2];
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sv.as_mut_ptr()) } != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    let (parent_end, child_end) =
        unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child makes only system calls, then _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        drop(parent_end);
        let rc = receiver(&child_end, parent);
        unsafe { libc::_exit(i32::from(rc.is_err())) };
    }
    drop(child_end);
    let vm = crate::create_vm()?;
    send_fd(&parent_end, vm)?;
    // The child has both copies once it answers.
    let mut b = [0u8; 1];
    if unsafe { libc::recv(parent_end.as_raw_fd(), b.as_mut_ptr().cast(), 1, 0) } != 1 {
        bail!(
            "no answer from the child: {}",
            std::io::Error::last_os_error()
        );
    }
    unsafe { libc::close(vm) };
    println!(
        "[driver] child {child} holds the VM by SCM_RIGHTS and pidfd_getfd; parent closed its fd"
    );
    let mut status = 0;
    if unsafe { libc::waitpid(child, &mut status, 0) } != child || status != 0 {
        bail!("the child {child}: status {status}");
    }
    println!("[driver] child {child} closed both and exited");
    Ok(())
}

/// The child: the VM fd by SCM_RIGHTS (its number in the parent as the
/// data byte), a second copy by pidfd_getfd; both closed a second later.
fn receiver(sock: &OwnedFd, parent: libc::pid_t) -> Result<(), ()> {
    let (passed, number) = recv_fd(sock).ok_or(())?;
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent, 0) };
    let copied = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, RawFd::from(number), 0) };
    if pidfd < 0 || copied < 0 {
        return Err(());
    }
    unsafe { libc::close(pidfd as RawFd) };
    if unsafe { libc::send(sock.as_raw_fd(), [1u8].as_ptr().cast(), 1, 0) } != 1 {
        return Err(());
    }
    unsafe {
        libc::sleep(1);
        libc::close(passed);
        libc::close(copied as RawFd);
    }
    Ok(())
}

/// A message of one data byte (`iov`) with room for one fd (`cbuf`).
fn message(iov: &mut libc::iovec, cbuf: &mut [u64; 4]) -> libc::msghdr {
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    msg
}

/// `fd` over `sock` with SCM_RIGHTS, its number as the one data byte.
fn send_fd(sock: &OwnedFd, fd: RawFd) -> anyhow::Result<()> {
    let mut byte = [u8::try_from(fd).context("a VM fd above 255")?];
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let msg = message(&mut iov, &mut cbuf);
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
    }
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } != 1 {
        bail!("sendmsg: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One fd by SCM_RIGHTS, and the data byte that came with it.
fn recv_fd(sock: &OwnedFd) -> Option<(RawFd, u8)> {
    let mut byte = [0u8; 1];
    let mut cbuf = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut msg = message(&mut iov, &mut cbuf);
    if unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) } != 1 {
        return None;
    }
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if c.is_null() || unsafe { (*c).cmsg_type } != libc::SCM_RIGHTS {
        return None;
    }
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()) };
    Some((fd, byte[0]))
}
