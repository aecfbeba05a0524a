/* The device interface: every policy gets memory through these calls, never from the
 * driver directly. Implementations: sim.c (simulated GPU) and cuda.c (the CUDA driver).
 * The fli_dev_* wrappers count calls, track physical bytes in use, inject faults for
 * every device and own the allocator's limit: a create or mem_alloc beyond it is refused
 * before the device is asked (and is not a call), so every policy meets the limit as
 * the device being full. */
#ifndef FL_DEVICE_H
#define FL_DEVICE_H

#include "util/util.h"

/* The most pieces one block is exported as (SCM_RIGHTS carries at most 253 descriptors in
 * one message: what CUDA IPC under `fragless run` sends them with). */
#define FLI_IPC_MAX_PIECES 250

typedef struct fli_device_ops {
    const char *name;
    /* cudaMalloc-like path: physical memory and address in one call. */
    fl_status (*mem_alloc)(fl_device *d, uint64_t size, uint64_t *addr);
    fl_status (*mem_free)(fl_device *d, uint64_t addr);
    /* Virtual memory path. Sizes and addresses are multiples of the granularity. */
    fl_status (*reserve)(fl_device *d, uint64_t size, uint64_t *va);
    fl_status (*addr_free)(fl_device *d, uint64_t va, uint64_t size);
    fl_status (*create)(fl_device *d, uint64_t size, uint64_t *handle);
    fl_status (*release)(fl_device *d, uint64_t handle);
    /* Maps the whole handle at va (offset 0). */
    fl_status (*map)(fl_device *d, uint64_t va, uint64_t size, uint64_t handle);
    /* [va, va+size) must consist of whole mappings. */
    fl_status (*unmap)(fl_device *d, uint64_t va, uint64_t size);
    /* [va, va+size) must be mapped. */
    fl_status (*set_access)(fl_device *d, uint64_t va, uint64_t size);
    /* Waits for all work on the device (before unmapping or cross-stream reuse). */
    fl_status (*synchronize)(fl_device *d);
    /* Events (record_stream): a new event recorded on stream; query sets *done when the
     * work before it has finished; destroy frees it. NULL on devices with no
     * asynchronous work (sim): every event is complete at once. Not counted as calls. */
    fl_status (*event_record)(fl_device *d, uint64_t stream, uint64_t *event);
    fl_status (*event_query)(fl_device *d, uint64_t event, int *done);
    void (*event_destroy)(fl_device *d, uint64_t event);
    /* IPC (fl_export / fl_import, and CUDA IPC under `fragless run`; NULL: the device
     * cannot, FL_ERR_UNSUPPORTED). Not counted as calls: they move no memory in or out of
     * the allocator. export_block: the physical allocations under [va, va+size), one
     * after another in the address space, at most max, each as a file descriptor (the
     * caller's to close) in out[0..*n); the block starts *offset bytes into the first.
     * import: maps another process's allocations here in that order (their memory stays
     * the exporter's: not in in_use); *va is the block's address, offset bytes into the
     * first; the descriptors stay the caller's. import_close undoes it. */
    fl_status (*export_block)(fl_device *d, uint64_t va, uint64_t size, fl_ipc_piece *out, uint32_t max,
                              uint32_t *n, uint64_t *offset);
    fl_status (*import)(fl_device *d, const fl_ipc_piece *pieces, uint32_t n, uint64_t offset, uint64_t size,
                        uint64_t *va);
    fl_status (*import_close)(fl_device *d, uint64_t va);
    /* Legacy CUDA IPC (cudaIpcGetMemHandle; cuda, NULL elsewhere: FL_ERR_UNSUPPORTED): the
     * start of the driver allocation holding va, whose whole a legacy handle shares and
     * opens at; FL_ERR_UNSUPPORTED when va lies in virtual memory (mapped handles), which
     * has no legacy handle. Not counted as a call. */
    fl_status (*legacy_ipc_base)(fl_device *d, uint64_t va, uint64_t *base);
    /* CUDA graph capture (cuda; NULL on devices without it: never capturing). Not counted
     * as calls. capture_info: whether work queued on stream is being captured into a
     * graph (FL_CAPTURE_*) and the capture's id (unique per capture, 0 when none).
     * capture_mode: swaps the calling thread's capture mode with *mode (FL_CAPTURE_MODE_*,
     * cuThreadExchangeStreamCaptureMode). */
    fl_status (*capture_info)(fl_device *d, uint64_t stream, int *status, uint64_t *id);
    fl_status (*capture_mode)(fl_device *d, int *mode);
    /* The ordinal of the device whose context stream belongs to (cuda; NULL elsewhere). */
    fl_status (*stream_device)(fl_device *d, uint64_t stream, int *ordinal);
    /* The device's primary context was reset (cudaDeviceReset; cuda, NULL elsewhere): its
     * mem_alloc memory is gone (forgotten, in_use drops), its events and streams too, and
     * the context is made again before the next call. Not counted as a call. */
    void (*context_reset)(fl_device *d);
    void (*destroy)(fl_device *d);
} fli_device_ops;

/* A stream's capture status (capture_info). IMPLICIT: the legacy stream was asked while
 * another stream of its context captures (the stream itself does not). */
enum { FL_CAPTURE_NONE = 0, FL_CAPTURE_ACTIVE = 1, FL_CAPTURE_INVALIDATED = 2, FL_CAPTURE_IMPLICIT = 3 };
/* A thread's capture mode (capture_mode): which calls a capture forbids it. */
enum { FL_CAPTURE_MODE_GLOBAL = 0, FL_CAPTURE_MODE_THREAD_LOCAL = 1, FL_CAPTURE_MODE_RELAXED = 2 };

struct fl_device {
    const fli_device_ops *ops;
    uint64_t capacity;
    uint64_t granularity;
    int vmm_supported;
    int is_gpu;             /* a real GPU (the cuda device); 0 for simulated ones */
    int ordinal;            /* the GPU's ordinal when is_gpu */
    int has_uuid;           /* uuid holds the GPU's UUID (the cuda device) */
    unsigned char uuid[16]; /* NVML's identity of the GPU, whatever CUDA_VISIBLE_DEVICES says */
    uint64_t limit;         /* the most its allocator may hold; 0 = none (fli_dev_limit) */
    void *owner;            /* the allocator on it (one per device), NULL when none */
    /* Updated by the wrappers (calls, failed_calls, peak) and by implementations
     * (in_use on create/release/mem_alloc/mem_free; time_us per call). */
    fl_device_counters counters;
    /* The fault injector's plan (fl_device_set_fault), read by the wrappers; 0 = off. */
    uint64_t fail_call, fail_from;
    /* CUDA graphs (src/allocator/graph.c). capture_watch: the device can capture (it has
     * capture_info), so its allocator asks about captures; capture_info must be
     * thread-safe (thread caches ask it outside the allocator's lock). capture_guard: the id of a
     * capture underway while its allocator works; the wrappers then refuse, without
     * asking the device, what capture forbids or what could take memory a graph uses:
     * synchronize, event queries, unmap, release, mem_free and addr_free. */
    int capture_watch;
    uint64_t capture_guard;
};

/* The limit rule, written once: the most physical memory the device's user may hold,
 * the limit when one is set below the capacity, else the capacity. */
static inline uint64_t fli_dev_limit(const fl_device *d)
{
    return d->limit && d->limit < d->capacity ? d->limit : d->capacity;
}
/* What may still be obtained under the limit (0 when at or above it). */
static inline uint64_t fli_dev_room(const fl_device *d)
{
    uint64_t lim = fli_dev_limit(d);
    return lim > d->counters.in_use ? lim - d->counters.in_use : 0;
}

/* Wrappers: the only way policies call a device. create and mem_alloc beyond the limit
 * fail with FL_ERR_OOM without a device call (not counted as one). */
fl_status fli_dev_mem_alloc(fl_device *d, uint64_t size, uint64_t *addr);
fl_status fli_dev_mem_free(fl_device *d, uint64_t addr);
fl_status fli_dev_reserve(fl_device *d, uint64_t size, uint64_t *va);
fl_status fli_dev_addr_free(fl_device *d, uint64_t va, uint64_t size);
fl_status fli_dev_create(fl_device *d, uint64_t size, uint64_t *handle);
fl_status fli_dev_release(fl_device *d, uint64_t handle);
fl_status fli_dev_map(fl_device *d, uint64_t va, uint64_t size, uint64_t handle);
fl_status fli_dev_unmap(fl_device *d, uint64_t va, uint64_t size);
fl_status fli_dev_set_access(fl_device *d, uint64_t va, uint64_t size);
fl_status fli_dev_synchronize(fl_device *d);
/* Events; on a device without them, record gives 0 and query says done. */
fl_status fli_dev_event_record(fl_device *d, uint64_t stream, uint64_t *event);
fl_status fli_dev_event_query(fl_device *d, uint64_t event, int *done);
void fli_dev_event_destroy(fl_device *d, uint64_t event);
/* IPC; FL_ERR_UNSUPPORTED on a device without it. */
fl_status fli_dev_export(fl_device *d, uint64_t va, uint64_t size, fl_ipc_piece *out, uint32_t max, uint32_t *n,
                         uint64_t *offset);
fl_status fli_dev_legacy_ipc_base(fl_device *d, uint64_t va, uint64_t *base);
fl_status fli_dev_import(fl_device *d, const fl_ipc_piece *pieces, uint32_t n, uint64_t offset, uint64_t size,
                         uint64_t *va);
fl_status fli_dev_import_close(fl_device *d, uint64_t va);
/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" as NVML writes it, "" without a UUID;
 * buf holds at least 41 bytes. */
char *fli_dev_uuid_str(const fl_device *d, char *buf, size_t n);
/* Capture state of a stream (FL_CAPTURE_NONE on devices without capture_info, and when
 * the device cannot tell), and the thread's capture mode swap (nothing without it). */
fl_status fli_dev_capture_info(fl_device *d, uint64_t stream, int *status, uint64_t *id);
fl_status fli_dev_capture_mode(fl_device *d, int *mode);
/* The ordinal of the device whose context stream was made in (cuda: cuStreamGetCtx);
 * FL_ERR_UNSUPPORTED on devices without streams of their own. */
fl_status fli_dev_stream_device(fl_device *d, uint64_t stream, int *ordinal);
/* The device's primary context was reset (cudaDeviceReset, after it): nothing on
 * devices without one. */
void fli_dev_context_reset(fl_device *d);

/* The CUDA runtime's per-thread default stream (cudaStreamPerThread, 0x2) is one handle
 * that names a different stream in each thread; the allocator keys its heaps, events and
 * captures by stream value, so a frontend that receives that handle passes this key
 * instead: the calling thread's own, never reused by another thread, never a real
 * stream handle (those are user-space pointers, or 0, 1 and 2): FLI_PER_THREAD_TAG | n for
 * the n-th thread to ask. The cuda device turns it back into the
 * per-thread handle for the driver when the thread it names calls; another thread's key
 * cannot be asked about (fli_dev_capture_info answers not capturing, an event record
 * fails with FL_ERR_UNSUPPORTED). */
#define FLI_PER_THREAD_TAG (UINT64_C(0xfff0) << 48) /* above every user-space address */
uint64_t fli_per_thread_stream(void);
static inline int fli_is_per_thread_stream(uint64_t stream)
{
    return (stream & FLI_PER_THREAD_TAG) == FLI_PER_THREAD_TAG;
}

#endif
