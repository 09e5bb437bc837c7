//! Who a VM belongs to, in the names an operator uses: the creating process
//! (pid, comm), QEMU's `-name guest=NAME` and `-uuid`, and the libvirt domain
//! from the process's cgroup (`machine-qemu\x2dN\x2dNAME.scope`, cgroup v1 or
//! v2). Read from /proc when kvscope sees the VM created; a process already
//! gone leaves only what the event carried (pid, comm).
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub comm: String,
    /// QEMU's `-name` (its `guest=` part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The libvirt domain, from the cgroup's machine scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl Identity {
    /// What /proc says of process `pid` now; `comm` (the creating thread's,
    /// as the event carried it) when the process is already gone.
    pub fn read(pid: u32, comm: &str) -> Identity {
        let proc_comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
        let comm = proc_comm.as_deref().map_or(comm, str::trim_end);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        Identity::from_proc(pid, comm, &cmdline, &cgroup)
    }

    fn from_proc(pid: u32, comm: &str, cmdline: &[u8], cgroup: &str) -> Identity {
        let args: Vec<&str> = cmdline
            .split(|b| *b == 0)
            .filter_map(|a| std::str::from_utf8(a).ok())
            .collect();
        let after = |flag: &str| {
            args.windows(2)
                .find(|w| w[0] == flag || w[0] == format!("-{flag}"))
                .map(|w| w[1])
        };
        Identity {
            pid,
            comm: comm.to_owned(),
            name: after("-name").and_then(qemu_name),
            domain: cgroup.lines().find_map(libvirt_domain),
            uuid: after("-uuid").map(str::to_owned),
        }
    }

    /// The shortest name an operator knows: the domain, QEMU's name, else
    /// `comm[pid]`.
    pub fn label(&self) -> String {
        match (&self.domain, &self.name) {
            (Some(d), _) => d.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => format!("{}[{}]", self.comm, self.pid),
        }
    }

    /// Every part known, for a report line: `lab-a (domain lab-a, uuid ...,
    /// qemu-system-x86[812])`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.domain {
            parts.push(format!("domain {d}"));
        }
        if let Some(n) = self
            .name
            .as_ref()
            .filter(|n| Some(*n) != self.domain.as_ref())
        {
            parts.push(format!("name {n}"));
        }
        if let Some(u) = &self.uuid {
            parts.push(format!("uuid {u}"));
        }
        parts.push(format!("{}[{}]", self.comm, self.pid));
        format!("{} ({})", self.label(), parts.join(", "))
    }

    /// Whether `what` (a name, domain, uuid or pid) names this VM.
    pub fn matches(&self, what: &str) -> bool {
        [&self.domain, &self.name, &self.uuid]
            .into_iter()
            .flatten()
            .any(|n| n == what)
            || what.parse::<u32>().is_ok_and(|p| p == self.pid)
    }
}

/// QEMU's `-name` value: `guest=NAME,debug-threads=on` or a bare `NAME`
/// (commas doubled inside a value).
fn qemu_name(v: &str) -> Option<String> {
    let mut name = None;
    for (i, part) in split_options(v).into_iter().enumerate() {
        match part.split_once('=') {
            Some(("guest", n)) => name = Some(n.to_owned()),
            None if i == 0 => name = Some(part),
            _ => {}
        }
    }
    name.filter(|n| !n.is_empty())
}

/// QEMU option lists: `,` separates, `,,` is a comma.
fn split_options(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                out.last_mut().expect("never empty").push(',');
            }
            ',' => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

/// The domain in one /proc/PID/cgroup line: a systemd machine scope
/// `machine-qemu\x2d<id>\x2d<name>.scope` (systemd's escaping: `\x2d` is `-`,
/// any byte may be `\xNN`).
fn libvirt_domain(line: &str) -> Option<String> {
    let path = line.splitn(3, ':').nth(2)?;
    let scope = path
        .split('/')
        .find(|c| c.starts_with("machine-qemu") && c.ends_with(".scope"))?;
    let unescaped = unescape(scope.strip_prefix("machine-")?.strip_suffix(".scope")?);
    // qemu-<id>-<name>
    let rest = unescaped.strip_prefix("qemu-")?;
    let (id, name) = rest.split_once('-')?;
    (id.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty()).then(|| name.to_owned())
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 2..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (
            b[i],
            b.get(i + 1),
            hex.and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'\\', Some(b'x'), Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As libvirt 11 starts QEMU 10, and as Debian's systemd places it.
    const CMDLINE: &[u8] = b"/usr/bin/qemu-system-x86_64\0-name\0guest=lab-a,debug-threads=on\0-S\0-uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\0-machine\0pc\0";
    const CGROUP_V2: &str =
        "0::/machine.slice/machine-qemu\\x2d3\\x2dlab\\x2da.scope/libvirt/emulator\n";
    const CGROUP_V1: &str = "12:pids:/machine.slice/machine-qemu\\x2d3\\x2dlab\\x2da.scope\n1:name=systemd:/machine.slice/machine-qemu\\x2d3\\x2dlab\\x2da.scope/emulator\n";

    #[test]
    fn a_libvirt_qemu_is_named_by_its_domain_name_and_uuid() {
        for cg in [CGROUP_V2, CGROUP_V1] {
            let id = Identity::from_proc(812, "qemu-system-x86", CMDLINE, cg);
            assert_eq!(id.domain.as_deref(), Some("lab-a"), "{cg}");
            assert_eq!(id.name.as_deref(), Some("lab-a"));
            assert_eq!(
                id.uuid.as_deref(),
                Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809")
            );
            assert_eq!(id.label(), "lab-a");
            assert_eq!(
                id.describe(),
                "lab-a (domain lab-a, uuid c7a5fdbd-cdaf-9455-926a-d65c16db1809, qemu-system-x86[812])"
            );
            assert!(id.matches("lab-a") && id.matches("812") && !id.matches("lab-b"));
        }
    }

    #[test]
    fn a_plain_process_is_its_comm_and_pid() {
        let id = Identity::from_proc(42, "kvscope-lab-dri", b"./driver\0suite\0", "0::/\n");
        assert_eq!(id.label(), "kvscope-lab-dri[42]");
        assert_eq!((id.name, id.domain, id.uuid), (None, None, None));
    }

    #[test]
    fn qemu_names_in_every_spelling() {
        assert_eq!(
            qemu_name("guest=a,,b,debug-threads=on").as_deref(),
            Some("a,b")
        );
        assert_eq!(qemu_name("vm1").as_deref(), Some("vm1"));
        assert_eq!(qemu_name("vm1,process=qemu:vm1").as_deref(), Some("vm1"));
        assert_eq!(qemu_name("debug-threads=on"), None);
        let id = Identity::from_proc(1, "q", b"qemu\0--name\0guest=x\0", "");
        assert_eq!(id.name.as_deref(), Some("x"));
    }

    #[test]
    fn escaped_domain_names_and_other_scopes() {
        assert_eq!(
            libvirt_domain(
                "0::/machine.slice/machine-qemu\\x2d12\\x2dweb\\x2d01\\x2eprod.scope/libvirt"
            )
            .as_deref(),
            Some("web-01.prod")
        );
        assert_eq!(libvirt_domain("0::/system.slice/sshd.service"), None);
        assert_eq!(
            libvirt_domain("0::/machine.slice/machine-lxc\\x2d1\\x2dc.scope"),
            None
        );
    }
}
