/* Internal to src/gen: the event writer the workload kinds share (gen.c) and the kinds
 * themselves (parallel.c). */
#ifndef FL_GEN_INTERNAL_H
#define FL_GEN_INTERNAL_H

#include "gen/gen.h"

/* The model: a pre-LN transformer block has 12 parameters; the model adds the embedding,
 * a final LayerNorm (2) and the LM head; a block saves 9 activations for backward. */
#define FLI_GEN_LAYER_PARAMS 12
#define FLI_GEN_N_ACTS 9
#define FLI_GEN_EXTRA_PARAMS 4

/* A block as the generator holds it: its id (ptr; 0 once freed), size, stream. */
typedef struct fli_gen_blk {
    uint64_t ptr, bytes;
    uint8_t stream;
} fli_gen_blk;

/* A block whose last use is on another stream: freed once that work is done. */
typedef struct fli_gen_pending {
    fli_gen_blk b;
    uint8_t stream;
    size_t due;  /* event count at which the stream's work has completed */
} fli_gen_pending;

/* One rank being generated; st: the first error (the writer then writes nothing). */
typedef struct fli_gen_state {
    const fli_gen_params *p;
    int rank;
    fli_trace *t;
    fli_gen_summary *sum;
    uint64_t rng;
    uint64_t now_us, next_ptr, thread, live;
    fli_gen_pending *pend;
    size_t n_pend, cap_pend;
    fl_status st;
} fli_gen_state;

/* What the parallel scheme does when a parameter's gradient of micro-batch `mb` is
 * computed (DDP fills buckets, FSDP collects the block's unsharded grads); layer -1 is
 * the model's other parameters (0 embedding, 1-2 final norm, 3 head). */
typedef struct fli_gen_hooks {
    void (*grad)(fli_gen_state *g, void *ctx, int layer, int param, int mb);
    void *ctx;
} fli_gen_hooks;

/* A micro-batch's input (token ids and labels, int64). */
typedef struct fli_gen_batch {
    fli_gen_blk ids, labels;
} fli_gen_batch;

/* The writer: an allocation on a stream; a free whose row names `stream`; the same once
 * `after` more events have happened (record_stream); every pending free now (a
 * synchronize). */
fli_gen_blk fli_gen_alloc(fli_gen_state *g, uint64_t bytes, uint8_t stream);
void fli_gen_release(fli_gen_state *g, fli_gen_blk *b, uint8_t stream);
void fli_gen_release_later(fli_gen_state *g, fli_gen_blk *b, uint8_t stream, size_t after);
void fli_gen_drain(fli_gen_state *g);

/* The model's pieces, in the order a training step runs them. */
uint64_t fli_gen_param_elems(const fli_gen_state *g, int i, uint64_t *rows, uint64_t *cols);
uint64_t fli_gen_extra_elems(const fli_gen_state *g, int i);
void fli_gen_block_forward(fli_gen_state *g, uint64_t T, fli_gen_blk acts[FLI_GEN_N_ACTS]);
void fli_gen_block_backward(fli_gen_state *g, uint64_t T, fli_gen_blk acts[FLI_GEN_N_ACTS], fli_gen_blk *gout,
                            const fli_gen_hooks *hk, int layer, int mb);
void fli_gen_loss_forward(fli_gen_state *g, uint64_t T, fli_gen_blk saved[2]);
fli_gen_blk fli_gen_loss_backward(fli_gen_state *g, uint64_t T, fli_gen_blk saved[2], const fli_gen_hooks *hk, int mb);
fli_gen_batch fli_gen_load_batch(fli_gen_state *g, uint64_t T, int ids, int labels);
void fli_gen_free_batch(fli_gen_state *g, fli_gen_batch *b);
void fli_gen_adam_step(fli_gen_state *g, const uint64_t *bytes, size_t n, fli_gen_blk *state, fli_gen_blk *grads,
                       int step);

/* One rank of each kind (parallel.c); T: tokens per micro-batch, steps x micro-batches. */
void fli_gen_run_ddp(fli_gen_state *g, const uint64_t *T);
void fli_gen_run_fsdp(fli_gen_state *g, const uint64_t *T);
void fli_gen_run_pipeline(fli_gen_state *g, const uint64_t *T);

#endif
