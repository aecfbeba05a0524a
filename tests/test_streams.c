/* record_stream: a block used on another stream is reused only after an event recorded
 * on that stream at the free has completed — checked on the cuda device over the driver
 * double with events held incomplete, for every policy; and on the sim device, whose
 * events complete at once. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "policy/policy.h"
#include "replay/replay.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define S1 UINT64_C(0x1000)
#define S2 UINT64_C(0x2000)

static const char fake_path[] = FL_TEST_FAKECUDA;

static void (*set_auto_complete)(int on);
static void (*complete_all)(void);
static void (*fake_reset)(void);
static void (*stream_destroy)(void *stream);
static int (*ctx_reset)(int dev);
static unsigned long long (*reset_losses)(void);
static size_t (*fake_used)(int dev);
static int (*device_access)(int dev, uint64_t va, size_t n, int write);

/* The policy, with neither the OOM report nor publishing (top). */
static fl_allocator *make(const char *policy, fl_device *d)
{
    char conf[128];
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0", policy);
    return fl_test_allocator(conf, d);
}

static fl_stats stats(fl_allocator *a)
{
    fl_stats s;
    fl_get_stats(a, &s);
    return s;
}

static int overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

/* A fresh driver double with events held incomplete, and the policy on it; NULL when
 * the double cannot be had. */
static fl_allocator *start(const char *policy, fl_device **d)
{
    fake_reset();
    *d = fl_test_fake_device();
    if (!*d)
        return NULL;
    fl_allocator *a = make(policy, *d);
    set_auto_complete(0);
    return a;
}

static void on_double(const char *policy)
{
    fl_device *d;
    fl_allocator *a = start(policy, &d);
    if (!a)
        return;

    /* Freed while stream 2 may still read it: not reused, by its own stream either. */
    uint64_t x, y, z;
    CHECK_OK(fl_alloc(a, MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_record_stream(a, x, S2)); /* twice is once */
    CHECK_OK(fl_free(a, x));
    CHECK_STATUS(fl_free(a, x), FL_ERR_NOT_FOUND); /* freed already, even if pending */
    fl_stats s = stats(a);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.current, 1); /* still held for stream 2 */
    CHECK(s.active_bytes.current >= MiB);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_alloc(a, MiB, S1, &y));
    CHECK(!overlaps(x, MiB, y, MiB));
    CHECK_EQ_U64(stats(a).allocation.current, 2);

    /* Stream 2's work done: the next allocation frees it first. */
    complete_all();
    CHECK_OK(fl_alloc(a, 4096, S1, &z));
    CHECK_EQ_U64(stats(a).allocation.current, 2); /* y and z: x is gone */
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_free(a, z));

    /* Out of memory with a block pending: synchronize, free it, succeed. The double
     * has 1 GiB; fill it with 64 MiB blocks, one of them used on stream 2. */
    uint64_t big[16];
    int n = 0;
    while (n < 16 && fl_alloc(a, 64 * MiB, S1, &big[n]) == FL_OK)
        n++;
    CHECK(n >= 8 && n < 16);
    CHECK_OK(fl_record_stream(a, big[0], S2));
    CHECK_OK(fl_free(a, big[0]));
    fl_device_counters before, after;
    fl_device_get_counters(d, &before);
    uint64_t again;
    CHECK_OK(fl_alloc(a, 64 * MiB, S1, &again)); /* only big[0]'s memory is left */
    fl_device_get_counters(d, &after);
    CHECK(after.calls[FL_CALL_SYNC] > before.calls[FL_CALL_SYNC]);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_free(a, again));
    for (int i = 1; i < n; i++)
        CHECK_OK(fl_free(a, big[i]));

    /* empty_cache synchronizes and returns pending blocks too. */
    CHECK_OK(fl_record_stream(a, y, S2));
    CHECK_OK(fl_free(a, y));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_OK(fl_empty_cache(a));
    s = stats(a);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.reserved_bytes.current, 0);

    /* Misuse: a pointer that is not a live block. */
    CHECK_STATUS(fl_record_stream(a, x, S2), FL_ERR_NOT_FOUND);
    char hex[32];
    snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)x);
    CHECK_MENTIONS(hex);

    /* Destroyed with a block pending: its event is destroyed, nothing leaks. */
    CHECK_OK(fl_alloc(a, MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_free(a, x));
    set_auto_complete(1);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* A stream the program destroys (cudaStreamDestroy under `fragless run`; the frontend
 * calls fli_allocator_stream_gone first): what the policy kept for it goes to a stream
 * created later only once the work queued on it is done; its live blocks stay valid.
 * Every policy keeps the contract; fragless hands the stream's heaps over (the same
 * address comes back), where it reserved a heap pair per stream ever made. */
static void gone_on_double(const char *policy)
{
    fl_device *d;
    fl_allocator *a = start(policy, &d);
    if (!a)
        return;
    const uint64_t S3 = 0x3000, S4 = 0x4000;
    uint64_t p, live, q, r;
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &p));
    CHECK_OK(fl_alloc(a, MiB, S1, &live));
    /* Waits the device made count: a synchronize, or nocache's cuMemFree (the driver
     * frees memory once the device's work on it is done). */
    fl_device_counters before, after;
    fl_device_get_counters(d, &before);
    CHECK_OK(fl_free(a, p)); /* S1's kernels may still use it */
    fli_allocator_stream_gone(a, S1);
    stream_destroy((void *)(uintptr_t)S1);
    CHECK_OK(fl_alloc(a, 3 * MiB, S3, &q));
    fl_device_get_counters(d, &after);
    int apart = !overlaps(p, 3 * MiB, q, 3 * MiB) || after.calls[FL_CALL_SYNC] > before.calls[FL_CALL_SYNC] ||
                after.calls[FL_CALL_MEM_FREE] > before.calls[FL_CALL_MEM_FREE];
    CHECK(apart);
    if (!apart)
        fprintf(stderr, "  %s: 0x%llx given to another stream before its work was done\n", policy, (unsigned long long)p);
    complete_all(); /* S1's work is done */
    CHECK_OK(fl_alloc(a, 3 * MiB, S4, &r));
    if (!strcmp(policy, "fragless"))
        CHECK_EQ_U64(r, p); /* S4 took S1's heaps over */
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_free(a, live)); /* a block of the destroyed stream */
    CHECK_OK(fl_free(a, q));
    CHECK_OK(fl_free(a, r));
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(stats(a).reserved_bytes.current, 0);
    set_auto_complete(1);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* cudaDeviceReset under `fragless run`: fli_allocator_before_reset, the primary context's
 * reset (the driver double's: the device's cuMemAlloc blocks go, with the context's
 * events and streams, and the context is inactive until retained again), then
 * fli_allocator_after_reset. The reset must find nothing of the allocator's to destroy.
 * cca and nocache (memory from cuMemAlloc, the context's): everything given back, the
 * live blocks forgotten, the allocator empty with its totals. fragless and
 * cca-expandable (virtual memory, which outlives the reset as cudaMallocAsync's blocks
 * do): the live blocks stay, with their data; what waited for an event is settled, the
 * cache given back, and a destroyed stream's heap is taken over afterwards without
 * asking its (destroyed) event. Either way the allocator works after, making the context
 * again itself (nobody else retains it here), and a trace recorded across the reset
 * loads (no address allocated twice). Blocks live, cached, waiting for another stream's
 * event and in a destroyed stream's heap; fragless also with thread caches. */
static void reset_on_double(const char *policy, int threads)
{
    char path[256], conf[384];
    snprintf(path, sizeof path, "%s/fl_test_streams_reset.%d.csv", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    fake_reset();
    fl_device *d = fl_test_fake_device();
    if (!d)
        return;
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0%s%s", policy, threads ? "" : ",trace:",
             threads ? "" : path);
    fl_allocator *a = fl_test_allocator(conf, d);
    if (!a) {
        fl_device_destroy(d);
        return;
    }
    const fli_policy *pol = fli_allocator_policy(a);
    int kept = !pol->ops->reset_destroys;
    if (threads)
        CHECK_OK(fli_allocator_threads(a));
    set_auto_complete(0);
    const uint64_t S3 = 0x3000, S4 = 0x4000;
    uint64_t live, small, cached, pending, gone, tc[8];
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &live));
    CHECK_OK(fl_alloc(a, 4096, S1, &small));
    memset((void *)(uintptr_t)live, 0x3c, 3 * MiB); /* the double's memory is the host's */
    memset((void *)(uintptr_t)small, 0x4d, 4096);
    CHECK_OK(fl_alloc(a, MiB, S2, &cached));
    CHECK_OK(fl_alloc(a, 5 * MiB, S1, &pending));
    for (int i = 0; i < 8; i++)
        CHECK_OK(fl_alloc(a, 512u << i, S1, &tc[i]));
    for (int i = 0; i < 8; i++)
        CHECK_OK(fl_free(a, tc[i]));
    CHECK_OK(fl_free(a, cached));
    if (!threads) { /* record_stream turns thread caches off */
        CHECK_OK(fl_record_stream(a, pending, S2));
        CHECK_OK(fl_free(a, pending));
        CHECK_OK(fl_alloc(a, 2 * MiB, S3, &gone)); /* a stream destroyed with its work pending */
        CHECK_OK(fl_free(a, gone));
        fli_allocator_stream_gone(a, S3);
        stream_destroy((void *)(uintptr_t)S3);
    } else {
        CHECK_OK(fl_free(a, pending));
    }
    fl_stats before = stats(a);
    unsigned long long lost = reset_losses();
    CHECK_OK(fli_allocator_before_reset(a));
    CHECK(ctx_reset(0) == 0);
    fli_allocator_after_reset(a);
    CHECK_EQ_U64(reset_losses(), lost); /* the reset found nothing of the allocator's */
    CHECK(fl_allocator_check(a) == 0);
    fl_stats s = stats(a);
    CHECK_EQ_U64(s.allocation.allocated, before.allocation.allocated);
    CHECK_EQ_U64(s.allocated_bytes.peak, before.allocated_bytes.peak);
    if (kept) {
        CHECK_EQ_U64(s.allocation.current, 2);
        CHECK_EQ_U64(s.requested_bytes.current, 3 * MiB + 4096);
        CHECK(s.reserved_bytes.current < before.reserved_bytes.current); /* the cache given back */
        CHECK(device_access(0, live, 3 * MiB, 1) == 0 && device_access(0, small, 4096, 1) == 0);
        int intact = 1;
        for (uint64_t k = 0; k < 3 * MiB && intact; k++)
            intact = ((unsigned char *)(uintptr_t)live)[k] == 0x3c;
        for (uint64_t k = 0; k < 4096 && intact; k++)
            intact = ((unsigned char *)(uintptr_t)small)[k] == 0x4d;
        CHECK(intact);
    } else {
        CHECK_EQ_U64(s.allocation.current, 0);
        CHECK_EQ_U64(s.allocated_bytes.current, 0);
        CHECK_EQ_U64(s.requested_bytes.current, 0);
        CHECK_EQ_U64(s.reserved_bytes.current, 0);
        CHECK_EQ_U64(fake_used(0), 0);
        CHECK_STATUS(fl_free(a, live), FL_ERR_NOT_FOUND);
    }
    /* Works again, on memory that is there: new pages, so driver calls (in the context
     * the device makes again: the double refuses them in the reset one). */
    uint64_t p, q, r;
    CHECK_OK(fl_alloc(a, 9 * MiB, S1, &p));
    CHECK_OK(fl_alloc(a, 4096, S2, &q));
    CHECK(device_access(0, p, 9 * MiB, 1) == 0 && device_access(0, q, 4096, 1) == 0);
    if (!threads) { /* a stream made after the reset: takes S3's heap over (fragless) */
        CHECK_OK(fl_alloc(a, 2 * MiB, S4, &r));
        if (!strcmp(policy, "fragless"))
            CHECK_EQ_U64(r, gone);
        CHECK_OK(fl_free(a, r));
    }
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(stats(a).allocation.current, kept ? 4 : 2);
    CHECK_OK(fl_free(a, p));
    CHECK_OK(fl_free(a, q));
    if (kept) { /* freed explicitly, as cudaMallocAsync's blocks are */
        CHECK_OK(fl_free(a, live));
        CHECK_OK(fl_free(a, small));
    }
    CHECK_EQ_U64(reset_losses(), lost);
    set_auto_complete(1);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    if (!threads) {
        fli_prepared *t = NULL;
        FILE *warn = tmpfile(); /* a free of what is not live is only a warning: none wanted */
        fl_status ls = fli_load_trace(path, warn, &t);
        CHECK_OK(ls);
        if (ls != FL_OK)
            fprintf(stderr, "  %s: the trace recorded across the reset: %s\n", policy, fl_last_error());
        CHECK(warn && ftell(warn) == 0);
        if (warn && ftell(warn))
            fprintf(stderr, "  %s: the trace recorded across the reset has warnings\n", policy);
        if (warn)
            fclose(warn);
        fli_prepared_free(t);
        remove(path);
    }
}

/* A stream per request, a thousand of them (each destroyed after its request): the
 * memory held stays what one stream holds (before: a heap pair with its growth step per
 * stream, 48 GiB after 1,536 streams on an 80 GiB device). */
static void gone_many(void)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = UINT64_C(80) << 30;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_allocator *a = make("fragless", d);
    uint64_t first = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t s = 0x10000 + (uint64_t)i * 0x100, x, y;
        if (fl_alloc(a, 5 * MiB, s, &x) != FL_OK || fl_alloc(a, 1000, s, &y) != FL_OK) {
            CHECK(0);
            break;
        }
        CHECK_OK(fl_free(a, y));
        CHECK_OK(fl_free(a, x));
        fli_allocator_stream_gone(a, s);
        if (!i)
            first = stats(a).reserved_bytes.current;
    }
    CHECK(first > 0 && stats(a).reserved_bytes.current <= first);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* The sim has no asynchronous work: a pending block is freed at the next allocation. */
static void on_sim(void)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_allocator *a = make("fragless", d);
    uint64_t x, y;
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_free(a, x));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &y));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_EQ_U64(x, y); /* the same place again: fragless reuses the freed range */
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

int main(void)
{
    on_sim();
    gone_many();
    if (!fake_path[0]) {
        printf("test_streams: the driver double was not built; only the sim part ran\n");
        return fl_test_done("test_streams");
    }
    void *lib = fl_test_fakecuda();
    if (!lib || !fl_test_sym(lib, "fakecuda_set_auto_complete", &set_auto_complete) ||
        !fl_test_sym(lib, "fakecuda_complete_all", &complete_all) || !fl_test_sym(lib, "fakecuda_reset", &fake_reset) ||
        !fl_test_sym(lib, "fakecuda_stream_destroy", &stream_destroy) ||
        !fl_test_sym(lib, "cuDevicePrimaryCtxReset_v2", &ctx_reset) ||
        !fl_test_sym(lib, "fakecuda_reset_losses", &reset_losses) || !fl_test_sym(lib, "fakecuda_used", &fake_used) ||
        !fl_test_sym(lib, "fakecuda_device_access", &device_access))
        return 1;
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++) {
        on_double(names[i]);
        gone_on_double(names[i]);
        reset_on_double(names[i], 0);
    }
    reset_on_double("fragless", 1);
    return fl_test_done("test_streams");
}
