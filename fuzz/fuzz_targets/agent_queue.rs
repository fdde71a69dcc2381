//! Fuzz target `agent_queue`:
//! the agent device over guest-written virtqueues: no panic, no hang, and
//! device-owned memory never copied into, written or read for the guest.
//!
//! The check is `cma_tests::fuzzing::agent_queue`; stable `cargo test` replays it
//! on the seeds and on `fuzz/regressions/agent_queue/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cma_tests::fuzzing::agent_queue(data));
