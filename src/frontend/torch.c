/* PyTorch's pluggable-allocator entry points (include/fragless_torch.h: their contracts),
 * and the per-device allocator table every in-process frontend shares (frontend.h). A
 * failed allocation returns NULL; whether PyTorch raises OutOfMemoryError for it depends
 * on its version (pytorch issue #133280: pluggable allocators' OOMs may not), so the
 * failure is also counted in num_ooms and its report printed on stderr. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "fragless_torch.h"
#include "frontend/frontend.h"
#include "util/util.h"

#define TORCH_MAX_DEVICES FL_FRONTEND_MAX_DEVICES

static pthread_mutex_t torch_lock = PTHREAD_MUTEX_INITIALIZER;
static fl_device *torch_dev[TORCH_MAX_DEVICES];
static fl_allocator *torch_alloc[TORCH_MAX_DEVICES];

fl_allocator *fl_frontend_existing(int device)
{
    if (device < 0 || device >= TORCH_MAX_DEVICES)
        return NULL;
    /* Under the lock: another thread may be making this device's allocator. */
    pthread_mutex_lock(&torch_lock);
    fl_allocator *a = torch_alloc[device];
    pthread_mutex_unlock(&torch_lock);
    return a;
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
        return fl_fail(FL_ERR_INVALID, "trace:%s: too long a path for device %d's trace", cfg->trace_path, device);
    memcpy(cfg->trace_path, path, sizeof path);
    return FL_OK;
}

/* A failed set-up makes the frontends report an out-of-memory error for the request. */
fl_allocator *fl_frontend_allocator(int device)
{
    if (device < 0 || device >= TORCH_MAX_DEVICES) {
        fprintf(stderr, "fragless: device %d is out of range (0..%d)\n", device, TORCH_MAX_DEVICES - 1);
        return NULL;
    }
    pthread_mutex_lock(&torch_lock);
    fl_allocator *a = torch_alloc[device];
    if (!a) {
        fl_config cfg;
        fl_cuda_params cp;
        fl_cuda_params_default(&cp);
        cp.device = device;
        fl_status s = fl_config_from_env(&cfg);
        cp.peer_access = cfg.peer_access;
        cp.shareable = cfg.shareable;
        if (s == FL_OK && device > 0 && cfg.trace_path[0])
            s = trace_path_for(&cfg, device);
        if (s == FL_OK)
            s = fl_cuda_device_create(&cp, &torch_dev[device]);
        if (s == FL_OK && (s = fl_allocator_create(&cfg, torch_dev[device], &a)) != FL_OK) {
            fl_device_destroy(torch_dev[device]);
            torch_dev[device] = NULL;
        }
        if (s != FL_OK)
            fprintf(stderr, "fragless: cannot set up device %d: %s\n", device, fl_last_error());
        else
            torch_alloc[device] = a;
    }
    pthread_mutex_unlock(&torch_lock);
    return a;
}

void *fragless_torch_malloc(ssize_t size, int device, void *stream)
{
    if (size <= 0) {
        if (size < 0)
            fprintf(stderr, "fragless: malloc of a negative size (%zd bytes) refused\n", size);
        return NULL;
    }
    fl_allocator *a = fl_frontend_allocator(device);
    uint64_t addr;
    if (!a)
        return NULL;
    fl_status s = fl_alloc(a, (uint64_t)size, (uint64_t)(uintptr_t)stream, &addr);
    if (s != FL_OK) {
        /* The allocator prints its first out-of-memory report itself (oom_report); other
         * failures here, and every one with FRAGLESS_VERBOSE set. */
        static atomic_int reported;
        if ((s != FL_ERR_OOM && atomic_fetch_add(&reported, 1) == 0) || getenv("FRAGLESS_VERBOSE"))
            fprintf(stderr, "fragless: device %d: %s\n", device, fl_last_error());
        return NULL;
    }
    return (void *)(uintptr_t)addr;
}

/* PyTorch passes the size it allocated: a different one is refused (the block stays
 * allocated) and reported, as is a free on a device with no allocator. */
void fragless_torch_free(void *ptr, ssize_t size, int device, void *stream)
{
    (void)stream;
    if (!ptr)
        return;
    fl_allocator *a = fl_frontend_existing(device);
    fl_status s = !a ? FL_ERR_NOT_FOUND
                  : size > 0 ? fl_free_sized(a, (uint64_t)(uintptr_t)ptr, (uint64_t)size)
                             : fl_free(a, (uint64_t)(uintptr_t)ptr);
    if (s != FL_OK)
        fprintf(stderr, "fragless: free of %p (%zd bytes) on device %d: %s\n", ptr, size, device,
                a ? fl_last_error() : "no allocator on that device");
}

/* Tensor.record_stream(stream): PyTorch's record-stream hook (a block's device is the
 * one whose allocator knows it). */
void fragless_torch_record_stream(void *ptr, void *stream)
{
    for (int d = 0; d < TORCH_MAX_DEVICES; d++) {
        fl_allocator *a = fl_frontend_existing(d);
        if (a && fl_record_stream(a, (uint64_t)(uintptr_t)ptr, (uint64_t)(uintptr_t)stream) == FL_OK)
            return;
    }
    fprintf(stderr, "fragless: record_stream of %p: not a live block of any device\n", ptr);
}

void fragless_torch_empty_cache(void)
{
    for (int d = 0; d < TORCH_MAX_DEVICES; d++) {
        fl_allocator *a = fl_frontend_existing(d); /* the table is read under its lock */
        if (a && fl_empty_cache(a) != FL_OK)
            fprintf(stderr, "fragless: empty_cache on device %d: %s\n", d, fl_last_error());
    }
}

/* Statistics of a device's allocator: 0 and *out filled, or -1 when the device has no
 * allocator yet. */
int fragless_torch_stats(int device, fl_stats *out)
{
    fl_allocator *a = fl_frontend_existing(device);
    if (!a)
        return -1;
    fl_get_stats(a, out);
    return 0;
}

/* For the Python package: the statistics as JSON (fl_stats_json) or the summary table
 * (fl_memory_summary) into buf; the length the text needs, or -1 when the device has no
 * allocator yet. */
long long fragless_torch_stats_json(int device, char *buf, size_t n)
{
    fl_stats st;
    if (fragless_torch_stats(device, &st) != 0)
        return -1;
    return (long long)fl_stats_json(&st, buf, n);
}

long long fragless_torch_memory_summary(int device, char *buf, size_t n)
{
    fl_stats st;
    if (fragless_torch_stats(device, &st) != 0)
        return -1;
    return (long long)fl_memory_summary(&st, buf, n);
}

/* torch.cuda.reset_peak_memory_stats(device) */
void fragless_torch_reset_peak_stats(int device)
{
    fl_allocator *a = fl_frontend_existing(device);
    if (a)
        fl_reset_peak_stats(a);
}

/* The state snapshot of a device's allocator as JSON at path: 0, or -1 with the reason
 * on stderr. */
int fragless_torch_snapshot(int device, const char *path)
{
    fl_allocator *a = fl_frontend_existing(device);
    if (!a) {
        fprintf(stderr, "fragless: snapshot of device %d: no allocator on that device\n", device);
        return -1;
    }
    if (fl_allocator_snapshot(a, path) != FL_OK) {
        fprintf(stderr, "fragless: snapshot of device %d: %s\n", device, fl_last_error());
        return -1;
    }
    return 0;
}

/* torch.cuda.set_per_process_memory_fraction(fraction, device) */
void fragless_torch_set_memory_fraction(double fraction, int device)
{
    fl_allocator *a = fl_frontend_allocator(device);
    if (!a)
        return;
    if (!(fraction > 0.0 && fraction <= 1.0)) {
        fprintf(stderr, "fragless: memory fraction %g is not in (0, 1]\n", fraction);
        return;
    }
    fl_device *d = torch_dev[device];
    uint64_t limit = (uint64_t)((double)fl_device_capacity(d) * fraction);
    if (fl_set_limit(a, limit) != FL_OK)
        fprintf(stderr, "fragless: set_memory_fraction(%g, %d): %s\n", fraction, device, fl_last_error());
}
