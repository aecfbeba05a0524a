/* CUDA graphs under an allocator that PyTorch cannot tell about them (a pluggable
 * allocator gets no graph-pool hooks): the allocator asks the driver whether a stream is
 * capturing, keeps every block allocated during a capture for its graph, and keeps track
 * of the captures underway. The allocator object (allocator.c) owns the statistics and
 * the policy calls; this file owns the bookkeeping. Not thread safe: the allocator's
 * lock covers it. */
#ifndef FL_GRAPH_H
#define FL_GRAPH_H

#include "device/device.h"

/* Captures underway that one allocator keeps track of at once (streams capturing into
 * graphs at the same time); beyond it, the oldest is forgotten until seen again. */
#define FL_GRAPH_MAX_UNDERWAY 16
/* Streams the allocator has served, remembered (the most recent ones) so that a capture
 * none of its allocations has seen yet is found before a synchronize (fli_graphs_scan). */
#define FL_GRAPH_MAX_SEEN 32

/* A block allocated during a capture. It stays allocated in the policy until its capture
 * is released, so its pages are never unmapped, reclaimed or handed to anyone else;
 * freed by the program (live 0) it waits, and serves later allocations of the same
 * capture on the same stream only (the graph replays them in that order). */
typedef struct fli_graph_block {
    uint64_t addr, stream;
    uint64_t capture;   /* 0: released while live, an ordinary block once freed */
    uint64_t requested; /* as the program last asked */
    uint64_t rounded;   /* its share of the policy's allocated bytes */
    int live;
} fli_graph_block;

typedef struct fli_graphs {
    fli_map index;               /* addr -> position in b */
    fli_graph_block *b;
    uint32_t n, cap;
    uint64_t bytes;             /* rounded bytes of every block in b */
    uint64_t kept_bytes;        /* of those freed by the program (not live) */
    uint64_t kept_blocks;
    /* The program's allocations and frees the policy never saw: allocations served by a
     * kept block, frees that kept one (less those given back to the policy since). */
    uint64_t reuses, keeps;
    struct { uint64_t stream, id; } underway[FL_GRAPH_MAX_UNDERWAY];
    uint32_t n_underway;
    int implicit;               /* the legacy stream said another stream captures */
    uint64_t seen[FL_GRAPH_MAX_SEEN]; /* streams watched so far (fli_graphs_watch) */
    uint32_t n_seen, next_seen;       /* next_seen: the slot a new stream replaces when full */
    /* Blocks not of a graph that the program freed during a capture (giving them back
     * could need device calls), and captures released while another was underway: both
     * handled after a synchronize once no capture is underway (fli_graphs_pending). */
    uint64_t *deferred;
    uint32_t n_deferred, cap_deferred;
    uint64_t *released;
    uint32_t n_released, cap_released;
} fli_graphs;

fl_status fli_graphs_init(fli_graphs *g);
void fli_graphs_free(fli_graphs *g);
/* The program destroyed stream: the scans (fli_graphs_scan) no longer ask about it (a
 * destroyed handle is not to be passed to the driver). */
void fli_graphs_stream_gone(fli_graphs *g, uint64_t stream);

/* Asks the device about stream (and again about the captures seen underway, forgetting
 * the finished ones): *capture is the stream's capture id (0: not capturing); *asked is
 * how the device answered about stream (not FL_OK: it could not tell, *capture is 0 and
 * fl_last_error says why; the caller must not take the stream for one that is not
 * capturing). Returns whether any capture is underway. */
int fli_graphs_watch(fli_graphs *g, fl_device *d, uint64_t stream, uint64_t *capture, fl_status *asked);
/* Asks again about the captures seen underway (forgetting the finished ones), then about
 * every stream watched so far (a capture that began after the stream's last allocation
 * is found and kept as underway): before a synchronize, which would invalidate any
 * capture. Returns 1 when a capture is underway, 0 when none is, -1 when a stream could
 * not tell (fl_last_error says why; assume one is). */
int fli_graphs_scan(fli_graphs *g, fl_device *d);
/* FL_OK when capture is not underway (one still listed is asked about again, and
 * forgotten once ended), FL_ERR_INVALID when it is, FL_ERR_DEVICE when its stream cannot
 * tell. */
fl_status fli_graphs_ended(fli_graphs *g, fl_device *d, uint64_t capture);
static inline int fli_graphs_underway(const fli_graphs *g) { return g->n_underway || g->implicit; }
/* Something waits for a moment without captures (deferred frees, released captures). */
static inline int fli_graphs_pending(const fli_graphs *g) { return g->n_deferred || g->n_released; }
int fli_graphs_is_underway(const fli_graphs *g, uint64_t capture);
/* Whether a block (live or kept) belongs to capture. */
int fli_graphs_holds(const fli_graphs *g, uint64_t capture);

/* The block at addr if it is a graph's, else NULL. */
fli_graph_block *fli_graphs_find(const fli_graphs *g, uint64_t addr);
/* A block of capture on stream freed by the program that fits need bytes with at most a
 * quarter more (best fit), else NULL. */
fli_graph_block *fli_graphs_reuse(const fli_graphs *g, uint64_t need, uint64_t stream, uint64_t capture);
/* A new block of capture; FL_ERR_NOMEM when the table cannot grow. */
fl_status fli_graphs_adopt(fli_graphs *g, uint64_t addr, uint64_t stream, uint64_t capture, uint64_t requested,
                          uint64_t rounded);
/* Takes b out of the table (the block itself is left to the caller). */
void fli_graphs_remove(fli_graphs *g, fli_graph_block *b);
/* Marks b freed by the program / live again, keeping the totals. */
void fli_graphs_keep(fli_graphs *g, fli_graph_block *b);
void fli_graphs_revive(fli_graphs *g, fli_graph_block *b, uint64_t requested);

/* Lists (FL_ERR_NOMEM when they cannot grow). */
fl_status fli_graphs_defer(fli_graphs *g, uint64_t addr);
int fli_graphs_is_deferred(const fli_graphs *g, uint64_t addr);
fl_status fli_graphs_release_later(fli_graphs *g, uint64_t capture);

/* Self-check of the table against its totals and index: 0, or nonzero with fli_fail set. */
int fli_graphs_check(const fli_graphs *g);

#endif
