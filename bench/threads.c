/* `make bench`, the threads scaling line: one allocator (fragless policy, sim device with
 * zero-cost calls) serving one thread on one stream, then two threads on two streams at
 * the same time, the same total work: million pairs per second of wall time for each and
 * their ratio (target: two threads >= 1.7x one). Beside them, to tell the parts apart:
 * two threads with an allocator each (this machine's ceiling), and one thread alone in
 * threads mode (what the stream-local path costs by itself). A benchmark, not a test: it checks
 * nothing. The figure is sound only when each thread had a CPU of its own while its phase
 * ran: each worker measures its own CPU time, and the ratio is the median over the runs
 * in which every thread of both phases was running at least 90% of its phase's wall time
 * (on a machine busy with other work, say so instead of printing a figure). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "bench.h"
#include "fragless.h"

#define THREADS_TARGET 1.7
/* Pairs each thread replays per timed phase: enough that the phase (~10 ms and more)
 * dwarfs thread start-up and the clock. */
#define PAIRS_PER_THREAD 100000

typedef struct worker {
    fl_allocator *a;
    const bench_trace *t;
    const uint32_t *end_live; /* slots still live when the trace ends */
    uint32_t n_end_live;
    uint64_t stream;          /* every operation of this thread goes to its own stream */
    int reps;
    uint64_t *addr;           /* the thread's own address table */
    atomic_int *go;           /* 0: wait, 1: run, -1: give up */
    atomic_int *ready;        /* workers done with their untimed replay */
    uint64_t cpu_ns;          /* the thread's CPU time during its timed work */
    int failed;
    char err[256];
} worker;

/* The trace `reps` times on the worker's stream; the blocks the trace leaves live are
 * freed after each time, so the next starts from the same state. */
static int run_reps(worker *w, int reps)
{
    const bench_op *ops = w->t->ops;
    size_t n_ops = w->t->n_ops;
    for (int rep = 0; rep < reps; rep++) {
        for (size_t i = 0; i < n_ops; i++) {
            const bench_op *op = &ops[i];
            if (op->is_free ? fl_free(w->a, w->addr[op->slot]) != FL_OK
                            : fl_alloc(w->a, op->size, w->stream, &w->addr[op->slot]) != FL_OK) {
                snprintf(w->err, sizeof w->err, "stream %llu, operation %zu: %s", (unsigned long long)w->stream, i,
                         fl_last_error());
                return -1;
            }
        }
        for (uint32_t k = 0; k < w->n_end_live; k++)
            if (fl_free(w->a, w->addr[w->end_live[k]]) != FL_OK) {
                snprintf(w->err, sizeof w->err, "stream %llu, end of the trace: %s", (unsigned long long)w->stream,
                         fl_last_error());
                return -1;
            }
    }
    return 0;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The worker's own untimed replay first (its thread's cache warms up as the timed ones
 * will find it), then the timed ones once every worker is ready. */
static void *worker_main(void *arg)
{
    worker *w = arg;
    int go;
    w->failed = run_reps(w, 1) != 0;
    atomic_fetch_add(w->ready, 1);
    while (!(go = atomic_load(w->go)))
        sched_yield();
    if (go > 0 && !w->failed) {
        uint64_t c0 = thread_cpu_ns();
        w->failed = run_reps(w, w->reps) != 0;
        w->cpu_ns = thread_cpu_ns() - c0;
    }
    return NULL;
}

/* One timed phase on a fresh allocator (mode SHARED), one per thread (SEPARATE), or one
 * in threads mode for a single thread (LOCAL_ONE): `threads` threads, `total_reps` traces in all.
 * Each worker replays the trace once untimed first, so that both phases start warm.
 * *mpairs: million pairs per second of wall time; *busy: the CPUs the process used
 * (its CPU time over the wall time); *least: the smallest share of the wall time any
 * worker thread spent running; *cached: the share of the timed allocations made without
 * the allocator's lock (stream-local operations, thread caches); *refilled: of the rest,
 * those that took it only for room under the peaks (local_refill). With two threads the
 * threads mode is turned on from the
 * start: two threads that run at the same time meet at the lock within a few operations
 * and turn them on themselves, but on a machine whose CPUs other work holds they might
 * not meet for a while, and the phase would measure something else. */
enum { SHARED = 0, SEPARATE = 1, LOCAL_ONE = 2 };
static int phase(const bench_trace *t, const uint32_t *end_live, uint32_t n_end_live, int threads, int mode,
                 int total_reps, double *mpairs, double *busy, double *least, double *cached, double *refilled)
{
    int separate = mode == SEPARATE;
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    for (int c = 0; c < FL_CALL_COUNT; c++)
        sp.cost_us[c] = 0;
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.oom_report = 0;
    cfg.publish = 0;
    /* separate: each thread gets an allocator (and device) of its own, so that nothing is
     * shared: what this machine gives two threads doing this work, the ceiling for the
     * shared allocator's figure. */
    int n_alloc = separate ? threads : 1;
    fl_device *dv[2] = {NULL, NULL};
    fl_allocator *al[2] = {NULL, NULL};
    for (int i = 0; i < n_alloc; i++) {
        if (fl_sim_device_create(&sp, &dv[i]) != FL_OK || fl_allocator_create(&cfg, dv[i], &al[i]) != FL_OK ||
            (((threads > 1 && !separate) || mode == LOCAL_ONE) && fli_allocator_threads(al[i]) != FL_OK)) {
            fprintf(stderr, "fl_bench: threads: %s\n", fl_last_error());
            for (int j = 0; j <= i; j++) {
                fl_allocator_destroy(al[j]);
                fl_device_destroy(dv[j]);
            }
            return -1;
        }
    }
    fl_allocator *a = al[0];
    worker w[2];
    pthread_t tid[2];
    atomic_int go = 0, ready = 0;
    int rc = 0, made = 0, started = 0;
    for (; made < threads && !rc; made++) {
        w[made] = (worker){al[separate ? made : 0], t, end_live, n_end_live, (uint64_t)made + 1, total_reps / threads, NULL,
                           &go, &ready, 0, 0, ""};
        if (!(w[made].addr = calloc(t->n_slots + 1, sizeof *w[made].addr))) {
            fprintf(stderr, "fl_bench: threads: out of host memory\n");
            rc = -1;
        }
    }
    for (; started < threads && !rc; started++)
        if (pthread_create(&tid[started], NULL, worker_main, &w[started]) != 0) {
            fprintf(stderr, "fl_bench: threads: cannot start a thread\n");
            rc = -1;
            break;
        }
    while (!rc && atomic_load(&ready) < started)
        sched_yield();
    fl_stats s0, s1;
    fl_get_stats(a, &s0); /* with separate allocators, the first one's share stands for both */
    uint64_t refills0, refills1, unlocked0 = fli_allocator_unlocked_allocs(a, &refills0);
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    uint64_t t0 = bench_now_ns();
    atomic_store(&go, rc ? -1 : 1);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    uint64_t t1 = bench_now_ns();
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    fl_get_stats(a, &s1); /* the threads have ended: their caches went back, the counts stay */
    uint64_t allocs = s1.allocation.allocated - s0.allocation.allocated;
    uint64_t unlocked1 = fli_allocator_unlocked_allocs(a, &refills1);
    *cached = allocs ? (double)(unlocked1 - unlocked0) / (double)allocs : 0;
    *refilled = allocs ? (double)(refills1 - refills0) / (double)allocs : 0;
    for (int i = 0; i < started && !rc; i++)
        if (w[i].failed) {
            fprintf(stderr, "fl_bench: threads: %s\n", w[i].err);
            rc = -1;
        }
    if (!rc) {
        *mpairs = (double)t->n_allocs * total_reps / (double)(t1 - t0) * 1e3;
        *busy = ((double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec)) / (double)(t1 - t0);
        *least = 1;
        for (int i = 0; i < started; i++)
            if ((double)w[i].cpu_ns / (double)(t1 - t0) < *least)
                *least = (double)w[i].cpu_ns / (double)(t1 - t0);
    }
    for (int i = 0; i < made; i++)
        free(w[i].addr);
    for (int i = 0; i < n_alloc; i++) {
        fl_allocator_destroy(al[i]);
        fl_device_destroy(dv[i]);
    }
    return rc;
}

int bench_threads(const bench_trace *t, int runs)
{
    if (!t->n_allocs)
        return 0;
    /* The slots live at the trace's end, freed after each replay of it. */
    unsigned char *live = calloc(t->n_slots + 1, 1);
    uint32_t *end_live = malloc((t->n_slots + 1) * sizeof *end_live), n_end_live = 0;
    if (!live || !end_live) {
        free(live);
        free(end_live);
        fprintf(stderr, "fl_bench: threads: out of host memory\n");
        return -1;
    }
    for (size_t i = 0; i < t->n_ops; i++)
        live[t->ops[i].slot] = !t->ops[i].is_free;
    for (uint32_t s = 0; s < t->n_slots; s++)
        if (live[s])
            end_live[n_end_live++] = s;
    free(live);

    int reps = (int)((PAIRS_PER_THREAD + t->n_allocs - 1) / t->n_allocs); /* per thread of two */
    double one[BENCH_MAX_RUNS], two[BENCH_MAX_RUNS], busy1[BENCH_MAX_RUNS], busy2[BENCH_MAX_RUNS], load[3] = {0};
    double least1[BENCH_MAX_RUNS], least2[BENCH_MAX_RUNS], cached1[BENCH_MAX_RUNS], cached2[BENCH_MAX_RUNS];
    double sep[BENCH_MAX_RUNS], busys[BENCH_MAX_RUNS], leasts[BENCH_MAX_RUNS], cacheds[BENCH_MAX_RUNS];
    double refill1[BENCH_MAX_RUNS], refill2[BENCH_MAX_RUNS], refills[BENCH_MAX_RUNS];
    double loc[BENCH_MAX_RUNS], plain[BENCH_MAX_RUNS], locratio[BENCH_MAX_RUNS], cachedl[BENCH_MAX_RUNS];
    if (getloadavg(load, 3) < 1)
        load[0] = -1;
    int rc = 0;
    /* The scaling's phases, interleaved: in order in even runs, reversed in odd ones. */
    struct {
        int threads, mode;
        double *mpairs, *busy, *least, *cached, *refilled;
    } ph[3] = {{1, SHARED, one, busy1, least1, cached1, refill1},
               {2, SEPARATE, sep, busys, leasts, cacheds, refills},
               {2, SHARED, two, busy2, least2, cached2, refill2}};
    for (int r = 0; r < runs && !rc; r++)
        for (int k = 0; k < 3 && !rc; k++) {
            int j = r % 2 ? 2 - k : k;
            rc = phase(t, end_live, n_end_live, ph[j].threads, ph[j].mode, 2 * reps, &ph[j].mpairs[r], &ph[j].busy[r],
                       &ph[j].least[r], &ph[j].cached[r], &ph[j].refilled[r]);
        }
    /* Then, apart (so that the scaling's runs stay as they were), one thread in threads
     * mode against one on the plain path, alternating: what the stream-local path costs. */
    for (int r = 0; r < runs && !rc; r++) {
        double x1, x2, x3, x4, x5;
        for (int k = 0; k < 2 && !rc; k++)
            rc = (k == r % 2) ? phase(t, end_live, n_end_live, 1, SHARED, 2 * reps, &plain[r], &x1, &x4, &x5, &x3)
                              : phase(t, end_live, n_end_live, 1, LOCAL_ONE, 2 * reps, &loc[r], &x1, &x2, &cachedl[r],
                                      &x3);
        locratio[r] = loc[r] / plain[r];
    }
    free(end_live);
    if (rc)
        return -1;
    /* The runs in which every worker of both phases ran >= 90% of its phase: then the two
     * threads really ran at the same time, and neither phase lost time to other work. */
    double c1[BENCH_MAX_RUNS], c2[BENCH_MAX_RUNS], cs[BENCH_MAX_RUNS], cr[BENCH_MAX_RUNS];
    int clean = 0;
    for (int r = 0; r < runs; r++)
        if (least1[r] >= 0.9 && least2[r] >= 0.9 && leasts[r] >= 0.9) {
            c1[clean] = one[r];
            c2[clean] = two[r];
            cr[clean] = two[r] / one[r]; /* the run's own ratio: its spread is the noise */
            cs[clean++] = sep[r];
        }
    double m1 = bench_median(one, runs), m2 = bench_median(two, runs);
    printf("threads: %s, %llu pairs x %d per phase, one fragless allocator, sim device with zero-cost calls; "
           "%ld CPUs online, load average %.2f\n",
           t->name, (unsigned long long)t->n_allocs, 2 * reps, sysconf(_SC_NPROCESSORS_ONLN), load[0]);
    /* CPUs busy = process CPU time / wall time: below 2 with two threads, they waited
     * (for a lock, or for a CPU that others' work held: see the load average). */
    printf("threads: all %d runs: 1 thread on 1 stream %.2f M pairs/s (%.2f CPUs busy), 2 threads on 2 streams "
           "%.2f M pairs/s (%.2f CPUs busy): ratio %.2f\n",
           runs, m1, bench_median(busy1, runs), m2, bench_median(busy2, runs), m2 / m1);
    if (clean) {
        double k1 = bench_median(c1, clean), k2 = bench_median(c2, clean);
        double ks = bench_median(cs, clean);
        bench_median(cr, clean); /* sorted: the quartiles of the runs' own ratios */
        printf("threads: scaling %.2f (target >= %.1f): 1 thread %.2f, 2 threads %.2f M pairs/s, median of the %d of "
               "%d runs in which every thread ran >= 90%% of its phase (their own ratios: quartiles %.2f-%.2f)\n",
               k2 / k1, THREADS_TARGET, k1, k2, clean, runs, cr[clean / 4], cr[(3 * clean) / 4 - (clean % 4 == 0)]);
        /* The target presumes a machine on which two independent threads scale by more
         * than 1.7: here is what this one gives. */
        printf("threads: this machine's ceiling %.2f: two threads with an allocator each (nothing shared) %.2f M "
               "pairs/s; one shared allocator reaches %.0f%% of it\n",
               ks / k1, ks, 100 * k2 / ks);
        /* What the rest is made of: the stream-local path's own cost (one thread in threads
         * mode against the plain path, nothing else running, the median of the runs' own
         * ratios), and what two threads on one allocator get of twice that. */
        double kl = bench_median(loc, runs), ql = bench_median(locratio, runs);
        printf("threads: one thread in threads mode (no other thread; %.1f%% of its allocations stream-local) %.2f M "
               "pairs/s, %.0f%% of the plain path's; two threads on one allocator do %.2fx that\n",
               100 * bench_median(cachedl, runs), kl, 100 * ql, k2 / (ql * k1));
    } else {
        printf("threads: scaling not measured: in no run did every thread get a CPU for >= 90%% of its phase (other "
               "work held the CPUs); the ratio above is not the allocator's\n");
    }
    printf("threads: allocations made without the allocator's lock (stream-local operations, thread caches): "
           "1 thread %.1f%%, 2 threads %.2f%% (threads mode on from the start); with it only for room under the peaks, "
           "the other thread going on (local_refill): 2 threads %.2f%%\n",
           100 * bench_median(cached1, runs), 100 * bench_median(cached2, runs), 100 * bench_median(refill2, runs));
    return 0;
}
