/* What an input file is (one rule for every command: compare, replay, doctor, report,
 * import, fidelity), and loading a trace from it: an RMM CSV log or a PyTorch memory
 * snapshot, read, checked for events and prepared. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <stdlib.h>

#include "replay/input.h"

/* The first bytes of a file, quoted for a message: printable ASCII as is, the rest as
 * \xNN (a binary file's bytes are no text to print). */
static void quote_start(const unsigned char *b, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\')
            out[o++] = (char)b[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", b[i]);
    }
    out[o] = 0;
}

fl_status fli_input_detect(const char *path, fli_input_kind *kind)
{
    *kind = FL_INPUT_CSV;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fli_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char b[128]; /* a zip's first member name too (torch.save: ARCHIVE/data.pkl) */
    size_t n = fread(b, 1, sizeof b, f);
    int last = -1;
    struct stat st;
    if (n && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && fseeko(f, -1, SEEK_END) == 0)
        last = fgetc(f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return fli_fail(FL_ERR_IO, "%s: cannot read", path);
    size_t ws = 0;
    while (ws < n && (b[ws] == ' ' || b[ws] == '\t' || b[ws] == '\n' || b[ws] == '\r'))
        ws++;
    if (n == 0)
        return fli_fail(FL_ERR_PARSE, "%s: empty file: nothing to read", path);
    if (ws == n && n < sizeof b)
        return fli_fail(FL_ERR_PARSE, "%s: empty file (white space only): nothing to read", path);
    /* Protocol 2 and later begin with PROTO (0x80). Protocols 0 and 1 have no PROTO: a
     * snapshot's root (a dict; a list or tuple is refused later with a message) begins
     * with MARK, EMPTY_DICT, EMPTY_LIST or EMPTY_TUPLE, and every pickle ends with STOP
     * ('.'), which neither a CSV log (first byte 'T') nor JSON can combine. */
    if (b[0] == 0x80 || (strchr("(}])", b[0]) && last == '.')) {
        *kind = FL_INPUT_PICKLE;
        return FL_OK;
    }
    /* A zip's local file header. torch.save writes one whose members are ARCHIVE/data.pkl
     * and the tensors' data: the model, not the allocator's history. */
    if (n >= 4 && !memcmp(b, "PK\x03\x04", 4)) {
        size_t end = n >= 30 ? 30 + ((size_t)b[26] | (size_t)b[27] << 8) : 0;
        if (end > n)
            end = n; /* a longer name is cut: then it is only "a zip archive" */
        int torch = 0;
        for (size_t i = 30; i + 8 <= end; i++)
            torch |= !memcmp(b + i, "data.pkl", 8);
        return fli_fail(FL_ERR_PARSE,
                       "%s: %s, not a memory snapshot: record one with "
                       "torch.cuda.memory._record_memory_history() before the steps to study, then "
                       "torch.cuda.memory._dump_snapshot('snapshot.pickle')",
                       path, torch ? "a PyTorch checkpoint (torch.save zip)" : "a zip archive (torch.save writes "
                                                                              "checkpoints as zips)");
    }
    if (ws < n && b[ws] == '{') {
        *kind = FL_INPUT_STATE;
        return FL_OK;
    }
    /* Text is left to the CSV reader, whose messages say what is wrong with a header;
     * bytes no text file holds are none of the three. */
    for (size_t i = 0; i < n; i++) {
        if (b[i] == 0 || (b[i] < 0x20 && b[i] != '\n' && b[i] != '\r' && b[i] != '\t') || b[i] == 0x7f) {
            char q[64 * 4 + 1];
            quote_start(b, n < 16 ? n : 16, q, sizeof q);
            return fli_fail(FL_ERR_PARSE,
                           "%s: not a trace or snapshot: it starts with '%s'; expected an RMM CSV log (header "
                           "Thread,Time,Action,Pointer,Size,Stream), a PyTorch memory snapshot (pickle) or a "
                           "fragless state snapshot (JSON)",
                           path, q);
        }
        if (b[i] == '\n')
            break;
    }
    return FL_OK;
}

fl_status fli_load_trace(const char *path, FILE *warn, fli_prepared **out)
{
    return fli_load_trace_ex(path, 0, warn, out, NULL);
}

fl_status fli_load_trace_ex(const char *path, int device, FILE *warn, fli_prepared **out, fli_snapshot_info *info)
{
    fli_trace t; /* the readers initialise it, and leave it empty on error */
    fli_snapshot_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    fli_input_kind kind;
    fl_status s = fli_input_detect(path, &kind);
    if (s != FL_OK)
        return s;
    if (kind == FL_INPUT_STATE)
        return fli_fail(FL_ERR_PARSE, "%s: a fragless state snapshot (JSON), not a trace: it has no events to "
                                     "replay; `fragless report` draws it",
                       path);
    s = kind == FL_INPUT_PICKLE ? fli_trace_read_snapshot(path, device, &t, info) : fli_trace_read_csv(path, &t);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; warn && i < t.n_warnings; i++)
        fprintf(warn, "warning: %s\n", t.warnings[i]);
    /* Nothing to replay: every figure would be 0 or a ratio over 0. */
    if (t.n == 0) {
        fli_trace_free(&t);
        return kind == FL_INPUT_PICKLE
                   ? fli_fail(FL_ERR_PARSE, "%s: no events: device_traces[%d] is empty and no block was allocated "
                                           "at dump (was _record_memory_history() on?)",
                             path, device)
                   : fli_fail(FL_ERR_PARSE, "%s: no events: the trace has a header and nothing else", path);
    }
    s = fli_prepare(&t, out);
    fli_trace_free(&t);
    if (s == FL_OK)
        for (size_t i = 0; warn && i < (*out)->n_warnings; i++)
            fprintf(warn, "warning: %s\n", (*out)->warnings[i]);
    return s;
}

void fli_loaded_free(fli_loaded *v, int n)
{
    for (int i = 0; v && i < n; i++)
        fli_prepared_free(v[i].p);
    free(v);
}

/* "devices 0 and 2", "device 1": at most a few named. */
static void name_devices(char *buf, size_t cap, const int *d, int n)
{
    size_t o = (size_t)snprintf(buf, cap, "device%s", n == 1 ? "" : "s");
    for (int i = 0; i < n && o < cap; i++) {
        if (i == 6) {
            snprintf(buf + o, cap - o, " and %d more", n - i);
            break;
        }
        o += (size_t)snprintf(buf + o, cap - o, "%s%d", i == 0 ? " " : i + 1 == n ? " and " : ", ", d[i]);
    }
}

/* Converts and prepares one device of a parsed snapshot. */
static fl_status load_device(const fli_pk_doc *doc, const char *path, int device, int n_devices, FILE *warn,
                             fli_loaded *out)
{
    fli_trace t;
    fl_status s = fli_snapshot_to_trace(doc, path, device, &t, &out->info);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; warn && i < t.n_warnings; i++)
        fprintf(warn, "warning: %s\n", t.warnings[i]);
    if (t.n == 0) {
        fli_trace_free(&t);
        return fli_fail(FL_ERR_PARSE, "%s: no events: device_traces[%d] is empty and no block of device %d was "
                                     "allocated at dump (was _record_memory_history() on?)",
                       path, device, device);
    }
    s = fli_prepare(&t, &out->p);
    fli_trace_free(&t);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; warn && i < out->p->n_warnings; i++)
        fprintf(warn, "warning: %s\n", out->p->warnings[i]);
    if (n_devices > 1) {
        char *name = malloc(strlen(out->p->name) + 24);
        if (!name)
            return fli_fail(FL_ERR_NOMEM, "%s: host memory", path);
        sprintf(name, "%s (device %d)", out->p->name, device);
        free(out->p->name);
        out->p->name = name;
    }
    return FL_OK;
}

#define MAX_DEVICES 1024

fl_status fli_load_inputs(const char *path, int device, FILE *warn, fli_loaded **out, int *n)
{
    *out = NULL;
    *n = 0;
    fli_input_kind kind;
    fl_status s = fli_input_detect(path, &kind);
    if (s != FL_OK)
        return s;
    if (kind != FL_INPUT_PICKLE) {
        fli_loaded *v = calloc(1, sizeof *v);
        if (!v)
            return fli_fail(FL_ERR_NOMEM, "%s: host memory", path);
        if ((s = fli_load_trace_ex(path, 0, warn, &v->p, &v->info)) != FL_OK) {
            free(v);
            return s;
        }
        *out = v;
        *n = 1;
        return FL_OK;
    }
    fli_pk_doc *doc;
    if ((s = fli_pickle_load(path, FL_SNAPSHOT_MAX_BYTES, &doc)) != FL_OK)
        return s;
    fli_snapshot_device dev[MAX_DEVICES];
    int nd = 0, pick[MAX_DEVICES], np = 0, with_events[MAX_DEVICES], ne = 0;
    if ((s = fli_snapshot_devices(doc, path, dev, MAX_DEVICES, &nd)) != FL_OK)
        goto out;
    if (nd > MAX_DEVICES)
        nd = MAX_DEVICES;
    for (int d = 0; d < nd; d++)
        if (dev[d].n_entries || dev[d].n_active_blocks)
            with_events[ne++] = d;
    char list[160];
    name_devices(list, sizeof list, with_events, ne);
    if (device >= 0 || device < FL_DEVICE_ALL) {
        if (device < 0 || device >= nd) {
            s = fli_fail(FL_ERR_INVALID, "%s: no device %d: the snapshot has %d device trace%s%s%s", path, device, nd,
                        nd == 1 ? "" : "s", ne ? "; events on " : "", ne ? list : "");
            goto out;
        }
        if (!dev[device].n_entries && !dev[device].n_active_blocks) {
            s = fli_fail(FL_ERR_PARSE, "%s: no events on device %d: device_traces[%d] is empty and no block of it was "
                                      "allocated at dump%s%s",
                        path, device, device, ne ? "; events are on " : "", ne ? list : "");
            goto out;
        }
        pick[np++] = device;
    } else {
        for (int d = 0; device == FL_DEVICE_DEFAULT && d < nd; d++)
            if (dev[d].n_oom)
                pick[np++] = d;
        if (np && np < ne && warn) {
            char oom[160];
            name_devices(oom, sizeof oom, pick, np);
            fprintf(warn, "note: %s: the out-of-memory is on %s: read %s (events on %s; --device N for another)\n",
                    path, oom, np == 1 ? "it" : "them", list);
        }
        if (!np)
            for (int i = 0; i < ne; i++)
                pick[np++] = with_events[i];
        if (!np && !nd) { /* no device named, and the snapshot has none: the input's fault */
            s = fli_fail(FL_ERR_PARSE, "%s: device_traces is empty: the snapshot holds no device's trace", path);
            goto out;
        }
        if (!np)
            pick[np++] = 0; /* nothing anywhere: device 0 says so */
    }
    fli_loaded *v = calloc((size_t)np, sizeof *v);
    if (!v) {
        s = fli_fail(FL_ERR_NOMEM, "%s: host memory", path);
        goto out;
    }
    for (int i = 0; i < np; i++) {
        if ((s = load_device(doc, path, pick[i], nd, warn, &v[i])) != FL_OK) {
            fli_loaded_free(v, i + 1);
            goto out;
        }
    }
    *out = v;
    *n = np;
out:
    fli_pickle_free(doc);
    return s;
}
