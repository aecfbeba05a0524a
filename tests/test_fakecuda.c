/* The CUDA driver test double (tests/fakecuda), loaded with dlopen and called by the names
 * of FL_CUDA_FUNCTIONS as the cuda device calls the real driver: initialization and context
 * rules, the driver API's details that the cuda device never sends it wrong (flags,
 * properties, access descriptors, partial unmaps, offsets), host protections, data kept
 * across remapping, events, its own fault injection, configuration from the environment,
 * and several threads at once. The rules the cuda device passes on to it (alignment,
 * reservations, mappings, capacity, memory freed when released and unmapped) are checked
 * through the device in test_device_contract. */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_api.h"
#include "fakecuda/fakecuda.h"
#include "test_support.h"

#ifndef FAKECUDA_PATH
#error "define FAKECUDA_PATH as the path of libfakecuda.so"
#endif

#define MiB ((size_t)1 << 20)
#define GRAN (2 * MiB)
#define STREAM(n) ((CUstream)(uintptr_t)(n)) /* streams are ids the caller invents */

/* The driver's entry points, resolved by their contract names, and the double's controls. */
#define FN_FIELD(name, params) CUresult (*name) params;
static struct { FL_CUDA_FUNCTIONS(FN_FIELD) } cu;
static struct {
    unsigned long long (*calls)(const char *fn);
    void (*fail_call)(const char *fn, unsigned long long n, CUresult err);
    void (*set_auto_complete)(int on);
    void (*complete_all)(void);
    void (*reset)(void);
    CUresult (*device_access)(int dev, CUdeviceptr va, size_t n, int write);
    int (*handle_props)(CUdeviceptr va, unsigned *types, int *rdma);
    int (*ctx_depth)(void);
    size_t (*used)(int dev);
    CUresult (*begin_capture)(CUstream stream, CUstreamCaptureMode mode);
    CUresult (*capture_use)(CUstream stream, CUdeviceptr ptr, size_t size);
    CUresult (*end_capture)(CUstream stream, unsigned long long *graph);
    CUresult (*graph_launch)(unsigned long long graph);
    unsigned long long (*violations)(void);
    unsigned long long (*graph_faults)(void);
    void (*stream_create)(CUstream stream, CUcontext ctx);
    void (*stream_destroy)(CUstream stream);
} fc;
static void *lib;
static CUcontext ctx0; /* device 0's primary context, current on the main thread */

#define CHECK_CU(expr, want)                                                               \
    do {                                                                                   \
        CUresult r_ = (expr);                                                              \
        fl_test_checks++;                                                                  \
        if (r_ != (CUresult)(want)) {                                                      \
            fl_test_failures++;                                                            \
            fprintf(stderr, "%s:%d: %s returned %d, want %d\n", __FILE__, __LINE__, #expr, \
                    (int)r_, (int)(want));                                                 \
        }                                                                                  \
    } while (0)
#define CU_OK(expr) CHECK_CU(expr, CUDA_SUCCESS)

/* ---- helpers ------------------------------------------------------------------------ */

static void resolve(void *fnptr, const char *name)
{
    if (!fl_test_sym(lib, name, fnptr))
        exit(1);
}

static void load(void)
{
    lib = fl_test_fakecuda();
    if (!lib)
        exit(1);
#define FN_RESOLVE(name, params) resolve(&cu.name, #name);
    FL_CUDA_FUNCTIONS(FN_RESOLVE)
    resolve(&fc.calls, "fakecuda_calls");
    resolve(&fc.fail_call, "fakecuda_fail_call");
    resolve(&fc.set_auto_complete, "fakecuda_set_auto_complete");
    resolve(&fc.complete_all, "fakecuda_complete_all");
    resolve(&fc.reset, "fakecuda_reset");
    resolve(&fc.device_access, "fakecuda_device_access");
    resolve(&fc.handle_props, "fakecuda_handle_props");
    resolve(&fc.ctx_depth, "fakecuda_ctx_depth");
    resolve(&fc.used, "fakecuda_used");
    resolve(&fc.begin_capture, "fakecuda_begin_capture");
    resolve(&fc.capture_use, "fakecuda_capture_use");
    resolve(&fc.end_capture, "fakecuda_end_capture");
    resolve(&fc.graph_launch, "fakecuda_graph_launch");
    resolve(&fc.violations, "fakecuda_capture_violations");
    resolve(&fc.graph_faults, "fakecuda_graph_faults");
    resolve(&fc.stream_create, "fakecuda_stream_create");
    resolve(&fc.stream_destroy, "fakecuda_stream_destroy");
}

/* Sets (value non-NULL) or clears one variable, then has the double re-read them all. */
static void env(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
    fc.reset();
}

static CUmemAllocationProp prop_on(int dev)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = dev;
    return p;
}

static CUmemAccessDesc access_on(int dev, CUmemAccess_flags flags)
{
    CUmemAccessDesc d;
    memset(&d, 0, sizeof d);
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = dev;
    d.flags = flags;
    return d;
}

static CUresult create(CUmemGenericAllocationHandle *h, size_t size)
{
    CUmemAllocationProp p = prop_on(0);
    return cu.cuMemCreate(h, size, &p, 0);
}

static CUresult allow_rw(CUdeviceptr va, size_t size)
{
    CUmemAccessDesc d = access_on(0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    return cu.cuMemSetAccess(va, size, &d, 1);
}

static size_t free_mem(void)
{
    size_t f = 0, t = 0;
    CU_OK(cu.cuMemGetInfo_v2(&f, &t));
    return f;
}

/* The host's protection of the page at va as /proc/self/maps shows it ("rw-s": a shared,
 * i.e. memfd, mapping; "---p": reserved address space), or "" when nothing is mapped. */
static const char *prot_at(CUdeviceptr va)
{
    static char prot[8];
    char line[512];
    prot[0] = '\0';
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return prot;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char p[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, p) == 3 && lo <= va && va < hi) {
            strcpy(prot, p);
            break;
        }
    }
    fclose(f);
    return prot;
}

static void fill(CUdeviceptr va, size_t bytes, uint64_t seed)
{
    fl_rng r = { seed | 1 };
    uint64_t *p = (uint64_t *)(uintptr_t)va;
    for (size_t i = 0; i < bytes / 8; i++)
        p[i] = fl_rng_next(&r);
}

static int holds(CUdeviceptr va, size_t bytes, uint64_t seed)
{
    fl_rng r = { seed | 1 };
    const uint64_t *p = (const uint64_t *)(uintptr_t)va;
    for (size_t i = 0; i < bytes / 8; i++)
        if (p[i] != fl_rng_next(&r))
            return 0;
    return 1;
}

/* ---- initialization and contexts ------------------------------------------------------ */

static void *current_elsewhere(void *arg)
{
    CUcontext c = (CUcontext)arg;
    if (cu.cuCtxGetCurrent(&c) != CUDA_SUCCESS)
        return arg;
    return c; /* NULL: a new thread has no current context */
}

static void test_init_and_contexts(void)
{
    int n = -1, v = 0;
    CUdevice d = -1;
    size_t total = 0, f = 0, t = 0;
    CU_OK(cu.cuDriverGetVersion(&v)); /* works before cuInit, as in the driver */
    CHECK(v >= 12000);
    CHECK_CU(cu.cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_CU(cu.cuDevicePrimaryCtxRetain(&ctx0, 0), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_CU(cu.cuMemGetInfo_v2(&f, &t), CUDA_ERROR_NOT_INITIALIZED);
    CHECK_CU(cu.cuInit(1), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuInit(0));
    CU_OK(cu.cuInit(0));
    CHECK_EQ_U64(fc.calls("cuInit"), 3);

    CU_OK(cu.cuDeviceGetCount(&n));
    CHECK_EQ_U64(n, 1);
    CU_OK(cu.cuDeviceGet(&d, 0));
    CHECK_EQ_U64(d, 0);
    CHECK_CU(cu.cuDeviceGet(&d, 1), CUDA_ERROR_INVALID_DEVICE);
    CU_OK(cu.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    CHECK_EQ_U64(v, 1);
    CHECK_CU(cu.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1),
             CUDA_ERROR_INVALID_DEVICE);
    CU_OK(cu.cuDeviceTotalMem_v2(&total, 0));
    CHECK_EQ_U64(total, (size_t)1 << 30);

    /* No current context: every memory, stream and event call refuses. */
    CUcontext c = (CUcontext)&n;
    CU_OK(cu.cuCtxGetCurrent(&c));
    CHECK(c == NULL);
    CUdeviceptr p;
    CUmemGenericAllocationHandle h;
    CUevent e;
    CHECK_CU(cu.cuMemGetInfo_v2(&f, &t), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuMemAlloc_v2(&p, 64), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(create(&h, GRAN), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuMemAddressReserve(&p, GRAN, 0, 0, 0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuEventCreate(&e, 0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuStreamSynchronize(STREAM(0)), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuCtxSetCurrent((CUcontext)&n), CUDA_ERROR_INVALID_CONTEXT);

    /* The primary context: reference counted, the same context each time. */
    CUcontext again = NULL;
    CU_OK(cu.cuDevicePrimaryCtxRetain(&ctx0, 0));
    CU_OK(cu.cuDevicePrimaryCtxRetain(&again, 0));
    CHECK(ctx0 != NULL && again == ctx0);
    CHECK_CU(cu.cuDevicePrimaryCtxRetain(&again, 1), CUDA_ERROR_INVALID_DEVICE);
    CU_OK(cu.cuCtxSetCurrent(ctx0));
    CU_OK(cu.cuCtxGetCurrent(&c));
    CHECK(c == ctx0);
    CU_OK(cu.cuMemGetInfo_v2(&f, &t));
    CHECK_EQ_U64(f, total);
    CHECK_EQ_U64(t, total);
    pthread_t th;
    void *seen = ctx0;
    CHECK(pthread_create(&th, NULL, current_elsewhere, ctx0) == 0);
    pthread_join(th, &seen);
    CHECK(seen == NULL); /* current contexts are per thread */

    CU_OK(cu.cuDevicePrimaryCtxRelease_v2(0));
    CU_OK(cu.cuMemGetInfo_v2(&f, &t)); /* one reference left */
    CU_OK(cu.cuDevicePrimaryCtxRelease_v2(0));
    CHECK_CU(cu.cuMemGetInfo_v2(&f, &t), CUDA_ERROR_INVALID_CONTEXT); /* inactive now */
    CHECK_CU(cu.cuDevicePrimaryCtxRelease_v2(0), CUDA_ERROR_INVALID_CONTEXT);
    CHECK_CU(cu.cuCtxSetCurrent(ctx0), CUDA_ERROR_INVALID_CONTEXT);
    CU_OK(cu.cuDevicePrimaryCtxRetain(&again, 0));
    CHECK(again == ctx0);
    CU_OK(cu.cuMemGetInfo_v2(&f, &t)); /* still current on this thread, active again */
    CU_OK(cu.cuCtxSetCurrent(NULL));
    CHECK_CU(cu.cuMemGetInfo_v2(&f, &t), CUDA_ERROR_INVALID_CONTEXT);
    CU_OK(cu.cuCtxSetCurrent(ctx0));
}

static void test_granularity(void)
{
    size_t g = 0;
    CUmemAllocationProp p = prop_on(0);
    CU_OK(cu.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CHECK_EQ_U64(g, GRAN);
    g = 0;
    CU_OK(cu.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    CHECK_EQ_U64(g, GRAN);
    CHECK_CU(cu.cuMemGetAllocationGranularity(&g, NULL, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
             CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemGetAllocationGranularity(NULL, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
             CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemGetAllocationGranularity(&g, &p, (CUmemAllocationGranularity_flags)7),
             CUDA_ERROR_INVALID_VALUE);
    p.type = CU_MEM_ALLOCATION_TYPE_INVALID;
    CHECK_CU(cu.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
             CUDA_ERROR_INVALID_VALUE);
    p = prop_on(0);
    p.location.type = CU_MEM_LOCATION_TYPE_INVALID;
    CHECK_CU(cu.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
             CUDA_ERROR_INVALID_VALUE);
    p = prop_on(1);
    CHECK_CU(cu.cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
             CUDA_ERROR_INVALID_DEVICE);
}

/* ---- virtual memory: the happy path and data integrity -------------------------------- */

static void test_map_and_data(void)
{
    size_t free0 = free_mem();
    unsigned long long maps0 = fc.calls("cuMemMap");
    CUdeviceptr a = 0, b = 0;
    CU_OK(cu.cuMemAddressReserve(&a, 8 * MiB, 0, 0, 0));
    CU_OK(cu.cuMemAddressReserve(&b, 8 * MiB, 16 * MiB, 0, 0));
    CHECK(a && a % GRAN == 0);
    CHECK(b && b % (16 * MiB) == 0);
    CHECK(strcmp(prot_at(a), "---p") == 0); /* reserved, nothing behind it */
    CHECK_EQ_U64(free_mem(), free0);        /* address space costs no memory */

    CUmemGenericAllocationHandle h1 = 0, h2 = 0;
    CU_OK(create(&h1, 4 * MiB));
    CU_OK(create(&h2, GRAN));
    CHECK(h1 && h2 && h1 != h2);
    CHECK_EQ_U64(free_mem(), free0 - 6 * MiB);

    CU_OK(cu.cuMemMap(a, 4 * MiB, 0, h1, 0));
    CU_OK(cu.cuMemMap(a + 4 * MiB, GRAN, 0, h2, 0));
    CHECK(strcmp(prot_at(a), "---s") == 0); /* mapped, not accessible before set_access */
    CU_OK(allow_rw(a, 6 * MiB));
    CHECK(strcmp(prot_at(a), "rw-s") == 0);
    CHECK(strcmp(prot_at(a + 5 * MiB), "rw-s") == 0);
    fill(a, 4 * MiB, 11);
    fill(a + 4 * MiB, GRAN, 22);

    /* One call may unmap several whole mappings; the reservation comes back as it was. */
    CU_OK(cu.cuMemUnmap(a, 6 * MiB));
    CHECK(strcmp(prot_at(a), "---p") == 0);
    CHECK(strcmp(prot_at(a + 5 * MiB), "---p") == 0);
    CHECK_EQ_U64(free_mem(), free0 - 6 * MiB); /* not released: still charged */

    /* Mapped elsewhere, in the other order: each handle kept its own bytes. */
    CU_OK(cu.cuMemMap(b, GRAN, 0, h2, 0));
    CU_OK(cu.cuMemMap(b + GRAN, 4 * MiB, 0, h1, 0));
    CU_OK(allow_rw(b, 6 * MiB));
    CHECK(holds(b + GRAN, 4 * MiB, 11));
    CHECK(holds(b, GRAN, 22));

    /* One handle mapped twice at once: both views are the same memory. */
    CU_OK(cu.cuMemMap(a, 4 * MiB, 0, h1, 0));
    CU_OK(allow_rw(a, 4 * MiB));
    ((volatile unsigned char *)(uintptr_t)a)[12345] = 0x5a;
    CHECK(((volatile unsigned char *)(uintptr_t)(b + GRAN))[12345] == 0x5a);
    fill(a, 4 * MiB, 33);
    CHECK(holds(b + GRAN, 4 * MiB, 33));
    CHECK_EQ_U64(fc.calls("cuMemMap") - maps0, 5);

    CU_OK(cu.cuMemUnmap(a, 4 * MiB));
    CU_OK(cu.cuMemUnmap(b, GRAN));
    CU_OK(cu.cuMemUnmap(b + GRAN, 4 * MiB));
    CU_OK(cu.cuMemRelease(h1));
    CU_OK(cu.cuMemRelease(h2));
    CHECK_EQ_U64(free_mem(), free0);
    CU_OK(cu.cuMemAddressFree(a, 8 * MiB));
    CU_OK(cu.cuMemAddressFree(b, 8 * MiB));

    /* The requested address is a hint: honoured when free, never required. */
    CUdeviceptr c = 0;
    CU_OK(cu.cuMemAddressReserve(&c, GRAN, 0, a, 0));
    CHECK(c && c % GRAN == 0);
    CU_OK(cu.cuMemAddressFree(c, GRAN));
}

/* The two byte calls the double serves beyond the contract (for scripts/gpu_smoke.c):
 * refused where a GPU faults (nothing mapped, no access granted yet, no context), and
 * through a second mapping of a handle they reach the first one's bytes. */
static void test_byte_calls(void)
{
    CUresult (*memset_d8)(CUdeviceptr, unsigned char, size_t);
    CUresult (*memcpy_dtoh)(void *, CUdeviceptr, size_t);
    if (!fl_test_sym(lib, "cuMemsetD8_v2", &memset_d8) || !fl_test_sym(lib, "cuMemcpyDtoH_v2", &memcpy_dtoh)) {
        CHECK(!"the double has cuMemsetD8_v2 and cuMemcpyDtoH_v2");
        return;
    }
    CUdeviceptr a = 0, b = 0;
    CUmemGenericAllocationHandle h = 0;
    CU_OK(cu.cuMemAddressReserve(&a, 2 * GRAN, 0, 0, 0));
    CU_OK(cu.cuMemAddressReserve(&b, GRAN, 0, 0, 0));
    CU_OK(create(&h, GRAN));
    CHECK_CU(memset_d8(a, 1, 16), CUDA_ERROR_ILLEGAL_ADDRESS); /* nothing mapped */
    CU_OK(cu.cuMemMap(a, GRAN, 0, h, 0));
    CHECK_CU(memset_d8(a, 1, 16), CUDA_ERROR_ILLEGAL_ADDRESS); /* no access yet */
    CU_OK(allow_rw(a, GRAN));
    CHECK_CU(memset_d8(a + GRAN - 8, 1, 16), CUDA_ERROR_ILLEGAL_ADDRESS); /* runs past the mapping */
    CU_OK(memset_d8(a + GRAN / 2, 0x77, GRAN / 2));
    CU_OK(cu.cuMemMap(b, GRAN, 0, h, 0));
    CU_OK(allow_rw(b, GRAN));
    unsigned char buf[64] = {0};
    CU_OK(memcpy_dtoh(buf, b + GRAN - sizeof buf, sizeof buf));
    size_t same = 0;
    for (size_t i = 0; i < sizeof buf; i++)
        same += buf[i] == 0x77;
    CHECK_EQ_U64(same, sizeof buf);
    CUcontext popped = NULL;
    CU_OK(cu.cuCtxPopCurrent_v2(&popped));
    CHECK_CU(memcpy_dtoh(buf, b, sizeof buf), CUDA_ERROR_INVALID_CONTEXT);
    CU_OK(cu.cuCtxPushCurrent_v2(popped));
    CU_OK(cu.cuMemUnmap(a, GRAN));
    CU_OK(cu.cuMemUnmap(b, GRAN));
    CU_OK(cu.cuMemRelease(h));
    CU_OK(cu.cuMemAddressFree(a, 2 * GRAN));
    CU_OK(cu.cuMemAddressFree(b, GRAN));
}

/* ---- virtual memory: every broken rule is refused and changes nothing ------------------ */

static void test_rules(void)
{
    size_t free0 = free_mem();
    CUdeviceptr r = 0, r2 = 0, p = 0;
    CUmemGenericAllocationHandle h = 0, h2 = 0, x = 0;
    CUmemAllocationProp prop = prop_on(0);

    /* Reservations: alignments are granularity multiples, no flags. */
    CHECK_CU(cu.cuMemAddressReserve(&p, GRAN, 3 * MiB, 0, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemAddressReserve(&p, GRAN, 0, 0, 1), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemAddressReserve(NULL, GRAN, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemAddressReserve(&r, 8 * MiB, 0, 0, 0));
    CU_OK(cu.cuMemAddressReserve(&r2, 8 * MiB, 0, 0, 0));

    /* Handles: a valid prop, no flags; a refusal costs nothing. */
    CHECK_CU(create(NULL, GRAN), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemCreate(&x, GRAN, &prop, 1), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemCreate(&x, GRAN, NULL, 0), CUDA_ERROR_INVALID_VALUE);
    prop.location.id = 5;
    CHECK_CU(cu.cuMemCreate(&x, GRAN, &prop, 0), CUDA_ERROR_INVALID_DEVICE);
    prop = prop_on(0);
    prop.requestedHandleTypes = (CUmemAllocationHandleType)2; /* a Windows handle */
    CHECK_CU(cu.cuMemCreate(&x, GRAN, &prop, 0), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_EQ_U64(x, 0);
    CHECK_EQ_U64(free_mem(), free0);
    CU_OK(create(&h, 4 * MiB));
    CU_OK(create(&h2, GRAN));

    /* Maps: aligned, offset 0, no larger than the handle, no flags, a live handle. */
    CHECK_CU(cu.cuMemMap(r, 3 * MiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemMap(r, GRAN, GRAN, h, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemMap(r, 6 * MiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemMap(r, GRAN, 0, h2, 1), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemMap(r, GRAN, 0, h2 + 1000, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK(strcmp(prot_at(r), "---p") == 0);
    CHECK(strcmp(prot_at(r + 6 * MiB), "---p") == 0);
    CU_OK(cu.cuMemMap(r, GRAN, 0, h, 0)); /* part of a handle, from offset 0 */
    CU_OK(cu.cuMemUnmap(r, GRAN));

    CU_OK(cu.cuMemMap(r, 4 * MiB, 0, h, 0));
    CU_OK(allow_rw(r, 4 * MiB));
    fill(r, 4 * MiB, 44);

    /* Unmaps: whole mappings only, nothing unmapped in the range. */
    CHECK_CU(cu.cuMemUnmap(r, GRAN), CUDA_ERROR_INVALID_VALUE);            /* ends inside */
    CHECK_CU(cu.cuMemUnmap(r + GRAN, GRAN), CUDA_ERROR_INVALID_VALUE);     /* starts inside */
    CHECK_CU(cu.cuMemUnmap(r, 6 * MiB), CUDA_ERROR_INVALID_VALUE);         /* and a gap */
    CHECK_CU(cu.cuMemUnmap(r + 4 * MiB, GRAN), CUDA_ERROR_INVALID_VALUE);  /* nothing there */
    CHECK_CU(cu.cuMemUnmap(r, 4 * MiB + 4096), CUDA_ERROR_INVALID_VALUE);  /* unaligned */
    CHECK_CU(cu.cuMemUnmap(r2, GRAN), CUDA_ERROR_INVALID_VALUE);

    /* Access: a valid descriptor; may cover part of a mapping. */
    CUmemAccessDesc d = access_on(0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    CHECK_CU(cu.cuMemSetAccess(r, 4 * MiB, &d, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemSetAccess(r, 4 * MiB, NULL, 1), CUDA_ERROR_INVALID_VALUE);
    d = access_on(3, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    CHECK_CU(cu.cuMemSetAccess(r, 4 * MiB, &d, 1), CUDA_ERROR_INVALID_DEVICE);
    d = access_on(0, (CUmemAccess_flags)2);
    CHECK_CU(cu.cuMemSetAccess(r, 4 * MiB, &d, 1), CUDA_ERROR_INVALID_VALUE);
    d = access_on(0, CU_MEM_ACCESS_FLAGS_PROT_READ);
    CU_OK(cu.cuMemSetAccess(r + GRAN, GRAN, &d, 1));
    CHECK(strcmp(prot_at(r), "rw-s") == 0);
    CHECK(strcmp(prot_at(r + GRAN), "r--s") == 0);
    CU_OK(allow_rw(r, 4 * MiB));
    CHECK(holds(r, 4 * MiB, 44)); /* every refusal above left the data alone */

    /* Address frees: a whole reservation with nothing mapped. */
    CHECK_CU(cu.cuMemAddressFree(r, 8 * MiB), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemAddressFree(r2, 4 * MiB), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemAddressFree(r2 + GRAN, 6 * MiB), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemFree_v2(r), CUDA_ERROR_INVALID_VALUE); /* not cuMemAlloc memory */

    /* Release while mapped: the memory stays, charged and readable, until unmapped. */
    CU_OK(cu.cuMemRelease(h));
    CHECK_CU(cu.cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemMap(r2, 4 * MiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ_U64(free_mem(), free0 - 6 * MiB);
    CHECK(holds(r, 4 * MiB, 44));
    CU_OK(cu.cuMemUnmap(r, 4 * MiB));
    CHECK_EQ_U64(free_mem(), free0 - GRAN);
    CHECK_CU(cu.cuMemUnmap(r, 4 * MiB), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemRelease(h2));
    CHECK_CU(cu.cuMemRelease(h2), CUDA_ERROR_INVALID_VALUE);
    CHECK_EQ_U64(free_mem(), free0);
    CU_OK(cu.cuMemAddressFree(r, 8 * MiB));
    CHECK_CU(cu.cuMemAddressFree(r, 8 * MiB), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemAddressFree(r2, 8 * MiB));
}

/* ---- plain device memory, capacity, configuration ------------------------------------- */

static void test_mem_alloc(void)
{
    size_t free0 = free_mem(), f = 0, t = 0;
    CUdeviceptr p = 0, q = 0;
    CU_OK(cu.cuMemAlloc_v2(&p, 1000));
    CHECK(p && p % 256 == 0);
    CHECK_EQ_U64(free_mem(), free0 - 1024);
    memset((void *)(uintptr_t)p, 0xab, 1000); /* accessible at once, unlike a VMM mapping */
    CU_OK(cu.cuMemAlloc_v2(&q, 3 * MiB));
    CHECK(q && q != p);
    CHECK_EQ_U64(free_mem(), free0 - 1024 - 3 * MiB);
    CHECK_CU(cu.cuMemAlloc_v2(NULL, 64), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemGetInfo_v2(NULL, &t), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemGetInfo_v2(&f, NULL), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemFree_v2(p));
    CHECK_CU(cu.cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemFree_v2(0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuMemFree_v2(q + 256), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemFree_v2(q));
    CHECK_EQ_U64(free_mem(), free0);
}

/* Legacy IPC (outside FL_CUDA_FUNCTIONS: the runtime double forwards cudaIpc* here). The
 * rules of the double's comment: any address of a cuMemAlloc allocation gives the same
 * handle, the whole allocation's, opened at its start by another process; no handle for
 * other memory; the exporting process cannot open its own. */
typedef struct { char reserved[64]; } ipc_handle;
static void test_legacy_ipc(void)
{
    CUresult (*get)(ipc_handle *, CUdeviceptr) = NULL;
    CUresult (*open_h)(CUdeviceptr *, ipc_handle, unsigned) = NULL;
    CUresult (*close_h)(CUdeviceptr) = NULL;
    void *g = dlsym(lib, "cuIpcGetMemHandle"), *o = dlsym(lib, "cuIpcOpenMemHandle_v2"),
         *c = dlsym(lib, "cuIpcCloseMemHandle");
    CHECK(g && o && c);
    if (!g || !o || !c)
        return;
    memcpy(&get, &g, sizeof g);
    memcpy(&open_h, &o, sizeof o);
    memcpy(&close_h, &c, sizeof c);
    CUdeviceptr p = 0, q = 0;
    CU_OK(cu.cuMemAlloc_v2(&p, 3 * MiB));
    memset((void *)(uintptr_t)p, 0x5a, 3 * MiB);
    ipc_handle a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 1, sizeof b);
    CU_OK(get(&a, p));
    CU_OK(get(&b, p + MiB)); /* inside: the same handle */
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    CHECK(((unsigned char *)(uintptr_t)p)[3 * MiB - 1] == 0x5a); /* kept its bytes */
    ((unsigned char *)(uintptr_t)p)[MiB] = 0x77;                  /* and is still writable */
    int local = 0;
    CHECK_CU(get(&b, (CUdeviceptr)(uintptr_t)&local), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(open_h(&q, a, 1), CUDA_ERROR_INVALID_VALUE); /* its own handle */
    CHECK_CU(close_h(p), CUDA_ERROR_INVALID_VALUE);
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr m = 0;
        int rc = open_h(&m, a, 1) != CUDA_SUCCESS ? 3
                 : ((unsigned char *)(uintptr_t)m)[0] != 0x5a || ((unsigned char *)(uintptr_t)m)[MiB] != 0x77 ? 4
                                                                                                              : 0;
        if (rc == 0)
            ((unsigned char *)(uintptr_t)m)[1] = 0x11; /* seen by the exporter: the same memory */
        _exit(rc ? rc : close_h(m) == CUDA_SUCCESS ? 0 : 5);
    }
    int st = -1;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(((unsigned char *)(uintptr_t)p)[1] == 0x11);
    CU_OK(cu.cuMemFree_v2(p));
}

static void test_capacity(void)
{
    env("FAKECUDA_CAPACITY", "8M");
    size_t f = 0, t = 0, total = 0;
    CU_OK(cu.cuMemGetInfo_v2(&f, &t)); /* the context survived the reset */
    CHECK_EQ_U64(f, 8 * MiB);
    CHECK_EQ_U64(t, 8 * MiB);
    CU_OK(cu.cuDeviceTotalMem_v2(&total, 0));
    CHECK_EQ_U64(total, 8 * MiB);
    /* Full: a refusal writes nothing. */
    CUmemGenericAllocationHandle h = 0, x = 0;
    CUdeviceptr q = 0;
    CU_OK(create(&h, 8 * MiB));
    CHECK_CU(create(&x, GRAN), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_CU(cu.cuMemAlloc_v2(&q, 1), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_EQ_U64(x, 0);
    CHECK_EQ_U64(q, 0);
    CU_OK(cu.cuMemRelease(h));
    env("FAKECUDA_CAPACITY", NULL);
}

static void test_environment(void)
{
    int v = -1, n = -1;
    CUdeviceptr p = 0;
    CUmemGenericAllocationHandle h = 0;
    size_t g = 0;
    CUmemAllocationProp prop = prop_on(0);

    /* No VMM: the attribute says so, reserve and create refuse, cuMemAlloc still works. */
    env("FAKECUDA_NO_VMM", "1");
    CU_OK(cu.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    CHECK_EQ_U64(v, 0);
    CHECK_CU(create(&h, GRAN), CUDA_ERROR_NOT_SUPPORTED);
    CHECK_CU(cu.cuMemAddressReserve(&p, GRAN, 0, 0, 0), CUDA_ERROR_NOT_SUPPORTED);
    CU_OK(cu.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CU_OK(cu.cuMemAlloc_v2(&p, 4096));
    CU_OK(cu.cuMemFree_v2(p));
    env("FAKECUDA_NO_VMM", NULL);

    /* Another granularity. */
    env("FAKECUDA_GRANULARITY", "64K");
    CU_OK(cu.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CHECK_EQ_U64(g, 64 * 1024);
    CU_OK(create(&h, 64 * 1024));
    CU_OK(cu.cuMemRelease(h));
    env("FAKECUDA_GRANULARITY", NULL);

    /* Two devices, each with its own context and its own capacity. */
    env("FAKECUDA_DEVICES", "2");
    CUcontext ctx1 = NULL;
    CU_OK(cu.cuDeviceGetCount(&n));
    CHECK_EQ_U64(n, 2);
    CU_OK(cu.cuDevicePrimaryCtxRetain(&ctx1, 1));
    CHECK(ctx1 && ctx1 != ctx0);
    size_t free0 = free_mem();
    CU_OK(cu.cuCtxSetCurrent(ctx1));
    prop = prop_on(1);
    CU_OK(cu.cuMemCreate(&h, GRAN, &prop, 0));
    CHECK_EQ_U64(free_mem(), free0 - GRAN);
    CU_OK(cu.cuCtxSetCurrent(ctx0));
    CHECK_EQ_U64(free_mem(), free0);
    CU_OK(cu.cuMemRelease(h));
    prop = prop_on(2);
    CHECK_CU(cu.cuMemCreate(&h, GRAN, &prop, 0), CUDA_ERROR_INVALID_DEVICE);
    CU_OK(cu.cuDevicePrimaryCtxRelease_v2(1));

    env("FAKECUDA_DEVICES", "0");
    CHECK_CU(cu.cuInit(0), 100); /* CUDA_ERROR_NO_DEVICE */
    CU_OK(cu.cuDeviceGetCount(&n));
    CHECK_EQ_U64(n, 0);
    env("FAKECUDA_DEVICES", NULL);

    /* A malformed value: said on stderr, and the driver will not initialize. */
    fprintf(stderr, "(a complaint about FAKECUDA_CAPACITY=lots is expected next)\n");
    env("FAKECUDA_CAPACITY", "lots");
    CHECK_CU(cu.cuInit(0), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    env("FAKECUDA_CAPACITY", NULL);
    CU_OK(cu.cuInit(0));
    CHECK_EQ_U64(free_mem(), (size_t)1 << 30); /* the context is still retained and current */
}

/* ---- streams and events ------------------------------------------------------------- */

/* Another thread's work on its per-thread default stream (CU_STREAM_PER_THREAD): records
 * on it, or synchronizes it, as the test says (arg: 1 record, 2 synchronize). */
typedef struct {
    int what;
    CUevent e;
    CUresult r;
} per_thread_job;

static void *per_thread_work(void *arg)
{
    per_thread_job *j = arg;
    j->r = cu.cuCtxSetCurrent(ctx0);
    if (j->r == CUDA_SUCCESS)
        j->r = j->what == 1 ? cu.cuEventRecord(j->e, CU_STREAM_PER_THREAD) : cu.cuStreamSynchronize(CU_STREAM_PER_THREAD);
    return NULL;
}

static void per_thread_run(per_thread_job *j)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, per_thread_work, j) == 0 && pthread_join(t, NULL) == 0);
    CU_OK(j->r);
}

static void test_events(void)
{
    CUevent e = NULL, e2 = NULL;
    CHECK_CU(cu.cuEventCreate(&e, 0x80), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuEventCreate(NULL, 0), CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    CU_OK(cu.cuEventCreate(&e2, CU_EVENT_DEFAULT));
    CU_OK(cu.cuEventQuery(e)); /* never recorded: complete */

    CU_OK(cu.cuEventRecord(e, STREAM(0x10))); /* auto-complete: ordinary code never waits */
    CU_OK(cu.cuEventQuery(e));

    fc.set_auto_complete(0);
    CU_OK(cu.cuEventRecord(e, STREAM(0x10)));
    CU_OK(cu.cuEventRecord(e2, STREAM(0x20)));
    CHECK_CU(cu.cuEventQuery(e), CUDA_ERROR_NOT_READY);
    CHECK_CU(cu.cuEventQuery(e2), CUDA_ERROR_NOT_READY);
    CU_OK(cu.cuStreamSynchronize(STREAM(0x20)));
    CU_OK(cu.cuEventQuery(e2));
    CHECK_CU(cu.cuEventQuery(e), CUDA_ERROR_NOT_READY); /* another stream's sync */
    CU_OK(cu.cuStreamSynchronize(STREAM(0x10)));
    CU_OK(cu.cuEventQuery(e));

    CU_OK(cu.cuEventRecord(e, STREAM(0)));
    CU_OK(cu.cuEventRecord(e2, STREAM(0x20)));
    CU_OK(cu.cuCtxSynchronize());
    CU_OK(cu.cuEventQuery(e));
    CU_OK(cu.cuEventQuery(e2));

    CU_OK(cu.cuEventRecord(e, STREAM(0x10)));
    CU_OK(cu.cuEventRecord(e2, STREAM(0x30)));
    fc.complete_all();
    CU_OK(cu.cuEventQuery(e));
    CU_OK(cu.cuEventQuery(e2));

    /* The per-thread default stream is the calling thread's own: another thread's
     * synchronize of that handle does not wait for this thread's work, nor this
     * thread's for another's. */
    per_thread_job sync_other = {2, NULL, CUDA_SUCCESS}, rec_other = {1, e2, CUDA_SUCCESS};
    CU_OK(cu.cuEventRecord(e, CU_STREAM_PER_THREAD));
    per_thread_run(&sync_other);
    CHECK_CU(cu.cuEventQuery(e), CUDA_ERROR_NOT_READY);
    per_thread_run(&rec_other);
    CU_OK(cu.cuStreamSynchronize(CU_STREAM_PER_THREAD));
    CU_OK(cu.cuEventQuery(e));
    CHECK_CU(cu.cuEventQuery(e2), CUDA_ERROR_NOT_READY);
    CU_OK(cu.cuCtxSynchronize()); /* the context's: every thread's stream */
    CU_OK(cu.cuEventQuery(e2));

    CU_OK(cu.cuEventRecord(e, STREAM(0x10))); /* destroyed while pending: fine */
    CU_OK(cu.cuEventDestroy_v2(e));
    fc.set_auto_complete(1);
    CU_OK(cu.cuEventRecord(e2, STREAM(0x30)));
    CU_OK(cu.cuEventQuery(e2));
    CU_OK(cu.cuEventDestroy_v2(e2));

    int not_an_event;
    CUevent bogus = (CUevent)(void *)&not_an_event;
    CHECK_CU(cu.cuEventQuery(bogus), 400); /* CUDA_ERROR_INVALID_HANDLE */
    CHECK_CU(cu.cuEventRecord(bogus, STREAM(0)), 400);
    CHECK_CU(cu.cuEventDestroy_v2(bogus), 400);
}

/* ---- fault injection ---------------------------------------------------------------- */

static void test_fault_injection(void)
{
    /* The 2nd next cuMemGetInfo_v2 fails and writes nothing; failed calls count too. */
    unsigned long long infos0 = fc.calls("cuMemGetInfo_v2");
    size_t f = 7, t = 7;
    fc.fail_call("cuMemGetInfo_v2", 2, 999);
    CU_OK(cu.cuMemGetInfo_v2(&f, &t));
    f = t = 7;
    CHECK_CU(cu.cuMemGetInfo_v2(&f, &t), 999);
    CHECK(f == 7 && t == 7);
    CU_OK(cu.cuMemGetInfo_v2(&f, &t));
    CHECK_EQ_U64(fc.calls("cuMemGetInfo_v2") - infos0, 3);

    /* A failed event creation creates nothing; n = 0 cancels a plan. */
    CUevent e = NULL;
    fc.fail_call("cuEventCreate", 1, CUDA_ERROR_OUT_OF_MEMORY);
    CHECK_CU(cu.cuEventCreate(&e, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(e == NULL);
    fc.fail_call("cuEventCreate", 1, CUDA_ERROR_OUT_OF_MEMORY);
    fc.fail_call("cuEventCreate", 0, CUDA_ERROR_OUT_OF_MEMORY);
    CU_OK(cu.cuEventCreate(&e, 0));
    CU_OK(cu.cuEventDestroy_v2(e));

    /* No plans for the calls behind device calls (the device layer's injector fails
     * those), for every entry point at once, or for no entry point. */
    size_t free0 = free_mem();
    CUmemGenericAllocationHandle h = 0;
    fprintf(stderr, "(three complaints from fakecuda_fail_call are expected next)\n");
    fc.fail_call("cuMemCreate", 1, CUDA_ERROR_OUT_OF_MEMORY);
    fc.fail_call("*", 1, CUDA_ERROR_OUT_OF_MEMORY);
    fc.fail_call("cuNothing", 1, CUDA_ERROR_OUT_OF_MEMORY);
    CU_OK(create(&h, GRAN));
    CU_OK(cu.cuMemRelease(h));
    CHECK_EQ_U64(free_mem(), free0);
    CHECK(fc.calls("*") >= fc.calls("cuMemCreate") + fc.calls("cuMemRelease"));
    fprintf(stderr, "(a complaint about \"cuNothing\" is expected next)\n");
    CHECK_EQ_U64(fc.calls("cuNothing"), 0);
}

/* ---- names -------------------------------------------------------------------------- */

static void test_error_names(void)
{
    static const struct { CUresult code; const char *name; } want[] = {
        { CUDA_SUCCESS, "CUDA_SUCCESS" },
        { CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE" },
        { CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY" },
        { CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED" },
        { CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE" },
        { CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT" },
        { CUDA_ERROR_ALREADY_MAPPED, "CUDA_ERROR_ALREADY_MAPPED" },
        { CUDA_ERROR_NOT_MAPPED, "CUDA_ERROR_NOT_MAPPED" },
        { CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND" },
        { CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY" },
        { CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED" },
        { CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN" },
        { 100, "CUDA_ERROR_NO_DEVICE" },
        { 400, "CUDA_ERROR_INVALID_HANDLE" },
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *name = NULL;
        CU_OK(cu.cuGetErrorName(want[i].code, &name));
        CHECK(name && strcmp(name, want[i].name) == 0);
    }
    const char *untouched = "untouched", *name = untouched;
    CHECK_CU(cu.cuGetErrorName(12345, &name), CUDA_ERROR_INVALID_VALUE);
    CHECK_CU(cu.cuGetErrorName(-1, &name), CUDA_ERROR_INVALID_VALUE);
    CHECK(name == untouched);
    CHECK_CU(cu.cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, NULL), CUDA_ERROR_INVALID_VALUE);
}

/* ---- threads -------------------------------------------------------------------------- */

#define THREADS 4
#define ROUNDS 100
#define SLOTS 8

typedef struct worker { int id; int errors; } worker;

/* Each thread works in its own reservation: a long-lived mapping whose data must survive
 * everyone else's traffic, and rounds of create/map/fill/check/unmap/release. */
static void *work(void *arg)
{
    worker *w = arg;
    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle keep = 0;
#define W(expr) (w->errors += (expr) != CUDA_SUCCESS)
    W(cu.cuCtxSetCurrent(ctx0));
    W(cu.cuMemAddressReserve(&va, (SLOTS + 1) * GRAN, 0, 0, 0));
    W(create(&keep, GRAN));
    W(cu.cuMemMap(va + SLOTS * GRAN, GRAN, 0, keep, 0));
    W(allow_rw(va + SLOTS * GRAN, GRAN));
    if (w->errors)
        return NULL;
    fill(va + SLOTS * GRAN, GRAN, 1000 + (uint64_t)w->id);
    for (int i = 0; i < ROUNDS; i++) {
        CUmemGenericAllocationHandle h = 0;
        CUdeviceptr at = va + (size_t)(i % SLOTS) * GRAN;
        uint64_t seed = (uint64_t)w->id << 32 | (uint64_t)i;
        W(create(&h, GRAN));
        W(cu.cuMemMap(at, GRAN, 0, h, 0));
        W(allow_rw(at, GRAN));
        if (w->errors)
            return NULL;
        fill(at, 64 * 1024, seed);
        w->errors += !holds(at, 64 * 1024, seed);
        W(cu.cuMemUnmap(at, GRAN));
        W(cu.cuMemRelease(h));
        size_t f, t;
        W(cu.cuMemGetInfo_v2(&f, &t));
    }
    w->errors += !holds(va + SLOTS * GRAN, GRAN, 1000 + (uint64_t)w->id);
    W(cu.cuMemUnmap(va + SLOTS * GRAN, GRAN));
    W(cu.cuMemRelease(keep));
    W(cu.cuMemAddressFree(va, (SLOTS + 1) * GRAN));
#undef W
    return NULL;
}

static void test_threads(void)
{
    size_t free0 = free_mem();
    unsigned long long creates0 = fc.calls("cuMemCreate");
    pthread_t th[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){ i, 0 };
        CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_U64(w[i].errors, 0);
    }
    CHECK_EQ_U64(fc.calls("cuMemCreate") - creates0, THREADS * (ROUNDS + 1));
    CHECK_EQ_U64(free_mem(), free0);
}

/* Context stacks, several devices, peers, handle types, export and import, address
 * ranges: the driver's rules the cuda device's contexts, peer access and IPC rely on
 * (FAKECUDA_DEVICES=2 for this case; the main thread's stack is device 0's context). */
static void test_devices_and_sharing(void)
{
    env("FAKECUDA_DEVICES", "2");
    CUcontext c1 = NULL, c = NULL, top = NULL;
    CU_OK(cu.cuDevicePrimaryCtxRetain(&c1, 1));
    CHECK(c1 != ctx0);
    /* Push and pop: a stack per thread, SetCurrent replaces its top, pop of an empty one
     * is refused. */
    CHECK_EQ_U64(fc.ctx_depth(), 1);
    CU_OK(cu.cuCtxPushCurrent_v2(c1));
    CU_OK(cu.cuCtxGetCurrent(&c));
    CHECK(c == c1 && fc.ctx_depth() == 2);
    CHECK_CU(cu.cuCtxPushCurrent_v2(NULL), CUDA_ERROR_INVALID_VALUE);
    size_t f = 0, t = 0;
    CUdeviceptr p;
    CU_OK(cu.cuMemAlloc_v2(&p, 4096)); /* charged to the current context's device: 1 */
    CHECK_EQ_U64(fc.used(1), 4096);
    CHECK_EQ_U64(fc.used(0), 0);
    CU_OK(cu.cuMemGetInfo_v2(&f, &t));
    CHECK_EQ_U64(t - f, 4096);
    CU_OK(cu.cuMemFree_v2(p));
    CU_OK(cu.cuCtxPopCurrent_v2(&top));
    CHECK(top == c1 && fc.ctx_depth() == 1);
    CU_OK(cu.cuCtxGetCurrent(&c));
    CHECK(c == ctx0);
    CU_OK(cu.cuCtxSetCurrent(c1)); /* replaces the top */
    CHECK(fc.ctx_depth() == 1);
    CU_OK(cu.cuCtxSetCurrent(NULL)); /* pops it */
    CHECK(fc.ctx_depth() == 0);
    CHECK_CU(cu.cuCtxPopCurrent_v2(&top), CUDA_ERROR_INVALID_CONTEXT);
    CU_OK(cu.cuCtxSetCurrent(ctx0)); /* pushes onto the empty stack */
    CHECK(fc.ctx_depth() == 1);

    /* Streams made in a context (a runtime's cudaStreamCreate): cuStreamGetCtx answers it,
     * and an event records only a stream of its own context (the driver's rule: else
     * CUDA_ERROR_INVALID_HANDLE). Any other value is a stream of the current context. */
    CUstream s1 = STREAM(0x7100);
    CUcontext sc = NULL;
    CUevent ev0 = NULL, ev1 = NULL;
    CUdevice dv = -1;
    fc.stream_create(s1, c1);
    CU_OK(cu.cuStreamGetCtx(s1, &sc));
    CHECK(sc == c1);
    CU_OK(cu.cuStreamGetCtx(STREAM(0x7200), &sc));
    CHECK(sc == ctx0);
    CU_OK(cu.cuCtxGetDevice(&dv));
    CHECK(dv == 0);
    CU_OK(cu.cuEventCreate(&ev0, 0));
    CHECK_CU(cu.cuEventRecord(ev0, s1), 400); /* CUDA_ERROR_INVALID_HANDLE */
    CU_OK(cu.cuEventRecord(ev0, STREAM(0x7200)));
    CU_OK(cu.cuCtxPushCurrent_v2(c1));
    CU_OK(cu.cuCtxGetDevice(&dv));
    CHECK(dv == 1);
    CU_OK(cu.cuEventCreate(&ev1, 0));
    CU_OK(cu.cuCtxPopCurrent_v2(&top));
    CU_OK(cu.cuEventRecord(ev1, s1)); /* its context's stream, whatever is current */
    fc.stream_destroy(s1);
    CHECK_CU(cu.cuStreamGetCtx(s1, &sc), 400);
    CHECK_CU(cu.cuEventRecord(ev1, s1), 400);
    fc.stream_create(s1, c1); /* a stream made again with the handle */
    CU_OK(cu.cuEventRecord(ev1, s1));
    CU_OK(cu.cuEventDestroy_v2(ev0));
    CU_OK(cu.cuEventDestroy_v2(ev1));

    /* Peers and UUIDs. */
    int can = -1;
    CU_OK(cu.cuDeviceCanAccessPeer(&can, 1, 0));
    CHECK(can == 1);
    CHECK_CU(cu.cuDeviceCanAccessPeer(&can, 0, 0), CUDA_ERROR_INVALID_DEVICE);
    CUuuid u0, u1;
    CU_OK(cu.cuDeviceGetUuid_v2(&u0, 0));
    CU_OK(cu.cuDeviceGetUuid_v2(&u1, 1));
    CHECK(memcmp(&u0, &u1, sizeof u0) != 0);

    /* Access per device: a new mapping is no one's; each GPU reaches what it was granted. */
    CUdeviceptr va;
    CUmemGenericAllocationHandle h, h2, imp;
    CU_OK(cu.cuMemAddressReserve(&va, 4 * GRAN, 0, 0, 0));
    CUmemAllocationProp prop = prop_on(0);
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    prop.allocFlags.gpuDirectRDMACapable = 1;
    CU_OK(cu.cuMemCreate(&h, 2 * GRAN, &prop, 0));
    CU_OK(cu.cuMemMap(va, 2 * GRAN, 0, h, 0));
    CHECK_CU(fc.device_access(0, va, 64, 0), CUDA_ERROR_ILLEGAL_ADDRESS);
    CU_OK(allow_rw(va, 2 * GRAN));
    CU_OK(fc.device_access(0, va, 2 * GRAN, 1));
    CHECK_CU(fc.device_access(1, va, 64, 0), CUDA_ERROR_ILLEGAL_ADDRESS);
    CUmemAccessDesc both[2] = {access_on(0, CU_MEM_ACCESS_FLAGS_PROT_READWRITE),
                               access_on(1, CU_MEM_ACCESS_FLAGS_PROT_READ)};
    CU_OK(cu.cuMemSetAccess(va + GRAN, GRAN, both, 2)); /* the second page only */
    CU_OK(fc.device_access(1, va + GRAN, GRAN, 0));
    CHECK_CU(fc.device_access(1, va + GRAN, 64, 1), CUDA_ERROR_ILLEGAL_ADDRESS); /* read only */
    CHECK_CU(fc.device_access(1, va, 2 * GRAN, 0), CUDA_ERROR_ILLEGAL_ADDRESS);
    unsigned types = 0;
    int rdma = 0;
    CHECK(fc.handle_props(va, &types, &rdma) == 0 && types == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR && rdma);

    /* One mapping is one range, wherever in it one asks. */
    CUdeviceptr base = 0;
    size_t len = 0;
    CU_OK(cu.cuMemGetAddressRange_v2(&base, &len, va + GRAN + 100));
    CHECK(base == va && len == 2 * GRAN);
    CHECK_CU(cu.cuMemGetAddressRange_v2(&base, &len, va + 3 * GRAN), CUDA_ERROR_NOT_FOUND);

    /* Export as a file descriptor, import it: the same memory, charged once. */
    int fd = -1;
    CU_OK(cu.cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    CHECK(fd >= 0);
    CHECK_CU(cu.cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_FABRIC, 0), CUDA_ERROR_NOT_SUPPORTED);
    size_t before = fc.used(0);
    CU_OK(cu.cuMemImportFromShareableHandle(&imp, (void *)(intptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    close(fd);
    CHECK_EQ_U64(fc.used(0), before);
    CU_OK(cu.cuMemMap(va + 2 * GRAN, 2 * GRAN, 0, imp, 0));
    CU_OK(allow_rw(va + 2 * GRAN, 2 * GRAN));
    memset((void *)(uintptr_t)va, 0x3c, 4096);
    CHECK(((unsigned char *)(uintptr_t)(va + 2 * GRAN))[100] == 0x3c);
    CU_OK(cu.cuMemUnmap(va + 2 * GRAN, 2 * GRAN));
    CU_OK(cu.cuMemRelease(imp));
    CHECK_CU(cu.cuMemImportFromShareableHandle(&imp, (void *)(intptr_t)-1, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
             CUDA_ERROR_INVALID_VALUE);
    /* A handle made with type NONE exports nothing; the RDMA flag needs the attribute. */
    CU_OK(create(&h2, GRAN));
    CHECK_CU(cu.cuMemExportToShareableHandle(&fd, h2, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
             CUDA_ERROR_INVALID_VALUE);
    CU_OK(cu.cuMemRelease(h2));
    CU_OK(cu.cuMemUnmap(va, 2 * GRAN));
    CU_OK(cu.cuMemRelease(h));
    CU_OK(cu.cuMemAddressFree(va, 4 * GRAN));
    env("FAKECUDA_RDMA", "0");
    int attr = -1;
    CU_OK(cu.cuDeviceGetAttribute(&attr, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, 0));
    CHECK(attr == 0);
    CHECK_CU(cu.cuMemCreate(&h, GRAN, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    env("FAKECUDA_FABRIC", "2");
    prop.allocFlags.gpuDirectRDMACapable = 0;
    prop.requestedHandleTypes = (CUmemAllocationHandleType)(CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR | CU_MEM_HANDLE_TYPE_FABRIC);
    CU_OK(cu.cuDeviceGetAttribute(&attr, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, 0));
    CHECK(attr == 1);
    CHECK_CU(cu.cuMemCreate(&h, GRAN, &prop, 0), CUDA_ERROR_NOT_PERMITTED);
    env("FAKECUDA_PEER", "0");
    CU_OK(cu.cuDeviceCanAccessPeer(&can, 1, 0));
    CHECK(can == 0);
    unsetenv("FAKECUDA_RDMA");
    unsetenv("FAKECUDA_FABRIC");
    unsetenv("FAKECUDA_PEER");
    CU_OK(cu.cuDevicePrimaryCtxRelease_v2(1));
    env("FAKECUDA_DEVICES", NULL);
}

/* CUDA graph capture, as the driver rules it: the state per stream, the calls a capture
 * forbids (they fail and invalidate it), the capture modes, and replays that check the
 * memory the captured work used. */
static void test_capture(void)
{
    fc.reset();
    CUstream s = STREAM(0x700), other = STREAM(0x800);
    CUstreamCaptureStatus st;
    cuuint64_t id = 0;
    CU_OK(cu.cuStreamGetCaptureInfo(s, &st, &id));
    CHECK(st == CU_STREAM_CAPTURE_STATUS_NONE);
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    CU_OK(cu.cuMemAddressReserve(&va, 4 * GRAN, 0, 0, 0));
    CU_OK(create(&h, GRAN));
    CU_OK(cu.cuMemMap(va, GRAN, 0, h, 0));
    CU_OK(allow_rw(va, GRAN));

    /* Global mode: an allocation call from any thread fails and invalidates the capture. */
    CU_OK(fc.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CHECK_CU(fc.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), 401); /* already capturing */
    CU_OK(cu.cuStreamGetCaptureInfo(s, &st, &id));
    CHECK(st == CU_STREAM_CAPTURE_STATUS_ACTIVE && id != 0);
    CU_OK(cu.cuStreamGetCaptureInfo(other, &st, &id));
    CHECK(st == CU_STREAM_CAPTURE_STATUS_NONE);
    CU_OK(fc.capture_use(s, va, 4096));
    CHECK_CU(fc.capture_use(s, va + GRAN, 4096), CUDA_ERROR_ILLEGAL_ADDRESS); /* nothing mapped there */
    CUmemGenericAllocationHandle h2;
    CHECK_CU(create(&h2, GRAN), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CHECK_EQ_U64(fc.violations(), 1);
    CU_OK(cu.cuStreamGetCaptureInfo(s, &st, &id));
    CHECK(st == CU_STREAM_CAPTURE_STATUS_INVALIDATED);
    unsigned long long graph = 0;
    CHECK_CU(fc.end_capture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);

    /* Relaxed for this thread: allocation calls pass; synchronizing still fails. */
    CU_OK(fc.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    CU_OK(cu.cuThreadExchangeStreamCaptureMode(&mode));
    CHECK(mode == CU_STREAM_CAPTURE_MODE_GLOBAL);
    CU_OK(create(&h2, GRAN));
    CU_OK(cu.cuMemMap(va + GRAN, GRAN, 0, h2, 0));
    CU_OK(allow_rw(va + GRAN, GRAN));
    CU_OK(cu.cuThreadExchangeStreamCaptureMode(&mode)); /* back to global */
    CU_OK(fc.capture_use(s, va, 2 * GRAN));
    CU_OK(cu.cuStreamSynchronize(other) == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED ? CUDA_SUCCESS : CUDA_ERROR_UNKNOWN);
    CHECK_EQ_U64(fc.violations(), 2); /* global mode: even another stream's synchronize */
    CHECK_CU(fc.end_capture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);

    /* Each forbidden call, in relaxed mode: the context, the capturing stream, a captured event. */
    CUevent e = NULL;
    CU_OK(cu.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    for (int k = 0; k < 3; k++) {
        CU_OK(fc.begin_capture(s, CU_STREAM_CAPTURE_MODE_RELAXED));
        CU_OK(cu.cuEventRecord(e, other)); /* not captured: may be queried */
        CU_OK(cu.cuEventQuery(e));
        CU_OK(cu.cuStreamSynchronize(other));
        CU_OK(cu.cuEventRecord(e, s)); /* a node of the graph */
        CHECK_CU(k == 0 ? cu.cuCtxSynchronize() : k == 1 ? cu.cuStreamSynchronize(s) : cu.cuEventQuery(e),
                 CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        CHECK_CU(fc.end_capture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    CHECK_EQ_U64(fc.violations(), 5);
    CU_OK(cu.cuEventDestroy_v2(e));

    /* A replay checks its memory: written over, unmapped, or remapped is a fault. */
    CU_OK(fc.begin_capture(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CU_OK(fc.capture_use(s, va, GRAN + 4096));
    CU_OK(fc.end_capture(s, &graph));
    CU_OK(fc.graph_launch(graph));
    CU_OK(fc.graph_launch(graph));
    ((unsigned char *)(uintptr_t)va)[100] ^= 1; /* someone else wrote it */
    CHECK_CU(fc.graph_launch(graph), CUDA_ERROR_ILLEGAL_ADDRESS);
    CHECK_EQ_U64(fc.graph_faults(), 1);
    CU_OK(cu.cuMemUnmap(va + GRAN, GRAN));
    CHECK_CU(fc.graph_launch(graph), CUDA_ERROR_ILLEGAL_ADDRESS);
    CU_OK(cu.cuMemMap(va + GRAN, GRAN, 0, h, 0)); /* other memory where the graph's was */
    CU_OK(allow_rw(va + GRAN, GRAN));
    unsigned long long before = fc.graph_faults();
    CHECK_CU(fc.graph_launch(graph), CUDA_ERROR_ILLEGAL_ADDRESS);
    CHECK(fc.graph_faults() > before);
    CHECK_EQ_U64(fc.violations(), 5);
    fc.reset();
    CHECK_EQ_U64(fc.violations(), 0);
}

int main(void)
{
    /* The double reads its environment on first use: start from the defaults. */
    static const char *const vars[] = { "FAKECUDA_DEVICES", "FAKECUDA_CAPACITY", "FAKECUDA_GRANULARITY",
                                        "FAKECUDA_NO_VMM" };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    load();

    test_init_and_contexts();
    test_granularity();
    test_map_and_data();
    test_byte_calls();
    test_rules();
    test_mem_alloc();
    test_legacy_ipc();
    test_capacity();
    test_events();
    test_fault_injection();
    test_error_names();
    test_threads();
    test_devices_and_sharing();
    test_capture();
    test_environment(); /* last: it reconfigures the double */

    CU_OK(cu.cuCtxSetCurrent(NULL));
    CU_OK(cu.cuDevicePrimaryCtxRelease_v2(0));
    fc.reset();
    dlclose(lib);
    return fl_test_done("test_fakecuda");
}
