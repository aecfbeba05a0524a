/* The measurements compare and bench report for one trace and one policy, built from
 * replays: unlimited run, min_capacity search, optional run at a capacity. */
#include <string.h>

#include "replay/replay.h"

static void late_half(const fl_replay_result *r, uint64_t *calls, double *us)
{
    *calls = r->n_buckets == 2 ? r->timeline[1].calls : 0;
    *us = r->n_buckets == 2 ? r->timeline[1].device_us : 0;
}

fl_status fl_measure_run(const fl_prepared *p, const fl_replay_opts *o, uint64_t capacity, int min_capacity,
                         fl_measure *m)
{
    memset(m, 0, sizeof *m);
    fl_replay_opts q = *o;
    q.timeline_buckets = 2;
    fl_status s = fl_replay(p, &q, &m->unlimited);
    if (s != FL_OK)
        return s;
    late_half(&m->unlimited, &m->unlimited_late_calls, &m->unlimited_late_us);
    if (min_capacity && (s = fl_min_capacity(p, o, &m->unlimited, &m->min_capacity)) != FL_OK)
        goto fail;
    if (capacity) {
        q.sim.capacity = capacity;
        if ((s = fl_replay(p, &q, &m->at_capacity)) != FL_OK)
            goto fail;
        m->capacity = capacity;
        late_half(&m->at_capacity, &m->capacity_late_calls, &m->capacity_late_us);
    }
    return FL_OK;
fail:
    fl_measure_free(m);
    return s;
}

void fl_measure_free(fl_measure *m)
{
    fl_replay_result_free(&m->unlimited);
    fl_replay_result_free(&m->at_capacity);
}

fl_status fl_load_trace(const char *path, FILE *warn, fl_prepared **out)
{
    fl_trace t; /* the reader initialises it, and leaves it empty on error */
    fl_status s = fl_trace_read_csv(path, &t);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; warn && i < t.n_warnings; i++)
        fprintf(warn, "warning: %s\n", t.warnings[i]);
    s = fl_prepare(&t, out);
    fl_trace_free(&t);
    if (s == FL_OK)
        for (size_t i = 0; warn && i < (*out)->n_warnings; i++)
            fprintf(warn, "warning: %s\n", (*out)->warnings[i]);
    return s;
}
