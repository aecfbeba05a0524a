/* PyTorch's pluggable-allocator entry points (include/fragless_torch.h: their contracts)
 * but malloc, which throws (torch_malloc.cpp), and the per-device allocator tables every
 * in-process frontend shares (frontend.h): slot 0 for install() and the interposer, one
 * per fragless.torch.pool(). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "fragless_torch.h"
#include "allocator/allocator.h"
#include "frontend/frontend.h"
#include "util/util.h"

#define TORCH_MAX_DEVICES FL_FRONTEND_MAX_DEVICES

/* Slot 0: the allocators of install() and the LD_PRELOAD interposer, made from
 * $FRAGLESS_CONF; slots 1..FRAGLESS_TORCH_POOLS: those of fragless.torch.pool(), each made from
 * the configuration its pool was opened with. */
/* The table's lock is held while an allocator is made (driver calls: a context, the
 * device's properties) or reset, and while a pool is opened; an allocator, once in the
 * table, stays there for good (a reset empties it in place), so it is read without the
 * lock. */
static pthread_mutex_t torch_lock = PTHREAD_MUTEX_INITIALIZER;
static fl_device *torch_dev[1 + FRAGLESS_TORCH_POOLS][TORCH_MAX_DEVICES];
static fl_allocator *_Atomic torch_alloc[1 + FRAGLESS_TORCH_POOLS][TORCH_MAX_DEVICES];
static char *pool_conf[1 + FRAGLESS_TORCH_POOLS]; /* NULL: slot free (slot 0: the environment) */

/* Fork: a child of a process forked while another thread held the table's lock (making a
 * device's allocator) found it held for good, and its first call that takes it (a pool
 * opened, another device's allocator made) waited forever. The fork now waits for the
 * table: its handlers are registered after the allocators' (fli_allocator_atfork), and
 * prepare handlers run in reverse order, so the table's lock is taken before any
 * allocator's, the order everywhere (an allocator is made and reset with it held). */
static pthread_once_t torch_fork_once = PTHREAD_ONCE_INIT;
static void torch_prepare(void) { pthread_mutex_lock(&torch_lock); }
static void torch_parent(void) { pthread_mutex_unlock(&torch_lock); }
static void torch_child(void) { pthread_mutex_unlock(&torch_lock); } /* the forking thread took it */
static void torch_fork_init(void)
{
    fli_allocator_atfork();
    pthread_atfork(torch_prepare, torch_parent, torch_child);
}

static void lock_table(void)
{
    pthread_once(&torch_fork_once, torch_fork_init);
    pthread_mutex_lock(&torch_lock);
}

fl_allocator *fli_frontend_slot_existing(int slot, int device)
{
    if (slot < 0 || slot > FRAGLESS_TORCH_POOLS || device < 0 || device >= TORCH_MAX_DEVICES)
        return NULL;
    return atomic_load_explicit(&torch_alloc[slot][device], memory_order_acquire);
}

fl_allocator *fli_frontend_existing(int device) { return fli_frontend_slot_existing(0, device); }

int fli_frontend_before_reset(int device)
{
    if (device < 0 || device >= TORCH_MAX_DEVICES)
        return 0;
    int r = 0;
    lock_table(); /* no allocator of the device is made meanwhile */
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++) {
        fl_allocator *a = atomic_load_explicit(&torch_alloc[k][device], memory_order_relaxed);
        if (a && fli_allocator_before_reset(a) != FL_OK) {
            fprintf(stderr, "fragless: device %d%s: before the device's reset: %s\n", device, k ? " (a pool)" : "",
                    fl_last_error());
            r = -1;
        }
    }
    pthread_mutex_unlock(&torch_lock);
    return r;
}

void fli_frontend_after_reset(int device)
{
    if (device < 0 || device >= TORCH_MAX_DEVICES)
        return;
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++) {
        fl_allocator *a = atomic_load_explicit(&torch_alloc[k][device], memory_order_acquire);
        if (a)
            fli_allocator_after_reset(a);
    }
}

/* trace:PATH is device 0's trace; device N writes PATH with ".devN" before the
 * extension (trace.csv -> trace.dev1.csv), so devices never share a file. */
static fl_status trace_path_for(fl_config *cfg, int device)
{
    char path[sizeof cfg->trace_path];
    const char *slash = strrchr(cfg->trace_path, '/');
    const char *dot = strrchr(cfg->trace_path, '.');
    if (!dot || (slash && dot < slash) || dot == (slash ? slash + 1 : cfg->trace_path))
        dot = cfg->trace_path + strlen(cfg->trace_path);
    int n = snprintf(path, sizeof path, "%.*s.dev%d%s", (int)(dot - cfg->trace_path), cfg->trace_path, device, dot);
    if (n < 0 || (size_t)n >= sizeof path)
        return fli_fail(FL_ERR_INVALID, "trace:%s: too long a path for device %d's trace", cfg->trace_path, device);
    memcpy(cfg->trace_path, path, sizeof path);
    return FL_OK;
}

/* The message of the failure just recorded, with what was being done in front of it
 * (copied first: fli_fail formats into the buffer fl_last_error returns). */
static fl_status fail_in(fl_status s, const char *what)
{
    char why[1536];
    snprintf(why, sizeof why, "%s", fl_last_error());
    return fli_fail(s, "%s: %s", what, why);
}

static fl_status check_device(int device)
{
    if (device < 0 || device >= TORCH_MAX_DEVICES)
        return fli_fail(FL_ERR_INVALID, "device %d is out of range (0..%d)", device, TORCH_MAX_DEVICES - 1);
    return FL_OK;
}

/* The slot's allocator on device, made on first use: FL_OK with *out, or the failure
 * with its message in fl_last_error (nothing printed: the caller reports it). */
static fl_status slot_allocator(int slot, int device, fl_allocator **out)
{
    *out = NULL;
    fl_status s = check_device(device);
    if (s != FL_OK)
        return s;
    if (slot < 0 || slot > FRAGLESS_TORCH_POOLS)
        return fli_fail(FL_ERR_INVALID, "pool slot %d is out of range (0..%d)", slot, FRAGLESS_TORCH_POOLS);
    fl_allocator *a = atomic_load_explicit(&torch_alloc[slot][device], memory_order_acquire);
    if (a) /* the path of every allocation through the table: no lock */
        return *out = a, FL_OK;
    lock_table();
    a = atomic_load_explicit(&torch_alloc[slot][device], memory_order_relaxed);
    if (!a && (slot == 0 || pool_conf[slot])) {
        fl_config cfg;
        fl_cuda_params cp;
        fl_cuda_params_default(&cp);
        cp.device = device;
        s = fl_config_from_env(&cfg);
        if (s == FL_OK && slot) {
            fl_config_default(&cfg); /* a pool's configuration is whole (the package merges it) */
            s = fl_config_parse(&cfg, pool_conf[slot]);
        }
        cp.peer_access = cfg.peer_access;
        cp.shareable = cfg.shareable;
        if (s == FL_OK && device > 0 && cfg.trace_path[0])
            s = trace_path_for(&cfg, device);
        if (s == FL_OK)
            s = fl_cuda_device_create(&cp, &torch_dev[slot][device]);
        if (s == FL_OK && (s = fl_allocator_create(&cfg, torch_dev[slot][device], &a)) != FL_OK) {
            fl_device_destroy(torch_dev[slot][device]);
            torch_dev[slot][device] = NULL;
        }
        if (s != FL_OK) {
            char what[64];
            snprintf(what, sizeof what, "cannot set up device %d%s", device, slot ? " for a pool" : "");
            fail_in(s, what);
        } else {
            atomic_store_explicit(&torch_alloc[slot][device], a, memory_order_release);
        }
    } else if (!a) {
        s = fli_fail(FL_ERR_INVALID, "pool slot %d is not open", slot);
    }
    pthread_mutex_unlock(&torch_lock);
    *out = a;
    return s;
}

/* For the LD_PRELOAD interposer, whose cudaMalloc can return only an error code: the
 * reason goes to stderr too. */
fl_allocator *fli_frontend_slot_allocator(int slot, int device)
{
    fl_allocator *a;
    if (slot_allocator(slot, device, &a) != FL_OK)
        fprintf(stderr, "fragless: %s\n", fl_last_error());
    return a;
}

fl_allocator *fli_frontend_allocator(int device) { return fli_frontend_slot_allocator(0, device); }

int fragless_torch_pool_open(const char *conf)
{
    fl_config cfg;
    fl_config_default(&cfg);
    if (!conf)
        return fli_fail(FL_ERR_INVALID, "pool configuration: none given (NULL)"), -1;
    fl_status s = fl_config_parse(&cfg, conf);
    if (s != FL_OK) {
        char what[320];
        snprintf(what, sizeof what, "pool configuration \"%.256s\"", conf);
        return fail_in(s, what), -1;
    }
    lock_table();
    int slot = -1, free_slot = 0;
    for (int k = 1; k <= FRAGLESS_TORCH_POOLS && slot < 0; k++)
        if (!pool_conf[k] && (free_slot = 1) && (pool_conf[k] = strdup(conf)) != NULL)
            slot = k;
    pthread_mutex_unlock(&torch_lock);
    if (slot < 0 && free_slot)
        fli_fail(FL_ERR_NOMEM, "pool configuration \"%.256s\": no host memory to keep it", conf);
    else if (slot < 0)
        fli_fail(FL_ERR_UNSUPPORTED, "no pool slot left: at most %d fragless.torch.pool()s per process",
                 FRAGLESS_TORCH_POOLS);
    return slot;
}

/* The size PyTorch asked for, on one slot: FL_OK with *out (NULL for size 0), or the
 * failure with its message. */
fl_status fli_frontend_torch_malloc(int slot, ssize_t size, int device, void *stream, void **out)
{
    *out = NULL;
    if (size <= 0)
        return size < 0 ? fli_fail(FL_ERR_INVALID, "fragless: malloc of a negative size (%zd bytes) refused", size)
                        : FL_OK;
    fl_allocator *a;
    fl_status s = slot_allocator(slot, device, &a);
    uint64_t addr;
    if (s == FL_OK)
        s = fl_alloc(a, (uint64_t)size, (uint64_t)(uintptr_t)stream, &addr);
    if (s == FL_OK) {
        *out = (void *)(uintptr_t)addr;
        return FL_OK;
    }
    /* The allocator prints its first out-of-memory report itself (oom_report); other
     * failures here, and every one with FRAGLESS_VERBOSE set. */
    static atomic_int reported;
    if ((s != FL_ERR_OOM && atomic_fetch_add(&reported, 1) == 0) || getenv("FRAGLESS_VERBOSE"))
        fprintf(stderr, "fragless: device %d: %s\n", device, fl_last_error());
    return s;
}

/* PyTorch passes the size it allocated and the stream it allocated on: a different size
 * is refused (the block stays allocated) and reported, as is a free on a device with no
 * allocator. */
void fli_frontend_torch_free(int slot, void *ptr, ssize_t size, int device, void *stream)
{
    if (!ptr)
        return;
    fl_allocator *a = fli_frontend_slot_existing(slot, device);
    fl_status s = !a ? FL_ERR_NOT_FOUND
                     : fli_allocator_free_stream(a, (uint64_t)(uintptr_t)ptr, size > 0 ? (uint64_t)size : 0,
                                                (uint64_t)(uintptr_t)stream);
    if (s != FL_OK)
        fprintf(stderr, "fragless: free of %p (%zd bytes) on device %d: %s\n", ptr, size, device,
                a ? fl_last_error() : "no allocator on that device");
}

void fragless_torch_free(void *ptr, ssize_t size, int device, void *stream)
{
    fli_frontend_torch_free(0, ptr, size, device, stream);
}

/* For callers that cannot take a C++ exception (ctypes, C): NULL on failure. */
void *fragless_torch_malloc_nothrow(ssize_t size, int device, void *stream)
{
    void *p;
    return fli_frontend_torch_malloc(0, size, device, stream, &p) == FL_OK ? p : NULL;
}

/* Tensor.record_stream(stream): PyTorch's record-stream hook (a block's device is the
 * one whose allocator knows it). */
int fragless_torch_record_stream(void *ptr, void *stream)
{
    fl_status first = FL_OK;
    char why[1536] = "";
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++)
        for (int d = 0; d < TORCH_MAX_DEVICES; d++) {
            fl_allocator *a = fli_frontend_slot_existing(k, d);
            if (!a)
                continue;
            fl_status s = fl_record_stream(a, (uint64_t)(uintptr_t)ptr, (uint64_t)(uintptr_t)stream);
            if (s == FL_OK)
                return 0;
            if (s != FL_ERR_NOT_FOUND && first == FL_OK) { /* the block is this allocator's: it failed */
                first = s;
                snprintf(why, sizeof why, "record_stream of %p on device %d: %s", ptr, d, fl_last_error());
            }
        }
    if (first != FL_OK)
        return fli_fail(first, "%s", why), -1;
    return fli_fail(FL_ERR_NOT_FOUND, "record_stream of %p: not a live block of any device's allocator", ptr), -1;
}

int fragless_torch_empty_cache(void)
{
    fl_status first = FL_OK;
    char why[1536] = "";
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++)
        for (int d = 0; d < TORCH_MAX_DEVICES; d++) {
            fl_allocator *a = fli_frontend_slot_existing(k, d); /* the table is read under its lock */
            fl_status s = a ? fl_empty_cache(a) : FL_OK;
            if (s != FL_OK && first == FL_OK) {
                first = s;
                snprintf(why, sizeof why, "empty_cache on device %d: %s", d, fl_last_error());
            }
        }
    if (first != FL_OK)
        fli_fail(first, "%s", why); /* for fl_last_error(): the first reason */
    return first != FL_OK ? -1 : 0;
}

/* The capture id of stream on device (0: not capturing). Every allocator of the device
 * asks (each then knows the capture is underway); with none yet, install()'s is made. */
int fragless_torch_capture_id(int device, void *stream, unsigned long long *capture)
{
    if (!capture)
        return fli_fail(FL_ERR_INVALID, "capture id: no place for it (NULL)"), -1;
    *capture = 0;
    if (check_device(device) != FL_OK)
        return -1;
    uint64_t id = 0, any = 0;
    char what[96];
    snprintf(what, sizeof what, "capture id of stream %p on device %d", stream, device);
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++) {
        fl_allocator *a = fli_frontend_slot_existing(k, device);
        fl_status s = a ? fl_stream_capture(a, (uint64_t)(uintptr_t)stream, &id) : FL_OK;
        if (s != FL_OK)
            return fail_in(s, what), -1;
        if (a && id)
            any = id;
    }
    if (!any && !fli_frontend_existing(device)) {
        fl_allocator *a;
        fl_status s = slot_allocator(0, device, &a);
        if (s == FL_OK && (s = fl_stream_capture(a, (uint64_t)(uintptr_t)stream, &id)) == FL_OK)
            any = id;
        if (s != FL_OK)
            return fail_in(s, what), -1;
    }
    *capture = any;
    return 0;
}

int fragless_torch_graph_release(int device, unsigned long long capture)
{
    if (check_device(device) != FL_OK)
        return -1;
    int r = 0;
    for (int k = 0; k <= FRAGLESS_TORCH_POOLS; k++) {
        fl_allocator *a = fli_frontend_slot_existing(k, device);
        if (a && fl_graph_release(a, capture) != FL_OK)
            r = -1; /* the reason in fl_last_error() */
    }
    return r;
}

/* Statistics of a device's allocator: 0 and *out filled, -1 when the device has no
 * allocator yet, -2 when device or slot is out of range (fl_last_error). */
int fragless_torch_stats(int device, fl_stats *out)
{
    return fragless_torch_pool_stats(0, device, out);
}

int fragless_torch_pool_stats(int slot, int device, fl_stats *out)
{
    if (check_device(device) != FL_OK)
        return -2;
    if (slot < 0 || slot > FRAGLESS_TORCH_POOLS)
        return fli_fail(FL_ERR_INVALID, "pool slot %d is out of range (0..%d)", slot, FRAGLESS_TORCH_POOLS), -2;
    fl_allocator *a = fli_frontend_slot_existing(slot, device);
    if (!a)
        return -1;
    fl_get_stats(a, out);
    return 0;
}

/* For the Python package: the statistics as JSON (fl_stats_json) or the summary table
 * (fl_memory_summary) into buf; the length the text needs, or fragless_torch_pool_stats'
 * -1 (no allocator yet) or -2 (out of range). */
long long fragless_torch_stats_json(int device, char *buf, size_t n)
{
    return fragless_torch_pool_stats_json(0, device, buf, n);
}

long long fragless_torch_pool_stats_json(int slot, int device, char *buf, size_t n)
{
    fl_stats st;
    int r = fragless_torch_pool_stats(slot, device, &st);
    return r != 0 ? r : (long long)fl_stats_json(&st, buf, n);
}

long long fragless_torch_memory_summary(int device, char *buf, size_t n)
{
    fl_stats st;
    int r = fragless_torch_stats(device, &st);
    return r != 0 ? r : (long long)fl_memory_summary(&st, buf, n);
}

/* torch.cuda.reset_peak_memory_stats(device) */
int fragless_torch_reset_peak_stats(int device)
{
    if (check_device(device) != FL_OK)
        return -1;
    fl_allocator *a = fli_frontend_existing(device);
    if (a)
        fl_reset_peak_stats(a);
    return 0;
}

/* The state snapshot of a device's allocator as JSON at path: 0, or -1 (fl_last_error). */
int fragless_torch_snapshot(int device, const char *path)
{
    if (check_device(device) != FL_OK)
        return -1;
    if (!path)
        return fli_fail(FL_ERR_INVALID, "snapshot of device %d: no path (NULL)", device), -1;
    fl_allocator *a = fli_frontend_existing(device);
    if (!a)
        return fli_fail(FL_ERR_NOT_FOUND, "snapshot of device %d: no allocator on that device (nothing was "
                        "allocated there through fragless yet)", device), -1;
    char what[64];
    snprintf(what, sizeof what, "snapshot of device %d", device);
    fl_status s = fl_allocator_snapshot(a, path);
    return s != FL_OK ? fail_in(s, what), -1 : 0;
}

/* torch.cuda.memory._record_memory_history: device's allocator (made if needed) records
 * its allocations and frees as CSV at path from now on; path NULL stops. */
int fragless_torch_record(int device, const char *path)
{
    if (check_device(device) != FL_OK)
        return -1;
    fl_allocator *a = fli_frontend_existing(device);
    if (!a && !path)
        return 0;
    if (!a && slot_allocator(0, device, &a) != FL_OK)
        return -1;
    return fli_allocator_trace(a, path) == FL_OK ? 0 : -1;
}

int fragless_torch_record_flush(int device)
{
    fl_allocator *a = fli_frontend_existing(device);
    return a && fli_allocator_trace_flush(a) != FL_OK ? -1 : 0;
}

/* torch.cuda.set_per_process_memory_fraction(fraction, device) */
int fragless_torch_set_memory_fraction(double fraction, int device)
{
    if (!(fraction > 0.0 && fraction <= 1.0))
        return fli_fail(FL_ERR_INVALID, "memory fraction %g is not in (0, 1]", fraction), -1;
    fl_allocator *a;
    if (slot_allocator(0, device, &a) != FL_OK)
        return -1;
    fl_device *d = torch_dev[0][device];
    uint64_t limit = (uint64_t)((double)fl_device_capacity(d) * fraction);
    char what[80];
    snprintf(what, sizeof what, "set_memory_fraction(%g, %d)", fraction, device);
    fl_status s = fl_set_limit(a, limit);
    return s != FL_OK ? fail_in(s, what), -1 : 0;
}

/* For fragless.torch.install(): whether conf (FRAGLESS_CONF syntax, the whole
 * configuration) parses, before PyTorch is changed. */
int fragless_torch_conf_check(const char *conf)
{
    fl_config cfg;
    fl_config_default(&cfg);
    if (!conf)
        return fli_fail(FL_ERR_INVALID, "configuration: none given (NULL)"), -1;
    return fl_config_parse(&cfg, conf) == FL_OK ? 0 : -1;
}

void fragless_torch_pool1_free(void *ptr, ssize_t size, int device, void *stream) { fli_frontend_torch_free(1, ptr, size, device, stream); }
void fragless_torch_pool2_free(void *ptr, ssize_t size, int device, void *stream) { fli_frontend_torch_free(2, ptr, size, device, stream); }
void fragless_torch_pool3_free(void *ptr, ssize_t size, int device, void *stream) { fli_frontend_torch_free(3, ptr, size, device, stream); }
void fragless_torch_pool4_free(void *ptr, ssize_t size, int device, void *stream) { fli_frontend_torch_free(4, ptr, size, device, stream); }
