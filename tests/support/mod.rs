//! The support library of every process test in the workspace: the library's
//! `harness = false` binaries (`tests/processes.rs`, `tests/listeners.rs`,
//! `tests/fleet.rs`) declare `mod support;`; `preforked-tokio/tests/drain.rs` and the demos'
//! tests (`demos/tests/*.rs`, under libtest) include this same directory with
//! `#[path = "../../tests/support/mod.rs"] mod support;`. Each uses what it needs.
//!
//! * [`runner`]: the libtest-compatible runner of a `harness = false` binary; a test fails
//!   by panicking.
//! * [`process`]: starting a fixture (the test binary itself, in a role) in a process group
//!   of its own, reading its report lines, waiting for conditions with one generous
//!   deadline, and cleaning up whatever happens.
//! * [`net`]: asking a fixture's workers over TCP.
//! * [`control`]: a master's control socket, as a raw client.
//! * [`procfs`]: process, descriptor and socket state from `/proc`.
//! * [`backend`]: the reaping backends every supervision case runs under.
//! * [`seccomp`]: the filters that simulate a sandbox refusing system calls (also included
//!   by the benches).
//! * [`notify`]: systemd's side of the notification protocol, a datagram socket the test
//!   binds.
//! * [`fixture`] and [`report`]: what the fixture side shares: role, exit codes, logger,
//!   options, and the report lines both sides speak.

// Each binary uses a part of the library.
#![allow(dead_code)]

pub mod backend;
pub mod control;
pub mod fixture;
pub mod net;
pub mod notify;
pub mod process;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod seccomp;
