/* `fragless report` as a user runs it: the HTML page of the example trace has its
 * sections, the comparison numbers `fragless compare --format csv` prints, page maps whose
 * counts match a walk of the policies done here, nothing fetched from the network, input
 * names escaped; bad inputs give the documented exit codes; the progress bar appears on
 * a terminal only. State snapshots (fl_allocator_snapshot's JSON) beside a trace: their
 * statistics as cards and their page map, square for square. */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "replay/replay.h"
#include "test_support.h"
#include "state/state.h"

#define EXAMPLE "examples/encoder_varlen.csv"

/* The whole file, "" if it cannot be read (caller frees). */
static char *slurp(const char *path)
{
    char *s = fl_test_read_file(path);
    return s ? s : calloc(1, 1);
}

/* Runs a shell command line from the source directory ("CLI" is the fragless binary). */
static fl_run_result *run(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && CLI='%s' && %s", FL_SOURCE_DIR, FL_CLI, args);
    return fl_test_shell(cmd);
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* The number after `key` inside the element that starts at `from`, or -1. */
static long long number_after(const char *from, const char *key)
{
    const char *p = from ? strstr(from, key) : NULL;
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* ---- the page maps, recomputed from a walk of the policy at the peak ---- */

typedef struct walk_count {
    uint64_t g;
    uint64_t pages[4];       /* unmapped, cached, pinned by one, by several */
    /* cca: segments have no pages; units are counted from the live blocks */
    uint64_t seg_addr, seg_size;
    uint32_t *seg_pins;
    int has_pages;
} walk_count;

static void flush_segment(walk_count *w)
{
    if (!w->seg_pins)
        return;
    for (uint64_t u = 0; u < w->seg_size / w->g; u++)
        w->pages[w->seg_pins[u] == 0 ? 1 : w->seg_pins[u] == 1 ? 2 : 3]++;
    free(w->seg_pins);
    w->seg_pins = NULL;
}

static void wc_region(void *user, uint64_t addr, uint64_t size, uint64_t stream, const char *kind)
{
    walk_count *w = user;
    (void)stream;
    flush_segment(w);
    if (!strcmp(kind, "segment")) {
        w->seg_addr = addr;
        w->seg_size = size;
        w->seg_pins = calloc(size / w->g + 1, sizeof *w->seg_pins);
    }
}

static void wc_page(void *user, uint64_t addr, uint64_t size, int mapped, uint32_t pins)
{
    walk_count *w = user;
    (void)addr;
    CHECK_EQ_U64(size, w->g);
    w->has_pages = 1;
    w->pages[!mapped ? 0 : pins == 0 ? 1 : pins == 1 ? 2 : 3]++;
}

static void wc_block(void *user, uint64_t addr, uint64_t size, int live)
{
    walk_count *w = user;
    if (!w->seg_pins || !live)
        return;
    for (uint64_t u = (addr - w->seg_addr) / w->g; u * w->g < addr + size - w->seg_addr; u++)
        w->seg_pins[u]++;
}

static int wc_inspect(const fli_replay_view *rv, void *user)
{
    fli_state_visitor v = {user, wc_region, wc_page, wc_block};
    rv->pol->ops->walk(rv->pol, &v);
    flush_segment(user);
    return 1;
}

static void check_map(const char *html, const fli_prepared *p, const char *policy, uint64_t min_cap)
{
    fli_replay_opts o;
    memset(&o, 0, sizeof o);
    fl_config_default(&o.cfg);
    fl_sim_params_default(&o.sim);
    snprintf(o.cfg.policy, sizeof o.cfg.policy, "%s", policy);
    o.sim.capacity = min_cap;
    walk_count w = {.g = o.sim.granularity};
    o.inspect_at_op = p->peak_live_op;
    o.inspect = wc_inspect;
    o.inspect_user = &w;
    fli_replay_result r;
    CHECK_OK(fli_replay(p, &o, &r));
    CHECK_EQ_U64(r.ooms, 0);
    fli_replay_result_free(&r);
    CHECK(w.pages[2] + w.pages[3] > 0);
    char key[64];
    snprintf(key, sizeof key, "<figure class=\"map\" data-policy=\"%s\"", policy);
    const char *fig = strstr(html, key);
    CHECK(fig != NULL);
    if (!fig)
        return;
    const char *end = strstr(fig, "</figure>");
    CHECK_EQ_U64(number_after(fig, "data-unmapped=\""), w.pages[0]);
    CHECK_EQ_U64(number_after(fig, "data-cached=\""), w.pages[1]);
    CHECK_EQ_U64(number_after(fig, "data-pin1=\""), w.pages[2]);
    CHECK_EQ_U64(number_after(fig, "data-pinn=\""), w.pages[3]);
    /* Small enough for one square per page: the squares drawn are the same counts. */
    static const char *const cls[4] = {"class=\"u\"", "class=\"c\"", "class=\"p1\"", "class=\"pn\""};
    size_t n = (size_t)(end - fig);
    char *part = malloc(n + 1);
    memcpy(part, fig, n);
    part[n] = 0;
    for (int s = 0; s < 4; s++)
        CHECK_EQ_U64(count(part, cls[s]), w.pages[s]);
    free(part);
    if (!strcmp(policy, "fragless"))
        CHECK(w.has_pages);
}

/* ---- the page ---- */

static void test_report_page(void)
{
    char html_path[64];
    snprintf(html_path, sizeof html_path, "/tmp/fl_report.%d.html", (int)getpid());
    fl_run_result *r = run("\"$CLI\" report " EXAMPLE " -o %s", html_path);
    CHECK_EQ_U64(r->code, 0);
    CHECK(strchr(r->err, '\r') == NULL && strchr(r->err, '\033') == NULL); /* no progress bar off a terminal */
    char *html = slurp(html_path);
    unlink(html_path);
    CHECK(!strncmp(html, "<!DOCTYPE html>", 15));
    CHECK(strstr(html, "</html>\n") != NULL);
    for (int i = 0; i < 4; i++) {
        static const char *const ids[] = {"id=\"compare-0\"", "id=\"timeline-0\"", "id=\"pagemap-0\"", "id=\"doctor-0\""};
        CHECK(strstr(html, ids[i]) != NULL);
    }
    /* Self-contained: nothing to fetch. */
    CHECK(!strstr(html, "http://") && !strstr(html, "https://"));
    CHECK(!strstr(html, "<script") && !strstr(html, "<link") && !strstr(html, "@import") && !strstr(html, "url("));
    /* Well-formed enough: what opens, closes. */
    static const char *const pairs[][2] = {{"<svg", "</svg>"},     {"<table", "</table>"}, {"<section", "</section>"},
                                           {"<rect", "</rect>"},   {"<title>", "</title>"}, {"<figure", "</figure>"},
                                           {"<tr", "</tr>"},       {"<p", "</p>"},          {"<div", "</div>"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        size_t open = count(html, pairs[i][0]) - (strcmp(pairs[i][0], "<p") ? 0 : count(html, "<polygon") +
                                                                               count(html, "<polyline"));
        if (open != count(html, pairs[i][1]))
            fprintf(stderr, "%s: %zu opened, %zu closed\n", pairs[i][0], open, count(html, pairs[i][1]));
        CHECK(open == count(html, pairs[i][1]));
    }
    /* One polyline per policy; the timeline has at most 640 windows (bounded size). */
    CHECK_EQ_U64(count(html, "<polyline class=\"resv\""), 4);
    CHECK(strlen(html) < 400000);

    /* The table holds what compare prints. */
    r = run("\"$CLI\" compare " EXAMPLE " --format csv");
    CHECK_EQ_U64(r->code, 0);
    fli_prepared *p = NULL;
    CHECK_OK(fli_load_trace(FL_SOURCE_DIR "/" EXAMPLE, NULL, &p));
    uint64_t min_cap[2] = {0, 0}; /* fragless, cca */
    int rows = 0;
    for (char *line = strchr(r->out, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
        char policy[32], ratio[32];
        unsigned long long peak_live, peak_reserved, mc, calls, late;
        double ms;
        if (sscanf(line + 1, "%*[^,],%31[^,],%*u,%llu,%llu,%*[^,],%llu,%31[^,],%llu,%lf,%llu", policy, &peak_live,
                   &peak_reserved, &mc, ratio, &calls, &ms, &late) != 8) {
            CHECK(!"a compare CSV row did not parse");
            continue;
        }
        rows++;
        char key[64];
        snprintf(key, sizeof key, "<tr data-policy=\"%s\"", policy);
        const char *row = strstr(html, key);
        CHECK(row != NULL);
        if (!row)
            continue;
        CHECK_EQ_U64(number_after(row, "data-k=\"min_capacity\" data-v=\""), mc);
        CHECK_EQ_U64(number_after(row, "data-k=\"peak_reserved\" data-v=\""), peak_reserved);
        CHECK_EQ_U64(number_after(row, "data-k=\"device_calls\">"), calls);
        CHECK_EQ_U64(number_after(row, "data-k=\"late_device_calls\">"), late);
        char want[64];
        snprintf(want, sizeof want, "data-k=\"min_capacity_ratio\">%s<", ratio);
        CHECK(strstr(row, want) != NULL && strstr(row, want) < strstr(row, "</tr>"));
        CHECK_EQ_U64(number_after(html, "<span>peak live</span><b data-v=\""), peak_live);
        CHECK_EQ_U64(peak_live, p->peak_live);
        if (!strcmp(policy, "fragless"))
            min_cap[0] = mc;
        if (!strcmp(policy, "cca"))
            min_cap[1] = mc;
    }
    CHECK_EQ_U64(rows, 4);
    /* fragless needs less than cca on this trace: the map shows why, and is drawn at the
     * capacity each needs. */
    CHECK(min_cap[0] > 0 && min_cap[0] < min_cap[1]);
    if (p && min_cap[0] && min_cap[1]) {
        check_map(html, p, "fragless", min_cap[0]);
        check_map(html, p, "cca", min_cap[1]);
    }
    fli_prepared_free(p);
    /* The doctor's part: no capacity given, so no verdict, and the what-if table. */
    CHECK(strstr(html, "data-verdict=\"none\"") != NULL);
    CHECK(strstr(html, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True") != NULL);
    free(html);
}

static void test_capacity_and_escaping(void)
{
    /* A file name with markup in it is text in the page, never markup. */
    char dir[64], html_path[96];
    snprintf(dir, sizeof dir, "/tmp/fl_report_dir.%d", (int)getpid());
    snprintf(html_path, sizeof html_path, "%s/r.html", dir);
    fl_run_result *r = run("mkdir -p %s && cp " EXAMPLE " '%s/<b>&x.csv' && \"$CLI\" report '%s/<b>&x.csv' " EXAMPLE
                       " -o %s --policies fragless,cca --capacity 320MiB",
                       dir, dir, dir, html_path);
    CHECK_EQ_U64(r->code, 0);
    char *html = slurp(html_path);
    CHECK(strstr(html, "&lt;b&gt;&amp;x.csv") != NULL);
    CHECK(strstr(html, "<b>&x") == NULL);
    CHECK_EQ_U64(count(html, "<section class=\"trace\""), 2);
    CHECK(strstr(html, "href=\"#t1\"") != NULL);
    /* At 320 MiB cca runs out (it needs 336 MiB): an OOM column and a verdict. */
    CHECK(strstr(html, "<th>OOMs at 320.00 MiB</th>") != NULL);
    CHECK(strstr(html, "data-verdict=\"fragmentation\"") || strstr(html, "data-verdict=\"exhaustion\""));
    CHECK(strstr(html, "class=\"cap\"") != NULL);
    free(html);
    r = run("rm -rf %s", dir);
}

static void test_bad_input(void)
{
    char html_path[64];
    snprintf(html_path, sizeof html_path, "/tmp/fl_report_bad.%d.html", (int)getpid());
    fl_run_result *r = run("\"$CLI\" report /nonexistent/trace.csv -o %s", html_path);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, "/nonexistent/trace.csv") != NULL);
    CHECK(access(html_path, F_OK) != 0); /* no half-written page */
    r = run("\"$CLI\" report " EXAMPLE);
    CHECK(r->code == 1 && strstr(r->err, "-o") && strstr(r->err, "usage: fragless report"));
    r = run("\"$CLI\" report " EXAMPLE " -o %s --policies fragless,magic", html_path);
    CHECK(r->code == 1 && strstr(r->err, "magic"));
    r = run("\"$CLI\" report " EXAMPLE " -o /nonexistent/dir/r.html --policies fragless");
    CHECK(r->code == 4 && strstr(r->err, "/nonexistent/dir/r.html"));
    r = run("\"$CLI\" report " EXAMPLE " -o %s --format csv", html_path);
    CHECK(r->code == 1 && strstr(r->err, "--format"));
    r = run("\"$CLI\" help report");
    CHECK(r->code == 0 && strstr(r->out, "-o, --output") && strstr(r->out, "self-contained"));
    r = run("\"$CLI\" help");
    CHECK(r->code == 0 && strstr(r->out, "report TRACE"));
}

/* The bar is drawn on a terminal: script(1) gives the command one. */
static void test_progress_on_terminal(void)
{
    fl_run_result *r = run("command -v script");
    int have = r->code == 0;
    if (!have) {
        printf("test_report: no script(1): progress bar on a terminal not checked\n");
        return;
    }
    r = run("script -qec \"$CLI compare " EXAMPLE " --policies fragless,cca\" /dev/null");
    CHECK_EQ_U64(r->code, 0);
    CHECK(strstr(r->out, "\r\033[K[") != NULL && strstr(r->out, "encoder_varlen.csv fragless") != NULL);
    CHECK(strstr(r->out, "1.0057") != NULL); /* and the table is still there */
    /* Off a terminal, compare's stderr stays empty. */
    r = run("\"$CLI\" compare " EXAMPLE " --policies fragless");
    CHECK(r->code == 0 && r->err[0] == 0);
}

/* ---- state snapshots ---- */

/* The text between `start` and the next `end` (caller frees; "" when absent). */
static char *between(const char *html, const char *start, const char *end)
{
    const char *a = strstr(html, start), *b = a ? strstr(a, end) : NULL;
    size_t n = b ? (size_t)(b - a) : 0;
    char *part = malloc(n + 1);
    memcpy(part, a ? a : "", n);
    part[n] = 0;
    return part;
}

static void test_state_report(void)
{
    static const char *const policies[2] = {"fragless", "cca"};
    static const uint64_t sizes[] = {3 << 20, 5 << 20, 4096, 700 << 10, 12 << 20, 512, 2 << 20, 100000, 9 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    char paths[2][64], html_path[64];
    fl_stats stats[2];
    for (int i = 0; i < 2; i++) {
        snprintf(paths[i], sizeof paths[i], "/tmp/fl_report_state_%s.%d.json", policies[i], (int)getpid());
        fl_device *d = fl_test_sim(256 << 20, 0);
        fl_allocator *a = fl_test_allocator(policies[i], d);
        uint64_t x[N];
        for (int k = 0; k < N; k++)
            CHECK_OK(fl_alloc(a, sizes[k], 0, &x[k]));
        for (int k = 0; k < N; k += 2)
            CHECK_OK(fl_free(a, x[k]));
        fl_get_stats(a, &stats[i]);
        CHECK_OK(fl_allocator_snapshot(a, paths[i]));
        fl_allocator_destroy(a);
        fl_device_destroy(d);
    }
    snprintf(html_path, sizeof html_path, "/tmp/fl_report_state.%d.html", (int)getpid());
    /* A state, a trace and a state in one page. */
    fl_run_result *r = run("\"$CLI\" report %s " EXAMPLE " %s -o %s --policies fragless,cca", paths[0], paths[1],
                           html_path);
    CHECK_EQ_U64(r->code, 0);
    if (r->code)
        fprintf(stderr, "%s", r->err);
    char *html = slurp(html_path);
    unlink(html_path);
    CHECK_EQ_U64(count(html, "<section class=\"trace"), 3);
    CHECK_EQ_U64(count(html, "<section class=\"trace state\""), 2);
    CHECK(strstr(html, "id=\"compare-1\"") && strstr(html, "id=\"pagemap-1\"")); /* the trace's, as before */
    CHECK(!strstr(html, "<script") && !strstr(html, "http://") && !strstr(html, "https://"));
    CHECK_EQ_U64(count(html, "<svg"), count(html, "</svg>"));
    for (int i = 0; i < 2; i++) {
        char start[64];
        snprintf(start, sizeof start, "<section class=\"trace state\" id=\"t%d\"", i * 2);
        char *sec = between(html, start, "</section>");
        CHECK(sec[0] != 0);
        CHECK(strstr(sec, "id=\"pagemap-") != NULL);
        CHECK_EQ_U64(count(sec, "<figure class=\"map\""), 1);
        /* The cards hold the allocator's statistics. */
        const fl_stats *s = &stats[i];
        CHECK_EQ_U64(number_after(sec, "data-k=\"allocated_bytes.all.current\"><span>live</span><b data-v=\""),
                     s->allocated_bytes.current);
        CHECK_EQ_U64(number_after(sec, "data-k=\"reserved_bytes.all.current\"><span>reserved</span><b data-v=\""),
                     s->reserved_bytes.current);
        CHECK_EQ_U64(number_after(sec, "data-k=\"fragless.cached_bytes\"><span>cached</span><b data-v=\""),
                     s->cached_bytes);
        CHECK_EQ_U64(number_after(sec, "data-k=\"fragless.largest_free\"><span>largest free</span><b data-v=\""),
                     s->largest_free);
        CHECK_EQ_U64(number_after(sec, "data-k=\"num_ooms\"><span>OOMs</span><b data-v=\""), s->num_ooms);
        char frag[64];
        snprintf(frag, sizeof frag, "<b data-v=\"%.6f\">%.1f%%</b>", s->external_fragmentation,
                 100.0 * s->external_fragmentation);
        CHECK(strstr(sec, frag) != NULL);
        CHECK_EQ_U64(number_after(sec, "data-reserved=\""), s->reserved_bytes.current);
        /* The map: the squares per state are the file's pages (one square per page here). */
        fli_state st;
        CHECK_OK(fli_state_read(paths[i], &st));
        walk_count w = {.g = st.granularity};
        fli_state_visitor v = {&w, wc_region, wc_page, wc_block};
        fli_state_walk(&st, &v);
        flush_segment(&w);
        fli_state_free(&st);
        CHECK(w.pages[2] + w.pages[3] > 0 && w.pages[1] > 0); /* pinned and cached pages both */
        static const char *const keys[4] = {"data-unmapped=\"", "data-cached=\"", "data-pin1=\"", "data-pinn=\""};
        static const char *const cls[4] = {"class=\"u\"", "class=\"c\"", "class=\"p1\"", "class=\"pn\""};
        for (int k = 0; k < 4; k++) {
            CHECK_EQ_U64(number_after(sec, keys[k]), w.pages[k]);
            CHECK_EQ_U64(count(sec, cls[k]), w.pages[k]);
        }
        free(sec);
    }
    free(html);
    /* A broken state: the file, line, column and what was expected; no page written. */
    FILE *f = fopen(paths[0], "w");
    fputs("{\"format\":\"fragless-state\",\"version\":1,\n\"regions\":[{]}", f);
    fclose(f);
    r = run("\"$CLI\" report %s -o %s", paths[0], html_path);
    CHECK_EQ_U64(r->code, 2);
    CHECK(strstr(r->err, paths[0]) && strstr(r->err, ":2:13: expected a key (a string) in regions[0], found ']'"));
    CHECK(access(html_path, F_OK) != 0);
    f = fopen(paths[0], "w");
    fputs("{\"format\":\"fragless-state\",\"version\":7}", f);
    fclose(f);
    r = run("\"$CLI\" report %s -o %s", paths[0], html_path);
    CHECK(r->code == 2 && strstr(r->err, "version 7"));
    unlink(paths[0]);
    unlink(paths[1]);
}

int main(void)
{
    test_report_page();
    test_capacity_and_escaping();
    test_bad_input();
    test_progress_on_terminal();
    test_state_report();
    return fl_test_done("test_report");
}
