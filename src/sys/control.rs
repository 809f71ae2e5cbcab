//! The control socket's system calls: a Unix stream listener at a path (mode 0600), its
//! non-blocking clients, and who each client is (`SO_PEERCRED`). All through rustix and
//! std, with no `unsafe`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::Mode;
use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// How many connections may wait to be accepted.
const BACKLOG: i32 = 64;

/// The file a listener was bound to, to tell later whether the path still names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file at `path` now (not following a symbolic link), if any.
    pub(crate) fn of(path: &Path) -> Option<FileId> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// What is at a control socket's path before a master binds it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Occupant {
    Nothing,
    /// A socket file nobody listens on (its master died): it may be replaced.
    Stale,
    /// A socket a live process listens on.
    Live,
    /// Something that is not a socket.
    NotSocket,
}

/// Looks at `path`: nothing, a stale socket, a live one (a `connect` succeeds), or a file
/// that is not a socket. An error names the call that failed.
pub(crate) fn occupant(path: &Path) -> io::Result<Occupant> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Occupant::Nothing),
        Err(e) => return Err(super::named("lstat (statx, newfstatat)", e)),
    };
    if !meta.file_type().is_socket() {
        return Ok(Occupant::NotSocket);
    }
    if super::unix_path_answers(path)? {
        Ok(Occupant::Live)
    } else {
        Ok(Occupant::Stale)
    }
}

/// `socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK)`, `bind` at `path`, `chmod`
/// 0600 before `listen` (until then every `connect` is refused, so nobody reaches it with
/// the mode the umask gave it), `listen`. Returns the listener and the file it made. An
/// error names the call that failed; the file is removed where `bind` made it.
pub(crate) fn bind_control(path: &Path) -> io::Result<(OwnedFd, FileId)> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| super::named("socket(AF_UNIX, SOCK_STREAM)", e))?;
    net::bind(&fd, &addr).map_err(|e| super::named("bind", e))?;
    let id = std::fs::symlink_metadata(path)
        .map(|meta| FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
        .map_err(|e| super::named("lstat (statx, newfstatat)", e));
    let made = id.and_then(|id| {
        rustix::fs::chmod(path, Mode::from_raw_mode(0o600))
            .map_err(|e| super::named("chmod (fchmodat)", e))?;
        net::listen(&fd, BACKLOG).map_err(|e| super::named("listen", e))?;
        Ok(id)
    });
    match made {
        Ok(id) => Ok((fd, id)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`: the next waiting client, `None` when none waits.
pub(crate) fn accept_client(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    match net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(super::named("accept4", e)),
    }
}

/// `getsockopt(SO_PEERCRED)`: the client's `(pid, uid)` as of its `connect`. An error names
/// the call.
pub(crate) fn peer(fd: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let cred = net::sockopt::socket_peercred(fd)
        .map_err(|e| super::named("getsockopt(SO_PEERCRED)", e))?;
    Ok((cred.pid.as_raw_nonzero().get(), cred.uid.as_raw()))
}

/// `getuid(2)`.
pub(crate) fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// `recv(2)` with `MSG_DONTWAIT` (`recvfrom` on x86_64), non-blocking: `Ok(0)` at the end,
/// `Err(WouldBlock)` when nothing waits. The client is non-blocking already: the flag costs
/// nothing, and makes the control socket's reads a form of their own that a system call
/// filter can tell from the application's (`read(2)`, or `recv` without the flag).
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match net::recv(fd, &mut *buf, net::RecvFlags::DONTWAIT) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map(|(n, _)| n).map_err(|e| client_error("recv", e)),
        }
    }
}

/// `send(2)` with `MSG_NOSIGNAL` (a client gone is an `EPIPE`, not a `SIGPIPE`) and
/// `MSG_DONTWAIT` (`sendto` on x86_64; the flag, redundant on the non-blocking client, makes
/// the replies a form of their own, as for [`read`]): how much was taken.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        match net::send(fd, buf, net::SendFlags::NOSIGNAL | net::SendFlags::DONTWAIT) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(|e| client_error("send", e)),
        }
    }
}

/// A client's error, named after its call unless it is `EAGAIN` (nothing to do yet).
fn client_error(call: &str, e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::AGAIN {
        e.into()
    } else {
        super::named(call, e)
    }
}

/// `shutdown(SHUT_WR)`: the client reads the end of the reply.
pub(crate) fn end_reply(fd: impl AsFd) {
    let _ = net::shutdown(fd, net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_control_listener_is_private_and_serves() {
        let dir = std::env::temp_dir().join(format!("prefork-sys-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        assert_eq!(occupant(&path).unwrap(), Occupant::Nothing);
        let (listener, id) = bind_control(&path).unwrap();
        assert_eq!(FileId::of(&path), Some(id));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(accept_client(listener.as_fd()).unwrap().is_none());
        let mut client = UnixStream::connect(&path).unwrap();
        let server = accept_client(listener.as_fd()).unwrap().unwrap();
        let (pid, uid) = peer(server.as_fd()).unwrap();
        assert_eq!(pid as u32, std::process::id());
        assert_eq!(uid, super::uid());
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read(server.as_fd(), &mut buf).unwrap(), 2);
        let err = read(server.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(send(server.as_fd(), b"ok").unwrap(), 2);
        end_reply(&server);
        let mut back = String::new();
        client.read_to_string(&mut back).unwrap();
        assert_eq!(back, "ok");
        assert_eq!(occupant(&path).unwrap(), Occupant::Live);
        drop(listener);
        assert_eq!(occupant(&path).unwrap(), Occupant::Stale);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert_eq!(occupant(&path).unwrap(), Occupant::NotSocket);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
