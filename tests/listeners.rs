//! Process tests of the listeners the crate owns: `Prefork::listen_and_serve` in fork and
//! exec mode, `SO_REUSEPORT`, bind errors, the exec-mode child protocol, systemd socket
//! activation, and interop with a foreign master. Real processes, observed through sockets,
//! `/proc`, exit codes and logs.
//!
//! A `harness = false` binary (see `support/runner.rs`) with two roles. Started with
//! `PREFORK_FIXTURE=listen`, it is a fixture master (see `listeners/fixture.rs`); exec-mode
//! workers are this binary re-executed with the same arguments and environment, so the
//! variable, not the arguments, decides the role. Otherwise it runs the tests
//! (`listeners/cases.rs`).
//!
//! Every supervision case runs under both reaping backends (`PREFORK_BACKEND=pidfd` and
//! `sigchld`), and in fork and exec mode where both make sense. Registered as every suite's
//! are: tables of cases (`support::runner::Case`), here one per kind of variant; a test is
//! named `VARIANT::CASE`, e.g. `exec::sigchld::shared_listener`.

mod support;

#[path = "listeners/cases.rs"]
mod cases;
#[path = "listeners/fixture.rs"]
mod fixture;
#[path = "listeners/sandbox.rs"]
mod sandbox;
#[path = "listeners/unix.rs"]
mod unix;

use std::process::ExitCode;

use support::runner;

fn main() -> ExitCode {
    // The fixture role must come first, while the process is still single-threaded.
    if let Some(role) = support::fixture::role() {
        support::fixture::main(
            &role,
            &[
                (fixture::ROLE, fixture::listen),
                (fixture::SERVE_ROLE, fixture::serve_role),
            ],
        );
    }
    runner::main(
        [
            runner::tests(cases::UNDER_MODE_AND_BACKEND),
            runner::tests(cases::UNDER_BACKEND),
            runner::tests(cases::UNDER_SOCKETS),
            runner::tests(cases::RUN_ONCE),
            runner::tests(unix::UNDER_MODE_AND_BACKEND),
            runner::tests(unix::RUN_ONCE),
            sandbox::tests(),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}
