/* The CLI's progress bar: one line on stderr, redrawn at most ten times a second, only
 * when stderr is a terminal (tests and pipes capture stderr and must see nothing). */
#include "cli/progress.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BAR_WIDTH 28
#define REDRAW_NS 100000000ull /* 0.1 s */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void draw(cli_progress *p, int force)
{
    if (!p->on)
        return;
    uint64_t t = now_ns();
    if (!force && p->drawn && t - p->last_draw_ns < REDRAW_NS)
        return;
    p->last_draw_ns = t;
    double frac = p->units > 0 ? (p->done + p->within) / p->units : 0;
    if (frac > 1)
        frac = 1;
    int filled = (int)(frac * BAR_WIDTH + 0.5);
    char bar[BAR_WIDTH + 1];
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[BAR_WIDTH] = 0;
    /* \r then "erase to end of line": the line is rewritten in place. */
    fprintf(stderr, "\r\033[K[%s] %3d%%  %s", bar, (int)(frac * 100), p->what);
    fflush(stderr);
    p->drawn = 1;
}

void cli_progress_begin(cli_progress *p, double units)
{
    memset(p, 0, sizeof *p);
    p->on = isatty(STDERR_FILENO);
    p->units = units;
}

void cli_progress_unit(cli_progress *p, const char *what)
{
    p->within = 0;
    p->search_span = 0;
    snprintf(p->what, sizeof p->what, "%s", what);
    draw(p, 1);
}

void cli_progress_unit_done(cli_progress *p)
{
    p->done += 1;
    p->within = 0;
    draw(p, 0);
}

void cli_progress_clear(cli_progress *p)
{
    if (p->on && p->drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    p->drawn = 0;
}

/* A binary search halves its range each step: the fraction done is the share of the
 * range's bits already resolved. Several searches in one unit (doctor's rows) restart
 * from a wider range, and the bar may then step back a little within the unit. */
static void search_step(void *user, uint64_t lo, uint64_t hi)
{
    cli_progress *p = user;
    uint64_t span = hi - lo + 1;
    if (!p->search_span || span > p->search_span)
        p->search_span = span;
    double bits = log2((double)p->search_span + 1);
    p->within = bits > 0 ? 1 - log2((double)span + 1) / bits : 0;
    if (p->within > 0.99)
        p->within = 0.99;
    draw(p, 0);
}

void cli_progress_attach(cli_progress *p, fli_replay_opts *o)
{
    if (!p || !p->on)
        return;
    o->search_step = search_step;
    o->search_user = p;
}
