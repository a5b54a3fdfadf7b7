//! How full the event ring buffer is: the kernel's own producer and consumer positions.
//!
//! aya's `RingBuf` reads these positions but does not expose them, so the agent maps the two
//! metadata pages of the ring a second time, read-only (the kernel allows any read-only mapping
//! of a ring buffer; only the consumer page may be mapped writable, and aya holds that one).
//! `producer - consumer` is the number of bytes written (records, their 8-byte headers and
//! padding) that the agent has not read yet: exactly what decides whether the next event fits.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};

/// A read-only mapping of a ring buffer's consumer and producer pages.
pub struct RingFill {
    pages: NonNull<libc::c_void>,
    page_size: usize,
    capacity: u64,
}

// SAFETY: the mapping is read-only and only read through atomics; it is not tied to a thread.
unsafe impl Send for RingFill {}
// SAFETY: as above: shared reads of atomics only.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the positions of the ring buffer `fd` whose data area is `capacity` bytes.
    pub fn new(fd: BorrowedFd<'_>, capacity: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("sysconf(_SC_PAGESIZE) failed"))?;
        // SAFETY: a fresh shared read-only mapping of two pages of a ring buffer map fd at offset
        // 0 (consumer page, then producer page); nothing else refers to the returned address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page_size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = NonNull::new(addr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self {
            pages,
            page_size,
            capacity: u64::from(capacity),
        })
    }

    fn position(&self, page: usize) -> u64 {
        // SAFETY: the page lies inside the two-page mapping, is page-aligned (so aligned for an
        // AtomicUsize), and the kernel updates the position at its start atomically.
        let pos = unsafe {
            self.pages
                .byte_add(page * self.page_size)
                .cast::<AtomicUsize>()
                .as_ref()
        };
        pos.load(Ordering::Acquire) as u64
    }

    /// Bytes written and not yet read.
    pub fn used_bytes(&self) -> u64 {
        let consumer = self.position(0);
        let producer = self.position(1);
        producer.wrapping_sub(consumer).min(self.capacity)
    }

    /// `used_bytes / capacity`.
    pub fn ratio(used: u64, capacity: u64) -> f64 {
        if capacity == 0 {
            0.0
        } else {
            used as f64 / capacity as f64
        }
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing else references.
        unsafe {
            libc::munmap(self.pages.as_ptr(), 2 * self.page_size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_an_empty_and_a_full_ring() {
        assert_eq!(RingFill::ratio(0, 4096), 0.0);
        assert_eq!(RingFill::ratio(4096, 4096), 1.0);
        assert_eq!(RingFill::ratio(1, 0), 0.0);
    }
}
