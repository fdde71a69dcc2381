// SPDX-License-Identifier: GPL-2.0
/*
 * The lent regions, as Linux memory.
 *
 *  config space ──▶ regions ──add_memory_driver_managed()──▶ memory blocks, auto-onlined
 *                                                           by the kernel's policy
 *                     every page online in ZONE_MOVABLE? ── yes ──▶ "movable": served
 *                                                         └─ no ──▶ removed again, "refused"
 *
 *  Evict  [gpa, gpa+len) ──alloc_contig_range()──▶ held for the VMM  (Linux isolates the
 *         pageblocks and migrates every page out, as its own cma_alloc() does)
 *  Return / Cancel ──free_contig_range()──▶ back to the buddy allocator (ZONE_MOVABLE)
 *
 * ZONE_MOVABLE is the closest a module can get to MIGRATE_CMA: only movable allocations
 * land there, so alloc_contig_range() can empty any range of it unless someone holds an
 * extra reference on a page (the `pin` knob models exactly that). The memmap of hot-added
 * memory lives in ordinary RAM (MHP_NONE, never MHP_MEMMAP_ON_MEMORY): a range granted to
 * the device must not contain the struct pages that describe it.
 */

#include <linux/ctype.h>
#include <linux/gfp.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/memory.h>
#include <linux/memory_hotplug.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/page_ref.h>
#include <linux/range.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/virtio_config.h>
#include <linux/vmstat.h>

#include "cma_agent.h"

/*
 * The largest buddy order we trust when skipping free blocks in the lockless scans below
 * (a racy read of a freed page's order must not make us skip in-use pages wholesale).
 */
#define CMA_SCAN_MAX_ORDER 10

/* ---- regions: the config space ---------------------------------------------------- */

static bool cma_name_ok(const char *name)
{
	size_t len = strnlen(name, CMA_RECORD_NAME_SIZE);
	size_t i;

	if (len == 0 || len >= CMA_RECORD_NAME_SIZE)
		return false;
	for (i = 0; i < len; i++) {
		char c = name[i];

		if (!isalnum(c) && c != '_' && c != '.' && c != '-')
			return false;
	}
	return true;
}

static __printf(3, 4) void cma_refuse(struct cma_agent *a, struct cma_region *r,
				       const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vscnprintf(r->why, sizeof(r->why), fmt, args);
	va_end(args);
	/* sysfs reads state without the lock: the reason is complete before the state. */
	smp_store_release(&r->state, CMA_REGION_REFUSED);
	dev_err(&a->vdev->dev, "region '%s' [%#llx-%#llx]: refused: %s\n", r->name,
		r->base, r->base + r->size - 1, r->why);
}

static enum cma_region_state cma_state(const struct cma_region *r)
{
	return smp_load_acquire(&r->state);
}

/*
 * Read and check the device's configuration space (protocol/src/agent_config.rs).
 * A malformed header or record rejects the device; a region that makes no sense
 * (empty, overflowing, unaligned, overlapping another) is refused on its own.
 */
int cma_regions_read(struct cma_agent *a)
{
	struct device *dev = &a->vdev->dev;
	struct cma_config_hdr hdr;
	u32 magic, version, count, rsize;
	unsigned int i, j;

	virtio_cread_bytes(a->vdev, 0, &hdr, sizeof(hdr));
	magic = le32_to_cpu(hdr.magic);
	version = le32_to_cpu(hdr.version);
	count = le32_to_cpu(hdr.count);
	rsize = le32_to_cpu(hdr.record_size);
	if (magic != CMA_CONFIG_MAGIC) {
		dev_err(dev, "config space: magic %#010x, not \"CMAC\" (%#010x): not a cma-vmm agent device\n",
			magic, CMA_CONFIG_MAGIC);
		return -EINVAL;
	}
	if (version != CMA_AGENT_VERSION) {
		dev_err(dev, "config space: protocol version %u, this driver speaks %u\n",
			version, CMA_AGENT_VERSION);
		return -EINVAL;
	}
	if (count > CMA_MAX_REGIONS) {
		dev_err(dev, "config space: %u regions, at most %u\n", count, CMA_MAX_REGIONS);
		return -EINVAL;
	}
	if (rsize != CMA_REGION_RECORD_SIZE) {
		dev_err(dev, "config space: region records of %u bytes, expected %u\n",
			rsize, CMA_REGION_RECORD_SIZE);
		return -EINVAL;
	}

	for (i = 0; i < count; i++) {
		struct cma_region *r = &a->regions[i];
		struct cma_config_region rec;

		virtio_cread_bytes(a->vdev, CMA_CONFIG_HEADER_SIZE + i * CMA_REGION_RECORD_SIZE,
				   &rec, sizeof(rec));
		if (!cma_name_ok(rec.name)) {
			dev_err(dev, "config space: region record %u has no valid name (1 to %u of [A-Za-z0-9_.-], NUL-terminated)\n",
				i, CMA_RECORD_NAME_SIZE - 1);
			return -EINVAL;
		}
		memcpy(r->name, rec.name, CMA_RECORD_NAME_SIZE);
		r->base = le64_to_cpu(rec.base);
		r->size = le64_to_cpu(rec.size);
		r->id = le32_to_cpu(rec.id);
		r->flags = le32_to_cpu(rec.flags);
		atomic64_set(&r->held_pages, 0);
		atomic_set(&r->pins, 0);
		r->state = (r->flags & CMA_REGION_PRIVATE) ? CMA_REGION_PRIVATE_STATE :
							     CMA_REGION_PENDING;
	}
	a->nr_regions = count;

	for (i = 0; i < count; i++) {
		struct cma_region *r = &a->regions[i];

		if (r->state != CMA_REGION_PENDING)
			continue;
		if (!r->size) {
			cma_refuse(a, r, "empty");
			continue;
		}
		if (r->base + r->size < r->base) {
			cma_refuse(a, r, "base + size overflows");
			continue;
		}
		if (!PAGE_ALIGNED(r->base) || !PAGE_ALIGNED(r->size)) {
			cma_refuse(a, r, "not page aligned");
			continue;
		}
		for (j = 0; j < count; j++) {
			struct cma_region *o = &a->regions[j];

			if (j != i && o->size && r->base < o->base + o->size &&
			    o->base < r->base + r->size) {
				cma_refuse(a, r, "overlaps region '%s'", o->name);
				break;
			}
		}
	}
	return 0;
}

const char *cma_region_state_name(const struct cma_region *r)
{
	switch (cma_state(r)) {
	case CMA_REGION_PRIVATE_STATE:
		return "private";
	case CMA_REGION_PENDING:
		return "pending";
	case CMA_REGION_MOVABLE:
		return "movable";
	case CMA_REGION_REFUSED:
		return "refused";
	case CMA_REGION_REMOVED:
		return "removed";
	}
	return "?";
}

/* ---- regions: hot-add ------------------------------------------------------------- */

struct cma_census {
	unsigned long movable;
	unsigned long other;
	unsigned long offline;
	const char *other_zone;
};

/* Where the pages of a region are: online in ZONE_MOVABLE, online elsewhere, offline. */
static void cma_census(const struct cma_region *r, struct cma_census *c)
{
	unsigned long pfn = PHYS_PFN(r->base), end = PHYS_PFN(r->base + r->size);

	memset(c, 0, sizeof(*c));
	for (; pfn < end; pfn++) {
		struct page *page = pfn_to_online_page(pfn);

		if (!page) {
			c->offline++;
		} else if (page_zonenum(page) == ZONE_MOVABLE) {
			c->movable++;
		} else {
			c->other++;
			c->other_zone = page_zone(page)->name;
		}
		if (!(pfn & 4095))
			cond_resched();
	}
}

static void cma_region_add(struct cma_agent *a, struct cma_region *r)
{
	struct device *dev = &a->vdev->dev;
	unsigned long block = memory_block_size_bytes();
	unsigned long pages = r->size >> PAGE_SHIFT;
	struct range pluggable = mhp_get_pluggable_range(true);
	struct cma_census c;
	int nid, rc;

	if (!IS_ALIGNED(r->base, block) || !IS_ALIGNED(r->size, block)) {
		cma_refuse(a, r, "base %#llx and size %#llx must be multiples of the memory block size %#lx (%lu MiB): Linux hot-adds whole memory blocks",
			   r->base, r->size, block, block >> 20);
		return;
	}
	if (r->base < pluggable.start || r->base + r->size - 1 > pluggable.end) {
		cma_refuse(a, r, "outside the range this kernel can hot-add [%#llx-%#llx]",
			   (u64)pluggable.start, (u64)pluggable.end);
		return;
	}

	nid = memory_add_physaddr_to_nid(r->base);
	WRITE_ONCE(r->adding, true);
	rc = add_memory_driver_managed(nid, r->base, r->size, a->resource_name, MHP_NONE);
	WRITE_ONCE(r->adding, false);
	if (rc == -EEXIST) {
		/* Still there from an earlier binding that could not remove it: adopt it if movable. */
		cma_census(r, &c);
		if (c.movable != pages) {
			cma_refuse(a, r, "already present (an earlier binding?) and not all in ZONE_MOVABLE");
			return;
		}
		dev_info(dev, "region '%s': already present and movable, adopted\n", r->name);
	} else if (rc) {
		cma_refuse(a, r, "add_memory_driver_managed() failed: %d", rc);
		return;
	}
	r->added = true;

	cma_census(r, &c);
	if (c.movable == pages) {
		smp_store_release(&r->state, CMA_REGION_MOVABLE);
		dev_info(dev, "[mem %#018llx-%#018llx] cma %s id=%u lent: %lu MiB online in ZONE_MOVABLE (node %d)\n",
			 r->base, r->base + r->size - 1, r->name, r->id, (unsigned long)(r->size >> 20),
			 nid);
		return;
	}

	/*
	 * The kernel's auto-online policy chose the zone (memhp_default_state, or
	 * memory_hotplug.online_policy), and it was not ZONE_MOVABLE, or the policy leaves
	 * new memory offline. Linux 6.1 gives a module no way to choose the zone:
	 * online_pages(), device_online() and the memory block's online type are not
	 * exported, only the sysfs file a user writes. Our notifier refused to online the
	 * blocks in another zone (once there, unmovable kernel allocations would land in them
	 * at once and pin them), so they are offline and come out again cleanly.
	 */
	WRITE_ONCE(r->offlining, true);
	rc = offline_and_remove_memory(r->base, r->size);
	WRITE_ONCE(r->offlining, false);
	if (!rc)
		r->added = false;
	if (r->vetoed_zone)
		cma_refuse(a, r, "the kernel onlines hot-added memory in zone %s, not ZONE_MOVABLE (refused); boot the guest with memhp_default_state=online_movable (%s)",
			   r->vetoed_zone, rc ? "could not remove it" : "removed");
	else
		cma_refuse(a, r, "%lu pages offline and %lu online in zone %s, not ZONE_MOVABLE; boot the guest with memhp_default_state=online_movable (%s)",
			   c.offline, c.other, c.other_zone ? c.other_zone : "-",
			   rc ? "could not remove it" : "removed");
}

void cma_regions_add(struct cma_agent *a)
{
	unsigned int i;

	for (i = 0; i < a->nr_regions; i++)
		if (a->regions[i].state == CMA_REGION_PENDING)
			cma_region_add(a, &a->regions[i]);
}

/*
 * Nobody but us offlines a lent region while we serve it: the VMM's view of it (which
 * ranges are the guest's, which the device's) would silently stop being true, and an
 * offline page must never reach alloc_contig_range().
 */
static int cma_memory_notify(struct notifier_block *nb, unsigned long action, void *arg)
{
	struct cma_agent *a = container_of(nb, struct cma_agent, memory_nb);
	struct memory_notify *mn = arg;
	u64 start, end;
	unsigned int i;

	if (action != MEM_GOING_OFFLINE && action != MEM_GOING_ONLINE)
		return NOTIFY_OK;
	start = PFN_PHYS(mn->start_pfn);
	end = PFN_PHYS(mn->start_pfn + mn->nr_pages);
	for (i = 0; i < a->nr_regions; i++) {
		struct cma_region *r = &a->regions[i];

		if (!(start < r->base + r->size && r->base < end))
			continue;
		if (action == MEM_GOING_ONLINE) {
			/*
			 * online_pages() has already tied the pages to their zone: refuse any
			 * zone but ZONE_MOVABLE while we add the region.
			 */
			struct zone *zone = page_zone(pfn_to_page(mn->start_pfn));

			if (!READ_ONCE(r->adding) || zone_idx(zone) == ZONE_MOVABLE)
				continue;
			r->vetoed_zone = zone->name;
			return notifier_from_errno(-EINVAL);
		}
		if (cma_state(r) != CMA_REGION_MOVABLE || READ_ONCE(r->offlining))
			continue;
		pr_warn_ratelimited(CMA_AGENT_NAME ": refusing to offline [%#llx-%#llx]: lent region '%s' is served by the cma-vmm agent (unbind the driver first)\n",
				    start, end - 1, r->name);
		return notifier_from_errno(-EBUSY);
	}
	return NOTIFY_OK;
}

int cma_memory_init(struct cma_agent *a)
{
	int err;

	mutex_init(&a->op_lock);
	INIT_LIST_HEAD(&a->held);
	INIT_LIST_HEAD(&a->pins);
	a->vm_events = kcalloc(NR_VM_EVENT_ITEMS, sizeof(*a->vm_events), GFP_KERNEL);
	/* Not kstrdup_const(): a literal of ours would go away with the module. */
	a->resource_name = kstrdup(CMA_RESOURCE_NAME, GFP_KERNEL);
	if (!a->vm_events || !a->resource_name) {
		err = -ENOMEM;
		goto fail;
	}
	a->memory_nb.notifier_call = cma_memory_notify;
	err = register_memory_notifier(&a->memory_nb);
	if (err)
		goto fail;
	a->notifier_registered = true;
	return 0;
fail:
	kfree(a->vm_events);
	a->vm_events = NULL;
	kfree(a->resource_name);
	a->resource_name = NULL;
	return err;
}

/* ---- helpers over page ranges ----------------------------------------------------- */

/*
 * Pages migrated so far, system-wide: the PGMIGRATE_SUCCESS event counter. Evictions are
 * serialised by op_lock, so the delta over one alloc_contig_range() is the pages it
 * migrated, plus whatever compaction or NUMA balancing migrated meanwhile (nothing, in
 * the test guest; we clamp to the range's size). Clean page cache that Linux reclaims
 * instead of migrating is not counted.
 */
static u64 cma_migrate_events(struct cma_agent *a)
{
#if defined(CONFIG_MIGRATION) && defined(CONFIG_VM_EVENT_COUNTERS)
	all_vm_events(a->vm_events);
	return a->vm_events[PGMIGRATE_SUCCESS];
#else
	return 0;
#endif
}

static int cma_alloc_range(unsigned long pfn, unsigned long nr)
{
	/* No allocation-failure dump of the busy pages: a busy range is an expected answer. */
	gfp_t gfp = GFP_KERNEL | __GFP_NOWARN;

#ifdef ACR_FLAGS_NONE
	/* Linux 6.16 replaced the migratetype argument with flags. */
	return alloc_contig_range(pfn, pfn + nr, ACR_FLAGS_NONE, gfp);
#else
	return alloc_contig_range(pfn, pfn + nr, MIGRATE_MOVABLE, gfp);
#endif
}

/*
 * Count pages in use and free in [pfn, pfn+nr) without locks (a snapshot for statistics:
 * in use = not in the buddy allocator and referenced, or part of a compound page).
 */
static void cma_scan(unsigned long pfn, unsigned long nr, u64 *in_use, u64 *free)
{
	unsigned long i = 0;

	while (i < nr) {
		struct page *page = pfn_to_online_page(pfn + i);

		if (!(i & 4095))
			cond_resched();
		if (!page) {
			i++;
			continue;
		}
		if (PageBuddy(page)) {
			unsigned long order = min_t(unsigned long, page_private(page),
						    CMA_SCAN_MAX_ORDER);
			unsigned long step = min(1UL << order, nr - i);

			*free += step;
			i += step;
			continue;
		}
		if (PageTail(page) || page_ref_count(page) > 0)
			(*in_use)++;
		else
			(*free)++;	/* on its way to or from a per-cpu free list */
		i++;
	}
}

static struct cma_held *cma_held_at(struct cma_agent *a, unsigned long pfn)
{
	struct cma_held *h;

	list_for_each_entry(h, &a->held, node)
		if (pfn >= h->pfn && pfn < h->pfn + h->nr)
			return h;
	return NULL;
}

static bool cma_overlaps_held(struct cma_agent *a, unsigned long pfn, unsigned long nr)
{
	struct cma_held *h;

	list_for_each_entry(h, &a->held, node)
		if (pfn < h->pfn + h->nr && h->pfn < pfn + nr)
			return true;
	return false;
}

static struct cma_pin *cma_pin_at(struct cma_agent *a, unsigned long pfn)
{
	struct cma_pin *p;

	list_for_each_entry(p, &a->pins, node)
		if (p->pfn == pfn)
			return p;
	return NULL;
}

u64 cma_held_pages(struct cma_agent *a)
{
	u64 n = 0;
	unsigned int i;

	for (i = 0; i < a->nr_regions; i++)
		n += atomic64_read(&a->regions[i].held_pages);
	return n;
}

/*
 * Does this order-0 page have references its mappings do not explain? Migration needs
 * the reference count to be exactly what the page cache (or swap cache) and the page
 * tables account for; anything more (a GUP pin, a driver's get_page()) makes it fail.
 */
static bool cma_has_extra_refs(struct page *page)
{
	int refs = page_ref_count(page);
	int expected;

	if (refs <= 0 || PageCompound(page))
		return false;
	expected = atomic_read(&page->_mapcount) + 1;
	if (PageAnon(page)) {
		if (PageSwapCache(page))
			expected++;
	} else if (READ_ONCE(page->mapping)) {
		expected++;
		if (PagePrivate(page))
			expected++;
	}
	return refs > expected;
}

/*
 * After alloc_contig_range() said -EBUSY: the guest-physical address of the page that
 * most likely blocked it. Linux does not report it, so look at the range after the
 * failure (the pages that could move have moved): a page we pin ourselves, else the first
 * page with more references than its mappings account for, else the first page still in
 * use, else the start of the range (then the VMM retries at its next aligned candidate,
 * exactly as Linux's cma_alloc() does on -EBUSY).
 */
static u64 cma_first_busy(struct cma_agent *a, unsigned long pfn, unsigned long nr)
{
	unsigned long first_used = ULONG_MAX;
	unsigned long i = 0;

	while (i < nr) {
		unsigned long p = pfn + i;
		struct page *page = pfn_to_online_page(p);

		if (!page)
			return PFN_PHYS(p);
		if (PageBuddy(page)) {
			unsigned long order = min_t(unsigned long, page_private(page),
						    CMA_SCAN_MAX_ORDER);

			i += 1UL << order;
			continue;
		}
		if (cma_pin_at(a, p) || cma_has_extra_refs(page))
			return PFN_PHYS(p);
		if (first_used == ULONG_MAX && (PageTail(page) || page_ref_count(page) > 0))
			first_used = p;
		i++;
	}
	return PFN_PHYS(first_used != ULONG_MAX ? first_used : pfn);
}

/*
 * The lent region that wholly contains [gpa, gpa+len), checked in the order the
 * reference guest does: non-empty, page aligned, no overflow, inside one usable region.
 */
static struct cma_region *cma_lent_region(struct cma_agent *a, u64 gpa, u64 len,
					  const char **why)
{
	unsigned int i;

	if (!len) {
		*why = "empty range";
		return NULL;
	}
	if (!PAGE_ALIGNED(gpa) || !PAGE_ALIGNED(len)) {
		*why = "not page aligned";
		return NULL;
	}
	if (gpa + len < gpa) {
		*why = "range overflows";
		return NULL;
	}
	for (i = 0; i < a->nr_regions; i++) {
		struct cma_region *r = &a->regions[i];

		if (cma_state(r) == CMA_REGION_MOVABLE && gpa >= r->base &&
		    gpa + len <= r->base + r->size)
			return r;
	}
	*why = "not inside one usable lent region";
	return NULL;
}

static struct cma_region *cma_region_named(struct cma_agent *a, const char *name)
{
	unsigned int i;

	for (i = 0; i < a->nr_regions; i++)
		if (!strncmp(a->regions[i].name, name, CMA_RECORD_NAME_SIZE))
			return &a->regions[i];
	return NULL;
}

/* ---- the protocol's operations ---------------------------------------------------- */

void cma_evict(struct cma_agent *a, u64 req, u64 gpa, u64 len, union cma_wire_msg *ans)
{
	struct device *dev = &a->vdev->dev;
	unsigned long pfn, nr;
	struct cma_region *r;
	struct cma_held *h;
	const char *why;
	u64 before, migrated, t0, ns;
	int rc;

	mutex_lock(&a->op_lock);
	r = cma_lent_region(a, gpa, len, &why);
	if (!r) {
		atomic64_inc(&a->stats.evict_invalid);
		dev_warn_ratelimited(dev, "evict %llu [%#llx +%#llx]: invalid: %s\n", req, gpa,
				     len, why);
		cma_answer_evicted(ans, req, CMA_STATUS_INVALID, 0, 0);
		goto out;
	}
	pfn = PHYS_PFN(gpa);
	nr = len >> PAGE_SHIFT;
	if (cma_overlaps_held(a, pfn, nr)) {
		atomic64_inc(&a->stats.evict_invalid);
		dev_warn_ratelimited(dev, "evict %llu [%#llx +%#llx]: invalid: part of it is already the device's\n",
				     req, gpa, len);
		cma_answer_evicted(ans, req, CMA_STATUS_INVALID, 0, 0);
		goto out;
	}
	h = kmalloc(sizeof(*h), GFP_KERNEL);
	if (!h) {
		atomic64_inc(&a->stats.evict_nomem);
		cma_answer_evicted(ans, req, CMA_STATUS_NO_MEMORY, 0, 0);
		goto out;
	}

	before = cma_migrate_events(a);
	t0 = ktime_get_ns();
	rc = cma_alloc_range(pfn, nr);
	ns = ktime_get_ns() - t0;
	migrated = min_t(u64, cma_migrate_events(a) - before, nr);
	atomic64_set(&a->stats.last_evict_ns, ns);
	atomic64_set(&a->stats.last_evict_pages, nr);
	atomic64_add(ns, &a->stats.total_evict_ns);
	atomic64_add(migrated, &a->stats.pages_migrated);

	switch (rc) {
	case 0:
		h->pfn = pfn;
		h->nr = nr;
		h->req = req;
		h->region = r;
		list_add_tail(&h->node, &a->held);
		atomic64_add(nr, &r->held_pages);
		atomic64_inc(&a->stats.evict_ok);
		cma_answer_evicted(ans, req, CMA_STATUS_DONE, 0, migrated);
		dev_info(dev, "evict %llu [%#llx +%#llx]: done: %llu pages migrated, alloc_contig_range() %llu ns\n",
			 req, gpa, len, migrated, ns);
		h = NULL;
		break;
	case -EBUSY: {
		u64 busy = cma_first_busy(a, pfn, nr);

		atomic64_inc(&a->stats.evict_busy);
		cma_answer_evicted(ans, req, CMA_STATUS_BUSY, busy, migrated);
		dev_info_ratelimited(dev, "evict %llu [%#llx +%#llx]: busy at %#llx\n", req, gpa,
				     len, busy);
		break;
	}
	case -ENOMEM:
		atomic64_inc(&a->stats.evict_nomem);
		cma_answer_evicted(ans, req, CMA_STATUS_NO_MEMORY, 0, migrated);
		dev_warn_ratelimited(dev, "evict %llu [%#llx +%#llx]: no memory to migrate into\n",
				     req, gpa, len);
		break;
	default:
		atomic64_inc(&a->stats.evict_failed);
		cma_answer_evicted(ans, req, CMA_STATUS_FAILED, (u64)-rc, migrated);
		dev_warn_ratelimited(dev, "evict %llu [%#llx +%#llx]: alloc_contig_range() = %d\n",
				     req, gpa, len, rc);
		break;
	}
	kfree(h);
out:
	mutex_unlock(&a->op_lock);
}

/* Give back [pfn, pfn+nr), which held ranges cover entirely; `spare` for a split. */
static void cma_release(struct cma_agent *a, unsigned long pfn, unsigned long nr,
			struct cma_held **spare)
{
	unsigned long end = pfn + nr;
	struct cma_held *h, *tmp;

	list_for_each_entry_safe(h, tmp, &a->held, node) {
		unsigned long hend = h->pfn + h->nr;
		unsigned long s = max(h->pfn, pfn), e = min(hend, end);

		if (s >= e)
			continue;
		free_contig_range(s, e - s);
		atomic64_sub(e - s, &h->region->held_pages);
		if (s == h->pfn && e == hend) {
			list_del(&h->node);
			kfree(h);
		} else if (s == h->pfn) {
			h->pfn = e;
			h->nr = hend - e;
		} else if (e == hend) {
			h->nr = s - h->pfn;
		} else {
			/* The middle of a held range: what follows becomes its own entry. */
			struct cma_held *n = *spare;

			*spare = NULL;
			n->pfn = e;
			n->nr = hend - e;
			n->req = h->req;
			n->region = h->region;
			list_add(&n->node, &h->node);
			h->nr = s - h->pfn;
		}
	}
}

/*
 * Return: like the reference guest, any range whose every page the device holds, whether
 * it is a whole earlier eviction, part of one, or spans several adjacent ones.
 */
void cma_return(struct cma_agent *a, u64 req, u64 gpa, u64 len, union cma_wire_msg *ans)
{
	struct device *dev = &a->vdev->dev;
	struct cma_held *h, *spare = NULL;
	unsigned long pfn, nr, covered = 0;
	const char *why;

	mutex_lock(&a->op_lock);
	if (!cma_lent_region(a, gpa, len, &why))
		goto invalid;
	pfn = PHYS_PFN(gpa);
	nr = len >> PAGE_SHIFT;
	list_for_each_entry(h, &a->held, node) {
		unsigned long s = max(h->pfn, pfn), e = min(h->pfn + h->nr, pfn + nr);

		if (s < e)
			covered += e - s;
	}
	if (covered != nr) {
		why = "not all of it is held for the device";
		goto invalid;
	}
	spare = kmalloc(sizeof(*spare), GFP_KERNEL);
	if (!spare) {
		cma_answer_returned(ans, req, CMA_STATUS_NO_MEMORY, 0);
		goto out;
	}
	cma_release(a, pfn, nr, &spare);
	kfree(spare);
	atomic64_inc(&a->stats.returns_ok);
	cma_answer_returned(ans, req, CMA_STATUS_DONE, 0);
	goto out;
invalid:
	atomic64_inc(&a->stats.returns_invalid);
	dev_warn_ratelimited(dev, "return %llu [%#llx +%#llx]: invalid: %s\n", req, gpa, len,
			     why);
	cma_answer_returned(ans, req, CMA_STATUS_INVALID, 0);
out:
	mutex_unlock(&a->op_lock);
}

/*
 * Cancel: give back what Evict `target` took, if it completed (requests are served in
 * order, so an Evict the VMM gave up on was handled before its Cancel arrives). Nothing
 * to undo is Done, as in the reference guest.
 */
void cma_cancel(struct cma_agent *a, u64 req, u64 target, union cma_wire_msg *ans)
{
	struct cma_held *h, *tmp;
	unsigned long pages = 0;

	mutex_lock(&a->op_lock);
	list_for_each_entry_safe(h, tmp, &a->held, node) {
		if (h->req != target)
			continue;
		free_contig_range(h->pfn, h->nr);
		atomic64_sub(h->nr, &h->region->held_pages);
		pages += h->nr;
		list_del(&h->node);
		kfree(h);
	}
	mutex_unlock(&a->op_lock);
	atomic64_inc(&a->stats.cancels);
	if (pages) {
		atomic64_inc(&a->stats.cancels_undone);
		dev_info(&a->vdev->dev, "cancel of evict %llu: %lu pages given back\n", target,
			 pages);
	}
	cma_answer_cancelled(ans, req, target, CMA_STATUS_DONE, 0);
}

/*
 * Report. A Linux guest has no manifest the host could check (manifest 0/0);
 * pages_present counts pages in use inside the lent regions, not counting those held for
 * the device; free_pages counts free pages inside the lent regions (which are the whole
 * of their ZONE_MOVABLE); pages_migrated is the total over all evictions.
 */
void cma_report(struct cma_agent *a, u64 req, union cma_wire_msg *ans)
{
	u64 in_use = 0, free = 0, held, pins = 0;
	struct cma_pin *p;
	unsigned int i;

	mutex_lock(&a->op_lock);
	for (i = 0; i < a->nr_regions; i++) {
		struct cma_region *r = &a->regions[i];

		if (cma_state(r) == CMA_REGION_MOVABLE)
			cma_scan(PHYS_PFN(r->base), r->size >> PAGE_SHIFT, &in_use, &free);
	}
	held = cma_held_pages(a);
	list_for_each_entry(p, &a->pins, node)
		pins++;
	memset(ans, 0, sizeof(*ans));
	ans->hdr.kind = cpu_to_le32(CMA_KIND_REPORT);
	ans->hdr.req = cpu_to_le64(req);
	ans->report.pages_present = cpu_to_le64(in_use > held ? in_use - held : 0);
	ans->report.pages_pinned = cpu_to_le64(pins);
	ans->report.free_pages = cpu_to_le64(free);
	ans->report.pages_migrated = cpu_to_le64(atomic64_read(&a->stats.pages_migrated));
	mutex_unlock(&a->op_lock);
}

/*
 * Probe: the u64 at gpa as this guest sees it, through the kernel's direct map, for any
 * online page (RAM and the lent regions; a range granted exclusively reads all-ones,
 * which is what tests look for). Anything else, or a read that faults, is all-ones too,
 * as in the reference guest.
 */
u64 cma_probe_read(struct cma_agent *a, u64 gpa)
{
	struct page *page;
	u64 value;

	if (gpa & 7)
		return U64_MAX;
	page = pfn_to_online_page(PHYS_PFN(gpa));
	if (!page)
		return U64_MAX;
	if (copy_from_kernel_nofault(&value, page_address(page) + offset_in_page(gpa),
				     sizeof(value)))
		return U64_MAX;
	return value;
}

/* ---- test knobs ------------------------------------------------------------------- */

/*
 * Pin: an extra reference on the first in-use LRU page at or after base+offset in a lent
 * region, as a driver holding a get_user_pages() reference on page cache would: the page
 * stays where it is, its migration fails, and alloc_contig_range() over it says -EBUSY.
 */
int cma_pin(struct cma_agent *a, const char *name, u64 offset, u64 *gpa)
{
	unsigned long pfn, end;
	struct cma_region *r;
	struct cma_pin *pin;
	int err = -ENOENT;

	pin = kzalloc(sizeof(*pin), GFP_KERNEL);
	if (!pin)
		return -ENOMEM;
	mutex_lock(&a->op_lock);
	r = cma_region_named(a, name);
	if (!r || cma_state(r) != CMA_REGION_MOVABLE) {
		err = r ? -EINVAL : -ENOENT;
		goto out;
	}
	if (offset >= r->size) {
		err = -ERANGE;
		goto out;
	}
	end = PHYS_PFN(r->base + r->size);
	for (pfn = PHYS_PFN(r->base + offset); pfn < end; pfn++) {
		struct page *page = pfn_to_online_page(pfn);
		struct cma_held *h;
		struct folio *folio;

		if (!(pfn & 1023))
			cond_resched();
		if (!page || PageBuddy(page) || !PageLRU(page) || cma_pin_at(a, pfn))
			continue;
		h = cma_held_at(a, pfn);
		if (h) {
			pfn = h->pfn + h->nr - 1;
			continue;
		}
		folio = page_folio(page);
		if (!folio_try_get(folio))
			continue;
		if (page_folio(page) != folio || !folio_test_lru(folio)) {
			folio_put(folio);
			continue;
		}
		pin->pfn = pfn;
		pin->folio = folio;
		pin->region = r;
		list_add_tail(&pin->node, &a->pins);
		atomic_inc(&r->pins);
		*gpa = PFN_PHYS(pfn);
		pin = NULL;
		err = 0;
		break;
	}
out:
	mutex_unlock(&a->op_lock);
	kfree(pin);
	return err;
}

static void cma_unpin_one(struct cma_pin *p)
{
	list_del(&p->node);
	atomic_dec(&p->region->pins);
	folio_put(p->folio);
	kfree(p);
}

int cma_unpin(struct cma_agent *a, bool all, u64 gpa)
{
	struct cma_pin *p, *tmp;
	int err = all ? 0 : -ENOENT;

	mutex_lock(&a->op_lock);
	list_for_each_entry_safe(p, tmp, &a->pins, node) {
		if (all || PFN_PHYS(p->pfn) == gpa) {
			cma_unpin_one(p);
			err = 0;
		}
	}
	mutex_unlock(&a->op_lock);
	return err;
}

/*
 * Bench: Linux's own alloc_contig_range() on [base+offset, +size) of a lent region, timed
 * in the guest, then free_contig_range(): the in-guest half of the comparison with an
 * end-to-end eviction through the device. The range must not touch anything held for the
 * VMM. The result (ret, ns, pages in use before, pages migrated) is kept for reading.
 */
int cma_bench(struct cma_agent *a, const char *name, u64 offset, u64 size)
{
	struct cma_bench_result res = { .valid = true };
	unsigned long pfn, nr;
	struct cma_region *r;
	u64 before, t0, free = 0;
	int err = 0;

	mutex_lock(&a->op_lock);
	r = cma_region_named(a, name);
	if (!r || cma_state(r) != CMA_REGION_MOVABLE) {
		err = r ? -EINVAL : -ENOENT;
		goto out;
	}
	if (!size || !PAGE_ALIGNED(offset) || !PAGE_ALIGNED(size) || offset >= r->size ||
	    size > r->size - offset) {
		err = -ERANGE;
		goto out;
	}
	pfn = PHYS_PFN(r->base + offset);
	nr = size >> PAGE_SHIFT;
	if (cma_overlaps_held(a, pfn, nr)) {
		err = -EBUSY;
		goto out;
	}
	cma_scan(pfn, nr, &res.in_use_before, &free);
	before = cma_migrate_events(a);
	t0 = ktime_get_ns();
	res.ret = cma_alloc_range(pfn, nr);
	res.ns = ktime_get_ns() - t0;
	res.migrated = min_t(u64, cma_migrate_events(a) - before, nr);
	if (!res.ret)
		free_contig_range(pfn, nr);
	a->bench = res;
	dev_info(&a->vdev->dev, "bench %s+%#llx size %#llx: alloc_contig_range() = %d in %llu ns, %llu pages in use before, %llu migrated\n",
		 r->name, offset, size, res.ret, res.ns, res.in_use_before, res.migrated);
out:
	mutex_unlock(&a->op_lock);
	return err;
}

/* ---- unbinding -------------------------------------------------------------------- */

/*
 * Unpin everything, then offline and remove each region we added, unless the device
 * still holds part of it: those pages stay allocated (the VMM owns them, the guest must
 * never use them again) and the region stays online. offline_and_remove_memory() migrates
 * the guest's pages out first; it gives up if the caller (rmmod) gets a signal.
 */
void cma_memory_teardown(struct cma_agent *a)
{
	struct device *dev = &a->vdev->dev;
	struct cma_held *h, *tmp;
	bool still_added = false;
	unsigned int i;
	int rc;

	cma_unpin(a, true, 0);
	for (i = 0; i < a->nr_regions; i++) {
		struct cma_region *r = &a->regions[i];
		u64 held = atomic64_read(&r->held_pages);

		if (!r->added)
			continue;
		if (held) {
			dev_warn(dev, "region '%s': %llu pages are still the device's: left allocated, the region stays online\n",
				 r->name, held);
			still_added = true;
			continue;
		}
		WRITE_ONCE(r->offlining, true);
		rc = offline_and_remove_memory(r->base, r->size);
		WRITE_ONCE(r->offlining, false);
		if (rc) {
			dev_warn(dev, "region '%s': offline_and_remove_memory() = %d: it stays online\n",
				 r->name, rc);
			still_added = true;
			continue;
		}
		r->added = false;
		smp_store_release(&r->state, CMA_REGION_REMOVED);
		dev_info(dev, "region '%s': offlined and removed\n", r->name);
	}
	/* The bookkeeping goes; pages the device still holds stay allocated for good. */
	list_for_each_entry_safe(h, tmp, &a->held, node) {
		list_del(&h->node);
		kfree(h);
	}
	if (a->notifier_registered)
		unregister_memory_notifier(&a->memory_nb);
	a->notifier_registered = false;
	kfree(a->vm_events);
	a->vm_events = NULL;
	/* A resource still in the tree names itself with this string: leak it then. */
	if (!still_added)
		kfree(a->resource_name);
	a->resource_name = NULL;
}
