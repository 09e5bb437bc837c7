//! A small builder for event streams, for scenario tests and the benchmark:
//! each method appends the events a kernel path emits, as the probes report
//! them (counts read before a put, after a get; open_count after an open,
//! before a close).
use trace_common::{HookId, LockClass};

use kvscope::event::{Comm, Event, FdKind, Kind, LockClassName, LockRef};

#[derive(Clone, Default)]
pub struct Script {
    pub t: u64,
    pub events: Vec<Event>,
}

impl Script {
    pub fn new() -> Self {
        Script {
            t: 1_000_000_000,
            events: Vec::new(),
        }
    }

    /// Lets time pass (ms).
    pub fn sleep_ms(&mut self, ms: u64) -> &mut Self {
        self.t += ms * 1_000_000;
        self
    }

    pub fn ev(&mut self, pid: u32, kind: Kind, hook: HookId) -> &mut Event {
        self.t += 1_000;
        let comm = Comm::from(format!("t{pid}").as_str());
        self.events.push(Event::new(self.t, pid, comm, kind, hook));
        self.events.last_mut().expect("pushed")
    }

    /// Sets the last event's hook (e.g. an attempt by mutex_lock_killable).
    pub fn with_hook(&mut self, hook: HookId) -> &mut Self {
        self.events.last_mut().expect("an event first").hook = hook;
        self
    }

    /// Marks the last event's device as one whose driver set `kvm_ops` (the
    /// seed's patch): `ops` is the ops table's address, 0 for none.
    pub fn with_kvm_ops(&mut self, ops: u64) -> &mut Self {
        self.events.last_mut().expect("an event first").kvm_ops = Some(ops);
        self
    }

    /// Sets the last event's file (a tracked fd's `struct file`).
    pub fn with_file(&mut self, file: u64) -> &mut Self {
        self.events.last_mut().expect("an event first").file = Some(file);
        self
    }

    /// Marks the last event with the VM its group had (group->kvm at the open).
    pub fn with_kvm(&mut self, kvm: u64) -> &mut Self {
        self.events.last_mut().expect("an event first").kvm = Some(kvm);
        self
    }

    pub fn create_vm(&mut self, pid: u32, kvm: u64) -> &mut Self {
        let e = self.ev(pid, Kind::VmCreated, HookId::SysIoctl);
        e.kvm = Some(kvm);
        e.users = Some(1);
        e.fd_kind = Some(FdKind::Vm);
        self
    }

    /// KVM_CREATE_DEVICE(VFIO): its kvm_get_kvm is inlined, so only the count shows it.
    pub fn create_kvm_vfio(&mut self, pid: u32, kvm: u64, users_after: i32) -> &mut Self {
        let e = self.ev(pid, Kind::KvmVfioCreated, HookId::SysIoctl);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        self
    }

    /// Tier 3: KVM_CREATE_VCPU returned the fd of vCPU `id` (file `file`);
    /// its get is inlined, only the count read after shows it.
    pub fn create_vcpu(
        &mut self,
        pid: u32,
        kvm: u64,
        id: u32,
        file: u64,
        users_after: i32,
    ) -> &mut Self {
        let e = self.ev(pid, Kind::VcpuCreated, HookId::SysIoctl);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        e.vcpu = Some(id);
        e.file = Some(file);
        e.fd_kind = Some(FdKind::Vcpu);
        self
    }

    /// Lean at tiers 1-2: kvm_arch_vcpu_postcreate for vCPU `id`, after its
    /// inlined get (`users_after` holds it).
    pub fn vcpu_postcreate(&mut self, pid: u32, kvm: u64, id: u32, users_after: i32) -> &mut Self {
        let e = self.ev(pid, Kind::VcpuCreated, HookId::KvmArchVcpuPostcreate);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        e.vcpu = Some(id);
        e.fd_kind = Some(FdKind::Vcpu);
        self
    }

    /// Lean at tiers 1-2: anon_inode_getfile made a stats file (`vcpu`: a
    /// vCPU's, else the VM's); the count is read before the inlined get
    /// that follows.
    pub fn stats_file(
        &mut self,
        pid: u32,
        kvm: u64,
        vcpu: Option<u32>,
        users_before: i32,
    ) -> &mut Self {
        let e = self.ev(pid, Kind::StatsFdCreated, HookId::AnonInodeGetfile);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        e.vcpu = vcpu;
        e.fd_kind = Some(if vcpu.is_some() {
            FdKind::VcpuStats
        } else {
            FdKind::VmStats
        });
        self
    }

    /// Tiers 1-2: a vCPU (`kind` Vcpu) or stats fd released, then its put
    /// (and kvm_destroy_vm at 1). `put_seen` false: the put is inlined into
    /// the release (Debian's 6.12), no put event, only the destroy's count.
    pub fn release_holder_fd(
        &mut self,
        pid: u32,
        kvm: u64,
        (kind, vcpu): (FdKind, Option<u32>),
        users_before: i32,
        put_seen: bool,
    ) -> &mut Self {
        let hook = match kind {
            FdKind::Vcpu => HookId::KvmVcpuRelease,
            FdKind::VcpuStats => HookId::KvmVcpuStatsRelease,
            _ => HookId::KvmVmStatsRelease,
        };
        let e = self.ev(pid, Kind::HolderFdRelease, hook);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        e.vcpu = vcpu;
        e.fd_kind = Some(kind);
        if put_seen {
            self.put(pid, kvm, users_before);
        }
        if users_before == 1 {
            self.destroy(pid, kvm);
        }
        self
    }

    /// Tier 3, deep: a tracked fd of `kind` (file `file`) duplicated.
    pub fn dup_fd(&mut self, pid: u32, kvm: u64, kind: FdKind, file: u64, users: i32) -> &mut Self {
        let e = self.ev(pid, Kind::FdDup, HookId::SysDup);
        e.kvm = Some(kvm);
        e.users = Some(users);
        e.fd_kind = Some(kind);
        e.file = Some(file);
        self
    }

    /// Tier 3: `pid` was given an fd of `file` (a tracked kind, from another
    /// process: SCM_RIGHTS or pidfd_getfd), followed from here on.
    pub fn receive_fd(
        &mut self,
        pid: u32,
        kvm: u64,
        kind: FdKind,
        file: u64,
        users: i32,
    ) -> &mut Self {
        let e = self.ev(pid, Kind::FdReceived, HookId::SysRecvmsg);
        e.kvm = Some(kvm);
        e.users = Some(users);
        e.fd_kind = Some(kind);
        e.file = Some(file);
        self
    }

    /// `pid`'s thread group exited (its fds closed without close(2)).
    pub fn exit(&mut self, pid: u32) -> &mut Self {
        self.ev(pid, Kind::ProcessExit, HookId::ProcessExit);
        self
    }

    /// Tier 3: `pid` forked `child` with a copy of its fd table (the copies
    /// of its tracked fds followed into the child).
    pub fn fork(&mut self, pid: u32, child: u32) -> &mut Self {
        self.ev(pid, Kind::ProcessFork, HookId::ProcessFork).child = Some(child);
        self
    }

    /// Tier 3: close(2) of a tracked fd, with the count and the references to
    /// its file read before the close.
    pub fn close_fd(
        &mut self,
        pid: u32,
        kvm: u64,
        kind: FdKind,
        file: u64,
        users_before: i32,
        file_refs: u64,
    ) -> &mut Self {
        let e = self.ev(pid, Kind::FdClosed, HookId::SysClose);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        e.fd_kind = Some(kind);
        e.file = Some(file);
        e.file_refs = Some(file_refs);
        self
    }

    pub fn get(&mut self, pid: u32, kvm: u64, users_after: i32) -> &mut Self {
        let e = self.ev(pid, Kind::VmGet, HookId::KvmGetKvm);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        e.ok = Some(true);
        self
    }

    pub fn get_safe(&mut self, pid: u32, kvm: u64, users_after: i32, ok: bool) -> &mut Self {
        let e = self.ev(pid, Kind::VmGet, HookId::KvmGetKvmSafe);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        e.ok = Some(ok);
        e.ret = Some(ok as i64);
        self
    }

    pub fn put(&mut self, pid: u32, kvm: u64, users_before: i32) -> &mut Self {
        let e = self.ev(pid, Kind::VmPut, HookId::KvmPutKvm);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        self
    }

    pub fn destroy(&mut self, pid: u32, kvm: u64) -> &mut Self {
        let e = self.ev(pid, Kind::VmDestroyed, HookId::KvmDestroyVm);
        e.kvm = Some(kvm);
        e.users = Some(0);
        self
    }

    /// kvm_vm_release then its kvm_put_kvm (and kvm_destroy_vm at 1).
    pub fn close_vm_fd(&mut self, pid: u32, kvm: u64, users_before: i32) -> &mut Self {
        let e = self.ev(pid, Kind::VmFdRelease, HookId::KvmVmRelease);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        self.put(pid, kvm, users_before);
        if users_before == 1 {
            self.destroy(pid, kvm);
        }
        self
    }

    /// kvm_device_release: kvm->lock held around .release (kvm_vfio_release,
    /// which unlinks the group: `unlink` runs inside, under kvm->lock), then the
    /// device fd's own put.
    pub fn close_kvm_vfio_fd(
        &mut self,
        pid: u32,
        kvm: u64,
        kvm_lock: u64,
        users_before: i32,
        unlink: impl FnOnce(&mut Self),
    ) -> &mut Self {
        self.lock(pid, kvm_lock, LockClass::KvmLock, kvm);
        let e = self.ev(pid, Kind::KvmVfioRelease, HookId::KvmVfioRelease);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        unlink(self);
        self.unlock(pid, kvm_lock, LockClass::KvmLock, kvm);
        self.put(pid, kvm, users_before);
        if users_before == 1 {
            self.destroy(pid, kvm);
        }
        self
    }

    pub fn file_link(&mut self, pid: u32, group: u64, kvm: u64) -> &mut Self {
        let e = self.ev(pid, Kind::FileLink, HookId::VfioFileSetKvm);
        e.group = Some(group);
        e.kvm = Some(kvm);
        self
    }

    /// 5.10-5.18: vfio_group_set_kvm(group, kvm) entered (kvm 0: unlink); the
    /// drivers' notifier callbacks run before `group_set_kvm_done`.
    pub fn group_set_kvm(&mut self, pid: u32, group: u64, kvm: u64) -> &mut Self {
        let kind = if kvm == 0 {
            Kind::FileUnlink
        } else {
            Kind::FileLink
        };
        let e = self.ev(pid, kind, HookId::VfioGroupSetKvm);
        e.group = Some(group);
        e.kvm = (kvm != 0).then_some(kvm);
        self
    }

    /// vfio_group_set_kvm returned.
    pub fn group_set_kvm_done(&mut self, pid: u32, group: u64, kvm: u64) -> &mut Self {
        let e = self.ev(pid, Kind::NotifierDone, HookId::VfioGroupSetKvm);
        e.group = Some(group);
        e.kvm = (kvm != 0).then_some(kvm);
        e.at_return = true;
        self
    }

    /// 5.10-5.18: a driver's vfio_register_notifier(VFIO_GROUP_NOTIFY) from
    /// its open; `done` its return.
    pub fn notifier_register(&mut self, pid: u32, done: bool) -> &mut Self {
        let kind = if done {
            Kind::NotifierDone
        } else {
            Kind::NotifierRegister
        };
        let e = self.ev(pid, kind, HookId::VfioRegisterNotifier);
        e.at_return = done;
        self
    }

    pub fn file_unlink(&mut self, pid: u32, group: u64) -> &mut Self {
        let e = self.ev(pid, Kind::FileUnlink, HookId::VfioFileSetKvm);
        e.group = Some(group);
        self
    }

    pub fn device_opened(&mut self, pid: u32, dev: u64, group: u64, open_after: i32) -> &mut Self {
        let e = self.ev(pid, Kind::DeviceOpened, HookId::VfioDfOpen);
        e.device = Some(dev);
        e.group = Some(group);
        e.open_count = Some(open_after);
        e.ret = Some(0);
        self
    }

    /// 6.1 / the kvm_ops patch: vfio_device_assign_container, first in the
    /// inlined vfio_device_open.
    pub fn device_open_attempt(&mut self, pid: u32, dev: u64, open_before: i32) -> &mut Self {
        let e = self.ev(
            pid,
            Kind::DeviceOpenAttempt,
            HookId::VfioDeviceAssignContainer,
        );
        e.device = Some(dev);
        e.open_count = Some(open_before);
        self
    }

    /// The group ioctl's exit after a failed VFIO_GROUP_GET_DEVICE_FD: no
    /// device fd, so no device; the group and its kvm read from the group.
    pub fn device_open_failed(&mut self, pid: u32, group: u64, ret: i64) -> &mut Self {
        let e = self.ev(pid, Kind::DeviceOpened, HookId::VfioGroupFopsUnlIoctl);
        e.group = Some(group);
        e.ret = Some(ret);
        self
    }

    pub fn device_release(&mut self, pid: u32, dev: u64, open_before: i32) -> &mut Self {
        let e = self.ev(pid, Kind::DeviceRelease, HookId::VfioDeviceFopsRelease);
        e.device = Some(dev);
        e.open_count = Some(open_before);
        self
    }

    pub fn device_close(&mut self, pid: u32, dev: u64, open_before: i32) -> &mut Self {
        let e = self.ev(pid, Kind::DeviceClose, HookId::VfioDfClose);
        e.device = Some(dev);
        e.open_count = Some(open_before);
        self
    }

    /// 6.3+: vfio_device_get_kvm_safe -> kvm_get_kvm_safe.
    pub fn vfio_get_kvm(&mut self, pid: u32, dev: u64, kvm: u64, users_after: i32) -> &mut Self {
        self.get_safe(pid, kvm, users_after, true);
        let e = self.ev(pid, Kind::VfioKvmGet, HookId::VfioDeviceGetKvmSafe);
        e.device = Some(dev);
        e.kvm = Some(kvm);
        e.users = Some(users_after);
        self
    }

    /// 6.3+: vfio_device_put_kvm -> kvm_put_kvm (-> kvm_destroy_vm at 1).
    pub fn vfio_put_kvm(&mut self, pid: u32, dev: u64, kvm: u64, users_before: i32) -> &mut Self {
        let e = self.ev(pid, Kind::VfioKvmPut, HookId::VfioDevicePutKvm);
        e.device = Some(dev);
        e.kvm = Some(kvm);
        e.users = Some(users_before);
        self.put(pid, kvm, users_before);
        if users_before == 1 {
            self.destroy(pid, kvm);
        }
        self
    }

    fn lock_ev(
        &mut self,
        pid: u32,
        kind: Kind,
        addr: u64,
        class: LockClass,
        owner: u64,
    ) -> &mut Self {
        let e = self.ev(pid, kind, HookId::MutexLock);
        e.lock = Some(LockRef {
            addr,
            class: LockClassName(class),
            owner,
        });
        self
    }

    pub fn attempt(&mut self, pid: u32, addr: u64, class: LockClass, owner: u64) -> &mut Self {
        self.lock_ev(pid, Kind::LockAttempt, addr, class, owner)
    }

    /// mutex_lock: attempt, then acquired.
    pub fn lock(&mut self, pid: u32, addr: u64, class: LockClass, owner: u64) -> &mut Self {
        self.attempt(pid, addr, class, owner);
        self.lock_ev(pid, Kind::LockAcquired, addr, class, owner)
    }

    pub fn unlock(&mut self, pid: u32, addr: u64, class: LockClass, owner: u64) -> &mut Self {
        self.lock_ev(pid, Kind::LockReleased, addr, class, owner)
    }

    /// Lean lock watching: at kvm_destroy_vm the lock's owner word named
    /// this thread.
    pub fn held(&mut self, pid: u32, addr: u64, class: LockClass, owner: u64) -> &mut Self {
        self.lock_ev(pid, Kind::LockHeld, addr, class, owner);
        self.events.last_mut().expect("pushed").hook = HookId::KvmDestroyVm;
        self
    }
}
