//! Process tests of the listeners the crate owns: `Prefork::listen_and_serve` in fork and
//! exec mode, `SO_REUSEPORT`, bind errors, the exec-mode child protocol, systemd socket
//! activation, and interop with a foreign master. Real processes, observed through sockets,
//! `/proc`, exit codes and logs.
//!
//! A `harness = false` binary (see `support/runner.rs`) with two roles. Started with
//! `PREFORK_FIXTURE=listen`, it is a fixture master (see `listeners/fixture.rs`); exec-mode
//! workers are this binary re-executed with the same arguments and environment, so the
//! variable, not the arguments, decides the role. Otherwise it runs the tests
//! (`listeners/cases.rs`).
//!
//! Every supervision case runs under both reaping backends (`PREFORK_BACKEND=pidfd` and
//! `sigchld`), and in fork and exec mode where both make sense.

mod support;

#[path = "listeners/cases.rs"]
mod cases;
#[path = "listeners/fixture.rs"]
mod fixture;

use std::process::ExitCode;

use cases::*;
use support::backend::Backend;
use support::runner::{self, Test};

fn main() -> ExitCode {
    // The fixture role must come first, while the process is still single-threaded.
    if let Some(role) = support::fixture::role() {
        support::fixture::main(&role, &[(fixture::ROLE, fixture::listen)]);
    }
    runner::main(tests())
}

fn tests() -> Vec<Test> {
    let mut t = Vec::new();
    for mode in Mode::ALL {
        for backend in Backend::ALL {
            t.push(runner::test(
                format!("shared_listener::{}::{}", mode.name(), backend.name()),
                move || shared_listener(mode, backend),
            ));
        }
    }
    t.push(runner::test(
        "threaded_master::exec_serves",
        threaded_exec_serves,
    ));
    t.push(runner::test(
        "threaded_master::auto_chooses_exec",
        threaded_auto_exec,
    ));
    t.push(runner::test(
        "threaded_master::fork_refused",
        threaded_fork_refused,
    ));
    t.push(runner::test(
        "threaded_master::auto_single_threaded_forks",
        auto_single_threaded_forks,
    ));
    for backend in Backend::ALL {
        t.push(runner::test(
            format!("threaded_master::sigterm_stops_all::{}", backend.name()),
            move || threaded_sigterm(backend),
        ));
    }
    for backend in Backend::ALL {
        t.push(runner::test(
            format!("exec_supervision::respawn_same_slot::{}", backend.name()),
            move || exec_respawn(backend),
        ));
        t.push(runner::test(
            format!("exec_supervision::master_killed::{}", backend.name()),
            move || exec_master_killed(backend),
        ));
    }
    for backend in Backend::ALL {
        t.push(runner::test(
            format!("reuseport::fork_socket_per_slot::{}", backend.name()),
            move || reuseport_fork_per_slot(backend),
        ));
        t.push(runner::test(
            format!("reuseport::fork_no_reset::{}", backend.name()),
            move || reuseport_fork_no_reset(backend),
        ));
        t.push(runner::test(
            format!("reuseport::ttou_closes_retired_socket::{}", backend.name()),
            move || reuseport_ttou(backend),
        ));
    }
    t.push(runner::test(
        "reuseport::exec_each_worker_binds",
        reuseport_exec_binds,
    ));
    t.push(runner::test(
        "reuseport::exec_reference_unasserted",
        reuseport_exec_reference,
    ));
    for (name, mode, reuseport) in [
        ("fork", Mode::Fork, false),
        ("exec", Mode::Exec, false),
        ("fork_reuseport", Mode::Fork, true),
        ("exec_reuseport", Mode::Exec, true),
    ] {
        t.push(runner::test(
            format!("bind_errors::busy_port::{name}"),
            move || bind_busy(mode, reuseport),
        ));
    }
    t.push(runner::test(
        "bind_errors::malformed_addresses",
        bind_malformed,
    ));
    t.push(runner::test(
        "bind_errors::unresolvable_host",
        bind_unresolvable,
    ));
    t.push(runner::test("bind_errors::tcp6_with_ipv4_address", || {
        bind_wrong_family("tcp6", "127.0.0.1:0", "IPv6")
    }));
    t.push(runner::test("bind_errors::tcp4_with_ipv6_address", || {
        bind_wrong_family("tcp4", "[::1]:0", "IPv4")
    }));
    t.push(runner::test("network::tcp6_loopback", network_tcp6));
    t.push(runner::test(
        "network::tcp_empty_host_dual_stack",
        network_dual_stack,
    ));
    t.push(runner::test("child_errors::fd3_not_open", || {
        child_fd3(Fd3Kind::Closed, &["fd 3", "not open"])
    }));
    t.push(runner::test("child_errors::fd3_regular_file", || {
        child_fd3(Fd3Kind::DevNull, &["fd 3", "not a socket"])
    }));
    t.push(runner::test("child_errors::fd3_tcp_not_listening", || {
        child_fd3(Fd3Kind::TcpConnected, &["fd 3", "not listening"])
    }));
    t.push(runner::test("child_errors::fd3_udp_socket", || {
        child_fd3(Fd3Kind::Udp, &["fd 3", "not a TCP socket"])
    }));
    t.push(runner::test("child_errors::fd3_unix_socket", || {
        child_fd3(Fd3Kind::Unix, &["fd 3", "not a TCP socket"])
    }));
    t.push(runner::test("child_errors::child_flag_malformed", || {
        master_env_error(
            &[("FASTHTTP_PREFORK_CHILD", "yes")],
            false,
            "FASTHTTP_PREFORK_CHILD",
        )
    }));
    for (name, value) in [
        ("negative", "-1"),
        ("letters", "abc"),
        ("empty", ""),
        ("leading_zero", "01"),
    ] {
        t.push(runner::test(
            format!("child_errors::worker_id_malformed::{name}"),
            move || child_env_error(&[("PREFORK_WORKER_ID", value)], "PREFORK_WORKER_ID"),
        ));
    }
    t.push(runner::test(
        "child_errors::reuseport_addr_malformed",
        || {
            child_env_error(
                &[("FX_REUSEPORT", "1"), ("PREFORK_REUSEPORT_ADDR", "nowhere")],
                "PREFORK_REUSEPORT_ADDR",
            )
        },
    ));
    t.push(runner::test("child_errors::listen_fds_malformed", || {
        master_env_error(&[("LISTEN_FDS", "x")], true, "LISTEN_FDS")
    }));
    t.push(runner::test("child_errors::listen_fds_missing", || {
        master_env_error(&[], true, "LISTEN_FDS")
    }));
    for (name, value) in [("zero", "0"), ("letters", "abc"), ("negative", "-5")] {
        t.push(runner::test(
            format!("child_errors::listen_pid_malformed::{name}"),
            move || {
                master_env_error(
                    &[("LISTEN_PID", value), ("LISTEN_FDS", "1")],
                    false,
                    "LISTEN_PID",
                )
            },
        ));
    }
    t.push(runner::test(
        "child_errors::listen_fdnames_wrong_count",
        || {
            master_env_error(
                &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")],
                true,
                "LISTEN_FDNAMES",
            )
        },
    ));
    t.push(runner::test("child_errors::backend_malformed", || {
        master_env_error(&[("PREFORK_BACKEND", "epoll")], false, "PREFORK_BACKEND")
    }));
    for (name, mode, reuseport) in [
        ("fork", Mode::Fork, false),
        ("exec", Mode::Exec, false),
        ("fork_reuseport", Mode::Fork, true),
        ("exec_reuseport", Mode::Exec, true),
    ] {
        t.push(runner::test(
            format!("systemd::serves_inherited::{name}"),
            move || systemd_serves(mode, reuseport),
        ));
    }
    t.push(runner::test("systemd::fd3_not_open", systemd_fd3_closed));
    t.push(runner::test(
        "systemd::other_pid_ignored",
        systemd_other_pid,
    ));
    t.push(runner::test(
        "exec_worker_listener_is_cloexec",
        exec_worker_listener_is_cloexec,
    ));
    t.push(runner::test(
        "nonblocking_inherited_listener_served_blocking",
        nonblocking_inherited_listener_served_blocking,
    ));
    t.push(runner::test(
        "foreign_master::hello_example",
        foreign_master,
    ));
    t.push(runner::test(
        "foreign_master::reuseport_child_binds_addr",
        foreign_reuseport_child,
    ));
    t
}
