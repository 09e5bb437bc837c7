//! What this host lets a BPF tracer do, short of trying: root/capabilities,
//! kprobe support. (Whether fentry loads is learnt by loading one: see loader.)
use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Privileges {
    pub euid: u32,
    /// CAP_BPF (39), CAP_PERFMON (38), CAP_SYS_ADMIN (21) in the effective set.
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
}

impl Privileges {
    pub fn current() -> Self {
        let eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        Privileges {
            euid: unsafe { libc::geteuid() },
            cap_bpf: eff & (1 << 39) != 0,
            cap_perfmon: eff & (1 << 38) != 0,
            cap_sys_admin: eff & (1 << 21) != 0,
        }
    }

    /// Loading tracing programs needs CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN.
    pub fn can_trace(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }
}

/// Err: why kprobes cannot be used here.
pub fn kprobes_available(tracing: Option<&Path>) -> Result<(), String> {
    if Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        return Ok(());
    }
    if let Some(t) = tracing
        && t.join("kprobe_events").exists()
    {
        return Ok(());
    }
    Err("kprobes absent: no kprobe PMU (/sys/bus/event_source/devices/kprobe) and no kprobe_events in tracefs (kernel built without CONFIG_KPROBES?)".into())
}
