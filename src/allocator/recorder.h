/* The trace recorder of an allocator (trace:PATH): every allocation, free and failed
 * allocation as a row of RMM's CSV log. Not thread safe by itself: the allocator's lock
 * serializes the calls.
 *
 * Whole lines or nothing: rows go to a buffer of the recorder's own and reach the file
 * only in write(2) calls of whole lines, at least every FL_RECORDER_FLUSH_NS, when the
 * buffer fills, and at close and exit (the allocator's atexit handler flushes under its
 * lock, so threads still allocating cannot splice a line). A process killed loses at
 * most the rows of the last FL_RECORDER_FLUSH_NS; the kernel may cut a write at a kill,
 * so the reader still accepts a cut last line with a warning.
 *
 * One file per process: the file is locked (flock) while its recorder is open. A second
 * process given the same path (several processes under one `fragless run --trace`, with
 * no %p in the path) finds it locked, or written since it started, and writes PATH.PID
 * instead, saying so on stderr; a file last written before the process started is an
 * earlier run's and is replaced. A forked child stops
 * recording (fli_recorder_forget): its rows would interleave with the parent's. */
#ifndef FL_RECORDER_H
#define FL_RECORDER_H

#include <stdint.h>

#include "util/util.h"

#define FL_RECORDER_FLUSH_NS (100 * 1000 * 1000)

typedef struct fli_recorder fli_recorder;

/* Creates (or replaces) the file and writes the CSV header at once, so a process killed
 * right away still leaves a readable file. The error names the path and the reason. */
fl_status fli_recorder_open(const char *path, fli_recorder **out);
/* An allocation: ok = it succeeded (an "allocate failure" row otherwise). */
void fli_recorder_alloc(fli_recorder *r, int ok, uint64_t ptr, uint64_t size, uint64_t stream);
/* A free of a block recorded by fli_recorder_alloc; the row carries its stream. */
void fli_recorder_free(fli_recorder *r, uint64_t ptr, uint64_t size);
/* Writes the buffered rows (whole lines). FL_ERR_IO, naming the file and the error, once
 * any write failed (recording stopped there): the file is not the whole record. */
fl_status fli_recorder_flush(fli_recorder *r);
/* At exit: flushes and drops every later row, so that no write is under way when the
 * process ends (an exit cuts a write in flight). NULL is ignored. */
void fli_recorder_stop(fli_recorder *r);
/* Flushes, unlocks and closes; NULL is ignored. FL_ERR_IO as fli_recorder_flush. */
fl_status fli_recorder_close(fli_recorder *r);
/* In a forked child: drops the buffered rows (the parent writes them) and closes the
 * child's descriptor without touching the file or its lock; NULL is ignored. */
void fli_recorder_forget(fli_recorder *r);
/* The file being written (PATH, or PATH.PID when PATH was taken). */
const char *fli_recorder_path(const fli_recorder *r);

#endif
