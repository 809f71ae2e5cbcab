//! The master's listening sockets, asked for one slot at a time.
//!
//! * [`Listeners::Caller`]: `run`, where the caller bound its own sockets before the fork.
//! * [`Listeners::Shared`]: one socket every worker accepts on.
//! * [`Listeners::PerSlot`]: one `SO_REUSEPORT` socket per slot, all in one group. The master
//!   keeps every slot's socket open, so connections queued for a worker that dies or is
//!   replaced wait for the next worker of that slot instead of being reset (the kernel resets
//!   a reuseport socket's queue when its last descriptor closes). When slots are taken out of
//!   service (TTOU), a classic BPF program attached to the group steers new connections to
//!   the slots still in service, so the retired worker can drain its queue before its socket
//!   closes.
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
use crate::listen::{self, Network, SHARED_NAME, SLOT_NAME};
use crate::sys;
use crate::sys::reuseport::Plug;

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
    /// One socket every worker shares.
    Shared(Shared),
    /// One `SO_REUSEPORT` socket per slot.
    PerSlot(Group),
}

/// The socket every worker shares.
pub(crate) struct Shared {
    socket: TcpListener,
    /// Bound here or by an old master (not passed by systemd).
    owned: bool,
    /// A reuseport group of one with a program since its `listen` (bound where the kernel
    /// refuses socket filters: `listen::bind_shared`).
    grouped: bool,
    /// Its name for a new master.
    name: String,
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
    /// The sockets of `listen_and_serve`: the one systemd passed, or `addr` bound once
    /// (shared) or `workers` times in one reuseport group. Fails, naming the address, before
    /// anything is forked.
    pub(crate) fn open(
        addr: &str,
        network: Network,
        reuseport: bool,
        workers: usize,
    ) -> Result<Listeners, Error> {
        if let Some(passed) = listen::systemd()? {
            return Ok(Listeners::passed(passed, network, addr, workers));
        }
        let resolved = listen::resolve(addr, network)?;
        if !reuseport {
            let (socket, grouped) = listen::bind_shared(resolved, network, addr)?;
            return Ok(Listeners::Shared(Shared {
                socket,
                owned: true,
                grouped,
                name: SHARED_NAME.to_owned(),
                sinks: Vec::new(),
            }));
        }
        // The first bind fixes the port (`:0` picks one), the others join its group.
        let first = listen::bind(resolved, network, true, addr)?;
        let actual = first.local_addr().map_err(Error::sys("getsockname"))?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(listen::bind(actual, network, true, addr)?);
        }
        Ok(Listeners::PerSlot(Group::new(sockets, network, addr)))
    }

    /// Sockets passed in the socket-activation form: by an old master of this crate (a
    /// reuseport group, each named [`SLOT_NAME`] and in group order, or its shared socket,
    /// [`SHARED_NAME`]), which this master now owns; or by systemd, which keeps its socket
    /// (the first is served).
    fn passed(
        mut passed: Vec<(TcpListener, String)>,
        network: Network,
        addr: &str,
        workers: usize,
    ) -> Listeners {
        if passed.iter().all(|(_, name)| name == SLOT_NAME) {
            log::info!(
                "serving the {} reuseport sockets passed by the old master",
                passed.len()
            );
            let sockets = passed.into_iter().map(|(socket, _)| socket).collect();
            let mut group = Group::new(sockets, network, addr);
            let extra = group.slots.len().saturating_sub(workers);
            if extra > 0 {
                // Fewer workers than sockets: new connections go to the slots served; the
                // old master's workers drain the others, which close with it.
                group.steer(workers);
                for slot in workers..group.slots.len() {
                    group.close(slot);
                }
            }
            return Listeners::PerSlot(group);
        }
        if passed.len() > 1 {
            log::warn!(
                "{} sockets were passed; serving the first (fd 3) only",
                passed.len()
            );
        }
        let (socket, name) = passed.swap_remove(0);
        let owned = name == SHARED_NAME;
        if owned {
            log::info!("serving the socket passed by the old master");
        } else {
            log::info!("serving the socket passed by systemd (fd 3, name {name:?})");
        }
        // A socket an old master made a reuseport group of one (`listen::bind_shared`) is one
        // still: the group and its program belong to the socket.
        let grouped = owned && rustix::net::sockopt::socket_reuseport(&socket).unwrap_or(false);
        Listeners::Shared(Shared {
            socket,
            owned,
            grouped,
            name,
            sinks: Vec::new(),
        })
    }

    /// The socket slot `slot`'s worker serves, binding it first for a slot new to the group.
    pub(crate) fn for_slot(&mut self, slot: usize) -> io::Result<Option<BorrowedFd<'_>>> {
        match self {
            Listeners::Caller => Ok(None),
            Listeners::Shared(shared) => Ok(Some(shared.socket.as_fd())),
            Listeners::PerSlot(group) => group.for_slot(slot).map(Some),
        }
    }

    /// In a forked worker: its own socket out of the master's copies; the others are
    /// dropped (closed) with the rest.
    pub(crate) fn take_for_worker(&mut self, slot: usize) -> Option<TcpListener> {
        match std::mem::replace(self, Listeners::Caller) {
            Listeners::Caller => None,
            Listeners::Shared(shared) => Some(shared.socket),
            Listeners::PerSlot(mut group) => group.slots.get_mut(slot).and_then(Option::take),
        }
    }

    /// Slots `0..active` are in service: steer new connections to their sockets only.
    pub(crate) fn steer(&mut self, active: usize) {
        if let Listeners::PerSlot(group) = self {
            group.steer(active);
        }
    }

    /// A graceful stop began: the sockets bound here take no new connection from now on, and
    /// the draining workers accept what is queued, so closing them resets nothing. A socket
    /// passed by systemd is left alone: systemd keeps it open and queues for the next start.
    ///
    /// First a socket filter on each socket; where the kernel refuses it, sinks (see the
    /// module docs); where that fails too, each socket's backlog is cut to one connection, so
    /// that at most that one may be reset at the close, and a warning says why.
    pub(crate) fn refuse_new_connections(&mut self) {
        let sockets: Vec<&TcpListener> = match self {
            Listeners::Caller | Listeners::Shared(Shared { owned: false, .. }) => return,
            Listeners::Shared(Shared { socket, .. }) => vec![socket],
            Listeners::PerSlot(group) => group.slots.iter().flatten().collect(),
        };
        let Err(filter) = sockets
            .iter()
            .try_for_each(|s| sys::reuseport::refuse_new_connections(s.as_fd()))
        else {
            return;
        };
        let sunk = match self {
            Listeners::Shared(shared) => shared.open_sinks(),
            Listeners::PerSlot(group) => group.open_sinks(),
            Listeners::Caller => return,
        };
        match sunk {
            Ok(()) => log::info!(
                "new connections are held off by full sockets in the group until the workers \
                 have drained (the kernel refused the socket filter: {filter})"
            ),
            Err(e) => {
                let sockets: Vec<&TcpListener> = match self {
                    Listeners::Shared(shared) => vec![&shared.socket],
                    Listeners::PerSlot(group) => group.slots.iter().flatten().collect(),
                    Listeners::Caller => Vec::new(),
                };
                for socket in sockets {
                    let _ = rustix::net::listen(socket, 0);
                }
                log::warn!(
                    "cannot stop new connections before the workers drain: the kernel refused \
                     the socket filter ({filter}; some kernels want CAP_NET_ADMIN for it) and \
                     no full socket could join the group ({e}); each listen queue is cut to one \
                     connection, which the close may reset"
                );
            }
        }
    }

    /// Every socket to hand to a new master (binary upgrade), with its name for
    /// `LISTEN_FDNAMES`: a reuseport group's sockets in the kernel's group order, each named
    /// [`SLOT_NAME`], so the new master rebuilds the group with the same positions.
    pub(crate) fn handover(&self) -> Vec<(BorrowedFd<'_>, String)> {
        match self {
            Listeners::Caller => Vec::new(),
            Listeners::Shared(shared) => vec![(shared.socket.as_fd(), shared.name.clone())],
            Listeners::PerSlot(group) => {
                let mut by_position: Vec<(usize, BorrowedFd<'_>)> = group
                    .slots
                    .iter()
                    .zip(&group.order)
                    .filter_map(|(s, &p)| Some((p, s.as_ref()?.as_fd())))
                    .collect();
                by_position.sort_by_key(|&(p, _)| p);
                by_position
                    .into_iter()
                    .map(|(_, fd)| (fd, SLOT_NAME.to_owned()))
                    .collect()
            }
        }
    }

    /// `slot` is out of service and its last worker is gone: close its socket.
    pub(crate) fn close_slot(&mut self, slot: usize) {
        if let Listeners::PerSlot(group) = self {
            group.close(slot);
        }
    }
}

impl Shared {
    /// Adds the sinks (see [`open_sinks`]) to the shared socket's group, making it a group of
    /// one first where it is none yet.
    fn open_sinks(&mut self) -> io::Result<()> {
        if !self.grouped {
            rustix::net::sockopt::set_socket_reuseport(&self.socket, true)?;
        }
        self.sinks = open_sinks(&self.socket, 1, &[0], self.grouped)?;
        Ok(())
    }
}

/// Adds [`SINKS`] sinks to the group of `any` (one of its sockets; `members` sockets in all,
/// at the positions below `members`), keeping new connections on `targets` until the sinks
/// are full, then sends every new connection to a sink. Returns the sinks.
///
/// Each sink's plug is sent to it by a program that knows the plug's port, attached before
/// the sink joins the group, so no client's connection can reach it first. `grouped` is
/// false for a socket that is no group yet (a shared socket bound where the kernel takes
/// socket filters, whose filter failed at this stop all the same): the first sink makes the
/// group, and a connection request that comes between its `listen` and the first program
/// goes to it by hash; that client's connection fills the sink instead of the plug, and is
/// reset when the sink closes (a window of one `setsockopt`, about 30 µs, that the log
/// shows; see docs/design.md).
fn open_sinks(
    any: &TcpListener,
    members: usize,
    targets: &[u32],
    grouped: bool,
) -> io::Result<Vec<Sink>> {
    let addr = any.local_addr()?;
    let v6only = addr.is_ipv6() && rustix::net::sockopt::ipv6_v6only(any)?;
    let plugs = (0..SINKS)
        .map(|_| Plug::new(addr))
        .collect::<io::Result<Vec<Plug>>>()?;
    let aims: Vec<(u16, u32)> = plugs
        .iter()
        .zip(members..)
        .map(|(p, position)| (p.port(), position as u32))
        .collect();
    if grouped {
        sys::reuseport::steer_plugs(any.as_fd(), &aims, targets)?;
    }
    let mut sockets = Vec::with_capacity(SINKS);
    for _ in 0..SINKS {
        sockets.push(sys::bind_tcp(addr, true, v6only, 0)?);
        if !grouped && sockets.len() == 1 {
            // The shortest program first: the window ends when it is attached.
            sys::reuseport::send_all(any.as_fd(), 0)?;
            sys::reuseport::steer_plugs(any.as_fd(), &aims, targets)?;
        }
    }
    let mut sinks = Vec::with_capacity(SINKS);
    for ((socket, plug), position) in sockets.into_iter().zip(plugs).zip(members..) {
        let plug = plug.connect(addr, PLUG_WAIT);
        let queued = sys::reuseport::queued(socket.as_fd())?;
        let plug = match plug {
            Ok(plug) if queued == 1 => Some(plug),
            Ok(plug) => {
                log::warn!(
                    "{} connection(s) reached a full socket of the graceful stop before its \
                     program did; they will be reset when it closes",
                    queued.saturating_sub(1)
                );
                Some(plug)
            }
            Err(e) if queued > 0 => {
                log::warn!(
                    "a connection reached a full socket of the graceful stop before its program \
                     did ({e}); it will be reset when the socket closes"
                );
                None
            }
            Err(e) => return Err(e),
        };
        sinks.push(Sink {
            socket,
            _plug: plug,
            position,
        });
    }
    aim(any, &sinks)?;
    Ok(sinks)
}

/// Sends every new connection of the group of `any` to the sink with the lowest position,
/// which is never the group's last socket, so that closing any other socket leaves it where
/// it is.
fn aim(any: &TcpListener, sinks: &[Sink]) -> io::Result<()> {
    let Some(lowest) = sinks.iter().map(|s| s.position).min() else {
        return Ok(());
    };
    sys::reuseport::send_all(any.as_fd(), lowest as u32)
}

impl Group {
    /// A group from sockets bound in slot order (each joined the group at `listen`).
    fn new(sockets: Vec<TcpListener>, network: Network, shown: &str) -> Group {
        let addr = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .expect("a group of bound sockets");
        Group {
            order: (0..sockets.len()).collect(),
            slots: sockets.into_iter().map(Some).collect(),
            addr,
            network,
            shown: shown.to_owned(),
            steered: None,
            sinks: Vec::new(),
        }
    }

    /// The group positions of the open slots among `0..active`.
    fn targets(&self, active: usize) -> Vec<u32> {
        (0..active)
            .filter_map(|slot| {
                self.slots.get(slot)?.as_ref()?;
                u32::try_from(self.order[slot]).ok()
            })
            .collect()
    }

    /// Adds the sinks of a graceful stop after the open slots (see [`open_sinks`]).
    fn open_sinks(&mut self) -> io::Result<()> {
        let members = self.slots.iter().flatten().count();
        let targets = self.targets(self.steered.unwrap_or(self.slots.len()));
        let any = self
            .slots
            .iter()
            .flatten()
            .next()
            .ok_or_else(|| io::Error::other("no socket is open"))?;
        self.sinks = open_sinks(any, members, &targets, true)?;
        Ok(())
    }

    fn for_slot(&mut self, slot: usize) -> io::Result<BorrowedFd<'_>> {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
            self.order.resize(slot + 1, usize::MAX);
        }
        if self.slots[slot].is_none() {
            let socket = listen::bind(self.addr, self.network, true, &self.shown)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.order[slot] = self.slots.iter().flatten().count();
            self.slots[slot] = Some(socket);
        }
        Ok(self.slots[slot].as_ref().expect("bound just above").as_fd())
    }

    fn steer(&mut self, active: usize) {
        if !self.sinks.is_empty() {
            // Stopping: the sinks take every new connection.
            return;
        }
        let targets = self.targets(active);
        let Some(any) = self.slots.iter().flatten().next() else {
            return;
        };
        match sys::reuseport::steer(any.as_fd(), &targets) {
            Ok(()) => self.steered = Some(active),
            Err(e) => log::warn!(
                "cannot steer connections away from retired slots ({e}); \
                 connections queued on a retired slot's socket may be reset when it closes"
            ),
        }
    }

    fn close(&mut self, slot: usize) {
        let Some(socket) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let position = self.order[slot];
        let last = self.slots.iter().flatten().count() + self.sinks.len();
        // The kernel moves the last socket of the group into the closed one's place.
        if let Some(moved) = self.order.iter().position(|&p| p == last) {
            self.order[moved] = position;
        } else if let Some(sink) = self.sinks.iter_mut().find(|s| s.position == last) {
            sink.position = position;
        }
        self.order[slot] = usize::MAX;
        drop(socket);
        // The positions moved: the program must name them anew. (The sink it named did not
        // move: it was not the last.)
        if !self.sinks.is_empty() {
            let any = self.slots.iter().flatten().next();
            let any = any.or(self.sinks.first().map(|s| &s.socket));
            if let Some(Err(e)) = any.map(|any| aim(any, &self.sinks)) {
                log::warn!("cannot send new connections to a full socket anew ({e})");
            }
        } else if let Some(active) = self.steered {
            self.steer(active);
        }
    }
}

impl Drop for Group {
    /// During a stop, closes the slots' sockets one at a time, each time naming the sink's
    /// place anew, before the sinks close.
    fn drop(&mut self) {
        if !self.sinks.is_empty() {
            for slot in 0..self.slots.len() {
                self.close(slot);
            }
        }
    }
}
