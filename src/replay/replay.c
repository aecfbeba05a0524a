/* Replay: prepares a trace once (pointer ids -> dense slots, live bytes, warnings),
 * then runs it through a policy on a fresh simulated device and measures the run;
 * min_capacity is a binary search over such runs. */
#include "replay/replay.h"

#include "allocator/allocator.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Only the first few problems of a kind are listed; the rest are counted. */
#define MAX_LISTED_WARNINGS 5
/* Live bytes beyond this are refused (see the second pass of fli_prepare). */
#define MAX_LIVE_BYTES (UINT64_C(1) << 63)

static fl_status add_warning(fli_prepared *p, const char *fmt, ...) FL_PRINTF(2, 3);
static fl_status add_warning(fli_prepared *p, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **w = realloc(p->warnings, (p->n_warnings + 1) * sizeof *w);
    if (!w)
        return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    p->warnings = w;
    if (!(w[p->n_warnings] = strdup(buf)))
        return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    p->n_warnings++;
    return FL_OK;
}

void fli_prepared_free(fli_prepared *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_warnings; i++)
        free(p->warnings[i]);
    free(p->warnings);
    for (uint32_t i = 0; i < p->n_sites; i++)
        free(p->sites[i]);
    free(p->sites);
    free(p->slot_site);
    free(p->seeds);
    free(p->seed_blocks);
    free(p->seed_slot);
    free(p->ops);
    free(p->name);
    free(p);
}

/* Sites and seeds of the trace, copied (the trace is freed after preparing). */
static fl_status copy_extras(const fli_trace *t, fli_prepared *p, fli_map *seed_ptrs)
{
    if (t->n_sites) {
        if (!(p->sites = calloc(t->n_sites, sizeof *p->sites)))
            return fli_fail(FL_ERR_NOMEM, "replay: host memory");
        p->n_sites = t->n_sites;
        for (uint32_t i = 1; i < t->n_sites; i++)
            if (!(p->sites[i] = strdup(t->sites[i] ? t->sites[i] : "")))
                return fli_fail(FL_ERR_NOMEM, "replay: host memory");
        if (!(p->slot_site = calloc(t->n ? t->n : 1, sizeof *p->slot_site)))
            return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    }
    if (t->n_seeds) {
        size_t nb = t->n_seed_blocks ? t->n_seed_blocks : 1;
        if (!(p->seeds = malloc(t->n_seeds * sizeof *p->seeds)) ||
            !(p->seed_blocks = malloc(nb * sizeof *p->seed_blocks)) ||
            !(p->seed_slot = malloc(nb * sizeof *p->seed_slot)))
            return fli_fail(FL_ERR_NOMEM, "replay: host memory");
        memcpy(p->seeds, t->seeds, t->n_seeds * sizeof *p->seeds);
        memcpy(p->seed_blocks, t->seed_blocks, t->n_seed_blocks * sizeof *p->seed_blocks);
        p->n_seeds = t->n_seeds;
        p->n_seed_blocks = t->n_seed_blocks;
        for (size_t i = 0; i < t->n_seed_blocks; i++) {
            p->seed_slot[i] = UINT32_MAX;
            fl_status s = fli_map_put(seed_ptrs, t->seed_blocks[i].ptr, i);
            if (s != FL_OK)
                return s;
        }
    }
    return FL_OK;
}

fl_status fli_prepare(const fli_trace *t, fli_prepared **out)
{
    *out = NULL;
    fli_prepared *p = calloc(1, sizeof *p);
    fli_map live = {0}, streams = {0}, seed_ptrs = {0};
    uint64_t *slot_line = NULL;
    fl_status s = FL_ERR_NOMEM;
    if (!p)
        return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    const char *base = t->path ? strrchr(t->path, '/') : NULL;
    p->name = strdup(base ? base + 1 : (t->path && *t->path ? t->path : "(trace)"));
    p->ops = malloc((t->n ? t->n : 1) * sizeof *p->ops);
    slot_line = malloc((t->n ? t->n : 1) * sizeof *slot_line);
    if (!p->name || !p->ops || !slot_line || fli_map_init(&live, 1024) != FL_OK ||
        fli_map_init(&streams, 8) != FL_OK || fli_map_init(&seed_ptrs, t->n_seed_blocks) != FL_OK) {
        s = fli_fail(FL_ERR_NOMEM, "replay: host memory for %zu events", t->n);
        goto fail;
    }
    if ((s = copy_extras(t, p, &seed_ptrs)) != FL_OK)
        goto fail;
    uint64_t unknown_listed = 0;
    for (size_t i = 0; i < t->n; i++) {
        const fli_event *e = &t->ev[i];
        fli_op *op = &p->ops[p->n_ops];
        uint64_t v;
        if (e->kind != FL_EV_RELEASE && (s = fli_map_put(&streams, e->stream, 1)) != FL_OK)
            goto fail;
        if (p->slot_site && (e->kind == FL_EV_ALLOC || e->kind == FL_EV_ALLOC_FAIL))
            p->slot_site[p->n_slots] = e->site < p->n_sites ? e->site : 0;
        switch (e->kind) {
        case FL_EV_RELEASE:
            *op = (fli_op){e->size, e->stream, 0, FL_EV_RELEASE};
            p->n_releases++;
            p->release_bytes += e->size;
            p->n_ops++;
            break;
        case FL_EV_ALLOC:
            if (fli_map_get(&live, e->ptr, &v)) {
                s = fli_fail(FL_ERR_PARSE, "%s:%u: allocate of 0x%llx, which is still live (allocated at line %llu)",
                            t->path, e->line, (unsigned long long)e->ptr, (unsigned long long)slot_line[v]);
                goto fail;
            }
            *op = (fli_op){e->size, e->stream, p->n_slots, FL_EV_ALLOC};
            slot_line[p->n_slots] = e->line;
            if (seed_ptrs.count && fli_map_remove(&seed_ptrs, e->ptr, &v))
                p->seed_slot[v] = p->n_slots;
            if ((s = fli_map_put(&live, e->ptr, p->n_slots++)) != FL_OK)
                goto fail;
            p->n_allocs++;
            p->n_ops++;
            break;
        case FL_EV_FREE:
            if (!fli_map_remove(&live, e->ptr, &v)) {
                p->unknown_frees++;
                if (unknown_listed++ < MAX_LISTED_WARNINGS &&
                    (s = add_warning(p, "%s:%u: free of 0x%llx, which is not live: skipped", t->path, e->line,
                                     (unsigned long long)e->ptr)) != FL_OK)
                    goto fail;
                break;
            }
            /* Sized in the second pass: a free takes what its allocation asked for. */
            *op = (fli_op){0, e->stream, (uint32_t)v, FL_EV_FREE};
            p->n_frees++;
            p->n_ops++;
            break;
        case FL_EV_ALLOC_FAIL:
            *op = (fli_op){e->size, e->stream, p->n_slots, FL_EV_ALLOC_FAIL};
            slot_line[p->n_slots++] = e->line;
            p->n_recorded_failures++;
            p->n_ops++;
            break;
        default:
            s = fli_fail(FL_ERR_PARSE, "%s:%u: unknown event kind %u", t->path, e->line, e->kind);
            goto fail;
        }
    }
    /* Second pass: free ops carry their block's size, and live bytes go down. A slot's
     * line is read at its allocation, then the slot holds its size (a free always comes
     * after its allocation). Live bytes are kept below 2^63 so that they, and the
     * capacities derived from them, never wrap: only a corrupt size gets there. */
    {
        uint64_t *slot_size = (uint64_t *)slot_line;
        uint64_t cur = 0;
        for (size_t i = 0; i < p->n_ops; i++) {
            fli_op *op = &p->ops[i];
            if (op->kind == FL_EV_FREE) {
                op->size = slot_size[op->slot];
                cur -= fli_live_size(op->size);
            } else if (op->kind == FL_EV_ALLOC_FAIL) {
                slot_size[op->slot] = op->size;
            } else if (op->kind == FL_EV_RELEASE) {
                continue;
            } else {
                if (op->size > MAX_LIVE_BYTES - cur || fli_live_size(op->size) > MAX_LIVE_BYTES - cur) {
                    s = fli_fail(FL_ERR_PARSE, "%s:%llu: allocate of %llu bytes: live bytes would exceed 2^63 (a corrupt size?)",
                                t->path, (unsigned long long)slot_line[op->slot], (unsigned long long)op->size);
                    goto fail;
                }
                slot_size[op->slot] = op->size;
                cur += fli_live_size(op->size);
                if (cur > p->peak_live) {
                    p->peak_live = cur;
                    p->peak_live_op = i;
                }
            }
        }
        p->end_live = cur;
    }
    if (p->unknown_frees > MAX_LISTED_WARNINGS &&
        (s = add_warning(p, "%s: %llu frees of pointers that were not live in all (first %d listed)", t->path,
                         (unsigned long long)p->unknown_frees, MAX_LISTED_WARNINGS)) != FL_OK)
        goto fail;
    p->n_streams = streams.count;
    fli_map_free(&live);
    fli_map_free(&streams);
    fli_map_free(&seed_ptrs);
    free(slot_line);
    *out = p;
    return FL_OK;
fail:
    fli_map_free(&live);
    fli_map_free(&streams);
    fli_map_free(&seed_ptrs);
    free(slot_line);
    fli_prepared_free(p);
    return s;
}

void fli_replay_result_free(fli_replay_result *r)
{
    free(r->timeline);
    r->timeline = NULL;
    r->n_buckets = 0;
}

/* The allocator object users get, for a replay: the trace's own recorder, OOM printing,
 * snapshots and publishing are off (a replay is not the job). */
static fl_status replay_allocator(const fli_replay_opts *o, fl_device *dev, fl_allocator **out)
{
    fl_config cfg = o->cfg;
    cfg.trace_path[0] = '\0';
    cfg.oom_snapshot[0] = '\0';
    cfg.oom_report = 0;
    cfg.publish = 0;
    return fl_allocator_create(&cfg, dev, out);
}

/* follow: the segments the recorded allocator held before recording began, rebuilt with
 * their live blocks (whose allocate ops are then skipped: addr is set). A policy that
 * cannot rebuild them (not PyTorch's) gets its blocks by ordinary allocations. */
static fl_status seed(const fli_prepared *p, fl_allocator *al, uint64_t *addr, fli_replay_result *r)
{
    uint64_t *got = malloc((p->n_seed_blocks ? p->n_seed_blocks : 1) * sizeof *got);
    if (!got)
        return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    fl_status s = FL_OK;
    for (size_t i = 0; i < p->n_seeds; i++) {
        const fli_seed_segment *sg = &p->seeds[i];
        s = fli_allocator_seed(al, sg, p->seed_blocks + sg->first_block, got + sg->first_block);
        if (s == FL_ERR_UNSUPPORTED) {
            s = FL_OK;
            break;
        }
        if (s == FL_ERR_INVALID || s == FL_ERR_OOM) { /* not by the policy's rules, or no room */
            r->seed_failures++;
            s = FL_OK;
            continue;
        }
        if (s != FL_OK)
            break;
        r->seeded_segments++;
        r->seeded_bytes += sg->size;
        for (size_t k = sg->first_block; k < sg->first_block + sg->n_blocks; k++)
            if (p->seed_slot[k] != UINT32_MAX)
                addr[p->seed_slot[k]] = got[k];
    }
    free(got);
    return s;
}

/* Runs the ops through fl_alloc/fl_free, the path every frontend takes; stop_at_oom ends
 * the run at the first failure (min_capacity search). Live bytes, the out-of-memory
 * report and the statistics are the allocator's own. */
static fl_status run(const fli_prepared *p, const fli_replay_opts *o, int stop_at_oom, fli_replay_result *r)
{
    memset(r, 0, sizeof *r);
    r->first_oom_op = p->n_ops;
    r->peak_live = p->peak_live;
    fl_device *dev;
    fl_allocator *al = NULL;
    uint64_t *addr = calloc(p->n_slots ? p->n_slots : 1, sizeof *addr);
    if (!addr)
        return fli_fail(FL_ERR_NOMEM, "replay: host memory");
    fl_status s = fl_sim_device_create(&o->sim, &dev);
    if (s != FL_OK) {
        free(addr);
        return s;
    }
    if ((s = replay_allocator(o, dev, &al)) != FL_OK)
        goto out;
    if (o->follow && (s = seed(p, al, addr, r)) != FL_OK)
        goto out;
    uint64_t peak_in_use = dev->counters.in_use;
    int nb = o->timeline_buckets > 0 ? o->timeline_buckets : 0;
    if (nb && !(r->timeline = calloc((size_t)nb, sizeof *r->timeline))) {
        s = fli_fail(FL_ERR_NOMEM, "replay: host memory");
        goto out;
    }
    r->n_buckets = nb;
    uint64_t t0 = fli_now_ns(), host = 0;
    size_t bucket_end = p->n_ops, b = 0;
    uint64_t calls_before = 0;
    double time_before = 0;
    size_t chunk = nb ? (p->n_ops + (size_t)nb - 1) / (size_t)nb : 0;
    if (nb)
        bucket_end = chunk;
    uint64_t late_calls0 = 0, pairs = 0;
    double late_us0 = 0;
    /* Loop-invariant options in locals: the allocator calls could alias anything in memory. */
    const size_t late_from = o->late_from_op, check_every = o->check_every > 0 ? (size_t)o->check_every : 0;
    const size_t n_ops = p->n_ops;
    /* No inspection: an index no op reaches, so the loop pays one compare either way. */
    const size_t inspect_at = o->inspect ? o->inspect_at_op : SIZE_MAX;
    for (size_t i = 0; i < n_ops; i++) {
        const fli_op *op = &p->ops[i];
        if (FL_UNLIKELY(i == o->empty_cache_at_op && i)) {
            r->empty_cache_before = dev->counters.in_use;
            if ((s = fl_empty_cache(al)) != FL_OK)
                goto out;
            r->empty_cache_after = dev->counters.in_use;
        }
        if (FL_UNLIKELY(i == late_from)) {
            late_calls0 = fl_device_total_calls(&dev->counters);
            late_us0 = dev->counters.time_us;
        }
        if (op->kind == FL_EV_FREE) {
            uint64_t a = addr[op->slot];
            if (a) {
                if ((s = fl_free(al, a)) != FL_OK)
                    goto out;
                addr[op->slot] = 0;
            }
        } else if (FL_UNLIKELY(op->kind == FL_EV_RELEASE)) {
            uint64_t freed = 0;
            if (o->follow && (s = fli_allocator_release(al, op->size, op->stream, &freed)) != FL_OK)
                goto out;
            r->released_bytes += freed;
        } else if (FL_UNLIKELY(addr[op->slot] != 0)) {
            pairs++; /* allocated already: rebuilt in its old segment (follow) */
        } else {
            uint64_t a = 0;
            s = fl_alloc(al, op->size, op->stream, &a);
            if (FL_UNLIKELY(dev->counters.in_use > peak_in_use)) {
                peak_in_use = dev->counters.in_use;
                r->peak_reserved_op = i;
            }
            if (s == FL_OK) {
                if (op->kind == FL_EV_ALLOC_FAIL) {
                    /* The recorded program was refused here: it never held the block. */
                    if ((s = fl_free(al, a)) != FL_OK)
                        goto out;
                } else {
                    addr[op->slot] = a;
                    pairs++;
                }
            } else if (s == FL_ERR_OOM) {
                fl_oom_report *rep = NULL;
                if (op->kind == FL_EV_ALLOC && !r->ooms++) {
                    r->first_oom_op = i;
                    rep = &r->first_oom;
                } else if (op->kind == FL_EV_ALLOC_FAIL && !r->recorded_oom_failed) {
                    r->recorded_oom_failed = 1;
                    r->recorded_oom_op = i;
                    rep = &r->recorded_oom;
                }
                if (rep && (s = fl_last_oom(al, rep)) != FL_OK)
                    goto out;
                if (op->kind == FL_EV_ALLOC && stop_at_oom)
                    break;
                s = FL_OK;
            } else {
                goto out;
            }
        }
        if (FL_UNLIKELY(check_every && i % check_every == 0) && fl_allocator_check(al)) {
            s = fli_fail(FL_ERR_INVALID, "replay of %s, op %zu: policy %s self-check failed: %s", p->name, i,
                        fli_allocator_policy(al)->ops->name, fl_last_error());
            goto out;
        }
        if (nb) {
            fli_timeline_bucket *tb = &r->timeline[b];
            uint64_t live = fli_allocator_live(al);
            if (live > tb->max_live)
                tb->max_live = live;
            if (dev->counters.in_use > tb->max_reserved)
                tb->max_reserved = dev->counters.in_use;
            if (i + 1 == bucket_end || i + 1 == p->n_ops) {
                uint64_t now = fli_now_ns();
                host += now - t0;
                uint64_t calls = fl_device_total_calls(&dev->counters);
                tb->first_op = b * chunk;
                tb->end_op = i + 1;
                tb->calls = calls - calls_before;
                tb->device_us = dev->counters.time_us - time_before;
                calls_before = calls;
                time_before = dev->counters.time_us;
                if (b + 1 < (size_t)nb)
                    b++;
                bucket_end += chunk;
                t0 = fli_now_ns();
            }
        }
        if (FL_UNLIKELY(i == inspect_at)) {
            fli_replay_view v = {fli_allocator_policy(al), p, addr, i, fli_allocator_live(al), dev->counters.in_use};
            if (o->inspect(&v, o->inspect_user))
                break;
        }
    }
    host += fli_now_ns() - t0;
    r->host_ns = host;
    r->pairs = pairs;
    if (o->late_from_op && o->late_from_op < p->n_ops) {
        r->late_calls = fl_device_total_calls(&dev->counters) - late_calls0;
        r->late_us = dev->counters.time_us - late_us0;
    }
    fl_stats st;
    fl_get_stats(al, &st);
    r->peak_allocated = st.allocated_bytes.peak;
    r->retries = st.num_alloc_retries;
    fl_device_get_counters(dev, &r->dev);
    r->peak_reserved = r->dev.peak_in_use;
    r->end_reserved = r->dev.in_use;
out:
    fl_allocator_destroy(al);
    fl_device_destroy(dev);
    free(addr);
    if (s != FL_OK)
        fli_replay_result_free(r);
    return s;
}

fl_status fli_replay(const fli_prepared *p, const fli_replay_opts *o, fli_replay_result *r)
{
    return run(p, o, 0, r);
}

fl_status fli_min_capacity(const fli_prepared *p, const fli_replay_opts *o, const fli_replay_result *unlimited,
                          uint64_t *min_cap)
{
    uint64_t g = o->sim.granularity;
    uint64_t lo = fli_div_up(p->peak_live, g), hi = fli_div_up(unlimited->peak_reserved, g);
    if (unlimited->ooms)
        return fli_fail(FL_ERR_INVALID, "min_capacity of %s: the run without a limit already ran out of memory",
                       p->name);
    if (hi < lo)
        hi = lo;
    if (lo == 0)
        lo = hi = 1;
    fli_replay_opts q = *o;
    q.timeline_buckets = 0;
    q.check_every = 0;
    q.inspect = NULL; /* the search's runs stop at OOMs: not states worth inspecting */
    /* Below lo no policy can run (peak_live would not fit); hi succeeds (the unlimited
     * run never held more). The search assumes more capacity never hurts, which no
     * policy guarantees in general (placement under pressure differs); the test on the
     * shared traces checks it for fragless over the pages above the result. */
    while (lo < hi) {
        if (o->search_step)
            o->search_step(o->search_user, lo, hi);
        uint64_t mid = lo + (hi - lo) / 2;
        q.sim.capacity = mid * g;
        fli_replay_result r;
        fl_status s = run(p, &q, 1, &r);
        if (s != FL_OK)
            return s;
        if (r.ooms)
            lo = mid + 1;
        else
            hi = mid;
    }
    *min_cap = lo * g;
    return FL_OK;
}
