/* registrable:SIZE — a layer over any policy: every block of at least SIZE bytes gets a
 * physical allocation of its own (the block rounded up to pages), mapped at an address of
 * its own; smaller blocks go to the policy underneath. Such a block is one range to
 * cuMemGetAddressRange, so NCCL's user-buffer registration, ibverbs / dmabuf registration
 * and fl_export take it whole (a block over many one-page handles is seen as its first
 * page only).
 *
 * The price is fungibility: a handle serves only blocks of about its size. A freed block
 * stays mapped, cached for its stream, and serves a later block of its size or up to an
 * eighth smaller; under pressure (a create or the inner policy out of memory) every cached
 * block is given back after one synchronize, then the inner policy's cache. The memory
 * this costs on the shared traces is in docs/ARCHITECTURE.md. */
#include "policy/policy.h"

#include <stdlib.h>
#include <string.h>

typedef struct rg_block {
    uint64_t va, size;            /* size: the handle's, whole pages */
    uint64_t handle, stream;
    uint64_t requested;           /* 0: cached (freed, still mapped) */
} rg_block;

typedef struct rg_policy {
    fli_policy base;
    fli_policy_ops ops;            /* our functions under the inner policy's name */
    fli_policy *inner;
    uint64_t threshold, gran;
    uint64_t va, va_size;         /* one reservation, made at the first large block */
    fl_range *range;              /* where blocks sit in it */
    rg_block *blocks;             /* live and cached, in no order */
    uint32_t n_blocks, cap_blocks;
    fli_map where;                 /* block address -> index in blocks */
    uint64_t live_bytes, cached_bytes;
    uint64_t allocs, frees, retries, ooms;
} rg_policy;

static inline rg_policy *as_rg(fli_policy *p) { return (rg_policy *)p; }

/* The allocator object reads the counters of the policy it holds: ours are the inner
 * policy's plus the large blocks'. A request that failed counts once, on whichever side. */
static void sync_counts(rg_policy *r)
{
    const fli_policy *in = r->inner;
    r->base.allocated = in->allocated + r->live_bytes;
    r->base.num_allocs = in->num_allocs + r->allocs;
    r->base.num_frees = in->num_frees + r->frees;
    r->base.retries = in->retries + r->retries;
    r->base.ooms = r->ooms;
}

/* A cached block may serve a request this much smaller than itself. */
static inline uint64_t slack(uint64_t need) { return need / 8; }

static void remove_block(rg_policy *r, uint32_t i)
{
    fli_map_remove(&r->where, r->blocks[i].va, NULL);
    uint32_t last = --r->n_blocks;
    if (i != last) {
        r->blocks[i] = r->blocks[last];
        fli_map_put(&r->where, r->blocks[i].va, i); /* the key exists: overwriting needs no memory */
    }
}

/* Gives every cached block back to the device, after a synchronize: a block freed on a
 * stream may still be used by work queued there. */
static fl_status release_cached(rg_policy *r)
{
    if (!r->cached_bytes)
        return FL_OK;
    fl_device *d = r->base.dev;
    fl_status s = fli_dev_synchronize(d);
    if (s != FL_OK)
        return s;
    for (uint32_t i = 0; i < r->n_blocks;) {
        rg_block b = r->blocks[i];
        if (b.requested) {
            i++;
            continue;
        }
        if ((s = fli_dev_unmap(d, b.va, b.size)) != FL_OK)
            return s; /* the block stays cached, mapped as it was */
        /* Unmapped, the block is gone whatever the release says: a failed release keeps
         * the handle's memory counted by the device (in_use), which is the truth. */
        fli_dev_release(d, b.handle);
        fl_range_free(r->range, b.va - r->va);
        r->cached_bytes -= b.size;
        remove_block(r, i);
    }
    /* The inner policy may have stopped creating when the device was full of our cache
     * (fragless does): there is room again. */
    return r->inner->ops->limit_changed ? r->inner->ops->limit_changed(r->inner) : FL_OK;
}

/* The smallest cached block of this stream that holds need bytes and wastes at most
 * slack(need); -1 if none. Large blocks are few: a scan is cheap next to a cuMemCreate. */
static int64_t find_cached(const rg_policy *r, uint64_t need, uint64_t stream)
{
    int64_t best = -1;
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        const rg_block *b = &r->blocks[i];
        if (!b->requested && b->stream == stream && b->size >= need && b->size - need <= slack(need) &&
            (best < 0 || b->size < r->blocks[best].size))
            best = i;
    }
    return best;
}

static fl_status reserve(rg_policy *r)
{
    fl_device *d = r->base.dev;
    /* As the fragless heaps: twice the device's memory, 256 TiB at most. */
    uint64_t want = d->capacity / r->gran * r->gran * 2, cap = UINT64_C(1) << 48;
    uint64_t size = fli_align_up(want && want < cap ? want : cap, r->gran);
    fl_status s = fli_dev_reserve(d, size, &r->va);
    if (s != FL_OK)
        return s;
    if ((s = fl_range_create(size, r->gran, &r->range)) != FL_OK) {
        fli_dev_addr_free(d, r->va, size);
        return s;
    }
    r->va_size = size;
    return FL_OK;
}

/* A new block: address range, handle, mapping, access; undone on any failure. */
static fl_status new_block(rg_policy *r, uint64_t need, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fl_device *d = r->base.dev;
    fl_status s;
    if (!r->range && (s = reserve(r)) != FL_OK)
        return s;
    if (r->n_blocks == r->cap_blocks) {
        uint32_t cap = r->cap_blocks ? 2 * r->cap_blocks : 16;
        rg_block *v = realloc(r->blocks, cap * sizeof *v);
        if (!v)
            return fli_fail(FL_ERR_NOMEM, "registrable: host memory for block records");
        r->blocks = v;
        r->cap_blocks = cap;
    }
    uint64_t off, h, va;
    if (fl_range_alloc(r->range, need, 0, &off) != FL_OK)
        return fli_fail(FL_ERR_OOM, "registrable: no address range of %llu bytes left in the reservation",
                       (unsigned long long)need);
    va = r->va + off;
    if ((s = fli_dev_create(d, need, &h)) != FL_OK)
        goto unplace;
    if ((s = fli_dev_map(d, va, need, h)) != FL_OK)
        goto unhandle;
    if ((s = fli_dev_set_access(d, va, need)) != FL_OK)
        goto unmap;
    if ((s = fli_map_put(&r->where, va, r->n_blocks)) != FL_OK)
        goto unmap;
    r->blocks[r->n_blocks++] = (rg_block){va, need, h, stream, size};
    *addr = va;
    return FL_OK;
unmap:
    fli_dev_unmap(d, va, need);
unhandle:
    fli_dev_release(d, h);
unplace:
    fl_range_free(r->range, off);
    return s;
}

static fl_status whole_alloc(rg_policy *r, uint64_t size, uint64_t stream, uint64_t *addr)
{
    uint64_t need = fli_align_up(size, r->gran);
    if (need < size)
        return fli_fail(FL_ERR_OOM, "registrable: %llu bytes cannot be rounded to pages", (unsigned long long)size);
    int64_t i = find_cached(r, need, stream);
    fl_status s = FL_OK;
    if (i < 0) {
        s = new_block(r, need, size, stream, addr);
        /* Short of memory: the cached blocks first, then what the inner policy caches. */
        if (s == FL_ERR_OOM && r->cached_bytes && release_cached(r) == FL_OK) {
            r->retries++;
            s = new_block(r, need, size, stream, addr);
        }
        if (s == FL_ERR_OOM && r->inner->ops->empty_cache(r->inner) == FL_OK) {
            r->retries++;
            s = new_block(r, need, size, stream, addr);
        }
        if (s != FL_OK)
            return s;
        i = r->n_blocks - 1; /* new_block appends */
    } else {
        rg_block *b = &r->blocks[i];
        b->requested = size;
        r->cached_bytes -= b->size;
        *addr = b->va;
    }
    r->live_bytes += r->blocks[i].size;
    r->allocs++;
    return FL_OK;
}

static fl_status rg_alloc(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *addr)
{
    rg_policy *r = as_rg(p);
    fl_status s;
    if (size >= r->threshold) {
        s = whole_alloc(r, size, stream, addr);
    } else {
        s = r->inner->ops->alloc(r->inner, size, stream, addr);
        /* The inner policy ran short while we cache memory it could use. */
        if (s == FL_ERR_OOM && r->cached_bytes && release_cached(r) == FL_OK) {
            r->retries++;
            s = r->inner->ops->alloc(r->inner, size, stream, addr);
        }
    }
    if (s == FL_ERR_OOM)
        r->ooms++;
    sync_counts(r);
    return s;
}

static fl_status rg_free(fli_policy *p, uint64_t addr, uint64_t want, uint64_t *size)
{
    rg_policy *r = as_rg(p);
    uint64_t i;
    if (!fli_map_get(&r->where, addr, &i)) {
        fl_status s = r->inner->ops->free(r->inner, addr, want, size);
        sync_counts(r);
        return s;
    }
    rg_block *b = &r->blocks[i];
    if (!b->requested)
        return fli_policy_not_live(p, addr);
    if (want && want != b->requested)
        return fli_policy_size_mismatch(addr, want, b->requested);
    if (size)
        *size = b->requested;
    b->requested = 0;
    r->live_bytes -= b->size;
    r->cached_bytes += b->size;
    r->frees++;
    sync_counts(r);
    return FL_OK;
}

static uint64_t rg_block_size(const fli_policy *p, uint64_t addr)
{
    const rg_policy *r = (const rg_policy *)p;
    uint64_t i;
    if (fli_map_get(&r->where, addr, &i))
        return r->blocks[i].requested;
    return r->inner->ops->block_size(r->inner, addr);
}

static int rg_block_stream(const fli_policy *p, uint64_t addr, uint64_t *stream)
{
    const rg_policy *r = (const rg_policy *)p;
    uint64_t i;
    if (fli_map_get(&r->where, addr, &i)) {
        if (!r->blocks[i].requested)
            return 0;
        *stream = r->blocks[i].stream;
        return 1;
    }
    if (r->inner->ops->block_stream)
        return r->inner->ops->block_stream(r->inner, addr, stream);
    return r->inner->ops->block_size(r->inner, addr) ? -1 : 0;
}

static fl_status rg_empty_cache(fli_policy *p)
{
    rg_policy *r = as_rg(p);
    fl_status s = release_cached(r);
    if (s == FL_OK)
        s = r->inner->ops->empty_cache(r->inner);
    sync_counts(r);
    return s;
}

static fl_status rg_limit_changed(fli_policy *p)
{
    rg_policy *r = as_rg(p);
    fl_status s = FL_OK;
    if (p->dev->counters.in_use > fli_dev_limit(p->dev))
        s = release_cached(r);
    if (s == FL_OK && r->inner->ops->limit_changed)
        s = r->inner->ops->limit_changed(r->inner);
    sync_counts(r);
    return s;
}

static void rg_query(const fli_policy *p, fli_policy_state *out)
{
    const rg_policy *r = (const rg_policy *)p;
    r->inner->ops->query(r->inner, out);
    uint64_t largest = 0;
    for (uint32_t i = 0; i < r->n_blocks; i++)
        if (!r->blocks[i].requested && r->blocks[i].size > largest)
            largest = r->blocks[i].size;
    out->free_in_reserved += r->cached_bytes;
    out->cached += r->cached_bytes;
    if (largest > out->largest_free)
        out->largest_free = largest;
}

/* The inner policy's regions, then one region per large block: its pages (all mapped,
 * pinned while it is live) and the block, with the unused end of its last page free. */
static void rg_walk(const fli_policy *p, const fli_state_visitor *v)
{
    const rg_policy *r = (const rg_policy *)p;
    r->inner->ops->walk(r->inner, v);
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        const rg_block *b = &r->blocks[i];
        uint64_t used = b->requested ? fli_align_up(b->requested, 512) : 0;
        if (v->region)
            v->region(v->user, b->va, b->size, b->stream, "registrable block");
        for (uint64_t at = 0; v->page && at < b->size; at += r->gran)
            v->page(v->user, b->va + at, r->gran, 1, b->requested ? 1 : 0);
        if (v->block && used)
            v->block(v->user, b->va, used, 1);
        if (v->block && used < b->size)
            v->block(v->user, b->va + used, b->size - used, 0);
    }
}

static int rg_check(const fli_policy *p)
{
    const rg_policy *r = (const rg_policy *)p;
    if (r->inner->ops->check(r->inner))
        return 1;
    uint64_t live = 0, cached = 0;
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        const rg_block *b = &r->blocks[i];
        uint64_t at;
        if (!fli_map_get(&r->where, b->va, &at) || at != i || b->va % r->gran || b->size % r->gran ||
            b->va < r->va || b->va + b->size > r->va + r->va_size || b->requested > b->size ||
            fl_range_block_size(r->range, b->va - r->va) != b->size ||
            (b->requested && fli_align_up(b->requested, r->gran) != b->size && b->size - fli_align_up(b->requested, r->gran) > slack(fli_align_up(b->requested, r->gran)))) {
            fli_fail(FL_ERR_INVALID, "registrable check: block %u at 0x%llx (%llu bytes, %llu asked) is misplaced, "
                    "misaligned or not listed", i, (unsigned long long)b->va, (unsigned long long)b->size,
                    (unsigned long long)b->requested);
            return 1;
        }
        *(b->requested ? &live : &cached) += b->size;
    }
    if (live != r->live_bytes || cached != r->cached_bytes || r->where.count != r->n_blocks ||
        (r->range && fl_range_live_blocks(r->range) != r->n_blocks) ||
        p->allocated != r->inner->allocated + r->live_bytes) {
        fli_fail(FL_ERR_INVALID, "registrable check: blocks hold %llu live and %llu cached bytes, the counts say %llu "
                "and %llu", (unsigned long long)live, (unsigned long long)cached, (unsigned long long)r->live_bytes,
                (unsigned long long)r->cached_bytes);
        return 1;
    }
    return r->range ? fl_range_check(r->range) : 0;
}

static void rg_destroy(fli_policy *p)
{
    rg_policy *r = as_rg(p);
    fl_device *d = p->dev;
    /* Teardown gives everything back; errors have no one to go to. */
    if (r->n_blocks)
        fli_dev_synchronize(d);
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        fli_dev_unmap(d, r->blocks[i].va, r->blocks[i].size);
        fli_dev_release(d, r->blocks[i].handle);
    }
    if (r->range) {
        fli_dev_addr_free(d, r->va, r->va_size);
        fl_range_destroy(r->range);
    }
    fli_map_free(&r->where);
    free(r->blocks);
    if (r->inner)
        r->inner->ops->destroy(r->inner);
    free(r);
}

fl_status fli_policy_registrable(const fl_config *cfg, fli_policy *inner, fli_policy **out)
{
    *out = NULL;
    fl_device *d = inner->dev;
    if (!d->vmm_supported) {
        inner->ops->destroy(inner);
        return fli_fail(FL_ERR_UNSUPPORTED, "registrable:%llu: the device has no virtual memory management",
                       (unsigned long long)cfg->registrable);
    }
    rg_policy *r = calloc(1, sizeof *r);
    if (!r || fli_map_init(&r->where, 64) != FL_OK) {
        free(r);
        inner->ops->destroy(inner);
        return fli_fail(FL_ERR_NOMEM, "registrable: host memory");
    }
    r->ops = (fli_policy_ops){
        .name = inner->ops->name,
        .create = NULL, /* made by fli_policy_create, over the policy cfg names */
        .destroy = rg_destroy,
        .alloc = rg_alloc,
        .free = rg_free,
        .block_size = rg_block_size,
        .block_stream = rg_block_stream,
        .empty_cache = rg_empty_cache,
        .check = rg_check,
        .query = rg_query,
        .limit_changed = rg_limit_changed,
        .walk = rg_walk,
    };
    r->base.ops = &r->ops;
    r->base.dev = d;
    r->inner = inner;
    r->threshold = cfg->registrable;
    r->gran = d->granularity;
    sync_counts(r);
    *out = &r->base;
    return FL_OK;
}
