/* Layout of the range allocator, shared with the policies that walk it directly
 * (the fragless policy reads block extents to keep its page accounting). */
#ifndef FL_RANGE_INTERNAL_H
#define FL_RANGE_INTERNAL_H

#include "util/util.h"

enum {
    RANGE_SL_LOG = 4,                 /* 16 classes per power of two */
    RANGE_SL_COUNT = 1 << RANGE_SL_LOG,
    RANGE_FL_COUNT = 64,
    RANGE_SCAN = 4,                   /* blocks examined per class for a tighter fit */
};

typedef struct range_node {
    uint64_t offset;
    uint64_t size;
    uint32_t prev_phys, next_phys;    /* address-order neighbours, 0 = none */
    uint32_t prev_free, next_free;    /* class list links (or the recycle list) */
    uint16_t cls;                     /* class list a free node is on */
    uint8_t used;                     /* RANGE_FREE, RANGE_USED, RANGE_RECYCLED or RANGE_HELD */
    uint16_t tag;                     /* a used block's 16 bits for its owner (the fragless
                                         policy: size - requested bytes); fits the padding */
} range_node;

/* Node states. A held block is allocated as far as the range allocator is concerned,
 * but its owner has set it aside (the fragless policy's quick lists): only the owner
 * tells it from a used one. */
enum { RANGE_FREE = 0, RANGE_USED = 1, RANGE_RECYCLED = 2, RANGE_HELD = 3 };

struct fl_range {
    uint64_t capacity;
    uint64_t min_align;
    unsigned align_log;
    uint64_t total_free;
    uint64_t peak_used;               /* the most bytes allocated at once (capacity less
                                         total_free at its lowest; held blocks count) */
    uint64_t live;
    range_node *nodes;                /* node 0 is the NIL sentinel */
    uint32_t n_nodes, cap_nodes;
    uint32_t free_nodes;              /* recycled nodes */
    uint32_t head;                    /* the node at offset 0 */
    uint64_t fli_bitmap;
    uint32_t sl_bitmap[RANGE_FL_COUNT];
    uint32_t heads[RANGE_FL_COUNT * RANGE_SL_COUNT];
    fli_map used;                      /* offset -> node of every used block, unless: */
    int untracked;                    /* the owner finds its blocks' nodes itself (range_untrack) */
};

/* fl_range_free that also says how large the block was (one hash lookup, not two). */
fl_status range_free_sized(fl_range *r, uint64_t offset, uint64_t *size);
/* For an owner that keeps the node of each of its blocks (the fragless policy's index of
 * block starts): used blocks are not entered in the offset table, which saves a hash
 * insert per allocation and a remove per free. Called on a new range; afterwards blocks
 * go back by node (range_release) only, and fl_range_free / fl_range_block_size do not
 * know them. */
void range_untrack(fl_range *r);
/* Gives used node n back (merged with its free neighbours); returns the block's size. */
uint64_t range_release(fl_range *r, uint32_t n);
/* Free node holding at least size bytes (TLSF search), 0 if none. */
uint32_t range_find_free(const fl_range *r, uint64_t size);
/* Up to max free nodes of at least size bytes, from the request's class upward. */
size_t range_candidates(const fl_range *r, uint64_t size, uint32_t *out, size_t max);
/* Makes [start + pad, start + pad + size) of free node n a used block, *used its node;
 * the caller chose pad (a multiple of min_align, pad + size <= the node's size). */
fl_status range_take(fl_range *r, uint32_t n, uint64_t pad, uint64_t size, uint32_t *used);
uint32_t range_free_node(fl_range *r, uint32_t n);

#endif
