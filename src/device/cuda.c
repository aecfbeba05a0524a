/* The cuda device: the device interface on the real CUDA driver API, loaded with dlopen
 * so that fragless builds and runs where no CUDA toolkit is installed. It owns the driver
 * library, its retain of the device's primary context (every call runs there and leaves
 * the caller's context as it was), the properties of the handles it creates (peers given
 * access, shareable handle types, the RDMA flag), and the bookkeeping the driver does not
 * expose (sizes of allocations and handles, which mapping holds which handle, imports)
 * that in_use and IPC need.
 *
 * Not thread safe by itself: the allocator object serializes calls to a device. */
#include "device/cuda_api.h"
#include "device/device.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Device addresses and sizes are uint64_t in the interface and size_t / CUdeviceptr in
 * the driver: they pass through unconverted only on a 64-bit host. */
_Static_assert(sizeof(size_t) == sizeof(uint64_t), "fragless's cuda device needs a 64-bit host");
_Static_assert(sizeof(CUdeviceptr) == sizeof(uint64_t), "CUdeviceptr is 64 bits");
/* dlsym returns an object pointer; POSIX guarantees it holds a function pointer. */
_Static_assert(sizeof(void *) == sizeof(CUresult (*)(void)), "function pointers fit in void *");

/* One pointer per FL_CUDA_FUNCTIONS entry, named like the symbol it is resolved from. */
typedef struct cuda_fns {
#define FL_CUDA_FN_POINTER(name, params) CUresult (*name) params;
    FL_CUDA_FUNCTIONS(FL_CUDA_FN_POINTER)
#undef FL_CUDA_FN_POINTER
} cuda_fns;

static const struct {
    const char *name;
    size_t offset;
} cuda_symbols[] = {
#define FL_CUDA_FN_SYMBOL(name, params) {#name, offsetof(cuda_fns, name)},
    FL_CUDA_FUNCTIONS(FL_CUDA_FN_SYMBOL)
#undef FL_CUDA_FN_SYMBOL
};

/* A physical handle as we account for it. The record outlives cuMemRelease while the
 * handle is still mapped: the driver keeps the memory until the last unmap, and may hand
 * the same handle value out again once released, so mappings point at records, not at
 * handle values. */
typedef struct cuda_handle {
    CUmemGenericAllocationHandle handle;
    uint64_t size;
    uint32_t mappings;   /* live mappings of this handle */
    uint8_t live;        /* created and not yet released */
    uint32_t next_free;  /* free-list link while the record is unused */
} cuda_handle;

#define NO_RECORD UINT32_MAX
#define MAX_PEERS 64

/* Memory of another process mapped here (fl_import, and CUDA IPC under `fragless run`):
 * not ours, not in in_use. A block over several of the exporter's physical allocations
 * maps them one after another, as they lay there. */
typedef struct cuda_import {
    uint64_t addr;              /* what the import returned: base + the block's offset */
    uint64_t base, size;        /* the reservation (every piece's bytes) */
    uint32_t n;                 /* pieces imported (handles, sizes: one allocation) */
    CUmemGenericAllocationHandle *handles;
    uint64_t *sizes;
} cuda_import;

typedef struct cuda_device {
    fl_device base;
    cuda_fns fn;
    void *lib;                  /* dlopen handle */
    CUdevice dev;
    int ordinal;
    CUcontext ctx;              /* the device's primary context: every call runs in it */
    int retained;               /* ctx is retained (released at destroy) */
    /* The primary context was reset (cudaDeviceReset: fli_dev_context_reset) and not
     * retained by us since: the next call retains it first (revive), under stale_lock. */
    atomic_int stale;
    pthread_mutex_t stale_lock;
    atomic_int pop_warned;      /* a failed pop was reported once */
    /* set_access names the owner and these GPUs (those that can access it). */
    CUmemAccessDesc access[1 + MAX_PEERS];
    size_t n_access;
    unsigned handle_types;      /* CUmemAllocationHandleType bits of cuMemCreate */
    int rdma;                   /* allocFlags.gpuDirectRDMACapable */
    cuda_import *imports;
    size_t n_imports, cap_imports;
    fli_map allocs;              /* cuMemAlloc address -> bytes charged */
    fli_map reservations;        /* reserved va -> size */
    fli_map live_handles;        /* driver handle -> record index (live handles only) */
    fli_map mappings;            /* mapped va -> record index */
    cuda_handle *recs;
    uint32_t n_recs, cap_recs, free_recs;
} cuda_device;

static inline cuda_device *cuda(fl_device *d) { return (cuda_device *)d; }

/* Calls the driver and adds the call's wall time to time_us: real device time, not a
 * model. `call` is a member call of the function table, e.g. cuMemCreate(&h, ...). */
#define CU(c, r, call)                                                                  \
    do {                                                                                \
        uint64_t t0_ = fli_now_ns();                                                     \
        (r) = (c)->fn.call;                                                             \
        (c)->base.counters.time_us += (double)(fli_now_ns() - t0_) / 1e3;                \
    } while (0)

/* Mapping over a mapping or unmapping what is not mapped is the caller's mistake about
 * its arguments, as INVALID_VALUE is; the device layer reports all three alike (sim.c). */
static fl_status status_of(CUresult r)
{
    switch (r) {
    case CUDA_ERROR_OUT_OF_MEMORY: return FL_ERR_OOM;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_ALREADY_MAPPED:
    case CUDA_ERROR_NOT_MAPPED: return FL_ERR_INVALID;
    case CUDA_ERROR_NOT_SUPPORTED: return FL_ERR_UNSUPPORTED;
    default: return FL_ERR_DEVICE;
    }
}

/* A failed driver call as an fl_status whose message names the call, its arguments and
 * the driver's name for the error, e.g.
 * "cuda cuMemCreate(2097152 bytes, device 0): CUDA_ERROR_OUT_OF_MEMORY (2)". */
static fl_status cu_fail(cuda_device *c, CUresult r, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status cu_fail(cuda_device *c, CUresult r, const char *fmt, ...)
{
    char call[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof call, fmt, ap);
    va_end(ap);
    const char *name = NULL;
    if (c->fn.cuGetErrorName(r, &name) != CUDA_SUCCESS || !name)
        name = "unrecognized CUresult";
    return fli_fail(status_of(r), "cuda %s: %s (%d)", call, name, r);
}

static fl_status no_vmm(cuda_device *c, const char *call)
{
    return fli_fail(FL_ERR_UNSUPPORTED,
                   "cuda %s: device %d has no virtual memory management "
                   "(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0); use policy:cca",
                   call, c->ordinal);
}

/* After a reset of the primary context (cudaDeviceReset) it stays inactive until someone
 * retains it again, and every call made in it fails (CUDA_ERROR_CONTEXT_IS_DESTROYED).
 * The runtime retains it at its own next call that needs it, but a program that only
 * allocates through fragless may make none. So the first call after a reset retains it
 * (which makes it anew) and gives back that extra reference: the reset kept ours. Like
 * ctx_enter, it touches no statistic; stale_lock makes it happen once. */
static fl_status revive(cuda_device *c)
{
    fl_status s = FL_OK;
    pthread_mutex_lock(&c->stale_lock);
    if (atomic_load_explicit(&c->stale, memory_order_relaxed)) {
        CUcontext ctx = NULL;
        CUresult r = c->fn.cuDevicePrimaryCtxRetain(&ctx, c->dev);
        if (r != CUDA_SUCCESS) {
            s = cu_fail(c, r, "cuDevicePrimaryCtxRetain(device %d) after the device's reset", c->ordinal);
        } else {
            if (c->retained)
                (void)c->fn.cuDevicePrimaryCtxRelease_v2(c->dev); /* ours, kept by the reset, stays */
            c->retained = 1;
            c->ctx = ctx;
            atomic_store_explicit(&c->stale, 0, memory_order_release);
        }
    }
    pthread_mutex_unlock(&c->stale_lock);
    return s;
}

/* The driver works on the calling thread's current context. The allocator is called from
 * any thread, with any context current: another device's (the program's cudaSetDevice),
 * or none (PyTorch's autograd workers). A call that leaves our context current moves the
 * program's later kernels to our device, so every call runs between ctx_enter and
 * ctx_leave: one query when ours is current already, else a push and, after, a pop that
 * gives the thread back exactly what it had. These calls touch no state of ours (not even
 * time_us: they are host-side bookkeeping, not device work), so that the capture query,
 * which allocations make outside the allocator's lock (thread caches), is thread-safe. */
static fl_status ctx_enter(cuda_device *c, int *pushed)
{
    CUcontext cur = NULL;
    CUresult r;
    *pushed = 0;
    if (FL_UNLIKELY(atomic_load_explicit(&c->stale, memory_order_acquire))) {
        fl_status s = revive(c);
        if (s != FL_OK)
            return s;
    }
    r = c->fn.cuCtxGetCurrent(&cur);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxGetCurrent()");
    if (cur == c->ctx)
        return FL_OK;
    r = c->fn.cuCtxPushCurrent_v2(c->ctx);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxPushCurrent_v2(primary context of device %d)", c->ordinal);
    *pushed = 1;
    return FL_OK;
}

/* The pop comes after the call succeeded or failed: its own failure cannot undo the
 * call, so it is reported (once) rather than returned. */
static void ctx_leave(cuda_device *c, int pushed)
{
    if (!pushed)
        return;
    CUcontext popped = NULL;
    CUresult r;
    r = c->fn.cuCtxPopCurrent_v2(&popped);
    if ((r != CUDA_SUCCESS || popped != c->ctx) && !atomic_exchange(&c->pop_warned, 1)) {
        const char *name = NULL;
        if (c->fn.cuGetErrorName(r, &name) != CUDA_SUCCESS || !name)
            name = "unrecognized CUresult";
        fprintf(stderr, "fragless: cuda device %d: cuCtxPopCurrent_v2 after a call: %s (%d)%s; the thread's "
                "current context may have changed\n", c->ordinal, name, r,
                r == CUDA_SUCCESS ? ", and it popped another context than ours" : "");
    }
}

/* Runs `call` (an expression of type fl_status) in our context. */
#define IN_CTX(c, call)                                                                 \
    do {                                                                                \
        int pushed_;                                                                    \
        fl_status s_ = ctx_enter((c), &pushed_);                                        \
        if (s_ != FL_OK)                                                                \
            return s_;                                                                  \
        s_ = (call);                                                                    \
        ctx_leave((c), pushed_);                                                        \
        return s_;                                                                      \
    } while (0)

/* ---- cudaMalloc path -------------------------------------------------------------- */

static fl_status mem_alloc_in_ctx(cuda_device *c, uint64_t size, uint64_t *addr)
{
    CUdeviceptr p = 0;
    CUresult r;
    CU(c, r, cuMemAlloc_v2(&p, size));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAlloc_v2(%llu bytes)", (unsigned long long)size);
    /* The driver does not say how much it really took (it packs small allocations and
     * rounds large ones to its pages): charge the request in 512 B steps, the least it
     * can take, so in_use is a lower bound on this path. */
    uint64_t bytes = fli_align_up(size, 512);
    if (fli_map_put(&c->allocs, p, bytes) != FL_OK) {
        CU(c, r, cuMemFree_v2(p));
        return FL_ERR_NOMEM;
    }
    c->base.counters.in_use += bytes;
    *addr = p;
    return FL_OK;
}

static fl_status cu_mem_alloc(fl_device *d, uint64_t size, uint64_t *addr)
{
    IN_CTX(cuda(d), mem_alloc_in_ctx(cuda(d), size, addr));
}

static fl_status mem_free_in_ctx(cuda_device *c, uint64_t addr, uint64_t bytes)
{
    CUresult r;
    CU(c, r, cuMemFree_v2(addr));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemFree_v2(0x%llx)", (unsigned long long)addr);
    fli_map_remove(&c->allocs, addr, NULL);
    c->base.counters.in_use -= bytes;
    return FL_OK;
}

static fl_status cu_mem_free(fl_device *d, uint64_t addr)
{
    cuda_device *c = cuda(d);
    uint64_t bytes;
    /* Checked here, not left to the driver: an address some other code in the process
     * allocated is valid to cuMemFree, and freeing it would corrupt that code. */
    if (!fli_map_get(&c->allocs, addr, &bytes))
        return fli_fail(FL_ERR_INVALID, "cuda cuMemFree_v2(0x%llx): not an address this device's mem_alloc returned",
                       (unsigned long long)addr);
    IN_CTX(c, mem_free_in_ctx(c, addr, bytes));
}

/* ---- virtual memory path ---------------------------------------------------------- */

static fl_status reserve_in_ctx(cuda_device *c, uint64_t size, uint64_t *va)
{
    CUdeviceptr p = 0;
    CUresult r;
    CU(c, r, cuMemAddressReserve(&p, size, c->base.granularity, 0, 0));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAddressReserve(%llu bytes, alignment %llu)", (unsigned long long)size,
                       (unsigned long long)c->base.granularity);
    if (fli_map_put(&c->reservations, p, size) != FL_OK) {
        CU(c, r, cuMemAddressFree(p, size));
        return FL_ERR_NOMEM;
    }
    *va = p;
    return FL_OK;
}

static fl_status cu_reserve(fl_device *d, uint64_t size, uint64_t *va)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemAddressReserve");
    IN_CTX(c, reserve_in_ctx(c, size, va));
}

/* Whether any mapping this device made lies in [va, va+size). Only addr_free asks, once
 * per reservation, so a walk over the map's slots (UINT64_MAX: empty, util.h) beats
 * keeping counts per reservation on every map and unmap. */
static int has_mapping_in(const cuda_device *c, uint64_t va, uint64_t size)
{
    const fli_map *m = &c->mappings;
    for (uint64_t i = 0; m->count && i <= m->mask; i++)
        if (m->e[i].key != UINT64_MAX && m->e[i].key >= va && m->e[i].key - va < size)
            return 1;
    return 0;
}

static fl_status addr_free_in_ctx(cuda_device *c, uint64_t va, uint64_t size)
{
    CUresult r;
    CU(c, r, cuMemAddressFree(va, size));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAddressFree(0x%llx, %llu bytes)", (unsigned long long)va,
                       (unsigned long long)size);
    fli_map_remove(&c->reservations, va, NULL);
    return FL_OK;
}

static fl_status cu_addr_free(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    uint64_t reserved;
    /* The driver's behaviour for a range still mapped is not documented; the interface
     * refuses it, like sim.c, and a range reserved by other code is not ours to free. */
    if (!fli_map_get(&c->reservations, va, &reserved) || reserved != size)
        return fli_fail(FL_ERR_INVALID, "cuda cuMemAddressFree(0x%llx, %llu bytes): not a reservation of this device",
                       (unsigned long long)va, (unsigned long long)size);
    if (has_mapping_in(c, va, size))
        return fli_fail(FL_ERR_INVALID, "cuda cuMemAddressFree(0x%llx, %llu bytes): memory is still mapped in it",
                       (unsigned long long)va, (unsigned long long)size);
    IN_CTX(c, addr_free_in_ctx(c, va, size));
}

/* Shareable handle types and the RDMA flag as the device allows them (open_device):
 * what NCCL's user-buffer registration, ibverbs / dmabuf and IPC need, as PyTorch's
 * expandable segments create them. */
static void alloc_prop(const cuda_device *c, CUmemAllocationProp *prop)
{
    memset(prop, 0, sizeof *prop);
    prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop->requestedHandleTypes = (CUmemAllocationHandleType)c->handle_types;
    prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop->location.id = c->ordinal;
    prop->allocFlags.gpuDirectRDMACapable = (unsigned char)c->rdma;
}

static fl_status new_record(cuda_device *c, uint32_t *index)
{
    if (c->free_recs != NO_RECORD) {
        *index = c->free_recs;
        c->free_recs = c->recs[*index].next_free;
        return FL_OK;
    }
    if (c->n_recs == c->cap_recs) {
        uint32_t cap = c->cap_recs ? c->cap_recs * 2 : 64;
        cuda_handle *v = realloc(c->recs, cap * sizeof *v);
        if (!v)
            return fli_fail(FL_ERR_NOMEM, "cuda: host memory for %u handle records", cap);
        c->recs = v;
        c->cap_recs = cap;
    }
    *index = c->n_recs++;
    return FL_OK;
}

/* Physical memory returns only once the handle is released and unmapped everywhere. */
static void maybe_reclaim(cuda_device *c, uint32_t index)
{
    cuda_handle *h = &c->recs[index];
    if (h->live || h->mappings)
        return;
    c->base.counters.in_use -= h->size;
    h->size = 0;
    h->next_free = c->free_recs;
    c->free_recs = index;
}

/* A fabric handle needs an IMEX channel that a GPU reporting fabric support may still
 * lack (NOT_PERMITTED / NOT_SUPPORTED at cuMemCreate): then handles are made without it
 * from now on, as NCCL does, and file descriptors remain. */
static CUresult create_handle(cuda_device *c, uint64_t size, CUmemGenericAllocationHandle *h)
{
    CUmemAllocationProp prop;
    alloc_prop(c, &prop);
    CUresult r;
    CU(c, r, cuMemCreate(h, size, &prop, 0));
    if ((r == CUDA_ERROR_NOT_PERMITTED || r == CUDA_ERROR_NOT_SUPPORTED) && (c->handle_types & CU_MEM_HANDLE_TYPE_FABRIC)) {
        c->handle_types &= ~(unsigned)CU_MEM_HANDLE_TYPE_FABRIC;
        alloc_prop(c, &prop);
        CU(c, r, cuMemCreate(h, size, &prop, 0));
    }
    return r;
}

static fl_status create_in_ctx(cuda_device *c, uint64_t size, uint64_t *handle)
{
    uint32_t index = NO_RECORD;
    fl_status s = new_record(c, &index);
    if (s != FL_OK)
        return s;
    CUmemGenericAllocationHandle h = 0;
    CUresult r = create_handle(c, size, &h);
    if (r != CUDA_SUCCESS) {
        c->recs[index] = (cuda_handle){0, 0, 0, 0, c->free_recs};
        c->free_recs = index;
        return cu_fail(c, r, "cuMemCreate(%llu bytes, device %d)", (unsigned long long)size, c->ordinal);
    }
    c->recs[index] = (cuda_handle){h, size, 0, 1, NO_RECORD};
    /* UINT64_MAX is the map's empty key; no driver hands it out, but a wrong key would
     * corrupt the map silently. */
    if (h == UINT64_MAX || fli_map_put(&c->live_handles, h, index) != FL_OK) {
        CU(c, r, cuMemRelease(h));
        c->recs[index].live = 0;
        c->recs[index].size = 0;
        maybe_reclaim(c, index);
        return h == UINT64_MAX ? fli_fail(FL_ERR_DEVICE, "cuda cuMemCreate: the driver returned handle 0x%llx",
                                         (unsigned long long)h)
                               : FL_ERR_NOMEM;
    }
    c->base.counters.in_use += size;
    *handle = h;
    return FL_OK;
}

static fl_status cu_create(fl_device *d, uint64_t size, uint64_t *handle)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemCreate");
    IN_CTX(c, create_in_ctx(c, size, handle));
}

static fl_status release_in_ctx(cuda_device *c, uint64_t handle, uint64_t index)
{
    CUresult r;
    CU(c, r, cuMemRelease(handle));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemRelease(handle 0x%llx)", (unsigned long long)handle);
    fli_map_remove(&c->live_handles, handle, NULL);
    c->recs[index].live = 0;
    maybe_reclaim(c, (uint32_t)index);
    return FL_OK;
}

static fl_status cu_release(fl_device *d, uint64_t handle)
{
    cuda_device *c = cuda(d);
    uint64_t index;
    /* A handle value that is not live here may belong to other code (or be reused by the
     * driver for it): never pass it on. */
    if (!fli_map_get(&c->live_handles, handle, &index))
        return fli_fail(FL_ERR_INVALID, "cuda cuMemRelease(handle 0x%llx): not a live handle of this device",
                       (unsigned long long)handle);
    IN_CTX(c, release_in_ctx(c, handle, index));
}

static fl_status map_in_ctx(cuda_device *c, uint64_t va, uint64_t size, uint64_t handle, uint64_t index)
{
    CUresult r;
    CU(c, r, cuMemMap(va, size, 0, handle, 0));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemMap(0x%llx, %llu bytes, handle 0x%llx)", (unsigned long long)va,
                       (unsigned long long)size, (unsigned long long)handle);
    if (fli_map_put(&c->mappings, va, index) != FL_OK) {
        CU(c, r, cuMemUnmap(va, size));
        return FL_ERR_NOMEM;
    }
    c->recs[index].mappings++;
    return FL_OK;
}

static fl_status cu_map(fl_device *d, uint64_t va, uint64_t size, uint64_t handle)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemMap");
    uint64_t index;
    /* The driver would also map part of a handle; the interface maps whole handles only
     * (unmap and in_use rely on it). */
    if (!fli_map_get(&c->live_handles, handle, &index) || c->recs[index].size != size)
        return fli_fail(FL_ERR_INVALID, "cuda cuMemMap(0x%llx, %llu bytes, handle 0x%llx): not a live handle of this device of that size",
                       (unsigned long long)va, (unsigned long long)size, (unsigned long long)handle);
    IN_CTX(c, map_in_ctx(c, va, size, handle, index));
}

static fl_status unmap_in_ctx(cuda_device *c, uint64_t va, uint64_t end)
{
    uint64_t index;
    fli_map_get(&c->mappings, va, &index);
    int whole = 0;
    if (va + c->recs[index].size < end) {
        /* Several mappings in a row: one call, as NVIDIA's vectorAddMMAP sample unmaps a
         * range it mapped with one cuMemMap per device (cuda-samples,
         * Samples/0_Introduction/vectorAddMMAP/multidevicealloc_memmap.cpp). A driver that
         * refuses the range (CUDA_ERROR_INVALID_VALUE: nothing unmapped) gets one call per
         * mapping below. */
        CUresult r;
        CU(c, r, cuMemUnmap(va, end - va));
        if (r != CUDA_SUCCESS && r != CUDA_ERROR_INVALID_VALUE)
            return cu_fail(c, r, "cuMemUnmap(0x%llx, %llu bytes)", (unsigned long long)va,
                           (unsigned long long)(end - va));
        whole = r == CUDA_SUCCESS;
    }
    for (uint64_t at = va; at < end;) {
        fli_map_get(&c->mappings, at, &index);
        uint64_t n = c->recs[index].size;
        if (!whole) {
            CUresult r;
            CU(c, r, cuMemUnmap(at, n));
            /* The mappings before a failure are gone and accounted for. */
            if (r != CUDA_SUCCESS)
                return cu_fail(c, r, "cuMemUnmap(0x%llx, %llu bytes)", (unsigned long long)at, (unsigned long long)n);
        }
        fli_map_remove(&c->mappings, at, NULL);
        c->recs[index].mappings--;
        maybe_reclaim(c, (uint32_t)index);
        at += n;
    }
    return FL_OK;
}

/* Unmaps whole mappings only: a range of several in one cuMemUnmap (unmap_in_ctx; one
 * call per mapping where the driver refuses that). Memory a kernel may still use must not
 * be unmapped: that is the caller's to ensure (the policies synchronize first). */
static fl_status cu_unmap(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemUnmap");
    uint64_t end = va + size, at, index;
    if (size == 0 || end < va)
        return fli_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): empty or wrapping range",
                       (unsigned long long)va, (unsigned long long)size);
    /* Check the whole range before unmapping any of it, so a refusal changes nothing. */
    for (at = va; at < end; at += c->recs[index].size)
        if (!fli_map_get(&c->mappings, at, &index))
            return fli_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): 0x%llx is not the start of a mapping of this device",
                           (unsigned long long)va, (unsigned long long)size, (unsigned long long)at);
    if (at != end)
        return fli_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): the range ends inside a mapping",
                       (unsigned long long)va, (unsigned long long)size);
    IN_CTX(c, unmap_in_ctx(c, va, end));
}

/* Read-write for the owner and every GPU that can access it (open_device): mapped memory
 * is reachable from a peer only when cuMemSetAccess names it (cudaDeviceEnablePeerAccess
 * covers cudaMalloc memory only), and NCCL's P2P transport and peer copies fault or hang
 * without it. */
static fl_status set_access_in_ctx(cuda_device *c, uint64_t va, uint64_t size)
{
    CUresult r;
    CU(c, r, cuMemSetAccess(va, size, c->access, c->n_access));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemSetAccess(0x%llx, %llu bytes, device %d%s read-write)", (unsigned long long)va,
                       (unsigned long long)size, c->ordinal, c->n_access > 1 ? " and its peers" : "");
    return FL_OK;
}

static fl_status cu_set_access(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemSetAccess");
    IN_CTX(c, set_access_in_ctx(c, va, size));
}

static fl_status synchronize_in_ctx(cuda_device *c)
{
    CUresult r;
    CU(c, r, cuCtxSynchronize());
    return r == CUDA_SUCCESS ? FL_OK : cu_fail(c, r, "cuCtxSynchronize()");
}

static fl_status cu_synchronize(fl_device *d)
{
    IN_CTX(cuda(d), synchronize_in_ctx(cuda(d)));
}

/* ---- events (record_stream) ------------------------------------------------------- */

/* The driver's handle for a stream value: a per-thread key (device.h) is the calling
 * thread's CU_STREAM_PER_THREAD when the key is that thread's; *other set when it is
 * another thread's (no handle names that stream here). */
static CUstream cu_stream(uint64_t stream, int *other)
{
    *other = 0;
    if (!fli_is_per_thread_stream(stream))
        return (CUstream)(uintptr_t)stream;
    *other = stream != fli_per_thread_stream();
    return CU_STREAM_PER_THREAD;
}

static fl_status event_record_in_ctx(cuda_device *c, uint64_t stream, uint64_t *event)
{
    CUresult r;
    CUevent ev = NULL;
    int other;
    CUstream cs = cu_stream(stream, &other);
    if (other)
        return fli_fail(FL_ERR_UNSUPPORTED, "cuda: an event on another thread's per-thread default stream (key "
                        "0x%llx) cannot be recorded from this thread", (unsigned long long)stream);
    /* The event is made in the stream's context (the driver records an event only on a
     * stream of its own context): a block of this device freed on another device's
     * stream waits for that stream's work. The special streams are this context's. Queries
     * and the destroy work from any context. */
    CUcontext sctx = c->ctx, popped;
    if ((uintptr_t)cs > 2) {
        CU(c, r, cuStreamGetCtx(cs, &sctx));
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuStreamGetCtx(stream 0x%llx)", (unsigned long long)stream);
    }
    int pushed = sctx != c->ctx;
    if (pushed) {
        CU(c, r, cuCtxPushCurrent_v2(sctx));
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuCtxPushCurrent(the context of stream 0x%llx)", (unsigned long long)stream);
    }
    CU(c, r, cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    fl_status s = r != CUDA_SUCCESS ? cu_fail(c, r, "cuEventCreate()") : FL_OK;
    if (s == FL_OK) {
        CU(c, r, cuEventRecord(ev, cs));
        if (r != CUDA_SUCCESS) {
            s = cu_fail(c, r, "cuEventRecord(stream 0x%llx)", (unsigned long long)stream);
            CU(c, r, cuEventDestroy_v2(ev));
        }
    }
    if (pushed)
        CU(c, r, cuCtxPopCurrent_v2(&popped));
    if (s == FL_OK)
        *event = (uint64_t)(uintptr_t)ev;
    return s;
}

static fl_status cu_event_record(fl_device *d, uint64_t stream, uint64_t *event)
{
    IN_CTX(cuda(d), event_record_in_ctx(cuda(d), stream, event));
}

static fl_status event_query_in_ctx(cuda_device *c, uint64_t event, int *done)
{
    CUresult r;
    CU(c, r, cuEventQuery((CUevent)(uintptr_t)event));
    *done = r == CUDA_SUCCESS;
    return r == CUDA_SUCCESS || r == CUDA_ERROR_NOT_READY ? FL_OK : cu_fail(c, r, "cuEventQuery()");
}

static fl_status cu_event_query(fl_device *d, uint64_t event, int *done)
{
    *done = 0;
    IN_CTX(cuda(d), event_query_in_ctx(cuda(d), event, done));
}

static fl_status event_destroy_in_ctx(cuda_device *c, uint64_t event)
{
    CUresult r;
    CU(c, r, cuEventDestroy_v2((CUevent)(uintptr_t)event));
    (void)r; /* nothing to do about a failed destroy: the event is not used again */
    return FL_OK;
}

static fl_status event_destroy(cuda_device *c, uint64_t event)
{
    IN_CTX(c, event_destroy_in_ctx(c, event));
}

static void cu_event_destroy(fl_device *d, uint64_t event)
{
    (void)event_destroy(cuda(d), event); /* a destroy that cannot run leaks one event */
}

/* ---- IPC: export and import --------------------------------------------------------- */

/* The driver's allocation holding va (cuMemGetAddressRange): on mapped memory the one
 * mapping (physical allocation) holding it, what NCCL and ibverbs registration see as the
 * buffer too; else the cuMemAlloc allocation. */
static fl_status address_range(cuda_device *c, uint64_t va, CUdeviceptr *base, size_t *len)
{
    CUresult r;
    CU(c, r, cuMemGetAddressRange_v2(base, len, va));
    return r == CUDA_SUCCESS ? FL_OK : cu_fail(c, r, "cuMemGetAddressRange_v2(0x%llx)", (unsigned long long)va);
}

/* The physical allocations under [va, va + size), one after another in the address space
 * (a block of the fragless policy lies on pages and chunks of their own handles), each
 * exported as a file descriptor, at most max of them; *offset: where the block starts in
 * the first. On failure every descriptor made is closed. */
static fl_status export_in_ctx(cuda_device *c, uint64_t va, uint64_t size, fl_ipc_piece *out, uint32_t max,
                               uint32_t *n, uint64_t *offset)
{
    uint64_t cur = va, end = va + size, index;
    uint32_t k = 0;
    fl_status s = FL_OK;
    CUresult r;
    while (cur < end && s == FL_OK) {
        CUdeviceptr base = 0;
        size_t len = 0;
        if ((s = address_range(c, cur, &base, &len)) != FL_OK)
            break;
        if (!fli_map_get(&c->mappings, base, &index) || c->recs[index].size != len) {
            s = fli_fail(FL_ERR_INVALID, "cuda export of 0x%llx: not memory this device mapped", (unsigned long long)va);
            break;
        }
        if (k == max) {
            s = max == 1 ? fli_fail(FL_ERR_UNSUPPORTED, "cuda export of 0x%llx (%llu bytes): the block spans several "
                                   "physical allocations (the one under its start has %llu bytes); registrable:SIZE in "
                                   "FRAGLESS_CONF backs blocks of at least SIZE with one each", (unsigned long long)va,
                                   (unsigned long long)size, (unsigned long long)out[0].size)
                         : fli_fail(FL_ERR_UNSUPPORTED, "cuda export of 0x%llx (%llu bytes): the block spans more than "
                                   "%u physical allocations", (unsigned long long)va, (unsigned long long)size, max);
            break;
        }
        int fd = -1;
        CU(c, r, cuMemExportToShareableHandle(&fd, c->recs[index].handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
        if (r != CUDA_SUCCESS) {
            s = cu_fail(c, r, "cuMemExportToShareableHandle(handle 0x%llx, POSIX_FILE_DESCRIPTOR)",
                        (unsigned long long)c->recs[index].handle);
            break;
        }
        if (k == 0)
            *offset = va - base;
        out[k++] = (fl_ipc_piece){fd, len};
        cur = base + len;
    }
    if (s != FL_OK)
        while (k)
            close(out[--k].fd);
    *n = k;
    return s;
}

static fl_status cu_export(fl_device *d, uint64_t va, uint64_t size, fl_ipc_piece *out, uint32_t max, uint32_t *n,
                           uint64_t *offset)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported || !(c->handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        return fli_fail(FL_ERR_UNSUPPORTED, "cuda export: device %d's memory is not shareable (%s)", c->ordinal,
                       !d->vmm_supported ? "no virtual memory management" : "handles made with shareable:0, or the "
                       "device cannot export file descriptors: CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0");
    IN_CTX(c, export_in_ctx(c, va, size, out, max, n, offset));
}

/* The driver's answer for va (cuMemGetAddressRange): a mapping fragless made is virtual
 * memory, with no legacy handle; anything else the driver allocated is cuMemAlloc's. */
static fl_status legacy_ipc_base_in_ctx(cuda_device *c, uint64_t va, uint64_t *out)
{
    CUdeviceptr base = 0;
    size_t len = 0;
    uint64_t index;
    fl_status s = address_range(c, va, &base, &len);
    if (s != FL_OK)
        return s;
    if (fli_map_get(&c->mappings, base, &index))
        return fli_fail(FL_ERR_UNSUPPORTED, "0x%llx lies in virtual memory (physical pages fragless mapped), which "
                       "CUDA's legacy IPC does not serve: it shares only cuMemAlloc's allocations", (unsigned long long)va);
    *out = base;
    return FL_OK;
}

static fl_status cu_legacy_ipc_base(fl_device *d, uint64_t va, uint64_t *base)
{
    IN_CTX(cuda(d), legacy_ipc_base_in_ctx(cuda(d), va, base));
}

/* Drops an import's mappings (whole mappings: one unmap of the span), its address range
 * and its handles' references; mapped is how many of the pieces were mapped. */
static void import_drop(cuda_device *c, const cuda_import *m, uint32_t mapped)
{
    CUresult r;
    uint64_t len = 0;
    for (uint32_t i = 0; i < mapped; i++)
        len += m->sizes[i];
    if (len)
        CU(c, r, cuMemUnmap(m->base, len));
    CU(c, r, cuMemAddressFree(m->base, m->size));
    for (uint32_t i = 0; i < m->n; i++)
        CU(c, r, cuMemRelease(m->handles[i]));
    (void)r;
    free(m->handles);
}

static fl_status import_in_ctx(cuda_device *c, const fl_ipc_piece *p, uint32_t n, uint64_t offset, uint64_t *va)
{
    CUresult r;
    fl_status s = FL_OK;
    cuda_import m = {0};
    if (c->n_imports == c->cap_imports) {
        size_t cap = c->cap_imports ? 2 * c->cap_imports : 8;
        cuda_import *v = realloc(c->imports, cap * sizeof *v);
        if (!v)
            return fli_fail(FL_ERR_NOMEM, "cuda import: host memory");
        c->imports = v;
        c->cap_imports = cap;
    }
    m.handles = malloc(n * (sizeof *m.handles + sizeof *m.sizes));
    if (!m.handles)
        return fli_fail(FL_ERR_NOMEM, "cuda import: host memory");
    m.sizes = (uint64_t *)(m.handles + n);
    for (uint32_t i = 0; i < n; i++)
        m.size += m.sizes[i] = p[i].size;
    for (; m.n < n; m.n++) {
        CU(c, r, cuMemImportFromShareableHandle(&m.handles[m.n], (void *)(intptr_t)p[m.n].fd,
                                                 CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
        if (r != CUDA_SUCCESS) {
            s = cu_fail(c, r, "cuMemImportFromShareableHandle(fd %d)", p[m.n].fd);
            break;
        }
    }
    CUdeviceptr base = 0;
    if (s == FL_OK) {
        CU(c, r, cuMemAddressReserve(&base, m.size, c->base.granularity, 0, 0));
        if (r != CUDA_SUCCESS)
            s = cu_fail(c, r, "cuMemAddressReserve(%llu bytes) for an import", (unsigned long long)m.size);
    }
    if (s != FL_OK) {
        for (uint32_t i = 0; i < m.n; i++)
            CU(c, r, cuMemRelease(m.handles[i]));
        free(m.handles);
        return s;
    }
    m.base = base;
    uint32_t mapped = 0;
    for (uint64_t at = base; mapped < n; at += m.sizes[mapped++]) {
        CU(c, r, cuMemMap(at, m.sizes[mapped], 0, m.handles[mapped], 0));
        if (r != CUDA_SUCCESS) {
            s = cu_fail(c, r, "cuMemMap(0x%llx, %llu bytes) of an import", (unsigned long long)at,
                        (unsigned long long)m.sizes[mapped]);
            break;
        }
    }
    if (s == FL_OK)
        s = set_access_in_ctx(c, base, m.size);
    if (s != FL_OK) {
        import_drop(c, &m, mapped);
        return s;
    }
    m.addr = base + offset;
    c->imports[c->n_imports++] = m;
    *va = m.addr;
    return FL_OK;
}

static fl_status cu_import(fl_device *d, const fl_ipc_piece *p, uint32_t n, uint64_t offset, uint64_t size,
                           uint64_t *va)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemImportFromShareableHandle");
    uint64_t total = 0;
    int bad = n == 0;
    for (uint32_t i = 0; i < n && !bad; i++) {
        bad = p[i].fd < 0 || !p[i].size || p[i].size % d->granularity || p[i].size > UINT64_MAX - total;
        total += bad ? 0 : p[i].size;
    }
    if (bad || offset >= total || size > total - offset)
        return fli_fail(FL_ERR_INVALID, "cuda import: %u allocation(s) of %llu bytes in all, block at %llu of %llu "
                       "bytes: not an exported block (each allocation must be whole pages of %llu bytes, with a file "
                       "descriptor, and together they must hold the block)", n, (unsigned long long)total,
                       (unsigned long long)offset, (unsigned long long)size, (unsigned long long)d->granularity);
    IN_CTX(c, import_in_ctx(c, p, n, offset, va));
}

static fl_status import_close_in_ctx(cuda_device *c, size_t i)
{
    cuda_import m = c->imports[i];
    CUresult r;
    CU(c, r, cuMemUnmap(m.base, m.size));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemUnmap(0x%llx, %llu bytes) of an import", (unsigned long long)m.base,
                       (unsigned long long)m.size);
    c->imports[i] = c->imports[--c->n_imports];
    /* Unmapped, it is no longer usable: the rest only gives back address space and the
     * handles' references. */
    import_drop(c, &m, 0);
    return FL_OK;
}

static fl_status cu_import_close(fl_device *d, uint64_t va)
{
    cuda_device *c = cuda(d);
    for (size_t i = 0; i < c->n_imports; i++)
        if (c->imports[i].addr == va)
            IN_CTX(c, import_close_in_ctx(c, i));
    return fli_fail(FL_ERR_NOT_FOUND, "cuda import_close(0x%llx): not an address fl_import returned on this device",
                   (unsigned long long)va);
}

/* ---- CUDA graph capture ------------------------------------------------------------ */

/* Asked at every allocation of a frontend (src/allocator/graph.c): a driver query with
 * no GPU work, so it is not device time. Thread-safe (it writes nothing of ours): with
 * thread caches on, allocations ask it before they take any lock. */
static fl_status capture_info_in_ctx(cuda_device *c, uint64_t stream, int *status, uint64_t *id)
{
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    cuuint64_t cid = 0;
    int other;
    CUstream cs = cu_stream(stream, &other);
    if (other) { /* another thread's per-thread stream: no handle here names it */
        *status = FL_CAPTURE_NONE;
        *id = 0;
        return FL_OK;
    }
    CUresult r = c->fn.cuStreamGetCaptureInfo(cs, &st, &cid);
    if (r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) {
        *status = FL_CAPTURE_IMPLICIT;
        return FL_OK;
    }
    if (r == CUDA_ERROR_INVALID_HANDLE) /* a stream the program destroyed (when the driver catches it) */
        return fli_fail(FL_ERR_NOT_FOUND, "cuda cuStreamGetCaptureInfo(stream 0x%llx): CUDA_ERROR_INVALID_HANDLE "
                        "(400): no such stream", (unsigned long long)stream);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuStreamGetCaptureInfo(stream 0x%llx)", (unsigned long long)stream);
    *status = st == CU_STREAM_CAPTURE_STATUS_ACTIVE ? FL_CAPTURE_ACTIVE
            : st == CU_STREAM_CAPTURE_STATUS_INVALIDATED ? FL_CAPTURE_INVALIDATED : FL_CAPTURE_NONE;
    *id = *status == FL_CAPTURE_NONE ? 0 : (uint64_t)cid;
    return FL_OK;
}

/* In the device's primary context: the legacy stream (0) is that context's. */
static fl_status cu_capture_info(fl_device *d, uint64_t stream, int *status, uint64_t *id)
{
    IN_CTX(cuda(d), capture_info_in_ctx(cuda(d), stream, status, id));
}

/* cudaMallocAsync allocates on the device of its stream's context (the runtime's
 * contract), which need not be the current one: the stream's context, then its device's
 * ordinal. No GPU work, not counted. The special handles (NULL, legacy, per-thread and
 * their keys) are the current device's: the caller does not ask about them. */
static fl_status cu_stream_device(fl_device *d, uint64_t stream, int *ordinal)
{
    cuda_device *c = cuda(d);
    CUcontext ctx = NULL;
    int other;
    CUresult r = c->fn.cuStreamGetCtx(cu_stream(stream, &other), &ctx);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuStreamGetCtx(stream 0x%llx)", (unsigned long long)stream);
    if (ctx == c->ctx) {
        *ordinal = c->ordinal;
        return FL_OK;
    }
    CUdevice dev = 0;
    int count = 0;
    if ((r = c->fn.cuCtxPushCurrent_v2(ctx)) != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxPushCurrent(the context of stream 0x%llx)", (unsigned long long)stream);
    r = c->fn.cuCtxGetDevice(&dev);
    CUcontext popped;
    c->fn.cuCtxPopCurrent_v2(&popped);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxGetDevice(the context of stream 0x%llx)", (unsigned long long)stream);
    if ((r = c->fn.cuDeviceGetCount(&count)) != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGetCount()");
    for (int i = 0; i < count; i++) {
        CUdevice di;
        if (c->fn.cuDeviceGet(&di, i) == CUDA_SUCCESS && di == dev) {
            *ordinal = i;
            return FL_OK;
        }
    }
    return fli_fail(FL_ERR_DEVICE, "cuda: stream 0x%llx belongs to a device the driver does not list",
                    (unsigned long long)stream);
}

static fl_status cu_capture_mode(fl_device *d, int *mode)
{
    cuda_device *c = cuda(d);
    CUstreamCaptureMode m = (CUstreamCaptureMode)*mode;
    CUresult r = c->fn.cuThreadExchangeStreamCaptureMode(&m);
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuThreadExchangeStreamCaptureMode(%d)", *mode);
    *mode = (int)m;
    return FL_OK;
}

/* ---- lifetime --------------------------------------------------------------------- */

/* Gives back whatever the policy left behind (nothing, when it destroyed itself cleanly)
 * so a device torn down after an error does not leak GPU memory until process exit. */
static fl_status give_back_in_ctx(cuda_device *c)
{
    CUresult r;
    CU(c, r, cuCtxSynchronize()); /* leftovers may still be in use by queued work */
    for (size_t i = 0; i < c->n_imports; i++)
        import_drop(c, &c->imports[i], c->imports[i].n);
    c->n_imports = 0;
    for (uint64_t i = 0; c->mappings.count && i <= c->mappings.mask; i++)
        if (c->mappings.e[i].key != UINT64_MAX)
            CU(c, r, cuMemUnmap(c->mappings.e[i].key, c->recs[c->mappings.e[i].val].size));
    for (uint64_t i = 0; c->live_handles.count && i <= c->live_handles.mask; i++)
        if (c->live_handles.e[i].key != UINT64_MAX)
            CU(c, r, cuMemRelease(c->live_handles.e[i].key));
    for (uint64_t i = 0; c->reservations.count && i <= c->reservations.mask; i++)
        if (c->reservations.e[i].key != UINT64_MAX)
            CU(c, r, cuMemAddressFree(c->reservations.e[i].key, c->reservations.e[i].val));
    for (uint64_t i = 0; c->allocs.count && i <= c->allocs.mask; i++)
        if (c->allocs.e[i].key != UINT64_MAX)
            CU(c, r, cuMemFree_v2(c->allocs.e[i].key));
    (void)r; /* nothing to tell anyone at teardown */
    return FL_OK;
}

static fl_status give_back_leftovers(cuda_device *c)
{
    if (!c->allocs.count && !c->reservations.count && !c->mappings.count && !c->live_handles.count && !c->n_imports)
        return FL_OK;
    IN_CTX(c, give_back_in_ctx(c));
}

/* The primary context was reset (cudaDeviceReset): retained again before the next call
 * (revive). Its memory allocated with cuMemAlloc is gone with it: forgotten here. */
static void cu_context_reset(fl_device *d)
{
    cuda_device *c = cuda(d);
    for (uint64_t i = 0; c->allocs.e && i <= c->allocs.mask; i++)
        if (c->allocs.e[i].key != UINT64_MAX)
            d->counters.in_use -= c->allocs.e[i].val;
    if (c->allocs.e)
        fli_map_clear(&c->allocs);
    atomic_store_explicit(&c->stale, 1, memory_order_release);
}

static void cu_destroy(fl_device *d)
{
    cuda_device *c = cuda(d);
    if (c->ctx) {
        (void)give_back_leftovers(c); /* nothing to tell anyone at teardown */
        /* Our calls never leave the context current, so the thread is as we found it;
         * the runtime's own retain (if any) keeps the context alive after ours goes. */
        if (c->retained) {
            CUresult r;
            CU(c, r, cuDevicePrimaryCtxRelease_v2(c->dev));
            (void)r;
        }
    }
    pthread_mutex_destroy(&c->stale_lock);
    fli_map_free(&c->allocs);
    fli_map_free(&c->reservations);
    fli_map_free(&c->live_handles);
    fli_map_free(&c->mappings);
    free(c->recs);
    free(c->imports);
    if (c->lib)
        dlclose(c->lib);
    free(c);
}

static const fli_device_ops cuda_ops = {
    .name = "cuda",
    .mem_alloc = cu_mem_alloc,
    .mem_free = cu_mem_free,
    .reserve = cu_reserve,
    .addr_free = cu_addr_free,
    .create = cu_create,
    .release = cu_release,
    .map = cu_map,
    .unmap = cu_unmap,
    .set_access = cu_set_access,
    .synchronize = cu_synchronize,
    .event_record = cu_event_record,
    .event_query = cu_event_query,
    .event_destroy = cu_event_destroy,
    .export_block = cu_export,
    .legacy_ipc_base = cu_legacy_ipc_base,
    .import = cu_import,
    .import_close = cu_import_close,
    .capture_info = cu_capture_info,
    .capture_mode = cu_capture_mode,
    .stream_device = cu_stream_device,
    .context_reset = cu_context_reset,
    .destroy = cu_destroy,
};

void fl_cuda_params_default(fl_cuda_params *p)
{
    memset(p, 0, sizeof *p);
    p->library = NULL;
    p->device = 0;
    p->peer_access = 1;
    p->shareable = 1;
}

static fl_status load_driver(cuda_device *c, const char *path)
{
    dlerror();
    /* NODELETE: after cuInit the driver runs threads of its own; unloading it under them
     * at dlclose would crash the process, so the library stays once loaded. */
    c->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!c->lib) {
        const char *why = dlerror();
        return fli_fail(FL_ERR_DEVICE, "cuda: cannot load the driver library %s: %s (no NVIDIA driver here? "
                       "set FRAGLESS_CUDA_LIB to its path)", path, why ? why : "unknown reason");
    }
    for (size_t i = 0; i < sizeof cuda_symbols / sizeof cuda_symbols[0]; i++) {
        void *sym = dlsym(c->lib, cuda_symbols[i].name);
        if (!sym)
            return fli_fail(FL_ERR_UNSUPPORTED, "cuda: %s has no symbol %s (a driver older than fragless needs?)",
                           path, cuda_symbols[i].name);
        memcpy((char *)&c->fn + cuda_symbols[i].offset, &sym, sizeof sym);
    }
    return FL_OK;
}

/* An attribute the driver may not know (an older one): 0. */
static int attribute(cuda_device *c, int attr)
{
    int v = 0;
    CUresult r;
    CU(c, r, cuDeviceGetAttribute(&v, attr, c->dev));
    return r == CUDA_SUCCESS ? v : 0;
}

/* Capacity, granularity, VMM support and the handles' properties, read from the driver
 * (in our context: cuMemGetAllocationGranularity needs one). */
static fl_status query_device(cuda_device *c, const fl_cuda_params *p)
{
    fl_device *d = &c->base;
    CUresult r;
    size_t total = 0;
    CU(c, r, cuDeviceTotalMem_v2(&total, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceTotalMem_v2(device %d)", c->ordinal);
    if (total == 0)
        return fli_fail(FL_ERR_DEVICE, "cuda: device %d reports 0 bytes of memory", c->ordinal);
    d->capacity = total;
    int vmm = 0;
    CU(c, r, cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device %d)", c->ordinal);
    d->vmm_supported = vmm != 0;
    d->is_gpu = 1;
    d->ordinal = c->ordinal;
    CUuuid uuid;
    CU(c, r, cuDeviceGetUuid_v2(&uuid, c->dev));
    if (r == CUDA_SUCCESS) {
        memcpy(d->uuid, uuid.bytes, sizeof d->uuid);
        d->has_uuid = 1;
    }
    if (!d->vmm_supported) {
        /* No page size to ask for; 2 MiB is the driver's large page, which the cudaMalloc
         * path's policies only use to size their segments. */
        d->granularity = 2 * FL_MiB;
        return FL_OK;
    }
    /* Handles NCCL, ibverbs/dmabuf and other processes can use, where the GPU allows:
     * POSIX file descriptors, fabric handles (multi-node NVLink), the RDMA flag. */
    if (p->shareable) {
        if (attribute(c, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED))
            c->handle_types |= CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        if (attribute(c, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED))
            c->handle_types |= CU_MEM_HANDLE_TYPE_FABRIC;
        c->rdma = attribute(c, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED) != 0;
    }
    CUmemAllocationProp prop;
    alloc_prop(c, &prop);
    size_t g = 0;
    CU(c, r, cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    if (r != CUDA_SUCCESS || g == 0) {
        /* RECOMMENDED is a performance hint; MINIMUM is what correctness needs. */
        CU(c, r, cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuMemGetAllocationGranularity(PINNED, device %d, MINIMUM)", c->ordinal);
    }
    /* The policies do page arithmetic with shifts and masks. */
    if (!fli_is_pow2(g))
        return fli_fail(FL_ERR_UNSUPPORTED, "cuda: device %d has allocation granularity %llu, not a power of two",
                       c->ordinal, (unsigned long long)g);
    d->granularity = g;
    return FL_OK;
}

/* Who set_access names: the owner, and with peer_access every other GPU that can access
 * the owner's memory (as PyTorch's expandable segments do). */
static fl_status find_peers(cuda_device *c, const fl_cuda_params *p, int count)
{
    memset(c->access, 0, sizeof c->access);
    c->access[0].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    c->access[0].location.id = c->ordinal;
    c->access[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    c->n_access = 1;
    for (int o = 0; p->peer_access && o < count && c->n_access < 1 + MAX_PEERS; o++) {
        CUdevice other;
        int can = 0;
        CUresult r;
        if (o == c->ordinal)
            continue;
        CU(c, r, cuDeviceGet(&other, o));
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuDeviceGet(%d)", o);
        CU(c, r, cuDeviceCanAccessPeer(&can, other, c->dev));
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuDeviceCanAccessPeer(device %d, device %d)", o, c->ordinal);
        if (!can)
            continue;
        c->access[c->n_access] = c->access[0];
        c->access[c->n_access++].location.id = o;
    }
    return FL_OK;
}

/* Our context: the device's primary context (the one the runtime and PyTorch use),
 * retained for as long as the device lives, whatever the calling thread has current:
 * adopting the current context would give this device another device's context. */
static fl_status open_context(cuda_device *c)
{
    CUresult r;
    CU(c, r, cuDevicePrimaryCtxRetain(&c->ctx, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDevicePrimaryCtxRetain(device %d)", c->ordinal);
    c->retained = 1;
    return FL_OK;
}

static fl_status open_device(cuda_device *c, const fl_cuda_params *p)
{
    const char *path = p->library;
    if (!path) {
        const char *env = getenv("FRAGLESS_CUDA_LIB");
        path = env && env[0] ? env : "libcuda.so.1";
    }
    fl_status s = load_driver(c, path);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuInit(0));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuInit(0) from %s", path);
    int count = 0;
    CU(c, r, cuDeviceGetCount(&count));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGetCount()");
    if (p->device < 0 || p->device >= count)
        return fli_fail(FL_ERR_INVALID, "cuda: no device %d: the driver reports %d device%s (ordinals 0..%d)",
                       p->device, count, count == 1 ? "" : "s", count - 1);
    c->ordinal = p->device;
    CU(c, r, cuDeviceGet(&c->dev, p->device));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGet(%d)", p->device);
    if ((s = open_context(c)) != FL_OK)
        return s;
    int pushed;
    if ((s = ctx_enter(c, &pushed)) != FL_OK)
        return s;
    s = query_device(c, p);
    ctx_leave(c, pushed);
    if (s != FL_OK || (s = find_peers(c, p, count)) != FL_OK)
        return s;
    if (fli_map_init(&c->allocs, 64) != FL_OK || fli_map_init(&c->reservations, 16) != FL_OK ||
        fli_map_init(&c->live_handles, 256) != FL_OK || fli_map_init(&c->mappings, 256) != FL_OK)
        return fli_fail(FL_ERR_NOMEM, "cuda device: host memory");
    /* The driver's time spent opening is not the policies' device time. */
    c->base.counters.time_us = 0;
    return FL_OK;
}
fl_status fl_cuda_device_create(const fl_cuda_params *p, fl_device **out)
{
    *out = NULL;
    fl_cuda_params defaults;
    if (!p) {
        fl_cuda_params_default(&defaults);
        p = &defaults;
    }
    cuda_device *c = calloc(1, sizeof *c);
    if (!c)
        return fli_fail(FL_ERR_NOMEM, "cuda device: host memory");
    c->base.ops = &cuda_ops;
    c->free_recs = NO_RECORD;
    pthread_mutex_init(&c->stale_lock, NULL);
    fl_status s = open_device(c, p);
    if (s != FL_OK) {
        /* Keep the message: teardown calls the driver, which must not overwrite it. */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", fl_last_error());
        cu_destroy(&c->base);
        return fli_fail(s, "%s", msg);
    }
    c->base.capture_watch = 1; /* allocations ask the driver about CUDA graph captures */
    *out = &c->base;
    return FL_OK;
}
