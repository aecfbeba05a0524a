/* PyTorch's view of fragless: libfragless.so loaded with dlopen, its pluggable-allocator
 * entry points called as torch.cuda.memory.CUDAPluggableAllocator calls them, on the
 * CUDA driver test double (FRAGLESS_CUDA_LIB). */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "test_support.h"

typedef void *(*malloc_fn)(ssize_t, int, void *);
typedef void (*free_fn)(void *, ssize_t, int, void *);
typedef void (*empty_fn)(void);

int main(void)
{
    setenv("FRAGLESS_CUDA_LIB", FAKECUDA_PATH, 1);
    setenv("FAKECUDA_CAPACITY", "64M", 1);
    setenv("FRAGLESS_CONF", "policy:fragless", 1);
    void *so = dlopen(FRAGLESS_SO, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        fprintf(stderr, "cannot load %s: %s\n", FRAGLESS_SO, dlerror());
        return 1;
    }
    malloc_fn tmalloc = (malloc_fn)(uintptr_t)dlsym(so, "fragless_torch_malloc");
    free_fn tfree = (free_fn)(uintptr_t)dlsym(so, "fragless_torch_free");
    empty_fn tempty = (empty_fn)(uintptr_t)dlsym(so, "fragless_torch_empty_cache");
    CHECK(tmalloc && tfree && tempty);
    if (!tmalloc || !tfree || !tempty)
        return fl_test_done("test_torch");

    /* Blocks are real memory in the double: write each, free half, allocate more than
     * the cached pages (reclaim and remap), then read every survivor back. */
    enum { N = 24 };
    unsigned char *p[N];
    ssize_t size[N];
    for (int i = 0; i < N; i++) {
        size[i] = (ssize_t)(1 << 20) + i * 4096 + 100;
        p[i] = tmalloc(size[i], 0, NULL);
        CHECK(p[i] != NULL && (uintptr_t)p[i] % 512 == 0);
        if (p[i])
            memset(p[i], i + 1, (size_t)size[i]);
    }
    for (int i = 0; i < N; i += 2)
        tfree(p[i], size[i], 0, NULL);
    void *big = tmalloc(30 << 20, 0, (void *)0x7);
    CHECK(big != NULL);
    if (big)
        memset(big, 0xee, 30 << 20);
    for (int i = 1; i < N; i += 2) {
        int ok = p[i] != NULL;
        for (ssize_t k = 0; ok && k < size[i]; k += 997)
            ok = p[i][k] == (unsigned char)(i + 1);
        CHECK(ok);
    }
    /* More than the device holds: NULL, which PyTorch turns into its OOM error. */
    CHECK(tmalloc((ssize_t)1 << 30, 0, NULL) == NULL);
    /* Misuse: a negative size and size 0 give NULL; an unknown device too. */
    CHECK(tmalloc(-5, 0, NULL) == NULL);
    CHECK(tmalloc(0, 0, NULL) == NULL);
    CHECK(tmalloc(4096, 3, NULL) == NULL);
    tfree(big, 30 << 20, 0, (void *)0x7);
    for (int i = 1; i < N; i += 2)
        tfree(p[i], size[i], 0, NULL);
    tempty();
    return fl_test_done("test_torch");
}
