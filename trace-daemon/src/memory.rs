//! Handing freed heap back to the kernel.
//!
//! Attaching parses tens of MB (kernel BTF, two kallsyms tables) that are
//! freed once the programs are in; glibc keeps freed memory in its arenas
//! (one per thread that allocated), so without this an idle agent stays at
//! its start-up peak. Called at the points where a large free just happened,
//! and at a tick once enough was allocated or freed since the last time (the
//! host lab's daemon stayed 9 MiB above its idle size after a re-attach, with
//! the bytes in use the same: the old session was freed after the new one's
//! trim, and nothing trimmed again).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

/// Bytes allocated or freed so far (never decreases): what tells an idle
/// tick that the heap was worked since the last trim. Frees count: an old
/// session dropped after the new one trimmed leaves its pages resident and
/// free. One relaxed add per call.
static WORKED: AtomicU64 = AtomicU64::new(0);
/// `WORKED` at the last trim.
static TRIMMED_AT: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting the bytes it hands out and takes back.
/// The binary's `#[global_allocator]`.
pub struct Counting;

// SAFETY: every call is passed through to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        WORKED.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        WORKED.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        WORKED.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        WORKED.fetch_add((layout.size() + new_size) as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// At a tick: trims when at least this much was allocated or freed since
/// the last trim (a scrape allocates tens of KiB; one trim costs well under a
/// millisecond).
const TRIM_AFTER_BYTES: u64 = 1 << 20;

/// Trims if the heap was worked since the last trim (see `TRIM_AFTER_BYTES`);
/// whether it did.
pub fn give_back_if_worked() -> bool {
    let worked = WORKED
        .load(Relaxed)
        .saturating_sub(TRIMMED_AT.load(Relaxed));
    if worked < TRIM_AFTER_BYTES {
        return false;
    }
    give_back();
    true
}

/// Large allocations (BTF and kallsyms buffers, their tables as they grow)
/// get their own mappings, unmapped when freed. glibc's default threshold
/// rises to 32 MiB after the first such free, which would put the next
/// parse's buffers into an arena, where the little that outlives them pins
/// the pages. One arena: each attach (again, after a module change) runs in
/// threads of its own, and with an arena per thread every session's
/// long-lived data pinned pages in another one (the host lab's daemon grew
/// by 18 MiB of heap over its module changes). kvscope's few threads do not
/// contend for it. No transparent huge pages: where THP is `always`
/// (Debian's kernels), a trimmed heap's 2 MiB ranges fill up again, a huge
/// page faulted in or khugepaged collapsing around the few pages still
/// touched (the host lab's 6.12 daemon: 7 MiB more anonymous memory than
/// its heap held). Called first in main, before any thread.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets allocator parameters; no allocation is in flight.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        let was = libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0);
        THP_DISABLED_BEFORE.store(was == 1, Relaxed);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Whether THP was already off for kvscope when it started (set by its
/// parent): what a command it runs gets back.
static THP_DISABLED_BEFORE: AtomicBool = AtomicBool::new(false);

/// Between fork and exec of a command kvscope runs for the user: the THP
/// setting kvscope started with, not the one it chose for itself (the
/// setting is inherited through fork and exec). Async-signal-safe.
pub fn restore_for_child() {
    let before = libc::c_ulong::from(THP_DISABLED_BEFORE.load(Relaxed));
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, before, 0, 0, 0) };
}

/// Returns the free pages of every malloc arena to the kernel, and says
/// (`--log debug`) what the heap holds after: in use, free but kept by the
/// allocator, in mappings of their own. Growth that is "in use" is data
/// kvscope keeps; "free" is fragmentation.
pub fn give_back() {
    TRIMMED_AT.store(WORKED.load(Relaxed), Relaxed);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim and mallinfo2 only walk the allocator's own lists.
    unsafe {
        libc::malloc_trim(0);
        if log::log_enabled!(log::Level::Debug) {
            let m = libc::mallinfo2();
            log::debug!(
                "heap: {} KiB in use, {} KiB free in the arena, {} KiB in {} mappings",
                m.uordblks >> 10,
                m.fordblks >> 10,
                m.hblkhd >> 10,
                m.hblks
            );
        }
    }
}
