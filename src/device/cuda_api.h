/* The slice of the CUDA driver API fragless uses, declared here so that the project
 * builds without the CUDA toolkit: types, values and function signatures as the driver's
 * ABI defines them (cuda.h, CUDA 12/13). Shared by the cuda device (which loads the
 * driver with dlopen) and the driver test double in tests/. */
#ifndef FL_CUDA_API_H
#define FL_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

/* CUresult values used by fragless (the driver has many more). */
enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_ALREADY_MAPPED = 208,
    CUDA_ERROR_NOT_MAPPED = 211,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_NOT_PERMITTED = 800,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
    CUDA_ERROR_UNKNOWN = 999
};

/* CUdevice_attribute */
enum {
    CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102,
    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103,
    CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED = 110,
    CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED = 128
};

typedef struct CUuuid_st {
    char bytes[16];
} CUuuid;

/* Virtual memory management. */
typedef enum { CU_MEM_ALLOCATION_TYPE_INVALID = 0, CU_MEM_ALLOCATION_TYPE_PINNED = 1 } CUmemAllocationType;
/* Handle types are bits: a handle may be made exportable as several at once. */
typedef enum { CU_MEM_HANDLE_TYPE_NONE = 0, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1,
               CU_MEM_HANDLE_TYPE_FABRIC = 8 } CUmemAllocationHandleType;
typedef enum { CU_MEM_LOCATION_TYPE_INVALID = 0, CU_MEM_LOCATION_TYPE_DEVICE = 1 } CUmemLocationType;
typedef enum { CU_MEM_ACCESS_FLAGS_PROT_NONE = 0, CU_MEM_ACCESS_FLAGS_PROT_READ = 1,
               CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3 } CUmemAccess_flags;
typedef enum { CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0,
               CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1 } CUmemAllocationGranularity_flags;

typedef struct CUmemLocation {
    CUmemLocationType type;
    int id;
} CUmemLocation;

typedef struct CUmemAllocationProp {
    CUmemAllocationType type;
    CUmemAllocationHandleType requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct CUmemAccessDesc {
    CUmemLocation location;
    CUmemAccess_flags flags;
} CUmemAccessDesc;

/* CUDA graph capture: a stream's state, and a thread's mode (which calls capture forbids). */
typedef uint64_t cuuint64_t;
typedef enum {
    CU_STREAM_CAPTURE_STATUS_NONE = 0,
    CU_STREAM_CAPTURE_STATUS_ACTIVE = 1,
    CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2
} CUstreamCaptureStatus;
typedef enum {
    CU_STREAM_CAPTURE_MODE_GLOBAL = 0,
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
    CU_STREAM_CAPTURE_MODE_RELAXED = 2
} CUstreamCaptureMode;

/* Special stream handles (cuda.h): the legacy default stream, shared by every thread of a
 * context, and the per-thread default stream: one handle that names the calling thread's
 * own stream, a different one in each thread. */
#define CU_STREAM_LEGACY ((CUstream)0x1)
#define CU_STREAM_PER_THREAD ((CUstream)0x2)

/* cuEventCreate flags */
enum { CU_EVENT_DEFAULT = 0, CU_EVENT_DISABLE_TIMING = 2 };

/* Every driver entry point fragless calls, as (symbol, return, parameters). The cuda
 * device resolves each by this exact symbol name with dlsym; the test double exports
 * exactly these symbols. Versioned names (_v2) are the ones cuda.h maps the plain
 * names to; cuStreamGetCaptureInfo is the three-argument form every driver since CUDA
 * 10.1 exports under that name (cuda.h 12.3+ maps the plain name to _v3, which adds the
 * graph's edges fragless does not need). */
#define FL_CUDA_FUNCTIONS(X)                                                                        \
    X(cuInit, (unsigned int flags))                                                                 \
    X(cuDriverGetVersion, (int *version))                                                           \
    X(cuDeviceGetCount, (int *count))                                                               \
    X(cuDeviceGet, (CUdevice *device, int ordinal))                                                 \
    X(cuDeviceGetAttribute, (int *value, int attrib, CUdevice dev))                                 \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))                                           \
    X(cuDevicePrimaryCtxRetain, (CUcontext *ctx, CUdevice dev))                                     \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev))                                                 \
    X(cuDeviceCanAccessPeer, (int *can_access, CUdevice dev, CUdevice peer))                        \
    X(cuDeviceGetUuid_v2, (CUuuid *uuid, CUdevice dev))                                             \
    X(cuCtxGetCurrent, (CUcontext *ctx))                                                            \
    X(cuCtxSetCurrent, (CUcontext ctx))                                                             \
    X(cuCtxPushCurrent_v2, (CUcontext ctx))                                                         \
    X(cuCtxPopCurrent_v2, (CUcontext *ctx))                                                         \
    X(cuCtxSynchronize, (void))                                                                     \
    X(cuCtxGetDevice, (CUdevice *device))                                                           \
    X(cuStreamGetCtx, (CUstream stream, CUcontext *ctx))                                            \
    X(cuGetErrorName, (CUresult error, const char **name))                                          \
    X(cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes))                                   \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytes))                                             \
    X(cuMemFree_v2, (CUdeviceptr dptr))                                                             \
    X(cuMemGetAllocationGranularity,                                                                \
      (size_t *granularity, const CUmemAllocationProp *prop, CUmemAllocationGranularity_flags option)) \
    X(cuMemAddressReserve,                                                                          \
      (CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr, unsigned long long flags)) \
    X(cuMemAddressFree, (CUdeviceptr ptr, size_t size))                                             \
    X(cuMemCreate, (CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop, \
                    unsigned long long flags))                                                      \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle))                                          \
    X(cuMemMap, (CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,   \
                 unsigned long long flags))                                                         \
    X(cuMemUnmap, (CUdeviceptr ptr, size_t size))                                                   \
    X(cuMemSetAccess, (CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count))    \
    X(cuMemGetAddressRange_v2, (CUdeviceptr *base, size_t *size, CUdeviceptr ptr))                  \
    X(cuMemExportToShareableHandle,                                                                 \
      (void *shareable, CUmemGenericAllocationHandle handle, CUmemAllocationHandleType type,         \
       unsigned long long flags))                                                                   \
    X(cuMemImportFromShareableHandle,                                                               \
      (CUmemGenericAllocationHandle *handle, void *os_handle, CUmemAllocationHandleType type))       \
    X(cuStreamSynchronize, (CUstream stream))                                                       \
    X(cuEventCreate, (CUevent *event, unsigned int flags))                                          \
    X(cuEventRecord, (CUevent event, CUstream stream))                                              \
    X(cuEventQuery, (CUevent event))                                                                \
    X(cuEventDestroy_v2, (CUevent event))                                                            \
    X(cuStreamGetCaptureInfo, (CUstream stream, CUstreamCaptureStatus *status, cuuint64_t *id))     \
    X(cuThreadExchangeStreamCaptureMode, (CUstreamCaptureMode *mode))

#endif
