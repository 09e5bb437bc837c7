//! `kvscope trace`: attach, then stream readable (or JSON) events until Ctrl-C
//! or SIGTERM, with filters and a periodic line about lost events.
use std::{io::Write as _, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    event::{Event, Kind, record_from_bytes},
    kernel::kallsyms::Kallsyms,
    loader::{self, Facts, LoadOptions},
    render,
};

/// `--vm`: a VM by `struct kvm` address, or by the pid of the process that
/// created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmSel {
    Addr(u64),
    Pid(u32),
}

impl std::str::FromStr for VmSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(VmSel::Addr)
                .map_err(|e| format!("{s:?} is not a hex kvm address: {e}"));
        }
        s.parse::<u32>()
            .map(VmSel::Pid)
            .map_err(|_| format!("{s:?} is neither a kvm address (0x...) nor a pid (decimal)"))
    }
}

/// User-side filters (the pid one is also applied in the kernel).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub vm: Option<VmSel>,
    /// VMs created by the `--vm` pid, learnt from the stream.
    vms_of_pid: Vec<u64>,
}

impl Filter {
    pub fn new(pid: Option<u32>, comm: Option<String>, vm: Option<VmSel>) -> Self {
        Filter {
            pid,
            comm,
            vm,
            vms_of_pid: Vec::new(),
        }
    }

    pub fn matches(&mut self, e: &Event) -> bool {
        if let Some(p) = self.pid
            && e.tgid != p
            && e.pid != p
        {
            return false;
        }
        if let Some(c) = &self.comm
            && &e.comm != c
        {
            return false;
        }
        match &self.vm {
            None => true,
            Some(VmSel::Addr(a)) => e.kvm == Some(*a) || e.lock.is_some_and(|l| l.owner == *a),
            Some(VmSel::Pid(p)) => {
                if e.kind == Kind::VmCreated
                    && e.tgid == *p
                    && let Some(k) = e.kvm
                {
                    self.vms_of_pid.push(k);
                }
                e.tgid == *p
                    || e.kvm.is_some_and(|k| self.vms_of_pid.contains(&k))
                    || e.lock.is_some_and(|l| self.vms_of_pid.contains(&l.owner))
            }
        }
    }
}

pub struct TraceOptions {
    pub json: bool,
    pub stacks: bool,
    pub filter: Filter,
    pub load: LoadOptions,
    /// Seconds between lost-event checks.
    pub loss_interval: Duration,
}

fn print_stack(out: &mut impl std::io::Write, probes: &loader::Probes, k: &Kallsyms, id: u32) {
    let Ok(map) = probes.stacks() else { return };
    let Ok(st) = map.get(&id, 0) else { return };
    for f in st.frames() {
        match k.symbolize(f.ip) {
            Some((s, off)) => {
                let m = s
                    .module
                    .as_deref()
                    .map(|m| format!(" [{m}]"))
                    .unwrap_or_default();
                let _ = writeln!(out, "    {}+{:#x}{}", s.name, off, m);
            }
            None => {
                let _ = writeln!(out, "    {:#x}", f.ip);
            }
        }
    }
}

pub async fn run(mut opts: TraceOptions) -> anyhow::Result<()> {
    let facts = Facts::gather()?;
    let mut probes = loader::load(&facts, &opts.load)?;
    let attached: usize = probes.plan.roles.iter().filter(|r| r.is_covered()).count();
    eprintln!(
        "kvscope: tracing on {} ({}); {}/{} roles attached; Ctrl-C to stop",
        facts.version.release,
        probes.plan.tier().describe(),
        attached,
        probes.plan.roles.len()
    );
    let ring = probes.ring()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(opts.loss_interval);
    let mut reported_lost = 0u64;
    let mut bad_records = 0u64;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut out = stdout.lock();
                while let Some(item) = rb.next() {
                    let ev = match record_from_bytes(&item).map(|r| Event::decode(&r)) {
                        Ok(Ok(ev)) => ev,
                        Ok(Err(_)) | Err(_) => { bad_records += 1; continue; }
                    };
                    if ev.kind == Kind::Other || !opts.filter.matches(&ev) {
                        continue;
                    }
                    if opts.json {
                        serde_json::to_writer(&mut out, &ev)?;
                        writeln!(out)?;
                    } else {
                        writeln!(out, "{}", render::line(&ev))?;
                        if opts.stacks && let Some(id) = ev.stack_id {
                            print_stack(&mut out, &probes, &facts.kallsyms, id);
                        }
                    }
                }
                out.flush()?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let lost = probes.lost().unwrap_or_default();
                let total: u64 = lost.iter().map(|(_, n)| n).sum();
                if total > reported_lost {
                    let detail: Vec<String> = lost.iter().map(|(h, n)| format!("{}={n}", h.symbol())).collect();
                    eprintln!("kvscope: {} events lost so far (ring buffer full): {}", total, detail.join(" "));
                    reported_lost = total;
                }
                if bad_records > 0 {
                    eprintln!("kvscope: {bad_records} records could not be decoded");
                    bad_records = 0;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(ring);
    drop(probes);
    eprintln!("kvscope: detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, tgid: u32, kvm: Option<u64>) -> Event {
        Event {
            ts_ns: 1,
            pid: tgid,
            tgid,
            cpu: 0,
            comm: "qemu".into(),
            kind,
            hook: "x".into(),
            kvm,
            device: None,
            group: None,
            file: None,
            users: None,
            open_count: None,
            ret: None,
            fd: None,
            fd_kind: None,
            lock: None,
            stack_id: None,
            ok: None,
        }
    }

    #[test]
    fn vm_selector_parses_addresses_and_pids() {
        assert_eq!("0xffff8881".parse::<VmSel>(), Ok(VmSel::Addr(0xffff8881)));
        assert_eq!("1234".parse::<VmSel>(), Ok(VmSel::Pid(1234)));
        assert!("qemu".parse::<VmSel>().unwrap_err().contains("neither"));
        assert!("0xzz".parse::<VmSel>().is_err());
    }

    #[test]
    fn vm_pid_filter_follows_that_pids_vms_into_other_threads() {
        let mut f = Filter::new(None, None, Some(VmSel::Pid(10)));
        assert!(f.matches(&ev(Kind::VmCreated, 10, Some(0xa))));
        // A kworker putting that VM is shown; another VM is not.
        assert!(f.matches(&ev(Kind::VmPut, 99, Some(0xa))));
        assert!(!f.matches(&ev(Kind::VmPut, 99, Some(0xb))));
    }

    #[test]
    fn pid_and_comm_filters() {
        let mut f = Filter::new(Some(10), None, None);
        assert!(f.matches(&ev(Kind::VmPut, 10, None)));
        assert!(!f.matches(&ev(Kind::VmPut, 11, None)));
        let mut f = Filter::new(None, Some("qemu".into()), None);
        assert!(f.matches(&ev(Kind::VmPut, 11, None)));
        let mut e = ev(Kind::VmPut, 11, None);
        e.comm = "bash".into();
        assert!(!f.matches(&e));
    }
}
