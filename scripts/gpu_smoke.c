/* gpu-check smoke test (scripts/gpu-check.sh step b; CI builds it and runs it on the
 * driver double, test gpu_smoke): fragless's public C API (include/fragless.h) on a CUDA driver.
 * usage: smoke DRIVER_LIBRARY SIZE      e.g. smoke libcuda.so.1 4GiB
 * For every policy, on a fresh cuda device (device 0) with limit SIZE: allocate blocks of
 * many sizes up to half the limit, free every other one, allocate large blocks up to 55%,
 * check status codes, address alignment, that no two live blocks overlap, the policy's
 * self-check and statistics; ask for more than the limit (must be FL_ERR_OOM and change
 * nothing); free everything; then fl_empty_cache must bring reserved memory to 0, which the
 * driver's own count of free memory (cuMemGetInfo) must confirm. No data is read or
 * written there. Then the fragless policy's stitched block (ARCHITECTURE.md), with bytes:
 * on a limit of 8 pages, blocks of 3, 1, 4, 1 and 7 half pages, the two single halves
 * freed, and a request of one page, which no range can back: it must be stitched from the
 * two free halves (no new memory, fl_stats.stitched_blocks 1), and bytes written through
 * it (cuMemsetD8) must read back (cuMemcpyDtoH) at the freed halves' addresses, the live
 * blocks' bytes unchanged: the driver maps one handle at two addresses. Exit 0 passed, 1
 * a check failed, 2 the driver or device could not be opened. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fragless.h"

#define MiB (1024ull * 1024ull)
#define MAX_BLOCKS 65536

static int failures;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            printf("    FAIL (smoke.c:%d) ", __LINE__);                    \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

typedef struct {
    uint64_t addr, size;
} block;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A size spread over powers of two: 2^lo .. 2^(hi+1) bytes, not rounded to anything. */
static uint64_t size_in(int lo, int hi)
{
    int k = lo + (int)(rng() % (uint64_t)(hi - lo + 1));
    return (1ull << k) + rng() % (1ull << k) + 1;
}

typedef int (*mem_get_info_fn)(size_t *free_bytes, size_t *total_bytes);
static mem_get_info_fn mem_get_info;
/* The driver's calls the stitched block's check makes itself (NULL: not checked). */
static int (*cu_device_get)(int *dev, int ordinal);
static int (*cu_primary_retain)(void **ctx, int dev);
static int (*cu_primary_release)(int dev);
static int (*cu_ctx_push)(void *ctx);
static int (*cu_ctx_pop)(void **ctx);
static int (*cu_memset_d8)(uint64_t dst, unsigned char value, size_t n);
static int (*cu_memcpy_dtoh)(void *dst, uint64_t src, size_t n);

/* Free device memory as the driver counts it (0 when the query is unavailable). */
static uint64_t driver_free(void)
{
    size_t f = 0, t = 0;
    if (!mem_get_info || mem_get_info(&f, &t) != 0)
        return 0;
    return f;
}

static int by_addr(const void *x, const void *y)
{
    const block *a = x, *b = y;
    return a->addr < b->addr ? -1 : a->addr > b->addr;
}

static const char *gib(uint64_t bytes, char *buf)
{
    snprintf(buf, 32, "%.2f GiB", (double)bytes / (1024.0 * MiB));
    return buf;
}

/* Allocates until live bytes reach target; returns 0 when an allocation failed. */
static int fill(fl_allocator *a, const char *policy, const char *phase, block *v, int *n, uint64_t *live,
                uint64_t target, int lo, int hi)
{
    while (*live < target && *n < MAX_BLOCKS) {
        uint64_t size = size_in(lo, hi), addr = 0;
        if (*live + size > target)
            size = target - *live + 1;
        fl_status s = fl_alloc(a, size, 0, &addr);
        CHECK(s == FL_OK, "%s: %s: fl_alloc(%llu bytes) with %llu live: %s: %s", policy, phase,
              (unsigned long long)size, (unsigned long long)*live, fl_status_str(s), fl_last_error());
        if (s != FL_OK)
            return 0;
        CHECK(addr != 0 && addr % 512 == 0, "%s: %s: address 0x%llx is not 512-byte aligned", policy, phase,
              (unsigned long long)addr);
        v[(*n)++] = (block){addr, size};
        *live += size;
    }
    return 1;
}

static void run_policy(const char *driver, const char *policy, uint64_t limit)
{
    int failures_before = failures;
    char b1[32], b2[32], b3[32];
    fl_cuda_params cp;
    fl_cuda_params_default(&cp);
    cp.library = driver;
    cp.device = 0;
    fl_device *dev = NULL;
    fl_status s = fl_cuda_device_create(&cp, &dev);
    CHECK(s == FL_OK, "%s: fl_cuda_device_create: %s", policy, fl_last_error());
    if (s != FL_OK)
        return;
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    cfg.limit = limit;
    fl_allocator *a = NULL;
    s = fl_allocator_create(&cfg, dev, &a);
    CHECK(s == FL_OK, "%s: fl_allocator_create: %s", policy, fl_last_error());
    if (s != FL_OK) {
        fl_device_destroy(dev);
        return;
    }
    uint64_t free0 = driver_free();
    block *v = calloc(MAX_BLOCKS, sizeof *v);
    if (!v) {
        printf("out of host memory\n");
        exit(2);
    }
    int n = 0, total_allocs = 0;
    uint64_t live = 0;
    /* 1: many sizes (513 B .. 32 MiB, spread over powers of two) up to half the limit */
    int ok = fill(a, policy, "phase 1", v, &n, &live, limit / 2, 9, 24);
    total_allocs += n;
    /* 2: free every other block: holes of every size everywhere */
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (i % 2) {
            s = fl_free(a, v[i].addr);
            CHECK(s == FL_OK, "%s: fl_free(0x%llx): %s", policy, (unsigned long long)v[i].addr, fl_last_error());
            live -= v[i].size;
        } else {
            v[m++] = v[i];
        }
    }
    n = m;
    /* 3: large blocks (32 .. 256 MiB) up to 55% of the limit: from holes, cache or the device */
    int n3 = n;
    if (ok)
        ok = fill(a, policy, "phase 3", v, &n, &live, limit / 100 * 55, 25, 27);
    total_allocs += n - n3;
    /* live blocks never overlap */
    qsort(v, (size_t)n, sizeof *v, by_addr);
    for (int i = 0; i + 1 < n; i++)
        CHECK(v[i].addr + v[i].size <= v[i + 1].addr, "%s: blocks 0x%llx (+%llu) and 0x%llx overlap", policy,
              (unsigned long long)v[i].addr, (unsigned long long)v[i].size, (unsigned long long)v[i + 1].addr);
    CHECK(fl_allocator_check(a) == 0, "%s: self-check: %s", policy, fl_last_error());
    fl_stats st;
    fl_get_stats(a, &st);
    CHECK(st.allocated_bytes.current >= live, "%s: allocated_bytes %llu < live %llu", policy,
          (unsigned long long)st.allocated_bytes.current, (unsigned long long)live);
    CHECK(st.reserved_bytes.current >= st.allocated_bytes.current, "%s: reserved %llu < allocated %llu", policy,
          (unsigned long long)st.reserved_bytes.current, (unsigned long long)st.allocated_bytes.current);
    CHECK(st.reserved_bytes.peak <= limit, "%s: peak reserved %llu over the limit %llu", policy,
          (unsigned long long)st.reserved_bytes.peak, (unsigned long long)limit);
    CHECK(st.allocation.current == (uint64_t)n, "%s: %llu allocs - %llu frees != %d live blocks", policy,
          (unsigned long long)st.allocation.allocated, (unsigned long long)st.allocation.freed, n);
    uint64_t reserved_live = st.reserved_bytes.current;
    /* 4: more than the limit: FL_ERR_OOM, nothing else changes */
    uint64_t addr = 0, allocated = st.allocated_bytes.current, ooms = st.num_ooms;
    s = fl_alloc(a, limit + 64 * MiB, 0, &addr);
    CHECK(s == FL_ERR_OOM, "%s: fl_alloc(limit + 64 MiB) gave '%s', not out of memory: the limit is not enforced",
          policy, fl_status_str(s));
    if (s == FL_OK)
        fl_free(a, addr); /* keep the later checks about the rest */
    fl_get_stats(a, &st);
    CHECK(s == FL_OK || (st.num_ooms == ooms + 1 && st.allocated_bytes.current == allocated),
          "%s: the refused request changed the stats (ooms %llu -> %llu, allocated %llu -> %llu)", policy,
          (unsigned long long)ooms, (unsigned long long)st.num_ooms, (unsigned long long)allocated,
          (unsigned long long)st.allocated_bytes.current);
    /* 5: free everything; the cache stays until fl_empty_cache */
    for (int i = 0; i < n; i++) {
        s = fl_free(a, v[i].addr);
        CHECK(s == FL_OK, "%s: fl_free(0x%llx): %s", policy, (unsigned long long)v[i].addr, fl_last_error());
    }
    fl_get_stats(a, &st);
    CHECK(st.allocated_bytes.current == 0 && st.allocation.current == 0, "%s: %llu bytes still allocated after freeing all",
          policy, (unsigned long long)st.allocated_bytes.current);
    uint64_t cached = st.reserved_bytes.current, peak = st.reserved_bytes.peak;
    s = fl_empty_cache(a);
    CHECK(s == FL_OK, "%s: fl_empty_cache: %s", policy, fl_last_error());
    fl_get_stats(a, &st);
    CHECK(st.reserved_bytes.current == 0, "%s: %llu bytes still reserved after fl_empty_cache", policy,
          (unsigned long long)st.reserved_bytes.current);
    fl_device_counters c;
    fl_device_get_counters(dev, &c);
    CHECK(c.in_use == 0, "%s: the device still holds %llu bytes after fl_empty_cache", policy,
          (unsigned long long)c.in_use);
    uint64_t free1 = driver_free();
    if (free0 && free1)
        CHECK(free1 + 64 * MiB >= free0, "%s: the driver reports %llu MiB less free memory after fl_empty_cache",
              policy, (unsigned long long)((free0 - free1) / MiB));
    uint64_t calls = 0;
    for (int k = 0; k < FL_CALL_COUNT; k++)
        calls += c.calls[k];
    printf("  %-15s %-4s %6d blocks, peak reserved %s, %s held with 55%% live, %s cached at the end -> 0; "
           "%llu driver calls, %.1f ms in the driver; driver free memory %s\n",
           policy, failures == failures_before ? "ok" : "FAIL", total_allocs, gib(peak, b1), gib(reserved_live, b2),
           gib(cached, b3), (unsigned long long)calls, c.time_us / 1000.0,
           free0 && free1 ? (free1 + 64 * MiB >= free0 ? "back" : "NOT back") : "not queried");
    free(v);
    fl_allocator_destroy(a);
    fl_device_destroy(dev);
}

/* The stitched block (see the top): fragless on a limit of 8 pages of the device. */
static void run_stitch(const char *driver)
{
    int failures_before = failures;
    fl_cuda_params cp;
    fl_cuda_params_default(&cp);
    cp.library = driver;
    fl_device *dev = NULL;
    fl_status s = fl_cuda_device_create(&cp, &dev);
    CHECK(s == FL_OK, "stitch: fl_cuda_device_create: %s", fl_last_error());
    if (s != FL_OK)
        return;
    uint64_t g = fl_device_granularity(dev), half = g / 2;
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "fragless");
    cfg.limit = 8 * g;
    fl_allocator *a = NULL;
    s = fl_allocator_create(&cfg, dev, &a);
    CHECK(s == FL_OK, "stitch: fl_allocator_create: %s", fl_last_error());
    if (s != FL_OK) {
        fl_device_destroy(dev);
        return;
    }
    static const uint64_t halves[] = {3, 1, 4, 1, 7};
    uint64_t b[5] = {0}, off = 0, x = 0;
    for (int i = 0; i < 5 && s == FL_OK; i++) {
        s = fl_alloc(a, halves[i] * half, 0, &b[i]);
        CHECK(s == FL_OK, "stitch: fl_alloc(%llu): %s", (unsigned long long)(halves[i] * half), fl_last_error());
        CHECK(s != FL_OK || b[i] - b[0] == off, "stitch: block %d at +%llu, not +%llu: the layout differs", i,
              (unsigned long long)(b[i] - b[0]), (unsigned long long)off);
        off += halves[i] * half;
    }
    fl_stats st;
    const char *bytes = "not checked (the driver has no cuMemsetD8_v2 / cuMemcpyDtoH_v2)";
    if (failures == failures_before) {
        fl_free(a, b[1]);
        fl_free(a, b[3]);
        s = fl_alloc(a, g, 0, &x);
        fl_get_stats(a, &st);
        CHECK(s == FL_OK && st.stitched_blocks == 1 && st.reserved_bytes.current == 8 * g,
              "stitch: the page's request gave '%s', %llu stitched blocks, %llu bytes reserved (8 pages: %llu)",
              s == FL_OK ? "ok" : fl_last_error(), (unsigned long long)st.stitched_blocks,
              (unsigned long long)st.reserved_bytes.current, (unsigned long long)(8 * g));
    }
    int cu_dev = 0;
    void *ctx = NULL;
    unsigned char *host = malloc(8 * g);
    if (failures == failures_before && host && cu_memset_d8 && cu_memcpy_dtoh && cu_device_get && cu_primary_retain &&
        cu_ctx_push && cu_ctx_pop && cu_primary_release && cu_device_get(&cu_dev, 0) == 0 &&
        cu_primary_retain(&ctx, cu_dev) == 0) {
        cu_ctx_push(ctx);
        int r = cu_memset_d8(b[0], 0xa1, 3 * half) | cu_memset_d8(b[2], 0xb2, 4 * half) |
                cu_memset_d8(b[4], 0xc3, 7 * half) | cu_memset_d8(x, 0x5a, g);
        r |= cu_memcpy_dtoh(host, b[0], 8 * g);
        CHECK(r == 0, "stitch: cuMemsetD8 / cuMemcpyDtoH failed");
        uint64_t bad = 0;
        for (uint64_t i = 0; r == 0 && i < 8 * g; i++) {
            unsigned char want = i < 3 * half ? 0xa1 : i < 4 * half ? 0x5a : i < 8 * half ? 0xb2 : i < 9 * half ? 0x5a : 0xc3;
            bad += host[i] != want;
        }
        CHECK(bad == 0, "stitch: %llu of the heap's bytes are not what the blocks and the stitched block wrote",
              (unsigned long long)bad);
        void *popped;
        cu_ctx_pop(&popped);
        cu_primary_release(cu_dev);
        bytes = r == 0 && bad == 0 ? "the stitched block's bytes are the freed halves'" : "WRONG bytes";
    }
    free(host);
    if (x)
        CHECK(fl_free(a, x) == FL_OK, "stitch: fl_free(stitched): %s", fl_last_error());
    for (int i = 0; i < 5; i++)
        if (b[i] && i != 1 && i != 3)
            fl_free(a, b[i]);
    CHECK(fl_empty_cache(a) == FL_OK, "stitch: fl_empty_cache: %s", fl_last_error());
    fl_get_stats(a, &st);
    CHECK(st.reserved_bytes.current == 0 && st.stitched_blocks == 0, "stitch: %llu bytes reserved at the end",
          (unsigned long long)st.reserved_bytes.current);
    CHECK(fl_allocator_check(a) == 0, "stitch: self-check: %s", fl_last_error());
    printf("  %-15s %-4s a page's request on 8 pages with two free halves: stitched; %s\n", "fragless stitch",
           failures == failures_before ? "ok" : "FAIL", bytes);
    fl_allocator_destroy(a);
    fl_device_destroy(dev);
}

int main(int argc, char **argv)
{
    const char *driver = argc > 1 ? argv[1] : "libcuda.so.1";
    uint64_t limit = 4096 * MiB;
    if (argc > 2 && fl_parse_size(argv[2], &limit) != FL_OK) {
        printf("smoke: bad size '%s': %s\n", argv[2], fl_last_error());
        return 2;
    }
    fl_cuda_params cp;
    fl_cuda_params_default(&cp);
    cp.library = driver;
    fl_device *dev = NULL;
    if (fl_cuda_device_create(&cp, &dev) != FL_OK) {
        printf("smoke: cannot open device 0 through %s: %s\n", driver, fl_last_error());
        return 2;
    }
    char b1[32], b2[32];
    printf("smoke: device 0 through %s: capacity %s, granularity %llu KiB; limit %s per policy\n", driver,
           gib(fl_device_capacity(dev), b1), (unsigned long long)(fl_device_granularity(dev) / 1024), gib(limit, b2));
    if (limit > fl_device_capacity(dev) / 2) {
        printf("smoke: limit %s is more than half the device\n", b2);
        fl_device_destroy(dev);
        return 2;
    }
    void *lib = dlopen(driver, RTLD_NOW | RTLD_NOLOAD);
    if (lib) {
        mem_get_info = (mem_get_info_fn)(uintptr_t)dlsym(lib, "cuMemGetInfo_v2");
        *(void **)&cu_device_get = dlsym(lib, "cuDeviceGet");
        *(void **)&cu_primary_retain = dlsym(lib, "cuDevicePrimaryCtxRetain");
        *(void **)&cu_primary_release = dlsym(lib, "cuDevicePrimaryCtxRelease_v2");
        *(void **)&cu_ctx_push = dlsym(lib, "cuCtxPushCurrent_v2");
        *(void **)&cu_ctx_pop = dlsym(lib, "cuCtxPopCurrent_v2");
        *(void **)&cu_memset_d8 = dlsym(lib, "cuMemsetD8_v2");
        *(void **)&cu_memcpy_dtoh = dlsym(lib, "cuMemcpyDtoH_v2");
    }
    fl_device_destroy(dev);
    for (const char *const *p = fl_policy_names(); *p; p++)
        run_policy(driver, *p, limit);
    run_stitch(driver);
    printf("smoke: %s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}
