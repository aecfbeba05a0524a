/* The allocator object of the C API: one policy on one device, with the statistics
 * every frontend reports, the out-of-memory report, the state snapshot, the publisher
 * for `fragless top` and the trace recorder (trace:PATH). Safe from many threads: one
 * lock per allocator, so per device (policies and devices themselves are
 * single-threaded). The policy keeps every live block's requested size (no second
 * table here): it refuses frees of unknown pointers and of a wrong size, and gives the
 * size back at the free, so requested_bytes is exact. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "allocator/graph.h"
#include "util/lock.h"
#include "util/file.h"
#include <pthread.h>

#include "allocator/recorder.h"
#include "allocator/tcache.h"

/* Statistics for `fragless top`: the policy's query is refreshed at most this often. */
#define PUBLISH_EVERY_NS (50 * 1000 * 1000)
/* The least of pub_slack (threads mode; the allocator struct says what it is). */
#define PUBLISH_SLACK_MIN (INT64_C(2) << 20)

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

/* How fl_alloc and fl_free route before taking the lock (struct fl_allocator's route). */
#define ROUTE_CAPTURE 1 /* a device that can capture CUDA graphs: alloc_watching */
#define ROUTE_THREADS 2 /* thread caches (tcache.h): tc_alloc, tc_free (and, on a device that can
                           capture, a capture query before each allocation) */
#define ROUTE_LOCAL 4   /* threads, and a policy with stream-local operations: local_alloc,
                           local_free (the same capture query) */

struct fl_allocator {
    /* The fast path's fields first, on one cache line. */
    fli_lock lock;
    int capture_watch;          /* the device's, read once: it can capture CUDA graphs */
    _Atomic int route;          /* ROUTE_*: read without the lock; set under it */
    /* 1 while a holder of the lock keeps the stream-local operations out (locals_out);
     * excl_held: this holder set it (under the lock). */
    _Atomic int local_excl;
    int excl_held;
    /* Nonzero while anything beyond policy + statistics is in use (slow_reasons), or the
     * thread caches are on: then fl_alloc and fl_free take the general path. Changed
     * under the lock only, by update_slow at the end of every operation that can change
     * a reason. */
    int slow;
    fli_policy *policy;
    /* Statistics beyond the policy's own counters: plain adds on the fast path. The
     * freed totals are derived (allocated total - current), not counted. */
    uint64_t peak_allocated, alloc_total;
    uint64_t req_peak, req_current, req_total;
    uint64_t blocks_peak;
    uint64_t live512;           /* live bytes, each request rounded up to 512 B */
    fl_config cfg;              /* as created; the limit lives on the device (fli_dev_limit) */
    uint64_t inactive_split_peak;
    /* The latest out-of-memory report; the first one is printed and snapshotted. */
    fl_oom_report oom;
    int has_oom, oom_reported;
    fli_publisher *pub;
    uint64_t published_ns;
    /* Threads mode: how far a thread's stream-local operations may take the allocated
     * bytes from what the record says before the thread publishes (local_unpublished):
     * max(2 MiB, 1/256 of the allocated bytes last published). */
    _Atomic int64_t pub_slack;
    fli_policy_state last_query; /* the policy's answer at the last full statistics */
    /* record_stream: streams besides its own that a live block is used on (address ->
     * stream_uses *), and blocks freed while such streams may still use them, waiting
     * for the events recorded on those streams at the free. */
    fli_map uses;
    pending_free *pending;
    uint32_t n_pending, cap_pending;
    fli_recorder *rec;           /* trace:PATH (recorder.c), NULL when off */
    fl_allocator *next_live;    /* the registry of live allocators (fork, exit) */
    /* CUDA graphs (graph.h): on a device that can capture, every allocation asks about
     * captures; blocks allocated during one are its graph's until it is released. */
    fli_graphs graphs;
    /* Thread caches (tcache.h; section "thread caches" below): on (threads) once two
     * threads met at the lock, or by fli_allocator_threads. tc_off: bypassed and empty
     * while record_stream, graphs or the recorder are in use (tc_reasons). */
    int threads, tc_off;
    uint64_t id;                /* the caches' key (never reused, unlike the address) */
    fli_tcache *tcs;            /* every thread's cache of this allocator */
    int64_t tc_k[FL_TC_FIGURES]; /* the sum of the caches' k */
    uint64_t tc_allocs;         /* allocations served by caches since retired or folded */
    uint64_t local_allocs;      /* stream-local allocations, folded in */
    uint64_t local_refills;     /* of those, allocations that took the lock for room first
                                   (local_refill), folded in */
    /* Allocations that failed in the policy but succeeded after the caches were drained:
     * retries, not out-of-memory errors (the policy counted them as its ooms). */
    uint64_t tc_retried;
};

static inline void update_slow(fl_allocator *a);
static void locals_out(fl_allocator *a);

/* A thread's token for the policy's heaps (policy.h: fli_local.owner): its cache's
 * address (set by fli_tc_new), which outlives the token (local_forget at the thread's
 * end, before the cache goes). */
static inline uint64_t local_token(const fli_tcache *c) { return c->local.owner; }

/* The allocator's lock. With threads on it also keeps the stream-local operations out
 * (locals_out): whoever holds it may change anything. */
static inline void lock_a(fl_allocator *a)
{
    fli_lock_acquire(&a->lock);
    if (FL_UNLIKELY(a->threads) && !a->excl_held)
        locals_out(a);
}

static inline void unlock_a(fl_allocator *a)
{
    if (FL_UNLIKELY(a->excl_held)) {
        a->excl_held = 0;
        atomic_store_explicit(&a->local_excl, 0, memory_order_release);
    }
    fli_lock_release(&a->lock);
}
static void tc_fork_child(fl_allocator *a);

/* ---- the registry of live allocators: fork and exit ------------------------------- */

/* Every live allocator, for the fork handlers (a child must find every lock free and
 * every structure whole: the parent's other threads are not there to finish what they
 * were doing) and the exit handler (the recorders' last rows, written under each
 * allocator's lock so that threads still allocating cannot cut a line). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static fl_allocator *registry;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

/* Before fork: take every allocator's lock (registry order), so that the child's copy of
 * each is between operations. */
static void fork_prepare(void)
{
    fli_tc_registry_lock(); /* before any allocator's lock, as everywhere */
    pthread_mutex_lock(&registry_lock);
    for (fl_allocator *a = registry; a; a = a->next_live) {
        lock_a(a);
        for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
            fli_lock_acquire(&c->lock);
    }
}

static void fork_parent(void)
{
    for (fl_allocator *a = registry; a; a = a->next_live) {
        for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
            fli_lock_release(&c->lock);
        unlock_a(a);
    }
    pthread_mutex_unlock(&registry_lock);
    fli_tc_registry_unlock();
}

/* In the child: the locks are free again; the child records no trace (its rows would
 * interleave with the parent's in one file; the parent keeps writing it) and publishes
 * its own record for `fragless top`, not the parent's. */
static void fork_child(void)
{
    for (fl_allocator *a = registry; a; a = a->next_live) {
        fli_recorder_forget(a->rec);
        a->rec = NULL;
        fli_publish_close(a->pub); /* detaches: the file stays the parent's */
        a->pub = NULL;
        char uuid[48];
        if (a->cfg.publish && a->policy->dev->is_gpu) /* best effort: top only */
            fli_publish_open(a->policy->dev->ordinal, fli_dev_uuid_str(a->policy->dev, uuid, sizeof uuid), &a->pub);
        tc_fork_child(a); /* one thread: the caches' blocks go back, the caches off */
        update_slow(a);
        a->excl_held = 0;
        atomic_store_explicit(&a->local_excl, 0, memory_order_relaxed);
        fli_lock_reset(&a->lock);
    }
    pthread_mutex_init(&registry_lock, NULL);
    fli_tc_prune();
    fli_tc_registry_unlock();
}

static void flush_at_exit(void)
{
    pthread_mutex_lock(&registry_lock);
    for (fl_allocator *a = registry; a; a = a->next_live) {
        lock_a(a);
        fli_recorder_stop(a->rec); /* no write may be under way when the process ends */
        unlock_a(a);
    }
    pthread_mutex_unlock(&registry_lock);
}

static void registry_init(void)
{
    fli_publish_atfork(); /* first: its child handler must run before ours */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    atexit(flush_at_exit);
}

void fli_allocator_atfork(void) { pthread_once(&registry_once, registry_init); }

static fl_status owned(const fl_device *dev)
{
    return fli_fail(FL_ERR_INVALID, "device %s: it has an allocator already; one allocator per device (share it: "
                   "it is thread safe)", dev->ops->name);
}

/* Adds a to the registry and makes it dev's owner: one allocator per device (two would
 * race on the device's state). */
static fl_status registry_add(fl_allocator *a, fl_device *dev)
{
    pthread_once(&registry_once, registry_init);
    pthread_mutex_lock(&registry_lock);
    fl_status s = FL_OK;
    if (dev->owner)
        s = owned(dev);
    else {
        dev->owner = a;
        a->next_live = registry;
        registry = a;
    }
    pthread_mutex_unlock(&registry_lock);
    return s;
}

static void registry_remove(fl_allocator *a)
{
    pthread_mutex_lock(&registry_lock);
    for (fl_allocator **p = &registry; *p; p = &(*p)->next_live)
        if (*p == a) {
            *p = a->next_live;
            break;
        }
    a->policy->dev->owner = NULL;
    pthread_mutex_unlock(&registry_lock);
}

fl_status fl_allocator_create(const fl_config *cfg, fl_device *dev, fl_allocator **out)
{
    *out = NULL;
    fl_allocator *a = calloc(1, sizeof *a);
    if (!a)
        return fli_fail(FL_ERR_NOMEM, "allocator: host memory");
    a->cfg = *cfg;
    /* Checked again under the registry's lock; here before the policy touches dev. */
    fl_status s = dev->owner ? owned(dev) : fli_map_init(&a->uses, 16);
    if (s == FL_OK)
        s = fli_graphs_init(&a->graphs);
    if (s == FL_OK)
        s = fli_policy_create(cfg, dev, &a->policy);
    char trace_path[FL_PATH_MAX];
    if (s == FL_OK && cfg->trace_path[0] && (s = fli_expand_path(cfg->trace_path, trace_path, sizeof trace_path)) == FL_OK)
        s = fli_recorder_open(trace_path, &a->rec);
    if (s == FL_OK)
        s = registry_add(a, dev);
    if (s != FL_OK) {
        (void)fli_recorder_close(a->rec); /* the creation's error is the one to report */
        if (a->policy)
            a->policy->ops->destroy(a->policy);
        fli_graphs_free(&a->graphs);
        fli_map_free(&a->uses);
        free(a);
        return s;
    }
    char uuid[48];
    a->capture_watch = dev->capture_watch;
    atomic_store_explicit(&a->route, a->capture_watch ? ROUTE_CAPTURE : 0, memory_order_relaxed);
    a->id = fli_tc_next_id();
    atomic_store_explicit(&a->pub_slack, PUBLISH_SLACK_MIN, memory_order_relaxed);
    if (cfg->publish && dev->is_gpu && fli_publish_open(dev->ordinal, fli_dev_uuid_str(dev, uuid, sizeof uuid), &a->pub) != FL_OK)
        fprintf(stderr, "fragless: device %d: not shown in `fragless top`: %s\n", dev->ordinal, fl_last_error());
    update_slow(a);
    *out = a;
    return FL_OK;
}

/* What record_stream keeps goes: the pending frees' events (destroyed; the list emptied)
 * and the other streams of live blocks (the map's values freed, the map left empty). */
static void drop_stream_uses(fl_allocator *a)
{
    for (uint32_t i = 0; i < a->n_pending; i++)
        for (uint32_t k = 0; k < a->pending[i].n; k++)
            fli_dev_event_destroy(a->policy->dev, a->pending[i].event[k]);
    a->n_pending = 0;
    for (uint64_t i = 0; a->uses.e && i <= a->uses.mask; i++)
        if (a->uses.e[i].key != UINT64_MAX)
            free((void *)(uintptr_t)a->uses.e[i].val);
    if (a->uses.e)
        fli_map_clear(&a->uses);
}

void fl_allocator_destroy(fl_allocator *a)
{
    if (!a)
        return;
    registry_remove(a);
    /* The threads' caches forget it (their blocks go with the policy); each thread frees
     * its cache's memory later (fli_tc_find, its end). */
    fli_tc_registry_lock();
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        c->a = NULL;
        atomic_store_explicit(&c->alloc_id, 0, memory_order_release);
    }
    fli_tc_registry_unlock();
    fli_publish_close(a->pub);
    drop_stream_uses(a);
    free(a->pending);
    fli_map_free(&a->uses);
    fli_graphs_free(&a->graphs);
    a->policy->ops->destroy(a->policy);
    (void)fli_recorder_close(a->rec); /* a write error was said on stderr when it happened */
    free(a);
}

/* What the thread caches add to the figures (all zero when they are off). */
typedef struct tc_sum {
    uint64_t cached_bytes, cached_blocks;
    int64_t d_req, d_live;
    uint64_t hits[FL_TC_FIGURES];
} tc_sum;

/* The caches' sums, each cache under its lock (the caller holds the allocator's). */
static void tc_sums(fl_allocator *a, tc_sum *t)
{
    memset(t, 0, sizeof *t);
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        fli_lock_acquire(&c->lock);
        t->cached_bytes += c->cached_bytes;
        t->cached_blocks += c->cached_blocks;
        t->d_req += c->d_req;
        t->d_live += c->d_live;
        for (int q = 0; q < FL_TC_FIGURES; q++)
            t->hits[q] += c->hits[q];
        fli_lock_release(&c->lock);
    }
}

/* Statistics under the lock; query: ask the policy what it holds (else the answer of
 * the last query is reused: the policy's walk is not for every operation). Blocks in
 * thread caches are the policy's allocated blocks but freed for the program: they count
 * as freed, and as free in reserved memory. */
static void stats_fill(fl_allocator *a, fl_stats *out, int query)
{
    const fli_policy *p = a->policy;
    const fl_device_counters *c = &p->dev->counters;
    memset(out, 0, sizeof *out);
    tc_sum t;
    tc_sums(a, &t);
    /* Blocks a graph keeps after the program freed them are the policy's, not the
     * program's: reserved and unusable, like the free pieces of a private pool. */
    const fli_graphs *g = &a->graphs;
    uint64_t allocated = p->allocated - g->kept_bytes - t.cached_bytes;
    uint64_t alloc_total = a->alloc_total + t.hits[FL_TC_BYTES];
    out->allocated_bytes = (fl_stat){allocated, a->peak_allocated, alloc_total, alloc_total - allocated};
    out->reserved_bytes = (fl_stat){c->in_use, c->peak_in_use, c->bytes_obtained, c->bytes_returned};
    out->active_bytes = out->allocated_bytes;
    uint64_t req = a->req_current + (uint64_t)t.d_req, req_total = a->req_total + t.hits[FL_TC_REQ];
    out->requested_bytes = (fl_stat){req, a->req_peak, req_total, req_total - req};
    uint64_t blocks = p->num_allocs - p->num_frees + g->reuses - g->keeps - t.cached_blocks;
    uint64_t blocks_total = p->num_allocs + g->reuses + a->tc_allocs + t.hits[FL_TC_BLOCKS];
    out->allocation = (fl_stat){blocks, a->blocks_peak, blocks_total, blocks_total - blocks};
    out->graph_bytes = g->bytes;
    out->graph_kept_bytes = g->kept_bytes;
    if (query)
        p->ops->query(p, &a->last_query);
    fli_policy_state st = a->last_query;
    out->free_in_reserved = st.free_in_reserved + t.cached_bytes;
    out->stitched_blocks = st.stitched;
    out->cached_bytes = st.cached;
    out->inactive_split_bytes = st.free_in_reserved > st.cached ? st.free_in_reserved - st.cached : 0;
    if (out->inactive_split_bytes > a->inactive_split_peak)
        a->inactive_split_peak = out->inactive_split_bytes;
    out->inactive_split_bytes_peak = a->inactive_split_peak;
    out->num_alloc_retries = p->retries + a->tc_retried;
    out->num_ooms = p->ooms - a->tc_retried;
    out->num_device_alloc = c->calls[FL_CALL_CREATE] + c->calls[FL_CALL_MEM_ALLOC];
    out->num_device_free = c->calls[FL_CALL_RELEASE] + c->calls[FL_CALL_MEM_FREE];
    out->num_sync_all_streams = c->calls[FL_CALL_SYNC];
    out->capacity = p->dev->capacity;
    out->limit = fli_dev_limit(p->dev);
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
    uint64_t t = fli_now_ns();
    int refresh = now || t - a->published_ns >= PUBLISH_EVERY_NS;
    if (refresh)
        a->published_ns = t;
    fl_stats st;
    stats_fill(a, &st, refresh);
    fli_publish_update(a->pub, &st);
    uint64_t slack = st.allocated_bytes.current / 256;
    atomic_store_explicit(&a->pub_slack, (int64_t)(slack > PUBLISH_SLACK_MIN ? slack : PUBLISH_SLACK_MIN),
                          memory_order_relaxed);
}

/* Written to a new file beside path (created with O_EXCL|O_NOFOLLOW) and renamed over it
 * at the end, not through fopen(path, "w"): path may be in a folder others can write
 * (/tmp), where a symlink planted at it would have made us truncate whatever it points
 * to; rename replaces the link, never follows it. Readers never see half a snapshot. */
static fl_status write_snapshot(fl_allocator *a, const char *path)
{
    fli_new_file nf;
    fl_status s = fli_create_file_safely(path, FL_NEW_FILE_AT_CLOSE, &nf);
    if (s == FL_OK) {
        fl_stats st;
        stats_locked(a, &st);
        s = fli_state_write(a->policy, &st, nf.f);
        fl_status c = fli_new_file_close(&nf, s == FL_OK);
        s = s == FL_OK ? c : s;
    }
    if (s != FL_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", fl_last_error());
        s = fli_fail(s, "state snapshot: %s", why);
    }
    return s;
}

/* The policy said out of memory: judge it, keep the report, print and snapshot the
 * first one, and make the report the error message. */
static fl_status out_of_memory(fl_allocator *a, uint64_t size, uint64_t stream)
{
    fl_oom_report *r = &a->oom;
    memset(r, 0, sizeof *r);
    snprintf(r->cause, sizeof r->cause, "%s", fl_last_error());
    const fli_policy *p = a->policy;
    fli_policy_state st = {0};
    p->ops->query(p, &st);
    r->request = size;
    r->stream = stream;
    r->capacity = p->dev->capacity;
    r->limit = fli_dev_limit(p->dev);
    tc_sum t;
    tc_sums(a, &t);
    r->live = a->live512 + (uint64_t)t.d_live;
    r->reserved = p->dev->counters.in_use;
    r->free_in_reserved = st.free_in_reserved;
    r->largest_free = st.largest_free;
    fli_oom_judge(r, p->ops->name, p->dev->is_gpu ? p->dev->ordinal : 0);
    a->has_oom = 1;
    if (!a->oom_reported) {
        a->oom_reported = 1;
        if (a->cfg.oom_report)
            fprintf(stderr, "fragless: %s\n", r->text);
        char path[FL_PATH_MAX];
        if (a->cfg.oom_snapshot[0] && (fli_expand_path(a->cfg.oom_snapshot, path, sizeof path) != FL_OK ||
                                       write_snapshot(a, path) != FL_OK))
            fprintf(stderr, "fragless: oom_snapshot: %s\n", fl_last_error());
    }
    maybe_publish(a, 1);
    return fli_fail(FL_ERR_OOM, "%s", r->text);
}

/* Gives a block back to the policy, counting the bytes it had charged for it. */
static fl_status policy_free(fl_allocator *a, uint64_t addr)
{
    return a->policy->ops->free(a->policy, addr, 0, NULL);
}

/* Frees the pending blocks whose events have all completed; every one when the device
 * was just synchronized. */
static fl_status process_pending(fl_allocator *a, int synchronized)
{
    fli_policy *p = a->policy;
    fl_status err = FL_OK;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < a->n_pending; i++) {
        pending_free q = a->pending[i];
        int done = 1;
        for (uint32_t k = 0; k < q.n && done && !synchronized; k++) {
            fl_status s = fli_dev_event_query(p->dev, q.event[k], &done);
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
            fli_dev_event_destroy(p->dev, q.event[k]);
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
    fl_status s = fli_dev_synchronize(a->policy->dev);
    return s == FL_OK ? process_pending(a, 1) : s;
}

/* A block the program now holds, asked as size bytes: the requested and live counts. */
static inline void count_requested(fl_allocator *a, uint64_t size)
{
    a->req_current += size;
    a->req_total += size;
    if (a->req_current > a->req_peak)
        a->req_peak = a->req_current;
    a->live512 += fli_live_size(size);
}

/* The statistics of a block the policy just handed out: `charged` bytes of its allocated
 * count, asked as size bytes. Plain adds and compares (the fast path's whole bookkeeping). */
static inline void count_alloc(fl_allocator *a, const fli_policy *p, uint64_t charged, uint64_t size)
{
    a->alloc_total += charged;
    if (p->allocated > a->peak_allocated)
        a->peak_allocated = p->allocated;
    count_requested(a, size);
    if (p->num_allocs - p->num_frees > a->blocks_peak)
        a->blocks_peak = p->num_allocs - p->num_frees;
}

/* An allocation under the lock in general: pending record_stream frees first, a retry
 * after synchronizing them, the OOM report, the trace and top. */
static fl_status alloc_locked(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fli_policy *p = a->policy;
    if (FL_UNLIKELY(a->n_pending))
        process_pending(a, 0); /* an error here leaves them pending: retried below or later */
    uint64_t before = p->allocated;
    fl_status s = p->ops->alloc(p, size, stream, addr);
    if (s == FL_ERR_OOM && a->n_pending && synchronize_pending(a) == FL_OK) {
        before = p->allocated;
        s = p->ops->alloc(p, size, stream, addr);
    }
    if (FL_LIKELY(s == FL_OK))
        count_alloc(a, p, p->allocated - before, size);
    else if (s == FL_ERR_OOM)
        s = out_of_memory(a, size, stream);
    if (FL_UNLIKELY(a->rec != NULL))
        fli_recorder_alloc(a->rec, s == FL_OK, s == FL_OK ? *addr : 0, size, stream);
    if (FL_UNLIKELY(a->pub != NULL))
        maybe_publish(a, 0);
    return s;
}

/* Why the fast path is off (struct fl_allocator's `slow`): record_stream frees pending
 * or blocks with recorded streams, CUDA graph blocks or captures, the trace recorder, the
 * publisher for `fragless top`. */
static int slow_reasons(const fl_allocator *a)
{
    const fli_graphs *g = &a->graphs;
    return a->n_pending || a->uses.count || g->n || fli_graphs_underway(g) || fli_graphs_pending(g) || a->rec ||
           a->pub;
}

static void tc_set_off(fl_allocator *a, int off);
static int tc_reasons(const fl_allocator *a);

static inline void update_slow(fl_allocator *a)
{
    a->slow = slow_reasons(a) || a->threads;
    if (FL_UNLIKELY(a->threads) && tc_reasons(a) != a->tc_off)
        tc_set_off(a, !a->tc_off);
}

/* The lock's release after anything but the fast paths: the reasons may have changed. */
static inline void release_updated(fl_allocator *a)
{
    update_slow(a);
    unlock_a(a);
}

/* A failed policy allocation on the fast path: the OOM report. Out of line. */
static FL_NOINLINE fl_status alloc_failed(fl_allocator *a, fl_status s, uint64_t size, uint64_t stream)
{
    return s == FL_ERR_OOM ? out_of_memory(a, size, stream) : s;
}

static fl_status alloc_watching(fl_allocator *a, fli_tcache *c, uint64_t size, uint64_t stream, uint64_t *addr);
static fl_status free_locked(fl_allocator *a, uint64_t addr, uint64_t want_size);

/* ---- thread caches ------------------------------------------------------------------ */

/* Two threads on one lock serialize: once they meet there (lock_fast), each thread gets
 * a cache of the blocks it freed (tcache.h), from which its next requests of the same
 * class on the same stream are served under the cache's own lock, which only that thread
 * takes in the ordinary course. A single-threaded program never turns them on, so its
 * placement (and every replay figure) stays what the policy alone decides.
 *
 * The figures stay exact. Current values: a cached block is the policy's allocated
 * block but freed for the program (stats_fill subtracts the caches' sums). Peaks, for
 * the three figures q with one (allocated bytes, requested bytes, blocks): with
 * U the program's current value, G what the allocator's own counters say (the policy's
 * allocated less kept and cached-by-nobody ... = global_figures) and f_c what cache c's
 * hits and frees changed (fig_f), U = G + sum f_c. Each cache has a room r_c >= 0 that
 * its hits use up and its frees give back; k_c = f_c + r_c is therefore changed only
 * under the allocator's lock, and the invariant G + sum k_c <= peak holds at all times,
 * so U <= peak without a look at the peak per hit. A hit without room, and any change of
 * G that breaks the invariant, take the allocator's lock and every cache's lock, zero
 * the rooms (then G + sum k_c is U itself) and raise the peak to U where U exceeds it:
 * the peak is the largest value the program's figure had. */

static void global_figures(const fl_allocator *a, int64_t g[FL_TC_FIGURES])
{
    const fli_policy *p = a->policy;
    const fli_graphs *gr = &a->graphs;
    g[FL_TC_BYTES] = (int64_t)(p->allocated - gr->kept_bytes);
    g[FL_TC_REQ] = (int64_t)a->req_current;
    g[FL_TC_BLOCKS] = (int64_t)(p->num_allocs - p->num_frees + gr->reuses - gr->keeps);
}

/* f_c: what c's hits and frees added to the figures. */
static void fig_f(const fli_tcache *c, int64_t f[FL_TC_FIGURES])
{
    f[FL_TC_BYTES] = -(int64_t)c->cached_bytes;
    f[FL_TC_REQ] = c->d_req;
    f[FL_TC_BLOCKS] = -(int64_t)c->cached_blocks;
}

static uint64_t *peak_of(fl_allocator *a, int q)
{
    return q == FL_TC_BYTES ? &a->peak_allocated : q == FL_TC_REQ ? &a->req_peak : &a->blocks_peak;
}

static inline int local_mode(const fl_allocator *a);

/* Every cache's lock but held's (which the caller holds), in list order; only a holder
 * of the allocator's lock takes more than one. In the stream-local mode no thread takes
 * its cache's lock for its own operations (in_local keeps them apart from a holder of
 * the allocator's lock, which every other user of a cache is): then there is nothing to
 * take, and not writing the lock's line spares each thread a cache miss per stop. */
static void tc_lock_all(fl_allocator *a, const fli_tcache *held)
{
    if (local_mode(a))
        return;
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
        if (c != held)
            fli_lock_acquire(&c->lock);
}

static void tc_unlock_all(fl_allocator *a, const fli_tcache *held)
{
    if (local_mode(a))
        return;
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
        if (c != held)
            fli_lock_release(&c->lock);
}

/* Room for figure q granted to c, or taken back (x < 0), under the allocator's lock: k
 * follows, and their sum. */
static inline void room_grant(fl_allocator *a, fli_tcache *c, int q, int64_t x)
{
    c->room[q] += x;
    c->k[q] += x;
    a->tc_k[q] += x;
}

/* With every cache locked: rooms to zero, so G + sum k = U. */
static void tc_zero_rooms(fl_allocator *a)
{
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
        for (int q = 0; q < FL_TC_FIGURES; q++)
            room_grant(a, c, q, -c->room[q]);
}

/* After G grew (an allocation by the policy): the invariant again, raising the peaks to
 * the exact current values where they fell short. 1 when that took every cache's room. */
static int tc_peaks_after_growth(fl_allocator *a)
{
    int64_t g[FL_TC_FIGURES];
    global_figures(a, g);
    int over = 0;
    for (int q = 0; q < FL_TC_FIGURES; q++)
        over |= g[q] + a->tc_k[q] > (int64_t)*peak_of(a, q);
    if (FL_LIKELY(!over))
        return 0;
    tc_lock_all(a, NULL);
    tc_zero_rooms(a);
    for (int q = 0; q < FL_TC_FIGURES; q++)
        if (g[q] + a->tc_k[q] > (int64_t)*peak_of(a, q))
            *peak_of(a, q) = (uint64_t)(g[q] + a->tc_k[q]);
    tc_unlock_all(a, NULL);
    return 1;
}

/* After every cache's room was taken (tc_peaks_after_growth, the stream-local mode): what
 * is left under each peak, shared evenly by the caches, a share kept back for the next
 * local_refill. Giving it all to the thread that came here would send the others here at
 * their next allocation, each stopping the rest. */
static void tc_share_room(fl_allocator *a)
{
    int64_t g[FL_TC_FIGURES], n = 1;
    global_figures(a, g);
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc)
        n++;
    tc_lock_all(a, NULL);
    for (int q = 0; q < FL_TC_FIGURES; q++) {
        int64_t share = ((int64_t)*peak_of(a, q) - g[q] - a->tc_k[q]) / n;
        for (fli_tcache *c = a->tcs; c && share > 0; c = c->next_of_alloc) {
            room_grant(a, c, q, share);
        }
    }
    tc_unlock_all(a, NULL);
}

/* Room in c (locked, as is the allocator) for a hit adding need: from the headroom under
 * the peaks (half of what is left beyond need, so that the next hits need no lock), else
 * after zeroing every room; what still lacks raises the peak, as the hit makes U that. */
static void tc_ensure_room(fl_allocator *a, fli_tcache *c, const int64_t need[FL_TC_FIGURES])
{
    int64_t g[FL_TC_FIGURES];
    global_figures(a, g);
    int short_of = 0;
    for (int q = 0; q < FL_TC_FIGURES; q++)
        short_of |= c->room[q] < need[q] && (int64_t)*peak_of(a, q) - g[q] - a->tc_k[q] < need[q] - c->room[q];
    if (short_of) {
        tc_lock_all(a, c);
        tc_zero_rooms(a);
    }
    for (int q = 0; q < FL_TC_FIGURES; q++) {
        int64_t lack = need[q] - c->room[q];
        if (lack <= 0)
            continue;
        int64_t head = (int64_t)*peak_of(a, q) - g[q] - a->tc_k[q];
        if (head < lack) { /* only after zeroing: G + sum k is U, the hit makes it U + need */
            *peak_of(a, q) += (uint64_t)(lack - head);
            head = lack;
        }
        int64_t grant = lack + (head - lack) / 2;
        room_grant(a, c, q, grant);
    }
    if (short_of)
        tc_unlock_all(a, c);
}

/* A hit: e (taken from its bin) is the program's again, asked as size bytes. */
static inline void tc_hit(fli_tcache *c, fli_tc_entry *e, uint64_t size)
{
    e->cached = 0;
    e->req = size;
    c->cached_bytes -= e->charged;
    c->cached_blocks--;
    c->d_req += (int64_t)size;
    c->d_live += (int64_t)fli_live_size(size);
    c->room[FL_TC_BYTES] -= (int64_t)e->charged;
    c->room[FL_TC_REQ] -= (int64_t)size;
    c->room[FL_TC_BLOCKS]--;
    c->hits[FL_TC_BYTES] += e->charged;
    c->hits[FL_TC_REQ] += size;
    c->hits[FL_TC_BLOCKS]++;
}

/* Gives c's cached blocks back to the policy (c and the allocator locked). The figures
 * do not move: G drops by what f_c gains, so k_c follows f_c. */
static void tc_drain(fl_allocator *a, fli_tcache *c)
{
    fli_policy *p = a->policy;
    for (uint32_t i = 0; c->cached_blocks && i <= c->bin_mask; i++) {
        fli_tc_bin *b = &c->bins[i];
        while (b->n) {
            fli_tc_entry *e = fli_tc_take(c, b->stream, b->cls);
            fl_status s = p->ops->free(p, e->addr, 0, NULL);
            if (s != FL_OK) /* cannot happen: the policy handed it out and nobody freed it */
                fprintf(stderr, "fragless: thread cache: block 0x%llx: %s\n", (unsigned long long)e->addr,
                        fl_last_error());
            c->cached_bytes -= e->charged;
            c->cached_blocks--;
            c->k[FL_TC_BYTES] += (int64_t)e->charged;
            a->tc_k[FL_TC_BYTES] += (int64_t)e->charged;
            c->k[FL_TC_BLOCKS]++;
            a->tc_k[FL_TC_BLOCKS]++;
            fli_tc_remove(c, e);
        }
    }
}

static int tc_any_cached(fl_allocator *a)
{
    int any = 0;
    for (fli_tcache *c = a->tcs; c && !any; c = c->next_of_alloc) {
        fli_lock_acquire(&c->lock);
        any = c->cached_blocks != 0;
        fli_lock_release(&c->lock);
    }
    return any;
}

/* Every cached block back to the policy (empty_cache, an allocation that failed, and
 * before any operation that asks the policy whether a block is live). */
static void tc_drain_all(fl_allocator *a)
{
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        fli_lock_acquire(&c->lock);
        tc_drain(a, c);
        fli_lock_release(&c->lock);
    }
}

/* After tc_drain: c's counts go into the allocator's own, its room is dropped and its
 * entries forgotten (the blocks the program holds are the policy's, freed through it). */
static void tc_fold(fl_allocator *a, fli_tcache *c)
{
    a->req_current += (uint64_t)c->d_req;
    a->live512 += (uint64_t)c->d_live;
    a->alloc_total += c->hits[FL_TC_BYTES];
    a->req_total += c->hits[FL_TC_REQ];
    a->tc_allocs += c->hits[FL_TC_BLOCKS];
    c->d_req = c->d_live = 0;
    for (int q = 0; q < FL_TC_FIGURES; q++) {
        a->tc_k[q] -= c->k[q];
        c->k[q] = c->room[q] = 0;
        c->hits[q] = 0;
    }
    fli_tc_clear(c);
}

/* The caches off (emptied and folded) or on again; under the allocator's lock. */
static void tc_set_off(fl_allocator *a, int off)
{
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        fli_lock_acquire(&c->lock);
        if (off) {
            tc_drain(a, c);
            tc_fold(a, c);
        }
        c->off = off;
        fli_lock_release(&c->lock);
    }
    a->tc_off = off;
}

/* Reasons to bypass the caches: record_stream, graphs, the recorder (whose rows must
 * come in order). The publisher is not one: it publishes at the allocator's lock. */
static int tc_reasons(const fl_allocator *a)
{
    const fli_graphs *g = &a->graphs;
    return a->n_pending || a->uses.count || g->n || fli_graphs_underway(g) || fli_graphs_pending(g) || a->rec;
}

/* The caches on (under the lock). On a device that can capture CUDA graphs, each
 * allocation first asks the device, without a lock, whether its stream is capturing
 * (tc_capturing): one that is goes to alloc_watching, which turns the caches off for as
 * long as a capture or a graph is known (tc_reasons). */
static void threads_on(fl_allocator *a)
{
    if (a->threads)
        return;
    a->threads = 1;
    a->tc_off = tc_reasons(a);
    /* The caller holds the lock: the stream-local operations stay out until it is
     * released, before they can begin. */
    a->excl_held = 1;
    atomic_store_explicit(&a->local_excl, 1, memory_order_seq_cst);
    const fli_policy_ops *ops = a->policy->ops;
    int route = ops->alloc_local && ops->free_local ? ROUTE_LOCAL : ROUTE_THREADS;
    atomic_store_explicit(&a->route, route | (a->capture_watch ? ROUTE_CAPTURE : 0), memory_order_relaxed);
    update_slow(a);
}

/* Whether an allocation on this stream must go through alloc_watching: the device can
 * capture and says the stream is capturing, or cannot say (asked without any lock: the
 * device's capture query is thread-safe, device.h). */
static inline int tc_capturing(const fl_allocator *a, uint64_t stream)
{
    if (!a->capture_watch)
        return 0;
    int status = FL_CAPTURE_NONE;
    uint64_t id = 0;
    return fli_dev_capture_info(a->policy->dev, stream, &status, &id) != FL_OK || status != FL_CAPTURE_NONE;
}

/* An ending thread's cache (tcache.c, under the registry's mutex). */
void fli_tc_retire(fli_tcache *c)
{
    fl_allocator *a = c->a;
    lock_a(a);
    fli_lock_acquire(&c->lock);
    tc_drain(a, c);
    tc_fold(a, c);
    fli_lock_release(&c->lock);
    if (a->policy->ops->local_forget) /* its heaps may serve another thread now */
        a->policy->ops->local_forget(a->policy, local_token(c));
    for (fli_tcache **pc = &a->tcs; *pc; pc = &(*pc)->next_of_alloc)
        if (*pc == c) {
            *pc = c->next_of_alloc;
            break;
        }
    c->a = NULL;
    atomic_store_explicit(&c->alloc_id, 0, memory_order_release);
    release_updated(a);
}

/* In a forked child (one thread, every lock taken before the fork): every cache's blocks
 * back, the caches detached (this thread's are freed by fli_tc_prune, the others' here),
 * the allocator single-threaded again. */
static void tc_fork_child(fl_allocator *a)
{
    for (fli_tcache *c = a->tcs, *next; c; c = next) {
        next = c->next_of_alloc;
        fli_lock_reset(&c->lock);
        tc_drain(a, c);
        tc_fold(a, c);
        if (a->policy->ops->local_forget) /* the child's one thread may take any heap */
            a->policy->ops->local_forget(a->policy, local_token(c));
        c->a = NULL;
        atomic_store_explicit(&c->alloc_id, 0, memory_order_release);
        if (!fli_tc_is_mine(c))
            fli_tc_free(c);
    }
    a->tcs = NULL;
    a->threads = a->tc_off = 0;
    atomic_store_explicit(&a->route, a->capture_watch ? ROUTE_CAPTURE : 0, memory_order_relaxed);
}

/* This thread's cache of a, made when it has none (NULL without host memory: the thread
 * then goes through the allocator's lock). */
static FL_NOINLINE fli_tcache *tc_get_slow(fl_allocator *a)
{
    fli_tcache *c = fli_tc_find(a->id);
    if (FL_LIKELY(c != NULL))
        return c;
    fli_tc_registry_lock();
    c = fli_tc_new(a, a->id);
    if (c) {
        lock_a(a);
        c->off = a->tc_off;
        c->next_of_alloc = a->tcs;
        a->tcs = c;
        unlock_a(a);
    }
    fli_tc_registry_unlock();
    return c;
}

/* tc_get_slow's first look, inline (the thread's cache found last). */
static inline fli_tcache *tc_get(fl_allocator *a)
{
    fli_tcache *c = fli_tc_find_last(a->id);
    return FL_LIKELY(c != NULL) ? c : tc_get_slow(a);
}

static fl_status tc_alloc_locked(fl_allocator *a, fli_tcache *c, uint64_t size, uint64_t stream, uint64_t *addr);

/* A thread's allocation or free took the way under the lock in the stream-local mode:
 * the policy may hand it the heap (policy.h: local_missed), before the operation, so
 * that its next ones are stream-local. */
static void local_missed(fl_allocator *a, fli_tcache *c, uint64_t stream, uint64_t size, uint64_t addr)
{
    const fli_policy_ops *ops = a->policy->ops;
    if (c && ops->local_missed && local_mode(a) && !a->tc_off)
        ops->local_missed(a->policy, local_token(c), stream, size, addr);
}

/* An allocation in threads mode that neither the thread's cache nor a stream-local
 * operation could serve: under the lock (the watching path on a device that can
 * capture: graphs may be pending, or another stream capturing). */
static fl_status alloc_missed(fl_allocator *a, fli_tcache *c, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (a->capture_watch)
        return alloc_watching(a, c, size, stream, addr);
    lock_a(a);
    local_missed(a, c, stream, size, 0);
    fl_status s = tc_alloc_locked(a, c, size, stream, addr);
    release_updated(a);
    return s;
}

/* ---- stream-local operations ------------------------------------------------------ */

/* With threads on and a policy that has stream-local operations (policy.h: alloc_local,
 * free_local; the fragless policy), threads do not keep blocks in caches: each of their
 * allocations and frees asks the policy for a stream-local operation first, which works
 * on a heap of the calling thread's own, with no lock (threads on different streams
 * never wait for each other), and takes the allocator's lock only when that cannot do (a device
 * call, a new stream, memory pressure, no room under a peak, record_stream, graphs, the
 * recorder). The two are kept apart without a shared write per operation: a thread sets
 * its own in_local (its cache struct, fli_tcache), then reads local_excl; a holder of
 * the allocator's lock sets local_excl, then waits for every in_local to be 0 (each side
 * writes before it reads, both sequentially consistent: one of them sees the other).
 * The figures stay exact as with the caches: what a stream-local operation changes is
 * counted like a cache hit (allocation) or a cached free, in the thread's cache, against
 * its room under the peaks; the holder of the lock then folds it into the policy's
 * counters (locals_out), so everything under the lock sees exact counters. The cache
 * struct holds no blocks in this mode. */

/* Spins a stream-local operation waits for a holder of the lock (local_enter): a few
 * microseconds. */
#define LOCAL_WAIT_SPINS 4096

static inline int local_mode(const fl_allocator *a)
{
    return atomic_load_explicit(&a->route, memory_order_relaxed) & ROUTE_LOCAL;
}

/* What c's stream-local operations did, into the policy's and the allocator's counters
 * (the lock held, c's operations out). G grows by what f_c loses: k_c follows. */
static void local_fold(fl_allocator *a, fli_tcache *c)
{
    if (!(c->l_bytes | (int64_t)c->l_allocs | (int64_t)c->l_frees))
        return;
    fli_policy *p = a->policy;
    int64_t x = c->l_bytes, nb = (int64_t)(c->l_allocs - c->l_frees);
    p->allocated += (uint64_t)x;
    p->num_allocs += c->l_allocs;
    p->num_frees += c->l_frees;
    a->alloc_total += c->l_total;
    a->local_allocs += c->l_allocs;
    a->local_refills += c->l_refills;
    c->k[FL_TC_BYTES] -= x;
    a->tc_k[FL_TC_BYTES] -= x;
    c->k[FL_TC_BLOCKS] -= nb;
    a->tc_k[FL_TC_BLOCKS] -= nb;
    c->l_bytes = 0;
    c->l_allocs = c->l_frees = c->l_total = 0;
    c->l_refills = 0;
}

/* Keeps the stream-local operations out for as long as the lock is held (lock_a, under
 * the lock): waits for those under way, then folds in what they did. */
static void locals_out(fl_allocator *a)
{
    a->excl_held = 1;
    atomic_store_explicit(&a->local_excl, 1, memory_order_seq_cst);
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        /* One operation of tens of nanoseconds, unless its thread lost its CPU. */
        for (int spins = 0; atomic_load_explicit(&c->in_local, memory_order_seq_cst); spins++)
            if (spins < 1024)
                fli_cpu_relax();
            else
                sched_yield();
        local_fold(a, c);
    }
}

/* Room for c's next stream-local operations (the lock held, the stream-local mode: no
 * cache lock, as in tc_lock_all): half of what is left under each peak. */
static void tc_grant_room(fl_allocator *a, fli_tcache *c)
{
    int64_t g[FL_TC_FIGURES];
    global_figures(a, g);
    for (int q = 0; q < FL_TC_FIGURES; q++) {
        int64_t head = (int64_t)*peak_of(a, q) - g[q] - a->tc_k[q];
        if (head < 2)
            continue;
        room_grant(a, c, q, head / 2);
    }
}

/* Enters a stream-local operation (in_local set, nobody holding the lock keeps them out):
 * 1; 0 when a holder of the lock keeps them out for longer than a short wait. A holder
 * works for about a microsecond: waiting for it beats joining the lock, where each
 * thread that goes there keeps the others out in turn (a convoy: in the threads bench,
 * 7 operations kept out for each that needed the lock). */
static inline int local_enter(fl_allocator *a, fli_tcache *c)
{
    for (int spins = 0;; spins++) {
        atomic_store_explicit(&c->in_local, 1, memory_order_seq_cst);
        if (FL_LIKELY(!atomic_load_explicit(&a->local_excl, memory_order_seq_cst)))
            return 1;
        atomic_store_explicit(&c->in_local, 0, memory_order_release);
        while (atomic_load_explicit(&a->local_excl, memory_order_relaxed))
            if (++spins > LOCAL_WAIT_SPINS)
                return 0;
            else
                fli_cpu_relax();
    }
}

/* Whether c's thread should publish after its stream-local operation (called while it
 * is still in it: c's counters are its own then): the publisher writes the record under
 * the lock, so a thread whose calls are all stream-local publishes every 1024 operations,
 * and as soon as what it did since the record was written (its unfolded bytes) reaches
 * pub_slack: the record of a job that went idle is its final state within that slack per
 * thread. */
static inline int local_unpublished(fl_allocator *a, fli_tcache *c)
{
    int64_t slack = atomic_load_explicit(&a->pub_slack, memory_order_relaxed);
    return (++c->local_ops & 1023) == 0 || c->l_bytes >= slack || c->l_bytes <= -slack;
}

/* Publishes what every thread's stream-local operations did (the lock folds it in). */
static FL_NOINLINE void local_publish(fl_allocator *a)
{
    lock_a(a);
    maybe_publish(a, 0);
    release_updated(a);
}

/* Ends what local_enter began (entered: it did), then publishes where
 * local_unpublished says so after an operation that was done (asked before in_local is
 * cleared: c's counters are its own until then). */
static inline void local_leave(fl_allocator *a, fli_tcache *c, int entered, int done)
{
    int publish = done && FL_UNLIKELY(a->pub != NULL) && local_unpublished(a, c);
    if (entered)
        atomic_store_explicit(&c->in_local, 0, memory_order_release);
    if (FL_UNLIKELY(publish))
        local_publish(a);
}

/* Whether c's room lets a stream-local allocation of size bytes be tried (it charges at
 * least size bytes; the policy refuses one that would charge more than the room). */
static inline int local_roomy(const fli_tcache *c, uint64_t size)
{
    return c->room[FL_TC_REQ] >= (int64_t)size && c->room[FL_TC_BLOCKS] >= 1 && c->room[FL_TC_BYTES] >= (int64_t)size;
}

/* Room for c's stream-local allocation of size bytes from what no cache holds under the
 * peaks (half of it beyond the need, as tc_grant_room gives), under the allocator's lock
 * but with the other threads' stream-local operations going on: G + sum k, all a grant
 * reads, is the same whether or not what they did is folded in (local_fold moves it from
 * their k to G), they change neither, and nobody but a holder of the lock changes c's room
 * while c's thread is out of its own operations. 1: c has room for the allocation now; 0:
 * what no cache holds is short of it (other caches' rooms are needed, or the peak must
 * rise): the allocation takes the ordinary way, which keeps the other threads out. Most
 * room misses of two threads whose figures peak together are of the first kind; the
 * ordinary way stops the other thread for microseconds each (bench/threads.c). */
static FL_NOINLINE int local_refill(fl_allocator *a, fli_tcache *c, uint64_t size)
{
    const int64_t need[FL_TC_FIGURES] = {(int64_t)size, (int64_t)size, 1};
    int64_t g[FL_TC_FIGURES], lack[FL_TC_FIGURES], head[FL_TC_FIGURES];
    int ok = 1;
    fli_lock_acquire(&a->lock);
    if (a->tc_off || !local_mode(a) || c->off) {
        fli_lock_release(&a->lock);
        return 0;
    }
    global_figures(a, g);
    for (int q = 0; q < FL_TC_FIGURES; q++) {
        lack[q] = need[q] - c->room[q];
        head[q] = (int64_t)*peak_of(a, q) - g[q] - a->tc_k[q];
        ok &= lack[q] <= head[q];
    }
    if (ok)
        for (int q = 0; q < FL_TC_FIGURES; q++) {
            int64_t grant = lack[q] > 0 ? lack[q] + (head[q] - lack[q]) / 2 : head[q] / 2;
            room_grant(a, c, q, grant);
        }
    fli_lock_release(&a->lock);
    return ok;
}

/* fl_alloc in the stream-local mode. */
static fl_status local_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fli_tcache *c = tc_get(a);
    if (FL_UNLIKELY(tc_capturing(a, stream)))
        return alloc_watching(a, c, size, stream, addr);
    if (FL_LIKELY(c != NULL)) {
        fli_policy *p = a->policy;
        int entered = local_enter(a, c), refilled = 0;
        int roomy = entered && !c->off && local_roomy(c, size);
        if (FL_UNLIKELY(entered && !roomy && !c->off)) {
            atomic_store_explicit(&c->in_local, 0, memory_order_release);
            entered = local_refill(a, c, size) && local_enter(a, c);
            roomy = entered && !c->off && local_roomy(c, size);
            refilled = 1;
        }
        uint64_t charged = roomy ? p->ops->alloc_local(p, size, stream, (uint64_t)c->room[FL_TC_BYTES], &c->local, addr)
                                 : 0;
        int done = charged != 0;
        if (done) {
            c->l_bytes += (int64_t)charged;
            c->l_allocs++;
            c->l_refills += (uint64_t)refilled;
            c->l_total += charged;
            c->d_req += (int64_t)size;
            c->d_live += (int64_t)fli_live_size(size);
            c->hits[FL_TC_REQ] += size;
            c->room[FL_TC_BYTES] -= (int64_t)charged;
            c->room[FL_TC_REQ] -= (int64_t)size;
            c->room[FL_TC_BLOCKS]--;
        }
        local_leave(a, c, entered, done);
        if (done)
            return FL_OK;
    }
    return alloc_missed(a, c, size, stream, addr);
}

/* local_free's way under the lock (out of line: the stream-local free is inline in
 * free_routed). */
static FL_NOINLINE fl_status local_free_locked(fl_allocator *a, fli_tcache *c, uint64_t addr, uint64_t want)
{
    lock_a(a);
    local_missed(a, c, 0, 0, addr);
    fl_status s = free_locked(a, addr, want);
    if (s == FL_OK && c && !a->tc_off)
        tc_grant_room(a, c);
    release_updated(a);
    return s;
}

/* A free in the stream-local mode: the policy's stream-local free, else under the lock
 * (which also says what was wrong with the address or size). */
static inline __attribute__((always_inline)) fl_status local_free(fl_allocator *a, uint64_t addr, uint64_t want)
{
    fli_tcache *c = tc_get(a);
    if (FL_LIKELY(c != NULL)) {
        fli_policy *p = a->policy;
        uint64_t req = 0;
        int entered = local_enter(a, c);
        uint64_t charged = entered && !c->off ? p->ops->free_local(p, addr, want, &c->local, &req) : 0;
        int done = charged != 0;
        if (done) {
            c->l_bytes -= (int64_t)charged;
            c->l_frees++;
            c->d_req -= (int64_t)req;
            c->d_live -= (int64_t)fli_live_size(req);
            c->room[FL_TC_BYTES] += (int64_t)charged;
            c->room[FL_TC_REQ] += (int64_t)req;
            c->room[FL_TC_BLOCKS]++;
        }
        local_leave(a, c, entered, done);
        if (done)
            return FL_OK;
    }
    return local_free_locked(a, c, addr, want);
}

/* An allocation under the allocator's lock while the caches are on: a cached block
 * whose hit needed room, else the policy (after draining the caches when it is out of
 * memory), the block entered in c (may be NULL). */
static fl_status tc_alloc_locked(fl_allocator *a, fli_tcache *c, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (a->tc_off)
        return alloc_locked(a, size, stream, addr);
    int local = local_mode(a);
    if (c && !local && size <= FL_TC_MAX_BLOCK) {
        fli_lock_acquire(&c->lock);
        fli_tc_entry *e = fli_tc_take(c, stream, size);
        if (e) {
            const int64_t need[FL_TC_FIGURES] = {(int64_t)e->charged, (int64_t)size, 1};
            tc_ensure_room(a, c, need);
            tc_hit(c, e, size);
            *addr = e->addr;
        }
        fli_lock_release(&c->lock);
        if (e)
            return FL_OK;
    }
    fli_policy *p = a->policy;
    uint64_t before = p->allocated;
    fl_status s = p->ops->alloc(p, size, stream, addr);
    if (s == FL_ERR_OOM && tc_any_cached(a)) {
        tc_drain_all(a);
        before = p->allocated;
        s = p->ops->alloc(p, size, stream, addr);
        a->tc_retried++; /* the policy's first failure was not the program's */
    }
    if (s != FL_OK)
        return s == FL_ERR_OOM ? out_of_memory(a, size, stream) : s;
    uint64_t charged = p->allocated - before;
    a->alloc_total += charged;
    a->req_current += size;
    a->req_total += size;
    a->live512 += fli_live_size(size);
    int zeroed = tc_peaks_after_growth(a);
    if (c && local) { /* room for the thread's next stream-local operations */
        if (zeroed)
            tc_share_room(a);
        else
            tc_grant_room(a, c);
    } else if (c) {
        fli_lock_acquire(&c->lock);
        fli_tc_add(c, *addr, stream, size, charged); /* without host memory: freed as anyone's */
        fli_lock_release(&c->lock);
    }
    if (FL_UNLIKELY(a->pub != NULL))
        maybe_publish(a, 0);
    return FL_OK;
}

static fl_status tc_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fli_tcache *c = tc_get(a);
    if (FL_UNLIKELY(tc_capturing(a, stream)))
        return alloc_watching(a, c, size, stream, addr);
    if (FL_LIKELY(c != NULL) && size <= FL_TC_MAX_BLOCK) {
        fli_lock_acquire(&c->lock);
        if (FL_LIKELY(!c->off)) {
            fli_tc_entry *e = fli_tc_take(c, stream, size);
            if (e) {
                if (FL_LIKELY(c->room[FL_TC_BYTES] >= (int64_t)e->charged && c->room[FL_TC_REQ] >= (int64_t)size &&
                              c->room[FL_TC_BLOCKS] >= 1)) {
                    tc_hit(c, e, size);
                    *addr = e->addr;
                    fli_lock_release(&c->lock);
                    return FL_OK;
                }
                fli_tc_untake(c, e); /* the hit needs room: under the allocator's lock */
            }
        }
        fli_lock_release(&c->lock);
    }
    return alloc_missed(a, c, size, stream, addr);
}

/* A free under the allocator's lock while the caches are on, of a block in no entry of
 * mine: another thread's entry goes (a cached one was freed already), then the
 * general free. */
static fl_status tc_free_locked(fl_allocator *a, const fli_tcache *mine, uint64_t addr, uint64_t want)
{
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        if (c == mine)
            continue;
        fli_lock_acquire(&c->lock);
        fli_tc_entry *e = fli_tc_lookup(c, addr);
        int cached = e && e->cached;
        if (e && !cached) {
            if (want && want != e->req) {
                fli_lock_release(&c->lock);
                return fli_policy_size_mismatch(addr, want, e->req);
            }
            fli_tc_remove(c, e);
        }
        fli_lock_release(&c->lock);
        if (cached)
            return fli_policy_not_live(a->policy, addr);
        if (e)
            break;
    }
    return free_locked(a, addr, want);
}

static fl_status tc_free(fl_allocator *a, uint64_t addr, uint64_t want)
{
    fli_tcache *c = tc_get(a);
    if (FL_LIKELY(c != NULL)) {
        fli_lock_acquire(&c->lock);
        fli_tc_entry *e = c->off ? NULL : fli_tc_lookup(c, addr);
        if (e) {
            if (FL_UNLIKELY(e->cached || (want && want != e->req))) {
                uint64_t req = e->req;
                int cached = e->cached;
                fli_lock_release(&c->lock);
                return cached ? fli_policy_not_live(a->policy, addr) : fli_policy_size_mismatch(addr, want, req);
            }
            uint64_t req = e->req;
            if (e->charged <= FL_TC_MAX_BLOCK && c->cached_bytes + e->charged <= FL_TC_MAX_BYTES && fli_tc_put(c, e)) {
                c->cached_bytes += e->charged;
                c->cached_blocks++;
                c->d_req -= (int64_t)req;
                c->d_live -= (int64_t)fli_live_size(req);
                c->room[FL_TC_BYTES] += (int64_t)e->charged;
                c->room[FL_TC_REQ] += (int64_t)req;
                c->room[FL_TC_BLOCKS]++;
                fli_lock_release(&c->lock);
                return FL_OK;
            }
            fli_tc_remove(c, e); /* not kept: the policy's again, as anyone's block */
            fli_lock_release(&c->lock);
            lock_a(a);
            fl_status s = free_locked(a, addr, want);
            release_updated(a);
            return s;
        }
        fli_lock_release(&c->lock);
    }
    lock_a(a);
    fl_status s = a->threads && !a->tc_off ? tc_free_locked(a, c, addr, want) : free_locked(a, addr, want);
    release_updated(a);
    return s;
}

/* The allocator's lock on the fast paths: meeting another thread there turns the thread
 * caches on (lock_contended, out of line: the fast paths save fewer registers). */
static FL_NOINLINE void lock_contended(fl_allocator *a)
{
    fli_lock_wait(&a->lock);
    if (!a->threads)
        threads_on(a);
}

static inline void lock_fast(fl_allocator *a)
{
    uint32_t c = 0;
    if (FL_UNLIKELY(!atomic_compare_exchange_strong_explicit(&a->lock.held, &c, 1, memory_order_acquire,
                                                             memory_order_relaxed)))
        lock_contended(a);
    /* Threads on since the route was read: keep the stream-local operations out too. */
    if (FL_UNLIKELY(a->slow) && a->threads && !a->excl_held)
        locals_out(a);
}

fl_status fli_allocator_threads(fl_allocator *a)
{
    lock_a(a);
    threads_on(a);
    release_updated(a);
    return FL_OK;
}

/* The allocator's lock for an operation that asks the policy whether a block is live
 * (or must see every block in it): the caches' blocks go back first. */
static void lock_drained(fl_allocator *a)
{
    lock_a(a);
    if (a->threads)
        tc_drain_all(a);
}

/* The caches against their counts, the policy and the peaks (fl_allocator_check). */
static int tc_check(fl_allocator *a)
{
    int64_t ksum[FL_TC_FIGURES] = {0}, g[FL_TC_FIGURES];
    const char *err = NULL;
    uint64_t bad = 0;
    tc_lock_all(a, NULL);
    for (const fli_tcache *c = a->tcs; c && !err; c = c->next_of_alloc) {
        uint64_t bytes = 0, blocks = 0;
        for (uint32_t i = 0; i <= c->bin_mask && !err; i++) {
            const fli_tc_bin *b = &c->bins[i];
            uint32_t n = 0;
            for (uint32_t v = b->head; v && n <= b->n && !err; v = c->e[v].next, n++) {
                const fli_tc_entry *e = &c->e[v];
                bytes += e->charged;
                blocks++;
                if (!e->cached || e->stream != b->stream || e->req != b->cls)
                    err = "a bin holds a block not cached there", bad = e->addr;
                else if (!a->policy->ops->block_size(a->policy, e->addr))
                    err = "a cached block is not allocated in the policy", bad = e->addr;
            }
            if (!err && n != b->n)
                err = "a bin's count is wrong", bad = b->cls;
        }
        if (!err && (bytes != c->cached_bytes || blocks != c->cached_blocks || (a->tc_off && c->index.count)))
            err = "the cached counts are wrong, or a cache is off but not empty", bad = bytes;
        int64_t f[FL_TC_FIGURES];
        fig_f(c, f);
        for (int q = 0; q < FL_TC_FIGURES && !err; q++) {
            if (c->room[q] < 0 || c->k[q] != f[q] + c->room[q])
                err = "a cache's room or k is wrong", bad = (uint64_t)q;
            ksum[q] += c->k[q];
        }
    }
    global_figures(a, g);
    for (int q = 0; q < FL_TC_FIGURES && !err; q++)
        if (ksum[q] != a->tc_k[q] || (a->threads && g[q] + a->tc_k[q] > (int64_t)*peak_of(a, q)))
            err = "a peak could be passed unseen (G + sum k > peak)", bad = (uint64_t)q;
    tc_unlock_all(a, NULL);
    return err ? fli_fail(FL_ERR_INVALID, "allocator check: thread caches: %s (0x%llx)", err,
                          (unsigned long long)bad) != FL_OK
               : 0;
}

/* fl_alloc off its fast path: a route (capture watching, thread caches) or, with the lock
 * held, a slow reason. Out of line, so that the fast path saves few registers. */
static FL_NOINLINE fl_status alloc_routed(fl_allocator *a, int route, uint64_t size, uint64_t stream, uint64_t *addr)
{
    return route & ROUTE_LOCAL     ? local_alloc(a, size, stream, addr)
           : route & ROUTE_THREADS ? tc_alloc(a, size, stream, addr)
                                   : alloc_watching(a, NULL, size, stream, addr);
}

static FL_NOINLINE fl_status alloc_slow_locked(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (a->threads && !a->excl_held) /* threads on since the route was read (lock_fast) */
        locals_out(a);
    fl_status s = a->threads ? tc_alloc_locked(a, NULL, size, stream, addr) : alloc_locked(a, size, stream, addr);
    release_updated(a);
    return s;
}

/* fl_alloc with the lock held: the policy's call and plain statistics; alloc_locked when
 * a slow reason holds (the flag is read under the lock: whoever set it held the lock too). */
static inline fl_status alloc_held(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (FL_UNLIKELY(a->slow))
        return alloc_slow_locked(a, size, stream, addr);
    fli_policy *p = a->policy;
    uint64_t before = p->allocated;
    fl_status s = p->ops->alloc(p, size, stream, addr);
    if (FL_LIKELY(s == FL_OK))
        count_alloc(a, p, p->allocated - before, size);
    else
        s = alloc_failed(a, s, size, stream);
    fli_lock_release(&a->lock); /* not slow: no threads, nothing kept out (unlock_a) */
    return s;
}

/* fl_alloc that met another thread at the lock (lock_fast's wait, out of line with the
 * rest of the call: the fast path then keeps nothing alive across a call but the
 * policy's). */
static FL_NOINLINE fl_status alloc_contended(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    lock_contended(a);
    return alloc_held(a, size, stream, addr);
}

/* The fast path: lock_fast's compare-and-swap, then alloc_held. */
fl_status fl_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr)
{
    if (FL_UNLIKELY(size == 0))
        return fli_fail(FL_ERR_INVALID, "fl_alloc: size 0");
    int route = atomic_load_explicit(&a->route, memory_order_relaxed);
    if (FL_UNLIKELY(route)) /* a device that can capture CUDA graphs, or thread caches */
        return alloc_routed(a, route, size, stream, addr);
    uint32_t c = 0;
    if (FL_UNLIKELY(!atomic_compare_exchange_strong_explicit(&a->lock.held, &c, 1, memory_order_acquire,
                                                             memory_order_relaxed)))
        return alloc_contended(a, size, stream, addr);
    return alloc_held(a, size, stream, addr);
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
    fli_policy *p = a->policy;
    fl_status s = FL_OK;
    pending_free q = {addr, 0, {0}};
    if (u->n > MAX_USES)
        s = FL_ERR_UNSUPPORTED;
    for (uint32_t k = 0; s == FL_OK && k < u->n; k++)
        if ((s = fli_dev_event_record(p->dev, u->stream[k], &q.event[k])) == FL_OK)
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
            fli_dev_event_destroy(p->dev, q.event[k]);
        if ((s = fli_dev_synchronize(p->dev)) != FL_OK)
            return s; /* nothing changed: the block stays live */
        if ((s = policy_free(a, addr)) != FL_OK)
            return s;
    }
    fli_map_remove(&a->uses, addr, NULL);
    free(u);
    return FL_OK;
}

fl_status fl_record_stream(fl_allocator *a, uint64_t addr, uint64_t stream)
{
    lock_drained(a);
    fl_status s = FL_OK;
    uint64_t val;
    const fli_graph_block *gb = fli_graphs_find(&a->graphs, addr);
    if (!a->policy->ops->block_size(a->policy, addr) || pending_index(a, addr) >= 0 || (gb && !gb->live) ||
        fli_graphs_is_deferred(&a->graphs, addr)) {
        s = fli_fail(FL_ERR_NOT_FOUND, "record_stream of 0x%llx on stream 0x%llx: not a live block of this allocator",
                    (unsigned long long)addr, (unsigned long long)stream);
    } else {
        stream_uses *u = fli_map_get(&a->uses, addr, &val) ? (stream_uses *)(uintptr_t)val : NULL;
        if (!u) {
            u = calloc(1, sizeof *u);
            if (!u || fli_map_put(&a->uses, addr, (uint64_t)(uintptr_t)u) != FL_OK) {
                free(u);
                s = fli_fail(FL_ERR_NOMEM, "record_stream of 0x%llx: host memory", (unsigned long long)addr);
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
    release_updated(a);
    return s;
}

/* A free while record_stream is in use: a block used on other streams waits for their
 * events; a pending block is freed already. *size: its requested bytes. */
static fl_status free_with_uses(fl_allocator *a, uint64_t addr, uint64_t want, uint64_t *size)
{
    uint64_t uses_val;
    if (pending_index(a, addr) >= 0)
        return fli_policy_not_live(a->policy, addr);
    if (!fli_map_get(&a->uses, addr, &uses_val))
        return a->policy->ops->free(a->policy, addr, want, size);
    *size = a->policy->ops->block_size(a->policy, addr);
    if (want && want != *size)
        return fli_policy_size_mismatch(addr, want, *size);
    return defer_free(a, addr, (stream_uses *)(uintptr_t)uses_val);
}

/* A free while CUDA graphs hold blocks or a capture is underway: a graph's block is kept
 * for its graph; another block freed during a capture waits for the capture's end (its
 * policy might make a device call the capture forbids); anything else as usual. */
static fl_status free_graphs(fl_allocator *a, uint64_t addr, uint64_t want, uint64_t *size)
{
    fli_graphs *g = &a->graphs;
    fli_graph_block *b = fli_graphs_find(g, addr);
    uint64_t val;
    if (b) {
        if (!b->live)
            return fli_policy_not_live(a->policy, addr);
        if (want && want != b->requested)
            return fli_policy_size_mismatch(addr, want, b->requested);
        *size = b->requested;
        if (!b->capture && !fli_graphs_underway(g)) { /* its graph is gone: an ordinary block */
            uint64_t policy_size;
            fl_status s = a->policy->ops->free(a->policy, addr, 0, &policy_size);
            if (s == FL_OK)
                fli_graphs_remove(g, b);
            return s;
        }
        /* Released ones given back at the next catch-up; the block counts as freed now
         * (kept_bytes grows: the allocated figure drops, the derived freed total grows). */
        fli_graphs_keep(g, b);
        if (fli_map_remove(&a->uses, addr, &val)) /* the graph keeps it anyway */
            free((void *)(uintptr_t)val);
        return FL_OK;
    }
    if (fli_graphs_underway(g)) {
        *size = a->policy->ops->block_size(a->policy, addr);
        if (!*size || pending_index(a, addr) >= 0 || fli_graphs_is_deferred(g, addr))
            return fli_policy_not_live(a->policy, addr);
        if (want && want != *size)
            return fli_policy_size_mismatch(addr, want, *size);
        fl_status s = fli_graphs_defer(g, addr);
        if (s == FL_OK && fli_map_remove(&a->uses, addr, &val)) /* the catch-up synchronizes */
            free((void *)(uintptr_t)val);
        return s;
    }
    if (a->n_pending || a->uses.count)
        return free_with_uses(a, addr, want, size);
    return a->policy->ops->free(a->policy, addr, want, size);
}

/* want_size: the size the caller says the block has (0 = not checked). */
static fl_status free_locked(fl_allocator *a, uint64_t addr, uint64_t want_size)
{
    fli_policy *p = a->policy;
    uint64_t size = 0;
    fl_status s;
    if (FL_UNLIKELY(a->graphs.n || fli_graphs_underway(&a->graphs)))
        s = free_graphs(a, addr, want_size, &size);
    else if (FL_UNLIKELY(a->n_pending || a->uses.count))
        s = free_with_uses(a, addr, want_size, &size);
    else
        s = p->ops->free(p, addr, want_size, &size);
    if (FL_UNLIKELY(s != FL_OK))
        return s;
    a->req_current -= size;
    a->live512 -= fli_live_size(size);
    if (FL_UNLIKELY(a->rec != NULL))
        fli_recorder_free(a->rec, addr, size);
    if (FL_UNLIKELY(a->pub != NULL))
        maybe_publish(a, 0);
    return FL_OK;
}

/* free_api off its fast path, out of line as alloc_routed and alloc_slow_locked are. */
static FL_NOINLINE fl_status free_routed(fl_allocator *a, int route, uint64_t addr, uint64_t want)
{
    return route & ROUTE_LOCAL ? local_free(a, addr, want) : tc_free(a, addr, want);
}

static FL_NOINLINE fl_status free_slow_locked(fl_allocator *a, uint64_t addr, uint64_t want)
{
    if (a->threads && !a->excl_held) /* threads on since the route was read (lock_fast) */
        locals_out(a);
    fl_status s = a->threads && !a->tc_off ? tc_free_locked(a, NULL, addr, want) : free_locked(a, addr, want);
    release_updated(a);
    return s;
}

/* Both frees with the lock held: the policy finds the block once and gives its
 * requested size back; free_locked when a slow reason holds. */
static inline fl_status free_held(fl_allocator *a, uint64_t addr, uint64_t want)
{
    if (FL_UNLIKELY(a->slow))
        return free_slow_locked(a, addr, want);
    uint64_t size;
    fli_policy *p = a->policy;
    fl_status s = p->ops->free(p, addr, want, &size);
    if (FL_LIKELY(s == FL_OK)) {
        a->req_current -= size;
        a->live512 -= fli_live_size(size);
    }
    fli_lock_release(&a->lock); /* not slow: as in fl_alloc */
    return s;
}

/* A free that met another thread at the lock, as alloc_contended. */
static FL_NOINLINE fl_status free_contended(fl_allocator *a, uint64_t addr, uint64_t want)
{
    lock_contended(a);
    return free_held(a, addr, want);
}

/* The fast path of both frees, as fl_alloc's. */
static inline fl_status free_api(fl_allocator *a, uint64_t addr, uint64_t want)
{
    int route = atomic_load_explicit(&a->route, memory_order_relaxed);
    if (FL_UNLIKELY(route & (ROUTE_THREADS | ROUTE_LOCAL)))
        return free_routed(a, route, addr, want);
    uint32_t c = 0;
    if (FL_UNLIKELY(!atomic_compare_exchange_strong_explicit(&a->lock.held, &c, 1, memory_order_acquire,
                                                             memory_order_relaxed)))
        return free_contended(a, addr, want);
    return free_held(a, addr, want);
}

fl_status fl_free(fl_allocator *a, uint64_t addr) { return free_api(a, addr, 0); }

fl_status fl_free_sized(fl_allocator *a, uint64_t addr, uint64_t size)
{
    if (size == 0)
        return fli_fail(FL_ERR_INVALID, "free of 0x%llx with size 0: no block has size 0", (unsigned long long)addr);
    return free_api(a, addr, size);
}

static fl_status graphs_catch_up(fl_allocator *a);

fl_status fl_empty_cache(fl_allocator *a)
{
    lock_drained(a);
    fl_status s = FL_OK;
    int underway = a->policy->dev->capture_watch ? fli_graphs_scan(&a->graphs, a->policy->dev) : 0;
    if (underway < 0)
        s = fli_fail(FL_ERR_DEVICE, "empty_cache: nothing given back: cannot tell whether a CUDA graph capture is "
                    "underway (%s); a synchronize would invalidate it", fl_last_error());
    else if (underway)
        s = fli_fail(FL_ERR_UNSUPPORTED, "empty_cache during a CUDA graph capture: nothing given back (it needs a "
                    "synchronize, which would invalidate the capture)");
    else if (fli_graphs_pending(&a->graphs))
        s = graphs_catch_up(a);
    if (s == FL_OK && a->n_pending)
        s = synchronize_pending(a);
    if (s == FL_OK)
        s = a->policy->ops->empty_cache(a->policy);
    maybe_publish(a, 1);
    release_updated(a);
    return s;
}

fl_status fl_set_limit(fl_allocator *a, uint64_t bytes)
{
    lock_drained(a); /* what the caches hold may be above the new limit */
    fli_policy *p = a->policy;
    p->dev->limit = bytes;
    fl_status s = FL_OK;
    int underway = p->ops->limit_changed && p->dev->capture_watch ? fli_graphs_scan(&a->graphs, p->dev) : 0;
    if (underway) {
        /* During a CUDA graph capture (or while a stream cannot tell) the policy learns
         * the limit with the capture guard up: the synchronize and unmaps that would give
         * cached memory back are refused, not made (they would invalidate the capture);
         * that memory goes back at a later allocation under pressure or empty_cache. */
        p->dev->capture_guard = a->graphs.n_underway ? a->graphs.underway[0].id : 1;
        s = p->ops->limit_changed(p);
        p->dev->capture_guard = 0;
        if (s == FL_ERR_UNSUPPORTED) {
            s = FL_OK;
            fli_clear_error();
        }
    } else if (p->ops->limit_changed) {
        s = p->ops->limit_changed(p);
    }
    maybe_publish(a, 1);
    release_updated(a);
    return s;
}

/* The lock is taken through a cast: reading statistics does not change what the
 * allocator holds (only the peak of inactive_split_bytes, a statistic itself). */
void fl_get_stats(const fl_allocator *a, fl_stats *out)
{
    fl_allocator *m = (fl_allocator *)a;
    lock_a(m);
    stats_locked(m, out);
    release_updated(m);
}

void fl_reset_peak_stats(fl_allocator *a)
{
    lock_a(a);
    fli_policy *p = a->policy;
    /* The current values (blocks kept for graphs left out, as the peaks leave them out);
     * with thread caches, every room zeroed first: G + sum k is U. */
    if (a->threads) {
        tc_lock_all(a, NULL);
        tc_zero_rooms(a);
    }
    int64_t g[FL_TC_FIGURES];
    global_figures(a, g);
    for (int q = 0; q < FL_TC_FIGURES; q++)
        *peak_of(a, q) = (uint64_t)(g[q] + a->tc_k[q]); /* tc_k: 0 without caches (the self-check) */
    if (a->threads)
        tc_unlock_all(a, NULL);
    a->inactive_split_peak = 0;
    p->dev->counters.peak_in_use = p->dev->counters.in_use;
    release_updated(a);
}

fl_status fl_last_oom(const fl_allocator *a, fl_oom_report *out)
{
    fl_allocator *m = (fl_allocator *)a;
    lock_a(m);
    int has = m->has_oom;
    if (has)
        *out = m->oom;
    release_updated(m);
    return has ? FL_OK : fli_fail(FL_ERR_NOT_FOUND, "no allocation has failed on this allocator");
}

fl_status fl_allocator_snapshot(fl_allocator *a, const char *path)
{
    lock_drained(a);
    fl_status s = write_snapshot(a, path);
    release_updated(a);
    return s;
}

int fl_allocator_check(const fl_allocator *a)
{
    fl_allocator *m = (fl_allocator *)a; /* the lock taken: the check changes nothing */
    lock_a(m);
    int r = a->policy->ops->check(a->policy);
    if (!r)
        r = fli_graphs_check(&a->graphs);
    /* A graph's block, kept or live, is the policy's until its graph is released. */
    for (uint32_t i = 0; !r && i < a->graphs.n; i++)
        if (!a->policy->ops->block_size(a->policy, a->graphs.b[i].addr))
            r = fli_fail(FL_ERR_INVALID, "allocator check: CUDA graph block 0x%llx is not allocated in the policy",
                        (unsigned long long)a->graphs.b[i].addr) != FL_OK;
    /* A pending block (record_stream) is still the policy's, and on the list once. */
    for (uint32_t i = 0; !r && i < a->n_pending; i++)
        if (!a->policy->ops->block_size(a->policy, a->pending[i].addr) ||
            pending_index(a, a->pending[i].addr) != (int64_t)i)
            r = fli_fail(FL_ERR_INVALID, "allocator check: pending block 0x%llx is not live, or listed twice",
                        (unsigned long long)a->pending[i].addr) != FL_OK;
    if (!r)
        r = tc_check((fl_allocator *)a);
    /* The fast path is off whenever something it skips is in use. */
    if (!r && !a->slow && slow_reasons(a))
        r = fli_fail(FL_ERR_INVALID, "allocator check: the fast path is on while record_stream, graphs, the "
                                     "recorder or the publisher are in use") != FL_OK;
    unlock_a(m);
    return r;
}

fli_policy *fli_allocator_policy(const fl_allocator *a) { return a->policy; }

uint64_t fli_allocator_unlocked_allocs(fl_allocator *a, uint64_t *refills)
{
    lock_a(a);
    if (refills)
        *refills = a->local_refills;
    uint64_t n = a->local_allocs - a->local_refills + a->tc_allocs;
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) {
        fli_lock_acquire(&c->lock);
        n += c->hits[FL_TC_BLOCKS];
        fli_lock_release(&c->lock);
    }
    release_updated(a);
    return n;
}
uint64_t fli_allocator_live(const fl_allocator *a) { return a->live512; }

/* ---- for the frontends: a block's stream (cudaFreeAsync) and IPC ------------------- */

fl_status fli_allocator_block_stream(fl_allocator *a, uint64_t addr, uint64_t *stream, int *known)
{
    lock_drained(a);
    const fli_policy *p = a->policy;
    int r = 0;
    *known = 0;
    if (pending_index(a, addr) < 0) {
        r = p->ops->block_stream ? p->ops->block_stream(p, addr, stream) : p->ops->block_size(p, addr) ? -1 : 0;
        *known = r > 0;
    }
    release_updated(a);
    return r ? FL_OK : fli_fail(FL_ERR_NOT_FOUND, "0x%llx: not a live block of this allocator", (unsigned long long)addr);
}

void fli_allocator_stream_gone(fl_allocator *a, uint64_t stream)
{
    lock_drained(a);
    fli_graphs_stream_gone(&a->graphs, stream);
    if (a->policy->ops->stream_gone)
        a->policy->ops->stream_gone(a->policy, stream);
    release_updated(a);
}

/* A recorded trace's frees of the blocks a device reset takes: walk's live blocks, but
 * those waiting for record_stream's events, which the program freed already (their
 * free is in the trace). */
static void reset_record_block(void *user, uint64_t addr, uint64_t size, int live)
{
    fl_allocator *a = user;
    if (live == FLI_BLOCK_LIVE && pending_index(a, addr) < 0)
        fli_recorder_free(a->rec, addr, size);
}

/* The policy's memory is the context's: every block goes with the reset. The allocator
 * gives everything back now and starts again empty, with its totals and peaks. The new
 * policy is made first, from host memory only: a failure changes nothing. */
static fl_status forget_all(fl_allocator *a)
{
    fli_policy *fresh = NULL, *old = a->policy;
    fli_graphs graphs;
    fl_status s = fli_graphs_init(&graphs);
    if (s == FL_OK && (s = fli_policy_create(&a->cfg, old->dev, &fresh)) != FL_OK)
        fli_graphs_free(&graphs);
    if (s != FL_OK)
        return s;
    for (fli_tcache *c = a->tcs; c; c = c->next_of_alloc) { /* drained: only their counts */
        fli_lock_acquire(&c->lock);
        tc_fold(a, c);
        fli_lock_release(&c->lock);
    }
    if (a->rec && old->ops->walk) {
        fli_state_visitor v = {.user = a, .block = reset_record_block};
        old->ops->walk(old, &v);
    }
    drop_stream_uses(a);
    fli_graphs_free(&a->graphs); /* their notes go with their memory (the policy's blocks) */
    a->graphs = graphs;
    fresh->num_allocs = fresh->num_frees = old->num_allocs; /* every block freed */
    fresh->retries = old->retries;
    fresh->ooms = old->ooms;
    old->ops->destroy(old); /* everything back to the device: unmapped, released, freed */
    a->policy = fresh;
    a->req_current = a->live512 = 0;
    memset(&a->last_query, 0, sizeof a->last_query);
    return FL_OK;
}

fl_status fli_allocator_before_reset(fl_allocator *a)
{
    lock_drained(a);
    fl_status s;
    if (a->policy->ops->reset_destroys) {
        s = forget_all(a);
    } else {
        /* Virtual memory outlives the reset, and so do the live blocks in it (the
         * runtime's cudaMallocAsync blocks do). What goes is the context's events: the
         * work they wait for is done once the device is synchronized, so the blocks
         * waiting for record_stream's events are freed and the policy's events are
         * destroyed (empty_cache), which gives the cache back too, as the reset gives
         * back the runtime's. */
        s = a->n_pending ? synchronize_pending(a) : FL_OK;
        if (s == FL_OK)
            s = a->policy->ops->empty_cache(a->policy);
    }
    maybe_publish(a, 1);
    release_updated(a);
    return s;
}

void fli_allocator_after_reset(fl_allocator *a)
{
    lock_a(a);
    fli_dev_context_reset(a->policy->dev);
    release_updated(a);
}

/* The size of the live block starting at addr, 0 when there is none (a block waiting for
 * record_stream's events is freed already). Under a's lock. */
static uint64_t live_size(const fl_allocator *a, uint64_t addr)
{
    return pending_index(a, addr) < 0 ? a->policy->ops->block_size(a->policy, addr) : 0;
}

fl_status fli_allocator_legacy_ipc_base(fl_allocator *a, uint64_t addr, uint64_t *base)
{
    lock_drained(a);
    fl_status s = live_size(a, addr) ? fli_dev_legacy_ipc_base(a->policy->dev, addr, base)
                                     : fli_fail(FL_ERR_NOT_FOUND, "0x%llx: not a live block of this allocator",
                                               (unsigned long long)addr);
    release_updated(a);
    return s;
}

fl_status fli_allocator_export(const char *fn, fl_allocator *a, uint64_t addr, uint64_t want, fl_ipc_piece *out,
                               uint32_t max, uint32_t *n, uint64_t *offset, uint64_t *size)
{
    lock_drained(a);
    *n = 0;
    *size = live_size(a, addr);
    fl_status s = *size && *size >= want ? fli_dev_export(a->policy->dev, addr, *size, out, max, n, offset)
                  : fli_fail(FL_ERR_NOT_FOUND, "%s(0x%llx): not a live block of this allocator%s", fn,
                             (unsigned long long)addr, *size ? " of the size exported" : "");
    release_updated(a);
    return s;
}

fl_status fli_allocator_export_mapping(fl_allocator *a, uint64_t addr, fl_ipc_piece *out)
{
    lock_a(a);
    uint32_t n = 0;
    uint64_t offset = 0;
    fl_status s = fli_dev_export(a->policy->dev, addr, 1, out, 1, &n, &offset);
    release_updated(a);
    return s;
}

fl_status fl_export_pieces(fl_allocator *a, uint64_t addr, fl_ipc_piece *out, uint32_t max, uint32_t *n,
                           uint64_t *offset, uint64_t *size)
{
    if (!out || !n || !offset || !size || max == 0)
        return fli_fail(FL_ERR_INVALID, "fl_export_pieces(0x%llx): no room for a piece, or an output pointer is NULL",
                       (unsigned long long)addr);
    return fli_allocator_export("fl_export_pieces", a, addr, 0, out, max, n, offset, size);
}

fl_status fl_import_pieces(fl_allocator *a, const fl_ipc_piece *pieces, uint32_t n, uint64_t offset, uint64_t size,
                           uint64_t *addr)
{
    if (!pieces || !addr || n == 0)
        return fli_fail(FL_ERR_INVALID, "fl_import_pieces: no pieces, or addr is NULL");
    lock_a(a);
    fl_status s = fli_dev_import(a->policy->dev, pieces, n, offset, size, addr);
    release_updated(a);
    return s;
}

/* The one-piece case of the two above. */
fl_status fl_export(fl_allocator *a, uint64_t addr, fl_ipc_handle *out)
{
    fl_ipc_piece piece;
    uint32_t n = 0;
    uint64_t offset = 0, size = 0;
    fl_status s = fli_allocator_export("fl_export", a, addr, 0, &piece, 1, &n, &offset, &size);
    if (s == FL_OK)
        *out = (fl_ipc_handle){piece.fd, a->policy->dev->ordinal, piece.size, offset, size};
    return s;
}

fl_status fl_import(fl_allocator *a, const fl_ipc_handle *h, uint64_t *addr)
{
    fl_ipc_piece piece = {h->fd, h->alloc_size};
    return fl_import_pieces(a, &piece, 1, h->offset, h->size, addr);
}

fl_status fl_import_close(fl_allocator *a, uint64_t addr)
{
    lock_a(a);
    fl_status s = fli_dev_import_close(a->policy->dev, addr);
    release_updated(a);
    return s;
}

/* ---- CUDA graphs ------------------------------------------------------------------- */

/* Once no capture is underway: synchronize (the frees and releases below may concern
 * memory queued work or a graph's replays still use), give back the blocks freed during
 * captures and the kept blocks of released captures. Under the lock. */
static fl_status graphs_catch_up(fl_allocator *a)
{
    fli_graphs *g = &a->graphs;
    fli_policy *p = a->policy;
    fl_status s = fli_dev_synchronize(p->dev);
    if (s != FL_OK)
        return s; /* all kept for the next try */
    fl_status err = FL_OK;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < g->n_deferred; i++)
        if ((s = policy_free(a, g->deferred[i])) != FL_OK) { /* cannot happen: a live block */
            g->deferred[keep++] = g->deferred[i];
            err = s;
        }
    g->n_deferred = keep;
    for (uint32_t i = 0; i < g->n;) {
        fli_graph_block *b = &g->b[i];
        int released = !b->capture;
        for (uint32_t k = 0; k < g->n_released && !released; k++)
            released = b->capture == g->released[k];
        if (!released) {
            i++;
        } else if (b->live) {
            b->capture = 0; /* the program still holds it: ordinary once freed */
            i++;
        } else if ((s = p->ops->free(p, b->addr, 0, NULL)) == FL_OK) {
            fli_graphs_remove(g, b); /* counted as freed when the program freed it */
        } else {
            err = s;
            i++;
        }
    }
    /* A released capture whose kept block could not be given back (the device failed)
     * stays on the list: the next catch-up tries again (cleared, the block would be held
     * for good). */
    uint32_t still = 0;
    for (uint32_t k = 0; k < g->n_released; k++)
        if (fli_graphs_holds(g, g->released[k]))
            g->released[still++] = g->released[k];
    g->n_released = still;
    return err;
}

/* An allocation on a device that can capture: asks about the stream first. Outside
 * captures it is the usual one (after any catch-up). During a capture the device refuses
 * what the capture forbids (capture_guard) and the thread's capture mode is relaxed, so
 * that new pages may be mapped, as PyTorch's own allocator calls cudaMalloc during
 * captures; a block for a capturing stream is its graph's, from the graph's freed blocks
 * first. */
/* An allocation on a device that can capture CUDA graphs: asks about captures under the
 * lock. c: the thread's cache when the caches are on (else NULL). */
static fl_status alloc_watching(fl_allocator *a, fli_tcache *c, uint64_t size, uint64_t stream, uint64_t *addr)
{
    lock_fast(a);
    fli_policy *p = a->policy;
    fli_graphs *g = &a->graphs;
    uint64_t capture = 0, old_peak = a->peak_allocated, old_blocks_peak = a->blocks_peak, before = p->allocated;
    fl_status s;
    fl_status asked;
    int revived = 0;
    int capturing = fli_graphs_watch(g, p->dev, stream, &capture, &asked);
    if (FL_UNLIKELY(asked != FL_OK)) {
        char why[512];
        snprintf(why, sizeof why, "%s", fl_last_error());
        release_updated(a);
        return fli_fail(FL_ERR_DEVICE, "cannot tell whether stream 0x%llx is capturing a CUDA graph (%s): nothing "
                        "allocated (a graph's block taken for an ordinary one would be handed out again while the "
                        "graph uses it)", (unsigned long long)stream, why);
    }
    /* Before the catch-up's synchronize, a capture that began on another stream since its
     * last allocation is looked for: found, this allocation is made as during a capture. */
    if (!capturing && FL_UNLIKELY(fli_graphs_pending(g)))
        capturing = fli_graphs_scan(g, p->dev) != 0; /* one that cannot tell: as if capturing */
    if (FL_UNLIKELY(a->threads))
        update_slow(a); /* a capture seen or gone: the caches off or on before the policy is asked */
    if (!capturing) {
        if (FL_UNLIKELY(fli_graphs_pending(g)) && (s = graphs_catch_up(a)) != FL_OK)
            fprintf(stderr, "fragless: after a CUDA graph capture: %s (retried later)\n", fl_last_error());
        s = a->threads ? tc_alloc_locked(a, c, size, stream, addr) : alloc_locked(a, size, stream, addr);
    } else {
        p->dev->capture_guard = capture ? capture : g->n_underway ? g->underway[0].id : 1;
        int mode = FL_CAPTURE_MODE_RELAXED;
        int swapped = fli_dev_capture_mode(p->dev, &mode) == FL_OK;
        fli_graph_block *b = fli_graphs_reuse(g, fli_live_size(size), stream, capture);
        if (b) {
            revived = 1;
            fli_graphs_revive(g, b, size);
            *addr = b->addr;
            a->alloc_total += b->rounded;
            count_requested(a, size);
            if (FL_UNLIKELY(a->rec != NULL))
                fli_recorder_alloc(a->rec, 1, *addr, size, stream);
            s = FL_OK;
        } else {
            s = alloc_locked(a, size, stream, addr);
            if (s == FL_OK && capture && fli_graphs_adopt(g, *addr, stream, capture, size, p->allocated - before) != FL_OK) {
                free_locked(a, *addr, 0); /* untracked, the graph's memory could be handed out */
                s = fli_fail(FL_ERR_NOMEM, "CUDA graph capture 0x%llx: no host memory to keep its block",
                            (unsigned long long)capture);
            }
        }
        if (swapped)
            fli_dev_capture_mode(p->dev, &mode);
        p->dev->capture_guard = 0;
        if (s != FL_OK && s != FL_ERR_NOMEM) {
            char why[1024];
            snprintf(why, sizeof why, "%s", fl_last_error());
            if (s != FL_ERR_OOM)
                p->ooms++; /* refused by the capture guard: out of memory for the capture */
            s = fli_fail(FL_ERR_OOM, "%s; during CUDA graph capture 0x%llx (stream 0x%llx) fragless may map new "
                        "pages but cannot reclaim cached ones or give memory back (that needs a synchronize): "
                        "free memory or call torch.cuda.empty_cache() before the capture, or raise the limit",
                        why, (unsigned long long)p->dev->capture_guard, (unsigned long long)stream);
        }
    }
    /* Blocks kept for graphs are not the program's: the peaks leave them out. A kept
     * block revived counts from now on (count_alloc did not see it), also when it was
     * the last one kept. */
    if (g->kept_bytes || revived) {
        uint64_t now = p->allocated - g->kept_bytes, blocks = p->num_allocs - p->num_frees + g->reuses - g->keeps;
        a->peak_allocated = now > old_peak ? now : old_peak;
        a->blocks_peak = blocks > old_blocks_peak ? blocks : old_blocks_peak;
    }
    release_updated(a);
    return s;
}

fl_status fli_allocator_trace(fl_allocator *a, const char *path)
{
    lock_drained(a);
    fl_status s = FL_OK;
    if (path && a->rec)
        s = fli_fail(FL_ERR_INVALID, "trace %s: this allocator records a trace already", path);
    else if (path)
        s = fli_recorder_open(path, &a->rec);
    else if (a->rec) {
        s = fli_recorder_close(a->rec);
        a->rec = NULL;
    }
    release_updated(a);
    return s;
}

fl_status fli_allocator_trace_flush(fl_allocator *a)
{
    lock_a(a);
    fl_status s = fli_recorder_flush(a->rec);
    release_updated(a);
    return s;
}

fl_status fl_stream_capture(fl_allocator *a, uint64_t stream, uint64_t *capture)
{
    lock_a(a);
    *capture = 0;
    fl_status s = FL_OK;
    if (a->policy->dev->capture_watch)
        fli_graphs_watch(&a->graphs, a->policy->dev, stream, capture, &s);
    release_updated(a);
    return s;
}

fl_status fl_graph_release(fl_allocator *a, uint64_t capture)
{
    if (!capture)
        return fli_fail(FL_ERR_INVALID, "graph release: capture id 0 names no capture");
    lock_a(a);
    fli_graphs *g = &a->graphs;
    fl_status s = FL_OK;
    /* This capture first (asked once, forgotten once ended), then every other stream. */
    if ((s = fli_graphs_ended(g, a->policy->dev, capture)) != FL_OK)
        s = fli_fail(s, "graph release: %s", fl_last_error());
    else if (!fli_graphs_holds(g, capture))
        ; /* nothing of it here (a capture that allocated nothing, another device's): no synchronize */
    else if ((s = fli_graphs_release_later(g, capture)) == FL_OK && fli_graphs_scan(g, a->policy->dev) == 0)
        s = graphs_catch_up(a); /* else at the first moment without captures */
    if (s == FL_OK)
        maybe_publish(a, 1);
    release_updated(a);
    return s;
}

fl_status fli_allocator_free_stream(fl_allocator *a, uint64_t addr, uint64_t size, uint64_t stream)
{
    int route = atomic_load_explicit(&a->route, memory_order_relaxed);
    if ((route & (ROUTE_THREADS | ROUTE_LOCAL)) && !tc_capturing(a, stream))
        return route & ROUTE_LOCAL ? local_free(a, addr, size) : tc_free(a, addr, size);
    lock_fast(a);
    uint64_t capture;
    fl_status asked; /* a free asks only to learn of captures: one that cannot tell changes nothing */
    if (a->policy->dev->capture_watch) {
        fli_graphs_watch(&a->graphs, a->policy->dev, stream, &capture, &asked);
        update_slow(a);
    }
    /* With the caches on, the block may be in a cache's books (any thread's). */
    fl_status s = a->threads && !a->tc_off ? tc_free_locked(a, NULL, addr, size) : free_locked(a, addr, size);
    release_updated(a);
    return s;
}

/* ---- following a recorded run (replay of a PyTorch snapshot) ---------------------- */

fl_status fli_allocator_seed(fl_allocator *a, const fli_seed_segment *sg, const fli_seed_block *blocks, uint64_t *addrs)
{
    lock_a(a);
    fli_policy *p = a->policy;
    uint64_t before = p->allocated;
    fl_status s = p->ops->seed ? p->ops->seed(p, sg, blocks, addrs)
                               : fli_fail(FL_ERR_UNSUPPORTED, "%s: segments are not rebuilt", p->ops->name);
    if (s == FL_OK) {
        /* The blocks count as allocated now, like any other. */
        a->alloc_total += p->allocated - before;
        if (p->allocated > a->peak_allocated)
            a->peak_allocated = p->allocated;
        for (size_t i = 0; i < sg->n_blocks; i++)
            count_requested(a, blocks[i].requested);
        if (p->num_allocs - p->num_frees > a->blocks_peak)
            a->blocks_peak = p->num_allocs - p->num_frees;
    }
    release_updated(a);
    return s;
}

fl_status fli_allocator_release(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *freed)
{
    lock_a(a);
    fli_policy *p = a->policy;
    *freed = 0;
    fl_status s = p->ops->release ? p->ops->release(p, size, stream, freed) : FL_OK;
    release_updated(a);
    return s;
}
