/* The doctor's analysis: replays the trace under the setting that ran (at a capacity,
 * to catch the out-of-memory moment), splits memory by lifetime, searches the capacity
 * each alternative setting needs, and estimates the usual remedies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay/doctor.h"
#include "allocator/allocator.h"

static inline uint64_t rounded(uint64_t size) { return fl_align_up(size ? size : 1, 512); }

/* Persistent vs transient bytes over time. A block is persistent when it lives for more
 * than half of the trace's events (never freed counts as living to the end): weights
 * and optimizer state, even when a complete trace frees them at teardown. */
static fl_status lifetimes(const fl_prepared *p, fl_diagnosis *d)
{
    size_t *born = malloc((p->n_slots ? p->n_slots : 1) * sizeof *born);
    uint8_t *persistent = calloc(p->n_slots ? p->n_slots : 1, 1);
    if (!born || !persistent) {
        free(born);
        free(persistent);
        return fl_fail(FL_ERR_NOMEM, "doctor: host memory");
    }
    for (size_t i = 0; i < p->n_ops; i++) {
        const fl_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC) {
            born[op->slot] = i;
            persistent[op->slot] = 2 * (p->n_ops - i) > p->n_ops; /* if never freed */
        } else if (op->kind == FL_EV_FREE) {
            persistent[op->slot] = 2 * (i - born[op->slot]) > p->n_ops;
        }
    }
    uint64_t pers = 0, trans = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        const fl_op *op = &p->ops[i];
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
static size_t idle_point(const fl_prepared *p, uint64_t *live_there)
{
    uint64_t live = 0, best = UINT64_MAX;
    size_t at = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        if (i >= p->n_ops / 10 && i <= p->n_ops - p->n_ops / 10 && i > 0 && live < best) {
            best = live;
            at = i;
        }
        const fl_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC)
            live += rounded(op->size);
        else if (op->kind == FL_EV_FREE)
            live -= rounded(op->size);
    }
    *live_there = best == UINT64_MAX ? 0 : best;
    return at;
}

static void add_row(fl_diagnosis *d, const fl_config *base, const char *label, const char *env,
                    const char *policy, const char *knobs)
{
    if (d->n_rows == FL_DOCTOR_MAX_WHATIF)
        return;
    fl_whatif *w = &d->rows[d->n_rows];
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

fl_status fl_diagnose(const fl_prepared *p, const fl_replay_opts *ran, uint64_t capacity, fl_diagnosis *d)
{
    memset(d, 0, sizeof *d);
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

    fl_replay_opts o = *ran;
    o.timeline_buckets = 0;
    o.check_every = 0;
    o.late_from_op = 0;
    fl_replay_result r;
    if (capacity) {
        o.sim.capacity = capacity;
        if ((s = fl_replay(p, &o, &r)) != FL_OK)
            return s;
        d->capacity = capacity;
        /* The first failure: a replayed OOM, or a recorded one that fails again. */
        int recorded_first = r.recorded_oom_failed && (!r.ooms || r.recorded_oom_op < r.first_oom_op);
        if (r.ooms || r.recorded_oom_failed) {
            d->has_oom = 1;
            d->oom_was_recorded = recorded_first;
            d->oom_op = recorded_first ? r.recorded_oom_op : r.first_oom_op;
            d->oom = recorded_first ? r.recorded_oom : r.first_oom;
            /* The allocator's own report (fl_oom_judge): the doctor judges nothing itself. */
            d->capacity = d->oom.limit;
            d->device_free = d->oom.device_free;
            d->ext_frag = d->oom.external_fragmentation;
            d->verdict = d->oom.verdict;
        }
        fl_replay_result_free(&r);
    }

    /* What if: each alternative is PyTorch's default plus one setting. */
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
    for (int i = 0; i < d->n_rows; i++) {
        fl_replay_opts q = o;
        q.cfg = d->rows[i].cfg;
        fl_sim_params_default(&q.sim);
        q.sim.granularity = ran->sim.granularity;
        if ((s = fl_replay(p, &q, &r)) != FL_OK)
            return s;
        s = fl_min_capacity(p, &q, &r, &d->rows[i].min_capacity);
        fl_replay_result_free(&r);
        if (s != FL_OK)
            return s;
        int pytorch = i > 0 && i != d->fragless_row;
        if (pytorch && (d->best_pytorch < 0 || d->rows[i].min_capacity < d->rows[d->best_pytorch].min_capacity))
            d->best_pytorch = i;
    }

    /* empty_cache() at the idle point, under the setting that ran, without a limit. */
    d->idle_op = idle_point(p, &d->idle_live);
    if (d->idle_op) {
        fl_replay_opts q = o;
        fl_sim_params_default(&q.sim);
        q.sim.granularity = ran->sim.granularity;
        q.empty_cache_at_op = d->idle_op;
        if ((s = fl_replay(p, &q, &r)) != FL_OK)
            return s;
        d->idle_reserved = r.empty_cache_before;
        d->idle_returned = r.empty_cache_before - r.empty_cache_after;
        fl_replay_result_free(&r);
    }
    for (int k = 0; k < 2; k++)
        d->accum_need[k] = d->persistent_at_peak + d->transient_at_peak / (k ? 4u : 2u);
    return FL_OK;
}
