/* A stand-in for libcudart.so on a machine without a GPU: the allocation entry points
 * the preload library interposes, each failing with cudaErrorNoDevice. A program linked
 * against it can allocate only when fragless serves it, which is what test_preload
 * shows. The ABI is the runtime's (an int-sized error enum, pointer streams). */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum { cudaErrorInvalidValue = 1, cudaErrorNoDevice = 100 };

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **ptr, size_t size)
{
    (void)size;
    if (ptr)
        *ptr = NULL;
    return cudaErrorNoDevice;
}

cudaError_t cudaFree(void *ptr)
{
    (void)ptr;
    return cudaErrorNoDevice;
}

cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream)
{
    (void)stream;
    return cudaMalloc(ptr, size);
}

cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream)
{
    (void)stream;
    return cudaFree(ptr);
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    (void)free_bytes;
    (void)total_bytes;
    return cudaErrorNoDevice;
}

/* CUDART_STUB_DEVICE=N plays a runtime whose current device is N (cudaSetDevice), so
 * that the test can show the interposer allocates on the program's device. */
cudaError_t cudaGetDevice(int *device)
{
    const char *env = getenv("CUDART_STUB_DEVICE");
    if (!device)
        return cudaErrorInvalidValue;
    if (!env || !env[0])
        return cudaErrorNoDevice;
    *device = atoi(env);
    return 0;
}

/* Nothing was ever launched, so there is nothing to wait for: success, counted, and the
 * count on stderr at exit with CUDART_STUB_REPORT=1 (fragless' cudaFree waits here, as
 * the runtime's cudaFree does). */
static atomic_ulong syncs;

cudaError_t cudaDeviceSynchronize(void)
{
    atomic_fetch_add(&syncs, 1);
    return 0;
}

__attribute__((destructor)) static void report(void)
{
    const char *env = getenv("CUDART_STUB_REPORT");
    if (env && env[0] == '1')
        fprintf(stderr, "cudart_stub: cudaDeviceSynchronize called %lu times\n", atomic_load(&syncs));
}
