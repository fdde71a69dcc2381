/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The agent channel's wire formats, as C sees them: the one C description of the Rust
 * `protocol` crate (protocol/src/msg.rs, protocol/src/agent_config.rs,
 * protocol/src/layout.rs). tests/tests/linux_protocol.rs compiles this header with gcc in
 * userspace and checks every offset, size and constant below against the crate, and
 * round-trips real records through these structs: change both sides together.
 *
 * Everything is little-endian and packed.
 *
 *   message record (64 bytes), both directions
 *     0  u32 kind          CMA_KIND_*
 *     4  u32 word          status (answers), flags (Evict, Query), version (Hello),
 *                          count (Migrate); zero otherwise
 *     8  u64 req           request id
 *    16  u64 arg[6]        per kind, unused ones zero
 *
 *   ack (16 bytes), written by the VMM into the writable end of every guestq chain
 *     0  u32 status, 4  u32 done, 8  u64 detail
 *
 *   configuration space (virtio config offset 0): a 16-byte header, then `count`
 *   region records of 48 bytes
 */
#ifndef CMA_AGENT_PROTO_H
#define CMA_AGENT_PROTO_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/build_bug.h>
#define CMA_PACKED __packed
#define CMA_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#include <stdint.h>
#ifndef _LINUX_TYPES_H
/* Plain userspace C: the kernel's endian-annotated types are ordinary integers. */
typedef uint32_t __le32;
typedef uint64_t __le64;
#endif
#define CMA_PACKED __attribute__((packed))
#define CMA_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ---- the device ------------------------------------------------------------------ */

/* virtio device id of the agent device (the VMM's AGENT_DEVICE_ID). */
#define CMA_AGENT_DEVICE_ID 0x4341
/* Both queues have this many entries. */
#define CMA_QUEUE_SIZE 16
/* Queue 0: the VMM's requests, in device-writable 64-byte buffers the guest posts. */
#define CMA_HOSTQ 0
/* Queue 1: the guest's messages: [GuestMsg 64][payload, Migrate only][Ack 16, writable]. */
#define CMA_GUESTQ 1

/* ---- messages (protocol/src/msg.rs) --------------------------------------------- */

#define CMA_MSG_SIZE 64
#define CMA_ACK_SIZE 16
#define CMA_MIGRATE_PAIR_SIZE 16
#define CMA_MAX_MIGRATE_PAIRS 4096
#define CMA_AGENT_VERSION 1

/* Evict flag: the VMM offers to copy pages (Migrate); a Linux guest migrates itself. */
#define CMA_EVICT_HOST_COPY 1
/* Query flags: stop / resume the workload (the reference guest's; Linux ignores them). */
#define CMA_QUERY_QUIESCE 1
#define CMA_QUERY_RESUME 2

/* Kinds, VMM -> guest. */
#define CMA_KIND_EVICT 0x101
#define CMA_KIND_RETURN 0x102
#define CMA_KIND_CANCEL 0x103
#define CMA_KIND_QUERY 0x104
#define CMA_KIND_PROBE 0x105
#define CMA_KIND_SHUTDOWN 0x106
/* Kinds, guest -> VMM. */
#define CMA_KIND_HELLO 0x201
#define CMA_KIND_EVICTED 0x202
#define CMA_KIND_RETURNED 0x203
#define CMA_KIND_MIGRATE 0x204
#define CMA_KIND_REPORT 0x205
#define CMA_KIND_CANCELLED 0x206
#define CMA_KIND_PROBED 0x207

/* Status codes; the detail word is the first busy address (Busy) or the code (Failed). */
#define CMA_STATUS_DONE 0
#define CMA_STATUS_BUSY 1
#define CMA_STATUS_NO_MEMORY 2
#define CMA_STATUS_INVALID 3
#define CMA_STATUS_CANCELLED 4
#define CMA_STATUS_FAILED 5

/* The common part of every record. */
struct cma_msg_hdr {
	__le32 kind;
	__le32 word;
	__le64 req;
} CMA_PACKED;

/* Any record, undecoded. */
struct cma_msg {
	struct cma_msg_hdr hdr;
	__le64 arg[6];
} CMA_PACKED;

/* VMM -> guest. */
struct cma_msg_evict {		/* word = flags */
	struct cma_msg_hdr hdr;
	__le64 gpa;
	__le64 len;
	__le64 unused[4];
} CMA_PACKED;

struct cma_msg_return {
	struct cma_msg_hdr hdr;
	__le64 gpa;
	__le64 len;
	__le64 unused[4];
} CMA_PACKED;

struct cma_msg_cancel {
	struct cma_msg_hdr hdr;
	__le64 target;
	__le64 unused[5];
} CMA_PACKED;

struct cma_msg_query {		/* word = flags */
	struct cma_msg_hdr hdr;
	__le64 unused[6];
} CMA_PACKED;

struct cma_msg_probe {
	struct cma_msg_hdr hdr;
	__le64 gpa;
	__le64 unused[5];
} CMA_PACKED;

struct cma_msg_shutdown {
	struct cma_msg_hdr hdr;
	__le64 unused[6];
} CMA_PACKED;

/* Guest -> VMM. */
struct cma_msg_hello {		/* word = version, req = 0 */
	struct cma_msg_hdr hdr;
	__le64 features;
	__le64 unused[5];
} CMA_PACKED;

struct cma_msg_evicted {	/* word = status */
	struct cma_msg_hdr hdr;
	__le64 detail;
	__le64 migrated;
	__le64 unused[4];
} CMA_PACKED;

struct cma_msg_returned {	/* word = status */
	struct cma_msg_hdr hdr;
	__le64 detail;
	__le64 unused[5];
} CMA_PACKED;

struct cma_msg_migrate {	/* word = count of pairs in the payload */
	struct cma_msg_hdr hdr;
	__le64 unused[6];
} CMA_PACKED;

struct cma_msg_report {
	struct cma_msg_hdr hdr;
	__le64 manifest_gpa;
	__le64 manifest_len;
	__le64 pages_present;
	__le64 pages_pinned;
	__le64 free_pages;
	__le64 pages_migrated;
} CMA_PACKED;

struct cma_msg_cancelled {	/* word = status */
	struct cma_msg_hdr hdr;
	__le64 target;
	__le64 detail;
	__le64 unused[4];
} CMA_PACKED;

struct cma_msg_probed {
	struct cma_msg_hdr hdr;
	__le64 value;
	__le64 unused[5];
} CMA_PACKED;

/* One record, seen as any of the kinds. */
union cma_wire_msg {
	struct cma_msg raw;
	struct cma_msg_hdr hdr;
	struct cma_msg_evict evict;
	struct cma_msg_return ret;
	struct cma_msg_cancel cancel;
	struct cma_msg_query query;
	struct cma_msg_probe probe;
	struct cma_msg_shutdown shutdown;
	struct cma_msg_hello hello;
	struct cma_msg_evicted evicted;
	struct cma_msg_returned returned;
	struct cma_msg_migrate migrate;
	struct cma_msg_report report;
	struct cma_msg_cancelled cancelled;
	struct cma_msg_probed probed;
	unsigned char bytes[CMA_MSG_SIZE];
};

/* The VMM's acknowledgement of a guestq chain. */
struct cma_ack {
	__le32 status;
	__le32 done;
	__le64 detail;
} CMA_PACKED;

/* One page copy of a Migrate payload (the reference guest's; Linux never sends one). */
struct cma_migrate_pair {
	__le64 src;
	__le64 dst;
} CMA_PACKED;

/* ---- configuration space (protocol/src/agent_config.rs) ------------------------- */

/* "CMAC" read as a little-endian u32. */
#define CMA_CONFIG_MAGIC 0x43414d43u
#define CMA_CONFIG_HEADER_SIZE 16
#define CMA_REGION_RECORD_SIZE 48
/* A name of at most 23 bytes and at least one NUL. */
#define CMA_RECORD_NAME_SIZE 24
#define CMA_MAX_REGIONS 16
#define CMA_MAX_CONFIG_SIZE (CMA_CONFIG_HEADER_SIZE + CMA_MAX_REGIONS * CMA_REGION_RECORD_SIZE)
/* Region flag: private, never lent; the guest must not touch it. */
#define CMA_REGION_PRIVATE 1

struct cma_config_hdr {
	__le32 magic;
	__le32 version;
	__le32 count;
	__le32 record_size;
} CMA_PACKED;

struct cma_config_region {
	__le64 base;
	__le64 size;
	__le32 id;
	__le32 flags;
	char name[CMA_RECORD_NAME_SIZE];
} CMA_PACKED;

/* ---- platform ports (protocol/src/layout.rs) ------------------------------------ */

/* A 32-bit write ends the run with that status. */
#define CMA_EXIT_PORT 0xf4
/* A byte written here is a boot milestone, timestamped by the VMM. */
#define CMA_PROGRESS_PORT 0xf8
#define CMA_PROGRESS_AGENT_UP 3
/* "Lent memory populated": what `cma-vmm ctl wait` waits for. */
#define CMA_PROGRESS_POPULATED 4

CMA_STATIC_ASSERT(sizeof(struct cma_msg_hdr) == 16, "message header");
CMA_STATIC_ASSERT(sizeof(struct cma_msg) == CMA_MSG_SIZE, "message record");
CMA_STATIC_ASSERT(sizeof(union cma_wire_msg) == CMA_MSG_SIZE, "message union");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_evict) == CMA_MSG_SIZE, "evict");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_return) == CMA_MSG_SIZE, "return");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_cancel) == CMA_MSG_SIZE, "cancel");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_query) == CMA_MSG_SIZE, "query");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_probe) == CMA_MSG_SIZE, "probe");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_shutdown) == CMA_MSG_SIZE, "shutdown");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_hello) == CMA_MSG_SIZE, "hello");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_evicted) == CMA_MSG_SIZE, "evicted");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_returned) == CMA_MSG_SIZE, "returned");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_migrate) == CMA_MSG_SIZE, "migrate");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_report) == CMA_MSG_SIZE, "report");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_cancelled) == CMA_MSG_SIZE, "cancelled");
CMA_STATIC_ASSERT(sizeof(struct cma_msg_probed) == CMA_MSG_SIZE, "probed");
CMA_STATIC_ASSERT(sizeof(struct cma_ack) == CMA_ACK_SIZE, "ack");
CMA_STATIC_ASSERT(sizeof(struct cma_migrate_pair) == CMA_MIGRATE_PAIR_SIZE, "migrate pair");
CMA_STATIC_ASSERT(sizeof(struct cma_config_hdr) == CMA_CONFIG_HEADER_SIZE, "config header");
CMA_STATIC_ASSERT(sizeof(struct cma_config_region) == CMA_REGION_RECORD_SIZE, "region record");

#endif /* CMA_AGENT_PROTO_H */
