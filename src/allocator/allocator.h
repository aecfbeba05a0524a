/* Internal pieces of the allocator object (allocator.c): the out-of-memory judgment that
 * doctor shares, the statistics texts, the state snapshot writer and the publisher for
 * `fragless top`. Not included from outside src/ and tests/. */
#ifndef FL_ALLOCATOR_H
#define FL_ALLOCATOR_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "policy/policy.h"

/* For replay and the report, which drive an allocator they made from one thread: the
 * policy inside (for its walk and self-check) and the live bytes, each request rounded
 * up to 512 B (fli_live_size), as the out-of-memory report counts them. */
fli_policy *fli_allocator_policy(const fl_allocator *a);
/* fl_free_sized (size 0: not checked) by a frontend that knows the stream the block was
 * allocated on (PyTorch passes it): asking the device about it first lets a free see a
 * CUDA graph capture that has not allocated yet. */
/* Starts recording every allocation and free as RMM CSV at path (as trace:PATH does from
 * the start), or stops (path NULL) and closes the file. Starting while recording is
 * FL_ERR_INVALID. For torch.cuda.memory._record_memory_history. */
fl_status fli_allocator_trace(fl_allocator *a, const char *path);
/* Writes out what the trace has buffered (for a reader in the same process). FL_ERR_IO
 * when a write of the trace failed: the file is not the whole record (fli_recorder_flush).
 * Stopping (fli_allocator_trace with NULL) returns the same. */
fl_status fli_allocator_trace_flush(fl_allocator *a);
fl_status fli_allocator_free_stream(fl_allocator *a, uint64_t addr, uint64_t size, uint64_t stream);
uint64_t fli_allocator_live(const fl_allocator *a);
/* Turns the thread caches on now (tcache.h; they turn on by themselves when two threads
 * meet at the allocator's lock): for tests and the benchmark. */
fl_status fli_allocator_threads(fl_allocator *a);
/* Allocations made without the allocator's lock since it was created: thread-cache hits
 * and stream-local operations (allocator.c, "threads"); *refills (refills may be NULL):
 * the stream-local ones that took the lock only for room under the peaks (local_refill),
 * not counted in. */
uint64_t fli_allocator_unlocked_allocs(fl_allocator *a, uint64_t *refills);

/* For the CUDA runtime's frontend (cudaFree of another device's block, cudaFreeAsync on
 * another stream): the stream the live block at addr was allocated on, with *known 0
 * when the policy does not keep it; FL_ERR_NOT_FOUND when addr is no live block here (a
 * block waiting for record_stream's events is freed already). */
fl_status fli_allocator_block_stream(fl_allocator *a, uint64_t addr, uint64_t *stream, int *known);
/* Where a legacy CUDA IPC handle of the live block at addr would open: the start of the
 * driver allocation holding it (fli_dev_legacy_ipc_base). FL_ERR_NOT_FOUND when addr is
 * no live block's start; FL_ERR_UNSUPPORTED when its memory has no legacy handle (virtual
 * memory, or a device without IPC). */
fl_status fli_allocator_legacy_ipc_base(fl_allocator *a, uint64_t addr, uint64_t *base);
/* The live block at addr (of at least want bytes) as the physical allocations under it
 * (fli_dev_export: at most max, their descriptors the caller's), *offset into the first;
 * *size: the block's size. FL_ERR_NOT_FOUND when addr is no live block's start of want
 * bytes or more ("FN(ADDR): not a live block of this allocator"). */
fl_status fli_allocator_export(const char *fn, fl_allocator *a, uint64_t addr, uint64_t want, fl_ipc_piece *out,
                               uint32_t max, uint32_t *n, uint64_t *offset, uint64_t *size);
/* The one physical allocation (mapping) of a's device that holds addr, whatever block it
 * belongs to, as a file descriptor (the caller's): CUDA's legacy IPC semantics for an
 * address that is no block's start. FL_ERR_INVALID when addr is in no mapping of a's
 * device. */
fl_status fli_allocator_export_mapping(fl_allocator *a, uint64_t addr, fl_ipc_piece *out);

/* For the CUDA runtime's frontend (cudaStreamDestroy, a thread's end for its per-thread
 * stream), called before the stream goes: the allocator stops asking the driver about
 * it, and the policy may give what it kept for it to a stream created later, once the
 * work queued on it so far is done (policy.h: stream_gone). */
void fli_allocator_stream_gone(fl_allocator *a, uint64_t stream);
/* For the CUDA runtime's frontend (cudaDeviceReset), around the reset of the device's
 * primary context, which destroys the context's memory (cuMemAlloc's), events and
 * streams, and leaves virtual memory (cudaMallocAsync's) alone. before: with a policy
 * whose memory is the context's (its ops' reset_destroys), everything goes back to the
 * device and the live blocks are forgotten (a trace being recorded gets their frees),
 * the allocator starting again empty with its configuration, limit, totals and peaks
 * (FL_ERR_NOMEM, nothing changed, when the empty policy cannot be made); with virtual
 * memory the live blocks stay, and what waits for an event is settled by a synchronize
 * and the cache given back (empty_cache; its error, if any). after: the device makes
 * its context again before its next call (fli_dev_context_reset). */
fl_status fli_allocator_before_reset(fl_allocator *a);
void fli_allocator_after_reset(fl_allocator *a);
/* Replay that follows a recorded PyTorch run (the policy's seed and release ops):
 * fli_allocator_seed holds a segment as it was before recording began, with its live
 * blocks (their addresses in addrs), counted like any allocation; FL_ERR_UNSUPPORTED
 * for a policy that is not PyTorch's. fli_allocator_release gives back what the recorded
 * allocator gave back (a cached segment of size bytes on stream); *freed: the bytes (0
 * when the emulation holds no such segment, or the policy has none). */
fl_status fli_allocator_seed(fl_allocator *a, const fli_seed_segment *sg, const fli_seed_block *blocks, uint64_t *addrs);
fl_status fli_allocator_release(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *freed);

/* Fills the judgment of an out-of-memory moment from the facts in r (request, stream,
 * capacity, limit, live, reserved, free_in_reserved, largest_free): device_free,
 * external fragmentation (largest free taken over what the policy holds and what may
 * still be obtained), the verdict (exhaustion when live + request > limit), needs,
 * advice and text. policy: the policy's name, for the advice; device: for the text. */
void fli_oom_judge(fl_oom_report *r, const char *policy, int device);

/* The state snapshot of a policy as JSON (format: docs/ARCHITECTURE.md). stats may be
 * NULL. */
fl_status fli_state_write(const fli_policy *p, const fl_stats *stats, FILE *out);

/* `fragless top`: statistics in a small shared-memory file per process and device
 * (publish.c; format in docs/ARCHITECTURE.md). The file is one fli_pub_record, written
 * through a shared mapping under a seqlock: seq is odd while an update is being
 * written, so a reader that sees the same even seq before and after its copy has a
 * whole record. The header (magic .. comm) never changes once the file has its name. */
#define FL_PUB_MAGIC UINT32_C(0x504f5446) /* the bytes "FTOP" */
#define FL_PUB_VERSION 4 /* 2: rank and the GPU's UUID; 3: graph bytes in fl_stats; 4: stitched blocks */
#define FL_PUB_WORDS (1 + sizeof(fl_stats) / 8) /* updated_ns, then fl_stats */
#define FL_PUB_PREFIX "fragless."             /* file names: fragless.PID.DEVICE[.N] */

typedef struct fli_pub_record {
    uint32_t magic;               /* FL_PUB_MAGIC */
    uint32_t version;             /* FL_PUB_VERSION */
    uint32_t size;                /* sizeof(fli_pub_record), the file's length */
    int32_t device;               /* the CUDA ordinal in that process */
    uint64_t pid;
    uint64_t start_time;          /* the process's start, /proc/PID/stat field 22 (clock
                                     ticks after boot); 0 = unknown */
    char comm[32];                /* /proc/PID/comm, NUL-terminated */
    int32_t rank;                 /* $RANK, else $LOCAL_RANK, else -1 */
    uint32_t reserved;
    char uuid[48];                /* "GPU-..." as NVML writes it ("" unknown): the GPU, whatever
                                     CUDA_VISIBLE_DEVICES made of its ordinal */
    _Atomic uint64_t seq;         /* even: stable; odd: being written */
    _Atomic uint64_t words[FL_PUB_WORDS]; /* CLOCK_REALTIME ns of the update, fl_stats */
} fli_pub_record;

/* A record as a reader copied it. */
typedef struct fli_pub_entry {
    uint64_t pid, start_time;
    int device, rank;
    char comm[32];
    char uuid[48];
    uint64_t seq;                 /* even; grows by 2 per update */
    uint64_t updated_ns;          /* CLOCK_REALTIME of the latest update */
    fl_stats stats;
} fli_pub_entry;

typedef struct fli_publisher fli_publisher;
/* Creates the file of this process and device in fli_publish_dir(), with zero
 * statistics; uuid: the GPU's (fli_dev_uuid_str, "" when unknown). The error names the
 * path and the system's reason. One writer at a time per publisher (the allocator's
 * lock). */
fl_status fli_publish_open(int device, const char *uuid, fli_publisher **out);
/* Publishes a new set of statistics: a copy into the mapping, no system call. */
void fli_publish_update(fli_publisher *p, const fl_stats *s);
/* Removes the file (only in the process that made it) and frees p. NULL is ignored.
 * Files still open at exit() are removed by an atexit handler. */
void fli_publish_close(fli_publisher *p);
/* The file's path. */
const char *fli_publish_path(const fli_publisher *p);
/* Registers the fork handlers of the publishers' list (once). The allocator registers
 * its own after these, so that in a child the list is usable when the allocator's
 * handler closes the parent's publishers (fli_publish_close in a child detaches: the
 * file is the parent's) and opens the child's own. */
void fli_publish_atfork(void);
/* Registers the allocators' fork handlers now (else at the first allocator made): a
 * module whose lock is taken before allocators' registers its own after this, so that
 * its prepare handler runs first. */
void fli_allocator_atfork(void);
/* $FRAGLESS_TOP_DIR when set and not empty, else /dev/shm. */
const char *fli_publish_dir(void);

/* Readers. The files are in a folder anyone can write: fli_pub_reader_open opens only a
 * regular file of exactly a record's size (never a FIFO, device or symlink; without
 * blocking) and checks its magic, version and record size: FL_ERR_PARSE (message: the
 * path and what is wrong) for anything else, FL_ERR_IO when it cannot be opened (errno
 * kept: ENOENT when its process just removed it). The header is copied then; the record
 * is read with pread, never mapped, so a file cut short while read is an error, not a
 * SIGBUS. */
typedef struct fli_pub_reader {
    int fd;
    uid_t uid;                    /* the file's owner */
    uint64_t pid, start_time;     /* as the header claims */
    int device, rank;
    char comm[32];                /* NUL-terminated; untrusted text */
    char uuid[48];                /* NUL-terminated; untrusted text */
} fli_pub_reader;
fl_status fli_pub_reader_open(const char *path, fli_pub_reader *r);
void fli_pub_reader_close(fli_pub_reader *r);
/* A consistent copy of the record: WHOLE; BUSY when every try met an update in progress
 * until deadline_ns (fli_now_ns() clock; 0: 20 ms from now; a few quick tries are made
 * even past it); CUT when the file was cut short (fl_last_error says so). */
typedef enum fli_pub_read { FL_PUB_WHOLE, FL_PUB_BUSY, FL_PUB_CUT } fli_pub_read;
fli_pub_read fli_pub_reader_snapshot(const fli_pub_reader *r, uint64_t deadline_ns, fli_pub_entry *out);
/* open + snapshot + close; BUSY and CUT are FL_ERR_PARSE. */
fl_status fli_publish_read(const char *path, fli_pub_entry *out);

/* Liveness of a publisher: the start time of process pid (/proc/PID/stat field 22),
 * 0 when it cannot be read. fli_publish_stale: 1 when the record's process is gone, or
 * pid now names a process that started at another time (pid reused); why says which. */
uint64_t fli_proc_start_time(uint64_t pid);
uint64_t fli_proc_stat_field(uint64_t pid, int field);
int fli_publish_stale(uint64_t pid, uint64_t start_time, const char **why);

#endif
