//! `cma-vmm` for the integration tests (see Cargo.toml).

fn main() {
    std::process::exit(vmm::commands::main(std::env::args().skip(1).collect()));
}
