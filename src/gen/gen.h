/* Synthetic multi-stream training workloads (`fragless gen`): the allocations one rank of a
 * DDP, FSDP or pipeline-parallel job makes, step by step, as an RMM CSV trace. Each kind
 * follows what PyTorch does for it (the comments in gen.c say which part of PyTorch);
 * the same parameters and seed give the same trace, byte for byte. */
#ifndef FL_GEN_H
#define FL_GEN_H

#include "trace/trace.h"

typedef enum fli_gen_kind {
    FLI_GEN_DDP = 0,      /* data parallel: whole model per rank, gradient buckets all-reduced */
    FLI_GEN_FSDP = 1,     /* fully sharded: each layer all-gathered for use, grads reduce-scattered */
    FLI_GEN_PIPELINE = 2  /* one stage per rank, 1F1B schedule over micro-batches */
} fli_gen_kind;

/* The streams of a generated trace (the Stream column, hex). Compute is the default
 * stream; the others are ids of the shape cudaStreamCreate returns. */
typedef enum fli_gen_stream {
    FLI_GEN_COMPUTE = 0,  /* the default stream: forward, backward, optimizer */
    FLI_GEN_COMM,         /* NCCL: DDP's all-reduce, pipeline send/recv */
    FLI_GEN_COPY,         /* host-to-device prefetch of the next batch */
    FLI_GEN_ALLGATHER,    /* FSDP's all-gather stream */
    FLI_GEN_REDUCE,       /* FSDP's reduce-scatter stream */
    FLI_GEN_N_STREAMS
} fli_gen_stream;

uint64_t fli_gen_stream_id(fli_gen_stream s);
const char *fli_gen_stream_name(fli_gen_stream s);
const char *fli_gen_kind_name(fli_gen_kind k);
/* 0 and the kind for "ddp", "fsdp", "pipeline"; -1 otherwise. */
int fli_gen_kind_of(const char *name, fli_gen_kind *k);

typedef struct fli_gen_params {
    fli_gen_kind kind;
    int ranks;              /* processes in the job, 1..64 (pipeline: 2..layers) */
    int steps;              /* training steps, 1..10000 */
    int layers;             /* transformer blocks, 1..256 */
    int hidden;             /* model width in elements, 64..16384, a multiple of 64 */
    int vocab;              /* vocabulary, 256..1000000 */
    int seq;                /* tokens per micro-batch and rank at most, 64..1048576 */
    int micro_batches;      /* pipeline: per step (1..64); ddp, fsdp: gradient accumulation */
    uint64_t bucket;        /* ddp: bucket_cap (bytes), 1 MiB..1 GiB; the first bucket is 1 MiB */
    double jitter;          /* tokens per micro-batch vary by up to this share, 0..0.9 */
    double imbalance;       /* ddp, fsdp: the last rank gets this share fewer tokens, 0..0.9 */
    int empty_cache_every;  /* steps between empty_cache() calls, 0 = none */
    int prefetch;           /* batches copied ahead on the copy stream (else on compute) */
    uint64_t seed;
} fli_gen_params;

/* Defaults for a kind: a small model (8 layers, width 1024) whose traces stay well under
 * 1 MB per rank. */
void fli_gen_params_default(fli_gen_params *p, fli_gen_kind kind);
/* FL_OK, or FL_ERR_INVALID naming the flag (--steps, --ranks, ...) and the range. */
fl_status fli_gen_check(const fli_gen_params *p);

/* What a generated rank holds, counted as it was made (tests compare it with the file). */
typedef struct fli_gen_summary {
    uint64_t allocs, frees;
    uint64_t allocs_on[FLI_GEN_N_STREAMS];  /* allocations per stream */
    uint64_t cross_stream_frees;            /* record_stream: the free row names another stream */
    uint64_t peak_live;                     /* requests rounded to 512 B, as replay counts */
    uint64_t end_live;                      /* live at the end: parameters and optimizer state */
    int n_streams;                          /* streams with at least one allocation */
    /* Events (0-based) after which the job calls empty_cache(): RMM's CSV has no row for
     * it, so these are the file's line numbers minus 1 (the header is line 1). */
    size_t *empty_cache_after;
    size_t n_empty_cache;
} fli_gen_summary;

void fli_gen_summary_free(fli_gen_summary *s);

/* The trace of one rank (0 <= rank < p->ranks) into t, which it initialises with path
 * name; sum (optional) says what it holds: free it with fli_gen_summary_free, after an
 * error too. On error t is left empty. */
fl_status fli_gen_rank(const fli_gen_params *p, int rank, const char *name, fli_trace *t, fli_gen_summary *sum);

/* A rank's file name: pattern with %r replaced by the rank and %% by '%'; any other '%'
 * is refused (the message names --output). */
fl_status fli_gen_path(const char *pattern, int rank, char *out, size_t n);

#endif
