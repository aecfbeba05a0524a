/* The doctor: from one trace, what happened at an out-of-memory (fragmentation or
 * exhaustion, by a stated rule), memory by lifetime, the capacity each allocator
 * setting needs, and the usual remedies turned into estimates with their assumptions. */
#ifndef FL_DOCTOR_H
#define FL_DOCTOR_H

#include "replay/replay.h"

/* The verdict is the live allocator's (fl_oom_verdict, src/allocator/oom.c): one rule. */
typedef fl_oom_verdict fl_verdict;
#define FL_VERDICT_NONE FL_OOM_NONE
#define FL_VERDICT_FRAGMENTATION FL_OOM_FRAGMENTATION
#define FL_VERDICT_EXHAUSTION FL_OOM_EXHAUSTION
#define fl_verdict_name fl_oom_verdict_name

/* One row of the what-if table: a setting and the smallest capacity it runs in. */
typedef struct fl_whatif {
    char label[64];             /* "what you ran (cca)", "max_split_size_mb:256", ... */
    char env[128];              /* the line to try, e.g. PYTORCH_CUDA_ALLOC_CONF=... */
    fl_config cfg;
    uint64_t min_capacity;
} fl_whatif;

#define FL_DOCTOR_MAX_WHATIF 12

typedef struct fl_diagnosis {
    /* The out-of-memory moment: the first OOM of the setting that ran, replayed at
     * `capacity` (0 when none was given: then has_oom is 0). */
    int has_oom;
    int oom_was_recorded;       /* the failure is one the trace recorded (it failed again) */
    uint64_t capacity;
    size_t oom_op;
    fl_oom_report oom;          /* the allocator's report of that failure */
    uint64_t device_free;       /* capacity - reserved */
    double ext_frag;            /* 1 - largest free / free, over free memory the policy holds
                                   plus what the device still has */
    fl_verdict verdict;
    /* Recorded failures in the trace itself (allocate failure rows, snapshot oom events). */
    uint64_t recorded_failures;
    size_t first_recorded_op;
    uint64_t first_recorded_size;
    /* Memory by lifetime. Persistent: blocks that live for more than half of the trace
     * (weights, optimizer state); transient: the others (activations, temporaries). */
    uint64_t peak_live;
    size_t peak_op;
    uint64_t persistent;        /* peak of live persistent bytes */
    uint64_t transient_peak;
    uint64_t persistent_at_peak, transient_at_peak;
    /* What if: row 0 is what ran. */
    fl_whatif rows[FL_DOCTOR_MAX_WHATIF];
    int n_rows;
    int best_pytorch;           /* row with the smallest need among PyTorch's settings */
    int fragless_row;
    /* empty_cache() at the idle point: between the first and the last tenth of the
     * events, the first event where live bytes are lowest. */
    size_t idle_op;
    uint64_t idle_live;
    uint64_t idle_reserved;     /* what the setting that ran held just before */
    uint64_t idle_returned;     /* what empty_cache gave back to the device */
    /* Gradient accumulation over k micro-batches: persistent + transient / k at the peak. */
    uint64_t accum_need[2];     /* k = 2, 4 */
} fl_diagnosis;

/* ran: the setting the trace ran under (policy + knobs) and the device (its capacity is
 * replaced by `capacity` for the OOM replay). */
fl_status fl_diagnose(const fl_prepared *p, const fl_replay_opts *ran, uint64_t capacity, fl_diagnosis *d);

#endif
