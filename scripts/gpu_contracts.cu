// scripts/gpu_contracts.cu: the CUDA runtime's stream contracts that `fragless run` keeps,
// checked on a real GPU with real asynchronous work (gpu-check.sh, step i). The tests
// check them on the project's driver double (tests/preload/app.c), whose work is only
// "pending" on request; here a kernel really runs late.
//
//   nvcc -O2 -cudart shared -o gpu_contracts scripts/gpu_contracts.cu -lpthread
//   build/fragless run -- ./gpu_contracts
//
// Each check: a block is freed while a slow kernel (it spins, then fills the block with
// one value) still has to write it, on a stream that then goes out of the picture; a
// second stream allocates a block of the same size at once and fills it with another
// value; after the device is synchronized, the second block must hold only its own
// value. A runtime (or fragless) that handed the first block to the second stream while
// the slow kernel ran shows the slow kernel's value there.
//   per-thread  two threads on cudaStreamPerThread (one handle, each thread's own stream)
//   destroyed   a stream destroyed right after the free; the next stream made
//   device      (two GPUs) cudaMallocAsync on a stream of device 1 while device 0 is
//               current: the block must be device 1's (cudaPointerGetAttributes)
//   graphs      a graph with a 64 MiB block allocated and freed inside its capture,
//               captured, launched and destroyed 100 times: free memory (cudaMemGetInfo)
//               must not shrink by more than two blocks (a runtime that kept every graph's
//               memory loses 6.4 GiB)
//   cross-device-free  (two GPUs that reach each other) a block of device 0 written late
//               by a kernel on device 1's stream and freed on that stream; device 0
//               allocates at once: the slow kernel's value must not show there
//   reset       cudaMalloc blocks live and cached and a cudaMallocAsync block set to one
//               value, cudaDeviceReset, then (no other runtime call first) blocks of the
//               same sizes allocated, set and read back: every call must succeed, those
//               blocks hold what was set, and the cudaMallocAsync block still holds its
//               value (it outlives a reset: CUDA 13's cuda_runtime_api.h) and is freed.
//               Under fragless this is also the fact the tests assume: virtual memory
//               (cuMemCreate) outlives a reset of the primary context
//   ipc         two 2 MiB cudaMalloc blocks in a row, each set to its own byte and exported
//               with cudaIpcGetMemHandle; another process (this program, --ipc-open, also
//               under fragless run) opens each handle and reads 2 MiB there: under the
//               default policy both must be read intact (fragless's own handles: the
//               physical allocations passed as file descriptors); never as other bytes
// Run with --ipc-rules and without fragless, the driver's own legacy IPC, which the
// project's driver double models (tests/fakecuda): a handle of an address inside an
// allocation is the allocation's (the same bytes as its start's), and the importer's
// pointer is the allocation's start. One line, "GPU_CONTRACT ipc-rules ...".
// Output: one line per check, "GPU_CONTRACT <name> ok|FAIL|SKIP <detail>", then
// "GPU_CONTRACTS <n> failed". Exit status 0 when none failed, 1 otherwise, 2 when CUDA
// could not run at all.
#include <cuda_runtime.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const size_t N = (size_t)8 << 20; // bytes per block: 8 MiB
static const unsigned SLOW = 0xA5A5A5A5u, FAST = 0x5A5A5A5Au;
static long long spin_cycles = 0; // about 200 ms of the GPU's clock (set in main)
static int failures = 0;

// Each block spins for `cycles` of its SM's clock, then fills its share of p with v.
__global__ void spin_fill(unsigned *p, size_t n, unsigned v, long long cycles)
{
    if (cycles) {
        long long t0 = clock64();
        while (clock64() - t0 < cycles) {
        }
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = v;
}

static int cuda_ok(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 1;
    printf("  %s: %s\n", what, cudaGetErrorString(e));
    return 0;
}

// The block's words that are not v (0: all are), read back after the device is idle.
static size_t wrong_words(const unsigned *dev, unsigned v, unsigned *seen)
{
    size_t n = N / sizeof(unsigned), bad = 0;
    unsigned *host = (unsigned *)malloc(N);
    if (!host || !cuda_ok(cudaMemcpy(host, dev, N, cudaMemcpyDeviceToHost), "cudaMemcpy"))
        return free(host), n;
    for (size_t i = 0; i < n; i++)
        if (host[i] != v && !bad++)
            *seen = host[i];
    free(host);
    return bad;
}

static void report(const char *name, int ok, const char *detail)
{
    printf("GPU_CONTRACT %s %s %s\n", name, ok ? "ok" : "FAIL", detail);
    failures += !ok;
}

// ---- per-thread: cudaStreamPerThread from two threads ----

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int slow_freed = 0;
static unsigned *slow_block, *fast_block;
static cudaError_t slow_err = cudaSuccess, fast_err = cudaSuccess;

static void *slow_thread(void *)
{
    cudaSetDevice(0);
    unsigned *p = NULL;
    slow_err = cudaMallocAsync((void **)&p, N, cudaStreamPerThread);
    if (slow_err == cudaSuccess) {
        spin_fill<<<64, 256, 0, cudaStreamPerThread>>>(p, N / sizeof(unsigned), SLOW, spin_cycles);
        slow_err = cudaFreeAsync(p, cudaStreamPerThread); // the kernel has not written it yet
    }
    slow_block = p;
    pthread_mutex_lock(&lock);
    slow_freed = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    cudaStreamSynchronize(cudaStreamPerThread);
    return NULL;
}

static void *fast_thread(void *)
{
    cudaSetDevice(0);
    pthread_mutex_lock(&lock);
    while (!slow_freed)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    unsigned *q = NULL;
    fast_err = cudaMallocAsync((void **)&q, N, cudaStreamPerThread);
    if (fast_err == cudaSuccess) {
        spin_fill<<<64, 256, 0, cudaStreamPerThread>>>(q, N / sizeof(unsigned), FAST, 0);
        fast_err = cudaStreamSynchronize(cudaStreamPerThread);
    }
    fast_block = q;
    return NULL;
}

static void per_thread(void)
{
    pthread_t a, b;
    pthread_create(&a, NULL, slow_thread, NULL);
    pthread_create(&b, NULL, fast_thread, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    char detail[256];
    if (slow_err != cudaSuccess || fast_err != cudaSuccess || !fast_block) {
        snprintf(detail, sizeof detail, "a CUDA call failed: %s / %s", cudaGetErrorString(slow_err),
                 cudaGetErrorString(fast_err));
        report("per-thread", 0, detail);
        return;
    }
    cudaDeviceSynchronize(); // the slow kernel too
    unsigned seen = 0;
    size_t bad = wrong_words(fast_block, FAST, &seen);
    snprintf(detail, sizeof detail, "%s block, %zu of %zu words not its own (e.g. 0x%08x)",
             fast_block == slow_block ? "the same" : "another", bad, N / sizeof(unsigned), seen);
    report("per-thread", bad == 0, detail);
    cudaFreeAsync(fast_block, cudaStreamPerThread);
    cudaDeviceSynchronize();
}

// ---- destroyed: a stream destroyed right after the free ----

static void destroyed(void)
{
    cudaStream_t s1, s2;
    unsigned *p = NULL, *q = NULL;
    char detail[256];
    if (!cuda_ok(cudaStreamCreate(&s1), "cudaStreamCreate") ||
        !cuda_ok(cudaMallocAsync((void **)&p, N, s1), "cudaMallocAsync")) {
        report("destroyed", 0, "a CUDA call failed");
        return;
    }
    spin_fill<<<64, 256, 0, s1>>>(p, N / sizeof(unsigned), SLOW, spin_cycles);
    cudaFreeAsync(p, s1);
    cudaStreamDestroy(s1); // returns at once; the kernel still runs
    if (!cuda_ok(cudaStreamCreate(&s2), "cudaStreamCreate") ||
        !cuda_ok(cudaMallocAsync((void **)&q, N, s2), "cudaMallocAsync")) {
        report("destroyed", 0, "a CUDA call failed");
        return;
    }
    spin_fill<<<64, 256, 0, s2>>>(q, N / sizeof(unsigned), FAST, 0);
    cudaDeviceSynchronize();
    unsigned seen = 0;
    size_t bad = wrong_words(q, FAST, &seen);
    snprintf(detail, sizeof detail, "%s block, %zu of %zu words not its own (e.g. 0x%08x)", q == p ? "the same" : "another",
             bad, N / sizeof(unsigned), seen);
    report("destroyed", bad == 0, detail);
    cudaFreeAsync(q, s2);
    cudaStreamDestroy(s2);
    cudaDeviceSynchronize();
}

// ---- graphs: captured, launched and destroyed again and again ----

static void graphs(void)
{
    const size_t big = (size_t)64 << 20;
    size_t free0 = 0, free1 = 0, total = 0;
    cudaStream_t s;
    char detail[160];
    int ok = cuda_ok(cudaStreamCreate(&s), "cudaStreamCreate") && cuda_ok(cudaMemGetInfo(&free0, &total), "cudaMemGetInfo");
    for (int i = 0; ok && i < 100; i++) {
        unsigned *p = NULL;
        cudaGraph_t g = NULL;
        cudaGraphExec_t e = NULL;
        ok = cuda_ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture") &&
             cuda_ok(cudaMallocAsync((void **)&p, big, s), "cudaMallocAsync in a capture");
        if (ok)
            spin_fill<<<64, 256, 0, s>>>(p, big / sizeof(unsigned), (unsigned)i, 0);
        ok = ok && cuda_ok(cudaFreeAsync(p, s), "cudaFreeAsync in a capture") &&
             cuda_ok(cudaStreamEndCapture(s, &g), "cudaStreamEndCapture") &&
             cuda_ok(cudaGraphInstantiate(&e, g, 0), "cudaGraphInstantiate") &&
             cuda_ok(cudaGraphLaunch(e, s), "cudaGraphLaunch") && cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize") &&
             cuda_ok(cudaGraphExecDestroy(e), "cudaGraphExecDestroy") && cuda_ok(cudaGraphDestroy(g), "cudaGraphDestroy");
    }
    ok = ok && cuda_ok(cudaMemGetInfo(&free1, &total), "cudaMemGetInfo");
    snprintf(detail, sizeof detail, "free memory %.0f MiB before, %.0f MiB after 100 graphs of 64 MiB", free0 / 1048576.0,
             free1 / 1048576.0);
    report("graphs", ok && free1 + 2 * big >= free0, detail);
    cudaStreamDestroy(s);
}

// ---- device: another device's stream ----

static void device(int ngpu)
{
    if (ngpu < 2) {
        printf("GPU_CONTRACT device SKIP one GPU here\n");
        return;
    }
    cudaStream_t s1;
    void *p = NULL;
    cudaPointerAttributes attr;
    memset(&attr, 0, sizeof attr);
    int ok = cuda_ok(cudaSetDevice(1), "cudaSetDevice(1)") && cuda_ok(cudaStreamCreate(&s1), "cudaStreamCreate") &&
             cuda_ok(cudaSetDevice(0), "cudaSetDevice(0)") &&
             cuda_ok(cudaMallocAsync(&p, N, s1), "cudaMallocAsync on device 1's stream") &&
             cuda_ok(cudaPointerGetAttributes(&attr, p), "cudaPointerGetAttributes");
    char detail[128];
    snprintf(detail, sizeof detail, "the block is on device %d (want 1)", ok ? attr.device : -1);
    report("device", ok && attr.device == 1, detail);
    if (p)
        cudaFreeAsync(p, s1);
    cudaSetDevice(1);
    cudaStreamSynchronize(s1);

    // cross-device free: a block of device 0 written late by a kernel on device 1's
    // stream (peer access) and freed on that stream; device 0 allocates again at once.
    int peer = 0;
    cudaDeviceCanAccessPeer(&peer, 1, 0);
    if (!peer) {
        printf("GPU_CONTRACT cross-device-free SKIP device 1 cannot reach device 0's memory\n");
    } else {
        unsigned *a = NULL, *b = NULL;
        cudaStream_t s0;
        cudaSetDevice(0);
        int fine = cuda_ok(cudaStreamCreate(&s0), "cudaStreamCreate") &&
                   cuda_ok(cudaMallocAsync((void **)&a, N, s0), "cudaMallocAsync") &&
                   cuda_ok(cudaStreamSynchronize(s0), "cudaStreamSynchronize");
        if (fine) {
            cudaSetDevice(1);
            spin_fill<<<64, 256, 0, s1>>>(a, N / sizeof(unsigned), SLOW, spin_cycles);
            fine = cuda_ok(cudaGetLastError(), "spin_fill on device 1 into device 0's block") &&
                   cuda_ok(cudaFreeAsync(a, s1), "cudaFreeAsync on device 1's stream");
            cudaSetDevice(0);
        }
        if (fine && cuda_ok(cudaMallocAsync((void **)&b, N, s0), "cudaMallocAsync")) {
            spin_fill<<<64, 256, 0, s0>>>(b, N / sizeof(unsigned), FAST, 0);
            cudaSetDevice(1);
            cudaDeviceSynchronize();
            cudaSetDevice(0);
            cudaDeviceSynchronize();
            unsigned seen = 0;
            size_t bad = wrong_words(b, FAST, &seen);
            snprintf(detail, sizeof detail, "%s block, %zu words not its own (e.g. 0x%08x)",
                     a == b ? "the same" : "another", bad, seen);
            report("cross-device-free", bad == 0, detail);
            cudaFreeAsync(b, s0);
        } else {
            report("cross-device-free", 0, "a CUDA call failed");
        }
        cudaStreamSynchronize(s0);
        cudaStreamDestroy(s0);
    }
    cudaSetDevice(1);
    cudaStreamSynchronize(s1);
    cudaStreamDestroy(s1);
    cudaSetDevice(0);
}

// ---- reset: cudaDeviceReset, and a program that goes on after it ----

// The bytes of [p, p + n) that do not read v (n when they cannot be read).
static size_t wrong_bytes(const void *p, size_t n, unsigned char v)
{
    unsigned char *host = (unsigned char *)malloc(n);
    size_t bad = 0;
    if (!host || !cuda_ok(cudaMemcpy(host, p, n, cudaMemcpyDeviceToHost), "cudaMemcpy"))
        return free(host), n;
    for (size_t k = 0; k < n; k++)
        bad += host[k] != v;
    free(host);
    return bad;
}

static void reset(void)
{
    static const size_t sizes[] = {4096, 70000, (size_t)1 << 20, N, (size_t)40 << 20};
    const int n = sizeof sizes / sizeof sizes[0];
    unsigned char *p[5] = {0}, *kept = NULL;
    char detail[256];
    int ok = 1;
    for (int i = 0; i < n && ok; i++)
        ok = cuda_ok(cudaMalloc((void **)&p[i], sizes[i]), "cudaMalloc before the reset");
    for (int i = 0; i < n && ok; i += 2) // some cached, some live at the reset
        ok = cuda_ok(cudaFree(p[i]), "cudaFree before the reset");
    // cudaMallocAsync's memory outlives the reset (CUDA 13's cuda_runtime_api.h).
    ok = ok && cuda_ok(cudaMallocAsync((void **)&kept, N, 0), "cudaMallocAsync before the reset") &&
         cuda_ok(cudaMemset(kept, 0x77, N), "cudaMemset before the reset") &&
         cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize before the reset");
    ok = ok && cuda_ok(cudaDeviceReset(), "cudaDeviceReset");
    // First call after it: an allocation (no other runtime call makes the context again).
    size_t bad = 0, kept_bad = 0;
    for (int i = 0; i < n && ok; i++) {
        unsigned char *q = NULL;
        ok = cuda_ok(cudaMalloc((void **)&q, sizes[i]), "cudaMalloc after the reset") &&
             cuda_ok(cudaMemset(q, 0x5a, sizes[i]), "cudaMemset after the reset") &&
             cuda_ok(cudaDeviceSynchronize(), "the memset after the reset");
        bad += ok ? wrong_bytes(q, sizes[i], 0x5a) : 0;
        ok = ok && cuda_ok(cudaFree(q), "cudaFree after the reset");
    }
    if (ok) {
        kept_bad = wrong_bytes(kept, N, 0x77);
        ok = cuda_ok(cudaFreeAsync(kept, 0), "cudaFreeAsync of the block from before") &&
             cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize after it");
    }
    snprintf(detail, sizeof detail, "%s; %zu bytes not written after it; the cudaMallocAsync block from before: "
             "%zu of %zu bytes changed", ok ? "every call succeeded" : "a call failed", bad, kept_bad, N);
    report("reset", ok && bad == 0 && kept_bad == 0, detail);
}

// ---- ipc: legacy CUDA IPC of cudaMalloc's blocks ----

static const size_t IPC_N = (size_t)2 << 20;

// The child: opens the handle (hex), reads n bytes there, exits 0 when all are `byte`, 2
// when not, 3 when the handle does not open, 4 on bad arguments.
static int ipc_open(const char *hex, int byte, size_t n)
{
    cudaIpcMemHandle_t h;
    if (strlen(hex) != 2 * sizeof h.reserved)
        return 4;
    for (size_t i = 0; i < sizeof h.reserved; i++) {
        unsigned v = 0;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return 4;
        h.reserved[i] = (char)v;
    }
    void *p = NULL;
    if (!cuda_ok(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle"))
        return 3;
    size_t bad = n && n <= IPC_N ? wrong_bytes(p, n, (unsigned char)byte) : 1;
    cudaIpcCloseMemHandle(p);
    return bad ? 2 : 0;
}

// Exports p; a child opens the handle and reads n bytes: 0 they were byte, 2 they were
// not, -1 the export failed with *err, another code the child's.
static int ipc_child(void *p, int byte, size_t n, cudaError_t *err)
{
    cudaIpcMemHandle_t h;
    *err = cudaIpcGetMemHandle(&h, p);
    if (*err != cudaSuccess)
        return -1;
    char hex[2 * sizeof h.reserved + 1], b[8], len[24];
    for (size_t k = 0; k < sizeof h.reserved; k++)
        snprintf(hex + 2 * k, 3, "%02x", (unsigned char)h.reserved[k]);
    snprintf(b, sizeof b, "%d", byte);
    snprintf(len, sizeof len, "%zu", n);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", "gpu_contracts", "--ipc-open", hex, b, len, (char *)NULL);
        _exit(5);
    }
    int st = 0;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) ? WEXITSTATUS(st) : 6;
}

static void ipc(void)
{
    unsigned char *p[2] = {0};
    char detail[256], verdict[2][48];
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++)
        ok = cuda_ok(cudaMalloc((void **)&p[i], IPC_N), "cudaMalloc") &&
             cuda_ok(cudaMemset(p[i], 0xA1 + i, IPC_N), "cudaMemset");
    ok = ok && cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    int good = ok;
    for (int i = 0; i < 2 && ok; i++) {
        cudaError_t e = cudaSuccess;
        int rc = ipc_child(p[i], 0xA1 + i, IPC_N, &e);
        if (rc == -1)
            snprintf(verdict[i], sizeof verdict[i], "refused (%s)", cudaGetErrorName(e));
        else
            snprintf(verdict[i], sizeof verdict[i], "%s", rc == 0 ? "read intact" : rc == 2 ? "READ WRONG" : "child failed");
        good = good && rc == 0;
    }
    for (int i = 0; i < 2; i++)
        if (p[i])
            cudaFree(p[i]);
    snprintf(detail, sizeof detail, "first block %s, second block %s", ok ? verdict[0] : "-", ok ? verdict[1] : "-");
    report("ipc", good, detail);
}

// Without fragless: the driver's rules that the double models.
static int ipc_rules(void)
{
    unsigned char *p = NULL;
    cudaIpcMemHandle_t a, b;
    // Halves of two bytes: opened at the start, the first half reads 0xA1; opened at the
    // inner address (the second half's start), it would read 0xB2.
    int ok = cuda_ok(cudaMalloc((void **)&p, IPC_N), "cudaMalloc") &&
             cuda_ok(cudaMemset(p, 0xA1, IPC_N / 2), "cudaMemset") &&
             cuda_ok(cudaMemset(p + IPC_N / 2, 0xB2, IPC_N / 2), "cudaMemset") &&
             cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize") &&
             cuda_ok(cudaIpcGetMemHandle(&a, p), "cudaIpcGetMemHandle(start)");
    cudaError_t inner = ok ? cudaIpcGetMemHandle(&b, p + IPC_N / 2) : cudaSuccess;
    int same = ok && inner == cudaSuccess && !memcmp(&a, &b, sizeof a);
    cudaError_t e = cudaSuccess;
    int rc = same ? ipc_child(p + IPC_N / 2, 0xA1, IPC_N / 2, &e) : -2;
    char detail[256];
    snprintf(detail, sizeof detail, "inner address: %s; its handle %s the start's; opened by another process: %s",
             inner == cudaSuccess ? "exported" : cudaGetErrorName(inner), same ? "is" : "is not",
             rc == 0 ? "opened at the allocation's start" : rc == 2 ? "opened elsewhere (not the start's bytes)"
             : rc == -2 ? "not tried" : "failed");
    report("ipc-rules", ok && same && rc == 0, detail);
    if (p)
        cudaFree(p);
    printf("GPU_CONTRACTS %d failed\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc > 4 && !strcmp(argv[1], "--ipc-open"))
        return ipc_open(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10));
    if (argc > 1 && !strcmp(argv[1], "--ipc-rules"))
        return ipc_rules();
    int ngpu = 0, khz = 0;
    if (cudaGetDeviceCount(&ngpu) != cudaSuccess || ngpu < 1) {
        printf("GPU_CONTRACTS no GPU\n");
        return 2;
    }
    cudaSetDevice(0);
    cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0);
    spin_cycles = (long long)(khz > 0 ? khz : 1500000) * 200; // 200 ms
    per_thread();
    destroyed();
    graphs();
    device(ngpu);
    ipc();
    reset(); // last: it destroys everything on device 0
    printf("GPU_CONTRACTS %d failed\n", failures);
    return failures ? 1 : 0;
}
