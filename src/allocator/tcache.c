/* Thread caches: the data structure and the thread-local lookup (tcache.h). */
#include "allocator/tcache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t key;  /* value: the thread's list, so that its end calls thread_end */
static _Atomic uint64_t last_id;

/* This thread's caches, and the one found last. */
static __thread fli_tcache *tls_list;
__thread fli_tcache *fli_tc_last; /* tcache.h: fli_tc_find_last reads it inline */

void fli_tc_registry_lock(void) { pthread_mutex_lock(&registry); }
void fli_tc_registry_unlock(void) { pthread_mutex_unlock(&registry); }

uint64_t fli_tc_next_id(void) { return atomic_fetch_add(&last_id, 1) + 1; }

void fli_tc_free(fli_tcache *c)
{
    if (!c)
        return;
    fli_map_free(&c->index);
    free(c->e);
    free(c->bins);
    free(c);
}

/* The thread ends: each cache's blocks go back to its allocator, if it still exists. */
static void thread_end(void *head)
{
    fli_tcache *c = head;
    tls_list = fli_tc_last = NULL;
    while (c) {
        fli_tcache *next = c->next_of_thread;
        pthread_mutex_lock(&registry);
        if (c->a)
            fli_tc_retire(c);
        pthread_mutex_unlock(&registry);
        fli_tc_free(c);
        c = next;
    }
}

static void make_key(void) { pthread_key_create(&key, thread_end); }

void fli_tc_prune(void)
{
    fli_tcache **p = &tls_list;
    int changed = 0;
    fli_tc_last = NULL;
    while (*p) {
        fli_tcache *c = *p;
        if (atomic_load_explicit(&c->alloc_id, memory_order_acquire) == 0) {
            *p = c->next_of_thread;
            fli_tc_free(c);
            changed = 1;
        } else {
            p = &c->next_of_thread;
        }
    }
    if (changed) /* the key exists: this thread made a cache */
        pthread_setspecific(key, tls_list);
}

int fli_tc_is_mine(const fli_tcache *c)
{
    for (const fli_tcache *m = tls_list; m; m = m->next_of_thread)
        if (m == c)
            return 1;
    return 0;
}

fli_tcache *fli_tc_find(uint64_t alloc_id)
{
    fli_tcache *c = fli_tc_find_last(alloc_id);
    if (FL_LIKELY(c != NULL))
        return c;
    int dead = 0;
    for (c = tls_list; c; c = c->next_of_thread) {
        uint64_t id = atomic_load_explicit(&c->alloc_id, memory_order_relaxed);
        if (id == alloc_id) {
            fli_tc_last = c;
            return c;
        }
        dead |= id == 0;
    }
    if (dead)
        fli_tc_prune();
    return NULL;
}

fli_tcache *fli_tc_new(fl_allocator *a, uint64_t alloc_id)
{
    pthread_once(&key_once, make_key);
    fli_tcache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->bin_mask = 63;
    c->bins = calloc(c->bin_mask + 1, sizeof *c->bins);
    c->cap_e = 64;
    c->e = malloc(c->cap_e * sizeof *c->e);
    c->n_e = 1; /* index 0 means none */
    if (!c->bins || !c->e || fli_map_init(&c->index, 64) != FL_OK) {
        fli_tc_free(c);
        return NULL;
    }
    c->a = a;
    c->local.owner = (uint64_t)(uintptr_t)c; /* the token (allocator.c: local_token) */
    atomic_store_explicit(&c->alloc_id, alloc_id, memory_order_relaxed);
    c->next_of_thread = tls_list;
    tls_list = fli_tc_last = c;
    pthread_setspecific(key, tls_list);
    return c;
}

fl_status fli_tc_add(fli_tcache *c, uint64_t addr, uint64_t stream, uint64_t req, uint64_t charged)
{
    uint32_t i = c->free_e;
    if (i) {
        c->free_e = c->e[i].next;
    } else {
        if (c->n_e == c->cap_e) {
            if (c->cap_e > UINT32_MAX / 2)
                return FL_ERR_NOMEM;
            fli_tc_entry *ne = realloc(c->e, 2 * (size_t)c->cap_e * sizeof *ne);
            if (!ne)
                return FL_ERR_NOMEM;
            c->e = ne;
            c->cap_e *= 2;
        }
        i = c->n_e++;
    }
    if (fli_map_put(&c->index, addr, i) != FL_OK) {
        c->e[i].next = c->free_e;
        c->free_e = i;
        return FL_ERR_NOMEM;
    }
    c->e[i] = (fli_tc_entry){addr, stream, req, charged, 0, 0};
    return FL_OK;
}

void fli_tc_remove(fli_tcache *c, fli_tc_entry *e)
{
    uint32_t i = (uint32_t)(e - c->e);
    fli_map_remove(&c->index, e->addr, NULL);
    e->next = c->free_e;
    c->free_e = i;
}

static inline uint64_t bin_hash(uint64_t stream, uint64_t cls)
{
    uint64_t h = (stream ^ (cls * UINT64_C(0x9e3779b97f4a7c15))) * UINT64_C(0xff51afd7ed558ccd);
    return h ^ (h >> 29);
}

/* The bin of (stream, cls), NULL if there is none (make: 0) or it cannot be made. */
static fli_tc_bin *bin_of(fli_tcache *c, uint64_t stream, uint64_t cls, int make)
{
    for (;;) {
        uint64_t i = bin_hash(stream, cls) & c->bin_mask;
        for (;; i = (i + 1) & c->bin_mask) {
            fli_tc_bin *b = &c->bins[i];
            if (b->cls == cls && b->stream == stream)
                return b;
            if (b->cls == 0)
                break;
        }
        if (!make)
            return NULL;
        if (2 * (c->n_bins + 1) <= c->bin_mask + 1) {
            c->bins[i] = (fli_tc_bin){stream, cls, 0, 0};
            c->n_bins++;
            return &c->bins[i];
        }
        /* Grow: bins are never removed, only emptied. */
        uint32_t mask = 2 * c->bin_mask + 1;
        fli_tc_bin *nb = calloc((size_t)mask + 1, sizeof *nb);
        if (!nb)
            return NULL;
        for (uint32_t k = 0; k <= c->bin_mask; k++) {
            const fli_tc_bin *b = &c->bins[k];
            if (!b->cls)
                continue;
            uint64_t j = bin_hash(b->stream, b->cls) & mask;
            while (nb[j].cls)
                j = (j + 1) & mask;
            nb[j] = *b;
        }
        free(c->bins);
        c->bins = nb;
        c->bin_mask = mask;
    }
}

int fli_tc_put(fli_tcache *c, fli_tc_entry *e)
{
    fli_tc_bin *b = bin_of(c, e->stream, e->req, 1);
    if (!b || b->n >= FL_TC_BIN_CAP)
        return 0;
    e->cached = 1;
    e->next = b->head;
    b->head = (uint32_t)(e - c->e);
    b->n++;
    return 1;
}

fli_tc_entry *fli_tc_take(fli_tcache *c, uint64_t stream, uint64_t cls)
{
    fli_tc_bin *b = bin_of(c, stream, cls, 0);
    if (!b || !b->n)
        return NULL;
    fli_tc_entry *e = &c->e[b->head];
    b->head = e->next;
    b->n--;
    return e;
}

void fli_tc_untake(fli_tcache *c, fli_tc_entry *e)
{
    fli_tc_bin *b = bin_of(c, e->stream, e->req, 0);
    e->next = b->head;
    b->head = (uint32_t)(e - c->e);
    b->n++;
}

fli_tc_entry *fli_tc_take_any(fli_tcache *c)
{
    for (uint32_t k = 0; k <= c->bin_mask; k++)
        if (c->bins[k].n)
            return fli_tc_take(c, c->bins[k].stream, c->bins[k].cls);
    return NULL;
}

void fli_tc_clear(fli_tcache *c)
{
    fli_map_clear(&c->index);
    memset(c->bins, 0, ((size_t)c->bin_mask + 1) * sizeof *c->bins);
    c->n_bins = 0;
    c->n_e = 1;
    c->free_e = 0;
}
