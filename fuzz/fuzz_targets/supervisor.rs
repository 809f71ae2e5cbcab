//! The supervisor state machine under arbitrary event sequences; see
//! `prefork::fuzzing::supervisor` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| prefork::fuzzing::supervisor(data));
