/* A stand-in for PyTorch's C++ side of a pluggable allocator, for tests driven from
 * Python through ctypes (which cannot take a C++ exception): it calls the plug-in's
 * malloc by address, as CUDAPluggableAllocator does, and translates what it throws the
 * way PyTorch's bindings do: c10::OutOfMemoryError -> 1 (torch.OutOfMemoryError), any
 * other std::exception -> 2 (RuntimeError), with the text in msg. */
#include <cstdio>
#include <sys/types.h>

#include "c10.h"

typedef void *(*malloc_fn)(ssize_t, int, void *);

extern "C" TORCHSTUB_API int torchstub_malloc(void *fn, ssize_t size, int device, void *stream, void **out,
                                              char *msg, size_t n)
{
    *out = nullptr;
    try {
        *out = reinterpret_cast<malloc_fn>(fn)(size, device, stream);
        return 0;
    } catch (const c10::OutOfMemoryError &e) {
        snprintf(msg, n, "%s", e.what_without_backtrace());
        return 1;
    } catch (const std::exception &e) {
        snprintf(msg, n, "%s", e.what());
        return 2;
    }
}
