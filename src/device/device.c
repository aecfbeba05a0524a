/* What every device shares: counters per call kind, failed calls and the peak of
 * physical memory in use, and the one fault injector the tests use. The implementations
 * do the work. */
#include "device/device.h"

#include <stdatomic.h>
#include <stdio.h>

static const char *const call_names[FL_CALL_COUNT] = {
    "mem_alloc", "mem_free", "reserve", "addr_free", "create",
    "release", "map", "unmap", "set_access", "sync",
};

const char *fl_call_name(fl_call c)
{
    return (unsigned)c < FL_CALL_COUNT ? call_names[c] : "?";
}

static fl_status account(fl_device *d, fl_call c, uint64_t in_use_before, fl_status s)
{
    d->counters.calls[c]++;
    if (d->counters.in_use > in_use_before)
        d->counters.bytes_obtained += d->counters.in_use - in_use_before;
    else
        d->counters.bytes_returned += in_use_before - d->counters.in_use;
    if (s != FL_OK)
        d->counters.failed_calls++;
    if (d->counters.in_use > d->counters.peak_in_use)
        d->counters.peak_in_use = d->counters.in_use;
    return s;
}

/* Beyond the limit: refused before the device is asked. Without a limit the device
 * decides (a real GPU is shared; its capacity is no promise). */
static fl_status over_limit(const fl_device *d, uint64_t size)
{
    char asked[32], held[32], lim[32];
    return fli_fail(FL_ERR_OOM, "limit %s reached: holding %s, asked %s more",
                   fl_format_size(fli_dev_limit(d), lim, sizeof lim), fl_format_size(d->counters.in_use, held, sizeof held),
                   fl_format_size(size, asked, sizeof asked));
}

/* The fault injector (SQLite's counter in the one wrapper every call goes through): the
 * call about to be made has number total calls + 1. An injected failure reaches no
 * device, so it changes nothing but the counts of calls and failed calls, and costs no
 * device time. */
static fl_status injected_armed(const fl_device *d, fl_call c)
{
    uint64_t n = fl_device_total_calls(&d->counters) + 1;
    if (n != d->fail_call && !(d->fail_from && n >= d->fail_from))
        return FL_OK;
    if (n == d->fail_call)
        return fli_fail(FL_ERR_DEVICE, "%s %s: injected failure of device call %llu", d->ops->name,
                       fl_call_name(c), (unsigned long long)n);
    return fli_fail(FL_ERR_DEVICE, "%s %s: injected failure of device call %llu (every call fails from %llu on)",
                   d->ops->name, fl_call_name(c), (unsigned long long)n, (unsigned long long)d->fail_from);
}

/* A call a CUDA graph capture forbids (synchronize, event query) or that could take
 * memory its graph uses (unmap, release, frees), refused while the allocator works
 * during a capture (capture_guard): not a device call, nothing changes. */
static fl_status refused_in_capture(const fl_device *d, fl_call c)
{
    return fli_fail(FL_ERR_UNSUPPORTED,
                   "%s %s refused: CUDA graph capture 0x%llx is underway (a synchronize or an event query would "
                   "invalidate it; an unmap or a free could take memory its graph uses)",
                   d->ops->name, fl_call_name(c), (unsigned long long)d->capture_guard);
}

#define GUARD(d, c)                                                                  \
    do {                                                                             \
        if (FL_UNLIKELY((d)->capture_guard))                                         \
            return refused_in_capture((d), (c));                                     \
    } while (0)

static inline fl_status injected(const fl_device *d, fl_call c)
{
    /* Unarmed (every call outside the fault tests): no need to count the calls. */
    return FL_LIKELY(!d->fail_call && !d->fail_from) ? FL_OK : injected_armed(d, c);
}

#define INJECT(d, c)                                                                 \
    do {                                                                             \
        fl_status inj_ = injected((d), (c));                                         \
        if (inj_ != FL_OK)                                                           \
            return account((d), (c), (d)->counters.in_use, inj_);                   \
    } while (0)

fl_status fli_dev_mem_alloc(fl_device *d, uint64_t size, uint64_t *addr)
{
    if (d->limit && size > fli_dev_room(d))
        return over_limit(d, size);
    INJECT(d, FL_CALL_MEM_ALLOC);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_MEM_ALLOC, before, d->ops->mem_alloc(d, size, addr));
}
fl_status fli_dev_mem_free(fl_device *d, uint64_t addr)
{
    GUARD(d, FL_CALL_MEM_FREE);
    INJECT(d, FL_CALL_MEM_FREE);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_MEM_FREE, before, d->ops->mem_free(d, addr));
}
fl_status fli_dev_reserve(fl_device *d, uint64_t size, uint64_t *va)
{
    INJECT(d, FL_CALL_RESERVE);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_RESERVE, before, d->ops->reserve(d, size, va));
}
fl_status fli_dev_addr_free(fl_device *d, uint64_t va, uint64_t size)
{
    GUARD(d, FL_CALL_ADDR_FREE);
    INJECT(d, FL_CALL_ADDR_FREE);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_ADDR_FREE, before, d->ops->addr_free(d, va, size));
}
fl_status fli_dev_create(fl_device *d, uint64_t size, uint64_t *handle)
{
    if (d->limit && size > fli_dev_room(d))
        return over_limit(d, size);
    INJECT(d, FL_CALL_CREATE);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_CREATE, before, d->ops->create(d, size, handle));
}
fl_status fli_dev_release(fl_device *d, uint64_t handle)
{
    GUARD(d, FL_CALL_RELEASE);
    INJECT(d, FL_CALL_RELEASE);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_RELEASE, before, d->ops->release(d, handle));
}
fl_status fli_dev_map(fl_device *d, uint64_t va, uint64_t size, uint64_t handle)
{
    INJECT(d, FL_CALL_MAP);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_MAP, before, d->ops->map(d, va, size, handle));
}
fl_status fli_dev_unmap(fl_device *d, uint64_t va, uint64_t size)
{
    GUARD(d, FL_CALL_UNMAP);
    INJECT(d, FL_CALL_UNMAP);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_UNMAP, before, d->ops->unmap(d, va, size));
}
fl_status fli_dev_set_access(fl_device *d, uint64_t va, uint64_t size)
{
    INJECT(d, FL_CALL_SET_ACCESS);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_SET_ACCESS, before, d->ops->set_access(d, va, size));
}
fl_status fli_dev_synchronize(fl_device *d)
{
    GUARD(d, FL_CALL_SYNC);
    INJECT(d, FL_CALL_SYNC);
    uint64_t before = d->counters.in_use;
    return account(d, FL_CALL_SYNC, before, d->ops->synchronize(d));
}

fl_status fli_dev_event_record(fl_device *d, uint64_t stream, uint64_t *event)
{
    *event = 0;
    return d->ops->event_record ? d->ops->event_record(d, stream, event) : FL_OK;
}
fl_status fli_dev_event_query(fl_device *d, uint64_t event, int *done)
{
    *done = 1;
    if (FL_UNLIKELY(d->capture_guard) && d->ops->event_query && event) {
        *done = 0;
        return fli_fail(FL_ERR_UNSUPPORTED, "%s event query refused: CUDA graph capture 0x%llx is underway",
                       d->ops->name, (unsigned long long)d->capture_guard);
    }
    return d->ops->event_query && event ? d->ops->event_query(d, event, done) : FL_OK;
}
void fli_dev_event_destroy(fl_device *d, uint64_t event)
{
    if (d->ops->event_destroy && event)
        d->ops->event_destroy(d, event);
}

static fl_status no_ipc(const fl_device *d, const char *what)
{
    return fli_fail(FL_ERR_UNSUPPORTED, "%s: %s: this device has no IPC (memory shared between processes needs "
                   "the cuda device)", d->ops->name, what);
}

fl_status fli_dev_export(fl_device *d, uint64_t va, uint64_t size, fl_ipc_piece *out, uint32_t max, uint32_t *n,
                         uint64_t *offset)
{
    *n = 0;
    return d->ops->export_block ? d->ops->export_block(d, va, size, out, max, n, offset) : no_ipc(d, "export");
}
fl_status fli_dev_legacy_ipc_base(fl_device *d, uint64_t va, uint64_t *base)
{
    return d->ops->legacy_ipc_base ? d->ops->legacy_ipc_base(d, va, base) : no_ipc(d, "legacy IPC");
}
fl_status fli_dev_import(fl_device *d, const fl_ipc_piece *pieces, uint32_t n, uint64_t offset, uint64_t size,
                         uint64_t *va)
{
    return d->ops->import ? d->ops->import(d, pieces, n, offset, size, va) : no_ipc(d, "import");
}
fl_status fli_dev_import_close(fl_device *d, uint64_t va)
{
    return d->ops->import_close ? d->ops->import_close(d, va) : no_ipc(d, "import_close");
}

char *fli_dev_uuid_str(const fl_device *d, char *buf, size_t n)
{
    const unsigned char *u = d->uuid;
    if (!d->has_uuid)
        snprintf(buf, n, "%s", "");
    else
        snprintf(buf, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
                 u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    return buf;
}
fl_status fli_dev_capture_info(fl_device *d, uint64_t stream, int *status, uint64_t *id)
{
    *status = FL_CAPTURE_NONE;
    *id = 0;
    return d->ops->capture_info ? d->ops->capture_info(d, stream, status, id) : FL_OK;
}
fl_status fli_dev_capture_mode(fl_device *d, int *mode)
{
    return d->ops->capture_mode ? d->ops->capture_mode(d, mode) : FL_OK;
}

fl_status fli_dev_stream_device(fl_device *d, uint64_t stream, int *ordinal)
{
    return d->ops->stream_device ? d->ops->stream_device(d, stream, ordinal)
                                 : fli_fail(FL_ERR_UNSUPPORTED, "%s: streams have no device of their own", d->ops->name);
}

void fli_dev_context_reset(fl_device *d)
{
    if (d->ops->context_reset)
        d->ops->context_reset(d);
}

void fl_device_destroy(fl_device *d)
{
    if (d)
        d->ops->destroy(d);
}

fl_status fl_device_set_fault(fl_device *d, uint64_t fail_call, uint64_t fail_from)
{
    if (!d)
        return fli_fail(FL_ERR_INVALID, "fl_device_set_fault: no device");
    uint64_t made = fl_device_total_calls(&d->counters);
    /* A plan that can never fire would let a fault test pass without its fault. */
    if (fail_call && fail_call <= made)
        return fli_fail(FL_ERR_INVALID, "fl_device_set_fault: call %llu was made already (%s has made %llu calls; "
                       "numbers count from its creation)", (unsigned long long)fail_call, d->ops->name,
                       (unsigned long long)made);
    d->fail_call = fail_call;
    d->fail_from = fail_from;
    return FL_OK;
}

void fl_device_get_counters(const fl_device *d, fl_device_counters *out)
{
    *out = d->counters;
}

uint64_t fl_device_total_calls(const fl_device_counters *c)
{
    uint64_t n = 0;
    for (int i = 0; i < FL_CALL_COUNT; i++)
        n += c->calls[i];
    return n;
}

uint64_t fl_device_capacity(const fl_device *d) { return d->capacity; }
uint64_t fl_device_granularity(const fl_device *d) { return d->granularity; }

/* FLI_PER_THREAD_TAG | n for the n-th thread to ask. */
static atomic_uint_fast64_t next_per_thread = 1;
static _Thread_local uint64_t per_thread_key;

uint64_t fli_per_thread_stream(void)
{
    if (!per_thread_key)
        per_thread_key = FLI_PER_THREAD_TAG | (uint64_t)atomic_fetch_add_explicit(&next_per_thread, 1, memory_order_relaxed);
    return per_thread_key;
}
