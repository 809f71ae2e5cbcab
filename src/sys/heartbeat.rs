//! The heartbeat table: one 64-bit cell per worker slot, in a page of its own, in a shared
//! mapping of a sealed memfd made before the first worker starts.
//!
//! A worker stores `pid << 32 | milliseconds` into its slot's cell (an atomic store of a
//! vDSO clock reading, no system call); the master loads the cells on its timer. The pid in
//! the high half tells the master whose beat it is: a draining old worker of the same slot
//! writes its own pid, so it can neither mask nor stand in for its replacement.
//!
//! * Fork mode: a worker inherits the mapping, unmaps every page but its own slot's and
//!   closes nothing (it never held the memfd: the master's descriptors are dropped in the
//!   child).
//! * Exec mode: a worker gets the memfd on an inherited descriptor (see `docs/protocol.md`),
//!   checks it (sealed against shrinking, large enough), maps its own slot's page only and
//!   closes the descriptor.
//!
//! The memfd is sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): no process holding it
//! can truncate it under the master's mapping, which would make the master's next load a
//! `SIGBUS`.
//!
//! The clock is `CLOCK_MONOTONIC_COARSE` in milliseconds, truncated to 32 bits: it advances
//! in scheduler ticks (1 to 10 ms) and is read from the vDSO without entering the kernel.
//! Differences are taken modulo 2^32 ms (49.7 days), far longer than any timeout.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{NonNull, null_mut};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::time::{ClockId, clock_gettime};

/// How many slots have a cell: slots from this one on are not watched. TTIN would have to
/// add thousands of workers to reach it.
pub(crate) const SLOTS: usize = 4096;

/// This process's cell, once it is a worker with one; null otherwise.
static CELL: AtomicPtr<AtomicU64> = AtomicPtr::new(null_mut());

/// The size of a page, which is also the distance between two cells.
fn stride() -> usize {
    rustix::param::page_size()
}

/// `clock_gettime(CLOCK_MONOTONIC_COARSE)` in milliseconds, modulo 2^32 (from the vDSO).
#[inline]
pub(crate) fn now_ms() -> u32 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(t.tv_nsec as u64 / 1_000_000) as u32
}

/// A heartbeat as stored in a cell: the worker's pid and its clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Beat {
    pub(crate) pid: u32,
    pub(crate) ms: u32,
}

impl Beat {
    fn pack(self) -> u64 {
        (u64::from(self.pid) << 32) | u64::from(self.ms)
    }

    fn unpack(v: u64) -> Option<Beat> {
        (v != 0).then_some(Beat {
            pid: (v >> 32) as u32,
            ms: v as u32,
        })
    }
}

/// Stores this worker's heartbeat, if it has a cell: one clock reading from the vDSO and one
/// atomic store.
#[inline]
pub(crate) fn beat(pid: u32) {
    let cell = CELL.load(Ordering::Acquire);
    if cell.is_null() {
        return;
    }
    let v = Beat { pid, ms: now_ms() }.pack();
    // SAFETY: CELL is only ever set (by `install`) to the first 8 bytes of a page of a
    // shared mapping that this process never unmaps afterwards, aligned for an AtomicU64;
    // other processes access the cell only atomically as well.
    unsafe { (*cell).store(v, Ordering::Relaxed) };
}

fn install(cell: NonNull<AtomicU64>) {
    CELL.store(cell.as_ptr(), Ordering::Release);
}

/// The master's table: the memfd and the whole mapping.
pub(crate) struct Heartbeats {
    map: Mapping,
    fd: OwnedFd,
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly a mapping `map` made, and no reference into
        // it outlives the table that owns this (`Heartbeats::cell` borrows the table).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Heartbeats {
    /// `memfd_create(2)`, `ftruncate(2)`, `fcntl(F_ADD_SEALS)`, `mmap(2)`: a table of
    /// [`SLOTS`] cells, one page apart, zero-filled. Pages are allocated only as cells are
    /// touched, so the table costs one page per slot in use.
    pub(crate) fn create() -> io::Result<Heartbeats> {
        let fd = rustix::fs::memfd_create(
            "prefork-heartbeat",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let len = SLOTS * stride();
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let base = map(fd.as_fd(), len, 0)?;
        Ok(Heartbeats {
            map: Mapping { base, len },
            fd,
        })
    }

    /// The memfd, for an exec-mode worker's inherited descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn cell(&self, slot: usize) -> Option<&AtomicU64> {
        if slot >= SLOTS {
            return None;
        }
        // SAFETY: slot < SLOTS, so the offset lies inside the mapping, which lives as long
        // as `self`; it is page-aligned, hence aligned for an AtomicU64; every process
        // accesses the cell atomically only.
        Some(unsafe {
            &*self
                .map
                .base
                .as_ptr()
                .add(slot * stride())
                .cast::<AtomicU64>()
        })
    }

    /// The latest heartbeat stored in `slot`'s cell, if any.
    pub(crate) fn load(&self, slot: usize) -> Option<Beat> {
        Beat::unpack(self.cell(slot)?.load(Ordering::Relaxed))
    }

    /// Stores `beat` in `slot`'s cell, as a worker of that slot would.
    #[cfg(test)]
    pub(crate) fn store(&self, slot: usize, beat: Beat) {
        if let Some(cell) = self.cell(slot) {
            cell.store(beat.pack(), Ordering::Relaxed);
        }
    }

    /// Empties `slot`'s cell (before a new worker starts in it).
    pub(crate) fn clear(&self, slot: usize) {
        if let Some(cell) = self.cell(slot) {
            cell.store(0, Ordering::Relaxed);
        }
    }

    /// In a forked worker: keeps only `slot`'s page of the mapping, for good, makes it this
    /// process's cell, and closes the worker's copy of the memfd. A slot without a cell
    /// keeps nothing.
    pub(crate) fn into_worker(self, slot: usize) {
        let page = stride();
        let Heartbeats { map, fd } = self;
        // The memfd closes here; the mapping stays, for good.
        drop(fd);
        let (base, len) = (map.base, map.len);
        std::mem::forget(map);
        let keep = (slot < SLOTS).then(|| slot * page);
        let (before, after) = match keep {
            Some(at) => ((0, at), (at + page, len - at - page)),
            None => ((0, len), (len, 0)),
        };
        for (at, n) in [before, after] {
            if n > 0 {
                // SAFETY: the range lies inside the mapping this function took over (the
                // table is consumed and the mapping forgotten, so it is not unmapped
                // again); nothing in this process refers into it: the only references
                // handed out, by `cell`, borrowed the consumed table.
                let _ = unsafe { rustix::mm::munmap(base.as_ptr().add(at).cast(), n) };
            }
        }
        if let Some(at) = keep {
            // SAFETY: `at` is the offset of the page kept just above, inside the mapping.
            let cell = unsafe { base.as_ptr().add(at) }.cast::<AtomicU64>();
            install(NonNull::new(cell).expect("inside a mapping"));
        }
    }
}

/// `fcntl(F_GET_SEALS)`, `fstat(2)`, `mmap(2)`: in an exec-mode worker, maps the page of
/// `slot`'s cell from the inherited memfd `fd` and makes it this process's cell; `fd` is
/// closed. The descriptor must be a memfd sealed against shrinking and long enough to hold
/// the cell; otherwise nothing is mapped and the error says why.
pub(crate) fn adopt(fd: OwnedFd, slot: usize) -> Result<(), String> {
    let seals = rustix::fs::fcntl_get_seals(&fd)
        .map_err(|e| format!("it is not a sealable memfd ({e})"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err("it is not sealed against shrinking".to_owned());
    }
    let size = rustix::fs::fstat(&fd)
        .map_err(|e| format!("fstat: {e}"))?
        .st_size;
    let page = stride();
    let at = slot
        .checked_mul(page)
        .filter(|at| {
            at.checked_add(page)
                .is_some_and(|end| end as u64 <= size as u64)
        })
        .ok_or_else(|| format!("it is too short ({size} bytes) for worker {slot}'s cell"))?;
    let base = map(fd.as_fd(), page, at as u64).map_err(|e| format!("mmap: {e}"))?;
    install(base.cast());
    Ok(())
}

/// `mmap(2)`: a shared read-write mapping of `len` bytes of `fd` from `offset`.
fn map(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh mapping at an address the kernel chooses (null hint) overlaps nothing
    // this process uses; the memory is a file's, accessed only through atomics.
    let p = unsafe {
        rustix::mm::mmap(
            null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            offset,
        )
    }?;
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_pack_pid_high_and_milliseconds_low() {
        let b = Beat {
            pid: 4242,
            ms: 0xdead_beef,
        };
        assert_eq!(b.pack(), (4242u64 << 32) | 0xdead_beef);
        assert_eq!(Beat::unpack(b.pack()), Some(b));
        assert_eq!(Beat::unpack(0), None);
    }

    #[test]
    fn a_cell_is_shared_with_a_second_mapping_of_the_memfd() {
        let table = Heartbeats::create().expect("heartbeat table");
        assert_eq!(table.load(3), None);
        let dup = table.fd().try_clone_to_owned().expect("dup");
        let page = stride();
        let other = map(dup.as_fd(), page, (3 * page) as u64).expect("map slot 3");
        let cell = other.cast::<AtomicU64>();
        let beat = Beat { pid: 77, ms: 1234 };
        // SAFETY: the page was just mapped and is unmapped below; access is atomic.
        unsafe { cell.as_ref() }.store(beat.pack(), Ordering::Relaxed);
        assert_eq!(table.load(3), Some(beat));
        assert_eq!(table.load(2), None);
        table.clear(3);
        assert_eq!(table.load(3), None);
        assert_eq!(table.load(SLOTS), None);
        // SAFETY: the page mapped above; no reference to it remains.
        unsafe { rustix::mm::munmap(other.as_ptr().cast(), page) }.expect("munmap");
    }

    #[test]
    fn the_memfd_cannot_shrink() {
        let table = Heartbeats::create().expect("heartbeat table");
        assert!(rustix::fs::ftruncate(table.fd(), 0).is_err());
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ms();
        let b = now_ms();
        assert!(b.wrapping_sub(a) < 1000, "{a} then {b}");
    }
}
