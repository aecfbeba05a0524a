/* PyTorch's expandable segments (PR #96995; ExpandableSegment, find_expandable_block,
 * map_block, try_allocate_expandable_block, unmap_block in CUDACachingAllocator.cpp):
 * one virtual reservation per pool and stream, physical pages mapped on demand at the
 * lowest address that fits, and pages under free blocks unmapped when memory runs out. */
#include "policy/cca_internal.h"

#include <stdlib.h>
#include <string.h>

/* PyTorch reserves 1.125 x the device's memory per segment. Reservations are capped
 * at 2 PiB, far above any real GPU's 1.125 x: the sim's 2^56-byte address space holds
 * 32 of them, enough for the unlimited (1 PiB) device's 1.125 PiB per (pool, stream). */
#define CCA_EXP_MAX_VA (UINT64_C(1) << 51)

/* Pages are what PyTorch uses (2 MiB small, 20 MiB large), rounded up to the device's
 * granularity when that is coarser. */
static uint64_t page_size(const cca_policy *c, const cca_pool *pool)
{
    uint64_t want = pool->is_small ? CCA_SMALL_BUFFER : CCA_LARGE_BUFFER;
    return fli_align_up(want, c->base.dev->granularity);
}

/* Device calls fail (a driver error, an injected fault), and undoing a half-done map or
 * unmap takes calls that may fail too. So each page with a handle records how far it
 * got: PG_MAPPED (mapped at its page) and PG_RELEASED (released already: the memory
 * lives until the unmap). A page under a mapped block is mapped; a page with a handle
 * under an unmapped block is a leftover of a map that failed and could not be undone:
 * it is torn down before its page is mapped again, when its segment is given back and
 * at teardown, so nothing is lost. The flags live in the page table's allocation, after
 * the cap_handles handles (cca_internal.h's segment is shared with cca.c). */
#define PG_MAPPED 1u
#define PG_RELEASED 2u

static uint8_t *page_flags(const cca_segment *s) { return (uint8_t *)(s->handles + s->cap_handles); }

static void trim_handles(cca_segment *s)
{
    while (s->n_handles && s->handles[s->n_handles - 1] == CCA_NO_HANDLE)
        s->n_handles--;
}

static fl_status grow_handles(cca_policy *c, cca_segment *s, uint64_t end)
{
    if (end > s->cap_handles) {
        uint64_t cap = s->cap_handles ? s->cap_handles : 16;
        while (cap < end)
            cap *= 2;
        uint64_t *h = realloc(s->handles, cap * (sizeof *h + 1));
        if (!h)
            return fli_fail(FL_ERR_NOMEM, "%s: no host memory for a page table", c->base.ops->name);
        /* The flags follow the handles: move them past the grown handle array. */
        memmove(h + cap, h + s->cap_handles, s->cap_handles);
        s->handles = h;
        s->cap_handles = cap;
    }
    for (uint64_t i = s->n_handles; i < end; i++) {
        s->handles[i] = CCA_NO_HANDLE;
        page_flags(s)[i] = 0;
    }
    if (end > s->n_handles)
        s->n_handles = end;
    return FL_OK;
}

/* Takes page i's handle down as far as the device lets it: release (the memory stays
 * until the unmap), then unmap. On failure the page keeps its handle and flags. No
 * synchronize here: the callers do it when a kernel may still use the page. */
static fl_status drop_page(cca_policy *c, cca_segment *s, uint64_t i)
{
    fl_device *d = c->base.dev;
    uint8_t *f = &page_flags(s)[i];
    fl_status st;
    if (!(*f & PG_RELEASED)) {
        if ((st = fli_dev_release(d, s->handles[i])) != FL_OK)
            return st;
        *f |= PG_RELEASED;
    }
    if (*f & PG_MAPPED) {
        if ((st = fli_dev_unmap(d, s->base + i * s->page, s->page)) != FL_OK)
            return st;
        *f &= (uint8_t)~PG_MAPPED;
    }
    s->handles[i] = CCA_NO_HANDLE;
    *f = 0;
    return FL_OK;
}

/* Undoes pages [begin, end) of a map that failed; a page the device will not let go
 * stays a leftover (see above). */
static void undo_pages(cca_policy *c, cca_segment *s, uint64_t begin, uint64_t end)
{
    for (uint64_t i = begin; i < end; i++)
        if (s->handles[i] != CCA_NO_HANDLE)
            drop_page(c, s, i);
    trim_handles(s);
}

/* ExpandableSegment::map: backs [ptr, ptr + size) with whole pages (ptr is page
 * aligned). *mapped is the bytes mapped; FL_ERR_OOM leaves nothing created. */
static fl_status seg_map(cca_policy *c, cca_segment *s, uint64_t ptr, uint64_t size, uint64_t *mapped)
{
    fl_device *d = c->base.dev;
    uint64_t begin = (ptr - s->base) / s->page;
    uint64_t end = fli_div_up(ptr + size - s->base, s->page);
    *mapped = 0;
    fl_status st = grow_handles(c, s, end);
    if (st != FL_OK)
        return st;
    uint64_t i;
    /* Leftovers of an earlier failure go first; if one stays, nothing is mapped. */
    for (i = begin; i < end; i++)
        if (s->handles[i] != CCA_NO_HANDLE && (st = drop_page(c, s, i)) != FL_OK) {
            trim_handles(s);
            return st;
        }
    for (i = begin; i < end; i++) {
        /* PyTorch checks the fraction once per request, with the segment size; a page
         * count over it would go through. The limit here is a hard cap: the device layer
         * refuses each page beyond it. */
        if ((st = fli_dev_create(d, s->page, &s->handles[i])) != FL_OK) {
            s->handles[i] = CCA_NO_HANDLE;
            break;
        }
        page_flags(s)[i] = 0;
    }
    if (st != FL_OK) {
        undo_pages(c, s, begin, i);
        return st;
    }
    for (i = begin; i < end; i++) {
        if ((st = fli_dev_map(d, s->base + i * s->page, s->page, s->handles[i])) != FL_OK)
            break;
        page_flags(s)[i] |= PG_MAPPED;
    }
    if (st == FL_OK)
        st = fli_dev_set_access(d, s->base + begin * s->page, (end - begin) * s->page);
    if (st != FL_OK) {
        undo_pages(c, s, begin, end);
        return st;
    }
    *mapped = (end - begin) * s->page;
    return FL_OK;
}

/* ExpandableSegment::unmap: unmaps the pages [ptr, ptr + size) covers whole, after a
 * synchronize (unmapping does not wait for kernels the way cudaFree does). Each page is
 * released, then unmapped (the driver frees it at the unmap), so a failure leaves every
 * page either gone or still mapped and usable. On failure *ubegin / *usize are the
 * pages that went (a prefix), and the error is returned. */
static fl_status seg_unmap(cca_policy *c, cca_segment *s, uint64_t ptr, uint64_t size,
                           uint64_t *ubegin, uint64_t *usize)
{
    fl_device *d = c->base.dev;
    uint64_t begin = fli_div_up(ptr - s->base, s->page);
    uint64_t end = (ptr + size - s->base) / s->page;
    *usize = 0;
    if (begin >= end)
        return FL_OK;
    fl_status st = fli_dev_synchronize(d);
    if (st != FL_OK)
        return st;
    uint64_t i;
    for (i = begin; i < end; i++)
        if ((st = drop_page(c, s, i)) != FL_OK)
            break;
    trim_handles(s);
    *ubegin = s->base + begin * s->page;
    *usize = (i - begin) * s->page;
    return st;
}

static bool allocatable(const cca_block *b) { return b && !b->allocated; }

/* Free and unmapped blocks from b on add up to size. */
static bool has_room(const cca_block *b, uint64_t size)
{
    uint64_t bytes = 0;
    while (bytes < size && allocatable(b)) {
        bytes += b->node.size;
        b = b->next;
    }
    return bytes >= size;
}

/* find_expandable_block: the lowest address on this stream where free plus unmapped
 * space fits size, or a new segment (a new reservation) when none does. */
static fl_status find_expandable_block(cca_policy *c, cca_pool *pool, uint64_t stream,
                                       uint64_t size, cca_block **out)
{
    for (cca_node *n = cca_set_lower_bound(&pool->unmapped, stream, 0, 0); n && n->stream == stream;
         n = cca_set_next(&pool->unmapped, n)) {
        cca_block *cand = (cca_block *)n;
        if (allocatable(cand->prev))
            cand = cand->prev;
        if (has_room(cand, size)) {
            *out = cand;
            return FL_OK;
        }
    }
    fl_device *d = c->base.dev;
    uint64_t page = page_size(c, pool);
    uint64_t want = d->capacity > CCA_EXP_MAX_VA ? CCA_EXP_MAX_VA : d->capacity + d->capacity / 8;
    uint64_t pages = fli_div_up(want, page);
    if (pages > CCA_EXP_MAX_VA / page)
        pages = CCA_EXP_MAX_VA / page;
    /* A segment never grows past its reservation: a request larger than one cannot be
     * served, however much memory is free. */
    if (size > pages * page)
        return fli_fail(FL_ERR_OOM, "%s: %llu bytes asked, more than a segment's reservation of %llu bytes",
                       c->base.ops->name, (unsigned long long)size, (unsigned long long)(pages * page));
    cca_segment *s = calloc(1, sizeof *s);
    if (!s)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for a segment", c->base.ops->name);
    fl_status st = fli_dev_reserve(d, pages * page, &s->base);
    if (st != FL_OK) {
        free(s);
        return st;
    }
    cca_block *b = cca_block_new(c);
    b->node.stream = stream;
    b->node.size = pages * page;
    b->node.addr = s->base;
    b->seg = s;
    s->head = b;
    s->pool = pool;
    s->stream = stream;
    s->size = pages * page;
    s->expandable = true;
    s->page = page;
    cca_segment_link(c, s);
    cca_set_insert(&pool->unmapped, &b->node);
    *out = b;
    return FL_OK;
}

/* map_block: maps the first size bytes of the unmapped block b (rounded up to pages)
 * and makes them a free block merged with its free neighbours, in the pool. */
static fl_status map_block(cca_policy *c, cca_block *b, uint64_t size)
{
    fl_status st = cca_spare(c, 1);
    if (st != FL_OK)
        return st;
    cca_segment *s = b->seg;
    cca_pool *pool = s->pool;
    uint64_t mapped;
    if ((st = seg_map(c, s, b->node.addr, size, &mapped)) != FL_OK)
        return st;
    cca_set_remove(&pool->unmapped, &b->node);
    b->mapped = true;
    if (mapped < b->node.size) {
        cca_block *rest = cca_block_new(c);
        rest->node.stream = b->node.stream;
        rest->node.size = b->node.size - mapped;
        rest->node.addr = b->node.addr + mapped;
        rest->seg = s;
        rest->prev = b;
        rest->next = b->next;
        if (b->next)
            b->next->prev = rest;
        b->next = rest;
        cca_set_insert(&pool->unmapped, &rest->node);
        b->node.size = mapped;
    }
    cca_try_merge(c, b, b->prev);
    cca_try_merge(c, b, b->next);
    cca_pool_insert(b);
    return FL_OK;
}

fl_status cca_exp_alloc(cca_policy *c, cca_pool *pool, uint64_t stream, uint64_t size,
                        cca_block **out)
{
    cca_block *cand = NULL;
    fl_status st = find_expandable_block(c, pool, stream, size, &cand);
    if (st != FL_OK)
        return st;
    /* cand starts a run of free and unmapped blocks with room for size: either an
     * unmapped block, or a free block followed by an unmapped one. */
    if (!cand->mapped) {
        uint64_t want = cand->node.size < size ? cand->node.size : size;
        if ((st = map_block(c, cand, want)) != FL_OK)
            return st;
    }
    while (cand->node.size < size) {
        /* cand is free and the next block unmapped: mapping it merges cand into it. */
        cca_block *next = cand->next;
        uint64_t want = size - cand->node.size;
        if (want > next->node.size)
            want = next->node.size;
        if ((st = map_block(c, next, want)) != FL_OK)
            return st;
        cand = next;
    }
    cca_set_remove(&pool->blocks, &cand->node);
    *out = cand;
    return FL_OK;
}

/* unmap_block: unmaps the whole pages under the free block b; the slivers before and
 * after them stay free blocks, the unmapped middle merges with unmapped neighbours. */
static fl_status unmap_block(cca_policy *c, cca_block *b)
{
    fl_status st = cca_spare(c, 2);
    if (st != FL_OK)
        return st;
    cca_segment *s = b->seg;
    cca_pool *pool = s->pool;
    uint64_t ubegin, usize;
    /* A partial unmap (a device error) still reshapes the blocks for the pages that went. */
    st = seg_unmap(c, s, b->node.addr, b->node.size, &ubegin, &usize);
    if (usize == 0)
        return st;
    cca_set_remove(&pool->blocks, &b->node);
    uint64_t before = ubegin - b->node.addr;
    uint64_t after = b->node.addr + b->node.size - (ubegin + usize);
    if (before) {
        cca_block *f = cca_block_new(c);
        f->node.stream = b->node.stream;
        f->node.size = before;
        f->node.addr = b->node.addr;
        f->seg = s;
        f->mapped = true;
        f->prev = b->prev;
        f->next = b;
        if (f->prev)
            f->prev->next = f;
        else
            s->head = f;
        b->prev = f;
        cca_pool_insert(f);
    }
    if (after) {
        cca_block *f = cca_block_new(c);
        f->node.stream = b->node.stream;
        f->node.size = after;
        f->node.addr = ubegin + usize;
        f->seg = s;
        f->mapped = true;
        f->prev = b;
        f->next = b->next;
        if (f->next)
            f->next->prev = f;
        b->next = f;
        cca_pool_insert(f);
    }
    b->node.addr = ubegin;
    b->node.size = usize;
    b->mapped = false;
    cca_try_merge(c, b, b->prev);
    cca_try_merge(c, b, b->next);
    cca_set_insert(&pool->unmapped, &b->node);
    return st;
}

/* release_expandable_segment: the segment is one unmapped block; free the reservation
 * (after its leftovers of failed maps, if any). */
static fl_status release_segment(cca_policy *c, cca_block *b)
{
    cca_segment *s = b->seg;
    fl_status st = FL_OK;
    for (uint64_t i = 0; i < s->n_handles && st == FL_OK; i++)
        if (s->handles[i] != CCA_NO_HANDLE)
            st = drop_page(c, s, i);
    trim_handles(s);
    if (st == FL_OK)
        st = fli_dev_addr_free(c->base.dev, s->base, s->size);
    if (st != FL_OK)
        return st;
    cca_set_remove(&s->pool->unmapped, &b->node);
    cca_segment_unlink(c, s);
    cca_block_delete(c, b);
    free(s->handles);
    free(s);
    return FL_OK;
}

typedef struct gather {
    cca_block **v;
    uint64_t n;
} gather;

static int gather_block(cca_node *n, void *user)
{
    gather *g = user;
    g->v[g->n++] = (cca_block *)n;
    return 0;
}

/* Segments with nothing mapped that still hold leftovers of a failed map. */
static int gather_leftovers(cca_node *n, void *user)
{
    gather *g = user;
    cca_block *b = (cca_block *)n;
    if (!b->prev && !b->next && b->seg->n_handles)
        g->v[g->n++] = b;
    return 0;
}

fl_status cca_exp_release_pool(cca_policy *c, cca_pool *pool)
{
    uint64_t n = pool->blocks.count + pool->unmapped.count;
    if (n == 0)
        return FL_OK;
    /* Unmapping reshapes the pool, so gather the free blocks first, as PyTorch does. */
    gather g = {malloc(n * sizeof *g.v), 0};
    if (!g.v)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory to release the cache", c->base.ops->name);
    cca_set_walk(&pool->blocks, gather_block, &g);
    fl_status st = FL_OK;
    for (uint64_t i = 0; i < g.n && st == FL_OK; i++) {
        cca_block *b = g.v[i];
        st = unmap_block(c, b);
        if (st == FL_OK && !b->mapped && !b->prev && !b->next)
            st = release_segment(c, b);
    }
    g.n = 0;
    if (st == FL_OK)
        cca_set_walk(&pool->unmapped, gather_leftovers, &g);
    for (uint64_t i = 0; i < g.n && st == FL_OK; i++)
        st = release_segment(c, g.v[i]);
    free(g.v);
    return st;
}

void cca_exp_destroy_segment(cca_policy *c, cca_segment *s)
{
    fl_device *d = c->base.dev;
    bool synced = false;
    for (uint64_t i = 0; i < s->n_handles; i++) {
        if (s->handles[i] == CCA_NO_HANDLE)
            continue;
        uint8_t f = page_flags(s)[i];
        if ((f & PG_MAPPED) && !synced) {
            fli_dev_synchronize(d);
            synced = true;
        }
        if (f & PG_MAPPED)
            fli_dev_unmap(d, s->base + i * s->page, s->page);
        if (!(f & PG_RELEASED))
            fli_dev_release(d, s->handles[i]);
    }
    fli_dev_addr_free(d, s->base, s->size);
}

int cca_exp_check_segment(const cca_policy *c, const cca_segment *s, uint64_t *held)
{
    *held = 0;
    if (s->page == 0 || s->size % s->page || s->n_handles > s->size / s->page ||
        (s->n_handles && s->handles[s->n_handles - 1] == CCA_NO_HANDLE)) {
        fli_fail(FL_ERR_INVALID, "%s check: segment 0x%llx: page table malformed",
                c->base.ops->name, (unsigned long long)s->base);
        return 1;
    }
    for (const cca_block *b = s->head; b; b = b->next) {
        uint64_t first = (b->node.addr - s->base) / s->page;
        uint64_t last = fli_div_up(b->node.addr + b->node.size - s->base, s->page);
        if (!b->mapped && ((b->node.addr - s->base) % s->page || b->node.size % s->page)) {
            fli_fail(FL_ERR_INVALID, "%s check: unmapped block 0x%llx not page aligned",
                    c->base.ops->name, (unsigned long long)b->node.addr);
            return 1;
        }
        /* Pages past the table are unmapped; only look at those it covers. A mapped
         * block's pages are mapped; an unmapped block's may hold leftovers of a failed
         * map (never released-and-unmapped: those are gone). */
        for (uint64_t i = first; i < last && i < s->n_handles; i++) {
            bool has = s->handles[i] != CCA_NO_HANDLE;
            uint8_t f = page_flags(s)[i];
            if (b->mapped ? !has || !(f & PG_MAPPED) : has && f == PG_RELEASED) {
                fli_fail(FL_ERR_INVALID, "%s check: page 0x%llx is %s under a%s block at 0x%llx",
                        c->base.ops->name, (unsigned long long)(s->base + i * s->page),
                        b->mapped ? "unmapped" : "mapped", b->mapped ? " mapped" : "n unmapped",
                        (unsigned long long)b->node.addr);
                return 1;
            }
        }
        if (b->mapped && last > s->n_handles) {
            fli_fail(FL_ERR_INVALID, "%s check: mapped block 0x%llx runs past the page table",
                    c->base.ops->name, (unsigned long long)b->node.addr);
            return 1;
        }
    }
    for (uint64_t i = 0; i < s->n_handles; i++)
        if (s->handles[i] != CCA_NO_HANDLE)
            *held += s->page;
    return 0;
}
