//! Handing freed heap back to the kernel.
//!
//! Attaching parses tens of MB (kernel BTF, two kallsyms tables) that are
//! freed once the programs are in; glibc keeps freed memory in its arenas
//! (one per thread that allocated), so without this an idle agent stays at
//! its start-up peak. Called at the points where a large free just happened.

/// Large allocations (BTF and kallsyms buffers, their tables as they grow)
/// get their own mappings, unmapped when freed. glibc's default threshold
/// rises to 32 MiB after the first such free, which would put the next
/// parse's buffers into an arena, where the little that outlives them pins
/// the pages. One arena: each attach (again, after a module change) runs in
/// threads of its own, and with an arena per thread every session's
/// long-lived data pinned pages in another one (the host lab's daemon grew
/// by 18 MiB of heap over its module changes). kvscope's few threads do not
/// contend for it. Called first in main, before any thread.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets allocator parameters; no allocation is in flight.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free pages of every malloc arena to the kernel.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
