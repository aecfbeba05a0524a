/* `fragless report`: one self-contained HTML file (inline CSS and SVG, nothing fetched)
 * per set of traces or snapshots. Per trace or PyTorch snapshot: the comparison table,
 * live and reserved memory over time for each policy, what pins the pages at the peak of
 * live bytes under fragless and under cca, and the doctor's verdict and what-if table.
 * Per state snapshot (fl_allocator_snapshot's JSON): its statistics and its page map. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/report.h"
#include "util/file.h"
#include "replay/doctor.h"
#include "pytorch/snapshot.h"

/* Timeline windows: each keeps its maximum, so peaks survive; ~1 px each at 1280 px. */
#define TIMELINE_BUCKETS 640

/* ----------------------------------------------------------------------------------
 * Text
 * ---------------------------------------------------------------------------------- */

void report_esc(FILE *f, const char *s)
{
    for (; *s; s++)
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
}

/* ----------------------------------------------------------------------------------
 * Timeline chart
 * ---------------------------------------------------------------------------------- */

static const char *const policy_color[] = {"#1a7f37", "#cf5a00", "#8250df", "#bf3989", "#0969da", "#6e7781"};
#define N_COLORS (sizeof policy_color / sizeof policy_color[0])

static double nice_step(double range, int target)
{
    double raw = range / target, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
}

static void fmt_events(char *buf, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(buf, n, "%gM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%gk", v / 1e3);
    else
        snprintf(buf, n, "%g", v);
}

static void write_timeline(FILE *f, const char *idx, const fli_prepared *p, char names[][32], const fli_measure *ms, int np,
                           uint64_t capacity)
{
    enum { W = 1180, H = 300, L = 66, R = 14, T = 14, B = 36 };
    const double pw = W - L - R, ph = H - T - B;
    fprintf(f, "<h3 id=\"timeline-%s\">Memory over time</h3>\n", idx);
    if (!p->n_ops || !ms[0].unlimited.n_buckets) {
        fputs("<p>No events.</p>\n", f);
        return;
    }
    fputs("<div class=\"legend\"><span><i class=\"sw live\"></i>live (the program's blocks)</span>", f);
    for (int i = 0; i < np; i++)
        fprintf(f, "<span><i class=\"sw\" style=\"background:%s\"></i>reserved by %s</span>",
                policy_color[i % N_COLORS], names[i]);
    if (capacity)
        fputs("<span><i class=\"sw cap\"></i>capacity</span>", f);
    fputs("</div>\n", f);
    uint64_t ymax = capacity;
    for (int i = 0; i < np; i++)
        for (int b = 0; b < ms[i].unlimited.n_buckets; b++) {
            const fli_timeline_bucket *tb = &ms[i].unlimited.timeline[b];
            if (tb->max_reserved > ymax)
                ymax = tb->max_reserved;
            if (tb->max_live > ymax)
                ymax = tb->max_live;
        }
    double unit = ymax >= FL_GiB ? (double)FL_GiB : ymax >= FL_MiB ? (double)FL_MiB : (double)FL_KiB;
    const char *uname = ymax >= FL_GiB ? "GiB" : ymax >= FL_MiB ? "MiB" : "KiB";
    /* 8% of headroom above the highest line, for the peak marker's label */
    double top = (double)(ymax ? ymax : 1) * 1.08 / unit, step = nice_step(top, 5);
    top = ceil(top / step) * step;
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step));
    double xmax = (double)p->n_ops;
    fprintf(f, "<svg class=\"tl\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"memory over time\">\n", W, H);
    /* axes and grid */
    for (double v = 0; v <= top + step / 2; v += step) {
        double y = T + ph - v / top * ph;
        fprintf(f, "<line class=\"grid\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.*f %s</text>\n",
                L, W - R, y, y, L - 6, y + 4, dec, v, uname);
    }
    double xs = nice_step(xmax, 8);
    for (double v = 0; v <= xmax; v += xs) {
        char lab[32];
        double x = L + v / xmax * pw;
        fmt_events(lab, sizeof lab, v);
        fprintf(f, "<line class=\"tick\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                x, x, T + ph, T + ph + 5, x, T + ph + 18, lab);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">event</text>\n", L + pw / 2, H - 2);
    fprintf(f, "<line class=\"axis\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, W - R, T + ph, T + ph);
    /* live: the same for every policy (a property of the trace) */
    const fli_replay_result *r0 = &ms[0].unlimited;
    fprintf(f, "<polygon class=\"live\" points=\"%d,%.1f", L, T + ph);
    for (int b = 0; b < r0->n_buckets; b++) {
        const fli_timeline_bucket *tb = &r0->timeline[b];
        if (tb->end_op <= tb->first_op)
            continue;
        fprintf(f, " %.1f,%.1f", L + (double)(tb->first_op + tb->end_op) / 2 / xmax * pw,
                T + ph - (double)tb->max_live / unit / top * ph);
    }
    fprintf(f, " %.1f,%.1f\"><title>live bytes</title></polygon>\n", L + pw, T + ph);
    for (int i = 0; i < np; i++) {
        const fli_replay_result *r = &ms[i].unlimited;
        fprintf(f, "<polyline class=\"resv\" stroke=\"%s\" data-policy=\"%s\" points=\"", policy_color[i % N_COLORS],
                names[i]);
        for (int b = 0; b < r->n_buckets; b++) {
            const fli_timeline_bucket *tb = &r->timeline[b];
            if (tb->end_op <= tb->first_op)
                continue;
            fprintf(f, "%s%.1f,%.1f", b ? " " : "", L + (double)(tb->first_op + tb->end_op) / 2 / xmax * pw,
                    T + ph - (double)tb->max_reserved / unit / top * ph);
        }
        fprintf(f, "\"><title>reserved by %s</title></polyline>\n", names[i]);
    }
    if (capacity) {
        double y = T + ph - (double)capacity / unit / top * ph;
        fprintf(f, "<line class=\"cap\" x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, W - R, y, y);
    }
    double px = L + (p->peak_live_op + 0.5) / xmax * pw;
    fprintf(f, "<line class=\"peak\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%.1f\"/>"
               "<text x=\"%.1f\" y=\"%d\" text-anchor=\"%s\">peak live: page maps below</text>\n",
            px, px, T, T + ph, px + (px > W - 200 ? -4 : 4), T + 10, px > W - 200 ? "end" : "start");
    fputs("</svg>\n", f);
}

/* ----------------------------------------------------------------------------------
 * Tables
 * ---------------------------------------------------------------------------------- */

static void write_compare(FILE *f, const char *idx, const fli_prepared *p, char names[][32], const fli_measure *ms, int np,
                          uint64_t capacity, uint64_t g)
{
    char a[32], b[32];
    fprintf(f, "<h3 id=\"compare-%s\">How much memory each allocator needs</h3>\n", idx);
    int best = -1;
    for (int i = 0; i < np; i++)
        if (ms[i].min_capacity && (best < 0 || ms[i].min_capacity < ms[best].min_capacity))
            best = i;
    fputs("<table class=\"cmp\"><thead><tr><th>policy</th><th>min capacity</th><th>min capacity / peak live</th>"
          "<th>peak reserved</th><th>device calls</th><th>device time</th><th>calls in steady state</th>",
          f);
    if (capacity)
        fprintf(f, "<th>OOMs at %s</th>", sz(capacity, a, sizeof a));
    fputs("</tr></thead><tbody>\n", f);
    for (int i = 0; i < np; i++) {
        const fli_measure *m = &ms[i];
        const fli_replay_result *u = &m->unlimited;
        fprintf(f, "<tr data-policy=\"%s\"%s><td><i class=\"sw\" style=\"background:%s\"></i>%s</td>", names[i],
                i == best ? " class=\"best\"" : "", policy_color[i % N_COLORS], names[i]);
        fprintf(f, "<td data-k=\"min_capacity\" data-v=\"%llu\">%s</td>", (unsigned long long)m->min_capacity,
                sz(m->min_capacity, a, sizeof a));
        fprintf(f, "<td data-k=\"min_capacity_ratio\">%.4f</td>", ratio(m->min_capacity, p->peak_live));
        fprintf(f, "<td data-k=\"peak_reserved\" data-v=\"%llu\">%s</td>", (unsigned long long)u->peak_reserved,
                sz(u->peak_reserved, b, sizeof b));
        fprintf(f, "<td data-k=\"device_calls\">%llu</td>", (unsigned long long)fl_device_total_calls(&u->dev));
        fprintf(f, "<td>%.1f ms</td>", u->dev.time_us / 1e3);
        fprintf(f, "<td data-k=\"late_device_calls\">%llu</td>", (unsigned long long)u->late_calls);
        if (capacity)
            fprintf(f, "<td data-k=\"ooms\">%llu</td>", (unsigned long long)m->at_capacity.ooms);
        fputs("</tr>\n", f);
    }
    fputs("</tbody></table>\n", f);
    fprintf(f, "<p class=\"note\">Peak live %s (each request rounded up to 512 B). Min capacity: the smallest "
               "device (whole %s pages) that replays the trace with no out-of-memory. Device calls without a "
               "limit; the steady state is the events after both the midpoint and the peak of live bytes "
               "(from event %zu).</p>\n",
            sz(p->peak_live, a, sizeof a), sz(g, b, sizeof b), ms[0].steady_from_op);
}

static void write_breakdown(FILE *f, const fli_prepared *p, const fli_breakdown *b, const char *when)
{
    char a[32], c[32], e[32];
    uint64_t total = fli_breakdown_sum(b);
    fprintf(f, "<p><b>Where the reserved memory went %s</b>: %s reserved = %s live + %s more.</p>", when,
            sz(b->reserved, a, sizeof a), sz(b->live, c, sizeof c), sz(total, e, sizeof e));
    fprintf(f, "<table class=\"parts\" data-event=\"%zu\" data-reserved=\"%llu\" data-live=\"%llu\"><tbody>", b->op,
            (unsigned long long)b->reserved, (unsigned long long)b->live);
    for (int i = 0; i < CLI_N_PARTS; i++) {
        uint64_t v = cli_part_value(b, i);
        fprintf(f, "<tr><td>%s</td><td data-k=\"%s\" data-v=\"%llu\">%s</td><td>%.1f%%</td></tr>", cli_parts[i].label,
                cli_parts[i].key, (unsigned long long)v, sz(v, a, sizeof a),
                total ? 100.0 * (double)v / (double)total : 0.0);
    }
    fputs("</tbody></table>\n", f);
    if (p->slot_site && b->n_sites && b->interleaved) {
        fputs("<p class=\"mut\">Who pins it: live blocks in segments with free space, by allocation site (free bytes "
              "they keep from being given back, a segment's shared among its blocks by size).</p>"
              "<table class=\"sites\"><tbody>",
              f);
        for (int i = 0; i < b->n_sites; i++) {
            const fli_site_share *s = &b->sites[i];
            fputs("<tr><td><code>", f);
            report_esc(f, cli_site_name(p, s->site)); /* the snapshot's text */
            fprintf(f, "</code></td><td data-v=\"%llu\">%s stranded</td><td>%llu block%s, %s live</td></tr>",
                    (unsigned long long)s->stranded, sz(s->stranded, a, sizeof a), (unsigned long long)s->blocks,
                    s->blocks == 1 ? "" : "s", sz(s->live, c, sizeof c));
        }
        fputs("</tbody></table>\n", f);
    }
}

static void write_doctor(FILE *f, const char *idx, const fli_prepared *p, const fli_replay_opts *ran, const fli_diagnosis *d,
                         const cli_section *sec)
{
    char a[32], b[32], c[32], e[32];
    fprintf(f, "<h3 id=\"doctor-%s\">Doctor: is it fragmentation?</h3>\n", idx);
    const char *cls = d->verdict == FL_VERDICT_FRAGMENTATION ? "frag" : d->verdict == FL_VERDICT_EXHAUSTION ? "exh" : "none";
    fprintf(f, "<div class=\"verdict %s\" data-verdict=\"%s\" data-capacity=\"%llu\" data-job-fits=\"%d\">", cls,
            fli_verdict_name(d->verdict), (unsigned long long)d->capacity, d->job_fits);
    if (sec->capacity_from_oom)
        fprintf(f, "<p>Capacity from the snapshot's oom event: %s reserved + %s free on the device = <b>%s</b>.</p>",
                sz(sec->info->oom_reserved, a, sizeof a), sz(sec->info->oom_device_free, b, sizeof b),
                sz(d->capacity, c, sizeof c));
    if (d->has_oom) {
        const fl_oom_report *s = &d->oom;
        if (d->verdict == FL_VERDICT_FRAGMENTATION)
            fprintf(f, "<p><b>Verdict: fragmentation.</b> Live %s + asked %s = %s fits in the capacity of %s: the "
                       "memory exists but is cut into pieces too small for the request.</p>",
                    sz(s->live, a, sizeof a), sz(s->request, b, sizeof b), sz(s->live + s->request, c, sizeof c),
                    sz(s->limit, e, sizeof e));
        else
            fprintf(f, "<p><b>Verdict: exhaustion.</b> Live %s + asked %s = %s is more than the capacity of %s: no "
                       "allocator can fit this; the job needs more memory or less live data.</p>",
                    sz(s->live, a, sizeof a), sz(s->request, b, sizeof b), sz(s->live + s->request, c, sizeof c),
                    sz(s->limit, e, sizeof e));
        if (!d->job_fits && d->verdict == FL_VERDICT_FRAGMENTATION)
            fprintf(f, "<p><b>But the job does not fit:</b> its live bytes later reach %s (event %zu), more than the "
                       "capacity. Fixing fragmentation only moves the OOM: this job needs at least %s.</p>",
                    sz(d->job_needs, a, sizeof a), d->job_peak_op, sz(d->lower_bound_job, b, sizeof b));
        fprintf(f, "<p>Out of memory at event %zu%s, replayed under %s at a capacity of %s: asked %s; free on the "
                   "device %s; ",
                d->oom_op, d->oom_was_recorded ? " (the failure the trace recorded)" : "", ran->cfg.policy,
                sz(d->capacity, a, sizeof a), sz(s->request, b, sizeof b), sz(d->device_free, c, sizeof c));
        fprintf(f, "reserved but unallocated %s of %s held; largest free block %s; external fragmentation %.1f%%. ",
                sz(s->free_in_reserved, a, sizeof a), sz(s->reserved, b, sizeof b),
                sz(s->largest_free, c, sizeof c), 100.0 * d->ext_frag);
        fprintf(f, "Lower bound: no allocator that does not move data needs less than %s now, nor %s for the whole "
                   "job.</p>",
                sz(d->lower_bound_now, a, sizeof a), sz(d->lower_bound_job, b, sizeof b));
        fprintf(f, "<p>torch.cuda.empty_cache() just before the failed request, replayed: %s (it gave back %s).</p>",
                d->empty_cache_helps ? "the request then <b>succeeds</b>"
                                     : "the request <b>fails again</b>: it does not help",
                sz(d->empty_cache_returned, a, sizeof a));
    } else if (d->capacity) {
        fprintf(f, "<p><b>No out-of-memory</b> at a capacity of %s under %s: the job fits.</p>",
                sz(d->capacity, a, sizeof a), ran->cfg.policy);
    } else {
        fputs("<p><b>No capacity given</b>, so no out-of-memory to judge: run <code>fragless report ... --capacity "
              "SIZE</code> with your GPU's memory. The table shows the capacity each setting needs.</p>",
              f);
    }
    if (d->recorded_failures)
        fprintf(f, "<p>The trace records %llu failed allocation%s; the first asked %s at event %zu.%s</p>",
                (unsigned long long)d->recorded_failures, d->recorded_failures == 1 ? "" : "s",
                sz(d->first_recorded_size, a, sizeof a), d->first_recorded_op,
                d->recorded_served ? " The replay served it: the emulation's state differs there." : "");
    fprintf(f, "<p class=\"mut\">At the peak of live bytes (event %zu): %s persistent (living over half the trace: "
               "weights, optimizer state) + %s transient (activations, temporaries).</p></div>\n",
            d->peak_op, sz(d->persistent_at_peak, a, sizeof a), sz(d->transient_at_peak, b, sizeof b));
    if (d->has_oom && d->at_oom.taken)
        write_breakdown(f, p, &d->at_oom, "at the out-of-memory");
    if (d->at_peak.taken) {
        char when[96];
        snprintf(when, sizeof when, "at the peak of reserved memory (event %zu%s)", d->at_peak.op,
                 d->capacity ? ", at the capacity" : "");
        write_breakdown(f, p, &d->at_peak, when);
    }

    fprintf(f, "<table class=\"whatif\"><thead><tr><th>setting (what if%s)</th><th>needs</th><th>&times; peak "
               "live</th><th>vs what you ran</th>%s<th>to try</th></tr></thead><tbody>\n",
            d->whatif_truncated ? ", the failed request served" : "",
            d->capacity ? "<th>fits the capacity</th>" : "");
    uint64_t base = d->rows[0].min_capacity;
    for (int i = 0; i < d->n_rows; i++) {
        const fli_whatif *w = &d->rows[i];
        char delta[64] = "&ndash;";
        if (i > 0)
            cli_whatif_delta(delta, sizeof delta, base, w->min_capacity);
        fprintf(f, "<tr%s data-fits=\"%d\" data-reused=\"%d\"><td>",
                i == d->fragless_row ? " class=\"best\"" : i == d->best_pytorch ? " class=\"good\"" : "", w->fits,
                w->reused);
        report_esc(f, w->label);
        fprintf(f, "</td><td data-v=\"%llu\">%s</td><td>%.4f</td><td>%s</td>", (unsigned long long)w->min_capacity,
                sz(w->min_capacity, b, sizeof b), ratio(w->min_capacity, d->job_needs), delta);
        if (d->capacity)
            fprintf(f, "<td>%s</td>", w->fits ? "yes" : "no");
        fputs("<td><code>", f);
        report_esc(f, w->env);
        fputs("</code></td></tr>\n", f);
    }
    fputs("</tbody></table>\n", f);
    if (d->capacity && !d->any_fits)
        fprintf(f, "<p class=\"note\">No setting fits in %s: the job needs at least %s.</p>\n",
                sz(d->capacity, a, sizeof a), sz(d->lower_bound_job, b, sizeof b));
}

static void write_cards(FILE *f, const fli_prepared *p, char names[][32], const fli_measure *ms, int np)
{
    char a[32];
    fprintf(f, "<div class=\"cards\"><div class=\"card\"><span>peak live</span><b data-v=\"%llu\">%s</b>"
               "<span>%zu events</span></div>",
            (unsigned long long)p->peak_live, sz(p->peak_live, a, sizeof a), p->n_ops);
    for (int i = 0; i < np && i < 5; i++)
        fprintf(f, "<div class=\"card\" style=\"border-top-color:%s\"><span>%s needs</span><b>%s</b>"
                   "<span>%.4f &times; peak live</span></div>",
                policy_color[i % N_COLORS], names[i], sz(ms[i].min_capacity, a, sizeof a),
                ratio(ms[i].min_capacity, p->peak_live));
    fputs("</div>\n", f);
}

static const char css[] =
    ":root{--fg:#1f2328;--mut:#59636e;--bd:#d1d9e0;--bg:#f6f8fa}"
    "*{box-sizing:border-box}"
    "body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;"
    "color:var(--fg);background:#fff}"
    "header{padding:12px 28px;border-bottom:1px solid var(--bd);background:var(--bg)}"
    "header h1{margin:0;font-size:19px;font-weight:600}header p{margin:2px 0 0;color:var(--mut)}"
    "nav a{margin-right:14px}"
    "main{max-width:1240px;margin:0 auto;padding:4px 24px 40px}"
    "section.trace{border-bottom:1px solid var(--bd);padding-bottom:18px}"
    "h2{font-size:18px;margin:18px 0 2px;word-break:break-all}h3{font-size:15px;margin:22px 0 6px}"
    ".mut,.note{color:var(--mut)}.note{font-size:12.5px;margin:6px 0}"
    ".cards{display:flex;gap:10px;margin:12px 0 4px}"
    ".card{flex:1;border:1px solid var(--bd);border-top:3px solid #8c959f;border-radius:6px;padding:6px 12px}"
    ".card span{display:block;color:var(--mut);font-size:12px}.card b{display:block;font-size:19px;font-weight:600}"
    "table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0}"
    "th,td{padding:4px 12px;border-bottom:1px solid var(--bd);text-align:right;white-space:nowrap}"
    "th{font-weight:600;background:var(--bg);font-size:12.5px}"
    "th:first-child,td:first-child{text-align:left}"
    "table.whatif td:last-child,table.whatif th:last-child{text-align:left}"
    "tr.best td{font-weight:600;background:#eef9f0}tr.good td{background:#fff8e6}"
    "code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}"
    ".legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:12.5px;color:var(--mut);margin:2px 0 4px}"
    ".sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}"
    ".sw.live{background:#d0d7de}.sw.cap{background:#cf222e}"
    "svg.tl{width:100%;height:auto;display:block}"
    "svg text{font:11px system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;fill:#59636e}"
    ".grid{stroke:#eaeef2}.tick,.axis{stroke:#8c959f}"
    "polygon.live{fill:#d0d7de;stroke:#afb8c1;stroke-width:1}"
    "polyline.resv{fill:none;stroke-width:1.6;stroke-linejoin:round}"
    "line.cap{stroke:#cf222e;stroke-dasharray:6 4}line.peak{stroke:#24292f;stroke-dasharray:3 3}"
    ".maps{display:flex;gap:28px;align-items:flex-start}"
    "figure.map{flex:1;margin:0;min-width:0}figcaption{font-size:14px;margin-bottom:2px}"
    "p.sum{font-size:12.5px;margin:2px 0 6px;min-height:3.2em}"
    "rect.u,.sw.u{fill:#eaeef2;stroke:#afb8c1;background:#eaeef2;box-shadow:inset 0 0 0 1px #afb8c1}"
    "rect.c,.sw.c{fill:#f2c36b;background:#f2c36b}"
    "rect.p1,.sw.p1{fill:#54aeff;background:#54aeff}"
    "rect.pn,.sw.pn{fill:#0a3069;background:#0a3069}"
    "rect:hover{stroke:#cf222e;stroke-width:2}"
    ".verdict{border-left:4px solid #8c959f;background:var(--bg);padding:4px 14px;margin:6px 0 10px;max-width:1000px}"
    ".verdict p{margin:6px 0}.verdict.frag{border-color:#bf8700}.verdict.exh{border-color:#cf222e}";

static void write_head(FILE *f, const cli_opts *o)
{
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>fragless report: ",
          f);
    for (int t = 0; t < o->n_traces; t++) {
        const char *base = strrchr(o->traces[t], '/');
        if (t == 3) {
            fprintf(f, " and %d more", o->n_traces - 3);
            break;
        }
        fputs(t ? ", " : "", f);
        report_esc(f, base ? base + 1 : o->traces[t]);
    }
    fprintf(f, "</title>\n<style>%s</style></head><body>\n<header><h1>fragless report</h1>"
               "<p>How much GPU memory each allocation trace needs under each allocator, on a simulated "
               "device; and what holds the memory at the peak (or in a state snapshot).</p>",
            css);
    if (o->n_traces > 1) {
        fputs("<nav>", f);
        if (o->job) /* the job's section closes the page: the link to it opens the list */
            fputs("<a href=\"#job\">the job: ranks side by side</a>", f);
        for (int t = 0; t < o->n_traces; t++) {
            const char *base = strrchr(o->traces[t], '/');
            fprintf(f, "<a href=\"#t%d\">", t);
            report_esc(f, base ? base + 1 : o->traces[t]);
            fputs("</a>", f);
        }
        fputs("</nav>", f);
    }
    fputs("</header>\n<main>\n", f);
}

/* ----------------------------------------------------------------------------------
 * The command
 * ---------------------------------------------------------------------------------- */

/* The min_capacity of ro's policy: from the comparison when it has the policy, else
 * searched now. */
static fl_status policy_min_capacity(const fli_prepared *p, const fli_replay_opts *ro, char names[][32],
                                     const fli_measure *ms, int np, uint64_t *cap)
{
    for (int i = 0; i < np; i++)
        if (!strcmp(names[i], ro->cfg.policy)) {
            *cap = ms[i].min_capacity;
            return FL_OK;
        }
    fli_replay_result r;
    fl_status s = fli_replay(p, ro, &r);
    if (s == FL_OK)
        s = fli_min_capacity(p, ro, &r, cap);
    fli_replay_result_free(&r);
    return s;
}

/* Everything about one trace (one device of a snapshot), written as one section; the
 * exit code on failure. */
/* The input being written (its index in o->traces): a job's rank figures are kept by it. */
static int report_rank;

static int report_one(FILE *f, const cli_opts *o, const char *path, const char *sid, fli_loaded *in, char names[][32],
                      int np, cli_progress *bar)
{
    char what[64];
    fli_prepared *p = in->p;
    const fli_snapshot_info *info = &in->info;
    int rc = CLI_EXIT_ERROR;
    uint64_t capacity, g = o->opts.sim.granularity;
    fli_measure ms[CLI_MAX_POLICIES];
    fli_known_min known[CLI_MAX_POLICIES];
    int measured = 0;
    page_map maps[2] = {{.policy = "fragless"}, {.policy = "cca"}};
    fli_diagnosis d;
    fl_status s;
    if ((rc = cli_capacity_for(o, p, &capacity)) != 0) {
        cli_progress_clear(bar);
        goto out;
    }
    rc = CLI_EXIT_ERROR;
    for (; measured < np; measured++) {
        fli_replay_opts ro = o->opts;
        snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%.31s", names[measured]);
        ro.timeline_buckets = p->n_ops < TIMELINE_BUCKETS ? (int)p->n_ops : TIMELINE_BUCKETS;
        snprintf(what, sizeof what, "%.30s %.31s", p->name, names[measured]);
        cli_progress_unit(bar, what);
        cli_progress_attach(bar, &ro);
        s = fli_measure_run(p, &ro, capacity, 1, &ms[measured]);
        cli_progress_unit_done(bar);
        if (s != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, policy %s: %s\n", p->name, names[measured], fl_last_error());
            goto out;
        }
        known[measured] = (fli_known_min){ro.cfg, g, ms[measured].min_capacity};
        if (info->n_devices <= 1)
            cli_job_record(o->job, report_rank, measured, names[measured], p->peak_live, ms[measured].min_capacity);
    }
    snprintf(what, sizeof what, "%.32s page maps", p->name);
    cli_progress_unit(bar, what);
    for (int i = 0; i < 2 && p->n_ops; i++) {
        fli_replay_opts ro = o->opts;
        snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%s", maps[i].policy);
        /* On the smallest device the policy runs in: without a limit, policies keep
         * memory they would give up under pressure, which is not what a GPU needs. */
        if ((s = policy_min_capacity(p, &ro, names, ms, np, &maps[i].capacity)) != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, min_capacity of %s: %s\n", p->name, maps[i].policy, fl_last_error());
            goto out;
        }
        ro.sim.capacity = maps[i].capacity;
        ro.inspect_at_op = p->peak_live_op;
        ro.inspect = report_map_inspect;
        ro.inspect_user = &maps[i];
        fli_replay_result r;
        if ((s = fli_replay(p, &ro, &r)) != FL_OK) {
            cli_progress_clear(bar);
            fprintf(stderr, "fragless: %s, page map of %s: %s\n", p->name, maps[i].policy, fl_last_error());
            goto out;
        }
        fli_replay_result_free(&r);
    }
    cli_progress_unit_done(bar);
    /* The doctor, as `fragless doctor` runs it (what a snapshot says it ran, else cca),
     * reusing the comparison's min_capacity searches. */
    cli_opts dopt = *o;
    dopt.policies = "cca";
    fli_replay_opts ran;
    cli_section sec = {.known = known, .n_known = measured};
    snprintf(what, sizeof what, "%.32s doctor", p->name);
    cli_progress_unit(bar, what);
    rc = cli_doctor_section(&dopt, in, &ran, &sec, &d, bar);
    cli_progress_unit_done(bar);
    if (rc) {
        cli_progress_clear(bar);
        goto out;
    }
    rc = CLI_EXIT_ERROR;

    char a[32];
    fprintf(f, "<section class=\"trace\" id=\"t%s\">\n<h2>", sid);
    report_esc(f, p->name);
    fprintf(f, "</h2>\n<p class=\"mut\">");
    report_esc(f, path);
    fprintf(f, ": %s, %zu events (%llu allocations, %llu frees), %llu stream%s, peak live %s at event %zu",
            info->n_devices ? "PyTorch snapshot" : "trace", p->n_ops, (unsigned long long)p->n_allocs,
            (unsigned long long)p->n_frees, (unsigned long long)p->n_streams, p->n_streams == 1 ? "" : "s",
            sz(p->peak_live, a, sizeof a), p->peak_live_op);
    if (info->n_devices > 1)
        fprintf(f, "; device %d of %d", info->device, info->n_devices);
    if (capacity)
        fprintf(f, "; capacity %s", sz(capacity, a, sizeof a));
    else if (d.capacity)
        fprintf(f, "; capacity %s (the snapshot's oom event)", sz(d.capacity, a, sizeof a));
    fputs(".</p>\n", f);
    if (sec.caveat[0]) {
        fputs("<p class=\"caveat\">", f);
        report_esc(f, sec.caveat);
        fputs(".</p>\n", f);
    }
    write_cards(f, p, names, ms, np);
    write_compare(f, sid, p, names, ms, np, capacity, g);
    write_timeline(f, sid, p, names, ms, np, capacity ? capacity : d.capacity);
    char heading[160];
    snprintf(heading, sizeof heading,
             "Pages at the peak of live bytes (event %zu), each policy on the smallest device it runs in",
             p->peak_live_op);
    report_write_maps(f, sid, heading, p->peak_live, maps, 2, g);
    write_doctor(f, sid, p, &ran, &d, &sec);
    fputs("</section>\n", f);
    rc = CLI_EXIT_OK;
out:
    for (int i = 0; i < measured; i++)
        fli_measure_free(&ms[i]);
    report_map_free(&maps[0]);
    report_map_free(&maps[1]);
    return rc;
}

/* Every trace of one input (each device of a snapshot); the exit code on failure. */
static int report_input(FILE *f, const cli_opts *o, int idx, char names[][32], int np, cli_progress *bar)
{
    char what[64], sid[32];
    const char *path = o->traces[idx], *base = strrchr(path, '/');
    snprintf(what, sizeof what, "%.40s: reading", base ? base + 1 : path);
    cli_progress_unit(bar, what);
    fli_loaded *v;
    int n;
    fl_status s = fli_load_inputs(path, o->device, stderr, &v, &n);
    if (s != FL_OK) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
    }
    int rc = 0;
    report_rank = idx;
    if (n && v[0].info.n_devices > 1)
        fprintf(f, "<div id=\"t%d\"></div>\n", idx); /* the navigation's anchor */
    for (int i = 0; i < n && !rc; i++) {
        /* Sections are t<input>, and t<input>d<device> for a snapshot's devices. */
        if (v[i].info.n_devices > 1)
            snprintf(sid, sizeof sid, "%dd%d", idx, v[i].info.device);
        else
            snprintf(sid, sizeof sid, "%d", idx);
        rc = report_one(f, o, path, sid, &v[i], names, np, bar);
    }
    fli_loaded_free(v, n);
    return rc;
}

/* ----------------------------------------------------------------------------------
 * State snapshots
 * ---------------------------------------------------------------------------------- */

/* Units beyond which a state's map is refused: drawing walks every unit (64 Mi units is
 * 128 TiB of 2 MiB pages; a snapshot of a real GPU is far below). */
#define STATE_MAX_UNITS (UINT64_C(1) << 26)

/* One card: the figure when the file has its key (exact value in data-v), else a dash. */
static void state_card(FILE *f, const fli_state *st, const char *key, const char *label, const char *value,
                       const char *data_v, const char *sub)
{
    fprintf(f, "<div class=\"card\" data-k=\"%s\"><span>%s</span>", key, label);
    if (fli_state_has_stat(st, key))
        fprintf(f, "<b data-v=\"%s\">%s</b><span>%s</span></div>", data_v, value, sub);
    else
        fputs("<b>&ndash;</b><span>not in the snapshot</span></div>", f);
}

static void write_state_cards(FILE *f, const fli_state *st)
{
    const fl_stats *s = &st->stats;
    char v[32], d[32], sub[96], a[32], b[32];
    fputs("<div class=\"cards\">", f);
    snprintf(d, sizeof d, "%llu", (unsigned long long)s->allocated_bytes.current);
    if (fli_state_has_stat(st, "requested_bytes.all.current"))
        snprintf(sub, sizeof sub, "requested %s; peak %s", sz(s->requested_bytes.current, a, sizeof a),
                 sz(s->allocated_bytes.peak, b, sizeof b));
    else
        snprintf(sub, sizeof sub, "peak %s", sz(s->allocated_bytes.peak, b, sizeof b));
    state_card(f, st, "allocated_bytes.all.current", "live", sz(s->allocated_bytes.current, v, sizeof v), d, sub);
    snprintf(d, sizeof d, "%llu", (unsigned long long)s->reserved_bytes.current);
    snprintf(sub, sizeof sub, "peak %s", sz(s->reserved_bytes.peak, a, sizeof a));
    state_card(f, st, "reserved_bytes.all.current", "reserved", sz(s->reserved_bytes.current, v, sizeof v), d, sub);
    snprintf(d, sizeof d, "%llu", (unsigned long long)s->cached_bytes);
    state_card(f, st, "fragless.cached_bytes", "cached", sz(s->cached_bytes, v, sizeof v), d,
               "empty_cache gives it back");
    snprintf(d, sizeof d, "%llu", (unsigned long long)s->largest_free);
    state_card(f, st, "fragless.largest_free", "largest free", sz(s->largest_free, v, sizeof v), d,
               "servable without new memory");
    snprintf(d, sizeof d, "%.6f", s->external_fragmentation);
    snprintf(v, sizeof v, "%.1f%%", 100.0 * s->external_fragmentation);
    state_card(f, st, "fragless.external_fragmentation", "external fragmentation", v, d,
               "1 &minus; largest free / free");
    snprintf(d, sizeof d, "%llu", (unsigned long long)s->num_ooms);
    state_card(f, st, "num_ooms", "OOMs", d, d, "allocations refused");
    fputs("</div>\n", f);
}

/* A state snapshot as one section: what the file says and its page map; the exit code on
 * failure. Its work counts as the units of a trace (np + 2). */
static int report_state(FILE *f, const cli_opts *o, int idx, int np, cli_progress *bar)
{
    char what[64], a[32], b[32];
    const char *path = o->traces[idx], *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(what, sizeof what, "%.40s: reading", base);
    cli_progress_unit(bar, what);
    fli_state st;
    fl_status s = fli_state_read(path, &st);
    if (s != FL_OK) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
    }
    int rc = CLI_EXIT_INPUT;
    page_map m = {0};
    report_map_from_state(&m, &st);
    uint64_t g = st.granularity, units = report_map_units(&m, g), live_blocks = 0;
    if (m.nomem) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s: host memory ran out collecting the pages\n", path);
        rc = CLI_EXIT_ERROR;
        goto out;
    }
    if (units > STATE_MAX_UNITS) {
        cli_progress_clear(bar);
        fprintf(stderr, "fragless: %s: its regions span %llu pages of %s, more than a report draws (%llu)\n", path,
                (unsigned long long)units, sz(g, a, sizeof a), (unsigned long long)STATE_MAX_UNITS);
        goto out;
    }
    for (size_t i = 0; i < st.n_blocks; i++)
        live_blocks += st.blocks[i].live;
    fprintf(f, "<section class=\"trace state\" id=\"t%d\">\n<h2>", idx);
    report_esc(f, base);
    fputs("</h2>\n<p class=\"mut\">", f);
    report_esc(f, path);
    fputs(": state snapshot of the <b>", f);
    report_esc(f, st.policy);
    fprintf(f, "</b> allocator: %zu region%s, %zu page%s, %zu block%s (%llu live); pages of %s", st.n_regions,
            st.n_regions == 1 ? "" : "s", st.n_pages, st.n_pages == 1 ? "" : "s", st.n_blocks,
            st.n_blocks == 1 ? "" : "s", (unsigned long long)live_blocks, sz(g, a, sizeof a));
    if (st.capacity)
        fprintf(f, "; device capacity %s", sz(st.capacity, b, sizeof b));
    fputs(".</p>\n", f);
    write_state_cards(f, &st);
    if (!st.has_stats)
        fputs("<p class=\"note\">The snapshot was written without statistics: reserved and live bytes below come "
              "from its pages and blocks.</p>\n",
              f);
    char sid[16];
    snprintf(sid, sizeof sid, "%d", idx);
    report_write_maps(f, sid, "Pages when the snapshot was taken", m.allocated, &m, 1, g);
    fputs("</section>\n", f);
    rc = CLI_EXIT_OK;
out:
    for (int i = 0; i < np + 2; i++)
        cli_progress_unit_done(bar);
    report_map_free(&m);
    fli_state_free(&st);
    return rc;
}

int cli_report(const cli_opts *o)
{
    char names[CLI_MAX_POLICIES][32];
    int np, rc = cli_split_policies(o->policies, names, &np);
    if (rc)
        return rc;
    /* Written beside the target and renamed at the end: a failed run leaves no half page,
     * and a symlink planted at either name (the target may be in /tmp) is never followed
     * (fli_create_file_safely). */
    fli_new_file nf;
    if (fli_create_file_safely(o->output, FL_NEW_FILE_AT_CLOSE, &nf) != FL_OK) {
        fprintf(stderr, "fragless: -o: %s\n", fl_last_error());
        return CLI_EXIT_ERROR;
    }
    FILE *f = nf.f;
    cli_progress bar;
    cli_progress_begin(&bar, (double)o->n_traces * (np + 2));
    write_head(f, o);
    for (int t = 0; t < o->n_traces && !rc; t++) {
        fli_input_kind kind;
        fl_status s = fli_input_detect(o->traces[t], &kind);
        if (s != FL_OK) {
            cli_progress_clear(&bar);
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            rc = s == FL_ERR_PARSE || s == FL_ERR_IO ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
            break;
        }
        rc = kind == FL_INPUT_STATE ? report_state(f, o, t, np, &bar) : report_input(f, o, t, names, np, &bar);
    }
    cli_progress_clear(&bar);
    if (!rc && o->job) {
        o->job->metric = "min_capacity";
        cli_job_write_html(f, o->job);
    }
    fputs("</main></body></html>\n", f);
    if (fli_new_file_close(&nf, !rc) != FL_OK) {
        fprintf(stderr, "fragless: -o: %s\n", fl_last_error());
        rc = CLI_EXIT_ERROR;
    }
    if (!rc)
        printf("fragless: wrote %s\n", o->output);
    return rc;
}
