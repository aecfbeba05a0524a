/* Many threads on one allocator: four allocate and free their own blocks on their own
 * streams while a fifth reads statistics and runs the self-check. Nothing may be lost,
 * overlap or break, for every policy. Also FRAGLESS_CONF from the environment. Then the
 * thread caches (src/allocator/tcache.h): the same figures as without them, reuse on the
 * block's own stream only, record_stream, out-of-memory retry, a thread's end and an
 * allocator destroyed before its threads end. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "allocator/allocator.h"
#include "test_support.h"

enum { THREADS = 4, OPS = 20000, LIVE = 64 };

typedef struct worker {
    fl_allocator *a;
    uint64_t seed, stream;
    uint64_t allocs, frees, failures;
    uint64_t addr[LIVE], size[LIVE];
} worker;

static atomic_int done;
static int observed_errors; /* written by the observer thread only, read after join */

static void *work(void *arg)
{
    worker *w = arg;
    fl_rng rng = {w->seed};
    for (int i = 0; i < OPS; i++) {
        int k = (int)fl_rng_below(&rng, LIVE);
        if (w->addr[k]) {
            if (fl_free(w->a, w->addr[k]) != FL_OK)
                w->failures++;
            w->addr[k] = 0;
            w->frees++;
        } else {
            uint64_t size = 1 + fl_rng_below(&rng, fl_rng_below(&rng, 8) ? 64 << 10 : 24 << 20);
            if (fl_alloc(w->a, size, w->stream, &w->addr[k]) == FL_OK) {
                w->size[k] = size;
                w->allocs++;
            } else {
                w->addr[k] = 0;
            }
        }
    }
    return NULL;
}

static void *observe(void *arg)
{
    fl_allocator *a = arg;
    uint64_t rounds = 0;
    while (!atomic_load(&done)) {
        fl_stats st;
        fl_get_stats(a, &st);
        if (st.allocated_bytes.current > st.reserved_bytes.current && st.reserved_bytes.current) { /* never torn */
            fprintf(stderr, "torn statistics: allocated %llu > reserved %llu\n",
                    (unsigned long long)st.allocated_bytes.current, (unsigned long long)st.reserved_bytes.current);
            observed_errors++;
        }
        if (++rounds % 64 == 0) {
            if (fl_allocator_check(a)) {
                fprintf(stderr, "self-check failed under load: %s\n", fl_last_error());
                observed_errors++;
            }
            /* The check holds the lock for long (cca-expandable walks every segment) and
             * fli_lock is not fair: without a pause here a worker napping in the lock's
             * back-off found it taken again each time it woke, and the test ran for ever
             * on a loaded machine. */
            nanosleep(&(struct timespec){0, 200000}, NULL);
        }
    }
    return NULL;
}

/* caches: turned on from the start (else they turn on when the threads meet). */
static void run(const char *policy, int caches)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = UINT64_C(2) << 30;
    fl_device *d;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    fl_allocator *a;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    if (caches)
        CHECK_OK(fli_allocator_threads(a));
    worker w[THREADS];
    pthread_t t[THREADS], obs;
    memset(w, 0, sizeof w);
    atomic_store(&done, 0);
    observed_errors = 0;
    pthread_create(&obs, NULL, observe, a);
    for (int i = 0; i < THREADS; i++) {
        w[i].a = a;
        w[i].seed = 0x9e3779b97f4a7c15u * (uint64_t)(i + 1);
        w[i].stream = (uint64_t)i + 1;
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    uint64_t allocs = 0, frees = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ_U64(w[i].failures, 0);
        /* The blocks of all threads together never overlapped: check the survivors. */
        for (int k = 0; k < LIVE; k++)
            for (int j = 0; j <= i; j++)
                for (int m = 0; m < LIVE; m++) {
                    if (!w[i].addr[k] || !w[j].addr[m] || (i == j && k == m))
                        continue;
                    uint64_t a0 = w[i].addr[k], a1 = a0 + w[i].size[k], b0 = w[j].addr[m], b1 = b0 + w[j].size[m];
                    CHECK(a1 <= b0 || b1 <= a0);
                }
        allocs += w[i].allocs;
        frees += w[i].frees;
    }
    atomic_store(&done, 1);
    pthread_join(obs, NULL);
    CHECK_EQ_U64(observed_errors, 0);
    fl_stats st;
    fl_get_stats(a, &st);
    CHECK_EQ_U64(st.allocation.allocated, allocs);
    CHECK_EQ_U64(st.allocation.freed, frees);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_EQ_U64(st.allocation.current, allocs - frees);
    printf("%-15s %d threads%s: %llu allocations, %llu frees, %llu OOMs\n", policy, THREADS,
           caches ? " (caches on)" : "", (unsigned long long)allocs, (unsigned long long)frees,
           (unsigned long long)st.num_ooms);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* limit holds for every policy: a request above it fails, one below it runs. */
static void test_limit_every_policy(void)
{
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++) {
        fl_sim_params sp;
        fl_sim_params_default(&sp);
        fl_device *d;
        CHECK_OK(fl_sim_device_create(&sp, &d));
        fl_config cfg;
        fl_config_default(&cfg);
        snprintf(cfg.policy, sizeof cfg.policy, "%s", names[i]);
        cfg.limit = UINT64_C(64) << 20;
        fl_allocator *a;
        CHECK_OK(fl_allocator_create(&cfg, d, &a));
        uint64_t x;
        CHECK_STATUS(fl_alloc(a, (UINT64_C(64) << 20) + (UINT64_C(64) << 20), 0, &x), FL_ERR_OOM);
        CHECK_OK(fl_alloc(a, UINT64_C(40) << 20, 0, &x));
        CHECK_OK(fl_free(a, x));
        CHECK(counters(d).peak_in_use <= UINT64_C(64) << 20);
        CHECK(fl_allocator_check(a) == 0);
        fl_allocator_destroy(a);
        fl_device_destroy(d);
    }
}

static void test_env(void)
{
    fl_config c;
    unsetenv("FRAGLESS_CONF");
    CHECK_OK(fl_config_from_env(&c));
    CHECK(!strcmp(c.policy, "fragless"));
    setenv("FRAGLESS_CONF", "policy:cca,max_split_size_mb:256", 1);
    CHECK_OK(fl_config_from_env(&c));
    CHECK(!strcmp(c.policy, "cca") && c.max_split_size == UINT64_C(256) << 20);
    setenv("FRAGLESS_CONF", "policy:cca,bogus:1", 1);
    CHECK_STATUS(fl_config_from_env(&c), FL_ERR_PARSE);
    CHECK(strstr(fl_last_error(), "bogus") != NULL);
    CHECK(!strcmp(c.policy, "fragless")); /* the defaults, not half a config */
    unsetenv("FRAGLESS_CONF");
}

/* ---- thread caches (src/allocator/tcache.h) ------------------------------------------ */

/* An allocator on a sim device with neither the OOM report nor top; caches: forced on. */
static fl_allocator *tc_make(fl_device *d, const char *policy, int caches)
{
    char conf[128];
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0", policy);
    fl_allocator *a = fl_test_allocator(conf, d);
    if (caches)
        CHECK_OK(fli_allocator_threads(a));
    return a;
}

/* Every figure the program sees that the caches could get wrong. */
static void same_figures(const fl_stats *x, const fl_stats *y, const char *when)
{
    const fl_stat *sx[] = {&x->allocated_bytes, &x->active_bytes, &x->requested_bytes, &x->allocation};
    const fl_stat *sy[] = {&y->allocated_bytes, &y->active_bytes, &y->requested_bytes, &y->allocation};
    for (int i = 0; i < 4; i++) {
        if (sx[i]->current != sy[i]->current || sx[i]->peak != sy[i]->peak || sx[i]->allocated != sy[i]->allocated ||
            sx[i]->freed != sy[i]->freed)
            fprintf(stderr, "%s: figure %d differs: %llu/%llu/%llu/%llu with caches, %llu/%llu/%llu/%llu without\n",
                    when, i, (unsigned long long)sx[i]->current, (unsigned long long)sx[i]->peak,
                    (unsigned long long)sx[i]->allocated, (unsigned long long)sx[i]->freed,
                    (unsigned long long)sy[i]->current, (unsigned long long)sy[i]->peak,
                    (unsigned long long)sy[i]->allocated, (unsigned long long)sy[i]->freed);
        CHECK_EQ_U64(sx[i]->current, sy[i]->current);
        CHECK_EQ_U64(sx[i]->peak, sy[i]->peak);
        CHECK_EQ_U64(sx[i]->allocated, sy[i]->allocated);
        CHECK_EQ_U64(sx[i]->freed, sy[i]->freed);
    }
}

/* One thread, the same random operations on an allocator with caches and one without:
 * every statistic (current, peak, totals) is the same after every step, peaks reset
 * included; the cached blocks are reused on their own stream only. */
static void test_tc_figures(const char *policy)
{
    fl_device *d1 = fl_test_sim(UINT64_C(4) << 30, 0), *d2 = fl_test_sim(UINT64_C(4) << 30, 0);
    fl_allocator *a = tc_make(d1, policy, 1), *b = tc_make(d2, policy, 0);
    enum { SLOTS = 48 };
    uint64_t xa[SLOTS] = {0}, xb[SLOTS] = {0}, allocs = 0;
    fl_rng rng = {0x5eed};
    for (int i = 0; i < 6000; i++) {
        int k = (int)fl_rng_below(&rng, SLOTS);
        if (xa[k]) {
            CHECK_OK(fl_free(a, xa[k]));
            CHECK_OK(fl_free(b, xb[k]));
            xa[k] = xb[k] = 0;
        } else {
            /* A few sizes, so that blocks come back; some too large for a cache. */
            uint64_t s = 300 * (1 + fl_rng_below(&rng, 6)) + 7 * fl_rng_below(&rng, 2);
            if (fl_rng_below(&rng, 16) == 0)
                s = (UINT64_C(5) << 20) + fl_rng_below(&rng, 4096);
            uint64_t st = 1 + fl_rng_below(&rng, 2);
            CHECK_OK(fl_alloc(a, s, st, &xa[k]));
            CHECK_OK(fl_alloc(b, s, st, &xb[k]));
            allocs++;
            for (int j = 0; j < SLOTS; j++) /* never two live blocks at one address */
                CHECK(j == k || xa[j] != xa[k]);
        }
        if (i % 500 == 250)
            fl_reset_peak_stats(a), fl_reset_peak_stats(b);
        fl_stats sa, sb;
        fl_get_stats(a, &sa);
        fl_get_stats(b, &sb);
        same_figures(&sa, &sb, "one thread");
        if (fl_test_failures)
            break;
    }
    CHECK(fl_allocator_check(a) == 0);
    /* Most came without the allocator's lock: from the cache, or (a policy with
     * stream-local operations, which keeps no blocks in caches) from the policy. */
    int local = fli_allocator_policy(a)->ops->alloc_local != NULL;
    uint64_t refills;
    CHECK(fli_allocator_unlocked_allocs(a, &refills) > allocs / 2);
    CHECK(local || fli_allocator_policy(a)->num_allocs < allocs / 2);
    /* Stream-local allocations short of room took it from what no cache held (local_refill)
     * in this run too: the figures above were exact after those as well. */
    printf("%s: %llu allocations, %llu with room taken under the lock alone\n", policy, (unsigned long long)allocs,
           (unsigned long long)refills);
    CHECK(!local || refills > 0);
    /* Cached blocks are free to the program but still the policy's until given back. */
    for (int k = 0; k < SLOTS; k++)
        if (xa[k]) {
            CHECK_OK(fl_free(a, xa[k]));
            CHECK_OK(fl_free(b, xb[k]));
        }
    fl_stats sa;
    fl_get_stats(a, &sa);
    CHECK_EQ_U64(sa.allocated_bytes.current, 0);
    CHECK(local ? fli_allocator_policy(a)->allocated == 0 : fli_allocator_policy(a)->allocated > 0);
    CHECK(sa.free_in_reserved >= fli_allocator_policy(a)->allocated);
    /* empty_cache gives them back: nothing is left with the policy, all memory returned. */
    CHECK_OK(fl_empty_cache(a));
    CHECK_OK(fl_empty_cache(b));
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 0);
    CHECK_EQ_U64(in_use(d1), in_use(d2));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_allocator_destroy(b);
    fl_device_destroy(d1);
    fl_device_destroy(d2);
}

/* A freed block is reused on its own stream only, and a freed block is not live. */
static void test_tc_streams_and_misuse(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = tc_make(d, "fragless", 1);
    uint64_t x, y, z;
    CHECK_OK(fl_alloc(a, 1000, 1, &x));
    CHECK_OK(fl_free(a, x));
    CHECK_STATUS(fl_free(a, x), FL_ERR_NOT_FOUND);       /* cached: freed already */
    CHECK_STATUS(fl_record_stream(a, x, 2), FL_ERR_NOT_FOUND); /* not live */
    CHECK_OK(fl_alloc(a, 1000, 2, &y));
    CHECK(y != x);                                        /* another stream: not that block */
    CHECK_OK(fl_alloc(a, 1000, 1, &z));
    CHECK_EQ_U64(z, x);                                   /* its stream, its size: that block */
    CHECK_STATUS(fl_free_sized(a, z, 1024), FL_ERR_INVALID);
    CHECK_OK(fl_free_sized(a, z, 1000));
    CHECK_OK(fl_free(a, y));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* record_stream turns the caches off: cached blocks go back to the policy, and a block
 * used on another stream waits for its event instead of entering a cache. */
static void test_tc_record_stream(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = tc_make(d, "fragless", 1);
    uint64_t x, y;
    CHECK_OK(fl_alloc(a, 4096, 1, &y));
    CHECK_OK(fl_free(a, y)); /* cached */
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 4096);
    CHECK_OK(fl_alloc(a, 8192, 1, &x));
    CHECK_OK(fl_record_stream(a, x, 2));
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 8192); /* the cached block went back */
    CHECK_OK(fl_free(a, x));
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.current, 1); /* pending for stream 2, not in a cache */
    CHECK(fl_allocator_check(a) == 0);
    uint64_t z;
    CHECK_OK(fl_alloc(a, 100, 1, &z)); /* the sim's events are done: x is freed first */
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocation.current, 1);
    CHECK_OK(fl_free(a, z));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* At the limit, blocks in caches are given back and the allocation retried. */
static void test_tc_oom_retry(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = fl_test_allocator("policy:cca-expandable,oom_report:0,top:0,limit:64MiB", d);
    CHECK(fli_allocator_policy(a)->ops->alloc_local == NULL); /* caches, not stream-local operations */
    CHECK_OK(fli_allocator_threads(a));
    uint64_t x[48];
    for (int i = 0; i < 48; i++)
        CHECK_OK(fl_alloc(a, UINT64_C(1) << 20, 1, &x[i])); /* 48 MiB of 1 MiB blocks */
    for (int i = 0; i < 48; i++)
        CHECK_OK(fl_free(a, x[i])); /* all cached */
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, UINT64_C(48) << 20);
    uint64_t big;
    CHECK_OK(fl_alloc(a, UINT64_C(40) << 20, 1, &big)); /* needs their pages */
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, UINT64_C(40) << 20);
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocated_bytes.current, UINT64_C(40) << 20);
    CHECK_EQ_U64(s.allocated_bytes.peak, UINT64_C(48) << 20);
    CHECK_EQ_U64(s.num_ooms, 0);
    CHECK_OK(fl_free(a, big));
    CHECK(fl_allocator_check(a) == 0);
    /* A lower limit: what the caches hold goes back first. */
    for (int i = 0; i < 16; i++)
        CHECK_OK(fl_alloc(a, UINT64_C(1) << 20, 1, &x[i]));
    for (int i = 0; i < 16; i++)
        CHECK_OK(fl_free(a, x[i]));
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, UINT64_C(16) << 20);
    CHECK_OK(fl_set_limit(a, UINT64_C(8) << 20));
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 0);
    CHECK_OK(fl_empty_cache(a)); /* PyTorch's policies keep their own cache at a new limit */
    CHECK(in_use(d) <= UINT64_C(8) << 20);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Stream-local operations at the limit: what needs pages held elsewhere (a reclaim: a
 * device call) goes the ordinary way, which reclaims; statistics stay exact; a lower
 * limit gives memory back. */
static void test_local_limit(void)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0,limit:64MiB", d);
    CHECK(fli_allocator_policy(a)->ops->alloc_local != NULL);
    CHECK_OK(fli_allocator_threads(a));
    uint64_t x[48];
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 48; i++)
            CHECK_OK(fl_alloc(a, (UINT64_C(1) << 20) - 512 * (uint64_t)r, 1 + (uint64_t)(i % 2), &x[i]));
        for (int i = 0; i < 48; i++)
            CHECK_OK(fl_free(a, x[i]));
    }
    CHECK(fli_allocator_unlocked_allocs(a, NULL) > 0);
    uint64_t big;
    CHECK_OK(fl_alloc(a, UINT64_C(40) << 20, 1, &big)); /* pages cached on stream 2's heap */
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocated_bytes.current, UINT64_C(40) << 20);
    CHECK_EQ_U64(s.allocated_bytes.peak, UINT64_C(48) << 20);
    CHECK_EQ_U64(s.allocation.allocated, 3 * 48 + 1);
    CHECK_EQ_U64(s.num_ooms, 0);
    CHECK_OK(fl_free(a, big));
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_set_limit(a, UINT64_C(8) << 20));
    CHECK(in_use(d) <= UINT64_C(8) << 20);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Worker threads count their failures (the CHECK macros are for the main thread). */
typedef struct tc_thread {
    fl_allocator *a;
    uint64_t stream, mine, theirs, n, failures;
    pthread_barrier_t *bar;
} tc_thread;

/* Allocates and frees a few blocks (they stay in its cache), frees the block of the other
 * thread that main handed it, then waits for main before it ends. */
static void *tc_worker(void *arg)
{
    tc_thread *t = arg;
    uint64_t x[8];
    for (int r = 0; r < 100; r++) {
        for (int i = 0; i < 8; i++)
            t->failures += fl_alloc(t->a, 512 * (uint64_t)(i + 1), t->stream, &x[i]) != FL_OK;
        for (int i = 0; i < 8; i++)
            t->failures += fl_free(t->a, x[i]) != FL_OK;
        t->n += 8;
    }
    t->failures += fl_alloc(t->a, 3000, t->stream, &t->mine) != FL_OK; /* freed by the other thread */
    pthread_barrier_wait(t->bar);
    pthread_barrier_wait(t->bar); /* main handed out the other's block */
    t->failures += fl_free(t->a, t->theirs) != FL_OK;
    pthread_barrier_wait(t->bar);
    pthread_barrier_wait(t->bar); /* main looks at the caches while we are alive */
    return NULL;
}

/* Two threads: statistics exact (the peak is what both held at once at most), blocks
 * freed by the other thread, and a thread's end gives its cache back; an allocator
 * destroyed while a thread still has a cache of it leaves that thread unharmed. */
static void test_tc_threads_end(const char *policy)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = tc_make(d, policy, 1);
    int local = fli_allocator_policy(a)->ops->alloc_local != NULL;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 3);
    tc_thread t[2] = {{a, 1, 0, 0, 0, 0, &bar}, {a, 2, 0, 0, 0, 0, &bar}};
    pthread_t tid[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&tid[i], NULL, tc_worker, &t[i]);
    pthread_barrier_wait(&bar);
    t[0].theirs = t[1].mine;
    t[1].theirs = t[0].mine;
    pthread_barrier_wait(&bar);
    pthread_barrier_wait(&bar);
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.allocated, t[0].n + t[1].n + 2);
    CHECK_EQ_U64(s.allocation.freed, t[0].n + t[1].n + 2);
    CHECK(s.allocation.peak >= 8 && s.allocation.peak <= 18);
    CHECK(s.allocated_bytes.peak >= 18432 && s.allocated_bytes.peak <= 2 * 18432 + 2 * 3072);
    /* The caches hold blocks; stream-local operations keep none. */
    CHECK(local ? fli_allocator_policy(a)->allocated == 0 : fli_allocator_policy(a)->allocated > 0);
    CHECK(fl_allocator_check(a) == 0);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < 2; i++) {
        pthread_join(tid[i], NULL);
        CHECK_EQ_U64(t[i].failures, 0);
    }
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 0); /* given back at the threads' end */
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocation.allocated, t[0].n + t[1].n + 2);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(in_use(d), 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    pthread_barrier_destroy(&bar);
}

typedef struct tc_orphan {
    fl_allocator *a;
    fl_device *d;
    pthread_barrier_t *bar;
    int failures;
} tc_orphan;

static void *tc_orphan_main(void *arg)
{
    tc_orphan *o = arg;
    uint64_t x;
    o->failures += fl_alloc(o->a, 512, 1, &x) != FL_OK;
    o->failures += fl_free(o->a, x) != FL_OK; /* in this thread's cache */
    pthread_barrier_wait(o->bar);
    pthread_barrier_wait(o->bar); /* main destroyed the allocator and made another */
    o->failures += fl_alloc(o->a, 512, 1, &x) != FL_OK; /* o->a is the new one now */
    o->failures += fl_free(o->a, x) != FL_OK;
    return NULL;
}

static void test_tc_destroyed_first(void)
{
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    tc_orphan o = {NULL, fl_test_sim(0, 0), &bar, 0};
    o.a = tc_make(o.d, "fragless", 1);
    pthread_t t;
    pthread_create(&t, NULL, tc_orphan_main, &o);
    pthread_barrier_wait(&bar);
    fl_allocator_destroy(o.a);
    o.a = tc_make(o.d, "fragless", 1); /* maybe at the same address: the caches know ids */
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    CHECK_EQ_U64(o.failures, 0);
    CHECK_EQ_U64(fli_allocator_policy(o.a)->allocated, 0); /* the thread's end gave it back */
    fl_stats s;
    fl_get_stats(o.a, &s);
    CHECK_EQ_U64(s.allocation.allocated, 1);
    CHECK(fl_allocator_check(o.a) == 0);
    fl_allocator_destroy(o.a);
    fl_device_destroy(o.d);
    pthread_barrier_destroy(&bar);
}

/* Stream-local operations under contention: four threads, two on each of two streams
 * (the same heaps: one of the two is the heap's owner, the other goes the ordinary way),
 * share slots, so a block is often freed by another thread than the one that allocated
 * it (another owner's heap: the ordinary way). A new block must
 * not overlap any block held in a slot (the slots change under a mutex of the test; the
 * allocator's calls are made outside it); an observer reads statistics and runs the
 * self-check meanwhile. Every figure returns to zero, and some calls were stream-local. */
#define SHARED_SLOTS 64
typedef struct shared_slot {
    uint64_t addr, size; /* addr 0: empty */
} shared_slot;

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct sharer {
    fl_allocator *a;
    shared_slot *slots;
    uint64_t seed, stream, failures, ops;
} sharer;

static void *share_work(void *arg)
{
    sharer *w = arg;
    fl_rng rng = {w->seed};
    for (int i = 0; i < 20000; i++) {
        shared_slot *sl = &w->slots[fl_rng_below(&rng, SHARED_SLOTS)];
        pthread_mutex_lock(&slots_lock);
        shared_slot took = *sl;
        sl->addr = 0;
        pthread_mutex_unlock(&slots_lock);
        if (took.addr) {
            w->failures += fl_free_sized(w->a, took.addr, took.size) != FL_OK;
        } else {
            uint64_t x, size = 1 + fl_rng_below(&rng, fl_rng_below(&rng, 16) ? 16 << 10 : 6 << 20);
            if (fl_alloc(w->a, size, w->stream, &x) != FL_OK) {
                w->failures++;
                continue;
            }
            pthread_mutex_lock(&slots_lock);
            for (int k = 0; k < SHARED_SLOTS; k++) /* no live block overlaps it */
                w->failures += w->slots[k].addr && x < w->slots[k].addr + w->slots[k].size && w->slots[k].addr < x + size;
            took = *sl; /* another thread may have filled it meanwhile */
            *sl = (shared_slot){x, size};
            pthread_mutex_unlock(&slots_lock);
            if (took.addr)
                w->failures += fl_free_sized(w->a, took.addr, took.size) != FL_OK;
        }
        w->ops++;
    }
    return NULL;
}

static void test_local_shared(void)
{
    fl_device *d = fl_test_sim(UINT64_C(2) << 30, 0);
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
    CHECK_OK(fli_allocator_threads(a));
    static shared_slot slots[SHARED_SLOTS];
    sharer w[4];
    pthread_t t[4], obs;
    atomic_store(&done, 0);
    observed_errors = 0;
    for (int i = 0; i < 4; i++) {
        w[i] = (sharer){a, slots, 0x1234 + (uint64_t)i, 1 + (uint64_t)(i % 2), 0, 0};
        CHECK(pthread_create(&t[i], NULL, share_work, &w[i]) == 0);
    }
    CHECK(pthread_create(&obs, NULL, observe, a) == 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ_U64(w[i].failures, 0);
    }
    atomic_store(&done, 1);
    pthread_join(obs, NULL);
    CHECK_EQ_U64(observed_errors, 0);
    for (int k = 0; k < SHARED_SLOTS; k++)
        if (slots[k].addr)
            CHECK_OK(fl_free(a, slots[k].addr));
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.allocated, s.allocation.freed);
    CHECK_EQ_U64(fli_allocator_policy(a)->allocated, 0);
    /* Some were stream-local (how many depends on the interleaving: a heap serves one
     * thread's, and a thread that meets the lock held for long goes there too; the
     * single-threaded share is test_tc_figures'). */
    CHECK(fli_allocator_unlocked_allocs(a, NULL) > 0);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(in_use(d), 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* A stream that passes from one thread to another (a pool's worker takes it over while
 * the first thread lives on): the second thread's operations become stream-local after
 * a few that took the lock, as the first thread's were. */
typedef struct phase_worker {
    fl_allocator *a;
    pthread_barrier_t *bar;
    int first;
    uint64_t failures, unlocked;
} phase_worker;

static void stream_phase(phase_worker *w)
{
    uint64_t before = fli_allocator_unlocked_allocs(w->a, NULL), x[8];
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 8; i++)
            w->failures += fl_alloc(w->a, 512 * (uint64_t)(i + 1), 7, &x[i]) != FL_OK;
        for (int i = 0; i < 8; i++)
            w->failures += fl_free(w->a, x[i]) != FL_OK;
    }
    w->unlocked = fli_allocator_unlocked_allocs(w->a, NULL) - before;
}

static void *phase_main(void *arg)
{
    phase_worker *w = arg;
    if (w->first)
        stream_phase(w);
    pthread_barrier_wait(w->bar); /* the first thread's turn is over; it stays alive */
    if (!w->first)
        stream_phase(w);
    pthread_barrier_wait(w->bar);
    return NULL;
}

static void test_local_adopt(void)
{
    fl_device *d = fl_test_sim(UINT64_C(1) << 30, 0);
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
    CHECK_OK(fli_allocator_threads(a));
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    phase_worker w[2] = {{a, &bar, 1, 0, 0}, {a, &bar, 0, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&t[i], NULL, phase_main, &w[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
    enum { ALLOCS = 200 * 8 };
    printf("a stream passed between threads: stream-local allocations %llu of %d, then %llu of %d\n",
           (unsigned long long)w[0].unlocked, ALLOCS, (unsigned long long)w[1].unlocked, ALLOCS);
    CHECK_EQ_U64(w[0].failures + w[1].failures, 0);
    CHECK(w[0].unlocked > ALLOCS * 9 / 10);
    CHECK(w[1].unlocked > ALLOCS * 9 / 10); /* all but the first few, once the heap is its */
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocation.allocated, 2 * ALLOCS);
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Streams made and destroyed by several threads at once, with thread caches on (a
 * stream per request under `fragless run`: cudaStreamDestroy calls
 * fli_allocator_stream_gone): each thread allocates on a stream of its own, frees,
 * retires the stream and takes a new one, while the others do the same and an observer
 * runs the self-check. Nothing is lost, the self-check holds throughout, and the memory
 * held stays what a few streams need (fragless hands retired heaps over). */
typedef struct gone_worker {
    fl_allocator *a;
    uint64_t first_stream;
    uint64_t failures;
} gone_worker;

static void *gone_main(void *arg)
{
    gone_worker *w = arg;
    for (uint64_t r = 0; r < 300; r++) {
        uint64_t s = w->first_stream + r * 0x40, x[6];
        for (int i = 0; i < 6; i++)
            w->failures += fl_alloc(w->a, (i & 1 ? 3000 : 3 << 20) + 512 * (uint64_t)i, s, &x[i]) != FL_OK;
        for (int i = 0; i < 6; i++)
            w->failures += fl_free(w->a, x[i]) != FL_OK;
        fli_allocator_stream_gone(w->a, s);
    }
    return NULL;
}

static void test_streams_gone(void)
{
    fl_device *d = fl_test_sim(UINT64_C(8) << 30, 0);
    fl_allocator *a = fl_test_allocator("policy:fragless,oom_report:0,top:0", d);
    CHECK_OK(fli_allocator_threads(a));
    gone_worker w[THREADS];
    pthread_t t[THREADS], obs;
    atomic_store(&done, 0);
    observed_errors = 0;
    CHECK(pthread_create(&obs, NULL, observe, a) == 0);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (gone_worker){a, UINT64_C(0x100000) * (uint64_t)(i + 1), 0};
        CHECK(pthread_create(&t[i], NULL, gone_main, &w[i]) == 0);
    }
    uint64_t failures = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        failures += w[i].failures;
    }
    atomic_store(&done, 1);
    pthread_join(obs, NULL);
    fl_stats s;
    fl_get_stats(a, &s);
    printf("%d threads, 300 streams each, made and retired: reserved %.0f MiB at the end\n", THREADS,
           s.reserved_bytes.current / 1048576.0);
    CHECK_EQ_U64(failures, 0);
    CHECK_EQ_U64(observed_errors, 0);
    CHECK_EQ_U64(s.allocation.current, 0);
    /* Each of the four threads' streams needs a heap pair with its growth step (under
     * 64 MiB); without retirement, 1,200 streams reserved several GiB. */
    CHECK(s.reserved_bytes.current <= (uint64_t)THREADS * 2 * (64 << 20));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

int main(void)
{
    test_limit_every_policy();
    test_streams_gone();
    test_local_adopt();
    test_env();
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++)
        run(names[i], 0);
    run("fragless", 1);
    for (int i = 0; names[i]; i++)
        test_tc_figures(names[i]);
    test_tc_streams_and_misuse();
    test_tc_record_stream();
    test_tc_oom_retry();
    test_local_limit();
    test_local_shared();
    for (int i = 0; names[i]; i++)
        test_tc_threads_end(names[i]);
    test_tc_destroyed_first();
    return fl_test_done("test_threads");
}
