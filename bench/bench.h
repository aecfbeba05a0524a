/* What the parts of `make bench` share: a trace as the plain operation sequence every
 * allocator under test replays (fragless through fl_alloc/fl_free, OffsetAllocator through
 * its own API), the clock, medians. Read by C and by the C++ OffsetAllocator shim. */
#ifndef FL_BENCH_H
#define FL_BENCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One allocation or free. Recorded failures and frees of unknown pointers are left out
 * when the sequence is built: what remains is what each allocator is asked to do. */
typedef struct bench_op {
    uint64_t size;      /* bytes asked (alloc), 0 for free */
    uint64_t stream;
    uint32_t slot;      /* dense id of the block: the replay's address table index */
    uint32_t is_free;
} bench_op;

typedef struct bench_trace {
    char *name;
    bench_op *ops;
    size_t n_ops;
    uint32_t n_slots;
    uint64_t n_allocs;  /* pairs: every ns/pair figure divides by this */
    uint64_t max_live;  /* most blocks live at once */
    uint64_t max_size;  /* largest request, bytes */
    uint64_t peak_live; /* most bytes live at once, each request rounded up to 512 B */
} bench_trace;

#define BENCH_MAX_RUNS 101 /* FL_BENCH_RUNS at most */

uint64_t bench_now_ns(void);
/* The clock of the per-pair figures: bench_now_ns, or with FL_BENCH_CLOCK=cpu the calling
 * thread's CPU time (user and system: page faults count), which time slices lost to
 * other processes on a loaded machine do not inflate. */
uint64_t bench_pair_clock_ns(void);
/* Sorts v and returns its median. */
double bench_median(double *v, int n);

/* bench/threads.c: the threads scaling line on trace t, `runs` interleaved runs. */
int bench_threads(const bench_trace *t, int runs);

/* bench/oa_shim.cpp, built only with FL_OA_DIR (sebbbi's OffsetAllocator checkout):
 * replays t through OffsetAllocator and stores the loop's time in *ns. Returns 0, or -1
 * with a message in err when the trace does not fit OA's 32-bit space or an allocation
 * fails. */
int bench_oa_replay(const bench_trace *t, uint64_t *ns, char *err, size_t n_err);

#ifdef __cplusplus
}
#endif
#endif
