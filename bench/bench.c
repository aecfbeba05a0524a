/* `make bench`, part one: host time per allocation + free pair through the public C API
 * (fl_alloc/fl_free on an fl_allocator, sim device with zero-cost calls: what a frontend
 * pays, the path replay runs too), per trace, beside sebbbi's OffsetAllocator replaying
 * the same operations in the same run (when built with FL_OA_DIR), every allocator's runs
 * interleaved so that machine noise hits all alike; then the threads scaling line. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "fragless.h"
#include "allocator/allocator.h"
#include "replay/replay.h"

#define MAX_TRACES 128
#define MAX_VARIANTS 8
#define OA_TARGET 1.3
#define MIN_PAIRS 40000 /* timed per run and variant */

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int clock_cpu = -1; /* FL_BENCH_CLOCK=cpu, read once in main */
static int bench_warm;      /* FL_BENCH_WARM=1, read once in main (warm_up) */

uint64_t bench_pair_clock_ns(void)
{
    if (clock_cpu <= 0)
        return bench_now_ns();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends dir's files ending in suffix, sorted (directory order is arbitrary). */
static int add_dir(const char *dir, const char *suffix, char **paths, int n)
{
    DIR *d = opendir(dir);
    if (!d)
        return n;
    struct dirent *e;
    int first = n;
    size_t sl = strlen(suffix);
    while ((e = readdir(d)) && n < MAX_TRACES) {
        size_t len = strlen(e->d_name);
        if (len > sl && !strcmp(e->d_name + len - sl, suffix)) {
            paths[n] = malloc(strlen(dir) + len + 2);
            if (!paths[n])
                break;
            sprintf(paths[n++], "%s/%s", dir, e->d_name);
        }
    }
    closedir(d);
    qsort(paths + first, (size_t)(n - first), sizeof *paths, cmp_str);
    return n;
}

/* The trace's allocations and frees, as every allocator here replays them. Recorded
 * failures are left out (the program was refused: nothing to free), and so are
 * allocations of 0 bytes with their frees (fl_alloc refuses size 0, OA has no such block). */
static int load(const char *path, bench_trace *t)
{
    fli_prepared *p;
    if (fli_load_trace(path, NULL, &p) != FL_OK) {
        fprintf(stderr, "fl_bench: %s\n", fl_last_error());
        return -1;
    }
    memset(t, 0, sizeof *t);
    t->name = strdup(p->name);
    t->ops = malloc((p->n_ops ? p->n_ops : 1) * sizeof *t->ops);
    t->n_slots = p->n_slots;
    unsigned char *live = calloc(p->n_slots + 1, 1);
    if (!t->name || !t->ops || !live) {
        fprintf(stderr, "fl_bench: %s: out of host memory\n", path);
        free(live);
        fli_prepared_free(p);
        return -1;
    }
    uint64_t blocks = 0, bytes = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        const fli_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC && op->size > 0) {
            t->ops[t->n_ops++] = (bench_op){op->size, op->stream, op->slot, 0};
            live[op->slot] = 1;
            t->n_allocs++;
            if (op->size > t->max_size)
                t->max_size = op->size;
            bytes += (op->size + 511) & ~(uint64_t)511;
            if (++blocks > t->max_live)
                t->max_live = blocks;
            if (bytes > t->peak_live)
                t->peak_live = bytes;
        } else if (op->kind == FL_EV_FREE && live[op->slot]) {
            t->ops[t->n_ops++] = (bench_op){0, op->stream, op->slot, 1};
            live[op->slot] = 0;
            blocks--;
            bytes -= (op->size + 511) & ~(uint64_t)511;
        }
    }
    free(live);
    fli_prepared_free(p);
    return 0;
}

static void trace_free(bench_trace *t)
{
    free(t->name);
    free(t->ops);
}

/* FL_BENCH_WARM=1: the sequence once through fl_alloc/fl_free, untimed, on the allocator
 * about to be timed, then the blocks it left live freed: the timed replay finds the heaps
 * grown and the pages mapped, so the figure is the steady state without the warm-up that
 * a fresh allocator pays (what warm-up costs is the difference to the default). */
static int warm_up(const bench_trace *t, const char *policy, fl_allocator *a, uint64_t *addr)
{
    unsigned char *live = calloc(t->n_slots + 1, 1);
    if (!live) {
        fprintf(stderr, "fl_bench: %s under %s (warm-up pass): out of host memory\n", t->name, policy);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < t->n_ops && !rc; i++) {
        const bench_op *op = &t->ops[i];
        if (op->is_free ? fl_free(a, addr[op->slot]) != FL_OK
                        : fl_alloc(a, op->size, op->stream, &addr[op->slot]) != FL_OK) {
            fprintf(stderr, "fl_bench: %s under %s (warm-up pass), operation %zu: %s\n", t->name, policy, i,
                    fl_last_error());
            rc = -1;
        }
        live[op->slot] = !op->is_free;
    }
    for (uint32_t slot = 0; slot <= t->n_slots && !rc; slot++)
        if (live[slot] && fl_free(a, addr[slot]) != FL_OK) {
            fprintf(stderr, "fl_bench: %s under %s (warm-up pass), freeing slot %u: %s\n", t->name, policy, slot,
                    fl_last_error());
            rc = -1;
        }
    free(live);
    return rc;
}

/* The sequence through fl_alloc/fl_free on a fresh allocator under `policy`: the loop's
 * time in *ns. The loop is the OffsetAllocator shim's, call for call. caches: 1, the thread
 * caches turned on (what each of several threads pays per operation); -1, the policy's
 * own alloc/free called directly, without the allocator object (what its layers cost is
 * the difference to fl_alloc; not a path any frontend takes). */
static int api_replay(const bench_trace *t, const char *policy, int caches, uint64_t *ns)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    for (int c = 0; c < FL_CALL_COUNT; c++)
        sp.cost_us[c] = sp.cost_us_more[c] = 0;
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    cfg.oom_report = 0;
    cfg.publish = 0;
    fl_device *d = NULL;
    fl_allocator *a = NULL;
    uint64_t *addr = calloc(t->n_slots + 1, sizeof *addr);
    if (!addr || fl_sim_device_create(&sp, &d) != FL_OK || fl_allocator_create(&cfg, d, &a) != FL_OK ||
        (caches > 0 && fli_allocator_threads(a) != FL_OK)) {
        fprintf(stderr, "fl_bench: %s under %s: %s\n", t->name, policy, addr ? fl_last_error() : "out of host memory");
        free(addr);
        fl_allocator_destroy(a);
        fl_device_destroy(d);
        return -1;
    }
    if (bench_warm && warm_up(t, policy, a, addr) != 0) {
        free(addr);
        fl_allocator_destroy(a);
        fl_device_destroy(d);
        return -1;
    }
    const bench_op *ops = t->ops;
    int rc = 0;
    fli_policy *p = caches < 0 ? fli_allocator_policy(a) : NULL;
    uint64_t requested; /* what fl_free asks of the policy too (the fragless policy's short path) */
    uint64_t t0 = bench_pair_clock_ns();
    for (size_t i = 0; i < t->n_ops && p; i++) {
        const bench_op *op = &ops[i];
        if (op->is_free ? p->ops->free(p, addr[op->slot], 0, &requested) != FL_OK
                        : p->ops->alloc(p, op->size, op->stream, &addr[op->slot]) != FL_OK) {
            fprintf(stderr, "fl_bench: %s under %s (policy alone), operation %zu: %s\n", t->name, policy, i,
                    fl_last_error());
            rc = -1;
            break;
        }
    }
    for (size_t i = 0; i < t->n_ops && !p; i++) {
        const bench_op *op = &ops[i];
        if (op->is_free ? fl_free(a, addr[op->slot]) != FL_OK
                        : fl_alloc(a, op->size, op->stream, &addr[op->slot]) != FL_OK) {
            fprintf(stderr, "fl_bench: %s under %s, operation %zu: %s\n", t->name, policy, i, fl_last_error());
            rc = -1;
            break;
        }
    }
    *ns = bench_pair_clock_ns() - t0;
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    free(addr);
    return rc;
}

typedef struct variant {
    const char *label;
    const char *policy; /* NULL: OffsetAllocator */
    int on;             /* in FL_BENCH_ONLY */
    int caches;         /* thread caches on */
} variant;

/* FL_BENCH_ONLY=fl_alloc,threads,... runs those parts alone (a profiler's run); unset: all. */
static int selected(const char *label)
{
    const char *only = getenv("FL_BENCH_ONLY");
    if (!only || !*only)
        return 1;
    size_t n = strlen(label);
    for (const char *p = only; (p = strstr(p, label)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || !p[n]))
            return 1;
    return 0;
}

/* One run: the trace replayed on fresh allocators until MIN_PAIRS pairs are timed, so that
 * a short trace's figure is not one fraction of a millisecond. */
static int measure(const variant *v, const bench_trace *t, double *ns_per_pair)
{
    uint64_t reps = t->n_allocs ? (MIN_PAIRS + t->n_allocs - 1) / t->n_allocs : 1, total = 0;
    for (uint64_t rep = 0; rep < reps; rep++) {
        uint64_t ns = 0;
        if (v->policy) {
            if (api_replay(t, v->policy, v->caches, &ns) != 0)
                return -1;
        } else {
#ifdef FL_BENCH_OA
            char err[256];
            if (bench_oa_replay(t, &ns, err, sizeof err) != 0) {
                fprintf(stderr, "fl_bench: %s under OffsetAllocator: %s\n", t->name, err);
                return -1;
            }
#endif
        }
        total += ns;
    }
    *ns_per_pair = t->n_allocs ? (double)total / (double)(reps * t->n_allocs) : 0;
    return 0;
}

static void print_ns(int width, double ns)
{
    if (ns < 0)
        printf(" %*s", width, "-");
    else
        printf(" %*.1f", width, ns);
}

int main(int argc, char **argv)
{
    int runs = 11;
    const char *env = getenv("FL_BENCH_RUNS");
    if (env)
        runs = atoi(env);
    const char *clk = getenv("FL_BENCH_CLOCK");
    clock_cpu = clk && !strcmp(clk, "cpu");
    if (clk && *clk && !clock_cpu && strcmp(clk, "wall")) {
        fprintf(stderr, "fl_bench: FL_BENCH_CLOCK must be wall or cpu\n");
        return 1;
    }
    const char *warm = getenv("FL_BENCH_WARM");
    bench_warm = warm && !strcmp(warm, "1");
    if (warm && *warm && !bench_warm && strcmp(warm, "0")) {
        fprintf(stderr, "fl_bench: FL_BENCH_WARM must be 0 or 1, not '%s'\n", warm);
        return 1;
    }
    if (runs < 1 || runs > BENCH_MAX_RUNS) {
        fprintf(stderr, "fl_bench: FL_BENCH_RUNS must be 1..%d\n", BENCH_MAX_RUNS);
        return 1;
    }
    char *paths[MAX_TRACES];
    int n = 0;
    for (int i = 1; i < argc && n < MAX_TRACES; i++)
        paths[n++] = strdup(argv[i]);
    if (n == 0) {
        n = add_dir("examples", ".csv", paths, n);
        int before = n;
        n = add_dir("../shared/traces", ".csv", paths, n);
        n = add_dir("../shared/traces/hard", ".csv", paths, n);
        n = add_dir("../shared/traces/snapshots", ".pickle", paths, n);
        if (n == before)
            printf("note: ../shared/traces is absent: benchmarking the example trace only\n");
    }
    if (n == 0) {
        fprintf(stderr, "fl_bench: no traces (give paths, or run it from the checkout's root)\n");
        return 1;
    }

    /* The headline first, then the yardstick, then the other policies through the same path. */
    variant v[MAX_VARIANTS];
    int nv = 0, oa = -1;
    v[nv++] = (variant){"fl_alloc", "fragless", 0, 0};
#ifdef FL_BENCH_OA
    oa = nv;
    v[nv++] = (variant){"OA", NULL, 0, 0};
#endif
    for (const char *const *p = fl_policy_names(); *p && nv < MAX_VARIANTS; p++)
        if (strcmp(*p, "fragless"))
            v[nv++] = (variant){*p, *p, 0, 0};
    if (nv < MAX_VARIANTS)
        v[nv++] = (variant){"fl+threads", "fragless", 0, 1};
    if (nv < MAX_VARIANTS)
        v[nv++] = (variant){"policy", "fragless", 0, -1};
    for (int k = 0; k < nv; k++)
        v[k].on = selected(v[k].label);

    printf("host time per allocation + free pair (ns, %s), median of %d interleaved runs; sim device, zero-cost calls\n",
           clock_cpu ? "the thread's CPU time: FL_BENCH_CLOCK=cpu" : "wall clock", runs);
    printf("  fl_alloc: the fragless policy through fl_alloc/fl_free (the headline); other policies through the same calls;\n"
           "  fl+threads: fl_alloc in threads mode (the fragless policy's stream-local operations: what each thread\n"
           "    pays once several share an allocator);\n"
           "  policy: the fragless policy's own calls, without the allocator object (fl_alloc - policy: what its layers cost);\n"
           "  a run replays a trace on fresh allocators until %d pairs are timed\n", MIN_PAIRS);
    if (bench_warm)
        printf("  FL_BENCH_WARM=1: each allocator replays the trace once untimed (then frees what it left live)\n"
               "    before the timed replay: the steady state without warm-up (OA is timed fresh as always)\n");
#ifdef FL_BENCH_OA
    printf("  OA: sebbbi's OffsetAllocator (%s) on the same operations, sizes in 512 B units; target fl_alloc/OA <= %.1f\n",
           FL_BENCH_OA_DIR, OA_TARGET);
#endif
    printf("%-32s %8s %9s %7s %8s", "trace", "pairs", "fl_alloc", "OA", "fl/OA");
    for (int k = 0; k < nv; k++)
        if (k && k != oa)
            printf(" %15s", v[k].label);
    printf("\n");

    bench_trace first;
    int have_first = 0, met = 0, measured = 0;
    double worst = 0, log_sum = 0;
    for (int i = 0; i < n; i++) {
        bench_trace t;
        if (load(paths[i], &t) != 0)
            return 2;
        double ns[MAX_VARIANTS][BENCH_MAX_RUNS], med[MAX_VARIANTS];
        for (int r = 0; r < runs; r++)
            for (int j = 0; j < nv; j++) {
                int k = (j + r) % nv; /* each variant takes each place in the order in turn */
                if (v[k].on && measure(&v[k], &t, &ns[k][r]) != 0)
                    return 4;
            }
        for (int k = 0; k < nv; k++)
            med[k] = v[k].on ? bench_median(ns[k], runs) : -1;
        printf("%-32s %8llu", t.name, (unsigned long long)t.n_allocs);
        print_ns(9, med[0]);
        if (oa >= 0 && med[oa] > 0 && med[0] > 0) {
            double ratio = med[0] / med[oa];
            printf(" %7.1f %8.2f", med[oa], ratio);
            measured++;
            met += ratio <= OA_TARGET;
            worst = ratio > worst ? ratio : worst;
            log_sum += log2(ratio);
        } else {
            print_ns(7, oa >= 0 ? med[oa] : -1);
            printf(" %8s", "-");
        }
        for (int k = 0; k < nv; k++)
            if (k && k != oa)
                print_ns(15, med[k]);
        printf("\n");
        fflush(stdout);
        if (!have_first) {
            first = t;
            have_first = 1;
        } else {
            trace_free(&t);
        }
    }
    if (measured)
        printf("fl_alloc/OA: %d of %d traces within %.1fx; worst %.2f, geometric mean %.2f\n", met, measured, OA_TARGET,
               worst, exp2(log_sum / measured));
    else if (oa < 0)
        printf("OA column absent: fl_bench was built without FL_OA_DIR. Get sebbbi's OffsetAllocator anywhere (e.g.\n"
               "  git clone https://github.com/sebbbi/OffsetAllocator /tmp/oa) and run `make bench OA_DIR=/tmp/oa`.\n");

    int rc = selected("threads") ? bench_threads(&first, runs) : 0;
    trace_free(&first);
    for (int i = 0; i < n; i++)
        free(paths[i]);
    return rc ? 4 : 0;
}
