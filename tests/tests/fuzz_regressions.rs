//! Replays the fuzz targets' inputs on stable, without KVM: the seed corpus
//! (`fuzz/corpus/<target>/seed-*`) and every file under `fuzz/regressions/<target>/`
//! (minimised crashes, and hand-picked nasty inputs), through the same checks the fuzz
//! targets run (`cma_tests::fuzzing`).
//!
//! To add a regression: `cargo fuzz tmin <target> <crash file>`, then copy the minimised
//! file into `fuzz/regressions/<target>/` with a name that says what it was.
//! The seed files are generated from the real encoders; after a format change, rewrite
//! them with `CMA_WRITE_FUZZ_SEEDS=1 cargo test -p cma-tests --test fuzz_regressions`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cma_tests::fuzzing::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Sorted files of `dir` whose names start with `prefix` (none if `dir` is missing).
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && !n.starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Run `target`'s check on every seed and regression file; fail naming each file that fails.
fn replay(target: &str) {
    let check = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .expect("known target");
    let dir = fuzz_dir();
    let mut inputs = files(&dir.join("corpus").join(target), "seed-");
    let regressions = files(&dir.join("regressions").join(target), "");
    inputs.extend(regressions);
    assert!(!inputs.is_empty(), "no inputs for {target} under {dir:?}");
    let mut failed = Vec::new();
    for path in &inputs {
        let bytes = std::fs::read(path).expect("read input");
        // Printed only if the test fails: which input was running.
        eprintln!("{target}: {}", path.display());
        if catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn boot_info() {
    replay("boot_info");
}

#[test]
fn agent_messages() {
    replay("agent_messages");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn agent_queue() {
    replay("agent_queue");
}

#[test]
fn api_request() {
    replay("api_request");
}

/// The committed seed files are what `fuzzing::seeds()` generates (so they stay valid
/// encodings as the formats change); `CMA_WRITE_FUZZ_SEEDS=1` rewrites them.
#[test]
fn seed_files_are_current() {
    let write = std::env::var_os("CMA_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for seed in fuzzing::seeds() {
        let path = fuzz_dir()
            .join("corpus")
            .join(seed.target)
            .join(format!("seed-{}", seed.name));
        if write {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &seed.bytes).expect("write seed");
        } else if std::fs::read(&path).ok().as_deref() != Some(&seed.bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale: {stale:#?}\n\
         rewrite them: CMA_WRITE_FUZZ_SEEDS=1 cargo test -p cma-tests --test fuzz_regressions"
    );
}

/// The seeds pass their own checks even before they are written out.
#[test]
fn generated_seeds_pass() {
    for seed in fuzzing::seeds() {
        let (_, check) = TARGETS
            .iter()
            .find(|(name, _)| *name == seed.target)
            .expect("known target");
        eprintln!("seed {}/{}", seed.target, seed.name);
        check(&seed.bytes);
    }
}
