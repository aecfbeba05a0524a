/* The conformance suite: every policy of fl_policy_names() passes the same checks, through
 * the public API only. Long seeded sequences against a reference model, failed requests
 * and misuse that change nothing, the stream rule, teardown, capacity pressure. */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_support.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

/* Streams are opaque ids (cudaStream_t): 0 is the default stream, the others look like
 * the pointers they are in CUDA, so nothing may assume small or dense ids. */
static const uint64_t STREAMS[3] = {0, UINT64_C(0x7f3a5c001230), UINT64_C(0x55d0e4a8b9c0)};

static uint64_t align512(uint64_t x) { return (x + 511) & ~UINT64_C(511); }

static fl_stats stats(const fl_allocator *a)
{
    fl_stats s;
    fl_get_stats(a, &s);
    return s;
}

/* Points after which no earlier work can still be running: an explicit synchronize, or
 * a cudaFree (mem_free), which synchronizes the device before it returns. */
static uint64_t sync_points(const fl_device *d)
{
    fl_device_counters c = counters(d);
    return c.calls[FL_CALL_SYNC] + c.calls[FL_CALL_MEM_FREE];
}

/* fragless and nocache size a block as the request rounded up to 512 B and nothing
 * more; the cca policies may hand out more (PyTorch rounding, unsplit remainders). */
static int exact_policy(const char *policy)
{
    return strcmp(policy, "fragless") == 0 || strcmp(policy, "nocache") == 0;
}

/* nocache caches nothing and its cudaFree synchronizes: streams never matter to it. */
static int caching_policy(const char *policy) { return strcmp(policy, "nocache") != 0; }

#define CHECK_ALLOCATOR(a)                                                             \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if (fl_allocator_check(a) != 0) {                                              \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: self-check failed: %s\n", __FILE__, __LINE__,      \
                    fl_last_error());                                                  \
        }                                                                              \
    } while (0)

/* ---- reference model ------------------------------------------------------------ */

typedef struct blk {
    uint64_t addr, size, rsize, stream;
} blk;

/* Disjoint [lo, hi) intervals in address order. */
typedef struct span {
    uint64_t lo, hi;
} span;

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap * 2 : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * elem);
    if (!q) {
        fprintf(stderr, "test: out of host memory\n");
        exit(1);
    }
    *cap = c;
    return q;
}

/* First interval whose end is above x. */
static size_t spans_find(const spans *s, uint64_t x)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->v[mid].hi <= x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int spans_overlap(const spans *s, uint64_t lo, uint64_t hi)
{
    size_t i = spans_find(s, lo);
    return i < s->n && s->v[i].lo < hi;
}

/* Adds [lo, hi), merging what it touches, so the set stays small and sorted. */
static void spans_add(spans *s, uint64_t lo, uint64_t hi)
{
    size_t i = lo ? spans_find(s, lo - 1) : 0, j = i;
    while (j < s->n && s->v[j].lo <= hi) {
        if (s->v[j].lo < lo)
            lo = s->v[j].lo;
        if (s->v[j].hi > hi)
            hi = s->v[j].hi;
        j++;
    }
    if (j == i) {
        s->v = grow(s->v, &s->cap, s->n + 1, sizeof *s->v);
        memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof *s->v);
        s->n++;
    } else {
        memmove(&s->v[i + 1], &s->v[j], (s->n - j) * sizeof *s->v);
        s->n -= j - i - 1;
    }
    s->v[i] = (span){lo, hi};
}

/* One seeded run of one policy on one device. */
typedef struct run {
    const char *policy, *device;
    uint64_t seed;
    long step;
    const char *op;
    fl_device *d;
    fl_allocator *a;
    uint64_t capacity, gran;
    blk *live;               /* sorted by address */
    size_t n, cap;
    uint64_t live_bytes;     /* sum of rsize */
    uint64_t req_bytes, req_total, req_freed, req_peak; /* requested sizes: live, in, out, peak */
    uint64_t allocs, frees, ooms;
    uint64_t max_allocated;  /* highest allocated_bytes seen */
    fl_stats last;           /* stats after the previous step */
    spans dirty[3];          /* per stream: freed since the last sync point */
    uint64_t syncs;          /* sync_points() when dirty was last cleared */
    uint64_t recent[16];     /* addresses freed lately, for double frees */
    int failed;
} run;

static void run_fail(run *r, int line, const char *what)
{
    fl_test_failures++;
    r->failed = 1;
    fprintf(stderr, "%s:%d: %s on %s, seed %#llx, step %ld (%s): CHECK failed: %s\n", __FILE__, line,
            r->policy, r->device, (unsigned long long)r->seed, r->step, r->op, what);
}

#define EXPECT(r, cond)                                                                \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if (!(cond))                                                                   \
            run_fail(r, __LINE__, #cond);                                              \
    } while (0)

#define EXPECT_EQ(r, x, y)                                                             \
    do {                                                                               \
        uint64_t x_ = (uint64_t)(x), y_ = (uint64_t)(y);                               \
        fl_test_checks++;                                                              \
        if (x_ != y_) {                                                                \
            char m_[256];                                                              \
            snprintf(m_, sizeof m_, "%s == %s (%llu vs %llu)", #x, #y,                 \
                     (unsigned long long)x_, (unsigned long long)y_);                  \
            run_fail(r, __LINE__, m_);                                                 \
        }                                                                              \
    } while (0)

/* Index of the first live block at or above addr. */
static size_t live_find(const run *r, uint64_t addr)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->live[mid].addr < addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int is_live_start(const run *r, uint64_t addr)
{
    size_t i = live_find(r, addr);
    return i < r->n && r->live[i].addr == addr;
}

static int stream_index(uint64_t stream)
{
    for (int i = 0; i < 3; i++)
        if (STREAMS[i] == stream)
            return i;
    return -1;
}

/* The model forgets dirty memory once the device has synchronized. */
static void note_syncs(run *r)
{
    uint64_t s = sync_points(r->d);
    if (s != r->syncs) {
        for (int i = 0; i < 3; i++)
            r->dirty[i].n = 0;
        r->syncs = s;
    }
}

/* Pages of `gran` bytes that the blocks v[0..n) (in address order) touch: what fragless,
 * whose pages can back any address, must hold for them and no more. */
/* Pages the blocks touch (blocks in address order), each counted once; a block of at
 * least chunk_from bytes counts the whole chunks of `chunk` pages it lies in. */
static uint64_t pages_covered(const blk *v, size_t n, uint64_t gran, uint64_t chunk_from, uint64_t chunk)
{
    uint64_t pages = 0, next = 0; /* pages below `next` are counted */
    for (size_t i = 0; i < n; i++) {
        uint64_t p0 = v[i].addr / gran, p1 = (v[i].addr + v[i].rsize - 1) / gran;
        if (v[i].size >= chunk_from) {
            p0 = p0 / chunk * chunk;
            p1 = (p1 / chunk + 1) * chunk - 1;
        }
        if (p0 < next)
            p0 = next;
        if (p1 >= p0)
            pages += p1 - p0 + 1;
        if (p1 + 1 > next)
            next = p1 + 1;
    }
    return pages;
}

static uint64_t pages_touched(const blk *v, size_t n, uint64_t gran)
{
    return pages_covered(v, n, gran, UINT64_MAX, 1);
}

static uint64_t pinned_pages(const run *r) { return pages_touched(r->live, r->n, r->gran); }

/* The most fragless may hold for the live blocks: while it holds little of its limit, a
 * large heap (requests of at least 1/8 page) maps aligned chunks of 16 pages with one
 * handle, and a chunk goes back only whole; so a large block's pages count as the whole
 * chunks they lie in. */
static uint64_t held_pages_bound(const run *r) { return pages_covered(r->live, r->n, r->gran, r->gran / 8, 16); }

/* Every invariant the model can see, after every step. */
static void verify(run *r)
{
    fl_test_checks++;
    if (fl_allocator_check(r->a) != 0) {
        char m[600];
        snprintf(m, sizeof m, "fl_allocator_check(a) == 0: %s", fl_last_error());
        run_fail(r, __LINE__, m);
        return;
    }
    fl_stats s = stats(r->a);
    fl_device_counters c = counters(r->d);
    EXPECT_EQ(r, s.allocation.allocated, r->allocs);
    EXPECT_EQ(r, s.allocation.freed, r->frees);
    EXPECT_EQ(r, s.allocation.current, r->n);
    EXPECT(r, s.allocation.peak >= s.allocation.current);
    EXPECT_EQ(r, s.num_ooms, r->ooms);
    /* Requested bytes are the model's exactly, whatever the policy's rounding. */
    EXPECT_EQ(r, s.requested_bytes.current, r->req_bytes);
    EXPECT_EQ(r, s.requested_bytes.allocated, r->req_total);
    EXPECT_EQ(r, s.requested_bytes.freed, r->req_freed);
    EXPECT_EQ(r, s.requested_bytes.peak, r->req_peak);
    EXPECT(r, s.allocated_bytes.current >= r->live_bytes);
    if (exact_policy(r->policy))
        EXPECT_EQ(r, s.allocated_bytes.current, r->live_bytes);
    EXPECT_EQ(r, s.allocated_bytes.allocated - s.allocated_bytes.freed, s.allocated_bytes.current);
    EXPECT_EQ(r, s.active_bytes.current, s.allocated_bytes.current);
    /* Every policy holds at least what it hands out; nocache too, as the device charges
     * each cudaMalloc at least the request rounded to 512 B. */
    EXPECT(r, s.reserved_bytes.current >= s.allocated_bytes.current);
    EXPECT(r, s.reserved_bytes.current <= r->capacity);
    EXPECT_EQ(r, s.reserved_bytes.current, c.in_use);
    EXPECT_EQ(r, s.reserved_bytes.allocated - s.reserved_bytes.freed, s.reserved_bytes.current);
    EXPECT(r, s.allocated_bytes.peak >= s.allocated_bytes.current);
    EXPECT(r, s.reserved_bytes.peak >= s.reserved_bytes.current);
    EXPECT_EQ(r, s.reserved_bytes.peak, c.peak_in_use);
    EXPECT(r, s.allocated_bytes.peak >= r->last.allocated_bytes.peak);
    EXPECT(r, s.reserved_bytes.peak >= r->last.reserved_bytes.peak);
    /* What the policy holds but does not use: consistent with the reserved bytes. */
    if (strcmp(r->policy, "nocache") == 0) /* the device rounds cudaMalloc up: not reusable */
        EXPECT_EQ(r, s.free_in_reserved, 0);
    else
        EXPECT_EQ(r, s.free_in_reserved + s.allocated_bytes.current, s.reserved_bytes.current);
    EXPECT(r, s.cached_bytes <= s.free_in_reserved);
    EXPECT_EQ(r, s.inactive_split_bytes, s.free_in_reserved - s.cached_bytes);
    EXPECT(r, s.external_fragmentation >= 0.0 && s.external_fragmentation <= 1.0);
    EXPECT_EQ(r, s.num_device_alloc, c.calls[FL_CALL_CREATE] + c.calls[FL_CALL_MEM_ALLOC]);
    EXPECT_EQ(r, s.num_device_free, c.calls[FL_CALL_RELEASE] + c.calls[FL_CALL_MEM_FREE]);
    if (s.allocated_bytes.current > r->max_allocated)
        r->max_allocated = s.allocated_bytes.current;
    /* allocated only grows in fl_alloc, so its peak is exactly the highest value seen. */
    EXPECT_EQ(r, s.allocated_bytes.peak, r->max_allocated);
    r->last = s;
}

/* ---- operations ----------------------------------------------------------------- */

/* Tiny, small, medium and large requests, with now and then an exact multiple of 512,
 * a power of two or a whole number of 2 MiB pages: the edges of every rounding rule. */
static uint64_t gen_size(fl_rng *g)
{
    uint64_t c = fl_rng_below(g, 100), s;
    if (c < 40)
        s = 1 + fl_rng_below(g, 4 * KiB);
    else if (c < 70)
        s = 1 + fl_rng_below(g, 1 * MiB);
    else if (c < 92)
        s = 1 * MiB + 1 + fl_rng_below(g, 19 * MiB);
    else
        s = 20 * MiB + 1 + fl_rng_below(g, 180 * MiB);
    switch (fl_rng_below(g, 16)) {
    case 0:
        s = align512(s);
        break;
    case 1:
        while (s & (s - 1))
            s += s & -s;
        break;
    case 2:
        s = (s + 2 * MiB - 1) & ~(2 * MiB - 1);
        break;
    }
    return s;
}

/* Unmapping memory a kernel may still use is undefined, so a call that unmaps must
 * also have synchronized (their order inside the call is not observable). */
static void check_unmap_synced(run *r, const fl_device_counters *before)
{
    fl_device_counters c = counters(r->d);
    if (c.calls[FL_CALL_UNMAP] != before->calls[FL_CALL_UNMAP])
        EXPECT(r, c.calls[FL_CALL_SYNC] != before->calls[FL_CALL_SYNC]);
}

static void op_alloc(run *r, uint64_t size, uint64_t stream)
{
    r->op = "alloc";
    fl_stats before = stats(r->a);
    fl_device_counters cb = counters(r->d);
    uint64_t addr = 0;
    fl_status st = fl_alloc(r->a, size, stream, &addr);
    note_syncs(r);
    check_unmap_synced(r, &cb);
    fl_stats after = stats(r->a);
    if (st == FL_ERR_OOM) {
        /* A failed request changes nothing the caller owns; cache may have gone back. */
        r->ooms++;
        EXPECT_EQ(r, after.allocated_bytes.current, before.allocated_bytes.current);
        EXPECT_EQ(r, after.allocation.allocated, before.allocation.allocated);
        EXPECT(r, fl_last_error()[0] != 0);
        /* With nothing live, every policy can serve half the device. */
        EXPECT(r, !(r->n == 0 && size <= r->capacity / 2));
        /* fragless backs any address with any page and reserves twice the device in
         * addresses per heap: it refuses only when the free pages do not suffice (one
         * page of slack for a block that straddles pages), not counting the free pages
         * of chunks that live blocks touch (held_pages_bound). */
        if (strcmp(r->policy, "fragless") == 0) {
            uint64_t need = (align512(size) + r->gran - 1) / r->gran + 1;
            uint64_t held = held_pages_bound(r), cap_pages = r->capacity / r->gran;
            uint64_t free_pages = cap_pages > held ? cap_pages - held : 0;
            if (free_pages >= need) {
                char m[200];
                snprintf(m, sizeof m, "fragless refused %llu B with %llu free pages of %llu, %llu needed",
                         (unsigned long long)size, (unsigned long long)free_pages,
                         (unsigned long long)r->gran, (unsigned long long)need);
                run_fail(r, __LINE__, m);
            }
        }
        return;
    }
    if (st != FL_OK) {
        char m[600];
        snprintf(m, sizeof m, "fl_alloc(%llu) returned %s, want ok or out of memory: %s",
                 (unsigned long long)size, fl_status_str(st), fl_last_error());
        run_fail(r, __LINE__, m);
        return;
    }
    blk b = {addr, size, align512(size), stream};
    EXPECT(r, addr % 512 == 0);
    EXPECT(r, addr + b.rsize > addr); /* no wrap past 2^64 */
    size_t i = live_find(r, addr);
    int overlap = (i < r->n && addr + b.rsize > r->live[i].addr) ||
                  (i > 0 && r->live[i - 1].addr + r->live[i - 1].rsize > addr);
    if (overlap) {
        char m[200];
        snprintf(m, sizeof m, "[%s, +%llu) on stream %s overlaps the live block at %s", fl_test_hex(addr),
                 (unsigned long long)b.rsize, fl_test_hex(stream),
                 fl_test_hex(i < r->n && addr + b.rsize > r->live[i].addr ? r->live[i].addr : r->live[i - 1].addr));
        run_fail(r, __LINE__, m);
        return;
    }
    /* The stream rule: memory another stream freed since the last sync point may still
     * be in use by that stream's kernels. */
    int si = stream_index(stream);
    for (int t = 0; t < 3; t++) {
        if (t != si && spans_overlap(&r->dirty[t], addr, addr + b.rsize)) {
            char m[200];
            snprintf(m, sizeof m, "[%s, +%llu) on stream %s reuses memory stream %s freed, with no "
                     "synchronization since", fl_test_hex(addr), (unsigned long long)b.rsize, fl_test_hex(stream),
                     fl_test_hex(STREAMS[t]));
            run_fail(r, __LINE__, m);
        }
    }
    EXPECT(r, after.allocated_bytes.current - before.allocated_bytes.current >= b.rsize);
    if (exact_policy(r->policy))
        EXPECT_EQ(r, after.allocated_bytes.current - before.allocated_bytes.current, b.rsize);
    r->live = grow(r->live, &r->cap, r->n + 1, sizeof *r->live);
    memmove(&r->live[i + 1], &r->live[i], (r->n - i) * sizeof *r->live);
    r->live[i] = b;
    r->n++;
    r->live_bytes += b.rsize;
    r->req_bytes += b.size;
    r->req_total += b.size;
    if (r->req_bytes > r->req_peak)
        r->req_peak = r->req_bytes;
    r->allocs++;
}

static void op_free(run *r, size_t i)
{
    r->op = "free";
    blk b = r->live[i];
    fl_stats before = stats(r->a);
    fl_device_counters cb = counters(r->d);
    fl_status st = fl_free(r->a, b.addr);
    check_unmap_synced(r, &cb);
    if (st != FL_OK) {
        char m[600];
        snprintf(m, sizeof m, "fl_free(%s) of a live block returned %s: %s", fl_test_hex(b.addr), fl_status_str(st),
                 fl_last_error());
        run_fail(r, __LINE__, m);
        return;
    }
    fl_stats after = stats(r->a);
    EXPECT(r, before.allocated_bytes.current - after.allocated_bytes.current >= b.rsize);
    if (exact_policy(r->policy))
        EXPECT_EQ(r, before.allocated_bytes.current - after.allocated_bytes.current, b.rsize);
    memmove(&r->live[i], &r->live[i + 1], (r->n - i - 1) * sizeof *r->live);
    r->n--;
    r->live_bytes -= b.rsize;
    r->req_bytes -= b.size;
    r->req_freed += b.size;
    r->frees++;
    r->recent[r->frees % 16] = b.addr;
    /* Dirty until a sync point; a synchronizing free (cudaFree) cleans it at once. */
    spans_add(&r->dirty[stream_index(b.stream)], b.addr, b.addr + b.rsize);
    note_syncs(r);
}

/* A free the allocator must refuse: an address that starts no live block. */
static void op_bad_free(run *r, uint64_t addr)
{
    r->op = "bad free";
    if (is_live_start(r, addr))
        return;
    fl_stats before = stats(r->a);
    fl_device_counters cb = counters(r->d);
    fl_status st = fl_free(r->a, addr);
    fl_stats after = stats(r->a);
    fl_device_counters ca = counters(r->d);
    if (st != FL_ERR_NOT_FOUND) {
        char m[600];
        snprintf(m, sizeof m, "fl_free(%s), no live block's start, returned %s, want not found: %s",
                 fl_test_hex(addr), fl_status_str(st), fl_last_error());
        run_fail(r, __LINE__, m);
        return;
    }
    if (strstr(fl_last_error(), fl_test_hex(addr)) == NULL) {
        char m[600];
        snprintf(m, sizeof m, "the message of a refused free names %s: \"%s\"", fl_test_hex(addr), fl_last_error());
        run_fail(r, __LINE__, m);
    }
    /* Refused misuse touches neither the statistics nor the device. */
    EXPECT(r, memcmp(&before, &after, sizeof before) == 0);
    EXPECT(r, memcmp(&cb, &ca, sizeof cb) == 0);
}

static void op_zero(run *r, uint64_t stream)
{
    r->op = "alloc 0";
    fl_stats before = stats(r->a);
    fl_device_counters cb = counters(r->d);
    uint64_t addr = 0;
    fl_status st = fl_alloc(r->a, 0, stream, &addr);
    fl_stats after = stats(r->a);
    fl_device_counters ca = counters(r->d);
    EXPECT(r, st == FL_ERR_INVALID);
    EXPECT(r, memcmp(&before, &after, sizeof before) == 0);
    EXPECT(r, memcmp(&cb, &ca, sizeof cb) == 0);
}

static void op_empty_cache(run *r)
{
    r->op = "empty_cache";
    fl_stats before = stats(r->a);
    fl_device_counters cb = counters(r->d);
    fl_status st = fl_empty_cache(r->a);
    note_syncs(r);
    check_unmap_synced(r, &cb);
    fl_stats after = stats(r->a);
    EXPECT(r, st == FL_OK);
    EXPECT(r, after.reserved_bytes.current <= before.reserved_bytes.current);
    EXPECT_EQ(r, after.allocated_bytes.current, before.allocated_bytes.current);
    if (r->n == 0)
        EXPECT_EQ(r, after.reserved_bytes.current, 0);
    /* fragless keeps no cache after empty_cache: the pages live blocks touch, and the
     * rest of the chunks they touch (a chunk is unmapped only whole), no more. A stitched
     * block's first and last pages are other pages mapped again: two of its pages may
     * hold no memory of their own. */
    if (strcmp(r->policy, "fragless") == 0) {
        EXPECT(r, after.reserved_bytes.current + 2 * after.stitched_blocks * r->gran >= pinned_pages(r) * r->gran);
        EXPECT(r, after.reserved_bytes.current <= held_pages_bound(r) * r->gran);
    }
}

/* A misuse chosen at random: a free inside a live block, a double free, a wild free, a
 * zero-byte request. */
static void op_misuse(run *r, fl_rng *g)
{
    uint64_t k = fl_rng_below(g, 4);
    if (k == 0 && r->n) {
        blk b = r->live[fl_rng_below(g, r->n)];
        if (b.rsize >= 1024)
            op_bad_free(r, b.addr + 512 * (1 + fl_rng_below(g, b.rsize / 512 - 1)));
    } else if (k == 1 && r->frees) {
        /* recent[] fills from index 1: frees are counted before they are stored. */
        uint64_t j = r->frees < 16 ? 1 + fl_rng_below(g, r->frees) : fl_rng_below(g, 16);
        op_bad_free(r, r->recent[j]);
    } else if (k == 2) {
        /* Near a live block (often another block's interior or a cached hole), or anywhere. */
        uint64_t base = r->n ? r->live[fl_rng_below(g, r->n)].addr : 0;
        if (fl_rng_below(g, 2))
            op_bad_free(r, base + 512 * fl_rng_below(g, 1 << 16));
        else
            op_bad_free(r, fl_rng_next(g) & ~UINT64_C(511));
    } else {
        op_zero(r, STREAMS[fl_rng_below(g, 3)]);
    }
}

/* ---- the seeded sequences --------------------------------------------------------- */

static int quick(void)
{
    const char *q = getenv("FL_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

static void random_run(const char *policy, const char *device, uint64_t capacity, uint64_t gran, uint64_t seed,
                       long ops, int free_all_at_end)
{
    run r;
    memset(&r, 0, sizeof r);
    r.policy = policy;
    r.device = device;
    r.seed = seed;
    r.op = "create";
    r.d = fl_test_sim(capacity, gran);
    r.capacity = fl_device_capacity(r.d);
    r.gran = fl_device_granularity(r.d);
    r.a = fl_test_allocator(policy, r.d);
    fl_rng g = {seed};
    verify(&r);
    /* Keep about `target` blocks live: long enough to fragment, small enough to check. */
    const size_t target = 160;
    for (r.step = 0; r.step < ops && !r.failed; r.step++) {
        uint64_t dice = fl_rng_below(&g, 1000);
        if (dice < 2) {
            op_empty_cache(&r);
        } else if (dice < 25) {
            op_misuse(&r, &g);
        } else if (r.n == 0 || fl_rng_below(&g, 100) < (r.n < target ? 62u : 38u)) {
            /* Two statements: the order of argument evaluation is the compiler's. */
            uint64_t size = gen_size(&g);
            op_alloc(&r, size, STREAMS[fl_rng_below(&g, 3)]);
        } else {
            op_free(&r, (size_t)fl_rng_below(&g, r.n));
        }
        if (!r.failed)
            verify(&r);
    }
    if (!r.failed && free_all_at_end) {
        /* Freeing everything, then empty_cache, gives every byte back. */
        while (r.n && !r.failed) {
            op_free(&r, (size_t)fl_rng_below(&g, r.n));
            if (!r.failed)
                verify(&r);
            r.step++;
        }
        op_empty_cache(&r);
        verify(&r);
        EXPECT_EQ(&r, stats(r.a).allocated_bytes.current, 0);
        EXPECT_EQ(&r, counters(r.d).in_use, 0);
    }
    /* Teardown returns everything, live blocks included, and leaves the device as it
     * found it: on the unlimited device no call may fail, so they must pair up. */
    r.op = "destroy";
    fl_allocator_destroy(r.a);
    fl_device_counters c = counters(r.d);
    EXPECT_EQ(&r, c.in_use, 0);
    if (capacity == 0) {
        EXPECT_EQ(&r, c.failed_calls, 0);
        EXPECT_EQ(&r, c.calls[FL_CALL_RESERVE], c.calls[FL_CALL_ADDR_FREE]);
        EXPECT_EQ(&r, c.calls[FL_CALL_CREATE], c.calls[FL_CALL_RELEASE]);
        EXPECT_EQ(&r, c.calls[FL_CALL_MEM_ALLOC], c.calls[FL_CALL_MEM_FREE]);
        EXPECT(&r, c.calls[FL_CALL_UNMAP] <= c.calls[FL_CALL_MAP]); /* one unmap may cover several */
    }
    fl_device_destroy(r.d);
    for (int i = 0; i < 3; i++)
        free(r.dirty[i].v);
    free(r.live);
}

/* ---- misuse -------------------------------------------------------------------- */

/* A refused free: not found, a message naming the address, and nothing changed. */
static void refused_free(fl_allocator *a, fl_device *d, uint64_t addr, int line)
{
    fl_stats sb = stats(a), sa;
    fl_device_counters cb = counters(d), ca;
    fl_status st = fl_free(a, addr);
    sa = stats(a);
    ca = counters(d);
    fl_test_checks += 4;
    if (st != FL_ERR_NOT_FOUND || strstr(fl_last_error(), fl_test_hex(addr)) == NULL ||
        memcmp(&sb, &sa, sizeof sb) != 0 || memcmp(&cb, &ca, sizeof cb) != 0) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: fl_free(%s): %s (\"%s\"), want not found naming the address and "
                "no change (stats %s, device %s)\n", __FILE__, line, fl_test_hex(addr), fl_status_str(st),
                fl_last_error(), memcmp(&sb, &sa, sizeof sb) ? "changed" : "same",
                memcmp(&cb, &ca, sizeof cb) ? "changed" : "same");
    }
    CHECK_ALLOCATOR(a);
}

static void test_misuse(const char *policy)
{
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = fl_test_allocator(policy, d);
    uint64_t x = 0, y = 0, z = 0;
    CHECK_OK(fl_alloc(a, 4096, STREAMS[0], &x));
    CHECK_OK(fl_alloc(a, 3 * MiB, STREAMS[1], &y));
    CHECK_OK(fl_alloc(a, 600, STREAMS[0], &z));
    CHECK_OK(fl_free(a, z)); /* z's memory is now cached (or gone, for nocache) */
    CHECK_ALLOCATOR(a);
    const uint64_t bad[] = {
        512, 0, UINT64_MAX & ~UINT64_C(511), UINT64_C(0x7f0000000000), /* never returned */
        y + 64 * MiB, x + 4096, y + 3 * MiB,                            /* just past blocks */
        x + 512, y + 512, y + 1 * MiB, y + 3 * MiB - 512,               /* inside live blocks */
        z, z + 512,                                                      /* freed: double free */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (bad[i] != x && bad[i] != y)
            refused_free(a, d, bad[i], __LINE__);

    fl_stats sb = stats(a);
    fl_device_counters cb = counters(d);
    uint64_t addr = 0;
    CHECK_STATUS(fl_alloc(a, 0, STREAMS[2], &addr), FL_ERR_INVALID);
    fl_stats sa = stats(a);
    fl_device_counters ca = counters(d);
    CHECK(memcmp(&sb, &sa, sizeof sb) == 0);
    CHECK(memcmp(&cb, &ca, sizeof cb) == 0);

    /* The refusals changed nothing: the live blocks free normally, exactly once. */
    CHECK_OK(fl_free(a, x));
    CHECK_OK(fl_free(a, y));
    refused_free(a, d, y, __LINE__);
    refused_free(a, d, x, __LINE__);
    CHECK_EQ_U64(stats(a).allocation.freed, 3);
    CHECK_EQ_U64(stats(a).allocated_bytes.current, 0);
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(counters(d).in_use, 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Requests the device cannot hold, some so big their rounding would wrap past 2^64:
 * out of memory, counted, nothing else changed. And one that fits but is larger than
 * any fixed-size reservation a policy might make (more than 4 TiB). Pages of 1 GiB keep
 * the physical page count small. */
static void huge_requests(const char *policy)
{
    const uint64_t cap = 16 * TiB;
    fl_device *d = fl_test_sim(cap, 1 * GiB);
    fl_allocator *a = fl_test_allocator(policy, d);
    const uint64_t sizes[] = {cap + 1, 2 * cap, UINT64_C(1) << 62, UINT64_MAX - 511, UINT64_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fl_stats sb = stats(a);
        uint64_t addr = 0;
        fl_status st = fl_alloc(a, sizes[i], STREAMS[1], &addr);
        fl_stats sa = stats(a);
        fl_test_checks++;
        if (st != FL_ERR_OOM || sa.num_ooms != sb.num_ooms + 1 || sa.allocated_bytes.current != sb.allocated_bytes.current ||
            sa.allocation.allocated != sb.allocation.allocated) {
            fl_test_failures++;
            fprintf(stderr, "%s:%d: %s: fl_alloc(%llu) returned %s (\"%s\"), num_ooms %llu -> %llu; "
                    "want out of memory, counted\n", __FILE__, __LINE__, policy,
                    (unsigned long long)sizes[i], fl_status_str(st), fl_last_error(),
                    (unsigned long long)sb.num_ooms, (unsigned long long)sa.num_ooms);
        }
        CHECK_ALLOCATOR(a);
    }
    uint64_t addr = 0, size = 5 * TiB;
    fl_status st = fl_alloc(a, size, STREAMS[1], &addr);
    fl_test_checks++;
    if (st != FL_OK) {
        fl_test_failures++;
        fprintf(stderr, "%s:%d: %s: fl_alloc(5 TiB) on an empty 16 TiB device returned %s: %s\n",
                __FILE__, __LINE__, policy, fl_status_str(st), fl_last_error());
    } else {
        CHECK(addr % 512 == 0);
        CHECK(stats(a).allocated_bytes.current >= size);
        CHECK_ALLOCATOR(a);
        CHECK_OK(fl_free(a, addr));
    }
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(counters(d).in_use, 0);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* Runs fn(policy) in a child process, so a crash is reported as this policy's failure
 * and the rest of the suite still runs. Without fork it runs in place. */
static void isolated(const char *what, void (*fn)(const char *), const char *policy)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fn(policy);
        return;
    }
    if (pid == 0) {
        fl_test_failures = 0;
        fn(policy);
        fflush(NULL);
        _exit(fl_test_failures ? 1 : 0);
    }
    int status = 0;
    fl_test_checks++;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fl_test_failures++;
        if (WIFSIGNALED(status))
            fprintf(stderr, "%s:%d: %s, policy %s: crashed with signal %d (%s)\n", __FILE__, __LINE__,
                    what, policy, WTERMSIG(status), strsignal(WTERMSIG(status)));
        else
            fprintf(stderr, "%s:%d: %s, policy %s: failed (above)\n", __FILE__, __LINE__, what, policy);
    }
}

/* ---- the stream rule ---------------------------------------------------------------- */

static int overlaps(uint64_t a, uint64_t an, uint64_t b, uint64_t bn)
{
    return a < b + align512(bn) && b < a + align512(an);
}

/* A block freed on stream s1 may still be read or written by kernels queued on s1; the
 * caller may reuse it on s1 at once (stream order), but another stream only after the
 * device synchronized. Observable through the API are addresses and sync points (an
 * explicit synchronize, or a cudaFree, which synchronizes). Asserted here:
 *  - every policy: memory freed on s1 is handed to s2 only if a sync point lies between
 *    the free and the allocation (the seeded runs check the same after every step);
 *  - fragless, cca, cca-expandable (caching): on an unlimited device, the next request
 *    of the same size on s2 gets a different, non-overlapping block, and the same request
 *    on s1 again is served from the cache (no new device memory);
 *  - every policy, on a device that fits the block once: the request on s2 succeeds
 *    (cached memory is given back) with a sync point since the free; for the caching
 *    policies that synchronize is made by the allocation itself, before the reuse;
 *  - every policy: after fl_empty_cache, reserved memory is down to what live blocks
 *    need (0 here), and the request on s2 is served without any further synchronize.
 * nocache is exempt from the caching items: it frees with cudaFree, so the sync point
 * comes with the free (asserted by the first item). fragless gives each stream its own
 * address range, so its addresses never collide; its physical pages move between streams
 * only through a reclaim, which the third item shows to synchronize first. */
static void test_streams(const char *policy)
{
    const uint64_t s1 = STREAMS[1], s2 = STREAMS[2];
    const int caching = caching_policy(policy);
    const uint64_t sizes[] = {1000, 600 * KiB, 5 * MiB, 100 * MiB};
    fl_device *d = fl_test_sim(0, 0);
    fl_allocator *a = fl_test_allocator(policy, d);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint64_t S = sizes[i], x = 0, y = 0, z = 0;
        CHECK_OK(fl_alloc(a, S, s1, &x));
        uint64_t sp = sync_points(d);
        CHECK_OK(fl_free(a, x));
        CHECK_OK(fl_alloc(a, S, s2, &y));
        CHECK(!overlaps(x, S, y, S) || sync_points(d) != sp);
        if (caching) {
            fl_test_checks++;
            if (x == y || overlaps(x, S, y, S)) {
                fl_test_failures++;
                fprintf(stderr, "%s:%d: %s: %llu B freed on stream 1 at %s, handed to stream 2 at %s\n",
                        __FILE__, __LINE__, policy, (unsigned long long)S, fl_test_hex(x), fl_test_hex(y));
            }
            fl_device_counters cb = counters(d);
            CHECK_OK(fl_alloc(a, S, s1, &z));
            fl_device_counters ca = counters(d);
            CHECK_EQ_U64(ca.in_use, cb.in_use);
            CHECK_EQ_U64(ca.calls[FL_CALL_CREATE] + ca.calls[FL_CALL_MEM_ALLOC],
                         cb.calls[FL_CALL_CREATE] + cb.calls[FL_CALL_MEM_ALLOC]);
            CHECK_OK(fl_free(a, z));
        }
        CHECK_OK(fl_free(a, y));
        CHECK_ALLOCATOR(a);
    }
    fl_allocator_destroy(a);
    fl_device_destroy(d);

    /* 100 MiB blocks on 150 MiB: one fits, two do not. */
    const uint64_t S = 100 * MiB;
    d = fl_test_sim(150 * MiB, 0);
    a = fl_test_allocator(policy, d);
    uint64_t x = 0, y = 0;
    CHECK_OK(fl_alloc(a, S, s1, &x));
    uint64_t sp = sync_points(d);
    CHECK_OK(fl_free(a, x));
    uint64_t syncs = counters(d).calls[FL_CALL_SYNC];
    fl_status st = fl_alloc(a, S, s2, &y);
    CHECK_OK(st);
    CHECK(st != FL_OK || sync_points(d) > sp);
    if (caching)
        CHECK(st != FL_OK || counters(d).calls[FL_CALL_SYNC] > syncs);
    if (st == FL_OK)
        CHECK_OK(fl_free(a, y));
    CHECK_ALLOCATOR(a);

    /* empty_cache synchronizes and returns the cache: then s2 needs no sync of its own. */
    CHECK_OK(fl_alloc(a, S, s1, &x));
    CHECK_OK(fl_free(a, x));
    uint64_t reserved = stats(a).reserved_bytes.current;
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(stats(a).reserved_bytes.current, 0);
    CHECK(caching ? reserved > 0 : reserved == 0);
    syncs = counters(d).calls[FL_CALL_SYNC];
    CHECK_OK(fl_alloc(a, S, s2, &y));
    CHECK_EQ_U64(counters(d).calls[FL_CALL_SYNC], syncs);
    CHECK_OK(fl_free(a, y));
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(counters(d).in_use, 0);
    CHECK_ALLOCATOR(a);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

/* ---- capacity pressure -------------------------------------------------------------- */

static int by_addr(const void *p, const void *q)
{
    const blk *a = p, *b = q;
    return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* 1 MiB blocks until the device is full, every other one freed, then a request larger
 * than any hole. fragless can back any address with any free page, so it must succeed
 * whenever the free pages suffice (with one page of slack for a placement that straddles
 * pages); the others are only recorded. With 2 MiB pages no page comes free (each keeps
 * one block); with 1 MiB pages half of them do, so that run must exercise the promise. */
static void test_pressure(const char *policy, uint64_t gran)
{
    const uint64_t cap = 64 * MiB, R = 8 * MiB;
    fl_device *d = fl_test_sim(cap, gran);
    fl_allocator *a = fl_test_allocator(policy, d);
    enum { MAXB = 256 };
    blk v[MAXB];
    size_t n = 0;
    fl_status st = FL_OK;
    while (n < MAXB) {
        uint64_t addr = 0;
        if ((st = fl_alloc(a, 1 * MiB, STREAMS[0], &addr)) != FL_OK)
            break;
        v[n++] = (blk){addr, 1 * MiB, 1 * MiB, STREAMS[0]};
    }
    CHECK_STATUS(st, FL_ERR_OOM);
    CHECK(n > 0);
    CHECK_ALLOCATOR(a);
    qsort(v, n, sizeof *v, by_addr);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % 2 == 0)
            CHECK_OK(fl_free(a, v[i].addr));
        else
            v[kept++] = v[i];
    }
    CHECK_ALLOCATOR(a);
    uint64_t largest_hole = 0;
    for (size_t i = 1; i < kept; i++) {
        uint64_t hole = v[i].addr - (v[i - 1].addr + v[i - 1].rsize);
        if (hole > largest_hole)
            largest_hole = hole;
    }
    CHECK(largest_hole < R);
    uint64_t free_pages = cap / gran - pages_touched(v, kept, gran);
    int pages_suffice = free_pages >= R / gran + 1;
    uint64_t addr = 0;
    fl_stats before = stats(a);
    st = fl_alloc(a, R, STREAMS[0], &addr);
    fl_stats after = stats(a);
    printf("capacity pressure, %-14s %llu MiB pages: %zu x 1 MiB filled 64 MiB, %zu freed (%llu pages "
           "free), 8 MiB request: %s, reserved %llu -> %llu MiB\n", policy,
           (unsigned long long)(gran / MiB), n, n - kept, (unsigned long long)free_pages,
           st == FL_OK ? "ok" : fl_status_str(st), (unsigned long long)(before.reserved_bytes.current / MiB),
           (unsigned long long)(after.reserved_bytes.current / MiB));
    if (strcmp(policy, "fragless") == 0) {
        if (gran == 1 * MiB)
            CHECK(pages_suffice); /* else the scenario proves nothing */
        if (pages_suffice) {
            fl_test_checks++;
            if (st != FL_OK) {
                fl_test_failures++;
                fprintf(stderr, "%s:%d: fragless: 8 MiB refused with %llu free pages of %llu MiB: %s\n",
                        __FILE__, __LINE__, (unsigned long long)free_pages,
                        (unsigned long long)(gran / MiB), fl_last_error());
            }
        }
    }
    CHECK(st == FL_OK || st == FL_ERR_OOM);
    CHECK_ALLOCATOR(a);
    if (st == FL_OK)
        CHECK_OK(fl_free(a, addr));
    for (size_t i = 0; i < kept; i++)
        CHECK_OK(fl_free(a, v[i].addr));
    CHECK_OK(fl_empty_cache(a));
    CHECK_EQ_U64(counters(d).in_use, 0);
    CHECK_ALLOCATOR(a);
    fl_allocator_destroy(a);
    fl_device_destroy(d);
}

int main(void)
{
    /* Seeds x ops per policy and device (three: unlimited, 256 MiB, 256 MiB of 64 KiB
     * pages): 4 x 10000 = 40k steps, each fully checked;
     * FL_TEST_QUICK=1 (for valgrind) runs a tenth of that. */
    const long ops = quick() ? 1000 : 10000;
    const uint64_t seeds[] = {0x9e3779b97f4a7c15ull, 0x243f6a8885a308d3ull, 0x13198a2e03707344ull,
                              0xa4093822299f31d0ull};
    const char *const *names = fl_policy_names();
    int n_policies = 0;
    for (const char *const *p = names; *p; p++, n_policies++) {
        const char *policy = *p;
        test_misuse(policy);
        isolated("huge requests", huge_requests, policy);
        test_streams(policy);
        test_pressure(policy, 2 * MiB);
        test_pressure(policy, 1 * MiB);
        for (size_t k = 0; k < sizeof seeds / sizeof seeds[0]; k++) {
            /* Odd seeds end by destroying the allocator with blocks still live. */
            random_run(policy, "unlimited", 0, 0, seeds[k], ops, k % 2 == 0);
            random_run(policy, "256 MiB", 256 * MiB, 0, seeds[k] + 1, ops, k % 2 == 0);
            /* Pages of 64 KiB: the same sizes span 32 times as many pages, and what
             * follows the page size (the small-request limit, lending small blocks from
             * 1/32 page, chunks, mapped runs) crosses what does not (the quick lists'
             * 4 KiB): a lent block once went onto a quick list there (RELIABILITY.md). */
            random_run(policy, "256 MiB of 64 KiB pages", 256 * MiB, 64 * KiB, seeds[k] + 2, ops, k % 2 == 0);
        }
    }
    CHECK(n_policies == 4); /* a new policy joins the suite by being registered */
    /* Layers over a policy (registrable:SIZE: large blocks one physical allocation each)
     * pass the same suite, as policies whose sizes are not exact. */
    static const char *const layered[] = {"policy:fragless,registrable:1MiB", "policy:cca,registrable:3MiB"};
    for (size_t i = 0; i < sizeof layered / sizeof layered[0]; i++) {
        const char *conf = layered[i];
        test_misuse(conf);
        isolated("huge requests", huge_requests, conf);
        test_streams(conf);
        test_pressure(conf, 2 * MiB);
        test_pressure(conf, 1 * MiB);
        for (size_t k = 0; k < sizeof seeds / sizeof seeds[0]; k++) {
            random_run(conf, "unlimited", 0, 0, seeds[k], ops, k % 2 == 0);
            random_run(conf, "256 MiB", 256 * MiB, 0, seeds[k] + 1, ops, k % 2 == 0);
        }
    }
    /* fragless's small-request limit (small_size) sets the large heap's index windows (8
     * times it): at 512 B a request of 16 TiB + 1 on 1 GiB pages grew the index by 16 GiB,
     * which failed, and undoing the placement then read the heap's index, which for its
     * first block did not exist yet (a null pointer). A block on more pages than the
     * limit allows is out of memory before any of that now. The cheap parts of the suite on the knob's ends; one random run each. */
    static const char *const knobs[] = {"policy:fragless,small_size:512", "policy:fragless,small_size:4MiB"};
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        test_misuse(knobs[i]);
        isolated("huge requests", huge_requests, knobs[i]);
        test_streams(knobs[i]);
        test_pressure(knobs[i], 2 * MiB);
        random_run(knobs[i], "256 MiB", 256 * MiB, 0, seeds[0] + 1, ops, 1);
    }
    return fl_test_done("test_conformance");
}
