//! The live path measured on this host's kernel: threads flood real
//! KVM_CREATE_VM + KVM_CREATE_DEVICE(VFIO) + close(2) while an in-process
//! session (this process's thread group only, filtered in the kernel) drains
//! the ring buffer, decodes and feeds the engine. Counted per hook: events
//! the flood caused, events delivered into the engine, events the kernel
//! counted lost. On a tracepoint-tier host (no path hooks) every event has a
//! known cause, so caused = delivered + lost is checked exactly.
use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kvscope::{
    attach::{
        live::{self, Session, Signals, Sink},
        loader::LoadOptions,
        plan::Tier,
    },
    engine::{Config, Engine},
    event::{Event, drops::Drops},
};
use trace_common::HookId;

const KVM_CREATE_VM: u64 = 0xAE01;
const KVM_CREATE_DEVICE: u64 = 0xC00C_AEE0;
const KVM_DEV_TYPE_VFIO: u32 = 4;

pub struct FloodResult {
    pub tier: Tier,
    pub vms: u64,
    /// Per hook symbol: (caused, delivered, lost). `caused` is None for hooks
    /// whose count the flood does not determine.
    pub by_hook: BTreeMap<&'static str, (Option<u64>, u64, u64)>,
    /// Events delivered into the engine.
    pub delivered: u64,
    /// From the flood's start to the last event delivered.
    pub secs: f64,
    pub flood_secs: f64,
    /// CPU time of the consumer thread (ring -> decode -> engine), user + system.
    pub consumer_cpu_secs: f64,
    /// After a stall: the backlog delivered back to back (events, seconds).
    pub backlog: Option<(u64, f64)>,
    /// The kernel side's other drops at the end (and the watched-lock
    /// entries added: one kvm.lock per KVM_CREATE_VM on the tracepoint tier).
    pub drops: Drops,
}

impl FloodResult {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }

    /// Hooks whose caused count differs from delivered + lost.
    pub fn mismatches(&self) -> Vec<String> {
        self.by_hook
            .iter()
            .filter_map(|(h, (c, d, l))| match c {
                Some(c) if *c != d + l => {
                    Some(format!("{h}: caused {c} != delivered {d} + lost {l}"))
                }
                _ => None,
            })
            .collect()
    }

    /// Consumer CPU per delivered event, in µs.
    pub fn cpu_us_per_event(&self) -> f64 {
        self.consumer_cpu_secs * 1e6 / self.delivered.max(1) as f64
    }

    pub fn lost(&self) -> u64 {
        self.by_hook.values().map(|(_, _, l)| l).sum()
    }
}

/// One VM with its kvm-vfio device, both closed at once.
fn churn_one(kvm: &OwnedFd) -> anyhow::Result<()> {
    // SAFETY: plain ioctls on fds we own; the returned fds are wrapped at once.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        bail!("KVM_CREATE_VM: {}", std::io::Error::last_os_error());
    }
    let vm = unsafe { OwnedFd::from_raw_fd(vm) };
    let mut cd = [KVM_DEV_TYPE_VFIO, 0, 0];
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CREATE_DEVICE as _, cd.as_mut_ptr()) };
    if r != 0 {
        bail!(
            "KVM_CREATE_DEVICE(VFIO): {}",
            std::io::Error::last_os_error()
        );
    }
    drop(unsafe { OwnedFd::from_raw_fd(cd[1] as i32) });
    drop(vm);
    Ok(())
}

fn flood(threads: usize, per_thread: usize) -> anyhow::Result<()> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("opening /dev/kvm (the flood needs KVM)")?;
    let kvm: OwnedFd = kvm.into();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    for _ in 0..per_thread {
                        churn_one(&kvm)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("flood thread"))
    })
}

struct CountSink {
    engine: Engine,
    by_hook: BTreeMap<HookId, u64>,
    delivered: u64,
    last_event: Option<Instant>,
    flood_done: Arc<AtomicBool>,
    done_at: Option<Instant>,
    /// Block the consumer this long at the first event (a reader that falls
    /// behind), so that a small ring overflows.
    stall: Option<Duration>,
    /// The burst after the stall: its start, events, last delivery; closed
    /// at the first gap over `BURST_GAP` (the ring was empty).
    burst: Option<(Instant, u64, Instant)>,
    backlog: Option<(u64, f64)>,
}

/// A gap this long between two deliveries ends the post-stall burst.
const BURST_GAP: Duration = Duration::from_millis(1);

impl CountSink {
    fn note_burst(&mut self, now: Instant) {
        let Some((start, n, last)) = self.burst else {
            return;
        };
        if now.duration_since(last) > BURST_GAP {
            self.backlog = Some((n, last.duration_since(start).as_secs_f64()));
            self.burst = None;
        } else {
            self.burst = Some((start, n + 1, now));
        }
    }
}

impl Sink for CountSink {
    fn event(&mut self, _s: &Session, _r: &trace_common::Event, ev: &Event) -> anyhow::Result<()> {
        if let Some(d) = self.stall.take() {
            std::thread::sleep(d);
            let now = Instant::now();
            self.burst = Some((now, 0, now));
        }
        self.note_burst(Instant::now());
        self.engine.ingest(ev);
        *self.by_hook.entry(ev.hook).or_default() += 1;
        self.delivered += 1;
        self.last_event = Some(Instant::now());
        Ok(())
    }

    fn tick(&mut self, _s: &Session, _l: &[(HookId, u64)], now_ns: u64) -> anyhow::Result<()> {
        self.engine.tick(now_ns);
        if self.done_at.is_none() && self.flood_done.load(Ordering::SeqCst) {
            self.done_at = Some(Instant::now());
        }
        Ok(())
    }

    fn done(&mut self) -> bool {
        // Half a second after the flood ended: the loop then drains once more.
        self.done_at
            .is_some_and(|t| t.elapsed() > Duration::from_millis(500))
    }
}

/// CPU time of the calling thread.
fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Floods `threads` x `per_thread` VMs under a session with a ring of
/// `ring_bytes`; `stall`: the consumer stops that long at the first event.
pub fn run(
    threads: usize,
    per_thread: usize,
    ring_bytes: u32,
    stall: Option<Duration>,
) -> anyhow::Result<FloodResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut signals = Signals::install()?;
        let opts = LoadOptions {
            filter_tgid: std::process::id(),
            ring_bytes,
            ..LoadOptions::default()
        };
        let Some(mut session) = live::attach(&opts, &mut signals).await? else {
            bail!("stopped during attach");
        };
        let tier = session.probes.plan.tier();
        let flood_done = Arc::new(AtomicBool::new(false));
        let mut sink = CountSink {
            engine: Engine::new(Config::default()),
            by_hook: BTreeMap::new(),
            delivered: 0,
            last_event: None,
            flood_done: flood_done.clone(),
            done_at: None,
            stall,
            burst: None,
            backlog: None,
        };
        let started = Instant::now();
        let worker = std::thread::spawn(move || {
            let r = flood(threads, per_thread);
            flood_done.store(true, Ordering::SeqCst);
            (r, started.elapsed())
        });
        let cpu = thread_cpu_secs();
        live::run(
            &mut session,
            &mut sink,
            Duration::from_millis(100),
            &mut signals,
        )
        .await?;
        let consumer_cpu_secs = thread_cpu_secs() - cpu;
        let (r, flood_time) = worker.join().expect("flood");
        r?;
        let lost = session.probes.lost()?;
        let drops = session.probes.drops()?;
        drop(session);
        let vms = (threads * per_thread) as u64;
        let caused = |h: HookId| match h {
            // KVM_CREATE_VM and KVM_CREATE_DEVICE return; two close(2) per VM.
            HookId::SysIoctl | HookId::SysClose if tier == Tier::Tracepoints => Some(2 * vms),
            _ => None,
        };
        let mut by_hook = BTreeMap::new();
        let hooks = sink.by_hook.keys().chain(lost.iter().map(|(h, _)| h));
        for h in hooks.copied().collect::<std::collections::BTreeSet<_>>() {
            let d = sink.by_hook.get(&h).copied().unwrap_or(0);
            let l = lost.iter().find(|(x, _)| *x == h).map_or(0, |(_, n)| *n);
            by_hook.insert(h.symbol(), (caused(h), d, l));
        }
        if tier == Tier::Tracepoints {
            for h in [HookId::SysIoctl, HookId::SysClose] {
                by_hook.entry(h.symbol()).or_insert((caused(h), 0, 0));
            }
        }
        let secs = sink
            .last_event
            .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
        Ok(FloodResult {
            tier,
            vms,
            by_hook,
            delivered: sink.delivered,
            secs,
            flood_secs: flood_time.as_secs_f64(),
            consumer_cpu_secs,
            backlog: sink.backlog,
            drops,
        })
    })
}
