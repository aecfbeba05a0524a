/* What an input file is (one rule for every command: compare, replay, doctor, report,
 * import, fidelity), and loading a trace from it: an RMM CSV log or a PyTorch memory
 * snapshot, read, checked for events and prepared. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "pytorch/snapshot.h"
#include "replay/replay.h"

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

fl_status fl_input_detect(const char *path, fl_input_kind *kind)
{
    *kind = FL_INPUT_CSV;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fl_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char b[128]; /* a zip's first member name too (torch.save: ARCHIVE/data.pkl) */
    size_t n = fread(b, 1, sizeof b, f);
    int last = -1;
    struct stat st;
    if (n && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && fseeko(f, -1, SEEK_END) == 0)
        last = fgetc(f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return fl_fail(FL_ERR_IO, "%s: cannot read", path);
    size_t ws = 0;
    while (ws < n && (b[ws] == ' ' || b[ws] == '\t' || b[ws] == '\n' || b[ws] == '\r'))
        ws++;
    if (n == 0)
        return fl_fail(FL_ERR_PARSE, "%s: empty file: nothing to read", path);
    if (ws == n && n < sizeof b)
        return fl_fail(FL_ERR_PARSE, "%s: empty file (white space only): nothing to read", path);
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
        return fl_fail(FL_ERR_PARSE,
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
            return fl_fail(FL_ERR_PARSE,
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

fl_status fl_load_trace(const char *path, FILE *warn, fl_prepared **out)
{
    return fl_load_trace_ex(path, 0, warn, out, NULL);
}

fl_status fl_load_trace_ex(const char *path, int device, FILE *warn, fl_prepared **out, fl_snapshot_info *info)
{
    fl_trace t; /* the readers initialise it, and leave it empty on error */
    fl_snapshot_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    fl_input_kind kind;
    fl_status s = fl_input_detect(path, &kind);
    if (s != FL_OK)
        return s;
    if (kind == FL_INPUT_STATE)
        return fl_fail(FL_ERR_PARSE, "%s: a fragless state snapshot (JSON), not a trace: it has no events to "
                                     "replay; `fragless report` draws it",
                       path);
    s = kind == FL_INPUT_PICKLE ? fl_trace_read_snapshot(path, device, &t, info) : fl_trace_read_csv(path, &t);
    if (s != FL_OK)
        return s;
    for (size_t i = 0; warn && i < t.n_warnings; i++)
        fprintf(warn, "warning: %s\n", t.warnings[i]);
    /* Nothing to replay: every figure would be 0 or a ratio over 0. */
    if (t.n == 0) {
        fl_trace_free(&t);
        return kind == FL_INPUT_PICKLE
                   ? fl_fail(FL_ERR_PARSE, "%s: no events: device_traces[%d] is empty and no block was allocated "
                                           "at dump (was _record_memory_history() on?)",
                             path, device)
                   : fl_fail(FL_ERR_PARSE, "%s: no events: the trace has a header and nothing else", path);
    }
    s = fl_prepare(&t, out);
    fl_trace_free(&t);
    if (s == FL_OK)
        for (size_t i = 0; warn && i < (*out)->n_warnings; i++)
            fprintf(warn, "warning: %s\n", (*out)->warnings[i]);
    return s;
}
