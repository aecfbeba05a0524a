/* Fuzz target: the state snapshot reader (src/state/state_read.c, the JSON that
 * fl_allocator_snapshot writes and `fragless report` draws). Properties: a failure is
 * FL_ERR_PARSE (or FL_ERR_NOMEM) with a message and leaves the state empty; a success
 * has regions whose pages and blocks lie inside them, in address order, with their
 * index ranges inside the arrays; the walk visits exactly what was parsed. */
#include <string.h>

#include "fuzz.h"
#include "state/state.h"

typedef struct counts {
    size_t regions, pages, blocks;
} counts;

static void on_region(void *u, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    (void)addr, (void)size, (void)stream;
    FZ_CHECK(kind != NULL, "region without a kind");
    ((counts *)u)->regions++;
}
static void on_page(void *u, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    (void)addr, (void)size, (void)mapped, (void)pins;
    ((counts *)u)->pages++;
}
static void on_block(void *u, uint64_t addr, uint64_t size, int live)
{
    (void)addr, (void)size, (void)live;
    ((counts *)u)->blocks++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fli_state st;
    fl_status s = fli_state_parse((const char *)data, size, "fuzz", &st);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_PARSE || s == FL_ERR_NOMEM, "failed with %s: %s", fl_status_str(s), fl_last_error());
        FZ_CHECK(fl_last_error()[0] != 0, "failed without a message");
        FZ_CHECK(st.n_regions == 0 && st.n_pages == 0 && st.n_blocks == 0, "a failed parse left data");
        fli_state_free(&st);
        return 0;
    }
    FZ_CHECK(st.granularity && !(st.granularity & (st.granularity - 1)), "granularity %llu",
             (unsigned long long)st.granularity);
    size_t pages = 0, blocks = 0;
    for (size_t i = 0; i < st.n_regions; i++) {
        const fli_state_region *r = &st.regions[i];
        FZ_CHECK(r->page0 + r->n_pages <= st.n_pages && r->block0 + r->n_blocks <= st.n_blocks,
                 "region %zu indexes past the arrays", i);
        pages += r->n_pages;
        blocks += r->n_blocks;
        uint64_t end = r->addr + r->size;
        FZ_CHECK(end >= r->addr, "region %zu wraps", i);
        uint64_t prev = r->addr;
        for (size_t k = 0; k < r->n_pages; k++) {
            const fli_state_page *p = &st.pages[r->page0 + k];
            FZ_CHECK(p->size && p->addr >= prev && p->addr + p->size <= end && p->addr + p->size > p->addr,
                     "page %zu of region %zu out of order or outside it", k, i);
            prev = p->addr + p->size;
        }
        prev = r->addr;
        for (size_t k = 0; k < r->n_blocks; k++) {
            const fli_state_block *b = &st.blocks[r->block0 + k];
            FZ_CHECK(b->size && b->addr >= prev && b->addr + b->size <= end && b->addr + b->size > b->addr,
                     "block %zu of region %zu out of order or outside it", k, i);
            prev = b->addr + b->size;
        }
    }
    FZ_CHECK(pages == st.n_pages && blocks == st.n_blocks, "pages or blocks belong to no region");
    counts c = {0, 0, 0};
    fli_state_visitor v = {&c, on_region, on_page, on_block};
    fli_state_walk(&st, &v);
    FZ_CHECK(c.regions == st.n_regions && c.pages == st.n_pages && c.blocks == st.n_blocks,
             "the walk visits %zu/%zu/%zu, parsed %zu/%zu/%zu", c.regions, c.pages, c.blocks, st.n_regions,
             st.n_pages, st.n_blocks);
    fli_state_free(&st);
    return 0;
}
