/* Loading an input for the commands (src/replay/input.c): a CSV log is one trace; a
 * PyTorch snapshot is one trace per device read. Which devices: the one asked for, else
 * the devices with an oom entry, else every device with events. */
#ifndef FL_INPUT_H
#define FL_INPUT_H

#include "pytorch/snapshot.h"
#include "replay/replay.h"

typedef struct fli_loaded {
    fli_prepared *p;         /* named "FILE (device N)" when the snapshot has several devices */
    fli_snapshot_info info;  /* n_devices is 0 for a CSV trace */
} fli_loaded;

#define FL_DEVICE_DEFAULT (-1)
#define FL_DEVICE_ALL (-2)          /* every device with events, OOM or not (fidelity) */

/* device: FL_DEVICE_DEFAULT, FL_DEVICE_ALL, or the snapshot device to read (FL_ERR_INVALID when the
 * snapshot has no such device; a CSV trace ignores it). Notes on the choice and the
 * readers' warnings go to warn (may be NULL). *out holds *n traces (free with
 * fli_loaded_free). Errors as fli_load_trace's. */
fl_status fli_load_inputs(const char *path, int device, FILE *warn, fli_loaded **out, int *n);
void fli_loaded_free(fli_loaded *v, int n);

/* How close the emulation of a snapshot's own allocator comes to what it recorded
 * (src/replay/fidelity.c): the snapshot replayed under its recorded settings, following
 * the recorded allocator (segments older than the recording rebuilt, segments given back
 * where it gave them back), the reserved memory at the end against the segments' total. */
typedef struct fli_fidelity {
    char policy[32];
    uint64_t recorded, emulated, emulated_peak;
    double diff;                    /* emulated / recorded - 1; NAN when nothing was recorded */
    int covered;                    /* recording covers every segment's lifetime */
    uint64_t old_segments, old_bytes;       /* older than the recording */
    uint64_t seeded_segments, seeded_bytes; /* of those, rebuilt in the emulation */
    uint64_t seed_failures;
    uint64_t recorded_released, emulated_released;
    uint64_t capacity;              /* the device's, where the snapshot implies it (0: none) */
} fli_fidelity;

#define FL_FIDELITY_CAVEAT 0.03     /* beyond it, compare, doctor and report say so */

fl_status fli_fidelity_run(const fli_prepared *p, const fli_snapshot_info *info, uint64_t granularity, fli_fidelity *f);
/* The caveat, or "" when the emulation is within FL_FIDELITY_CAVEAT. */
void fli_fidelity_caveat(const fli_fidelity *f, char *buf, size_t n);

#endif
