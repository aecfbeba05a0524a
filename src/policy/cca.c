/* Policies "cca" and "cca-expandable": PyTorch's CUDA caching allocator
 * (DeviceCachingAllocator in c10/cuda/CUDACachingAllocator.cpp) rebuilt from its rules
 * on any fl_device: rounding, pools, best fit per stream, splitting, GC, the OOM path. */
#include "policy/cca_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CCA_CHUNK_BLOCKS 256
/* PyTorch refuses anything of 1 EiB or more up front ("more than 1EB memory"). */
#define CCA_MAX_REQUEST (UINT64_C(1) << 60)

struct cca_chunk {
    cca_chunk *next;
    cca_block blocks[CCA_CHUNK_BLOCKS];
};

static inline cca_policy *as_cca(fli_policy *p) { return (cca_policy *)p; }
static inline cca_block *as_block(cca_node *n) { return (cca_block *)n; }

/* ---- block records and segments ---------------------------------------------- */

fl_status cca_spare(cca_policy *c, uint64_t n)
{
    if (c->n_spare >= n)
        return FL_OK;
    /* Records come in chunks so the hot path never calls malloc. */
    cca_chunk *ch = malloc(sizeof *ch);
    if (!ch)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for block records", c->base.ops->name);
    ch->next = c->chunks;
    c->chunks = ch;
    for (int i = 0; i < CCA_CHUNK_BLOCKS; i++)
        cca_block_delete(c, &ch->blocks[i]);
    return FL_OK;
}

cca_block *cca_block_new(cca_policy *c)
{
    cca_block *b = c->spare;
    c->spare = b->next;
    c->n_spare--;
    memset(b, 0, sizeof *b);
    return b;
}

void cca_block_delete(cca_policy *c, cca_block *b)
{
    b->next = c->spare;
    c->spare = b;
    c->n_spare++;
}

void cca_pool_insert(cca_block *b)
{
    cca_pool *pool = b->seg->pool;
    b->gc_base = pool->gc_calls;
    cca_set_insert(&pool->blocks, &b->node);
}

/* try_merge_blocks: folds the free neighbour src into dst (which is in no set) and
 * returns the bytes gained, 0 when src cannot merge. */
uint64_t cca_try_merge(cca_policy *c, cca_block *dst, cca_block *src)
{
    if (!src || src->allocated || src->mapped != dst->mapped)
        return 0;
    cca_pool *pool = src->seg->pool;
    cca_set_remove(src->mapped ? &pool->blocks : &pool->unmapped, &src->node);
    if (dst->prev == src) {
        dst->node.addr = src->node.addr;
        dst->prev = src->prev;
        if (dst->prev)
            dst->prev->next = dst;
        else
            dst->seg->head = dst;
    } else {
        dst->next = src->next;
        if (dst->next)
            dst->next->prev = dst;
    }
    uint64_t gained = src->node.size;
    dst->node.size += gained;
    cca_block_delete(c, src);
    return gained;
}

void cca_segment_link(cca_policy *c, cca_segment *s)
{
    s->prev_seg = NULL;
    s->next_seg = c->segments;
    if (c->segments)
        c->segments->prev_seg = s;
    c->segments = s;
    c->n_segments++;
}

void cca_segment_unlink(cca_policy *c, cca_segment *s)
{
    if (s->prev_seg)
        s->prev_seg->next_seg = s->next_seg;
    else
        c->segments = s->next_seg;
    if (s->next_seg)
        s->next_seg->prev_seg = s->prev_seg;
    c->n_segments--;
}

/* ---- sizes ------------------------------------------------------------------- */

/* get_allocation_size: how big a new segment is for a rounded request. */
static uint64_t allocation_size(uint64_t size)
{
    if (size <= CCA_SMALL_SIZE)
        return CCA_SMALL_BUFFER;
    if (size < CCA_MIN_LARGE_ALLOC)
        return CCA_LARGE_BUFFER;
    return fli_align_up(size, CCA_ROUND_LARGE);
}

static bool should_split(const cca_policy *c, const cca_block *b, uint64_t size)
{
    uint64_t remaining = b->node.size - size;
    /* Expandable segments split like the small pool: the tail can be unmapped later,
     * so a sliver costs nothing permanent. */
    if (b->seg->pool->is_small || c->expandable)
        return remaining >= CCA_MIN_BLOCK;
    return size < c->max_split && remaining > CCA_SMALL_SIZE;
}

/* PyTorch collects garbage only under a memory fraction (a limit set by the user). */
static bool gc_enabled(const cca_policy *c) { return c->base.dev->limit && c->gc_threshold > 0.0; }

/* ---- finding a cached block ---------------------------------------------------- */

/* What an expandable block could grow to by mapping the unmapped range after it. */
static uint64_t expandable_size(const cca_block *b)
{
    return b->node.size + (b->next && !b->next->mapped ? b->next->node.size : 0);
}

/* get_free_block: best fit on the same stream, with the max_split_size rules. */
static cca_block *get_free_block(cca_policy *c, cca_pool *pool, uint64_t stream, uint64_t size)
{
    if (gc_enabled(c))
        pool->gc_calls++;
    cca_node *n = cca_set_lower_bound(&pool->blocks, stream, size, 0);
    if (!n || n->stream != stream)
        return NULL;
    if (c->expandable) {
        /* PyTorch prefers, among fitting blocks, one that could not grow into the
         * unmapped space after it, stepping on while the growable size shrinks. */
        cca_node *nx;
        while ((nx = cca_set_next(&pool->blocks, n)) != NULL && nx->stream == stream &&
               expandable_size(as_block(nx)) < expandable_size(as_block(n)))
            n = nx;
    }
    if (size < c->max_split && n->size >= c->max_split)
        return NULL;
    if (size >= c->max_split && n->size >= size + CCA_LARGE_BUFFER)
        return NULL;
    cca_set_remove(&pool->blocks, n);
    return as_block(n);
}

/* ---- giving memory back ------------------------------------------------------- */

/* release_block: cudaFree of a whole, free, cudaMalloc segment. */
fl_status cca_release_block(cca_policy *c, cca_block *b)
{
    cca_segment *s = b->seg;
    fl_status st = fli_dev_mem_free(c->base.dev, s->base);
    if (st != FL_OK)
        return st;
    cca_set_remove(&s->pool->blocks, &b->node);
    cca_segment_unlink(c, s);
    cca_block_delete(c, b);
    free(s);
    return FL_OK;
}

static bool unsplit(const cca_block *b) { return cca_unsplit(b); }

/* release_available_cached_blocks: with max_split_size set, free oversize cached
 * segments of this stream, one big enough or else the largest ones until enough. */
static fl_status release_available(cca_policy *c, cca_pool *pool, uint64_t stream,
                                   uint64_t size, bool *released)
{
    *released = false;
    /* PyTorch would hand expandable blocks to release_block here and trip its assert
     * (max_split_size_mb with expandable segments, pytorch#123548): we skip instead. */
    if (c->max_split == UINT64_MAX || c->expandable)
        return FL_OK;
    uint64_t key = size < c->max_split ? c->max_split : size;
    cca_node *n = cca_set_lower_bound(&pool->blocks, stream, key, 0);
    if (n && n->stream == stream) {
        if (!unsplit(as_block(n)))
            return FL_OK;
        *released = true;
        return cca_release_block(c, as_block(n));
    }
    cca_node *it = n ? cca_set_prev(&pool->blocks, n) : cca_set_last(&pool->blocks);
    uint64_t total = 0;
    while (it && total < key && it->size >= c->max_split && it->stream == stream) {
        cca_node *cur = it;
        it = cca_set_prev(&pool->blocks, cur);
        /* Oversize free blocks are whole segments; the check only guards cudaFree. */
        if (!unsplit(as_block(cur)))
            continue;
        total += cur->size;
        fl_status st = cca_release_block(c, as_block(cur));
        if (st != FL_OK)
            return st;
    }
    *released = total >= key;
    return FL_OK;
}

/* release_cached_blocks: synchronize, then give back every segment nothing uses. */
static fl_status release_cached(cca_policy *c)
{
    fl_status st = fli_dev_synchronize(c->base.dev);
    if (st != FL_OK)
        return st;
    cca_pool *pools[2] = {&c->large, &c->small};
    for (int i = 0; i < 2; i++) {
        if (c->expandable) {
            st = cca_exp_release_pool(c, pools[i]);
        } else {
            cca_node *n = cca_set_first(&pools[i]->blocks);
            while (n && st == FL_OK) {
                cca_node *nx = cca_set_next(&pools[i]->blocks, n);
                if (unsplit(as_block(n)))
                    st = cca_release_block(c, as_block(n));
                n = nx;
            }
        }
        if (st != FL_OK)
            return st;
    }
    return FL_OK;
}

typedef struct gc_list {
    cca_block **v;
    uint64_t n;
} gc_list;

static int gc_gather(cca_node *n, void *user)
{
    gc_list *l = user;
    cca_block *b = as_block(n);
    if (unsplit(b) && !b->seg->expandable)
        l->v[l->n++] = b;
    return 0;
}

/* garbage_collect_cached_blocks: above threshold * limit, free unsplit cached large
 * blocks whose age (get_free_block calls since they were cached) is at least the
 * average, oldest-first in effect, repeating until enough is reclaimed. No sync. */
static fl_status garbage_collect(cca_policy *c)
{
    uint64_t threshold = (uint64_t)(c->gc_threshold * (double)fli_dev_limit(c->base.dev));
    uint64_t reserved = cca_reserved(c);
    if (reserved <= threshold || c->large.blocks.count == 0)
        return FL_OK;
    uint64_t target = reserved - threshold;
    gc_list l = {malloc(c->large.blocks.count * sizeof *l.v), 0};
    if (!l.v)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for garbage collection", c->base.ops->name);
    cca_set_walk(&c->large.blocks, gc_gather, &l);
    uint64_t total_age = 0, left = l.n, reclaimed = 0;
    for (uint64_t i = 0; i < l.n; i++)
        total_age += c->large.gc_calls - l.v[i]->gc_base;
    bool freed = true;
    fl_status st = FL_OK;
    while (reclaimed < target && freed && left > 0 && st == FL_OK) {
        double avg = (double)total_age / (double)left;
        freed = false;
        /* Like PyTorch, a pass does not stop at the target: GC should not rerun soon. */
        for (uint64_t i = 0; i < l.n && st == FL_OK; i++) {
            cca_block *b = l.v[i];
            if (!b)
                continue;
            uint64_t age = c->large.gc_calls - b->gc_base;
            if ((double)age < avg)
                continue;
            uint64_t bytes = b->node.size;
            st = cca_release_block(c, b);
            if (st != FL_OK)
                break;
            l.v[i] = NULL;
            freed = true;
            reclaimed += bytes;
            total_age -= age;
            left--;
        }
    }
    free(l.v);
    return st;
}

/* ---- new memory ---------------------------------------------------------------- */

/* alloc_block for cudaMalloc segments: one device allocation per segment. */
static fl_status alloc_segment(cca_policy *c, cca_pool *pool, uint64_t stream,
                               uint64_t alloc_size, cca_block **out)
{
    cca_segment *s = calloc(1, sizeof *s);
    if (!s)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for a segment", c->base.ops->name);
    uint64_t addr;
    fl_status st = fli_dev_mem_alloc(c->base.dev, alloc_size, &addr);
    if (st != FL_OK) {
        free(s);
        return st;
    }
    cca_block *b = cca_block_new(c);
    b->node.stream = stream;
    b->node.size = alloc_size;
    b->node.addr = addr;
    b->seg = s;
    b->mapped = true;
    s->head = b;
    s->pool = pool;
    s->stream = stream;
    s->base = addr;
    s->size = alloc_size;
    cca_segment_link(c, s);
    *out = b;
    return FL_OK;
}

static fl_status alloc_block(cca_policy *c, cca_pool *pool, uint64_t stream, uint64_t size,
                             uint64_t alloc_size, bool retry, cca_block **out)
{
    if (retry)
        c->base.retries++;
    /* The memory-fraction check happens before any device call, as in PyTorch: the
     * device layer refuses beyond the limit (fli_dev_limit) without asking the device. */
    if (c->expandable)
        return cca_exp_alloc(c, pool, stream, size, out);
    return alloc_segment(c, pool, stream, alloc_size, out);
}

static fl_status report_oom(cca_policy *c, uint64_t req, uint64_t alloc_size, uint64_t stream)
{
    char asked[32], cap[32], avail[32], allowed[64] = "", alloc[32], unalloc[32];
    const fl_device *d = c->base.dev;
    uint64_t reserved = cca_reserved(c);
    uint64_t free_dev = d->capacity > reserved ? d->capacity - reserved : 0;
    if (d->limit) {
        char lim[32];
        snprintf(allowed, sizeof allowed, "%s allowed; ", fl_format_size(fli_dev_limit(d), lim, sizeof lim));
    }
    c->base.ooms++;
    return fli_fail(FL_ERR_OOM,
                   "%s: out of memory. Tried to allocate %s (request of %llu bytes on stream %llu). "
                   "The device has a total capacity of %s of which %s is free. %s"
                   "Of the memory this allocator holds, %s is allocated and %s is reserved but "
                   "unallocated.%s",
                   c->base.ops->name, fl_format_size(alloc_size, asked, sizeof asked),
                   (unsigned long long)req, (unsigned long long)stream,
                   fl_format_size(d->capacity, cap, sizeof cap),
                   fl_format_size(free_dev, avail, sizeof avail), allowed,
                   fl_format_size(c->base.allocated, alloc, sizeof alloc),
                   fl_format_size(reserved - (reserved < c->base.allocated ? reserved : c->base.allocated),
                                  unalloc, sizeof unalloc),
                   c->expandable ? "" /* PyTorch suggests it even when it is on; we do not */
                                 : " If reserved but unallocated memory is large, try expandable_segments:True "
                                   "(policy cca-expandable) to avoid fragmentation.");
}

/* free_block: merge with free neighbours of the same segment, back into the pool. */
static void free_block(cca_policy *c, cca_block *b)
{
    cca_try_merge(c, b, b->prev);
    cca_try_merge(c, b, b->next);
    cca_pool_insert(b);
}

/* alloc_found_block: carve the request off the front of b, mark it allocated. */
static fl_status take_block(cca_policy *c, cca_block *b, uint64_t size, uint64_t req, uint64_t *addr)
{
    if (should_split(c, b, size)) {
        cca_block *rest = b;
        b = cca_block_new(c);
        b->node.stream = rest->node.stream;
        b->node.size = size;
        b->node.addr = rest->node.addr;
        b->seg = rest->seg;
        b->mapped = true;
        b->prev = rest->prev;
        b->next = rest;
        if (b->prev)
            b->prev->next = b;
        else
            b->seg->head = b;
        rest->prev = b;
        rest->node.addr += size;
        rest->node.size -= size;
        cca_pool_insert(rest);
    }
    FL_ASSERT(!b->allocated && b->mapped && b->node.size >= size && req <= size);
    b->allocated = true;
    b->requested = req;
    fl_status st = fli_map_put(&c->live, b->node.addr, (uint64_t)(uintptr_t)b);
    if (st != FL_OK) {
        b->allocated = false;
        free_block(c, b);
        return st;
    }
    c->base.allocated += b->node.size;
    c->base.num_allocs++;
    *addr = b->node.addr;
    return FL_OK;
}

/* ---- the policy interface ------------------------------------------------------ */

/* DeviceCachingAllocator::malloc, in PyTorch's order. */
static fl_status cca_alloc(fli_policy *p, uint64_t req, uint64_t stream, uint64_t *addr)
{
    cca_policy *c = as_cca(p);
    if (req >= CCA_MAX_REQUEST) {
        c->base.ooms++;
        return fli_fail(FL_ERR_OOM, "%s: out of memory. Tried to allocate more than 1 EiB (%llu bytes)",
                       p->ops->name, (unsigned long long)req);
    }
    /* Enough records for a split and a new segment or mapped tail: no NOMEM later. */
    fl_status st = cca_spare(c, 4);
    if (st != FL_OK)
        return st;
    uint64_t size = fli_round_request(&c->cfg, req);
    cca_pool *pool = size <= CCA_SMALL_SIZE ? &c->small : &c->large;
    uint64_t alloc_size = allocation_size(size);
    cca_block *b = get_free_block(c, pool, stream, size);
    if (!b) {
        if (gc_enabled(c) && (st = garbage_collect(c)) != FL_OK)
            return st;
        st = alloc_block(c, pool, stream, size, alloc_size, false, &b);
        if (st == FL_ERR_OOM) {
            bool released;
            st = release_available(c, pool, stream, size, &released);
            if (st == FL_OK)
                st = released ? alloc_block(c, pool, stream, size, alloc_size, false, &b) : FL_ERR_OOM;
        }
        if (st == FL_ERR_OOM) {
            st = release_cached(c);
            if (st == FL_OK)
                st = alloc_block(c, pool, stream, size, alloc_size, true, &b);
        }
        if (st == FL_ERR_OOM)
            return report_oom(c, req, alloc_size, stream);
        if (st != FL_OK)
            return st;
    }
    return take_block(c, b, size, req, addr);
}

static fl_status cca_free(fli_policy *p, uint64_t addr, uint64_t want, uint64_t *size)
{
    cca_policy *c = as_cca(p);
    uint64_t v;
    if (want && fli_map_get(&c->live, addr, &v) && ((cca_block *)(uintptr_t)v)->requested != want)
        return fli_policy_size_mismatch(addr, want, ((cca_block *)(uintptr_t)v)->requested);
    if (!fli_map_remove(&c->live, addr, &v))
        return fli_policy_not_live(p, addr);
    cca_block *b = (cca_block *)(uintptr_t)v;
    FL_ASSERT(b->allocated && b->node.addr == addr && b->node.size <= c->base.allocated);
    if (size)
        *size = b->requested;
    b->allocated = false;
    c->base.allocated -= b->node.size;
    c->base.num_frees++;
    free_block(c, b);
    return FL_OK;
}

static uint64_t cca_block_size(const fli_policy *p, uint64_t addr)
{
    uint64_t v;
    return fli_map_get(&((const cca_policy *)p)->live, addr, &v) ? ((const cca_block *)(uintptr_t)v)->requested : 0;
}

static int cca_block_stream(const fli_policy *p, uint64_t addr, uint64_t *stream)
{
    uint64_t v;
    if (!fli_map_get(&((const cca_policy *)p)->live, addr, &v))
        return 0;
    *stream = ((const cca_block *)(uintptr_t)v)->node.stream;
    return 1;
}

static fl_status cca_empty_cache(fli_policy *p)
{
    cca_policy *c = as_cca(p);
    /* Unmapping an expandable range needs two fresh records per block at most. */
    fl_status st = cca_spare(c, 4);
    return st != FL_OK ? st : release_cached(c);
}

static void cca_destroy(fli_policy *p)
{
    cca_policy *c = as_cca(p);
    if (!c)
        return;
    /* Teardown gives everything back, live blocks included, ignoring device errors. */
    for (cca_segment *s = c->segments, *nx; s; s = nx) {
        nx = s->next_seg;
        if (s->expandable)
            cca_exp_destroy_segment(c, s);
        else
            fli_dev_mem_free(c->base.dev, s->base);
        free(s->handles);
        free(s);
    }
    for (cca_chunk *ch = c->chunks, *nx; ch; ch = nx) {
        nx = ch->next;
        free(ch);
    }
    fli_map_free(&c->live);
    free(c);
}

fl_status fli_cca_check_knobs(const fl_config *cfg, const char *name)
{
    if (cfg->max_split_size && cfg->max_split_size < CCA_LARGE_BUFFER)
        return fli_fail(FL_ERR_INVALID, "%s: max_split_size %llu is below the minimum of 20 MiB", name,
                       (unsigned long long)cfg->max_split_size);
    if (!(cfg->gc_threshold >= 0.0 && cfg->gc_threshold < 1.0))
        return fli_fail(FL_ERR_INVALID, "%s: garbage_collection_threshold %g is not in [0, 1)", name,
                       cfg->gc_threshold);
    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++)
        if (cfg->roundup_divisions[i] > 1 && !fli_is_pow2(cfg->roundup_divisions[i]))
            return fli_fail(FL_ERR_INVALID, "%s: roundup_power2_divisions %u is not a power of two", name,
                           cfg->roundup_divisions[i]);
    return FL_OK;
}

static fl_status create_common(const fl_config *cfg, fl_device *dev, fli_policy **out,
                               const fli_policy_ops *ops, bool expandable)
{
    *out = NULL;
    fl_status s = fli_cca_check_knobs(cfg, ops->name);
    if (s != FL_OK)
        return s;
    if (expandable && !dev->vmm_supported)
        return fli_fail(FL_ERR_UNSUPPORTED, "%s: the device has no virtual memory management, "
                       "which expandable segments need", ops->name);
    cca_policy *c = calloc(1, sizeof *c);
    if (!c)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory", ops->name);
    c->base.ops = ops;
    c->base.dev = dev;
    c->cfg = *cfg;
    c->expandable = expandable;
    c->max_split = cfg->max_split_size ? cfg->max_split_size : UINT64_MAX;
    c->gc_threshold = cfg->gc_threshold;
    cca_set_init(&c->small.blocks, false, 0x1234567u);
    cca_set_init(&c->small.unmapped, true, 0x2345678u);
    cca_set_init(&c->large.blocks, false, 0x3456789u);
    cca_set_init(&c->large.unmapped, true, 0x456789au);
    c->small.is_small = true;
    fl_status st = fli_map_init(&c->live, 1024);
    if (st == FL_OK)
        st = cca_spare(c, 4);
    if (st != FL_OK) {
        cca_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return FL_OK;
}

static fl_status cca_create(const fl_config *cfg, fl_device *dev, fli_policy **out)
{
    return create_common(cfg, dev, out, &fli_policy_cca, false);
}

static fl_status cca_create_expandable(const fl_config *cfg, fl_device *dev, fli_policy **out)
{
    return create_common(cfg, dev, out, &fli_policy_cca_expandable, true);
}

/* ---- self-check ---------------------------------------------------------------- */

typedef struct check_totals {
    uint64_t free_blocks, unmapped_blocks, live_blocks, live_bytes, held;
} check_totals;

static int bad(const cca_policy *c, const cca_segment *s, const char *what, uint64_t addr)
{
    fli_fail(FL_ERR_INVALID, "%s check: segment 0x%llx: %s at 0x%llx", c->base.ops->name,
            (unsigned long long)s->base, what, (unsigned long long)addr);
    return 1;
}

static int check_segment(const cca_policy *c, const cca_segment *s, check_totals *t)
{
    if (!s->head || s->head->prev)
        return bad(c, s, "head block missing or not first", s->base);
    uint64_t at = s->base;
    for (const cca_block *b = s->head; b; b = b->next) {
        const uint64_t a = b->node.addr, n = b->node.size;
        if (b->seg != s)
            return bad(c, s, "block points to another segment", a);
        if (a != at)
            return bad(c, s, "blocks do not tile the segment (gap or overlap)", a);
        if (n == 0 || a % CCA_MIN_BLOCK || n % CCA_MIN_BLOCK)
            return bad(c, s, "block not a nonzero multiple of 512 bytes", a);
        if (b->next && b->next->prev != b)
            return bad(c, s, "neighbour links disagree", a);
        if (b->node.stream != s->stream)
            return bad(c, s, "block on another stream than its segment", a);
        if (!b->mapped && (!s->expandable || b->allocated))
            return bad(c, s, "unmapped block outside an expandable segment, or allocated", a);
        if (!b->allocated && b->next && !b->next->allocated && b->next->mapped == b->mapped)
            return bad(c, s, "two adjacent free blocks did not merge", a);
        if (b->allocated) {
            uint64_t v;
            if (!fli_map_get(&c->live, a, &v) || v != (uint64_t)(uintptr_t)b)
                return bad(c, s, "allocated block missing from the pointer table", a);
            t->live_blocks++;
            t->live_bytes += n;
        } else if (b->mapped) {
            if (!cca_set_contains(&s->pool->blocks, &b->node))
                return bad(c, s, "free block missing from its pool", a);
            if (b->gc_base > s->pool->gc_calls)
                return bad(c, s, "free block younger than its pool's clock", a);
            t->free_blocks++;
        } else {
            if (!cca_set_contains(&s->pool->unmapped, &b->node))
                return bad(c, s, "unmapped block missing from its pool", a);
            t->unmapped_blocks++;
        }
        at = a + n;
    }
    if (at != s->base + s->size)
        return bad(c, s, "blocks end before or after the segment", at);
    if (s->expandable) {
        uint64_t held;
        if (cca_exp_check_segment(c, s, &held))
            return 1;
        t->held += held;
    } else {
        t->held += s->size;
    }
    return 0;
}

static int cca_check(const fli_policy *p)
{
    const cca_policy *c = (const cca_policy *)p;
    const char *name = p->ops->name;
    if (cca_set_check(&c->small.blocks, "small pool") || cca_set_check(&c->large.blocks, "large pool") ||
        cca_set_check(&c->small.unmapped, "small unmapped") ||
        cca_set_check(&c->large.unmapped, "large unmapped"))
        return 1;
    check_totals t = {0};
    uint64_t segs = 0;
    for (const cca_segment *s = c->segments; s; s = s->next_seg, segs++) {
        if (s->expandable != c->expandable)
            return bad(c, s, "segment of the wrong kind", s->base);
        if (check_segment(c, s, &t))
            return 1;
    }
    if (segs != c->n_segments) {
        fli_fail(FL_ERR_INVALID, "%s check: %llu segments listed, %llu counted", name,
                (unsigned long long)segs, (unsigned long long)c->n_segments);
        return 1;
    }
    if (t.free_blocks != c->small.blocks.count + c->large.blocks.count ||
        t.unmapped_blocks != c->small.unmapped.count + c->large.unmapped.count) {
        fli_fail(FL_ERR_INVALID, "%s check: pools hold %llu free and %llu unmapped blocks, "
                "segments %llu and %llu", name,
                (unsigned long long)(c->small.blocks.count + c->large.blocks.count),
                (unsigned long long)(c->small.unmapped.count + c->large.unmapped.count),
                (unsigned long long)t.free_blocks, (unsigned long long)t.unmapped_blocks);
        return 1;
    }
    if (t.live_blocks != c->live.count || t.live_bytes != c->base.allocated) {
        fli_fail(FL_ERR_INVALID, "%s check: %llu live blocks of %llu bytes in segments, pointer "
                "table has %llu, allocated says %llu bytes", name,
                (unsigned long long)t.live_blocks, (unsigned long long)t.live_bytes,
                (unsigned long long)c->live.count, (unsigned long long)c->base.allocated);
        return 1;
    }
    /* The device may serve others too, so what we hold is a lower bound of its in_use. */
    if (t.held > cca_reserved(c)) {
        fli_fail(FL_ERR_INVALID, "%s check: segments hold %llu bytes but the device has %llu in use",
                name, (unsigned long long)t.held, (unsigned long long)cca_reserved(c));
        return 1;
    }
    return 0;
}


/* Free mapped blocks: PyTorch's "reserved but unallocated", and the largest of them
 * (on any stream; what one stream could reuse may be less). */
static void cca_query(const fli_policy *p, fli_policy_state *out)
{
    const cca_policy *c = (const cca_policy *)p;
    memset(out, 0, sizeof *out);
    for (const cca_segment *s = c->segments; s; s = s->next_seg)
        for (const cca_block *b = s->head; b; b = b->next)
            if (!b->allocated && b->mapped) {
                out->free_in_reserved += b->node.size;
                if (b->node.size > out->largest_free)
                    out->largest_free = b->node.size;
                /* Cached: a whole free segment, or the whole pages a free block covers. */
                if (!s->expandable)
                    out->cached += unsplit(b) ? b->node.size : 0;
                else {
                    uint64_t lo = fli_align_up(b->node.addr - s->base, s->page);
                    uint64_t hi = fli_align_down(b->node.addr + b->node.size - s->base, s->page);
                    out->cached += hi > lo ? hi - lo : 0;
                }
            }
}

/* Segments in list order; an expandable segment's pages up to the highest mapped one,
 * each with the live blocks touching it; mapped blocks (unmapped ranges are left out). */
static void cca_walk(const fli_policy *p, const fli_state_visitor *v)
{
    const cca_policy *c = (const cca_policy *)p;
    for (const cca_segment *s = c->segments; s; s = s->next_seg) {
        if (v->region)
            v->region(v->user, s->base, s->size, s->stream, s->expandable ? "expandable segment" : "segment");
        if (v->page && s->expandable && s->n_handles) {
            uint32_t *pins = calloc(s->n_handles, sizeof *pins);
            if (pins) /* without host memory the pages are left out, never wrong */
                for (const cca_block *b = s->head; b; b = b->next)
                    if (b->allocated)
                        for (uint64_t i = (b->node.addr - s->base) / s->page;
                             i < s->n_handles && i * s->page < b->node.addr + b->node.size - s->base; i++)
                            pins[i]++;
            for (uint64_t i = 0; pins && i < s->n_handles; i++)
                v->page(v->user, s->base + i * s->page, s->page, s->handles[i] != CCA_NO_HANDLE, pins[i]);
            free(pins);
        }
        if (v->block)
            for (const cca_block *b = s->head; b; b = b->next)
                if (b->mapped)
                    v->block(v->user, b->node.addr, b->node.size, b->allocated);
    }
}

const fli_policy_ops fli_policy_cca = {
    .name = "cca",
    .reset_destroys = 1,
    .create = cca_create,
    .destroy = cca_destroy,
    .alloc = cca_alloc,
    .free = cca_free,
    .block_size = cca_block_size,
    .block_stream = cca_block_stream,
    .empty_cache = cca_empty_cache,
    .check = cca_check,
    .query = cca_query,
    .walk = cca_walk,
    .seed = cca_seed,
    .release = cca_release,
};

const fli_policy_ops fli_policy_cca_expandable = {
    .name = "cca-expandable",
    .create = cca_create_expandable,
    .destroy = cca_destroy,
    .alloc = cca_alloc,
    .free = cca_free,
    .block_size = cca_block_size,
    .block_stream = cca_block_stream,
    .empty_cache = cca_empty_cache,
    .check = cca_check,
    .query = cca_query,
    .walk = cca_walk,
    .seed = cca_seed,
    .release = cca_release,
};
