/* The measurements compare and bench report for one trace and one policy, built from
 * replays: unlimited run, min_capacity search, optional run at a capacity. */
#include <string.h>

#include "replay/replay.h"
#include "pytorch/snapshot.h"

fl_status fl_measure_run(const fl_prepared *p, const fl_replay_opts *o, uint64_t capacity, int min_capacity,
                         fl_measure *m)
{
    memset(m, 0, sizeof *m);
    fl_replay_opts q = *o;
    m->steady_from_op = p->n_ops / 2 > p->peak_live_op + 1 ? p->n_ops / 2 : p->peak_live_op + 1;
    q.late_from_op = m->steady_from_op;
    fl_status s = fl_replay(p, &q, &m->unlimited);
    if (s != FL_OK)
        return s;
    if (min_capacity && (s = fl_min_capacity(p, o, &m->unlimited, &m->min_capacity)) != FL_OK)
        goto fail;
    if (capacity) {
        q.sim.capacity = capacity;
        if ((s = fl_replay(p, &q, &m->at_capacity)) != FL_OK)
            goto fail;
        m->capacity = capacity;
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

/* Pickles start with PROTO (0x80); a CSV log starts with its header. */
static int is_pickle(const char *path)
{
    FILE *f = fopen(path, "rb");
    int c = f ? fgetc(f) : EOF;
    if (f)
        fclose(f);
    return c == 0x80;
}

fl_status fl_load_trace(const char *path, FILE *warn, fl_prepared **out)
{
    return fl_load_trace_ex(path, 0, warn, out, NULL);
}

fl_status fl_load_trace_ex(const char *path, int device, FILE *warn, fl_prepared **out, fl_snapshot_info *info)
{
    fl_trace t; /* the readers initialise it, and leave it empty on error */
    fl_snapshot_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    fl_status s = is_pickle(path) ? fl_trace_read_snapshot(path, device, &t, info) : fl_trace_read_csv(path, &t);
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
