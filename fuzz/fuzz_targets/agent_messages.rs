//! Fuzz target `agent_messages`:
//! every decoder of the agent protocol: what decodes round-trips; array
//! records decode exactly when they are inside the input.
//!
//! The check is `cma_tests::fuzzing::agent_messages`; stable `cargo test` replays it
//! on the seeds and on `fuzz/regressions/agent_messages/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cma_tests::fuzzing::agent_messages(data));
