/* A progress bar for long CLI work (min_capacity searches, reports over many inputs):
 * drawn on stderr only when stderr is a terminal, so pipes, files and tests see
 * nothing. Work is counted in units (one trace x policy, say); a min_capacity search
 * advances within its unit through fli_replay_opts.search_step. */
#ifndef FL_CLI_PROGRESS_H
#define FL_CLI_PROGRESS_H

#include <stdint.h>

#include "replay/replay.h"

typedef struct cli_progress {
    int on;                 /* stderr is a terminal */
    int drawn;              /* a bar is on the screen (to be cleared) */
    double units, done;     /* total and finished units */
    double within;          /* fraction of the current unit, 0..1 */
    uint64_t search_span;   /* pages in question when the current search began (0: none yet) */
    uint64_t last_draw_ns;
    char what[48];          /* current unit, e.g. "gpt.csv fragless" */
} cli_progress;

/* Starts a bar over `units` units of work; off (and silent) unless stderr is a tty. */
void cli_progress_begin(cli_progress *p, double units);
/* The next unit begins: `what` names it (input and step). */
void cli_progress_unit(cli_progress *p, const char *what);
/* The current unit is done. */
void cli_progress_unit_done(cli_progress *p);
/* Clears the bar from the screen, before printing to stdout and at the end; the next
 * unit draws it again. */
void cli_progress_clear(cli_progress *p);
/* Routes fli_min_capacity's steps (fli_replay_opts.search_step) to the bar; p may be
 * NULL or off, then nothing is set. */
void cli_progress_attach(cli_progress *p, fli_replay_opts *o);

#endif
