/* The state snapshot: a policy's regions, pages and blocks as JSON.
 *
 *   {"format":"fragless-state","version":1,"policy":"fragless","granularity":2097152,
 *    "capacity":N,"stats":{...fl_stats_json...},
 *    "regions":[{"kind":"heap","addr":"0x...","size":N,"stream":"0x...",
 *                "pages":[["0x...",size,mapped,pins],...],
 *                "blocks":[["0x...",size,live],...]},...]}
 *
 * Addresses and streams are hex strings (they need not fit a double); sizes numbers. */
#include <stdlib.h>

#include "allocator/allocator.h"

typedef struct json_walk {
    FILE *out;
    int regions;        /* regions written so far */
    int in_pages, in_blocks, items;
} json_walk;

static void close_list(json_walk *w)
{
    if (w->in_pages || w->in_blocks)
        fputs("]", w->out);
    w->in_pages = w->in_blocks = 0;
}

static void on_region(void *user, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    json_walk *w = user;
    close_list(w);
    if (w->regions++)
        fputs("},\n", w->out);
    fprintf(w->out, "{\"kind\":\"%s\",\"addr\":\"0x%llx\",\"size\":%llu,\"stream\":\"0x%llx\"", kind,
            (unsigned long long)addr, (unsigned long long)size, (unsigned long long)stream);
}

/* Starts the next item of the region's "pages" (pages = 1) or "blocks" list, opening the
 * list at its first item. */
static void next_item(json_walk *w, int pages)
{
    if (pages ? !w->in_pages : !w->in_blocks) {
        close_list(w);
        fputs(pages ? ",\"pages\":[" : ",\"blocks\":[", w->out);
        w->in_pages = pages;
        w->in_blocks = !pages;
        w->items = 0;
    }
    if (w->items++)
        fputc(',', w->out);
}

static void on_page(void *user, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    json_walk *w = user;
    next_item(w, 1);
    fprintf(w->out, "[\"0x%llx\",%llu,%d,%u]", (unsigned long long)addr, (unsigned long long)size, mapped ? 1 : 0,
            pins);
}

static void on_block(void *user, uint64_t addr, uint64_t size, int live)
{
    json_walk *w = user;
    next_item(w, 0);
    /* A part of a stitched block (FLI_BLOCK_PART) shows as live: its bytes are in use.
     * The block, at its own address, shows its bytes again: a state file's live bytes
     * count a stitched block's ends twice (at most two pages' worth each). */
    fprintf(w->out, "[\"0x%llx\",%llu,%d]", (unsigned long long)addr, (unsigned long long)size, live ? 1 : 0);
}

fl_status fli_state_write(const fli_policy *p, const fl_stats *stats, FILE *out)
{
    fprintf(out, "{\"format\":\"fragless-state\",\"version\":1,\"policy\":\"%s\",\"granularity\":%llu,\"capacity\":%llu,\n",
            p->ops->name, (unsigned long long)p->dev->granularity, (unsigned long long)p->dev->capacity);
    if (stats) {
        size_t n = fl_stats_json(stats, NULL, 0);
        char *buf = malloc(n + 1);
        if (!buf)
            return fli_fail(FL_ERR_NOMEM, "state snapshot: host memory");
        fl_stats_json(stats, buf, n + 1);
        fprintf(out, "\"stats\":%s,\n", buf);
        free(buf);
    }
    fputs("\"regions\":[\n", out);
    json_walk w = {.out = out};
    fli_state_visitor v = {.user = &w, .region = on_region, .page = on_page, .block = on_block};
    if (p->ops->walk)
        p->ops->walk(p, &v);
    close_list(&w);
    fputs(w.regions ? "}\n]}\n" : "]}\n", out);
    return ferror(out) ? fli_fail(FL_ERR_IO, "state snapshot: write error") : FL_OK;
}
