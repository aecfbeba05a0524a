/* The doctor: from one trace, what happened at an out-of-memory (fragmentation or
 * exhaustion, by a stated rule, and whether the job could fit at all), where the
 * reserved memory went and which code pins it, memory by lifetime, the capacity each
 * allocator setting needs, and the usual remedies, each replayed or estimated with its
 * assumption. */
#ifndef FL_DOCTOR_H
#define FL_DOCTOR_H

#include "replay/breakdown.h"
#include "replay/replay.h"

/* The verdict is the live allocator's (fl_oom_verdict, src/allocator/oom.c): one rule. */
typedef fl_oom_verdict fli_verdict;
#define FL_VERDICT_NONE FL_OOM_NONE
#define FL_VERDICT_FRAGMENTATION FL_OOM_FRAGMENTATION
#define FL_VERDICT_EXHAUSTION FL_OOM_EXHAUSTION
#define fli_verdict_name fl_oom_verdict_name

/* One row of the what-if table: a setting and the smallest capacity it runs in. */
typedef struct fli_whatif {
    char label[64];             /* "what you ran (cca)", "max_split_size_mb:256", ... */
    char env[128];              /* the line to try, e.g. PYTORCH_CUDA_ALLOC_CONF=... */
    fl_config cfg;
    uint64_t min_capacity;
    int fits;                   /* a capacity is known and the setting runs at it: min_capacity
                                   <= it, and a replay at that capacity itself had no OOM */
    int fails_at_capacity;      /* min_capacity <= the capacity, yet the replay at the capacity
                                   ran out of memory (placement differs with the capacity: more
                                   memory does not always help an online policy) */
    int reused;                 /* min_capacity came from the caller (fli_doctor_opts.known) */
} fli_whatif;

#define FL_DOCTOR_MAX_WHATIF 12

/* A min_capacity already searched on the same trace (the report's comparison), so the
 * doctor does not search it again. */
typedef struct fli_known_min {
    fl_config cfg;
    uint64_t granularity;
    uint64_t min_capacity;
} fli_known_min;

typedef struct fli_doctor_opts {
    uint64_t capacity;          /* the device's: --capacity, or a snapshot's oom event; 0 = none */
    int follow;                 /* the trace is a PyTorch snapshot and `ran` its own allocator:
                                   the replays of what ran follow the recorded allocator */
    const fli_known_min *known;
    int n_known;
} fli_doctor_opts;

typedef struct fli_diagnosis {
    uint64_t capacity;          /* as given (0 when none) */
    /* The out-of-memory moment: the first OOM of the setting that ran at `capacity`. */
    int has_oom;
    int oom_was_recorded;       /* the failure is one the trace recorded (it failed again) */
    int recorded_served;        /* the trace recorded a failure that the replay served */
    size_t oom_op;
    fl_oom_report oom;          /* the allocator's report of that failure */
    uint64_t device_free;       /* capacity - reserved */
    double ext_frag;            /* 1 - largest free / free, over free memory the policy holds
                                   plus what the device still has */
    fli_verdict verdict;
    /* The job as a whole: its peak of live bytes with the failed request served (the
     * what-if trace), and whether that fits the capacity at all. */
    uint64_t job_needs;
    size_t job_peak_op;
    int job_fits;               /* 1 when no capacity is known */
    /* Lower bounds, in whole pages of the device granularity: no allocator that does not
     * move data needs less, now (live + asked at the OOM) and for the whole job. */
    uint64_t lower_bound_now, lower_bound_job;
    /* Streams: the trace's streams' floor in its steady state (fli_streams_floor; 0 for
     * one stream) and the device calls what ran made there at the capacity. */
    uint64_t streams_floor;
    size_t steady_from_op;
    uint64_t steady_calls;
    double steady_ms;
    /* Recorded failures in the trace itself (allocate failure rows, snapshot oom events). */
    uint64_t recorded_failures;
    size_t first_recorded_op;
    uint64_t first_recorded_size;
    /* The what-if trace: the whole trace, or, when the diagnosed failure is a recorded
     * one, the trace up to and including it, the request to be served. */
    int whatif_truncated;
    size_t whatif_ops;
    /* Where reserved memory went, and who pins it: at the OOM, and at the peak of
     * reserved memory of what ran (at the capacity when one is known). */
    fli_breakdown at_oom, at_peak;
    /* Memory by lifetime. Persistent: blocks that live for more than half of the trace
     * (weights, optimizer state); transient: the others (activations, temporaries). */
    uint64_t peak_live;
    size_t peak_op;
    uint64_t persistent;        /* peak of live persistent bytes */
    uint64_t transient_peak;
    uint64_t persistent_at_peak, transient_at_peak;
    /* What if: row 0 is what ran. */
    fli_whatif rows[FL_DOCTOR_MAX_WHATIF];
    int n_rows;
    int best_pytorch;           /* row with the smallest need among PyTorch's settings */
    int fragless_row;
    int any_fits;               /* some row fits the capacity */
    /* empty_cache() replayed just before the failed request (has_oom): whether the request
     * then succeeds, and what empty_cache gave back. */
    int empty_cache_helps;
    uint64_t empty_cache_returned;
    /* empty_cache() at the idle point: between the first and the last tenth of the
     * events, the first event where live bytes are lowest. */
    size_t idle_op;
    uint64_t idle_live;
    uint64_t idle_reserved;     /* what the setting that ran held just before */
    uint64_t idle_returned;     /* what empty_cache gave back to the device */
    /* Gradient accumulation over k micro-batches: persistent + transient / k at the peak. */
    uint64_t accum_need[2];     /* k = 2, 4 */
} fli_diagnosis;

/* ran: the setting the trace ran under (policy + knobs) and the device (its capacity is
 * replaced by the diagnosis' for the OOM replay). */
fl_status fli_diagnose_ex(const fli_prepared *p, const fli_replay_opts *ran, const fli_doctor_opts *o, fli_diagnosis *d);
/* The same with only a capacity. */
fl_status fli_diagnose(const fli_prepared *p, const fli_replay_opts *ran, uint64_t capacity, fli_diagnosis *d);
/* Whether two configurations are the same allocator setting (policy and knobs). */
int fli_config_same(const fl_config *a, const fl_config *b);

#endif
