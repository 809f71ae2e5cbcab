//! The master's health checks and the workers' status.
//!
//! * **Heartbeats** (`worker_timeout`): a ready worker that holds its slot and has called
//!   `Worker::heartbeat` at least once is killed as stuck when its latest heartbeat is older
//!   than the timeout. The heartbeats live in a shared table (`sys::heartbeat`) made before
//!   the first worker starts, and only when the option is set.
//! * **Recycling** (`max_worker_lifetime`, `max_worker_rss`): a worker past its lifetime
//!   (plus a per-worker jitter, uniform in `[0, lifetime/10]`) or over the memory ceiling
//!   (`/proc/PID/statm`, read once a second) is handed to `Supervisor::recycle`, which
//!   replaces it as a rolling restart does.
//! * **Status**: per slot, the worker's pid, start time, restarts, last exit, and how long
//!   the master's latest and longest fork for it took. The master publishes it (log line,
//!   `on_status` hook, systemd `STATUS=`) when it changed, once per wake-up.
//!
//! Every check runs on one timer, the earliest of their deadlines; with no check set there is
//! no timer at all.

use std::time::{Duration, SystemTime};

use super::hooks::call_hook;
use super::notify::Notifier;
use super::pids::PidMap;
use crate::config::{ExitCause, HealthChecks, LastExit, SlotStatus, Status, StatusHook};
use crate::error::Error;
use crate::exit::WorkerExit;
use crate::supervisor::{Cause, Supervisor};
use crate::sys::{self, heartbeat::Heartbeats};

/// How often the resident set sizes are read when `max_worker_rss` is set.
pub(crate) const RSS_INTERVAL: Duration = Duration::from_secs(1);

/// How soon a recycling the supervisor could not take yet (its slot is being replaced, or
/// the master is not ready yet) is asked for again.
const RECYCLE_RETRY: Duration = Duration::from_secs(1);

/// Added to a heartbeat deadline: the heartbeat clock advances in scheduler ticks, so a wake
/// right at the deadline could find the worker a tick short of it and need a second one.
const TICK_SLACK: Duration = Duration::from_millis(10);

/// What the master watches of one live worker.
#[derive(Debug)]
struct Watch {
    /// When its lifetime (with jitter) ends, with `max_worker_lifetime`.
    recycle_at: Option<Duration>,
    /// The jitter drawn for it, for the log line.
    jitter: Duration,
    started: Duration,
    /// Its latest heartbeat the master saw (heartbeat clock, ms); `None` before its first.
    last_beat: Option<u32>,
    /// Handed to the supervisor for recycling, or killed as stuck: no more checks.
    done: bool,
}

/// The health checks and the status book. See the module docs.
pub(crate) struct Health {
    checks: HealthChecks,
    table: Option<Heartbeats>,
    watches: PidMap<Watch>,
    /// When the checks run next.
    next: Option<Duration>,
    /// When the resident set sizes are read next.
    next_rss: Option<Duration>,
    /// The state of the jitter generator.
    seed: u64,
    /// Per slot: the pid of the latest worker started in it, if any.
    latest: Vec<Option<u32>>,
    /// Live workers: when each started, and how long its start took the master. The start's
    /// duration goes into the slot's status (`last_fork`, `max_fork`) when the status is
    /// read and when the worker exits, not at the fork: each page the master writes between
    /// two forks is a copy-on-write fault, and this entry is written at the fork anyway.
    starts: PidMap<(SystemTime, Duration)>,
    current: Status,
    published: Option<Status>,
}

impl Health {
    /// The checks `checks` asks for; makes the heartbeat table when `worker_timeout` is set.
    pub(crate) fn new(checks: HealthChecks, workers: usize) -> Result<Health, Error> {
        let table = match checks.worker_timeout {
            Some(_) => {
                let op = "creating the heartbeat table (memfd_create, ftruncate, \
                          fcntl(F_ADD_SEALS), mmap(MAP_SHARED))";
                let table = Heartbeats::create().map_err(|e| {
                    let hint = super::fork::refused_hint(&e);
                    Error::sys(op)(std::io::Error::new(e.kind(), format!("{e}{hint}")))
                })?;
                Some(table)
            }
            None => None,
        };
        // The jitter's seed, only where lifetimes are drawn (the clock is read at start
        // only when it is of use).
        let clock = match checks.max_lifetime {
            Some(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            None => 0,
        };
        // Sized for every slot and for a replacement of each at once (a rolling restart),
        // so that starting workers does not reallocate: in the master, between forks,
        // every page written costs a copy-on-write fault.
        let mut health = Health {
            checks,
            table,
            watches: PidMap::default(),
            next: None,
            next_rss: None,
            seed: (u64::from(sys::getpid().get()) << 32) ^ clock,
            latest: Vec::with_capacity(workers),
            starts: PidMap::with_capacity_and_hasher(2 * workers, Default::default()),
            current: Status::default(),
            published: None,
        };
        if health.checks.any() {
            health.watches.reserve(2 * workers);
        }
        if let Some(last) = workers.checked_sub(1) {
            health.grow(last);
        }
        Ok(health)
    }

    /// The heartbeat table, whose memfd an exec-mode worker inherits.
    pub(crate) fn table(&self) -> Option<&Heartbeats> {
        self.table.as_ref()
    }

    /// In a forked worker: the heartbeat table, to keep its own cell of.
    pub(crate) fn take_table(&mut self) -> Option<Heartbeats> {
        self.table.take()
    }

    /// Before a worker starts in `slot`: its cell is emptied, so that no earlier value can
    /// pass for the new worker's heartbeat.
    pub(crate) fn before_spawn(&self, slot: usize) {
        if let Some(t) = &self.table {
            t.clear(slot);
        }
    }

    /// A worker started in `slot` as `pid`, at `now`; starting it took the master `took`
    /// (the fork, or the exec-mode spawn).
    pub(crate) fn on_spawned(&mut self, slot: usize, pid: u32, now: Duration, took: Duration) {
        self.grow(slot);
        if self.latest[slot].replace(pid).is_some() {
            self.current.slots[slot].restarts += 1;
        }
        self.starts.insert(pid, (SystemTime::now(), took));
        if !self.checks.any() {
            return;
        }
        let (recycle_at, jitter) = match self.checks.max_lifetime {
            Some(d) => {
                let jitter = self.jitter(d);
                (Some(now.saturating_add(d).saturating_add(jitter)), jitter)
            }
            None => (None, Duration::ZERO),
        };
        self.watches.insert(
            pid,
            Watch {
                recycle_at,
                jitter,
                started: now,
                last_beat: None,
                done: false,
            },
        );
        if self.checks.max_rss.is_some() && self.next_rss.is_none() {
            self.next_rss = Some(now.saturating_add(RSS_INTERVAL));
        }
        // The first look at the newcomer: after the timeout (it is judged only from its
        // first heartbeat on, which the master notices there), at its next size reading,
        // or when its lifetime ends.
        let first = self.checks.worker_timeout.map(|t| now.saturating_add(t));
        for due in [first, self.next_rss, recycle_at].into_iter().flatten() {
            self.next = Some(self.next.map_or(due, |n| n.min(due)));
        }
    }

    /// The worker `pid` of `slot` was reaped.
    pub(crate) fn on_exit(&mut self, slot: usize, pid: u32, exit: WorkerExit, cause: Cause) {
        self.watches.remove(&pid);
        self.grow(slot);
        if let Some((_, took)) = self.starts.remove(&pid) {
            self.note_fork(slot, took, self.latest[slot] == Some(pid));
        }
        self.current.slots[slot].last_exit = Some(LastExit {
            pid,
            exit,
            cause: exit_cause(cause),
            at: SystemTime::now(),
        });
        self.current.latest = Some(slot);
    }

    /// When [`Health::tick`] has something to do; `None` when no check is set or no worker
    /// is watched.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.next
    }

    /// A uniform draw from `[0, lifetime / 10]` (splitmix64 over a seed taken from the
    /// master's pid and the clock).
    fn jitter(&mut self, lifetime: Duration) -> Duration {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = (lifetime / 10).as_nanos().min(u128::from(u64::MAX - 1)) as u64;
        Duration::from_nanos(z % (span + 1))
    }

    /// Runs the checks that are due at `now`: kills stuck workers, recycles old and large
    /// ones, through the supervisor (whose actions the master performs next).
    pub(crate) fn tick(&mut self, now: Duration, sup: &mut Supervisor) {
        if self.next.is_none_or(|n| n > now) {
            return;
        }
        // A master that wakes late was most likely held up with everything else (a paused
        // VM, CPU throttling, a suspend): its workers had no more time to beat than it had
        // to look, so that much more silence is forgiven.
        let late = now.saturating_sub(self.next.unwrap_or(now));
        self.next = None;
        if sup.is_stopping() {
            return;
        }
        let rss_due = self.next_rss.is_some_and(|t| t <= now);
        if rss_due {
            self.next_rss = Some(now.saturating_add(RSS_INTERVAL));
        }
        let now_ms = sys::heartbeat::now_ms();
        let mut next: Option<Duration> = None;
        let mut at = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        if let Some(t) = self.checks.worker_timeout {
            at(now.saturating_add(t));
        }
        if let Some(t) = self.next_rss {
            at(t);
        }
        for (slot, pid, alone) in sup.serving() {
            let Some(w) = self.watches.get_mut(&pid) else {
                continue;
            };
            if w.done {
                continue;
            }
            if let (Some(timeout), Some(table)) = (self.checks.worker_timeout, &self.table) {
                if let Some(beat) = table.load(slot).filter(|b| b.pid.get() == pid) {
                    w.last_beat = Some(match w.last_beat {
                        Some(seen) if !is_after(beat.ms, seen) => seen,
                        _ => beat.ms,
                    });
                }
                if !alone && w.last_beat.is_some() {
                    // An older worker of the slot still drains and writes the same cell:
                    // judge again once it is gone, counting from then.
                    w.last_beat = Some(now_ms);
                }
                if let Some(seen) = w.last_beat {
                    let silent = Duration::from_millis(u64::from(elapsed(seen, now_ms)));
                    if silent > timeout.saturating_add(late) {
                        log::warn!(
                            "worker {slot} (pid {pid}) is stuck: no heartbeat for {silent:.1?} \
                             (worker_timeout {timeout:?}); killing it"
                        );
                        w.done = sup.kill_stuck(pid);
                        if w.done {
                            continue;
                        }
                    } else {
                        at(now.saturating_add(timeout.saturating_sub(silent) + TICK_SLACK));
                    }
                }
            }
            if let Some(due) = w.recycle_at {
                if due <= now {
                    if sup.recycle(pid) {
                        w.done = true;
                        log::info!(
                            "worker {slot} (pid {pid}) recycled: it ran for {:.1?} \
                             (max_worker_lifetime {:?} + jitter {:.1?})",
                            now.saturating_sub(w.started),
                            self.checks.max_lifetime.unwrap_or_default(),
                            w.jitter
                        );
                        continue;
                    }
                    at(now.saturating_add(RECYCLE_RETRY));
                } else {
                    at(due);
                }
            }
            if let (true, Some(max)) = (rss_due, self.checks.max_rss) {
                match sys::Pid::try_from(pid).and_then(sys::rss_bytes) {
                    Ok(rss) if rss > max => {
                        if sup.recycle(pid) {
                            w.done = true;
                            log::info!(
                                "worker {slot} (pid {pid}) recycled: resident set {} over \
                                 max_worker_rss {}",
                                Bytes(rss),
                                Bytes(max)
                            );
                        }
                    }
                    Ok(_) => {}
                    // Exited meanwhile: its exit is on its way.
                    Err(e) => log::debug!("cannot read the memory of worker pid {pid}: {e}"),
                }
            }
        }
        // A worker not serving yet (started, not ready) is recycled once it serves: look
        // again at its deadline, or a little later when that has passed.
        for w in self.watches.values().filter(|w| !w.done) {
            if let Some(due) = w.recycle_at {
                at(if due > now {
                    due
                } else {
                    now.saturating_add(RECYCLE_RETRY)
                });
            }
        }
        if self.watches.is_empty() {
            self.next_rss = None;
            next = None;
        }
        self.next = next;
    }

    /// The listeners' names and actual addresses, for the status.
    pub(crate) fn set_listeners(&mut self, listeners: Vec<(String, String)>) {
        self.current.listeners = listeners;
    }

    /// The status as the supervisor has it now.
    pub(crate) fn status(&mut self, sup: &Supervisor) -> &Status {
        for (slot, holder) in sup.holders().enumerate() {
            self.grow(slot);
            let s = &mut self.current.slots[slot];
            s.in_service = holder.is_some();
            let (pid, ready) = holder.unwrap_or((None, false));
            s.pid = pid;
            s.ready = ready;
            s.started = pid.and_then(|p| self.starts.get(&p).map(|&(at, _)| at));
            let latest = self.latest[slot].and_then(|p| self.starts.get(&p));
            if let Some(&(_, took)) = latest {
                self.note_fork(slot, took, true);
            }
        }
        &self.current
    }

    /// A start of `slot`'s worker took `took`: the slot's longest, and with `latest` (the
    /// slot's latest worker) its last.
    fn note_fork(&mut self, slot: usize, took: Duration, latest: bool) {
        let s = &mut self.current.slots[slot];
        if latest {
            s.last_fork = Some(took);
        }
        s.max_fork = s.max_fork.max(Some(took));
    }

    /// Publishes the status if it changed since it was last published: one log line, the
    /// `on_status` hook, and `STATUS=` to systemd. Returns the hook's outcome when it ran.
    pub(crate) fn publish(
        &mut self,
        sup: &Supervisor,
        hook: Option<&mut StatusHook>,
        notifier: Option<&Notifier>,
    ) -> Option<Result<(), Error>> {
        self.status(sup);
        if self.published.as_ref() == Some(&self.current) {
            return None;
        }
        let status = self.current.clone();
        log::info!("status: {status}");
        if let Some(n) = notifier {
            n.send(&format!("STATUS={status}"));
        }
        let result = hook.map(|f| call_hook("on_status", || f(&status)));
        self.published = Some(status);
        result
    }

    fn grow(&mut self, slot: usize) {
        while self.current.slots.len() <= slot {
            let n = self.current.slots.len();
            self.current.slots.push(SlotStatus {
                slot: n,
                in_service: false,
                pid: None,
                started: None,
                ready: false,
                restarts: 0,
                last_exit: None,
                last_fork: None,
                max_fork: None,
            });
            self.latest.push(None);
        }
    }
}

/// Milliseconds from `from` to `to` on the heartbeat clock (modulo 2^32); 0 when `to` is
/// earlier.
fn elapsed(from: u32, to: u32) -> u32 {
    let d = to.wrapping_sub(from);
    if d > u32::MAX / 2 { 0 } else { d }
}

/// Whether heartbeat-clock reading `a` is later than `b`.
fn is_after(a: u32, b: u32) -> bool {
    elapsed(b, a) > 0
}

/// How a [`Cause`] reads in a [`Status`].
pub(crate) fn exit_cause(cause: Cause) -> ExitCause {
    match cause {
        Cause::Requested => ExitCause::Stopped,
        Cause::Replaced => ExitCause::Replaced,
        Cause::Retired => ExitCause::Retired,
        Cause::Recycled => ExitCause::Recycled,
        Cause::Stuck => ExitCause::Stuck,
        Cause::Forwarded => ExitCause::Forwarded,
        Cause::Crashed => ExitCause::Crash,
        Cause::BootFailure => ExitCause::BootFailure,
        Cause::Fatal => ExitCause::Fatal,
    }
}

/// A byte count in words: `512 MiB`, `1.5 GiB`, `900 B`.
struct Bytes(u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 || v.fract() == 0.0 {
            write!(f, "{v:.0} {}", UNITS[unit])
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{Action, Config, Why};
    use crate::sys::heartbeat::Beat;
    use crate::sys::signal::Signal;

    const PID: u32 = 4242;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A supervisor of `workers` slots with the defaults' timings.
    fn supervisor(workers: usize) -> Supervisor {
        Supervisor::new(Config {
            workers,
            recover_threshold: 10,
            recover_window: Duration::from_secs(60),
            recover_interval: Duration::ZERO,
            shutdown_grace: Duration::from_secs(5),
            upgrade_timeout: Duration::from_secs(60),
            upgrade_probation: Duration::ZERO,
        })
    }

    /// A supervisor with one ready worker, and the health checks watching it with a
    /// `timeout_ms` heartbeat timeout; both started at time zero.
    fn watching(timeout_ms: u64) -> (Supervisor, Health) {
        let mut sup = supervisor(1);
        while sup.next_action().is_some() {}
        sup.on_spawned(0, PID, Duration::ZERO);
        sup.on_ready(PID, Duration::ZERO);
        while sup.next_action().is_some() {}
        let checks = HealthChecks {
            worker_timeout: Some(ms(timeout_ms)),
            ..HealthChecks::default()
        };
        let mut health = Health::new(checks, 2).expect("heartbeat table");
        health.on_spawned(0, PID, Duration::ZERO, Duration::ZERO);
        (sup, health)
    }

    /// Stores a heartbeat of `pid` in slot 0, `ago_ms` ago on the heartbeat clock.
    fn beat(health: &Health, pid: u32, ago_ms: u32) {
        let ms = sys::heartbeat::now_ms().wrapping_sub(ago_ms);
        let pid = sys::Pid::new(pid).expect("a pid");
        health.table().expect("a table").store(0, Beat { pid, ms });
    }

    fn actions(sup: &mut Supervisor) -> Vec<Action> {
        std::iter::from_fn(|| sup.next_action()).collect()
    }

    fn stuck_kill() -> Vec<Action> {
        vec![Action::Signal {
            pid: PID,
            signal: Signal::Kill,
            why: Why::Stuck,
        }]
    }

    #[test]
    fn a_silent_worker_is_killed_and_a_beating_one_is_not() {
        let (mut sup, mut health) = watching(100);
        assert_eq!(
            health.next_deadline(),
            Some(ms(100)),
            "a first look after the timeout"
        );
        beat(&health, PID, 0);
        health.tick(ms(100), &mut sup);
        assert!(actions(&mut sup).is_empty(), "it just beat");
        let next = health.next_deadline().expect("the next look");
        assert!(next > ms(100) && next <= ms(100 + 100 + 10), "{next:?}");
        beat(&health, PID, 300);
        // The stored beat is older than the one seen: the newest seen counts.
        health.tick(next, &mut sup);
        assert!(
            actions(&mut sup).is_empty(),
            "the newer beat seen before counts"
        );
        let (mut sup, mut health) = watching(100);
        beat(&health, PID, 300);
        health.tick(ms(100), &mut sup);
        assert_eq!(actions(&mut sup), stuck_kill());
        assert_eq!(sup.serving(), Vec::new(), "killed once, judged no more");
    }

    #[test]
    fn a_worker_that_never_beat_is_not_judged() {
        let (mut sup, mut health) = watching(100);
        health.tick(ms(100), &mut sup);
        assert!(actions(&mut sup).is_empty());
        // Another pid in the cell (an older worker of the slot) is not this one's beat.
        beat(&health, PID + 1, 5000);
        let next = health
            .next_deadline()
            .expect("looks again after the timeout");
        assert_eq!(next, ms(200));
        health.tick(next, &mut sup);
        assert!(actions(&mut sup).is_empty());
    }

    #[test]
    fn a_master_that_wakes_late_forgives_as_much_silence() {
        let (mut sup, mut health) = watching(100);
        beat(&health, PID, 300);
        // Woken 250 ms after its deadline: 300 ms of silence is within 100 + 250.
        health.tick(ms(100 + 250), &mut sup);
        assert!(actions(&mut sup).is_empty(), "forgiven");
        let next = health.next_deadline().expect("the next look");
        health.tick(next, &mut sup);
        assert_eq!(
            actions(&mut sup),
            stuck_kill(),
            "on time, the silence is judged"
        );
    }

    #[test]
    fn heartbeat_clock_differences_wrap() {
        assert_eq!(elapsed(10, 30), 20);
        assert_eq!(elapsed(u32::MAX - 5, 4), 10);
        assert_eq!(elapsed(30, 10), 0, "a reading from before is no silence");
        assert!(is_after(5, u32::MAX));
        assert!(!is_after(7, 7));
        assert!(!is_after(6, 7));
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_varies() {
        let mut h = Health::new(HealthChecks::default(), 2).expect("no table needed");
        let d = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..1000).map(|_| h.jitter(d)).collect();
        assert!(draws.iter().all(|j| *j <= Duration::from_secs(10)));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "{} distinct draws", distinct.len());
        let mean = draws.iter().sum::<Duration>() / 1000;
        assert!(
            mean > Duration::from_secs(4) && mean < Duration::from_secs(6),
            "mean {mean:?}"
        );
        assert_eq!(h.jitter(Duration::from_nanos(5)), Duration::ZERO);
    }

    #[test]
    fn status_keeps_the_last_and_the_longest_fork_per_slot() {
        let mut sup = supervisor(2);
        while sup.next_action().is_some() {}
        let mut health = Health::new(HealthChecks::default(), 2).expect("no table");
        assert_eq!(health.current.slots[1].last_fork(), None);
        assert_eq!(health.current.max_fork(), None);
        let forks = |h: &mut Health, sup: &Supervisor| {
            let s = &h.status(sup).slots;
            [0, 1].map(|i| (s[i].last_fork(), s[i].max_fork()))
        };
        let exited = WorkerExit::Code(0);
        // Slot 0: pid 10 (3 ms) exits before any status is read. Slot 1: pid 20 (2 ms).
        health.on_spawned(0, 10, Duration::ZERO, ms(3));
        health.on_spawned(1, 20, Duration::ZERO, ms(2));
        health.on_exit(0, 10, exited, Cause::Crashed);
        assert_eq!(
            forks(&mut health, &sup),
            [(Some(ms(3)), Some(ms(3))), (Some(ms(2)), Some(ms(2)))],
            "a worker's start is kept when it exits before any status"
        );
        health.on_spawned(0, 11, Duration::ZERO, ms(7));
        // A replacement (pid 12, 5 ms) starts before the worker it replaces exits, as in a
        // rolling restart: the slot's last start is the replacement's, whoever exits later.
        health.on_spawned(0, 12, Duration::ZERO, ms(5));
        health.on_exit(0, 11, exited, Cause::Replaced);
        assert_eq!(
            forks(&mut health, &sup),
            [(Some(ms(5)), Some(ms(7))), (Some(ms(2)), Some(ms(2)))]
        );
        assert_eq!(health.current.max_fork(), Some(ms(7)));
        assert_eq!(
            health.current.to_string(),
            "0 of 2 workers serving, 2 restarts, longest fork 7.0 ms; last exit: worker 0 (pid \
             11) replaced by HUP, exit code 0"
        );
    }

    #[test]
    fn bytes_read_as_words() {
        assert_eq!(Bytes(900).to_string(), "900 B");
        assert_eq!(Bytes(512 << 20).to_string(), "512 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
