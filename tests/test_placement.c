/* The fragless policy's placement rules that can be shown on a few blocks: a large
 * heap's blocks of a page's half, quarter, ... stay inside one page (placement_cost),
 * where a block of another size keeps its lower neighbour; and at the limit, a block that
 * no place in its heap can back is stitched from the free end of one pinned page and the
 * free start of another (stitch_alloc), its bytes those pages' own (checked on the CUDA
 * driver double, whose memory is host memory). */
#include <string.h>

#include "allocator/allocator.h"
#include "policy/policy.h"
#include "state/state.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define PAGE (2 * MiB)

/* limit 0: the device's capacity. */
static fli_policy *fragless_limited(fl_device *d, uint64_t limit)
{
    fl_config cfg;
    fl_config_default(&cfg);
    cfg.limit = limit;
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    return p;
}

static fli_policy *fragless_on(fl_device *d) { return fragless_limited(d, 0); }

/* A 64-page sim device in *d and the policy on it, limited to `pages` pages. */
static fli_policy *limited_sim(fl_device **d, uint64_t pages)
{
    *d = fl_test_sim(64 * PAGE, 0);
    return fragless_limited(*d, pages * PAGE);
}

/* Destroys the policy, then the device, which must have nothing left in use. */
static void destroy_both(fli_policy *p, fl_device *d)
{
    p->ops->destroy(p);
    CHECK_EQ_U64(in_use(d), 0);
    fl_device_destroy(d);
}

/* Leaves the free range [1.5, 4.5) MiB between two live blocks of the large heap: its
 * pages 0 and 2 are pinned by them, page 1 by nothing. Returns the heap's base. */
static uint64_t hole(fli_policy *p, uint64_t *a, uint64_t *c)
{
    uint64_t x;
    CHECK_OK(p->ops->alloc(p, 3 * MiB / 2, 0, a));
    CHECK_OK(p->ops->alloc(p, 3 * MiB, 0, &x));
    CHECK_OK(p->ops->alloc(p, 3 * MiB / 2, 0, c));
    /* Each against its lower neighbour: the layout the test means. */
    CHECK_EQ_U64(x - *a, 3 * MiB / 2);
    CHECK_EQ_U64(*c - x, 3 * MiB);
    CHECK_EQ_U64(*a % PAGE, 0);
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    return *a;
}

/* A 1 MiB block in that hole pins page 1 wherever it goes; at the hole's low end it
 * would straddle pages 0 and 1 and keep both partly empty while it lives. It goes
 * inside page 1 (without the rule it is at 1.5 MiB: this is the check that fails).
 * Half and a quarter of it fit beside the first block on page 0, pinning nothing new:
 * inside one page too. */
static void test_page_fraction_inside_one_page(void)
{
    static const uint64_t sizes[] = {MiB, MiB / 2, MiB / 4};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fl_device *d = fl_test_sim(64 * PAGE, 0);
        fli_policy *p = fragless_on(d);
        uint64_t a, c, b;
        uint64_t base = hole(p, &a, &c);
        CHECK_OK(p->ops->alloc(p, sizes[i], 0, &b));
        CHECK(b >= base + 3 * MiB / 2 && b + sizes[i] <= base + 9 * MiB / 2); /* in the hole */
        CHECK_EQ_U64((b - base) / PAGE, (b - base + sizes[i] - 1) / PAGE);   /* one page */
        /* With its neighbours gone, the block pins that one page alone: freeing them
         * leaves no page of theirs pinned, and the check agrees. */
        CHECK_OK(p->ops->free(p, a, 0, NULL));
        CHECK_OK(p->ops->free(p, c, 0, NULL));
        CHECK(p->ops->check(p) == 0);
        CHECK_OK(p->ops->free(p, b, 0, NULL));
        CHECK_EQ_U64(p->allocated, 0);
        p->ops->destroy(p);
        fl_device_destroy(d);
    }
}

/* A block of another size (1.5 MiB is no fraction of the page) is not moved by the
 * rule: in the same hole it keeps the low end (where every choice pins page 1 and the
 * lower end wins ties). */
static void test_other_sizes_keep_low_end(void)
{
    fl_device *d = fl_test_sim(64 * PAGE, 0);
    fli_policy *p = fragless_on(d);
    uint64_t a, c, b;
    uint64_t base = hole(p, &a, &c);
    CHECK_OK(p->ops->alloc(p, 3 * MiB / 2, 0, &b));
    CHECK_EQ_U64(b - base, 3 * MiB / 2);
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

/* On an 8-page limit: blocks of 3, 1, 4, 1 and 7 MiB from the heap's base, the two 1 MiB
 * ones freed. Every page is pinned; the free bytes are page 1's last MiB and page 4's
 * first, 2 MiB in all, in no one range. Returns the first block; *x the others. */
static uint64_t slivers_on(fli_policy *p, uint64_t stream, uint64_t x[3])
{
    static const uint64_t mib[] = {3, 1, 4, 1, 7};
    uint64_t b[5];
    for (int i = 0; i < 5; i++)
        CHECK_OK(p->ops->alloc(p, mib[i] * MiB, stream, &b[i]));
    uint64_t off = 0;
    for (int i = 0; i < 5; i++) { /* the layout the test means: each above the last */
        CHECK_EQ_U64(b[i] - b[0], off);
        off += mib[i] * MiB;
    }
    CHECK_EQ_U64(b[0] % PAGE, 0);
    CHECK_OK(p->ops->free(p, b[1], 0, NULL));
    CHECK_OK(p->ops->free(p, b[3], 0, NULL));
    CHECK(p->ops->check(p) == 0);
    x[0] = b[2], x[1] = b[4], x[2] = 0;
    return b[0];
}

static uint64_t slivers(fli_policy *p, uint64_t x[3]) { return slivers_on(p, 0, x); }

/* The stitched block: 2 MiB where the limit leaves no page, on the two free parts (no
 * new physical memory, two mappings); a free of the lent part's address inside the heap
 * is refused; a 3 MiB block, which would need one page more, is still out of memory
 * with nothing changed; freed, its lent parts serve the heap again, and its mappings go
 * at the next synchronize (empty_cache). Without stitching the 2 MiB request fails. */
static void test_stitched_block(void)
{
    fl_device *d;
    fli_policy *p = limited_sim(&d, 8);
    uint64_t others[3], x, y;
    uint64_t base = slivers(p, others);
    CHECK_EQ_U64(in_use(d), 8 * PAGE);
    uint64_t maps = calls(d, FL_CALL_MAP), unmaps = calls(d, FL_CALL_UNMAP);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
    CHECK(x < base || x >= base + 16 * MiB);      /* not in the heap */
    CHECK_EQ_U64(x % PAGE, PAGE - MiB);           /* its first MiB on a page's end */
    CHECK_EQ_U64(in_use(d), 8 * PAGE);            /* no new memory */
    CHECK_EQ_U64(calls(d, FL_CALL_MAP) - maps, 2); /* the two lending pages again */
    CHECK_EQ_U64(p->ops->block_size(p, x), 2 * MiB);
    uint64_t sid = 99;
    CHECK(p->ops->block_stream(p, x, &sid) == 1 && sid == 0);
    CHECK_EQ_U64(p->allocated, 16 * MiB);
    CHECK(p->ops->check(p) == 0);
    /* In a state file: the block at its address in a region of its own, whose two
     * pages are the lent ones (shown unmapped there), and its ends as live parts of the
     * heap's pages. */
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    CHECK(mem != NULL);
    CHECK_OK(fli_state_write(p, NULL, mem));
    fclose(mem);
    fli_state st;
    CHECK_OK(fli_state_parse(text, len, "stitched.json", &st));
    size_t found = 0;
    for (size_t i = 0; i < st.n_regions; i++) {
        const fli_state_region *r = &st.regions[i];
        if (strcmp(r->kind, "stitched block") != 0)
            continue;
        found++;
        CHECK_EQ_U64(r->size, 2 * PAGE);
        CHECK_EQ_U64(r->n_pages, 2);
        CHECK(r->n_pages == 2 && !st.pages[r->page0].mapped && !st.pages[r->page0 + 1].mapped);
        CHECK(r->n_blocks == 1 && st.blocks[r->block0].addr == x && st.blocks[r->block0].size == 2 * MiB &&
              st.blocks[r->block0].live);
    }
    CHECK_EQ_U64(found, 1);
    size_t parts = 0;
    for (size_t i = 0; i < st.n_blocks; i++)
        parts += st.blocks[i].live && (st.blocks[i].addr == base + 3 * MiB || st.blocks[i].addr == base + 8 * MiB);
    CHECK_EQ_U64(parts, 2);
    fli_state_free(&st);
    free(text);
    /* The lent bytes are no block of the heap's. */
    CHECK(p->ops->free(p, base + 3 * MiB, 0, NULL) != FL_OK);
    CHECK(p->ops->free(p, base + 8 * MiB, 0, NULL) != FL_OK);
    CHECK_EQ_U64(p->ops->block_size(p, base + 3 * MiB), 0);
    /* One page short: out of memory, nothing changed. */
    CHECK(p->ops->alloc(p, 3 * MiB, 0, &y) == FL_ERR_OOM);
    CHECK_EQ_U64(p->allocated, 16 * MiB);
    CHECK(p->ops->check(p) == 0);
    uint64_t req = 0;
    CHECK(p->ops->free(p, x, MiB, &req) != FL_OK); /* the wrong size: refused */
    CHECK_OK(p->ops->free(p, x, 2 * MiB, &req));
    CHECK_EQ_U64(req, 2 * MiB);
    CHECK(p->ops->free(p, x, 0, NULL) != FL_OK); /* twice */
    CHECK_EQ_U64(p->allocated, 14 * MiB);
    CHECK(p->ops->check(p) == 0);
    /* Its mappings wait for a synchronize; the lent parts are free now. */
    CHECK_EQ_U64(calls(d, FL_CALL_UNMAP), unmaps);
    CHECK_OK(p->ops->alloc(p, MiB, 0, &y));
    CHECK(y == base + 3 * MiB || y == base + 8 * MiB);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(calls(d, FL_CALL_UNMAP) > unmaps);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, y, 0, NULL));
    /* The same request again, stitched again, and the policy destroyed with it live. */
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
    CHECK(p->ops->check(p) == 0);
    destroy_both(p, d);
}

/* A stitched block freed and asked for again, its ends' halves free again on the same
 * pages: taken back as it is, at the same address, with no device call; its mappings go
 * only when its pages are wanted or the cache is emptied. */
static void test_stitch_revived(void)
{
    fl_device *d;
    fli_policy *p = limited_sim(&d, 8);
    uint64_t others[3], x, y;
    slivers(p, others);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    fl_device_counters before = counters(d);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &y));
    CHECK_EQ_U64(y, x);
    fl_device_counters after = counters(d);
    CHECK_EQ_U64(fl_device_total_calls(&after) - fl_device_total_calls(&before), 0);
    CHECK_EQ_U64(p->ops->block_size(p, y), 2 * MiB);
    CHECK_EQ_U64(p->allocated, 16 * MiB);
    CHECK(p->ops->check(p) == 0);
    /* The device synchronized in between (by another user of it): still there. */
    CHECK_OK(p->ops->free(p, y, 0, NULL));
    CHECK_OK(fli_dev_synchronize(d));
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &y));
    CHECK_EQ_U64(y, x);
    CHECK_OK(p->ops->free(p, y, 0, NULL));
    uint64_t unmaps = calls(d, FL_CALL_UNMAP);
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(calls(d, FL_CALL_UNMAP) > unmaps);
    CHECK(p->ops->check(p) == 0);
    destroy_both(p, d);
}

/* A stitched block whose stream is destroyed while it lives: its stream is no longer
 * known (as for a block of a retired heap: a free then waits for the freeing stream's
 * work), and it is freed as usual. */
static void test_stitched_stream_gone(void)
{
    fl_device *d;
    fli_policy *p = limited_sim(&d, 8);
    uint64_t others[3], x, sid = 0;
    slivers_on(p, 5, others);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 5, &x));
    CHECK(p->ops->block_stream(p, x, &sid) == 1 && sid == 5);
    p->ops->stream_gone(p, 5);
    CHECK(p->ops->block_stream(p, x, &sid) == -1);
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    CHECK(p->ops->check(p) == 0);
    destroy_both(p, d);
}

/* Very near the limit, under pressure, a stitched block is preferred where it pins fewer
 * new pages than the ordinary place: on a 23-page limit with 22 pages pinned and one
 * cached ahead, the 2 MiB request is stitched from the two free halves instead of taking
 * the cached page, which stays free for the next request. The policy knows it is near
 * once a place has needed unmapped pages (place_under_pressure learns the peak): here a
 * 5 MiB request, out of memory (3 pages, 1 to be had; stitched, 2 of its own). */
static void test_stitch_near_limit(void)
{
    fl_device *d;
    fli_policy *p = limited_sim(&d, 23);
    uint64_t others[3], big, x, y;
    uint64_t base = slivers(p, others);
    CHECK_OK(p->ops->alloc(p, 28 * MiB, 0, &big));
    CHECK_EQ_U64(big - base, 16 * MiB);
    CHECK_EQ_U64(in_use(d), 23 * PAGE); /* the growth step's page ahead, cached */
    CHECK(p->ops->alloc(p, 5 * MiB, 0, &x) == FL_ERR_OOM);
    CHECK_EQ_U64(p->allocated, 42 * MiB);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
    CHECK_EQ_U64(x % PAGE, PAGE - MiB); /* stitched (the ordinary place: base + 44 MiB) */
    CHECK(x < base || x >= base + 46 * MiB);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &y));
    CHECK_EQ_U64(y - base, 44 * MiB); /* the cached page */
    CHECK_EQ_U64(in_use(d), 23 * PAGE);
    CHECK(p->ops->check(p) == 0);
    destroy_both(p, d);
}

/* Device calls of the stitching that fail (the reservation, either mapping, the access).
 * Every call failing from one on: the request is out of memory and the policy as it
 * was (consistent, the lent parts free again, nothing held); the same request then
 * succeeds. One call failing: the stitch under pressure gives up, and the last resort
 * tries again and succeeds, or the request fails with nothing changed. */
static void test_stitch_faults(void)
{
    for (int every = 1; every >= 0; every--)
        for (uint64_t k = 1; k <= 4; k++) {
            fl_device *d;
            fli_policy *p = limited_sim(&d, 8);
            uint64_t others[3], x;
            slivers(p, others);
            uint64_t n = fl_device_total_calls(&d->counters) + k;
            CHECK_OK(fl_device_set_fault(d, every ? 0 : n, every ? n : 0));
            fl_status s = p->ops->alloc(p, 2 * MiB, 0, &x);
            CHECK(every ? s != FL_OK : counters(d).failed_calls == 1);
            CHECK_OK(fl_device_set_fault(d, 0, 0));
            CHECK(p->ops->check(p) == 0);
            if (s == FL_OK) {
                CHECK_EQ_U64(p->ops->block_size(p, x), 2 * MiB);
                CHECK_EQ_U64(p->allocated, 16 * MiB);
                CHECK_OK(p->ops->free(p, x, 0, NULL));
            }
            CHECK_EQ_U64(p->allocated, 14 * MiB);
            /* What a failed unmap left waits for the next synchronize: 8 pages in use. */
            CHECK_OK(p->ops->empty_cache(p));
            CHECK_EQ_U64(in_use(d), 8 * PAGE);
            CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
            CHECK(p->ops->check(p) == 0);
            CHECK_OK(p->ops->free(p, x, 0, NULL));
            CHECK_OK(p->ops->empty_cache(p));
            CHECK(p->ops->check(p) == 0);
            destroy_both(p, d);
        }
}

/* The same on the CUDA driver double, with bytes: the stitched block's bytes are the
 * lending pages' free parts (written through the block, read through the heap's
 * addresses), and the live blocks around them keep theirs. */
static void test_stitched_bytes(void)
{
    if (!fl_test_fakecuda()) {
        printf("test_placement: the CUDA driver double is not built: stitched bytes not checked\n");
        return;
    }
    fl_device *d = fl_test_fake_device();
    if (!d)
        return;
    CHECK_EQ_U64(d->granularity, PAGE);
    fli_policy *p = fragless_limited(d, 8 * PAGE);
    uint64_t others[3], x;
    uint64_t base = slivers(p, others);
    unsigned char *b = (unsigned char *)(uintptr_t)base;
    memset(b, 0xa1, 3 * MiB);
    memset(b + 4 * MiB, 0xb2, 4 * MiB);
    memset(b + 9 * MiB, 0xc3, 7 * MiB);
    CHECK_OK(p->ops->alloc(p, 2 * MiB, 0, &x));
    memset((void *)(uintptr_t)x, 0x5a, 2 * MiB);
    size_t bad = 0;
    for (uint64_t i = 0; i < 16 * MiB; i++) {
        unsigned char want = i < 3 * MiB ? 0xa1 : i < 4 * MiB ? 0x5a : i < 8 * MiB ? 0xb2 : i < 9 * MiB ? 0x5a : 0xc3;
        bad += b[i] != want;
    }
    CHECK_EQ_U64(bad, 0);
    CHECK(p->ops->check(p) == 0);
    CHECK_OK(p->ops->free(p, x, 0, NULL));
    CHECK_OK(p->ops->empty_cache(p));
    CHECK(p->ops->check(p) == 0);
    p->ops->destroy(p);
    fl_device_destroy(d);
}

int main(void)
{
    test_page_fraction_inside_one_page();
    test_other_sizes_keep_low_end();
    test_stitched_block();
    test_stitch_faults();
    test_stitch_near_limit();
    test_stitch_revived();
    test_stitched_stream_gone();
    test_stitched_bytes();
    return fl_test_done("test_placement");
}
