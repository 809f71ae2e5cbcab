//! Unit tests of the master that need no fork: an exec-mode master (which may run beside the
//! test harness's threads) whose workers are this test binary re-executed.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::supervisor::Supervisor;

/// Set by a test to make the loop panic once every worker is ready.
static PANIC_WHEN_READY: AtomicBool = AtomicBool::new(false);

/// The injected fault: called by the loop after each wake-up.
pub(super) fn maybe_panic(sup: &Supervisor) {
    let (ready, live) = sup.ready_count();
    if live > 0 && ready == live && PANIC_WHEN_READY.swap(false, Ordering::SeqCst) {
        panic!("injected panic in the master's loop");
    }
}
