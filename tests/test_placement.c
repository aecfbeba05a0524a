/* The fragless policy's placement rules that can be shown on a few blocks: a large
 * heap's blocks of a page's half, quarter, ... stay inside one page (placement_cost),
 * where a block of another size keeps its lower neighbour. */
#include <string.h>

#include "policy/policy.h"
#include "test_support.h"

#define MiB (UINT64_C(1) << 20)
#define PAGE (2 * MiB)

static fli_policy *fragless_on(fl_device *d)
{
    fl_config cfg;
    fl_config_default(&cfg);
    fli_policy *p = NULL;
    CHECK_OK(fli_policy_create(&cfg, d, &p));
    return p;
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

int main(void)
{
    test_page_fraction_inside_one_page();
    test_other_sizes_keep_low_end();
    return fl_test_done("test_placement");
}
