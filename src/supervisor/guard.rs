//! The crash-loop guard: counts boot failures and says when more than `threshold` of them fell
//! within `window`, in storage sized once, when it is built.
//!
//! Memory must not grow with the number of exits, whatever their rate, the window and the
//! threshold: a fleet whose workers exit at once, under a threshold set out of the way, goes
//! through thousands of exits a second for as long as it runs.
//!
//! * Up to [`EXACT_UP_TO`], the guard keeps the instants of the counted exits still inside the
//!   window, at most `threshold` of them (one more is the verdict), in a ring allocated once.
//!   An exit it does not count stores nothing.
//! * Above it, the window is counted in [`SLICES`] slices of equal length, one counter each: an
//!   exit counts while its slice reaches into the window. Every exit of the last `window` is
//!   counted, and some up to one slice older may be (a window longer by at most
//!   1/[`SLICES`]): the guard stops a boot loop as soon as the exact rule would, or a little
//!   sooner. A threshold that high serves to keep the guard out of the way; keeping the
//!   instants of a million exits (16 MB) would not.
//!
//! The reference model (`model.rs`) states both rules by brute force over every counted exit.

use std::time::Duration;

use super::{CountedExit, REPORTED_EXITS};

/// The largest threshold judged from the exits' instants (16 KiB of them at most).
pub(crate) const EXACT_UP_TO: usize = 1024;

/// How many slices the window is counted in above [`EXACT_UP_TO`] (8 KiB of counters).
pub(crate) const SLICES: u32 = 1024;

/// Counters kept: the slices a window can touch, `SLICES + 1`, and the one it is leaving.
const KEPT_SLICES: usize = SLICES as usize + 2;

/// The crash-loop guard. See the module docs.
#[derive(Debug)]
pub(crate) struct Guard {
    threshold: usize,
    window: Duration,
    counts: Counts,
    /// The latest counted exits since the guard last tripped, for the report.
    latest: Latest,
}

#[derive(Debug)]
enum Counts {
    /// The instants of the counted exits inside the window, oldest first.
    Exact(Instants),
    /// Counted exits per slice of `width` nanoseconds, in a ring indexed by slice number
    /// modulo its length; `newest` is the slice of the latest counted exit.
    Sliced {
        width: u128,
        newest: u128,
        per_slice: Box<[u64]>,
    },
}

/// The guard's verdict on a counted exit that was one too many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tripped {
    /// How many counted exits fell within the window (`threshold + 1`).
    pub(crate) count: usize,
    /// The latest of them, oldest first, at most [`REPORTED_EXITS`].
    pub(crate) latest: Vec<CountedExit>,
}

impl Guard {
    pub(crate) fn new(threshold: usize, window: Duration) -> Guard {
        let counts = if threshold <= EXACT_UP_TO {
            Counts::Exact(Instants::with_capacity(threshold))
        } else {
            Counts::Sliced {
                width: slice_width(window),
                newest: 0,
                per_slice: vec![0; KEPT_SLICES].into_boxed_slice(),
            }
        };
        Guard {
            threshold,
            window,
            counts,
            latest: Latest::default(),
        }
    }

    /// Counts a boot failure at `now`; returns the verdict when it is one too many, and then
    /// starts over with nothing counted.
    pub(crate) fn count(&mut self, now: Duration, exit: CountedExit) -> Option<Tripped> {
        if self.window.is_zero() {
            // Nothing stays inside an empty window, the exit just counted included.
            return None;
        }
        self.latest.push(exit);
        let count = match &mut self.counts {
            Counts::Exact(instants) => {
                while instants
                    .front()
                    .is_some_and(|t| now.saturating_sub(t) >= self.window)
                {
                    instants.pop_front();
                }
                if instants.len() < self.threshold {
                    instants.push_back(now);
                    return None;
                }
                instants.len() + 1
            }
            Counts::Sliced {
                width,
                newest,
                per_slice,
            } => {
                let ring = per_slice.len() as u128;
                let current = now.as_nanos() / *width;
                if current > *newest {
                    if current - *newest >= ring {
                        per_slice.fill(0);
                    } else {
                        for s in *newest + 1..=current {
                            per_slice[(s % ring) as usize] = 0;
                        }
                    }
                    *newest = current;
                }
                let at = (*newest % ring) as usize;
                per_slice[at] = per_slice[at].saturating_add(1);
                let oldest =
                    first_slice(now, self.window, *width).max((*newest + 1).saturating_sub(ring));
                let total = in_window(per_slice, oldest, *newest);
                match usize::try_from(total) {
                    Ok(n) if n > self.threshold => n,
                    _ => return None,
                }
            }
        };
        let latest = self.latest.newest(count);
        self.latest.clear();
        match &mut self.counts {
            Counts::Exact(instants) => instants.clear(),
            Counts::Sliced { per_slice, .. } => per_slice.fill(0),
        }
        Some(Tripped { count, latest })
    }

    /// How many counted exits the window ending at `now` holds (`now` no earlier than the
    /// latest counted exit).
    #[cfg(test)]
    pub(crate) fn counted(&self, now: Duration) -> usize {
        match &self.counts {
            Counts::Exact(instants) => (0..instants.len)
                .map(|i| instants.buf[(instants.head + i) % instants.buf.len()])
                .filter(|&t| now.saturating_sub(t) < self.window)
                .count(),
            Counts::Sliced {
                width,
                newest,
                per_slice,
            } => {
                let ring = per_slice.len() as u128;
                let first =
                    first_slice(now, self.window, *width).max((*newest + 1).saturating_sub(ring));
                in_window(per_slice, first, *newest) as usize
            }
        }
    }

    /// The bytes the guard holds on the heap; fixed when it is built.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        let counts = match &self.counts {
            Counts::Exact(instants) => instants.buf.capacity() * size_of::<Duration>(),
            Counts::Sliced { per_slice, .. } => per_slice.len() * size_of::<u64>(),
        };
        counts + self.latest.buf.capacity() * size_of::<CountedExit>()
    }

    /// The latest counted exit since the guard last tripped.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<CountedExit> {
        self.latest.newest(1).pop()
    }
}

/// The length of one slice of `window`, in nanoseconds: `SLICES` of them cover it.
pub(crate) fn slice_width(window: Duration) -> u128 {
    window.as_nanos().div_ceil(u128::from(SLICES)).max(1)
}

/// The first slice that reaches into the window ending at `now` (`now - window` included, a
/// slice at most earlier than the exact rule).
pub(crate) fn first_slice(now: Duration, window: Duration, width: u128) -> u128 {
    now.checked_sub(window)
        .map_or(0, |start| start.as_nanos() / width)
}

/// The sum of the counters of slices `first..=last` (at most the ring's length of them).
fn in_window(per_slice: &[u64], first: u128, last: u128) -> u64 {
    let ring = per_slice.len() as u128;
    let Some(n) = (last + 1).checked_sub(first) else {
        return 0;
    };
    let (after, before) = per_slice.split_at((first % ring) as usize);
    before
        .iter()
        .chain(after)
        .take(n.min(ring) as usize)
        .fold(0, |sum, &c| sum.saturating_add(c))
}

/// A queue of instants in a ring whose capacity is fixed when it is made.
#[derive(Debug)]
struct Instants {
    buf: Vec<Duration>,
    head: usize,
    len: usize,
}

impl Instants {
    fn with_capacity(capacity: usize) -> Instants {
        Instants {
            buf: vec![Duration::ZERO; capacity],
            head: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn front(&self) -> Option<Duration> {
        (self.len > 0).then(|| self.buf[self.head])
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % self.buf.len();
            self.len -= 1;
        }
    }

    /// Appends `t`; the caller checked there is room.
    fn push_back(&mut self, t: Duration) {
        let at = (self.head + self.len) % self.buf.len();
        self.buf[at] = t;
        self.len += 1;
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// The last [`REPORTED_EXITS`] counted exits, in a ring: filled in order, then each new one
/// takes the oldest one's place, at `next`.
#[derive(Debug)]
struct Latest {
    buf: Vec<CountedExit>,
    next: usize,
}

impl Default for Latest {
    fn default() -> Latest {
        Latest {
            buf: Vec::with_capacity(REPORTED_EXITS),
            next: 0,
        }
    }
}

impl Latest {
    fn push(&mut self, exit: CountedExit) {
        if self.buf.len() < REPORTED_EXITS {
            self.buf.push(exit);
        } else {
            self.buf[self.next] = exit;
            self.next = (self.next + 1) % REPORTED_EXITS;
        }
    }

    /// The latest `n` (at most all of them), oldest first.
    fn newest(&self, n: usize) -> Vec<CountedExit> {
        let (newer, older) = self.buf.split_at(self.next);
        let kept = older.len() + newer.len();
        older
            .iter()
            .chain(newer)
            .skip(kept.saturating_sub(n))
            .copied()
            .collect()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.next = 0;
    }
}
