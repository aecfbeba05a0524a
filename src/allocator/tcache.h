/* Thread caches of the allocator object (allocator.c turns them on when two threads meet
 * at its lock). Each thread has one cache per allocator it uses: the blocks it was handed
 * (address -> stream, requested and charged bytes) and, among them, the blocks it freed
 * that wait in bins keyed by (stream, requested size) for the next request of exactly
 * that size on that stream, with no lock but the cache's own. The exact size keeps the
 * requested size the policy stored with the block right, so a block leaving a cache's
 * books is freed through the policy like any other. This file owns the data structure
 * and the thread-local lookup; allocator.c owns the statistics, the policy calls and
 * when blocks come and go. A cache's lock is taken by its thread for each of its
 * operations and by a holder of the allocator's lock (statistics, draining), never the
 * other way round: a thread holding its cache's lock never waits for the allocator's. */
#ifndef FL_TCACHE_H
#define FL_TCACHE_H

#include <stdatomic.h>
#include <stdint.h>

#include "fragless.h"
#include "policy/policy.h"
#include "util/lock.h"
#include "util/util.h"

/* Blocks of at most this many bytes are kept; at most FL_TC_MAX_BYTES per cache and
 * FL_TC_BIN_CAP per bin. Cached blocks are the policy's allocated blocks: they go back
 * on empty_cache, when an allocation fails (then it is retried), when their thread ends,
 * and when record_stream, graphs or the recorder come into use. */
/* Small blocks only (PyTorch's small pool ends at 1 MiB), and a cache holds at most
 * 64 MiB: what a thread keeps is memory no other size or thread can use until it goes
 * back, and with exact sizes a varlen trace would fill any larger bound (4 MiB blocks and
 * 1 GiB per cache held a whole GiB on encoder_varlen, a 304 MiB peak). */
#define FL_TC_MAX_BLOCK (UINT64_C(1) << 20)
#define FL_TC_MAX_BYTES (UINT64_C(64) << 20)
#define FL_TC_BIN_CAP 64

/* The three figures that have peaks, in this order in every per-figure array. */
enum { FL_TC_BYTES, FL_TC_REQ, FL_TC_BLOCKS, FL_TC_FIGURES };

typedef struct fli_tc_entry {
    uint64_t addr, stream;
    uint64_t req;       /* as the program asked */
    uint64_t charged;   /* the policy's allocated bytes for it */
    uint32_t next;      /* the next one in its bin, or on the free list; 0 = none */
    uint32_t cached;    /* 1: freed by the program, in a bin */
} fli_tc_entry;

typedef struct fli_tc_bin {
    uint64_t stream, cls; /* cls: the requested size; 0: an empty slot */
    uint32_t head, n;
} fli_tc_bin;

typedef struct fli_tcache fli_tcache;
struct fli_tcache {
    fli_lock lock;
    int off;                    /* 1 while the allocator's slow reasons hold: bypassed */
    _Atomic uint64_t alloc_id;  /* the allocator's id; 0 once it is destroyed */
    fl_allocator *a;            /* NULL once it is destroyed (with alloc_id, under the
                                   registry's mutex) */
    fli_tcache *next_of_alloc;  /* the allocator's list (its lock) */
    fli_tcache *next_of_thread; /* the thread's list (only that thread) */
    fli_map index;              /* addr -> entry index */
    fli_tc_entry *e;            /* entry 0 unused */
    uint32_t n_e, cap_e, free_e;
    fli_tc_bin *bins;
    uint32_t bin_mask, n_bins;
    /* Under the cache's lock: */
    uint64_t cached_bytes, cached_blocks;
    int64_t d_req, d_live;      /* requested and 512-rounded bytes: hits - frees here */
    uint64_t hits[FL_TC_FIGURES]; /* totals of what hits handed out */
    int64_t room[FL_TC_FIGURES];  /* how much hits may add before a peak needs a look */
    /* Stream-local operations (allocator.c, "threads"): in_local is 1 while this thread
     * runs one, without the allocator's lock; what they did to the policy's counters
     * waits here until the next holder of the allocator's lock folds it in (bytes net,
     * blocks allocated and freed, bytes allocated in all). Written by this thread while
     * in_local is 1, else by that holder. */
    _Atomic int in_local;
    uint32_t local_ops;         /* this thread's stream-local operations: one in 1024
                                   publishes (`fragless top`; allocator.c, local_unpublished) */
    int64_t l_bytes;
    uint64_t l_allocs, l_frees, l_total;
    uint64_t l_refills;         /* of l_allocs, those that took room under the lock first */
    fli_local local;            /* the policy's view of this thread (policy.h); local.owner
                                   is this struct's address (allocator.c: local_token) */
    /* Under the allocator's lock (and this one where both are needed): what this cache's
     * hits added to the program's figures plus its room, whose sum hits and frees here
     * leave unchanged (allocator.c: peaks). */
    int64_t k[FL_TC_FIGURES];
};

/* This thread's cache for the allocator of that id, NULL if it has none. */
fli_tcache *fli_tc_find(uint64_t alloc_id);
/* The cache this thread found last (only this thread writes it), and fli_tc_find's first
 * look, inline: the cache when it is that allocator's, else NULL (then fli_tc_find). */
extern __thread fli_tcache *fli_tc_last;
static inline fli_tcache *fli_tc_find_last(uint64_t alloc_id)
{
    fli_tcache *c = fli_tc_last;
    return c && atomic_load_explicit(&c->alloc_id, memory_order_relaxed) == alloc_id ? c : NULL;
}
/* A new, empty cache of this thread for a (not yet on a's list: the caller links it under
 * a's lock); NULL without host memory. */
fli_tcache *fli_tc_new(fl_allocator *a, uint64_t alloc_id);
/* The next allocator id (never 0). */
uint64_t fli_tc_next_id(void);
/* The registry's mutex: held while a cache is linked to or unlinked from an allocator
 * (created, its thread ends, its allocator is destroyed). Taken before any allocator's
 * lock. */
void fli_tc_registry_lock(void);
void fli_tc_registry_unlock(void);
/* Called by this file for each cache of an ending thread, under the registry's mutex,
 * while c->a is set: allocator.c gives its blocks back and unlinks it. */
void fli_tc_retire(fli_tcache *c);
/* Frees a cache (its thread's list no longer holds it). */
void fli_tc_free(fli_tcache *c);
/* Forgets this thread's caches of destroyed allocators (fork child: those of other
 * threads are freed by the allocator; this thread's are detached and go here). */
void fli_tc_prune(void);
/* Whether c is on this thread's list. */
int fli_tc_is_mine(const fli_tcache *c);

/* The entry of addr, NULL if none. */
static inline fli_tc_entry *fli_tc_lookup(fli_tcache *c, uint64_t addr)
{
    uint64_t v;
    return fli_map_get(&c->index, addr, &v) ? &c->e[v] : NULL;
}
/* A new live entry; FL_ERR_NOMEM when the tables cannot grow. */
fl_status fli_tc_add(fli_tcache *c, uint64_t addr, uint64_t stream, uint64_t req, uint64_t charged);
/* Drops entry e (live: the caller frees the block elsewhere). */
void fli_tc_remove(fli_tcache *c, fli_tc_entry *e);
/* Puts live entry e in its bin (cached = 1); 0 when its bin is full or cannot be made. */
int fli_tc_put(fli_tcache *c, fli_tc_entry *e);
/* The most recently cached entry of (stream, requested size cls), taken out of its bin (still in the
 * index, cached = 1 until the caller says otherwise); NULL if none. */
fli_tc_entry *fli_tc_take(fli_tcache *c, uint64_t stream, uint64_t cls);
/* Pushes back an entry fli_tc_take returned. */
void fli_tc_untake(fli_tcache *c, fli_tc_entry *e);
/* Any cached entry, taken out of its bin (for draining); NULL when none is left. */
fli_tc_entry *fli_tc_take_any(fli_tcache *c);
/* Drops every entry (the caller has drained the cached ones). */
void fli_tc_clear(fli_tcache *c);

#endif
