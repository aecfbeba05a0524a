/* The cuda device against the driver test double (tests/fakecuda, a libcuda look-alike
 * backed by memfd and mmap): what is cuda.c's own. Opening (contexts, the driver library,
 * the granularity fallback), the driver calls behind each device call, what the
 * cudaMalloc path charges, calls from other threads, driver errors with the driver's
 * names, giving back leftovers, the policies on it, and data integrity across reclaim
 * (device addresses are real host memory here). The rules every device keeps are in
 * test_device_contract, run on this device too.
 * Skipped (77) when the double's path (FAKECUDA_PATH) is not compiled in or not loadable. */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_api.h"
#include "device/device.h"
#include "policy/policy.h"
#include "test_support.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* The double's path; "" when it was not built (the test then skips). */
static const char fake_path[] = FL_TEST_FAKECUDA;

/* ---- the double, resolved the way the device resolves the driver -------------------- */

/* The driver's entry points (to look behind the device) and the double's controls. */
static struct {
#define FAKE_POINTER(name, params) CUresult (*name) params;
    FL_CUDA_FUNCTIONS(FAKE_POINTER)
#undef FAKE_POINTER
    unsigned long long (*fakecuda_calls)(const char *fn);
    void (*fakecuda_fail_call)(const char *fn, unsigned long long n, CUresult err);
    size_t (*fakecuda_used)(int dev);
    int (*fakecuda_ctx_depth)(void);
    CUresult (*fakecuda_device_access)(int dev, CUdeviceptr va, size_t n, int write);
    int (*fakecuda_handle_props)(CUdeviceptr va, unsigned *types, int *rdma);
    void (*fakecuda_reset)(void);
} fake;

static void resolve(void *lib, const char *name, void *slot)
{
    if (!fl_test_sym(lib, name, slot))
        exit(1);
}

/* Loads the double into this process and keeps it there, so its state (counters)
 * outlives each device made on it. */
static void load_fake(void)
{
    void *lib = fl_test_fakecuda();
    if (!lib)
        exit(1);
#define FAKE_RESOLVE(name, params) resolve(lib, #name, &fake.name);
    FL_CUDA_FUNCTIONS(FAKE_RESOLVE)
#undef FAKE_RESOLVE
    resolve(lib, "fakecuda_calls", &fake.fakecuda_calls);
    resolve(lib, "fakecuda_fail_call", &fake.fakecuda_fail_call);
    resolve(lib, "fakecuda_used", &fake.fakecuda_used);
    resolve(lib, "fakecuda_ctx_depth", &fake.fakecuda_ctx_depth);
    resolve(lib, "fakecuda_device_access", &fake.fakecuda_device_access);
    resolve(lib, "fakecuda_handle_props", &fake.fakecuda_handle_props);
    resolve(lib, "fakecuda_reset", &fake.fakecuda_reset);
}

/* The double with this environment (VAR=VALUE pairs, NULL-terminated) from now on. */
static void fake_env(const char *const *kv)
{
    for (; *kv; kv += 2)
        setenv(kv[0], kv[1], 1);
    fake.fakecuda_reset();
}

static CUcontext current_ctx(void)
{
    CUcontext c = NULL;
    fake.cuCtxGetCurrent(&c);
    return c;
}

/* The test's own driver calls need a context, as a program's do: device dev's primary
 * one, retained and pushed, as the runtime makes it current; program_leave undoes it. */
static CUcontext program_enter(int dev)
{
    CUcontext c = NULL;
    CHECK(fake.cuInit(0) == CUDA_SUCCESS);
    CHECK(fake.cuDevicePrimaryCtxRetain(&c, dev) == CUDA_SUCCESS);
    CHECK(fake.cuCtxPushCurrent_v2(c) == CUDA_SUCCESS);
    return c;
}
static void program_leave(int dev)
{
    CUcontext c = NULL;
    CHECK(fake.cuCtxPopCurrent_v2(&c) == CUDA_SUCCESS);
    CHECK(fake.cuDevicePrimaryCtxRelease_v2(dev) == CUDA_SUCCESS);
}

/* ---- helpers ------------------------------------------------------------------------ */

static fl_device *make_dev_on(int ordinal)
{
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = fake_path;
    p.device = ordinal;
    fl_device *d = NULL;
    CHECK_OK(fl_cuda_device_create(&p, &d));
    if (!d) {
        fprintf(stderr, "cannot create a cuda device on the double: %s\n", fl_last_error());
        exit(1);
    }
    return d;
}

static fl_device *make_dev(void) { return make_dev_on(0); }

/* A device with the given peer_access and shareable settings. */
static fl_device *make_dev_with(int ordinal, int peer_access, int shareable)
{
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    p.library = fake_path;
    p.device = ordinal;
    p.peer_access = peer_access;
    p.shareable = shareable;
    fl_device *d = NULL;
    CHECK_OK(fl_cuda_device_create(&p, &d));
    if (!d)
        exit(1);
    return d;
}

/* One page reserved, created, mapped and given access: its address. */
static uint64_t map_one(fl_device *d, uint64_t *handle)
{
    uint64_t va = 0;
    CHECK_OK(fli_dev_reserve(d, 2 * MiB, &va));
    CHECK_OK(fli_dev_create(d, 2 * MiB, handle));
    CHECK_OK(fli_dev_map(d, va, 2 * MiB, *handle));
    CHECK_OK(fli_dev_set_access(d, va, 2 * MiB));
    return va;
}

static void unmap_one(fl_device *d, uint64_t va, uint64_t handle)
{
    CHECK_OK(fli_dev_unmap(d, va, 2 * MiB));
    CHECK_OK(fli_dev_release(d, handle));
    CHECK_OK(fli_dev_addr_free(d, va, 2 * MiB));
}


/* A refused call: its status, a message naming `mention` (if given), one more failed call
 * of its kind, memory in use unchanged. */
#define EXPECT_REFUSED(d, kind, want, mention, expr)                                    \
    do {                                                                                \
        const char *m_ = (mention);                                                     \
        fl_device_counters cb_ = counters(d);                                           \
        fli_clear_error();                                                               \
        CHECK_STATUS(expr, want);                                                       \
        fl_device_counters ca_ = counters(d);                                           \
        CHECK(fl_last_error()[0] != 0);                                                 \
        if (m_)                                                                         \
            fl_test_check_mentions(m_, __FILE__, __LINE__);                                               \
        CHECK_EQ_U64(ca_.failed_calls, cb_.failed_calls + 1);                           \
        CHECK_EQ_U64(ca_.calls[kind], cb_.calls[kind] + 1);                             \
        CHECK_EQ_U64(ca_.in_use, cb_.in_use);                                           \
    } while (0)

/* Patterns: word i of block k. Device addresses are host addresses in the double. */
static uint64_t pattern(uint64_t k, uint64_t i)
{
    return (k + 1) * UINT64_C(0x9e3779b97f4a7c15) ^ (i * UINT64_C(0xd1b54a32d192ed03));
}
/* Blocks may start anywhere (stamps at a block's end do), so words go through memcpy. */
static void fill(uint64_t addr, uint64_t size, uint64_t k)
{
    unsigned char *p = (unsigned char *)(uintptr_t)addr;
    uint64_t i = 0;
    for (uint64_t w; i + 8 <= size; i += 8) {
        w = pattern(k, i / 8);
        memcpy(p + i, &w, 8);
    }
    for (; i < size; i++)
        p[i] = (unsigned char)(k ^ i);
}
/* Offset of the first 8 bytes that differ, or UINT64_MAX when intact. */
static uint64_t verify(uint64_t addr, uint64_t size, uint64_t k)
{
    const unsigned char *p = (const unsigned char *)(uintptr_t)addr;
    uint64_t i = 0;
    for (uint64_t w; i + 8 <= size; i += 8) {
        w = pattern(k, i / 8);
        if (memcmp(p + i, &w, 8) != 0)
            return i;
    }
    for (; i < size; i++)
        if (p[i] != (unsigned char)(k ^ i))
            return i & ~UINT64_C(7);
    return UINT64_MAX;
}

/* ---- creation ----------------------------------------------------------------------- */

static void test_create(void)
{
    fl_device *d = make_dev();
    size_t total = 0, gran = 0;
    fake.cuDeviceTotalMem_v2(&total, 0);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    program_enter(0);
    fake.cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    program_leave(0);
    CHECK_EQ_U64(fl_device_capacity(d), 64 * MiB); /* FAKECUDA_CAPACITY of this case */
    CHECK_EQ_U64(fl_device_capacity(d), total);
    CHECK_EQ_U64(fl_device_granularity(d), gran);
    CHECK_EQ_U64(fl_device_granularity(d), 2 * MiB);
    CHECK(d->vmm_supported == 1);
    CHECK(strcmp(d->ops->name, "cuda") == 0);
    fl_device_counters c = counters(d), zero;
    memset(&zero, 0, sizeof zero);
    CHECK(memcmp(&c, &zero, sizeof c) == 0); /* opening is not the policies' device time */
    /* The device retained the primary context, and left nothing current. */
    CHECK(current_ctx() == NULL);
    CHECK_EQ_U64(fake.fakecuda_calls("cuDevicePrimaryCtxRetain"), 2); /* with program_enter's */
    fl_device_destroy(d);
    CHECK(current_ctx() == NULL);
    CHECK_EQ_U64(fake.fakecuda_calls("cuDevicePrimaryCtxRelease_v2"), 2);

    /* NULL params: the library comes from $FRAGLESS_CUDA_LIB. */
    setenv("FRAGLESS_CUDA_LIB", fake_path, 1);
    d = NULL;
    CHECK_OK(fl_cuda_device_create(NULL, &d));
    fl_device_destroy(d);
    unsetenv("FRAGLESS_CUDA_LIB");

    /* A library that is not there, one that is not a driver, a device that is not there. */
    fl_cuda_params p;
    fl_cuda_params_default(&p);
    CHECK(p.library == NULL && p.device == 0);
    p.library = "/nonexistent/libcuda-for-fragless-tests.so.1";
    d = (fl_device *)&p; /* a failure must clear it */
    CHECK_STATUS(fl_cuda_device_create(&p, &d), FL_ERR_DEVICE);
    CHECK(d == NULL);
    CHECK_MENTIONS("/nonexistent/libcuda-for-fragless-tests.so.1");
    p.library = "libc.so.6";
    CHECK_STATUS(fl_cuda_device_create(&p, &d), FL_ERR_UNSUPPORTED);
    CHECK_MENTIONS("cuInit");
    p.library = fake_path;
    p.device = 1;
    CHECK_STATUS(fl_cuda_device_create(&p, &d), FL_ERR_INVALID);
    CHECK_MENTIONS("no device 1");
    CHECK_MENTIONS("1 device");
    p.device = -1;
    CHECK_STATUS(fl_cuda_device_create(&p, &d), FL_ERR_INVALID);
    CHECK(d == NULL);
    /* A driver failing while opening: the message names the call and the driver's error. */
    p.device = 0;
    fake.fakecuda_fail_call("cuDeviceTotalMem_v2", 1, CUDA_ERROR_UNKNOWN);
    CHECK_STATUS(fl_cuda_device_create(&p, &d), FL_ERR_DEVICE);
    CHECK_MENTIONS("cuDeviceTotalMem_v2(device 0): CUDA_ERROR_UNKNOWN (999)");
    CHECK(d == NULL);
    /* RECOMMENDED granularity refused: MINIMUM is the fallback. */
    unsigned long long queries = fake.fakecuda_calls("cuMemGetAllocationGranularity");
    fake.fakecuda_fail_call("cuMemGetAllocationGranularity", 1, CUDA_ERROR_INVALID_VALUE);
    CHECK_OK(fl_cuda_device_create(&p, &d));
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemGetAllocationGranularity"), queries + 2);
    CHECK(d && fl_device_granularity(d) == 2 * MiB);
    fl_device_destroy(d);
}

/* FAKECUDA_NO_VMM: the virtual memory calls are refused before reaching the driver, with
 * the policy to use instead; fragless refuses the device and says so, cca works on it. */
static void test_no_vmm(void)
{
    fl_device *d = make_dev();
    CHECK(d->vmm_supported == 0);
    uint64_t va, h;
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_UNSUPPORTED, "policy:cca", fli_dev_reserve(d, 2 * MiB, &va));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_UNSUPPORTED, "cuMemCreate", fli_dev_create(d, 2 * MiB, &h));
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemCreate") + fake.fakecuda_calls("cuMemAddressReserve"), 0);

    fl_config cfg;
    fl_config_default(&cfg);
    cfg.publish = 0; /* children end with _exit: no file left in /dev/shm */
    fli_policy *p = NULL;
    CHECK_STATUS(fli_policy_create(&cfg, d, &p), FL_ERR_UNSUPPORTED);
    CHECK_MENTIONS("cca");
    snprintf(cfg.policy, sizeof cfg.policy, "cca");
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    if (p) {
        uint64_t x;
        CHECK_OK(p->ops->alloc(p, 3 * MiB, 0, &x));
        fill(x, 3 * MiB, 7);
        CHECK(verify(x, 3 * MiB, 7) == UINT64_MAX);
        CHECK_OK(p->ops->free(p, x, 0, NULL));
        p->ops->destroy(p);
    }
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* ---- the driver calls behind the device calls, and data -------------------------------- */

static void test_ops(void)
{
    fl_device *d = make_dev();
    const uint64_t G = fl_device_granularity(d);
    uint64_t a, b, va, h1, h2;

    /* cudaMalloc path: the driver does not say what it took; charged in 512 B steps. */
    CHECK_OK(fli_dev_mem_alloc(d, 1000, &a));
    CHECK_EQ_U64(in_use(d), 1024);
    CHECK_OK(fli_dev_mem_alloc(d, 3 * MiB, &b));
    CHECK_EQ_U64(in_use(d), 1024 + 3 * MiB);
    fill(b, 3 * MiB, 1);
    CHECK(verify(b, 3 * MiB, 1) == UINT64_MAX);
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK_OK(fli_dev_mem_free(d, b));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemAlloc_v2"), 2);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemFree_v2"), 2);

    /* Virtual memory path. */
    CHECK_OK(fli_dev_reserve(d, 8 * G, &va));
    CHECK_OK(fli_dev_create(d, G, &h1));
    CHECK_OK(fli_dev_create(d, 2 * G, &h2));
    CHECK_OK(fli_dev_map(d, va, G, h1));
    CHECK_OK(fli_dev_map(d, va + G, 2 * G, h2));
    CHECK_OK(fli_dev_set_access(d, va, 3 * G)); /* across two mappings: one driver call */
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemSetAccess"), 1);
    fill(va, 3 * G, 2);
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_EQ_U64(fake.fakecuda_calls("cuCtxSynchronize"), 1);
    /* Two whole mappings in one unmap: one driver call (the driver unmaps a range of
     * whole mappings at once, as NVIDIA's vectorAddMMAP sample does). */
    CHECK_OK(fli_dev_unmap(d, va, 3 * G));
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), 1);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemUnmap"), 1);
    /* The data lives in the handle: mapped elsewhere (in reverse order), it is there. */
    CHECK_OK(fli_dev_map(d, va + 4 * G, 2 * G, h2));
    CHECK_OK(fli_dev_map(d, va + 6 * G, G, h1));
    CHECK_OK(fli_dev_set_access(d, va + 4 * G, 3 * G));
    CHECK(verify(va + 6 * G, G, 2) == UINT64_MAX);
    {
        /* h2 held words G/8 .. 3G/8 of pattern 2. */
        const uint64_t *w = (const uint64_t *)(uintptr_t)(va + 4 * G);
        int ok = 1;
        for (uint64_t i = 0; i < 2 * G / 8 && ok; i++)
            ok = w[i] == pattern(2, G / 8 + i);
        CHECK(ok);
    }
    CHECK_OK(fli_dev_unmap(d, va + 4 * G, 3 * G));
    CHECK_OK(fli_dev_release(d, h1));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_addr_free(d, va, 8 * G));
    CHECK_EQ_U64(in_use(d), 0);
    CHECK(counters(d).time_us > 0); /* measured: some time passed in the driver */
    fl_device_destroy(d);
}

/* A driver that refuses to unmap several mappings in one call (FAKECUDA_UNMAP_ONE=1:
 * CUDA_ERROR_INVALID_VALUE, nothing unmapped) gets one call per mapping instead; the
 * device call still succeeds, and a range inside one mapping is refused as before. */
static void test_unmap_fallback(void)
{
    static const char *const one[] = {"FAKECUDA_UNMAP_ONE", "1", NULL};
    fake_env(one);
    fl_device *d = make_dev();
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, h1, h2, h3;
    CHECK_OK(fli_dev_reserve(d, 4 * G, &va));
    CHECK_OK(fli_dev_create(d, G, &h1));
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_create(d, 2 * G, &h3));
    CHECK_OK(fli_dev_map(d, va, G, h1));
    CHECK_OK(fli_dev_map(d, va + G, G, h2));
    CHECK_OK(fli_dev_map(d, va + 2 * G, 2 * G, h3));
    CHECK_OK(fli_dev_set_access(d, va, 4 * G));
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_STATUS(fli_dev_unmap(d, va + 2 * G, G), FL_ERR_INVALID); /* inside h3's mapping */
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemUnmap"), 0);
    CHECK_OK(fli_dev_unmap(d, va, 4 * G));
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), 2); /* the refused one counts too */
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemUnmap"), 1 + 3); /* refused, then one per mapping */
    /* Every mapping is gone: each can be mapped again, and released. */
    CHECK_OK(fli_dev_map(d, va, G, h2));
    CHECK_OK(fli_dev_unmap(d, va, G)); /* one mapping: one call, no refusal */
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemUnmap"), 5);
    CHECK_OK(fli_dev_release(d, h1));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_release(d, h3));
    CHECK_OK(fli_dev_addr_free(d, va, 4 * G));
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* Calls from a thread that has no current context (an autograd worker): they work, in
 * the device's context, and the thread still has none after them (the driver makes no
 * context current on a new thread: CUDA_ERROR_INVALID_CONTEXT without ours). */
static uint64_t main_key; /* the main thread's per-thread stream key */

static void *other_thread(void *arg)
{
    fl_device *d = arg;
    uint64_t a = 0, va, h;
    CHECK(current_ctx() == NULL);
    CHECK(fake.cuMemAlloc_v2(&(CUdeviceptr){0}, 4096) == CUDA_ERROR_INVALID_CONTEXT);
    CHECK_OK(fli_dev_mem_alloc(d, 4096, &a));
    CHECK(current_ctx() == NULL && fake.fakecuda_ctx_depth() == 0);
    CHECK_OK(fli_dev_reserve(d, 2 * MiB, &va));
    CHECK_OK(fli_dev_create(d, 2 * MiB, &h));
    CHECK_OK(fli_dev_map(d, va, 2 * MiB, h));
    CHECK_OK(fli_dev_set_access(d, va, 2 * MiB));
    CHECK_OK(fli_dev_synchronize(d));
    uint64_t ev = 0;
    int done = 0;
    CHECK_OK(fli_dev_event_record(d, 0, &ev));
    CHECK_OK(fli_dev_event_query(d, ev, &done));
    fli_dev_event_destroy(d, ev);
    /* Per-thread default stream keys (device.h): this thread's is its own, recorded on
     * as CU_STREAM_PER_THREAD; the main thread's names no stream here. */
    uint64_t mine = fli_per_thread_stream();
    CHECK(fli_is_per_thread_stream(mine) && fli_is_per_thread_stream(main_key) && mine != main_key &&
          mine == fli_per_thread_stream() && !fli_is_per_thread_stream(0x7f00aa00));
    CHECK_OK(fli_dev_event_record(d, mine, &ev));
    fli_dev_event_destroy(d, ev);
    CHECK_STATUS(fli_dev_event_record(d, main_key, &ev), FL_ERR_UNSUPPORTED);
    int status = -1;
    uint64_t id = 7;
    CHECK_OK(fli_dev_capture_info(d, main_key, &status, &id));
    CHECK(status == FL_CAPTURE_NONE && id == 0);
    CHECK_OK(fli_dev_unmap(d, va, 2 * MiB));
    CHECK_OK(fli_dev_release(d, h));
    CHECK_OK(fli_dev_addr_free(d, va, 2 * MiB));
    CHECK_OK(fli_dev_mem_free(d, a));
    CHECK(current_ctx() == NULL && fake.fakecuda_ctx_depth() == 0);
    return NULL;
}

static void test_threads(void)
{
    main_key = fli_per_thread_stream();
    fl_device *d = make_dev();
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread, d) == 0);
    pthread_join(t, NULL);
    CHECK(current_ctx() == NULL);
    fl_device_destroy(d);
}

/* ---- contexts ------------------------------------------------------------------------ */

/* Two devices (FAKECUDA_DEVICES=2) from a thread whose current context is device 0's, as
 * a program's after cudaSetDevice(0): each device works in its own context (device 1's
 * memory is charged to device 1), and every call leaves device 0's context current, so
 * the program's next kernels still go to device 0. Before contexts were per call, device
 * 1 adopted device 0's context and the thread kept whichever it used last. */
static void test_contexts(void)
{
    CUcontext c0 = program_enter(0);
    fl_device *d1 = make_dev_on(1), *d0 = make_dev_on(0);
    CHECK(current_ctx() == c0 && fake.fakecuda_ctx_depth() == 1);
    uint64_t a0, a1, va, h;
    CHECK_OK(fli_dev_mem_alloc(d1, 3 * MiB, &a1));
    CHECK(current_ctx() == c0);
    CHECK_EQ_U64(fake.fakecuda_used(1), fli_align_up(3 * MiB, 512));
    CHECK_EQ_U64(fake.fakecuda_used(0), 0);
    CHECK_OK(fli_dev_mem_alloc(d0, MiB, &a0));
    CHECK_EQ_U64(fake.fakecuda_used(0), MiB);
    /* Alternating, every kind of call: each device's memory stays its own. */
    CHECK_OK(fli_dev_reserve(d1, 4 * MiB, &va));
    CHECK_OK(fli_dev_create(d1, 2 * MiB, &h));
    CHECK_OK(fli_dev_map(d1, va, 2 * MiB, h));
    CHECK_OK(fli_dev_set_access(d1, va, 2 * MiB));
    CHECK_OK(fli_dev_synchronize(d0));
    CHECK_OK(fli_dev_synchronize(d1));
    CHECK(current_ctx() == c0 && fake.fakecuda_ctx_depth() == 1);
    CHECK_EQ_U64(fake.fakecuda_used(1), in_use(d1));
    CHECK_EQ_U64(fake.fakecuda_used(0), in_use(d0));
    /* A stack the program pushed (device 1's over device 0's) is left as it was. */
    CUcontext c1 = program_enter(1);
    CHECK_OK(fli_dev_unmap(d1, va, 2 * MiB));
    CHECK_OK(fli_dev_mem_free(d0, a0));
    CHECK(current_ctx() == c1 && fake.fakecuda_ctx_depth() == 2);
    program_leave(1);
    CHECK(current_ctx() == c0);
    /* A push the driver refuses: the call fails, naming it, and changes nothing. */
    fake.fakecuda_fail_call("cuCtxPushCurrent_v2", 1, CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_REFUSED(d1, FL_CALL_RELEASE, FL_ERR_DEVICE, "cuCtxPushCurrent_v2(primary context of device 1)",
                   fli_dev_release(d1, h));
    CHECK(current_ctx() == c0 && fake.fakecuda_ctx_depth() == 1);
    CHECK_OK(fli_dev_release(d1, h));
    CHECK_OK(fli_dev_addr_free(d1, va, 4 * MiB));
    CHECK_OK(fli_dev_mem_free(d1, a1));
    CHECK_EQ_U64(fake.fakecuda_used(0) + fake.fakecuda_used(1), 0);
    fl_device_destroy(d0);
    fl_device_destroy(d1);
    CHECK(current_ctx() == c0 && fake.fakecuda_ctx_depth() == 1);
    program_leave(0);
}

/* ---- peers and handles ----------------------------------------------------------------- */

/* Three GPUs that reach each other (FAKECUDA_DEVICES=3): mapped memory is reachable from a
 * peer only when cuMemSetAccess names it (cudaDeviceEnablePeerAccess does not cover it),
 * so set_access names every device that can access the owner; peer_access:0 names the
 * owner only; a machine whose GPUs cannot reach each other gets the owner only, and no
 * refused call. Before, set_access named the owner only: a peer copy faulted. */
static void test_peers(void)
{
    fl_device *d = make_dev_on(1);
    uint64_t h, va = map_one(d, &h);
    CHECK(fake.fakecuda_device_access(1, va, 2 * MiB, 1) == CUDA_SUCCESS);
    CHECK(fake.fakecuda_device_access(0, va, 2 * MiB, 1) == CUDA_SUCCESS);
    CHECK(fake.fakecuda_device_access(2, va + MiB, 4096, 0) == CUDA_SUCCESS);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemSetAccess"), 1); /* one call names them all */
    unmap_one(d, va, h);
    fl_device_destroy(d);

    d = make_dev_with(1, 0, 1);
    va = map_one(d, &h);
    CHECK(fake.fakecuda_device_access(1, va, 2 * MiB, 1) == CUDA_SUCCESS);
    CHECK(fake.fakecuda_device_access(0, va, 2 * MiB, 0) == CUDA_ERROR_ILLEGAL_ADDRESS);
    CHECK(fake.fakecuda_device_access(2, va, 2 * MiB, 0) == CUDA_ERROR_ILLEGAL_ADDRESS);
    unmap_one(d, va, h);
    fl_device_destroy(d);

    /* The double refuses a device that cannot reach the memory, as the driver does. */
    static const char *const no_peers[] = {"FAKECUDA_PEER", "0", NULL};
    fake_env(no_peers);
    d = make_dev_on(0);
    va = map_one(d, &h);
    CHECK(fake.fakecuda_device_access(0, va, 2 * MiB, 1) == CUDA_SUCCESS);
    CHECK(fake.fakecuda_device_access(1, va, 2 * MiB, 0) == CUDA_ERROR_ILLEGAL_ADDRESS);
    /* A mapping starts inaccessible; after an unmap and a new map, access is set again. */
    uint64_t h2;
    CHECK_OK(fli_dev_unmap(d, va, 2 * MiB));
    CHECK_OK(fli_dev_create(d, 2 * MiB, &h2));
    CHECK_OK(fli_dev_map(d, va, 2 * MiB, h2));
    CHECK(fake.fakecuda_device_access(0, va, 2 * MiB, 0) == CUDA_ERROR_ILLEGAL_ADDRESS);
    CHECK_OK(fli_dev_set_access(d, va, 2 * MiB));
    CHECK(fake.fakecuda_device_access(0, va, 2 * MiB, 0) == CUDA_SUCCESS);
    CHECK_OK(fli_dev_release(d, h));
    unmap_one(d, va, h2);
    fl_device_destroy(d);
}

/* The handles: exportable as file descriptors, and fabric handles where the GPU reports
 * them, with the GPUDirect RDMA flag where the attribute says so (what NCCL's user-buffer
 * registration, UCX/NIXL and dmabuf need); a GPU whose fabric support fails at
 * cuMemCreate (no IMEX channel) gets file descriptors, and stops asking for fabric;
 * shareable:0 makes plain handles. Before, every handle was type NONE without the flag. */
static void test_handles(void)
{
    unsigned types = 0;
    int rdma = 0;
    fl_device *d = make_dev();
    uint64_t h, va = map_one(d, &h);
    CHECK(fake.fakecuda_handle_props(va, &types, &rdma) == 0);
    CHECK(types == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR && rdma == 1);
    unmap_one(d, va, h);
    fl_device_destroy(d);

    static const char *const fabric[] = {"FAKECUDA_FABRIC", "1", "FAKECUDA_RDMA", "0", NULL};
    fake_env(fabric);
    d = make_dev();
    va = map_one(d, &h);
    CHECK(fake.fakecuda_handle_props(va, &types, &rdma) == 0);
    CHECK(types == (CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR | CU_MEM_HANDLE_TYPE_FABRIC) && rdma == 0);
    unmap_one(d, va, h);
    fl_device_destroy(d);

    static const char *const denied[] = {"FAKECUDA_FABRIC", "2", "FAKECUDA_RDMA", "1", NULL};
    fake_env(denied);
    d = make_dev();
    va = map_one(d, &h);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemCreate"), 2); /* refused with fabric, then without */
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), 1);
    CHECK_EQ_U64(counters(d).failed_calls, 0);
    CHECK(fake.fakecuda_handle_props(va, &types, &rdma) == 0);
    CHECK(types == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR && rdma == 1);
    uint64_t h2;
    CHECK_OK(fli_dev_create(d, 2 * MiB, &h2));
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemCreate"), 3); /* fabric is not asked again */
    CHECK_OK(fli_dev_release(d, h2));
    unmap_one(d, va, h);
    fl_device_destroy(d);

    d = make_dev_with(0, 1, 0);
    va = map_one(d, &h);
    CHECK(fake.fakecuda_handle_props(va, &types, &rdma) == 0);
    CHECK(types == CU_MEM_HANDLE_TYPE_NONE && rdma == 0);
    fl_ipc_piece x;
    uint32_t nx = 7;
    uint64_t off = 0;
    CHECK_STATUS(fli_dev_export(d, va, 4096, &x, 1, &nx, &off), FL_ERR_UNSUPPORTED);
    CHECK(nx == 0);
    CHECK_MENTIONS("shareable:0");
    unmap_one(d, va, h);
    fl_device_destroy(d);

    /* A GPU without file-descriptor export (attribute 103 is 0): plain handles. */
    static const char *const no_fd[] = {"FAKECUDA_FABRIC", "0", "FAKECUDA_POSIX_FD", "0", NULL};
    fake_env(no_fd);
    d = make_dev();
    va = map_one(d, &h);
    CHECK(fake.fakecuda_handle_props(va, &types, &rdma) == 0);
    CHECK(types == CU_MEM_HANDLE_TYPE_NONE);
    unmap_one(d, va, h);
    fl_device_destroy(d);
}

/* ---- driver errors ------------------------------------------------------------------ */

static void test_errors(void)
{
    fl_device *d = make_dev();
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, h, a;
    char want[160];

    /* The driver's verdicts, with its names for them. */
    snprintf(want, sizeof want, "cuda cuMemCreate(%llu bytes, device 0): CUDA_ERROR_INVALID_VALUE (1)",
             (unsigned long long)(G / 2));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_INVALID, want, fli_dev_create(d, G / 2, &h));
    snprintf(want, sizeof want, "cuda cuMemCreate(%llu bytes, device 0): CUDA_ERROR_OUT_OF_MEMORY (2)",
             (unsigned long long)(64 * MiB + G));
    EXPECT_REFUSED(d, FL_CALL_CREATE, FL_ERR_OOM, want, fli_dev_create(d, 64 * MiB + G, &h));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_OOM, "cuMemAlloc_v2(67108865 bytes): CUDA_ERROR_OUT_OF_MEMORY",
                   fli_dev_mem_alloc(d, 64 * MiB + 1, &a));
    EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, FL_ERR_INVALID, "CUDA_ERROR_INVALID_VALUE", fli_dev_mem_alloc(d, 0, &a));
    EXPECT_REFUSED(d, FL_CALL_RESERVE, FL_ERR_INVALID, "cuMemAddressReserve", fli_dev_reserve(d, G + 512, &va));

    /* Each class of CUresult, from a driver call the device layer does not count
     * (cuCtxGetCurrent, made before every call): the status, the driver's name for the
     * error or its number. Device calls themselves are failed by the device layer's
     * injector (test_device_contract). */
    struct {
        CUresult err;
        fl_status want;
        const char *name;
    } cases[] = {
        {CUDA_ERROR_NOT_SUPPORTED, FL_ERR_UNSUPPORTED, "cuda cuCtxGetCurrent(): CUDA_ERROR_NOT_SUPPORTED (801)"},
        {CUDA_ERROR_UNKNOWN, FL_ERR_DEVICE, "CUDA_ERROR_UNKNOWN (999)"},
        {CUDA_ERROR_OUT_OF_MEMORY, FL_ERR_OOM, "CUDA_ERROR_OUT_OF_MEMORY (2)"},
        {CUDA_ERROR_INVALID_VALUE, FL_ERR_INVALID, "CUDA_ERROR_INVALID_VALUE (1)"},
        {CUDA_ERROR_ALREADY_MAPPED, FL_ERR_INVALID, "CUDA_ERROR_ALREADY_MAPPED (208)"},
        {CUDA_ERROR_INVALID_CONTEXT, FL_ERR_DEVICE, "CUDA_ERROR_INVALID_CONTEXT (201)"},
        {CUDA_ERROR_NOT_INITIALIZED, FL_ERR_DEVICE, "CUDA_ERROR_NOT_INITIALIZED (3)"},
        {12345, FL_ERR_DEVICE, "unrecognized CUresult (12345)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake.fakecuda_fail_call("cuCtxGetCurrent", 1, cases[i].err);
        switch (i % 4) {
        case 0: EXPECT_REFUSED(d, FL_CALL_CREATE, cases[i].want, cases[i].name, fli_dev_create(d, G, &h)); break;
        case 1: EXPECT_REFUSED(d, FL_CALL_RESERVE, cases[i].want, cases[i].name, fli_dev_reserve(d, G, &va)); break;
        case 2: EXPECT_REFUSED(d, FL_CALL_MEM_ALLOC, cases[i].want, cases[i].name, fli_dev_mem_alloc(d, 512, &a)); break;
        default: EXPECT_REFUSED(d, FL_CALL_SYNC, cases[i].want, cases[i].name, fli_dev_synchronize(d)); break;
        }
    }

    /* The driver refusing what the device thought valid (other code in the process freed
     * it behind the device's back): the state stays as the driver left it. Two mappings
     * in one unmap, the second gone already: the first is unmapped and accounted. */
    uint64_t h2;
    CHECK_OK(fli_dev_reserve(d, 4 * G, &va));
    CHECK_OK(fli_dev_create(d, G, &h));
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_map(d, va, G, h));
    CHECK_OK(fli_dev_map(d, va + G, G, h2));
    CHECK_OK(fli_dev_release(d, h));
    program_enter(0);
    CHECK(fake.cuMemUnmap(va + G, G) == CUDA_SUCCESS);
    program_leave(0);
    CHECK_STATUS(fli_dev_unmap(d, va, 2 * G), FL_ERR_INVALID);
    CHECK_MENTIONS("cuMemUnmap");
    CHECK_MENTIONS(fl_test_hex(va + G));
    CHECK_EQ_U64(in_use(d), G); /* h went with its last mapping; h2 is still live */
    CHECK_STATUS(fli_dev_unmap(d, va, G), FL_ERR_INVALID);
    /* A cudaMalloc block freed elsewhere: the device's count keeps it. */
    CHECK_OK(fli_dev_mem_alloc(d, 512, &a));
    program_enter(0);
    CHECK(fake.cuMemFree_v2(a) == CUDA_SUCCESS);
    program_leave(0);
    EXPECT_REFUSED(d, FL_CALL_MEM_FREE, FL_ERR_INVALID, "cuMemFree_v2", fli_dev_mem_free(d, a));
    CHECK_EQ_U64(in_use(d), G + 512);

    /* Events: a failed record destroys the event it created. */
    unsigned long long destroys = fake.fakecuda_calls("cuEventDestroy_v2");
    uint64_t ev = 7;
    fake.fakecuda_fail_call("cuEventRecord", 1, CUDA_ERROR_INVALID_CONTEXT);
    CHECK_STATUS(fli_dev_event_record(d, 0x7f00aa00, &ev), FL_ERR_DEVICE);
    CHECK_MENTIONS("cuEventRecord(stream 0x7f00aa00): CUDA_ERROR_INVALID_CONTEXT (201)");
    CHECK_EQ_U64(fake.fakecuda_calls("cuEventDestroy_v2"), destroys + 1);
    fake.fakecuda_fail_call("cuEventCreate", 1, CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_STATUS(fli_dev_event_record(d, 0, &ev), FL_ERR_OOM);
    CHECK_MENTIONS("cuEventCreate");
    fl_device_destroy(d); /* gives back what it still holds; the driver refuses the rest */
}

/* Left behind by its user: destroy gives everything back to the driver. */
static void test_leftovers(void)
{
    fl_device *d = make_dev();
    const uint64_t G = fl_device_granularity(d);
    uint64_t va, h, h2, a;
    CHECK_OK(fli_dev_reserve(d, 4 * G, &va));
    CHECK_OK(fli_dev_create(d, G, &h));
    CHECK_OK(fli_dev_create(d, G, &h2));
    CHECK_OK(fli_dev_map(d, va, G, h));
    CHECK_OK(fli_dev_map(d, va + G, G, h2));
    CHECK_OK(fli_dev_release(d, h2));
    CHECK_OK(fli_dev_mem_alloc(d, 5000, &a));
    fl_device_destroy(d);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemUnmap"), 2);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemRelease"), 2);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemAddressFree"), 1);
    CHECK_EQ_U64(fake.fakecuda_calls("cuMemFree_v2"), 1);
    /* The double has its whole capacity again. */
    d = make_dev();
    CHECK_OK(fli_dev_create(d, fl_device_capacity(d), &h));
    CHECK_OK(fli_dev_release(d, h));
    fl_device_destroy(d);
}

/* ---- policies on the device --------------------------------------------------------- */

#define CHECK_POLICY(p, step)                                                          \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if ((p)->ops->check(p) != 0) {                                                 \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: %s step %d: self-check failed: %s\n", __FILE__,    \
                    __LINE__, (p)->ops->name, step, fl_last_error());                  \
        }                                                                              \
    } while (0)

typedef struct live_block {
    uint64_t addr, size, id;
} live_block;

/* Stamps: the first and the last 8 bytes of a block (all of it when shorter). */
static void stamp(const live_block *b)
{
    uint64_t n = b->size < 16 ? b->size : 8;
    fill(b->addr, n, b->id);
    if (b->size >= 16)
        fill(b->addr + b->size - 8, 8, b->id + 1);
}
static int stamp_intact(const live_block *b)
{
    uint64_t n = b->size < 16 ? b->size : 8;
    return verify(b->addr, n, b->id) == UINT64_MAX &&
           (b->size < 16 || verify(b->addr + b->size - 8, 8, b->id + 1) == UINT64_MAX);
}

/* A seeded alloc/free sequence on two streams with the self-check after every step;
 * every block carries stamps, checked when it is freed. */
static void run_policy(const char *name, uint64_t seed)
{
    fl_device *d = make_dev();
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.publish = 0; /* children end with _exit: no file left in /dev/shm */
    snprintf(cfg.policy, sizeof cfg.policy, "%s", name);
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    if (!p) {
        fl_device_destroy(d);
        return;
    }
    enum { MAXN = 96, STEPS = 3000 };
    live_block v[MAXN];
    int n = 0, ooms = 0;
    fl_rng rng = {seed};
    for (int step = 0; step < STEPS; step++) {
        if (n < MAXN && (n == 0 || fl_rng_below(&rng, 100) < 55)) {
            uint64_t r = fl_rng_below(&rng, 10), allocated = p->allocated;
            uint64_t size = r < 6 ? 1 + fl_rng_below(&rng, 64 * KiB)
                          : r < 9 ? 64 * KiB + fl_rng_below(&rng, 4 * MiB)
                                  : 4 * MiB + fl_rng_below(&rng, 12 * MiB);
            live_block b = {0, size, (uint64_t)step};
            fl_status s = p->ops->alloc(p, size, fl_rng_below(&rng, 2) ? 0 : 0x7f00aa00, &b.addr);
            if (s == FL_ERR_OOM) {
                ooms++;
                CHECK_EQ_U64(p->allocated, allocated); /* a failed request changes nothing */
            } else {
                CHECK_OK(s);
                if (s != FL_OK)
                    break;
                stamp(&b);
                v[n++] = b;
            }
        } else {
            int i = (int)fl_rng_below(&rng, (uint64_t)n);
            fl_test_checks++;
            if (!stamp_intact(&v[i])) {
                fl_test_failures++;
                fprintf(stderr, "%s:%d: %s step %d: block %s of %llu bytes lost its stamps\n", __FILE__,
                        __LINE__, name, step, fl_test_hex(v[i].addr), (unsigned long long)v[i].size);
                break;
            }
            CHECK_OK(p->ops->free(p, v[i].addr, 0, NULL));
            v[i] = v[--n];
        }
        CHECK(in_use(d) <= fl_device_capacity(d));
        CHECK_POLICY(p, step);
    }
    while (n > 0)
        CHECK_OK(p->ops->free(p, v[--n].addr, 0, NULL));
    CHECK_OK(p->ops->empty_cache(p));
    CHECK_POLICY(p, STEPS);
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_counters c = counters(d);
    printf("  %-15s %4d OOMs, peak %llu MiB, %llu creates, %llu maps, %llu unmaps, %llu syncs, %.0f us in the driver\n",
           name, ooms, (unsigned long long)(c.peak_in_use / MiB), (unsigned long long)c.calls[FL_CALL_CREATE],
           (unsigned long long)c.calls[FL_CALL_MAP], (unsigned long long)c.calls[FL_CALL_UNMAP],
           (unsigned long long)c.calls[FL_CALL_SYNC], c.time_us);
    fl_device_destroy(d);
}

static void test_policies(void)
{
    run_policy("fragless", 0x5eed1);
    run_policy("cca", 0x5eed2);
    run_policy("cca-expandable", 0x5eed3);
}

/* ---- data integrity across reclaim -------------------------------------------------- */

typedef struct blocks {
    live_block v[256];
    int n;
} blocks;

static int alloc_filled(fli_policy *p, blocks *b, uint64_t size, uint64_t stream, uint64_t id)
{
    uint64_t addr = 0;
    fl_status s = p->ops->alloc(p, size, stream, &addr);
    if (s != FL_OK)
        return 0;
    /* A fresh block is readable and writable over its whole size. */
    fill(addr, size, id);
    CHECK(verify(addr, size, id) == UINT64_MAX);
    b->v[b->n++] = (live_block){addr, size, id};
    return 1;
}

static void verify_all(const blocks *b, const char *when)
{
    for (int i = 0; i < b->n; i++) {
        uint64_t w = verify(b->v[i].addr, b->v[i].size, b->v[i].id);
        fl_test_checks++;
        if (w != UINT64_MAX) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: %s: block %s (%llu bytes) differs at byte %llu\n", __FILE__, __LINE__,
                    when, fl_test_hex(b->v[i].addr), (unsigned long long)b->v[i].size, (unsigned long long)w);
        }
    }
}

/* fragless on 64 MiB: fill blocks with patterns, free some, then ask for more than the
 * cached pages from another stream, so cached pages are unmapped and their handles mapped
 * into another heap; every block still live must read back intact. */
static void test_data_integrity(void)
{
    fl_device *d = make_dev();
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.publish = 0; /* children end with _exit: no file left in /dev/shm */
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    if (!p) {
        fl_device_destroy(d);
        return;
    }
    static blocks b;
    fl_rng rng = {0xda7a};
    uint64_t id = 1, live = 0;
    const uint64_t A = 0, B = 0x7f00aa00;
    /* Stream A: about 48 of the 64 MiB, sizes from 1 B to 6 MiB. */
    while (live < 48 * MiB) {
        uint64_t r = fl_rng_below(&rng, 4);
        uint64_t size = r == 0 ? 1 + fl_rng_below(&rng, 4 * KiB)
                      : r == 1 ? 1 + fl_rng_below(&rng, 256 * KiB)
                               : 256 * KiB + fl_rng_below(&rng, 6 * MiB);
        if (!alloc_filled(p, &b, size, A, id++))
            break;
        live += size;
        CHECK_POLICY(p, (int)id);
    }
    verify_all(&b, "after filling");
    /* Free every other block: their pages go to the cache (still mapped in A's heap). */
    for (int i = b.n - 1; i >= 0; i -= 2) {
        CHECK_OK(p->ops->free(p, b.v[i].addr, 0, NULL));
        b.v[i] = b.v[--b.n];
    }
    verify_all(&b, "after freeing half");
    uint64_t unmaps = calls(d, FL_CALL_UNMAP), syncs = calls(d, FL_CALL_SYNC);
    /* Stream B: whole-page blocks until no more fit; they need pages reclaimed from A. */
    int got = 0;
    for (int k = 0; k < 64; k++) {
        if (!alloc_filled(p, &b, 2 * MiB, B, id++))
            break;
        got++;
        CHECK_POLICY(p, (int)id);
        verify_all(&b, "while reclaiming");
    }
    CHECK(got > 0);
    CHECK(calls(d, FL_CALL_UNMAP) > unmaps); /* pages really moved */
    CHECK(calls(d, FL_CALL_SYNC) > syncs);   /* after a synchronize */
    verify_all(&b, "after reclaim");
    printf("  integrity: %d blocks live, %d pages taken by stream B, %llu unmaps, %llu maps\n", b.n, got,
           (unsigned long long)calls(d, FL_CALL_UNMAP), (unsigned long long)calls(d, FL_CALL_MAP));

    /* Churn: random frees and allocations on both streams, verifying everything each round. */
    for (int round = 0; round < 40; round++) {
        for (int k = 0; k < 4 && b.n > 0; k++) {
            int i = (int)fl_rng_below(&rng, (uint64_t)b.n);
            CHECK_OK(p->ops->free(p, b.v[i].addr, 0, NULL));
            b.v[i] = b.v[--b.n];
        }
        for (int k = 0; k < 4 && b.n < 256; k++) {
            uint64_t size = 1 + fl_rng_below(&rng, fl_rng_below(&rng, 2) ? 64 * KiB : 5 * MiB);
            alloc_filled(p, &b, size, fl_rng_below(&rng, 2) ? A : B, id++);
        }
        CHECK_POLICY(p, round);
        verify_all(&b, "during churn");
    }
    CHECK(in_use(d) <= fl_device_capacity(d));
    while (b.n > 0)
        CHECK_OK(p->ops->free(p, b.v[--b.n].addr, 0, NULL));
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* ---- driver ------------------------------------------------------------------------- */

/* Each case in its own process: a fresh double with its own environment, and a crash is
 * reported without stopping the others. */
static void run_case(const char *what, void (*fn)(void), int no_vmm)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("FAKECUDA_CAPACITY", "64M", 1);
        if (fn == test_contexts)
            setenv("FAKECUDA_DEVICES", "2", 1);
        if (fn == test_peers)
            setenv("FAKECUDA_DEVICES", "3", 1);
        if (no_vmm)
            setenv("FAKECUDA_NO_VMM", "1", 1);
        load_fake();
        fl_test_failures = 0;
        fl_test_checks = 0;
        fn();
        if (fl_test_failures)
            fprintf(stderr, "%s: %d of %d checks failed\n", what, fl_test_failures, fl_test_checks);
        else
            printf("%s: ok, %d checks\n", what, fl_test_checks);
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    fl_test_checks++;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fl_test_failures++;
        if (pid > 0 && WIFSIGNALED(status))
            fprintf(stderr, "%s: crashed with signal %d (%s)\n", what, WTERMSIG(status), strsignal(WTERMSIG(status)));
        else
            fprintf(stderr, "%s: failed (above)\n", what);
    }
}

int main(void)
{
    if (!fake_path[0])
        fl_test_skip("FAKECUDA_PATH is not defined: the CUDA driver test double was not built");
    void *lib = dlopen(fake_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        char why[600];
        snprintf(why, sizeof why, "the CUDA driver test double cannot be loaded: %s", dlerror());
        fl_test_skip(why);
    }
    dlclose(lib); /* each case loads its own, in its own process */
    run_case("create", test_create, 0);
    run_case("no vmm", test_no_vmm, 1);
    run_case("ops", test_ops, 0);
    run_case("unmap fallback", test_unmap_fallback, 0);
    run_case("threads", test_threads, 0);
    run_case("contexts", test_contexts, 0);
    run_case("peers", test_peers, 0);
    run_case("handles", test_handles, 0);
    run_case("errors", test_errors, 0);
    run_case("leftovers", test_leftovers, 0);
    run_case("policies", test_policies, 0);
    run_case("data integrity", test_data_integrity, 0);
    return fl_test_done("test_cuda_device");
}
