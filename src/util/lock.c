/* The slow paths of fl_lock (lock.h): a bounded spin, then futex sleeps. */
#include "util/lock.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Spins before sleeping: a policy call takes tens of nanoseconds, a futex round trip
 * microseconds. */
#define SPINS 200

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void fl_lock_wait(fl_lock *l)
{
    for (int i = 0; i < SPINS; i++) {
        cpu_relax();
        uint32_t c = 0;
        if (atomic_load_explicit(&l->state, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&l->state, &c, 1, memory_order_acquire, memory_order_relaxed))
            return;
    }
    /* Mark it contended; whoever releases it then wakes one sleeper. */
    while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void fl_lock_wake(fl_lock *l)
{
    syscall(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
