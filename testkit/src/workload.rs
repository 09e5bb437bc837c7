//! A synthetic but kernel-shaped event stream for the benchmark: VM lifecycles on
//! the 6.6+ group path (create, kvm-vfio device, open under group_lock ->
//! dev_set->lock with VFIO's kvm get, vCPU-style kvm.lock traffic, release, both
//! close orders), many VMs alive at once, lock events dominating. Produced as
//! ABI records, one at a time, so the input costs no memory.
use trace_common::{Event, HookId, LockClass, LockOp, Phase, known};

pub struct Workload {
    /// Events left to produce.
    left: u64,
    t: u64,
    rng: u64,
    /// Pending records of lifecycles in progress (a small ring of VMs).
    queue: std::collections::VecDeque<Event>,
    next_vm: u64,
    live: u64,
    pub vms_created: u64,
}

const LIVE_VMS: u64 = 256;
/// kvm.lock round trips per VM lifecycle (vCPU ioctls, memslot changes).
const LOCK_TRAFFIC: u32 = 40;

impl Workload {
    pub fn new(events: u64, seed: u64) -> Self {
        Workload {
            left: events,
            t: 1_000_000_000,
            rng: seed | 1,
            queue: Default::default(),
            next_vm: 0,
            live: 0,
            vms_created: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn base(&mut self, pid: u32, hook: HookId, phase: Phase) -> Event {
        self.t += 200;
        let mut e = Event::ZERO;
        e.ts_ns = self.t;
        e.pid_tgid = ((pid as u64) << 32) | pid as u64;
        e.hook = hook as u16;
        e.phase = phase as u8;
        e.comm[..4].copy_from_slice(b"qemu");
        e
    }

    fn kvm(e: &mut Event, kvm: u64, users: i32) {
        e.kvm = kvm;
        e.users_count = users;
        e.known |= known::KVM | known::USERS;
    }

    fn lock(
        &mut self,
        pid: u32,
        hook: HookId,
        op: LockOp,
        addr: u64,
        class: LockClass,
        owner: u64,
    ) -> Event {
        let phase = if op == LockOp::Acquired {
            Phase::Exit
        } else {
            Phase::Entry
        };
        let mut e = self.base(pid, hook, phase);
        e.lock = addr;
        e.lock_class = class as u8;
        e.lock_op = op as u8;
        e.arg = owner;
        e.known |= known::LOCK | known::ARG;
        e
    }

    fn lock_pair(
        &mut self,
        out: &mut Vec<Event>,
        pid: u32,
        addr: u64,
        class: LockClass,
        owner: u64,
    ) {
        out.push(self.lock(pid, HookId::MutexLock, LockOp::Attempt, addr, class, owner));
        out.push(self.lock(pid, HookId::MutexLock, LockOp::Acquired, addr, class, owner));
    }

    fn unlock(&mut self, out: &mut Vec<Event>, pid: u32, addr: u64, class: LockClass, owner: u64) {
        out.push(self.lock(
            pid,
            HookId::MutexUnlock,
            LockOp::Released,
            addr,
            class,
            owner,
        ));
    }

    /// One VM's whole life, as the probes would report it.
    fn lifecycle(&mut self) -> Vec<Event> {
        let n = self.next_vm;
        self.next_vm += 1;
        self.vms_created += 1;
        // Addresses are reused across generations, as slab memory is.
        let kvm = 0xffff_8881_0000_0000 + (n % 4096) * 0x10000;
        let dev = 0xffff_8882_0000_0000 + (n % 2048) * 0x1000;
        let group = 0xffff_8883_0000_0000 + (n % 2048) * 0x1000;
        let set = 0xffff_8884_0000_0000 + (n % 2048) * 0x1000;
        let pid = 1000 + (n % 50_000) as u32;
        let (kl, gl, sl) = (kvm + 0x40, group + 0x10, set + 0x8);
        let mut v = Vec::with_capacity(64 + 3 * LOCK_TRAFFIC as usize);
        let mut e = self.base(pid, HookId::SysIoctl, Phase::Exit);
        Self::kvm(&mut e, kvm, 1);
        e.arg = trace_common::ioctl::KVM_CREATE_VM as u64;
        e.ret = 5;
        e.known |= known::ARG | known::RET;
        v.push(e);
        let mut e = self.base(pid, HookId::KvmVfioSetAttr, Phase::Exit);
        Self::kvm(&mut e, kvm, 2);
        e.arg = ((trace_common::ioctl::KVM_DEV_VFIO_FILE as u64) << 32) | 1;
        e.known |= known::ARG | known::RET;
        v.push(e);
        // Open: group_lock -> dev_set->lock, VFIO's get.
        self.lock_pair(&mut v, pid, gl, LockClass::VfioGroupLock, group);
        self.lock_pair(&mut v, pid, sl, LockClass::VfioDevSetLock, set);
        let mut e = self.base(pid, HookId::KvmGetKvmSafe, Phase::Exit);
        Self::kvm(&mut e, kvm, 3);
        e.ret = 1;
        e.known |= known::RET;
        v.push(e);
        let mut e = self.base(pid, HookId::VfioDeviceGetKvmSafe, Phase::Exit);
        Self::kvm(&mut e, kvm, 3);
        e.device = dev;
        e.known |= known::DEVICE;
        v.push(e);
        let mut e = self.base(pid, HookId::VfioDfOpen, Phase::Exit);
        e.device = dev;
        e.group = group;
        e.open_count = 1;
        e.known |= known::DEVICE | known::GROUP | known::OPEN | known::RET;
        v.push(e);
        self.unlock(&mut v, pid, sl, LockClass::VfioDevSetLock, set);
        self.unlock(&mut v, pid, gl, LockClass::VfioGroupLock, group);
        // The VM runs: kvm.lock traffic from vCPU threads.
        for i in 0..LOCK_TRAFFIC {
            let vcpu = pid + 1 + (i % 4);
            self.lock_pair(&mut v, vcpu, kl, LockClass::KvmLock, kvm);
            self.unlock(&mut v, vcpu, kl, LockClass::KvmLock, kvm);
        }
        let vm_first = self.rand().is_multiple_of(2);
        let close_vm = |w: &mut Self, v: &mut Vec<Event>, users: i32| {
            let mut e = w.base(pid, HookId::KvmVmRelease, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            v.push(e);
            let mut e = w.base(pid, HookId::KvmPutKvm, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            v.push(e);
        };
        let close_kvm_vfio = |w: &mut Self, v: &mut Vec<Event>, users: i32| {
            w.lock_pair(v, pid, kl, LockClass::KvmLock, kvm);
            let mut e = w.base(pid, HookId::KvmVfioRelease, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            v.push(e);
            w.unlock(v, pid, kl, LockClass::KvmLock, kvm);
            let mut e = w.base(pid, HookId::KvmPutKvm, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            v.push(e);
        };
        let release = |w: &mut Self, v: &mut Vec<Event>, users: i32| {
            w.lock_pair(v, pid, gl, LockClass::VfioGroupLock, group);
            w.lock_pair(v, pid, sl, LockClass::VfioDevSetLock, set);
            let mut e = w.base(pid, HookId::VfioDfClose, Phase::Entry);
            e.device = dev;
            e.open_count = 1;
            e.known |= known::DEVICE | known::OPEN;
            v.push(e);
            let mut e = w.base(pid, HookId::VfioDevicePutKvm, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            e.device = dev;
            e.known |= known::DEVICE;
            v.push(e);
            let mut e = w.base(pid, HookId::KvmPutKvm, Phase::Entry);
            Self::kvm(&mut e, kvm, users);
            v.push(e);
            if users == 1 {
                let mut e = w.base(pid, HookId::KvmDestroyVm, Phase::Entry);
                Self::kvm(&mut e, kvm, 0);
                v.push(e);
            }
            w.unlock(v, pid, sl, LockClass::VfioDevSetLock, set);
            w.unlock(v, pid, gl, LockClass::VfioGroupLock, group);
        };
        if vm_first {
            close_vm(self, &mut v, 3);
            close_kvm_vfio(self, &mut v, 2);
            release(self, &mut v, 1);
        } else {
            release(self, &mut v, 3);
            close_kvm_vfio(self, &mut v, 2);
            close_vm(self, &mut v, 1);
            let mut e = self.base(pid, HookId::KvmDestroyVm, Phase::Entry);
            Self::kvm(&mut e, kvm, 0);
            v.push(e);
        }
        v
    }
}

impl Iterator for Workload {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        // Keep LIVE_VMS lifecycles interleaved: refill from a new VM when the
        // queue runs low, then take from a random position's front.
        while self.queue.len() < (LIVE_VMS * 4) as usize {
            let l = self.lifecycle();
            self.live += 1;
            self.queue.extend(l);
        }
        self.left -= 1;
        self.queue.pop_front()
    }
}
