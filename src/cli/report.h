/* `fragless report`'s parts shared by its files: HTML text helpers (report.c) and the
 * page maps (report_map.c). */
#ifndef FL_CLI_REPORT_H
#define FL_CLI_REPORT_H

#include <stdio.h>

#include "replay/replay.h"
#include "state/state.h"

/* Anything from the input (file names) goes through here. */
void report_esc(FILE *f, const char *s);
static inline const char *sz(uint64_t b, char *buf, size_t n) { return fl_format_size(b, buf, n); }
static inline double ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : 0; }

/* ---- page maps: the policy's regions, pages and blocks at one op, or a state
 * snapshot's ------------------------------------------------------------------------ */

enum { CELL_UNMAPPED, CELL_CACHED, CELL_PIN1, CELL_PINN, CELL_STATES };

typedef struct map_region {
    uint64_t addr, size, stream;
    char kind[24];
    size_t page0, n_pages, block0, n_blocks;
} map_region;

typedef struct map_page {
    uint64_t addr, size;
    uint32_t pins;
    int mapped;
} map_page;

typedef struct map_block {
    uint64_t addr, size;
    int live;
    uint32_t site;           /* allocation site (page_map.sites), 0 = unknown */
} map_block;

typedef struct page_map {
    const char *policy;      /* shown escaped (a state snapshot's is the file's text) */
    int taken;               /* the replay reached the op and walked the policy */
    int nomem;               /* host memory ran out while collecting */
    uint64_t capacity;       /* the device's: the policy's min_capacity */
    uint64_t reserved;       /* device memory the policy held then */
    uint64_t allocated;      /* the policy's own count of live bytes */
    map_region *regions;
    size_t n_regions, cap_regions;
    map_page *pages;
    size_t n_pages, cap_pages;
    map_block *blocks;
    size_t n_blocks, cap_blocks;
    char *const *sites;      /* the trace's allocation sites (a PyTorch snapshot's), or NULL */
    uint32_t n_sites;
    const fli_map *site_of;   /* while walking: block address -> site */
    uint64_t units[CELL_STATES]; /* granularity-sized units by state */
    uint64_t live_on_pinned;     /* live bytes on pinned units (the rest of them is free) */
    uint64_t n_units;
} page_map;

/* The replay's inspection hook (fli_replay_opts.inspect, user = a page_map): walks the
 * policy into the map (with each live block's allocation site), then ends the replay. */
int report_map_inspect(const fli_replay_view *v, void *user);
/* Fills the map from a state snapshot (m->policy points into s): reserved and allocated
 * from its statistics, or its pages and blocks when it has none. */
void report_map_from_state(page_map *m, const fli_state *s);
void report_map_free(page_map *m);
/* Granularity-sized units the map's regions span: what drawing it walks. */
uint64_t report_map_units(const page_map *m, uint64_t g);
/* The maps of one input, side by side on one scale (g: the device granularity). heading:
 * the section's title (HTML); live: the bytes each summary compares reserved memory with. */
void report_write_maps(FILE *f, const char *idx, const char *heading, uint64_t live, page_map *maps, int n, uint64_t g);

#endif
