//! The seed corpus, generated from the real encoders.

use protocol::boot::MAX_BOOT_INFO_SIZE;
use protocol::msg::{AGENT_VERSION, Ack, GuestMsg, HostMsg, MigratePair, Report, Status};
use vmm::config::{VmConfig, cmdline, parse_size};

use super::agent_queue::QueueProgram;
use super::config::vm_boot_info;

/// One seed input: `fuzz/corpus/<target>/seed-<name>`.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target.
    pub target: &'static str,
    /// File name after `seed-`.
    pub name: &'static str,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// The seed corpus: valid inputs of every kind, so the fuzzer starts from the interesting
/// part. Generated from the real encoders (and committed as files; the regression test
/// checks the files are current).
pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target, name, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        })
    };
    for (name, text) in [
        ("example", EXAMPLE_CMDLINE),
        ("high", "5G\ncma=big=1G@0x100000000;low=64M cma_map=*=big"),
        ("none", "64M\ncma="),
    ] {
        let bytes = [&[1u8][..], text.as_bytes()].concat();
        add("config", name, bytes.clone());
        if let Some(info) = config_boot_block(&bytes) {
            add("boot_info", name, info);
        }
    }
    add(
        "config",
        "flags",
        [&[0u8][..], EXAMPLE_FLAGS.as_bytes()].concat(),
    );
    add(
        "config",
        "toml",
        [&[2u8][..], EXAMPLE_TOML.as_bytes()].concat(),
    );
    add(
        "config",
        "cli",
        [&[3u8][..], EXAMPLE_CLI.as_bytes()].concat(),
    );

    for (name, m) in [
        (
            "evict",
            HostMsg::Evict {
                req: 1,
                gpa: 0x800_0000,
                len: 0x20_0000,
                flags: 1,
            },
        ),
        (
            "return",
            HostMsg::Return {
                req: 2,
                gpa: 0x800_0000,
                len: 0x1000,
            },
        ),
        ("cancel", HostMsg::Cancel { req: 3, target: 1 }),
        ("query", HostMsg::Query { req: 4, flags: 1 }),
        (
            "probe",
            HostMsg::Probe {
                req: 5,
                gpa: 0x1000,
            },
        ),
        ("shutdown", HostMsg::Shutdown { req: 6 }),
    ] {
        add("agent_messages", name, m.encode().to_vec());
    }
    let busy = Status::Busy {
        first_busy: 0x80_1000,
    };
    for (name, m) in [
        (
            "hello",
            GuestMsg::Hello {
                version: AGENT_VERSION,
                features: 0,
            },
        ),
        (
            "evicted",
            GuestMsg::Evicted {
                req: 1,
                status: busy,
                migrated: 3,
            },
        ),
        (
            "returned",
            GuestMsg::Returned {
                req: 2,
                status: Status::Done,
            },
        ),
        ("migrate", GuestMsg::Migrate { req: 1, count: 2 }),
        (
            "report",
            GuestMsg::Report {
                req: 4,
                report: Report {
                    manifest_gpa: 0x20_0000,
                    manifest_len: 2,
                    ..Report::default()
                },
            },
        ),
        (
            "cancelled",
            GuestMsg::Cancelled {
                req: 3,
                target: 1,
                status: Status::Failed { code: 7 },
            },
        ),
        ("probed", GuestMsg::Probed { req: 5, value: 42 }),
    ] {
        add("agent_messages", name, m.encode().to_vec());
    }
    let ack = Ack {
        status: busy,
        done: 1,
    };
    add("agent_messages", "ack", ack.encode().to_vec());
    let pairs = [
        MigratePair {
            src: 0x40_0000,
            dst: 0x60_0000,
        }
        .encode(),
        MigratePair {
            src: 0x40_1000,
            dst: 0x60_1000,
        }
        .encode(),
    ];
    add(
        "agent_messages",
        "pairs",
        [&pairs.concat()[..], &[1]].concat(),
    );

    add("agent_queue", "hello", QueueProgram::hello().0);
    add(
        "agent_queue",
        "evict-migrate",
        QueueProgram::evict_and_migrate(false).0,
    );
    add(
        "agent_queue",
        "migrate-into-device",
        QueueProgram::evict_and_migrate(true).0,
    );
    for (name, wire) in [
        ("get-vm", "GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        (
            "post-chunk",
            "POST /chunks HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: 34\r\n\r\n{\"device\":\"video-dev\",\"size\":\"2M\"}",
        ),
        ("delete-chunk", "DELETE /chunks/7 HTTP/1.0\r\n\r\n"),
    ] {
        add(
            "api_request",
            name,
            [&[0x03u8][..], wire.as_bytes()].concat(),
        );
    }
    seeds
}

const EXAMPLE_CMDLINE: &str =
    "256M\ncma=video=64M/1M;camera=32M@0x8000000 cma_map=video-dev=video;*=camera";
const EXAMPLE_FLAGS: &str = "256M\nname=video,size=64M,align=1M\n\
    name=camera,size=32M,base=0x8000000\nname=secure,size=16M,private\n\
    map:video-dev=video;*=camera";
const EXAMPLE_TOML: &str = "memory = \"256M\"\nvcpus = 1\ncma_map = \"video-dev=video;*=camera\"\n\
    [[cma]]\nname = \"video\"\nsize = \"64M\"\nalign = \"1M\"\n\
    [[cma]]\nname = \"camera\"\nsize = \"32M\"\nbase = \"0x8000000\"\n\
    [[cma]]\nname = \"secure\"\nsize = \"16M\"\nprivate = true\n";
const EXAMPLE_CLI: &str = "run\n--memory\n256M\n--cma\nname=video,size=64M,align=1M\n\
    --cma\nname=secure,size=16M,private,order_per_bit=2\n--cma-map\nvideo-dev=video\n\
    --guest-args\nagent.mode=normal\n--evict-timeout\n500\n--stats";

/// The boot block the VMM would write for a `config` seed in the `cma=` form.
fn config_boot_block(seed: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(&seed[1..]).ok()?;
    let (memory, line) = text.split_once('\n')?;
    let parsed = cmdline::parse(line).ok()?;
    let config = VmConfig {
        memory: parse_size(memory, "memory").ok()?,
        regions: parsed.regions,
        map: parsed.map,
        guest_args: "agent.mode=normal".into(),
        ..VmConfig::default()
    };
    let info = vm_boot_info(&config.validate().ok()?)?;
    let mut out = vec![0u8; MAX_BOOT_INFO_SIZE];
    let n = info.encode(&mut out)?;
    out.truncate(n);
    Some(out)
}
