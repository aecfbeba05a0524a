/* The lock of the allocator object: one atomic instruction to take it and one to give it
 * back when nobody waits (pthread_mutex_lock + unlock cost ~100 instructions per
 * allocation and free, a quarter of what the allocator object added to the policy), and a
 * futex wait after a short spin when somebody holds it: a device call under the lock can
 * last milliseconds on a real GPU, so waiters must sleep, not spin.
 * States: 0 free, 1 held, 2 held with waiters (Drepper, "Futexes Are Tricky", mutex 3). */
#ifndef FL_LOCK_H
#define FL_LOCK_H

#include <stdatomic.h>
#include <stdint.h>

#include "util/util.h"

typedef struct fl_lock {
    _Atomic uint32_t state;
} fl_lock;

#define FL_LOCK_INIT {0}

void fl_lock_wait(fl_lock *l);
void fl_lock_wake(fl_lock *l);

static inline void fl_lock_acquire(fl_lock *l)
{
    uint32_t c = 0;
    if (FL_LIKELY(atomic_compare_exchange_strong_explicit(&l->state, &c, 1, memory_order_acquire,
                                                          memory_order_relaxed)))
        return;
    fl_lock_wait(l);
}

static inline void fl_lock_release(fl_lock *l)
{
    if (FL_UNLIKELY(atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2))
        fl_lock_wake(l);
}

/* A forked child has one thread: whoever held the lock in the parent is not there. */
static inline void fl_lock_reset(fl_lock *l) { atomic_store_explicit(&l->state, 0, memory_order_relaxed); }

#endif
