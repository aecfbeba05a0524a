/* The measurements compare and bench report for one trace and one policy, built from
 * replays: unlimited run, min_capacity search, optional run at a capacity. */
#include <string.h>

#include "replay/replay.h"

fl_status fli_measure_run(const fli_prepared *p, const fli_replay_opts *o, uint64_t capacity, int min_capacity,
                         fli_measure *m)
{
    memset(m, 0, sizeof *m);
    fli_replay_opts q = *o;
    m->steady_from_op = p->n_ops / 2 > p->peak_live_op + 1 ? p->n_ops / 2 : p->peak_live_op + 1;
    q.late_from_op = m->steady_from_op;
    fl_status s = fli_replay(p, &q, &m->unlimited);
    if (s != FL_OK)
        return s;
    if (min_capacity && (s = fli_min_capacity(p, o, &m->unlimited, &m->min_capacity)) != FL_OK)
        goto fail;
    if (capacity) {
        q.sim.capacity = capacity;
        if ((s = fli_replay(p, &q, &m->at_capacity)) != FL_OK)
            goto fail;
        m->capacity = capacity;
    }
    return FL_OK;
fail:
    fli_measure_free(m);
    return s;
}

void fli_measure_free(fli_measure *m)
{
    fli_replay_result_free(&m->unlimited);
    fli_replay_result_free(&m->at_capacity);
}
