/* The allocator object of the C API: one policy on one device, with the statistics
 * adaptor (peaks, counts) every frontend reports and the trace recorder (trace:PATH).
 * Safe from many threads: one lock per allocator, so per device (policies and devices
 * themselves are single-threaded). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "policy/policy.h"
#include "trace/trace.h"

struct fl_allocator {
    pthread_mutex_t lock;
    fl_policy *policy;
    uint64_t peak_allocated;
    /* Trace recording: rows in RMM's CSV format, the sizes of live blocks (free rows
     * carry them, as RMM's do) and the start time. A process killed mid-run leaves
     * whole lines up to the last flush and at most one cut line, which the reader
     * accepts with a warning. */
    FILE *trace;
    fl_map trace_sizes, trace_streams;
    uint64_t trace_t0;
};

static void trace_row(fl_allocator *a, int kind, uint64_t ptr, uint64_t size, uint64_t stream)
{
    fl_event e = {0};
    e.kind = (uint8_t)kind;
    e.ptr = ptr;
    e.size = size;
    e.stream = stream;
    e.thread = (uint64_t)syscall(SYS_gettid);
    e.time_us = (fl_now_ns() - a->trace_t0) / 1000;
    char row[160];
    int n = fl_trace_format_row(row, sizeof row, &e);
    if (n > 0)
        fprintf(a->trace, "%s\n", row);
}

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
    if (cfg->trace_path[0]) {
        a->trace = fopen(cfg->trace_path, "w");
        if (!a->trace || fl_map_init(&a->trace_sizes, 1024) != FL_OK ||
            fl_map_init(&a->trace_streams, 1024) != FL_OK) {
            fl_map_free(&a->trace_sizes);
            s = a->trace ? FL_ERR_NOMEM : fl_fail(FL_ERR_IO, "trace:%s: cannot open: %s", cfg->trace_path, strerror(errno));
            if (a->trace)
                fclose(a->trace);
            a->policy->ops->destroy(a->policy);
            free(a);
            return s;
        }
        fprintf(a->trace, "Thread,Time,Action,Pointer,Size,Stream\n");
        a->trace_t0 = fl_now_ns();
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
    if (a->trace) {
        fclose(a->trace);
        fl_map_free(&a->trace_sizes);
        fl_map_free(&a->trace_streams);
    }
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
    if (a->trace) {
        trace_row(a, s == FL_OK ? FL_EV_ALLOC : FL_EV_ALLOC_FAIL, s == FL_OK ? *addr : 0, size, stream);
        /* On host OOM here, the free row says size 0 / stream 0: the trace stays readable. */
        if (s == FL_OK && fl_map_put(&a->trace_sizes, *addr, size) == FL_OK)
            fl_map_put(&a->trace_streams, *addr, stream);
    }
    pthread_mutex_unlock(&a->lock);
    return s;
}

fl_status fl_free(fl_allocator *a, uint64_t addr)
{
    pthread_mutex_lock(&a->lock);
    fl_status s = a->policy->ops->free(a->policy, addr);
    if (a->trace && s == FL_OK) {
        uint64_t size = 0, stream = 0;
        fl_map_remove(&a->trace_sizes, addr, &size);
        fl_map_remove(&a->trace_streams, addr, &stream);
        trace_row(a, FL_EV_FREE, addr, size, stream);
    }
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

fl_status fl_set_limit(fl_allocator *a, uint64_t bytes)
{
    if (!a->policy->ops->set_limit)
        return fl_fail(FL_ERR_UNSUPPORTED, "policy %s has no limit to set", a->policy->ops->name);
    pthread_mutex_lock(&a->lock);
    fl_status s = a->policy->ops->set_limit(a->policy, bytes);
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
