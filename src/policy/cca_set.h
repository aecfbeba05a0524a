/* The ordered sets behind the cca policies: PyTorch keeps its free blocks in a
 * std::set ordered by (stream, size, address) and its unmapped expandable ranges in one
 * ordered by (stream, address). This is an intrusive treap with the same orders:
 * insert and lower_bound in O(log n) expected; remove, next and prev from the node
 * itself through parent links, O(1) expected; no allocation. */
#ifndef FL_CCA_SET_H
#define FL_CCA_SET_H

#include <stdbool.h>
#include <stdint.h>

/* Embedded first in every block: the key fields are the block's own fields, so they
 * must not change while the node is in a set. */
typedef struct cca_node {
    struct cca_node *left, *right, *parent;
    uint64_t stream, size, addr;
    uint32_t prio;                 /* heap priority, set on insert */
} cca_node;

typedef struct cca_set {
    cca_node *root;
    uint64_t count;
    uint32_t rng;                  /* xorshift state for priorities: deterministic */
    bool by_addr;                  /* order (stream, addr) instead of (stream, size, addr) */
} cca_set;

void cca_set_init(cca_set *s, bool by_addr, uint32_t seed);
/* The key must not be in the set yet. */
void cca_set_insert(cca_set *s, cca_node *n);
/* n must be in the set. */
void cca_set_remove(cca_set *s, cca_node *n);
/* First node whose key is >= (stream, size, addr); size is ignored by address sets. */
cca_node *cca_set_lower_bound(const cca_set *s, uint64_t stream, uint64_t size, uint64_t addr);
cca_node *cca_set_next(const cca_set *s, const cca_node *n);
cca_node *cca_set_prev(const cca_set *s, const cca_node *n);
cca_node *cca_set_first(const cca_set *s);
cca_node *cca_set_last(const cca_set *s);
bool cca_set_contains(const cca_set *s, const cca_node *n);
/* In key order; fn must not change the set. Stops when fn returns nonzero and
 * returns that value. */
int cca_set_walk(const cca_set *s, int (*fn)(cca_node *n, void *user), void *user);
/* 0 when ordered, heap-shaped and counted right; else nonzero with fli_fail() set. */
int cca_set_check(const cca_set *s, const char *name);

#endif
