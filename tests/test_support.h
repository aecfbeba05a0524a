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

/* AddressSanitizer reserves terabytes of shadow address space: tests that set RLIMIT_AS
 * do without it under ASan. */
#if defined(__SANITIZE_ADDRESS__)
#define FL_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FL_TEST_UNDER_ASAN 1
#endif
#endif
#ifndef FL_TEST_UNDER_ASAN
#define FL_TEST_UNDER_ASAN 0
#endif
/* ThreadSanitizer (test-tsan) runs the threaded tests 5-15 times slower: their
 * single-threaded parts that take long do less or nothing under it. */
#if defined(__SANITIZE_THREAD__)
#define FL_TEST_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FL_TEST_UNDER_TSAN 1
#endif
#endif
#ifndef FL_TEST_UNDER_TSAN
#define FL_TEST_UNDER_TSAN 0
#endif

/* Prints the summary; returns the process exit code. */
int fl_test_done(const char *name);
/* Prints why and exits 77 (skipped). */
void fl_test_skip(const char *why);

/* Path of a file under ../shared/traces, or NULL (with the reason printed) if absent. */
const char *fl_test_shared_traces(void);

/* Issue 13's memory bar for a trace of peak_live bytes on pages of gran bytes:
 * max(1.01 x peak live, page limit + 4 MiB), the page limit being peak live rounded up
 * to whole pages. */
double fl_test_issue13_bar(uint64_t peak_live, uint64_t gran, uint64_t *page_limit);

/* ---- child commands ------------------------------------------------------------ */

/* What a shell command did: its exit code (-1 when it did not exit normally) and its
 * stdout and stderr, NUL-terminated and cut to fit. */
typedef struct fl_run_result {
    int code;
    char out[1 << 16];
    char err[1 << 14];
} fl_run_result;

/* Runs cmdline with sh -c (system(3)), all of it with stdout and stderr going to temp
 * files of its own (removed afterwards); flushes this process' streams first. Returns a
 * static result, overwritten by the next call. */
fl_run_result *fl_test_shell(const char *cmdline);
/* fl_test_shell of a printf-style command line (at most 2047 bytes). */
fl_run_result *fl_test_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Writes n bytes to path (a CHECK fails when it cannot). */
void fl_test_write_file(const char *path, const void *data, size_t n);
/* Reads at most n - 1 bytes of the file into buf, NUL-terminated ("" if unreadable);
 * returns how many. */
size_t fl_test_slurp(const char *path, char *buf, size_t n);
/* The whole file, NUL-terminated, in memory the caller frees; NULL if unreadable. */
char *fl_test_read_file(const char *path);

/* ---- devices and allocators ------------------------------------------------------ */

/* A sim device; capacity and granularity 0 keep the defaults. Exits 1 if it fails. */
fl_device *fl_test_sim(uint64_t capacity, uint64_t granularity);
/* An allocator on d: conf is a FRAGLESS_CONF text over the defaults, a bare policy name
 * (no ':'), or NULL for the defaults. Exits 1 with the message if it fails. */
fl_allocator *fl_test_allocator(const char *conf, fl_device *d);

/* "0x1a2b": four calls' results are valid at once (for one message). */
const char *fl_test_hex(uint64_t x);

/* ---- the CUDA driver double (tests/fakecuda) -------------------------------------- */

/* Its path, "" in a test it is not built for (FAKECUDA_PATH is defined per test). */
#ifdef FAKECUDA_PATH
#define FL_TEST_FAKECUDA FAKECUDA_PATH
#else
#define FL_TEST_FAKECUDA ""
#endif

/* The double loaded into this process (RTLD_NOW | RTLD_LOCAL); NULL when it was not built
 * (silently) or cannot be loaded (said on stderr). */
void *fl_test_fakecuda(void);
/* Resolves name in lib into the function pointer at slot; 0 (said on stderr) when lib
 * has no such symbol. */
int fl_test_sym(void *lib, const char *name, void *slot);
/* The cuda device (default parameters) on the driver double of this test; NULL, with a
 * failed check, when it cannot be made. */
fl_device *fl_test_fake_device(void);

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
