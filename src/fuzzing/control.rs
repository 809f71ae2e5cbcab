//! The control socket's request parser and JSON string writer.

use crate::control::{parse_request, push_json_str};
use crate::supervisor::Command;

/// Parses `data` as a request line: never panics; a command it accepts reads back the same
/// from its canonical form (`scale N` with N in decimal), and an error names what was wrong
/// in one line. Then writes `data` (as UTF-8, lossily) as a JSON string: quoted, with no raw
/// control character, no unescaped quote, and exactly the input's characters once decoded.
pub fn control_request(data: &[u8]) {
    match parse_request(data) {
        Ok(command) => {
            let canonical = match command {
                Command::Status => "status".to_owned(),
                Command::Metrics => "metrics".to_owned(),
                Command::Reload => "reload".to_owned(),
                Command::Upgrade => "upgrade".to_owned(),
                Command::Rollback => "rollback".to_owned(),
                Command::Stop => "stop".to_owned(),
                Command::Scale(n) => {
                    assert!((1..=crate::supervisor::MAX_SCALE).contains(&n), "{n}");
                    format!("scale {n}")
                }
            };
            assert_eq!(parse_request(canonical.as_bytes()), Ok(command));
        }
        Err(message) => {
            assert!(!message.is_empty());
            assert!(!message.contains('\n'), "an error is one line: {message:?}");
        }
    }
    let text = String::from_utf8_lossy(data);
    let mut out = String::new();
    push_json_str(&mut out, &text);
    assert!(out.len() >= 2 && out.starts_with('"') && out.ends_with('"'));
    assert!(!out.chars().any(|c| (c as u32) < 0x20), "{out:?}");
    // Decode it back: every escape is one of those the writer makes.
    let inner = &out[1..out.len() - 1];
    let mut back = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => panic!("an unescaped quote in {out:?}"),
            '\\' => match chars.next() {
                Some('"') => back.push('"'),
                Some('\\') => back.push('\\'),
                Some('n') => back.push('\n'),
                Some('r') => back.push('\r'),
                Some('t') => back.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).expect("four hex digits");
                    back.push(char::from_u32(code).expect("a character"));
                }
                other => panic!("a bad escape {other:?} in {out:?}"),
            },
            c => back.push(c),
        }
    }
    assert_eq!(back, text);
}
