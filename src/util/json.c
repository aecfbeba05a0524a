/* The JSON pull parser of json.h: messages with the line, column and path, values by the
 * type the caller asks for, and objects and arrays read member by member through
 * callbacks. Nothing here knows a format; state_json.c is one. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"

/* ----------------------------------------------------------------------------------
 * Messages and the path to the value being read
 * ---------------------------------------------------------------------------------- */

void fli_json_clean(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}

static fl_status vfail_at(fli_json *p, size_t at, int found, const char *fmt, va_list ap)
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
    return fli_fail(FL_ERR_PARSE, "%s:%lu:%zu: %s%s%s%s (byte %zu)", p->name, line, at - line_start + 1, what,
                   p->where_len ? " in " : "", p->where, seen, at);
}

fl_status fli_json_fail(fli_json *p, size_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fl_status s = vfail_at(p, at, 0, fmt, ap);
    va_end(ap);
    return s;
}

/* An error at byte `at`, followed by what is there. */
static fl_status found_at(fli_json *p, size_t at, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status found_at(fli_json *p, size_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fl_status s = vfail_at(p, at, 1, fmt, ap);
    va_end(ap);
    return s;
}

fl_status fli_json_expected(fli_json *p, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return found_at(p, p->pos, "expected %s", what);
}

static void where_push_key(fli_json *p, const char *key)
{
    int n = snprintf(p->where + p->where_len, sizeof p->where - p->where_len, "%s%.40s", p->where_len ? "." : "", key);
    p->where_len = n < 0 ? p->where_len : strlen(p->where);
    fli_json_clean(p->where);
}

static void where_push_index(fli_json *p, size_t i)
{
    snprintf(p->where + p->where_len, sizeof p->where - p->where_len, "[%zu]", i);
    p->where_len = strlen(p->where);
}

static void where_pop(fli_json *p, size_t mark)
{
    p->where_len = mark;
    p->where[mark] = 0;
}

/* ----------------------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------------------- */

static int is_digit(int c) { return c >= '0' && c <= '9'; }

void fli_json_ws(fli_json *p)
{
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int hex_val(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The 4 hex digits of a \u escape at s[at]. */
static fl_status hex4(fli_json *p, size_t at, uint32_t *cp)
{
    *cp = 0;
    for (size_t i = 0; i < 4; i++) {
        if (at + i >= p->n)
            return fli_json_fail(p, at + i, "\\u escape cut short by the end of the file");
        int v = hex_val((unsigned char)p->s[at + i]);
        if (v < 0)
            return fli_json_fail(p, at + i, "expected 4 hex digits after \\u");
        *cp = *cp << 4 | (uint32_t)v;
    }
    return FL_OK;
}

fl_status fli_json_string(fli_json *p, char *out, size_t cap, int *cut)
{
    size_t start = p->pos, len = 0;
    int full = 0;
    if (fli_json_peek(p) != '"')
        return fli_json_expected(p, "a string");
    p->pos++;
    for (;;) {
        if (p->pos >= p->n)
            return fli_json_fail(p, p->pos, "string that began at byte %zu not closed, found the end of the file", start);
        unsigned char c = (unsigned char)p->s[p->pos];
        char enc[4];
        size_t k = 1;
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20)
            return fli_json_fail(p, p->pos, "control byte 0x%02x inside a string (JSON writes it as \\u%04x)", c, c);
        if (c != '\\') {
            enc[0] = (char)c;
            p->pos++;
        } else {
            if (p->pos + 1 >= p->n)
                return fli_json_fail(p, p->pos + 1, "escape cut short by the end of the file");
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
                    return fli_json_fail(p, p->pos, "\\u%04x is a lone low surrogate", (unsigned)cp);
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (p->pos + 7 >= p->n || p->s[p->pos + 6] != '\\' || p->s[p->pos + 7] != 'u')
                        return fli_json_fail(p, p->pos, "\\u%04x (a high surrogate) not followed by a \\u low surrogate",
                                       (unsigned)cp);
                    if ((s = hex4(p, p->pos + 8, &lo)))
                        return s;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return fli_json_fail(p, p->pos + 6, "\\u%04x is not a low surrogate (after \\u%04x)", (unsigned)lo,
                                       (unsigned)cp);
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p->pos += 6;
                }
                if (cp == 0)
                    return fli_json_fail(p, p->pos, "\\u0000 (a NUL byte) inside a string");
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
                return fli_json_fail(p, p->pos, "unknown escape \\%c in a string",
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

/* A number's extent (JSON's grammar) from p->pos to *end; *is_uint: digits only. When it
 * fails, *end is p->pos (an empty extent): written on every path, like the out-parameters
 * of the readers below, because the compiler cannot see that a failure's status is never
 * FL_OK (it comes from fli_fail, in another file) and callers test only the status. */
static fl_status scan_number(fli_json *p, size_t *end, int *is_uint)
{
    size_t i = p->pos;
    *end = i;
    *is_uint = 1;
    if (i < p->n && p->s[i] == '-') {
        i++;
        *is_uint = 0;
    }
    if (i >= p->n || !is_digit((unsigned char)p->s[i]))
        return i == p->pos ? fli_json_expected(p, "a number") : fli_json_fail(p, i, "expected a digit after '-'");
    if (p->s[i] == '0') {
        if (++i < p->n && is_digit((unsigned char)p->s[i]))
            return fli_json_fail(p, i, "a number with a leading zero");
    } else {
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    if (i < p->n && p->s[i] == '.') {
        *is_uint = 0;
        if (++i >= p->n || !is_digit((unsigned char)p->s[i]))
            return fli_json_fail(p, i, "expected a digit after the decimal point");
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
        *is_uint = 0;
        if (++i < p->n && (p->s[i] == '+' || p->s[i] == '-'))
            i++;
        if (i >= p->n || !is_digit((unsigned char)p->s[i]))
            return fli_json_fail(p, i, "expected a digit in the exponent");
        while (i < p->n && is_digit((unsigned char)p->s[i]))
            i++;
    }
    *end = i;
    return FL_OK;
}

/* The number readers set *v on every path: the value, or 0 when they fail. */

fl_status fli_json_u64(fli_json *p, uint64_t *v)
{
    size_t start = p->pos, end;
    int is_uint;
    *v = 0;
    int c = fli_json_peek(p);
    if (c != '-' && !is_digit(c))
        return fli_json_expected(p, "an unsigned integer");
    fl_status s = scan_number(p, &end, &is_uint);
    if (s)
        return s;
    int len = end - start > 40 ? 40 : (int)(end - start);
    if (!is_uint)
        return fli_json_fail(p, start, "expected an unsigned integer, found %.*s%s", len, p->s + start,
                       end - start > 40 ? "..." : "");
    uint64_t x = 0;
    for (size_t i = start; i < end; i++) {
        unsigned d = (unsigned)(p->s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return fli_json_fail(p, start, "number %.*s%s is too large (more than 2^64 - 1)", len, p->s + start,
                           end - start > 40 ? "..." : "");
        x = x * 10 + d;
    }
    *v = x;
    p->pos = end;
    return FL_OK;
}

fl_status fli_json_double(fli_json *p, double *v)
{
    size_t start = p->pos, end;
    int is_uint;
    char buf[64];
    *v = 0;
    fl_status s = scan_number(p, &end, &is_uint);
    if (s)
        return s;
    if (end - start >= sizeof buf)
        return fli_json_fail(p, start, "number of %zu characters: longer than this reader takes (63)", end - start);
    memcpy(buf, p->s + start, end - start);
    buf[end - start] = 0;
    double x = strtod(buf, NULL);
    if (!isfinite(x))
        return fli_json_fail(p, start, "number %s is out of range", buf);
    *v = x;
    p->pos = end;
    return FL_OK;
}

fl_status fli_json_flag(fli_json *p, int *v)
{
    size_t start = p->pos;
    uint64_t x;
    *v = 0;
    fl_status s = fli_json_u64(p, &x);
    if (s)
        return s;
    if (x > 1)
        return fli_json_fail(p, start, "expected 0 or 1, found %llu", (unsigned long long)x);
    *v = (int)x;
    return FL_OK;
}

fl_status fli_json_hex(fli_json *p, uint64_t *v)
{
    size_t start = p->pos;
    char buf[24];
    int cut;
    *v = 0;
    if (fli_json_peek(p) != '"')
        return fli_json_expected(p, "an address (a string \"0x...\")");
    fl_status s = fli_json_string(p, buf, sizeof buf, &cut);
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
        fli_json_clean(buf);
        return fli_json_fail(p, start, "expected an address \"0x\" and 1 to 16 hex digits, found \"%s%s\"", buf,
                       cut ? "..." : "");
    }
    *v = x;
    return FL_OK;
}

/* ----------------------------------------------------------------------------------
 * Objects and arrays: skipped whole, or read member by member through callbacks
 * ---------------------------------------------------------------------------------- */

fl_status fli_json_enter(fli_json *p)
{
    if (p->depth >= p->max_depth)
        return fli_json_fail(p, p->pos, "arrays and objects nested deeper than %d levels", p->max_depth);
    p->depth++;
    p->pos++;
    return FL_OK;
}

/* Enters the `open` ('{' or '[') at the current byte; *empty when its closing byte follows
 * at once (passed, and the depth given back). */
static fl_status open_items(fli_json *p, int open, int *empty)
{
    if (fli_json_peek(p) != open)
        return fli_json_expected(p, "'%c'", open);
    fl_status s = fli_json_enter(p);
    if (s)
        return s;
    fli_json_ws(p);
    *empty = fli_json_peek(p) == (open == '{' ? '}' : ']');
    if (*empty) {
        p->pos++;
        p->depth--;
    }
    return FL_OK;
}

/* A member's key and the ':' after it, into out[cap] as fli_json_string does. */
static fl_status read_key(fli_json *p, char *out, size_t cap, int *cut)
{
    fl_status s;
    if (fli_json_peek(p) != '"')
        return fli_json_expected(p, "a key (a string)");
    if ((s = fli_json_string(p, out, cap, cut)))
        return s;
    fli_json_ws(p);
    if (fli_json_peek(p) != ':')
        return fli_json_expected(p, "':' after the key");
    p->pos++;
    fli_json_ws(p);
    return FL_OK;
}

/* After a member or element: 1 on ',' (another follows), 0 on `close` (passed, and the
 * depth given back), -1 with *s set otherwise. */
static int next_item(fli_json *p, int close, fl_status *s)
{
    fli_json_ws(p);
    if (fli_json_peek(p) == ',') {
        p->pos++;
        return 1;
    }
    if (fli_json_peek(p) == close) {
        p->pos++;
        p->depth--;
        return 0;
    }
    *s = fli_json_expected(p, close == '}' ? "',' or '}'" : "',' or ']'");
    return -1;
}

/* Recursion is bounded by fli_json_enter(). */
fl_status fli_json_skip(fli_json *p)
{
    int c = fli_json_peek(p);
    fl_status s;
    if (c == '{' || c == '[') {
        int close = c == '{' ? '}' : ']', empty, more;
        if ((s = open_items(p, c, &empty)) || empty)
            return s;
        do {
            fli_json_ws(p);
            if (close == '}' && (s = read_key(p, NULL, 0, NULL)))
                return s;
            if ((s = fli_json_skip(p)))
                return s;
        } while ((more = next_item(p, close, &s)) > 0);
        return more < 0 ? s : FL_OK;
    }
    if (c == '"')
        return fli_json_string(p, NULL, 0, NULL);
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
    return fli_json_expected(p, "a value");
}

fl_status fli_json_members(fli_json *p, fli_json_member_fn fn, void *user)
{
    fl_status s;
    int empty, more;
    if ((s = open_items(p, '{', &empty)) || empty)
        return s;
    do {
        char key[64];
        int cut;
        fli_json_ws(p);
        size_t key_at = p->pos;
        if ((s = read_key(p, key, sizeof key, &cut)))
            return s;
        size_t mark = p->where_len;
        where_push_key(p, key);
        s = fn(p, cut ? "" : key, key_at, user); /* a key too long to keep is no key we know */
        if (s)
            return s;
        where_pop(p, mark);
    } while ((more = next_item(p, '}', &s)) > 0);
    return more < 0 ? s : FL_OK;
}

fl_status fli_json_elements(fli_json *p, fli_json_element_fn fn, void *user)
{
    fl_status s;
    int empty, more;
    if ((s = open_items(p, '[', &empty)) || empty)
        return s;
    size_t i = 0;
    do {
        fli_json_ws(p);
        size_t mark = p->where_len;
        where_push_index(p, i);
        if ((s = fn(p, i++, user)))
            return s;
        where_pop(p, mark);
    } while ((more = next_item(p, ']', &s)) > 0);
    return more < 0 ? s : FL_OK;
}

int fli_json_grow(void **a, size_t *cap, size_t n, size_t elem)
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
