/* The workload generator behind `fragless gen` (gen.h): one rank of a DDP, FSDP or
 * pipeline-parallel transformer training job as allocation events, modelled on what
 * PyTorch allocates for each (named where it happens below). Sizes follow the model's
 * shapes: bf16 activations, fp32 parameters, gradients and Adam state. */
#include "gen/gen_internal.h"

#include <stdlib.h>
#include <string.h>

/* Stream ids as cudaStreamCreate hands them out (pointers), compute on the default. */
static const uint64_t stream_ids[FLI_GEN_N_STREAMS] = {0x0, 0x55d0c1a0, 0x55d0c2f0, 0x55d0c440, 0x55d0c590};
static const char *const stream_names[FLI_GEN_N_STREAMS] = {"compute", "comm", "copy", "all-gather",
                                                            "reduce-scatter"};
static const char *const kind_names[] = {"ddp", "fsdp", "pipeline"};

uint64_t fli_gen_stream_id(fli_gen_stream s) { return stream_ids[s]; }
const char *fli_gen_stream_name(fli_gen_stream s) { return stream_names[s]; }
const char *fli_gen_kind_name(fli_gen_kind k) { return kind_names[k]; }

int fli_gen_kind_of(const char *name, fli_gen_kind *k)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, kind_names[i])) {
            *k = (fli_gen_kind)i;
            return 0;
        }
    return -1;
}

void fli_gen_params_default(fli_gen_params *p, fli_gen_kind kind)
{
    *p = (fli_gen_params){.kind = kind, .ranks = kind == FLI_GEN_PIPELINE ? 4 : 1, .steps = 12, .layers = 8,
                          .hidden = 1024, .vocab = 32000, .seq = 4096,
                          .micro_batches = kind == FLI_GEN_PIPELINE ? 4 : 1, .bucket = 25 * FL_MiB,
                          .jitter = 0.25, .imbalance = 0.0, .empty_cache_every = 0, .prefetch = 1, .seed = 1};
}

fl_status fli_gen_check(const fli_gen_params *p)
{
    if ((unsigned)p->kind > FLI_GEN_PIPELINE)
        return fli_fail(FL_ERR_INVALID, "--kind: expected ddp, fsdp or pipeline");
    if (p->ranks < 1 || p->ranks > 64)
        return fli_fail(FL_ERR_INVALID, "--ranks %d: expected 1 to 64", p->ranks);
    if (p->steps < 1 || p->steps > 10000)
        return fli_fail(FL_ERR_INVALID, "--steps %d: expected 1 to 10000", p->steps);
    if (p->layers < 1 || p->layers > 256)
        return fli_fail(FL_ERR_INVALID, "--layers %d: expected 1 to 256", p->layers);
    if (p->hidden < 64 || p->hidden > 16384 || p->hidden % 64)
        return fli_fail(FL_ERR_INVALID, "--hidden %d: expected a multiple of 64 from 64 to 16384", p->hidden);
    if (p->vocab < 256 || p->vocab > 1000000)
        return fli_fail(FL_ERR_INVALID, "--vocab %d: expected 256 to 1000000", p->vocab);
    if (p->seq < 64 || p->seq > 1048576)
        return fli_fail(FL_ERR_INVALID, "--seq %d: expected 64 to 1048576 tokens", p->seq);
    if (p->micro_batches < 1 || p->micro_batches > 64)
        return fli_fail(FL_ERR_INVALID, "--micro-batches %d: expected 1 to 64", p->micro_batches);
    if (p->bucket < FL_MiB || p->bucket > FL_GiB)
        return fli_fail(FL_ERR_INVALID, "--bucket %llu bytes: expected 1MiB to 1GiB",
                        (unsigned long long)p->bucket);
    if (!(p->jitter >= 0 && p->jitter <= 0.9))
        return fli_fail(FL_ERR_INVALID, "--jitter %g: expected 0 to 0.9", p->jitter);
    if (!(p->imbalance >= 0 && p->imbalance <= 0.9))
        return fli_fail(FL_ERR_INVALID, "--imbalance %g: expected 0 to 0.9", p->imbalance);
    if (p->empty_cache_every < 0 || p->empty_cache_every > p->steps)
        return fli_fail(FL_ERR_INVALID, "--empty-cache-every %d: expected 0 (never) to --steps (%d)",
                        p->empty_cache_every, p->steps);
    if (p->kind == FLI_GEN_PIPELINE && (p->ranks < 2 || p->ranks > p->layers))
        return fli_fail(FL_ERR_INVALID, "--ranks %d: a pipeline needs 2 to --layers (%d) stages", p->ranks,
                        p->layers);
    /* Rows grow with steps x layers x micro-batches, about 90 per block and micro-batch,
     * all held in memory before the file is written: this bound is about 20 million rows. */
    if ((uint64_t)p->steps * (uint64_t)p->layers * (uint64_t)p->micro_batches > 200000)
        return fli_fail(FL_ERR_INVALID, "--steps x --layers x --micro-batches is %llu: at most 200000",
                        (unsigned long long)p->steps * (unsigned long long)p->layers *
                            (unsigned long long)p->micro_batches);
    return FL_OK;
}

void fli_gen_summary_free(fli_gen_summary *s)
{
    free(s->empty_cache_after);
    memset(s, 0, sizeof *s);
}

fl_status fli_gen_path(const char *pattern, int rank, char *out, size_t n)
{
    char num[16];
    snprintf(num, sizeof num, "%d", rank);
    return fli_expand_path_with(pattern, "--output", NULL, num, out, n);
}

/* ---- the event writer ------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: every seed, 0 included, gives a full-period sequence. */
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static void emit(fli_gen_state *g, uint8_t kind, uint64_t ptr, uint64_t bytes, uint8_t stream)
{
    if (g->st != FL_OK)
        return;
    fli_event e = {.time_us = g->now_us, .ptr = ptr, .size = bytes, .stream = stream_ids[stream],
                   .thread = g->thread, .line = (uint32_t)(g->t->n + 2), .kind = kind};
    /* Time moves by a microsecond per event and one more per MiB touched. */
    g->now_us += 1 + (bytes >> 20);
    g->st = fli_trace_push(g->t, &e);
}

static void free_now(fli_gen_state *g, fli_gen_blk *b, uint8_t stream)
{
    if (!b->ptr)
        return;
    emit(g, FL_EV_FREE, b->ptr, b->bytes, stream);
    g->sum->frees++;
    g->sum->cross_stream_frees += stream != b->stream;
    g->live -= fli_live_size(b->bytes);
    b->ptr = 0;
}

/* Pending frees whose stream has finished by now, oldest first. */
static void settle(fli_gen_state *g)
{
    size_t k = 0;
    for (size_t i = 0; i < g->n_pend; i++) {
        if (g->pend[i].due <= g->t->n)
            free_now(g, &g->pend[i].b, g->pend[i].stream);
        else
            g->pend[k++] = g->pend[i];
    }
    g->n_pend = k;
}

/* A synchronize (DDP's wait for its all-reduces, the optimizer step): everything pending
 * completes. */
void fli_gen_drain(fli_gen_state *g)
{
    for (size_t i = 0; i < g->n_pend; i++)
        free_now(g, &g->pend[i].b, g->pend[i].stream);
    g->n_pend = 0;
}

fli_gen_blk fli_gen_alloc(fli_gen_state *g, uint64_t bytes, uint8_t stream)
{
    fli_gen_blk b = {0, bytes ? bytes : 1, stream};
    if (g->st != FL_OK)
        return b;
    /* Unique ids, 512-aligned like a caching allocator's blocks; never reused. */
    b.ptr = g->next_ptr;
    g->next_ptr += fli_align_up(b.bytes, 512);
    emit(g, FL_EV_ALLOC, b.ptr, b.bytes, stream);
    g->sum->allocs++;
    g->sum->allocs_on[stream]++;
    g->live += fli_live_size(b.bytes);
    if (g->live > g->sum->peak_live)
        g->sum->peak_live = g->live;
    settle(g);
    return b;
}

void fli_gen_release(fli_gen_state *g, fli_gen_blk *b, uint8_t stream)
{
    free_now(g, b, stream);
    settle(g);
}

/* Tensor.record_stream(stream) then del: the block returns once the stream's work, done
 * after `after` more events of this process, has completed; its free row names it. */
void fli_gen_release_later(fli_gen_state *g, fli_gen_blk *b, uint8_t stream, size_t after)
{
    if (!b->ptr || g->st != FL_OK)
        return;
    if (g->n_pend == g->cap_pend) {
        size_t cap = g->cap_pend ? g->cap_pend * 2 : 64;
        fli_gen_pending *np = realloc(g->pend, cap * sizeof *np);
        if (!np) {
            g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for pending frees");
            return;
        }
        g->pend = np;
        g->cap_pend = cap;
    }
    g->pend[g->n_pend++] = (fli_gen_pending){*b, stream, g->t->n + after};
    b->ptr = 0;
}

static void empty_cache_point(fli_gen_state *g)
{
    if (g->st != FL_OK)
        return;
    size_t *l = realloc(g->sum->empty_cache_after, (g->sum->n_empty_cache + 1) * sizeof *l);
    if (!l) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory");
        return;
    }
    g->sum->empty_cache_after = l;
    l[g->sum->n_empty_cache++] = g->t->n;
}

/* ---- the model -----------------------------------------------------------------------
 * A pre-LN transformer block has 12 parameters (rows x cols); the model adds the
 * embedding, a final LayerNorm and the LM head. */

static const int prow[FLI_GEN_LAYER_PARAMS] = {3, 3, 1, 1, 4, 4, 1, 1, 1, 1, 1, 1}; /* x hidden */
static const int pcol[FLI_GEN_LAYER_PARAMS] = {1, 0, 1, 0, 1, 0, 4, 0, 0, 0, 0, 0}; /* x hidden; 0: a vector */

uint64_t fli_gen_param_elems(const fli_gen_state *g, int i, uint64_t *rows, uint64_t *cols)
{
    uint64_t h = (uint64_t)g->p->hidden;
    *rows = (uint64_t)prow[i] * h;
    *cols = pcol[i] ? (uint64_t)pcol[i] * h : 1;
    return *rows * *cols;
}

/* The model's parameters besides the blocks: embedding, final LayerNorm (2), head. */
uint64_t fli_gen_extra_elems(const fli_gen_state *g, int i)
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    return i == 1 || i == 2 ? h : v * h;
}

/* One block's forward: its saved activations into acts[FLI_GEN_N_ACTS]. */
void fli_gen_block_forward(fli_gen_state *g, uint64_t T, fli_gen_blk acts[FLI_GEN_N_ACTS])
{
    uint64_t h = (uint64_t)g->p->hidden, a = T * h * 2;
    acts[0] = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);                 /* ln1 out */
    acts[1] = fli_gen_alloc(g, 3 * a, FLI_GEN_COMPUTE);             /* qkv */
    acts[2] = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);                 /* attention out (flash) */
    acts[3] = fli_gen_alloc(g, T * (h / 64) * 4, FLI_GEN_COMPUTE);  /* softmax log-sum-exp, fp32 per head */
    fli_gen_blk proj = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    acts[4] = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);                 /* residual */
    fli_gen_release(g, &proj, FLI_GEN_COMPUTE);
    acts[5] = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);                 /* ln2 out */
    acts[6] = fli_gen_alloc(g, 4 * a, FLI_GEN_COMPUTE);             /* fc1 out */
    acts[7] = fli_gen_alloc(g, 4 * a, FLI_GEN_COMPUTE);             /* gelu out */
    fli_gen_blk fc2 = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    acts[8] = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);                 /* block output */
    fli_gen_release(g, &fc2, FLI_GEN_COMPUTE);
}

/* One block's backward: frees its activations, reports each parameter's gradient, and
 * replaces *gout (the gradient of its output) with the gradient of its input. */
void fli_gen_block_backward(fli_gen_state *g, uint64_t T, fli_gen_blk acts[FLI_GEN_N_ACTS], fli_gen_blk *gout,
                            const fli_gen_hooks *hk, int layer, int mb)
{
    uint64_t h = (uint64_t)g->p->hidden, a = T * h * 2;
    fli_gen_release(g, &acts[8], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 6, mb);
    hk->grad(g, hk->ctx, layer, 7, mb);
    fli_gen_blk g_gelu = fli_gen_alloc(g, 4 * a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[7], FLI_GEN_COMPUTE);
    fli_gen_blk g_fc1 = fli_gen_alloc(g, 4 * a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_gelu, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[6], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 4, mb);
    hk->grad(g, hk->ctx, layer, 5, mb);
    fli_gen_blk g_ln2 = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_fc1, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[5], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 10, mb);
    hk->grad(g, hk->ctx, layer, 11, mb);
    fli_gen_blk g_res = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_ln2, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[4], FLI_GEN_COMPUTE);
    fli_gen_release(g, gout, FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 2, mb);
    hk->grad(g, hk->ctx, layer, 3, mb);
    fli_gen_blk g_attn = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    fli_gen_blk g_qkv = fli_gen_alloc(g, 3 * a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_attn, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[2], FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[3], FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[1], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 0, mb);
    hk->grad(g, hk->ctx, layer, 1, mb);
    fli_gen_blk g_ln1 = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_qkv, FLI_GEN_COMPUTE);
    fli_gen_release(g, &acts[0], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 8, mb);
    hk->grad(g, hk->ctx, layer, 9, mb);
    fli_gen_blk g_in = fli_gen_alloc(g, a, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_ln1, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_res, FLI_GEN_COMPUTE);
    *gout = g_in;
}

/* Final LayerNorm, LM head and cross-entropy under autocast: bf16 logits, upcast to fp32
 * for log_softmax (saved), loss. saved[0..1]: final norm out, log_softmax. */
void fli_gen_loss_forward(fli_gen_state *g, uint64_t T, fli_gen_blk saved[2])
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    saved[0] = fli_gen_alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    fli_gen_blk logits = fli_gen_alloc(g, T * v * 2, FLI_GEN_COMPUTE);
    fli_gen_blk f32 = fli_gen_alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    fli_gen_release(g, &logits, FLI_GEN_COMPUTE);
    saved[1] = fli_gen_alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    fli_gen_release(g, &f32, FLI_GEN_COMPUTE);
    fli_gen_blk loss = fli_gen_alloc(g, 4, FLI_GEN_COMPUTE);
    fli_gen_release(g, &loss, FLI_GEN_COMPUTE);
}

/* Its backward: the gradient of the last block's output. Extra params 1..3 get grads. */
fli_gen_blk fli_gen_loss_backward(fli_gen_state *g, uint64_t T, fli_gen_blk saved[2], const fli_gen_hooks *hk, int mb)
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    fli_gen_blk g_ls = fli_gen_alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    fli_gen_release(g, &saved[1], FLI_GEN_COMPUTE);
    fli_gen_blk g_logits = fli_gen_alloc(g, T * v * 2, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_ls, FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, -1, 3, mb);
    fli_gen_blk g_norm = fli_gen_alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_logits, FLI_GEN_COMPUTE);
    fli_gen_release(g, &saved[0], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, -1, 1, mb);
    hk->grad(g, hk->ctx, -1, 2, mb);
    fli_gen_blk g_out = fli_gen_alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    fli_gen_release(g, &g_norm, FLI_GEN_COMPUTE);
    return g_out;
}

/* Tokens per micro-batch, multiples of 64 as a length-bucketing sampler pads them. */
static uint64_t tokens(const fli_gen_params *p, uint64_t *rng, double scale)
{
    double t = (double)p->seq * scale * (1.0 - p->jitter * rng_unit(rng));
    uint64_t n = (uint64_t)t / 64 * 64;
    return n < 64 ? 64 : n;
}

/* The input batch of a micro-batch (token ids and labels, int64): copied ahead on the
 * copy stream and used on compute (record_stream), or made on compute without prefetch. */

fli_gen_batch fli_gen_load_batch(fli_gen_state *g, uint64_t T, int ids, int labels)
{
    uint8_t s = g->p->prefetch ? FLI_GEN_COPY : FLI_GEN_COMPUTE;
    fli_gen_batch b = {{0}, {0}};
    if (ids)
        b.ids = fli_gen_alloc(g, T * 8, s);
    if (labels)
        b.labels = fli_gen_alloc(g, T * 8, s);
    return b;
}

void fli_gen_free_batch(fli_gen_state *g, fli_gen_batch *b)
{
    fli_gen_release(g, &b->ids, FLI_GEN_COMPUTE);
    fli_gen_release(g, &b->labels, FLI_GEN_COMPUTE);
}

/* Adam on `n` tensors of the given sizes (fp32): exp_avg and exp_avg_sq made at the first
 * step (kept), one temporary per tensor in each foreach op, then zero_grad(set_to_none)
 * frees the gradients. */
void fli_gen_adam_step(fli_gen_state *g, const uint64_t *bytes, size_t n, fli_gen_blk *state, fli_gen_blk *grads,
                       int step)
{
    fli_gen_drain(g);
    if (step == 0)
        for (size_t i = 0; i < n; i++)
            if (bytes[i]) {
                state[2 * i] = fli_gen_alloc(g, bytes[i], FLI_GEN_COMPUTE);
                state[2 * i + 1] = fli_gen_alloc(g, bytes[i], FLI_GEN_COMPUTE);
            }
    fli_gen_blk *tmp = calloc(n ? n : 1, sizeof *tmp);
    if (!tmp) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (bytes[i])
            tmp[i] = fli_gen_alloc(g, bytes[i], FLI_GEN_COMPUTE); /* denom = sqrt(exp_avg_sq) + eps */
    for (size_t i = 0; i < n; i++)
        fli_gen_release(g, &tmp[i], FLI_GEN_COMPUTE);
    free(tmp);
    for (size_t i = 0; i < n; i++)
        fli_gen_release(g, &grads[i], FLI_GEN_COMPUTE);
    if (g->p->empty_cache_every && (step + 1) % g->p->empty_cache_every == 0)
        empty_cache_point(g);
}

fl_status fli_gen_rank(const fli_gen_params *p, int rank, const char *name, fli_trace *t, fli_gen_summary *sum)
{
    fli_gen_summary local;
    if (!sum)
        sum = &local;
    memset(sum, 0, sizeof *sum);
    memset(t, 0, sizeof *t);
    fl_status s = fli_gen_check(p);
    if (s != FL_OK)
        return s;
    if (rank < 0 || rank >= p->ranks)
        return fli_fail(FL_ERR_INVALID, "gen: rank %d is not in 0..%d (--ranks %d)", rank, p->ranks - 1, p->ranks);
    fli_trace_init(t, name);
    if (!t->path)
        return fli_fail(FL_ERR_NOMEM, "gen: no memory");
    /* Ids in the range a GPU's allocations live in; the clock starts an hour in (the
     * Time column is the time of day). */
    fli_gen_state g = {.p = p, .rank = rank, .t = t, .sum = sum, .thread = 1,
                       .next_ptr = UINT64_C(0x7f3a00000000), .now_us = UINT64_C(3600000000)};
    /* Per-rank data (its sampler's lengths) from the seed and the rank; a pipeline's
     * stages see the same micro-batches, so theirs come from the seed alone. */
    g.rng = p->seed ^ (p->kind == FLI_GEN_PIPELINE ? 0 : UINT64_C(0xa0761d6478bd642f) * (uint64_t)(rank + 1));
    size_t nT = (size_t)p->steps * (size_t)p->micro_batches;
    uint64_t *T = malloc(nT * sizeof *T);
    if (!T) {
        fli_trace_free(t);
        return fli_fail(FL_ERR_NOMEM, "gen: no memory");
    }
    double scale = 1.0;
    if (p->kind != FLI_GEN_PIPELINE && p->ranks > 1)
        scale = 1.0 - p->imbalance * (double)rank / (double)(p->ranks - 1);
    for (size_t i = 0; i < nT; i++)
        T[i] = tokens(p, &g.rng, scale);
    if (p->kind == FLI_GEN_DDP)
        fli_gen_run_ddp(&g, T);
    else if (p->kind == FLI_GEN_FSDP)
        fli_gen_run_fsdp(&g, T);
    else
        fli_gen_run_pipeline(&g, T);
    fli_gen_drain(&g);
    free(T);
    free(g.pend);
    s = g.st;
    if (s == FL_OK) {
        sum->end_live = g.live;
        for (int i = 0; i < FLI_GEN_N_STREAMS; i++)
            sum->n_streams += sum->allocs_on[i] != 0;
    } else {
        fli_trace_free(t);
    }
    if (sum == &local)
        fli_gen_summary_free(sum);
    return s;
}
