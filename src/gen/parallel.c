/* The three kinds of parallel training job `fragless gen` writes (gen.h), on the writer
 * and model pieces of gen.c: what PyTorch's DDP, FSDP2 and pipelining allocate, and on
 * which stream. */
#include "gen/gen_internal.h"

#include <stdlib.h>
#include <string.h>

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
    fli_gen_blk *grads, *buckets, *state;
} ddp;

static int ddp_index(const fli_gen_state *g, int layer, int param)
{
    return layer < 0 ? g->p->layers * FLI_GEN_LAYER_PARAMS + param : layer * FLI_GEN_LAYER_PARAMS + param;
}

static void ddp_grad(fli_gen_state *g, void *ctx, int layer, int param, int mb)
{
    ddp *d = ctx;
    int i = ddp_index(g, layer, param);
    if (mb == 0)
        d->grads[i] = fli_gen_alloc(g, d->bytes[i], FLI_GEN_COMPUTE);
    if (mb != g->p->micro_batches - 1)
        return; /* no_sync(): accumulate, all-reduce on the last micro-batch */
    int b = d->bucket_of[i];
    if (--d->bucket_left[b] == 0) {
        /* The hook's future callback runs on NCCL's stream: the reduced bf16 bucket is
         * upcast there, divided by the world size and copied back into the bucket. */
        fli_gen_blk half = fli_gen_alloc(g, d->bucket_bytes[b] / 2, FLI_GEN_COMPUTE);
        fli_gen_release_later(g, &half, FLI_GEN_COMM, 24);
        fli_gen_blk up = fli_gen_alloc(g, d->bucket_bytes[b], FLI_GEN_COMM);
        fli_gen_release_later(g, &up, FLI_GEN_COMM, 30);
    }
}

void fli_gen_run_ddp(fli_gen_state *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    ddp d = {0};
    d.n_params = p->layers * FLI_GEN_LAYER_PARAMS + FLI_GEN_EXTRA_PARAMS;
    size_t n = (size_t)d.n_params;
    d.bytes = calloc(n, sizeof *d.bytes);
    d.bucket_of = calloc(n, sizeof *d.bucket_of);
    d.bucket_left = calloc(n, sizeof *d.bucket_left);
    d.bucket_size0 = calloc(n, sizeof *d.bucket_size0);
    d.bucket_bytes = calloc(n, sizeof *d.bucket_bytes);
    d.grads = calloc(n, sizeof *d.grads);
    d.buckets = calloc(n, sizeof *d.buckets);
    d.state = calloc(2 * n, sizeof *d.state);
    fli_gen_blk *acts = calloc((size_t)p->layers * FLI_GEN_N_ACTS * (size_t)p->micro_batches, sizeof *acts);
    fli_gen_blk *params = calloc(n, sizeof *params);
    if (!d.bytes || !d.bucket_of || !d.bucket_left || !d.bucket_size0 || !d.bucket_bytes || !d.grads ||
        !d.buckets || !d.state || !acts || !params) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    uint64_t r, c;
    for (int l = 0; l < p->layers; l++)
        for (int i = 0; i < FLI_GEN_LAYER_PARAMS; i++)
            d.bytes[l * FLI_GEN_LAYER_PARAMS + i] = fli_gen_param_elems(g, i, &r, &c) * 4;
    for (int i = 0; i < FLI_GEN_EXTRA_PARAMS; i++)
        d.bytes[p->layers * FLI_GEN_LAYER_PARAMS + i] = fli_gen_extra_elems(g, i) * 4;
    /* Buckets in reverse parameter order (the order backward produces gradients): the
     * head and final norm first, the embedding last. */
    int order_n = 0;
    int *order = calloc(n, sizeof *order);
    if (!order) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    for (int i = FLI_GEN_EXTRA_PARAMS - 1; i >= 1; i--)
        order[order_n++] = p->layers * FLI_GEN_LAYER_PARAMS + i;
    for (int l = p->layers - 1; l >= 0; l--)
        for (int i = FLI_GEN_LAYER_PARAMS - 1; i >= 0; i--)
            order[order_n++] = l * FLI_GEN_LAYER_PARAMS + i;
    order[order_n++] = p->layers * FLI_GEN_LAYER_PARAMS; /* embedding */
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
        params[i] = fli_gen_alloc(g, d.bytes[i], FLI_GEN_COMPUTE);
    for (int b = 0; b < d.n_buckets; b++)
        d.buckets[b] = fli_gen_alloc(g, d.bucket_bytes[b], FLI_GEN_COMPUTE);
    fli_gen_hooks hk = {ddp_grad, &d};
    int M = p->micro_batches;
    fli_gen_batch next = p->prefetch ? fli_gen_load_batch(g, T[0], 1, 1) : (fli_gen_batch){{0}, {0}};
    for (int s = 0; s < p->steps; s++) {
        memcpy(d.bucket_left, d.bucket_size0, n * sizeof *d.bucket_left);
        for (int mb = 0; mb < M; mb++) {
            size_t k = (size_t)s * (size_t)M + (size_t)mb;
            uint64_t t = T[k];
            /* Prefetch: this batch was copied during the previous micro-batch. */
            fli_gen_batch cur = p->prefetch ? next : fli_gen_load_batch(g, t, 1, 1);
            if (p->prefetch && k + 1 < (size_t)p->steps * (size_t)M)
                next = fli_gen_load_batch(g, T[k + 1], 1, 1);
            g->thread = 1;
            fli_gen_blk emb = fli_gen_alloc(g, t * (uint64_t)p->hidden * 2, FLI_GEN_COMPUTE);
            fli_gen_blk *a = acts + (size_t)mb * (size_t)p->layers * FLI_GEN_N_ACTS;
            for (int l = 0; l < p->layers; l++)
                fli_gen_block_forward(g, t, a + (size_t)l * FLI_GEN_N_ACTS);
            fli_gen_blk saved[2];
            fli_gen_loss_forward(g, t, saved);
            g->thread = 2; /* autograd's device thread */
            fli_gen_blk gout = fli_gen_loss_backward(g, t, saved, &hk, mb);
            for (int l = p->layers - 1; l >= 0; l--)
                fli_gen_block_backward(g, t, a + (size_t)l * FLI_GEN_N_ACTS, &gout, &hk, l, mb);
            fli_gen_release(g, &emb, FLI_GEN_COMPUTE);
            ddp_grad(g, &d, -1, 0, mb);
            fli_gen_release(g, &gout, FLI_GEN_COMPUTE);
            fli_gen_free_batch(g, &cur);
        }
        g->thread = 1;
        fli_gen_adam_step(g, d.bytes, n, d.state, d.grads, s);
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
    fli_gen_blk *grad_shard, *state, *gathered, *ugrads;
    int n_params;
} fsdp;

static int unit_params(const fli_gen_state *g, int u)
{
    return u == g->p->layers ? FLI_GEN_EXTRA_PARAMS : FLI_GEN_LAYER_PARAMS;
}
static int unit_first(const fli_gen_state *g, int u)
{
    (void)g;
    return u * FLI_GEN_LAYER_PARAMS;
}

static void fsdp_gather(fli_gen_state *g, fsdp *f, int u)
{
    if (f->gathered[u].ptr)
        return;
    uint64_t R = (uint64_t)g->p->ranks;
    fli_gen_blk in = fli_gen_alloc(g, f->padded[u] * 2, FLI_GEN_ALLGATHER);
    f->gathered[u] = fli_gen_alloc(g, f->padded[u] * 2 * R, FLI_GEN_ALLGATHER);
    fli_gen_release_later(g, &in, FLI_GEN_ALLGATHER, 6);
}

static void fsdp_grad(fli_gen_state *g, void *ctx, int layer, int param, int mb)
{
    (void)mb;
    fsdp *f = ctx;
    int u = layer < 0 ? g->p->layers : layer;
    int i = unit_first(g, u) + param;
    f->ugrads[i] = fli_gen_alloc(g, f->unsharded[i], FLI_GEN_COMPUTE);
}

static void fsdp_reduce(fli_gen_state *g, fsdp *f, int u, int mb)
{
    uint64_t R = (uint64_t)g->p->ranks;
    fli_gen_blk in = fli_gen_alloc(g, f->padded[u] * 4 * R, FLI_GEN_REDUCE);
    for (int i = unit_first(g, u); i < unit_first(g, u) + unit_params(g, u); i++)
        fli_gen_release(g, &f->ugrads[i], FLI_GEN_COMPUTE);
    fli_gen_blk out = fli_gen_alloc(g, f->padded[u] * 4, FLI_GEN_REDUCE);
    fli_gen_release_later(g, &in, FLI_GEN_REDUCE, 12);
    if (mb == 0 && !f->grad_shard[u].ptr)
        f->grad_shard[u] = out; /* the sharded gradient, until zero_grad */
    else
        fli_gen_release(g, &out, FLI_GEN_COMPUTE); /* added into it */
}

void fli_gen_run_fsdp(fli_gen_state *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    fsdp f = {0};
    f.n_units = p->layers + 1;
    f.n_params = p->layers * FLI_GEN_LAYER_PARAMS + FLI_GEN_EXTRA_PARAMS;
    size_t n = (size_t)f.n_params, nu = (size_t)f.n_units;
    f.shard = calloc(n, sizeof *f.shard);
    f.unsharded = calloc(n, sizeof *f.unsharded);
    f.padded = calloc(nu, sizeof *f.padded);
    f.grad_shard = calloc(nu, sizeof *f.grad_shard);
    f.gathered = calloc(nu, sizeof *f.gathered);
    f.ugrads = calloc(n, sizeof *f.ugrads);
    f.state = calloc(2 * n, sizeof *f.state);
    fli_gen_blk *acts = calloc((size_t)p->layers * FLI_GEN_N_ACTS, sizeof *acts);
    fli_gen_blk *params = calloc(n, sizeof *params);
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
                fli_gen_param_elems(g, k, &rows, &cols);
            } else {
                cols = k == 1 || k == 2 ? 1 : (uint64_t)p->hidden;
                rows = fli_gen_extra_elems(g, k) / cols;
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
            params[i] = fli_gen_alloc(g, f.shard[i], FLI_GEN_COMPUTE);
    fli_gen_hooks hk = {fsdp_grad, &f};
    int M = p->micro_batches, root = p->layers;
    fli_gen_batch next = p->prefetch ? fli_gen_load_batch(g, T[0], 1, 1) : (fli_gen_batch){{0}, {0}};
    for (int s = 0; s < p->steps; s++) {
        for (int mb = 0; mb < M; mb++) {
            size_t k = (size_t)s * (size_t)M + (size_t)mb;
            uint64_t t = T[k];
            /* Prefetch: this batch was copied during the previous micro-batch. */
            fli_gen_batch cur = p->prefetch ? next : fli_gen_load_batch(g, t, 1, 1);
            if (p->prefetch && k + 1 < (size_t)p->steps * (size_t)M)
                next = fli_gen_load_batch(g, T[k + 1], 1, 1);
            g->thread = 1;
            fsdp_gather(g, &f, root);
            fli_gen_blk emb = fli_gen_alloc(g, t * (uint64_t)p->hidden * 2, FLI_GEN_COMPUTE);
            fsdp_gather(g, &f, 0);
            for (int l = 0; l < p->layers; l++) {
                if (l + 1 < p->layers)
                    fsdp_gather(g, &f, l + 1);
                fli_gen_block_forward(g, t, acts + (size_t)l * FLI_GEN_N_ACTS);
                fli_gen_release(g, &f.gathered[l], FLI_GEN_COMPUTE);
            }
            fli_gen_blk saved[2];
            fli_gen_loss_forward(g, t, saved);
            g->thread = 2;
            fsdp_gather(g, &f, p->layers - 1);
            fli_gen_blk gout = fli_gen_loss_backward(g, t, saved, &hk, mb);
            for (int l = p->layers - 1; l >= 0; l--) {
                if (l > 0)
                    fsdp_gather(g, &f, l - 1);
                fli_gen_block_backward(g, t, acts + (size_t)l * FLI_GEN_N_ACTS, &gout, &hk, l, mb);
                fli_gen_release(g, &f.gathered[l], FLI_GEN_COMPUTE);
                fsdp_reduce(g, &f, l, mb);
            }
            fli_gen_release(g, &emb, FLI_GEN_COMPUTE);
            fsdp_grad(g, &f, -1, 0, mb);
            fli_gen_release(g, &gout, FLI_GEN_COMPUTE);
            fli_gen_release(g, &f.gathered[root], FLI_GEN_COMPUTE);
            fsdp_reduce(g, &f, root, mb);
            fli_gen_free_batch(g, &cur);
        }
        g->thread = 1;
        /* Adam per unit on the sharded parameters (zero_grad frees the sharded grads). */
        for (int u = 0; u < f.n_units; u++) {
            shard_unit[u] = 0;
            for (int k = 0; k < unit_params(g, u); k++)
                shard_unit[u] += f.shard[unit_first(g, u) + k];
            if (!shard_unit[u])
                fli_gen_release(g, &f.grad_shard[u], FLI_GEN_COMPUTE);
        }
        fli_gen_adam_step(g, shard_unit, nu, f.state, f.grad_shard, s);
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
    fli_gen_blk *grads, *state;
} pipe_t;

static void pipe_grad(fli_gen_state *g, void *ctx, int layer, int param, int mb)
{
    pipe_t *pp = ctx;
    int i = (layer < 0 ? pp->n_layers : layer - pp->first) * FLI_GEN_LAYER_PARAMS + param;
    if (mb == 0 && pp->bytes[i])
        pp->grads[i] = fli_gen_alloc(g, pp->bytes[i], FLI_GEN_COMPUTE);
}

typedef struct mb_state {
    fli_gen_blk *acts;       /* n_layers * FLI_GEN_N_ACTS */
    fli_gen_blk input;       /* received activation (stages after the first) or the embedding output */
    fli_gen_blk saved[2];    /* the last stage's loss */
    fli_gen_batch in;
} mb_state;

typedef struct pipe_run {
    fli_gen_state *g;
    pipe_t *pp;
    mb_state *mbs;
    const fli_gen_hooks *hk;
    const uint64_t *T;       /* this step's tokens per micro-batch */
    int first_stage, last_stage;
} pipe_run;

static void pipe_forward(pipe_run *r, int m)
{
    fli_gen_state *g = r->g;
    mb_state *ms = &r->mbs[m];
    uint64_t t = r->T[m], h = (uint64_t)g->p->hidden;
    g->thread = 1;
    if (r->first_stage || r->last_stage)
        ms->in = fli_gen_load_batch(g, t, r->first_stage, r->last_stage);
    /* The block input: the embedding's output on the first stage, else an irecv buffer. */
    ms->input = fli_gen_alloc(g, t * h * 2, r->first_stage ? FLI_GEN_COMPUTE : FLI_GEN_COMM);
    for (int l = 0; l < r->pp->n_layers; l++)
        fli_gen_block_forward(g, t, ms->acts + (size_t)l * FLI_GEN_N_ACTS);
    if (r->last_stage)
        fli_gen_loss_forward(g, t, ms->saved);
    /* The isend of the output needs nothing new: the block output stays saved. */
}

static void pipe_backward(pipe_run *r, int m)
{
    fli_gen_state *g = r->g;
    mb_state *ms = &r->mbs[m];
    uint64_t t = r->T[m], h = (uint64_t)g->p->hidden;
    g->thread = 2;
    fli_gen_blk gout = r->last_stage ? fli_gen_loss_backward(g, t, ms->saved, r->hk, m)
                             : fli_gen_alloc(g, t * h * 2, FLI_GEN_COMM); /* irecv of the output's grad */
    for (int l = r->pp->n_layers - 1; l >= 0; l--)
        fli_gen_block_backward(g, t, ms->acts + (size_t)l * FLI_GEN_N_ACTS, &gout, r->hk, r->pp->first + l, m);
    fli_gen_release(g, &ms->input, FLI_GEN_COMPUTE);
    if (r->first_stage) {
        pipe_grad(g, r->pp, -1, 0, m);
        fli_gen_release(g, &gout, FLI_GEN_COMPUTE);
    } else {
        fli_gen_release_later(g, &gout, FLI_GEN_COMM, 16); /* isend of the input's grad */
    }
    fli_gen_free_batch(g, &ms->in);
}

void fli_gen_run_pipeline(fli_gen_state *g, const uint64_t *T)
{
    const fli_gen_params *p = g->p;
    int S = p->ranks, s = g->rank, M = p->micro_batches;
    int first_stage = s == 0, last_stage = s == S - 1;
    pipe_t pp = {0};
    int base = p->layers / S, extra = p->layers % S;
    pp.first = s * base + (s < extra ? s : extra);
    pp.n_layers = base + (s < extra);
    pp.n_params = pp.n_layers * FLI_GEN_LAYER_PARAMS + FLI_GEN_EXTRA_PARAMS;
    size_t n = (size_t)pp.n_params;
    pp.bytes = calloc(n, sizeof *pp.bytes);
    pp.grads = calloc(n, sizeof *pp.grads);
    pp.state = calloc(2 * n, sizeof *pp.state);
    mb_state *mbs = calloc((size_t)M, sizeof *mbs);
    fli_gen_blk *acts = calloc((size_t)M * (size_t)pp.n_layers * FLI_GEN_N_ACTS, sizeof *acts);
    fli_gen_blk *params = calloc(n, sizeof *params);
    if (!pp.bytes || !pp.grads || !pp.state || !mbs || !acts || !params) {
        g->st = fli_fail(FL_ERR_NOMEM, "gen: no memory for the model");
        goto out;
    }
    uint64_t r, c;
    for (int l = 0; l < pp.n_layers; l++)
        for (int i = 0; i < FLI_GEN_LAYER_PARAMS; i++)
            pp.bytes[l * FLI_GEN_LAYER_PARAMS + i] = fli_gen_param_elems(g, i, &r, &c) * 4;
    if (first_stage)
        pp.bytes[pp.n_layers * FLI_GEN_LAYER_PARAMS] = fli_gen_extra_elems(g, 0) * 4;
    if (last_stage)
        for (int i = 1; i < FLI_GEN_EXTRA_PARAMS; i++)
            pp.bytes[pp.n_layers * FLI_GEN_LAYER_PARAMS + i] = fli_gen_extra_elems(g, i) * 4;
    for (size_t i = 0; i < n; i++)
        if (pp.bytes[i])
            params[i] = fli_gen_alloc(g, pp.bytes[i], FLI_GEN_COMPUTE);
    for (int m = 0; m < M; m++)
        mbs[m].acts = acts + (size_t)m * (size_t)pp.n_layers * FLI_GEN_N_ACTS;
    fli_gen_hooks hk = {pipe_grad, &pp};
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
        fli_gen_adam_step(g, pp.bytes, n, pp.state, pp.grads, st);
    }
out:
    free(pp.bytes);
    free(pp.grads);
    free(pp.state);
    free(mbs);
    free(acts);
    free(params);
}
