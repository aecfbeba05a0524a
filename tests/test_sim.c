/* The simulated device on its own, through the fl_dev_* wrappers every policy uses:
 * parameters, the cost model and counters, in_use accounting, the driver's rules for the
 * virtual memory calls (checked against a small reference model), capacity and charges. */
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/device.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define KiB (UINT64_C(1) << 10)
#define GRAN (2 * MiB)

/* ---- helpers ------------------------------------------------------------------- */

/* Costs that are distinct powers of two: every sum of them is exact in a double, so
 * time_us can be compared with == and a call charged to the wrong kind shows. */
static void pow2_costs(fl_sim_params *p)
{
    for (int i = 0; i < FL_CALL_COUNT; i++)
        p->cost_us[i] = (double)(1u << i);
}

static fl_device *make_dev(uint64_t capacity, int vmm)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    pow2_costs(&p);
    if (capacity)
        p.capacity = capacity;
    p.vmm_supported = vmm;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    if (!d) {
        fprintf(stderr, "cannot create a sim device: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}


/* The cost model's promise, true after any call: time is the sum over every call made,
 * failed ones included (a refused driver call still costs the round trip). */
static void check_time(const fl_device *d, int line)
{
    fl_device_counters c = counters(d);
    double want = 0;
    for (int i = 0; i < FL_CALL_COUNT; i++)
        want += (double)c.calls[i] * (double)(1u << i);
    fl_test_checks++;
    if (c.time_us != want) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: time_us %.2f, calls say %.2f\n", __FILE__, line, c.time_us, want);
    }
}
#define CHECK_TIME(d) check_time(d, __LINE__)

/* A refused call: the status, a message (naming `mention` when given), one more failed
 * call, one more call of its kind, and no change to the memory in use. The error is
 * cleared first so a stale message cannot pass for this call's. */
#define EXPECT_REFUSED(d, kind, want, mention, expr)                                    \
    do {                                                                                \
        const char *m_ = (mention);                                                     \
        fl_device_counters cb_ = counters(d);                                           \
        fl_clear_error();                                                               \
        CHECK_STATUS(expr, want);                                                       \
        fl_device_counters ca_ = counters(d);                                           \
        CHECK(fl_last_error()[0] != 0);                                                 \
        if (m_)                                                                         \
            fl_test_check_mentions(m_, __FILE__, __LINE__);                                               \
        CHECK_EQ_U64(ca_.failed_calls, cb_.failed_calls + 1);                           \
        CHECK_EQ_U64(ca_.calls[kind], cb_.calls[kind] + 1);                             \
        CHECK_EQ_U64(ca_.in_use, cb_.in_use);                                           \
        CHECK_EQ_U64(ca_.peak_in_use, cb_.peak_in_use);                                 \
        check_time(d, __LINE__);                                                        \
    } while (0)


/* ---- parameters ---------------------------------------------------------------- */

static void test_defaults(void)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    CHECK_EQ_U64(p.capacity, UINT64_C(1) << 50);
    CHECK_EQ_U64(p.granularity, 2 * MiB);
    CHECK(p.vmm_supported == 1);
    /* The values the cost model documents (sim.c), so a silent change shows here. */
    CHECK(p.cost_us[FL_CALL_CREATE] == 193.0);
    CHECK(p.cost_us[FL_CALL_MAP] == 1.45);
    CHECK(p.cost_us[FL_CALL_SET_ACCESS] == 36.0);
    CHECK(p.cost_us[FL_CALL_UNMAP] == 25.6);
    CHECK(p.cost_us[FL_CALL_RESERVE] == 19.0);
    CHECK(p.cost_us[FL_CALL_MEM_ALLOC] == 100.0);
    CHECK(p.cost_us[FL_CALL_MEM_FREE] == 100.0);
    CHECK(p.cost_us[FL_CALL_RELEASE] == 10.0);
    CHECK(p.cost_us[FL_CALL_ADDR_FREE] == 5.0);
    CHECK(p.cost_us[FL_CALL_SYNC] == 10.0);
    for (int i = 0; i < FL_CALL_COUNT; i++)
        CHECK(p.cost_us[i] > 0);

    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    CHECK_EQ_U64(fl_device_capacity(d), UINT64_C(1) << 50);
    CHECK_EQ_U64(fl_device_granularity(d), 2 * MiB);
    fl_device_counters c = counters(d);
    fl_device_counters zero;
    memset(&zero, 0, sizeof zero);
    CHECK(memcmp(&c, &zero, sizeof c) == 0);

    /* The default costs are what gets charged: a reserve, a create and a map. */
    uint64_t va, h;
    CHECK_OK(fl_dev_reserve(d, GRAN, &va));
    CHECK_OK(fl_dev_create(d, GRAN, &h));
    CHECK_OK(fl_dev_map(d, va, GRAN, h));
    CHECK(fabs(counters(d).time_us - (19.0 + 193.0 + 1.45)) < 1e-9);
    CHECK_OK(fl_dev_unmap(d, va, GRAN));
    CHECK_OK(fl_dev_release(d, h));
    CHECK_OK(fl_dev_addr_free(d, va, GRAN));
    fl_device_destroy(d);

    const char *names[FL_CALL_COUNT] = {"mem_alloc", "mem_free", "reserve", "addr_free", "create",
                                        "release", "map", "unmap", "set_access", "sync"};
    for (int i = 0; i < FL_CALL_COUNT; i++)
        CHECK(strcmp(fl_call_name((fl_call)i), names[i]) == 0);
    CHECK(strcmp(fl_call_name(FL_CALL_COUNT), "?") == 0);
    fl_device_destroy(NULL); /* like free(NULL) */
}

static void test_bad_params(void)
{
    const uint64_t cap = UINT64_C(1) << 50;
    struct {
        const char *what;
        uint64_t granularity, capacity;
        int cost_index; /* -1: default costs */
        double cost;
    } cases[] = {
        {"granularity 3 MiB", 3 * MiB, cap, -1, 0},
        {"granularity 0", 0, cap, -1, 0},
        {"granularity 1", 1, cap, -1, 0},
        {"granularity 2 MiB + 4 KiB", 2 * MiB + 4 * KiB, cap, -1, 0},
        {"capacity 0", GRAN, 0, -1, 0},
        {"negative create cost", GRAN, cap, FL_CALL_CREATE, -1.0},
        {"negative sync cost", GRAN, cap, FL_CALL_SYNC, -0.001},
        {"NaN map cost", GRAN, cap, FL_CALL_MAP, NAN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fl_sim_params p;
        fl_sim_params_default(&p);
        p.granularity = cases[i].granularity;
        p.capacity = cases[i].capacity;
        if (cases[i].cost_index >= 0)
            p.cost_us[cases[i].cost_index] = cases[i].cost;
        fl_device *d = (fl_device *)&p; /* any non-NULL value: a failure must clear it */
        fl_clear_error();
        fl_status s = fl_sim_device_create(&p, &d);
        fl_test_checks++;
        if (s != FL_ERR_INVALID || d != NULL || fl_last_error()[0] == 0) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: %s: status %s, device %p, message \"%s\"\n", __FILE__,
                    __LINE__, cases[i].what, fl_status_str(s), (void *)d, fl_last_error());
            if (s == FL_OK)
                fl_device_destroy(d);
        }
    }
    /* The edges that are allowed: the smallest granularity, a zero cost. */
    fl_sim_params p;
    fl_sim_params_default(&p);
    p.granularity = 4096;
    p.cost_us[FL_CALL_SYNC] = 0;
    p.capacity = 1;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    fl_device_destroy(d);
}

/* ---- happy path, counters, cost arithmetic -------------------------------------- */

static void test_vmm_happy_path(void)
{
    fl_device *d = make_dev(0, 1);
    uint64_t va = 0, h1 = 0, h2 = 0;

    CHECK_OK(fl_dev_reserve(d, 8 * GRAN, &va));
    CHECK(va != 0 && va % GRAN == 0);
    CHECK_EQ_U64(calls(d, FL_CALL_RESERVE), 1);
    CHECK_EQ_U64(in_use(d), 0); /* address space is not memory */
    CHECK_TIME(d);

    CHECK_OK(fl_dev_create(d, GRAN, &h1));
    CHECK_OK(fl_dev_create(d, 2 * GRAN, &h2));
    CHECK(h1 != 0 && h2 != 0 && h1 != h2);
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 2);
    CHECK_EQ_U64(in_use(d), 3 * GRAN);
    CHECK_EQ_U64(counters(d).peak_in_use, 3 * GRAN);
    CHECK_TIME(d);

    CHECK_OK(fl_dev_map(d, va, GRAN, h1));
    CHECK_OK(fl_dev_map(d, va + GRAN, 2 * GRAN, h2));
    CHECK_EQ_U64(calls(d, FL_CALL_MAP), 2);
    CHECK_EQ_U64(in_use(d), 3 * GRAN); /* mapping takes no more memory */
    CHECK_OK(fl_dev_set_access(d, va, 3 * GRAN)); /* across both mappings */
    CHECK_OK(fl_dev_set_access(d, va + GRAN, GRAN)); /* part of one mapping */
    CHECK_EQ_U64(calls(d, FL_CALL_SET_ACCESS), 2);
    CHECK_OK(fl_dev_synchronize(d));
    CHECK_EQ_U64(calls(d, FL_CALL_SYNC), 1);
    CHECK_TIME(d);

    /* Two adjacent whole mappings go in one unmap. */
    CHECK_OK(fl_dev_unmap(d, va, 3 * GRAN));
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), 1);
    CHECK_EQ_U64(in_use(d), 3 * GRAN); /* handles still live */
    CHECK_OK(fl_dev_release(d, h1));
    CHECK_EQ_U64(in_use(d), 2 * GRAN);
    CHECK_OK(fl_dev_release(d, h2));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(counters(d).peak_in_use, 3 * GRAN);
    CHECK_EQ_U64(calls(d, FL_CALL_RELEASE), 2);
    CHECK_OK(fl_dev_addr_free(d, va, 8 * GRAN));
    CHECK_EQ_U64(calls(d, FL_CALL_ADDR_FREE), 1);
    CHECK_EQ_U64(counters(d).failed_calls, 0);
    CHECK_TIME(d);
    /* 1 reserve (4) + 2 create (16) + 2 map (64) + 2 set_access (256) + 1 sync (512)
     * + 1 unmap (128) + 2 release (32) + 1 addr_free (8), by hand. */
    CHECK(counters(d).time_us == 4 + 2 * 16 + 2 * 64 + 2 * 256 + 512 + 128 + 2 * 32 + 8);

    /* The freed reservation's space can be reserved again and used the same way. */
    uint64_t va2, h3;
    CHECK_OK(fl_dev_reserve(d, 8 * GRAN, &va2));
    CHECK_OK(fl_dev_create(d, GRAN, &h3));
    CHECK(h3 != h1 && h3 != h2); /* ids are never reused: a stale one is always caught */
    CHECK_OK(fl_dev_map(d, va2 + 7 * GRAN, GRAN, h3)); /* the last page of the reservation */
    CHECK_OK(fl_dev_unmap(d, va2 + 7 * GRAN, GRAN));
    CHECK_OK(fl_dev_release(d, h3));
    CHECK_OK(fl_dev_addr_free(d, va2, 8 * GRAN));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_TIME(d);
    fl_device_destroy(d);
}

static void test_in_use_accounting(void)
{
    fl_device *d = make_dev(0, 1);
    uint64_t va, h, h2;
    CHECK_OK(fl_dev_reserve(d, 4 * GRAN, &va));
    CHECK_OK(fl_dev_create(d, GRAN, &h));
    CHECK_OK(fl_dev_map(d, va, GRAN, h));
    /* Released while mapped: the memory stays until the last mapping goes, as in CUDA. */
    CHECK_OK(fl_dev_release(d, h));
    CHECK_EQ_U64(in_use(d), GRAN);
    CHECK_OK(fl_dev_set_access(d, va, GRAN)); /* the mapping still works */
    /* A released handle cannot be mapped again, nor released again. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + GRAN, GRAN, h));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fl_dev_release(d, h));
    CHECK_OK(fl_dev_unmap(d, va, GRAN));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(counters(d).peak_in_use, GRAN);

    /* One handle mapped twice: memory is held until both mappings are gone. */
    CHECK_OK(fl_dev_create(d, GRAN, &h2));
    CHECK_OK(fl_dev_map(d, va, GRAN, h2));
    CHECK_OK(fl_dev_map(d, va + 3 * GRAN, GRAN, h2));
    CHECK_OK(fl_dev_release(d, h2));
    CHECK_EQ_U64(in_use(d), GRAN);
    CHECK_OK(fl_dev_unmap(d, va + 3 * GRAN, GRAN));
    CHECK_EQ_U64(in_use(d), GRAN);
    CHECK_OK(fl_dev_unmap(d, va, GRAN));
    CHECK_EQ_U64(in_use(d), 0);

    /* mem_alloc and create share one count; the peak is the max of the sum. */
    uint64_t a, b, h3;
    CHECK_OK(fl_dev_mem_alloc(d, 3 * MiB, &a));
    CHECK_OK(fl_dev_create(d, 2 * GRAN, &h3));
    CHECK_EQ_U64(in_use(d), 4 * MiB + 2 * GRAN);
    CHECK_OK(fl_dev_mem_free(d, a));
    CHECK_OK(fl_dev_mem_alloc(d, 100, &b));
    CHECK_EQ_U64(in_use(d), 2 * GRAN + 512);
    CHECK_EQ_U64(counters(d).peak_in_use, 4 * MiB + 2 * GRAN);
    CHECK_OK(fl_dev_release(d, h3));
    CHECK_OK(fl_dev_mem_free(d, b));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(counters(d).peak_in_use, 4 * MiB + 2 * GRAN);
    CHECK_OK(fl_dev_addr_free(d, va, 4 * GRAN));
    CHECK_TIME(d);
    fl_device_destroy(d);
}

/* ---- the driver's rules ---------------------------------------------------------- */

static void test_rules(void)
{
    fl_device *d = make_dev(0, 1);
    uint64_t va, other, h1, h2, h4, hx;
    CHECK_OK(fl_dev_reserve(d, 8 * GRAN, &va));
    CHECK_OK(fl_dev_reserve(d, 8 * GRAN, &other));
    CHECK_OK(fl_dev_create(d, GRAN, &h1));
    CHECK_OK(fl_dev_create(d, 2 * GRAN, &h2));
    CHECK_OK(fl_dev_create(d, GRAN, &hx));
    CHECK_OK(fl_dev_create(d, 4 * GRAN, &h4));

    /* Unaligned addresses and sizes, for every call that takes them. */
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_INVALID, NULL, fl_dev_reserve(d, GRAN + 512, &other));
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_INVALID, NULL, fl_dev_reserve(d, 0, &other));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_INVALID, NULL, fl_dev_create(d, GRAN / 2, &hx));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_INVALID, NULL, fl_dev_create(d, 0, &hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, fl_test_hex(va + 4096), fl_dev_map(d, va + 4096, GRAN, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va, GRAN + 4096, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va, 0, h1));
    CHECK_OK(fl_dev_map(d, va, GRAN, h1));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va + 512, GRAN));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va, GRAN - 512));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va, 0));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fl_dev_set_access(d, va + 512, GRAN));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fl_dev_set_access(d, va, 512));

    /* Map outside a reservation: wholly, and partly past its end. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va - GRAN, GRAN, hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 7 * GRAN, 2 * GRAN, h2));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, UINT64_C(1) << 62, GRAN, hx));
    /* Map over a mapped page (h1 is at va), also when only the tail overlaps. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, fl_test_hex(va), fl_dev_map(d, va, GRAN, hx));
    CHECK_OK(fl_dev_map(d, va + 2 * GRAN, GRAN, hx));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, fl_test_hex(va + 2 * GRAN), fl_dev_map(d, va + GRAN, 2 * GRAN, h2));
    /* Map with a handle of another size, an unknown handle, handle 0. */
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 4 * GRAN, GRAN, h2));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 4 * GRAN, 2 * GRAN, h1));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 4 * GRAN, GRAN, 9999));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 4 * GRAN, GRAN, 0));

    /* h4 (4 granules) at va+4: partial unmaps of it are refused. */
    CHECK_OK(fl_dev_map(d, va + 4 * GRAN, 4 * GRAN, h4));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va + 4 * GRAN, GRAN));      /* part */
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va + 4 * GRAN, 3 * GRAN));  /* part */
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + 5 * GRAN), fl_dev_unmap(d, va + 5 * GRAN, 3 * GRAN)); /* starts inside */
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + 6 * GRAN), fl_dev_unmap(d, va + 6 * GRAN, GRAN));
    /* Unmapped memory: a hole alone, a hole after a whole mapping, past the reservation. */
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + GRAN), fl_dev_unmap(d, va + GRAN, GRAN));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va + GRAN), fl_dev_unmap(d, va, 2 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va + 4 * GRAN, 5 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, other, GRAN));
    /* set_access needs every page mapped. */
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, fl_test_hex(va + GRAN), fl_dev_set_access(d, va + GRAN, GRAN));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, fl_test_hex(va + GRAN), fl_dev_set_access(d, va, 3 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fl_dev_set_access(d, other, GRAN));
    CHECK_OK(fl_dev_set_access(d, va + 4 * GRAN, 4 * GRAN)); /* h4, whole */
    /* addr_free of a reservation still mapped, of a part of one, of the wrong size. */
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, va, 8 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, other + GRAN, 7 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, other, 4 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, 0, GRAN));

    /* The refusals changed nothing: every mapping is whole and unmaps as it should. */
    CHECK_OK(fl_dev_unmap(d, va + 4 * GRAN, 4 * GRAN));
    /* Two adjacent whole mappings in one call: hx at va+2, h4 moved to va+3..6. */
    CHECK_OK(fl_dev_map(d, va + 3 * GRAN, 4 * GRAN, h4));
    CHECK_OK(fl_dev_unmap(d, va + 2 * GRAN, 5 * GRAN));
    CHECK_OK(fl_dev_unmap(d, va, GRAN));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, fl_test_hex(va), fl_dev_unmap(d, va, GRAN)); /* again */

    /* Release twice; a handle never created. */
    CHECK_OK(fl_dev_release(d, h1));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fl_dev_release(d, h1));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fl_dev_release(d, 0));
    EXPECT_REFUSED(d, FL_CALL_RELEASE, FL_ERR_INVALID, NULL, fl_dev_release(d, 12345));
    CHECK_OK(fl_dev_release(d, h2));
    CHECK_OK(fl_dev_release(d, hx));
    CHECK_OK(fl_dev_release(d, h4));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_OK(fl_dev_addr_free(d, va, 8 * GRAN));
    CHECK_OK(fl_dev_addr_free(d, other, 8 * GRAN));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, va, 8 * GRAN)); /* twice */
    CHECK_TIME(d);
    fl_device_destroy(d);
}

/* Ranges whose end wraps past 2^64: aligned, nonzero, and never valid. Run in a child
 * process (isolated) because a device that misreads them may corrupt its own memory. */
static void test_wrapping_ranges(void)
{
    fl_device *d = make_dev(0, 1);
    uint64_t va, h;
    CHECK_OK(fl_dev_reserve(d, 8 * GRAN, &va));
    CHECK_OK(fl_dev_create(d, GRAN, &h));
    CHECK_OK(fl_dev_map(d, va, GRAN, h));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_UNMAP, FL_ERR_INVALID, NULL, fl_dev_unmap(d, va + 4 * GRAN, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_SET_ACCESS, FL_ERR_INVALID, NULL, fl_dev_set_access(d, va, 0 - va));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_INVALID, NULL, fl_dev_map(d, va + 3 * GRAN, 0 - va, h));
    EXPECT_REFUSED(d, FL_CALL_ADDR_FREE, FL_ERR_INVALID, NULL, fl_dev_addr_free(d, va, 0 - va));
    CHECK_OK(fl_dev_unmap(d, va, GRAN)); /* the real mapping is intact */
    CHECK_OK(fl_dev_release(d, h));
    CHECK_OK(fl_dev_addr_free(d, va, 8 * GRAN));
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* Runs fn in a child process so a crash is reported and the other tests still run;
 * without fork it runs in place. */
static void isolated(const char *what, void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fn();
        return;
    }
    if (pid == 0) {
        fl_test_failures = 0;
        fn();
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    fl_test_checks++;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fl_test_failures++;
        if (WIFSIGNALED(status))
            fprintf(stderr, "%s:%d: %s: crashed with signal %d (%s)\n", __FILE__, __LINE__, what,
                    WTERMSIG(status), strsignal(WTERMSIG(status)));
        else
            fprintf(stderr, "%s:%d: %s: failed (above)\n", __FILE__, __LINE__, what);
    }
}

static void test_capacity(void)
{
    fl_device *d = make_dev(8 * MiB, 1);
    uint64_t h1, h2, a, b;
    CHECK_OK(fl_dev_create(d, 2 * GRAN, &h1)); /* 4 of 8 MiB */
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fl_dev_create(d, 3 * GRAN, &h2));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fl_dev_mem_alloc(d, 4 * MiB + 1, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fl_dev_mem_alloc(d, UINT64_MAX / 2, &a));
    /* Sizes whose rounding to a granule would wrap past 2^64 are still too big. */
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fl_dev_mem_alloc(d, UINT64_MAX, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fl_dev_mem_alloc(d, UINT64_MAX - GRAN + 2, &a));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fl_dev_create(d, UINT64_MAX - GRAN + 1, &h2));
    CHECK_OK(fl_dev_mem_alloc(d, 3 * MiB, &a)); /* charged 4 MiB: exactly full */
    CHECK_EQ_U64(in_use(d), 8 * MiB);
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, NULL, fl_dev_mem_alloc(d, 1, &b));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, NULL, fl_dev_create(d, GRAN, &h2));
    CHECK_EQ_U64(counters(d).peak_in_use, 8 * MiB);
    CHECK_OK(fl_dev_mem_free(d, a));
    CHECK_OK(fl_dev_create(d, 2 * GRAN, &h2)); /* the freed memory is there again */
    CHECK_OK(fl_dev_release(d, h1));
    CHECK_OK(fl_dev_release(d, h2));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(counters(d).failed_calls, 8);
    CHECK_TIME(d);
    fl_device_destroy(d);
}

static void test_mem_alloc_charge(void)
{
    fl_device *d = make_dev(0, 1);
    struct { uint64_t size, charge; } cases[] = {
        {1, 512},
        {511, 512},
        {512, 512},
        {513, 1024},
        {100 * KiB + 1, 100 * KiB + 512},
        {GRAN / 2, GRAN / 2},               /* the last size packed in 512 B steps */
        {GRAN / 2 + 1, GRAN},               /* the first given whole granules */
        {GRAN, GRAN},
        {GRAN + 1, 2 * GRAN},
        {3 * MiB, 2 * GRAN},
        {37 * MiB + 5, 19 * GRAN},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    uint64_t addr[N];
    for (int i = 0; i < N; i++) {
        uint64_t before = in_use(d);
        CHECK_OK(fl_dev_mem_alloc(d, cases[i].size, &addr[i]));
        CHECK_EQ_U64(in_use(d) - before, cases[i].charge);
        CHECK(addr[i] % 512 == 0);
        if (cases[i].charge >= GRAN)
            CHECK(addr[i] % GRAN == 0); /* large allocations start on a granule */
    }
    for (int i = 0; i < N; i++) {
        uint64_t before = in_use(d);
        CHECK_OK(fl_dev_mem_free(d, addr[i]));
        CHECK_EQ_U64(before - in_use(d), cases[i].charge);
    }
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), N);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), N);

    uint64_t a;
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_INVALID, NULL, fl_dev_mem_alloc(d, 0, &a));
    /* mem_free of an address never returned, of one inside a block, twice. */
    CHECK_OK(fl_dev_mem_alloc(d, 4 * KiB, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(a + 512), fl_dev_mem_free(d, a + 512));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(0x1234000), fl_dev_mem_free(d, 0x1234000));
    CHECK_OK(fl_dev_mem_free(d, a));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(a), fl_dev_mem_free(d, a));
    /* A reservation is not a mem_alloc allocation. */
    uint64_t va;
    CHECK_OK(fl_dev_reserve(d, GRAN, &va));
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, fl_test_hex(va), fl_dev_mem_free(d, va));
    CHECK_OK(fl_dev_addr_free(d, va, GRAN));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_TIME(d);
    fl_device_destroy(d);
}

static void test_no_vmm(void)
{
    fl_device *d = make_dev(0, 0);
    uint64_t va, h, a;
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_UNSUPPORTED, NULL, fl_dev_reserve(d, GRAN, &va));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_UNSUPPORTED, NULL, fl_dev_create(d, GRAN, &h));
    EXPECT_REFUSED(d, FL_CALL_MAP, FL_ERR_UNSUPPORTED, NULL, fl_dev_map(d, 64 * GRAN, GRAN, 1));
    /* The cudaMalloc path is unaffected. */
    CHECK_OK(fl_dev_mem_alloc(d, 5 * MiB, &a));
    CHECK_EQ_U64(in_use(d), 6 * MiB);
    CHECK_OK(fl_dev_mem_free(d, a));
    CHECK_OK(fl_dev_synchronize(d));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_TIME(d);
    fl_device_destroy(d);
}

/* ---- addresses never overlap ------------------------------------------------------ */

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

static void test_no_overlap(uint64_t seed)
{
    fl_device *d = make_dev(0, 1);
    fl_rng rng = {seed};
    enum { MAXN = 512 };
    span v[MAXN];
    size_t n = 0;
    for (int step = 0; step < 20000; step++) {
        if (n < MAXN && (n == 0 || fl_rng_below(&rng, 100) < 55)) {
            span s = {0, 0, (int)fl_rng_below(&rng, 2)};
            uint64_t r = fl_rng_below(&rng, 4);
            fl_status st;
            if (s.reserved) {
                s.size = (1 + fl_rng_below(&rng, r == 0 ? 64 : 4)) * GRAN;
                st = fl_dev_reserve(d, s.size, &s.addr);
                CHECK(s.addr % GRAN == 0);
            } else {
                uint64_t size = r == 0 ? 1 + fl_rng_below(&rng, 4 * KiB)
                              : r == 1 ? 1 + fl_rng_below(&rng, GRAN)
                              : r == 2 ? 1 + fl_rng_below(&rng, 64 * MiB)
                                       : GRAN / 2 + fl_rng_below(&rng, 2);
                st = fl_dev_mem_alloc(d, size, &s.addr);
                /* What the allocation covers: its charge (512 B steps or granules). */
                s.size = size <= GRAN / 2 ? (size + 511) / 512 * 512 : (size + GRAN - 1) / GRAN * GRAN;
            }
            CHECK_OK(st);
            CHECK(s.addr % 512 == 0);
            size_t i = lower(v, n, s.addr);
            int bad = (i < n && s.addr + s.size > v[i].addr) ||
                      (i > 0 && v[i - 1].addr + v[i - 1].size > s.addr);
            fl_test_checks++;
            if (bad) {
                fl_test_failures++;
                fprintf(stderr, "%s:%d: seed %#llx step %d: [%s, +%llu) overlaps a live %s\n",
                        __FILE__, __LINE__, (unsigned long long)seed, step, fl_test_hex(s.addr),
                        (unsigned long long)s.size, i < n ? "neighbour above" : "neighbour below");
                break;
            }
            memmove(&v[i + 1], &v[i], (n - i) * sizeof *v);
            v[i] = s;
            n++;
        } else {
            size_t i = (size_t)fl_rng_below(&rng, n);
            if (v[i].reserved)
                CHECK_OK(fl_dev_addr_free(d, v[i].addr, v[i].size));
            else
                CHECK_OK(fl_dev_mem_free(d, v[i].addr));
            memmove(&v[i], &v[i + 1], (n - i - 1) * sizeof *v);
            n--;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i].reserved)
            CHECK_OK(fl_dev_addr_free(d, v[i].addr, v[i].size));
        else
            CHECK_OK(fl_dev_mem_free(d, v[i].addr));
    }
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(counters(d).failed_calls, 0);
    CHECK_TIME(d);
    fl_device_destroy(d);
}

/* ---- the VMM rules against a reference model ------------------------------------ */

/* One reservation of NG granules, a few handles of 1-4 granules, random calls (some
 * deliberately wrong); the model predicts each status and the memory in use. */
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
    int start[NG];      /* first granule of its mapping */
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

/* Granules in the mapping that starts at g. */
static int mapping_len(const model *m, int g)
{
    int n = 1;
    while (g + n < NG && m->owner[g + n] && !m->start[g + n])
        n++;
    return n;
}

static void test_vmm_model(uint64_t seed)
{
    fl_device *d = make_dev(0, 1);
    fl_rng rng = {seed};
    model m;
    memset(&m, 0, sizeof m);
    CHECK_OK(fl_dev_reserve(d, NG * GRAN, &m.va));
    const int steps = 20000;
    int ok_maps = 0, ok_unmaps = 0;
    for (int step = 0; step < steps; step++) {
        uint64_t op = fl_rng_below(&rng, 6);
        int hi = (int)fl_rng_below(&rng, NH);
        model_handle *h = &m.h[hi];
        /* Granule range [g, g + n), sometimes reaching past the reservation. */
        int g = (int)fl_rng_below(&rng, NG + 2) - 1;
        int n = 1 + (int)fl_rng_below(&rng, 4);
        fl_status want = FL_OK, got;
        const char *what;
        if (op == 0) {
            what = "create";
            if (h->id && !h->reclaimed)
                continue; /* keep a slot until its memory is gone: the model needs it */
            uint64_t id;
            got = fl_dev_create(d, (uint64_t)n * GRAN, &id);
            if (got == FL_OK)
                *h = (model_handle){id, (uint64_t)n * GRAN, 1, 0, 0};
        } else if (op == 1) {
            what = "release";
            if (!h->id)
                continue;
            want = h->live ? FL_OK : FL_ERR_INVALID;
            got = fl_dev_release(d, h->id);
            if (want == FL_OK) {
                h->live = 0;
                model_reclaim(&m, hi);
            }
        } else if (op == 2 || op == 3) {
            what = "map";
            if (!h->id)
                continue;
            /* Mostly the handle's own size, sometimes another. */
            int gn = fl_rng_below(&rng, 8) ? (int)(h->size / GRAN) : n;
            int inside = g >= 0 && g + gn <= NG;
            int free_pages = inside;
            for (int k = g; inside && k < g + gn; k++)
                free_pages &= m.owner[k] == 0;
            want = (h->live && h->size == (uint64_t)gn * GRAN && inside && free_pages) ? FL_OK : FL_ERR_INVALID;
            got = fl_dev_map(d, m.va + (uint64_t)(int64_t)g * GRAN, (uint64_t)gn * GRAN, h->id);
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
            /* Mostly a real mapping (sometimes with its neighbour): refusals alone
             * would leave the reservation full and every later map refused. */
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
            got = fl_dev_unmap(d, m.va + (uint64_t)(int64_t)g * GRAN, (uint64_t)n * GRAN);
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
            got = fl_dev_set_access(d, m.va + (uint64_t)(int64_t)g * GRAN, (uint64_t)n * GRAN);
        }
        fl_test_checks += 2;
        if (got != want || in_use(d) != model_in_use(&m)) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: seed %#llx step %d: %s at granule %d (n %d): got %s want %s (%s); "
                    "in_use %llu, model %llu\n", __FILE__, __LINE__, (unsigned long long)seed, step,
                    what, g, n, fl_status_str(got), fl_status_str(want), fl_last_error(),
                    (unsigned long long)in_use(d), (unsigned long long)model_in_use(&m));
            break;
        }
    }
    /* The random calls must have exercised the successful paths, not only refusals. */
    CHECK(ok_maps > steps / 50 && ok_unmaps > steps / 50);
    /* Tear down through the rules too: every mapping whole, then the handles. */
    for (int k = 0; k < NG; k++) {
        if (m.owner[k] && m.start[k]) {
            CHECK_OK(fl_dev_unmap(d, m.va + (uint64_t)k * GRAN, (uint64_t)mapping_len(&m, k) * GRAN));
        }
    }
    for (int i = 0; i < NH; i++)
        if (m.h[i].id && m.h[i].live)
            CHECK_OK(fl_dev_release(d, m.h[i].id));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_OK(fl_dev_addr_free(d, m.va, NG * GRAN));
    CHECK_TIME(d);
    fl_device_destroy(d);
}

int main(void)
{
    test_defaults();
    test_bad_params();
    test_vmm_happy_path();
    test_in_use_accounting();
    test_rules();
    isolated("wrapping ranges", test_wrapping_ranges);
    test_capacity();
    test_mem_alloc_charge();
    test_no_vmm();
    for (uint64_t seed = 1; seed <= 3; seed++) {
        test_no_overlap(0x9e3779b97f4a7c15ull * seed);
        test_vmm_model(0x243f6a8885a308d3ull * seed);
    }
    return fl_test_done("test_sim");
}
