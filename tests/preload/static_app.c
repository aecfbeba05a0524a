/* A CUDA program as nvcc builds it by default, with the runtime linked in statically: it
 * reaches the driver directly (here the driver double, $FRAGLESS_CUDA_LIB, loaded as a
 * static cudart loads libcuda.so.1), so no cudaMalloc of a shared libcudart is ever
 * called and LD_PRELOAD cannot serve it. test_preload runs it under `fragless run`, which
 * must say so at exit rather than nothing. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef struct CUctx_st *CUcontext;
typedef unsigned long long CUdeviceptr;

int main(void)
{
    const char *path = getenv("FRAGLESS_CUDA_LIB");
    void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib) {
        printf("static_app: no driver (FRAGLESS_CUDA_LIB)\n");
        return 1;
    }
    CUresult (*init)(unsigned), (*retain)(CUcontext *, int), (*set_current)(CUcontext);
    CUresult (*alloc)(CUdeviceptr *, size_t), (*release)(CUdeviceptr);
    void *f[5] = {dlsym(lib, "cuInit"), dlsym(lib, "cuDevicePrimaryCtxRetain"), dlsym(lib, "cuCtxSetCurrent"),
                  dlsym(lib, "cuMemAlloc_v2"), dlsym(lib, "cuMemFree_v2")};
    memcpy(&init, &f[0], sizeof f[0]);
    memcpy(&retain, &f[1], sizeof f[1]);
    memcpy(&set_current, &f[2], sizeof f[2]);
    memcpy(&alloc, &f[3], sizeof f[3]);
    memcpy(&release, &f[4], sizeof f[4]);
    CUcontext ctx;
    CUdeviceptr p;
    if (init(0) || retain(&ctx, 0) || set_current(ctx) || alloc(&p, 1 << 20) || release(p)) {
        printf("static_app: a driver call failed\n");
        return 1;
    }
    printf("static_app: allocated through the driver\n");
    return 0;
}
