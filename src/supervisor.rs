//! The supervisor: a pure state machine with no system calls.
//!
//! # Calling protocol
//!
//! Events go in, [`Action`]s come out; time is a [`Duration`] since an epoch the caller
//! chooses, passed to every event. The driver:
//!
//! 1. creates the supervisor ([`Supervisor::new`]), which queues one spawn per slot;
//! 2. performs every queued action ([`Supervisor::next_action`] until `None`), reporting each
//!    spawn's outcome at once ([`Supervisor::on_spawned`] or [`Supervisor::on_spawn_failed`]);
//! 3. sleeps until an event or [`Supervisor::next_deadline`], then feeds what happened: a
//!    worker reported that it is inside `serve` ([`Supervisor::on_ready`]), a worker was
//!    reaped ([`Supervisor::on_exit`]), a signal arrived ([`Supervisor::on_signal`]), a
//!    deadline passed ([`Supervisor::on_timer`]), the driver itself failed
//!    ([`Supervisor::fail`]); after each event it performs the queued actions again;
//! 4. stops when [`Supervisor::outcome`] is `Some` (every worker is reaped).
//!
//! # The lifecycle of a worker
//!
//! spawning -> running (forked) -> ready (inside `serve`) -> retiring (asked to drain) ->
//! exited. A worker is asked to drain (TERM) only when its replacement, if it has one, is
//! ready, and is killed when the grace period ends.
//!
//! # Policies
//!
//! * An exit the master caused is never a crash: a retired or stopped worker, or one that
//!   died of a signal the master forwarded to it (USR1 left at its default action) is
//!   replaced, or not, without being counted.
//! * The crash-loop guard judges boot loops only: a worker that exits before it reported
//!   ready, or by itself (an exit code, or a fault such as `SIGSEGV`) within [`FAST_CRASH`]
//!   of being ready, is counted; more than `recover_threshold` such exits within
//!   `recover_window` stop everything with [`Failure::OverRecovery`]. A worker that served and
//!   was then killed from outside (an OOM kill, an operator's `kill`) is respawned without
//!   being counted. The guard's storage is fixed when it is built: above a threshold of
//!   [`guard::EXACT_UP_TO`] it counts the window in slices (see `guard.rs`).
//! * The delay before a respawn is `recover_interval`; each further exit of the same slot
//!   less than [`FAST_CRASH`] after its start doubles it, up to 32 times. With the default
//!   interval of zero, respawns are immediate, as nginx's: no tight loop can follow, since a
//!   worker that keeps failing by itself is a counted boot failure, and one killed from
//!   outside is respawned at the killer's pace.
//! * A worker that exits with [`crate::EXIT_FATAL`] is not respawned: everything stops
//!   gracefully and the run fails with [`Failure::WorkerFatal`].
//! * TERM/INT: TERM to every worker, KILL after `shutdown_grace`; a second TERM/INT kills at
//!   once. HUP: rolling restart, one slot at a time; a HUP during one queues one more. TTIN
//!   and TTOU: one slot more or less. USR1: forwarded to every worker.
//! * USR2: the binary upgrade ([`upgrade`]): the driver starts the new master
//!   ([`Action::StartUpgrade`], answered with [`Supervisor::on_upgrade_started`] or
//!   [`Supervisor::on_upgrade_failed`]); when it reports ready in time
//!   ([`Supervisor::on_upgrade_ready`]) the old generation drains and the run ends (no
//!   `Stopping`: the service goes on); when it exits first
//!   ([`Supervisor::on_upgrade_exit`]) or misses `upgrade_timeout` it is rolled back (killed)
//!   and the workers keep serving. A stop during an upgrade stops the new master too, and
//!   the outcome waits for it.
//! * Recycling ([`Supervisor::recycle`], for a worker past its lifetime or memory ceiling):
//!   that one slot is replaced as a rolling restart replaces it, through the same queue (the
//!   new worker is ready before the old one drains); never counted.
//! * A stuck worker ([`Supervisor::kill_stuck`], silent past its heartbeat timeout) is
//!   killed and respawned at once; never counted.

mod action;
mod command;
mod events;
mod guard;
#[cfg(any(test, fuzzing))]
pub(crate) mod model;
mod probation;
#[cfg(test)]
mod probation_tests;
mod restart;
mod state;
mod stop;
#[cfg(test)]
mod tests;
mod upgrade;

pub(crate) use crate::exit::{CountedExit, WorkerExit};
pub(crate) use action::{Action, Cause, Config, Exited, Failure, Ignored, Rollback, Why};
pub(crate) use command::{Answer, Client, Command, MAX_SCALE, Refusal};
pub(crate) use state::{REPORTED_EXITS, Supervisor};
// What the reference model and the unit tests (children of this module) check against.
#[cfg(any(test, fuzzing))]
use crate::exit::EXIT_FATAL;
#[cfg(any(test, fuzzing))]
use state::{FAST_CRASH, MAX_BACKOFF_FACTOR, Phase, SPAWN_RETRY_DELAY, Slot};
