/* Crash-safe recording: a child records a trace (trace:PATH) while it allocates and
 * frees, and is killed with SIGKILL mid-run. The file must read back, up to its last
 * whole line (a cut last line is dropped with a warning), with events that make sense.
 * Prints how many of the child's operations the file lost (stdio buffering). */
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"
#include "trace/trace.h"

static void child(const char *path, volatile uint64_t *done)
{
    fl_sim_params sp;
    fl_sim_params_default(&sp);
    fl_device *d = NULL;
    fl_config cfg;
    fl_config_default(&cfg);
    snprintf(cfg.trace_path, sizeof cfg.trace_path, "%s", path);
    fl_allocator *a = NULL;
    if (fl_sim_device_create(&sp, &d) != FL_OK || fl_allocator_create(&cfg, d, &a) != FL_OK)
        _exit(3);
    uint64_t live[64] = {0};
    fl_rng r = {99};
    for (;;) {
        unsigned k = (unsigned)fl_rng_below(&r, 64);
        if (live[k]) {
            if (fl_free(a, live[k]) != FL_OK)
                _exit(4);
            live[k] = 0;
        } else if (fl_alloc(a, 512 + fl_rng_below(&r, 1 << 20), fl_rng_below(&r, 2), &live[k]) != FL_OK) {
            _exit(5);
        }
        (*done)++; /* operations finished, each one row */
    }
}

/* Once per run: kill after `ms` milliseconds; returns 0 when a check failed. */
static void kill_and_read(int ms)
{
    char path[] = "/tmp/fl_crash_record_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    close(fd);
    volatile uint64_t *done = mmap(NULL, sizeof *done, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(done != MAP_FAILED);
    if (done == MAP_FAILED)
        return;
    *done = 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        child(path, done);
    /* From the child's 1000th operation on (a loaded machine may start it late). */
    struct timespec tick = {0, 1000000L};
    for (int waited = 0; *done < 1000 && waited < 10000; waited++)
        nanosleep(&tick, NULL);
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    uint64_t ops = *done;

    fli_trace t;
    fl_status s = fli_trace_read_csv(path, &t);
    CHECK_OK(s);
    /* The file ends in a newline, or its last line was dropped with a warning. */
    FILE *f = fopen(path, "rb");
    long size = -1;
    int last = -1;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        if (size > 0) {
            fseek(f, -1, SEEK_END);
            last = fgetc(f);
        }
        fclose(f);
    }
    int cut = size > 0 && last != '\n';
    if (cut)
        /* Dropped if it does not parse; kept with a warning if the cut fell at its end. */
        CHECK(t.n_warnings == 1 && (strstr(t.warnings[0], "incomplete") || strstr(t.warnings[0], "no newline")));
    else
        CHECK(t.n_warnings == 0);
    /* Every free is of a pointer allocated before it (and live). */
    uint64_t allocs = 0, frees = 0, bad = 0;
    for (size_t i = 0; i < t.n; i++) {
        if (t.ev[i].kind == FL_EV_ALLOC)
            allocs++;
        else if (t.ev[i].kind == FL_EV_FREE)
            frees++;
        else
            bad++;
    }
    CHECK_EQ_U64(bad, 0);
    CHECK(frees <= allocs);
    CHECK(t.n <= ops + 1); /* at most the row being written when the kill came */
    printf("killed after %d ms: %llu operations done, %zu rows read (%llu lost, %.1f%%), file %ld bytes%s\n", ms,
           (unsigned long long)ops, t.n, (unsigned long long)(ops > t.n ? ops - t.n : 0),
           ops ? 100.0 * (double)(ops > t.n ? ops - t.n : 0) / (double)ops : 0.0, size,
           cut ? ", last line cut (warning)" : "");
    fli_trace_free(&t);
    munmap((void *)done, sizeof *done);
    unlink(path);
}

int main(void)
{
    kill_and_read(50);
    kill_and_read(200);
    kill_and_read(333);
    return fl_test_done("test_crash_record");
}
