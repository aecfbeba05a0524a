/* The yardstick of the host-time target: sebbbi's OffsetAllocator replaying the same
 * operation sequence as fl_alloc/fl_free, with the same loop. Built only when CMake is
 * given FL_OA_DIR (a checkout of github.com/sebbbi/OffsetAllocator made by the user);
 * OffsetAllocator's code never enters this repository. */
#include <stdio.h>

#include <vector>

#include "bench.h"
#include "offsetAllocator.hpp"

/* OffsetAllocator places blocks by 32-bit offsets. Sizes go to it in 512-byte units
 * (fragless rounds every block to 512 B as well), so its space is 2 TiB and every trace
 * fits, multi-GiB ones included; the operations are the same, only OA's unit differs. */
static const unsigned OA_UNIT_SHIFT = 9;
static const uint32_t OA_SPACE_UNITS = 0xffffffffu;

static uint32_t oa_units(uint64_t bytes)
{
    return (uint32_t)((bytes + (UINT64_C(1) << OA_UNIT_SHIFT) - 1) >> OA_UNIT_SHIFT);
}

extern "C" int bench_oa_replay(const bench_trace *t, uint64_t *ns, char *err, size_t n_err)
{
    uint64_t space_bytes = (uint64_t)OA_SPACE_UNITS << OA_UNIT_SHIFT;
    if (t->max_size > space_bytes || t->peak_live > space_bytes) {
        snprintf(err, n_err, "%llu bytes live at the peak do not fit OffsetAllocator's 32-bit space of 512-byte units",
                 (unsigned long long)t->peak_live);
        return -1;
    }
    /* Nodes: one per live block plus one per free region between them (at most one more). */
    uint64_t nodes = 2 * t->max_live + 64;
    if (nodes > UINT32_MAX - 1) {
        snprintf(err, n_err, "%llu live blocks: more than OffsetAllocator's 32-bit node indices hold",
                 (unsigned long long)t->max_live);
        return -1;
    }
    OffsetAllocator::Allocator oa(OA_SPACE_UNITS, (uint32_t)nodes);
    std::vector<OffsetAllocator::Allocation> held(t->n_slots + 1);
    const bench_op *ops = t->ops;
    uint64_t t0 = bench_pair_clock_ns();
    for (size_t i = 0; i < t->n_ops; i++) {
        const bench_op *op = &ops[i];
        if (op->is_free) {
            oa.free(held[op->slot]);
        } else {
            OffsetAllocator::Allocation al = oa.allocate(oa_units(op->size));
            if (al.offset == OffsetAllocator::Allocation::NO_SPACE) {
                snprintf(err, n_err, "OffsetAllocator could not place %llu bytes at operation %zu",
                         (unsigned long long)op->size, i);
                return -1;
            }
            held[op->slot] = al;
        }
    }
    *ns = bench_pair_clock_ns() - t0;
    return 0;
}
