//! VMs: one `struct kvm` generation per address, its count as read from the
//! kernel at every event, who holds it, and the steps that changed it
//! (created, get, put, fd close, destroy, and the changes no probe saw).
use std::collections::BTreeMap;

use super::{
    Engine, MS, Observation,
    finding::{Finding, ObjRef, PutFault, Thread, Zombie},
    holder::Holder,
    locks::Held,
    timeline::{Step, StepKind, Timeline},
};
use crate::event::{Event, FdKind, Kind};
use trace_common::HookId;

/// Steps of a VM's timeline a finding quotes.
const RECENT: usize = 8;

/// One generation of a `struct kvm` at one address.
#[derive(Clone, Debug)]
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
    /// References by holder.
    pub holders: BTreeMap<Holder, i32>,
    pub timeline: Timeline,
    pub(super) zombie_reported: bool,
    /// When the count was last read from the kernel.
    pub last_read_ns: Option<u64>,
    /// Tier 3: a close found the fd's file still held by another fd (a dup,
    /// a fork's copy, one passed over a socket) that kvscope may never see
    /// closed: the VM's end can no longer be inferred from closes.
    pub file_shared: bool,
    /// The start of a blind gap the VM lived through (kvscope attached again
    /// after a watched module changed): what happened to it in the gap is
    /// unknown, so its end is never inferred and no zombie raised.
    pub blind_from_ns: Option<u64>,
    /// Tier 3: its creator exec'd then. The exec closed the VM's O_CLOEXEC
    /// fds without close(2), and a dup made without the flag may live on,
    /// no longer followed: whether the VM lives is unknown until the
    /// process exits (which closes whatever was left).
    pub exec_ns: Option<u64>,
    /// Tier 3: the holders behind `exec_ns`, until each exits (a forked
    /// child's exec leaves the VM unknown only while that child lives).
    exec_tgids: std::collections::BTreeSet<u32>,
    /// Tier 3: the thread groups holding fds of it that kvscope follows
    /// (its creator, a forked child that inherited them): the exit of the
    /// last one ends it when nothing else holds its file.
    pub holder_tgids: std::collections::BTreeSet<u32>,
    /// Tier 3 and deep: per thread group and file, the fds of it kvscope
    /// follows: what a fork's child inherits, and what an exit or exec ends.
    tgid_fds: BTreeMap<(u32, u64), u32>,
    /// Who it belongs to (creator, QEMU's name, libvirt domain), as read when
    /// its creation was seen.
    pub identity: Option<crate::identity::Identity>,
    /// Tier 3: the files of the vCPU and stats fds that hold a reference.
    fd_files: BTreeMap<u64, Holder>,
    /// Tier 3 and deep: per file of the VM's fds, how many fds kvscope
    /// follows (the fd made, its dups): a close that leaves the file held
    /// only by these is not a reference kvscope cannot see.
    followed_fds: BTreeMap<u64, u32>,
}

/// A step some probe saw, at `e`.
pub(super) fn seen(e: &Event, kind: StepKind, delta: i32, after: Option<i32>) -> Step {
    Step {
        ts_ns: e.ts_ns,
        pid: e.pid,
        comm: e.comm,
        kind,
        hook: Some(e.hook),
        delta,
        count_after: after,
        holder: None,
        stack_id: e.stack_id,
        at_return: e.at_return,
        vm: None,
    }
}

/// A step no probe saw, deduced at `e`.
fn inferred(
    e: &Event,
    kind: StepKind,
    delta: i32,
    after: Option<i32>,
    holder: Option<Holder>,
) -> Step {
    Step {
        hook: None,
        stack_id: None,
        at_return: false,
        holder,
        ..seen(e, kind, delta, after)
    }
}

/// Kinds that change no count but are shown on the VM's timeline.
fn observed_step(k: Kind) -> Option<StepKind> {
    match k {
        Kind::FileLink => Some(StepKind::FileLink),
        Kind::FileUnlink => Some(StepKind::FileUnlink),
        Kind::DeviceOpened => Some(StepKind::DeviceOpen),
        Kind::DeviceRelease => Some(StepKind::DeviceRelease),
        Kind::DeviceClose => Some(StepKind::DeviceClose),
        _ => None,
    }
}

impl Vm {
    fn new(addr: u64, generation: u32, e: &Event, creating: bool) -> Vm {
        Vm {
            addr,
            generation,
            creator: creating.then(|| Thread::of(e)),
            creation_seen: creating,
            first_ns: e.ts_ns,
            users: None,
            fd_closed_ns: None,
            destroyed_ns: None,
            holders: BTreeMap::new(),
            timeline: Timeline::default(),
            zombie_reported: false,
            last_read_ns: None,
            file_shared: false,
            exec_ns: None,
            exec_tgids: Default::default(),
            holder_tgids: Default::default(),
            tgid_fds: BTreeMap::new(),
            blind_from_ns: None,
            identity: None,
            fd_files: BTreeMap::new(),
            followed_fds: BTreeMap::new(),
        }
    }

    pub fn is_destroyed(&self) -> bool {
        self.destroyed_ns.is_some()
    }

    /// Its fd closed and not destroyed within the zombie threshold.
    pub fn is_zombie(&self) -> bool {
        self.zombie_reported && !self.is_destroyed()
    }

    pub fn obj(&self) -> ObjRef {
        ObjRef {
            addr: self.addr,
            generation: self.generation,
        }
    }

    /// Holders still holding, and the part of the count no holder explains.
    pub fn holders_now(&self) -> Vec<(Holder, i32)> {
        let mut v: Vec<(Holder, i32)> = self
            .holders
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(h, n)| (*h, *n))
            .collect();
        if let Some(u) = self.users {
            let named: i32 = v.iter().map(|(_, n)| n).sum();
            if u > named {
                v.push((Holder::Unattributed, u - named));
            }
        }
        v
    }

    fn hold(&mut self, h: Holder, d: i32) {
        let n = self.holders.entry(h).or_default();
        *n = (*n + d).max(0);
    }

    /// The count read at `e` (when it read one) becomes the VM's count.
    fn read(&mut self, e: &Event) {
        if e.users.is_some() {
            self.users = e.users;
            self.last_read_ns = Some(e.ts_ns);
        }
    }

    /// A count read that differs from what we knew: unobserved gets/puts,
    /// shown as inferred steps. Returns the holder of a vCPU or stats fd
    /// whose release's put (inlined) it just named.
    fn reconcile(&mut self, e: &Event, cap: usize) -> Option<Holder> {
        // The count this event implies held just before it.
        let implied_before = match (e.kind, e.users) {
            (Kind::VmGet, Some(u)) if e.ok != Some(false) => Some(u - 1),
            (_, u) => u,
        };
        let (Some(prev), Some(now)) = (self.users, implied_before) else {
            return None;
        };
        if prev == now || self.is_destroyed() {
            return None;
        }
        let d = now - prev;
        let kind = if d > 0 {
            StepKind::InferredGet
        } else {
            StepKind::InferredPut
        };
        // A vCPU or stats fd's release puts with kvm_put_kvm inlined into it
        // on some builds (Debian's 6.12): the drop after it is that fd's.
        let released = match self.timeline.steps.back() {
            Some(s) if s.kind == StepKind::HolderFdRelease && d == -1 => s.holder,
            _ => None,
        };
        // A drop right after an fd close we saw is that fd's reference; the
        // rise right after the kvm-vfio create op (reported before its
        // inlined get) is that device's.
        let holder = released.or(match self.timeline.last_seen() {
            Some((StepKind::KvmVfioFdClose, _)) if d < 0 => Some(Holder::KvmVfioFd),
            Some((StepKind::VmFdClose, _)) if d < 0 => Some(Holder::VmFd),
            Some((StepKind::KvmVfioCreated, Some(HookId::KvmVfioCreate))) if d == 1 => {
                Some(Holder::KvmVfioFd)
            }
            _ => None,
        });
        if let Some(h) = holder {
            self.hold(h, d);
        }
        self.timeline
            .push(cap, inferred(e, kind, d, Some(now), holder));
        released
    }

    /// An fd of this VM's made or duplicated: its file has one more fd
    /// kvscope follows.
    fn fd_followed(&mut self, e: &Event) {
        if let (Some(f), Some(_)) = (e.file, e.fd_kind) {
            *self.followed_fds.entry(f).or_default() += 1;
            *self.tgid_fds.entry((e.tgid, f)).or_default() += 1;
            self.holder_tgids.insert(e.tgid);
        }
    }

    /// One followed fd of `file` fewer (in `tgid`).
    fn fd_unfollowed(&mut self, tgid: u32, file: u64) {
        decrement(&mut self.followed_fds, file);
        decrement(&mut self.tgid_fds, (tgid, file));
    }

    /// The followed fds of `tgid`: (file, how many).
    fn fds_of(&self, tgid: u32) -> Vec<(u64, u32)> {
        self.tgid_fds
            .range((tgid, 0)..=(tgid, u64::MAX))
            .map(|(&(_, f), &n)| (f, n))
            .collect()
    }

    /// `tgid` holds none of its fds kvscope follows any more (it exited, or
    /// exec'd: what the exec left open is no longer followed).
    fn forget_tgid(&mut self, tgid: u32) {
        for (f, n) in self.fds_of(tgid) {
            for _ in 0..n {
                self.fd_unfollowed(tgid, f);
            }
        }
    }

    /// Whether a thread group that held its fds may still hold one: a
    /// followed fd left, or an exec that may have kept a dup unseen. (One
    /// that closed all of them, e.g. after passing one on, holds nothing.)
    fn held_by_a_holder(&self) -> bool {
        self.holder_tgids
            .iter()
            .any(|&t| self.exec_tgids.contains(&t) || !self.fds_of(t).is_empty())
    }

    /// `parent` forked `child` with a copy of its fd table: the child holds
    /// a followed copy of each of the parent's followed fds. Whether it had
    /// any.
    fn fds_inherited(&mut self, parent: u32, child: u32) -> bool {
        let held = self.fds_of(parent);
        for &(f, n) in &held {
            *self.followed_fds.entry(f).or_default() += n;
            *self.tgid_fds.entry((child, f)).or_default() += n;
        }
        if !held.is_empty() {
            self.holder_tgids.insert(child);
        }
        !held.is_empty()
    }

    /// A tracked fd was duplicated, or one of its kind given to a process
    /// (tier 3, deep): the new fd holds the same file, and its close is
    /// seen too.
    fn fd_dup(&mut self, e: &Event, cap: usize, step: StepKind) {
        self.fd_followed(e);
        self.timeline.push(cap, seen(e, step, 0, e.users));
        self.read(e);
    }

    fn created(&mut self, e: &Event, cap: usize) {
        self.fd_followed(e);
        self.holder_tgids.insert(e.tgid);
        let u = e.users.unwrap_or(1);
        *self.holders.entry(Holder::VmFd).or_default() += 1;
        let step = Step {
            holder: Some(Holder::VmFd),
            ..seen(e, StepKind::Created, 1, Some(u))
        };
        self.timeline.push(cap, step);
        self.users = Some(u);
    }

    fn kvm_vfio_created(&mut self, e: &Event, cap: usize) {
        self.fd_followed(e);
        // kvm_get_kvm in KVM_CREATE_DEVICE is inlined. The ioctl's return
        // comes after it: the +1 was just inferred; name its holder. The
        // create op comes before it: `reconcile` names the next rise.
        if e.hook != HookId::KvmVfioCreate {
            self.held_by_new_fd(Holder::KvmVfioFd);
        }
        self.timeline
            .push(cap, seen(e, StepKind::KvmVfioCreated, 0, e.users));
        self.read(e);
    }

    /// An ioctl returned an fd whose kernel get is inlined (kvm-vfio device,
    /// vCPU, stats): the +1 `reconcile` just inferred is `holder`'s.
    fn held_by_new_fd(&mut self, holder: Holder) {
        if let Some(last) = self.timeline.last_mut()
            && last.inferred()
            && last.delta == 1
            && last.holder.is_none()
        {
            last.holder = Some(holder);
        }
        self.hold(holder, 1);
    }

    /// A vCPU or stats fd made (its ioctl's exit, or lean's handler hooks):
    /// the kernel's get is inlined. Where it came before (the ioctl, the vCPU
    /// hook), `reconcile` just showed it as a +1, which is this fd's; a stats
    /// file reported as made (anon_inode_getfile) gets its reference right
    /// after, unconditionally: that +1 is shown now, as inferred. Its file
    /// names the holder again at its close.
    fn fd_holder_created(&mut self, e: &Event, cap: usize) {
        let holder = match e.kind {
            Kind::VcpuCreated => Holder::VcpuFd(e.vcpu.unwrap_or(u32::MAX)),
            _ => Holder::StatsFd,
        };
        if e.hook == HookId::AnonInodeGetfile {
            let step = Step {
                holder: Some(holder),
                ..seen(e, StepKind::FdHolderCreated, 0, e.users)
            };
            self.timeline.push(cap, step);
            self.read(e);
            let after = self.users.map(|u| u + 1);
            let get = inferred(e, StepKind::InferredGet, 1, after, Some(holder));
            self.timeline.push(cap, get);
            self.users = after;
            self.hold(holder, 1);
            return;
        }
        // A vCPU id is one fd of one VM: seen by two hooks, held once.
        let already = matches!(holder, Holder::VcpuFd(_)) && self.holders.get(&holder) == Some(&1);
        if !already {
            self.held_by_new_fd(holder);
        }
        if let Some(f) = e.file {
            self.fd_files.insert(f, holder);
        }
        self.fd_followed(e);
        let step = Step {
            holder: Some(holder),
            ..seen(e, StepKind::FdHolderCreated, 0, e.users)
        };
        self.timeline.push(cap, step);
        self.read(e);
    }

    /// The holder a vCPU or stats fd's release gives back.
    fn released_fd_holder(e: &Event) -> Option<Holder> {
        match e.fd_kind {
            Some(FdKind::Vcpu) => Some(Holder::VcpuFd(e.vcpu.unwrap_or(u32::MAX))),
            Some(FdKind::VmStats | FdKind::VcpuStats) => Some(Holder::StatsFd),
            _ => None,
        }
    }

    fn get(&mut self, e: &Event, cap: usize) -> Option<Finding> {
        if e.ok == Some(false) {
            self.timeline
                .push(cap, seen(e, StepKind::GetSafeFailed, 0, e.users));
            let recent = self.timeline.recent(6);
            return Some(Finding::get_safe_failed(e, self.obj(), recent));
        }
        let dead = self.is_destroyed();
        let after = e.users.or(self.users.map(|u| u + 1));
        self.timeline.push(cap, seen(e, StepKind::Get, 1, after));
        self.users = after;
        (dead || after.is_some_and(|u| u <= 1)).then(|| {
            let recent = self.timeline.recent(RECENT);
            Finding::get_after_zero(e, self.obj(), dead, recent)
        })
    }

    /// A put, given back by `holder` when the function making it was seen.
    fn put(&mut self, e: &Event, cap: usize, holder: Option<Holder>) -> Option<Finding> {
        let before = e.users.or(self.users);
        let after = before.map(|u| u - 1);
        let not_holder = holder.filter(|h| self.give_back(*h, before));
        let dead = self.is_destroyed();
        let step = Step {
            holder,
            ..seen(e, StepKind::Put, -1, after)
        };
        self.timeline.push(cap, step);
        self.users = after;
        let (vm, recent) = (self.obj(), || self.timeline.recent(RECENT));
        let fault = if dead {
            PutFault::AfterDestroy {
                vm,
                recent: recent(),
            }
        } else if let Some(b) = before.filter(|b| *b <= 0) {
            PutFault::BelowZero {
                vm,
                before: b,
                recent: recent(),
            }
        } else if let Some(holder) = not_holder {
            PutFault::NotHolder {
                vm,
                holder,
                recent: recent(),
            }
        } else {
            return None;
        };
        Some(Finding::unbalanced_put(e, fault, None))
    }

    /// `h` gives a reference back; true when it held none and no reference
    /// the count shows unnamed (an inlined get) could be the one it gives.
    fn give_back(&mut self, h: Holder, before: Option<i32>) -> bool {
        let named: i32 = self.holders.values().filter(|n| **n > 0).sum();
        let unattributed = before.map_or(0, |b| b - named);
        let n = self.holders.entry(h).or_default();
        *n -= 1;
        if *n < 0 {
            *n = 0;
            return unattributed <= 0;
        }
        false
    }

    /// kvm_destroy_vm; `held`: the watched locks the thread holds.
    fn destroyed(&mut self, e: &Event, cap: usize, held: Vec<Held>) -> Option<Finding> {
        self.timeline
            .push(cap, seen(e, StepKind::Destroyed, 0, Some(0)));
        self.users = Some(0);
        self.destroyed_ns = Some(e.ts_ns);
        held.iter().any(|h| h.class.is_vfio()).then(|| {
            let recent = self.timeline.recent(RECENT);
            Finding::destroy_under_lock(e, self.obj(), held, recent)
        })
    }

    /// The release of the VM fd or of the kvm-vfio fd: the put that follows
    /// on this thread is that holder's.
    fn fd_release(&mut self, e: &Event, cap: usize, kind: StepKind) {
        self.timeline.push(cap, seen(e, kind, 0, e.users));
        if kind == StepKind::VmFdRelease {
            self.fd_closed_ns.get_or_insert(e.ts_ns);
        }
        self.read(e);
    }

    /// close(2) of a tracked fd (tracepoint tier). Without put hooks the
    /// close is the put of that fd's reference (read before it) when it
    /// drops the file's last reference; at 1 it is the VM's end. A file
    /// another fd still holds puts nothing, and from then on the VM's end is
    /// not inferred from closes (its state is unknown, never guessed).
    fn fd_closed(&mut self, e: &Event, cap: usize, destroy_observable: bool) {
        let file_kept = e.file_refs.is_some_and(|r| r > 1);
        // Every other reference to the file is an fd kvscope follows (a
        // dup): their closes will be seen, the VM's state stays known.
        let followed = e.file.and_then(|f| self.followed_fds.get(&f)).copied();
        let kept_by_followed = e
            .file_refs
            .zip(followed)
            .is_some_and(|(refs, n)| refs <= u64::from(n));
        if let Some(f) = e.file {
            self.fd_unfollowed(e.tgid, f);
        }
        let (kind, holder) = match e.fd_kind {
            Some(FdKind::Vm) => (StepKind::VmFdClose, Some(Holder::VmFd)),
            Some(FdKind::KvmVfioDevice) => (StepKind::KvmVfioFdClose, Some(Holder::KvmVfioFd)),
            Some(FdKind::Vcpu | FdKind::VmStats | FdKind::VcpuStats) => {
                let h = e.file.and_then(|f| self.fd_files.get(&f).copied());
                (StepKind::FdClose, h.or(Some(Holder::Unattributed)))
            }
            _ => (StepKind::FdClose, None),
        };
        if kind == StepKind::VmFdClose && !file_kept {
            self.fd_closed_ns.get_or_insert(e.ts_ns);
        }
        // A plain fd-close says which fd through its holder.
        let named = Step {
            holder: holder.filter(|_| kind == StepKind::FdClose),
            ..seen(e, kind, 0, e.users)
        };
        self.timeline.push(cap, named);
        self.read(e);
        if file_kept {
            self.file_shared |= !kept_by_followed;
            return;
        }
        if let Some(f) = e.file {
            self.fd_files.remove(&f);
        }
        if destroy_observable {
            return;
        }
        let (Some(h), Some(before)) = (holder, e.users) else {
            return;
        };
        self.hold(h, -1);
        let step = inferred(e, StepKind::InferredPut, -1, Some(before - 1), Some(h));
        self.timeline.push(cap, step);
        self.users = Some(before - 1);
        if before == 1 {
            let end = inferred(e, StepKind::InferredDestroy, 0, Some(0), None);
            self.timeline.push(cap, end);
            self.destroyed_ns = Some(e.ts_ns);
        }
    }

    /// The VM ended unseen, as `kind` (a process exit, a new VM at its
    /// address) shows: what was left of its count goes with it.
    fn ended_unseen(&mut self, e: &Event, cap: usize, kind: StepKind) {
        let delta = -self.users.unwrap_or(0);
        let end = inferred(e, kind, delta, Some(0), None);
        self.timeline.push(cap, end);
        self.users = Some(0);
        self.destroyed_ns = Some(e.ts_ns);
    }

    /// vfio_device_get_kvm_safe returned: the get just before, on this
    /// thread, was the device's.
    fn vfio_kvm_get(&mut self, e: &Event) {
        self.name_last_get(e.pid, e.device.map(Holder::VfioDevice));
        self.read(e);
    }

    /// The last step, a get by `pid` not yet named, was `holder`'s.
    fn name_last_get(&mut self, pid: u32, holder: Option<Holder>) {
        if let Some(last) = self.timeline.last_mut()
            && last.pid == pid
            && last.kind == StepKind::Get
            && last.holder.is_none()
        {
            last.holder = holder;
        }
        if let Some(h) = holder {
            *self.holders.entry(h).or_default() += 1;
        }
    }

    /// The kvm_ops patch's first open called get_kvm(group->kvm): the driver's
    /// get is this thread's last unnamed get on the VM. Named once, however
    /// many hooks report the open.
    fn kvm_ops_open(&mut self, e: &Event, cap: usize) {
        if let Some(h) = e.device.map(Holder::KvmOps) {
            self.name_recent_get(e.pid, h);
        }
        self.observed(e, cap, StepKind::DeviceOpen);
    }

    /// This thread's most recent get on the VM, if not yet named, was `h`'s.
    pub(super) fn name_recent_get(&mut self, pid: u32, h: Holder) {
        if let Some(last) = self
            .timeline
            .steps
            .iter_mut()
            .rev()
            .find(|s| s.pid == pid && s.kind == StepKind::Get)
            && last.holder.is_none()
        {
            last.holder = Some(h);
            *self.holders.entry(h).or_default() += 1;
        }
    }

    /// A step that changes nothing but is worth seeing on the VM's timeline.
    fn observed(&mut self, e: &Event, cap: usize, kind: StepKind) {
        self.timeline.push(cap, seen(e, kind, 0, e.users));
        self.read(e);
    }
}

impl Engine {
    /// The VM at `addr` that `e` concerns, created (a new generation) if needed.
    fn vm_mut(&mut self, addr: u64, e: &Event) -> &mut Vm {
        let creating = e.kind == Kind::VmCreated;
        // A create at the address of a live VM: its destroy was missed.
        if creating && self.vms.get(&addr).is_some_and(|v| !v.timeline.is_empty()) {
            let cap = self.cfg.timeline_cap;
            if let Some(old) = self.vms.get_mut(&addr)
                && !old.is_destroyed()
            {
                old.ended_unseen(e, cap, StepKind::InferredDestroyReused);
            }
            self.retire_vm(addr);
        }
        if !self.vms.contains_key(&addr) {
            if !creating {
                self.anomalies.unseen_creation += 1;
            }
            let g = self.vm_generations.entry(addr).or_default();
            *g += 1;
            let vm = Vm::new(addr, *g, e, creating);
            self.vms.insert(addr, vm);
        }
        self.vms.get_mut(&addr).expect("inserted")
    }

    fn retire_vm(&mut self, addr: u64) {
        if let Some(vm) = self.vms.remove(&addr) {
            self.dead_vms.push_back(vm);
            while self.dead_vms.len() > self.cfg.retain_dead {
                self.dead_vms.pop_front();
            }
        }
    }

    /// Events on a destroyed VM: a new VM at a reused address when the count
    /// read is that of a live VM, else something touching a dead VM.
    fn retire_if_reused(&mut self, addr: u64, e: &Event) {
        let Some(vm) = self.vms.get(&addr) else {
            return;
        };
        if !vm.is_destroyed() {
            return;
        }
        let live_read = match e.kind {
            Kind::VmGet => e.users.is_some_and(|u| u >= 2),
            Kind::VmPut | Kind::VmDestroyed => false,
            _ => e.users.is_some_and(|u| u >= 1),
        };
        if live_read || e.kind == Kind::VmCreated {
            self.retire_vm(addr);
        }
    }

    /// The holder the function about to put named for this thread's put.
    fn take_pending_put(&mut self, addr: u64, e: &Event) -> Option<Holder> {
        match self.pending_put.get(&e.pid) {
            Some((k, h)) if *k == addr && e.kind == Kind::VmPut => {
                let h = *h;
                self.pending_put.remove(&e.pid);
                Some(h)
            }
            _ => None,
        }
    }

    pub(super) fn vm_event(&mut self, addr: u64, e: &Event, out: &mut Vec<Finding>) {
        let cap = self.cfg.timeline_cap;
        let destroy_observable = self.cfg.destroy_observable;
        self.retire_if_reused(addr, e);
        let pending = self.take_pending_put(addr, e);
        let notifier = self.notifier_get(e, addr);
        let held = match e.kind {
            Kind::VmDestroyed => self.locks.held_now(e.pid),
            _ => Vec::new(),
        };
        let vm = self.vm_mut(addr, e);
        if let Some(h) = vm.reconcile(e, cap) {
            // Its put was inlined and is named: no later put takes it.
            self.pending_put.retain(|_, p| *p != (addr, h));
        }
        let vm = self.vm_mut(addr, e);
        let mut gives_back = None;
        let mut teardown = None;
        let found = match e.kind {
            Kind::VmCreated => {
                vm.created(e, cap);
                None
            }
            Kind::KvmVfioCreated => {
                vm.kvm_vfio_created(e, cap);
                None
            }
            Kind::VcpuCreated | Kind::StatsFdCreated => {
                vm.fd_holder_created(e, cap);
                None
            }
            Kind::VmGet => {
                let found = vm.get(e, cap);
                if let Some(h) = notifier {
                    vm.name_last_get(e.pid, Some(h));
                }
                found
            }
            Kind::VmPut => vm.put(e, cap, pending),
            Kind::VmDestroyed => {
                teardown = vm.fd_closed_ns.map(|c| e.ts_ns.saturating_sub(c));
                vm.destroyed(e, cap, held)
            }
            Kind::VmFdRelease => {
                vm.fd_release(e, cap, StepKind::VmFdRelease);
                gives_back = Some(Holder::VmFd);
                None
            }
            Kind::KvmVfioRelease => {
                vm.fd_release(e, cap, StepKind::KvmVfioRelease);
                gives_back = Some(Holder::KvmVfioFd);
                None
            }
            Kind::HolderFdRelease => {
                gives_back = Vm::released_fd_holder(e);
                vm.fd_release(e, cap, StepKind::HolderFdRelease);
                if let Some(last) = vm.timeline.last_mut() {
                    last.holder = gives_back;
                }
                None
            }
            Kind::FdClosed => {
                vm.fd_closed(e, cap, destroy_observable);
                None
            }
            Kind::FdDup => {
                vm.fd_dup(e, cap, StepKind::FdDup);
                None
            }
            Kind::FdReceived => {
                vm.fd_dup(e, cap, StepKind::FdReceived);
                None
            }
            Kind::VfioKvmGet => {
                vm.vfio_kvm_get(e);
                None
            }
            Kind::VfioKvmPut => {
                vm.observed(e, cap, StepKind::VfioPutKvm);
                gives_back = e.device.map(Holder::VfioDevice);
                None
            }
            Kind::DeviceOpened if super::kvm_ops::first_open(e) => {
                vm.kvm_ops_open(e, cap);
                None
            }
            k => {
                match observed_step(k) {
                    Some(step) => vm.observed(e, cap, step),
                    None => vm.read(e),
                }
                None
            }
        };
        out.extend(found);
        if let Some(h) = gives_back {
            self.pending_put.insert(e.pid, (addr, h));
        }
        if let Some(ns) = teardown {
            self.observe(Observation::Teardown {
                secs: ns as f64 / 1e9,
            });
        }
    }

    /// A process exited: its VMs' fds closed without close(2). Unhooked
    /// destroy (tier 3): the exit's implicit closes end them.
    pub(super) fn vms_at_exit(&mut self, e: &Event) {
        let cap = self.cfg.timeline_cap;
        let destroy_observable = self.cfg.destroy_observable;
        for vm in self.vms.values_mut() {
            vm.forget_tgid(e.tgid);
            // What its exec left open, its exit closed.
            if vm.exec_tgids.remove(&e.tgid) && vm.exec_tgids.is_empty() {
                vm.exec_ns = None;
            }
            // Another process (a forked child) may hold it on; a VM whose
            // creation was not seen may be held by anyone.
            if !vm.holder_tgids.remove(&e.tgid) || vm.held_by_a_holder() || vm.creator.is_none() {
                continue;
            }
            vm.fd_closed_ns.get_or_insert(e.ts_ns);
            // A shared file may live on in another process. What an exec
            // left open, the exit closes.
            if destroy_observable
                || vm.is_destroyed()
                || vm.file_shared
                || vm.blind_from_ns.is_some()
            {
                continue;
            }
            vm.ended_unseen(e, cap, StepKind::InferredDestroyAtExit);
        }
    }

    /// Tier 3 and deep: a process holding these VMs' fds forked a child
    /// with a copy of its fd table; the kernel side followed the copies. A
    /// table larger than it follows into (fd -1): the child may hold fds it
    /// does not see, so the state of the parent's VMs is unknown.
    pub(super) fn vms_at_fork(&mut self, e: &Event) {
        let cap = self.cfg.timeline_cap;
        let Some(child) = e.child else { return };
        let past_bound = e.fd == Some(-1);
        for vm in self.vms.values_mut() {
            if !vm.holder_tgids.contains(&e.tgid) || vm.is_destroyed() {
                continue;
            }
            if vm.fds_inherited(e.tgid, child) {
                let step = seen(e, StepKind::FdInherited, 0, vm.users);
                vm.timeline.push(cap, step);
            }
            vm.file_shared |= past_bound;
        }
    }

    /// Tier 3: a holder of these VMs' fds (their creator, a forked child)
    /// exec'd. Their fds were made O_CLOEXEC and closed by the exec unseen; a
    /// dup without the flag is not known: each VM's state is unknown (never a
    /// zombie) until that process exits.
    pub(super) fn vms_at_exec(&mut self, e: &Event) {
        let cap = self.cfg.timeline_cap;
        if self.cfg.destroy_observable {
            return;
        }
        for vm in self.vms.values_mut() {
            if !vm.holder_tgids.contains(&e.tgid) || vm.is_destroyed() {
                continue;
            }
            vm.forget_tgid(e.tgid);
            vm.exec_tgids.insert(e.tgid);
            vm.exec_ns = Some(e.ts_ns);
            vm.timeline.push(cap, seen(e, StepKind::Exec, 0, vm.users));
        }
    }

    /// VMs whose fd was closed `zombie_after_ms` ago and that still live.
    /// Where destroys are hooked, not being destroyed by then is the
    /// evidence. At the tracepoint tier it is not: an unhooked destroy is
    /// inferred only from the closes kvscope sees (see `evidence_of_zombie`).
    pub(super) fn tick_zombies(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        let after_ns = self.cfg.zombie_after_ms * MS;
        let destroy_observable = self.cfg.destroy_observable;
        for vm in self.vms.values_mut() {
            let Some(closed) = vm.fd_closed_ns else {
                continue;
            };
            if vm.is_destroyed()
                || vm.zombie_reported
                || vm.blind_from_ns.is_some()
                || now_ns.saturating_sub(closed) < after_ns
            {
                continue;
            }
            if !destroy_observable && !vm.evidence_of_zombie(closed + after_ns) {
                continue;
            }
            vm.zombie_reported = true;
            let z = Zombie {
                vm: vm.obj(),
                closed_for_ns: now_ns - closed,
                after_ms: after_ns / 1_000_000,
                users: vm.users,
                holders: vm.holders_now(),
                recent: vm.timeline.recent(RECENT),
            };
            out.push(Finding::zombie_vm(now_ns, vm.creator, z));
        }
    }
}

impl Vm {
    /// Whether kvscope cannot know if the VM still lives: its file held by an
    /// fd it does not follow, a blind gap passed over it, or its creator
    /// exec'd (tier 3) and has not exited yet.
    pub fn state_unknown(&self) -> bool {
        self.file_shared || self.blind_from_ns.is_some() || self.exec_ns.is_some()
    }

    /// Tier 3: what shows the VM outlived its fd. Either a count above 0 read
    /// at or after `since`, or every reference left is held by an fd kvscope
    /// tracks (whose close it would see: the VM is alive because of it).
    /// References no tracked fd explains (an fd kvscope never saw made) or a
    /// file another fd holds leave the VM's state unknown: nothing is raised.
    fn evidence_of_zombie(&self, since: u64) -> bool {
        if self.state_unknown() || self.users.is_none_or(|u| u <= 0) {
            return false;
        }
        let read_since = self.last_read_ns.is_some_and(|t| t >= since);
        let all_known = self
            .holders_now()
            .iter()
            .all(|(h, _)| *h != Holder::Unattributed);
        read_since || all_known
    }
}

/// One fewer under `key`; the entry goes at zero.
fn decrement<K: Ord>(map: &mut BTreeMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}
