/* The allocator object of the C API: one policy on one device, with the statistics
 * adaptor (peaks, counts) every frontend reports. Safe from many threads: one lock per
 * allocator, so per device (policies and devices themselves are single-threaded). */
#include <pthread.h>
#include <stdlib.h>

#include "policy/policy.h"

struct fl_allocator {
    pthread_mutex_t lock;
    fl_policy *policy;
    uint64_t peak_allocated;
};

fl_status fl_allocator_create(const fl_config *cfg, fl_device *dev, fl_allocator **out)
{
    *out = NULL;
    fl_allocator *a = calloc(1, sizeof *a);
    if (!a)
        return fl_fail(FL_ERR_NOMEM, "allocator: host memory");
    fl_status s = fl_policy_create(cfg, dev, &a->policy);
    if (s != FL_OK) {
        free(a);
        return s;
    }
    pthread_mutex_init(&a->lock, NULL);
    *out = a;
    return FL_OK;
}

void fl_allocator_destroy(fl_allocator *a)
{
    if (!a)
        return;
    a->policy->ops->destroy(a->policy);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

fl_status fl_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (size == 0)
        return fl_fail(FL_ERR_INVALID, "fl_alloc: size 0");
    pthread_mutex_lock(&a->lock);
    fl_status s = a->policy->ops->alloc(a->policy, size, stream, addr);
    if (s == FL_OK && a->policy->allocated > a->peak_allocated)
        a->peak_allocated = a->policy->allocated;
    pthread_mutex_unlock(&a->lock);
    return s;
}

fl_status fl_free(fl_allocator *a, uint64_t addr)
{
    pthread_mutex_lock(&a->lock);
    fl_status s = a->policy->ops->free(a->policy, addr);
    pthread_mutex_unlock(&a->lock);
    return s;
}

fl_status fl_empty_cache(fl_allocator *a)
{
    pthread_mutex_lock(&a->lock);
    fl_status s = a->policy->ops->empty_cache(a->policy);
    pthread_mutex_unlock(&a->lock);
    return s;
}

void fl_get_stats(const fl_allocator *a, fl_stats *out)
{
    /* The lock is taken through a cast: reading statistics does not change the
     * allocator, but must not see a half-done allocation. */
    pthread_mutex_t *lock = &((fl_allocator *)a)->lock;
    pthread_mutex_lock(lock);
    const fl_policy *p = a->policy;
    out->allocated_bytes = p->allocated;
    out->reserved_bytes = p->dev->counters.in_use;
    out->peak_allocated_bytes = a->peak_allocated;
    out->peak_reserved_bytes = p->dev->counters.peak_in_use;
    out->num_allocs = p->num_allocs;
    out->num_frees = p->num_frees;
    out->num_alloc_retries = p->retries;
    out->num_ooms = p->ooms;
    pthread_mutex_unlock(lock);
}

int fl_allocator_check(const fl_allocator *a)
{
    pthread_mutex_t *lock = &((fl_allocator *)a)->lock;
    pthread_mutex_lock(lock);
    int r = a->policy->ops->check(a->policy);
    pthread_mutex_unlock(lock);
    return r;
}
