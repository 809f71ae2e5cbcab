//! The support code and cases of `tests/processes.rs`.

pub mod cases;
pub mod driver;
pub mod fixture;
pub mod procfs;
