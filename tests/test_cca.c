/* Known answers for the PyTorch emulations — cca, cca-expandable — and nocache, each
 * derived by hand from PyTorch's rules (CUDACachingAllocator.cpp), on the sim device,
 * with the policy's self-check after every step; then a seeded stress run of each. */
#include <string.h>

#include "policy/policy.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define KiB (UINT64_C(1) << 10)

/* ---- helpers ------------------------------------------------------------------- */

static fl_device *sim_dev(uint64_t capacity)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    if (capacity)
        sp.capacity = capacity;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    return d;
}

static fli_policy *make(const fli_policy_ops *ops, const fl_config *cfg, fl_device *d)
{
    fli_policy *p = NULL;
    d->limit = cfg->limit; /* as fli_policy_create does: the device layer owns the limit */
    CHECK_OK(ops->create(cfg, d, &p));
    if (!p) {
        fprintf(stderr, "cannot create %s: %s\n", ops->name, fl_last_error());
        exit(1);
    }
    return p;
}

static void base_cfg(fl_config *cfg)
{
    fl_config_default(cfg);
}

#define CHECK_POLICY(p)                                                                \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if ((p)->ops->check(p) != 0) {                                                 \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: self-check of %s failed: %s\n", __FILE__, __LINE__, \
                    (p)->ops->name, fl_last_error());                                  \
        }                                                                              \
    } while (0)

static int alloc_line;
#define ALLOC(p, size, stream) (alloc_line = __LINE__, do_alloc(p, size, stream))
static uint64_t do_alloc(fli_policy *p, uint64_t size, uint64_t stream)
{
    uint64_t a = 0;
    fl_status s = p->ops->alloc(p, size, stream, &a);
    fl_test_checks++;
    if (s != FL_OK) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: alloc of %llu on stream %llu: %s\n", __FILE__, alloc_line,
                (unsigned long long)size, (unsigned long long)stream, fl_last_error());
    }
    CHECK(a % 512 == 0);
    CHECK_POLICY(p);
    return a;
}

#define FREE(p, a)                                                                     \
    do {                                                                               \
        CHECK_OK((p)->ops->free(p, a, 0, NULL));                                                \
        CHECK_POLICY(p);                                                               \
    } while (0)

#define EMPTY(p)                                                                       \
    do {                                                                               \
        CHECK_OK((p)->ops->empty_cache(p));                                            \
        CHECK_POLICY(p);                                                               \
    } while (0)


/* ---- rounding ------------------------------------------------------------------ */

static void test_round(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    CHECK_EQ_U64(fli_round_request(&cfg, 1), 512);
    CHECK_EQ_U64(fli_round_request(&cfg, 512), 512);
    CHECK_EQ_U64(fli_round_request(&cfg, 513), 1024);
    CHECK_EQ_U64(fli_round_request(&cfg, 1200), 1536);
    CHECK_EQ_U64(fli_round_request(&cfg, 5 * MiB + 1), 5 * MiB + 512);
    CHECK_EQ_U64(fli_round_request(NULL, 1200), 1536);

    for (int i = 0; i < FL_ROUNDUP_INTERVALS; i++)
        cfg.roundup_divisions[i] = 4;
    /* PyTorch's roundup_power2_next_division maps 1200 to 1280 with 4 divisions, but
     * round_size only uses it above 512 * divisions = 2048 B, so 1200 -> 1536. */
    CHECK_EQ_U64(fli_round_request(&cfg, 1200), 1536);
    CHECK_EQ_U64(fli_round_request(&cfg, 2048), 2048);
    CHECK_EQ_U64(fli_round_request(&cfg, 2049), 2560);       /* 2048 + 512 */
    CHECK_EQ_U64(fli_round_request(&cfg, 3000), 3072);
    CHECK_EQ_U64(fli_round_request(&cfg, 1200 * KiB), 1280 * KiB); /* 1200 K -> 1280 K */
    CHECK_EQ_U64(fli_round_request(&cfg, 4 * MiB), 4 * MiB);       /* powers of two stay */
    CHECK_EQ_U64(fli_round_request(&cfg, 5 * MiB), 5 * MiB);       /* on a step */
    CHECK_EQ_U64(fli_round_request(&cfg, 5 * MiB + 1), 6 * MiB);
    CHECK_EQ_U64(fli_round_request(&cfg, 13 * MiB), 14 * MiB);     /* steps of 2 MiB */
    /* Below 1 MiB the first interval's divisions apply (PyTorch clamps the index). */
    CHECK_EQ_U64(fli_round_request(&cfg, 600 * KiB), 640 * KiB);
    /* 41 GiB is past the last interval start (32 GiB): the last entry applies. */
    CHECK_EQ_U64(fli_round_request(&cfg, 40ull << 30), 40ull << 30);
    CHECK_EQ_U64(fli_round_request(&cfg, 41ull << 30), 48ull << 30);
    CHECK_EQ_U64(fli_round_request(&cfg, 100ull << 30), 112ull << 30); /* index clamped */

    base_cfg(&cfg);
    cfg.roundup_divisions[3] = 8;                               /* [8 MiB, 16 MiB) */
    CHECK_EQ_U64(fli_round_request(&cfg, 9 * MiB + 1), 10 * MiB);
    CHECK_EQ_U64(fli_round_request(&cfg, 4 * MiB + 1), 4 * MiB + 512);
    CHECK_EQ_U64(fli_round_request(&cfg, 16 * MiB + 1), 16 * MiB + 512);
    CHECK_EQ_U64(fli_round_request(&cfg, 600 * KiB), 600 * KiB);
    cfg.roundup_divisions[0] = 1;                               /* 1 = plain rounding */
    CHECK_EQ_U64(fli_round_request(&cfg, 1200 * KiB + 1), 1200 * KiB + 512);
    CHECK_EQ_U64(fli_round_request(&cfg, UINT64_MAX), UINT64_MAX & ~UINT64_C(511));
}

/* ---- cca: segments, caching, OOM path ------------------------------------------ */

static void test_segment_sizes(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);

    uint64_t b = ALLOC(p, 12 * MiB, 0); /* >= 10 MiB: the request rounded to 2 MiB */
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 1);
    CHECK_EQ_U64(in_use(d), 12 * MiB);
    CHECK_EQ_U64(p->allocated, 12 * MiB);

    uint64_t a = ALLOC(p, 5 * MiB, 0); /* (1, 10) MiB: a 20 MiB segment, split */
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 2);
    CHECK_EQ_U64(in_use(d), 32 * MiB);
    CHECK_EQ_U64(p->allocated, 17 * MiB);

    uint64_t s = ALLOC(p, 600 * KiB, 0); /* small pool: a 2 MiB segment */
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 3);
    CHECK_EQ_U64(in_use(d), 34 * MiB);

    uint64_t c = ALLOC(p, 16 * MiB + 512 * KiB, 0); /* 18 MiB segment, 1.5 MiB split off */
    CHECK_EQ_U64(in_use(d), 52 * MiB);
    CHECK_EQ_U64(p->allocated, 12 * MiB + 5 * MiB + 600 * KiB + 16 * MiB + 512 * KiB);
    uint64_t t = ALLOC(p, 1536 * KiB, 0); /* best fit: that 1.5 MiB tail, not a's 15 MiB */
    CHECK_EQ_U64(t, c + 16 * MiB + 512 * KiB);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 4);

    /* Freeing the only block of a segment keeps the segment cached. */
    FREE(p, a);
    CHECK_EQ_U64(in_use(d), 52 * MiB);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 0);
    uint64_t a2 = ALLOC(p, 5 * MiB, 0);
    CHECK_EQ_U64(a2, a);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 4);

    FREE(p, a2);
    FREE(p, s);
    FREE(p, b);
    FREE(p, t);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 0);
    /* c's segment is still in use, so empty_cache keeps exactly it. */
    uint64_t syncs = calls(d, FL_CALL_SYNC);
    EMPTY(p);
    CHECK_EQ_U64(calls(d, FL_CALL_SYNC), syncs + 1);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 3);
    CHECK_EQ_U64(in_use(d), 18 * MiB);
    FREE(p, c);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(p->num_allocs, 6);
    CHECK_EQ_U64(p->num_frees, 6);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_oom_release_retry(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(64 * MiB);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);

    uint64_t a = ALLOC(p, 5 * MiB, 0);
    FREE(p, a);
    CHECK_EQ_U64(in_use(d), 20 * MiB);
    /* 20 + 50 > 64: cudaMalloc fails, the cached segment is released, the retry works. */
    uint64_t b = ALLOC(p, 50 * MiB, 0);
    CHECK_EQ_U64(p->retries, 1);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 1);
    CHECK_EQ_U64(counters(d).failed_calls, 1);
    CHECK_EQ_U64(in_use(d), 50 * MiB);

    /* Nothing left to release: a real OOM, counted, with PyTorch's kind of message. */
    uint64_t x = 0, allocated = p->allocated;
    CHECK_STATUS(p->ops->alloc(p, 20 * MiB, 0, &x), FL_ERR_OOM);
    CHECK(strstr(fl_last_error(), "Tried to allocate 20.00 MiB") != NULL);
    CHECK(strstr(fl_last_error(), "50.00 MiB is allocated") != NULL);
    CHECK(strstr(fl_last_error(), "expandable_segments") != NULL);
    CHECK_EQ_U64(p->ooms, 1);
    CHECK_EQ_U64(p->retries, 2); /* the last attempt counts as a retry, as in PyTorch */
    CHECK_EQ_U64(p->allocated, allocated);
    CHECK_EQ_U64(p->num_allocs, 2);
    CHECK_POLICY(p);
    FREE(p, b);
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

static void test_limit(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    cfg.limit = 40 * MiB;
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);
    uint64_t a = ALLOC(p, 30 * MiB, 0);
    uint64_t x = 0, before = calls(d, FL_CALL_MEM_ALLOC);
    /* Like the memory fraction: refused before any device call. */
    CHECK_STATUS(p->ops->alloc(p, 20 * MiB, 0, &x), FL_ERR_OOM);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), before);
    CHECK(strstr(fl_last_error(), "40.00 MiB allowed") != NULL);
    CHECK_EQ_U64(p->ooms, 1);
    CHECK_POLICY(p);
    uint64_t b = ALLOC(p, 10 * MiB, 0);
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    FREE(p, a);
    FREE(p, b);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_split_rules(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);

    /* Large pool: a remainder of exactly 1 MiB is not split off. */
    uint64_t a = ALLOC(p, 12 * MiB, 0);
    FREE(p, a);
    uint64_t b = ALLOC(p, 11 * MiB, 0);
    CHECK_EQ_U64(b, a);
    CHECK_EQ_U64(p->allocated, 12 * MiB);
    FREE(p, b);
    /* ... but 1.5 MiB is, and serves the next large request. */
    b = ALLOC(p, 10 * MiB + 512 * KiB, 0);
    CHECK_EQ_U64(p->allocated, 10 * MiB + 512 * KiB);
    uint64_t c = ALLOC(p, 1536 * KiB, 0);
    CHECK_EQ_U64(c, a + 10 * MiB + 512 * KiB);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 1);
    FREE(p, b);
    FREE(p, c);

    /* Small pool: a remainder of 512 B is split off and used. */
    uint64_t s1 = ALLOC(p, 1 * MiB, 0);
    uint64_t s2 = ALLOC(p, 1 * MiB - 512, 0);
    CHECK_EQ_U64(s2, s1 + 1 * MiB);
    uint64_t s3 = ALLOC(p, 512, 0);
    CHECK_EQ_U64(s3, s1 + 2 * MiB - 512);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 2);
    CHECK_EQ_U64(p->allocated, 2 * MiB);
    /* Freeing the middle then its neighbours merges back to one 2 MiB block. */
    FREE(p, s2);
    FREE(p, s1);
    FREE(p, s3);
    uint64_t whole = ALLOC(p, 1 * MiB, 0);
    CHECK_EQ_U64(whole, s1);
    FREE(p, whole);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_best_fit(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);
    uint64_t s12 = ALLOC(p, 12 * MiB, 0);
    uint64_t s16 = ALLOC(p, 16 * MiB, 0);
    uint64_t s14 = ALLOC(p, 14 * MiB, 0);
    uint64_t t1 = ALLOC(p, 18 * MiB, 0);
    uint64_t t2 = ALLOC(p, 18 * MiB, 0);
    FREE(p, s12);
    FREE(p, s16);
    FREE(p, s14);
    FREE(p, t2);
    FREE(p, t1);
    uint64_t n = calls(d, FL_CALL_MEM_ALLOC);
    /* The smallest block that fits: 14 MiB (remainder 1 MiB, kept whole). */
    uint64_t a = ALLOC(p, 13 * MiB, 0);
    CHECK_EQ_U64(a, s14);
    /* Equal sizes: the lower address. */
    uint64_t b = ALLOC(p, 17 * MiB, 0);
    CHECK_EQ_U64(b, t1 < t2 ? t1 : t2);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), n);
    FREE(p, a);
    FREE(p, b);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_max_split(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    cfg.max_split_size = 40 * MiB;
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);

    uint64_t big = ALLOC(p, 62 * MiB, 0);
    FREE(p, big);
    /* An oversize block never serves a request below max_split_size. */
    uint64_t a = ALLOC(p, 30 * MiB, 0);
    CHECK(a != big);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 2);
    /* An oversize request takes it when it is < request + 20 MiB, unsplit. */
    uint64_t b = ALLOC(p, 45 * MiB, 0);
    CHECK_EQ_U64(b, big);
    CHECK_EQ_U64(p->allocated, 30 * MiB + 62 * MiB);
    FREE(p, b);
    /* ... and not when it is >= request + 20 MiB. */
    uint64_t c = ALLOC(p, 42 * MiB, 0);
    CHECK(c != big);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 3);
    /* A block below max_split_size still splits: 30 MiB -> 22 MiB + 8 MiB. */
    FREE(p, a);
    uint64_t e = ALLOC(p, 22 * MiB, 0);
    CHECK_EQ_U64(e, a);
    uint64_t f = ALLOC(p, 8 * MiB, 0);
    CHECK_EQ_U64(f, a + 22 * MiB);
    FREE(p, c);
    FREE(p, e);
    FREE(p, f);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* release_available_cached_blocks: one oversize block big enough ... */
    d = sim_dev(128 * MiB);
    p = make(&fli_policy_cca, &cfg, d);
    uint64_t o50 = ALLOC(p, 50 * MiB, 0), o60 = ALLOC(p, 60 * MiB, 0);
    FREE(p, o50);
    FREE(p, o60);
    uint64_t g = ALLOC(p, 30 * MiB, 0); /* 110 + 30 > 128: frees the 50, not the 60 */
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 1);
    CHECK_EQ_U64(p->retries, 0);
    CHECK_EQ_U64(in_use(d), 90 * MiB);
    uint64_t h = ALLOC(p, 55 * MiB, 0); /* the cached 60 MiB block */
    CHECK_EQ_U64(h, o60);
    FREE(p, g);
    FREE(p, h);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* ... or the largest ones until enough, smaller ones kept. */
    d = sim_dev(128 * MiB);
    p = make(&fli_policy_cca, &cfg, d);
    uint64_t o40 = ALLOC(p, 40 * MiB, 0), o42 = ALLOC(p, 42 * MiB, 0), o46 = ALLOC(p, 46 * MiB, 0);
    FREE(p, o40);
    FREE(p, o42);
    FREE(p, o46);
    CHECK_EQ_U64(in_use(d), 128 * MiB);
    uint64_t k = ALLOC(p, 70 * MiB, 0); /* frees 46 then 42 (88 >= 70); 40 stays */
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 2);
    CHECK_EQ_U64(p->retries, 0);
    CHECK_EQ_U64(in_use(d), 40 * MiB + 70 * MiB);
    uint64_t m = ALLOC(p, 40 * MiB, 0);
    CHECK_EQ_U64(m, o40);
    FREE(p, k);
    FREE(p, m);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_streams(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);
    uint64_t a = ALLOC(p, 5 * MiB, 1);
    FREE(p, a);
    /* Freed on stream 1: stream 2 gets a new segment. */
    uint64_t b = ALLOC(p, 5 * MiB, 2);
    CHECK(b != a);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 2);
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    /* Stream 1 still reuses its own. */
    uint64_t c = ALLOC(p, 5 * MiB, 1);
    CHECK_EQ_U64(c, a);
    FREE(p, b);
    FREE(p, c);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 0);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* Cross-stream reuse happens only through the device: release, then allocate. */
    d = sim_dev(40 * MiB);
    p = make(&fli_policy_cca, &cfg, d);
    a = ALLOC(p, 5 * MiB, 1);
    FREE(p, a);
    b = ALLOC(p, 30 * MiB, 2);
    CHECK_EQ_U64(p->retries, 1);
    CHECK_EQ_U64(in_use(d), 30 * MiB);
    FREE(p, b);
    EMPTY(p);
    a = ALLOC(p, 5 * MiB, 1);
    FREE(p, a);
    EMPTY(p);
    b = ALLOC(p, 35 * MiB, 2); /* fits only because empty_cache gave stream 1's back */
    CHECK_EQ_U64(in_use(d), 36 * MiB);
    FREE(p, b);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_gc(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    cfg.limit = 100 * MiB;
    cfg.gc_threshold = 0.5;
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca, &cfg, d);
    uint64_t a = ALLOC(p, 12 * MiB, 0);
    uint64_t b = ALLOC(p, 12 * MiB, 0);
    uint64_t c = ALLOC(p, 14 * MiB, 0);
    FREE(p, a);                              /* cached at age 0 after 3 searches */
    uint64_t x = ALLOC(p, 16 * MiB, 0);      /* 38 MiB reserved <= 50: no GC yet */
    CHECK_EQ_U64(in_use(d), 54 * MiB);
    FREE(p, b);                              /* cached one search after a */
    /* 54 > 50 MiB: GC frees unsplit cached blocks at least as old as the average
     * (a: 2 searches, b: 1), which is enough here: a goes, b stays. */
    uint64_t y = ALLOC(p, 18 * MiB, 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 1);
    CHECK_EQ_U64(in_use(d), 60 * MiB);
    uint64_t z = ALLOC(p, 12 * MiB, 0);
    CHECK_EQ_U64(z, b);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 5);
    FREE(p, c);
    FREE(p, x);
    FREE(p, y);
    FREE(p, z);
    p->ops->destroy(p);
    fl_device_destroy(d);

    /* Without a limit there is no fraction, so no GC (PyTorch needs set_fraction). */
    cfg.limit = 0;
    d = sim_dev(0);
    p = make(&fli_policy_cca, &cfg, d);
    a = ALLOC(p, 60 * MiB, 0);
    FREE(p, a);
    b = ALLOC(p, 70 * MiB, 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 0);
    FREE(p, b);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_misuse(const fli_policy_ops *ops)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(ops, &cfg, d);
    uint64_t a = ALLOC(p, 3000, 0);
    uint64_t allocated = p->allocated;
    CHECK_STATUS(p->ops->free(p, 0x1234, 0, NULL), FL_ERR_NOT_FOUND);
    CHECK(strstr(fl_last_error(), "0x1234") != NULL);
    CHECK_STATUS(p->ops->free(p, a + 512, 0, NULL), FL_ERR_NOT_FOUND);
    CHECK_EQ_U64(p->allocated, allocated);
    CHECK_EQ_U64(p->num_frees, 0);
    CHECK_POLICY(p);
    FREE(p, a);
    CHECK_STATUS(p->ops->free(p, a, 0, NULL), FL_ERR_NOT_FOUND); /* double free */
    CHECK_EQ_U64(p->num_frees, 1);
    /* The self-check notices a wrong counter. */
    a = ALLOC(p, 3000, 0);
    p->allocated += 512;
    CHECK(p->ops->check(p) != 0);
    p->allocated -= 512;
    CHECK_POLICY(p);
    FREE(p, a);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_bad_config(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = NULL;
    cfg.max_split_size = 10 * MiB;
    CHECK_STATUS(fli_policy_cca.create(&cfg, d, &p), FL_ERR_INVALID);
    base_cfg(&cfg);
    cfg.gc_threshold = 1.5;
    CHECK_STATUS(fli_policy_cca.create(&cfg, d, &p), FL_ERR_INVALID);
    base_cfg(&cfg);
    cfg.roundup_divisions[2] = 3;
    CHECK_STATUS(fli_policy_cca.create(&cfg, d, &p), FL_ERR_INVALID);
    CHECK(p == NULL);
    fl_device_destroy(d);

    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.vmm_supported = 0;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    base_cfg(&cfg);
    CHECK_STATUS(fli_policy_cca_expandable.create(&cfg, d, &p), FL_ERR_UNSUPPORTED);
    fl_device_destroy(d);
}

/* ---- cca-expandable ------------------------------------------------------------ */

static void test_expandable_growth(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca_expandable, &cfg, d);

    uint64_t a = ALLOC(p, 5 * MiB, 0); /* large pool: one 20 MiB page */
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 1);
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 1);
    CHECK_EQ_U64(calls(d, FL_CALL_MAP), 1);
    CHECK_EQ_U64(calls(d, FL_CALL_SET_ACCESS), 1);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 0);
    CHECK_EQ_U64(in_use(d), 20 * MiB);
    CHECK_EQ_U64(p->allocated, 5 * MiB);

    uint64_t s = ALLOC(p, 600 * KiB, 0); /* small pool: its own segment, a 2 MiB page */
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 2);
    CHECK_EQ_U64(in_use(d), 22 * MiB);
    uint64_t s2 = ALLOC(p, 1 * MiB, 0); /* fits in the rest of the page */
    CHECK_EQ_U64(s2, s + 600 * KiB);
    CHECK_EQ_U64(in_use(d), 22 * MiB);
    uint64_t s3 = ALLOC(p, 1 * MiB, 0); /* 424 KiB free + one more 2 MiB page */
    CHECK_EQ_U64(s3, s + 1624 * KiB);
    CHECK_EQ_U64(in_use(d), 24 * MiB);
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 2);

    /* 30 MiB: the free 15 MiB tail plus one more 20 MiB page, mapped right after. */
    uint64_t b = ALLOC(p, 30 * MiB, 0);
    CHECK_EQ_U64(b, a + 5 * MiB);
    CHECK_EQ_U64(in_use(d), 44 * MiB);
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 4);
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 2);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 0);

    /* Another stream: its own segment. Large blocks split down to 512 B remainders. */
    uint64_t c = ALLOC(p, 19 * MiB + 512 * KiB, 7);
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 3);
    CHECK_EQ_U64(in_use(d), 64 * MiB);
    CHECK_EQ_U64(p->allocated, 5 * MiB + 600 * KiB + 2 * MiB + 30 * MiB + 19 * MiB + 512 * KiB);
    uint64_t c2 = ALLOC(p, 2 * MiB - 512 * KiB, 7); /* its 512 KiB tail + a new page */
    CHECK_EQ_U64(c2, c + 19 * MiB + 512 * KiB);
    CHECK_EQ_U64(in_use(d), 84 * MiB);

    FREE(p, a);
    FREE(p, b);
    FREE(p, s);
    FREE(p, s2);
    FREE(p, s3);
    FREE(p, c);
    FREE(p, c2);
    CHECK_EQ_U64(in_use(d), 84 * MiB);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), calls(d, FL_CALL_MAP));
    CHECK_EQ_U64(calls(d, FL_CALL_RELEASE), calls(d, FL_CALL_CREATE));
    CHECK_EQ_U64(calls(d, FL_CALL_ADDR_FREE), 3);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_expandable_oom(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(64 * MiB);
    fli_policy *p = make(&fli_policy_cca_expandable, &cfg, d);

    uint64_t a = ALLOC(p, 30 * MiB, 0);       /* pages 0-1: a [0,30), free [30,40) */
    uint64_t b = ALLOC(p, 5 * MiB, 0);        /* [30,35), free [35,40) */
    CHECK_EQ_U64(b, a + 30 * MiB);
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    FREE(p, a);                               /* page 0 now fully free, page 1 not */
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 2);

    /* 40 MiB needs two more pages (80 > 64): create fails, page 0 is unmapped after
     * a synchronize, and the retry maps two pages after b. */
    uint64_t syncs = calls(d, FL_CALL_SYNC);
    uint64_t c = ALLOC(p, 40 * MiB, 0);
    CHECK_EQ_U64(c, a + 35 * MiB);
    CHECK_EQ_U64(p->retries, 1);
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), 1);
    CHECK_EQ_U64(calls(d, FL_CALL_RELEASE), 2); /* the failed attempt's page and page 0 */
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 2 + 2 + 2);
    CHECK_EQ_U64(calls(d, FL_CALL_MAP), 4);
    CHECK_EQ_U64(counters(d).failed_calls, 1);
    CHECK(calls(d, FL_CALL_SYNC) >= syncs + 2);
    CHECK_EQ_U64(in_use(d), 60 * MiB);

    /* The reservation is 1.125 x 64 MiB in 20 MiB pages: 80 MiB, so the 5 MiB block
     * at [75,80) cannot grow and best fit takes it over [20,30). */
    uint64_t e = ALLOC(p, 4 * MiB, 0);
    CHECK_EQ_U64(e, a + 75 * MiB);
    uint64_t x = 0;
    CHECK_STATUS(p->ops->alloc(p, 30 * MiB, 0, &x), FL_ERR_OOM);
    CHECK_EQ_U64(p->ooms, 1);
    CHECK_POLICY(p);
    /* empty_cache unmaps the one page c's [35,75) covers whole, [40,60); a new page
     * then goes to the lowest unmapped range that fits, [0,20). */
    FREE(p, c);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), 2);
    uint64_t f = ALLOC(p, 20 * MiB, 0);
    CHECK_EQ_U64(f, a);
    CHECK_EQ_U64(in_use(d), 60 * MiB);
    FREE(p, b);
    FREE(p, e);
    FREE(p, f);
    EMPTY(p);
    CHECK_EQ_U64(in_use(d), 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

static void test_expandable_limit(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    cfg.limit = 58 * MiB;
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_cca_expandable, &cfg, d);
    uint64_t a = ALLOC(p, 22 * MiB, 0);  /* two 20 MiB pages */
    uint64_t b = ALLOC(p, 12 * MiB, 0);  /* [22,34): 6 MiB free at the end */
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    /* PyTorch's fraction check passes (40 + 16 <= 58) but the page would not
     * (40 + 20 > 58): the limit is a hard cap, so no page is created. */
    uint64_t x = 0, creates = calls(d, FL_CALL_CREATE);
    CHECK_STATUS(p->ops->alloc(p, 16 * MiB, 0, &x), FL_ERR_OOM);
    CHECK(strstr(fl_last_error(), "58.00 MiB allowed") != NULL);
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), creates);
    CHECK_EQ_U64(in_use(d), 40 * MiB);
    CHECK_POLICY(p);
    FREE(p, b);
    uint64_t c = ALLOC(p, 16 * MiB, 0);  /* fits now: [22,38) */
    CHECK_EQ_U64(c, a + 22 * MiB);
    FREE(p, a);
    FREE(p, c);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* Destroying a policy gives everything back, live blocks included. */
static void test_destroy_live(const fli_policy_ops *ops)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(ops, &cfg, d);
    ALLOC(p, 3000, 0);
    ALLOC(p, 5 * MiB, 1);
    ALLOC(p, 30 * MiB, 2);
    uint64_t a = ALLOC(p, 12 * MiB, 0);
    FREE(p, a);
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* ---- nocache ------------------------------------------------------------------- */

static void test_nocache(void)
{
    fl_config cfg;
    base_cfg(&cfg);
    fl_device *d = sim_dev(0);
    fli_policy *p = make(&fli_policy_nocache, &cfg, d);
    uint64_t a = ALLOC(p, 1000, 0);
    uint64_t b = ALLOC(p, 5 * MiB, 3);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 2);
    CHECK_EQ_U64(p->allocated, 1024 + 5 * MiB);
    FREE(p, a);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 1);
    a = ALLOC(p, 1000, 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), 3);
    EMPTY(p);
    FREE(p, a);
    FREE(p, b);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), 3);
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(p->allocated, 0);
    p->ops->destroy(p);
    fl_device_destroy(d);

    d = sim_dev(8 * MiB);
    p = make(&fli_policy_nocache, &cfg, d);
    uint64_t x = 0;
    CHECK_STATUS(p->ops->alloc(p, 9 * MiB, 0, &x), FL_ERR_OOM);
    CHECK_EQ_U64(p->ooms, 1);
    CHECK_POLICY(p);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* ---- stress: every path, self-checked after every step ------------------------- */

static void stress(const fli_policy_ops *ops, uint64_t seed, uint64_t capacity, bool knobs)
{
    fl_config cfg;
    base_cfg(&cfg);
    if (knobs) {
        cfg.max_split_size = 24 * MiB;
        cfg.roundup_divisions[0] = 4;
        cfg.roundup_divisions[3] = 2;
        if (ops != &fli_policy_cca_expandable) {
            cfg.limit = capacity - 16 * MiB;
            cfg.gc_threshold = 0.6;
        }
    }
    fl_device *d = sim_dev(capacity);
    fli_policy *p = make(ops, &cfg, d);
    fl_rng rng = {seed};
    enum { SLOTS = 96 };
    uint64_t live[SLOTS] = {0};
    uint64_t ooms = 0;
    for (int step = 0; step < 3000; step++) {
        int i = (int)fl_rng_below(&rng, SLOTS);
        if (live[i]) {
            CHECK_OK(p->ops->free(p, live[i], 0, NULL));
            live[i] = 0;
        } else {
            uint64_t r = fl_rng_below(&rng, 10), size;
            if (r < 5)
                size = 1 + fl_rng_below(&rng, 1 * MiB);
            else if (r < 9)
                size = 1 * MiB + fl_rng_below(&rng, 12 * MiB);
            else
                size = 10 * MiB + fl_rng_below(&rng, 40 * MiB);
            uint64_t stream = fl_rng_below(&rng, 3);
            fl_status st = p->ops->alloc(p, size, stream, &live[i]);
            if (st == FL_ERR_OOM) {
                ooms++;
                live[i] = 0;
            } else {
                CHECK_OK(st);
            }
        }
        if (fl_rng_below(&rng, 200) == 0)
            CHECK_OK(p->ops->empty_cache(p));
        if (p->ops->check(p) != 0) {
            fl_test_failures++;
            fprintf(stderr, "stress %s seed %llu step %d: %s\n", ops->name,
                    (unsigned long long)seed, step, fl_last_error());
            break;
        }
    }
    CHECK_EQ_U64(p->ooms, ooms);
    for (int i = 0; i < SLOTS; i++)
        if (live[i])
            CHECK_OK(p->ops->free(p, live[i], 0, NULL));
    CHECK_EQ_U64(p->allocated, 0);
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_POLICY(p);
    CHECK_EQ_U64(in_use(d), 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

int main(void)
{
    test_round();
    test_segment_sizes();
    test_oom_release_retry();
    test_limit();
    test_split_rules();
    test_best_fit();
    test_max_split();
    test_streams();
    test_gc();
    test_misuse(&fli_policy_cca);
    test_misuse(&fli_policy_cca_expandable);
    test_misuse(&fli_policy_nocache);
    test_bad_config();
    test_expandable_growth();
    test_expandable_oom();
    test_expandable_limit();
    test_nocache();
    const fli_policy_ops *ops[] = {&fli_policy_cca, &fli_policy_cca_expandable, &fli_policy_nocache};
    for (int k = 0; k < 3; k++) {
        test_destroy_live(ops[k]);
        stress(ops[k], 0x9e3779b97f4a7c15ull + (uint64_t)k, 0, false);
        stress(ops[k], 0x243f6a8885a308d3ull + (uint64_t)k, 384 * MiB, true);
    }
    return fl_test_done("test_cca");
}
