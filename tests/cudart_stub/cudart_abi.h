/* The CUDA runtime's ABI for the calls fragless serves beyond cudaMalloc's family, declared
 * once for the runtime double (cudart_stub.c) and the program that calls it
 * (tests/preload/app.c), so that no toolkit is needed to build them: the pitched
 * allocations and legacy IPC (cuda_runtime_api.h, driver_types.h). */
#ifndef FL_TEST_CUDART_ABI_H
#define FL_TEST_CUDART_ABI_H

#include <stddef.h>

typedef int cudaError_t;

struct cudaExtent {
    size_t width, height, depth;
};
struct cudaPitchedPtr {
    void *ptr;
    size_t pitch, xsize, ysize;
};
cudaError_t cudaMallocPitch(void **ptr, size_t *pitch, size_t width, size_t height);
cudaError_t cudaMalloc3D(struct cudaPitchedPtr *p, struct cudaExtent extent);

/* 64 opaque bytes, passed by value to the open. */
typedef struct cudaIpcMemHandle_st {
    char reserved[64];
} cudaIpcMemHandle_t;
cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *ptr);
cudaError_t cudaIpcOpenMemHandle(void **ptr, cudaIpcMemHandle_t handle, unsigned int flags);
cudaError_t cudaIpcCloseMemHandle(void *ptr);

#endif
