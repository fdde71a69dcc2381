//! Fuzz target `boot_info`:
//! `BootInfo::decode` on arbitrary bytes (as given, with a repaired header, and
//! built field by field): what decodes validates and re-encodes to the same bytes.
//!
//! The check is `cma_tests::fuzzing::boot_info`; stable `cargo test` replays it
//! on the seeds and on `fuzz/regressions/boot_info/`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cma_tests::fuzzing::boot_info(data));
