/* Where reserved memory goes at one moment of a replay: the bytes the allocator holds
 * beyond the program's live bytes, split by cause so that the parts add up, and the
 * allocation sites of the live blocks that keep fragmented memory from being given back.
 * Taken through the replay's inspection hook (a walk of the policy, read only). */
#ifndef FL_BREAKDOWN_H
#define FL_BREAKDOWN_H

#include "replay/replay.h"

#define FL_BREAKDOWN_SITES 5

/* Free bytes of fragmented segments attributed to the live blocks of one site (a
 * segment's free bytes shared among its live blocks by their size). */
typedef struct fli_site_share {
    uint32_t site;              /* index into the trace's sites; 0 = unknown */
    uint64_t stranded;          /* free bytes kept from the device by these blocks */
    uint64_t live;              /* their live bytes there */
    uint64_t blocks;
} fli_site_share;

typedef struct fli_breakdown {
    int taken;
    size_t op;                  /* the op it was taken after */
    uint64_t stream;            /* the request's stream (the op's) */
    uint64_t reserved;          /* device memory the allocator held */
    uint64_t live;              /* live bytes, requests rounded up to 512 B */
    /* reserved - live, by cause (they add up to it exactly): */
    uint64_t interleaved;       /* free inside segments (pages) that also hold live blocks */
    uint64_t free_segments;     /* free in wholly free segments (pages) of the request's
                                   stream: of the wrong size or pool for it */
    uint64_t other_streams;     /* free in segments (heaps) of other streams */
    uint64_t rounding;          /* live blocks beyond the request: the policy's rounding */
    uint64_t unsplit;           /* ... beyond that: remainders not split off (blocks of
                                   max_split_size_mb or more, tails of 1 MiB or less) */
    uint64_t unmapped;          /* held physical memory mapped nowhere (spare handles) */
    /* who pins it: the sites with the most stranded bytes (interleaved, request's stream) */
    fli_site_share sites[FL_BREAKDOWN_SITES];
    int n_sites;
    uint64_t n_site_groups;     /* sites that strand anything, all of them */
    int host_nomem;             /* host memory ran out: sites left out */
} fli_breakdown;

/* The inspection hook (fli_replay_opts.inspect; user = an fli_breakdown_ctx); returns
 * `stop` from the context. */
typedef struct fli_breakdown_ctx {
    fli_breakdown *out;
    const fl_config *cfg;       /* the policy's config (its rounding) */
    int stop;                   /* return value: 1 ends the replay after the inspection */
} fli_breakdown_ctx;
int fli_breakdown_inspect(const fli_replay_view *v, void *user);

/* The sum of the parts (reserved - live when the walk saw every live block). */
uint64_t fli_breakdown_sum(const fli_breakdown *b);

#endif
