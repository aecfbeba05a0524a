/* The fragless policy: blocks are placed by the range allocator in a large virtual range
 * per stream; physical pages are mapped under a page only while a live block touches it
 * or it is cached, and cached pages are unmapped and reused elsewhere when physical
 * memory runs short. No data ever moves. Pages have handles of their own, or, in a large
 * heap while memory is plentiful, a chunk of CHUNK_PAGES aligned pages shares one handle
 * (fewer driver calls in warm-up); a chunk is unmapped only whole, once no live block
 * touches it. */
#include "policy/policy.h"
#include "range/range_internal.h"
#include "util/bits.h"
#include "util/lock.h"
#include "util/table.h"

#include <stdlib.h>
#include <string.h>

#define GROW_PAGES 10
/* The small heap's step (12 MiB of 2 MiB pages): the smallest that left every trace's
 * steady state without device calls (ARCHITECTURE.md, "growth in steps"). */
#define GROW_SMALL_PAGES 6
/* A small heap's tables cover this many pages to start (a power of two, at least
 * GROW_SMALL_PAGES: the first growth step fits; heap_grow_pages). */
#define SMALL_START_PAGES 8
/* Quick lists: freed blocks of at most QUICK_MAX bytes are set aside per exact size (at
 * most QUICK_CAP each) and handed out again without the range allocator. */
#define QUICK_MAX 4096
#define QUICK_BINS (QUICK_MAX / 512)
#define QUICK_CAP 64
#define PRESSURE_CANDIDATES 64
/* Blocks of at least this many pages look for a run of mapped pages inside a free range
 * under pressure (mapped_extent_fit): 64 MiB of 2 MiB pages. */
#define EXTENT_MIN_PAGES UINT64_C(32)
/* Page-aligned starts inside free ranges that place_under_pressure may cost per request. */
#define PRESSURE_POSITIONS 4096
/* ... and only while the limit exceeds the most pages ever pinned at once by at least
 * 1/2^PRESSURE_SLACK_LOG of it (ARCHITECTURE.md, "placement under pressure"). */
#define PRESSURE_SLACK_LOG 5
/* A job of several streams approaches its limit (approaching_limit) while the limit
 * leaves less than 1/2^APPROACH_SLACK_LOG of it above the most pages pinned so far. */
#define APPROACH_SLACK_LOG 4
/* Small blocks of at least 1/2^SMALL_LEND_LOG page (64 KiB of a 2 MiB page) that would
 * pin a new page of their stream's small heap under pressure go into another stream's
 * small heap where they pin none (lend; ARCHITECTURE.md, "placement near the limit"). */
#define SMALL_LEND_LOG 5
/* A large heap's chunk: CHUNK_PAGES aligned pages (32 MiB of 2 MiB pages) mapped with one
 * handle when all are unmapped and the limit leaves room (chunk_room). */
#define CHUNK_LOG 4
#define CHUNK_PAGES (UINT64_C(1) << CHUNK_LOG)
#define CHUNK_SHARE_LOG 3
/* Under pressure, a placement gives way to a stitched block that pins fewer new pages
 * (stitch_near) while the limit leaves less than 1/STITCH_SLACK of it above the most
 * pages pinned so far: 4.5%, nearer the limit than issue 13's steady-state capacity
 * (1.05 x peak live leaves 4.8%), where a stitched block's device calls (a reservation,
 * its mappings and access, then the unmaps after its free) would come back every step.
 * At 1/16-1/18 they did (ARCHITECTURE.md, "stitched blocks"). */
#define STITCH_SLACK 22

/* Page state. A page is pinned while a live block touches it, cached when mapped and
 * not pinned, unmapped when handle == 0. Only a block's first and last pages can be
 * shared with other blocks: those count their blocks in refs. The pages strictly between
 * them belong to that block alone, and a bit per page (covered) says so, set and cleared
 * for the whole run a word at a time; their refs stay 0. So a page's live blocks are
 * refs + covered, and pinning or unpinning a block of any size costs a few words. */
/* Mapped, but its set_access failed and its unmap too: access is set again before the
 * page is used (map_pages), and reclaim may still unmap it. */
#define PAGE_NO_ACCESS 2u

/* A block's range-node tag: its size less the requested bytes (< 512), and this bit when
 * the block is another stream's, lent this heap's free range (lending, below), or this
 * one when it is a small request placed in its stream's large heap (small_into_large):
 * freed, it goes back to the range allocator, not onto a quick list that no request of
 * the large heap would take it from. */
#define TAG_FOREIGN 0x8000u
#define TAG_GUEST 0x4000u
/* An end of a stitched block (stitches, below): part of a page of this heap that a block
 * elsewhere uses through a second mapping of the page's handle. Its node is held
 * (RANGE_HELD, so no free finds it, at no cost to the frees) but on no quick list, and it
 * pins its page as a live block does. */
#define TAG_STITCH 0x2000u
#define TAG_REQ(tag) ((uint64_t)((tag) & ~(TAG_FOREIGN | TAG_GUEST | TAG_STITCH)))

typedef struct fx_page {
    uint32_t refs;          /* live blocks that start or end on the page */
    uint32_t flags;         /* PAGE_NO_ACCESS */
    uint64_t handle;        /* physical handle mapped here, 0 if none */
} fx_page;

/* The per-page tables of a heap (fli_table_grow: warm-up extends them page after page,
 * and they are the bulk of its host memory): the page table, the index of starts, the
 * three bit arrays and the chunk table. */
enum { TAB_PAGES, TAB_STARTS, TAB_COVERED, TAB_MAPPED, TAB_RECENT, TAB_CHUNKED, TAB_COUNT };

typedef struct fx_bin {
    uint32_t n;
    uint32_t node[QUICK_CAP];   /* range nodes in state RANGE_HELD, last freed on top */
} fx_bin;

typedef struct fx_heap {
    uint64_t stream;
    int small;              /* holds requests below f->small_limit */
    uint64_t va;            /* base of the heap: the reservation's first chunk boundary */
    uint64_t va_size;
    uint64_t res_va, res_size; /* the reservation */
    fl_range *range;
    fx_page *pages;         /* grows with the highest page used */
    uint64_t n_pages;       /* pages that every per-page table covers (a power of two:
                               256 or more in a large heap, SMALL_START_PAGES or more in
                               a small one) */
    uint64_t known_bytes;   /* min(va_size, n_pages pages): a free's address below va +
                               known_bytes can be looked up in the index (live_node) */
    uint64_t cap[TAB_COUNT];/* pages each table (heap_tables) is grown to: n_pages unless
                               host memory ran out while growing them */
    /* The index of block starts, which finds a freed block's node (the range allocator
     * keeps no offset table for a heap: range_untrack): starts[offset >> win_log] is the
     * first used or held block starting in that window of 2^win_log bytes, 0 if none;
     * the others starting there follow it in address order. The small heap's blocks
     * are at least 512 B and its windows 1 KiB: a free looks at one or two blocks (8 KiB
     * of index per 2 MiB page; 512 B windows, 16 KiB a page, cost snapshots' warm-up
     * more in page faults than they saved the CPU traces). The large heap's are at
     * least the small-request limit L and its windows 8 L rounded down to a power of
     * two, at most a page: a free walks past at most 7 blocks and the free ranges
     * between them (4 B of index per page by default). Covers n_pages pages. */
    uint32_t *starts;
    unsigned win_log;
    /* Bits per page (n_pages of them): */
    uint64_t *covered;      /* strictly inside a live block (pinned by it alone) */
    uint64_t *mapped;       /* handle != 0 */
    uint64_t *recent;       /* cached since the clock hand last passed: spared once */
    uint64_t *chunked;      /* a bit per chunk: mapped with one handle */
    uint64_t top;           /* pages below it have been mapped at least once */
    uint64_t bytes_asked;   /* all bytes allocated here, and those in blocks of whole pages: */
    uint64_t whole_bytes;   /* when these dominate, such blocks are kept page-aligned */
    fx_bin bins[QUICK_BINS];    /* quick lists by size / 512 - 1 */
    uint64_t held_bytes;        /* bytes on the quick lists */
    /* Lending: ranges freed by other streams' blocks placed here wait, allocated and
     * unpinned, for the next synchronize (then their streams' work on them is done);
     * dirty: a range went back to the range allocator since the last synchronize, so
     * its own stream's work may still use it. */
    uint32_t *deferred;
    uint32_t n_deferred, cap_deferred; /* cap_deferred >= n_deferred + n_lent_here */
    uint32_t n_lent_here;       /* live blocks lent here (their frees wait here) */
    uint64_t deferred_bytes;
    int dirty;
    uint64_t n_cached;          /* mapped pages no live block touches */
    uint64_t n_chunk_cached;    /* of those, pages in mapped chunks (chunks with none of
                                   their pages in use are counted only when needed:
                                   idle_chunks) */
    /* The thread (its token) whose stream-local operations (fx_alloc_local,
     * fx_free_local) this heap serves, 0 while none asked: they change nothing but the
     * heap they work on, so with one thread at a time on it they need no lock; every
     * other operation runs while none of those can (the allocator's threads section). */
    _Atomic uint64_t owner;
    /* Adoption (fx_local_missed, under the allocator's lock only): the last other thread
     * whose operations on this heap took the ordinary way, and how many in a row. */
    uint64_t adopt_by;
    uint32_t adopt_n;
    /* The large block placed here last, as node and offset (freed since, the node is no
     * longer used at that offset): place_on_stack puts the next block right above it. */
    uint32_t stack_node;
    uint64_t stack_off;
    /* Retired (fx_stream_gone): its stream was destroyed. 1: a stream the policy has not
     * seen may take the heap over (heap_adopt) once retired_event, recorded on the old
     * stream before it went, is complete (its work on the heap's free ranges is done);
     * 2: no event could be recorded, never taken over (its cached pages still serve
     * reclaim). A retired_event of 0 with retired 1: the old stream's work is known done
     * (the device was synchronized since: fx_empty_cache, which destroys the event), taken
     * over without asking. heap_find skips retired heaps; their stream stays for the
     * record. */
    int retired;
    uint64_t retired_event;
    char pad[64];               /* no cache line shared with the next heap's fields */
} fx_heap;

/* A stitched block (stitch_alloc): the last resort before out of memory, and very near
 * the limit a placement that pins fewer new pages (stitch_near). It lives in a
 * reservation of its own, where the handles of its pages are mapped in a row: in the
 * middle, pages of its own; at its ends, a second mapping of pages that live blocks of its
 * stream's heaps pin already, whose free part (the end of a page for its first bytes, the
 * start of one for its last) is held in that heap by a range node tagged TAG_STITCH. */
typedef struct fx_stitch {
    uint64_t addr, size, req, stream; /* the block: address, bytes charged, asked */
    uint64_t va, pages;         /* the reservation and its pages, ends included */
    uint64_t mapped;            /* its first pages mapped so far (undone from the last) */
    int reserved;               /* va is reserved */
    uint64_t *handles;          /* the middle pages' handles, n_handles of them */
    uint64_t n_handles;
    /* Its ends, [first page, last page]: the heap lending it (STITCH_NONE: no end), the
     * range there, the handle mapped there when it was made, and while it lives the range
     * node that holds it. Kept while it is dead, so that a request of its size can take it
     * back as it is (stitch_revive). */
    uint32_t lent_heap[2];
    uint64_t lent_off[2], lent_size[2], lent_handle[2];
    uint32_t end_node[2];
    int dead;                   /* freed: its mappings stay until its pages are wanted */
    int quiet;                  /* dead, and a synchronize since: may be unmapped */
} fx_stitch;
#define STITCH_NONE UINT32_MAX

typedef struct fx_policy {
    fli_policy base;
    uint64_t gran;
    unsigned gran_log;
    uint64_t max_pages;     /* physical pages the policy may hold now: the limit in pages
                               (limit_pages), or fewer while the device said it is full */
    fx_heap *heaps;
    uint32_t n_heaps, cap_heaps;
    uint64_t small_limit;   /* requests below it go to the stream's small heap */
    fx_heap *last_heap[2];  /* the stream lookup's cache, [large, small]: the heap of that
                               kind used last, or &no_heap until there is one; so the
                               short paths test it with no bounds check and no index
                               (heap_new moves them with the heaps) */
    uint64_t *pool;         /* created one-page handles not mapped anywhere */
    uint64_t n_pool, cap_pool;
    uint64_t *cpool;        /* created chunk handles not mapped anywhere */
    uint64_t n_cpool, cap_cpool;
    uint64_t n_handles;     /* pages of the handles created and not released */
    uint64_t n_chunk_handles; /* chunk handles created and not released */
    uint64_t n_chunk_pages; /* mapped pages in chunks (CHUNK_PAGES per mapped chunk); the
                               cached pages are counted per heap (fx_heap.n_cached) */
    int no_chunks;          /* the device refused a chunk: one-page handles only, until
                               empty_cache or a new limit */
    uint64_t n_no_access;   /* pages marked PAGE_NO_ACCESS */
    fli_map foreign;        /* lent blocks: address -> their stream */
    int streams;            /* 2: heaps of more than one stream exist */
    uint32_t n_retired;     /* heaps retired at some time (heap_adopt is looked for) */
    uint64_t lend_peak;     /* the most pages pinned at once (room_above_peak): after each
                               placement with more than one stream, after each that
                               mapped pages with one */
    uint32_t hand_heap;     /* the clock hand: next page reclaim looks at */
    uint64_t hand_page;
    uint64_t peak_pinned;   /* the most pages live blocks touched at once, as seen by
                               place_under_pressure (the only reader) */
    fx_stitch *stitches;    /* stitched blocks, live and dead */
    uint32_t n_stitches, cap_stitches, n_dead;
    uint64_t stitch_pages;  /* their middle pages (handles counted in n_handles) */
    uint64_t dead_pages;    /* of those, in dead stitches: the pool's after a synchronize */
} fx_policy;

/* ---- heaps ------------------------------------------------------------------- */

/* last_heap's entry while a kind has no heap: no stream's (heap_for tests for it), no
 * address (va_size and known_bytes 0), no block on its quick lists. Never written. */
static fx_heap no_heap;

static void **heap_table(fx_heap *h, int k, size_t *elem)
{
    switch (k) {
    case TAB_PAGES: *elem = sizeof *h->pages; return (void **)&h->pages;
    case TAB_STARTS: *elem = sizeof *h->starts; return (void **)&h->starts;
    case TAB_COVERED: *elem = sizeof *h->covered; return (void **)&h->covered;
    case TAB_MAPPED: *elem = sizeof *h->mapped; return (void **)&h->mapped;
    case TAB_RECENT: *elem = sizeof *h->recent; return (void **)&h->recent;
    default: *elem = sizeof *h->chunked; return (void **)&h->chunked;
    }
}

/* Entries of table k that cover `pages` pages. */
static uint64_t heap_table_len(const fx_heap *h, unsigned gran_log, int k, uint64_t pages)
{
    return k == TAB_PAGES ? pages : k == TAB_STARTS ? pages << (gran_log - h->win_log)
           : fli_bits_words(k == TAB_CHUNKED ? fli_div_up(pages, CHUNK_PAGES) : pages);
}

static fl_status heap_grow_pages(fx_heap *h, unsigned gran_log, uint64_t need)
{
    if (need <= h->n_pages)
        return FL_OK;
    /* A large heap starts with 256 pages (512 MiB of 2 MiB pages, 6 KiB of tables):
     * doubling from one chunk cost the snapshots' warm-up 5 copies of every table per
     * heap. A small heap starts with SMALL_START_PAGES, its first growth step's worth:
     * its index of starts (8 KiB a page) is then ordinary heap memory, where 256 pages
     * of it were a 2 MiB mapping whose mmap and first touches (page faults) cost every
     * fresh allocator's warm-up more than zeroing 64 KiB does. */
    uint64_t n = h->n_pages ? h->n_pages : h->small ? SMALL_START_PAGES : 256;
    while (n < need)
        n *= 2;
    for (int k = 0; k < TAB_COUNT; k++) {
        size_t elem;
        void **t = heap_table(h, k, &elem);
        uint64_t have = heap_table_len(h, gran_log, k, h->cap[k]), want = heap_table_len(h, gran_log, k, n);
        if (h->cap[k] >= n)
            continue;
        if (want > have && fli_table_grow(t, elem, have, want) != FL_OK)
            return fli_fail(FL_ERR_NOMEM, "fragless: cannot track %llu pages", (unsigned long long)n);
        h->cap[k] = n;
    }
    h->n_pages = n;
    h->known_bytes = n << gran_log < h->va_size ? n << gran_log : h->va_size;
    return FL_OK;
}

static void heap_free_tables(fx_heap *h, unsigned gran_log)
{
    for (int k = 0; k < TAB_COUNT; k++) {
        size_t elem;
        void **t = heap_table(h, k, &elem);
        fli_table_free(*t, elem, heap_table_len(h, gran_log, k, h->cap[k]));
    }
}

static fl_status heap_new(fx_policy *f, uint64_t stream, int small, uint32_t *out)
{
    if (f->n_heaps == f->cap_heaps) {
        uint32_t cap = f->cap_heaps ? f->cap_heaps * 2 : 4;
        ptrdiff_t last[2];
        for (int k = 0; k < 2; k++)
            last[k] = f->last_heap[k] == &no_heap ? -1 : f->last_heap[k] - f->heaps;
        fx_heap *h = realloc(f->heaps, cap * sizeof *h);
        if (!h)
            return fli_fail(FL_ERR_NOMEM, "fragless: host memory for a stream heap");
        f->heaps = h;
        f->cap_heaps = cap;
        for (int k = 0; k < 2; k++)
            f->last_heap[k] = last[k] < 0 ? &no_heap : &h[last[k]];
    }
    fx_heap *h = &f->heaps[f->n_heaps];
    memset(h, 0, sizeof *h);
    h->stream = stream;
    h->small = small;
    /* Virtual space is cheap: twice the device's memory (not the limit, which may be
     * raised later), so placement never fails for want of addresses; 256 TiB at most. */
    uint64_t want = f->base.dev->capacity / f->gran * f->gran * 2;
    uint64_t cap = UINT64_C(1) << 48;
    h->va_size = fli_align_up(want < cap && want > 0 ? want : cap, f->gran);
    /* The heap starts on a chunk boundary (chunks are aligned in the address space too,
     * so what a live block can hold back is known from its address): the reservation
     * has a chunk's worth of room to spare. */
    uint64_t chunk_bytes = CHUNK_PAGES << f->gran_log;
    h->res_size = h->va_size + chunk_bytes - f->gran;
    fl_status s = fli_dev_reserve(f->base.dev, h->res_size, &h->res_va);
    if (s != FL_OK)
        return s;
    h->va = fli_align_up(h->res_va, chunk_bytes);
    s = fl_range_create(h->va_size, 512, &h->range);
    if (s != FL_OK) {
        fli_dev_addr_free(f->base.dev, h->res_va, h->res_size);
        return s;
    }
    range_untrack(h->range);
    /* Windows of the index of starts: 1 KiB (two blocks at most) in the small heap, 8
     * times the smallest block in the large one, at most a page. */
    unsigned win = small ? 10 : (unsigned)fli_log2_floor(f->small_limit > 512 ? f->small_limit : 512) + 3;
    h->win_log = win < f->gran_log ? win : f->gran_log;
    for (uint32_t i = 0; i < f->n_heaps; i++)
        if (f->heaps[i].stream != stream)
            f->streams = 2;
    *out = f->n_heaps++;
    return FL_OK;
}

/* Each stream has two heaps: small requests apart from large ones, so that short-lived
 * small blocks do not pin the partly used pages between large ones (ARCHITECTURE.md). */
/* The heap of (stream, small), -1 if none; writes nothing. */
static int heap_find(const fx_policy *f, uint64_t stream, int small)
{
    for (uint32_t i = 0; i < f->n_heaps; i++)
        if (f->heaps[i].stream == stream && f->heaps[i].small == small && !f->heaps[i].retired)
            return (int)i;
    return -1;
}

/* A retired heap of the kind asked whose old stream's work is done, given to stream: -1
 * if none (the event not complete yet, or not to be asked now: during a capture). A
 * heap that holds blocks lent by other streams is left as it is (their frees wait in it,
 * tied to their own streams). */
static int heap_adopt(fx_policy *f, uint64_t stream, int small)
{
    for (uint32_t i = 0; i < f->n_heaps; i++) {
        fx_heap *h = &f->heaps[i];
        int done = 0;
        if (h->retired != 1 || h->small != small || h->n_lent_here)
            continue;
        if (h->retired_event) {
            if (fli_dev_event_query(f->base.dev, h->retired_event, &done) != FL_OK) {
                fli_clear_error(); /* asked again at the next new stream */
                continue;
            }
            if (!done)
                continue;
            fli_dev_event_destroy(f->base.dev, h->retired_event);
        }
        h->retired = 0;
        h->retired_event = 0;
        h->stream = stream;
        h->adopt_by = 0;
        h->adopt_n = 0;
        atomic_store_explicit(&h->owner, 0, memory_order_relaxed);
        return (int)i;
    }
    return -1;
}

static inline fl_status heap_for(fx_policy *f, uint64_t stream, int small, uint32_t *out)
{
    fx_heap *c = f->last_heap[small];
    if (FL_LIKELY(c->stream == stream && c != &no_heap)) {
        *out = (uint32_t)(c - f->heaps);
        return FL_OK;
    }
    int i = heap_find(f, stream, small);
    if (i < 0 && FL_UNLIKELY(f->n_retired))
        i = heap_adopt(f, stream, small);
    if (i >= 0) {
        *out = (uint32_t)i;
        f->last_heap[small] = &f->heaps[i];
        return FL_OK;
    }
    fl_status s = heap_new(f, stream, small, out);
    if (s == FL_OK)
        f->last_heap[small] = &f->heaps[*out];
    return s;
}

/* ---- physical pages ----------------------------------------------------------- */

/* The limit (or the capacity) in whole pages: the device owns the rule. */
static inline uint64_t limit_pages(const fx_policy *f) { return fli_dev_limit(f->base.dev) >> f->gran_log; }

static inline uint64_t creatable(const fx_policy *f)
{
    return f->max_pages > f->n_handles ? f->max_pages - f->n_handles : 0;
}

/* Mapped pages no live block touches (each heap counts its own). */
static uint64_t cached_pages(const fx_policy *f)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < f->n_heaps; i++)
        n += f->heaps[i].n_cached;
    return n;
}

/* Pages some live block touches. */
static inline uint64_t pinned_pages(const fx_policy *f)
{
    return f->n_handles - f->n_pool - f->n_cpool * CHUNK_PAGES - cached_pages(f) - f->dead_pages;
}

/* Cached pages with a handle of their own (reclaim_run unmaps them, a run in a row at
 * once); the other cached pages lie in mapped chunks, which are unmapped only whole. */
static inline uint64_t cached_singles(const fx_policy *f)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < f->n_heaps; i++)
        n += f->heaps[i].n_cached - f->heaps[i].n_chunk_cached;
    return n;
}

/* Live blocks touching page p. */
static inline uint32_t page_pins(const fx_heap *h, uint64_t p)
{
    return h->pages[p].refs + (uint32_t)fli_bit_get(h->covered, p);
}

/* Page p lies in a chunk mapped with one handle. */
static inline int in_chunk(const fx_heap *h, uint64_t p)
{
    return fli_bit_get(h->chunked, p >> CHUNK_LOG);
}

/* Pages of [a, b) that lie in mapped chunks: a bit per chunk, so a run of N pages costs
 * N/1024 words. */
static inline uint64_t chunked_pages(const fx_heap *h, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 0;
    uint64_t ca = a >> CHUNK_LOG, cb = (b - 1) >> CHUNK_LOG;
    if (ca == cb)
        return in_chunk(h, a) ? b - a : 0;
    return (in_chunk(h, a) ? ((ca + 1) << CHUNK_LOG) - a : 0) + (in_chunk(h, b - 1) ? b - (cb << CHUNK_LOG) : 0) +
           fli_bits_count(h->chunked, ca + 1, cb) * CHUNK_PAGES;
}

/* Chunk c of heap h is mapped and no live block touches it: reclaimable whole. */
static int chunk_idle(const fx_heap *h, uint64_t c)
{
    uint64_t p0 = c << CHUNK_LOG;
    if (!in_chunk(h, p0) || fli_bits_count(h->covered, p0, p0 + CHUNK_PAGES))
        return 0;
    for (uint64_t p = p0; p < p0 + CHUNK_PAGES; p++)
        if (h->pages[p].refs)
            return 0;
    return 1;
}

/* Mapped chunks no live block touches, counted (a scan: asked only when the other
 * sources of pages do not suffice, or to give memory back). */
static uint64_t idle_chunks(const fx_policy *f)
{
    uint64_t n = 0;
    uint64_t chunk_cached = 0;
    for (uint32_t i = 0; i < f->n_heaps; i++)
        chunk_cached += f->heaps[i].n_chunk_cached;
    if (chunk_cached < CHUNK_PAGES)
        return 0;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++)
        for (uint64_t c = 0; c < f->heaps[hi].n_pages >> CHUNK_LOG; c++)
            n += chunk_idle(&f->heaps[hi], c);
    return n;
}

/* Pages that unmapped ones can get without touching a live block: pooled handles, pages
 * still creatable, cached pages of their own, freed stitched blocks' pages, and chunks no
 * live block touches (counted only when the others fall short of `need`). */
static uint64_t pages_obtainable(const fx_policy *f, uint64_t need)
{
    uint64_t n = f->n_pool + f->n_cpool * CHUNK_PAGES + creatable(f) + cached_singles(f) + f->dead_pages;
    return n >= need ? n : n + idle_chunks(f) * CHUNK_PAGES;
}

static inline void page_map(fx_heap *h, uint64_t p, uint64_t handle)
{
    h->pages[p].handle = handle;
    fli_bit_set(h->mapped, p);
}

/* Forgets page p's mapping (and its marks); returns its handle. */
static inline uint64_t page_unmap(fx_policy *f, fx_heap *h, uint64_t p)
{
    uint64_t handle = h->pages[p].handle;
    f->n_no_access -= (h->pages[p].flags & PAGE_NO_ACCESS) != 0;
    h->pages[p].handle = 0;
    h->pages[p].flags = 0;
    fli_bit_clear(h->mapped, p);
    fli_bit_clear(h->recent, p);
    return handle;
}

/* Unmaps cached pages of their own (one must exist: cached_singles), up to `want`, and
 * puts their handles in the pool. The clock hand sweeps every heap's pages in address
 * order and spares pages cached since its last pass (second chance, close to
 * least-recently-used), so reclaim costs O(1) amortised and the hot paths keep no list of
 * cached pages: pinning and unpinning only count and mark. Pages of chunks are passed
 * over (reclaim_chunks). The pages the hand takes in a row in one heap go with one unmap
 * (the driver unmaps a range of whole mappings in one call, as NVIDIA's vectorAddMMAP
 * sample does; cuda.c falls back to one call each where a driver refuses); the run stops
 * at the first page the hand would not take (pinned, unmapped, in a chunk, or spared as
 * recent), where the hand resumes, so a run takes the same pages, in the same order, as
 * that many one-page reclaims. Callers loop until they have what they need. */
static fl_status reclaim_run(fx_policy *f, uint64_t want)
{
    FL_ASSERT(cached_singles(f) > 0 && want > 0);
    for (;;) {
        if (f->hand_heap >= f->n_heaps) {
            f->hand_heap = 0;
            f->hand_page = 0;
        }
        fx_heap *h = &f->heaps[f->hand_heap];
        if (f->hand_page >= h->n_pages) {
            f->hand_heap++;
            f->hand_page = 0;
            continue;
        }
        uint64_t p = f->hand_page++;
        if (!h->pages[p].handle || page_pins(h, p) != 0 || in_chunk(h, p))
            continue;
        if (fli_bit_get(h->recent, p)) {
            fli_bit_clear(h->recent, p);
            continue;
        }
        uint64_t q = p + 1;
        while (q - p < want && q < h->n_pages && h->pages[q].handle && page_pins(h, q) == 0 && !in_chunk(h, q) &&
               !fli_bit_get(h->recent, q))
            q++;
        fl_status s = fli_dev_unmap(f->base.dev, h->va + (p << f->gran_log), (q - p) << f->gran_log);
        if (s != FL_OK)
            return s;
        for (uint64_t r = p; r < q; r++) {
            h->n_cached--;
            f->pool[f->n_pool++] = page_unmap(f, h, r);
        }
        f->hand_page = q;
        return FL_OK;
    }
}

/* Unmaps up to `want` mapped chunks no live block touches (the caller synchronized) and
 * puts their handles in the chunk pool; *got says how many. Only under pressure or to
 * give memory back: a scan. */
static fl_status reclaim_chunks(fx_policy *f, uint64_t want, uint64_t *got)
{
    *got = 0;
    for (uint32_t hi = 0; hi < f->n_heaps && *got < want; hi++) {
        fx_heap *h = &f->heaps[hi];
        for (uint64_t c = 0; c < h->n_pages >> CHUNK_LOG && *got < want; c++) {
            if (!chunk_idle(h, c))
                continue;
            uint64_t p0 = c << CHUNK_LOG;
            fl_status s = fli_dev_unmap(f->base.dev, h->va + (p0 << f->gran_log), CHUNK_PAGES << f->gran_log);
            if (s != FL_OK)
                return s;
            uint64_t handle = h->pages[p0].handle;
            for (uint64_t p = p0; p < p0 + CHUNK_PAGES; p++)
                page_unmap(f, h, p);
            fli_bit_clear(h->chunked, c);
            h->n_cached -= CHUNK_PAGES;
            h->n_chunk_cached -= CHUNK_PAGES;
            f->n_chunk_pages -= CHUNK_PAGES;
            f->cpool[f->n_cpool++] = handle;
            ++*got;
        }
    }
    return FL_OK;
}

/* The pools must be able to hold every handle of their kind: grown before one more is
 * created. */
static fl_status pool_grow(uint64_t **pool, uint64_t *cap)
{
    uint64_t n = *cap * 2;
    if (fli_table_grow((void **)pool, sizeof **pool, *cap, n) != FL_OK)
        return fli_fail(FL_ERR_NOMEM, "fragless: host memory for %llu handles", (unsigned long long)n);
    *cap = n;
    return FL_OK;
}

/* Gives a pooled chunk handle back to the device: its memory then serves one-page
 * handles (created next) or is under the limit again. */
static fl_status release_pooled_chunk(fx_policy *f)
{
    fl_status s = fli_dev_release(f->base.dev, f->cpool[f->n_cpool - 1]);
    if (s != FL_OK)
        return s;
    f->n_cpool--;
    f->n_chunk_handles--;
    f->n_handles -= CHUNK_PAGES;
    return FL_OK;
}

/* A handle for one page of `want` the caller still has to map: the pool first (free),
 * then a new one while the limit allows (paid once, in warm-up), then the memory of a
 * pooled chunk, then freed stitched blocks' pages (after a sync), then cached pages
 * elsewhere (as many in a row as the caller still needs: reclaim_run) or a chunk no live
 * block touches (unmapped after a sync). */
static fl_status synchronize(fx_policy *f);
static void stitch_reap(fx_policy *f);

static fl_status take_handle(fx_policy *f, int *synced, uint64_t want, uint64_t *handle)
{
    for (;;) {
        if (f->n_pool) {
            *handle = f->pool[--f->n_pool];
            return FL_OK;
        }
        fl_status s;
        if (f->n_handles < f->max_pages) {
            uint64_t singles = f->n_handles - f->n_chunk_handles * CHUNK_PAGES;
            if (singles >= f->cap_pool && pool_grow(&f->pool, &f->cap_pool) != FL_OK)
                return FL_ERR_NOMEM;
            s = fli_dev_create(f->base.dev, f->gran, handle);
            if (s == FL_OK) {
                f->n_handles++;
                return FL_OK;
            }
            if (s != FL_ERR_OOM)
                return s;
            /* The device is fuller than our own count says (other users): stop creating. */
            f->max_pages = f->n_handles;
        }
        if (f->n_cpool) {
            if ((s = release_pooled_chunk(f)) != FL_OK)
                return s;
            continue;
        }
        if (f->dead_pages) {
            /* Freed stitched blocks give their pages to the pool once synchronized. */
            if (!*synced) {
                if ((s = synchronize(f)) != FL_OK)
                    return s;
                *synced = 1;
                f->base.retries++;
            }
            uint64_t before = f->dead_pages;
            stitch_reap(f);
            if (f->dead_pages < before)
                continue;
        }
        if (cached_singles(f) == 0 && idle_chunks(f) == 0)
            return fli_fail(FL_ERR_OOM, "fragless: no physical page left");
        if (!*synced) {
            /* Unmapping memory a kernel may still use is undefined: wait for the device. */
            if ((s = synchronize(f)) != FL_OK)
                return s;
            *synced = 1;
            f->base.retries++;
        }
        uint64_t got;
        if ((s = cached_singles(f) ? reclaim_run(f, want) : reclaim_chunks(f, 1, &got)) != FL_OK)
            return s;
    }
}

/* Whether page p's chunk can be mapped with one handle now: a large heap, every page of
 * the chunk unmapped, and a pooled chunk handle or room for a new one while the device
 * holds at most 1/2^CHUNK_SHARE_LOG of the limit (for this policy and any layer above it,
 * such as registrable's blocks). Past that, pages get handles of their
 * own, each reclaimable alone: a chunk goes back only when no live block touches it, so
 * the free pages of chunks that live blocks touch serve only blocks placed on them, and
 * this bounds them (a larger share cost gpt_varlen's min_capacity: ARCHITECTURE.md). */
static inline int chunk_room(const fx_policy *f, const fx_heap *h, uint64_t p)
{
    if (h->small || f->no_chunks)
        return 0;
    uint64_t c0 = p >> CHUNK_LOG << CHUNK_LOG;
    if (fli_bits_count(h->mapped, c0, c0 + CHUNK_PAGES))
        return 0;
    /* What the device holds for everyone on it (a registrable layer's blocks too). */
    uint64_t held = f->base.dev->counters.in_use >> f->gran_log;
    if (held < f->n_handles)
        held = f->n_handles;
    return f->n_cpool || held + CHUNK_PAGES <= f->max_pages >> CHUNK_SHARE_LOG;
}

/* Maps chunk c with one handle, pooled or created; its pages that no live block touches
 * become cached. A create the device refuses for want of memory stops chunks. */
static fl_status map_chunk(fx_policy *f, fx_heap *h, uint64_t c)
{
    uint64_t handle, p0 = c << CHUNK_LOG, bytes = CHUNK_PAGES << f->gran_log;
    fl_status s;
    if (f->n_cpool) {
        handle = f->cpool[--f->n_cpool];
    } else {
        if (f->n_chunk_handles >= f->cap_cpool && pool_grow(&f->cpool, &f->cap_cpool) != FL_OK)
            return FL_ERR_NOMEM;
        if ((s = fli_dev_create(f->base.dev, bytes, &handle)) != FL_OK) {
            f->no_chunks |= s == FL_ERR_OOM;
            return s;
        }
        f->n_chunk_handles++;
        f->n_handles += CHUNK_PAGES;
    }
    if ((s = fli_dev_map(f->base.dev, h->va + (p0 << f->gran_log), bytes, handle)) != FL_OK) {
        f->cpool[f->n_cpool++] = handle;
        return s;
    }
    /* A page is pinned through refs or covered, never both (pin_end): the covered ones
     * counted a word at a time, the mapped bits set so too. */
    uint64_t pinned = fli_bits_count(h->covered, p0, p0 + CHUNK_PAGES);
    for (uint64_t p = p0; p < p0 + CHUNK_PAGES; p++) {
        FL_ASSERT(!(h->pages[p].refs && fli_bit_get(h->covered, p)));
        h->pages[p].handle = handle;
        pinned += h->pages[p].refs != 0;
    }
    fli_bits_set(h->mapped, p0, p0 + CHUNK_PAGES);
    fli_bit_set(h->chunked, c);
    f->n_chunk_pages += CHUNK_PAGES;
    h->n_chunk_cached += CHUNK_PAGES - pinned;
    h->n_cached += CHUNK_PAGES - pinned;
    if (p0 + CHUNK_PAGES > h->top)
        h->top = p0 + CHUNK_PAGES;
    return FL_OK;
}

/* Read-write access for the mapped pages [first, end); on failure they are marked
 * PAGE_NO_ACCESS (set again before use), on success the marks go. */
static fl_status set_access_run(fx_policy *f, fx_heap *h, uint64_t first, uint64_t end)
{
    if (first >= end)
        return FL_OK;
    fl_status s = fli_dev_set_access(f->base.dev, h->va + (first << f->gran_log), (end - first) << f->gran_log);
    if (s == FL_OK && f->n_no_access == 0)
        return s; /* no marks to take off */
    for (uint64_t p = first; p < end; p++) {
        uint32_t was = h->pages[p].flags & PAGE_NO_ACCESS;
        h->pages[p].flags = s == FL_OK ? h->pages[p].flags & ~PAGE_NO_ACCESS : h->pages[p].flags | PAGE_NO_ACCESS;
        f->n_no_access += (uint64_t)((h->pages[p].flags & PAGE_NO_ACCESS) != 0) - (uint64_t)(was != 0);
    }
    return s;
}

/* Maps every unmapped page in [p0, p1] — a whole chunk where chunk_room allows, else a
 * page at a time — and sets access once per contiguous run of pages mapped now or left
 * without access. On failure the pages mapped so far stay mapped (they become cached
 * once refs are dropped). */
static fl_status map_pages(fx_policy *f, uint32_t hi, uint64_t p0, uint64_t p1)
{
    fx_heap *h = &f->heaps[hi];
    int synced = 0;
    uint64_t run = p0, p;
    fl_status s = FL_OK;
    for (p = p0; p <= p1; p++) {
        if (h->pages[p].handle) {
            if (h->pages[p].flags & PAGE_NO_ACCESS)
                continue; /* in the run: access is set again */
            if ((s = set_access_run(f, h, run, p)) != FL_OK)
                return s;
            run = p + 1;
            continue;
        }
        if (chunk_room(f, h, p)) {
            uint64_t c0 = p >> CHUNK_LOG << CHUNK_LOG;
            if ((s = map_chunk(f, h, p >> CHUNK_LOG)) == FL_OK) {
                /* The run goes on through the chunk: pages before p in it lie below p0
                 * (every page of it was unmapped), so then p is p0 and run too. */
                if (c0 < run)
                    run = c0;
                p = c0 + CHUNK_PAGES - 1;
                continue;
            }
            if (s != FL_ERR_OOM)
                break;
            s = FL_OK; /* refused for want of memory: pages of its own */
        }
        uint64_t handle;
        /* The pages of [p, p1] still unmapped (p among them): what a reclaim may take at
         * once. */
        if ((s = take_handle(f, &synced, p1 + 1 - p - fli_bits_count(h->mapped, p, p1 + 1), &handle)) != FL_OK)
            break;
        if ((s = fli_dev_map(f->base.dev, h->va + (p << f->gran_log), f->gran, handle)) != FL_OK) {
            f->pool[f->n_pool++] = handle;
            break;
        }
        page_map(h, p, handle);
    }
    /* Pages mapped before a failure get access too: they stay mapped, as cached pages,
     * below top (on success map_ahead raises it, and its caller tests top first). */
    if (s != FL_OK && p > h->top)
        h->top = p;
    fl_status s2 = set_access_run(f, h, run, p);
    return s != FL_OK ? s : s2;
}

/* When a heap's footprint grows past its top, map on to the next multiple of
 * GROW_PAGES (20 MiB of 2 MiB pages, PyTorch's large-pool page), GROW_SMALL_PAGES in a
 * small heap, with handles that cost no reclaim: growth then comes in a few steps
 * instead of a page at a time, and the pages ahead stay fungible (cached: reclaimable
 * like any other). Chunks, where mapped, already end on a multiple of CHUNK_PAGES. */
static void map_ahead(fx_policy *f, uint32_t hi, uint64_t p1)
{
    fx_heap *h = &f->heaps[hi];
    uint64_t step = h->small ? GROW_SMALL_PAGES : GROW_PAGES;
    uint64_t end = fli_div_up(p1 + 1, step) * step, p;
    if (end > h->n_pages && heap_grow_pages(h, f->gran_log, end) != FL_OK)
        return;
    for (p = p1 + 1; p < end; p++) {
        if (h->pages[p].handle)
            break;
        uint64_t handle;
        if (f->n_pool)
            handle = f->pool[--f->n_pool];
        else if (f->n_handles < f->max_pages &&
                 (f->n_handles - f->n_chunk_handles * CHUNK_PAGES < f->cap_pool ||
                  pool_grow(&f->pool, &f->cap_pool) == FL_OK) &&
                 fli_dev_create(f->base.dev, f->gran, &handle) == FL_OK)
            f->n_handles++;
        else
            break;
        if (fli_dev_map(f->base.dev, h->va + (p << f->gran_log), f->gran, handle) != FL_OK) {
            f->pool[f->n_pool++] = handle;
            break;
        }
        page_map(h, p, handle);
        h->n_cached++;
    }
    if (p > p1 + 1 && set_access_run(f, h, p1 + 1, p) != FL_OK) {
        /* Without access the pages are useless: give them back now where the unmap
         * works; a page whose unmap fails stays mapped and cached, marked for access. */
        for (uint64_t q = p1 + 1; q < p; q++) {
            if (fli_dev_unmap(f->base.dev, h->va + (q << f->gran_log), f->gran) != FL_OK)
                continue;
            h->n_cached--;
            f->pool[f->n_pool++] = page_unmap(f, h, q);
        }
    }
    if (p > h->top)
        h->top = p;
}

/* Counts a block that starts or ends on page p: returns 1 when the page must be mapped
 * for it; *no_access collects PAGE_NO_ACCESS of cached pages taken. */
static inline uint64_t pin_end(fx_heap *h, uint64_t p, uint32_t *no_access)
{
    fx_page *pg = &h->pages[p];
    FL_ASSERT(!fli_bit_get(h->covered, p)); /* the block has bytes here: no other block covers it */
    if (pg->refs++)
        return 0;
    if (!pg->handle)
        return 1;
    h->n_cached--;
    h->n_chunk_cached -= in_chunk(h, p);
    *no_access |= pg->flags & PAGE_NO_ACCESS;
    return 0;
}

/* pin() past the first page. */
static uint64_t pin_rest(fx_policy *f, fx_heap *h, uint64_t p0, uint64_t p1, uint32_t *no_access)
{
    uint64_t missing = pin_end(h, p1, no_access);
    if (p1 > p0 + 1) {
        /* The pages inside lay in a free range: nothing pinned them, and now the block
         * alone does. */
        /* Mostly all mapped already (a warm heap): counted only when not. */
        uint64_t inside = p1 - p0 - 1,
                 m = fli_bits_all(h->mapped, p0 + 1, p1) ? inside : fli_bits_count(h->mapped, p0 + 1, p1);
        FL_ASSERT(fli_bits_count(h->covered, p0 + 1, p1) == 0);
        fli_bits_set(h->covered, p0 + 1, p1);
        h->n_cached -= m;
        missing += inside - m;
        if (f->n_chunk_pages)
            h->n_chunk_cached -= chunked_pages(h, p0 + 1, p1);
        if (FL_UNLIKELY(f->n_no_access))
            for (uint64_t p = p0 + 1; p < p1; p++)
                *no_access |= h->pages[p].flags & PAGE_NO_ACCESS;
    }
    return missing;
}

/* Pins the pages [p0, p1] of a new block; returns how many of them are unmapped, and in
 * *no_access whether a cached one lacks access. Most blocks lie on one page. */
static inline uint64_t pin(fx_policy *f, fx_heap *h, uint64_t p0, uint64_t p1, uint32_t *no_access)
{
    uint64_t missing = pin_end(h, p0, no_access);
    return FL_LIKELY(p1 == p0) ? missing : missing + pin_rest(f, h, p0, p1, no_access);
}

static inline void unpin_end(fx_heap *h, uint64_t p)
{
    fx_page *pg = &h->pages[p];
    FL_ASSERT(pg->refs > 0); /* a live block touches it: pinned */
    if (--pg->refs == 0) {
        if (pg->handle) {
            h->n_cached++;
            h->n_chunk_cached += in_chunk(h, p);
        }
        fli_bit_set(h->recent, p);
    }
}

/* unpin() past the first page. */
static void unpin_rest(fx_policy *f, fx_heap *h, uint64_t p0, uint64_t p1, int all_mapped)
{
    unpin_end(h, p1);
    if (p1 > p0 + 1) {
        FL_ASSERT(fli_bits_count(h->covered, p0 + 1, p1) == p1 - p0 - 1);
        fli_bits_clear(h->covered, p0 + 1, p1);
        fli_bits_set(h->recent, p0 + 1, p1);
        /* All mapped while the block lived (all_mapped: a free), except after a failed
         * map (alloc_placed's undo): then counted. */
        FL_ASSERT(!all_mapped || fli_bits_count(h->mapped, p0 + 1, p1) == p1 - p0 - 1);
        h->n_cached += all_mapped ? p1 - p0 - 1 : fli_bits_count(h->mapped, p0 + 1, p1);
        if (f->n_chunk_pages)
            h->n_chunk_cached += chunked_pages(h, p0 + 1, p1);
    }
}

/* Drops a block's pins of [p0, p1] in heap h; pages left unused become cached. */
static inline void unpin_in(fx_policy *f, fx_heap *h, uint64_t p0, uint64_t p1, int all_mapped)
{
    FL_ASSERT(p0 <= p1 && p1 < h->n_pages);
    unpin_end(h, p0);
    if (FL_UNLIKELY(p1 != p0))
        unpin_rest(f, h, p0, p1, all_mapped);
}

static inline void unpin(fx_policy *f, uint32_t hi, uint64_t p0, uint64_t p1, int all_mapped)
{
    unpin_in(f, &f->heaps[hi], p0, p1, all_mapped);
}

/* ---- placement ------------------------------------------------------------------ */

/* Only asked of pages with free bytes, which no block covers: refs says it all. */
static inline int pinned(const fx_heap *h, uint64_t p)
{
    FL_ASSERT(p >= h->n_pages || !fli_bit_get(h->covered, p));
    return p < h->n_pages && h->pages[p].refs != 0;
}

/* Pages that placing [x, x + size) would newly pin. Pages strictly inside a free range
 * are never pinned, so only the two end pages need a look. */
static inline uint64_t new_pages(const fx_policy *f, const fx_heap *h, uint64_t x, uint64_t size)
{
    uint64_t p0 = x >> f->gran_log, p1 = (x + size - 1) >> f->gran_log;
    return p1 - p0 + 1 - (uint64_t)pinned(h, p0) - (uint64_t)(p1 != p0 && pinned(h, p1));
}

/* Whether a block of this size also counts the pages it touches (placement_cost). Blocks
 * of whole pages, in a heap where such blocks are most of the bytes: so that they start
 * on a page and their holes stay whole pages. Where they are a minority, aligning them
 * leaves slivers between odd-sized neighbours that cost more than it saves
 * (ARCHITECTURE.md has the figures). The same for a large heap's blocks of half a page, a
 * quarter, ...: kept inside one page, such blocks tile pages exactly, where one
 * straddling a boundary pins two pages, both partly empty for as long as it lives
 * (ARCHITECTURE.md). */
static inline int counts_touched(const fx_policy *f, const fx_heap *h, uint64_t size)
{
    if ((size & (f->gran - 1)) == 0)
        return 2 * h->whole_bytes >= h->bytes_asked;
    return !h->small && size < f->gran && (size & (size - 1)) == 0; /* the page is a power of two */
}

static inline uint64_t placement_cost(const fx_policy *f, const fx_heap *h, uint64_t x, uint64_t size, int touched)
{
    uint64_t cost = new_pages(f, h, x, size) << 32;
    if (touched)
        cost |= ((x + size - 1) >> f->gran_log) - (x >> f->gran_log) + 1;
    return cost;
}

/* Where in the free range to put the block: against its lower or its upper neighbour,
 * or at a page boundary near either end, whichever pins the fewest new pages (a free
 * range's partly used end pages are waste until something fills them) and, for blocks
 * of whole pages, then touches the fewest pages (one starting mid-page touches one more,
 * and leaves a hole straddling two partly used pages when it is freed). Ties keep the
 * lower end. */
static uint64_t choose_pad(const fx_policy *f, const fx_heap *h, const range_node *b, uint64_t size)
{
    uint64_t high = b->size - size;
    if (high == 0)
        return 0;
    uint64_t start = b->offset, g = f->gran, end_aligned = fli_align_down(start + b->size, g);
    /* The topmost free range has no upper neighbour: its high end is the end of the
     * reservation, where a block would only spread the footprint. */
    int top = b->next_phys == 0;
    uint64_t pads[3] = {
        fli_align_up(start, g) - start,                                /* page-aligned start */
        top ? 0 : high,
        !top && end_aligned >= start + size ? end_aligned - size - start : 0, /* aligned end */
    };
    /* Cost: new pages first, then all pages touched (what the block pins again each
     * time its hole is reused). */
    int touched = counts_touched(f, h, size);
    uint64_t best_pad = 0, best = placement_cost(f, h, start, size, touched);
    for (int i = 0; i < 3 && best; i++) {
        /* Pad 0 is the lower end, costed already (an aligned start, the topmost range's
         * high end, an aligned end past the range: all 0); only a lower cost wins. */
        if (pads[i] == 0 || pads[i] > high)
            continue;
        uint64_t c = placement_cost(f, h, start + pads[i], size, touched);
        if (c < best) {
            best = c;
            best_pad = pads[i];
        }
    }
    return best_pad;
}

static uint64_t unmapped_pages(const fx_policy *f, const fx_heap *h, uint64_t x, uint64_t size)
{
    uint64_t p0 = x >> f->gran_log, p1 = (x + size - 1) >> f->gran_log;
    uint64_t end = p1 + 1 < h->n_pages ? p1 + 1 : h->n_pages; /* pages past n_pages: unmapped */
    return p1 + 1 - p0 - (p0 < end ? fli_bits_count(h->mapped, p0, end) : 0);
}

/* Whether the limit leaves less than 1/2^slack_log of it above `pages` (the most pages
 * pinned so far, as one rule or another learns them). */
static inline int limit_within(const fx_policy *f, uint64_t pages, unsigned slack_log)
{
    return f->max_pages < pages + (f->max_pages >> slack_log);
}

/* lend_peak after a placement: the most pages pinned at once (room_above_peak). */
static void learn_lend_peak(fx_policy *f)
{
    uint64_t pinned = pinned_pages(f);
    if (pinned > f->lend_peak)
        f->lend_peak = pinned;
}

/* Whether the limit leaves room above the most pages pinned so far (lend_peak, kept after
 * every placement once the job has two streams): the gate of the rules that trade a page
 * or two for fewer device calls, lending and mapped runs. Near a job's min_capacity there
 * is none, and there blocks lent into other heaps' holes cost pages (fsdp rank 0's
 * min_capacity 1.0029 -> 1.0082 with the peak seen only under pressure), as did mapped
 * runs (pipeline rank 3 1.0089 -> 1.0108). */
static int room_above_peak(const fx_policy *f)
{
    return !limit_within(f, f->lend_peak, PRESSURE_SLACK_LOG);
}

/* peak_pinned: the most pages pinned at once, as seen under pressure (by
 * inner_positions_pay, and by every placement under pressure in a job of several
 * streams). */
static void learn_peak(fx_policy *f)
{
    uint64_t pinned_now = pinned_pages(f);
    if (pinned_now > f->peak_pinned)
        f->peak_pinned = pinned_now;
}

/* Whether the job runs near its limit: the limit leaves less than 1/2^PRESSURE_SLACK_LOG
 * of it above peak_pinned. */
static inline int near_limit(const fx_policy *f)
{
    return limit_within(f, f->peak_pinned, PRESSURE_SLACK_LOG);
}

/* Whether placements under pressure may give way to stitched blocks (STITCH_SLACK): the
 * most pages pinned so far as place_under_pressure learned them (where a place needed
 * unmapped pages). Counting the pages pinned now as well opened it earlier in a replay
 * and cost resnet_varbatch its gain (1.0079 -> 1.0143). */
static inline int stitch_near(const fx_policy *f)
{
    uint64_t peak = f->peak_pinned < f->max_pages ? f->peak_pinned : f->max_pages;
    return (f->max_pages - peak) * STITCH_SLACK < f->max_pages;
}

/* Whether inner positions of free ranges are worth a look (place_under_pressure): the
 * block spans more than a page and the limit leaves room above the most pages pinned so
 * far (learned online). Near its min_capacity a job has no such room, and there
 * splitting a free range in the middle cost pages (gpt_varlen 1.0129 -> 1.0145,
 * encoder_varlen 1.0123 -> 1.0189). Jobs of several streams look too: a stream's own
 * heap often holds a long run of cached pages inside one free range (FSDP's compute
 * stream between two all-gathers), and a block placed at that range's end took its
 * pages by reclaim from that very run, every step (ARCHITECTURE.md has the figures). */
static int inner_positions_pay(fx_policy *f, uint64_t size)
{
    learn_peak(f);
    return size > f->gran && !near_limit(f);
}

/* The tightest run of mapped pages inside one of the k candidate free ranges that holds
 * size bytes (a run's first and last pages may be a free range's end pages, which
 * neighbours pin: the run then starts or ends at the range's end); 1 with its range in
 * *n and the run's start as *pad, 0 if no run holds it. Pages at or past top were never
 * mapped. A scan of the mapped bits, a word at a time: only under pressure, for blocks of
 * EXTENT_MIN_PAGES pages and more. */
static int mapped_extent_fit(const fx_policy *f, const fx_heap *h, uint64_t size, const uint32_t *cand, size_t k,
                             uint32_t *n, uint64_t *pad)
{
    const range_node *nodes = h->range->nodes;
    uint64_t tightest = UINT64_MAX, lim = h->top < h->n_pages ? h->top : h->n_pages;
    int found = 0;
    for (size_t i = 0; i < k; i++) {
        const range_node *b = &nodes[cand[i]];
        uint64_t o = b->offset, end = o + b->size, p = o >> f->gran_log, p_end = ((end - 1) >> f->gran_log) + 1;
        if (p_end > lim)
            p_end = lim;
        while ((p = fli_bits_next(h->mapped, p, p_end, 1)) < p_end) {
            uint64_t q = fli_bits_next(h->mapped, p, p_end, 0);
            uint64_t xs = p << f->gran_log, xe = q << f->gran_log;
            if (xs < o)
                xs = o;
            if (xe > end)
                xe = end;
            if (xe - xs >= size && xe - xs < tightest) {
                tightest = xe - xs;
                *n = cand[i];
                *pad = xs - o;
                found = 1;
            }
            p = q;
        }
    }
    return found;
}

/* Whether the limit holds every heap's most bytes allocated at once, summed (the range
 * allocators' peak_used): an online upper estimate of the streams' floor (glossary), a
 * heap's lent blocks counted where they lie. Where it does, each stream can keep what
 * it holds at its peak and mapped runs keep a step's blocks where they were
 * (mapped_extent_fit); where it does not, memory must pass between streams anyway, and
 * lending a range where it lies (lend_instead) served better: FSDP's ranks at 1.1x lost
 * to the runs (ARCHITECTURE.md, "Long jobs"). */
static int peaks_fit(const fx_policy *f)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < f->n_heaps; i++)
        sum += f->heaps[i].range->peak_used;
    return sum <= f->max_pages << f->gran_log;
}

/* With no spare physical page left, a placement on unmapped pages costs a reclaim
 * (synchronize, unmap elsewhere, map here) now and, in a loop whose footprint exceeds
 * the capacity, again every step. So look at a bounded number of other free ranges
 * for the one needing the fewest unmapped pages (ties keep the first choice): first, for
 * a large block (EXTENT_MIN_PAGES pages and more) while the limit leaves room above the
 * most pages pinned so far (room_above_peak) and holds every heap's peak (peaks_fit), the
 * tightest run of mapped pages inside them that holds it, at the run's start
 * (mapped_extent_fit), even where that pins a page or two more than a range's end would;
 * then at their ends; then,
 * where inner_positions_pay, at page-aligned starts inside them (cached pages in the
 * middle of a free range, left by blocks of another lifetime: a model switched, a larger
 * shape gone) that pin no more new pages than the best end. Costs nothing while memory
 * is plentiful.
 * The mapped runs are PyTorch's expandable segments' choice (best fit among the free
 * blocks on mapped pages): a job whose largest blocks change size from step to step (a
 * pipeline's last stage: logits of 375-516 MB, two live at once) otherwise puts each one
 * where its pages must be moved, every step (ARCHITECTURE.md, "placement under
 * pressure", has the figures). */
static void place_under_pressure(fx_policy *f, const fx_heap *h, uint64_t size, uint32_t *n, uint64_t *pad)
{
    const range_node *nodes = h->range->nodes;
    uint64_t best = unmapped_pages(f, h, nodes[*n].offset + *pad, size);
    if (best == 0)
        return;
    uint32_t cand[PRESSURE_CANDIDATES];
    size_t k = range_candidates(h->range, size, cand, PRESSURE_CANDIDATES);
    if (size >= (EXTENT_MIN_PAGES << f->gran_log) && room_above_peak(f) && peaks_fit(f) &&
        mapped_extent_fit(f, h, size, cand, k, n, pad))
        return;
    for (size_t i = 0; i < k && best; i++) {
        const range_node *b = &nodes[cand[i]];
        uint64_t ends[2] = {0, b->size - size};
        for (int e = 0; e < 2; e++) {
            uint64_t u = unmapped_pages(f, h, b->offset + ends[e], size);
            if (u < best) {
                best = u;
                *n = cand[i];
                *pad = ends[e];
            }
        }
    }
    if (!best || !inner_positions_pay(f, size))
        return;
    uint64_t first_new = new_pages(f, h, nodes[*n].offset + *pad, size);
    /* Up to the pages ever mapped: past them every page is unmapped. */
    uint64_t g = f->gran, budget = PRESSURE_POSITIONS, top = h->top << f->gran_log;
    for (size_t i = 0; i < k && best && budget; i++) {
        const range_node *b = &nodes[cand[i]];
        uint64_t last = b->offset + b->size - size;
        for (uint64_t x = fli_align_up(b->offset, g); x <= last && x < top && best && budget; x += g, budget--) {
            uint64_t u = unmapped_pages(f, h, x, size);
            if (u < best && new_pages(f, h, x, size) <= first_new) {
                best = u;
                *n = cand[i];
                *pad = x - b->offset;
            }
        }
    }
}

/* Near the limit (near_limit) what decides whether a job fits is the pages its blocks pin,
 * not the device calls: there a placement that pins fewer new pages (a free range whose
 * end pages other blocks pin already) is taken over place_under_pressure's choice, among
 * the candidate free ranges at the position choose_pad picks in each, if it needs at most
 * one more unmapped page (a reclaim) per page it saves; ties at equal new pages go to
 * fewer unmapped pages. Far from the limit, nothing changes (ARCHITECTURE.md, "placement
 * near the limit", has the figures). */
static FL_NOINLINE void place_fewest_pins(fx_policy *f, const fx_heap *h, uint64_t size, uint32_t *n, uint64_t *pad)
{
    if (!near_limit(f))
        return;
    const range_node *nodes = h->range->nodes;
    uint64_t x0 = nodes[*n].offset + *pad;
    uint64_t n0 = new_pages(f, h, x0, size), u0 = unmapped_pages(f, h, x0, size), bn = n0, bu = u0;
    uint32_t cand[PRESSURE_CANDIDATES];
    size_t k = range_candidates(h->range, size, cand, PRESSURE_CANDIDATES);
    for (size_t i = 0; i < k; i++) {
        uint64_t p = choose_pad(f, h, &nodes[cand[i]], size), x = nodes[cand[i]].offset + p;
        uint64_t nn = new_pages(f, h, x, size), u = unmapped_pages(f, h, x, size);
        if (nn > n0 || u > u0 + (n0 - nn))
            continue;
        if (nn < bn || (nn == bn && u < bu)) {
            bn = nn;
            bu = u;
            *n = cand[i];
            *pad = p;
        }
    }
}

/* ---- the stack position ------------------------------------------------------------ */

/* A training step frees its large blocks mostly in reverse order of allocation (of the
 * large frees of the CPU training traces, 51-81% are of one of the two newest live blocks
 * of their stream: an op allocates its output, then its input goes; tools/lifo_share.py),
 * with sizes that vary from step to step. So a large block goes right above the large
 * block placed last in its heap, while that one lives, where the free range there leaves
 * less than a page over (a looser fit leaves a sliver between blocks of different
 * lifetimes) and the block pins at most one new page more than at the choice so far:
 * blocks allocated in a row lie in a row, and leave one free run when they go. Only with
 * one stream (with several, late calls at 1.05x rose by two thirds) and while spare pages
 * remain (under pressure, which pages are mapped counts more: place_under_pressure).
 * ARCHITECTURE.md, "stack position", has the figures. */
static inline void place_on_stack(const fx_policy *f, const fx_heap *h, uint64_t size, uint32_t *n, uint64_t *pad)
{
    const range_node *nodes = h->range->nodes;
    uint32_t t = h->stack_node;
    FL_ASSERT(!h->small && t < h->range->n_nodes);
    /* A small request small_into_large put here (TAG_GUEST) is no step's block. Jobs of
     * several streams first: then nothing is read. */
    if (f->streams > 1 || !t || nodes[t].used != RANGE_USED || nodes[t].offset != h->stack_off ||
        (nodes[t].tag & TAG_GUEST))
        return;
    /* Not the topmost free range: its high end is the end of the reservation, and a
     * block there only spreads the footprint. */
    uint32_t a = nodes[t].next_phys;
    if (!a || nodes[a].used != RANGE_FREE || nodes[a].size < size || nodes[a].size - size >= f->gran ||
        !nodes[a].next_phys)
        return;
    if (new_pages(f, h, nodes[a].offset, size) > new_pages(f, h, nodes[*n].offset + *pad, size) + 1)
        return;
    *n = a;
    *pad = 0;
}

/* ---- quick lists ------------------------------------------------------------------- */

/* The short ways of an allocation and a free (fx_alloc, fx_free and their stream-local
 * forms): a few stores, no page check or pin walk. */

/* The last block freed onto rsize's quick list (rsize <= QUICK_MAX), for a request of
 * size, when it lies on one page other live blocks pin (so mapped and accessible); 0:
 * not this case, nothing changed. */
static inline int quick_take(const fx_policy *f, fx_heap *h, uint64_t size, uint64_t rsize, uint64_t *addr)
{
    fx_bin *bin = &h->bins[(rsize >> 9) - 1];
    uint32_t n = bin->n;
    if (!n)
        return 0;
    range_node *b = &h->range->nodes[bin->node[n - 1]];
    uint64_t off = b->offset;
    fx_page *pg = &h->pages[off >> f->gran_log];
    if (FL_UNLIKELY(off >> f->gran_log != (off + rsize - 1) >> f->gran_log || !pg->refs))
        return 0;
    FL_ASSERT(b->used == RANGE_HELD && b->size == rsize && pg->handle && !(pg->flags & PAGE_NO_ACCESS));
    bin->n = n - 1;
    pg->refs++;
    b->used = RANGE_USED;
    b->tag = (uint16_t)(rsize - size);
    h->held_bytes -= rsize;
    *addr = h->va + off;
    return 1;
}

/* Freed block v (size bytes at off) onto its quick list, when it is small enough, its
 * heap's own (not lent here, TAG_FOREIGN: its range waits for a synchronize, defer_range;
 * on pages of 64 KiB a lent block can be this small) and not a guest (TAG_GUEST: no
 * request of this heap would take it), the list has room and its page stays pinned by
 * other blocks; 0: not this case, nothing changed. */
static inline int quick_put(const fx_policy *f, fx_heap *h, uint32_t v, uint64_t off, uint64_t size)
{
    if (size > QUICK_MAX || (h->range->nodes[v].tag & (TAG_GUEST | TAG_FOREIGN)))
        return 0;
    fx_bin *bin = &h->bins[(size >> 9) - 1];
    fx_page *pg = &h->pages[off >> f->gran_log];
    if (FL_UNLIKELY(bin->n >= QUICK_CAP || pg->refs <= 1 || (off & (f->gran - 1)) + size > f->gran))
        return 0;
    h->range->nodes[v].used = RANGE_HELD;
    bin->node[bin->n++] = v;
    h->held_bytes += size;
    pg->refs--;
    return 1;
}

/* ---- the index of block starts ------------------------------------------------------ */

/* The node of the used or held block that starts at off (on one of the n_pages pages),
 * 0 if none. */
static inline uint32_t index_find(const fx_heap *h, uint64_t off)
{
    const range_node *nodes = h->range->nodes;
    uint32_t v = h->starts[off >> h->win_log];
    /* Nodes tile the heap: the walk stops at the node that starts at off or past it. */
    while (v && nodes[v].offset < off)
        v = nodes[v].next_phys;
    return v && nodes[v].offset == off && nodes[v].used != RANGE_FREE ? v : 0;
}

/* Enters new block n. */
static inline void index_add(fx_heap *h, uint32_t n)
{
    const range_node *nodes = h->range->nodes;
    uint64_t i = nodes[n].offset >> h->win_log;
    uint32_t first = h->starts[i];
    if (FL_LIKELY(!first) || nodes[first].offset > nodes[n].offset)
        h->starts[i] = n;
}

/* Returns used block n to the range allocator and drops it from the index of starts. */
static inline uint64_t heap_release(fx_heap *h, uint32_t n)
{
    const range_node *nodes = h->range->nodes;
    uint64_t i = nodes[n].offset >> h->win_log;
    if (h->starts[i] == n) {
        /* The next block in the window, past at most one free range, is first now. */
        uint32_t m = nodes[n].next_phys;
        if (m && nodes[m].used == RANGE_FREE)
            m = nodes[m].next_phys;
        h->starts[i] = m && nodes[m].offset >> h->win_log == i ? m : 0;
    }
    h->dirty = 1; /* its stream's work may still use the range: no lending before a sync */
    return range_release(h->range, n);
}

/* Undoes the placement of a block that could not be backed: a block from a quick list
 * goes back on it, a new one back to the range allocator (indexed: index_add saw it;
 * before that, its window may lie past the index's tables, which growing them failed). */
static void give_back(fx_heap *h, uint32_t held, uint32_t node, uint64_t size, int indexed)
{
    if (held) {
        h->range->nodes[held].used = RANGE_HELD;
        h->bins[(size >> 9) - 1].node[h->bins[(size >> 9) - 1].n++] = held;
        h->held_bytes += size;
    } else if (indexed) {
        heap_release(h, node);
    } else {
        range_release(h->range, node);
    }
}

/* Returns every block on the quick lists to the range allocator. */
static void flush_bins(fx_heap *h)
{
    for (int b = 0; b < QUICK_BINS; b++) {
        while (h->bins[b].n) {
            uint32_t n = h->bins[b].node[--h->bins[b].n];
            h->range->nodes[n].used = RANGE_USED;
            h->held_bytes -= heap_release(h, n);
        }
    }
}

/* Pages [p0, p1] are tracked, mapped and accessible: pinning them needs no device call. */
static inline int pages_ready(const fx_policy *f, const fx_heap *h, uint64_t p0, uint64_t p1)
{
    if (p1 >= h->n_pages || !h->pages[p0].handle || !h->pages[p1].handle ||
        !fli_bits_all(h->mapped, p0 + 1, p1))
        return 0;
    if (FL_UNLIKELY(f->n_no_access))
        for (uint64_t p = p0; p <= p1; p++)
            if (h->pages[p].flags & PAGE_NO_ACCESS)
                return 0;
    return 1;
}

/* ---- lending: one stream's block on another stream's mapped pages ------------------ */

/* Under pressure a stream whose heap lacks mapped pages would take them from another
 * stream's heap by reclaim: synchronize, unmap there, map here (four device calls per
 * run of pages, every step of a multi-stream loop whose streams take turns at the
 * memory). Instead its block may be placed in the other heap's free range whose pages
 * are all mapped already: after a synchronize (none when that heap gave no range back
 * since the last one) no work of the owner's stream can use that range any more. The
 * block is then the lender heap's range node, marked TAG_FOREIGN, its stream in
 * f->foreign. Freed, its range waits (deferred, allocated and unpinned: its pages may be
 * reclaimed like any cached page, which synchronizes first) until the next synchronize,
 * since the borrower's work may still use it and the owner's stream would not wait.
 * Only blocks of a page or more in large heaps (smaller ones come back at once to their
 * stream, which a lent one's wait would deny it: test_preload), and small blocks of
 * 1/2^SMALL_LEND_LOG page or more where that saves a page of their own small heap (the
 * quick lists never see a lent block); a single-stream job never lends. */

static fl_status defer_grow(fx_heap *h)
{
    uint32_t cap = h->cap_deferred ? 2 * h->cap_deferred : 16;
    uint32_t *d = realloc(h->deferred, cap * sizeof *d);
    if (!d)
        return fli_fail(FL_ERR_NOMEM, "fragless: host memory for lent ranges");
    h->deferred = d;
    h->cap_deferred = cap;
    return FL_OK;
}

/* A lent block is freed: its range waits for the next synchronize (room for it was made
 * when it was lent). */
static void defer_range(fx_policy *f, fx_heap *h, uint32_t v)
{
    range_node *b = &h->range->nodes[v];
    FL_ASSERT(h->n_lent_here > 0 && h->n_deferred < h->cap_deferred);
    h->n_lent_here--;
    fli_map_remove(&f->foreign, h->va + b->offset, NULL);
    b->used = RANGE_HELD;
    b->tag &= (uint16_t)~TAG_FOREIGN;
    h->deferred[h->n_deferred++] = v;
    h->deferred_bytes += b->size;
}

static int any_deferred(const fx_policy *f)
{
    for (uint32_t hi = 0; hi < f->n_heaps; hi++)
        if (f->heaps[hi].n_deferred)
            return 1;
    return 0;
}

/* After a synchronize: every stream's work so far is done; the waiting ranges go back,
 * every free range may be lent, and freed stitched blocks may be unmapped (stitch_reap,
 * where their pages are wanted). */
static void synced_now(fx_policy *f)
{
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        fx_heap *h = &f->heaps[hi];
        while (h->n_deferred) {
            uint32_t v = h->deferred[--h->n_deferred];
            h->range->nodes[v].used = RANGE_USED;
            h->deferred_bytes -= heap_release(h, v);
        }
        h->dirty = 0;
    }
    for (uint32_t i = 0; i < f->n_stitches && f->n_dead; i++)
        f->stitches[i].quiet = f->stitches[i].dead;
}

static fl_status synchronize(fx_policy *f)
{
    fl_status s = fli_dev_synchronize(f->base.dev);
    if (s == FL_OK)
        synced_now(f);
    return s;
}

/* ---- stitched blocks --------------------------------------------------------------- */

/* Near the limit, a block that needs k new pages wherever it goes in its heap may find
 * only k - 1 obtainable while the pages live blocks pin hold free bytes, in pieces no
 * block of its size fits. A page's free end (its last bytes) can hold a block's first
 * bytes, and a page's free start its last bytes, if the block lives elsewhere: CUDA maps
 * one handle at several addresses (the programming guide's "virtual aliasing"). So the
 * block gets a reservation of its own, with the page lending its first bytes mapped
 * again at the start, pages of its own in the middle and the page lending its last bytes
 * at the end; the lent parts are held in their heaps by range nodes (TAG_STITCH), which
 * pin their pages as a block does. No byte is reachable through two addresses that two
 * blocks use. Only pages of the block's own stream lend (its work on their free bytes is
 * ordered before the block's), only pages with a handle of their own (a chunk's handle
 * would be mapped whole), and only when the ordinary place fails for want of pages (the
 * last resort) or, very near the limit, would pin more new pages (stitch_near): a
 * stitched block pins up to two pages fewer. Freed, its lent parts go back at once (the same stream
 * reuses them in order) and it stays mapped, dead: a request of its size takes it back
 * where its ends are free again (stitch_revive), and its mappings go where its pages are
 * wanted, once a synchronize has passed (a kernel may still use them: stitch_reap). */

/* Page p of heap h can lend a part: mapped with a handle of its own, accessible. */
static inline int page_lends(const fx_heap *h, uint64_t p)
{
    return p < h->n_pages && h->pages[p].handle && !in_chunk(h, p) && !(h->pages[p].flags & PAGE_NO_ACCESS);
}

typedef struct fx_end {
    uint64_t bytes, page;
    uint32_t hi;
} fx_end;

/* The largest free end of a page (*head) and the two largest free starts of pages in
 * different pages (tail[0] >= tail[1]) in stream's heaps, after their quick lists go
 * back to the range allocator (flush: the last resort; placement under pressure leaves
 * them). A free range [a, e) that crosses the end of a's page
 * frees that page's end; one that crosses the start of e's last page frees its start. */
static void stitch_ends(fx_policy *f, uint64_t stream, int flush, fx_end *head, fx_end tail[2])
{
    uint64_t g = f->gran;
    unsigned gl = f->gran_log;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        fx_heap *h = &f->heaps[hi];
        if (h->stream != stream || h->retired)
            continue;
        if (flush)
            flush_bins(h);
        uint64_t top = h->top << gl;
        for (uint32_t n = h->range->head; n; n = h->range->nodes[n].next_phys) {
            const range_node *b = &h->range->nodes[n];
            if (b->offset >= top)
                break;
            if (b->used != RANGE_FREE)
                continue;
            uint64_t a = b->offset, e = b->offset + b->size, pa = a >> gl, pe = (e - 1) >> gl;
            if ((a & (g - 1)) && e >= (pa + 1) << gl && ((pa + 1) << gl) - a > head->bytes && page_lends(h, pa))
                *head = (fx_end){((pa + 1) << gl) - a, pa, hi};
            uint64_t t = e - (pe << gl);
            if ((e & (g - 1)) && a <= pe << gl && t > tail[1].bytes && page_lends(h, pe)) {
                if (t > tail[0].bytes) {
                    tail[1] = tail[0];
                    tail[0] = (fx_end){t, pe, hi};
                } else {
                    tail[1] = (fx_end){t, pe, hi};
                }
            }
        }
    }
}

/* The free range node of heap h that holds [off, off + size), 0 if none (a walk: only
 * stitched blocks ask). */
static uint32_t free_node_at(const fx_heap *h, uint64_t off, uint64_t size)
{
    for (uint32_t n = h->range->head; n; n = h->range->nodes[n].next_phys) {
        const range_node *b = &h->range->nodes[n];
        if (off >= b->offset + b->size)
            continue;
        return b->used == RANGE_FREE && off >= b->offset && off + size <= b->offset + b->size ? n : 0;
    }
    return 0;
}

/* Holds [off, off + size) of heap hi, free, for a stitched block: *node, pinned. 0 if
 * the range is not free. */
static int stitch_hold(fx_policy *f, uint32_t hi, uint64_t off, uint64_t size, uint32_t *node)
{
    fx_heap *h = &f->heaps[hi];
    uint32_t n = free_node_at(h, off, size);
    if (!n || range_take(h->range, n, off - h->range->nodes[n].offset, size, node) != FL_OK)
        return 0;
    h->range->nodes[*node].tag = TAG_STITCH;
    h->range->nodes[*node].used = RANGE_HELD;
    index_add(h, *node);
    uint32_t no_access = 0;
    uint64_t missing = pin(f, h, off >> f->gran_log, (off + size - 1) >> f->gran_log, &no_access);
    FL_ASSERT(!missing && !no_access); /* page_lends */
    (void)missing;
    return 1;
}

/* Holds end k of stitched block st, [off, off + size) of heap hi, and records where it
 * lies; 0, nothing changed, if the range is not free. */
static int stitch_lend(fx_policy *f, fx_stitch *st, int k, uint32_t hi, uint64_t off, uint64_t size)
{
    if (!stitch_hold(f, hi, off, size, &st->end_node[k]))
        return 0;
    st->lent_heap[k] = hi;
    st->lent_off[k] = off;
    st->lent_size[k] = size;
    st->lent_handle[k] = f->heaps[hi].pages[off >> f->gran_log].handle;
    return 1;
}

/* Gives back the lent parts of stitched block st held so far: its ends below `ends`. */
static void stitch_unhold(fx_policy *f, const fx_stitch *st, int ends)
{
    for (int k = 0; k < ends; k++) {
        if (st->lent_heap[k] == STITCH_NONE)
            continue;
        fx_heap *h = &f->heaps[st->lent_heap[k]];
        uint64_t p = h->range->nodes[st->end_node[k]].offset >> f->gran_log;
        h->range->nodes[st->end_node[k]].used = RANGE_USED; /* as flush_bins does */
        heap_release(h, st->end_node[k]);
        unpin_in(f, h, p, p, 1);
    }
}

/* Undoes a stitched block's mappings and reservation, and puts its middle handles in the
 * pool. On a failed call it stops where it is, its progress kept in st (mapped,
 * reserved), for a later try. */
static fl_status stitch_unmap(fx_policy *f, fx_stitch *st)
{
    fl_status s;
    if (st->mapped > 1 && st->mapped == st->pages) {
        /* One call for the whole row (reclaim_run) */
        if ((s = fli_dev_unmap(f->base.dev, st->va, st->pages << f->gran_log)) != FL_OK)
            return s;
        st->mapped = 0;
    }
    for (; st->mapped; st->mapped--)
        if ((s = fli_dev_unmap(f->base.dev, st->va + ((st->mapped - 1) << f->gran_log), f->gran)) != FL_OK)
            return s;
    if (st->reserved) {
        if ((s = fli_dev_addr_free(f->base.dev, st->va, st->pages << f->gran_log)) != FL_OK)
            return s;
        st->reserved = 0;
    }
    for (uint64_t i = 0; i < st->n_handles; i++)
        f->pool[f->n_pool++] = st->handles[i];
    f->stitch_pages -= st->n_handles;
    free(st->handles);
    st->handles = NULL;
    st->n_handles = 0;
    return FL_OK;
}

/* The dead stitched blocks that a synchronize has passed since their free (quiet) are
 * unmapped and their pages pooled. One whose device calls fail stays, for the next. */
static void stitch_reap(fx_policy *f)
{
    for (uint32_t i = 0; i < f->n_stitches;) {
        fx_stitch *st = &f->stitches[i];
        uint64_t pages = st->n_handles;
        if (!st->quiet || stitch_unmap(f, st) != FL_OK) {
            i++;
            continue;
        }
        f->dead_pages -= pages;
        f->n_dead--;
        f->stitches[i] = f->stitches[--f->n_stitches];
    }
}

/* A stitched block that was freed or could not be made: dead, its lent parts given back
 * (the caller did), its mappings undone where its pages are wanted (stitch_reap). */
static void stitch_bury(fx_policy *f, fx_stitch *st)
{
    st->dead = 1;
    st->quiet = 0;
    f->n_dead++;
    f->dead_pages += st->n_handles;
}

/* The live stitched block at addr, NULL if none. */
static fx_stitch *stitch_find(const fx_policy *f, uint64_t addr)
{
    for (uint32_t i = 0; i < f->n_stitches; i++)
        if (f->stitches[i].addr == addr && !f->stitches[i].dead)
            return &f->stitches[i];
    return NULL;
}

/* A dead stitched block of rsize bytes of stream, taken back as it is where its ends'
 * ranges are free again on the same pages with the same handles (a step that frees and
 * asks again: no device call) and it newly pins fewer than `below` pages: 1 with *addr;
 * 0, nothing changed; -1, it held an end and then failed (stitch_alloc's -1). */
static int stitch_revive(fx_policy *f, uint64_t stream, uint64_t size, uint64_t rsize, uint64_t *addr,
                         uint64_t below)
{
    for (uint32_t i = 0; i < f->n_stitches; i++) {
        fx_stitch *st = &f->stitches[i];
        /* addr 0: a stitch that failed and could not be undone, never a block. */
        if (!st->dead || !st->addr || st->size != rsize || st->stream != stream || st->mapped != st->pages)
            continue;
        int ok = 1;
        uint64_t pins = 0;
        for (int k = 0; k < 2 && ok; k++) {
            if (st->lent_heap[k] == STITCH_NONE)
                continue;
            const fx_heap *h = &f->heaps[st->lent_heap[k]];
            uint64_t p = st->lent_off[k] >> f->gran_log;
            ok = !h->retired && h->stream == stream && page_lends(h, p) && h->pages[p].handle == st->lent_handle[k] &&
                 free_node_at(h, st->lent_off[k], st->lent_size[k]) != 0;
            pins += ok && !pinned(h, p);
        }
        if (!ok || pins >= below)
            continue;
        for (int k = 0; k < 2; k++) {
            if (st->lent_heap[k] == STITCH_NONE)
                continue;
            if (!stitch_hold(f, st->lent_heap[k], st->lent_off[k], st->lent_size[k], &st->end_node[k])) {
                stitch_unhold(f, st, k);
                return -1;
            }
        }
        st->dead = st->quiet = 0;
        st->req = size;
        f->n_dead--;
        f->dead_pages -= st->n_handles;
        f->base.allocated += rsize;
        f->base.num_allocs++;
        *addr = st->addr;
        return 1;
    }
    return 0;
}

/* A stitched block of rsize bytes for the stream of heap hi (where the ordinary way
 * placed it: the stream's own heap, or its large heap for a small request; its stream
 * taken from there, so that alloc_placed keeps no register for it), if it newly pins
 * fewer than `below` pages (UINT64_MAX: the last resort, any number). 1 with *addr; 0
 * with nothing changed (what it would need is not there); -1 when it held its ends and
 * then failed (a device call, or the pages): the ends are given back, but the heaps'
 * range nodes may be others than before. */
static FL_NOINLINE int stitch_alloc(fx_policy *f, uint32_t hi, uint64_t size, uint64_t rsize, uint64_t *addr,
                                    uint64_t below)
{
    uint64_t stream = f->heaps[hi].stream;
    uint64_t g = f->gran;
    unsigned gl = f->gran_log;
    int revived = f->n_dead ? stitch_revive(f, stream, size, rsize, addr, below) : 0;
    if (revived)
        return revived;
    if (f->n_stitches == f->cap_stitches) {
        uint32_t cap = f->cap_stitches ? f->cap_stitches * 2 : 8;
        fx_stitch *t = realloc(f->stitches, cap * sizeof *t);
        if (!t)
            return 0;
        f->stitches = t;
        f->cap_stitches = cap;
    }
    fx_end head = {0, 0, 0}, tail[2] = {{0, 0, 0}, {0, 0, 0}};
    stitch_ends(f, stream, below == UINT64_MAX, &head, tail);
    const fx_end *t = tail[0].bytes && head.bytes && tail[0].hi == head.hi && tail[0].page == head.page ? &tail[1]
                                                                                                       : &tail[0];
    /* The first bytes on the lending page's end, whole pages, the last bytes on the
     * other's start where they fit (else one more page of its own). */
    uint64_t hs = head.bytes < rsize ? head.bytes : rsize, rest = rsize - hs, ts = 0;
    uint64_t m = (rest + g - 1) >> gl;
    if (rest && t->bytes >= rest - ((m - 1) << gl)) {
        ts = rest - ((m - 1) << gl);
        m--;
    }
    if (!hs && !ts)
        return 0;
    /* The pages it pins anew: its own, and an end's page that no live block pins yet. */
    if (below != UINT64_MAX &&
        m + (hs && !pinned(&f->heaps[head.hi], head.page)) + (ts && !pinned(&f->heaps[t->hi], t->page)) >= below)
        return 0;
    fx_stitch st = {.size = rsize, .req = size, .stream = stream, .pages = (hs != 0) + m + (ts != 0),
                    .lent_heap = {STITCH_NONE, STITCH_NONE}};
    if (hs && !stitch_lend(f, &st, 0, head.hi, ((head.page + 1) << gl) - hs, hs))
        return 0;
    if (ts && !stitch_lend(f, &st, 1, t->hi, t->page << gl, ts)) {
        stitch_unhold(f, &st, 1);
        return -1;
    }
    /* The pages it still needs, its ends now pinned (they may have been cached). */
    if (m > pages_obtainable(f, m) || (m && !(st.handles = malloc(m * sizeof *st.handles)))) {
        stitch_unhold(f, &st, 2);
        return -1;
    }
    int synced = 0;
    fl_status s = FL_OK;
    while (st.n_handles < m && s == FL_OK)
        if ((s = take_handle(f, &synced, m - st.n_handles, &st.handles[st.n_handles])) == FL_OK) {
            st.n_handles++;
            f->stitch_pages++;
        }
    if (s == FL_OK && (s = fli_dev_reserve(f->base.dev, st.pages << gl, &st.va)) == FL_OK)
        st.reserved = 1;
    for (; s == FL_OK && st.mapped < st.pages; st.mapped++) {
        uint64_t i = st.mapped;
        uint64_t handle = i == 0 && hs   ? f->heaps[head.hi].pages[head.page].handle
                          : i == st.pages - 1 && ts ? f->heaps[t->hi].pages[t->page].handle
                                                    : st.handles[i - (hs != 0)];
        if ((s = fli_dev_map(f->base.dev, st.va + (i << gl), g, handle)) != FL_OK)
            break;
    }
    if (s == FL_OK)
        s = fli_dev_set_access(f->base.dev, st.va, st.pages << gl);
    if (s != FL_OK) {
        /* Nothing used it: undone without a synchronize; what a failed call leaves waits,
         * dead, for the next try. */
        stitch_unhold(f, &st, 2);
        if (stitch_unmap(f, &st) != FL_OK) {
            stitch_bury(f, &st);
            st.quiet = 1; /* nothing used it */
            st.lent_heap[0] = st.lent_heap[1] = STITCH_NONE;
            f->stitches[f->n_stitches++] = st;
        }
        return -1;
    }
    st.addr = st.va + (hs ? g - hs : 0);
    f->stitches[f->n_stitches++] = st;
    f->base.allocated += rsize;
    f->base.num_allocs++;
    *addr = st.addr;
    return 1;
}

/* Frees stitched block st (live). */
static void stitch_free(fx_policy *f, fx_stitch *st)
{
    stitch_unhold(f, st, 2);
    stitch_bury(f, st);
    f->base.allocated -= st->size;
    f->base.num_frees++;
}

/* ---- small requests in the large heap (guests) ------------------------------------ */

/* Where a small request of size bytes from heap h would go in its stream's large heap: at
 * an end of one of the large heap's candidate free ranges whose pages are mapped and
 * accessible (pages_ready), the one pinning the fewest new pages (the first, at a tie),
 * if it pins at most max_pins. 1 with the large heap in *hi, the node and the pad; 0,
 * nothing written, if none (small_into_large, small_onto_pinned). */
static int large_heap_place(const fx_policy *f, const fx_heap *h, uint64_t size, uint64_t max_pins, uint32_t *hi,
                            uint32_t *n, uint64_t *pad)
{
    int li = heap_find(f, h->stream, 0);
    if (li < 0)
        return 0;
    const fx_heap *lh = &f->heaps[li];
    uint32_t cand[PRESSURE_CANDIDATES], best_n = 0;
    uint64_t best_new = UINT64_MAX, best_pad = 0;
    size_t k = range_candidates(lh->range, size, cand, PRESSURE_CANDIDATES);
    for (size_t i = 0; i < k && best_new; i++) {
        const range_node *b = &lh->range->nodes[cand[i]];
        uint64_t ends[2] = {0, b->size - size};
        for (int e = 0; e < 2; e++) {
            uint64_t x = b->offset + ends[e], nn;
            if (pages_ready(f, lh, x >> f->gran_log, (x + size - 1) >> f->gran_log) &&
                (nn = new_pages(f, lh, x, size)) < best_new) {
                best_new = nn;
                best_n = cand[i];
                best_pad = ends[e];
            }
        }
    }
    if (!best_n || best_new > max_pins)
        return 0;
    *hi = (uint32_t)li;
    *n = best_n;
    *pad = best_pad;
    return 1;
}

/* A small request moved from heap `from` to its stream's large heap hi: its bytes count
 * there, and it is tagged TAG_GUEST (its free returns it to the range allocator, not to a
 * quick list the large heap never takes from). */
static inline fx_heap *guest_heap(fx_policy *f, fx_heap *from, uint32_t hi, uint64_t rsize, uint32_t *guest)
{
    from->bytes_asked -= rsize;
    f->heaps[hi].bytes_asked += rsize;
    *guest = TAG_GUEST;
    return &f->heaps[hi];
}

/* ---- approaching the limit (jobs of several streams) ------------------------------- */

/* Whether a job of several streams approaches its limit before any placement has run
 * under pressure: the most pages pinned so far (lend_peak, kept at every placement) come
 * within 1/2^APPROACH_SLACK_LOG of the limit, and peak_pinned, learned at every
 * placement under pressure in such a job (lend_instead), is still 0. A pipeline stage's
 * footprint grows with the longest micro-batches, so the step that needs most may be the
 * first to meet the limit: the near-limit rules (near_limit, learned under pressure)
 * act only at its failing allocation, when the layout that fails is already made. Once
 * pressure has come, those rules decide. A wider window (1/8) moved ddp rank 2's late
 * calls at 1.05x peak live (211 -> 826): ARCHITECTURE.md, "small blocks onto pinned
 * pages", has the figures. */
static inline int approaching_limit(const fx_policy *f)
{
    return f->streams > 1 && f->peak_pinned == 0 && limit_within(f, f->lend_peak, APPROACH_SLACK_LOG);
}

/* While a job of several streams approaches its limit (approaching_limit), a small
 * request whose own heap's placement would pin a new page goes instead into its stream's
 * large heap where it pins none: at a free range's end whose page live blocks pin
 * already (a hole between large blocks, partly used). A stage's small heap holds a few
 * blocks of just under the small limit per micro-batch (pipeline rank 1: 0.21-0.24 MiB),
 * and one that does not fit the page they share pins a second page for the step's
 * peak. Tagged TAG_GUEST, as small_into_large's (guest_heap). *hi, *n, *pad: the large
 * heap's place, when 1. */
static FL_NOINLINE int small_onto_pinned(const fx_policy *f, const fx_heap *h, uint64_t size, uint32_t *hi,
                                         uint32_t *n, uint64_t *pad)
{
    return approaching_limit(f) && new_pages(f, h, h->range->nodes[*n].offset + *pad, size) &&
           large_heap_place(f, h, size, 0, hi, n, pad);
}

/* A small request under pressure whose own heap would need a page by reclaim (a
 * synchronize, an unmap elsewhere, a map and an access call, and in a loop whose small
 * blocks creep past the footprint of earlier steps, again each step) goes into its
 * stream's large heap instead, at the end of a free range whose pages are mapped, the
 * one pinning the fewest new pages: if there is one, if the job has one stream, and if
 * the limit leaves room above the most pages pinned so far (not near_limit, learned
 * online). Near a job's min_capacity there is no such room, and there small
 * blocks in the large heap's ranges cost pages (resnet_varbatch 1.0174 -> 1.0333); in a
 * job of several streams the large heaps' mapped pages are what lending places other
 * streams' blocks on (ddp rank 0: 341 -> 928 late calls at 1.05x). At 1.05x peak live
 * it took kvcache_generate's, segment_multiscale's and serve_switch's late calls from
 * 4, 12 and 12 to 0 (ARCHITECTURE.md). Such a block is tagged TAG_GUEST (guest_heap).
 * *hi, *n, *pad: the large heap's place, when 1. */
static FL_NOINLINE int small_into_large(const fx_policy *f, const fx_heap *h, uint64_t size, uint32_t *hi,
                                        uint32_t *n, uint64_t *pad)
{
    return h->small && f->streams <= 1 && !near_limit(f) &&
           unmapped_pages(f, h, h->range->nodes[*n].offset + *pad, size) &&
           large_heap_place(f, h, size, UINT64_MAX, hi, n, pad);
}

/* A free range of another stream's large heap where size bytes lie on mapped, accessible
 * pages only (none pinned anew: pages_ready), preferring heaps that need no synchronize:
 * its heap in *lh, the node and pad; 0 if none. */
static int find_lender(const fx_policy *f, uint32_t own, uint64_t size, uint32_t *lh, uint32_t *n, uint64_t *pad)
{
    int found = 0;
    for (int pass = 0; pass < 2 && !found; pass++)
        for (uint32_t hi = 0; hi < f->n_heaps && !found; hi++) {
            const fx_heap *h = &f->heaps[hi];
            if (hi == own || h->small || h->stream == f->heaps[own].stream || h->dirty != pass)
                continue;
            uint32_t cand[PRESSURE_CANDIDATES];
            size_t k = range_candidates(h->range, size, cand, PRESSURE_CANDIDATES);
            for (size_t i = 0; i < k && !found; i++) {
                const range_node *b = &h->range->nodes[cand[i]];
                uint64_t ends[2] = {0, b->size - size};
                for (int e = 0; e < 2 && !found; e++) {
                    uint64_t x = b->offset + ends[e];
                    if (pages_ready(f, h, x >> f->gran_log, (x + size - 1) >> f->gran_log)) {
                        *lh = hi;
                        *n = cand[i];
                        *pad = ends[e];
                        found = 1;
                    }
                }
            }
        }
    return found;
}

/* Near the limit (near_limit): a free range of another stream's large heap where a block
 * of size bytes pins fewer new pages than own_new, its own heap's placement (at the
 * position choose_pad picks; unmapped pages there are mapped for it), the fewest first:
 * its heap in *lh, the node and pad; 0 if none. */
static int find_tight_lender(const fx_policy *f, uint32_t own, uint64_t size, uint64_t own_new, uint32_t *lh,
                             uint32_t *n, uint64_t *pad)
{
    uint64_t best = own_new;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        const fx_heap *h = &f->heaps[hi];
        if (hi == own || h->small != f->heaps[own].small || h->stream == f->heaps[own].stream)
            continue;
        uint32_t cand[PRESSURE_CANDIDATES];
        size_t k = range_candidates(h->range, size, cand, PRESSURE_CANDIDATES);
        for (size_t i = 0; i < k; i++) {
            uint64_t p = choose_pad(f, h, &h->range->nodes[cand[i]], size);
            uint64_t nn = new_pages(f, h, h->range->nodes[cand[i]].offset + p, size);
            if (nn < best) {
                best = nn;
                *lh = hi;
                *n = cand[i];
                *pad = p;
            }
        }
    }
    return best < own_new;
}

/* The lender for lend: find_lender, or near the limit (own_new > 0) find_tight_lender. */
static int find_lender_for(const fx_policy *f, uint32_t own, uint64_t size, uint64_t own_new, uint32_t *lh,
                           uint32_t *n, uint64_t *pad)
{
    return own_new ? find_tight_lender(f, own, size, own_new, lh, n, pad) : find_lender(f, own, size, lh, n, pad);
}

/* Places a block of rsize bytes for `stream` in a lender heap (find_lender_for: own_new
 * > 0 near the limit, the new pages its own heap's placement would pin), or returns 0;
 * *synced: it synchronized (the waiting ranges of every heap went back, so a free range
 * node the caller holds may be gone). */
static int lend(fx_policy *f, uint32_t own, uint64_t size, uint64_t rsize, uint64_t own_new, uint64_t *addr,
                int *synced)
{
    uint32_t lh = 0, n = 0;
    uint64_t pad = 0;
    if (!find_lender_for(f, own, rsize, own_new, &lh, &n, &pad))
        return 0;
    fx_heap *h = &f->heaps[lh];
    if (h->dirty) {
        /* Its stream freed ranges since the last synchronize: wait for its work, then
         * look again (the waiting ranges went back, and may have merged with this one). */
        if (synchronize(f) != FL_OK)
            return 0;
        *synced = 1;
        if (!find_lender_for(f, own, rsize, own_new, &lh, &n, &pad))
            return 0;
        f->base.retries++;
        h = &f->heaps[lh];
    }
    if ((!f->foreign.e && fli_map_init(&f->foreign, 64) != FL_OK) ||
        (h->n_deferred + h->n_lent_here + 1 > h->cap_deferred && defer_grow(h) != FL_OK))
        return 0;
    uint32_t node;
    if (range_take(h->range, n, pad, rsize, &node) != FL_OK)
        return 0;
    uint64_t off = h->range->nodes[node].offset;
    uint64_t p0 = off >> f->gran_log, p1 = (off + rsize - 1) >> f->gran_log;
    /* A tight lender's range may reach past the pages its tables cover. */
    if (FL_UNLIKELY(p1 >= h->n_pages) && heap_grow_pages(h, f->gran_log, p1 + 1) != FL_OK) {
        heap_release(h, node);
        return 0;
    }
    if (fli_map_put(&f->foreign, h->va + off, f->heaps[own].stream) != FL_OK) {
        heap_release(h, node);
        return 0;
    }
    h->range->nodes[node].tag = (uint16_t)((rsize - size) | TAG_FOREIGN);
    index_add(h, node);
    uint32_t no_access = 0;
    uint64_t missing = pin(f, h, p0, p1, &no_access);
    FL_ASSERT(own_new || (missing == 0 && no_access == 0)); /* find_lender: pages_ready */
    if (FL_UNLIKELY(missing | no_access)) {
        /* Near the limit: the lender's unmapped pages are mapped for the block (fewer
         * than its own heap would have pinned). Mapping may reclaim, whose synchronize
         * gives the waiting ranges back: the caller's free range node may be gone, as
         * after lend's own synchronize. */
        *synced = 1;
        fl_status s = missing > pages_obtainable(f, missing) ? FL_ERR_OOM : map_pages(f, lh, p0, p1);
        if (s == FL_OK && p1 >= f->heaps[lh].top)
            map_ahead(f, lh, p1);
        if (s != FL_OK) {
            unpin(f, lh, p0, p1, 0);
            fli_map_remove(&f->foreign, h->va + off, NULL);
            heap_release(h, node);
            return 0;
        }
        learn_lend_peak(f);
    }
    h->n_lent_here++;
    f->base.allocated += rsize;
    f->base.num_allocs++;
    *addr = h->va + off;
    return 1;
}

/* alloc_placed under pressure, its block placed at (n, pad) of heap hi: its pages would
 * come by reclaim, and another stream's mapped pages may serve it where they are free
 * (lending); near the limit, or for a small block of 1/2^SMALL_LEND_LOG page or more,
 * another stream's free range where it pins fewer new pages. Returns 1: lent (*addr);
 * 2: not lent, but the heaps' ranges changed (a synchronize), so the caller places
 * again; 0: nothing changed. Out of line: alloc_placed's common part stays short. */
static FL_NOINLINE int lend_instead(fx_policy *f, uint32_t hi, uint32_t n, uint64_t pad, uint64_t size,
                                    uint64_t rsize, uint64_t *addr)
{
    const fx_heap *h = &f->heaps[hi];
    uint64_t x = h->range->nodes[n].offset + pad;
    if (f->streams > 1)
        learn_peak(f);
    int lend_small = h->small && rsize >= f->gran >> SMALL_LEND_LOG;
    int tight = f->streams > 1 && (lend_small || near_limit(f));
    uint64_t own_new = tight ? new_pages(f, h, x, rsize) : 0;
    if (!(h->small ? lend_small : rsize >= f->gran) || f->n_heaps < 2 ||
        !(tight ? own_new > 0 : unmapped_pages(f, h, x, rsize) && room_above_peak(f)))
        return 0;
    int synced = 0;
    return lend(f, hi, size, rsize, own_new, addr, &synced) ? 1 : synced ? 2 : 0;
}

/* ---- policy interface ---------------------------------------------------------- */

/* fx_alloc in general: a placement by the range allocator, or a block from a quick list
 * whose pages need a look. */
static FL_NOINLINE fl_status alloc_placed(fx_policy *f, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fli_policy *base = &f->base;
    uint32_t hi = 0;
    fl_status s = heap_for(f, stream, size < f->small_limit, &hi);
    if (s != FL_OK)
        return s;
    fx_heap *h = &f->heaps[hi];
    uint64_t rsize = fli_align_up(size, 512), off;
    if (FL_UNLIKELY(rsize < size || rsize > h->va_size)) {
        base->ooms++;
        return fli_fail(FL_ERR_OOM, "fragless: %llu bytes asked, more than a stream heap's virtual range of %llu bytes",
                       (unsigned long long)size, (unsigned long long)h->va_size);
    }
    fx_bin *bin = rsize <= QUICK_MAX ? &h->bins[(rsize >> 9) - 1] : NULL;
    uint32_t held = 0, node, guest = 0;
    if (bin && bin->n) {
        /* A block of this size freed here lately: take it back as it is. */
        node = held = bin->node[--bin->n];
        h->range->nodes[held].used = RANGE_USED;
        h->held_bytes -= rsize;
    } else {
        int lent_tried = 0, stitch_tried = 0, pressure;
    place:;
        pressure = 0;
        uint32_t n = range_find_free(h->range, rsize);
        if (FL_UNLIKELY(n == 0)) {
            base->ooms++;
            return fli_fail(FL_ERR_OOM, "fragless: no virtual range of %llu bytes left", (unsigned long long)size);
        }
        h->bytes_asked += rsize;
        h->whole_bytes += (rsize & (f->gran - 1)) == 0 ? rsize : 0;
        uint64_t pad = choose_pad(f, h, &h->range->nodes[n], rsize);
        if (FL_UNLIKELY(f->n_pool == 0 && f->n_cpool == 0 && f->n_handles >= f->max_pages)) {
            place_under_pressure(f, h, rsize, &n, &pad);
            if (small_into_large(f, h, rsize, &hi, &n, &pad))
                h = guest_heap(f, h, hi, rsize, &guest);
            else
                place_fewest_pins(f, h, rsize, &n, &pad);
            int r = lent_tried ? 0 : lend_instead(f, hi, n, pad, size, rsize, addr);
            lent_tried = 1;
            pressure = 1;
            if (r) { /* lent, or this heap's ranges changed: place again */
                h->bytes_asked -= rsize;
                h->whole_bytes -= (rsize & (f->gran - 1)) == 0 ? rsize : 0;
                if (r == 1)
                    return FL_OK;
                goto place;
            }
        } else if (!h->small) {
            place_on_stack(f, h, rsize, &n, &pad);
        } else if (f->streams > 1 && small_onto_pinned(f, h, rsize, &hi, &n, &pad)) {
            h = guest_heap(f, h, hi, rsize, &guest);
        }
        /* Very near the limit, a stitched block instead where it pins fewer new pages. */
        if (FL_UNLIKELY(pressure) && !stitch_tried && stitch_near(f)) {
            uint64_t k = new_pages(f, h, h->range->nodes[n].offset + pad, rsize);
            int r = k ? stitch_alloc(f, hi, size, rsize, addr, k) : 0;
            stitch_tried = 1;
            if (r) { /* stitched, or the heaps' ranges changed: place again */
                h->bytes_asked -= rsize;
                h->whole_bytes -= (rsize & (f->gran - 1)) == 0 ? rsize : 0;
                if (r == 1)
                    return FL_OK;
                goto place;
            }
        }
        if ((s = range_take(h->range, n, pad, rsize, &node)) != FL_OK)
            return s;
    }
    FL_ASSERT(h->range->nodes[node].used == RANGE_USED && h->range->nodes[node].size == rsize);
    /* The requested size, kept with the block: rsize - size < 512. */
    h->range->nodes[node].tag = (uint16_t)((rsize - size) | guest);
    off = h->range->nodes[node].offset;
    h->stack_node = node; /* place_on_stack's (read in large heaps only) */
    h->stack_off = off;
    uint64_t p0 = off >> f->gran_log, p1 = (off + rsize - 1) >> f->gran_log;
    if (FL_UNLIKELY(p1 >= h->n_pages)) {
        /* A block on more pages than the limit allows never fits: out of memory, before
         * the index's tables grow for it (host memory in proportion to its size). */
        if (p1 - p0 + 1 > limit_pages(f)) {
            give_back(h, held, node, rsize, 0);
            base->ooms++;
            return fli_fail(FL_ERR_OOM, "fragless: %llu bytes lie on %llu pages, more than the %llu the limit allows",
                            (unsigned long long)size, (unsigned long long)(p1 - p0 + 1),
                            (unsigned long long)limit_pages(f));
        }
        if ((s = heap_grow_pages(h, f->gran_log, p1 + 1)) != FL_OK) {
            give_back(h, held, node, rsize, 0);
            return s;
        }
    }
    if (!held)
        index_add(h, node);
    uint32_t no_access = 0; /* a cached page whose set_access failed: map_pages sets it */
    uint64_t missing = pin(f, h, p0, p1, &no_access);
    if (FL_UNLIKELY(missing | no_access)) {
        if (missing > pages_obtainable(f, missing))
            s = fli_fail(FL_ERR_OOM, "fragless: %llu bytes need %llu more pages of %llu %s; %llu obtainable",
                        (unsigned long long)size, (unsigned long long)missing,
                        (unsigned long long)(f->gran >= FL_MiB ? f->gran >> 20 : f->gran >> 10),
                        f->gran >= FL_MiB ? "MiB" : "KiB", (unsigned long long)pages_obtainable(f, missing));
        else if ((s = map_pages(f, hi, p0, p1)) == FL_OK && p1 >= f->heaps[hi].top)
            map_ahead(f, hi, p1);
        if (s != FL_OK) {
            unpin(f, hi, p0, p1, 0);
            give_back(&f->heaps[hi], held, node, rsize, 1);
            if (s == FL_ERR_OOM) {
                if (stitch_alloc(f, hi, size, rsize, addr, UINT64_MAX) == 1)
                    return FL_OK;
                base->ooms++;
            }
            return s;
        }
    }
    /* Every page under the block is mapped and accessible now. */
    FL_ASSERT(f->heaps[hi].pages[p0].handle && f->heaps[hi].pages[p1].handle &&
              !(f->heaps[hi].pages[p0].flags & PAGE_NO_ACCESS));
    base->allocated += rsize;
    base->num_allocs++;
    *addr = f->heaps[hi].va + off;
    /* With one stream, where pages were mapped (growth), else after every placement. */
    if (FL_UNLIKELY(f->streams > 1 || (missing | no_access)))
        learn_lend_peak(f);
    return FL_OK;
}

/* Most allocations are the quick list's (70-90% of the requests in the CPU traces are
 * small), and most of those land on a page other live blocks pin already: then taking
 * the block back is a few stores, with nothing to map, count as cached or check. The
 * rest is alloc_placed, which does the same for this case. */
static fl_status fx_alloc(fli_policy *base, uint64_t size, uint64_t stream, uint64_t *addr)
{
    fx_policy *f = (fx_policy *)base;
    int small = size < f->small_limit;
    fx_heap *h = f->last_heap[small]; /* no_heap: bin->n is 0 */
    uint64_t rsize = fli_align_up(size, 512);
    FL_ASSERT(h == &no_heap || h->small == small);
    if (FL_LIKELY(rsize - 1 < QUICK_MAX) && FL_LIKELY(h->stream == stream) && /* rsize 0: size near 2^64 */
        quick_take(f, h, size, rsize, addr)) {
        base->allocated += rsize;
        base->num_allocs++;
        return FL_OK;
    }
    return alloc_placed(f, size, stream, addr);
}

/* The heap whose tracked pages hold addr (below va + known_bytes), NULL if none: the
 * heaps other than the two of the stream lookup's cache. */
static FL_NOINLINE fx_heap *heap_known_slow(const fx_policy *f, uint64_t addr)
{
    for (uint32_t i = 0; i < f->n_heaps; i++)
        if (addr - f->heaps[i].va < f->heaps[i].known_bytes)
            return &f->heaps[i];
    return NULL;
}

/* Of the stream lookup's two heaps, the one whose tracked pages hold addr, NULL if
 * neither: one comparison per heap both finds it and keeps the index's bounds. */
static inline fx_heap *heap_known_cached(const fx_policy *f, uint64_t addr)
{
    for (int k = 1; k >= 0; k--) { /* small first: most blocks are small */
        fx_heap *c = f->last_heap[k];
        if (FL_LIKELY(addr - c->va < c->known_bytes))
            return c;
    }
    return NULL;
}

/* The heap whose tracked pages hold addr, NULL if none: the stream lookup's two first. */
static inline fx_heap *heap_known(const fx_policy *f, uint64_t addr)
{
    fx_heap *h = heap_known_cached(f, addr);
    return FL_LIKELY(h != NULL) ? h : heap_known_slow(f, addr);
}

/* The range node of the live block that starts at addr in heap h (addr below h->va +
 * known_bytes), 0 if none: index_find, asking for a live block instead of any that is
 * not free. */
static inline uint32_t live_node_in(const fx_policy *f, const fx_heap *h, uint64_t addr)
{
    uint64_t off = addr - h->va;
    FL_ASSERT(off >> f->gran_log < h->n_pages);
    (void)f;
    const range_node *nodes = h->range->nodes;
    uint32_t v = h->starts[off >> h->win_log];
    while (v && nodes[v].offset < off)
        v = nodes[v].next_phys;
    return FL_LIKELY(v) && nodes[v].offset == off && nodes[v].used == RANGE_USED ? v : 0;
}

/* live_node_in of whichever heap holds addr (in *hp), 0 if none. */
static inline uint32_t live_node(const fx_policy *f, uint64_t addr, fx_heap **hp)
{
    fx_heap *h = heap_known(f, addr);
    if (FL_UNLIKELY(!h))
        return *hp = NULL, 0;
    *hp = h;
    return live_node_in(f, h, addr);
}

static uint64_t fx_block_size(const fli_policy *base, uint64_t addr)
{
    const fx_policy *f = (const fx_policy *)base;
    fx_heap *h;
    uint32_t v = live_node(f, addr, &h);
    if (v)
        return h->range->nodes[v].size - TAG_REQ(h->range->nodes[v].tag);
    const fx_stitch *st = f->n_stitches ? stitch_find(f, addr) : NULL;
    return st ? st->req : 0;
}

static int fx_block_stream(const fli_policy *base, uint64_t addr, uint64_t *stream)
{
    const fx_policy *f = (const fx_policy *)base;
    fx_heap *h;
    uint32_t v = live_node(f, addr, &h);
    if (!v) {
        const fx_stitch *st = f->n_stitches ? stitch_find(f, addr) : NULL;
        if (!st)
            return 0;
        /* Its stream is gone where the heaps lending its ends were retired (or taken
         * over by another stream since): as for a block of a retired heap. */
        const fx_heap *lender = &f->heaps[st->lent_heap[st->lent_heap[0] == STITCH_NONE]];
        if (lender->retired || lender->stream != st->stream)
            return -1;
        *stream = st->stream;
        return 1;
    }
    if (FL_UNLIKELY(h->retired)) /* its stream is gone: a free must wait for its own stream */
        return -1;
    *stream = h->stream;
    if (FL_UNLIKELY(h->range->nodes[v].tag & TAG_FOREIGN)) /* lent: the borrower's */
        fli_map_get(&f->foreign, addr, stream);
    return 1;
}

/* fx_free once the block is found and checked: its quick list or the range allocator,
 * then its pages. Returns the block's size. */
static inline uint64_t release_block(fx_policy *f, fx_heap *h, uint32_t v)
{
    uint64_t off = h->range->nodes[v].offset, size = h->range->nodes[v].size;
    fx_bin *bin = size <= QUICK_MAX ? &h->bins[(size >> 9) - 1] : NULL;
    uint32_t tag = h->range->nodes[v].tag;
    if (FL_UNLIKELY(tag & TAG_FOREIGN)) {
        defer_range(f, h, v);
    } else if (bin && bin->n < QUICK_CAP && !(tag & TAG_GUEST)) {
        /* Set aside for the next request of this size: no range allocator work now or
         * then. Its pages are unpinned like any freed block's. */
        h->range->nodes[v].used = RANGE_HELD;
        bin->node[bin->n++] = v;
        h->held_bytes += size;
    } else {
        heap_release(h, v);
    }
    unpin_in(f, h, off >> f->gran_log, (off + size - 1) >> f->gran_log, 1);
    return size;
}

static FL_NOINLINE fl_status free_found(fx_policy *f, fx_heap *h, uint32_t v)
{
    f->base.allocated -= release_block(f, h, v);
    f->base.num_frees++;
    return FL_OK;
}

/* fx_free with a size to check (fl_free_sized), no requested size to give back (the
 * policy's own callers) or a block outside the two cached heaps: out of line, so that
 * fx_free keeps fewer values in registers and calls nothing but at its end. */
static FL_NOINLINE fl_status fx_free_general(fx_policy *f, uint64_t addr, uint64_t want, uint64_t *requested)
{
    fx_heap *h;
    uint32_t v = live_node(f, addr, &h);
    if (FL_UNLIKELY(!v)) {
        fx_stitch *st = f->n_stitches ? stitch_find(f, addr) : NULL;
        if (!st)
            return fli_policy_not_live(&f->base, addr);
        if (want && want != st->req)
            return fli_policy_size_mismatch(addr, want, st->req);
        if (requested)
            *requested = st->req;
        stitch_free(f, st);
        return FL_OK;
    }
    const range_node *b = &h->range->nodes[v];
    uint64_t req = b->size - TAG_REQ(b->tag);
    if (want && want != req)
        return fli_policy_size_mismatch(addr, want, req);
    if (requested)
        *requested = req;
    return free_found(f, h, v);
}

/* As in fx_alloc, the common case is short: a small block goes on its quick list and
 * its page stays pinned by other blocks. */
static fl_status fx_free(fli_policy *base, uint64_t addr, uint64_t want, uint64_t *requested)
{
    fx_policy *f = (fx_policy *)base;
    fx_heap *h = heap_known_cached(f, addr);
    if (FL_UNLIKELY(want || !requested || !h)) /* !h: another heap's, or none's */
        return fx_free_general(f, addr, want, requested);
    uint32_t v = live_node_in(f, h, addr);
    if (FL_UNLIKELY(!v))
        return fli_policy_not_live(base, addr);
    range_node *b = &h->range->nodes[v];
    uint64_t size = b->size;
    FL_ASSERT(size <= base->allocated && base->num_frees < base->num_allocs);
    *requested = size - TAG_REQ(b->tag);
    /* The block starts at addr (live_node found it there): its page and whether it lies on
     * that page alone come from the address, without the node's offset. */
    FL_ASSERT(addr - h->va == b->offset);
    if (quick_put(f, h, v, addr - h->va, size)) {
        base->allocated -= size;
        base->num_frees++;
        return FL_OK;
    }
    return free_found(f, h, v);
}

/* ---- stream-local operations (policy.h: alloc_local, free_local) ----------------- */

/* Threads of one allocator run these at the same time, each on a heap it owns (the
 * first thread that asks: heap_claim), while nothing else of the policy runs: they read
 * the policy's shared fields (heaps, pools, counters of handles) without changing them,
 * and change only the heap's own state (its range allocator, quick lists, index of starts, page pins, bits
 * and counts of cached pages). So they do without what the ordinary way would change
 * elsewhere: a new heap, device calls (every page under the block must be mapped and
 * accessible already), table growth, the stream lookup's cache. */

/* alloc_placed's choices, on pages that are all backed, or 0 with nothing changed. */
/* The rest of a stream-local allocation, out of line (quick_take came first). */
static FL_NOINLINE int heap_alloc_local(fx_policy *f, fx_heap *h, uint64_t size, uint64_t rsize, uint64_t *addr)
{
    range_node *nodes = h->range->nodes;
    fx_bin *bin = rsize <= QUICK_MAX ? &h->bins[(rsize >> 9) - 1] : NULL;
    uint32_t node;
    uint64_t off;
    if (bin && bin->n) {
        node = bin->node[bin->n - 1];
        off = nodes[node].offset;
        if (!pages_ready(f, h, off >> f->gran_log, (off + rsize - 1) >> f->gran_log))
            return 0;
        bin->n--;
        nodes[node].used = RANGE_USED;
        h->held_bytes -= rsize;
    } else {
        /* Where pages_ready holds, the choice needs no page mapped: what the ordinary
         * way keeps under pressure too (place_under_pressure looks further only when
         * the first choice has unmapped pages). */
        uint32_t n = range_find_free(h->range, rsize);
        if (n == 0)
            return 0;
        uint64_t asked = h->bytes_asked, whole = h->whole_bytes;
        h->bytes_asked += rsize; /* as alloc_placed counts them, before the choice */
        h->whole_bytes += (rsize & (f->gran - 1)) == 0 ? rsize : 0;
        uint64_t pad = choose_pad(f, h, &nodes[n], rsize);
        off = nodes[n].offset + pad;
        if (!pages_ready(f, h, off >> f->gran_log, (off + rsize - 1) >> f->gran_log) ||
            range_take(h->range, n, pad, rsize, &node) != FL_OK) {
            h->bytes_asked = asked;
            h->whole_bytes = whole;
            return 0;
        }
        nodes = h->range->nodes; /* range_take may have grown the node table */
        index_add(h, node);
    }
    nodes[node].tag = (uint16_t)(rsize - size);
    uint32_t no_access = 0;
    uint64_t missing = pin(f, h, off >> f->gran_log, (off + rsize - 1) >> f->gran_log, &no_access);
    FL_ASSERT(missing == 0 && no_access == 0);
    (void)missing;
    *addr = h->va + off;
    return 1;
}

/* Whether h serves owner's stream-local operations: it does once it is owner's, and
 * becomes so when it is nobody's (the first thread that asks keeps it until it ends). */
static inline int heap_claim(fx_heap *h, uint64_t owner)
{
    uint64_t o = atomic_load_explicit(&h->owner, memory_order_relaxed);
    if (FL_LIKELY(o == owner))
        return 1;
    return o == 0 && atomic_compare_exchange_strong_explicit(&h->owner, &o, owner, memory_order_acquire,
                                                             memory_order_relaxed);
}

/* heap_find for a thread's stream-local operation: first the heap its hint names (index
 * + 1 per kind; 0: none yet), when it is still stream's of that kind and not retired;
 * else heap_find's answer, remembered there. With several streams the hint saves the
 * walk over the heaps (one cache line each) that heap_find makes per operation. */
static inline int heap_find_hinted(const fx_policy *f, uint64_t stream, int small, uint32_t *hint)
{
    uint32_t i = hint[small] - 1;
    if (FL_LIKELY(i < f->n_heaps) && f->heaps[i].stream == stream && f->heaps[i].small == small &&
        !f->heaps[i].retired)
        return (int)i;
    int hi = heap_find(f, stream, small);
    hint[small] = (uint32_t)(hi + 1);
    return hi;
}

/* heap_known for a thread's stream-local free: the two heaps its hint names first. */
static inline fx_heap *heap_known_hinted(const fx_policy *f, uint64_t addr, const uint32_t *hint)
{
    for (int k = 1; k >= 0; k--) { /* small first: most blocks are small */
        uint32_t i = hint[k] - 1;
        if (i < f->n_heaps && addr - f->heaps[i].va < f->heaps[i].known_bytes)
            return &f->heaps[i];
    }
    return heap_known(f, addr);
}

static uint64_t fx_alloc_local(fli_policy *base, uint64_t size, uint64_t stream, uint64_t max_charge, fli_local *l,
                               uint64_t *addr)
{
    fx_policy *f = (fx_policy *)base;
    uint64_t rsize = fli_align_up(size, 512);
    int hi = heap_find_hinted(f, stream, size < f->small_limit, l->hint);
    if (rsize < size || rsize > max_charge || hi < 0 || rsize > f->heaps[hi].va_size ||
        !heap_claim(&f->heaps[hi], l->owner))
        return 0;
    return (rsize <= QUICK_MAX && quick_take(f, &f->heaps[hi], size, rsize, addr)) ||
                   heap_alloc_local(f, &f->heaps[hi], size, rsize, addr)
               ? rsize
               : 0;
}

static uint64_t fx_free_local(fli_policy *base, uint64_t addr, uint64_t want, fli_local *l, uint64_t *requested)
{
    fx_policy *f = (fx_policy *)base;
    /* The heap first, then (its owner's only) its blocks. */
    fx_heap *h = heap_known_hinted(f, addr, l->hint);
    if (!h || !heap_claim(h, l->owner))
        return 0;
    uint32_t v = live_node_in(f, h, addr);
    const range_node *b = &h->range->nodes[v];
    /* Another stream's block here goes the ordinary way (its range waits: lending). */
    int done = v && !(b->tag & TAG_FOREIGN) && (!want || want == b->size - TAG_REQ(b->tag));
    if (!done)
        return 0;
    uint64_t size = b->size, off = addr - h->va;
    *requested = size - TAG_REQ(b->tag);
    if (!quick_put(f, h, v, off, size))
        release_block(f, h, v);
    return size;
}

static void fx_local_forget(fli_policy *base, uint64_t owner)
{
    fx_policy *f = (fx_policy *)base;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        if (atomic_load_explicit(&f->heaps[hi].owner, memory_order_relaxed) == owner)
            atomic_store_explicit(&f->heaps[hi].owner, 0, memory_order_relaxed);
        if (f->heaps[hi].adopt_by == owner) /* a later thread may get the same token */
            f->heaps[hi].adopt_by = 0, f->heaps[hi].adopt_n = 0;
    }
}

/* A heap goes to a thread whose operations on it took the ordinary way this many times
 * in a row (no other thread's in between) while another thread owned it: a stream handed
 * to another thread of a pool stops costing the new thread the allocator's lock (and the
 * other threads a stop) per operation after that many, and two threads sharing a stream
 * at the same time hand it back and forth at most once per that many. */
#define ADOPT_AFTER 64

static void fx_local_missed(fli_policy *base, uint64_t owner, uint64_t stream, uint64_t size, uint64_t addr)
{
    fx_policy *f = (fx_policy *)base;
    int hi = addr ? 0 : heap_find(f, stream, size < f->small_limit);
    fx_heap *h = addr ? heap_known(f, addr) : hi >= 0 ? &f->heaps[hi] : NULL;
    if (!h || h->retired) /* a retired heap is nobody's */
        return;
    uint64_t o = atomic_load_explicit(&h->owner, memory_order_relaxed);
    if (o == owner || o == 0) {
        h->adopt_n = 0;
        return;
    }
    if (h->adopt_by != owner) {
        h->adopt_by = owner;
        h->adopt_n = 0;
    }
    if (++h->adopt_n >= ADOPT_AFTER) {
        atomic_store_explicit(&h->owner, owner, memory_order_relaxed);
        h->adopt_n = 0;
    }
}

/* The program destroyed stream: its heaps are retired. An event recorded on the stream
 * now (before the program's cuStreamDestroy: the caller's order) marks the end of its
 * work; once complete, a new stream takes a retired heap over (heap_adopt) with its
 * address space, tables and cached pages, instead of reserving a heap of its own and
 * mapping its growth step: a program that creates a stream per request held a heap
 * pair and their pages ahead per stream ever made, the whole device within a few
 * thousand. The heaps' blocks still live stay valid (their frees find them by address
 * and wait for their freeing stream: fx_block_stream says "unknown"). */
static void fx_stream_gone(fli_policy *base, uint64_t stream)
{
    fx_policy *f = (fx_policy *)base;
    for (int small = 0; small < 2; small++) {
        int i = heap_find(f, stream, small);
        if (i < 0)
            continue;
        fx_heap *h = &f->heaps[i];
        uint64_t ev = 0;
        if (fli_dev_event_record(base->dev, stream, &ev) == FL_OK) {
            h->retired = 1;
            h->retired_event = ev;
        } else {
            fli_clear_error();
            h->retired = 2;
        }
        /* No thread's stream-local operations: they go the ordinary way. */
        atomic_store_explicit(&h->owner, UINT64_MAX, memory_order_relaxed);
        h->adopt_by = 0;
        h->adopt_n = 0;
        f->n_retired++;
        if (f->last_heap[small] == h)
            f->last_heap[small] = &no_heap;
    }
}

static fl_status fx_empty_cache(fli_policy *base)
{
    fx_policy *f = (fx_policy *)base;
    fl_status s;
    f->max_pages = limit_pages(f); /* the device may have room again: try creating */
    f->no_chunks = 0;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++)
        flush_bins(&f->heaps[hi]);
    /* Cached pages inside a chunk that a live block still touches stay: a chunk is
     * unmapped only whole. */
    uint64_t idle = idle_chunks(f), got;
    int retired_waiting = 0;
    for (uint32_t hi = 0; hi < f->n_heaps && f->n_retired && !retired_waiting; hi++)
        retired_waiting = f->heaps[hi].retired_event != 0;
    if ((cached_singles(f) || idle || any_deferred(f) || retired_waiting || f->n_dead) && (s = synchronize(f)) != FL_OK)
        return s;
    if (f->n_dead)
        stitch_reap(f); /* quiet now: their pages to the pool, given back below */
    /* Synchronized: the destroyed streams' work is done, their events are not needed (a
     * reset of the device, which empties the cache first, destroys them). */
    for (uint32_t hi = 0; hi < f->n_heaps && retired_waiting; hi++)
        if (f->heaps[hi].retired_event) {
            fli_dev_event_destroy(base->dev, f->heaps[hi].retired_event);
            f->heaps[hi].retired_event = 0;
        }
    for (uint64_t n; (n = cached_singles(f)) != 0;)
        if ((s = reclaim_run(f, n)) != FL_OK)
            return s;
    if (idle && (s = reclaim_chunks(f, idle, &got)) != FL_OK)
        return s;
    while (f->n_pool) {
        if ((s = fli_dev_release(base->dev, f->pool[f->n_pool - 1])) != FL_OK)
            return s;
        f->n_pool--;
        f->n_handles--;
    }
    while (f->n_cpool)
        if ((s = release_pooled_chunk(f)) != FL_OK)
            return s;
    return FL_OK;
}

static int fx_check(const fli_policy *base)
{
    const fx_policy *f = (const fx_policy *)base;
    uint64_t mapped = 0, cached = 0, allocated = 0, no_access = 0;
    uint64_t chunk_pages = 0, chunk_cached = 0;
    for (int k = 0; k < 2; k++) { /* fx_alloc and heap_for trust the cache's kind */
        const fx_heap *c = f->last_heap[k];
        uint32_t i = 0;
        while (i < f->n_heaps && c != &f->heaps[i])
            i++;
        if (c == &no_heap ? no_heap.va_size || no_heap.known_bytes || no_heap.held_bytes
                          : i == f->n_heaps || c->small != k)
            return fli_fail(FL_ERR_INVALID, "fragless check: the %s heap cache is not a %s heap of the policy",
                            k ? "small" : "large", k ? "small" : "large"),
                   1;
    }
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        const fx_heap *h = &f->heaps[hi];
        uint64_t cached_before = cached, chunk_cached_before = chunk_cached;
        if (fl_range_check(h->range))
            return 1;
        allocated += h->range->capacity - h->range->total_free - h->held_bytes - h->deferred_bytes;
        /* What the blocks say: per page, the live blocks starting or ending on it, and
         * whether one covers it (holds it strictly inside). */
        uint32_t *refs = calloc(h->n_pages + 1, sizeof *refs);
        uint64_t *cover = calloc(fli_bits_words(h->n_pages) + 1, sizeof *cover);
        const char *err = NULL;
        if (!refs || !cover) {
            free(refs);
            free(cover);
            return fli_fail(FL_ERR_NOMEM, "fragless check: host memory"), 1;
        }
        /* Pages of live blocks and stitched blocks' ends only: blocks on the quick lists pin nothing. */
        uint64_t held = 0, held_bytes = 0, listed = 0, blocks = 0, indexed = 0;
        uint64_t windows = h->n_pages << (f->gran_log - h->win_log), last_window = UINT64_MAX;
        for (uint32_t n = h->range->head; n && !err; n = h->range->nodes[n].next_phys) {
            const range_node *b = &h->range->nodes[n];
            int end = b->used == RANGE_HELD && (b->tag & TAG_STITCH); /* a stitched block's: pins */
            if (b->used == RANGE_USED || end) {
                uint64_t p0 = b->offset >> f->gran_log, p1 = (b->offset + b->size - 1) >> f->gran_log;
                if (p1 >= h->n_pages) {
                    err = "a live block lies past the page table";
                    break;
                }
                refs[p0]++;
                refs[p1] += p1 != p0;
                fli_bits_set(cover, p0 + 1, p1);
            }
            held += b->used == RANGE_HELD && !end;
            held_bytes += b->used == RANGE_HELD && !end ? b->size : 0;
            if (b->used == RANGE_FREE)
                continue;
            if (b->offset + b->size > h->top << f->gran_log) {
                free(refs);
                free(cover);
                return fli_fail(FL_ERR_INVALID, "fragless check: block at 0x%llx (%llu bytes) lies above the pages ever mapped",
                               (unsigned long long)b->offset, (unsigned long long)b->size), 1;
            }
            /* The first block of each window is indexed, and the walk finds every one. */
            uint64_t i = b->offset >> h->win_log;
            blocks += i != last_window;
            if (i >= windows || (i != last_window && h->starts[i] != n) || index_find(h, b->offset) != n) {
                free(refs);
                free(cover);
                return fli_fail(FL_ERR_INVALID, "fragless check: block at 0x%llx (%llu bytes) is not in the index of starts",
                               (unsigned long long)b->offset, (unsigned long long)b->size), 1;
            }
            last_window = i;
        }
        /* Every block, live, held or gone since, lay on pages that were mapped: below
         * top. So the index is counted there only (the tables are sized ahead, 256 pages
         * at least in a large heap: counting all of them made the check 99% of
         * test_faults' time). */
        uint64_t seen = h->top << (f->gran_log - h->win_log);
        for (uint64_t i = 0; i < windows && i < seen && !err; i++)
            indexed += h->starts[i] != 0;
        if (!err && indexed != blocks)
            err = "the index of starts holds blocks that are gone";
        for (int q = 0; q < QUICK_BINS && !err; q++) {
            listed += h->bins[q].n;
            for (uint32_t k = 0; k < h->bins[q].n; k++) {
                const range_node *b = &h->range->nodes[h->bins[q].node[k]];
                if (b->used != RANGE_HELD || b->size != (uint64_t)(q + 1) * 512 || (b->tag & TAG_GUEST))
                    err = "a quick list holds a wrong block";
            }
        }
        /* Lending: the ranges waiting for a synchronize are held too; a lent block is
         * in the map of lent blocks, not on this heap's stream. */
        uint64_t waiting = 0;
        for (uint32_t k = 0; k < h->n_deferred && !err; k++) {
            const range_node *b = &h->range->nodes[h->deferred[k]];
            if (b->used != RANGE_HELD || (b->tag & TAG_FOREIGN))
                err = "a range waiting for a synchronize is not held";
            waiting += b->size;
        }
        listed += h->n_deferred;
        uint32_t lent_here = 0;
        for (uint32_t n = h->range->head; n && !err; n = h->range->nodes[n].next_phys) {
            const range_node *b = &h->range->nodes[n];
            uint64_t owner;
            /* A free range keeps its last block's tag: only live blocks are looked at. */
            if (!err && b->used == RANGE_USED && (b->tag & TAG_GUEST) &&
                (h->small || (b->tag & TAG_FOREIGN) || b->size >= f->small_limit + 512))
                err = "a small request placed in a large heap (TAG_GUEST) is not a small block of a large heap";
            if (b->used != RANGE_USED || !(b->tag & TAG_FOREIGN))
                continue;
            lent_here++;
            if (!fli_map_get(&f->foreign, h->va + b->offset, &owner) || owner == h->stream)
                err = "a lent block is not in the map of lent blocks, or is its lender's";
        }
        if (!err && (lent_here != h->n_lent_here || h->n_deferred + lent_here > h->cap_deferred))
            err = "the count of lent blocks is wrong, or their frees could not all wait";
        if (!err && (held != listed || held_bytes != h->held_bytes + waiting || waiting != h->deferred_bytes)) {
            free(refs);
            free(cover);
            return fli_fail(FL_ERR_INVALID, "fragless check: %llu held blocks (%llu bytes), %llu listed (%llu bytes)",
                           (unsigned long long)held, (unsigned long long)held_bytes, (unsigned long long)listed,
                           (unsigned long long)h->held_bytes), 1;
        }
        for (uint64_t p = 0; p < h->n_pages && !err; p++) {
            const fx_page *pg = &h->pages[p];
            if (refs[p] != pg->refs || fli_bit_get(cover, p) != fli_bit_get(h->covered, p)) {
                fli_fail(FL_ERR_INVALID, "fragless check: page %llu of stream %llu has %u refs%s, blocks say %u%s",
                        (unsigned long long)p, (unsigned long long)h->stream, pg->refs,
                        fli_bit_get(h->covered, p) ? " and is covered" : "", refs[p],
                        fli_bit_get(cover, p) ? " and one covers it" : "");
                free(refs);
                free(cover);
                return 1;
            }
            if (page_pins(h, p) && !pg->handle)
                err = "a page is used but unmapped";
            else if (fli_bit_get(h->mapped, p) != (pg->handle != 0))
                err = "a page's mapped bit disagrees with its handle";
            else if ((pg->flags & PAGE_NO_ACCESS) && !pg->handle)
                err = "an unmapped page is marked without access";
            if (err) {
                fli_fail(FL_ERR_INVALID, "fragless check: page %llu of stream %llu: %s", (unsigned long long)p,
                        (unsigned long long)h->stream, err);
                free(refs);
                free(cover);
                return 1;
            }
            mapped += pg->handle != 0;
            cached += pg->handle && !page_pins(h, p);
            no_access += (pg->flags & PAGE_NO_ACCESS) != 0;
        }
        /* A mapped chunk: every page mapped with its one handle, the count of pages live
         * blocks touch right. */
        for (uint64_t c = 0; c < h->n_pages >> CHUNK_LOG && !err; c++) {
            uint64_t p0 = c << CHUNK_LOG;
            if (!in_chunk(h, p0))
                continue;
            for (uint64_t p = p0; p < p0 + CHUNK_PAGES && !err; p++) {
                if (h->pages[p].handle != h->pages[p0].handle || !h->pages[p].handle)
                    err = "a chunk's pages are not all mapped with its handle";
                chunk_cached += page_pins(h, p) == 0;
            }
            chunk_pages += CHUNK_PAGES;
        }
        free(refs);
        free(cover);
        if (!err && (cached - cached_before != h->n_cached || chunk_cached - chunk_cached_before != h->n_chunk_cached))
            err = "the heap's counts of cached pages are wrong";
        if (err)
            return fli_fail(FL_ERR_INVALID, "fragless check: stream %llu: %s", (unsigned long long)h->stream, err), 1;
    }
    /* Stitched blocks: a live one's ends held in their heaps (counted in `allocated`
     * there), its middle pages its own; the counts of their pages right. */
    uint64_t stitch_pages = 0, dead_pages = 0;
    uint32_t dead = 0;
    for (uint32_t i = 0; i < f->n_stitches; i++) {
        const fx_stitch *st = &f->stitches[i];
        uint64_t ends = 0;
        for (int k = 0; k < 2 && !st->dead; k++) {
            if (st->lent_heap[k] == STITCH_NONE)
                continue;
            const range_node *b = st->lent_heap[k] < f->n_heaps && st->end_node[k] < f->heaps[st->lent_heap[k]].range->n_nodes
                                      ? &f->heaps[st->lent_heap[k]].range->nodes[st->end_node[k]]
                                      : NULL;
            if (!b || b->used != RANGE_HELD || !(b->tag & TAG_STITCH) || b->offset != st->lent_off[k] ||
                b->size != st->lent_size[k])
                return fli_fail(FL_ERR_INVALID, "fragless check: stitched block 0x%llx: an end is not held",
                               (unsigned long long)st->addr), 1;
            ends += b->size;
        }
        if (st->n_handles + (st->lent_heap[0] != STITCH_NONE) + (st->lent_heap[1] != STITCH_NONE) > st->pages ||
            (!st->dead && (ends > st->size || st->size - ends > st->n_handles << f->gran_log)))
            return fli_fail(FL_ERR_INVALID, "fragless check: stitched block 0x%llx: %llu bytes on %llu pages of its own",
                           (unsigned long long)st->addr, (unsigned long long)st->size,
                           (unsigned long long)st->n_handles), 1;
        allocated += st->dead ? 0 : st->size - ends;
        stitch_pages += st->n_handles;
        dead_pages += st->dead ? st->n_handles : 0;
        dead += st->dead;
    }
    if (stitch_pages != f->stitch_pages || dead_pages != f->dead_pages || dead != f->n_dead)
        return fli_fail(FL_ERR_INVALID, "fragless check: stitched blocks hold %llu pages (%llu freed, %u blocks), counters %llu (%llu, %u)",
                       (unsigned long long)stitch_pages, (unsigned long long)dead_pages, dead,
                       (unsigned long long)f->stitch_pages, (unsigned long long)f->dead_pages, f->n_dead), 1;
    if (no_access != f->n_no_access)
        return fli_fail(FL_ERR_INVALID, "fragless check: %llu pages without access, counter %llu",
                       (unsigned long long)no_access, (unsigned long long)f->n_no_access), 1;
    if (mapped + f->n_pool + f->n_cpool * CHUNK_PAGES + f->stitch_pages != f->n_handles)
        return fli_fail(FL_ERR_INVALID, "fragless check: %llu mapped + %llu pooled + %llu pooled chunks of %llu pages + "
                       "%llu stitched != %llu pages in handles", (unsigned long long)mapped, (unsigned long long)f->n_pool,
                       (unsigned long long)f->n_cpool, (unsigned long long)CHUNK_PAGES, (unsigned long long)f->stitch_pages,
                       (unsigned long long)f->n_handles), 1;
    if (chunk_pages != f->n_chunk_pages || chunk_pages / CHUNK_PAGES + f->n_cpool != f->n_chunk_handles)
        return fli_fail(FL_ERR_INVALID, "fragless check: chunks: %llu pages mapped; counter %llu; "
                       "%llu pooled of %llu chunk handles", (unsigned long long)chunk_pages,
                       (unsigned long long)f->n_chunk_pages, (unsigned long long)f->n_cpool,
                       (unsigned long long)f->n_chunk_handles), 1;
    if (allocated != base->allocated)
        return fli_fail(FL_ERR_INVALID, "fragless check: blocks hold %llu bytes, counter %llu",
                       (unsigned long long)allocated, (unsigned long long)base->allocated), 1;
    return 0;
}

/* Any free page serves any request (pages are remapped, never data moved), so the
 * largest servable request is every page no live block touches, plus the pages the
 * policy may still create. */
static void fx_query(const fli_policy *base, fli_policy_state *out)
{
    const fx_policy *f = (const fx_policy *)base;
    uint64_t held = f->n_handles * f->gran, pooled = f->n_pool + f->n_cpool * CHUNK_PAGES + f->dead_pages;
    out->free_in_reserved = held > base->allocated ? held - base->allocated : 0;
    uint64_t cached = cached_pages(f);
    out->largest_free = (cached + pooled + creatable(f)) * f->gran;
    out->cached = (cached + pooled) * f->gran;
    out->stitched = f->n_stitches - f->n_dead;
}

/* Heaps in creation order (each its own reservation), their pages up to the highest
 * ever mapped, and their blocks; blocks on the quick lists are free. */
static void fx_walk(const fli_policy *base, const fli_state_visitor *v)
{
    const fx_policy *f = (const fx_policy *)base;
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        const fx_heap *h = &f->heaps[hi];
        if (v->region)
            v->region(v->user, h->va, h->va_size, h->stream, h->small ? "small heap" : "heap");
        if (v->page)
            for (uint64_t p = 0; p < h->top && p < h->n_pages; p++)
                v->page(v->user, h->va + (p << f->gran_log), f->gran, h->pages[p].handle != 0, page_pins(h, p));
        if (v->block)
            for (uint32_t n = h->range->head; n; n = h->range->nodes[n].next_phys) {
                const range_node *b = &h->range->nodes[n];
                uint64_t size = b->size, top = h->top << f->gran_log;
                if (b->used != RANGE_USED) { /* a free block is shown up to the top only */
                    if (b->offset >= top)
                        continue;
                    if (size > top - b->offset)
                        size = top - b->offset;
                }
                /* A stitched block's end is a part of it (the block is shown at its own
                 * address, below). */
                v->block(v->user, h->va + b->offset, size,
                         b->used == RANGE_USED                                ? FLI_BLOCK_LIVE
                         : b->used == RANGE_HELD && (b->tag & TAG_STITCH) ? FLI_BLOCK_PART
                                                                            : FLI_BLOCK_FREE);
            }
    }
    /* A live stitched block: its reservation, its pages (those of its own mapped; its
     * first and last, where they are lent, shown unmapped: their memory is the lending
     * heaps' pages, where its ends show as parts of it), the block. */
    for (uint32_t i = 0; i < f->n_stitches; i++) {
        const fx_stitch *st = &f->stitches[i];
        if (st->dead)
            continue;
        if (v->region)
            v->region(v->user, st->va, st->pages << f->gran_log, st->stream, "stitched block");
        uint64_t first = st->lent_heap[0] != STITCH_NONE;
        for (uint64_t k = 0; v->page && k < st->pages; k++) {
            int own = k >= first && k < first + st->n_handles;
            v->page(v->user, st->va + (k << f->gran_log), f->gran, own, own);
        }
        if (v->block)
            v->block(v->user, st->addr, st->size, 1);
    }
}

/* A new limit (set on the device): growth stops at it, and pages held above it that no
 * live block needs are given back now (unmapped after a synchronize, released). */
static fl_status fx_limit_changed(fli_policy *base)
{
    fx_policy *f = (fx_policy *)base;
    f->max_pages = limit_pages(f);
    f->no_chunks = 0;
    fl_status s;
    if (f->n_handles > f->max_pages && (cached_singles(f) || idle_chunks(f) || f->n_dead) &&
        (s = synchronize(f)) != FL_OK)
        return s;
    if (f->n_handles > f->max_pages && f->n_dead)
        stitch_reap(f);
    while (f->n_handles > f->max_pages) {
        uint64_t got;
        if (f->n_pool) {
            if ((s = fli_dev_release(base->dev, f->pool[f->n_pool - 1])) != FL_OK)
                return s;
            f->n_pool--;
            f->n_handles--;
        } else if (f->n_cpool) {
            if ((s = release_pooled_chunk(f)) != FL_OK)
                return s;
        } else if (cached_singles(f)) {
            if ((s = reclaim_run(f, f->n_handles - f->max_pages)) != FL_OK)
                return s;
        } else if ((s = reclaim_chunks(f, 1, &got)) != FL_OK) {
            return s;
        } else if (!got) {
            break; /* what is left, live blocks touch */
        }
    }
    return FL_OK;
}

static void fx_destroy(fli_policy *base)
{
    fx_policy *f = (fx_policy *)base;
    /* Give everything back: unmap every mapped page, release every handle, free the
     * reservations. Errors are ignored here: there is no caller left to tell. */
    fli_dev_synchronize(base->dev);
    /* Stitched blocks first: their ends' handles are the heaps', released below. */
    for (uint32_t i = 0; i < f->n_stitches; i++) {
        fx_stitch *st = &f->stitches[i];
        if (stitch_unmap(f, st) == FL_OK) /* its handles pooled: released below */
            continue;
        for (uint64_t k = 0; k < st->n_handles; k++)
            fli_dev_release(base->dev, st->handles[k]);
        free(st->handles);
    }
    free(f->stitches);
    for (uint32_t hi = 0; hi < f->n_heaps; hi++) {
        fx_heap *h = &f->heaps[hi];
        for (uint64_t p = 0; p < h->n_pages; p++) {
            if (!h->pages[p].handle)
                continue;
            if (in_chunk(h, p)) { /* whole, from its first page */
                fli_dev_unmap(base->dev, h->va + (p << f->gran_log), CHUNK_PAGES << f->gran_log);
                fli_dev_release(base->dev, h->pages[p].handle);
                p += CHUNK_PAGES - 1;
                continue;
            }
            fli_dev_unmap(base->dev, h->va + (p << f->gran_log), f->gran);
            fli_dev_release(base->dev, h->pages[p].handle);
        }
        fli_dev_addr_free(base->dev, h->res_va, h->res_size);
        fl_range_destroy(h->range);
        heap_free_tables(h, f->gran_log);
        free(h->deferred);
        if (h->retired_event)
            fli_dev_event_destroy(base->dev, h->retired_event);
    }
    if (f->foreign.e)
        fli_map_free(&f->foreign);
    for (uint64_t i = 0; i < f->n_pool; i++)
        fli_dev_release(base->dev, f->pool[i]);
    for (uint64_t i = 0; i < f->n_cpool; i++)
        fli_dev_release(base->dev, f->cpool[i]);
    free(f->heaps);
    fli_table_free(f->pool, sizeof *f->pool, f->cap_pool);
    fli_table_free(f->cpool, sizeof *f->cpool, f->cap_cpool);
    free(f);
}

static fl_status fx_create(const fl_config *cfg, fl_device *dev, fli_policy **out)
{
    *out = NULL;
    if (!dev->vmm_supported)
        return fli_fail(FL_ERR_UNSUPPORTED, "fragless: the device has no virtual memory management; use policy:cca");
    /* The struct starts a page, so its hot fields (the counters every operation writes,
     * the stream lookup's cache) lie at the same place in a page whatever was allocated
     * before it: at some other places the same build ran 8-10% slower per pair, on one
     * list of traces and not another (docs/PERFORMANCE.md, "placement in memory"). */
    fx_policy *f = NULL;
    if (posix_memalign((void **)&f, 4096, sizeof *f) != 0 || !f)
        return fli_fail(FL_ERR_NOMEM, "fragless: host memory");
    memset(f, 0, sizeof *f);
    f->base.ops = &fli_policy_fragless;
    f->base.dev = dev;
    f->gran = dev->granularity;
    f->gran_log = (unsigned)fli_log2_floor(f->gran);
    f->max_pages = limit_pages(f);
    /* Measured on ../shared/traces (ARCHITECTURE.md): an eighth of a page. */
    f->small_limit = cfg->small_size ? cfg->small_size : f->gran / 8;
    f->last_heap[0] = f->last_heap[1] = &no_heap; /* no heap yet */
    /* The pools hold at most every handle of their kind; they grow with them (pool_grow). */
    if (fli_table_grow((void **)&f->pool, sizeof *f->pool, 0, 1024) != FL_OK) {
        free(f);
        return fli_fail(FL_ERR_NOMEM, "fragless: host memory");
    }
    f->cap_pool = 1024;
    if (fli_table_grow((void **)&f->cpool, sizeof *f->cpool, 0, 64) != FL_OK) {
        fli_table_free(f->pool, sizeof *f->pool, f->cap_pool);
        free(f);
        return fli_fail(FL_ERR_NOMEM, "fragless: host memory");
    }
    f->cap_cpool = 64;
    *out = &f->base;
    return FL_OK;
}

const fli_policy_ops fli_policy_fragless = {
    .name = "fragless",
    .create = fx_create,
    .destroy = fx_destroy,
    .alloc = fx_alloc,
    .alloc_local = fx_alloc_local,
    .free_local = fx_free_local,
    .local_missed = fx_local_missed,
    .local_forget = fx_local_forget,
    .free = fx_free,
    .block_size = fx_block_size,
    .block_stream = fx_block_stream,
    .stream_gone = fx_stream_gone,
    .empty_cache = fx_empty_cache,
    .check = fx_check,
    .query = fx_query,
    .limit_changed = fx_limit_changed,
    .walk = fx_walk,
};
