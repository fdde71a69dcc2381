//! Command-line parsing: `cma-vmm run|bench|...` with Firecracker-style flags.
//!
//! A small hand-written parser: every error is one line that names the offending flag or
//! value, and nothing on the command line can make it panic.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ConfigError, VmConfig, parse_map_rules, parse_region_flag, parse_size};
use crate::grant::{CopyMode, GrantPolicy};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print usage.
    Help,
    /// Print the version.
    Version,
    /// Boot a VM.
    Run(RunArgs),
    /// Run a benchmark.
    Bench(BenchKind, BenchArgs),
    /// Random operations with every guest page checked after each.
    Soak(SoakArgs),
    /// Talk to a running VMM's control API.
    Ctl(crate::ctl::CtlArgs),
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

/// `cma-vmm bench boot` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchArgs {
    /// Number of boots to measure.
    pub runs: u32,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// `bench linux`: QEMU and the initramfs of its virtio-mem guest.
    pub qemu: Option<(PathBuf, PathBuf)>,
    /// The VM to boot.
    pub run: RunArgs,
}

/// Usage text.
pub const USAGE: &str = "\
cma-vmm: a KVM VMM with a hypervisor-level contiguous memory allocator

usage:
  cma-vmm run [options]           boot the guest with CMA regions
  cma-vmm bench boot [--runs N] [--json PATH] [run options]
  cma-vmm bench evict|latency|memory|all [--runs N] [--json PATH] [--quiet]
  cma-vmm bench linux --kernel BZIMAGE --initrd FILE [--runs N] [--json PATH]
                      [--qemu QEMU --qemu-initrd FILE]
                                  populated memory taken back from a Linux guest: our
                                  device vs its own alloc_contig_range (vs virtio-mem
                                  unplug under QEMU); needs a KVM where Linux boots
  cma-vmm soak [--cycles N] [--seed S] [--json PATH] [--quiet]
  cma-vmm ctl --api-sock PATH [--timeout SECS] COMMAND
                                  call a running VMM's control API (commands below)
  cma-vmm --help | --version

run options:
  --config FILE                   VM configuration in TOML (see resources/vm.toml)
  --memory SIZE                   guest memory, e.g. 256M (default 256M)
  --vcpus N                       number of vCPUs (default 1)
  --kernel PATH                   guest image: an ELF speaking the reference guest's boot
                                  protocol, or a Linux bzImage (default: the reference guest
                                  built into cma-vmm)
  --initrd PATH                   initramfs for a Linux guest
  --cma name=N,size=S[,base=A][,align=S][,private][,order_per_bit=K]
                                  declare a CMA region (repeatable)
  --cma-map 'dev[,dev]=r[,r];*=r' device -> region map rules, first match wins
  --cma-cmdline 'cma=N=S[@A][/S];... cma_map=...'
                                  regions and rules in the original CMA patches' syntax
  --capture NAME                  a frame-capture device named NAME (repeatable; a map rule
                                  must send NAME to a region)
  --guest-args STR, --cmdline STR the guest's command line (Linux: kernel parameters,
                                  after the VMM's own: console=ttyS0 reboot=k panic=-1
                                  pci=off memhp_default_state=online_movable)
  --exercise N                    once the guest has populated lent memory, allocate and
                                  free N chunks of several sizes and alignments, check every
                                  guest page, and shut the guest down
  --occupancy-svg FILE            with --exercise: a picture of every region's occupancy
                                  before the final frees
  --evict-timeout MS              how long to wait for the guest to evict a range (default 2000)
  --copy-mode host|guest          who copies migrated pages (default host)
  --stats                         print per-region CMA statistics at exit
  --prealloc                      back all guest memory with host pages at start
  --timeout SECS                  stop the guest after SECS seconds
  --dry-run                       validate, print the memory layout, do not boot
  --quiet                         do not echo the guest console; no progress line
  --kvm PATH                      KVM device (default /dev/kvm)
  --api-sock PATH                 serve the control API (HTTP/1.1 + JSON) on a new Unix
                                  socket (mode 0600; an existing path is refused); the VMM
                                  then runs until the guest exits, --timeout, or SIGINT/SIGTERM
  --metrics-path PATH             write the metrics document (JSON) to PATH every second
                                  and at exit

ctl commands (the answer is printed as JSON; exit status 1 on an error):
  vm                              guest state, boot milestones, agent
  wait                            until the guest has populated its lent memory
  regions [NAME]                  regions with statistics (NAME: one, with its bitmap)
  chunks | chunk ID               granted chunks
  alloc (--device NAME | --regions R1,R2) --size SIZE [--align SIZE] [--offset SIZE]
        [--mode exclusive|shared] [--unpinned]
  free ID | pin ID | unpin ID     a chunk allocated through the API (ID as in cma1:0:42)
  compact REGION                  move unpinned chunks to grow the largest free run
  metrics                         the metrics document
  verify                          check every guest page from the host
  shutdown                        ask the guest to check its pages and exit

Sizes take K, M or G suffixes; addresses may be hex (0x...).";

/// Errors of command-line parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// Unknown subcommand.
    #[error("unknown command '{0}' (try --help)")]
    UnknownCommand(String),
    /// Unknown flag.
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
}

struct Args {
    items: std::vec::IntoIter<String>,
}

impl Args {
    fn value(&mut self, flag: &str) -> Result<String, CliError> {
        self.items
            .next()
            .ok_or_else(|| CliError::MissingValue(flag.to_string()))
    }
}

/// Parse `argv` without the program name.
pub fn parse(argv: Vec<String>) -> Result<Command, CliError> {
    let mut args = Args {
        items: argv.into_iter(),
    };
    match args.items.next().as_deref() {
        None | Some("--help") | Some("-h") | Some("help") => Ok(Command::Help),
        Some("--version") | Some("-V") => Ok(Command::Version),
        Some("run") => Ok(Command::Run(parse_run(&mut args, &mut |_, _| Ok(false))?)),
        Some("ctl") => {
            let rest: Vec<String> = args.items.collect();
            if rest.iter().any(|a| a == "--help" || a == "-h") {
                return Ok(Command::Help);
            }
            Ok(Command::Ctl(crate::ctl::parse(rest)?))
        }
        Some("bench") => {
            let kind = match args.items.next().as_deref() {
                Some("boot") => BenchKind::Boot,
                Some("evict") => BenchKind::Evict,
                Some("latency") => BenchKind::Latency,
                Some("memory") => BenchKind::Memory,
                Some("linux") => BenchKind::Linux,
                Some("all") => BenchKind::All,
                Some(other) => return Err(CliError::UnknownCommand(format!("bench {other}"))),
                None => return Err(CliError::MissingValue("bench".into())),
            };
            parse_bench(kind, &mut args)
        }
        Some("soak") => parse_soak(&mut args),
        Some(other) => Err(CliError::UnknownCommand(other.to_string())),
    }
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
    /// All of the above.
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

fn parse_soak(args: &mut Args) -> Result<Command, CliError> {
    let mut soak = SoakArgs {
        cycles: 1000,
        seed: 0x50a4,
        json: None,
        quiet: false,
    };
    while let Some(flag) = args.items.next() {
        if flag == "--quiet" {
            soak.quiet = true;
            continue;
        }
        let value = args.value(&flag)?;
        let bad = |reason: &str| CliError::BadValue {
            flag: flag.clone(),
            value: value.clone(),
            reason: reason.into(),
        };
        match flag.as_str() {
            "--cycles" => {
                soak.cycles = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000_000).contains(n))
                    .ok_or_else(|| bad("expected 1 to 10000000"))?
            }
            "--seed" => soak.seed = value.parse().map_err(|_| bad("expected an integer"))?,
            "--json" => soak.json = Some(PathBuf::from(value)),
            _ => return Err(CliError::UnknownFlag(flag)),
        }
    }
    Ok(Command::Soak(soak))
}

fn parse_bench(kind: BenchKind, args: &mut Args) -> Result<Command, CliError> {
    let mut runs = 10;
    let mut json = None;
    let (mut qemu, mut qemu_initrd) = (None, None);
    let run = parse_run(args, &mut |flag, args| match flag {
        "--runs" => {
            let value = args.value(flag)?;
            runs = value
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| CliError::BadValue {
                    flag: flag.to_string(),
                    value,
                    reason: "expected 1 to 1000".into(),
                })?;
            Ok(true)
        }
        "--json" => {
            json = Some(PathBuf::from(args.value(flag)?));
            Ok(true)
        }
        "--qemu" if kind == BenchKind::Linux => {
            qemu = Some(PathBuf::from(args.value(flag)?));
            Ok(true)
        }
        "--qemu-initrd" if kind == BenchKind::Linux => {
            qemu_initrd = Some(PathBuf::from(args.value(flag)?));
            Ok(true)
        }
        _ => Ok(false),
    })?;
    let qemu = match (qemu, qemu_initrd) {
        (Some(q), Some(i)) => Some((q, i)),
        (None, None) => None,
        (Some(_), None) => return Err(CliError::MissingValue("--qemu-initrd".into())),
        (None, Some(_)) => return Err(CliError::MissingValue("--qemu".into())),
    };
    Ok(Command::Bench(
        kind,
        BenchArgs {
            runs,
            json,
            qemu,
            run,
        },
    ))
}

/// Milliseconds, 1 to 1 hour.
fn parse_millis(flag: &str, v: &str) -> Result<Duration, CliError> {
    v.parse::<u64>()
        .ok()
        .filter(|ms| (1..=3_600_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| CliError::BadValue {
            flag: flag.to_string(),
            value: v.to_string(),
            reason: "expected milliseconds, 1 to 3600000".into(),
        })
}

/// Handles subcommand-specific flags: `Ok(true)` if it consumed `flag`.
type ExtraFlags<'a> = dyn FnMut(&str, &mut Args) -> Result<bool, CliError> + 'a;

fn parse_run(args: &mut Args, extra: &mut ExtraFlags<'_>) -> Result<RunArgs, CliError> {
    let mut config_file: Option<PathBuf> = None;
    let mut memory = None;
    let mut vcpus = None;
    let mut kernel = None;
    let mut initrd = None;
    let mut regions = Vec::new();
    let mut capture = Vec::new();
    let mut map = None;
    let mut cmdline = None;
    let mut guest_args = None;
    let mut run = RunArgs {
        config: VmConfig::default(),
        stats: false,
        timeout: None,
        dry_run: false,
        quiet: false,
        kvm_path: PathBuf::from("/dev/kvm"),
        policy: GrantPolicy::default(),
        exercise: 0,
        prealloc: false,
        api_sock: None,
        metrics_path: None,
        occupancy_svg: None,
    };
    while let Some(flag) = args.items.next() {
        let once = |slot: bool| {
            if slot {
                Err(CliError::Repeated(flag.clone()))
            } else {
                Ok(())
            }
        };
        match flag.as_str() {
            "--config" => {
                once(config_file.is_some())?;
                config_file = Some(PathBuf::from(args.value(&flag)?));
            }
            "--memory" => {
                once(memory.is_some())?;
                memory = Some(parse_size(&args.value(&flag)?, "memory size")?);
            }
            "--vcpus" => {
                once(vcpus.is_some())?;
                let v = args.value(&flag)?;
                vcpus = Some(
                    v.parse::<u8>()
                        .map_err(|_| ConfigError::BadVcpus(v.clone()))?,
                );
            }
            "--kernel" => {
                once(kernel.is_some())?;
                kernel = Some(PathBuf::from(args.value(&flag)?));
            }
            "--initrd" => {
                once(initrd.is_some())?;
                initrd = Some(PathBuf::from(args.value(&flag)?));
            }
            "--cma" => regions.push(parse_region_flag(&args.value(&flag)?)?),
            "--capture" => capture.push(args.value(&flag)?),
            "--cma-map" => {
                once(map.is_some())?;
                map = Some(parse_map_rules(&args.value(&flag)?)?);
            }
            "--cma-cmdline" => {
                once(cmdline.is_some())?;
                cmdline = Some(config::cmdline::parse(&args.value(&flag)?)?);
            }
            "--guest-args" | "--cmdline" => {
                once(guest_args.is_some())?;
                guest_args = Some(args.value(&flag)?);
            }
            "--stats" => run.stats = true,
            "--dry-run" => run.dry_run = true,
            "--prealloc" => run.prealloc = true,
            "--quiet" => run.quiet = true,
            "--kvm" => run.kvm_path = PathBuf::from(args.value(&flag)?),
            "--api-sock" => {
                once(run.api_sock.is_some())?;
                run.api_sock = Some(PathBuf::from(args.value(&flag)?));
            }
            "--occupancy-svg" => run.occupancy_svg = Some(PathBuf::from(args.value(&flag)?)),
            "--metrics-path" => {
                once(run.metrics_path.is_some())?;
                run.metrics_path = Some(PathBuf::from(args.value(&flag)?));
            }
            "--evict-timeout" => {
                let v = args.value(&flag)?;
                run.policy.evict_timeout = parse_millis(&flag, &v)?;
                run.policy.return_timeout = run.policy.evict_timeout;
            }
            "--copy-mode" => {
                run.policy.copy = match args.value(&flag)?.as_str() {
                    "host" => CopyMode::Host,
                    "guest" => CopyMode::Guest,
                    other => {
                        return Err(CliError::BadValue {
                            flag,
                            value: other.to_string(),
                            reason: "expected 'host' or 'guest'".into(),
                        });
                    }
                }
            }
            "--exercise" => {
                let v = args.value(&flag)?;
                run.exercise =
                    v.parse()
                        .ok()
                        .filter(|n| *n <= 100_000)
                        .ok_or_else(|| CliError::BadValue {
                            flag: flag.clone(),
                            value: v.clone(),
                            reason: "expected a count up to 100000".into(),
                        })?;
            }
            "--timeout" => {
                let v = args.value(&flag)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 86400.0)
                    .ok_or_else(|| CliError::BadValue {
                        flag: flag.clone(),
                        value: v.clone(),
                        reason: "expected seconds, more than 0 and at most 86400".into(),
                    })?;
                run.timeout = Some(Duration::from_secs_f64(secs));
            }
            f if extra(f, args)? => {}
            _ => return Err(CliError::UnknownFlag(flag)),
        }
    }
    let sources: Vec<&str> = [
        (config_file.is_some(), "--config"),
        (!regions.is_empty() || map.is_some(), "--cma/--cma-map"),
        (cmdline.is_some(), "--cma-cmdline"),
    ]
    .iter()
    .filter(|(given, _)| *given)
    .map(|(_, name)| *name)
    .collect();
    if sources.len() > 1 {
        return Err(ConfigError::MixedSources(sources.join(", ")).into());
    }
    let mut config = match &config_file {
        Some(path) => config::file::load(path)?,
        None => VmConfig::default(),
    };
    if let Some(c) = cmdline {
        config.regions = c.regions;
        config.map = c.map;
    }
    if !regions.is_empty() {
        config.regions = regions;
    }
    if let Some(m) = map {
        config.map = m;
    }
    if let Some(m) = memory {
        config.memory = m;
    }
    if let Some(v) = vcpus {
        config.vcpus = v;
    }
    if kernel.is_some() {
        config.kernel = kernel;
    }
    if initrd.is_some() {
        config.initrd = initrd;
    }
    if let Some(g) = guest_args {
        config.guest_args = g;
    }
    if !capture.is_empty() {
        config.capture = capture;
    }
    run.config = config;
    Ok(run)
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
        assert!(e(&["run", "--memory", "lots"]).contains("'lots'"));
        assert!(e(&["run", "--vcpus", "300"]).contains("300"));
        assert!(e(&["run", "--timeout", "-1"]).contains("'-1'"));
        assert!(e(&["run", "--cma", "name=a"]).contains("missing 'size'"));
        assert!(
            e(&["run", "--config", "x.toml", "--cma", "name=a,size=2M"]).contains("use one form")
        );
        assert!(e(&["run", "--cma-cmdline", "cma=a=2M", "--cma-map", "*=a"]).contains("one form"));
        assert!(e(&["bench", "boot", "--runs", "0"]).contains("'0'"));
        assert!(e(&["bench", "fly"]).contains("bench fly"));
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
        match parse(argv(&["ctl", "--api-sock", "/tmp/a.sock", "regions"])).unwrap() {
            Command::Ctl(c) => assert_eq!(c.command, crate::ctl::CtlCommand::Regions(None)),
            other => panic!("{other:?}"),
        }
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
    }
}
