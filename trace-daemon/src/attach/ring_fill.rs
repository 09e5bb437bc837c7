//! How full the event ring buffer is now: its consumer and producer positions,
//! read from a read-only mapping of the map's two position pages. A scrape
//! reads it at any moment (an idle ring reads 0, not the value of the last
//! event).
use std::os::fd::RawFd;

pub struct RingFill {
    base: *mut libc::c_void,
    page: usize,
    ring_bytes: u64,
}

// SAFETY: the mapping is read-only and only read with atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the consumer and producer pages of the ring buffer map `fd`.
    pub fn map(fd: RawFd, ring_bytes: u32) -> std::io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new shared read-only mapping of the map's first two
        // pages (consumer, producer), as the kernel lays a ringbuf out.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingFill {
            base,
            page,
            ring_bytes: u64::from(ring_bytes),
        })
    }

    /// Unread bytes over the ring's size.
    pub fn now(&self) -> f64 {
        // SAFETY: both words lie in the live mapping, 8-byte aligned; the
        // kernel and the reader update them atomically.
        let (consumer, producer) = unsafe {
            let c = &*(self.base as *const std::sync::atomic::AtomicU64);
            let p =
                &*((self.base as *const u8).add(self.page) as *const std::sync::atomic::AtomicU64);
            (
                c.load(std::sync::atomic::Ordering::Acquire),
                p.load(std::sync::atomic::Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer) as f64 / self.ring_bytes.max(1) as f64
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}
