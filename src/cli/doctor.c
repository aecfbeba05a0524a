/* `fragless doctor`: prints the diagnosis of one trace as text a user can act on, or
 * as JSON for tools. The analysis itself is src/replay/doctor.c. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "replay/doctor.h"
#include "pytorch/snapshot.h"

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

static void print_text(const fl_prepared *p, const fl_replay_opts *ran, const fl_diagnosis *d)
{
    char a[32], b[32], c[32], e[32];
    printf("fragless doctor: %s (%zu events, %llu stream%s); what you ran: %s%s%s\n\n", p->name, p->n_ops,
           (unsigned long long)p->n_streams, p->n_streams == 1 ? "" : "s", ran->cfg.policy,
           ran->cfg.expandable_segments ? " with expandable_segments" : "",
           ran->cfg.max_split_size ? " with max_split_size" : "");

    if (d->recorded_failures)
        printf("The trace records %llu failed allocation%s; the first asked %s at event %zu.\n\n",
               (unsigned long long)d->recorded_failures, d->recorded_failures == 1 ? "" : "s",
               gib(d->first_recorded_size, a, sizeof a), d->first_recorded_op);
    if (!d->has_oom) {
        if (d->capacity)
            printf("No out-of-memory at a capacity of %s under %s: the job fits.\n\n", gib(d->capacity, a, sizeof a),
                   ran->cfg.policy);
        else
            printf("No capacity given: run with --capacity SIZE (your GPU's memory) to diagnose an "
                   "out-of-memory.\n\n");
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
                   gib(o->capacity, e, sizeof e));
        else
            printf("Verdict: EXHAUSTION. Live %s + asked %s = %s is more than the capacity of %s:\n"
                   "no allocator can fit this; the job needs more memory or less live data.\n",
                   gib(o->live, a, sizeof a), gib(o->request, b, sizeof b), gib(o->live + o->request, c, sizeof c),
                   gib(o->capacity, e, sizeof e));
        printf("  (rule: exhaustion when live + asked > capacity, fragmentation otherwise)\n\n");
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
    printf("What if: the smallest capacity that runs with no out-of-memory (peak live %s)\n",
           gib(d->peak_live, a, sizeof a));
    printf("  %-30s %12s   %s\n", "setting", "needs", "vs what you ran");
    for (int i = 0; i < d->n_rows; i++) {
        const fl_whatif *w = &d->rows[i];
        char delta[64] = "-";
        if (i > 0)
            cli_whatif_delta(delta, sizeof delta, base, w->min_capacity);
        printf("  %-30s %12s   %s\n", w->label, gib(w->min_capacity, b, sizeof b), delta);
    }

    printf("\nTo try (estimates, each with its assumption):\n");
    if (d->best_pytorch >= 0) {
        const fl_whatif *w = &d->rows[d->best_pytorch];
        printf("  - %s\n      needs %s (replayed above); the best of PyTorch's own settings here.\n", w->env,
               gib(w->min_capacity, a, sizeof a));
    }
    const fl_whatif *fx = &d->rows[d->fragless_row];
    printf("  - %s (through fragless's PyTorch plug-in)\n      needs %s (replayed above), %.4f x peak live.\n", fx->env,
           gib(fx->min_capacity, a, sizeof a), d->peak_live ? (double)fx->min_capacity / (double)d->peak_live : 0);
    if (d->idle_op)
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

static void print_json(const fl_prepared *p, const fl_replay_opts *ran, const fl_diagnosis *d)
{
    printf("{\"trace\": ");
    cli_json_str(p->name);
    printf(", \"events\": %zu, \"ran\": \"%s\", \"capacity\": %llu, \"recorded_failures\": %llu, ", p->n_ops,
           ran->cfg.policy, (unsigned long long)d->capacity, (unsigned long long)d->recorded_failures);
    if (d->has_oom) {
        printf("\"oom\": {\"event\": %zu, \"asked\": %llu, \"device_free\": %llu, \"live\": %llu, "
               "\"reserved\": %llu, \"reserved_unallocated\": %llu, \"largest_free\": %llu, "
               "\"external_fragmentation\": ",
               d->oom_op, (unsigned long long)d->oom.request, (unsigned long long)d->device_free,
               (unsigned long long)d->oom.live, (unsigned long long)d->oom.reserved,
               (unsigned long long)d->oom.free_in_reserved, (unsigned long long)d->oom.largest_free);
        cli_json_num(d->ext_frag, 4);
        printf("}, ");
    } else
        printf("\"oom\": null, ");
    printf("\"verdict\": \"%s\", \"verdict_rule\": \"exhaustion when live + asked > capacity, fragmentation "
           "otherwise\", ",
           fl_verdict_name(d->verdict));
    printf("\"peak_live\": %llu, \"peak_event\": %zu, \"persistent\": %llu, \"transient_peak\": %llu, "
           "\"persistent_at_peak\": %llu, \"transient_at_peak\": %llu, \"whatif\": [",
           (unsigned long long)d->peak_live, d->peak_op, (unsigned long long)d->persistent,
           (unsigned long long)d->transient_peak, (unsigned long long)d->persistent_at_peak,
           (unsigned long long)d->transient_at_peak);
    for (int i = 0; i < d->n_rows; i++) {
        printf("%s{\"setting\": ", i ? ", " : "");
        cli_json_str(d->rows[i].label);
        printf(", \"env\": ");
        cli_json_str(d->rows[i].env);
        printf(", \"min_capacity\": %llu}", (unsigned long long)d->rows[i].min_capacity);
    }
    printf("], \"empty_cache\": {\"event\": %zu, \"live\": %llu, \"reserved\": %llu, \"returned\": %llu}, ",
           d->idle_op, (unsigned long long)d->idle_live, (unsigned long long)d->idle_reserved,
           (unsigned long long)d->idle_returned);
    printf("\"gradient_accumulation\": {\"2\": %llu, \"4\": %llu}}\n", (unsigned long long)d->accum_need[0],
           (unsigned long long)d->accum_need[1]);
}

int cli_doctor(const cli_opts *o)
{
    if (!fl_policy_find(o->policies)) {
        fprintf(stderr, "fragless: unknown policy '%s' (fragless, cca, cca-expandable, nocache)\n", o->policies);
        return CLI_EXIT_USAGE;
    }
    fl_prepared *p;
    fl_snapshot_info info;
    fl_status s = fl_load_trace_ex(o->traces[0], 0, stderr, &p, &info);
    if (s != FL_OK) {
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
    }
    fl_replay_opts ran = o->opts;
    if (info.n_devices && !o->policy_given) {
        fl_snapshot_config(&info, &ran.cfg); /* what the snapshot says it ran */
    } else {
        snprintf(ran.cfg.policy, sizeof ran.cfg.policy, "%.31s", o->policies);
        if (ran.cfg.expandable_segments && !strcmp(ran.cfg.policy, "cca"))
            snprintf(ran.cfg.policy, sizeof ran.cfg.policy, "cca-expandable");
    }
    uint64_t capacity;
    int rc = cli_capacity_for(o, p, &capacity);
    if (rc) {
        fl_prepared_free(p);
        return rc;
    }
    if (!capacity && info.n_devices && info.oom_entry >= 0) {
        /* A snapshot dumped at an OOM: the device held what the segments hold, and had
         * device_free left. */
        if ((s = fl_snapshot_oom_capacity(&info, p->name, &capacity)) != FL_OK) {
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            fl_prepared_free(p);
            return CLI_EXIT_INPUT;
        }
        if (strcmp(o->format, "json")) {
            char a[32], b[32];
            printf("Capacity from the snapshot's oom event: %s reserved + %s free on the device.\n",
                   fl_format_size(info.reserved_bytes, a, sizeof a), fl_format_size(info.oom_device_free, b, sizeof b));
        }
    }
    fl_diagnosis d;
    if ((s = fl_diagnose(p, &ran, capacity, &d)) != FL_OK) {
        fprintf(stderr, "fragless: %s: %s\n", p->name, fl_last_error());
        fl_prepared_free(p);
        return CLI_EXIT_ERROR;
    }
    if (!strcmp(o->format, "json"))
        print_json(p, &ran, &d);
    else
        print_text(p, &ran, &d);
    fl_prepared_free(p);
    return CLI_EXIT_OK;
}
