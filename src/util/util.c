/* Error messages (thread-local, like dlerror), the 64-bit hash map, the clock. */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[512];

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

void fl_clear_error(void) { last_error[0] = 0; }

fl_status fl_fail(fl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

uint64_t fl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- hash map ---------------------------------------------------------------- */

#define MAP_EMPTY UINT64_MAX

static inline uint64_t map_hash(uint64_t k)
{
    /* splitmix64 finaliser: pointers and offsets share low zero bits. */
    k ^= k >> 30;
    k *= UINT64_C(0xbf58476d1ce4e5b9);
    k ^= k >> 27;
    k *= UINT64_C(0x94d049bb133111eb);
    k ^= k >> 31;
    return k;
}

static fl_status map_alloc(fl_map *m, uint64_t slots)
{
    m->keys = malloc(slots * sizeof *m->keys);
    m->vals = malloc(slots * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        m->keys = m->vals = NULL;
        return fl_fail(FL_ERR_NOMEM, "hash map: cannot allocate %llu slots",
                       (unsigned long long)slots);
    }
    memset(m->keys, 0xff, slots * sizeof *m->keys);
    m->mask = slots - 1;
    m->count = 0;
    return FL_OK;
}

fl_status fl_map_init(fl_map *m, uint64_t expected)
{
    uint64_t slots = 16;
    while (slots < expected * 2)
        slots <<= 1;
    return map_alloc(m, slots);
}

void fl_map_free(fl_map *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = m->vals = NULL;
    m->mask = m->count = 0;
}

void fl_map_clear(fl_map *m)
{
    memset(m->keys, 0xff, (m->mask + 1) * sizeof *m->keys);
    m->count = 0;
}

static void map_insert_new(fl_map *m, uint64_t key, uint64_t val)
{
    uint64_t i = map_hash(key) & m->mask;
    while (m->keys[i] != MAP_EMPTY)
        i = (i + 1) & m->mask;
    m->keys[i] = key;
    m->vals[i] = val;
    m->count++;
}

static fl_status map_grow(fl_map *m)
{
    fl_map old = *m;
    fl_status s = map_alloc(m, (old.mask + 1) * 2);
    if (s != FL_OK) {
        *m = old;
        return s;
    }
    for (uint64_t i = 0; i <= old.mask; i++)
        if (old.keys[i] != MAP_EMPTY)
            map_insert_new(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
    return FL_OK;
}

fl_status fl_map_put(fl_map *m, uint64_t key, uint64_t val)
{
    uint64_t i = map_hash(key) & m->mask;
    for (;;) {
        if (m->keys[i] == key) {
            m->vals[i] = val;
            return FL_OK;
        }
        if (m->keys[i] == MAP_EMPTY)
            break;
        i = (i + 1) & m->mask;
    }
    if ((m->count + 1) * 2 > m->mask + 1) {
        fl_status s = map_grow(m);
        if (s != FL_OK)
            return s;
        map_insert_new(m, key, val);
        return FL_OK;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->count++;
    return FL_OK;
}

bool fl_map_get(const fl_map *m, uint64_t key, uint64_t *val)
{
    uint64_t i = map_hash(key) & m->mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == key) {
            if (val)
                *val = m->vals[i];
            return true;
        }
        if (k == MAP_EMPTY)
            return false;
        i = (i + 1) & m->mask;
    }
}

bool fl_map_remove(fl_map *m, uint64_t key, uint64_t *val)
{
    uint64_t i = map_hash(key) & m->mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == MAP_EMPTY)
            return false;
        if (k == key)
            break;
        i = (i + 1) & m->mask;
    }
    if (val)
        *val = m->vals[i];
    /* Backward-shift deletion keeps probe chains intact without tombstones. */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        uint64_t k = m->keys[j];
        if (k == MAP_EMPTY)
            break;
        uint64_t home = map_hash(k) & m->mask;
        /* Move k into the hole at i unless its home lies cyclically in (i, j]. */
        bool in_between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_between) {
            m->keys[i] = k;
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = MAP_EMPTY;
    m->count--;
    return true;
}
