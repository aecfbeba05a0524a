/* Device faults, SQLite-style: for every policy and workload, a clean run counts the
 * device calls N_total; then for every N in 1..N_total the Nth call fails once (the run
 * must go on and end with nothing lost), and every call from the Nth on fails (ops must
 * fail cleanly; once the fault is cleared the allocator must recover). The self-check
 * runs after every operation. The device layer's injector (fl_device_set_fault), on the
 * sim device and on the cuda device over the driver double. One workload runs on 64 KiB
 * pages: the same sizes span 32 times as many pages, so fragless's chunks (16 pages),
 * mapped runs and their reclaim meet the faults, which a 24 MiB device of 2 MiB pages
 * never reaches. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "replay/replay.h"
#include "test_support.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

static const char fake_path[] = FL_TEST_FAKECUDA;

/* ---- workloads ----------------------------------------------------------------------- */

typedef struct workload {
    const char *name;
    fli_op *ops;               /* slots are never reused (as fli_prepare makes them) */
    size_t n_ops;
    uint32_t n_slots;
    uint64_t capacity;        /* device capacity: tight, so reclaim and OOM paths run */
    uint64_t granularity;     /* the sim device's page size (0: its default, 2 MiB) */
    fli_prepared *prep;        /* owner of ops when read from a trace */
} workload;

/* Seeded random allocations and frees on two streams, 512 B to 3 pages (log-uniform),
 * about `live` blocks alive at once. */
static workload generated(const char *name, uint64_t seed, size_t n_ops, int live, uint64_t capacity)
{
    workload w = {name, calloc(n_ops, sizeof(fli_op)), n_ops, 0, capacity, 0, NULL};
    uint32_t *alive = calloc(n_ops, sizeof *alive);
    uint64_t *sizes = calloc(n_ops, sizeof *sizes);
    if (!w.ops || !alive || !sizes) {
        fprintf(stderr, "no host memory for the workload\n");
        exit(1);
    }
    fl_rng r = {seed};
    int n_alive = 0;
    for (size_t i = 0; i < n_ops; i++) {
        fli_op *op = &w.ops[i];
        if (n_alive && (n_alive >= 2 * live || fl_rng_below(&r, 2 * (uint64_t)live) < (uint64_t)n_alive)) {
            uint32_t k = (uint32_t)fl_rng_below(&r, (uint64_t)n_alive);
            *op = (fli_op){0, 0, alive[k], FL_EV_FREE};
            op->size = sizes[alive[k]];
            alive[k] = alive[--n_alive];
        } else {
            /* 2^9 .. 2^22.6 bytes, log-uniform, then an odd remainder. */
            uint64_t bits = 9 + fl_rng_below(&r, 14);
            uint64_t size = (UINT64_C(1) << bits) + fl_rng_below(&r, UINT64_C(1) << bits);
            *op = (fli_op){size, 1 + fl_rng_below(&r, 2), w.n_slots, FL_EV_ALLOC};
            sizes[w.n_slots] = size;
            alive[n_alive++] = w.n_slots++;
        }
    }
    free(alive);
    free(sizes);
    return w;
}

/* The first `events` events of a CSV trace, prepared as replay prepares it; capacity
 * `slack` x its peak of live bytes, in whole 2 MiB pages. */
static int from_trace(const char *name, const char *path, size_t events, double slack, workload *w)
{
    fli_trace t;
    if (fli_trace_read_csv(path, &t) != FL_OK) {
        fprintf(stderr, "%s: %s\n", path, fl_last_error());
        fli_trace_free(&t);
        return 0;
    }
    if (t.n > events)
        t.n = events;
    fli_prepared *p = NULL;
    fl_status s = fli_prepare(&t, &p);
    fli_trace_free(&t);
    if (s != FL_OK) {
        fprintf(stderr, "%s: %s\n", path, fl_last_error());
        return 0;
    }
    uint64_t cap = (uint64_t)((double)p->peak_live * slack);
    *w = (workload){name, p->ops, p->n_ops, p->n_slots, (cap + 2 * MiB - 1) / (2 * MiB) * (2 * MiB), 0, p};
    return 1;
}

static void workload_free(workload *w)
{
    if (w->prep)
        fli_prepared_free(w->prep);
    else
        free(w->ops);
}

/* ---- devices and the fault plan ------------------------------------------------------ */

typedef enum { FAULT_NONE, FAULT_ONCE, FAULT_FROM } fault_mode;

typedef struct backend {
    const char *name;
    /* A fresh device of `capacity` bytes. */
    fl_device *(*make)(uint64_t capacity, uint64_t granularity);
} backend;

static fl_device *sim_make(uint64_t capacity, uint64_t granularity)
{
    return fl_test_sim(capacity, granularity);
}

/* The double, loaded once and kept (its state outlives each device made on it). */
static void (*fake_reset)(void);

static fl_device *cuda_make(uint64_t capacity, uint64_t granularity)
{
    (void)granularity; /* the double's own */
    char cap[32];
    snprintf(cap, sizeof cap, "%llu", (unsigned long long)capacity);
    setenv("FAKECUDA_CAPACITY", cap, 1);
    fake_reset(); /* re-reads the environment; nothing of an earlier device survives */
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = fake_path;
    fl_device *d = NULL;
    if (fl_cuda_device_create(&p, &d) != FL_OK) {
        fprintf(stderr, "cuda device on the double: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

/* The device's own calls since the plan was armed. */
static uint64_t calls_since(const fl_device *d, uint64_t base)
{
    fl_device_counters c = counters(d);
    return fl_device_total_calls(&c) - base;
}

/* Arms the plan: the nth device call from now on fails once / from then on. Returns the
 * calls made before it. */
static uint64_t arm(fl_device *d, fault_mode m, uint64_t n)
{
    uint64_t base = calls_since(d, 0);
    CHECK_OK(fl_device_set_fault(d, m == FAULT_ONCE ? base + n : 0, m == FAULT_FROM ? base + n : 0));
    return base;
}

/* ---- one run ------------------------------------------------------------------------ */

typedef struct run_result {
    uint64_t calls;           /* device calls the run made (allocator creation included) */
    uint64_t end_in_use;      /* after everything was freed and the cache emptied */
    uint64_t ooms, errors;    /* operations refused with OOM / with another error */
} run_result;

/* Failures printed: the first two of a run, in the first six bad runs of a loop. */
static int reported_runs, reported_in_run;

#define FAIL_RUN(...)                                                                  \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if (fl_test_failures++ == failures0)                                           \
            reported_runs++;                                                           \
        if (reported_runs <= 6 && reported_in_run++ < 2) {                             \
            fprintf(stderr, "%s/%s/%s %s N=%llu: ", b->name, policy, w->name,          \
                    mode == FAULT_ONCE ? "once" : mode == FAULT_FROM ? "from" : "clean", \
                    (unsigned long long)n);                                            \
            fprintf(stderr, __VA_ARGS__);                                              \
            fprintf(stderr, "\n");                                                     \
        }                                                                              \
    } while (0)

typedef struct live_block { uint64_t addr, size; } live_block;

static int by_addr(const void *x, const void *y)
{
    const live_block *a = x, *b = y;
    return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* Live blocks must not overlap: returns 0 when they do not. */
static int overlapping(const uint64_t *addr, const uint64_t *size, uint32_t n_slots, live_block *scratch)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < n_slots; i++)
        if (addr[i])
            scratch[n++] = (live_block){addr[i], size[i]};
    qsort(scratch, n, sizeof *scratch, by_addr);
    for (uint32_t i = 1; i < n; i++)
        if (scratch[i - 1].addr + scratch[i - 1].size > scratch[i].addr)
            return 1;
    return 0;
}

/* Runs the workload once with the plan (mode, n) and checks everything the issue asks
 * for; returns 0 when a check failed. clean_end: a clean run's end_in_use (ignored for
 * the clean run itself). */
static int run_one(backend *b, const char *policy, const workload *w, fault_mode mode, uint64_t n,
                   uint64_t clean_end, run_result *rr)
{
    memset(rr, 0, sizeof *rr);
    int failures0 = fl_test_failures;
    reported_in_run = 0;
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    fl_device *d = b->make(w->capacity, w->granularity);
    uint64_t base = arm(d, mode, n);

    fl_allocator *a = NULL;
    fl_status s = fl_allocator_create(&cfg, d, &a);
    if (s != FL_OK) {
        /* A failed creation holds nothing; the next one must work. */
        if (s != FL_ERR_DEVICE && s != FL_ERR_OOM)
            FAIL_RUN("allocator create: %s: %s", fl_status_str(s), fl_last_error());
        if (in_use(d) != 0)
            FAIL_RUN("failed allocator create left %llu bytes in use", (unsigned long long)in_use(d));
        CHECK_OK(fl_device_set_fault(d, 0, 0));
        if ((s = fl_allocator_create(&cfg, d, &a)) != FL_OK) {
            FAIL_RUN("allocator create after the fault: %s", fl_last_error());
            fl_device_destroy(d);
            return 0;
        }
    }
    uint64_t *addr = calloc(w->n_slots ? w->n_slots : 1, sizeof *addr);
    uint64_t *size = calloc(w->n_slots ? w->n_slots : 1, sizeof *size);
    live_block *scratch = calloc(w->n_slots ? w->n_slots : 1, sizeof *scratch);
    if (!addr || !size || !scratch) {
        fprintf(stderr, "no host memory\n");
        exit(1);
    }
    uint64_t device_errors = 0;
    for (size_t i = 0; i < w->n_ops && fl_test_failures == failures0; i++) {
        const fli_op *op = &w->ops[i];
        fli_clear_error();
        if (op->kind == FL_EV_FREE) {
            if (!addr[op->slot])
                continue; /* its allocation failed */
            s = fl_free(a, addr[op->slot]);
            if (s == FL_OK)
                addr[op->slot] = 0;
            else if (s == FL_ERR_DEVICE)
                device_errors++; /* still live: freed again at the end */
            else
                FAIL_RUN("op %zu: free of 0x%llx: %s: %s", i, (unsigned long long)addr[op->slot],
                         fl_status_str(s), fl_last_error());
        } else {
            uint64_t p = 0;
            s = fl_alloc(a, op->size, op->stream, &p);
            if (s == FL_OK) {
                if (p == 0 || p % 512)
                    FAIL_RUN("op %zu: address 0x%llx", i, (unsigned long long)p);
                if (op->kind == FL_EV_ALLOC_FAIL) {
                    if ((s = fl_free(a, p)) == FL_ERR_DEVICE) {
                        addr[op->slot] = p; /* freed at the end */
                        size[op->slot] = op->size;
                        device_errors++;
                    } else if (s != FL_OK) {
                        FAIL_RUN("op %zu: free of 0x%llx: %s", i, (unsigned long long)p, fl_last_error());
                    }
                } else {
                    addr[op->slot] = p;
                    size[op->slot] = op->size;
                }
            } else if (s == FL_ERR_OOM) {
                rr->ooms++;
            } else if (s == FL_ERR_DEVICE) {
                device_errors++;
            } else {
                FAIL_RUN("op %zu: alloc of %llu: %s: %s", i, (unsigned long long)op->size,
                         fl_status_str(s), fl_last_error());
            }
            if ((s == FL_ERR_OOM || s == FL_ERR_DEVICE) && !fl_last_error()[0])
                FAIL_RUN("op %zu: alloc of %llu: %s with no message", i, (unsigned long long)op->size,
                         fl_status_str(s));
        }
        if (s == FL_ERR_DEVICE && mode == FAULT_ONCE && !strstr(fl_last_error(), "injected failure"))
            FAIL_RUN("op %zu: the message does not say the failure was injected: %s", i, fl_last_error());
        /* Now and then the cache goes back: release paths under faults. */
        if (i % 61 == 60 && (s = fl_empty_cache(a)) != FL_OK) {
            if (s == FL_ERR_DEVICE)
                device_errors++;
            else
                FAIL_RUN("op %zu: empty_cache: %s: %s", i, fl_status_str(s), fl_last_error());
        }
        if (fl_allocator_check(a))
            FAIL_RUN("op %zu (%s %llu): self-check: %s", i, op->kind == FL_EV_FREE ? "free" : "alloc",
                     (unsigned long long)op->size, fl_last_error());
    }
    if (overlapping(addr, size, w->n_slots, scratch))
        FAIL_RUN("live blocks overlap");
    /* One injected failure makes at most one operation fail with a device error. */
    if (mode == FAULT_NONE && device_errors)
        FAIL_RUN("%llu device errors with no fault", (unsigned long long)device_errors);
    if (mode == FAULT_ONCE && device_errors > 1)
        FAIL_RUN("one fault, %llu operations failed with device errors", (unsigned long long)device_errors);
    rr->errors = device_errors;
    rr->calls = calls_since(d, base);

    if (mode == FAULT_FROM) {
        /* Recovery: with the fault gone, allocations work again. */
        CHECK_OK(fl_device_set_fault(d, 0, 0));
        uint64_t p[3] = {0, 0, 0}, sz[3] = {512, 300 * KiB, 3 * MiB};
        for (int k = 0; k < 3; k++)
            if ((s = fl_alloc(a, sz[k], 1, &p[k])) != FL_OK && s != FL_ERR_OOM)
                FAIL_RUN("after the fault cleared: alloc of %llu: %s", (unsigned long long)sz[k], fl_last_error());
        for (int k = 0; k < 3; k++)
            if (p[k] && fl_free(a, p[k]) != FL_OK)
                FAIL_RUN("after the fault cleared: free of 0x%llx: %s", (unsigned long long)p[k], fl_last_error());
    }
    /* Everything goes back; the device holds what a clean run's does. */
    for (uint32_t k = 0; k < w->n_slots; k++)
        if (addr[k] && (s = fl_free(a, addr[k])) != FL_OK)
            FAIL_RUN("final free of 0x%llx: %s: %s", (unsigned long long)addr[k], fl_status_str(s), fl_last_error());
    if (mode == FAULT_FROM) {
        /* With nothing live, every size fits again. */
        /* (1 MiB: cca's large pool maps 20 MiB at once, more than the small workloads' device.) */
        uint64_t p = 0;
        if ((s = fl_alloc(a, 1 * MiB, 2, &p)) != FL_OK)
            FAIL_RUN("after the fault cleared, nothing live: alloc of 1 MiB: %s", fl_last_error());
        else if (fl_free(a, p) != FL_OK)
            FAIL_RUN("after the fault cleared: free: %s", fl_last_error());
    }
    if ((s = fl_empty_cache(a)) != FL_OK)
        FAIL_RUN("final empty_cache: %s: %s", fl_status_str(s), fl_last_error());
    if (fl_allocator_check(a))
        FAIL_RUN("self-check at the end: %s", fl_last_error());
    fl_stats st;
    fl_get_stats(a, &st);
    if (st.allocated_bytes.current != 0)
        FAIL_RUN("%llu bytes allocated after freeing everything", (unsigned long long)st.allocated_bytes.current);
    rr->end_in_use = in_use(d);
    if (mode != FAULT_NONE && rr->end_in_use != clean_end)
        FAIL_RUN("device memory in use at the end: %llu, a clean run's %llu (leaked)",
                 (unsigned long long)rr->end_in_use, (unsigned long long)clean_end);
    fl_allocator_destroy(a);
    if (in_use(d) != 0)
        FAIL_RUN("%llu bytes still in use after destroy", (unsigned long long)in_use(d));
    fl_device_destroy(d);
    free(addr);
    free(size);
    free(scratch);
    return fl_test_failures == failures0;
}

/* Operations one loop may run per mode (with the self-check after each): about 10 s
 * on the project's 2-core machine for the slowest policy. */
#define FAULT_OP_BUDGET 600000

/* Every N, both modes; stride > 1 only to keep the time bounded (printed). */
static void fault_loop(backend *b, const char *policy, const workload *w, uint64_t max_runs)
{
    run_result clean, r;
    reported_runs = 0;
    if (!run_one(b, policy, w, FAULT_NONE, 0, 0, &clean))
        return;
    /* The time goes in ops x runs: a long workload gets fewer fault points. */
    if (max_runs > FAULT_OP_BUDGET / w->n_ops)
        max_runs = FAULT_OP_BUDGET / w->n_ops;
    uint64_t total = clean.calls, stride = total > max_runs ? (total + max_runs - 1) / max_runs : 1;
    uint64_t once = 0, from = 0, errs = 0, bad = 0;
    double t0 = (double)clock();
    for (uint64_t n = 1; n <= total; n += stride) {
        bad += !run_one(b, policy, w, FAULT_ONCE, n, clean.end_in_use, &r);
        errs += r.errors;
        once++;
        bad += !run_one(b, policy, w, FAULT_FROM, n, clean.end_in_use, &r);
        from++;
    }
    printf("%-5s %-15s %-14s ops %6zu  calls %6llu  clean ooms %4llu  stride %3llu  injected: once %5llu (%llu op errors) from %5llu  bad runs %llu  %.1f s\n",
           b->name, policy, w->name, w->n_ops, (unsigned long long)total, (unsigned long long)clean.ooms,
           (unsigned long long)stride, (unsigned long long)once, (unsigned long long)errs,
           (unsigned long long)from, (unsigned long long)bad, ((double)clock() - t0) / CLOCKS_PER_SEC);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    /* argv[1]: a policy to run alone (debugging). */
    const char *only = argc > 1 ? argv[1] : NULL;
    uint64_t max_runs = argc > 2 ? strtoull(argv[2], NULL, 10) : UINT64_MAX;
    backend sim = {"sim", sim_make};
    workload wl[4];
    int n_wl = 0;
    wl[n_wl++] = generated("random-2s", 42, 400, 12, 24 * MiB);
    wl[n_wl] = generated("random-64k", 11, 400, 12, 24 * MiB); /* 384 pages of 64 KiB */
    wl[n_wl++].granularity = 64 * KiB;
    wl[n_wl++] = generated("random-small", 7, 300, 24, 12 * MiB);
    if (from_trace("encoder-2000", FL_SOURCE_DIR "/examples/encoder_varlen.csv", 2000, 1.05, &wl[n_wl]))
        n_wl++;
    else
        CHECK(!"examples/encoder_varlen.csv could not be read");
    for (const char *const *p = fl_policy_names(); *p; p++)
        if (!only || !strcmp(only, *p))
            for (int k = 0; k < n_wl; k++)
                fault_loop(&sim, *p, &wl[k], max_runs);

    void *lib = fl_test_fakecuda();
    if (lib && fl_test_sym(lib, "fakecuda_reset", &fake_reset)) {
        backend cuda = {"cuda", cuda_make};
        workload cw = generated("random-cuda", 3, 150, 8, 24 * MiB);
        for (const char *const *p = fl_policy_names(); *p; p++)
            if (!only || !strcmp(only, *p))
                fault_loop(&cuda, *p, &cw, max_runs);
        workload_free(&cw);
    } else {
        printf("cuda: the driver double is not available; skipped\n");
    }
    for (int k = 0; k < n_wl; k++)
        workload_free(&wl[k]);
    return fl_test_done("test_faults");
}
