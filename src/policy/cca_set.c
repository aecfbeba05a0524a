/* The intrusive treap of cca_set.h. Split and merge are iterative (pointer to the
 * link being filled, parent links fixed on the way), so no operation recurses or
 * allocates; walk and check recurse, which is safe because a treap's depth is
 * O(log n) with overwhelming probability. */
#include "policy/cca_set.h"

#include "util/util.h"

#include <stdio.h>

static inline int cmp_u64(uint64_t a, uint64_t b) { return (a > b) - (a < b); }

/* Compares the key (stream, size, addr) with node b in the set's order. */
static inline int cmp_key(const cca_set *s, uint64_t stream, uint64_t size, uint64_t addr,
                          const cca_node *b)
{
    if (stream != b->stream)
        return cmp_u64(stream, b->stream);
    if (!s->by_addr && size != b->size)
        return cmp_u64(size, b->size);
    return cmp_u64(addr, b->addr);
}

static inline int cmp_node(const cca_set *s, const cca_node *a, const cca_node *b)
{
    return cmp_key(s, a->stream, a->size, a->addr, b);
}

void cca_set_init(cca_set *s, bool by_addr, uint32_t seed)
{
    s->root = NULL;
    s->count = 0;
    s->rng = seed ? seed : 0x9e3779b9u;
    s->by_addr = by_addr;
}

static uint32_t next_prio(cca_set *s)
{
    uint32_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rng = x;
    return x;
}

void cca_set_insert(cca_set *s, cca_node *n)
{
    n->prio = next_prio(s);
    cca_node **link = &s->root, *parent = NULL;
    while (*link && (*link)->prio >= n->prio) {
        parent = *link;
        link = cmp_node(s, n, parent) < 0 ? &parent->left : &parent->right;
    }
    /* Split the subtree at n's key: smaller keys go left of n, larger right. */
    cca_node *t = *link;
    cca_node **l = &n->left, **r = &n->right, *lp = n, *rp = n;
    while (t) {
        if (cmp_node(s, t, n) < 0) {
            *l = t;
            t->parent = lp;
            lp = t;
            l = &t->right;
            t = t->right;
        } else {
            *r = t;
            t->parent = rp;
            rp = t;
            r = &t->left;
            t = t->left;
        }
    }
    *l = *r = NULL;
    *link = n;
    n->parent = parent;
    s->count++;
}

void cca_set_remove(cca_set *s, cca_node *n)
{
    cca_node *parent = n->parent;
    cca_node **link = !parent ? &s->root : parent->left == n ? &parent->left : &parent->right;
    /* Merge n's subtrees into its link, higher priority on top. */
    cca_node *a = n->left, *b = n->right;
    while (a && b) {
        if (a->prio > b->prio) {
            *link = a;
            a->parent = parent;
            parent = a;
            link = &a->right;
            a = a->right;
        } else {
            *link = b;
            b->parent = parent;
            parent = b;
            link = &b->left;
            b = b->left;
        }
    }
    cca_node *rest = a ? a : b;
    *link = rest;
    if (rest)
        rest->parent = parent;
    n->left = n->right = n->parent = NULL;
    s->count--;
}

cca_node *cca_set_lower_bound(const cca_set *s, uint64_t stream, uint64_t size, uint64_t addr)
{
    cca_node *t = s->root, *best = NULL;
    while (t) {
        if (cmp_key(s, stream, size, addr, t) <= 0) {
            best = t;
            t = t->left;
        } else {
            t = t->right;
        }
    }
    return best;
}

cca_node *cca_set_next(const cca_set *s, const cca_node *n)
{
    (void)s; /* the links suffice */
    if (n->right) {
        n = n->right;
        while (n->left)
            n = n->left;
        return (cca_node *)n;
    }
    while (n->parent && n->parent->right == n)
        n = n->parent;
    return n->parent;
}

cca_node *cca_set_prev(const cca_set *s, const cca_node *n)
{
    (void)s;
    if (n->left) {
        n = n->left;
        while (n->right)
            n = n->right;
        return (cca_node *)n;
    }
    while (n->parent && n->parent->left == n)
        n = n->parent;
    return n->parent;
}

cca_node *cca_set_first(const cca_set *s)
{
    cca_node *t = s->root;
    while (t && t->left)
        t = t->left;
    return t;
}

cca_node *cca_set_last(const cca_set *s)
{
    cca_node *t = s->root;
    while (t && t->right)
        t = t->right;
    return t;
}

bool cca_set_contains(const cca_set *s, const cca_node *n)
{
    const cca_node *t = s->root;
    while (t && t != n) {
        int c = cmp_node(s, n, t);
        if (c == 0)
            return false; /* another node holds this key */
        t = c < 0 ? t->left : t->right;
    }
    return t == n;
}

static int walk(cca_node *t, int (*fn)(cca_node *, void *), void *user)
{
    while (t) {
        int r = walk(t->left, fn, user);
        if (r)
            return r;
        if ((r = fn(t, user)) != 0)
            return r;
        t = t->right;
    }
    return 0;
}

int cca_set_walk(const cca_set *s, int (*fn)(cca_node *n, void *user), void *user)
{
    return walk(s->root, fn, user);
}

typedef struct check_state {
    const cca_set *s;
    const cca_node *last;
    uint64_t seen;
} check_state;

static int check_node(const cca_node *t, check_state *st, int depth)
{
    if (!t)
        return 0;
    /* Expected depth is about 3 ln n; 200 means the priorities are broken. */
    if (depth > 200) {
        fli_fail(FL_ERR_INVALID, "treap deeper than 200 levels");
        return 1;
    }
    if ((t->left && t->left->prio > t->prio) || (t->right && t->right->prio > t->prio)) {
        fli_fail(FL_ERR_INVALID, "treap heap order broken at 0x%llx", (unsigned long long)t->addr);
        return 1;
    }
    if ((t->left && t->left->parent != t) || (t->right && t->right->parent != t)) {
        fli_fail(FL_ERR_INVALID, "treap parent link broken under 0x%llx", (unsigned long long)t->addr);
        return 1;
    }
    if (check_node(t->left, st, depth + 1))
        return 1;
    if (st->last && cmp_node(st->s, st->last, t) >= 0) {
        fli_fail(FL_ERR_INVALID, "treap keys out of order at 0x%llx", (unsigned long long)t->addr);
        return 1;
    }
    st->last = t;
    st->seen++;
    return check_node(t->right, st, depth + 1);
}

int cca_set_check(const cca_set *s, const char *name)
{
    check_state st = {s, NULL, 0};
    if (s->root && s->root->parent) {
        fli_fail(FL_ERR_INVALID, "%s: the root has a parent", name);
        return 1;
    }
    if (check_node(s->root, &st, 0)) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", fl_last_error());
        fli_fail(FL_ERR_INVALID, "%s: %s", name, msg);
        return 1;
    }
    if (st.seen != s->count) {
        fli_fail(FL_ERR_INVALID, "%s: holds %llu nodes but counts %llu", name,
                (unsigned long long)st.seen, (unsigned long long)s->count);
        return 1;
    }
    return 0;
}
