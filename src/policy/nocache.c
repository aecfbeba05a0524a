/* Policy "nocache": no caching at all, like PYTORCH_NO_CUDA_MEMORY_CACHING=1. Every
 * request (rounded to 512 B) is one device allocation and every free one device free;
 * cudaFree synchronizes, so streams need no bookkeeping. */
#include "policy/policy.h"

#include <stdlib.h>

typedef struct nocache_policy {
    fli_policy base;
    fli_map live;                   /* address -> requested size (rounded: fli_round_request) */
} nocache_policy;

static inline nocache_policy *as_nocache(fli_policy *p) { return (nocache_policy *)p; }

static void nocache_destroy(fli_policy *p)
{
    nocache_policy *n = as_nocache(p);
    if (!n)
        return;
    /* Teardown returns what is still live; device errors cannot be reported here. */
    if (n->live.e)
        for (uint64_t i = 0; i <= n->live.mask; i++)
            if (n->live.e[i].key != UINT64_MAX)
                fli_dev_mem_free(p->dev, n->live.e[i].key);
    fli_map_free(&n->live);
    free(n);
}

static fl_status nocache_create(const fl_config *cfg, fl_device *dev, fli_policy **out)
{
    /* No knobs: the device (and the limit its layer enforces) decides everything. */
    (void)cfg;
    *out = NULL;
    nocache_policy *n = calloc(1, sizeof *n);
    if (!n)
        return fli_fail(FL_ERR_NOMEM, "nocache: no host memory");
    n->base.ops = &fli_policy_nocache;
    n->base.dev = dev;
    fl_status st = fli_map_init(&n->live, 16); /* grows; the self-check scans it */
    if (st != FL_OK) {
        free(n);
        return st;
    }
    *out = &n->base;
    return FL_OK;
}

static fl_status nocache_alloc(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *addr)
{
    nocache_policy *n = as_nocache(p);
    (void)stream;
    uint64_t bytes = fli_round_request(NULL, size);
    uint64_t a;
    fl_status st = fli_dev_mem_alloc(p->dev, bytes, &a); /* the device layer owns the limit */
    if (st != FL_OK) {
        if (st == FL_ERR_OOM) {
            char asked[32], used[32];
            p->ooms++;
            return fli_fail(FL_ERR_OOM, "nocache: out of memory. Tried to allocate %s; %s of "
                           "device memory is allocated and nothing is cached",
                           fl_format_size(bytes, asked, sizeof asked),
                           fl_format_size(p->allocated, used, sizeof used));
        }
        return st;
    }
    if ((st = fli_map_put(&n->live, a, size)) != FL_OK) {
        fli_dev_mem_free(p->dev, a);
        return st;
    }
    p->allocated += bytes;
    p->num_allocs++;
    *addr = a;
    return FL_OK;
}

static fl_status nocache_free(fli_policy *p, uint64_t addr, uint64_t want, uint64_t *size)
{
    nocache_policy *n = as_nocache(p);
    uint64_t req;
    if (!fli_map_get(&n->live, addr, &req))
        return fli_policy_not_live(p, addr);
    if (want && want != req)
        return fli_policy_size_mismatch(addr, want, req);
    fl_status st = fli_dev_mem_free(p->dev, addr);
    if (st != FL_OK)
        return st;
    fli_map_remove(&n->live, addr, NULL);
    FL_ASSERT(fli_round_request(NULL, req) <= p->allocated);
    p->allocated -= fli_round_request(NULL, req);
    p->num_frees++;
    if (size)
        *size = req;
    return FL_OK;
}

static uint64_t nocache_block_size(const fli_policy *p, uint64_t addr)
{
    uint64_t req;
    return fli_map_get(&((const nocache_policy *)p)->live, addr, &req) ? req : 0;
}

static fl_status nocache_empty_cache(fli_policy *p)
{
    (void)p; /* nothing is ever cached */
    return FL_OK;
}

static int nocache_check(const fli_policy *p)
{
    const nocache_policy *n = (const nocache_policy *)p;
    uint64_t sum = 0, count = 0;
    for (uint64_t i = 0; i <= n->live.mask; i++) {
        if (n->live.e[i].key == UINT64_MAX)
            continue;
        if (n->live.e[i].key % 512 || n->live.e[i].val == 0) {
            fli_fail(FL_ERR_INVALID, "nocache check: block 0x%llx of %llu bytes is not 512-aligned or empty",
                    (unsigned long long)n->live.e[i].key, (unsigned long long)n->live.e[i].val);
            return 1;
        }
        sum += fli_round_request(NULL, n->live.e[i].val);
        count++;
    }
    if (count != n->live.count || sum != p->allocated) {
        fli_fail(FL_ERR_INVALID, "nocache check: %llu live blocks of %llu bytes, counted %llu "
                "and allocated says %llu", (unsigned long long)count, (unsigned long long)sum,
                (unsigned long long)n->live.count, (unsigned long long)p->allocated);
        return 1;
    }
    if (sum > p->dev->counters.in_use) {
        fli_fail(FL_ERR_INVALID, "nocache check: %llu bytes live but the device has %llu in use",
                (unsigned long long)sum, (unsigned long long)p->dev->counters.in_use);
        return 1;
    }
    return 0;
}

/* Nothing is ever held beyond the live blocks. */
static void nocache_query(const fli_policy *p, fli_policy_state *out)
{
    (void)p;
    out->free_in_reserved = 0;
    out->largest_free = 0;
    out->cached = 0;
}

/* Each live block is its own device allocation (in hash order, not address order). */
static void nocache_walk(const fli_policy *p, const fli_state_visitor *v)
{
    const nocache_policy *n = (const nocache_policy *)p;
    for (uint64_t i = 0; n->live.e && i <= n->live.mask; i++) {
        if (n->live.e[i].key == UINT64_MAX)
            continue;
        if (v->region)
            v->region(v->user, n->live.e[i].key, fli_round_request(NULL, n->live.e[i].val), 0, "block");
        if (v->block)
            v->block(v->user, n->live.e[i].key, fli_round_request(NULL, n->live.e[i].val), 1);
    }
}

const fli_policy_ops fli_policy_nocache = {
    .name = "nocache",
    .reset_destroys = 1,
    .create = nocache_create,
    .destroy = nocache_destroy,
    .alloc = nocache_alloc,
    .free = nocache_free,
    .block_size = nocache_block_size,
    .empty_cache = nocache_empty_cache,
    .check = nocache_check,
    .query = nocache_query,
    .walk = nocache_walk,
};
