/* The cuda device: the device interface on the real CUDA driver API, loaded with dlopen
 * so that fragless builds and runs where no CUDA toolkit is installed. It owns the driver
 * library, the context it works in, and the bookkeeping the driver does not expose (sizes
 * of allocations and handles, which mapping holds which handle) that in_use needs.
 *
 * Not thread safe by itself: the allocator object serializes calls to a device. */
#include "device/cuda_api.h"
#include "device/device.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct cuda_device {
    fl_device base;
    cuda_fns fn;
    void *lib;                  /* dlopen handle */
    CUdevice dev;
    int ordinal;
    CUcontext ctx;              /* the context every call runs in */
    int retained;               /* ctx is the primary context we retained */
    fl_map allocs;              /* cuMemAlloc address -> bytes charged */
    fl_map reservations;        /* reserved va -> size */
    fl_map live_handles;        /* driver handle -> record index (live handles only) */
    fl_map mappings;            /* mapped va -> record index */
    cuda_handle *recs;
    uint32_t n_recs, cap_recs, free_recs;
} cuda_device;

static inline cuda_device *cuda(fl_device *d) { return (cuda_device *)d; }

/* Calls the driver and adds the call's wall time to time_us: real device time, not a
 * model. `call` is a member call of the function table, e.g. cuMemCreate(&h, ...). */
#define CU(c, r, call)                                                                  \
    do {                                                                                \
        uint64_t t0_ = fl_now_ns();                                                     \
        (r) = (c)->fn.call;                                                             \
        (c)->base.counters.time_us += (double)(fl_now_ns() - t0_) / 1e3;                \
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
    return fl_fail(status_of(r), "cuda %s: %s (%d)", call, name, r);
}

static fl_status no_vmm(cuda_device *c, const char *call)
{
    return fl_fail(FL_ERR_UNSUPPORTED,
                   "cuda %s: device %d has no virtual memory management "
                   "(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0); use policy:cca",
                   call, c->ordinal);
}

/* The driver works on the calling thread's current context; the allocator may be called
 * from any thread, so make ours current first (one cheap query when it already is). */
static fl_status ensure_ctx(cuda_device *c)
{
    CUcontext cur = NULL;
    CUresult r;
    CU(c, r, cuCtxGetCurrent(&cur));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxGetCurrent()");
    if (cur == c->ctx)
        return FL_OK;
    CU(c, r, cuCtxSetCurrent(c->ctx));
    return r == CUDA_SUCCESS ? FL_OK : cu_fail(c, r, "cuCtxSetCurrent(%p)", (void *)c->ctx);
}

/* ---- cudaMalloc path -------------------------------------------------------------- */

static fl_status cu_mem_alloc(fl_device *d, uint64_t size, uint64_t *addr)
{
    cuda_device *c = cuda(d);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUdeviceptr p = 0;
    CUresult r;
    CU(c, r, cuMemAlloc_v2(&p, size));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAlloc_v2(%llu bytes)", (unsigned long long)size);
    /* The driver does not say how much it really took (it packs small allocations and
     * rounds large ones to its pages): charge the request in 512 B steps, the least it
     * can take, so in_use is a lower bound on this path. */
    uint64_t bytes = fl_align_up(size, 512);
    if (fl_map_put(&c->allocs, p, bytes) != FL_OK) {
        CU(c, r, cuMemFree_v2(p));
        return FL_ERR_NOMEM;
    }
    d->counters.in_use += bytes;
    *addr = p;
    return FL_OK;
}

static fl_status cu_mem_free(fl_device *d, uint64_t addr)
{
    cuda_device *c = cuda(d);
    uint64_t bytes;
    /* Checked here, not left to the driver: an address some other code in the process
     * allocated is valid to cuMemFree, and freeing it would corrupt that code. */
    if (!fl_map_get(&c->allocs, addr, &bytes))
        return fl_fail(FL_ERR_INVALID, "cuda cuMemFree_v2(0x%llx): not an address this device's mem_alloc returned",
                       (unsigned long long)addr);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuMemFree_v2(addr));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemFree_v2(0x%llx)", (unsigned long long)addr);
    fl_map_remove(&c->allocs, addr, NULL);
    d->counters.in_use -= bytes;
    return FL_OK;
}

/* ---- virtual memory path ---------------------------------------------------------- */

static fl_status cu_reserve(fl_device *d, uint64_t size, uint64_t *va)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemAddressReserve");
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUdeviceptr p = 0;
    CUresult r;
    CU(c, r, cuMemAddressReserve(&p, size, d->granularity, 0, 0));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAddressReserve(%llu bytes, alignment %llu)", (unsigned long long)size,
                       (unsigned long long)d->granularity);
    if (fl_map_put(&c->reservations, p, size) != FL_OK) {
        CU(c, r, cuMemAddressFree(p, size));
        return FL_ERR_NOMEM;
    }
    *va = p;
    return FL_OK;
}

/* Whether any mapping this device made lies in [va, va+size). Only addr_free asks, once
 * per reservation, so a walk over the map's slots (UINT64_MAX: empty, util.h) beats
 * keeping counts per reservation on every map and unmap. */
static int has_mapping_in(const cuda_device *c, uint64_t va, uint64_t size)
{
    const fl_map *m = &c->mappings;
    for (uint64_t i = 0; m->count && i <= m->mask; i++)
        if (m->e[i].key != UINT64_MAX && m->e[i].key >= va && m->e[i].key - va < size)
            return 1;
    return 0;
}

static fl_status cu_addr_free(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    uint64_t reserved;
    /* The driver's behaviour for a range still mapped is not documented; the interface
     * refuses it, like sim.c, and a range reserved by other code is not ours to free. */
    if (!fl_map_get(&c->reservations, va, &reserved) || reserved != size)
        return fl_fail(FL_ERR_INVALID, "cuda cuMemAddressFree(0x%llx, %llu bytes): not a reservation of this device",
                       (unsigned long long)va, (unsigned long long)size);
    if (has_mapping_in(c, va, size))
        return fl_fail(FL_ERR_INVALID, "cuda cuMemAddressFree(0x%llx, %llu bytes): memory is still mapped in it",
                       (unsigned long long)va, (unsigned long long)size);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuMemAddressFree(va, size));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemAddressFree(0x%llx, %llu bytes)", (unsigned long long)va,
                       (unsigned long long)size);
    fl_map_remove(&c->reservations, va, NULL);
    return FL_OK;
}

static void alloc_prop(const cuda_device *c, CUmemAllocationProp *prop)
{
    memset(prop, 0, sizeof *prop);
    prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    /* NONE: handles cannot be exported. IPC (cuMemExportToShareableHandle) would need
     * POSIX_FILE_DESCRIPTOR here, where the device supports it. */
    prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop->location.id = c->ordinal;
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
            return fl_fail(FL_ERR_NOMEM, "cuda: host memory for %u handle records", cap);
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

static fl_status cu_create(fl_device *d, uint64_t size, uint64_t *handle)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemCreate");
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    uint32_t index = NO_RECORD;
    if ((s = new_record(c, &index)) != FL_OK)
        return s;
    CUmemAllocationProp prop;
    alloc_prop(c, &prop);
    CUmemGenericAllocationHandle h = 0;
    CUresult r;
    CU(c, r, cuMemCreate(&h, size, &prop, 0));
    if (r != CUDA_SUCCESS) {
        c->recs[index] = (cuda_handle){0, 0, 0, 0, c->free_recs};
        c->free_recs = index;
        return cu_fail(c, r, "cuMemCreate(%llu bytes, device %d)", (unsigned long long)size, c->ordinal);
    }
    c->recs[index] = (cuda_handle){h, size, 0, 1, NO_RECORD};
    /* UINT64_MAX is the map's empty key; no driver hands it out, but a wrong key would
     * corrupt the map silently. */
    if (h == UINT64_MAX || fl_map_put(&c->live_handles, h, index) != FL_OK) {
        CU(c, r, cuMemRelease(h));
        c->recs[index].live = 0;
        c->recs[index].size = 0;
        maybe_reclaim(c, index);
        return h == UINT64_MAX ? fl_fail(FL_ERR_DEVICE, "cuda cuMemCreate: the driver returned handle 0x%llx",
                                         (unsigned long long)h)
                               : FL_ERR_NOMEM;
    }
    d->counters.in_use += size;
    *handle = h;
    return FL_OK;
}

static fl_status cu_release(fl_device *d, uint64_t handle)
{
    cuda_device *c = cuda(d);
    uint64_t index;
    /* A handle value that is not live here may belong to other code (or be reused by the
     * driver for it): never pass it on. */
    if (!fl_map_get(&c->live_handles, handle, &index))
        return fl_fail(FL_ERR_INVALID, "cuda cuMemRelease(handle 0x%llx): not a live handle of this device",
                       (unsigned long long)handle);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuMemRelease(handle));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemRelease(handle 0x%llx)", (unsigned long long)handle);
    fl_map_remove(&c->live_handles, handle, NULL);
    c->recs[index].live = 0;
    maybe_reclaim(c, (uint32_t)index);
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
    if (!fl_map_get(&c->live_handles, handle, &index) || c->recs[index].size != size)
        return fl_fail(FL_ERR_INVALID, "cuda cuMemMap(0x%llx, %llu bytes, handle 0x%llx): not a live handle of this device of that size",
                       (unsigned long long)va, (unsigned long long)size, (unsigned long long)handle);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuMemMap(va, size, 0, handle, 0));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemMap(0x%llx, %llu bytes, handle 0x%llx)", (unsigned long long)va,
                       (unsigned long long)size, (unsigned long long)handle);
    if (fl_map_put(&c->mappings, va, index) != FL_OK) {
        CU(c, r, cuMemUnmap(va, size));
        return FL_ERR_NOMEM;
    }
    c->recs[index].mappings++;
    return FL_OK;
}

/* Unmaps whole mappings only. Each goes in its own cuMemUnmap: the driver documents
 * unmapping "the entire range that was mapped", and one call per mapping is the form
 * every driver accepts. Memory a kernel may still use must not be unmapped: that is the
 * caller's to ensure (the policies synchronize first). */
static fl_status cu_unmap(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemUnmap");
    uint64_t end = va + size, at, index;
    if (size == 0 || end < va)
        return fl_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): empty or wrapping range",
                       (unsigned long long)va, (unsigned long long)size);
    /* Check the whole range before unmapping any of it, so a refusal changes nothing. */
    for (at = va; at < end; at += c->recs[index].size)
        if (!fl_map_get(&c->mappings, at, &index))
            return fl_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): 0x%llx is not the start of a mapping of this device",
                           (unsigned long long)va, (unsigned long long)size, (unsigned long long)at);
    if (at != end)
        return fl_fail(FL_ERR_INVALID, "cuda cuMemUnmap(0x%llx, %llu bytes): the range ends inside a mapping",
                       (unsigned long long)va, (unsigned long long)size);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    for (at = va; at < end;) {
        fl_map_get(&c->mappings, at, &index);
        uint64_t n = c->recs[index].size;
        CUresult r;
        CU(c, r, cuMemUnmap(at, n));
        /* The mappings before a failure are gone and accounted for. */
        if (r != CUDA_SUCCESS)
            return cu_fail(c, r, "cuMemUnmap(0x%llx, %llu bytes)", (unsigned long long)at, (unsigned long long)n);
        fl_map_remove(&c->mappings, at, NULL);
        c->recs[index].mappings--;
        maybe_reclaim(c, (uint32_t)index);
        at += n;
    }
    return FL_OK;
}

static fl_status cu_set_access(fl_device *d, uint64_t va, uint64_t size)
{
    cuda_device *c = cuda(d);
    if (!d->vmm_supported)
        return no_vmm(c, "cuMemSetAccess");
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUmemAccessDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = c->ordinal;
    desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r;
    CU(c, r, cuMemSetAccess(va, size, &desc, 1));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuMemSetAccess(0x%llx, %llu bytes, device %d read-write)", (unsigned long long)va,
                       (unsigned long long)size, c->ordinal);
    return FL_OK;
}

static fl_status cu_synchronize(fl_device *d)
{
    cuda_device *c = cuda(d);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CU(c, r, cuCtxSynchronize());
    return r == CUDA_SUCCESS ? FL_OK : cu_fail(c, r, "cuCtxSynchronize()");
}

/* ---- events (record_stream) ------------------------------------------------------- */

static fl_status cu_event_record(fl_device *d, uint64_t stream, uint64_t *event)
{
    cuda_device *c = cuda(d);
    fl_status s = ensure_ctx(c);
    if (s != FL_OK)
        return s;
    CUresult r;
    CUevent ev = NULL;
    CU(c, r, cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuEventCreate()");
    CU(c, r, cuEventRecord(ev, (CUstream)(uintptr_t)stream));
    if (r != CUDA_SUCCESS) {
        s = cu_fail(c, r, "cuEventRecord(stream 0x%llx)", (unsigned long long)stream);
        CU(c, r, cuEventDestroy_v2(ev));
        return s;
    }
    *event = (uint64_t)(uintptr_t)ev;
    return FL_OK;
}

static fl_status cu_event_query(fl_device *d, uint64_t event, int *done)
{
    cuda_device *c = cuda(d);
    CUresult r;
    CU(c, r, cuEventQuery((CUevent)(uintptr_t)event));
    *done = r == CUDA_SUCCESS;
    return r == CUDA_SUCCESS || r == CUDA_ERROR_NOT_READY ? FL_OK : cu_fail(c, r, "cuEventQuery()");
}

static void cu_event_destroy(fl_device *d, uint64_t event)
{
    cuda_device *c = cuda(d);
    CUresult r;
    CU(c, r, cuEventDestroy_v2((CUevent)(uintptr_t)event));
    (void)r; /* nothing to do about a failed destroy: the event is not used again */
}

/* ---- CUDA graph capture ------------------------------------------------------------ */

/* Asked at every allocation and free of a frontend (src/allocator/graph.c): a driver
 * query with no GPU work, so it is not device time. */
static fl_status cu_capture_info(fl_device *d, uint64_t stream, int *status, uint64_t *id)
{
    cuda_device *c = cuda(d);
    fl_status s = ensure_ctx(c); /* the legacy stream (0) is the current context's */
    if (s != FL_OK)
        return s;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    cuuint64_t cid = 0;
    CUresult r = c->fn.cuStreamGetCaptureInfo((CUstream)(uintptr_t)stream, &st, &cid);
    if (r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) {
        *status = FL_CAPTURE_IMPLICIT;
        return FL_OK;
    }
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuStreamGetCaptureInfo(stream 0x%llx)", (unsigned long long)stream);
    *status = st == CU_STREAM_CAPTURE_STATUS_ACTIVE ? FL_CAPTURE_ACTIVE
            : st == CU_STREAM_CAPTURE_STATUS_INVALIDATED ? FL_CAPTURE_INVALIDATED : FL_CAPTURE_NONE;
    *id = *status == FL_CAPTURE_NONE ? 0 : (uint64_t)cid;
    return FL_OK;
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
static void give_back_leftovers(cuda_device *c)
{
    if (!c->allocs.count && !c->reservations.count && !c->mappings.count && !c->live_handles.count)
        return;
    if (ensure_ctx(c) != FL_OK)
        return;
    CUresult r;
    CU(c, r, cuCtxSynchronize()); /* leftovers may still be in use by queued work */
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
}

static void cu_destroy(fl_device *d)
{
    cuda_device *c = cuda(d);
    if (c->ctx) {
        give_back_leftovers(c);
        if (c->retained) {
            /* Leave the thread as we found it: nothing current, not a released context. */
            CUcontext cur = NULL;
            CUresult r;
            CU(c, r, cuCtxGetCurrent(&cur));
            if (r == CUDA_SUCCESS && cur == c->ctx)
                CU(c, r, cuCtxSetCurrent(NULL));
            CU(c, r, cuDevicePrimaryCtxRelease_v2(c->dev));
        }
    }
    fl_map_free(&c->allocs);
    fl_map_free(&c->reservations);
    fl_map_free(&c->live_handles);
    fl_map_free(&c->mappings);
    free(c->recs);
    if (c->lib)
        dlclose(c->lib);
    free(c);
}

static const fl_device_ops cuda_ops = {
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
    .capture_info = cu_capture_info,
    .capture_mode = cu_capture_mode,
    .destroy = cu_destroy,
};

void fl_cuda_params_default(fl_cuda_params *p)
{
    memset(p, 0, sizeof *p);
    p->library = NULL;
    p->device = 0;
}

static fl_status load_driver(cuda_device *c, const char *path)
{
    dlerror();
    /* NODELETE: after cuInit the driver runs threads of its own; unloading it under them
     * at dlclose would crash the process, so the library stays once loaded. */
    c->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!c->lib) {
        const char *why = dlerror();
        return fl_fail(FL_ERR_DEVICE, "cuda: cannot load the driver library %s: %s (no NVIDIA driver here? "
                       "set FRAGLESS_CUDA_LIB to its path)", path, why ? why : "unknown reason");
    }
    for (size_t i = 0; i < sizeof cuda_symbols / sizeof cuda_symbols[0]; i++) {
        void *sym = dlsym(c->lib, cuda_symbols[i].name);
        if (!sym)
            return fl_fail(FL_ERR_UNSUPPORTED, "cuda: %s has no symbol %s (a driver older than fragless needs?)",
                           path, cuda_symbols[i].name);
        memcpy((char *)&c->fn + cuda_symbols[i].offset, &sym, sizeof sym);
    }
    return FL_OK;
}

/* Capacity, granularity and VMM support of the device, read from the driver. */
static fl_status query_device(cuda_device *c)
{
    fl_device *d = &c->base;
    CUresult r;
    size_t total = 0;
    CU(c, r, cuDeviceTotalMem_v2(&total, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceTotalMem_v2(device %d)", c->ordinal);
    if (total == 0)
        return fl_fail(FL_ERR_DEVICE, "cuda: device %d reports 0 bytes of memory", c->ordinal);
    d->capacity = total;
    int vmm = 0;
    CU(c, r, cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device %d)", c->ordinal);
    d->vmm_supported = vmm != 0;
    d->is_gpu = 1;
    d->ordinal = c->ordinal;
    if (!d->vmm_supported) {
        /* No page size to ask for; 2 MiB is the driver's large page, which the cudaMalloc
         * path's policies only use to size their segments. */
        d->granularity = 2 * FL_MiB;
        return FL_OK;
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
    if (!fl_is_pow2(g))
        return fl_fail(FL_ERR_UNSUPPORTED, "cuda: device %d has allocation granularity %llu, not a power of two",
                       c->ordinal, (unsigned long long)g);
    d->granularity = g;
    return FL_OK;
}

/* Our context: the one current on this thread if any (the program's, e.g. made current
 * by the CUDA runtime), else the device's primary context, the one the runtime uses too. */
static fl_status open_context(cuda_device *c)
{
    CUresult r;
    CUcontext cur = NULL;
    CU(c, r, cuCtxGetCurrent(&cur));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuCtxGetCurrent()");
    if (cur) {
        c->ctx = cur;
        return FL_OK;
    }
    CU(c, r, cuDevicePrimaryCtxRetain(&c->ctx, c->dev));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDevicePrimaryCtxRetain(device %d)", c->ordinal);
    c->retained = 1;
    CU(c, r, cuCtxSetCurrent(c->ctx));
    return r == CUDA_SUCCESS ? FL_OK : cu_fail(c, r, "cuCtxSetCurrent(primary context of device %d)", c->ordinal);
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
        return fl_fail(FL_ERR_INVALID, "cuda: no device %d: the driver reports %d device%s (ordinals 0..%d)",
                       p->device, count, count == 1 ? "" : "s", count - 1);
    c->ordinal = p->device;
    CU(c, r, cuDeviceGet(&c->dev, p->device));
    if (r != CUDA_SUCCESS)
        return cu_fail(c, r, "cuDeviceGet(%d)", p->device);
    if ((s = open_context(c)) != FL_OK)
        return s;
    if ((s = query_device(c)) != FL_OK)
        return s;
    if (fl_map_init(&c->allocs, 64) != FL_OK || fl_map_init(&c->reservations, 16) != FL_OK ||
        fl_map_init(&c->live_handles, 256) != FL_OK || fl_map_init(&c->mappings, 256) != FL_OK)
        return fl_fail(FL_ERR_NOMEM, "cuda device: host memory");
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
        return fl_fail(FL_ERR_NOMEM, "cuda device: host memory");
    c->base.ops = &cuda_ops;
    c->free_recs = NO_RECORD;
    fl_status s = open_device(c, p);
    if (s != FL_OK) {
        /* Keep the message: teardown calls the driver, which must not overwrite it. */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", fl_last_error());
        cu_destroy(&c->base);
        return fl_fail(s, "%s", msg);
    }
    c->base.capture_watch = 1; /* allocations ask the driver about CUDA graph captures */
    *out = &c->base;
    return FL_OK;
}
