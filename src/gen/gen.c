/* The workload generator behind `fragless gen` (gen.h): one rank of a DDP, FSDP or
 * pipeline-parallel transformer training job as allocation events, modelled on what
 * PyTorch allocates for each (named where it happens below). Sizes follow the model's
 * shapes: bf16 activations, fp32 parameters, gradients and Adam state. */
#include "gen/gen.h"

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
    /* Rows grow with steps x layers x micro-batches; past this a file runs to gigabytes. */
    if ((uint64_t)p->steps * (uint64_t)p->layers * (uint64_t)p->micro_batches > 2000000)
        return fli_fail(FL_ERR_INVALID, "--steps x --layers x --micro-batches is %llu: at most 2000000",
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
    size_t len = 0;
    char num[16];
    snprintf(num, sizeof num, "%d", rank);
    for (const char *p = pattern; *p; p++) {
        const char *piece = p;
        size_t k = 1;
        if (*p == '%') {
            if (p[1] == 'r')
                piece = num;
            else if (p[1] == '%')
                piece = "%";
            else
                return fli_fail(FL_ERR_INVALID, "--output '%s': '%%%.1s' is not %%r (the rank) or %%%% (a '%%')",
                                pattern, p[1] ? p + 1 : "");
            k = strlen(piece);
            p++;
        }
        if (len + k >= n)
            return fli_fail(FL_ERR_INVALID, "--output '%s': too long (%zu bytes at most)", pattern, n - 1);
        memcpy(out + len, piece, k);
        len += k;
    }
    out[len] = 0;
    return FL_OK;
}

/* ---- the event writer ------------------------------------------------------------- */

typedef struct blk {
    uint64_t ptr, bytes;
    uint8_t stream;
} blk;

/* A block whose last use is on another stream: freed once that work is done. */
typedef struct pending {
    blk b;
    uint8_t stream;
    size_t due;  /* event count at which the stream's work has completed */
} pending;

typedef struct gen {
    const fli_gen_params *p;
    int rank;
    fli_trace *t;
    fli_gen_summary *sum;
    uint64_t rng;
    uint64_t now_us, next_ptr, thread, live;
    pending *pend;
    size_t n_pend, cap_pend;
    fl_status st;
} gen;

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: every seed, 0 included, gives a full-period sequence. */
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static void emit(gen *g, uint8_t kind, uint64_t ptr, uint64_t bytes, uint8_t stream)
{
    if (g->st != FL_OK)
        return;
    fli_event e = {.time_us = g->now_us, .ptr = ptr, .size = bytes, .stream = stream_ids[stream],
                   .thread = g->thread, .line = (uint32_t)(g->t->n + 2), .kind = kind};
    /* Time moves by a microsecond per event and one more per MiB touched. */
    g->now_us += 1 + (bytes >> 20);
    g->st = fli_trace_push(g->t, &e);
}

static void free_now(gen *g, blk *b, uint8_t stream)
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
static void settle(gen *g)
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
static void drain(gen *g)
{
    for (size_t i = 0; i < g->n_pend; i++)
        free_now(g, &g->pend[i].b, g->pend[i].stream);
    g->n_pend = 0;
}

static blk alloc(gen *g, uint64_t bytes, uint8_t stream)
{
    blk b = {0, bytes ? bytes : 1, stream};
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

static void release(gen *g, blk *b, uint8_t stream)
{
    free_now(g, b, stream);
    settle(g);
}

/* Tensor.record_stream(stream) then del: the block returns once the stream's work, done
 * after `after` more events of this process, has completed; its free row names it. */
static void release_later(gen *g, blk *b, uint8_t stream, size_t after)
{
    if (!b->ptr || g->st != FL_OK)
        return;
    if (g->n_pend == g->cap_pend) {
        size_t cap = g->cap_pend ? g->cap_pend * 2 : 64;
        pending *np = realloc(g->pend, cap * sizeof *np);
        if (!np) {
            g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for pending frees");
            return;
        }
        g->pend = np;
        g->cap_pend = cap;
    }
    g->pend[g->n_pend++] = (pending){*b, stream, g->t->n + after};
    b->ptr = 0;
}

static void empty_cache_point(gen *g)
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

#define LAYER_PARAMS 12
#define N_ACTS 9
static const int prow[LAYER_PARAMS] = {3, 3, 1, 1, 4, 4, 1, 1, 1, 1, 1, 1}; /* x hidden */
static const int pcol[LAYER_PARAMS] = {1, 0, 1, 0, 1, 0, 4, 0, 0, 0, 0, 0}; /* x hidden; 0: a vector */

static uint64_t param_elems(const gen *g, int i, uint64_t *rows, uint64_t *cols)
{
    uint64_t h = (uint64_t)g->p->hidden;
    *rows = (uint64_t)prow[i] * h;
    *cols = pcol[i] ? (uint64_t)pcol[i] * h : 1;
    return *rows * *cols;
}

/* The model's parameters besides the blocks: embedding, final LayerNorm (2), head. */
#define EXTRA_PARAMS 4
static uint64_t extra_elems(const gen *g, int i)
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    return i == 1 || i == 2 ? h : v * h;
}

/* What the parallel scheme does when a parameter's gradient of micro-batch `mb` is
 * computed (DDP fills buckets, FSDP collects the layer's unsharded grads). */
typedef struct hooks {
    void (*grad)(gen *g, void *ctx, int layer, int param, int mb);
    void *ctx;
} hooks;

/* One block's forward: its saved activations into acts[N_ACTS]; x is the input. */
static void block_forward(gen *g, uint64_t T, blk acts[N_ACTS])
{
    uint64_t h = (uint64_t)g->p->hidden, a = T * h * 2;
    acts[0] = alloc(g, a, FLI_GEN_COMPUTE);                 /* ln1 out */
    acts[1] = alloc(g, 3 * a, FLI_GEN_COMPUTE);             /* qkv */
    acts[2] = alloc(g, a, FLI_GEN_COMPUTE);                 /* attention out (flash) */
    acts[3] = alloc(g, T * (h / 64) * 4, FLI_GEN_COMPUTE);  /* softmax log-sum-exp, fp32 per head */
    blk proj = alloc(g, a, FLI_GEN_COMPUTE);
    acts[4] = alloc(g, a, FLI_GEN_COMPUTE);                 /* residual */
    release(g, &proj, FLI_GEN_COMPUTE);
    acts[5] = alloc(g, a, FLI_GEN_COMPUTE);                 /* ln2 out */
    acts[6] = alloc(g, 4 * a, FLI_GEN_COMPUTE);             /* fc1 out */
    acts[7] = alloc(g, 4 * a, FLI_GEN_COMPUTE);             /* gelu out */
    blk fc2 = alloc(g, a, FLI_GEN_COMPUTE);
    acts[8] = alloc(g, a, FLI_GEN_COMPUTE);                 /* block output */
    release(g, &fc2, FLI_GEN_COMPUTE);
}

/* One block's backward: frees its activations, reports each parameter's gradient, and
 * replaces *gout (the gradient of its output) with the gradient of its input. */
static void block_backward(gen *g, uint64_t T, blk acts[N_ACTS], blk *gout, const hooks *hk, int layer, int mb)
{
    uint64_t h = (uint64_t)g->p->hidden, a = T * h * 2;
    release(g, &acts[8], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 6, mb);
    hk->grad(g, hk->ctx, layer, 7, mb);
    blk g_gelu = alloc(g, 4 * a, FLI_GEN_COMPUTE);
    release(g, &acts[7], FLI_GEN_COMPUTE);
    blk g_fc1 = alloc(g, 4 * a, FLI_GEN_COMPUTE);
    release(g, &g_gelu, FLI_GEN_COMPUTE);
    release(g, &acts[6], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 4, mb);
    hk->grad(g, hk->ctx, layer, 5, mb);
    blk g_ln2 = alloc(g, a, FLI_GEN_COMPUTE);
    release(g, &g_fc1, FLI_GEN_COMPUTE);
    release(g, &acts[5], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 10, mb);
    hk->grad(g, hk->ctx, layer, 11, mb);
    blk g_res = alloc(g, a, FLI_GEN_COMPUTE);
    release(g, &g_ln2, FLI_GEN_COMPUTE);
    release(g, &acts[4], FLI_GEN_COMPUTE);
    release(g, gout, FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 2, mb);
    hk->grad(g, hk->ctx, layer, 3, mb);
    blk g_attn = alloc(g, a, FLI_GEN_COMPUTE);
    blk g_qkv = alloc(g, 3 * a, FLI_GEN_COMPUTE);
    release(g, &g_attn, FLI_GEN_COMPUTE);
    release(g, &acts[2], FLI_GEN_COMPUTE);
    release(g, &acts[3], FLI_GEN_COMPUTE);
    release(g, &acts[1], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 0, mb);
    hk->grad(g, hk->ctx, layer, 1, mb);
    blk g_ln1 = alloc(g, a, FLI_GEN_COMPUTE);
    release(g, &g_qkv, FLI_GEN_COMPUTE);
    release(g, &acts[0], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, layer, 8, mb);
    hk->grad(g, hk->ctx, layer, 9, mb);
    blk g_in = alloc(g, a, FLI_GEN_COMPUTE);
    release(g, &g_ln1, FLI_GEN_COMPUTE);
    release(g, &g_res, FLI_GEN_COMPUTE);
    *gout = g_in;
}

/* Final LayerNorm, LM head and cross-entropy under autocast: bf16 logits, upcast to fp32
 * for log_softmax (saved), loss. saved[0..1]: final norm out, log_softmax. */
static void loss_forward(gen *g, uint64_t T, blk saved[2])
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    saved[0] = alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    blk logits = alloc(g, T * v * 2, FLI_GEN_COMPUTE);
    blk f32 = alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    release(g, &logits, FLI_GEN_COMPUTE);
    saved[1] = alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    release(g, &f32, FLI_GEN_COMPUTE);
    blk loss = alloc(g, 4, FLI_GEN_COMPUTE);
    release(g, &loss, FLI_GEN_COMPUTE);
}

/* Its backward: the gradient of the last block's output. Extra params 1..3 get grads. */
static blk loss_backward(gen *g, uint64_t T, blk saved[2], const hooks *hk, int mb)
{
    uint64_t h = (uint64_t)g->p->hidden, v = (uint64_t)g->p->vocab;
    blk g_ls = alloc(g, T * v * 4, FLI_GEN_COMPUTE);
    release(g, &saved[1], FLI_GEN_COMPUTE);
    blk g_logits = alloc(g, T * v * 2, FLI_GEN_COMPUTE);
    release(g, &g_ls, FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, -1, 3, mb);
    blk g_norm = alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    release(g, &g_logits, FLI_GEN_COMPUTE);
    release(g, &saved[0], FLI_GEN_COMPUTE);
    hk->grad(g, hk->ctx, -1, 1, mb);
    hk->grad(g, hk->ctx, -1, 2, mb);
    blk g_out = alloc(g, T * h * 2, FLI_GEN_COMPUTE);
    release(g, &g_norm, FLI_GEN_COMPUTE);
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
typedef struct batch {
    blk ids, labels;
} batch;

static batch load_batch(gen *g, uint64_t T, int ids, int labels)
{
    uint8_t s = g->p->prefetch ? FLI_GEN_COPY : FLI_GEN_COMPUTE;
    batch b = {{0}, {0}};
    if (ids)
        b.ids = alloc(g, T * 8, s);
    if (labels)
        b.labels = alloc(g, T * 8, s);
    return b;
}

static void free_batch(gen *g, batch *b)
{
    release(g, &b->ids, FLI_GEN_COMPUTE);
    release(g, &b->labels, FLI_GEN_COMPUTE);
}

/* Adam on `n` tensors of the given sizes (fp32): exp_avg and exp_avg_sq made at the first
 * step (kept), one temporary per tensor in each foreach op, then zero_grad(set_to_none)
 * frees the gradients. */
static void adam_step(gen *g, const uint64_t *bytes, size_t n, blk *state, blk *grads, int step)
{
    drain(g);
    if (step == 0)
        for (size_t i = 0; i < n; i++)
            if (bytes[i]) {
                state[2 * i] = alloc(g, bytes[i], FLI_GEN_COMPUTE);
                state[2 * i + 1] = alloc(g, bytes[i], FLI_GEN_COMPUTE);
            }
    blk *tmp = calloc(n ? n : 1, sizeof *tmp);
    if (!tmp) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (bytes[i])
            tmp[i] = alloc(g, bytes[i], FLI_GEN_COMPUTE); /* denom = sqrt(exp_avg_sq) + eps */
    for (size_t i = 0; i < n; i++)
        release(g, &tmp[i], FLI_GEN_COMPUTE);
    free(tmp);
    for (size_t i = 0; i < n; i++)
        release(g, &grads[i], FLI_GEN_COMPUTE);
    if (g->p->empty_cache_every && (step + 1) % g->p->empty_cache_every == 0)
        empty_cache_point(g);
}

/* ---- DDP ------------------------------------------------------------------------------
 * torch.nn.parallel.DistributedDataParallel: gradients (fp32, set to None each step) are
 * copied into buckets of about bucket_cap_mb (the first 1 MiB), filled in reverse order
 * of the parameters; a full bucket is compressed to bf16 (the bf16_compress_hook) on the
 * compute stream and all-reduced on NCCL's stream, which the temporary is recorded on. */

typedef struct ddp {
    int n_params;              /* layers * 12 + 4 extras; index = layer * 12 + param, extras last */
    uint64_t *bytes;
    int *bucket_of, *bucket_left, *bucket_size0;
    uint64_t *bucket_bytes;
    int n_buckets;
    blk *grads, *buckets, *state;
} ddp;

static int ddp_index(const gen *g, int layer, int param)
{
    return layer < 0 ? g->p->layers * LAYER_PARAMS + param : layer * LAYER_PARAMS + param;
}

static void ddp_grad(gen *g, void *ctx, int layer, int param, int mb)
{
    ddp *d = ctx;
    int i = ddp_index(g, layer, param);
    if (mb == 0)
        d->grads[i] = alloc(g, d->bytes[i], FLI_GEN_COMPUTE);
    if (mb != g->p->micro_batches - 1)
        return; /* no_sync(): accumulate, all-reduce on the last micro-batch */
    int b = d->bucket_of[i];
    if (--d->bucket_left[b] == 0) {
        /* The hook's future callback runs on NCCL's stream: the reduced bf16 bucket is
         * upcast there, divided by the world size and copied back into the bucket. */
        blk half = alloc(g, d->bucket_bytes[b] / 2, FLI_GEN_COMPUTE);
        release_later(g, &half, FLI_GEN_COMM, 24);
        blk up = alloc(g, d->bucket_bytes[b], FLI_GEN_COMM);
        release_later(g, &up, FLI_GEN_COMM, 30);
    }
}

static void run_ddp(gen *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    ddp d = {0};
    d.n_params = p->layers * LAYER_PARAMS + EXTRA_PARAMS;
    size_t n = (size_t)d.n_params;
    d.bytes = calloc(n, sizeof *d.bytes);
    d.bucket_of = calloc(n, sizeof *d.bucket_of);
    d.bucket_left = calloc(n, sizeof *d.bucket_left);
    d.bucket_size0 = calloc(n, sizeof *d.bucket_size0);
    d.bucket_bytes = calloc(n, sizeof *d.bucket_bytes);
    d.grads = calloc(n, sizeof *d.grads);
    d.buckets = calloc(n, sizeof *d.buckets);
    d.state = calloc(2 * n, sizeof *d.state);
    blk *acts = calloc((size_t)p->layers * N_ACTS * (size_t)p->micro_batches, sizeof *acts);
    blk *params = calloc(n, sizeof *params);
    if (!d.bytes || !d.bucket_of || !d.bucket_left || !d.bucket_size0 || !d.bucket_bytes || !d.grads ||
        !d.buckets || !d.state || !acts || !params) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    uint64_t r, c;
    for (int l = 0; l < p->layers; l++)
        for (int i = 0; i < LAYER_PARAMS; i++)
            d.bytes[l * LAYER_PARAMS + i] = param_elems(g, i, &r, &c) * 4;
    for (int i = 0; i < EXTRA_PARAMS; i++)
        d.bytes[p->layers * LAYER_PARAMS + i] = extra_elems(g, i) * 4;
    /* Buckets in reverse parameter order (the order backward produces gradients): the
     * head and final norm first, the embedding last. */
    int order_n = 0;
    int *order = calloc(n, sizeof *order);
    if (!order) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    for (int i = EXTRA_PARAMS - 1; i >= 1; i--)
        order[order_n++] = p->layers * LAYER_PARAMS + i;
    for (int l = p->layers - 1; l >= 0; l--)
        for (int i = LAYER_PARAMS - 1; i >= 0; i--)
            order[order_n++] = l * LAYER_PARAMS + i;
    order[order_n++] = p->layers * LAYER_PARAMS; /* embedding */
    uint64_t cap = FL_MiB;
    for (int k = 0; k < order_n; k++) {
        int i = order[k];
        d.bucket_of[i] = d.n_buckets;
        d.bucket_left[d.n_buckets]++;
        d.bucket_bytes[d.n_buckets] += d.bytes[i];
        if (d.bucket_bytes[d.n_buckets] >= cap && k + 1 < order_n) {
            d.n_buckets++;
            cap = p->bucket;
        }
    }
    d.n_buckets++;
    free(order);
    memcpy(d.bucket_size0, d.bucket_left, n * sizeof *d.bucket_left);
    /* The model on the device, then DDP's buckets (Reducer's constructor). */
    for (size_t i = 0; i < n; i++)
        params[i] = alloc(g, d.bytes[i], FLI_GEN_COMPUTE);
    for (int b = 0; b < d.n_buckets; b++)
        d.buckets[b] = alloc(g, d.bucket_bytes[b], FLI_GEN_COMPUTE);
    hooks hk = {ddp_grad, &d};
    int M = p->micro_batches;
    batch next = p->prefetch ? load_batch(g, T[0], 1, 1) : (batch){{0}, {0}};
    for (int s = 0; s < p->steps; s++) {
        memcpy(d.bucket_left, d.bucket_size0, n * sizeof *d.bucket_left);
        for (int mb = 0; mb < M; mb++) {
            size_t k = (size_t)s * (size_t)M + (size_t)mb;
            uint64_t t = T[k];
            /* Prefetch: this batch was copied during the previous micro-batch. */
            batch cur = p->prefetch ? next : load_batch(g, t, 1, 1);
            if (p->prefetch && k + 1 < (size_t)p->steps * (size_t)M)
                next = load_batch(g, T[k + 1], 1, 1);
            g->thread = 1;
            blk emb = alloc(g, t * (uint64_t)p->hidden * 2, FLI_GEN_COMPUTE);
            blk *a = acts + (size_t)mb * (size_t)p->layers * N_ACTS;
            for (int l = 0; l < p->layers; l++)
                block_forward(g, t, a + (size_t)l * N_ACTS);
            blk saved[2];
            loss_forward(g, t, saved);
            g->thread = 2; /* autograd's device thread */
            blk gout = loss_backward(g, t, saved, &hk, mb);
            for (int l = p->layers - 1; l >= 0; l--)
                block_backward(g, t, a + (size_t)l * N_ACTS, &gout, &hk, l, mb);
            release(g, &emb, FLI_GEN_COMPUTE);
            ddp_grad(g, &d, -1, 0, mb);
            release(g, &gout, FLI_GEN_COMPUTE);
            free_batch(g, &cur);
        }
        g->thread = 1;
        adam_step(g, d.bytes, n, d.state, d.grads, s);
    }
out:
    free(d.bytes);
    free(d.bucket_of);
    free(d.bucket_left);
    free(d.bucket_size0);
    free(d.bucket_bytes);
    free(d.grads);
    free(d.buckets);
    free(d.state);
    free(acts);
    free(params);
}

/* ---- FSDP -----------------------------------------------------------------------------
 * FSDP2 (fully_shard per block, the root holding embedding, final norm and head): each
 * parameter is chunked on dim 0 across ranks (torch.chunk: the last ranks may get fewer
 * rows, or none), fp32 shards. Before a block runs, its bf16 shards are copied in and
 * all-gathered on the all-gather stream, the next block's gather prefetched; after
 * forward the gathered buffer is freed (resharded). In backward the unsharded bf16
 * gradients are reduce-scattered in fp32 on the reduce-scatter stream into the sharded
 * gradient. */

typedef struct fsdp {
    int n_units;             /* layers + the root (unit = layers) */
    uint64_t *shard;         /* bytes of this rank's fp32 shard, per parameter */
    uint64_t *padded;        /* elements of one rank's padded chunk, per unit */
    uint64_t *unsharded;     /* bf16 bytes of a unit's unsharded gradients at once, per parameter */
    blk *grad_shard, *state, *gathered, *ugrads;
    int n_params;
} fsdp;

static int unit_params(const gen *g, int u) { return u == g->p->layers ? EXTRA_PARAMS : LAYER_PARAMS; }
static int unit_first(const gen *g, int u)
{
    (void)g;
    return u * LAYER_PARAMS;
}

static void fsdp_gather(gen *g, fsdp *f, int u)
{
    if (f->gathered[u].ptr)
        return;
    uint64_t R = (uint64_t)g->p->ranks;
    blk in = alloc(g, f->padded[u] * 2, FLI_GEN_ALLGATHER);
    f->gathered[u] = alloc(g, f->padded[u] * 2 * R, FLI_GEN_ALLGATHER);
    release_later(g, &in, FLI_GEN_ALLGATHER, 6);
}

static void fsdp_grad(gen *g, void *ctx, int layer, int param, int mb)
{
    (void)mb;
    fsdp *f = ctx;
    int u = layer < 0 ? g->p->layers : layer;
    int i = unit_first(g, u) + param;
    f->ugrads[i] = alloc(g, f->unsharded[i], FLI_GEN_COMPUTE);
}

static void fsdp_reduce(gen *g, fsdp *f, int u, int mb)
{
    uint64_t R = (uint64_t)g->p->ranks;
    blk in = alloc(g, f->padded[u] * 4 * R, FLI_GEN_REDUCE);
    for (int i = unit_first(g, u); i < unit_first(g, u) + unit_params(g, u); i++)
        release(g, &f->ugrads[i], FLI_GEN_COMPUTE);
    blk out = alloc(g, f->padded[u] * 4, FLI_GEN_REDUCE);
    release_later(g, &in, FLI_GEN_REDUCE, 12);
    if (mb == 0 && !f->grad_shard[u].ptr)
        f->grad_shard[u] = out; /* the sharded gradient, until zero_grad */
    else
        release(g, &out, FLI_GEN_COMPUTE); /* added into it */
}

static void run_fsdp(gen *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    fsdp f = {0};
    f.n_units = p->layers + 1;
    f.n_params = p->layers * LAYER_PARAMS + EXTRA_PARAMS;
    size_t n = (size_t)f.n_params, nu = (size_t)f.n_units;
    f.shard = calloc(n, sizeof *f.shard);
    f.unsharded = calloc(n, sizeof *f.unsharded);
    f.padded = calloc(nu, sizeof *f.padded);
    f.grad_shard = calloc(nu, sizeof *f.grad_shard);
    f.gathered = calloc(nu, sizeof *f.gathered);
    f.ugrads = calloc(n, sizeof *f.ugrads);
    f.state = calloc(2 * n, sizeof *f.state);
    blk *acts = calloc((size_t)p->layers * N_ACTS, sizeof *acts);
    blk *params = calloc(n, sizeof *params);
    uint64_t *shard_unit = calloc(nu, sizeof *shard_unit);
    if (!f.shard || !f.unsharded || !f.padded || !f.grad_shard || !f.gathered || !f.ugrads || !f.state || !acts ||
        !params || !shard_unit) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    uint64_t R = (uint64_t)p->ranks, rk = (uint64_t)g->rank;
    for (int u = 0; u < f.n_units; u++)
        for (int k = 0; k < unit_params(g, u); k++) {
            int i = unit_first(g, u) + k;
            uint64_t rows, cols;
            if (u < p->layers) {
                param_elems(g, k, &rows, &cols);
            } else {
                cols = k == 1 || k == 2 ? 1 : (uint64_t)p->hidden;
                rows = extra_elems(g, k) / cols;
            }
            uint64_t chunk = fli_div_up(rows, R);
            uint64_t mine = rows > rk * chunk ? rows - rk * chunk : 0;
            if (mine > chunk)
                mine = chunk;
            f.shard[i] = mine * cols * 4;
            f.unsharded[i] = rows * cols * 2;
            f.padded[u] += chunk * cols;
        }
    /* The sharded model: one flat fp32 shard per parameter. */
    for (size_t i = 0; i < n; i++)
        if (f.shard[i])
            params[i] = alloc(g, f.shard[i], FLI_GEN_COMPUTE);
    hooks hk = {fsdp_grad, &f};
    int M = p->micro_batches, root = p->layers;
    batch next = p->prefetch ? load_batch(g, T[0], 1, 1) : (batch){{0}, {0}};
    for (int s = 0; s < p->steps; s++) {
        for (int mb = 0; mb < M; mb++) {
            size_t k = (size_t)s * (size_t)M + (size_t)mb;
            uint64_t t = T[k];
            /* Prefetch: this batch was copied during the previous micro-batch. */
            batch cur = p->prefetch ? next : load_batch(g, t, 1, 1);
            if (p->prefetch && k + 1 < (size_t)p->steps * (size_t)M)
                next = load_batch(g, T[k + 1], 1, 1);
            g->thread = 1;
            fsdp_gather(g, &f, root);
            blk emb = alloc(g, t * (uint64_t)p->hidden * 2, FLI_GEN_COMPUTE);
            fsdp_gather(g, &f, 0);
            for (int l = 0; l < p->layers; l++) {
                if (l + 1 < p->layers)
                    fsdp_gather(g, &f, l + 1);
                block_forward(g, t, acts + (size_t)l * N_ACTS);
                release(g, &f.gathered[l], FLI_GEN_COMPUTE);
            }
            blk saved[2];
            loss_forward(g, t, saved);
            g->thread = 2;
            fsdp_gather(g, &f, p->layers - 1);
            blk gout = loss_backward(g, t, saved, &hk, mb);
            for (int l = p->layers - 1; l >= 0; l--) {
                if (l > 0)
                    fsdp_gather(g, &f, l - 1);
                block_backward(g, t, acts + (size_t)l * N_ACTS, &gout, &hk, l, mb);
                release(g, &f.gathered[l], FLI_GEN_COMPUTE);
                fsdp_reduce(g, &f, l, mb);
            }
            release(g, &emb, FLI_GEN_COMPUTE);
            fsdp_grad(g, &f, -1, 0, mb);
            release(g, &gout, FLI_GEN_COMPUTE);
            release(g, &f.gathered[root], FLI_GEN_COMPUTE);
            fsdp_reduce(g, &f, root, mb);
            free_batch(g, &cur);
        }
        g->thread = 1;
        /* Adam per unit on the sharded parameters (zero_grad frees the sharded grads). */
        for (int u = 0; u < f.n_units; u++) {
            shard_unit[u] = 0;
            for (int k = 0; k < unit_params(g, u); k++)
                shard_unit[u] += f.shard[unit_first(g, u) + k];
            if (!shard_unit[u])
                release(g, &f.grad_shard[u], FLI_GEN_COMPUTE);
        }
        adam_step(g, shard_unit, nu, f.state, f.grad_shard, s);
    }
out:
    free(f.shard);
    free(f.unsharded);
    free(f.padded);
    free(f.grad_shard);
    free(f.gathered);
    free(f.ugrads);
    free(f.state);
    free(acts);
    free(params);
    free(shard_unit);
}

/* ---- pipeline -------------------------------------------------------------------------
 * torch.distributed.pipelining's 1F1B: stage s runs min(stages - s - 1, M) forwards
 * before its first backward, so earlier stages hold more micro-batches' activations; the
 * first stage has the embedding, the last the head and the loss. Activations arrive in
 * buffers received on NCCL's stream; input gradients are sent from there too. */

typedef struct pipe {
    int first, n_layers;     /* this stage's blocks */
    int n_params;            /* n_layers * 12 + 4 */
    uint64_t *bytes;
    blk *grads, *state;
} pipe_t;

static void pipe_grad(gen *g, void *ctx, int layer, int param, int mb)
{
    pipe_t *pp = ctx;
    int i = layer < 0 ? pp->n_layers * LAYER_PARAMS + param : (layer - pp->first) * LAYER_PARAMS + param;
    if (mb == 0 && pp->bytes[i])
        pp->grads[i] = alloc(g, pp->bytes[i], FLI_GEN_COMPUTE);
}

typedef struct mb_state {
    blk *acts;       /* n_layers * N_ACTS */
    blk input;       /* received activation (stages after the first) or the embedding output */
    blk saved[2];    /* the last stage's loss */
    batch in;
} mb_state;

typedef struct pipe_run {
    gen *g;
    pipe_t *pp;
    mb_state *mbs;
    const hooks *hk;
    const uint64_t *T;       /* this step's tokens per micro-batch */
    int first_stage, last_stage;
} pipe_run;

static void pipe_forward(pipe_run *r, int m)
{
    gen *g = r->g;
    mb_state *ms = &r->mbs[m];
    uint64_t t = r->T[m], h = (uint64_t)g->p->hidden;
    g->thread = 1;
    if (r->first_stage || r->last_stage)
        ms->in = load_batch(g, t, r->first_stage, r->last_stage);
    /* The block input: the embedding's output on the first stage, else an irecv buffer. */
    ms->input = alloc(g, t * h * 2, r->first_stage ? FLI_GEN_COMPUTE : FLI_GEN_COMM);
    for (int l = 0; l < r->pp->n_layers; l++)
        block_forward(g, t, ms->acts + (size_t)l * N_ACTS);
    if (r->last_stage)
        loss_forward(g, t, ms->saved);
    /* The isend of the output needs nothing new: the block output stays saved. */
}

static void pipe_backward(pipe_run *r, int m)
{
    gen *g = r->g;
    mb_state *ms = &r->mbs[m];
    uint64_t t = r->T[m], h = (uint64_t)g->p->hidden;
    g->thread = 2;
    blk gout = r->last_stage ? loss_backward(g, t, ms->saved, r->hk, m)
                             : alloc(g, t * h * 2, FLI_GEN_COMM); /* irecv of the output's grad */
    for (int l = r->pp->n_layers - 1; l >= 0; l--)
        block_backward(g, t, ms->acts + (size_t)l * N_ACTS, &gout, r->hk, r->pp->first + l, m);
    release(g, &ms->input, FLI_GEN_COMPUTE);
    if (r->first_stage) {
        pipe_grad(g, r->pp, -1, 0, m);
        release(g, &gout, FLI_GEN_COMPUTE);
    } else {
        release_later(g, &gout, FLI_GEN_COMM, 16); /* isend of the input's grad */
    }
    free_batch(g, &ms->in);
}

static void run_pipeline(gen *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    int S = p->ranks, s = g->rank, M = p->micro_batches;
    int first_stage = s == 0, last_stage = s == S - 1;
    pipe_t pp = {0};
    int base = p->layers / S, extra = p->layers % S;
    pp.first = s * base + (s < extra ? s : extra);
    pp.n_layers = base + (s < extra);
    pp.n_params = pp.n_layers * LAYER_PARAMS + EXTRA_PARAMS;
    size_t n = (size_t)pp.n_params;
    pp.bytes = calloc(n, sizeof *pp.bytes);
    pp.grads = calloc(n, sizeof *pp.grads);
    pp.state = calloc(2 * n, sizeof *pp.state);
    mb_state *mbs = calloc((size_t)M, sizeof *mbs);
    blk *acts = calloc((size_t)M * (size_t)pp.n_layers * N_ACTS, sizeof *acts);
    blk *params = calloc(n, sizeof *params);
    if (!pp.bytes || !pp.grads || !pp.state || !mbs || !acts || !params) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    uint64_t r, c;
    for (int l = 0; l < pp.n_layers; l++)
        for (int i = 0; i < LAYER_PARAMS; i++)
            pp.bytes[l * LAYER_PARAMS + i] = param_elems(g, i, &r, &c) * 4;
    if (first_stage)
        pp.bytes[pp.n_layers * LAYER_PARAMS] = extra_elems(g, 0) * 4;
    if (last_stage)
        for (int i = 1; i < EXTRA_PARAMS; i++)
            pp.bytes[pp.n_layers * LAYER_PARAMS + i] = extra_elems(g, i) * 4;
    for (size_t i = 0; i < n; i++)
        if (pp.bytes[i])
            params[i] = alloc(g, pp.bytes[i], FLI_GEN_COMPUTE);
    for (int m = 0; m < M; m++)
        mbs[m].acts = acts + (size_t)m * (size_t)pp.n_layers * N_ACTS;
    hooks hk = {pipe_grad, &pp};
    int warm = S - s - 1 < M ? S - s - 1 : M;
    pipe_run run = {g, &pp, mbs, &hk, NULL, first_stage, last_stage};
    for (int st = 0; st < p->steps; st++) {
        run.T = T + (size_t)st * (size_t)M;
        for (int m = 0; m < warm; m++)
            pipe_forward(&run, m);
        for (int j = 0; j < M - warm; j++) {
            pipe_forward(&run, warm + j);
            pipe_backward(&run, j);
        }
        for (int j = M - warm; j < M; j++)
            pipe_backward(&run, j);
        g->thread = 1;
        adam_step(g, pp.bytes, n, pp.state, pp.grads, st);
    }
out:
    free(pp.bytes);
    free(pp.grads);
    free(pp.state);
    free(mbs);
    free(acts);
    free(params);
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
    gen g = {.p = p, .rank = rank, .t = t, .sum = sum, .thread = 1,
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
        run_ddp(&g, T);
    else if (p->kind == FLI_GEN_FSDP)
        run_fsdp(&g, T);
    else
        run_pipeline(&g, T);
    drain(&g);
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
