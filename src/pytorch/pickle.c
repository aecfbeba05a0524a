/* The restricted pickle reader proper: one pass over the opcodes with explicit stacks
 * (values, marks, memo), and the two ways in (a file, memory). Values and the memory
 * budget are pickle_value.c's; opcodes that would run code are refused in pickle_opcodes.c. */
#include "pytorch/pickle_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_PROTOCOL 5

/* None and the booleans are never mutated, so every document shares them. */
static fli_pk pk_none = {.type = FL_PK_NONE};
static fli_pk pk_true = {.type = FL_PK_BOOL, .u.i = 1};
static fli_pk pk_false = {.type = FL_PK_BOOL, .u.i = 0};

/* ---- the stack ------------------------------------------------------------------------ */

/* Pops the innermost MARK; its height is where the marked items start. */
static int pop_mark(pk_reader *r, size_t *k)
{
    if (!r->mn)
        return pk_rfail(r, "no MARK to close");
    *k = r->marks[--r->mn];
    return 0;
}

/* ---- the memo ------------------------------------------------------------------------ */

/* Bytes charged per entry of memo_far: the map grows at a quarter full, 16-byte slots. */
#define MEMO_FAR_CHARGE 128

/* Python numbers memo entries from 0, one per PUT or MEMOIZE (an opcode of at least one
 * byte), so a pickle it writes has ids below its length: those go in the array. Any
 * other id (legal, but only in hand-made pickles) goes in a map: one PUT of 2^28 in a
 * 157-byte file made a 2 GiB array. */
static int memo_put_far(pk_reader *r, uint64_t id)
{
    uint64_t old;
    if (!r->memo_far.e && fli_map_init(&r->memo_far, 16) != FL_OK)
        return r->err = fli_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory", r->name, r->at), -1;
    if (!fli_map_get(&r->memo_far, id, &old)) {
        if (pk_charge(r, MEMO_FAR_CHARGE))
            return -1;
        r->memo_count++;
    }
    if (fli_map_put(&r->memo_far, id, (uint64_t)(uintptr_t)r->stack[r->sn - 1]) != FL_OK)
        return r->err = fli_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory", r->name, r->at), -1;
    return 0;
}

static int memo_put(pk_reader *r, uint64_t id)
{
    if (pk_need_above(r, 1))
        return -1;
    if (id >= r->len)
        return memo_put_far(r, id);
    if (id >= r->memo_cap) {
        if (id >= r->max / sizeof(fli_pk *))
            return pk_rfail(r, "memo id %llu would need more memory than the limit", (unsigned long long)id);
        size_t old = r->memo_cap;
        if (pk_grow(r, (void **)&r->memo, &r->memo_cap, (size_t)id + 1, sizeof *r->memo))
            return -1;
        memset(r->memo + old, 0, (r->memo_cap - old) * sizeof *r->memo);
    }
    if (!r->memo[id])
        r->memo_count++;
    r->memo[id] = r->stack[r->sn - 1];
    return 0;
}

static int memo_get(pk_reader *r, uint64_t id)
{
    uint64_t v;
    if (id >= r->len) {
        if (!r->memo_far.e || !fli_map_get(&r->memo_far, id, &v))
            return pk_rfail(r, "memo id %llu was never stored", (unsigned long long)id);
        return pk_push(r, (fli_pk *)(uintptr_t)v);
    }
    if (id >= r->memo_cap || !r->memo[id])
        return pk_rfail(r, "memo id %llu was never stored", (unsigned long long)id);
    return pk_push(r, r->memo[id]);
}

/* ---- the opcode loop ------------------------------------------------------------------ */

#define TRY(x)                                                                                      \
    do {                                                                                            \
        if (x)                                                                                      \
            return -1;                                                                              \
    } while (0)

/* Runs opcodes until STOP; sets doc->root. Returns 0 or -1 (r->err set). */
static int run(pk_reader *r)
{
    uint64_t u;
    int64_t iv;
    size_t k = 0, n;
    fli_pk *o;
    while (r->pos < r->len) {
        r->at = r->pos;
        r->op = r->p[r->pos++];
        switch (r->op) {
        /* framing */
        case 0x80: /* PROTO */
            TRY(pk_arg_uint(r, 1, &u));
            if (u > MAX_PROTOCOL)
                return pk_rfail(r, "protocol %llu is newer than 5, the newest this reader knows",
                                (unsigned long long)u);
            r->doc->protocol = (int)u;
            break;
        case 0x95: /* FRAME: a length hint for buffered readers; checked, then ignored */
            TRY(pk_arg_uint(r, 8, &u) || pk_need_bytes(r, u, "the frame"));
            break;
        case '.': /* STOP */
            TRY(pk_need_above(r, 1));
            r->doc->root = r->stack[--r->sn];
            if (r->mn)
                return pk_rfail(r, "%zu MARK%s never closed", r->mn, r->mn == 1 ? " was" : "s were");
            if (r->sn)
                return pk_rfail(r, "%zu value%s left on the stack", r->sn, r->sn == 1 ? "" : "s");
            if (r->pos != r->len)
                return pk_rfail(r, "%zu bytes follow the end of the pickle: not a single pickle",
                                r->len - r->pos);
            return 0;
        /* the stack */
        case '(': /* MARK */
            TRY(r->mn == r->mcap && pk_grow(r, (void **)&r->marks, &r->mcap, r->mn + 1, sizeof *r->marks));
            r->marks[r->mn++] = r->sn;
            break;
        case '0': /* POP: Python pops the MARK itself when nothing is above it */
            if (r->sn > pk_fence(r))
                r->sn--;
            else if (r->mn)
                r->mn--;
            else
                return pk_rfail(r, "the stack is empty");
            break;
        case '1': /* POP_MARK */
            TRY(pop_mark(r, &k));
            r->sn = k;
            break;
        case '2': /* DUP */
            TRY(pk_need_above(r, 1) || pk_push(r, r->stack[r->sn - 1]));
            break;
        /* scalars */
        case 'N': /* NONE */
            TRY(pk_push(r, &pk_none));
            break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            TRY(pk_push(r, r->op == 0x88 ? &pk_true : &pk_false));
            break;
        case 'I': /* INT: text; protocol 0 wrote True/False as I01/I00 */
            if (r->len - r->pos >= 3 && r->p[r->pos] == '0' && r->p[r->pos + 2] == '\n' &&
                (r->p[r->pos + 1] == '0' || r->p[r->pos + 1] == '1')) {
                TRY(pk_push(r, r->p[r->pos + 1] == '1' ? &pk_true : &pk_false));
                r->pos += 3;
                break;
            }
            TRY(pk_push_text_int(r));
            break;
        case 'L': /* LONG: text */
            TRY(pk_push_text_int(r));
            break;
        case 'J': /* BININT: signed */
            TRY(pk_arg_uint(r, 4, &u) || pk_push_int(r, (int64_t)(int32_t)(uint32_t)u));
            break;
        case 'K': /* BININT1, BININT2: unsigned */
        case 'M':
            TRY(pk_arg_uint(r, pk_arg_width(r->op), &u) || pk_push_int(r, (int64_t)u));
            break;
        case 0x8a: /* LONG1, LONG4: two's complement of a given length */
        case 0x8b:
            TRY(pk_arg_uint(r, pk_arg_width(r->op), &u));
            if (r->op == 0x8b && (u >> 31))
                return pk_rfail(r, "negative length");
            TRY(pk_need_bytes(r, u, "an integer"));
            r->pos += (size_t)u;
            TRY(pk_push_long(r, r->p + r->pos - u, (size_t)u));
            break;
        case 'F': { /* FLOAT: text, repr() of a float */
            char buf[64], q[64], *end;
            const uint8_t *s;
            TRY(pk_arg_line(r, &s, &n));
            if (n && n < sizeof buf) {
                memcpy(buf, s, n);
                buf[n] = 0;
            }
            double d = n && n < sizeof buf ? strtod(buf, &end) : 0;
            if (!n || n >= sizeof buf || end != buf + n)
                return pk_rfail(r, "'%s' is not a float", pk_quote(q, sizeof q, s, n));
            TRY(!(o = pk_new_obj(r, FL_PK_FLOAT)));
            o->u.f = d;
            TRY(pk_push(r, o));
            break;
        }
        case 'G': /* BINFLOAT: 8 bytes big-endian IEEE 754 */
            TRY(pk_need_bytes(r, 8, "the argument") || !(o = pk_new_obj(r, FL_PK_FLOAT)));
            u = 0;
            for (int i = 0; i < 8; i++)
                u = (u << 8) | r->p[r->pos++];
            memcpy(&o->u.f, &u, sizeof u);
            TRY(pk_push(r, o));
            break;
        /* strings and bytes, by their length's width */
        case 'X': /* BINUNICODE */
        case 0x8c: /* SHORT_BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
        case 'U': /* SHORT_BINSTRING */
            TRY(pk_push_counted(r, FL_PK_STR, pk_arg_width(r->op), 0));
            break;
        case 'T': /* BINSTRING: signed length */
            TRY(pk_push_counted(r, FL_PK_STR, 4, 1));
            break;
        case 'B': /* BINBYTES */
        case 'C': /* SHORT_BINBYTES */
        case 0x8e: /* BINBYTES8 */
        case 0x96: /* BYTEARRAY8: a bytearray is plain bytes to us */
            TRY(pk_push_counted(r, FL_PK_BYTES, pk_arg_width(r->op), 0));
            break;
        case 'V': { /* UNICODE: raw-unicode-escape text */
            const uint8_t *s;
            TRY(pk_arg_line(r, &s, &n) || pk_push_raw_unicode(r, s, n));
            break;
        }
        /* containers */
        case ']': /* EMPTY_LIST, EMPTY_SET, EMPTY_TUPLE, EMPTY_DICT */
        case 0x8f:
        case ')':
        case '}':
            TRY(!(o = pk_new_obj(r, r->op == ')' ? FL_PK_TUPLE : r->op == '}' ? FL_PK_DICT : FL_PK_LIST)) ||
                pk_push(r, o));
            break;
        case 'a': /* APPEND */
            TRY(pk_need_above(r, 2) || pk_list_extend(r, r->stack[r->sn - 2], r->sn - 1));
            break;
        case 'e': /* APPENDS, ADDITEMS */
        case 0x90:
            TRY(pop_mark(r, &k));
            if (k <= pk_fence(r))
                return pk_rfail(r, "no list below the MARK");
            TRY(pk_list_extend(r, r->stack[k - 1], k));
            break;
        case 'l': /* LIST, FROZENSET, TUPLE */
        case 0x91:
        case 't':
            TRY(pop_mark(r, &k) || !(o = pk_seq_from_stack(r, r->op == 't' ? FL_PK_TUPLE : FL_PK_LIST, k)) ||
                pk_push(r, o));
            break;
        case 0x85: /* TUPLE1, TUPLE2, TUPLE3 */
        case 0x86:
        case 0x87:
            n = (size_t)(r->op - 0x84);
            TRY(pk_need_above(r, n) || !(o = pk_seq_from_stack(r, FL_PK_TUPLE, r->sn - n)) || pk_push(r, o));
            break;
        case 'd': /* DICT */
            TRY(pop_mark(r, &k) || pk_check_pairs(r, k) || !(o = pk_seq_from_stack(r, FL_PK_DICT, k)) ||
                pk_push(r, o));
            break;
        case 's': /* SETITEM */
            TRY(pk_need_above(r, 3) || pk_dict_update(r, r->stack[r->sn - 3], r->sn - 2));
            break;
        case 'u': /* SETITEMS */
            TRY(pop_mark(r, &k));
            if (k <= pk_fence(r))
                return pk_rfail(r, "no dict below the MARK");
            TRY(pk_dict_update(r, r->stack[k - 1], k));
            break;
        /* the memo */
        case 'p': /* PUT, GET: text ids */
        case 'g':
            TRY(pk_text_int(r, &iv, "a memo id"));
            if (iv < 0)
                return pk_rfail(r, "negative memo id %lld", (long long)iv);
            TRY(r->op == 'p' ? memo_put(r, (uint64_t)iv) : memo_get(r, (uint64_t)iv));
            break;
        case 'q': /* BINPUT, LONG_BINPUT */
        case 'r':
            TRY(pk_arg_uint(r, pk_arg_width(r->op), &u) || memo_put(r, u));
            break;
        case 'h': /* BINGET, LONG_BINGET */
        case 'j':
            TRY(pk_arg_uint(r, pk_arg_width(r->op), &u) || memo_get(r, u));
            break;
        case 0x94: /* MEMOIZE: the next id is the number of entries, as in Python */
            TRY(memo_put(r, r->memo_count));
            break;
        default: /* every opcode that would run code, and unknown ones */
            return pk_run_refused(r);
        }
    }
    r->at = r->pos;
    if (r->len == 0)
        r->err = fli_fail(FL_ERR_PARSE, "%s: byte 0: the file is empty: not a pickle", r->name);
    else
        r->err = fli_fail(FL_ERR_PARSE, "%s: byte %zu: the file ends before STOP: truncated", r->name,
                         r->len);
    return -1;
}

/* already_used: bytes of the budget the caller holds (the file's contents). */
static fl_status parse(const uint8_t *data, size_t len, const char *name, size_t max_bytes,
                       size_t already_used, fli_pk_doc **out)
{
    *out = NULL;
    fli_pk_doc *doc = calloc(1, sizeof *doc);
    if (!doc || !(doc->name = strdup(name))) {
        free(doc);
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory", name);
    }
    pk_reader r = {.p = data, .len = len, .name = name, .doc = doc, .max = max_bytes, .used = already_used};
    int rc = run(&r);
    free(r.stack);
    free(r.marks);
    free(r.memo);
    fli_map_free(&r.memo_far);
    if (rc) {
        pk_doc_free(doc);
        /* Every failing path sets err; the fallback keeps a failure from reading as FL_OK. */
        return r.err != FL_OK ? r.err : fli_fail(FL_ERR_PARSE, "%s: byte %zu: malformed", name, r.at);
    }
    *out = doc;
    return FL_OK;
}

fl_status fli_pickle_load_memory(const void *data, size_t len, const char *name, size_t max_bytes,
                                fli_pk_doc **out)
{
    if (!name)
        name = "<pickle>";
    if (!max_bytes)
        max_bytes = FL_PICKLE_DEFAULT_MAX_BYTES;
    if (!data && len) {
        *out = NULL;
        return fli_fail(FL_ERR_INVALID, "%s: no data", name);
    }
    return parse(data ? data : (const void *)"", len, name, max_bytes, 0, out);
}

fl_status fli_pickle_load(const char *path, size_t max_bytes, fli_pk_doc **out)
{
    *out = NULL;
    if (!max_bytes)
        max_bytes = FL_PICKLE_DEFAULT_MAX_BYTES;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fli_fail(FL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fli_fail(FL_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        char a[32], b[32];
        fclose(f);
        return fli_fail(FL_ERR_PARSE, "%s: the file is %s, over the memory limit of %s: refused", path,
                       fl_format_size((uint64_t)st.st_size, a, sizeof a),
                       fl_format_size(max_bytes, b, sizeof b));
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return fli_fail(FL_ERR_NOMEM, "%s: no host memory for %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    int read_err = ferror(f);
    fclose(f);
    if (got != len || read_err) {
        free(buf);
        return fli_fail(FL_ERR_IO, "%s: read error (%zu of %zu bytes)", path, got, len);
    }
    fl_status s = parse(buf, len, path, max_bytes, len, out);
    free(buf);
    return s;
}
