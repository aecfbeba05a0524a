/* Shared by the frontends that stand in for the CUDA allocator inside a process (the
 * PyTorch entry points, the LD_PRELOAD interposer): one allocator per device, made on
 * first use from $FRAGLESS_CONF on the cuda device. */
#ifndef FL_FRONTEND_H
#define FL_FRONTEND_H

#include "fragless.h"

#define FL_FRONTEND_MAX_DEVICES 64

/* The device's allocator, made on first use; NULL (with the reason on stderr) when it
 * cannot be made. Thread safe. */
fl_allocator *fl_frontend_allocator(int device);
/* The device's allocator if it exists, else NULL (never makes one). */
fl_allocator *fl_frontend_existing(int device);

#endif
