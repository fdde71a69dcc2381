//! Fuzz target `config`:
//! the three configuration forms and `cli::parse`: no panic; what validates is
//! disjoint, whole pageblocks, inside RAM, and builds a valid boot block.
//!
//! The check is `cma_tests::fuzzing::config`; stable `cargo test` replays it
//! on the seeds and on `fuzz/regressions/config/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cma_tests::fuzzing::config(data));
