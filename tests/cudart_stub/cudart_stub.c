/* A test double of libcudart.so for a machine without a GPU. Its allocation entry points
 * (the ones the preload library interposes) fail with cudaErrorNoDevice, so a program
 * linked against it allocates only when fragless serves it. What the preload library
 * hands on to the runtime is modelled as the runtime does it, over the CUDA driver double
 * ($FRAGLESS_CUDA_LIB), and counted:
 *   - the current device per thread (cudaSetDevice / cudaGetDevice; CUDART_STUB_DEVICE=N
 *     is the starting device, else none: cudaGetDevice fails);
 *   - cudaFree(NULL), the idiom that creates the current device's primary context: the
 *     context is retained and made current, as the runtime does;
 *   - cudaDeviceSynchronize, counted per current device;
 *   - cudaStreamSynchronize, which completes the stream's work in the driver double (its
 *     events), so stream-ordered frees can be seen waiting for it;
 *   - cudaDeviceReset: the driver double's cuDevicePrimaryCtxReset_v2 on the current
 *     device (its memory, events and streams go);
 *   - cudaIpcGetMemHandle, cudaIpcOpenMemHandle and cudaIpcCloseMemHandle: the driver
 *     double's legacy IPC (cudaMalloc's memory only; a handle is its whole allocation's);
 *   - cudaStreamCreate and cudaStreamDestroy: a stream is made in the current device's
 *     primary context (told to the driver double, whose cuStreamGetCtx answers it); a
 *     handle is a pointer the stub allocates,
 *     never freed (the runtime frees a destroyed stream once its work is done, so its
 *     handle comes back only then; the stub's work is never done for sure);
 *     the destroy tells the driver double (fakecuda_stream_destroy), whose calls on the
 *     stale handle then fail until a stream is made with it again (fakecuda_stream_create).
 *   - CUDA graphs over the driver double's captures: cudaStreamBeginCapture,
 *     cudaStreamEndCapture (the graph's handle is the capture's id), cudaGraphInstantiate
 *     (an exec is a pointer the stub allocates), cudaGraphLaunch, cudaGraphExecDestroy and
 *     cudaGraphDestroy (the double forgets the graph once it and its execs are gone),
 *     cudaGraphAddChildGraphNode and cudaGraphAddNode of a child graph node (the child
 *     is then never forgotten); cudaRuntimeGetVersion says 13000 (CUDA 13's forms).
 *   - the default memory pools (cudaDeviceGetDefaultMemPool: one handle per device),
 *     whose statistics (cudaMemPoolGetAttribute) are 0, as nothing is allocated from them
 *     here; cudaMemPoolSetAttribute and cudaMemPoolTrimTo check the handle and do nothing.
 * With CUDART_STUB_REPORT=1 the counts are printed on stderr at exit. The ABI is the
 * runtime's (an int-sized error enum, pointer streams). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudart_abi.h"

typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUctx_st *CUcontext;
enum { cudaErrorInvalidValue = 1, cudaErrorInvalidDevice = 101, cudaErrorNoDevice = 100 };

#define STUB_DEVICES 8

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

/* The pitched allocations: no device either (what the preload library serves). */
cudaError_t cudaMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height)
{
    (void)pitch, (void)width, (void)height;
    if (ptr)
        *ptr = NULL;
    return cudaErrorNoDevice;
}
cudaError_t cudaMalloc3D(struct cudaPitchedPtr *p, struct cudaExtent extent)
{
    (void)extent;
    if (p)
        p->ptr = NULL;
    return cudaErrorNoDevice;
}

cudaError_t cudaMalloc(void **ptr, size_t size)
{
    (void)size;
    if (ptr)
        *ptr = NULL;
    return cudaErrorNoDevice;
}

cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream)
{
    (void)stream;
    return cudaMalloc(ptr, size);
}

cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream)
{
    (void)ptr;
    (void)stream;
    return cudaErrorNoDevice;
}

/* What a program built with --default-stream per-thread calls instead of the two above. */
cudaError_t cudaMallocAsync_ptsz(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync_ptsz(void *ptr, cudaStream_t stream);
cudaError_t cudaMallocAsync_ptsz(void **ptr, size_t size, cudaStream_t stream) { return cudaMallocAsync(ptr, size, stream); }
cudaError_t cudaFreeAsync_ptsz(void *ptr, cudaStream_t stream) { return cudaFreeAsync(ptr, stream); }

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    (void)free_bytes;
    (void)total_bytes;
    return cudaErrorNoDevice;
}

/* ---- the current device ----------------------------------------------------------- */

static _Thread_local int tls_device = -2; /* -2: not read yet; -1: none */

static int current(void)
{
    if (tls_device == -2) {
        const char *env = getenv("CUDART_STUB_DEVICE");
        tls_device = env && env[0] ? atoi(env) : -1;
    }
    return tls_device;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device)
        return cudaErrorInvalidValue;
    if (current() < 0)
        return cudaErrorNoDevice;
    *device = current();
    return 0;
}

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= STUB_DEVICES)
        return cudaErrorInvalidDevice;
    tls_device = device;
    return 0;
}

/* ---- the driver double behind it ---------------------------------------------------- */


static struct {
    int (*init)(unsigned);
    int (*retain)(CUcontext *, int);
    int (*set_current)(CUcontext);
    int (*stream_sync)(void *);
    void (*stream_destroy)(void *); /* the driver double's fakecuda_stream_destroy, if any */
    void (*stream_create)(void *, CUcontext); /* and fakecuda_stream_create */
    int (*begin_capture)(void *, int);        /* the double's capture controls */
    int (*end_capture)(void *, unsigned long long *);
    int (*graph_launch)(unsigned long long);
    void (*graph_destroy)(unsigned long long);
    int (*ctx_reset)(int);                    /* cuDevicePrimaryCtxReset_v2 */
    /* cuIpcGetMemHandle, cuIpcOpenMemHandle_v2, cuIpcCloseMemHandle (CUipcMemHandle is the
     * same 64 bytes as cudaIpcMemHandle_t) */
    int (*ipc_get)(void *, uintptr_t);
    int (*ipc_open)(uintptr_t *, cudaIpcMemHandle_t, unsigned);
    int (*ipc_close)(uintptr_t);
} drv;
static pthread_once_t drv_once = PTHREAD_ONCE_INIT;

static void load_driver(void)
{
    const char *path = getenv("FRAGLESS_CUDA_LIB");
    void *lib = path && path[0] ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib)
        return;
    void *f[4] = {dlsym(lib, "cuInit"), dlsym(lib, "cuDevicePrimaryCtxRetain"), dlsym(lib, "cuCtxSetCurrent"),
                  dlsym(lib, "cuStreamSynchronize")};
    if (!f[0] || !f[1] || !f[2] || !f[3])
        return;
    /* Object to function pointers, as POSIX allows for dlsym's results. */
    memcpy(&drv.init, &f[0], sizeof f[0]);
    memcpy(&drv.retain, &f[1], sizeof f[1]);
    memcpy(&drv.set_current, &f[2], sizeof f[2]);
    memcpy(&drv.stream_sync, &f[3], sizeof f[3]);
    void *r = dlsym(lib, "cuDevicePrimaryCtxReset_v2");
    if (r)
        memcpy(&drv.ctx_reset, &r, sizeof r);
    void *ig = dlsym(lib, "cuIpcGetMemHandle"), *io = dlsym(lib, "cuIpcOpenMemHandle_v2"),
         *ic = dlsym(lib, "cuIpcCloseMemHandle");
    if (ig && io && ic) {
        memcpy(&drv.ipc_get, &ig, sizeof ig);
        memcpy(&drv.ipc_open, &io, sizeof io);
        memcpy(&drv.ipc_close, &ic, sizeof ic);
    }
    void *d = dlsym(lib, "fakecuda_stream_destroy"), *c = dlsym(lib, "fakecuda_stream_create");
    if (d && c) {
        memcpy(&drv.stream_destroy, &d, sizeof d);
        memcpy(&drv.stream_create, &c, sizeof c);
    }
    void *g[4] = {dlsym(lib, "fakecuda_begin_capture"), dlsym(lib, "fakecuda_end_capture"),
                  dlsym(lib, "fakecuda_graph_launch"), dlsym(lib, "fakecuda_graph_destroy")};
    if (g[0] && g[1] && g[2] && g[3]) {
        memcpy(&drv.begin_capture, &g[0], sizeof g[0]);
        memcpy(&drv.end_capture, &g[1], sizeof g[1]);
        memcpy(&drv.graph_launch, &g[2], sizeof g[2]);
        memcpy(&drv.graph_destroy, &g[3], sizeof g[3]);
    }
}

static atomic_ulong syncs[STUB_DEVICES], free_null, stream_syncs;

/* The runtime creates the current device's primary context and makes it current. */
cudaError_t cudaFree(void *ptr)
{
    if (ptr)
        return cudaErrorNoDevice;
    atomic_fetch_add(&free_null, 1);
    pthread_once(&drv_once, load_driver);
    int dev = current() < 0 ? 0 : current();
    CUcontext ctx = NULL;
    if (!drv.init || drv.init(0) != 0 || drv.retain(&ctx, dev) != 0 || drv.set_current(ctx) != 0)
        return cudaErrorNoDevice;
    return 0;
}

/* Nothing was launched, so there is nothing to wait for: counted per device. */
cudaError_t cudaDeviceSynchronize(void)
{
    int dev = current() < 0 ? 0 : current();
    if (dev < STUB_DEVICES)
        atomic_fetch_add(&syncs[dev], 1);
    return 0;
}

/* The stream's work is done: its events complete in the driver double. */
cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    atomic_fetch_add(&stream_syncs, 1);
    pthread_once(&drv_once, load_driver);
    return drv.stream_sync && drv.stream_sync(stream) == 0 ? 0 : cudaErrorNoDevice;
}

/* Legacy IPC, over the driver double's: in the current device's primary context, made
 * current first as the runtime does at any call that needs one. The driver's refusal
 * (memory that is not cudaMalloc's, a handle that does not open) is the runtime's
 * cudaErrorInvalidValue; no driver double, cudaErrorNoDevice. */

static cudaError_t ipc_ctx(void)
{
    pthread_once(&drv_once, load_driver);
    int dev = current() < 0 ? 0 : current();
    CUcontext ctx = NULL;
    if (!drv.init || !drv.ipc_get || drv.init(0) != 0 || drv.retain(&ctx, dev) != 0 || drv.set_current(ctx) != 0)
        return cudaErrorNoDevice;
    return 0;
}

cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *ptr)
{
    cudaError_t e = ipc_ctx();
    return e ? e : drv.ipc_get(handle, (uintptr_t)ptr) == 0 ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaIpcOpenMemHandle(void **ptr, cudaIpcMemHandle_t handle, unsigned int flags)
{
    cudaError_t e = ipc_ctx();
    uintptr_t p = 0;
    if (e || !ptr)
        return e ? e : cudaErrorInvalidValue;
    if (drv.ipc_open(&p, handle, flags) != 0)
        return cudaErrorInvalidValue;
    *ptr = (void *)p;
    return 0;
}

cudaError_t cudaIpcCloseMemHandle(void *ptr)
{
    cudaError_t e = ipc_ctx();
    return e ? e : drv.ipc_close((uintptr_t)ptr) == 0 ? 0 : cudaErrorInvalidValue;
}

/* The runtime resets the current device's primary context: in the driver double every
 * allocation on the device goes, with its context's events and streams. */
cudaError_t cudaDeviceReset(void);
cudaError_t cudaDeviceReset(void)
{
    pthread_once(&drv_once, load_driver);
    int dev = current() < 0 ? 0 : current();
    return drv.ctx_reset && drv.ctx_reset(dev) == 0 ? 0 : cudaErrorNoDevice;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    if (!stream)
        return cudaErrorInvalidValue;
    *stream = malloc(64);
    if (!*stream)
        return 2;
    /* Made in the current device's primary context, as the runtime makes it. */
    pthread_once(&drv_once, load_driver);
    CUcontext ctx = NULL;
    int dev = current() < 0 ? 0 : current();
    if (drv.stream_create && drv.init && drv.init(0) == 0 && drv.retain(&ctx, dev) == 0)
        drv.stream_create(*stream, ctx);
    return 0;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if ((uintptr_t)stream <= 2) /* the NULL, legacy and per-thread streams */
        return cudaErrorInvalidValue;
    pthread_once(&drv_once, load_driver);
    if (drv.stream_destroy)
        drv.stream_destroy(stream);
    return 0; /* the handle is not freed: see above */
}

/* ---- CUDA graphs over the driver double's captures -------------------------------------- */

typedef struct stub_graph {
    unsigned long long id; /* the double's capture id, 0: slot free */
    int graph_alive;       /* cudaGraphDestroy not called yet */
    unsigned execs;        /* live execs, plus one per embedding (never dropped) */
} stub_graph;
static stub_graph graphs[256];
static pthread_mutex_t graphs_lock = PTHREAD_MUTEX_INITIALIZER;

static stub_graph *graph_slot(unsigned long long id)
{
    for (size_t i = 0; i < sizeof graphs / sizeof graphs[0]; i++)
        if (graphs[i].id == id)
            return &graphs[i];
    return NULL;
}

/* The double forgets a graph once nothing can launch it. */
static void graph_maybe_gone(stub_graph *g)
{
    if (!g->graph_alive && !g->execs) {
        if (drv.graph_destroy)
            drv.graph_destroy(g->id);
        g->id = 0;
    }
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, int mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, void **graph);
cudaError_t cudaGraphInstantiate(void **exec, void *graph, unsigned long long flags);
cudaError_t cudaGraphLaunch(void *exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(void *exec);
cudaError_t cudaGraphDestroy(void *graph);
cudaError_t cudaGraphAddChildGraphNode(void **node, void *graph, const void *deps, size_t n, void *child);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, int mode)
{
    pthread_once(&drv_once, load_driver);
    return drv.begin_capture && drv.begin_capture(stream, mode) == 0 ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, void **graph)
{
    unsigned long long id = 0;
    pthread_once(&drv_once, load_driver);
    if (!graph || !drv.end_capture)
        return cudaErrorInvalidValue;
    *graph = NULL;
    if (drv.end_capture(stream, &id) != 0)
        return 901; /* cudaErrorStreamCaptureInvalidated */
    pthread_mutex_lock(&graphs_lock);
    stub_graph *g = graph_slot(0);
    if (g)
        *g = (stub_graph){id, 1, 0};
    pthread_mutex_unlock(&graphs_lock);
    *graph = (void *)(uintptr_t)id;
    return g ? 0 : 2;
}

cudaError_t cudaGraphInstantiate(void **exec, void *graph, unsigned long long flags)
{
    (void)flags;
    pthread_mutex_lock(&graphs_lock);
    stub_graph *g = graph ? graph_slot((uintptr_t)graph) : NULL;
    unsigned long long *e = g && g->graph_alive ? malloc(sizeof *e) : NULL;
    if (e) {
        *e = g->id;
        g->execs++;
    }
    pthread_mutex_unlock(&graphs_lock);
    if (exec)
        *exec = e;
    return e ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaGraphLaunch(void *exec, cudaStream_t stream)
{
    (void)stream;
    return exec && drv.graph_launch && drv.graph_launch(*(unsigned long long *)exec) == 0 ? 0 : 700;
}

cudaError_t cudaGraphExecDestroy(void *exec)
{
    if (!exec)
        return cudaErrorInvalidValue;
    pthread_mutex_lock(&graphs_lock);
    stub_graph *g = graph_slot(*(unsigned long long *)exec);
    if (g) {
        g->execs--;
        graph_maybe_gone(g);
    }
    pthread_mutex_unlock(&graphs_lock);
    free(exec);
    return g ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaGraphDestroy(void *graph)
{
    pthread_mutex_lock(&graphs_lock);
    stub_graph *g = graph ? graph_slot((uintptr_t)graph) : NULL;
    if (g) {
        g->graph_alive = 0;
        graph_maybe_gone(g);
    }
    pthread_mutex_unlock(&graphs_lock);
    return g ? 0 : cudaErrorInvalidValue;
}

static cudaError_t embed(void **node, void *child);

/* ---- the default memory pools ------------------------------------------------------ */

static char pools[STUB_DEVICES]; /* their addresses are the handles */

static int pool_device(const void *pool)
{
    for (int d = 0; d < STUB_DEVICES; d++)
        if (pool == &pools[d])
            return d;
    return -1;
}

cudaError_t cudaDeviceGetDefaultMemPool(void **pool, int device);
cudaError_t cudaMemPoolGetAttribute(void *pool, int attr, void *value);
cudaError_t cudaMemPoolSetAttribute(void *pool, int attr, void *value);
cudaError_t cudaMemPoolTrimTo(void *pool, size_t keep);

cudaError_t cudaDeviceGetDefaultMemPool(void **pool, int device)
{
    if (!pool || device < 0 || device >= STUB_DEVICES)
        return cudaErrorInvalidValue;
    *pool = &pools[device];
    return 0;
}

/* The reuse flags are ints, the rest 64-bit; all 0 here. */
cudaError_t cudaMemPoolGetAttribute(void *pool, int attr, void *value)
{
    if (pool_device(pool) < 0 || !value || attr < 1 || attr > 8)
        return cudaErrorInvalidValue;
    if (attr <= 3)
        *(int *)value = 0;
    else
        *(unsigned long long *)value = 0;
    return 0;
}

cudaError_t cudaMemPoolSetAttribute(void *pool, int attr, void *value)
{
    return pool_device(pool) >= 0 && value && attr >= 1 && attr <= 8 ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaMemPoolTrimTo(void *pool, size_t keep)
{
    (void)keep;
    return pool_device(pool) >= 0 ? 0 : cudaErrorInvalidValue;
}

cudaError_t cudaRuntimeGetVersion(int *version);
cudaError_t cudaRuntimeGetVersion(int *version)
{
    if (!version)
        return cudaErrorInvalidValue;
    *version = 13000;
    return 0;
}

/* CUDA 13's cudaGraphAddNode (edge data, then the count): the parameters begin with the
 * node's type (cudaGraphNodeTypeGraph = 4: a child graph, whose handle follows the type
 * and three reserved ints). */
cudaError_t cudaGraphAddNode(void **node, void *graph, const void *deps, const void *edges, size_t n, void *params);
cudaError_t cudaGraphAddNode(void **node, void *graph, const void *deps, const void *edges, size_t n, void *params)
{
    (void)edges;
    if (!params)
        return cudaErrorInvalidValue;
    if (*(int *)params != 4) {
        if (node)
            *node = params;
        return 0;
    }
    void *child;
    memcpy(&child, (char *)params + 16, sizeof child);
    (void)graph;
    (void)deps;
    (void)n;
    return embed(node, child); /* not through cudaGraphAddChildGraphNode: fragless interposes it */
}

/* The parent embeds a copy of the child: the child's memory is in use for good here. */
cudaError_t cudaGraphAddChildGraphNode(void **node, void *graph, const void *deps, size_t n, void *child)
{
    (void)graph;
    (void)deps;
    (void)n;
    return embed(node, child);
}

static cudaError_t embed(void **node, void *child)
{
    pthread_mutex_lock(&graphs_lock);
    stub_graph *g = child ? graph_slot((uintptr_t)child) : NULL;
    if (g)
        g->execs++;
    pthread_mutex_unlock(&graphs_lock);
    if (node)
        *node = g ? (void *)g : NULL;
    return g ? 0 : cudaErrorInvalidValue;
}

__attribute__((destructor)) static void report(void)
{
    const char *env = getenv("CUDART_STUB_REPORT");
    if (!env || env[0] != '1')
        return;
    unsigned long total = 0;
    char per[256] = "";
    int n = 0;
    for (int d = 0; d < STUB_DEVICES; d++) {
        unsigned long k = atomic_load(&syncs[d]);
        total += k;
        if (k && n < (int)sizeof per)
            n += snprintf(per + n, sizeof per - (size_t)n, "%sdevice %d: %lu", n ? ", " : "", d, k);
    }
    fprintf(stderr, "cudart_stub: cudaDeviceSynchronize called %lu times (%s)\n", total, per);
    fprintf(stderr, "cudart_stub: cudaFree(NULL) called %lu times\n", atomic_load(&free_null));
    fprintf(stderr, "cudart_stub: cudaStreamSynchronize called %lu times\n", atomic_load(&stream_syncs));
}
