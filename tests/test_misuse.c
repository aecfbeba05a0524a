/* Misuse of the C API, on every policy: double and unknown frees, interior pointers,
 * size 0, sizes beyond the device and near 2^64 (rounding must not wrap), a limit below
 * what is in use, empty_cache with live blocks. Each gets its documented status and a
 * message naming the pointer or size (docs/RELIABILITY.md has the table), never a crash;
 * the self-check passes afterwards and the allocator keeps working. */
#include <string.h>

#include "test_support.h"
#include "util/util.h"

#define MiB (UINT64_C(1) << 20)
/* A multiple of 20 MiB: cca-expandable maps large requests in 20 MiB pages, so it can
 * serve a request of exactly the capacity only then (as PyTorch's would). */
#define CAPACITY (60 * MiB)

static const char *policy_now;
static int verbose;

/* "asked 60.00 MiB": how the OOM message names a request. */
static const char *asked(uint64_t size)
{
    static char buf[4][48];
    static int k;
    char sz[32];
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "asked %s", fl_format_size(size, sz, sizeof sz));
    return buf[k];
}

/* After every case: sound, and still serving a fresh allocation of each kind. */
static void still_works(fl_allocator *a, const char *after)
{
    if (fl_allocator_check(a)) {
        fl_test_checks++;
        fl_test_failures++;
        fprintf(stderr, "%s, after %s: self-check: %s\n", policy_now, after, fl_last_error());
    }
    uint64_t p = 0, q = 0;
    CHECK_OK(fl_alloc(a, 1000, 0, &p));
    CHECK_OK(fl_alloc(a, 3 * MiB, 7, &q));
    CHECK(p && q && p != q);
    CHECK_OK(fl_free(a, p));
    CHECK_OK(fl_free(a, q));
    CHECK(fl_allocator_check(a) == 0);
}

static void show(const char *what, fl_status s)
{
    if (verbose)
        printf("%-15s | %-28s | %-16s | %s\n", policy_now, what, fl_status_str(s), fl_last_error());
}

/* The call's status is want and its message names `mention`. */
#define EXPECT(what, expr, want, mention)                                              \
    do {                                                                               \
        fli_clear_error();                                                              \
        fl_status st_ = (expr);                                                        \
        show(what, st_);                                                               \
        CHECK_STATUS(st_, want);                                                       \
        if (st_ != FL_OK && (mention)[0])                                              \
            CHECK_MENTIONS(mention);                                                   \
        if (st_ != want || (st_ != FL_OK && (mention)[0] && !strstr(fl_last_error(), mention))) \
            fprintf(stderr, "  (policy %s, case %s)\n", policy_now, what);            \
    } while (0)

static void misuse(const char *policy)
{
    policy_now = policy;
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = CAPACITY;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    fl_allocator *a = NULL;
    CHECK_OK(fl_allocator_create(&cfg, d, &a));
    if (!a) {
        fl_device_destroy(d);
        return;
    }
    uint64_t keep = 0, p = 0;
    fl_status s;
    CHECK_OK(fl_alloc(a, 5000, 0, &keep)); /* a live neighbour through every case */

    /* Double free: the second one is refused, naming the pointer. */
    CHECK_OK(fl_alloc(a, 4096, 0, &p));
    CHECK_OK(fl_free(a, p));
    EXPECT("double free", fl_free(a, p), FL_ERR_NOT_FOUND, fl_test_hex(p));
    still_works(a, "double free");

    /* A pointer never handed out, far from anything. */
    uint64_t unknown = UINT64_C(0x7f0000000000);
    EXPECT("free of unknown pointer", fl_free(a, unknown), FL_ERR_NOT_FOUND, fl_test_hex(unknown));
    still_works(a, "unknown free");

    /* Inside a live block: refused, and the block stays live and whole. */
    CHECK_OK(fl_alloc(a, 64 * 1024, 0, &p));
    EXPECT("free of interior pointer", fl_free(a, p + 512), FL_ERR_NOT_FOUND, fl_test_hex(p + 512));
    EXPECT("free of interior pointer", fl_free(a, p + 1), FL_ERR_NOT_FOUND, fl_test_hex(p + 1));
    still_works(a, "interior free");
    CHECK_OK(fl_free(a, p));

    /* NULL. */
    EXPECT("free of 0", fl_free(a, 0), FL_ERR_NOT_FOUND, "0x0");
    still_works(a, "free of 0");

    /* Size 0. */
    p = 12345;
    EXPECT("alloc of size 0", fl_alloc(a, 0, 0, &p), FL_ERR_INVALID, "size 0");
    still_works(a, "size 0");

    /* Exactly the capacity is possible only with nothing else live: one block is. */
    EXPECT("alloc of capacity + 1", fl_alloc(a, CAPACITY + 1, 0, &p), FL_ERR_OOM, asked(CAPACITY + 1));
    still_works(a, "capacity + 1");
    EXPECT("alloc of 2 x capacity", fl_alloc(a, 2 * CAPACITY, 0, &p), FL_ERR_OOM, asked(2 * CAPACITY));
    still_works(a, "2 x capacity");

    /* Near 2^64: rounding up to 512 B, a page or a segment must not wrap to a small size. */
    const uint64_t huge[] = {UINT64_MAX, UINT64_MAX - 511, UINT64_MAX - 2 * MiB + 1, UINT64_C(1) << 63,
                             (UINT64_C(1) << 63) + 1, UINT64_C(1) << 56, UINT64_C(1) << 48};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "alloc of %s", fl_test_hex(huge[i]));
        p = 0;
        EXPECT(what, fl_alloc(a, huge[i], 0, &p), FL_ERR_OOM, asked(huge[i]));
        CHECK(p == 0);
        still_works(a, what);
    }

    /* A limit below what is in use: allowed (cached memory above it goes back where it
     * can); nothing live moves, new device memory is refused until it is raised. */
    uint64_t big = 0;
    CHECK_OK(fl_alloc(a, 24 * MiB, 0, &big));
    EXPECT("set_limit below usage", fl_set_limit(a, 4 * MiB), FL_OK, "");
    CHECK(fl_allocator_check(a) == 0);
    /* Served from memory already held (cca-expandable has 16 MiB mapped past the
     * block), or refused: never more device memory. */
    uint64_t held = in_use(d);
    p = 0;
    fli_clear_error();
    s = fl_alloc(a, 8 * MiB, 0, &p);
    show("alloc above the limit", s);
    CHECK(s == FL_OK || s == FL_ERR_OOM);
    if (s == FL_OK)
        CHECK(in_use(d) <= held);
    else
        CHECK_MENTIONS(asked(8 * MiB));
    CHECK(fl_allocator_check(a) == 0);
    if (p)
        CHECK_OK(fl_free(a, p));
    CHECK_OK(fl_set_limit(a, 0));
    CHECK_OK(fl_free(a, big));
    still_works(a, "set_limit below usage");

    /* empty_cache with live blocks: they stay live (their memory stays), the rest goes. */
    uint64_t live[3];
    CHECK_OK(fl_alloc(a, 700, 0, &live[0]));
    CHECK_OK(fl_alloc(a, 5 * MiB, 0, &live[1]));
    CHECK_OK(fl_alloc(a, 3 * MiB, 1, &live[2]));
    CHECK_OK(fl_alloc(a, 6 * MiB, 1, &p));
    CHECK_OK(fl_free(a, p));
    EXPECT("empty_cache with live blocks", fl_empty_cache(a), FL_OK, "");
    fl_stats st;
    fl_get_stats(a, &st);
    CHECK(st.reserved_bytes.current >= st.allocated_bytes.current);
    CHECK(st.allocated_bytes.current >= 5 * MiB + 3 * MiB + 700 + 5000);
    for (int i = 0; i < 3; i++)
        CHECK_OK(fl_free(a, live[i]));
    still_works(a, "empty_cache with live blocks");

    /* Exactly the capacity, with nothing else live (cache emptied first). */
    CHECK_OK(fl_free(a, keep));
    CHECK_OK(fl_empty_cache(a));
    p = 0;
    s = fl_alloc(a, CAPACITY, 0, &p);
    show("alloc of exactly capacity", s);
    /* cca's large pool rounds to 2 MiB: 64 MiB fits; every policy must serve it. */
    CHECK_STATUS(s, FL_OK);
    if (s == FL_OK)
        CHECK_OK(fl_free(a, p));
    still_works(a, "exactly capacity");

    CHECK_OK(fl_empty_cache(a));
    fl_allocator_destroy(a);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

int main(int argc, char **argv)
{
    verbose = argc > 1 && !strcmp(argv[1], "-v");
    for (const char *const *p = fl_policy_names(); *p; p++)
        misuse(*p);
    return fl_test_done("test_misuse");
}
