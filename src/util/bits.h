/* Bit arrays in 64-bit words, with ranges set, cleared and counted a word at a time:
 * the fragless policy's page states, where the pages inside a block change together
 * (a block of 1 GiB is 512 pages: 8 words, not 512 steps). Ranges are [a, b). */
#ifndef FL_BITS_H
#define FL_BITS_H

#include <stdint.h>

/* Set bits of a word. __builtin_popcountll is one instruction only where the target has
 * one (-mpopcnt, not in the default x86-64 baseline the release is built for); elsewhere
 * it is a call into libgcc, which the pin and unpin paths paid on every multi-page block
 * (2.6% of the instructions of a snapshot's replay). The bit-parallel sum below compiles
 * inline to a dozen instructions. */
static inline unsigned fli_popcount64(uint64_t x)
{
#if defined(__POPCNT__) || !(defined(__x86_64__) || defined(__i386__))
    return (unsigned)__builtin_popcountll(x);
#else
    x -= (x >> 1) & UINT64_C(0x5555555555555555);
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (unsigned)((x * UINT64_C(0x0101010101010101)) >> 56);
#endif
}

/* Words that hold n bits. */
static inline uint64_t fli_bits_words(uint64_t n) { return (n + 63) >> 6; }

static inline int fli_bit_get(const uint64_t *w, uint64_t i) { return (int)((w[i >> 6] >> (i & 63)) & 1); }
static inline void fli_bit_set(uint64_t *w, uint64_t i) { w[i >> 6] |= UINT64_C(1) << (i & 63); }
static inline void fli_bit_clear(uint64_t *w, uint64_t i) { w[i >> 6] &= ~(UINT64_C(1) << (i & 63)); }

/* Bits [lo, hi] of one word, 0 <= lo <= hi <= 63. */
static inline uint64_t fli_bits_mask(unsigned lo, unsigned hi)
{
    return (~UINT64_C(0) >> (63 - hi)) & (~UINT64_C(0) << lo);
}

static inline void fli_bits_set(uint64_t *w, uint64_t a, uint64_t b)
{
    if (a >= b)
        return;
    uint64_t wa = a >> 6, wb = (b - 1) >> 6;
    if (wa == wb) {
        w[wa] |= fli_bits_mask((unsigned)(a & 63), (unsigned)((b - 1) & 63));
        return;
    }
    w[wa] |= ~UINT64_C(0) << (a & 63);
    for (uint64_t i = wa + 1; i < wb; i++)
        w[i] = ~UINT64_C(0);
    w[wb] |= ~UINT64_C(0) >> (63 - ((b - 1) & 63));
}

static inline void fli_bits_clear(uint64_t *w, uint64_t a, uint64_t b)
{
    if (a >= b)
        return;
    uint64_t wa = a >> 6, wb = (b - 1) >> 6;
    if (wa == wb) {
        w[wa] &= ~fli_bits_mask((unsigned)(a & 63), (unsigned)((b - 1) & 63));
        return;
    }
    w[wa] &= ~(~UINT64_C(0) << (a & 63));
    for (uint64_t i = wa + 1; i < wb; i++)
        w[i] = 0;
    w[wb] &= ~(~UINT64_C(0) >> (63 - ((b - 1) & 63)));
}

/* Whether every bit in [a, b) is set (an empty range: yes). Cheaper than comparing
 * fli_bits_count with b - a: no popcount, and it stops at the first word with a gap. */
static inline int fli_bits_all(const uint64_t *w, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 1;
    uint64_t wa = a >> 6, wb = (b - 1) >> 6;
    if (wa == wb) {
        uint64_t m = fli_bits_mask((unsigned)(a & 63), (unsigned)((b - 1) & 63));
        return (w[wa] & m) == m;
    }
    uint64_t lo = ~UINT64_C(0) << (a & 63), hi = ~UINT64_C(0) >> (63 - ((b - 1) & 63));
    if ((w[wa] & lo) != lo || (w[wb] & hi) != hi)
        return 0;
    for (uint64_t i = wa + 1; i < wb; i++)
        if (w[i] != ~UINT64_C(0))
            return 0;
    return 1;
}

/* The first index in [a, b) whose bit is v (0 or 1), b if there is none: a word at a
 * time. */
static inline uint64_t fli_bits_next(const uint64_t *w, uint64_t a, uint64_t b, int v)
{
    uint64_t flip = v ? 0 : ~UINT64_C(0);
    while (a < b) {
        uint64_t word = (w[a >> 6] ^ flip) >> (a & 63);
        if (word) {
            uint64_t i = a + (uint64_t)__builtin_ctzll(word);
            return i < b ? i : b;
        }
        a = (a | 63) + 1;
    }
    return b;
}

/* Set bits in [a, b). */
static inline uint64_t fli_bits_count(const uint64_t *w, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 0;
    uint64_t wa = a >> 6, wb = (b - 1) >> 6;
    if (wa == wb)
        return (uint64_t)fli_popcount64(w[wa] & fli_bits_mask((unsigned)(a & 63), (unsigned)((b - 1) & 63)));
    uint64_t n = (uint64_t)fli_popcount64(w[wa] & (~UINT64_C(0) << (a & 63)));
    for (uint64_t i = wa + 1; i < wb; i++)
        n += (uint64_t)fli_popcount64(w[i]);
    return n + (uint64_t)fli_popcount64(w[wb] & (~UINT64_C(0) >> (63 - ((b - 1) & 63))));
}

#endif
