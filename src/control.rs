//! The control socket's protocol ([`crate::Prefork::control_socket`]) and its client.
//!
//! A client connects to the master's Unix stream socket, writes one request line (`status`,
//! `metrics`, `reload`, `upgrade`, `rollback`, `scale N`, `stop`) and reads one reply line of
//! JSON: `{"v":1,"ok":true,...}` or `{"v":1,"ok":false,"error":"..."}`. The master answers
//! each command when its outcome is known: `reload` once every slot has a new worker
//! serving, `upgrade` once the new master serves or the upgrade was rolled back, `scale N`
//! once N workers serve. `docs/protocol.md` has every field.
//!
//! [`request_line`] sends a request and returns the reply line as the master wrote it; with
//! the `control-client` feature, `request` parses it (with `serde_json`) into a `Reply`.
//!
//! ```no_run
//! # #[cfg(feature = "control-client")]
//! # fn main() -> Result<(), prefork::Error> {
//! let reply = prefork::control::request("/run/hello.sock", "upgrade")?;
//! if reply.ok() {
//!     println!("new master: {}", reply.get("pid").unwrap());
//! } else {
//!     eprintln!("upgrade failed: {}", reply.error().unwrap_or("?"));
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "control-client"))]
//! # fn main() {}
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::Error;
use crate::supervisor::{Command, MAX_SCALE};

/// The longest request line the master reads, its newline included; a longer one is
/// answered with an error.
pub const MAX_REQUEST: usize = 4096;

/// The version of the replies' format, their `v` field.
pub const VERSION: u32 = 1;

/// Parses one request line (without its newline; a trailing `\r` and blanks around the
/// words are allowed). Returns the command, or why the line is not one.
pub(crate) fn parse_request(line: &[u8]) -> Result<Command, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Err("the request is not UTF-8".to_owned());
    };
    let mut words = text.split_ascii_whitespace();
    let Some(name) = words.next() else {
        return Err(
            "empty request: expected a command (status, metrics, reload, upgrade, \
                    rollback, scale N, stop)"
                .to_owned(),
        );
    };
    let command = match name {
        "status" => Command::Status,
        "metrics" => Command::Metrics,
        "reload" => Command::Reload,
        "upgrade" => Command::Upgrade,
        "rollback" => Command::Rollback,
        "stop" => Command::Stop,
        "scale" => {
            let Some(n) = words.next() else {
                return Err("scale: expected the number of workers (scale N)".to_owned());
            };
            Command::Scale(parse_count(n)?)
        }
        other => {
            return Err(format!(
                "unknown command {}: expected status, metrics, reload, upgrade, rollback, \
                 scale N or stop",
                quoted(other)
            ));
        }
    };
    if let Some(extra) = words.next() {
        return Err(format!("{name}: unexpected {}", quoted(extra)));
    }
    Ok(command)
}

/// A worker count: decimal digits only, 1 to [`MAX_SCALE`].
fn parse_count(word: &str) -> Result<usize, String> {
    let bad = || {
        format!(
            "scale: the number of workers must be 1 to {MAX_SCALE}, not {}",
            quoted(word)
        )
    };
    if word.is_empty() || word.len() > 6 || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match word.parse::<usize>() {
        Ok(n @ 1..=MAX_SCALE) => Ok(n),
        _ => Err(bad()),
    }
}

/// A word of a request, quoted for an error message (shortened to 32 characters).
fn quoted(word: &str) -> String {
    let short: String = word.chars().take(32).collect();
    let mut out = String::new();
    push_json_str(&mut out, &short);
    if short.len() < word.len() {
        out.push('…');
    }
    out
}

/// Appends `s` as a JSON string (quotes included): `"` and `\` escaped, control characters
/// as `\n`, `\r`, `\t` or `\u00XX`; everything else as is (JSON text is UTF-8).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Sends one request to the master's control socket at `path` and returns its reply line
/// (without the newline), as the master wrote it. Waits as long as the command takes (an
/// `upgrade` answers when the new master serves or was rolled back).
///
/// Fails with [`Error::Control`] naming the path when nobody answers there, or when the
/// master closed the connection without a reply.
pub fn request_line(path: impl AsRef<Path>, command: &str) -> Result<String, Error> {
    let path = path.as_ref();
    let fail = |what: &str, source: Option<std::io::Error>| Error::Control {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    };
    if command.contains('\n') {
        return Err(fail("a request is one line", None));
    }
    let mut stream = UnixStream::connect(path).map_err(|e| {
        fail(
            "nobody answers on this control socket (is the master running, with this \
             control_socket?)",
            Some(e),
        )
    })?;
    let mut request = Vec::with_capacity(command.len() + 1);
    request.extend_from_slice(command.as_bytes());
    request.push(b'\n');
    // A master that refuses the client (another user) answers and closes at once, so the
    // request may meet a closed connection: the refusal is still there to read.
    let sent = stream.write_all(&request);
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    if !reply.contains(&b'\n') {
        sent.map_err(|e| fail("sending the request", Some(e)))?;
        read.map_err(|e| fail("reading the reply", Some(e)))?;
    }
    let Some(end) = reply.iter().position(|&b| b == b'\n') else {
        return Err(fail(
            "the master closed the connection without a complete reply",
            None,
        ));
    };
    reply.truncate(end);
    String::from_utf8(reply).map_err(|_| fail("the reply is not UTF-8", None))
}

/// Whether a reply line of the master says its request succeeded: `Some(true)` for a line
/// that begins `{"v":1,"ok":true`, `Some(false)` for one that begins `{"v":1,"ok":false`
/// (any version number), `None` for anything else. Every reply begins with these two fields
/// in this order, byte for byte (`docs/protocol.md`), so a client needs no JSON parser to
/// tell success from failure; the rest of the line is JSON to read with one.
pub fn reply_ok(line: &str) -> Option<bool> {
    let rest = line.strip_prefix("{\"v\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = rest[digits..].strip_prefix(",\"ok\":")?;
    let (ok, after) = if let Some(after) = rest.strip_prefix("true") {
        (true, after)
    } else {
        (false, rest.strip_prefix("false")?)
    };
    matches!(after.bytes().next(), Some(b',' | b'}')).then_some(ok)
}

/// A parsed reply of the master (feature `control-client`).
#[cfg(feature = "control-client")]
#[derive(Debug, Clone)]
pub struct Reply {
    line: String,
    value: serde_json::Value,
}

#[cfg(feature = "control-client")]
impl Reply {
    /// Parses a reply line; `None` unless it is a JSON object with the fields `v` (a number)
    /// and `ok` (a boolean).
    pub fn parse(line: &str) -> Option<Reply> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value.get("v")?.as_u64()?;
        value.get("ok")?.as_bool()?;
        Some(Reply {
            line: line.to_owned(),
            value,
        })
    }

    /// Whether the command succeeded (the `ok` field).
    pub fn ok(&self) -> bool {
        self.value["ok"].as_bool() == Some(true)
    }

    /// The reply format's version (the `v` field).
    pub fn version(&self) -> u64 {
        self.value["v"].as_u64().unwrap_or(0)
    }

    /// Why the command failed (the `error` field), when it did.
    pub fn error(&self) -> Option<&str> {
        self.value.get("error").and_then(|e| e.as_str())
    }

    /// A field of the reply.
    pub fn get(&self, field: &str) -> Option<&serde_json::Value> {
        self.value.get(field)
    }

    /// The whole reply.
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }

    /// The reply line as the master wrote it.
    pub fn line(&self) -> &str {
        &self.line
    }
}

/// Sends one request to the master's control socket at `path` and returns its parsed reply
/// (feature `control-client`); see [`request_line`]. A reply that is not the master's JSON
/// is an [`Error::Control`].
#[cfg(feature = "control-client")]
pub fn request(path: impl AsRef<Path>, command: &str) -> Result<Reply, Error> {
    let path = path.as_ref();
    let line = request_line(path, command)?;
    Reply::parse(&line).ok_or_else(|| Error::Control {
        path: path.to_owned(),
        what: format!("the reply is not the control protocol's JSON: {line}"),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ok_reads_the_two_first_fields() {
        assert_eq!(
            reply_ok(r#"{"v":1,"ok":true,"command":"status"}"#),
            Some(true)
        );
        assert_eq!(reply_ok(r#"{"v":1,"ok":false,"error":"no"}"#), Some(false));
        assert_eq!(reply_ok(r#"{"v":12,"ok":true}"#), Some(true));
        for bad in [
            "",
            "ok",
            r#"{"ok":true,"v":1}"#,
            r#"{"v":,"ok":true}"#,
            r#"{"v":1,"ok":truer}"#,
            r#"{"v":1,"ok":"true"}"#,
            r#"{"v":1,"ok":true"#,
            r#" {"v":1,"ok":true}"#,
        ] {
            assert_eq!(reply_ok(bad), None, "{bad:?}");
        }
    }

    /// The master's replies, as it renders them, begin as `reply_ok` expects.
    #[test]
    fn every_rendered_error_reply_is_read_by_reply_ok() {
        let mut line = String::new();
        line.push_str(&format!("{{\"v\":{VERSION},\"ok\":false,\"error\":"));
        push_json_str(&mut line, "unknown command");
        line.push('}');
        assert_eq!(reply_ok(&line), Some(false));
    }

    #[test]
    fn parses_every_command() {
        let cases: [(&[u8], Command); 9] = [
            (b"status", Command::Status),
            (b"metrics", Command::Metrics),
            (b"reload", Command::Reload),
            (b"upgrade\r", Command::Upgrade),
            (b"rollback", Command::Rollback),
            (b"stop", Command::Stop),
            (b"scale 4", Command::Scale(4)),
            (b"  scale\t 12  ", Command::Scale(12)),
            (b"scale 4096", Command::Scale(4096)),
        ];
        for (line, command) in cases {
            assert_eq!(parse_request(line), Ok(command), "{line:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_command() {
        let cases: [(&[u8], &str); 12] = [
            (b"", "empty request"),
            (b"   ", "empty request"),
            (b"STATUS", "unknown command \"STATUS\""),
            (b"stat", "unknown command \"stat\""),
            (b"status now", "status: unexpected \"now\""),
            (b"scale", "expected the number of workers"),
            (b"scale 0", "must be 1 to 4096, not \"0\""),
            (b"scale 4097", "not \"4097\""),
            (b"scale -1", "not \"-1\""),
            (b"scale +3", "not \"+3\""),
            (
                b"scale 99999999999999999999",
                "not \"99999999999999999999\"",
            ),
            (b"\xff\xfe", "not UTF-8"),
        ];
        for (line, message) in cases {
            let err = parse_request(line).unwrap_err();
            assert!(err.contains(message), "{line:?}: {err}");
        }
        let long = "x".repeat(100);
        let err = parse_request(long.as_bytes()).unwrap_err();
        assert!(err.contains(&format!("\"{}\"…", "x".repeat(32))), "{err}");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é €");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007fh é €\"");
    }

    #[cfg(feature = "control-client")]
    #[test]
    fn replies_parse_with_their_fields() {
        let r = Reply::parse(r#"{"v":1,"ok":false,"error":"no \"x\""}"#).unwrap();
        assert!(!r.ok());
        assert_eq!(r.version(), 1);
        assert_eq!(r.error(), Some("no \"x\""));
        let r = Reply::parse(r#"{"v":1,"ok":true,"pid":42}"#).unwrap();
        assert!(r.ok());
        assert_eq!(r.get("pid").and_then(|p| p.as_u64()), Some(42));
        assert!(Reply::parse("{\"ok\":true}").is_none());
        assert!(Reply::parse("ok").is_none());
    }

    #[cfg(feature = "control-client")]
    #[test]
    fn escaped_strings_read_back_as_written() {
        let text = "a\"b\\c\nd\u{1}\u{7f}é €\u{10348}";
        let mut out = String::new();
        push_json_str(&mut out, text);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn nobody_answering_names_the_path() {
        let dir = std::env::temp_dir().join(format!("prefork-ctl-{}", std::process::id()));
        let err = request_line(dir.join("none.sock"), "status").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("none.sock") && text.contains("nobody answers"),
            "{text}"
        );
    }
}
