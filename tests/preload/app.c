/* A small CUDA program for test_preload: allocates blocks of varied sizes with cudaMalloc
 * and cudaMallocAsync, writes and reads them back, frees them, and checks cudaMemGetInfo
 * along the way. Linked against the CUDA runtime (in the tests, tests/cudart_stub, which
 * has no device), so it succeeds only when something like fragless serves it. Exit 0
 * only when every call succeeded and every byte read back is the one written.
 *
 * It writes through the device pointers directly: the driver double's device memory is
 * host memory. On a real GPU this program would need cudaMemcpy. */
#define _DEFAULT_SOURCE /* usleep */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../cudart_stub/cudart_abi.h"

typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
/* The runtime's special stream handle for the calling thread's default stream. */
#define cudaStreamPerThread ((cudaStream_t)0x2)

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaStreamCreate(cudaStream_t *stream);
typedef void *cudaGraph_t, *cudaGraphExec_t;
cudaError_t cudaDeviceGetDefaultMemPool(void **pool, int device);
cudaError_t cudaMemPoolGetAttribute(void *pool, int attr, void *value);
cudaError_t cudaMemPoolSetAttribute(void *pool, int attr, void *value);
cudaError_t cudaMemPoolTrimTo(void *pool, size_t keep);
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, int mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphAddChildGraphNode(void **node, cudaGraph_t graph, const void *deps, size_t n, cudaGraph_t child);
cudaError_t cudaGraphAddNode(void **node, cudaGraph_t graph, const void *deps, const void *edges, size_t n, void *params);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaDeviceReset(void);
/* A program built with --default-stream per-thread calls these: NULL is the thread's stream. */
cudaError_t cudaMallocAsync_ptsz(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync_ptsz(void *ptr, cudaStream_t stream);

#define N_BLOCKS 10

/* call is what was called, e.g. "cudaMalloc(100 bytes)". */
static int failed(const char *call, cudaError_t e)
{
    printf("preload_app: %s failed: error %d%s\n", call, e,
           e == 100 ? " (cudaErrorNoDevice)" : e == 2 ? " (cudaErrorMemoryAllocation)" : "");
    return 1;
}

static int alloc_failed(const char *fn, size_t size, cudaError_t e)
{
    char call[64];
    snprintf(call, sizeof call, "%s(%zu bytes)", fn, size);
    return failed(call, e);
}

static unsigned char pattern(int block, size_t k) { return (unsigned char)(block * 31 + k % 251); }

/* ---- the driver double's controls (FRAGLESS_CUDA_LIB), for the modes below ---- */

static struct {
    void (*auto_complete)(int);
    void (*complete_all)(void);
    unsigned long long (*calls)(const char *);
    size_t (*used)(int);
    int (*capture_use)(void *stream, void *ptr, size_t size);
    unsigned long long (*graph_faults)(void);
    unsigned long long (*violations)(void);
} dbl;

/* Loads them (the library fragless loads too: one copy); 0 when the double is there. */
static int load_double(const char *mode)
{
    const char *lib = getenv("FRAGLESS_CUDA_LIB");
    void *drv = lib ? dlopen(lib, RTLD_NOW | RTLD_LOCAL) : NULL;
    const char *names[7] = {"fakecuda_set_auto_complete", "fakecuda_complete_all", "fakecuda_calls",
                            "fakecuda_used", "fakecuda_capture_use", "fakecuda_graph_faults",
                            "fakecuda_capture_violations"};
    void *sym[7];
    for (int i = 0; i < 7; i++)
        if (!drv || !(sym[i] = dlsym(drv, names[i]))) {
            printf("preload_app: %s needs the driver double (FRAGLESS_CUDA_LIB)\n", mode);
            return 1;
        }
    /* Object to function pointers, as POSIX allows for dlsym's results. */
    memcpy(&dbl.auto_complete, &sym[0], sizeof sym[0]);
    memcpy(&dbl.complete_all, &sym[1], sizeof sym[1]);
    memcpy(&dbl.calls, &sym[2], sizeof sym[2]);
    memcpy(&dbl.used, &sym[3], sizeof sym[3]);
    memcpy(&dbl.capture_use, &sym[4], sizeof sym[4]);
    memcpy(&dbl.graph_faults, &sym[5], sizeof sym[5]);
    memcpy(&dbl.violations, &sym[6], sizeof sym[6]);
    return 0;
}

#define SYNCS() (dbl.calls("cuCtxSynchronize") + dbl.calls("cuStreamSynchronize"))

/* ---- --per-thread: two threads on their per-thread default streams ---- */

typedef cudaError_t (*malloc_async_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*free_async_fn)(void *, cudaStream_t);

typedef struct {
    malloc_async_fn m;
    free_async_fn f;
    void *ptr; /* in: the block to free; out: the block allocated */
    cudaStream_t stream;
    cudaError_t e;
} other_call;

static void *other_thread(void *arg)
{
    other_call *c = arg;
    c->e = c->ptr ? c->f(c->ptr, c->stream) : c->m(&c->ptr, 1 << 20, c->stream);
    return NULL;
}

/* A thread that allocates 5 MiB on its stream, frees it there and ends. */
static void *short_thread(void *arg)
{
    other_call *c = arg;
    void *p = NULL;
    c->e = c->m(&p, 5 << 20, c->stream);
    if (!c->e)
        c->e = c->f(p, c->stream);
    return NULL;
}

/* In a new thread: frees ptr on stream, or (ptr NULL) allocates a MiB there; the block
 * allocated, NULL on failure (or after a free). */
static void *in_other_thread(malloc_async_fn m, free_async_fn f, void *ptr, cudaStream_t stream)
{
    other_call c = {m, f, ptr, stream, -1};
    pthread_t t;
    if (pthread_create(&t, NULL, other_thread, &c) != 0 || pthread_join(t, NULL) != 0 || c.e != 0)
        return NULL;
    return ptr ? NULL : c.ptr;
}

static int bad;
#define EXPECT(cond)                                                                                                   \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            printf("preload_app: line %d: %s does not hold\n", __LINE__, #cond);                                     \
            bad++;                                                                                                     \
        }                                                                                                              \
    } while (0)

/* cudaStreamPerThread (and the NULL stream of the _ptsz calls) is one handle that names
 * each thread's own stream. Work stays pending in the driver double (its events complete
 * when told), so a block one thread freed on its stream may go back to that thread at
 * once, and to another thread's stream only once that work is done, or after a
 * synchronize (counted: the cross-thread steps here must see none, or they prove
 * nothing). */
static int per_thread(malloc_async_fn m, free_async_fn f, cudaStream_t pt)
{
    if (load_double("--per-thread"))
        return 1;
    dbl.auto_complete(0);
    void *a = NULL, *b = NULL, *c, *d = NULL, *e = NULL;
    EXPECT(m(&a, 1 << 20, pt) == 0 && a);
    EXPECT(f(a, pt) == 0);
    EXPECT(m(&b, 1 << 20, pt) == 0 && b == a); /* its own stream: at once */
    EXPECT(f(b, pt) == 0);
    unsigned long long syncs = SYNCS();
    c = in_other_thread(m, f, NULL, pt);
    EXPECT(c && c != b && SYNCS() == syncs);
    in_other_thread(m, f, c, pt); /* freed by its own thread */
    EXPECT(m(&d, 1 << 20, pt) == 0 && d == b);
    /* Freed on another thread's stream: it waits for that thread's work. */
    in_other_thread(m, f, d, pt);
    syncs = SYNCS();
    EXPECT(m(&e, 1 << 20, pt) == 0 && e && e != d && SYNCS() == syncs);
    EXPECT(f(e, pt) == 0);
    dbl.complete_all();
    dbl.auto_complete(1);
    /* A hundred short-lived threads, one after another: each one's stream ends with it,
     * and what the allocator kept for it serves the next (the memory held stays flat;
     * before, each thread's stream kept its heaps and their pages). */
    size_t first = 0;
    for (int i = 0; i < 100; i++) {
        other_call sc = {m, f, NULL, pt, -1};
        pthread_t t;
        EXPECT(pthread_create(&t, NULL, short_thread, &sc) == 0 && pthread_join(t, NULL) == 0 && sc.e == 0);
        if (!i)
            first = dbl.used(0);
    }
    EXPECT(first > 0 && dbl.used(0) <= first);
    printf("preload_app: per-thread streams kept apart (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --streams: a stream per request, destroyed after it ---- */

/* Two hundred requests, each on a stream of its own, made and destroyed around it: the
 * device memory held stays what one request needs (before, each stream kept a heap pair
 * with its pages ahead). And a destroyed stream's block, its work pending, does not go
 * to the next stream before that work is done. */
static int streams(void)
{
    if (load_double("--streams"))
        return 1;
    size_t first = 0;
    for (int i = 0; i < 200; i++) {
        cudaStream_t s = NULL;
        void *p = NULL;
        EXPECT(cudaStreamCreate(&s) == 0 && cudaMallocAsync(&p, 5 << 20, s) == 0 && p);
        if (p)
            memset(p, i, 5 << 20);
        EXPECT(cudaFreeAsync(p, s) == 0 && cudaStreamDestroy(s) == 0);
        if (!i)
            first = dbl.used(0);
    }
    EXPECT(first > 0 && dbl.used(0) <= first);
    printf("preload_app: 200 streams, device memory in use %zu bytes after the first, %zu after the last\n", first,
           dbl.used(0));

    dbl.auto_complete(0);
    cudaStream_t s1 = NULL, s2 = NULL, s3 = NULL;
    void *p = NULL, *q = NULL, *r = NULL;
    EXPECT(cudaStreamCreate(&s1) == 0 && cudaMallocAsync(&p, 3 << 20, s1) == 0 && p);
    unsigned long long syncs = SYNCS();
    EXPECT(cudaFreeAsync(p, s1) == 0 && cudaStreamDestroy(s1) == 0); /* its work still pending */
    EXPECT(cudaStreamCreate(&s2) == 0 && cudaMallocAsync(&q, 3 << 20, s2) == 0 && q);
    EXPECT(q != p || SYNCS() != syncs);
    dbl.complete_all();
    EXPECT(cudaStreamCreate(&s3) == 0 && cudaMallocAsync(&r, 3 << 20, s3) == 0 && r == p); /* s1's heaps, taken over */
    EXPECT(cudaFreeAsync(q, s2) == 0 && cudaFreeAsync(r, s3) == 0);
    EXPECT(cudaStreamDestroy(s2) == 0 && cudaStreamDestroy(s3) == 0);
    dbl.auto_complete(1);
    printf("preload_app: destroyed streams (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --stream-device: cudaMallocAsync on another device's stream ---- */

/* The runtime allocates from the pool of the stream's device, whatever the current
 * device (FAKECUDA_DEVICES=2): a stream of device 1 used while device 0 is current gets
 * device 1's memory (before, fragless allocated on the current device). */
static int stream_device(void)
{
    if (load_double("--stream-device"))
        return 1;
    cudaStream_t s1 = NULL, s0 = NULL;
    void *p = NULL, *q = NULL;
    EXPECT(cudaSetDevice(1) == 0 && cudaFree(NULL) == 0 && cudaStreamCreate(&s1) == 0);
    EXPECT(cudaSetDevice(0) == 0 && cudaFree(NULL) == 0 && cudaStreamCreate(&s0) == 0);
    size_t used0 = dbl.used(0), used1 = dbl.used(1);
    EXPECT(cudaMallocAsync(&p, 3 << 20, s1) == 0 && p);
    EXPECT(dbl.used(1) > used1 && dbl.used(0) == used0);
    used0 = dbl.used(0);
    EXPECT(cudaMallocAsync(&q, 3 << 20, s0) == 0 && q);
    EXPECT(dbl.used(0) > used0);
    if (p)
        memset(p, 1, 3 << 20);
    EXPECT(cudaFreeAsync(p, s1) == 0 && cudaFreeAsync(q, s0) == 0);

    /* A block of device 0 freed on device 1's stream, whose work is pending: it waits for
     * that work (an event recorded in the stream's own context; recorded in device 0's,
     * the driver refused it, and the fallback synchronized device 0 only, so the block
     * came back at once). */
    void *r = NULL, *t = NULL, *u = NULL;
    dbl.auto_complete(0);
    EXPECT(cudaMallocAsync(&r, 3 << 20, s0) == 0 && r);
    EXPECT(cudaFreeAsync(r, s1) == 0);
    EXPECT(cudaMallocAsync(&t, 3 << 20, s0) == 0 && t && t != r);
    dbl.complete_all();
    EXPECT(cudaMallocAsync(&u, 3 << 20, s0) == 0 && u == r);
    EXPECT(cudaFreeAsync(t, s0) == 0 && cudaFreeAsync(u, s0) == 0);
    dbl.auto_complete(1);
    EXPECT(cudaStreamDestroy(s1) == 0 && cudaStreamDestroy(s0) == 0);
    printf("preload_app: streams' devices (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --graphs: CUDA graphs captured, launched and destroyed, again and again ---- */

#define GRAPH_BLOCK ((size_t)8 << 20)

/* A graph of one 8 MiB block that its "kernel" (the double's capture_use) writes, freed
 * inside the capture, as a captured cudaMallocAsync / kernel / cudaFreeAsync is. */
static cudaGraph_t capture_one(cudaStream_t s, void **block)
{
    cudaGraph_t g = NULL;
    void *p = NULL;
    EXPECT(cudaStreamBeginCapture(s, 0) == 0);
    EXPECT(cudaMallocAsync(&p, GRAPH_BLOCK, s) == 0 && p);
    EXPECT(p && dbl.capture_use(s, p, GRAPH_BLOCK) == 0);
    EXPECT(cudaFreeAsync(p, s) == 0);
    EXPECT(cudaStreamEndCapture(s, &g) == 0 && g);
    if (block)
        *block = p;
    return g;
}

/* Other work between launches: 8 MiB blocks on another stream, written and freed. */
static void other_work(cudaStream_t o, int n)
{
    void *q[8] = {NULL};
    for (int k = 0; k < n && k < 8; k++) {
        EXPECT(cudaMallocAsync(&q[k], GRAPH_BLOCK, o) == 0 && q[k]);
        if (q[k])
            memset(q[k], 0x11 * (k + 1), GRAPH_BLOCK);
    }
    for (int k = 0; k < n && k < 8; k++)
        EXPECT(cudaFreeAsync(q[k], o) == 0);
}

/* A graph's blocks stay its own while it or an exec made from it lives, and go back once
 * both are destroyed (before, fragless kept them for good under `fragless run`: forty
 * captures of 8 MiB filled the 256 MiB double); a graph embedded in another is kept. */
static int graphs(void)
{
    if (load_double("--graphs"))
        return 1;
    cudaStream_t s = NULL, o = NULL;
    EXPECT(cudaStreamCreate(&s) == 0 && cudaStreamCreate(&o) == 0);
    size_t first = 0;
    for (int i = 0; i < 40 && !bad; i++) {
        cudaGraph_t g = capture_one(s, NULL);
        cudaGraphExec_t e = NULL;
        EXPECT(cudaGraphInstantiate(&e, g, 0) == 0 && e);
        EXPECT(cudaGraphLaunch(e, s) == 0);
        other_work(o, 2);
        EXPECT(cudaGraphLaunch(e, s) == 0);
        EXPECT(cudaGraphExecDestroy(e) == 0 && cudaGraphDestroy(g) == 0);
        if (!i)
            first = dbl.used(0);
    }
    printf("preload_app: 40 graphs, device memory in use %zu bytes after the first, %zu after the last\n", first,
           dbl.used(0));
    EXPECT(first > 0 && dbl.used(0) <= first);

    /* The exec outlives its graph: the block stays the graph's. */
    cudaGraph_t g1 = capture_one(s, NULL);
    cudaGraphExec_t e1 = NULL;
    EXPECT(cudaGraphInstantiate(&e1, g1, 0) == 0 && cudaGraphLaunch(e1, s) == 0 && cudaGraphDestroy(g1) == 0);
    other_work(s, 2); /* its own stream first: a block given back would be reused here */
    other_work(o, 8);
    EXPECT(cudaGraphLaunch(e1, s) == 0);
    EXPECT(cudaGraphExecDestroy(e1) == 0);

    /* Embedded in another graph: kept, whatever is destroyed later. */
    void *p2 = NULL, *q = NULL;
    cudaGraph_t g2 = capture_one(s, &p2), parent = capture_one(s, NULL);
    void *node = NULL;
    EXPECT(cudaGraphAddChildGraphNode(&node, parent, NULL, 0, g2) == 0);
    EXPECT(cudaGraphDestroy(g2) == 0);
    EXPECT(cudaMallocAsync(&q, GRAPH_BLOCK, s) == 0 && q && q != p2);
    EXPECT(cudaFreeAsync(q, s) == 0 && cudaGraphDestroy(parent) == 0);
    EXPECT(dbl.graph_faults() == 0 && dbl.violations() == 0);
    EXPECT(cudaStreamDestroy(s) == 0 && cudaStreamDestroy(o) == 0);
    printf("preload_app: graphs (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* --graph-nodes: cudaGraphAddNode (CUDA 13's form). A kernel node embeds nothing: a
 * graph destroyed afterwards gives its block back. A child graph node embeds its child:
 * the child's block stays kept after the child is destroyed. */
static int graph_nodes(void)
{
    if (load_double("--graph-nodes"))
        return 1;
    cudaStream_t s = NULL;
    EXPECT(cudaStreamCreate(&s) == 0);
    struct {
        int type;
        int reserved[3];
        void *child;
        long long rest[30];
    } params;
    void *p1 = NULL, *p2 = NULL, *q = NULL, *node = NULL;
    cudaGraph_t parent = capture_one(s, NULL), g1 = capture_one(s, &p1);
    memset(&params, 0, sizeof params); /* type 0: a kernel node */
    EXPECT(cudaGraphAddNode(&node, parent, NULL, NULL, 0, &params) == 0);
    EXPECT(cudaGraphDestroy(g1) == 0);
    EXPECT(cudaMallocAsync(&q, GRAPH_BLOCK, s) == 0 && q == p1); /* given back: here again */
    EXPECT(cudaFreeAsync(q, s) == 0);
    cudaGraph_t g2 = capture_one(s, &p2);
    params.type = 4; /* cudaGraphNodeTypeGraph */
    params.child = g2;
    EXPECT(cudaGraphAddNode(&node, parent, NULL, NULL, 0, &params) == 0);
    EXPECT(cudaGraphDestroy(g2) == 0);
    EXPECT(cudaMallocAsync(&q, GRAPH_BLOCK, s) == 0 && q && q != p2); /* kept: the parent holds it */
    EXPECT(cudaFreeAsync(q, s) == 0 && cudaGraphDestroy(parent) == 0 && cudaStreamDestroy(s) == 0);
    EXPECT(dbl.graph_faults() == 0 && dbl.violations() == 0);
    printf("preload_app: graph nodes (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --pool: the default pool's statistics and trim, as PyTorch's cudaMallocAsync
 * backend reads and calls them (torch.cuda.memory_allocated / memory_reserved and their
 * peaks, reset_peak_memory_stats, empty_cache) ---- */

enum { RESERVED = 5, RESERVED_HIGH = 6, USED = 7, USED_HIGH = 8 };

static unsigned long long pool_attr(void *pool, int attr)
{
    unsigned long long v = ~0ull;
    EXPECT(cudaMemPoolGetAttribute(pool, attr, &v) == 0);
    return v;
}

/* The pool says what fragless holds: used is at least what is live and reserved at least
 * that; the peaks follow, reset to the current values; a trim to 0 with nothing live
 * gives everything back (before, the pool said 0 throughout: nothing came from it). */
static int pool(void)
{
    void *mp = NULL, *p = NULL, *q = NULL;
    int ok = cudaDeviceGetDefaultMemPool(&mp, 0) == 0 && mp;
    EXPECT(ok);
    if (!ok)
        return 1;
    EXPECT(cudaMallocAsync(&p, 5 << 20, NULL) == 0 && p);
    EXPECT(cudaMallocAsync(&q, 3 << 20, NULL) == 0 && q);
    unsigned long long used = pool_attr(mp, USED), reserved = pool_attr(mp, RESERVED);
    EXPECT(used >= (8u << 20) && used < (9u << 20) && reserved >= used);
    EXPECT(pool_attr(mp, USED_HIGH) == used && pool_attr(mp, RESERVED_HIGH) == reserved);
    EXPECT(cudaFreeAsync(q, NULL) == 0);
    EXPECT(pool_attr(mp, USED) < used && pool_attr(mp, USED_HIGH) == used);
    unsigned long long zero = 0;
    EXPECT(cudaMemPoolSetAttribute(mp, USED_HIGH, &zero) == 0 && cudaMemPoolSetAttribute(mp, RESERVED_HIGH, &zero) == 0);
    EXPECT(pool_attr(mp, USED_HIGH) == pool_attr(mp, USED));
    EXPECT(cudaFreeAsync(p, NULL) == 0);
    EXPECT(pool_attr(mp, USED) == 0 && pool_attr(mp, RESERVED) > 0);
    EXPECT(cudaMemPoolTrimTo(mp, 1 << 30) == 0 && pool_attr(mp, RESERVED) > 0); /* keeps at least that: no-op */
    EXPECT(cudaMemPoolTrimTo(mp, 0) == 0 && pool_attr(mp, RESERVED) == 0);
    int flag = -1;
    EXPECT(cudaMemPoolGetAttribute(mp, 1, &flag) == 0 && flag == 0); /* others: the runtime's */
    printf("preload_app: default pool (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --reset: cudaDeviceReset, and a program that goes on after it ---- */

/* cudaDeviceReset (in the runtime double: the driver double's primary-context reset,
 * which destroys the device's cuMemAlloc blocks and its context's events and streams, and
 * leaves the context inactive until retained again) destroys cudaMalloc's blocks and
 * leaves cudaMallocAsync's, which the program frees itself (CUDA 13's
 * cuda_runtime_api.h). A program may go on after it (a test suite resets the device
 * between cases). Checked each round: the reset finds nothing of fragless's to destroy
 * (before, its record_stream and destroyed streams' events); the first call after it, a
 * cudaMalloc with no runtime call in between, gets memory that is there (before, the
 * inactive context refused fragless's driver calls); the cudaMallocAsync blocks are
 * there with their data and are freed with cudaFreeAsync; a cudaMalloc block from before
 * is no longer fragless's to free (before, fragless held it for good): its cudaFree is the
 * runtime's error. */
static int reset(void)
{
    if (load_double("--reset"))
        return 1;
    void *drv = dlopen(getenv("FRAGLESS_CUDA_LIB"), RTLD_NOW | RTLD_LOCAL);
    void *sa = drv ? dlsym(drv, "fakecuda_device_access") : NULL, *sl = drv ? dlsym(drv, "fakecuda_reset_losses") : NULL;
    if (!sa || !sl) {
        printf("preload_app: --reset needs the driver double's fakecuda_device_access and fakecuda_reset_losses\n");
        return 1;
    }
    int (*there)(int, uintptr_t, size_t, int);
    unsigned long long (*losses)(void);
    memcpy(&there, &sa, sizeof sa);
    memcpy(&losses, &sl, sizeof sl);
    static const size_t sizes[] = {100, 4096, 70000, 1 << 20, (3 << 20) + 5, (20 << 20) + 7};
    enum { N = sizeof sizes / sizeof sizes[0] };
    cudaStream_t s = NULL;
    EXPECT(cudaStreamCreate(&s) == 0);
    for (int round = 0; round < 3; round++) {
        void *sync[N] = {0}, *kept[N] = {0}, *freed[N] = {0};
        for (int i = 0; i < N; i++) {
            EXPECT(cudaMalloc(&sync[i], sizes[i]) == 0 && sync[i]);
            EXPECT(cudaMallocAsync(&kept[i], sizes[i], s) == 0 && kept[i]);
            EXPECT(cudaMallocAsync(&freed[i], sizes[i], s) == 0 && freed[i]);
            if (kept[i])
                memset(kept[i], round * N + i + 1, sizes[i]);
        }
        dbl.auto_complete(0); /* freed on another stream: waiting for its event at the reset */
        for (int i = 0; i < N; i++)
            EXPECT(cudaFreeAsync(freed[i], i % 2 ? s : cudaStreamPerThread) == 0);
        unsigned long long lost = losses();
        EXPECT(cudaDeviceReset() == 0);
        EXPECT(losses() == lost);
        dbl.auto_complete(1);
        void *q = NULL;
        EXPECT(cudaMalloc(&q, 40 << 20) == 0 && q && there(0, (uintptr_t)q, 40 << 20, 1) == 0);
        EXPECT(cudaFree(q) == 0);
        for (int i = 0; i < N; i++) {
            int intact = kept[i] && there(0, (uintptr_t)kept[i], sizes[i], 1) == 0;
            for (size_t k = 0; intact && k < sizes[i]; k++)
                intact = ((unsigned char *)kept[i])[k] == (unsigned char)(round * N + i + 1);
            EXPECT(intact);
            EXPECT(cudaFreeAsync(kept[i], NULL) == 0);
        }
        EXPECT(cudaFree(sync[0]) != 0); /* the reset took it */
        EXPECT(cudaStreamCreate(&s) == 0); /* the reset took the stream too */
    }
    void *last = NULL; /* its allocation settles the frees that waited for an event */
    EXPECT(cudaMalloc(&last, 100) == 0 && cudaFree(last) == 0);
    /* Trimming the pool empties fragless's cache, which asks the streams it served
     * whether they capture: not those the reset destroyed. */
    void *pool = NULL;
    EXPECT(cudaDeviceGetDefaultMemPool(&pool, 0) == 0 && cudaMemPoolTrimTo(pool, 0) == 0);
    size_t free_b = 0, total = 0;
    EXPECT(cudaMemGetInfo(&free_b, &total) == 0 && free_b == total);
    printf("preload_app: device reset (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --fork: a fork while another thread is inside fragless ---- */

/* A thread reads the device's capacity (cudaMemGetInfo with a runtime that does not
 * answer: fragless opens the device, driver calls under its lock) while another thread
 * forks. Before, the child got that lock held by a thread it does not have, and its own
 * cudaMemGetInfo waited forever; now the fork waits for it. The driver double holds the
 * first thread inside cuDevicePrimaryCtxRetain. */
static void *mem_info_thread(void *arg)
{
    size_t f = 0, t = 0;
    *(cudaError_t *)arg = cudaMemGetInfo(&f, &t);
    return NULL;
}

static void *fork_thread(void *arg)
{
    pid_t *pid = arg;
    *pid = fork();
    if (*pid == 0) {
        alarm(10);
        size_t f = 0, t = 0;
        _exit(cudaMemGetInfo(&f, &t) == 0 ? 0 : 1);
    }
    return NULL;
}

static int fork_busy(void)
{
    void *drv = dlopen(getenv("FRAGLESS_CUDA_LIB"), RTLD_NOW | RTLD_LOCAL);
    void *sh = drv ? dlsym(drv, "fakecuda_hold_call") : NULL, *sw = drv ? dlsym(drv, "fakecuda_held") : NULL,
         *sr = drv ? dlsym(drv, "fakecuda_release_held") : NULL;
    if (!sh || !sw || !sr) {
        printf("preload_app: --fork needs the driver double's fakecuda_hold_call, _held and _release_held\n");
        return 1;
    }
    void (*hold)(const char *), (*release)(void);
    int (*held)(void);
    memcpy(&hold, &sh, sizeof sh);
    memcpy(&held, &sw, sizeof sw);
    memcpy(&release, &sr, sizeof sr);
    void *p = NULL;
    EXPECT(cudaMalloc(&p, 1 << 20) == 0 && p); /* the device's allocator made first */
    hold("cuDevicePrimaryCtxRetain");
    pthread_t reader, forker;
    cudaError_t read = -1;
    EXPECT(pthread_create(&reader, NULL, mem_info_thread, &read) == 0);
    for (int i = 0; i < 5000 && !held(); i++)
        usleep(1000);
    EXPECT(held());
    pid_t pid = -1;
    EXPECT(pthread_create(&forker, NULL, fork_thread, &pid) == 0);
    usleep(100 * 1000); /* a fork that does not wait for the lock happens now */
    release();
    EXPECT(pthread_join(reader, NULL) == 0 && read == 0);
    EXPECT(pthread_join(forker, NULL) == 0);
    int st = 0;
    EXPECT(pid > 0 && waitpid(pid, &st, 0) == pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    EXPECT(cudaFree(p) == 0);
    printf("preload_app: fork while busy (%d check(s) failed)\n", bad);
    return bad != 0;
}

/* ---- --ipc: CUDA IPC of cudaMalloc's blocks ---- */

/* Another process opens a handle (cudaIpcOpenMemHandle) and reads the block there: the
 * exporter's cudaMalloc pointer is an allocation's base, so the handle opens at the block
 * (cudaMalloc's contract). Three blocks allocated in a row, 2 MiB, 2 MiB (under
 * policy:cca the second is split from the first one's 20 MiB segment) and 40 MiB + 1 KiB
 * (under the fragless policy over more than one physical allocation), each filled with its
 * own byte, exported and read by a child (this program again, --ipc-open HEX BYTE SIZE: 0
 * the bytes are the block's, 2 they are not, 3 the handle did not open). Then the first
 * block's handle is opened once more after the block is freed (--ipc-open ... expecting
 * nothing): a handle of fragless's own no longer opens (the runtime's legacy handles
 * are the program's business then, as in CUDA). The verdict per block: "intact"
 * (exported, and the child read the block's bytes), "WRONG DATA" (exported, and the child
 * read other bytes: no error said so), "refused N" (cudaIpcGetMemHandle's error N), or
 * "child failed". */
enum { IPC_BLOCKS = 3 };
static const size_t ipc_sizes[IPC_BLOCKS] = {2 << 20, 2 << 20, (40 << 20) + 1024};

static int ipc_open(int argc, char **argv)
{
    cudaIpcMemHandle_t h;
    const char *hex = argc > 2 ? argv[2] : "";
    if (argc < 5 || strlen(hex) != 2 * sizeof h.reserved)
        return 4;
    for (size_t i = 0; i < sizeof h.reserved; i++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return 4;
        h.reserved[i] = (char)v;
    }
    int byte = atoi(argv[3]);
    size_t size = strtoul(argv[4], NULL, 10), skip = argc > 5 ? strtoul(argv[5], NULL, 10) : 0, k = 0;
    void *p = NULL;
    if (cudaIpcOpenMemHandle(&p, h, 1) != 0 || !p)
        return 3;
    for (; k < size && ((unsigned char *)p)[skip + k] == (unsigned char)byte; k++)
        ;
    return cudaIpcCloseMemHandle(p) == 0 && k == size ? 0 : 2;
}

/* Runs --ipc-open on handle h (reading n bytes from skip bytes past where it opens): the
 * child's exit code, -1 when it could not run. */
static int ipc_child(const cudaIpcMemHandle_t *h, int byte, size_t n, size_t skip)
{
    char hex[2 * sizeof h->reserved + 1], b[8], size[24], sk[24];
    for (size_t k = 0; k < sizeof h->reserved; k++)
        snprintf(hex + 2 * k, 3, "%02x", (unsigned char)h->reserved[k]);
    snprintf(b, sizeof b, "%d", byte);
    snprintf(size, sizeof size, "%zu", n);
    snprintf(sk, sizeof sk, "%zu", skip);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "preload_app", "--ipc-open", hex, b, size, sk, (char *)NULL);
        _exit(5);
    }
    int st = 0;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int ipc(void)
{
    void *blocks[IPC_BLOCKS] = {0};
    cudaIpcMemHandle_t handles[IPC_BLOCKS];
    cudaError_t got[IPC_BLOCKS];
    int bad_setup = 0;
    char verdict[IPC_BLOCKS][32];
    for (int i = 0; i < IPC_BLOCKS; i++) {
        bad_setup |= cudaMalloc(&blocks[i], ipc_sizes[i]) != 0 || !blocks[i];
        if (blocks[i])
            memset(blocks[i], 0xA1 + i, ipc_sizes[i]);
    }
    int own = 0; /* handles this process opened itself: none may (CUDA refuses it) */
    for (int i = 0; i < IPC_BLOCKS && !bad_setup; i++) {
        memset(&handles[i], 0, sizeof handles[i]);
        got[i] = cudaIpcGetMemHandle(&handles[i], blocks[i]);
        if (got[i] != 0) {
            snprintf(verdict[i], sizeof verdict[i], "refused %d", got[i]);
            continue;
        }
        void *mine = NULL;
        own += cudaIpcOpenMemHandle(&mine, handles[i], 1) == 0;
        int rc = ipc_child(&handles[i], 0xA1 + i, ipc_sizes[i], 0);
        snprintf(verdict[i], sizeof verdict[i], "%s", rc == 0 ? "intact" : rc == 2 ? "WRONG DATA" : "child failed");
        if (rc != 0 && rc != 2)
            printf("preload_app: --ipc-open exited %d\n", rc);
    }
    /* A handle of fragless's own (its first 8 bytes "FLSSIPC1"; the block's address at
     * byte 24, its size at 32: src/preload/ipc.c's wire) made to name the second block
     * instead of the first, its keyed hash kept: it must not open. */
    const char *forged = "-";
    uint64_t magic = 0;
    if (!bad_setup && got[0] == 0 && got[1] == 0)
        memcpy(&magic, handles[0].reserved, sizeof magic);
    if (magic == 0x3143504953534c46ull) {
        cudaIpcMemHandle_t f = handles[0];
        uint64_t a1 = (uintptr_t)blocks[1], s1 = ipc_sizes[1];
        memcpy(f.reserved + 24, &a1, sizeof a1);
        memcpy(f.reserved + 32, &s1, sizeof s1);
        int rc = ipc_child(&f, 0xA2, ipc_sizes[1], 0);
        forged = rc == 3 ? "does not open" : "OPENS";
    }
    /* An address 5 MiB + 123 bytes into the last block, no block's start: as a legacy
     * handle, it shares the physical allocation holding it (cuMemGetAddressRange's) and
     * opens at that allocation's start. The child reads, from there, the part of the
     * allocation that lies in the block. */
    const char *inner = "-";
    void *drv = dlopen(getenv("FRAGLESS_CUDA_LIB"), RTLD_NOW | RTLD_LOCAL);
    void *sr = drv ? dlsym(drv, "cuMemGetAddressRange_v2") : NULL;
    if (!bad_setup && sr) {
        int (*range)(uintptr_t *, size_t *, uintptr_t);
        memcpy(&range, &sr, sizeof sr);
        uintptr_t blk = (uintptr_t)blocks[2], q = blk + (5 << 20) + 123, base = 0;
        size_t len = 0;
        cudaIpcMemHandle_t h;
        cudaError_t e = cudaFree(NULL) == 0 && range(&base, &len, q) == 0 ? cudaIpcGetMemHandle(&h, (void *)q) : 1;
        uintptr_t lo = base > blk ? base : blk, end = blk + ipc_sizes[2], hi = base + len < end ? base + len : end;
        int rc = e == 0 && lo < hi ? ipc_child(&h, 0xA3, hi - lo, lo - base) : -1;
        inner = e != 0 ? "refused" : rc == 0 ? "intact" : rc == 2 ? "WRONG DATA" : "child failed";
    }
    for (int i = 0; i < IPC_BLOCKS; i++)
        if (blocks[i])
            bad_setup |= cudaFree(blocks[i]) != 0;
    if (bad_setup) {
        printf("preload_app: ipc: cudaMalloc or cudaFree failed\n");
        return 1;
    }
    /* The first block is freed: its handle opens no more, unless it is the runtime's. */
    int after = got[0] == 0 ? ipc_child(&handles[0], 0xA1, ipc_sizes[0], 0) : -1;
    printf("preload_app: ipc: %s, %s, %s; inner address %s; forged handle %s; freed first block's handle %s; own "
           "handles opened here: %d\n", verdict[0], verdict[1], verdict[2], inner, forged,
           after == 3 ? "does not open" : after == -1 ? "-" : "opens", own);
    return 0;
}

/* ---- --pitch: cudaMallocPitch and cudaMalloc3D ---- */

/* The pitched allocations are fragless's (before, the runtime's: here, the runtime double
 * has no device): rows of a pitch that is a multiple of 512 and holds the width, every
 * byte of every row writable, the device's free memory lower while they live and whole
 * again after cudaFree. A width of 0 is the runtime's to answer (the double's "no
 * device"). */
static int pitched(void)
{
    size_t free0 = 0, total = 0, free1 = 0, free2 = 0, pitch = 0;
    void *p = NULL;
    EXPECT(cudaMemGetInfo(&free0, &total) == 0);
    EXPECT(cudaMallocPitch(&p, &pitch, 1000, 30) == 0 && p && pitch == 1024);
    if (p)
        for (size_t r = 0; r < 30; r++)
            memset((char *)p + r * pitch, (int)r, 1000);
    struct cudaPitchedPtr pp = {0};
    struct cudaExtent ext = {700, 20, 3};
    EXPECT(cudaMalloc3D(&pp, ext) == 0 && pp.ptr && pp.pitch == 1024 && pp.xsize == 700 && pp.ysize == 20);
    if (pp.ptr)
        for (size_t r = 0; r < 20 * 3; r++)
            memset((char *)pp.ptr + r * pp.pitch, (int)r, 700);
    EXPECT(cudaMemGetInfo(&free1, &total) == 0 && free1 < free0);
    int rows_ok = p != NULL;
    for (size_t r = 0; rows_ok && r < 30; r++)
        rows_ok = ((unsigned char *)p)[r * pitch + 999] == (unsigned char)r;
    EXPECT(rows_ok);
    EXPECT(cudaFree(p) == 0 && cudaFree(pp.ptr) == 0);
    EXPECT(cudaMemGetInfo(&free2, &total) == 0 && free2 == free0);
    void *z = NULL;
    EXPECT(cudaMallocPitch(&z, &pitch, 0, 5) == 100); /* the runtime's */
    printf("preload_app: pitched (%d check(s) failed)\n", bad);
    return bad != 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--pitch"))
        return pitched();
    if (argc > 1 && !strcmp(argv[1], "--ipc"))
        return ipc();
    if (argc > 1 && !strcmp(argv[1], "--ipc-open"))
        return ipc_open(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "--pool"))
        return pool();
    if (argc > 1 && !strcmp(argv[1], "--reset"))
        return reset();
    if (argc > 1 && !strcmp(argv[1], "--fork"))
        return fork_busy();
    if (argc > 1 && !strcmp(argv[1], "--graph-nodes"))
        return graph_nodes();
    if (argc > 1 && !strcmp(argv[1], "--graphs"))
        return graphs();
    if (argc > 1 && !strcmp(argv[1], "--stream-device"))
        return stream_device();
    if (argc > 1 && !strcmp(argv[1], "--streams"))
        return streams();
    if (argc > 1 && !strcmp(argv[1], "--per-thread")) /* cudaStreamPerThread */
        return per_thread(cudaMallocAsync, cudaFreeAsync, cudaStreamPerThread);
    if (argc > 1 && !strcmp(argv[1], "--ptsz")) /* the same through the _ptsz calls and stream NULL */
        return per_thread(cudaMallocAsync_ptsz, cudaFreeAsync_ptsz, NULL);
    if (argc > 1 && !strcmp(argv[1], "--devices")) {
        /* A block of device 1 freed while device 0 is current: the runtime's cudaFree
         * waits for device 1, the block's. */
        void *q = NULL;
        cudaError_t e;
        if ((e = cudaSetDevice(1)) != 0 || (e = cudaFree(NULL)) != 0 || (e = cudaMalloc(&q, 3 << 20)) != 0)
            return failed("cudaMalloc on device 1", e);
        memset(q, 0x5a, 3 << 20);
        if ((e = cudaSetDevice(0)) != 0 || (e = cudaFree(q)) != 0)
            return failed("cudaFree of device 1's block from device 0", e);
        printf("preload_app: device 1's block freed from device 0\n");
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "--free-foreign")) {
        /* Not device memory from any allocator: fragless passes it on to the runtime. */
        int local = 0;
        printf("preload_app: cudaFree(foreign) = %d\n", cudaFree(&local));
        printf("preload_app: cudaFreeAsync(foreign) = %d\n", cudaFreeAsync(&local, cudaStreamPerThread));
        return 0;
    }
    /* The last two on the per-thread stream with the Async calls. */
    static const size_t sizes[N_BLOCKS] = {100, 512, 4096, 70000, 257 * 1024, 1 << 20,
                                           (3 << 20) + 5, (20 << 20) + 7, 1000, 5 << 20};
    unsigned char *p[N_BLOCKS];
    size_t total = 0, free0 = 0, free1 = 0, free2 = 0, bytes = 0;
    cudaError_t e;
    if ((e = cudaMemGetInfo(&free0, &total)) != 0)
        return failed("cudaMemGetInfo", e);
    for (int i = 0; i < N_BLOCKS; i++) {
        int async = i >= N_BLOCKS - 2;
        e = async ? cudaMallocAsync((void **)&p[i], sizes[i], cudaStreamPerThread)
                  : cudaMalloc((void **)&p[i], sizes[i]);
        if (e != 0 || !p[i])
            return alloc_failed(async ? "cudaMallocAsync" : "cudaMalloc", sizes[i], e);
        for (size_t k = 0; k < sizes[i]; k++)
            p[i][k] = pattern(i, k);
        bytes += sizes[i];
    }
    void *none = (void *)1;
    if ((e = cudaMalloc(&none, 0)) != 0 || none)
        return alloc_failed("cudaMalloc", 0, e);
    if ((e = cudaMemGetInfo(&free1, &total)) != 0)
        return failed("cudaMemGetInfo", e);
    int intact = 1;
    for (int i = 0; i < N_BLOCKS; i++)
        for (size_t k = 0; k < sizes[i]; k++)
            if (p[i][k] != pattern(i, k)) {
                printf("preload_app: block %d (%zu bytes) byte %zu reads %u, wrote %u\n", i, sizes[i], k,
                       p[i][k], pattern(i, k));
                intact = 0;
                break;
            }
    for (int i = 0; i < N_BLOCKS; i++) {
        int async = i >= N_BLOCKS - 2;
        e = async ? cudaFreeAsync(p[i], cudaStreamPerThread) : cudaFree(p[i]);
        if (e != 0)
            return alloc_failed(async ? "cudaFreeAsync" : "cudaFree", sizes[i], e);
    }
    if ((e = cudaFree(NULL)) != 0)
        return failed("cudaFree(NULL)", e);
    if ((e = cudaMemGetInfo(&free2, &total)) != 0)
        return failed("cudaMemGetInfo", e);
    printf("preload_app: memory total %zu, free before %zu, with blocks %zu, after frees %zu\n", total, free0,
           free1, free2);
    /* Live blocks take at least their size from free memory, and give it back. */
    if (free1 + bytes > free0 || free2 < free1 + bytes) {
        printf("preload_app: cudaMemGetInfo does not follow the %zu bytes allocated and freed\n", bytes);
        return 1;
    }
    if (!intact)
        return 1;
    printf("preload_app: %d allocations (%zu bytes), %d frees, data intact\n", N_BLOCKS, bytes, N_BLOCKS);
    return 0;
}
