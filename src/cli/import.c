/* `fragless import`: a PyTorch memory snapshot (pickle) converted into an RMM CSV trace,
 * with a one-line summary of what was converted and reconstructed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "pytorch/snapshot.h"

static const char import_help[] =
    "usage: fragless import SNAPSHOT.pickle -o TRACE.csv [--device N]\n"
    "\n"
    "Converts a PyTorch memory snapshot (torch.cuda.memory._dump_snapshot) into an RMM\n"
    "CSV trace that replay, compare and doctor read. The pickle is read by a restricted\n"
    "reader: plain data only (dicts, lists, str, int, float, bool, None); a pickle that\n"
    "would import or call code is refused, never run.\n"
    "\n"
    "  -o, --output FILE  the trace to write (required)\n"
    "  --device N         the device whose history is converted (default: the device with\n"
    "                     the out-of-memory, else every device with events; several are\n"
    "                     written to FILE with .devN before its extension)\n"
    "\n"
    "mapping (entries of device_traces[N]):\n"
    "  alloc             -> allocate, with the requested size\n"
    "  free_completed    -> free (free_requested when no completion was recorded)\n"
    "  oom               -> allocate failure, with the requested size\n"
    "  segment_*, snapshot: not allocations; counted only (compare, doctor and report\n"
    "                     read the snapshot itself and follow them; a CSV trace cannot)\n"
    "Blocks alive before recording began are allocated first, at time 0: blocks still\n"
    "allocated in the snapshot's segments that the trace never mentions, then blocks the\n"
    "trace frees without having allocated them.\n"
    "\n"
    "exit codes: 0 done; 1 bad usage; 2 the snapshot could not be read or is malformed;\n"
    "            4 the trace could not be written\n";

static int import_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "fragless: import: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", import_help);
    return CLI_EXIT_USAGE;
}

/* argv holds the arguments after the word `import`. */
int cli_import_parse(int argc, char **argv, cli_import_opts *o)
{
    o->in = o->out = NULL;
    o->device = -1; /* every device with events (fli_load_inputs' default) */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(import_help, stdout);
            return CLI_HELP_SHOWN;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!v)
                return import_usage("option '%s' needs a value", a);
            o->out = v;
            i++;
        } else if (!strcmp(a, "--device")) {
            char *end;
            if (!v)
                return import_usage("option '%s' needs a value", a);
            errno = 0;
            long d = strtol(v, &end, 10);
            if (errno || end == v || *end || d < 0 || d > 1023)
                return import_usage("--device '%s': expected a device number from 0 to 1023", v);
            o->device = (int)d;
            i++;
        } else if (a[0] == '-' && a[1]) {
            return import_usage("unknown option '%s'", a);
        } else if (o->in) {
            return import_usage("one snapshot at a time (got '%s' too)", a);
        } else {
            o->in = a;
        }
    }
    if (!o->in)
        return import_usage("no snapshot given%s", "");
    if (!o->out)
        return import_usage("no output given: -o TRACE.csv%s", "");
    return 0;
}

int cli_import(int argc, char **argv)
{
    cli_import_opts o;
    int rc = cli_import_parse(argc, argv, &o);
    if (rc)
        return rc == CLI_HELP_SHOWN ? CLI_EXIT_OK : rc;
    const char *in = o.in, *out = o.out;
    int device = o.device;

    fli_input_kind kind;
    fl_status s = fli_input_detect(in, &kind);
    if (s == FL_OK && kind != FL_INPUT_PICKLE)
        s = fli_fail(FL_ERR_PARSE, "%s: not a PyTorch memory snapshot (a pickle): it reads as %s", in,
                    kind == FL_INPUT_STATE ? "a fragless state snapshot (JSON)" : "text (an RMM CSV trace?)");
    fli_pk_doc *doc = NULL;
    if (s == FL_OK)
        s = fli_pickle_load(in, FL_SNAPSHOT_MAX_BYTES, &doc);
    /* Which devices: the one asked for, else those with an oom entry, else those with events. */
    enum { MAX_DEV = 1024 };
    fli_snapshot_device dev[MAX_DEV];
    int nd = 0, pick[MAX_DEV], np = 0;
    if (s == FL_OK)
        s = fli_snapshot_devices(doc, in, dev, MAX_DEV, &nd);
    if (s == FL_OK) {
        if (nd > MAX_DEV)
            nd = MAX_DEV;
        if (device >= 0)
            pick[np++] = device;
        for (int d = 0; device < 0 && d < nd; d++)
            if (dev[d].n_oom)
                pick[np++] = d;
        for (int d = 0; device < 0 && !np && d < nd; d++)
            if (dev[d].n_entries || dev[d].n_active_blocks)
                pick[np++] = d;
        if (!np)
            pick[np++] = 0;
    }
    rc = CLI_EXIT_OK;
    for (int k = 0; s == FL_OK && k < np && rc == CLI_EXIT_OK; k++) {
        fli_trace t;
        fli_snapshot_info info;
        if ((s = fli_snapshot_to_trace(doc, in, pick[k], &t, &info)) != FL_OK)
            break;
        for (size_t i = 0; i < t.n_warnings; i++)
            fprintf(stderr, "fragless: warning: %s\n", t.warnings[i]);
        char path[4096];
        const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
        if (np == 1)
            snprintf(path, sizeof path, "%s", out);
        else if (dot && (!slash || dot > slash))
            snprintf(path, sizeof path, "%.*s.dev%d%s", (int)(dot - out), out, pick[k], dot);
        else
            snprintf(path, sizeof path, "%s.dev%d", out, pick[k]);
        if (fli_trace_write_csv(path, &t) != FL_OK) {
            fprintf(stderr, "fragless: %s\n", fl_last_error());
            rc = CLI_EXIT_ERROR;
        } else {
            char reserved[32];
            fl_format_size(info.reserved_bytes, reserved, sizeof reserved);
            uint64_t events = info.n_events - info.n_segment_free - info.n_segment_unmap;
            uint64_t synth = info.n_synth_freed + info.n_synth_live;
            fprintf(stderr,
                    "fragless: %s device %d -> %s: %llu event%s from %llu entr%s (%llu alloc, %llu %s, %llu oom), "
                    "%llu synthetic allocation%s (%llu freed in the trace, %llu live at dump), %llu stream%s, "
                    "reserved at dump %s in %llu segment%s",
                    in, pick[k], path, (unsigned long long)events, cli_plural(events),
                    (unsigned long long)info.n_entries, info.n_entries == 1 ? "y" : "ies", (unsigned long long)info.n_alloc,
                    (unsigned long long)(info.frees_completed ? info.n_free_completed : info.n_free_requested),
                    info.frees_completed ? "free_completed" : "free_requested", (unsigned long long)info.n_oom,
                    (unsigned long long)synth, cli_plural(synth), (unsigned long long)info.n_synth_freed,
                    (unsigned long long)info.n_synth_live, (unsigned long long)info.n_streams,
                    cli_plural(info.n_streams), reserved, (unsigned long long)info.n_segments,
                    cli_plural(info.n_segments));
            if (info.n_segment_free + info.n_segment_unmap || info.n_old_segments)
                fprintf(stderr, "; not in the CSV: %llu segments given back, %llu segments older than the recording "
                                "(replay the snapshot itself to follow them)",
                        (unsigned long long)(info.n_segment_free + info.n_segment_unmap),
                        (unsigned long long)info.n_old_segments);
            fprintf(stderr, "\n");
        }
        fli_trace_free(&t);
    }
    fli_pickle_free(doc);
    if (s != FL_OK) {
        fprintf(stderr, "fragless: %s\n", fl_last_error());
        return s == FL_ERR_INVALID ? CLI_EXIT_USAGE
               : (s == FL_ERR_PARSE || s == FL_ERR_IO) ? CLI_EXIT_INPUT
                                                       : CLI_EXIT_ERROR;
    }
    return rc;
}
