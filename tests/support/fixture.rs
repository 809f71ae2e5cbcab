//! What a fixture process shares: its role, exit codes, logger, tie to the test process,
//! the parsing of its `FX_*` options, and the one mapping of the builder's options onto
//! [`Prefork`] ([`Options`]).
//!
//! A test binary is its own fixture: [`Spec::start`](super::process::Spec::start) runs the
//! same executable with `PREFORK_FIXTURE=ROLE`, and `main` hands over to the fixture before
//! anything else, while the process is still single-threaded.

use std::str::FromStr;
use std::time::Duration;

use prefork::{Mode, Network, Prefork};

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
    if flag("FX_UPGRADE") && var(prefork::protocol::UPGRADE_FD_ENV).is_some() {
        // The new master of a binary upgrade the test asked for (`FX_UPGRADE=1`): the old
        // master (a fixture) is its parent, and it outlives it. The test's process-group
        // kill still ends it. Without the flag, such a new master exits at once here (and
        // the old master rolls the upgrade back).
        return;
    }
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

// ---- The builder's options ------------------------------------------------------------------

/// The `FX_*` variables that set an option of [`Prefork`], the same in every fixture; each
/// fixture reads its own variables (what its workers do, what its master does to itself
/// before it starts) beside these. Unset means the library's default.
///
/// | variable | option |
/// |---|---|
/// | `FX_WORKERS=N` | `workers` |
/// | `FX_GRACE_MS=N` | `shutdown_grace` |
/// | `FX_INTERVAL_MS=N` | `recover_interval` |
/// | `FX_THRESHOLD=N` | `recover_threshold` |
/// | `FX_MODE=fork\|exec\|auto` | `mode` |
/// | `FX_NETWORK=tcp\|tcp4\|tcp6` | `network` |
/// | `FX_REUSEPORT=1` | `reuseport(true)` |
/// | `FX_TIMEOUT_MS=N` | `worker_timeout` |
/// | `FX_LIFETIME_MS=N` | `max_worker_lifetime` |
/// | `FX_RSS_BYTES=N` | `max_worker_rss` |
/// | `FX_AFFINITY=1` | `cpu_affinity(true)` |
/// | `FX_USER=NAME`, `FX_GROUP=NAME` | `user`, `group` |
/// | `FX_NAMES=0` | `worker_names(false)` |
/// | `FX_UPGRADE=1` | (not an option) a new master started by `USR2` runs instead of exiting at once |
/// | `FX_CONTROL=PATH` | `control_socket` |
/// | `FX_PID_FILE=PATH` | `pid_file` |
#[derive(Debug, Default)]
pub struct Options {
    pub workers: Option<usize>,
    pub grace: Option<Duration>,
    pub interval: Option<Duration>,
    pub threshold: Option<usize>,
    pub mode: Option<Mode>,
    pub network: Option<Network>,
    pub reuseport: bool,
    pub timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    pub rss: Option<u64>,
    pub affinity: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub names: Option<bool>,
    pub control: Option<String>,
    pub pid_file: Option<String>,
}

impl Options {
    /// The options from this process's environment; an error names a malformed variable.
    pub fn from_env() -> Result<Options, String> {
        let ms = |name| parsed::<u64>(name).map(|v| v.map(Duration::from_millis));
        let modes = [
            ("fork", Some(Mode::Fork)),
            ("exec", Some(Mode::Exec)),
            ("auto", Some(Mode::Auto)),
        ];
        let networks = [
            ("tcp4", Some(Network::Tcp4)),
            ("tcp", Some(Network::Tcp)),
            ("tcp6", Some(Network::Tcp6)),
        ];
        Ok(Options {
            workers: parsed("FX_WORKERS")?,
            grace: ms("FX_GRACE_MS")?,
            interval: ms("FX_INTERVAL_MS")?,
            threshold: parsed("FX_THRESHOLD")?,
            mode: choice("FX_MODE", &modes, None)?,
            network: choice("FX_NETWORK", &networks, None)?,
            reuseport: flag("FX_REUSEPORT"),
            timeout: ms("FX_TIMEOUT_MS")?,
            lifetime: ms("FX_LIFETIME_MS")?,
            rss: parsed("FX_RSS_BYTES")?,
            affinity: flag("FX_AFFINITY"),
            user: var("FX_USER"),
            group: var("FX_GROUP"),
            names: choice("FX_NAMES", &[("0", Some(false)), ("1", Some(true))], None)?,
            control: var("FX_CONTROL"),
            pid_file: var("FX_PID_FILE"),
        })
    }

    /// `p` with every option that is set.
    pub fn apply(&self, mut p: Prefork) -> Prefork {
        if let Some(n) = self.workers {
            p = p.workers(n);
        }
        if let Some(d) = self.grace {
            p = p.shutdown_grace(d);
        }
        if let Some(d) = self.interval {
            p = p.recover_interval(d);
        }
        if let Some(n) = self.threshold {
            p = p.recover_threshold(n);
        }
        if let Some(mode) = self.mode {
            p = p.mode(mode);
        }
        if let Some(network) = self.network {
            p = p.network(network);
        }
        if self.reuseport {
            p = p.reuseport(true);
        }
        if let Some(d) = self.timeout {
            p = p.worker_timeout(d);
        }
        if let Some(d) = self.lifetime {
            p = p.max_worker_lifetime(d);
        }
        if let Some(bytes) = self.rss {
            p = p.max_worker_rss(bytes);
        }
        if self.affinity {
            p = p.cpu_affinity(true);
        }
        if let Some(user) = &self.user {
            p = p.user(user);
        }
        if let Some(group) = &self.group {
            p = p.group(group);
        }
        if let Some(on) = self.names {
            p = p.worker_names(on);
        }
        if let Some(path) = &self.control {
            p = p.control_socket(path);
        }
        if let Some(path) = &self.pid_file {
            p = p.pid_file(path);
        }
        p
    }

    /// The mode the options select ([`Mode::Fork`], the library's default, if unset).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Fork)
    }

    /// The configured [`Prefork`]: every option set, and hooks that report `spawn`,
    /// `ready`, `recover` and `exit` (see [`report::hooks`]).
    pub fn builder(&self) -> Prefork {
        report::hooks(self.apply(Prefork::new()))
    }
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
            report::own_pid(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
