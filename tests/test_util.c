/* The shared helpers: the 64-bit hash map against a plain reference array (including
 * deletion chains that wrap past the end of the table), the bit arrays' ranges against
 * bit-by-bit references, growing tables across the heap/mapping threshold, and size
 * parsing/formatting. */
#include "test_support.h"

#include "util/bits.h"
#include "util/table.h"
#include "util/util.h"

#include <string.h>

/* ---- fli_map ------------------------------------------------------------------------ */

typedef struct ref_map {
    uint64_t keys[4096];
    uint64_t vals[4096];
    size_t n;
} ref_map;

static long ref_find(const ref_map *r, uint64_t key)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->keys[i] == key)
            return (long)i;
    return -1;
}

/* Every key of the reference is in the map with its value, and the counts agree. */
static void check_same(const fli_map *m, const ref_map *r)
{
    size_t bad = 0;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t v = 0;
        if (!fli_map_get(m, r->keys[i], &v) || v != r->vals[i])
            bad++;
    }
    CHECK_EQ_U64(bad, 0);
    CHECK_EQ_U64(m->count, r->n);
}

static void test_map_random(void)
{
    fl_rng rng = {42};
    fli_map m;
    CHECK_OK(fli_map_init(&m, 0));
    ref_map *r = calloc(1, sizeof *r);
    size_t mismatches = 0;
    for (int step = 0; step < 200000; step++) {
        /* A small key space makes hits, overwrites and removals frequent; a few random
         * 64-bit keys (never the reserved UINT64_MAX) keep the hash honest. */
        uint64_t key = fl_rng_below(&rng, 8) ? fl_rng_below(&rng, 1500) * 512 : fl_rng_next(&rng) >> 1;
        uint64_t op = fl_rng_below(&rng, 10);
        long at = ref_find(r, key);
        if (op < 5) {
            uint64_t val = fl_rng_next(&rng);
            if (at < 0 && r->n == 4096)
                continue;
            CHECK_OK(fli_map_put(&m, key, val));
            if (at < 0) {
                r->keys[r->n] = key;
                r->vals[r->n++] = val;
            } else {
                r->vals[at] = val;
            }
        } else if (op < 8) {
            uint64_t v = 0;
            bool found = fli_map_remove(&m, key, &v);
            if (found != (at >= 0) || (found && v != r->vals[at]))
                mismatches++;
            if (at >= 0) {
                r->keys[at] = r->keys[r->n - 1];
                r->vals[at] = r->vals[--r->n];
            }
        } else {
            uint64_t v = 0;
            bool found = fli_map_get(&m, key, &v);
            if (found != (at >= 0) || (found && v != r->vals[at]))
                mismatches++;
        }
        if (step % 10000 == 0)
            check_same(&m, r);
    }
    CHECK_EQ_U64(mismatches, 0);
    check_same(&m, r);

    /* Remove everything; the map ends empty and reusable. */
    while (r->n) {
        CHECK(fli_map_remove(&m, r->keys[r->n - 1], NULL));
        r->n--;
    }
    CHECK_EQ_U64(m.count, 0);
    CHECK(!fli_map_get(&m, 512, NULL));
    CHECK_OK(fli_map_put(&m, 7, 70));
    fli_map_clear(&m);
    CHECK(!fli_map_get(&m, 7, NULL));
    CHECK_EQ_U64(m.count, 0);
    fli_map_free(&m);
    free(r);
}

/* Slot of key in m, or -1: read from the public table layout. */
static long slot_of(const fli_map *m, uint64_t key)
{
    for (uint64_t i = 0; i <= m->mask; i++)
        if (m->e[i].key == key)
            return (long)i;
    return -1;
}

/* The home slot of key in a table of this size: where it lands in an empty table. */
static long home_of(fli_map *m, uint64_t key)
{
    fli_map_clear(m);
    fli_map_put(m, key, 0);
    long s = slot_of(m, key);
    fli_map_clear(m);
    return s;
}

static void test_map_wrap(void)
{
    /* A 32-slot table (it grows at 1/4 load, past 8 keys): build chains that run from
     * the last slots across slot 0, then remove from every position and check every
     * survivor. */
    fli_map m;
    CHECK_OK(fli_map_init(&m, 8));
    CHECK_EQ_U64(m.mask, 31);
    const long last = 31;
    uint64_t at15[3], at14[2], at0[2];
    int n15 = 0, n14 = 0, n0 = 0;
    for (uint64_t k = 1; n15 < 3 || n14 < 2 || n0 < 2; k++) {
        long h = home_of(&m, k);
        if (h == last && n15 < 3)
            at15[n15++] = k;
        else if (h == last - 1 && n14 < 2)
            at14[n14++] = k;
        else if (h == 0 && n0 < 2)
            at0[n0++] = k;
    }
    /* Homes last-1, last-1, last, last, 0, last, 0 -> slots last-1, last, 0, 1, 2, 3, 4. */
    const uint64_t order[7] = {at14[0], at14[1], at15[0], at15[1], at0[0], at15[2], at0[1]};
    for (int victim = 0; victim < 7; victim++) {
        fli_map_clear(&m);
        for (int i = 0; i < 7; i++)
            CHECK_OK(fli_map_put(&m, order[i], order[i] * 3));
        CHECK_EQ_U64(m.mask, 31);
        CHECK_EQ_U64(slot_of(&m, order[2]), 0);   /* the chain did wrap */
        CHECK_EQ_U64(slot_of(&m, order[6]), 4);
        uint64_t v = 0;
        CHECK(fli_map_remove(&m, order[victim], &v));
        CHECK_EQ_U64(v, order[victim] * 3);
        for (int i = 0; i < 7; i++) {
            bool found = fli_map_get(&m, order[i], &v);
            CHECK(found == (i != victim));
            if (found)
                CHECK_EQ_U64(v, order[i] * 3);
        }
        /* Remove the rest in a rotating order: every key stays findable until removed. */
        for (int j = 1; j < 7; j++) {
            int x = (victim + j) % 7;
            CHECK(fli_map_remove(&m, order[x], NULL));
            for (int k = 1; k < 7; k++) {
                int y = (victim + k) % 7;
                CHECK(fli_map_get(&m, order[y], NULL) == (k > j));
            }
        }
        CHECK_EQ_U64(m.count, 0);
    }
    fli_map_free(&m);
}

/* ---- sizes --------------------------------------------------------------------------- */

static void test_sizes(void)
{
    const struct { const char *text; uint64_t want; } good[] = {
        {"80GiB", 80 * FL_GiB}, {"512MiB", 512 * FL_MiB}, {"1.5GiB", 3 * FL_GiB / 2},
        {"4096", 4096}, {"1e9", 1000000000}, {"2 MiB", 2 * FL_MiB}, {"1kib", 1024},
        {"0", 0}, {"1.5", 1}, {"1.3GiB", 1395864371}, /* fractions round down */
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 1;
        CHECK_OK(fl_parse_size(good[i].text, &v));
        CHECK_EQ_U64(v, good[i].want);
    }
    /* Decimal units are refused (80GB is not an 80 GiB card): the error says what they mean. */
    const char *const bad[] = {"", "abc", "12XB", "-1", "GiB", "80GiBs", "80GB", "512mb", "1KB", "2 TB"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 99;
        CHECK_STATUS(fl_parse_size(bad[i], &v), FL_ERR_PARSE);
        CHECK_EQ_U64(v, 99);
        if (bad[i][0])
            CHECK(strstr(fl_last_error(), bad[i]) != NULL);
    }
    CHECK_STATUS(fl_parse_size(NULL, &(uint64_t){0}), FL_ERR_PARSE);
    CHECK_STATUS(fl_parse_size("80GB", &(uint64_t){0}), FL_ERR_PARSE);
    CHECK(strstr(fl_last_error(), "80GB is 74.51 GiB (decimal gigabytes") && strstr(fl_last_error(), "write 80GiB"));

    char buf[32];
    CHECK(strcmp(fl_format_size(512, buf, sizeof buf), "512 B") == 0);
    CHECK(strcmp(fl_format_size(1363148800, buf, sizeof buf), "1.27 GiB") == 0);
    CHECK(strcmp(fl_format_size(80 * FL_GiB, buf, sizeof buf), "80.00 GiB") == 0);
    CHECK(strcmp(fl_format_size(1536, buf, sizeof buf), "1.50 KiB") == 0);
    /* Never overruns and always terminates. */
    char tiny[4];
    fl_format_size(123456789, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 3);
}

/* ---- bit arrays ---------------------------------------------------------------- */

/* Every range [a, b) of a 256-bit array, set, counted, searched for its first set and
 * first clear bit (fli_bits_next), tested whole (fli_bits_all, with a
 * gap at its first, middle and last bit too) and cleared on a pseudo-random background,
 * against one bit at a time: inside one word, across a boundary, across whole words, empty. */
static void test_bits(void)
{
    enum { N = 256 };
    uint64_t w[N / 64], ref[N / 64];
    uint64_t x = 0x9e3779b97f4a7c15u;
    size_t bad = 0;
    CHECK_EQ_U64(fli_bits_words(0), 0);
    CHECK_EQ_U64(fli_bits_words(1), 1);
    CHECK_EQ_U64(fli_bits_words(64), 1);
    CHECK_EQ_U64(fli_bits_words(65), 2);
    for (uint64_t a = 0; a <= N; a += 3) {
        for (uint64_t b = a; b <= N; b += 5) {
            for (int k = 0; k < N / 64; k++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                w[k] = ref[k] = x;
            }
            uint64_t count = 0;
            for (uint64_t i = a; i < b; i++)
                count += fli_bit_get(ref, i);
            bad += fli_bits_count(w, a, b) != count;
            bad += fli_bits_all(w, a, b) != (count == b - a);
            for (int v = 0; v < 2; v++) {
                uint64_t first = a;
                while (first < b && fli_bit_get(ref, first) != v)
                    first++;
                bad += fli_bits_next(w, a, b, v) != first;
            }
            fli_bits_set(w, a, b);
            for (uint64_t i = a; i < b; i++)
                fli_bit_set(ref, i);
            bad += memcmp(w, ref, sizeof w) != 0;
            bad += fli_bits_count(w, a, b) != b - a;
            bad += !fli_bits_all(w, a, b);
            /* One gap anywhere in the run (its first, a middle and its last bit) and
             * fli_bits_all says no; the bit back, yes. */
            uint64_t gaps[3] = {a, a + (b - a) / 2, b - 1};
            for (int j = 0; j < 3 && a < b; j++) {
                fli_bit_clear(w, gaps[j]);
                bad += fli_bits_all(w, a, b);
                fli_bit_set(w, gaps[j]);
                bad += !fli_bits_all(w, a, b);
            }
            fli_bits_clear(w, a, b);
            for (uint64_t i = a; i < b; i++)
                fli_bit_clear(ref, i);
            bad += memcmp(w, ref, sizeof w) != 0;
            bad += fli_bits_count(w, a, b) != 0;
        }
    }
    CHECK_EQ_U64(bad, 0);
}

/* fli_popcount64 (the inline bit-parallel sum where the target has no popcount
 * instruction) against a bit at a time: no bits, all, each single bit, random words. */
static void test_popcount(void)
{
    CHECK_EQ_U64(fli_popcount64(0), 0);
    CHECK_EQ_U64(fli_popcount64(~UINT64_C(0)), 64);
    size_t bad = 0;
    for (unsigned i = 0; i < 64; i++) {
        bad += fli_popcount64(UINT64_C(1) << i) != 1;
        bad += fli_popcount64(~(UINT64_C(1) << i)) != 63;
    }
    uint64_t x = 0x2545f4914f6cdd1du;
    for (int k = 0; k < 100000; k++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        uint64_t v = x >> (k % 64), n = 0;
        for (uint64_t y = v; y; y >>= 1)
            n += y & 1;
        bad += fli_popcount64(v) != n;
    }
    CHECK_EQ_U64(bad, 0);
}

/* A table grown from nothing past FL_TABLE_MAP_MIN (heap memory, then a mapping, then
 * mremap): what was written stays, every new entry reads 0. */
static void test_table(void)
{
    uint32_t *t = NULL;
    uint64_t n = 0, bad = 0;
    for (uint64_t next = 3; next < 4 * FL_TABLE_MAP_MIN / sizeof *t; next = next * 2 + 1) {
        CHECK_OK(fli_table_grow((void **)&t, sizeof *t, n, next));
        for (uint64_t i = 0; i < n; i++)
            bad += t[i] != (uint32_t)(i * 2654435761u);
        for (uint64_t i = n; i < next; i++)
            bad += t[i] != 0;
        for (uint64_t i = n; i < next; i++)
            t[i] = (uint32_t)(i * 2654435761u);
        n = next;
    }
    CHECK_EQ_U64(bad, 0);
    CHECK(n * sizeof *t >= FL_TABLE_MAP_MIN);
    fli_table_free(t, sizeof *t, n);
    fli_table_free(NULL, sizeof *t, 0);
}

static void test_misc(void)
{
    CHECK(fli_is_pow2(1) && fli_is_pow2(FL_GiB) && !fli_is_pow2(0) && !fli_is_pow2(12));
    CHECK_EQ_U64(fli_align_up(513, 512), 1024);
    CHECK_EQ_U64(fli_align_down(1023, 512), 512);
    CHECK_EQ_U64(fli_log2_floor(FL_MiB + 1), 20);
    CHECK_EQ_U64(fli_div_up(10, 3), 4);
    CHECK(strcmp(fl_status_str(FL_ERR_PARSE), "parse error") == 0);
    fli_fail(FL_ERR_IO, "x %d", 5);
    CHECK(strcmp(fl_last_error(), "x 5") == 0);
    /* A message that wraps the one before it (fli_fail(s, "...: %s", fl_last_error())). */
    fli_fail(FL_ERR_DEVICE, "cuda sync: injected failure");
    fli_fail(FL_ERR_DEVICE, "graph release: %s (%d)", fl_last_error(), 7);
    CHECK(strcmp(fl_last_error(), "graph release: cuda sync: injected failure (7)") == 0);
    fli_clear_error();
    CHECK(strcmp(fl_last_error(), "") == 0);
    uint64_t a = fli_now_ns(), b = fli_now_ns();
    CHECK(b >= a);
}

int main(void)
{
    test_map_random();
    test_map_wrap();
    test_bits();
    test_popcount();
    test_table();
    test_sizes();
    test_misc();
    return fl_test_done("test_util");
}
