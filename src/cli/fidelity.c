/* `fragless fidelity`: how far the PyTorch emulation is from the real allocator. Each
 * snapshot (each device of it) is replayed under the allocator and knobs it recorded,
 * following what the recorded allocator did (src/replay/fidelity.c); the memory the
 * emulation holds at the end is compared with what the snapshot's segments hold. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static const char fidelity_help[] =
    "usage: fragless fidelity SNAPSHOT.pickle... [--device N] [--format text|csv|json]\n"
    "\n"
    "Replays each PyTorch memory snapshot under the allocator it was recorded with (cca,\n"
    "or cca-expandable when its allocator_settings say so, with its recorded knobs),\n"
    "following the recorded allocator: segments it held before recording began are\n"
    "rebuilt from the snapshot as they were then, and segments it gave back (empty_cache,\n"
    "the retry after a failed cudaMalloc: segment_free / segment_unmap entries) are given\n"
    "back where it did. Compares the reserved memory at the end of the replay with the\n"
    "reserved memory the snapshot's segments recorded (the sum of their total_size).\n"
    "\n"
    "  diff        emulated / recorded - 1\n"
    "  recording   'covers all': every segment was allocated while recording, so the\n"
    "              emulation starts from an empty allocator as the real one did;\n"
    "              'N older': N segments predate the recording: rebuilt from the dump,\n"
    "              their layout then inferred from the blocks live at the start\n"
    "  released    bytes the recorded allocator gave back / the emulation gave back\n"
    "  unexplained where recording does not cover the segments: the difference the\n"
    "              snapshot cannot account for (|emulated - recorded|)\n"
    "\n"
    "  --device N   the device to compare (default: every device with events)\n"
    "  --format F   text (default; table is the same), csv or json\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 unreadable or malformed snapshot; 4 other error\n";

static double gib(uint64_t b) { return (double)b / (double)FL_GiB; }

static void row(int csv, int json, int first, const fli_prepared *p, const fli_snapshot_info *info, const fli_fidelity *f)
{
    uint64_t unexplained = f->covered ? 0 : f->emulated > f->recorded ? f->emulated - f->recorded
                                                                     : f->recorded - f->emulated;
    if (json) {
        printf("%s\n  {\"snapshot\": ", first ? "" : ",");
        cli_json_str(p->name);
        printf(", \"device\": %d, \"policy\": \"%s\", \"recorded_reserved\": %llu, \"emulated_reserved\": %llu, "
               "\"emulated_peak_reserved\": %llu, \"diff\": ", info->device, f->policy, (unsigned long long)f->recorded,
               (unsigned long long)f->emulated, (unsigned long long)f->emulated_peak);
        cli_json_num(f->diff, 4);
        printf(", \"covered\": %s, \"old_segments\": %llu, \"recorded_released\": %llu, \"emulated_released\": %llu, "
               "\"unexplained\": %llu}", f->covered ? "true" : "false", (unsigned long long)f->old_segments,
               (unsigned long long)f->recorded_released, (unsigned long long)f->emulated_released,
               (unsigned long long)unexplained);
        return;
    }
    if (csv) {
        printf("%s,%d,%s,%llu,%llu,%llu,", p->name, info->device, f->policy, (unsigned long long)f->recorded,
               (unsigned long long)f->emulated, (unsigned long long)f->emulated_peak);
        if (isfinite(f->diff))
            printf("%.4f", f->diff);
        printf(",%d,%llu,%llu,%llu,%llu,%llu,%llu,%llu\n", f->covered, (unsigned long long)f->old_segments,
               (unsigned long long)f->old_bytes, (unsigned long long)f->seeded_segments,
               (unsigned long long)f->recorded_released, (unsigned long long)f->emulated_released,
               (unsigned long long)(f->covered ? 0 : unexplained), (unsigned long long)f->seed_failures);
        return;
    }
    char diff[16] = "-", rec[32], rel[40], unexp[16] = "-";
    if (isfinite(f->diff))
        snprintf(diff, sizeof diff, "%+.2f%%", 100.0 * f->diff);
    if (f->covered)
        snprintf(rec, sizeof rec, "covers all");
    else
        snprintf(rec, sizeof rec, "%llu older%s", (unsigned long long)f->old_segments,
                 f->seed_failures ? " (!)" : "");
    snprintf(rel, sizeof rel, "%.3f / %.3f", gib(f->recorded_released), gib(f->emulated_released));
    if (!f->covered)
        snprintf(unexp, sizeof unexp, "%.3f", gib(unexplained));
    printf("%-42s %-14s %10.3f %10.3f %8s  %-14s %17s %11s\n", p->name, f->policy, gib(f->recorded),
           gib(f->emulated), diff, rec, rel, unexp);
}

int cli_fidelity_parse(int argc, char **argv, cli_fidelity_opts *o)
{
    o->csv = o->json = o->n_snapshots = 0;
    o->device = FL_DEVICE_ALL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(fidelity_help, stdout);
            return CLI_HELP_SHOWN;
        }
        if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            const char *f = argv[++i];
            if (strcmp(f, "text") && strcmp(f, "table") && strcmp(f, "csv") && strcmp(f, "json")) {
                fprintf(stderr, "fragless: fidelity: --format '%s': expected text, csv or json\n\n%s", f,
                        fidelity_help);
                return CLI_EXIT_USAGE;
            }
            o->csv = !strcmp(f, "csv");
            o->json = !strcmp(f, "json");
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            if (cli_parse_device(argv[++i], &o->device)) {
                fprintf(stderr, "fragless: fidelity: --device '%s': expected a device number from 0 to 1023\n\n%s",
                        argv[i], fidelity_help);
                return CLI_EXIT_USAGE;
            }
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "fragless: fidelity: unknown or incomplete option '%s'\n\n%s", argv[i], fidelity_help);
            return CLI_EXIT_USAGE;
        } else {
            o->n_snapshots++;
        }
    }
    if (!o->n_snapshots) {
        fprintf(stderr, "fragless: fidelity: no snapshot given\n\n%s", fidelity_help);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_fidelity(int argc, char **argv)
{
    cli_fidelity_opts o;
    int rc = cli_fidelity_parse(argc, argv, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    int csv = o.csv, json = o.json, device = o.device, first = 1;
    if (json)
        printf("[");
    else if (csv)
        printf("snapshot,device,policy,recorded_reserved,emulated_reserved,emulated_peak_reserved,diff,covered,"
               "old_segments,old_bytes,rebuilt_segments,recorded_released,emulated_released,unexplained,"
               "rebuild_failures\n");
    else
        printf("%-42s %-14s %10s %10s %8s  %-14s %17s %11s\n", "snapshot", "policy", "recorded", "emulated", "diff",
               "recording", "released rec/emu", "unexplained");
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-') {
            i += !strcmp(argv[i], "--format") || !strcmp(argv[i], "--device");
            continue;
        }
        fli_input_kind kind;
        fl_status s = fli_input_detect(argv[i], &kind);
        if (s == FL_OK && kind != FL_INPUT_PICKLE) {
            fprintf(stderr, "fragless: fidelity: %s is not a PyTorch snapshot (no recorded segments to compare)\n",
                    argv[i]);
            return CLI_EXIT_INPUT;
        }
        fli_loaded *v = NULL;
        int nv = 0;
        if (s == FL_OK)
            s = fli_load_inputs(argv[i], device, stderr, &v, &nv);
        if (s != FL_OK) {
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
        }
        for (int k = 0; k < nv; k++) {
            fli_fidelity f;
            if ((s = fli_fidelity_run(v[k].p, &v[k].info, 0, &f)) != FL_OK) {
                fprintf(stderr, "fragless: %s: %s\n", v[k].p->name, fl_last_error());
                fli_loaded_free(v, nv);
                return CLI_EXIT_ERROR;
            }
            row(csv, json, first, v[k].p, &v[k].info, &f);
            first = 0;
        }
        fli_loaded_free(v, nv);
    }
    if (json)
        printf("\n]\n");
    else if (!csv)
        printf("\nsizes in GiB. 'covers all': every segment's allocation was recorded (the emulation starts empty,\n"
               "as the real allocator did); 'N older': N segments predate the recording and were rebuilt from\n"
               "the dump, so the part of the difference they may cause is unexplained.\n");
    return CLI_EXIT_OK;
}
