//! Process tests of the supervisor (`Prefork::run`): real prefork masters and workers,
//! observed from outside.
//!
//! A `harness = false` binary (see `support/runner.rs`) with two roles:
//!
//! * **Fixture** (`PREFORK_FIXTURE=master`): runs a prefork master configured by `FX_*`
//!   variables and reports every event on stdout (see `processes/fixture.rs`).
//! * **Tests** (otherwise): each case starts this same executable as a fixture, in a
//!   process group of its own, and observes it through its report lines, TCP connections
//!   to its workers, `/proc` and its exit status (`processes/cases.rs`). Every case runs
//!   under both reaping backends (`PREFORK_BACKEND=pidfd` and `=sigchld`), one at a time.
//!   Registered as every suite's are: a table of cases (`support::runner::Case`). The
//!   sandbox cases (`processes/sandbox.rs`) add a table of refused system calls, each row
//!   run with `EPERM` and `ENOSYS` in the modes and under the backends it names.
//!
//! Test names are `BACKEND::case`, e.g. `sigchld::sigterm_stops_all_workers`.

mod support;

#[path = "processes/cases.rs"]
mod cases;
#[path = "processes/control.rs"]
mod control;
#[path = "processes/fixture.rs"]
mod fixture;
#[path = "processes/sandbox.rs"]
mod sandbox;

use std::process::ExitCode;

use support::runner;

fn main() -> ExitCode {
    // The fixture role must come first, while the process is still single-threaded.
    if let Some(role) = support::fixture::role() {
        support::fixture::main(&role, &[(fixture::ROLE, fixture::master)]);
    }
    let mut tests = runner::tests(cases::ALL);
    tests.extend(runner::tests(sandbox::ALL));
    tests.extend(sandbox::tests());
    tests.extend(sandbox::operator_tests());
    tests.extend(runner::tests(control::UNDER_BACKEND));
    tests.extend(runner::tests(control::SOCKET));
    runner::main(tests)
}
