/* Shared by the frontends that stand in for the CUDA allocator inside a process (the
 * PyTorch entry points, the LD_PRELOAD interposer): one allocator per device, made on
 * first use from $FRAGLESS_CONF on the cuda device. */
#ifndef FL_FRONTEND_H
#define FL_FRONTEND_H

#include <sys/types.h>

#include "fragless_torch.h"

#define FL_FRONTEND_MAX_DEVICES 64

/* The device's allocator, made on first use; NULL (with the reason on stderr) when it
 * cannot be made. Thread safe. */
fl_allocator *fli_frontend_allocator(int device);
/* The device's allocator if it exists, else NULL (never makes one). */
fl_allocator *fli_frontend_existing(int device);
/* Around a reset of the device's primary context (cudaDeviceReset), for each of the
 * device's allocators: fli_allocator_before_reset (0, or -1 when one failed, said on
 * stderr) and fli_allocator_after_reset. */
int fli_frontend_before_reset(int device);
void fli_frontend_after_reset(int device);

/* The same for one slot of the PyTorch frontend (0: the above; 1..FRAGLESS_TORCH_POOLS:
 * fragless.torch.pool()'s, made from the configuration the pool was opened with). */
fl_allocator *fli_frontend_slot_allocator(int slot, int device);
fl_allocator *fli_frontend_slot_existing(int slot, int device);
/* The PyTorch entry points' work without C++ (torch_malloc.cpp throws on failure): an
 * allocation (FL_OK with *out, NULL for size 0; else the failure, its message in
 * fl_last_error, FL_ERR_OOM for out of memory) and a free (said on stderr when refused). */
fl_status fli_frontend_torch_malloc(int slot, ssize_t size, int device, void *stream, void **out);
void fli_frontend_torch_free(int slot, void *ptr, ssize_t size, int device, void *stream);

#endif
