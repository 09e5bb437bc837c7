//! Building and sending events, and registering watched locks.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    programs::tracing::StackIdContext,
};
use trace_common::{
    DropCause, Event, FdKind, HookId, LockClass, Phase, WatchedLock, config_flags, drop_slot, known,
};

use crate::{
    config::conf,
    kread::{field_addr, i32_at, ptr_at},
    maps::{DROPS, EVENTS, LOST, RING_FILL, STACKS, WATCH_HINT, WATCHED},
};

/// bpf_map_update_elem flag: create only.
pub const BPF_NOEXIST: u64 = 1;

/// False when the `--pid` filter excludes the current thread group.
#[inline(always)]
pub fn wanted() -> bool {
    let filter = conf!(filter_tgid);
    filter == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == filter
}

#[inline(always)]
pub fn new_event(hook: HookId, phase: Phase) -> Event {
    let mut e = Event::ZERO;
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    e.pid_tgid = bpf_get_current_pid_tgid();
    e.cpu = unsafe { bpf_get_smp_processor_id() };
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    e.hook = hook as u16;
    e.phase = phase as u8;
    e
}

/// Sets the VM and reads its `users_count` now (gets are partly inlined on real
/// kernels, so every event carrying a kvm reads the count).
#[inline(always)]
pub fn set_kvm(e: &mut Event, kvm: u64) {
    if kvm == 0 {
        return;
    }
    e.kvm = kvm;
    e.known |= known::KVM;
    if let Some(c) = i32_at(kvm, conf!(kvm_users_count)) {
        e.users_count = c;
        e.known |= known::USERS;
    }
}

/// Sets the VFIO device with its open_count, group and (where the field exists)
/// the kvm it borrows or holds.
#[inline(always)]
pub fn set_device(e: &mut Event, dev: u64) {
    if dev == 0 {
        return;
    }
    e.device = dev;
    e.known |= known::DEVICE;
    if let Some(c) = i32_at(dev, conf!(vfio_device_open_count)) {
        e.open_count = c;
        e.known |= known::OPEN;
    }
    if let Some(g) = ptr_at(dev, conf!(vfio_device_group))
        && g != 0
    {
        e.group = g;
        e.known |= known::GROUP;
    }
    if e.known & known::KVM == 0
        && let Some(k) = ptr_at(dev, conf!(vfio_device_kvm))
    {
        set_kvm(e, k);
    }
    // The patched stack: whether this device's driver set kvm_ops decides
    // whether VFIO calls its get_kvm/put_kvm.
    if let Some(ops) = ptr_at(dev, conf!(vfio_device_kvm_ops)) {
        e.kvm_ops = ops;
        e.known |= known::KVM_OPS;
    }
}

#[inline(always)]
pub fn set_ret(e: &mut Event, ret: Option<i64>) {
    if let Some(r) = ret {
        e.ret = r;
        e.known |= known::RET;
    }
}

#[inline(always)]
pub fn set_file(e: &mut Event, file: u64) {
    if file != 0 {
        e.file = file;
        e.known |= known::FILE;
    }
}

/// What kind of fd (or file) the event is about.
#[inline(always)]
pub fn set_fd_kind(e: &mut Event, kind: FdKind) {
    e.fd_kind = kind as u8;
    e.known |= known::FD_KIND;
}

#[inline(always)]
pub fn set_fd(e: &mut Event, fd: i32) {
    e.fd = fd;
    e.known |= known::FD;
}

/// Whether a hook whose call path the surrounding events name takes a stack
/// ([`config_flags::EVERY_STACK`]).
#[inline(always)]
pub fn every_stack() -> bool {
    conf!(flags) & config_flags::EVERY_STACK != 0
}

/// Sends the event; counts a failed reservation against its hook, since user
/// space would otherwise never learn of it.
#[inline(always)]
pub fn submit<C: EbpfContext + StackIdContext>(ctx: &C, mut e: Event, want_stack: bool) {
    let flags = conf!(flags);
    let stacks = if e.lock_op != 0 {
        flags & config_flags::LOCK_STACKS != 0
    } else {
        flags & config_flags::STACKS != 0
    };
    if want_stack && stacks {
        match ctx.get_stackid(&STACKS, 0) {
            Ok(id) => {
                e.stack_id = id as i32;
                e.known |= known::STACK;
            }
            Err(_) => count_drop(DropCause::StackId, e.hook as u32),
        }
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            slot.write(e);
            slot.submit(0);
        }
        None => count_lost(e.hook as u32),
    }
    if let Some(p) = RING_FILL.get_ptr_mut(0) {
        // BPF_RB_AVAIL_DATA = 0
        unsafe { *p = EVENTS.query(0) };
    }
}

#[inline(always)]
pub fn count_lost(hook: u32) {
    if let Some(p) = LOST.get_ptr_mut(hook) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_drop(cause: DropCause, hook: u32) {
    if let Some(p) = DROPS.get_ptr_mut(drop_slot(cause, hook)) {
        unsafe { *p += 1 };
    }
}

/// Starts watching the mutex at `&obj->field` as `class`.
#[inline(always)]
pub fn watch(obj: u64, off: u32, class: LockClass) {
    if let Some(addr) = field_addr(obj, off) {
        let v = WatchedLock {
            class: class as u8,
            _pad: [0; 7],
            owner: obj,
        };
        // Most calls find it watched already: a lookup, not two updates
        // (an LRU update allocates an element and frees the old one).
        if unsafe { WATCHED.get(addr) }.is_some_and(|w| *w == v) {
            return;
        }
        // LRU map: an insert never fails for lack of room, it evicts; new
        // entries are counted so that user space can count the evictions.
        if WATCHED.insert(addr, v, BPF_NOEXIST).is_ok() {
            count_drop(DropCause::WatchedNew, 0);
        } else {
            let _ = WATCHED.insert(addr, v, 0);
        }
        if let Some(p) = WATCH_HINT.get_ptr_mut(trace_common::watch_hint_slot(addr)) {
            unsafe { p.write_volatile(1) };
        }
    }
}

/// The watched lock at `addr`, if any: the hint bit first (an inlined array
/// read), the hash lookup only when it is set.
#[inline(always)]
pub fn watched(addr: u64) -> Option<WatchedLock> {
    match WATCH_HINT.get(trace_common::watch_hint_slot(addr)) {
        Some(f) if *f != 0 => unsafe { WATCHED.get(addr) }.copied(),
        _ => None,
    }
}

/// Watches every lock reachable from a VFIO device: its group's group_lock, its
/// dev_set's lock, and the lock of the kvm it carries.
#[inline(always)]
pub fn watch_device_locks(e: &Event) {
    if e.group != 0 {
        watch(
            e.group,
            conf!(vfio_group_group_lock),
            LockClass::VfioGroupLock,
        );
    }
    if let Some(set) = ptr_at(e.device, conf!(vfio_device_dev_set)) {
        watch(set, conf!(vfio_device_set_lock), LockClass::VfioDevSetLock);
    }
    if e.kvm != 0 {
        watch(e.kvm, conf!(kvm_lock), LockClass::KvmLock);
    }
}
