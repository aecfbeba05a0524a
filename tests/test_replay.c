/* Replay: preparing traces (slots, peak live, unknown frees, recorded failures),
 * replaying them, timelines, the steady-state window and min_capacity, on traces built
 * in memory with answers worked out by hand from the policies' rules. */
#include <string.h>

#include "replay/replay.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)

static void push(fli_trace *t, int kind, uint64_t ptr, uint64_t size, uint64_t stream)
{
    fli_event e = {0};
    e.kind = (uint8_t)kind;
    e.ptr = ptr;
    e.size = size;
    e.stream = stream;
    e.line = (uint32_t)t->n + 2;
    e.time_us = t->n;
    CHECK_OK(fli_trace_push(t, &e));
}

static void opts_for(fli_replay_opts *o, const char *policy)
{
    memset(o, 0, sizeof *o);
    fl_config_default(&o->cfg);
    snprintf(o->cfg.policy, sizeof o->cfg.policy, "%s", policy);
    fl_sim_params_default(&o->sim);
}

static void test_prepare(void)
{
    fli_trace t;
    fli_trace_init(&t, "mem/t.csv");
    push(&t, FL_EV_ALLOC, 0x1000, 100, 0);      /* 512 live */
    push(&t, FL_EV_ALLOC, 0x2000, 1000, 0);     /* 1536 live */
    push(&t, FL_EV_FREE, 0x9999, 0, 0);         /* unknown: skipped, warned */
    push(&t, FL_EV_FREE, 0x1000, 100, 0);       /* 1024 live */
    push(&t, FL_EV_ALLOC_FAIL, 0, 1 << 30, 0);  /* recorded failure */
    push(&t, FL_EV_ALLOC, 0x1000, 2048, 1);     /* pointer reused: 3072 live */
    push(&t, FL_EV_FREE, 0x2000, 1000, 0);
    fli_prepared *p;
    CHECK_OK(fli_prepare(&t, &p));
    CHECK_EQ_U64(p->n_ops, 6);
    CHECK_EQ_U64(p->n_allocs, 3);
    CHECK_EQ_U64(p->n_frees, 2);
    CHECK_EQ_U64(p->unknown_frees, 1);
    CHECK_EQ_U64(p->n_recorded_failures, 1);
    CHECK_EQ_U64(p->peak_live, 3072);
    CHECK_EQ_U64(p->end_live, 2048);
    CHECK_EQ_U64(p->n_streams, 2);
    CHECK_EQ_U64(p->n_warnings, 1);
    CHECK(p->n_warnings && strstr(p->warnings[0], "mem/t.csv:4") && strstr(p->warnings[0], "0x9999"));
    CHECK(!strcmp(p->name, "t.csv"));
    fli_prepared_free(p);

    /* An allocation of a pointer that is still live is an error naming both lines. */
    push(&t, FL_EV_ALLOC, 0x1000, 64, 0);
    CHECK_STATUS(fli_prepare(&t, &p), FL_ERR_PARSE);
    CHECK(strstr(fl_last_error(), "mem/t.csv:9") && strstr(fl_last_error(), "line 7"));
    fli_trace_free(&t);
}

/* cca on a 5 MiB request makes a 20 MiB segment; fragless maps 3 pages (plus its growth
 * step). min_capacity: cca cannot run below 20 MiB, fragless needs the 3 pages. */
static void test_known_answers(void)
{
    fli_trace t;
    fli_trace_init(&t, "mem/five.csv");
    push(&t, FL_EV_ALLOC, 0x1, 5 * MiB, 0);
    push(&t, FL_EV_FREE, 0x1, 5 * MiB, 0);
    fli_prepared *p;
    CHECK_OK(fli_prepare(&t, &p));
    fli_replay_opts o;
    fli_replay_result r;
    uint64_t mc;

    opts_for(&o, "cca");
    CHECK_OK(fli_replay(p, &o, &r));
    CHECK_EQ_U64(r.peak_reserved, 20 * MiB);
    CHECK_EQ_U64(r.dev.calls[FL_CALL_MEM_ALLOC], 1);
    CHECK_EQ_U64(r.dev.calls[FL_CALL_MEM_FREE], 0); /* cached, not released */
    CHECK_EQ_U64(r.pairs, 1);
    CHECK_OK(fli_min_capacity(p, &o, &r, &mc));
    CHECK_EQ_U64(mc, 20 * MiB);
    fli_replay_result_free(&r);

    opts_for(&o, "fragless");
    CHECK_OK(fli_replay(p, &o, &r));
    CHECK_OK(fli_min_capacity(p, &o, &r, &mc));
    CHECK_EQ_U64(mc, 6 * MiB);
    fli_replay_result_free(&r);

    /* At 4 MiB nobody fits the 5 MiB block: one OOM, reported at op 0. */
    o.sim.capacity = 4 * MiB;
    CHECK_OK(fli_replay(p, &o, &r));
    CHECK_EQ_U64(r.ooms, 1);
    CHECK_EQ_U64(r.first_oom_op, 0);
    CHECK_EQ_U64(r.pairs, 0);
    fli_replay_result_free(&r);
    fli_prepared_free(p);
    fli_trace_free(&t);
}

/* A recorded failure is tried and given back at once: it never counts as live, nor as
 * an OOM of the replay when it fails again. */
static void test_recorded_failure(void)
{
    fli_trace t;
    fli_trace_init(&t, "mem/fail.csv");
    push(&t, FL_EV_ALLOC, 0x1, 3 * MiB, 0);
    push(&t, FL_EV_ALLOC_FAIL, 0, 64 * MiB, 0);
    push(&t, FL_EV_FREE, 0x1, 3 * MiB, 0);
    fli_prepared *p;
    CHECK_OK(fli_prepare(&t, &p));
    fli_replay_opts o;
    opts_for(&o, "fragless");
    o.sim.capacity = 8 * MiB;
    fli_replay_result r;
    CHECK_OK(fli_replay(p, &o, &r));
    CHECK_EQ_U64(r.ooms, 0);
    CHECK_EQ_U64(r.pairs, 1);
    fli_replay_result_free(&r);
    fli_prepared_free(p);
    fli_trace_free(&t);
}

/* A periodic loop: timeline windows add up to the totals, and the steady-state window
 * (after the midpoint and the peak) sees no device calls under fragless and cca. */
static void test_timeline_and_steady_state(void)
{
    fli_trace t;
    fli_trace_init(&t, "mem/loop.csv");
    static const uint64_t sizes[] = {4 * MiB, 700, 33 * MiB, 96 << 10, 12 * MiB + 512};
    uint64_t ptr = 0x100;
    for (int step = 0; step < 40; step++) {
        for (int i = 0; i < 5; i++)
            push(&t, FL_EV_ALLOC, ptr + (uint64_t)i, sizes[i] + (uint64_t)(step % 3) * 512, 0);
        for (int i = 4; i >= 0; i--)
            push(&t, FL_EV_FREE, ptr + (uint64_t)i, 0, 0);
        ptr += 16;
    }
    fli_prepared *p;
    CHECK_OK(fli_prepare(&t, &p));
    const char *policies[] = {"fragless", "cca", "cca-expandable"};
    for (int k = 0; k < 3; k++) {
        fli_replay_opts o;
        opts_for(&o, policies[k]);
        o.timeline_buckets = 7;
        o.check_every = 1;
        fli_measure m;
        CHECK_OK(fli_measure_run(p, &o, 0, 1, &m));
        const fli_replay_result *r = &m.unlimited;
        CHECK_EQ_U64(r->n_buckets, 7);
        uint64_t calls = 0, total = 0;
        for (int b = 0; b < r->n_buckets; b++) {
            calls += r->timeline[b].calls;
            CHECK(r->timeline[b].max_live <= p->peak_live);
        }
        for (int c = 0; c < FL_CALL_COUNT; c++)
            total += r->dev.calls[c];
        CHECK_EQ_U64(calls, total);
        CHECK_EQ_U64(r->timeline[6].end_op, p->n_ops);
        CHECK(m.steady_from_op >= p->n_ops / 2);
        CHECK_EQ_U64(r->late_calls, 0);
        CHECK(m.min_capacity >= p->peak_live && m.min_capacity <= r->peak_reserved + 2 * MiB);
        fli_measure_free(&m);
    }
    fli_prepared_free(p);
    fli_trace_free(&t);
}

/* The streams' floor: each stream's most live bytes in the steady state, summed, with a
 * free counted on its block's stream (not the stream the free names). Two streams that
 * each reach 10 MiB, in turn, in every step of a loop after a 16 MiB peak: the floor is
 * 20 MiB, above peak live, and a fragless replay below it makes device calls in the
 * steady state that it does not make without a limit. */
static void test_streams_floor(void)
{
    fli_trace t;
    fli_trace_init(&t, "mem/streams.csv");
    push(&t, FL_EV_ALLOC, 0x10, 2 * MiB, 1);
    push(&t, FL_EV_ALLOC, 0x20, 2 * MiB, 2);
    push(&t, FL_EV_ALLOC, 0x30, 12 * MiB, 1); /* peak live: 16 MiB */
    push(&t, FL_EV_FREE, 0x30, 0, 1);
    for (int step = 0; step < 6; step++) {
        push(&t, FL_EV_ALLOC, 0x40, 8 * MiB, 1);
        push(&t, FL_EV_FREE, 0x40, 0, 1);
        push(&t, FL_EV_ALLOC, 0x50, 8 * MiB, 2);
        push(&t, FL_EV_FREE, 0x50, 0, 1); /* freed naming stream 1: still stream 2's block */
    }
    fli_prepared *p;
    CHECK_OK(fli_prepare(&t, &p));
    CHECK_EQ_U64(p->peak_live, 16 * MiB);
    CHECK_EQ_U64(fli_steady_from(p), 14);
    uint64_t floor;
    CHECK_OK(fli_streams_floor(p, fli_steady_from(p), &floor));
    CHECK_EQ_U64(floor, 20 * MiB);
    CHECK_OK(fli_streams_floor(p, 0, &floor)); /* the whole trace: 14 + 10 */
    CHECK_EQ_U64(floor, 24 * MiB);
    CHECK_OK(fli_streams_floor(p, p->n_ops, &floor)); /* nothing after the end: what is live then */
    CHECK_EQ_U64(floor, 4 * MiB);

    fli_replay_opts o;
    opts_for(&o, "fragless");
    o.check_every = 1;
    fli_measure m;
    CHECK_OK(fli_measure_run(p, &o, 18 * MiB, 0, &m));
    CHECK_EQ_U64(m.streams_floor, 20 * MiB);
    CHECK_EQ_U64(m.unlimited.late_calls, 0);
    CHECK_EQ_U64(m.at_capacity.ooms, 0);
    CHECK(m.at_capacity.late_calls > 0);
    fli_measure_free(&m);
    fli_prepared_free(p);
    fli_trace_free(&t);

    /* One stream: no floor. */
    fli_trace_init(&t, "mem/one.csv");
    push(&t, FL_EV_ALLOC, 0x10, 2 * MiB, 7);
    push(&t, FL_EV_FREE, 0x10, 0, 7);
    CHECK_OK(fli_prepare(&t, &p));
    CHECK_OK(fli_streams_floor(p, 0, &floor));
    CHECK_EQ_U64(floor, 0);
    fli_prepared_free(p);
    fli_trace_free(&t);
}

int main(void)
{
    test_streams_floor();
    test_prepare();
    test_known_answers();
    test_recorded_failure();
    test_timeline_and_steady_state();
    return fl_test_done("test_replay");
}
