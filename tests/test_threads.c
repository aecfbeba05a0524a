/* Many threads on one allocator: four allocate and free their own blocks on their own
 * streams while a fifth reads statistics and runs the self-check. Nothing may be lost,
 * overlap or break, for every policy. Also FRAGLESS_CONF from the environment. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

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
        if (++rounds % 64 == 0 && fl_allocator_check(a)) {
            fprintf(stderr, "self-check failed under load: %s\n", fl_last_error());
            observed_errors++;
        }
    }
    return NULL;
}

static void run(const char *policy)
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
    printf("%-15s %d threads: %llu allocations, %llu frees, %llu OOMs\n", policy, THREADS,
           (unsigned long long)allocs, (unsigned long long)frees, (unsigned long long)st.num_ooms);
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

int main(void)
{
    test_limit_every_policy();
    test_env();
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++)
        run(names[i]);
    return fl_test_done("test_threads");
}
