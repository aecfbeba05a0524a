/* Fidelity of the PyTorch emulation on a snapshot: one replay under the recorded
 * settings that follows the recorded allocator, its reserved memory at the end against
 * what the snapshot's segments hold. The `fidelity` command prints it; compare, doctor
 * and report add a caveat when it is off by more than FL_FIDELITY_CAVEAT. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "replay/input.h"

fl_status fli_fidelity_run(const fli_prepared *p, const fli_snapshot_info *info, uint64_t granularity, fli_fidelity *f)
{
    memset(f, 0, sizeof *f);
    fli_replay_opts o;
    memset(&o, 0, sizeof o);
    fli_snapshot_config(info, &o.cfg);
    fl_sim_params_default(&o.sim);
    if (granularity)
        o.sim.granularity = granularity;
    o.follow = 1;
    /* Where the snapshot recorded an out-of-memory, the device had room for what the
     * allocator held then plus the free bytes it reported: the recorded failure fails
     * again (else the emulation would keep a segment the real allocator never got). */
    uint64_t cap = 0;
    if (info->oom_entry >= 0 && fli_snapshot_oom_capacity(info, p->name, &cap) == FL_OK && cap)
        o.sim.capacity = cap;
    f->capacity = o.sim.capacity;
    fli_replay_result r;
    fl_status s = fli_replay(p, &o, &r);
    if (s != FL_OK)
        return s;
    snprintf(f->policy, sizeof f->policy, "%s", o.cfg.policy);
    f->recorded = info->reserved_bytes;
    f->emulated = r.end_reserved;
    f->emulated_peak = r.peak_reserved;
    f->diff = f->recorded ? (double)f->emulated / (double)f->recorded - 1.0 : NAN;
    f->old_segments = info->n_old_segments;
    f->old_bytes = info->old_segment_bytes;
    f->covered = info->n_old_segments == 0;
    f->seeded_segments = r.seeded_segments;
    f->seeded_bytes = r.seeded_bytes;
    f->seed_failures = r.seed_failures;
    f->recorded_released = info->segment_free_bytes;
    f->emulated_released = r.released_bytes;
    fli_replay_result_free(&r);
    return FL_OK;
}

void fli_fidelity_caveat(const fli_fidelity *f, char *buf, size_t n)
{
    buf[0] = 0;
    if (!f->recorded || fabs(f->diff) <= FL_FIDELITY_CAVEAT)
        return;
    char a[32], b[32];
    snprintf(buf, n,
             "caveat: the emulation of this snapshot's own allocator (%s) ends with %s reserved where its "
             "segments hold %s (%+.1f%%): the figures for %s here are approximate%s",
             f->policy, fl_format_size(f->emulated, a, sizeof a), fl_format_size(f->recorded, b, sizeof b),
             100.0 * f->diff, f->policy,
             f->covered ? "" : " (recording began after some segments were allocated; see `fragless fidelity`)");
}
