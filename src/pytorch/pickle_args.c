/* The arguments of the opcodes: fixed-width and text integers, ints beyond 64 bits,
 * counted strings and bytes, and the text encodings (UTF-8, raw-unicode-escape) that
 * strings are checked against or decoded from. */
#include "pytorch/pickle_internal.h"

#include <string.h>

/* ---- argument readers ---------------------------------------------------------------- */

/* Reads an n-byte little-endian unsigned argument. */
int pk_arg_uint(pk_reader *r, int n, uint64_t *v)
{
    if (pk_need_bytes(r, (uint64_t)n, "the argument"))
        return -1;
    *v = pk_le(r->p + r->pos, n);
    r->pos += (size_t)n;
    return 0;
}

/* A text argument up to '\n' (the newline is consumed, not returned). */
int pk_arg_line(pk_reader *r, const uint8_t **s, size_t *n)
{
    const uint8_t *start = r->p + r->pos;
    const uint8_t *nl = memchr(start, '\n', r->len - r->pos);
    if (!nl)
        return pk_rfail(r, "its text argument has no newline before the end of the file: truncated");
    *s = start;
    *n = (size_t)(nl - start);
    r->pos += *n + 1;
    return 0;
}

/* Decimal int64 with an optional sign (the text opcodes INT, LONG, PUT, GET). */
static int parse_decimal(const uint8_t *s, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (n && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == n)
        return -1;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        unsigned d = (unsigned)s[i] - '0';
        if (d > 9 || v > (lim - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* The decimal argument of PUT and GET. */
int pk_text_int(pk_reader *r, int64_t *v, const char *what)
{
    const uint8_t *s = NULL;
    size_t n = 0;
    char q[64];
    if (pk_arg_line(r, &s, &n))
        return -1;
    if (parse_decimal(s, n, v))
        return pk_rfail(r, "'%s' is not %s", pk_quote(q, sizeof q, s, n), what);
    return 0;
}

/* LONG1/LONG4 payload: little-endian two's complement of any length. */
int pk_push_long(pk_reader *r, const uint8_t *b, size_t n)
{
    if (n == 0)
        return pk_push_int(r, 0);
    int neg = b[n - 1] >> 7;
    /* Fits in 64 bits when every byte past the 8th is sign extension of the 8th. */
    int fits = 1;
    for (size_t i = 8; i < n && fits; i++)
        fits = b[i] == (neg ? 0xff : 0x00);
    if (n > 8 && fits && (b[7] >> 7) != neg)
        fits = 0;
    if (!fits) {
        fli_pk *o = pk_new_bytes(r, FL_PK_BIGINT, b, n);
        return o ? pk_push(r, o) : -1;
    }
    uint64_t v = neg ? UINT64_MAX : 0;
    size_t m = n < 8 ? n : 8;
    for (size_t i = 0; i < m; i++) {
        v &= ~((uint64_t)0xff << (8 * i));
        v |= (uint64_t)b[i] << (8 * i);
    }
    int64_t iv;
    memcpy(&iv, &v, sizeof iv); /* two's complement reinterpretation */
    return pk_push_int(r, iv);
}

/* Python refuses longer decimal conversions by default (sys.int_info's 4300 digits); the
 * bound also keeps the quadratic conversion below cheap. */
#define MAX_TEXT_DIGITS 4300

/* INT and LONG: a decimal line (LONG may end in Python 2's 'L'). Beyond 64 bits the
 * value is converted to the little-endian two's complement LONG1 would carry. */
int pk_push_text_int(pk_reader *r)
{
    const uint8_t *s = NULL;
    size_t n = 0;
    char q[64];
    int64_t v;
    if (pk_arg_line(r, &s, &n))
        return -1;
    if (r->op == 'L' && n && s[n - 1] == 'L')
        n--;
    if (parse_decimal(s, n, &v) == 0)
        return pk_push_int(r, v);
    size_t i = n && (s[0] == '-' || s[0] == '+');
    int neg = n && s[0] == '-';
    if (i == n || n - i > MAX_TEXT_DIGITS)
        return pk_rfail(r, "'%s' is not an integer of at most %d digits", pk_quote(q, sizeof q, s, n),
                        MAX_TEXT_DIGITS);
    /* Magnitude in base 256, little-endian: one multiply-add pass per digit. */
    size_t cap = (n - i) / 2 + 2, len = 0; /* 10^d < 256^(d/2 + 1) */
    uint8_t *b = pk_arena_alloc(r, cap);
    if (!b)
        return -1;
    for (; i < n; i++) {
        unsigned d = (unsigned)s[i] - '0';
        if (d > 9)
            return pk_rfail(r, "'%s' is not an integer", pk_quote(q, sizeof q, s, n));
        unsigned carry = d;
        for (size_t j = 0; j < len; j++) {
            carry += b[j] * 10u;
            b[j] = (uint8_t)carry;
            carry >>= 8;
        }
        if (carry)
            b[len++] = (uint8_t)carry;
    }
    /* Room for the sign bit, then two's complement, trimmed to the minimal form that
     * Python's encode_long writes (so a value reads the same from LONG as from LONG1). */
    b[len++] = 0;
    if (neg) {
        unsigned carry = 1;
        for (size_t j = 0; j < len; j++) {
            carry += (uint8_t)~b[j];
            b[j] = (uint8_t)carry;
            carry >>= 8;
        }
        while (len > 1 && b[len - 1] == 0xff && (b[len - 2] & 0x80))
            len--;
    } else if (len > 1 && !(b[len - 2] & 0x80)) {
        len--;
    }
    return pk_push_long(r, b, len);
}

/* UTF-8 as Python's pickle accepts it (decoder 'surrogatepass': lone surrogates pass). */
static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* k continuation bytes; the first one's range excludes overlong forms and
         * code points above U+10FFFF (surrogates, ED A0-BF, stay allowed). */
        size_t k;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        } else {
            return 0;
        }
        if (n - i <= k || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t j = 2; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
        i += k + 1;
    }
    return 1;
}

static size_t utf8_put(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

static int hex_digit(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20; /* folds A-F onto a-f */
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The UNICODE opcode's raw-unicode-escape text: bytes are Latin-1 code points, except
 * \uXXXX and \UXXXXXXXX after an odd number of backslashes. Decoded into UTF-8. */
int pk_push_raw_unicode(pk_reader *r, const uint8_t *s, size_t n)
{
    if (n > (SIZE_MAX - 1) / 2) {
        pk_charge(r, SIZE_MAX);
        return -1;
    }
    fli_pk *o = pk_new_obj(r, FL_PK_STR);
    uint8_t *out = o ? pk_arena_alloc(r, 2 * n + 1) : NULL; /* 1 byte in -> at most 2 out */
    if (!out)
        return -1;
    size_t w = 0, i = 0;
    while (i < n) {
        if (s[i] != '\\') {
            w += utf8_put(out + w, s[i++]);
            continue;
        }
        size_t run = 0;
        while (i < n && s[i] == '\\') {
            out[w++] = '\\';
            i++;
            run++;
        }
        if (run % 2 == 0 || i == n || (s[i] != 'u' && s[i] != 'U'))
            continue;
        w--; /* the last backslash starts the escape */
        size_t digits = s[i] == 'u' ? 4 : 8;
        i++;
        uint32_t cp = 0;
        for (size_t j = 0; j < digits; j++, i++) {
            int d = i < n ? hex_digit(s[i]) : -1;
            if (d < 0)
                return pk_rfail(r, "bad \\%c escape in the text (needs %zu hex digits)",
                                digits == 4 ? 'u' : 'U', digits);
            cp = cp * 16 + (uint32_t)d;
        }
        if (cp > 0x10ffff)
            return pk_rfail(r, "\\U escape beyond U+10FFFF");
        w += utf8_put(out + w, cp);
    }
    out[w] = 0;
    o->u.s.p = (const char *)out;
    o->u.s.n = w;
    return pk_push(r, o);
}

/* str / bytes with a binary length of n_len bytes. */
int pk_push_counted(pk_reader *r, uint8_t type, int n_len, int signed_len)
{
    uint64_t n;
    if (pk_arg_uint(r, n_len, &n))
        return -1;
    if (signed_len && (n >> 31))
        return pk_rfail(r, "negative length");
    if (pk_need_bytes(r, n, type == FL_PK_STR ? "a string" : "a bytes object"))
        return -1;
    const uint8_t *s = r->p + r->pos;
    r->pos += (size_t)n;
    if (type == FL_PK_STR && (r->op == 'T' || r->op == 'U')) {
        /* Python 2 str: Python 3 decodes it as ASCII by default, so do we. */
        for (size_t i = 0; i < n; i++)
            if (s[i] >= 0x80)
                return pk_rfail(r, "byte 0x%02x at offset %zu of a Python 2 string is not ASCII", s[i], i);
    } else if (type == FL_PK_STR && !utf8_valid(s, (size_t)n)) {
        return pk_rfail(r, "the string is not valid UTF-8");
    }
    fli_pk *o = pk_new_bytes(r, type, s, (size_t)n);
    return o ? pk_push(r, o) : -1;
}
