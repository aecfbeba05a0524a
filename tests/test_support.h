/* Minimal test support: CHECK macros that report file:line and keep going, a summary,
 * exit code 77 for "skipped" (CTest SKIP_RETURN_CODE), a deterministic PRNG. */
#ifndef FL_TEST_SUPPORT_H
#define FL_TEST_SUPPORT_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fragless.h"

extern int fl_test_failures;
extern int fl_test_checks;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        fl_test_checks++;                                                              \
        if (!(cond)) {                                                                 \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                              \
    } while (0)

#define CHECK_EQ_U64(a, b)                                                             \
    do {                                                                               \
        uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                               \
        fl_test_checks++;                                                              \
        if (a_ != b_) {                                                                \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%" PRIu64 " vs %" PRIu64 ")\n", \
                    __FILE__, __LINE__, #a, #b, a_, b_);                               \
        }                                                                              \
    } while (0)

#define CHECK_OK(expr)                                                                 \
    do {                                                                               \
        fl_status s_ = (expr);                                                         \
        fl_test_checks++;                                                              \
        if (s_ != FL_OK) {                                                             \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #expr,  \
                    fl_status_str(s_), fl_last_error());                               \
        }                                                                              \
    } while (0)

#define CHECK_STATUS(expr, want)                                                       \
    do {                                                                               \
        fl_status s_ = (expr);                                                         \
        fl_test_checks++;                                                              \
        if (s_ != (want)) {                                                            \
            fl_test_failures++;                                                        \
            fprintf(stderr, "%s:%d: %s returned %s, want %s (%s)\n", __FILE__, __LINE__, \
                    #expr, fl_status_str(s_), fl_status_str(want), fl_last_error());   \
        }                                                                              \
    } while (0)

/* Checks that fl_last_error() mentions `what`; counted like a CHECK. */
void fl_test_check_mentions(const char *what, const char *file, int line);
#define CHECK_MENTIONS(what) fl_test_check_mentions(what, __FILE__, __LINE__)

/* Prints the summary; returns the process exit code. */
int fl_test_done(const char *name);
/* Prints why and exits 77 (skipped). */
void fl_test_skip(const char *why);

/* Path of a file under ../shared/traces, or NULL (with the reason printed) if absent. */
const char *fl_test_shared_traces(void);

/* A device's counters, its physical bytes in use, and its calls of one kind. */
static inline fl_device_counters counters(const fl_device *d)
{
    fl_device_counters c;
    fl_device_get_counters(d, &c);
    return c;
}
static inline uint64_t in_use(const fl_device *d) { return counters(d).in_use; }
static inline uint64_t calls(const fl_device *d, fl_call k) { return counters(d).calls[k]; }

/* xorshift64*: deterministic, seedable. */
typedef struct fl_rng { uint64_t s; } fl_rng;
static inline uint64_t fl_rng_next(fl_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * UINT64_C(2685821657736338717);
}
static inline uint64_t fl_rng_below(fl_rng *r, uint64_t n) { return n ? fl_rng_next(r) % n : 0; }

#endif
