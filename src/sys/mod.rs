//! The system calls the crate makes, and the only module that holds `unsafe`.
//!
//! The calls go through rustix where it wraps them safely, through nix where rustix does not
//! (`fork`, the signal mask, signalfd, `sigaction`), and through libc only where neither
//! offers the call in a usable form; `docs/design.md` lists which is which and why. Every
//! function returns owned file descriptors ([`OwnedFd`](std::os::fd::OwnedFd)) or plain
//! values and reports failures as [`io::Error`](std::io::Error) with the OS error code
//! intact. The crate denies `unsafe_code`; each file here that needs `unsafe` allows it for
//! itself (`#![allow(unsafe_code)]`), so a new file starts without. Every `unsafe` block
//! carries a `// SAFETY:` comment (`clippy::undocumented_unsafe_blocks` is denied), and every
//! `unsafe fn` a `# Safety` section.
//!
//! * [`process`]: fork, pidfds, signals to a process, reaping, the parent-death signal, the
//!   pre-`exec` setup of an exec-mode worker; [`pid`]: the pid type, and this process's own
//!   pid, its thread's and its parent's (with `/proc` where a sandbox refuses the calls);
//! * [`signal`]: typed signals, the signal mask, signalfd, dispositions, and the exec-mode
//!   forwarding handlers;
//! * [`event`]: epoll, pipes, `poll`, the readiness pipe;
//! * [`control`]: the control socket (a Unix listener at a path, its clients, `SO_PEERCRED`);
//! * [`net`]: listening sockets and descriptors inherited by number;
//! * [`notice`]: the worker's shutdown notice; [`reuseport`]: socket filters on listeners;
//!   [`handover`]: the binary upgrade's fork + exec of a new master;
//! * [`heartbeat`]: the shared table of worker heartbeats (memfd, `mmap`);
//! * [`identity`]: thread names, CPU affinity, and the credentials a worker drops to.

pub(crate) mod control;
pub(crate) mod event;
pub(crate) mod handover;
pub(crate) mod heartbeat;
pub(crate) mod identity;
pub(crate) mod net;
pub(crate) mod notice;
pub(crate) mod pid;
pub(crate) mod process;
pub(crate) mod reuseport;
pub(crate) mod signal;

/// Writes `n` in decimal into `buf` and returns the digits, most significant first. No
/// allocation and no lock: it runs between `fork` and `exec`, and in a freshly forked worker.
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

pub(crate) use event::{
    Epoll, check_pipe, is_pipe, pipe, pipe_nonblocking, read_pids, wait_readable, write_pid,
};
pub(crate) use net::{
    Designated, UnixName, adopt_listener, bind_tcp, bind_tcp_group_of_one, bind_unix,
    listening_sockets, unix_path_answers,
};
pub(crate) use pid::{Pid, getpid, getppid, rss_bytes, try_getpid};
pub(crate) use process::{
    Fork, Reaped, adopts_orphans, fork, is_refused, kill, named, pidfd_open, pidfd_send_signal,
    probe_master_calls, probe_pidfd, reap_pid, reap_pidfd, refused_hint,
    remove_env_if_single_threaded, set_exec_child_setup, set_parent_death_signal, thread_count,
    wait_any, wait_blocking,
};
pub(crate) use signal::{
    MaskHow, SavedAction, SigSet, children_auto_reaped, forward_signals, read_forwarded,
    read_signals, restore_disposition, set_default_disposition, set_sigmask, sigmask, signalfd,
    stop_forwarding,
};

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_as_format_writes_them() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 42, 4_194_304, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
