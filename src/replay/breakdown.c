/* The breakdown of reserved memory at one op: the policy's walk (regions, their pages,
 * their blocks) is gathered one region at a time, and each region's held bytes are split
 * into live bytes, the slack inside live blocks and free bytes by cause. Live bytes are
 * the blocks the policy calls live (block_size > 0), each request rounded up to 512 B,
 * the same rule as fli_live_size everywhere else; a block the walk shows as used but the
 * policy holds for reuse (fragless's quick lists) is free memory. */
#include <stdlib.h>
#include <string.h>

#include "replay/breakdown.h"

typedef struct wpage {
    uint64_t addr, size;
    int mapped;
} wpage;

typedef struct wblock {
    uint64_t addr, size, requested; /* requested 0: not live */
    int part;                       /* bytes of a live block shown elsewhere (FLI_BLOCK_PART):
                                       in use here, counted live there */
} wblock;

typedef struct walker {
    fli_breakdown *b;
    const fli_policy *pol;
    const fl_config *cfg;
    const fli_prepared *p;
    fli_map slot_of;             /* live block address -> slot */
    int have_slots;
    /* the region being gathered */
    int open;
    uint64_t r_addr, r_size, r_stream;
    wpage *pages;
    size_t n_pages, cap_pages;
    wblock *blocks;
    size_t n_blocks, cap_blocks;
    uint64_t held;              /* all regions so far */
    fli_site_share *shares;      /* per site with stranded bytes */
    size_t n_shares, cap_shares;
    fli_map share_of;            /* site -> index in shares */
    int nomem;
} walker;

static int grow(void **v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? 2 * *cap : 64;
    void *p = realloc(*v, nc * size);
    if (!p)
        return -1;
    *v = p;
    *cap = nc;
    return 0;
}

static uint64_t share(uint64_t total, uint64_t part, uint64_t whole)
{
    return whole ? (uint64_t)((unsigned __int128)total * part / whole) : 0;
}

static void strand(walker *w, const wblock *k, uint64_t bytes)
{
    if (!bytes || w->nomem || !w->have_slots)
        return;
    uint64_t slot, site = 0, idx;
    if (fli_map_get(&w->slot_of, k->addr, &slot) && w->p->slot_site)
        site = w->p->slot_site[slot];
    if (!fli_map_get(&w->share_of, site, &idx)) {
        if (grow((void **)&w->shares, &w->cap_shares, w->n_shares, sizeof *w->shares) ||
            fli_map_put(&w->share_of, site, w->n_shares) != FL_OK) {
            w->nomem = 1;
            return;
        }
        idx = w->n_shares++;
        w->shares[idx] = (fli_site_share){.site = (uint32_t)site};
    }
    fli_site_share *s = &w->shares[idx];
    s->stranded += bytes;
    s->live += k->size;
    s->blocks++;
}

/* One region, gathered: its held bytes into live, slack and free by cause. */
static void flush(walker *w)
{
    if (!w->open)
        return;
    w->open = 0;
    fli_breakdown *b = w->b;
    uint64_t held = 0, live_size = 0, free_bytes = 0, interleaved = 0;
    int has_live = 0;
    for (size_t i = 0; i < w->n_blocks; i++) {
        wblock *k = &w->blocks[i];
        if (!k->requested)
            continue;
        has_live = 1;
        uint64_t l = fli_live_size(k->requested), slack = k->size > l ? k->size - l : 0;
        uint64_t r = fli_round_request(w->cfg, k->requested);
        uint64_t rounding = r > l ? r - l : 0;
        if (rounding > slack)
            rounding = slack;
        b->live += l;
        b->rounding += rounding;
        b->unsplit += slack - rounding;
        live_size += k->size > l ? k->size : l;
    }
    if (!w->n_pages) {
        held = w->r_size;
        free_bytes = held > live_size ? held - live_size : 0;
        interleaved = has_live ? free_bytes : 0;
    } else {
        /* Pages: a mapped page's bytes outside live blocks are free, interleaved when a
         * live block touches the page. Blocks and pages are in address order. A stitched
         * block's first and last bytes lie on pages of other regions (as parts there):
         * its region's pages hold only its middle. */
        size_t j = 0;
        uint64_t on_pages = 0;
        for (size_t i = 0; i < w->n_pages; i++) {
            const wpage *pg = &w->pages[i];
            if (!pg->mapped)
                continue;
            held += pg->size;
            uint64_t lo = pg->addr, hi = pg->addr + pg->size, on = 0;
            int touched = 0;
            while (j < w->n_blocks && w->blocks[j].addr + w->blocks[j].size <= lo)
                j++;
            for (size_t k = j; k < w->n_blocks && w->blocks[k].addr < hi; k++) {
                if (!w->blocks[k].requested && !w->blocks[k].part)
                    continue;
                uint64_t a = w->blocks[k].addr > lo ? w->blocks[k].addr : lo;
                uint64_t e = w->blocks[k].addr + w->blocks[k].size < hi ? w->blocks[k].addr + w->blocks[k].size : hi;
                on += e - a;
                touched = 1;
            }
            uint64_t f = pg->size > on ? pg->size - on : 0;
            free_bytes += f;
            interleaved += touched ? f : 0;
            on_pages += on;
        }
        /* Bytes in use outside mapped pages cannot be; if they were, they count as held
         * so that the parts still add up. */
        if (held < on_pages + free_bytes)
            held = on_pages + free_bytes;
    }
    w->held += held;
    if (w->r_stream != b->stream) {
        b->other_streams += free_bytes;
        return;
    }
    b->interleaved += interleaved;
    b->free_segments += free_bytes - interleaved;
    /* Who strands the interleaved bytes: shared among the region's live blocks by size. */
    uint64_t total_live = 0;
    for (size_t i = 0; i < w->n_blocks; i++)
        total_live += w->blocks[i].requested ? w->blocks[i].size : 0;
    for (size_t i = 0; interleaved && i < w->n_blocks; i++)
        if (w->blocks[i].requested)
            strand(w, &w->blocks[i], share(interleaved, w->blocks[i].size, total_live));
}

static void on_region(void *user, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    (void)kind;
    walker *w = user;
    flush(w);
    w->open = 1;
    w->r_addr = addr;
    w->r_size = size;
    w->r_stream = stream;
    w->n_pages = w->n_blocks = 0;
}

static void on_page(void *user, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    (void)pins;
    walker *w = user;
    if (!w->open || grow((void **)&w->pages, &w->cap_pages, w->n_pages, sizeof *w->pages)) {
        w->b->host_nomem = 1;
        return;
    }
    w->pages[w->n_pages++] = (wpage){addr, size, mapped};
}

static void on_block(void *user, uint64_t addr, uint64_t size, int live)
{
    walker *w = user;
    if (!w->open || grow((void **)&w->blocks, &w->cap_blocks, w->n_blocks, sizeof *w->blocks)) {
        w->b->host_nomem = 1;
        return;
    }
    uint64_t req = live == FLI_BLOCK_LIVE ? w->pol->ops->block_size(w->pol, addr) : 0;
    w->blocks[w->n_blocks++] = (wblock){addr, size, req, live == FLI_BLOCK_PART};
}

static int by_stranded(const void *a, const void *b)
{
    const fli_site_share *x = a, *y = b;
    return x->stranded > y->stranded ? -1 : x->stranded < y->stranded ? 1 : (x->site > y->site) - (x->site < y->site);
}

int fli_breakdown_inspect(const fli_replay_view *v, void *user)
{
    fli_breakdown_ctx *ctx = user;
    fli_breakdown *b = ctx->out;
    memset(b, 0, sizeof *b);
    b->taken = 1;
    b->op = v->op;
    b->stream = v->p->ops[v->op].stream;
    b->reserved = v->reserved;
    walker w = {.b = b, .pol = v->pol, .cfg = ctx->cfg, .p = v->p};
    if (fli_map_init(&w.share_of, 64) == FL_OK && fli_map_init(&w.slot_of, 1024) == FL_OK) {
        w.have_slots = 1;
        for (uint32_t s = 0; s < v->p->n_slots && w.have_slots; s++)
            if (v->slot_addr[s] && fli_map_put(&w.slot_of, v->slot_addr[s], s) != FL_OK)
                w.have_slots = 0;
    }
    fli_state_visitor vis = {&w, on_region, on_page, on_block};
    v->pol->ops->walk(v->pol, &vis);
    flush(&w);
    b->unmapped = b->reserved > w.held ? b->reserved - w.held : 0;
    /* Held beyond the device's count cannot be; keep the identity if it ever were. */
    if (w.held > b->reserved)
        b->reserved = w.held;
    b->host_nomem |= w.nomem || !w.have_slots;
    if (w.n_shares)
        qsort(w.shares, w.n_shares, sizeof *w.shares, by_stranded);
    b->n_site_groups = w.n_shares;
    for (size_t i = 0; i < w.n_shares && b->n_sites < FL_BREAKDOWN_SITES; i++)
        b->sites[b->n_sites++] = w.shares[i];
    free(w.pages);
    free(w.blocks);
    free(w.shares);
    fli_map_free(&w.slot_of);
    fli_map_free(&w.share_of);
    return ctx->stop;
}

uint64_t fli_breakdown_sum(const fli_breakdown *b)
{
    return b->interleaved + b->free_segments + b->other_streams + b->rounding + b->unsplit + b->unmapped;
}
