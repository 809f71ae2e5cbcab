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

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::Error;
use crate::listen::{self, Network, SHARED_NAME, SLOT_NAME};
use crate::sys;

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
    /// Bound here (not passed by systemd or an old master).
    owned: bool,
    /// Its name for a new master.
    name: String,
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
            let socket = listen::bind(resolved, network, false, addr)?;
            return Ok(Listeners::Shared(Shared {
                socket,
                owned: true,
                name: SHARED_NAME.to_owned(),
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
        Listeners::Shared(Shared {
            socket,
            owned,
            name,
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
    pub(crate) fn refuse_new_connections(&self) {
        let sockets: Vec<&TcpListener> = match self {
            Listeners::Caller | Listeners::Shared(Shared { owned: false, .. }) => Vec::new(),
            Listeners::Shared(Shared { socket, .. }) => vec![socket],
            Listeners::PerSlot(group) => group.slots.iter().flatten().collect(),
        };
        for socket in sockets {
            if let Err(e) = sys::reuseport::refuse_new_connections(socket.as_fd()) {
                log::warn!("cannot stop new connections before the workers drain ({e})");
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
        }
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
        let targets: Vec<u32> = (0..active)
            .filter_map(|slot| {
                self.slots.get(slot)?.as_ref()?;
                u32::try_from(self.order[slot]).ok()
            })
            .collect();
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
        let last = self.slots.iter().flatten().count();
        // The kernel moves the last socket of the group into the closed one's place.
        if let Some(moved) = self.order.iter().position(|&p| p == last) {
            self.order[moved] = position;
        }
        self.order[slot] = usize::MAX;
        drop(socket);
        // The positions moved: the program must name them anew.
        if let Some(active) = self.steered {
            self.steer(active);
        }
    }
}
