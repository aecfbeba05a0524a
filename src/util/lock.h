/* The lock of the allocator object. Taking it is one atomic instruction and giving it
 * back a plain release store (pthread_mutex_lock + unlock cost ~100 instructions and two
 * atomic read-modify-writes per call; the atomics are most of the time of an
 * uncontended lock). A release that is a plain store cannot know of sleepers, so a
 * waiter spins briefly, then yields, then sleeps in short, growing naps (a device call
 * under the lock can last milliseconds on a real GPU: waiters must not spin then). */
#ifndef FL_LOCK_H
#define FL_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

#include "util/util.h"

typedef struct fli_lock {
    _Atomic uint32_t held;
} fli_lock;

void fli_lock_wait(fli_lock *l);

/* A spin-wait's pause. */
static inline void fli_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void fli_lock_acquire(fli_lock *l)
{
    uint32_t c = 0;
    if (FL_LIKELY(atomic_compare_exchange_strong_explicit(&l->held, &c, 1, memory_order_acquire,
                                                          memory_order_relaxed)))
        return;
    fli_lock_wait(l);
}

static inline void fli_lock_release(fli_lock *l) { atomic_store_explicit(&l->held, 0, memory_order_release); }

/* A forked child has one thread: whoever held the lock in the parent is not there. */
static inline void fli_lock_reset(fli_lock *l) { atomic_store_explicit(&l->held, 0, memory_order_relaxed); }

#endif
