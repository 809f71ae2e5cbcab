//! The client side of a master's control socket, raw: request lines as bytes, reply lines
//! as the master wrote them, and the few fields a test reads from them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::process::DEADLINE;

/// Connects to the control socket at `path` (one try).
pub fn connect(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connecting to the control socket {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    stream
}

/// Writes `bytes` as they are, then reads the reply until the master closes the connection;
/// with `end`, the client's side is shut down after the bytes.
pub fn exchange(path: &Path, bytes: &[u8], end: bool) -> String {
    let mut stream = connect(path);
    stream.write_all(bytes).expect("sending the request");
    if end {
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutting the request down");
    }
    read_reply(&mut stream)
}

/// The reply on `stream`, read until the master closes it: exactly one line.
pub fn read_reply(stream: &mut UnixStream) -> String {
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("reading the reply");
    let line = reply
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("the reply is not one line: {reply:?}"));
    assert!(!line.contains('\n'), "more than one line: {reply:?}");
    line.to_owned()
}

/// `command` and its newline; the reply line.
pub fn request(path: &Path, command: &str) -> String {
    exchange(path, format!("{command}\n").as_bytes(), false)
}

/// Whether the reply says `"ok":true` (the master writes `v` first, then `ok`).
pub fn is_ok(reply: &str) -> bool {
    reply.starts_with("{\"v\":1,\"ok\":true,")
}

/// Whether the reply is an error reply whose message contains `needle`.
pub fn is_error(reply: &str, needle: &str) -> bool {
    reply.starts_with("{\"v\":1,\"ok\":false,") && reply.contains(needle) && reply.ends_with('}')
}

/// The number in the field `"name":N` (the first one).
pub fn number(reply: &str, name: &str) -> Option<u64> {
    let at = reply.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = reply[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The numbers of the array field `"name":[...]` (the first one).
pub fn numbers(reply: &str, name: &str) -> Option<Vec<u64>> {
    let at = reply.find(&format!("\"{name}\":["))? + name.len() + 4;
    let end = at + reply[at..].find(']')?;
    let inner = &reply[at..end];
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|n| n.parse().ok()).collect()
}
