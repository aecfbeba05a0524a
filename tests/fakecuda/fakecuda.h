/* The controls of the CUDA driver test double (tests/fakecuda/fakecuda.c) that are not
 * CUDA: call counters, "fail the Nth call" of the entry points the device layer does not
 * count, completion of pending events, and a reset. A test resolves them with dlsym next
 * to the cu* entry points of FL_CUDA_FUNCTIONS. */
#ifndef FAKECUDA_H
#define FAKECUDA_H

#include "device/cuda_api.h"

/* Environment, read when the library is first used and again by fakecuda_reset():
 *   FAKECUDA_DEVICES=N        devices (default 1, at most 64; 0: cuInit says CUDA_ERROR_NO_DEVICE)
 *   FAKECUDA_CAPACITY=BYTES   physical memory per device (default 1 GiB; K/M/G/T suffixes)
 *   FAKECUDA_GRANULARITY=B    VMM granularity (default 2 MiB; a power of two >= the page size)
 *   FAKECUDA_NO_VMM=1         no virtual memory management: attribute 102 reads 0 and
 *                             cuMemCreate / cuMemAddressReserve return CUDA_ERROR_NOT_SUPPORTED
 *   FAKECUDA_PEER=0           devices cannot access each other's memory (default 1: every
 *                             pair can; cuMemSetAccess refuses a device that cannot)
 *   FAKECUDA_POSIX_FD=0       handles cannot be exportable as file descriptors (attribute 103)
 *   FAKECUDA_RDMA=0           no GPUDirect RDMA with VMM (attribute 110): cuMemCreate
 *                             refuses allocFlags.gpuDirectRDMACapable (default 1)
 *   FAKECUDA_FABRIC=0|1|2     fabric handles: 0 unsupported (default), 1 supported, 2 the
 *                             attribute says yes but cuMemCreate with FABRIC returns
 *                             CUDA_ERROR_NOT_PERMITTED (no IMEX channel)
 *   FAKECUDA_UNMAP_ONE=1      cuMemUnmap refuses a range of more than one mapping
 *                             (CUDA_ERROR_INVALID_VALUE, nothing unmapped). Default 0: like
 *                             the driver, it unmaps any range of whole mappings in one call
 *                             (NVIDIA's vectorAddMMAP sample unmaps one it mapped per device)
 * A malformed value is reported on stderr and makes cuInit return CUDA_ERROR_INVALID_VALUE. */

/* Counters: calls of one entry point ("cuMemMap"), or of all of them ("*"), including calls
 * that failed; 0 (and a line on stderr) for a name that is no entry point. */
unsigned long long fakecuda_calls(const char *fn);

/* Fault injection, for the entry points the device layer does not count (cuInit,
 * cuDeviceTotalMem_v2, cuMemGetAllocationGranularity, cuCtxGetCurrent, cuMemGetInfo_v2,
 * the event calls, ...): the n-th next call of fn (1 = the very next) returns err without
 * side effects or outputs. It exists to test what cuda.c makes of driver errors: opening
 * a device, the context it makes current before every call, events. The calls behind
 * device calls (cuMemCreate, cuMemMap, ..., cuCtxSynchronize) are refused (a line on
 * stderr): tests fail those with fl_device_set_fault, the one fault injector every test
 * uses. One plan per name: a new one replaces the old, n = 0 cancels. err must not be
 * CUDA_SUCCESS. */
void fakecuda_fail_call(const char *fn, unsigned long long n, CUresult err);

/* Bytes charged on a device: its live handles (imported ones excepted: their memory is
 * the exporter's) and cuMemAlloc blocks. */
size_t fakecuda_used(int dev);

/* A simulated access by device dev (a peer copy, a kernel, NCCL) to [va, va+n):
 * CUDA_SUCCESS when every byte is mapped and cuMemSetAccess granted dev read (write)
 * access to it, else CUDA_ERROR_ILLEGAL_ADDRESS, as a GPU faults. cuMemAlloc memory is
 * reachable by its own device only. */
CUresult fakecuda_device_access(int dev, CUdeviceptr va, size_t n, int write);

/* The handle mapped at va: the handle types it was created exportable as
 * (CUmemAllocationHandleType bits) and its GPUDirect RDMA flag; -1 when va is not mapped. */
int fakecuda_handle_props(CUdeviceptr va, unsigned *types, int *rdma);

/* The calling thread's context stack depth (0: no context current). */
int fakecuda_ctx_depth(void);

/* Streams and events: with auto-complete on (the default) a recorded event is complete at
 * once; off, it stays CUDA_ERROR_NOT_READY until its stream or context is synchronized or
 * fakecuda_complete_all() is called. */
void fakecuda_set_auto_complete(int on);
void fakecuda_complete_all(void);

/* A thread held inside a driver call, for races made deterministic: the next call of fn
 * (an entry point's name) waits, before it does anything, until fakecuda_release_held();
 * fakecuda_held() says whether a call waits now. The waiting call holds none of the
 * double's state: other threads' calls go on. */
void fakecuda_hold_call(const char *fn);
int fakecuda_held(void);
void fakecuda_release_held(void);

/* CUDA graphs, standing in for what PyTorch does around an allocator (cuStreamBeginCapture,
 * kernel launches into the capture, cuStreamEndCapture, cuGraphLaunch; fragless calls
 * none of these, only cuStreamGetCaptureInfo and cuThreadExchangeStreamCaptureMode).
 * While a capture is underway the double applies the driver's rules: a synchronize of the
 * context or of a capturing stream, a query of an event recorded in a capture, and any
 * memory call or event query from a thread the capture mode prohibits (GLOBAL: any
 * thread, unless it swapped itself to RELAXED; THREAD_LOCAL: the capturing thread) fail
 * with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate every capture underway (said
 * on stderr, counted by fakecuda_capture_violations()); end_capture then fails with
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
 *   begin_capture: stream starts capturing (mode: CUstreamCaptureMode) with a new id.
 *   capture_use:   captured work reads and writes [ptr, ptr+size), mapped and accessible
 *                  now (else CUDA_ERROR_ILLEGAL_ADDRESS): what backs each granule is kept.
 *   end_capture:   the graph (its id is the capture's) or INVALIDATED.
 *   graph_launch:  a replay: each range must still be backed by the same memory, readable,
 *                  and hold what the previous launch wrote (else someone else got it);
 *                  then it is written again. A fault is said on stderr, counted by
 *                  fakecuda_graph_faults(), and gives CUDA_ERROR_ILLEGAL_ADDRESS. */
CUresult fakecuda_begin_capture(CUstream stream, CUstreamCaptureMode mode);
CUresult fakecuda_capture_use(CUstream stream, CUdeviceptr ptr, size_t size);
CUresult fakecuda_end_capture(CUstream stream, unsigned long long *graph);
CUresult fakecuda_graph_launch(unsigned long long graph);
void fakecuda_graph_destroy(unsigned long long graph);
/* The program destroyed stream (cuStreamDestroy, which the contract leaves out): the
 * driver's capture query and an event record on it then fail with
 * CUDA_ERROR_INVALID_HANDLE, what a driver that catches the stale handle returns (it
 * does not promise to catch it). Work queued on it before stays pending until done. */
void fakecuda_stream_destroy(CUstream stream);
/* A stream made with this handle in context ctx (a runtime double's cudaStreamCreate,
 * which may hand out a destroyed stream's handle again): valid again, and
 * cuStreamGetCtx answers ctx for it (NULL: the current context, as for any other value). */
void fakecuda_stream_create(CUstream stream, CUcontext ctx);
unsigned long long fakecuda_capture_violations(void);
/* cuDevicePrimaryCtxReset_v2 (fakecuda.c; the runtime double's cudaDeviceReset calls it)
 * destroys the device's cuMemAlloc blocks and its context's events and streams, and
 * leaves the context inactive until retained again: how many blocks and events resets
 * destroyed so far (a client that held none at the reset leaves the count as it was). */
unsigned long long fakecuda_reset_losses(void);
unsigned long long fakecuda_graph_faults(void);

/* Drops every handle, mapping, reservation, allocation, event, capture and graph
 * (addresses handed out become invalid), zeroes the counters, cancels fault plans, turns
 * auto-complete back on and re-reads the environment. Initialization, primary-context
 * reference counts and each thread's current context (and capture mode) survive, so a
 * client that holds a context keeps working. */
void fakecuda_reset(void);

#endif
