/* The doctor, fidelity and report on the constructed PyTorch snapshots of tests/snapshots/
 * (written by tests/snapshots/make_snapshots.py, a model of PyTorch's caching allocator;
 * issue 12's cases): the doctor's whole text against tests/golden/snapshots/, and what
 * each case must say whatever the wording: the device with the OOM, the capacity, a
 * verdict that cannot mislead, settings that fit, the bytes behind each cause, who pins
 * them, and an emulation that follows the recorded allocator.
 * FL_TEST_CLI=PATH runs another build's CLI (an older one fails these checks). */
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "replay/input.h"
#include "test_support.h"

static const char *cli(void)
{
    const char *c = getenv("FL_TEST_CLI");
    return c && *c ? c : FL_CLI;
}

static fl_run_result *run(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s", FL_SOURCE_DIR, cli(), args);
    return fl_test_shell(cmd);
}

/* The number after "key": in a JSON text (the first occurrence after `from`). */
static double json_num(const char *text, const char *key, const char *from)
{
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(from ? from : text, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

static void golden(const char *name, const char *args)
{
    fl_run_result *r = run("doctor tests/snapshots/%s.pickle %s", name, args);
    CHECK_EQ_U64(r->code, 0);
    char path[512];
    static char want[1 << 16];
    snprintf(path, sizeof path, "%s/tests/golden/snapshots/%s.doctor.txt", FL_SOURCE_DIR, name);
    fl_test_slurp(path, want, sizeof want);
    CHECK(want[0] != 0);
    if (strcmp(r->out, want) != 0) {
        CHECK(!"doctor output differs from its golden file");
        fprintf(stderr, "%s: got:\n%s\nwant:\n%s\n", path, r->out, want);
    }
}

/* Two GPUs, the OOM on device 1 (fragmentation: a KV cache pins every segment). */
static void test_oom_on_device1(void)
{
    fl_run_result *r = run("doctor tests/snapshots/oom_device1.pickle");
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "oom_device1.pickle (device 1)") != NULL);
    CHECK(strstr(r->out, "No capacity given") == NULL);
    CHECK(strstr(r->out, "Capacity from the snapshot's oom event") != NULL);
    CHECK(strstr(r->out, "Verdict: FRAGMENTATION") != NULL);
    CHECK(strstr(r->err, "the out-of-memory is on device 1") != NULL);
    /* who pins it: the KV cache's allocation site, first */
    const char *pins = strstr(r->out, "Who pins it");
    CHECK(pins && strstr(pins, "kv_cache.py:88 append") != NULL);
    r = run("doctor tests/snapshots/oom_device1.pickle --format json");
    CHECK_EQ_U64(r->code, 0);
    CHECK_EQ_U64(json_num(r->out, "device", NULL), 1);
    CHECK(json_num(r->out, "capacity", NULL) == 24.0 * (1 << 30));
    const char *pinned = strstr(r->out, "\"pinned_by\": [{\"site\": \"project/kv_cache.py:88 append\"");
    CHECK(pinned != NULL);
    /* device 0 on request: its own section, no OOM there */
    r = run("doctor tests/snapshots/oom_device1.pickle --device 0");
    CHECK(r->code == 0 && strstr(r->out, "(device 0)") && strstr(r->out, "Out of memory") == NULL);
    r = run("doctor tests/snapshots/oom_device1.pickle --device 2");
    CHECK(r->code == 1 && strstr(r->err, "no device 2"));
    /* fidelity reads both devices */
    r = run("fidelity tests/snapshots/oom_device1.pickle");
    CHECK(r->code == 0 && strstr(r->out, "(device 0)") && strstr(r->out, "(device 1)"));
}

/* Two device traces, events on device 1 only: read it, and no warning that is not true. */
static void test_device1_only(void)
{
    fl_run_result *r = run("doctor tests/snapshots/device1_only.pickle");
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "device1_only.pickle (device 1) (348 events") != NULL);
    CHECK(strstr(r->err, "device_traces[0] is empty") == NULL);
    r = run("doctor tests/snapshots/device1_only.pickle --device 0");
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "no events on device 0") && strstr(r->err, "events are on device 1"));
    r = run("compare tests/snapshots/device1_only.pickle --policies cca --no-min-capacity");
    CHECK(r->code == 0 && strstr(r->out, "(device 1)"));
}

/* Dies at the capacity: exhaustion, the what-if includes the failed request, nothing fits,
 * no setting advised. */
static void test_oom_at_capacity(void)
{
    fl_run_result *r = run("doctor tests/snapshots/oom_at_capacity.pickle --format json");
    CHECK_EQ_U64(r->code, 0);
    double cap = json_num(r->out, "capacity", NULL), needs = json_num(r->out, "job_needs", NULL);
    CHECK(cap > 79.0 * (1 << 30) && cap < 80.0 * (1 << 30));
    CHECK(strstr(r->out, "\"verdict\": \"exhaustion\"") && strstr(r->out, "\"job_fits\": false"));
    const char *oom = strstr(r->out, "\"oom\": {");
    CHECK(oom && needs >= json_num(r->out, "live", oom) + json_num(r->out, "asked", oom));
    CHECK(needs > cap);
    for (const char *w = strstr(r->out, "\"whatif\": ["); w && (w = strstr(w, "\"min_capacity\": ")); w++) {
        CHECK(strtod(w + 16, NULL) >= needs);
        const char *fits = strstr(w, "\"fits\": ");
        CHECK(fits && strncmp(fits, "\"fits\": false", 13) == 0);
    }
    r = run("doctor tests/snapshots/oom_at_capacity.pickle");
    const char *try = strstr(r->out, "To try");
    CHECK(try && strstr(try, "No setting fits") && !strstr(try, "PYTORCH_CUDA_ALLOC_CONF=") && !strstr(try, "saves"));
    CHECK(strstr(r->out, "capacity of 0 B") == NULL);
    CHECK(try && strstr(try, "empty_cache() would not help") != NULL);
}

/* --capacity 0.98x of a job's peak: the first OOM is fragmentation, but the job cannot fit. */
static void test_below_peak(void)
{
    fl_run_result *r = run("doctor tests/snapshots/below_peak.pickle --capacity 0.98x");
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "Verdict: FRAGMENTATION") != NULL);
    CHECK(strstr(r->out, "fixing\nfragmentation only moves the OOM: this job needs at least") != NULL);
    CHECK(strstr(r->out, "No setting fits") != NULL);
    r = run("doctor tests/snapshots/below_peak.pickle --capacity 0.98x --format json");
    CHECK(strstr(r->out, "\"job_fits\": false") != NULL);
    CHECK(json_num(r->out, "job_needs", NULL) > json_num(r->out, "capacity", NULL));
}

/* Three streams, empty_cache() between requests and retries after failed cudaMallocs: the
 * emulation gives back what the real allocator gave back and ends where it ended. */
static void test_multistream(void)
{
    fl_run_result *r = run("fidelity tests/snapshots/multistream.pickle --format csv");
    CHECK_EQ_U64(r->code, 0);
    const char *row = strstr(r->out, "multistream.pickle,0,cca,");
    CHECK(row != NULL);
    if (row) {
        unsigned long long rec, emu, peak, old, oldb, seeded, rel_rec, rel_emu;
        double diff;
        int covered;
        CHECK(sscanf(row, "multistream.pickle,0,cca,%llu,%llu,%llu,%lf,%d,%llu,%llu,%llu,%llu,%llu", &rec, &emu,
                     &peak, &diff, &covered, &old, &oldb, &seeded, &rel_rec, &rel_emu) == 10);
        CHECK(fabs(diff) <= 0.01);
        CHECK(covered == 1 && old == 0);
        CHECK(rel_rec > 20ull << 30 && rel_emu == rel_rec);
    }
    r = run("doctor tests/snapshots/multistream.pickle --capacity 3GiB");
    CHECK(r->code == 0 && strstr(r->out, "3 streams") && strstr(r->out, "free in other streams' pools"));
    CHECK(strstr(r->out, "caveat") == NULL);
}

/* Every constructed snapshot within 1% where recording covers the segments, the others
 * (segments older than the recording, rebuilt from the dump) within 3% and saying so. */
static void test_fidelity_all(void)
{
    static const char *const names[] = {"oom_device1", "device1_only", "oom_at_capacity", "below_peak",
                                        "multistream", "late_start", "frames", "dump_only"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tests/snapshots/%s.pickle", FL_SOURCE_DIR, names[i]);
        fli_loaded *v;
        int n;
        CHECK_OK(fli_load_inputs(path, FL_DEVICE_ALL, NULL, &v, &n));
        for (int k = 0; k < n; k++) {
            fli_fidelity f;
            CHECK_OK(fli_fidelity_run(v[k].p, &v[k].info, 0, &f));
            printf("%-34s covered %d, %llu older segments, diff %+.4f%%\n", v[k].p->name, f.covered,
                   (unsigned long long)f.old_segments, 100 * f.diff);
            CHECK(fabs(f.diff) <= (f.covered ? 0.01 : 0.03));
            CHECK(f.covered == (strcmp(names[i], "late_start") && strcmp(names[i], "dump_only")));
            CHECK_EQ_U64(f.seed_failures, 0);
        }
        fli_loaded_free(v, n);
    }
}

/* The report: the capacity the snapshot implies, the parts, and sites on hover. */
static void test_report(void)
{
    char out[64];
    snprintf(out, sizeof out, "/tmp/fl_snapdoc.%d.html", (int)getpid());
    fl_run_result *r = run("report tests/snapshots/frames.pickle -o %s", out);
    CHECK_EQ_U64(r->code, 0);
    char *html = fl_test_read_file(out);
    CHECK(html != NULL);
    if (html) {
        CHECK(strstr(html, "data-capacity=\"6442450944\"") != NULL);
        CHECK(strstr(html, "data-k=\"interleaved\"") != NULL);
        CHECK(strstr(html, "kv_cache.py:88 append</title>") || strstr(html, "kv_cache.py:88 append, ") ||
              strstr(html, "kv_cache.py:88 append;"));
        CHECK(strstr(html, "<code>project/kv_cache.py:88 append</code>") != NULL);
        free(html);
    }
    /* The doctor reuses the comparison's searches where the what-if trace is the whole
     * trace: what ran (cca), expandable segments and fragless. */
    r = run("report tests/snapshots/multistream.pickle -o %s", out);
    CHECK_EQ_U64(r->code, 0);
    html = fl_test_read_file(out);
    if (html) {
        int reused = 0;
        for (const char *h = html; (h = strstr(h, "data-reused=\"1\"")); h++)
            reused++;
        CHECK_EQ_U64(reused, 3);
        free(html);
    }
    unlink(out);
}

int main(void)
{
    golden("oom_device1", "");
    golden("device1_only", "");
    golden("oom_at_capacity", "");
    golden("below_peak", "--capacity 0.98x");
    golden("multistream", "--capacity 3GiB");
    golden("frames", "");
    golden("late_start", "");
    golden("dump_only", "");
    test_oom_on_device1();
    test_device1_only();
    test_oom_at_capacity();
    test_below_peak();
    test_multistream();
    test_fidelity_all();
    test_report();
    return fl_test_done("test_snapshot_doctor");
}
