/* The allocator object of the C API: one policy on one device, with the statistics
 * every frontend reports, the out-of-memory report, the state snapshot, the publisher
 * for `fragless top` and the trace recorder (trace:PATH). Safe from many threads: one
 * lock per allocator, so per device (policies and devices themselves are
 * single-threaded). The policy keeps every live block's requested size (no second
 * table here): it refuses frees of unknown pointers and of a wrong size, and gives the
 * size back at the free, so requested_bytes is exact. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "util/lock.h"
#include "trace/trace.h"

/* The trace is flushed at least this often. */
#define TRACE_FLUSH_NS (100 * 1000 * 1000)
/* Statistics for `fragless top`: the policy's query is refreshed at most this often. */
#define PUBLISH_EVERY_NS (50 * 1000 * 1000)

#define MAX_USES 8

typedef struct stream_uses {
    uint32_t n;
    uint64_t stream[MAX_USES];
} stream_uses;

typedef struct pending_free {
    uint64_t addr;
    uint32_t n;
    uint64_t event[MAX_USES];
} pending_free;

struct fl_allocator {
    fl_lock lock;
    fl_policy *policy;
    fl_config cfg;              /* as created; the limit lives on the device (fl_dev_limit) */
    /* Statistics beyond the policy's own counters. The totals allocated are not kept:
     * allocated_bytes' is the policy's allocated + freed_total, requested_bytes' is
     * req_current + req_freed (every byte allocated is still live or was freed). */
    uint64_t peak_allocated, freed_total;
    uint64_t req_peak, req_current, req_freed;
    uint64_t blocks_peak;
    uint64_t live512;           /* live bytes, each request rounded up to 512 B */
    uint64_t inactive_split_peak;
    /* The latest out-of-memory report; the first one is printed and snapshotted. */
    fl_oom_report oom;
    int has_oom, oom_reported;
    fl_publisher *pub;
    uint64_t published_ns;
    fl_policy_state last_query; /* the policy's answer at the last full statistics */
    /* record_stream: streams besides its own that a live block is used on (address ->
     * stream_uses *), and blocks freed while such streams may still use them, waiting
     * for the events recorded on those streams at the free. */
    fl_map uses;
    pending_free *pending;
    uint32_t n_pending, cap_pending;
    /* Trace recording: rows in RMM's CSV format, the streams of live blocks (free rows
     * carry them, as RMM's do) and the start time. A process killed mid-run leaves
     * whole lines up to the last flush (at most TRACE_FLUSH_NS ago) and at most one cut
     * line, which the reader accepts with a warning. */
    FILE *trace;
    fl_map trace_streams;
    uint64_t trace_t0, trace_flushed_ns;
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
    /* Flushed at least every TRACE_FLUSH_NS: a killed process loses at most that much. */
    uint64_t now = e.time_us * 1000;
    if (now - a->trace_flushed_ns >= TRACE_FLUSH_NS) {
        fflush(a->trace);
        a->trace_flushed_ns = now;
    }
}

fl_status fl_allocator_create(const fl_config *cfg, fl_device *dev, fl_allocator **out)
{
    *out = NULL;
    fl_allocator *a = calloc(1, sizeof *a);
    if (!a)
        return fl_fail(FL_ERR_NOMEM, "allocator: host memory");
    a->cfg = *cfg;
    fl_status s = fl_map_init(&a->uses, 16);
    if (s == FL_OK)
        s = fl_policy_create(cfg, dev, &a->policy);
    if (s == FL_OK && cfg->trace_path[0]) {
        a->trace = fopen(cfg->trace_path, "w");
        if (!a->trace)
            s = fl_fail(FL_ERR_IO, "trace:%s: cannot open: %s", cfg->trace_path, strerror(errno));
        else if ((s = fl_map_init(&a->trace_streams, 1024)) == FL_OK) {
            fprintf(a->trace, "Thread,Time,Action,Pointer,Size,Stream\n");
            fflush(a->trace); /* a process killed at once still leaves a readable file */
            a->trace_t0 = fl_now_ns();
        }
    }
    if (s != FL_OK) {
        if (a->trace)
            fclose(a->trace);
        fl_map_free(&a->trace_streams);
        if (a->policy)
            a->policy->ops->destroy(a->policy);
        fl_map_free(&a->uses);
        free(a);
        return s;
    }
    if (cfg->publish && dev->is_gpu && fl_publish_open(dev->ordinal, &a->pub) != FL_OK)
        fprintf(stderr, "fragless: device %d: not shown in `fragless top`: %s\n", dev->ordinal, fl_last_error());
    *out = a;
    return FL_OK;
}

void fl_allocator_destroy(fl_allocator *a)
{
    if (!a)
        return;
    fl_publish_close(a->pub);
    for (uint32_t i = 0; i < a->n_pending; i++)
        for (uint32_t k = 0; k < a->pending[i].n; k++)
            fl_dev_event_destroy(a->policy->dev, a->pending[i].event[k]);
    free(a->pending);
    for (uint64_t i = 0; a->uses.e && i <= a->uses.mask; i++)
        if (a->uses.e[i].key != UINT64_MAX)
            free((void *)(uintptr_t)a->uses.e[i].val);
    fl_map_free(&a->uses);
    a->policy->ops->destroy(a->policy);
    if (a->trace) {
        fclose(a->trace);
        fl_map_free(&a->trace_streams);
    }
    free(a);
}

/* Statistics under the lock; query: ask the policy what it holds (else the answer of
 * the last query is reused: the policy's walk is not for every operation). */
static void stats_fill(fl_allocator *a, fl_stats *out, int query)
{
    const fl_policy *p = a->policy;
    const fl_device_counters *c = &p->dev->counters;
    memset(out, 0, sizeof *out);
    out->allocated_bytes = (fl_stat){p->allocated, a->peak_allocated, p->allocated + a->freed_total, a->freed_total};
    out->reserved_bytes = (fl_stat){c->in_use, c->peak_in_use, c->bytes_obtained, c->bytes_returned};
    out->active_bytes = out->allocated_bytes;
    out->requested_bytes = (fl_stat){a->req_current, a->req_peak, a->req_current + a->req_freed, a->req_freed};
    out->allocation = (fl_stat){p->num_allocs - p->num_frees, a->blocks_peak, p->num_allocs, p->num_frees};
    if (query)
        p->ops->query(p, &a->last_query);
    fl_policy_state st = a->last_query;
    out->free_in_reserved = st.free_in_reserved;
    out->cached_bytes = st.cached;
    out->inactive_split_bytes = st.free_in_reserved > st.cached ? st.free_in_reserved - st.cached : 0;
    if (out->inactive_split_bytes > a->inactive_split_peak)
        a->inactive_split_peak = out->inactive_split_bytes;
    out->inactive_split_bytes_peak = a->inactive_split_peak;
    out->num_alloc_retries = p->retries;
    out->num_ooms = p->ooms;
    out->num_device_alloc = c->calls[FL_CALL_CREATE] + c->calls[FL_CALL_MEM_ALLOC];
    out->num_device_free = c->calls[FL_CALL_RELEASE] + c->calls[FL_CALL_MEM_FREE];
    out->num_sync_all_streams = c->calls[FL_CALL_SYNC];
    out->capacity = p->dev->capacity;
    out->limit = fl_dev_limit(p->dev);
    uint64_t room = out->limit > c->in_use ? out->limit - c->in_use : 0;
    out->largest_free = st.largest_free > room ? st.largest_free : room;
    uint64_t total = st.free_in_reserved + room;
    out->external_fragmentation =
        total && out->largest_free < total ? 1.0 - (double)out->largest_free / (double)total : 0.0;
    memcpy(out->device_calls, c->calls, sizeof out->device_calls);
    out->device_failed_calls = c->failed_calls;
    out->device_time_us = c->time_us;
}

static void stats_locked(fl_allocator *a, fl_stats *out)
{
    stats_fill(a, out, 1);
}

/* Every operation publishes (a copy into shared memory), so an idle process shows its
 * final state; what needs the policy's query (largest free block, fragmentation) is
 * refreshed at most every PUBLISH_EVERY_NS, and always when `now`. */
static void maybe_publish(fl_allocator *a, int now)
{
    if (!a->pub)
        return;
    uint64_t t = fl_now_ns();
    int refresh = now || t - a->published_ns >= PUBLISH_EVERY_NS;
    if (refresh)
        a->published_ns = t;
    fl_stats st;
    stats_fill(a, &st, refresh);
    fl_publish_update(a->pub, &st);
}

static fl_status write_snapshot(fl_allocator *a, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return fl_fail(FL_ERR_IO, "state snapshot %s: cannot open: %s", path, strerror(errno));
    fl_stats st;
    stats_locked(a, &st);
    fl_status s = fl_state_write(a->policy, &st, f);
    if (fclose(f) != 0 && s == FL_OK)
        s = fl_fail(FL_ERR_IO, "state snapshot %s: write error: %s", path, strerror(errno));
    return s;
}

/* The policy said out of memory: judge it, keep the report, print and snapshot the
 * first one, and make the report the error message. */
static fl_status out_of_memory(fl_allocator *a, uint64_t size, uint64_t stream)
{
    fl_oom_report *r = &a->oom;
    memset(r, 0, sizeof *r);
    snprintf(r->cause, sizeof r->cause, "%s", fl_last_error());
    const fl_policy *p = a->policy;
    fl_policy_state st = {0};
    p->ops->query(p, &st);
    r->request = size;
    r->stream = stream;
    r->capacity = p->dev->capacity;
    r->limit = fl_dev_limit(p->dev);
    r->live = a->live512;
    r->reserved = p->dev->counters.in_use;
    r->free_in_reserved = st.free_in_reserved;
    r->largest_free = st.largest_free;
    fl_oom_judge(r, p->ops->name, p->dev->is_gpu ? p->dev->ordinal : 0);
    a->has_oom = 1;
    if (!a->oom_reported) {
        a->oom_reported = 1;
        if (a->cfg.oom_report)
            fprintf(stderr, "fragless: %s\n", r->text);
        if (a->cfg.oom_snapshot[0] && write_snapshot(a, a->cfg.oom_snapshot) != FL_OK)
            fprintf(stderr, "fragless: oom_snapshot: %s\n", fl_last_error());
    }
    maybe_publish(a, 1);
    return fl_fail(FL_ERR_OOM, "%s", r->text);
}

/* Gives a block back to the policy, counting the bytes it had charged for it. */
static fl_status policy_free(fl_allocator *a, uint64_t addr)
{
    fl_policy *p = a->policy;
    uint64_t before = p->allocated;
    fl_status s = p->ops->free(p, addr, 0, NULL);
    if (s == FL_OK)
        a->freed_total += before - p->allocated;
    return s;
}

/* Frees the pending blocks whose events have all completed; every one when the device
 * was just synchronized. */
static fl_status process_pending(fl_allocator *a, int synchronized)
{
    fl_policy *p = a->policy;
    fl_status err = FL_OK;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < a->n_pending; i++) {
        pending_free q = a->pending[i];
        int done = 1;
        for (uint32_t k = 0; k < q.n && done && !synchronized; k++) {
            fl_status s = fl_dev_event_query(p->dev, q.event[k], &done);
            if (s != FL_OK) {
                err = s; /* kept: freed at the next synchronize */
                done = 0;
            }
        }
        if (!done) {
            a->pending[keep++] = q;
            continue;
        }
        for (uint32_t k = 0; k < q.n; k++)
            fl_dev_event_destroy(p->dev, q.event[k]);
        fl_status s = policy_free(a, q.addr);
        if (s != FL_OK) { /* cannot happen for a block the policy handed out; kept, reported */
            a->pending[keep++] = (pending_free){q.addr, 0, {0}};
            err = s;
        }
    }
    a->n_pending = keep;
    return err;
}

static fl_status synchronize_pending(fl_allocator *a)
{
    fl_status s = fl_dev_synchronize(a->policy->dev);
    return s == FL_OK ? process_pending(a, 1) : s;
}

/* The statistics of an allocation the policy made (the peaks; the totals follow). */
static inline void alloc_counted(fl_allocator *a, const fl_policy *p, uint64_t size)
{
    if (p->allocated > a->peak_allocated)
        a->peak_allocated = p->allocated;
    a->req_current += size;
    if (a->req_current > a->req_peak)
        a->req_peak = a->req_current;
    a->live512 += fl_live_size(size);
    if (p->num_allocs - p->num_frees > a->blocks_peak)
        a->blocks_peak = p->num_allocs - p->num_frees;
}

/* fl_alloc past the policy's answer, when it is not a plain success: the retry after
 * pending blocks are given back, the out-of-memory report, the recorder and the
 * publisher. Out of line: the common case stays short. */
static FL_NOINLINE fl_status alloc_rest(fl_allocator *a, fl_status s, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fl_policy *p = a->policy;
    if (s == FL_ERR_OOM && a->n_pending && synchronize_pending(a) == FL_OK)
        s = p->ops->alloc(p, size, stream, addr);
    if (s == FL_OK)
        alloc_counted(a, p, size);
    else if (s == FL_ERR_OOM)
        s = out_of_memory(a, size, stream);
    if (a->trace != NULL) {
        trace_row(a, s == FL_OK ? FL_EV_ALLOC : FL_EV_ALLOC_FAIL, s == FL_OK ? *addr : 0, size, stream);
        /* On host OOM here, the free row says stream 0: the trace stays readable. */
        if (s == FL_OK)
            fl_map_put(&a->trace_streams, *addr, stream);
    }
    if (a->pub != NULL)
        maybe_publish(a, 0);
    return s;
}

fl_status fl_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (FL_UNLIKELY(size == 0))
        return fl_fail(FL_ERR_INVALID, "fl_alloc: size 0");
    fl_lock_acquire(&a->lock);
    fl_policy *p = a->policy;
    if (FL_UNLIKELY(a->n_pending))
        process_pending(a, 0); /* an error here leaves them pending: retried below or later */
    fl_status s = p->ops->alloc(p, size, stream, addr);
    if (FL_LIKELY(s == FL_OK && !a->trace && !a->pub))
        alloc_counted(a, p, size);
    else
        s = alloc_rest(a, s, size, stream, addr);
    fl_lock_release(&a->lock);
    return s;
}

/* The index of addr on the pending list, -1 if it is not there. */
static int64_t pending_index(const fl_allocator *a, uint64_t addr)
{
    for (uint32_t i = 0; i < a->n_pending; i++)
        if (a->pending[i].addr == addr)
            return i;
    return -1;
}

/* A block used on other streams (record_stream) is freed once the work queued on them
 * so far is done: an event on each, checked at the next allocations. Without events (no
 * host memory for the list, a failed record, too many streams) the device is
 * synchronized and the block freed now. */
static fl_status defer_free(fl_allocator *a, uint64_t addr, stream_uses *u)
{
    fl_policy *p = a->policy;
    fl_status s = FL_OK;
    pending_free q = {addr, 0, {0}};
    if (u->n > MAX_USES)
        s = FL_ERR_UNSUPPORTED;
    for (uint32_t k = 0; s == FL_OK && k < u->n; k++)
        if ((s = fl_dev_event_record(p->dev, u->stream[k], &q.event[k])) == FL_OK)
            q.n++;
    if (s == FL_OK && a->n_pending == a->cap_pending) {
        uint32_t cap = a->cap_pending ? 2 * a->cap_pending : 16;
        pending_free *np = realloc(a->pending, cap * sizeof *np);
        if (np) {
            a->pending = np;
            a->cap_pending = cap;
        } else
            s = FL_ERR_NOMEM;
    }
    if (s == FL_OK) {
        a->pending[a->n_pending++] = q;
    } else {
        for (uint32_t k = 0; k < q.n; k++)
            fl_dev_event_destroy(p->dev, q.event[k]);
        if ((s = fl_dev_synchronize(p->dev)) != FL_OK)
            return s; /* nothing changed: the block stays live */
        if ((s = policy_free(a, addr)) != FL_OK)
            return s;
    }
    fl_map_remove(&a->uses, addr, NULL);
    free(u);
    return FL_OK;
}

fl_status fl_record_stream(fl_allocator *a, uint64_t addr, uint64_t stream)
{
    fl_lock_acquire(&a->lock);
    fl_status s = FL_OK;
    uint64_t val;
    if (!a->policy->ops->block_size(a->policy, addr) || pending_index(a, addr) >= 0) {
        s = fl_fail(FL_ERR_NOT_FOUND, "record_stream of 0x%llx on stream 0x%llx: not a live block of this allocator",
                    (unsigned long long)addr, (unsigned long long)stream);
    } else {
        stream_uses *u = fl_map_get(&a->uses, addr, &val) ? (stream_uses *)(uintptr_t)val : NULL;
        if (!u) {
            u = calloc(1, sizeof *u);
            if (!u || fl_map_put(&a->uses, addr, (uint64_t)(uintptr_t)u) != FL_OK) {
                free(u);
                s = fl_fail(FL_ERR_NOMEM, "record_stream of 0x%llx: host memory", (unsigned long long)addr);
            }
        }
        int known = 0;
        for (uint32_t k = 0; s == FL_OK && k < u->n && k < MAX_USES; k++)
            known |= u->stream[k] == stream;
        if (s == FL_OK && !known) {
            if (u->n < MAX_USES)
                u->stream[u->n] = stream;
            if (u->n <= MAX_USES)
                u->n++; /* beyond MAX_USES streams: the free synchronizes the device */
        }
    }
    fl_lock_release(&a->lock);
    return s;
}

/* A free while record_stream is in use: a block used on other streams waits for their
 * events; a pending block is freed already. *size: its requested bytes. */
static fl_status free_with_uses(fl_allocator *a, uint64_t addr, uint64_t want, uint64_t *size)
{
    uint64_t uses_val;
    if (pending_index(a, addr) >= 0)
        return fl_policy_not_live(a->policy, addr);
    if (!fl_map_get(&a->uses, addr, &uses_val)) {
        uint64_t before = a->policy->allocated;
        fl_status s = a->policy->ops->free(a->policy, addr, want, size);
        if (s == FL_OK)
            a->freed_total += before - a->policy->allocated;
        return s;
    }
    *size = a->policy->ops->block_size(a->policy, addr);
    if (want && want != *size)
        return fl_policy_size_mismatch(addr, want, *size);
    return defer_free(a, addr, (stream_uses *)(uintptr_t)uses_val);
}

/* The statistics of a free (its requested bytes: size). */
static inline void free_counted(fl_allocator *a, uint64_t size)
{
    a->req_current -= size;
    a->req_freed += size;
    a->live512 -= fl_live_size(size);
}

/* free_locked while record_stream is in use or a recorder or publisher is on. */
static FL_NOINLINE fl_status free_rest(fl_allocator *a, uint64_t addr, uint64_t want_size)
{
    fl_policy *p = a->policy;
    uint64_t size = 0;
    fl_status s;
    if (a->n_pending || a->uses.count) {
        s = free_with_uses(a, addr, want_size, &size);
    } else {
        uint64_t before = p->allocated;
        s = p->ops->free(p, addr, want_size, &size);
        a->freed_total += before - p->allocated;
    }
    if (s != FL_OK)
        return s;
    free_counted(a, size);
    if (a->trace != NULL) {
        uint64_t stream = 0;
        fl_map_remove(&a->trace_streams, addr, &stream);
        trace_row(a, FL_EV_FREE, addr, size, stream);
    }
    if (a->pub != NULL)
        maybe_publish(a, 0);
    return FL_OK;
}

/* want_size: the size the caller says the block has (0 = not checked). */
static inline fl_status free_locked(fl_allocator *a, uint64_t addr, uint64_t want_size)
{
    if (FL_UNLIKELY(a->n_pending || a->uses.count || a->trace || a->pub))
        return free_rest(a, addr, want_size);
    fl_policy *p = a->policy;
    uint64_t before = p->allocated, size = 0;
    fl_status s = p->ops->free(p, addr, want_size, &size);
    if (FL_UNLIKELY(s != FL_OK))
        return s;
    a->freed_total += before - p->allocated;
    free_counted(a, size);
    return FL_OK;
}

fl_status fl_free(fl_allocator *a, uint64_t addr)
{
    fl_lock_acquire(&a->lock);
    fl_status s = free_locked(a, addr, 0);
    fl_lock_release(&a->lock);
    return s;
}

fl_status fl_free_sized(fl_allocator *a, uint64_t addr, uint64_t size)
{
    if (size == 0)
        return fl_fail(FL_ERR_INVALID, "free of 0x%llx with size 0: no block has size 0", (unsigned long long)addr);
    fl_lock_acquire(&a->lock);
    fl_status s = free_locked(a, addr, size);
    fl_lock_release(&a->lock);
    return s;
}

fl_status fl_empty_cache(fl_allocator *a)
{
    fl_lock_acquire(&a->lock);
    fl_status s = a->n_pending ? synchronize_pending(a) : FL_OK;
    if (s == FL_OK)
        s = a->policy->ops->empty_cache(a->policy);
    maybe_publish(a, 1);
    fl_lock_release(&a->lock);
    return s;
}

fl_status fl_set_limit(fl_allocator *a, uint64_t bytes)
{
    fl_lock_acquire(&a->lock);
    fl_policy *p = a->policy;
    p->dev->limit = bytes;
    fl_status s = p->ops->limit_changed ? p->ops->limit_changed(p) : FL_OK;
    maybe_publish(a, 1);
    fl_lock_release(&a->lock);
    return s;
}

/* The lock is taken through a cast: reading statistics does not change what the
 * allocator holds (only the peak of inactive_split_bytes, a statistic itself). */
void fl_get_stats(const fl_allocator *a, fl_stats *out)
{
    fl_allocator *m = (fl_allocator *)a;
    fl_lock_acquire(&m->lock);
    stats_locked(m, out);
    fl_lock_release(&m->lock);
}

void fl_reset_peak_stats(fl_allocator *a)
{
    fl_lock_acquire(&a->lock);
    fl_policy *p = a->policy;
    a->peak_allocated = p->allocated;
    a->req_peak = a->req_current;
    a->blocks_peak = p->num_allocs - p->num_frees;
    a->inactive_split_peak = 0;
    p->dev->counters.peak_in_use = p->dev->counters.in_use;
    fl_lock_release(&a->lock);
}

fl_status fl_last_oom(const fl_allocator *a, fl_oom_report *out)
{
    fl_allocator *m = (fl_allocator *)a;
    fl_lock_acquire(&m->lock);
    int has = m->has_oom;
    if (has)
        *out = m->oom;
    fl_lock_release(&m->lock);
    return has ? FL_OK : fl_fail(FL_ERR_NOT_FOUND, "no allocation has failed on this allocator");
}

fl_status fl_allocator_snapshot(fl_allocator *a, const char *path)
{
    fl_lock_acquire(&a->lock);
    fl_status s = write_snapshot(a, path);
    fl_lock_release(&a->lock);
    return s;
}

int fl_allocator_check(const fl_allocator *a)
{
    fl_lock *lock = &((fl_allocator *)a)->lock;
    fl_lock_acquire(lock);
    int r = a->policy->ops->check(a->policy);
    /* A pending block (record_stream) is still the policy's, and on the list once. */
    for (uint32_t i = 0; !r && i < a->n_pending; i++)
        if (!a->policy->ops->block_size(a->policy, a->pending[i].addr) ||
            pending_index(a, a->pending[i].addr) != (int64_t)i)
            r = fl_fail(FL_ERR_INVALID, "allocator check: pending block 0x%llx is not live, or listed twice",
                        (unsigned long long)a->pending[i].addr) != FL_OK;
    fl_lock_release(lock);
    return r;
}

fl_policy *fl_allocator_policy(const fl_allocator *a) { return a->policy; }
uint64_t fl_allocator_live(const fl_allocator *a) { return a->live512; }
