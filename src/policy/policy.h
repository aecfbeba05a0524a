/* The policy interface: interchangeable allocators that take memory from an fl_device.
 * Every policy embeds `fli_policy` as its first member and keeps `allocated`, `retries`
 * and `ooms` up to date; reserved memory is what the device says is in use. */
#ifndef FL_POLICY_H
#define FL_POLICY_H

#include "device/device.h"
#include "state/state.h"
#include "trace/trace.h"

typedef struct fli_policy fli_policy;

/* What a policy holds but is not using: for out-of-memory diagnosis (not a hot path). */
typedef struct fli_policy_state {
    uint64_t free_in_reserved;  /* reserved bytes no live block uses */
    uint64_t largest_free;      /* largest request servable from them without new device memory */
    uint64_t cached;            /* reserved memory no live block touches at all (fragless:
                                   whole pages; cca: segments or pages with no live block) */
    uint64_t stitched;          /* live stitched blocks (fragless) */
} fli_policy_state;


/* A thread's part in the stream-local operations (fli_policy_ops: alloc_local,
 * free_local): one per thread and allocator, in the allocator's struct of that thread;
 * hint is written by that thread only, while it runs one. */
typedef struct fli_local {
    uint64_t owner;       /* the thread's token: nonzero, unique among live threads */
    uint32_t hint[2];     /* the policy's own, zero at first: where its lookups found
                             this thread's heaps (a hint, checked before use) */
} fli_local;

typedef struct fli_policy_ops {
    const char *name;
    /* 1 when its memory comes from mem_alloc (cuMemAlloc), the primary context's, which a
     * reset of the context (cudaDeviceReset) destroys with every block in it; 0 for
     * virtual memory, which outlives the reset (as cudaMallocAsync's does: CUDA 13's
     * cuda_runtime_api.h, cudaDeviceReset). fli_allocator_before_reset reads it. */
    int reset_destroys;
    fl_status (*create)(const fl_config *cfg, fl_device *dev, fli_policy **out);
    void (*destroy)(fli_policy *p);
    /* size > 0 (the caller checks): the requested bytes, which the policy keeps with the
     * block (the allocator object has no block table of its own). On failure nothing
     * changes but the counters. */
    fl_status (*alloc)(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *addr);
    /* Frees the live block that starts at addr and gives its requested size (size may be
     * NULL). want: 0, or the size the caller says it has; a mismatch is FL_ERR_INVALID
     * (fli_policy_size_mismatch) and the block stays. FL_ERR_NOT_FOUND for an address that
     * is not a live block's start. */
    fl_status (*free)(fli_policy *p, uint64_t addr, uint64_t want, uint64_t *size);
    /* Optional (NULL: none): stream-local operations. Threads of one allocator call them
     * at the same time, without the allocator's lock, while no other operation of the
     * policy runs (the allocator keeps the two apart: its "threads" section). l: the
     * calling thread's own struct (fli_local, above): its token l->owner (a heap serves
     * the stream-local operations of one thread, the first that asks, until local_forget;
     * the others' go the ordinary way). Each changes nothing but the heap its block lies
     * in (its owner's, so no lock is taken), and none of struct fli_policy's counters:
     * they return what the block counts in `allocated` (charged, or given back), which
     * the caller counts with the block. They return 0, with nothing changed, when the
     * operation needs anything more (a device call, a new heap, a choice under memory
     * pressure, a charge above max_charge, an address that is not a live block's start,
     * a size that is not the block's): the caller then takes the ordinary way, which also
     * reports what was wrong. */
    uint64_t (*alloc_local)(fli_policy *p, uint64_t size, uint64_t stream, uint64_t max_charge, fli_local *l,
                            uint64_t *addr);
    uint64_t (*free_local)(fli_policy *p, uint64_t addr, uint64_t want, fli_local *l, uint64_t *requested);
    /* The thread of that token ends (called under the allocator's lock): its heaps may
     * serve another thread's stream-local operations. */
    void (*local_forget)(fli_policy *p, uint64_t owner);
    /* Optional: the thread of that token took the ordinary way (under the allocator's lock,
     * no stream-local operation running) for an allocation of size bytes on stream (addr
     * 0) or a free of the block at addr. A heap another thread owns may become this
     * one's when its operations keep coming the ordinary way (a stream that moved to
     * another thread of a pool). */
    void (*local_missed)(fli_policy *p, uint64_t owner, uint64_t stream, uint64_t size, uint64_t addr);
    /* Optional: the program destroyed stream (or the thread whose per-thread stream it
     * was ended; under the allocator's lock, no stream-local operation running). Whatever
     * the policy keeps for that stream may serve a stream created later once the work
     * queued on it so far is done; blocks of it still live stay valid. NULL: nothing. */
    void (*stream_gone)(fli_policy *p, uint64_t stream);
    /* The requested size of the live block that starts at addr; 0 if there is none. */
    uint64_t (*block_size)(const fli_policy *p, uint64_t addr);
    /* The stream the live block at addr was allocated on: 1 and *stream; 0 when there
     * is no such block; -1 when there is but the policy does not know (as when NULL:
     * callers then treat every stream as another one, so cudaFreeAsync waits for the
     * freeing stream's work). */
    int (*block_stream)(const fli_policy *p, uint64_t addr, uint64_t *stream);
    /* Gives cached memory that no live block needs back to the device. */
    fl_status (*empty_cache)(fli_policy *p);
    /* Self-check: 0 when every invariant holds, else nonzero with fli_fail() set. */
    int (*check)(const fli_policy *p);
    void (*query)(const fli_policy *p, fli_policy_state *out);
    /* The device's limit changed (fli_dev_limit): give back what is held above it where
     * the policy can. NULL: nothing to do (PyTorch keeps its cache: cca, and nocache
     * holds no cache). */
    fl_status (*limit_changed)(fli_policy *p);
    /* Visits regions, pages and blocks (fli_state_visitor). */
    void (*walk)(const fli_policy *p, const fli_state_visitor *v);
    /* Following a recorded run (replay of a PyTorch snapshot under its own allocator;
     * optional, NULL where the policy is not PyTorch's). seed: holds the segment as it
     * was before recording began, its live blocks allocated at the given offsets (addrs:
     * where each went); FL_ERR_INVALID (nothing changed) when the blocks cannot be laid
     * out by the policy's rules. release: gives back what the recorded allocator gave
     * back there (a cached segment of that size on that stream); *freed: the bytes. */
    fl_status (*seed)(fli_policy *p, const fli_seed_segment *sg, const fli_seed_block *blocks, uint64_t *addrs);
    fl_status (*release)(fli_policy *p, uint64_t size, uint64_t stream, uint64_t *freed);
} fli_policy_ops;

struct fli_policy {
    const fli_policy_ops *ops;
    fl_device *dev;
    uint64_t allocated;     /* bytes of live blocks as the policy sized them */
    uint64_t num_allocs;
    uint64_t num_frees;
    uint64_t retries;       /* allocations that released cache and tried again */
    uint64_t ooms;          /* allocations that failed */
};

extern const fli_policy_ops fli_policy_fragless;
extern const fli_policy_ops fli_policy_cca;
extern const fli_policy_ops fli_policy_cca_expandable;
extern const fli_policy_ops fli_policy_nocache;

/* registrable:SIZE (registrable.c): wraps inner, whose destroy it takes over (also
 * when it fails). */
fl_status fli_policy_registrable(const fl_config *cfg, fli_policy *inner, fli_policy **out);

/* Looks a policy up by name; NULL if unknown. */
const fli_policy_ops *fli_policy_find(const char *name);
/* Creates the policy cfg->policy names (cca + expandable_segments -> cca-expandable). */
fl_status fli_policy_create(const fl_config *cfg, fl_device *dev, fli_policy **out);

/* PyTorch's own limits on the knobs of the cca policies (its AllocatorConfig parsers):
 * max_split_size 0 or at least 20 MiB, garbage_collection_threshold in [0, 1),
 * roundup_power2_divisions 0, 1 or powers of two. FL_ERR_INVALID "NAME: ..." naming the
 * first one broken. One rule for the policies and for the settings a snapshot recorded. */
fl_status fli_cca_check_knobs(const fl_config *cfg, const char *name);

/* The error of a free whose size is not the block's (nothing is freed). */
fl_status fli_policy_size_mismatch(uint64_t addr, uint64_t want, uint64_t have);
/* The error of a free of an address that is not a live block's start. */
fl_status fli_policy_not_live(const fli_policy *p, uint64_t addr);

/* PyTorch's request rounding (512 B minimum and multiple, roundup_power2_divisions);
 * shared by the cca policies and used by replay to size peak_live. */
uint64_t fli_round_request(const fl_config *cfg, uint64_t size);

#endif
