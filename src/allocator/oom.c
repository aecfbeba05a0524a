/* The out-of-memory judgment, one rule for the live allocator's report and the doctor:
 * if the live bytes and the request fit under the limit, the memory exists and is cut
 * up (fragmentation); otherwise it does not (exhaustion). */
#include <stdio.h>
#include <string.h>

#include "allocator/allocator.h"

const char *fl_oom_verdict_name(fl_oom_verdict v)
{
    switch (v) {
    case FL_OOM_FRAGMENTATION: return "fragmentation";
    case FL_OOM_EXHAUSTION: return "exhaustion";
    default: return "none";
    }
}

void fli_oom_judge(fl_oom_report *r, const char *policy, int device)
{
    uint64_t limit = r->limit; /* fli_dev_limit: the capacity when no limit is set */
    r->device_free = limit > r->reserved ? limit - r->reserved : 0;
    uint64_t total = r->free_in_reserved + r->device_free;
    if (r->largest_free < r->device_free)
        r->largest_free = r->device_free;
    r->external_fragmentation = total && r->largest_free < total ? 1.0 - (double)r->largest_free / (double)total : 0.0;
    uint64_t want = r->live + r->request;
    r->verdict = want > limit ? FL_OOM_EXHAUSTION : FL_OOM_FRAGMENTATION;
    r->needs = want;

    char asked[32], lim[32], cap[32], dfree[32], live[32], res[32], unalloc[32], largest[32], need[32];
    fl_format_size(r->request, asked, sizeof asked);
    fl_format_size(limit, lim, sizeof lim);
    fl_format_size(r->capacity, cap, sizeof cap);
    fl_format_size(r->device_free, dfree, sizeof dfree);
    fl_format_size(r->live, live, sizeof live);
    fl_format_size(r->reserved, res, sizeof res);
    fl_format_size(r->free_in_reserved, unalloc, sizeof unalloc);
    fl_format_size(r->largest_free, largest, sizeof largest);
    fl_format_size(want, need, sizeof need);

    /* Every policy gives back what no live block uses before it fails (cca: its wholly free
     * segments; fragless: reclaim), so empty_cache() would free nothing more: it is never
     * the advice. Nor is a setting that is already on. */
    int is_fragless = strcmp(policy, "fragless") == 0, is_expandable = strcmp(policy, "cca-expandable") == 0;
    if (r->verdict == FL_OOM_EXHAUSTION) {
        if (want <= r->capacity && limit < r->capacity)
            snprintf(r->advice, sizeof r->advice,
                     "this job needs at least %s: raise the limit to %s (FRAGLESS_CONF=limit:...)", need, need);
        else
            snprintf(r->advice, sizeof r->advice,
                     "this job needs at least %s, more than the %s it may use: use a smaller batch, "
                     "activation checkpointing or gradient accumulation, or a larger GPU",
                     need, lim);
    } else if (is_fragless) {
        snprintf(r->advice, sizeof r->advice,
                 "the free memory is in pages that live blocks also use: raise the limit by %s", asked);
    } else if (r->free_in_reserved >= r->request) {
        snprintf(r->advice, sizeof r->advice,
                 "%s reserved is in pieces (largest %s) in segments live blocks hold; empty_cache() "
                 "would free none of it: run with FRAGLESS_CONF=policy:fragless%s",
                 unalloc, largest, is_expandable ? "" : ", or expandable_segments:True");
    } else {
        snprintf(r->advice, sizeof r->advice,
                 "the job fits (needs %s) but the allocator's free pieces do not: run with "
                 "FRAGLESS_CONF=policy:fragless%s",
                 need, is_expandable ? "" : ", or expandable_segments:True");
    }
    const char *why = r->verdict == FL_OOM_EXHAUSTION ? "exceeds" : "fits in";
    snprintf(r->text, sizeof r->text,
             "out of memory on device %d: asked %s on stream 0x%llx; limit %s (device %s), reserved %s, "
             "free under the limit %s; live %s; reserved but unallocated %s, largest free block %s "
             "(external fragmentation %.1f%%). Verdict: %s (live + asked = %s %s the limit). Next: %s.%s%s",
             device, asked, (unsigned long long)r->stream, lim, cap, res, dfree, live, unalloc, largest,
             100.0 * r->external_fragmentation, fl_oom_verdict_name(r->verdict), need, why, r->advice,
             r->cause[0] ? " Detail: " : "", r->cause);
}
