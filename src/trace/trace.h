/* Allocation traces in RMM's CSV log format (Thread,Time,Action,Pointer,Size,Stream):
 * a strict reader whose errors name file, line and problem, and a writer. */
#ifndef FL_TRACE_H
#define FL_TRACE_H

#include <stdio.h>

#include "util/util.h"

typedef enum fl_event_kind {
    FL_EV_ALLOC = 0,    /* "allocate" */
    FL_EV_FREE = 1,     /* "free" */
    FL_EV_ALLOC_FAIL = 2 /* "allocate failure": the recorded program was refused (ptr 0) */
} fl_event_kind;

typedef struct fl_event {
    uint64_t time_us;   /* Time column as microseconds */
    uint64_t ptr;       /* an id: the pointer value as recorded */
    uint64_t size;      /* bytes as recorded (not rounded) */
    uint64_t stream;
    uint64_t thread;
    uint32_t line;      /* line in the source file, 1-based (header is line 1) */
    uint8_t kind;       /* fl_event_kind */
} fl_event;

typedef struct fl_trace {
    char *path;         /* file it came from ("" when built in memory) */
    fl_event *ev;
    size_t n;
    size_t cap;
    /* Problems the reader tolerated (truncated last line), one message each. */
    char **warnings;
    size_t n_warnings;
} fl_trace;

void fl_trace_init(fl_trace *t, const char *path);
void fl_trace_free(fl_trace *t);
fl_status fl_trace_push(fl_trace *t, const fl_event *e);
fl_status fl_trace_warn(fl_trace *t, const char *fmt, ...) FL_PRINTF(2, 3);

/* Reads an RMM CSV log into t, which it initializes (do not fl_trace_init it first: that
 * would leak). On error returns FL_ERR_PARSE / FL_ERR_IO with a message
 * "PATH:LINE: problem" and leaves t empty. A last line cut short (no newline, fields
 * missing) is dropped with a warning. */
fl_status fl_trace_read_csv(const char *path, fl_trace *t);
/* Same from an open stream; name is used in messages. */
fl_status fl_trace_read_csv_stream(FILE *f, const char *name, fl_trace *t);
/* Writes the header and every event. */
fl_status fl_trace_write_csv(const char *path, const fl_trace *t);
fl_status fl_trace_write_csv_stream(FILE *f, const fl_trace *t);
/* One CSV row (no header) for an event, as the writer prints it; returns its length. */
int fl_trace_format_row(char *buf, size_t n, const fl_event *e);

#endif
