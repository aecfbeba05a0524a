/* The restricted pickle reader: one pass over the opcodes with explicit stacks (values,
 * marks, memo) and an arena for the values, all charged against one memory budget.
 * Opcodes that import or call code are refused by name; nothing is ever executed. */
#include "trace/pickle.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the document and its arena ------------------------------------------------------ */

typedef struct chunk {
    struct chunk *next;
    size_t size, used;  /* of the data that follows the header */
} chunk;

/* Data starts 16-byte aligned after the header (malloc's alignment on our platforms). */
#define CHUNK_HDR ((sizeof(chunk) + 15) & ~(size_t)15)
static inline unsigned char *chunk_data(chunk *c) { return (unsigned char *)c + CHUNK_HDR; }

struct fl_pk_doc {
    chunk *chunks;      /* the head is the one being filled */
    size_t bytes;       /* held by the chunks, headers included */
    const fl_pk *root;
    int protocol;
    char *name;
};

/* Chunks grow with the document, from 4 KiB (a small pickle stays small) to 256 KiB
 * (a 4 MB snapshot takes ~60 chunks). An allocation above a quarter of the chunk size
 * gets a chunk of its own, so a big list does not waste the rest of the current one. */
#define CHUNK_MIN ((size_t)4 << 10)
#define CHUNK_MAX ((size_t)256 << 10)
#define MAX_PROTOCOL 5
#define ERR_MAX 400

/* None and the booleans are never mutated, so every document shares them. */
static fl_pk pk_none = {.type = FL_PK_NONE};
static fl_pk pk_true = {.type = FL_PK_BOOL, .u.i = 1};
static fl_pk pk_false = {.type = FL_PK_BOOL, .u.i = 0};

static void doc_free(fl_pk_doc *d)
{
    if (!d)
        return;
    for (chunk *c = d->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(d->name);
    free(d);
}

void fl_pickle_free(fl_pk_doc *doc) { doc_free(doc); }
const fl_pk *fl_pk_doc_root(const fl_pk_doc *doc) { return doc->root; }
const char *fl_pk_doc_name(const fl_pk_doc *doc) { return doc->name; }
int fl_pk_doc_protocol(const fl_pk_doc *doc) { return doc->protocol; }
size_t fl_pk_doc_bytes(const fl_pk_doc *doc) { return doc->bytes; }

/* ---- the reader ----------------------------------------------------------------------- */

typedef struct reader {
    const uint8_t *p;
    size_t len, pos;
    size_t at;              /* offset of the opcode being run, for messages */
    uint8_t op;
    const char *name;
    fl_pk_doc *doc;
    size_t max, used;       /* the memory budget and what is charged against it */
    fl_status err;          /* set by helpers that return NULL */
    fl_pk **stack;
    size_t sn, scap;
    size_t *marks;          /* stack heights at each MARK; the top one is the fence */
    size_t mn, mcap;
    fl_pk **memo;           /* dense by id: ids are small and consecutive in practice */
    size_t memo_cap, memo_count;
} reader;

static const char *const op_names[256] = {
    ['('] = "MARK", ['.'] = "STOP", ['0'] = "POP", ['1'] = "POP_MARK", ['2'] = "DUP",
    ['F'] = "FLOAT", ['I'] = "INT", ['J'] = "BININT", ['K'] = "BININT1", ['L'] = "LONG",
    ['M'] = "BININT2", ['N'] = "NONE", ['P'] = "PERSID", ['Q'] = "BINPERSID", ['R'] = "REDUCE",
    ['S'] = "STRING", ['T'] = "BINSTRING", ['U'] = "SHORT_BINSTRING", ['V'] = "UNICODE",
    ['X'] = "BINUNICODE", ['a'] = "APPEND", ['b'] = "BUILD", ['c'] = "GLOBAL", ['d'] = "DICT",
    ['}'] = "EMPTY_DICT", ['e'] = "APPENDS", ['g'] = "GET", ['h'] = "BINGET", ['i'] = "INST",
    ['j'] = "LONG_BINGET", ['l'] = "LIST", [']'] = "EMPTY_LIST", ['o'] = "OBJ", ['p'] = "PUT",
    ['q'] = "BINPUT", ['r'] = "LONG_BINPUT", ['s'] = "SETITEM", ['t'] = "TUPLE",
    [')'] = "EMPTY_TUPLE", ['u'] = "SETITEMS", ['G'] = "BINFLOAT", ['B'] = "BINBYTES",
    ['C'] = "SHORT_BINBYTES", [0x80] = "PROTO", [0x81] = "NEWOBJ", [0x82] = "EXT1",
    [0x83] = "EXT2", [0x84] = "EXT4", [0x85] = "TUPLE1", [0x86] = "TUPLE2", [0x87] = "TUPLE3",
    [0x88] = "NEWTRUE", [0x89] = "NEWFALSE", [0x8a] = "LONG1", [0x8b] = "LONG4",
    [0x8c] = "SHORT_BINUNICODE", [0x8d] = "BINUNICODE8", [0x8e] = "BINBYTES8",
    [0x8f] = "EMPTY_SET", [0x90] = "ADDITEMS", [0x91] = "FROZENSET", [0x92] = "NEWOBJ_EX",
    [0x93] = "STACK_GLOBAL", [0x94] = "MEMOIZE", [0x95] = "FRAME", [0x96] = "BYTEARRAY8",
    [0x97] = "NEXT_BUFFER", [0x98] = "READONLY_BUFFER",
};

/* "NAME ('c')" or "NAME (0x93)", for messages. */
static const char *op_label(char *buf, size_t n, uint8_t op)
{
    const char *name = op_names[op] ? op_names[op] : "unknown";
    if (op >= 0x20 && op < 0x7f && op != '\'' && op != '\\')
        snprintf(buf, n, "%s ('%c')", name, op);
    else
        snprintf(buf, n, "%s (0x%02x)", name, op);
    return buf;
}

/* A file that fails on its first byte without PROTO is most likely not a pickle at all
 * (a CSV trace, JSON): say so rather than only what byte 0 would mean as an opcode. */
static const char *not_a_pickle_hint(const reader *r)
{
    return r->at == 0 && r->len && r->p[0] != 0x80 ? " (no PROTO opcode at byte 0: is this a pickle?)" : "";
}

/* Every error of the reader: "NAME: byte AT: OPNAME: problem". Returns -1 so that
 * `return rfail(...)` ends the opcode. */
static int rfail(reader *r, const char *fmt, ...) FL_PRINTF(2, 3);
static int rfail(reader *r, const char *fmt, ...)
{
    char msg[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *name = op_names[r->op] ? op_names[r->op] : "opcode";
    r->err = fl_fail(FL_ERR_PARSE, "%s: byte %zu: %s: %s%s", r->name, r->at, name, msg,
                     not_a_pickle_hint(r));
    return -1;
}

/* Quotes untrusted text for a message: printable ASCII as is, the rest as \xNN, cut. */
static const char *quote(char *out, size_t cap, const uint8_t *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (o + 8 >= cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = 0;
    return out;
}

/* Charges n bytes against the budget; the message says what the limit is. */
static int charge(reader *r, size_t n)
{
    if (n > r->max - r->used) {
        char lim[32];
        return rfail(r, "the pickle needs more than the memory limit of %s: refused",
                     fl_format_size(r->max, lim, sizeof lim));
    }
    r->used += n;
    return 0;
}

static void *arena_alloc(reader *r, size_t n)
{
    if (n > r->max) {
        charge(r, SIZE_MAX); /* fails with the limit message */
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    fl_pk_doc *d = r->doc;
    chunk *c = d->chunks;
    if (c && c->size - c->used >= n) {
        void *p = chunk_data(c) + c->used;
        c->used += n;
        return p;
    }
    size_t step = d->bytes < CHUNK_MIN ? CHUNK_MIN : d->bytes > CHUNK_MAX ? CHUNK_MAX : d->bytes;
    int own = n > step / 4;
    size_t size = own ? n : step;
    if (charge(r, CHUNK_HDR + size))
        return NULL;
    chunk *nc = malloc(CHUNK_HDR + size);
    if (!nc) {
        r->err = fl_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory for %zu bytes", r->name, r->at, size);
        return NULL;
    }
    nc->size = size;
    nc->used = n;
    d->bytes += CHUNK_HDR + size;
    if (c && own) {
        /* Keep filling the current chunk: the big block goes behind it. */
        nc->next = c->next;
        c->next = nc;
    } else {
        nc->next = c;
        d->chunks = nc;
    }
    return chunk_data(nc);
}

/* Grows a heap array of elem-byte items to hold need items, charging the growth. */
static int grow(reader *r, void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    if (ncap > r->max / elem) {
        charge(r, SIZE_MAX);
        return -1;
    }
    if (charge(r, (ncap - *cap) * elem))
        return -1;
    void *p = realloc(*arr, ncap * elem);
    if (!p) {
        r->err = fl_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory", r->name, r->at);
        return -1;
    }
    *arr = p;
    *cap = ncap;
    return 0;
}

static inline int push(reader *r, fl_pk *o)
{
    if (FL_UNLIKELY(r->sn == r->scap) && grow(r, (void **)&r->stack, &r->scap, r->sn + 1, sizeof *r->stack))
        return -1;
    r->stack[r->sn++] = o;
    return 0;
}

static inline size_t fence(const reader *r) { return r->mn ? r->marks[r->mn - 1] : 0; }

/* Values above the innermost MARK: what an opcode may pop. */
static inline int need_above(reader *r, size_t n)
{
    if (FL_LIKELY(r->sn - fence(r) >= n))
        return 0;
    return rfail(r, "needs %zu value%s on the stack%s, found %zu", n, n == 1 ? "" : "s",
                 r->mn ? " above the last MARK" : "", r->sn - fence(r));
}

/* Pops the innermost MARK; its height is where the marked items start. */
static int pop_mark(reader *r, size_t *k)
{
    if (!r->mn)
        return rfail(r, "no MARK to close");
    *k = r->marks[--r->mn];
    return 0;
}

static fl_pk *new_obj(reader *r, uint8_t type)
{
    fl_pk *o = arena_alloc(r, sizeof *o);
    if (o) {
        memset(o, 0, sizeof *o);
        o->type = type;
    }
    return o;
}

static int push_int(reader *r, int64_t v)
{
    fl_pk *o = new_obj(r, FL_PK_INT);
    if (!o)
        return -1;
    o->u.i = v;
    return push(r, o);
}

/* A str or bytes object copied into the arena with a terminating NUL. */
static fl_pk *new_bytes(reader *r, uint8_t type, const void *s, size_t n)
{
    fl_pk *o = new_obj(r, type);
    char *p = o && n < SIZE_MAX ? arena_alloc(r, n + 1) : NULL;
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    o->u.s.p = p;
    o->u.s.n = n;
    return o;
}

/* Items array of a list, tuple or dict (2 pointers per pair) grown to hold add more. */
static int seq_reserve(reader *r, fl_pk *o, size_t add)
{
    size_t per = o->type == FL_PK_DICT ? 2 : 1;
    size_t have = o->u.seq.n * per;
    if (add <= o->u.seq.cap - have)
        return 0;
    size_t need = have + add;
    size_t ncap = o->u.seq.cap * 2 > need ? o->u.seq.cap * 2 : need;
    if (ncap > r->max / sizeof(fl_pk *)) {
        charge(r, SIZE_MAX);
        return -1;
    }
    fl_pk **v = arena_alloc(r, ncap * sizeof *v);
    if (!v)
        return -1;
    if (have)
        memcpy(v, o->u.seq.v, have * sizeof *v);
    o->u.seq.v = v; /* the old array stays in the arena: appends after creation are rare */
    o->u.seq.cap = ncap;
    return 0;
}

/* A new list/tuple/dict holding stack[k..sn); the items leave the stack. */
static fl_pk *seq_from_stack(reader *r, uint8_t type, size_t k)
{
    fl_pk *o = new_obj(r, type);
    size_t n = r->sn - k;
    if (!o || (n && seq_reserve(r, o, n)))
        return NULL;
    if (n)
        memcpy(o->u.seq.v, r->stack + k, n * sizeof *o->u.seq.v);
    o->u.seq.n = type == FL_PK_DICT ? n / 2 : n;
    r->sn = k;
    return o;
}

static int hashable_key(reader *r, const fl_pk *key)
{
    if (key->type == FL_PK_LIST || key->type == FL_PK_DICT)
        return rfail(r, "a dict key is %s: unhashable", fl_pk_type_name(key->type));
    return 0;
}

/* Appends stack[k..sn) to list; they leave the stack. */
static int list_extend(reader *r, fl_pk *list, size_t k)
{
    if (list->type != FL_PK_LIST)
        return rfail(r, "the target is %s, expected a list", fl_pk_type_name(list->type));
    size_t n = r->sn - k;
    if (n && (seq_reserve(r, list, n) ||
              !memcpy(list->u.seq.v + list->u.seq.n, r->stack + k, n * sizeof(fl_pk *))))
        return -1;
    list->u.seq.n += n;
    r->sn = k;
    return 0;
}

/* stack[k..sn) must be key/value pairs with keys Python could hash. */
static int check_pairs(reader *r, size_t k)
{
    if ((r->sn - k) % 2)
        return rfail(r, "%zu values for key/value pairs: odd", r->sn - k);
    for (size_t i = k; i < r->sn; i += 2)
        if (hashable_key(r, r->stack[i]))
            return -1;
    return 0;
}

/* Adds the pairs stack[k..sn) to dict; they leave the stack. */
static int dict_update(reader *r, fl_pk *dict, size_t k)
{
    if (dict->type != FL_PK_DICT)
        return rfail(r, "the target is %s, expected a dict", fl_pk_type_name(dict->type));
    if (check_pairs(r, k))
        return -1;
    size_t n = r->sn - k;
    if (n && (seq_reserve(r, dict, n) ||
              !memcpy(dict->u.seq.v + 2 * dict->u.seq.n, r->stack + k, n * sizeof(fl_pk *))))
        return -1;
    dict->u.seq.n += n / 2;
    r->sn = k;
    return 0;
}

/* ---- argument readers ---------------------------------------------------------------- */

static inline int need_bytes(reader *r, uint64_t n, const char *what)
{
    if (FL_LIKELY(n <= r->len - r->pos))
        return 0;
    return rfail(r, "%s of %llu bytes runs past the end of the file (%zu bytes left): truncated or bad "
                 "length", what, (unsigned long long)n, r->len - r->pos);
}

static inline uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Reads an n-byte little-endian unsigned argument. */
static int arg_uint(reader *r, int n, uint64_t *v)
{
    if (need_bytes(r, (uint64_t)n, "the argument"))
        return -1;
    *v = le(r->p + r->pos, n);
    r->pos += (size_t)n;
    return 0;
}

/* A text argument up to '\n' (the newline is consumed, not returned). */
static int arg_line(reader *r, const uint8_t **s, size_t *n)
{
    const uint8_t *start = r->p + r->pos;
    const uint8_t *nl = memchr(start, '\n', r->len - r->pos);
    if (!nl)
        return rfail(r, "its text argument has no newline before the end of the file: truncated");
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
static int text_int(reader *r, int64_t *v, const char *what)
{
    const uint8_t *s;
    size_t n;
    char q[64];
    if (arg_line(r, &s, &n))
        return -1;
    if (parse_decimal(s, n, v))
        return rfail(r, "'%s' is not %s", quote(q, sizeof q, s, n), what);
    return 0;
}

/* LONG1/LONG4 payload: little-endian two's complement of any length. */
static int push_long(reader *r, const uint8_t *b, size_t n)
{
    if (n == 0)
        return push_int(r, 0);
    int neg = b[n - 1] >> 7;
    /* Fits in 64 bits when every byte past the 8th is sign extension of the 8th. */
    int fits = 1;
    for (size_t i = 8; i < n && fits; i++)
        fits = b[i] == (neg ? 0xff : 0x00);
    if (n > 8 && fits && (b[7] >> 7) != neg)
        fits = 0;
    if (!fits) {
        fl_pk *o = new_bytes(r, FL_PK_BIGINT, b, n);
        return o ? push(r, o) : -1;
    }
    uint64_t v = neg ? UINT64_MAX : 0;
    size_t m = n < 8 ? n : 8;
    for (size_t i = 0; i < m; i++) {
        v &= ~((uint64_t)0xff << (8 * i));
        v |= (uint64_t)b[i] << (8 * i);
    }
    int64_t iv;
    memcpy(&iv, &v, sizeof iv); /* two's complement reinterpretation */
    return push_int(r, iv);
}

/* Python refuses longer decimal conversions by default (sys.int_info's 4300 digits); the
 * bound also keeps the quadratic conversion below cheap. */
#define MAX_TEXT_DIGITS 4300

/* INT and LONG: a decimal line (LONG may end in Python 2's 'L'). Beyond 64 bits the
 * value is converted to the little-endian two's complement LONG1 would carry. */
static int push_text_int(reader *r)
{
    const uint8_t *s;
    size_t n;
    char q[64];
    int64_t v;
    if (arg_line(r, &s, &n))
        return -1;
    if (r->op == 'L' && n && s[n - 1] == 'L')
        n--;
    if (parse_decimal(s, n, &v) == 0)
        return push_int(r, v);
    size_t i = n && (s[0] == '-' || s[0] == '+');
    int neg = n && s[0] == '-';
    if (i == n || n - i > MAX_TEXT_DIGITS)
        return rfail(r, "'%s' is not an integer of at most %d digits", quote(q, sizeof q, s, n),
                     MAX_TEXT_DIGITS);
    /* Magnitude in base 256, little-endian: one multiply-add pass per digit. */
    size_t cap = (n - i) / 2 + 2, len = 0; /* 10^d < 256^(d/2 + 1) */
    uint8_t *b = arena_alloc(r, cap);
    if (!b)
        return -1;
    for (; i < n; i++) {
        unsigned d = (unsigned)s[i] - '0';
        if (d > 9)
            return rfail(r, "'%s' is not an integer", quote(q, sizeof q, s, n));
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
    return push_long(r, b, len);
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
static int push_raw_unicode(reader *r, const uint8_t *s, size_t n)
{
    if (n > (SIZE_MAX - 1) / 2) {
        charge(r, SIZE_MAX);
        return -1;
    }
    fl_pk *o = new_obj(r, FL_PK_STR);
    uint8_t *out = o ? arena_alloc(r, 2 * n + 1) : NULL; /* 1 byte in -> at most 2 out */
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
                return rfail(r, "bad \\%c escape in the text (needs %zu hex digits)",
                             digits == 4 ? 'u' : 'U', digits);
            cp = cp * 16 + (uint32_t)d;
        }
        if (cp > 0x10ffff)
            return rfail(r, "\\U escape beyond U+10FFFF");
        w += utf8_put(out + w, cp);
    }
    out[w] = 0;
    o->u.s.p = (const char *)out;
    o->u.s.n = w;
    return push(r, o);
}

/* str / bytes with a binary length of n_len bytes. */
static int push_counted(reader *r, uint8_t type, int n_len, int signed_len)
{
    uint64_t n;
    if (arg_uint(r, n_len, &n))
        return -1;
    if (signed_len && (n >> 31))
        return rfail(r, "negative length");
    if (need_bytes(r, n, type == FL_PK_STR ? "a string" : "a bytes object"))
        return -1;
    const uint8_t *s = r->p + r->pos;
    r->pos += (size_t)n;
    if (type == FL_PK_STR && (r->op == 'T' || r->op == 'U')) {
        /* Python 2 str: Python 3 decodes it as ASCII by default, so do we. */
        for (size_t i = 0; i < n; i++)
            if (s[i] >= 0x80)
                return rfail(r, "byte 0x%02x at offset %zu of a Python 2 string is not ASCII", s[i], i);
    } else if (type == FL_PK_STR && !utf8_valid(s, (size_t)n)) {
        return rfail(r, "the string is not valid UTF-8");
    }
    fl_pk *o = new_bytes(r, type, s, (size_t)n);
    return o ? push(r, o) : -1;
}

/* ---- the memo ------------------------------------------------------------------------ */

static int memo_put(reader *r, uint64_t id)
{
    if (need_above(r, 1))
        return -1;
    if (id >= r->memo_cap) {
        if (id >= r->max / sizeof(fl_pk *))
            return rfail(r, "memo id %llu would need more memory than the limit", (unsigned long long)id);
        size_t old = r->memo_cap;
        if (grow(r, (void **)&r->memo, &r->memo_cap, (size_t)id + 1, sizeof *r->memo))
            return -1;
        memset(r->memo + old, 0, (r->memo_cap - old) * sizeof *r->memo);
    }
    if (!r->memo[id])
        r->memo_count++;
    r->memo[id] = r->stack[r->sn - 1];
    return 0;
}

static int memo_get(reader *r, uint64_t id)
{
    if (id >= r->memo_cap || !r->memo[id])
        return rfail(r, "memo id %llu was never stored", (unsigned long long)id);
    return push(r, r->memo[id]);
}

/* ---- refused opcodes ------------------------------------------------------------------ */

static void refuse(reader *r, const char *why, const char *detail)
{
    char label[48];
    op_label(label, sizeof label, r->op);
    /* The em dash is UTF-8, like the rest of the messages users read. */
    r->err = fl_fail(FL_ERR_PARSE,
                     "%s: byte %zu: opcode %s %s%s%s%s: refused \xe2\x80\x94 fragless reads only plain data",
                     r->name, r->at, label, why, detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
}

/* GLOBAL and INST name a module and an attribute on two lines: show them. */
static void refuse_import_lines(reader *r)
{
    char detail[160], a[64], b[64];
    const uint8_t *s = r->p + r->pos, *end = r->p + r->len;
    const uint8_t *nl1 = memchr(s, '\n', (size_t)(end - s));
    const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    if (nl2)
        snprintf(detail, sizeof detail, "%s.%s", quote(a, sizeof a, s, (size_t)(nl1 - s)),
                 quote(b, sizeof b, nl1 + 1, (size_t)(nl2 - nl1 - 1)));
    refuse(r, "would import code", nl2 ? detail : NULL);
}

static void refuse_stack_global(reader *r)
{
    char detail[160], a[64], b[64];
    if (r->sn >= 2 && r->stack[r->sn - 2]->type == FL_PK_STR && r->stack[r->sn - 1]->type == FL_PK_STR) {
        const fl_pk *m = r->stack[r->sn - 2], *n = r->stack[r->sn - 1];
        snprintf(detail, sizeof detail, "%s.%s", quote(a, sizeof a, (const uint8_t *)m->u.s.p, m->u.s.n),
                 quote(b, sizeof b, (const uint8_t *)n->u.s.p, n->u.s.n));
        refuse(r, "would import code", detail);
    } else {
        refuse(r, "would import code", NULL);
    }
}

static void refuse_ext(reader *r, int n)
{
    char detail[64];
    if (r->len - r->pos >= (size_t)n) {
        snprintf(detail, sizeof detail, "extension registry code %llu",
                 (unsigned long long)le(r->p + r->pos, n));
        refuse(r, "would import code", detail);
    } else {
        refuse(r, "would import code", NULL);
    }
}

/* ---- the opcode loop ------------------------------------------------------------------ */

#define TRY(x)                                                                                      \
    do {                                                                                            \
        if (x)                                                                                      \
            return -1;                                                                              \
    } while (0)

/* Width in bytes of the little-endian argument of the fixed-width opcodes. */
static int arg_width(uint8_t op)
{
    switch (op) {
    case 'K': case 'C': case 'U': case 0x8c: case 'q': case 'h': case 0x8a: case 0x82: return 1;
    case 'M': case 0x83: return 2;
    case 'J': case 'X': case 'B': case 'T': case 'r': case 'j': case 0x8b: case 0x84: return 4;
    default: return 8; /* BINUNICODE8, BINBYTES8, BYTEARRAY8, FRAME */
    }
}

static int run_refused(reader *r)
{
    switch (r->op) {
    case 'c': /* GLOBAL */
    case 'i': /* INST */
        refuse_import_lines(r);
        break;
    case 0x93: /* STACK_GLOBAL */
        refuse_stack_global(r);
        break;
    case 0x82: /* EXT1, EXT2, EXT4: the copyreg extension registry */
    case 0x83:
    case 0x84:
        refuse_ext(r, arg_width(r->op));
        break;
    case 'R': /* REDUCE */
    case 'b': /* BUILD */
    case 'o': /* OBJ */
    case 0x81: /* NEWOBJ */
    case 0x92: /* NEWOBJ_EX */
        refuse(r, "would call code", NULL);
        break;
    case 'P': /* PERSID */
    case 'Q': /* BINPERSID */
        refuse(r, "would call a persistent-id loader", NULL);
        break;
    case 0x97: /* NEXT_BUFFER */
    case 0x98: /* READONLY_BUFFER */
        refuse(r, "needs out-of-band buffers", NULL);
        break;
    case 'S': { /* STRING: protocol 0's quoted Python 2 str, never written for Python 3 data */
        char label[48];
        r->err = fl_fail(FL_ERR_PARSE,
                         "%s: byte %zu: opcode %s is not supported (a protocol 0 quoted string): refused",
                         r->name, r->at, op_label(label, sizeof label, r->op));
        break;
    }
    default:
        r->err = fl_fail(FL_ERR_PARSE,
                         "%s: byte %zu: unknown opcode 0x%02x: refused (not a pickle, or newer than "
                         "protocol 5)", r->name, r->at, r->op);
    }
    return -1;
}

/* Runs opcodes until STOP; sets doc->root. Returns 0 or -1 (r->err set). */
static int run(reader *r)
{
    uint64_t u;
    int64_t iv;
    size_t k = 0, n;
    fl_pk *o;
    while (r->pos < r->len) {
        r->at = r->pos;
        r->op = r->p[r->pos++];
        switch (r->op) {
        /* framing */
        case 0x80: /* PROTO */
            TRY(arg_uint(r, 1, &u));
            if (u > MAX_PROTOCOL)
                return rfail(r, "protocol %llu is newer than 5, the newest this reader knows",
                             (unsigned long long)u);
            r->doc->protocol = (int)u;
            break;
        case 0x95: /* FRAME: a length hint for buffered readers; checked, then ignored */
            TRY(arg_uint(r, 8, &u) || need_bytes(r, u, "the frame"));
            break;
        case '.': /* STOP */
            TRY(need_above(r, 1));
            r->doc->root = r->stack[--r->sn];
            if (r->mn)
                return rfail(r, "%zu MARK%s never closed", r->mn, r->mn == 1 ? " was" : "s were");
            if (r->sn)
                return rfail(r, "%zu value%s left on the stack", r->sn, r->sn == 1 ? "" : "s");
            if (r->pos != r->len)
                return rfail(r, "%zu bytes follow the end of the pickle: not a single pickle",
                             r->len - r->pos);
            return 0;
        /* the stack */
        case '(': /* MARK */
            TRY(r->mn == r->mcap && grow(r, (void **)&r->marks, &r->mcap, r->mn + 1, sizeof *r->marks));
            r->marks[r->mn++] = r->sn;
            break;
        case '0': /* POP: Python pops the MARK itself when nothing is above it */
            if (r->sn > fence(r))
                r->sn--;
            else if (r->mn)
                r->mn--;
            else
                return rfail(r, "the stack is empty");
            break;
        case '1': /* POP_MARK */
            TRY(pop_mark(r, &k));
            r->sn = k;
            break;
        case '2': /* DUP */
            TRY(need_above(r, 1) || push(r, r->stack[r->sn - 1]));
            break;
        /* scalars */
        case 'N': /* NONE */
            TRY(push(r, &pk_none));
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            TRY(push(r, r->op == 0x88 ? &pk_true : &pk_false));
            break;
        case 'I': /* INT: text; protocol 0 wrote True/False as I01/I00 */
            if (r->len - r->pos >= 3 && r->p[r->pos] == '0' && r->p[r->pos + 2] == '\n' &&
                (r->p[r->pos + 1] == '0' || r->p[r->pos + 1] == '1')) {
                TRY(push(r, r->p[r->pos + 1] == '1' ? &pk_true : &pk_false));
                r->pos += 3;
                break;
            }
            TRY(push_text_int(r));
            break;
        case 'L': /* LONG: text */
            TRY(push_text_int(r));
            break;
        case 'J': /* BININT: signed */
            TRY(arg_uint(r, 4, &u) || push_int(r, (int64_t)(int32_t)(uint32_t)u));
            break;
        case 'K': /* BININT1, BININT2: unsigned */
        case 'M':
            TRY(arg_uint(r, arg_width(r->op), &u) || push_int(r, (int64_t)u));
            break;
        case 0x8a: /* LONG1, LONG4: two's complement of a given length */
        case 0x8b:
            TRY(arg_uint(r, arg_width(r->op), &u));
            if (r->op == 0x8b && (u >> 31))
                return rfail(r, "negative length");
            TRY(need_bytes(r, u, "an integer"));
            r->pos += (size_t)u;
            TRY(push_long(r, r->p + r->pos - u, (size_t)u));
            break;
        case 'F': { /* FLOAT: text, repr() of a float */
            char buf[64], q[64], *end;
            const uint8_t *s;
            TRY(arg_line(r, &s, &n));
            if (n && n < sizeof buf) {
                memcpy(buf, s, n);
                buf[n] = 0;
            }
            double d = n && n < sizeof buf ? strtod(buf, &end) : 0;
            if (!n || n >= sizeof buf || end != buf + n)
                return rfail(r, "'%s' is not a float", quote(q, sizeof q, s, n));
            TRY(!(o = new_obj(r, FL_PK_FLOAT)));
            o->u.f = d;
            TRY(push(r, o));
            break;
        }
        case 'G': /* BINFLOAT: 8 bytes big-endian IEEE 754 */
            TRY(need_bytes(r, 8, "the argument") || !(o = new_obj(r, FL_PK_FLOAT)));
            u = 0;
            for (int i = 0; i < 8; i++)
                u = (u << 8) | r->p[r->pos++];
            memcpy(&o->u.f, &u, sizeof u);
            TRY(push(r, o));
            break;
        /* strings and bytes, by their length's width */
        case 'X': /* BINUNICODE */
        case 0x8c: /* SHORT_BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
        case 'U': /* SHORT_BINSTRING */
            TRY(push_counted(r, FL_PK_STR, arg_width(r->op), 0));
            break;
        case 'T': /* BINSTRING: signed length */
            TRY(push_counted(r, FL_PK_STR, 4, 1));
            break;
        case 'B': /* BINBYTES */
        case 'C': /* SHORT_BINBYTES */
        case 0x8e: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8: a bytearray is plain bytes to us */
            TRY(push_counted(r, FL_PK_BYTES, arg_width(r->op), 0));
            break;
        case 'V': { /* UNICODE: raw-unicode-escape text */
            const uint8_t *s;
            TRY(arg_line(r, &s, &n) || push_raw_unicode(r, s, n));
            break;
        }
        /* containers */
        case ']': /* EMPTY_LIST, EMPTY_SET, EMPTY_TUPLE, EMPTY_DICT */
        case 0x8f:
        case ')':
        case '}':
            TRY(!(o = new_obj(r, r->op == ')' ? FL_PK_TUPLE : r->op == '}' ? FL_PK_DICT : FL_PK_LIST)) ||
                push(r, o));
            break;
        case 'a': /* APPEND */
            TRY(need_above(r, 2) || list_extend(r, r->stack[r->sn - 2], r->sn - 1));
            break;
        case 'e': /* APPENDS, ADDITEMS */
        case 0x90:
            TRY(pop_mark(r, &k));
            if (k <= fence(r))
                return rfail(r, "no list below the MARK");
            TRY(list_extend(r, r->stack[k - 1], k));
            break;
        case 'l': /* LIST, FROZENSET, TUPLE */
        case 0x91:
        case 't':
            TRY(pop_mark(r, &k) || !(o = seq_from_stack(r, r->op == 't' ? FL_PK_TUPLE : FL_PK_LIST, k)) ||
                push(r, o));
            break;
        case 0x85: /* TUPLE1, TUPLE2, TUPLE3 */
        case 0x86:
        case 0x87:
            n = (size_t)(r->op - 0x84);
            TRY(need_above(r, n) || !(o = seq_from_stack(r, FL_PK_TUPLE, r->sn - n)) || push(r, o));
            break;
        case 'd': /* DICT */
            TRY(pop_mark(r, &k) || check_pairs(r, k) || !(o = seq_from_stack(r, FL_PK_DICT, k)) ||
                push(r, o));
            break;
        case 's': /* SETITEM */
            TRY(need_above(r, 3) || dict_update(r, r->stack[r->sn - 3], r->sn - 2));
            break;
        case 'u': /* SETITEMS */
            TRY(pop_mark(r, &k));
            if (k <= fence(r))
                return rfail(r, "no dict below the MARK");
            TRY(dict_update(r, r->stack[k - 1], k));
            break;
        /* the memo */
        case 'p': /* PUT, GET: text ids */
        case 'g':
            TRY(text_int(r, &iv, "a memo id"));
            if (iv < 0)
                return rfail(r, "negative memo id %lld", (long long)iv);
            TRY(r->op == 'p' ? memo_put(r, (uint64_t)iv) : memo_get(r, (uint64_t)iv));
            break;
        case 'q': /* BINPUT, LONG_BINPUT */
        case 'r':
            TRY(arg_uint(r, arg_width(r->op), &u) || memo_put(r, u));
            break;
        case 'h': /* BINGET, LONG_BINGET */
        case 'j':
            TRY(arg_uint(r, arg_width(r->op), &u) || memo_get(r, u));
            break;
        case 0x94: /* MEMOIZE: the next id is the number of entries, as in Python */
            TRY(memo_put(r, r->memo_count));
            break;
        default: /* every opcode that would run code, and unknown ones */
            return run_refused(r);
        }
    }
    r->at = r->pos;
    if (r->len == 0)
        r->err = fl_fail(FL_ERR_PARSE, "%s: byte 0: the file is empty: not a pickle", r->name);
    else
        r->err = fl_fail(FL_ERR_PARSE, "%s: byte %zu: the file ends before STOP: truncated", r->name,
                         r->len);
    return -1;
}

/* already_used: bytes of the budget the caller holds (the file's contents). */
static fl_status parse(const uint8_t *data, size_t len, const char *name, size_t max_bytes,
                       size_t already_used, fl_pk_doc **out)
{
    *out = NULL;
    fl_pk_doc *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->name = strdup(name))) {
        free(doc);
        return fl_fail(FL_ERR_NOMEM, "%s: no host memory", name);
    }
    reader r = {.p = data, .len = len, .name = name, .doc = doc, .max = max_bytes, .used = already_used};
    int rc = run(&r);
    free(r.stack);
    free(r.marks);
    free(r.memo);
    if (rc) {
        doc_free(doc);
        /* Every failing path sets err; the fallback keeps a failure from reading as FL_OK. */
        return r.err != FL_OK ? r.err : fl_fail(FL_ERR_PARSE, "%s: byte %zu: malformed", name, r.at);
    }
    *out = doc;
    return FL_OK;
}

fl_status fl_pickle_load_memory(const void *data, size_t len, const char *name, size_t max_bytes,
                                fl_pk_doc **out)
{
    if (!name)
        name = "<pickle>";
    if (!max_bytes)
        max_bytes = FL_PICKLE_DEFAULT_MAX_BYTES;
    if (!data && len) {
        *out = NULL;
        return fl_fail(FL_ERR_INVALID, "%s: no data", name);
    }
    return parse(data ? data : (const void *)"", len, name, max_bytes, 0, out);
}

fl_status fl_pickle_load(const char *path, size_t max_bytes, fl_pk_doc **out)
{
    *out = NULL;
    if (!max_bytes)
        max_bytes = FL_PICKLE_DEFAULT_MAX_BYTES;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fl_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fl_fail(FL_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        char a[32], b[32];
        fclose(f);
        return fl_fail(FL_ERR_PARSE, "%s: the file is %s, over the memory limit of %s: refused", path,
                       fl_format_size((uint64_t)st.st_size, a, sizeof a),
                       fl_format_size(max_bytes, b, sizeof b));
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return fl_fail(FL_ERR_NOMEM, "%s: no host memory for %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    int read_err = ferror(f);
    fclose(f);
    if (got != len || read_err) {
        free(buf);
        return fl_fail(FL_ERR_IO, "%s: read error (%zu of %zu bytes)", path, got, len);
    }
    fl_status s = parse(buf, len, path, max_bytes, len, out);
    free(buf);
    return s;
}

/* ---- lookups -------------------------------------------------------------------------- */

const char *fl_pk_type_name(int type)
{
    static const char *const names[] = {"None",    "a bool",  "an int", "an int over 64 bits",
                                        "a float", "a str",   "bytes",  "a list",
                                        "a tuple", "a dict"};
    return type >= 0 && type <= FL_PK_DICT ? names[type] : "an unknown value";
}

int fl_pk_str_is(const fl_pk *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == FL_PK_STR && o->u.s.n == n && memcmp(o->u.s.p, s, n) == 0;
}

const fl_pk *fl_pk_dict_get(const fl_pk *d, const char *key)
{
    if (!d || d->type != FL_PK_DICT)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = d->u.seq.n; i-- > 0;) {
        const fl_pk *k = d->u.seq.v[2 * i];
        if (k->type == FL_PK_STR && k->u.s.n == n && memcmp(k->u.s.p, key, n) == 0)
            return d->u.seq.v[2 * i + 1];
    }
    return NULL;
}

static fl_status where_fail(const char *where_fmt, va_list ap, const char *fmt, ...) FL_PRINTF(3, 4);
static fl_status where_fail(const char *where_fmt, va_list ap, const char *fmt, ...)
{
    char where[256], what[256];
    vsnprintf(where, sizeof where, where_fmt, ap);
    va_list ap2;
    va_start(ap2, fmt);
    vsnprintf(what, sizeof what, fmt, ap2);
    va_end(ap2);
    return fl_fail(FL_ERR_PARSE, "%s: %s", where, what);
}

static const char *expected_name(int type)
{
    return type == FL_PK_INT ? "an int" : fl_pk_type_name(type);
}

/* d[key] with a type in mask. optional: absent or None gives FL_OK and *out = NULL. */
static fl_status lookup(const fl_pk *d, const char *key, unsigned mask, const char *expected, int optional,
                        const fl_pk **out, const char *where_fmt, va_list ap)
{
    *out = NULL;
    if (!d || d->type != FL_PK_DICT)
        return where_fail(where_fmt, ap, "is %s, expected a dict", d ? fl_pk_type_name(d->type) : "missing");
    const fl_pk *v = fl_pk_dict_get(d, key);
    if (!v || (optional && v->type == FL_PK_NONE)) {
        if (optional)
            return FL_OK;
        return where_fail(where_fmt, ap, "no key '%s'", key);
    }
    if (!(mask & (1u << v->type)))
        return where_fail(where_fmt, ap, "'%s' is %s, expected %s", key, fl_pk_type_name(v->type), expected);
    *out = v;
    return FL_OK;
}

fl_status fl_pk_check(const fl_pk *o, fl_pk_type type, const char *where_fmt, ...)
{
    if (o && o->type == type)
        return FL_OK;
    va_list ap;
    va_start(ap, where_fmt);
    fl_status s = where_fail(where_fmt, ap, "is %s, expected %s", o ? fl_pk_type_name(o->type) : "missing",
                             expected_name(type));
    va_end(ap);
    return s;
}

#define M(t) (1u << (t))

/* The getters share one body; want/opt differ only in `optional`. */
static fl_status get_value(const fl_pk *d, const char *key, fl_pk_type type, const fl_pk **out, int optional,
                           const char *where_fmt, va_list ap)
{
    return lookup(d, key, M(type), expected_name(type), optional, out, where_fmt, ap);
}

static fl_status get_int(const fl_pk *d, const char *key, int64_t *out, int optional, const char *where_fmt,
                         va_list ap)
{
    const fl_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_INT), "an int", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = v->u.i;
    return s;
}

static fl_status get_uint(const fl_pk *d, const char *key, uint64_t *out, int optional, const char *where_fmt,
                          va_list ap)
{
    const fl_pk *v;
    va_list ap2;
    va_copy(ap2, ap);
    fl_status s = lookup(d, key, M(FL_PK_INT), "an int >= 0", optional, &v, where_fmt, ap);
    if (s == FL_OK && v) {
        if (v->u.i < 0)
            s = where_fail(where_fmt, ap2, "'%s' is %lld, expected an int >= 0", key, (long long)v->u.i);
        else
            *out = (uint64_t)v->u.i;
    }
    va_end(ap2);
    return s;
}

static fl_status get_float(const fl_pk *d, const char *key, double *out, int optional, const char *where_fmt,
                           va_list ap)
{
    const fl_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_FLOAT) | M(FL_PK_INT), "a float", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = v->type == FL_PK_FLOAT ? v->u.f : (double)v->u.i;
    return s;
}

static fl_status get_bool(const fl_pk *d, const char *key, int *out, int optional, const char *where_fmt,
                          va_list ap)
{
    const fl_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_BOOL), "a bool", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = (int)v->u.i;
    return s;
}

static fl_status get_str(const fl_pk *d, const char *key, const char **out, size_t *len, int optional,
                         const char *where_fmt, va_list ap)
{
    const fl_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_STR), "a str", optional, &v, where_fmt, ap);
    if (s == FL_OK && v) {
        *out = v->u.s.p;
        if (len)
            *len = v->u.s.n;
    }
    return s;
}

/* Public wrappers: each only turns its ... into a va_list. */
#define WRAP(call)                                                                                  \
    va_list ap;                                                                                     \
    va_start(ap, where_fmt);                                                                        \
    fl_status s_ = (call);                                                                          \
    va_end(ap);                                                                                     \
    return s_

fl_status fl_pk_want(const fl_pk *d, const char *key, fl_pk_type type, const fl_pk **out,
                     const char *where_fmt, ...)
{
    WRAP(get_value(d, key, type, out, 0, where_fmt, ap));
}
fl_status fl_pk_want_int(const fl_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
{
    WRAP(get_int(d, key, out, 0, where_fmt, ap));
}
fl_status fl_pk_want_uint(const fl_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
{
    WRAP(get_uint(d, key, out, 0, where_fmt, ap));
}
fl_status fl_pk_want_float(const fl_pk *d, const char *key, double *out, const char *where_fmt, ...)
{
    WRAP(get_float(d, key, out, 0, where_fmt, ap));
}
fl_status fl_pk_want_bool(const fl_pk *d, const char *key, int *out, const char *where_fmt, ...)
{
    WRAP(get_bool(d, key, out, 0, where_fmt, ap));
}
fl_status fl_pk_want_str(const fl_pk *d, const char *key, const char **out, size_t *len,
                         const char *where_fmt, ...)
{
    WRAP(get_str(d, key, out, len, 0, where_fmt, ap));
}
fl_status fl_pk_opt(const fl_pk *d, const char *key, fl_pk_type type, const fl_pk **out,
                    const char *where_fmt, ...)
{
    WRAP(get_value(d, key, type, out, 1, where_fmt, ap));
}
fl_status fl_pk_opt_int(const fl_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
{
    WRAP(get_int(d, key, out, 1, where_fmt, ap));
}
fl_status fl_pk_opt_uint(const fl_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
{
    WRAP(get_uint(d, key, out, 1, where_fmt, ap));
}
fl_status fl_pk_opt_float(const fl_pk *d, const char *key, double *out, const char *where_fmt, ...)
{
    WRAP(get_float(d, key, out, 1, where_fmt, ap));
}
fl_status fl_pk_opt_bool(const fl_pk *d, const char *key, int *out, const char *where_fmt, ...)
{
    WRAP(get_bool(d, key, out, 1, where_fmt, ap));
}
fl_status fl_pk_opt_str(const fl_pk *d, const char *key, const char **out, size_t *len,
                        const char *where_fmt, ...)
{
    WRAP(get_str(d, key, out, len, 1, where_fmt, ap));
}
