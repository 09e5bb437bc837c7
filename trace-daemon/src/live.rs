//! The live loop shared by `trace`, `record` and the daemon: attach, poll the
//! ring buffer, decode, hand each event to a sink, check losses periodically,
//! and detach cleanly on SIGINT/SIGTERM.
use std::{collections::BTreeMap, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use trace_common::HookId;

use crate::{
    engine,
    event::{Event, record_from_bytes},
    hooks::Role,
    loader::{self, Facts, LoadOptions, Probes},
    recording::{Header, Stack},
};

pub struct Session {
    pub facts: Facts,
    pub probes: Probes,
}

impl Session {
    pub fn start(opts: &LoadOptions) -> anyhow::Result<Session> {
        let facts = Facts::gather()?;
        let probes = loader::load(&facts, opts)?;
        Ok(Session { facts, probes })
    }

    /// One line for stderr: what is attached here.
    pub fn banner(&self) -> String {
        let plan = &self.probes.plan;
        let attached = plan.roles.iter().filter(|r| r.is_covered()).count();
        format!(
            "kvscope: attached on {} ({}); {}/{} roles",
            self.facts.version.release,
            plan.tier().describe(),
            attached,
            plan.roles.len()
        )
    }

    /// Engine settings that depend on what is attached.
    pub fn engine_config(&self, mut cfg: engine::Config) -> engine::Config {
        cfg.destroy_observable = role_covered(&self.probes, Role::VmDestroyed);
        cfg.release_closes = release_closes(&self.probes);
        cfg
    }

    pub fn header(&self) -> Header {
        let plan = &self.probes.plan;
        let mut attach = BTreeMap::new();
        for r in &plan.roles {
            let v: Vec<String> = r
                .choices
                .iter()
                .map(|c| {
                    let m = serde_json::to_value(c.method)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    match &c.error {
                        Some(e) => format!("{} failed: {e}", c.symbol),
                        None => format!("{} {m}", c.symbol),
                    }
                })
                .collect();
            attach.insert(r.name.to_owned(), v);
        }
        Header {
            abi_version: trace_common::ABI_VERSION,
            kvscope_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: self.facts.version.release.clone(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            tier: serde_json::to_value(plan.tier())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            variant: self.facts.variant.describe().to_owned(),
            offsets: self
                .facts
                .offset_report
                .iter()
                .map(|o| (o.source.clone(), o.offset))
                .collect(),
            attach,
            destroy_observable: role_covered(&self.probes, Role::VmDestroyed),
            release_closes: release_closes(&self.probes),
            mono_start_ns: mono_now_ns(),
            wall_start_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }

    /// A kernel stack, symbolised with this host's kallsyms.
    pub fn stack(&self, id: u32) -> Option<Stack> {
        let map = self.probes.stacks().ok()?;
        let st = map.get(&id, 0).ok()?;
        let ips: Vec<u64> = st.frames().iter().map(|f| f.ip).collect();
        let symbols = ips
            .iter()
            .map(|ip| match self.facts.kallsyms.symbolize(*ip) {
                Some((s, off)) => match &s.module {
                    Some(m) => format!("{}+{off:#x} [{m}]", s.name),
                    None => format!("{}+{off:#x}", s.name),
                },
                None => format!("{ip:#x}"),
            })
            .collect();
        Some(Stack { id, ips, symbols })
    }
}

/// The device fd's release is the close (6.1, the kvm_ops patch): the release
/// role is attached on vfio_device_fops_release alone, no close function exists.
fn release_closes(p: &Probes) -> bool {
    let mut release = p
        .plan
        .roles
        .iter()
        .filter(|r| r.role == Role::DeviceRelease)
        .flat_map(|r| r.attached().map(|c| c.symbol));
    let syms: Vec<&str> = release.by_ref().collect();
    !syms.is_empty() && syms.iter().all(|s| *s == "vfio_device_fops_release")
}

fn role_covered(p: &Probes, role: Role) -> bool {
    p.plan
        .roles
        .iter()
        .any(|r| r.role == role && r.is_covered())
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the live loop feeds.
pub trait Sink {
    fn event(
        &mut self,
        session: &Session,
        rec: &trace_common::Event,
        ev: &Event,
    ) -> anyhow::Result<()>;
    /// Every `interval`: losses so far (cumulative, per hook) and the clock.
    fn tick(
        &mut self,
        session: &Session,
        lost: &[(HookId, u64)],
        now_ns: u64,
    ) -> anyhow::Result<()>;
    /// SIGHUP: re-read configuration, keeping state.
    fn reload(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Ask the loop to end (e.g. `record --duration`).
    fn done(&self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub undecodable: u64,
    pub lost: u64,
}

pub async fn run(
    session: &mut Session,
    sink: &mut dyn Sink,
    interval: Duration,
) -> anyhow::Result<Stats> {
    let ring = session.probes.ring()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    // Kernel-side diagnostics (aya-log): printed through `log` as they come.
    let mut logs = match session.probes.logger.take() {
        // SAFETY: the logger owns its ring-buffer fd while the AsyncFd holds it.
        Some(l) => unsafe { AsyncFd::register(l) }.ok(),
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(interval);
    let mut stats = Stats::default();
    let mut reported_lost = 0u64;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    let Ok(rec) = record_from_bytes(&item) else {
                        stats.undecodable += 1;
                        continue;
                    };
                    match Event::decode(&rec) {
                        Ok(ev) => {
                            stats.events += 1;
                            sink.event(session, &rec, &ev)?;
                        }
                        Err(_) => stats.undecodable += 1,
                    }
                }
                guard.clear_ready();
            }
            guard = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let lost = session.probes.lost().unwrap_or_default();
                let total: u64 = lost.iter().map(|(_, n)| n).sum();
                if total > reported_lost {
                    let detail: Vec<String> =
                        lost.iter().map(|(h, n)| format!("{}={n}", h.symbol())).collect();
                    eprintln!(
                        "kvscope: {total} events lost so far (ring buffer full; raise --ring-bytes): {}",
                        detail.join(" ")
                    );
                    reported_lost = total;
                }
                stats.lost = total;
                sink.tick(session, &lost, mono_now_ns())?;
            }
            _ = hup.recv() => sink.reload()?,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if sink.done() {
            break;
        }
    }
    Ok(stats)
}
