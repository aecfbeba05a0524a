/* The fragless policy: page accounting, zero device calls in a steady loop, reclaim
 * under pressure (synchronize before unmap), per-stream heaps, limits, empty_cache and
 * consistency after a failed device call. A wrapper device records every call. */
#include <string.h>

#include "policy/policy.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define PAGE (2 * MiB)

/* A device that forwards to a sim device, records the order of calls, and can fail
 * the Nth call (fault injection). */
typedef struct rec_device {
    fl_device base;
    fl_device *inner;
    fl_call log[4096];
    int n_log;
    int fail_at;    /* 1-based call number to fail, 0 = never */
    int calls;
} rec_device;

static fl_status rec(fl_device *d, fl_call c, fl_status s)
{
    rec_device *r = (rec_device *)d;
    r->base.counters.in_use = r->inner->counters.in_use;
    r->base.counters.time_us = r->inner->counters.time_us;
    if (r->n_log < 4096)
        r->log[r->n_log++] = c;
    return s;
}

static int should_fail(fl_device *d)
{
    rec_device *r = (rec_device *)d;
    return ++r->calls == r->fail_at;
}

#define FWD(name, call, params, args)                                                       \
    static fl_status rec_##name params                                                      \
    {                                                                                       \
        if (should_fail(d))                                                                 \
            return rec(d, call, fl_fail(FL_ERR_DEVICE, "injected failure of " #name));      \
        fl_device *in = ((rec_device *)d)->inner;                                           \
        return rec(d, call, in->ops->name args);                                            \
    }

FWD(mem_alloc, FL_CALL_MEM_ALLOC, (fl_device * d, uint64_t size, uint64_t *addr), (in, size, addr))
FWD(mem_free, FL_CALL_MEM_FREE, (fl_device * d, uint64_t addr), (in, addr))
FWD(reserve, FL_CALL_RESERVE, (fl_device * d, uint64_t size, uint64_t *va), (in, size, va))
FWD(addr_free, FL_CALL_ADDR_FREE, (fl_device * d, uint64_t va, uint64_t size), (in, va, size))
FWD(create, FL_CALL_CREATE, (fl_device * d, uint64_t size, uint64_t *h), (in, size, h))
FWD(release, FL_CALL_RELEASE, (fl_device * d, uint64_t h), (in, h))
FWD(map, FL_CALL_MAP, (fl_device * d, uint64_t va, uint64_t size, uint64_t h), (in, va, size, h))
FWD(unmap, FL_CALL_UNMAP, (fl_device * d, uint64_t va, uint64_t size), (in, va, size))
FWD(set_access, FL_CALL_SET_ACCESS, (fl_device * d, uint64_t va, uint64_t size), (in, va, size))
FWD(synchronize, FL_CALL_SYNC, (fl_device * d), (in))

static void rec_destroy(fl_device *d)
{
    rec_device *r = (rec_device *)d;
    fl_device_destroy(r->inner);
    free(r);
}

static const fl_device_ops rec_ops = {
    .name = "recording", .mem_alloc = rec_mem_alloc, .mem_free = rec_mem_free, .reserve = rec_reserve,
    .addr_free = rec_addr_free, .create = rec_create, .release = rec_release, .map = rec_map,
    .unmap = rec_unmap, .set_access = rec_set_access, .synchronize = rec_synchronize, .destroy = rec_destroy,
};

static rec_device *rec_new(uint64_t capacity)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    if (capacity)
        sp.capacity = capacity;
    rec_device *r = calloc(1, sizeof *r);
    if (fl_sim_device_create(&sp, &r->inner) != FL_OK)
        abort();
    r->base.ops = &rec_ops;
    r->base.capacity = r->inner->capacity;
    r->base.granularity = r->inner->granularity;
    r->base.vmm_supported = 1;
    return r;
}

static fl_policy *fragless_on(rec_device *r, uint64_t limit)
{
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.limit = limit;
    fl_policy *p = NULL;
    CHECK_OK(fl_policy_create(&cfg, &r->base, &p));
    return p;
}

static uint64_t total_calls(const rec_device *r)
{
    uint64_t n = 0;
    for (int i = 0; i < FL_CALL_COUNT; i++)
        n += r->base.counters.calls[i];
    return n;
}

/* A training loop: the same sizes every step, freed in reverse. After the first step
 * every page the step needs is mapped, so no step after it calls the device. */
static void test_steady_loop(void)
{
    rec_device *r = rec_new(0);
    fl_policy *p = fragless_on(r, 0);
    static const uint64_t sizes[] = {12 * MiB, 1536, 3 * MiB + 512, 64 << 10, 100 * MiB, 7, 300 << 10, 5 * MiB};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint64_t addr[N], after_warmup = 0;
    for (int step = 0; step < 50; step++) {
        for (int i = 0; i < N; i++)
            CHECK_OK(p->ops->alloc(p, sizes[i], 0, &addr[i]));
        for (int i = N - 1; i >= 0; i--)
            CHECK_OK(p->ops->free(p, addr[i], 0, NULL));
        CHECK(p->ops->check(p) == 0);
        if (step == 0)
            after_warmup = total_calls(r);
    }
    CHECK(after_warmup > 0);
    CHECK_EQ_U64(total_calls(r), after_warmup);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    /* Everything went back to the device at destroy. */
    CHECK_EQ_U64(r->inner->counters.in_use, 0);
    rec_destroy(&r->base);
}

/* Pages are counted exactly: blocks that share pages pin only those pages. */
static void test_page_accounting(void)
{
    rec_device *r = rec_new(2 * PAGE);
    fl_policy *p = fragless_on(r, 0);
    uint64_t a[5];
    for (int i = 0; i < 4; i++)
        CHECK_OK(p->ops->alloc(p, MiB, 0, &a[i]));
    CHECK(r->inner->counters.in_use <= 2 * PAGE);
    CHECK_STATUS(p->ops->alloc(p, MiB, 0, &a[4]), FL_ERR_OOM);
    CHECK(strstr(fl_last_error(), "pages") != NULL);
    CHECK_EQ_U64(p->ooms, 1);
    CHECK_EQ_U64(p->allocated, 4 * MiB);
    CHECK(p->ops->check(p) == 0);
    /* After the failure the state is as before: freeing one block makes room. */
    CHECK_OK(p->ops->free(p, a[1], 0, NULL));
    CHECK_OK(p->ops->alloc(p, MiB, 0, &a[1]));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

/* The product's promise: memory freed anywhere serves a request of any size, because
 * pages are remapped, never data moved. Fill the device with 2 MiB blocks, free every
 * other one, then ask for half the device in one block. */
static void test_no_stranded_memory(void)
{
    enum { PAGES = 32 };
    rec_device *r = rec_new(PAGES * PAGE);
    fl_policy *p = fragless_on(r, 0);
    uint64_t a[PAGES], big;
    for (int i = 0; i < PAGES; i++)
        CHECK_OK(p->ops->alloc(p, PAGE, 0, &a[i]));
    CHECK_STATUS(p->ops->alloc(p, 512, 0, &big), FL_ERR_OOM);
    for (int i = 0; i < PAGES; i += 2)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    int log_before = r->n_log;
    CHECK_OK(p->ops->alloc(p, PAGES / 2 * PAGE, 0, &big));
    CHECK(p->ops->check(p) == 0);
    CHECK(r->inner->counters.in_use <= PAGES * PAGE);
    /* Reclaim happened, and the device was synchronized before the first unmap. */
    int first_unmap = -1, first_sync = -1;
    for (int i = log_before; i < r->n_log; i++) {
        if (r->log[i] == FL_CALL_UNMAP && first_unmap < 0)
            first_unmap = i;
        if (r->log[i] == FL_CALL_SYNC && first_sync < 0)
            first_sync = i;
    }
    CHECK(first_unmap >= 0);
    CHECK(first_sync >= 0 && first_sync < first_unmap);
    CHECK_EQ_U64(p->retries, 1);
    /* The survivors were not touched: still live at the same addresses. */
    for (int i = 1; i < PAGES; i += 2)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    CHECK_OK(p->ops->free(p, big, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

/* A block freed on one stream is not given to another before a synchronization: each
 * stream has its own heap; physical pages move between them only through reclaim. */
static void test_streams(void)
{
    rec_device *r = rec_new(0);
    fl_policy *p = fragless_on(r, 0);
    uint64_t a, b, c;
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 2, &b));
    CHECK(b != a);
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &c));
    CHECK_EQ_U64(c, a); /* the same stream reuses its block at once */
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

/* limit: the policy never holds more than it, whatever the device has. */
static void test_limit_and_empty_cache(void)
{
    rec_device *r = rec_new(0);
    fl_policy *p = fragless_on(r, 16 * MiB);
    uint64_t a, b;
    CHECK_OK(p->ops->alloc(p, 10 * MiB, 0, &a));
    CHECK_STATUS(p->ops->alloc(p, 8 * MiB, 0, &b), FL_ERR_OOM);
    CHECK(r->inner->counters.peak_in_use <= 16 * MiB);
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK(r->inner->counters.in_use > 0); /* cached, not returned */
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_EQ_U64(r->inner->counters.in_use, 0);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->alloc(p, 16 * MiB, 0, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

/* Fail every device call in turn during a workload that needs reclaim: each failure
 * surfaces as an error of that call, the self-check holds, and the workload can go on
 * once the device works again. */
static void test_fault_injection(void)
{
    for (int n = 1; n <= 200; n++) {
        rec_device *r = rec_new(12 * PAGE);
        fl_policy *p = fragless_on(r, 0);
        r->fail_at = n;
        uint64_t a[8] = {0};
        int failed = 0;
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < 8; i++) {
                uint64_t size = (uint64_t)(i + 1) * 700 * 1024 + (uint64_t)round * 4096;
                fl_status s = p->ops->alloc(p, size, (uint64_t)(i % 2), &a[i]);
                if (s != FL_OK) {
                    CHECK(s == FL_ERR_DEVICE || s == FL_ERR_OOM);
                    failed += s == FL_ERR_DEVICE;
                    a[i] = 0;
                }
                if (p->ops->check(p)) {
                    fprintf(stderr, "fail_at %d: %s\n", n, fl_last_error());
                    CHECK(!"self-check after an injected failure");
                }
            }
            for (int i = 0; i < 8; i++)
                if (a[i])
                    CHECK_OK(p->ops->free(p, a[i], 0, NULL));
        }
        if (n < r->calls)
            CHECK(failed <= 1);
        /* With the device healthy again, everything works. */
        uint64_t x;
        CHECK_OK(p->ops->alloc(p, 5 * PAGE, 0, &x));
        CHECK_OK(p->ops->free(p, x, 0, NULL));
        CHECK(p->ops->check(p) == 0);
        int calls = r->calls;
        p->ops->destroy(p);
        CHECK_EQ_U64(r->inner->counters.in_use, 0);
        rec_destroy(&r->base);
        if (n > calls)
            break;
    }
}

/* Quick lists: a freed block of at most 4 KiB is handed to the next request of its size
 * (last freed first) without the range allocator; it is not live any more (a second free
 * is refused, its pages are not pinned) and empty_cache gives it back. */
static void test_quick_lists(void)
{
    rec_device *r = rec_new(0);
    fl_policy *p = fragless_on(r, 0);
    uint64_t a, b, c, d;
    CHECK_OK(p->ops->alloc(p, 1000, 0, &a)); /* 1024 */
    CHECK_OK(p->ops->alloc(p, 1000, 0, &b));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK_STATUS(p->ops->free(p, b, 0, NULL), FL_ERR_NOT_FOUND);
    CHECK(strstr(fl_last_error(), "not a live block") != NULL);
    CHECK_EQ_U64(p->allocated, 0);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->alloc(p, 1024, 0, &c));
    CHECK_EQ_U64(c, b);
    CHECK_OK(p->ops->alloc(p, 2000, 0, &d)); /* 2048: another list */
    CHECK(d != a);
    CHECK_OK(p->ops->free(p, c, 0, NULL));
    CHECK_OK(p->ops->free(p, d, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_EQ_U64(r->inner->counters.in_use, 0);
    CHECK(p->ops->check(p) == 0);
    /* After the flush the range is whole again: a block the size of the old footprint
     * lands where the first block was. */
    CHECK_OK(p->ops->alloc(p, 3 * 1024, 0, &c));
    CHECK_EQ_U64(c, a);
    CHECK_OK(p->ops->free(p, c, 0, NULL));
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

/* set_limit (set_per_process_memory_fraction): lowering it gives cached pages above it
 * back at once and stops growth there; raising it lets the policy grow again. */
static void test_set_limit(void)
{
    rec_device *r = rec_new(0);
    fl_policy *p = fragless_on(r, 0);
    uint64_t a, b;
    CHECK_OK(p->ops->alloc(p, 40 * MiB, 0, &a));
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &b));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK(r->inner->counters.in_use >= 48 * MiB);
    p->dev->limit = 16 * MiB; /* what fl_set_limit does */
    CHECK_OK(p->ops->limit_changed(p));
    CHECK(r->inner->counters.in_use <= 16 * MiB);
    CHECK(p->ops->check(p) == 0);
    CHECK_STATUS(p->ops->alloc(p, 12 * MiB, 0, &a), FL_ERR_OOM);
    p->dev->limit = 0;
    CHECK_OK(p->ops->limit_changed(p));
    CHECK_OK(p->ops->alloc(p, 12 * MiB, 0, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    rec_destroy(&r->base);
}

int main(void)
{
    test_set_limit();
    test_quick_lists();
    test_steady_loop();
    test_page_accounting();
    test_no_stranded_memory();
    test_streams();
    test_limit_and_empty_cache();
    test_fault_injection();
    return fl_test_done("test_fragless");
}
