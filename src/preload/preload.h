/* libfragless_preload.so's own parts (src/preload): what preload.c shares with graphs.c.
 * Hidden like everything of the library but the runtime entry points it interposes. */
#ifndef FL_PRELOAD_H
#define FL_PRELOAD_H

#include <stdint.h>

#define FL_EXPORT __attribute__((visibility("default")))

/* The runtime's ABI (cuda_runtime_api.h, driver_types.h), declared here so that no
 * toolkit is needed to build: cudaError_t is an int-sized enum, cudaStream_t a pointer. */
typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999
};

/* The runtime's per-thread default stream (driver_types.h): one handle, each thread's own
 * stream. */
#define PER_THREAD ((cudaStream_t)0x2)

/* The allocator's name for a stream (the per-thread stream's key for cudaStreamPerThread). */
uint64_t fli_preload_stream_key(cudaStream_t stream);
/* The device an allocation on stream goes to: the stream's (cudaMallocAsync's contract). */
int fli_preload_alloc_device(cudaStream_t stream);
/* FRAGLESS_VERBOSE=1. */
int fli_preload_verbose(void);
/* The runtime's current device (cudaSetDevice), else 0. */
int fli_preload_current_device(void);
/* The device whose allocator holds the live block starting at ptr (the current device's
 * first), and that allocator in *a; -1 when none has it. */
struct fl_allocator;
int fli_preload_owner(void *ptr, struct fl_allocator **a);
/* Memory fragless did not hand out, with no runtime to pass it to: said, and
 * cudaErrorInvalidValue. */
cudaError_t fli_preload_not_ours(const char *fn, void *ptr);

#endif
