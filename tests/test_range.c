/* Range allocator: placement, alignment, coalescing, statistics and the self-check,
 * against a reference list of live blocks, over long pseudo-random sequences. */
#include <string.h>

#include "range/range_internal.h"
#include "test_support.h"

typedef struct live { uint64_t off, size; } live;

static int sum_walk(uint64_t off, uint64_t size, int used, void *user)
{
    uint64_t *acc = user;
    acc[0] += size;
    acc[1] += used ? 0 : size;
    acc[2] = off + size;
    return 0;
}

static void test_basics(void)
{
    fl_range *r;
    CHECK_STATUS(fl_range_create(1000, 512, &r), FL_ERR_INVALID);
    CHECK_STATUS(fl_range_create(4096, 3, &r), FL_ERR_INVALID);
    CHECK_OK(fl_range_create(1 << 20, 512, &r));
    uint64_t a, b, c;
    CHECK_OK(fl_range_alloc(r, 100, 0, &a));
    CHECK_EQ_U64(fl_range_block_size(r, a), 512);
    CHECK_OK(fl_range_alloc(r, 4096, 4096, &b));
    CHECK_EQ_U64(b % 4096, 0);
    CHECK_OK(fl_range_alloc(r, 1000, 0, &c));
    CHECK(fl_range_check(r) == 0);
    CHECK_EQ_U64(fl_range_live_blocks(r), 3);
    CHECK_STATUS(fl_range_free(r, a + 256), FL_ERR_NOT_FOUND);
    CHECK(strstr(fl_last_error(), "0x") != NULL);
    CHECK_STATUS(fl_range_alloc(r, 0, 0, &a), FL_ERR_INVALID);
    CHECK_STATUS(fl_range_alloc(r, 2 << 20, 0, &a), FL_ERR_OOM);
    CHECK_STATUS(fl_range_alloc(r, 512, 3, &a), FL_ERR_INVALID);
    CHECK_OK(fl_range_free(r, b));
    CHECK_OK(fl_range_free(r, c));
    CHECK_STATUS(fl_range_free(r, c), FL_ERR_NOT_FOUND);
    CHECK(fl_range_check(r) == 0);
    /* Everything freed but the first block: the rest must have coalesced into one. */
    CHECK_EQ_U64(fl_range_largest_free(r), (1 << 20) - 512);
    CHECK_EQ_U64(fl_range_total_free(r), (1 << 20) - 512);
    uint64_t acc[3] = {0, 0, 0};
    fl_range_walk(r, sum_walk, acc);
    CHECK_EQ_U64(acc[0], 1 << 20);
    CHECK_EQ_U64(acc[1], (1 << 20) - 512);
    /* A full range: exact fit succeeds, one more byte fails, nothing changes. */
    uint64_t big;
    CHECK_OK(fl_range_alloc(r, (1 << 20) - 512, 0, &big));
    CHECK_EQ_U64(fl_range_total_free(r), 0);
    CHECK_STATUS(fl_range_alloc(r, 1, 0, &c), FL_ERR_OOM);
    CHECK(fl_range_check(r) == 0);
    fl_range_destroy(r);
}

/* Best fit within a class: of two free holes the tighter one is taken. */
static void test_fit(void)
{
    fl_range *r;
    CHECK_OK(fl_range_create(64 << 20, 512, &r));
    uint64_t h1, s1, h2, s2, tail;
    CHECK_OK(fl_range_alloc(r, 40960, 0, &h1));
    CHECK_OK(fl_range_alloc(r, 512, 0, &s1));
    CHECK_OK(fl_range_alloc(r, 36864, 0, &h2));
    CHECK_OK(fl_range_alloc(r, 512, 0, &s2));
    CHECK_OK(fl_range_alloc(r, 512, 0, &tail));
    CHECK_OK(fl_range_free(r, h1));
    CHECK_OK(fl_range_free(r, h2));
    uint64_t x;
    CHECK_OK(fl_range_alloc(r, 36864, 0, &x));
    CHECK_EQ_U64(x, h2);
    CHECK_OK(fl_range_alloc(r, 40960, 0, &x));
    CHECK_EQ_U64(x, h1);
    CHECK(fl_range_check(r) == 0);
    fl_range_destroy(r);
}

/* range_candidates: every free range of at least size bytes, in class order (a bounded
 * call returns the first ones of that same order). The free ranges come from the walk. */
typedef struct free_set {
    uint64_t size, n, off[4096];
} free_set;

static int free_walk(uint64_t off, uint64_t size, int used, void *user)
{
    free_set *f = user;
    if (!used && size >= f->size && f->n < 4096)
        f->off[f->n++] = off;
    return 0;
}

static void check_candidates(const fl_range *r, uint64_t size)
{
    static uint32_t all[4096], some[4];
    free_set f = {size, 0, {0}};
    fl_range_walk(r, free_walk, &f);
    if (f.n >= 4096)
        return;
    size_t k = range_candidates(r, size, all, 4096);
    CHECK_EQ_U64(k, f.n);
    for (size_t i = 0; i < k; i++) {
        CHECK(r->nodes[all[i]].used == RANGE_FREE && r->nodes[all[i]].size >= size);
        int found = 0;
        for (uint64_t j = 0; j < f.n; j++)
            found += f.off[j] == r->nodes[all[i]].offset;
        CHECK(found == 1);
    }
    size_t k4 = range_candidates(r, size, some, 4);
    CHECK_EQ_U64(k4, k < 4 ? k : 4);
    for (size_t i = 0; i < k4; i++)
        CHECK_EQ_U64(some[i], all[i]);
}

static void test_random(uint64_t seed, uint64_t cap, int steps)
{
    fl_rng rng = {seed};
    fl_range *r;
    CHECK_OK(fl_range_create(cap, 512, &r));
    live *l = calloc((size_t)steps, sizeof *l);
    int n = 0;
    uint64_t used = 0, peak = 0;
    for (int i = 0; i < steps; i++) {
        if (n && (fl_rng_below(&rng, 100) < 45 || used > cap / 2)) {
            int k = (int)fl_rng_below(&rng, (uint64_t)n);
            CHECK_OK(fl_range_free(r, l[k].off));
            used -= l[k].size;
            l[k] = l[--n];
        } else {
            uint64_t size = 1 + fl_rng_below(&rng, fl_rng_below(&rng, 4) ? 64 << 10 : 8 << 20);
            uint64_t align = UINT64_C(512) << fl_rng_below(&rng, 6);
            uint64_t off;
            fl_status s = fl_range_alloc(r, size, align, &off);
            if (s == FL_OK) {
                uint64_t rs = (size + 511) & ~UINT64_C(511);
                CHECK_EQ_U64(off % align, 0);
                CHECK_EQ_U64(fl_range_block_size(r, off), rs);
                CHECK(off + rs <= cap);
                for (int k = 0; k < n; k++)
                    if (off < l[k].off + l[k].size && l[k].off < off + rs) {
                        CHECK(!"overlap");
                        break;
                    }
                l[n++] = (live){off, rs};
                used += rs;
            } else {
                CHECK_EQ_U64(s, FL_ERR_OOM);
            }
        }
        CHECK_EQ_U64(fl_range_total_free(r), cap - used);
        CHECK_EQ_U64(fl_range_live_blocks(r), n);
        peak = used > peak ? used : peak;
        CHECK_EQ_U64(r->peak_used, peak); /* the most allocated at once */
        if (i % 64 == 0 || i == steps - 1) {
            CHECK(fl_range_check(r) == 0);
            check_candidates(r, 512 << fl_rng_below(&rng, 16));
        }
        if (fl_test_failures)
            break;
    }
    while (n)
        CHECK_OK(fl_range_free(r, l[--n].off));
    CHECK_EQ_U64(fl_range_largest_free(r), cap);
    CHECK(fl_range_check(r) == 0);
    free(l);
    fl_range_destroy(r);
}

/* The self-check sees a corrupted free-list structure: it is what the tests and fuzzers
 * rely on after every step. Each corruption is made, checked, and undone. */
static void test_check_catches(void)
{
    fl_range *r;
    CHECK_OK(fl_range_create(1 << 20, 512, &r));
    uint64_t a, b, c, d;
    CHECK_OK(fl_range_alloc(r, 4096, 0, &a));
    CHECK_OK(fl_range_alloc(r, 8192, 0, &b));
    CHECK_OK(fl_range_alloc(r, 4096, 0, &c));
    CHECK_OK(fl_range_alloc(r, 4096, 0, &d));
    CHECK_OK(fl_range_free(r, b)); /* a free block between live ones, and the tail */
    CHECK(fl_range_check(r) == 0);
    unsigned fl = 64, sl = 0;
    for (unsigned f = 0; f < RANGE_FL_COUNT && fl == 64; f++)
        if (r->sl_bitmap[f]) {
            fl = f;
            sl = (unsigned)__builtin_ctz(r->sl_bitmap[f]);
        }
    CHECK(fl < 64);
    if (fl == 64) {
        fl_range_destroy(r);
        return;
    }
    uint32_t *bits = &r->sl_bitmap[fl];
    uint32_t *head = &r->heads[fl * RANGE_SL_COUNT + sl];
    /* A list whose bit is clear (its blocks are then on no visited list). */
    *bits &= ~(1u << sl);
    uint64_t flb = r->fli_bitmap;
    if (!*bits)
        r->fli_bitmap &= ~(UINT64_C(1) << fl);
    CHECK(fl_range_check(r) != 0);
    *bits |= 1u << sl;
    r->fli_bitmap = flb;
    CHECK(fl_range_check(r) == 0);
    /* A bit set for an empty class. */
    unsigned empty = sl == 0 ? 1 : 0;
    *bits |= 1u << empty;
    CHECK(fl_range_check(r) != 0);
    *bits &= ~(1u << empty);
    /* A bit past the 16 classes. */
    *bits |= 1u << 20;
    CHECK(fl_range_check(r) != 0);
    *bits &= ~(1u << 20);
    /* A first-level bit that disagrees. */
    r->fli_bitmap ^= UINT64_C(1) << 63;
    CHECK(fl_range_check(r) != 0);
    r->fli_bitmap ^= UINT64_C(1) << 63;
    /* A list head that is lost. */
    uint32_t h = *head;
    *head = 0xffffffffu;
    CHECK(fl_range_check(r) != 0);
    *head = h;
    /* A block's class that is wrong. */
    uint32_t cls = r->nodes[h].cls;
    r->nodes[h].cls = cls + 1;
    CHECK(fl_range_check(r) != 0);
    r->nodes[h].cls = cls;
    CHECK(fl_range_check(r) == 0);
    fl_range_destroy(r);
}

int main(void)
{
    test_check_catches();
    test_basics();
    test_fit();
    test_random(1, 256 << 20, 20000);
    test_random(2, 64 << 20, 20000);
    test_random(3, UINT64_C(1) << 40, 5000);
    return fl_test_done("test_range");
}
