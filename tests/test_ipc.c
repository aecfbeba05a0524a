/* fl_export / fl_import: blocks shared between processes, on the CUDA driver double (a
 * handle is a memfd file there, so what one process writes through its mapping the
 * other reads through its own), and registrable:SIZE, which gives a large block one
 * physical allocation: one range to cuMemGetAddressRange (NCCL's and ibverbs'
 * registration), exportable whole. Skipped (77) without the double. */
#include <dlfcn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_api.h"
#include "device/device.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)

static const char fake_path[] = FL_TEST_FAKECUDA;

static struct {
    CUresult (*cuInit)(unsigned);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
    CUresult (*cuDevicePrimaryCtxRelease_v2)(CUdevice);
    CUresult (*cuCtxPushCurrent_v2)(CUcontext);
    CUresult (*cuCtxPopCurrent_v2)(CUcontext *);
    CUresult (*cuMemGetAddressRange_v2)(CUdeviceptr *, size_t *, CUdeviceptr);
    CUresult (*fakecuda_device_access)(int, CUdeviceptr, size_t, int);
} fake;

static void load_fake(void)
{
    void *lib = fl_test_fakecuda();
    if (!lib || !fl_test_sym(lib, "cuInit", &fake.cuInit) ||
        !fl_test_sym(lib, "cuDevicePrimaryCtxRetain", &fake.cuDevicePrimaryCtxRetain) ||
        !fl_test_sym(lib, "cuDevicePrimaryCtxRelease_v2", &fake.cuDevicePrimaryCtxRelease_v2) ||
        !fl_test_sym(lib, "cuCtxPushCurrent_v2", &fake.cuCtxPushCurrent_v2) ||
        !fl_test_sym(lib, "cuCtxPopCurrent_v2", &fake.cuCtxPopCurrent_v2) ||
        !fl_test_sym(lib, "cuMemGetAddressRange_v2", &fake.cuMemGetAddressRange_v2) ||
        !fl_test_sym(lib, "fakecuda_device_access", &fake.fakecuda_device_access))
        exit(1);
}

/* cuMemGetAddressRange as NCCL's registration asks it, in device 0's context. */
static size_t range_of(uint64_t addr, uint64_t *base)
{
    CUcontext c = NULL;
    CUdeviceptr b = 0;
    size_t n = 0;
    CHECK(fake.cuInit(0) == CUDA_SUCCESS && fake.cuDevicePrimaryCtxRetain(&c, 0) == CUDA_SUCCESS);
    CHECK(fake.cuCtxPushCurrent_v2(c) == CUDA_SUCCESS);
    CHECK(fake.cuMemGetAddressRange_v2(&b, &n, addr) == CUDA_SUCCESS);
    CHECK(fake.cuCtxPopCurrent_v2(&c) == CUDA_SUCCESS && fake.cuDevicePrimaryCtxRelease_v2(0) == CUDA_SUCCESS);
    *base = b;
    return n;
}

static fl_device *cuda_dev(void)
{
    fl_device *d = fl_test_fake_device();
    if (!d)
        exit(1);
    return d;
}

static unsigned char pattern(uint64_t i, int who) { return (unsigned char)(i * 7 + (unsigned)who * 101 + (i >> 12)); }

static void fill(uint64_t addr, uint64_t n, int who)
{
    unsigned char *p = (unsigned char *)(uintptr_t)addr;
    for (uint64_t i = 0; i < n; i++)
        p[i] = pattern(i, who);
}

static int holds(uint64_t addr, uint64_t n, int who)
{
    const unsigned char *p = (const unsigned char *)(uintptr_t)addr;
    for (uint64_t i = 0; i < n; i++)
        if (p[i] != pattern(i, who))
            return 0;
    return 1;
}

/* ---- passing a handle over a UNIX socket, as processes do -------------------------- */

static int send_handle(int sock, const fl_ipc_handle *h)
{
    struct iovec iov = {(void *)h, sizeof *h};
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &h->fd, sizeof(int));
    return sendmsg(sock, &m, 0) == (ssize_t)sizeof *h ? 0 : -1;
}

static int recv_handle(int sock, fl_ipc_handle *h)
{
    struct iovec iov = {h, sizeof *h};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    if (recvmsg(sock, &m, 0) != (ssize_t)sizeof *h)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS)
        return -1;
    memcpy(&h->fd, CMSG_DATA(c), sizeof(int)); /* the fd number in this process */
    return 0;
}

/* ---- two processes ------------------------------------------------------------------ */

#define BLOCK (6 * MiB + 100)

/* B: its own double, device and allocator; imports A's block, reads what A wrote,
 * writes its own pattern, says so. */
static int process_b(int sock)
{
    load_fake();
    fl_device *d = cuda_dev();
    fl_allocator *a = fl_test_allocator("policy:fragless,top:0", d);
    fl_ipc_handle h;
    uint64_t addr = 0;
    CHECK(recv_handle(sock, &h) == 0);
    CHECK_OK(fl_import(a, &h, &addr));
    close(h.fd); /* the mapping keeps the memory */
    CHECK(addr != 0 && h.size == BLOCK);
    CHECK(holds(addr, h.size, 1));                                        /* A's data */
    CHECK(fake.fakecuda_device_access(0, addr, h.size, 1) == CUDA_SUCCESS); /* and B's GPU may use it */
    fill(addr, h.size, 2);
    char ok = fl_test_failures ? 'n' : 'y';
    CHECK(write(sock, &ok, 1) == 1);
    char done;
    CHECK(read(sock, &done, 1) == 1); /* A has read it */
    CHECK_OK(fl_import_close(a, addr));
    CHECK_STATUS(fl_import_close(a, addr), FL_ERR_NOT_FOUND);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    return fl_test_failures ? 1 : 0;
}

/* Forks process B, which runs fn on its end of a socket pair (and exits with its
 * result); *sock is A's end. end_peer waits for B, which must have passed. */
static pid_t start_peer(int (*fn)(int), int *sock)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        _exit(fn(sv[1]));
    }
    close(sv[1]);
    *sock = sv[0];
    return pid;
}

static void end_peer(pid_t pid, int sock)
{
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(sock);
}

/* Process A allocates and exports, B (a process started before A touched the driver, so
 * it shares nothing but the socket) imports and writes, A reads B's data. */
static void test_two_processes(void)
{
    int sock = -1;
    pid_t pid = start_peer(process_b, &sock);
    load_fake();
    fl_device *d = cuda_dev();
    fl_allocator *a = fl_test_allocator("policy:fragless,registrable:4MiB,top:0", d);
    uint64_t addr = 0;
    CHECK_OK(fl_alloc(a, BLOCK, 0, &addr));
    fill(addr, BLOCK, 1);
    fl_ipc_handle h;
    CHECK_OK(fl_export(a, addr, &h));
    CHECK(h.offset == 0 && h.size == BLOCK && h.alloc_size == 8 * MiB && h.device == 0 && h.fd >= 0);
    CHECK(send_handle(sock, &h) == 0);
    close(h.fd);
    char ok = 0;
    CHECK(read(sock, &ok, 1) == 1 && ok == 'y');
    CHECK(holds(addr, BLOCK, 2)); /* B's data, through A's own mapping */
    CHECK(write(sock, "d", 1) == 1);
    end_peer(pid, sock);
    CHECK_OK(fl_free(a, addr));
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* ---- one process: ranges, what cannot be exported, misuse -------------------------- */

/* Before registrable:SIZE a large block spread over several handles (fragless's chunks of
 * 32 MiB, or pages of their own): the driver's range for it was one of them, and neither
 * NCCL nor ibverbs could register it; export refuses it and says what to do. With it, the
 * block is one range, exported and imported whole (here in the same process: a second
 * mapping of the same memory). */
static void test_ranges(void)
{
    load_fake();
    fl_device *d = cuda_dev();
    fl_allocator *plain = fl_test_allocator("policy:fragless,top:0", d);
    uint64_t big, small, base;
    CHECK_OK(fl_alloc(plain, 40 * MiB, 0, &big)); /* over two chunks */
    CHECK_EQ_U64(range_of(big, &base), 32 * MiB);
    fl_ipc_handle h;
    CHECK_STATUS(fl_export(plain, big, &h), FL_ERR_UNSUPPORTED);
    CHECK_MENTIONS("registrable:SIZE");
    /* A block inside one page is inside one physical allocation: it exports. */
    CHECK_OK(fl_alloc(plain, 4096, 0, &small));
    CHECK_OK(fl_export(plain, small, &h));
    CHECK_EQ_U64(range_of(small, &base), 2 * MiB);
    CHECK(h.alloc_size == 2 * MiB && h.offset == small - base && h.size == 4096);
    uint64_t again = 0;
    fill(small, 4096, 3);
    CHECK_OK(fl_import(plain, &h, &again));
    CHECK(again != small && holds(again, 4096, 3));
    close(h.fd);
    CHECK_OK(fl_import_close(plain, again));
    CHECK_OK(fl_free(plain, big));
    CHECK_OK(fl_free(plain, small));
    CHECK_STATUS(fl_export(plain, big, &h), FL_ERR_NOT_FOUND);
    fl_allocator_destroy(plain);

    fl_allocator *reg = fl_test_allocator("policy:fragless,registrable:8MiB,top:0", d);
    CHECK_OK(fl_alloc(reg, 10 * MiB + 1, 0, &big));
    CHECK_EQ_U64(range_of(big, &base), 12 * MiB);
    CHECK_EQ_U64(base, big);
    CHECK_OK(fl_alloc(reg, 7 * MiB, 0, &small)); /* below SIZE: fragless's handles */
    uint64_t r = range_of(small, &base); /* a page of its own or a chunk, by what is held */
    CHECK(r == 2 * MiB || r == 32 * MiB);
    CHECK_OK(fl_export(reg, big, &h));
    CHECK(h.alloc_size == 12 * MiB && h.offset == 0 && h.size == 10 * MiB + 1);
    fill(big, 10 * MiB + 1, 4);
    CHECK_OK(fl_import(reg, &h, &again));
    CHECK(holds(again, 10 * MiB + 1, 4));
    /* The import's memory is the exporter's: it costs this device nothing. */
    fl_stats st;
    fl_get_stats(reg, &st);
    CHECK_EQ_U64(st.reserved_bytes.current, counters(d).in_use);
    close(h.fd);
    /* Freed and allocated again at a size that rounds to the same pages: the cached
     * block, no new handle. */
    uint64_t creates = calls(d, FL_CALL_CREATE);
    CHECK_OK(fl_free(reg, big));
    CHECK_OK(fl_alloc(reg, 11 * MiB, 0, &big));
    CHECK_EQ_U64(calls(d, FL_CALL_CREATE), creates);
    CHECK(fl_allocator_check(reg) == 0);
    /* Misuse. */
    fl_ipc_handle bad = h;
    bad.fd = -1;
    CHECK_STATUS(fl_import(reg, &bad, &again), FL_ERR_INVALID);
    bad = h;
    bad.offset = bad.alloc_size;
    CHECK_STATUS(fl_import(reg, &bad, &again), FL_ERR_INVALID);
    CHECK_STATUS(fl_import_close(reg, 0x1000), FL_ERR_NOT_FOUND);
    /* An import left open goes with the device. */
    CHECK_OK(fl_free(reg, big));
    CHECK_OK(fl_free(reg, small));
    fl_allocator_destroy(reg);
    fl_device_destroy(d);

    /* The simulated device has no IPC. */
    fl_device *sim = fl_test_sim(0, 0);
    fl_allocator *sa = fl_test_allocator("fragless", sim);
    CHECK_OK(fl_alloc(sa, 4096, 0, &small));
    CHECK_STATUS(fl_export(sa, small, &h), FL_ERR_UNSUPPORTED);
    CHECK_MENTIONS("no IPC");
    CHECK_STATUS(fl_import(sa, &h, &again), FL_ERR_UNSUPPORTED);
    fl_allocator_destroy(sa);
    fl_device_destroy(sim);
}

/* ---- any block: the physical allocations under it (fl_export_pieces) ---------------- */

#define PIECES_BLOCK (40 * MiB + 100) /* over two chunks, or over pages of their own */
#define MAX_PIECES 64

/* The pieces' sizes, offset and size, then their descriptors as SCM_RIGHTS. */
typedef struct pieces_msg {
    uint32_t n;
    uint64_t offset, size, sizes[MAX_PIECES];
} pieces_msg;

static int send_pieces(int sock, const fl_ipc_piece *p, uint32_t n, uint64_t offset, uint64_t size)
{
    pieces_msg msg = {n, offset, size, {0}};
    for (uint32_t i = 0; i < n; i++)
        msg.sizes[i] = p[i].size;
    struct iovec iov = {&msg, sizeof msg};
    union {
        char buf[CMSG_SPACE(MAX_PIECES * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.buf;
    m.msg_controllen = CMSG_SPACE(n * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n * sizeof(int));
    for (uint32_t i = 0; i < n; i++)
        memcpy(CMSG_DATA(c) + i * sizeof(int), &p[i].fd, sizeof(int));
    return sendmsg(sock, &m, 0) == (ssize_t)sizeof msg ? 0 : -1;
}

static int recv_pieces(int sock, fl_ipc_piece *p, uint32_t *n, uint64_t *offset, uint64_t *size)
{
    pieces_msg msg;
    struct iovec iov = {&msg, sizeof msg};
    union {
        char buf[CMSG_SPACE(MAX_PIECES * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof ctl.buf;
    if (recvmsg(sock, &m, 0) != (ssize_t)sizeof msg || msg.n == 0 || msg.n > MAX_PIECES)
        return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(msg.n * sizeof(int)))
        return -1;
    for (uint32_t i = 0; i < msg.n; i++) {
        memcpy(&p[i].fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        p[i].size = msg.sizes[i];
    }
    *n = msg.n;
    *offset = msg.offset;
    *size = msg.size;
    return 0;
}

/* B: imports A's block from its pieces, reads what A wrote, writes its own pattern. */
static int pieces_b(int sock)
{
    load_fake();
    fl_device *d = cuda_dev();
    fl_allocator *a = fl_test_allocator("policy:fragless,top:0", d);
    fl_ipc_piece p[MAX_PIECES];
    uint32_t n = 0;
    uint64_t offset = 0, size = 0, addr = 0;
    CHECK(recv_pieces(sock, p, &n, &offset, &size) == 0);
    CHECK_OK(fl_import_pieces(a, p, n, offset, size, &addr));
    for (uint32_t i = 0; i < n; i++)
        close(p[i].fd);
    CHECK(addr != 0 && size == PIECES_BLOCK && holds(addr, size, 5));
    CHECK(fake.fakecuda_device_access(0, addr, size, 1) == CUDA_SUCCESS);
    fill(addr, size, 6);
    char ok = fl_test_failures ? 'n' : 'y';
    CHECK(write(sock, &ok, 1) == 1);
    char done;
    CHECK(read(sock, &done, 1) == 1);
    CHECK_OK(fl_import_close(a, addr));
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    return fl_test_failures ? 1 : 0;
}

/* A block that fl_export refuses (over several physical allocations) shared whole: at the
 * default share of chunks (two 32 MiB chunks) and under a small limit (pages of their
 * own), with another process reading and writing it. Then what is refused: too many
 * pieces for max (nothing left open), a block not live, bad arguments. */
static void pieces_case(const char *conf, uint32_t want_min)
{
    int sock = -1;
    pid_t pid = start_peer(pieces_b, &sock);
    load_fake();
    fl_device *d = cuda_dev();
    fl_allocator *a = fl_test_allocator(conf, d);
    uint64_t addr = 0, offset = 1, size = 0;
    CHECK_OK(fl_alloc(a, PIECES_BLOCK, 0, &addr));
    fill(addr, PIECES_BLOCK, 5);
    fl_ipc_handle h;
    CHECK_STATUS(fl_export(a, addr, &h), FL_ERR_UNSUPPORTED);
    fl_ipc_piece p[MAX_PIECES];
    uint32_t n = 0;
    CHECK_OK(fl_export_pieces(a, addr, p, MAX_PIECES, &n, &offset, &size));
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += p[i].size;
    CHECK(n >= want_min && size == PIECES_BLOCK && offset + size <= total && total - (offset + size) < 32 * MiB);
    CHECK(send_pieces(sock, p, n, offset, size) == 0);
    for (uint32_t i = 0; i < n; i++)
        close(p[i].fd);
    char ok = 0;
    CHECK(read(sock, &ok, 1) == 1 && ok == 'y');
    CHECK(holds(addr, PIECES_BLOCK, 6)); /* B's data, through A's own mapping */
    CHECK(write(sock, "d", 1) == 1);
    end_peer(pid, sock);
    /* Too many pieces for max: refused, every descriptor made closed again. */
    int probe = dup(0), next = -1;
    close(probe);
    uint32_t m = 7;
    CHECK_STATUS(fl_export_pieces(a, addr, p, n - 1, &m, &offset, &size), FL_ERR_UNSUPPORTED);
    CHECK(m == 0);
    next = dup(0);
    CHECK(next == probe); /* the lowest free descriptor is the same: none was left open */
    close(next);
    CHECK_STATUS(fl_export_pieces(a, addr, p, 0, &m, &offset, &size), FL_ERR_INVALID);
    CHECK_STATUS(fl_import_pieces(a, p, 0, 0, 1, &size), FL_ERR_INVALID);
    CHECK_OK(fl_free(a, addr));
    CHECK_STATUS(fl_export_pieces(a, addr, p, MAX_PIECES, &m, &offset, &size), FL_ERR_NOT_FOUND);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

static void test_pieces(void)
{
    pieces_case("policy:fragless,top:0", 2);              /* two chunks */
    pieces_case("policy:fragless,limit:64MiB,top:0", 21); /* pages of their own */
}

static void run_case(const char *what, void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("FAKECUDA_CAPACITY", "256M", 1);
        fl_test_failures = 0;
        fn();
        printf("%s: %s\n", what, fl_test_failures ? "FAILED" : "ok");
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void)
{
    if (!fake_path[0])
        fl_test_skip("FAKECUDA_PATH is not defined: the CUDA driver test double was not built");
    void *lib = dlopen(fake_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        fl_test_skip("the CUDA driver test double cannot be loaded");
    dlclose(lib);
    run_case("two processes", test_two_processes);
    run_case("ranges", test_ranges);
    run_case("pieces", test_pieces);
    return fl_test_done("test_ipc");
}
