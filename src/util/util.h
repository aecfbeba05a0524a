/* Internal helpers shared by every layer: error reporting, integer maths, a hash map
 * from 64-bit keys to 64-bit values. Never included from outside src/ and tests/. */
#ifndef FL_UTIL_H
#define FL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fragless.h"

#define FL_KiB (UINT64_C(1) << 10)
#define FL_MiB (UINT64_C(1) << 20)
#define FL_GiB (UINT64_C(1) << 30)

#if defined(__GNUC__)
#define FL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define FL_LIKELY(x) __builtin_expect(!!(x), 1)
#define FL_UNLIKELY(x) __builtin_expect(!!(x), 0)
/* A rare path kept out of its caller, so the common one stays short (fewer registers
 * to save, no large stack frame). */
#define FL_NOINLINE __attribute__((noinline))
#else
#define FL_PRINTF(a, b)
#define FL_LIKELY(x) (x)
#define FL_UNLIKELY(x) (x)
#define FL_NOINLINE
#endif

/* Invariants checked where the code relies on them, in debug builds (FL_DEBUG: CMake's
 * Debug configuration, the ASan+UBSan suite and the fuzzers); release builds compile
 * them out. A failure names the condition, file and line and aborts: the allocator's
 * state is corrupt, and going on could hand the same memory out twice. The whole-state
 * self-checks (fl_range_check, the policies' check) stay callable in every build. */
#ifdef FL_DEBUG
#define FL_ASSERT(cond) ((cond) ? (void)0 : fli_assert_fail(#cond, __FILE__, __LINE__))
#else
#define FL_ASSERT(cond) ((void)0)
#endif
_Noreturn void fli_assert_fail(const char *cond, const char *file, int line);

/* Records the message for fl_last_error() and returns s, so `return fli_fail(...)` reads well. */
fl_status fli_fail(fl_status s, const char *fmt, ...) FL_PRINTF(2, 3);
void fli_clear_error(void);

static inline uint64_t fli_align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }
/* Live bytes as every metric counts them (peak_live, the OOM report's live): each
 * request rounded up to 512 B (sizes are > 0: readers and fl_alloc refuse 0). */
static inline uint64_t fli_live_size(uint64_t size) { return fli_align_up(size, 512); }
static inline uint64_t fli_align_down(uint64_t x, uint64_t a) { return x & ~(a - 1); }
static inline bool fli_is_pow2(uint64_t x) { return x && !(x & (x - 1)); }
static inline int fli_log2_floor(uint64_t x) { return 63 - __builtin_clzll(x); }
/* Written so that it never wraps: (x + d - 1) / d is 0 for x = 2^64 - 1. */
static inline uint64_t fli_div_up(uint64_t x, uint64_t d) { return x / d + (x % d != 0); }

/* Open-addressing hash map (linear probing, backward-shift deletion). Any key works: the
 * key UINT64_MAX marks empty slots, so it is kept in one extra entry past the table
 * (code that scans e[0..mask] directly does not see it). Lookups and updates O(1)
 * expected; grows at 1/4 load
 * (short probe chains matter more here than memory: the hot paths insert and remove). */
typedef struct fli_map_entry {
    uint64_t key;
    uint64_t val;
} fli_map_entry;

typedef struct fli_map {
    fli_map_entry *e;    /* key and value side by side: one cache line per probe */
    uint64_t mask;
    uint64_t count;
    unsigned shift;     /* 64 - log2(slots): the hash's top bits pick the slot */
} fli_map;

fl_status fli_map_init(fli_map *m, uint64_t expected);
void fli_map_free(fli_map *m);
void fli_map_clear(fli_map *m);
/* Inserts or overwrites. */
fl_status fli_map_put(fli_map *m, uint64_t key, uint64_t val);
/* Inserts a key the caller knows is absent (cheaper: no search for it). */
fl_status fli_map_insert(fli_map *m, uint64_t key, uint64_t val);
/* Returns true and stores the value when the key is present. */
bool fli_map_get(const fli_map *m, uint64_t key, uint64_t *val);
/* Returns true and stores the old value when the key was present. */
bool fli_map_remove(fli_map *m, uint64_t key, uint64_t *val);

/* A file path of the config (trace:, oom_snapshot:) made concrete for this process: %p
 * becomes the process id, %r the rank ($RANK, else $LOCAL_RANK, else 0: torchrun sets
 * both), %% a '%'. Any other '%' is FL_ERR_PARSE; a result that does not fit in n
 * bytes is FL_ERR_INVALID. So that processes of one job never write one file. */
#define FL_PATH_MAX 4096
fl_status fli_expand_path(const char *path, char *out, size_t n);
fl_status fli_expand_path_with(const char *path, const char *what, const char *pid, const char *rank, char *out,
                               size_t n);

/* Monotonic clock in nanoseconds. */
uint64_t fli_now_ns(void);

#endif
