/* The range allocator: a two-level segregated fit (TLSF) offset allocator whose
 * metadata lives on the host. Blocks tile [0, capacity) in address order; free blocks
 * sit in one list per size class; used blocks are found by offset through a hash. */
#include "range/range_internal.h"

#include <stdlib.h>
#include <string.h>

/* The tag fits the node's padding: nodes stay 40 bytes. */
_Static_assert(sizeof(range_node) == 40, "range_node grew");

#define NIL 0u

/* Size classes, in units of min_align: sizes below 16 units have one class each;
 * above, each power of two is cut into 16 classes (at most 6.25% apart). Class
 * fl * 16 + sl of u >= 16 units, l = log2(u): fl = l - 3 and sl the 4 bits below the top
 * one, which is (l - 4) * 16 + (u >> (l - 4)) (the top bit adds the 16); with s = 0 it
 * is u itself below 16 units: no branch, a handful of instructions on every path that
 * files or looks up a free block. */
static inline unsigned class_of_units(uint64_t units)
{
    unsigned s = (unsigned)fli_log2_floor(units | RANGE_SL_COUNT) - RANGE_SL_LOG;
    return (s << RANGE_SL_LOG) + (unsigned)(units >> s);
}

static inline void class_of(uint64_t units, unsigned *fl, unsigned *sl)
{
    unsigned c = class_of_units(units);
    *fl = c / RANGE_SL_COUNT;
    *sl = c % RANGE_SL_COUNT;
}

static inline unsigned class_index(const fl_range *r, uint64_t size)
{
    return class_of_units(size >> r->align_log);
}

/* Files free node n on the list of class c (its size's class). */
static inline void list_insert_at(fl_range *r, uint32_t n, unsigned c)
{
    range_node *b = &r->nodes[n];
    FL_ASSERT(n != NIL && b->used == RANGE_FREE && b->size >= r->min_align && c == class_index(r, b->size));
    b->cls = (uint16_t)c;
    b->prev_free = NIL;
    b->next_free = r->heads[c];
    if (r->heads[c] != NIL)
        r->nodes[r->heads[c]].prev_free = n;
    r->heads[c] = n;
    r->fli_bitmap |= UINT64_C(1) << (c / RANGE_SL_COUNT);
    r->sl_bitmap[c / RANGE_SL_COUNT] |= 1u << (c % RANGE_SL_COUNT);
}

static void list_insert(fl_range *r, uint32_t n) { list_insert_at(r, n, class_index(r, r->nodes[n].size)); }

static void list_remove(fl_range *r, uint32_t n)
{
    range_node *b = &r->nodes[n];
    unsigned c = b->cls;
    FL_ASSERT(n != NIL && b->used == RANGE_FREE && (b->prev_free != NIL || r->heads[c] == n));
    if (b->prev_free != NIL)
        r->nodes[b->prev_free].next_free = b->next_free;
    else
        r->heads[c] = b->next_free;
    if (b->next_free != NIL)
        r->nodes[b->next_free].prev_free = b->prev_free;
    if (r->heads[c] == NIL) {
        unsigned fl = c / RANGE_SL_COUNT;
        r->sl_bitmap[fl] &= ~(1u << (c % RANGE_SL_COUNT));
        if (!r->sl_bitmap[fl])
            r->fli_bitmap &= ~(UINT64_C(1) << fl);
    }
}

/* Gives free node n a new extent; it moves between class lists only if its class
 * changes, which for large free ranges (the top of a heap) it mostly does not. */
static inline void free_resize(fl_range *r, uint32_t n, uint64_t offset, uint64_t size)
{
    range_node *b = &r->nodes[n];
    unsigned c = class_index(r, size);
    b->offset = offset;
    if (c != b->cls) {
        list_remove(r, n);
        b->size = size;
        list_insert_at(r, n, c);
    } else {
        b->size = size;
    }
}

/* Links node u into the address order right after node n. */
static inline void link_after(fl_range *r, uint32_t n, uint32_t u)
{
    range_node *b = &r->nodes[n], *c = &r->nodes[u];
    c->prev_phys = n;
    c->next_phys = b->next_phys;
    if (b->next_phys != NIL)
        r->nodes[b->next_phys].prev_phys = u;
    b->next_phys = u;
}

/* Links node u into the address order right before node n. */
static inline void link_before(fl_range *r, uint32_t n, uint32_t u)
{
    range_node *b = &r->nodes[n], *c = &r->nodes[u];
    c->next_phys = n;
    c->prev_phys = b->prev_phys;
    if (b->prev_phys != NIL)
        r->nodes[b->prev_phys].next_phys = u;
    else
        r->head = u;
    b->prev_phys = u;
}

static fl_status reserve_nodes(fl_range *r)
{
    if (r->n_nodes + 2 <= r->cap_nodes)
        return FL_OK;
    /* Node indices are 32-bit (0 is NIL): past 2^31 slots doubling would wrap. */
    if (r->cap_nodes > UINT32_MAX / 2)
        return fli_fail(FL_ERR_NOMEM, "range allocator: at most %u blocks", r->cap_nodes);
    uint32_t cap = r->cap_nodes * 2;
    range_node *nodes = realloc(r->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes)
        return fli_fail(FL_ERR_NOMEM, "range allocator: cannot grow to %u blocks", cap);
    r->nodes = nodes;
    r->cap_nodes = cap;
    return FL_OK;
}

static uint32_t node_take(fl_range *r)
{
    uint32_t n;
    if (r->free_nodes != NIL) {
        n = r->free_nodes;
        r->free_nodes = r->nodes[n].next_free;
    } else {
        n = r->n_nodes++;
    }
    r->nodes[n].used = 0;
    return n;
}

static void node_release(fl_range *r, uint32_t n)
{
    r->nodes[n].used = 2; /* recycled: neither free nor used */
    r->nodes[n].next_free = r->free_nodes;
    r->free_nodes = n;
}

fl_status fl_range_create(uint64_t size, uint64_t min_align, fl_range **out)
{
    *out = NULL;
    if (!fli_is_pow2(min_align))
        return fli_fail(FL_ERR_INVALID, "range allocator: min_align %llu is not a power of two",
                       (unsigned long long)min_align);
    if (size == 0 || size % min_align)
        return fli_fail(FL_ERR_INVALID, "range allocator: size %llu is not a positive multiple of %llu",
                       (unsigned long long)size, (unsigned long long)min_align);
    fl_range *r = calloc(1, sizeof *r);
    if (!r)
        return fli_fail(FL_ERR_NOMEM, "range allocator: out of host memory");
    r->capacity = size;
    r->min_align = min_align;
    r->align_log = (unsigned)fli_log2_floor(min_align);
    r->cap_nodes = 64;
    r->nodes = calloc(r->cap_nodes, sizeof *r->nodes);
    if (!r->nodes || fli_map_init(&r->used, 64) != FL_OK) {
        free(r->nodes);
        free(r);
        return fli_fail(FL_ERR_NOMEM, "range allocator: out of host memory");
    }
    r->n_nodes = 2; /* node 0 is NIL */
    r->head = 1;
    range_node *b = &r->nodes[1];
    b->offset = 0;
    b->size = size;
    b->prev_phys = b->next_phys = NIL;
    b->used = 0;
    list_insert(r, 1);
    r->total_free = size;
    *out = r;
    return FL_OK;
}

void fl_range_destroy(fl_range *r)
{
    if (!r)
        return;
    fli_map_free(&r->used);
    free(r->nodes);
    free(r);
}

/* Smallest block >= units among at most RANGE_SCAN entries of one class list. */
static uint32_t scan_class(const fl_range *r, unsigned fl, unsigned sl, uint64_t size)
{
    uint32_t best = NIL;
    uint64_t best_size = UINT64_MAX;
    int budget = RANGE_SCAN;
    for (uint32_t n = r->heads[fl * RANGE_SL_COUNT + sl]; n != NIL && budget--; n = r->nodes[n].next_free) {
        uint64_t s = r->nodes[n].size;
        if (s >= size && s < best_size) {
            best = n;
            best_size = s;
            if (s == size)
                break;
        }
    }
    return best;
}

/* First non-empty class at or above (fl, sl); returns NIL when none. */
static uint32_t first_class_from(const fl_range *r, unsigned fl, unsigned sl, unsigned *ofl, unsigned *osl)
{
    if (fl >= RANGE_FL_COUNT)
        return NIL;
    uint32_t sl_map = sl < RANGE_SL_COUNT ? (r->sl_bitmap[fl] & (~0u << sl)) : 0;
    if (!sl_map) {
        uint64_t fli_map = fl + 1 < 64 ? (r->fli_bitmap & (~UINT64_C(0) << (fl + 1))) : 0;
        if (!fli_map)
            return NIL;
        fl = (unsigned)__builtin_ctzll(fli_map);
        sl_map = r->sl_bitmap[fl];
    }
    sl = (unsigned)__builtin_ctz(sl_map);
    *ofl = fl;
    *osl = sl;
    return r->heads[fl * RANGE_SL_COUNT + sl];
}

uint32_t range_find_free(const fl_range *r, uint64_t size)
{
    unsigned fl, sl;
    class_of(size >> r->align_log, &fl, &sl);
    /* The request's own class holds blocks both smaller and larger than it: look for
     * the tightest fit there first, so equal-sized churn reuses the same holes. */
    uint32_t n = scan_class(r, fl, sl, size);
    if (n != NIL)
        return n;
    /* Every block of a higher class fits; take the tightest of the first few. */
    if (++sl == RANGE_SL_COUNT) {
        sl = 0;
        fl++;
    }
    unsigned ofl, osl;
    if (first_class_from(r, fl, sl, &ofl, &osl) == NIL)
        return NIL;
    return scan_class(r, ofl, osl, size);
}

/* Makes [start + pad, start + pad + size) of free node n a used block. Node n stays
 * the free piece before it (or after it, when there is none before), so the common
 * case touches no class list at all; a second free piece gets a new node. */
static uint32_t carve(fl_range *r, uint32_t n, uint64_t pad, uint64_t size)
{
    range_node *b = &r->nodes[n];
    /* The caller chose pad inside a free node (range_take's contract). */
    FL_ASSERT(b->used == RANGE_FREE && pad + size <= b->size && size > 0 &&
              pad % r->min_align == 0 && size % r->min_align == 0);
    uint64_t start = b->offset, back = b->size - pad - size;
    if (pad == 0 && back == 0) {
        list_remove(r, n);
        b->used = 1;
        return n;
    }
    uint32_t u = node_take(r);
    range_node *c = &r->nodes[u];
    c->offset = start + pad;
    c->size = size;
    c->used = 1;
    if (pad == 0) {
        link_before(r, n, u);
        free_resize(r, n, start + size, back);
        return u;
    }
    link_after(r, n, u);
    free_resize(r, n, start, pad);
    if (back) {
        uint32_t t = node_take(r);
        range_node *d = &r->nodes[t];
        d->offset = start + pad + size;
        d->size = back;
        d->used = 0;
        link_after(r, u, t);
        list_insert(r, t);
    }
    return u;
}

size_t range_candidates(const fl_range *r, uint64_t size, uint32_t *out, size_t max)
{
    size_t k = 0;
    unsigned fl, sl;
    class_of(size >> r->align_log, &fl, &sl);
    /* From the request's class up, the non-empty classes only (the bitmaps): a walk over
     * every class above it cost ~10,000 instructions a call. */
    for (uint32_t n = first_class_from(r, fl, sl, &fl, &sl); n != NIL && k < max;
         n = first_class_from(r, fl, sl + 1, &fl, &sl)) /* past a level's last class: the next level's */
        for (; n != NIL && k < max; n = r->nodes[n].next_free)
            if (r->nodes[n].size >= size)
                out[k++] = n;
    return k;
}

fl_status fl_range_alloc(fl_range *r, uint64_t size, uint64_t align, uint64_t *offset)
{
    if (align == 0)
        align = r->min_align;
    if (FL_UNLIKELY(size == 0 || !fli_is_pow2(align)))
        return fli_fail(FL_ERR_INVALID, "range allocator: size %llu / alignment %llu invalid",
                       (unsigned long long)size, (unsigned long long)align);
    if (FL_UNLIKELY(size > r->capacity))
        return fli_fail(FL_ERR_OOM, "range allocator: %llu bytes asked, capacity %llu",
                       (unsigned long long)size, (unsigned long long)r->capacity);
    size = fli_align_up(size, r->min_align);
    if (align < r->min_align)
        align = r->min_align;
    uint64_t search = size + (align - r->min_align);
    if (search < size || search > r->capacity)
        return fli_fail(FL_ERR_OOM, "range allocator: %llu bytes at alignment %llu do not fit",
                       (unsigned long long)size, (unsigned long long)align);
    /* Searching for size + (align - min_align) guarantees an aligned start inside the
     * block found; a block that would fit only at a lucky offset is not looked for. */
    uint32_t n = range_find_free(r, search);
    if (n == NIL)
        return fli_fail(FL_ERR_OOM, "range allocator: no free range of %llu bytes (free %llu, largest %llu)",
                       (unsigned long long)size, (unsigned long long)r->total_free,
                       (unsigned long long)fl_range_largest_free(r));
    uint32_t used;
    fl_status s = range_take(r, n, fli_align_up(r->nodes[n].offset, align) - r->nodes[n].offset, size, &used);
    if (s == FL_OK)
        *offset = r->nodes[used].offset;
    return s;
}

fl_status range_take(fl_range *r, uint32_t n, uint64_t pad, uint64_t size, uint32_t *out)
{
    if (FL_UNLIKELY(reserve_nodes(r) != FL_OK))
        return FL_ERR_NOMEM;
    uint32_t used = carve(r, n, pad, size);
    if (!r->untracked && fli_map_insert(&r->used, r->nodes[used].offset, used) != FL_OK) {
        range_free_node(r, used);
        return fli_fail(FL_ERR_NOMEM, "range allocator: out of host memory for the offset table");
    }
    r->total_free -= size;
    if (r->capacity - r->total_free > r->peak_used)
        r->peak_used = r->capacity - r->total_free;
    r->live++;
    *out = used;
    return FL_OK;
}

/* Returns used node n to the free lists, merged with its free neighbours. A free
 * neighbour absorbs the block in place (no list traffic unless its class changes). */
uint32_t range_free_node(fl_range *r, uint32_t n)
{
    range_node *b = &r->nodes[n];
    /* Only a used block goes back, and its neighbours are its address neighbours. */
    FL_ASSERT(b->used == RANGE_USED);
    FL_ASSERT(b->prev_phys == NIL || r->nodes[b->prev_phys].offset + r->nodes[b->prev_phys].size == b->offset);
    FL_ASSERT(b->next_phys == NIL || b->offset + b->size == r->nodes[b->next_phys].offset);
    uint32_t p = b->prev_phys, m = b->next_phys;
    int prev_free = p != NIL && r->nodes[p].used == 0;
    int next_free = m != NIL && r->nodes[m].used == 0;
    if (prev_free) {
        range_node *a = &r->nodes[p];
        uint64_t size = a->size + b->size;
        a->next_phys = b->next_phys;
        if (b->next_phys != NIL)
            r->nodes[b->next_phys].prev_phys = p;
        node_release(r, n);
        if (next_free) {
            range_node *c = &r->nodes[m];
            size += c->size;
            list_remove(r, m);
            a->next_phys = c->next_phys;
            if (c->next_phys != NIL)
                r->nodes[c->next_phys].prev_phys = p;
            node_release(r, m);
        }
        free_resize(r, p, a->offset, size);
        return p;
    }
    if (next_free) {
        range_node *c = &r->nodes[m];
        c->prev_phys = b->prev_phys;
        if (b->prev_phys != NIL)
            r->nodes[b->prev_phys].next_phys = m;
        else
            r->head = m;
        uint64_t offset = b->offset, size = b->size + c->size;
        node_release(r, n);
        free_resize(r, m, offset, size);
        return m;
    }
    b->used = 0;
    list_insert(r, n);
    return n;
}

void range_untrack(fl_range *r)
{
    FL_ASSERT(r->live == 0);
    r->untracked = 1;
}

uint64_t range_release(fl_range *r, uint32_t n)
{
    uint64_t size = r->nodes[n].size;
    r->total_free += size;
    r->live--;
    range_free_node(r, n);
    return size;
}

fl_status range_free_sized(fl_range *r, uint64_t offset, uint64_t *size)
{
    uint64_t v;
    if (FL_UNLIKELY(r->untracked || !fli_map_remove(&r->used, offset, &v)))
        return fli_fail(FL_ERR_NOT_FOUND, "range allocator: no live block at offset 0x%llx",
                       (unsigned long long)offset);
    *size = range_release(r, (uint32_t)v);
    return FL_OK;
}

fl_status fl_range_free(fl_range *r, uint64_t offset)
{
    uint64_t size;
    return range_free_sized(r, offset, &size);
}

uint64_t fl_range_block_size(const fl_range *r, uint64_t offset)
{
    uint64_t v;
    return !r->untracked && fli_map_get(&r->used, offset, &v) ? r->nodes[v].size : 0;
}

uint64_t fl_range_capacity(const fl_range *r) { return r->capacity; }
uint64_t fl_range_total_free(const fl_range *r) { return r->total_free; }
uint64_t fl_range_live_blocks(const fl_range *r) { return r->live; }

uint64_t fl_range_largest_free(const fl_range *r)
{
    if (!r->fli_bitmap)
        return 0;
    unsigned fl = (unsigned)fli_log2_floor(r->fli_bitmap);
    unsigned sl = (unsigned)fli_log2_floor(r->sl_bitmap[fl]);
    uint64_t best = 0;
    for (uint32_t n = r->heads[fl * RANGE_SL_COUNT + sl]; n != NIL; n = r->nodes[n].next_free)
        if (r->nodes[n].size > best)
            best = r->nodes[n].size;
    return best;
}

void fl_range_walk(const fl_range *r, fl_range_walker fn, void *user)
{
    for (uint32_t n = r->head; n != NIL; n = r->nodes[n].next_phys)
        if (fn(r->nodes[n].offset, r->nodes[n].size, r->nodes[n].used != RANGE_FREE, user))
            return;
}

int fl_range_check(const fl_range *r)
{
    uint64_t expect = 0, free_sum = 0, used_count = 0, free_count = 0;
    uint32_t prev = NIL;
    for (uint32_t n = r->head; n != NIL; n = r->nodes[n].next_phys) {
        const range_node *b = &r->nodes[n];
        if (n >= r->n_nodes || b->used == RANGE_RECYCLED)
            return fli_fail(FL_ERR_INVALID, "range check: node %u is recycled but linked", n), 1;
        if (b->offset != expect)
            return fli_fail(FL_ERR_INVALID, "range check: block at 0x%llx, expected 0x%llx",
                           (unsigned long long)b->offset, (unsigned long long)expect), 1;
        if (b->size == 0 || b->size % r->min_align)
            return fli_fail(FL_ERR_INVALID, "range check: block at 0x%llx has size %llu",
                           (unsigned long long)b->offset, (unsigned long long)b->size), 1;
        if (b->prev_phys != prev)
            return fli_fail(FL_ERR_INVALID, "range check: broken back link at 0x%llx",
                           (unsigned long long)b->offset), 1;
        if (b->used) {
            uint64_t v;
            if (!r->untracked && (!fli_map_get(&r->used, b->offset, &v) || v != n))
                return fli_fail(FL_ERR_INVALID, "range check: used block 0x%llx missing from the offset table",
                               (unsigned long long)b->offset), 1;
            used_count++;
        } else {
            if (prev != NIL && r->nodes[prev].used == 0)
                return fli_fail(FL_ERR_INVALID, "range check: adjacent free blocks at 0x%llx not merged",
                               (unsigned long long)b->offset), 1;
            free_sum += b->size;
            free_count++;
        }
        expect += b->size;
        prev = n;
    }
    if (expect != r->capacity)
        return fli_fail(FL_ERR_INVALID, "range check: blocks cover %llu of %llu bytes",
                       (unsigned long long)expect, (unsigned long long)r->capacity), 1;
    if (free_sum != r->total_free)
        return fli_fail(FL_ERR_INVALID, "range check: free bytes %llu, counter says %llu",
                       (unsigned long long)free_sum, (unsigned long long)r->total_free), 1;
    if (used_count != r->live || (!r->untracked && used_count != r->used.count))
        return fli_fail(FL_ERR_INVALID, "range check: %llu used blocks, counter %llu, table %llu",
                       (unsigned long long)used_count, (unsigned long long)r->live,
                       (unsigned long long)r->used.count), 1;
    /* The lists of the classes whose bits are set, walked in full; every free block must
     * be on one of them (the count), so a list whose bit is clear cannot hold any: only
     * set bits are visited, not all 1024 classes (the self-check runs after every step
     * in the tests and fuzzers). */
    uint64_t listed = 0;
    for (unsigned fl = 0; fl < RANGE_FL_COUNT; fl++) {
        if (((r->fli_bitmap >> fl) & 1) != (r->sl_bitmap[fl] != 0))
            return fli_fail(FL_ERR_INVALID, "range check: first-level bitmap disagrees at %u", fl), 1;
        for (uint32_t bits = r->sl_bitmap[fl]; bits; bits &= bits - 1) {
            unsigned sl = (unsigned)__builtin_ctz(bits);
            if (sl >= RANGE_SL_COUNT)
                return fli_fail(FL_ERR_INVALID, "range check: second-level bitmap %u has bits past its classes", fl), 1;
            uint32_t head = r->heads[fl * RANGE_SL_COUNT + sl];
            if (head == NIL)
                return fli_fail(FL_ERR_INVALID, "range check: class %u/%u bitmap disagrees with its list", fl, sl), 1;
            uint32_t p = NIL;
            for (uint32_t n = head; n != NIL; n = r->nodes[n].next_free) {
                unsigned f2, s2;
                if (n >= r->n_nodes)
                    return fli_fail(FL_ERR_INVALID, "range check: free list %u/%u links node %u of %u", fl, sl, n,
                                   r->n_nodes), 1;
                class_of(r->nodes[n].size >> r->align_log, &f2, &s2);
                if (r->nodes[n].used != 0 || f2 != fl || s2 != sl || r->nodes[n].cls != fl * RANGE_SL_COUNT + sl ||
                    r->nodes[n].prev_free != p)
                    return fli_fail(FL_ERR_INVALID, "range check: free list %u/%u holds a wrong block", fl, sl), 1;
                p = n;
                if (++listed > free_count)
                    return fli_fail(FL_ERR_INVALID, "range check: free lists hold more blocks than exist"), 1;
            }
        }
    }
    if (listed != free_count)
        return fli_fail(FL_ERR_INVALID, "range check: %llu free blocks, %llu listed",
                       (unsigned long long)free_count, (unsigned long long)listed), 1;
    return 0;
}
