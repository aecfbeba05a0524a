/* The device contract: the rules every device keeps (docs/ARCHITECTURE.md, "Devices";
 * FACTS.md, "Real-GPU contracts"), checked the same way on the sim device and on the cuda
 * device over the CUDA driver double (tests/fakecuda), through the fli_dev_* wrappers every
 * policy uses. Each rule is tested here, once per device; what belongs to one device only
 * is in test_sim (cost model, charges), test_cuda_device (context, driver errors, data)
 * and test_fakecuda (the double's own driver API).
 *
 * Each case runs in its own process: a fresh device (and a fresh double), and a crash is
 * reported without stopping the others. The cuda half is skipped when the double was not
 * built or cannot be loaded. */
#include <dlfcn.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_api.h"
#include "device/device.h"
#include "test_support.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* ---- the devices --------------------------------------------------------------------- */

typedef struct backend {
    const char *name;
    /* A fresh device of `capacity` bytes, with or without virtual memory management. */
    fl_device *(*make)(uint64_t capacity, int vmm);
    /* Physical bytes in use as the memory's owner counts them: the sim's own count, the
     * driver's (total - free) under the cuda device. */
    uint64_t (*physical)(const fl_device *d);
} backend;

static const backend *B; /* the device of the running case */

static fl_device *sim_make(uint64_t capacity, int vmm)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    p.capacity = capacity;
    p.vmm_supported = vmm;
    fl_device *d = NULL;
    if (fl_sim_device_create(&p, &d) != FL_OK) {
        fprintf(stderr, "cannot create a sim device: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

static uint64_t sim_physical(const fl_device *d)
{
    return in_use(d);
}

static const char fake_path[] = FL_TEST_FAKECUDA;
static struct {
    void (*reset)(void);
    size_t (*used)(int dev);
} fake;

static fl_device *cuda_make(uint64_t capacity, int vmm)
{
    void *lib = fl_test_fakecuda();
    if (!lib || !fl_test_sym(lib, "fakecuda_reset", &fake.reset) || !fl_test_sym(lib, "fakecuda_used", &fake.used))
        exit(1);
    char cap[32];
    snprintf(cap, sizeof cap, "%llu", (unsigned long long)capacity);
    setenv("FAKECUDA_CAPACITY", cap, 1);
    setenv("FAKECUDA_NO_VMM", vmm ? "0" : "1", 1);
    fake.reset(); /* re-reads the environment */
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = fake_path;
    fl_device *d = NULL;
    if (fl_cuda_device_create(&p, &d) != FL_OK) {
        fprintf(stderr, "cannot create a cuda device on the double: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

/* The bytes the double charges to the device (cuMemGetInfo's total - free, which needs a
 * current context: the device leaves none). */
static uint64_t cuda_physical(const fl_device *d)
{
    return fake.used(d->ordinal);
}

static const backend sim_backend = {"sim", sim_make, sim_physical};
static const backend cuda_backend = {"cuda", cuda_make, cuda_physical};

/* ---- checks ---------------------------------------------------------------------------- */

/* Memory in use, by the device's count and by the owner's. */
#define CHECK_MEMORY(d, want)                                                           \
    do {                                                                                \
        CHECK_EQ_U64(in_use(d), want);                                                  \
        CHECK_EQ_U64(B->physical(d), want);                                             \
    } while (0)

/* What calls never change by failing: memory in use and its peak, bytes obtained and
 * returned, the owner's count. */
#define CHECK_UNCHANGED(d, cb)                                                          \
    do {                                                                                \
        fl_device_counters ca_ = counters(d);                                           \
        CHECK_EQ_U64(ca_.in_use, (cb).in_use);                                          \
        CHECK_EQ_U64(ca_.peak_in_use, (cb).peak_in_use);                                \
        CHECK_EQ_U64(ca_.bytes_obtained, (cb).bytes_obtained);                          \
        CHECK_EQ_U64(ca_.bytes_returned, (cb).bytes_returned);                          \
        CHECK_EQ_U64(B->physical(d), (cb).in_use);                                      \
    } while (0)

/* A refused call: the status, a message (naming `mention` when given), one more call of
 * its kind, one more failed call, and nothing else changed. The error is cleared first so
 * a stale message cannot pass for this call's. */
#define EXPECT_REFUSED(d, kind, want, mention, expr)                                    \
    do {                                                                                \
        const char *m_ = (mention);                                                     \
        fl_device_counters cb_ = counters(d);                                           \
        fli_clear_error();                                                               \
        CHECK_STATUS(expr, want);                                                       \
        CHECK(fl_last_error()[0] != 0);                                                 \
        if (m_)                                                                         \
            fl_test_check_mentions(m_, __FILE__, __LINE__);                             \
        CHECK_EQ_U64(counters(d).failed_calls, cb_.failed_calls + 1);                   \
        CHECK_EQ_U64(counters(d).calls[kind], cb_.calls[kind] + 1);                     \
        CHECK_UNCHANGED(d, cb_);                                                        \
    } while (0)

/* bytes_obtained - bytes_returned is what is in use, after any call. */
#define CHECK_BALANCE(d)                                                                \
    do {                                                                                \
        fl_device_counters c_ = counters(d);                                            \
        CHECK_EQ_U64(c_.bytes_obtained - c_.bytes_returned, c_.in_use);                 \
    } while (0)

/* ---- a new device ----------------------------------------------------------------------- */

static void test_creation(void)
{
    fl_device *d = B->make(64 * MiB, 1);
    CHECK_EQ_U64(fl_device_capacity(d), 64 * MiB);
    CHECK(fli_is_pow2(fl_device_granularity(d)) && fl_device_granularity(d) >= 4096);
    CHECK(d->vmm_supported == 1);
    fl_device_counters c = counters(d), zero;
    memset(&zero, 0, sizeof zero);
    CHECK(memcmp(&c, &zero, sizeof c) == 0); /* opening is not the policies' device time */
    CHECK_MEMORY(d, 0);
    fl_device_destroy(d);
    fl_device_destroy(NULL); /* like free(NULL) */
}

/* ---- the virtual memory path and its counters ------------------------------------------ */

static void test_vmm_path(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t va = 0, h1 = 0, h2 = 0;

    CHECK_OK(fli_dev_reserve(d, 8 * G, &va));
    CHECK(va != 0 && va % G == 0);
    CHECK_MEMORY(d, 0); /* address space is not memory */

    CHECK_OK(fli_dev_create(d, G, &h1));
    CHECK_OK(fli_dev_create(d, 2 * G, &h2));
    CHECK(h1 != 0 && h2 != 0 && h1 != h2);
    CHECK_MEMORY(d, 3 * G);
    CHECK_EQ_U64(counters(d).peak_in_use, 3 * G);

    CHECK_OK(fli_dev_map(d, va, G, h1));
    CHECK_OK(fli_dev_map(d, va + G, 2 * G, h2));
    CHECK_MEMORY(d, 3 * G); /* mapping takes no more memory */
    CHECK_OK(fli_dev_set_access(d, va, 3 * G));     /* across both mappings */
    CHECK_OK(fli_dev_set_access(d, va + G, G));     /* part of one mapping */
    CHECK_OK(fli_dev_synchronize(d));

    /* Two adjacent whole mappings go in one unmap. */
    CHECK_OK(fli_dev_unmap(d, va, 3 * G));
    CHECK_MEMORY(d, 3 * G); /* handles still live */
    CHECK_OK(fli_dev_release(d, h1));
    CHECK_MEMORY(d, 2 * G);
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_MEMORY(d, 0);
    CHECK_OK(fli_dev_addr_free(d, va, 8 * G));

    /* Per kind, in fl_call order: mem_alloc, mem_free, reserve, addr_free, create,
     * release, map, unmap, set_access, sync. */
    const uint64_t want[FL_CALL_COUNT] = {0, 0, 1, 1, 2, 2, 2, 1, 2, 1};
    fl_device_counters c = counters(d);
    for (int i = 0; i < FL_CALL_COUNT; i++)
        CHECK_EQ_U64(c.calls[i], want[i]);
    CHECK_EQ_U64(fl_device_total_calls(&c), 12);
    CHECK_EQ_U64(c.failed_calls, 0);
    CHECK_EQ_U64(c.peak_in_use, 3 * G);
    CHECK_EQ_U64(c.bytes_obtained, 3 * G);
    CHECK_EQ_U64(c.bytes_returned, 3 * G);

    /* The freed reservation's space can be reserved again and used the same way, up to
     * its last page. */
    uint64_t va2, h3;
    CHECK_OK(fli_dev_reserve(d, 8 * G, &va2));
    CHECK_OK(fli_dev_create(d, G, &h3));
    CHECK_OK(fli_dev_map(d, va2 + 7 * G, G, h3));
    CHECK_OK(fli_dev_set_access(d, va2 + 7 * G, G));
    CHECK_OK(fli_dev_unmap(d, va2 + 7 * G, G));
    CHECK_OK(fli_dev_release(d, h3));
    CHECK_OK(fli_dev_addr_free(d, va2, 8 * G));
    CHECK_MEMORY(d, 0);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* Physical memory is freed only when the handle is released and unmapped everywhere, in
 * either order. */
static void test_memory_freed(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, h, h2, h3;
    CHECK_OK(fli_dev_reserve(d, 4 * G, &va));

    /* Released while mapped: the memory stays, usable, until the last mapping goes. */
    CHECK_OK(fli_dev_create(d, G, &h));
    CHECK_OK(fli_dev_map(d, va, G, h));
    CHECK_OK(fli_dev_release(d, h));
    CHECK_MEMORY(d, G);
    CHECK_OK(fli_dev_set_access(d, va, G));
    /* A released handle cannot be mapped again, nor released again. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + G, G, h));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fli_dev_release(d, h));
    CHECK_OK(fli_dev_unmap(d, va, G));
    CHECK_MEMORY(d, 0);

    /* One handle mapped twice: held until both mappings are gone. */
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_map(d, va, G, h2));
    CHECK_OK(fli_dev_map(d, va + 3 * G, G, h2));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_MEMORY(d, G);
    CHECK_OK(fli_dev_unmap(d, va + 3 * G, G));
    CHECK_MEMORY(d, G);
    CHECK_OK(fli_dev_unmap(d, va, G));
    CHECK_MEMORY(d, 0);

    /* Unmapped first, released last. */
    CHECK_OK(fli_dev_create(d, 2 * G, &h3));
    CHECK_OK(fli_dev_map(d, va + G, 2 * G, h3));
    CHECK_OK(fli_dev_unmap(d, va + G, 2 * G));
    CHECK_MEMORY(d, 2 * G);
    CHECK_OK(fli_dev_release(d, h3));
    CHECK_MEMORY(d, 0);

    CHECK_OK(fli_dev_addr_free(d, va, 4 * G));
    CHECK_EQ_U64(counters(d).peak_in_use, 2 * G);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* ---- the driver's rules ------------------------------------------------------------------ */

/* Granularity alignment, a mapping maps a whole handle at offset 0 inside one
 * reservation, unmap covers whole mappings only, set_access needs mapped memory, a
 * reservation is freed whole and unmapped: every broken rule is FL_ERR_INVALID and
 * changes nothing. */
static void test_rules(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, other, gone, h1, h2, h4, hx;
    CHECK_OK(fli_dev_reserve(d, 8 * G, &va));
    CHECK_OK(fli_dev_reserve(d, 8 * G, &other));
    CHECK_OK(fli_dev_reserve(d, 8 * G, &gone));
    CHECK_OK(fli_dev_addr_free(d, gone, 8 * G)); /* address space nobody holds */
    CHECK_OK(fli_dev_create(d, G, &h1));
    CHECK_OK(fli_dev_create(d, 2 * G, &h2));
    CHECK_OK(fli_dev_create(d, G, &hx));
    CHECK_OK(fli_dev_create(d, 4 * G, &h4));

    /* Sizes and addresses off the granularity, for every call that takes them. */
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_INVALID, NULL, fli_dev_reserve(d, G + 512, &other));
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_INVALID, NULL, fli_dev_reserve(d, 0, &other));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_INVALID, NULL, fli_dev_create(d, G / 2, &hx));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_INVALID, NULL, fli_dev_create(d, 0, &hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, fl_test_hex(va + 4096), fli_dev_map(d, va + 4096, G, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va, G + 4096, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va, 0, h1));
    CHECK_OK(fli_dev_map(d, va, G, h1));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va + 512, G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va, G - 512));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va, 0));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fli_dev_set_access(d, va + 512, G));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fli_dev_set_access(d, va, 512));

    /* Maps inside one reservation: not where nothing is reserved, not past the end. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, gone, G, hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 7 * G, 2 * G, h2));
    /* Not over a mapping (h1 is at va), also when only the tail overlaps. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, fl_test_hex(va), fli_dev_map(d, va, G, hx));
    CHECK_OK(fli_dev_map(d, va + 2 * G, G, hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + G, 2 * G, h2));
    /* The whole of a live handle: not another size, not an unknown handle, not 0. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 4 * G, G, h2));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 4 * G, 2 * G, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 4 * G, G, 9999));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 4 * G, G, 0));

    /* Whole mappings only: h4 (4 pages) at va+4, unmapped in part. */
    CHECK_OK(fli_dev_map(d, va + 4 * G, 4 * G, h4));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va + 4 * G, G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va + 4 * G, 3 * G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + 5 * G), fli_dev_unmap(d, va + 5 * G, 3 * G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + 6 * G), fli_dev_unmap(d, va + 6 * G, G));
    /* Unmapped memory: a hole alone, a hole after a whole mapping, past the reservation,
     * another reservation. */
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + G), fli_dev_unmap(d, va + G, G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + G), fli_dev_unmap(d, va, 2 * G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va + 4 * G, 5 * G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, other, G));
    /* set_access needs every page mapped. */
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, fl_test_hex(va + G), fli_dev_set_access(d, va + G, G));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fli_dev_set_access(d, va, 3 * G));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fli_dev_set_access(d, other, G));
    CHECK_OK(fli_dev_set_access(d, va + 4 * G, 4 * G)); /* h4, whole */
    /* addr_free of a reservation still mapped, of a part of one, of the wrong size, of
     * nothing. */
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, "still mapped", fli_dev_addr_free(d, va, 8 * G));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, other + G, 7 * G));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, other, 4 * G));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, 0, G));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, gone, 8 * G));

    /* The refusals changed nothing: every mapping is whole and unmaps as it should. */
    CHECK_OK(fli_dev_unmap(d, va + 4 * G, 4 * G));
    /* Two adjacent whole mappings in one call: hx at va+2, h4 moved to va+3..6. */
    CHECK_OK(fli_dev_map(d, va + 3 * G, 4 * G, h4));
    CHECK_OK(fli_dev_unmap(d, va + 2 * G, 5 * G));
    CHECK_OK(fli_dev_unmap(d, va, G));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va), fli_dev_unmap(d, va, G)); /* again */

    /* Release twice; handles never created. */
    CHECK_OK(fli_dev_release(d, h1));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fli_dev_release(d, h1));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fli_dev_release(d, 0));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fli_dev_release(d, 12345));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_release(d, hx));
    CHECK_OK(fli_dev_release(d, h4));
    CHECK_MEMORY(d, 0);
    CHECK_OK(fli_dev_addr_free(d, va, 8 * G));
    CHECK_OK(fli_dev_addr_free(d, other, 8 * G));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, va, 8 * G)); /* twice */
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* Ranges whose end wraps past 2^64: aligned, nonzero, and never valid. */
static void test_wrapping_ranges(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, h;
    CHECK_OK(fli_dev_reserve(d, 8 * G, &va));
    CHECK_OK(fli_dev_create(d, G, &h));
    CHECK_OK(fli_dev_map(d, va, G, h));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fli_dev_unmap(d, va + 4 * G, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fli_dev_set_access(d, va, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fli_dev_map(d, va + 3 * G, 0 - va, h));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, va, 0 - va));
    CHECK_OK(fli_dev_unmap(d, va, G)); /* the real mapping is intact */
    CHECK_OK(fli_dev_release(d, h));
    CHECK_OK(fli_dev_addr_free(d, va, 8 * G));
    CHECK_MEMORY(d, 0);
    fl_device_destroy(d);
}

/* ---- capacity ------------------------------------------------------------------------------ */

static void test_capacity(void)
{
    const uint64_t cap = 8 * MiB;
    fl_device *d = B->make(cap, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t h1, h2, h3, a;
    CHECK_OK(fli_dev_create(d, cap - 2 * G, &h1));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fli_dev_create(d, 3 * G, &h2));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fli_dev_mem_alloc(d, 2 * G + 1, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fli_dev_mem_alloc(d, UINT64_MAX / 2, &a));
    /* Sizes whose rounding would wrap past 2^64 are still too big, not malformed. */
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fli_dev_mem_alloc(d, UINT64_MAX, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fli_dev_mem_alloc(d, UINT64_MAX - G + 2, &a));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fli_dev_create(d, UINT64_MAX - G + 1, &h2));
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_create(d, G, &h3)); /* exactly full */
    CHECK_MEMORY(d, cap);
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fli_dev_mem_alloc(d, 1, &a));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fli_dev_create(d, G, &a));
    CHECK_EQ_U64(counters(d).peak_in_use, cap);
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_mem_alloc(d, G, &a)); /* released memory is there again, for either path */
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_release(d, h1));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_release(d, h3));
    CHECK_MEMORY(d, 0);
    CHECK_EQ_U64(counters(d).failed_calls, 8);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* ---- the cudaMalloc path ----------------------------------------------------------------- */

static void test_mem_alloc_path(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t a, b, va, h;

    /* Both paths share one count of memory in use; the peak is the max of the sum. */
    CHECK_OK(fli_dev_mem_alloc(d, 3 * MiB, &a));
    uint64_t with_a = in_use(d);
    CHECK_OK(fli_dev_create(d, 2 * G, &h));
    CHECK_EQ_U64(in_use(d), with_a + 2 * G);
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_EQ_U64(in_use(d), 2 * G);
    CHECK_OK(fli_dev_mem_alloc(d, 512, &b));
    CHECK_OK(fli_dev_release(d, h));
    CHECK_OK(fli_dev_mem_free(d, b));
    CHECK_MEMORY(d, 0);
    CHECK_EQ_U64(counters(d).peak_in_use, with_a + 2 * G);

    const uint64_t sizes[] = {1, 511, 512, 513, 100 * KiB + 1, G / 2, G / 2 + 1, G, G + 1, 3 * MiB, 37 * MiB + 5};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint64_t addr[N], charge[N];
    /* Each allocation takes at least its size in 512-byte steps, at most a page more,
     * and gives back exactly what it took. */
    for (int i = 0; i < N; i++) {
        fl_device_counters cb = counters(d);
        CHECK_OK(fli_dev_mem_alloc(d, sizes[i], &addr[i]));
        charge[i] = in_use(d) - cb.in_use;
        CHECK(addr[i] != 0 && addr[i] % 512 == 0);
        CHECK(charge[i] >= fli_align_up(sizes[i], 512) && charge[i] <= fli_align_up(sizes[i], G));
        CHECK_EQ_U64(counters(d).bytes_obtained - cb.bytes_obtained, charge[i]);
    }
    for (int i = 0; i < N; i++) {
        fl_device_counters cb = counters(d);
        CHECK_OK(fli_dev_mem_free(d, addr[i]));
        CHECK_EQ_U64(cb.in_use - in_use(d), charge[i]);
        CHECK_EQ_U64(counters(d).bytes_returned - cb.bytes_returned, charge[i]);
    }
    CHECK_MEMORY(d, 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), N + 2);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), N + 2);

    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_INVALID, NULL, fli_dev_mem_alloc(d, 0, &a));
    /* mem_free of an address inside a block, of one never returned, twice. */
    CHECK_OK(fli_dev_mem_alloc(d, 4 * KiB, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(a + 512), fli_dev_mem_free(d, a + 512));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(0x1234000), fli_dev_mem_free(d, 0x1234000));
    CHECK_OK(fli_dev_mem_free(d, a));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(a), fli_dev_mem_free(d, a));
    /* A reservation is not a mem_alloc allocation, nor is a block one to addr_free. */
    CHECK_OK(fli_dev_reserve(d, G, &va));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(va), fli_dev_mem_free(d, va));
    CHECK_OK(fli_dev_mem_alloc(d, G, &a));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fli_dev_addr_free(d, a, G));

    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_OK(fli_dev_addr_free(d, va, G));
    CHECK_MEMORY(d, 0);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* Without virtual memory management the VMM calls are refused as unsupported; the
 * cudaMalloc path and synchronize work. */
static void test_no_vmm(void)
{
    fl_device *d = B->make(256 * MiB, 0);
    const uint64_t G = fl_device_granularity(d);
    CHECK(d->vmm_supported == 0);
    uint64_t va, h, a;
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_UNSUPPORTED, NULL, fli_dev_reserve(d, G, &va));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_UNSUPPORTED, NULL, fli_dev_create(d, G, &h));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_UNSUPPORTED, NULL, fli_dev_map(d, 64 * G, G, 1));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_UNSUPPORTED, NULL, fli_dev_unmap(d, 64 * G, G));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_UNSUPPORTED, NULL, fli_dev_set_access(d, 64 * G, G));
    CHECK_OK(fli_dev_mem_alloc(d, 5 * MiB, &a));
    CHECK(in_use(d) >= 5 * MiB);
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_MEMORY(d, 0);
    fl_device_destroy(d);
}

/* ---- the fault injector --------------------------------------------------------------------- */

/* `expr` is a valid call of `kind`: injected to fail once, it fails with FL_ERR_DEVICE and
 * a message naming the device, the kind and the call's number; it counts as a call and a
 * failed call, costs no device time, writes no output, and changes nothing else; made
 * again it succeeds. */
#define INJECTED_ONCE(d, kind, out, expr)                                               \
    do {                                                                                \
        fl_device_counters cb_ = counters(d);                                           \
        uint64_t n_ = fl_device_total_calls(&cb_) + 1;                                  \
        char m_[128];                                                                   \
        snprintf(m_, sizeof m_, "%s %s: injected failure of device call %llu", B->name, \
                 fl_call_name(kind), (unsigned long long)n_);                           \
        CHECK_OK(fl_device_set_fault(d, n_, 0));                                        \
        (out) = 0xfeed;                                                                 \
        CHECK_STATUS(expr, FL_ERR_DEVICE);                                              \
        CHECK_MENTIONS(m_);                                                             \
        CHECK_EQ_U64(out, 0xfeed);                                                      \
        CHECK_EQ_U64(counters(d).calls[kind], cb_.calls[kind] + 1);                     \
        CHECK_EQ_U64(counters(d).failed_calls, cb_.failed_calls + 1);                   \
        CHECK(counters(d).time_us == cb_.time_us);                                      \
        CHECK_UNCHANGED(d, cb_);                                                        \
        CHECK_OK(expr);                                                                 \
    } while (0)

static void test_fault_injector(void)
{
    fl_device *d = B->make(256 * MiB, 1);
    const uint64_t G = fl_device_granularity(d);
    uint64_t va = 0, h = 0, a = 0, unused = 0;

    /* Every kind, in an order where each call is valid. */
    INJECTED_ONCE(d, FL_CALL_MEM_ALLOC, a, fli_dev_mem_alloc(d, 4 * KiB, &a));
    INJECTED_ONCE(d, FL_CALL_MEM_FREE, unused, fli_dev_mem_free(d, a));
    INJECTED_ONCE(d, FL_CALL_RESERVE, va, fli_dev_reserve(d, 4 * G, &va));
    INJECTED_ONCE(d, FL_CALL_CREATE, h, fli_dev_create(d, G, &h));
    INJECTED_ONCE(d, FL_CALL_MAP, unused, fli_dev_map(d, va, G, h));
    INJECTED_ONCE(d, FL_CALL_SET_ACCESS, unused, fli_dev_set_access(d, va, G));
    INJECTED_ONCE(d, FL_CALL_SYNC, unused, fli_dev_synchronize(d));
    INJECTED_ONCE(d, FL_CALL_UNMAP, unused, fli_dev_unmap(d, va, G));
    INJECTED_ONCE(d, FL_CALL_RELEASE, unused, fli_dev_release(d, h));
    INJECTED_ONCE(d, FL_CALL_ADDR_FREE, unused, fli_dev_addr_free(d, va, 4 * G));
    CHECK_MEMORY(d, 0);

    /* Numbers count every kind from the device's creation; the plan fires once. */
    fl_device_counters c = counters(d);
    uint64_t next = fl_device_total_calls(&c) + 1;
    CHECK_OK(fl_device_set_fault(d, next + 1, 0));
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_STATUS(fli_dev_create(d, G, &h), FL_ERR_DEVICE);
    CHECK_OK(fli_dev_create(d, G, &h));
    CHECK_OK(fli_dev_release(d, h));

    /* Every call from N on fails, whatever its kind, until the plan is cleared. */
    c = counters(d);
    next = fl_device_total_calls(&c) + 1;
    CHECK_OK(fl_device_set_fault(d, 0, next + 1));
    CHECK_OK(fli_dev_reserve(d, G, &va));
    CHECK_STATUS(fli_dev_create(d, G, &h), FL_ERR_DEVICE);
    char from[64];
    snprintf(from, sizeof from, "every call fails from %llu on", (unsigned long long)(next + 1));
    CHECK_MENTIONS(from);
    CHECK_STATUS(fli_dev_synchronize(d), FL_ERR_DEVICE);
    CHECK_STATUS(fli_dev_mem_alloc(d, 512, &a), FL_ERR_DEVICE);
    CHECK_STATUS(fli_dev_addr_free(d, va, G), FL_ERR_DEVICE);
    CHECK_EQ_U64(counters(d).failed_calls, c.failed_calls + 4);
    CHECK_OK(fl_device_set_fault(d, 0, 0));
    CHECK_OK(fli_dev_addr_free(d, va, G));

    /* A plan that could never fire is refused, and so is no device. */
    c = counters(d);
    CHECK_STATUS(fl_device_set_fault(d, fl_device_total_calls(&c), 0), FL_ERR_INVALID);
    CHECK_MENTIONS("was made already");
    CHECK_STATUS(fl_device_set_fault(d, 1, 0), FL_ERR_INVALID);
    CHECK_STATUS(fl_device_set_fault(NULL, 0, 0), FL_ERR_INVALID);
    CHECK_OK(fli_dev_synchronize(d)); /* nothing armed */
    CHECK_MEMORY(d, 0);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* ---- addresses never overlap ----------------------------------------------------------------- */

typedef struct span { uint64_t addr, size; int reserved; } span;

/* Index of the first span starting at or after addr. */
static size_t lower(const span *v, size_t n, uint64_t addr)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v[mid].addr < addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Reservations and mem_alloc blocks, made and freed at random: no address is handed out
 * twice while it is held. */
static void test_no_overlap(void)
{
    fl_device *d = B->make(UINT64_C(4) << 30, 1);
    const uint64_t G = fl_device_granularity(d);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        fl_rng rng = {0x9e3779b97f4a7c15ull * seed};
        enum { MAXN = 128 };
        span v[MAXN];
        size_t n = 0;
        for (int step = 0; step < 4000; step++) {
            if (n < MAXN && (n == 0 || fl_rng_below(&rng, 100) < 55)) {
                span s = {0, 0, (int)fl_rng_below(&rng, 2)};
                uint64_t r = fl_rng_below(&rng, 4);
                fl_status st;
                if (s.reserved) {
                    s.size = (1 + fl_rng_below(&rng, r == 0 ? 64 : 4)) * G;
                    st = fli_dev_reserve(d, s.size, &s.addr);
                    CHECK(s.addr % G == 0);
                } else {
                    uint64_t size = r == 0 ? 1 + fl_rng_below(&rng, 4 * KiB)
                                  : r == 1 ? 1 + fl_rng_below(&rng, G)
                                  : r == 2 ? 1 + fl_rng_below(&rng, 16 * MiB)
                                           : G / 2 + fl_rng_below(&rng, 2);
                    st = fli_dev_mem_alloc(d, size, &s.addr);
                    s.size = size;
                }
                CHECK_OK(st);
                if (st != FL_OK)
                    break;
                size_t i = lower(v, n, s.addr);
                int bad = (i < n && s.addr + s.size > v[i].addr) || (i > 0 && v[i - 1].addr + v[i - 1].size > s.addr);
                fl_test_checks++;
                if (bad) {
                    fl_test_failures++;
                    fprintf(stderr, "%s:%d: seed %llu step %d: [%s, +%llu) overlaps a live neighbour\n", __FILE__,
                            __LINE__, (unsigned long long)seed, step, fl_test_hex(s.addr), (unsigned long long)s.size);
                    break;
                }
                memmove(&v[i + 1], &v[i], (n - i) * sizeof *v);
                v[i] = s;
                n++;
            } else {
                size_t i = (size_t)fl_rng_below(&rng, n);
                if (v[i].reserved)
                    CHECK_OK(fli_dev_addr_free(d, v[i].addr, v[i].size));
                else
                    CHECK_OK(fli_dev_mem_free(d, v[i].addr));
                memmove(&v[i], &v[i + 1], (n - i - 1) * sizeof *v);
                n--;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (v[i].reserved)
                CHECK_OK(fli_dev_addr_free(d, v[i].addr, v[i].size));
            else
                CHECK_OK(fli_dev_mem_free(d, v[i].addr));
        }
    }
    CHECK_MEMORY(d, 0);
    CHECK_EQ_U64(counters(d).failed_calls, 0);
    CHECK_BALANCE(d);
    fl_device_destroy(d);
}

/* ---- the VMM rules against a reference model ------------------------------------------------ */

/* One reservation of NG pages, a few handles of 1-4 pages, random calls (some deliberately
 * wrong, stale handles among them: neither the sim nor the double reuses a handle id); the
 * model predicts each status and the memory in use. */
enum { NG = 48, NH = 24 };

typedef struct model_handle {
    uint64_t id, size;  /* id 0: not created yet */
    int live;
    int mappings;
    int reclaimed;      /* memory returned (released and unmapped everywhere) */
} model_handle;

typedef struct model {
    uint64_t va;
    int owner[NG];      /* index into h[] + 1 of the handle mapped there, 0 if none */
    int start[NG];      /* first page of its mapping */
    model_handle h[NH];
} model;

static uint64_t model_in_use(const model *m)
{
    uint64_t sum = 0;
    for (int i = 0; i < NH; i++)
        if (m->h[i].id && !m->h[i].reclaimed)
            sum += m->h[i].size;
    return sum;
}

static void model_reclaim(model *m, int hi)
{
    if (!m->h[hi].live && m->h[hi].mappings == 0)
        m->h[hi].reclaimed = 1;
}

/* Pages in the mapping that starts at g. */
static int mapping_len(const model *m, int g)
{
    int n = 1;
    while (g + n < NG && m->owner[g + n] && !m->start[g + n])
        n++;
    return n;
}

static void vmm_model_run(fl_device *d, uint64_t seed)
{
    const uint64_t G = fl_device_granularity(d);
    fl_rng rng = {seed};
    model m;
    memset(&m, 0, sizeof m);
    CHECK_OK(fli_dev_reserve(d, NG * G, &m.va));
    const int steps = 10000;
    int ok_maps = 0, ok_unmaps = 0;
    for (int step = 0; step < steps; step++) {
        uint64_t op = fl_rng_below(&rng, 6);
        int hi = (int)fl_rng_below(&rng, NH);
        model_handle *h = &m.h[hi];
        /* Page range [g, g + n), sometimes reaching past the reservation. */
        int g = (int)fl_rng_below(&rng, NG + 2) - 1;
        int n = 1 + (int)fl_rng_below(&rng, 4);
        fl_status want = FL_OK, got;
        const char *what;
        if (op == 0) {
            what = "create";
            if (h->id && !h->reclaimed)
                continue; /* keep a slot until its memory is gone: the model needs it */
            uint64_t id;
            got = fli_dev_create(d, (uint64_t)n * G, &id);
            if (got == FL_OK)
                *h = (model_handle){id, (uint64_t)n * G, 1, 0, 0};
        } else if (op == 1) {
            what = "release";
            if (!h->id)
                continue;
            want = h->live ? FL_OK : FL_ERR_INVALID;
            got = fli_dev_release(d, h->id);
            if (want == FL_OK) {
                h->live = 0;
                model_reclaim(&m, hi);
            }
        } else if (op == 2 || op == 3) {
            what = "map";
            if (!h->id)
                continue;
            /* Mostly the handle's own size, sometimes another. */
            int gn = fl_rng_below(&rng, 8) ? (int)(h->size / G) : n;
            int inside = g >= 0 && g + gn <= NG;
            int free_pages = inside;
            for (int k = g; inside && k < g + gn; k++)
                free_pages &= m.owner[k] == 0;
            want = (h->live && h->size == (uint64_t)gn * G && inside && free_pages) ? FL_OK : FL_ERR_INVALID;
            got = fli_dev_map(d, m.va + (uint64_t)(int64_t)g * G, (uint64_t)gn * G, h->id);
            if (want == FL_OK) {
                for (int k = g; k < g + gn; k++) {
                    m.owner[k] = hi + 1;
                    m.start[k] = k == g;
                }
                h->mappings++;
                ok_maps++;
            }
        } else if (op == 4) {
            what = "unmap";
            /* Mostly a real mapping (sometimes with its neighbour): refusals alone would
             * leave the reservation full and every later map refused. */
            if (fl_rng_below(&rng, 4)) {
                int starts[NG], ns = 0;
                for (int k = 0; k < NG; k++)
                    if (m.owner[k] && m.start[k])
                        starts[ns++] = k;
                if (ns) {
                    g = starts[fl_rng_below(&rng, (uint64_t)ns)];
                    n = mapping_len(&m, g);
                    if (fl_rng_below(&rng, 3) == 0 && g + n < NG && m.owner[g + n])
                        n += mapping_len(&m, g + n); /* and the adjacent one after it */
                    n += (int)fl_rng_below(&rng, 8) == 0; /* now and then one page too many */
                }
            }
            /* Whole mappings only: starts one, every page mapped, ends where one ends. */
            int ok = g >= 0 && g + n <= NG && m.owner[g] && m.start[g];
            for (int k = g; ok && k < g + n; k++)
                ok = m.owner[k] != 0;
            if (ok && g + n < NG && m.owner[g + n] && !m.start[g + n])
                ok = 0;
            want = ok ? FL_OK : FL_ERR_INVALID;
            got = fli_dev_unmap(d, m.va + (uint64_t)(int64_t)g * G, (uint64_t)n * G);
            if (ok) {
                ok_unmaps++;
                for (int k = g; k < g + n; k++) {
                    if (m.start[k]) {
                        int o = m.owner[k] - 1;
                        m.h[o].mappings--;
                        model_reclaim(&m, o);
                    }
                    m.owner[k] = 0;
                    m.start[k] = 0;
                }
            }
        } else {
            what = "set_access";
            int ok = g >= 0 && g + n <= NG;
            for (int k = g; ok && k < g + n; k++)
                ok = m.owner[k] != 0;
            want = ok ? FL_OK : FL_ERR_INVALID;
            got = fli_dev_set_access(d, m.va + (uint64_t)(int64_t)g * G, (uint64_t)n * G);
        }
        uint64_t model_bytes = model_in_use(&m);
        fl_test_checks += 2;
        if (got != want || in_use(d) != model_bytes || B->physical(d) != model_bytes) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: seed %#llx step %d: %s at page %d (n %d): got %s want %s (%s); "
                    "in use %llu (owner's count %llu), model %llu\n", __FILE__, __LINE__,
                    (unsigned long long)seed, step, what, g, n, fl_status_str(got), fl_status_str(want),
                    fl_last_error(), (unsigned long long)in_use(d), (unsigned long long)B->physical(d),
                    (unsigned long long)model_bytes);
            break;
        }
    }
    /* The random calls must have exercised the successful paths, not only refusals. */
    CHECK(ok_maps > steps / 50 && ok_unmaps > steps / 50);
    /* Tear down through the rules too: every mapping whole, then the handles. */
    for (int k = 0; k < NG; k++)
        if (m.owner[k] && m.start[k])
            CHECK_OK(fli_dev_unmap(d, m.va + (uint64_t)k * G, (uint64_t)mapping_len(&m, k) * G));
    for (int i = 0; i < NH; i++)
        if (m.h[i].id && m.h[i].live)
            CHECK_OK(fli_dev_release(d, m.h[i].id));
    CHECK_MEMORY(d, 0);
    CHECK_OK(fli_dev_addr_free(d, m.va, NG * G));
}

static void test_vmm_model(void)
{
    for (uint64_t seed = 1; seed <= 3; seed++) {
        fl_device *d = B->make(UINT64_C(1) << 30, 1);
        vmm_model_run(d, 0x243f6a8885a308d3ull * seed);
        CHECK_BALANCE(d);
        fl_device_destroy(d);
    }
}

/* ---- driver ------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"creation", test_creation},
    {"vmm path", test_vmm_path},
    {"memory freed", test_memory_freed},
    {"rules", test_rules},
    {"wrapping ranges", test_wrapping_ranges},
    {"capacity", test_capacity},
    {"mem_alloc path", test_mem_alloc_path},
    {"no vmm", test_no_vmm},
    {"fault injector", test_fault_injector},
    {"no overlap", test_no_overlap},
    {"vmm model", test_vmm_model},
};

/* The checks a case made, handed back from its process. */
static int *child_checks;

static void run_case(const backend *b, const char *what, void (*fn)(void))
{
    fflush(NULL);
    *child_checks = 0;
    pid_t pid = fork();
    if (pid == 0) {
        B = b;
        fl_test_failures = 0;
        fl_test_checks = 0;
        fn();
        *child_checks = fl_test_checks;
        if (fl_test_failures)
            fprintf(stderr, "%s %s: %d of %d checks failed\n", b->name, what, fl_test_failures, fl_test_checks);
        else
            printf("%-4s %-16s ok, %d checks\n", b->name, what, fl_test_checks);
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    fl_test_checks++;
    if (pid > 0 && waitpid(pid, &status, 0) == pid)
        fl_test_checks += *child_checks;
    else
        pid = -1;
    if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fl_test_failures++;
        if (pid > 0 && WIFSIGNALED(status))
            fprintf(stderr, "%s %s: crashed with signal %d (%s)\n", b->name, what, WTERMSIG(status),
                    strsignal(WTERMSIG(status)));
        else
            fprintf(stderr, "%s %s: failed (above)\n", b->name, what);
    }
}

int main(int argc, char **argv)
{
    /* argv[1]: one device ("sim" or "cuda") to run alone. */
    const char *only = argc > 1 ? argv[1] : NULL;
    child_checks = mmap(NULL, sizeof *child_checks, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (child_checks == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    const backend *backends[2] = {&sim_backend, NULL};
    if (!fake_path[0]) {
        printf("cuda: FAKECUDA_PATH is not defined (the driver double was not built); skipped\n");
    } else {
        void *lib = dlopen(fake_path, RTLD_NOW | RTLD_LOCAL);
        if (lib) {
            dlclose(lib); /* each case loads its own, in its own process */
            backends[1] = &cuda_backend;
        } else {
            printf("cuda: the driver double cannot be loaded (%s); skipped\n", dlerror());
        }
    }
    for (int k = 0; k < 2; k++)
        if (backends[k] && (!only || strcmp(only, backends[k]->name) == 0))
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                run_case(backends[k], cases[i].name, cases[i].fn);
    return fl_test_done("test_device_contract");
}
