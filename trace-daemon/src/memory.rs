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
/// the pages. Called first in main, before any thread.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets an allocator parameter; no allocation is in flight.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
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
