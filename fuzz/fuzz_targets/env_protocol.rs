//! The environment-variable parsers (`FASTHTTP_PREFORK_CHILD`, `PREFORK_WORKER_ID`,
//! `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`); see `prefork::fuzzing::env` for the input
//! format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prefork::fuzzing::env(data));
