/* CUDA IPC (cudaIpcGetMemHandle, cudaIpcOpenMemHandle, cudaIpcCloseMemHandle) of the
 * memory libfragless_preload.so serves.
 *
 * A legacy handle shares the whole driver allocation holding the pointer and opens at that
 * allocation's start in the importer (the driver gives every address of an allocation
 * the same handle: UCX issue 11724, numba pull request 3310; the importer's pointer is the
 * allocation's base: NVIDIA/Fuser pull request 3799), and only cuMemAlloc's memory has
 * one (cudarc issue 521). The program's contract is cudaMalloc's: its pointer is an
 * allocation's start, and the importer reads the block there. So, for a live block
 * fragless handed out:
 *   - one that starts a cuMemAlloc allocation (policy:nocache, a cca segment's first
 *     block) goes to the runtime: its legacy handle opens at the block;
 *   - one on fragless's virtual memory (the fragless and cca-expandable policies) gets a
 *     handle of fragless's own: the exporting process, the block, a random token and a
 *     keyed hash of them (SipHash-2-4 under a key only the exporter knows), so that one
 *     handle does not open another block. The
 *     importer, also under `fragless run`, asks the exporter for the block over a Unix
 *     socket (abstract name, this process's pid and token; the peer must be this user:
 *     SO_PEERCRED), gets the physical allocations under the block as file descriptors
 *     (SCM_RIGHTS) and maps them one after another as they lie in the exporter, on its
 *     current device (as the runtime maps a handle). The exporter's side is a thread started at the first
 *     such export (signals blocked), which answers one request per connection;
 *   - an address inside fragless's virtual memory that is no block's start gets a
 *     handle of fragless's own for the one physical allocation holding it, opened at that
 *     allocation's start: a legacy handle's semantics, which programs that export the
 *     start cuMemGetAddressRange gives them rely on (WIRE_MAPPING);
 *   - one inside a larger cuMemAlloc allocation (policy:cca) is refused with
 *     cudaErrorNotSupported and a line on stderr: its legacy handle would open at the
 *     segment's start, and the importer would read another block's bytes with no error.
 * A pointer fragless did not hand out, and a handle that is not fragless's, go to the
 * runtime. As with CUDA's own IPC, memory the exporter frees while an importer maps it
 * may be handed out again; what the importer maps stays valid (it holds the physical
 * allocations) until cudaIpcCloseMemHandle. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <dlfcn.h>

#include "allocator/allocator.h"
#include "frontend/frontend.h"

#include "preload/preload.h"

/* cudaIpcMemHandle_t: 64 opaque bytes, passed by value to the open. */
typedef struct cudaIpcMemHandle_st {
    char reserved[64];
} cudaIpcMemHandle_t;

FL_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *ptr);
FL_EXPORT cudaError_t cudaIpcOpenMemHandle(void **ptr, cudaIpcMemHandle_t handle, unsigned int flags);
FL_EXPORT cudaError_t cudaIpcCloseMemHandle(void *ptr);

typedef cudaError_t (*ipc_get_fn)(cudaIpcMemHandle_t *, void *);
typedef cudaError_t (*ipc_open_fn)(void **, cudaIpcMemHandle_t, unsigned int);
typedef cudaError_t (*ipc_close_fn)(void *);

static struct {
    ipc_get_fn get;
    ipc_open_fn open;
    ipc_close_fn close;
} real;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void resolve_real(void)
{
    real.get = (ipc_get_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaIpcGetMemHandle");
    real.open = (ipc_open_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaIpcOpenMemHandle");
    real.close = (ipc_close_fn)(uintptr_t)dlsym(RTLD_NEXT, "cudaIpcCloseMemHandle");
}

/* fragless's handle, in the 64 bytes of cudaIpcMemHandle_t (the rest zero). */
#define WIRE_MAGIC UINT64_C(0x3143504953534c46) /* "FLSSIPC1" */
typedef struct wire {
    uint64_t magic;
    int32_t pid, device; /* the exporter, and the block's device ordinal there (its allocator) */
    uint64_t token;      /* the exporter's: a handle of another process of that pid fails */
    uint64_t addr, size; /* the block (WIRE_BLOCK), or an address inside a mapping (WIRE_MAPPING) */
    int32_t kind;
    uint64_t mac;        /* wire_mac: what the exporter alone can make for these fields */
} wire;

/* What a handle shares: a block, opened at its start (cudaMalloc's contract: the pointer
 * exported is a block fragless handed out); or, for an address that is no block's
 * start, the one physical allocation holding it, opened at that allocation's start, as a
 * legacy handle is (programs that find the allocation with cuMemGetAddressRange or
 * CU_POINTER_ATTRIBUTE_RANGE_START_ADDR and export its start, and add the offset
 * themselves: vLLM's custom all-reduce, UCX, tensorpipe, MPICH, numba). */
enum { WIRE_BLOCK = 1, WIRE_MAPPING = 2 };

_Static_assert(sizeof(wire) <= sizeof(((cudaIpcMemHandle_t *)0)->reserved), "fragless's handle fits CUDA's");

/* What an importer asks, and the exporter's answer (then the pieces' sizes; their
 * descriptors ride along as SCM_RIGHTS). */
typedef struct request {
    uint64_t magic, token, addr, size;
    int32_t device, kind;
    uint64_t mac;
} request;
typedef struct reply {
    int32_t status; /* FL_OK, or the fl_status of the failure, with why */
    uint32_t n;
    uint64_t offset, size;
    char why[256];
} reply;

static void socket_name(struct sockaddr_un *a, socklen_t *len, int pid, uint64_t token)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    /* Abstract: a leading NUL, no file to clean up. */
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "fragless-ipc-%d-%016llx", pid, (unsigned long long)token);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* ---- the exporter's side ------------------------------------------------------------ */

static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t server_pid; /* the process whose thread serves (a forked child has none) */
static uint64_t server_token;
static uint64_t server_key[2]; /* wire_mac's, random per server: never leaves the process */

/* SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) of n
 * little-endian 64-bit words under key k: a handle's fields authenticated, so that the
 * holder of one handle cannot make another (a different block or mapping) that opens. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3)                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = ROTL(v1, 13), v1 ^= v0, v0 = ROTL(v0, 32);                                  \
        v2 += v3, v3 = ROTL(v3, 16), v3 ^= v2;                                                     \
        v0 += v3, v3 = ROTL(v3, 21), v3 ^= v0;                                                     \
        v2 += v1, v1 = ROTL(v1, 17), v1 ^= v2, v2 = ROTL(v2, 32);                                  \
    } while (0)

static uint64_t siphash24(const uint64_t k[2], const uint64_t *m, size_t n)
{
    uint64_t v0 = k[0] ^ UINT64_C(0x736f6d6570736575), v1 = k[1] ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = k[0] ^ UINT64_C(0x6c7967656e657261), v3 = k[1] ^ UINT64_C(0x7465646279746573);
    for (size_t i = 0; i < n; i++) {
        v3 ^= m[i];
        SIPROUND(v0, v1, v2, v3);
        SIPROUND(v0, v1, v2, v3);
        v0 ^= m[i];
    }
    uint64_t b = (uint64_t)(n * 8) << 56; /* the length; no bytes left over */
    v3 ^= b;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < 4; i++)
        SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t wire_mac(uint64_t token, uint64_t addr, uint64_t size, int32_t device, int32_t kind)
{
    uint64_t m[4] = {token, addr, size, (uint64_t)(uint32_t)device | (uint64_t)(uint32_t)kind << 32};
    return siphash24(server_key, m, 4);
}
static int server_fd = -1; /* its listening socket */

/* A fork waits for a server being started; the child, which has no server thread, drops
 * the listening socket it inherited and starts its own at its first export. */
static void server_prepare(void) { pthread_mutex_lock(&server_lock); }
static void server_parent(void) { pthread_mutex_unlock(&server_lock); }
static void server_child(void)
{
    if (server_fd >= 0)
        close(server_fd);
    server_fd = -1;
    server_pid = 0;
    pthread_mutex_unlock(&server_lock);
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(server_prepare, server_parent, server_child); }

static uint64_t random_token(void)
{
    uint64_t t = 0;
    if (getrandom(&t, sizeof t, GRND_NONBLOCK) != (ssize_t)sizeof t) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 17) ^ (uintptr_t)&t;
    }
    return t ? t : 1;
}

/* One request on connection c: the block's pieces, or why not. */
static void serve_one(int c)
{
    reply rep;
    memset(&rep, 0, sizeof rep);
    request req;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    fl_ipc_piece pieces[FLI_IPC_MAX_PIECES];
    fl_allocator *a = NULL;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.uid != geteuid()) {
        rep.status = FL_ERR_INVALID;
        snprintf(rep.why, sizeof rep.why, "the importing process runs as another user");
    } else if (recv(c, &req, sizeof req, 0) != (ssize_t)sizeof req || req.magic != WIRE_MAGIC ||
               req.token != server_token || req.mac != wire_mac(req.token, req.addr, req.size, req.device, req.kind)) {
        rep.status = FL_ERR_INVALID;
        snprintf(rep.why, sizeof rep.why, "not a request for a handle this process made");
    } else if (req.device < 0 || req.device >= FL_FRONTEND_MAX_DEVICES || !(a = fli_frontend_existing(req.device))) {
        rep.status = FL_ERR_NOT_FOUND;
        snprintf(rep.why, sizeof rep.why, "device %d has no allocator here", (int)req.device);
    } else {
        fl_status s;
        if (req.kind == WIRE_MAPPING) {
            s = fli_allocator_export_mapping(a, req.addr, &pieces[0]);
            rep.n = s == FL_OK;
            rep.offset = 0; /* opened at the allocation's start */
            rep.size = rep.n ? pieces[0].size : 0;
        } else {
            s = fli_allocator_export("cudaIpcOpenMemHandle", a, req.addr, req.size, pieces, FLI_IPC_MAX_PIECES, &rep.n,
                                     &rep.offset, &rep.size);
        }
        rep.status = s;
        if (s != FL_OK)
            snprintf(rep.why, sizeof rep.why, "%s", fl_last_error());
    }
    uint64_t sizes[FLI_IPC_MAX_PIECES];
    for (uint32_t i = 0; i < rep.n; i++)
        sizes[i] = pieces[i].size;
    struct iovec iov[2] = {{&rep, sizeof rep}, {sizes, rep.n * sizeof sizes[0]}};
    union {
        char buf[CMSG_SPACE(FLI_IPC_MAX_PIECES * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = rep.n ? 2 : 1};
    if (rep.n) {
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(rep.n * sizeof(int));
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(rep.n * sizeof(int));
        for (uint32_t i = 0; i < rep.n; i++)
            memcpy(CMSG_DATA(h) + i * sizeof(int), &pieces[i].fd, sizeof(int));
    }
    (void)sendmsg(c, &m, MSG_NOSIGNAL); /* an importer gone meanwhile gets nothing */
    for (uint32_t i = 0; i < rep.n; i++)
        close(pieces[i].fd); /* sent: the importer holds its own copies */
}

static void *serve(void *arg)
{
    int l = (int)(intptr_t)arg;
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) { /* until some are given back */
                struct timespec pause = {0, 10 * 1000 * 1000};
                nanosleep(&pause, NULL);
                continue;
            }
            fprintf(stderr, "fragless: CUDA IPC: the exporting side stops (accept: %s)\n", strerror(errno));
            return NULL;
        }
        struct timeval tv = {5, 0}; /* an importer that connects and says nothing */
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        serve_one(c);
        close(c);
    }
}

/* This process's server, started once per process (a forked child starts its own);
 * w gets its token and, under the same lock, its mac (the running server's key). 0, or
 * -1 with why on stderr. */
static int server_seal(wire *w)
{
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&server_lock);
    int rc = 0;
    if (server_pid != getpid()) {
        uint64_t t = random_token();
        struct sockaddr_un addr;
        socklen_t len;
        socket_name(&addr, &len, (int)getpid(), t);
        int l = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        pthread_t th;
        pthread_attr_t attr;
        sigset_t all, old;
        sigfillset(&all);
        int e = l < 0 ? errno : bind(l, (struct sockaddr *)&addr, len) != 0 || listen(l, 64) != 0 ? errno : 0;
        uint64_t old_token = server_token, old_key[2] = {server_key[0], server_key[1]};
        server_token = t; /* before the thread starts: what it checks requests with */
        server_key[0] = random_token();
        server_key[1] = random_token();
        if (!e && (e = pthread_attr_init(&attr)) == 0) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signal of the program's */
            e = pthread_create(&th, &attr, serve, (void *)(intptr_t)l);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            pthread_attr_destroy(&attr);
        }
        if (e) {
            fprintf(stderr, "fragless: CUDA IPC: cannot serve exports from pid %d: %s\n", (int)getpid(), strerror(e));
            if (l >= 0)
                close(l);
            server_token = old_token;
            server_key[0] = old_key[0];
            server_key[1] = old_key[1];
            rc = -1;
        } else {
            server_pid = getpid();
            server_fd = l;
        }
    }
    w->token = server_token;
    w->mac = wire_mac(w->token, w->addr, w->size, w->device, w->kind);
    pthread_mutex_unlock(&server_lock);
    return rc;
}

/* A handle of fragless's own for what (kind) lies at addr on device dev, the server
 * started if need be. */
static cudaError_t make_handle(cudaIpcMemHandle_t *handle, int dev, uint64_t addr, uint64_t size, int32_t kind)
{
    wire w = {WIRE_MAGIC, (int32_t)getpid(), dev, 0, addr, size, kind, 0};
    if (server_seal(&w) != 0)
        return cudaErrorUnknown;
    memset(handle, 0, sizeof *handle);
    memcpy(handle->reserved, &w, sizeof w);
    return cudaSuccess;
}

static cudaError_t refuse(const char *fn, void *ptr, int dev, const char *why)
{
    fprintf(stderr, "fragless: %s(%p) on device %d: %s\n", fn, ptr, dev, why);
    return cudaErrorNotSupported;
}

/* An address that is no live block's start: inside one of fragless's mappings (virtual
 * memory), a handle of that one physical allocation, opened at its start; anywhere else
 * (a cuMemAlloc allocation, fragless's cca segments included, whose legacy handle is
 * exactly that; memory from elsewhere), the runtime's. */
static cudaError_t mapping_handle(cudaIpcMemHandle_t *handle, void *ptr)
{
    uint64_t addr = (uint64_t)(uintptr_t)ptr;
    for (int d = 0; ptr && handle && d < FL_FRONTEND_MAX_DEVICES; d++) {
        fl_allocator *a = fli_frontend_existing(d);
        fl_ipc_piece piece;
        if (!a || fli_allocator_export_mapping(a, addr, &piece) != FL_OK)
            continue;
        close(piece.fd); /* it exports: the importer gets its own at the open */
        return make_handle(handle, d, addr, piece.size, WIRE_MAPPING);
    }
    return real.get ? real.get(handle, ptr) : fli_preload_not_ours("cudaIpcGetMemHandle", ptr);
}

FL_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *ptr)
{
    pthread_once(&real_once, resolve_real);
    fl_allocator *a = NULL;
    uint64_t base = 0, addr = (uint64_t)(uintptr_t)ptr;
    int dev = ptr && handle ? fli_preload_owner(ptr, &a) : -1;
    if (dev < 0)
        return mapping_handle(handle, ptr);
    fl_status s = fli_allocator_legacy_ipc_base(a, addr, &base);
    if (s == FL_OK && base == addr) /* the start of a cuMemAlloc allocation: the runtime's */
        return real.get ? real.get(handle, ptr) : fli_preload_not_ours("cudaIpcGetMemHandle", ptr);
    if (s == FL_OK) {
        char why[512];
        snprintf(why, sizeof why, "the block lies %llu bytes into a larger cuMemAlloc allocation of fragless's "
                 "(policy:cca), whose legacy IPC handle would open at that allocation's start; under fragless, CUDA "
                 "IPC serves blocks of virtual memory (the default policy) and blocks that start a cuMemAlloc "
                 "allocation (policy:nocache)", (unsigned long long)(addr - base));
        return refuse("cudaIpcGetMemHandle", ptr, dev, why);
    }
    /* Virtual memory: check that it exports now (handles made shareable, not too many
     * pieces), so that a failure is the exporter's error, not a late one in the importer. */
    fl_ipc_piece pieces[FLI_IPC_MAX_PIECES];
    uint32_t n = 0;
    uint64_t offset = 0, size = 0;
    s = fli_allocator_export("cudaIpcGetMemHandle", a, addr, 0, pieces, FLI_IPC_MAX_PIECES, &n, &offset, &size);
    for (uint32_t i = 0; i < n; i++)
        close(pieces[i].fd);
    if (s != FL_OK)
        return refuse("cudaIpcGetMemHandle", ptr, dev, fl_last_error());
    return make_handle(handle, dev, addr, size, WIRE_BLOCK);
}

/* ---- the importer's side ------------------------------------------------------------ */

/* Asks the exporter named in w for its block: its pieces' descriptors in fds (n of them)
 * and sizes, *offset, *size. 0, or -1 with why in err. */
static int fetch(const wire *w, int *fds, uint64_t *sizes, uint32_t *n, uint64_t *offset, uint64_t *size, char *err,
                 size_t errn)
{
    *n = 0;
    struct sockaddr_un addr;
    socklen_t len;
    socket_name(&addr, &len, w->pid, w->token);
    int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&addr, len) != 0) {
        snprintf(err, errn, "the exporting process %d does not answer (%s): it has ended, or it is not under fragless",
                 (int)w->pid, strerror(errno));
        if (c >= 0)
            close(c);
        return -1;
    }
    /* The name is no secret (/proc/net/unix lists it): once the exporter is gone another
     * process may have bound it. Only the exporter itself, of this user, is asked. */
    struct ucred cred = {0, (uid_t)-1, (gid_t)-1};
    socklen_t cl = sizeof cred;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cred.pid != w->pid || cred.uid != geteuid()) {
        snprintf(err, errn, "the socket of process %d is held by another process (pid %d, uid %d)", (int)w->pid,
                 (int)cred.pid, (int)cred.uid);
        close(c);
        return -1;
    }
    struct timeval tv = {10, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    request req = {WIRE_MAGIC, w->token, w->addr, w->size, w->device, w->kind, w->mac};
    reply rep;
    memset(&rep, 0, sizeof rep);
    struct iovec iov[2] = {{&rep, sizeof rep}, {sizes, FLI_IPC_MAX_PIECES * sizeof sizes[0]}};
    union {
        char buf[CMSG_SPACE(FLI_IPC_MAX_PIECES * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t got = send(c, &req, sizeof req, MSG_NOSIGNAL) == (ssize_t)sizeof req ? recvmsg(c, &m, MSG_CMSG_CLOEXEC) : -1;
    int e = errno;
    close(c);
    uint32_t nfd = 0;
    for (struct cmsghdr *h = got > 0 ? CMSG_FIRSTHDR(&m) : NULL; h; h = CMSG_NXTHDR(&m, h))
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfd < FLI_IPC_MAX_PIECES; i++)
                memcpy(&fds[nfd++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
    int ok = got >= (ssize_t)sizeof rep && rep.status == FL_OK && rep.n == nfd && rep.n > 0 &&
             rep.n <= FLI_IPC_MAX_PIECES && (size_t)got == sizeof rep + rep.n * sizeof sizes[0] &&
             !(m.msg_flags & (MSG_TRUNC | MSG_CTRUNC));
    if (!ok) {
        if (got < 0)
            snprintf(err, errn, "no answer from the exporting process %d (%s)", (int)w->pid, strerror(e));
        else if (got >= (ssize_t)sizeof rep && rep.status != FL_OK)
            snprintf(err, errn, "the exporting process %d refused: %.*s", (int)w->pid, (int)sizeof rep.why, rep.why);
        else
            snprintf(err, errn, "the exporting process %d answered %zd bytes and %u descriptors: not an answer",
                     (int)w->pid, got, nfd);
        while (nfd)
            close(fds[--nfd]);
        return -1;
    }
    *n = nfd;
    *offset = rep.offset;
    *size = rep.size;
    return 0;
}

FL_EXPORT cudaError_t cudaIpcOpenMemHandle(void **ptr, cudaIpcMemHandle_t handle, unsigned int flags)
{
    pthread_once(&real_once, resolve_real);
    wire w;
    memcpy(&w, handle.reserved, sizeof w);
    if (w.magic != WIRE_MAGIC)
        return real.open ? real.open(ptr, handle, flags) : cudaErrorInvalidValue;
    if (!ptr)
        return cudaErrorInvalidValue;
    char err[512];
    if (w.pid == (int32_t)getpid()) { /* as the runtime: a process does not open its own handles */
        fprintf(stderr, "fragless: cudaIpcOpenMemHandle: the handle of 0x%llx was made by this process\n",
                (unsigned long long)w.addr);
        return cudaErrorInvalidValue;
    }
    int fds[FLI_IPC_MAX_PIECES];
    uint64_t sizes[FLI_IPC_MAX_PIECES], offset = 0, size = 0, addr = 0;
    uint32_t n = 0;
    /* Mapped on the current device, as the runtime maps a handle (the memory stays on the
     * exporter's GPU; another GPU reaches it as a peer, or the mapping is refused). */
    int dev = fli_preload_current_device();
    fl_allocator *a = dev >= 0 && dev < FL_FRONTEND_MAX_DEVICES ? fli_frontend_allocator(dev) : NULL;
    if (!a)
        return cudaErrorInvalidDevice; /* why is on stderr */
    if (fetch(&w, fds, sizes, &n, &offset, &size, err, sizeof err) != 0) {
        fprintf(stderr, "fragless: cudaIpcOpenMemHandle(0x%llx of process %d): %s\n", (unsigned long long)w.addr,
                (int)w.pid, err);
        return cudaErrorInvalidValue;
    }
    fl_ipc_piece pieces[FLI_IPC_MAX_PIECES];
    for (uint32_t i = 0; i < n; i++)
        pieces[i] = (fl_ipc_piece){fds[i], sizes[i]};
    fl_status s = fl_import_pieces(a, pieces, n, offset, size, &addr);
    for (uint32_t i = 0; i < n; i++)
        close(fds[i]);
    if (s != FL_OK) {
        fprintf(stderr, "fragless: cudaIpcOpenMemHandle(0x%llx of process %d): %s\n", (unsigned long long)w.addr,
                (int)w.pid, fl_last_error());
        return s == FL_ERR_NOMEM || s == FL_ERR_OOM ? cudaErrorMemoryAllocation : cudaErrorInvalidValue;
    }
    *ptr = (void *)(uintptr_t)addr;
    return cudaSuccess;
}

FL_EXPORT cudaError_t cudaIpcCloseMemHandle(void *ptr)
{
    pthread_once(&real_once, resolve_real);
    for (int d = 0; ptr && d < FL_FRONTEND_MAX_DEVICES; d++) {
        fl_allocator *a = fli_frontend_existing(d);
        if (a && fl_import_close(a, (uint64_t)(uintptr_t)ptr) == FL_OK)
            return cudaSuccess;
    }
    return real.close ? real.close(ptr) : cudaErrorInvalidValue;
}
