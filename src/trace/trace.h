/* Allocation traces in RMM's CSV log format (Thread,Time,Action,Pointer,Size,Stream):
 * a strict reader whose errors name file, line and problem, and a writer. */
#ifndef FL_TRACE_H
#define FL_TRACE_H

#include <stdio.h>

#include "util/util.h"

typedef enum fli_event_kind {
    FL_EV_ALLOC = 0,    /* "allocate" */
    FL_EV_FREE = 1,     /* "free" */
    FL_EV_ALLOC_FAIL = 2, /* "allocate failure": the recorded program was refused (ptr 0) */
    /* What a PyTorch snapshot says its allocator did besides serving the program: it gave
     * a cached segment of `size` bytes on `stream` back to the device (segment_free,
     * segment_unmap: empty_cache, the retry after a failed cudaMalloc, garbage
     * collection). Never in a CSV file (the writer leaves it out); replay follows it only
     * when it emulates the snapshot's own allocator (fli_replay_opts.follow). */
    FL_EV_RELEASE = 3
} fli_event_kind;

/* A segment the recorded allocator held before recording began (PyTorch snapshots), as
 * it was then: its live blocks in address order, each being a block the trace's first
 * events allocate (matched by ptr); the space between them was free. Replay that
 * emulates the snapshot's allocator starts from these segments (fli_replay_opts.follow). */
typedef struct fli_seed_block {
    uint64_t offset;        /* in the segment */
    uint64_t size;          /* as the allocator cut it; 0 = unknown (the policy rounds
                               `requested` by its own rules) */
    uint64_t ptr;           /* the address its allocate event names */
    uint64_t requested;     /* the bytes asked */
} fli_seed_block;

typedef struct fli_seed_segment {
    uint64_t addr, size, stream;
    int small;              /* PyTorch's small pool (2 MiB segments) */
    size_t first_block, n_blocks; /* into the seed blocks */
} fli_seed_segment;

typedef struct fli_event {
    uint64_t time_us;   /* Time column as microseconds */
    uint64_t ptr;       /* an id: the pointer value as recorded */
    uint64_t size;      /* bytes as recorded (not rounded) */
    uint64_t stream;
    uint64_t thread;
    uint32_t line;      /* line in the source file, 1-based (header is line 1) */
    uint32_t site;      /* allocation site (index into fli_trace.sites), 0 = unknown */
    uint8_t kind;       /* fli_event_kind */
} fli_event;

typedef struct fli_trace {
    char *path;         /* file it came from ("" when built in memory) */
    fli_event *ev;
    size_t n;
    size_t cap;
    /* Problems the reader tolerated (truncated last line), one message each. */
    char **warnings;
    size_t n_warnings;
    /* Allocation sites (a PyTorch snapshot's stack frames, summarised): sites[0] is
     * unused (site 0 = unknown); NULL when the trace has none. */
    char **sites;
    uint32_t n_sites;
    /* Segments older than the recording (PyTorch snapshots; none for CSV traces). */
    fli_seed_segment *seeds;
    size_t n_seeds;
    fli_seed_block *seed_blocks;
    size_t n_seed_blocks;
} fli_trace;

void fli_trace_init(fli_trace *t, const char *path);
void fli_trace_free(fli_trace *t);
fl_status fli_trace_push(fli_trace *t, const fli_event *e);
fl_status fli_trace_warn(fli_trace *t, const char *fmt, ...) FL_PRINTF(2, 3);

/* Reads an RMM CSV log into t, which it initializes (do not fli_trace_init it first: that
 * would leak). On error returns FL_ERR_PARSE / FL_ERR_IO with a message
 * "PATH:LINE: problem" and leaves t empty. A last line cut short (no newline, fields
 * missing) is dropped with a warning. */
fl_status fli_trace_read_csv(const char *path, fli_trace *t);
/* Same from an open stream; name is used in messages. */
fl_status fli_trace_read_csv_stream(FILE *f, const char *name, fli_trace *t);
/* Writes the header and every allocate, free and allocate failure (releases have no
 * RMM action and are left out, as are sites and seeds). */
fl_status fli_trace_write_csv(const char *path, const fli_trace *t);
fl_status fli_trace_write_csv_stream(FILE *f, const fli_trace *t);
/* One CSV row (no header) for an event, as the writer prints it; returns its length. */
int fli_trace_format_row(char *buf, size_t n, const fli_event *e);

#endif
