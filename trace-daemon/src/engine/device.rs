//! VFIO devices: open_count as read from the kernel at each open and close,
//! the VM reference the VFIO core holds (6.3+), and the kvm_ops patch's
//! put_kvm() at the last close.
use super::{
    Engine, MS,
    finding::{Finding, ObjRef, PutFault},
    holder::Holder,
    kvm_ops,
    timeline::{Step, StepKind, Timeline},
    vm::seen,
};
use crate::event::{Event, Kind};

#[derive(Clone, Debug)]
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
    leak_reported: bool,
    /// The start of a blind gap the device lived through: its VM reference
    /// may have been given back unseen, so no leak is raised.
    pub blind_from_ns: Option<u64>,
}

impl Device {
    /// The VM it served last: the last VM its steps name.
    pub fn last_vm(&self) -> Option<u64> {
        self.timeline.steps.iter().rev().find_map(|s| s.vm)
    }

    fn new(addr: u64, generation: u32) -> Device {
        Device {
            addr,
            generation,
            group: None,
            open_count: None,
            kvm_ref: None,
            closed_ns: None,
            kvm_ops_get: None,
            timeline: Timeline::default(),
            leak_reported: false,
            blind_from_ns: None,
        }
    }

    fn obj(&self) -> ObjRef {
        ObjRef {
            addr: self.addr,
            generation: self.generation,
        }
    }

    /// The change of open_count `e` stands for, and the count after it.
    /// open_count is read at open exit (after) and at release/close entry
    /// (before). An open can be seen twice (the open function and the ioctl's
    /// exit tracepoint): the count read says whether it rose.
    fn open_change(&self, e: &Event, release_closes: bool) -> (i32, Option<i32>) {
        let prev_open = if self.closed_ns.is_some() {
            Some(0)
        } else {
            self.open_count
        };
        match (e.kind, e.open_count) {
            (Kind::DeviceOpened, Some(c)) if e.ret.is_none_or(|r| r >= 0) => {
                (prev_open.map_or(1, |p| c - p), Some(c))
            }
            (Kind::DeviceClose, Some(c)) => (-1, Some(c - 1)),
            (Kind::DeviceRelease, Some(c)) if release_closes => (-1, Some(c - 1)),
            (_, c) => (0, c),
        }
    }

    /// The kvm_ops patch at this event: records the first open's get_kvm();
    /// at the release that drops open_count to 0, returns what put_kvm()
    /// gives back (Some(None): nothing was got).
    fn kvm_ops_put(&mut self, e: &Event, delta: i32) -> Option<Option<u64>> {
        // Only the report of the open that raised the count knows group->kvm
        // at the patch's get_kvm (the ioctl's exit tracepoint does not read it).
        if kvm_ops::first_open(e) && delta > 0 {
            self.kvm_ops_get = Some(e.kvm.filter(|k| *k != 0));
            None
        } else if e.kind == Kind::DeviceRelease && kvm_ops::ops_set(e) && e.open_count == Some(1) {
            self.kvm_ops_get.take()
        } else {
            None
        }
    }
}

impl Engine {
    /// The device at `addr`; a reopen after a full close is a new generation.
    /// A reopen starts with its open or, on 6.6+, with VFIO's kvm get that
    /// comes before it (else a tick between the two reads the new get as the
    /// closed generation's leak).
    fn device_mut(&mut self, addr: u64, e: &Event) -> &mut Device {
        let starts_use = matches!(e.kind, Kind::DeviceOpened | Kind::VfioKvmGet);
        let reopen = self
            .devices
            .get(&addr)
            .is_some_and(|d| d.closed_ns.is_some() && starts_use);
        if reopen && let Some(old) = self.devices.remove(&addr) {
            self.dead_devices.push_back(old);
            while self.dead_devices.len() > self.cfg.retain_dead {
                self.dead_devices.pop_front();
            }
        }
        if !self.devices.contains_key(&addr) {
            *self.dev_generations.entry(addr).or_default() += 1;
        }
        let generation = self.dev_generations[&addr];
        self.devices
            .entry(addr)
            .or_insert_with(|| Device::new(addr, generation))
    }

    pub(super) fn device_event(&mut self, addr: u64, e: &Event, out: &mut Vec<Finding>) {
        let (cap, release_closes) = (self.cfg.timeline_cap, self.cfg.release_closes);
        // Any event naming the device makes it known (an open attempt that
        // then fails leaves a device whose count never rose).
        let d = self.device_mut(addr, e);
        d.group = e.group.or(d.group);
        let kind = match e.kind {
            Kind::DeviceOpened => StepKind::Open,
            Kind::DeviceRelease => StepKind::Release,
            Kind::DeviceClose => StepKind::Close,
            Kind::VfioKvmGet => StepKind::VfioGetKvm,
            Kind::VfioKvmPut => StepKind::VfioPutKvm,
            Kind::FdClosed => StepKind::FdClose,
            _ => return,
        };
        match e.kind {
            Kind::VfioKvmGet => d.kvm_ref = e.kvm,
            Kind::VfioKvmPut => d.kvm_ref = None,
            _ => {}
        }
        let (delta, after) = d.open_change(e, release_closes);
        let kvm_ops_put = d.kvm_ops_put(e, delta);
        let closing =
            e.kind == Kind::DeviceClose || (e.kind == Kind::DeviceRelease && release_closes);
        if closing && after == Some(0) {
            d.closed_ns = Some(e.ts_ns);
        }
        if e.kind == Kind::DeviceOpened && after.is_some_and(|c| c > 0) {
            d.closed_ns = None;
        }
        d.open_count = after.or(d.open_count);
        let step = Step {
            vm: e.kvm,
            ..seen(e, kind, delta, after)
        };
        d.timeline.push(cap, step);
        match kvm_ops_put {
            Some(Some(kvm)) => {
                self.pending_put.insert(e.pid, (kvm, Holder::KvmOps(addr)));
            }
            Some(None) => {
                let fault = PutFault::KvmOpsNoGet {
                    device: d.obj(),
                    group: d.group,
                    recent: d.timeline.recent(6),
                };
                out.push(Finding::unbalanced_put(e, fault, None));
            }
            None => {}
        }
    }

    /// Devices fully closed still holding their VM past the grace time.
    pub(super) fn tick_leaks(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        let grace = self.cfg.leak_grace_ms * MS;
        for d in self.devices.values_mut() {
            if let (Some(closed), Some(kvm)) = (d.closed_ns, d.kvm_ref)
                && !d.leak_reported
                && d.blind_from_ns.is_none()
                && now_ns.saturating_sub(closed) >= grace
            {
                d.leak_reported = true;
                out.push(Finding::leaked_ref(
                    now_ns,
                    d.obj(),
                    kvm,
                    d.timeline.recent(8),
                ));
            }
        }
    }
}
