//! The graceful stop's hold on new connections: a socket filter on each socket the master
//! bound, or where the kernel refuses it, full sockets ([`Sink`]s) in the listeners' reuseport
//! group (see the parent module's docs and docs/design.md, "A graceful stop without
//! privilege"); and the bookkeeping of a reuseport group's positions as its sockets close.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};

use super::{Group, PLUG_WAIT, SINKS, Shared, Sink, Sockets};
use crate::listen::{self, Network};
use crate::listener::Listener;
use crate::sys;
use crate::sys::reuseport::Plug;

impl Sockets {
    pub(super) fn refuse_new_connections(&mut self) {
        let sockets: Vec<&TcpListener> = match self {
            Sockets::Shared(Shared {
                socket: Listener::Unix(_),
                ..
            })
            | Sockets::Shared(Shared { owned: false, .. }) => return,
            Sockets::Shared(Shared {
                socket: Listener::Tcp(socket),
                ..
            }) => vec![socket],
            Sockets::PerSlot(group) => group.slots.iter().flatten().collect(),
        };
        let Err(filter) = sockets
            .iter()
            .try_for_each(|s| sys::reuseport::refuse_new_connections(s.as_fd()))
        else {
            return;
        };
        let sunk = match self {
            Sockets::Shared(shared) => shared.open_sinks(),
            Sockets::PerSlot(group) => group.open_sinks(),
        };
        match sunk {
            Ok(()) => log::info!(
                "new connections are held off by full sockets in the group until the workers \
                 have drained (the kernel refused the socket filter: {filter})"
            ),
            Err(e) => {
                let sockets: Vec<&TcpListener> = match self {
                    Sockets::Shared(Shared {
                        socket: Listener::Tcp(socket),
                        ..
                    }) => vec![socket],
                    Sockets::PerSlot(group) => group.slots.iter().flatten().collect(),
                    Sockets::Shared(_) => Vec::new(),
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
}

impl Shared {
    /// Adds the sinks (see [`open_sinks`]) to the shared socket's group, making it a group of
    /// one first where it is none yet.
    fn open_sinks(&mut self) -> io::Result<()> {
        let Listener::Tcp(socket) = &self.socket else {
            return Ok(());
        };
        if !self.grouped {
            rustix::net::sockopt::set_socket_reuseport(socket, true)?;
        }
        self.sinks = open_sinks(socket, 1, &[0], self.grouped)?;
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
    pub(super) fn new(sockets: Vec<TcpListener>, network: Network, shown: &str) -> Group {
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

    pub(super) fn for_slot(&mut self, slot: usize) -> io::Result<BorrowedFd<'_>> {
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

    pub(super) fn steer(&mut self, active: usize) {
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

    pub(super) fn close(&mut self, slot: usize) {
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
