//! Command-line parsing: `cma-vmm run|bench|soak|ctl|completions`, on clap (derive).
//!
//! Every value is checked by the same functions as the configuration file (sizes, `--cma`
//! specifications, map rules), inside clap's value parsers; clap's own errors are mapped
//! back to one line that names the offending flag or value ([`CliError`]), so the messages
//! scripts and tests rely on do not depend on clap's wording. Nothing on the command line
//! can make parsing panic.
//!
//! This module knows nothing of the API client: `ctl`'s arguments are plain data here
//! ([`CtlArgs`]), and [`crate::ctl`] turns them into requests.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use serde_json::{Value, json};

use crate::config::{
    self, ConfigError, MapRule, RegionConfig, VmConfig, parse_map_rules, parse_region_flag,
    parse_size,
};
use crate::grant::{CopyMode, GrantMode, GrantPolicy};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print this help text (`--help`, `help`, or no arguments).
    Help(String),
    /// Print this version line.
    Version(String),
    /// Boot a VM.
    Run(RunArgs),
    /// Run a benchmark.
    Bench(BenchKind, BenchArgs),
    /// Random operations with every guest page checked after each.
    Soak(SoakArgs),
    /// Talk to a running VMM's control API.
    Ctl(CtlArgs),
    /// Print a shell completion script.
    Completions(Shell),
}

/// `cma-vmm run` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// The VM configuration, from flags, a file, or a `cma=` string.
    pub config: VmConfig,
    /// Print per-region statistics at exit.
    pub stats: bool,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// Validate and print the layout, do not start the VM.
    pub dry_run: bool,
    /// Do not echo the guest console.
    pub quiet: bool,
    /// The KVM device (default /dev/kvm).
    pub kvm_path: PathBuf,
    /// Eviction timeouts and copy mode.
    pub policy: GrantPolicy,
    /// Allocate and free this many chunks once the guest has populated lent memory.
    pub exercise: u32,
    /// Back all guest memory with host pages at start.
    pub prealloc: bool,
    /// Serve the control API on this Unix socket.
    pub api_sock: Option<PathBuf>,
    /// Write the metrics document to this file every second and at exit.
    pub metrics_path: Option<PathBuf>,
    /// `--exercise`: write a picture of every region's occupancy here.
    pub occupancy_svg: Option<PathBuf>,
}

/// `cma-vmm bench` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchArgs {
    /// Number of runs to measure.
    pub runs: u32,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// `bench linux`: QEMU and the initramfs of its virtio-mem guest.
    pub qemu: Option<(PathBuf, PathBuf)>,
    /// The VM to boot (`boot`, `linux`, `all`; the default VM for the others).
    pub run: RunArgs,
}

/// What `cma-vmm bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchKind {
    /// Process start to first guest instruction and to guest-ready.
    Boot,
    /// Eviction throughput against host memcpy.
    Evict,
    /// Allocation latency and exits, 4 KiB to 64 MiB, empty and populated.
    Latency,
    /// Guest metadata per lent GiB, VMM memory per region.
    Memory,
    /// Populated memory taken back from a Linux guest: ours, alloc_contig_range,
    /// virtio-mem (needs a KVM on which Linux boots).
    Linux,
    /// All of the above but `Linux`.
    All,
}

/// `cma-vmm soak` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakArgs {
    /// Cycles to run.
    pub cycles: u64,
    /// Random seed.
    pub seed: u64,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// No progress output.
    pub quiet: bool,
}

/// `cma-vmm ctl` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CtlArgs {
    /// The VMM's API socket.
    pub api_sock: PathBuf,
    /// How long to wait for an answer (and for `wait`, for the guest).
    pub timeout: Duration,
    /// Print the API's JSON even on a terminal.
    pub json: bool,
    /// `regions --svg FILE`: where to draw the regions' occupancy.
    pub svg: Option<PathBuf>,
    /// What to do.
    pub command: CtlCommand,
}

/// One ctl command.
#[derive(Debug, Clone, PartialEq)]
pub enum CtlCommand {
    /// `GET /vm`.
    Vm,
    /// Poll `GET /vm` until the guest has populated its lent memory.
    Wait,
    /// `GET /regions`, or `GET /regions/{name}` with its bitmap.
    Regions(Option<String>),
    /// `GET /chunks`.
    Chunks,
    /// `GET /chunks/{id}`.
    Chunk(String),
    /// `POST /chunks` with this body.
    Alloc(Value),
    /// `DELETE /chunks/{id}`.
    Free(String),
    /// `PUT /chunks/{id}/pin`.
    Pin(String),
    /// `PUT /chunks/{id}/unpin`.
    Unpin(String),
    /// `POST /regions/{name}/compact`.
    Compact(String),
    /// `GET /metrics` (JSON).
    Metrics,
    /// `GET /metrics/prometheus` (Prometheus text).
    MetricsPrometheus,
    /// `POST /vm/verify`.
    Verify,
    /// `POST /vm/shutdown`.
    Shutdown,
}

/// Errors of command-line parsing: one line naming the flag or value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// Unknown subcommand.
    #[error("unknown command '{0}' (try --help)")]
    UnknownCommand(String),
    /// A command that needs a subcommand got none.
    #[error("'{0}' needs a command (try 'cma-vmm {0} --help')")]
    MissingCommand(String),
    /// Unknown flag, or an argument too many.
    #[error("unknown option '{0}' (try --help)")]
    UnknownFlag(String),
    /// A flag without its value.
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// A flag that must be given.
    #[error("option '{0}' is required")]
    Required(String),
    /// A flag given twice where once is allowed.
    #[error("option '{0}' given more than once")]
    Repeated(String),
    /// A bad value.
    #[error("invalid value '{value}' for {flag}: {reason}")]
    BadValue {
        /// The flag.
        flag: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A configuration error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Any other command-line error, in clap's words.
    #[error("{0}")]
    Other(String),
}

/// How the VM configuration is put together; shown by `--help` and `run --help`.
const PRECEDENCE: &str = "\
Configuration: the regions and map rules come from exactly one of --config FILE (TOML,
see resources/vm.toml), --cma/--cma-map, or --cma-cmdline. Flags then override the file's
scalars (--memory, --vcpus, --kernel, --initrd, --guest-args, --capture). Sizes take K, M
or G suffixes; addresses may be hex (0x...).";

/// The top-level help's closing lines.
const AFTER_HELP: &str = "\
Configuration: one of --config FILE (TOML), --cma/--cma-map or --cma-cmdline gives the
regions; flags override the file's scalars. Sizes take K, M or G; addresses may be hex.
Shell completions: cma-vmm completions bash|zsh|fish.";

#[derive(Parser, Debug)]
#[command(
    name = "cma-vmm",
    version,
    about = "A KVM VMM with a hypervisor-level contiguous memory allocator",
    arg_required_else_help = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot the guest with CMA regions
    #[command(after_help = PRECEDENCE)]
    Run(RunOpts),
    /// Run a benchmark; JSON and SVG charts under target/bench/
    #[command(subcommand_required = true)]
    Bench {
        #[command(subcommand)]
        kind: BenchCmd,
    },
    /// Random allocations, frees, pins and compactions, every guest page checked after
    /// each cycle
    Soak(SoakOpts),
    /// Call a running VMM's control API (a table on a terminal, JSON otherwise)
    #[command(subcommand_required = true)]
    Ctl(CtlOpts),
    /// Print a shell completion script, e.g. `cma-vmm completions bash >
    /// /etc/bash_completion.d/cma-vmm`
    Completions {
        /// The shell
        shell: Shell,
    },
}

/// Options of `run`, and of the benchmarks that boot a VM.
#[derive(Args, Debug)]
struct RunOpts {
    /// VM configuration in TOML (see resources/vm.toml); flags override its scalars
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest memory, 16M to 64G; above 3G, RAM continues at 4G [default: 256M]
    #[arg(long, value_name = "SIZE", value_parser = memory_size)]
    memory: Option<u64>,
    /// Number of vCPUs [default: 1]
    #[arg(long, value_name = "N", value_parser = vcpu_count)]
    vcpus: Option<u8>,
    /// Guest image: an ELF speaking the reference guest's boot protocol, or a Linux
    /// bzImage [default: the reference guest built into cma-vmm]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs for a Linux guest
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Declare a CMA region (repeatable):
    /// name=N,size=S[,base=A][,align=S][,private][,order_per_bit=K]; without base the VMM
    /// places it top-down
    #[arg(long = "cma", value_name = "SPEC", value_parser = region_flag)]
    cma: Vec<RegionConfig>,
    /// Device -> region map rules, 'dev[,dev]=r[,r];*=r'; first match wins, * is the
    /// default; private regions only by name
    #[arg(long = "cma-map", value_name = "RULES", value_parser = map_rules)]
    cma_map: Option<MapRules>,
    /// Regions and rules in the original CMA patches' syntax:
    /// 'cma=N=S[@A][/S];... cma_map=...'
    #[arg(long = "cma-cmdline", value_name = "STR", value_parser = cma_cmdline)]
    cma_cmdline: Option<config::cmdline::CmaCmdline>,
    /// A frame-capture device named NAME (repeatable; a map rule must send NAME to a region)
    #[arg(long, value_name = "NAME")]
    capture: Vec<String>,
    /// The guest's command line (Linux: kernel parameters, after the VMM's own:
    /// console=ttyS0 reboot=k panic=-1 pci=off memhp_default_state=online_movable)
    #[arg(long = "guest-args", visible_alias = "cmdline", value_name = "STR")]
    guest_args: Option<String>,
    /// Once the guest has populated lent memory, allocate and free N chunks of several
    /// sizes and alignments, check every guest page, and shut the guest down (0: none)
    #[arg(long, value_name = "N", default_value = "0", value_parser = exercise_count,
          overrides_with = "exercise")]
    exercise: u32,
    /// With --exercise: a picture of every region's occupancy before the final frees
    #[arg(
        long = "occupancy-svg",
        value_name = "FILE",
        overrides_with = "occupancy_svg"
    )]
    occupancy_svg: Option<PathBuf>,
    /// How long to wait for the guest to evict a range, in milliseconds
    #[arg(long = "evict-timeout", value_name = "MS", default_value = "2000",
          value_parser = millis, overrides_with = "evict_timeout")]
    evict_timeout: Duration,
    /// Who copies migrated pages: the VMM (host) or the guest
    #[arg(
        long = "copy-mode",
        value_name = "WHO",
        default_value = "host",
        overrides_with = "copy_mode"
    )]
    copy_mode: CopyMode,
    /// Print per-region CMA statistics at exit
    #[arg(long, overrides_with = "stats")]
    stats: bool,
    /// Back all guest memory with host pages at start
    #[arg(long, overrides_with = "prealloc")]
    prealloc: bool,
    /// Stop the guest after SECS seconds (more than 0, at most 86400) [default: never]
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true,
          overrides_with = "timeout")]
    timeout: Option<Duration>,
    /// Validate, print the memory layout, do not boot
    #[arg(long = "dry-run", overrides_with = "dry_run")]
    dry_run: bool,
    /// Do not echo the guest console; no progress line
    #[arg(long, overrides_with = "quiet")]
    quiet: bool,
    /// KVM device
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/dev/kvm",
        overrides_with = "kvm"
    )]
    kvm: PathBuf,
    /// Serve the control API (HTTP/1.1 + JSON) on a new Unix socket (mode 0600; an existing
    /// path is refused); the VMM then runs until the guest exits, --timeout, or
    /// SIGINT/SIGTERM
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Write the metrics document (JSON) to PATH every second and at exit
    #[arg(long = "metrics-path", value_name = "PATH")]
    metrics_path: Option<PathBuf>,
}

/// Map rules as one value (a `Vec` field would make clap expect several values).
#[derive(Debug, Clone)]
struct MapRules(Vec<MapRule>);

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Process start -> first guest instruction / boot information parsed / allocator up
    #[command(after_help = PRECEDENCE)]
    Boot {
        #[command(flatten)]
        bench: BenchOpts,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Eviction throughput, VMM-assisted and guest copy, against host memcpy of the same
    /// pages
    Evict(BenchOnlyOpts),
    /// Allocation latency and VM exits, 4 KiB to 64 MiB, empty against populated ranges
    Latency(BenchOnlyOpts),
    /// Guest metadata per lent GiB, VMM memory per region
    Memory(BenchOnlyOpts),
    /// Populated memory taken back from a Linux guest: our device against its own
    /// alloc_contig_range (and virtio-mem unplug under QEMU); needs a KVM where Linux boots
    #[command(after_help = PRECEDENCE)]
    Linux {
        #[command(flatten)]
        bench: BenchOpts,
        /// QEMU, for the virtio-mem comparison (with --qemu-initrd)
        #[arg(long, value_name = "PATH", requires = "qemu_initrd")]
        qemu: Option<PathBuf>,
        /// The initramfs of QEMU's virtio-mem guest (with --qemu)
        #[arg(long = "qemu-initrd", value_name = "FILE", requires = "qemu")]
        qemu_initrd: Option<PathBuf>,
        #[command(flatten)]
        run: RunOpts,
    },
    /// boot, evict, latency and memory (the JSON goes to target/bench/)
    #[command(after_help = PRECEDENCE)]
    All {
        #[command(flatten)]
        bench: BenchOpts,
        #[command(flatten)]
        run: RunOpts,
    },
}

/// Options of every benchmark.
#[derive(Args, Debug)]
struct BenchOpts {
    /// Number of runs to measure, 1 to 1000
    #[arg(long, value_name = "N", default_value = "10", value_parser = runs)]
    runs: u32,
    /// Where to write the JSON report [default: target/bench/KIND.json]
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// Options of the benchmarks that boot their own VMs (no run options).
#[derive(Args, Debug)]
struct BenchOnlyOpts {
    #[command(flatten)]
    bench: BenchOpts,
    /// No progress line (on a terminal) or progress lines (otherwise)
    #[arg(long, overrides_with = "quiet")]
    quiet: bool,
}

#[derive(Args, Debug)]
struct SoakOpts {
    /// Cycles to run, 1 to 10000000
    #[arg(long, value_name = "N", default_value = "1000", value_parser = cycles)]
    cycles: u64,
    /// Random seed (decimal or 0x hex)
    #[arg(long, value_name = "S", default_value = "0x50a4", value_parser = seed)]
    seed: u64,
    /// Where to write the JSON report [default: target/bench/soak.json]
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// No progress line (on a terminal) or progress lines (otherwise)
    #[arg(long, overrides_with = "quiet")]
    quiet: bool,
}

#[derive(Args, Debug)]
struct CtlOpts {
    /// The VMM's API socket (required)
    #[arg(long = "api-sock", value_name = "PATH", global = true)]
    api_sock: Option<PathBuf>,
    /// Seconds to wait for the answer (for `wait`, for the guest), more than 0, at most
    /// 86400
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds,
          allow_negative_numbers = true, global = true)]
    timeout: Duration,
    /// Print the API's JSON even on a terminal (it is always JSON through a pipe or file)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Guest state, boot milestones, agent
    Vm,
    /// Wait until the guest has populated its lent memory
    Wait,
    /// Regions with statistics; with NAME, one region and its bitmap
    Regions {
        /// A region name
        #[arg(value_name = "NAME", value_parser = region_segment)]
        name: Option<String>,
        /// Also draw the region (without NAME, every region) as an SVG picture of its
        /// occupancy: free, granted exclusive or shared, pinned or movable
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Granted chunks
    Chunks,
    /// One granted chunk
    Chunk {
        /// Chunk id, as in cma1:0:42
        #[arg(value_name = "ID", value_parser = id_segment)]
        id: String,
    },
    /// Allocate a chunk (for a device through the map rules, or from a region list)
    Alloc(AllocOpts),
    /// Free a chunk allocated through the API (zeroed, given back to the guest)
    Free {
        /// Chunk id, as in cma1:0:42
        #[arg(value_name = "ID", value_parser = id_segment)]
        id: String,
    },
    /// Pin a chunk allocated through the API (compaction leaves it where it is)
    Pin {
        /// Chunk id, as in cma1:0:42
        #[arg(value_name = "ID", value_parser = id_segment)]
        id: String,
    },
    /// Unpin a chunk allocated through the API
    Unpin {
        /// Chunk id, as in cma1:0:42
        #[arg(value_name = "ID", value_parser = id_segment)]
        id: String,
    },
    /// Move unpinned chunks of REGION to grow its largest free run
    Compact {
        /// A region name
        #[arg(value_name = "REGION", value_parser = region_segment)]
        region: String,
    },
    /// The metrics document
    Metrics {
        /// The Prometheus text format instead (GET /metrics/prometheus)
        #[arg(long)]
        prometheus: bool,
    },
    /// Check every guest page from the host
    Verify,
    /// Ask the guest to check its pages and exit
    Shutdown,
}

#[derive(Args, Debug)]
struct AllocOpts {
    /// Allocate for this device: the map rules pick the region (or give --regions)
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Allocate from these regions, tried in order (or give --device)
    #[arg(long, value_name = "R1,R2")]
    regions: Option<String>,
    /// Chunk size
    #[arg(long, value_name = "SIZE", value_parser = alloc_size)]
    size: Option<u64>,
    /// Guest-physical alignment [default: 4K]
    #[arg(long, value_name = "SIZE", value_parser = alloc_align)]
    align: Option<u64>,
    /// Offset from the alignment [default: 0]
    #[arg(long, value_name = "SIZE", value_parser = alloc_offset)]
    offset: Option<u64>,
    /// Grant mode: exclusive takes the range out of the guest, shared leaves it mapped
    /// [default: exclusive]
    #[arg(long, value_name = "MODE")]
    mode: Option<GrantMode>,
    /// Let compaction move the chunk [default: pinned]
    #[arg(long)]
    unpinned: bool,
}

impl ValueEnum for CopyMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[CopyMode::Host, CopyMode::Guest]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            CopyMode::Host => "host",
            CopyMode::Guest => "guest",
        }))
    }
}

impl ValueEnum for GrantMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[GrantMode::Exclusive, GrantMode::Shared]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            GrantMode::Exclusive => "exclusive",
            GrantMode::Shared => "shared",
        }))
    }
}

// Value parsers. Each returns the error the hand-written parser gave, so the message is
// the same; `from_clap` takes it back out of clap's error.

fn bad(flag: &str, value: &str, reason: &str) -> CliError {
    CliError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn memory_size(v: &str) -> Result<u64, ConfigError> {
    parse_size(v, "memory size")
}

fn vcpu_count(v: &str) -> Result<u8, ConfigError> {
    v.parse::<u8>()
        .map_err(|_| ConfigError::BadVcpus(v.to_string()))
}

fn region_flag(v: &str) -> Result<RegionConfig, ConfigError> {
    parse_region_flag(v)
}

fn map_rules(v: &str) -> Result<MapRules, ConfigError> {
    parse_map_rules(v).map(MapRules)
}

fn cma_cmdline(v: &str) -> Result<config::cmdline::CmaCmdline, ConfigError> {
    config::cmdline::parse(v)
}

fn exercise_count(v: &str) -> Result<u32, CliError> {
    v.parse()
        .ok()
        .filter(|n| *n <= 100_000)
        .ok_or_else(|| bad("--exercise", v, "expected a count up to 100000"))
}

/// Milliseconds, 1 to 1 hour.
fn millis(v: &str) -> Result<Duration, CliError> {
    v.parse::<u64>()
        .ok()
        .filter(|ms| (1..=3_600_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| bad("--evict-timeout", v, "expected milliseconds, 1 to 3600000"))
}

/// Seconds, more than 0 and at most a day (fractions allowed).
fn seconds(v: &str) -> Result<Duration, CliError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 86400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            bad(
                "--timeout",
                v,
                "expected seconds, more than 0 and at most 86400",
            )
        })
}

fn runs(v: &str) -> Result<u32, CliError> {
    v.parse()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| bad("--runs", v, "expected 1 to 1000"))
}

fn cycles(v: &str) -> Result<u64, CliError> {
    v.parse()
        .ok()
        .filter(|n| (1..=10_000_000).contains(n))
        .ok_or_else(|| bad("--cycles", v, "expected 1 to 10000000"))
}

fn seed(v: &str) -> Result<u64, CliError> {
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    parsed.ok_or_else(|| bad("--seed", v, "expected an integer"))
}

fn alloc_size(v: &str) -> Result<u64, ConfigError> {
    parse_size(v, "size")
}

fn alloc_align(v: &str) -> Result<u64, ConfigError> {
    parse_size(v, "alignment")
}

fn alloc_offset(v: &str) -> Result<u64, ConfigError> {
    parse_size(v, "offset")
}

/// A path segment: an id or a region name as typed, refused if it would change the path.
fn segment(what: &str, v: &str) -> Result<String, CliError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/?#%".contains(&b));
    if ok {
        Ok(v.to_string())
    } else {
        Err(bad(what, v, "not a chunk id or region name"))
    }
}

fn id_segment(v: &str) -> Result<String, CliError> {
    segment("ID", v)
}

fn region_segment(v: &str) -> Result<String, CliError> {
    segment("REGION", v)
}

/// The clap command tree (for completions and documentation tests).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "cma-vmm", &mut out);
    out
}

/// Parse `argv` without the program name.
pub fn parse(argv: Vec<String>) -> Result<Command, CliError> {
    let all = std::iter::once("cma-vmm".to_string()).chain(argv.iter().cloned());
    let matches = match command().try_get_matches_from(all) {
        Ok(m) => m,
        Err(e) => return from_clap(e, &argv),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| CliError::Other(first_line(&e)))?;
    match cli.command {
        Cmd::Run(opts) => Ok(Command::Run(opts.into_run_args()?)),
        Cmd::Bench { kind } => bench_args(kind),
        Cmd::Soak(o) => Ok(Command::Soak(SoakArgs {
            cycles: o.cycles,
            seed: o.seed,
            json: o.json,
            quiet: o.quiet,
        })),
        Cmd::Ctl(o) => Ok(Command::Ctl(o.into_ctl_args()?)),
        Cmd::Completions { shell } => Ok(Command::Completions(shell)),
    }
}

fn bench_args(cmd: BenchCmd) -> Result<Command, CliError> {
    // The benchmarks that boot their own VMs take no run options: the default VM, with
    // the same defaults `run` has.
    let default_run = |quiet: bool| match parse(vec!["run".to_string()])? {
        Command::Run(r) => Ok(RunArgs { quiet, ..r }),
        other => Err(CliError::Other(format!("unexpected {other:?}"))),
    };
    let (kind, bench, run, qemu) = match cmd {
        BenchCmd::Boot { bench, run } => (BenchKind::Boot, bench, run.into_run_args()?, None),
        BenchCmd::Evict(o) => (BenchKind::Evict, o.bench, default_run(o.quiet)?, None),
        BenchCmd::Latency(o) => (BenchKind::Latency, o.bench, default_run(o.quiet)?, None),
        BenchCmd::Memory(o) => (BenchKind::Memory, o.bench, default_run(o.quiet)?, None),
        BenchCmd::Linux {
            bench,
            qemu,
            qemu_initrd,
            run,
        } => (
            BenchKind::Linux,
            bench,
            run.into_run_args()?,
            qemu.zip(qemu_initrd),
        ),
        BenchCmd::All { bench, run } => (BenchKind::All, bench, run.into_run_args()?, None),
    };
    Ok(Command::Bench(
        kind,
        BenchArgs {
            runs: bench.runs,
            json: bench.json,
            qemu,
            run,
        },
    ))
}

impl RunOpts {
    /// The VM configuration: the one source of regions, then the flags over the file.
    fn into_run_args(self) -> Result<RunArgs, CliError> {
        let sources: Vec<&str> = [
            (self.config.is_some(), "--config"),
            (
                !self.cma.is_empty() || self.cma_map.is_some(),
                "--cma/--cma-map",
            ),
            (self.cma_cmdline.is_some(), "--cma-cmdline"),
        ]
        .iter()
        .filter(|(given, _)| *given)
        .map(|(_, name)| *name)
        .collect();
        if sources.len() > 1 {
            return Err(ConfigError::MixedSources(sources.join(", ")).into());
        }
        let mut config = match &self.config {
            Some(path) => config::file::load(path)?,
            None => VmConfig::default(),
        };
        if let Some(c) = self.cma_cmdline {
            config.regions = c.regions;
            config.map = c.map;
        }
        if !self.cma.is_empty() {
            config.regions = self.cma;
        }
        if let Some(MapRules(m)) = self.cma_map {
            config.map = m;
        }
        if let Some(m) = self.memory {
            config.memory = m;
        }
        if let Some(v) = self.vcpus {
            config.vcpus = v;
        }
        if self.kernel.is_some() {
            config.kernel = self.kernel;
        }
        if self.initrd.is_some() {
            config.initrd = self.initrd;
        }
        if let Some(g) = self.guest_args {
            config.guest_args = g;
        }
        if !self.capture.is_empty() {
            config.capture = self.capture;
        }
        let policy = GrantPolicy {
            evict_timeout: self.evict_timeout,
            return_timeout: self.evict_timeout,
            copy: self.copy_mode,
        };
        Ok(RunArgs {
            config,
            stats: self.stats,
            timeout: self.timeout,
            dry_run: self.dry_run,
            quiet: self.quiet,
            kvm_path: self.kvm,
            policy,
            exercise: self.exercise,
            prealloc: self.prealloc,
            api_sock: self.api_sock,
            metrics_path: self.metrics_path,
            occupancy_svg: self.occupancy_svg,
        })
    }
}

impl CtlOpts {
    fn into_ctl_args(self) -> Result<CtlArgs, CliError> {
        // Not `required` in clap: global arguments cannot be, and this one is global so
        // it may follow the command (`ctl wait --api-sock S`).
        let api_sock = self
            .api_sock
            .ok_or_else(|| CliError::Required("--api-sock".into()))?;
        let svg = match &self.command {
            CtlCmd::Regions { svg, .. } => svg.clone(),
            _ => None,
        };
        let command = match self.command {
            CtlCmd::Vm => CtlCommand::Vm,
            CtlCmd::Wait => CtlCommand::Wait,
            CtlCmd::Regions { name, .. } => CtlCommand::Regions(name),
            CtlCmd::Chunks => CtlCommand::Chunks,
            CtlCmd::Chunk { id } => CtlCommand::Chunk(id),
            CtlCmd::Alloc(a) => CtlCommand::Alloc(a.into_body()?),
            CtlCmd::Free { id } => CtlCommand::Free(id),
            CtlCmd::Pin { id } => CtlCommand::Pin(id),
            CtlCmd::Unpin { id } => CtlCommand::Unpin(id),
            CtlCmd::Compact { region } => CtlCommand::Compact(region),
            CtlCmd::Metrics { prometheus: false } => CtlCommand::Metrics,
            CtlCmd::Metrics { prometheus: true } => CtlCommand::MetricsPrometheus,
            CtlCmd::Verify => CtlCommand::Verify,
            CtlCmd::Shutdown => CtlCommand::Shutdown,
        };
        Ok(CtlArgs {
            api_sock,
            timeout: self.timeout,
            json: self.json,
            svg,
            command,
        })
    }
}

impl AllocOpts {
    /// The `POST /chunks` body; only what was given (the API has the defaults).
    fn into_body(self) -> Result<Value, CliError> {
        let size = self
            .size
            .ok_or_else(|| CliError::Required("--size".into()))?;
        let mut body = serde_json::Map::new();
        match (self.device, self.regions) {
            (Some(d), None) => body.insert("device".into(), json!(d)),
            (None, Some(r)) => {
                let names: Vec<&str> = r.split(',').map(str::trim).collect();
                body.insert("regions".into(), json!(names))
            }
            (None, None) => return Err(CliError::Required("--device or --regions".into())),
            (Some(_), Some(_)) => {
                return Err(bad("--device/--regions", "both", "give one of them"));
            }
        };
        body.insert("size".into(), json!(size));
        if let Some(a) = self.align {
            body.insert("align".into(), json!(a));
        }
        if let Some(o) = self.offset {
            body.insert("offset".into(), json!(o));
        }
        if let Some(m) = self.mode {
            body.insert("mode".into(), json!(m));
        }
        if self.unpinned {
            body.insert("pinned".into(), json!(false));
        }
        Ok(Value::Object(body))
    }
}

/// The first line of clap's message, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A context value of clap's error as text (the first, for lists).
fn context(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        _ => None,
    }
}

/// `--memory <SIZE>` -> `--memory`; `<ID>` -> `ID`.
fn arg_name(display: &str) -> String {
    let first = display.split_whitespace().next().unwrap_or(display);
    first.trim_matches(|c| c == '<' || c == '>').to_string()
}

/// `'a' or 'b'`, `'a', 'b' or 'c'`.
fn one_of(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The subcommands named in `argv` (`["ctl", "free"]`), for messages that name them.
fn subcommand_path(argv: &[String]) -> Vec<String> {
    let mut cmd = command();
    cmd.build();
    let mut path = Vec::new();
    let mut words = argv.iter();
    while let Some(w) = words.next() {
        if let Some(long) = w.strip_prefix("--") {
            // Skip an option's separate value, so a value is never taken for a command.
            let takes_value = cmd
                .get_arguments()
                .any(|a| a.get_long() == Some(long) && a.get_action().takes_values());
            if takes_value {
                words.next();
            }
            continue;
        }
        let Some(sub) = cmd.find_subcommand(w).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_string());
        if !sub.has_subcommands() {
            break;
        }
        cmd = sub;
    }
    path
}

/// Clap's error as ours: help and version are commands, the rest one line in the words
/// the hand-written parser used.
fn from_clap(e: clap::Error, argv: &[String]) -> Result<Command, CliError> {
    let invalid_arg = || context(&e, ContextKind::InvalidArg).unwrap_or_default();
    let path = || subcommand_path(argv).join(" ");
    let err = match e.kind() {
        ErrorKind::DisplayHelp => return Ok(Command::Help(e.render().to_string())),
        // `cma-vmm` alone is a request for help; `cma-vmm bench` alone is a mistake.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand if argv.is_empty() => {
            return Ok(Command::Help(e.render().to_string()));
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => CliError::MissingCommand(path()),
        ErrorKind::DisplayVersion => return Ok(Command::Version(e.render().to_string())),
        ErrorKind::ValueValidation => {
            // Our value parsers' own errors, as they were.
            let source = std::error::Error::source(&e);
            if let Some(c) = source.and_then(|s| s.downcast_ref::<ConfigError>()) {
                CliError::Config(c.clone())
            } else if let Some(CliError::BadValue {
                flag,
                value,
                reason,
            }) = source.and_then(|s| s.downcast_ref::<CliError>())
            {
                // The parser named a default flag; the one given may be an alias.
                let given = arg_name(&invalid_arg());
                let flag = if given.starts_with("--") {
                    given
                } else {
                    flag.clone()
                };
                bad(&flag, value, reason)
            } else {
                CliError::Other(first_line(&e))
            }
        }
        ErrorKind::InvalidValue => {
            let value = context(&e, ContextKind::InvalidValue).unwrap_or_default();
            let flag = arg_name(&invalid_arg());
            if value.is_empty() {
                CliError::MissingValue(flag)
            } else {
                let valid = match e.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(v)) => v.clone(),
                    _ => Vec::new(),
                };
                bad(&flag, &value, &format!("expected {}", one_of(&valid)))
            }
        }
        ErrorKind::UnknownArgument => CliError::UnknownFlag(invalid_arg()),
        ErrorKind::InvalidSubcommand => {
            let word = context(&e, ContextKind::InvalidSubcommand).unwrap_or_default();
            CliError::UnknownCommand(format!("{} {word}", path()).trim().to_string())
        }
        ErrorKind::MissingSubcommand => CliError::MissingCommand(path()),
        ErrorKind::ArgumentConflict => {
            let arg = arg_name(&invalid_arg());
            let prior = context(&e, ContextKind::PriorArg).map(|p| arg_name(&p));
            if prior.is_none_or(|p| p == arg) {
                CliError::Repeated(arg)
            } else {
                CliError::Other(first_line(&e))
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let arg = arg_name(&invalid_arg());
            if arg.starts_with('-') {
                CliError::Required(arg)
            } else {
                let sub = subcommand_path(argv);
                let last = sub.last().cloned().unwrap_or_default();
                CliError::MissingValue(format!("{last} {arg}").trim().to_string())
            }
        }
        _ => CliError::Other(first_line(&e)),
    };
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn run_args(s: &[&str]) -> RunArgs {
        match parse(argv(s)).unwrap() {
            Command::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn ctl(s: &[&str]) -> Result<CtlArgs, CliError> {
        match parse(argv(&[&["ctl"], s].concat()))? {
            Command::Ctl(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    fn help(s: &[&str]) -> String {
        match parse(argv(s)) {
            Ok(Command::Help(text)) => text,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn the_command_tree_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn the_issue_example_parses() {
        let r = run_args(&[
            "run",
            "--memory",
            "256M",
            "--cma",
            "name=video,size=64M,align=1M",
            "--cma",
            "name=camera,size=32M,base=0x8000000",
            "--cma",
            "name=secure,size=16M,private",
            "--cma-map",
            "video-dev=video;*=camera",
        ]);
        assert_eq!(r.config.regions.len(), 3);
        assert_eq!(r.config.memory, 256 << 20);
        r.config.validate().unwrap();
        let f = run_args(&["run", "--config", "../resources/vm.toml"]);
        assert_eq!(f.config, r.config);
    }

    #[test]
    fn defaults_are_the_old_ones() {
        let r = run_args(&["run"]);
        assert_eq!(r.config, VmConfig::default());
        assert_eq!(r.kvm_path, PathBuf::from("/dev/kvm"));
        assert_eq!(r.policy, GrantPolicy::default());
        assert_eq!((r.exercise, r.timeout, r.stats), (0, None, false));
        match parse(argv(&["soak"])).unwrap() {
            Command::Soak(s) => assert_eq!((s.cycles, s.seed, s.json), (1000, 0x50a4, None)),
            other => panic!("{other:?}"),
        }
        let c = ctl(&["--api-sock", "/s", "vm"]).unwrap();
        assert_eq!((c.timeout, c.json), (Duration::from_secs(60), false));
    }

    #[test]
    fn cmdline_form_equals_flags() {
        let a = run_args(&[
            "run",
            "--cma-cmdline",
            "cma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera",
        ]);
        let b = run_args(&[
            "run",
            "--cma",
            "name=video,size=64M,align=1M",
            "--cma",
            "name=camera,size=32M,base=0x8000000",
            "--cma-map",
            "video-dev=video;*=camera",
        ]);
        assert_eq!(a.config, b.config);
    }

    #[test]
    fn errors_name_the_offender() {
        let e = |s: &[&str]| parse(argv(s)).unwrap_err().to_string();
        assert_eq!(e(&["fly"]), "unknown command 'fly' (try --help)");
        assert_eq!(
            e(&["run", "--colour"]),
            "unknown option '--colour' (try --help)"
        );
        assert_eq!(e(&["run", "--memory"]), "option '--memory' needs a value");
        assert_eq!(
            e(&["run", "--memory", "1M", "--memory", "2M"]),
            "option '--memory' given more than once"
        );
        assert_eq!(
            e(&["run", "--guest-args", "a", "--cmdline", "b"]),
            "option '--guest-args' given more than once"
        );
        assert!(e(&["run", "--memory", "lots"]).contains("'lots'"));
        assert!(e(&["run", "--vcpus", "300"]).contains("300"));
        assert!(e(&["run", "--timeout", "-1"]).contains("'-1'"));
        assert_eq!(
            e(&["run", "--copy-mode", "both"]),
            "invalid value 'both' for --copy-mode: expected 'host' or 'guest'"
        );
        assert_eq!(
            e(&["run", "--evict-timeout", "0"]),
            "invalid value '0' for --evict-timeout: expected milliseconds, 1 to 3600000"
        );
        assert!(e(&["run", "--cma", "name=a"]).contains("missing 'size'"));
        assert!(
            e(&["run", "--config", "x.toml", "--cma", "name=a,size=2M"]).contains("use one form")
        );
        assert!(e(&["run", "--cma-cmdline", "cma=a=2M", "--cma-map", "*=a"]).contains("one form"));
        assert!(e(&["bench", "boot", "--runs", "0"]).contains("'0'"));
        assert_eq!(
            e(&["bench", "fly"]),
            "unknown command 'bench fly' (try --help)"
        );
        assert!(e(&["bench"]).contains("bench"));
        assert!(e(&["bench", "evict", "--memory", "1G"]).contains("'--memory'"));
        assert!(e(&["soak", "--cycles", "0"]).contains("'0'"));
        assert!(e(&["completions", "tcsh"]).contains("'tcsh'"));
        for s in [
            &["run", "--memory"][..],
            &["fly"],
            &["ctl", "--api-sock", "/s"],
        ] {
            assert!(!e(s).contains('\n'), "{s:?}: one line");
        }
    }

    #[test]
    fn repeatable_flags_still_repeat() {
        let r = run_args(&[
            "run",
            "--stats",
            "--stats",
            "--kvm",
            "/a",
            "--kvm",
            "/b",
            "--timeout",
            "1",
            "--timeout",
            "2",
            "--capture",
            "c0",
            "--capture",
            "c1",
        ]);
        assert!(r.stats);
        assert_eq!(r.kvm_path, PathBuf::from("/b"));
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.config.capture, ["c0", "c1"]);
    }

    #[test]
    fn scalars_override_the_file() {
        let r = run_args(&[
            "run",
            "--config",
            "../resources/vm.toml",
            "--memory",
            "512M",
        ]);
        assert_eq!(r.config.memory, 512 << 20);
        assert_eq!(r.config.regions.len(), 3);
    }

    #[test]
    fn api_flags() {
        let r = run_args(&[
            "run",
            "--api-sock",
            "/tmp/a.sock",
            "--metrics-path",
            "/tmp/m.json",
        ]);
        assert_eq!(r.api_sock, Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(r.metrics_path, Some(PathBuf::from("/tmp/m.json")));
        let e = parse(argv(&["run", "--api-sock", "a", "--api-sock", "b"])).unwrap_err();
        assert_eq!(e, CliError::Repeated("--api-sock".into()));
        let c = ctl(&["--api-sock", "/tmp/a.sock", "regions"]).unwrap();
        assert_eq!(c.command, CtlCommand::Regions(None));
    }

    #[test]
    fn bench_flags() {
        match parse(argv(&[
            "bench",
            "boot",
            "--runs",
            "3",
            "--json",
            "/tmp/x.json",
            "--memory",
            "64M",
            "--guest-args",
            "a=b",
        ]))
        .unwrap()
        {
            Command::Bench(BenchKind::Boot, b) => {
                assert_eq!(b.runs, 3);
                assert_eq!(b.json, Some(PathBuf::from("/tmp/x.json")));
                assert_eq!(b.run.config.memory, 64 << 20);
                assert_eq!(b.run.config.guest_args, "a=b");
            }
            other => panic!("{other:?}"),
        }
        match parse(argv(&[
            "bench",
            "linux",
            "--qemu",
            "q",
            "--qemu-initrd",
            "i",
        ]))
        .unwrap()
        {
            Command::Bench(BenchKind::Linux, b) => {
                assert_eq!(b.qemu, Some((PathBuf::from("q"), PathBuf::from("i"))));
                assert_eq!(b.runs, 10);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(argv(&["bench", "linux", "--qemu", "q"])).is_err());
        assert!(matches!(
            parse(argv(&["bench", "latency", "--runs", "6"])),
            Ok(Command::Bench(
                BenchKind::Latency,
                BenchArgs { runs: 6, .. }
            ))
        ));
        match parse(argv(&["bench", "evict", "--quiet"])).unwrap() {
            Command::Bench(BenchKind::Evict, b) => assert!(b.run.quiet),
            other => panic!("{other:?}"),
        }
        match parse(argv(&["soak", "--quiet", "--seed", "7"])).unwrap() {
            Command::Soak(s) => assert_eq!((s.quiet, s.seed), (true, 7)),
            other => panic!("{other:?}"),
        }
        let r = run_args(&["run", "--exercise", "4", "--occupancy-svg", "/tmp/o.svg"]);
        assert_eq!(r.occupancy_svg, Some(PathBuf::from("/tmp/o.svg")));
    }

    #[test]
    fn every_command_answers_help() {
        for (args, wanted) in [
            (&["--help"][..], "Usage: cma-vmm"),
            (&[][..], "Usage: cma-vmm"),
            (&["help"][..], "Usage: cma-vmm"),
            (&["run", "--help"][..], "[default: 2000]"),
            (&["bench", "--help"][..], "latency"),
            (&["bench", "boot", "--help"][..], "[default: 10]"),
            (&["bench", "linux", "--help"][..], "--qemu-initrd"),
            (&["soak", "--help"][..], "[default: 0x50a4]"),
            (&["ctl", "--help"][..], "regions"),
            (&["ctl", "regions", "--help"][..], "--api-sock"),
            (&["ctl", "alloc", "-h"][..], "--unpinned"),
            (&["completions", "--help"][..], "bash"),
        ] {
            let text = help(args);
            assert!(text.contains(wanted), "{args:?} lacks {wanted:?}:\n{text}");
        }
        assert!(help(&["run", "--help"]).contains("Configuration: the regions"));
        match parse(argv(&["--version"])).unwrap() {
            Command::Version(v) => {
                assert_eq!(v.trim(), format!("cma-vmm {}", env!("CARGO_PKG_VERSION")))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn completions_cover_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for word in ["run", "bench", "soak", "ctl", "api-sock", "latency"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn ctl_commands_parse() {
        let c = ctl(&["free", "cma1:0:4", "--api-sock", "/s", "--json"]).unwrap();
        assert_eq!(c.command, CtlCommand::Free("cma1:0:4".into()));
        assert!(c.json);
        let a = ctl(&[
            "alloc",
            "--regions",
            "a,b",
            "--size",
            "1M",
            "--api-sock",
            "/s",
            "--timeout",
            "2.5",
            "--align",
            "64K",
            "--offset",
            "4K",
            "--mode",
            "shared",
            "--unpinned",
        ])
        .unwrap();
        assert_eq!(a.api_sock, PathBuf::from("/s"));
        assert_eq!(a.timeout, Duration::from_millis(2500));
        assert_eq!(
            a.command,
            CtlCommand::Alloc(
                json!({"regions": ["a", "b"], "size": 1 << 20, "align": 65536,
                                     "offset": 4096, "mode": "shared", "pinned": false})
            )
        );
        let d = ctl(&[
            "--api-sock",
            "/s",
            "alloc",
            "--device",
            "cam",
            "--size",
            "4096",
        ])
        .unwrap();
        assert_eq!(
            d.command,
            CtlCommand::Alloc(json!({"device": "cam", "size": 4096}))
        );
        let m = ctl(&["--api-sock", "/s", "metrics", "--prometheus"]).unwrap();
        assert_eq!(m.command, CtlCommand::MetricsPrometheus);
    }

    #[test]
    fn bad_ctl_command_lines_name_the_problem() {
        let err = |s: &[&str]| ctl(s).unwrap_err().to_string();
        assert_eq!(err(&["regions"]), "option '--api-sock' is required");
        assert!(err(&["--api-sock", "/s"]).contains("ctl"));
        assert!(err(&["--api-sock", "/s", "fly"]).contains("ctl fly"));
        assert!(err(&["--api-sock", "/s", "free"]).contains("free ID"));
        assert!(err(&["--api-sock", "/s", "free", "a/b"]).contains("'a/b'"));
        assert!(err(&["--api-sock", "/s", "free", "a", "b"]).contains("'b'"));
        assert!(err(&["--api-sock", "/s", "alloc", "--size", "1M"]).contains("--device"));
        assert!(err(&["--api-sock", "/s", "alloc", "--device", "d"]).contains("--size"));
        let alloc = |extra: &[&str]| {
            err(&[&["--api-sock", "/s", "alloc", "--device", "d"], extra].concat())
        };
        assert!(alloc(&["--size", "lots"]).contains("'lots'"));
        assert!(alloc(&["--size", "1", "--size", "2"]).contains("more than once"));
        assert!(alloc(&["--size", "1", "--mode", "x"]).contains("exclusive"));
        assert!(alloc(&["--size", "1", "--regions", "a"]).contains("give one of them"));
        assert!(err(&["--api-sock", "/s", "--timeout", "0", "vm"]).contains("'0'"));
        assert!(err(&["--api-sock", "/s", "--api-sock", "/t", "vm"]).contains("more than once"));
    }
}
