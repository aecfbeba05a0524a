/* The allocator at its own limits (docs/RELIABILITY.md): a million live blocks (still
 * correct, host metadata per block measured with mallinfo2), a request of exactly the
 * capacity and one byte more, a thousand streams, and more streams than the simulated
 * address space holds heaps for: a clear error at the limit, never corruption. */
#include <malloc.h>
#include <string.h>
#include <time.h>

#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

static fl_allocator *make(const char *policy, uint64_t capacity, fl_device **d)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    if (capacity)
        sp.capacity = capacity;
    *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, d));
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    fl_allocator *a = NULL;
    CHECK_OK(fl_allocator_create(&cfg, *d, &a));
    if (!a) {
        fprintf(stderr, "cannot create %s: %s\n", policy, fl_last_error());
        exit(1);
    }
    return a;
}

static void finish(fl_allocator *a, fl_device *d)
{
    CHECK_OK(fl_empty_cache(a));
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

static int cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* A million live 512-byte blocks: all distinct, the check passes, all freed. Prints
 * host bytes per live block (the policy's metadata, plus the sim's own for nocache,
 * whose every block is a device allocation). */
#define MANY 1000000u

static void many_blocks(const char *policy)
{
    fl_device *d;
    fl_allocator *a = make(policy, 1 * GiB, &d);
    uint64_t *addr = malloc(MANY * sizeof *addr);
    if (!addr)
        exit(1);
    clock_t t0 = clock();
    struct mallinfo2 m0 = mallinfo2();
    uint32_t ok = 0;
    for (uint32_t i = 0; i < MANY; i++)
        ok += fl_alloc(a, 512, 0, &addr[i]) == FL_OK;
    struct mallinfo2 m1 = mallinfo2();
    /* Heap bytes in use plus large blocks glibc maps directly (uordblks omits them). */
    double grown = (double)(m1.uordblks + m1.hblkhd) - (double)(m0.uordblks + m0.hblkhd);
    CHECK_EQ_U64(ok, MANY);
    fl_stats st;
    fl_get_stats(a, &st);
    CHECK_EQ_U64(st.allocated_bytes.current, (uint64_t)MANY * 512);
    CHECK(fl_allocator_check(a) == 0);
    /* Distinct and 512 B apart at least: sort and compare neighbours. */
    uint64_t *sorted = malloc(MANY * sizeof *sorted);
    if (!sorted)
        exit(1);
    memcpy(sorted, addr, MANY * sizeof *sorted);
    qsort(sorted, MANY, sizeof *sorted, cmp);
    uint32_t overlaps = 0;
    for (uint32_t i = 1; i < MANY; i++)
        overlaps += sorted[i] - sorted[i - 1] < 512;
    CHECK_EQ_U64(overlaps, 0);
    free(sorted);
    uint32_t freed = 0;
    for (uint32_t i = 0; i < MANY; i++)
        freed += fl_free(a, addr[MANY - 1 - i]) == FL_OK; /* reverse order: merges both ways */
    CHECK_EQ_U64(freed, MANY);
    fl_get_stats(a, &st);
    CHECK_EQ_U64(st.allocated_bytes.current, 0);
    printf("%-15s %u live 512 B blocks: %.1f host bytes per block, %.2f s\n", policy, MANY,
           grown / MANY, (double)(clock() - t0) / CLOCKS_PER_SEC);
    free(addr);
    finish(a, d);
}

/* Exactly the capacity fits an empty allocator; one byte more is OOM naming the size. */
static void capacity_edge(const char *policy)
{
    fl_device *d;
    const uint64_t cap = 60 * MiB; /* a multiple of 20 MiB: see test_misuse */
    fl_allocator *a = make(policy, cap, &d);
    uint64_t p = 0;
    CHECK_OK(fl_alloc(a, cap, 0, &p));
    CHECK_OK(fl_free(a, p));
    CHECK_OK(fl_empty_cache(a));
    CHECK_STATUS(fl_alloc(a, cap + 1, 0, &p), FL_ERR_OOM);
    CHECK_MENTIONS("asked 60.00 MiB");
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_alloc(a, cap / 2, 0, &p));
    CHECK_OK(fl_free(a, p));
    finish(a, d);
}

/* A thousand streams, a block on each, on a device with room for all of them. */
static void many_streams(const char *policy)
{
    fl_device *d;
    fl_allocator *a = make(policy, 4 * GiB, &d);
    enum { N = 1000 };
    uint64_t addr[N];
    uint32_t ok = 0;
    for (uint32_t i = 0; i < N; i++)
        ok += fl_alloc(a, 4096, 0x7f0000000000 + i * 16, &addr[i]) == FL_OK;
    CHECK_EQ_U64(ok, N);
    CHECK(fl_allocator_check(a) == 0);
    for (uint32_t i = 0; i < N; i++)
        CHECK_OK(fl_free(a, addr[i]));
    finish(a, d);
}

/* The default sim (1 PiB, 2^56 bytes of addresses): fragless reserves 256 TiB per heap,
 * so the address space holds 256 heaps. Past that a new stream gets a clear error and
 * every earlier stream keeps working. */
static void streams_past_address_space(void)
{
    fl_device *d;
    fl_allocator *a = make("fragless", 0, &d);
    enum { N = 400 };
    uint64_t addr[N];
    uint32_t n = 0;
    fl_status s = FL_OK;
    for (; n < N && (s = fl_alloc(a, 1 * MiB, 1000 + n, &addr[n])) == FL_OK; n++)
        ;
    printf("fragless on the default sim: %u streams served, then: %s (%s)\n", n, fl_status_str(s),
           fl_last_error());
    CHECK(n >= 128 && n < N);
    CHECK(s == FL_ERR_OOM);
    CHECK_MENTIONS("address space");
    CHECK(fl_allocator_check(a) == 0);
    uint64_t p;
    CHECK_OK(fl_alloc(a, 3 * MiB, 1000, &p)); /* an existing stream */
    CHECK_OK(fl_free(a, p));
    for (uint32_t i = 0; i < n; i++)
        CHECK_OK(fl_free(a, addr[i]));
    finish(a, d);
}

int main(void)
{
    for (const char *const *p = fl_policy_names(); *p; p++) {
        many_blocks(*p);
        capacity_edge(*p);
        many_streams(*p);
    }
    streams_past_address_space();
    return fl_test_done("test_limits");
}
