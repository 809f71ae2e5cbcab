//! What a fixture process shares: its role, exit codes, logger, tie to the test process,
//! and the parsing of its `FX_*` options.
//!
//! A test binary is its own fixture: [`Spec::start`](super::process::Spec::start) runs the
//! same executable with `PREFORK_FIXTURE=ROLE`, and `main` hands over to the fixture before
//! anything else, while the process is still single-threaded.

use std::str::FromStr;

use super::report::{self, complain};

/// The variable that makes a test binary a fixture, and names its role.
pub const ROLE_ENV: &str = "PREFORK_FIXTURE";

/// The test process's pid, passed to the fixture so that it can tie its life to it.
pub const DRIVER_PID_ENV: &str = "PREFORK_TEST_DRIVER_PID";

/// Exit code of a fixture whose every run returned `Ok`.
pub const EXIT_OK: i32 = 0;
/// Exit code of a fixture one of whose runs returned `Err` (or of an exec-mode worker
/// whose `listen_and_serve` failed).
pub const EXIT_ERR: i32 = 2;
/// Exit code of a fixture that was misconfigured or saw the impossible.
pub const EXIT_BROKEN: i32 = 98;

/// The fixture role this process was started in, if any.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A fixture role: its name (the value of `PREFORK_FIXTURE`) and the function that runs it
/// and returns the exit code.
pub type Role = (&'static str, fn() -> i32);

/// Runs the fixture role `role` with `roles`' function of that name and exits with the
/// code it returns (`EXIT_BROKEN` for an unknown role). The master (not an exec-mode
/// worker) reports `end CODE` last. Must be the first thing `main` does.
pub fn main(role: &str, roles: &[Role]) -> ! {
    log::set_logger(&LOGGER).expect("no logger installed yet");
    log::set_max_level(log::LevelFilter::Debug);
    let worker = prefork::is_child();
    if !worker {
        die_with_driver();
    }
    let code = match roles.iter().find(|(name, _)| *name == role) {
        Some((_, run)) => run(),
        None => {
            complain(format!("fixture: unknown role {role:?}"));
            EXIT_BROKEN
        }
    };
    if !worker && !prefork::is_child() {
        report::end(code);
    }
    std::process::exit(code)
}

/// Drops root's privileges for good: no supplementary groups, then gid and uid `id` (65534
/// is `nobody`). A change of credentials clears the death signal, so it is set again.
pub fn become_user(id: u32) -> Result<(), String> {
    // SAFETY: an empty list of groups, given as a null pointer with a length of 0.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: setgid and setuid take plain integers.
    if unsafe { libc::setgid(id) } != 0 || unsafe { libc::setuid(id) } != 0 {
        return Err(format!(
            "setgid/setuid {id}: {}",
            std::io::Error::last_os_error()
        ));
    }
    die_with_driver();
    Ok(())
}

/// A fixture must not outlive the test that started it (killed by a test runner's
/// timeout, say): it gets SIGKILL when the test process dies, and its workers follow it as
/// usual. Exec-mode workers are tied to their master by the library instead.
fn die_with_driver() {
    let Some(driver) = var(DRIVER_PID_ENV).and_then(|v| v.parse::<libc::pid_t>().ok()) else {
        return;
    };
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as an integer argument.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != driver {
        // The test process died before the prctl took effect.
        std::process::exit(EXIT_BROKEN);
    }
}

// ---- Options --------------------------------------------------------------------------------

/// The option `name`; unset and empty are the same.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether the option `name` is set (to anything non-empty).
pub fn flag(name: &str) -> bool {
    var(name).is_some()
}

/// The option `name` parsed as a `T`, if set.
pub fn parsed<T: FromStr>(name: &str) -> Result<Option<T>, String> {
    var(name)
        .map(|v| v.parse().map_err(|_| format!("bad {name} value {v:?}")))
        .transpose()
}

/// The option `name`, one of `choices` (its value, and what it selects); `default` if unset.
pub fn choice<T: Copy>(name: &str, choices: &[(&str, T)], default: T) -> Result<T, String> {
    let Some(value) = var(name) else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(v, _)| *v == value)
        .map(|&(_, t)| t)
        .ok_or_else(|| format!("bad {name} value {value:?}"))
}

// ---- Logging ------------------------------------------------------------------------------

/// Logs to stderr as `[LEVEL pid] message`, one `write` per line, for the tests to check
/// and to show when a test fails.
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        complain(format!(
            "[{} {}] {}",
            record.level(),
            std::process::id(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
