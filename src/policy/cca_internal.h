/* State shared by the two files of the cca policies: blocks, segments, pools and the
 * policy itself. cca.c is PyTorch's caching allocator proper (DeviceCachingAllocator);
 * cca_expandable.c is its expandable segments (ExpandableSegment and the block logic
 * around it). Not included from outside src/policy/. */
#ifndef FL_CCA_INTERNAL_H
#define FL_CCA_INTERNAL_H

#include "policy/cca_set.h"
#include "policy/policy.h"

/* PyTorch's constants (CUDACachingAllocator.cpp). */
#define CCA_MIN_BLOCK UINT64_C(512)            /* kMinBlockSize */
#define CCA_SMALL_SIZE (1 * FL_MiB)            /* kSmallSize: largest small request */
#define CCA_SMALL_BUFFER (2 * FL_MiB)          /* kSmallBuffer: small segments, small pages */
#define CCA_LARGE_BUFFER (20 * FL_MiB)         /* kLargeBuffer: large segments, large pages */
#define CCA_MIN_LARGE_ALLOC (10 * FL_MiB)      /* kMinLargeAlloc */
#define CCA_ROUND_LARGE (2 * FL_MiB)           /* kRoundLarge */

#define CCA_NO_HANDLE UINT64_MAX               /* page slot with nothing mapped */

typedef struct cca_segment cca_segment;
typedef struct cca_pool cca_pool;

typedef struct cca_block {
    cca_node node;                 /* stream, size, addr: first member (the set's key) */
    struct cca_block *prev, *next; /* address neighbours in the same segment */
    cca_segment *seg;
    uint64_t gc_base;              /* pool->gc_calls when the block entered the pool */
    uint64_t requested;            /* allocated: the bytes asked (size is rounded) */
    bool allocated;
    bool mapped;                   /* false only for unmapped ranges of expandable segments */
} cca_block;

struct cca_pool {
    cca_set blocks;                /* free mapped blocks by (stream, size, addr) */
    cca_set unmapped;              /* expandable: unmapped ranges by (stream, addr) */
    bool is_small;
    uint64_t gc_calls;             /* get_free_block calls while GC is on: block age */
};

struct cca_segment {
    cca_segment *prev_seg, *next_seg;
    cca_block *head;               /* lowest-address block */
    cca_pool *pool;
    uint64_t stream;
    uint64_t base, size;           /* cudaMalloc range, or the whole virtual reservation */
    bool expandable;
    uint64_t page;                 /* expandable: bytes per physical handle */
    uint64_t *handles;             /* expandable: handle per page, CCA_NO_HANDLE if none */
    uint64_t n_handles;            /* slots in use: one past the highest mapped page */
    uint64_t cap_handles;
};

typedef struct cca_chunk cca_chunk;

typedef struct cca_policy {
    fli_policy base;
    fl_config cfg;
    bool expandable;
    uint64_t max_split;            /* UINT64_MAX when unlimited */
    double gc_threshold;           /* used only with a limit, as PyTorch needs a fraction */
    cca_pool small, large;
    cca_segment *segments;
    uint64_t n_segments;
    fli_map live;                   /* address -> cca_block* of every allocated block */
    cca_block *spare;              /* recycled block records, linked through next */
    uint64_t n_spare;
    cca_chunk *chunks;
} cca_policy;

/* cca.c: records, pools and segments, for both kinds of segment. */
fl_status cca_spare(cca_policy *c, uint64_t n);           /* makes n records available */
cca_block *cca_block_new(cca_policy *c);                  /* never fails after cca_spare */
void cca_block_delete(cca_policy *c, cca_block *b);
void cca_pool_insert(cca_block *b);                       /* into its pool's free set */
uint64_t cca_try_merge(cca_policy *c, cca_block *dst, cca_block *src);
void cca_segment_link(cca_policy *c, cca_segment *s);
void cca_segment_unlink(cca_policy *c, cca_segment *s);
static inline uint64_t cca_reserved(const cca_policy *c) { return c->base.dev->counters.in_use; }
/* A block that is its whole segment. */
static inline bool cca_unsplit(const cca_block *b) { return !b->prev && !b->next; }
/* release_block: cudaFree of a whole, free, cudaMalloc segment. */
fl_status cca_release_block(cca_policy *c, cca_block *b);

/* cca_follow.c: what a PyTorch snapshot recorded its allocator doing, for replay that
 * follows it (the policy ops seed and release). */
fl_status cca_seed(fli_policy *p, const fli_seed_segment *sg, const fli_seed_block *blocks, uint64_t *addrs);
fl_status cca_release(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *freed);

/* cca_expandable.c */
/* try_allocate_expandable_block: a free block of at least size, out of its pool. */
fl_status cca_exp_alloc(cca_policy *c, cca_pool *pool, uint64_t stream, uint64_t size,
                        cca_block **out);
/* The expandable half of release_blocks: unmaps the pages free blocks cover fully and
 * gives back segments left with nothing mapped. */
fl_status cca_exp_release_pool(cca_policy *c, cca_pool *pool);
/* Unmaps and releases everything and frees the reservation (policy teardown). */
void cca_exp_destroy_segment(cca_policy *c, cca_segment *s);
/* Page table against the blocks; returns the bytes mapped in *held. */
int cca_exp_check_segment(const cca_policy *c, const cca_segment *s, uint64_t *held);

#endif
