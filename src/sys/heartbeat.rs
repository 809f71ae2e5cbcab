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

#![allow(unsafe_code)]

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{NonNull, null_mut};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::time::{ClockId, clock_gettime};

use super::Pid;

/// How many slots have a cell: slots from this one on are not watched. TTIN would have to
/// add thousands of workers to reach it.
pub(crate) const SLOTS: usize = 4096;

/// This process's cell, once it is a worker with one.
static CELL: OnceLock<&'static AtomicU64> = OnceLock::new();

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
    pub(crate) pid: Pid,
    pub(crate) ms: u32,
}

impl Beat {
    fn pack(self) -> u64 {
        (u64::from(self.pid.get()) << 32) | u64::from(self.ms)
    }

    /// `None` for an empty cell (0), and for one whose high half is no pid.
    fn unpack(v: u64) -> Option<Beat> {
        Some(Beat {
            pid: Pid::new((v >> 32) as u32)?,
            ms: v as u32,
        })
    }
}

/// Stores this worker's heartbeat, if it has a cell: one clock reading from the vDSO and one
/// atomic store.
#[inline]
pub(crate) fn beat(pid: Pid) {
    if let Some(cell) = CELL.get() {
        cell.store(Beat { pid, ms: now_ms() }.pack(), Ordering::Relaxed);
    }
}

/// A shared read-write mapping of a file (`mmap(2)`), seen as [`AtomicU64`] cells and unmapped
/// when dropped. Its memory is reached only through [`Mapping::cell`], which borrows the
/// mapping, so a cell cannot outlive it, and every process that maps the file accesses it
/// atomically. This type holds the heartbeat table's `unsafe`: the `mmap` (with the view of
/// its memory as cells) and the `munmap`.
struct Mapping {
    /// The mapping's memory, whole. `'static` only because no lifetime names "until this
    /// value is dropped": it is never copied out of the value; [`Mapping::cell`] reborrows it
    /// for as long as `&self`, [`Mapping::split_at`] hands its parts to the new values, and
    /// only [`Mapping::install`], which forgets the value so that it is never unmapped,
    /// keeps a cell for good.
    cells: &'static [AtomicU64],
}

impl Mapping {
    /// `mmap(2)`: a shared read-write mapping of `len` bytes of `fd` from `offset` (`len` a
    /// multiple of 8, as every mapping here is of whole pages).
    fn new(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mapping> {
        if len % size_of::<AtomicU64>() != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint) overlaps
        // nothing this process uses. On success it is `len` bytes, readable and writable,
        // at a non-null (checked) and page-aligned (so 8-aligned) address, and stays mapped
        // until `drop` unmaps it:
        // the slice of `len / 8` cells over it is valid as long as the `Mapping` lives, and
        // no longer (see `cells`). The memory is a file's, which other processes map too and
        // change under us: an atomic allows that, and nothing here accesses it other than
        // through these atomics. Any bit pattern is a valid `AtomicU64`.
        let cells = unsafe {
            let p = rustix::mm::mmap(
                null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )?;
            let p = NonNull::new(p.cast::<AtomicU64>())
                .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
            std::slice::from_raw_parts(p.as_ptr(), len / size_of::<AtomicU64>())
        };
        Ok(Mapping { cells })
    }

    /// The length in bytes.
    fn len(&self) -> usize {
        size_of_val(self.cells)
    }

    /// The cell at byte `at`: `None` unless the 8 bytes there lie inside the mapping and are
    /// aligned for an `AtomicU64`.
    fn cell(&self, at: usize) -> Option<&AtomicU64> {
        if at % align_of::<AtomicU64>() != 0 {
            return None;
        }
        self.cells.get(at / size_of::<AtomicU64>())
    }

    /// Splits the mapping at byte `at` (a multiple of the page size, at most `len`) into the
    /// part before and the part from `at`, each unmapped on its own when dropped. No system
    /// call.
    fn split_at(self, at: usize) -> (Mapping, Mapping) {
        let at = at.min(self.len()) / size_of::<AtomicU64>();
        let this = ManuallyDrop::new(self);
        let (before, rest) = this.cells.split_at(at);
        (Mapping { cells: before }, Mapping { cells: rest })
    }

    /// Keeps the mapping for the rest of the process (it is never unmapped) and makes its
    /// first cell this process's cell.
    fn install(self) {
        let kept = ManuallyDrop::new(self);
        if let Some(cell) = kept.cells.first() {
            let _ = CELL.set(cell);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.cells.is_empty() {
            return;
        }
        // SAFETY: the cells are exactly a mapping `new` made, or a part of one that
        // `split_at` gave to this value alone (parts start at a page boundary); no cell
        // borrowed from it is left (`cell` borrows `self`), and the slice is not used again.
        let _ = unsafe { rustix::mm::munmap(self.cells.as_ptr().cast_mut().cast(), self.len()) };
    }
}

/// The master's table: the memfd and the whole mapping.
pub(crate) struct Heartbeats {
    map: Mapping,
    fd: OwnedFd,
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
        let map = Mapping::new(fd.as_fd(), len, 0)?;
        Ok(Heartbeats { map, fd })
    }

    /// The memfd, for an exec-mode worker's inherited descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn cell(&self, slot: usize) -> Option<&AtomicU64> {
        self.map.cell(slot.checked_mul(stride())?)
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
        drop(fd);
        if slot >= SLOTS {
            return;
        }
        // Every page but the slot's is unmapped as its part is dropped.
        let (_before, rest) = map.split_at(slot * page);
        let (kept, _after) = rest.split_at(page);
        kept.install();
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
    Mapping::new(fd.as_fd(), page, at as u64)
        .map_err(|e| format!("mmap: {e}"))?
        .install();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u32) -> Pid {
        Pid::new(n).expect("a pid")
    }

    #[test]
    fn beats_pack_pid_high_and_milliseconds_low() {
        let b = Beat {
            pid: pid(4242),
            ms: 0xdead_beef,
        };
        assert_eq!(b.pack(), (4242u64 << 32) | 0xdead_beef);
        assert_eq!(Beat::unpack(b.pack()), Some(b));
        assert_eq!(Beat::unpack(0), None);
        // A high half that is no pid (0, or above i32::MAX) is no beat.
        assert_eq!(Beat::unpack(0xdead_beef), None);
        assert_eq!(Beat::unpack((1u64 << 63) | 7), None);
    }

    #[test]
    fn a_cell_is_shared_with_a_second_mapping_of_the_memfd() {
        let table = Heartbeats::create().expect("heartbeat table");
        assert_eq!(table.load(3), None);
        let dup = table.fd().try_clone_to_owned().expect("dup");
        let page = stride();
        let other = Mapping::new(dup.as_fd(), page, (3 * page) as u64).expect("map slot 3");
        let beat = Beat {
            pid: pid(77),
            ms: 1234,
        };
        other
            .cell(0)
            .expect("a cell")
            .store(beat.pack(), Ordering::Relaxed);
        assert_eq!(table.load(3), Some(beat));
        assert_eq!(table.load(2), None);
        table.clear(3);
        assert_eq!(table.load(3), None);
        assert_eq!(table.load(SLOTS), None);
        assert!(other.cell(page - 4).is_none() && other.cell(page).is_none());
    }

    #[test]
    fn split_parts_keep_their_cells_and_unmap_on_their_own() {
        let table = Heartbeats::create().expect("heartbeat table");
        let page = stride();
        table.store(2, Beat { pid: pid(5), ms: 6 });
        let other = Mapping::new(table.fd(), 4 * page, 0).expect("map four pages");
        let (before, rest) = other.split_at(2 * page);
        let (kept, after) = rest.split_at(page);
        assert_eq!(
            (before.len(), kept.len(), after.len()),
            (2 * page, page, page)
        );
        drop((before, after));
        let cell = kept.cell(0).expect("slot 2's cell");
        assert_eq!(
            Beat::unpack(cell.load(Ordering::Relaxed)),
            Some(Beat { pid: pid(5), ms: 6 })
        );
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
