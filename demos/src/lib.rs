//! What the demo servers share: their command line and a logger. The servers themselves are
//! in `examples/`; this crate is not published.

use std::time::Duration;

/// The options every demo server takes.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--workers N` (default: one per CPU).
    pub workers: Option<usize>,
    /// `--addr HOST:PORT` (default `127.0.0.1:8080`).
    pub addr: String,
    /// `--mode fork|exec|auto` (default fork).
    pub mode: prefork::Mode,
    /// `--network tcp|tcp4|tcp6` (default tcp4).
    pub network: prefork::Network,
    /// `--reuseport`: one `SO_REUSEPORT` socket per worker instead of one shared listener.
    pub reuseport: bool,
    /// `--grace SECS`: how long the master waits for workers to drain before KILL.
    pub grace: Duration,
}

/// The usage line of the common options.
pub const USAGE: &str = "[--workers N] [--addr HOST:PORT] [--mode fork|exec|auto] \
[--network tcp|tcp4|tcp6] [--reuseport] [--grace SECS]";

impl Args {
    /// Parses the common options; `extra` gets every other argument (and the iterator, for
    /// its value) and returns `Ok(false)` for an argument it does not know either.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        mut extra: impl FnMut(&str, &mut dyn Iterator<Item = String>) -> Result<bool, String>,
    ) -> Result<Args, String> {
        let mut out = Args {
            workers: None,
            addr: "127.0.0.1:8080".to_owned(),
            mode: prefork::Mode::Fork,
            network: prefork::Network::Tcp4,
            reuseport: false,
            grace: prefork::DEFAULT_SHUTDOWN_GRACE,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--workers" | "-w" => {
                    let v = value("--workers")?;
                    out.workers = Some(
                        v.parse()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or(format!("bad --workers value {v:?}"))?,
                    );
                }
                "--addr" | "-a" => out.addr = value("--addr")?,
                "--mode" => {
                    out.mode = match value("--mode")?.as_str() {
                        "fork" => prefork::Mode::Fork,
                        "exec" => prefork::Mode::Exec,
                        "auto" => prefork::Mode::Auto,
                        v => return Err(format!("bad --mode value {v:?} (fork, exec or auto)")),
                    }
                }
                "--network" => {
                    out.network = match value("--network")?.as_str() {
                        "tcp" => prefork::Network::Tcp,
                        "tcp4" => prefork::Network::Tcp4,
                        "tcp6" => prefork::Network::Tcp6,
                        v => return Err(format!("bad --network value {v:?} (tcp, tcp4 or tcp6)")),
                    }
                }
                "--reuseport" => out.reuseport = true,
                "--grace" => {
                    let v = value("--grace")?;
                    let secs: f64 = v.parse().map_err(|_| format!("bad --grace value {v:?}"))?;
                    if !(0.0..=3600.0).contains(&secs) {
                        return Err(format!("--grace {v} is out of range (0 to 3600 s)"));
                    }
                    out.grace = Duration::from_secs_f64(secs);
                }
                other => {
                    if !extra(other, &mut args)? {
                        return Err(format!("unknown argument {other:?}"));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A [`prefork::Prefork`] configured from these options.
    pub fn prefork(&self) -> prefork::Prefork {
        let mut prefork = prefork::Prefork::new()
            .mode(self.mode)
            .network(self.network)
            .reuseport(self.reuseport)
            .shutdown_grace(self.grace);
        if let Some(n) = self.workers {
            prefork = prefork.workers(n);
        }
        prefork
    }

    /// How long a worker drains before it gives up on the connections still open: most of
    /// the master's grace period, so that the worker ends by itself (exit 0) before the
    /// master's KILL.
    pub fn drain_limit(&self) -> Duration {
        self.grace.mul_f64(0.9)
    }
}

/// Sends `log` records to stderr with level and pid (the master's lines included). Call once,
/// in `main`, before `listen_and_serve`.
pub fn init_logger() {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line: during a binary upgrade two masters share stderr.
            let line = format!(
                "[{} {}] {}\n",
                record.level(),
                std::process::id(),
                record.args()
            );
            use std::io::Write;
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// The `ms` parameter of a `/slow?ms=N` query (default 1000, at most 60 000).
pub fn slow_ms(query: Option<&str>) -> u64 {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()), |arg, _| {
            Ok(arg == "--extra")
        })
    }

    #[test]
    fn common_options() {
        let a = parse(&[
            "--workers",
            "3",
            "--reuseport",
            "--mode",
            "exec",
            "--grace",
            "2.5",
        ])
        .expect("valid");
        assert_eq!(a.workers, Some(3));
        assert!(a.reuseport);
        assert_eq!(a.mode, prefork::Mode::Exec);
        assert_eq!(a.grace, Duration::from_millis(2500));
        assert!(a.drain_limit() < a.grace);
        assert!(parse(&["--extra"]).is_ok());
        for bad in [
            &["--workers", "0"][..],
            &["--workers"],
            &["--mode", "spawn"],
            &["--grace", "-1"],
            &["--nope"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slow_parameter() {
        assert_eq!(slow_ms(None), 1000);
        assert_eq!(slow_ms(Some("ms=1500")), 1500);
        assert_eq!(slow_ms(Some("a=b&ms=20")), 20);
        assert_eq!(slow_ms(Some("ms=x")), 1000);
        assert_eq!(slow_ms(Some("ms=99999999")), 60_000);
    }
}
