// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/cma_agent/: what the guest's init script and the tests use.
 *
 *   regions    ro  one line per region: id name base size lent|private state
 *                  (state: pending, movable, private, removed, "refused: <reason>")
 *   stats      ro  "key value" lines
 *   milestone  wo  1..255: a boot milestone for the VMM (port 0xf8); 4 = lent memory
 *                  populated, which `cma-vmm ctl wait` waits for
 *   exit       wo  a u32: the VMM ends the run with that status (port 0xf4)
 *   shutdown   ro  0, or 1 once the VMM sent Shutdown (pollable)
 *   pin        wo  "REGION OFFSET": an extra reference on the first in-use page at or
 *                  after region base + OFFSET (a model of a GUP pin on page cache)
 *   pinned     ro  the pinned pages' guest-physical addresses, one per line
 *   unpin      wo  "all" or an address
 *   bench      rw  write "REGION OFFSET SIZE": alloc_contig_range() + free_contig_range()
 *                  on that range, timed; read "ret=R ns=N in_use_before=P migrated=M"
 *
 * Numbers take a 0x prefix for hex. The knobs that touch memory take the same lock as the
 * request worker, so they are serialised with the VMM's requests.
 */

#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#include "cma_agent.h"

/* The bound agent; set while the directory exists (removal waits for running callbacks). */
static struct cma_agent *cma_sysfs_agent;

#define CMA_MAX_WORDS 3

/* Split a written line into at most CMA_MAX_WORDS words; their number, or -EINVAL. */
static int cma_words(const char *buf, size_t count, char *line, size_t size, char **words)
{
	char *p = line;
	int n = 0;

	if (count >= size)
		return -EINVAL;
	memcpy(line, buf, count);
	line[count] = '\0';
	for (;;) {
		char *w = strsep(&p, " \t\n");

		if (!w)
			break;
		if (!*w)
			continue;
		if (n == CMA_MAX_WORDS)
			return -EINVAL;
		words[n++] = w;
	}
	return n;
}

static ssize_t regions_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct cma_agent *a = cma_sysfs_agent;
	unsigned int i;
	int len = 0;

	for (i = 0; i < a->nr_regions; i++) {
		const struct cma_region *r = &a->regions[i];
		const char *state = cma_region_state_name(r);

		len += sysfs_emit_at(buf, len, "%u %s %#llx %#llx %s %s%s%s\n", r->id, r->name,
				     r->base, r->size,
				     (r->flags & CMA_REGION_PRIVATE) ? "private" : "lent", state,
				     strcmp(state, "refused") ? "" : ": ",
				     strcmp(state, "refused") ? "" : r->why);
	}
	return len;
}

static ssize_t stats_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct cma_agent *a = cma_sysfs_agent;
	struct cma_stats *s = &a->stats;
	unsigned int i;
	int len = 0, pins = 0;

	for (i = 0; i < a->nr_regions; i++)
		pins += atomic_read(&a->regions[i].pins);
#define STAT(name, v) (len += sysfs_emit_at(buf, len, "%s %lld\n", name, (long long)(v)))
	STAT("requests", atomic64_read(&s->requests));
	STAT("evictions_ok", atomic64_read(&s->evict_ok));
	STAT("evictions_busy", atomic64_read(&s->evict_busy));
	STAT("evictions_nomem", atomic64_read(&s->evict_nomem));
	STAT("evictions_invalid", atomic64_read(&s->evict_invalid));
	STAT("evictions_failed", atomic64_read(&s->evict_failed));
	STAT("returns_ok", atomic64_read(&s->returns_ok));
	STAT("returns_invalid", atomic64_read(&s->returns_invalid));
	STAT("cancels", atomic64_read(&s->cancels));
	STAT("cancels_undone", atomic64_read(&s->cancels_undone));
	STAT("queries", atomic64_read(&s->queries));
	STAT("probes", atomic64_read(&s->probes));
	STAT("shutdowns", atomic64_read(&s->shutdowns));
	STAT("pages_migrated", atomic64_read(&s->pages_migrated));
	STAT("pages_held", cma_held_pages(a));
	STAT("pages_pinned", pins);
	STAT("last_eviction_ns", atomic64_read(&s->last_evict_ns));
	STAT("last_eviction_pages", atomic64_read(&s->last_evict_pages));
	STAT("total_eviction_ns", atomic64_read(&s->total_evict_ns));
	STAT("bad_messages", atomic64_read(&s->bad_messages));
	STAT("send_failures", atomic64_read(&s->send_failures));
	STAT("acks_not_done", atomic64_read(&s->acks_not_done));
#undef STAT
	return len;
}

static ssize_t milestone_store(struct kobject *kobj, struct kobj_attribute *attr,
			       const char *buf, size_t count)
{
	unsigned int v;
	int err = kstrtouint(buf, 0, &v);

	if (err)
		return err;
	if (v < 1 || v > 255)
		return -ERANGE;
	outb(v, CMA_PROGRESS_PORT);
	return count;
}

static ssize_t exit_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			  size_t count)
{
	u32 v;
	int err = kstrtou32(buf, 0, &v);

	if (err)
		return err;
	outl(v, CMA_EXIT_PORT);
	return count;
}

static ssize_t shutdown_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&cma_sysfs_agent->shutdown));
}

static ssize_t pin_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			 size_t count)
{
	char line[96], *w[CMA_MAX_WORDS];
	u64 offset, gpa;
	int n, err;

	n = cma_words(buf, count, line, sizeof(line), w);
	if (n != 2)
		return -EINVAL;
	err = kstrtou64(w[1], 0, &offset);
	if (err)
		return err;
	err = cma_pin(cma_sysfs_agent, w[0], offset, &gpa);
	if (err)
		return err;
	dev_info(&cma_sysfs_agent->vdev->dev, "pinned the page at %#llx (region %s + %#llx)\n",
		 gpa, w[0], offset);
	return count;
}

static ssize_t pinned_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct cma_agent *a = cma_sysfs_agent;
	struct cma_pin *p;
	int len = 0;

	mutex_lock(&a->op_lock);
	list_for_each_entry(p, &a->pins, node)
		len += sysfs_emit_at(buf, len, "%#llx\n", (u64)PFN_PHYS(p->pfn));
	mutex_unlock(&a->op_lock);
	return len;
}

static ssize_t unpin_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	char line[64], *w[CMA_MAX_WORDS];
	u64 gpa = 0;
	bool all;
	int n, err;

	n = cma_words(buf, count, line, sizeof(line), w);
	if (n != 1)
		return -EINVAL;
	all = !strcmp(w[0], "all");
	if (!all) {
		err = kstrtou64(w[0], 0, &gpa);
		if (err)
			return err;
	}
	err = cma_unpin(cma_sysfs_agent, all, gpa);
	return err ? err : count;
}

static ssize_t bench_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct cma_agent *a = cma_sysfs_agent;
	struct cma_bench_result r;

	mutex_lock(&a->op_lock);
	r = a->bench;
	mutex_unlock(&a->op_lock);
	if (!r.valid)
		return sysfs_emit(buf, "ret=none\n");
	return sysfs_emit(buf, "ret=%d ns=%llu in_use_before=%llu migrated=%llu\n", r.ret, r.ns,
			  r.in_use_before, r.migrated);
}

static ssize_t bench_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	char line[128], *w[CMA_MAX_WORDS];
	u64 offset, size;
	int n, err;

	n = cma_words(buf, count, line, sizeof(line), w);
	if (n != 3)
		return -EINVAL;
	err = kstrtou64(w[1], 0, &offset);
	if (!err)
		err = kstrtou64(w[2], 0, &size);
	if (!err)
		err = cma_bench(cma_sysfs_agent, w[0], offset, size);
	return err ? err : count;
}

static struct kobj_attribute cma_attrs[] = {
	__ATTR_RO(regions),
	__ATTR_RO(stats),
	__ATTR_WO(milestone),
	__ATTR_WO(exit),
	__ATTR_RO(shutdown),
	__ATTR_WO(pin),
	__ATTR_RO(pinned),
	__ATTR_WO(unpin),
	__ATTR_RW(bench),
};

static struct attribute *cma_attr_list[ARRAY_SIZE(cma_attrs) + 1];

static const struct attribute_group cma_group = {
	.attrs = cma_attr_list,
};

int cma_sysfs_init(struct cma_agent *a)
{
	unsigned int i;
	int err;

	struct kobject *kobj;

	for (i = 0; i < ARRAY_SIZE(cma_attrs); i++)
		cma_attr_list[i] = &cma_attrs[i].attr;
	mutex_init(&a->kobj_lock);
	cma_sysfs_agent = a;
	kobj = kobject_create_and_add(CMA_AGENT_NAME, kernel_kobj);
	if (!kobj) {
		cma_sysfs_agent = NULL;
		return -ENOMEM;
	}
	err = sysfs_create_group(kobj, &cma_group);
	if (err) {
		kobject_put(kobj);
		cma_sysfs_agent = NULL;
		return err;
	}
	a->kobj = kobj;
	return 0;
}

void cma_sysfs_exit(struct cma_agent *a)
{
	struct kobject *kobj;

	/* The worker may be notifying `shutdown` right now: it uses kobj under the lock. */
	mutex_lock(&a->kobj_lock);
	kobj = a->kobj;
	a->kobj = NULL;
	mutex_unlock(&a->kobj_lock);
	if (!kobj)
		return;
	sysfs_remove_group(kobj, &cma_group);
	kobject_put(kobj);
	cma_sysfs_agent = NULL;
}

/* From the request worker (sysfs_notify() may sleep). */
void cma_sysfs_notify_shutdown(struct cma_agent *a)
{
	mutex_lock(&a->kobj_lock);
	if (a->kobj)
		sysfs_notify(a->kobj, NULL, "shutdown");
	mutex_unlock(&a->kobj_lock);
}
