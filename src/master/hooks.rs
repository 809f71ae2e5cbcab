//! The program's code that runs in the master (hooks), and what it may leave behind: an error
//! or a panic, and output buffered in std's stdout that a fork would duplicate.

use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::HookResult;
use crate::error::Error;

/// Whether std's stdout buffer is known to be empty: false at start and after every hook (the
/// only code of the program that runs in the master), true after a flush.
pub(crate) static STDOUT_CLEAN: AtomicBool = AtomicBool::new(false);

/// Flushes std's stdout before a fork when the program may have written to it, so that
/// nothing buffered is written twice, once by each process. (Stderr is unbuffered.) Taking
/// the stdout lock writes to its page, which after a fork is shared with the worker: a
/// copy-on-write fault in the master. So the flush is skipped where nothing can be pending;
/// the master's own writes go through `log`, whose line-based output leaves nothing behind.
pub(crate) fn flush_stdout() {
    if !STDOUT_CLEAN.load(Ordering::Relaxed) {
        STDOUT_CLEAN.store(true, Ordering::Relaxed);
        let _ = io::stdout().flush();
    }
}

/// Runs a hook, turning its error or panic into [`Error::Hook`].
pub(crate) fn call_hook(hook: &'static str, f: impl FnOnce() -> HookResult) -> Result<(), Error> {
    STDOUT_CLEAN.store(false, Ordering::Relaxed);
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(Error::Hook {
            hook,
            panicked: false,
            source,
        }),
        Err(payload) => Err(Error::Hook {
            hook,
            panicked: true,
            source: crate::child::panic_message(payload.as_ref()).into(),
        }),
    }
}
