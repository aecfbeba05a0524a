/* The document and its values: the arena every value lives in, the one memory budget
 * that the arena and the reader's stacks are charged against, and the constructors of
 * scalars, strings and containers that the opcodes build. */
#include "pytorch/pickle_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- the document and its arena ------------------------------------------------------ */

typedef struct pk_chunk {
    struct pk_chunk *next;
    size_t size, used;  /* of the data that follows the header */
} pk_chunk;

/* Data starts 16-byte aligned after the header (malloc's alignment on our platforms). */
#define CHUNK_HDR ((sizeof(pk_chunk) + 15) & ~(size_t)15)
static inline unsigned char *chunk_data(pk_chunk *c) { return (unsigned char *)c + CHUNK_HDR; }

/* Chunks grow with the document, from 4 KiB (a small pickle stays small) to 256 KiB
 * (a 4 MB snapshot takes ~60 chunks). An allocation above a quarter of the chunk size
 * gets a chunk of its own, so a big list does not waste the rest of the current one. */
#define CHUNK_MIN ((size_t)4 << 10)
#define CHUNK_MAX ((size_t)256 << 10)

void pk_doc_free(fli_pk_doc *d)
{
    if (!d)
        return;
    for (pk_chunk *c = d->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(d->name);
    free(d);
}

void fli_pickle_free(fli_pk_doc *doc) { pk_doc_free(doc); }
const fli_pk *fli_pk_doc_root(const fli_pk_doc *doc) { return doc->root; }
const char *fli_pk_doc_name(const fli_pk_doc *doc) { return doc->name; }
int fli_pk_doc_protocol(const fli_pk_doc *doc) { return doc->protocol; }
size_t fli_pk_doc_bytes(const fli_pk_doc *doc) { return doc->bytes; }

/* ---- the memory budget --------------------------------------------------------------- */

/* Charges n bytes against the budget; the message says what the limit is. */
int pk_charge(pk_reader *r, size_t n)
{
    if (n > r->max - r->used) {
        char lim[32];
        return pk_rfail(r, "the pickle needs more than the memory limit of %s: refused",
                        fl_format_size(r->max, lim, sizeof lim));
    }
    r->used += n;
    return 0;
}

void *pk_arena_alloc(pk_reader *r, size_t n)
{
    if (n > r->max) {
        pk_charge(r, SIZE_MAX); /* fails with the limit message */
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    fli_pk_doc *d = r->doc;
    pk_chunk *c = d->chunks;
    if (c && c->size - c->used >= n) {
        void *p = chunk_data(c) + c->used;
        c->used += n;
        return p;
    }
    size_t step = d->bytes < CHUNK_MIN ? CHUNK_MIN : d->bytes > CHUNK_MAX ? CHUNK_MAX : d->bytes;
    int own = n > step / 4;
    size_t size = own ? n : step;
    if (pk_charge(r, CHUNK_HDR + size))
        return NULL;
    pk_chunk *nc = malloc(CHUNK_HDR + size);
    if (!nc) {
        r->err = fli_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory for %zu bytes", r->name, r->at, size);
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
int pk_grow(pk_reader *r, void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    if (ncap > r->max / elem) {
        pk_charge(r, SIZE_MAX);
        return -1;
    }
    if (pk_charge(r, (ncap - *cap) * elem))
        return -1;
    void *p = realloc(*arr, ncap * elem);
    if (!p) {
        r->err = fli_fail(FL_ERR_NOMEM, "%s: byte %zu: no host memory", r->name, r->at);
        return -1;
    }
    *arr = p;
    *cap = ncap;
    return 0;
}

/* ---- values -------------------------------------------------------------------------- */

fli_pk *pk_new_obj(pk_reader *r, uint8_t type)
{
    fli_pk *o = pk_arena_alloc(r, sizeof *o);
    if (o) {
        memset(o, 0, sizeof *o);
        o->type = type;
    }
    return o;
}

int pk_push_int(pk_reader *r, int64_t v)
{
    fli_pk *o = pk_new_obj(r, FL_PK_INT);
    if (!o)
        return -1;
    o->u.i = v;
    return pk_push(r, o);
}

/* A str or bytes object copied into the arena with a terminating NUL. */
fli_pk *pk_new_bytes(pk_reader *r, uint8_t type, const void *s, size_t n)
{
    fli_pk *o = pk_new_obj(r, type);
    char *p = o && n < SIZE_MAX ? pk_arena_alloc(r, n + 1) : NULL;
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    o->u.s.p = p;
    o->u.s.n = n;
    return o;
}

/* Items array of a list, tuple or dict (2 pointers per pair) grown to hold add more. */
static int seq_reserve(pk_reader *r, fli_pk *o, size_t add)
{
    size_t per = o->type == FL_PK_DICT ? 2 : 1;
    size_t have = o->u.seq.n * per;
    if (add <= o->u.seq.cap - have)
        return 0;
    size_t need = have + add;
    size_t ncap = o->u.seq.cap * 2 > need ? o->u.seq.cap * 2 : need;
    if (ncap > r->max / sizeof(fli_pk *)) {
        pk_charge(r, SIZE_MAX);
        return -1;
    }
    fli_pk **v = pk_arena_alloc(r, ncap * sizeof *v);
    if (!v)
        return -1;
    if (have)
        memcpy(v, o->u.seq.v, have * sizeof *v);
    o->u.seq.v = v; /* the old array stays in the arena: appends after creation are rare */
    o->u.seq.cap = ncap;
    return 0;
}

/* A new list/tuple/dict holding stack[k..sn); the items leave the stack. */
fli_pk *pk_seq_from_stack(pk_reader *r, uint8_t type, size_t k)
{
    fli_pk *o = pk_new_obj(r, type);
    size_t n = r->sn - k;
    if (!o || (n && seq_reserve(r, o, n)))
        return NULL;
    if (n)
        memcpy(o->u.seq.v, r->stack + k, n * sizeof *o->u.seq.v);
    o->u.seq.n = type == FL_PK_DICT ? n / 2 : n;
    r->sn = k;
    return o;
}

static int hashable_key(pk_reader *r, const fli_pk *key)
{
    if (key->type == FL_PK_LIST || key->type == FL_PK_DICT)
        return pk_rfail(r, "a dict key is %s: unhashable", fli_pk_type_name(key->type));
    return 0;
}

/* Appends stack[k..sn) to list; they leave the stack. */
int pk_list_extend(pk_reader *r, fli_pk *list, size_t k)
{
    if (list->type != FL_PK_LIST)
        return pk_rfail(r, "the target is %s, expected a list", fli_pk_type_name(list->type));
    size_t n = r->sn - k;
    if (n && (seq_reserve(r, list, n) ||
              !memcpy(list->u.seq.v + list->u.seq.n, r->stack + k, n * sizeof(fli_pk *))))
        return -1;
    list->u.seq.n += n;
    r->sn = k;
    return 0;
}

/* stack[k..sn) must be key/value pairs with keys Python could hash. */
int pk_check_pairs(pk_reader *r, size_t k)
{
    if ((r->sn - k) % 2)
        return pk_rfail(r, "%zu values for key/value pairs: odd", r->sn - k);
    for (size_t i = k; i < r->sn; i += 2)
        if (hashable_key(r, r->stack[i]))
            return -1;
    return 0;
}

/* Adds the pairs stack[k..sn) to dict; they leave the stack. */
int pk_dict_update(pk_reader *r, fli_pk *dict, size_t k)
{
    if (dict->type != FL_PK_DICT)
        return pk_rfail(r, "the target is %s, expected a dict", fli_pk_type_name(dict->type));
    if (pk_check_pairs(r, k))
        return -1;
    size_t n = r->sn - k;
    if (n && (seq_reserve(r, dict, n) ||
              !memcpy(dict->u.seq.v + 2 * dict->u.seq.n, r->stack + k, n * sizeof(fli_pk *))))
        return -1;
    dict->u.seq.n += n / 2;
    r->sn = k;
    return 0;
}
