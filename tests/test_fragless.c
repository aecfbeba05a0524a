/* The fragless policy: page accounting, zero device calls in a steady loop, reclaim
 * under pressure (synchronize before unmap), per-stream heaps, limits, empty_cache and
 * consistency after a failed device call (the device layer's fault injector). */
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "policy/policy.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define PAGE (2 * MiB)

static fli_policy *fragless_on(fl_device *d, uint64_t limit)
{
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.limit = limit;
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    return p;
}

static uint64_t total_calls(const fl_device *d)
{
    fl_device_counters c = counters(d);
    return fl_device_total_calls(&c);
}

/* A training loop: the same sizes every step, freed in reverse. After the first step
 * every page the step needs is mapped, so no step after it calls the device. */
static void test_steady_loop(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 0);
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
            after_warmup = total_calls(d);
    }
    CHECK(after_warmup > 0);
    CHECK_EQ_U64(total_calls(d), after_warmup);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    /* Everything went back to the device at destroy. */
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* Pages are counted exactly: blocks that share pages pin only those pages. */
static void test_page_accounting(void)
{
    fl_device *d = fl_test_sim(2 * PAGE, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a[5];
    for (int i = 0; i < 4; i++)
        CHECK_OK(p->ops->alloc(p, MiB, 0, &a[i]));
    CHECK(in_use(d) <= 2 * PAGE);
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
    fl_device_destroy(d);
}

/* The product's promise: memory freed anywhere serves a request of any size, because
 * pages are remapped, never data moved. Fill the device with 2 MiB blocks, free every
 * other one, then ask for half the device in one block. */
enum { PAGES = 32 };

static fli_policy *half_freed(fl_device *d, uint64_t a[PAGES])
{
    fli_policy *p = fragless_on(d, 0);
    uint64_t big;
    for (int i = 0; i < PAGES; i++)
        CHECK_OK(p->ops->alloc(p, PAGE, 0, &a[i]));
    CHECK_STATUS(p->ops->alloc(p, 512, 0, &big), FL_ERR_OOM);
    for (int i = 0; i < PAGES; i += 2)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    return p;
}

/* The kind of the kth device call the request for half the device makes, read off the
 * fault injector: failing that call names it, and the calls before it are a clean run's
 * (the run is deterministic). FL_CALL_COUNT once the request makes fewer calls. */
static fl_call kth_call_of_big_request(uint64_t k)
{
    fl_device *d = fl_test_sim(PAGES * PAGE, 0);
    uint64_t a[PAGES], big;
    fli_policy *p = half_freed(d, a);
    uint64_t n = total_calls(d) + k;
    CHECK_OK(fl_device_set_fault(d, n, 0));
    fl_status s = p->ops->alloc(p, PAGES / 2 * PAGE, 0, &big);
    fl_call kind = FL_CALL_COUNT;
    for (int c = 0; c < FL_CALL_COUNT && s == FL_ERR_DEVICE; c++) {
        char want[96];
        snprintf(want, sizeof want, "sim %s: injected failure of device call %llu", fl_call_name((fl_call)c),
                 (unsigned long long)n);
        if (strstr(fl_last_error(), want))
            kind = (fl_call)c;
    }
    CHECK(kind != FL_CALL_COUNT || total_calls(d) < n); /* a failed call k is named */
    p->ops->destroy(p);
    fl_device_destroy(d);
    return kind;
}

static void test_no_stranded_memory(void)
{
    fl_device *d = fl_test_sim(PAGES * PAGE, 0);
    uint64_t a[PAGES], big;
    fli_policy *p = half_freed(d, a);
    uint64_t unmaps = calls(d, FL_CALL_UNMAP);
    CHECK_OK(p->ops->alloc(p, PAGES / 2 * PAGE, 0, &big));
    CHECK(p->ops->check(p) == 0);
    CHECK(in_use(d) <= PAGES * PAGE);
    CHECK(calls(d, FL_CALL_UNMAP) > unmaps); /* reclaim happened */
    CHECK_EQ_U64(p->retries, 1);
    /* The survivors were not touched: still live at the same addresses. */
    for (int i = 1; i < PAGES; i += 2)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    CHECK_OK(p->ops->free(p, big, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* The device was synchronized before the first unmap. */
    int synced = 0;
    fl_call kind = FL_CALL_COUNT;
    for (uint64_t k = 1; (kind = kth_call_of_big_request(k)) != FL_CALL_COUNT && kind != FL_CALL_UNMAP; k++)
        synced |= kind == FL_CALL_SYNC;
    CHECK(kind == FL_CALL_UNMAP);
    CHECK(synced);
}

/* A block freed on one stream is not given to another before a synchronization: each
 * stream has its own heap; physical pages move between them only through reclaim. */
static void test_streams(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a, b, c;
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 2, &b));
    CHECK(b != a);
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &c));
    CHECK_EQ_U64(c, a); /* the same stream reuses its block at once */
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* The stream lookup's cache (the small and the large heap used last): stream 0 first,
 * before any heap exists (the cache's empty heap must not pass for stream 0's); then
 * six streams' heaps, so the heap array moves twice under the cache; frees of blocks
 * in heaps the cache does not name (the general search), of addresses no block starts
 * at, and the quick lists' reuse after the cache changed heaps. */
static void test_heap_cache(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 0);
    enum { STREAMS = 6 };
    uint64_t small[STREAMS], large[STREAMS], req = 0;
    for (uint64_t s = 0; s < STREAMS; s++) {
        CHECK_OK(p->ops->alloc(p, 1000 + s, s, &small[s]));
        CHECK_OK(p->ops->alloc(p, 8 * MiB + s, s, &large[s]));
        CHECK(small[s] != 0 && large[s] != 0 && small[s] != large[s]);
        CHECK(p->ops->check(p) == 0);
    }
    for (uint64_t s = 1; s < STREAMS; s++)
        CHECK(small[s] != small[s - 1] && large[s] != large[s - 1]);
    /* Not starts of blocks, or in no heap: not live, and nothing changes. */
    CHECK_STATUS(p->ops->free(p, small[0] + 512, 0, &req), FL_ERR_NOT_FOUND);
    CHECK_STATUS(p->ops->free(p, large[2] + PAGE, 0, &req), FL_ERR_NOT_FOUND);
    CHECK_STATUS(p->ops->free(p, 0x10, 0, &req), FL_ERR_NOT_FOUND);
    /* Inside stream 0's large heap but past the pages its tables cover (256 to start):
     * not looked up in its index. */
    CHECK_STATUS(p->ops->free(p, large[0] + 600 * MiB, 0, &req), FL_ERR_NOT_FOUND);
    CHECK(p->ops->check(p) == 0);
    /* Oldest first: the cache names the last stream's heaps. */
    for (uint64_t s = 0; s < STREAMS; s++) {
        CHECK_OK(p->ops->free(p, small[s], 0, &req));
        CHECK_EQ_U64(req, 1000 + s);
        CHECK_OK(p->ops->free(p, large[s], 0, &req));
        CHECK_EQ_U64(req, 8 * MiB + s);
        CHECK(p->ops->check(p) == 0);
    }
    CHECK_STATUS(p->ops->free(p, small[3], 0, &req), FL_ERR_NOT_FOUND); /* a double free */
    /* Back to stream 1: its small block of that size from its quick list. */
    uint64_t again;
    CHECK_OK(p->ops->alloc(p, 1001, 1, &again));
    CHECK_EQ_U64(again, small[1]);
    CHECK_OK(p->ops->free(p, again, 1001, &req));
    CHECK(p->ops->check(p) == 0);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* limit: the policy never holds more than it, whatever the device has. */
static void test_limit_and_empty_cache(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 16 * MiB);
    uint64_t a, b;
    CHECK_OK(p->ops->alloc(p, 10 * MiB, 0, &a));
    CHECK_STATUS(p->ops->alloc(p, 8 * MiB, 0, &b), FL_ERR_OOM);
    CHECK(counters(d).peak_in_use <= 16 * MiB);
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK(in_use(d) > 0); /* cached, not returned */
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->alloc(p, 16 * MiB, 0, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Fail every device call in turn during a workload that needs reclaim: each failure
 * surfaces as an error of that call, the self-check holds, and the workload can go on
 * once the device works again. */
static void test_fault_injection(void)
{
    for (uint64_t n = 1;; n++) {
        fl_device *d = fl_test_sim(12 * PAGE, 0);
        fli_policy *p = fragless_on(d, 0);
        uint64_t base = total_calls(d);
        CHECK_OK(fl_device_set_fault(d, base + n, 0));
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
                    fprintf(stderr, "failing call %llu: %s\n", (unsigned long long)n, fl_last_error());
                    CHECK(!"self-check after an injected failure");
                }
            }
            for (int i = 0; i < 8; i++)
                if (a[i])
                    CHECK_OK(p->ops->free(p, a[i], 0, NULL));
        }
        CHECK(failed <= 1);
        uint64_t made = total_calls(d) - base;
        /* With the device healthy again (a plan not fired yet is dropped: the last n
         * lies past the workload), everything works. */
        CHECK_OK(fl_device_set_fault(d, 0, 0));
        uint64_t x;
        CHECK_OK(p->ops->alloc(p, 5 * PAGE, 0, &x));
        CHECK_OK(p->ops->free(p, x, 0, NULL));
        CHECK(p->ops->check(p) == 0);
        p->ops->destroy(p);
        CHECK_EQ_U64(in_use(d), 0);
        fl_device_destroy(d);
        if (n > made)
            break;
    }
}

/* A page whose set_access failed stays mapped and cached, marked to get access before
 * it is used (a GPU would fault on it). The next block on it must set access again even
 * though no page under it is unmapped (regression: only unmapped pages triggered it). */
static void test_access_after_failed_set_access(void)
{
    uint64_t n;
    for (n = 1; n < 16; n++) {
        fl_device *d = fl_test_sim(12 * PAGE, 0);
        fli_policy *p = fragless_on(d, 0);
        uint64_t a;
        CHECK_OK(fl_device_set_fault(d, total_calls(d) + n, 0));
        fl_status s = p->ops->alloc(p, MiB, 0, &a);
        int hit = s == FL_ERR_DEVICE && strstr(fl_last_error(), "set_access") != NULL;
        if (hit) {
            CHECK(in_use(d) > 0); /* the page stays mapped: cached */
            CHECK(p->ops->check(p) == 0);
            uint64_t before = calls(d, FL_CALL_SET_ACCESS);
            CHECK_OK(p->ops->alloc(p, MiB, 0, &a)); /* on the cached page */
            CHECK(calls(d, FL_CALL_SET_ACCESS) > before); /* access set again */
            CHECK_OK(p->ops->free(p, a, 0, NULL));
        } else if (s == FL_OK) {
            CHECK_OK(p->ops->free(p, a, 0, NULL));
        }
        p->ops->destroy(p);
        fl_device_destroy(d);
        if (hit)
            break;
    }
    CHECK(n < 16); /* the first allocation sets access at some call */
}

/* Quick lists: a freed block of at most 4 KiB is handed to the next request of its size
 * (last freed first) without the range allocator; it is not live any more (a second free
 * is refused, its pages are not pinned) and empty_cache gives it back. */
static void test_quick_lists(void)
{
    fl_device *dev = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(dev, 0);
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
    CHECK_EQ_U64(in_use(dev), 0);
    CHECK(p->ops->check(p) == 0);
    /* After the flush the range is whole again: a block the size of the old footprint
     * lands where the first block was. */
    CHECK_OK(p->ops->alloc(p, 3 * 1024, 0, &c));
    CHECK_EQ_U64(c, a);
    CHECK_OK(p->ops->free(p, c, 0, NULL));
    p->ops->destroy(p);
    fl_device_destroy(dev);
}

/* set_limit (set_per_process_memory_fraction): lowering it gives cached pages above it
 * back at once and stops growth there; raising it lets the policy grow again. A chunk
 * (16 pages, one handle) that a live block touches stays whole until that block goes. */
static void test_set_limit(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a, b, c;
    CHECK_OK(p->ops->alloc(p, 40 * MiB, 0, &a));
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &b));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK(in_use(d) >= 48 * MiB);
    p->dev->limit = 16 * MiB; /* what fl_set_limit does */
    CHECK_OK(p->ops->limit_changed(p));
    /* b (pages 20-23) keeps its chunk (pages 16-31); the chunk of a's first pages went. */
    CHECK_EQ_U64(in_use(d), 16 * PAGE);
    CHECK(p->ops->check(p) == 0);
    CHECK_STATUS(p->ops->alloc(p, 40 * MiB, 0, &c), FL_ERR_OOM); /* needs pages: none */
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK_OK(p->ops->limit_changed(p)); /* the chunk is idle now: it goes */
    CHECK_EQ_U64(in_use(d), 0);
    uint64_t creates = calls(d, FL_CALL_CREATE);
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &b)); /* near the limit: pages of their own */
    CHECK(in_use(d) <= 16 * MiB);
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE) - creates, in_use(d) / PAGE);
    CHECK(p->ops->check(p) == 0);
    CHECK_STATUS(p->ops->alloc(p, 12 * MiB, 0, &a), FL_ERR_OOM);
    p->dev->limit = 0;
    CHECK_OK(p->ops->limit_changed(p));
    CHECK_OK(p->ops->alloc(p, 12 * MiB, 0, &a));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Chunks: while the policy holds at most 1/8 of its limit, a large heap maps aligned
 * chunks of 16 pages with one handle each (one create, one map, one set_access for
 * 32 MiB); past that, pages of their own. A chunk no live block touches is reused in
 * place with no call, and under pressure it is unmapped whole (after a synchronize) and
 * its memory serves pages elsewhere. */
static void test_chunks(void)
{
    const uint64_t cap = 256 * PAGE; /* 512 MiB: chunks while at most 32 pages are held */
    fl_device *d = fl_test_sim(cap, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a, b, c, x;
    CHECK_OK(p->ops->alloc(p, 64 * MiB, 0, &a)); /* pages 0-31: two chunks */
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 2);
    CHECK_EQ_U64(calls(d, FL_CALL_MAP), 2);
    CHECK_EQ_U64(in_use(d), 32 * PAGE);
    CHECK(p->ops->check(p) == 0);
    /* The rest: past 1/8 of the limit, one handle a page (and no more than fits). */
    CHECK_OK(p->ops->alloc(p, cap - 64 * MiB, 0, &b));
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 2 + 224);
    CHECK_EQ_U64(in_use(d), cap);
    CHECK(p->ops->check(p) == 0);
    /* a freed and asked for again on its stream: its chunks, in place, no call. */
    uint64_t before = total_calls(d);
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK_OK(p->ops->alloc(p, 64 * MiB, 0, &a));
    CHECK_EQ_U64(total_calls(d), before);
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    /* Another stream needs pages: the idle chunks are unmapped whole after one
     * synchronize, and their memory becomes its pages. */
    uint64_t unmaps = calls(d, FL_CALL_UNMAP), syncs = calls(d, FL_CALL_SYNC);
    CHECK_OK(p->ops->alloc(p, 48 * MiB, 1, &c));
    CHECK_EQ_U64(p->retries, 1);
    CHECK_EQ_U64(calls(d, FL_CALL_SYNC) - syncs, 1);
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP) - unmaps, 2);
    CHECK(calls(d, FL_CALL_RELEASE) >= 1);
    CHECK(in_use(d) <= cap);
    CHECK(p->ops->check(p) == 0);
    /* Nothing is left to take: stream 0 cannot have a again. */
    CHECK_STATUS(p->ops->alloc(p, 64 * MiB, 0, &x), FL_ERR_OOM);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK_OK(p->ops->free(p, c, 0, NULL));
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Reclaim takes the cached pages that lie in a row with one unmap (the driver unmaps a
 * range of whole mappings in one call): the same pages, in the same order, as one unmap
 * each. Stream 0 leaves pages 0-7 cached (a freed 16 MiB block) and page 9 (mapped
 * ahead) around a live 1 MiB block on page 8; stream 1 then needs 9 pages on a 12-page
 * device: 2 are created, 7 reclaimed after one synchronize. The clock spares the pages
 * freed last once (page 9, mapped ahead, is not among them), so it takes page 9, then
 * pages 0-5 in a row: two unmaps, where a page at a time made seven. */
static void test_reclaim_runs(void)
{
    const uint64_t cap = 12 * PAGE;
    fl_device *d = fl_test_sim(cap, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a, z, b;
    CHECK_OK(p->ops->alloc(p, 16 * MiB, 0, &a));
    CHECK_OK(p->ops->alloc(p, 1 * MiB, 0, &z));
    CHECK_EQ_U64(z, a + 16 * MiB); /* on page 8 */
    CHECK_EQ_U64(in_use(d), 10 * PAGE); /* mapped ahead to 10 pages */
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    uint64_t unmaps = calls(d, FL_CALL_UNMAP), syncs = calls(d, FL_CALL_SYNC), creates = calls(d, FL_CALL_CREATE);
    double t0 = counters(d).time_us;
    CHECK_OK(p->ops->alloc(p, 18 * MiB, 1, &b));
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE) - creates, 2);
    CHECK_EQ_U64(calls(d, FL_CALL_SYNC) - syncs, 1);
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP) - unmaps, 2);
    CHECK_EQ_U64(in_use(d), cap);
    /* The simulated time charges every mapping unmapped, as one call each would. */
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 2); /* stream 1's heap: charged in the time below */
    double unmap_us = counters(d).time_us - t0 - sp.cost_us[FL_CALL_RESERVE] - 2 * sp.cost_us[FL_CALL_CREATE] - sp.cost_us[FL_CALL_SYNC] -
                      9 * sp.cost_us[FL_CALL_MAP] - sp.cost_us[FL_CALL_SET_ACCESS] - 8 * sp.cost_us_more[FL_CALL_SET_ACCESS];
    CHECK(unmap_us > 7 * sp.cost_us[FL_CALL_UNMAP] - 0.01 && unmap_us < 7 * sp.cost_us[FL_CALL_UNMAP] + 0.01);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK_OK(p->ops->free(p, z, 0, NULL));
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Lending: under a limit, a stream whose heap has no mapped pages left gets another
 * stream's mapped, free pages where they lie, with no unmap or map (one synchronize at
 * most, for the other stream's work); the block is its stream's (block_stream); freed,
 * its range is not handed to the lender's stream before the next synchronize (that
 * stream would not wait for the borrower's work); after one it is. A single-stream job
 * never lends. */
static void test_lending(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 64 * MiB);
    uint64_t a[6], b, s;
    for (int i = 0; i < 6; i++) /* stream 1: 48 MiB of 8 MiB blocks, all mapped */
        CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &a[i]));
    for (int i = 0; i < 6; i++)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    CHECK(p->ops->check(p) == 0);
    /* Stream 2 under pressure: 40 MiB, whose own heap has nothing mapped. */
    CHECK_OK(p->ops->alloc(p, 4 * MiB, 2, &s)); /* its large heap exists */
    CHECK_OK(p->ops->free(p, s, 0, NULL));
    fl_device_counters c0 = counters(d);
    CHECK_OK(p->ops->alloc(p, 40 * MiB, 2, &b));
    fl_device_counters c1 = counters(d);
    CHECK_EQ_U64(c1.calls[FL_CALL_UNMAP], c0.calls[FL_CALL_UNMAP]); /* no reclaim: lent */
    CHECK_EQ_U64(c1.calls[FL_CALL_MAP], c0.calls[FL_CALL_MAP]);
    CHECK(c1.calls[FL_CALL_SYNC] <= c0.calls[FL_CALL_SYNC] + 1);
    CHECK(b >= a[0] && b < a[0] + 64 * MiB); /* in stream 1's heap */
    uint64_t st = 0;
    CHECK_EQ_U64(p->ops->block_stream(p, b, &st), 1);
    CHECK_EQ_U64(st, 2);
    CHECK_EQ_U64(p->ops->block_size(p, b), 40 * MiB);
    CHECK(p->ops->check(p) == 0);
    /* Freed: stream 1 does not get that range before a synchronize. */
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    uint64_t syncs = counters(d).calls[FL_CALL_SYNC], x;
    CHECK_OK(p->ops->alloc(p, 40 * MiB, 1, &x));
    CHECK(x != b || counters(d).calls[FL_CALL_SYNC] > syncs);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    /* After a synchronize (empty_cache makes one) the range is stream 1's again. */
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(p->ops->check(p) == 0);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* One stream never lends: the same pressure reclaims (unmap, map). */
    d = fl_test_sim(0, 0);
    p = fragless_on(d, 64 * MiB);
    for (int i = 0; i < 6; i++)
        CHECK_OK(p->ops->alloc(p, 8 * MiB, 1, &a[i]));
    for (int i = 0; i < 6; i++)
        CHECK_OK(p->ops->free(p, a[i], 0, NULL));
    CHECK_OK(p->ops->alloc(p, 40 * MiB, 1, &b));
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* One stream under pressure: a small request whose small heap would need a page goes
 * into the large heap's mapped free pages instead of taking a page by reclaim (a
 * synchronize, an unmap, a map, an access call), while the limit leaves room above the
 * most pages pinned so far (small_into_large). */
static void test_small_into_large(void)
{
    enum { LIMIT_PAGES = 40, BIG = 8, SMALL = 96 };
    fl_device *d = fl_test_sim(LIMIT_PAGES * PAGE, 0);
    fli_policy *p = fragless_on(d, 0);
    uint64_t small[SMALL], big[BIG], x;
    /* 128 KiB blocks, 16 a page: they fill the small heap's first step (6 pages) exactly. */
    for (int i = 0; i < SMALL; i++)
        CHECK_OK(p->ops->alloc(p, 128 << 10, 0, &small[i]));
    CHECK_EQ_U64(in_use(d), 6 * PAGE);
    /* Large blocks: 38 of the 40 pages pinned, every page created. */
    for (int i = 0; i < BIG; i++)
        CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &big[i]));
    CHECK_EQ_U64(in_use(d), LIMIT_PAGES * PAGE);
    for (int i = 0; i < BIG; i += 2)
        CHECK_OK(p->ops->free(p, big[i], 0, NULL));
    /* The small heap is full: the next small block goes where the large heap's pages are
     * mapped and free, with no device call, and is freed as any block is. */
    uint64_t calls = total_calls(d);
    CHECK_OK(p->ops->alloc(p, 128 << 10, 0, &x));
    CHECK_EQ_U64(total_calls(d), calls);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    /* A block small enough for the quick lists too: freed, it goes back to the range
     * allocator, never onto the large heap's quick lists, which no request there takes
     * from (the check says so). */
    for (int i = 0; i < 3; i++) {
        CHECK_OK(p->ops->alloc(p, 1000, 0, &x));
        CHECK_EQ_U64(total_calls(d), calls);
        CHECK_OK(p->ops->free(p, x, 0, NULL));
        CHECK(p->ops->check(p) == 0);
    }
    /* Once every page was pinned (seen by a placement under pressure: here a request that
     * finds none), the limit leaves no room above that: a small block takes its page by
     * reclaim again, which costs no page where the job has none to spare. */
    uint64_t y;
    for (int i = 0; i < BIG; i += 2)
        CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &big[i]));
    CHECK_OK(p->ops->alloc(p, 4 * MiB, 0, &y));
    CHECK(p->ops->alloc(p, 128 << 10, 0, &x) == FL_ERR_OOM);
    CHECK_OK(p->ops->free(p, big[0], 0, NULL));
    calls = total_calls(d);
    CHECK_OK(p->ops->alloc(p, 128 << 10, 0, &x));
    CHECK(total_calls(d) > calls);
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* Near the limit (the most pages pinned so far within 1/32 of it), a stream's block goes
 * into another stream's free range where it pins fewer new pages than in its own heap:
 * here a 4 MiB hole of stream 1 whose end pages stream 1's neighbours pin, so the block
 * pins one new page there against two in stream 2's heap, where only one is left. The
 * usual lending rules hold (a synchronize for stream 1's work, the block is stream 2's,
 * its range waits for the next synchronize). Far from the limit the block stays in its
 * own heap. */
static uint64_t tight_setup(fli_policy *p, uint64_t *y)
{
    uint64_t big, x, z;
    CHECK_OK(p->ops->alloc(p, 113 * MiB, 1, &big)); /* pages 0-56, the last half used */
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 1, &x));     /* [113, 115) MiB */
    CHECK_OK(p->ops->alloc(p, 4 * MiB, 1, y));      /* [115, 119) */
    CHECK_OK(p->ops->alloc(p, 9 * MiB, 1, &z));     /* [119, 128): every page pinned */
    CHECK_EQ_U64(*y, x + 2 * MiB);
    CHECK_EQ_U64(z, *y + 4 * MiB);
    CHECK_EQ_U64(z + 9 * MiB, big + 128 * MiB);
    CHECK_OK(p->ops->free(p, *y, 0, NULL)); /* its middle page is cached, its ends pinned */
    return big;
}

static void test_lending_near_limit(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fli_policy *p = fragless_on(d, 128 * MiB);
    uint64_t y, b, st = 0;
    tight_setup(p, &y);
    CHECK(p->ops->check(p) == 0);
    fl_device_counters c0 = counters(d);
    CHECK_OK(p->ops->alloc(p, 4 * MiB, 2, &b)); /* its own heap: 2 new pages, 1 obtainable */
    fl_device_counters c1 = counters(d);
    CHECK_EQ_U64(b, y);
    CHECK_EQ_U64(c1.calls[FL_CALL_MAP], c0.calls[FL_CALL_MAP]);
    CHECK_EQ_U64(c1.calls[FL_CALL_UNMAP], c0.calls[FL_CALL_UNMAP]);
    CHECK_EQ_U64(c1.calls[FL_CALL_SYNC], c0.calls[FL_CALL_SYNC] + 1); /* stream 1 freed y */
    CHECK_EQ_U64(p->ops->block_stream(p, b, &st), 1);
    CHECK_EQ_U64(st, 2);
    CHECK(p->ops->check(p) == 0);
    /* Freed, the range waits for a synchronize: stream 1 does not get it at once. */
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    uint64_t syncs = counters(d).calls[FL_CALL_SYNC], again;
    int s = p->ops->alloc(p, 4 * MiB, 1, &again);
    CHECK(s != FL_OK || again != y || counters(d).calls[FL_CALL_SYNC] > syncs);
    if (s == FL_OK)
        CHECK_OK(p->ops->free(p, again, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* Far from the limit: its own heap. */
    d = fl_test_sim(0, 0);
    p = fragless_on(d, 256 * MiB);
    tight_setup(p, &y);
    CHECK_OK(p->ops->alloc(p, 4 * MiB, 2, &b));
    CHECK(b != y);
    CHECK_EQ_U64(p->ops->block_stream(p, b, &st), 1);
    CHECK_EQ_U64(st, 2);
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Small blocks (64 KiB up to the small-request limit) of a stream whose small heap would
 * pin a new page for them under pressure go into another stream's small heap where a page
 * it pins has room, by the lending rules; smaller ones, and any without pressure, stay. */
static void test_lending_small(void)
{
    for (int pressure = 0; pressure < 2; pressure++) {
        for (int size_kib = 32; size_kib <= 128; size_kib *= 4) {
            fl_device *d = fl_test_sim(0, 0);
            fli_policy *p = fragless_on(d, pressure ? 16 * MiB : 64 * MiB);
            uint64_t s1, l1, b, st = 0;
            CHECK_OK(p->ops->alloc(p, 128 * 1024, 1, &s1)); /* stream 1's small heap: a page pinned */
            CHECK_OK(p->ops->alloc(p, 4 * MiB, 1, &l1));    /* with 16 MiB, every page is held now */
            CHECK_EQ_U64(counters(d).in_use, pressure ? 16 * MiB : counters(d).in_use);
            fl_device_counters c0 = counters(d);
            CHECK_OK(p->ops->alloc(p, (uint64_t)size_kib * 1024, 2, &b));
            fl_device_counters c1 = counters(d);
            int lent = b - (s1 & ~(PAGE - 1)) < PAGE;
            CHECK_EQ_U64(lent, pressure && size_kib >= 64);
            if (lent) { /* no map, no synchronize: stream 1 gave no range back */
                CHECK_EQ_U64(c1.calls[FL_CALL_MAP], c0.calls[FL_CALL_MAP]);
                CHECK_EQ_U64(c1.calls[FL_CALL_SYNC], c0.calls[FL_CALL_SYNC]);
            }
            CHECK_EQ_U64(p->ops->block_stream(p, b, &st), 1);
            CHECK_EQ_U64(st, 2);
            CHECK(p->ops->check(p) == 0);
            CHECK_OK(p->ops->free(p, b, 0, NULL));
            CHECK(p->ops->check(p) == 0);
            CHECK_OK(p->ops->empty_cache(p));
            CHECK(p->ops->check(p) == 0);
            CHECK_EQ_U64(p->allocated, 128 * 1024 + 4 * MiB);
            p->ops->destroy(p);
            fl_device_destroy(d);
        }
    }
}

/* A lent block freed the way fl_free frees (a requested size to give back: fx_free's
 * short path) waits for a synchronize like one freed any other way, even when it is
 * small enough for a quick list: on pages of 64 KiB a lent small block can be 2 KiB
 * (1/32 page) where the quick lists take up to 4 KiB. On it went onto the lender
 * stream's quick list, for that stream's next request of its size, with no synchronize
 * for the borrower's work (found by fuzz_ops on 64 KiB pages; the input is
 * tests/fuzz/crashes/ops/fragless_lent_block_quick_list.bin). */
static void test_lent_block_short_free(void)
{
    fl_device *d = fl_test_sim(64 * MiB, 64 * 1024);
    fli_policy *p = fragless_on(d, 0);
    uint64_t a0, a1, b, c, x, st = 0, req = 0;
    CHECK_OK(p->ops->alloc(p, 629, 0, &a0));      /* stream 0's small heap: a page pinned */
    CHECK_OK(p->ops->alloc(p, 30 * MiB, 0, &a1)); /* and a large block: past the limit below */
    p->dev->limit = 2 * MiB; /* what fl_set_limit does */
    CHECK_OK(p->ops->limit_changed(p));
    CHECK_OK(p->ops->alloc(p, 3692, 1, &b));      /* stream 1, no page to spare: lent */
    CHECK_EQ_U64(p->ops->block_stream(p, b, &st), 1);
    CHECK_EQ_U64(st, 1);
    CHECK(b - a0 < 64 * 1024); /* on stream 0's page */
    CHECK_OK(p->ops->alloc(p, 1, 0, &c)); /* stream 0's heaps are the ones at hand now */
    CHECK(p->ops->check(p) == 0);
    uint64_t syncs = counters(d).calls[FL_CALL_SYNC];
    CHECK_OK(p->ops->free(p, b, 0, &req));
    CHECK_EQ_U64(req, 3692);
    CHECK(p->ops->check(p) == 0);
    /* Stream 0 does not get the range before a synchronize. */
    CHECK_OK(p->ops->alloc(p, 3692, 0, &x));
    CHECK(x != b || counters(d).calls[FL_CALL_SYNC] > syncs);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, x, 0, &req));
    CHECK_OK(p->ops->free(p, c, 0, &req));
    CHECK_OK(p->ops->free(p, a1, 0, &req));
    CHECK_OK(p->ops->free(p, a0, 0, &req));
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(p->ops->check(p) == 0);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* The index of starts grows with the heap's pages, in host memory; when growing it fails
 * (out of host memory), the placement is undone before the block was indexed: the undo
 * once read the index at the block's window, past the tables' end (a crash, or a write
 * into whatever lay there; in a heap's first block, whose index did not exist yet, a null
 * pointer). Here the host has too little address space for the index a 64 GiB block
 * needs (small_size 512 B: windows of 4 KiB, 16 MiB of index per 16 GiB), in a child
 * process (RLIMIT_AS), for the first block of stream 1: the request fails, nothing else
 * changes, and smaller requests still run. */
static void grow_failure_child(void)
{
    fl_device *d = fl_test_sim(UINT64_C(1) << 40, 0);
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.small_size = 512;
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    uint64_t a, b;
    CHECK_OK(p->ops->alloc(p, 8 * MiB, 0, &a));
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_AS, &rl) == 0);
    FILE *st = fopen("/proc/self/statm", "r");
    unsigned long vm_pages = 0;
    CHECK(st && fscanf(st, "%lu", &vm_pages) == 1);
    if (st)
        fclose(st);
    struct rlimit tight = rl;
    tight.rlim_cur = (rlim_t)vm_pages * (rlim_t)sysconf(_SC_PAGESIZE) + 32 * MiB;
    CHECK(setrlimit(RLIMIT_AS, &tight) == 0);
    uint64_t allocated = p->allocated, in_use = counters(d).in_use;
    fl_status s = p->ops->alloc(p, UINT64_C(64) << 30, 1, &b); /* stream 1: its heap's first block */
    CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
    CHECK(s == FL_ERR_NOMEM || s == FL_ERR_OOM);
    CHECK_EQ_U64(p->allocated, allocated);
    CHECK_EQ_U64(counters(d).in_use, in_use);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->alloc(p, 16 * MiB, 1, &b));
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, b, 0, NULL));
    CHECK_OK(p->ops->free(p, a, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_index_grow_failure(void)
{
    if (FL_TEST_UNDER_ASAN) {
        printf("test_fragless: the index's growth failure is not run under ASan (no RLIMIT_AS there)\n");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        grow_failure_child();
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The stack position: in a one-stream job a large block goes right above the large block
 * placed last, while that one lives, when the free range there leaves less than a page
 * over and the block pins at most one new page more there. Here the range allocator's fit
 * is an exact 4 MiB hole further down ([4, 8) MiB), the range above the newest block
 * ([14, 19) MiB) is 5 MiB, and both pin two new pages: the block goes above the newest,
 * so a step's blocks lie in a row. With two streams the rule is off (it cost the
 * multi-stream examples late calls) and the fit stands. */
static void test_stack_position(void)
{
    for (int streams = 1; streams <= 2; streams++) {
        fl_device *d = fl_test_sim(0, 0);
        fli_policy *p = fragless_on(d, 0);
        uint64_t a, h, b, t, f, g, x, other;
        if (streams == 2)
            CHECK_OK(p->ops->alloc(p, 4 * MiB, 1, &other));
        CHECK_OK(p->ops->alloc(p, 4 * MiB, 0, &a)); /* [0, 4) MiB of stream 0's large heap */
        CHECK_OK(p->ops->alloc(p, 4 * MiB, 0, &h)); /* [4, 8): the exact hole */
        CHECK_OK(p->ops->alloc(p, 4 * MiB, 0, &b)); /* [8, 12) */
        CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &t)); /* [12, 14) */
        CHECK_OK(p->ops->alloc(p, 5 * MiB, 0, &f)); /* [14, 19): the range above the newest */
        CHECK_OK(p->ops->alloc(p, 1 * MiB, 0, &g)); /* [19, 20): f's hole is not the topmost */
        CHECK_EQ_U64(h - a, 4 * MiB);
        CHECK_EQ_U64(t - a, 12 * MiB);
        CHECK_EQ_U64(g - a, 19 * MiB);
        CHECK_OK(p->ops->free(p, h, 0, NULL));
        /* t again, now the newest block: into its own 2 MiB hole. */
        CHECK_OK(p->ops->free(p, t, 0, NULL));
        CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &t));
        CHECK_EQ_U64(t - a, 12 * MiB);
        CHECK_OK(p->ops->free(p, f, 0, NULL));
        CHECK_OK(p->ops->alloc(p, 4 * MiB, 0, &x));
        uint64_t want = streams == 1 ? 14 * MiB : 4 * MiB; /* above t, or the exact hole */
        CHECK_EQ_U64(x - a, want);
        CHECK(p->ops->check(p) == 0);
        p->ops->destroy(p);
        CHECK_EQ_U64(in_use(d), 0);
        fl_device_destroy(d);
    }
}

/* Small blocks onto pinned pages (approaching_limit): in a job of several streams whose
 * most pages pinned so far come within 1/16 of the limit before any placement has run
 * under pressure, a small request that would pin a new page of its small heap goes into
 * its stream's large heap, at a free range's end on a page live blocks pin already. Here
 * stream 0's small heap has 48 KiB left on its page, and its large heap a 1 MiB hole on a
 * page its neighbour pins: the 200 KiB block goes there, with no new page. Far from the
 * limit, and in a job of one stream, it goes to the small heap's next page. */
static void test_small_onto_pinned(void)
{
    for (int k = 0; k < 3; k++) {
        int streams = k == 2 ? 1 : 2, near = k == 0;
        fl_device *d = fl_test_sim(0, 0);
        fli_policy *p = fragless_on(d, (near ? 256 : 512) * 2 * MiB);
        uint64_t other, s[10], a, b, c, x, st = 9;
        if (streams == 2)
            CHECK_OK(p->ops->alloc(p, 64 << 10, 1, &other)); /* stream 1: a page of its small heap */
        for (int i = 0; i < 10; i++) /* 2000 KiB of stream 0's small heap's first page */
            CHECK_OK(p->ops->alloc(p, 200 << 10, 0, &s[i]));
        CHECK_OK(p->ops->alloc(p, 3 * MiB, 0, &a));   /* [0, 3) MiB of the large heap */
        CHECK_OK(p->ops->alloc(p, 1 * MiB, 0, &b));   /* [3, 4) */
        CHECK_OK(p->ops->alloc(p, 476 * MiB, 0, &c)); /* [4, 480): 240 pages pinned there */
        CHECK_EQ_U64(b, a + 3 * MiB);
        CHECK_EQ_U64(c, a + 4 * MiB);
        CHECK_EQ_U64(s[9], s[0] + 9 * (200 << 10));
        /* 252 of the 256 pages held: no placement ran under pressure. */
        CHECK(in_use(d) < 256 * 2 * MiB);
        CHECK_OK(p->ops->free(p, b, 0, NULL)); /* its page stays pinned by a */
        uint64_t calls = total_calls(d);
        CHECK_OK(p->ops->alloc(p, 200 << 10, 0, &x));
        CHECK_EQ_U64(x == b, near);
        if (near) /* on a page pinned and mapped already */
            CHECK_EQ_U64(total_calls(d), calls);
        else
            CHECK_EQ_U64(x, s[0] + 10 * (200 << 10)); /* the small heap's next page */
        CHECK_EQ_U64(p->ops->block_stream(p, x, &st), 1);
        CHECK_EQ_U64(st, 0);
        CHECK(p->ops->check(p) == 0);
        CHECK_OK(p->ops->free(p, x, 0, NULL));
        CHECK(p->ops->check(p) == 0);
        /* Its range went back to the large heap: the hole takes a 1 MiB block again. */
        CHECK_OK(p->ops->alloc(p, 1 * MiB, 0, &b));
        CHECK_EQ_U64(b, a + 3 * MiB);
        CHECK(p->ops->check(p) == 0);
        p->ops->destroy(p);
        CHECK_EQ_U64(in_use(d), 0);
        fl_device_destroy(d);
    }
}

int main(void)
{
    test_lending_near_limit();
    test_lending_small();
    test_lent_block_short_free();
    test_index_grow_failure();
    test_set_limit();
    test_chunks();
    test_reclaim_runs();
    test_lending();
    test_small_into_large();
    test_quick_lists();
    test_steady_loop();
    test_page_accounting();
    test_no_stranded_memory();
    test_streams();
    test_heap_cache();
    test_limit_and_empty_cache();
    test_fault_injection();
    test_access_after_failed_set_access();
    test_stack_position();
    test_small_onto_pinned();
    return fl_test_done("test_fragless");
}
