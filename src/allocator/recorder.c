/* The trace recorder (recorder.h): rows of RMM's CSV log in a buffer of its own, written
 * in whole lines, one file per process. */
#include "allocator/recorder.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <time.h>

#include "allocator/allocator.h"
#include "trace/trace.h"

#define BUF_SIZE (64 * 1024)

struct fli_recorder {
    int fd;
    int failed;              /* a write failed: said once, then rows are dropped */
    char why[160];           /* what failed (the flushes and the close return it) */
    int stopped;             /* fli_recorder_stop: rows are dropped (the process exits) */
    char path[PATH_MAX];
    fli_map streams;          /* live block -> its stream (free rows carry it, as RMM's do) */
    uint64_t t0, flushed_ns;
    size_t len;
    char buf[BUF_SIZE];
};

/* Files this process has recorded to (device, inode): written since it started, but its
 * own, so a later recorder of the same process replaces them. */
#define OWN_FILES 64
static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { dev_t dev; ino_t ino; } own[OWN_FILES];
static unsigned n_own;

static int is_own(const struct stat *st)
{
    pthread_mutex_lock(&own_lock);
    int found = 0;
    for (unsigned i = 0; i < n_own && i < OWN_FILES && !found; i++)
        found = own[i].dev == st->st_dev && own[i].ino == st->st_ino;
    pthread_mutex_unlock(&own_lock);
    return found;
}

static void add_own(const struct stat *st)
{
    pthread_mutex_lock(&own_lock);
    own[n_own++ % OWN_FILES].dev = st->st_dev; /* the oldest entries go first */
    own[(n_own - 1) % OWN_FILES].ino = st->st_ino;
    pthread_mutex_unlock(&own_lock);
}

/* When this process started, in CLOCK_REALTIME seconds (0 when /proc cannot say):
 * /proc/self/stat's start time counts clock ticks since boot. */
static double process_start(void)
{
    uint64_t ticks = fli_proc_start_time((uint64_t)getpid());
    long hz = sysconf(_SC_CLK_TCK);
    struct timespec boot, real;
    if (!ticks || hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &boot) != 0 || clock_gettime(CLOCK_REALTIME, &real) != 0)
        return 0;
    double since_start = (double)boot.tv_sec + boot.tv_nsec * 1e-9 - (double)ticks / (double)hz;
    return (double)real.tv_sec + real.tv_nsec * 1e-9 - since_start;
}

/* Opens path for this process's trace: a regular file is created or, when it is stale,
 * replaced; a file of another user, or a symbolic link, is refused (trace paths often sit
 * in /tmp, where anyone may plant either). Other kinds of file (/dev/null, a FIFO) are
 * written as they are. *busy: the file is another process's of this job: locked by a live
 * recorder, or written since this process started (a sibling that already finished: its
 * rows are kept). A file last written before this process started is an earlier run's. */
static fl_status open_locked(const char *path, int *fd_out, int *busy)
{
    *busy = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
    if (fd < 0) {
        if (errno == ELOOP)
            return fli_fail(FL_ERR_IO, "trace:%s: is a symbolic link; refused (name the file itself)", path);
        return fli_fail(FL_ERR_IO, "trace:%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fli_fail(FL_ERR_IO, "trace:%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISREG(st.st_mode)) {
        if (st.st_uid != geteuid()) {
            close(fd);
            return fli_fail(FL_ERR_IO, "trace:%s: belongs to another user (uid %u); refused", path, (unsigned)st.st_uid);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK) {
                *busy = 1;
                return FL_OK;
            }
            return fli_fail(FL_ERR_IO, "trace:%s: cannot lock: %s", path, strerror(e));
        }
        /* One clock tick (10 ms) of slack on the side of keeping the file. */
        double start = process_start(), written = (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
        if (st.st_size > 0 && start > 0 && written >= start - 0.02 && !is_own(&st)) {
            close(fd); /* drops the lock */
            *busy = 1;
            return FL_OK;
        }
        if (ftruncate(fd, 0) != 0) {
            int e = errno;
            close(fd);
            return fli_fail(FL_ERR_IO, "trace:%s: cannot truncate: %s", path, strerror(e));
        }
        add_own(&st);
    }
    /* Blocking writes from here on (O_NONBLOCK only kept open() off a FIFO's wait). */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    return FL_OK;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

fl_status fli_recorder_open(const char *path, fli_recorder **out)
{
    *out = NULL;
    fli_recorder *r = calloc(1, sizeof *r);
    if (!r)
        return fli_fail(FL_ERR_NOMEM, "trace:%s: host memory", path);
    int busy = 0;
    fl_status s = snprintf(r->path, sizeof r->path, "%s", path) < (int)sizeof r->path
                      ? open_locked(path, &r->fd, &busy)
                      : fli_fail(FL_ERR_INVALID, "trace:%s: path too long", path);
    if (s == FL_OK && busy) {
        /* Another process of this job writes PATH: this one writes PATH.PID. */
        int n = snprintf(r->path, sizeof r->path, "%s.%ld", path, (long)getpid());
        s = n < (int)sizeof r->path ? open_locked(r->path, &r->fd, &busy)
                                     : fli_fail(FL_ERR_INVALID, "trace:%s: path too long", path);
        if (s == FL_OK && busy)
            s = fli_fail(FL_ERR_IO, "trace:%s: locked by another process", r->path);
        if (s == FL_OK)
            fprintf(stderr, "fragless: trace:%s is another process's; this one (pid %ld) records to %s\n", path,
                    (long)getpid(), r->path);
    }
    if (s == FL_OK && (s = fli_map_init(&r->streams, 1024)) != FL_OK)
        close(r->fd);
    if (s != FL_OK) {
        free(r);
        return s;
    }
    static const char header[] = "Thread,Time,Action,Pointer,Size,Stream\n";
    if (write_all(r->fd, header, sizeof header - 1) != 0) {
        s = fli_fail(FL_ERR_IO, "trace:%s: write error: %s", r->path, strerror(errno));
        fli_recorder_close(r);
        return s;
    }
    r->t0 = r->flushed_ns = fli_now_ns();
    *out = r;
    return FL_OK;
}

void fli_recorder_stop(fli_recorder *r)
{
    if (!r)
        return;
    fli_recorder_flush(r);
    r->stopped = 1;
}

fl_status fli_recorder_flush(fli_recorder *r)
{
    if (!r)
        return FL_OK;
    if (r->len && !r->failed && write_all(r->fd, r->buf, r->len) != 0) {
        r->failed = 1;
        snprintf(r->why, sizeof r->why, "%s", strerror(errno));
        fprintf(stderr, "fragless: trace:%s: write error: %s; recording stops\n", r->path, r->why);
    }
    r->len = 0;
    return r->failed ? fli_fail(FL_ERR_IO, "trace:%s: write error: %s; recording stopped there, the file holds only "
                                           "the rows written before it", r->path, r->why)
                     : FL_OK;
}

static void row(fli_recorder *r, int kind, uint64_t ptr, uint64_t size, uint64_t stream)
{
    if (FL_UNLIKELY(r->stopped))
        return;
    uint64_t now = fli_now_ns();
    fli_event e = {0};
    e.kind = (uint8_t)kind;
    e.ptr = ptr;
    e.size = size;
    e.stream = stream;
    e.thread = (uint64_t)syscall(SYS_gettid);
    e.time_us = (now - r->t0) / 1000;
    char line[160];
    int n = fli_trace_format_row(line, sizeof line - 1, &e);
    if (n <= 0 || (size_t)n >= sizeof line - 1)
        return;
    line[n++] = '\n';
    if (r->len + (size_t)n > sizeof r->buf)
        fli_recorder_flush(r);
    memcpy(r->buf + r->len, line, (size_t)n);
    r->len += (size_t)n;
    if (now - r->flushed_ns >= FL_RECORDER_FLUSH_NS) {
        fli_recorder_flush(r);
        r->flushed_ns = now;
    }
}

void fli_recorder_alloc(fli_recorder *r, int ok, uint64_t ptr, uint64_t size, uint64_t stream)
{
    row(r, ok ? FL_EV_ALLOC : FL_EV_ALLOC_FAIL, ok ? ptr : 0, size, stream);
    /* Without host memory for the map, the free row says stream 0: still readable. */
    if (ok)
        fli_map_put(&r->streams, ptr, stream);
}

void fli_recorder_free(fli_recorder *r, uint64_t ptr, uint64_t size)
{
    uint64_t stream = 0;
    fli_map_remove(&r->streams, ptr, &stream);
    row(r, FL_EV_FREE, ptr, size, stream);
}

fl_status fli_recorder_close(fli_recorder *r)
{
    if (!r)
        return FL_OK;
    fl_status s = fli_recorder_flush(r);
    close(r->fd); /* releases the lock */
    fli_map_free(&r->streams);
    free(r);
    return s;
}

void fli_recorder_forget(fli_recorder *r)
{
    if (!r)
        return;
    /* The lock belongs to the open file description, shared with the parent: closing
     * the child's descriptor leaves it with the parent. */
    close(r->fd);
    fli_map_free(&r->streams);
    free(r);
}

const char *fli_recorder_path(const fli_recorder *r) { return r->path; }
