/* A multi-GPU job as one input of compare, doctor and report: a folder of per-rank files,
 * a name with %r (the recorder's per-rank naming, src/util/path.c), or several files whose
 * names differ only in one number that runs from 0 to N-1 (all the ranks: run1.csv and
 * run2.csv are two runs, not a job). The inputs become the rank files in rank order, and the
 * commands end with the ranks side by side and a job line: which rank needs most, and the
 * spread between ranks. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/report.h"

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Trace-like names in a folder: what the commands read (a report also reads states). */
static int trace_name(const char *name, int report)
{
    return name[0] != '.' && (ends_with(name, ".csv") || ends_with(name, ".pickle") || ends_with(name, ".pkl") ||
                              (report && ends_with(name, ".json")));
}

typedef struct names {
    char *v[CLI_MAX_TRACES];
    int n;
} names;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_name(names *out, const char *dir, const char *base)
{
    if (out->n == CLI_MAX_TRACES) {
        fprintf(stderr, "fragless: more than %d traces\n", CLI_MAX_TRACES);
        return CLI_EXIT_USAGE;
    }
    size_t n = strlen(dir) + strlen(base) + 2;
    char *p = malloc(n);
    if (!p) {
        fprintf(stderr, "fragless: out of host memory\n");
        return CLI_EXIT_ERROR;
    }
    if (*dir)
        snprintf(p, n, "%s%s%s", dir, ends_with(dir, "/") ? "" : "/", base);
    else
        snprintf(p, n, "%s", base);
    out->v[out->n++] = p;
    return 0;
}

/* The files of dir (or, with pattern, those whose name is prefix, digits, suffix),
 * sorted by name. */
static int list_dir(const char *dir, const char *arg, const char *prefix, const char *suffix, int report, names *out)
{
    DIR *d = opendir(*dir ? dir : ".");
    if (!d) {
        fprintf(stderr, "fragless: %s: cannot open the folder: %s\n", arg, strerror(errno));
        return CLI_EXIT_INPUT;
    }
    int first = out->n, rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        const char *name = e->d_name;
        if (prefix) {
            size_t lp = strlen(prefix), ls = strlen(suffix), n = strlen(name);
            if (n <= lp + ls || strncmp(name, prefix, lp) || strcmp(name + n - ls, suffix))
                continue;
            int digits = 1;
            for (size_t i = lp; i < n - ls; i++)
                digits &= is_digit(name[i]);
            if (!digits)
                continue;
        } else if (!trace_name(name, report)) {
            continue;
        }
        rc = add_name(out, dir, name);
    }
    closedir(d);
    if (!rc && out->n == first) {
        fprintf(stderr, prefix ? "fragless: %s: no file matches it (%%r stands for the rank's number)\n"
                               : "fragless: %s: the folder holds no trace (.csv, .pickle%s)\n",
                arg, report ? ", .json" : "");
        return CLI_EXIT_INPUT;
    }
    qsort(out->v + first, (size_t)(out->n - first), sizeof out->v[0], cmp_str);
    return rc;
}

static int expand_one(const char *arg, int report, names *out)
{
    struct stat st;
    const char *pct = strstr(arg, "%r");
    if (pct) {
        const char *slash = strrchr(arg, '/');
        if (slash && slash > pct) {
            fprintf(stderr, "fragless: %s: %%r only in the file's name, not in a folder\n", arg);
            return CLI_EXIT_USAGE;
        }
        if (strstr(pct + 2, "%r")) {
            fprintf(stderr, "fragless: %s: one %%r at most\n", arg);
            return CLI_EXIT_USAGE;
        }
        char dir[4096], prefix[1024], suffix[1024];
        size_t dl = slash ? (size_t)(slash - arg) + 1 : 0;
        if (dl >= sizeof dir || (size_t)(pct - arg) - dl >= sizeof prefix || strlen(pct + 2) >= sizeof suffix) {
            fprintf(stderr, "fragless: %s: name too long\n", arg);
            return CLI_EXIT_USAGE;
        }
        memcpy(dir, arg, dl);
        dir[dl] = 0;
        memcpy(prefix, arg + dl, (size_t)(pct - arg) - dl);
        prefix[(size_t)(pct - arg) - dl] = 0;
        snprintf(suffix, sizeof suffix, "%s", pct + 2);
        return list_dir(dir, arg, prefix, suffix, report, out);
    }
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        return list_dir(arg, arg, NULL, NULL, report, out);
    char *p = strdup(arg);
    if (!p || out->n == CLI_MAX_TRACES) {
        free(p);
        fprintf(stderr, "fragless: more than %d traces\n", CLI_MAX_TRACES);
        return CLI_EXIT_USAGE;
    }
    out->v[out->n++] = p;
    return 0;
}

/* Whether the names differ only in one decimal number: then the ranks (sorted into
 * order) and the pattern with %r. all_ranks: the names were given one by one, so the
 * numbers must be 0 to N-1 as well. */
static int find_job(names *nm, cli_job *job, int all_ranks)
{
    if (nm->n < 2)
        return 0;
    size_t pre = strlen(nm->v[0]), suf = strlen(nm->v[0]);
    for (int i = 1; i < nm->n; i++) {
        const char *a = nm->v[0], *b = nm->v[i];
        size_t k = 0, la = strlen(a), lb = strlen(b), s = 0;
        while (k < pre && a[k] && a[k] == b[k])
            k++;
        pre = k;
        while (s < suf && s < la && s < lb && a[la - 1 - s] == b[lb - 1 - s])
            s++;
        suf = s;
    }
    /* The number's digits are not part of the common text (rank10, rank11 share "1"). */
    while (pre > 0 && is_digit(nm->v[0][pre - 1]))
        pre--;
    while (suf > 0 && is_digit(nm->v[0][strlen(nm->v[0]) - suf]))
        suf--;
    for (int i = 0; i < nm->n; i++) {
        const char *s = nm->v[i];
        size_t n = strlen(s);
        if (n < pre + suf + 1)
            return 0;
        long r = 0;
        for (size_t k = pre; k < n - suf; k++) {
            if (!is_digit(s[k]) || r > 100000000)
                return 0;
            r = r * 10 + (s[k] - '0');
        }
        job->rank[i] = (int)r;
    }
    if (strchr(nm->v[0] + pre, '/'))
        return 0;
    /* Ranks in order, each once. */
    for (int i = 1; i < nm->n; i++)
        for (int j = i; j > 0 && job->rank[j - 1] > job->rank[j]; j--) {
            int t = job->rank[j];
            job->rank[j] = job->rank[j - 1];
            job->rank[j - 1] = t;
            char *p = nm->v[j];
            nm->v[j] = nm->v[j - 1];
            nm->v[j - 1] = p;
        }
    for (int i = 1; i < nm->n; i++)
        if (job->rank[i] == job->rank[i - 1])
            return 0; /* rank0.csv and rank00.csv: not one job */
    for (int i = 0; all_ranks && i < nm->n; i++)
        if (job->rank[i] != i)
            return 0;
    snprintf(job->name, sizeof job->name, "%.*s%%r%s", (int)pre, nm->v[0], nm->v[0] + strlen(nm->v[0]) - suf);
    return 1;
}

/* The expanded names: kept (and reachable, for LeakSanitizer) until the next expansion,
 * as the commands point into them. */
static names kept;

int cli_job_expand(cli_opts *o, cli_mode mode, cli_job *job)
{
    memset(job, 0, sizeof *job);
    for (int i = 0; i < kept.n; i++)
        free(kept.v[i]);
    kept.n = 0;
    int rc = 0, named = 0; /* named: a folder or a %r pattern said "a job" */
    for (int i = 0; i < o->n_traces && !rc; i++) {
        struct stat st;
        named |= strstr(o->traces[i], "%r") || (stat(o->traces[i], &st) == 0 && S_ISDIR(st.st_mode));
        rc = expand_one(o->traces[i], mode == CLI_REPORT, &kept);
    }
    if (rc)
        return rc;
    job->is_job = find_job(&kept, job, !named);
    if (kept.n > 1 && !job->is_job && (mode == CLI_DOCTOR || mode == CLI_REPLAY)) {
        fprintf(stderr, "fragless: %s takes one trace, or the rank files of one job (a folder, a name with %%r, or "
                        "names that differ only in the rank's number, 0 to N-1); got %s and %s\n", cli_mode_name(mode), kept.v[0], kept.v[1]);
        return CLI_EXIT_USAGE;
    }
    if (job->is_job && mode == CLI_REPLAY) {
        fprintf(stderr, "fragless: replay takes one trace; compare, doctor and report take a job's rank files (%s)\n",
                job->name);
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < kept.n; i++)
        o->traces[i] = kept.v[i];
    o->n_traces = kept.n;
    job->n = kept.n;
    if (job->is_job)
        o->job = job;
    return 0;
}

void cli_job_record(cli_job *job, int t, int policy, const char *name, uint64_t peak_live, uint64_t need)
{
    if (!job || t < 0 || t >= job->n || policy < 0 || policy >= CLI_MAX_POLICIES)
        return;
    job->peak_live[t] = peak_live;
    job->need[t][policy] = need;
    job->have[t] |= 1u << policy;
    if (policy >= job->np)
        job->np = policy + 1;
    snprintf(job->policy[policy], sizeof job->policy[policy], "%s", name);
}

/* The rank needing most and least under one policy; 0 when not every rank has a figure. */
static int spread(const cli_job *job, int pol, int *most, int *least)
{
    *most = *least = -1;
    for (int t = 0; t < job->n; t++) {
        if (!(job->have[t] & (1u << pol)) || !job->need[t][pol])
            return 0;
        if (*most < 0 || job->need[t][pol] > job->need[*most][pol])
            *most = t;
        if (*least < 0 || job->need[t][pol] < job->need[*least][pol])
            *least = t;
    }
    return *most >= 0;
}

static double gib(uint64_t b) { return (double)b / (double)FL_GiB; }

void cli_job_print_text(const cli_job *job)
{
    if (!job || !job->np)
        return;
    printf("\njob %s: %d ranks, %s by rank (GiB)\n", job->name, job->n, job->metric);
    printf("  %-15s", "");
    for (int t = 0; t < job->n; t++)
        printf(" %8s%-3d", "rank ", job->rank[t]);
    printf("  %-8s %s\n", "most", "spread");
    printf("  %-15s", "peak live");
    for (int t = 0; t < job->n; t++)
        printf(" %11.3f", gib(job->peak_live[t]));
    printf("\n");
    for (int i = 0; i < job->np; i++) {
        int most, least;
        printf("  %-15s", job->policy[i]);
        for (int t = 0; t < job->n; t++)
            if (job->have[t] & (1u << i))
                printf(" %11.3f", gib(job->need[t][i]));
            else
                printf(" %11s", "-");
        if (spread(job, i, &most, &least))
            printf("  rank %-3d %.3f (%.1f%%)", job->rank[most], gib(job->need[most][i] - job->need[least][i]),
                   100.0 * (double)(job->need[most][i] - job->need[least][i]) / (double)job->need[most][i]);
        printf("\n");
    }
    int most, least;
    if (spread(job, 0, &most, &least))
        printf("job: rank %d needs the most: %.3f GiB %s under %s; rank %d the least: %.3f GiB; spread %.3f GiB "
               "(%.1f%%)\n",
               job->rank[most], gib(job->need[most][0]), job->metric, job->policy[0], job->rank[least],
               gib(job->need[least][0]), gib(job->need[most][0] - job->need[least][0]),
               100.0 * (double)(job->need[most][0] - job->need[least][0]) / (double)job->need[most][0]);
}

void cli_job_print_json(const cli_job *job)
{
    printf("{\"job\": ");
    cli_json_str(job->name);
    printf(", \"metric\": \"%s\", \"ranks\": [", job->metric);
    for (int t = 0; t < job->n; t++)
        printf("%s%d", t ? ", " : "", job->rank[t]);
    printf("], \"peak_live\": [");
    for (int t = 0; t < job->n; t++)
        printf("%s%llu", t ? ", " : "", (unsigned long long)job->peak_live[t]);
    printf("], \"policies\": {");
    for (int i = 0; i < job->np; i++) {
        int most, least;
        printf("%s\"%s\": {\"need\": [", i ? ", " : "", job->policy[i]);
        for (int t = 0; t < job->n; t++)
            printf("%s%llu", t ? ", " : "", (unsigned long long)job->need[t][i]);
        printf("]");
        if (spread(job, i, &most, &least))
            printf(", \"most_rank\": %d, \"least_rank\": %d, \"spread\": %llu", job->rank[most], job->rank[least],
                   (unsigned long long)(job->need[most][i] - job->need[least][i]));
        printf("}");
    }
    printf("}}");
}

void cli_job_write_html(FILE *f, const cli_job *job)
{
    if (!job || !job->np)
        return;
    fprintf(f, "<section id=\"job\"><h2>The job: ranks side by side</h2>\n<p>");
    report_esc(f, job->name);
    fprintf(f, ": %d ranks, %s by rank.", job->n, job->metric);
    int most, least;
    if (spread(job, 0, &most, &least))
        fprintf(f, " <b>Rank %d needs the most</b> under %s; the spread between ranks is %.3f GiB (%.1f%%).",
                job->rank[most], job->policy[0], gib(job->need[most][0] - job->need[least][0]),
                100.0 * (double)(job->need[most][0] - job->need[least][0]) / (double)job->need[most][0]);
    /* Scrolls sideways rather than widening the page when there are many ranks. */
    fprintf(f, "</p>\n<div style=\"overflow-x:auto\"><table class=\"job\"><tr><th></th>");
    for (int t = 0; t < job->n; t++)
        fprintf(f, "<th><a href=\"#t%d\">rank %d</a></th>", t, job->rank[t]);
    fprintf(f, "<th>most</th><th>spread</th></tr>\n<tr><td>peak live</td>");
    for (int t = 0; t < job->n; t++)
        fprintf(f, "<td data-rank=\"%d\" data-v=\"%llu\">%.3f GiB</td>", job->rank[t],
                (unsigned long long)job->peak_live[t], gib(job->peak_live[t]));
    fprintf(f, "<td></td><td></td></tr>\n");
    for (int i = 0; i < job->np; i++) {
        fprintf(f, "<tr><td>%s</td>", job->policy[i]);
        for (int t = 0; t < job->n; t++)
            fprintf(f, "<td data-rank=\"%d\" data-v=\"%llu\">%.3f GiB</td>", job->rank[t],
                    (unsigned long long)job->need[t][i], gib(job->need[t][i]));
        if (spread(job, i, &most, &least))
            fprintf(f, "<td>rank %d</td><td>%.3f GiB</td>", job->rank[most],
                    gib(job->need[most][i] - job->need[least][i]));
        else
            fprintf(f, "<td></td><td></td>");
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</table></div></section>\n");
}
