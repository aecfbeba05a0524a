/* The simulated device's own behaviour: its parameters, the cost model (every call
 * charged to its kind, refused ones included) and what the cudaMalloc path charges. The
 * rules every device keeps (alignment, whole mappings, memory freed when released and
 * unmapped, capacity, counters, the fault injector) are checked on the sim and the cuda
 * device alike in test_device_contract. */
#include <math.h>
#include <string.h>

#include "device/device.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define KiB (UINT64_C(1) << 10)
#define GRAN (2 * MiB)

/* ---- helpers ------------------------------------------------------------------- */

/* Costs that are distinct powers of two: every sum of them is exact in a double, so
 * time_us can be compared with == and a call charged to the wrong kind shows. No cost
 * per further granule or mapping (test_size_costs has those). */
static void pow2_costs(fl_sim_params *p)
{
    for (int i = 0; i < FL_CALL_COUNT; i++) {
        p->cost_us[i] = (double)(1u << i);
        p->cost_us_more[i] = 0;
    }
}

static fl_device *make_dev(uint64_t capacity)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    pow2_costs(&p);
    if (capacity)
        p.capacity = capacity;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    if (!d) {
        fprintf(stderr, "cannot create a sim device: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

/* The cost model's promise, true after any call: time is the sum over every call the
 * device saw, refused ones included (a refused driver call still costs the round trip).
 * `injected` calls never reached it: they are counted but cost nothing. */
static void check_time(const fl_device *d, const uint64_t injected[FL_CALL_COUNT], int line)
{
    fl_device_counters c = counters(d);
    double want = 0;
    for (int i = 0; i < FL_CALL_COUNT; i++)
        want += (double)(c.calls[i] - (injected ? injected[i] : 0)) * (double)(1u << i);
    fl_test_checks++;
    if (c.time_us != want) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: time_us %.2f, calls say %.2f\n", __FILE__, line, c.time_us, want);
    }
}
#define CHECK_TIME(d) check_time(d, NULL, __LINE__)

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
    /* Per further granule (create, cudaMalloc) or mapping (unmap, set_access); none for
     * the other calls (map costs the same for any handle). */
    CHECK(p.cost_us_more[FL_CALL_CREATE] == 7.58);
    CHECK(p.cost_us_more[FL_CALL_MEM_ALLOC] == 7.58);
    CHECK(p.cost_us_more[FL_CALL_UNMAP] == 25.6);
    CHECK(p.cost_us_more[FL_CALL_SET_ACCESS] == 36.0);
    for (int i = 0; i < FL_CALL_COUNT; i++)
        if (i != FL_CALL_CREATE && i != FL_CALL_MEM_ALLOC && i != FL_CALL_UNMAP && i != FL_CALL_SET_ACCESS)
            CHECK(p.cost_us_more[i] == 0);

    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    CHECK_EQ_U64(fl_device_capacity(d), UINT64_C(1) << 50);
    CHECK_EQ_U64(fl_device_granularity(d), 2 * MiB);

    /* The default costs are what gets charged: a reserve, a create and a map. */
    uint64_t va, h;
    CHECK_OK(fli_dev_reserve(d, GRAN, &va));
    CHECK_OK(fli_dev_create(d, GRAN, &h));
    CHECK_OK(fli_dev_map(d, va, GRAN, h));
    CHECK(fabs(counters(d).time_us - (19.0 + 193.0 + 1.45)) < 1e-9);
    CHECK_OK(fli_dev_unmap(d, va, GRAN));
    CHECK_OK(fli_dev_release(d, h));
    CHECK_OK(fli_dev_addr_free(d, va, GRAN));
    fl_device_destroy(d);

    const char *names[FL_CALL_COUNT] = {"mem_alloc", "mem_free", "reserve", "addr_free", "create",
                                        "release", "map", "unmap", "set_access", "sync"};
    for (int i = 0; i < FL_CALL_COUNT; i++)
        CHECK(strcmp(fl_call_name((fl_call)i), names[i]) == 0);
    CHECK(strcmp(fl_call_name(FL_CALL_COUNT), "?") == 0);
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
        {"negative create cost per granule", GRAN, cap, FL_CALL_COUNT + FL_CALL_CREATE, -1.0},
        {"NaN set_access cost per mapping", GRAN, cap, FL_CALL_COUNT + FL_CALL_SET_ACCESS, NAN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fl_sim_params p;
        fl_sim_params_default(&p);
        p.granularity = cases[i].granularity;
        p.capacity = cases[i].capacity;
        /* Indices from FL_CALL_COUNT on name cost_us_more. */
        if (cases[i].cost_index >= FL_CALL_COUNT)
            p.cost_us_more[cases[i].cost_index - FL_CALL_COUNT] = cases[i].cost;
        else if (cases[i].cost_index >= 0)
            p.cost_us[cases[i].cost_index] = cases[i].cost;
        fl_device *d = (fl_device *)&p; /* any non-NULL value: a failure must clear it */
        fli_clear_error();
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

/* ---- the cost model -------------------------------------------------------------- */

static void test_cost_model(void)
{
    fl_device *d = make_dev(8 * MiB);
    uint64_t va = 0, h1 = 0, h2 = 0, a = 0, x;

    CHECK_OK(fli_dev_reserve(d, 8 * GRAN, &va));
    CHECK_OK(fli_dev_create(d, GRAN, &h1));
    CHECK_OK(fli_dev_create(d, GRAN, &h2));
    CHECK_OK(fli_dev_map(d, va, GRAN, h1));
    CHECK_OK(fli_dev_map(d, va + GRAN, GRAN, h2));
    CHECK_OK(fli_dev_set_access(d, va, 2 * GRAN));
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_OK(fli_dev_unmap(d, va, 2 * GRAN));
    CHECK_OK(fli_dev_release(d, h1));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_mem_alloc(d, 4096, &a));
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_OK(fli_dev_addr_free(d, va, 8 * GRAN));
    CHECK_TIME(d);
    /* 1 reserve (4) + 2 create (16) + 2 map (64) + 1 set_access (256) + 1 sync (512)
     * + 1 unmap (128) + 2 release (32) + 1 mem_alloc (1) + 1 mem_free (2) + 1 addr_free
     * (8), by hand. */
    CHECK(counters(d).time_us == 4 + 2 * 16 + 2 * 64 + 256 + 512 + 128 + 2 * 32 + 1 + 2 + 8);

    /* Refused calls are charged to their kind: the driver was asked. */
    CHECK_STATUS(fli_dev_create(d, 16 * MiB, &x), FL_ERR_OOM);
    CHECK_STATUS(fli_dev_map(d, va, GRAN, h1), FL_ERR_INVALID);
    CHECK_STATUS(fli_dev_unmap(d, va, GRAN), FL_ERR_INVALID);
    CHECK_STATUS(fli_dev_mem_free(d, a), FL_ERR_INVALID);
    CHECK_TIME(d);

    /* Injected failures never reach the device: counted, not charged. */
    uint64_t injected[FL_CALL_COUNT] = {0};
    fl_device_counters c = counters(d);
    CHECK_OK(fl_device_set_fault(d, 0, fl_device_total_calls(&c) + 1));
    CHECK_STATUS(fli_dev_create(d, GRAN, &x), FL_ERR_DEVICE);
    CHECK_STATUS(fli_dev_synchronize(d), FL_ERR_DEVICE);
    injected[FL_CALL_CREATE] = injected[FL_CALL_SYNC] = 1;
    CHECK_OK(fl_device_set_fault(d, 0, 0));
    check_time(d, injected, __LINE__);

    /* Handle ids are never reused, so a stale one is always caught. */
    CHECK_OK(fli_dev_create(d, GRAN, &x));
    CHECK(x != h1 && x != h2);
    CHECK_OK(fli_dev_release(d, x));
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* What size costs: a create or cudaMalloc pays cost_us for its first granule and
 * cost_us_more for each further one; map costs the same for any handle; unmap and
 * set_access pay per mapping in their range, whatever its size. Costs are powers of two
 * (exact sums); the figures are worked out by hand. */
static void test_size_costs(void)
{
    fl_sim_params p;
    fl_sim_params_default(&p);
    pow2_costs(&p);
    p.cost_us_more[FL_CALL_CREATE] = 1024;
    p.cost_us_more[FL_CALL_MEM_ALLOC] = 2048;
    p.cost_us_more[FL_CALL_UNMAP] = 4096;
    p.cost_us_more[FL_CALL_SET_ACCESS] = 8192;
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&p, &d));
    if (!d)
        return;
    uint64_t va = 0, h1 = 0, h10 = 0, a = 0, b = 0;
    double t = 0;
#define COSTS(expr, us)                                                              \
    do {                                                                             \
        CHECK_OK(expr);                                                              \
        t += (us);                                                                   \
        CHECK(counters(d).time_us == t);                                             \
    } while (0)
    COSTS(fli_dev_reserve(d, 32 * GRAN, &va), 4);
    COSTS(fli_dev_create(d, GRAN, &h1), 16);                  /* one granule */
    COSTS(fli_dev_create(d, 10 * GRAN, &h10), 16 + 9 * 1024); /* ten: nine more */
    COSTS(fli_dev_map(d, va, GRAN, h1), 64);
    COSTS(fli_dev_map(d, va + GRAN, 10 * GRAN, h10), 64);     /* any size: one map */
    /* Eleven granules, two mappings. */
    COSTS(fli_dev_set_access(d, va, 11 * GRAN), 256 + 8192);
    /* Part of a mapping is still that mapping: one. */
    COSTS(fli_dev_set_access(d, va + 3 * GRAN, 2 * GRAN), 256);
    /* Starts inside h10's mapping: one. */
    COSTS(fli_dev_set_access(d, va + 2 * GRAN, 9 * GRAN), 256);
    COSTS(fli_dev_unmap(d, va, 11 * GRAN), 128 + 4096);      /* two mappings */
    COSTS(fli_dev_map(d, va, 10 * GRAN, h10), 64);
    COSTS(fli_dev_unmap(d, va, 10 * GRAN), 128);             /* one, of ten granules */
    /* cudaMalloc: packed small requests and one granule cost the base, each further
     * whole granule 2048. */
    COSTS(fli_dev_mem_alloc(d, 4096, &a), 1);
    COSTS(fli_dev_mem_alloc(d, 5 * GRAN + 1, &b), 1 + 5 * 2048);
    COSTS(fli_dev_mem_free(d, a), 2);
    COSTS(fli_dev_mem_free(d, b), 2);                         /* frees: per call */
    COSTS(fli_dev_release(d, h1), 32);
    COSTS(fli_dev_release(d, h10), 32);
    /* A refused call is charged as one unit, whatever size it asked. */
    uint64_t x;
    CHECK_STATUS(fli_dev_create(d, 3 * GRAN + 512, &x), FL_ERR_INVALID);
    t += 16;
    CHECK(counters(d).time_us == t);
#undef COSTS
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* ---- the cudaMalloc path's charges ----------------------------------------------- */

static void test_mem_alloc_charge(void)
{
    fl_device *d = make_dev(0);
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
        CHECK_OK(fli_dev_mem_alloc(d, cases[i].size, &addr[i]));
        CHECK_EQ_U64(in_use(d) - before, cases[i].charge);
        CHECK(addr[i] % 512 == 0);
        if (cases[i].charge >= GRAN)
            CHECK(addr[i] % GRAN == 0); /* large allocations start on a granule */
    }
    for (int i = 0; i < N; i++) {
        uint64_t before = in_use(d);
        CHECK_OK(fli_dev_mem_free(d, addr[i]));
        CHECK_EQ_U64(before - in_use(d), cases[i].charge);
    }
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_ALLOC), N);
    CHECK_EQ_U64(calls(d, FL_CALL_MEM_FREE), N);

    CHECK_TIME(d);
    fl_device_destroy(d);
}

int main(void)
{
    test_defaults();
    test_bad_params();
    test_cost_model();
    test_size_costs();
    test_mem_alloc_charge();
    return fl_test_done("test_sim");
}
