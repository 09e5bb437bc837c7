//! The analysis engine. No I/O: typed events in (`ingest`), time passing in
//! (`tick`, for thresholds), state and findings out. The same code runs live, in
//! replay and in the scenario tests.
//!
//! Counts are the kernel's: every event that carries a VM carries the
//! `users_count` read at that moment, and the timeline is built from those reads.
//! A change that no observed event explains (on real kernels `kvm_get_kvm` is
//! partly inlined into `kvm_vm_ioctl`) becomes an *inferred* step, never hidden.
pub mod finding;
pub mod locks;
pub mod timeline;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;
use trace_common::LockClass;

pub use self::finding::{Finding, FindingKind, Severity, Thread};
use self::{
    locks::{EdgeSeen, Held, LockState},
    timeline::{Step, Timeline},
};
use crate::event::{Event, FdKind, Kind};

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Steps kept per object timeline (older ones are folded into a summary).
    pub timeline_cap: usize,
    /// Destroyed VMs and closed devices kept for `timeline` and reports.
    pub retain_dead: usize,
    /// A VM whose fd is closed but which is not destroyed after this long is a zombie.
    pub zombie_after_ms: u64,
    /// A device fully closed whose kvm reference is still held after this long leaks it.
    pub leak_grace_ms: u64,
    pub long_wait_ms: u64,
    pub long_hold_ms: u64,
    /// Whether kvm_destroy_vm is hooked. When it is not (tier 3), the last close
    /// of a VM's fds at count 1 is taken as its destruction, marked inferred.
    pub destroy_observable: bool,
    /// Whether the device fd's release does the close itself (6.1 and the
    /// kvm_ops patch: no vfio_df_close/vfio_device_close hook follows it), so
    /// open_count drops at the release. Set from the attach plan, not config.
    #[serde(skip)]
    pub release_closes: bool,
    /// Distinct findings kept; the oldest are dropped (and counted) past it.
    pub max_findings: usize,
    /// Collect measurements (lock waits and holds, VM teardown) for the
    /// caller to drain (`take_observations`); the daemon's histograms.
    #[serde(skip)]
    pub observe: bool,
}

/// A measurement the engine made, for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    LockWait {
        class: LockClass,
        secs: f64,
    },
    LockHold {
        class: LockClass,
        secs: f64,
    },
    /// VM fd closed -> kvm_destroy_vm.
    Teardown {
        secs: f64,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeline_cap: 256,
            retain_dead: 1024,
            zombie_after_ms: 10_000,
            leak_grace_ms: 1_000,
            long_wait_ms: 1_000,
            long_hold_ms: 5_000,
            destroy_observable: true,
            release_closes: false,
            max_findings: 10_000,
            observe: false,
        }
    }
}

const MS: u64 = 1_000_000;

/// One generation of a `struct kvm` at one address.
#[derive(Clone, Debug, Serialize)]
pub struct Vm {
    pub addr: u64,
    /// 1 for the first VM seen at this address, +1 for each reuse.
    pub generation: u32,
    pub creator: Option<Thread>,
    /// False when the VM was first seen mid-life (its creation not observed).
    pub creation_seen: bool,
    pub first_ns: u64,
    /// The count as last read from the kernel (or derived from that read).
    pub users: Option<i32>,
    pub fd_closed_ns: Option<u64>,
    pub destroyed_ns: Option<u64>,
    /// References by holder (vm fd, kvm-vfio fd, vfio device 0x...).
    pub holders: BTreeMap<String, i32>,
    pub timeline: Timeline,
    #[serde(skip)]
    zombie_reported: bool,
}

impl Vm {
    pub fn is_destroyed(&self) -> bool {
        self.destroyed_ns.is_some()
    }

    /// Holders still holding, and the part of the count no holder explains.
    pub fn holders_now(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .holders
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(h, n)| (h.clone(), *n))
            .collect();
        if let Some(u) = self.users {
            let named: i32 = v.iter().map(|(_, n)| n).sum();
            if u > named {
                v.push(("unattributed".into(), u - named));
            }
        }
        v
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Device {
    pub addr: u64,
    pub generation: u32,
    pub group: Option<u64>,
    pub open_count: Option<i32>,
    /// The VM this device's VFIO core holds a reference on (6.3+), if any.
    pub kvm_ref: Option<u64>,
    /// When open_count reached 0.
    pub closed_ns: Option<u64>,
    /// The kvm_ops patch: what the first open we saw did. None: no such open
    /// seen; Some(None): no get_kvm (the group had no KVM); Some(Some(kvm)):
    /// get_kvm(kvm), which the last close's put_kvm() gives back.
    pub kvm_ops_get: Option<Option<u64>>,
    pub timeline: Timeline,
    #[serde(skip)]
    leak_reported: bool,
}

/// Things in the input that were not as they should be, counted.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Anomalies {
    /// Timestamps going backwards (beyond per-CPU reordering).
    pub out_of_order: u64,
    /// Objects first seen mid-life (their creation not observed).
    pub unseen_creation: u64,
    /// Lock releases of locks the thread was not seen to take, though the
    /// lock had been seen before: a missed acquire. By lock class below.
    pub unmatched_release: u64,
    pub unmatched_release_by_class: BTreeMap<String, u64>,
    /// Not an anomaly: releases of a lock whose first event is that release.
    /// It was taken before kvscope watched it (the open path registers
    /// group_lock and dev_set->lock inside their critical section) or before
    /// the capture began. By lock class.
    pub taken_before_watched: BTreeMap<String, u64>,
}

pub struct Engine {
    pub cfg: Config,
    vms: HashMap<u64, Vm>,
    dead_vms: VecDeque<Vm>,
    devices: HashMap<u64, Device>,
    dead_devices: VecDeque<Device>,
    locks: LockState,
    findings: VecDeque<Finding>,
    /// Key -> sequence number of the finding (index = seq - dropped).
    by_key: HashMap<String, u64>,
    /// Findings dropped by `max_findings`, oldest first.
    pub findings_dropped: u64,
    /// The holder the next put of this thread on this VM gives back (set by the
    /// entry of the function that will make the put: vfio_device_put_kvm,
    /// kvm_vm_release, kvm_vfio_release).
    pending_put: HashMap<u32, (u64, String)>,
    /// The kvm_ops patch: a device open under way on this thread (from the
    /// open-attempt hook), and the successful gets the thread made since.
    pending_open: HashMap<u32, PendingOpen>,
    /// Last generation number used per VM / device address (not derived from
    /// the retained dead objects, which are evicted).
    vm_generations: HashMap<u64, u32>,
    dev_generations: HashMap<u64, u32>,
    pub anomalies: Anomalies,
    observations: Vec<Observation>,
    last_ts: u64,
    pub events: u64,
}

#[derive(Clone, Debug)]
struct PendingOpen {
    device: u64,
    open_before: Option<i32>,
    kvm_ops: bool,
    gets: u32,
    stack_id: Option<u32>,
}

/// Lock hooks taken at entry only: the call cannot fail (void), so no exit is
/// needed to know the lock is held (see `settle_implicit`).
const IMPLICIT_ACQUIRE: &[&str] = &["mutex_lock", "mutex_lock_nested"];

fn thread(e: &Event) -> Thread {
    Thread {
        pid: e.pid,
        tgid: e.tgid,
        comm: e.comm.clone(),
    }
}

fn dev_holder(dev: u64) -> String {
    format!("vfio device {dev:#x}")
}

/// The holder of a reference a driver took through the patch's get_kvm().
fn kvm_ops_holder(dev: u64) -> String {
    format!("vfio device {dev:#x} (kvm_ops)")
}

/// An open or release of a device whose driver set kvm_ops (the seed's patch).
fn kvm_ops_set(e: &Event) -> bool {
    e.kvm_ops.is_some_and(|o| o != 0)
}

/// The patch's first open: open_count became 1 and the open succeeded.
fn kvm_ops_first_open(e: &Event) -> bool {
    e.kind == Kind::DeviceOpened
        && kvm_ops_set(e)
        && e.open_count == Some(1)
        && e.ret.is_none_or(|r| r >= 0)
}

const VM_FD: &str = "vm fd";
const KVM_VFIO_FD: &str = "kvm-vfio fd";

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Engine {
            cfg,
            vms: HashMap::new(),
            dead_vms: VecDeque::new(),
            devices: HashMap::new(),
            dead_devices: VecDeque::new(),
            locks: LockState::default(),
            findings: VecDeque::new(),
            by_key: HashMap::new(),
            findings_dropped: 0,
            pending_put: HashMap::new(),
            pending_open: HashMap::new(),
            vm_generations: HashMap::new(),
            dev_generations: HashMap::new(),
            anomalies: Anomalies::default(),
            observations: Vec::new(),
            last_ts: 0,
            events: 0,
        }
    }

    /// Measurements since the last call (only with `Config::observe`).
    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    fn observe(&mut self, o: Observation) {
        if self.cfg.observe {
            self.observations.push(o);
        }
    }

    /// The findings kept, oldest first.
    /// The newest event timestamp ingested (0 before any).
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts
    }

    pub fn findings(&self) -> &[Finding] {
        // Contiguous after every `record` (see there).
        self.findings.as_slices().0
    }

    pub fn live_vms(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values()
    }

    pub fn dead_vms(&self) -> impl Iterator<Item = &Vm> {
        self.dead_vms.iter()
    }

    /// Every generation of the VM at `addr`, oldest first.
    pub fn vm_history(&self, addr: u64) -> Vec<&Vm> {
        let mut v: Vec<&Vm> = self.dead_vms.iter().filter(|x| x.addr == addr).collect();
        v.extend(self.vms.get(&addr));
        v
    }

    pub fn device_history(&self, addr: u64) -> Vec<&Device> {
        let mut v: Vec<&Device> = self
            .dead_devices
            .iter()
            .filter(|x| x.addr == addr)
            .collect();
        v.extend(self.devices.get(&addr));
        v
    }

    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// Retained closed generations, then the current ones.
    pub fn device_generations(&self) -> impl Iterator<Item = &Device> {
        self.dead_devices.iter().chain(self.devices.values())
    }

    pub fn open_devices(&self) -> usize {
        self.devices
            .values()
            .filter(|d| d.open_count.is_some_and(|c| c > 0))
            .count()
    }

    pub fn zombie_vms(&self) -> usize {
        self.vms.values().filter(|v| v.zombie_reported).count()
    }

    pub fn lock_graph(&self) -> &BTreeMap<(LockClass, LockClass), EdgeSeen> {
        &self.locks.graph
    }

    pub fn held_locks(&self, pid: u32) -> &[Held] {
        self.locks.held_by(pid)
    }

    /// Takes one event; returns the findings it raised for the first time.
    pub fn ingest(&mut self, e: &Event) -> Vec<Finding> {
        self.events += 1;
        // Ring-buffer order is reservation order; small per-CPU skew is normal.
        if e.ts_ns + 10 * MS < self.last_ts {
            self.anomalies.out_of_order += 1;
        }
        self.last_ts = self.last_ts.max(e.ts_ns);
        let mut raised: Vec<Finding> = Vec::new();
        self.dispatch(e, &mut raised);
        let mut new = Vec::new();
        for f in raised {
            if let Some(n) = self.record(f) {
                new.push(n);
            }
        }
        new
    }

    /// Time passes (live: the clock; replay: the last event's time). Checks the
    /// thresholds: zombie VMs, leaked device references.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Finding> {
        let mut raised = Vec::new();
        let zombie_after = self.cfg.zombie_after_ms * MS;
        for vm in self.vms.values_mut() {
            if let Some(closed) = vm.fd_closed_ns
                && !vm.is_destroyed()
                && !vm.zombie_reported
                && now_ns.saturating_sub(closed) >= zombie_after
            {
                vm.zombie_reported = true;
                let holders: Vec<String> = vm
                    .holders_now()
                    .iter()
                    .map(|(h, n)| format!("{h} ({n})"))
                    .collect();
                let mut detail = vec![format!(
                    "VM fd closed {:.1} s ago; users_count {}; still held by: {}",
                    (now_ns - closed) as f64 / 1e9,
                    vm.users.map(|u| u.to_string()).unwrap_or("unknown".into()),
                    if holders.is_empty() {
                        "nobody named".into()
                    } else {
                        holders.join(", ")
                    }
                )];
                detail.extend(excerpt(&vm.timeline, 8));
                raised.push(Finding {
                    kind: FindingKind::ZombieVm,
                    severity: FindingKind::ZombieVm.severity(),
                    summary: format!(
                        "VM {:#x} not destroyed {} s after its fd was closed",
                        vm.addr,
                        zombie_after / 1_000_000_000
                    ),
                    objects: vec![("kvm".into(), vm.addr)],
                    locks: vec![],
                    threads: vm.creator.iter().cloned().collect(),
                    detail,
                    stacks: vec![],
                    first_ns: now_ns,
                    last_ns: now_ns,
                    count: 1,
                    key: format!("zombie-vm/{:#x}/{}", vm.addr, vm.generation),
                });
            }
        }
        let grace = self.cfg.leak_grace_ms * MS;
        for d in self.devices.values_mut() {
            if let (Some(closed), Some(kvm)) = (d.closed_ns, d.kvm_ref)
                && !d.leak_reported
                && now_ns.saturating_sub(closed) >= grace
            {
                d.leak_reported = true;
                let mut detail = vec![format!(
                    "device {:#x} fully closed (open_count 0) but its reference on VM {kvm:#x} was never given back",
                    d.addr
                )];
                detail.extend(excerpt(&d.timeline, 8));
                raised.push(Finding {
                    kind: FindingKind::LeakedRef,
                    severity: FindingKind::LeakedRef.severity(),
                    summary: format!("device {:#x} released still holding VM {kvm:#x}", d.addr),
                    objects: vec![("device".into(), d.addr), ("kvm".into(), kvm)],
                    locks: vec![],
                    threads: vec![],
                    detail,
                    stacks: vec![],
                    first_ns: now_ns,
                    last_ns: now_ns,
                    count: 1,
                    key: format!("leaked-ref/{:#x}/{}", d.addr, d.generation),
                });
            }
        }
        raised.into_iter().filter_map(|f| self.record(f)).collect()
    }

    /// Adds a finding, or counts a repeat of one already raised. Returns it when new.
    fn record(&mut self, f: Finding) -> Option<Finding> {
        if let Some(&seq) = self.by_key.get(&f.key) {
            let old = &mut self.findings[(seq - self.findings_dropped) as usize];
            old.count += 1;
            old.last_ns = old.last_ns.max(f.last_ns);
            return None;
        }
        let seq = self.findings_dropped + self.findings.len() as u64;
        self.by_key.insert(f.key.clone(), seq);
        self.findings.push_back(f.clone());
        while self.findings.len() > self.cfg.max_findings.max(1) {
            if let Some(old) = self.findings.pop_front() {
                self.by_key.remove(&old.key);
                self.findings_dropped += 1;
            }
        }
        self.findings.make_contiguous();
        Some(f)
    }

    fn dispatch(&mut self, e: &Event, out: &mut Vec<Finding>) {
        self.settle_implicit(e, out);
        match e.kind {
            Kind::LockAttempt => self.lock_attempt(e, out),
            Kind::LockAcquired => self.lock_acquired(e, out),
            Kind::LockFailed => {
                self.locks.waiting.remove(&e.pid);
                self.locks.implicit.remove(&e.pid);
            }
            Kind::LockReleased => self.lock_released(e, out),
            Kind::ContentionBegin | Kind::ContentionEnd => self.contention(e, out),
            Kind::ProcessExit => {
                self.locks.held.retain(|pid, _| *pid != e.pid);
                self.pending_open.remove(&e.pid);
                self.locks.waiting.remove(&e.pid);
                self.locks.implicit.remove(&e.pid);
                // Its VMs' fds close without close(2): the moment they were closed.
                // Unhooked destroy (tier 3): the exit's implicit closes end them.
                let cap = self.cfg.timeline_cap;
                for vm in self.vms.values_mut() {
                    if vm.creator.as_ref().is_none_or(|c| c.tgid != e.tgid) {
                        continue;
                    }
                    vm.fd_closed_ns.get_or_insert(e.ts_ns);
                    if !self.cfg.destroy_observable && !vm.is_destroyed() {
                        vm.timeline.push(
                            cap,
                            Step {
                                ts_ns: e.ts_ns,
                                pid: e.pid,
                                comm: e.comm.clone(),
                                what: "inferred-destroy (process exit closed its fds)".into(),
                                hook: None,
                                delta: -vm.users.unwrap_or(0),
                                count_after: Some(0),
                                holder: None,
                                inferred: true,
                                stack_id: None,
                                at_return: false,
                                vm: None,
                            },
                        );
                        vm.users = Some(0);
                        vm.destroyed_ns = Some(e.ts_ns);
                    }
                }
            }
            Kind::DeviceOpenAttempt => {
                if let Some(dev) = e.device {
                    self.pending_open.insert(
                        e.pid,
                        PendingOpen {
                            device: dev,
                            open_before: e.open_count,
                            kvm_ops: kvm_ops_set(e),
                            gets: 0,
                            stack_id: e.stack_id,
                        },
                    );
                }
            }
            Kind::VmGet if e.ok != Some(false) => {
                if let Some(p) = self.pending_open.get_mut(&e.pid) {
                    p.gets += 1;
                }
            }
            Kind::DeviceOpened => {
                if let Some(p) = self.pending_open.remove(&e.pid) {
                    self.failed_kvm_ops_open(e, &p, out);
                }
            }
            _ => {}
        }
        if let Some(kvm) = e.kvm {
            self.vm_event(kvm, e, out);
        }
        if let Some(dev) = e.device {
            self.device_event(dev, e, out);
        }
    }

    /// The kvm_ops patch's open error path: once open_count was bumped, a
    /// failed open drops it back and calls put_kvm() at 0, whether get_kvm()
    /// succeeded, failed, or was never called.
    fn failed_kvm_ops_open(&mut self, e: &Event, p: &PendingOpen, out: &mut Vec<Finding>) {
        if e.ret.is_none_or(|r| r >= 0) || !p.kvm_ops || p.open_before != Some(0) || p.gets > 0 {
            return;
        }
        let dev = p.device;
        let generation = self.dev_generations.get(&dev).copied().unwrap_or(0);
        let why = if e.kvm.is_some() {
            "after get_kvm() failed"
        } else {
            "with no get_kvm() (its group had no KVM)"
        };
        let mut objects = vec![("vfio_device".to_owned(), dev)];
        objects.extend(e.group.map(|g| ("vfio_group".to_owned(), g)));
        objects.extend(e.kvm.map(|k| ("kvm".to_owned(), k)));
        out.push(Finding {
            kind: FindingKind::UnbalancedPut,
            severity: FindingKind::UnbalancedPut.severity(),
            summary: format!(
                "kvm_ops->put_kvm() on the open error path of vfio device {dev:#x}, {why} (kvm_ops path)"
            ),
            objects,
            locks: vec![],
            threads: vec![thread(e)],
            detail: vec![
                format!(
                    "VFIO_GROUP_GET_DEVICE_FD failed with {} on the device's first open, and this thread took no reference in between",
                    e.ret.unwrap_or(0)
                ),
                "the kvm_ops patch's err_undo_count path calls put_kvm() whenever open_count drops back to 0 and kvm_ops is set".to_owned(),
                "so the driver is asked to drop a reference it never got (unless the open failed before get_kvm(), at try_module_get)".to_owned(),
            ],
            stacks: p.stack_id.into_iter().chain(e.stack_id).collect(),
            first_ns: e.ts_ns,
            last_ns: e.ts_ns,
            count: 1,
            key: format!("unbalanced-put/kvm_ops-open-error/{dev:#x}/{generation}"),
        });
    }

    fn vm_mut(&mut self, addr: u64, e: &Event) -> &mut Vm {
        let new_vm = |generation: u32, seen: bool| Vm {
            addr,
            generation,
            creator: seen.then(|| thread(e)),
            creation_seen: seen,
            first_ns: e.ts_ns,
            users: None,
            fd_closed_ns: None,
            destroyed_ns: None,
            holders: BTreeMap::new(),
            timeline: Timeline::default(),
            zombie_reported: false,
        };
        let creating = e.kind == Kind::VmCreated;
        let live_reuse = match self.vms.get(&addr) {
            // A create at the address of a live VM: its destroy was missed.
            Some(v) => creating && !v.timeline.is_empty(),
            None => false,
        };
        if live_reuse {
            let old = self.vms.remove(&addr).expect("checked");
            self.retire_vm(old);
        }
        if !self.vms.contains_key(&addr) {
            if !creating {
                self.anomalies.unseen_creation += 1;
            }
            let g = self.vm_generations.entry(addr).or_default();
            *g += 1;
            let generation = *g;
            self.vms.insert(addr, new_vm(generation, creating));
        }
        self.vms.get_mut(&addr).expect("inserted")
    }

    fn retire_vm(&mut self, vm: Vm) {
        self.dead_vms.push_back(vm);
        while self.dead_vms.len() > self.cfg.retain_dead {
            self.dead_vms.pop_front();
        }
    }

    fn vm_event(&mut self, addr: u64, e: &Event, out: &mut Vec<Finding>) {
        let cap = self.cfg.timeline_cap;
        // Events on a destroyed VM: a new VM at a reused address when the count
        // read is that of a live VM, else something touching a dead VM.
        if let Some(vm) = self.vms.get(&addr)
            && vm.is_destroyed()
        {
            let live_read = match e.kind {
                Kind::VmGet => e.users.is_some_and(|u| u >= 2),
                Kind::VmPut | Kind::VmDestroyed => false,
                _ => e.users.is_some_and(|u| u >= 1),
            };
            if live_read || e.kind == Kind::VmCreated {
                let old = self.vms.remove(&addr).expect("checked");
                self.retire_vm(old);
            }
        }
        let held_vfio: Vec<Held> = self
            .locks
            .held_by(e.pid)
            .iter()
            .filter(|h| h.class.is_vfio())
            .cloned()
            .collect();
        let all_held: Vec<Held> = self.locks.held_by(e.pid).to_vec();
        let pending = match self.pending_put.get(&e.pid) {
            Some((k, h)) if *k == addr && e.kind == Kind::VmPut => {
                let h = h.clone();
                self.pending_put.remove(&e.pid);
                Some(h)
            }
            _ => None,
        };
        let destroy_observable = self.cfg.destroy_observable;
        let mut teardown_secs = None;
        let vm = self.vm_mut(addr, e);
        let step =
            |what: &str, delta: i32, after: Option<i32>, holder: Option<String>, inferred: bool| {
                Step {
                    ts_ns: e.ts_ns,
                    pid: e.pid,
                    comm: e.comm.clone(),
                    what: what.to_owned(),
                    hook: (!inferred).then(|| e.hook.clone()),
                    delta,
                    count_after: after,
                    holder,
                    inferred,
                    stack_id: if inferred { None } else { e.stack_id },
                    at_return: !inferred && e.at_return,
                    vm: None,
                }
            };
        // The count this event implies held just before it.
        let implied_before = match (e.kind, e.users) {
            (Kind::VmGet, Some(u)) if e.ok != Some(false) => Some(u - 1),
            (_, u) => u,
        };
        // Reconcile with what we knew: the difference is unobserved gets/puts.
        if let (Some(prev), Some(now)) = (vm.users, implied_before)
            && prev != now
            && !vm.is_destroyed()
        {
            let d = now - prev;
            let what = if d > 0 {
                "inferred-get"
            } else {
                "inferred-put"
            };
            // A drop right after an fd close we saw is that fd's reference.
            let holder = match vm.timeline.steps.back().map(|s| s.what.as_str()) {
                Some("kvm-vfio-fd-close") if d < 0 => Some(KVM_VFIO_FD.to_owned()),
                Some("vm-fd-close") if d < 0 => Some(VM_FD.to_owned()),
                _ => None,
            };
            if let Some(h) = &holder {
                let n = vm.holders.entry(h.clone()).or_default();
                *n = (*n + d).max(0);
            }
            vm.timeline
                .push(cap, step(what, d, Some(now), holder, true));
        }
        match e.kind {
            Kind::VmCreated => {
                let u = e.users.unwrap_or(1);
                *vm.holders.entry(VM_FD.into()).or_default() += 1;
                vm.timeline
                    .push(cap, step("created", 1, Some(u), Some(VM_FD.into()), false));
                vm.users = Some(u);
            }
            Kind::KvmVfioCreated => {
                // kvm_get_kvm in KVM_CREATE_DEVICE is inlined: the +1 was just
                // inferred above; name its holder.
                if let Some(last) = vm.timeline.last_mut()
                    && last.inferred
                    && last.delta == 1
                {
                    last.holder = Some(KVM_VFIO_FD.into());
                }
                *vm.holders.entry(KVM_VFIO_FD.into()).or_default() += 1;
                vm.timeline
                    .push(cap, step("kvm-vfio-created", 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
            }
            Kind::VmGet => {
                if e.ok == Some(false) {
                    vm.timeline
                        .push(cap, step("get-safe-failed", 0, e.users, None, false));
                    out.push(Finding {
                        kind: FindingKind::GetSafeFailed,
                        severity: FindingKind::GetSafeFailed.severity(),
                        summary: format!(
                            "kvm_get_kvm_safe failed on VM {addr:#x}: a reference was asked for while the VM was being torn down"
                        ),
                        objects: vec![("kvm".into(), addr)],
                        locks: vec![],
                        threads: vec![thread(e)],
                        detail: excerpt(&vm.timeline, 6),
                        stacks: e.stack_id.into_iter().collect(),
                        first_ns: e.ts_ns,
                        last_ns: e.ts_ns,
                        count: 1,
                        key: format!("get-safe-failed/{addr:#x}/{}", vm.generation),
                    });
                } else {
                    let dead = vm.is_destroyed();
                    let after = e.users.or(vm.users.map(|u| u + 1));
                    vm.timeline.push(cap, step("get", 1, after, None, false));
                    if dead || after.is_some_and(|u| u <= 1) {
                        out.push(Finding {
                            kind: FindingKind::GetAfterZero,
                            severity: FindingKind::GetAfterZero.severity(),
                            summary: format!(
                                "reference taken on VM {addr:#x} {}",
                                if dead {
                                    "after it was destroyed"
                                } else {
                                    "whose count was 0"
                                }
                            ),
                            objects: vec![("kvm".into(), addr)],
                            locks: vec![],
                            threads: vec![thread(e)],
                            detail: excerpt(&vm.timeline, 8),
                            stacks: e.stack_id.into_iter().collect(),
                            first_ns: e.ts_ns,
                            last_ns: e.ts_ns,
                            count: 1,
                            key: format!("get-after-zero/{addr:#x}/{}", vm.generation),
                        });
                    }
                    vm.users = after;
                }
            }
            Kind::VmPut => {
                let before = e.users.or(vm.users);
                let after = before.map(|u| u - 1);
                let mut holder = pending;
                let mut unbalanced_holder = None;
                if let Some(h) = &holder {
                    // References the count shows but no observed get named
                    // (inlined gets): a holder's put may be one of those.
                    let named: i32 = vm.holders.values().filter(|n| **n > 0).sum();
                    let unattributed = before.map_or(0, |b| b - named);
                    let n = vm.holders.entry(h.clone()).or_default();
                    *n -= 1;
                    if *n < 0 {
                        if unattributed <= 0 {
                            unbalanced_holder = Some(h.clone());
                        }
                        *n = 0;
                    }
                } else {
                    holder = None;
                }
                let dead = vm.is_destroyed();
                vm.timeline.push(cap, step("put", -1, after, holder, false));
                if dead || before.is_some_and(|u| u <= 0) || unbalanced_holder.is_some() {
                    let why = if dead {
                        "after the VM was destroyed".to_owned()
                    } else if before.is_some_and(|u| u <= 0) {
                        format!(
                            "with users_count {} (below zero after it)",
                            before.unwrap_or(0)
                        )
                    } else {
                        format!(
                            "by {} which holds no reference",
                            unbalanced_holder.clone().unwrap_or_default()
                        )
                    };
                    out.push(Finding {
                        kind: FindingKind::UnbalancedPut,
                        severity: FindingKind::UnbalancedPut.severity(),
                        summary: format!("put on VM {addr:#x} {why}"),
                        objects: vec![("kvm".into(), addr)],
                        locks: vec![],
                        threads: vec![thread(e)],
                        detail: excerpt(&vm.timeline, 8),
                        stacks: e.stack_id.into_iter().collect(),
                        first_ns: e.ts_ns,
                        last_ns: e.ts_ns,
                        count: 1,
                        key: format!("unbalanced-put/{addr:#x}/{}/{why}", vm.generation),
                    });
                }
                vm.users = after;
            }
            Kind::VmDestroyed => {
                teardown_secs = vm
                    .fd_closed_ns
                    .map(|c| e.ts_ns.saturating_sub(c) as f64 / 1e9);
                vm.timeline
                    .push(cap, step("destroyed", 0, Some(0), None, false));
                vm.users = Some(0);
                vm.destroyed_ns = Some(e.ts_ns);
                if !held_vfio.is_empty() {
                    let names: Vec<String> = held_vfio
                        .iter()
                        .map(|h| h.class.name().to_owned())
                        .collect();
                    let mut detail = vec![format!(
                        "{}/{} entered kvm_destroy_vm holding {}; the whole VM teardown (kvm_lock, arch destroy, srcu sync, mmu notifier) runs under them",
                        e.comm,
                        e.pid,
                        names.join(" and ")
                    )];
                    detail.push("held locks:".into());
                    for (i, h) in all_held.iter().enumerate() {
                        detail.push(format!(
                            "  #{i}: {} at {:#x} (owner {:#x})",
                            h.class.name(),
                            h.addr,
                            h.owner
                        ));
                    }
                    detail.extend(excerpt(&vm.timeline, 8));
                    out.push(Finding {
                        kind: FindingKind::DestroyUnderLock,
                        severity: FindingKind::DestroyUnderLock.severity(),
                        summary: format!(
                            "VM {addr:#x} destroyed under VFIO lock{} {}",
                            if names.len() > 1 { "s" } else { "" },
                            names.join(", ")
                        ),
                        objects: vec![("kvm".into(), addr)],
                        locks: names,
                        threads: vec![thread(e)],
                        detail,
                        stacks: e.stack_id.into_iter().collect(),
                        first_ns: e.ts_ns,
                        last_ns: e.ts_ns,
                        count: 1,
                        key: format!("destroy-under-lock/{addr:#x}/{}", vm.generation),
                    });
                }
            }
            Kind::VmFdRelease => {
                vm.timeline
                    .push(cap, step("vm-fd-release", 0, e.users, None, false));
                vm.fd_closed_ns.get_or_insert(e.ts_ns);
                vm.users = e.users.or(vm.users);
                self.pending_put.insert(e.pid, (addr, VM_FD.into()));
            }
            Kind::KvmVfioRelease => {
                vm.timeline
                    .push(cap, step("kvm-vfio-release", 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
                self.pending_put.insert(e.pid, (addr, KVM_VFIO_FD.into()));
            }
            Kind::FdClosed => {
                let what = match e.fd_kind {
                    Some(FdKind::Vm) => {
                        vm.fd_closed_ns.get_or_insert(e.ts_ns);
                        "vm-fd-close"
                    }
                    Some(FdKind::KvmVfioDevice) => "kvm-vfio-fd-close",
                    _ => "fd-close",
                };
                vm.timeline.push(cap, step(what, 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
                // Without put hooks (tier 3) the close is the put of that fd's
                // reference (read before it); at 1 it is the VM's end.
                let holder = match e.fd_kind {
                    Some(FdKind::Vm) => Some(VM_FD),
                    Some(FdKind::KvmVfioDevice) => Some(KVM_VFIO_FD),
                    _ => None,
                };
                if !destroy_observable && let (Some(h), Some(before)) = (holder, e.users) {
                    let n = vm.holders.entry(h.to_owned()).or_default();
                    *n = (*n - 1).max(0);
                    vm.timeline.push(
                        cap,
                        step(
                            "inferred-put",
                            -1,
                            Some(before - 1),
                            Some(h.to_owned()),
                            true,
                        ),
                    );
                    vm.users = Some(before - 1);
                    if before == 1 {
                        vm.timeline
                            .push(cap, step("inferred-destroy", 0, Some(0), None, true));
                        vm.destroyed_ns = Some(e.ts_ns);
                    }
                }
            }
            Kind::VfioKvmGet => {
                // The get itself was the kvm_get_kvm_safe just before, on this
                // thread: name its holder.
                let holder = e.device.map(dev_holder);
                if let Some(last) = vm.timeline.last_mut()
                    && last.pid == e.pid
                    && last.what == "get"
                    && last.holder.is_none()
                {
                    last.holder = holder.clone();
                }
                if let Some(h) = holder {
                    *vm.holders.entry(h).or_default() += 1;
                }
                vm.users = e.users.or(vm.users);
            }
            Kind::VfioKvmPut => {
                vm.timeline
                    .push(cap, step("vfio-put-kvm", 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
                if let Some(d) = e.device {
                    self.pending_put.insert(e.pid, (addr, dev_holder(d)));
                }
            }
            Kind::DeviceOpened if kvm_ops_first_open(e) => {
                // The patch called get_kvm(group->kvm) inside this open: the
                // driver's get (kvm_get_kvm_safe from its get_kvm) is this
                // thread's last unnamed get on the VM.
                // Named once, however many hooks report the open.
                if let Some(h) = e.device.map(kvm_ops_holder)
                    && let Some(last) = vm
                        .timeline
                        .steps
                        .iter_mut()
                        .rev()
                        .find(|s| s.pid == e.pid && s.what == "get")
                    && last.holder.is_none()
                {
                    last.holder = Some(h.clone());
                    *vm.holders.entry(h).or_default() += 1;
                }
                vm.timeline
                    .push(cap, step("device-open", 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
            }
            Kind::FileLink
            | Kind::FileUnlink
            | Kind::DeviceOpened
            | Kind::DeviceRelease
            | Kind::DeviceClose => {
                let what = match e.kind {
                    Kind::FileLink => "file-link",
                    Kind::FileUnlink => "file-unlink",
                    Kind::DeviceOpened => "device-open",
                    Kind::DeviceRelease => "device-release",
                    _ => "device-close",
                };
                vm.timeline.push(cap, step(what, 0, e.users, None, false));
                vm.users = e.users.or(vm.users);
            }
            _ => {
                vm.users = e.users.or(vm.users);
            }
        }
        if let Some(secs) = teardown_secs {
            self.observe(Observation::Teardown { secs });
        }
    }

    fn device_event(&mut self, addr: u64, e: &Event, out: &mut Vec<Finding>) {
        let cap = self.cfg.timeline_cap;
        let reopen = self
            .devices
            .get(&addr)
            .is_some_and(|d| d.closed_ns.is_some() && e.kind == Kind::DeviceOpened);
        if reopen {
            let old = self.devices.remove(&addr).expect("checked");
            self.dead_devices.push_back(old);
            while self.dead_devices.len() > self.cfg.retain_dead {
                self.dead_devices.pop_front();
            }
        }
        if !self.devices.contains_key(&addr) {
            *self.dev_generations.entry(addr).or_default() += 1;
        }
        let generation = self.dev_generations[&addr];
        let d = self.devices.entry(addr).or_insert_with(|| Device {
            addr,
            generation,
            group: None,
            open_count: None,
            kvm_ref: None,
            closed_ns: None,
            timeline: Timeline::default(),
            kvm_ops_get: None,
            leak_reported: false,
        });
        d.group = e.group.or(d.group);
        let what = match e.kind {
            Kind::DeviceOpened => "open",
            Kind::DeviceRelease => "release",
            Kind::DeviceClose => "close",
            Kind::VfioKvmGet => {
                d.kvm_ref = e.kvm;
                "vfio-get-kvm"
            }
            Kind::VfioKvmPut => {
                d.kvm_ref = None;
                "vfio-put-kvm"
            }
            Kind::FdClosed => "fd-close",
            _ => return,
        };
        // open_count is read at open exit (after) and at release/close entry (before).
        let release_closes = self.cfg.release_closes;
        // An open can be seen twice (the open function and the ioctl's exit
        // tracepoint): the count read from the kernel says whether it rose.
        let prev_open = if d.closed_ns.is_some() {
            Some(0)
        } else {
            d.open_count
        };
        let (delta, after) = match (e.kind, e.open_count) {
            (Kind::DeviceOpened, Some(c)) if e.ret.is_none_or(|r| r >= 0) => {
                (prev_open.map_or(1, |p| c - p), Some(c))
            }
            (Kind::DeviceClose, Some(c)) => (-1, Some(c - 1)),
            (Kind::DeviceRelease, Some(c)) if release_closes => (-1, Some(c - 1)),
            (_, c) => (0, c),
        };
        let mut kvm_ops_put = None;
        // Only the report of the open that raised the count knows group->kvm
        // at the patch's get_kvm (the ioctl's exit tracepoint does not read it).
        if kvm_ops_first_open(e) && delta > 0 {
            d.kvm_ops_get = Some(e.kvm.filter(|k| *k != 0));
        } else if e.kind == Kind::DeviceRelease && kvm_ops_set(e) && e.open_count == Some(1) {
            // The patch calls put_kvm() whenever open_count drops to 0 and
            // kvm_ops is set, whether or not get_kvm() was called.
            kvm_ops_put = d.kvm_ops_get.take();
        }
        let closing = matches!(e.kind, Kind::DeviceClose)
            || (e.kind == Kind::DeviceRelease && release_closes);
        if closing && after == Some(0) {
            d.closed_ns = Some(e.ts_ns);
        }
        if e.kind == Kind::DeviceOpened && after.is_some_and(|c| c > 0) {
            d.closed_ns = None;
        }
        d.open_count = after.or(d.open_count);
        d.timeline.push(
            cap,
            Step {
                ts_ns: e.ts_ns,
                pid: e.pid,
                comm: e.comm.clone(),
                what: what.into(),
                hook: Some(e.hook.clone()),
                delta,
                count_after: after,
                holder: None,
                inferred: false,
                stack_id: e.stack_id,
                at_return: e.at_return,
                vm: e.kvm,
            },
        );
        match kvm_ops_put {
            Some(Some(kvm)) => {
                self.pending_put.insert(e.pid, (kvm, kvm_ops_holder(addr)));
            }
            Some(None) => {
                let (generation, group, detail) = (d.generation, d.group, excerpt(&d.timeline, 6));
                let mut objects = vec![("vfio_device".to_owned(), addr)];
                objects.extend(group.map(|g| ("vfio_group".to_owned(), g)));
                let mut lines = vec![
                    "the device's first open found no KVM on its group, so VFIO never called kvm_ops->get_kvm()".to_owned(),
                    "its last close calls kvm_ops->put_kvm() anyway: the kvm_ops patch puts whenever open_count drops to 0 and kvm_ops is set".to_owned(),
                    "put_kvm(void) names no VM: a driver that does not guard its own state drops a reference it never took".to_owned(),
                ];
                lines.extend(detail);
                out.push(Finding {
                    kind: FindingKind::UnbalancedPut,
                    severity: FindingKind::UnbalancedPut.severity(),
                    summary: format!(
                        "kvm_ops->put_kvm() with no get_kvm() on vfio device {addr:#x} (kvm_ops path)"
                    ),
                    objects,
                    locks: vec![],
                    threads: vec![thread(e)],
                    detail: lines,
                    stacks: e.stack_id.into_iter().collect(),
                    first_ns: e.ts_ns,
                    last_ns: e.ts_ns,
                    count: 1,
                    key: format!("unbalanced-put/kvm_ops/{addr:#x}/{generation}"),
                });
            }
            None => {}
        }
    }

    fn lock_attempt(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        let class = l.class.0;
        if let Some(h) = self.locks.holds(e.pid, l.addr) {
            let since = h.since_ns;
            let mut detail = vec![
                "WARNING: possible recursive locking detected (self-deadlock)".to_owned(),
                format!("{}/{} is trying to acquire lock:", e.comm, e.pid),
                format!(
                    "  ({}) at {:#x}, owner {:#x}",
                    class.name(),
                    l.addr,
                    l.owner
                ),
                "but task is already holding lock:".into(),
                format!(
                    "  ({}) at {:#x}, taken {:.3} ms earlier",
                    class.name(),
                    l.addr,
                    (e.ts_ns.saturating_sub(since)) as f64 / 1e6
                ),
                "a mutex is not recursive: this thread will wait forever (hung task in 120 s)."
                    .into(),
            ];
            detail.extend(held_list(self.locks.held_by(e.pid)));
            out.push(Finding {
                kind: FindingKind::SelfDeadlock,
                severity: FindingKind::SelfDeadlock.severity(),
                summary: format!(
                    "{}/{} acquiring {} it already holds: self-deadlock",
                    e.comm,
                    e.pid,
                    class.name()
                ),
                objects: vec![("lock".into(), l.addr), ("owner".into(), l.owner)],
                locks: vec![class.name().into()],
                threads: vec![thread(e)],
                detail,
                stacks: e.stack_id.into_iter().collect(),
                first_ns: e.ts_ns,
                last_ns: e.ts_ns,
                count: 1,
                key: format!("self-deadlock/{:#x}/{}", l.addr, e.pid),
            });
        } else {
            let held: Vec<Held> = self.locks.held_by(e.pid).to_vec();
            let held_classes: Vec<LockClass> = held.iter().map(|h| h.class).collect();
            for h in &held {
                if h.class == class || self.locks.graph.contains_key(&(h.class, class)) {
                    continue;
                }
                // New edge h -> class. A path class ->* h closes a cycle.
                if let Some(path) = self.locks.path(class, h.class) {
                    out.push(self.inversion(e, h, class, l.addr, &path));
                }
                self.locks.graph.insert(
                    (h.class, class),
                    EdgeSeen {
                        ts_ns: e.ts_ns,
                        pid: e.pid,
                        comm: e.comm.clone(),
                        stack_id: e.stack_id,
                        held: held_classes.clone(),
                    },
                );
            }
        }
        self.locks.waiting.insert(
            e.pid,
            Held {
                addr: l.addr,
                class,
                owner: l.owner,
                since_ns: e.ts_ns,
                stack_id: e.stack_id,
            },
        );
        if IMPLICIT_ACQUIRE.contains(&e.hook.as_str()) {
            self.locks.implicit.insert(e.pid, false);
        } else {
            self.locks.implicit.remove(&e.pid);
        }
    }

    /// A thread waiting in a mutex_lock (entry-hooked only) holds the lock by
    /// the time it does anything else: at the attempt if it never contended,
    /// at the end of its contention if it did.
    fn settle_implicit(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(&contended) = self.locks.implicit.get(&e.pid) else {
            return;
        };
        let Some(w) = self.locks.waiting.get(&e.pid).cloned() else {
            self.locks.implicit.remove(&e.pid);
            return;
        };
        let same = e.lock.as_ref().is_some_and(|l| l.addr == w.addr);
        let at = match e.kind {
            // An exit was reported after all (a recording with fexit events).
            Kind::LockAcquired | Kind::LockFailed if same => {
                self.locks.implicit.remove(&e.pid);
                return;
            }
            Kind::ContentionBegin if same => {
                self.locks.implicit.insert(e.pid, true);
                return;
            }
            Kind::ContentionEnd if same => e.ts_ns,
            _ if contended => e.ts_ns,
            _ => w.since_ns,
        };
        self.locks.waiting.remove(&e.pid);
        self.locks.implicit.remove(&e.pid);
        // Measured to `e` only when the wait lasted until it.
        let check = at > w.since_ns;
        self.hold_after_wait(e, w, at, check, out);
    }

    /// The lock `w` waited for is held from `at` (`e`'s time, or the attempt's
    /// when it never contended): the wait is observed and, with `check`,
    /// compared with the threshold (measured to `e`).
    fn hold_after_wait(
        &mut self,
        e: &Event,
        w: Held,
        at: u64,
        check: bool,
        out: &mut Vec<Finding>,
    ) {
        if check {
            self.check_long(FindingKind::LongWait, e, &w, out);
        }
        self.observe(Observation::LockWait {
            class: w.class,
            secs: at.saturating_sub(w.since_ns) as f64 / 1e9,
        });
        self.locks.push_held(e.pid, Held { since_ns: at, ..w });
    }

    fn inversion(
        &self,
        e: &Event,
        held: &Held,
        want: LockClass,
        want_addr: u64,
        path: &[LockClass],
    ) -> Finding {
        let a = held.class.name();
        let b = want.name();
        let mut detail = vec![
            "WARNING: possible circular locking dependency detected".to_owned(),
            format!("{}/{} is trying to acquire lock:", e.comm, e.pid),
            format!("  ({b}) at {want_addr:#x}"),
            "but task is already holding lock:".into(),
            format!("  ({a}) at {:#x}", held.addr),
            "which lock already depends on the new lock.".into(),
            "the existing dependency chain (in reverse order) is:".into(),
        ];
        let mut stacks: Vec<u32> = e.stack_id.into_iter().collect();
        for (i, w) in path.windows(2).enumerate().rev() {
            if let Some(seen) = self.locks.graph.get(&(w[0], w[1])) {
                detail.push(format!(
                    "-> #{} ({} -> {}): first seen at {} by {}/{}{}",
                    i + 1,
                    w[0].name(),
                    w[1].name(),
                    crate::render::ts(seen.ts_ns),
                    seen.comm,
                    seen.pid,
                    seen.stack_id
                        .map(|s| format!(" stack #{s}"))
                        .unwrap_or_default()
                ));
                stacks.extend(seen.stack_id);
            }
        }
        detail.push(format!(
            "-> #0 ({a} -> {b}): now, by {}/{}{}",
            e.comm,
            e.pid,
            e.stack_id
                .map(|s| format!(" stack #{s}"))
                .unwrap_or_default()
        ));
        detail.extend([
            "other info that might help us debug this:".into(),
            " Possible unsafe locking scenario:".into(),
            "       CPU0                    CPU1".into(),
            "       ----                    ----".into(),
            format!("  lock({a});"),
            format!("                               lock({b});"),
            format!("                               lock({a});"),
            format!("  lock({b});"),
            "  *** DEADLOCK ***".into(),
        ]);
        detail.extend(held_list(self.locks.held_by(e.pid)));
        let mut classes = [a.to_owned(), b.to_owned()];
        classes.sort();
        Finding {
            kind: FindingKind::LockOrderInversion,
            severity: FindingKind::LockOrderInversion.severity(),
            summary: format!("lock order inversion between {a} and {b}"),
            objects: vec![("lock".into(), want_addr), ("lock".into(), held.addr)],
            locks: vec![a.into(), b.into()],
            threads: vec![thread(e)],
            detail,
            stacks,
            first_ns: e.ts_ns,
            last_ns: e.ts_ns,
            count: 1,
            key: format!("lock-order-inversion/{}/{}", classes[0], classes[1]),
        }
    }

    fn lock_acquired(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        let waited = self.locks.waiting.remove(&e.pid);
        let held = Held {
            addr: l.addr,
            class: l.class.0,
            owner: l.owner,
            since_ns: e.ts_ns,
            stack_id: waited.as_ref().and_then(|w| w.stack_id),
        };
        match waited {
            Some(w) if w.addr == l.addr => {
                let since = w.since_ns;
                self.hold_after_wait(
                    e,
                    Held {
                        since_ns: since,
                        ..held
                    },
                    e.ts_ns,
                    true,
                    out,
                )
            }
            _ => self.locks.push_held(e.pid, held),
        }
    }

    fn lock_released(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        let first = self.locks.first_sighting(l.addr);
        match self.locks.release(e.pid, l.addr) {
            Some(h) => {
                self.check_long(FindingKind::LongHold, e, &h, out);
                self.observe(Observation::LockHold {
                    class: h.class,
                    secs: e.ts_ns.saturating_sub(h.since_ns) as f64 / 1e9,
                });
            }
            None => {
                let class = l.class.0.name().to_owned();
                if first {
                    *self
                        .anomalies
                        .taken_before_watched
                        .entry(class)
                        .or_default() += 1;
                } else {
                    self.anomalies.unmatched_release += 1;
                    *self
                        .anomalies
                        .unmatched_release_by_class
                        .entry(class)
                        .or_default() += 1;
                }
            }
        }
    }

    fn contention(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Some(l) = e.lock else { return };
        self.locks.first_sighting(l.addr);
        if e.kind == Kind::ContentionBegin {
            self.locks.waiting.entry(e.pid).or_insert(Held {
                addr: l.addr,
                class: l.class.0,
                owner: l.owner,
                since_ns: e.ts_ns,
                stack_id: None,
            });
        } else if let Some(w) = self.locks.waiting.get(&e.pid).cloned()
            && w.addr == l.addr
        {
            self.check_long(FindingKind::LongWait, e, &w, out);
            // The attempt path (if hooked) will see the acquire; keep the wait
            // only for it.
        }
    }

    fn check_long(&self, kind: FindingKind, e: &Event, h: &Held, out: &mut Vec<Finding>) {
        let limit = match kind {
            FindingKind::LongWait => self.cfg.long_wait_ms,
            _ => self.cfg.long_hold_ms,
        } * MS;
        let took = e.ts_ns.saturating_sub(h.since_ns);
        if took < limit {
            return;
        }
        let verb = if kind == FindingKind::LongWait {
            "waited"
        } else {
            "held"
        };
        out.push(Finding {
            kind,
            severity: kind.severity(),
            summary: format!(
                "{}/{} {verb} {} for {:.1} ms",
                e.comm,
                e.pid,
                h.class.name(),
                took as f64 / 1e6
            ),
            objects: vec![("lock".into(), h.addr), ("owner".into(), h.owner)],
            locks: vec![h.class.name().into()],
            threads: vec![thread(e)],
            detail: vec![format!(
                "threshold {} ms; since {}",
                limit / MS,
                crate::render::ts(h.since_ns)
            )],
            stacks: h.stack_id.into_iter().collect(),
            first_ns: e.ts_ns,
            last_ns: e.ts_ns,
            count: 1,
            key: format!("{}/{}", kind.id(), h.class.name()),
        });
    }
}

fn held_list(held: &[Held]) -> Vec<String> {
    let mut v = vec![format!("{} lock(s) held:", held.len())];
    for (i, h) in held.iter().enumerate() {
        v.push(format!(
            "  #{i}: ({}) at {:#x}, owner {:#x}",
            h.class.name(),
            h.addr,
            h.owner
        ));
    }
    v
}

/// The last `n` steps of a timeline, one line each.
pub fn excerpt(t: &Timeline, n: usize) -> Vec<String> {
    let skip = t.steps.len().saturating_sub(n);
    t.counted()
        .skip(skip)
        .map(|(s, count)| step_line(s, count))
        .collect()
}

/// One step as a line: time, thread, `~` for an inferred step, what, the
/// count change, `count` (the count standing after it, `Timeline::counted`),
/// the holder, the VM a device step concerns, and the hook that saw it
/// (several hooks can see one operation: each is a line).
pub fn step_line(s: &Step, count: Option<i32>) -> String {
    let mut line = format!(
        "  {} {}[{}] {}{}",
        crate::render::ts(s.ts_ns),
        s.comm,
        s.pid,
        if s.inferred { "~" } else { "" },
        s.what
    );
    if s.delta != 0 {
        line += &format!(" {:+}", s.delta);
    }
    // Never a silent gap: a count not read yet is said to be unknown.
    match count {
        Some(c) => line += &format!(" -> {c}"),
        None => line += " -> ?",
    }
    if let Some(h) = &s.holder {
        line += &format!(" ({h})");
    }
    if let Some(v) = s.vm {
        line += &format!(" VM {v:#x}");
    }
    if let Some(h) = &s.hook {
        line += &format!("  [{h}]");
    }
    line
}
