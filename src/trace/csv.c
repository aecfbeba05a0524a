/* The fli_trace container and RMM's CSV log format (logging_resource_adaptor): a strict,
 * fast reader whose every error is "PATH:LINE: column X: 'text' problem", and the writer
 * whose output that reader reads back exactly. */
#include "trace/trace.h"
#include "util/file.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- the container ------------------------------------------------------------- */

void fli_trace_init(fli_trace *t, const char *path)
{
    memset(t, 0, sizeof *t);
    /* On host OOM path stays NULL; the readers turn that into FL_ERR_NOMEM. */
    t->path = strdup(path ? path : "");
}

void fli_trace_free(fli_trace *t)
{
    for (size_t i = 0; i < t->n_warnings; i++)
        free(t->warnings[i]);
    free(t->warnings);
    for (uint32_t i = 0; i < t->n_sites; i++)
        free(t->sites[i]);
    free(t->sites);
    free(t->seeds);
    free(t->seed_blocks);
    free(t->ev);
    free(t->path);
    memset(t, 0, sizeof *t);
}

fl_status fli_trace_push(fli_trace *t, const fli_event *e)
{
    if (FL_UNLIKELY(t->n == t->cap)) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        fli_event *ev = realloc(t->ev, cap * sizeof *ev);
        if (!ev)
            return fli_fail(FL_ERR_NOMEM, "trace: cannot grow to %zu events", cap);
        t->ev = ev;
        t->cap = cap;
    }
    t->ev[t->n++] = *e;
    return FL_OK;
}

fl_status fli_trace_warn(fli_trace *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (len < 0)
        return fli_fail(FL_ERR_INVALID, "trace: bad warning format '%s'", fmt);
    char *msg = malloc((size_t)len + 1);
    char **list = msg ? realloc(t->warnings, (t->n_warnings + 1) * sizeof *list) : NULL;
    if (!list) {
        free(msg);
        return fli_fail(FL_ERR_NOMEM, "trace: no memory for a warning");
    }
    t->warnings = list;
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)len + 1, fmt, ap);
    va_end(ap);
    t->warnings[t->n_warnings++] = msg;
    return FL_OK;
}

/* ---- field parsers ----------------------------------------------------------------
 * Each takes one field as (pointer, length), not NUL-terminated, and on failure writes
 * the problem (without the PATH:LINE prefix) into err. Hand-written because the traces
 * have 10^5-10^7 rows and sscanf per row would dominate load time. */

static const char header_text[] = "Thread,Time,Action,Pointer,Size,Stream";
#define N_COLUMNS 6
static const char *const column_names[N_COLUMNS] = {"Thread", "Time", "Action",
                                                    "Pointer", "Size", "Stream"};
enum { COL_THREAD, COL_TIME, COL_ACTION, COL_POINTER, COL_SIZE, COL_STREAM };

/* The longest row the writer can produce is ~130 bytes; anything near this limit is not
 * an RMM log (a binary file, a joined file), so it is an error rather than a silent cut. */
#define LINE_MAX_BYTES 4096
#define READ_CHUNK (256u * 1024u)
#define ERR_MAX 320

typedef struct field {
    const char *s;
    size_t n;
} field;

/* Quotes text for a message: non-printable bytes as \xNN, long text cut with "...",
 * so a binary or huge field still yields a readable one-line error. */
static const char *quote(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        }
    }
    out[o] = 0;
    return out;
}

static int field_error(char *err, int col, field f, const char *problem)
{
    char q[96];
    snprintf(err, ERR_MAX, "column %s: '%s' %s", column_names[col], quote(q, sizeof q, f.s, f.n),
             problem);
    return -1;
}

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

static inline int hex_value(char c)
{
    unsigned d = (unsigned)(unsigned char)c - '0';
    if (d < 10)
        return (int)d;
    d = ((unsigned)(unsigned char)c | 0x20) - 'a'; /* folds A-F onto a-f */
    return d < 6 ? (int)d + 10 : -1;
}

/* 0 ok, 1 not a number, 2 overflow. */
static int parse_dec(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return 1;
    uint64_t v = 0;
    if (FL_LIKELY(n <= 19)) { /* 19 digits cannot overflow: skip the checks */
        for (size_t i = 0; i < n; i++) {
            unsigned d = (unsigned)(s[i] - '0');
            if (d > 9)
                return 1;
            v = v * 10 + d;
        }
        *out = v;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return 1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 2;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_hex(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return 1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = hex_value(s[i]);
        if (d < 0)
            return 1;
        if (FL_UNLIKELY(v >> 60))
            return 2;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static int parse_thread(field f, uint64_t *out, char *err)
{
    int r = parse_dec(f.s, f.n, out);
    if (r == 1)
        return field_error(err, COL_THREAD, f, "is not a decimal number");
    if (r == 2)
        return field_error(err, COL_THREAD, f, "does not fit in 64 bits");
    return 0;
}

/* HH:MM:SS.f with at least two hour digits (more once a recording passes 99 hours),
 * minutes and seconds below 60, 1..9 fraction digits truncated to microseconds. */
static int parse_time(field f, uint64_t *out, char *err)
{
    static const uint32_t pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000,
                                     10000000, 100000000, 1000000000};
    const char *s = f.s, *end = f.s + f.n;
    const char *p = s;
    while (p < end && is_digit(*p))
        p++;
    size_t hour_digits = (size_t)(p - s);
    if (hour_digits < 2 || end - p < 7 || p[0] != ':' || !is_digit(p[1]) || !is_digit(p[2]) ||
        p[3] != ':' || !is_digit(p[4]) || !is_digit(p[5]) || p[6] != '.')
        return field_error(err, COL_TIME, f, "is not a time HH:MM:SS.ffffff");
    unsigned minutes = (unsigned)(p[1] - '0') * 10 + (unsigned)(p[2] - '0');
    unsigned seconds = (unsigned)(p[4] - '0') * 10 + (unsigned)(p[5] - '0');
    if (minutes > 59 || seconds > 59)
        return field_error(err, COL_TIME, f, "has minutes or seconds above 59");
    const char *frac = p + 7;
    size_t frac_digits = (size_t)(end - frac);
    uint64_t fv;
    if (frac_digits == 0 || frac_digits > 9 || parse_dec(frac, frac_digits, &fv) != 0)
        return field_error(err, COL_TIME, f, "needs 1 to 9 digits after the '.'");
    uint64_t us = frac_digits <= 6 ? fv * pow10[6 - frac_digits] : fv / pow10[frac_digits - 6];
    uint64_t rest = (minutes * 60 + seconds) * UINT64_C(1000000) + us;
    uint64_t hours;
    /* The writer prints any uint64_t time_us, so the bound is exactly 64 bits. */
    if (parse_dec(s, hour_digits, &hours) != 0 || hours > UINT64_MAX / UINT64_C(3600000000) ||
        rest > UINT64_MAX - hours * UINT64_C(3600000000))
        return field_error(err, COL_TIME, f, "does not fit in 64 bits of microseconds");
    *out = hours * UINT64_C(3600000000) + rest;
    return 0;
}

static int parse_action(field f, uint8_t *kind, char *err)
{
    if (f.n == 8 && memcmp(f.s, "allocate", 8) == 0)
        *kind = FL_EV_ALLOC;
    else if (f.n == 4 && memcmp(f.s, "free", 4) == 0)
        *kind = FL_EV_FREE;
    else if (f.n == 16 && memcmp(f.s, "allocate failure", 16) == 0)
        *kind = FL_EV_ALLOC_FAIL;
    else
        return field_error(err, COL_ACTION, f, "is not allocate, allocate failure or free");
    return 0;
}

static int parse_pointer(field f, uint8_t kind, uint64_t *out, char *err)
{
    if (kind == FL_EV_ALLOC_FAIL) {
        /* RMM prints the null pointer however the C++ library formats it. */
        uint64_t v = 1;
        if (f.n == 0 || (f.n == 1 && f.s[0] == '0') || (f.n == 5 && memcmp(f.s, "(nil)", 5) == 0) ||
            (f.n > 2 && memcmp(f.s, "0x", 2) == 0 && parse_hex(f.s + 2, f.n - 2, &v) == 0 && v == 0)) {
            *out = 0;
            return 0;
        }
        return field_error(err, COL_POINTER, f,
                           "must be null on an allocate failure row (0x0, 0, (nil) or empty)");
    }
    if (f.n < 3 || f.s[0] != '0' || f.s[1] != 'x')
        return field_error(err, COL_POINTER, f, "is not a hex number starting with 0x");
    int r = parse_hex(f.s + 2, f.n - 2, out);
    if (r == 1)
        return field_error(err, COL_POINTER, f, "is not a hex number starting with 0x");
    if (r == 2)
        return field_error(err, COL_POINTER, f, "does not fit in 64 bits");
    return 0;
}

static int parse_size(field f, uint8_t kind, uint64_t *out, char *err)
{
    int r = parse_dec(f.s, f.n, out);
    if (r == 1)
        return field_error(err, COL_SIZE, f, "is not a decimal number");
    if (r == 2)
        return field_error(err, COL_SIZE, f, "does not fit in 64 bits");
    /* A free may log 0 (the size is not always known when freeing); a request may not. */
    if (*out == 0 && kind != FL_EV_FREE)
        return field_error(err, COL_SIZE, f, "must be more than 0 for an allocation");
    return 0;
}

static int parse_stream(field f, uint64_t *out, char *err)
{
    field h = f;
    if (h.n >= 2 && h.s[0] == '0' && h.s[1] == 'x') {
        h.s += 2;
        h.n -= 2;
    }
    int r = parse_hex(h.s, h.n, out);
    if (r == 1)
        return field_error(err, COL_STREAM, f, "is not a hex number");
    if (r == 2)
        return field_error(err, COL_STREAM, f, "does not fit in 64 bits");
    return 0;
}

/* One data row (no newline, \r already removed) into e; -1 with err set on failure. */
static int parse_row(const char *s, size_t n, fli_event *e, char *err)
{
    field f[N_COLUMNS];
    size_t nf = 0;
    const char *p = s, *end = s + n;
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        if (nf < N_COLUMNS)
            f[nf] = (field){p, (size_t)(stop - p)};
        nf++;
        if (!comma)
            break;
        p = comma + 1;
    }
    if (nf != N_COLUMNS) {
        snprintf(err, ERR_MAX, "expected %d columns (%s), found %zu", N_COLUMNS, header_text, nf);
        return -1;
    }
    if (parse_thread(f[COL_THREAD], &e->thread, err) || parse_time(f[COL_TIME], &e->time_us, err) ||
        parse_action(f[COL_ACTION], &e->kind, err) ||
        parse_pointer(f[COL_POINTER], e->kind, &e->ptr, err) ||
        parse_size(f[COL_SIZE], e->kind, &e->size, err) || parse_stream(f[COL_STREAM], &e->stream, err))
        return -1;
    return 0;
}

/* The common row in one pass over its bytes: plain allocate or free, numbers of ordinary
 * length. Returns 0 only for rows parse_row accepts too (it is a strict subset: every
 * check here is one of parse_row's, tightened); anything else, errors included, goes to
 * parse_row, which decides and explains. This halves the load time of a large trace. */
static int parse_row_fast(const char *p, const char *end, fli_event *e)
{
    static const uint32_t pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000,
                                     10000000, 100000000, 1000000000};
    uint64_t v = 0;
    unsigned d;
    int k = 0;
    /* Thread: 1..19 digits (cannot overflow). */
    for (; p < end && (d = (unsigned)(unsigned char)*p - '0') < 10 && k < 19; p++, k++)
        v = v * 10 + d;
    if (!k || p == end || *p != ',')
        return -1;
    e->thread = v;
    p++;
    /* Time: 2..9 hour digits, so the sum below cannot overflow. */
    v = 0;
    k = 0;
    for (; p < end && (d = (unsigned)(unsigned char)*p - '0') < 10 && k < 9; p++, k++)
        v = v * 10 + d;
    if (k < 2 || end - p < 8 || p[0] != ':' || p[3] != ':' || p[6] != '.')
        return -1;
    unsigned m1 = (unsigned)(unsigned char)p[1] - '0', m2 = (unsigned)(unsigned char)p[2] - '0';
    unsigned s1 = (unsigned)(unsigned char)p[4] - '0', s2 = (unsigned)(unsigned char)p[5] - '0';
    if (m1 > 5 || m2 > 9 || s1 > 5 || s2 > 9)
        return -1;
    p += 7;
    uint64_t frac = 0;
    k = 0;
    for (; p < end && (d = (unsigned)(unsigned char)*p - '0') < 10 && k < 9; p++, k++)
        frac = frac * 10 + d;
    if (!k || p == end || *p != ',')
        return -1;
    uint64_t us = k <= 6 ? frac * pow10[6 - k] : frac / pow10[k - 6];
    e->time_us = ((v * 60 + m1 * 10 + m2) * 60 + s1 * 10 + s2) * UINT64_C(1000000) + us;
    p++;
    /* Action. */
    if (end - p >= 9 && memcmp(p, "allocate,", 9) == 0) {
        e->kind = FL_EV_ALLOC;
        p += 9;
    } else if (end - p >= 5 && memcmp(p, "free,", 5) == 0) {
        e->kind = FL_EV_FREE;
        p += 5;
    } else {
        return -1;
    }
    /* Pointer: 0x and 1..16 hex digits. */
    if (end - p < 3 || p[0] != '0' || p[1] != 'x')
        return -1;
    p += 2;
    v = 0;
    k = 0;
    int h;
    for (; p < end && (h = hex_value(*p)) >= 0 && k < 16; p++, k++)
        v = (v << 4) | (uint64_t)h;
    if (!k || p == end || *p != ',')
        return -1;
    e->ptr = v;
    p++;
    /* Size: 1..19 digits, not 0 for an allocation. */
    v = 0;
    k = 0;
    for (; p < end && (d = (unsigned)(unsigned char)*p - '0') < 10 && k < 19; p++, k++)
        v = v * 10 + d;
    if (!k || p == end || *p != ',' || (v == 0 && e->kind == FL_EV_ALLOC))
        return -1;
    e->size = v;
    p++;
    /* Stream: optional 0x, 1..16 hex digits, then the end of the line. */
    if (end - p >= 2 && p[0] == '0' && p[1] == 'x')
        p += 2;
    v = 0;
    k = 0;
    for (; p < end && (h = hex_value(*p)) >= 0 && k < 16; p++, k++)
        v = (v << 4) | (uint64_t)h;
    if (!k || p != end)
        return -1;
    e->stream = v;
    return 0;
}

static int parse_header(const char *s, size_t n, char *err)
{
    if (n == sizeof header_text - 1 && memcmp(s, header_text, n) == 0)
        return 0;
    char q[96];
    if (n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        snprintf(err, ERR_MAX, "header starts with a UTF-8 byte-order mark; expected exactly '%s'",
                 header_text);
    else
        snprintf(err, ERR_MAX, "header '%s' is not '%s'", quote(q, sizeof q, s, n), header_text);
    return -1;
}

/* ---- the reader ---------------------------------------------------------------------
 * Line rules, decided here:
 * - "\n" or "\r\n" ends a line; a "\r" anywhere else is part of the field (an error).
 * - A NUL byte is an error, except in a last line without newline (see below): a crash
 *   can leave a zero-filled tail, which is one way a line gets cut short.
 * - Empty lines in the middle are errors (they are not RMM output); empty lines at the
 *   end of the file are tolerated with one warning (editors and `echo >>` add them).
 * - A last line without a newline that does not parse was cut short by a process that
 *   died mid-write: dropped with a warning. One that parses is kept, with a warning
 *   too: a cut inside its last field (the stream) would still parse. A bad line that ends in a newline is always an error. A
 *   header without newline is tolerated only if it is a prefix of the real header.
 * - An empty file or a header alone is an empty trace. */

typedef struct reader {
    FILE *f;
    const char *name;
    fli_trace *t;
    uint32_t line;
    uint32_t first_empty;   /* first line of a run of empty lines, 0 if none pending */
    uint32_t n_empty;
} reader;

/* Handles one line; has_newline says whether it was terminated. */
static fl_status reader_line(reader *r, const char *s, size_t n, int has_newline)
{
    char err[ERR_MAX];
    /* Also without a newline: a CRLF file cut between \r and \n lost nothing. */
    if (n > 0 && s[n - 1] == '\r')
        n--;
    if (n > LINE_MAX_BYTES)
        return fli_fail(FL_ERR_PARSE, "%s:%u: line is longer than %d bytes: not an RMM log row",
                       r->name, r->line, LINE_MAX_BYTES);
    fli_event e;
    if (FL_LIKELY(has_newline && r->line > 1 && !r->n_empty && parse_row_fast(s, s + n, &e) == 0)) {
        e.line = r->line;
        return fli_trace_push(r->t, &e);
    }
    if (n == 0) {
        if (r->line == 1)
            return fli_fail(FL_ERR_PARSE, "%s:1: empty line where the header '%s' belongs",
                           r->name, header_text);
        if (!r->n_empty++)
            r->first_empty = r->line;
        return FL_OK;
    }
    if (r->n_empty)
        return fli_fail(FL_ERR_PARSE, "%s:%u: empty line (only allowed at the end of the file)",
                       r->name, r->first_empty);
    int bad;
    const char *nul = memchr(s, 0, n);
    if (nul) {
        snprintf(err, ERR_MAX, "NUL byte at column %zu", (size_t)(nul - s) + 1);
        bad = -1;
    } else if (r->line == 1) {
        bad = parse_header(s, n, err);
        /* Only a true prefix of the header counts as cut short: a file holding one line
         * of something else is not a trace. */
        if (bad && !has_newline && (n >= sizeof header_text - 1 || memcmp(s, header_text, n) != 0))
            return fli_fail(FL_ERR_PARSE, "%s:1: %s", r->name, err);
    } else {
        bad = parse_row(s, n, &e, err);
    }
    if (bad) {
        if (!has_newline)
            return fli_trace_warn(r->t, "%s:%u: last line is incomplete (%s), ignored", r->name,
                                 r->line, err);
        return fli_fail(FL_ERR_PARSE, "%s:%u: %s", r->name, r->line, err);
    }
    if (r->line == 1)
        return FL_OK;
    e.line = r->line;
    fl_status st = fli_trace_push(r->t, &e);
    if (st == FL_OK && !has_newline)
        st = fli_trace_warn(r->t, "%s:%u: last line has no newline: kept as read (if the process writing it "
                           "was killed, its last field may be cut)", r->name, r->line);
    return st;
}

static fl_status read_all(reader *r)
{
    /* One buffer, refilled in chunks; a partial line moves to the front first. The
     * buffer is larger than the longest acceptable line plus one chunk, so a line that
     * has not ended after LINE_MAX_BYTES is over-long, never merely split. */
    size_t cap = READ_CHUNK + LINE_MAX_BYTES + 2;
    char *buf = malloc(cap);
    if (!buf)
        return fli_fail(FL_ERR_NOMEM, "%s: no memory for a read buffer", r->name);
    size_t len = 0, pos = 0;
    int eof = 0;
    fl_status s = FL_OK;
    while (s == FL_OK) {
        char *nl = memchr(buf + pos, '\n', len - pos);
        if (nl) {
            if (r->line == UINT32_MAX) {
                s = fli_fail(FL_ERR_PARSE, "%s: more than %u lines", r->name, UINT32_MAX - 1);
                break;
            }
            r->line++;
            s = reader_line(r, buf + pos, (size_t)(nl - (buf + pos)), 1);
            pos = (size_t)(nl - buf) + 1;
            continue;
        }
        if (len - pos > LINE_MAX_BYTES + 1) {
            s = fli_fail(FL_ERR_PARSE, "%s:%u: line is longer than %d bytes: not an RMM log row",
                        r->name, r->line + 1, LINE_MAX_BYTES);
            break;
        }
        if (eof) {
            if (len > pos) {
                r->line++;
                s = reader_line(r, buf + pos, len - pos, 0);
            }
            break;
        }
        memmove(buf, buf + pos, len - pos);
        len -= pos;
        pos = 0;
        size_t got = fread(buf + len, 1, cap - len, r->f);
        if (got == 0) {
            if (ferror(r->f)) {
                s = fli_fail(FL_ERR_IO, "%s: read error: %s", r->name, strerror(errno));
                break;
            }
            eof = 1;
        }
        len += got;
    }
    free(buf);
    if (s == FL_OK && r->n_empty)
        s = fli_trace_warn(r->t, "%s:%u: %u empty line%s at the end of the file, ignored", r->name,
                          r->first_empty, r->n_empty, r->n_empty == 1 ? "" : "s");
    return s;
}

/* t is an output: it need not be initialised and what it held is not freed. On error it
 * is left all zero (n == 0, no memory held), so fli_trace_free is optional but safe. */
fl_status fli_trace_read_csv_stream(FILE *f, const char *name, fli_trace *t)
{
    if (!name)
        name = "<stream>";
    fli_trace_init(t, name);
    if (!t->path)
        return fli_fail(FL_ERR_NOMEM, "%s: no memory", name);
    reader r = {.f = f, .name = name, .t = t};
    fl_status s = read_all(&r);
    if (s != FL_OK)
        fli_trace_free(t); /* leaves t zeroed: nothing to free, n == 0 */
    return s;
}

fl_status fli_trace_read_csv(const char *path, fli_trace *t)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        memset(t, 0, sizeof *t);
        return fli_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    fl_status s = fli_trace_read_csv_stream(f, path, t);
    fclose(f);
    return s;
}

/* ---- the writer -------------------------------------------------------------------- */

/* No newline; snprintf's return (the full length even when cut), -1 for an unknown kind. */
int fli_trace_format_row(char *buf, size_t n, const fli_event *e)
{
    static const char *const actions[] = {"allocate", "free", "allocate failure"};
    if (e->kind > FL_EV_ALLOC_FAIL)
        return -1;
    uint64_t secs = e->time_us / 1000000;
    /* A failed request has no pointer; whatever ptr holds, the file says null. */
    uint64_t ptr = e->kind == FL_EV_ALLOC_FAIL ? 0 : e->ptr;
    return snprintf(buf, n, "%llu,%02llu:%02u:%02u.%06u,%s,0x%llx,%llu,%llx",
                    (unsigned long long)e->thread, (unsigned long long)(secs / 3600),
                    (unsigned)(secs / 60 % 60), (unsigned)(secs % 60),
                    (unsigned)(e->time_us % 1000000), actions[e->kind], (unsigned long long)ptr,
                    (unsigned long long)e->size, (unsigned long long)e->stream);
}

fl_status fli_trace_write_csv_stream(FILE *f, const fli_trace *t)
{
    const char *name = t->path && *t->path ? t->path : "trace";
    char row[192];
    if (fputs(header_text, f) == EOF || fputc('\n', f) == EOF)
        return fli_fail(FL_ERR_IO, "%s: write error: %s", name, strerror(errno));
    for (size_t i = 0; i < t->n; i++) {
        if (t->ev[i].kind == FL_EV_RELEASE)
            continue;
        int len = fli_trace_format_row(row, sizeof row - 1, &t->ev[i]);
        if (len < 0)
            return fli_fail(FL_ERR_INVALID, "%s: event %zu has unknown kind %u", name, i,
                           (unsigned)t->ev[i].kind);
        row[len] = '\n';
        if (fwrite(row, 1, (size_t)len + 1, f) != (size_t)len + 1)
            return fli_fail(FL_ERR_IO, "%s: write error: %s", name, strerror(errno));
    }
    return FL_OK;
}

fl_status fli_trace_write_csv(const char *path, const fli_trace *t)
{
    /* A new file renamed over path at the end (fli_create_file_safely): a link planted at
     * path (in /tmp) is replaced, never followed, and a failed write leaves path as it was. */
    fli_new_file nf;
    if (fli_create_file_safely(path, FL_NEW_FILE_AT_CLOSE, &nf) != FL_OK)
        return FL_ERR_IO;
    fl_status s = fli_trace_write_csv_stream(nf.f, t);
    /* Closing flushes: a full disk often shows only there. */
    fl_status c = fli_new_file_close(&nf, s == FL_OK);
    return s == FL_OK ? c : s;
}
