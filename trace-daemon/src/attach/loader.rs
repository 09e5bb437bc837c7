//! Loading and attaching: the BPF object embedded in this binary, the running
//! kernel's offsets handed to it, and the attach plan carried out. Every failure
//! to attach becomes a reason in the plan, never an abort, unless nothing at all
//! could be attached.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{FEntry, FExit, KProbe, Program, TracePoint},
};
use trace_common::{
    DropCause, HOOK_SLOTS, HookId, LockClass, OFFSET_UNKNOWN, ProbeConfig, WatchedLock,
    config_flags, drop_slot, maps,
};

use super::detach::{detach_programs, unload};
pub use super::verifier::reason;
use crate::{
    attach::gate::{AttachGate, NEVER_STOPPED},
    attach::hooks::TRACEPOINTS,
    attach::plan::{self, HostFacts, LockWatch, Method, Plan, StackVariant},
    event::drops::Drops,
    kernel::{
        btf::{BtfFacts, KernelBtf, OffsetReport, probe_config},
        caps::{Privileges, kprobes_available},
        kallsyms::Kallsyms,
        lockdown::Lockdown,
        tracefs,
        version::KernelVersion,
    },
};

/// The kernel-side object, built by build.rs for the BPF target.
pub static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvscope-probes"));

/// Everything learnt about the host before loading.
pub struct Facts {
    pub version: KernelVersion,
    pub privileges: Privileges,
    pub kallsyms: Kallsyms,
    /// What is kept of the kernel's BTF (the parsed BTF is dropped at start).
    pub btf: BtfFacts,
    pub tracing: Result<PathBuf, String>,
    pub kprobes: Result<(), String>,
    pub lockdown: Lockdown,
    pub offsets: ProbeConfig,
    pub offset_report: Vec<OffsetReport>,
    pub variant: StackVariant,
}

impl Facts {
    pub fn gather() -> anyhow::Result<Facts> {
        // The two slow reads at start-up, side by side.
        let t = std::time::Instant::now();
        let (kallsyms, btf) = std::thread::scope(|scope| {
            let btf = scope.spawn(KernelBtf::load);
            let kallsyms = Kallsyms::read();
            log::info!("kallsyms: {} ms", t.elapsed().as_millis());
            (kallsyms, btf.join())
        });
        log::info!("kernel BTF parsed: {} ms", t.elapsed().as_millis());
        let kallsyms = kallsyms?;
        let btf = btf.map_err(|_| anyhow::anyhow!("parsing the kernel's BTF panicked"))?;
        let tracing = tracefs::ensure_mounted().map_err(|e| format!("{e:#}"));
        let lockdown = Lockdown::current();
        let kprobes = match lockdown.refuses() {
            Some(why) => Err(why.to_owned()),
            None => kprobes_available(tracing.as_ref().ok().map(PathBuf::as_path)),
        };
        let (offsets, offset_report) = probe_config(&btf);
        let has_kvm_ops = btf.field_offset("vfio_device", &["kvm_ops"]).is_some();
        let variant = plan::stack_variant(&kallsyms, has_kvm_ops, btf.has_struct("vfio_device"));
        let btf = btf.facts(plan::hook_symbols());
        Ok(Facts {
            version: KernelVersion::current(),
            privileges: Privileges::current(),
            kallsyms,
            btf,
            tracing,
            kprobes,
            lockdown,
            offsets,
            offset_report,
            variant,
        })
    }

    fn tracepoint_ok(&self, program: &str) -> Result<(), String> {
        let dir = self.tracing.as_ref().map_err(Clone::clone)?;
        let t = TRACEPOINTS
            .iter()
            .find(|t| t.program == program)
            .ok_or_else(|| format!("{program} is not in the tracepoint table"))?;
        tracefs::check_layout(dir, t.category, t.name, t.fields).map_err(|e| format!("{e:#}"))
    }

    pub fn plan(&self, fentry: Result<(), String>) -> Plan {
        let vmlinux_func = |s: &str| self.btf.vmlinux_has_func(s);
        let tracepoint = |p: &str| self.tracepoint_ok(p);
        plan::plan(&HostFacts {
            kallsyms: &self.kallsyms,
            vmlinux_func: &vmlinux_func,
            fentry,
            kprobes: self.kprobes.clone(),
            tracepoint: &tracepoint,
            kernel: (self.version.major, self.version.minor),
        })
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// In-kernel thread-group filter (0: all).
    pub filter_tgid: u32,
    pub stacks: bool,
    pub lock_stacks: bool,
    /// Stacks also where the surrounding events name the call path.
    pub every_stack: bool,
    pub ring_bytes: u32,
    pub lock_watch: LockWatch,
    /// `check`: attach every role and tracepoint once, whatever the mode, to
    /// report what can be attached here.
    pub every_role: bool,
    /// Deep for this long, then lean (`--deep-for`, `deep_for_s`).
    pub deep_for: Option<std::time::Duration>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            filter_tgid: 0,
            stacks: true,
            lock_stacks: true,
            every_stack: false,
            ring_bytes: trace_common::DEFAULT_RING_BYTES,
            lock_watch: LockWatch::Lean,
            every_role: false,
            deep_for: None,
        }
    }
}

/// A ring buffer size the kernel accepts: a power of two, at least a page.
pub fn check_ring_bytes(v: u32) -> Result<u32, String> {
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!(
            "{v} must be a power of two of at least 4096 (the kernel requires it for ring buffers)"
        ));
    }
    Ok(v)
}

/// Loaded and attached programs. Dropping it detaches and unloads everything.
pub struct Probes {
    pub ebpf: Ebpf,
    pub plan: Plan,
    /// Err: why fentry could not be used here (learnt by loading one).
    pub fentry: Result<(), String>,
    pub config: ProbeConfig,
    pub ring_bytes: u32,
    /// The kernel side's slow-path diagnostics (aya-log); polled by the live loop.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Entries user space put in WATCHED (global locks).
    watched_by_user: u64,
    /// (entries added, evictions) when WATCHED was last counted: counted
    /// again only when entries were added since.
    evictions: std::cell::Cell<(u64, u64)>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} is not in the BPF object"))
}

/// Tries loading one fentry program: the only reliable test of whether this
/// kernel lets us use BPF trampolines (sandboxes refuse them with EPERM).
/// Before 5.17 the kernel has no `bpf_get_func_arg`, which the fentry
/// programs read their arguments with: its BTF says so, and that is the
/// reason given (the load would fail with a bare EINVAL).
fn probe_fentry(ebpf: &mut Ebpf, btf: Option<&Btf>, kbtf: &BtfFacts) -> Result<(), String> {
    let btf = btf.ok_or("no vmlinux BTF (/sys/kernel/btf/vmlinux)")?;
    if kbtf.get_func_arg == Some(false) {
        return Err(format!(
            "{}: kvscope's fentry programs read their arguments with it (BPF_FUNC_get_func_arg is not in this kernel's enum bpf_func_id); kprobes are used instead",
            plan::NO_GET_FUNC_ARG
        ));
    }
    let p: &mut FEntry = program(ebpf, "fentry_mutex_unlock")
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load("mutex_unlock", btf).map_err(|e| match e {
        // The errno says it all; the verifier log of a refused load is empty.
        aya::programs::ProgramError::LoadError { io_error, .. } => {
            format!("loading an fentry program on mutex_unlock: {io_error}")
        }
        e => reason(&e),
    })
}

/// Loads the object and attaches the plan for `opts`; a stop through `gate`
/// ends attaching between programs (see `gate.rs`).
pub fn load(facts: &Facts, opts: &LoadOptions, gate: &AttachGate) -> anyhow::Result<Probes> {
    if !facts.privileges.can_trace() {
        bail!(
            "not permitted to load BPF programs: run as root, or with CAP_BPF and CAP_PERFMON (euid {})",
            facts.privileges.euid
        );
    }
    if opts.lock_watch == LockWatch::Lean && facts.offsets.mutex_owner == OFFSET_UNKNOWN {
        bail!(
            "--locks lean needs the layout of struct mutex (its owner field) and this kernel's BTF has none (PREEMPT_RT?): use --locks deep"
        );
    }
    let mut config = facts.offsets;
    config.filter_tgid = opts.filter_tgid;
    let data = |name: &str| facts.kallsyms.data.get(name).copied().unwrap_or(0);
    config.kvm_vcpu_stats_fops = data("kvm_vcpu_stats_fops");
    config.kvm_vm_stats_fops = data("kvm_vm_stats_fops");
    // Only this process's delivery self-test is answered.
    config.self_tgid = std::process::id();
    if let Ok(dir) = &facts.tracing {
        let offset = |name, field| tracefs::field_offset(dir, "sched", name, field);
        if let Some(off) = offset("sched_process_exit", "group_dead") {
            config.exit_group_dead = off as u32;
        }
        if let Some(off) = offset("sched_process_fork", "child_pid") {
            config.fork_child_pid = off as u32;
        }
    }
    config.flags = (if opts.stacks { config_flags::STACKS } else { 0 })
        | (if opts.lock_stacks {
            config_flags::LOCK_STACKS
        } else {
            0
        })
        | (if opts.every_stack {
            config_flags::EVERY_STACK
        } else {
            0
        })
        | (if facts.variant.dev_set_first() {
            config_flags::DEV_SET_FIRST
        } else {
            0
        });
    let t = std::time::Instant::now();
    let mut ebpf = EbpfLoader::new()
        .override_global(maps::CONFIG_GLOBAL, &config, true)
        .map_max_entries(maps::EVENTS, opts.ring_bytes)
        .load(PROBES)
        .context("loading the BPF object (maps and relocations)")?;
    log::info!(
        "object loaded (maps, relocations): {} ms",
        t.elapsed().as_millis()
    );
    let aya_btf = Btf::from_sys_fs().ok();
    let fentry = probe_fentry(&mut ebpf, aya_btf.as_ref(), &facts.btf);
    log::info!("fentry probed: {} ms", t.elapsed().as_millis());
    let mut plan = facts.plan(fentry.clone());
    let mode = (!opts.every_role).then_some(opts.lock_watch);
    plan_mode(&mut plan, mode);
    let watched_by_user = watch_globals(&mut ebpf, &facts.kallsyms)?;
    if !gate.begin() {
        bail!("stopped before attaching");
    }
    let none = BTreeSet::new();
    attach_roles(&mut ebpf, &mut plan, aya_btf.as_ref(), &none, gate);
    if mode == Some(LockWatch::Lean) {
        plan.lean_fd_view();
    }
    attach_tracepoints(&mut ebpf, &mut plan, &none, gate);
    if let Some(why) = facts.lockdown.refuses() {
        plan.blame_failures_on(why);
    }
    if gate.stopped() {
        // Detached together; `Probes` is not built, so do it here.
        detach_programs(&mut ebpf);
        bail!("stopped while attaching");
    }
    if plan.tier() == plan::Tier::None {
        bail!("nothing could be attached on this host; run `kvscope check` for the reasons");
    }
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("kernel-side diagnostics unavailable: {e}");
            None
        }
    };
    Ok(Probes {
        ebpf,
        plan,
        fentry,
        config,
        ring_bytes: opts.ring_bytes,
        logger,
        watched_by_user,
        evictions: std::cell::Cell::new((0, 0)),
    })
}

/// What a lock-watching mode leaves out of the plan (None: `check`, which
/// tries every role once).
fn plan_mode(plan: &mut Plan, mode: Option<LockWatch>) {
    match mode {
        None => {}
        Some(LockWatch::Lean) => plan.without_lock_roles(),
        Some(LockWatch::Deep) => plan.without_handler_roles(),
    }
}

/// Programs attached by the roles of `plan` and by its tracepoints.
fn attached_programs(plan: &Plan) -> BTreeSet<String> {
    let roles = plan
        .roles
        .iter()
        .flat_map(|r| r.attached())
        .flat_map(|c| c.programs.iter().cloned());
    let tps = plan
        .tracepoints
        .iter()
        .filter(|t| t.method == Method::Tracepoint)
        .map(|t| t.program.to_owned());
    roles.chain(tps).collect()
}

impl Probes {
    /// Switches lock watching while running (SIGHUP, `--deep-for`): the plan
    /// of the new mode; the programs only the old one used are unloaded
    /// (their links with them), those only the new one uses attached. The
    /// maps stay, and with them the watched locks and the counters.
    pub fn switch_lock_watch(&mut self, facts: &Facts, to: LockWatch) {
        let btf = Btf::from_sys_fs().ok();
        let before = attached_programs(&self.plan);
        let mut plan = facts.plan(self.fentry.clone());
        plan_mode(&mut plan, Some(to));
        let wanted_roles: BTreeSet<String> = plan
            .roles
            .iter()
            .flat_map(|r| r.choices.iter())
            .filter(|c| c.method != Method::None)
            .flat_map(|c| c.programs.iter().cloned())
            .collect();
        // Roles first: lean's fd view depends on what attached.
        for name in before.iter().filter(|n| !n.starts_with("tp_")) {
            if !wanted_roles.contains(name) {
                self.unload_program(name);
            }
        }
        attach_roles(
            &mut self.ebpf,
            &mut plan,
            btf.as_ref(),
            &before,
            &NEVER_STOPPED,
        );
        if to == LockWatch::Lean {
            plan.lean_fd_view();
        }
        let wanted_tps: BTreeSet<String> = plan
            .tracepoints
            .iter()
            .filter(|t| t.method == Method::Tracepoint)
            .map(|t| t.program.to_owned())
            .collect();
        for name in before.iter().filter(|n| n.starts_with("tp_")) {
            if !wanted_tps.contains(name) {
                self.unload_program(name);
            }
        }
        attach_tracepoints(&mut self.ebpf, &mut plan, &before, &NEVER_STOPPED);
        self.plan = plan;
    }

    fn unload_program(&mut self, name: &str) {
        if let Some(p) = self.ebpf.program_mut(name) {
            unload(p);
        }
    }
}

/// Attaches the planned role programs, but those in `already` (attached by a
/// previous plan); a failure is recorded on its choice. A stop through
/// `gate` ends it between programs.
fn attach_roles(
    ebpf: &mut Ebpf,
    plan: &mut Plan,
    btf: Option<&Btf>,
    already: &BTreeSet<String>,
    gate: &AttachGate,
) {
    for role in &mut plan.roles {
        for choice in &mut role.choices {
            if choice.method == Method::None {
                continue;
            }
            for name in choice.programs.clone() {
                if gate.stopped() {
                    return;
                }
                if already.contains(&name) {
                    continue;
                }
                if let Err(e) = attach_one(ebpf, &name, choice.symbol, btf) {
                    choice.error = Some(format!("{name}: {e}"));
                    break;
                }
            }
        }
    }
}

fn attach_tracepoints(
    ebpf: &mut Ebpf,
    plan: &mut Plan,
    already: &BTreeSet<String>,
    gate: &AttachGate,
) {
    for tp in &mut plan.tracepoints {
        if gate.stopped() {
            return;
        }
        if tp.method != Method::Tracepoint || already.contains(tp.program) {
            continue;
        }
        let spec = TRACEPOINTS
            .iter()
            .find(|t| t.program == tp.program)
            .expect("plan built from the table");
        let res = (|| -> anyhow::Result<()> {
            let p: &mut TracePoint = program(ebpf, tp.program)?.try_into()?;
            if p.fd().is_err() {
                p.load().map_err(|e| anyhow::anyhow!(reason(&e)))?;
            }
            p.attach(spec.category, spec.name)
                .map_err(|e| anyhow::anyhow!(reason(&e)))?;
            Ok(())
        })();
        if let Err(e) = res {
            tp.method = Method::None;
            tp.reason = format!("{e:#}");
        }
    }
}

fn attach_one(ebpf: &mut Ebpf, name: &str, symbol: &str, btf: Option<&Btf>) -> anyhow::Result<()> {
    let prog = program(ebpf, name)?;
    let loaded = prog.fd().is_ok();
    let err = |e: aya::programs::ProgramError| anyhow::anyhow!(reason(&e));
    if name.starts_with("fentry_") || name.starts_with("fexit_") {
        let btf = btf.context("no vmlinux BTF")?;
        if name.starts_with("fentry_") {
            let p: &mut FEntry = prog.try_into()?;
            if !loaded {
                p.load(symbol, btf).map_err(err)?;
            }
            p.attach().map_err(err)?;
        } else {
            let p: &mut FExit = prog.try_into()?;
            if !loaded {
                p.load(symbol, btf).map_err(err)?;
            }
            p.attach().map_err(err)?;
        }
    } else {
        let p: &mut KProbe = prog.try_into()?;
        if !loaded {
            p.load().map_err(err)?;
        }
        p.attach(symbol, 0).map_err(err)?;
    }
    Ok(())
}

/// Global locks (not reachable from any hooked object) are watched from here.
fn watch_globals(ebpf: &mut Ebpf, k: &Kallsyms) -> anyhow::Result<u64> {
    let mut watched: BpfHashMap<&mut MapData, u64, WatchedLock> =
        BpfHashMap::try_from(ebpf.map_mut(maps::WATCHED).context("WATCHED map missing")?)?;
    if let Some(&addr) = k.data.get("kvm_lock")
        && addr != 0
    {
        let v = WatchedLock {
            class: LockClass::KvmGlobalLock as u8,
            _pad: [0; 7],
            owner: 0,
        };
        watched.insert(addr, v, 0)?;
        let mut hint: aya::maps::Array<&mut MapData, u64> = aya::maps::Array::try_from(
            ebpf.map_mut(maps::WATCH_HINT)
                .context("WATCH_HINT map missing")?,
        )?;
        hint.set(trace_common::watch_hint_slot(addr), 1, 0)?;
        return Ok(1);
    }
    Ok(0)
}

impl Drop for Probes {
    fn drop(&mut self) {
        // Faster than the object's own drop, which detaches one by one.
        detach_programs(&mut self.ebpf);
    }
}

impl Probes {
    pub fn ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Lost events per hook, summed over CPUs.
    pub fn lost(&self) -> anyhow::Result<Vec<(HookId, u64)>> {
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::LOST).context("LOST map missing")?)?;
        let mut out = Vec::new();
        for i in 0..HOOK_SLOTS {
            let total: u64 = arr.get(&i, 0)?.iter().sum();
            if total > 0
                && let Some(h) = HookId::from_u16(i as u16)
            {
                out.push((h, total));
            }
        }
        Ok(out)
    }

    /// The kernel side's other losses (`trace_common::DropCause`). Evictions
    /// from the WATCHED LRU map = entries ever added - entries now (nothing
    /// deletes from it); the map is walked only when entries were added.
    pub fn drops(&self) -> anyhow::Result<Drops> {
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::DROPS).context("DROPS map missing")?)?;
        let mut d = Drops::default();
        let row = |cause: DropCause, out: &mut BTreeMap<String, u64>| -> anyhow::Result<()> {
            for i in 0..HOOK_SLOTS {
                let n: u64 = arr.get(&drop_slot(cause, i), 0)?.iter().sum();
                if n > 0 {
                    let name = HookId::from_u16(i as u16).map_or("?", |h| h.symbol());
                    out.insert(name.to_owned(), n);
                }
            }
            Ok(())
        };
        row(DropCause::StackId, &mut d.stack_id_failed)?;
        row(DropCause::StashFull, &mut d.stash_full)?;
        let added: u64 = arr
            .get(&drop_slot(DropCause::WatchedNew, 0), 0)?
            .iter()
            .sum::<u64>()
            + self.watched_by_user;
        let (counted_at, mut evicted) = self.evictions.get();
        if added != counted_at {
            let watched: BpfHashMap<&MapData, u64, WatchedLock> = BpfHashMap::try_from(
                self.ebpf
                    .map(maps::WATCHED)
                    .context("WATCHED map missing")?,
            )?;
            let now = watched.keys().filter(|k| k.is_ok()).count() as u64;
            evicted = added.saturating_sub(now);
            self.evictions.set((added, evicted));
        }
        d.watched_added = added;
        d.watched_evicted = evicted;
        Ok(d)
    }

    /// Fraction of the ring buffer holding unread events, as of the last event.
    pub fn ring_fill(&self) -> Option<f64> {
        let arr: Array<&MapData, u64> = Array::try_from(self.ebpf.map(maps::RING_FILL)?).ok()?;
        let bytes = arr.get(&0, 0).ok()?;
        Some(bytes as f64 / self.ring_bytes as f64)
    }

    pub fn stacks(&self) -> anyhow::Result<StackTraceMap<&MapData>> {
        Ok(StackTraceMap::try_from(
            self.ebpf.map(maps::STACKS).context("STACKS map missing")?,
        )?)
    }
}
