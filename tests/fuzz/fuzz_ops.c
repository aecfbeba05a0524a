/* Fuzz target: the public allocator API under every policy. The input is decoded into a
 * sequence of (at most 256) fl_alloc / fl_free (a live block, a bogus address, a double free) /
 * fl_free_sized / fl_record_stream / fl_empty_cache / fl_set_limit / fl_reset_peak_stats
 * / statistics-as-text calls on a 64 MiB simulated device. After every call: the
 * self-check passes; the statistics agree with a model of the live blocks (count,
 * requested bytes, allocated bytes as charged when each block was made); a failed call
 * changes none of them; blocks are 512-aligned, at least their size, and never overlap;
 * calls on unknown addresses are FL_ERR_NOT_FOUND. At the end everything is freed and the
 * cache emptied: allocated bytes return to 0 for every policy, device memory to 0 for
 * nocache. An input whose first byte has its top bit set runs on a device of 64 KiB
 * pages (and bit 6 clear: 4 KiB) instead of 2 MiB (fz_granularity): the same sizes then
 * span 32 (512) times as many pages, so the rules for large blocks under pressure
 * (fragless's mapped runs from 32 pages, chunks of 16, reclaim of runs) meet the
 * fuzzer's blocks, which on 2 MiB pages seldom reach them within 64 MiB, and the limits
 * that follow the page size (the small-request limit, 1/8 page; lending small blocks
 * from 1/32 page) cross the fixed ones (the quick lists' 4 KiB). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fragless.h"
#include "fuzz.h"

#define FZ_CAPACITY ((uint64_t)64 << 20)
#define FZ_MAX_LIVE 256
#define FZ_MAX_OPS 256

typedef struct block {
    uint64_t addr, size, charged; /* charged: what allocated_bytes rose by */
    int shared;                   /* fl_record_stream was called: its free is deferred */
} block;

/* Freed blocks used on other streams wait for their events; on the sim device every
 * event is complete at once, so the next fl_alloc or fl_empty_cache frees them all. */
typedef struct pending {
    uint64_t n, charged;
} pending;

typedef struct input {
    const uint8_t *p;
    size_t n;
} input;

static uint8_t take8(input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static uint32_t take32(input *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | take8(in);
    return v;
}

/* Sizes from a byte class: tiny, around the small/large pool limits, page multiples,
 * most of the device, and sizes no device has. */
static uint64_t decode_size(input *in)
{
    uint8_t cls = take8(in);
    uint32_t v = take32(in);
    switch (cls % 8) {
    case 0:
        return 1 + v % 4096;
    case 1:
        return 1 + v % (1 << 20);
    case 2:
        return (1 << 20) - 512 + v % 1024; /* the small pool's edge */
    case 3:
        return (uint64_t)(1 + v % 32) << 20;
    case 4:
        return ((uint64_t)(1 + v % 16) << 21) + (v >> 24) - 128; /* near page multiples */
    case 5:
        return 1 + v % (FZ_CAPACITY + (8 << 20));
    case 6:
        return v % 4 == 0 ? 0 : UINT64_MAX - v % 4096 * 512; /* invalid or impossible */
    default:
        return ((uint64_t)1 << (40 + v % 24)) + v % 3;
    }
}

static void snapshot_stats(fl_allocator *a, fl_stats *st) { fl_get_stats(a, st); }

static void same_counts(const fl_stats *x, const fl_stats *y, const char *what, const char *policy)
{
    FZ_CHECK(x->allocated_bytes.current == y->allocated_bytes.current &&
                 x->requested_bytes.current == y->requested_bytes.current &&
                 x->allocation.allocated == y->allocation.allocated && x->allocation.freed == y->allocation.freed,
             "%s: a failed %s changed the statistics (allocated %llu -> %llu)", policy, what,
             (unsigned long long)x->allocated_bytes.current, (unsigned long long)y->allocated_bytes.current);
}

/* The statistics against the model of the live and pending blocks. */
static void check_model(const fl_stats *st, const block *live, size_t n, const pending *pend, const char *policy,
                        int op)
{
    uint64_t requested = 0, charged = pend->charged;
    for (size_t i = 0; i < n; i++) {
        requested += live[i].size;
        charged += live[i].charged;
    }
    FZ_CHECK(st->allocation.current == n + pend->n, "%s, op %d: %llu live blocks counted, %zu live, %llu pending",
             policy, op, (unsigned long long)st->allocation.current, n, (unsigned long long)pend->n);
    FZ_CHECK(st->requested_bytes.current == requested, "%s, op %d: requested_bytes %llu, live blocks asked %llu",
             policy, op, (unsigned long long)st->requested_bytes.current, (unsigned long long)requested);
    FZ_CHECK(st->allocated_bytes.current == charged, "%s, op %d: allocated_bytes %llu, blocks charged %llu", policy,
             op, (unsigned long long)st->allocated_bytes.current, (unsigned long long)charged);
    FZ_CHECK(st->allocated_bytes.current <= st->reserved_bytes.current,
             "%s, op %d: %llu bytes allocated in %llu reserved", policy, op,
             (unsigned long long)st->allocated_bytes.current, (unsigned long long)st->reserved_bytes.current);
    FZ_CHECK(st->reserved_bytes.current <= FZ_CAPACITY, "%s, op %d: device over capacity", policy, op);
    FZ_CHECK(st->allocated_bytes.peak >= st->allocated_bytes.current &&
                 st->reserved_bytes.peak >= st->reserved_bytes.current &&
                 st->requested_bytes.peak >= st->requested_bytes.current &&
                 st->allocation.peak >= st->allocation.current,
             "%s, op %d: a peak below its current value", policy, op);
    FZ_CHECK(st->allocation.allocated - st->allocation.freed == st->allocation.current,
             "%s, op %d: allocation counts %llu - %llu != %llu", policy, op,
             (unsigned long long)st->allocation.allocated, (unsigned long long)st->allocation.freed,
             (unsigned long long)st->allocation.current);
    FZ_CHECK(st->external_fragmentation >= 0 && st->external_fragmentation <= 1,
             "%s, op %d: external fragmentation %g", policy, op, st->external_fragmentation);
}

/* fl_stats_json and fl_memory_summary keep snprintf's contract for any buffer size. */
static void check_text(const fl_stats *st, size_t cut, const char *policy)
{
    static char full[1 << 16], part[1 << 16];
    size_t (*const fns[])(const fl_stats *, char *, size_t) = {fl_stats_json, fl_memory_summary};
    for (int f = 0; f < 2; f++) {
        size_t len = fns[f](st, full, sizeof full);
        FZ_CHECK(len < sizeof full && strlen(full) == len, "%s: text of %zu bytes, strlen %zu", policy, len,
                 strlen(full));
        size_t n = cut % (len + 2);
        memset(part, 'x', n + 1);
        FZ_CHECK(fns[f](st, n ? part : NULL, n) == len, "%s: length depends on the buffer", policy);
        if (n) {
            FZ_CHECK(strlen(part) == (n - 1 < len ? n - 1 : len), "%s: cut text not terminated at %zu", policy, n);
            FZ_CHECK(memcmp(part, full, strlen(part)) == 0, "%s: cut text differs", policy);
        }
        FZ_CHECK(part[n] == 'x' || n == 0, "%s: wrote past %zu bytes", policy, n);
    }
}

static void check_new_block(const block *live, size_t n, const block *b, const char *policy)
{
    FZ_CHECK(b->addr % 512 == 0, "%s: address 0x%llx not 512-aligned", policy, (unsigned long long)b->addr);
    FZ_CHECK(b->charged >= b->size, "%s: %llu bytes charged for a block of %llu", policy,
             (unsigned long long)b->charged, (unsigned long long)b->size);
    FZ_CHECK(b->addr + b->charged > b->addr, "%s: block wraps the address space", policy);
    for (size_t i = 0; i < n; i++) {
        const block *o = &live[i];
        FZ_CHECK(b->addr + b->charged <= o->addr || o->addr + o->charged <= b->addr,
                 "%s: [0x%llx, +%llu) overlaps live [0x%llx, +%llu)", policy, (unsigned long long)b->addr,
                 (unsigned long long)b->charged, (unsigned long long)o->addr, (unsigned long long)o->charged);
    }
}

static int is_live(const block *live, size_t n, uint64_t addr)
{
    for (size_t i = 0; i < n; i++)
        if (live[i].addr == addr)
            return 1;
    return 0;
}

/* The device's page size for an input: read, not consumed (the byte still decodes as the
 * first operation), so every corpus entry keeps its meaning on one of the three devices. */
static uint64_t fz_granularity(const uint8_t *data, size_t size)
{
    if (!size || !(data[0] & 0x80))
        return (uint64_t)2 << 20;
    return data[0] & 0x40 ? (uint64_t)64 << 10 : (uint64_t)4 << 10;
}

static void run_policy(const char *policy, const uint8_t *data, size_t size)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    sp.capacity = FZ_CAPACITY;
    sp.granularity = fz_granularity(data, size);
    fl_device *dev;
    FZ_CHECK(fl_sim_device_create(&sp, &dev) == FL_OK, "sim device: %s", fl_last_error());
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.policy, sizeof cfg.policy, "%s", policy);
    cfg.oom_report = 0; /* out of memory is routine here: keep stderr for findings */
    fl_allocator *a;
    FZ_CHECK(fl_allocator_create(&cfg, dev, &a) == FL_OK, "%s: create: %s", policy, fl_last_error());

    block live[FZ_MAX_LIVE];
    size_t n_live = 0;
    uint64_t freed_addr = 0, limit = 0; /* the last address freed: for double frees */
    input in = {data, size};
    pending pend = {0, 0};
    fl_stats before, after;
    int op;
    for (op = 0; in.n && op < FZ_MAX_OPS; op++) {
        uint8_t code = take8(&in);
        snapshot_stats(a, &before);
        fl_status s;
        switch (code % 20) {
        case 0: case 1: case 2: case 3: case 4: case 5: case 6: { /* alloc */
            uint64_t sz = decode_size(&in), stream = take8(&in) % 3, addr = 0;
            if (n_live == FZ_MAX_LIVE)
                break;
            s = fl_alloc(a, sz, stream, &addr);
            snapshot_stats(a, &after);
            uint64_t released = 0;
            if (sz) { /* the pending frees complete first */
                released = pend.charged;
                pend = (pending){0, 0};
            }
            if (s != FL_OK) {
                FZ_CHECK(s == FL_ERR_OOM || (s == FL_ERR_INVALID && sz == 0), "%s: alloc %llu: %s: %s", policy,
                         (unsigned long long)sz, fl_status_str(s), fl_last_error());
                FZ_CHECK(sz == 0 || sz > FZ_CAPACITY / 2 || limit || n_live > 0 ||
                             before.reserved_bytes.current > 0,
                         "%s: alloc %llu failed on an empty device", policy, (unsigned long long)sz);
                FZ_CHECK(after.allocation.allocated == before.allocation.allocated, "%s: a failed alloc counted", policy);
                if (s == FL_ERR_OOM) {
                    fl_oom_report r;
                    FZ_CHECK(fl_last_oom(a, &r) == FL_OK && r.request == sz, "%s: no OOM report for %llu", policy,
                             (unsigned long long)sz);
                }
                break;
            }
            FZ_CHECK(sz != 0, "%s: alloc of 0 bytes succeeded", policy);
            block b = {addr, sz, after.allocated_bytes.current + released - before.allocated_bytes.current, 0};
            check_new_block(live, n_live, &b, policy);
            live[n_live++] = b;
            break;
        }
        case 7: case 8: case 9: case 10: { /* free a live block, sized or not */
            if (!n_live)
                break;
            uint8_t how = take8(&in);
            size_t i = how % n_live;
            if (how & 0x80) {
                uint64_t wrong = live[i].size + 1 + take8(&in);
                s = fl_free_sized(a, live[i].addr, wrong);
                snapshot_stats(a, &after);
                FZ_CHECK(s == FL_ERR_INVALID, "%s: free of a block with the wrong size: %s", policy,
                         fl_status_str(s));
                same_counts(&before, &after, "sized free", policy);
                s = fl_free_sized(a, live[i].addr, live[i].size);
            } else {
                s = fl_free(a, live[i].addr);
            }
            FZ_CHECK(s == FL_OK, "%s: free of live 0x%llx: %s", policy, (unsigned long long)live[i].addr,
                     fl_last_error());
            snapshot_stats(a, &after);
            if (live[i].shared && after.allocation.freed == before.allocation.freed) {
                FZ_CHECK(after.allocated_bytes.current == before.allocated_bytes.current,
                         "%s: a deferred free changed allocated bytes", policy);
                pend.n++;
                pend.charged += live[i].charged;
            } else {
                FZ_CHECK(before.allocated_bytes.current - after.allocated_bytes.current == live[i].charged,
                         "%s: free of a block charged %llu gave back %llu", policy,
                         (unsigned long long)live[i].charged,
                         (unsigned long long)(before.allocated_bytes.current - after.allocated_bytes.current));
            }
            freed_addr = live[i].addr;
            live[i] = live[--n_live];
            break;
        }
        case 11: case 12: { /* free an address that is not a live block's start */
            uint64_t addr;
            uint8_t how = take8(&in);
            if (how % 4 == 0 && freed_addr)
                addr = freed_addr; /* double free */
            else if (how % 4 == 1 && n_live)
                addr = live[take8(&in) % n_live].addr + 512 * (1 + take8(&in) % 8); /* inside a block */
            else if (how % 4 == 2)
                addr = how & 0x40 ? UINT64_MAX : 0; /* the hash maps' reserved key, and null */
            else
                addr = (uint64_t)take32(&in) << (take8(&in) % 33);
            if (is_live(live, n_live, addr))
                break;
            s = how & 0x80 ? fl_record_stream(a, addr, 1) : fl_free(a, addr);
            snapshot_stats(a, &after);
            FZ_CHECK(s == FL_ERR_NOT_FOUND, "%s: %s of unknown 0x%llx: %s", policy,
                     how & 0x80 ? "record_stream" : "free", (unsigned long long)addr, fl_status_str(s));
            same_counts(&before, &after, "free", policy);
            FZ_CHECK(after.reserved_bytes.current == before.reserved_bytes.current,
                     "%s: a bad free changed device memory", policy);
            break;
        }
        case 13: { /* the block is used on another stream too */
            if (!n_live)
                break;
            uint8_t how = take8(&in);
            s = fl_record_stream(a, live[how % n_live].addr, (uint64_t)(how >> 6));
            FZ_CHECK(s == FL_OK, "%s: record_stream: %s", policy, fl_last_error());
            live[how % n_live].shared = 1;
            break;
        }
        case 14: case 15:
            s = fl_empty_cache(a);
            snapshot_stats(a, &after);
            FZ_CHECK(s == FL_OK, "%s: empty_cache: %s", policy, fl_last_error());
            pend = (pending){0, 0};
            FZ_CHECK(after.reserved_bytes.current <= before.reserved_bytes.current, "%s: empty_cache took memory",
                     policy);
            break;
        case 16: { /* set_limit: 0 (none) or 2..64 MiB */
            uint8_t v = take8(&in);
            uint64_t want = v % 4 == 0 ? 0 : (uint64_t)(2 + v % 63) << 20;
            s = fl_set_limit(a, want);
            snapshot_stats(a, &after);
            FZ_CHECK(s == FL_OK || s == FL_ERR_UNSUPPORTED || s == FL_ERR_INVALID, "%s: set_limit %llu: %s",
                     policy, (unsigned long long)want, fl_last_error());
            if (s == FL_OK)
                limit = want;
            same_counts(&before, &after, "set_limit", policy);
            break;
        }
        case 17:
            fl_reset_peak_stats(a);
            snapshot_stats(a, &after);
            FZ_CHECK(after.allocated_bytes.peak == after.allocated_bytes.current &&
                         after.reserved_bytes.peak == after.reserved_bytes.current,
                     "%s: peaks not reset", policy);
            break;
        default:
            check_text(&before, take8(&in) * 7u, policy);
            break;
        }
        FZ_CHECK(fl_allocator_check(a) == 0, "%s: self-check after op %d (code %u): %s", policy, op, code,
                 fl_last_error());
        snapshot_stats(a, &after);
        check_model(&after, live, n_live, &pend, policy, op);
    }

    while (n_live) {
        n_live--;
        FZ_CHECK(fl_free(a, live[n_live].addr) == FL_OK, "%s: final free: %s", policy, fl_last_error());
    }
    FZ_CHECK(fl_empty_cache(a) == FL_OK, "%s: final empty_cache: %s", policy, fl_last_error());
    pend = (pending){0, 0};
    FZ_CHECK(fl_allocator_check(a) == 0, "%s: final self-check: %s", policy, fl_last_error());
    snapshot_stats(a, &after);
    check_model(&after, live, 0, &pend, policy, op);
    FZ_CHECK(after.active_bytes.current == 0, "%s: %llu bytes active after freeing all and emptying the cache",
             policy, (unsigned long long)after.active_bytes.current);
    if (strcmp(policy, "nocache") == 0)
        FZ_CHECK(after.reserved_bytes.current == 0, "%s: %llu bytes of device memory held after freeing all",
                 policy, (unsigned long long)after.reserved_bytes.current);
    fl_allocator_destroy(a);
    fl_device_destroy(dev);
}

/* FL_FUZZ_POLICIES=cca,nocache limits the run to those policies: to triage, or to keep
 * fuzzing the others while a known finding in one is open. */
static int wanted(const char *policy)
{
    const char *only = getenv("FL_FUZZ_POLICIES");
    if (!only || !*only)
        return 1;
    size_t n = strlen(policy);
    for (const char *p = only; (p = strstr(p, policy)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (const char *const *p = fl_policy_names(); *p; p++)
        if (wanted(*p))
            run_policy(*p, data, size);
    return 0;
}
