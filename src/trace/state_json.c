/* The state snapshot reader (state_json.h): a recursive-descent JSON parser driven by the
 * format of src/adaptor/snapshot_json.c.
 *
 * Every read is bounded by the text's length (no terminator is needed, so a fuzzer's
 * buffer can be parsed as it is); the depth of arrays and objects is counted and refused
 * beyond FL_STATE_MAX_DEPTH, which bounds the recursion of skip_value (the only function
 * that recurses on the input's shape; the rest follow the format's fixed nesting). A
 * message names the file, the line and column, the path inside the document
 * ("regions[2].pages[5]"), what was expected and what was found, and the byte offset. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace/state_json.h"

/* ----------------------------------------------------------------------------------
 * The statistics this reader knows, by the key fl_stats_json writes
 * ---------------------------------------------------------------------------------- */

typedef struct stat_key {
    const char *key;
    size_t off;         /* into fl_stats */
    int is_double;
} stat_key;

#define STAT4(name)                                                                                \
    {#name ".all.current", offsetof(fl_stats, name.current), 0},                                   \
        {#name ".all.peak", offsetof(fl_stats, name.peak), 0},                                     \
        {#name ".all.allocated", offsetof(fl_stats, name.allocated), 0},                           \
        {#name ".all.freed", offsetof(fl_stats, name.freed), 0}

static const stat_key stat_keys[] = {
    STAT4(allocated_bytes),
    STAT4(reserved_bytes),
    STAT4(active_bytes),
    STAT4(requested_bytes),
    STAT4(allocation),
    {"inactive_split_bytes.all.current", offsetof(fl_stats, inactive_split_bytes), 0},
    {"inactive_split_bytes.all.peak", offsetof(fl_stats, inactive_split_bytes_peak), 0},
    {"num_alloc_retries", offsetof(fl_stats, num_alloc_retries), 0},
    {"num_ooms", offsetof(fl_stats, num_ooms), 0},
    {"num_device_alloc", offsetof(fl_stats, num_device_alloc), 0},
    {"num_device_free", offsetof(fl_stats, num_device_free), 0},
    {"num_sync_all_streams", offsetof(fl_stats, num_sync_all_streams), 0},
    {"fragless.capacity", offsetof(fl_stats, capacity), 0},
    {"fragless.limit", offsetof(fl_stats, limit), 0},
    {"fragless.cached_bytes", offsetof(fl_stats, cached_bytes), 0},
    {"fragless.free_in_reserved", offsetof(fl_stats, free_in_reserved), 0},
    {"fragless.largest_free", offsetof(fl_stats, largest_free), 0},
    {"fragless.external_fragmentation", offsetof(fl_stats, external_fragmentation), 1},
    {"fragless.device_failed_calls", offsetof(fl_stats, device_failed_calls), 0},
    {"fragless.device_time_us", offsetof(fl_stats, device_time_us), 1},
};
#define N_STAT_KEYS ((int)(sizeof stat_keys / sizeof stat_keys[0]))
/* "fragless.device_calls.NAME" take the bits after the table's. */
_Static_assert(sizeof stat_keys / sizeof stat_keys[0] + FL_CALL_COUNT <= 64, "one bit per statistic");

static int stat_index(const char *key)
{
    for (int i = 0; i < N_STAT_KEYS; i++)
        if (!strcmp(stat_keys[i].key, key))
            return i;
    static const char calls[] = "fragless.device_calls.";
    if (!strncmp(key, calls, sizeof calls - 1))
        for (int c = 0; c < FL_CALL_COUNT; c++)
            if (!strcmp(key + sizeof calls - 1, fl_call_name((fl_call)c)))
                return N_STAT_KEYS + c;
    return -1;
}

int fl_state_has_stat(const fl_state *s, const char *key)
{
    int i = stat_index(key);
    return i >= 0 && (s->stats_has >> i & 1);
}

/* ----------------------------------------------------------------------------------
 * The parser's state and its messages
 * ---------------------------------------------------------------------------------- */

typedef struct jp {
    const char *s;
    size_t n, pos;
    const char *name;
    int depth;
    char where[192];    /* "regions[2].pages[5]": the path to the value being read */
    size_t where_len;
    fl_state *st;
} jp;

/* Bytes below 0x20 and above 0x7e become '?' (file contents in a one-line message). */
static void clean(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}

static fl_status vfail_at(jp *p, size_t at, int found, const char *fmt, va_list ap)
{
    char what[256], seen[48] = "";
    vsnprintf(what, sizeof what, fmt, ap);
    unsigned long line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < at && i < p->n; i++)
        if (p->s[i] == '\n') {
            line++;
            line_start = i + 1;
        }
    if (found) {
        if (at >= p->n)
            snprintf(seen, sizeof seen, ", found the end of the file");
        else if (p->s[at] > 0x20 && p->s[at] < 0x7f)
            snprintf(seen, sizeof seen, ", found '%c'", p->s[at]);
        else
            snprintf(seen, sizeof seen, ", found byte 0x%02x", (unsigned char)p->s[at]);
    }
    return fl_fail(FL_ERR_PARSE, "%s:%lu:%zu: %s%s%s%s (byte %zu)", p->name, line, at - line_start + 1, what,
                   p->where_len ? " in " : "", p->where, seen, at);
}

/* An error at byte `at`. */
static fl_status fail_at(jp *p, size_t at, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status fail_at(jp *p, size_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fl_status s = vfail_at(p, at, 0, fmt, ap);
    va_end(ap);
    return s;
}

/* An error at byte `at`, followed by what is there. */
static fl_status found_at(jp *p, size_t at, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status found_at(jp *p, size_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fl_status s = vfail_at(p, at, 1, fmt, ap);
    va_end(ap);
    return s;
}

/* "expected X, found Y" at the current byte. */
static fl_status expected(jp *p, const char *fmt, ...) FL_PRINTF(2, 3);
static fl_status expected(jp *p, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return found_at(p, p->pos, "expected %s", what);
}

static fl_status nomem(jp *p)
{
    return fl_fail(FL_ERR_NOMEM, "%s: host memory ran out reading the state snapshot", p->name);
}

static void where_push_key(jp *p, const char *key)
{
    int n = snprintf(p->where + p->where_len, sizeof p->where - p->where_len, "%s%.40s", p->where_len ? "." : "", key);
    p->where_len = n < 0 ? p->where_len : strlen(p->where);
    clean(p->where);
}

static void where_push_index(jp *p, size_t i)
{
    snprintf(p->where + p->where_len, sizeof p->where - p->where_len, "[%zu]", i);
    p->where_len = strlen(p->where);
}

static void where_pop(jp *p, size_t mark)
{
    p->where_len = mark;
    p->where[mark] = 0;
}

/* ----------------------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------------------- */

static int peek(const jp *p) { return p->pos < p->n ? (unsigned char)p->s[p->pos] : -1; }
static int is_digit(int c) { return c >= '0' && c <= '9'; }

static void ws(jp *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int hex_val(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The 4 hex digits of a \u escape at s[at]. */
static fl_status hex4(jp *p, size_t at, uint32_t *cp)
{
    *cp = 0;
    for (size_t i = 0; i < 4; i++) {
        if (at + i >= p->n)
            return fail_at(p, at + i, "\\u escape cut short by the end of the file");
        int v = hex_val((unsigned char)p->s[at + i]);
        if (v < 0)
            return fail_at(p, at + i, "expected 4 hex digits after \\u");
        *cp = *cp << 4 | (uint32_t)v;
    }
    return FL_OK;
}

/* A string at p->pos, decoded (escapes, \u as UTF-8) into out[cap], NUL-terminated; *cut
 * says it did not fit. out NULL: checked only. */
static fl_status parse_string(jp *p, char *out, size_t cap, int *cut)
{
    size_t start = p->pos, len = 0;
    int full = 0;
    if (peek(p) != '"')
        return expected(p, "a string");
    p->pos++;
    for (;;) {
        if (p->pos >= p->n)
            return fail_at(p, p->pos, "string that began at byte %zu not closed, found the end of the file", start);
        unsigned char c = (unsigned char)p->s[p->pos];
        char enc[4];
        size_t k = 1;
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20)
            return fail_at(p, p->pos, "control byte 0x%02x inside a string (JSON writes it as \\u%04x)", c, c);
        if (c != '\\') {
            enc[0] = (char)c;
            p->pos++;
        } else {
            if (p->pos + 1 >= p->n)
                return fail_at(p, p->pos + 1, "escape cut short by the end of the file");
            char e = p->s[p->pos + 1];
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                enc[0] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
                p->pos += 2;
            } else if (e == 'u') {
                uint32_t cp, lo;
                fl_status s = hex4(p, p->pos + 2, &cp);
                if (s)
                    return s;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return fail_at(p, p->pos, "\\u%04x is a lone low surrogate", (unsigned)cp);
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (p->pos + 7 >= p->n || p->s[p->pos + 6] != '\\' || p->s[p->pos + 7] != 'u')
                        return fail_at(p, p->pos, "\\u%04x (a high surrogate) not followed by a \\u low surrogate",
                                       (unsigned)cp);
                    if ((s = hex4(p, p->pos + 8, &lo)))
                        return s;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return fail_at(p, p->pos + 6, "\\u%04x is not a low surrogate (after \\u%04x)", (unsigned)lo,
                                       (unsigned)cp);
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p->pos += 6;
                }
                if (cp == 0)
                    return fail_at(p, p->pos, "\\u0000 (a NUL byte) inside a string");
                if (cp < 0x80) {
                    enc[0] = (char)cp;
                } else if (cp < 0x800) {
                    enc[0] = (char)(0xc0 | cp >> 6);
                    enc[1] = (char)(0x80 | (cp & 0x3f));
                    k = 2;
                } else if (cp < 0x10000) {
                    enc[0] = (char)(0xe0 | cp >> 12);
                    enc[1] = (char)(0x80 | (cp >> 6 & 0x3f));
                    enc[2] = (char)(0x80 | (cp & 0x3f));
                    k = 3;
                } else {
                    enc[0] = (char)(0xf0 | cp >> 18);
                    enc[1] = (char)(0x80 | (cp >> 12 & 0x3f));
                    enc[2] = (char)(0x80 | (cp >> 6 & 0x3f));
                    enc[3] = (char)(0x80 | (cp & 0x3f));
                    k = 4;
                }
                p->pos += 6;
            } else {
                return fail_at(p, p->pos, "unknown escape \\%c in a string",
                               e > 0x20 && e < 0x7f ? e : '?');
            }
        }
        if (out && !full) {
            if (len + k < cap) {
                memcpy(out + len, enc, k);
                len += k;
            } else {
                full = 1;
            }
        }
    }
    if (out && cap)
        out[len] = 0;
    if (cut)
        *cut = full;
    return FL_OK;
}

/* A number's extent (JSON's grammar) from p->pos to *end; *is_uint: digits only. */
static fl_status scan_number(jp *p, size_t *end, int *is_uint)
{
    size_t i = p->pos;
    *is_uint = 1;
    if (i < p->n && p->s[i] == '-') {
        i++;
        *is_uint = 0;
    }
    if (i >= p->n || !is_digit((unsigned char)p->s[i]))
        return i == p->pos ? expected(p, "a number") : fail_at(p, i, "expected a digit after '-'");
    if (p->s[i] == '0') {
        if (++i < p->n && is_digit((unsigned char)p->s[i]))
            return fail_at(p, i, "a number with a leading zero");
    } else {
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    if (i < p->n && p->s[i] == '.') {
        *is_uint = 0;
        if (++i >= p->n || !is_digit((unsigned char)p->s[i]))
            return fail_at(p, i, "expected a digit after the decimal point");
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
        *is_uint = 0;
        if (++i < p->n && (p->s[i] == '+' || p->s[i] == '-'))
            i++;
        if (i >= p->n || !is_digit((unsigned char)p->s[i]))
            return fail_at(p, i, "expected a digit in the exponent");
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    *end = i;
    return FL_OK;
}

static fl_status parse_u64(jp *p, uint64_t *v)
{
    size_t start = p->pos, end;
    int is_uint;
    int c = peek(p);
    if (c != '-' && !is_digit(c))
        return expected(p, "an unsigned integer");
    fl_status s = scan_number(p, &end, &is_uint);
    if (s)
        return s;
    int len = end - start > 40 ? 40 : (int)(end - start);
    if (!is_uint)
        return fail_at(p, start, "expected an unsigned integer, found %.*s%s", len, p->s + start,
                       end - start > 40 ? "..." : "");
    uint64_t x = 0;
    for (size_t i = start; i < end; i++) {
        unsigned d = (unsigned)(p->s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return fail_at(p, start, "number %.*s%s is too large (more than 2^64 - 1)", len, p->s + start,
                           end - start > 40 ? "..." : "");
        x = x * 10 + d;
    }
    *v = x;
    p->pos = end;
    return FL_OK;
}

static fl_status parse_double(jp *p, double *v)
{
    size_t start = p->pos, end;
    int is_uint;
    char buf[64];
    fl_status s = scan_number(p, &end, &is_uint);
    if (s)
        return s;
    if (end - start >= sizeof buf)
        return fail_at(p, start, "number of %zu characters: longer than this reader takes (63)", end - start);
    memcpy(buf, p->s + start, end - start);
    buf[end - start] = 0;
    double x = strtod(buf, NULL);
    if (!isfinite(x))
        return fail_at(p, start, "number %s is out of range", buf);
    *v = x;
    p->pos = end;
    return FL_OK;
}

/* 0 or 1 (mapped, live). */
static fl_status parse_flag(jp *p, int *v)
{
    size_t start = p->pos;
    uint64_t x;
    fl_status s = parse_u64(p, &x);
    if (s)
        return s;
    if (x > 1)
        return fail_at(p, start, "expected 0 or 1, found %llu", (unsigned long long)x);
    *v = (int)x;
    return FL_OK;
}

/* An address as the writer prints it: a string "0x" and 1 to 16 hex digits. */
static fl_status parse_hex(jp *p, uint64_t *v)
{
    size_t start = p->pos;
    char buf[24];
    int cut;
    if (peek(p) != '"')
        return expected(p, "an address (a string \"0x...\")");
    fl_status s = parse_string(p, buf, sizeof buf, &cut);
    if (s)
        return s;
    size_t len = strlen(buf);
    int ok = !cut && len > 2 && len <= 18 && buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X');
    uint64_t x = 0;
    for (size_t i = 2; ok && i < len; i++) {
        int d = hex_val((unsigned char)buf[i]);
        ok = d >= 0;
        x = x << 4 | (uint64_t)(d < 0 ? 0 : d);
    }
    if (!ok) {
        clean(buf);
        return fail_at(p, start, "expected an address \"0x\" and 1 to 16 hex digits, found \"%s%s\"", buf,
                       cut ? "..." : "");
    }
    *v = x;
    return FL_OK;
}

static fl_status enter(jp *p)
{
    if (p->depth >= FL_STATE_MAX_DEPTH)
        return fail_at(p, p->pos, "arrays and objects nested deeper than %d levels", FL_STATE_MAX_DEPTH);
    p->depth++;
    p->pos++;
    return FL_OK;
}

/* Any value, checked and passed over (unknown keys). Recursion is bounded by enter(). */
static fl_status skip_value(jp *p)
{
    int c = peek(p);
    fl_status s;
    if (c == '{' || c == '[') {
        int close = c == '{' ? '}' : ']';
        if ((s = enter(p)))
            return s;
        ws(p);
        if (peek(p) == close) {
            p->pos++;
            p->depth--;
            return FL_OK;
        }
        for (;;) {
            ws(p);
            if (close == '}') {
                if (peek(p) != '"')
                    return expected(p, "a key (a string)");
                if ((s = parse_string(p, NULL, 0, NULL)))
                    return s;
                ws(p);
                if (peek(p) != ':')
                    return expected(p, "':' after the key");
                p->pos++;
                ws(p);
            }
            if ((s = skip_value(p)))
                return s;
            ws(p);
            if (peek(p) == ',') {
                p->pos++;
                continue;
            }
            if (peek(p) == close) {
                p->pos++;
                break;
            }
            return expected(p, close == '}' ? "',' or '}'" : "',' or ']'");
        }
        p->depth--;
        return FL_OK;
    }
    if (c == '"')
        return parse_string(p, NULL, 0, NULL);
    if (c == '-' || is_digit(c)) {
        size_t end;
        int is_uint;
        if ((s = scan_number(p, &end, &is_uint)))
            return s;
        p->pos = end;
        return FL_OK;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (p->n - p->pos >= n && !memcmp(p->s + p->pos, words[i], n)) {
            p->pos += n;
            return FL_OK;
        }
    }
    return expected(p, "a value");
}

/* ----------------------------------------------------------------------------------
 * Objects and arrays: the members or elements, each read by a callback
 * ---------------------------------------------------------------------------------- */

typedef fl_status (*member_fn)(jp *p, const char *key, size_t key_at, void *user);
typedef fl_status (*element_fn)(jp *p, size_t index, void *user);

static fl_status each_member(jp *p, member_fn fn, void *user)
{
    fl_status s;
    if (peek(p) != '{')
        return expected(p, "'{'");
    if ((s = enter(p)))
        return s;
    ws(p);
    if (peek(p) == '}') {
        p->pos++;
        p->depth--;
        return FL_OK;
    }
    for (;;) {
        char key[64];
        int cut;
        ws(p);
        size_t key_at = p->pos;
        if (peek(p) != '"')
            return expected(p, "a key (a string)");
        if ((s = parse_string(p, key, sizeof key, &cut)))
            return s;
        ws(p);
        if (peek(p) != ':')
            return expected(p, "':' after the key");
        p->pos++;
        ws(p);
        size_t mark = p->where_len;
        where_push_key(p, key);
        s = fn(p, cut ? "" : key, key_at, user); /* a key too long to keep is no key we know */
        if (s)
            return s;
        where_pop(p, mark);
        ws(p);
        if (peek(p) == ',') {
            p->pos++;
            continue;
        }
        if (peek(p) == '}') {
            p->pos++;
            break;
        }
        return expected(p, "',' or '}'");
    }
    p->depth--;
    return FL_OK;
}

static fl_status each_element(jp *p, element_fn fn, void *user)
{
    fl_status s;
    if (peek(p) != '[')
        return expected(p, "'['");
    if ((s = enter(p)))
        return s;
    ws(p);
    if (peek(p) == ']') {
        p->pos++;
        p->depth--;
        return FL_OK;
    }
    for (size_t i = 0;; i++) {
        ws(p);
        size_t mark = p->where_len;
        where_push_index(p, i);
        if ((s = fn(p, i, user)))
            return s;
        where_pop(p, mark);
        ws(p);
        if (peek(p) == ',') {
            p->pos++;
            continue;
        }
        if (peek(p) == ']') {
            p->pos++;
            break;
        }
        return expected(p, "',' or ']'");
    }
    p->depth--;
    return FL_OK;
}

static int grow(void **a, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    if (c > SIZE_MAX / elem)
        return -1;
    void *q = realloc(*a, c * elem);
    if (!q)
        return -1;
    *a = q;
    *cap = c;
    return 0;
}

/* ----------------------------------------------------------------------------------
 * The format
 * ---------------------------------------------------------------------------------- */

/* A tuple's next element: ',' then white space. */
static fl_status tuple_next(jp *p, const char *shape)
{
    ws(p);
    if (peek(p) != ',')
        return expected(p, "',' (%s)", shape);
    p->pos++;
    ws(p);
    return FL_OK;
}

/* Elements after the known ones (a later version's) are skipped; then ']'. */
static fl_status tuple_end(jp *p, const char *shape)
{
    fl_status s;
    ws(p);
    while (peek(p) == ',') {
        p->pos++;
        ws(p);
        if ((s = skip_value(p)))
            return s;
        ws(p);
    }
    if (peek(p) != ']')
        return expected(p, "']' (%s)", shape);
    p->pos++;
    p->depth--;
    return FL_OK;
}

static const char page_shape[] = "a page is [\"0x...\",size,mapped,pins]";
static const char block_shape[] = "a block is [\"0x...\",size,live]";

static fl_status page_elem(jp *p, size_t index, void *user)
{
    (void)index, (void)user;
    fl_state *st = p->st;
    fl_state_page pg = {0};
    uint64_t pins;
    fl_status s;
    if (peek(p) != '[')
        return expected(p, "'[' (%s)", page_shape);
    if ((s = enter(p)))
        return s;
    ws(p);
    if ((s = parse_hex(p, &pg.addr)) || (s = tuple_next(p, page_shape)) || (s = parse_u64(p, &pg.size)) ||
        (s = tuple_next(p, page_shape)) || (s = parse_flag(p, &pg.mapped)) || (s = tuple_next(p, page_shape)))
        return s;
    size_t pins_at = p->pos;
    if ((s = parse_u64(p, &pins)))
        return s;
    if (pins > UINT32_MAX)
        return fail_at(p, pins_at, "%llu pins: more than 2^32 - 1", (unsigned long long)pins);
    pg.pins = (uint32_t)pins;
    if ((s = tuple_end(p, page_shape)))
        return s;
    if (grow((void **)&st->pages, &st->cap_pages, st->n_pages, sizeof *st->pages))
        return nomem(p);
    st->pages[st->n_pages++] = pg;
    st->regions[st->n_regions - 1].n_pages++;
    return FL_OK;
}

static fl_status block_elem(jp *p, size_t index, void *user)
{
    (void)index, (void)user;
    fl_state *st = p->st;
    fl_state_block b = {0};
    fl_status s;
    if (peek(p) != '[')
        return expected(p, "'[' (%s)", block_shape);
    if ((s = enter(p)))
        return s;
    ws(p);
    if ((s = parse_hex(p, &b.addr)) || (s = tuple_next(p, block_shape)) || (s = parse_u64(p, &b.size)) ||
        (s = tuple_next(p, block_shape)) || (s = parse_flag(p, &b.live)) || (s = tuple_end(p, block_shape)))
        return s;
    if (grow((void **)&st->blocks, &st->cap_blocks, st->n_blocks, sizeof *st->blocks))
        return nomem(p);
    st->blocks[st->n_blocks++] = b;
    st->regions[st->n_regions - 1].n_blocks++;
    return FL_OK;
}

/* Which of an object's known keys were seen (duplicates are refused). */
static fl_status see(jp *p, unsigned *seen, int k, const char *key, size_t key_at)
{
    if (*seen >> k & 1)
        return fail_at(p, key_at, "\"%s\" given twice", key);
    *seen |= 1u << k;
    return FL_OK;
}

static int key_index(const char *const *names, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], key))
            return i;
    return -1;
}

enum { R_KIND, R_ADDR, R_SIZE, R_STREAM, R_PAGES, R_BLOCKS, R_KEYS };
static const char *const region_keys[R_KEYS] = {"kind", "addr", "size", "stream", "pages", "blocks"};

static fl_status region_member(jp *p, const char *key, size_t key_at, void *user)
{
    unsigned *seen = user;
    fl_state_region *r = &p->st->regions[p->st->n_regions - 1];
    int k = key_index(region_keys, R_KEYS, key), cut;
    fl_status s;
    if (k < 0)
        return skip_value(p);
    if ((s = see(p, seen, k, key, key_at)))
        return s;
    switch (k) {
    case R_KIND: return parse_string(p, r->kind, sizeof r->kind, &cut); /* cut to fit: only shown */
    case R_ADDR: return parse_hex(p, &r->addr);
    case R_SIZE: return parse_u64(p, &r->size);
    case R_STREAM: return parse_hex(p, &r->stream);
    case R_PAGES: return each_element(p, page_elem, NULL);
    default: return each_element(p, block_elem, NULL);
    }
}

/* Pages, then blocks, lie inside the region in address order without overlapping. */
static fl_status check_region(jp *p, const fl_state_region *r, size_t at)
{
    const fl_state *st = p->st;
    if (r->addr + r->size < r->addr)
        return fail_at(p, at, "region 0x%llx + %llu bytes runs past the end of the address space",
                       (unsigned long long)r->addr, (unsigned long long)r->size);
    uint64_t end = r->addr + r->size;
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? r->n_blocks : r->n_pages;
        uint64_t next = r->addr;
        for (size_t i = 0; i < n; i++) {
            uint64_t a = pass ? st->blocks[r->block0 + i].addr : st->pages[r->page0 + i].addr;
            uint64_t sz = pass ? st->blocks[r->block0 + i].size : st->pages[r->page0 + i].size;
            const char *what = pass ? "blocks" : "pages";
            if (!sz)
                return fail_at(p, at, "%s[%zu] at 0x%llx has size 0", what, i, (unsigned long long)a);
            if (a < next)
                return fail_at(p, at, "%s[%zu] at 0x%llx %s", what, i, (unsigned long long)a,
                               a < r->addr ? "lies before the region's start" : "overlaps the one before it (address order)");
            if (a + sz < a || a + sz > end)
                return fail_at(p, at, "%s[%zu] (0x%llx, %llu bytes) runs past the region's end 0x%llx", what, i,
                               (unsigned long long)a, (unsigned long long)sz, (unsigned long long)end);
            next = a + sz;
        }
    }
    return FL_OK;
}

static fl_status region_elem(jp *p, size_t index, void *user)
{
    (void)index, (void)user;
    fl_state *st = p->st;
    size_t at = p->pos;
    unsigned seen = 0;
    if (peek(p) != '{')
        return expected(p, "'{' (a region)");
    if (grow((void **)&st->regions, &st->cap_regions, st->n_regions, sizeof *st->regions))
        return nomem(p);
    st->regions[st->n_regions++] = (fl_state_region){.page0 = st->n_pages, .block0 = st->n_blocks};
    fl_status s = each_member(p, region_member, &seen);
    if (s)
        return s;
    for (int k = R_KIND; k <= R_SIZE; k++)
        if (!(seen >> k & 1))
            return fail_at(p, at, "region without \"%s\"", region_keys[k]);
    return check_region(p, &st->regions[st->n_regions - 1], at);
}

static fl_status calls_member(jp *p, const char *key, size_t key_at, void *user)
{
    (void)user;
    char full[96];
    snprintf(full, sizeof full, "fragless.device_calls.%s", key);
    int i = stat_index(full);
    if (i < 0)
        return skip_value(p);
    if (p->st->stats_has >> i & 1)
        return fail_at(p, key_at, "\"%s\" given twice", key);
    p->st->stats_has |= UINT64_C(1) << i;
    return parse_u64(p, &p->st->stats.device_calls[i - N_STAT_KEYS]);
}

/* user: NULL in "stats", non-NULL in "stats"."fragless". */
static fl_status stats_member(jp *p, const char *key, size_t key_at, void *user)
{
    static int inner;
    if (!user && !strcmp(key, "fragless"))
        return each_member(p, stats_member, &inner);
    if (user && !strcmp(key, "device_calls"))
        return each_member(p, calls_member, NULL);
    char full[96];
    snprintf(full, sizeof full, "%s%s", user ? "fragless." : "", key);
    int i = stat_index(full);
    if (i < 0 || i >= N_STAT_KEYS)
        return skip_value(p);
    if (p->st->stats_has >> i & 1)
        return fail_at(p, key_at, "\"%s\" given twice", key);
    p->st->stats_has |= UINT64_C(1) << i;
    char *field = (char *)&p->st->stats + stat_keys[i].off;
    if (stat_keys[i].is_double) {
        double v = 0;
        fl_status s = parse_double(p, &v);
        if (!s)
            memcpy(field, &v, sizeof v);
        return s;
    }
    uint64_t v = 0;
    fl_status s = parse_u64(p, &v);
    if (!s)
        memcpy(field, &v, sizeof v);
    return s;
}

enum { T_FORMAT, T_VERSION, T_POLICY, T_GRANULARITY, T_CAPACITY, T_STATS, T_REGIONS, T_KEYS };
static const char *const top_keys[T_KEYS] = {"format", "version", "policy", "granularity", "capacity", "stats", "regions"};

static fl_status top_member(jp *p, const char *key, size_t key_at, void *user)
{
    unsigned *seen = user;
    fl_state *st = p->st;
    int k = key_index(top_keys, T_KEYS, key), cut;
    size_t at = p->pos;
    char buf[40];
    uint64_t v;
    fl_status s;
    if (k < 0)
        return skip_value(p);
    if ((s = see(p, seen, k, key, key_at)))
        return s;
    switch (k) {
    case T_FORMAT:
        if ((s = parse_string(p, buf, sizeof buf, &cut)))
            return s;
        if (cut || strcmp(buf, "fragless-state")) {
            clean(buf);
            return fail_at(p, at, "\"format\" is \"%s%s\", not \"fragless-state\": not a fragless state snapshot", buf,
                           cut ? "..." : "");
        }
        return FL_OK;
    case T_VERSION:
        if ((s = parse_u64(p, &v)))
            return s;
        if (v != 1)
            return fail_at(p, at, "version %llu is not one this reader knows (it reads version 1; a newer fragless "
                                  "wrote the file?)",
                           (unsigned long long)v);
        return FL_OK;
    case T_POLICY:
        if ((s = parse_string(p, st->policy, sizeof st->policy, &cut)))
            return s;
        if (cut)
            return fail_at(p, at, "policy name longer than %zu bytes", sizeof st->policy - 1);
        return FL_OK;
    case T_GRANULARITY:
        if ((s = parse_u64(p, &st->granularity)))
            return s;
        if (!fl_is_pow2(st->granularity))
            return fail_at(p, at, "granularity %llu is not a power of two", (unsigned long long)st->granularity);
        return FL_OK;
    case T_CAPACITY: return parse_u64(p, &st->capacity);
    case T_STATS:
        st->has_stats = 1;
        return each_member(p, stats_member, NULL);
    default: return each_element(p, region_elem, NULL);
    }
}

fl_status fl_state_parse(const char *text, size_t n, const char *name, fl_state *out)
{
    memset(out, 0, sizeof *out);
    jp p = {.s = text, .n = n, .name = name ? name : "state", .st = out};
    unsigned seen = 0;
    ws(&p);
    fl_status s = each_member(&p, top_member, &seen);
    if (!s) {
        size_t end = p.pos - 1; /* the closing '}' */
        ws(&p);
        if (p.pos < p.n)
            s = fail_at(&p, p.pos, "more after the snapshot's closing '}'");
        for (int k = 0; !s && k < T_KEYS; k++)
            if (k != T_STATS && !(seen >> k & 1))
                s = k == T_FORMAT ? fail_at(&p, end, "no \"format\": not a fragless state snapshot")
                                  : fail_at(&p, end, "no \"%s\" in the snapshot", top_keys[k]);
    }
    if (s) {
        fl_state_free(out);
        return s;
    }
    return FL_OK;
}

fl_status fl_state_read(const char *path, fl_state *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fl_fail(FL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    fl_status s = FL_OK;
    for (;;) {
        if (n == cap) {
            size_t c = cap ? cap * 2 : 1 << 16;
            char *q = c <= FL_STATE_MAX_FILE ? realloc(buf, c) : NULL;
            if (!q) {
                s = c > FL_STATE_MAX_FILE
                        ? fl_fail(FL_ERR_PARSE, "%s: more than %llu bytes: larger than any state snapshot this reader takes",
                                  path, (unsigned long long)FL_STATE_MAX_FILE)
                        : fl_fail(FL_ERR_NOMEM, "%s: host memory ran out reading it", path);
                break;
            }
            buf = q;
            cap = c;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                s = fl_fail(FL_ERR_IO, "cannot read %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!s)
        s = fl_state_parse(buf, n, path, out);
    free(buf);
    return s;
}

void fl_state_free(fl_state *s)
{
    free(s->regions);
    free(s->pages);
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

int fl_state_sniff(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    int c;
    while ((c = getc(f)) == ' ' || c == '\t' || c == '\n' || c == '\r')
        ;
    fclose(f);
    return c == '{';
}

void fl_state_walk(const fl_state *s, const fl_state_visitor *v)
{
    for (size_t i = 0; i < s->n_regions; i++) {
        const fl_state_region *r = &s->regions[i];
        if (v->region)
            v->region(v->user, r->addr, r->size, r->stream, r->kind);
        for (size_t j = 0; v->page && j < r->n_pages; j++) {
            const fl_state_page *pg = &s->pages[r->page0 + j];
            v->page(v->user, pg->addr, pg->size, pg->mapped, pg->pins);
        }
        for (size_t j = 0; v->block && j < r->n_blocks; j++) {
            const fl_state_block *b = &s->blocks[r->block0 + j];
            v->block(v->user, b->addr, b->size, b->live);
        }
    }
}
