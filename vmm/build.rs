//! Build the reference guest and hand its path to the VMM, which embeds it.
//!
//! The guest needs code generation the host must not have: this machine's nested KVM runs
//! the guest through KVM's instruction emulator, which has no SSE arithmetic, so the guest
//! is compiled without SSE. Cargo has no stable per-package rustflags, so the guest is
//! built by a nested `cargo build` with its own RUSTFLAGS and target directory
//! (`target/guest`), shared by every profile of the outer build.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_RUSTFLAGS: &str = "-C target-feature=-sse,-sse2,-avx,-avx2 -C relocation-model=static";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("vmm/ is inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for input in [
        "guest-agent/src",
        "guest-agent/Cargo.toml",
        "guest-agent/build.rs",
        "protocol/src",
        "protocol/Cargo.toml",
        "resources/guest.ld",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let target_dir = target_root(&out_dir)
        .unwrap_or_else(|| out_dir.clone())
        .join("guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "guest-agent"])
        .args(["--bin", "cma-guest", "--features", "kernel"])
        // An explicit target keeps RUSTFLAGS off build scripts, which run on the host.
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Only what a plain cargo needs: no wrappers (clippy), no outer flags or features.
        .env_clear()
        .env("RUSTFLAGS", GUEST_RUSTFLAGS);
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "CARGO_NET_OFFLINE",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let output = cmd.output().expect("cannot run cargo to build the guest");
    if !output.status.success() {
        panic!(
            "building the reference guest failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let guest = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("cma-guest");
    println!("cargo:rustc-env=CMA_GUEST_ELF={}", guest.display());
}

/// The outer build's target directory: the nearest ancestor of OUT_DIR that cargo tagged.
fn target_root(out_dir: &Path) -> Option<PathBuf> {
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}
