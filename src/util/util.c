/* Error messages (thread-local, like dlerror), the 64-bit hash map, the clock. */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[2048];
static _Thread_local fl_status last_status;

const char *fl_version(void)
{
    /* The library's own, whatever header a program was compiled with. */
    return FL_VERSION_STRING;
}

const char *fl_status_str(fl_status s)
{
    switch (s) {
    case FL_OK: return "ok";
    case FL_ERR_OOM: return "out of memory";
    case FL_ERR_INVALID: return "invalid argument";
    case FL_ERR_NOT_FOUND: return "not found";
    case FL_ERR_PARSE: return "parse error";
    case FL_ERR_IO: return "i/o error";
    case FL_ERR_DEVICE: return "device error";
    case FL_ERR_UNSUPPORTED: return "unsupported";
    case FL_ERR_NOMEM: return "host memory exhausted";
    }
    return "unknown status";
}

const char *fl_last_error(void) { return last_error; }

fl_status fl_last_status(void) { return last_status; }

void fli_clear_error(void)
{
    last_error[0] = 0;
    last_status = FL_OK;
}

fl_status fli_fail(fl_status s, const char *fmt, ...)
{
    /* Formatted apart, then copied: an argument may be fl_last_error() itself (a message
     * that wraps the one before it), which vsnprintf must not write over as it reads. */
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, strlen(msg) + 1);
    last_status = s;
    return s;
}

void fli_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "fragless: internal invariant broken at %s:%d: %s\n", file, line, cond);
    abort();
}

uint64_t fli_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- hash map ---------------------------------------------------------------- */

#define MAP_EMPTY UINT64_MAX

/* Fibonacci hashing: the top bits of k * 2^64/phi mix every bit of the key, so keys
 * that share low zero bits (offsets, addresses) still spread evenly. */
static inline uint64_t map_slot(const fli_map *m, uint64_t k)
{
    return (k * UINT64_C(0x9e3779b97f4a7c15)) >> m->shift;
}

/* The key MAP_EMPTY itself (a trace may hold the pointer 0xffffffffffffffff) lives in
 * one extra entry past the table, e[mask + 1]: its key is 1 when present, else 0. */
#define MAP_MAX_ENTRY(m) (&(m)->e[(m)->mask + 1])

static fl_status map_alloc(fli_map *m, uint64_t slots)
{
    m->e = malloc((slots + 1) * sizeof *m->e);
    if (!m->e)
        return fli_fail(FL_ERR_NOMEM, "hash map: cannot allocate %llu slots", (unsigned long long)slots);
    for (uint64_t i = 0; i < slots; i++)
        m->e[i].key = MAP_EMPTY;
    m->e[slots].key = 0;
    m->mask = slots - 1;
    m->shift = (unsigned)(64 - fli_log2_floor(slots));
    m->count = 0;
    return FL_OK;
}

fl_status fli_map_init(fli_map *m, uint64_t expected)
{
    uint64_t slots = 16;
    while (slots < expected * 4)
        slots <<= 1;
    return map_alloc(m, slots);
}

void fli_map_free(fli_map *m)
{
    free(m->e);
    m->e = NULL;
    m->mask = m->count = 0;
}

void fli_map_clear(fli_map *m)
{
    for (uint64_t i = 0; i <= m->mask; i++)
        m->e[i].key = MAP_EMPTY;
    MAP_MAX_ENTRY(m)->key = 0;
    m->count = 0;
}

static void map_insert_new(fli_map *m, uint64_t key, uint64_t val)
{
    uint64_t i = map_slot(m, key);
    while (m->e[i].key != MAP_EMPTY)
        i = (i + 1) & m->mask;
    m->e[i].key = key;
    m->e[i].val = val;
    m->count++;
}

static fl_status map_grow(fli_map *m)
{
    fli_map old = *m;
    fl_status s = map_alloc(m, (old.mask + 1) * 2);
    if (s != FL_OK) {
        *m = old;
        return s;
    }
    for (uint64_t i = 0; i <= old.mask; i++)
        if (old.e[i].key != MAP_EMPTY)
            map_insert_new(m, old.e[i].key, old.e[i].val);
    *MAP_MAX_ENTRY(m) = *MAP_MAX_ENTRY(&old);
    if (MAP_MAX_ENTRY(m)->key)
        m->count++;
    free(old.e);
    return FL_OK;
}

/* The key MAP_EMPTY, in its own entry: put (or insert) and remove. */
static void map_max_put(fli_map *m, uint64_t val)
{
    fli_map_entry *x = MAP_MAX_ENTRY(m);
    if (!x->key)
        m->count++;
    x->key = 1;
    x->val = val;
}

static bool map_max_remove(fli_map *m, uint64_t *val)
{
    fli_map_entry *x = MAP_MAX_ENTRY(m);
    if (!x->key)
        return false;
    if (val)
        *val = x->val;
    x->key = 0;
    m->count--;
    return true;
}

fl_status fli_map_put(fli_map *m, uint64_t key, uint64_t val)
{
    if (FL_UNLIKELY(key == MAP_EMPTY)) {
        map_max_put(m, val);
        return FL_OK;
    }
    uint64_t i = map_slot(m, key);
    for (;;) {
        if (m->e[i].key == key) {
            m->e[i].val = val;
            return FL_OK;
        }
        if (m->e[i].key == MAP_EMPTY)
            break;
        i = (i + 1) & m->mask;
    }
    /* The key is absent: insert it (the probe position is recomputed if the table grows). */
    return fli_map_insert(m, key, val);
}

fl_status fli_map_insert(fli_map *m, uint64_t key, uint64_t val)
{
    if (FL_UNLIKELY(key == MAP_EMPTY)) {
        map_max_put(m, val);
        return FL_OK;
    }
    if (FL_UNLIKELY((m->count + 1) * 4 > m->mask + 1)) {
        fl_status s = map_grow(m);
        if (s != FL_OK)
            return s;
    }
    map_insert_new(m, key, val);
    return FL_OK;
}

bool fli_map_get(const fli_map *m, uint64_t key, uint64_t *val)
{
    uint64_t i = map_slot(m, key);
    for (;;) {
        uint64_t k = m->e[i].key;
        if (k == key && FL_LIKELY(key != MAP_EMPTY)) {
            if (val)
                *val = m->e[i].val;
            return true;
        }
        if (k == MAP_EMPTY) {
            if (FL_LIKELY(key != MAP_EMPTY))
                return false;
            const fli_map_entry *x = &m->e[m->mask + 1];
            if (x->key && val)
                *val = x->val;
            return x->key != 0;
        }
        i = (i + 1) & m->mask;
    }
}

bool fli_map_remove(fli_map *m, uint64_t key, uint64_t *val)
{
    if (FL_UNLIKELY(key == MAP_EMPTY))
        return map_max_remove(m, val);
    uint64_t i = map_slot(m, key);
    for (;;) {
        uint64_t k = m->e[i].key;
        if (k == MAP_EMPTY)
            return false;
        if (k == key)
            break;
        i = (i + 1) & m->mask;
    }
    if (val)
        *val = m->e[i].val;
    /* Backward-shift deletion keeps probe chains intact without tombstones. */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        uint64_t k = m->e[j].key;
        if (k == MAP_EMPTY)
            break;
        uint64_t home = map_slot(m, k);
        /* Move k into the hole at i unless its home lies cyclically in (i, j]. */
        bool in_between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_between) {
            m->e[i] = m->e[j];
            i = j;
        }
    }
    m->e[i].key = MAP_EMPTY;
    m->count--;
    return true;
}
