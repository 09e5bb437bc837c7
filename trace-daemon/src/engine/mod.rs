//! The analysis engine. No I/O and no text: typed events in (`ingest`), time
//! passing in (`tick`, for thresholds), typed state and findings out. The
//! same code runs live, in replay and in the scenario tests; the outputs
//! (`crate::output`) render what it returns.
//!
//! Counts are the kernel's: every event that carries a VM carries the
//! `users_count` read at that moment, and the timeline is built from those reads.
//! A change that no observed event explains (on real kernels `kvm_get_kvm` is
//! partly inlined into `kvm_vm_ioctl`) becomes an *inferred* step, never hidden.
//!
//! By concern: `vm` (VM lifetimes and references), `device` (VFIO opens and
//! closes), `kvm_ops` (the seed patch's get/put pairing), `locks` (held
//! locks, waits, the lock-order graph), `finding`/`evidence` (what is
//! concluded), `timeline`/`holder` (the typed history).
mod anomalies;
mod blind;
mod config;
mod device;
pub mod evidence;
mod fast_hash;
pub mod finding;
pub mod holder;
mod identify;
mod kept;
mod kvm_ops;
pub mod locks;
mod notifier;
pub mod timeline;
mod vm;

use std::collections::{BTreeMap, VecDeque};

use trace_common::LockClass;

pub use self::{
    anomalies::Anomalies,
    config::{Config, Observation},
    device::Device,
    finding::{Finding, FindingKind, ObjectRole, Severity, Thread},
    holder::Holder,
    vm::Vm,
};
use self::{
    fast_hash::FastMap,
    kept::KeptFindings,
    kvm_ops::PendingOpen,
    locks::{EdgeSeen, Held, LockState},
};
use crate::event::{Event, Kind};

const MS: u64 = 1_000_000;

pub struct Engine {
    pub cfg: Config,
    vms: FastMap<u64, Vm>,
    dead_vms: VecDeque<Vm>,
    devices: FastMap<u64, Device>,
    dead_devices: VecDeque<Device>,
    locks: LockState,
    findings: KeptFindings,
    /// The holder the next put of this thread on this VM gives back (set by the
    /// entry of the function that will make the put: vfio_device_put_kvm,
    /// kvm_vm_release, kvm_vfio_release, the kvm_ops patch's last close).
    pending_put: FastMap<u32, (u64, Holder)>,
    /// The kvm_ops patch: a device open under way on this thread.
    pending_open: FastMap<u32, PendingOpen>,
    /// 5.10-5.18: the thread is inside vfio_group_set_kvm (kvm, group).
    in_notifier: FastMap<u32, (u64, u64)>,
    /// ... inside a driver's vfio_register_notifier (the VM a get there took).
    in_registration: FastMap<u32, Option<u64>>,
    /// ... a get made in a registration, named at the thread's open's exit.
    registered_get: FastMap<u32, u64>,
    /// Last generation number used per VM / device address (not derived from
    /// the retained dead objects, which are evicted).
    vm_generations: FastMap<u64, u32>,
    dev_generations: FastMap<u64, u32>,
    pub anomalies: Anomalies,
    observations: Vec<Observation>,
    last_ts: u64,
    pub events: u64,
}

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Engine {
            cfg,
            vms: FastMap::default(),
            dead_vms: VecDeque::new(),
            devices: FastMap::default(),
            dead_devices: VecDeque::new(),
            locks: LockState::default(),
            findings: KeptFindings::default(),
            pending_put: FastMap::default(),
            pending_open: FastMap::default(),
            in_notifier: FastMap::default(),
            in_registration: FastMap::default(),
            registered_get: FastMap::default(),
            vm_generations: FastMap::default(),
            dev_generations: FastMap::default(),
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

    /// The newest event timestamp ingested (0 before any).
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts
    }

    /// The findings kept, oldest first.
    pub fn findings(&self) -> &[Finding] {
        self.findings.as_slice()
    }

    /// Findings dropped by `max_findings`, oldest first.
    pub fn findings_dropped(&self) -> u64 {
        self.findings.dropped
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
        self.vms.values().filter(|v| v.is_zombie()).count()
    }

    pub fn lock_graph(&self) -> &BTreeMap<(LockClass, LockClass), EdgeSeen> {
        self.locks.graph().edges()
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
        raised.into_iter().filter_map(|f| self.record(f)).collect()
    }

    /// Lock watching switched while running: lean orders locks by the table
    /// and sees no acquire or release, so what deep saw held is forgotten.
    pub fn set_lock_watch(&mut self, lean: bool) {
        self.cfg.table_edges = lean;
        if lean {
            self.locks.forget_acquires();
        }
    }

    /// Time passes (live: the clock; replay: the last event's time). Checks the
    /// thresholds: zombie VMs, leaked device references.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Finding> {
        let mut raised = Vec::new();
        self.tick_zombies(now_ns, &mut raised);
        self.tick_leaks(now_ns, &mut raised);
        raised.into_iter().filter_map(|f| self.record(f)).collect()
    }

    /// Adds a finding, or counts a repeat of one already raised. Returns it when new.
    fn record(&mut self, mut f: Finding) -> Option<Finding> {
        f.vm_name = f.object(ObjectRole::Kvm).and_then(|a| self.vm_label_now(a));
        self.findings.record(f, self.cfg.max_findings)
    }

    /// Each event goes to every concern it touches: locks (every event may
    /// settle an inferred acquire), the thread's lifetime, open pairing,
    /// then the VM and the device it names.
    fn dispatch(&mut self, e: &Event, out: &mut Vec<Finding>) {
        self.lock_event(e, out);
        if e.kind == Kind::ProcessExit {
            self.locks.forget_thread(e.pid);
            self.pending_open.remove(&e.pid);
            self.in_notifier.remove(&e.pid);
            self.in_registration.remove(&e.pid);
            self.registered_get.remove(&e.pid);
            self.vms_at_exit(e);
        }
        if e.kind == Kind::ProcessExec {
            self.vms_at_exec(e);
        }
        if e.kind == Kind::ProcessFork {
            self.vms_at_fork(e);
        }
        self.open_event(e, out);
        self.notifier_event(e);
        if let Some(kvm) = e.kvm {
            self.vm_event(kvm, e, out);
        }
        if let Some(dev) = e.device {
            self.device_event(dev, e, out);
        }
        if e.kind != Kind::LockHeld {
            self.locks.end_momentary(e.pid);
        }
    }
}
