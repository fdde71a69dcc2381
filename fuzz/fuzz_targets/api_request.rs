//! Fuzz target `api_request`:
//! the control API's HTTP request parser and router: no panic, a parsed
//! request is well-formed and does not depend on how its bytes arrived.
//!
//! The check is `cma_tests::fuzzing::api_request`; stable `cargo test` replays it
//! on the seeds and on `fuzz/regressions/api_request/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cma_tests::fuzzing::api_request(data));
