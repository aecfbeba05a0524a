/* A test double of the CUDA driver: every entry point of FL_CUDA_FUNCTIONS, backed by host
 * memory (physical handles are memfd files, reservations PROT_NONE address space, mappings
 * MAP_SHARED views of the memfd), enforcing the driver's rules, plus the controls of
 * fakecuda.h: call counters, "fail the Nth call" of the entry points the device layer does
 * not count, and events a test completes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, MAP_NORESERVE, MAP_FIXED_NOREPLACE */
#endif

#include "fakecuda.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The definitions below must match the contract: declaring them from the same X-macro
 * makes any difference in a signature a compile error. */
#define FC_DECLARE(name, params) CUresult name params;
FL_CUDA_FUNCTIONS(FC_DECLARE)

#define FC_ENUM(name, params) F_##name,
enum { FL_CUDA_FUNCTIONS(FC_ENUM) F_COUNT, F_ANY = F_COUNT };
#define FC_NAME(name, params) #name,
static const char *const fn_names[F_COUNT] = { FL_CUDA_FUNCTIONS(FC_NAME) };

#define FC_MAX_DEVICES 64
#define FC_DRIVER_VERSION 12080 /* what cuDriverGetVersion reports: CUDA 12.8 */
#define FC_ALLOC_ALIGN 256      /* cuMemAlloc charges and aligns at least this much */

/* Driver codes the double returns beyond those cuda_api.h names. */
enum { FC_ERROR_NO_DEVICE = 100, FC_ERROR_INVALID_HANDLE = 400, FC_ERROR_CONTEXT_IS_DESTROYED = 709 };
enum { FC_EVENT_FLAGS = 0x1 | 0x2 | 0x4 }; /* BLOCKING_SYNC, DISABLE_TIMING, INTERPROCESS */

struct CUctx_st {
    int dev;
    unsigned refs; /* primary-context retains; 0: inactive, memory calls refuse it */
    int reset;     /* reset (cuDevicePrimaryCtxReset_v2) and not retained since: calls made
                      in it fail with CUDA_ERROR_CONTEXT_IS_DESTROYED */
};

/* Each thread's context stack (cuCtxPushCurrent / cuCtxPopCurrent); the top is current.
 * A new thread has none: the driver makes no context current implicitly. */
#define FC_CTX_STACK 16

struct CUevent_st {
    struct CUctx_st *home; /* the context it was created in: only its streams record it */
    struct CUctx_st *ctx; /* context current when last recorded: the stream's context */
    CUstream stream;
    int pending;          /* recorded and not yet completed */
    int captured;         /* last recorded into a graph capture: querying it is illegal */
};

typedef struct fc_handle {
    CUmemGenericAllocationHandle id; /* never reused, so a second release is caught */
    int fd;
    size_t size;
    int dev;
    unsigned mappings;
    unsigned refs;       /* cuMemCreate / import: 1; cuMemRelease takes one; 0: released */
    unsigned types;      /* requestedHandleTypes: what it may be exported as */
    int rdma;            /* allocFlags.gpuDirectRDMACapable */
    int imported;        /* from another process: its memory is charged there, not here */
} fc_handle;

typedef struct fc_reservation {
    uintptr_t va;
    size_t size;
    unsigned mappings;
} fc_reservation;

/* Access is per device and per granule: a mapping starts inaccessible to every device,
 * cuMemSetAccess grants it device by device (bit d of rd / wr), and a device reads only
 * what it was granted (fakecuda_device_access), as a GPU faults on a peer's memory that
 * cuMemSetAccess did not name it for. */
typedef struct fc_mapping {
    uintptr_t va;
    size_t size;
    fc_handle *h;
    uint64_t *rd, *wr;   /* one mask per granule */
} fc_mapping;

/* CUDA graph capture. A use is a range the captured work reads and writes, with what
 * backs each granule of it at capture time (a handle id, or the cuMemAlloc allocation's
 * address with the top bit set): a launch checks the graph's memory is still there. */
typedef struct fc_use {
    uintptr_t va;
    size_t size;
    unsigned long long *backing; /* per granule */
    unsigned char *after;        /* what the graph's last launch left there */
} fc_use;

typedef struct fc_capture {
    CUstream stream;
    unsigned long long id;
    CUstreamCaptureMode mode;
    const void *thread;   /* the thread that began it */
    int invalidated;
    fc_use *uses;
    size_t n_uses, cap_uses;
} fc_capture;

typedef struct fc_graph {
    unsigned long long id;
    fc_use *uses;
    size_t n_uses;
    int launched;         /* its memory holds what its last launch wrote */
} fc_graph;

typedef struct fc_alloc {
    uintptr_t va;
    size_t size, charged;
    int dev;
    int fd;               /* -1 until cuIpcGetMemHandle exports it (then the memfd under it) */
} fc_alloc;

/* Memory another process exported with cuIpcGetMemHandle, mapped here by
 * cuIpcOpenMemHandle_v2 until cuIpcCloseMemHandle. */
typedef struct fc_ipc_open {
    uintptr_t va;
    size_t size;
} fc_ipc_open;

typedef struct fc_config {
    int ok, ndev, vmm;
    size_t capacity, gran;
    int peer;            /* devices can access each other's memory (cuDeviceCanAccessPeer) */
    int posix_fd;        /* attribute 103: handles exportable as file descriptors */
    int rdma;            /* attribute 110: the GPUDirect RDMA flag of cuMemCreate */
    int fabric;          /* attribute 128: 0 no, 1 yes, 2 said yes but cuMemCreate is refused
                            (no IMEX channel: CUDA_ERROR_NOT_PERMITTED) */
    int unmap_one;       /* cuMemUnmap refuses a range of several mappings */
} fc_config;

static struct {
    pthread_mutex_t lock;
    fc_config cfg;
    int initialized;
    int auto_complete;
    size_t used[FC_MAX_DEVICES];         /* bytes charged: live handles and cuMemAlloc */
    struct CUctx_st ctx[FC_MAX_DEVICES]; /* primary contexts; addresses stay valid for good */
    unsigned long long calls[F_COUNT];
    unsigned long long fail_in[F_COUNT];  /* countdowns of the fault plans */
    CUresult fail_err[F_COUNT];
    CUmemGenericAllocationHandle next_id;
    /* Handles sorted by id, reservations and mappings by address: binary searches. */
    fc_handle **handles;
    size_t n_handles, cap_handles;
    fc_reservation *res;
    size_t n_res, cap_res;
    fc_mapping *maps;
    size_t n_maps, cap_maps;
    fc_alloc *allocs;
    size_t n_allocs, cap_allocs;
    fc_ipc_open *ipc_opens;
    size_t n_ipc_opens, cap_ipc_opens;
    struct CUevent_st **events;
    size_t n_events, cap_events;
    fc_capture *captures;                /* captures underway */
    size_t n_captures, cap_captures;
    fc_graph *graphs;
    size_t n_graphs, cap_graphs;
    unsigned long long next_capture;
    unsigned long long violations;       /* calls that invalidated a capture */
    unsigned long long graph_faults;     /* launches that found a graph's memory gone */
    unsigned long long reset_losses;     /* what primary-context resets destroyed */
    CUstream dead[64];                   /* streams the program destroyed (fakecuda_stream_destroy) */
    size_t n_dead;
    struct {
        CUstream stream;
        struct CUctx_st *ctx;
    } made[256];                         /* streams made in a known context (fakecuda_stream_create) */
    size_t n_made;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Thread_local struct CUctx_st *tls_stack[FC_CTX_STACK];
static _Thread_local int tls_depth;

static struct CUctx_st *current_ctx(void)
{
    return tls_depth ? tls_stack[tls_depth - 1] : NULL;
}
static _Thread_local CUstreamCaptureMode tls_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
static _Thread_local char tls_me; /* its address names the thread */

/* CU_STREAM_PER_THREAD (the runtime's cudaStreamPerThread) names the calling thread's own
 * default stream, as the driver resolves it: one handle, a different stream per thread.
 * Work recorded on it, a capture on it and a synchronize of it are the caller's stream's
 * (here: the thread's own name), so one thread's synchronize leaves another's events
 * pending. Any other value names one stream for every thread. */
static CUstream own_stream(CUstream stream)
{
    return stream == CU_STREAM_PER_THREAD ? (CUstream)(void *)&tls_me : stream;
}

/* ---- configuration ---------------------------------------------------------------- */

static int fn_index(const char *fn)
{
    if (!fn)
        return -1;
    if (strcmp(fn, "*") == 0)
        return F_ANY;
    for (int i = 0; i < F_COUNT; i++)
        if (strcmp(fn, fn_names[i]) == 0)
            return i;
    return -1;
}

static const struct { CUresult code; const char *name; } error_names[] = {
    { 0, "CUDA_SUCCESS" }, { 1, "CUDA_ERROR_INVALID_VALUE" }, { 2, "CUDA_ERROR_OUT_OF_MEMORY" },
    { 3, "CUDA_ERROR_NOT_INITIALIZED" }, { 4, "CUDA_ERROR_DEINITIALIZED" },
    { 100, "CUDA_ERROR_NO_DEVICE" }, { 101, "CUDA_ERROR_INVALID_DEVICE" },
    { 201, "CUDA_ERROR_INVALID_CONTEXT" }, { 205, "CUDA_ERROR_MAP_FAILED" },
    { 206, "CUDA_ERROR_UNMAP_FAILED" }, { 208, "CUDA_ERROR_ALREADY_MAPPED" },
    { 211, "CUDA_ERROR_NOT_MAPPED" }, { 400, "CUDA_ERROR_INVALID_HANDLE" },
    { 401, "CUDA_ERROR_ILLEGAL_STATE" }, { 500, "CUDA_ERROR_NOT_FOUND" },
    { 600, "CUDA_ERROR_NOT_READY" }, { 700, "CUDA_ERROR_ILLEGAL_ADDRESS" },
    { 708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE" }, { 709, "CUDA_ERROR_CONTEXT_IS_DESTROYED" },
    { 719, "CUDA_ERROR_LAUNCH_FAILED" }, { 800, "CUDA_ERROR_NOT_PERMITTED" },
    { 801, "CUDA_ERROR_NOT_SUPPORTED" }, { 900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED" },
    { 901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED" }, { 906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT" },
    { 999, "CUDA_ERROR_UNKNOWN" },
};

static const char *error_name(CUresult e)
{
    for (size_t i = 0; i < sizeof error_names / sizeof error_names[0]; i++)
        if (error_names[i].code == e)
            return error_names[i].name;
    return NULL;
}

/* Byte counts with an optional binary suffix; 0 on a malformed value. */
static int parse_bytes(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || s[0] == '-')
        return 0;
    int shift = 0;
    switch (*end) {
    case 'K': case 'k': shift = 10; end++; break;
    case 'M': case 'm': shift = 20; end++; break;
    case 'G': case 'g': shift = 30; end++; break;
    case 'T': case 't': shift = 40; end++; break;
    default: break;
    }
    if (*end || (shift && v > (SIZE_MAX >> shift)))
        return 0;
    *out = (size_t)v << shift;
    return 1;
}

static int config_error(const char *var, const char *value, const char *why)
{
    fprintf(stderr, "fakecuda: %s=%s: %s; cuInit will return CUDA_ERROR_INVALID_VALUE\n", var,
            value, why);
    return 0;
}

/* Reads the environment into g.cfg; g.cfg.ok says whether it parsed. */
static void load_config(void)
{
    fc_config c = { .ok = 1, .ndev = 1, .vmm = 1, .capacity = (size_t)1 << 30,
                    .gran = (size_t)2 << 20, .peer = 1, .posix_fd = 1, .rdma = 1, .fabric = 0 };
    const char *v;
    size_t n;
    if ((v = getenv("FAKECUDA_DEVICES")) && *v) {
        if (!parse_bytes(v, &n) || n > FC_MAX_DEVICES)
            c.ok = config_error("FAKECUDA_DEVICES", v, "not a device count from 0 to 64");
        else
            c.ndev = (int)n;
    }
    if ((v = getenv("FAKECUDA_CAPACITY")) && *v && !parse_bytes(v, &c.capacity))
        c.ok = config_error("FAKECUDA_CAPACITY", v, "not a byte count");
    if ((v = getenv("FAKECUDA_GRANULARITY")) && *v) {
        long page = sysconf(_SC_PAGESIZE);
        if (!parse_bytes(v, &c.gran) || c.gran < (size_t)page || (c.gran & (c.gran - 1)))
            c.ok = config_error("FAKECUDA_GRANULARITY", v,
                                "not a power of two at least the page size");
    }
    if ((v = getenv("FAKECUDA_NO_VMM")) && *v) {
        if (strcmp(v, "1") == 0)
            c.vmm = 0;
        else if (strcmp(v, "0") != 0)
            c.ok = config_error("FAKECUDA_NO_VMM", v, "neither 0 nor 1");
    }
    static const struct {
        const char *var;
        size_t off;
        int max;
    } flags[] = {
        {"FAKECUDA_PEER", offsetof(fc_config, peer), 1},
        {"FAKECUDA_POSIX_FD", offsetof(fc_config, posix_fd), 1},
        {"FAKECUDA_RDMA", offsetof(fc_config, rdma), 1},
        {"FAKECUDA_FABRIC", offsetof(fc_config, fabric), 2},
        {"FAKECUDA_UNMAP_ONE", offsetof(fc_config, unmap_one), 1},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!(v = getenv(flags[i].var)) || !*v)
            continue;
        if (v[1] || v[0] < '0' || v[0] > '0' + flags[i].max)
            c.ok = config_error(flags[i].var, v, flags[i].max == 1 ? "neither 0 nor 1" : "not 0, 1 or 2");
        else
            *(int *)((char *)&c + flags[i].off) = v[0] - '0';
    }
    g.cfg = c;
    for (int d = 0; d < FC_MAX_DEVICES; d++)
        g.ctx[d].dev = d;
}

static void load_config_once(void)
{
    pthread_mutex_lock(&g.lock);
    g.auto_complete = 1;
    g.next_id = 0x1000; /* far from 0, so a zeroed handle variable is never a live handle */
    load_config();
    pthread_mutex_unlock(&g.lock);
}

/* ---- entry and exit: the lock, the counters, fault injection ------------------------- */

/* Counts down one plan; true on the call it names. */
static int plan_fires(int i)
{
    return g.fail_in[i] && --g.fail_in[i] == 0;
}

/* fakecuda_hold_call: the entry point whose next call waits (-1: none), and whether a
 * call waits now. Apart from g.lock, which a waiting call does not hold. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    _Atomic int fn;
    int waiting;
} hold = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, 0};

static void maybe_hold(int fn)
{
    if (atomic_load_explicit(&hold.fn, memory_order_relaxed) != fn)
        return;
    pthread_mutex_lock(&hold.lock);
    int expected = fn;
    if (atomic_compare_exchange_strong(&hold.fn, &expected, -1)) {
        hold.waiting = 1;
        pthread_cond_broadcast(&hold.cond);
        while (hold.waiting)
            pthread_cond_wait(&hold.cond, &hold.lock);
    }
    pthread_mutex_unlock(&hold.lock);
}

/* Every entry point starts here: takes the lock (held until leave), counts the call and
 * returns the injected error, if this is the call a plan names. A held call
 * (fakecuda_hold_call) waits first. */
static CUresult enter(int fn)
{
    maybe_hold(fn);
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    g.calls[fn]++;
    return plan_fires(fn) ? g.fail_err[fn] : CUDA_SUCCESS;
}

static CUresult leave(CUresult r)
{
    pthread_mutex_unlock(&g.lock);
    return r;
}

#define ENTRY(name, body)                            \
    do {                                             \
        CUresult r_ = enter(F_##name);               \
        return leave(r_ != CUDA_SUCCESS ? r_ : (body)); \
    } while (0)

/* ---- small helpers ------------------------------------------------------------------ */

/* Returns the error of a check that failed: the calls check everything before they change
 * anything, so an early return leaves no side effect. */
#define TRY(expr)                          \
    do {                                   \
        CUresult try_ = (expr);            \
        if (try_ != CUDA_SUCCESS)          \
            return try_;                   \
    } while (0)

static CUresult need_init(void)
{
    return g.initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

static int valid_dev(int dev)
{
    return dev >= 0 && dev < g.cfg.ndev;
}

/* The calling thread's context, if it is one the calls may use. */
static CUresult need_ctx(struct CUctx_st **out)
{
    if (!g.initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    struct CUctx_st *c = current_ctx();
    if (!c || !valid_dev(c->dev) || c->refs == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (c->reset)
        return FC_ERROR_CONTEXT_IS_DESTROYED;
    *out = c;
    return CUDA_SUCCESS;
}

/* Room for one more element, made before any side effect so that running out of host
 * memory leaves the call undone. Returns the (maybe moved) array, NULL on failure. */
static void *grow(void *items, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return items;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(items, c * elem);
    if (p)
        *cap = c;
    return p;
}

static void insert_at(void *base, size_t n, size_t i, const void *item, size_t elem)
{
    char *b = base;
    memmove(b + (i + 1) * elem, b + i * elem, (n - i) * elem);
    memcpy(b + i * elem, item, elem);
}

static void remove_at(void *base, size_t n, size_t i, size_t count, size_t elem)
{
    char *b = base;
    memmove(b + i * elem, b + (i + count) * elem, (n - i - count) * elem);
}

static int aligned(unsigned long long v, size_t a)
{
    return v % a == 0;
}

/* [va, va+size) is non-empty, granularity-aligned and does not wrap. */
static int good_range(CUdeviceptr va, size_t size)
{
    return size && aligned(va, g.cfg.gran) && aligned(size, g.cfg.gran) && va + size > va;
}

/* Index of the first mapping that ends after addr: the one holding addr, or the next. */
static size_t map_after(uintptr_t addr)
{
    size_t lo = 0, hi = g.n_maps;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g.maps[mid].va + g.maps[mid].size <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t res_after(uintptr_t addr)
{
    size_t lo = 0, hi = g.n_res;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g.res[mid].va + g.res[mid].size <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The reservation wholly holding [va, va+size), or NULL. */
static fc_reservation *res_holding(uintptr_t va, size_t size)
{
    size_t i = res_after(va);
    if (i < g.n_res && g.res[i].va <= va && va + size <= g.res[i].va + g.res[i].size)
        return &g.res[i];
    return NULL;
}

static size_t handle_index(CUmemGenericAllocationHandle id)
{
    size_t lo = 0, hi = g.n_handles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g.handles[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static fc_handle *find_handle(CUmemGenericAllocationHandle id)
{
    size_t i = handle_index(id);
    return i < g.n_handles && g.handles[i]->id == id ? g.handles[i] : NULL;
}

/* Physical memory goes back only when the handle is released and mapped nowhere. */
static void handle_maybe_destroy(fc_handle *h)
{
    if (h->refs || h->mappings)
        return;
    close(h->fd);
    if (!h->imported)
        g.used[h->dev] -= h->size;
    remove_at(g.handles, g.n_handles--, handle_index(h->id), 1, sizeof *g.handles);
    free(h);
}

static size_t event_index(CUevent ev)
{
    for (size_t i = 0; i < g.n_events; i++)
        if (g.events[i] == ev)
            return i;
    return SIZE_MAX;
}

/* Completes pending events recorded in ctx (NULL: any) on stream (when one_stream). */
static void complete(struct CUctx_st *ctx, int one_stream, CUstream stream)
{
    for (size_t i = 0; i < g.n_events; i++) {
        struct CUevent_st *e = g.events[i];
        if ((!ctx || e->ctx == ctx) && (!one_stream || e->stream == stream))
            e->pending = 0;
    }
}

/* Reserves address space aligned to align, at hint when that is free and aligned. */
static void *reserve_va(size_t size, size_t align, uintptr_t hint)
{
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (hint && aligned(hint, align)) {
        void *p = mmap((void *)hint, size, PROT_NONE, flags | MAP_FIXED_NOREPLACE, -1, 0);
        if (p == (void *)hint)
            return p;
        if (p != MAP_FAILED) /* a kernel that ignores the flag placed it elsewhere */
            munmap(p, size);
    }
    if (size > SIZE_MAX - align)
        return NULL;
    size_t span = size + align;
    char *p = mmap(NULL, span, PROT_NONE, flags, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    size_t head = a - (uintptr_t)p, tail = span - head - size;
    if (head)
        munmap(p, head);
    if (tail)
        munmap((char *)a + size, tail);
    return (void *)a;
}

/* Puts reservation memory back where mappings were: inaccessible, not a hole that a
 * later host mmap could take. */
static int restore_reserved(uintptr_t va, size_t size)
{
    return mmap((void *)va, size, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == (void *)va;
}

/* ---- CUDA graph capture: what a capture forbids ------------------------------------- */

/* cuda.h (cuThreadExchangeStreamCaptureMode): a thread in GLOBAL mode may make no
 * potentially unsafe call while it has a capture underway not begun RELAXED, or while any
 * thread has a GLOBAL capture underway; THREAD_LOCAL looks at its own captures only;
 * RELAXED is never prohibited. The double counts every memory call (allocation, mapping,
 * access, frees) and event queries and synchronizes as potentially unsafe. */
static int prohibited(void)
{
    if (tls_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return 0;
    for (size_t i = 0; i < g.n_captures; i++) {
        const fc_capture *c = &g.captures[i];
        if (c->mode == CU_STREAM_CAPTURE_MODE_RELAXED)
            continue;
        if (c->thread == &tls_me || (tls_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL))
            return 1;
    }
    return 0;
}

static fc_capture *capture_of(CUstream stream)
{
    stream = own_stream(stream);
    for (size_t i = 0; i < g.n_captures; i++)
        if (g.captures[i].stream == stream)
            return &g.captures[i];
    return NULL;
}

/* As the driver does: the call fails and every capture underway is invalidated (its
 * cuStreamEndCapture will fail). Said on stderr and counted. */
static CUresult capture_violation(const char *call, const char *why)
{
    g.violations++;
    fprintf(stderr, "fakecuda: %s during CUDA graph capture: %s; %zu capture(s) invalidated\n", call, why,
            g.n_captures);
    for (size_t i = 0; i < g.n_captures; i++)
        g.captures[i].invalidated = 1;
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

#define UNSAFE_CALL(name)                                                                          \
    do {                                                                                           \
        if (g.n_captures && prohibited())                                                          \
            return capture_violation(name, "a potentially unsafe call from a thread whose capture " \
                                           "mode is not relaxed");                                 \
    } while (0)

/* What backs the granule at va now: its handle's id, the cuMemAlloc allocation's address
 * with the top bit set, or 0 (nothing mapped there). accessible: whether it may be read. */
static unsigned long long backing_of(uintptr_t va, int *accessible)
{
    size_t i = map_after(va);
    if (i < g.n_maps && g.maps[i].va <= va) {
        *accessible = g.maps[i].rd[(va - g.maps[i].va) / g.cfg.gran] != 0; /* some device may read it */
        return g.maps[i].h->id;
    }
    for (size_t k = 0; k < g.n_allocs; k++)
        if (g.allocs[k].va <= va && va < g.allocs[k].va + g.allocs[k].size) {
            *accessible = 1;
            return g.allocs[k].va | (1ull << 63);
        }
    *accessible = 0;
    return 0;
}

static void free_uses(fc_use *uses, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(uses[i].backing);
        free(uses[i].after);
    }
    free(uses);
}

/* ---- initialization, devices, contexts ------------------------------------------------ */

static CUresult do_init(unsigned int flags)
{
    if (!g.cfg.ok || flags)
        return CUDA_ERROR_INVALID_VALUE;
    if (g.cfg.ndev == 0)
        return FC_ERROR_NO_DEVICE;
    g.initialized = 1;
    return CUDA_SUCCESS;
}
CUresult cuInit(unsigned int flags) { ENTRY(cuInit, do_init(flags)); }

static CUresult do_driver_version(int *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = FC_DRIVER_VERSION;
    return CUDA_SUCCESS;
}
CUresult cuDriverGetVersion(int *version) { ENTRY(cuDriverGetVersion, do_driver_version(version)); }

static CUresult do_device_count(int *count)
{
    TRY(need_init());
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = g.cfg.ndev;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int *count) { ENTRY(cuDeviceGetCount, do_device_count(count)); }

static CUresult do_device_get(CUdevice *device, int ordinal)
{
    TRY(need_init());
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice *device, int ordinal) { ENTRY(cuDeviceGet, do_device_get(device, ordinal)); }

static CUresult do_attribute(int *value, int attrib, CUdevice dev)
{
    TRY(need_init());
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) { /* the attributes the double knows */
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *value = g.cfg.vmm; break;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: *value = g.cfg.vmm && g.cfg.posix_fd; break;
    case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED: *value = g.cfg.vmm && g.cfg.rdma; break;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED: *value = g.cfg.vmm && g.cfg.fabric != 0; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int *value, int attrib, CUdevice dev)
{
    ENTRY(cuDeviceGetAttribute, do_attribute(value, attrib, dev));
}

static CUresult do_total_mem(size_t *bytes, CUdevice dev)
{
    TRY(need_init());
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = g.cfg.capacity;
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) { ENTRY(cuDeviceTotalMem_v2, do_total_mem(bytes, dev)); }

static CUresult do_retain(CUcontext *ctx, CUdevice dev)
{
    TRY(need_init());
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    g.ctx[dev].refs++;
    g.ctx[dev].reset = 0; /* made again */
    *ctx = &g.ctx[dev];
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) { ENTRY(cuDevicePrimaryCtxRetain, do_retain(ctx, dev)); }

/* The last release leaves the device's memory alone (the real driver would free it), so a
 * client that leaks still shows the leak in cuMemGetInfo. */
static CUresult do_release_ctx(CUdevice dev)
{
    TRY(need_init());
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (g.ctx[dev].refs == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    g.ctx[dev].refs--;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) { ENTRY(cuDevicePrimaryCtxRelease_v2, do_release_ctx(dev)); }

static CUresult do_get_current(CUcontext *ctx)
{
    TRY(need_init());
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    *ctx = current_ctx();
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext *ctx) { ENTRY(cuCtxGetCurrent, do_get_current(ctx)); }

static CUresult do_ctx_device(CUdevice *device)
{
    struct CUctx_st *c;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(need_ctx(&c));
    *device = c->dev;
    return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice(CUdevice *device) { ENTRY(cuCtxGetDevice, do_ctx_device(device)); }

/* A context the calls may make current: one of the primary contexts, retained. */
static CUresult check_ctx(CUcontext ctx)
{
    int known = 0;
    for (int d = 0; d < g.cfg.ndev; d++) /* compares addresses, never dereferences ctx */
        known |= ctx == &g.ctx[d];
    return known && ctx->refs ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* As the driver: replaces the top of the thread's stack (pushes onto an empty one);
 * NULL pops the top. */
static CUresult do_set_current(CUcontext ctx)
{
    TRY(need_init());
    if (ctx)
        TRY(check_ctx(ctx));
    if (!ctx) {
        if (tls_depth)
            tls_depth--;
    } else if (tls_depth) {
        tls_stack[tls_depth - 1] = ctx;
    } else {
        tls_stack[tls_depth++] = ctx;
    }
    return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext ctx) { ENTRY(cuCtxSetCurrent, do_set_current(ctx)); }

static CUresult do_push(CUcontext ctx)
{
    TRY(need_init());
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    TRY(check_ctx(ctx));
    if (tls_depth == FC_CTX_STACK)
        return CUDA_ERROR_UNKNOWN; /* the double's own bound: a push without its pop */
    tls_stack[tls_depth++] = ctx;
    return CUDA_SUCCESS;
}
CUresult cuCtxPushCurrent_v2(CUcontext ctx) { ENTRY(cuCtxPushCurrent_v2, do_push(ctx)); }

static CUresult do_pop(CUcontext *ctx)
{
    TRY(need_init());
    if (!tls_depth)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct CUctx_st *top = tls_stack[--tls_depth];
    if (ctx)
        *ctx = top;
    return CUDA_SUCCESS;
}
CUresult cuCtxPopCurrent_v2(CUcontext *ctx) { ENTRY(cuCtxPopCurrent_v2, do_pop(ctx)); }

/* Every pair of devices can reach each other (NVLink-like) unless FAKECUDA_PEER=0. */
static int can_access(int dev, int owner)
{
    return dev == owner || g.cfg.peer;
}

static CUresult do_can_access_peer(int *can, CUdevice dev, CUdevice peer)
{
    TRY(need_init());
    if (!can)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(dev) || !valid_dev(peer) || dev == peer)
        return CUDA_ERROR_INVALID_DEVICE;
    *can = can_access(dev, peer);
    return CUDA_SUCCESS;
}
CUresult cuDeviceCanAccessPeer(int *can, CUdevice dev, CUdevice peer)
{
    ENTRY(cuDeviceCanAccessPeer, do_can_access_peer(can, dev, peer));
}

/* "fakecuda" and the ordinal: unique per device, the same in every process. */
static CUresult do_uuid(CUuuid *uuid, CUdevice dev)
{
    TRY(need_init());
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    static const char tag[8] = {'f', 'a', 'k', 'e', 'c', 'u', 'd', 'a'};
    memcpy(uuid->bytes, tag, sizeof tag);
    memset(uuid->bytes + 8, 0, 8);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { ENTRY(cuDeviceGetUuid_v2, do_uuid(uuid, dev)); }

static CUresult do_ctx_sync(void)
{
    struct CUctx_st *c;
    CUresult r = need_ctx(&c);
    if (r)
        return r;
    if (g.n_captures) /* it would wait for work that is being captured, not run */
        return capture_violation("cuCtxSynchronize", "synchronizing a context with a capture underway");
    complete(c, 0, NULL);
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize(void) { ENTRY(cuCtxSynchronize, do_ctx_sync()); }

static CUresult do_error_name(CUresult error, const char **name)
{
    const char *n = error_name(error);
    if (!name || !n)
        return CUDA_ERROR_INVALID_VALUE;
    *name = n;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult error, const char **name) { ENTRY(cuGetErrorName, do_error_name(error, name)); }

/* ---- plain device memory ------------------------------------------------------------ */

static CUresult do_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    if (!free_bytes || !total_bytes)
        return CUDA_ERROR_INVALID_VALUE;
    *free_bytes = g.cfg.capacity - g.used[c->dev];
    *total_bytes = g.cfg.capacity;
    return CUDA_SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    ENTRY(cuMemGetInfo_v2, do_mem_info(free_bytes, total_bytes));
}

static CUresult do_mem_alloc(CUdeviceptr *dptr, size_t bytes)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemAlloc");
    if (!dptr || !bytes)
        return CUDA_ERROR_INVALID_VALUE;
    /* A size too large to round up is too large to fit: out of memory, as in the driver. */
    if (bytes > SIZE_MAX - FC_ALLOC_ALIGN)
        return CUDA_ERROR_OUT_OF_MEMORY;
    size_t charged = (bytes + FC_ALLOC_ALIGN - 1) & ~(size_t)(FC_ALLOC_ALIGN - 1);
    if (charged > g.cfg.capacity - g.used[c->dev])
        return CUDA_ERROR_OUT_OF_MEMORY;
    fc_alloc *a = grow(g.allocs, &g.cap_allocs, g.n_allocs, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.allocs = a;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.allocs[g.n_allocs++] = (fc_alloc){ (uintptr_t)p, bytes, charged, c->dev, -1 };
    g.used[c->dev] += charged;
    *dptr = (uintptr_t)p;
    return CUDA_SUCCESS;
}
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes) { ENTRY(cuMemAlloc_v2, do_mem_alloc(dptr, bytes)); }

static CUresult do_mem_free(CUdeviceptr dptr)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemFree");
    for (size_t i = 0; i < g.n_allocs; i++) {
        fc_alloc *a = &g.allocs[i];
        if (a->va != dptr)
            continue;
        munmap((void *)a->va, a->size);
        if (a->fd >= 0)
            close(a->fd);
        g.used[a->dev] -= a->charged;
        g.allocs[i] = g.allocs[--g.n_allocs];
        return CUDA_SUCCESS;
    }
    return CUDA_ERROR_INVALID_VALUE; /* 0, a VMM address, or not from cuMemAlloc */
}
CUresult cuMemFree_v2(CUdeviceptr dptr) { ENTRY(cuMemFree_v2, do_mem_free(dptr)); }

/* ---- virtual memory management ------------------------------------------------------ */

static CUresult check_prop(const CUmemAllocationProp *prop)
{
    if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(prop->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

static CUresult do_granularity(size_t *granularity, const CUmemAllocationProp *prop,
                               CUmemAllocationGranularity_flags option)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    if (!granularity || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                         option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    TRY(check_prop(prop));
    *granularity = g.cfg.gran; /* minimum and recommended are the same here */
    return CUDA_SUCCESS;
}
CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option)
{
    ENTRY(cuMemGetAllocationGranularity, do_granularity(granularity, prop, option));
}

static CUresult do_reserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                           unsigned long long flags)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemAddressReserve");
    if (!g.cfg.vmm)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (!ptr || flags || !good_range(0, size) || (alignment & (alignment - 1)))
        return CUDA_ERROR_INVALID_VALUE;
    size_t align = alignment > g.cfg.gran ? alignment : g.cfg.gran;
    fc_reservation *res = grow(g.res, &g.cap_res, g.n_res, sizeof *res);
    if (!res)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.res = res;
    void *p = reserve_va(size, align, (uintptr_t)addr); /* addr is a hint, as in the driver */
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fc_reservation nr = { (uintptr_t)p, size, 0 };
    insert_at(g.res, g.n_res, res_after((uintptr_t)p), &nr, sizeof nr);
    g.n_res++;
    *ptr = (uintptr_t)p;
    return CUDA_SUCCESS;
}
CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags)
{
    ENTRY(cuMemAddressReserve, do_reserve(ptr, size, alignment, addr, flags));
}

static CUresult do_addr_free(CUdeviceptr ptr, size_t size)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemAddressFree");
    size_t i = res_after(ptr);
    if (i >= g.n_res || g.res[i].va != ptr || g.res[i].size != size || g.res[i].mappings)
        return CUDA_ERROR_INVALID_VALUE; /* only a whole reservation with nothing mapped */
    munmap((void *)g.res[i].va, g.res[i].size);
    remove_at(g.res, g.n_res--, i, 1, sizeof *g.res);
    return CUDA_SUCCESS;
}
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) { ENTRY(cuMemAddressFree, do_addr_free(ptr, size)); }

static CUresult do_create(CUmemGenericAllocationHandle *handle, size_t size,
                          const CUmemAllocationProp *prop, unsigned long long flags)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemCreate");
    if (!g.cfg.vmm)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (!handle || flags || !good_range(0, size))
        return CUDA_ERROR_INVALID_VALUE;
    TRY(check_prop(prop));
    unsigned types = (unsigned)prop->requestedHandleTypes;
    if (types & ~(unsigned)(CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR | CU_MEM_HANDLE_TYPE_FABRIC))
        return CUDA_ERROR_NOT_SUPPORTED;
    if ((types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) && !g.cfg.posix_fd)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (types & CU_MEM_HANDLE_TYPE_FABRIC)
        TRY(g.cfg.fabric == 1 ? CUDA_SUCCESS : g.cfg.fabric == 2 ? CUDA_ERROR_NOT_PERMITTED : CUDA_ERROR_NOT_SUPPORTED);
    /* The flag needs the attribute that says the device supports it. */
    if (prop->allocFlags.gpuDirectRDMACapable && !g.cfg.rdma)
        return CUDA_ERROR_INVALID_VALUE;
    int dev = prop->location.id;
    if (size > g.cfg.capacity - g.used[dev])
        return CUDA_ERROR_OUT_OF_MEMORY;
    fc_handle **hs = grow(g.handles, &g.cap_handles, g.n_handles, sizeof *hs);
    if (!hs)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.handles = hs;
    fc_handle *h = calloc(1, sizeof *h);
    if (!h)
        return CUDA_ERROR_OUT_OF_MEMORY;
    h->fd = memfd_create("fakecuda", MFD_CLOEXEC);
    if (h->fd < 0 || ftruncate(h->fd, (off_t)size) != 0) {
        if (h->fd >= 0)
            close(h->fd);
        free(h);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    h->id = g.next_id++;
    h->size = size;
    h->dev = dev;
    h->refs = 1;
    h->types = types;
    h->rdma = prop->allocFlags.gpuDirectRDMACapable != 0;
    g.handles[g.n_handles++] = h; /* ids only grow: appending keeps the order */
    g.used[dev] += size;
    *handle = h->id;
    return CUDA_SUCCESS;
}
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags)
{
    ENTRY(cuMemCreate, do_create(handle, size, prop, flags));
}

static CUresult do_release(CUmemGenericAllocationHandle handle)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemRelease");
    fc_handle *h = find_handle(handle);
    if (!h || !h->refs)
        return CUDA_ERROR_INVALID_VALUE;
    h->refs--;
    handle_maybe_destroy(h);
    return CUDA_SUCCESS;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle handle) { ENTRY(cuMemRelease, do_release(handle)); }

/* Maps the first size bytes of the handle (offset 0; size may be less than the handle's).
 * The range stays inaccessible until cuMemSetAccess, as on a GPU. */
static CUresult do_map(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                       unsigned long long flags)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemMap");
    fc_handle *h = find_handle(handle);
    if (flags || offset || !h || !h->refs || !good_range(ptr, size) || size > h->size)
        return CUDA_ERROR_INVALID_VALUE;
    fc_reservation *res = res_holding(ptr, size);
    if (!res)
        return CUDA_ERROR_INVALID_VALUE;
    size_t i = map_after(ptr);
    if (i < g.n_maps && g.maps[i].va < ptr + size)
        return CUDA_ERROR_ALREADY_MAPPED;
    fc_mapping *m = grow(g.maps, &g.cap_maps, g.n_maps, sizeof *m);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.maps = m;
    fc_mapping nm = { ptr, size, h, calloc(size / g.cfg.gran, sizeof(uint64_t)),
                      calloc(size / g.cfg.gran, sizeof(uint64_t)) };
    if (!nm.rd || !nm.wr) {
        free(nm.rd);
        free(nm.wr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, h->fd, 0) != (void *)(uintptr_t)ptr) {
        restore_reserved(ptr, size); /* a failed MAP_FIXED may have dropped what was there */
        free(nm.rd);
        free(nm.wr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    insert_at(g.maps, g.n_maps++, i, &nm, sizeof nm);
    h->mappings++;
    res->mappings++;
    return CUDA_SUCCESS;
}
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags)
{
    ENTRY(cuMemMap, do_map(ptr, size, offset, handle, flags));
}

/* Index of the first of the whole mappings that tile [ptr, ptr+size) exactly, with their
 * count in *count; SIZE_MAX if the range starts or ends inside one or covers a gap. */
static size_t whole_mappings(uintptr_t ptr, size_t size, size_t *count)
{
    size_t first = map_after(ptr), i = first;
    uintptr_t at = ptr, end = ptr + size;
    while (at < end) {
        if (i >= g.n_maps || g.maps[i].va != at || g.maps[i].va + g.maps[i].size > end)
            return SIZE_MAX;
        at += g.maps[i++].size;
    }
    *count = i - first;
    return first;
}

static CUresult do_unmap(CUdeviceptr ptr, size_t size)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemUnmap");
    size_t n, first;
    if (!good_range(ptr, size) || (first = whole_mappings(ptr, size, &n)) == SIZE_MAX || (g.cfg.unmap_one && n > 1))
        return CUDA_ERROR_INVALID_VALUE;
    if (!restore_reserved(ptr, size))
        return CUDA_ERROR_UNKNOWN; /* the host refused to map; nothing was changed */
    for (size_t i = first; i < first + n; i++) {
        fc_mapping *m = &g.maps[i];
        res_holding(m->va, m->size)->mappings--;
        m->h->mappings--;
        handle_maybe_destroy(m->h);
        free(m->rd);
        free(m->wr);
    }
    remove_at(g.maps, g.n_maps, first, n, sizeof *g.maps);
    g.n_maps -= n;
    return CUDA_SUCCESS;
}
CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) { ENTRY(cuMemUnmap, do_unmap(ptr, size)); }

/* Access per device and granule (fakecuda_device_access reads it); the host stands in for
 * every device, so its protection is the most permissive access granted. A device that
 * cannot reach the memory's device (cuDeviceCanAccessPeer) is refused. */
static CUresult do_set_access(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    UNSAFE_CALL("cuMemSetAccess");
    if (!desc || !count || !good_range(ptr, size))
        return CUDA_ERROR_INVALID_VALUE;
    int prot = PROT_NONE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE)
            return CUDA_ERROR_INVALID_VALUE;
        if (!valid_dev(desc[i].location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        switch (desc[i].flags) {
        case CU_MEM_ACCESS_FLAGS_PROT_NONE: break;
        case CU_MEM_ACCESS_FLAGS_PROT_READ: prot |= PROT_READ; break;
        case CU_MEM_ACCESS_FLAGS_PROT_READWRITE: prot |= PROT_READ | PROT_WRITE; break;
        default: return CUDA_ERROR_INVALID_VALUE;
        }
    }
    /* Every byte must be mapped; the range may start or end inside a mapping. */
    uintptr_t at = ptr, end = ptr + size;
    size_t first = map_after(ptr), i;
    for (i = first; at < end; i++) {
        if (i >= g.n_maps || g.maps[i].va > at)
            return CUDA_ERROR_INVALID_VALUE;
        for (size_t k = 0; k < count; k++)
            if (!can_access(desc[k].location.id, g.maps[i].h->dev))
                return CUDA_ERROR_INVALID_DEVICE;
        at = g.maps[i].va + g.maps[i].size;
    }
    if (mprotect((void *)(uintptr_t)ptr, size, prot) != 0)
        return CUDA_ERROR_UNKNOWN;
    for (size_t m = first; m < i; m++) {
        fc_mapping *mp = &g.maps[m];
        uintptr_t lo = mp->va > ptr ? mp->va : ptr, hi = mp->va + mp->size < end ? mp->va + mp->size : end;
        for (uintptr_t a = lo; a < hi; a += g.cfg.gran) {
            size_t gi = (a - mp->va) / g.cfg.gran;
            for (size_t k = 0; k < count; k++) {
                uint64_t bit = UINT64_C(1) << desc[k].location.id;
                mp->rd[gi] &= ~bit;
                mp->wr[gi] &= ~bit;
                if (desc[k].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE)
                    mp->rd[gi] |= bit;
                if (desc[k].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
                    mp->wr[gi] |= bit;
            }
        }
    }
    return CUDA_SUCCESS;
}

/* The mapping holding ptr (VMM memory: one physical allocation, not the block a
 * program placed there), else the cuMemAlloc allocation holding it. */
static CUresult do_address_range(CUdeviceptr *base, size_t *size, CUdeviceptr ptr)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    size_t i = map_after(ptr);
    uintptr_t b = 0;
    size_t n = 0;
    if (i < g.n_maps && g.maps[i].va <= ptr) {
        b = g.maps[i].va;
        n = g.maps[i].size;
    } else {
        for (size_t k = 0; k < g.n_allocs && !n; k++)
            if (ptr >= g.allocs[k].va && ptr - g.allocs[k].va < g.allocs[k].size)
                b = g.allocs[k].va, n = g.allocs[k].size;
        if (!n)
            return CUDA_ERROR_NOT_FOUND;
    }
    if (base)
        *base = b;
    if (size)
        *size = n;
    return CUDA_SUCCESS;
}
CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr ptr)
{
    ENTRY(cuMemGetAddressRange_v2, do_address_range(base, size, ptr));
}

/* A file descriptor of the handle's memory (a new one, the caller's to close): only for a
 * handle created exportable as one. */
static CUresult do_export(void *shareable, CUmemGenericAllocationHandle handle, CUmemAllocationHandleType type,
                          unsigned long long flags)
{
    TRY(need_init());
    fc_handle *h = find_handle(handle);
    if (!shareable || flags || !h || !h->refs)
        return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_NOT_SUPPORTED; /* fabric handles need an IMEX daemon: not modelled */
    if (!(h->types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        return CUDA_ERROR_INVALID_VALUE; /* created with handle type NONE */
    int fd = fcntl(h->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(shareable, &fd, sizeof fd);
    return CUDA_SUCCESS;
}
CUresult cuMemExportToShareableHandle(void *shareable, CUmemGenericAllocationHandle handle,
                                      CUmemAllocationHandleType type, unsigned long long flags)
{
    ENTRY(cuMemExportToShareableHandle, do_export(shareable, handle, type, flags));
}

/* A handle over memory another process exported (its size is the file's); its memory
 * stays charged to the exporter. The descriptor stays the caller's. */
static CUresult do_import(CUmemGenericAllocationHandle *handle, void *os_handle, CUmemAllocationHandleType type)
{
    TRY(need_init());
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_NOT_SUPPORTED;
    int fd = (int)(intptr_t)os_handle;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        !aligned((unsigned long long)st.st_size, g.cfg.gran))
        return CUDA_ERROR_INVALID_VALUE;
    fc_handle **hs = grow(g.handles, &g.cap_handles, g.n_handles, sizeof *hs);
    if (!hs)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.handles = hs;
    fc_handle *h = calloc(1, sizeof *h);
    if (!h)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if ((h->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        free(h);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    h->id = g.next_id++;
    h->size = (size_t)st.st_size;
    /* The exporter's device is not in the file: taken to be the importer's current one
     * (the same GPU, seen from another process). */
    h->dev = current_ctx() ? current_ctx()->dev : 0;
    h->refs = 1;
    h->types = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    h->imported = 1;
    g.handles[g.n_handles++] = h;
    *handle = h->id;
    return CUDA_SUCCESS;
}
CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *os_handle,
                                        CUmemAllocationHandleType type)
{
    ENTRY(cuMemImportFromShareableHandle, do_import(handle, os_handle, type));
}
CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    ENTRY(cuMemSetAccess, do_set_access(ptr, size, desc, count));
}

/* ---- streams and events ------------------------------------------------------------- */

/* Streams are any value the caller names (there is no cuStreamCreate in the contract);
 * a stream belongs to the context current when work is recorded on it. */
static CUresult do_stream_sync(CUstream stream)
{
    struct CUctx_st *c;
    CUresult r = need_ctx(&c);
    if (r)
        return r;
    if (capture_of(stream))
        return capture_violation("cuStreamSynchronize", "synchronizing a capturing stream");
    UNSAFE_CALL("cuStreamSynchronize");
    complete(c, 1, own_stream(stream));
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream stream) { ENTRY(cuStreamSynchronize, do_stream_sync(stream)); }

static int stream_dead(CUstream stream)
{
    stream = own_stream(stream);
    for (size_t i = 0; i < g.n_dead; i++)
        if (g.dead[i] == stream)
            return 1;
    return 0;
}

/* The context of a stream made in a known one (fakecuda_stream_create), else the current. */
static struct CUctx_st *stream_home(CUstream stream, struct CUctx_st *current)
{
    CUstream own = own_stream(stream);
    for (size_t i = 0; i < g.n_made; i++)
        if (g.made[i].stream == own && g.made[i].ctx)
            return g.made[i].ctx;
    return current;
}

/* The context a stream was made in (fakecuda_stream_create); any other value names a
 * stream of the current context (see above). */
static CUresult do_stream_ctx(CUstream stream, CUcontext *ctx)
{
    TRY(need_init());
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (stream_dead(stream))
        return FC_ERROR_INVALID_HANDLE;
    struct CUctx_st *c = current_ctx();
    *ctx = stream_home(stream, c);
    if (!*ctx) {
        TRY(need_ctx(&c)); /* no context current: its error */
        *ctx = c;
    }
    return CUDA_SUCCESS;
}
CUresult cuStreamGetCtx(CUstream stream, CUcontext *ctx) { ENTRY(cuStreamGetCtx, do_stream_ctx(stream, ctx)); }

static CUresult do_event_create(CUevent *event, unsigned int flags)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    if (!event || (flags & ~(unsigned)FC_EVENT_FLAGS))
        return CUDA_ERROR_INVALID_VALUE;
    struct CUevent_st **es = grow(g.events, &g.cap_events, g.n_events, sizeof *es);
    if (!es)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.events = es;
    struct CUevent_st *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->ctx = e->home = c;
    g.events[g.n_events++] = e;
    *event = e;
    return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent *event, unsigned int flags) { ENTRY(cuEventCreate, do_event_create(event, flags)); }



/* As the driver: the event and the stream must be of one context (else
 * CUDA_ERROR_INVALID_HANDLE); the work captured is the stream's context's. */
static CUresult do_event_record(CUevent event, CUstream stream)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    if (event_index(event) == SIZE_MAX || stream_dead(stream)) /* a destroyed stream's handle is stale */
        return FC_ERROR_INVALID_HANDLE;
    if (event->home != stream_home(stream, c))
        return FC_ERROR_INVALID_HANDLE;
    event->ctx = c;
    event->stream = own_stream(stream);
    event->pending = !g.auto_complete;
    event->captured = capture_of(stream) != NULL; /* a node of the graph, not a real event */
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent event, CUstream stream) { ENTRY(cuEventRecord, do_event_record(event, stream)); }

/* An event never recorded is complete, as in the driver. */
static CUresult do_event_query(CUevent event)
{
    TRY(need_init());
    if (event_index(event) == SIZE_MAX)
        return FC_ERROR_INVALID_HANDLE;
    if (event->captured)
        return capture_violation("cuEventQuery", "querying an event recorded inside a capture");
    UNSAFE_CALL("cuEventQuery");
    return event->pending ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}
CUresult cuEventQuery(CUevent event) { ENTRY(cuEventQuery, do_event_query(event)); }

static CUresult do_event_destroy(CUevent event)
{
    TRY(need_init());
    size_t i = event_index(event);
    if (i == SIZE_MAX)
        return FC_ERROR_INVALID_HANDLE;
    free(g.events[i]);
    g.events[i] = g.events[--g.n_events];
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent event) { ENTRY(cuEventDestroy_v2, do_event_destroy(event)); }


static CUresult do_capture_info(CUstream stream, CUstreamCaptureStatus *status, cuuint64_t *id)
{
    TRY(need_init());
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    if (stream_dead(stream))
        return FC_ERROR_INVALID_HANDLE;
    const fc_capture *c = capture_of(stream);
    *status = !c ? CU_STREAM_CAPTURE_STATUS_NONE
            : c->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (id && c)
        *id = c->id;
    return CUDA_SUCCESS;
}
CUresult cuStreamGetCaptureInfo(CUstream stream, CUstreamCaptureStatus *status, cuuint64_t *id)
{
    ENTRY(cuStreamGetCaptureInfo, do_capture_info(stream, status, id));
}

static CUresult do_exchange_mode(CUstreamCaptureMode *mode)
{
    TRY(need_init());
    if (!mode || (unsigned)*mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = tls_mode;
    tls_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    ENTRY(cuThreadExchangeStreamCaptureMode, do_exchange_mode(mode));
}

/* ---- test controls (fakecuda.h) ------------------------------------------------------ */

unsigned long long fakecuda_calls(const char *fn)
{
    pthread_once(&g_once, load_config_once);
    int i = fn_index(fn);
    if (i < 0) {
        fprintf(stderr, "fakecuda_calls: \"%s\" is not an entry point\n", fn ? fn : "(null)");
        return 0;
    }
    unsigned long long n = 0;
    pthread_mutex_lock(&g.lock);
    for (int k = 0; k < F_COUNT; k++)
        if (i == F_ANY || i == k)
            n += g.calls[k];
    pthread_mutex_unlock(&g.lock);
    return n;
}

/* The entry points behind the device calls (src/device/cuda.c: mem_alloc is
 * cuMemAlloc_v2, ..., synchronize is cuCtxSynchronize). Tests fail those with the device
 * layer's fault injector (fl_device_set_fault), the one every test uses. */
static const char *const device_call_fns[] = {
    "cuMemAlloc_v2", "cuMemFree_v2", "cuMemAddressReserve", "cuMemAddressFree", "cuMemCreate",
    "cuMemRelease",  "cuMemMap",     "cuMemUnmap",          "cuMemSetAccess",   "cuCtxSynchronize",
};

void fakecuda_fail_call(const char *fn, unsigned long long n, CUresult err)
{
    pthread_once(&g_once, load_config_once);
    int i = fn_index(fn);
    const char *why = i < 0 ? "not an entry point"
                    : i == F_ANY ? "\"*\" only counts calls"
                    : n && err == CUDA_SUCCESS ? "an injected failure needs an error"
                    : NULL;
    for (size_t k = 0; !why && k < sizeof device_call_fns / sizeof device_call_fns[0]; k++)
        if (strcmp(fn, device_call_fns[k]) == 0)
            why = "a device call: fail it with fl_device_set_fault";
    if (why) {
        fprintf(stderr, "fakecuda_fail_call(\"%s\", %llu, %d): %s; no plan armed\n", fn ? fn : "(null)", n, err, why);
        return;
    }
    pthread_mutex_lock(&g.lock);
    g.fail_in[i] = n;
    g.fail_err[i] = err;
    pthread_mutex_unlock(&g.lock);
}

size_t fakecuda_used(int dev)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    size_t n = dev >= 0 && dev < FC_MAX_DEVICES ? g.used[dev] : 0;
    pthread_mutex_unlock(&g.lock);
    return n;
}

static CUresult device_access(int dev, CUdeviceptr va, size_t n, int write)
{
    if (!valid_dev(dev) || !n || va + n < va)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t bit = UINT64_C(1) << dev;
    uintptr_t at = va, end = va + n;
    size_t i = map_after(va);
    if (i >= g.n_maps || g.maps[i].va > va) {
        /* cuMemAlloc memory: its own device only (peer access to it is not modelled). */
        for (size_t k = 0; k < g.n_allocs; k++)
            if (va >= g.allocs[k].va && end <= g.allocs[k].va + g.allocs[k].size)
                return g.allocs[k].dev == dev ? CUDA_SUCCESS : CUDA_ERROR_ILLEGAL_ADDRESS;
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    for (; at < end; i++) {
        if (i >= g.n_maps || g.maps[i].va > at)
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        const fc_mapping *m = &g.maps[i];
        uintptr_t hi = m->va + m->size < end ? m->va + m->size : end;
        for (uintptr_t a = at - (at - m->va) % g.cfg.gran; a < hi; a += g.cfg.gran)
            if (!((write ? m->wr : m->rd)[(a - m->va) / g.cfg.gran] & bit))
                return CUDA_ERROR_ILLEGAL_ADDRESS;
        at = hi;
    }
    return CUDA_SUCCESS;
}

/* Two of the driver's synchronous byte calls, for programs that check bytes through the
 * driver as they would on a GPU (scripts/gpu_smoke.c: a stitched block's bytes are the
 * pages it lends, mapped twice). They are not in the contract fragless calls (cuda_api.h),
 * so they are counted by no plan. Memory must be mapped and the current context's device
 * granted write (set) or read (copy) access, else CUDA_ERROR_ILLEGAL_ADDRESS, as a GPU
 * faults; cuMemAlloc memory, reachable by its own device only, is served too. */
static CUresult bytes_call(CUdeviceptr va, size_t n, int write, void *host, unsigned char value)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    struct CUctx_st *c;
    CUresult r = need_ctx(&c);
    if (r == CUDA_SUCCESS)
        r = device_access(c->dev, va, n, write);
    if (r == CUDA_SUCCESS) {
        if (write)
            memset((void *)(uintptr_t)va, value, n);
        else
            memcpy(host, (const void *)(uintptr_t)va, n);
    }
    pthread_mutex_unlock(&g.lock);
    return r;
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) { return bytes_call(dst, n, 1, NULL, value); }
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) { return bytes_call(src, n, 0, dst, 0); }

CUresult fakecuda_device_access(int dev, CUdeviceptr va, size_t n, int write)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    CUresult r = device_access(dev, va, n, write);
    pthread_mutex_unlock(&g.lock);
    return r;
}

int fakecuda_handle_props(CUdeviceptr va, unsigned *types, int *rdma)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    size_t i = map_after(va);
    int ok = i < g.n_maps && g.maps[i].va <= va;
    if (ok) {
        *types = g.maps[i].h->types;
        *rdma = g.maps[i].h->rdma;
    }
    pthread_mutex_unlock(&g.lock);
    return ok ? 0 : -1;
}

int fakecuda_ctx_depth(void)
{
    return tls_depth;
}

void fakecuda_set_auto_complete(int on)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    g.auto_complete = on != 0;
    pthread_mutex_unlock(&g.lock);
}

void fakecuda_complete_all(void)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    complete(NULL, 0, NULL);
    pthread_mutex_unlock(&g.lock);
}


/* ---- CUDA graphs: what PyTorch does around fragless (fakecuda.h) ----------------------- */

static void controls_enter(void)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
}

CUresult fakecuda_begin_capture(CUstream stream, CUstreamCaptureMode mode)
{
    controls_enter();
    CUresult r = CUDA_SUCCESS;
    fc_capture *cs = grow(g.captures, &g.cap_captures, g.n_captures, sizeof *cs);
    if ((unsigned)mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (capture_of(stream))
        r = 401; /* CUDA_ERROR_ILLEGAL_STATE: capturing already */
    else if (!cs)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    else {
        g.captures = cs;
        g.captures[g.n_captures++] = (fc_capture){ own_stream(stream), ++g.next_capture, mode, &tls_me, 0, NULL, 0, 0 };
    }
    pthread_mutex_unlock(&g.lock);
    return r;
}

CUresult fakecuda_capture_use(CUstream stream, CUdeviceptr ptr, size_t size)
{
    controls_enter();
    CUresult r = CUDA_SUCCESS;
    fc_capture *c = capture_of(stream);
    size_t n = size ? (size_t)((ptr + size - 1) / g.cfg.gran - ptr / g.cfg.gran + 1) : 0;
    unsigned long long *backing = n ? calloc(n, sizeof *backing) : NULL;
    fc_use *us = c ? grow(c->uses, &c->cap_uses, c->n_uses, sizeof *us) : NULL;
    if (!c || !size)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (!backing || !us)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t k = 0; r == CUDA_SUCCESS && k < n; k++) {
        int ok = 0;
        uintptr_t at = (ptr / g.cfg.gran + k) * g.cfg.gran;
        backing[k] = backing_of(at < ptr ? ptr : at, &ok);
        if (!backing[k] || !ok)
            r = CUDA_ERROR_ILLEGAL_ADDRESS; /* a kernel captured on memory that is not there */
    }
    if (r == CUDA_SUCCESS) {
        c->uses = us;
        c->uses[c->n_uses++] = (fc_use){ ptr, size, backing, NULL };
    } else {
        if (us)
            c->uses = us;
        free(backing);
    }
    pthread_mutex_unlock(&g.lock);
    return r;
}

CUresult fakecuda_end_capture(CUstream stream, unsigned long long *graph)
{
    controls_enter();
    CUresult r = CUDA_SUCCESS;
    fc_capture *c = capture_of(stream);
    fc_graph *gs = grow(g.graphs, &g.cap_graphs, g.n_graphs, sizeof *gs);
    if (!c)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (!gs)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    else {
        g.graphs = gs;
        if (c->invalidated) {
            r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
            free_uses(c->uses, c->n_uses);
        } else {
            g.graphs[g.n_graphs++] = (fc_graph){ c->id, c->uses, c->n_uses, 0 };
            if (graph)
                *graph = c->id;
        }
        *c = g.captures[--g.n_captures];
    }
    pthread_mutex_unlock(&g.lock);
    return r;
}

static fc_graph *graph_of(unsigned long long id)
{
    for (size_t i = 0; i < g.n_graphs; i++)
        if (g.graphs[i].id == id)
            return &g.graphs[i];
    return NULL;
}

/* The byte a graph's launches write into its k-th range. */
static unsigned char graph_fill(unsigned long long id, size_t k)
{
    return (unsigned char)(0x41 + (id * 7 + k) % 190);
}

/* A replay: every granule of every range must be backed by what backed it at capture and
 * readable, and hold what the previous launch wrote there; then the launch writes it
 * again. Each fault is said on stderr and counted; the graph's memory is then left alone
 * (a real launch would crash or corrupt). */
CUresult fakecuda_graph_launch(unsigned long long graph)
{
    controls_enter();
    fc_graph *gr = graph_of(graph);
    unsigned long long faults = 0;
    for (size_t k = 0; gr && k < gr->n_uses; k++) {
        const fc_use *u = &gr->uses[k];
        size_t n = (u->va + u->size - 1) / g.cfg.gran - u->va / g.cfg.gran + 1;
        int whole = 1;
        for (size_t p = 0; p < n; p++) {
            uintptr_t at = (u->va / g.cfg.gran + p) * g.cfg.gran;
            if (at < u->va)
                at = u->va;
            int ok = 0;
            unsigned long long now = backing_of(at, &ok);
            if (now != u->backing[p] || !ok) {
                faults++, whole = 0;
                fprintf(stderr, "fakecuda: launch of graph %llu: 0x%lx (range %zu of the graph, [0x%lx, +%zu)) %s\n",
                        graph, (unsigned long)at, k, (unsigned long)u->va, u->size,
                        !now ? "is not mapped any more" : now != u->backing[p] ? "is backed by other memory than at capture"
                                                                                 : "is not accessible");
            }
        }
        if (!whole || !gr->launched || !u->after)
            continue;
        const unsigned char *b = (const unsigned char *)u->va;
        for (size_t i = 0; i < u->size; i++)
            if (b[i] != u->after[i]) {
                faults++;
                fprintf(stderr, "fakecuda: launch of graph %llu: 0x%lx (range %zu of the graph) changed since its "
                        "last launch: work outside the graph wrote it (the memory was handed out again)\n",
                        graph, (unsigned long)(u->va + i), k);
                break;
            }
    }
    CUresult r = !gr ? CUDA_ERROR_INVALID_VALUE : faults ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
    if (r == CUDA_SUCCESS) {
        /* Ranges may overlap (the graph reuses memory it freed): the last write wins. */
        for (size_t k = 0; k < gr->n_uses; k++)
            memset((void *)gr->uses[k].va, graph_fill(graph, k), gr->uses[k].size);
        for (size_t k = 0; k < gr->n_uses; k++) {
            fc_use *u = &gr->uses[k];
            if (!u->after)
                u->after = malloc(u->size);
            if (u->after)
                memcpy(u->after, (const void *)u->va, u->size);
        }
        gr->launched = 1;
    }
    g.graph_faults += faults;
    pthread_mutex_unlock(&g.lock);
    return r;
}

void fakecuda_stream_create(CUstream stream, CUcontext ctx)
{
    controls_enter();
    CUstream own = own_stream(stream);
    for (size_t i = 0; i < g.n_dead; i++)
        if (g.dead[i] == own) {
            g.dead[i] = g.dead[--g.n_dead];
            break;
        }
    size_t k = 0;
    while (k < g.n_made && g.made[k].stream != own)
        k++;
    if (k == g.n_made && g.n_made < sizeof g.made / sizeof g.made[0])
        g.n_made++;
    if (k < g.n_made) {
        g.made[k].stream = own;
        g.made[k].ctx = ctx;
    }
    pthread_mutex_unlock(&g.lock);
}

void fakecuda_stream_destroy(CUstream stream)
{
    controls_enter();
    if (!stream_dead(stream) && g.n_dead < sizeof g.dead / sizeof g.dead[0])
        g.dead[g.n_dead++] = own_stream(stream);
    pthread_mutex_unlock(&g.lock);
}

void fakecuda_graph_destroy(unsigned long long graph)
{
    controls_enter();
    fc_graph *gr = graph_of(graph);
    if (gr) {
        free_uses(gr->uses, gr->n_uses);
        *gr = g.graphs[--g.n_graphs];
    }
    pthread_mutex_unlock(&g.lock);
}

/* cuDevicePrimaryCtxReset_v2, which the runtime's cudaDeviceReset calls (fragless never
 * does: it is outside FL_CUDA_FUNCTIONS, counted by no counter). The driver "destroys all
 * allocations and resets all state on the primary context"; CUDA 13's
 * cuda_runtime_api.h says which allocations: cudaMalloc's (here cuMemAlloc's), while
 * cudaMallocAsync's and a pool's "need to be destroyed explicitly". Modelled: the
 * device's cuMemAlloc blocks go, with every event made in its primary context and every
 * stream made there (fakecuda_stream_create); virtual memory (handles, mappings,
 * reservations) stays, as the pools built on it do (modelled so: not verified on a GPU;
 * gpu-check's reset step says). The context is then inactive: a call made in it fails
 * with CUDA_ERROR_CONTEXT_IS_DESTROYED until someone retains it again
 * (cuDevicePrimaryCtxRetain, as the runtime does at its next call), whatever was
 * retained before. Each block and event destroyed is counted (fakecuda_reset_losses):
 * what a client still held, which it must not use or free again. */
static CUresult do_ctx_reset(CUdevice dev)
{
    TRY(need_init());
    if (!valid_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    struct CUctx_st *ctx = &g.ctx[dev];
    unsigned long long lost = 0;
    for (size_t i = 0; i < g.n_allocs;) {
        if (g.allocs[i].dev != dev) {
            i++;
            continue;
        }
        munmap((void *)g.allocs[i].va, g.allocs[i].size);
        if (g.allocs[i].fd >= 0)
            close(g.allocs[i].fd);
        g.used[dev] -= g.allocs[i].charged;
        g.allocs[i] = g.allocs[--g.n_allocs];
        lost++;
    }
    for (size_t i = 0; i < g.n_events;) {
        if (g.events[i]->home != ctx) {
            i++;
            continue;
        }
        free(g.events[i]);
        g.events[i] = g.events[--g.n_events];
        lost++;
    }
    for (size_t i = 0; i < g.n_made; i++)
        if (g.made[i].ctx == ctx && !stream_dead(g.made[i].stream) && g.n_dead < sizeof g.dead / sizeof g.dead[0])
            g.dead[g.n_dead++] = g.made[i].stream;
    ctx->reset = 1;
    g.reset_losses += lost;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev);
CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    return leave(do_ctx_reset(dev));
}

/* ---- legacy CUDA IPC (cuIpcGetMemHandle), outside FL_CUDA_FUNCTIONS ------------------ */

/* fragless never calls these (they are outside FL_CUDA_FUNCTIONS, counted by no counter);
 * the runtime double forwards cudaIpcGetMemHandle, cudaIpcOpenMemHandle and
 * cudaIpcCloseMemHandle here, so that a test sees what a program's IPC meets under
 * `fragless run`. The rules modelled, as seen on GPUs:
 *   - only cuMemAlloc's memory (cudaMalloc's) has a legacy IPC handle: memory the driver
 *     did not allocate that way (virtual memory, stream-ordered pools) gets
 *     CUDA_ERROR_INVALID_VALUE (cudarc issue 521);
 *   - any address inside an allocation gives the same handle, the whole allocation's
 *     (UCX issue 11724 compared the bytes; numba pull request 3310), and opening it
 *     returns the allocation's base, not the address exported (NVIDIA/Fuser pull request
 *     3799): a program that exports an address inside a larger allocation and adds no
 *     offset of its own reads the allocation's first bytes.
 * Modelled as host memory: the allocation is moved onto a memfd at its first export
 * (same address, same bytes), and the handle names the exporting process and that file;
 * the importer maps /proc/PID/fd/FD. Opening a handle in the process that made it is an
 * error (the driver refuses it; its code is not documented: CUDA_ERROR_INVALID_VALUE). */
#define FC_IPC_MAGIC 0x3143504943414b46ull /* "FAKCIPC1" */
typedef struct fc_ipc_handle {
    uint64_t magic;
    int32_t pid, fd;
    uint64_t size;
} fc_ipc_handle;
typedef struct CUipcMemHandle_st { char reserved[64]; } CUipcMemHandle;

static CUresult do_ipc_get(CUipcMemHandle *out, CUdeviceptr ptr)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    fc_alloc *a = NULL;
    for (size_t k = 0; k < g.n_allocs && !a; k++)
        if (ptr >= g.allocs[k].va && ptr - g.allocs[k].va < g.allocs[k].size)
            a = &g.allocs[k];
    if (!a)
        return CUDA_ERROR_INVALID_VALUE; /* virtual memory, or not the driver's */
    if (a->fd < 0) {
        int fd = memfd_create("fakecuda-ipc", MFD_CLOEXEC);
        if (fd < 0)
            return CUDA_ERROR_OUT_OF_MEMORY;
        void *p = MAP_FAILED;
        if (ftruncate(fd, (off_t)a->size) == 0 && write(fd, (void *)a->va, a->size) == (ssize_t)a->size)
            p = mmap((void *)a->va, a->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        a->fd = fd;
    }
    fc_ipc_handle h = {FC_IPC_MAGIC, (int32_t)getpid(), a->fd, a->size};
    memset(out, 0, sizeof *out);
    memcpy(out, &h, sizeof h);
    return CUDA_SUCCESS;
}
CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr);
CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    return leave(do_ipc_get(handle, ptr));
}

static CUresult do_ipc_open(CUdeviceptr *out, CUipcMemHandle handle)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    fc_ipc_handle h;
    memcpy(&h, &handle, sizeof h);
    if (!out || h.magic != FC_IPC_MAGIC || h.pid == (int32_t)getpid() || !h.size)
        return CUDA_ERROR_INVALID_VALUE;
    fc_ipc_open *o = grow(g.ipc_opens, &g.cap_ipc_opens, g.n_ipc_opens, sizeof *o);
    if (!o)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.ipc_opens = o;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h.pid, (int)h.fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return CUDA_ERROR_INVALID_HANDLE; /* the exporter is gone, or freed it */
    void *p = mmap(NULL, h.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g.ipc_opens[g.n_ipc_opens++] = (fc_ipc_open){(uintptr_t)p, h.size};
    *out = (uintptr_t)p;
    return CUDA_SUCCESS;
}
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *ptr, CUipcMemHandle handle, unsigned int flags);
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *ptr, CUipcMemHandle handle, unsigned int flags)
{
    (void)flags;
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    return leave(do_ipc_open(ptr, handle));
}

static CUresult do_ipc_close(CUdeviceptr ptr)
{
    struct CUctx_st *c;
    TRY(need_ctx(&c));
    for (size_t k = 0; k < g.n_ipc_opens; k++)
        if (g.ipc_opens[k].va == ptr) {
            munmap((void *)ptr, g.ipc_opens[k].size);
            g.ipc_opens[k] = g.ipc_opens[--g.n_ipc_opens];
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuIpcCloseMemHandle(CUdeviceptr ptr);
CUresult cuIpcCloseMemHandle(CUdeviceptr ptr)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    return leave(do_ipc_close(ptr));
}

unsigned long long fakecuda_reset_losses(void)
{
    controls_enter();
    unsigned long long n = g.reset_losses;
    pthread_mutex_unlock(&g.lock);
    return n;
}

void fakecuda_hold_call(const char *fn)
{
    int i = fn_index(fn);
    if (i < 0 || i == F_ANY) {
        fprintf(stderr, "fakecuda_hold_call: %s is no entry point\n", fn ? fn : "(null)");
        return;
    }
    atomic_store(&hold.fn, i);
}

int fakecuda_held(void)
{
    pthread_mutex_lock(&hold.lock);
    int w = hold.waiting;
    pthread_mutex_unlock(&hold.lock);
    return w;
}

void fakecuda_release_held(void)
{
    pthread_mutex_lock(&hold.lock);
    atomic_store(&hold.fn, -1);
    hold.waiting = 0;
    pthread_cond_broadcast(&hold.cond);
    pthread_mutex_unlock(&hold.lock);
}

unsigned long long fakecuda_capture_violations(void)
{
    controls_enter();
    unsigned long long n = g.violations;
    pthread_mutex_unlock(&g.lock);
    return n;
}

unsigned long long fakecuda_graph_faults(void)
{
    controls_enter();
    unsigned long long n = g.graph_faults;
    pthread_mutex_unlock(&g.lock);
    return n;
}

void fakecuda_reset(void)
{
    pthread_once(&g_once, load_config_once);
    pthread_mutex_lock(&g.lock);
    /* Unmapping a reservation unmaps the mappings inside it. */
    for (size_t i = 0; i < g.n_res; i++)
        munmap((void *)g.res[i].va, g.res[i].size);
    for (size_t i = 0; i < g.n_handles; i++) {
        close(g.handles[i]->fd);
        free(g.handles[i]);
    }
    for (size_t i = 0; i < g.n_allocs; i++)
        munmap((void *)g.allocs[i].va, g.allocs[i].size);
    for (size_t i = 0; i < g.n_events; i++)
        free(g.events[i]);
    for (size_t i = 0; i < g.n_maps; i++) {
        free(g.maps[i].rd);
        free(g.maps[i].wr);
    }
    for (size_t i = 0; i < g.n_captures; i++)
        free_uses(g.captures[i].uses, g.captures[i].n_uses);
    for (size_t i = 0; i < g.n_graphs; i++)
        free_uses(g.graphs[i].uses, g.graphs[i].n_uses);
    free(g.captures);
    free(g.graphs);
    g.captures = NULL, g.n_captures = g.cap_captures = 0;
    g.graphs = NULL, g.n_graphs = g.cap_graphs = 0;
    g.violations = g.graph_faults = 0;
    g.reset_losses = 0;
    for (int d = 0; d < FC_MAX_DEVICES; d++)
        g.ctx[d].reset = 0;
    g.n_dead = 0;
    g.n_made = 0;
    free(g.res);
    free(g.handles);
    free(g.maps);
    free(g.allocs);
    free(g.events);
    g.res = NULL, g.n_res = g.cap_res = 0;
    g.handles = NULL, g.n_handles = g.cap_handles = 0;
    g.maps = NULL, g.n_maps = g.cap_maps = 0;
    g.allocs = NULL, g.n_allocs = g.cap_allocs = 0;
    g.events = NULL, g.n_events = g.cap_events = 0;
    memset(g.used, 0, sizeof g.used);
    memset(g.calls, 0, sizeof g.calls);
    memset(g.fail_in, 0, sizeof g.fail_in);
    g.auto_complete = 1;
    load_config();
    if (!g.cfg.ok)
        g.initialized = 0; /* cuInit will say why not */
    pthread_mutex_unlock(&g.lock);
}
