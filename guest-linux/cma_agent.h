/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cma_agent: the Linux guest agent of cma-vmm. Internal declarations shared by
 *
 *   main.c     the virtio driver: probe/remove, the request worker, one handler per
 *              message kind, the answers
 *   channel.c  the two virtqueues: hostq receive buffers, guestq sends and acks
 *   memory.c   the lent regions: config space, hot-add to ZONE_MOVABLE, eviction with
 *              alloc_contig_range(), return, cancel, pins, the in-guest benchmark
 *   sysfs.c    /sys/kernel/cma_agent/
 *
 * Locking:
 *   hostq_lock   hostq and the ring of received buffers (taken in the vq callback, hardirq)
 *   guestq_lock  guestq (sends from the worker, completions in the vq callback)
 *   op_lock      every operation on guest memory: Evict, Return, Cancel, Query's scan,
 *                pin/unpin, bench; the request worker is an ordered workqueue, and the
 *                sysfs knobs take the same mutex, so they are serialised with it
 *   kobj_lock    the sysfs directory's lifetime against the worker's notifications
 */
#ifndef CMA_AGENT_H
#define CMA_AGENT_H

#include <linux/atomic.h>
#include <linux/kobject.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "cma_agent_proto.h"

#define CMA_AGENT_NAME "cma_agent"
/* The resource name of hot-added lent memory ("System RAM (driver)" is required). */
#define CMA_RESOURCE_NAME "System RAM (cma_agent)"

enum cma_region_state {
	CMA_REGION_PRIVATE_STATE,	/* never lent: not ours to touch */
	CMA_REGION_PENDING,		/* lent, not (yet) added */
	CMA_REGION_MOVABLE,		/* lent, added, every page online in ZONE_MOVABLE */
	CMA_REGION_REFUSED,		/* lent, unusable: see why */
	CMA_REGION_REMOVED,		/* was movable, offlined and removed on unbind */
};

struct cma_region {
	u64 base;
	u64 size;
	u32 id;
	u32 flags;
	char name[CMA_RECORD_NAME_SIZE];
	enum cma_region_state state;
	char why[256];
	/* We added it (or adopted it, already there and movable) and it is still there. */
	bool added;
	/* add_memory_driver_managed() is running: the notifier vets the zone of each block. */
	bool adding;
	/* The zone the kernel tried to online a block into, when it was not ZONE_MOVABLE. */
	const char *vetoed_zone;
	/* Our own offline_and_remove_memory() is running: the notifier lets it through. */
	bool offlining;
	/* Pages held for the VMM, pages pinned by the test knob (read by the notifier). */
	atomic64_t held_pages;
	atomic_t pins;
};

/* A range taken for the VMM by a Done Evict (or what is left of it after Returns). */
struct cma_held {
	struct list_head node;
	unsigned long pfn;
	unsigned long nr;
	u64 req;			/* the Evict that took it, for Cancel */
	struct cma_region *region;
};

/* A page pinned through sysfs (an extra folio reference, as a GUP pin would hold). */
struct cma_pin {
	struct list_head node;
	unsigned long pfn;
	struct folio *folio;
	struct cma_region *region;
};

struct cma_bench_result {
	bool valid;
	int ret;
	u64 ns;
	u64 in_use_before;
	u64 migrated;
};

struct cma_stats {
	atomic64_t requests;
	atomic64_t evict_ok;
	atomic64_t evict_busy;
	atomic64_t evict_nomem;
	atomic64_t evict_invalid;
	atomic64_t evict_failed;
	atomic64_t returns_ok;
	atomic64_t returns_invalid;
	atomic64_t cancels;
	atomic64_t cancels_undone;
	atomic64_t queries;
	atomic64_t probes;
	atomic64_t shutdowns;
	atomic64_t pages_migrated;
	atomic64_t last_evict_ns;
	atomic64_t last_evict_pages;
	atomic64_t total_evict_ns;
	atomic64_t bad_messages;
	atomic64_t send_failures;
	atomic64_t acks_not_done;
};

/* A received hostq buffer waiting for the worker. */
struct cma_pending {
	void *buf;
	unsigned int len;
};

struct cma_agent {
	struct virtio_device *vdev;

	/* channel.c */
	struct virtqueue *hostq;
	struct virtqueue *guestq;
	spinlock_t hostq_lock;
	spinlock_t guestq_lock;
	u8 *hostq_bufs;			/* CMA_QUEUE_SIZE buffers of CMA_MSG_SIZE */
	struct cma_pending pending[CMA_QUEUE_SIZE];
	unsigned int pending_head;
	unsigned int pending_count;
	bool stopping;			/* under hostq_lock: no more work is queued */
	wait_queue_head_t guestq_wait;
	atomic_t guestq_outstanding;

	/* main.c */
	struct workqueue_struct *wq;
	struct work_struct req_work;
	bool refusing;			/* unbinding: answer every request with a failure */
	atomic_t shutdown;

	/* memory.c */
	struct mutex op_lock;
	struct cma_region regions[CMA_MAX_REGIONS];
	unsigned int nr_regions;
	struct list_head held;		/* struct cma_held, under op_lock */
	struct list_head pins;		/* struct cma_pin, under op_lock */
	unsigned long *vm_events;	/* all_vm_events() scratch, under op_lock */
	struct notifier_block memory_nb;
	bool notifier_registered;
	/*
	 * The name of our "System RAM (cma_agent)" resources. The resource tree keeps the
	 * pointer, so it must outlive the module whenever a region stays added after unbind.
	 */
	char *resource_name;
	struct cma_bench_result bench;	/* under op_lock */

	struct cma_stats stats;
	struct mutex kobj_lock;		/* a->kobj against the worker's sysfs_notify() */
	struct kobject *kobj;
};

/* channel.c */
int cma_channel_init(struct cma_agent *a);
void cma_channel_start(struct cma_agent *a);
int cma_send(struct cma_agent *a, const union cma_wire_msg *msg);
bool cma_channel_take(struct cma_agent *a, union cma_wire_msg *msg, bool *valid);
void cma_channel_drain(struct cma_agent *a, unsigned int timeout_ms);
void cma_channel_stop(struct cma_agent *a);

/* memory.c */
int cma_memory_init(struct cma_agent *a);
int cma_regions_read(struct cma_agent *a);
void cma_regions_add(struct cma_agent *a);
void cma_memory_teardown(struct cma_agent *a);
void cma_evict(struct cma_agent *a, u64 req, u64 gpa, u64 len, union cma_wire_msg *ans);
void cma_return(struct cma_agent *a, u64 req, u64 gpa, u64 len, union cma_wire_msg *ans);
void cma_cancel(struct cma_agent *a, u64 req, u64 target, union cma_wire_msg *ans);
void cma_report(struct cma_agent *a, u64 req, union cma_wire_msg *ans);
u64 cma_probe_read(struct cma_agent *a, u64 gpa);
int cma_pin(struct cma_agent *a, const char *region, u64 offset, u64 *gpa);
int cma_unpin(struct cma_agent *a, bool all, u64 gpa);
int cma_bench(struct cma_agent *a, const char *region, u64 offset, u64 size);
u64 cma_held_pages(struct cma_agent *a);
const char *cma_region_state_name(const struct cma_region *r);

/* sysfs.c */
int cma_sysfs_init(struct cma_agent *a);
void cma_sysfs_exit(struct cma_agent *a);
void cma_sysfs_notify_shutdown(struct cma_agent *a);

/* main.c: answers */
void cma_answer_evicted(union cma_wire_msg *m, u64 req, u32 status, u64 detail,
			u64 migrated);
void cma_answer_returned(union cma_wire_msg *m, u64 req, u32 status, u64 detail);
void cma_answer_cancelled(union cma_wire_msg *m, u64 req, u64 target, u32 status,
			  u64 detail);

#endif /* CMA_AGENT_H */
