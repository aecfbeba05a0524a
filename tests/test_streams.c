/* record_stream: a block used on another stream is reused only after an event recorded
 * on that stream at the free has completed — checked on the cuda device over the driver
 * double with events held incomplete, for every policy; and on the sim device, whose
 * events complete at once. */
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define S1 UINT64_C(0x1000)
#define S2 UINT64_C(0x2000)

static const char fake_path[] = FL_TEST_FAKECUDA;

static void (*set_auto_complete)(int on);
static void (*complete_all)(void);
static void (*fake_reset)(void);

/* The policy, with neither the OOM report nor publishing (top). */
static fl_allocator *make(const char *policy, fl_device *d)
{
    char conf[128];
    snprintf(conf, sizeof conf, "policy:%s,oom_report:0,top:0", policy);
    return fl_test_allocator(conf, d);
}

static fl_stats stats(fl_allocator *a)
{
    fl_stats s;
    fl_get_stats(a, &s);
    return s;
}

static int overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn) { return a < b + bn && b < a + an; }

static void on_double(const char *policy)
{
    fake_reset();
    fl_device *d = fl_test_fake_device();
    if (!d)
        return;
    fl_allocator *a = make(policy, d);
    set_auto_complete(0);

    /* Freed while stream 2 may still read it: not reused, by its own stream either. */
    uint64_t x, y, z;
    CHECK_OK(fl_alloc(a, MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_record_stream(a, x, S2)); /* twice is once */
    CHECK_OK(fl_free(a, x));
    CHECK_STATUS(fl_free(a, x), FL_ERR_NOT_FOUND); /* freed already, even if pending */
    fl_stats s = stats(a);
    CHECK_EQ_U64(s.requested_bytes.current, 0);
    CHECK_EQ_U64(s.allocation.current, 1); /* still held for stream 2 */
    CHECK(s.active_bytes.current >= MiB);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_alloc(a, MiB, S1, &y));
    CHECK(!overlaps(x, MiB, y, MiB));
    CHECK_EQ_U64(stats(a).allocation.current, 2);

    /* Stream 2's work done: the next allocation frees it first. */
    complete_all();
    CHECK_OK(fl_alloc(a, 4096, S1, &z));
    CHECK_EQ_U64(stats(a).allocation.current, 2); /* y and z: x is gone */
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_free(a, z));

    /* Out of memory with a block pending: synchronize, free it, succeed. The double
     * has 1 GiB; fill it with 64 MiB blocks, one of them used on stream 2. */
    uint64_t big[16];
    int n = 0;
    while (n < 16 && fl_alloc(a, 64 * MiB, S1, &big[n]) == FL_OK)
        n++;
    CHECK(n >= 8 && n < 16);
    CHECK_OK(fl_record_stream(a, big[0], S2));
    CHECK_OK(fl_free(a, big[0]));
    fl_device_counters before, after;
    fl_device_get_counters(d, &before);
    uint64_t again;
    CHECK_OK(fl_alloc(a, 64 * MiB, S1, &again)); /* only big[0]'s memory is left */
    fl_device_get_counters(d, &after);
    CHECK(after.calls[FL_CALL_SYNC] > before.calls[FL_CALL_SYNC]);
    CHECK(fl_allocator_check(a) == 0);
    CHECK_OK(fl_free(a, again));
    for (int i = 1; i < n; i++)
        CHECK_OK(fl_free(a, big[i]));

    /* empty_cache synchronizes and returns pending blocks too. */
    CHECK_OK(fl_record_stream(a, y, S2));
    CHECK_OK(fl_free(a, y));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_OK(fl_empty_cache(a));
    s = stats(a);
    CHECK_EQ_U64(s.allocation.current, 0);
    CHECK_EQ_U64(s.allocated_bytes.current, 0);
    CHECK_EQ_U64(s.reserved_bytes.current, 0);

    /* Misuse: a pointer that is not a live block. */
    CHECK_STATUS(fl_record_stream(a, x, S2), FL_ERR_NOT_FOUND);
    char hex[32];
    snprintf(hex, sizeof hex, "0x%llx", (unsigned long long)x);
    CHECK_MENTIONS(hex);

    /* Destroyed with a block pending: its event is destroyed, nothing leaks. */
    CHECK_OK(fl_alloc(a, MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_free(a, x));
    set_auto_complete(1);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* The sim has no asynchronous work: a pending block is freed at the next allocation. */
static void on_sim(void)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    fl_device *d = NULL;
    CHECK_OK(fl_sim_device_create(&sp, &d));
    fl_allocator *a = make("fragless", d);
    uint64_t x, y;
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &x));
    CHECK_OK(fl_record_stream(a, x, S2));
    CHECK_OK(fl_free(a, x));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_OK(fl_alloc(a, 3 * MiB, S1, &y));
    CHECK_EQ_U64(stats(a).allocation.current, 1);
    CHECK_EQ_U64(x, y); /* the same place again: fragless reuses the freed range */
    CHECK(fl_allocator_check(a) == 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

int main(void)
{
    on_sim();
    if (!fake_path[0]) {
        printf("test_streams: the driver double was not built; only the sim part ran\n");
        return fl_test_done("test_streams");
    }
    void *lib = fl_test_fakecuda();
    if (!lib || !fl_test_sym(lib, "fakecuda_set_auto_complete", &set_auto_complete) ||
        !fl_test_sym(lib, "fakecuda_complete_all", &complete_all) || !fl_test_sym(lib, "fakecuda_reset", &fake_reset))
        return 1;
    const char *const *names = fl_policy_names();
    for (int i = 0; names[i]; i++)
        on_double(names[i]);
    return fl_test_done("test_streams");
}
