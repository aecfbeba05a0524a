/* `make bench` part one: host time per allocation + free of each policy on trace replay
 * (median of several runs, sim device with zero-cost calls, the policies' runs
 * interleaved so that machine noise hits all alike), and of the fragless policy through
 * the C API (fl_alloc/fl_free: the lock, the block table, the statistics), which is
 * what a frontend pays. Part two is `fragless compare`. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay/replay.h"
#include "util/util.h"

#define MAX_TRACES 64
#define MAX_RUNS 31

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int add_dir(const char *dir, const char *suffix, char **paths, int n)
{
    DIR *d = opendir(dir);
    if (!d)
        return n;
    struct dirent *e;
    char *found[MAX_TRACES];
    int k = 0;
    while ((e = readdir(d)) && k < MAX_TRACES) {
        size_t len = strlen(e->d_name), sl = strlen(suffix);
        if (len > sl && !strcmp(e->d_name + len - sl, suffix)) {
            found[k] = malloc(strlen(dir) + len + 2);
            sprintf(found[k], "%s/%s", dir, e->d_name);
            k++;
        }
    }
    closedir(d);
    for (int i = 0; i < k; i++) /* directory order is arbitrary: sort for stable output */
        for (int j = i + 1; j < k; j++)
            if (strcmp(found[i], found[j]) > 0) {
                char *t = found[i];
                found[i] = found[j];
                found[j] = t;
            }
    for (int i = 0; i < k && n < MAX_TRACES; i++)
        paths[n++] = found[i];
    return n;
}

/* The trace through fl_alloc/fl_free with the fragless policy: ns per pair, or < 0. */
static double api_replay(const fl_prepared *p)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    for (int c = 0; c < FL_CALL_COUNT; c++)
        sp.cost_us[c] = 0;
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.oom_report = 0;
    fl_device *d = NULL;
    fl_allocator *a = NULL;
    uint64_t *addr = calloc(p->n_slots + 1, sizeof *addr);
    if (!addr || fl_sim_device_create(&sp, &d) != FL_OK || fl_allocator_create(&cfg, d, &a) != FL_OK) {
        free(addr);
        fl_device_destroy(d);
        return -1;
    }
    uint64_t pairs = 0, t0 = fl_now_ns();
    for (size_t i = 0; i < p->n_ops; i++) {
        const fl_op *op = &p->ops[i];
        if (op->kind == FL_EV_ALLOC) {
            if (fl_alloc(a, op->size, op->stream, &addr[op->slot]) == FL_OK)
                pairs++;
            else
                addr[op->slot] = 0;
        } else if (op->kind == FL_EV_FREE && addr[op->slot]) {
            fl_free(a, addr[op->slot]);
            addr[op->slot] = 0;
        }
    }
    uint64_t ns = fl_now_ns() - t0;
    fl_allocator_destroy(a);
    fl_device_destroy(d);
    free(addr);
    return pairs ? (double)ns / (double)pairs : 0;
}

int main(int argc, char **argv)
{
    int runs = 9;
    const char *env = getenv("FL_BENCH_RUNS");
    if (env)
        runs = atoi(env);
    if (runs < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "fl_bench: FL_BENCH_RUNS must be 1..%d\n", MAX_RUNS);
        return 1;
    }
    char *paths[MAX_TRACES];
    int n = 0;
    for (int i = 1; i < argc && n < MAX_TRACES; i++)
        paths[n++] = strdup(argv[i]);
    if (n == 0) {
        n = add_dir("examples", ".csv", paths, n);
        int before = n;
        n = add_dir("../shared/traces", ".csv", paths, n);
        if (n == before)
            printf("note: ../shared/traces is absent: benchmarking the example trace only\n");
    }
    const char *const *names = fl_policy_names();
    int np = 0;
    while (names[np])
        np++;
    printf("host time per allocation + free (ns), median of %d interleaved runs, sim device with zero-cost calls\n",
           runs);
    printf("%-28s", "trace");
    for (int k = 0; k < np; k++)
        printf(" %15s", names[k]);
    printf("   fragless/cca  fragless via fl_alloc\n");
    for (int t = 0; t < n; t++) {
        fl_prepared *p;
        if (fl_load_trace(paths[t], NULL, &p) != FL_OK) {
            fprintf(stderr, "fl_bench: %s\n", fl_last_error());
            return 2;
        }
        double ns[8][MAX_RUNS], api[MAX_RUNS];
        for (int r = 0; r < runs; r++) {
            if ((api[r] = api_replay(p)) < 0) {
                fprintf(stderr, "fl_bench: %s through the API: %s\n", p->name, fl_last_error());
                return 4;
            }
            for (int k = 0; k < np; k++) {
                fl_replay_opts o;
                memset(&o, 0, sizeof o);
                fl_config_default(&o.cfg);
                snprintf(o.cfg.policy, sizeof o.cfg.policy, "%s", names[k]);
                fl_sim_params_default(&o.sim);
                for (int c = 0; c < FL_CALL_COUNT; c++)
                    o.sim.cost_us[c] = 0;
                fl_replay_result res;
                if (fl_replay(p, &o, &res) != FL_OK) {
                    fprintf(stderr, "fl_bench: %s under %s: %s\n", p->name, names[k], fl_last_error());
                    return 4;
                }
                ns[k][r] = res.pairs ? (double)res.host_ns / (double)res.pairs : 0;
                fl_replay_result_free(&res);
            }
        }
        printf("%-28s", p->name);
        double med[8];
        for (int k = 0; k < np; k++) {
            qsort(ns[k], (size_t)runs, sizeof ns[k][0], cmp_double);
            med[k] = ns[k][runs / 2];
            printf(" %15.1f", med[k]);
        }
        qsort(api, (size_t)runs, sizeof api[0], cmp_double);
        printf("   %12.2f  %20.1f\n", med[1] > 0 ? med[0] / med[1] : 0, api[runs / 2]);
        fl_prepared_free(p);
    }
    for (int t = 0; t < n; t++)
        free(paths[t]);
    return 0;
}
