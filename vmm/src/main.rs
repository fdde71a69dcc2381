//! `cma-vmm`: parse the command line, run the command, exit with its status.

fn main() {
    std::process::exit(vmm::commands::main(std::env::args().skip(1).collect()));
}
