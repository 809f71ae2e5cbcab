//! Process tests of the options for long-running fleets: heartbeats and stuck workers,
//! recycling by lifetime and by memory, CPU affinity, dropped credentials, process names,
//! the status the master publishes, and a signal storm.
//!
//! A `harness = false` binary (see `support/runner.rs`) with two roles:
//!
//! * **Fixture** (`PREFORK_FIXTURE=fleet`): runs a prefork master configured by `FX_*`
//!   variables and reports every event on stdout (see `fleet/fixture.rs`).
//! * **Tests** (otherwise): each case starts this same executable as a fixture, in a
//!   process group of its own, and observes it through its report lines, TCP connections
//!   to its workers, `/proc` and its exit status (`fleet/cases.rs`).
//!
//! Test names are `BACKEND::MODE::case`, e.g. `pidfd::exec::names_can_be_turned_off`. The
//! credential cases need root (they run workers as `nobody`, creating it with `useradd -r`
//! where it is missing).

mod support;

#[path = "fleet/cases.rs"]
mod cases;
#[path = "fleet/fixture.rs"]
mod fixture;

use std::process::ExitCode;

use support::runner;

fn main() -> ExitCode {
    // The fixture role must come first, while the process is still single-threaded.
    if let Some(role) = support::fixture::role() {
        support::fixture::main(&role, &[(fixture::ROLE, fixture::fleet)]);
    }
    runner::main(runner::tests(cases::ALL))
}
