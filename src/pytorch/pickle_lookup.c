/* Reading a parsed document: type names, dict lookups by str key, and the typed
 * getters (want / opt) whose failures say where, which key and what was found. */
#include "pytorch/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- lookups -------------------------------------------------------------------------- */

const char *fli_pk_type_name(int type)
{
    static const char *const names[] = {"None",    "a bool",  "an int", "an int over 64 bits",
                                        "a float", "a str",   "bytes",  "a list",
                                        "a tuple", "a dict"};
    return type >= 0 && type <= FL_PK_DICT ? names[type] : "an unknown value";
}

int fli_pk_str_is(const fli_pk *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == FL_PK_STR && o->u.s.n == n && memcmp(o->u.s.p, s, n) == 0;
}

const fli_pk *fli_pk_dict_get(const fli_pk *d, const char *key)
{
    if (!d || d->type != FL_PK_DICT)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = d->u.seq.n; i-- > 0;) {
        const fli_pk *k = d->u.seq.v[2 * i];
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
    return fli_fail(FL_ERR_PARSE, "%s: %s", where, what);
}

static const char *expected_name(int type)
{
    return type == FL_PK_INT ? "an int" : fli_pk_type_name(type);
}

/* d[key] with a type in mask. optional: absent or None gives FL_OK and *out = NULL. */
static fl_status lookup(const fli_pk *d, const char *key, unsigned mask, const char *expected, int optional,
                        const fli_pk **out, const char *where_fmt, va_list ap)
{
    *out = NULL;
    if (!d || d->type != FL_PK_DICT)
        return where_fail(where_fmt, ap, "is %s, expected a dict", d ? fli_pk_type_name(d->type) : "missing");
    const fli_pk *v = fli_pk_dict_get(d, key);
    if (!v || (optional && v->type == FL_PK_NONE)) {
        if (optional)
            return FL_OK;
        return where_fail(where_fmt, ap, "no key '%s'", key);
    }
    if (!(mask & (1u << v->type)))
        return where_fail(where_fmt, ap, "'%s' is %s, expected %s", key, fli_pk_type_name(v->type), expected);
    *out = v;
    return FL_OK;
}

fl_status fli_pk_check(const fli_pk *o, fli_pk_type type, const char *where_fmt, ...)
{
    if (o && o->type == type)
        return FL_OK;
    va_list ap;
    va_start(ap, where_fmt);
    fl_status s = where_fail(where_fmt, ap, "is %s, expected %s", o ? fli_pk_type_name(o->type) : "missing",
                             expected_name(type));
    va_end(ap);
    return s;
}

#define M(t) (1u << (t))

/* The getters share one body; want/opt differ only in `optional`. */
static fl_status get_value(const fli_pk *d, const char *key, fli_pk_type type, const fli_pk **out, int optional,
                           const char *where_fmt, va_list ap)
{
    return lookup(d, key, M(type), expected_name(type), optional, out, where_fmt, ap);
}

static fl_status get_int(const fli_pk *d, const char *key, int64_t *out, int optional, const char *where_fmt,
                         va_list ap)
{
    const fli_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_INT), "an int", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = v->u.i;
    return s;
}

static fl_status get_uint(const fli_pk *d, const char *key, uint64_t *out, int optional, const char *where_fmt,
                          va_list ap)
{
    const fli_pk *v;
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

static fl_status get_float(const fli_pk *d, const char *key, double *out, int optional, const char *where_fmt,
                           va_list ap)
{
    const fli_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_FLOAT) | M(FL_PK_INT), "a float", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = v->type == FL_PK_FLOAT ? v->u.f : (double)v->u.i;
    return s;
}

static fl_status get_bool(const fli_pk *d, const char *key, int *out, int optional, const char *where_fmt,
                          va_list ap)
{
    const fli_pk *v;
    fl_status s = lookup(d, key, M(FL_PK_BOOL), "a bool", optional, &v, where_fmt, ap);
    if (s == FL_OK && v)
        *out = (int)v->u.i;
    return s;
}

static fl_status get_str(const fli_pk *d, const char *key, const char **out, size_t *len, int optional,
                         const char *where_fmt, va_list ap)
{
    const fli_pk *v;
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

fl_status fli_pk_want(const fli_pk *d, const char *key, fli_pk_type type, const fli_pk **out,
                     const char *where_fmt, ...)
{
    WRAP(get_value(d, key, type, out, 0, where_fmt, ap));
}
fl_status fli_pk_want_int(const fli_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
{
    WRAP(get_int(d, key, out, 0, where_fmt, ap));
}
fl_status fli_pk_want_uint(const fli_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
{
    WRAP(get_uint(d, key, out, 0, where_fmt, ap));
}
fl_status fli_pk_want_float(const fli_pk *d, const char *key, double *out, const char *where_fmt, ...)
{
    WRAP(get_float(d, key, out, 0, where_fmt, ap));
}
fl_status fli_pk_want_bool(const fli_pk *d, const char *key, int *out, const char *where_fmt, ...)
{
    WRAP(get_bool(d, key, out, 0, where_fmt, ap));
}
fl_status fli_pk_want_str(const fli_pk *d, const char *key, const char **out, size_t *len,
                         const char *where_fmt, ...)
{
    WRAP(get_str(d, key, out, len, 0, where_fmt, ap));
}
fl_status fli_pk_opt(const fli_pk *d, const char *key, fli_pk_type type, const fli_pk **out,
                    const char *where_fmt, ...)
{
    WRAP(get_value(d, key, type, out, 1, where_fmt, ap));
}
fl_status fli_pk_opt_int(const fli_pk *d, const char *key, int64_t *out, const char *where_fmt, ...)
{
    WRAP(get_int(d, key, out, 1, where_fmt, ap));
}
fl_status fli_pk_opt_uint(const fli_pk *d, const char *key, uint64_t *out, const char *where_fmt, ...)
{
    WRAP(get_uint(d, key, out, 1, where_fmt, ap));
}
fl_status fli_pk_opt_float(const fli_pk *d, const char *key, double *out, const char *where_fmt, ...)
{
    WRAP(get_float(d, key, out, 1, where_fmt, ap));
}
fl_status fli_pk_opt_bool(const fli_pk *d, const char *key, int *out, const char *where_fmt, ...)
{
    WRAP(get_bool(d, key, out, 1, where_fmt, ap));
}
fl_status fli_pk_opt_str(const fli_pk *d, const char *key, const char **out, size_t *len,
                        const char *where_fmt, ...)
{
    WRAP(get_str(d, key, out, len, 1, where_fmt, ap));
}
