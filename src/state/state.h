/* State snapshots read back: the JSON that fl_allocator_snapshot, oom_snapshot:PATH and
 * Python's fragless.snapshot() write (src/allocator/state_write.c, format in
 * docs/ARCHITECTURE.md, "The allocator object"), for `fragless report`.
 *
 * A strict reader: a small recursive-descent JSON parser (objects, arrays, strings with
 * every escape, numbers, true, false, null) bounded in depth (FL_STATE_MAX_DEPTH) and
 * driven by the format, so the only recursion is the format's own nesting and the
 * skipping of unknown values, which stops at that depth. Unknown keys are skipped
 * (forward compatible); a "format" other than "fragless-state" or a "version" other than 1
 * is refused. Errors are FL_ERR_PARSE with "NAME:LINE:COL: what was expected in
 * regions[2].pages, found ... (byte OFFSET)". */
#ifndef FL_STATE_H
#define FL_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "fragless.h"

/* What a policy holds, visited in address order for state snapshots and the report's
 * page map (not a hot path). Callbacks may be NULL. */
enum { FLI_BLOCK_FREE = 0, FLI_BLOCK_LIVE = 1, FLI_BLOCK_PART = 2 };

typedef struct fli_state_visitor {
    void *user;
    /* A region of address space: a fragless heap's reservation (kind "heap" or "small
     * heap"), a cca segment ("segment", "expandable segment"), a nocache block ("block"),
     * a fragless stitched block's reservation ("stitched block": its pages of its own,
     * and the block at its address). Pages and blocks that follow belong to it. */
    void (*region)(void *user, uint64_t addr, uint64_t size, uint64_t stream, const char *kind);
    /* A device page of the region (regions made of pages only, up to the highest page
     * ever mapped): mapped or not, and how many live blocks touch it (0 = cached). */
    void (*page)(void *user, uint64_t addr, uint64_t size, int mapped, uint32_t pins);
    /* A block of the region: live 1, a live block; 0, free (cached and reusable); 2, bytes
     * of a live block shown at its own address in another region (a stitched block's
     * first or last bytes, on a page of a heap: FLI_BLOCK_PART). */
    void (*block)(void *user, uint64_t addr, uint64_t size, int live);
} fli_state_visitor;

/* Deepest nesting of arrays and objects a file may have: the format needs 5
 * (top > regions > region > pages > page). */
#define FL_STATE_MAX_DEPTH 8
/* Biggest file fli_state_read takes (a snapshot of an 80 GiB GPU is a few MB). */
#define FL_STATE_MAX_FILE (UINT64_C(1) << 30)

typedef struct fli_state_region {
    uint64_t addr, size, stream;
    char kind[32];                  /* "heap", "small heap", "segment", ... (cut to fit) */
    size_t page0, n_pages;          /* its pages: pages[page0 .. page0 + n_pages) */
    size_t block0, n_blocks;        /* its blocks, likewise */
} fli_state_region;

typedef struct fli_state_page {
    uint64_t addr, size;
    uint32_t pins;                  /* live blocks touching it (0: cached) */
    int mapped;
} fli_state_page;

typedef struct fli_state_block {
    uint64_t addr, size;
    int live;
} fli_state_block;

typedef struct fli_state {
    char policy[32];
    uint64_t granularity;           /* a power of two */
    uint64_t capacity;
    int has_stats;                  /* the file has a "stats" object */
    fl_stats stats;                 /* the keys it had (fli_state_has_stat); others 0 */
    uint64_t stats_has;             /* one bit per known key (fli_state_has_stat) */
    /* Regions in file order; pages and blocks in address order within their region and
     * inside it (checked). */
    fli_state_region *regions;
    size_t n_regions, cap_regions;
    fli_state_page *pages;
    size_t n_pages, cap_pages;
    fli_state_block *blocks;
    size_t n_blocks, cap_blocks;
} fli_state;

/* Parses text[0..n) (no terminator needed); name is the file in messages. On error
 * returns FL_ERR_PARSE (FL_ERR_NOMEM when host memory runs out) and leaves out empty
 * (fli_state_free is harmless either way). */
fl_status fli_state_parse(const char *text, size_t n, const char *name, fli_state *out);
/* Reads and parses a file: FL_ERR_IO when it cannot be read, else as fli_state_parse. */
fl_status fli_state_read(const char *path, fli_state *out);
void fli_state_free(fli_state *s);

/* Whether the file had a statistic, by its key as fl_stats_json writes it:
 * "allocated_bytes.all.current", "num_ooms", "fragless.cached_bytes",
 * "fragless.device_calls.map". 0 for keys this reader does not know. */
int fli_state_has_stat(const fli_state *s, const char *key);

/* Visits the regions, pages and blocks as the policy's walk did when it wrote them. */
void fli_state_walk(const fli_state *s, const fli_state_visitor *v);

#endif
