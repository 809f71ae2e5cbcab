//! The master's listening sockets, asked for one slot at a time.
//!
//! * [`Listeners::Caller`]: `run`, where the caller bound its own sockets before the fork.
//! * [`Listeners::Bound`]: the builder's listeners, each either one socket every worker
//!   accepts on (TCP or Unix), or
//!   one `SO_REUSEPORT` TCP socket per slot, all in one group. The master
//!   keeps every slot's socket open, so connections queued for a worker that dies or is
//!   replaced wait for the next worker of that slot instead of being reset (the kernel resets
//!   a reuseport socket's queue when its last descriptor closes). When slots are taken out of
//!   service (TTOU), a classic BPF program attached to the group steers new connections to
//!   the slots still in service, so the retired worker can drain its queue before its socket
//!   closes.
//!
//! Sockets passed to this master (systemd's, or an old master's in a binary upgrade) are
//! matched to the builder's listeners in `passed`; the rest are bound here.
//!
//! A graceful stop keeps new connections out of the sockets bound here while the workers
//! drain their queues: with a socket filter that drops connection requests, or, where the
//! kernel refuses the filter (without `CAP_NET_ADMIN` on some kernels), with [`Sink`]s: full
//! sockets added to the group (a shared socket is made a group of one first) to which the
//! group's program sends every new connection, so the kernel drops its request as on any full
//! queue.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::error::Error;
use crate::listen::{self, Network, SocketFile, Spec};
use crate::listener::{Listener, parse_unix};

mod passed;
mod sinks;

/// How long a sink's plug may take to connect: on the loopback interface the handshake is
/// over before `connect` returns, and a request to a queue that is already full is dropped.
const PLUG_WAIT: Duration = Duration::from_millis(50);
/// Sinks per stop: two, so that whichever other socket of the group closes, one sink stays
/// where the program sends connections (the kernel moves the group's last socket into the
/// place of a closed one, and no two sinks are both last).
const SINKS: usize = 2;

/// The listening sockets of one run.
pub(crate) enum Listeners {
    /// `run`: no socket of ours.
    Caller,
    /// The builder's listeners, in its order.
    Bound(Bound),
}

/// The listeners of `listen_and_serve` or `serve`.
pub(crate) struct Bound {
    entries: Vec<Entry>,
    /// Exec-mode workers are told every listener's key (`PREFORK_LISTEN_FDNAMES`): `serve`.
    /// `listen_and_serve` passes its one socket on fd 3 alone, as fasthttp does.
    named: bool,
    /// The socket files bound here are this master's to remove: false in a master started
    /// by an upgrade until it told the old master that it serves (until then, a failure
    /// hands the service back to the old master, which still serves the file), and false
    /// once this master handed the sockets to a new one.
    files_ours: bool,
}

/// One listener: its socket(s) and names.
struct Entry {
    /// The name `serve` sees.
    name: String,
    /// Its key for a new master ([`Spec::key`]); `None` when the master has one listener
    /// (the names of earlier versions).
    key: Option<String>,
    sockets: Sockets,
    /// The file of a Unix socket at a path that this master (or the old master that passed
    /// it on) bound: removed at the start of a graceful stop and when the master exits.
    file: Option<SocketFile>,
}

enum Sockets {
    /// One socket every worker shares.
    Shared(Shared),
    /// One `SO_REUSEPORT` socket per slot.
    PerSlot(Group),
}

/// The socket every worker shares.
pub(crate) struct Shared {
    socket: Listener,
    /// Bound here or passed by an old master (not passed by systemd).
    owned: bool,
    /// A TCP socket that is a reuseport group of one with a program since its `listen`
    /// (bound where the kernel refuses socket filters: `listen::bind_shared`).
    grouped: bool,
    /// The sinks of a graceful stop, at the positions 1 and 2 of the group they make.
    sinks: Vec<Sink>,
}

/// A socket of the listeners' group whose accept queue is full (backlog 0 and one connection
/// of ours, the plug, that nobody accepts): every connection request the group's program
/// sends it is dropped by the kernel, and the client tries again later, as after a filter's
/// drop. The socket closes before its plug (field order).
struct Sink {
    socket: TcpListener,
    /// `None` when a client's connection filled the queue first (see [`open_sinks`]).
    _plug: Option<TcpStream>,
    /// Its position in the group.
    position: usize,
}

/// A reuseport group held by the master.
pub(crate) struct Group {
    /// The socket of each slot; `None` once the slot closed.
    slots: Vec<Option<TcpListener>>,
    /// The group's position of each slot's socket, as the kernel orders them: a socket joins
    /// at the end, and closing one moves the last into its place.
    order: Vec<usize>,
    /// The address every socket of the group is bound to.
    addr: SocketAddr,
    network: Network,
    /// The address as the user wrote it, for error messages.
    shown: String,
    /// The slots in service when a steering program was last attached (after the first
    /// TTIN/TTOU); `None` before.
    steered: Option<usize>,
    /// The sinks of a graceful stop, after every slot in the group's order; once there, every
    /// program sends new connections to one of them.
    sinks: Vec<Sink>,
}

impl Listeners {
    /// The sockets of `listen_and_serve` (one spec, `named` false) or `serve`: those
    /// systemd or an old master passed, else each address bound (once, or `workers` times
    /// in one reuseport group). Fails, naming the address or the variable, before anything
    /// is forked.
    pub(crate) fn open(
        specs: &[Spec],
        network: Network,
        workers: usize,
        unix_mode: Option<u32>,
        named: bool,
    ) -> Result<Listeners, Error> {
        let passed = listen::systemd()?.unwrap_or_default();
        let from_old_master = passed
            .iter()
            .any(|(_, name)| listen::parse_handover_name(name).is_some());
        let mut entries = if passed.is_empty() {
            let mut entries: Vec<Entry> = Vec::with_capacity(specs.len());
            for spec in specs {
                match bind(spec, network, workers, unix_mode) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => {
                        // The socket files of the listeners bound before it go.
                        for file in entries.iter_mut().filter_map(|e| e.file.take()) {
                            file.remove();
                        }
                        return Err(e);
                    }
                }
            }
            entries
        } else if from_old_master {
            passed::from_old_master_sockets(passed, specs, network, workers, unix_mode)?
        } else {
            passed::from_systemd(passed, specs)?
        };
        if !named {
            if let Some(entry) = entries.iter().find(|e| e.is_unix()) {
                return Err(Error::InheritedListener {
                    fd: crate::protocol::LISTENER_FD,
                    reason: format!(
                        "the socket passed is a Unix stream socket ({}), and listen_and_serve \
                         serves a TCP socket: use Prefork::listen with Prefork::serve",
                        entry.local_addr().unwrap_or_default()
                    ),
                });
            }
        }
        let one = specs.len() == 1;
        for (i, (entry, spec)) in entries.iter_mut().zip(specs).enumerate() {
            entry.key = (!one).then(|| spec.key(i));
        }
        for entry in &entries {
            match entry.local_addr() {
                Some(addr) if entry.name == addr => log::info!("listening on {addr}"),
                Some(addr) => log::info!("listening on {addr} ({})", entry.name),
                None => log::info!("listening ({})", entry.name),
            }
        }
        Ok(Listeners::Bound(Bound {
            entries,
            named,
            files_ours: !from_old_master,
        }))
    }

    /// The sockets slot `slot`'s worker serves, one per listener in order, binding a
    /// reuseport socket first for a slot new to its group.
    pub(crate) fn for_slot(&mut self, slot: usize) -> io::Result<Vec<BorrowedFd<'_>>> {
        let Listeners::Bound(bound) = self else {
            return Ok(Vec::new());
        };
        for entry in bound.entries.iter_mut() {
            if let Sockets::PerSlot(group) = &mut entry.sockets {
                group.for_slot(slot)?;
            }
        }
        Ok(bound
            .entries
            .iter()
            .map(|entry| match &entry.sockets {
                Sockets::Shared(shared) => shared.socket.as_fd(),
                Sockets::PerSlot(group) => group.slots[slot]
                    .as_ref()
                    .expect("bound just above")
                    .as_fd(),
            })
            .collect())
    }

    /// The keys an exec-mode worker is told (`PREFORK_LISTEN_FDNAMES`), colon-separated; `None`
    /// for `listen_and_serve` and `run`.
    pub(crate) fn child_fdnames(&self) -> Option<String> {
        let Listeners::Bound(bound) = self else {
            return None;
        };
        bound.named.then(|| {
            bound
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| e.key.clone().unwrap_or_else(|| format!("#{i}")))
                .collect::<Vec<_>>()
                .join(":")
        })
    }

    /// The actual address of each listener, with its name, for the status and the log.
    pub(crate) fn addresses(&self) -> Vec<(String, String)> {
        let Listeners::Bound(bound) = self else {
            return Vec::new();
        };
        bound
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.local_addr().unwrap_or_default()))
            .collect()
    }

    /// In a forked worker: its own sockets out of the master's copies, with their names; the
    /// others are dropped (closed) with the rest.
    #[inline]
    pub(crate) fn take_for_worker(&mut self, slot: usize) -> Vec<(String, Listener)> {
        let Listeners::Bound(bound) = std::mem::replace(self, Listeners::Caller) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(bound.entries.len());
        for entry in bound.entries {
            let socket = match entry.sockets {
                Sockets::Shared(shared) => Some(shared.socket),
                Sockets::PerSlot(mut group) => group
                    .slots
                    .get_mut(slot)
                    .and_then(Option::take)
                    .map(Listener::Tcp),
            };
            if let Some(socket) = socket {
                out.push((entry.name, socket));
            }
        }
        out
    }

    /// Slots `0..active` are in service: steer new connections to their sockets only.
    pub(crate) fn steer(&mut self, active: usize) {
        if let Listeners::Bound(bound) = self {
            for entry in bound.entries.iter_mut() {
                if let Sockets::PerSlot(group) = &mut entry.sockets {
                    group.steer(active);
                }
            }
        }
    }

    /// A graceful stop began: the sockets bound here take no new connection from now on, and
    /// the draining workers accept what is queued, so closing them resets nothing. A socket
    /// passed by systemd is left alone: systemd keeps it open and queues for the next start.
    ///
    /// A Unix socket's file is removed (new clients then fail to connect, as on a closed
    /// port); an abstract Unix socket has no file, and takes connections until it closes.
    /// A TCP socket gets a socket filter; where the kernel refuses it, sinks (see the
    /// module docs); where that fails too, its backlog is cut to one connection, so that at
    /// most that one may be reset at the close, and a warning says why.
    pub(crate) fn refuse_new_connections(&mut self) {
        let Listeners::Bound(bound) = self else {
            return;
        };
        let files_ours = bound.files_ours;
        for entry in bound.entries.iter_mut() {
            if let Some(file) = entry.file.as_ref().filter(|_| files_ours) {
                file.remove();
                entry.file = None;
            }
            entry.sockets.refuse_new_connections();
        }
    }

    /// This master told the old one of an upgrade that it serves: the socket files are its
    /// own from now on.
    pub(crate) fn files_are_ours(&mut self) {
        if let Listeners::Bound(bound) = self {
            bound.files_ours = true;
        }
    }

    /// The sockets were handed to a new master, which serves them: their files are its own.
    pub(crate) fn handed_over(&mut self) {
        if let Listeners::Bound(bound) = self {
            bound.files_ours = false;
        }
    }

    /// The socket files bound here for the listeners (none where an old master's are
    /// served).
    pub(crate) fn files(&self) -> Vec<SocketFile> {
        match self {
            Listeners::Bound(bound) if bound.files_ours => bound
                .entries
                .iter()
                .filter_map(|e| e.file.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The master exits for good: removes the socket files it bound that are still there
    /// (and still the files it made).
    pub(crate) fn remove_files(&mut self) {
        if let Listeners::Bound(bound) = self {
            if !bound.files_ours {
                return;
            }
            for entry in bound.entries.iter_mut() {
                if let Some(file) = entry.file.take() {
                    file.remove();
                }
            }
        }
    }

    /// Every socket to hand to a new master (binary upgrade), with its name for
    /// `LISTEN_FDNAMES`: a reuseport group's sockets in the kernel's group order, so the new
    /// master rebuilds the group with the same positions.
    pub(crate) fn handover(&self) -> Vec<(BorrowedFd<'_>, String)> {
        let Listeners::Bound(bound) = self else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in &bound.entries {
            let key = entry.key.as_deref();
            match &entry.sockets {
                Sockets::Shared(shared) => {
                    out.push((shared.socket.as_fd(), listen::handover_name(key, false)))
                }
                Sockets::PerSlot(group) => {
                    let mut by_position: Vec<(usize, BorrowedFd<'_>)> = group
                        .slots
                        .iter()
                        .zip(&group.order)
                        .filter_map(|(s, &p)| Some((p, s.as_ref()?.as_fd())))
                        .collect();
                    by_position.sort_by_key(|&(p, _)| p);
                    out.extend(
                        by_position
                            .into_iter()
                            .map(|(_, fd)| (fd, listen::handover_name(key, true))),
                    );
                }
            }
        }
        out
    }

    /// `slot` is out of service and its last worker is gone: close its sockets.
    pub(crate) fn close_slot(&mut self, slot: usize) {
        if let Listeners::Bound(bound) = self {
            for entry in bound.entries.iter_mut() {
                if let Sockets::PerSlot(group) = &mut entry.sockets {
                    group.close(slot);
                }
            }
        }
    }
}

impl Entry {
    fn is_unix(&self) -> bool {
        matches!(
            &self.sockets,
            Sockets::Shared(Shared {
                socket: Listener::Unix(_),
                ..
            })
        )
    }

    /// The address the listener is bound to, as the builder writes addresses.
    fn local_addr(&self) -> Option<String> {
        let addr = match &self.sockets {
            Sockets::Shared(shared) => shared.socket.local_addr().ok()?,
            Sockets::PerSlot(group) => crate::listener::ListenAddr::Tcp(group.addr),
        };
        Some(addr.to_string())
    }
}

/// Binds one listener of the builder: a Unix socket (shared), or a TCP address once
/// (shared) or `workers` times in one reuseport group.
fn bind(
    spec: &Spec,
    network: Network,
    workers: usize,
    unix_mode: Option<u32>,
) -> Result<Entry, Error> {
    let addr = spec.addr.as_str();
    if let Some(ua) = parse_unix(addr) {
        let ua = ua.map_err(|reason| Error::Listen {
            addr: addr.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, reason),
        })?;
        let (socket, file) = listen::bind_unix(&ua, unix_mode, addr)?;
        return Ok(Entry {
            name: spec.name(),
            key: None,
            sockets: Sockets::Shared(Shared {
                socket: Listener::Unix(socket),
                owned: true,
                grouped: false,
                sinks: Vec::new(),
            }),
            file,
        });
    }
    let resolved = listen::resolve(addr, network)?;
    let sockets = if !spec.reuseport {
        let (socket, grouped) = listen::bind_shared(resolved, network, addr)?;
        Sockets::Shared(Shared {
            socket: Listener::Tcp(socket),
            owned: true,
            grouped,
            sinks: Vec::new(),
        })
    } else {
        // The first bind fixes the port (`:0` picks one), the others join its group.
        let first = listen::bind(resolved, network, true, addr)?;
        let actual = first.local_addr().map_err(Error::sys("getsockname"))?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(listen::bind(actual, network, true, addr)?);
        }
        Sockets::PerSlot(Group::new(sockets, network, addr))
    };
    Ok(Entry {
        name: spec.name(),
        key: None,
        sockets,
        file: None,
    })
}
