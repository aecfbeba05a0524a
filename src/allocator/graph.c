/* The bookkeeping of CUDA graphs for the allocator object (graph.h): the captures seen
 * underway, the blocks allocated during captures, the frees and releases that wait for a
 * moment without captures. The rules (what a capture forbids, when memory goes back) are
 * applied in allocator.c and the device layer's capture guard. */
#include <stdlib.h>
#include <string.h>

#include "allocator/graph.h"

fl_status fli_graphs_init(fli_graphs *g)
{
    memset(g, 0, sizeof *g);
    return fli_map_init(&g->index, 16);
}

void fli_graphs_free(fli_graphs *g)
{
    fli_map_free(&g->index);
    free(g->b);
    free(g->deferred);
    free(g->released);
    memset(g, 0, sizeof *g);
}

/* A capture query's answer that the stream captures (invalidated captures included:
 * their graph still ends with the stream's end-capture). */
static inline int capturing(int status, uint64_t id)
{
    return (status == FL_CAPTURE_ACTIVE || status == FL_CAPTURE_INVALIDATED) && id;
}

static void forget(fli_graphs *g, uint32_t i)
{
    g->underway[i] = g->underway[--g->n_underway];
}

/* Asks again about each capture seen underway (but skip's, when has_skip: its stream was
 * just asked); a stream whose capture ended, that began another or that is gone is
 * forgotten (a new capture is seen when it allocates or frees). One whose stream cannot
 * tell stays (assumed still capturing) and sets *unsure. */
static void refresh(fli_graphs *g, fl_device *d, int has_skip, uint64_t skip, int *unsure)
{
    for (uint32_t i = 0; i < g->n_underway;) {
        int status = FL_CAPTURE_NONE;
        uint64_t id = 0;
        if (has_skip && g->underway[i].stream == skip) {
            i++;
            continue;
        }
        fl_status s = fli_dev_capture_info(d, g->underway[i].stream, &status, &id);
        if (s != FL_OK && s != FL_ERR_NOT_FOUND) {
            *unsure = 1;
            i++;
        } else if (s == FL_ERR_NOT_FOUND || status == FL_CAPTURE_NONE || id != g->underway[i].id) {
            forget(g, i);
        } else {
            i++;
        }
    }
}

/* Remembers stream among those the allocator served: a few compares for a stream seen
 * already (jobs use a handful). */
static void note_stream(fli_graphs *g, uint64_t stream)
{
    for (uint32_t i = 0; i < g->n_seen; i++)
        if (g->seen[i] == stream)
            return;
    if (g->n_seen < FL_GRAPH_MAX_SEEN) {
        g->seen[g->n_seen++] = stream;
    } else {
        g->seen[g->next_seen] = stream;
        g->next_seen = (g->next_seen + 1) % FL_GRAPH_MAX_SEEN;
    }
}

/* Forgets the i-th stream served (destroyed: never to be asked about again). */
static void drop_seen(fli_graphs *g, uint32_t i)
{
    g->seen[i] = g->seen[--g->n_seen];
    g->next_seen = 0;
}

void fli_graphs_stream_gone(fli_graphs *g, uint64_t stream)
{
    for (uint32_t i = 0; i < g->n_seen; i++)
        if (g->seen[i] == stream) {
            drop_seen(g, i);
            break;
        }
}

static void add_underway(fli_graphs *g, uint64_t stream, uint64_t id)
{
    if (g->n_underway == FL_GRAPH_MAX_UNDERWAY)
        forget(g, 0);
    g->underway[g->n_underway].stream = stream;
    g->underway[g->n_underway++].id = id;
}

int fli_graphs_scan(fli_graphs *g, fl_device *d)
{
    int unsure = 0;
    refresh(g, d, 0, 0, &unsure);
    for (uint32_t i = 0; i < g->n_seen;) {
        uint64_t stream = g->seen[i++], id = 0;
        int known = 0, status = FL_CAPTURE_NONE;
        for (uint32_t k = 0; k < g->n_underway && !known; k++)
            known = g->underway[k].stream == stream;
        if (known)
            continue;
        fl_status s = fli_dev_capture_info(d, stream, &status, &id);
        if (s == FL_ERR_NOT_FOUND) { /* destroyed: it captures nothing, and is not asked again */
            drop_seen(g, --i);
        } else if (s != FL_OK) {
            unsure = 1;
        } else if (status == FL_CAPTURE_IMPLICIT) {
            g->implicit = 1;
        } else if (capturing(status, id)) {
            add_underway(g, stream, id);
        }
    }
    return unsure ? -1 : fli_graphs_underway(g);
}

fl_status fli_graphs_ended(fli_graphs *g, fl_device *d, uint64_t capture)
{
    for (uint32_t i = 0; i < g->n_underway; i++) {
        if (g->underway[i].id != capture)
            continue;
        int status = FL_CAPTURE_NONE;
        uint64_t stream = g->underway[i].stream, id = 0;
        if (fli_dev_capture_info(d, stream, &status, &id) != FL_OK)
            return fli_fail(FL_ERR_DEVICE, "cannot tell whether CUDA graph capture 0x%llx (stream 0x%llx) has "
                            "ended: %s", (unsigned long long)capture, (unsigned long long)stream, fl_last_error());
        if (capturing(status, id) && id == capture)
            return fli_fail(FL_ERR_INVALID, "CUDA graph capture 0x%llx is still underway: end it first",
                            (unsigned long long)capture);
        forget(g, i);
        break;
    }
    return FL_OK;
}

int fli_graphs_watch(fli_graphs *g, fl_device *d, uint64_t stream, uint64_t *capture, fl_status *asked)
{
    int status = FL_CAPTURE_NONE;
    uint64_t id = 0;
    *capture = 0;
    note_stream(g, stream);
    /* A device that cannot answer is taken at its word for the other streams; for this
     * one the caller is told (a block allocated for a capture it did not see would be
     * handed out again while the graph uses it). */
    fl_status s = fli_dev_capture_info(d, stream, &status, &id);
    *asked = s;
    if (s != FL_OK)
        return fli_graphs_underway(g); /* what was known stays; fl_last_error says why */
    g->implicit = status == FL_CAPTURE_IMPLICIT;
    for (uint32_t i = 0; i < g->n_underway; i++)
        if (g->underway[i].stream == stream) {
            forget(g, i);
            break;
        }
    if (capturing(status, id)) {
        *capture = id;
        add_underway(g, stream, id);
    }
    /* The others: each asked again (few streams capture at once). */
    int unsure = 0;
    refresh(g, d, 1, stream, &unsure);
    return fli_graphs_underway(g);
}

int fli_graphs_holds(const fli_graphs *g, uint64_t capture)
{
    for (uint32_t i = 0; i < g->n; i++)
        if (g->b[i].capture == capture)
            return 1;
    return 0;
}

int fli_graphs_is_underway(const fli_graphs *g, uint64_t capture)
{
    for (uint32_t i = 0; i < g->n_underway; i++)
        if (g->underway[i].id == capture)
            return 1;
    return 0;
}

fli_graph_block *fli_graphs_find(const fli_graphs *g, uint64_t addr)
{
    uint64_t i;
    return g->n && fli_map_get(&g->index, addr, &i) ? &g->b[i] : NULL;
}

fli_graph_block *fli_graphs_reuse(const fli_graphs *g, uint64_t need, uint64_t stream, uint64_t capture)
{
    fli_graph_block *best = NULL;
    if (!g->kept_blocks)
        return NULL;
    for (uint32_t i = 0; i < g->n; i++) {
        fli_graph_block *b = &g->b[i];
        if (b->live || !capture || b->capture != capture || b->stream != stream || b->rounded < need ||
            b->rounded - need > need / 4)
            continue;
        if (!best || b->rounded < best->rounded)
            best = b;
    }
    return best;
}

fl_status fli_graphs_adopt(fli_graphs *g, uint64_t addr, uint64_t stream, uint64_t capture, uint64_t requested,
                          uint64_t rounded)
{
    if (g->n == g->cap) {
        uint32_t cap = g->cap ? 2 * g->cap : 64;
        fli_graph_block *nb = realloc(g->b, cap * sizeof *nb);
        if (!nb)
            return fli_fail(FL_ERR_NOMEM, "CUDA graph blocks: host memory");
        g->b = nb;
        g->cap = cap;
    }
    if (fli_map_put(&g->index, addr, g->n) != FL_OK)
        return fli_fail(FL_ERR_NOMEM, "CUDA graph blocks: host memory");
    g->b[g->n++] = (fli_graph_block){addr, stream, capture, requested, rounded, 1};
    g->bytes += rounded;
    return FL_OK;
}

void fli_graphs_remove(fli_graphs *g, fli_graph_block *b)
{
    uint32_t i = (uint32_t)(b - g->b);
    g->bytes -= b->rounded;
    if (!b->live) { /* given back to the policy by the caller */
        g->kept_bytes -= b->rounded;
        g->kept_blocks--;
        g->keeps--;
    }
    fli_map_remove(&g->index, b->addr, NULL);
    if (i != --g->n) {
        g->b[i] = g->b[g->n];
        fli_map_put(&g->index, g->b[i].addr, i); /* replaces: no new entry, cannot fail */
    }
}

void fli_graphs_keep(fli_graphs *g, fli_graph_block *b)
{
    b->live = 0;
    g->kept_bytes += b->rounded;
    g->kept_blocks++;
    g->keeps++;
}

void fli_graphs_revive(fli_graphs *g, fli_graph_block *b, uint64_t requested)
{
    b->live = 1;
    b->requested = requested;
    g->kept_bytes -= b->rounded;
    g->kept_blocks--;
    g->reuses++;
}

static fl_status push(uint64_t **list, uint32_t *n, uint32_t *cap, uint64_t v)
{
    if (*n == *cap) {
        uint32_t c = *cap ? 2 * *cap : 16;
        uint64_t *nl = realloc(*list, c * sizeof *nl);
        if (!nl)
            return fli_fail(FL_ERR_NOMEM, "CUDA graphs: host memory");
        *list = nl;
        *cap = c;
    }
    (*list)[(*n)++] = v;
    return FL_OK;
}

fl_status fli_graphs_defer(fli_graphs *g, uint64_t addr)
{
    return push(&g->deferred, &g->n_deferred, &g->cap_deferred, addr);
}

int fli_graphs_is_deferred(const fli_graphs *g, uint64_t addr)
{
    for (uint32_t i = 0; i < g->n_deferred; i++)
        if (g->deferred[i] == addr)
            return 1;
    return 0;
}

fl_status fli_graphs_release_later(fli_graphs *g, uint64_t capture)
{
    for (uint32_t i = 0; i < g->n_released; i++)
        if (g->released[i] == capture)
            return FL_OK;
    return push(&g->released, &g->n_released, &g->cap_released, capture);
}

int fli_graphs_check(const fli_graphs *g)
{
    uint64_t bytes = 0, kept = 0, kept_blocks = 0, i;
    for (uint32_t k = 0; k < g->n; k++) {
        const fli_graph_block *b = &g->b[k];
        bytes += b->rounded;
        if (!b->live)
            kept += b->rounded, kept_blocks++;
        if (!fli_map_get(&g->index, b->addr, &i) || i != k)
            return fli_fail(FL_ERR_INVALID, "graph check: block 0x%llx is not indexed at %u",
                           (unsigned long long)b->addr, k) != FL_OK;
    }
    if (g->index.count != g->n || bytes != g->bytes || kept != g->kept_bytes || kept_blocks != g->kept_blocks)
        return fli_fail(FL_ERR_INVALID, "graph check: %u blocks, %llu indexed; totals %llu/%llu bytes, %llu/%llu kept, "
                       "%llu/%llu kept blocks", g->n, (unsigned long long)g->index.count,
                       (unsigned long long)bytes, (unsigned long long)g->bytes, (unsigned long long)kept,
                       (unsigned long long)g->kept_bytes, (unsigned long long)kept_blocks,
                       (unsigned long long)g->kept_blocks) != FL_OK;
    return 0;
}
