/* fragless — a GPU memory allocator that does not fragment, and the tools to measure
 * how much memory a job needs under each allocator.
 *
 * Public API. Every function that can fail returns an fl_status; the message of the
 * last failure on the calling thread is fl_last_error(). Device addresses are uint64_t.
 * Names: functions fl_*, types fl_*_t / fl_*, macros FL_*.
 */
#ifndef FRAGLESS_H
#define FRAGLESS_H

#include <stddef.h>
#include <stdint.h>

/* FL_API marks the functions libfragless.so exports: it is built with hidden visibility,
 * so this header and fragless_torch.h are its whole interface. A build that must export
 * none of them (libfragless_preload.so, which exports only the CUDA runtime's calls)
 * defines FL_API empty on its command line. */
#ifndef FL_API
#if defined(__GNUC__) || defined(__clang__)
#define FL_API __attribute__((visibility("default")))
#else
#define FL_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------
 * Version: the header's macros say what a program was built against, fl_version() what
 * it runs with (the Python package's fragless.__version__ is the same string).
 * --------------------------------------------------------------------------------- */
#define FL_VERSION_MAJOR 0
#define FL_VERSION_MINOR 3
#define FL_VERSION_PATCH 0
#define FL_VERSION_STRING "0.3.0"
/* "MAJOR.MINOR.PATCH" of the library. */
FL_API const char *fl_version(void);

/* ---------------------------------------------------------------------------------
 * Status codes and errors
 * --------------------------------------------------------------------------------- */
typedef enum fl_status {
    FL_OK = 0,
    FL_ERR_OOM = 1,         /* out of memory: device capacity or configured limit */
    FL_ERR_INVALID = 2,     /* an argument is out of range or malformed */
    FL_ERR_NOT_FOUND = 3,   /* unknown pointer or offset */
    FL_ERR_PARSE = 4,       /* malformed input: trace, config, size string */
    FL_ERR_IO = 5,          /* a file could not be read or written */
    FL_ERR_DEVICE = 6,      /* the device (driver) reported an error */
    FL_ERR_UNSUPPORTED = 7, /* the device cannot do this (e.g. no virtual memory) */
    FL_ERR_NOMEM = 8        /* host memory for metadata ran out */
} fl_status;

/* Short name of a status ("out of memory", ...). Never NULL. */
FL_API const char *fl_status_str(fl_status s);
/* Message of the last failed call on this thread; "" if none. Valid until the next call. */
FL_API const char *fl_last_error(void);
/* The status that failure returned (FL_OK if none): for callers that get only a -1 from
 * the PyTorch entry points (fragless_torch.h), e.g. the Python package. */
FL_API fl_status fl_last_status(void);

/* Sizes: parse "80GiB", "512MiB", "1.5GB", "4096" (bytes); format as "1.27 GiB". */
FL_API fl_status fl_parse_size(const char *text, uint64_t *out);
/* Writes at most n bytes (always terminated) and returns buf. */
FL_API char *fl_format_size(uint64_t bytes, char *buf, size_t n);

/* ---------------------------------------------------------------------------------
 * Range allocator: a host-side offset allocator over [0, size). Metadata never lives
 * in the managed memory, so it can place blocks in GPU memory, in a virtual range or
 * in anything addressed by offsets (like VMA's virtual blocks).
 *
 * Algorithm: two-level segregated fit (TLSF) with 16 classes per power of two,
 * address-ordered physical neighbour links for O(1) coalescing, and an offset -> block
 * hash for free by offset. alloc, free: O(1) expected (the search scans a bounded number
 * of blocks in the request's own class to find a tighter fit). Not thread safe.
 * --------------------------------------------------------------------------------- */
typedef struct fl_range fl_range;

/* min_align: power of two >= 1; every offset and size is a multiple of it. */
FL_API fl_status fl_range_create(uint64_t size, uint64_t min_align, fl_range **out);
FL_API void fl_range_destroy(fl_range *r);

/* align: 0 (= min_align) or a power of two. Fails with FL_ERR_OOM when no free range fits. */
FL_API fl_status fl_range_alloc(fl_range *r, uint64_t size, uint64_t align, uint64_t *offset);
/* Frees the block that starts at offset; FL_ERR_NOT_FOUND if none does. */
FL_API fl_status fl_range_free(fl_range *r, uint64_t offset);
/* Size of the live block at offset (rounded to min_align), 0 if none. */
FL_API uint64_t fl_range_block_size(const fl_range *r, uint64_t offset);

FL_API uint64_t fl_range_capacity(const fl_range *r);
FL_API uint64_t fl_range_total_free(const fl_range *r);
FL_API uint64_t fl_range_largest_free(const fl_range *r);
FL_API uint64_t fl_range_live_blocks(const fl_range *r);

/* Visits every block, free or used, in address order; stop by returning nonzero. */
typedef int (*fl_range_walker)(uint64_t offset, uint64_t size, int used, void *user);
FL_API void fl_range_walk(const fl_range *r, fl_range_walker fn, void *user);
/* Checks every invariant; returns 0 when sound, else nonzero (message in fl_last_error). */
FL_API int fl_range_check(const fl_range *r);

/* ---------------------------------------------------------------------------------
 * Configuration: a struct, or PyTorch's "key:value,key:value" syntax (FRAGLESS_CONF).
 * Unknown keys and bad values are errors.
 * --------------------------------------------------------------------------------- */
#define FL_ROUNDUP_INTERVALS 16

typedef struct fl_config {
    char policy[32];              /* policy:NAME — "fragless" (default), "cca", ... */
    /* PyTorch caching-allocator knobs (policy cca / cca-expandable). */
    uint64_t max_split_size;      /* max_split_size_mb, bytes; 0 = unlimited */
    /* roundup_power2_divisions, indexed like PyTorch's AllocatorConfig: entry i holds the
     * divisions for sizes in [2^(20+i), 2^(21+i)) (i = 0..15, the last one open-ended);
     * a single value fills all 16. 0 or 1 = plain 512-byte rounding. */
    uint32_t roundup_divisions[FL_ROUNDUP_INTERVALS];
    double gc_threshold;          /* garbage_collection_threshold, 0 = off */
    int expandable_segments;      /* expandable_segments:True -> policy cca-expandable */
    /* Allocator-wide. */
    uint64_t limit;               /* limit:SIZE, bytes the allocator may hold; 0 = device capacity */
    /* fragless policy. */
    uint64_t small_size;          /* small_size:SIZE, requests below it get their own heap;
                                     0 = default, 1/8 of the device page (256 KiB) */
    /* trace:PATH, record every allocation and free as an RMM CSV trace ("" = off). */
    char trace_path[256];
    /* Out of memory: oom_report:0 keeps the first failure's report off stderr (it is
     * always in fl_last_error and fl_last_oom); oom_snapshot:PATH writes the state
     * snapshot (JSON) there at the first failure. */
    int oom_report;               /* default 1 */
    char oom_snapshot[256];
    /* top:0 stops publishing statistics for `fragless top` (allocators on a real GPU
     * publish by default; simulated devices never do). */
    int publish;                  /* default 1 */
    /* Paths (trace:, oom_snapshot:) may hold %p (the process id), %r (the rank: $RANK,
     * else $LOCAL_RANK, else 0) and %% (a '%'), expanded when the file is opened. */
    /* The cuda device (the frontends pass these on; fl_cuda_params for the C API):
     * peer_access:0 gives only the owning GPU access to the memory (default 1: every GPU
     * that can reach it, as cudaDeviceEnablePeerAccess does not cover mapped memory);
     * shareable:0 creates plain handles (default 1: exportable as file descriptors, fabric
     * where the GPU supports it, and GPUDirect RDMA capable where it says so). */
    int peer_access;              /* default 1 */
    int shareable;                /* default 1 */
    /* registrable:SIZE backs every block of at least SIZE bytes with one physical
     * allocation of its own (the block rounded up to pages), so that NCCL, ibverbs and
     * dmabuf registration and fl_export see it as one range; 0 = off (default). */
    uint64_t registrable;
} fl_config;

FL_API void fl_config_default(fl_config *cfg);
/* Parses text into cfg (on top of what cfg holds). The error names the key and value. */
FL_API fl_status fl_config_parse(fl_config *cfg, const char *text);
/* The defaults, then $FRAGLESS_CONF when set. On error cfg holds the defaults. */
FL_API fl_status fl_config_from_env(fl_config *cfg);

/* ---------------------------------------------------------------------------------
 * Devices: where memory comes from. "sim" simulates a GPU: capacity, granularity,
 * a cost model per driver call (microseconds) and counters.
 * --------------------------------------------------------------------------------- */
typedef struct fl_device fl_device;

typedef enum fl_call {
    FL_CALL_MEM_ALLOC = 0, /* cuMemAlloc / cudaMalloc */
    FL_CALL_MEM_FREE,      /* cuMemFree / cudaFree (synchronizes) */
    FL_CALL_RESERVE,       /* cuMemAddressReserve */
    FL_CALL_ADDR_FREE,     /* cuMemAddressFree */
    FL_CALL_CREATE,        /* cuMemCreate: a physical handle */
    FL_CALL_RELEASE,       /* cuMemRelease */
    FL_CALL_MAP,           /* cuMemMap */
    FL_CALL_UNMAP,         /* cuMemUnmap */
    FL_CALL_SET_ACCESS,    /* cuMemSetAccess */
    FL_CALL_SYNC,          /* device/stream synchronize before reuse or unmap */
    FL_CALL_COUNT
} fl_call;

/* "mem_alloc", "create", ... */
FL_API const char *fl_call_name(fl_call c);

typedef struct fl_sim_params {
    uint64_t capacity;            /* physical bytes; default 1 PiB (effectively unlimited) */
    uint64_t granularity;         /* VMM granularity; default 2 MiB */
    double cost_us[FL_CALL_COUNT];/* simulated microseconds per call on one granule or
                                     one mapping; defaults: see sim.c */
    double cost_us_more[FL_CALL_COUNT]; /* microseconds added per further unit: granule
                                     (create, mem_alloc) or mapping the range covers
                                     (unmap, set_access); 0 for the other calls */
    int vmm_supported;            /* default 1 */
} fl_sim_params;

FL_API void fl_sim_params_default(fl_sim_params *p);
FL_API fl_status fl_sim_device_create(const fl_sim_params *p, fl_device **out);
FL_API void fl_device_destroy(fl_device *d);

/* Fault injection, on any device (SQLite-style tests): device calls are numbered from 1
 * in the order they are made since the device was created, every kind together (the
 * next call is fl_device_total_calls + 1). The call numbered fail_call fails, once; every
 * call from fail_from on fails; 0 turns either off. An injected failure returns
 * FL_ERR_DEVICE with "KIND: injected failure of device call N", counts as a call of its
 * kind and a failed call, and changes nothing else (the device never sees it). A
 * fail_call already made is FL_ERR_INVALID: the plan could never fire. */
FL_API fl_status fl_device_set_fault(fl_device *d, uint64_t fail_call, uint64_t fail_from);

typedef struct fl_device_counters {
    uint64_t calls[FL_CALL_COUNT];
    uint64_t failed_calls;        /* calls that returned an error (OOM included) */
    double time_us;               /* simulated (sim) or measured (cuda) device time */
    uint64_t in_use;              /* physical bytes held now */
    uint64_t peak_in_use;         /* max of in_use */
    uint64_t bytes_obtained;      /* physical bytes ever created/allocated */
    uint64_t bytes_returned;      /* physical bytes ever released/freed */
} fl_device_counters;

FL_API void fl_device_get_counters(const fl_device *d, fl_device_counters *out);
/* Device calls of every kind together. */
FL_API uint64_t fl_device_total_calls(const fl_device_counters *c);
FL_API uint64_t fl_device_capacity(const fl_device *d);
FL_API uint64_t fl_device_granularity(const fl_device *d);

/* ---------------------------------------------------------------------------------
 * The cuda device: a real GPU through the CUDA driver API (loaded with dlopen; no
 * toolkit needed to build). Every driver call runs in the device's primary context
 * (retained at creation), pushed when another context (or none) is current on the
 * calling thread and popped after: the caller's current context is left as it was.
 * Counters' time_us is measured wall time of driver calls. Not thread safe by itself
 * (an allocator serializes its calls).
 * --------------------------------------------------------------------------------- */
typedef struct fl_cuda_params {
    const char *library;          /* NULL: $FRAGLESS_CUDA_LIB or "libcuda.so.1" */
    int device;                   /* ordinal */
    int peer_access;              /* 1 (default): set_access also names every GPU that can
                                     access this one (cuDeviceCanAccessPeer); 0: owner only */
    int shareable;                /* 1 (default): handles exportable as POSIX file
                                     descriptors (and fabric handles where supported), with
                                     the GPUDirect RDMA flag where the GPU supports it */
} fl_cuda_params;

FL_API void fl_cuda_params_default(fl_cuda_params *p);
/* p NULL: defaults. Missing library: FL_ERR_DEVICE; driver without a needed symbol:
 * FL_ERR_UNSUPPORTED; no such device ordinal: FL_ERR_INVALID. */
FL_API fl_status fl_cuda_device_create(const fl_cuda_params *p, fl_device **out);

/* ---------------------------------------------------------------------------------
 * Allocators: one policy on one device. Policies: "fragless", "cca", "cca-expandable",
 * "nocache". Streams are opaque 64-bit ids (cudaStream_t); a block freed on one stream
 * is reused by another only after a synchronization (see docs/ARCHITECTURE.md), and a
 * block used on other streams (fl_record_stream) only after their work is done.
 * --------------------------------------------------------------------------------- */
typedef struct fl_allocator fl_allocator;

/* The names of the available policies, NULL-terminated. */
FL_API const char *const *fl_policy_names(void);

/* One allocator per device: a second one on a device that has one is FL_ERR_INVALID
 * (share the first: every call is thread safe). Safe across fork(): a child may allocate
 * and free (it records no trace rows into the parent's file). */
FL_API fl_status fl_allocator_create(const fl_config *cfg, fl_device *dev, fl_allocator **out);
FL_API void fl_allocator_destroy(fl_allocator *a);

/* size 0 is an error. Addresses are aligned to at least 512 bytes. */
FL_API fl_status fl_alloc(fl_allocator *a, uint64_t size, uint64_t stream, uint64_t *addr);
/* An address that is not a live block's start: FL_ERR_NOT_FOUND, nothing changes. */
FL_API fl_status fl_free(fl_allocator *a, uint64_t addr);
/* The same, checking that size is what the block was allocated with (PyTorch passes
 * it): a mismatch is FL_ERR_INVALID and the block stays allocated. */
FL_API fl_status fl_free_sized(fl_allocator *a, uint64_t addr, uint64_t size);
/* The block at addr is also used on `stream` (torch.Tensor.record_stream): when it is
 * freed, it is reused only after the work queued on that stream by then has finished
 * (an event recorded at the free; the allocator checks it at later allocations, and
 * synchronizes the device when memory runs out). Its own stream needs no call. */
FL_API fl_status fl_record_stream(fl_allocator *a, uint64_t addr, uint64_t stream);
/* Returns cached device memory that no live block needs to the device. */
FL_API fl_status fl_empty_cache(fl_allocator *a);
/* CUDA graphs. On a device that can capture (cuda), every allocation asks the driver
 * whether its stream is capturing (cuStreamGetCaptureInfo). A block allocated during a
 * capture belongs to that capture's graph: freed by the program it is kept (serving
 * later allocations of the same capture and stream only), its pages are never unmapped
 * or handed to anyone else, until fl_graph_release. While a capture is underway the
 * allocator makes no synchronize, no event query, no unmap and no free on the device
 * (an allocation that needs one fails with FL_ERR_OOM saying so); other blocks freed
 * then are given back after it. Before a synchronize that gives such blocks back (and in
 * fl_empty_cache), every stream the allocator has served is asked, so that a capture
 * none of its allocations has seen yet is not invalidated. When the driver cannot tell
 * whether an allocation's stream is capturing, the allocation fails with FL_ERR_DEVICE
 * (taken for an ordinary block, a graph's block would be handed out again while the
 * graph uses it); fl_empty_cache then gives nothing back (FL_ERR_DEVICE).
 * fl_stream_capture: the capture id of stream (0: none; FL_ERR_DEVICE when the driver
 * cannot tell). fl_graph_release: the capture's graph is gone: after a synchronize (its
 * replays may still run), its kept blocks go back to the policy and its live ones become
 * ordinary; while another capture is underway, at the first allocation after it. A
 * capture none of whose blocks is here costs nothing (no synchronize).
 * FL_ERR_INVALID while the capture is still underway, FL_ERR_DEVICE when the driver
 * cannot tell (ask again). */
FL_API fl_status fl_stream_capture(fl_allocator *a, uint64_t stream, uint64_t *capture);
FL_API fl_status fl_graph_release(fl_allocator *a, uint64_t capture);
/* The most device memory the allocator may hold from now on (0 = the device's capacity),
 * like torch.cuda.set_per_process_memory_fraction. Cached memory above it is returned
 * where the policy can. */
FL_API fl_status fl_set_limit(fl_allocator *a, uint64_t bytes);

/* One statistic as PyTorch's memory_stats() keeps it: now, the highest since the start
 * (or fl_reset_peak_stats), and the totals that went in and out. */
typedef struct fl_stat {
    uint64_t current, peak, allocated, freed;
} fl_stat;

/* Statistics: cheap to read (no walk of the blocks for the fragless policy; cca walks
 * its segments), safe to call every step and from any thread. Names follow PyTorch's
 * memory_stats() ("allocated_bytes.all.current" is allocated_bytes.current) where the
 * idea is the same; the rest are fragless's own. */
typedef struct fl_stats {
    fl_stat allocated_bytes;      /* live blocks, as the policy rounded them */
    fl_stat reserved_bytes;       /* device memory the allocator holds */
    fl_stat active_bytes;         /* live blocks and freed ones still in use by a stream */
    fl_stat requested_bytes;      /* live blocks as asked (unrounded) */
    fl_stat allocation;           /* number of live blocks */
    uint64_t inactive_split_bytes;      /* reserved, no live block, but not cached whole:
                                           free pieces next to live blocks */
    uint64_t inactive_split_bytes_peak; /* its peak over the reads so far */
    uint64_t num_alloc_retries;   /* allocations that freed cache and tried again */
    uint64_t num_ooms;            /* allocations that failed */
    uint64_t num_device_alloc;    /* cuMemCreate + cudaMalloc calls */
    uint64_t num_device_free;     /* cuMemRelease + cudaFree calls */
    uint64_t num_sync_all_streams;/* device synchronizations */
    /* fragless's own. */
    uint64_t capacity;            /* the device's memory */
    uint64_t limit;               /* the most the allocator may hold (capacity when unset) */
    uint64_t cached_bytes;        /* reserved memory no live block touches (whole pages) */
    uint64_t free_in_reserved;    /* reserved bytes no live block uses */
    uint64_t largest_free;        /* largest request servable without new device memory */
    double external_fragmentation;/* 1 - largest free / free, over free reserved memory
                                     plus what may still be obtained; 0 when none */
    uint64_t device_calls[FL_CALL_COUNT]; /* driver calls by kind (fl_call_name) */
    uint64_t device_failed_calls;
    double device_time_us;        /* measured (cuda) or simulated (sim) time in them */
    uint64_t graph_bytes;         /* blocks allocated during CUDA graph captures, held for
                                     their graphs until released (fl_graph_release) */
    uint64_t graph_kept_bytes;    /* of those, freed by the program: reserved, not allocated */
    uint64_t stitched_blocks;     /* live blocks the fragless policy stitched near its limit
                                     (where they took fewer pages, or none else fit): each in
                                     a reservation of its own, its first and last bytes on the
                                     free parts of pages that other blocks use, mapped there
                                     a second time */
} fl_stats;

FL_API void fl_get_stats(const fl_allocator *a, fl_stats *out);
/* Peaks start again from the current values (torch.cuda.reset_peak_memory_stats). */
FL_API void fl_reset_peak_stats(fl_allocator *a);
/* The statistics as one JSON object (PyTorch's flat "allocated_bytes.all.current" keys
 * plus fragless's own); snprintf's contract: returns the length the whole text needs,
 * writes at most n bytes, always terminated when n > 0. */
FL_API size_t fl_stats_json(const fl_stats *s, char *buf, size_t n);
/* A table like torch.cuda.memory_summary(); same contract. */
FL_API size_t fl_memory_summary(const fl_stats *s, char *buf, size_t n);

/* ---------------------------------------------------------------------------------
 * Out of memory: what failed and why. fl_alloc's FL_ERR_OOM message is the report's
 * text; the first failure is also printed to stderr (config oom_report:0 turns it off).
 * --------------------------------------------------------------------------------- */
typedef enum fl_oom_verdict {
    FL_OOM_NONE = 0,
    FL_OOM_FRAGMENTATION,   /* live + asked fits in the capacity: memory is cut up */
    FL_OOM_EXHAUSTION       /* live + asked exceeds it: the job needs more memory */
} fl_oom_verdict;

typedef struct fl_oom_report {
    uint64_t request;       /* bytes asked */
    uint64_t stream;
    uint64_t capacity;      /* the device's memory */
    uint64_t limit;         /* what the allocator may hold (capacity when unset) */
    uint64_t device_free;   /* limit - reserved */
    uint64_t live;          /* live bytes, each request rounded up to 512 B */
    uint64_t reserved;      /* device memory the allocator held */
    uint64_t free_in_reserved;  /* reserved but unallocated */
    uint64_t largest_free;  /* largest block servable without new device memory */
    double external_fragmentation;
    fl_oom_verdict verdict; /* exhaustion when live + request > limit */
    uint64_t needs;         /* at least this much memory for the request to succeed */
    char advice[256];       /* the concrete next step */
    char cause[256];        /* what the policy or device said ("Detail:" in text) */
    char text[1536];        /* the whole report, as fl_last_error gives it */
} fl_oom_report;

FL_API const char *fl_oom_verdict_name(fl_oom_verdict v);
/* The report of the allocator's latest failed allocation; FL_ERR_NOT_FOUND if none. */
FL_API fl_status fl_last_oom(const fl_allocator *a, fl_oom_report *out);

/* ---------------------------------------------------------------------------------
 * State snapshot: the allocator's address ranges, pages (mapped with the number of live
 * blocks on them, cached, unmapped) and blocks (address, size, live or free), with the
 * statistics, as JSON (format in docs/ARCHITECTURE.md); `fragless report` draws it.
 * --------------------------------------------------------------------------------- */
FL_API fl_status fl_allocator_snapshot(fl_allocator *a, const char *path);

/* Self-check of the policy's invariants: 0 when sound (message in fl_last_error). */
FL_API int fl_allocator_check(const fl_allocator *a);

/* ---------------------------------------------------------------------------------
 * IPC: a block shared with another process (cuda device; shareable handles). The
 * exporter sends `fd` over a UNIX socket (SCM_RIGHTS) with the other fields and closes
 * its copy; the importer maps the memory into its address space. The block must lie in
 * one physical allocation: a block within one page, or any block with registrable:SIZE.
 * The importer's mapping keeps the memory alive; what the exporter frees meanwhile it
 * may hand out again, as with cudaIpcGetMemHandle.
 * --------------------------------------------------------------------------------- */
typedef struct fl_ipc_handle {
    int fd;                       /* the physical allocation as a file descriptor (owned by
                                     whoever holds the struct: close it when sent or done) */
    int device;                   /* the exporter's device ordinal */
    uint64_t alloc_size;          /* bytes of the physical allocation */
    uint64_t offset;              /* where the block starts in it */
    uint64_t size;                /* the block's size as allocated */
} fl_ipc_handle;

/* addr must be a live block's start. FL_ERR_UNSUPPORTED when the device cannot export
 * (sim, shareable:0) or the block spans several physical allocations. */
FL_API fl_status fl_export(fl_allocator *a, uint64_t addr, fl_ipc_handle *out);
/* Maps an exported block on a's device; *addr is where it starts. h->fd stays the
 * caller's. Undone by fl_import_close (and by destroying a's device). */
FL_API fl_status fl_import(fl_allocator *a, const fl_ipc_handle *h, uint64_t *addr);
FL_API fl_status fl_import_close(fl_allocator *a, uint64_t addr);

/* Any block, however many physical allocations it lies on (a block of more than a page
 * without registrable:SIZE lies on its pages' and chunks' own): fl_export_pieces gives the
 * allocations under it, one after another in the address space, at most max, each as a
 * file descriptor (the caller's: send them with SCM_RIGHTS, then close them) in
 * out[0..*n); the block starts *offset bytes into the first and is *size bytes long.
 * FL_ERR_UNSUPPORTED as fl_export, and when the block lies on more than max allocations
 * (nothing is left open then). fl_import_pieces maps such allocations here one after
 * another (the descriptors stay the caller's); *addr is the block's start. Undone by
 * fl_import_close. fl_export and fl_import are the one-piece case. */
typedef struct fl_ipc_piece {
    int fd;        /* a physical allocation as a file descriptor */
    uint64_t size; /* its bytes (whole pages) */
} fl_ipc_piece;
FL_API fl_status fl_export_pieces(fl_allocator *a, uint64_t addr, fl_ipc_piece *out, uint32_t max, uint32_t *n,
                                  uint64_t *offset, uint64_t *size);
FL_API fl_status fl_import_pieces(fl_allocator *a, const fl_ipc_piece *pieces, uint32_t n, uint64_t offset,
                                  uint64_t size, uint64_t *addr);

#ifdef __cplusplus
}
#endif
#endif /* FRAGLESS_H */
