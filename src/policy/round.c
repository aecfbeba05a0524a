/* Request rounding as PyTorch's caching allocator does it (round_size and
 * roundup_power2_next_division in c10/cuda/CUDACachingAllocator.cpp, the interval
 * lookup of AllocatorConfig::roundup_power2_divisions). Shared by cca and replay. */
#include "policy/policy.h"

#define ROUND_MIN_BLOCK UINT64_C(512)
/* log2 of the start of the first interval (1 MiB); PyTorch's kRoundUpPowerOfTwoStart. */
#define ROUND_FIRST_LOG 20

/* The next of `divisions` equal steps between the powers of two around size. */
static uint64_t next_division(uint64_t size, uint64_t divisions)
{
    if (fli_is_pow2(size))
        return size;
    uint64_t floor2 = UINT64_C(1) << fli_log2_floor(size);
    uint64_t step = floor2 >> fli_log2_floor(divisions);
    if (step == 0)
        return floor2 << 1;
    uint64_t down = size & ~(step - 1);
    if (down == size)
        return size;
    return down > UINT64_MAX - step ? UINT64_MAX & ~(ROUND_MIN_BLOCK - 1) : down + step;
}

uint64_t fli_round_request(const fl_config *cfg, uint64_t size)
{
    if (size < ROUND_MIN_BLOCK)
        return ROUND_MIN_BLOCK;
    /* Keeps the rounding from wrapping; the policies refuse such sizes before this. */
    if (size > UINT64_MAX - ROUND_MIN_BLOCK)
        return UINT64_MAX & ~(ROUND_MIN_BLOCK - 1);
    uint64_t divisions = 0;
    if (cfg) {
        /* PyTorch clamps the interval index to [0, 15]: sizes below 1 MiB use the
         * first entry (the one for [1 MiB, 2 MiB)) and sizes of 32 GiB and more the
         * last. We do the same so a per-interval setting rounds identically. */
        int index = fli_log2_floor(size) - ROUND_FIRST_LOG;
        if (index < 0)
            index = 0;
        if (index > FL_ROUNDUP_INTERVALS - 1)
            index = FL_ROUNDUP_INTERVALS - 1;
        divisions = cfg->roundup_divisions[index];
    }
    /* Below 512 * divisions a step would be smaller than 512 B, so PyTorch falls back
     * to plain 512 B rounding there: every result stays a multiple of 512. */
    if (divisions > 1 && size > ROUND_MIN_BLOCK * divisions)
        return next_division(size, divisions);
    return fli_align_up(size, ROUND_MIN_BLOCK);
}
