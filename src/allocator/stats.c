/* The statistics as JSON (PyTorch's flat memory_stats() keys plus fragless's own) and as
 * a memory_summary()-style table. Both follow snprintf's contract. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "allocator/allocator.h"

typedef struct out_buf {
    char *buf;
    size_t cap, len;
} out_buf;

static void put(out_buf *o, const char *fmt, ...) FL_PRINTF(2, 3);
static void put(out_buf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static size_t finish(out_buf *o)
{
    if (o->cap && o->len >= o->cap)
        o->buf[o->cap - 1] = '\0';
    return o->len;
}

static void stat_json(out_buf *o, const char *name, const fl_stat *s)
{
    put(o, "\"%s.all.current\":%llu,\"%s.all.peak\":%llu,\"%s.all.allocated\":%llu,\"%s.all.freed\":%llu,", name,
        (unsigned long long)s->current, name, (unsigned long long)s->peak, name, (unsigned long long)s->allocated,
        name, (unsigned long long)s->freed);
}

size_t fl_stats_json(const fl_stats *s, char *buf, size_t n)
{
    out_buf o = {buf, n, 0};
    put(&o, "{");
    stat_json(&o, "allocated_bytes", &s->allocated_bytes);
    stat_json(&o, "reserved_bytes", &s->reserved_bytes);
    stat_json(&o, "active_bytes", &s->active_bytes);
    stat_json(&o, "requested_bytes", &s->requested_bytes);
    stat_json(&o, "allocation", &s->allocation);
    put(&o, "\"inactive_split_bytes.all.current\":%llu,\"inactive_split_bytes.all.peak\":%llu,",
        (unsigned long long)s->inactive_split_bytes, (unsigned long long)s->inactive_split_bytes_peak);
    put(&o, "\"num_alloc_retries\":%llu,\"num_ooms\":%llu,\"num_device_alloc\":%llu,\"num_device_free\":%llu,"
            "\"num_sync_all_streams\":%llu,",
        (unsigned long long)s->num_alloc_retries, (unsigned long long)s->num_ooms,
        (unsigned long long)s->num_device_alloc, (unsigned long long)s->num_device_free,
        (unsigned long long)s->num_sync_all_streams);
    put(&o, "\"fragless\":{\"capacity\":%llu,\"limit\":%llu,\"cached_bytes\":%llu,\"free_in_reserved\":%llu,"
            "\"largest_free\":%llu,\"external_fragmentation\":%.6f,\"device_failed_calls\":%llu,"
            "\"device_time_us\":%.3f,\"graph_bytes\":%llu,\"graph_kept_bytes\":%llu,\"stitched_blocks\":%llu,"
            "\"device_calls\":{",
        (unsigned long long)s->capacity, (unsigned long long)s->limit, (unsigned long long)s->cached_bytes,
        (unsigned long long)s->free_in_reserved, (unsigned long long)s->largest_free, s->external_fragmentation,
        (unsigned long long)s->device_failed_calls, s->device_time_us, (unsigned long long)s->graph_bytes,
        (unsigned long long)s->graph_kept_bytes, (unsigned long long)s->stitched_blocks);
    for (int c = 0; c < FL_CALL_COUNT; c++)
        put(&o, "%s\"%s\":%llu", c ? "," : "", fl_call_name((fl_call)c), (unsigned long long)s->device_calls[c]);
    put(&o, "}}}");
    return finish(&o);
}

static void size_cell(out_buf *o, uint64_t v)
{
    char b[32];
    put(o, " %12s |", fl_format_size(v, b, sizeof b));
}

static void stat_row(out_buf *o, const char *label, const fl_stat *s, int bytes)
{
    put(o, "| %-22s|", label);
    const uint64_t v[4] = {s->current, s->peak, s->allocated, s->freed};
    for (int i = 0; i < 4; i++) {
        if (bytes)
            size_cell(o, v[i]);
        else
            put(o, " %12llu |", (unsigned long long)v[i]);
    }
    put(o, "\n");
}

size_t fl_memory_summary(const fl_stats *s, char *buf, size_t n)
{
    out_buf o = {buf, n, 0};
    const char *rule = "|=======================================================================================|\n";
    put(&o, "%s", rule);
    put(&o, "|                        fragless memory summary                                        |\n");
    put(&o, "%s", rule);
    put(&o, "| %-22s| %12s | %12s | %12s | %12s |\n", "Metric", "Cur Usage", "Peak Usage", "Tot Alloc", "Tot Freed");
    put(&o, "%s", rule);
    stat_row(&o, "Allocated memory", &s->allocated_bytes, 1);
    stat_row(&o, "Active memory", &s->active_bytes, 1);
    stat_row(&o, "Requested memory", &s->requested_bytes, 1);
    stat_row(&o, "GPU reserved memory", &s->reserved_bytes, 1);
    stat_row(&o, "Allocations", &s->allocation, 0);
    put(&o, "| %-22s|", "Non-releasable memory");
    size_cell(&o, s->inactive_split_bytes);
    size_cell(&o, s->inactive_split_bytes_peak);
    put(&o, " %12s | %12s |\n", "", "");
    put(&o, "%s", rule);
    char cap[32], lim[32], cached[32], unalloc[32], largest[32];
    put(&o, "| capacity %s, limit %s; cached %s, reserved but unallocated %s\n",
        fl_format_size(s->capacity, cap, sizeof cap), fl_format_size(s->limit, lim, sizeof lim),
        fl_format_size(s->cached_bytes, cached, sizeof cached), fl_format_size(s->free_in_reserved, unalloc, sizeof unalloc));
    put(&o, "| largest free block %s, external fragmentation %.1f%%\n", fl_format_size(s->largest_free, largest, sizeof largest),
        100.0 * s->external_fragmentation);
    put(&o, "| retries %llu, OOMs %llu, device allocs %llu, device frees %llu, syncs %llu, device time %.1f ms\n",
        (unsigned long long)s->num_alloc_retries, (unsigned long long)s->num_ooms,
        (unsigned long long)s->num_device_alloc, (unsigned long long)s->num_device_free,
        (unsigned long long)s->num_sync_all_streams, s->device_time_us / 1000.0);
    put(&o, "| device calls:");
    for (int c = 0; c < FL_CALL_COUNT; c++)
        if (s->device_calls[c])
            put(&o, " %s %llu", fl_call_name((fl_call)c), (unsigned long long)s->device_calls[c]);
    put(&o, "\n%s", rule);
    return finish(&o);
}
