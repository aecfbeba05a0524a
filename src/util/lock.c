/* The slow path of fli_lock (lock.h): spin, then yield, then nap. */
#include "util/lock.h"

#include <sched.h>
#include <time.h>

/* A policy call takes tens of nanoseconds: most waits end while spinning. */
#define SPINS 256
#define YIELDS 64
/* Naps grow from 1 us to this: a holder inside a device call (a cuMemCreate takes about
 * 0.2 ms) is not polled more than a few thousand times a second. */
#define MAX_NAP_NS 50000

static inline int try_take(fli_lock *l)
{
    uint32_t c = 0;
    return atomic_load_explicit(&l->held, memory_order_relaxed) == 0 &&
           atomic_compare_exchange_weak_explicit(&l->held, &c, 1, memory_order_acquire, memory_order_relaxed);
}

void fli_lock_wait(fli_lock *l)
{
    for (int i = 0; i < SPINS; i++) {
        fli_cpu_relax();
        if (try_take(l))
            return;
    }
    for (int i = 0; i < YIELDS; i++) {
        sched_yield();
        if (try_take(l))
            return;
    }
    long nap = 1000;
    for (;;) {
        struct timespec ts = {0, nap};
        nanosleep(&ts, NULL);
        if (try_take(l))
            return;
        if (nap < MAX_NAP_NS)
            nap *= 2;
    }
}
