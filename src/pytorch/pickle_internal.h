/* State shared by the files of the pickle reader: the document, the reader (its input,
 * stacks, memo and memory budget) and the helpers each file lends the others. Not
 * included from outside src/trace/ and tests/. */
#ifndef FL_PICKLE_INTERNAL_H
#define FL_PICKLE_INTERNAL_H

#include "pytorch/pickle.h"

/* The chunks of its arena are pickle_value.c's. */
struct fli_pk_doc {
    struct pk_chunk *chunks; /* the head is the one being filled */
    size_t bytes;            /* held by the chunks, headers included */
    const fli_pk *root;
    int protocol;
    char *name;
};

typedef struct pk_reader {
    const uint8_t *p;
    size_t len, pos;
    size_t at;              /* offset of the opcode being run, for messages */
    uint8_t op;
    const char *name;
    fli_pk_doc *doc;
    size_t max, used;       /* the memory budget and what is charged against it */
    fl_status err;          /* set by helpers that return NULL */
    fli_pk **stack;
    size_t sn, scap;
    size_t *marks;          /* stack heights at each MARK; the top one is the fence */
    size_t mn, mcap;
    fli_pk **memo;           /* dense by id: ids are small and consecutive in practice */
    size_t memo_cap, memo_count;
    fli_map memo_far;        /* ids from len on (a pickle Python writes has none): id -> fli_pk *,
                               so that one large id costs an entry, not an array up to it */
} pk_reader;

/* ---- messages (pickle_opcodes.c) ------------------------------------------------------ */

/* Every error of the reader: "NAME: byte AT: OPNAME: problem". Returns -1 so that
 * `return pk_rfail(...)` ends the opcode. */
int pk_rfail(pk_reader *r, const char *fmt, ...) FL_PRINTF(2, 3);
/* Quotes untrusted text for a message: printable ASCII as is, the rest as \xNN, cut. */
const char *pk_quote(char *out, size_t cap, const uint8_t *s, size_t n);
/* Sets r->err for an opcode that is refused or unknown; returns -1. */
int pk_run_refused(pk_reader *r);

/* ---- the document, the budget and values (pickle_value.c) ----------------------------- */

void pk_doc_free(fli_pk_doc *d);
/* Charges n bytes against the budget; the message says what the limit is. */
int pk_charge(pk_reader *r, size_t n);
void *pk_arena_alloc(pk_reader *r, size_t n);
/* Grows a heap array of elem-byte items to hold need items, charging the growth. */
int pk_grow(pk_reader *r, void **arr, size_t *cap, size_t need, size_t elem);

fli_pk *pk_new_obj(pk_reader *r, uint8_t type);
int pk_push_int(pk_reader *r, int64_t v);
/* A str or bytes object copied into the arena with a terminating NUL. */
fli_pk *pk_new_bytes(pk_reader *r, uint8_t type, const void *s, size_t n);
/* A new list/tuple/dict holding stack[k..sn); the items leave the stack. */
fli_pk *pk_seq_from_stack(pk_reader *r, uint8_t type, size_t k);
/* Appends stack[k..sn) to list; they leave the stack. */
int pk_list_extend(pk_reader *r, fli_pk *list, size_t k);
/* stack[k..sn) must be key/value pairs with keys Python could hash. */
int pk_check_pairs(pk_reader *r, size_t k);
/* Adds the pairs stack[k..sn) to dict; they leave the stack. */
int pk_dict_update(pk_reader *r, fli_pk *dict, size_t k);

/* ---- arguments (pickle_args.c) -------------------------------------------------------- */

/* Reads an n-byte little-endian unsigned argument. */
int pk_arg_uint(pk_reader *r, int n, uint64_t *v);
/* A text argument up to '\n' (the newline is consumed, not returned). */
int pk_arg_line(pk_reader *r, const uint8_t **s, size_t *n);
/* The decimal argument of PUT and GET. */
int pk_text_int(pk_reader *r, int64_t *v, const char *what);
/* LONG1/LONG4 payload: little-endian two's complement of any length. */
int pk_push_long(pk_reader *r, const uint8_t *b, size_t n);
/* INT and LONG: a decimal line (LONG may end in Python 2's 'L'). */
int pk_push_text_int(pk_reader *r);
/* The UNICODE opcode's raw-unicode-escape text, decoded into UTF-8. */
int pk_push_raw_unicode(pk_reader *r, const uint8_t *s, size_t n);
/* str / bytes with a binary length of n_len bytes. */
int pk_push_counted(pk_reader *r, uint8_t type, int n_len, int signed_len);

/* ---- hot helpers, inline in every file ------------------------------------------------ */

static inline int pk_push(pk_reader *r, fli_pk *o)
{
    if (FL_UNLIKELY(r->sn == r->scap) &&
        pk_grow(r, (void **)&r->stack, &r->scap, r->sn + 1, sizeof *r->stack))
        return -1;
    r->stack[r->sn++] = o;
    return 0;
}

static inline size_t pk_fence(const pk_reader *r) { return r->mn ? r->marks[r->mn - 1] : 0; }

/* Values above the innermost MARK: what an opcode may pop. */
static inline int pk_need_above(pk_reader *r, size_t n)
{
    if (FL_LIKELY(r->sn - pk_fence(r) >= n))
        return 0;
    return pk_rfail(r, "needs %zu value%s on the stack%s, found %zu", n, n == 1 ? "" : "s",
                    r->mn ? " above the last MARK" : "", r->sn - pk_fence(r));
}

static inline int pk_need_bytes(pk_reader *r, uint64_t n, const char *what)
{
    if (FL_LIKELY(n <= r->len - r->pos))
        return 0;
    return pk_rfail(r, "%s of %llu bytes runs past the end of the file (%zu bytes left): truncated or bad "
                    "length", what, (unsigned long long)n, r->len - r->pos);
}

static inline uint64_t pk_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Width in bytes of the little-endian argument of the fixed-width opcodes. */
static inline int pk_arg_width(uint8_t op)
{
    switch (op) {
    case 'K': case 'C': case 'U': case 0x8c: case 'q': case 'h': case 0x8a: case 0x82: return 1;
    case 'M': case 0x83: return 2;
    case 'J': case 'X': case 'B': case 'T': case 'r': case 'j': case 0x8b: case 0x84: return 4;
    default: return 8; /* BINUNICODE8, BINBYTES8, BYTEARRAY8, FRAME */
    }
}

#endif
