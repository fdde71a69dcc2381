// SPDX-License-Identifier: GPL-2.0
/*
 * cma_agent: the Linux guest agent of cma-vmm, a KVM VMM with a hypervisor-level
 * Contiguous Memory Allocator.
 *
 * The VMM lends CMA regions of guest-physical memory to the guest and takes ranges back
 * when a device model needs contiguous memory. This driver binds the VMM's agent device
 * (virtio id 0x4341, virtio-mmio), hot-adds every lent region as driver-managed memory in
 * ZONE_MOVABLE, and serves the VMM's requests (protocol/src/msg.rs):
 *
 *   Evict{req, gpa, len}   alloc_contig_range() on exactly that range
 *                          -> Evicted{Done, migrated} | {Busy, first busy gpa} |
 *                             {NoMemory} | {Invalid} | {Failed, -errno}
 *   Return{req, gpa, len}  free_contig_range()       -> Returned{Done | Invalid}
 *   Cancel{req, target}    undo Evict target if done -> Cancelled{target, Done}
 *   Query{req}             statistics                -> Report
 *   Probe{req, gpa}        read a u64 as the guest sees it -> Probed{value}
 *   Shutdown{req}          recorded for the guest's init (sysfs `shutdown`); no answer
 *
 * Requests arrive on hostq, are handled one at a time, in order, by an ordered workqueue
 * (alloc_contig_range() sleeps and may take seconds), and answered on guestq. Every
 * request is untrusted input: anything malformed is counted, logged (rate-limited) and
 * dropped, never trusted.
 */

#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "cma_agent.h"

/* One agent device per guest: the sysfs directory and the ports are global. */
static DEFINE_MUTEX(cma_bind_lock);
static bool cma_bound;

static void cma_answer(union cma_wire_msg *m, u32 kind, u32 word, u64 req)
{
	memset(m, 0, sizeof(*m));
	m->hdr.kind = cpu_to_le32(kind);
	m->hdr.word = cpu_to_le32(word);
	m->hdr.req = cpu_to_le64(req);
}

void cma_answer_evicted(union cma_wire_msg *m, u64 req, u32 status, u64 detail,
			u64 migrated)
{
	cma_answer(m, CMA_KIND_EVICTED, status, req);
	m->evicted.detail = cpu_to_le64(detail);
	m->evicted.migrated = cpu_to_le64(migrated);
}

void cma_answer_returned(union cma_wire_msg *m, u64 req, u32 status, u64 detail)
{
	cma_answer(m, CMA_KIND_RETURNED, status, req);
	m->returned.detail = cpu_to_le64(detail);
}

void cma_answer_cancelled(union cma_wire_msg *m, u64 req, u64 target, u32 status,
			  u64 detail)
{
	cma_answer(m, CMA_KIND_CANCELLED, status, req);
	m->cancelled.target = cpu_to_le64(target);
	m->cancelled.detail = cpu_to_le64(detail);
}

static void cma_bad_message(struct cma_agent *a, const char *what, u32 kind)
{
	atomic64_inc(&a->stats.bad_messages);
	dev_warn_ratelimited(&a->vdev->dev, "dropped a request from the VMM: %s (kind %#x)\n",
			     what, kind);
}

/* Handle one request; the answer, if the kind has one, goes back on guestq. */
static void cma_handle(struct cma_agent *a, const union cma_wire_msg *msg)
{
	u32 kind = le32_to_cpu(msg->hdr.kind);
	u64 req = le64_to_cpu(msg->hdr.req);
	union cma_wire_msg ans;

	switch (kind) {
	case CMA_KIND_EVICT:
		if (READ_ONCE(a->refusing))
			/* Unbinding: take nothing new. */
			cma_answer_evicted(&ans, req, CMA_STATUS_FAILED, ENODEV, 0);
		else
			cma_evict(a, req, le64_to_cpu(msg->evict.gpa),
				  le64_to_cpu(msg->evict.len), &ans);
		break;
	case CMA_KIND_RETURN:
		cma_return(a, req, le64_to_cpu(msg->ret.gpa), le64_to_cpu(msg->ret.len), &ans);
		break;
	case CMA_KIND_CANCEL:
		cma_cancel(a, req, le64_to_cpu(msg->cancel.target), &ans);
		break;
	case CMA_KIND_QUERY:
		/* QUERY_QUIESCE / QUERY_RESUME steer the reference guest's workload; ours is
		 * userspace's, so the flags are ignored. */
		atomic64_inc(&a->stats.queries);
		cma_report(a, req, &ans);
		break;
	case CMA_KIND_PROBE:
		atomic64_inc(&a->stats.probes);
		cma_answer(&ans, CMA_KIND_PROBED, 0, req);
		ans.probed.value = cpu_to_le64(cma_probe_read(a, le64_to_cpu(msg->probe.gpa)));
		break;
	case CMA_KIND_SHUTDOWN:
		atomic64_inc(&a->stats.shutdowns);
		if (!atomic_xchg(&a->shutdown, 1))
			dev_info(&a->vdev->dev, "the VMM asks the guest to check its data and exit\n");
		cma_sysfs_notify_shutdown(a);
		return;
	default:
		cma_bad_message(a, "unknown kind", kind);
		return;
	}
	cma_send(a, &ans);
}

static void cma_req_work(struct work_struct *work)
{
	struct cma_agent *a = container_of(work, struct cma_agent, req_work);
	union cma_wire_msg msg;
	bool valid;

	while (cma_channel_take(a, &msg, &valid)) {
		atomic64_inc(&a->stats.requests);
		if (valid)
			cma_handle(a, &msg);
		else
			cma_bad_message(a, "shorter than 64 bytes", le32_to_cpu(msg.hdr.kind));
		cond_resched();
	}
}

static int cma_validate(struct virtio_device *vdev)
{
	if (!vdev->config->get) {
		dev_err(&vdev->dev, "the transport cannot read the config space\n");
		return -EINVAL;
	}
	return 0;
}

static void cma_free_agent(struct cma_agent *a)
{
	if (a->wq)
		destroy_workqueue(a->wq);
	kfree(a->vm_events);
	kfree(a);
}

static int cma_probe(struct virtio_device *vdev)
{
	union cma_wire_msg hello;
	struct cma_agent *a;
	unsigned int i, movable = 0;
	int err;

	mutex_lock(&cma_bind_lock);
	if (cma_bound) {
		mutex_unlock(&cma_bind_lock);
		dev_err(&vdev->dev, "a second agent device: only one per guest is supported\n");
		return -EBUSY;
	}
	cma_bound = true;
	mutex_unlock(&cma_bind_lock);

	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a) {
		err = -ENOMEM;
		goto unbind;
	}
	a->vdev = vdev;
	vdev->priv = a;
	INIT_WORK(&a->req_work, cma_req_work);

	err = cma_memory_init(a);
	if (err)
		goto free;
	err = cma_regions_read(a);
	if (err)
		goto teardown;
	a->wq = alloc_ordered_workqueue(CMA_AGENT_NAME, 0);
	if (!a->wq) {
		err = -ENOMEM;
		goto teardown;
	}
	err = cma_channel_init(a);
	if (err)
		goto teardown;
	err = cma_sysfs_init(a);
	if (err) {
		dev_err(&vdev->dev, "cannot create /sys/kernel/%s: %d\n", CMA_AGENT_NAME, err);
		goto stop;
	}

	/* The memory first: an Evict may follow our Hello at once. */
	cma_regions_add(a);

	virtio_device_ready(vdev);
	cma_channel_start(a);
	cma_answer(&hello, CMA_KIND_HELLO, CMA_AGENT_VERSION, 0);
	err = cma_send(a, &hello);
	if (err)
		dev_warn(&vdev->dev, "could not say Hello to the VMM: %d\n", err);
	outb(CMA_PROGRESS_AGENT_UP, CMA_PROGRESS_PORT);

	for (i = 0; i < a->nr_regions; i++)
		movable += a->regions[i].state == CMA_REGION_MOVABLE;
	dev_info(&vdev->dev, "cma-vmm agent up: %u regions, %u lent and movable; protocol version %u\n",
		 a->nr_regions, movable, CMA_AGENT_VERSION);
	return 0;

stop:
	cma_channel_stop(a);
teardown:
	cma_memory_teardown(a);
free:
	cma_free_agent(a);
	vdev->priv = NULL;
unbind:
	mutex_lock(&cma_bind_lock);
	cma_bound = false;
	mutex_unlock(&cma_bind_lock);
	return err;
}

/*
 * Unbind (rmmod, or the device going away). In order: no more sysfs knobs; Evicts that
 * are still queued are answered Failed (Returns and Cancels are still served: they only
 * give memory back); wait a little for the VMM to take the answers; reset the device;
 * then give the memory back to Linux where we can.
 */
static void cma_remove(struct virtio_device *vdev)
{
	struct cma_agent *a = vdev->priv;

	cma_sysfs_exit(a);
	WRITE_ONCE(a->refusing, true);
	flush_work(&a->req_work);
	cma_channel_drain(a, 2000);
	cma_channel_stop(a);
	cancel_work_sync(&a->req_work);
	cma_memory_teardown(a);
	dev_info(&vdev->dev, "cma-vmm agent down: %lld evictions, %lld returns served\n",
		 atomic64_read(&a->stats.evict_ok), atomic64_read(&a->stats.returns_ok));
	cma_free_agent(a);
	vdev->priv = NULL;

	mutex_lock(&cma_bind_lock);
	cma_bound = false;
	mutex_unlock(&cma_bind_lock);
}

static const struct virtio_device_id cma_id_table[] = {
	{ CMA_AGENT_DEVICE_ID, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, cma_id_table);

static struct virtio_driver cma_driver = {
	.driver.name = CMA_AGENT_NAME,
	.driver.owner = THIS_MODULE,
	.id_table = cma_id_table,
	/* No feature bits: the transport negotiates VIRTIO_F_VERSION_1 on its own. */
	.feature_table = NULL,
	.feature_table_size = 0,
	.validate = cma_validate,
	.probe = cma_probe,
	.remove = cma_remove,
};

module_virtio_driver(cma_driver);

MODULE_DESCRIPTION("cma-vmm guest agent: lends hypervisor CMA regions to Linux as ZONE_MOVABLE and evicts them on demand");
MODULE_AUTHOR("cma-vmm developers");
MODULE_LICENSE("GPL");
