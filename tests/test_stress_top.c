/* Stress for ThreadSanitizer (the sanitize_tsan suite runs it): eight threads allocate
 * and free on one allocator on the cuda device over the driver double, two read
 * fl_get_stats and run the self-check, one empties the cache (each call publishes), and
 * one reads the published record through its own mapping, all at once. Deterministic
 * per thread; not a benchmark. Invariants are checked while it runs and at the end. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "test_support.h"

static const char fake_path[] = FL_TEST_FAKECUDA;

enum { WORKERS = 8, OPS = 20000, LIVE = 32, STATS_READERS = 2 };

typedef struct worker {
    fl_allocator *a;
    uint64_t seed, stream;
    uint64_t allocs, frees, ooms, errors;
    uint64_t addr[LIVE];
} worker;

static atomic_int workers_done;

static void *work(void *arg)
{
    worker *w = arg;
    fl_rng rng = {w->seed};
    for (int i = 0; i < OPS; i++) {
        int k = (int)fl_rng_below(&rng, LIVE);
        if (w->addr[k]) {
            if (fl_free(w->a, w->addr[k]) != FL_OK)
                w->errors++;
            w->addr[k] = 0;
            w->frees++;
        } else {
            /* Mostly small, one in eight up to 4 MiB: small heaps and page mapping both. */
            uint64_t size = 1 + fl_rng_below(&rng, fl_rng_below(&rng, 8) ? 64 << 10 : 4 << 20);
            fl_status s = fl_alloc(w->a, size, w->stream, &w->addr[k]);
            if (s == FL_OK)
                w->allocs++;
            else if (s == FL_ERR_OOM)
                w->ooms++;
            else
                w->errors++;
            if (s != FL_OK)
                w->addr[k] = 0;
        }
    }
    for (int k = 0; k < LIVE; k++) {
        if (w->addr[k]) {
            if (fl_free(w->a, w->addr[k]) != FL_OK)
                w->errors++;
            w->frees++;
        }
    }
    atomic_fetch_add(&workers_done, 1);
    return NULL;
}

typedef struct observer {
    fl_allocator *a;
    const char *path;   /* the published file (the record reader) */
    uint64_t rounds, errors;
} observer;

static int bad(observer *o, const char *what, uint64_t x, uint64_t y)
{
    if (o->errors++ < 5)
        fprintf(stderr, "%s: %llu vs %llu\n", what, (unsigned long long)x, (unsigned long long)y);
    return 1;
}

/* What must hold in any one set of statistics, and between two in order. */
static void check_stats(observer *o, const fl_stats *s, const fl_stats *prev)
{
    if (s->allocated_bytes.current > s->reserved_bytes.current)
        bad(o, "allocated > reserved", s->allocated_bytes.current, s->reserved_bytes.current);
    if (s->allocated_bytes.current > s->allocated_bytes.peak)
        bad(o, "allocated above its peak", s->allocated_bytes.current, s->allocated_bytes.peak);
    if (s->reserved_bytes.current > s->reserved_bytes.peak)
        bad(o, "reserved above its peak", s->reserved_bytes.current, s->reserved_bytes.peak);
    if (s->allocation.current != s->allocation.allocated - s->allocation.freed)
        bad(o, "live blocks != allocs - frees", s->allocation.current, s->allocation.allocated - s->allocation.freed);
    if (s->requested_bytes.current > s->allocated_bytes.current)
        bad(o, "requested > allocated", s->requested_bytes.current, s->allocated_bytes.current);
    if (!prev)
        return;
    if (s->allocation.allocated < prev->allocation.allocated)
        bad(o, "allocations went back", s->allocation.allocated, prev->allocation.allocated);
    if (s->allocation.freed < prev->allocation.freed)
        bad(o, "frees went back", s->allocation.freed, prev->allocation.freed);
    if (s->num_ooms < prev->num_ooms)
        bad(o, "OOMs went back", s->num_ooms, prev->num_ooms);
    if (s->num_device_alloc < prev->num_device_alloc)
        bad(o, "device allocations went back", s->num_device_alloc, prev->num_device_alloc);
    if (s->reserved_bytes.peak < prev->reserved_bytes.peak)
        bad(o, "reserved peak went back", s->reserved_bytes.peak, prev->reserved_bytes.peak);
}

static void *observe_stats(void *arg)
{
    observer *o = arg;
    fl_stats prev, s;
    int have = 0;
    while (atomic_load(&workers_done) < WORKERS) {
        fl_get_stats(o->a, &s);
        check_stats(o, &s, have ? &prev : NULL);
        prev = s;
        have = 1;
        if (++o->rounds % 32 == 0 && fl_allocator_check(o->a))
            bad(o, "self-check failed under load", 0, 0), fprintf(stderr, "%s\n", fl_last_error());
    }
    return NULL;
}

static void *empty_cache(void *arg)
{
    observer *o = arg;
    while (atomic_load(&workers_done) < WORKERS) {
        if (fl_empty_cache(o->a) != FL_OK)
            bad(o, "empty_cache failed", 0, 0);
        o->rounds++;
        usleep(500);
    }
    return NULL;
}

static void *observe_record(void *arg)
{
    observer *o = arg;
    fli_pub_reader r;
    if (fli_pub_reader_open(o->path, &r) != FL_OK) {
        fprintf(stderr, "%s\n", fl_last_error());
        o->errors++;
        return NULL;
    }
    fli_pub_entry prev, e;
    int have = 0;
    for (int done = 0; !done;) {
        done = atomic_load(&workers_done) == WORKERS;
        if (fli_pub_reader_snapshot(&r, 0, &e) != FL_PUB_WHOLE)
            continue;
        o->rounds++;
        if (e.seq % 2)
            bad(o, "odd seq handed out", e.seq, 0);
        if (have && e.seq < prev.seq)
            bad(o, "seq went back", e.seq, prev.seq);
        if (e.seq)
            check_stats(o, &e.stats, have && prev.seq ? &prev.stats : NULL);
        prev = e;
        have = 1;
    }
    fli_pub_reader_close(&r);
    return NULL;
}

int main(void)
{
    if (!fake_path[0])
        fl_test_skip("the driver double was not built (FAKECUDA_PATH)");
    char dir[] = "/tmp/fl_stress_top.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("FRAGLESS_TOP_DIR", dir, 1);
    setenv("FAKECUDA_CAPACITY", "1G", 1);
    fl_device *d = fl_test_fake_device();
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.oom_report = 0;
    fl_allocator *a = NULL;
    if (d)
        CHECK_OK(fl_allocator_create(&cfg, d, &a));
    if (!a)
        return fl_test_done("test_stress_top");
    char path[128];
    snprintf(path, sizeof path, "%s/fragless.%d.0", dir, (int)getpid());
    struct stat st;
    CHECK(stat(path, &st) == 0);

    worker w[WORKERS];
    observer obs[STATS_READERS + 2];
    pthread_t wt[WORKERS], ot[STATS_READERS + 2];
    memset(w, 0, sizeof w);
    memset(obs, 0, sizeof obs);
    for (int i = 0; i < STATS_READERS + 2; i++) {
        obs[i].a = a;
        obs[i].path = path;
        void *(*fn)(void *) = i < STATS_READERS ? observe_stats : i == STATS_READERS ? empty_cache : observe_record;
        pthread_create(&ot[i], NULL, fn, &obs[i]);
    }
    for (int i = 0; i < WORKERS; i++) {
        w[i].a = a;
        w[i].seed = 0x9e3779b97f4a7c15u * (uint64_t)(i + 1);
        w[i].stream = (uint64_t)(i % 3); /* threads share streams too */
        pthread_create(&wt[i], NULL, work, &w[i]);
    }
    for (int i = 0; i < WORKERS; i++)
        pthread_join(wt[i], NULL);
    for (int i = 0; i < STATS_READERS + 2; i++)
        pthread_join(ot[i], NULL);

    uint64_t allocs = 0, frees = 0, ooms = 0;
    for (int i = 0; i < WORKERS; i++) {
        CHECK_EQ_U64(w[i].errors, 0);
        allocs += w[i].allocs;
        frees += w[i].frees;
        ooms += w[i].ooms;
    }
    for (int i = 0; i < STATS_READERS + 2; i++) {
        CHECK_EQ_U64(obs[i].errors, 0);
        CHECK(obs[i].rounds > 0);
    }
    fprintf(stderr, "test_stress_top: %llu allocations, %llu OOMs, %llu stats reads, %llu empty_cache, "
            "%llu record reads\n", (unsigned long long)allocs, (unsigned long long)ooms,
            (unsigned long long)(obs[0].rounds + obs[1].rounds), (unsigned long long)obs[2].rounds,
            (unsigned long long)obs[3].rounds);

    /* The end: everything freed, counters add up, the self-check passes, and the record
     * published by a last empty_cache is fl_get_stats. */
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_empty_cache(a));
    fl_stats s;
    fl_get_stats(a, &s);
    CHECK_EQ_U64(allocs, frees);
    CHECK_EQ_U64(s.allocation.allocated, allocs);
    CHECK_EQ_U64(s.allocation.freed, frees);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocated_bytes.allocated, s.allocated_bytes.freed);
    CHECK_EQ_U64(s.num_ooms, ooms);
    CHECK(s.allocated_bytes.peak > 0 && s.reserved_bytes.peak >= s.allocated_bytes.peak);
    fli_pub_entry e;
    CHECK_OK(fli_publish_read(path, &e));
    CHECK(memcmp(&e.stats, &s, sizeof s) == 0);
    CHECK_EQ_U64(e.pid, getpid());

    fl_allocator_destroy(a);
    CHECK(stat(path, &st) != 0);
    fl_device_destroy(d);
    rmdir(dir);
    return fl_test_done("test_stress_top");
}
