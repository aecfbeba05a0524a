/* Fuzz target: the RMM CSV reader (src/trace/csv.c), then fli_prepare and, for short
 * traces, replays under every policy. Properties: a failed read leaves the trace empty;
 * what was read writes back and reads back to the same events; prepare's live bytes add
 * up; a replay never fails its self-check and holds at least the live bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "replay/replay.h"
#include "trace/trace.h"

/* Replays are run only on traces this short: they exercise the policies with hostile
 * sizes without letting one input take seconds. */
#define FZ_REPLAY_MAX_OPS 48

static void same_events(const fli_trace *a, const fli_trace *b)
{
    FZ_CHECK(a->n == b->n, "round trip: %zu events, then %zu", a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const fli_event *x = &a->ev[i], *y = &b->ev[i];
        FZ_CHECK(x->kind == y->kind && x->thread == y->thread && x->time_us == y->time_us &&
                     x->ptr == y->ptr && x->size == y->size && x->stream == y->stream,
                 "round trip changed event %zu (line %u)", i, x->line);
    }
}

/* What was read, written with fli_trace_write_csv_stream, must read back identically. */
static void round_trip(const fli_trace *t)
{
    char *text = NULL;
    size_t len = 0;
    FILE *w = open_memstream(&text, &len);
    FZ_CHECK(w != NULL, "open_memstream");
    FZ_CHECK(fli_trace_write_csv_stream(w, t) == FL_OK, "write: %s", fl_last_error());
    FZ_CHECK(fclose(w) == 0, "close");
    FILE *r = fmemopen(text, len, "rb");
    FZ_CHECK(r != NULL, "fmemopen");
    fli_trace back;
    fl_status s = fli_trace_read_csv_stream(r, "written", &back);
    fclose(r);
    FZ_CHECK(s == FL_OK, "what the writer wrote does not read back: %s", fl_last_error());
    FZ_CHECK(back.n_warnings == 0, "the writer's output reads with a warning: %s", back.warnings[0]);
    same_events(t, &back);
    fli_trace_free(&back);
    free(text);
}

/* The live bytes prepare reports, recomputed; 0 when they pass 2^63 at some point,
 * which prepare must refuse (a corrupt size: no device holds that much). */
static int expected_peak(const fli_prepared *p, uint64_t *peak)
{
    const uint64_t max_live = (uint64_t)1 << 63;
    uint64_t cur = 0;
    *peak = 0;
    for (size_t i = 0; i < p->n_ops; i++) {
        const fli_op *op = &p->ops[i];
        FZ_CHECK(op->slot < p->n_slots, "op %zu: slot %u of %u", i, op->slot, p->n_slots);
        if (op->kind == FL_EV_ALLOC_FAIL)
            continue;
        uint64_t sz = op->size ? op->size : 1;
        if (op->kind == FL_EV_ALLOC && sz > max_live - cur)
            return 0;
        sz = (sz + 511) & ~(uint64_t)511;
        if (op->kind == FL_EV_ALLOC) {
            if (sz > max_live - cur)
                return 0;
            cur += sz;
            if (cur > *peak)
                *peak = cur;
        } else {
            FZ_CHECK(cur >= sz, "op %zu frees more than is live", i);
            cur -= sz;
        }
    }
    FZ_CHECK(cur == p->end_live, "end_live %llu, recomputed %llu", (unsigned long long)p->end_live,
             (unsigned long long)cur);
    return 1;
}

static void replay_all(const fli_prepared *p)
{
    for (const char *const *name = fl_policy_names(); *name; name++) {
        fli_replay_opts o;
        memset(&o, 0, sizeof o);
        fl_config_default(&o.cfg);
        snprintf(o.cfg.policy, sizeof o.cfg.policy, "%s", *name);
        fl_sim_params_default(&o.sim);
        /* "Unlimited" is 4 GiB, not the default 1 PiB: fragless keeps host metadata per
         * 2 MiB page, and a 100 TiB request would be served (gigabytes of host memory). */
        o.sim.capacity = (uint64_t)4 << 30;
        o.check_every = 1;
        o.timeline_buckets = 3;
        o.late_from_op = p->n_ops / 2;
        o.empty_cache_at_op = p->n_ops / 3;
        fli_replay_result r;
        fl_status s = fli_replay(p, &o, &r);
        FZ_CHECK(s == FL_OK, "%s: replay without a limit: %s", *name, fl_last_error());
        if (r.ooms == 0) {
            FZ_CHECK(r.peak_reserved >= p->peak_live, "%s: peak reserved %llu below peak live %llu", *name,
                     (unsigned long long)r.peak_reserved, (unsigned long long)p->peak_live);
            uint64_t min_cap;
            s = fli_min_capacity(p, &o, &r, &min_cap);
            FZ_CHECK(s == FL_OK, "%s: min_capacity: %s", *name, fl_last_error());
            FZ_CHECK(min_cap >= p->peak_live, "%s: min_capacity below peak live", *name);
        }
        fli_replay_result_free(&r);
        /* A small device: the out-of-memory paths. */
        o.sim.capacity = (uint64_t)64 << 20;
        s = fli_replay(p, &o, &r);
        FZ_CHECK(s == FL_OK, "%s: replay on 64 MiB: %s", *name, fl_last_error());
        FZ_CHECK(r.dev.peak_in_use <= o.sim.capacity, "%s: device over its capacity", *name);
        fli_replay_result_free(&r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f)
        return 0;
    fli_trace t;
    fl_status s = fli_trace_read_csv_stream(f, "fuzz.csv", &t);
    fclose(f);
    if (s != FL_OK) {
        FZ_CHECK(s == FL_ERR_PARSE, "read failed with %s: %s", fl_status_str(s), fl_last_error());
        FZ_CHECK(t.n == 0 && t.ev == NULL && t.n_warnings == 0, "a failed read left events behind");
        return 0;
    }
    round_trip(&t);
    fli_prepared *p;
    s = fli_prepare(&t, &p);
    if (s == FL_OK) {
        FZ_CHECK(p->n_allocs + p->n_frees + p->n_recorded_failures == p->n_ops, "op counts do not add up");
        FZ_CHECK(p->n_ops + p->unknown_frees == t.n, "events lost by prepare");
        uint64_t peak;
        int fits = expected_peak(p, &peak);
        FZ_CHECK(fits, "prepare accepted live bytes beyond 2^63 (peak_live %llu)", (unsigned long long)p->peak_live);
        FZ_CHECK(peak == p->peak_live, "peak_live %llu, recomputed %llu", (unsigned long long)p->peak_live,
                 (unsigned long long)peak);
        if (p->n_ops <= FZ_REPLAY_MAX_OPS)
            replay_all(p);
        fli_prepared_free(p);
    } else {
        FZ_CHECK(s == FL_ERR_PARSE, "prepare failed with %s: %s", fl_status_str(s), fl_last_error());
    }
    fli_trace_free(&t);
    return 0;
}
