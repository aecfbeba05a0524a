/* A restricted reader for Python pickles: the plain-data opcodes of protocols 0-5 become a
 * tree of None / bool / int / float / str / bytes / list / tuple / dict. Any opcode that
 * would import or call code is refused, never executed; memory is bounded by the caller. */
#ifndef FL_PICKLE_H
#define FL_PICKLE_H

#include "util/util.h"

/* ---- values --------------------------------------------------------------------------
 * Every value lives in the document's arena and is freed with it. The memo (PUT/GET)
 * makes the values a graph, not a tree: one object may appear in several places, and a
 * hostile pickle can make a list contain itself. Never walk values recursively without
 * a depth limit; the reader itself never recurses. */

typedef enum fli_pk_type {
    FL_PK_NONE = 0,
    FL_PK_BOOL,     /* u.i is 0 or 1 */
    FL_PK_INT,      /* u.i: every int that fits in 64 bits, whatever opcode wrote it */
    FL_PK_BIGINT,   /* an int beyond 64 bits: u.s holds its little-endian two's complement
                       bytes (LONG1/LONG4), kept so the value is not lost; the typed getters
                       refuse it as "an int over 64 bits" */
    FL_PK_FLOAT,    /* u.f */
    FL_PK_STR,      /* u.s: valid UTF-8 (lone surrogates allowed, as Python's pickle
                       allows them), NUL-terminated; n excludes the NUL. Python 2 strs
                       (BINSTRING, SHORT_BINSTRING) must be ASCII, as Python 3 reads them;
                       protocol 0's quoted STRING is refused */
    FL_PK_BYTES,    /* u.s: raw bytes (BINBYTES*, BYTEARRAY8), NUL-terminated too */
    FL_PK_LIST,     /* u.seq: n items; sets and frozensets load as lists */
    FL_PK_TUPLE,    /* u.seq: n items */
    FL_PK_DICT      /* u.seq: n pairs, in insertion order: v[2k] key, v[2k+1] value */
} fli_pk_type;

typedef struct fli_pk fli_pk;
struct fli_pk {
    uint8_t type;   /* fli_pk_type */
    union {
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        struct {
            fli_pk **v;
            size_t n;
            size_t cap; /* reader's use */
        } seq;
    } u;
};

/* "None", "a bool", "an int", "an int over 64 bits", "a float", "a str", "bytes", "a list",
 * "a tuple", "a dict": written to follow "is" in a message. */
const char *fli_pk_type_name(int type);

static inline size_t fli_pk_len(const fli_pk *o)
{
    return o && (o->type == FL_PK_LIST || o->type == FL_PK_TUPLE || o->type == FL_PK_DICT) ? o->u.seq.n : 0;
}
/* Item i of a list or tuple (i < fli_pk_len), key and value of pair i of a dict. */
static inline const fli_pk *fli_pk_item(const fli_pk *o, size_t i) { return o->u.seq.v[i]; }
static inline const fli_pk *fli_pk_key(const fli_pk *d, size_t i) { return d->u.seq.v[2 * i]; }
static inline const fli_pk *fli_pk_value(const fli_pk *d, size_t i) { return d->u.seq.v[2 * i + 1]; }

/* ---- documents ------------------------------------------------------------------------ */

typedef struct fli_pk_doc fli_pk_doc;

/* max_bytes bounds everything the reader holds at once: the file's contents (when read
 * from a path), the values, and the stack, marks and memo while parsing. 0 means
 * FL_PICKLE_DEFAULT_MAX_BYTES. Memory snapshots need about 3.5x their file size. */
#define FL_PICKLE_DEFAULT_MAX_BYTES ((size_t)1 << 30)

/* Parses one pickle (a file must hold exactly one: bytes after STOP are an error). On
 * failure returns FL_ERR_PARSE (malformed, refused opcode, memory limit exceeded),
 * FL_ERR_IO or FL_ERR_NOMEM with the message "NAME: byte OFFSET: problem", OFFSET being
 * the opcode's position in the file; *out is then NULL and nothing is held. */
fl_status fli_pickle_load(const char *path, size_t max_bytes, fli_pk_doc **out);
/* Same from memory; name is used in messages. The data is not referenced afterwards. */
fl_status fli_pickle_load_memory(const void *data, size_t len, const char *name, size_t max_bytes,
                                fli_pk_doc **out);
void fli_pickle_free(fli_pk_doc *doc);

const fli_pk *fli_pk_doc_root(const fli_pk_doc *doc);
const char *fli_pk_doc_name(const fli_pk_doc *doc);
/* Protocol from the PROTO opcode, 0 when there was none. */
int fli_pk_doc_protocol(const fli_pk_doc *doc);
/* Bytes the document holds (its arena), for reports and tests of the bound. */
size_t fli_pk_doc_bytes(const fli_pk_doc *doc);

/* ---- lookups ---------------------------------------------------------------------------
 * fli_pk_dict_get: d[key] for a str key; NULL when d is not a dict or has no such key.
 * Lookups are linear (the dicts of memory snapshots have about 10 keys); when a key was
 * set twice the last pair wins, as it does in Python.
 *
 * The typed getters take a printf-style WHERE (formatted only on failure) and fail with
 * FL_ERR_PARSE and one of:
 *   "WHERE: is a list, expected a dict"          (d itself)
 *   "WHERE: no key 'size'"                        (want_*, key absent)
 *   "WHERE: 'size' is a str, expected an int"     (wrong type)
 *   "WHERE: 'size' is -3, expected an int >= 0"   (want_uint)
 * The opt variants return FL_OK when the key is absent or None, leaving *out alone
 * (fli_pk_opt sets it to NULL). */

const fli_pk *fli_pk_dict_get(const fli_pk *d, const char *key);
/* Whether o is the str s (compared byte for byte, embedded NULs included). */
int fli_pk_str_is(const fli_pk *o, const char *s);

/* o itself must be of the type: "WHERE: is a str, expected a dict". */
fl_status fli_pk_check(const fli_pk *o, fli_pk_type type, const char *where_fmt, ...) FL_PRINTF(3, 4);
/* d[key], which must be of exactly this type. */
fl_status fli_pk_want(const fli_pk *d, const char *key, fli_pk_type type, const fli_pk **out,
                     const char *where_fmt, ...) FL_PRINTF(5, 6);
fl_status fli_pk_want_int(const fli_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_want_uint(const fli_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
/* An int is accepted as a float, as Python would. */
fl_status fli_pk_want_float(const fli_pk *d, const char *key, double *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_want_bool(const fli_pk *d, const char *key, int *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_want_str(const fli_pk *d, const char *key, const char **out, size_t *len,
                         const char *where_fmt, ...) FL_PRINTF(5, 6);

fl_status fli_pk_opt(const fli_pk *d, const char *key, fli_pk_type type, const fli_pk **out,
                    const char *where_fmt, ...) FL_PRINTF(5, 6);
fl_status fli_pk_opt_int(const fli_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_opt_uint(const fli_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_opt_float(const fli_pk *d, const char *key, double *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_opt_bool(const fli_pk *d, const char *key, int *out, const char *where_fmt, ...)
    FL_PRINTF(4, 5);
fl_status fli_pk_opt_str(const fli_pk *d, const char *key, const char **out, size_t *len,
                        const char *where_fmt, ...) FL_PRINTF(5, 6);

#endif
