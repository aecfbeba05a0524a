/* libfragless_preload.so: the CUDA runtime's cudaMalloc (and its pitched forms,
 * cudaMallocPitch and cudaMalloc3D), cudaFree, cudaMallocAsync,
 * cudaFreeAsync and cudaMemGetInfo, served by fragless for any program that calls them
 * through a shared libcudart (LD_PRELOAD, set up by `fragless run`; PyTorch sends every
 * tensor here under PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync, which `fragless run`
 * sets). One allocator per device, from the frontend table the PyTorch entry points use.
 * The runtime's semantics are kept: cudaFree waits for the device that owns the block;
 * cudaFreeAsync on another stream than the block's makes it reusable only once that
 * stream's work is done; cudaFree(NULL), which creates the primary context, goes to the
 * runtime.
 *
 * cudaStreamDestroy is interposed too, so that the allocators retire the stream before it
 * goes (fli_allocator_stream_gone); cudaDeviceReset, around which the device's
 * allocators settle what the reset destroys (below); and the _ptsz forms of
 * the two Async calls, which a program built with per-thread default streams calls.
 * graphs.c interposes the graph calls that say when a graph's memory may go back; ipc.c
 * the CUDA IPC calls, for the memory fragless serves.
 *
 * Built with hidden visibility: these functions (tests/test_preload.c lists them) are the
 * library's only exported symbols, so nothing else of the process binds to fragless' internals (and they bind
 * to nothing of the process). Not served: programs linked with the static cudart
 * (nvcc's default; build with -cudart shared), and calls made inside libcudart itself;
 * a process that used the driver with no call served is told so at exit. */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocator/allocator.h"
#include "frontend/frontend.h"

#include "preload/preload.h"

FL_EXPORT cudaError_t cudaMalloc(void **ptr, size_t size);
FL_EXPORT cudaError_t cudaFree(void *ptr);
struct cudaExtent {
    size_t width, height, depth;
};
struct cudaPitchedPtr {
    void *ptr;
    size_t pitch, xsize, ysize;
};
FL_EXPORT cudaError_t cudaMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height);
FL_EXPORT cudaError_t cudaMalloc3D(struct cudaPitchedPtr *p, struct cudaExtent extent);
FL_EXPORT cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream);
FL_EXPORT cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
FL_EXPORT cudaError_t cudaMallocAsync_ptsz(void **ptr, size_t size, cudaStream_t stream);
FL_EXPORT cudaError_t cudaFreeAsync_ptsz(void *ptr, cudaStream_t stream);
FL_EXPORT cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
FL_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream);
FL_EXPORT cudaError_t cudaDeviceReset(void);

typedef cudaError_t (*get_device_fn)(int *);
typedef cudaError_t (*set_device_fn)(int);
typedef cudaError_t (*free_fn)(void *);
typedef cudaError_t (*free_async_fn)(void *, cudaStream_t);
typedef cudaError_t (*mem_get_info_fn)(size_t *, size_t *);
typedef cudaError_t (*sync_fn)(void);
typedef cudaError_t (*stream_destroy_fn)(cudaStream_t);
typedef cudaError_t (*malloc_pitch_fn)(void **, size_t *, size_t, size_t);
typedef cudaError_t (*malloc_3d_fn)(struct cudaPitchedPtr *, struct cudaExtent);

/* The real runtime's entry points, if the program has one: the current device comes
 * from it, cudaFree synchronizes through it, memory fragless did not hand out goes back
 * to it, and free memory is its view of the device. NULL where there is none. */
static struct {
    get_device_fn get_device;
    set_device_fn set_device;
    sync_fn sync;
    free_fn free;
    free_async_fn free_async, free_async_ptsz;
    mem_get_info_fn mem_get_info;
    stream_destroy_fn stream_destroy;
    sync_fn reset;
    malloc_pitch_fn malloc_pitch;
    malloc_3d_fn malloc_3d;
} real;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void resolve_real(void)
{
    real.get_device = (get_device_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaGetDevice");
    real.set_device = (set_device_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaSetDevice");
    real.sync = (sync_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaDeviceSynchronize");
    real.free = (free_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaFree");
    real.free_async = (free_async_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaFreeAsync");
    real.free_async_ptsz = (free_async_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaFreeAsync_ptsz");
    real.mem_get_info = (mem_get_info_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMemGetInfo");
    real.stream_destroy = (stream_destroy_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaStreamDestroy");
    real.reset = (sync_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaDeviceReset");
    real.malloc_pitch = (malloc_pitch_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMallocPitch");
    real.malloc_3d = (malloc_3d_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaMalloc3D");
}

int fli_preload_verbose(void)
{
    const char *v = getenv("FRAGLESS_VERBOSE");
    return v && !strcmp(v, "1");
}

/* Calls served, for the notice at exit. */
static atomic_ulong served;

/* Whether a loaded object's name contains what (dl_iterate_phdr's callback). */
static int has_object(struct dl_phdr_info *info, size_t size, void *what)
{
    (void)size;
    return info->dlpi_name && strstr(info->dlpi_name, (const char *)what) != NULL;
}

/* A process that used the CUDA driver (libcuda, or the library FRAGLESS_CUDA_LIB names)
 * without any shared CUDA runtime, and made no call fragless serves, ran on the GPU
 * without fragless: say why, since nothing else will. A process that never touched the
 * driver (a shell, a launcher such as torchrun's parent) says nothing; one with a shared
 * runtime that allocated nothing through it has nothing to be told. */
__attribute__((destructor)) static void preload_notice(void)
{
    if (atomic_load(&served))
        return;
    const char *lib = getenv("FRAGLESS_CUDA_LIB");
    const char *base = lib && *lib ? strrchr(lib, '/') : NULL;
    base = base ? base + 1 : lib && *lib ? lib : NULL;
    int driver = dl_iterate_phdr(has_object, (void *)"libcuda.so") || (base && dl_iterate_phdr(has_object, (void *)base));
    if (!driver || dl_iterate_phdr(has_object, (void *)"libcudart"))
        return;
    char comm[64] = "";
    FILE *f = fopen("/proc/self/comm", "r");
    if (f) {
        if (fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = 0;
        fclose(f);
    }
    fprintf(stderr, "fragless: process %d (%s) used the CUDA driver but made no cudaMalloc/cudaMallocAsync call "
            "fragless could serve: its CUDA runtime is most likely linked statically (nvcc's default; build with "
            "-cudart shared), or it allocates with the driver API directly. Its GPU memory did not come from fragless.\n",
            (int)getpid(), comm);
}

__attribute__((constructor)) static void preload_banner(void)
{
    /* Only a banner: every program the command starts loads this library (a shell
     * script's shells too), so nothing is set up before the first CUDA call. */
    if (fli_preload_verbose()) {
        const char *conf = getenv("FRAGLESS_CONF");
        fprintf(stderr, "fragless: serving cudaMalloc/cudaFree/cudaMallocAsync/cudaFreeAsync/cudaMemGetInfo "
                "in pid %d (FRAGLESS_CONF=%s)\n", (int)getpid(), conf ? conf : "");
    }
}

/* The runtime's current device (cudaSetDevice), else device 0: without a runtime, or
 * when it cannot say, there is no other device the program could have chosen. */
static int current_device(void)
{
    pthread_once(&real_once, resolve_real);
    int dev = 0;
    if (real.get_device && real.get_device(&dev) != cudaSuccess)
        dev = 0;
    return dev;
}

/* A program that probes how much it can allocate fails on purpose, many times: the
 * first failure says why on stderr, the rest only with FRAGLESS_VERBOSE=1. */
static void report_failure(const char *fn, size_t size, int dev, const char *why)
{
    static atomic_int reported;
    int first = !atomic_exchange_explicit(&reported, 1, memory_order_relaxed);
    if (first || fli_preload_verbose())
        fprintf(stderr, "fragless: %s of %zu bytes on device %d failed: %s%s\n", fn, size, dev, why,
                first && !fli_preload_verbose() ? " (FRAGLESS_VERBOSE=1 reports every failure)" : "");
}

/* The allocator's name for a stream: the handle, but for the per-thread default stream,
 * which names another stream in each thread: the calling thread's key (device.h). Without
 * it, a block one thread freed on its per-thread stream went at once to another thread's,
 * which does not wait for the first thread's work. */
static void per_thread_ends(void *unused);
static pthread_key_t per_thread_key;
static int per_thread_key_made;
static pthread_once_t per_thread_once = PTHREAD_ONCE_INIT;
static void make_per_thread_key(void) { per_thread_key_made = pthread_key_create(&per_thread_key, per_thread_ends) == 0; }

uint64_t fli_preload_stream_key(cudaStream_t stream)
{
    if (stream != PER_THREAD)
        return (uint64_t)(uintptr_t)stream;
    /* The thread's end retires its key (per_thread_ends): keys are never reused, so what
     * the allocator keeps for a thread that ended would otherwise stay its own. */
    pthread_once(&per_thread_once, make_per_thread_key);
    if (per_thread_key_made && !pthread_getspecific(per_thread_key))
        pthread_setspecific(per_thread_key, (void *)1);
    return fli_per_thread_stream();
}

/* Every allocator forgets a stream about to go (fli_allocator_stream_gone: what the
 * policy kept for it may serve a stream made later, once its work is done). */
static void streams_gone(uint64_t key)
{
    for (int d = 0; d < FL_FRONTEND_MAX_DEVICES; d++) {
        fl_allocator *a = fli_frontend_existing(d);
        if (a)
            fli_allocator_stream_gone(a, key);
    }
}

/* A thread that used its per-thread default stream ends (that stream goes with it). */
static void per_thread_ends(void *unused)
{
    (void)unused;
    streams_gone(fli_per_thread_stream());
}

/* Streams destroyed so far: a thread's remembered stream device (alloc_device) is good
 * only while no stream was destroyed since (its handle may name another stream now). */
static atomic_uint streams_destroyed;
static _Thread_local struct {
    cudaStream_t stream;
    unsigned destroyed;
    int dev;
} last_stream = {NULL, 0, -1};

/* The device an allocation on stream goes to: the stream's, as the runtime's
 * cudaMallocAsync does (it allocates from the pool of the stream's device, whatever the
 * current one); the current device for the special streams (NULL, legacy, per-thread),
 * or when the driver cannot say. One driver query per stream a thread uses in a row. */
int fli_preload_alloc_device(cudaStream_t stream)
{
    int cur = current_device();
    if ((uintptr_t)stream <= (uintptr_t)PER_THREAD)
        return cur;
    unsigned destroyed = atomic_load_explicit(&streams_destroyed, memory_order_acquire);
    if (last_stream.stream == stream && last_stream.destroyed == destroyed && last_stream.dev >= 0)
        return last_stream.dev;
    fl_allocator *a = fli_frontend_allocator(cur); /* its device asks the driver */
    int dev = cur;
    if (!a || fli_dev_stream_device(fli_allocator_policy(a)->dev, (uint64_t)(uintptr_t)stream, &dev) != FL_OK ||
        dev < 0 || dev >= FL_FRONTEND_MAX_DEVICES) {
        if (fli_preload_verbose())
            fprintf(stderr, "fragless: the device of stream %p: %s; allocating on the current device %d\n",
                    (void *)stream, a ? fl_last_error() : "no allocator", cur);
        fli_clear_error();
        return cur;
    }
    last_stream.stream = stream;
    last_stream.destroyed = destroyed;
    last_stream.dev = dev;
    return dev;
}

static void sync_add(uint64_t addr, int dev);
static void sync_remove(uint64_t addr);

/* sync: cudaMalloc's block (kept in the set cudaDeviceReset frees). */
static cudaError_t preload_alloc(const char *fn, void **ptr, size_t size, cudaStream_t stream, int sync)
{
    atomic_fetch_add_explicit(&served, 1, memory_order_relaxed);
    if (!ptr)
        return cudaErrorInvalidValue;
    *ptr = NULL;
    if (size == 0)
        return cudaSuccess; /* as the runtime does: no memory, a NULL pointer, no error */
    int dev = fli_preload_alloc_device(stream);
    fl_allocator *a = fli_frontend_allocator(dev); /* says why on stderr when it fails */
    if (!a)
        return cudaErrorMemoryAllocation;
    uint64_t addr;
    if (fl_alloc(a, size, fli_preload_stream_key(stream), &addr) != FL_OK) {
        report_failure(fn, size, dev, fl_last_error());
        return cudaErrorMemoryAllocation;
    }
    if (sync)
        sync_add(addr, dev);
    *ptr = (void *)(uintptr_t)addr;
    return cudaSuccess;
}

/* The device whose allocator holds the live block at ptr (the current device's first:
 * the runtime frees a pointer of any device whatever the current one is), its allocator
 * and the block's stream (*known 0 when the policy does not keep it); -1 when no
 * allocator has it. */
static int owner_of(void *ptr, int cur, fl_allocator **out, uint64_t *stream, int *known)
{
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    for (int i = -1; i < FL_FRONTEND_MAX_DEVICES; i++) {
        if (i == cur)
            continue;
        int d = i < 0 ? cur : i;
        fl_allocator *a = fli_frontend_existing(d);
        if (a && fli_allocator_block_stream(a, addr, stream, known) == FL_OK) {
            *out = a;
            return d;
        }
    }
    return -1;
}

int fli_preload_current_device(void) { return current_device(); }

int fli_preload_owner(void *ptr, fl_allocator **a)
{
    uint64_t stream = 0;
    int known = 0;
    return owner_of(ptr, current_device(), a, &stream, &known);
}

/* Gives a block back; a device failure is said on stderr (the block stays fragless's). */
static fl_status give_back(const char *fn, fl_allocator *a, int dev, void *ptr)
{
    fl_status s = fl_free(a, (uint64_t)(uintptr_t)ptr);
    if (s != FL_OK)
        fprintf(stderr, "fragless: %s(%p) on device %d: %s\n", fn, ptr, dev, fl_last_error());
    return s;
}

/* The runtime's cudaDeviceSynchronize on device dev: made current for the call (the
 * runtime's own cudaFree waits for the device the block lives on), then the program's
 * device again. */
static cudaError_t sync_device(int dev, int cur)
{
    if (!real.sync)
        return cudaSuccess;
    if (dev == cur || !real.set_device)
        return real.sync();
    cudaError_t e = real.set_device(dev);
    if (e != cudaSuccess)
        return e;
    e = real.sync();
    cudaError_t back = real.set_device(cur);
    return e != cudaSuccess ? e : back;
}

/* Memory from elsewhere — cudaMallocHost, cudaMallocManaged, a memory pool, a block
 * allocated before fragless was loaded — goes to the runtime, when there is one. */
cudaError_t fli_preload_not_ours(const char *fn, void *ptr)
{
    fprintf(stderr, "fragless: %s(%p): not memory fragless allocated, and there is no CUDA runtime "
            "to pass it to\n", fn, ptr);
    return cudaErrorInvalidValue;
}

FL_EXPORT cudaError_t cudaMalloc(void **ptr, size_t size)
{
    /* Stream 0: memory from cudaMalloc is usable on every stream once it returns. */
    return preload_alloc("cudaMalloc", ptr, size, NULL, 1);
}

/* The pitched allocations are cudaMalloc's memory with rows padded: each row's pitch a
 * multiple of 512 bytes, which meets every GPU's alignment for coalescing and for binding
 * a texture (cudaDevAttrTexturePitchAlignment is 32 on current GPUs); programs read the
 * pitch they are given. Freed by cudaFree like cudaMalloc's blocks (before, they came
 * from the runtime, beside fragless's limit and out of its view). A width, height or
 * depth of 0, or a size that does not fit in size_t, is the runtime's to answer. */
#define PITCH_ALIGN ((size_t)512)

static int pitched_size(size_t width, size_t rows, size_t *pitch, size_t *size)
{
    if (!width || !rows || width > SIZE_MAX - (PITCH_ALIGN - 1))
        return 0;
    *pitch = (width + PITCH_ALIGN - 1) / PITCH_ALIGN * PITCH_ALIGN;
    if (*pitch > SIZE_MAX / rows)
        return 0;
    *size = *pitch * rows;
    return 1;
}

FL_EXPORT cudaError_t cudaMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height)
{
    pthread_once(&real_once, resolve_real);
    size_t p = 0, size = 0;
    if (!ptr || !pitch || !pitched_size(width, height, &p, &size))
        return real.malloc_pitch ? real.malloc_pitch(ptr, pitch, width, height) : cudaErrorInvalidValue;
    cudaError_t e = preload_alloc("cudaMallocPitch", ptr, size, NULL, 1);
    if (e == cudaSuccess)
        *pitch = p;
    return e;
}

FL_EXPORT cudaError_t cudaMalloc3D(struct cudaPitchedPtr *out, struct cudaExtent extent)
{
    pthread_once(&real_once, resolve_real);
    size_t p = 0, size = 0, rows = extent.height;
    if (!out || !extent.depth || (rows && extent.depth > SIZE_MAX / rows) ||
        !pitched_size(extent.width, rows * extent.depth, &p, &size))
        return real.malloc_3d ? real.malloc_3d(out, extent) : cudaErrorInvalidValue;
    void *ptr = NULL;
    cudaError_t e = preload_alloc("cudaMalloc3D", &ptr, size, NULL, 1);
    if (e == cudaSuccess)
        *out = (struct cudaPitchedPtr){ptr, p, extent.width, extent.height};
    return e;
}

/* The runtime's cudaFree waits for the device to finish its work, and programs count on
 * it: a block freed while a kernel still uses it must not be handed out again (on any
 * stream: cudaMalloc's blocks are everyone's) until that kernel is done. The device
 * waited for is the block's, which need not be the current one. The wait's error, a
 * failure of earlier asynchronous work, is returned as the runtime does. A block
 * fragless holds but cannot free (the device failed) is not the runtime's to free:
 * cudaErrorUnknown. cudaFree(NULL) is the runtime's: programs call it to create the
 * primary context. */
FL_EXPORT cudaError_t cudaFree(void *ptr)
{
    atomic_fetch_add_explicit(&served, 1, memory_order_relaxed);
    pthread_once(&real_once, resolve_real);
    if (!ptr)
        return real.free ? real.free(ptr) : cudaSuccess;
    int cur = current_device(), known;
    uint64_t stream;
    fl_allocator *a = NULL;
    int dev = owner_of(ptr, cur, &a, &stream, &known);
    if (dev < 0)
        return real.free ? real.free(ptr) : fli_preload_not_ours("cudaFree", ptr);
    cudaError_t synced = sync_device(dev, cur);
    sync_remove((uint64_t)(uintptr_t)ptr);
    return give_back("cudaFree", a, dev, ptr) == FL_OK ? synced : cudaErrorUnknown;
}

/* The block belongs to stream's heap; reuse by another stream waits for a
 * synchronization (docs/ARCHITECTURE.md). */
FL_EXPORT cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream)
{
    return preload_alloc("cudaMallocAsync", ptr, size, stream, 0);
}

/* Stream-ordered: the block is free once the work queued on `stream` before this call is
 * done. On the block's own stream that order is the stream's, so it is reusable there at
 * once (and elsewhere only after a synchronization, as every block). Freed on another
 * stream, it must wait for that stream's work: an event is recorded there
 * (fl_record_stream) and the block comes back when the event completes. fn: the entry
 * point's name; pass: the runtime's, for memory that is not fragless's, called with the
 * program's own stream argument `given`. */
static cudaError_t free_async(const char *fn, void *ptr, cudaStream_t stream, free_async_fn pass, cudaStream_t given)
{
    atomic_fetch_add_explicit(&served, 1, memory_order_relaxed);
    if (!ptr)
        return cudaSuccess;
    pthread_once(&real_once, resolve_real);
    int known;
    uint64_t own, s = fli_preload_stream_key(stream);
    fl_allocator *a = NULL;
    int dev = owner_of(ptr, current_device(), &a, &own, &known);
    if (dev < 0)
        return pass ? pass(ptr, given) : fli_preload_not_ours(fn, ptr);
    if ((!known || own != s) && fl_record_stream(a, (uint64_t)(uintptr_t)ptr, s) != FL_OK) {
        fprintf(stderr, "fragless: %s(%p, stream %p) on device %d: %s\n", fn, ptr, (void *)stream, dev,
                fl_last_error());
        return cudaErrorUnknown;
    }
    sync_remove((uint64_t)(uintptr_t)ptr);
    return give_back(fn, a, dev, ptr) == FL_OK ? cudaSuccess : cudaErrorUnknown;
}

FL_EXPORT cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream)
{
    pthread_once(&real_once, resolve_real);
    return free_async("cudaFreeAsync", ptr, stream, real.free_async, stream);
}

/* A program built with --default-stream per-thread (CUDA_API_PER_THREAD_DEFAULT_STREAM)
 * calls these instead: there the NULL stream is the calling thread's per-thread stream. */
FL_EXPORT cudaError_t cudaMallocAsync_ptsz(void **ptr, size_t size, cudaStream_t stream)
{
    return preload_alloc("cudaMallocAsync_ptsz", ptr, size, stream ? stream : PER_THREAD, 0);
}

FL_EXPORT cudaError_t cudaFreeAsync_ptsz(void *ptr, cudaStream_t stream)
{
    pthread_once(&real_once, resolve_real);
    return free_async("cudaFreeAsync_ptsz", ptr, stream ? stream : PER_THREAD, real.free_async_ptsz, stream);
}

/* The stream goes: the allocators retire it first (an event recorded on it while it
 * is valid marks the end of its work), then the runtime destroys it. A program that
 * makes a stream per request held, under the fragless policy, a heap pair and its
 * pages ahead per stream it ever made, the whole GPU within a few thousand. The special
 * handles (the legacy and per-thread default streams) are not destroyed: the runtime
 * answers them. */
FL_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    pthread_once(&real_once, resolve_real);
    if ((uintptr_t)stream > (uintptr_t)PER_THREAD) {
        streams_gone((uint64_t)(uintptr_t)stream);
        atomic_fetch_add_explicit(&streams_destroyed, 1, memory_order_release);
    }
    return real.stream_destroy ? real.stream_destroy(stream) : cudaErrorInvalidValue;
}

/* ---- cudaDeviceReset ---------------------------------------------------------------- */

/* The runtime's cudaDeviceReset destroys the current device's cudaMalloc blocks, its
 * streams and events, and the primary context, which is made again at the next call
 * that needs it; cudaMallocAsync's blocks stay, to be freed explicitly (CUDA 13's
 * cuda_runtime_api.h). Fragless serves both kinds from one allocator, so it keeps the
 * set of live blocks cudaMalloc handed out (address -> device): a program that makes
 * no cudaMalloc call pays nothing, as the frees look at the set only when it holds
 * something. Before, the reset left fragless holding the cudaMalloc blocks for good, its
 * events (pending frees, destroyed streams' heaps) destroyed under it, and the context
 * inactive: the next allocation that needed the driver failed (an inactive context), and
 * fragless's memory in cuMemAlloc (policy:cca) was gone from under its cache. */
static pthread_mutex_t sync_lock = PTHREAD_MUTEX_INITIALIZER;
static fli_map sync_blocks;
static atomic_ulong n_sync;

static void sync_add(uint64_t addr, int dev)
{
    pthread_mutex_lock(&sync_lock);
    /* Without host memory for it the block is not kept: a reset then leaves it live. */
    if ((sync_blocks.e || fli_map_init(&sync_blocks, 64) == FL_OK) && fli_map_put(&sync_blocks, addr, (uint64_t)dev) == FL_OK)
        atomic_store_explicit(&n_sync, sync_blocks.count, memory_order_relaxed);
    pthread_mutex_unlock(&sync_lock);
}

static void sync_remove(uint64_t addr)
{
    if (!atomic_load_explicit(&n_sync, memory_order_relaxed))
        return;
    pthread_mutex_lock(&sync_lock);
    if (sync_blocks.e && fli_map_remove(&sync_blocks, addr, NULL))
        atomic_store_explicit(&n_sync, sync_blocks.count, memory_order_relaxed);
    pthread_mutex_unlock(&sync_lock);
}

/* The reset destroys device dev's cudaMalloc blocks: fragless frees them first. */
static void free_sync_blocks(int dev)
{
    fl_allocator *a = fli_frontend_existing(dev);
    for (;;) {
        uint64_t batch[64];
        size_t n = 0;
        pthread_mutex_lock(&sync_lock);
        for (uint64_t i = 0; sync_blocks.e && i <= sync_blocks.mask && n < 64; i++)
            if (sync_blocks.e[i].key != UINT64_MAX && sync_blocks.e[i].val == (uint64_t)dev)
                batch[n++] = sync_blocks.e[i].key;
        for (size_t k = 0; k < n; k++)
            fli_map_remove(&sync_blocks, batch[k], NULL);
        atomic_store_explicit(&n_sync, sync_blocks.count, memory_order_relaxed);
        pthread_mutex_unlock(&sync_lock);
        if (!n)
            return;
        for (size_t k = 0; a && k < n; k++)
            (void)give_back("cudaDeviceReset", a, dev, (void *)(uintptr_t)batch[k]); /* said on stderr */
    }
}

/* A fork waits for the set and for the capacities (leaf locks: nothing else is taken
 * under them), so that the child finds both whole and free. */
static pthread_mutex_t capacity_lock = PTHREAD_MUTEX_INITIALIZER;
static void locks_prepare(void)
{
    pthread_mutex_lock(&sync_lock);
    pthread_mutex_lock(&capacity_lock);
}
static void locks_release(void)
{
    pthread_mutex_unlock(&capacity_lock);
    pthread_mutex_unlock(&sync_lock);
}
__attribute__((constructor)) static void locks_atfork(void) { pthread_atfork(locks_prepare, locks_release, locks_release); }

FL_EXPORT cudaError_t cudaDeviceReset(void)
{
    pthread_once(&real_once, resolve_real);
    int dev = current_device();
    free_sync_blocks(dev);
    (void)fli_frontend_before_reset(dev); /* a failure was said on stderr */
    atomic_fetch_add_explicit(&streams_destroyed, 1, memory_order_release); /* its streams go */
    cudaError_t e = real.reset ? real.reset() : cudaSuccess;
    fli_frontend_after_reset(dev);
    return e;
}

/* Capacity of each device, read once from the driver (the runtime may not answer),
 * under capacity_lock (above, with its fork handlers: before, a fork while another
 * thread read a capacity, opening a device, gave the child the lock held by a thread it
 * does not have, and its cudaMemGetInfo waited forever). */
static uint64_t capacity[FL_FRONTEND_MAX_DEVICES];

static fl_status device_capacity(int dev, uint64_t *out)
{
    pthread_mutex_lock(&capacity_lock);
    fl_status s = FL_OK;
    if (!capacity[dev]) {
        /* A device object of our own, gone once read: the frontend's is not reachable
         * from its allocator. The frontend's holds the context, so this one's release
         * of it does not tear it down. */
        fl_cuda_params p;
        fl_cuda_params_default(&p);
        p.device = dev;
        fl_device *d;
        s = fl_cuda_device_create(&p, &d);
        if (s == FL_OK) {
            capacity[dev] = fl_device_capacity(d);
            fl_device_destroy(d);
        }
    }
    *out = capacity[dev];
    pthread_mutex_unlock(&capacity_lock);
    return s;
}

/* What the program may still allocate: memory the device has free plus what fragless
 * holds for no live block (its cache, which it hands out before asking the device for
 * more), so free rises after cudaFree as it does without fragless. Device free is the
 * runtime's answer when there is a runtime, else capacity minus what fragless holds
 * (the driver double has no other users). With limit:SIZE, total is the limit and free
 * at most the limit minus live blocks. As with the runtime, a request as large as free
 * may still fail: fragless' small-request heaps keep partly used pages. */
FL_EXPORT cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    atomic_fetch_add_explicit(&served, 1, memory_order_relaxed);
    if (!free_bytes || !total_bytes)
        return cudaErrorInvalidValue;
    int dev = current_device();
    /* Made now if not yet: the runtime's cudaMemGetInfo sets up the context too. */
    fl_allocator *a = fli_frontend_allocator(dev);
    if (!a)
        return cudaErrorNoDevice;
    fl_stats st;
    fl_get_stats(a, &st);
    uint64_t dev_free, dev_total;
    size_t rf = 0, rt = 0;
    if (real.mem_get_info && real.mem_get_info(&rf, &rt) == cudaSuccess) {
        dev_free = rf;
        dev_total = rt;
    } else {
        if (device_capacity(dev, &dev_total) != FL_OK) {
            fprintf(stderr, "fragless: cudaMemGetInfo on device %d: %s\n", dev, fl_last_error());
            return cudaErrorNoDevice;
        }
        dev_free = dev_total > st.reserved_bytes.current ? dev_total - st.reserved_bytes.current : 0;
    }
    uint64_t cached = st.reserved_bytes.current > st.allocated_bytes.current ? st.reserved_bytes.current - st.allocated_bytes.current : 0;
    uint64_t free_now = dev_free + cached;
    /* The allocator's limit (limit:SIZE, or a later fl_set_limit); the capacity when unset. */
    uint64_t limit = st.limit;
    if (limit < dev_total) {
        dev_total = limit;
        uint64_t room = limit > st.allocated_bytes.current ? limit - st.allocated_bytes.current : 0;
        if (free_now > room)
            free_now = room;
    }
    if (free_now > dev_total)
        free_now = dev_total;
    *free_bytes = (size_t)free_now;
    *total_bytes = (size_t)dev_total;
    return cudaSuccess;
}
