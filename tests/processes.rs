//! Process tests: real prefork masters and workers, observed from outside.
//!
//! `fork` cannot run under libtest's threads, so this is a `harness = false` binary with two
//! roles:
//!
//! * **Fixture** (`PREFORK_FIXTURE` set): runs a prefork master configured by `FX_*`
//!   variables and reports every event on stdout (see `common/fixture.rs`).
//! * **Driver** (otherwise): runs each test case by starting this same executable as a
//!   fixture, in a process group of its own, and observing it through its report lines,
//!   TCP connections to its workers, `/proc` and its exit status. Every case runs under both
//!   reaping backends (`PREFORK_BACKEND=pidfd` and `=sigchld`), one at a time.
//!
//! The driver speaks enough of libtest's command line for `cargo test` and `cargo nextest`:
//! `[FILTER…] [--exact] [--skip PATTERN] [--list [--format terse]] [--ignored]`, ignoring
//! other flags (`--nocapture`, `--test-threads N`, `-q`, …). Test names are
//! `BACKEND::case`, e.g. `sigchld::sigterm_stops_all_workers`.

mod common;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

use common::driver::Backend;
use common::{cases, fixture};

fn main() -> ExitCode {
    // The fixture role must come first, while the process is still single-threaded.
    if let Ok(scenario) = std::env::var("PREFORK_FIXTURE") {
        fixture::main(&scenario);
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("processes: {e}");
            return ExitCode::from(2);
        }
    };
    let tests: Vec<(String, Backend, cases::Case)> = Backend::ALL
        .iter()
        .flat_map(|&b| {
            cases::ALL
                .iter()
                .map(move |&(name, case)| (format!("{}::{name}", b.name()), b, case))
        })
        .filter(|(name, _, _)| args.selects(name))
        .collect();

    if args.list {
        for (name, _, _) in &tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }

    let plural = if tests.len() == 1 { "" } else { "s" };
    println!("\nrunning {} test{plural}", tests.len());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, backend, case) in &tests {
        // The line is printed once the test is over, so that what a failing test prints
        // (its panic message, its fixture's output; on stderr) does not split it.
        let outcome = catch_unwind(AssertUnwindSafe(|| case(*backend)));
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(payload) => {
                println!("test {name} ... FAILED");
                failed.push((name.clone(), panic_message(payload.as_ref())));
            }
        }
        let _ = std::io::stdout().flush();
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, message) in &failed {
            println!("    {name}: {message}");
        }
    }
    println!("\nfinished in {:.2}s", started.elapsed().as_secs_f64());
    println!(
        "{} passed, {} failed",
        tests.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// The libtest-style command line.
#[derive(Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    /// Only ignored tests: there are none.
    ignored: bool,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut out = Args::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => {
                    return Err(
                        "usage: processes [FILTER…] [--exact] [--skip PATTERN] [--list]".to_owned(),
                    );
                }
                "--list" => out.list = true,
                "--exact" => out.exact = true,
                "--ignored" => out.ignored = true,
                "--skip" => out.skips.push(args.next().ok_or("--skip needs a pattern")?),
                // Options whose value is ignored.
                "--format" | "--test-threads" | "--color" | "--logfile" | "-Z"
                | "--shuffle-seed" => {
                    args.next();
                }
                s if s.starts_with("--skip=") => out.skips.push(s["--skip=".len()..].to_owned()),
                // Flags ignored: `--nocapture`, `--include-ignored`, `-q`, `--format=terse`…
                s if s.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        Ok(out)
    }

    fn matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    fn selects(&self, name: &str) -> bool {
        !self.ignored
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(f, name)))
            && !self.skips.iter().any(|s| self.matches(s, name))
    }
}
