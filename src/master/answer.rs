//! The control socket's reply lines: the supervisor's answers as one JSON object each, and
//! the status in Prometheus text exposition for `metrics`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::config::Status;
use crate::control::{VERSION, push_json_str};
use crate::supervisor::{Answer, Command, Refusal, Rollback};

/// What a status reply tells beyond the workers' [`Status`].
pub(crate) struct Facts<'a> {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    pub(crate) mode: &'static str,
    pub(crate) backend: &'static str,
    pub(crate) uptime: Duration,
    /// `starting`, `running` or `stopping`.
    pub(crate) state: &'static str,
    /// Workers retired and draining: `(slot, pid)`.
    pub(crate) draining: &'a [(usize, u32)],
    /// The new master of an upgrade under way.
    pub(crate) upgrade: Option<u32>,
    pub(crate) reloading: bool,
    pub(crate) control: &'a str,
}

/// The command's name in replies.
pub(crate) fn name(command: Command) -> &'static str {
    match command {
        Command::Status => "status",
        Command::Metrics => "metrics",
        Command::Reload => "reload",
        Command::Upgrade => "upgrade",
        Command::Rollback => "rollback",
        Command::Scale(_) => "scale",
        Command::Stop => "stop",
    }
}

/// The reply line to `command`'s `answer`. `detail` is the driver's own account of an upgrade
/// that could not start (the system's error).
pub(crate) fn render(
    command: Command,
    answer: &Answer,
    status: &Status,
    facts: &Facts<'_>,
    detail: Option<&str>,
) -> String {
    let mut out = format!(
        "{{\"v\":{VERSION},\"ok\":{},\"command\":\"{}\"",
        !matches!(answer, Answer::RolledBack(_) | Answer::Refused(_)),
        name(command)
    );
    match answer {
        Answer::Snapshot if command == Command::Metrics => {
            out.push_str(",\"metrics\":");
            push_json_str(&mut out, &metrics(status, facts));
        }
        Answer::Snapshot => status_fields(&mut out, status, facts),
        Answer::Stopping => out.push_str(",\"stopping\":true"),
        Answer::Reloaded { pids } => pids_field(&mut out, pids),
        Answer::Scaled { pids } => {
            let _ = write!(out, ",\"workers\":{}", pids.len());
            pids_field(&mut out, pids);
        }
        Answer::Upgraded { pid } => {
            let _ = write!(out, ",\"pid\":{pid}");
        }
        Answer::Restored { pids } => {
            let _ = write!(out, ",\"rolled_back\":true,\"pid\":{}", facts.pid);
            pids_field(&mut out, pids);
        }
        Answer::HandedBack { pid } => {
            let _ = write!(out, ",\"rolled_back\":true,\"pid\":{pid}");
        }
        Answer::RolledBack(why) => {
            let (reason, text) = match why {
                Rollback::ExecFailed => (
                    "exec_failed".to_owned(),
                    format!(
                        "the new program could not be started: {}",
                        detail.unwrap_or("see the master's log")
                    ),
                ),
                Rollback::Exited(exit) => (
                    "exited".to_owned(),
                    format!("the new master exited ({exit}) before it was ready"),
                ),
                Rollback::NotReady(t) => (
                    "not_ready".to_owned(),
                    format!("the new master was not ready within {t:?}"),
                ),
            };
            out.push_str(",\"rolled_back\":true,\"reason\":");
            push_json_str(&mut out, &reason);
            if let Rollback::Exited(exit) = why {
                out.push_str(",\"exit\":");
                push_json_str(&mut out, &exit.to_string());
            }
            out.push_str(",\"error\":");
            push_json_str(&mut out, &format!("rolled back: {text}"));
        }
        Answer::Refused(why) => {
            out.push_str(",\"error\":");
            push_json_str(&mut out, &refusal(*why));
        }
    }
    out.push('}');
    out
}

fn refusal(why: Refusal) -> String {
    match why {
        Refusal::Starting => "the master is starting: not every worker serves yet".to_owned(),
        Refusal::Stopping => "the master is stopping".to_owned(),
        Refusal::HandedOver { pid } => {
            format!("the master handed over to the new master {pid} before this completed")
        }
        Refusal::UpgradeUnderWay { pid: Some(pid) } => {
            format!("the upgrade to {pid} is ending (rolled back or stopped); try again")
        }
        Refusal::UpgradeUnderWay { pid: None } => "an upgrade is under way".to_owned(),
        Refusal::NoRollback => {
            "nothing to roll back to: this master keeps no old one (no upgrade probation)"
                .to_owned()
        }
        Refusal::Probation { pid } => format!(
            "this old master is on upgrade probation after handing over to the new master \
             {pid}: only status, metrics, rollback and stop apply"
        ),
        Refusal::ProbationOf { pid } => format!(
            "no upgrade during the upgrade probation: the old master {pid} can still roll \
             back; upgrade once it ended"
        ),
        Refusal::ProbationEnded { pid } => format!(
            "nothing to roll back to: the upgrade probation ended (the old master {pid} \
             exits or left)"
        ),
        Refusal::Superseded { workers } => {
            format!("superseded: the worker count was changed to {workers} before this completed")
        }
    }
}

fn pids_field(out: &mut String, pids: &[u32]) {
    out.push_str(",\"pids\":[");
    for (i, pid) in pids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{pid}");
    }
    out.push(']');
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn micros(d: Option<Duration>) -> String {
    d.map_or("null".to_owned(), |d| d.as_micros().to_string())
}

fn status_fields(out: &mut String, status: &Status, f: &Facts<'_>) {
    let _ = write!(
        out,
        ",\"master\":{{\"pid\":{},\"generation\":{},\"mode\":\"{}\",\"backend\":\"{}\",\
         \"uptime_s\":{:.3},\"state\":\"{}\",\"control\":",
        f.pid,
        f.generation,
        f.mode,
        f.backend,
        f.uptime.as_secs_f64(),
        f.state
    );
    push_json_str(out, f.control);
    out.push('}');
    let _ = write!(
        out,
        ",\"serving\":{},\"in_service\":{},\"restarts\":{}",
        status.serving(),
        status.in_service(),
        status.restarts()
    );
    out.push_str(",\"workers\":[");
    let mut first = true;
    for s in status.slots() {
        if !first {
            out.push(',');
        }
        first = false;
        let state = match (s.in_service, s.pid, s.ready) {
            (false, _, _) => "closed",
            (true, None, _) => "respawning",
            (true, Some(_), false) => "starting",
            (true, Some(_), true) => "serving",
        };
        let _ = write!(
            out,
            "{{\"slot\":{},\"pid\":{},\"state\":\"{state}\",\"started\":{},\"restarts\":{},\
             \"last_fork_us\":{},\"max_fork_us\":{},\"last_exit\":",
            s.slot,
            s.pid.map_or("null".to_owned(), |p| p.to_string()),
            s.started
                .map_or("null".to_owned(), |t| format!("{:.3}", unix_secs(t))),
            s.restarts,
            micros(s.last_fork()),
            micros(s.max_fork()),
        );
        match &s.last_exit {
            None => out.push_str("null"),
            Some(e) => {
                let _ = write!(out, "{{\"pid\":{},\"exit\":", e.pid);
                push_json_str(out, &e.exit.to_string());
                out.push_str(",\"cause\":");
                push_json_str(out, &e.cause.to_string());
                let _ = write!(out, ",\"at\":{:.3}}}", unix_secs(e.at));
            }
        }
        out.push('}');
    }
    for (slot, pid) in f.draining {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(
            out,
            "{{\"slot\":{slot},\"pid\":{pid},\"state\":\"draining\"}}"
        );
    }
    out.push(']');
    match f.upgrade {
        Some(pid) => {
            let _ = write!(out, ",\"upgrade\":{{\"new_master\":{pid}}}");
        }
        None => out.push_str(",\"upgrade\":null"),
    }
    let _ = write!(out, ",\"reload\":{}", f.reloading);
    out.push_str(",\"summary\":");
    push_json_str(out, &status.to_string());
}

/// The status in Prometheus text exposition format (version 0.0.4).
pub(crate) fn metrics(status: &Status, f: &Facts<'_>) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "prefork_master_uptime_seconds",
        "gauge",
        "Seconds since the master started.",
        &one(format!("{:.3}", f.uptime.as_secs_f64())),
    );
    metric(
        "prefork_master_generation",
        "gauge",
        "Binary upgrades that led to this master.",
        &one(f.generation.to_string()),
    );
    metric(
        "prefork_workers_in_service",
        "gauge",
        "Worker slots in service.",
        &one(status.in_service().to_string()),
    );
    metric(
        "prefork_workers_serving",
        "gauge",
        "Slots in service whose worker is inside serve.",
        &one(status.serving().to_string()),
    );
    metric(
        "prefork_workers_draining",
        "gauge",
        "Retired workers still draining.",
        &one(f.draining.len().to_string()),
    );
    metric(
        "prefork_restarts_total",
        "counter",
        "Workers started in a slot after its first one.",
        &one(status.restarts().to_string()),
    );
    let per_slot = |v: &dyn Fn(&crate::config::SlotStatus) -> Option<String>| {
        status
            .slots()
            .iter()
            .filter_map(|s| Some((format!("{{slot=\"{}\"}}", s.slot), v(s)?)))
            .collect::<Vec<_>>()
    };
    metric(
        "prefork_worker_restarts_total",
        "counter",
        "Workers started in this slot after its first one.",
        &per_slot(&|s| Some(s.restarts.to_string())),
    );
    metric(
        "prefork_worker_serving",
        "gauge",
        "Whether the slot is in service with its worker inside serve.",
        &per_slot(&|s| Some(u8::from(s.in_service && s.ready).to_string())),
    );
    metric(
        "prefork_worker_fork_seconds_max",
        "gauge",
        "The longest start of a worker of this slot.",
        &per_slot(&|s| s.max_fork().map(|d| format!("{:.6}", d.as_secs_f64()))),
    );
    metric(
        "prefork_upgrade_in_progress",
        "gauge",
        "Whether a binary upgrade is under way.",
        &one(u8::from(f.upgrade.is_some()).to_string()),
    );
    metric(
        "prefork_reload_in_progress",
        "gauge",
        "Whether a rolling restart is under way.",
        &one(u8::from(f.reloading).to_string()),
    );
    out
}
