/* fragless as PyTorch's CUDA allocator: the entry points libfragless.so exports beside
 * fragless.h, for torch.cuda.memory.CUDAPluggableAllocator (malloc, free) and for the
 * Python package (python/fragless, through ctypes: the rest).
 *
 * One allocator per device (ordinals 0..63), made on the device's first allocation from
 * $FRAGLESS_CONF on the cuda device ($FRAGLESS_CUDA_LIB, else libcuda.so.1). These calls
 * return no fl_status: PyTorch's hooks have none, so what goes wrong is printed on stderr
 * and the result (NULL, -1) says that it did. Every entry point is thread safe.
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
 * 512 bytes, or NULL when size is 0 or negative, when the device's allocator cannot be
 * made (why on stderr), or when the allocation fails (out of memory is counted in
 * num_ooms; the first failure is printed on stderr, every one with $FRAGLESS_VERBOSE). */
FL_API void *fragless_torch_malloc(ssize_t size, int device, void *stream);
/* Frees ptr (NULL: nothing). size is what it was allocated with (PyTorch passes it; 0 or
 * less: not checked). A size that differs, an address that is not a live block, or a
 * device with no allocator is refused and said on stderr: nothing is freed. */
FL_API void fragless_torch_free(void *ptr, ssize_t size, int device, void *stream);

/* ---------------------------------------------------------------------------------
 * PyTorch's other allocator hooks (routed by fragless.torch.install())
 * --------------------------------------------------------------------------------- */

/* Tensor.record_stream: the live block at ptr is also used on stream (fl_record_stream),
 * on whichever device's allocator holds it; said on stderr when none does. */
FL_API void fragless_torch_record_stream(void *ptr, void *stream);
/* torch.cuda.empty_cache(): every device's cached memory back to the driver (fl_empty_cache). */
FL_API void fragless_torch_empty_cache(void);
/* torch.cuda.set_per_process_memory_fraction: the device's limit becomes fraction (0, 1]
 * of its capacity (fl_set_limit), its allocator made if there is none yet. A fraction
 * out of range sets no limit and is said on stderr. */
FL_API void fragless_torch_set_memory_fraction(double fraction, int device);
/* torch.cuda.reset_peak_memory_stats(device) (fl_reset_peak_stats); nothing when the
 * device has no allocator yet. */
FL_API void fragless_torch_reset_peak_stats(int device);

/* ---------------------------------------------------------------------------------
 * Statistics and the state snapshot (fragless.stats(), memory_summary(), snapshot())
 * --------------------------------------------------------------------------------- */

/* The device's statistics (fl_get_stats) into *out: 0, or -1 (*out untouched) when the
 * device has no allocator yet. */
FL_API int fragless_torch_stats(int device, fl_stats *out);
/* The statistics as JSON (fl_stats_json) / the summary table (fl_memory_summary) into
 * buf, with snprintf's contract (at most n bytes, terminated when n > 0; buf may be NULL
 * when n is 0): the length the whole text needs, or -1 when the device has no allocator
 * yet. */
FL_API long long fragless_torch_stats_json(int device, char *buf, size_t n);
FL_API long long fragless_torch_memory_summary(int device, char *buf, size_t n);
/* The state snapshot of the device's allocator as JSON at path (fl_allocator_snapshot):
 * 0, or -1 with the reason on stderr (no allocator on that device, the file). */
FL_API int fragless_torch_snapshot(int device, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* FRAGLESS_TORCH_H */
