//! The test runner of the `harness = false` process-test binaries (`fork` cannot run under
//! libtest's threads: every case runs on the main thread, one after the other).
//!
//! It speaks enough of libtest's command line for `cargo test` and `cargo nextest`:
//! `[FILTER…] [--exact] [--skip PATTERN] [--list [--format terse]] [--ignored]`, ignoring
//! other flags (`--nocapture`, `--test-threads N`, `--include-ignored`, `-q`, …). A filter
//! selects the tests whose name contains it (equals it, with `--exact`); `--skip` leaves out
//! those it matches the same way. There are no ignored tests: `--ignored` selects none.
//!
//! Every suite registers its tests the same way: tables of [`Case`]s (a name, the variants it
//! runs under, a body taking the variant), which [`tests`] turns into one test per case and
//! variant, named `VARIANT::NAME`; [`cases!`] writes a table of cases under the same
//! variants, each named after its function.
//!
//! A test fails by panicking, with a message that says what was expected and what was seen.
//! The runner catches the panic, goes on with the next test, and at the end shows each
//! failure with what the test's fixtures printed; it prints `N passed; M failed` and exits
//! non-zero if any failed.

use std::cell::RefCell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

/// One test: its name (filters and nextest use it) and its body.
pub struct Test {
    name: String,
    run: Box<dyn Fn()>,
}

/// A test named `name` that runs `run`.
pub fn test(name: impl Into<String>, run: impl Fn() + 'static) -> Test {
    Test {
        name: name.into(),
        run: Box::new(run),
    }
}

/// What a case runs under (a reaping backend, a fixture mode, a pair of them, or nothing):
/// the value its body takes, and its part of the test's name.
pub trait Variant: Copy + 'static {
    /// The variant's part of the test name (`pidfd`, `pidfd::exec`); empty for `()`.
    fn name(self) -> String;
}

impl Variant for () {
    fn name(self) -> String {
        String::new()
    }
}

impl<A: Variant, B: Variant> Variant for (A, B) {
    fn name(self) -> String {
        format!("{}::{}", self.0.name(), self.1.name())
    }
}

/// One case of a suite: its name, the variants it runs under, and its body.
pub struct Case<V: 'static> {
    pub name: &'static str,
    pub variants: &'static [V],
    pub run: fn(V),
}

impl<V> Case<V> {
    pub const fn new(name: &'static str, variants: &'static [V], run: fn(V)) -> Case<V> {
        Case {
            name,
            variants,
            run,
        }
    }
}

/// The variants of a case that runs once: `()`.
pub const ONCE: &[()] = &[()];

/// The tests of `cases`: each case under each of its variants, in table order, named
/// `VARIANT::NAME` (`NAME` under `()`).
pub fn tests<V: Variant>(cases: &[Case<V>]) -> Vec<Test> {
    let mut tests = Vec::new();
    for case in cases {
        for &variant in case.variants {
            let prefix = variant.name();
            let name = if prefix.is_empty() {
                case.name.to_owned()
            } else {
                format!("{prefix}::{}", case.name)
            };
            let run = case.run;
            tests.push(test(name, move || run(variant)));
        }
    }
    tests
}

/// `cases![VARIANTS => f, g, …]`: a table of [`Case`]s, each under `VARIANTS` and named
/// after its function.
#[allow(unused_macros)]
macro_rules! cases {
    ($variants:expr => $($case:ident),* $(,)?) => {
        &[$($crate::support::runner::Case::new(stringify!($case), $variants, $case)),*]
    };
}
#[allow(unused_imports)]
pub(crate) use cases;

/// What the running test left for the runner.
#[derive(Default)]
struct Record {
    /// Whether the runner is in a test on this thread (a panic is then the test's failure).
    in_test: bool,
    /// The panic's message and location.
    panic: Option<String>,
    /// What its fixtures printed.
    transcript: Vec<String>,
    /// A line about what the test found, shown after `ok`.
    note: Option<String>,
    /// Why the test did not run what it tests.
    skipped: Option<String>,
}

thread_local! {
    static RECORD: RefCell<Record> = RefCell::new(Record::default());
}

/// Adds `lines` (a fixture's output) to what is shown if the running test fails.
pub fn attach(lines: Vec<String>) {
    RECORD.with(|r| r.borrow_mut().transcript.extend(lines));
}

/// A line about what the running test found (a figure, a reference value), shown after its
/// `ok`.
pub fn note(text: impl Into<String>) {
    RECORD.with(|r| r.borrow_mut().note = Some(text.into()));
}

/// Marks the running test as skipped because this machine lacks what it needs (`reason`);
/// the test then returns without asserting anything.
pub fn skip(reason: impl Into<String>) {
    RECORD.with(|r| r.borrow_mut().skipped = Some(reason.into()));
}

/// The libtest-style command line.
#[derive(Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    terse: bool,
    /// Only ignored tests: there are none.
    ignored: bool,
}

const USAGE: &str = "usage: TEST_BINARY [FILTER…] [--exact] [--skip PATTERN] \
                     [--list [--format terse]] [--ignored]";

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut out = Args::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => out.list = true,
                "--exact" => out.exact = true,
                "--ignored" => out.ignored = true,
                "--skip" => out.skips.push(args.next().ok_or("--skip needs a pattern")?),
                "--format" => out.terse |= args.next().as_deref() == Some("terse"),
                // Options whose value is ignored.
                "--test-threads" | "--color" | "--logfile" | "-Z" | "--shuffle-seed" => {
                    args.next();
                }
                s if s.starts_with("--skip=") => out.skips.push(s["--skip=".len()..].to_owned()),
                s if s.starts_with("--format=") => out.terse |= s == "--format=terse",
                // Flags ignored: `--nocapture`, `--include-ignored`, `-q`, …
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

/// Runs the tests the command line selects (or lists them); the process's exit code.
pub fn main(tests: Vec<Test>) -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::parse(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let total = tests.len();
    let selected: Vec<Test> = tests
        .into_iter()
        .filter(|t| args.selects(&t.name))
        .collect();

    if args.list {
        for t in &selected {
            println!("{}: test", t.name);
        }
        if !args.terse {
            println!("\n{} tests, 0 benchmarks", selected.len());
        }
        return ExitCode::SUCCESS;
    }

    install_panic_hook();
    let plural = if selected.len() == 1 { "" } else { "s" };
    println!("\nrunning {} test{plural}", selected.len());
    let started = Instant::now();
    let (mut passed, mut skipped) = (0, 0);
    let mut failed: Vec<(String, Record)> = Vec::new();
    for t in &selected {
        RECORD.with(|r| {
            *r.borrow_mut() = Record {
                in_test: true,
                ..Record::default()
            }
        });
        let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)()));
        // Fixtures are dropped (and their transcripts attached) by now, on either path.
        let mut record = RECORD.with(|r| std::mem::take(&mut *r.borrow_mut()));
        match outcome {
            Ok(()) => {
                if let Some(reason) = &record.skipped {
                    skipped += 1;
                    println!("test {} ... skipped ({reason})", t.name);
                } else {
                    passed += 1;
                    match &record.note {
                        Some(note) => println!("test {} ... ok: {note}", t.name),
                        None => println!("test {} ... ok", t.name),
                    }
                }
            }
            Err(payload) => {
                println!("test {} ... FAILED", t.name);
                if record.panic.is_none() {
                    record.panic = Some(panic_message(payload.as_ref()));
                }
                failed.push((t.name.clone(), record));
            }
        }
        let _ = std::io::stdout().flush();
    }

    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, record) in &failed {
            println!("\n---- {name} ----");
            println!("{}", record.panic.as_deref().unwrap_or("(no message)"));
            for line in &record.transcript {
                println!("{line}");
            }
        }
        println!("\nfailures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {} failed; {skipped} skipped; \
         {} filtered out; finished in {:.2}s\n",
        failed.len(),
        total - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

/// Records a test's panic (message and location) for the failure report instead of
/// printing it; panics of other threads are printed as usual.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let recorded = RECORD.with(|r| {
            let Ok(mut r) = r.try_borrow_mut() else {
                return false;
            };
            if !r.in_test || r.panic.is_some() {
                return false;
            }
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = panic_message(info.payload());
            r.panic = Some(format!("panicked{location}: {message}"));
            true
        });
        if !recorded {
            default(info);
        }
    }));
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
