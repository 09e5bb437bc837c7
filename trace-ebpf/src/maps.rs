//! Maps shared by all programs. Names are `trace_common::maps` constants.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use trace_common::{DROP_CAUSES, FdKey, HOOK_SLOTS, WATCH_HINT_SLOTS, WatchedLock};

/// Events to user space. Size is overridable at load (`--ring-bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(trace_common::DEFAULT_RING_BYTES, 0);

/// Bytes waiting in `EVENTS` as of the last event (BPF_RB_AVAIL_DATA): the
/// daemon's fill-level gauge.
#[map]
pub static RING_FILL: Array<u64> = Array::with_max_entries(1, 0);

/// Failed ring-buffer reservations per hook (index: `HookId as u32`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(HOOK_SLOTS, 0);

/// Counters per cause and hook (`trace_common::DropCause`, `drop_slot`).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_CAUSES * HOOK_SLOTS, 0);

/// Watched lock addresses, filled by the path hooks (and by user space for global
/// locks). LRU: bounded without anyone having to remove dead objects' locks.
#[map]
pub static WATCHED: LruHashMap<u64, WatchedLock> = LruHashMap::with_max_entries(8192, 0);

/// One flag per hashed watched-lock address (`trace_common::watch_hint_slot`),
/// set with `WATCHED` inserts: the mutex hooks test it before the hash lookup.
#[map]
pub static WATCH_HINT: Array<u64> = Array::with_max_entries(WATCH_HINT_SLOTS, 0);

#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Entry arguments of an in-flight call, for the kretprobe flavour (which has no
/// arguments) and for sys_exit_ioctl. Key: (pid_tgid, hook id).
#[map]
pub static ARG_STASH: HashMap<StashKey, [u64; 3]> = HashMap::with_max_entries(16384, 0);

/// Tier 3: fds of interest per thread group, so that close(2) of them is reported.
#[map]
pub static TRACKED_FDS: LruHashMap<FdKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// Tier 3 and deep: the `f_op` of each kind of file kvscope saw an fd of
/// made (KVM_CREATE_VM, KVM_CREATE_VCPU, ...), and that kind: a file passed
/// to another process (SCM_RIGHTS, pidfd_getfd) is known by it.
#[map]
pub static TRACKED_FOPS: HashMap<u64, u8> = HashMap::with_max_entries(16, 0);

/// Tier 3: thread groups that own tracked fds, so that their exit is reported.
#[map]
pub static TRACKED_TGIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// The VFIO device a thread is releasing (set at vfio_device_fops_release's
/// entry, removed at its exit): where kvm_destroy_vm, reached from that
/// release, finds the VFIO locks whose owner words to read. Key: pid_tgid.
#[map]
pub static PATH_CTX: LruHashMap<u64, PathCtx> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PathCtx {
    pub device: u64,
    pub group: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub hook: u64,
}
