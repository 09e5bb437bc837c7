//! The command's process tree, from the kernel's process events connector
//! (netlink, CN_PROC): every fork whose parent is in the tree adds the
//! child, however briefly it lived. A tree whose events overflowed the socket
//! is incomplete, and said to be.
use std::{
    collections::HashSet,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
/// nlmsghdr (16) + cn_msg (20): where the proc_event starts.
const EVENT_AT: usize = 36;

pub struct ProcTree {
    sock: Option<OwnedFd>,
    /// Thread groups of the tree.
    members: HashSet<u32>,
    /// Why the tree may lack members (events overflowed, no connector).
    incomplete: Option<String>,
}

impl ProcTree {
    /// Listens for process events; `members` starts empty (add the root once
    /// started). Without the connector the tree is incomplete from the start.
    pub fn listen() -> ProcTree {
        match open_connector() {
            Ok(sock) => ProcTree {
                sock: Some(sock),
                members: HashSet::new(),
                incomplete: None,
            },
            Err(e) => ProcTree {
                sock: None,
                members: HashSet::new(),
                incomplete: Some(format!(
                    "the process events connector could not be read ({e})"
                )),
            },
        }
    }

    pub fn add(&mut self, tgid: u32) {
        self.members.insert(tgid);
    }

    pub fn members(&self) -> &HashSet<u32> {
        &self.members
    }

    pub fn incomplete(&self) -> Option<&str> {
        self.incomplete.as_deref()
    }

    /// Reads every event waiting on the socket (never blocks).
    pub fn drain(&mut self) {
        let Some(fd) = self.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a local buffer of its length.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.incomplete = Some(
                            "process events were lost (the connector's socket overflowed)".into(),
                        );
                        continue;
                    }
                    _ => {
                        self.incomplete = Some(format!("reading process events: {e}"));
                        self.sock = None;
                        return;
                    }
                }
            }
            self.take(&buf[..n as usize]);
        }
    }

    /// One datagram: a fork whose parent is a member adds the child.
    fn take(&mut self, msg: &[u8]) {
        let word = |at: usize| {
            msg.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        };
        if word(EVENT_AT) != Some(PROC_EVENT_FORK) {
            return;
        }
        // proc_event: what, cpu, timestamp_ns (8), then fork's parent_pid,
        // parent_tgid, child_pid, child_tgid.
        let data = EVENT_AT + 16;
        if let (Some(parent_tgid), Some(child_tgid)) = (word(data + 4), word(data + 12))
            && self.members.contains(&parent_tgid)
        {
            self.members.insert(child_tgid);
        }
    }
}

fn open_connector() -> std::io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is new and ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A large buffer: a busy host forks a lot while a test runs.
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a c_int value (FORCE needs CAP_NET_ADMIN; the
    // plain one is the fallback).
    unsafe {
        let p = (&size as *const libc::c_int).cast();
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, p, len);
        }
    }
    // SAFETY: a zeroed sockaddr_nl filled in below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: addr is a valid sockaddr_nl of the given length.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let msg = listen_message();
    // SAFETY: sending a local buffer of its length.
    let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// nlmsghdr + cn_msg + PROC_CN_MCAST_LISTEN.
fn listen_message() -> Vec<u8> {
    let op = PROC_CN_MCAST_LISTEN.to_ne_bytes();
    let mut cn = Vec::new();
    for w in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
        cn.extend(w.to_ne_bytes());
    }
    cn.extend((op.len() as u16).to_ne_bytes());
    cn.extend(0u16.to_ne_bytes());
    cn.extend(op);
    let mut msg = Vec::new();
    msg.extend(((16 + cn.len()) as u32).to_ne_bytes());
    msg.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
    msg.extend(0u16.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    msg.extend(std::process::id().to_ne_bytes());
    msg.extend(cn);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_event(parent_tgid: u32, child_pid: u32, child_tgid: u32) -> Vec<u8> {
        let mut m = vec![0u8; EVENT_AT];
        m.extend(PROC_EVENT_FORK.to_ne_bytes());
        m.extend([0u8; 12]);
        for w in [parent_tgid, parent_tgid, child_pid, child_tgid] {
            m.extend(w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn forks_of_members_join_and_others_do_not() {
        let mut t = ProcTree {
            sock: None,
            members: HashSet::new(),
            incomplete: None,
        };
        t.add(100);
        t.take(&fork_event(100, 101, 101));
        t.take(&fork_event(101, 102, 102));
        // A thread of a member: its group is already in.
        t.take(&fork_event(102, 103, 102));
        t.take(&fork_event(7, 8, 8));
        let mut m: Vec<u32> = t.members().iter().copied().collect();
        m.sort();
        assert_eq!(m, [100, 101, 102]);
    }

    #[test]
    fn the_listen_message_is_one_netlink_message_of_its_length() {
        let m = listen_message();
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(m.len(), 16 + 20 + 4);
    }
}
