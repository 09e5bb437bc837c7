//! The live loop shared by `trace`, `record` and the daemon: signals first,
//! then attach and self-test delivery, poll the ring buffer, decode, hand each
//! event to a sink, check losses periodically, and detach cleanly on
//! SIGINT/SIGTERM (also one that arrives while attaching).
use std::{collections::BTreeMap, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use trace_common::HookId;

use crate::{
    attach::gate::{AfterStop, AttachGate},
    attach::hooks::Role,
    attach::late_kallsyms::LateKallsyms,
    attach::loader::{self, Facts, LoadOptions, Probes},
    attach::modules::{Change, Modules},
    attach::plan::{LockWatch, Method},
    attach::selftest,
    engine,
    event::{DecodeError, Event, Kind, drops::Drops, record_from_bytes},
    identity::Identity,
    recording::{Delivery, Gap, Header, Stack},
};

pub use super::signals::{Sig, Signals, hold_signals, release_signals};

/// How long a stop waits for the attaching thread to detach what it attached
/// (it stops between programs); past this the process exits and the kernel
/// releases the rest.
const DETACH_AFTER_STOP: Duration = Duration::from_secs(10);
/// While events keep coming, freed heap goes back this often at most.
const BUSY_TRIM_EVERY: Duration = Duration::from_secs(10);

/// Attaches (in a thread of its own, since loading blocks for seconds) while
/// honouring a stop: None when SIGINT or SIGTERM came first. Before the first
/// program is attached the loading thread is abandoned (nothing to undo);
/// after it, the thread stops between programs and detaches them together.
pub async fn attach(opts: &LoadOptions, signals: &mut Signals) -> anyhow::Result<Option<Session>> {
    let opts = opts.clone();
    let gate = std::sync::Arc::new(AttachGate::new());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let thread_gate = gate.clone();
    std::thread::Builder::new()
        .name("kvscope-attach".into())
        .spawn(move || {
            let _ = tx.send(Session::start(&opts, &thread_gate));
        })?;
    let sig = tokio::select! {
        r = &mut rx => return Ok(Some(r.map_err(|_| anyhow::anyhow!("the attach thread died"))??)),
        sig = signals.stop() => sig,
    };
    let t = std::time::Instant::now();
    if gate.stop() == AfterStop::WaitForDetach {
        // A session that completed anyway is dropped here: detached together.
        let _ = tokio::time::timeout(DETACH_AFTER_STOP, rx).await;
    }
    log::info!(
        "stop during attach: {} ms to detach",
        t.elapsed().as_millis()
    );
    eprintln!("kvscope: {sig} before attaching finished: stopped");
    Ok(None)
}

pub struct Session {
    pub facts: Facts,
    pub probes: Probes,
    /// kallsyms read again after attach, which names the BPF frames.
    symbols: LateKallsyms,
    /// Taken by the live loop.
    ring: Option<RingBuf<MapData>>,
    /// The ring's fill, readable at any time (metrics scrapes).
    pub fill: Option<std::sync::Arc<super::ring_fill::RingFill>>,
    /// Records read during the self-test (undecodable ones too, to be
    /// counted), delivered first by the live loop.
    pending: Vec<Result<trace_common::Event, DecodeError>>,
    pub delivery: Delivery,
    /// The kernel side's other drops, as of the last tick.
    pub drops: Drops,
    pub lock_watch: LockWatch,
    /// A time-boxed deep session (`--deep-for`, `deep_for_s`): when it ends,
    /// lock watching switches to lean.
    pub deep_until: Option<std::time::Instant>,
    /// The watched modules as of the attach (or the last change seen).
    pub modules: Modules,
}

impl Session {
    pub fn start(opts: &LoadOptions, gate: &AttachGate) -> anyhow::Result<Session> {
        // Start-up phases with their times (`--log info`): attaching is what
        // a slow host (a TCG guest) waits for.
        let t = std::time::Instant::now();
        let phase = |what: &str| log::info!("{what}: {} ms", t.elapsed().as_millis());
        // Before the facts: a module loaded in between is seen as a change.
        let modules = Modules::now();
        let facts = Facts::gather()?;
        phase("kallsyms, BTF and tracefs read");
        let mut probes = loader::load(&facts, opts, gate)?;
        phase("programs loaded and attached");
        let symbols = LateKallsyms::read_in_background();
        let mut ring = probes.ring()?;
        let fill = super::ring_fill::RingFill::map(
            std::os::fd::AsRawFd::as_raw_fd(&ring),
            opts.ring_bytes,
        )
        .map(std::sync::Arc::new)
        .map_err(|e| log::warn!("the ring buffer's fill cannot be read: {e}"))
        .ok();
        let mut pending = Vec::new();
        let delivery = selftest::run(&mut ring, &mut pending, self_test_possible(&probes), || {
            lost_of(&probes, HookId::SelfTest)
        });
        phase("delivery self-test");
        crate::memory::give_back();
        Ok(Session {
            facts,
            probes,
            symbols,
            ring: Some(ring),
            fill,
            pending,
            delivery,
            drops: Drops::default(),
            lock_watch: opts.lock_watch,
            deep_until: opts
                .deep_for
                .filter(|_| opts.lock_watch == LockWatch::Deep)
                .map(|d| std::time::Instant::now() + d),
            modules,
        })
    }

    /// Switches lock watching while running; `deep_for` time-boxes a switch
    /// to deep. The line to print: what changed, or why nothing did.
    pub fn switch_lock_watch(&mut self, to: LockWatch, deep_for: Option<Duration>) -> String {
        self.deep_until = deep_for
            .filter(|_| to == LockWatch::Deep)
            .map(|d| std::time::Instant::now() + d);
        if to == self.lock_watch {
            return format!("lock watching stays {}", to.name());
        }
        if to == LockWatch::Lean && self.facts.offsets.mutex_owner == trace_common::OFFSET_UNKNOWN {
            return "lean needs struct mutex's owner field and this kernel's BTF has none: staying deep".to_owned();
        }
        let from = self.lock_watch;
        self.probes.switch_lock_watch(&self.facts, to);
        // The switch parsed the kernel's BTF again to load the new programs.
        crate::memory::give_back();
        self.lock_watch = to;
        let attached = self
            .probes
            .plan
            .roles
            .iter()
            .filter(|r| r.is_covered())
            .count();
        format!(
            "lock watching switched {} -> {}; {attached}/{} roles, tracepoints: {}",
            from.name(),
            to.name(),
            self.probes.plan.roles.len(),
            self.probes
                .plan
                .tracepoints
                .iter()
                .filter(|t| t.method == Method::Tracepoint)
                .map(|t| t.tracepoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The time-boxed deep session is over.
    pub fn deep_expired(&self) -> bool {
        self.deep_until
            .is_some_and(|t| std::time::Instant::now() >= t && self.lock_watch == LockWatch::Deep)
    }

    /// One line for stderr: ready, what is attached, whether delivery was
    /// verified. Printed only once probes are attached and signal handlers
    /// installed.
    pub fn banner(&self) -> String {
        let plan = &self.probes.plan;
        let attached = plan.roles.iter().filter(|r| r.is_covered()).count();
        let delivery = if self.delivery.verified {
            self.delivery
                .summary()
                .replace("verified at attach", "event delivery verified")
        } else {
            "event delivery NOT verified".to_owned()
        };
        format!(
            "kvscope: ready: attached on {} ({}); {}/{} roles; locks {}; {delivery}",
            self.facts.version.release,
            plan.tier().describe(),
            attached,
            plan.roles.len(),
            self.lock_watch.name()
        )
    }

    /// Prints the banner, and a warning line first when delivery is unverified.
    pub fn announce(&self, rest: &str) {
        if let Some(w) = self.delivery.warning() {
            eprintln!("kvscope: warning: {w}");
        }
        eprintln!("{}; {rest}", self.banner());
    }

    /// Engine settings that depend on what is attached.
    pub fn engine_config(&self, mut cfg: engine::Config) -> engine::Config {
        cfg.destroy_observable = role_covered(&self.probes, Role::VmDestroyed);
        cfg.release_closes = release_closes(&self.probes);
        cfg.table_edges = self.lock_watch == LockWatch::Lean;
        cfg.set_kvm_takes_group_lock = self.facts.variant.set_kvm_takes_group_lock();
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
            lock_watch: self.lock_watch.name().to_owned(),
            offsets: self
                .facts
                .offset_report
                .iter()
                .map(|o| (o.source.clone(), o.offset))
                .collect(),
            attach,
            destroy_observable: role_covered(&self.probes, Role::VmDestroyed),
            release_closes: release_closes(&self.probes),
            set_kvm_takes_group_lock: self.facts.variant.set_kvm_takes_group_lock(),
            tracepoints: plan
                .tracepoints
                .iter()
                .filter(|t| t.method == Method::Tracepoint)
                .map(|t| t.tracepoint.clone())
                .collect(),
            mono_start_ns: mono_now_ns(),
            wall_start_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            delivery: self.delivery.clone(),
        }
    }

    /// Detaches everything (dropping the session does the same) and logs when,
    /// for the time split of a stop. Only when the process ends next: the
    /// symbol tables and the parsed BTF are left to the exit rather than freed
    /// one allocation at a time (a tenth of a second here, most of a second in
    /// an emulated guest, for memory the exit returns at once). A session
    /// replaced while running is dropped instead (attach_again).
    pub fn close_for_exit(self) {
        let Session {
            probes,
            facts,
            symbols,
            ..
        } = self;
        drop(probes);
        stop_phase("detached");
        std::mem::forget((facts, symbols));
    }

    /// Once kallsyms read after attach is in, it replaces the table read
    /// before (a switch of lock watching plans with it): one table, not two,
    /// for as long as the session runs.
    fn settle_symbols(&mut self) {
        if let Some(late) = self.symbols.take_if_in() {
            self.facts.kallsyms = late;
            crate::memory::give_back();
        }
    }

    /// A kernel stack, symbolised with this host's kallsyms.
    pub fn stack(&self, id: u32) -> Option<Stack> {
        let map = self.probes.stacks().ok()?;
        let st = map.get(&id, 0).ok()?;
        let ips: Vec<u64> = st.frames().iter().map(|f| f.ip).collect();
        // Once a stop began, the late read is not waited for (its only gain:
        // names of BPF frames, which kprobe stacks seldom hold).
        let kallsyms = match STOP_AT.get() {
            Some(_) => self.symbols.get_if_ready(&self.facts.kallsyms),
            None => self.symbols.get(&self.facts.kallsyms),
        };
        let symbols = ips.iter().map(|ip| kallsyms.frame(*ip)).collect();
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

/// The self-test's answer comes from the sys_enter_ioctl program.
/// Who answers the self-test: the sys_enter_ioctl program where the syscall
/// tracepoints are attached, else (lean, tiers 1-2) the kvm_dev_ioctl hook.
fn self_test_possible(p: &Probes) -> Result<selftest::Trigger, String> {
    if p.plan.syscalls_traced() {
        return Ok(selftest::Trigger::DevNull);
    }
    if role_covered(p, Role::VmFdCreated) {
        return Ok(selftest::Trigger::DevKvm);
    }
    Err("neither syscalls:sys_enter_ioctl nor kvm_dev_ioctl is attached".into())
}

fn lost_of(p: &Probes, hook: HookId) -> u64 {
    p.lost()
        .unwrap_or_default()
        .iter()
        .filter(|(h, _)| *h == hook)
        .map(|(_, n)| n)
        .sum()
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
    /// SIGHUP: re-read configuration, keeping state (it may switch the
    /// session's lock watching).
    fn reload(&mut self, _session: &mut Session) -> anyhow::Result<()> {
        Ok(())
    }
    /// The session's lock watching changed (SIGHUP, the end of `--deep-for`).
    fn lock_watch_changed(&mut self, _session: &Session) {}
    /// The VM at `kvm`, seen created at `created_ns`, belongs to `id`.
    fn identified(&mut self, _kvm: u64, _created_ns: u64, _id: &Identity) -> anyhow::Result<()> {
        Ok(())
    }
    /// Watched modules changed and kvscope attached again (`session`, None
    /// when a stop came first): nothing was seen in `gap`.
    fn blind(
        &mut self,
        _changes: &[Change],
        _gap: &Gap,
        _session: Option<&Session>,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// Asked at every tick: go deep for this long (a lean finding armed it).
    fn wants_deep(&mut self) -> Option<Duration> {
        None
    }
    /// Ask the loop to end (e.g. `record --duration`).
    fn done(&mut self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub undecodable: u64,
    pub lost: u64,
    /// The loop ended for these module changes (the sink asked to attach
    /// again), not for a stop.
    pub reattach: Vec<Change>,
    /// Then: the last look that found the modules as before (monotonic ns),
    /// where the blind gap starts.
    pub unchanged_ns: u64,
}

pub async fn run(
    session: &mut Session,
    sink: &mut dyn Sink,
    interval: Duration,
    signals: &mut Signals,
) -> anyhow::Result<Stats> {
    let ring = session
        .ring
        .take()
        .ok_or_else(|| anyhow::anyhow!("the live loop runs once per session"))?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    // Kernel-side diagnostics (aya-log): printed through `log` as they come.
    let mut logs = match session.probes.logger.take() {
        // SAFETY: the logger owns its ring-buffer fd while the AsyncFd holds it.
        Some(l) => unsafe { AsyncFd::register(l) }.ok(),
        None => None,
    };
    let mut stats = Stats::default();
    for rec in std::mem::take(&mut session.pending) {
        deliver(session, sink, rec, &mut stats)?;
    }
    let mut tick = super::ticker::Ticker::every(interval)?;
    let mut reported_lost = 0u64;
    let mut unchanged_ns = mono_now_ns();
    let mut events_at_tick = stats.events;
    let mut trimmed = std::time::Instant::now();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), session, sink, &mut stats)?;
                guard.clear_ready();
            }
            guard = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            t = tick.tick() => {
                t?;
                // Belt and braces for a wakeup that never comes: whatever
                // waits in the ring is read at least once per tick.
                drain(ring.get_mut(), session, sink, &mut stats)?;
                if let Some(l) = logs.as_mut() {
                    l.get_mut().flush();
                }
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
                let drops = session.probes.drops().unwrap_or_default();
                if drops != session.drops && !drops.is_empty() {
                    eprintln!("kvscope: kernel-side drops so far: {}", drops.summary());
                }
                session.drops = drops;
                sink.tick(session, &lost, mono_now_ns())?;
                session.settle_symbols();
                // What was freed since the last trim (a burst's analysis, a
                // re-attach, scrapes) goes back to the kernel: at the first
                // idle tick (no event since the last), or every
                // `BUSY_TRIM_EVERY` while events keep coming (deep lock
                // watching beside a running VM may never idle).
                let idle = stats.events == events_at_tick;
                if (idle || trimmed.elapsed() >= BUSY_TRIM_EVERY)
                    && crate::memory::give_back_if_worked()
                {
                    trimmed = std::time::Instant::now();
                }
                events_at_tick = stats.events;
                let now = Modules::now();
                if now != session.modules {
                    // modprobe loads a module and its dependencies one by
                    // one: act on the set once it holds still.
                    let now = settled(now).await;
                    let changes = session.modules.changes(&now);
                    session.modules = now;
                    // Every command attaches again (attach_again).
                    if !changes.is_empty() {
                        stats.reattach = changes;
                        stats.unchanged_ns = unchanged_ns;
                        break;
                    }
                } else {
                    unchanged_ns = mono_now_ns();
                }
                if session.deep_expired() {
                    eprintln!("kvscope: the deep session's time is up: {}", session.switch_lock_watch(LockWatch::Lean, None));
                    sink.lock_watch_changed(session);
                }
                if let Some(d) = sink.wants_deep()
                    && session.lock_watch == LockWatch::Lean
                {
                    let line = session.switch_lock_watch(LockWatch::Deep, Some(d));
                    eprintln!("kvscope: a lock finding armed deep for {} s: {line}", d.as_secs());
                    sink.lock_watch_changed(session);
                }
            }
            sig = signals.next() => match sig? {
                Sig::Reload => sink.reload(session)?,
                Sig::Stop(_) => break mark_stop(),
                Sig::Handled => {}
            },
        }
        if sink.done() {
            break;
        }
    }
    // What arrived before the stop is still delivered.
    drain(ring.get_mut(), session, sink, &mut stats)?;
    stop_phase("ring drained");
    Ok(stats)
}

/// The watched modules once two looks 300 ms apart agree (at most 3 s).
async fn settled(mut now: Modules) -> Modules {
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = Modules::now();
        if next == now {
            break;
        }
        now = next;
    }
    now
}

/// When the stop signal was taken, for the time split of a stop.
static STOP_AT: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn mark_stop() {
    let _ = STOP_AT.set(std::time::Instant::now());
}

/// Logs (`--log info`) how long after the stop signal `what` was done: the
/// time split of a stop.
pub fn stop_phase(what: &str) {
    if let Some(t) = STOP_AT.get() {
        log::info!(
            "stop: {what} {} ms after the signal",
            t.elapsed().as_millis()
        );
    }
}

/// Reads the ring until it is empty.
///
/// The kernel wakes the reader only for a record committed when the reader's
/// position equals that record's: if our position store is still in this
/// CPU's store buffer when we last read the producer position, the kernel
/// sees the old position, sends no wakeup, and sends none for any later
/// record either. A full fence before the final check closes that window.
fn drain(
    rb: &mut RingBuf<MapData>,
    session: &Session,
    sink: &mut dyn Sink,
    stats: &mut Stats,
) -> anyhow::Result<()> {
    let mut fenced = false;
    loop {
        let Some(item) = rb.next() else {
            if fenced {
                return Ok(());
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            fenced = true;
            continue;
        };
        fenced = false;
        let rec = record_from_bytes(&item);
        // Dropping the item hands its space back to the kernel.
        drop(item);
        deliver(session, sink, rec, stats)?;
    }
}

/// One record to the sink, or to the counters when it does not decode.
fn deliver(
    session: &Session,
    sink: &mut dyn Sink,
    rec: Result<trace_common::Event, DecodeError>,
    stats: &mut Stats,
) -> anyhow::Result<()> {
    let Ok(rec) = rec else {
        stats.undecodable += 1;
        return Ok(());
    };
    if rec.hook == HookId::SelfTest as u16 {
        // A self-test answer that came after its deadline: delivery works
        // after all, but the header already said otherwise.
        log::info!("late self-test event: delivery works, but slowly");
        return Ok(());
    }
    match Event::decode(&rec) {
        Ok(ev) => {
            stats.events += 1;
            sink.event(session, &rec, &ev)?;
            // Named while its creator can still be read.
            if ev.kind == Kind::VmCreated
                && let Some(kvm) = ev.kvm
            {
                let id = Identity::read(ev.tgid, &ev.comm.to_string());
                sink.identified(kvm, ev.ts_ns, &id)?;
            }
            Ok(())
        }
        Err(_) => {
            stats.undecodable += 1;
            Ok(())
        }
    }
}
