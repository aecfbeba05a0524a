/* The runtime's default memory pools under `fragless run` (part of
 * libfragless_preload.so): what they report, and what trimming them gives back.
 *
 * cudaMallocAsync takes its memory from the default pool of its stream's device; under
 * fragless it takes it from fragless, and the pool stays empty. Programs read the pool to
 * learn what they hold. PyTorch's cudaMallocAsync backend, which `fragless run` selects,
 * does this: torch.cuda.memory_allocated, memory_reserved and their peaks are the pool's
 * UsedMem and ReservedMem attributes; reset_peak_memory_stats sets the two High ones to
 * 0; empty_cache is cudaDeviceSynchronize and cudaMemPoolTrimTo(pool, 0). Before, they
 * said 0 and gave nothing back. So, for a device's default pool (learned at
 * cudaDeviceGetDefaultMemPool) once fragless serves that device:
 *   - cudaMemPoolGetAttribute: ReservedMemCurrent / High add fragless's reserved bytes
 *     and their peak, UsedMemCurrent / High its allocated bytes (as rounded) and their
 *     peak, to what the runtime's pool says (memory cudaMallocFromPoolAsync took there);
 *     the other attributes are the runtime's;
 *   - cudaMemPoolSetAttribute of ReservedMemHigh or UsedMemHigh (only 0 is valid): also
 *     fl_reset_peak_stats (both peaks: PyTorch resets both together);
 *   - cudaMemPoolTrimTo(pool, keep): also fl_empty_cache when keep is at most the bytes
 *     live blocks hold (the pool must keep at least `keep` reserved; what fragless keeps
 *     after emptying its cache is at least what is live).
 * Other pools (cudaMemPoolCreate's) are the runtime's alone. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "allocator/allocator.h"
#include "frontend/frontend.h"
#include "preload/preload.h"

typedef struct CUmemPoolHandle_st *cudaMemPool_t;

FL_EXPORT cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device);
FL_EXPORT cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, int attr, void *value);
FL_EXPORT cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, int attr, void *value);
FL_EXPORT cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep);

/* cudaMemPoolAttr (driver_types.h) */
enum { RESERVED_CURRENT = 5, RESERVED_HIGH = 6, USED_CURRENT = 7, USED_HIGH = 8 };

typedef cudaError_t (*default_pool_fn)(cudaMemPool_t *, int);
typedef cudaError_t (*pool_attr_fn)(cudaMemPool_t, int, void *);
typedef cudaError_t (*trim_fn)(cudaMemPool_t, size_t);

static struct {
    default_pool_fn default_pool;
    pool_attr_fn get, set;
    trim_fn trim;
} rt;
static pthread_once_t rt_once = PTHREAD_ONCE_INIT;

static void resolve(void)
{
    rt.default_pool = (default_pool_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaDeviceGetDefaultMemPool");
    rt.get = (pool_attr_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMemPoolGetAttribute");
    rt.set = (pool_attr_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMemPoolSetAttribute");
    rt.trim = (trim_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMemPoolTrimTo");
}

/* Each device's default pool, as the runtime named it (NULL until asked). */
static _Atomic(cudaMemPool_t) defaults[FL_FRONTEND_MAX_DEVICES];

/* The allocator behind pool when it is a device's default pool and fragless serves that
 * device; NULL otherwise. */
static fl_allocator *allocator_of(cudaMemPool_t pool)
{
    for (int d = 0; pool && d < FL_FRONTEND_MAX_DEVICES; d++)
        if (atomic_load_explicit(&defaults[d], memory_order_relaxed) == pool)
            return fli_frontend_existing(d);
    return NULL;
}

FL_EXPORT cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.default_pool ? rt.default_pool(pool, device) : cudaErrorUnknown;
    if (e == cudaSuccess && pool && *pool && device >= 0 && device < FL_FRONTEND_MAX_DEVICES)
        atomic_store_explicit(&defaults[device], *pool, memory_order_relaxed);
    return e;
}

FL_EXPORT cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, int attr, void *value)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.get ? rt.get(pool, attr, value) : cudaErrorUnknown;
    fl_allocator *a = e == cudaSuccess && attr >= RESERVED_CURRENT && attr <= USED_HIGH ? allocator_of(pool) : NULL;
    if (a) {
        fl_stats st;
        fl_get_stats(a, &st);
        uint64_t add = attr == RESERVED_CURRENT ? st.reserved_bytes.current
                       : attr == RESERVED_HIGH  ? st.reserved_bytes.peak
                       : attr == USED_CURRENT   ? st.allocated_bytes.current
                                                : st.allocated_bytes.peak;
        *(uint64_t *)value += add;
    }
    return e;
}

FL_EXPORT cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, int attr, void *value)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.set ? rt.set(pool, attr, value) : cudaErrorUnknown;
    fl_allocator *a = e == cudaSuccess && (attr == RESERVED_HIGH || attr == USED_HIGH) ? allocator_of(pool) : NULL;
    if (a)
        fl_reset_peak_stats(a);
    return e;
}

FL_EXPORT cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep)
{
    pthread_once(&rt_once, resolve);
    cudaError_t e = rt.trim ? rt.trim(pool, keep) : cudaErrorUnknown;
    fl_allocator *a = e == cudaSuccess ? allocator_of(pool) : NULL;
    if (a) {
        fl_stats st;
        fl_get_stats(a, &st);
        if (keep <= st.allocated_bytes.current && fl_empty_cache(a) != FL_OK && fli_preload_verbose())
            fprintf(stderr, "fragless: cudaMemPoolTrimTo: %s\n", fl_last_error());
    }
    return e;
}
