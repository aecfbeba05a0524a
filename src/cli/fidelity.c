/* `fragless fidelity`: how far the PyTorch emulation is from the real allocator. Each
 * snapshot is replayed under the allocator and knobs it recorded; the memory the
 * emulation holds at the end is compared with what the snapshot's segments hold. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "pytorch/snapshot.h"

static const char fidelity_help[] =
    "usage: fragless fidelity SNAPSHOT.pickle... [--format text|csv|json]\n"
    "\n"
    "Replays each PyTorch memory snapshot under the allocator it was recorded with (cca,\n"
    "or cca-expandable when its allocator_settings say so, with its recorded knobs) and\n"
    "compares the reserved memory at the end of the replay with the reserved memory the\n"
    "snapshot's segments recorded (the sum of their total_size). diff = emulated / recorded - 1.\n"
    "\n"
    "  --format F        text (default; table is the same), csv or json\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 unreadable or malformed snapshot; 4 other error\n";

int cli_fidelity_parse(int argc, char **argv, cli_fidelity_opts *o)
{
    o->csv = o->json = o->n_snapshots = 0;
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
    cli_fidelity_opts fo;
    int rc = cli_fidelity_parse(argc, argv, &fo);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    int csv = fo.csv, json = fo.json, first = 1;
    if (csv)
        printf("snapshot,policy,recorded_reserved,emulated_reserved,emulated_peak_reserved,diff\n");
    else if (json)
        printf("[");
    else
        printf("%-32s %-15s %14s %14s %14s %8s\n", "snapshot", "policy", "recorded GiB", "emulated GiB",
               "emul. peak GiB", "diff");
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-') {
            i += !strcmp(argv[i], "--format");
            continue;
        }
        fl_snapshot_info info;
        fl_prepared *p;
        fl_status s = fl_load_trace_ex(argv[i], 0, stderr, &p, &info);
        if (s != FL_OK) {
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            return s == FL_ERR_INVALID ? CLI_EXIT_USAGE : (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT : CLI_EXIT_ERROR;
        }
        if (!info.n_devices) {
            fprintf(stderr, "fragless: fidelity: %s is not a PyTorch snapshot (no recorded segments to compare)\n",
                    argv[i]);
            fl_prepared_free(p);
            return CLI_EXIT_INPUT;
        }
        fl_replay_opts o;
        memset(&o, 0, sizeof o);
        fl_snapshot_config(&info, &o.cfg);
        fl_sim_params_default(&o.sim);
        fl_replay_result r;
        if ((s = fl_replay(p, &o, &r)) != FL_OK) {
            fprintf(stderr, "fragless: %s: %s\n", p->name, fl_last_error());
            fl_prepared_free(p);
            return CLI_EXIT_ERROR;
        }
        /* A snapshot whose segments hold nothing (none recorded, or all of 0 bytes) has no
         * ratio to compare with: "-" in the table, an empty CSV field; never nan. */
        char diff[32] = "";
        if (info.reserved_bytes) {
            double d = (double)r.end_reserved / (double)info.reserved_bytes - 1.0;
            snprintf(diff, sizeof diff, csv ? "%.4f" : "%+7.2f%%", csv ? d : 100.0 * d);
        } else if (!csv) {
            snprintf(diff, sizeof diff, "-");
        }
        if (json) {
            printf("%s\n  {\"snapshot\": ", first ? "" : ",");
            cli_json_str(p->name);
            printf(", \"policy\": \"%s\", \"recorded_reserved\": %llu, \"emulated_reserved\": %llu, "
                   "\"emulated_peak_reserved\": %llu, \"diff\": ",
                   o.cfg.policy, (unsigned long long)info.reserved_bytes, (unsigned long long)r.end_reserved,
                   (unsigned long long)r.peak_reserved);
            cli_json_num(info.reserved_bytes ? (double)r.end_reserved / (double)info.reserved_bytes - 1.0 : NAN, 4);
            printf("}");
        } else if (csv)
            printf("%s,%s,%llu,%llu,%llu,%s\n", p->name, o.cfg.policy, (unsigned long long)info.reserved_bytes,
                   (unsigned long long)r.end_reserved, (unsigned long long)r.peak_reserved, diff);
        else
            printf("%-32s %-15s %14.3f %14.3f %14.3f %8s\n", p->name, o.cfg.policy,
                   (double)info.reserved_bytes / (double)FL_GiB, (double)r.end_reserved / (double)FL_GiB,
                   (double)r.peak_reserved / (double)FL_GiB, diff);
        first = 0;
        fl_replay_result_free(&r);
        fl_prepared_free(p);
    }
    if (json)
        printf("\n]\n");
    return CLI_EXIT_OK;
}
