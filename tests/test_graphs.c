/* CUDA graphs on the driver double, for every policy: the sequence torch.cuda.graph and
 * make_graphed_callables make (empty_cache; capture on a side stream with allocations and
 * frees inside; outside, allocations, frees, empty_cache and memory pressure; replays; a
 * second capture; a release) must never unmap or hand out a page a graph uses (each
 * replay checks every range it captured) and make no call a capture forbids (the double
 * invalidates the capture and counts it). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "allocator/allocator.h"
#include "policy/policy.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define MAIN UINT64_C(0x100)
#define SIDE UINT64_C(0x200)


static void (*fake_reset)(void);
static int (*begin_capture)(void *stream, int mode);
static int (*capture_use)(void *stream, unsigned long long ptr, size_t size);
static int (*end_capture)(void *stream, unsigned long long *graph);
static int (*graph_launch)(unsigned long long graph);
static unsigned long long (*violations)(void);
static unsigned long long (*graph_faults)(void);
static void (*graph_destroy)(unsigned long long graph);
static void (*fail_call)(const char *fn, unsigned long long n, int err);
static void (*stream_destroy)(void *stream);

static fl_stats stats(fl_allocator *a)
{
    fl_stats s;
    fl_get_stats(a, &s);
    return s;
}

/* A block the program owns outside graphs: filled with its own byte, checked later. */
typedef struct owned {
    uint64_t addr, size;
    unsigned char fill;
} owned;

static int intact(const owned *o)
{
    const unsigned char *p = (const unsigned char *)(uintptr_t)o->addr;
    for (uint64_t i = 0; i < o->size; i += 4093)
        if (p[i] != o->fill)
            return 0;
    return p[o->size - 1] == o->fill;
}

static int take(fl_allocator *a, owned *o, uint64_t size, uint64_t stream, unsigned char fill)
{
    if (fl_alloc(a, size, stream, &o->addr) != FL_OK)
        return 0;
    o->size = size;
    o->fill = fill;
    memset((void *)(uintptr_t)o->addr, fill, size);
    return 1;
}

/* The cuda device on the driver double, reset. */
static fl_device *fake_device(void)
{
    fake_reset();
    return fl_test_fake_device();
}

/* A captured kernel writing into a block allocated during the capture. */
static uint64_t graph_alloc(fl_allocator *a, uint64_t size)
{
    uint64_t p = 0;
    CHECK_OK(fl_alloc(a, size, SIDE, &p));
    if (p)
        CHECK_EQ_U64(capture_use((void *)(uintptr_t)SIDE, p, size), 0);
    return p;
}

/* Outside captures: churn on both streams (every block written), empty_cache, then fill
 * the device until it is out of memory (the policy reclaims, reuses and maps whatever it
 * may) and give it all back. Any page a graph uses that this hands out is written over. */
static void pressure(fl_allocator *a, uint64_t chunk)
{
    owned o[256];
    int n = 0;
    for (int i = 0; i < 40 && n < 256; i++)
        if (take(a, &o[n], (uint64_t)(i % 7 + 1) * 300 * 1024 + 512 * (uint64_t)i, i % 2 ? MAIN : SIDE,
                 (unsigned char)(0x10 + i)))
            n++;
    for (int i = 0; i < n; i += 2)
        CHECK_OK(fl_free_sized(a, o[i].addr, o[i].size));
    CHECK_OK(fl_empty_cache(a));
    int held = 0;
    owned big[256];
    while (held < 256 && take(a, &big[held], chunk, held % 3 ? MAIN : SIDE, (unsigned char)(0x80 + held)))
        held++;
    CHECK(held > 0);
    for (int i = 1; i < n; i += 2) {
        CHECK(intact(&o[i]));
        CHECK_OK(fl_free_sized(a, o[i].addr, o[i].size));
    }
    for (int i = 0; i < held; i++) {
        CHECK(intact(&big[i]));
        CHECK_OK(fl_free_sized(a, big[i].addr, big[i].size));
    }
    CHECK_OK(fl_empty_cache(a));
    CHECK(fl_allocator_check(a) == 0);
}

/* A fresh allocator (conf) on the double, reset; NULL when the double is missing. */
static fl_allocator *start(const char *conf, fl_device **d)
{
    *d = fake_device();
    return *d ? fl_test_allocator(conf, *d) : NULL;
}

/* The end of a test on the double: nothing forbidden reached the driver, no launch found
 * its memory changed, the self-check passes; then both go. */
static void finish(fl_allocator *a, fl_device *d)
{
    CHECK_EQ_U64(violations(), 0);
    CHECK_EQ_U64(graph_faults(), 0);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

static void sequence(const char *policy, int mode)
{
    fl_device *d = fake_device();
    if (!d)
        return;
    char conf[128];
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0", policy);
    fl_allocator *a = fl_test_allocator(conf, d);

    /* Before the graph: weights and a static input on the main stream, a temporary. */
    owned weights, input, tmp;
    CHECK(take(a, &weights, 6 * MiB + 1000, MAIN, 0xa1));
    CHECK(take(a, &input, 3 * MiB, MAIN, 0xa2));
    CHECK(take(a, &tmp, 2 * MiB, MAIN, 0xa3));

    /* torch.cuda.graph: empty_cache, then capture on a side stream. */
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, mode), 0);
    uint64_t g1 = 0;
    CHECK_OK(fl_stream_capture(a, SIDE, &g1));
    CHECK(g1 != 0);
    uint64_t x1 = graph_alloc(a, 5 * MiB);
    uint64_t x2 = graph_alloc(a, 700 * 1024);
    CHECK_OK(fl_free_sized(a, x1, 5 * MiB));       /* an intermediate freed inside */
    CHECK_OK(fl_free_sized(a, tmp.addr, tmp.size)); /* a block from before, freed inside */
    uint64_t x3 = graph_alloc(a, 5 * MiB - 4096);   /* may take x1 back: same capture */
    uint64_t small = graph_alloc(a, 4096);
    CHECK_OK(fl_free_sized(a, small, 4096));
    uint64_t out1 = graph_alloc(a, MiB + 512);
    CHECK_OK(fl_free_sized(a, x2, 700 * 1024));
    CHECK_OK(fl_free_sized(a, x3, 5 * MiB - 4096));
    unsigned long long graph1 = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph1), 0);
    CHECK_EQ_U64(graph1, g1);
    CHECK_EQ_U64(violations(), 0);
    CHECK(stats(a).graph_bytes >= 5 * MiB + MiB);
    CHECK(stats(a).graph_kept_bytes >= 5 * MiB);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(graph_launch(graph1), 0);

    /* Outside: the output is read and freed (kept for the graph), the rest churns. */
    CHECK_OK(fl_free_sized(a, out1, MiB + 512));
    CHECK_EQ_U64(stats(a).requested_bytes.current, weights.size + input.size);
    pressure(a, 8 * MiB);
    CHECK_EQ_U64(graph_launch(graph1), 0);
    CHECK(intact(&weights) && intact(&input));

    /* A second graph, with torch.cuda.graph's empty_cache before it. */
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, mode), 0);
    uint64_t g2 = 0;
    CHECK_OK(fl_stream_capture(a, SIDE, &g2));
    CHECK(g2 != 0 && g2 != g1);
    uint64_t y1 = graph_alloc(a, 9 * MiB);
    uint64_t y2 = graph_alloc(a, 256 * 1024);
    CHECK_OK(fl_free_sized(a, y1, 9 * MiB));
    CHECK_OK(fl_empty_cache(a) == FL_ERR_UNSUPPORTED ? FL_OK : FL_ERR_INVALID); /* refused, said */
    uint64_t y3 = graph_alloc(a, 3 * MiB);
    unsigned long long graph2 = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph2), 0);
    CHECK_EQ_U64(violations(), 0);
    CHECK_EQ_U64(graph_launch(graph2), 0);
    CHECK_EQ_U64(graph_launch(graph1), 0);
    CHECK_OK(fl_free_sized(a, y2, 256 * 1024));
    pressure(a, 4 * MiB);
    CHECK_EQ_U64(graph_launch(graph1), 0);
    CHECK_EQ_U64(graph_launch(graph2), 0);

    /* The first graph is destroyed: its memory goes back, the second's stays. */
    uint64_t before = stats(a).graph_bytes;
    CHECK_OK(fl_graph_release(a, g1));
    CHECK(stats(a).graph_bytes < before);
    CHECK(fl_allocator_check(a) == 0);
    pressure(a, 8 * MiB);
    CHECK_EQ_U64(graph_launch(graph2), 0);
    /* y3 is still the program's: once its graph is released it is an ordinary block. */
    CHECK_OK(fl_graph_release(a, g2));
    CHECK_EQ_U64(stats(a).graph_kept_bytes, 0);
    CHECK_OK(fl_free_sized(a, y3, 3 * MiB));
    CHECK_EQ_U64(stats(a).graph_bytes, 0);
    CHECK_OK(fl_free_sized(a, weights.addr, weights.size));
    CHECK_OK(fl_free_sized(a, input.addr, input.size));
    fl_stats s = stats(a);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocation.allocated, s.allocation.freed);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(stats(a).reserved_bytes.current, 0);
    finish(a, d);
}

/* What a capture cannot be given without a call it forbids fails as out of memory,
 * saying why, and leaves the capture valid: every page cached on the main stream's heap
 * would have to be reclaimed (a synchronize and unmaps). */
static void refused_during_capture(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    uint64_t cap = fl_device_capacity(d), x;
    CHECK_OK(fl_alloc(a, cap - 4 * MiB, MAIN, &x));
    CHECK_OK(fl_free(a, x)); /* every page cached on MAIN's heap */
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t ooms = stats(a).num_ooms, y = 0;
    CHECK_STATUS(fl_alloc(a, 64 * MiB, SIDE, &y), FL_ERR_OOM);
    CHECK_MENTIONS("CUDA graph capture");
    CHECK_MENTIONS("empty_cache() before the capture");
    CHECK_EQ_U64(stats(a).num_ooms, ooms + 1);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_EQ_U64(violations(), 0);
    /* After the capture the same request reclaims and succeeds. */
    CHECK_OK(fl_alloc(a, 64 * MiB, SIDE, &y));
    CHECK_OK(fl_free(a, y));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Thread caches on a device that can capture (each allocation asks the driver, without a
 * lock, whether its stream is capturing): a freed block comes back from the cache, also
 * when PyTorch frees it with its stream; a capture turns the caches off, so the block a
 * capture allocates belongs to the graph (not handed out again after the program frees
 * it) even when the cache held a block of that size on that stream; after the graph's
 * release the caches serve again. */
static uint64_t policy_allocs(fl_allocator *a) { return fli_allocator_policy(a)->num_allocs; }

static void caches_and_captures(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    CHECK_OK(fli_allocator_threads(a));
    uint64_t x = 0, y = 0, z = 0;
    CHECK_OK(fl_alloc(a, 3000, MAIN, &x));
    CHECK_OK(fl_free(a, x));
    uint64_t before = policy_allocs(a);
    CHECK_OK(fl_alloc(a, 3000, MAIN, &y));
    CHECK_EQ_U64(y, x);                          /* from the cache: */
    CHECK_EQ_U64(policy_allocs(a), before);      /* the policy was not asked */
    CHECK_OK(fli_allocator_free_stream(a, y, 3000, MAIN)); /* PyTorch's free */
    CHECK_OK(fl_alloc(a, 3000, MAIN, &z));
    CHECK_EQ_U64(z, x);
    CHECK_EQ_U64(policy_allocs(a), before);
    CHECK_STATUS(fli_allocator_free_stream(a, z, 4096, MAIN), FL_ERR_INVALID); /* wrong size: stays */
    CHECK_OK(fli_allocator_free_stream(a, z, 3000, MAIN));
    CHECK_STATUS(fli_allocator_free_stream(a, z, 3000, MAIN), FL_ERR_NOT_FOUND); /* freed already */

    /* SIDE's cache holds a 5000-byte block when the capture begins. */
    uint64_t s0 = 0;
    CHECK_OK(fl_alloc(a, 5000, SIDE, &s0));
    CHECK_OK(fl_free(a, s0));
    CHECK_OK(fl_empty_cache(a)); /* torch.cuda.graph's: what the caches hold goes back too */
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t g = graph_alloc(a, 5000);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_OK(fl_free(a, g)); /* the program's, but the graph's memory: kept */
    uint64_t later = 0;
    CHECK_OK(fl_alloc(a, 5000, SIDE, &later));
    CHECK(later != g);
    CHECK_EQ_U64(graph_launch(graph), 0);
    CHECK_EQ_U64(violations(), 0);
    CHECK_OK(fl_free(a, later));
    CHECK_OK(fl_graph_release(a, graph));
    /* No graph left: the caches serve again. */
    CHECK_OK(fl_alloc(a, 7000, MAIN, &x));
    CHECK_OK(fl_free(a, x));
    before = policy_allocs(a);
    CHECK_OK(fl_alloc(a, 7000, MAIN, &y));
    CHECK_EQ_U64(y, x);
    CHECK_EQ_U64(policy_allocs(a), before);
    CHECK_OK(fl_free(a, y));
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(stats(a).allocated_bytes.current, 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Two threads on two streams of one allocator on the driver double, caches on by
 * themselves or not: every block they get is theirs alone (written and checked). */
typedef struct churn_arg {
    fl_allocator *a;
    uint64_t stream;
    unsigned char fill;
    int failures;
} churn_arg;

static void *churn(void *arg)
{
    churn_arg *c = arg;
    uint64_t held[16] = {0}, size[16] = {0};
    for (int i = 0; i < 4000; i++) {
        int k = (i * 7 + (int)c->stream) % 16;
        if (held[k]) {
            const unsigned char *q = (const unsigned char *)(uintptr_t)held[k];
            c->failures += q[0] != c->fill || q[size[k] - 1] != c->fill;
            c->failures += fli_allocator_free_stream(c->a, held[k], size[k], c->stream) != FL_OK;
            held[k] = 0;
        } else {
            size[k] = 512 + (uint64_t)((i * 131) % 9) * 1000;
            if (fl_alloc(c->a, size[k], c->stream, &held[k]) != FL_OK) {
                c->failures++;
                held[k] = 0;
                continue;
            }
            memset((void *)(uintptr_t)held[k], c->fill, size[k]);
        }
    }
    for (int k = 0; k < 16; k++)
        if (held[k])
            c->failures += fl_free(c->a, held[k]) != FL_OK;
    return NULL;
}

static void threads_on_driver(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    churn_arg args[2] = {{a, MAIN, 0x5a, 0}, {a, SIDE, 0xa5, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, churn, &args[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ_U64(args[0].failures + args[1].failures, 0);
    CHECK_EQ_U64(stats(a).allocated_bytes.current, 0);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* The driver cannot say whether the stream of an allocation is capturing: the
 * allocation fails, saying so, and changes nothing. Taken as not capturing, the block
 * would not be its graph's: freed by the program, it would be handed out again while the
 * graph still writes it (found by the random sequences below, with an injected failure
 * of the query). */
static void capture_query_fails(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    fail_call("cuStreamGetCaptureInfo", 1, 999 /* CUDA_ERROR_UNKNOWN */);
    uint64_t x = 0, allocs = stats(a).allocation.allocated;
    CHECK_STATUS(fl_alloc(a, 4096, SIDE, &x), FL_ERR_DEVICE);
    CHECK_MENTIONS("capturing");
    CHECK_MENTIONS("cuStreamGetCaptureInfo");
    CHECK_EQ_U64(x, 0);
    CHECK_EQ_U64(stats(a).allocation.allocated, allocs);
    /* The next query works: the block is the graph's, kept when the program frees it. */
    uint64_t y = graph_alloc(a, 4096);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_EQ_U64(graph_launch(graph), 0);
    CHECK_OK(fl_free(a, y));
    owned o;
    CHECK(take(a, &o, 4096, SIDE, 0x33));
    CHECK(o.addr != y);
    CHECK_EQ_U64(graph_launch(graph), 0);
    CHECK_OK(fl_free(a, o.addr));
    /* fl_stream_capture says when it cannot tell. */
    fail_call("cuStreamGetCaptureInfo", 1, 999);
    uint64_t id = 1;
    CHECK_STATUS(fl_stream_capture(a, SIDE, &id), FL_ERR_DEVICE);
    CHECK_EQ_U64(id, 0);
    graph_destroy(graph);
    CHECK_OK(fl_stream_capture(a, SIDE, &id));
    CHECK_EQ_U64(id, 0);
    finish(a, d);
}

/* Frees during a capture wait for a moment without captures, which begins with a
 * synchronize. A capture the allocator has not seen yet (no allocation on its stream
 * since it began) is a capture all the same: the synchronize would invalidate it. Every
 * stream the allocator has served is asked first. */
static void catch_up_waits_for_unseen_capture(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    const uint64_t third = UINT64_C(0x300);
    uint64_t w = 0, z = 0, x = 0;
    CHECK_OK(fl_alloc(a, 64 * 1024, MAIN, &w));
    CHECK_OK(fl_alloc(a, 4096, third, &z)); /* the allocator has served the third stream */
    CHECK_OK(fl_free(a, z));
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t y = graph_alloc(a, 1 * MiB);
    CHECK_OK(fl_free(a, w)); /* not the graph's: given back after the capture */
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)third, 0), 0); /* unseen so far */
    CHECK_OK(fl_alloc(a, 4096, MAIN, &x));
    CHECK_EQ_U64(violations(), 0);
    CHECK_STATUS(fl_empty_cache(a), FL_ERR_UNSUPPORTED);
    CHECK_EQ_U64(violations(), 0);
    unsigned long long graph2 = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)third, &graph2), 0); /* still valid */
    CHECK_OK(fl_free(a, x));
    CHECK_OK(fl_free(a, y));
    graph_destroy(graph);
    graph_destroy(graph2);
    CHECK_OK(fl_empty_cache(a)); /* now the frees and the graph's block go back */
    CHECK_EQ_U64(stats(a).allocated_bytes.current, 0);
    finish(a, d);
}

/* A released capture's kept block that the device fails to take back (nocache's cudaFree
 * fails) is given back at the next catch-up, not held for good (found by the random
 * sequences: the list of released captures was cleared whatever happened). */
static void release_after_failed_free(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:nocache,oom_report:0,top:0", &d);
    if (!a)
        return;
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t capture = 0;
    CHECK_OK(fl_stream_capture(a, SIDE, &capture));
    uint64_t y = graph_alloc(a, 4096);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_OK(fl_free(a, y)); /* kept for the graph */
    graph_destroy(graph);
    fl_device_counters c = counters(d);
    CHECK_OK(fl_device_set_fault(d, fl_device_total_calls(&c) + 2, 0)); /* the synchronize, then the free fails */
    CHECK_STATUS(fl_graph_release(a, capture), FL_ERR_DEVICE);
    CHECK_EQ_U64(stats(a).graph_bytes, 4096);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a)); /* the catch-up again: given back now */
    CHECK_EQ_U64(stats(a).graph_bytes, 0);
    CHECK_EQ_U64(stats(a).reserved_bytes.current, 0);
    finish(a, d);
}

/* A new limit during a capture: what the policy would give back above it (a synchronize,
 * unmaps) is not given back then (the capture would be invalidated), the limit holds for
 * what comes next, and the cache goes back once the capture is over (found by the random
 * sequences). */
static void limit_during_capture(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    uint64_t x = 0;
    CHECK_OK(fl_alloc(a, 40 * MiB, MAIN, &x));
    CHECK_OK(fl_free(a, x)); /* 40 MiB cached on MAIN's heap */
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t y = graph_alloc(a, 4096);
    CHECK_OK(fl_set_limit(a, 16 * MiB));
    CHECK_EQ_U64(violations(), 0);
    CHECK(stats(a).reserved_bytes.current > 16 * MiB); /* nothing given back during the capture */
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_EQ_U64(graph_launch(graph), 0);
    CHECK_OK(fl_free(a, y));
    graph_destroy(graph);
    uint64_t capture = 0;
    CHECK_OK(fl_stream_capture(a, SIDE, &capture));
    CHECK_OK(fl_empty_cache(a));
    CHECK(stats(a).reserved_bytes.current <= 16 * MiB);
    CHECK_STATUS(fl_alloc(a, 20 * MiB, MAIN, &x), FL_ERR_OOM); /* the limit holds */
    CHECK_OK(fl_set_limit(a, 0));
    finish(a, d);
}

/* A capture's allocation served by the last block its graph kept: the block is the
 * program's again, and the peaks see it (they were raised only while other kept blocks
 * remained: after a peak reset the current figures passed their peaks; found by the
 * random sequences in threads mode, whose self-check compares them). */
static void reuse_of_last_kept_block_counts(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t y = graph_alloc(a, 8192);
    CHECK_OK(fl_free(a, y)); /* kept: the only kept block */
    fl_reset_peak_stats(a);
    uint64_t z = graph_alloc(a, 8192);
    CHECK_EQ_U64(z, y); /* the kept block, live again */
    fl_stats st = stats(a);
    CHECK_EQ_U64(st.allocated_bytes.current, 8192);
    CHECK(st.allocated_bytes.peak >= st.allocated_bytes.current);
    CHECK_EQ_U64(st.allocation.current, 1);
    CHECK(st.allocation.peak >= st.allocation.current);
    CHECK(st.requested_bytes.peak >= st.requested_bytes.current);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_OK(fl_free(a, z));
    graph_destroy(graph);
    finish(a, d);
}

/* The release of a capture that holds nothing here (it allocated nothing, or on another
 * device's allocator: `fragless run` releases on every allocator) makes no device call;
 * it synchronized the device before. */
static void release_of_nothing_is_free(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    uint64_t x = 0, y = 0, capture = 0;
    CHECK_OK(fl_alloc(a, MiB, MAIN, &x));
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    CHECK_OK(fl_stream_capture(a, SIDE, &capture));
    CHECK(capture != 0);
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    graph_destroy(graph);
    fl_device_counters before = counters(d), after;
    CHECK_OK(fl_graph_release(a, capture));
    CHECK_OK(fl_free(a, x));
    CHECK_OK(fl_alloc(a, MiB, MAIN, &y)); /* no catch-up waiting either */
    after = counters(d);
    CHECK_EQ_U64(fl_device_total_calls(&after), fl_device_total_calls(&before));
    CHECK_OK(fl_free(a, y));
    finish(a, d);
}

/* A stream the program served once and then destroyed: the scan before a catch-up asks
 * it, and the driver says the handle is stale. A stream that no longer exists captures
 * nothing: it is forgotten, and the catch-up goes on (taken for "cannot tell", it held
 * every later catch-up and empty_cache back for good). */
static void destroyed_stream_is_forgotten(void)
{
    fl_device *d;
    fl_allocator *a = start("policy:fragless,oom_report:0,top:0", &d);
    if (!a)
        return;
    const uint64_t gone = UINT64_C(0x400);
    uint64_t w = 0, z = 0, x = 0;
    CHECK_OK(fl_alloc(a, 4096, gone, &z));
    CHECK_OK(fl_free(a, z));
    stream_destroy((void *)(uintptr_t)gone);
    CHECK_OK(fl_alloc(a, 64 * 1024, MAIN, &w));
    CHECK_EQ_U64(begin_capture((void *)(uintptr_t)SIDE, 0), 0);
    uint64_t y = graph_alloc(a, 4096), capture = 0;
    CHECK_OK(fl_stream_capture(a, SIDE, &capture));
    CHECK_OK(fl_free(a, w)); /* waits for the catch-up */
    unsigned long long graph = 0;
    CHECK_EQ_U64(end_capture((void *)(uintptr_t)SIDE, &graph), 0);
    CHECK_OK(fl_alloc(a, 4096, MAIN, &x)); /* the catch-up: w goes back */
    CHECK_OK(fl_empty_cache(a));
    CHECK_OK(fl_free(a, x));
    CHECK_OK(fl_free(a, y));
    graph_destroy(graph);
    CHECK_OK(fl_graph_release(a, capture));
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(stats(a).allocated_bytes.current, 0);
    CHECK_EQ_U64(stats(a).reserved_bytes.current, 0);
    finish(a, d);
}

/* ---- random sequences -------------------------------------------------------------- */

/* Seeded random operations of a program that captures graphs now and then, on three
 * streams, on a small device (reclaim, reuse and OOM paths run): allocations and frees
 * (half with their stream, as PyTorch's frontend frees) inside and outside captures
 * (two captures may be underway at once, in any mode), launches of every graph not yet
 * released, releases, empty_cache, record_stream, a new limit, a reset of the peaks.
 * The rules checked after every operation: the driver saw no call a capture forbids; no
 * launch found a range of its graph unmapped, backed by other memory or written by
 * anyone else; every block the program filled still holds its bytes (so no two live
 * blocks overlap, and no graph's memory was handed out); the self-check passes; every
 * peak is at least its current value. At the end everything goes back.
 * FL_TEST_GRAPH_SEEDS and FL_TEST_GRAPH_OPS make the runs more or longer;
 * RG_ONLY="POLICY SEED" runs one alone, RG_VERBOSE=1 prints each operation. */
#define RG_STREAMS 3
#define RG_MAX_BLOCKS 96
#define RG_MAX_GRAPHS 8
#define RG_FILL_MAX (64 * 1024) /* bytes filled and checked at each end of a block */

typedef struct rg_block {
    uint64_t addr, size, stream;
    int graph;          /* index in graphs[] of the capture that allocated it, -1: none */
    unsigned char fill; /* the program's blocks only (a graph's are written by its launches) */
} rg_block;

typedef struct rg_graph {
    uint64_t capture;            /* the allocator's capture id */
    unsigned long long handle;   /* the double's graph, once the capture ended */
    uint64_t stream;
    int state;                   /* 1: capturing, 2: ended (launchable), 3: destroyed, its
                                    release failed (asked again) */
} rg_graph;

static const uint64_t rg_streams[RG_STREAMS] = {MAIN, SIDE, UINT64_C(0x300)};

static void rg_fill(const rg_block *b)
{
    uint64_t n = b->size < 2 * RG_FILL_MAX ? b->size : RG_FILL_MAX;
    memset((void *)(uintptr_t)b->addr, b->fill, n);
    if (b->size > n)
        memset((void *)(uintptr_t)(b->addr + b->size - RG_FILL_MAX), b->fill, RG_FILL_MAX);
}

static int rg_intact(const rg_block *b)
{
    const unsigned char *p = (const unsigned char *)(uintptr_t)b->addr;
    uint64_t n = b->size < 2 * RG_FILL_MAX ? b->size : RG_FILL_MAX;
    for (uint64_t i = 0; i < n; i++)
        if (p[i] != b->fill || p[b->size - 1 - i] != b->fill)
            return 0;
    return 1;
}

/* The graph capturing on stream, -1 if none. */
static int rg_capturing(const rg_graph *g, int n, uint64_t stream)
{
    for (int i = 0; i < n; i++)
        if (g[i].state == 1 && g[i].stream == stream)
            return i;
    return -1;
}

/* With faults: now and then one of the next few device calls fails (the device layer's
 * injector), or the driver's capture query or an event call does (the double's): the
 * operation that meets it fails with FL_ERR_DEVICE and changes nothing (a free that
 * failed leaves its block live, a release that failed is asked again later), and every
 * rule above still holds. */
static const char *const rg_driver_fns[] = {"cuStreamGetCaptureInfo", "cuEventRecord", "cuEventQuery",
                                            "cuStreamSynchronize"};

static void rg_clear_faults(fl_device *d)
{
    CHECK_OK(fl_device_set_fault(d, 0, 0));
    for (size_t i = 0; i < sizeof rg_driver_fns / sizeof rg_driver_fns[0]; i++)
        fail_call(rg_driver_fns[i], 0, 0);
}

/* Graph i was released: the blocks of it the program still holds are ordinary blocks
 * now (the program writes them as its own), and it leaves the table. */
static void rg_forget(rg_graph *g, int *ng, rg_block *b, int nb, int i)
{
    for (int j = 0; j < nb; j++)
        if (b[j].graph == i) {
            b[j].graph = -1;
            rg_fill(&b[j]);
        }
    g[i] = g[--*ng];
    for (int j = 0; j < nb; j++)
        if (b[j].graph == *ng)
            b[j].graph = i;
}

static void random_graphs(const char *policy, uint64_t seed, int threads, int faults, int n_ops)
{
    if (getenv("RG_ONLY")) { /* "POLICY SEED": that run alone */
        char want[64];
        snprintf(want, sizeof want, "%s %llu", policy, (unsigned long long)seed);
        if (strcmp(getenv("RG_ONLY"), want))
            return;
    }
    fl_device *d = fake_device();
    if (!d)
        return;
    char conf[128];
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0", policy);
    fl_allocator *a = fl_test_allocator(conf, d);
    if (threads)
        CHECK_OK(fli_allocator_threads(a));
    fl_rng r = {seed};
    rg_block b[RG_MAX_BLOCKS];
    rg_graph g[RG_MAX_GRAPHS];
    int nb = 0, ng = 0, failures0 = fl_test_failures;
    uint64_t allocs = 0, ooms = 0, launches = 0, captured = 0, released = 0, errors = 0;
    int verbose = getenv("RG_VERBOSE") != NULL;
    for (int op = 0; op < n_ops && fl_test_failures == failures0; op++) {
        unsigned k = (unsigned)fl_rng_below(&r, 100);
        if (verbose)
            fprintf(stderr, "op %d k %u nb %d ng %d\n", op, k, nb, ng);
        if (faults && fl_rng_below(&r, 25) == 0) { /* arm a fault */
            if (verbose)
                fprintf(stderr, "  fault armed\n");
            if (fl_rng_below(&r, 3)) {
                fl_device_counters c = counters(d);
                CHECK_OK(fl_device_set_fault(d, fl_device_total_calls(&c) + 1 + fl_rng_below(&r, 4), 0));
            } else {
                fail_call(rg_driver_fns[fl_rng_below(&r, sizeof rg_driver_fns / sizeof rg_driver_fns[0])],
                          1 + fl_rng_below(&r, 3), 999 /* CUDA_ERROR_UNKNOWN */);
            }
        }
        if (fl_rng_below(&r, 50) == 0)
            fl_reset_peak_stats(a); /* peaks from the current figures */
        /* Releases that failed are asked again. */
        for (int i = ng - 1; i >= 0; i--)
            if (g[i].state == 3 && fl_graph_release(a, g[i].capture) == FL_OK)
                rg_forget(g, &ng, b, nb, i);
        int underway = 0;
        for (int i = 0; i < ng; i++)
            underway += g[i].state == 1;
        fl_status s;
        if (k < 40 && nb < RG_MAX_BLOCKS) { /* allocate: 512 B to 12 MiB, log-uniform */
            uint64_t bits = 9 + fl_rng_below(&r, 15);
            uint64_t size = (UINT64_C(1) << bits) + fl_rng_below(&r, UINT64_C(1) << bits) / 2;
            uint64_t stream = rg_streams[fl_rng_below(&r, RG_STREAMS)], addr = 0;
            int gi = rg_capturing(g, ng, stream);
            s = fl_alloc(a, size, stream, &addr);
            if (verbose)
                fprintf(stderr, "  alloc %llu on 0x%llx (graph %d): %s 0x%llx\n", (unsigned long long)size,
                        (unsigned long long)stream, gi, fl_status_str(s), (unsigned long long)addr);
            if (s == FL_ERR_OOM) {
                ooms++;
                continue;
            }
            if (s == FL_ERR_DEVICE && faults) {
                errors++;
                rg_clear_faults(d);
                continue;
            }
            CHECK_OK(s);
            if (s != FL_OK)
                break;
            allocs++;
            b[nb] = (rg_block){addr, size, stream, gi, (unsigned char)(1 + fl_rng_below(&r, 250))};
            if (gi >= 0) /* a kernel of the graph writes it */
                CHECK_EQ_U64(capture_use((void *)(uintptr_t)stream, addr, size), 0);
            else
                rg_fill(&b[nb]);
            nb++;
        } else if (k < 75 && nb) { /* free */
            int i = (int)fl_rng_below(&r, (uint64_t)nb);
            CHECK(b[i].graph >= 0 || rg_intact(&b[i]));
            /* Half the frees as PyTorch's frontend makes them: with the block's stream. */
            s = fl_rng_below(&r, 2) ? fl_free_sized(a, b[i].addr, b[i].size)
                                    : fli_allocator_free_stream(a, b[i].addr, b[i].size, b[i].stream);
            if (verbose)
                fprintf(stderr, "  free 0x%llx (%llu, graph %d): %s\n", (unsigned long long)b[i].addr,
                        (unsigned long long)b[i].size, b[i].graph, fl_status_str(s));
            if (s == FL_ERR_DEVICE && faults) { /* still live */
                errors++;
                rg_clear_faults(d);
                continue;
            }
            CHECK_OK(s);
            b[i] = b[--nb];
        } else if (k < 80 && ng < RG_MAX_GRAPHS) { /* begin a capture on SIDE or the third stream */
            uint64_t stream = rg_streams[1 + fl_rng_below(&r, 2)];
            if (rg_capturing(g, ng, stream) >= 0)
                continue;
            CHECK_EQ_U64(begin_capture((void *)(uintptr_t)stream, (int)fl_rng_below(&r, 3)), 0);
            uint64_t id = 0;
            if ((s = fl_stream_capture(a, stream, &id)) == FL_ERR_DEVICE && faults) {
                errors++;
                rg_clear_faults(d);
                s = fl_stream_capture(a, stream, &id);
            }
            CHECK_OK(s);
            CHECK(id != 0);
            g[ng++] = (rg_graph){id, 0, stream, 1};
            if (verbose)
                fprintf(stderr, "  begin capture %llu on 0x%llx as graph %d\n", (unsigned long long)id,
                        (unsigned long long)stream, ng - 1);
            captured++;
        } else if (k < 86 && underway) { /* end one */
            int i = (int)fl_rng_below(&r, (uint64_t)ng);
            while (g[i].state != 1)
                i = (i + 1) % ng;
            CHECK_EQ_U64(end_capture((void *)(uintptr_t)g[i].stream, &g[i].handle), 0);
            g[i].state = 2;
            if (verbose)
                fprintf(stderr, "  end graph %d\n", i);
        } else if (k < 93) { /* launch every graph that can run */
            for (int i = 0; i < ng; i++)
                if (g[i].state == 2) {
                    CHECK_EQ_U64(graph_launch(g[i].handle), 0);
                    launches++;
                }
        } else if (k < 96) { /* release a graph: destroyed, then the allocator is told */
            int i = ng ? (int)fl_rng_below(&r, (uint64_t)ng) : 0;
            if (!ng || g[i].state != 2)
                continue;
            graph_destroy(g[i].handle);
            s = fl_graph_release(a, g[i].capture);
            released++;
            if (verbose)
                fprintf(stderr, "  release graph %d (capture %llu): %s\n", i, (unsigned long long)g[i].capture,
                        fl_status_str(s));
            if (s == FL_ERR_DEVICE && faults) { /* asked again at the next operations */
                errors++;
                rg_clear_faults(d);
                g[i].state = 3;
                continue;
            }
            CHECK_OK(s);
            rg_forget(g, &ng, b, nb, i);
        } else if (k < 98) { /* empty_cache: refused while a capture is underway */
            s = fl_empty_cache(a);
            if (verbose)
                fprintf(stderr, "  empty_cache: %s\n", fl_status_str(s));
            if (s == FL_ERR_DEVICE && faults) {
                errors++;
                rg_clear_faults(d);
            } else if (underway) {
                CHECK_STATUS(s, FL_ERR_UNSUPPORTED);
            } else {
                CHECK_OK(s);
            }
        } else if (k == 98) { /* a new limit: cached memory above it goes back where it may */
            uint64_t limit = fl_rng_below(&r, 4) ? (16 + fl_rng_below(&r, 49)) * MiB : 0;
            s = fl_set_limit(a, limit);
            if (verbose)
                fprintf(stderr, "  set_limit %llu: %s\n", (unsigned long long)limit, fl_status_str(s));
            if (s == FL_ERR_DEVICE && faults) {
                errors++;
                rg_clear_faults(d);
            } else {
                CHECK_OK(s);
            }
        } else if (nb) { /* the block is used on another stream too */
            int i = (int)fl_rng_below(&r, (uint64_t)nb);
            s = fl_record_stream(a, b[i].addr, rg_streams[fl_rng_below(&r, RG_STREAMS)]);
            if (verbose)
                fprintf(stderr, "  record_stream 0x%llx: %s\n", (unsigned long long)b[i].addr, fl_status_str(s));
            if (s == FL_ERR_DEVICE && faults) {
                errors++;
                rg_clear_faults(d);
            } else {
                CHECK_OK(s);
            }
        }
        CHECK_EQ_U64(violations(), 0);
        CHECK_EQ_U64(graph_faults(), 0);
        fl_stats st = stats(a);
        if (st.allocated_bytes.peak < st.allocated_bytes.current || st.allocation.peak < st.allocation.current ||
            st.requested_bytes.peak < st.requested_bytes.current || st.reserved_bytes.peak < st.reserved_bytes.current) {
            fprintf(stderr, "op %d: a peak below its current value\n", op);
            CHECK(!"every peak at least its current value");
        }
        if (fl_allocator_check(a)) {
            fprintf(stderr, "op %d: self-check: %s\n", op, fl_last_error());
            CHECK(!"the self-check passes");
        }
        if (op % 16 == 0)
            for (int i = 0; i < nb; i++)
                if (b[i].graph < 0 && !rg_intact(&b[i])) {
                    fprintf(stderr, "op %d: block 0x%llx of %llu bytes was written by someone else\n", op,
                            (unsigned long long)b[i].addr, (unsigned long long)b[i].size);
                    CHECK(!"a block the program filled keeps its bytes");
                    break;
                }
    }
    /* The end: captures ended, graphs launched once more and released, blocks freed. */
    if (faults)
        rg_clear_faults(d);
    for (int i = 0; i < ng; i++)
        if (g[i].state == 1) {
            CHECK_EQ_U64(end_capture((void *)(uintptr_t)g[i].stream, &g[i].handle), 0);
            g[i].state = 2;
        }
    for (int i = 0; i < ng; i++) {
        if (g[i].state == 2) {
            CHECK_EQ_U64(graph_launch(g[i].handle), 0);
            graph_destroy(g[i].handle);
        }
        CHECK_OK(fl_graph_release(a, g[i].capture));
    }
    for (int i = 0; i < nb; i++) {
        CHECK(b[i].graph >= 0 || rg_intact(&b[i]));
        CHECK_OK(fl_free_sized(a, b[i].addr, b[i].size));
    }
    CHECK_OK(fl_empty_cache(a));
    fl_stats st = stats(a);
    CHECK_EQ_U64(st.allocated_bytes.current, 0);
    CHECK_EQ_U64(st.graph_bytes, 0);
    CHECK_EQ_U64(st.reserved_bytes.current, 0);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(violations(), 0);
    CHECK_EQ_U64(graph_faults(), 0);
    fprintf(stderr, "   %s seed %llu%s%s: %llu allocations (%llu out of memory), %llu captures, %llu launches, "
            "%llu releases, %llu operations failed by an injected fault\n", policy, (unsigned long long)seed,
            threads ? " threads" : "", faults ? " faults" : "", (unsigned long long)allocs, (unsigned long long)ooms,
            (unsigned long long)captured, (unsigned long long)launches, (unsigned long long)released,
            (unsigned long long)errors);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

int main(void)
{
    setenv("FAKECUDA_CAPACITY", "256M", 1);
    void *lib = fl_test_fakecuda();
    if (!lib)
        fl_test_skip("the driver double is not built");
    if (!fl_test_sym(lib, "fakecuda_reset", &fake_reset) || !fl_test_sym(lib, "fakecuda_begin_capture", &begin_capture) ||
        !fl_test_sym(lib, "fakecuda_capture_use", &capture_use) || !fl_test_sym(lib, "fakecuda_end_capture", &end_capture) ||
        !fl_test_sym(lib, "fakecuda_graph_launch", &graph_launch) ||
        !fl_test_sym(lib, "fakecuda_capture_violations", &violations) ||
        !fl_test_sym(lib, "fakecuda_graph_faults", &graph_faults) ||
        !fl_test_sym(lib, "fakecuda_graph_destroy", &graph_destroy) ||
        !fl_test_sym(lib, "fakecuda_fail_call", &fail_call) ||
        !fl_test_sym(lib, "fakecuda_stream_destroy", &stream_destroy))
        return 1;
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++) {
        fprintf(stderr, "-- %s, global capture mode\n", names[i]);
        sequence(names[i], 0);
    }
    fprintf(stderr, "-- fragless, thread-local capture mode\n");
    sequence("fragless", 1);
    /* Relaxed: the driver lets every call through; only the replays can tell. */
    fprintf(stderr, "-- fragless, relaxed capture mode\n");
    sequence("fragless", 2);
    refused_during_capture();
    capture_query_fails();
    catch_up_waits_for_unseen_capture();
    release_after_failed_free();
    limit_during_capture();
    reuse_of_last_kept_block_counts();
    destroyed_stream_is_forgotten();
    release_of_nothing_is_free();
    fprintf(stderr, "-- thread caches and captures\n");
    caches_and_captures();
    threads_on_driver();
    /* Random sequences on a small device, on 2 MiB pages, on 64 KiB pages (where the
     * same sizes span 32 times as many pages: fragless's chunks and runs) and on 1 MiB. */
    const char *gran = getenv("FAKECUDA_GRANULARITY");
    const char *grans[3] = {gran ? gran : "2M", "64K", "1M"}; /* 1 MiB: one seed */
    int n_ops = getenv("FL_TEST_GRAPH_OPS") ? atoi(getenv("FL_TEST_GRAPH_OPS")) : 1000;
    /* One thread makes them: under ThreadSanitizer (test-tsan) they are left out, under
     * AddressSanitizer one seed runs. */
    uint64_t seeds = getenv("FL_TEST_GRAPH_SEEDS") ? strtoull(getenv("FL_TEST_GRAPH_SEEDS"), NULL, 10)
                     : FL_TEST_UNDER_TSAN ? 0 : FL_TEST_UNDER_ASAN ? 1 : 2;
    setenv("FAKECUDA_CAPACITY", "64M", 1);
    if (!seeds)
        fprintf(stderr, "-- random sequences: left out (under ThreadSanitizer, or FL_TEST_GRAPH_SEEDS=0)\n");
    for (int k = 0; k < 3 && seeds; k++) {
        uint64_t last = k == 2 ? 1 : seeds;
        setenv("FAKECUDA_GRANULARITY", grans[k], 1);
        fprintf(stderr, "-- random sequences, pages of %s\n", grans[k]);
        for (int i = 0; names[i]; i++)
            for (uint64_t seed = 1; seed <= last; seed++) {
                random_graphs(names[i], seed * 7919 + (uint64_t)k, 0, 0, n_ops);
                random_graphs(names[i], seed * 7907 + (uint64_t)k, 0, 1, n_ops);
            }
        for (uint64_t seed = 1; seed <= last; seed++)
            random_graphs("fragless", seed * 104729 + (uint64_t)k, 1, (int)(seed & 1), n_ops);
    }
    return fl_test_done("test_graphs");
}
