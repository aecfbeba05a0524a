/* The acceptance bars on the real traces in ../shared/traces (skipped where absent):
 * every trace and snapshot, hard/ included, loads and replays under every policy with
 * the self-check passing, and fragless's min_capacity is never worse than cca's or
 * cca-expandable's. For the CSV traces, hard/ included: no device calls in the steady
 * state without a limit. For hard/: at 1.05 x peak live, where fragless completes, no
 * more steady-state device time than cca-expandable (which fails allocations there on
 * every hard/ trace: a failing run skips calls, so that only favours it). For the CSV
 * traces of the top folder also: min_capacity /
 * peak_live <= 1.02, no OOM at 1.05 x peak live, and wherever cca-expandable completes
 * (from its own min_capacity up), no more steady-state device time; hard/ does not meet
 * these yet (segment_multiscale 1.035, vae_small 1.053). Issue 13's bar
 * max(1.01 x peak live, page limit + 4 MiB), which each row prints against fragless's
 * min_capacity, is checked where it is met: gpt_varlen, kvcache_generate, serve_switch,
 * vae_small (not yet resnet_varbatch, segment_multiscale). For the snapshots: 1.02 too,
 * issue 13's bar, and the PyTorch emulation, following the
 * recorded allocator, ends within 1% of the reserved memory the snapshot recorded where
 * recording covers every segment's lifetime, within 3% where segments are older than
 * the recording (all of these: rebuilt from the dump). */
#include <dirent.h>
#include <string.h>

#include <math.h>

#include "replay/input.h"
#include "test_support.h"

static void opts_for(fli_replay_opts *o, const char *policy)
{
    memset(o, 0, sizeof *o);
    fl_config_default(&o->cfg);
    snprintf(o->cfg.policy, sizeof o->cfg.policy, "%s", policy);
    fl_sim_params_default(&o->sim);
}

/* Replays a snapshot under the settings it recorded, following the recorded allocator:
 * the emulation's reserved memory at the end against the segments' total. */
static void check_fidelity(const fli_prepared *p, const fli_snapshot_info *info)
{
    fli_fidelity f;
    CHECK_OK(fli_fidelity_run(p, info, 0, &f));
    printf("%-32s fidelity of %s: recorded %.3f GiB, emulated %.3f GiB, %+.2f%% (%s)\n", p->name, f.policy,
           (double)f.recorded / (double)FL_GiB, (double)f.emulated / (double)FL_GiB, 100 * f.diff,
           f.covered ? "recording covers every segment" : "segments older than the recording, rebuilt");
    CHECK(fabs(f.diff) <= (f.covered ? 0.01 : 0.03));
    CHECK_EQ_U64(f.seed_failures, 0);
}

/* What a file is checked for (the header comment). */
typedef enum { TRACE_TOP, TRACE_HARD, TRACE_SNAPSHOT } trace_kind;

static void check_trace(const char *path, trace_kind kind)
{
    int snapshot = kind == TRACE_SNAPSHOT;
    fli_prepared *p;
    fli_snapshot_info info;
    CHECK_OK(fli_load_trace_ex(path, 0, stderr, &p, &info));
    if (fl_test_failures)
        return;
    CHECK_EQ_U64(p->unknown_frees, 0);
    if (snapshot)
        check_fidelity(p, &info);
    const char *const *names = fl_policy_names();
    uint64_t g = 2u << 20, cap = (uint64_t)((double)p->peak_live * 1.05) / g * g;
    fli_measure m[8];
    int np = 0;
    for (; names[np]; np++) {
        fli_replay_opts o;
        opts_for(&o, names[np]);
        o.check_every = 997;
        CHECK_OK(fli_measure_run(p, &o, kind != TRACE_SNAPSHOT ? cap : 0, 1, &m[np]));
        printf("%-22s %-15s min_capacity/peak_live %.4f  steady calls %llu, at 1.05x: ooms %llu, steady %.3f ms\n",
               p->name, names[np], (double)m[np].min_capacity / (double)p->peak_live,
               (unsigned long long)m[np].unlimited.late_calls, (unsigned long long)m[np].at_capacity.ooms,
               m[np].at_capacity.late_us / 1e3);
    }
    /* names: fragless, cca, cca-expandable, nocache (registry order). */
    CHECK(!strcmp(names[0], "fragless") && !strcmp(names[1], "cca") && !strcmp(names[2], "cca-expandable"));
    double ratio = (double)m[0].min_capacity / (double)p->peak_live;
    /* Issue 13's bar, reported here until fragless meets it on every trace. */
    uint64_t page_limit;
    double bar = fl_test_issue13_bar(p->peak_live, g, &page_limit);
    printf("%-22s issue 13's bar: page limit %llu MiB, bar %.1f MiB, fragless %llu MiB (%+lld MiB): %s\n", p->name,
           (unsigned long long)(page_limit >> 20), bar / (double)(1u << 20),
           (unsigned long long)(m[0].min_capacity >> 20),
           (long long)(m[0].min_capacity >> 20) - (long long)(page_limit >> 20),
           (double)m[0].min_capacity <= bar ? "met" : "not met");
    if (kind != TRACE_HARD)
        CHECK(ratio <= 1.02);
    /* The snapshots meet issue 13's bar (0-12 MiB above the page limit), and so do these
     * CSV traces (gpt_varlen and vae_small since the stack position, gpt_varlen 1.0097 ->
     * 1.0066 of peak live since stitched blocks, vae_small 1.0530; resnet_varbatch 1.0143
     * -> 1.0079 since stitched blocks under pressure very near the limit): keep it so.
     * Only hard/segment_multiscale is left over it. */
    static const char *const csv_meeting_bar[] = {"gpt_varlen.csv", "kvcache_generate.csv", "resnet_varbatch.csv",
                                                  "serve_switch.csv", "vae_small.csv"};
    int meets = kind == TRACE_SNAPSHOT;
    for (size_t i = 0; i < sizeof csv_meeting_bar / sizeof csv_meeting_bar[0]; i++)
        meets |= !strcmp(p->name, csv_meeting_bar[i]);
    if (meets)
        CHECK((double)m[0].min_capacity <= bar);
    CHECK(m[0].min_capacity <= m[1].min_capacity);
    CHECK(m[0].min_capacity <= m[2].min_capacity);
    /* Issue 13's steady state at 1.05x peak live, met on every CSV trace (hard/ included)
     * since small requests go into the large heap's mapped pages under pressure. */
    if (kind != TRACE_SNAPSHOT && m[0].at_capacity.ooms == 0)
        CHECK_EQ_U64(m[0].at_capacity.late_calls, 0);
    if (kind == TRACE_HARD) {
        CHECK_EQ_U64(m[0].unlimited.late_calls, 0);
        if (m[0].at_capacity.ooms == 0)
            CHECK(m[0].at_capacity.late_us <= m[2].at_capacity.late_us);
    }
    if (kind != TRACE_TOP) {
        for (int i = 0; i < np; i++)
            fli_measure_free(&m[i]);
        fli_prepared_free(p);
        return;
    }
    CHECK_EQ_U64(m[0].unlimited.late_calls, 0);
    CHECK_EQ_U64(m[0].at_capacity.ooms, 0);
    if (m[2].at_capacity.ooms == 0)
        CHECK(m[0].at_capacity.late_us <= m[2].at_capacity.late_us);
    /* min_capacity is a binary search: check that fragless runs at every capacity of
     * the 20 pages above it. */
    for (uint64_t c = m[0].min_capacity; c < m[0].min_capacity + 20 * g; c += g) {
        fli_replay_opts o;
        opts_for(&o, "fragless");
        o.sim.capacity = c;
        fli_replay_result r;
        CHECK_OK(fli_replay(p, &o, &r));
        CHECK_EQ_U64(r.ooms, 0);
        fli_replay_result_free(&r);
    }
    /* "At any capacity where cca-expandable completes": from its own min_capacity up
     * to its unlimited peak, in eight steps. */
    uint64_t lo = m[2].min_capacity, hi = fli_align_up(m[2].unlimited.peak_reserved, g);
    for (int k = 0; k <= 8 && lo; k++) {
        uint64_t c = lo + (hi - lo) * (uint64_t)k / 8 / g * g;
        fli_measure a, b;
        fli_replay_opts o;
        opts_for(&o, "fragless");
        CHECK_OK(fli_measure_run(p, &o, c, 0, &a));
        opts_for(&o, "cca-expandable");
        CHECK_OK(fli_measure_run(p, &o, c, 0, &b));
        if (b.at_capacity.ooms == 0) {
            CHECK_EQ_U64(a.at_capacity.ooms, 0);
            CHECK(a.at_capacity.late_us <= b.at_capacity.late_us);
            if (a.at_capacity.late_us > b.at_capacity.late_us)
                printf("  at %llu MiB: fragless steady %.3f ms > cca-expandable %.3f ms\n",
                       (unsigned long long)(c >> 20), a.at_capacity.late_us / 1e3, b.at_capacity.late_us / 1e3);
        }
        fli_measure_free(&a);
        fli_measure_free(&b);
    }
    for (int i = 0; i < np; i++)
        fli_measure_free(&m[i]);
    fli_prepared_free(p);
}

/* Checks every file of dir ending in suffix; returns how many. */
static int check_dir(const char *dir, const char *suffix, trace_kind kind)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    size_t sl = strlen(suffix);
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len > sl && !strcmp(e->d_name + len - sl, suffix)) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            check_trace(path, kind);
            n++;
        }
    }
    if (d)
        closedir(d);
    return n;
}

int main(void)
{
    const char *dir = fl_test_shared_traces();
    if (!dir)
        fl_test_skip("../shared/traces is absent: the real-trace acceptance checks need it (CI has it)");
    CHECK(check_dir(dir, ".csv", TRACE_TOP) >= 3);
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/hard", dir);
    CHECK(check_dir(sub, ".csv", TRACE_HARD) >= 3);
    snprintf(sub, sizeof sub, "%s/snapshots", dir);
    CHECK(check_dir(sub, ".pickle", TRACE_SNAPSHOT) >= 10);
    return fl_test_done("test_shared_traces");
}
