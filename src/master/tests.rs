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

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::time::Duration;

use super::listeners::Listeners;
use super::spawn::{ExecSpec, Spawn};
use super::{Plan, run};
use crate::config::{Backend, Hooks};
use crate::protocol::CHILD_ENV;
use crate::supervisor::Config;

/// The exec-mode worker of the test below: this test binary, re-executed to run only this
/// test, in which `run` sees `FASTHTTP_PREFORK_CHILD=1` and serves until killed. Run on its
/// own (no such variable), it does nothing.
#[test]
fn exec_worker() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let _ = crate::Prefork::new().run(|_| {
        loop {
            std::thread::park();
        }
    });
}

/// The master's loop panics once both workers are ready: unwinding must kill and reap them,
/// so that none runs on unsupervised and none is left a zombie.
#[test]
fn unwinding_master_kills_and_reaps_every_worker() {
    let spawned = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&spawned);
    let mut hooks = Hooks {
        on_child_spawn: Some(Box::new(move |_, pid| {
            seen.borrow_mut().push(pid);
            Ok(())
        })),
        ..Hooks::default()
    };
    let plan = Plan {
        cfg: Config {
            workers: 2,
            recover_threshold: 10,
            recover_window: Duration::from_secs(60),
            recover_interval: Duration::ZERO,
            shutdown_grace: Duration::from_secs(5),
            upgrade_timeout: Duration::from_secs(60),
            upgrade_probation: Duration::ZERO,
        },
        backend: Backend::Pidfd,
        spawn: Spawn::Exec(ExecSpec::with_args(&[
            "--exact",
            "master::tests::exec_worker",
            "--test-threads=1",
            "-q",
        ])),
        listeners: Listeners::Caller,
        health: Default::default(),
        setup: Default::default(),
        operator: Default::default(),
    };
    PANIC_WHEN_READY.store(true, Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(|| run(plan, &mut hooks, &mut |_, _| ())));
    assert!(result.is_err(), "the injected panic unwinds out of run");
    let pids = spawned.borrow();
    assert_eq!(pids.len(), 2, "both workers started: {pids:?}");
    for pid in pids.iter() {
        // Reaped: not even a zombie is left in /proc.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the master's loop"
        );
    }
}
