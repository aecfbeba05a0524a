/* PyTorch's view of fragless: libfragless.so loaded with dlopen, its pluggable-allocator
 * entry points called as torch.cuda.memory.CUDAPluggableAllocator calls them, on the
 * CUDA driver test double (FRAGLESS_CUDA_LIB). C cannot take the exception
 * fragless_torch_malloc throws on failure (test_torch_oom checks it), so this calls
 * fragless_torch_malloc_nothrow, the same allocation returning NULL. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_api.h"
#include "fragless_torch.h"
#include "test_support.h"

typedef void *(*malloc_fn)(ssize_t, int, void *);
typedef void (*free_fn)(void *, ssize_t, int, void *);
typedef int (*empty_fn)(void);
typedef int (*fraction_fn)(double, int);

/* The contexts PyTorch's threads see, on a double of two devices, in a child process of
 * its own (a fresh frontend): CUDA's rule is that the calling thread's current context
 * decides where the program's kernels go, so no entry point may change it.
 *  - each device's allocator made by a thread with no context (autograd workers), which
 *    still has none after it; then empty_cache over both devices from a thread whose
 *    current context is device 0's: device 0's is still current (it was device 1's: the
 *    last device visited);
 *  - set_per_process_memory_fraction(f, device=1) while device 0 is current makes device
 *    1's allocator, and device 1's memory comes from device 1 (device 1's allocator used
 *    to adopt device 0's context, and its cudaMalloc charged device 0). */
typedef struct first_use {
    malloc_fn tmalloc;
    CUresult (*get_current)(CUcontext *);
    int device;
    void *block;
    int left_current; /* the thread had a context after the call */
} first_use;

static void *first_use_thread(void *arg)
{
    first_use *u = arg;
    CUcontext cur = NULL;
    u->block = u->tmalloc(5 << 20, u->device, NULL);
    u->left_current = u->get_current(&cur) != CUDA_SUCCESS || cur != NULL;
    return NULL;
}

static int context_probe(void)
{
    void *fc = fl_test_fakecuda();
    CUresult (*init)(unsigned), (*retain)(CUcontext *, int), (*set_current)(CUcontext), (*get_current)(CUcontext *);
    size_t (*used)(int);
    if (!fc || !fl_test_sym(fc, "cuInit", &init) || !fl_test_sym(fc, "cuDevicePrimaryCtxRetain", &retain) ||
        !fl_test_sym(fc, "cuCtxSetCurrent", &set_current) || !fl_test_sym(fc, "cuCtxGetCurrent", &get_current) ||
        !fl_test_sym(fc, "fakecuda_used", &used))
        return 1;
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    malloc_fn tmalloc = so ? (malloc_fn)(uintptr_t)dlsym(so, "fragless_torch_malloc") : NULL;
    free_fn tfree = so ? (free_fn)(uintptr_t)dlsym(so, "fragless_torch_free") : NULL;
    empty_fn tempty = so ? (empty_fn)(uintptr_t)dlsym(so, "fragless_torch_empty_cache") : NULL;
    fraction_fn tfraction = so ? (fraction_fn)(uintptr_t)dlsym(so, "fragless_torch_set_memory_fraction") : NULL;
    if (!tmalloc || !tfree || !tempty || !tfraction)
        return 1;
    CUcontext ctx0 = NULL, cur = (CUcontext)1;
    first_use u[2] = {{tmalloc, get_current, 0, NULL, 0}, {tmalloc, get_current, 1, NULL, 0}};
    for (int d = 0; d < 2; d++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, first_use_thread, &u[d]) == 0);
        pthread_join(t, NULL);
        CHECK(u[d].block != NULL && !u[d].left_current);
    }
    CHECK(init(0) == CUDA_SUCCESS && retain(&ctx0, 0) == CUDA_SUCCESS && set_current(ctx0) == CUDA_SUCCESS);
    tfree(u[0].block, 5 << 20, 0, NULL);
    tfree(u[1].block, 5 << 20, 1, NULL);
    tempty();
    CHECK(get_current(&cur) == CUDA_SUCCESS && cur == ctx0);
    return fl_test_failures;
}

static int fraction_probe(void)
{
    void *fc = fl_test_fakecuda();
    CUresult (*init)(unsigned), (*retain)(CUcontext *, int), (*set_current)(CUcontext), (*get_current)(CUcontext *);
    size_t (*used)(int);
    if (!fc || !fl_test_sym(fc, "cuInit", &init) || !fl_test_sym(fc, "cuDevicePrimaryCtxRetain", &retain) ||
        !fl_test_sym(fc, "cuCtxSetCurrent", &set_current) || !fl_test_sym(fc, "cuCtxGetCurrent", &get_current) ||
        !fl_test_sym(fc, "fakecuda_used", &used))
        return 1;
    setenv("FRAGLESS_CONF", "policy:cca", 1); /* the cudaMalloc path: charged to the current context's device */
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    malloc_fn tmalloc = so ? (malloc_fn)(uintptr_t)dlsym(so, "fragless_torch_malloc") : NULL;
    fraction_fn tfraction = so ? (fraction_fn)(uintptr_t)dlsym(so, "fragless_torch_set_memory_fraction") : NULL;
    if (!tmalloc || !tfraction)
        return 1;
    CUcontext ctx0 = NULL, cur = NULL;
    CHECK(init(0) == CUDA_SUCCESS && retain(&ctx0, 0) == CUDA_SUCCESS && set_current(ctx0) == CUDA_SUCCESS);
    tfraction(0.5, 1);
    void *p = tmalloc(3 << 20, 1, NULL);
    CHECK(p != NULL);
    CHECK(used(1) >= (3 << 20) && used(0) == 0);
    CHECK(get_current(&cur) == CUDA_SUCCESS && cur == ctx0);
    return fl_test_failures;
}

/* Every entry point but malloc and free says a failure with a status: -1 (or -2) and the
 * message in the library's fl_last_error, its status in fl_last_status, nothing on
 * stderr (the Python package raises fragless.Error with them). The library's own copies
 * of the two are asked: it is loaded with dlopen, the test's static copy is another. */
typedef struct so_errors {
    const char *(*last_error)(void);
    fl_status (*last_status)(void);
} so_errors;

static void check_failure(const so_errors *e, int rc, int want_rc, fl_status want, const char *words, int line)
{
    int ok = rc == want_rc && e->last_status() == want && strstr(e->last_error(), words) != NULL;
    fl_test_failures += !ok;
    if (!ok)
        fprintf(stderr, "%s:%d: CHECK failed: rc %d (want %d), status %d (want %d), message \"%s\" (want \"%s\" in it)\n",
                __FILE__, line, rc, want_rc, (int)e->last_status(), (int)want, e->last_error(), words);
}
#define CHECK_FAILURE(rc, want_rc, status, words) check_failure(&err, (rc), (want_rc), (status), (words), __LINE__)

static int statuses_probe(void)
{
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    so_errors err = {0};
    malloc_fn tmalloc = NULL;
    free_fn tfree = NULL;
    fraction_fn tfraction = NULL;
    int (*snapshot)(int, const char *) = NULL, (*record_stream)(void *, void *) = NULL, (*reset_peak)(int) = NULL;
    int (*pool_open)(const char *) = NULL, (*conf_check)(const char *) = NULL, (*record)(int, const char *) = NULL;
    int (*capture_id)(int, void *, unsigned long long *) = NULL, (*graph_release)(int, unsigned long long) = NULL;
    long long (*stats_json)(int, int, char *, size_t) = NULL;
    if (!so || !fl_test_sym(so, "fl_last_error", &err.last_error) || !fl_test_sym(so, "fl_last_status", &err.last_status) ||
        !fl_test_sym(so, "fragless_torch_malloc_nothrow", &tmalloc) || !fl_test_sym(so, "fragless_torch_free", &tfree) ||
        !fl_test_sym(so, "fragless_torch_set_memory_fraction", &tfraction) ||
        !fl_test_sym(so, "fragless_torch_snapshot", &snapshot) ||
        !fl_test_sym(so, "fragless_torch_record_stream", &record_stream) ||
        !fl_test_sym(so, "fragless_torch_reset_peak_stats", &reset_peak) ||
        !fl_test_sym(so, "fragless_torch_pool_open", &pool_open) || !fl_test_sym(so, "fragless_torch_conf_check", &conf_check) ||
        !fl_test_sym(so, "fragless_torch_record", &record) || !fl_test_sym(so, "fragless_torch_capture_id", &capture_id) ||
        !fl_test_sym(so, "fragless_torch_graph_release", &graph_release) ||
        !fl_test_sym(so, "fragless_torch_pool_stats_json", &stats_json))
        return 1;
    /* Before any allocation: no allocator to snapshot; statistics of none (-1) or out of range (-2). */
    CHECK_FAILURE(snapshot(0, "/tmp/never.json"), -1, FL_ERR_NOT_FOUND, "snapshot of device 0: no allocator on that device");
    CHECK(stats_json(0, 0, NULL, 0) == -1);
    CHECK_FAILURE((int)stats_json(0, 64, NULL, 0), -2, FL_ERR_INVALID, "device 64 is out of range (0..63)");
    CHECK_FAILURE((int)stats_json(5, 0, NULL, 0), -2, FL_ERR_INVALID, "pool slot 5 is out of range (0..4)");
    CHECK_FAILURE(reset_peak(-1), -1, FL_ERR_INVALID, "device -1 is out of range");
    CHECK(reset_peak(0) == 0); /* no allocator yet: nothing to reset, not a failure */
    /* A fraction out of range is refused before the allocator is made. */
    CHECK_FAILURE(tfraction(1.5, 0), -1, FL_ERR_INVALID, "memory fraction 1.5 is not in (0, 1]");
    CHECK(stats_json(0, 0, NULL, 0) == -1);
    CHECK_FAILURE(tfraction(0.5, 7), -1, FL_ERR_INVALID, "cannot set up device 7: ");
    CHECK_FAILURE(conf_check("limit:lots"), -1, FL_ERR_PARSE, "FRAGLESS_CONF: limit: 'lots'");
    CHECK(conf_check("policy:cca,limit:1GiB") == 0);
    CHECK_FAILURE(pool_open("polcy:cca"), -1, FL_ERR_PARSE, "pool configuration \"polcy:cca\": FRAGLESS_CONF: unknown key 'polcy'");
    void *p = tmalloc(3 << 20, 0, NULL);
    CHECK(p != NULL);
    CHECK(tfraction(0.5, 0) == 0);
    CHECK_FAILURE(snapshot(0, "/nonexistent-folder/state.json"), -1, FL_ERR_IO, "snapshot of device 0: ");
    CHECK(strstr(err.last_error(), "/nonexistent-folder/state.json") != NULL);
    CHECK_FAILURE(record_stream((void *)0x1234000, (void *)0x7), -1, FL_ERR_NOT_FOUND,
                  "record_stream of 0x1234000: not a live block of any device's allocator");
    CHECK(record_stream(p, (void *)0x7) == 0);
    CHECK_FAILURE(record(0, "/nonexistent-folder/trace.csv"), -1, FL_ERR_IO, "/nonexistent-folder/trace.csv");
    CHECK_FAILURE(record(64, NULL), -1, FL_ERR_INVALID, "device 64 is out of range");
    unsigned long long capture = 99;
    CHECK(capture_id(0, NULL, &capture) == 0 && capture == 0); /* not capturing */
    CHECK_FAILURE(capture_id(0, NULL, NULL), -1, FL_ERR_INVALID, "capture id: no place for it");
    CHECK_FAILURE(graph_release(-3, 1), -1, FL_ERR_INVALID, "device -3 is out of range");
    int slots = 0;
    while (slots < 10 && pool_open("policy:fragless") > 0)
        slots++;
    CHECK(slots == FRAGLESS_TORCH_POOLS);
    CHECK_FAILURE(pool_open("policy:fragless"), -1, FL_ERR_UNSUPPORTED, "no pool slot left: at most 4");
    tfree(p, 3 << 20, 0, NULL);
    return fl_test_failures;
}

static void in_child(const char *what, int (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn() ? 1 : 0);
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "test_torch: %s: failed (above)\n", what);
}

int main(void)
{
    setenv("FRAGLESS_CUDA_LIB", FAKECUDA_PATH, 1);
    setenv("FAKECUDA_CAPACITY", "64M", 1);
    setenv("FAKECUDA_DEVICES", "2", 1); /* device 1: the per-device trace below */
    setenv("FRAGLESS_CONF", "policy:fragless", 1);
    in_child("contexts after empty_cache", context_probe);
    in_child("memory fraction of device 1 from device 0", fraction_probe);
    in_child("statuses and messages of the entry points", statuses_probe);
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "cannot load %s: %s\n", FRAGLESS_SO, dlerror());
        return 1;
    }
    malloc_fn tmalloc = (malloc_fn)(uintptr_t)dlsym(so, "fragless_torch_malloc_nothrow");
    free_fn tfree = (free_fn)(uintptr_t)dlsym(so, "fragless_torch_free");
    empty_fn tempty = (empty_fn)(uintptr_t)dlsym(so, "fragless_torch_empty_cache");
    CHECK(tmalloc && tfree && tempty);
    if (!tmalloc || !tfree || !tempty)
        return fl_test_done("test_torch");

    /* Blocks are real memory in the double: write each, free half, allocate more than
     * the cached pages (reclaim and remap), then read every survivor back. */
    enum { N = 24 };
    unsigned char *p[N];
    ssize_t size[N];
    for (int i = 0; i < N; i++) {
        size[i] = (ssize_t)(1 << 20) + i * 4096 + 100;
        p[i] = tmalloc(size[i], 0, NULL);
        CHECK(p[i] != NULL && (uintptr_t)p[i] % 512 == 0);
        if (p[i])
            memset(p[i], i + 1, (size_t)size[i]);
    }
    for (int i = 0; i < N; i += 2)
        tfree(p[i], size[i], 0, NULL);
    void *big = tmalloc(30 << 20, 0, (void *)0x7);
    CHECK(big != NULL);
    if (big)
        memset(big, 0xee, 30 << 20);
    for (int i = 1; i < N; i += 2) {
        int ok = p[i] != NULL;
        for (ssize_t k = 0; ok && k < size[i]; k += 997)
            ok = p[i][k] == (unsigned char)(i + 1);
        CHECK(ok);
    }
    /* More than the device holds: NULL here (fragless_torch_malloc throws). */
    CHECK(tmalloc((ssize_t)1 << 30, 0, NULL) == NULL);
    /* Misuse: a negative size and size 0 give NULL; an unknown device too. */
    CHECK(tmalloc(-5, 0, NULL) == NULL);
    CHECK(tmalloc(0, 0, NULL) == NULL);
    CHECK(tmalloc(4096, 3, NULL) == NULL);
    tfree(big, 30 << 20, 0, (void *)0x7);
    for (int i = 1; i < N; i += 2)
        tfree(p[i], size[i], 0, NULL);
    tempty();

    /* trace:PATH with two devices: device 1 writes PATH.dev1, never device 0's file. In
     * a child (its exit flushes the traces), with a double of two devices. */
    char dir[] = "/tmp/fl_torch_traceXXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char conf[256], path0[128], path1[128];
    snprintf(path0, sizeof path0, "%s/run.csv", dir);
    snprintf(path1, sizeof path1, "%s/run.dev1.csv", dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        snprintf(conf, sizeof conf, "policy:fragless,trace:%s", path0);
        setenv("FRAGLESS_CONF", conf, 1);
        void *so2 = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
        malloc_fn m = (malloc_fn)(uintptr_t)dlsym(so2, "fragless_torch_malloc_nothrow");
        free_fn f = (free_fn)(uintptr_t)dlsym(so2, "fragless_torch_free");
        /* Device 0's allocator exists already (made before, without a trace); device 1's
         * is made now, with the new conf. */
        void *q = m(12345, 1, NULL);
        if (q)
            f(q, 12345, 1, NULL);
        exit(q ? 0 : 1); /* exit, not _exit: it flushes the trace */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    FILE *t = fopen(path1, "r");
    CHECK(t != NULL);
    if (t) {
        char line[256];
        int rows = 0, sized = 0;
        while (fgets(line, sizeof line, t))
            rows++, sized += strstr(line, ",12345,") != NULL;
        fclose(t);
        CHECK(rows == 3); /* header, allocate, free */
        CHECK(sized == 2);
        unlink(path1);
    }
    CHECK(access(path0, F_OK) != 0); /* device 0's allocator was made before: no trace */
    rmdir(dir);
    return fl_test_done("test_torch");
}
