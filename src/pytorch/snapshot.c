/* PyTorch memory snapshot -> fli_trace: reads device_traces[device], segments and
 * allocator_settings from a parsed pickle, reconstructs the blocks that were alive before
 * recording began, and counts what it skipped. */
#include "pytorch/snapshot.h"
#include "pytorch/sites.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"

enum action {
    A_ALLOC,
    A_FREE_REQUESTED,
    A_FREE_COMPLETED,
    A_OOM,
    A_SEGMENT_ALLOC,
    A_SEGMENT_FREE,
    A_SEGMENT_MAP,
    A_SEGMENT_UNMAP,
    A_SNAPSHOT,
    A_UNKNOWN
};

static const char *const action_names[] = {"alloc",       "free_requested", "free_completed",
                                           "oom",         "segment_alloc",  "segment_free",
                                           "segment_map", "segment_unmap",  "snapshot"};

/* One trace entry that matters to the conversion. */
typedef struct rec {
    uint64_t addr, size, stream, time_us;
    uint32_t index;     /* position in device_traces[device] */
    uint32_t site;      /* alloc and oom: where the program asked */
    uint8_t action;
} rec;

/* A segment the allocator held before recording began. */
typedef struct old_seg {
    uint64_t addr, size, stream;
    int small;
} old_seg;

/* A block live when recording began, to be placed in its old segment. */
typedef struct old_block {
    uint64_t addr, size, requested, stream; /* size 0: unknown (freed in the trace) */
} old_block;

typedef struct conv {
    const char *path;
    int device;
    fli_snapshot_info *info;
    fli_trace *out;
    rec *recs;
    size_t n_recs;
    fli_event *synth_live;   /* (b) */
    size_t n_synth_live, cap_synth_live;
    fli_event *synth_freed;  /* (a) */
    size_t n_synth_freed, cap_synth_freed;
    fli_map addrs;           /* address -> ADDR_LIVE / ADDR_DEAD as the trace is run */
    uint64_t live_at_end;   /* traced allocations never freed */
    fli_map segs;            /* segment address -> 1 once the trace allocated (mapped) it */
    old_seg *old;           /* segments older than the recording */
    size_t n_old, cap_old;
    old_block *blocks;      /* blocks live when recording began: (b), then (a) */
    size_t n_blocks, cap_blocks;
    uint64_t seg_delta;     /* reserved bytes the trace's segment events added (mod 2^64) */
    uint64_t oom_delta;     /* ... up to the last oom entry */
    fli_sites sites;
    uint64_t budget;        /* trace entries and segment blocks still allowed (see spend) */
    uint64_t budget_total;
    size_t doc_bytes;
} conv;

enum { ADDR_LIVE = 1, ADDR_DEAD = 2 };

#define WHERE_ENTRY "%s: device_traces[%d][%zu]", c->path, c->device, i

static fl_status push_event(fli_event **v, size_t *n, size_t *cap, const fli_event *e)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        fli_event *p = realloc(*v, nc * sizeof *p);
        if (!p)
            return fli_fail(FL_ERR_NOMEM, "snapshot: no host memory for %zu events", nc);
        *v = p;
        *cap = nc;
    }
    (*v)[(*n)++] = *e;
    return FL_OK;
}

static fl_status grow(void **v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return FL_OK;
    size_t nc = *cap ? *cap * 2 : 64;
    void *p = realloc(*v, nc * size);
    if (!p)
        return fli_fail(FL_ERR_NOMEM, "snapshot: no host memory for %zu records", nc);
    *v = p;
    *cap = nc;
    return FL_OK;
}

static fl_status add_old_segment(conv *c, uint64_t addr, uint64_t size, uint64_t stream, int small)
{
    fl_status s = grow((void **)&c->old, &c->cap_old, c->n_old, sizeof *c->old);
    if (s == FL_OK)
        c->old[c->n_old++] = (old_seg){addr, size, stream, small};
    return s;
}

static fl_status add_old_block(conv *c, uint64_t addr, uint64_t size, uint64_t requested, uint64_t stream)
{
    fl_status s = grow((void **)&c->blocks, &c->cap_blocks, c->n_blocks, sizeof *c->blocks);
    if (s == FL_OK)
        c->blocks[c->n_blocks++] = (old_block){addr, size, requested, stream};
    return s;
}

/* The conversion's budget. The memo makes the parsed pickle a graph: one blocks list can
 * be listed by every segment, one entry by a trace 10^8 times, so what the conversion
 * visits (and the events it makes, at most two per entry or block) is not bounded by the
 * document's size. It gets FL_SNAPSHOT_BUDGET_MIN plus one entry or block per
 * FL_SNAPSHOT_BYTES_PER_ITEM bytes of the parsed document: real snapshots spend 560 to 800
 * arena bytes per entry or block with stacks, ~265 without (measured), so only sharing
 * reaches it. A visit costs at most ~250 bytes (its entry record, address map slots, up
 * to three copies of an event), so a hostile pickle costs at most ~4x its parsed
 * document here. Frames (stack traces) are never visited. */
static fl_status spend(conv *c, uint64_t n, const char *where_fmt, ...) FL_PRINTF(3, 4);
static fl_status spend(conv *c, uint64_t n, const char *where_fmt, ...)
{
    if (n <= c->budget) {
        c->budget -= n;
        return FL_OK;
    }
    char where[256];
    va_list ap;
    va_start(ap, where_fmt);
    vsnprintf(where, sizeof where, where_fmt, ap);
    va_end(ap);
    return fli_fail(FL_ERR_PARSE,
                   "%s: over the conversion budget of %llu trace entries and segment blocks (%d plus one per %d "
                   "bytes of the parsed pickle, %zu bytes): objects listed many times through pickle memo "
                   "references (one blocks list in every segment?) would expand without bound; not converted",
                   where, (unsigned long long)c->budget_total, FL_SNAPSHOT_BUDGET_MIN, FL_SNAPSHOT_BYTES_PER_ITEM,
                   c->doc_bytes);
}

static int action_of(const fli_pk *a)
{
    for (int k = 0; k < A_UNKNOWN; k++)
        if (fli_pk_str_is(a, action_names[k]))
            return k;
    return A_UNKNOWN;
}

/* ---- device_traces[device] -> recs ---------------------------------------------------- */

static fl_status read_entries(conv *c, const fli_pk *trace)
{
    fli_snapshot_info *info = c->info;
    size_t n = fli_pk_len(trace);
    info->n_entries = n;
    if (n > UINT32_MAX - 1)
        return fli_fail(FL_ERR_PARSE, "%s: device_traces[%d] has %zu entries, more than a trace can number",
                       c->path, c->device, n);
    fl_status s0 = spend(c, n, "%s: device_traces[%d] (%zu entries)", c->path, c->device, n);
    if (s0 != FL_OK)
        return s0;
    c->recs = malloc((n ? n : 1) * sizeof *c->recs);
    if (!c->recs)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for %zu trace entries", c->path, n);
    size_t first_unknown = 0;
    const char *unknown_name = NULL;
    uint64_t *count[A_UNKNOWN] = {&info->n_alloc,       &info->n_free_requested, &info->n_free_completed,
                                  &info->n_oom,         &info->n_segment_alloc,  &info->n_segment_free,
                                  &info->n_segment_map, &info->n_segment_unmap,  &info->n_snapshot};
    for (size_t i = 0; i < n; i++) {
        const fli_pk *e = fli_pk_item(trace, i);
        const fli_pk *a;
        fl_status s;
        if ((s = fli_pk_check(e, FL_PK_DICT, WHERE_ENTRY)) != FL_OK ||
            (s = fli_pk_want(e, "action", FL_PK_STR, &a, WHERE_ENTRY)) != FL_OK)
            return s;
        int act = action_of(a);
        rec r = {.index = (uint32_t)i, .action = (uint8_t)act};
        int64_t stream = 0;
        switch (act) {
        case A_SEGMENT_ALLOC:
        case A_SEGMENT_FREE:
        case A_SEGMENT_MAP:
        case A_SEGMENT_UNMAP:
            if ((s = fli_pk_want_uint(e, "addr", &r.addr, WHERE_ENTRY)) != FL_OK ||
                (s = fli_pk_want_uint(e, "size", &r.size, WHERE_ENTRY)) != FL_OK ||
                (s = fli_pk_opt_int(e, "stream", &stream, WHERE_ENTRY)) != FL_OK ||
                (s = fli_pk_opt_uint(e, "time_us", &r.time_us, WHERE_ENTRY)) != FL_OK)
                return s;
            r.stream = (uint64_t)stream;
            c->recs[c->n_recs++] = r;
            break;
        case A_ALLOC:
        case A_FREE_REQUESTED:
        case A_FREE_COMPLETED:
        case A_OOM:
            if (act == A_OOM) {
                uint64_t dev_free = 0;
                if ((s = fli_pk_opt_uint(e, "device_free", &dev_free, WHERE_ENTRY)) != FL_OK)
                    return s;
                info->oom_entry = (int64_t)i;
                info->oom_device_free = dev_free;
            } else if ((s = fli_pk_want_uint(e, "addr", &r.addr, WHERE_ENTRY)) != FL_OK) {
                return s;
            }
            if (act == A_ALLOC || act == A_OOM)
                r.site = fli_sites_of(&c->sites, fli_pk_dict_get(e, "frames"));
            if ((s = fli_pk_want_uint(e, "size", &r.size, WHERE_ENTRY)) != FL_OK ||
                (s = fli_pk_want_int(e, "stream", &stream, WHERE_ENTRY)) != FL_OK ||
                (s = fli_pk_opt_uint(e, "time_us", &r.time_us, WHERE_ENTRY)) != FL_OK)
                return s;
            /* PyTorch never records a zero-byte request; the CSV format forbids one. */
            if (r.size == 0 && (act == A_ALLOC || act == A_OOM))
                return fli_fail(FL_ERR_PARSE, "%s: device_traces[%d][%zu]: 'size' is 0 on an %s entry",
                               c->path, c->device, i, action_names[act]);
            r.stream = (uint64_t)stream; /* a cudaStream_t stored as int64: keep the bits */
            if (act == A_OOM) {
                info->oom_size = r.size;
                info->oom_stream = r.stream;
            }
            c->recs[c->n_recs++] = r;
            break;
        case A_UNKNOWN:
            if (!info->n_unknown_actions++) {
                first_unknown = i;
                unknown_name = a->u.s.p;
            }
            break;
        default:
            break;
        }
        if (act != A_UNKNOWN)
            (*count[act])++;
    }
    if (info->n_unknown_actions) {
        /* The name is untrusted text: printable ASCII only, cut short. */
        char q[48];
        size_t o = 0;
        for (const char *p = unknown_name; *p && o < 40; p++)
            q[o++] = *p >= 0x20 && *p < 0x7f ? *p : '?';
        strcpy(q + o, unknown_name[o] && o == 40 ? "..." : "");
        return fli_trace_warn(c->out,
                             "%s: device_traces[%d]: %llu entries with actions this reader does not know ('%s' "
                             "first, at [%zu]): skipped",
                             c->path, c->device, (unsigned long long)info->n_unknown_actions, q, first_unknown);
    }
    return FL_OK;
}

/* Byte counts for summaries only: they stop at 2^64 - 1 rather than wrap. */
static uint64_t sat_add(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

/* ---- the trace as recorded: which frees are of blocks allocated before it ------------- */

/* (a): a free of an address the trace never allocated: the block was alive before
 * recording began, so it is allocated at the start with the free's size and stream. */
static fl_status reconstruct_freed(conv *c, const rec *r)
{
    if (r->size == 0)
        return fli_trace_warn(c->out, "%s: device_traces[%d][%u]: free of 0x%llx with size 0 and no earlier "
                                     "alloc: not reconstructed",
                             c->path, c->device, r->index, (unsigned long long)r->addr);
    fli_event e = {.ptr = r->addr, .size = r->size, .stream = r->stream, .line = r->index + 1,
                  .kind = FL_EV_ALLOC};
    c->info->synth_freed_bytes = sat_add(c->info->synth_freed_bytes, r->size);
    fl_status s = add_old_block(c, r->addr, 0, r->size, r->stream);
    return s != FL_OK ? s : push_event(&c->synth_freed, &c->n_synth_freed, &c->cap_synth_freed, &e);
}

static fl_status run_trace(conv *c, int free_action)
{
    fl_status s;
    for (size_t j = 0; j < c->n_recs; j++) {
        const rec *r = &c->recs[j];
        uint64_t state = 0;
        if (r->action >= A_SEGMENT_ALLOC && r->action <= A_SEGMENT_UNMAP) {
            int seen = fli_map_get(&c->segs, r->addr, &state);
            if (r->action == A_SEGMENT_ALLOC || r->action == A_SEGMENT_MAP) {
                c->seg_delta += r->size;
                c->info->segment_alloc_bytes = sat_add(c->info->segment_alloc_bytes, r->size);
            } else {
                c->seg_delta -= r->size;
                c->info->segment_free_bytes = sat_add(c->info->segment_free_bytes, r->size);
                /* Given back, never obtained in the trace: it was there when recording
                 * began. Unmapped pages of an expandable segment are counted, not rebuilt. */
                if (!seen) {
                    c->info->n_old_segments++;
                    c->info->old_segment_bytes = sat_add(c->info->old_segment_bytes, r->size);
                    if (r->action == A_SEGMENT_FREE &&
                        (s = add_old_segment(c, r->addr, r->size, r->stream, r->size <= 2 * FL_MiB)) != FL_OK)
                        return s;
                }
            }
            if ((s = fli_map_put(&c->segs, r->addr, 1)) != FL_OK)
                return s;
            continue;
        }
        if (r->action == A_OOM)
            c->oom_delta = c->seg_delta;
        int known = fli_map_get(&c->addrs, r->addr, &state);
        if (r->action == A_ALLOC) {
            if (known && state == ADDR_LIVE)
                return fli_fail(FL_ERR_PARSE,
                               "%s: device_traces[%d][%u]: alloc of 0x%llx, which the trace allocated before "
                               "and never freed: the trace is inconsistent",
                               c->path, c->device, r->index, (unsigned long long)r->addr);
            if ((s = fli_map_put(&c->addrs, r->addr, ADDR_LIVE)) != FL_OK)
                return s;
            c->live_at_end++;
        } else if (r->action == free_action) {
            if (known && state == ADDR_LIVE)
                c->live_at_end--;
            else if (known)
                c->info->n_double_frees++; /* kept: fli_prepare skips it with a warning */
            else if ((s = reconstruct_freed(c, r)) != FL_OK)
                return s;
            if ((s = fli_map_put(&c->addrs, r->addr, ADDR_DEAD)) != FL_OK)
                return s;
        }
    }
    c->info->n_synth_freed = c->n_synth_freed;
    return FL_OK;
}

/* ---- segments: the state at dump time ------------------------------------------------- */

#define WHERE_SEG "%s: segments[%zu]", c->path, si
#define WHERE_BLOCK "%s: segments[%zu].blocks[%zu]", c->path, si, bi

static fl_status read_segments(conv *c, const fli_pk *segments, int free_action)
{
    fli_snapshot_info *info = c->info;
    fl_status s;
    uint64_t live_matched = 0;
    for (size_t si = 0; si < fli_pk_len(segments); si++) {
        const fli_pk *seg = fli_pk_item(segments, si), *blocks;
        int64_t dev = c->device, stream;
        uint64_t addr, total, allocated = 0;
        int expandable = 0, private_pool = 0;
        const fli_pk *pool_id, *type;
        if ((s = fli_pk_check(seg, FL_PK_DICT, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_opt_int(seg, "device", &dev, WHERE_SEG)) != FL_OK)
            return s;
        if (dev != c->device)
            continue;
        if ((s = spend(c, fli_pk_len(fli_pk_dict_get(seg, "blocks")), WHERE_SEG)) != FL_OK ||
            (s = fli_pk_want_uint(seg, "address", &addr, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_want_uint(seg, "total_size", &total, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_opt_uint(seg, "allocated_size", &allocated, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_want_int(seg, "stream", &stream, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_opt_bool(seg, "is_expandable", &expandable, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_want(seg, "blocks", FL_PK_LIST, &blocks, WHERE_SEG)) != FL_OK ||
            (s = fli_pk_opt(seg, "segment_type", FL_PK_STR, &type, WHERE_SEG)) != FL_OK)
            return s;
        /* Memory pools (CUDA graphs, torch.cuda.MemPool, PyTorch 2.1+): (0, 0) is the
         * default pool; a segment of another pool never serves the program's ordinary
         * requests, so it is not rebuilt for the emulation. */
        if ((pool_id = fli_pk_dict_get(seg, "segment_pool_id")) != NULL && pool_id->type != FL_PK_NONE) {
            if ((pool_id->type != FL_PK_TUPLE && pool_id->type != FL_PK_LIST) || fli_pk_len(pool_id) != 2 ||
                fli_pk_item(pool_id, 0)->type != FL_PK_INT || fli_pk_item(pool_id, 1)->type != FL_PK_INT)
                return fli_fail(FL_ERR_PARSE, "%s: segments[%zu]: 'segment_pool_id' is %s, expected a tuple of two "
                                             "ints", c->path, si, fli_pk_type_name(pool_id->type));
            private_pool = fli_pk_item(pool_id, 0)->u.i != 0 || fli_pk_item(pool_id, 1)->u.i != 0;
        }
        info->n_private_segments += private_pool != 0;
        uint64_t seen;
        if (!fli_map_get(&c->segs, addr, &seen)) {
            /* Held at dump, never obtained in the trace: older than the recording. */
            info->n_old_segments++;
            info->old_segment_bytes = sat_add(info->old_segment_bytes, total);
            int small = type ? !strcmp(type->u.s.p, "small") : total <= 2 * FL_MiB;
            if (!expandable && !private_pool && (s = add_old_segment(c, addr, total, (uint64_t)stream, small)) != FL_OK)
                return s;
        }
        info->n_segments++;
        info->n_expandable_segments += expandable != 0;
        /* What PyTorch held: the doctor's capacity is built on it, so a sum that would
         * wrap (a hostile file) is an error rather than a small number. */
        if (__builtin_add_overflow(info->reserved_bytes, total, &info->reserved_bytes) ||
            __builtin_add_overflow(info->allocated_bytes, allocated, &info->allocated_bytes))
            return fli_fail(FL_ERR_PARSE, "%s: segments[%zu]: the segments' total_size (or allocated_size) add up "
                                         "to more than 2^64 bytes", c->path, si);
        for (size_t bi = 0; bi < fli_pk_len(blocks); bi++) {
            const fli_pk *b = fli_pk_item(blocks, bi);
            uint64_t size, requested = 0, baddr = addr;
            const char *state;
            if ((s = fli_pk_check(b, FL_PK_DICT, WHERE_BLOCK)) != FL_OK ||
                (s = fli_pk_want_uint(b, "size", &size, WHERE_BLOCK)) != FL_OK ||
                (s = fli_pk_opt_uint(b, "requested_size", &requested, WHERE_BLOCK)) != FL_OK ||
                (s = fli_pk_opt_uint(b, "address", &baddr, WHERE_BLOCK)) != FL_OK ||
                (s = fli_pk_want_str(b, "state", &state, NULL, WHERE_BLOCK)) != FL_OK)
                return s;
            /* Blocks tile their segment: without an address, a block starts where the
             * previous one ended. */
            addr = baddr + size;
            int pending = !strcmp(state, "active_pending_free");
            if (!pending && strcmp(state, "active_allocated") != 0) {
                if (strcmp(state, "inactive") != 0)
                    return fli_fail(FL_ERR_PARSE,
                                   "%s: segments[%zu].blocks[%zu]: state '%.40s' is not active_allocated, "
                                   "active_pending_free or inactive",
                                   c->path, si, bi, state);
                continue;
            }
            info->n_active_blocks++;
            uint64_t st = 0;
            if (fli_map_get(&c->addrs, baddr, &st)) {
                if (st == ADDR_LIVE)
                    live_matched++;
                else if (!(pending && free_action == A_FREE_REQUESTED)) /* freed, not yet completed */
                    info->n_active_unmatched++;
                continue;
            }
            /* (b): allocated before recording began and still allocated at dump */
            uint64_t bytes = requested ? requested : size;
            if (bytes == 0)
                continue;
            /* A private pool's block never shares a segment with the default pool's: it is
             * kept apart as PyTorch keeps it, on a stream of its own. */
            uint64_t bstream = (uint64_t)stream ^ (private_pool ? FL_SNAPSHOT_PRIVATE_POOL : 0);
            fli_event e = {.ptr = baddr, .size = bytes, .stream = bstream, .kind = FL_EV_ALLOC,
                          .site = fli_sites_of(&c->sites, fli_pk_dict_get(b, "frames"))};
            if ((s = push_event(&c->synth_live, &c->n_synth_live, &c->cap_synth_live, &e)) != FL_OK ||
                (s = add_old_block(c, baddr, size, bytes, bstream)) != FL_OK)
                return s;
            info->synth_live_bytes = sat_add(info->synth_live_bytes, bytes);
        }
    }
    info->n_synth_live = c->n_synth_live;
    info->n_live_not_in_segments = c->live_at_end - live_matched;
    if (info->n_active_unmatched &&
        (s = fli_trace_warn(c->out, "%s: %llu blocks allocated at dump were freed by the trace and not allocated "
                                   "again (events lost?): not reconstructed",
                           c->path, (unsigned long long)info->n_active_unmatched)) != FL_OK)
        return s;
    return FL_OK;
}

/* ---- allocator_settings --------------------------------------------------------------- */

#define WHERE_SET "%s: allocator_settings", c->path

/* Knobs PyTorch itself refuses were never recorded by it: refused here, as the input's
 * fault, not later by the allocator that doctor, report or fidelity build from them (an
 * internal error, exit 4, before). */
static fl_status knobs_valid(const conv *c, const fli_snapshot_info *info)
{
    fl_config cfg;
    fli_snapshot_config(info, &cfg);
    if (fli_cca_check_knobs(&cfg, "allocator_settings") != FL_OK) {
        char why[256]; /* fli_fail formats into the buffer fl_last_error() returns */
        snprintf(why, sizeof why, "%s", fl_last_error());
        return fli_fail(FL_ERR_PARSE, "%s: %s, which PyTorch refuses", c->path, why);
    }
    return FL_OK;
}

static fl_status read_settings(conv *c, const fli_pk *set)
{
    fli_snapshot_info *info = c->info;
    fl_status s;
    const char *conf = NULL;
    size_t len = 0;
    const fli_pk *divs = fli_pk_dict_get(set, "roundup_power2_divisions"), *max_split;
    info->has_settings = 1;
    /* The variable's newer name (PYTORCH_ALLOC_CONF) when the old one is absent or empty. */
    if ((s = fli_pk_opt_str(set, "PYTORCH_CUDA_ALLOC_CONF", &conf, &len, WHERE_SET)) != FL_OK ||
        ((!conf || !len) && (s = fli_pk_opt_str(set, "PYTORCH_ALLOC_CONF", &conf, &len, WHERE_SET)) != FL_OK) ||
        (s = fli_pk_opt_bool(set, "expandable_segments", &info->expandable_segments, WHERE_SET)) != FL_OK ||
        (s = fli_pk_opt_float(set, "garbage_collection_threshold", &info->gc_threshold, WHERE_SET)) != FL_OK)
        return s;
    if (conf) {
        info->alloc_conf_truncated = len >= sizeof info->alloc_conf;
        size_t n = info->alloc_conf_truncated ? sizeof info->alloc_conf - 1 : len;
        memcpy(info->alloc_conf, conf, n);
        info->alloc_conf[n] = 0;
    }
    /* No limit is SIZE_MAX, which arrives as -1 after PyTorch's cast to int64 (or as an
     * int over 64 bits, or None, from other writers). */
    max_split = fli_pk_dict_get(set, "max_split_size");
    if (max_split && max_split->type == FL_PK_INT)
        info->max_split_size = max_split->u.i > 0 ? (uint64_t)max_split->u.i : 0;
    else if (max_split && max_split->type != FL_PK_NONE && max_split->type != FL_PK_BIGINT)
        return fli_fail(FL_ERR_PARSE, "%s: allocator_settings: 'max_split_size' is %s, expected an int", c->path,
                       fli_pk_type_name(max_split->type));
    if (!divs || divs->type == FL_PK_NONE)
        return knobs_valid(c, info);
    /* A dict keyed "1", "2", "4", ... MiB (the lower bound of each power-of-two interval),
     * or a list in interval order. */
    if (divs->type != FL_PK_DICT && divs->type != FL_PK_LIST)
        return fli_fail(FL_ERR_PARSE, "%s: allocator_settings: 'roundup_power2_divisions' is %s, expected a dict",
                       c->path, fli_pk_type_name(divs->type));
    for (size_t i = 0; i < fli_pk_len(divs); i++) {
        const fli_pk *k = divs->type == FL_PK_DICT ? fli_pk_key(divs, i) : NULL;
        const fli_pk *v = divs->type == FL_PK_DICT ? fli_pk_value(divs, i) : fli_pk_item(divs, i);
        char *end = "";
        unsigned long mib = k ? (k->type == FL_PK_STR ? strtoul(k->u.s.p, &end, 10) : 0) : 1ul << (i < 63 ? i : 63);
        if ((k && k->type != FL_PK_STR) || *end || !fli_is_pow2(mib) || v->type != FL_PK_INT || v->u.i < 0 ||
            v->u.i > UINT32_MAX)
            return fli_fail(FL_ERR_PARSE,
                           "%s: allocator_settings: roundup_power2_divisions[%zu] is not \"MiB\": divisions "
                           "(a power-of-two key as a str, an int >= 0)",
                           c->path, i);
        int idx = fli_log2_floor(mib);
        if (idx < FL_ROUNDUP_INTERVALS)
            info->roundup_divisions[idx] = (uint32_t)v->u.i;
    }
    return knobs_valid(c, info);
}

/* ---- segments older than the recording, for the emulation ----------------------------- */

static int by_addr_seg(const void *a, const void *b)
{
    const old_seg *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int by_addr_block(const void *a, const void *b)
{
    const old_block *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* Each old segment with the live blocks inside it (out->seeds): blocks live when
 * recording began lie in segments that existed then. A block outside every old segment
 * (events lost) is left to an ordinary allocation; a segment whose blocks overlap is not
 * rebuilt. The same address listed twice (a segment freed and obtained again before the
 * dump is not old) keeps its first listing. */
static fl_status build_seeds(conv *c)
{
    fli_trace *t = c->out;
    if (!c->n_old)
        return FL_OK;
    qsort(c->old, c->n_old, sizeof *c->old, by_addr_seg);
    if (c->n_blocks) /* qsort of a NULL array, even empty, is undefined */
        qsort(c->blocks, c->n_blocks, sizeof *c->blocks, by_addr_block);
    if (!(t->seeds = calloc(c->n_old, sizeof *t->seeds)) ||
        !(t->seed_blocks = calloc(c->n_blocks ? c->n_blocks : 1, sizeof *t->seed_blocks)))
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for %zu old segments", c->path, c->n_old);
    size_t b = 0;
    for (size_t i = 0; i < c->n_old; i++) {
        const old_seg *o = &c->old[i];
        /* Ends saturate: the file's sizes are untrusted. */
        uint64_t seg_end = sat_add(o->addr, o->size);
        if (i && o->addr < sat_add(c->old[i - 1].addr, c->old[i - 1].size))
            continue; /* overlaps the previous one: not the allocator's state */
        fli_seed_segment *sg = &t->seeds[t->n_seeds];
        *sg = (fli_seed_segment){.addr = o->addr, .size = o->size, .stream = o->stream, .small = o->small,
                                .first_block = t->n_seed_blocks};
        while (b < c->n_blocks && c->blocks[b].addr < o->addr)
            b++;
        int ok = 1;
        uint64_t end = o->addr;
        for (; b < c->n_blocks && c->blocks[b].addr < seg_end; b++) {
            const old_block *k = &c->blocks[b];
            uint64_t least = k->size ? k->size : k->requested > (UINT64_C(1) << 62) ? UINT64_MAX : fli_live_size(k->requested);
            if (k->addr < end || k->stream != o->stream || least > seg_end - k->addr)
                ok = 0;
            end = sat_add(k->addr, least);
            t->seed_blocks[t->n_seed_blocks + sg->n_blocks++] =
                (fli_seed_block){k->addr - o->addr, k->size, k->addr, k->requested};
        }
        if (!ok)
            continue;
        t->n_seed_blocks += sg->n_blocks;
        t->n_seeds++;
        c->info->n_seeded_segments++;
        c->info->seeded_bytes = sat_add(c->info->seeded_bytes, o->size);
    }
    return FL_OK;
}

/* ---- the conversion ------------------------------------------------------------------- */

static fl_status emit(conv *c, int free_action)
{
    fli_trace *t = c->out;
    fl_status s;
    fli_map streams = {0};
    if ((s = fli_map_init(&streams, 8)) != FL_OK)
        return s;
    for (size_t i = 0; i < c->n_synth_live && s == FL_OK; i++)
        s = fli_trace_push(t, &c->synth_live[i]);
    for (size_t i = 0; i < c->n_synth_freed && s == FL_OK; i++)
        s = fli_trace_push(t, &c->synth_freed[i]);
    for (size_t j = 0; j < c->n_recs && s == FL_OK; j++) {
        const rec *r = &c->recs[j];
        fli_event e = {.time_us = r->time_us, .ptr = r->addr, .size = r->size, .stream = r->stream,
                      .line = r->index + 1, .site = r->site};
        if (r->action == A_ALLOC)
            e.kind = FL_EV_ALLOC;
        else if (r->action == free_action)
            e.kind = FL_EV_FREE;
        else if (r->action == A_OOM)
            e.kind = FL_EV_ALLOC_FAIL, e.ptr = 0;
        else if (r->action == A_SEGMENT_FREE || r->action == A_SEGMENT_UNMAP)
            e.kind = FL_EV_RELEASE;
        else
            continue;
        s = fli_trace_push(t, &e);
    }
    for (size_t i = 0; i < t->n && s == FL_OK; i++)
        if (t->ev[i].kind != FL_EV_RELEASE)
            s = fli_map_put(&streams, t->ev[i].stream, 1);
    c->info->n_streams = streams.count;
    c->info->n_events = t->n;
    fli_map_free(&streams);
    return s;
}

static fl_status convert(conv *c, const fli_pk *root)
{
    const char *path = c->path;
    const fli_pk *traces, *segments, *settings, *trace;
    fl_status s;
    if ((s = fli_pk_check(root, FL_PK_DICT, "%s: the snapshot", path)) != FL_OK ||
        (s = fli_pk_opt(root, "segments", FL_PK_LIST, &segments, "%s", path)) != FL_OK ||
        (s = fli_pk_opt(root, "allocator_settings", FL_PK_DICT, &settings, "%s", path)) != FL_OK)
        return s;
    if (!fli_pk_dict_get(root, "device_traces"))
        return fli_fail(FL_ERR_PARSE, "%s: no 'device_traces': not a memory snapshot, or one taken without "
                                     "torch.cuda.memory._record_memory_history()", path);
    if ((s = fli_pk_want(root, "device_traces", FL_PK_LIST, &traces, "%s", path)) != FL_OK)
        return s;
    size_t n_dev = fli_pk_len(traces);
    c->info->n_devices = n_dev > INT32_MAX ? INT32_MAX : (int)n_dev;
    if (c->device < 0 || (size_t)c->device >= n_dev)
        return fli_fail(FL_ERR_INVALID, "%s: no device %d: the snapshot has %zu device trace%s", path, c->device,
                       n_dev, n_dev == 1 ? "" : "s");
    trace = fli_pk_item(traces, (size_t)c->device);
    if ((s = fli_pk_check(trace, FL_PK_LIST, "%s: device_traces[%d]", path, c->device)) != FL_OK ||
        (s = read_entries(c, trace)) != FL_OK)
        return s;
    /* free_completed is when the block really returns to the allocator (its streams'
     * work is done); free_requested stands in only when no completion was recorded. */
    int free_action =
        c->info->n_free_completed || !c->info->n_free_requested ? A_FREE_COMPLETED : A_FREE_REQUESTED;
    c->info->frees_completed = free_action == A_FREE_COMPLETED;
    if ((s = fli_map_init(&c->addrs, c->n_recs)) != FL_OK || (s = fli_map_init(&c->segs, 64)) != FL_OK ||
        (s = run_trace(c, free_action)) != FL_OK ||
        (segments && (s = read_segments(c, segments, free_action)) != FL_OK) ||
        (settings && (s = read_settings(c, settings)) != FL_OK) || (s = build_seeds(c)) != FL_OK)
        return s;
    /* What the allocator held at the oom entry: at dump, less what the segment events
     * after it added (the deltas wrap around 2^64 together, so their difference holds). */
    fli_snapshot_info *info = c->info;
    uint64_t after = c->seg_delta - c->oom_delta;
    info->oom_reserved = info->reserved_bytes - after;
    if (info->oom_entry >= 0 && (int64_t)after > 0 && after > info->reserved_bytes)
        info->oom_reserved = info->reserved_bytes; /* inconsistent events: the dump is what we know */
    if (info->n_entries == 0 &&
        (s = fli_trace_warn(c->out, "%s: device_traces[%d] is empty (no history recorded for device %d): the trace "
                                   "holds only the blocks allocated at dump",
                           path, c->device, c->device)) != FL_OK)
        return s;
    if (c->sites.nomem && (s = fli_trace_warn(c->out, "%s: host memory ran out reading stack frames: later "
                                                     "allocation sites are unknown", path)) != FL_OK)
        return s;
    if ((s = emit(c, free_action)) != FL_OK)
        return s;
    fli_sites_move(&c->sites, &c->out->sites, &c->out->n_sites);
    info->n_sites = c->out->n_sites ? c->out->n_sites - 1 : 0;
    return FL_OK;
}

fl_status fli_snapshot_to_trace(const fli_pk_doc *doc, const char *path, int device, fli_trace *out,
                               fli_snapshot_info *info)
{
    fli_snapshot_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    info->device = device;
    info->oom_entry = -1;
    if (!path)
        path = fli_pk_doc_name(doc);
    fli_trace_init(out, path);
    if (!out->path)
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory", path);
    conv c = {.path = path, .device = device, .info = info, .out = out, .doc_bytes = fli_pk_doc_bytes(doc)};
    c.budget = c.budget_total = FL_SNAPSHOT_BUDGET_MIN + c.doc_bytes / FL_SNAPSHOT_BYTES_PER_ITEM;
    /* Frames examined: one per byte of the document at most (each distinct frames list
     * is examined once; the memo shares the rest). */
    fli_sites_init(&c.sites, FL_SNAPSHOT_BUDGET_MIN + c.doc_bytes);
    fl_status s = convert(&c, fli_pk_doc_root(doc));
    free(c.recs);
    free(c.synth_live);
    free(c.synth_freed);
    free(c.old);
    free(c.blocks);
    fli_map_free(&c.addrs);
    fli_map_free(&c.segs);
    fli_sites_free(&c.sites);
    if (s != FL_OK)
        fli_trace_free(out); /* leaves it zeroed: nothing to free */
    return s;
}

fl_status fli_trace_read_snapshot(const char *path, int device, fli_trace *out, fli_snapshot_info *info)
{
    fli_pk_doc *doc;
    fl_status s = fli_pickle_load(path, FL_SNAPSHOT_MAX_BYTES, &doc);
    if (s != FL_OK) {
        memset(out, 0, sizeof *out);
        return s;
    }
    s = fli_snapshot_to_trace(doc, path, device, out, info);
    fli_pickle_free(doc);
    return s;
}

fl_status fli_snapshot_oom_capacity(const fli_snapshot_info *info, const char *name, uint64_t *out)
{
    if (__builtin_add_overflow(info->oom_reserved, info->oom_device_free, out))
        return fli_fail(FL_ERR_PARSE, "%s: reserved at the oom entry (%llu bytes) plus its device_free (%llu) "
                                     "is more than 2^64 bytes: not a device's capacity",
                       name, (unsigned long long)info->oom_reserved, (unsigned long long)info->oom_device_free);
    return FL_OK;
}

fl_status fli_snapshot_devices(const fli_pk_doc *doc, const char *path, fli_snapshot_device *out, int max, int *n)
{
    const fli_pk *root = fli_pk_doc_root(doc), *traces, *segments;
    fl_status s;
    *n = 0;
    if (!path)
        path = fli_pk_doc_name(doc);
    if ((s = fli_pk_check(root, FL_PK_DICT, "%s: the snapshot", path)) != FL_OK ||
        (s = fli_pk_opt(root, "segments", FL_PK_LIST, &segments, "%s", path)) != FL_OK)
        return s;
    if (!fli_pk_dict_get(root, "device_traces"))
        return fli_fail(FL_ERR_PARSE, "%s: no 'device_traces': not a memory snapshot, or one taken without "
                                     "torch.cuda.memory._record_memory_history()", path);
    if ((s = fli_pk_want(root, "device_traces", FL_PK_LIST, &traces, "%s", path)) != FL_OK)
        return s;
    size_t nd = fli_pk_len(traces);
    *n = nd > INT32_MAX ? INT32_MAX : (int)nd;
    /* The same budget as a conversion's: the memo can list one blocks list in every
     * segment, so what is visited is bounded by the document only through it. Past it,
     * a device with segments is taken to have events (its conversion then says why not). */
    uint64_t budget = FL_SNAPSHOT_BUDGET_MIN + fli_pk_doc_bytes(doc) / FL_SNAPSHOT_BYTES_PER_ITEM;
    for (int d = 0; d < *n && d < max; d++) {
        fli_snapshot_device *v = &out[d];
        memset(v, 0, sizeof *v);
        const fli_pk *t = fli_pk_item(traces, (size_t)d);
        v->n_entries = fli_pk_len(t);
        for (size_t i = 0; t->type == FL_PK_LIST && i < v->n_entries && budget; i++, budget--)
            v->n_oom += fli_pk_str_is(fli_pk_dict_get(fli_pk_item(t, i), "action"), "oom");
    }
    for (size_t si = 0; si < fli_pk_len(segments); si++) {
        const fli_pk *seg = fli_pk_item(segments, si), *dev = fli_pk_dict_get(seg, "device");
        int64_t d = dev && dev->type == FL_PK_INT ? dev->u.i : 0;
        if (d < 0 || d >= *n || d >= max)
            continue;
        out[d].n_segments++;
        const fli_pk *blocks = fli_pk_dict_get(seg, "blocks");
        if (!budget) {
            out[d].n_active_blocks += out[d].n_active_blocks == 0;
            continue;
        }
        for (size_t bi = 0; blocks && blocks->type == FL_PK_LIST && bi < fli_pk_len(blocks) && budget; bi++, budget--) {
            const fli_pk *st = fli_pk_dict_get(fli_pk_item(blocks, bi), "state");
            out[d].n_active_blocks += fli_pk_str_is(st, "active_allocated") || fli_pk_str_is(st, "active_pending_free");
        }
    }
    return FL_OK;
}

void fli_snapshot_config(const fli_snapshot_info *info, fl_config *cfg)
{
    fl_config_default(cfg);
    snprintf(cfg->policy, sizeof cfg->policy, "%s", info->expandable_segments ? "cca-expandable" : "cca");
    cfg->max_split_size = info->max_split_size;
    cfg->gc_threshold = info->gc_threshold;
    memcpy(cfg->roundup_divisions, info->roundup_divisions, sizeof cfg->roundup_divisions);
}
