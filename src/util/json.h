/* A small strict JSON pull parser for the readers of src/trace/ (state_json.c): the caller
 * walks the document in the order its format expects, asking for an object's members or
 * an array's elements through callbacks and for each value by the type it wants. Not
 * included from outside src/trace/ and tests/.
 *
 * Every read is bounded by the text's length (no terminator is needed, so a fuzzer's
 * buffer can be parsed as it is); the depth of arrays and objects is counted and refused
 * beyond max_depth, which bounds the recursion of fli_json_skip (the only function that
 * recurses on the input's shape). Errors are FL_ERR_PARSE with
 * "NAME:LINE:COL: what was expected in regions[2].pages[5], found ... (byte OFFSET)". */
#ifndef FL_TRACE_JSON_H
#define FL_TRACE_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

typedef struct fli_json {
    const char *s;
    size_t n, pos;          /* the text s[0..n) and the next byte to read */
    const char *name;       /* the file, in messages */
    int depth, max_depth;   /* arrays and objects open, and how many may be */
    char where[192];        /* "regions[2].pages[5]": the path to the value being read */
    size_t where_len;
    void *ctx;              /* the caller's: what its callbacks fill */
} fli_json;

/* ---- Messages --------------------------------------------------------------------- */

/* An error at byte `at`: "NAME:LINE:COL: WHAT in PATH (byte AT)". */
fl_status fli_json_fail(fli_json *p, size_t at, const char *fmt, ...) FL_PRINTF(3, 4);
/* "expected X, found Y" at the current byte. */
fl_status fli_json_expected(fli_json *p, const char *fmt, ...) FL_PRINTF(2, 3);
/* Bytes below 0x20 and above 0x7e become '?' (file contents in a one-line message). */
void fli_json_clean(char *s);

/* ---- Values ------------------------------------------------------------------------ */

/* The current byte, or -1 at the end of the text. */
static inline int fli_json_peek(const fli_json *p) { return p->pos < p->n ? (unsigned char)p->s[p->pos] : -1; }
/* Passes over white space. */
void fli_json_ws(fli_json *p);

/* A string, decoded (escapes, \u as UTF-8) into out[cap], NUL-terminated; *cut says it did
 * not fit (cut may be NULL). out NULL: checked only. */
fl_status fli_json_string(fli_json *p, char *out, size_t cap, int *cut);
/* An unsigned integer below 2^64 (no sign, fraction or exponent). */
fl_status fli_json_u64(fli_json *p, uint64_t *v);
/* Any number of at most 63 characters whose value is finite. */
fl_status fli_json_double(fli_json *p, double *v);
/* 0 or 1. */
fl_status fli_json_flag(fli_json *p, int *v);
/* An address as fragless writes it: a string "0x" and 1 to 16 hex digits. */
fl_status fli_json_hex(fli_json *p, uint64_t *v);
/* Any value, checked and passed over (unknown keys). */
fl_status fli_json_skip(fli_json *p);

/* ---- Objects and arrays ------------------------------------------------------------ */

/* Passes the '[' or '{' at the current byte, counting the depth; the caller passes the
 * closing byte and decrements p->depth. */
fl_status fli_json_enter(fli_json *p);

/* Called with the current byte on the member's value, which it must read or skip. key is
 * "" when too long to keep (no key a format knows); key_at is its byte, for messages. */
typedef fl_status (*fli_json_member_fn)(fli_json *p, const char *key, size_t key_at, void *user);
/* Called with the current byte on the element, which it must read or skip. */
typedef fl_status (*fli_json_element_fn)(fli_json *p, size_t index, void *user);

/* An object, each member read by fn; the path in messages names the key. */
fl_status fli_json_members(fli_json *p, fli_json_member_fn fn, void *user);
/* An array, each element read by fn; the path in messages names the index. */
fl_status fli_json_elements(fli_json *p, fli_json_element_fn fn, void *user);

/* Makes room for item n in a heap array of *cap items of elem bytes (doubling, 16 at
 * first); -1 when memory runs out or the size would overflow, the array kept. */
int fli_json_grow(void **a, size_t *cap, size_t n, size_t elem);

#endif
