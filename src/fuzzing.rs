//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by a unit test that
//! runs their seed corpora, so the corpora run under `cargo test` even where cargo-fuzz
//! cannot.
//!
//! Each entry point decodes arbitrary bytes into calls of the code under test and panics
//! when an invariant breaks; any input that does not panic is fine.

mod control;
mod env;
mod supervisor;
#[cfg(test)]
mod tests;

pub use control::control_request;
pub use env::env;
#[cfg(test)]
use supervisor::drive;
pub use supervisor::supervisor;
