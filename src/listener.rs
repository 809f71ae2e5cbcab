//! The listeners [`crate::Prefork::serve`] hands a worker: [`Listener`] (TCP or a Unix
//! domain stream socket), the [`Stream`] it accepts, its [`ListenAddr`], and the named set
//! [`Listeners`].

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown as HowShutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

/// The address a [`Listener`] is bound to. Its `Display` is the form the builder takes:
/// `127.0.0.1:8080`, `[::1]:8080`, `unix:/run/app.sock`, or `unix:@name` for an
/// abstract-namespace socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP address (with the port the kernel picked for port 0).
    Tcp(SocketAddr),
    /// A Unix domain socket bound to a path.
    Unix(PathBuf),
    /// A Unix domain socket in Linux's abstract namespace: its name, without the leading
    /// NUL byte.
    Abstract(Vec<u8>),
    /// A Unix domain socket without a name (not bound: `socketpair`, or an unbound socket).
    Unnamed,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Abstract(name) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
            ListenAddr::Unnamed => write!(f, "unix:(unnamed)"),
        }
    }
}

impl ListenAddr {
    /// The address of a Unix socket as std reports it.
    pub(crate) fn of_unix(addr: &std::os::unix::net::SocketAddr) -> ListenAddr {
        if let Some(path) = addr.as_pathname() {
            ListenAddr::Unix(path.to_path_buf())
        } else if let Some(name) = addr.as_abstract_name() {
            ListenAddr::Abstract(name.to_vec())
        } else {
            ListenAddr::Unnamed
        }
    }
}

/// A listening socket: TCP or a Unix domain stream socket. What [`crate::Prefork::serve`]
/// hands each worker, one per address of [`crate::Prefork::listen`].
///
/// The common case does not need to know the kind: [`Listener::accept`] and
/// [`crate::Shutdown::incoming`] yield a [`Stream`] that reads and writes either way. For an
/// async runtime, take the std listener out ([`Listener::into_tcp`], [`Listener::into_unix`])
/// and hand it over (`tokio::net::TcpListener::from_std`,
/// `tokio::net::UnixListener::from_std`, after `set_nonblocking(true)`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain stream listener.
    Unix(UnixListener),
}

impl Listener {
    /// Accepts one connection (blocking unless the socket was made non-blocking).
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// The connections, as std's `incoming`: an endless iterator of blocking accepts. For
    /// one that ends when the master asks the worker to stop, see
    /// [`crate::Shutdown::incoming`].
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<Stream>> + '_ {
        std::iter::repeat_with(move || self.accept())
    }

    /// The address the socket is bound to: for TCP with the port the kernel picked when the
    /// builder was given port 0.
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(l) => l.local_addr().map(|a| ListenAddr::of_unix(&a)),
        }
    }

    /// Moves the socket in or out of non-blocking mode (for every process sharing it).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l) => l.set_nonblocking(on),
        }
    }

    /// Whether this is a Unix domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Listener::Unix(_))
    }

    /// The TCP listener, or the listener back when it is a Unix socket.
    pub fn into_tcp(self) -> Result<TcpListener, Listener> {
        match self {
            Listener::Tcp(l) => Ok(l),
            other => Err(other),
        }
    }

    /// The Unix listener, or the listener back when it is a TCP socket.
    pub fn into_unix(self) -> Result<UnixListener, Listener> {
        match self {
            Listener::Unix(l) => Ok(l),
            other => Err(other),
        }
    }

    /// The kind of an owned listening socket (checked by the caller to be a stream socket
    /// of one of the families).
    pub(crate) fn from_fd(fd: OwnedFd, unix: bool) -> Listener {
        if unix {
            Listener::Unix(UnixListener::from(fd))
        } else {
            Listener::Tcp(TcpListener::from(fd))
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

impl TryFrom<Listener> for TcpListener {
    type Error = Listener;
    fn try_from(l: Listener) -> Result<TcpListener, Listener> {
        l.into_tcp()
    }
}

impl TryFrom<Listener> for UnixListener {
    type Error = Listener;
    fn try_from(l: Listener) -> Result<UnixListener, Listener> {
        l.into_unix()
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl From<Listener> for OwnedFd {
    fn from(l: Listener) -> OwnedFd {
        match l {
            Listener::Tcp(l) => l.into(),
            Listener::Unix(l) => l.into(),
        }
    }
}

/// A connection accepted by a [`Listener`]: TCP or Unix, readable and writable either way.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// Sets the read timeout (see [`TcpStream::set_read_timeout`]).
    pub fn set_read_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(d),
            Stream::Unix(s) => s.set_read_timeout(d),
        }
    }

    /// Sets the write timeout (see [`TcpStream::set_write_timeout`]).
    pub fn set_write_timeout(&self, d: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(d),
            Stream::Unix(s) => s.set_write_timeout(d),
        }
    }

    /// Moves the connection in or out of non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Shuts down the read half, the write half or both.
    pub fn shutdown(&self, how: HowShutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// The TCP stream, or the stream back when it is a Unix connection.
    pub fn into_tcp(self) -> Result<TcpStream, Stream> {
        match self {
            Stream::Tcp(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The Unix stream, or the stream back when it is a TCP connection.
    pub fn into_unix(self) -> Result<UnixStream, Stream> {
        match self {
            Stream::Unix(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// Every listener of a worker, each with its name (from [`crate::Prefork::listen_named`],
/// or the address as written for [`crate::Prefork::listen`]), in the order the builder
/// was given them.
#[derive(Debug, Default)]
pub struct Listeners {
    list: Vec<(String, Listener)>,
}

impl Listeners {
    pub(crate) fn new(list: Vec<(String, Listener)>) -> Listeners {
        Listeners { list }
    }

    /// The listener named `name`.
    pub fn get(&self, name: &str) -> Option<&Listener> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    /// Takes the listener named `name` out of the set.
    pub fn take(&mut self, name: &str) -> Option<Listener> {
        let i = self.list.iter().position(|(n, _)| n == name)?;
        Some(self.list.remove(i).1)
    }

    /// The only listener, when there is exactly one (whatever its name).
    pub fn into_only(mut self) -> Option<Listener> {
        if self.list.len() == 1 {
            self.list.pop().map(|(_, l)| l)
        } else {
            None
        }
    }

    /// The names and listeners, in the builder's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Listener)> {
        self.list.iter().map(|(n, l)| (n.as_str(), l))
    }

    /// The names, in the builder's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(n, _)| n.as_str())
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl IntoIterator for Listeners {
    type Item = (String, Listener);
    type IntoIter = std::vec::IntoIter<(String, Listener)>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

/// Parses an address the builder takes: `unix:PATH` (a path, absolute or relative),
/// `unix:@NAME` (the abstract namespace), or anything else, which is a TCP address left for
/// the resolver. `Err` names what is wrong with a `unix:` address.
pub(crate) fn parse_unix(addr: &str) -> Option<Result<UnixAddr, String>> {
    let rest = addr.strip_prefix("unix:")?;
    Some(parse_unix_rest(rest.as_bytes()))
}

/// A Unix socket address of the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnixAddr {
    /// A path in the file system.
    Path(PathBuf),
    /// A name in the abstract namespace (without the leading NUL).
    Abstract(Vec<u8>),
}

/// The longest address `sockaddr_un` holds: 108 bytes, one of which is the path's
/// terminating NUL (or the abstract name's leading one).
pub(crate) const UNIX_PATH_MAX: usize = 107;

fn parse_unix_rest(rest: &[u8]) -> Result<UnixAddr, String> {
    if rest.is_empty() {
        return Err(
            "expected a path after unix: (unix:/run/app.sock) or a name after unix:@".to_owned(),
        );
    }
    if rest.contains(&0) {
        return Err("the address contains a NUL byte".to_owned());
    }
    if let Some(name) = rest.strip_prefix(b"@") {
        if name.is_empty() {
            return Err("expected a name after unix:@".to_owned());
        }
        if name.len() > UNIX_PATH_MAX {
            return Err(format!(
                "the abstract name is {} bytes long; at most {UNIX_PATH_MAX} fit",
                name.len()
            ));
        }
        return Ok(UnixAddr::Abstract(name.to_vec()));
    }
    if rest.len() > UNIX_PATH_MAX {
        return Err(format!(
            "the path is {} bytes long; at most {UNIX_PATH_MAX} fit in a Unix socket address",
            rest.len()
        ));
    }
    if rest.ends_with(b"/") {
        return Err("the path names a directory (it ends with /)".to_owned());
    }
    Ok(UnixAddr::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
        rest,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_parse() {
        assert_eq!(parse_unix("127.0.0.1:80"), None);
        assert_eq!(parse_unix(":80"), None);
        assert_eq!(
            parse_unix("unix:/run/app.sock"),
            Some(Ok(UnixAddr::Path("/run/app.sock".into())))
        );
        assert_eq!(
            parse_unix("unix:rel/app.sock"),
            Some(Ok(UnixAddr::Path("rel/app.sock".into())))
        );
        assert_eq!(
            parse_unix("unix:@app"),
            Some(Ok(UnixAddr::Abstract(b"app".to_vec())))
        );
        for bad in ["unix:", "unix:@", "unix:/run/", "unix:/a\0b"] {
            assert!(matches!(parse_unix(bad), Some(Err(_))), "{bad:?}");
        }
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        assert!(
            parse_unix(&long)
                .unwrap()
                .unwrap_err()
                .contains("at most 107")
        );
        let fits = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(parse_unix(&fits).unwrap().is_ok());
        let long = format!("unix:@{}", "a".repeat(UNIX_PATH_MAX + 1));
        assert!(parse_unix(&long).unwrap().is_err());
    }

    #[test]
    fn addresses_display_as_the_builder_takes_them() {
        let tcp = ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap());
        assert_eq!(tcp.to_string(), "127.0.0.1:8080");
        assert_eq!(
            ListenAddr::Unix("/run/app.sock".into()).to_string(),
            "unix:/run/app.sock"
        );
        assert_eq!(
            ListenAddr::Abstract(b"app".to_vec()).to_string(),
            "unix:@app"
        );
    }
}
