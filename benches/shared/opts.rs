//! The command line every bench binary takes (each includes this file with `#[path]`):
//!
//! ```text
//! cargo bench --bench NAME [-- [--quick] [SECTION_PREFIX…]]
//! ```
//!
//! `--quick` (or `BENCH_QUICK` set to anything but empty or `0`) takes fewer samples and
//! shorter runs; each other argument not starting with `-` selects the sections whose name
//! starts with it (none: every section). Other flags (`--bench` from cargo, libtest's
//! options) are ignored. `BENCH_IDLE_SECS` sets the window of an idle section (2 s quick,
//! 10 s otherwise).

// Each binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

pub struct Opts {
    pub quick: bool,
    pub filters: Vec<String>,
    /// The window of an idle section (`BENCH_IDLE_SECS`).
    pub idle: Duration,
}

impl Opts {
    /// The options from the command line and the environment.
    pub fn parse() -> Opts {
        let mut quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut filters = Vec::new();
        for arg in std::env::args().skip(1) {
            if arg == "--quick" {
                quick = true;
            } else if !arg.starts_with('-') {
                filters.push(arg);
            }
        }
        let default_idle = Duration::from_secs(if quick { 2 } else { 10 });
        let idle = match std::env::var("BENCH_IDLE_SECS") {
            Ok(v) => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s < 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    eprintln!("BENCH_IDLE_SECS={v:?} is not a duration in seconds; ignored");
                    default_idle
                }
            },
            Err(_) => default_idle,
        };
        Opts {
            quick,
            filters,
            idle,
        }
    }

    /// A section runs when no filter is given, or when a filter is a prefix of its name.
    pub fn selected(&self, section: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| section.starts_with(f.as_str()))
    }

    /// The filters that select none of `sections`.
    pub fn unknown<'a>(&'a self, sections: &[&str]) -> Vec<&'a str> {
        self.filters
            .iter()
            .map(String::as_str)
            .filter(|f| !sections.iter().any(|s| s.starts_with(f)))
            .collect()
    }
}
