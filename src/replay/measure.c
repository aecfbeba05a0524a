/* The measurements compare and bench report for one trace and one policy, built from
 * replays: unlimited run, min_capacity search, optional run at a capacity. */
#include <stdlib.h>
#include <string.h>

#include "replay/replay.h"
#include "util/util.h"

fl_status fli_streams_floor(const fli_prepared *p, size_t from_op, uint64_t *out)
{
    *out = 0;
    if (p->n_streams < 2)
        return FL_OK;
    /* Streams by first allocation: an index each, then per index the bytes live now and
     * the most live in the stretch. */
    fli_map idx;
    fl_status s = fli_map_init(&idx, p->n_streams);
    if (s != FL_OK)
        return s;
    uint32_t *slot_stream = malloc(((size_t)p->n_slots + 1) * sizeof *slot_stream);
    uint64_t *cur = calloc(2 * (size_t)p->n_streams + 2, sizeof *cur), *peak;
    if (!slot_stream || !cur) {
        s = fli_fail(FL_ERR_NOMEM, "streams' floor of %s: no memory for %u blocks", p->name, p->n_slots);
        goto out;
    }
    uint64_t n = 0;
    peak = cur + p->n_streams + 1;
    for (size_t i = 0; i < p->n_ops; i++) {
        const fli_op *op = &p->ops[i];
        if (i == from_op) /* what is live as the stretch begins is held in it */
            memcpy(peak, cur, n * sizeof *cur);
        if (op->kind == FL_EV_ALLOC) {
            uint64_t k;
            if (!fli_map_get(&idx, op->stream, &k)) {
                if (n > p->n_streams) { /* more than prepare counted: a bug, not the trace */
                    s = fli_fail(FL_ERR_INVALID, "streams' floor of %s: more streams than the %llu counted", p->name,
                                (unsigned long long)p->n_streams);
                    goto out;
                }
                k = n++;
                if ((s = fli_map_insert(&idx, op->stream, k)) != FL_OK)
                    goto out;
            }
            slot_stream[op->slot] = (uint32_t)k;
            cur[k] += fli_live_size(op->size);
            if (i >= from_op && cur[k] > peak[k])
                peak[k] = cur[k];
        } else if (op->kind == FL_EV_FREE) {
            cur[slot_stream[op->slot]] -= fli_live_size(op->size);
        }
    }
    if (from_op >= p->n_ops) /* an empty stretch holds what is live at the end */
        memcpy(peak, cur, n * sizeof *cur);
    uint64_t sum = 0;
    for (uint64_t k = 0; k < n; k++)
        sum += peak[k];
    *out = n >= 2 ? sum : 0;
out:
    free(slot_stream);
    free(cur);
    fli_map_free(&idx);
    return s;
}

fl_status fli_measure_run(const fli_prepared *p, const fli_replay_opts *o, uint64_t capacity, int min_capacity,
                         fli_measure *m)
{
    memset(m, 0, sizeof *m);
    fli_replay_opts q = *o;
    m->steady_from_op = fli_steady_from(p);
    q.late_from_op = m->steady_from_op;
    fl_status s = fli_streams_floor(p, m->steady_from_op, &m->streams_floor);
    if (s != FL_OK)
        return s;
    s = fli_replay(p, &q, &m->unlimited);
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
