/* CUDA graphs on the driver double, for every policy: the sequence torch.cuda.graph and
 * make_graphed_callables make (empty_cache; capture on a side stream with allocations and
 * frees inside; outside, allocations, frees, empty_cache and memory pressure; replays; a
 * second capture; a release) must never unmap or hand out a page a graph uses (each
 * replay checks every range it captured) and make no call a capture forbids (the double
 * invalidates the capture and counts it). */
#include <pthread.h>
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
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(graph_faults(), 0);
    CHECK_EQ_U64(violations(), 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* What a capture cannot be given without a call it forbids fails as out of memory,
 * saying why, and leaves the capture valid: every page cached on the main stream's heap
 * would have to be reclaimed (a synchronize and unmaps). */
static void refused_during_capture(void)
{
    fl_device *d = fake_device();
    if (!d)
        return;
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
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
    fl_device *d = fake_device();
    if (!d)
        return;
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
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
    fl_device *d = fake_device();
    if (!d)
        return;
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
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
        !fl_test_sym(lib, "fakecuda_graph_faults", &graph_faults))
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
    fprintf(stderr, "-- thread caches and captures\n");
    caches_and_captures();
    threads_on_driver();
    return fl_test_done("test_graphs");
}
