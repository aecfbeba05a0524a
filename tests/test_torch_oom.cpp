/* fragless_torch_malloc as PyTorch's C++ calls it, on the driver double: a failure
 * never returns NULL. Built twice: with WITH_C10 the process has a libc10.so (the
 * stand-in of tests/torchstub, with PyTorch's names) and an out-of-memory must arrive as
 * c10::OutOfMemoryError, which PyTorch raises as torch.OutOfMemoryError; without it, as
 * std::bad_alloc. Either way the text is fragless's out-of-memory report; other failures
 * are std::runtime_error. Pools (fragless_torch_pool_open) have allocators of their own. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <new>
#include <stdexcept>
#include <string>

#ifdef WITH_C10
#include "torchstub/c10.h"
#endif

#include "fragless_torch.h"

static int failures, checks;
#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        checks++;                                                                                    \
        if (!(cond)) {                                                                               \
            failures++;                                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                 \
        }                                                                                            \
    } while (0)

typedef void *(*malloc_fn)(ssize_t, int, void *);
typedef void (*free_fn)(void *, ssize_t, int, void *);
typedef int (*stats_fn)(int, int, fl_stats *);
typedef int (*open_fn)(const char *);

/* What m(size) threw: "oom" (PyTorch's type, or std::bad_alloc without it), "runtime",
 * "none" (it returned), with the text. */
static std::string outcome(malloc_fn m, ssize_t size, int device, std::string *text)
{
    try {
        void *p = m(size, device, nullptr);
        *text = p ? "returned a block" : "returned NULL";
        return "none";
#ifdef WITH_C10
    } catch (const c10::OutOfMemoryError &e) {
        *text = e.what_without_backtrace();
        return "oom";
#endif
    } catch (const std::bad_alloc &e) {
        *text = e.what();
#ifdef WITH_C10
        return "bad_alloc"; /* PyTorch's type was there: it should have been used */
#else
        return "oom";
#endif
    } catch (const std::runtime_error &e) {
        *text = e.what();
        return "runtime";
    } catch (...) {
        *text = "something else";
        return "other";
    }
}

int main()
{
    setenv("FRAGLESS_CUDA_LIB", FAKECUDA_PATH, 1);
    setenv("FAKECUDA_CAPACITY", "64M", 1);
    setenv("FRAGLESS_CONF", "policy:fragless,oom_report:0,top:0", 1);
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "cannot load %s: %s\n", FRAGLESS_SO, dlerror());
        return 1;
    }
    malloc_fn m = (malloc_fn)dlsym(so, "fragless_torch_malloc");
    free_fn f = (free_fn)dlsym(so, "fragless_torch_free");
    stats_fn st = (stats_fn)dlsym(so, "fragless_torch_pool_stats");
    open_fn pool_open = (open_fn)dlsym(so, "fragless_torch_pool_open");
    malloc_fn pm = (malloc_fn)dlsym(so, "fragless_torch_pool1_malloc");
    free_fn pf = (free_fn)dlsym(so, "fragless_torch_pool1_free");
    if (!m || !f || !st || !pool_open || !pm || !pf) {
        fprintf(stderr, "libfragless.so lacks an entry point\n");
        return 1;
    }

    void *p = m(3 << 20, 0, nullptr);
    CHECK(p != nullptr);
    CHECK(m(0, 0, nullptr) == nullptr); /* an empty tensor: NULL, no exception */
    std::string text;
    CHECK(outcome(m, (ssize_t)1 << 30, 0, &text) == "oom");
    CHECK(text.find("out of memory on device 0") != std::string::npos);
    CHECK(text.find("Verdict") != std::string::npos);
    fprintf(stderr, "the out-of-memory text: %.200s...\n", text.c_str());
    fl_stats s;
    CHECK(st(0, 0, &s) == 0 && s.num_ooms == 1);
    CHECK(outcome(m, -5, 0, &text) == "runtime");
    CHECK(text.find("negative size") != std::string::npos);
    CHECK(outcome(m, 4096, 70, &text) == "runtime"); /* no such device ordinal */
    f(p, 3 << 20, 0, nullptr);
    CHECK(st(0, 0, &s) == 0 && s.allocated_bytes.current == 0);

    /* A pool with its own configuration and limit. */
    CHECK(pool_open("policy:fragless,limit:16MiB,oom_report:0,top:0") == 1);
    CHECK(pool_open("policy:nonsense") == -1);
    void *q = pm(8 << 20, 0, nullptr);
    CHECK(q != nullptr);
    CHECK(outcome(pm, 12 << 20, 0, &text) == "oom"); /* 8 + 12 MiB > the pool's 16 MiB */
    CHECK(st(1, 0, &s) == 0 && s.limit == (16u << 20) && s.allocated_bytes.current == (8u << 20) && s.num_ooms == 1);
    CHECK(st(0, 0, &s) == 0 && s.allocated_bytes.current == 0 && s.num_ooms == 1);
    pf(q, 8 << 20, 0, nullptr);
    CHECK(st(1, 0, &s) == 0 && s.allocated_bytes.current == 0);

    printf("test_torch_oom (%s): %d checks, %d failed\n",
#ifdef WITH_C10
           "PyTorch's libc10 in the process",
#else
           "no libc10",
#endif
           checks, failures);
    return failures ? 1 : 0;
}
