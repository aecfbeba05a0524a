/* `fragless doctor`: prints the diagnosis of one trace (one section per device of a
 * PyTorch snapshot) as text a user can act on, or as JSON for tools. The analysis itself
 * is src/replay/doctor.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "replay/doctor.h"

/* Human units ("7.00 MiB", "1.24 GiB"): these numbers range from KiB to GiB. */
static const char *gib(uint64_t b, char *buf, size_t n)
{
    return fl_format_size(b, buf, n);
}

void cli_whatif_delta(char *buf, size_t n, uint64_t ran, uint64_t need)
{
    char a[32];
    if (need < ran)
        snprintf(buf, n, "saves %s", fl_format_size(ran - need, a, sizeof a));
    else if (need > ran)
        snprintf(buf, n, "costs %s more", fl_format_size(need - ran, a, sizeof a));
    else
        snprintf(buf, n, "same");
}

const char *cli_site_name(const fli_prepared *p, uint32_t site)
{
    return site && site < p->n_sites && p->sites[site] ? p->sites[site] : "(site unknown: allocated before recording)";
}

/* The parts of a breakdown, for text, JSON and the report alike. */
const cli_part cli_parts[CLI_N_PARTS] = {
    {"interleaved", "free inside segments that also hold live blocks (interleaving)"},
    {"free_segments", "free in wholly free segments (pages) of the wrong size or pool"},
    {"other_streams", "free in other streams' pools"},
    {"rounding", "rounding of requests (inside live blocks)"},
    {"unsplit", "blocks not split (max_split_size_mb, tails of 1 MiB or less)"},
    {"unmapped", "held but mapped nowhere (spare pages)"},
};

uint64_t cli_part_value(const fli_breakdown *b, int i)
{
    const uint64_t v[CLI_N_PARTS] = {b->interleaved, b->free_segments, b->other_streams,
                                     b->rounding,    b->unsplit,       b->unmapped};
    return v[i];
}

static void print_breakdown(const fli_prepared *p, const fli_breakdown *b, const char *when)
{
    char a[32], c[32], e[32];
    uint64_t total = fli_breakdown_sum(b);
    printf("Where the reserved memory went %s: %s reserved = %s live + %s more:\n", when,
           gib(b->reserved, a, sizeof a), gib(b->live, c, sizeof c), gib(total, e, sizeof e));
    for (int i = 0; i < CLI_N_PARTS; i++) {
        uint64_t v = cli_part_value(b, i);
        printf("  %-66s %12s  %5.1f%%\n", cli_parts[i].label, gib(v, a, sizeof a), total ? 100.0 * (double)v / (double)total : 0.0);
    }
    if (p->slot_site && b->n_sites && b->interleaved) {
        printf("  Who pins it: live blocks in segments with free space, by allocation site (free bytes they\n"
               "  keep from being given back, shared among a segment's blocks by size):\n");
        for (int i = 0; i < b->n_sites; i++) {
            const fli_site_share *s = &b->sites[i];
            printf("    %-52s %12s stranded by %llu block%s (%s live)\n", cli_site_name(p, s->site),
                   gib(s->stranded, a, sizeof a), (unsigned long long)s->blocks, s->blocks == 1 ? "" : "s",
                   gib(s->live, c, sizeof c));
        }
        if (b->n_site_groups > (uint64_t)b->n_sites)
            printf("    ... and %llu more sites\n", (unsigned long long)(b->n_site_groups - (uint64_t)b->n_sites));
    }
}

static void print_text(const fli_prepared *p, const fli_replay_opts *ran, const fli_diagnosis *d, const cli_section *sec)
{
    char a[32], b[32], c[32], e[32];
    printf("fragless doctor: %s (%zu events, %llu stream%s); what you ran: %s%s%s%s\n\n", p->name, p->n_ops,
           (unsigned long long)p->n_streams, p->n_streams == 1 ? "" : "s", ran->cfg.policy,
           ran->cfg.expandable_segments ? " with expandable_segments" : "",
           ran->cfg.max_split_size ? " with max_split_size" : "", sec->from_snapshot ? " (the snapshot's settings)" : "");
    if (sec->caveat[0])
        printf("%s.\n\n", sec->caveat);
    if (sec->has_fidelity && sec->from_snapshot) {
        const fli_fidelity *f = &sec->fidelity;
        printf("The emulation follows the recorded allocator: %llu segment%s it gave back (%s: empty_cache(),\n"
               "retries after a failed cudaMalloc), %llu segment%s older than the recording rebuilt from the dump;\n"
               "it ends with %s reserved, the snapshot's segments hold %s (%+.2f%%).\n\n",
               (unsigned long long)(sec->info->n_segment_free + sec->info->n_segment_unmap),
               sec->info->n_segment_free + sec->info->n_segment_unmap == 1 ? "" : "s",
               gib(f->recorded_released, a, sizeof a), (unsigned long long)f->seeded_segments,
               f->seeded_segments == 1 ? "" : "s", gib(f->emulated, b, sizeof b), gib(f->recorded, c, sizeof c),
               isfinite(f->diff) ? 100.0 * f->diff : 0.0);
    }
    if (sec->capacity_from_oom)
        printf("Capacity from the snapshot's oom event: %s reserved + %s free on the device = %s.\n\n",
               gib(sec->info->oom_reserved, a, sizeof a), gib(sec->info->oom_device_free, b, sizeof b),
               gib(d->capacity, c, sizeof c));
    if (d->recorded_failures)
        printf("The trace records %llu failed allocation%s; the first asked %s at event %zu.\n\n",
               (unsigned long long)d->recorded_failures, d->recorded_failures == 1 ? "" : "s",
               gib(d->first_recorded_size, a, sizeof a), d->first_recorded_op);
    if (d->recorded_served)
        printf("The replay served the failure the trace recorded: the emulation's state differs from the\n"
               "recorded allocator's there (see `fragless fidelity`).\n\n");
    if (!d->has_oom) {
        if (d->capacity)
            printf("No out-of-memory at a capacity of %s under %s: the job fits.\n\n", gib(d->capacity, a, sizeof a),
                   ran->cfg.policy);
        else
            printf("No capacity given: run with --capacity SIZE (your GPU's memory) to diagnose an "
                   "out-of-memory.\n\n");
        /* Fits, but its streams take turns at memory: each turn is a device call. */
        if (d->capacity && d->streams_floor > d->capacity)
            printf("Its streams hold more than the capacity between them: each stream's most live bytes from event\n"
                   "%zu on (the steady state) add up to %s (%.4fx peak live). So memory passes between\n"
                   "streams there, a device call each time (a synchronize stalls the GPU's queues); %s made %llu\n"
                   "device call%s there (%.1f ms simulated). Below %s no allocator that keeps each stream's\n"
                   "memory its own until a synchronize avoids them.\n\n",
                   d->steady_from_op, gib(d->streams_floor, b, sizeof b),
                   (double)d->streams_floor / (double)(p->peak_live ? p->peak_live : 1), ran->cfg.policy,
                   (unsigned long long)d->steady_calls, d->steady_calls == 1 ? "" : "s", d->steady_ms,
                   gib(d->streams_floor, c, sizeof c));
    } else {
        const fl_oom_report *o = &d->oom;
        printf("Out of memory at event %zu%s, replayed under %s at a capacity of %s:\n", d->oom_op,
               d->oom_was_recorded ? " (the failure the trace recorded)" : "", ran->cfg.policy,
               gib(d->capacity, a, sizeof a));
        printf("  asked                          %s\n", gib(o->request, a, sizeof a));
        printf("  free on the device             %s\n", gib(d->device_free, a, sizeof a));
        printf("  live (in use by the program)   %s\n", gib(o->live, a, sizeof a));
        printf("  reserved but unallocated       %s  (of %s the allocator holds)\n",
               gib(o->free_in_reserved, a, sizeof a), gib(o->reserved, b, sizeof b));
        printf("  largest free block             %s\n", gib(o->largest_free, a, sizeof a));
        printf("  external fragmentation         %.1f%%  (1 - largest free block / all free memory)\n",
               100.0 * d->ext_frag);
        if (d->verdict == FL_VERDICT_FRAGMENTATION)
            printf("Verdict: FRAGMENTATION. Live %s + asked %s = %s fits in the capacity of %s:\n"
                   "the memory exists but is cut into pieces too small for the request.\n",
                   gib(o->live, a, sizeof a), gib(o->request, b, sizeof b), gib(o->live + o->request, c, sizeof c),
                   gib(o->limit, e, sizeof e));
        else
            printf("Verdict: EXHAUSTION. Live %s + asked %s = %s is more than the capacity of %s:\n"
                   "no allocator can fit this; the job needs more memory or less live data.\n",
                   gib(o->live, a, sizeof a), gib(o->request, b, sizeof b), gib(o->live + o->request, c, sizeof c),
                   gib(o->limit, e, sizeof e));
        printf("  (rule: exhaustion when live + asked > capacity, fragmentation otherwise)\n");
        if (!d->job_fits && d->verdict == FL_VERDICT_FRAGMENTATION)
            printf("But the job's live bytes later reach %s (event %zu), more than the capacity: fixing\n"
                   "fragmentation only moves the OOM: this job needs at least %s.\n",
                   gib(d->job_needs, a, sizeof a), d->job_peak_op, gib(d->lower_bound_job, b, sizeof b));
        printf("  Lower bound: no allocator that does not move data needs less than %s now (live + asked,\n"
               "  in whole %s pages), nor less than %s for the whole job.\n\n",
               gib(d->lower_bound_now, a, sizeof a), gib(ran->sim.granularity, b, sizeof b),
               gib(d->lower_bound_job, c, sizeof c));
        if (d->at_oom.taken)
            print_breakdown(p, &d->at_oom, "at the out-of-memory");
        printf("\n");
    }
    if (d->at_peak.taken) {
        char when[96];
        snprintf(when, sizeof when, "at the peak of reserved memory (event %zu%s)", d->at_peak.op,
                 d->capacity ? ", at the capacity" : "");
        print_breakdown(p, &d->at_peak, when);
        printf("\n");
    }

    printf("Memory by lifetime:\n");
    printf("  persistent (living over half the trace: weights, optimizer state)  peak %s\n",
           gib(d->persistent, a, sizeof a));
    printf("  transient (shorter-lived: activations, temporaries)                peak %s\n",
           gib(d->transient_peak, a, sizeof a));
    printf("  at the peak of live bytes (event %zu): %s persistent + %s transient = %s\n\n", d->peak_op,
           gib(d->persistent_at_peak, a, sizeof a), gib(d->transient_at_peak, b, sizeof b),
           gib(d->peak_live, c, sizeof c));

    const uint64_t base = d->rows[0].min_capacity;
    printf("What if: the smallest capacity that runs with no out-of-memory%s (peak live %s)\n",
           d->whatif_truncated ? ", the failed request served" : "", gib(d->job_needs, a, sizeof a));
    if (d->capacity)
        printf("  %-30s %12s   %-22s %s\n", "setting", "needs", "vs what you ran", "fits the capacity?");
    else
        printf("  %-30s %12s   %s\n", "setting", "needs", "vs what you ran");
    for (int i = 0; i < d->n_rows; i++) {
        const fli_whatif *w = &d->rows[i];
        char delta[64] = "-";
        if (i > 0)
            cli_whatif_delta(delta, sizeof delta, base, w->min_capacity);
        if (d->capacity)
            printf("  %-30s %12s   %-22s %s\n", w->label, gib(w->min_capacity, b, sizeof b), delta,
                   w->fits ? "yes" : w->fails_at_capacity ? "no: runs out at it (*)" : "no");
        else
            printf("  %-30s %12s   %s\n", w->label, gib(w->min_capacity, b, sizeof b), delta);
    }

    for (int i = 0; i < d->n_rows; i++)
        if (d->rows[i].fails_at_capacity) {
            printf("  (*) needs less than the capacity, yet replayed at the capacity itself it runs out of memory:\n"
                   "      where blocks go under pressure depends on the capacity, and more is not always better\n");
            break;
        }

    printf("\nTo try (each replayed; estimates state their assumption):\n");
    if (d->capacity && !d->any_fits) {
        printf("  - No setting fits in %s: the job needs at least %s. Use a smaller batch, activation\n"
               "      checkpointing or gradient accumulation (below), or a larger GPU.\n",
               gib(d->capacity, a, sizeof a), gib(d->lower_bound_job, b, sizeof b));
    } else {
        /* A setting is advised only when the replay shows it helps: less than what ran,
         * and within the capacity when one is known. */
        int advised = 0;
        if (d->best_pytorch >= 0) {
            const fli_whatif *w = &d->rows[d->best_pytorch];
            if (w->min_capacity < base && (!d->capacity || w->fits)) {
                printf("  - %s\n      needs %s (replayed above); the best of PyTorch's own settings here.\n", w->env,
                       gib(w->min_capacity, a, sizeof a));
                advised = 1;
            }
        }
        const fli_whatif *fx = &d->rows[d->fragless_row];
        if (fx->min_capacity < base && (!d->capacity || fx->fits)) {
            printf("  - %s (through fragless's PyTorch plug-in)\n      needs %s (replayed above), %.4f x peak live.\n",
                   fx->env, gib(fx->min_capacity, a, sizeof a),
                   d->job_needs ? (double)fx->min_capacity / (double)d->job_needs : 0);
            advised = 1;
        }
        if (!advised)
            printf("  - No other setting needs less than what you ran%s.\n", d->capacity ? " and fits" : "");
    }
    if (d->has_oom) {
        if (d->empty_cache_helps)
            printf("  - torch.cuda.empty_cache() just before the failed request: replayed, the request then\n"
                   "      succeeds (it gave %s back to the device).\n", gib(d->empty_cache_returned, a, sizeof a));
        else
            printf("  - torch.cuda.empty_cache() would not help: replayed just before the failed request, it\n"
                   "      gave back %s and the request failed again (the allocator already gives back its\n"
                   "      wholly free segments before failing; the rest is pinned by live blocks).\n",
                   gib(d->empty_cache_returned, a, sizeof a));
    }
    if (d->idle_op && d->idle_returned)
        printf("  - torch.cuda.empty_cache() at event %zu, the quietest point between warm-up and teardown\n"
               "      (%s live), would return %s of the %s held to the device. It frees cache for\n"
               "      other processes; it does not lower this job's peak. Assumes no kernel runs then.\n",
               d->idle_op, gib(d->idle_live, a, sizeof a), gib(d->idle_returned, b, sizeof b),
               gib(d->idle_reserved, c, sizeof c));
    printf("  - gradient accumulation: about %s at the peak over 2 micro-batches, %s over 4\n"
           "      (now %s). Assumes the transient memory scales with the micro-batch and the\n"
           "      persistent memory does not.\n",
           gib(d->accum_need[0], a, sizeof a), gib(d->accum_need[1], b, sizeof b), gib(d->peak_live, c, sizeof c));
}

static void json_breakdown(const fli_prepared *p, const fli_breakdown *b)
{
    if (!b->taken) {
        printf("null");
        return;
    }
    printf("{\"event\": %zu, \"reserved\": %llu, \"live\": %llu, \"total\": %llu", b->op,
           (unsigned long long)b->reserved, (unsigned long long)b->live, (unsigned long long)fli_breakdown_sum(b));
    for (int i = 0; i < CLI_N_PARTS; i++)
        printf(", \"%s\": %llu", cli_parts[i].key, (unsigned long long)cli_part_value(b, i));
    printf(", \"pinned_by\": [");
    for (int i = 0; p->slot_site && i < b->n_sites; i++) {
        printf("%s{\"site\": ", i ? ", " : "");
        cli_json_str(cli_site_name(p, b->sites[i].site));
        printf(", \"stranded\": %llu, \"live\": %llu, \"blocks\": %llu}", (unsigned long long)b->sites[i].stranded,
               (unsigned long long)b->sites[i].live, (unsigned long long)b->sites[i].blocks);
    }
    printf("]}");
}

static void print_json(const fli_prepared *p, const fli_replay_opts *ran, const fli_diagnosis *d, const cli_section *sec)
{
    printf("{\"trace\": ");
    cli_json_str(p->name);
    printf(", \"device\": %d, \"events\": %zu, \"ran\": \"%s\", \"capacity\": %llu, \"capacity_from\": %s, "
           "\"recorded_failures\": %llu, ",
           sec->info->n_devices ? sec->info->device : -1, p->n_ops, ran->cfg.policy, (unsigned long long)d->capacity,
           !d->capacity ? "null" : sec->capacity_from_oom ? "\"snapshot oom event\"" : "\"--capacity\"",
           (unsigned long long)d->recorded_failures);
    if (d->has_oom) {
        printf("\"oom\": {\"event\": %zu, \"recorded\": %s, \"asked\": %llu, \"device_free\": %llu, \"live\": %llu, "
               "\"reserved\": %llu, \"reserved_unallocated\": %llu, \"largest_free\": %llu, "
               "\"external_fragmentation\": ",
               d->oom_op, d->oom_was_recorded ? "true" : "false", (unsigned long long)d->oom.request,
               (unsigned long long)d->device_free, (unsigned long long)d->oom.live,
               (unsigned long long)d->oom.reserved, (unsigned long long)d->oom.free_in_reserved,
               (unsigned long long)d->oom.largest_free);
        cli_json_num(d->ext_frag, 4);
        printf(", \"lower_bound\": %llu}, ", (unsigned long long)d->lower_bound_now);
    } else
        printf("\"oom\": null, ");
    printf("\"recorded_failure_served\": %s, ", d->recorded_served ? "true" : "false");
    printf("\"verdict\": \"%s\", \"verdict_rule\": \"exhaustion when live + asked > capacity, fragmentation "
           "otherwise\", \"job_needs\": %llu, \"job_fits\": %s, \"lower_bound_job\": %llu, ",
           fli_verdict_name(d->verdict), (unsigned long long)d->job_needs, d->job_fits ? "true" : "false",
           (unsigned long long)d->lower_bound_job);
    printf("\"streams_floor\": %llu, \"steady_from_event\": %zu, \"steady_device_calls\": %llu, \"steady_device_ms\": "
           "%.3f, ",
           (unsigned long long)d->streams_floor, d->steady_from_op, (unsigned long long)d->steady_calls, d->steady_ms);
    printf("\"breakdown_at_oom\": ");
    json_breakdown(p, d->has_oom ? &d->at_oom : &(fli_breakdown){0});
    printf(", \"breakdown_at_peak_reserved\": ");
    json_breakdown(p, &d->at_peak);
    printf(", \"peak_live\": %llu, \"peak_event\": %zu, \"persistent\": %llu, \"transient_peak\": %llu, "
           "\"persistent_at_peak\": %llu, \"transient_at_peak\": %llu, \"whatif_failed_request_served\": %s, "
           "\"whatif\": [",
           (unsigned long long)d->peak_live, d->peak_op, (unsigned long long)d->persistent,
           (unsigned long long)d->transient_peak, (unsigned long long)d->persistent_at_peak,
           (unsigned long long)d->transient_at_peak, d->whatif_truncated ? "true" : "false");
    for (int i = 0; i < d->n_rows; i++) {
        printf("%s{\"setting\": ", i ? ", " : "");
        cli_json_str(d->rows[i].label);
        printf(", \"env\": ");
        cli_json_str(d->rows[i].env);
        printf(", \"min_capacity\": %llu, \"fits\": %s, \"fails_at_capacity\": %s}",
               (unsigned long long)d->rows[i].min_capacity, !d->capacity ? "null" : d->rows[i].fits ? "true" : "false",
               !d->capacity ? "null" : d->rows[i].fails_at_capacity ? "true" : "false");
    }
    printf("], \"empty_cache_before_oom\": ");
    if (d->has_oom)
        printf("{\"helps\": %s, \"returned\": %llu}", d->empty_cache_helps ? "true" : "false",
               (unsigned long long)d->empty_cache_returned);
    else
        printf("null");
    printf(", \"empty_cache\": {\"event\": %zu, \"live\": %llu, \"reserved\": %llu, \"returned\": %llu}, ",
           d->idle_op, (unsigned long long)d->idle_live, (unsigned long long)d->idle_reserved,
           (unsigned long long)d->idle_returned);
    printf("\"gradient_accumulation\": {\"2\": %llu, \"4\": %llu}, \"fidelity\": ",
           (unsigned long long)d->accum_need[0], (unsigned long long)d->accum_need[1]);
    if (sec->has_fidelity) {
        printf("{\"recorded\": %llu, \"emulated\": %llu, \"diff\": ", (unsigned long long)sec->fidelity.recorded,
               (unsigned long long)sec->fidelity.emulated);
        cli_json_num(sec->fidelity.diff, 4);
        printf(", \"covered\": %s}", sec->fidelity.covered ? "true" : "false");
    } else
        printf("null");
    printf(", \"caveat\": ");
    if (sec->caveat[0])
        cli_json_str(sec->caveat);
    else
        printf("null");
    printf("}");
}

int cli_doctor_section(const cli_opts *o, fli_loaded *in, fli_replay_opts *ran, cli_section *sec, fli_diagnosis *d,
                       cli_progress *bar)
{
    fli_prepared *p = in->p;
    const fli_known_min *known = sec->known; /* the caller's, kept */
    int n_known = sec->n_known;
    memset(sec, 0, sizeof *sec);
    sec->known = known;
    sec->n_known = n_known;
    sec->info = &in->info;
    *ran = o->opts;
    sec->from_snapshot = in->info.n_devices && !o->policy_given;
    if (sec->from_snapshot) {
        fli_snapshot_config(&in->info, &ran->cfg); /* what the snapshot says it ran */
    } else {
        snprintf(ran->cfg.policy, sizeof ran->cfg.policy, "%.31s", o->policies);
        if (ran->cfg.expandable_segments && !strcmp(ran->cfg.policy, "cca"))
            snprintf(ran->cfg.policy, sizeof ran->cfg.policy, "cca-expandable");
    }
    uint64_t capacity;
    int rc = cli_capacity_for(o, p, &capacity);
    if (rc)
        return rc;
    fl_status s;
    if (!capacity && in->info.n_devices && in->info.oom_entry >= 0) {
        /* A snapshot that recorded an OOM: the device held what the allocator held then,
         * and had device_free left. */
        if ((s = fli_snapshot_oom_capacity(&in->info, p->name, &capacity)) != FL_OK) {
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            return CLI_EXIT_INPUT;
        }
        sec->capacity_from_oom = 1;
    }
    if (in->info.n_devices) {
        if ((s = fli_fidelity_run(p, &in->info, o->opts.sim.granularity, &sec->fidelity)) != FL_OK) {
            fprintf(stderr, "fragless: %s: fidelity: %s\n", p->name, fl_last_error());
            return s == FL_ERR_PARSE || s == FL_ERR_IO ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
        }
        sec->has_fidelity = 1;
        if (sec->from_snapshot)
            fli_fidelity_caveat(&sec->fidelity, sec->caveat, sizeof sec->caveat);
    }
    fli_doctor_opts dopt = {.capacity = capacity, .follow = sec->from_snapshot, .known = sec->known,
                           .n_known = sec->n_known};
    if (bar)
        cli_progress_attach(bar, ran);
    s = fli_diagnose_ex(p, ran, &dopt, d);
    ran->search_step = NULL;
    if (s != FL_OK) {
        fprintf(stderr, "fragless: %s: doctor: %s\n", p->name, fl_last_error());
        return CLI_EXIT_ERROR;
    }
    return CLI_EXIT_OK;
}

/* One input (each device of a snapshot); with a job, its rank's figures are recorded. */
static int doctor_input(const cli_opts *o, int t)
{
    fli_loaded *v;
    int n;
    fl_status s = fli_load_inputs(o->traces[t], o->device, stderr, &v, &n);
    if (s != FL_OK) {
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
    }
    int json = !strcmp(o->format, "json"), rc = CLI_EXIT_OK;
    if (json && n > 1)
        printf("[");
    for (int i = 0; i < n && !rc; i++) {
        fli_replay_opts ran;
        cli_section sec = {0};
        fli_diagnosis d;
        if ((rc = cli_doctor_section(o, &v[i], &ran, &sec, &d, NULL)) != 0)
            break;
        if (n == 1 && o->job) {
            char label[40];
            snprintf(label, sizeof label, "what ran (%.24s)", ran.cfg.policy);
            cli_job_record(o->job, t, 0, label, d.peak_live, d.rows[0].min_capacity);
            if (d.fragless_row > 0)
                cli_job_record(o->job, t, 1, "fragless", d.peak_live, d.rows[d.fragless_row].min_capacity);
        }
        if (json) {
            printf("%s", i ? ",\n " : "");
            print_json(v[i].p, &ran, &d, &sec);
        } else {
            if (i)
                printf("\n----------------------------------------------------------------------------------------\n\n");
            print_text(v[i].p, &ran, &d, &sec);
        }
    }
    if (json && !rc)
        printf(n > 1 ? "]" : "");
    fli_loaded_free(v, n);
    return rc;
}

int cli_doctor(const cli_opts *o)
{
    if (!fli_policy_find(o->policies)) {
        fprintf(stderr, "fragless: unknown policy '%s' (fragless, cca, cca-expandable, nocache)\n", o->policies);
        return CLI_EXIT_USAGE;
    }
    int json = !strcmp(o->format, "json"), rc = 0;
    if (!o->job) {
        rc = doctor_input(o, 0);
        if (json && !rc)
            printf("\n");
        return rc;
    }
    /* A job: each rank's diagnosis, then the ranks side by side. */
    o->job->metric = "min_capacity";
    if (json)
        printf("{\"ranks\": [");
    for (int t = 0; t < o->n_traces && !rc; t++) {
        if (json)
            printf("%s", t ? ",\n " : "");
        else if (t)
            printf("\n========================================================================================\n\n");
        if (!json)
            printf("rank %d: %s\n\n", o->job->rank[t], o->traces[t]);
        rc = doctor_input(o, t);
    }
    if (rc)
        return rc;
    if (json) {
        printf("],\n \"job\": ");
        cli_job_print_json(o->job);
        printf("}\n");
    } else {
        cli_job_print_text(o->job);
    }
    return 0;
}
