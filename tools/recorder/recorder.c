/* LD_PRELOAD allocation recorder: logs posix_memalign/free pairs of one alignment (PyTorch's
 * CPU tensor storages) as an RMM CSV log named by FRAGLESS_RECORD; pass-through otherwise.
 * Owns the bootstrap of the real allocator symbols, the live-pointer table and the log buffer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REC_EXPORT __attribute__((visibility("default")))
/* initial-exec: a preloaded library sits in static TLS, and the default model could call
 * __tls_get_addr, which may allocate, from inside our own malloc-family hooks */
#define REC_TLS _Thread_local __attribute__((tls_model("initial-exec")))

#define REC_BUF_BYTES (1u << 20)
#define REC_ROW_MAX 128u /* longest possible CSV row, with room to spare */
#define REC_BOOT_BYTES (64u * 1024u)
#define REC_TABLE_MIN_SLOTS (1u << 16)

typedef int (*rec_posix_memalign_fn)(void **, size_t, size_t);
typedef void (*rec_free_fn)(void *);

struct rec_slot {
    uintptr_t key; /* 0 marks an empty slot: no allocator returns a null storage */
    size_t size;
};

static rec_posix_memalign_fn rec_real_posix_memalign;
static rec_free_fn rec_real_free;
static atomic_int rec_resolved;
static REC_TLS int rec_in_dlsym;
static REC_TLS long rec_tid;

/* dlsym may allocate before the real functions are known; those requests are served from here
 * and must never reach the real free */
static _Alignas(4096) unsigned char rec_boot_buf[REC_BOOT_BYTES];
static atomic_size_t rec_boot_used;

static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int rec_active;
static int rec_unbuffered; /* set once the destructor has run: later events are written at once */
static int rec_fd = -1;
static size_t rec_align = 64;
static struct timespec rec_t0;
static int rec_t0_set;
static char rec_buf[REC_BUF_BYTES];
static size_t rec_buf_len;

static struct rec_slot *rec_table;
static size_t rec_table_slots; /* power of two */
static size_t rec_table_used;

static void rec_resolve(void)
{
    if (atomic_load_explicit(&rec_resolved, memory_order_acquire))
        return;
    rec_in_dlsym = 1;
    void *pm = dlsym(RTLD_NEXT, "posix_memalign");
    void *fr = dlsym(RTLD_NEXT, "free");
    rec_in_dlsym = 0;
    /* memcpy: ISO C has no conversion between object and function pointers */
    memcpy(&rec_real_posix_memalign, &pm, sizeof pm);
    memcpy(&rec_real_free, &fr, sizeof fr);
    atomic_store_explicit(&rec_resolved, 1, memory_order_release);
}

static int rec_boot_alloc(void **out, size_t alignment, size_t size)
{
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0)
        return EINVAL;
    size_t need = size + alignment;
    size_t off = atomic_fetch_add(&rec_boot_used, need);
    if (off > REC_BOOT_BYTES || need > REC_BOOT_BYTES - off)
        return ENOMEM;
    uintptr_t base = (uintptr_t)&rec_boot_buf[off];
    *out = (void *)((base + alignment - 1) & ~(uintptr_t)(alignment - 1));
    return 0;
}

static int rec_is_boot(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    return u >= (uintptr_t)rec_boot_buf && u < (uintptr_t)rec_boot_buf + REC_BOOT_BYTES;
}

static size_t rec_home(uintptr_t key, size_t slots)
{
    /* storages are 64-aligned, so the low key bits carry nothing: the Fibonacci multiply mixes
     * the informative bits upward, and the index comes from above them */
    uint64_t h = (uint64_t)key * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 17) & (slots - 1);
}

static struct rec_slot *rec_table_map(size_t slots)
{
    void *m = mmap(NULL, slots * sizeof(struct rec_slot), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : (struct rec_slot *)m;
}

static void rec_table_put_raw(struct rec_slot *t, size_t slots, uintptr_t key, size_t size)
{
    size_t i = rec_home(key, slots);
    while (t[i].key != 0)
        i = (i + 1) & (slots - 1);
    t[i].key = key;
    t[i].size = size;
}

static int rec_table_grow(void)
{
    size_t slots = rec_table_slots * 2;
    struct rec_slot *t = rec_table_map(slots);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < rec_table_slots; i++)
        if (rec_table[i].key != 0)
            rec_table_put_raw(t, slots, rec_table[i].key, rec_table[i].size);
    munmap(rec_table, rec_table_slots * sizeof(struct rec_slot));
    rec_table = t;
    rec_table_slots = slots;
    return 0;
}

static size_t rec_table_find(uintptr_t key)
{
    size_t i = rec_home(key, rec_table_slots);
    while (rec_table[i].key != 0) {
        if (rec_table[i].key == key)
            return i;
        i = (i + 1) & (rec_table_slots - 1);
    }
    return SIZE_MAX;
}

/* backward-shift deletion keeps probe chains intact without tombstones, so a long run with
 * millions of alloc/free pairs never degrades */
static void rec_table_erase_at(size_t i)
{
    size_t mask = rec_table_slots - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (rec_table[j].key == 0)
            break;
        size_t h = rec_home(rec_table[j].key, rec_table_slots);
        if (((j - h) & mask) >= ((j - i) & mask)) {
            rec_table[i] = rec_table[j];
            i = j;
        }
    }
    rec_table[i].key = 0;
    rec_table[i].size = 0;
    rec_table_used--;
}

static void rec_write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(rec_fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* a failing disk must not take the traced program down */
        }
        p += w;
        n -= (size_t)w;
    }
}

static void rec_flush(void)
{
    if (rec_buf_len > 0 && rec_fd >= 0)
        rec_write_all(rec_buf, rec_buf_len);
    rec_buf_len = 0;
}

static char *rec_put_str(char *o, const char *s)
{
    while (*s)
        *o++ = *s++;
    return o;
}

static char *rec_put_dec(char *o, uint64_t v, int min_digits)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n < min_digits)
        tmp[n++] = '0';
    while (n > 0)
        *o++ = tmp[--n];
    return o;
}

static char *rec_put_hex(char *o, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v != 0);
    while (n > 0)
        *o++ = tmp[--n];
    return o;
}

/* caller holds rec_lock; the timestamp is taken under it so rows are in time order */
static void rec_emit(const char *action, uintptr_t ptr, size_t size)
{
    if (rec_tid == 0)
        rec_tid = (long)syscall(SYS_gettid);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!rec_t0_set) {
        /* the interpreter and library start-up before the first storage is not part of the
         * workload; starting the clock here matches the other traces' time base */
        rec_t0 = now;
        rec_t0_set = 1;
    }
    int64_t ns = (int64_t)(now.tv_sec - rec_t0.tv_sec) * 1000000000
                 + (now.tv_nsec - rec_t0.tv_nsec);
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    uint64_t secs = us / 1000000;

    if (REC_BUF_BYTES - rec_buf_len < REC_ROW_MAX)
        rec_flush();
    char *o = rec_buf + rec_buf_len;
    o = rec_put_dec(o, (uint64_t)rec_tid, 1);
    *o++ = ',';
    o = rec_put_dec(o, secs / 3600, 2);
    *o++ = ':';
    o = rec_put_dec(o, secs / 60 % 60, 2);
    *o++ = ':';
    o = rec_put_dec(o, secs % 60, 2);
    *o++ = '.';
    o = rec_put_dec(o, us % 1000000, 6);
    *o++ = ',';
    o = rec_put_str(o, action);
    o = rec_put_str(o, ",0x");
    o = rec_put_hex(o, (uint64_t)ptr);
    *o++ = ',';
    o = rec_put_dec(o, (uint64_t)size, 1);
    o = rec_put_str(o, ",0\n");
    rec_buf_len = (size_t)(o - rec_buf);
    if (rec_unbuffered)
        rec_flush();
}

static void rec_record_alloc(void *p, size_t size)
{
    uintptr_t key = (uintptr_t)p;
    pthread_mutex_lock(&rec_lock);
    if (!atomic_load_explicit(&rec_active, memory_order_relaxed))
        goto out;
    size_t i = rec_table_find(key);
    if (i != SIZE_MAX) {
        /* the old storage left through a path we do not see (realloc); close its lifetime here
         * so the log never shows two live blocks at one address */
        rec_emit("free", key, rec_table[i].size);
        rec_table_erase_at(i);
    }
    if ((rec_table_used + 1) * 10 > rec_table_slots * 7 && rec_table_grow() != 0)
        goto out; /* out of address space for the table: drop the event rather than crash */
    rec_table_put_raw(rec_table, rec_table_slots, key, size);
    rec_table_used++;
    rec_emit("allocate", key, size);
out:
    pthread_mutex_unlock(&rec_lock);
}

/* logged before the real free: once the block is back, another thread may get the same address
 * and its allocate row must come after this free row */
static void rec_record_free(void *p)
{
    uintptr_t key = (uintptr_t)p;
    pthread_mutex_lock(&rec_lock);
    if (atomic_load_explicit(&rec_active, memory_order_relaxed)) {
        size_t i = rec_table_find(key);
        if (i != SIZE_MAX) {
            rec_emit("free", key, rec_table[i].size);
            rec_table_erase_at(i);
        }
    }
    pthread_mutex_unlock(&rec_lock);
}

REC_EXPORT int posix_memalign(void **memptr, size_t alignment, size_t size)
{
    if (!atomic_load_explicit(&rec_resolved, memory_order_acquire)) {
        if (rec_in_dlsym)
            return rec_boot_alloc(memptr, alignment, size);
        rec_resolve();
    }
    if (rec_real_posix_memalign == NULL)
        return ENOMEM;
    int rc = rec_real_posix_memalign(memptr, alignment, size);
    if (rc == 0 && size > 0 && alignment == rec_align
        && atomic_load_explicit(&rec_active, memory_order_relaxed))
        rec_record_alloc(*memptr, size);
    return rc;
}

REC_EXPORT void free(void *p)
{
    if (p == NULL || rec_is_boot(p))
        return;
    if (!atomic_load_explicit(&rec_resolved, memory_order_acquire)) {
        if (rec_in_dlsym)
            return; /* leaking a block freed inside dlsym beats recursing into it */
        rec_resolve();
    }
    if (atomic_load_explicit(&rec_active, memory_order_relaxed))
        rec_record_free(p);
    if (rec_real_free != NULL)
        rec_real_free(p);
}

static void rec_atfork_prepare(void)
{
    pthread_mutex_lock(&rec_lock);
}

static void rec_atfork_parent(void)
{
    pthread_mutex_unlock(&rec_lock);
}

/* a forked child shares the log fd and inherits unflushed rows; letting it write would
 * duplicate and interleave events, so it becomes a pass-through */
static void rec_atfork_child(void)
{
    atomic_store(&rec_active, 0);
    rec_buf_len = 0;
    if (rec_fd >= 0)
        close(rec_fd);
    rec_fd = -1;
    pthread_mutex_unlock(&rec_lock);
}

static void rec_complain(const char *msg, const char *path)
{
    const char *parts[] = {"fragless recorder: ", msg, path, "\n"};
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++)
        if (write(2, parts[k], strlen(parts[k])) < 0)
            return;
}

__attribute__((constructor)) static void rec_init(void)
{
    rec_resolve();
    const char *path = getenv("FRAGLESS_RECORD");
    if (path == NULL || path[0] == '\0')
        return;
    const char *align_env = getenv("FRAGLESS_RECORD_ALIGN");
    if (align_env != NULL && align_env[0] != '\0') {
        char *end = NULL;
        unsigned long a = strtoul(align_env, &end, 10);
        if (*end != '\0' || a == 0 || (a & (a - 1)) != 0) {
            rec_complain("FRAGLESS_RECORD_ALIGN must be a power of two, not ", align_env);
            return;
        }
        rec_align = (size_t)a;
    }
    rec_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (rec_fd < 0) {
        rec_complain("cannot open ", path);
        return;
    }
    rec_table_slots = REC_TABLE_MIN_SLOTS;
    rec_table = rec_table_map(rec_table_slots);
    if (rec_table == NULL) {
        close(rec_fd);
        rec_fd = -1;
        rec_complain("cannot map the live-pointer table for ", path);
        return;
    }
    /* child processes inherit LD_PRELOAD; without this they would truncate and overwrite the log */
    unsetenv("FRAGLESS_RECORD");
    pthread_atfork(rec_atfork_prepare, rec_atfork_parent, rec_atfork_child);
    char *o = rec_put_str(rec_buf, "Thread,Time,Action,Pointer,Size,Stream\n");
    rec_buf_len = (size_t)(o - rec_buf);
    atomic_store(&rec_active, 1);
}

/* other libraries' destructors still free storages after this runs, so later rows are written
 * straight through instead of being lost in the buffer */
__attribute__((destructor)) static void rec_fini(void)
{
    pthread_mutex_lock(&rec_lock);
    rec_flush();
    rec_unbuffered = 1;
    pthread_mutex_unlock(&rec_lock);
}
