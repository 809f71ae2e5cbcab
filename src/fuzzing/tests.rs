//! The fuzz targets' seed corpora under `cargo test`, and the paths the seeds reach.

use std::path::{Path, PathBuf};

/// The seed files of one fuzz target, sorted; `None` where the crate was packaged
/// without `fuzz/` (it is a separate package, left out by `cargo package`).
fn corpus(target: &str) -> Option<Vec<PathBuf>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    if !fuzz.join("Cargo.toml").exists() {
        eprintln!("no fuzz/ directory: skipping the {target} corpus");
        return None;
    }
    let dir = fuzz.join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("reading a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seed", dir.display());
    Some(files)
}

fn run_corpus(target: &str, f: fn(&[u8])) {
    let Some(files) = corpus(target) else { return };
    for path in files {
        let data = std::fs::read(&path).expect("reading a seed");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(
            r.is_ok(),
            "fuzz target {target} fails on {}",
            path.display()
        );
    }
}

#[test]
fn env_protocol_corpus() {
    run_corpus("env_protocol", super::env);
}

#[test]
fn control_request_corpus() {
    run_corpus("control_request", super::control_request);
}

#[test]
fn supervisor_corpus() {
    run_corpus("supervisor", super::supervisor);
}

fn seed(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/supervisor")
        .join(name);
    if !path.parent()?.exists() {
        return None;
    }
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The supervisor seeds reach what their names promise (so they keep covering it).
#[test]
fn supervisor_seeds_reach_their_paths() {
    use crate::supervisor::{Action, Failure};
    let over = |n| move |o: &Option<Result<(), Failure>>| matches!(o, Some(Err(Failure::OverRecovery { count, .. })) if *count == n);
    let ok = |o: &Option<Result<(), Failure>>| *o == Some(Ok(()));
    let external = |o: &Option<Result<(), Failure>>| *o == Some(Err(Failure::External));
    let going = |o: &Option<Result<(), Failure>>| o.is_none();
    type Check = Box<dyn Fn(&Option<Result<(), Failure>>) -> bool>;
    let cases: Vec<(&str, Check)> = vec![
        ("term_then_graceful_exits", Box::new(ok)),
        ("term_stubborn_workers", Box::new(ok)),
        ("double_term_kills_at_once", Box::new(ok)),
        ("crash_loop", Box::new(over(4))),
        ("crash_loop_zero_interval", Box::new(over(3))),
        ("boot_loop_before_ready", Box::new(over(3))),
        ("kills_after_ready_not_counted", Box::new(going)),
        ("forwarded_usr1_kills", Box::new(going)),
        ("initial_spawn_fails", Box::new(external)),
        ("spawn_hook_fails", Box::new(external)),
        ("ready_hook_fails", Box::new(external)),
        ("fail_mid_run", Box::new(external)),
        ("hup_graceful", Box::new(ok)),
        ("upgrade_hands_over", Box::new(ok)),
        ("upgrade_new_master_exits", Box::new(going)),
        ("upgrade_times_out", Box::new(going)),
        ("upgrade_exec_fails", Box::new(going)),
        ("upgrade_term_stops_both", Box::new(ok)),
        ("upgrade_usr2_twice", Box::new(ok)),
        ("upgrade_during_hup_ttin_ttou", Box::new(ok)),
        ("probation_rollback_by_hup", Box::new(going)),
        ("probation_rollback_asked_during_the_drain", Box::new(going)),
        ("probation_expires", Box::new(ok)),
        ("probation_term_ends_it", Box::new(ok)),
        ("probation_driver_fails", Box::new(external)),
        ("probation_stop_during_the_rollback", Box::new(ok)),
        (
            "stop_gives_up_on_unkillable",
            Box::new(
                |o: &Option<Result<(), Failure>>| matches!(o, Some(Err(Failure::Unreaped { pids })) if pids.len() == 2),
            ),
        ),
        ("unknown_exits", Box::new(going)),
        (
            "fatal_exit",
            Box::new(|o: &Option<Result<(), Failure>>| {
                matches!(
                    o,
                    Some(Err(Failure::WorkerFatal {
                        slot: 1,
                        code: 3,
                        ..
                    }))
                )
            }),
        ),
    ];
    for (name, check) in &cases {
        let Some(data) = seed(name) else { return };
        let got = super::drive(&data).outcome_by_input;
        assert!(check(&got), "seed {name}: {got:?}");
    }
    let count = |log: &[Action], f: fn(&Action) -> bool| log.iter().filter(|a| f(a)).count();
    let spawns = |a: &Action| matches!(a, Action::Spawn { .. });
    let reloaded = |a: &Action| *a == Action::Reloaded;
    let closed = |a: &Action| matches!(a, Action::Closed { .. });
    let run = |name| seed(name).map(|data| super::drive(&data));
    if let Some(r) = run("hup_graceful") {
        // 3 initial workers, then 3 replacements.
        assert_eq!(r.spawns, 6);
        assert_eq!(count(&r.log, reloaded), 1);
    }
    if let Some(r) = run("hups_coalesce") {
        // Three HUPs make two restarts; the HUP after them a third, stopped by the end.
        assert_eq!(count(&r.log, |a| *a == Action::Reloading), 3);
        assert_eq!(count(&r.log, reloaded), 2);
    }
    if let Some(r) = run("hup_replacement_fails_to_boot") {
        assert_eq!(r.spawns, 4);
        assert_eq!(count(&r.log, reloaded), 1);
    }
    if let Some(r) = run("ttou_mid_restart") {
        assert_eq!(count(&r.log, reloaded), 1);
        assert_eq!(count(&r.log, closed), 1);
    }
    let rolled_back = |why: fn(&crate::supervisor::Rollback) -> bool| {
        move |log: &[Action]| {
            log.iter()
                .filter(|a| matches!(a, Action::RolledBack { why: w, .. } if why(w)))
                .count()
        }
    };
    use crate::supervisor::Rollback;
    if let Some(r) = run("upgrade_hands_over") {
        assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 1);
        assert_eq!(count(&r.log, |a| *a == Action::Stopping), 0);
    }
    if let Some(r) = run("upgrade_new_master_exits") {
        assert_eq!(rolled_back(|w| matches!(w, Rollback::Exited(_)))(&r.log), 1);
    }
    if let Some(r) = run("upgrade_times_out") {
        assert_eq!(
            rolled_back(|w| matches!(w, Rollback::NotReady(_)))(&r.log),
            1
        );
        let killed = |a: &Action| matches!(a, Action::SignalNewMaster { signal, .. } if *signal == crate::sys::signal::Signal::Kill);
        assert_eq!(count(&r.log, killed), 1);
        assert_eq!(
            count(&r.log, |a| matches!(a, Action::NewMasterExited { .. })),
            1
        );
    }
    if let Some(r) = run("upgrade_exec_fails") {
        assert_eq!(rolled_back(|w| *w == Rollback::ExecFailed)(&r.log), 1);
    }
    if let Some(r) = run("upgrade_term_stops_both") {
        assert_eq!(
            count(&r.log, |a| matches!(a, Action::SignalNewMaster { .. })),
            2
        );
        assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 0);
    }
    if let Some(r) = run("upgrade_usr2_twice") {
        assert_eq!(count(&r.log, |a| *a == Action::StartUpgrade), 1);
        assert_eq!(
            count(&r.log, |a| matches!(a, Action::UpgradeIgnored { .. })),
            2
        );
    }
    if let Some(r) = run("upgrade_during_hup_ttin_ttou") {
        assert_eq!(count(&r.log, |a| matches!(a, Action::HandedOver { .. })), 1);
        assert_eq!(count(&r.log, reloaded), 1);
    }
    let probation = |a: &Action| matches!(a, Action::Probation { .. });
    let ended = |a: &Action| matches!(a, Action::ProbationEnded { .. });
    let handback = |a: &Action| matches!(a, Action::HandBack { .. });
    if let Some(r) = run("probation_rollback_by_hup") {
        assert_eq!(count(&r.log, probation), 1);
        assert_eq!(count(&r.log, handback), 1);
        assert_eq!(
            count(&r.log, |a| matches!(a, Action::NewMasterExited { .. })),
            1
        );
        // 2 initial workers, 2 of the rollback.
        assert_eq!(count(&r.log, spawns), 4);
    }
    if let Some(r) = run("probation_rollback_asked_during_the_drain") {
        assert_eq!(count(&r.log, probation), 0);
        assert_eq!(count(&r.log, handback), 1);
    }
    if let Some(r) = run("probation_expires") {
        assert_eq!(count(&r.log, probation), 1);
        assert_eq!(count(&r.log, ended), 1);
        assert_eq!(count(&r.log, handback), 0);
    }
    if let Some(r) = run("probation_term_ends_it") {
        assert_eq!(count(&r.log, ended), 1);
    }
    if let Some(r) = run("probation_stop_during_the_rollback") {
        assert_eq!(count(&r.log, handback), 0);
        assert_eq!(count(&r.log, ended), 1);
    }
    if let Some(r) = run("ttin_ttou") {
        assert_eq!(r.slots, 3);
    }
    if let Some(r) = run("ttin_reopens_closing_slot") {
        assert_eq!(count(&r.log, spawns), 3);
    }
    let retired = |a: &Action| {
        matches!(
            a,
            Action::Signal {
                why: crate::supervisor::Why::Retire,
                ..
            }
        )
    };
    let stuck = |a: &Action| {
        matches!(
            a,
            Action::Signal {
                why: crate::supervisor::Why::Stuck,
                ..
            }
        )
    };
    if let Some(r) = run("recycle_replaces_first") {
        // 2 workers; the recycled one's replacement starts, then it is asked to drain.
        assert_eq!(r.spawns, 3);
        assert_eq!(count(&r.log, retired), 1);
        assert!(r.outcome_by_input.is_none(), "{:?}", r.outcome_by_input);
    }
    if let Some(r) = run("stuck_worker_killed_and_replaced") {
        assert_eq!(count(&r.log, stuck), 1);
        assert_eq!(r.spawns, 3);
        assert!(r.outcome_by_input.is_none(), "{:?}", r.outcome_by_input);
    }
}

/// The command seeds reach the answers their names promise.
#[test]
fn command_seeds_reach_their_answers() {
    use crate::supervisor::{Action, Answer, Refusal, Rollback};
    let answers = |name| -> Option<Vec<Answer>> {
        let data = seed(name)?;
        let log = super::drive(&data).log;
        Some(
            log.into_iter()
                .filter_map(|a| match a {
                    Action::Answer { answer, .. } => Some(answer),
                    _ => None,
                })
                .collect(),
        )
    };
    let Some(a) = answers("command_status_metrics_stop") else {
        return;
    };
    assert_eq!(
        a,
        [
            Answer::Snapshot,
            Answer::Snapshot,
            Answer::Stopping,
            Answer::Stopping
        ]
    );
    let a = answers("command_reload_and_hup_coalesce").unwrap();
    assert!(
        matches!(&a[..], [Answer::Reloaded { .. }, Answer::Reloaded { .. }]),
        "{a:?}"
    );
    let a = answers("command_scale_up_down_superseded").unwrap();
    assert!(
        matches!(
            &a[..],
            [
                Answer::Refused(Refusal::Superseded { workers: 2 }),
                Answer::Scaled { pids: two },
                Answer::Scaled { pids: one },
                Answer::Refused(Refusal::Superseded { workers: 2 }),
            ] if two.len() == 2 && one.len() == 1
        ),
        "{a:?}"
    );
    let a = answers("command_upgrade_joins_usr2").unwrap();
    assert!(
        matches!(
            &a[..],
            [
                Answer::Upgraded { .. },
                Answer::Upgraded { .. },
                Answer::Refused(Refusal::HandedOver { .. })
            ]
        ),
        "{a:?}"
    );
    let a = answers("command_upgrade_rollbacks").unwrap();
    assert!(
        matches!(
            &a[..],
            [
                Answer::RolledBack(Rollback::Exited(_)),
                Answer::RolledBack(Rollback::NotReady(_)),
                Answer::Refused(Refusal::UpgradeUnderWay { .. }),
                Answer::Refused(Refusal::NoRollback),
                ..
            ]
        ),
        "{a:?}"
    );
    let a = answers("command_stop_answers_the_waiting").unwrap();
    assert_eq!(a.len(), 4, "{a:?}");
    assert!(
        a.iter().all(|a| *a == Answer::Refused(Refusal::Stopping)),
        "{a:?}"
    );
}

#[test]
fn empty_and_tiny_inputs() {
    for data in [&[][..], &[0], &[0xff], &[0x3f, 0xff, 0xff, 0xff, 0xff]] {
        super::env(data);
        super::supervisor(data);
        super::control_request(data);
    }
}
