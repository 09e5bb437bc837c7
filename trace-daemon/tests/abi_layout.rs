//! The event ABI is shared with the kernel side and with recordings: its size
//! and every offset are pinned here, so a change is a deliberate ABI bump.
use std::mem::{align_of, offset_of, size_of};

use trace_common::{ABI_VERSION, Event, FdKey, ProbeConfig, WatchedLock};

#[test]
fn event_layout_is_pinned() {
    assert_eq!(size_of::<Event>(), 128);
    assert_eq!(align_of::<Event>(), 8);
    let offsets = [
        (offset_of!(Event, ts_ns), 0),
        (offset_of!(Event, pid_tgid), 8),
        (offset_of!(Event, kvm), 16),
        (offset_of!(Event, device), 24),
        (offset_of!(Event, group), 32),
        (offset_of!(Event, file), 40),
        (offset_of!(Event, lock), 48),
        (offset_of!(Event, ret), 56),
        (offset_of!(Event, arg), 64),
        (offset_of!(Event, users_count), 72),
        (offset_of!(Event, open_count), 76),
        (offset_of!(Event, fd), 80),
        (offset_of!(Event, stack_id), 84),
        (offset_of!(Event, cpu), 88),
        (offset_of!(Event, known), 92),
        (offset_of!(Event, hook), 96),
        (offset_of!(Event, phase), 98),
        (offset_of!(Event, lock_class), 99),
        (offset_of!(Event, comm), 100),
        (offset_of!(Event, lock_op), 116),
        (offset_of!(Event, fd_kind), 117),
        (offset_of!(Event, abi), 118),
        (offset_of!(Event, kvm_ops), 120),
    ];
    for (i, (got, want)) in offsets.iter().enumerate() {
        assert_eq!(got, want, "field #{i}");
    }
    // No implicit padding: the fields' sizes add up to the struct's.
    let sum = 10 * 8 + 6 * 4 + 2 + 1 + 1 + 16 + 1 + 1 + 2;
    assert_eq!(sum, size_of::<Event>());
    assert_eq!(Event::ZERO.abi, ABI_VERSION);
}

#[test]
fn config_and_map_value_layouts_are_pinned() {
    // 32 u32 fields, then two u64 addresses.
    assert_eq!(size_of::<ProbeConfig>(), 32 * 4 + 2 * 8);
    assert_eq!(offset_of!(ProbeConfig, kvm_vcpu_vcpu_id), 28 * 4);
    assert_eq!(offset_of!(ProbeConfig, fork_child_pid), 29 * 4);
    assert_eq!(offset_of!(ProbeConfig, file_f_op), 30 * 4);
    assert_eq!(offset_of!(ProbeConfig, task_stack), 31 * 4);
    assert_eq!(offset_of!(ProbeConfig, kvm_vcpu_stats_fops), 32 * 4);
    assert_eq!(offset_of!(ProbeConfig, kvm_vm_stats_fops), 32 * 4 + 8);
    assert_eq!(offset_of!(ProbeConfig, file_ref), 27 * 4);
    assert_eq!(offset_of!(ProbeConfig, mutex_owner), 23 * 4);
    assert_eq!(offset_of!(ProbeConfig, task_pid), 24 * 4);
    assert_eq!(offset_of!(ProbeConfig, exit_group_dead), 19 * 4);
    assert_eq!(offset_of!(ProbeConfig, filter_tgid), 20 * 4);
    assert_eq!(offset_of!(ProbeConfig, flags), 21 * 4);
    assert_eq!(offset_of!(ProbeConfig, self_tgid), 22 * 4);
    assert_eq!(size_of::<WatchedLock>(), 16);
    assert_eq!(offset_of!(WatchedLock, owner), 8);
    assert_eq!(size_of::<FdKey>(), 8);
}

#[test]
fn watch_hint_slots_stay_in_the_array_and_spread_neighbours() {
    use trace_common::{WATCH_HINT_SLOTS, watch_hint_slot};
    assert!(watch_hint_slot(u64::MAX) < WATCH_HINT_SLOTS);
    assert!(watch_hint_slot(0) < WATCH_HINT_SLOTS);
    // Mutexes of neighbouring objects (a slab of 4 KiB structs) land apart.
    let base = 0xffff_8881_0000_0000u64;
    let mut slots: Vec<u32> = (0..1024)
        .map(|i| watch_hint_slot(base + i * 4096 + 0x40))
        .collect();
    slots.sort();
    slots.dedup();
    assert!(slots.len() > 1000, "{} distinct slots of 1024", slots.len());
}
