//! The control socket's IO: the listener and its clients in the master's epoll set, each
//! client non-blocking with a deadline for its request and a size limit; the requests become
//! the supervisor's commands, its answers become reply lines.
//!
//! A client is read until its newline (or its end), at most [`MAX_REQUEST`] bytes, within
//! [`REQUEST_DEADLINE`] of its connection; then it waits, unwatched, for its answer, which is
//! written (watching for writability only if the socket's buffer is full), and the
//! connection is closed. Only a peer whose uid is the master's, or root, is served. With no
//! client connected there is no timer.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::MAX_REQUEST;
use crate::error::Error;
use crate::supervisor::{Client as ClientId, Command};
use crate::sys::{self, control::FileId, control::Occupant};

/// How long a client has to send its request line after it connected.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// How long the listener rests after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// How many clients may be connected at once; more are answered with an error and closed.
const MAX_CLIENTS: usize = 128;

/// The epoll token of the control socket's listener.
pub(crate) const LISTENER_TOKEN: u64 = u64::MAX - 5;
/// Clients' epoll tokens are this plus their number (pids, the other tokens, are below
/// 2^31).
pub(crate) const CLIENT_TOKEN_BASE: u64 = 1 << 40;

/// Where a client is.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// Its request is being read.
    Reading,
    /// Its command is with the supervisor (not watched).
    Waiting,
    /// Its reply is being written.
    Writing,
}

struct Client {
    fd: OwnedFd,
    stage: Stage,
    request: Vec<u8>,
    reply: Vec<u8>,
    sent: usize,
    /// Until when its request may come (while reading).
    deadline: Option<Duration>,
    /// Whether it is registered in the epoll set.
    watched: bool,
    /// Its command, once read.
    command: Option<Command>,
}

/// What a wake-up of a client's descriptor produced.
pub(crate) enum Request {
    Command(ClientId, Command),
}

/// The control socket: its listener, the path it answers at, its clients.
pub(crate) struct Control {
    path: PathBuf,
    listener: OwnedFd,
    /// The socket file this master made, to tell at exit whether the path still names it.
    file: FileId,
    /// In a new master of an upgrade: the temporary path its socket was bound at, renamed to
    /// `path` once it serves.
    staged: Option<PathBuf>,
    clients: BTreeMap<ClientId, Client>,
    next_id: ClientId,
    uid: u32,
    /// `accept` failed (out of descriptors, say): the listener is out of the epoll set
    /// until then, so that a listener that stays readable does not spin the loop.
    paused_until: Option<Duration>,
    /// The error of the last failed `accept`, until one succeeds: the same error again is
    /// logged at debug only.
    accept_error: Option<String>,
    /// The error of the last failed read of a request or write of a reply, until one
    /// succeeds: the same error again is logged at debug only.
    client_error: Option<String>,
}

impl Control {
    /// Binds the control socket at `path` (mode 0600). A stale socket file (nobody listens)
    /// is replaced; a live one, a missing directory or a file that is no socket is an error
    /// naming the path. A new master of an upgrade (`upgrade`) binds a temporary path beside
    /// it, and takes `path` over with a rename once it serves ([`Control::take_over`]).
    pub(crate) fn bind(path: &Path, upgrade: bool) -> Result<Control, Error> {
        let fail = |what: &str, source: Option<io::Error>| Error::Control {
            path: path.to_owned(),
            what: what.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(fail(
                "cannot make the control socket: its directory does not exist",
                None,
            ));
        }
        let at = if upgrade {
            let mut staged = path.as_os_str().to_owned();
            staged.push(format!(".{}.new", sys::getpid()));
            PathBuf::from(staged)
        } else {
            path.to_owned()
        };
        match sys::control::occupant(&at) {
            Ok(Occupant::Nothing) => {}
            Ok(Occupant::Stale) => {
                log::info!(
                    "replacing the stale control socket {} (nobody listens on it)",
                    at.display()
                );
                std::fs::remove_file(&at).map_err(|e| {
                    fail(
                        "cannot remove the stale control socket",
                        Some(sys::named("unlink", e)),
                    )
                })?;
            }
            Ok(Occupant::Live) => {
                return Err(fail(
                    "another master answers on this control socket (stop it, or choose \
                     another path)",
                    None,
                ));
            }
            Ok(Occupant::NotSocket) => {
                return Err(fail(
                    "a file that is not a socket is in the way of the control socket",
                    None,
                ));
            }
            Err(e) => return Err(fail("cannot look at the control socket's path", Some(e))),
        }
        let (listener, file) = sys::control::bind_control(&at)
            .map_err(|e| fail("cannot make the control socket", Some(e)))?;
        Ok(Control {
            path: path.to_owned(),
            listener,
            file,
            staged: upgrade.then_some(at),
            clients: BTreeMap::new(),
            next_id: 0,
            uid: sys::control::uid(),
            paused_until: None,
            accept_error: None,
            client_error: None,
        })
    }

    /// The path it answers at.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, for the epoll set.
    pub(crate) fn listener(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// A new master that serves: its socket, bound at a temporary path, takes the path over
    /// (`rename(2)`, so a client always finds a master there). Where the rename fails (a
    /// sandbox refusing it), the socket stays at the temporary path, with a warning, and
    /// serves there; the old master removes its own file at the path when it exits, and this
    /// one removes the temporary file when it does.
    pub(crate) fn take_over(&mut self) {
        let Some(staged) = self.staged.take() else {
            return;
        };
        match std::fs::rename(&staged, &self.path) {
            Ok(()) => log::info!("control socket {} taken over", self.path.display()),
            Err(e) => {
                log::warn!(
                    "cannot move the control socket {} to {}: {}; it answers at {} until \
                     this master exits",
                    staged.display(),
                    self.path.display(),
                    sys::named("rename", e),
                    staged.display()
                );
                self.staged = Some(staged);
            }
        }
    }

    /// An old master takes the service back after an upgrade probation: a socket bound at a
    /// temporary path beside the path takes the path over (`rename(2)`, so a client always
    /// finds a master there) and replaces the listener whose file the new master had
    /// replaced. Clients already connected keep their connections.
    pub(crate) fn take_back(&mut self, epoll: &sys::Epoll) -> io::Result<()> {
        let mut staged = self.path.as_os_str().to_owned();
        staged.push(format!(".{}.new", sys::getpid()));
        let staged = PathBuf::from(staged);
        if sys::control::occupant(&staged).is_ok_and(|o| o == Occupant::Stale) {
            let _ = std::fs::remove_file(&staged);
        }
        let (listener, file) = sys::control::bind_control(&staged)?;
        if let Err(e) = std::fs::rename(&staged, &self.path) {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        let _ = epoll.delete(self.listener.as_fd());
        self.listener = listener;
        self.file = file;
        self.staged = None;
        if self.paused_until.is_none() {
            epoll.add(self.listener.as_fd(), LISTENER_TOKEN)?;
        }
        Ok(())
    }

    /// The new master `pid` of an upgrade is gone: its socket file, if it left one before
    /// taking the path over, is removed.
    pub(crate) fn remove_staged_of(&self, pid: u32) {
        let mut staged = self.path.as_os_str().to_owned();
        staged.push(format!(".{pid}.new"));
        let staged = PathBuf::from(staged);
        if sys::control::occupant(&staged).is_ok_and(|o| o == Occupant::Stale) {
            let _ = std::fs::remove_file(&staged);
        }
    }

    /// At exit: removes the socket file, unless the path names another master's (an
    /// upgrade's new master took it over). A file that cannot be removed is left, with a
    /// warning (the next master at the path finds it stale and replaces it).
    pub(crate) fn remove(&self) {
        let at = self.staged.as_deref().unwrap_or(&self.path);
        if FileId::of(at) == Some(self.file) {
            if let Err(e) = std::fs::remove_file(at) {
                log::warn!(
                    "cannot remove the control socket {}: {}",
                    at.display(),
                    sys::named("unlink", e)
                );
            }
        }
    }

    /// The command of client `id`, while it waits for its answer.
    pub(crate) fn command_of(&self, id: ClientId) -> Option<Command> {
        self.clients.get(&id).and_then(|c| c.command)
    }

    /// The earliest deadline of a client's request; `None` with no client reading.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        let clients = self.clients.values().filter_map(|c| c.deadline);
        clients.chain(self.paused_until).min()
    }

    /// The listener is readable: accepts every waiting client. A peer of another user is
    /// answered with an error and closed, and logged.
    pub(crate) fn accept(&mut self, epoll: &sys::Epoll, now: Duration) {
        loop {
            let fd = match sys::control::accept_client(self.listener.as_fd()) {
                Ok(Some(fd)) => {
                    self.accept_error = None;
                    fd
                }
                Ok(None) => return,
                Err(e) => {
                    let error = e.to_string();
                    let level = if self.accept_error.as_ref() == Some(&error) {
                        log::Level::Debug
                    } else {
                        log::Level::Warn
                    };
                    log::log!(
                        level,
                        "control socket {}: accept failed: {error}; trying again in {}s",
                        self.path.display(),
                        ACCEPT_RETRY.as_secs()
                    );
                    self.accept_error = Some(error);
                    let _ = epoll.delete(self.listener.as_fd());
                    self.paused_until = Some(now.saturating_add(ACCEPT_RETRY));
                    return;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let mut client = Client {
                fd,
                stage: Stage::Reading,
                request: Vec::new(),
                reply: Vec::new(),
                sent: 0,
                deadline: Some(now.saturating_add(REQUEST_DEADLINE)),
                watched: false,
                command: None,
            };
            let refused = match sys::control::peer(client.fd.as_fd()) {
                Ok((_, uid)) if uid == self.uid || uid == 0 => None,
                Ok((pid, uid)) => {
                    log::warn!(
                        "control socket {}: refused a client of uid {uid} (pid {pid}): only \
                         uid {} or root may use it",
                        self.path.display(),
                        self.uid
                    );
                    Some(format!(
                        "permission denied: uid {uid} may not use this control socket"
                    ))
                }
                Err(e) => {
                    log::warn!(
                        "control socket {}: refused a client: cannot tell who it is: {e}",
                        self.path.display()
                    );
                    Some(format!("cannot tell who the client is: {e}"))
                }
            };
            let refused = refused.or_else(|| {
                (self.clients.len() >= MAX_CLIENTS)
                    .then(|| format!("busy: {MAX_CLIENTS} clients are connected"))
            });
            if let Err(e) = epoll.add(client.fd.as_fd(), CLIENT_TOKEN_BASE + id) {
                log::warn!("control socket: cannot watch a client: {e}");
                continue;
            }
            client.watched = true;
            self.clients.insert(id, client);
            if let Some(error) = refused {
                self.reply(id, error_line(&error), epoll);
            }
        }
    }

    /// The client behind `token` is readable (or writable): reads its request, or writes
    /// more of its reply. Returns its command once its request line is complete.
    pub(crate) fn on_ready(&mut self, token: u64, epoll: &sys::Epoll) -> Option<Request> {
        let id = token.checked_sub(CLIENT_TOKEN_BASE)?;
        let client = self.clients.get_mut(&id)?;
        match client.stage {
            Stage::Reading => self.read(id, epoll),
            Stage::Writing => {
                self.write(id, epoll);
                None
            }
            Stage::Waiting => None,
        }
    }

    fn read(&mut self, id: ClientId, epoll: &sys::Epoll) -> Option<Request> {
        let client = self.clients.get_mut(&id)?;
        let mut buf = [0u8; 1024];
        let ended = loop {
            match sys::control::read(client.fd.as_fd(), &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    client.request.extend_from_slice(&buf[..n]);
                    if client.request.contains(&b'\n') || client.request.len() > MAX_REQUEST {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => {
                    self.client_failed("cannot read a request", &e);
                    self.close(id, epoll);
                    return None;
                }
            }
        };
        let line = match client.request.iter().position(|&b| b == b'\n') {
            Some(end) if end < MAX_REQUEST => client.request[..end].to_vec(),
            _ if client.request.len() >= MAX_REQUEST => {
                let error = format!(
                    "request too long: a request is one line of at most {MAX_REQUEST} bytes"
                );
                self.reply(id, error_line(&error), epoll);
                return None;
            }
            // A request without its newline, then the end: taken as it is.
            None if ended => std::mem::take(&mut client.request),
            _ => return None,
        };
        match crate::control::parse_request(&line) {
            Ok(command) => {
                client.command = Some(command);
                client.stage = Stage::Waiting;
                client.deadline = None;
                if client.watched {
                    let _ = epoll.delete(client.fd.as_fd());
                    client.watched = false;
                }
                Some(Request::Command(id, command))
            }
            Err(error) => {
                self.reply(id, error_line(&error), epoll);
                None
            }
        }
    }

    /// Clients whose request did not come within [`REQUEST_DEADLINE`] are answered with an
    /// error and closed.
    pub(crate) fn on_timer(&mut self, now: Duration, epoll: &sys::Epoll) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            if let Err(e) = epoll.add(self.listener.as_fd(), LISTENER_TOKEN) {
                log::warn!("control socket {}: {e}", self.path.display());
            }
        }
        let late: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let error = format!(
                "no complete request line within {}s of connecting",
                REQUEST_DEADLINE.as_secs()
            );
            self.reply(id, error_line(&error), epoll);
        }
    }

    /// Writes the reply `line` (a newline is added) to client `id`; a client gone already
    /// is forgotten.
    pub(crate) fn reply(&mut self, id: ClientId, line: String, epoll: &sys::Epoll) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.stage = Stage::Writing;
        client.deadline = None;
        client.reply = line.into_bytes();
        client.reply.push(b'\n');
        client.sent = 0;
        self.write(id, epoll);
    }

    fn write(&mut self, id: ClientId, epoll: &sys::Epoll) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        while client.sent < client.reply.len() {
            match sys::control::send(client.fd.as_fd(), &client.reply[client.sent..]) {
                Ok(n) => client.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let token = CLIENT_TOKEN_BASE + id;
                    let watched = if client.watched {
                        epoll.watch(client.fd.as_fd(), token, true)
                    } else {
                        epoll
                            .add(client.fd.as_fd(), token)
                            .and_then(|()| epoll.watch(client.fd.as_fd(), token, true))
                    };
                    client.watched = true;
                    if watched.is_err() {
                        break;
                    }
                    return;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        sys::control::end_reply(&client.fd);
        if let Some(e) = failed {
            self.client_failed("cannot send a reply", &e);
        }
        self.close(id, epoll);
    }

    /// Logs a client's failed read or write (`what`: which) at warn, or at debug where the
    /// last one failed the same way. A client gone (`EPIPE`, `ECONNRESET`) is at debug
    /// always: only a failure of the master's own (a sandbox's refusal) is worth a warning.
    fn client_failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let error = e.to_string();
        let gone = error.contains("Broken pipe") || error.contains("Connection reset");
        let level = if gone || self.client_error.as_ref() == Some(&error) {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "control socket {}: {what}: {error}",
            self.path.display()
        );
        if !gone {
            self.client_error = Some(error);
        }
    }

    fn close(&mut self, id: ClientId, epoll: &sys::Epoll) {
        if let Some(client) = self.clients.remove(&id) {
            if client.watched {
                let _ = epoll.delete(client.fd.as_fd());
            }
        }
    }

    /// At exit: the replies still being written get a last, blocking-free try; every client
    /// is closed.
    pub(crate) fn finish(&mut self) {
        for client in self.clients.values() {
            if client.stage == Stage::Writing {
                let _ = sys::control::send(client.fd.as_fd(), &client.reply[client.sent..]);
            } else if client.stage == Stage::Waiting {
                let line = error_line("the master exited before the outcome was known");
                let _ = sys::control::send(client.fd.as_fd(), format!("{line}\n").as_bytes());
            }
        }
        self.clients.clear();
    }
}

/// `{"v":1,"ok":false,"error":"..."}`.
pub(crate) fn error_line(error: &str) -> String {
    let mut out = format!(
        "{{\"v\":{},\"ok\":false,\"error\":",
        crate::control::VERSION
    );
    crate::control::push_json_str(&mut out, error);
    out.push('}');
    out
}
