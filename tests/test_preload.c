/* libfragless_preload.so and `fragless run`: the interposed CUDA runtime calls in this
 * process (the library loaded with dlopen, no runtime behind it), then a small CUDA
 * program (tests/preload/app.c, linked against a runtime without a device) started with
 * `fragless run` on the driver double: it runs only because fragless serves it, and the
 * trace it records lists its allocations and frees. */
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/device.h"
#include "test_support.h"

typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
typedef cudaError_t (*malloc_fn)(void **, size_t);
typedef cudaError_t (*free_fn)(void *);
typedef cudaError_t (*malloc_async_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*free_async_fn)(void *, cudaStream_t);
typedef cudaError_t (*info_fn)(size_t *, size_t *);

#define MiB ((size_t)1 << 20)

static char tmp[64]; /* this test's scratch directory */

/* ---------------------------------------------------------------------------------
 * In this process: the entry points' contract, with no CUDA runtime to fall back on.
 * --------------------------------------------------------------------------------- */

/* Runs free(ptr) with stderr going to a file, and returns what it said. */
static cudaError_t free_capturing(free_fn fn, void *ptr, char *err, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "%s/stderr.txt", tmp);
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    close(fd);
    cudaError_t e = fn(ptr);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fl_test_slurp(path, err, n);
    unlink(path);
    return e;
}

/* The runtime functions the library interposes: its only exports (every other symbol
 * would bind to, or shadow, the program's own). Allocation and free (and their _ptsz
 * forms for programs built with per-thread default streams), free memory, a stream's end,
 * a device's reset, and the graph calls that tell when a graph's memory may go back
 * (src/preload/graphs.c). */
static const char *const interposed[] = {
    "cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cudaMemGetInfo",
    "cudaMallocAsync_ptsz", "cudaFreeAsync_ptsz", "cudaStreamDestroy", "cudaDeviceReset",
    "cudaStreamEndCapture", "cudaStreamEndCapture_ptsz", "cudaGraphInstantiate",
    "cudaGraphInstantiateWithFlags", "cudaGraphInstantiateWithParams", "cudaGraphInstantiateWithParams_ptsz",
    "cudaGraphClone", "cudaGraphExecUpdate", "cudaGraphExecDestroy", "cudaGraphDestroy",
    "cudaGraphAddChildGraphNode", "cudaGraphExecChildGraphNodeSetParams", "cudaGraphNodeSetParams",
    "cudaGraphExecNodeSetParams", "cudaGraphAddNode", "cudaGraphAddNode_v2",
    "cudaDeviceGetDefaultMemPool", "cudaMemPoolGetAttribute", "cudaMemPoolSetAttribute", "cudaMemPoolTrimTo",
    "cudaIpcGetMemHandle", "cudaIpcOpenMemHandle", "cudaIpcCloseMemHandle", "cudaMallocPitch", "cudaMalloc3D",
};
#define N_INTERPOSED (sizeof interposed / sizeof interposed[0])

static void test_exports(void)
{
    char cmd[PATH_MAX + 64], line[512];
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s' 2>/dev/null", PRELOAD_SO);
    FILE *p = popen(cmd, "r");
    size_t found = 0, other = 0;
    while (p && fgets(line, sizeof line, p)) {
        char type, name[256];
        if (sscanf(line, "%*s %c %255s", &type, name) != 2)
            continue;
        int known = 0;
        for (size_t i = 0; i < N_INTERPOSED && !known; i++)
            known = !strcmp(name, interposed[i]);
        if (known)
            found++;
        else if (type != 'A') { /* version nodes, if any, are no symbols */
            fprintf(stderr, "test_preload: %s also exports %s\n", PRELOAD_SO, name);
            other++;
        }
    }
    int st = p ? pclose(p) : -1;
    if (st != 0 || found == 0) {
        printf("test_preload: no nm here; exported symbols checked with dlsym only\n");
        return;
    }
    CHECK_EQ_U64(found, N_INTERPOSED);
    CHECK_EQ_U64(other, 0);
}

static void test_in_process(void)
{
    setenv("FRAGLESS_CUDA_LIB", FAKECUDA_PATH, 1);
    setenv("FAKECUDA_CAPACITY", "64M", 1);
    setenv("FRAGLESS_CONF", "policy:fragless,limit:32MiB", 1);
    unsetenv("FRAGLESS_VERBOSE");
    void *so = dlopen(PRELOAD_SO, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "cannot load %s: %s\n", PRELOAD_SO, dlerror());
        CHECK(so != NULL);
        return;
    }
    malloc_fn cmalloc = (malloc_fn)(uintptr_t)dlsym(so, "cudaMalloc");
    free_fn cfree = (free_fn)(uintptr_t)dlsym(so, "cudaFree");
    malloc_async_fn cmalloc_async = (malloc_async_fn)(uintptr_t)dlsym(so, "cudaMallocAsync");
    free_async_fn cfree_async = (free_async_fn)(uintptr_t)dlsym(so, "cudaFreeAsync");
    info_fn cinfo = (info_fn)(uintptr_t)dlsym(so, "cudaMemGetInfo");
    CHECK(cmalloc && cfree && cmalloc_async && cfree_async && cinfo);
    CHECK(!dlsym(so, "fl_alloc") && !dlsym(so, "fragless_torch_malloc") &&
          !dlsym(so, "fli_frontend_allocator"));
    if (!cmalloc || !cfree || !cmalloc_async || !cfree_async || !cinfo)
        return;

    size_t fr = 0, total = 0;
    void *p = (void *)1, *q = NULL, *r = (void *)1;
    /* Misuse, as the runtime answers it: no out-pointer is cudaErrorInvalidValue; size
     * 0 is success with NULL; freeing NULL is success. */
    CHECK(cmalloc(NULL, 8) == 1);
    CHECK(cmalloc(&p, 0) == 0 && p == NULL);
    CHECK(cfree(NULL) == 0 && cfree_async(NULL, (cudaStream_t)0x5) == 0);
    CHECK(cinfo(NULL, &total) == 1 && cinfo(&fr, NULL) == 1);

    /* limit:32MiB is the total; free is what the program may still allocate: device
     * free plus fragless' cache, at most the limit minus live blocks. */
    CHECK(cinfo(&fr, &total) == 0);
    CHECK_EQ_U64(total, 32 * MiB);
    CHECK_EQ_U64(fr, 32 * MiB);
    CHECK(cmalloc(&p, MiB) == 0 && p != NULL && (uintptr_t)p % 512 == 0);
    if (p)
        memset(p, 0xab, MiB); /* the double's device memory is host memory */
    CHECK(cinfo(&fr, &total) == 0);
    CHECK_EQ_U64(fr, 31 * MiB);
    CHECK(cmalloc_async(&q, 3000, (cudaStream_t)0x5) == 0 && q != NULL && q != p);
    CHECK(cfree_async(q, (cudaStream_t)0x5) == 0);

    /* Over the limit: cudaErrorMemoryAllocation and a NULL pointer. */
    CHECK(cmalloc(&r, 40 * MiB) == 2 && r == NULL);

    /* Not ours, and no runtime behind the library in this process. */
    char err[1024];
    int local = 0;
    CHECK(free_capturing(cfree, &local, err, sizeof err) == 1);
    CHECK(strstr(err, "not memory fragless allocated") != NULL);
    /* Stream order, with work on streams that stays pending (the driver double's events
     * complete only when told): a block freed on its own stream is reusable there at
     * once; freed on another stream, only once that stream's work is done (before, the
     * stream was ignored and the block came back at once). */
    void *fc = dlopen(FAKECUDA_PATH, RTLD_NOW | RTLD_LOCAL);
    void (*auto_complete)(int) = NULL, (*complete_all)(void) = NULL;
    CHECK(fc && fl_test_sym(fc, "fakecuda_set_auto_complete", &auto_complete) &&
          fl_test_sym(fc, "fakecuda_complete_all", &complete_all));
    if (auto_complete && complete_all) {
        cudaStream_t s1 = (cudaStream_t)0x11, s2 = (cudaStream_t)0x22;
        void *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        auto_complete(0);
        CHECK(cmalloc_async(&a, MiB, s1) == 0 && a);
        CHECK(cfree_async(a, s1) == 0);
        CHECK(cmalloc_async(&b, MiB, s1) == 0 && b == a);
        CHECK(cfree_async(b, s2) == 0);
        CHECK(cmalloc_async(&c, MiB, s1) == 0 && c && c != b);
        complete_all(); /* s2's work is done */
        CHECK(cmalloc_async(&d, MiB, s1) == 0 && d == b);
        CHECK(cfree_async(c, s1) == 0 && cfree_async(d, s1) == 0);

        auto_complete(1);
    }
    CHECK(cfree(p) == 0);
    CHECK(free_capturing(cfree, p, err, sizeof err) == 1); /* a double free */
    CHECK(cinfo(&fr, &total) == 0);
    CHECK_EQ_U64(fr, 32 * MiB);
    /* Not closed: the allocator of the frontend lives as long as the process, as it
     * does in a program the library is preloaded into. */
}

/* ---------------------------------------------------------------------------------
 * Through `fragless run`, in child processes.
 * --------------------------------------------------------------------------------- */

/* Runs a shell command line in the scratch directory, on the driver double with 256 MiB
 * and none of this process' own fragless settings. */
static fl_run_result *run(const char *fmt, ...)
{
    char line[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && env -u FRAGLESS_CONF -u FRAGLESS_VERBOSE -u FRAGLESS_PRELOAD -u CUDART_STUB_DEVICE "
             "-u CUDART_STUB_REPORT "
             "FRAGLESS_CUDA_LIB='%s' FAKECUDA_CAPACITY=256M %s",
             tmp, FAKECUDA_PATH, line);
    return fl_test_shell(cmd);
}

static void show(const char *what, const fl_run_result *r)
{
    fprintf(stderr, "--- %s: exit %d\nstdout:\n%sstderr:\n%s---\n", what, r->code, r->out, r->err);
}

/* The block sizes app.c allocates, in order; the last two on cudaStreamPerThread (0x2). */
static const unsigned long long app_sizes[] = {100, 512, 4096, 70000, 257 * 1024, 1 << 20,
                                               (3 << 20) + 5, (20 << 20) + 7, 1000, 5 << 20};
#define APP_BLOCKS (sizeof app_sizes / sizeof app_sizes[0])

/* The files in the scratch directory whose names start with prefix (at most max, in
 * paths[i] of 256 bytes); how many there are. */
static int find_files(const char *prefix, char paths[][256], int max)
{
    DIR *d = opendir(tmp);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)))
            continue;
        if (n < max)
            snprintf(paths[n], 256, "%.63s/%.190s", tmp, e->d_name);
        n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* The recorded trace: the header, then one allocate row per block in the program's
 * order with its size and stream, and one free row for each, of an allocated pointer. */
static void check_trace(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f) {
        fprintf(stderr, "test_preload: no trace at %s\n", path);
        return;
    }
    char line[512];
    CHECK(fgets(line, sizeof line, f) && !strncmp(line, "Thread,Time,Action,Pointer,Size,Stream", 38));
    unsigned long long ptrs[APP_BLOCKS] = {0};
    size_t allocs = 0, frees = 0, rows = 0, bad = 0;
    unsigned long long per_thread = 0;
    while (fgets(line, sizeof line, f)) {
        char action[32];
        unsigned long long ptr, size, stream;
        rows++;
        if (sscanf(line, "%*[^,],%*[^,],%31[^,],%llx,%llu,%llx", action, &ptr, &size, &stream) != 4) {
            fprintf(stderr, "test_preload: trace row '%s' does not parse\n", line);
            bad++;
        } else if (!strcmp(action, "allocate")) {
            /* The last two on cudaStreamPerThread: the main thread's key (device.h), the
             * same for both. */
            unsigned long long want_stream = allocs >= APP_BLOCKS - 2 ? (per_thread ? per_thread : stream) : 0;
            if (allocs >= APP_BLOCKS - 2 && !fli_is_per_thread_stream(stream))
                want_stream = ~stream;
            per_thread = want_stream;
            if (allocs < APP_BLOCKS && (size != app_sizes[allocs] || stream != want_stream)) {
                fprintf(stderr, "test_preload: allocation %zu: %llu bytes on stream %llx\n", allocs, size,
                        stream);
                bad++;
            }
            if (allocs < APP_BLOCKS)
                ptrs[allocs] = ptr;
            allocs++;
        } else if (!strcmp(action, "free")) {
            int known = 0;
            for (size_t i = 0; i < APP_BLOCKS; i++)
                known |= ptrs[i] == ptr && ptr != 0;
            if (!known) {
                fprintf(stderr, "test_preload: free of 0x%llx, never allocated\n", ptr);
                bad++;
            }
            frees++;
        } else {
            fprintf(stderr, "test_preload: unexpected trace row '%s'\n", line);
            bad++;
        }
    }
    fclose(f);
    CHECK_EQ_U64(allocs, APP_BLOCKS);
    CHECK_EQ_U64(frees, APP_BLOCKS);
    CHECK_EQ_U64(rows, 2 * APP_BLOCKS);
    CHECK_EQ_U64(bad, 0);
}

/* `fragless run -- preload_app MODE` with env before it: exits 0 and says want. */
static void app_mode(const char *env, const char *mode, const char *want)
{
    fl_run_result *r = run("%s '%s' run -- '%s' %s", env, FL_CLI, PRELOAD_APP, mode);
    CHECK(r->code == 0 && strstr(r->out, want));
    if (r->code != 0 || !strstr(r->out, want)) {
        char what[128];
        snprintf(what, sizeof what, "fragless run -- app %s", mode);
        show(what, r);
    }
}

/* CUDA IPC under fragless run: a ctest of its own (test_preload_ipc, `test_preload --ipc`),
 * which the ThreadSanitizer suite runs too (the exporter's server thread; the rest of this
 * test does not run under TSan, whose runtime a preloaded library cannot bring). */
static void test_ipc(void)
{
    /* CUDA IPC (the driver double's legacy handles share a cuMemAlloc allocation whole and
     * open at its start, as GPUs do): a child process opens each of three cudaMalloc
     * blocks (2 MiB, 2 MiB, 40 MiB) and reads it, then the first block's handle once more
     * after the block is freed. Every block is read intact or refused with a reason,
     * never read wrong. Before: under policy:cca the second block (inside the first one's
     * segment) was exported and its importer read the first block's bytes with no error;
     * on virtual memory (fragless, cca-expandable) every export failed with no reason.
     * Now blocks of virtual memory are shared through fragless's own handles (the
     * physical allocations under the block passed as descriptors: the 40 MiB block is 8
     * of them on this 256 MiB device, 21 pages of their own under limit:60MiB, 3 under
     * cca-expandable), a freed block's handle no
     * longer opens, and the exporting process cannot open its own handles (as in CUDA).
     * A handle of fragless's own changed to name another block does not open (its keyed
     * hash no longer matches). An address inside the 40 MiB block that is no block's start shares, as a legacy
     * handle does, the physical allocation holding it, opened at that allocation's start
     * (what cuMemGetAddressRange gives the program): read intact from there. */
    static const struct {
        const char *conf, *want, *why;
    } ipc[] = {
        {"policy:fragless", "intact, intact, intact; inner address intact; forged handle does not open; freed first block's handle does not open; own handles opened here: 0", NULL},
        {"limit:60MiB", "intact, intact, intact; inner address intact; forged handle does not open; freed first block's handle does not open; own handles opened here: 0", NULL},
        {"policy:cca-expandable", "intact, intact, intact; inner address intact; forged handle does not open; freed first block's handle does not open; own handles opened here: 0", NULL},
        {"policy:cca", "intact, refused 801, intact; inner address intact; forged handle -; freed first block's handle opens; own handles opened here: 0",
         "the block lies 2097152 bytes into a larger cuMemAlloc allocation"},
        {"policy:nocache", "intact, intact, intact; inner address intact; forged handle -; freed first block's handle does not open; own handles opened here: 0", NULL},
    };
    for (size_t i = 0; i < sizeof ipc / sizeof ipc[0]; i++) {
        fl_run_result *r = run("FRAGLESS_CONF=%s '%s' run -- '%s' --ipc", ipc[i].conf, FL_CLI, PRELOAD_APP);
        int ok = r->code == 0 && strstr(r->out, ipc[i].want) &&
                 (ipc[i].why ? strstr(r->err, ipc[i].why) && strstr(r->err, "fragless: cudaIpcGetMemHandle(")
                             : !strstr(r->err, "cudaIpcGetMemHandle("));
        CHECK(ok);
        if (!ok)
            show(ipc[i].conf, r);
    }
}

static void test_run(void)
{
    /* Without fragless the program meets the runtime's "no device". */
    fl_run_result *r = run("'%s'", PRELOAD_APP);
    CHECK(r->code == 1 && strstr(r->out, "failed: error 100 (cudaErrorNoDevice)"));
    if (r->code != 1)
        show("app without fragless", r);

    /* With it, every call succeeds, the data reads back, cudaMemGetInfo follows. */
    r = run("'%s' run --trace t.csv -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->out, "10 allocations") && strstr(r->out, "data intact"));
    unsigned long long total = 0, f0 = 0, f1 = 0, f2 = 0;
    const char *mem = strstr(r->out, "memory total");
    CHECK(mem && sscanf(mem, "memory total %llu, free before %llu, with blocks %llu, after frees %llu",
                        &total, &f0, &f1, &f2) == 4);
    CHECK(total == 256 * MiB && f0 == total && f2 == total && f1 < f0);
    if (r->code != 0)
        show("fragless run --trace t.csv -- app", r);
    /* Each process writes t.PID.csv. */
    char traces[4][256];
    CHECK(find_files("t.", traces, 4) == 1);
    check_trace(traces[0]);
    /* The trace is one our own tools read. */
    r = run("'%s' replay '%s' --format csv", FL_CLI, traces[0]);
    CHECK(r->code == 0);
    if (r->code != 0)
        show("fragless replay t.PID.csv", r);
    unlink(traces[0]);

    /* Two processes under one `fragless run --trace`: two files, each whole (before,
     * both wrote two.csv at once). %r names the rank. */
    r = run("'%s' run --trace two.csv -- sh -c \"'%s' >/dev/null & '%s' >/dev/null; wait\"", FL_CLI, PRELOAD_APP,
            PRELOAD_APP);
    CHECK(r->code == 0);
    CHECK(find_files("two.", traces, 4) == 2);
    for (int i = 0; i < 2; i++) {
        check_trace(traces[i]);
        unlink(traces[i]);
    }
    r = run("RANK=3 '%s' run --trace 'rank%%r.csv' -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && find_files("rank3.", traces, 4) == 1);
    unlink(traces[0]);

    /* --conf reaches the program: under an 8 MiB limit its 20 MiB block fails, with
     * the allocator's reason on stderr; another policy serves it too. */
    r = run("'%s' run --conf limit:8MiB -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 1 && strstr(r->out, "cudaMalloc(20971527 bytes) failed: error 2"));
    CHECK(strstr(r->err, "fragless: cudaMalloc of 20971527 bytes on device 0 failed: ") != NULL);
    r = run("'%s' run --conf policy:cca -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->out, "data intact"));
    /* ...and is checked before the program starts. */
    r = run("'%s' run --conf policy:nosuch -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 1 && strstr(r->err, "nosuch") && !strstr(r->out, "preload_app"));

    /* Memory fragless did not hand out goes to the runtime (here: "no device"). */
    r = run("'%s' run -- '%s' --free-foreign", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->out, "cudaFree(foreign) = 100") &&
          strstr(r->out, "cudaFreeAsync(foreign) = 100"));
    /* cudaFree waits for the device as the runtime's does (8 of the 10 frees; the
     * Async ones are ordered by their stream). */
    r = run("CUDART_STUB_REPORT=1 '%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->err, "cudaDeviceSynchronize called 8 times"));
    /* cudaFree(NULL), the idiom that creates the primary context, is the runtime's (it
     * was swallowed). */
    CHECK(strstr(r->err, "cudaFree(NULL) called 1 times") != NULL);
    /* A block of device 1 freed while device 0 is current: device 1 is the one waited for
     * (the current device was, before). */
    r = run("CUDART_STUB_REPORT=1 FAKECUDA_DEVICES=2 '%s' run -- '%s' --devices", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->out, "device 1's block freed from device 0"));
    CHECK(strstr(r->err, "cudaDeviceSynchronize called 1 times (device 1: 1)") != NULL);
    if (r->code != 0 || !strstr(r->err, "(device 1: 1)"))
        show("fragless run -- app --devices", r);

    /* Two threads on their per-thread default streams, through cudaStreamPerThread and
     * through the _ptsz calls with stream NULL (a program built with --default-stream
     * per-thread): one thread's freed block, its work pending, is not handed to the
     * other thread (it was: the allocator saw one stream; and the _ptsz calls went to
     * the runtime, which has no device here). */
    app_mode("", "--per-thread", "per-thread streams kept apart (0 check(s) failed)");
    app_mode("", "--ptsz", "per-thread streams kept apart (0 check(s) failed)");

    /* cudaMallocAsync on a stream of device 1 while device 0 is current: device 1's
     * memory, as the runtime gives (it was device 0's). */
    app_mode("FAKECUDA_DEVICES=2", "--stream-device", "streams' devices (0 check(s) failed)");

    /* A stream per request, destroyed after it: the memory held stays flat, and a
     * destroyed stream's block waits for its work before another stream gets it. */
    app_mode("", "--streams", "destroyed streams (0 check(s) failed)");

    /* CUDA graphs captured, launched and destroyed again and again: each graph's memory
     * goes back once the graph and its execs are gone (it was kept for good), never while
     * an exec or an embedding graph may still launch it. */
    app_mode("", "--graphs", "graphs (0 check(s) failed)");
    app_mode("", "--graph-nodes", "graph nodes (0 check(s) failed)");

    /* The default pool's statistics and trim (PyTorch's cudaMallocAsync backend reads
     * torch.cuda.memory_allocated and memory_reserved there, and empty_cache trims it):
     * fragless's figures, and its cache given back (the pool said 0 throughout). */
    app_mode("", "--pool", "default pool (0 check(s) failed)");

    /* cudaMallocPitch and cudaMalloc3D are served (before, the runtime's: beside fragless's
     * limit and out of its view); without fragless the runtime double has no device. */
    app_mode("", "--pitch", "pitched (0 check(s) failed)");
    r = run("'%s' --pitch", PRELOAD_APP);
    CHECK(r->code == 1 && !strstr(r->out, "pitched (0 check(s) failed)"));

    /* cudaDeviceReset, then the program goes on: the reset takes cudaMalloc's blocks and
     * leaves cudaMallocAsync's, finds no event of fragless's to destroy, and fragless's
     * next driver call works in the context made again. */
    app_mode("", "--reset", "device reset (0 check(s) failed)");

    /* A fork while another thread opens the device in cudaMemGetInfo: the child's own
     * cudaMemGetInfo works (it waited forever for a lock held at the fork). */
    app_mode("", "--fork", "fork while busy (0 check(s) failed)");

    /* A program whose runtime is linked statically allocates through the driver: nothing
     * is served, and the user is told why at exit (before, nothing was said). Processes
     * that never touched the driver, or were served, say nothing. */
    r = run("'%s' run -- '%s'", FL_CLI, STATIC_APP);
    CHECK(r->code == 0 && strstr(r->out, "allocated through the driver"));
    CHECK(strstr(r->err, "used the CUDA driver but made no cudaMalloc/cudaMallocAsync call") &&
          strstr(r->err, "-cudart shared"));
    if (!strstr(r->err, "-cudart shared"))
        show("fragless run -- static_app", r);
    r = run("'%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && !strstr(r->err, "made no cudaMalloc"));
    r = run("'%s' run -- sh -c 'exit 0'", FL_CLI);
    CHECK(r->code == 0 && !strstr(r->err, "fragless"));

    /* The runtime's current device is the one allocated on. */
    r = run("CUDART_STUB_DEVICE=1 '%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 1 && strstr(r->err, "device 1"));
    r = run("CUDART_STUB_DEVICE=1 FAKECUDA_DEVICES=2 '%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->out, "data intact"));

    /* The environment the command gets: our library first, the old LD_PRELOAD kept,
     * --conf with trace:PATH appended as an absolute path. */
    char so[PATH_MAX], want[2 * PATH_MAX + 300];
    CHECK(realpath(PRELOAD_SO, so) != NULL);
    r = run("LD_PRELOAD='%s' '%s' run --conf policy:cca --trace sub/x.csv -- sh -c "
            "'printf \"%%s\\n%%s\\n%%s\\n\" \"$LD_PRELOAD\" \"$FRAGLESS_CONF\" \"$PYTORCH_CUDA_ALLOC_CONF\"'",
            CUDART_STUB, FL_CLI);
    snprintf(want, sizeof want, "%s:%s\npolicy:cca,trace:%s/sub/x.%%p.csv\nbackend:cudaMallocAsync\n", so, CUDART_STUB,
             tmp);
    CHECK(r->code == 0 && !strcmp(r->out, want));
    if (r->code != 0 || strcmp(r->out, want))
        fprintf(stderr, "want:\n%sgot:\n%s", want, r->out);
    /* PyTorch's allocator config: merged into what the user set, in either variable; a
     * backend the user chose is kept, with a note. */
    r = run("PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True,' PYTORCH_ALLOC_CONF='backend:native' '%s' run -- "
            "sh -c 'printf \"%%s|%%s\" \"$PYTORCH_CUDA_ALLOC_CONF\" \"$PYTORCH_ALLOC_CONF\"'", FL_CLI);
    CHECK(r->code == 0 && !strcmp(r->out, "expandable_segments:True,backend:cudaMallocAsync|backend:native"));
    CHECK(strstr(r->err, "PYTORCH_ALLOC_CONF sets backend:native, kept") != NULL);
    r = run("PYTORCH_ALLOC_CONF='max_split_size_mb:128' '%s' run -- sh -c 'printf \"%%s|%%s\" "
            "\"${PYTORCH_CUDA_ALLOC_CONF-unset}\" \"$PYTORCH_ALLOC_CONF\"'", FL_CLI);
    CHECK(r->code == 0 && !strcmp(r->out, "unset|max_split_size_mb:128,backend:cudaMallocAsync"));
    r = run("FRAGLESS_VERBOSE=1 '%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 0 && strstr(r->err, "fragless: serving cudaMalloc"));

    /* Errors. */
    r = run("'%s' run", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "no command given"));
    r = run("'%s' run --conf", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "needs a value"));
    r = run("'%s' run --bogus -- true", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "unknown option '--bogus'"));
    r = run("'%s' run --trace a,b.csv -- true", FL_CLI);
    CHECK(r->code == 1 && strstr(r->err, "','"));
    r = run("FRAGLESS_PRELOAD=/nonexistent/libfragless_preload.so '%s' run -- '%s'", FL_CLI, PRELOAD_APP);
    CHECK(r->code == 1 && strstr(r->err, "/nonexistent/libfragless_preload.so") &&
          !strstr(r->out, "preload_app"));
    r = run("'%s' run -- ./no-such-command arg", FL_CLI);
    CHECK(r->code == 127 && strstr(r->err, "'./no-such-command'"));
    r = run("'%s' run --help", FL_CLI);
    CHECK(r->code == 0 && strstr(r->out, "usage: fragless run") && strstr(r->out, "--trace"));
    /* The command's own exit status comes back. */
    r = run("'%s' run -- sh -c 'exit 7'", FL_CLI);
    CHECK(r->code == 7);
}

int main(int argc, char **argv)
{
    snprintf(tmp, sizeof tmp, "/tmp/fl_preload.XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "--ipc")) {
        test_ipc();
        rmdir(tmp);
        return fl_test_done("test_preload --ipc");
    }
    test_exports();
    test_run(); /* before test_in_process, which sets this process' environment */
    test_in_process();
    rmdir(tmp);
    return fl_test_done("test_preload");
}
