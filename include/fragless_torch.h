/* fragless as PyTorch's CUDA allocator: the entry points libfragless.so exports beside
 * fragless.h, for torch.cuda.memory.CUDAPluggableAllocator (malloc, free) and for the
 * Python package (python/fragless, through ctypes: the rest).
 *
 * One allocator per device (ordinals 0..63), made on the device's first allocation from
 * $FRAGLESS_CONF on the cuda device ($FRAGLESS_CUDA_LIB, else libcuda.so.1); pools have
 * their own. These calls return no fl_status: PyTorch's hooks have none, so a failed
 * malloc throws (PyTorch turns it into a Python exception), free (which PyTorch calls
 * from a destructor) says what went wrong on stderr, and the others return -1 (or 0,
 * or -2 where said) and leave the message in fl_last_error() and the status in
 * fl_last_status() (the Python package raises fragless.Error with them). Every entry
 * point is thread safe.
 * Names: fragless_torch_*. */
#ifndef FRAGLESS_TORCH_H
#define FRAGLESS_TORCH_H

#include <stddef.h>
#include <sys/types.h> /* ssize_t, as PyTorch's pluggable-allocator hooks take it */

#include "fragless.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------
 * CUDAPluggableAllocator(path, "fragless_torch_malloc", "fragless_torch_free")
 * --------------------------------------------------------------------------------- */

/* size bytes on device for stream (a cudaStream_t): a device address aligned to at least
 * 512 bytes; NULL for size 0. A failure never returns NULL (PyTorch would not check it,
 * pytorch#133280): it THROWS a C++ exception, so call this only from C++ that catches
 * (PyTorch does). Out of memory throws c10::OutOfMemoryError (PyTorch's own type, found
 * in the process's libc10.so; PyTorch raises torch.OutOfMemoryError for it) whose text is
 * fragless's out-of-memory report; without PyTorch's libc10 in the process, a
 * std::bad_alloc with the same text. Any other failure (a negative size, no device)
 * throws std::runtime_error with the reason (PyTorch: RuntimeError). Out of memory is
 * counted in num_ooms; the first report is printed on stderr too. */
FL_API void *fragless_torch_malloc(ssize_t size, int device, void *stream);
/* The same for C and ctypes callers, which cannot take an exception: NULL on failure
 * (the reason in fl_last_error()). */
FL_API void *fragless_torch_malloc_nothrow(ssize_t size, int device, void *stream);
/* Frees ptr (NULL: nothing). size is what it was allocated with (PyTorch passes it; 0 or
 * less: not checked); stream is the one it was allocated on (PyTorch passes it: asked
 * about CUDA graph capture). A size that differs, an address that is not a live block, or
 * a device with no allocator is refused and said on stderr: nothing is freed. */
FL_API void fragless_torch_free(void *ptr, ssize_t size, int device, void *stream);

/* ---------------------------------------------------------------------------------
 * PyTorch's other allocator hooks (routed by fragless.torch.install())
 * --------------------------------------------------------------------------------- */

/* Tensor.record_stream: the live block at ptr is also used on stream (fl_record_stream),
 * on whichever device's allocator holds it: 0, or -1 (FL_ERR_NOT_FOUND when no allocator
 * holds a block there; else the allocator's failure). */
FL_API int fragless_torch_record_stream(void *ptr, void *stream);
/* torch.cuda.empty_cache(): every device's cached memory back to the driver
 * (fl_empty_cache), pools' included: 0, or -1 when one failed (during a CUDA graph
 * capture it gives nothing back; the first failure in fl_last_error()). */
FL_API int fragless_torch_empty_cache(void);
/* torch.cuda.set_per_process_memory_fraction: the device's limit becomes fraction (0, 1]
 * of its capacity (fl_set_limit), its allocator made if there is none yet: 0, or -1 (a
 * fraction out of range, a device that cannot be set up: no limit is set). */
FL_API int fragless_torch_set_memory_fraction(double fraction, int device);
/* torch.cuda.reset_peak_memory_stats(device) (fl_reset_peak_stats): 0 (nothing to do
 * when the device has no allocator yet), or -1 for a device out of range. */
FL_API int fragless_torch_reset_peak_stats(int device);
/* Whether conf (FRAGLESS_CONF syntax, the whole configuration) parses: 0, or -1 with the
 * key and value at fault (fragless.torch.install() checks before it changes PyTorch). */
FL_API int fragless_torch_conf_check(const char *conf);

/* ---------------------------------------------------------------------------------
 * CUDA graphs (fragless.torch's wrappers of torch.cuda.CUDAGraph; fl_stream_capture,
 * fl_graph_release)
 * --------------------------------------------------------------------------------- */

/* The capture id of stream on device into *capture, 0 when it is not capturing: 0, or -1
 * (the driver's failure, a device that cannot be set up). Every allocator of the device
 * (install()'s, pools') asks, so each knows of the capture before its first allocation;
 * with none yet, install()'s is made. */
FL_API int fragless_torch_capture_id(int device, void *stream, unsigned long long *capture);
/* The graph of capture is gone: its memory goes back on every allocator of the device
 * (fl_graph_release): 0, or -1 (the reason in fl_last_error()). */
FL_API int fragless_torch_graph_release(int device, unsigned long long capture);

/* ---------------------------------------------------------------------------------
 * Pools (fragless.torch.pool(): a torch.cuda.MemPool whose CUDAPluggableAllocator is one
 * of these slots, each with allocators of its own made from its configuration)
 * --------------------------------------------------------------------------------- */

#define FRAGLESS_TORCH_POOLS 4

/* A free slot for a pool configured by conf (FRAGLESS_CONF syntax, the whole
 * configuration): 1..FRAGLESS_TORCH_POOLS, or -1 when conf is malformed or no slot is
 * left. Slots are never closed. */
FL_API int fragless_torch_pool_open(const char *conf);
/* Slot N's entry points, with fragless_torch_malloc's and fragless_torch_free's contracts. */
FL_API void *fragless_torch_pool1_malloc(ssize_t size, int device, void *stream);
FL_API void *fragless_torch_pool2_malloc(ssize_t size, int device, void *stream);
FL_API void *fragless_torch_pool3_malloc(ssize_t size, int device, void *stream);
FL_API void *fragless_torch_pool4_malloc(ssize_t size, int device, void *stream);
FL_API void fragless_torch_pool1_free(void *ptr, ssize_t size, int device, void *stream);
FL_API void fragless_torch_pool2_free(void *ptr, ssize_t size, int device, void *stream);
FL_API void fragless_torch_pool3_free(void *ptr, ssize_t size, int device, void *stream);
FL_API void fragless_torch_pool4_free(void *ptr, ssize_t size, int device, void *stream);

/* ---------------------------------------------------------------------------------
 * Statistics and the state snapshot (fragless.stats(), memory_summary(), snapshot())
 * --------------------------------------------------------------------------------- */

/* The device's statistics (fl_get_stats) into *out: 0, -1 (*out untouched) when the
 * device has no allocator yet, or -2 when device (or slot, below) is out of range. */
FL_API int fragless_torch_stats(int device, fl_stats *out);
/* The statistics as JSON (fl_stats_json) / the summary table (fl_memory_summary) into
 * buf, with snprintf's contract (at most n bytes, terminated when n > 0; buf may be NULL
 * when n is 0): the length the whole text needs, or -1 / -2 as above. */
FL_API long long fragless_torch_stats_json(int device, char *buf, size_t n);
FL_API long long fragless_torch_memory_summary(int device, char *buf, size_t n);
/* The statistics of a slot's allocator (0: install()'s, as above; N: pool N's). */
FL_API int fragless_torch_pool_stats(int slot, int device, fl_stats *out);
FL_API long long fragless_torch_pool_stats_json(int slot, int device, char *buf, size_t n);
/* torch.cuda.memory._record_memory_history: the device's allocator (made if there is none)
 * records every allocation and free as RMM CSV at path from now on (`fragless compare`
 * reads it); path NULL stops and closes the file. 0, or -1 (already recording, the
 * file, a device that cannot be set up). */
FL_API int fragless_torch_record(int device, const char *path);
/* Writes out what the recording has buffered, so that the file can be read now. 0, or -1
 * (FL_ERR_IO) when a write of the recording failed: the file holds only what came before
 * it (fl_last_error names the file and the error). Stopping (fragless_torch_record with
 * NULL) says the same. */
FL_API int fragless_torch_record_flush(int device);
/* The state snapshot of the device's allocator as JSON at path (fl_allocator_snapshot):
 * 0, or -1 (FL_ERR_NOT_FOUND: no allocator on that device; the file). */
FL_API int fragless_torch_snapshot(int device, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* FRAGLESS_TORCH_H */
