/* The replay and compare commands: load traces, run the measurements, print them as a
 * table, CSV or JSON. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/progress.h"


static void load_error(void)
{
    fprintf(stderr, "fragless: %s\n", fl_last_error());
}

static int status_exit(fl_status s)
{
    return (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
}

/* Splits the policy list and checks every name. */
int cli_split_policies(const char *list, char names[][32], int *n)
{
    *n = 0;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len >= 32 || *n == CLI_MAX_POLICIES) {
            fprintf(stderr, "fragless: --policies '%s': expected names separated by commas\n", list);
            return CLI_EXIT_USAGE;
        }
        memcpy(names[*n], p, len);
        names[*n][len] = 0;
        if (!fli_policy_find(names[*n])) {
            fprintf(stderr, "fragless: unknown policy '%s' (fragless, cca, cca-expandable, nocache)\n", names[*n]);
            return CLI_EXIT_USAGE;
        }
        (*n)++;
        p = end ? end + 1 : p + len;
    }
    if (*n == 0) {
        fprintf(stderr, "fragless: no policy given\n");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_capacity_for(const cli_opts *o, const fli_prepared *p, uint64_t *capacity)
{
    *capacity = o->capacity;
    if (o->capacity_factor > 0) {
        /* Whole pages, rounded down: "1.05x" never grants more than asked. A product
         * past 2^64 cannot be converted (undefined behaviour), so it is refused. */
        uint64_t g = o->opts.sim.granularity;
        double bytes = (double)p->peak_live * o->capacity_factor;
        if (!(bytes < 18446744073709551616.0)) {
            char live[32];
            fprintf(stderr, "fragless: %s: --capacity %gx: %g x peak live (%s) is more than 2^64 bytes\n", p->name,
                    o->capacity_factor, o->capacity_factor, fl_format_size(p->peak_live, live, sizeof live));
            return CLI_EXIT_USAGE;
        }
        uint64_t c = (uint64_t)bytes / g * g;
        *capacity = c ? c : g;
    }
    return 0;
}

void cli_json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

void cli_json_num(double v, int decimals)
{
    if (isfinite(v))
        printf("%.*f", decimals, v);
    else
        fputs("null", stdout);
}

/* b / a as a ratio of sizes: NAN when a is 0 (no value; JSON null, "-" in a table). */
static double size_ratio(uint64_t b, uint64_t a) { return a ? (double)b / (double)a : NAN; }

static double ns_per_pair(const fli_replay_result *r)
{
    return r->pairs ? (double)r->host_ns / (double)r->pairs : 0;
}

static double gib(uint64_t b) { return (double)b / (double)FL_GiB; }

static void print_calls_json(FILE *f, const fl_device_counters *c)
{
    fprintf(f, "{");
    for (int i = 0; i < FL_CALL_COUNT; i++)
        fprintf(f, "%s\"%s\": %llu", i ? ", " : "", fl_call_name((fl_call)i), (unsigned long long)c->calls[i]);
    fprintf(f, "}");
}

static void print_row(const cli_opts *o, const fli_prepared *p, const char *policy, const fli_measure *m, int first)
{
    const fli_replay_result *u = &m->unlimited, *c = &m->at_capacity;
    /* Over peak live, which is 0 in a trace whose allocations all failed: no value then. */
    double mc_ratio = size_ratio(m->min_capacity, p->peak_live);
    double overhead = size_ratio(u->peak_reserved, p->peak_live);
    if (!strcmp(o->format, "json")) {
        printf("%s  {\"trace\": ", first ? "" : ",\n");
        cli_json_str(p->name);
        printf(", \"policy\": \"%s\", \"events\": %zu, \"peak_live\": %llu, \"peak_reserved\": %llu, \"overhead\": ",
               policy, p->n_ops, (unsigned long long)p->peak_live, (unsigned long long)u->peak_reserved);
        cli_json_num(overhead, 4);
        printf(", ");
        if (m->min_capacity) {
            printf("\"min_capacity\": %llu, \"min_capacity_ratio\": ", (unsigned long long)m->min_capacity);
            cli_json_num(mc_ratio, 4);
            printf(", ");
        }
        printf("\"device_calls\": %llu, \"device_ms\": %.3f, \"late_device_calls\": %llu, \"late_device_ms\": %.3f, "
               "\"calls_by_kind\": ",
               (unsigned long long)fl_device_total_calls(&u->dev), u->dev.time_us / 1e3, (unsigned long long)u->late_calls,
               u->late_us / 1e3);
        print_calls_json(stdout, &u->dev);
        printf(", \"unlimited_ooms\": %llu, \"failed\": %s, \"streams_floor\": %llu", (unsigned long long)u->ooms,
               u->ooms ? "true" : "false", (unsigned long long)m->streams_floor);
        if (m->capacity) {
            printf(", \"capacity\": %llu, \"ooms\": %llu, \"capacity_peak_reserved\": %llu, "
                   "\"capacity_device_calls\": %llu, \"capacity_device_ms\": %.3f, \"capacity_late_device_calls\": %llu, "
                   "\"capacity_late_device_ms\": %.3f, \"capacity_calls_by_kind\": ",
                   (unsigned long long)m->capacity, (unsigned long long)c->ooms, (unsigned long long)c->peak_reserved,
                   (unsigned long long)fl_device_total_calls(&c->dev), c->dev.time_us / 1e3,
                   (unsigned long long)c->late_calls, c->late_us / 1e3);
            print_calls_json(stdout, &c->dev);
        }
        printf("}");
        return;
    }
    if (!strcmp(o->format, "csv")) {
        if (first) {
            printf("trace,policy,events,peak_live,peak_reserved,overhead,min_capacity,min_capacity_ratio,"
                   "device_calls,device_ms,late_device_calls,late_device_ms");
            for (int i = 0; i < FL_CALL_COUNT; i++)
                printf(",calls_%s", fl_call_name((fl_call)i));
            printf(",capacity,ooms,capacity_device_calls,capacity_device_ms,capacity_late_device_calls,"
                   "capacity_late_device_ms,unlimited_ooms,streams_floor\n");
        }
        char ov[32] = "", mr[32] = "";
        if (isfinite(overhead))
            snprintf(ov, sizeof ov, "%.4f", overhead);
        if (isfinite(mc_ratio) || !m->min_capacity)
            snprintf(mr, sizeof mr, "%.4f", m->min_capacity ? mc_ratio : 0.0);
        printf("%s,%s,%zu,%llu,%llu,%s,%llu,%s,%llu,%.3f,%llu,%.3f", p->name, policy, p->n_ops,
               (unsigned long long)p->peak_live, (unsigned long long)u->peak_reserved, ov,
               (unsigned long long)m->min_capacity, mr, (unsigned long long)fl_device_total_calls(&u->dev),
               u->dev.time_us / 1e3, (unsigned long long)u->late_calls, u->late_us / 1e3);
        for (int i = 0; i < FL_CALL_COUNT; i++)
            printf(",%llu", (unsigned long long)u->dev.calls[i]);
        if (m->capacity)
            printf(",%llu,%llu,%llu,%.3f,%llu,%.3f", (unsigned long long)m->capacity, (unsigned long long)c->ooms,
                   (unsigned long long)fl_device_total_calls(&c->dev), c->dev.time_us / 1e3,
                   (unsigned long long)c->late_calls, c->late_us / 1e3);
        else
            printf(",,,,,,");
        printf(",%llu,%llu\n", (unsigned long long)u->ooms, (unsigned long long)m->streams_floor);
        return;
    }
    char mc[32] = "-", ratio[16] = "-", ov[16] = "-";
    if (m->min_capacity) {
        snprintf(mc, sizeof mc, "%.3f", gib(m->min_capacity));
        if (isfinite(mc_ratio))
            snprintf(ratio, sizeof ratio, "%.4f", mc_ratio);
    }
    if (isfinite(overhead))
        snprintf(ov, sizeof ov, "%.4f", overhead);
    printf("  %-15s %9.3f %8s %9s %9s %7llu %9.1f %6llu %8.1f", policy, gib(u->peak_reserved), ov, mc,
           ratio, (unsigned long long)fl_device_total_calls(&u->dev), u->dev.time_us / 1e3,
           (unsigned long long)u->late_calls, u->late_us / 1e3);
    if (m->capacity)
        printf(" | %5llu %7llu %9.1f %6llu %8.1f", (unsigned long long)c->ooms, (unsigned long long)fl_device_total_calls(&c->dev),
               c->dev.time_us / 1e3, (unsigned long long)c->late_calls, c->late_us / 1e3);
    /* The run without a limit failed (the simulated device's address space, e.g. more
     * than 255 streams' fragless heaps): its figures are not what the trace needs. */
    if (u->ooms)
        printf("  FAILED: %llu allocation%s out of memory without a capacity limit", (unsigned long long)u->ooms,
               cli_plural(u->ooms));
    printf("\n");
}

/* The trace's line and the table's head (text only). Where several streams allocate, a
 * line with their floor in the steady state (fli_streams_floor) when it is above peak
 * live: below it no policy that hands memory between streams by a device call runs the
 * steady state without one, so a late column there measures how few such calls it makes. */
static fl_status print_trace_header(const cli_opts *o, const fli_prepared *p, uint64_t capacity)
{
    if (strcmp(o->format, "text"))
        return FL_OK;
    char live[32], cap[32];
    uint64_t floor;
    fl_status s = fli_streams_floor(p, fli_steady_from(p), &floor);
    if (s != FL_OK)
        return s;
    printf("%s: %zu event%s, %llu stream%s, peak live %s (%.3f GiB)\n", p->name, p->n_ops, cli_plural(p->n_ops),
           (unsigned long long)p->n_streams, cli_plural(p->n_streams), fl_format_size(p->peak_live, live, sizeof live), gib(p->peak_live));
    double r = size_ratio(floor, p->peak_live);
    if (floor > p->peak_live && isfinite(r))
        printf("  streams' floor %s (%.4fx peak live): each stream's most live bytes from event %zu on, summed;\n"
               "  at a capacity below it memory passes between streams in the steady state, a device call each time\n",
               fl_format_size(floor, live, sizeof live), r, fli_steady_from(p));
    printf("  %-15s %9s %8s %9s %9s %7s %9s %6s %8s", "policy", "reserved", "overhead", "min_cap", "min/live",
           "calls", "dev_ms", "late", "late_ms");
    if (capacity)
        printf(" | at capacity %s: ooms calls dev_ms late late_ms", fl_format_size(capacity, cap, sizeof cap));
    printf("\n  %-15s %9s %8s %9s %9s\n", "", "GiB", "", "GiB", "");
    return FL_OK;
}

int cli_compare(const cli_opts *o)
{
    char names[CLI_MAX_POLICIES][32];
    int np, rc = cli_split_policies(o->policies, names, &np);
    if (rc)
        return rc;
    int first = 1, failed = 0;
    if (o->job)
        o->job->metric = o->min_capacity ? "min_capacity" : "peak_reserved";
    if (!strcmp(o->format, "json"))
        printf("[\n");
    cli_progress bar; /* silent unless stderr is a terminal */
    cli_progress_begin(&bar, (double)o->n_traces * np); /* a snapshot's extra devices extend it */
    for (int t = 0; t < o->n_traces; t++) {
        fli_loaded *v;
        int nv;
        fl_status s = fli_load_inputs(o->traces[t], o->device, stderr, &v, &nv);
        if (s != FL_OK) {
            cli_progress_clear(&bar);
            load_error();
            return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : status_exit(s);
        }
        for (int k = 0; k < nv; k++) {
            fli_prepared *p = v[k].p;
            uint64_t capacity;
            if ((rc = cli_capacity_for(o, p, &capacity)) != 0) {
                cli_progress_clear(&bar);
                fli_loaded_free(v, nv);
                return rc;
            }
            if ((s = print_trace_header(o, p, capacity)) != FL_OK) {
                fprintf(stderr, "fragless: %s: %s\n", p->name, fl_last_error());
                fli_loaded_free(v, nv);
                return status_exit(s);
            }
            /* A snapshot: how close the emulation of its own allocator comes to it. */
            if (v[k].info.n_devices) {
                fli_fidelity fid;
                char caveat[512];
                if ((s = fli_fidelity_run(p, &v[k].info, o->opts.sim.granularity, &fid)) != FL_OK) {
                    cli_progress_clear(&bar);
                    fprintf(stderr, "fragless: %s: fidelity: %s\n", p->name, fl_last_error());
                    fli_loaded_free(v, nv);
                    return status_exit(s);
                }
                fli_fidelity_caveat(&fid, caveat, sizeof caveat);
                if (caveat[0] && !strcmp(o->format, "text"))
                    printf("  %s.\n", caveat);
                else if (caveat[0])
                    fprintf(stderr, "fragless: %s: %s\n", p->name, caveat);
            }
            for (int i = 0; i < np; i++) {
                fli_replay_opts ro = o->opts;
                snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%.31s", names[i]);
                char what[64];
                snprintf(what, sizeof what, "%.30s %.31s", p->name, names[i]);
                cli_progress_unit(&bar, what);
                cli_progress_attach(&bar, &ro);
                fli_measure m;
                s = fli_measure_run(p, &ro, capacity, o->min_capacity, &m);
                cli_progress_unit_done(&bar);
                cli_progress_clear(&bar);
                if (s != FL_OK) {
                    fprintf(stderr, "fragless: %s, policy %s: %s\n", p->name, names[i], fl_last_error());
                    fli_loaded_free(v, nv);
                    return status_exit(s);
                }
                print_row(o, p, names[i], &m, first);
                if (nv == 1)
                    cli_job_record(o->job, t, i, names[i], p->peak_live,
                                   o->min_capacity ? m.min_capacity : m.unlimited.peak_reserved);
                fflush(stdout); /* the row is on screen before the bar comes back */
                first = 0;
                if (m.unlimited.ooms) {
                    fprintf(stderr, "fragless: %s, policy %s: %llu allocation%s failed without a capacity limit (first at "
                            "event %zu; `fragless replay` says why): its figures are not a result\n",
                            p->name, names[i], (unsigned long long)m.unlimited.ooms, cli_plural(m.unlimited.ooms),
                            m.unlimited.first_oom_op);
                    failed = 1;
                }
                fli_measure_free(&m);
            }
            if (!strcmp(o->format, "text") && (t + 1 < o->n_traces || k + 1 < nv))
                printf("\n");
        }
        fli_loaded_free(v, nv);
    }
    /* A job: the ranks side by side and the job line (not in CSV: one row per trace and
     * policy there, the same figures). */
    if (o->job && !strcmp(o->format, "text"))
        cli_job_print_text(o->job);
    if (o->job && !strcmp(o->format, "json")) {
        printf(",\n  ");
        cli_job_print_json(o->job);
    }
    if (!strcmp(o->format, "json"))
        printf("\n]\n");
    return failed ? CLI_EXIT_OOM : CLI_EXIT_OK;
}

int cli_replay(const cli_opts *o)
{
    char names[CLI_MAX_POLICIES][32];
    int np, rc = cli_split_policies(o->policies, names, &np);
    if (rc)
        return rc;
    if (np != 1) {
        fprintf(stderr, "fragless: replay takes one --policy\n");
        return CLI_EXIT_USAGE;
    }
    fli_loaded *v;
    int nv;
    fl_status s = fli_load_inputs(o->traces[0], o->device, stderr, &v, &nv);
    if (s != FL_OK) {
        load_error();
        return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : status_exit(s);
    }
    if (nv > 1) {
        fprintf(stderr, "fragless: %s: events on %d devices: replay takes one (--device N)\n", o->traces[0], nv);
        fli_loaded_free(v, nv);
        return CLI_EXIT_USAGE;
    }
    /* Owned by v from here: freed with it, never alone. */
    fli_prepared *p = v[0].p;
    v[0].p = NULL;
    fli_loaded_free(v, nv);
    fli_replay_opts ro = o->opts;
    snprintf(ro.cfg.policy, sizeof ro.cfg.policy, "%.31s", names[0]);
    uint64_t capacity;
    if ((rc = cli_capacity_for(o, p, &capacity)) != 0) {
        fli_prepared_free(p);
        return rc;
    }
    if (capacity)
        ro.sim.capacity = capacity;
    ro.timeline_buckets = o->timeline;
    fli_replay_result r;
    if ((s = fli_replay(p, &ro, &r)) != FL_OK) {
        fprintf(stderr, "fragless: %s, policy %s: %s\n", p->name, names[0], fl_last_error());
        fli_prepared_free(p);
        return status_exit(s);
    }
    uint64_t min_cap = 0;
    if (o->min_capacity && !r.ooms) {
        fli_replay_opts mo = ro;
        mo.timeline_buckets = 0;
        if ((s = fli_min_capacity(p, &mo, &r, &min_cap)) != FL_OK) {
            fprintf(stderr, "fragless: %s: %s\n", p->name, fl_last_error());
            fli_replay_result_free(&r);
            fli_prepared_free(p);
            return status_exit(s);
        }
    }
    int json = !strcmp(o->format, "json"), csv = !strcmp(o->format, "csv");
    char b1[32], b2[32], b3[32];
    if (json) {
        printf("{\"trace\": ");
        cli_json_str(p->name);
        printf(", \"policy\": \"%s\", \"events\": %zu, \"capacity\": %llu, \"peak_live\": %llu, "
               "\"peak_reserved\": %llu, \"peak_allocated\": %llu, \"ooms\": %llu, \"first_oom_event\": %lld, "
               "\"retries\": %llu, \"device_calls\": %llu, \"device_ms\": %.3f, \"host_ns_per_pair\": %.1f, "
               "\"min_capacity\": %llu, \"calls_by_kind\": ",
               names[0], p->n_ops, (unsigned long long)capacity, (unsigned long long)p->peak_live,
               (unsigned long long)r.peak_reserved, (unsigned long long)r.peak_allocated, (unsigned long long)r.ooms,
               r.ooms ? (long long)r.first_oom_op : -1LL, (unsigned long long)r.retries,
               (unsigned long long)fl_device_total_calls(&r.dev), r.dev.time_us / 1e3, ns_per_pair(&r),
               (unsigned long long)min_cap);
        print_calls_json(stdout, &r.dev);
        printf(", \"timeline\": [");
        for (int b = 0; b < r.n_buckets; b++)
            printf("%s{\"first_event\": %zu, \"end_event\": %zu, \"max_live\": %llu, \"max_reserved\": %llu, "
                   "\"device_calls\": %llu, \"device_ms\": %.3f}",
                   b ? ", " : "", r.timeline[b].first_op, r.timeline[b].end_op,
                   (unsigned long long)r.timeline[b].max_live, (unsigned long long)r.timeline[b].max_reserved,
                   (unsigned long long)r.timeline[b].calls, r.timeline[b].device_us / 1e3);
        printf("]}\n");
    } else if (csv) {
        printf("first_event,end_event,max_live,max_reserved,device_calls,device_ms\n");
        for (int b = 0; b < r.n_buckets; b++)
            printf("%zu,%zu,%llu,%llu,%llu,%.3f\n", r.timeline[b].first_op, r.timeline[b].end_op,
                   (unsigned long long)r.timeline[b].max_live, (unsigned long long)r.timeline[b].max_reserved,
                   (unsigned long long)r.timeline[b].calls, r.timeline[b].device_us / 1e3);
    } else {
        printf("%s under %s, capacity %s\n", p->name, names[0],
               capacity ? fl_format_size(capacity, b1, sizeof b1) : "unlimited");
        printf("  events %zu (%llu allocation%s, %llu free%s, %llu recorded failure%s, %llu unknown free%s "
               "skipped)\n",
               p->n_ops, (unsigned long long)p->n_allocs, cli_plural(p->n_allocs), (unsigned long long)p->n_frees,
               cli_plural(p->n_frees), (unsigned long long)p->n_recorded_failures,
               cli_plural(p->n_recorded_failures), (unsigned long long)p->unknown_frees,
               cli_plural(p->unknown_frees));
        char ov[16] = "-";
        if (p->peak_live)
            snprintf(ov, sizeof ov, "%.4f", (double)r.peak_reserved / (double)p->peak_live);
        printf("  peak live %s, peak reserved %s (overhead %s), peak allocated by the policy %s\n",
               fl_format_size(p->peak_live, b1, sizeof b1), fl_format_size(r.peak_reserved, b2, sizeof b2), ov,
               fl_format_size(r.peak_allocated, b3, sizeof b3));
        if (min_cap && p->peak_live)
            printf("  min capacity %s (%.4f x peak live)\n", fl_format_size(min_cap, b1, sizeof b1),
                   (double)min_cap / (double)p->peak_live);
        else if (min_cap)
            printf("  min capacity %s\n", fl_format_size(min_cap, b1, sizeof b1));
        printf("  out of memory: %llu allocation%s", (unsigned long long)r.ooms, cli_plural(r.ooms));
        if (r.ooms)
            printf(" (first at event %zu)", r.first_oom_op);
        printf(", retries after freeing cache: %llu\n", (unsigned long long)r.retries);
        printf("  device calls %llu, simulated device time %.1f ms:", (unsigned long long)fl_device_total_calls(&r.dev),
               r.dev.time_us / 1e3);
        for (int i = 0; i < FL_CALL_COUNT; i++)
            if (r.dev.calls[i])
                printf(" %s %llu", fl_call_name((fl_call)i), (unsigned long long)r.dev.calls[i]);
        printf("\n  host time %.1f ns per allocation + free through fl_alloc/fl_free (one cold run; "
               "`make bench` gives medians of warm runs)\n", ns_per_pair(&r));
        if (r.n_buckets) {
            printf("\n  timeline (peak live at event %zu):\n  %17s %10s %10s %8s %9s\n", p->peak_live_op,
                   "events", "live MiB", "resv MiB", "calls", "dev_ms");
            for (int b = 0; b < r.n_buckets; b++) {
                const fli_timeline_bucket *tb = &r.timeline[b];
                int has_peak = p->peak_live_op >= tb->first_op && p->peak_live_op < tb->end_op;
                printf("  %8zu-%-8zu %10.1f %10.1f %8llu %9.2f%s\n", tb->first_op, tb->end_op,
                       (double)tb->max_live / (double)FL_MiB, (double)tb->max_reserved / (double)FL_MiB,
                       (unsigned long long)tb->calls, tb->device_us / 1e3, has_peak ? "  <- peak live" : "");
            }
        }
    }
    /* Out of memory is a failed replay, with or without a capacity (without one, the
     * simulated device's address space ran out). */
    int exit_code = r.ooms ? CLI_EXIT_OOM : CLI_EXIT_OK;
    fli_replay_result_free(&r);
    fli_prepared_free(p);
    return exit_code;
}
