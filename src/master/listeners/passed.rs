//! The sockets passed to this master, matched to the builder's listeners: systemd's by
//! name (`LISTEN_FDNAMES`), an old master's (binary upgrade) by key, each group of them
//! adopted as the listener's shared socket or reuseport group.

use std::net::TcpListener;

use super::{Entry, Group, Shared, Sockets, bind};
use crate::error::Error;
use crate::listen::{self, Network, SocketFile, Spec};
use crate::listener::Listener;
use crate::protocol::LISTEN_FDNAMES_ENV;

/// Sockets passed by an old master for one listener: its key and whether they are a
/// reuseport group.
struct Passed {
    key: Option<String>,
    reuseport: bool,
    sockets: Vec<Listener>,
}

/// The sockets systemd passed, matched to the builder's listeners: with one listener
/// without a name (`listen_and_serve`, or one `listen`), the first socket whatever its name;
/// otherwise each listener's name must be passed exactly once, and every name passed must
/// be a listener's.
pub(super) fn from_systemd(
    passed: Vec<(Listener, String)>,
    specs: &[Spec],
) -> Result<Vec<Entry>, Error> {
    let shared = |socket: Listener| {
        Sockets::Shared(Shared {
            socket,
            owned: false,
            grouped: false,
            sinks: Vec::new(),
        })
    };
    let all: Vec<String> = passed.iter().map(|(_, n)| n.clone()).collect();
    let value = all.join(":");
    let mismatch = |reason: String| Error::InvalidEnv {
        var: LISTEN_FDNAMES_ENV,
        value: value.clone(),
        reason,
    };
    if let [spec] = specs {
        if spec.named.is_none() {
            let mut passed = passed;
            if passed.len() > 1 {
                log::warn!(
                    "{} sockets were passed; serving the first (fd 3) only",
                    passed.len()
                );
            }
            let (socket, name) = passed.swap_remove(0);
            log::info!("serving the socket passed by systemd (fd 3, name {name:?})");
            return Ok(vec![Entry {
                name: spec.name(),
                key: None,
                sockets: shared(socket),
                file: None,
            }]);
        }
    }
    if let Some(spec) = specs.iter().find(|s| s.named.is_none()) {
        return Err(mismatch(format!(
            "systemd passed {} socket(s) for {} listeners, and the listener {} has no name \
             to match: give every listener a name (Prefork::listen_named) that is a \
             FileDescriptorName= of the socket unit",
            passed.len(),
            specs.len(),
            spec.addr
        )));
    }
    for (i, name) in all.iter().enumerate() {
        if all[..i].contains(name) {
            return Err(mismatch(format!("the name {name:?} is passed twice")));
        }
        if !specs.iter().any(|s| s.named.as_deref() == Some(name)) {
            let names: Vec<&str> = specs.iter().filter_map(|s| s.named.as_deref()).collect();
            return Err(mismatch(format!(
                "a socket named {name:?} (fd {}) matches no listener (the listeners are named \
                 {})",
                3 + i,
                names.join(", ")
            )));
        }
    }
    let mut passed: Vec<Option<(Listener, String)>> = passed.into_iter().map(Some).collect();
    let mut entries = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.named.as_deref().expect("every listener is named");
        let Some(socket) = passed
            .iter_mut()
            .find(|p| p.as_ref().is_some_and(|(_, n)| n == name))
            .and_then(Option::take)
        else {
            return Err(mismatch(format!(
                "no socket named {name:?} was passed (the listener for {})",
                spec.addr
            )));
        };
        log::info!("serving the socket {name:?} passed by systemd");
        entries.push(Entry {
            name: spec.name(),
            key: None,
            sockets: shared(socket.0),
            file: None,
        });
    }
    Ok(entries)
}

/// Sockets passed by an old master of this crate (binary upgrade), which this master now
/// owns, matched to the builder's listeners by key: with one listener on each side, by
/// position. A listener of the builder that the old master did not have is bound anew; a
/// socket that no listener takes is closed (the old master's workers drain it).
pub(super) fn from_old_master_sockets(
    passed: Vec<(Listener, String)>,
    specs: &[Spec],
    network: Network,
    workers: usize,
    unix_mode: Option<u32>,
) -> Result<Vec<Entry>, Error> {
    let mut groups: Vec<Passed> = Vec::new();
    for (socket, name) in passed {
        let Some((key, reuseport)) = listen::parse_handover_name(&name) else {
            log::warn!("a socket named {name:?} came with the old master's; it is closed");
            continue;
        };
        let key = key.map(str::to_owned);
        match groups
            .iter_mut()
            .find(|g| g.key == key && g.reuseport == reuseport)
        {
            Some(g) => g.sockets.push(socket),
            None => groups.push(Passed {
                key,
                reuseport,
                sockets: vec![socket],
            }),
        }
    }
    let single = specs.len() == 1 && groups.len() == 1;
    let mut groups: Vec<Option<Passed>> = groups.into_iter().map(Some).collect();
    let mut entries = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let key = spec.key(i);
        let mut found = groups
            .iter_mut()
            .find(|g| single || g.as_ref().is_some_and(|g| g.key.as_deref() == Some(&key)))
            .and_then(Option::take);
        if found.is_none() && i == 0 {
            // An old master with one listener names its sockets without a key: they are
            // the first listener's.
            found = groups
                .iter_mut()
                .find(|g| g.as_ref().is_some_and(|g| g.key.is_none()))
                .and_then(Option::take);
        }
        let Some(found) = found else {
            log::info!(
                "the old master passed no socket for {}: binding it",
                spec.name()
            );
            entries.push(bind(spec, network, workers, unix_mode)?);
            continue;
        };
        entries.push(adopt_passed(found, spec, network, workers));
    }
    for g in groups.into_iter().flatten() {
        log::warn!(
            "the old master passed {} socket(s) for {:?}, which no listener has now; they are \
             closed here",
            g.sockets.len(),
            g.key.as_deref().unwrap_or("its one listener")
        );
    }
    Ok(entries)
}

/// One listener's sockets from the old master.
fn adopt_passed(found: Passed, spec: &Spec, network: Network, workers: usize) -> Entry {
    let group = found.reuseport && found.sockets.iter().all(|s| !s.is_unix());
    let (sockets, file) = match group {
        true => {
            let sockets: Vec<TcpListener> = found
                .sockets
                .into_iter()
                .filter_map(|s| s.into_tcp().ok())
                .collect();
            log::info!(
                "serving the {} reuseport sockets passed by the old master for {}",
                sockets.len(),
                spec.name()
            );
            let mut group = Group::new(sockets, network, &spec.addr);
            if group.slots.len() > workers {
                // Fewer workers than sockets: new connections go to the slots served; the
                // old master's workers drain the others, which close with it.
                group.steer(workers);
                for slot in workers..group.slots.len() {
                    group.close(slot);
                }
            }
            (Sockets::PerSlot(group), None)
        }
        false => {
            let socket = found
                .sockets
                .into_iter()
                .next()
                .expect("a passed group has a socket");
            log::info!(
                "serving the socket passed by the old master for {}",
                spec.name()
            );
            let file = match socket.local_addr() {
                Ok(crate::listener::ListenAddr::Unix(path)) => SocketFile::at(&path),
                _ => None,
            };
            // A socket the old master made a reuseport group of one (`listen::bind_shared`)
            // is one still: the group and its program belong to the socket.
            let grouped = match &socket {
                Listener::Tcp(tcp) => rustix::net::sockopt::socket_reuseport(tcp).unwrap_or(false),
                _ => false,
            };
            (
                Sockets::Shared(Shared {
                    socket,
                    owned: true,
                    grouped,
                    sinks: Vec::new(),
                }),
                file,
            )
        }
    };
    Entry {
        name: spec.name(),
        key: None,
        sockets,
        file,
    }
}
