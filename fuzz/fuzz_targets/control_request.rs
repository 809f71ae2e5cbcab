//! The control socket's request parser and JSON string writer; see
//! `prefork::fuzzing::control_request` for the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prefork::fuzzing::control_request(data));
