/* `make bench` part one: host time per allocation + free of each policy on trace replay
 * (median of several runs, sim device with zero-cost calls, the policies' runs
 * interleaved so that machine noise hits all alike). Part two is `fragless compare`. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay/replay.h"

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
    printf("   fragless/cca\n");
    for (int t = 0; t < n; t++) {
        fl_prepared *p;
        if (fl_load_trace(paths[t], NULL, &p) != FL_OK) {
            fprintf(stderr, "fl_bench: %s\n", fl_last_error());
            return 2;
        }
        double ns[8][MAX_RUNS];
        for (int r = 0; r < runs; r++) {
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
        printf("   %.2f\n", med[1] > 0 ? med[0] / med[1] : 0);
        fl_prepared_free(p);
    }
    for (int t = 0; t < n; t++)
        free(paths[t]);
    return 0;
}
