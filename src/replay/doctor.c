/* The doctor's analysis: replays the trace under the setting that ran (at a capacity,
 * to catch the out-of-memory moment), splits memory by lifetime, searches the capacity
 * each alternative setting needs, and estimates the usual remedies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay/doctor.h"
#include "allocator/allocator.h"

static inline uint64_t rounded(uint64_t size) { return fli_align_up(size ? size : 1, 512); }

/* Persistent vs transient bytes over time. A block is persistent when it lives for more
 * than half of the trace's events (never freed counts as living to the end): weights
 * and optimizer state, even when a complete trace frees them at teardown. */
static fl_status lifetimes(const fli_prepared *p, fli_diagnosis *d)
{
    size_t *born = malloc((p->n_slots ? p->n_slots : 1) * sizeof *born);
    uint8_t *persistent = calloc(p->n_slots ? p->n_slots : 1, 1);
    if (!born || !persistent) {
        free(born);
        free(persistent);
        return fli_fail(FL_ERR_NOMEM, "doctor: host memory");
    }
    for (size_t i = 0; i < p->n_ops; i++) {
        const fli_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC) {
            born[op->slot] = i;
            persistent[op->slot] = 2 * (p->n_ops - i) > p->n_ops; /* if never freed */
        } else if (op->kind == FL_EV_FREE) {
            persistent[op->slot] = 2 * (i - born[op->slot]) > p->n_ops;
        }
    }
    uint64_t pers = 0, trans = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        const fli_op *op = &p->ops[i];
        uint64_t *acc = persistent[op->slot] ? &pers : &trans;
        if (op->kind == FL_EV_ALLOC)
            *acc += rounded(op->size);
        else if (op->kind == FL_EV_FREE)
            *acc -= rounded(op->size);
        if (pers > d->persistent)
            d->persistent = pers;
        if (trans > d->transient_peak)
            d->transient_peak = trans;
        if (i == p->peak_live_op) {
            d->persistent_at_peak = pers;
            d->transient_at_peak = trans;
        }
    }
    free(born);
    free(persistent);
    return FL_OK;
}

/* The idle point: between warm-up and teardown (the first and the last tenth of the
 * events), the first event with the fewest live bytes. empty_cache runs just before it. */
static size_t idle_point(const fli_prepared *p, uint64_t *live_there)
{
    uint64_t live = 0, best = UINT64_MAX;
    size_t at = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        if (i >= p->n_ops / 10 && i <= p->n_ops - p->n_ops / 10 && i > 0 && live < best) {
            best = live;
            at = i;
        }
        const fli_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC)
            live += rounded(op->size);
        else if (op->kind == FL_EV_FREE)
            live -= rounded(op->size);
    }
    *live_there = best == UINT64_MAX ? 0 : best;
    return at;
}

static void add_row(fli_diagnosis *d, const fl_config *base, const char *label, const char *env,
                    const char *policy, const char *knobs)
{
    if (d->n_rows == FL_DOCTOR_MAX_WHATIF)
        return;
    fli_whatif *w = &d->rows[d->n_rows];
    memset(w, 0, sizeof *w);
    if (base) {
        w->cfg = *base;
    } else {
        fl_config_default(&w->cfg);
        snprintf(w->cfg.policy, sizeof w->cfg.policy, "%s", policy);
        if (knobs && fl_config_parse(&w->cfg, knobs) != FL_OK)
            return; /* the knob strings below are constants that parse */
    }
    snprintf(w->label, sizeof w->label, "%s", label);
    snprintf(w->env, sizeof w->env, "%s", env);
    d->n_rows++;
}

int fli_config_same(const fl_config *a, const fl_config *b)
{
    /* expandable_segments makes cca cca-expandable (the registry's rule) */
    char pa[40], pb[40];
    snprintf(pa, sizeof pa, "%s", !strcmp(a->policy, "cca") && a->expandable_segments ? "cca-expandable" : a->policy);
    snprintf(pb, sizeof pb, "%s", !strcmp(b->policy, "cca") && b->expandable_segments ? "cca-expandable" : b->policy);
    return !strcmp(pa, pb) && a->max_split_size == b->max_split_size && a->gc_threshold == b->gc_threshold &&
           !memcmp(a->roundup_divisions, b->roundup_divisions, sizeof a->roundup_divisions) &&
           a->limit == b->limit && a->small_size == b->small_size;
}

/* The trace up to and including op `last`, a recorded failure there turned into a request
 * to serve: "could it have been served?". Shares everything but the ops with p (free
 * with whatif_free). */
static fli_prepared *whatif_trace(const fli_prepared *p, size_t last)
{
    fli_prepared *w = malloc(sizeof *w);
    fli_op *ops = malloc((last + 1) * sizeof *ops);
    if (!w || !ops) {
        free(w);
        free(ops);
        return NULL;
    }
    *w = *p;
    memcpy(ops, p->ops, (last + 1) * sizeof *ops);
    if (ops[last].kind == FL_EV_ALLOC_FAIL)
        ops[last].kind = FL_EV_ALLOC;
    w->ops = ops;
    w->n_ops = last + 1;
    w->peak_live = w->end_live = 0;
    w->peak_live_op = 0;
    w->n_allocs = w->n_frees = w->n_recorded_failures = 0;
    uint64_t live = 0;
    for (size_t i = 0; i <= last; i++) {
        if (ops[i].kind == FL_EV_ALLOC) {
            live += fli_live_size(ops[i].size);
            w->n_allocs++;
            if (live > w->peak_live) {
                w->peak_live = live;
                w->peak_live_op = i;
            }
        } else if (ops[i].kind == FL_EV_FREE) {
            live -= fli_live_size(ops[i].size);
            w->n_frees++;
        } else if (ops[i].kind == FL_EV_ALLOC_FAIL) {
            w->n_recorded_failures++;
        }
    }
    w->end_live = live;
    return w;
}

static void whatif_free(fli_prepared *w)
{
    if (w) {
        free(w->ops);
        free(w);
    }
}

/* The run of what ran: at the capacity, following the recorded allocator when asked. */
static fli_replay_opts ran_opts(const fli_replay_opts *ran, const fli_doctor_opts *o)
{
    fli_replay_opts q = *ran;
    q.timeline_buckets = 0;
    q.check_every = 0;
    q.late_from_op = 0;
    q.empty_cache_at_op = 0;
    q.inspect = NULL;
    q.follow = o->follow;
    if (o->capacity)
        q.sim.capacity = o->capacity;
    return q;
}

/* A breakdown after op `at` of what ran. */
static fl_status breakdown_at(const fli_prepared *p, const fli_replay_opts *ran, const fli_doctor_opts *o, size_t at,
                              fli_breakdown *out)
{
    fli_replay_opts q = ran_opts(ran, o);
    fli_breakdown_ctx ctx = {out, &ran->cfg, 1};
    q.inspect = fli_breakdown_inspect;
    q.inspect_user = &ctx;
    q.inspect_at_op = at;
    fli_replay_result r;
    fl_status s = fli_replay(p, &q, &r);
    fli_replay_result_free(&r);
    return s;
}

/* The out-of-memory moment of what ran at the capacity, judged by the allocator. */
static fl_status find_oom(const fli_prepared *p, const fli_replay_opts *ran, const fli_doctor_opts *o, fli_diagnosis *d,
                          size_t *peak_reserved_op)
{
    fli_replay_opts q = ran_opts(ran, o);
    d->steady_from_op = fli_steady_from(p);
    q.late_from_op = d->steady_from_op;
    fli_replay_result r;
    fl_status s = fli_streams_floor(p, d->steady_from_op, &d->streams_floor);
    if (s != FL_OK || (s = fli_replay(p, &q, &r)) != FL_OK)
        return s;
    *peak_reserved_op = r.peak_reserved_op;
    d->steady_calls = r.late_calls;
    d->steady_ms = r.late_us / 1e3;
    /* The first failure: a replayed OOM, or a recorded one that fails again. */
    int recorded_first = r.recorded_oom_failed && (!r.ooms || r.recorded_oom_op < r.first_oom_op);
    if (o->capacity && (r.ooms || r.recorded_oom_failed)) {
        d->has_oom = 1;
        d->oom_was_recorded = recorded_first;
        d->oom_op = recorded_first ? r.recorded_oom_op : r.first_oom_op;
        d->oom = recorded_first ? r.recorded_oom : r.first_oom;
        /* The allocator's own report (fli_oom_judge): the doctor judges nothing itself. */
        d->device_free = d->oom.device_free;
        d->ext_frag = d->oom.external_fragmentation;
        d->verdict = d->oom.verdict;
    }
    /* A failure the trace recorded, served here: the emulation's state differs. */
    d->recorded_served = o->capacity && p->n_recorded_failures && !r.recorded_oom_failed;
    fli_replay_result_free(&r);
    return FL_OK;
}

/* empty_cache() just before the failed request: does the request then succeed? */
static fl_status try_empty_cache(const fli_prepared *p, const fli_replay_opts *ran, const fli_doctor_opts *o,
                                 fli_diagnosis *d)
{
    fli_replay_opts q = ran_opts(ran, o);
    q.empty_cache_at_op = d->oom_op;
    fli_replay_result r;
    fl_status s = fli_replay(p, &q, &r);
    if (s != FL_OK)
        return s;
    int failed = d->oom_was_recorded ? r.recorded_oom_failed && r.recorded_oom_op == d->oom_op
                                     : r.ooms && r.first_oom_op == d->oom_op;
    d->empty_cache_helps = d->oom_op > 0 && !failed;
    d->empty_cache_returned = r.empty_cache_before - r.empty_cache_after;
    fli_replay_result_free(&r);
    return FL_OK;
}

static fl_status whatif_rows(const fli_prepared *w, const fli_replay_opts *ran, const fli_doctor_opts *o,
                             fli_diagnosis *d)
{
    char label[64];
    snprintf(label, sizeof label, "what you ran (%s)", ran->cfg.policy);
    add_row(d, &ran->cfg, label, "", NULL, NULL);
    add_row(d, NULL, "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", "cca",
            "expandable_segments:True");
    static const char *const knobs[] = {"max_split_size_mb:128", "max_split_size_mb:256", "max_split_size_mb:512",
                                        "roundup_power2_divisions:4", "roundup_power2_divisions:8"};
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        char env[128];
        snprintf(env, sizeof env, "PYTORCH_CUDA_ALLOC_CONF=%s", knobs[i]);
        add_row(d, NULL, knobs[i], env, "cca", knobs[i]);
    }
    d->fragless_row = d->n_rows;
    add_row(d, NULL, "fragless", "FRAGLESS_CONF=policy:fragless", "fragless", NULL);
    d->best_pytorch = -1;
    fli_replay_opts base = ran_opts(ran, o);
    base.follow = 0; /* a what-if starts from an empty device, whatever the recording saw */
    for (int i = 0; i < d->n_rows; i++) {
        fli_whatif *row = &d->rows[i];
        for (int k = 0; !d->whatif_truncated && k < o->n_known && !row->reused; k++)
            if (o->known[k].granularity == ran->sim.granularity && fli_config_same(&o->known[k].cfg, &row->cfg)) {
                row->min_capacity = o->known[k].min_capacity;
                row->reused = 1;
            }
        /* The row's setting on a fresh device of the granularity that ran. */
        fli_replay_opts q = base;
        q.cfg = row->cfg;
        fl_sim_params_default(&q.sim);
        q.sim.granularity = ran->sim.granularity;
        if (!row->reused) {
            fli_replay_result r;
            fl_status s = fli_replay(w, &q, &r);
            if (s != FL_OK)
                return s;
            s = fli_min_capacity(w, &q, &r, &row->min_capacity);
            fli_replay_result_free(&r);
            if (s != FL_OK)
                return s;
        }
        /* min_capacity comes from a binary search, which takes more capacity never to
         * hurt; an online policy does not promise that (examples/pipeline rank 3 under
         * fragless runs at 2,136 and 2,138 MiB, not at 2,140): so "fits" is a replay at
         * the capacity itself. */
        row->fits = row->fails_at_capacity = 0;
        if (o->capacity && row->min_capacity <= o->capacity) {
            q.sim.capacity = o->capacity;
            fli_replay_result r;
            fl_status s = fli_replay(w, &q, &r);
            if (s != FL_OK)
                return s;
            row->fits = !r.ooms;
            row->fails_at_capacity = r.ooms != 0;
            fli_replay_result_free(&r);
        }
        d->any_fits |= row->fits;
        int pytorch = i > 0 && i != d->fragless_row;
        if (pytorch && (d->best_pytorch < 0 || row->min_capacity < d->rows[d->best_pytorch].min_capacity))
            d->best_pytorch = i;
    }
    return FL_OK;
}

fl_status fli_diagnose_ex(const fli_prepared *p, const fli_replay_opts *ran, const fli_doctor_opts *o, fli_diagnosis *d)
{
    memset(d, 0, sizeof *d);
    d->capacity = o->capacity;
    d->peak_live = p->peak_live;
    d->peak_op = p->peak_live_op;
    fl_status s = lifetimes(p, d);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; i < p->n_ops; i++)
        if (p->ops[i].kind == FL_EV_ALLOC_FAIL && !d->recorded_failures++) {
            d->first_recorded_op = i;
            d->first_recorded_size = p->ops[i].size;
        }
    const uint64_t g = ran->sim.granularity;

    size_t peak_reserved_op = 0;
    if ((s = find_oom(p, ran, o, d, &peak_reserved_op)) != FL_OK)
        return s;
    if (d->has_oom && ((s = breakdown_at(p, ran, o, d->oom_op, &d->at_oom)) != FL_OK ||
                       (s = try_empty_cache(p, ran, o, d)) != FL_OK))
        return s;
    if ((s = breakdown_at(p, ran, o, peak_reserved_op, &d->at_peak)) != FL_OK)
        return s;

    /* The what-if trace: a recorded failure is a request the job needs served. */
    size_t last = p->n_ops;
    if (d->has_oom && d->oom_was_recorded)
        last = d->oom_op;
    else if (d->recorded_served)
        last = d->first_recorded_op;
    fli_prepared *w = NULL;
    if (last < p->n_ops && !(w = whatif_trace(p, last)))
        return fli_fail(FL_ERR_NOMEM, "doctor: host memory");
    d->whatif_truncated = w != NULL;
    const fli_prepared *wp = w ? w : p;
    d->whatif_ops = wp->n_ops;
    d->job_needs = wp->peak_live;
    d->job_peak_op = wp->peak_live_op;
    if (d->has_oom && d->oom.live + fli_live_size(d->oom.request) > d->job_needs)
        d->job_needs = d->oom.live + fli_live_size(d->oom.request);
    d->job_fits = !o->capacity || d->job_needs <= o->capacity;
    d->lower_bound_job = fli_align_up(d->job_needs, g);
    if (d->has_oom)
        d->lower_bound_now = fli_align_up(d->oom.live + fli_live_size(d->oom.request), g);
    s = whatif_rows(wp, ran, o, d);
    whatif_free(w);
    if (s != FL_OK)
        return s;

    /* empty_cache() at the idle point, under the setting that ran, without a limit. */
    d->idle_op = idle_point(p, &d->idle_live);
    if (d->idle_op) {
        fli_replay_opts q = ran_opts(ran, o);
        fl_sim_params_default(&q.sim);
        q.sim.granularity = g;
        q.empty_cache_at_op = d->idle_op;
        fli_replay_result r;
        if ((s = fli_replay(p, &q, &r)) != FL_OK)
            return s;
        d->idle_reserved = r.empty_cache_before;
        d->idle_returned = r.empty_cache_before - r.empty_cache_after;
        fli_replay_result_free(&r);
    }
    for (int k = 0; k < 2; k++)
        d->accum_need[k] = d->persistent_at_peak + d->transient_at_peak / (k ? 4u : 2u);
    return FL_OK;
}

fl_status fli_diagnose(const fli_prepared *p, const fli_replay_opts *ran, uint64_t capacity, fli_diagnosis *d)
{
    fli_doctor_opts o = {.capacity = capacity};
    return fli_diagnose_ex(p, ran, &o, d);
}
