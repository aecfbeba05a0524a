/* Replay: runs a trace through a policy on a simulated device and measures it.
 * A trace is first prepared (pointer ids -> dense slots, sizes checked, peak live
 * computed) once; each replay then runs on a fresh sim device. */
#ifndef FL_REPLAY_H
#define FL_REPLAY_H

#include "policy/policy.h"
#include "trace/trace.h"

typedef struct fli_op {
    uint64_t size;      /* requested bytes (alloc; a free's block; a release's segment) */
    uint64_t stream;
    uint32_t slot;      /* dense id of the block */
    uint8_t kind;       /* fli_event_kind */
} fli_op;

typedef struct fli_prepared {
    char *name;             /* file name without directories */
    fli_op *ops;
    size_t n_ops;
    uint32_t n_slots;
    uint64_t n_allocs;      /* FL_EV_ALLOC ops */
    uint64_t n_frees;
    uint64_t n_recorded_failures;
    uint64_t unknown_frees; /* frees of pointers never allocated: skipped */
    uint64_t peak_live;     /* max live bytes, each request rounded up to 512 B */
    size_t peak_live_op;    /* index of the op at which peak_live was first reached */
    uint64_t end_live;      /* live bytes after the last op */
    uint64_t n_streams;
    char **warnings;        /* what prepare tolerated, "PATH:LINE: message" */
    size_t n_warnings;
    /* Allocation sites (PyTorch snapshots): slot_site[slot] indexes sites (0 = unknown);
     * NULL / 0 when the trace has none. */
    uint32_t *slot_site;
    char **sites;
    uint32_t n_sites;
    /* What the recorded allocator did (PyTorch snapshots), followed when
     * fli_replay_opts.follow is set: segments older than the recording (seed_slot: the
     * slot of each seed block, UINT32_MAX when no allocation names it) and the segments
     * it gave back (FL_EV_RELEASE ops). */
    fli_seed_segment *seeds;
    size_t n_seeds;
    fli_seed_block *seed_blocks;
    size_t n_seed_blocks;
    uint32_t *seed_slot;
    uint64_t n_releases, release_bytes;
} fli_prepared;

fl_status fli_prepare(const fli_trace *t, fli_prepared **out);
void fli_prepared_free(fli_prepared *p);

/* What an inspection sees: the policy (for its walk and query, read only), where each
 * slot's block is (0 = not live), and the op just run. */
typedef struct fli_replay_view {
    const fli_policy *pol;
    const fli_prepared *p;
    const uint64_t *slot_addr;  /* p->n_slots entries */
    size_t op;
    uint64_t live;              /* the allocator's live bytes (requests rounded to 512 B) */
    uint64_t reserved;          /* device memory in use */
} fli_replay_view;

typedef struct fli_replay_opts {
    fl_config cfg;          /* policy and knobs */
    fl_sim_params sim;      /* device: capacity, granularity, cost model */
    int timeline_buckets;   /* > 0: fill result.timeline with that many windows */
    int check_every;        /* > 0: run the policy self-check every N ops (tests) */
    size_t late_from_op;    /* device calls from this op on are counted apart (0 = none) */
    size_t empty_cache_at_op; /* > 0: call the policy's empty_cache just before this op */
    /* Follow the recorded allocator (replay of a PyTorch snapshot under the allocator it
     * was taken with): start from the segments it held before recording began and give
     * back the segments it gave back. Every other run ignores both. */
    int follow;
    /* Inspection (the report's page maps, the doctor's breakdown): when inspect is set,
     * it is called right after op inspect_at_op has run (for an op that failed too); a
     * nonzero return ends the replay there (the result then covers the ops up to it). */
    size_t inspect_at_op;
    int (*inspect)(const struct fli_replay_view *v, void *user);
    void *inspect_user;
    /* Progress of fli_min_capacity (the CLI's progress bar): called before each run of
     * the search with the pages still in question, [lo_pages, hi_pages]. NULL = none. */
    void (*search_step)(void *user, uint64_t lo_pages, uint64_t hi_pages);
    void *search_user;
} fli_replay_opts;

typedef struct fli_timeline_bucket {
    size_t first_op, end_op;    /* [first_op, end_op) */
    uint64_t max_live;
    uint64_t max_reserved;
    uint64_t calls;             /* device calls in this window, all kinds */
    double device_us;
} fli_timeline_bucket;

typedef struct fli_replay_result {
    uint64_t peak_live;
    uint64_t peak_reserved;     /* device peak physical bytes in use */
    uint64_t end_reserved;      /* device bytes in use after the last op */
    uint64_t peak_allocated;    /* max of the policy's own rounded live bytes */
    uint64_t ooms;              /* regular allocations that failed */
    size_t first_oom_op;        /* op index of the first OOM, n_ops if none */
    uint64_t retries;
    fl_device_counters dev;
    uint64_t host_ns;           /* time of the replay loop (fl_alloc/fl_free and the loop) */
    uint64_t pairs;             /* allocations served (pairs for host ns per pair) */
    fl_oom_report first_oom;    /* the allocator's report, valid when ooms > 0 */
    /* A recorded failure ("allocate failure", a snapshot's oom) that fails again in the
     * replay: not counted in ooms (the program survived it), but diagnosed by doctor. */
    int recorded_oom_failed;
    size_t recorded_oom_op;
    fl_oom_report recorded_oom;
    uint64_t empty_cache_before; /* device in_use just before empty_cache_at_op ... */
    uint64_t empty_cache_after;  /* ... and just after the call */
    uint64_t late_calls;        /* device calls at ops >= opts.late_from_op */
    double late_us;
    size_t peak_reserved_op;    /* the op after which reserved memory first peaked */
    /* follow: segments rebuilt at the start, and bytes given back at FL_EV_RELEASE ops
     * (what the recorded allocator gave back there is p->release_bytes) */
    uint64_t seeded_segments, seeded_bytes, seed_failures;
    uint64_t released_bytes;
    fli_timeline_bucket *timeline;
    int n_buckets;
} fli_replay_result;

fl_status fli_replay(const fli_prepared *p, const fli_replay_opts *o, fli_replay_result *r);
void fli_replay_result_free(fli_replay_result *r);

/* Smallest capacity (a multiple of the granularity) at which the trace replays with no
 * OOM, by binary search between ceil(peak_live) and the unlimited run's peak_reserved.
 * unlimited: result of the run without a limit (its peak_reserved bounds the search). */
fl_status fli_min_capacity(const fli_prepared *p, const fli_replay_opts *o,
                          const fli_replay_result *unlimited, uint64_t *min_cap);


/* What compare reports for one trace and one policy: the run without a limit, the
 * min_capacity search, and optionally a run at a given capacity. Device calls in the
 * steady state are reported apart: the ops after both the trace's midpoint and its
 * peak of live bytes (the largest step has been seen), where a training loop should
 * make no device calls at all. */
typedef struct fli_measure {
    fli_replay_result unlimited;
    uint64_t min_capacity;          /* 0 when not searched */
    uint64_t capacity;              /* 0 when no capacity run */
    fli_replay_result at_capacity;
    size_t steady_from_op;          /* fli_steady_from(p) */
    uint64_t streams_floor;         /* fli_streams_floor from steady_from_op */
} fli_measure;

/* Where a trace's steady state begins: the op after both its midpoint and its peak of live
 * bytes. Device calls from there on are "late". */
static inline size_t fli_steady_from(const fli_prepared *p)
{
    return p->n_ops / 2 > p->peak_live_op + 1 ? p->n_ops / 2 : p->peak_live_op + 1;
}

/* The streams' floor of a trace's stretch from op from_op to its end: the sum over its
 * streams of each stream's most live bytes in the stretch (requests rounded up to 512 B,
 * a block counted on the stream that allocated it; the bytes live as the stretch begins
 * count too). 0 when fewer than two streams allocate. A policy that keeps each stream's
 * memory its own until a device call hands it over (a synchronize, as every policy here
 * does) needs at least this much device memory to run the stretch without a device call:
 * below it, some stream must take memory that another held in the stretch. In *out;
 * FL_ERR_NOMEM. */
fl_status fli_streams_floor(const fli_prepared *p, size_t from_op, uint64_t *out);

fl_status fli_measure_run(const fli_prepared *p, const fli_replay_opts *o, uint64_t capacity, int min_capacity,
                         fli_measure *m);
void fli_measure_free(fli_measure *m);

/* What an input file holds, by one rule for every command: a PyTorch memory snapshot
 * (a pickle: PROTO 0x80 first, or protocol 0/1: '(' '}' ']' or ')' first and STOP '.'
 * last), a fragless state snapshot (JSON: '{' first after white space), else an RMM CSV
 * log (text: the CSV reader says what is wrong with it). FL_ERR_PARSE "PATH: empty file"
 * (0 bytes, or white space only), "PATH: not a trace or snapshot: it starts with ..."
 * (bytes no text file holds); FL_ERR_IO when it cannot be read. */
typedef enum fli_input_kind { FL_INPUT_CSV, FL_INPUT_PICKLE, FL_INPUT_STATE } fli_input_kind;
fl_status fli_input_detect(const char *path, fli_input_kind *kind);

/* Reads a trace and prepares it (src/replay/input.c): an RMM CSV log, or a PyTorch memory
 * snapshot (device 0 is read), as fli_input_detect says. A state snapshot, or a trace with
 * no events (a header alone, a snapshot whose device recorded nothing), is FL_ERR_PARSE:
 * there is nothing to replay. Warnings go to `warn` (may be NULL). */
fl_status fli_load_trace(const char *path, FILE *warn, fli_prepared **out);
/* The same with the snapshot's device and what the conversion found (info->n_devices
 * is 0 for a CSV trace). */
struct fli_snapshot_info;
fl_status fli_load_trace_ex(const char *path, int device, FILE *warn, fli_prepared **out,
                           struct fli_snapshot_info *info);

#endif
