// SPDX-License-Identifier: GPL-2.0
/*
 * The agent device's two virtqueues.
 *
 *  hostq   CMA_QUEUE_SIZE device-writable 64-byte buffers; the VMM writes one request
 *          into each. The vq callback (hardirq) only moves used buffers to a ring and
 *          queues the worker; the worker copies a request out and re-posts its buffer.
 *          A buffer is re-posted only once its request was taken, so the ring never
 *          holds more than the queue size and the VMM keeps further requests in its own
 *          bounded outbox: the flow control is the queue itself.
 *  guestq  each message is a chain [readable 64-byte message][writable 16-byte ack] in
 *          its own allocation; the vq callback checks the ack and frees it. Senders never
 *          wait for the ack, only for room in the ring (bounded), so a VMM that stops
 *          answering cannot hang the worker.
 */

#include <linux/kernel.h>
#include <linux/ratelimit.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "cma_agent.h"

/* How long a send may wait for room in guestq before the message is dropped. */
#define CMA_SEND_WAIT_MS 5000

struct cma_outbuf {
	union cma_wire_msg msg;
	struct cma_ack ack;
};

static void cma_hostq_done(struct virtqueue *vq)
{
	struct cma_agent *a = vq->vdev->priv;
	unsigned long flags;
	unsigned int len;
	bool queued = false;
	void *buf;

	spin_lock_irqsave(&a->hostq_lock, flags);
	if (a->stopping) {
		spin_unlock_irqrestore(&a->hostq_lock, flags);
		return;
	}
	while ((buf = virtqueue_get_buf(vq, &len))) {
		unsigned int slot;

		/* Only CMA_QUEUE_SIZE buffers exist, each in the ring at most once. */
		if (WARN_ON_ONCE(a->pending_count >= CMA_QUEUE_SIZE))
			break;
		slot = (a->pending_head + a->pending_count) % CMA_QUEUE_SIZE;
		a->pending[slot].buf = buf;
		a->pending[slot].len = len;
		a->pending_count++;
		queued = true;
	}
	if (queued)
		queue_work(a->wq, &a->req_work);
	spin_unlock_irqrestore(&a->hostq_lock, flags);
}

static void cma_guestq_done(struct virtqueue *vq)
{
	struct cma_agent *a = vq->vdev->priv;
	struct cma_outbuf *ob;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&a->guestq_lock, flags);
	if (!a->stopping) {
		while ((ob = virtqueue_get_buf(vq, &len))) {
			if (len < CMA_ACK_SIZE ||
			    le32_to_cpu(ob->ack.status) != CMA_STATUS_DONE)
				atomic64_inc(&a->stats.acks_not_done);
			kfree(ob);
			atomic_dec(&a->guestq_outstanding);
		}
	}
	spin_unlock_irqrestore(&a->guestq_lock, flags);
	wake_up(&a->guestq_wait);
}

/* Post (or re-post) one hostq buffer; the caller holds hostq_lock. */
static int cma_post_hostq_locked(struct cma_agent *a, void *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, CMA_MSG_SIZE);
	return virtqueue_add_inbuf(a->hostq, &sg, 1, buf, GFP_ATOMIC);
}

int cma_channel_init(struct cma_agent *a)
{
	struct virtio_device *vdev = a->vdev;
	struct virtqueue *vqs[2];
	unsigned long flags;
	unsigned int i;
	int err;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	struct virtqueue_info info[2] = {
		{ .name = "hostq", .callback = cma_hostq_done },
		{ .name = "guestq", .callback = cma_guestq_done },
	};
#else
	vq_callback_t *callbacks[2] = { cma_hostq_done, cma_guestq_done };
	static const char * const names[2] = { "hostq", "guestq" };
#endif

	spin_lock_init(&a->hostq_lock);
	spin_lock_init(&a->guestq_lock);
	init_waitqueue_head(&a->guestq_wait);
	atomic_set(&a->guestq_outstanding, 0);

	a->hostq_bufs = kcalloc(CMA_QUEUE_SIZE, CMA_MSG_SIZE, GFP_KERNEL);
	if (!a->hostq_bufs)
		return -ENOMEM;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
	err = virtio_find_vqs(vdev, 2, vqs, info, NULL);
#else
	err = virtio_find_vqs(vdev, 2, vqs, callbacks, names, NULL);
#endif
	if (err) {
		dev_err(&vdev->dev, "cannot set up the two virtqueues: %d\n", err);
		kfree(a->hostq_bufs);
		a->hostq_bufs = NULL;
		return err;
	}
	a->hostq = vqs[CMA_HOSTQ];
	a->guestq = vqs[CMA_GUESTQ];
	if (virtqueue_get_vring_size(a->hostq) < CMA_QUEUE_SIZE ||
	    virtqueue_get_vring_size(a->guestq) < 2) {
		dev_err(&vdev->dev, "virtqueues too small (%u, %u entries)\n",
			virtqueue_get_vring_size(a->hostq),
			virtqueue_get_vring_size(a->guestq));
		err = -EINVAL;
		goto fail;
	}

	spin_lock_irqsave(&a->hostq_lock, flags);
	for (i = 0; i < CMA_QUEUE_SIZE && !err; i++)
		err = cma_post_hostq_locked(a, a->hostq_bufs + i * CMA_MSG_SIZE);
	spin_unlock_irqrestore(&a->hostq_lock, flags);
	if (err) {
		dev_err(&vdev->dev, "cannot post the request buffers: %d\n", err);
		goto fail;
	}
	return 0;

fail:
	vdev->config->del_vqs(vdev);
	kfree(a->hostq_bufs);
	a->hostq_bufs = NULL;
	return err;
}

/* After virtio_device_ready(): tell the device the request buffers are there. */
void cma_channel_start(struct cma_agent *a)
{
	virtqueue_kick(a->hostq);
}

/*
 * Take the next request the VMM wrote, if any; its buffer goes back to the device at once.
 * *valid is false for a buffer the VMM filled with fewer than 64 bytes.
 */
bool cma_channel_take(struct cma_agent *a, union cma_wire_msg *msg, bool *valid)
{
	struct cma_pending p;
	bool kick = false;
	unsigned long flags;
	int err = 0;

	spin_lock_irqsave(&a->hostq_lock, flags);
	if (a->stopping || !a->pending_count) {
		spin_unlock_irqrestore(&a->hostq_lock, flags);
		return false;
	}
	p = a->pending[a->pending_head];
	a->pending_head = (a->pending_head + 1) % CMA_QUEUE_SIZE;
	a->pending_count--;
	*valid = p.len >= CMA_MSG_SIZE;
	memcpy(msg->bytes, p.buf, CMA_MSG_SIZE);
	memset(p.buf, 0, CMA_MSG_SIZE);
	err = cma_post_hostq_locked(a, p.buf);
	if (!err)
		kick = virtqueue_kick_prepare(a->hostq);
	spin_unlock_irqrestore(&a->hostq_lock, flags);
	if (kick)
		virtqueue_notify(a->hostq);
	if (err)
		dev_err_ratelimited(&a->vdev->dev, "cannot re-post a request buffer: %d\n", err);
	return true;
}

/*
 * Send one message to the VMM. Waits (bounded) only for room in guestq; the ack is
 * checked by the completion callback. 0, or an error after which the message is dropped.
 */
int cma_send(struct cma_agent *a, const union cma_wire_msg *msg)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(CMA_SEND_WAIT_MS);
	struct scatterlist out, in, *sgs[2];
	struct cma_outbuf *ob;
	unsigned long flags;
	bool kick = false;
	int err;

	ob = kmalloc(sizeof(*ob), GFP_KERNEL);
	if (!ob) {
		atomic64_inc(&a->stats.send_failures);
		return -ENOMEM;
	}
	ob->msg = *msg;
	memset(&ob->ack, 0, sizeof(ob->ack));
	sg_init_one(&out, &ob->msg, CMA_MSG_SIZE);
	sg_init_one(&in, &ob->ack, CMA_ACK_SIZE);
	sgs[0] = &out;
	sgs[1] = &in;

	for (;;) {
		spin_lock_irqsave(&a->guestq_lock, flags);
		if (a->stopping) {
			err = -ESHUTDOWN;
		} else {
			err = virtqueue_add_sgs(a->guestq, sgs, 1, 1, ob, GFP_ATOMIC);
			if (!err) {
				atomic_inc(&a->guestq_outstanding);
				kick = virtqueue_kick_prepare(a->guestq);
			}
		}
		spin_unlock_irqrestore(&a->guestq_lock, flags);
		if (err != -ENOSPC || time_after(jiffies, deadline))
			break;
		/* The ring is full of unacknowledged messages: wait for the VMM, a bit. */
		wait_event_timeout(a->guestq_wait,
				   atomic_read(&a->guestq_outstanding) < CMA_QUEUE_SIZE / 2,
				   HZ / 10);
	}
	if (kick)
		virtqueue_notify(a->guestq);
	if (err) {
		kfree(ob);
		atomic64_inc(&a->stats.send_failures);
		dev_err_ratelimited(&a->vdev->dev,
				    "dropped a message (kind %#x req %llu) to the VMM: %d\n",
				    le32_to_cpu(msg->hdr.kind), le64_to_cpu(msg->hdr.req), err);
	}
	return err;
}

/* Wait, at most timeout_ms, until the VMM has acknowledged every message sent. */
void cma_channel_drain(struct cma_agent *a, unsigned int timeout_ms)
{
	wait_event_timeout(a->guestq_wait, atomic_read(&a->guestq_outstanding) == 0,
			   msecs_to_jiffies(timeout_ms));
}

/* Reset the device and free the queues and every buffer still in them. */
void cma_channel_stop(struct cma_agent *a)
{
	struct virtio_device *vdev = a->vdev;
	unsigned long flags;
	void *buf;

	spin_lock_irqsave(&a->hostq_lock, flags);
	spin_lock(&a->guestq_lock);
	a->stopping = true;
	spin_unlock(&a->guestq_lock);
	spin_unlock_irqrestore(&a->hostq_lock, flags);

	/* The device stops using the rings; callbacks now see `stopping` and do nothing. */
	virtio_reset_device(vdev);

	spin_lock_irqsave(&a->hostq_lock, flags);
	while (virtqueue_detach_unused_buf(a->hostq))
		;	/* slices of hostq_bufs, freed below */
	a->pending_count = 0;
	spin_unlock_irqrestore(&a->hostq_lock, flags);

	spin_lock_irqsave(&a->guestq_lock, flags);
	while ((buf = virtqueue_detach_unused_buf(a->guestq))) {
		kfree(buf);
		atomic_dec(&a->guestq_outstanding);
	}
	spin_unlock_irqrestore(&a->guestq_lock, flags);

	vdev->config->del_vqs(vdev);
	kfree(a->hostq_bufs);
	a->hostq_bufs = NULL;
}
