//! One protocol: the Linux agent module's C view of the wire formats
//! (`guest-linux/cma_agent_proto.h`) against the `protocol` crate.
//!
//! A small C program, compiled with gcc in plain userspace (no kernel headers), includes
//! the header and
//! - prints the offset and size of every struct field and the value of every constant:
//!   each is compared with what the Rust encoders actually produce (a field's offset is
//!   found by encoding a message with only that field set to a marker), so the check
//!   follows the crate, not a second hand-written table;
//! - decodes records the Rust encoders wrote (every host message, acks, the config space)
//!   through the header's structs and prints their fields;
//! - encodes every guest message (and a Migrate pair) through the header's structs,
//!   which the Rust decoders must read back as the same values, byte for byte.
//!
//! gcc missing is a failure that says to install it, never a skip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use protocol::agent_config::{
    AGENT_CONFIG_MAGIC, CONFIG_HEADER_SIZE, MAX_CONFIG_SIZE, RECORD_NAME_SIZE, REGION_RECORD_SIZE,
    encode_config,
};
use protocol::boot::{MAX_REGIONS, Name, REGION_PRIVATE, RegionDesc};
use protocol::layout::{EXIT_PORT, PROGRESS_AGENT_UP, PROGRESS_POPULATED, PROGRESS_PORT};
use protocol::msg::{
    ACK_SIZE, AGENT_VERSION, Ack, EVICT_HOST_COPY, GuestMsg, HostMsg, KIND_CANCEL, KIND_CANCELLED,
    KIND_EVICT, KIND_EVICTED, KIND_HELLO, KIND_MIGRATE, KIND_PROBE, KIND_PROBED, KIND_QUERY,
    KIND_REPORT, KIND_RETURN, KIND_RETURNED, KIND_SHUTDOWN, MAX_MIGRATE_PAIRS, MIGRATE_PAIR_SIZE,
    MSG_SIZE, MigratePair, QUERY_QUIESCE, QUERY_RESUME, Report, STATUS_BUSY, STATUS_CANCELLED,
    STATUS_DONE, STATUS_FAILED, STATUS_INVALID, STATUS_NO_MEMORY, Status,
};
use vmm::devices::virtio::agent::AGENT_DEVICE_ID;
use vmm::devices::virtio::agent::device::QUEUE_SIZE;

/// The header under test, as this test binary was built with it.
const HEADER: &str = include_str!("../../guest-linux/cma_agent_proto.h");

/// The C side: reads commands on stdin, one per line, answers one line each.
const PROGRAM: &str = r#"
#include <endian.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cma_agent_proto.h"

#define OFF(s, f) printf("offset %s.%s %zu\n", #s, #f, offsetof(struct s, f))
#define FSIZE(s, f) printf("fsize %s.%s %zu\n", #s, #f, sizeof(((struct s *)0)->f))
#define SIZE(s) printf("size %s %zu\n", #s, sizeof(struct s))
#define CONST(c) printf("const %s %llu\n", #c, (unsigned long long)(c))
#define HDR(s) OFF(s, hdr.kind); OFF(s, hdr.word); OFF(s, hdr.req)

static void layout(void)
{
	SIZE(cma_msg_hdr); OFF(cma_msg_hdr, kind); OFF(cma_msg_hdr, word); OFF(cma_msg_hdr, req);
	SIZE(cma_msg); OFF(cma_msg, arg); FSIZE(cma_msg, arg);
	printf("size cma_wire_msg %zu\n", sizeof(union cma_wire_msg));
	SIZE(cma_msg_evict); HDR(cma_msg_evict); OFF(cma_msg_evict, gpa); OFF(cma_msg_evict, len);
	SIZE(cma_msg_return); HDR(cma_msg_return); OFF(cma_msg_return, gpa); OFF(cma_msg_return, len);
	SIZE(cma_msg_cancel); HDR(cma_msg_cancel); OFF(cma_msg_cancel, target);
	SIZE(cma_msg_query); HDR(cma_msg_query);
	SIZE(cma_msg_probe); HDR(cma_msg_probe); OFF(cma_msg_probe, gpa);
	SIZE(cma_msg_shutdown); HDR(cma_msg_shutdown);
	SIZE(cma_msg_hello); HDR(cma_msg_hello); OFF(cma_msg_hello, features);
	SIZE(cma_msg_evicted); HDR(cma_msg_evicted); OFF(cma_msg_evicted, detail);
	OFF(cma_msg_evicted, migrated);
	SIZE(cma_msg_returned); HDR(cma_msg_returned); OFF(cma_msg_returned, detail);
	SIZE(cma_msg_migrate); HDR(cma_msg_migrate);
	SIZE(cma_msg_report); HDR(cma_msg_report); OFF(cma_msg_report, manifest_gpa);
	OFF(cma_msg_report, manifest_len); OFF(cma_msg_report, pages_present);
	OFF(cma_msg_report, pages_pinned); OFF(cma_msg_report, free_pages);
	OFF(cma_msg_report, pages_migrated);
	SIZE(cma_msg_cancelled); HDR(cma_msg_cancelled); OFF(cma_msg_cancelled, target);
	OFF(cma_msg_cancelled, detail);
	SIZE(cma_msg_probed); HDR(cma_msg_probed); OFF(cma_msg_probed, value);
	SIZE(cma_ack); OFF(cma_ack, status); OFF(cma_ack, done); OFF(cma_ack, detail);
	SIZE(cma_migrate_pair); OFF(cma_migrate_pair, src); OFF(cma_migrate_pair, dst);
	SIZE(cma_config_hdr); OFF(cma_config_hdr, magic); OFF(cma_config_hdr, version);
	OFF(cma_config_hdr, count); OFF(cma_config_hdr, record_size);
	SIZE(cma_config_region); OFF(cma_config_region, base); OFF(cma_config_region, size);
	OFF(cma_config_region, id); OFF(cma_config_region, flags); OFF(cma_config_region, name);
	FSIZE(cma_config_region, name);

	CONST(CMA_AGENT_DEVICE_ID); CONST(CMA_QUEUE_SIZE); CONST(CMA_HOSTQ); CONST(CMA_GUESTQ);
	CONST(CMA_MSG_SIZE); CONST(CMA_ACK_SIZE); CONST(CMA_MIGRATE_PAIR_SIZE);
	CONST(CMA_MAX_MIGRATE_PAIRS); CONST(CMA_AGENT_VERSION); CONST(CMA_EVICT_HOST_COPY);
	CONST(CMA_QUERY_QUIESCE); CONST(CMA_QUERY_RESUME);
	CONST(CMA_KIND_EVICT); CONST(CMA_KIND_RETURN); CONST(CMA_KIND_CANCEL);
	CONST(CMA_KIND_QUERY); CONST(CMA_KIND_PROBE); CONST(CMA_KIND_SHUTDOWN);
	CONST(CMA_KIND_HELLO); CONST(CMA_KIND_EVICTED); CONST(CMA_KIND_RETURNED);
	CONST(CMA_KIND_MIGRATE); CONST(CMA_KIND_REPORT); CONST(CMA_KIND_CANCELLED);
	CONST(CMA_KIND_PROBED);
	CONST(CMA_STATUS_DONE); CONST(CMA_STATUS_BUSY); CONST(CMA_STATUS_NO_MEMORY);
	CONST(CMA_STATUS_INVALID); CONST(CMA_STATUS_CANCELLED); CONST(CMA_STATUS_FAILED);
	CONST(CMA_CONFIG_MAGIC); CONST(CMA_CONFIG_HEADER_SIZE); CONST(CMA_REGION_RECORD_SIZE);
	CONST(CMA_RECORD_NAME_SIZE); CONST(CMA_MAX_REGIONS); CONST(CMA_MAX_CONFIG_SIZE);
	CONST(CMA_REGION_PRIVATE);
	CONST(CMA_EXIT_PORT); CONST(CMA_PROGRESS_PORT); CONST(CMA_PROGRESS_AGENT_UP);
	CONST(CMA_PROGRESS_POPULATED);
	printf("end\n");
}

static size_t unhex(const char *s, unsigned char *out, size_t max)
{
	size_t n = 0;
	unsigned int byte;

	while (n < max && sscanf(s + 2 * n, "%2x", &byte) == 1)
		out[n++] = (unsigned char)byte;
	return n;
}

static void hex(const void *p, size_t len)
{
	const unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		printf("%02x", b[i]);
	printf("\n");
}

/* A record the VMM wrote, read as the module reads it. */
static void decode_host(const char *arg)
{
	union cma_wire_msg m;

	memset(&m, 0, sizeof(m));
	if (unhex(arg, m.bytes, sizeof(m)) != CMA_MSG_SIZE) {
		printf("short\n");
		return;
	}
	switch (le32toh(m.hdr.kind)) {
	case CMA_KIND_EVICT:
		printf("evict req=%" PRIu64 " gpa=%" PRIu64 " len=%" PRIu64 " flags=%" PRIu32 "\n",
		       le64toh(m.evict.hdr.req), le64toh(m.evict.gpa), le64toh(m.evict.len),
		       le32toh(m.evict.hdr.word));
		break;
	case CMA_KIND_RETURN:
		printf("return req=%" PRIu64 " gpa=%" PRIu64 " len=%" PRIu64 "\n",
		       le64toh(m.ret.hdr.req), le64toh(m.ret.gpa), le64toh(m.ret.len));
		break;
	case CMA_KIND_CANCEL:
		printf("cancel req=%" PRIu64 " target=%" PRIu64 "\n", le64toh(m.cancel.hdr.req),
		       le64toh(m.cancel.target));
		break;
	case CMA_KIND_QUERY:
		printf("query req=%" PRIu64 " flags=%" PRIu32 "\n", le64toh(m.query.hdr.req),
		       le32toh(m.query.hdr.word));
		break;
	case CMA_KIND_PROBE:
		printf("probe req=%" PRIu64 " gpa=%" PRIu64 "\n", le64toh(m.probe.hdr.req),
		       le64toh(m.probe.gpa));
		break;
	case CMA_KIND_SHUTDOWN:
		printf("shutdown req=%" PRIu64 "\n", le64toh(m.shutdown.hdr.req));
		break;
	default:
		printf("unknown kind=%" PRIu32 "\n", le32toh(m.hdr.kind));
	}
}

/* An answer, written as the module writes it: "NAME a0 a1 ..." -> the record in hex. */
static void encode_guest(const char *name, const uint64_t *a)
{
	union cma_wire_msg m;

	memset(&m, 0, sizeof(m));
	if (!strcmp(name, "hello")) {
		m.hello.hdr.kind = htole32(CMA_KIND_HELLO);
		m.hello.hdr.word = htole32((uint32_t)a[0]);
		m.hello.features = htole64(a[1]);
	} else if (!strcmp(name, "evicted")) {
		m.evicted.hdr.kind = htole32(CMA_KIND_EVICTED);
		m.evicted.hdr.req = htole64(a[0]);
		m.evicted.hdr.word = htole32((uint32_t)a[1]);
		m.evicted.detail = htole64(a[2]);
		m.evicted.migrated = htole64(a[3]);
	} else if (!strcmp(name, "returned")) {
		m.returned.hdr.kind = htole32(CMA_KIND_RETURNED);
		m.returned.hdr.req = htole64(a[0]);
		m.returned.hdr.word = htole32((uint32_t)a[1]);
		m.returned.detail = htole64(a[2]);
	} else if (!strcmp(name, "migrate")) {
		m.migrate.hdr.kind = htole32(CMA_KIND_MIGRATE);
		m.migrate.hdr.req = htole64(a[0]);
		m.migrate.hdr.word = htole32((uint32_t)a[1]);
	} else if (!strcmp(name, "report")) {
		m.report.hdr.kind = htole32(CMA_KIND_REPORT);
		m.report.hdr.req = htole64(a[0]);
		m.report.manifest_gpa = htole64(a[1]);
		m.report.manifest_len = htole64(a[2]);
		m.report.pages_present = htole64(a[3]);
		m.report.pages_pinned = htole64(a[4]);
		m.report.free_pages = htole64(a[5]);
		m.report.pages_migrated = htole64(a[6]);
	} else if (!strcmp(name, "cancelled")) {
		m.cancelled.hdr.kind = htole32(CMA_KIND_CANCELLED);
		m.cancelled.hdr.req = htole64(a[0]);
		m.cancelled.target = htole64(a[1]);
		m.cancelled.hdr.word = htole32((uint32_t)a[2]);
		m.cancelled.detail = htole64(a[3]);
	} else if (!strcmp(name, "probed")) {
		m.probed.hdr.kind = htole32(CMA_KIND_PROBED);
		m.probed.hdr.req = htole64(a[0]);
		m.probed.value = htole64(a[1]);
	} else if (!strcmp(name, "pair")) {
		struct cma_migrate_pair p = { htole64(a[0]), htole64(a[1]) };

		hex(&p, sizeof(p));
		return;
	} else if (!strcmp(name, "ackenc")) {
		struct cma_ack k = { htole32((uint32_t)a[0]), htole32((uint32_t)a[1]), htole64(a[2]) };

		hex(&k, sizeof(k));
		return;
	} else {
		printf("unknown %s\n", name);
		return;
	}
	hex(&m, sizeof(m));
}

/* An ack the VMM wrote. */
static void decode_ack(const char *arg)
{
	struct cma_ack k;

	if (unhex(arg, (unsigned char *)&k, sizeof(k)) != sizeof(k)) {
		printf("short\n");
		return;
	}
	printf("ack status=%" PRIu32 " done=%" PRIu32 " detail=%" PRIu64 "\n", le32toh(k.status),
	       le32toh(k.done), le64toh(k.detail));
}

/* The config space the VMM offers, read as the module reads it. */
static void decode_config(const char *arg)
{
	static unsigned char buf[CMA_MAX_CONFIG_SIZE];
	struct cma_config_hdr h;
	uint32_t i;

	memset(buf, 0, sizeof(buf));
	unhex(arg, buf, sizeof(buf));
	memcpy(&h, buf, sizeof(h));
	printf("config magic=%" PRIu32 " version=%" PRIu32 " count=%" PRIu32 " record_size=%" PRIu32,
	       le32toh(h.magic), le32toh(h.version), le32toh(h.count), le32toh(h.record_size));
	for (i = 0; i < le32toh(h.count) && i < CMA_MAX_REGIONS; i++) {
		struct cma_config_region r;

		memcpy(&r, buf + CMA_CONFIG_HEADER_SIZE + i * CMA_REGION_RECORD_SIZE, sizeof(r));
		printf(" [base=%" PRIu64 " size=%" PRIu64 " id=%" PRIu32 " flags=%" PRIu32 " name=%.*s]",
		       le64toh(r.base), le64toh(r.size), le32toh(r.id), le32toh(r.flags),
		       (int)strnlen(r.name, sizeof(r.name)), r.name);
	}
	printf("\n");
}

int main(void)
{
	static char line[8192];

	while (fgets(line, sizeof(line), stdin)) {
		char cmd[32], *rest;
		uint64_t a[8] = { 0 };
		int n = 0;

		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "%31s", cmd) != 1)
			continue;
		rest = line + strlen(cmd);
		while (*rest == ' ')
			rest++;
		if (!strcmp(cmd, "layout")) {
			layout();
		} else if (!strcmp(cmd, "host")) {
			decode_host(rest);
		} else if (!strcmp(cmd, "ack")) {
			decode_ack(rest);
		} else if (!strcmp(cmd, "config")) {
			decode_config(rest);
		} else {
			char *p = rest, *end;

			while (n < 8 && *p) {
				a[n++] = strtoull(p, &end, 0);
				if (end == p)
					break;
				p = end;
			}
			encode_guest(cmd, a);
		}
		fflush(stdout);
	}
	return 0;
}
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex from the C program"))
        .collect()
}

/// Compile the C program against the header, once per test process; its path.
fn build_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(compile).clone()
}

fn compile() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cma-linux-protocol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    std::fs::write(dir.join("cma_agent_proto.h"), HEADER).expect("write the header");
    std::fs::write(dir.join("proto_check.c"), PROGRAM).expect("write the C program");
    let exe = dir.join("proto_check");
    let out = match Command::new("gcc")
        .args([
            "-std=c11",
            "-D_DEFAULT_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-I",
        ])
        .arg(&dir)
        .arg(dir.join("proto_check.c"))
        .arg("-o")
        .arg(&exe)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "this test compiles guest-linux/cma_agent_proto.h with gcc, and there is no gcc: \
             install it (apt-get install gcc)"
        ),
        Err(e) => panic!("cannot run gcc: {e}"),
    };
    assert!(
        out.status.success(),
        "guest-linux/cma_agent_proto.h does not compile as plain userspace C:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Run the program on `commands`; one answer line per command (layout: up to "end").
fn run_program(exe: &Path, commands: &[String]) -> Vec<String> {
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the C program");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for c in commands {
            writeln!(stdin, "{c}").expect("write a command");
        }
    }
    let out = child.wait_with_output().expect("the C program's output");
    assert!(
        out.status.success(),
        "the C program failed: {:?}",
        out.status
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Where a marker's little-endian bytes sit in an encoding (exactly once).
fn offset_of(bytes: &[u8], marker: &[u8], what: &str) -> usize {
    let hits: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{what}: the marker must occur exactly once");
    hits[0]
}

const M64: u64 = 0x8877_6655_4433_2211;
const M32: u32 = 0xa5b4_c3d2;

fn at64(bytes: &[u8], what: &str) -> usize {
    offset_of(bytes, &M64.to_le_bytes(), what)
}

fn at32(bytes: &[u8], what: &str) -> usize {
    offset_of(bytes, &M32.to_le_bytes(), what)
}

/// What the protocol crate says every C name must be.
fn expected_layout() -> BTreeMap<String, u64> {
    let mut e = BTreeMap::new();
    let mut put = |k: &str, v: usize| {
        e.insert(k.to_string(), v as u64);
    };
    let msg = MSG_SIZE;

    // The common header, from any message: kind first, then word, then req.
    let q = HostMsg::Query {
        req: M64,
        flags: M32,
    }
    .encode();
    let kind_at = offset_of(&q, &KIND_QUERY.to_le_bytes(), "kind");
    let (word_at, req_at) = (at32(&q, "word"), at64(&q, "req"));
    for s in [
        "cma_msg_hdr",
        "cma_msg_evict.hdr",
        "cma_msg_return.hdr",
        "cma_msg_cancel.hdr",
        "cma_msg_query.hdr",
        "cma_msg_probe.hdr",
        "cma_msg_shutdown.hdr",
        "cma_msg_hello.hdr",
        "cma_msg_evicted.hdr",
        "cma_msg_returned.hdr",
        "cma_msg_migrate.hdr",
        "cma_msg_report.hdr",
        "cma_msg_cancelled.hdr",
        "cma_msg_probed.hdr",
    ] {
        put(&format!("offset {s}.kind"), kind_at);
        put(&format!("offset {s}.word"), word_at);
        put(&format!("offset {s}.req"), req_at);
    }
    put("size cma_msg_hdr", 16);
    let args_at = at64(
        &HostMsg::Probe { req: 0, gpa: M64 }.encode(),
        "first argument",
    );
    put("offset cma_msg.arg", args_at);
    put("fsize cma_msg.arg", msg - args_at);
    for s in [
        "cma_msg",
        "cma_wire_msg",
        "cma_msg_evict",
        "cma_msg_return",
        "cma_msg_cancel",
        "cma_msg_query",
        "cma_msg_probe",
        "cma_msg_shutdown",
        "cma_msg_hello",
        "cma_msg_evicted",
        "cma_msg_returned",
        "cma_msg_migrate",
        "cma_msg_report",
        "cma_msg_cancelled",
        "cma_msg_probed",
    ] {
        put(&format!("size {s}"), msg);
    }

    // Host messages: each field at the offset the Rust encoder writes it.
    let evict = |gpa, len| {
        HostMsg::Evict {
            req: 0,
            gpa,
            len,
            flags: 0,
        }
        .encode()
    };
    put(
        "offset cma_msg_evict.gpa",
        at64(&evict(M64, 0), "Evict.gpa"),
    );
    put(
        "offset cma_msg_evict.len",
        at64(&evict(0, M64), "Evict.len"),
    );
    let ret = |gpa, len| HostMsg::Return { req: 0, gpa, len }.encode();
    put(
        "offset cma_msg_return.gpa",
        at64(&ret(M64, 0), "Return.gpa"),
    );
    put(
        "offset cma_msg_return.len",
        at64(&ret(0, M64), "Return.len"),
    );
    put(
        "offset cma_msg_cancel.target",
        at64(
            &HostMsg::Cancel {
                req: 0,
                target: M64,
            }
            .encode(),
            "Cancel.target",
        ),
    );
    put(
        "offset cma_msg_probe.gpa",
        at64(&HostMsg::Probe { req: 0, gpa: M64 }.encode(), "Probe.gpa"),
    );
    // The word is the Evict's flags.
    assert_eq!(
        at32(
            &HostMsg::Evict {
                req: 0,
                gpa: 0,
                len: 0,
                flags: M32
            }
            .encode(),
            "Evict.flags"
        ),
        word_at,
        "Evict.flags is not the record's word"
    );

    // Guest messages.
    put(
        "offset cma_msg_hello.features",
        at64(
            &GuestMsg::Hello {
                version: 0,
                features: M64,
            }
            .encode(),
            "Hello.features",
        ),
    );
    let evicted = |status, migrated| {
        GuestMsg::Evicted {
            req: 0,
            status,
            migrated,
        }
        .encode()
    };
    put(
        "offset cma_msg_evicted.detail",
        at64(
            &evicted(Status::Busy { first_busy: M64 }, 0),
            "Evicted.first_busy",
        ),
    );
    put(
        "offset cma_msg_evicted.migrated",
        at64(&evicted(Status::Done, M64), "Evicted.migrated"),
    );
    put(
        "offset cma_msg_returned.detail",
        at64(
            &GuestMsg::Returned {
                req: 0,
                status: Status::Failed { code: M64 },
            }
            .encode(),
            "Returned.code",
        ),
    );
    let cancelled = |target, status| {
        GuestMsg::Cancelled {
            req: 0,
            target,
            status,
        }
        .encode()
    };
    put(
        "offset cma_msg_cancelled.target",
        at64(&cancelled(M64, Status::Done), "Cancelled.target"),
    );
    put(
        "offset cma_msg_cancelled.detail",
        at64(
            &cancelled(0, Status::Failed { code: M64 }),
            "Cancelled.code",
        ),
    );
    put(
        "offset cma_msg_probed.value",
        at64(
            &GuestMsg::Probed { req: 0, value: M64 }.encode(),
            "Probed.value",
        ),
    );
    let report = |f: fn(&mut Report)| {
        let mut r = Report::default();
        f(&mut r);
        GuestMsg::Report { req: 0, report: r }.encode()
    };
    put(
        "offset cma_msg_report.manifest_gpa",
        at64(&report(|r| r.manifest_gpa = M64), "manifest_gpa"),
    );
    put(
        "offset cma_msg_report.manifest_len",
        at64(&report(|r| r.manifest_len = M64), "manifest_len"),
    );
    put(
        "offset cma_msg_report.pages_present",
        at64(&report(|r| r.pages_present = M64), "pages_present"),
    );
    put(
        "offset cma_msg_report.pages_pinned",
        at64(&report(|r| r.pages_pinned = M64), "pages_pinned"),
    );
    put(
        "offset cma_msg_report.free_pages",
        at64(&report(|r| r.free_pages = M64), "free_pages"),
    );
    put(
        "offset cma_msg_report.pages_migrated",
        at64(&report(|r| r.pages_migrated = M64), "pages_migrated"),
    );
    assert_eq!(
        at32(
            &GuestMsg::Migrate { req: 0, count: M32 }.encode(),
            "Migrate.count"
        ),
        word_at,
        "Migrate.count is not the record's word"
    );

    // Ack and Migrate pairs.
    put("size cma_ack", ACK_SIZE);
    let ack = |status, done| Ack { status, done }.encode();
    put(
        "offset cma_ack.status",
        offset_of(
            &ack(Status::Cancelled, 0),
            &STATUS_CANCELLED.to_le_bytes(),
            "Ack.status",
        ),
    );
    put(
        "offset cma_ack.done",
        at32(&ack(Status::Done, M32), "Ack.done"),
    );
    put(
        "offset cma_ack.detail",
        at64(&ack(Status::Busy { first_busy: M64 }, 0), "Ack.detail"),
    );
    put("size cma_migrate_pair", MIGRATE_PAIR_SIZE);
    put(
        "offset cma_migrate_pair.src",
        at64(
            &MigratePair { src: M64, dst: 0 }.encode(),
            "MigratePair.src",
        ),
    );
    put(
        "offset cma_migrate_pair.dst",
        at64(
            &MigratePair { src: 0, dst: M64 }.encode(),
            "MigratePair.dst",
        ),
    );

    // The config space.
    let region = |base, size, id, flags| RegionDesc {
        base,
        size,
        id,
        flags,
        name: Name::new("n").unwrap(),
    };
    let config = |r: RegionDesc| {
        let mut buf = [0u8; MAX_CONFIG_SIZE];
        let len = encode_config(&[r], &mut buf);
        buf[..len].to_vec()
    };
    let plain = config(region(0, 0, 0, 0));
    put("size cma_config_hdr", CONFIG_HEADER_SIZE);
    put(
        "offset cma_config_hdr.magic",
        offset_of(&plain, &AGENT_CONFIG_MAGIC.to_le_bytes(), "magic"),
    );
    put("offset cma_config_hdr.version", 4);
    assert_eq!(
        &plain[4..8],
        &AGENT_VERSION.to_le_bytes(),
        "config version at 4"
    );
    put("offset cma_config_hdr.count", 8);
    assert_eq!(&plain[8..12], &1u32.to_le_bytes(), "config count at 8");
    put("offset cma_config_hdr.record_size", 12);
    assert_eq!(
        &plain[12..16],
        &(REGION_RECORD_SIZE as u32).to_le_bytes(),
        "config record size at 12"
    );
    let h = CONFIG_HEADER_SIZE;
    put("size cma_config_region", REGION_RECORD_SIZE);
    put(
        "offset cma_config_region.base",
        at64(&config(region(M64, 0, 0, 0)), "base") - h,
    );
    put(
        "offset cma_config_region.size",
        at64(&config(region(0, M64, 0, 0)), "size") - h,
    );
    put(
        "offset cma_config_region.id",
        at32(&config(region(0, 0, M32, 0)), "id") - h,
    );
    put(
        "offset cma_config_region.flags",
        at32(&config(region(0, 0, 0, M32)), "flags") - h,
    );
    put(
        "offset cma_config_region.name",
        offset_of(&plain, b"n\0", "name") - h,
    );
    put("fsize cma_config_region.name", RECORD_NAME_SIZE);

    // Constants.
    let mut c = |k: &str, v: u64| {
        e.insert(format!("const {k}"), v);
    };
    c("CMA_AGENT_DEVICE_ID", AGENT_DEVICE_ID.into());
    c("CMA_QUEUE_SIZE", QUEUE_SIZE.into());
    // The queue indices are the documented order (protocol/src/msg.rs): hostq, guestq.
    c("CMA_HOSTQ", 0);
    c("CMA_GUESTQ", 1);
    c("CMA_MSG_SIZE", MSG_SIZE as u64);
    c("CMA_ACK_SIZE", ACK_SIZE as u64);
    c("CMA_MIGRATE_PAIR_SIZE", MIGRATE_PAIR_SIZE as u64);
    c("CMA_MAX_MIGRATE_PAIRS", MAX_MIGRATE_PAIRS as u64);
    c("CMA_AGENT_VERSION", AGENT_VERSION.into());
    c("CMA_EVICT_HOST_COPY", EVICT_HOST_COPY.into());
    c("CMA_QUERY_QUIESCE", QUERY_QUIESCE.into());
    c("CMA_QUERY_RESUME", QUERY_RESUME.into());
    for (k, v) in [
        ("CMA_KIND_EVICT", KIND_EVICT),
        ("CMA_KIND_RETURN", KIND_RETURN),
        ("CMA_KIND_CANCEL", KIND_CANCEL),
        ("CMA_KIND_QUERY", KIND_QUERY),
        ("CMA_KIND_PROBE", KIND_PROBE),
        ("CMA_KIND_SHUTDOWN", KIND_SHUTDOWN),
        ("CMA_KIND_HELLO", KIND_HELLO),
        ("CMA_KIND_EVICTED", KIND_EVICTED),
        ("CMA_KIND_RETURNED", KIND_RETURNED),
        ("CMA_KIND_MIGRATE", KIND_MIGRATE),
        ("CMA_KIND_REPORT", KIND_REPORT),
        ("CMA_KIND_CANCELLED", KIND_CANCELLED),
        ("CMA_KIND_PROBED", KIND_PROBED),
        ("CMA_STATUS_DONE", STATUS_DONE),
        ("CMA_STATUS_BUSY", STATUS_BUSY),
        ("CMA_STATUS_NO_MEMORY", STATUS_NO_MEMORY),
        ("CMA_STATUS_INVALID", STATUS_INVALID),
        ("CMA_STATUS_CANCELLED", STATUS_CANCELLED),
        ("CMA_STATUS_FAILED", STATUS_FAILED),
        ("CMA_CONFIG_MAGIC", AGENT_CONFIG_MAGIC),
        ("CMA_REGION_PRIVATE", REGION_PRIVATE),
    ] {
        c(k, v.into());
    }
    c("CMA_CONFIG_HEADER_SIZE", CONFIG_HEADER_SIZE as u64);
    c("CMA_REGION_RECORD_SIZE", REGION_RECORD_SIZE as u64);
    c("CMA_RECORD_NAME_SIZE", RECORD_NAME_SIZE as u64);
    c("CMA_MAX_REGIONS", MAX_REGIONS as u64);
    c("CMA_MAX_CONFIG_SIZE", MAX_CONFIG_SIZE as u64);
    c("CMA_EXIT_PORT", EXIT_PORT.into());
    c("CMA_PROGRESS_PORT", PROGRESS_PORT.into());
    c("CMA_PROGRESS_AGENT_UP", PROGRESS_AGENT_UP.into());
    c("CMA_PROGRESS_POPULATED", PROGRESS_POPULATED.into());
    e
}

#[test]
fn every_field_offset_size_and_constant_matches_the_protocol_crate() {
    let exe = build_program();
    let lines = run_program(&exe, &["layout".to_string()]);
    let mut c_side = BTreeMap::new();
    for line in lines.iter().take_while(|l| *l != "end") {
        let (name, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let value: u64 = value.parse().expect("a number");
        assert!(
            c_side.insert(name.to_string(), value).is_none(),
            "{name} printed twice"
        );
    }
    let expected = expected_layout();
    let mut mismatches = Vec::new();
    for (name, want) in &expected {
        match c_side.get(name) {
            Some(got) if got == want => {}
            Some(got) => mismatches.push(format!(
                "{name}: the C header says {got}, the protocol crate {want}"
            )),
            None => mismatches.push(format!("{name}: the C program does not print it")),
        }
    }
    for name in c_side.keys().filter(|k| !expected.contains_key(*k)) {
        mismatches.push(format!(
            "{name}: printed by the C program, not checked by this test"
        ));
    }
    assert!(
        mismatches.is_empty(),
        "guest-linux/cma_agent_proto.h disagrees with the protocol crate:\n  {}",
        mismatches.join("\n  ")
    );
}

#[test]
fn host_messages_the_vmm_encodes_decode_in_c() {
    let big = u64::MAX - 0x1234;
    let msgs = [
        HostMsg::Evict {
            req: 1,
            gpa: 0x2000_0000,
            len: 0x40_0000,
            flags: EVICT_HOST_COPY,
        },
        HostMsg::Evict {
            req: big,
            gpa: big - 1,
            len: big - 2,
            flags: 0,
        },
        HostMsg::Return {
            req: 2,
            gpa: 0x2800_0000,
            len: 0x1000,
        },
        HostMsg::Return {
            req: big,
            gpa: 7 << 40,
            len: 3 << 33,
        },
        HostMsg::Cancel { req: 3, target: 1 },
        HostMsg::Cancel {
            req: 4,
            target: big,
        },
        HostMsg::Query {
            req: 5,
            flags: QUERY_QUIESCE | QUERY_RESUME,
        },
        HostMsg::Query {
            req: 6,
            flags: u32::MAX,
        },
        HostMsg::Probe {
            req: 7,
            gpa: 0x2000_0008,
        },
        HostMsg::Probe {
            req: 8,
            gpa: u64::MAX,
        },
        HostMsg::Shutdown { req: 9 },
        HostMsg::Shutdown { req: big },
    ];
    let commands: Vec<String> = msgs
        .iter()
        .map(|m| format!("host {}", hex(&m.encode())))
        .collect();
    let got = run_program(&build_program(), &commands);
    assert_eq!(got.len(), msgs.len(), "one answer per record: {got:?}");
    for (m, line) in msgs.iter().zip(&got) {
        let want = match *m {
            HostMsg::Evict {
                req,
                gpa,
                len,
                flags,
            } => {
                format!("evict req={req} gpa={gpa} len={len} flags={flags}")
            }
            HostMsg::Return { req, gpa, len } => format!("return req={req} gpa={gpa} len={len}"),
            HostMsg::Cancel { req, target } => format!("cancel req={req} target={target}"),
            HostMsg::Query { req, flags } => format!("query req={req} flags={flags}"),
            HostMsg::Probe { req, gpa } => format!("probe req={req} gpa={gpa}"),
            HostMsg::Shutdown { req } => format!("shutdown req={req}"),
        };
        assert_eq!(line, &want, "{m:?} read through the C header");
    }
}

/// A status as the two words of the wire: (code, detail).
fn status_words(s: Status) -> (u32, u64) {
    match s {
        Status::Done => (STATUS_DONE, 0),
        Status::Busy { first_busy } => (STATUS_BUSY, first_busy),
        Status::NoMemory => (STATUS_NO_MEMORY, 0),
        Status::Invalid => (STATUS_INVALID, 0),
        Status::Cancelled => (STATUS_CANCELLED, 0),
        Status::Failed { code } => (STATUS_FAILED, code),
    }
}

#[test]
fn guest_messages_encoded_in_c_decode_in_rust_byte_for_byte() {
    let big = u64::MAX - 0x77;
    let msgs = [
        GuestMsg::Hello {
            version: AGENT_VERSION,
            features: 0,
        },
        GuestMsg::Hello {
            version: u32::MAX,
            features: big,
        },
        GuestMsg::Evicted {
            req: 1,
            status: Status::Done,
            migrated: 16384,
        },
        GuestMsg::Evicted {
            req: 2,
            status: Status::Busy {
                first_busy: 0x2200_0000,
            },
            migrated: 3,
        },
        GuestMsg::Evicted {
            req: 3,
            status: Status::NoMemory,
            migrated: big,
        },
        GuestMsg::Evicted {
            req: 4,
            status: Status::Invalid,
            migrated: 0,
        },
        GuestMsg::Evicted {
            req: big,
            status: Status::Failed { code: 4 },
            migrated: 1,
        },
        GuestMsg::Returned {
            req: 5,
            status: Status::Done,
        },
        GuestMsg::Returned {
            req: 6,
            status: Status::Invalid,
        },
        GuestMsg::Returned {
            req: 7,
            status: Status::Cancelled,
        },
        GuestMsg::Migrate {
            req: 8,
            count: MAX_MIGRATE_PAIRS as u32,
        },
        GuestMsg::Report {
            req: 9,
            report: Report {
                manifest_gpa: 0,
                manifest_len: 0,
                pages_present: 61_000,
                pages_pinned: 1,
                free_pages: 4000,
                pages_migrated: big,
            },
        },
        GuestMsg::Cancelled {
            req: 10,
            target: 9,
            status: Status::Done,
        },
        GuestMsg::Cancelled {
            req: 11,
            target: big,
            status: Status::Failed { code: 19 },
        },
        GuestMsg::Probed {
            req: 12,
            value: u64::MAX,
        },
        GuestMsg::Probed {
            req: 13,
            value: 0x0123_4567_89ab_cdef,
        },
    ];
    let commands: Vec<String> = msgs
        .iter()
        .map(|m| match *m {
            GuestMsg::Hello { version, features } => format!("hello {version} {features}"),
            GuestMsg::Evicted {
                req,
                status,
                migrated,
            } => {
                let (code, detail) = status_words(status);
                format!("evicted {req} {code} {detail} {migrated}")
            }
            GuestMsg::Returned { req, status } => {
                let (code, detail) = status_words(status);
                format!("returned {req} {code} {detail}")
            }
            GuestMsg::Migrate { req, count } => format!("migrate {req} {count}"),
            GuestMsg::Report { req, report: r } => format!(
                "report {req} {} {} {} {} {} {}",
                r.manifest_gpa,
                r.manifest_len,
                r.pages_present,
                r.pages_pinned,
                r.free_pages,
                r.pages_migrated
            ),
            GuestMsg::Cancelled {
                req,
                target,
                status,
            } => {
                let (code, detail) = status_words(status);
                format!("cancelled {req} {target} {code} {detail}")
            }
            GuestMsg::Probed { req, value } => format!("probed {req} {value}"),
        })
        .collect();
    let got = run_program(&build_program(), &commands);
    assert_eq!(got.len(), msgs.len(), "one record per message: {got:?}");
    for (m, line) in msgs.iter().zip(&got) {
        let bytes = unhex(line);
        assert_eq!(
            bytes.len(),
            MSG_SIZE,
            "{m:?}: the C record is {} bytes",
            bytes.len()
        );
        assert_eq!(
            GuestMsg::decode(&bytes),
            Ok(*m),
            "{m:?} written through the C header"
        );
        assert_eq!(
            bytes,
            m.encode().to_vec(),
            "{m:?}: the C record differs from the Rust encoding (unused words must be zero)"
        );
    }
}

#[test]
fn acks_pairs_and_the_config_space_cross_both_ways() {
    let acks = [
        Ack {
            status: Status::Done,
            done: 0,
        },
        Ack {
            status: Status::Invalid,
            done: 17,
        },
        Ack {
            status: Status::Busy {
                first_busy: 0x2000_1000,
            },
            done: u32::MAX,
        },
        Ack {
            status: Status::Failed { code: u64::MAX },
            done: 1,
        },
    ];
    let pairs = [
        MigratePair {
            src: 0x2000_0000,
            dst: 0x1000,
        },
        MigratePair {
            src: u64::MAX,
            dst: u64::MAX - 1,
        },
    ];
    let name = |s| Name::new(s).unwrap();
    let regions = [
        RegionDesc {
            base: 0x2000_0000,
            size: 128 << 20,
            id: 0,
            flags: 0,
            name: name("a"),
        },
        RegionDesc {
            base: 0x1_0000_0000,
            size: 1 << 30,
            id: 7,
            flags: REGION_PRIVATE,
            name: name("a23-characters-long-nam"),
        },
        RegionDesc {
            base: 0x2800_0000,
            size: 128 << 20,
            id: 2,
            flags: 0,
            name: name("cam.1_x-y"),
        },
    ];
    let mut config = [0u8; MAX_CONFIG_SIZE];
    let config_len = encode_config(&regions, &mut config);

    let mut commands: Vec<String> = acks
        .iter()
        .map(|a| format!("ack {}", hex(&a.encode())))
        .collect();
    commands.extend(acks.iter().map(|a| {
        let (code, detail) = status_words(a.status);
        format!("ackenc {code} {} {detail}", a.done)
    }));
    commands.extend(pairs.iter().map(|p| format!("pair {} {}", p.src, p.dst)));
    commands.push(format!("config {}", hex(&config[..config_len])));
    let got = run_program(&build_program(), &commands);
    assert_eq!(got.len(), commands.len(), "one answer per command: {got:?}");
    let mut answers = got.iter();

    for a in &acks {
        let (code, detail) = status_words(a.status);
        assert_eq!(
            answers.next().unwrap(),
            &format!("ack status={code} done={} detail={detail}", a.done),
            "{a:?} read through the C header"
        );
    }
    for a in &acks {
        let bytes = unhex(answers.next().unwrap());
        assert_eq!(
            Ack::decode(&bytes),
            Ok(*a),
            "{a:?} written through the C header"
        );
        assert_eq!(bytes, a.encode().to_vec(), "{a:?}: C and Rust bytes differ");
    }
    for p in &pairs {
        let bytes = unhex(answers.next().unwrap());
        assert_eq!(
            MigratePair::decode(&bytes, 0),
            Ok(*p),
            "{p:?} written through the C header"
        );
    }
    let mut want = format!(
        "config magic={AGENT_CONFIG_MAGIC} version={AGENT_VERSION} count={} record_size={REGION_RECORD_SIZE}",
        regions.len()
    );
    for r in &regions {
        want += &format!(
            " [base={} size={} id={} flags={} name={}]",
            r.base,
            r.size,
            r.id,
            r.flags,
            r.name.as_str()
        );
    }
    assert_eq!(
        answers.next().unwrap(),
        &want,
        "the config space read through the C header"
    );
}
