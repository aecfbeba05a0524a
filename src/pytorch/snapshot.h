/* PyTorch memory snapshots (torch.cuda.memory._dump_snapshot) as fli_trace: one device's
 * recorded history turned into allocate / free / allocate failure events, with the blocks
 * that were alive before recording began reconstructed and allocated first. */
#ifndef FL_SNAPSHOT_H
#define FL_SNAPSHOT_H

#include "pytorch/pickle.h"
#include "trace/trace.h"

/* What the conversion found, for summaries, `doctor` and fidelity checks. */
typedef struct fli_snapshot_info {
    int n_devices;                  /* len(device_traces) */
    int device;                     /* the device converted */
    /* device_traces[device], by action */
    uint64_t n_entries;
    uint64_t n_alloc, n_free_requested, n_free_completed, n_oom;
    uint64_t n_segment_alloc, n_segment_free, n_segment_map, n_segment_unmap, n_snapshot;
    uint64_t n_unknown_actions;     /* actions newer than this reader: skipped, with a warning */
    uint64_t segment_alloc_bytes;   /* segment_alloc + segment_map sizes */
    uint64_t segment_free_bytes;    /* segment_free + segment_unmap sizes: FL_EV_RELEASE events */
    int frees_completed;            /* 1: frees come from free_completed; 0: from free_requested
                                       (the trace recorded no free_completed at all) */
    /* Reconstruction of blocks alive before recording began (all at the start, time 0). */
    uint64_t n_synth_freed;         /* (a) freed in the trace, never allocated in it */
    uint64_t synth_freed_bytes;
    uint64_t n_synth_live;          /* (b) allocated in `segments` at dump, absent from the trace */
    uint64_t synth_live_bytes;
    uint64_t n_double_frees;        /* frees of an address already freed: kept; fli_prepare skips them */
    uint64_t n_active_unmatched;    /* allocated at dump, but the trace freed that address last:
                                       events were lost, so it cannot be placed at the start */
    uint64_t n_live_not_in_segments;/* live at the end of the trace, not allocated in `segments` */
    /* the output */
    uint64_t n_events;              /* events in the trace, synthetic ones included */
    uint64_t n_streams;             /* distinct streams among them */
    /* `segments` of this device at dump time */
    uint64_t n_segments, n_expandable_segments;
    uint64_t reserved_bytes;        /* sum of total_size: what PyTorch held */
    uint64_t allocated_bytes;       /* sum of allocated_size */
    uint64_t n_active_blocks;       /* blocks active_allocated or active_pending_free */
    /* Segments the allocator held before recording began: in `segments` at dump, or freed
     * by the trace, with no segment_alloc (segment_map) in the trace. None: recording
     * covers every segment's lifetime, and the emulation starts from an empty allocator
     * as the real one did. */
    uint64_t n_old_segments, old_segment_bytes;
    uint64_t n_seeded_segments, seeded_bytes; /* of those, rebuilt for the emulation (not
                                                 expandable, not in a private pool) */
    uint64_t n_private_segments;    /* segments of private pools (CUDA graphs, MemPool) */
    /* the last oom entry (a snapshot dumped on OOM ends with it) */
    int64_t oom_entry;              /* its index in device_traces[device], -1 if none */
    uint64_t oom_size, oom_device_free;
    uint64_t oom_stream;
    /* Reserved memory when the oom entry was recorded: at dump, less what the trace's
     * segment events after it changed (equal to reserved_bytes without such events). */
    uint64_t oom_reserved;
    uint32_t n_sites;               /* distinct allocation sites read from stack frames */
    /* allocator_settings (PyTorch 2.5 and later), when the snapshot has them */
    int has_settings;
    char alloc_conf[512];           /* PYTORCH_CUDA_ALLOC_CONF (or PYTORCH_ALLOC_CONF) as set */
    int alloc_conf_truncated;
    int expandable_segments;
    uint64_t max_split_size;        /* bytes; 0 = unlimited (the file says -1) */
    double gc_threshold;            /* garbage_collection_threshold */
    /* roundup_power2_divisions, indexed like fl_config: entry i for sizes from 2^(20+i) */
    uint32_t roundup_divisions[FL_ROUNDUP_INTERVALS];
} fli_snapshot_info;

/* Blocks of a private memory pool (CUDA graphs, torch.cuda.MemPool) at dump are allocated
 * on their segment's stream with these bits flipped: a stream of their own, so that no
 * policy mixes them with the default pool's blocks. */
#define FL_SNAPSHOT_PRIVATE_POOL (UINT64_C(1) << 62)

/* Per device of a snapshot: what it recorded (for choosing which to read). */
typedef struct fli_snapshot_device {
    uint64_t n_entries;             /* len(device_traces[i]) */
    uint64_t n_oom;                 /* oom entries among them */
    uint64_t n_segments, n_active_blocks; /* in `segments` with device i */
} fli_snapshot_device;

/* Lists the devices of a parsed snapshot: *n = len(device_traces), and for each up to
 * max, its summary. FL_ERR_PARSE when the snapshot has no device_traces list. */
fl_status fli_snapshot_devices(const fli_pk_doc *doc, const char *path, fli_snapshot_device *out, int max, int *n);

/* Converts device_traces[device] of a parsed snapshot into out (initialised here; on
 * error it is left empty and needs no free). path names the file in messages, which read
 * "PATH: device_traces[0][17]: 'size' is a str, expected an int". info may be NULL.
 *
 * Mapping:
 *   alloc           -> FL_EV_ALLOC       ptr = addr, size = size (the requested bytes)
 *   free_completed  -> FL_EV_FREE        (free_requested instead when the device trace
 *                                          has no free_completed at all)
 *   oom             -> FL_EV_ALLOC_FAIL  size = the requested bytes, ptr 0
 *   segment_free, segment_unmap -> FL_EV_RELEASE  size, stream, ptr = addr
 *   segment_alloc, segment_map, snapshot and the free kind not used: counted in info.
 * Allocations and failures carry their site (out->sites): the innermost frame of the
 * program's own Python code in the entry's frames, else the autograd node or the
 * operator; blocks in `segments` carry their own frames' site.
 * Each event keeps stream and time_us (microseconds since the epoch, as recorded; 0 when
 * the snapshot predates time_us); `line` is the entry's index in device_traces[device]
 * plus 1, so messages point at the entry.
 *
 * Reconstruction, before every recorded event, at time 0, thread 0:
 *   (b) first, in `segments` order (by address): blocks active_allocated or
 *       active_pending_free at dump at an address the trace never allocates nor frees
 *       (with the free action used); size = the block's requested_size (its `size`
 *       when absent), stream = its segment's; line 0. They are never freed. A block
 *       at an address the trace freed last cannot have lived there since the start
 *       (the trace used that address): events were lost; it is counted in
 *       n_active_unmatched, with a warning, unless it is pending and frees are
 *       free_requested (then the program did free it).
 *   (a) then, in the order of their frees: frees whose address had no earlier alloc; size
 *       and stream of the free; line = the free's. Persistent state (b) was most likely
 *       allocated before the transient blocks (a) that were alive when recording began.
 * Sizes are requested bytes throughout: alloc and free entries carry the requested size
 * (not multiples of 512 in the shared snapshots), and a block's requested_size equals the
 * size of its traced alloc on every live block there; the block's `size` is PyTorch's
 * rounded size, which replay applies itself.
 *
 * Segments older than the recording (info->n_old_segments) are described in out->seeds
 * with the live blocks (b) and (a) inside them, so that the emulation of the snapshot's
 * allocator can start where the real one was (fli_replay_opts.follow). */
fl_status fli_snapshot_to_trace(const fli_pk_doc *doc, const char *path, int device, fli_trace *out,
                               fli_snapshot_info *info);

/* Reads the file (the pickle reader, FL_SNAPSHOT_MAX_BYTES of memory at most: parsing
 * takes about 3.5x the file's size, so snapshots up to ~1 GB) and converts it. */
#define FL_SNAPSHOT_MAX_BYTES ((size_t)4 << 30)
/* The conversion visits at most FL_SNAPSHOT_BUDGET_MIN + (parsed bytes) /
 * FL_SNAPSHOT_BYTES_PER_ITEM trace entries and segment blocks, and makes at most two
 * events per visit: a pickle whose memo lists one object many times (one blocks list in
 * 100,000 segments) is refused with FL_ERR_PARSE naming the budget, instead of expanding
 * to billions of events. */
#define FL_SNAPSHOT_BUDGET_MIN 65536
#define FL_SNAPSHOT_BYTES_PER_ITEM 64
/* The allocator settings the snapshot recorded, as our config: cca, or cca-expandable
 * when expandable_segments was on, with max_split_size, the GC threshold and the
 * roundup divisions. */
void fli_snapshot_config(const fli_snapshot_info *info, fl_config *cfg);

fl_status fli_trace_read_snapshot(const char *path, int device, fli_trace *out, fli_snapshot_info *info);

/* The device's capacity when a snapshot recorded an out-of-memory (info->oom_entry >= 0):
 * what the allocator held then (oom_reserved) plus the oom event's device_free.
 * FL_ERR_PARSE (naming name) when that passes 2^64 bytes. */
fl_status fli_snapshot_oom_capacity(const fli_snapshot_info *info, const char *name, uint64_t *out);

#endif
